//! The [`JournalStore`] calls of [`SqliteJournal`]: each one transaction (or one read).

use std::sync::Arc;

use rusqlite::{params, OptionalExtension};

use super::committer::{Durability, COMMIT_THREAD_STOPPED};
use super::schema::NOW_MS;
use super::sql::*;
use super::{body, exec, rescue_wal, SqliteJournal};
use crate::event::Event;
use crate::journal::common::WriteTx;
use crate::journal::common::{self, attempts, run_now};
use crate::journal::{
    replay_suffix, stage_job, ActionOrigin, Admin, AlertState, AppendTicket, ClockJudgement,
    ClockState, Evaluation, EventActivity, EventCursor, EventFilter, EventLine, EventSummary,
    FirstJob, FollowUp, Job, JobOutcome, JobStatus, JobSummary, JournalError, KeyedJob, Operations,
    OutcomeColumns, Overview, Queue, Released, Replay, Retried, RuleRun, StageQueue,
};

impl StageQueue for SqliteJournal {
    fn append(&self, event: &Event, first_job: FirstJob) -> AppendTicket {
        self.queue_append(event, first_job, None)
    }

    fn append_shared(&self, event: Arc<Event>, first_job: FirstJob) -> AppendTicket {
        let keep = (first_job.queue == Queue::Evaluate).then(|| Arc::clone(&event));
        self.queue_append(&event, first_job, keep)
    }

    fn event(&self, id: &str) -> Result<Option<Event>, JournalError> {
        self.read(|conn| {
            let mut statement = conn.prepare_cached(
                "SELECT id, source, type, received_at, chain_depth, body FROM events WHERE id = ?1",
            )?;
            let mut rows = statement.query([id])?;
            let Some(row) = rows.next()? else {
                return Ok(None);
            };
            let header = body::Header {
                id: row.get(0)?,
                source: row.get(1)?,
                kind: row.get(2)?,
                received_at: row.get(3)?,
                chain_depth: row.get(4)?,
            };
            body::decode_event(header, row.get_ref(5)?).map(Some)
        })
    }

    fn event_to_evaluate(&self, id: &str) -> Result<Option<Arc<Event>>, JournalError> {
        if let Some(event) = self.recent.lock().take(id) {
            return Ok(Some(event));
        }
        Ok(self.event(id)?.map(Arc::new))
    }

    fn claim(&self, queue: Queue, limit: usize, lease_ms: u64) -> Result<Vec<Job>, JournalError> {
        let durability = match queue {
            Queue::Evaluate => Durability::Deferred,
            Queue::Enrich | Queue::Action => Durability::Synced,
        };
        self.write_as(durability, |tx| claim_in(tx, queue, limit, lease_ms))
    }

    fn next_due_in(&self, queue: Queue) -> Result<Option<u64>, JournalError> {
        self.read(|conn| {
            let due: Option<i64> =
                conn.query_row(&NEXT_DUE_SQL, [queue.as_str()], |row| row.get(0))?;
            Ok(due.map(|ms| ms.max(0) as u64))
        })
    }

