//! What both backends do alike, written once: the keys of stage and action jobs, which
//! claim candidates to lease, and the decisions inside a write transaction (what a replay
//! is keyed, which jobs `retry` may requeue, what an alert reset and an evaluation write),
//! over [`WriteTx`], the few statements each backend provides.
//!
//! The decisions are `async` because PostgreSQL's client is; SQLite's statements never
//! wait, so its calls drive them to the end at once ([`run_now`]).

use std::future::Future;
use std::sync::LazyLock;

use serde_json::{json, Value};

use super::{
    AlertState, Attempt, AttemptError, Evaluation, FirstJob, Job, JobStatus, JournalError, NewJob,
    Queue, Replay, Retried, RuleRun,
};
use crate::event::{Event, Source};

/// Events pruned per transaction. Each takes its evaluate job and its rule runs with it
/// (and its actions, usually none or a few), so a batch deletes some hundreds of rows:
/// short enough that intake's commits get the journal between batches, and the rows
/// of one batch are never a million (docs/behaviour.md section 12). 2,500 made intake's
/// p99 ten times longer while 1,000,000 expired events were pruned on SQLite, 500 three
/// times; 200 (with the rests) keeps it within 2x on both backends (bench/prune).
pub(crate) const PRUNE_BATCH: usize = 200;

/// After each batch, pruning rests as long as the batch took (at most a second), so that
/// it takes at most half the journal's time and intake's commits keep their pace; a
/// million expired events still go in about a minute.
fn rest_after_prune_batch(batch_took: std::time::Duration) {
    std::thread::sleep(batch_took.min(std::time::Duration::from_secs(1)));
}

/// Pruning's loop on both backends: `one_batch` deletes up to `batch` expired events in a
/// transaction and says how many (None: another instance is pruning). Ends after a
/// short batch, or once `go_on` is false (freshet is stopping), resting after each batch;
/// returns how many were deleted.
pub(crate) fn prune_in_batches_with(
    batch: usize,
    go_on: &(dyn Fn() -> bool + Sync),
    mut one_batch: impl FnMut() -> Result<Option<usize>>,
) -> Result<usize> {
    let mut pruned = 0;
    loop {
        let started = std::time::Instant::now();
        let Some(deleted) = one_batch()? else {
            return Ok(pruned);
        };
        pruned += deleted;
        if deleted < batch || !go_on() {
            return Ok(pruned);
        }
        rest_after_prune_batch(started.elapsed());
    }
}

/// Finds the open, not started job identical to job `?1`: the same `coalesce_key`,
/// pending or retrying (`jobs_coalesce` indexes them). The same SQL on both backends,
/// which both read `$1` as the first parameter.
pub(super) const OPEN_TWIN_SQL: &str = "SELECT twin.id FROM jobs AS me
     JOIN jobs AS twin ON twin.coalesce_key = me.coalesce_key
     WHERE me.id = $1 AND twin.id <> me.id AND twin.status IN ('pending', 'retrying')
     LIMIT 1";

type Result<T> = std::result::Result<T, JournalError>;

/// `value` as JSON text, for a statement that stores it (or reads it with `json_each`).
/// A value that cannot be written as JSON is refused, not a journal failure.
pub(super) fn json_text(value: &impl serde::Serialize) -> Result<String> {
    serde_json::to_string(value).map_err(|e| JournalError::Refused(e.to_string()))
}

/// A JSON column as stored: text that does not parse is corrupt data.
pub(super) fn parse_json(text: &str) -> Result<Value> {
    serde_json::from_str(text).map_err(|e| JournalError::Corrupt(e.to_string()))
}

