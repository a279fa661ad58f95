//! The statements the PostgreSQL calls share: inserting events and jobs, ending a lease
//! (fenced on the instance and the attempt), reading rows, and recording an evaluation.

use std::sync::LazyLock;

use super::session::Typed;
use serde_json::Value;
use tokio_postgres::types::{to_sql_checked, FromSql, IsNull, ToSql, Type};
use tokio_postgres::Row;

use super::backend;
use super::schema::NOW_MS;
use crate::event::Event;
use crate::journal::common::{self, WriteTx};
pub(super) use crate::journal::common::{json_text, parse_json};
use crate::journal::{
    stage_job, AlertState, Appended, Evaluation, FirstJob, Job, JobStatus, JobSummary,
    JournalError, NewJob, Queue, RuleOutcome, RuleRun,
};

type Result<T> = std::result::Result<T, JournalError>;

/// Lets this transaction's commit return before its WAL is flushed: for the evaluate
/// stage's claims and finishes only, as the SQLite journal does (its `Durability`, and
/// ARCHITECTURE.md's durability contract). A server crash can undo such a commit only
/// up to the last flushed one; any synced commit after it, from any instance, flushes
/// the WAL through it. What is undone is an evaluation that runs again.
pub(super) async fn defer_commit(tx: &super::session::Tx<'_>) -> Result<()> {
    tx.batch_execute("SET LOCAL synchronous_commit = off")
        .await
        .map_err(backend)
}

/// Wakes every instance's stage for `queue` once the transaction commits.
pub(super) async fn notify(client: &impl Typed, queue: Queue) -> Result<()> {
    client.wake_others(queue).await.map_err(backend)
}

pub(super) async fn insert_job(client: &impl Typed, job: &NewJob) -> Result<bool> {
    static SQL: LazyLock<String> = LazyLock::new(|| {
        format!(
            "INSERT INTO jobs (queue, kind, event_id, rule, job_key, coalesce_key, payload, status,
                               attempt, max_attempts, scheduled_at, created_at)
             VALUES ($1, $2, $3, $4, $5, $6, $7, 'pending', 0, $8, {NOW_MS}, {NOW_MS})
             ON CONFLICT DO NOTHING"
        )
    });
    let payload = json_text(&job.payload)?;
    let inserted = client
        .exec(
            SQL.as_str(),
            &[
                &job.queue.as_str(),
                &job.kind,
                &job.event_id,
                &job.rule,
                &job.job_key,
                &job.coalesce_key,
                &payload,
                &(job.max_attempts as i32),
            ],
        )
        .await
        .map_err(backend)?;
    if inserted > 0 {
        notify(client, job.queue).await?;
    }
    Ok(inserted > 0)
}

pub(super) async fn insert_event(
    client: &impl Typed,
    event: &Event,
    first: FirstJob,
    instance: &str,
) -> Result<Appended> {
    static SQL: LazyLock<String> = LazyLock::new(|| {
        format!(
            "INSERT INTO events (id, source, type, received_at, received_ms, chain_depth, status, body, instance)
             VALUES ($1, $2, $3, $4, {NOW_MS}, $5, 'received', $6, $7) ON CONFLICT (id) DO NOTHING"
        )
    });
    let body = serde_json::to_string(event).map_err(|e| JournalError::Refused(e.to_string()))?;
    let inserted = client
        .exec(
            SQL.as_str(),
            &[
                &event.id,
                &event.source.as_str(),
                &event.kind,
                &event.received_at,
                &(event.chain_depth as i32),
                &body,
                &instance,
            ],
        )
        .await
        .map_err(backend)?;
    if inserted == 0 {
        return Ok(Appended::Duplicate);
    }
    insert_job(client, &stage_job(first, &event.id, None, Value::Null)).await?;
    Ok(Appended::New)
}

/// Ends a job's lease with `status` if it is still this instance's (the fence).
pub(super) async fn end_job(
    client: &impl Typed,
    job: &Job,
    status: &str,
    me: &str,
) -> Result<bool> {
    static SQL: LazyLock<String> = LazyLock::new(|| {
        format!(
            "UPDATE jobs SET status = $1, finished_at = {NOW_MS}, lease_until = NULL
             WHERE id = $2 AND status = 'running' AND attempt = $3 AND locked_by = $4"
        )
    });
    let updated = client
        .exec(
            SQL.as_str(),
            &[&status, &job.id, &(job.attempt as i32), &me],
        )
        .await
        .map_err(backend)?;
    Ok(updated == 1)
}

