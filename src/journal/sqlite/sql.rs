//! The statements transactions are built from: inserting events and jobs, ending a
//! job's lease, reading rows, and recording one evaluation.

use std::sync::LazyLock;

use rusqlite::{params, Connection, OptionalExtension, Transaction};
use serde_json::Value;

use rusqlite::types::{FromSql, FromSqlError, FromSqlResult, ToSqlOutput, ValueRef};
use rusqlite::ToSql;

use super::schema::NOW_MS;
use super::{exec, now_ms};
use crate::event::Event;
use crate::journal::common::{self, run_now, WriteTx};
pub(super) use crate::journal::common::{json_text, parse_json};
use crate::journal::{
    isolate_retried, stage_job, AlertState, Appended, Evaluation, FirstJob, Job, JobStatus,
    JobSummary, JournalError, NewJob, Queue, RuleOutcome, RuleRun,
};

/// An event as the `events` table stores it, serialized once, before any lock is taken.
pub(super) struct EventRow {
    id: String,
    source: &'static str,
    kind: String,
    received_at: String,
    chain_depth: u32,
    /// Compressed ([`super::body`]), off the commit thread.
    body: Vec<u8>,
}

impl EventRow {
    pub(super) fn new(event: &Event) -> Result<EventRow, JournalError> {
        Ok(EventRow {
            id: event.id.clone(),
            source: event.source.as_str(),
            kind: event.kind.clone(),
            received_at: event.received_at.clone(),
            chain_depth: event.chain_depth,
            body: super::body::encode_event(event)?,
        })
    }
}

// The three queries below read only open jobs. Each repeats the `jobs_open` index's
// `(status = 'pending' OR status = 'retrying' OR status = 'running')` term verbatim: that
// is how SQLite knows it may use the partial index (tests check the plans).

/// Up to ?2 due jobs of queue ?1, soonest first: pending or retrying jobs whose time has
/// come, and running jobs whose lease has ended (a crashed attempt) with attempts left.
/// Built once: it runs for every claim.
pub(super) static CLAIM_CANDIDATES_SQL: LazyLock<String> = LazyLock::new(|| {
    format!(
        // A lapsed action with no attempt left is a candidate too: the act stage ends it
        // dead and tells it (`Job::interrupted`); other queues' are reaped (`REAP_SQL`).
        "SELECT id, attempt, status = 'running' AND attempt >= max_attempts FROM jobs
         WHERE queue = ?1 AND (status = 'pending' OR status = 'retrying' OR status = 'running')
           AND ((status IN ('pending', 'retrying') AND scheduled_at <= {NOW_MS})
                OR (status = 'running' AND lease_until < {NOW_MS}
                    AND (attempt < max_attempts OR queue = 'action')))
         ORDER BY scheduled_at, id LIMIT ?2"
    )
});

/// Leases the jobs whose ids the JSON array ?1 lists, for ?2 ms each.
pub(super) static CLAIM_SQL: LazyLock<String> = LazyLock::new(|| {
    format!(
        "UPDATE jobs SET status = 'running',
            attempt = CASE WHEN status = 'running' AND attempt >= max_attempts THEN attempt ELSE attempt + 1 END,
            -- taken only to be ended dead, the last attempt keeps its start
            started_at = CASE WHEN status = 'running' AND attempt >= max_attempts THEN started_at ELSE {NOW_MS} END,
            lease_until = {NOW_MS} + ?2
         WHERE id IN (SELECT value FROM json_each(?1))
         RETURNING id, queue, kind, event_id, rule, payload, attempt, max_attempts"
    )
});

/// What an attempt that never finished leaves in a job's errors: the process stopped (or
/// stalled past the lease) while it ran. It counts as an attempt, so a job that kills the
/// process every time it runs ends dead instead of crash-looping (docs/behaviour.md section 11).
pub(super) const INTERRUPTED: &str =
    "interrupted: the attempt never finished (the process stopped or lost the lease while it ran)";

/// Ends running jobs of queue ?1 whose lease has run out and whose attempts are used up:
/// they are dead, with [`INTERRUPTED`] as their error (?2). Reads `jobs_running` only
/// (its `status = 'running'` term, verbatim, is what lets SQLite use it).
pub(super) static REAP_SQL: LazyLock<String> = LazyLock::new(|| {
    format!(
        "UPDATE jobs SET status = 'dead', lease_until = NULL, finished_at = {NOW_MS},
            last_error = ?2,
            errors = json_insert(errors, '$[#]', json_object('attempt', attempt, 'started', started_at, 'at', {NOW_MS}, 'error', ?2))
         WHERE queue = ?1 AND status = 'running' AND lease_until < {NOW_MS} AND attempt >= max_attempts
           AND ?1 <> 'action'"
    )
});