    fn finish(
        &self,
        job: &Job,
        outcome: &JobOutcome,
        follow_up: &FollowUp,
    ) -> Result<Option<JobStatus>, JournalError> {
        self.write(|tx| {
            let OutcomeColumns {
                mut status,
                result,
                error,
                delay_ms,
            } = outcome.columns(job);
            // Open again beside an identical pending call, it would break the unique
            // coalescing index: the two become one instead.
            let mut merged_into = None;
            if matches!(status, JobStatus::Retrying | JobStatus::Pending) {
                merged_into = run_now(SqliteTx(tx).open_twin(job.id))?;
                if merged_into.is_some() {
                    status = JobStatus::Merged;
                }
            }
            let updated = exec(tx,
                &format!(
                    "UPDATE jobs SET status = ?1,
                        last_error = ?2,
                        errors = CASE WHEN ?2 IS NULL THEN errors
                                      ELSE json_insert(errors, '$[#]', json_object('attempt', attempt, 'started', started_at, 'at', {NOW_MS}, 'error', ?2)) END,
                        scheduled_at = CASE WHEN ?1 IN ('retrying', 'pending') THEN {NOW_MS} + ?3 ELSE scheduled_at END,
                        -- A wait is not an attempt: give back the one the claim counted.
                        attempt = CASE WHEN ?1 = 'pending' THEN attempt - 1 ELSE attempt END,
                        finished_at = CASE WHEN ?1 IN ('succeeded', 'dead', 'merged') THEN {NOW_MS} ELSE NULL END,
                        lease_until = NULL,
                        result = COALESCE(?6, result),
                        merged_into = ?7
                     WHERE id = ?4 AND status = 'running' AND attempt = ?5"
                ),
                params![status, error, delay_ms as i64, job.id, job.attempt, result, merged_into],
            )?;
            if updated != 1 {
                return Ok(None);
            }
            if let Some(event) = &follow_up.event {
                insert_event(tx, &EventRow::new(event)?, FirstJob::EVALUATE)?;
            }
            if let Some(next) = &follow_up.job {
                insert_job(tx, next)?;
            }
            Ok(Some(status))
        })
    }

    fn job_by_key(&self, job_key: &str) -> Result<Option<KeyedJob>, JournalError> {
        self.read(|conn| {
            let row: Option<(JobStatus, Option<String>)> = conn
                .prepare_cached("SELECT status, result FROM jobs WHERE job_key = ?1")?
                .query_row([job_key], |row| Ok((row.get(0)?, row.get(1)?)))
                .optional()?;
            Ok(row.map(|(status, result)| KeyedJob {
                status,
                result: result.and_then(|text| serde_json::from_str(&text).ok()),
            }))
        })
    }

    fn action_origin(&self, job_id: i64) -> Result<Option<ActionOrigin>, JournalError> {
        self.read(|conn| {
            Ok(conn
                .prepare_cached(ACTION_ORIGIN)?
                .query_row([job_id], |row| {
                    Ok(ActionOrigin {
                        rule: row.get(0)?,
                        event_id: row.get(1)?,
                        chain_depth: row.get(2)?,
                    })
                })
                .optional()?)
        })
    }

    fn clock(&self, name: &str) -> Result<Option<ClockState>, JournalError> {
        self.read(|conn| {
            Ok(conn
                .prepare_cached(CLOCK)?
                .query_row([name], clock_row)
                .optional()?)
        })
    }

    fn judge_clock(&self, judgement: &ClockJudgement) -> Result<bool, JournalError> {
        let row = judgement.event.map(EventRow::new).transpose()?;
        let judged = self.write(|tx| {
            let changed = match judgement.last_due_ms {
                None => exec(tx, CLOCK_START, params![judgement.name, judgement.due_ms])?,
                Some(last) => exec(
                    tx,
                    CLOCK_JUDGED,
                    params![judgement.name, judgement.due_ms, last, judgement.missed],
                )?,
            };
            if changed == 1 {
                if let Some(row) = &row {
                    insert_event(tx, row, FirstJob::EVALUATE)?;
                }
            }
            Ok(changed == 1)
        })?;
        Ok(judged)
    }

    fn finish_enrichment(&self, job: &Job, event: &Event) -> Result<bool, JournalError> {
        // The row is about to change: no copy from before may be evaluated.
        self.recent.lock().take(&event.id);
        self.write(|tx| {
            if !end_job(tx, job, "succeeded")? {
                return Ok(false);
            }
            // The body holds all but the row's columns; the type and depth are written
            // too, so that the row stays the whole event whatever enrichment changes.
            let body = body::encode_event(event)?;
            tx.execute(
                "UPDATE events SET body = ?1, type = ?3, chain_depth = ?4 WHERE id = ?2",
                params![body, event.id, event.kind, event.chain_depth],
            )?;
            // A replayed enrichment carries the replay's number on to its evaluation.
            let suffix = replay_suffix(&job.payload);
            insert_job(
                tx,
                &stage_job(
                    FirstJob::EVALUATE,
                    &event.id,
                    suffix.as_deref(),
                    job.payload.clone(),
                ),
            )?;
            Ok(true)
        })
    }