pub(super) fn alert_state(row: &Row) -> AlertState {
    AlertState {
        name: row.get("name"),
        firing: row.get::<_, String>("state") == "firing",
        version: row.get("version"),
        since_ms: row.get("since_ms"),
        last_notified_ms: row.get("last_notified_ms"),
        muted_until_ms: row.get("muted_until_ms"),
        mute_reason: row.get("mute_reason"),
        unposted: row.get("unposted"),
    }
}

pub(super) fn job_summary(row: &Row) -> Result<JobSummary> {
    Ok(JobSummary {
        id: row.get("id"),
        instance: row.get("locked_by"),
        kind: row.get("kind"),
        event_id: row.get("event_id"),
        rule: row.get("rule"),
        status: row.get("status"),
        attempt: row.get::<_, i32>("attempt") as u32,
        max_attempts: row.get::<_, i32>("max_attempts") as u32,
        last_error: row.get("last_error"),
        merged_into: row.get("merged_into"),
        payload: parse_json(&row.get::<_, String>("payload"))?,
        result: row
            .get::<_, Option<String>>("result")
            .and_then(|text| serde_json::from_str(&text).ok()),
    })
}

/// Ends the leases of a batch of evaluate jobs as succeeded, each fenced on this instance
/// and its attempt, and marks their events evaluated, in one statement (the events of
/// the jobs whose fence held, through `RETURNING`); returns the ids whose fence held.
pub(super) async fn end_evaluations(
    tx: &super::session::Tx<'_>,
    batch: &[(Job, Evaluation)],
    me: &str,
) -> Result<std::collections::HashSet<i64>> {
    static SQL: LazyLock<String> = LazyLock::new(|| {
        format!(
            "WITH ended AS (
                 UPDATE jobs SET status = 'succeeded', finished_at = {NOW_MS}, lease_until = NULL
                 FROM unnest($1::int8[], $2::int4[]) AS f(id, attempt)
                 WHERE jobs.id = f.id AND jobs.attempt = f.attempt
                   AND jobs.status = 'running' AND jobs.locked_by = $3
                 RETURNING jobs.id, jobs.event_id),
             evaluated AS (
                 UPDATE events SET status = 'evaluated'
                 WHERE id IN (SELECT event_id FROM ended))
             SELECT id FROM ended"
        )
    });
    let ids: Vec<i64> = batch.iter().map(|(job, _)| job.id).collect();
    let attempts: Vec<i32> = batch.iter().map(|(job, _)| job.attempt as i32).collect();
    Ok(tx
        .rows(SQL.as_str(), &[&ids, &attempts, &me])
        .await
        .map_err(backend)?
        .iter()
        .map(|row| row.get(0))
        .collect())
}

/// PostgreSQL's side of the decisions in `journal/common.rs`: one transaction.
pub(super) struct PgTx<'a>(pub(super) &'a super::session::Tx<'a>);