/// Milliseconds until the next job of queue ?1 is due (NULL: none open): the soonest
/// waiting job (the first of `jobs_open` that is not running; the running ones are
/// few) or the soonest lease to end (`jobs_running`), each found without a scan.
pub(super) static NEXT_DUE_SQL: LazyLock<String> = LazyLock::new(|| {
    format!(
        "SELECT MIN(due) - {NOW_MS} FROM (
            SELECT * FROM (
                SELECT scheduled_at AS due FROM jobs
                WHERE queue = ?1 AND (status = 'pending' OR status = 'retrying' OR status = 'running')
                  AND status <> 'running'
                ORDER BY scheduled_at LIMIT 1)
            UNION ALL
            SELECT MIN(lease_until) FROM jobs WHERE queue = ?1 AND status = 'running')"
    )
});

/// Open action jobs.
pub(super) const BACKLOG_SQL: &str = "SELECT COUNT(*) FROM jobs
     WHERE queue = 'action' AND (status = 'pending' OR status = 'retrying' OR status = 'running')";

// The statements below run per event or per job, on the commit thread among others:
// their SQL is built once rather than formatted for every call.
static INSERT_EVENT_SQL: LazyLock<String> = LazyLock::new(|| {
    format!(
        "INSERT INTO events (id, source, type, received_at, received_ms, chain_depth, status, body)
         VALUES (?1, ?2, ?3, ?4, {NOW_MS}, ?5, 'received', ?6) ON CONFLICT (id) DO NOTHING"
    )
});

pub(super) static INSERT_JOB_SQL: LazyLock<String> = LazyLock::new(|| {
    format!(
        "INSERT INTO jobs (queue, kind, event_id, rule, job_key, coalesce_key, payload, status,
                           attempt, max_attempts, scheduled_at, created_at)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, 'pending', 0, ?8, {NOW_MS}, {NOW_MS})
         ON CONFLICT DO NOTHING"
    )
});

pub(super) static END_JOB_SQL: LazyLock<String> = LazyLock::new(|| {
    format!(
        "UPDATE jobs SET status = ?1, finished_at = {NOW_MS}, lease_until = NULL
         WHERE id = ?2 AND status = 'running' AND attempt = ?3"
    )
});

pub(super) fn insert_event(
    tx: &Connection,
    event: &EventRow,
    first_job: FirstJob,
) -> Result<Appended, JournalError> {
    let inserted = exec(
        tx,
        &INSERT_EVENT_SQL,
        params![
            event.id,
            event.source,
            event.kind,
            event.received_at,
            event.chain_depth,
            event.body
        ],
    )?;
    if inserted == 0 {
        return Ok(Appended::Duplicate);
    }
    insert_job(tx, &stage_job(first_job, &event.id, None, Value::Null))?;
    Ok(Appended::New)
}

/// Inserts a job; an existing job key or a pending identical call makes it a no-op.
pub(super) fn insert_job(tx: &Connection, job: &NewJob) -> Result<bool, JournalError> {
    let payload = json_text(&job.payload)?;
    let inserted = exec(
        tx,
        &INSERT_JOB_SQL,
        params![
            job.queue.as_str(),
            job.kind,
            job.event_id,
            job.rule,
            job.job_key,
            job.coalesce_key,
            payload,
            job.max_attempts
        ],
    )?;
    Ok(inserted > 0)
}

/// Ends a job's lease with `status`; false if the lease is no longer ours.
pub(super) fn end_job(tx: &Connection, job: &Job, status: &str) -> Result<bool, JournalError> {
    let updated = exec(tx, &END_JOB_SQL, params![status, job.id, job.attempt])?;
    Ok(updated == 1)
}

pub(super) fn job_summary(row: &rusqlite::Row) -> rusqlite::Result<(JobSummary, String)> {
    Ok((
        JobSummary {
            id: row.get("id")?,
            instance: None,
            kind: row.get("kind")?,
            event_id: row.get("event_id")?,
            rule: row.get("rule")?,
            status: row.get("status")?,
            attempt: row.get("attempt")?,
            max_attempts: row.get("max_attempts")?,
            last_error: row.get("last_error")?,
            merged_into: row.get("merged_into")?,
            payload: Value::Null,
            result: row
                .get::<_, Option<String>>("result")?
                .and_then(|text| serde_json::from_str(&text).ok()),
        },
        row.get("payload")?,
    ))
}