/// The statements a backend runs inside one write transaction, for the decisions below.
/// Reads that precede a write lock what they read where the backend can (PostgreSQL's
/// `FOR UPDATE`; SQLite's write transactions hold the whole file).
pub(super) trait WriteTx {
    /// Whether an event with `id` is journaled.
    async fn event_exists(&mut self, id: &str) -> Result<bool>;
    /// How many evaluate jobs `event_id` has had (its first evaluation and its replays).
    async fn evaluations_of(&mut self, event_id: &str) -> Result<i64>;
    /// Inserts `job` unless its key exists; its id when inserted.
    async fn insert_job(&mut self, job: &NewJob) -> Result<Option<i64>>;
    /// A job's status and queue, locked for the rest of the transaction.
    async fn job_status(&mut self, id: i64) -> Result<Option<(JobStatus, Queue)>>;
    /// Puts a dead job back to pending with one more attempt, due now, and wakes `queue`.
    async fn requeue_dead(&mut self, id: i64, queue: Queue) -> Result<()>;
    /// The open, not started job identical to job `id` (same `coalesce_key`, pending or
    /// retrying), if there is one: the one job `id` must merge into rather than be open
    /// beside it (the unique index allows one).
    async fn open_twin(&mut self, id: i64) -> Result<Option<i64>>;
    /// Ends dead job `id` merged into `twin`.
    async fn merge_dead(&mut self, id: i64, twin: i64) -> Result<()>;
    /// Alert `name`'s stored state, locked, and the database's clock (ms), for deciding
    /// a transition. `event_id` is the event deciding it.
    async fn lock_alert(&mut self, name: &str, event_id: &str)
        -> Result<(Option<AlertState>, i64)>;
    /// Stores `state` as decided by `event_id`.
    async fn save_alert(&mut self, state: &AlertState, event_id: &str) -> Result<()>;
    /// Whether alert `name` is firing (None: no such alert), locked, without making it.
    async fn alert_firing(&mut self, name: &str) -> Result<Option<bool>>;
    /// Sets a firing alert to OK under a new version, posting nothing.
    async fn reset_alert_state(&mut self, name: &str) -> Result<()>;
    /// Records a check-in of clock `name` now; returns the due time of a miss it meets
    /// (clearing it) and the database's clock (ms).
    async fn check_in(&mut self, name: &str) -> Result<(Option<i64>, i64)>;
    /// Journals a freshet event with its evaluate job (nothing if its id exists).
    async fn insert_event(&mut self, event: &Event) -> Result<()>;
    /// Records (or overwrites, for a replay) what `run.rule` did with `event_id`.
    async fn upsert_rule_run(&mut self, event_id: &str, run: &RuleRun) -> Result<()>;
}

/// Drives a decision over SQLite's [`WriteTx`], whose statements complete without ever
/// waiting, to its end on the calling thread.
pub(super) fn run_now<T>(decision: impl Future<Output = Result<T>>) -> Result<T> {
    use futures_util::FutureExt;
    decision.now_or_never().unwrap_or_else(|| {
        Err(JournalError::unavailable(
            "a journal statement waited where none can",
        ))
    })
}

/// Queues a new evaluation of a journaled event (`freshet replay`); the new job's id. A
/// replay is a new evaluation: its key (and so its action keys) differ from the first
/// evaluation's, so the actions run again.
pub(super) async fn queue_replay(
    tx: &mut impl WriteTx,
    event_id: &str,
    replay: &Replay,
) -> Result<i64> {
    if !tx.event_exists(event_id).await? {
        return Err(JournalError::Refused(format!(
            "no journaled event with id {event_id}"
        )));
    }
    let replays = tx.evaluations_of(event_id).await?;
    let mut payload = json!({ "replay": replays });
    if let Some(rule) = &replay.rule {
        payload["rule"] = json!(rule);
    }
    let job = stage_job(
        replay.first,
        event_id,
        Some(&format!("replay{replays}")),
        payload,
    );
    tx.insert_job(&job)
        .await?
        .ok_or_else(|| JournalError::Refused(format!("a replay of {event_id} is already queued")))
}

/// Puts a dead job back to pending with one more attempt allowed (`freshet retry`); or,
/// when an identical call is pending already, merges the dead job into it.
pub(super) async fn retry(tx: &mut impl WriteTx, job_id: i64) -> Result<Retried> {
    match tx.job_status(job_id).await? {
        None => Err(JournalError::Refused(format!("no action with id {job_id}"))),
        Some((JobStatus::Dead, queue)) => match tx.open_twin(job_id).await? {
            Some(twin) => {
                tx.merge_dead(job_id, twin).await?;
                Ok(Retried::MergedInto(twin))
            }
            None => {
                tx.requeue_dead(job_id, queue).await?;
                Ok(Retried::Queued)
            }
        },
        Some((other, _)) => Err(JournalError::Refused(format!(
            "action {job_id} is {other}; only dead actions can be retried"
        ))),
    }
}

