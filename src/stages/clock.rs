//! The clock stage: deadlines and schedules (docs/behaviour.md section 14). A webhook never
//! arrives for a run that never happened, so silence has to become an event here: at
//! each due time of `[deadlines.NAME]` with no check-in since the previous due time, a
//! `freshet.deadline.missed`; at each due time of `[schedules.NAME]`, a `freshet.schedule`.
//!
//! Each due time is journaled work judged once: the clock's row holds the last due time
//! judged, and a judgement is a compare-and-set on it with the event in the same
//! transaction, so a restart around a due time, or two instances ticking at once, yield
//! one event. Due times that passed while freshet was down are judged at start, the
//! latest of them only (one event, not a burst). A clock seen for the first time starts
//! from now: nothing before freshet knew of it is judged.

use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use serde_json::{json, Map, Value};
use tokio_util::sync::CancellationToken;

use super::Wakes;
use crate::config::{ClockConfig, Config};
use crate::event::{Event, Source};
use crate::journal::common_rfc3339 as rfc3339;
use crate::journal::{blocking, ClockJudgement, Journal};

/// How often the clocks are looked at when none is due sooner: a config reload that adds
/// a clock is seen within this, and a tick is cheap (a read per clock).
const TICK: Duration = Duration::from_secs(1);
/// Due times stepped through after a long stop before giving up on finding the latest
/// one by stepping (a seconds cron after a week down): the clock then restarts from now.
const MAX_STEPS: usize = 100_000;

/// Whether a clock is a deadline or a schedule.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClockKind {
    Deadline,
    Schedule,
}

impl ClockKind {
    /// The journal's key of clock `name`.
    pub fn key(self, name: &str) -> String {
        match self {
            ClockKind::Deadline => format!("deadline:{name}"),
            ClockKind::Schedule => format!("schedule:{name}"),
        }
    }
}

/// The clock stage's dependencies.
pub struct ClockWorker {
    pub journal: Journal,
    pub config: Arc<ArcSwap<Config>>,
    /// Wakes the evaluate stage when a clock emitted an event.
    pub wakes: Wakes,
}

impl ClockWorker {
    pub async fn run(self, stop: CancellationToken) {
        loop {
            let config = self.config.load_full();
            let now = chrono::Utc::now().timestamp_millis();
            let mut sleep = TICK;
            let clocks = config
                .deadlines
                .iter()
                .map(|(name, clock)| (ClockKind::Deadline, name, clock))
                .chain(
                    config
                        .schedules
                        .iter()
                        .map(|(name, clock)| (ClockKind::Schedule, name, clock)),
                );
            for (kind, name, clock) in clocks {
                match self.tick(kind, name, clock, now).await {
                    Ok(Some(next)) => {
                        let until = Duration::from_millis(next.saturating_sub(now).max(0) as u64);
                        sleep = sleep.min(until);
                    }
                    Ok(None) => {}
                    Err(error) => {
                        tracing::error!(clock = %kind.key(name), error = %error, "Cannot judge a clock; trying again.")
                    }
                }
            }
            tokio::select! {
                _ = stop.cancelled() => return,
                // A few ms past the due time, so that it is not judged a moment early.
                _ = tokio::time::sleep(sleep + Duration::from_millis(5)) => {}
            }
        }
    }

    /// Judges the latest due time of one clock that has passed and is not judged yet;
    /// returns the next due time.
    async fn tick(
        &self,
        kind: ClockKind,
        name: &str,
        clock: &ClockConfig,
        now: i64,
    ) -> Result<Option<i64>, crate::journal::JournalError> {
        let key = kind.key(name);
        let read_key = key.clone();
        let state = blocking(&self.journal, move |j| j.clock(&read_key)).await?;
        let Some(state) = state else {
            // First seen: due times are judged from now on.
            let start_key = key.clone();
            blocking(&self.journal, move |j| {
                j.judge_clock(&ClockJudgement {
                    name: &start_key,
                    last_due_ms: None,
                    due_ms: now,
                    event: None,
                    missed: false,
                })
            })
            .await?;
            return Ok(clock.next_after(now));
        };
        let Some((due, previous)) = latest_due(clock, state.last_due_ms, now) else {
            return Ok(clock.next_after(now));
        };
        let (event, missed) = match kind {
            ClockKind::Schedule => (Some(schedule_event(name, due)), false),
            ClockKind::Deadline => {
                // Met when a check-in came after the previous due time (or the start).
                let met = state.last_check_in_ms.is_some_and(|at| at > previous);
                if met {
                    (None, false)
                } else {
                    (Some(missed_event(name, due, state.last_check_in_ms)), true)
                }
            }
        };
        let last = state.last_due_ms;
        let judged_event = event.clone();
        let judged = blocking(&self.journal, move |j| {
            j.judge_clock(&ClockJudgement {
                name: &key,
                last_due_ms: Some(last),
                due_ms: due,
                event: judged_event.as_ref(),
                missed,
            })
        })
        .await?;
        if judged {
            if let Some(event) = &event {
                tracing::info!(event_id = %event.id, clock = %kind.key(name), "Clock due: event journaled.");
                self.wakes.evaluate.notify_waiters();
            }
        }
        Ok(clock.next_after(now))
    }
}