pub(super) fn load_alert(tx: &Connection, name: &str) -> Result<Option<AlertState>, JournalError> {
    Ok(tx
        .query_row(
            "SELECT name, state, version, since_ms, last_notified_ms, muted_until_ms, mute_reason, unposted FROM alerts WHERE name = ?1",
            [name],
            alert_row,
        )
        .optional()?)
}

pub(super) fn alert_row(row: &rusqlite::Row) -> rusqlite::Result<AlertState> {
    Ok(AlertState {
        name: row.get(0)?,
        firing: row.get::<_, String>(1)? == "firing",
        version: row.get(2)?,
        since_ms: row.get(3)?,
        last_notified_ms: row.get(4)?,
        muted_until_ms: row.get(5)?,
        mute_reason: row.get(6)?,
        unposted: row.get(7)?,
    })
}

/// Ends the leases of a batch of evaluate jobs that are still ours: ?1 is a JSON array of
/// `[id, attempt]`; returns the ids of the jobs ended. One statement for the batch, by rowid.
pub(super) static END_EVALUATIONS_SQL: LazyLock<String> = LazyLock::new(|| {
    format!(
        "UPDATE jobs SET status = 'succeeded', finished_at = {NOW_MS}, lease_until = NULL
         FROM (SELECT json_extract(value, '$[0]') AS id, json_extract(value, '$[1]') AS attempt
               FROM json_each(?1)) AS ours
         WHERE jobs.id = ours.id AND jobs.attempt = ours.attempt AND jobs.status = 'running'
         RETURNING jobs.id"
    )
});

/// Marks the events whose ids the JSON array ?1 lists as evaluated.
pub(super) const MARK_EVALUATED_SQL: &str =
    "UPDATE events SET status = 'evaluated' WHERE id IN (SELECT value FROM json_each(?1))";

/// Records a batch of evaluations inside `tx`. For each, false (and nothing written for
/// it) if its lease was lost. The leases are ended and the events marked in one statement
/// each: per-job statements were most of what recording cost, since most evaluations
/// queue nothing.
pub(super) fn record_evaluations(
    tx: &Transaction,
    batch: &[(Job, Evaluation)],
) -> Result<Vec<bool>, JournalError> {
    if batch.is_empty() {
        return Ok(Vec::new());
    }
    let leases: Vec<(i64, u32)> = batch.iter().map(|(job, _)| (job.id, job.attempt)).collect();
    let ended: std::collections::HashSet<i64> = tx
        .prepare_cached(&END_EVALUATIONS_SQL)?
        .query_map([json_text(&leases)?], |row| row.get(0))?
        .collect::<Result<_, _>>()?;
    let mut recorded = Vec::with_capacity(batch.len());
    let mut evaluated = Vec::with_capacity(batch.len());
    for (job, evaluation) in batch {
        let ours = ended.contains(&job.id);
        if ours {
            run_now(common::record_outcome(&mut SqliteTx(tx), job, evaluation))?;
            evaluated.push(job.event_id.as_str());
        }
        recorded.push(ours);
    }
    if !evaluated.is_empty() {
        exec(tx, MARK_EVALUATED_SQL, [json_text(&evaluated)?])?;
    }
    Ok(recorded)
}

/// SQLite's side of the decisions in `journal/common.rs`: one write transaction.
pub(super) struct SqliteTx<'a>(pub(super) &'a Connection);