/// Sets alert `name` to OK without posting (`freshet alerts --reset`). None if there is
/// no such alert; Some(false) if it was OK already.
pub(super) async fn reset_alert(tx: &mut impl WriteTx, name: &str) -> Result<Option<bool>> {
    match tx.alert_firing(name).await? {
        None => Ok(None),
        Some(false) => Ok(Some(false)),
        Some(true) => {
            tx.reset_alert_state(name).await?;
            Ok(Some(true))
        }
    }
}

/// Locks every alert a batch of evaluations decides, in name order, before any of them is
/// recorded. Instances recording batches that touch the same alerts then take the locks
/// in one order and wait for each other instead of deadlocking (PostgreSQL locks each
/// alert's row; SQLite's transaction holds the whole file, so it needs none of this).
pub(super) async fn lock_alerts_in_name_order(
    tx: &mut impl WriteTx,
    batch: &[(Job, Evaluation)],
) -> Result<()> {
    let mut names = std::collections::BTreeMap::new();
    for (job, evaluation) in batch {
        for call in &evaluation.alerts {
            names
                .entry(call.name.as_str())
                .or_insert(job.event_id.as_str());
        }
    }
    for (name, event_id) in names {
        tx.lock_alert(name, event_id).await?;
    }
    Ok(())
}

/// What one evaluation adds to the journal once its lease is ended: its rule runs, its
/// action jobs, and each alert call's transition, decided from the state the transaction
/// reads (and locks) and applied with the post it queues.
pub(super) async fn record_outcome(
    tx: &mut impl WriteTx,
    job: &Job,
    evaluation: &Evaluation,
) -> Result<()> {
    for run in &evaluation.rule_runs {
        tx.upsert_rule_run(&job.event_id, run).await?;
    }
    for new_job in &evaluation.jobs {
        tx.insert_job(new_job).await?;
    }
    for call in &evaluation.alerts {
        let (previous, now) = tx.lock_alert(&call.name, &job.event_id).await?;
        let transition = (evaluation.decide_alert)(previous.as_ref(), call, now);
        if let Some(state) = &transition.new_state {
            tx.save_alert(state, &job.event_id).await?;
        }
        for queued in transition.jobs {
            let new_job = call.alert_job(job, queued, evaluation.alert_max_attempts);
            tx.insert_job(&new_job).await?;
        }
    }
    for name in &evaluation.check_ins {
        let (met, now) = tx.check_in(name).await?;
        if let Some(due_ms) = met {
            tx.insert_event(&deadline_met(name, due_ms, now)).await?;
        }
    }
    Ok(())
}

/// `freshet.deadline.met`: the first check-in after a miss (docs/behaviour.md section 14).
pub fn deadline_met(key: &str, due_ms: i64, now_ms: i64) -> Event {
    let name = key.strip_prefix("deadline:").unwrap_or(key);
    let mut fields = serde_json::Map::new();
    fields.insert("name".into(), json!(name));
    fields.insert("due_at".into(), json!(rfc3339(due_ms)));
    fields.insert(
        "late_minutes".into(),
        json!((now_ms.saturating_sub(due_ms)) / 60_000),
    );
    Event {
        id: format!("freshet:deadline.met:{name}:{due_ms}"),
        source: Source::Freshet,
        kind: "freshet.deadline.met".into(),
        received_at: rfc3339(now_ms),
        chain_depth: 0,
        fields,
        raw: Value::Null,
    }
}

/// A time in ms as RFC 3339 (UTC, milliseconds).
pub fn rfc3339(ms: i64) -> String {
    chrono::DateTime::from_timestamp_millis(ms)
        .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true))
        .unwrap_or_default()
}