    fn finish_evaluations(&self, batch: &[(Job, Evaluation)]) -> Result<Vec<bool>, JournalError> {
        self.queue_evaluations(batch, 0, 0)
            .map(|(recorded, _)| recorded)
    }

    fn finish_evaluations_and_claim(
        &self,
        batch: &[(Job, Evaluation)],
        limit: usize,
        lease_ms: u64,
    ) -> Result<(Vec<bool>, Vec<Job>), JournalError> {
        // Committed by the commit thread, with whatever intake has queued.
        self.queue_evaluations(batch, limit, lease_ms)
    }
}

impl Admin for SqliteJournal {
    fn events(
        &self,
        limit: usize,
        status: Option<&str>,
    ) -> Result<Vec<EventSummary>, JournalError> {
        self.read(|conn| {
            let mut statement = conn.prepare(
                "SELECT id, type, received_at, status FROM events
                 WHERE (?1 IS NULL OR status = ?1) ORDER BY rowid DESC LIMIT ?2",
            )?;
            let rows = statement.query_map(params![status, limit as i64], |row| {
                Ok(EventSummary {
                    id: row.get(0)?,
                    instance: None,
                    kind: row.get(1)?,
                    received_at: row.get(2)?,
                    status: row.get(3)?,
                    rules: Vec::new(),
                    actions: Vec::new(),
                })
            })?;
            let mut events = rows.collect::<Result<Vec<_>, _>>()?;
            let mut rules = conn.prepare(
                "SELECT rule, outcome, actions, error FROM rule_runs WHERE event_id = ?1 ORDER BY rule",
            )?;
            let mut jobs = conn.prepare(
                "SELECT * FROM jobs WHERE event_id = ?1 AND queue = 'action' ORDER BY id",
            )?;
            for event in &mut events {
                event.rules = rules
                    .query_map([&event.id], rule_run)?
                    .collect::<Result<_, _>>()?;
                for row in jobs.query_map([&event.id], job_summary)? {
                    let (mut summary, payload) = row?;
                    summary.payload = parse_json(&payload)?;
                    event.actions.push(summary);
                }
            }
            Ok(events)
        })
    }

    fn queue_replay(&self, event_id: &str, replay: &Replay) -> Result<i64, JournalError> {
        self.write(|tx| run_now(common::queue_replay(&mut SqliteTx(tx), event_id, replay)))
    }

    fn events_page(
        &self,
        filter: &EventFilter,
        before: Option<&EventCursor>,
        limit: usize,
    ) -> Result<Vec<EventLine>, JournalError> {
        let (sql, params) = common::events_page_sql(filter, before, limit, |n| format!("?{n}"));
        self.read(|conn| {
            let mut statement = conn.prepare_cached(&sql)?;
            let rows = statement.query_map(rusqlite::params_from_iter(params.iter()), |row| {
                Ok(EventLine {
                    id: row.get(0)?,
                    source: row.get(1)?,
                    kind: row.get(2)?,
                    received_at: row.get(3)?,
                    received_ms: row.get(4)?,
                    status: row.get(5)?,
                })
            })?;
            Ok(rows.collect::<Result<_, _>>()?)
        })
    }