impl WriteTx for PgTx<'_> {
    async fn event_exists(&mut self, id: &str) -> Result<bool> {
        let row = self
            .0
            .row_opt("SELECT 1 FROM events WHERE id = $1", &[&id])
            .await
            .map_err(backend)?;
        Ok(row.is_some())
    }

    async fn evaluations_of(&mut self, event_id: &str) -> Result<i64> {
        let row = self
            .0
            .row(
                "SELECT COUNT(*) FROM jobs WHERE event_id = $1 AND queue = 'evaluate'",
                &[&event_id],
            )
            .await
            .map_err(backend)?;
        Ok(row.get(0))
    }

    async fn insert_job(&mut self, job: &NewJob) -> Result<Option<i64>> {
        if !insert_job(self.0, job).await? {
            return Ok(None);
        }
        let row = self
            .0
            .row("SELECT id FROM jobs WHERE job_key = $1", &[&job.job_key])
            .await
            .map_err(backend)?;
        Ok(Some(row.get(0)))
    }

    async fn job_status(&mut self, id: i64) -> Result<Option<(JobStatus, Queue)>> {
        let row = self
            .0
            .row_opt(
                "SELECT status, queue FROM jobs WHERE id = $1 FOR UPDATE",
                &[&id],
            )
            .await
            .map_err(backend)?;
        Ok(row.map(|row| (row.get(0), row.get(1))))
    }

    async fn requeue_dead(&mut self, id: i64, queue: Queue) -> Result<()> {
        self.0
            .exec(
                &format!(
                    "UPDATE jobs SET status = 'pending', max_attempts = attempt + 1,
                        scheduled_at = {NOW_MS}, finished_at = NULL WHERE id = $1"
                ),
                &[&id],
            )
            .await
            .map_err(backend)?;
        // Any instance may take it: wake them all.
        notify(self.0, queue).await
    }

    async fn open_twin(&mut self, id: i64) -> Result<Option<i64>> {
        let row = self
            .0
            .row_opt(common::OPEN_TWIN_SQL, &[&id])
            .await
            .map_err(backend)?;
        Ok(row.map(|row| row.get(0)))
    }

    async fn merge_dead(&mut self, id: i64, twin: i64) -> Result<()> {
        self.0
            .exec(
                &format!(
                    "UPDATE jobs SET status = 'merged', merged_into = $2, finished_at = {NOW_MS}
                     WHERE id = $1 AND status = 'dead'"
                ),
                &[&id, &twin],
            )
            .await
            .map_err(backend)?;
        Ok(())
    }

    async fn lock_alert(
        &mut self,
        name: &str,
        event_id: &str,
    ) -> Result<(Option<AlertState>, i64)> {
        // The alert's row is locked for the rest of the transaction: instances that
        // evaluate the same alert at once take turns, and each decides from the state
        // the other left, so one incident posts once. A row is made first (version 0,
        // no state yet) so that there is one to lock.
        self.0
            .exec(
                &format!(
                    "INSERT INTO alerts (name, state, version, since_ms, last_notified_ms, event_id)
                     VALUES ($1, 'ok', 0, {NOW_MS}, NULL, $2) ON CONFLICT (name) DO NOTHING"
                ),
                &[&name, &event_id],
            )
            .await
            .map_err(backend)?;
        let row = self
            .0
            .row(
                &format!(
                    "SELECT name, state, version, since_ms, last_notified_ms, muted_until_ms, mute_reason, unposted, {NOW_MS} AS now
                     FROM alerts WHERE name = $1 FOR UPDATE"
                ),
                &[&name],
            )
            .await
            .map_err(backend)?;
        let stored = alert_state(&row);
        // A row just made for the lock is no state yet.
        let previous = (stored.version > 0).then_some(stored);
        Ok((previous, row.get("now")))
    }

    async fn save_alert(&mut self, state: &AlertState, event_id: &str) -> Result<()> {
        self.0
            .exec(
                "UPDATE alerts SET state = $2, version = $3, since_ms = $4, last_notified_ms = $5,
                    event_id = $6, unposted = $7 WHERE name = $1",
                &[
                    &state.name,
                    &if state.firing { "firing" } else { "ok" },
                    &state.version,
                    &state.since_ms,
                    &state.last_notified_ms,
                    &event_id,
                    &state.unposted,
                ],
            )
            .await
            .map_err(backend)?;
        Ok(())
    }

    async fn alert_firing(&mut self, name: &str) -> Result<Option<bool>> {
        let row = self
            .0
            .row_opt(
                "SELECT state FROM alerts WHERE name = $1 AND version > 0 FOR UPDATE",
                &[&name],
            )
            .await
            .map_err(backend)?;
        Ok(row.map(|row| row.get::<_, String>(0) == "firing"))
    }

    async fn reset_alert_state(&mut self, name: &str) -> Result<()> {
        self.0
            .exec(
                &format!(
                    "UPDATE alerts SET state = 'ok', version = version + 1, since_ms = {NOW_MS}
                     WHERE name = $1"
                ),
                &[&name],
            )
            .await
            .map_err(backend)?;
        Ok(())
    }

    async fn check_in(&mut self, name: &str) -> Result<(Option<i64>, i64)> {
        // A deadline checked in before its clock first ran starts from now. The row is
        // locked by the update: a clock judging it meanwhile waits for this commit.
        self.0
            .exec(
                &format!("INSERT INTO clocks (name, last_due_ms) VALUES ($1, {NOW_MS}) ON CONFLICT (name) DO NOTHING"),
                &[&name],
            )
            .await
            .map_err(backend)?;
        let row = self
            .0
            .row(
                &format!(
                    "UPDATE clocks c SET last_check_in_ms = {NOW_MS}, missed_due_ms = NULL
                     FROM (SELECT missed_due_ms FROM clocks WHERE name = $1 FOR UPDATE) before
                     WHERE c.name = $1
                     RETURNING before.missed_due_ms, c.last_check_in_ms"
                ),
                &[&name],
            )
            .await
            .map_err(backend)?;
        Ok((row.get(0), row.get(1)))
    }

    async fn insert_event(&mut self, event: &Event) -> Result<()> {
        // The instance column names the instance whose intake journaled a webhook; an
        // event an evaluation emits leaves it empty.
        insert_event(self.0, event, FirstJob::EVALUATE, "").await?;
        Ok(())
    }

    async fn upsert_rule_run(&mut self, event_id: &str, run: &RuleRun) -> Result<()> {
        self.0
            .exec(
                "INSERT INTO rule_runs (event_id, rule, outcome, actions, error) VALUES ($1, $2, $3, $4, $5)
                 ON CONFLICT (event_id, rule) DO UPDATE SET outcome = excluded.outcome,
                    actions = excluded.actions, error = excluded.error",
                &[&event_id, &run.rule, &run.outcome, &(run.actions as i32), &run.error],
            )
            .await
            .map_err(backend)?;
        Ok(())
    }
}