/// A job key made of `parts`, unambiguous whatever the parts contain: the parts are
/// written as a JSON array, so an event id holding `:` (or anything else) can never make
/// two different keys look alike (ARCHITECTURE.md, "Durability contract").
pub fn job_key(parts: &[&str]) -> String {
    serde_json::to_string(parts).expect("a list of strings always serializes")
}

/// An `enrich` or `evaluate` job for an event. Its key is made of the queue and the event
/// id, plus `suffix` for a later evaluation of the same event (a replay).
pub fn stage_job(stage: FirstJob, event_id: &str, suffix: Option<&str>, payload: Value) -> NewJob {
    let queue = stage.queue;
    let key = match suffix {
        // Every event has one of these keys, stored twice (in the row and in the unique
        // index), so it is short: `["evaluate","<id>"]` was 24 bytes an event more than
        // this. It is as unambiguous: every other key is a JSON array (it starts with
        // `[`), and after the queue's letter comes the id, whole. Rows written before keep
        // their old keys; no stage job is ever inserted twice for one event, so the two
        // forms never meet.
        None => format!("{}:{event_id}", stage_letter(queue)),
        Some(suffix) => job_key(&[queue.as_str(), event_id, suffix]),
    };
    NewJob {
        queue,
        kind: queue.as_str().to_string(),
        event_id: event_id.to_string(),
        rule: None,
        job_key: key,
        coalesce_key: None,
        payload,
        max_attempts: stage.max_attempts,
    }
}

/// The first letter of a stage job's key.
fn stage_letter(queue: Queue) -> char {
    match queue {
        Queue::Evaluate => 'e',
        Queue::Enrich => 'n',
        Queue::Action => 'a',
    }
}

/// Which of the claim candidates (soonest first; id and attempts so far) to lease. A job
/// tried before may be the one that killed the process last time, so it is leased alone:
/// if it does so again, it takes no other job's attempt with it (docs/behaviour.md section 11,
/// poison events). Fresh jobs are leased together, the earliest due deciding which kind goes
/// first.
pub fn isolate_retried(candidates: &[(i64, u32)]) -> Vec<i64> {
    match candidates.first() {
        None => Vec::new(),
        Some(&(id, attempt)) if attempt > 0 => vec![id],
        Some(_) => candidates
            .iter()
            .filter(|(_, attempt)| *attempt == 0)
            .map(|(id, _)| *id)
            .collect(),
    }
}

/// The replay suffix of a stage job's key (`replay3`), from its payload.
pub fn replay_suffix(payload: &Value) -> Option<String> {
    payload
        .get("replay")
        .and_then(Value::as_i64)
        .map(|n| format!("replay{n}"))
}

/// The console's page of events as SQL with only the conditions its filter sets (each
/// statement is prepared once with a generic plan: a condition such as `$1 IS NULL OR
/// source = $1` would keep that plan from walking `events_received` backwards), and its
/// parameters in order. `placeholder(n)` writes the n-th parameter (`?n`, `$n`).
pub fn events_page_sql(
    filter: &crate::journal::EventFilter,
    before: Option<&crate::journal::EventCursor>,
    limit: usize,
    placeholder: impl Fn(usize) -> String,
) -> (String, Vec<ParamValue>) {
    let mut conditions = Vec::new();
    let mut params = Vec::new();
    for (column, value) in [
        ("source", &filter.source),
        ("type", &filter.kind),
        ("status", &filter.status),
    ] {
        if let Some(value) = value {
            params.push(ParamValue::Text(value.clone()));
            conditions.push(format!("e.{column} = {}", placeholder(params.len())));
        }
    }
    if let Some(cursor) = before {
        params.push(ParamValue::Int(cursor.received_ms));
        let ms = placeholder(params.len());
        params.push(ParamValue::Text(cursor.id.clone()));
        let id = placeholder(params.len());
        conditions.push(format!(
            "(e.received_ms < {ms} OR (e.received_ms = {ms} AND e.id < {id}))"
        ));
    }
    params.push(ParamValue::Int(limit as i64));
    let limit = placeholder(params.len());
    // The events not evaluated yet are found from their first jobs, open or dead: few.
    // Walking the events newest first to find them read the whole journal when none
    // waits, the usual case (CROSS JOIN: SQLite keeps the jobs as the outer loop).
    let from = if filter.status.as_deref() == Some("received") {
        conditions.push("e.id = w.event_id".into());
        format!(
            "(SELECT DISTINCT event_id FROM ({}) f) w CROSS JOIN events e",
            waiting_first_jobs("")
        )
    } else {
        "events e".to_string()
    };
    let filter = if conditions.is_empty() {
        String::new()
    } else {
        format!("WHERE {}", conditions.join(" AND "))
    };
    (
        format!(
            "SELECT e.id, e.source, e.type, e.received_at, e.received_ms, e.status FROM {from} {filter}
             ORDER BY e.received_ms DESC, e.id DESC LIMIT {limit}"
        ),
        params,
    )
}