impl WriteTx for SqliteTx<'_> {
    async fn event_exists(&mut self, id: &str) -> Result<bool, JournalError> {
        Ok(self
            .0
            .query_row("SELECT 1 FROM events WHERE id = ?1", [id], |_| Ok(()))
            .optional()?
            .is_some())
    }

    async fn evaluations_of(&mut self, event_id: &str) -> Result<i64, JournalError> {
        Ok(self.0.query_row(
            "SELECT COUNT(*) FROM jobs WHERE event_id = ?1 AND queue = 'evaluate'",
            [event_id],
            |row| row.get(0),
        )?)
    }

    async fn insert_job(&mut self, job: &NewJob) -> Result<Option<i64>, JournalError> {
        Ok(insert_job(self.0, job)?.then(|| self.0.last_insert_rowid()))
    }

    async fn job_status(&mut self, id: i64) -> Result<Option<(JobStatus, Queue)>, JournalError> {
        Ok(self
            .0
            .query_row(
                "SELECT status, queue FROM jobs WHERE id = ?1",
                [id],
                |row| Ok((row.get(0)?, row.get(1)?)),
            )
            .optional()?)
    }

    async fn requeue_dead(&mut self, id: i64, _queue: Queue) -> Result<(), JournalError> {
        // No one to wake: the stages of the one process that serves this file poll.
        exec(
            self.0,
            &format!(
                "UPDATE jobs SET status = 'pending', max_attempts = attempt + 1,
                    scheduled_at = {NOW_MS}, finished_at = NULL
                 WHERE id = ?1 AND status = 'dead'"
            ),
            [id],
        )?;
        Ok(())
    }

    async fn open_twin(&mut self, id: i64) -> Result<Option<i64>, JournalError> {
        Ok(self
            .0
            .prepare_cached(common::OPEN_TWIN_SQL)?
            .query_row([id], |row| row.get(0))
            .optional()?)
    }

    async fn merge_dead(&mut self, id: i64, twin: i64) -> Result<(), JournalError> {
        exec(
            self.0,
            &format!(
                "UPDATE jobs SET status = 'merged', merged_into = ?2, finished_at = {NOW_MS}
                 WHERE id = ?1 AND status = 'dead'"
            ),
            [id, twin],
        )?;
        Ok(())
    }

    async fn lock_alert(
        &mut self,
        name: &str,
        _event_id: &str,
    ) -> Result<(Option<AlertState>, i64), JournalError> {
        // The write transaction holds the whole file: nothing to lock row by row.
        Ok((load_alert(self.0, name)?, now_ms(self.0)?))
    }

    async fn save_alert(&mut self, state: &AlertState, event_id: &str) -> Result<(), JournalError> {
        exec(
            self.0,
            "INSERT INTO alerts (name, state, version, since_ms, last_notified_ms, event_id, unposted)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)
             ON CONFLICT (name) DO UPDATE SET state = excluded.state, version = excluded.version,
                since_ms = excluded.since_ms, last_notified_ms = excluded.last_notified_ms,
                event_id = excluded.event_id, unposted = excluded.unposted",
            params![
                state.name,
                if state.firing { "firing" } else { "ok" },
                state.version,
                state.since_ms,
                state.last_notified_ms,
                event_id,
                state.unposted
            ],
        )?;
        Ok(())
    }

    async fn alert_firing(&mut self, name: &str) -> Result<Option<bool>, JournalError> {
        Ok(load_alert(self.0, name)?.map(|state| state.firing))
    }

    async fn reset_alert_state(&mut self, name: &str) -> Result<(), JournalError> {
        exec(
            self.0,
            &format!(
                "UPDATE alerts SET state = 'ok', version = version + 1, since_ms = {NOW_MS}
                 WHERE name = ?1"
            ),
            [name],
        )?;
        Ok(())
    }

    async fn check_in(&mut self, name: &str) -> Result<(Option<i64>, i64), JournalError> {
        let now = now_ms(self.0)?;
        // A deadline checked in before its clock first ran starts from now.
        exec(self.0, CLOCK_START, params![name, now])?;
        // The write transaction holds the file: read, then update.
        let missed: Option<i64> = self.0.query_row(
            "SELECT missed_due_ms FROM clocks WHERE name = ?1",
            [name],
            |row| row.get(0),
        )?;
        exec(
            self.0,
            "UPDATE clocks SET last_check_in_ms = ?2, missed_due_ms = NULL WHERE name = ?1",
            params![name, now],
        )?;
        Ok((missed, now))
    }

    async fn insert_event(&mut self, event: &Event) -> Result<(), JournalError> {
        insert_event(self.0, &EventRow::new(event)?, FirstJob::EVALUATE)?;
        Ok(())
    }

    async fn upsert_rule_run(&mut self, event_id: &str, run: &RuleRun) -> Result<(), JournalError> {
        exec(
            self.0,
            "INSERT INTO rule_runs (event_id, rule, outcome, actions, error) VALUES (?1, ?2, ?3, ?4, ?5)
             ON CONFLICT (event_id, rule) DO UPDATE SET outcome = excluded.outcome,
                actions = excluded.actions, error = excluded.error",
            params![event_id, run.rule, run.outcome, run.actions as i64, run.error],
        )?;
        Ok(())
    }
}