    fn event_activity(&self, event_id: &str) -> Result<EventActivity, JournalError> {
        self.read(|conn| {
            let mut activity = EventActivity::default();
            let mut rules = conn.prepare_cached(
                "SELECT rule, outcome, actions, error FROM rule_runs WHERE event_id = ?1 ORDER BY rule",
            )?;
            activity.rules = rules
                .query_map([event_id], rule_run)?
                .collect::<Result<_, _>>()?;
            let mut jobs = conn.prepare_cached(
                "SELECT *, errors AS attempt_errors FROM jobs WHERE event_id = ?1 AND queue = 'action' ORDER BY id",
            )?;
            let rows = jobs.query_map([event_id], |row| {
                Ok((
                    job_summary(row)?,
                    (
                        row.get::<_, String>("attempt_errors")?,
                        row.get::<_, Option<i64>>("started_at")?,
                        row.get::<_, Option<i64>>("finished_at")?,
                    ),
                ))
            })?;
            for row in rows {
                let ((mut summary, payload), (errors, started, finished)) = row?;
                summary.payload = parse_json(&payload)?;
                let attempts =
                    attempts(&errors, summary.status, summary.attempt, started, finished);
                activity.jobs.push((summary, attempts));
            }
            Ok(activity)
        })
    }

    fn overview(&self, since_ms: i64) -> Result<Overview, JournalError> {
        self.read(|conn| {
            let mut totals = conn.prepare_cached(common::OVERVIEW_TOTALS)?;
            let totals = totals
                .query_map([since_ms], |row| {
                    Ok((row.get(0)?, row.get::<_, i64>(1)? as u64, row.get(2)?))
                })?
                .collect::<Result<Vec<_>, _>>()?;
            let mut waiting = conn.prepare_cached(&common::OVERVIEW_WAITING)?;
            let waiting = waiting
                .query_map([since_ms], |row| {
                    Ok((row.get(0)?, row.get(1)?, row.get::<_, i64>(2)? as u64))
                })?
                .collect::<Result<Vec<_>, _>>()?;
            let counts =
                conn.prepare_cached(&common::OVERVIEW_JOBS)?
                    .query_row([since_ms], |row| {
                        (0..common::OVERVIEW_JOB_STATUSES.len())
                            .map(|i| row.get::<_, i64>(i))
                            .collect::<Result<Vec<_>, _>>()
                    })?;
            let jobs = common::action_counts(counts);
            Ok(common::overview(totals, waiting, jobs))
        })
    }

    fn jobs(
        &self,
        status: Option<JobStatus>,
        limit: usize,
    ) -> Result<Vec<JobSummary>, JournalError> {
        self.read(|conn| {
            let limit = limit as i64;
            let sql = match status {
                Some(status) => std::borrow::Cow::Owned(common::listed_jobs_of(status)),
                None => std::borrow::Cow::Borrowed(common::LISTED_JOBS),
            };
            let mut statement = conn.prepare_cached(&sql)?;
            let mut jobs = Vec::new();
            for row in statement.query_map([limit], job_summary)? {
                let (mut summary, payload) = row?;
                summary.payload = parse_json(&payload)?;
                jobs.push(summary);
            }
            Ok(jobs)
        })
    }

    fn retry(&self, job_id: i64) -> Result<Retried, JournalError> {
        self.write(|tx| run_now(common::retry(&mut SqliteTx(tx), job_id)))
    }

    fn alerts(&self) -> Result<Vec<AlertState>, JournalError> {
        self.read(|conn| {
            let mut statement = conn.prepare(
                "SELECT name, state, version, since_ms, last_notified_ms, muted_until_ms, mute_reason, unposted FROM alerts ORDER BY name",
            )?;
            let rows = statement.query_map([], alert_row)?;
            Ok(rows.collect::<Result<_, _>>()?)
        })
    }

    fn reset_alert(&self, name: &str) -> Result<Option<bool>, JournalError> {
        self.write(|tx| run_now(common::reset_alert(&mut SqliteTx(tx), name)))
    }

    fn mute_alert(
        &self,
        name: &str,
        until_ms: Option<i64>,
        reason: Option<&str>,
    ) -> Result<bool, JournalError> {
        self.write(|tx| Ok(exec(tx, MUTE_ALERT, params![name, until_ms, reason])? == 1))
    }

    fn clocks(&self) -> Result<Vec<ClockState>, JournalError> {
        self.read(|conn| {
            let mut statement = conn.prepare(CLOCKS)?;
            let rows = statement.query_map([], clock_row)?;
            Ok(rows.collect::<Result<_, _>>()?)
        })
    }
}