/// The event ids of first jobs (evaluate, enrich) that are open (`jobs_open`, its
/// condition verbatim) or dead (`jobs_listed`): the events not evaluated yet. `bound`
/// adds a condition to both (`jobs_listed` holds `scheduled_at`).
fn waiting_first_jobs(bound: &str) -> String {
    format!(
        "SELECT event_id FROM jobs
         WHERE (status = 'pending' OR status = 'retrying' OR status = 'running')
           AND queue IN ('evaluate', 'enrich'){bound}
         UNION ALL
         SELECT event_id FROM jobs WHERE status = 'dead' AND queue <> 'action'{bound}"
    )
}

/// A parameter of [`events_page_sql`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ParamValue {
    Text(String),
    Int(i64),
}

impl rusqlite::ToSql for ParamValue {
    fn to_sql(&self) -> rusqlite::Result<rusqlite::types::ToSqlOutput<'_>> {
        match self {
            ParamValue::Text(text) => text.to_sql(),
            ParamValue::Int(n) => n.to_sql(),
        }
    }
}

/// The overview's events received since `$1`, by source, with the newest: read from
/// `events_received (received_ms, source)` alone.
pub const OVERVIEW_TOTALS: &str = "SELECT source, count(*), max(received_ms) FROM events
     WHERE received_ms >= $1 GROUP BY source ORDER BY source";

/// The overview's events not evaluated yet, by source and status: from their open or
/// dead first jobs, each bounded by its schedule (never before its event was received,
/// so no event of the day is missed), then each event by id. From the events' side it
/// read every event of the day (13 ms on PostgreSQL with 1,000,000 events and their jobs).
pub static OVERVIEW_WAITING: LazyLock<String> = LazyLock::new(|| {
    format!(
        "SELECT e.source, e.status, count(*) FROM ({}) j
         JOIN events e ON e.id = j.event_id
         WHERE e.received_ms >= $1 AND e.status <> 'evaluated'
         GROUP BY e.source, e.status ORDER BY e.source, e.status",
        waiting_first_jobs(" AND scheduled_at >= $1")
    )
});

/// The jobs `freshet actions` and the console list, newest first (`$1` of them): every
/// action, and stage jobs that failed.
pub const LISTED_JOBS: &str = "SELECT * FROM jobs
     WHERE (queue = 'action' OR status = 'dead' OR status = 'retrying')
     ORDER BY id DESC LIMIT $1";

/// [`LISTED_JOBS`] of one status, written so that it reads `jobs_listed` in id order: a
/// dead or retrying job of any queue, else an action. The status is written into the
/// statement (a [`JobStatus`], never text from outside): SQLite uses a partial index only
/// for a condition it can read in the query, and PostgreSQL estimated the condition
/// repeated beside `status = $1` so badly that it read all 21,000 dead jobs to list 200.
pub fn listed_jobs_of(status: JobStatus) -> String {
    let queue = match status {
        JobStatus::Dead | JobStatus::Retrying => "",
        _ => " AND queue = 'action'",
    };
    format!(
        "SELECT * FROM jobs WHERE status = '{}'{queue} ORDER BY id DESC LIMIT $1",
        status.as_str()
    )
}