/// The latest due time after `last_due_ms` that is not after `now`, with the due time
/// before it (or `last_due_ms`); None when none has come.
pub fn latest_due(clock: &ClockConfig, last_due_ms: i64, now: i64) -> Option<(i64, i64)> {
    let mut previous = last_due_ms;
    let mut latest = None;
    let mut cursor = last_due_ms;
    for _ in 0..MAX_STEPS {
        match clock.next_after(cursor) {
            Some(next) if next <= now => {
                if let Some(due) = latest {
                    previous = due;
                }
                latest = Some(next);
                cursor = next;
            }
            _ => return latest.map(|due| (due, previous)),
        }
    }
    // Down for longer than MAX_STEPS due times: judge the last one stepped to; the next
    // tick carries on from there.
    latest.map(|due| (due, previous))
}

fn clock_event(kind: &str, name: &str, due_ms: i64, mut fields: Map<String, Value>) -> Event {
    fields.insert("name".into(), json!(name));
    fields.insert("due_at".into(), json!(rfc3339(due_ms)));
    Event {
        id: format!("freshet:{kind}:{name}:{due_ms}"),
        source: Source::Freshet,
        kind: format!("freshet.{kind}"),
        received_at: crate::event::now_rfc3339(),
        chain_depth: 0,
        fields,
        raw: Value::Null,
    }
}

/// `freshet.deadline.missed`: `name`, `due_at`, `last_check_in` (or `()`).
pub fn missed_event(name: &str, due_ms: i64, last_check_in_ms: Option<i64>) -> Event {
    let mut fields = Map::new();
    fields.insert(
        "last_check_in".into(),
        last_check_in_ms.map_or(Value::Null, |at| json!(rfc3339(at))),
    );
    clock_event("deadline.missed", name, due_ms, fields)
}

/// `freshet.schedule`: `name`, `due_at`.
pub fn schedule_event(name: &str, due_ms: i64) -> Event {
    clock_event("schedule", name, due_ms, Map::new())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn clock(pattern: &str) -> ClockConfig {
        ClockConfig {
            pattern: pattern.into(),
            cron: croner::Cron::new(pattern)
                .with_seconds_optional()
                .parse()
                .unwrap(),
            timezone: "Europe/Paris".parse().unwrap(),
        }
    }

    fn ms(text: &str) -> i64 {
        chrono::DateTime::parse_from_rfc3339(text)
            .unwrap()
            .timestamp_millis()
    }

    #[test]
    fn the_latest_due_time_and_the_one_before_it() {
        let daily = clock("0 7 * * *");
        // 07:00 in Paris in December is 06:00 UTC.
        let start = ms("2026-12-05T12:00:00Z");
        assert_eq!(latest_due(&daily, start, ms("2026-12-06T05:59:59Z")), None);
        assert_eq!(
            latest_due(&daily, start, ms("2026-12-06T06:00:00Z")),
            Some((ms("2026-12-06T06:00:00Z"), start))
        );
        // Down for three days: the latest only, with the day before it.
        assert_eq!(
            latest_due(&daily, start, ms("2026-12-08T09:00:00Z")),
            Some((ms("2026-12-08T06:00:00Z"), ms("2026-12-07T06:00:00Z")))
        );
        let seconds = clock("*/2 * * * * *");
        assert_eq!(
            seconds.next_after(ms("2026-12-06T06:00:00Z")),
            Some(ms("2026-12-06T06:00:02Z"))
        );
    }

    #[test]
    fn events_are_keyed_by_clock_and_due_time() {
        let due = ms("2026-12-06T06:00:00Z");
        let missed = missed_event("nightly", due, None);
        assert_eq!(missed.id, format!("freshet:deadline.missed:nightly:{due}"));
        assert_eq!(missed.kind, "freshet.deadline.missed");
        assert_eq!(missed.fields["due_at"], "2026-12-06T06:00:00.000Z");
        assert_eq!(missed.fields["last_check_in"], Value::Null);
        assert_eq!(schedule_event("morning", due).kind, "freshet.schedule");
    }
}