/// Job statuses, queues and rule outcomes are stored as their names (`text`).
macro_rules! stored_as_text {
    ($($name:ty),*) => {$(
        impl ToSql for $name {
            fn to_sql(
                &self,
                ty: &Type,
                out: &mut bytes::BytesMut,
            ) -> std::result::Result<IsNull, Box<dyn std::error::Error + Sync + Send>> {
                self.as_str().to_sql(ty, out)
            }

            fn accepts(ty: &Type) -> bool {
                <&str as ToSql>::accepts(ty)
            }

            to_sql_checked!();
        }

        impl<'a> FromSql<'a> for $name {
            fn from_sql(
                ty: &Type,
                raw: &'a [u8],
            ) -> std::result::Result<Self, Box<dyn std::error::Error + Sync + Send>> {
                Ok(<$name>::parse(<&str as FromSql>::from_sql(ty, raw)?)?)
            }

            fn accepts(ty: &Type) -> bool {
                <&str as FromSql>::accepts(ty)
            }
        }
    )*};
}

stored_as_text!(JobStatus, Queue, RuleOutcome);

/// The rule, event and chain depth of an action job (a dbt run it started reports back).
pub const ACTION_ORIGIN: &str = "SELECT j.rule, j.event_id, COALESCE(e.chain_depth, 0)
     FROM jobs j LEFT JOIN events e ON e.id = j.event_id
     WHERE j.id = $1 AND j.queue = 'action'";

/// A clock's state.
pub const CLOCK: &str =
    "SELECT name, last_due_ms, last_check_in_ms, missed_due_ms FROM clocks WHERE name = $1";
/// Every clock's state.
pub const CLOCKS: &str =
    "SELECT name, last_due_ms, last_check_in_ms, missed_due_ms FROM clocks ORDER BY name";
/// A clock's first row: its due times are judged from `last_due_ms` on.
pub const CLOCK_START: &str =
    "INSERT INTO clocks (name, last_due_ms) VALUES ($1, $2) ON CONFLICT (name) DO NOTHING";
/// One due time judged: only if no one judged it (or a later one) first.
pub const CLOCK_JUDGED: &str = "UPDATE clocks SET last_due_ms = $2,
        missed_due_ms = CASE WHEN $4 THEN $2 ELSE missed_due_ms END
     WHERE name = $1 AND last_due_ms = $3";

/// Mutes (or unmutes) an alert that exists.
pub const MUTE_ALERT: &str = "UPDATE alerts SET muted_until_ms = $2, mute_reason = $3
     WHERE name = $1 AND version > 0";