/// The statuses the overview counts actions of, in [`OVERVIEW_JOBS`]' column order.
pub const OVERVIEW_JOB_STATUSES: [JobStatus; 6] = [
    JobStatus::Dead,
    JobStatus::Merged,
    JobStatus::Pending,
    JobStatus::Retrying,
    JobStatus::Running,
    JobStatus::Succeeded,
];

/// The overview's action jobs created since `$1` (`jobs_action_created`): one count per
/// status of [`OVERVIEW_JOB_STATUSES`]. Written without `GROUP BY`, so that SQLite does
/// not walk an index ordered by status through every action.
pub static OVERVIEW_JOBS: LazyLock<String> = LazyLock::new(|| {
    let counts: Vec<String> = OVERVIEW_JOB_STATUSES
        .iter()
        .map(|status| format!("count(*) FILTER (WHERE status = '{}')", status.as_str()))
        .collect();
    format!(
        "SELECT {} FROM jobs WHERE queue = 'action' AND created_at >= $1",
        counts.join(", ")
    )
});

/// [`OVERVIEW_JOBS`]' counts as (status, count), the statuses with none left out.
pub fn action_counts(counts: impl IntoIterator<Item = i64>) -> Vec<(String, u64)> {
    OVERVIEW_JOB_STATUSES
        .iter()
        .zip(counts)
        .filter(|(_, count)| *count > 0)
        .map(|(status, count)| (status.as_str().to_string(), count as u64))
        .collect()
}

/// The overview from its three counts: each source's events split into those still
/// waiting (by their status) and the evaluated rest.
pub fn overview(
    totals: Vec<(String, u64, i64)>,
    waiting: Vec<(String, String, u64)>,
    jobs: Vec<(String, u64)>,
) -> crate::journal::Overview {
    let mut events = Vec::new();
    let mut last_event = Vec::new();
    for (source, total, newest_ms) in totals {
        let mut left = total;
        for (_, status, count) in waiting.iter().filter(|(s, _, _)| *s == source) {
            left = left.saturating_sub(*count);
            events.push((source.clone(), status.clone(), *count));
        }
        if left > 0 {
            events.push((source.clone(), "evaluated".to_string(), left));
        }
        last_event.push((source, rfc3339(newest_ms)));
    }
    events.sort();
    crate::journal::Overview {
        events,
        jobs,
        last_event,
    }
}