/// Claims up to `limit` due jobs of `queue` inside `tx` ([`JournalStore::claim`]).
pub(super) fn claim_in(
    tx: &rusqlite::Transaction,
    queue: Queue,
    limit: usize,
    lease_ms: u64,
) -> Result<Vec<Job>, JournalError> {
    exec(tx, &REAP_SQL, params![queue.as_str(), INTERRUPTED])?;
    let candidates: Vec<(i64, u32, bool)> = tx
        .prepare_cached(&CLAIM_CANDIDATES_SQL)?
        .query_map(params![queue.as_str(), limit as i64], |row| {
            Ok((row.get(0)?, row.get(1)?, row.get(2)?))
        })?
        .collect::<Result<_, _>>()?;
    let exhausted: Vec<i64> = candidates
        .iter()
        .filter(|(_, _, exhausted)| *exhausted)
        .map(|(id, _, _)| *id)
        .collect();
    let candidates: Vec<(i64, u32)> = candidates
        .into_iter()
        .map(|(id, attempt, _)| (id, attempt))
        .collect();
    let chosen = isolate_retried(&candidates);
    if chosen.is_empty() {
        return Ok(Vec::new());
    }
    // One statement for the whole batch: per-row statements were a fifth of a
    // claim's time.
    let ids = json_text(&chosen)?;
    let mut jobs = tx
        .prepare_cached(&CLAIM_SQL)?
        .query_map(params![ids, lease_ms as i64], |row| {
            Ok((
                Job {
                    id: row.get(0)?,
                    queue: row.get(1)?,
                    kind: row.get(2)?,
                    event_id: row.get(3)?,
                    rule: row.get(4)?,
                    payload: Value::Null,
                    attempt: row.get(6)?,
                    max_attempts: row.get(7)?,
                    interrupted: None,
                },
                row.get::<_, String>(5)?,
            ))
        })?
        .map(|row| {
            let (mut job, payload) = row?;
            job.payload = parse_json(&payload)?;
            if exhausted.contains(&job.id) {
                job.interrupted = Some(INTERRUPTED.to_string());
            }
            Ok(job)
        })
        .collect::<Result<Vec<Job>, JournalError>>()?;
    // RETURNING comes in no promised order: back to the order they were due in.
    jobs.sort_by_key(|job| chosen.iter().position(|id| *id == job.id));
    Ok(jobs)
}

/// Job statuses, queues and rule outcomes are stored as their names.
macro_rules! stored_as_text {
    ($($name:ty),*) => {$(
        impl ToSql for $name {
            fn to_sql(&self) -> rusqlite::Result<ToSqlOutput<'_>> {
                Ok(ToSqlOutput::from(self.as_str()))
            }
        }

        impl FromSql for $name {
            fn column_result(value: ValueRef<'_>) -> FromSqlResult<Self> {
                <$name>::parse(value.as_str()?).map_err(|error| FromSqlError::Other(Box::new(error)))
            }
        }
    )*};
}

stored_as_text!(JobStatus, Queue, RuleOutcome);

/// The rule, event and chain depth of an action job (a dbt run it started reports back).
pub const ACTION_ORIGIN: &str = "SELECT j.rule, j.event_id, COALESCE(e.chain_depth, 0)
     FROM jobs j LEFT JOIN events e ON e.id = j.event_id
     WHERE j.id = ?1 AND j.queue = 'action'";

/// A clock's state.
pub const CLOCK: &str =
    "SELECT name, last_due_ms, last_check_in_ms, missed_due_ms FROM clocks WHERE name = ?1";
/// Every clock's state.
pub const CLOCKS: &str =
    "SELECT name, last_due_ms, last_check_in_ms, missed_due_ms FROM clocks ORDER BY name";
/// A clock's first row: its due times are judged from `last_due_ms` on.
pub const CLOCK_START: &str =
    "INSERT INTO clocks (name, last_due_ms) VALUES (?1, ?2) ON CONFLICT (name) DO NOTHING";
/// One due time judged: only if no one judged it (or a later one) first.
pub const CLOCK_JUDGED: &str = "UPDATE clocks SET last_due_ms = ?2,
        missed_due_ms = CASE WHEN ?4 THEN ?2 ELSE missed_due_ms END
     WHERE name = ?1 AND last_due_ms = ?3";

/// Mutes (or unmutes) an alert that exists.
pub const MUTE_ALERT: &str = "UPDATE alerts SET muted_until_ms = ?2, mute_reason = ?3
     WHERE name = ?1 AND version > 0";