impl Operations for SqliteJournal {
    fn check_writable(&self) -> Result<(), JournalError> {
        // Intake can only journal through the commit thread.
        if !self.committer.as_ref().is_some_and(|c| !c.is_finished()) {
            return Err(JournalError::commit_failed(COMMIT_THREAD_STOPPED));
        }
        let verified = self.watch.verify();
        if self.watch.wal_rescue_due() {
            self.with(|conn| {
                rescue_wal(conn);
                Ok(())
            })?;
        }
        verified?;
        if let Some(error) = self.watch.last_commit_error() {
            // The last commit failed: try one (a row of its own) to learn whether the
            // journal has recovered, rather than report the past forever.
            self.write(|tx| {
                exec(
                    tx,
                    &format!(
                        "INSERT INTO health (id, checked_ms) VALUES (1, {NOW_MS})
                         ON CONFLICT (id) DO UPDATE SET checked_ms = excluded.checked_ms"
                    ),
                    [],
                )?;
                Ok(())
            })
            .map_err(|_| JournalError::commit_failed(format!("the last commit failed: {error}")))?;
        }
        self.with(|conn| {
            // Takes the write lock and gives it back: fails if another process holds the
            // lock for too long.
            conn.execute_batch("BEGIN IMMEDIATE; ROLLBACK;")?;
            Ok(())
        })
    }

    fn release_running(&self) -> Result<Released, JournalError> {
        self.write(|tx| {
            // The attempt that was running counts: with none left, the job is dead. An
            // action stays running with its lease over, so that the act stage takes it
            // and ends it dead as it ends any action, telling it (an event, a metric, a
            // log line: docs/behaviour.md section 12).
            let dead = tx.execute(
                &format!(
                    "UPDATE jobs SET status = 'dead', lease_until = NULL, finished_at = {NOW_MS},
                        last_error = ?1,
                        errors = json_insert(errors, '$[#]', json_object('attempt', attempt, 'started', started_at, 'at', {NOW_MS}, 'error', ?1))
                     WHERE status = 'running' AND attempt >= max_attempts AND queue <> 'action'"
                ),
                [INTERRUPTED],
            )? + tx.execute(
                "UPDATE jobs SET lease_until = 0
                 WHERE status = 'running' AND attempt >= max_attempts AND queue = 'action'",
                [],
            )?;
            let again = tx.execute(
                &format!(
                    "UPDATE jobs SET status = 'retrying', lease_until = NULL, scheduled_at = {NOW_MS},
                        last_error = ?1,
                        errors = json_insert(errors, '$[#]', json_object('attempt', attempt, 'started', started_at, 'at', {NOW_MS}, 'error', ?1))
                     WHERE status = 'running'"
                ),
                [INTERRUPTED],
            )?;
            Ok(Released { again, dead })
        })
    }

    fn backlog(&self) -> Result<u64, JournalError> {
        self.read(|conn| Ok(conn.query_row(BACKLOG_SQL, [], |row| row.get::<_, i64>(0))? as u64))
    }

    fn prune(&self, days: u32, go_on: &(dyn Fn() -> bool + Sync)) -> Result<usize, JournalError> {
        self.prune_in_batches(days, common::PRUNE_BATCH, go_on)
    }
}

fn clock_row(row: &rusqlite::Row) -> rusqlite::Result<ClockState> {
    Ok(ClockState {
        name: row.get(0)?,
        last_due_ms: row.get(1)?,
        last_check_in_ms: row.get(2)?,
        missed_due_ms: row.get(3)?,
    })
}

/// A `rule_runs` row (`rule, outcome, actions, error`).
fn rule_run(row: &rusqlite::Row) -> rusqlite::Result<RuleRun> {
    Ok(RuleRun {
        rule: row.get(0)?,
        outcome: row.get(1)?,
        actions: row.get::<_, i64>(2)? as usize,
        error: row.get(3)?,
    })
}