/// A job's attempts from what the journal keeps: `errors` (each failed attempt, JSON),
/// and for the attempt that runs or succeeded, the job's status with `started_at` and
/// `finished_at`. An unreadable `errors` shows no failed attempts rather than failing
/// the page.
pub fn attempts(
    errors: &str,
    status: JobStatus,
    attempt: u32,
    started_ms: Option<i64>,
    finished_ms: Option<i64>,
) -> Vec<Attempt> {
    let failed: Vec<AttemptError> = serde_json::from_str(errors).unwrap_or_default();
    let mut attempts: Vec<Attempt> = failed
        .into_iter()
        .map(|failed| Attempt {
            attempt: failed.attempt,
            started_ms: failed.started,
            ended_ms: Some(failed.at),
            status: "failed",
            error: Some(failed.error),
        })
        .collect();
    match status {
        JobStatus::Dead => {
            if let Some(last) = attempts.last_mut().filter(|last| last.attempt == attempt) {
                last.status = "dead";
            }
        }
        JobStatus::Running | JobStatus::Succeeded => attempts.push(Attempt {
            attempt,
            started_ms,
            ended_ms: finished_ms.filter(|_| status == JobStatus::Succeeded),
            status: status.as_str(),
            error: None,
        }),
        JobStatus::Pending | JobStatus::Retrying | JobStatus::Merged => {}
    }
    attempts
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::journal::AlertCall;

    /// A transaction that only notes which alerts it was asked to lock, in order.
    #[derive(Default)]
    struct LockLog(Vec<String>);

    impl WriteTx for LockLog {
        async fn event_exists(&mut self, _: &str) -> Result<bool> {
            Ok(true)
        }
        async fn check_in(&mut self, _: &str) -> Result<(Option<i64>, i64)> {
            Ok((None, 0))
        }
        async fn insert_event(&mut self, _: &Event) -> Result<()> {
            Ok(())
        }
        async fn evaluations_of(&mut self, _: &str) -> Result<i64> {
            Ok(0)
        }
        async fn insert_job(&mut self, _: &NewJob) -> Result<Option<i64>> {
            Ok(None)
        }
        async fn job_status(&mut self, _: i64) -> Result<Option<(JobStatus, Queue)>> {
            Ok(None)
        }
        async fn requeue_dead(&mut self, _: i64, _: Queue) -> Result<()> {
            Ok(())
        }
        async fn open_twin(&mut self, _: i64) -> Result<Option<i64>> {
            Ok(None)
        }
        async fn merge_dead(&mut self, _: i64, _: i64) -> Result<()> {
            Ok(())
        }
        async fn lock_alert(&mut self, name: &str, _: &str) -> Result<(Option<AlertState>, i64)> {
            self.0.push(name.to_string());
            Ok((None, 0))
        }
        async fn save_alert(&mut self, _: &AlertState, _: &str) -> Result<()> {
            Ok(())
        }
        async fn alert_firing(&mut self, _: &str) -> Result<Option<bool>> {
            Ok(None)
        }
        async fn reset_alert_state(&mut self, _: &str) -> Result<()> {
            Ok(())
        }
        async fn upsert_rule_run(&mut self, _: &str, _: &RuleRun) -> Result<()> {
            Ok(())
        }
    }

    fn evaluation_of(event_id: &str, alerts: &[&str]) -> (Job, Evaluation) {
        let job = Job {
            id: 1,
            queue: Queue::Evaluate,
            kind: "evaluate".into(),
            event_id: event_id.into(),
            rule: None,
            payload: Value::Null,
            attempt: 1,
            max_attempts: 5,
            interrupted: None,
        };
        let alerts = alerts
            .iter()
            .map(|name| AlertCall {
                rule: "r".into(),
                name: name.to_string(),
                firing: true,
                text: "t".into(),
                channel: None,
                renotify_minutes: None,
                resolve: true,
                event_id: "e".into(),
                presentation: Value::Null,
            })
            .collect();
        let evaluation = Evaluation {
            alerts,
            ..Default::default()
        };
        (job, evaluation)
    }

    /// Two instances whose batches touch the same alerts in opposite orders lock them in
    /// one order (name order), each once, before recording anything: neither can hold one
    /// lock while waiting for the other's.
    #[test]
    fn a_batch_locks_its_alerts_in_name_order_first() {
        let batch = [
            evaluation_of("e1", &["zeta", "alpha"]),
            evaluation_of("e2", &["mid", "alpha", "zeta"]),
        ];
        let mut tx = LockLog::default();
        run_now(lock_alerts_in_name_order(&mut tx, &batch)).unwrap();
        assert_eq!(tx.0, ["alpha", "mid", "zeta"]);
    }

    #[test]
    fn a_dead_jobs_last_failed_attempt_is_shown_dead_and_old_entries_have_no_start() {
        let errors = r#"[{"attempt":1,"at":2000,"error":"HTTP 503"},
                         {"attempt":2,"started":3000,"at":3500,"error":"HTTP 400"}]"#;
        let shown = attempts(errors, JobStatus::Dead, 2, Some(3000), Some(3500));
        assert_eq!(shown.len(), 2);
        assert_eq!((shown[0].status, shown[0].started_ms), ("failed", None));
        assert_eq!(shown[0].duration_ms(), None);
        assert_eq!(
            (shown[1].status, shown[1].duration_ms()),
            ("dead", Some(500))
        );
        // Retried by hand: pending again, its earlier attempts all failed ones.
        let shown = attempts(errors, JobStatus::Pending, 2, Some(3000), None);
        assert!(shown.iter().all(|a| a.status == "failed"));
        assert!(attempts("not json", JobStatus::Retrying, 1, None, None).is_empty());
    }
}
