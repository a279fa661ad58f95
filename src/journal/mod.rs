//! The durable journal of events, jobs and alert state (JOURNAL.md).
//!
//! Every stage hands work on through here rather than through memory: intake commits an
//! event and its first job before answering 200, evaluation and actions are jobs claimed
//! with a lease, and each stage's result is written in one transaction. A crash anywhere
//! therefore loses nothing that was acknowledged.
//!
//! [`JournalStore`] is the one small interface. [`sqlite::SqliteJournal`] is the embedded
//! implementation (one process per journal); [`postgres::PostgresJournal`] lets several
//! instances share one journal and job queue. `contract.rs` holds the tests both pass.

#[cfg(test)]
mod contract;
pub mod postgres;

pub mod sqlite;

use std::sync::Arc;

use serde::Serialize;
use serde_json::Value;

use crate::event::Event;

pub use postgres::PostgresJournal;
pub use sqlite::SqliteJournal;

/// Shared handle on the journal, used by every stage.
pub type Journal = Arc<dyn JournalStore>;

/// Why the journal could not do what was asked.
#[derive(Debug, thiserror::Error)]
pub enum JournalError {
    #[error("journal database error: {0}")]
    Database(#[from] rusqlite::Error),
    #[error("cannot open the journal {path}: {message}")]
    Open { path: String, message: String },
    #[error("journal data is corrupt: {0}")]
    Corrupt(String),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    Invalid(String),
    #[error("the journal could not commit: {0}")]
    Commit(String),
    /// PostgreSQL failed or cannot be reached (the message says so).
    #[error("{0}")]
    Backend(String),
}

/// The answer to [`JournalStore::append`], given once the transaction that holds the event
/// is committed (on disk) or has failed. Concurrent appends share one commit, so a caller
/// waits here rather than holding a thread while it waits its turn for the database.
pub struct AppendTicket(tokio::sync::oneshot::Receiver<Result<Appended, String>>);

/// The journal's side of an [`AppendTicket`]: answers it after the commit.
pub struct AppendReply(tokio::sync::oneshot::Sender<Result<Appended, String>>);

impl AppendTicket {
    /// A ticket and the reply that answers it.
    pub fn new() -> (AppendReply, AppendTicket) {
        let (reply, ticket) = tokio::sync::oneshot::channel();
        (AppendReply(reply), AppendTicket(ticket))
    }

    /// A ticket answered already (a failure found before anything was queued).
    pub fn ready(result: Result<Appended, JournalError>) -> AppendTicket {
        let (reply, ticket) = AppendTicket::new();
        reply.send(result.map_err(|error| error.to_string()));
        ticket
    }

    /// Waits for the commit.
    pub async fn committed(self) -> Result<Appended, JournalError> {
        Self::answer(self.0.await)
    }

    /// Blocks until the commit; for callers that are not on an async worker.
    pub fn wait(self) -> Result<Appended, JournalError> {
        Self::answer(self.0.blocking_recv())
    }

    fn answer(
        received: Result<Result<Appended, String>, tokio::sync::oneshot::error::RecvError>,
    ) -> Result<Appended, JournalError> {
        match received {
            Ok(Ok(appended)) => Ok(appended),
            Ok(Err(message)) => Err(JournalError::Commit(message)),
            Err(_) => Err(JournalError::Commit(
                "the journal closed before the event was committed".into(),
            )),
        }
    }
}

impl AppendReply {
    pub fn send(self, result: Result<Appended, String>) {
        // The caller may have gone (its request was dropped); the commit stands regardless.
        let _ = self.0.send(result);
    }
}

/// The result of appending an event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Appended {
    New,
    /// The id was already journaled; nothing was inserted.
    Duplicate,
}

/// What [`JournalStore::release_running`] did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Released {
    /// Jobs that will run again.
    pub again: usize,
    /// Jobs whose interrupted attempt was their last: now dead.
    pub dead: usize,
}

/// The job an event is journaled with: `evaluate`, or `enrich` for a Mode run event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FirstJob {
    pub queue: Queue,
    pub max_attempts: u32,
}

impl FirstJob {
    /// Evaluation is local: its attempts count only stops and crashes (poison events).
    pub const EVALUATE: FirstJob = FirstJob {
        queue: Queue::Evaluate,
        max_attempts: 5,
    };

    /// Enrichment calls the Mode API and retries like an action (SPEC section 7).
    pub fn enrich(max_attempts: u32) -> FirstJob {
        FirstJob {
            queue: Queue::Enrich,
            max_attempts,
        }
    }
}

/// How to replay an event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Replay {
    /// `evaluate`, or `enrich` for a Mode event whose run was never fetched.
    pub first: FirstJob,
    /// Evaluate only this rule (`--rule NAME`).
    pub rule: Option<String>,
}

/// Which worker takes a job.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Queue {
    /// Fetch a Mode run (and its results) before the rules see the event.
    Enrich,
    /// Run the rules on an event.
    Evaluate,
    /// Call a service (Mode, Tableau, Slack).
    Action,
}

impl Queue {
    /// The queue named `name` (as `as_str` writes it).
    pub fn parse(name: &str) -> Option<Queue> {
        match name {
            "enrich" => Some(Queue::Enrich),
            "evaluate" => Some(Queue::Evaluate),
            "action" => Some(Queue::Action),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Queue::Enrich => "enrich",
            Queue::Evaluate => "evaluate",
            Queue::Action => "action",
        }
    }
}

/// A job key made of `parts`, unambiguous whatever the parts contain: the parts are
/// written as a JSON array, so an event id holding `:` (or anything else) can never make
/// two different keys look alike (SPEC section 11, "Job keys").
pub fn job_key(parts: &[&str]) -> String {
    serde_json::to_string(parts).expect("a list of strings always serializes")
}

/// A job to insert.
#[derive(Debug, Clone, PartialEq)]
pub struct NewJob {
    pub queue: Queue,
    pub kind: String,
    pub event_id: String,
    pub rule: Option<String>,
    /// Deterministic and unique: inserting the same key twice is a no-op.
    pub job_key: String,
    /// Identical not-yet-started calls share this key and are merged.
    pub coalesce_key: Option<String>,
    pub payload: Value,
    pub max_attempts: u32,
}

/// A claimed job, leased to this worker until it finishes or the lease runs out.
#[derive(Debug, Clone)]
pub struct Job {
    pub id: i64,
    pub queue: String,
    pub kind: String,
    pub event_id: String,
    pub rule: Option<String>,
    pub payload: Value,
    /// 1 on the first attempt. Together with `id` it identifies this lease.
    pub attempt: u32,
    pub max_attempts: u32,
}

/// How an attempt at a job ended.
#[derive(Debug, Clone, PartialEq)]
pub enum JobOutcome {
    /// Done; the value (if any) is kept as the job's result.
    Succeeded(Option<Value>),
    /// Try again after `delay_ms`; becomes dead when the attempts are used up.
    Retry { delay_ms: u64, error: String },
    /// Final failure.
    Dead { error: String },
    /// Nothing went wrong, but the job is not done: look again after `delay_ms` (polling
    /// a Tableau job, waiting for another job). Not an attempt: it spends none.
    Wait { delay_ms: u64 },
}

/// How an outcome is written to its job's row, the same in every backend.
#[derive(Debug, Clone, PartialEq)]
pub struct OutcomeColumns {
    /// The job's new status: `succeeded`, `pending` (a wait), `retrying` or `dead`.
    pub status: &'static str,
    /// The result to keep (a success's value, as JSON text).
    pub result: Option<String>,
    /// The attempt's error, added to the job's errors.
    pub error: Option<String>,
    /// When the job is due again (retrying, waiting), in ms from now.
    pub delay_ms: u64,
}

impl JobOutcome {
    /// Whether this outcome of an attempt at `job` ends it dead: a final failure, or a
    /// retry with no attempts left.
    pub fn ends_dead(&self, job: &Job) -> bool {
        match self {
            JobOutcome::Dead { .. } => true,
            JobOutcome::Retry { .. } => job.attempt >= job.max_attempts,
            JobOutcome::Succeeded(_) | JobOutcome::Wait { .. } => false,
        }
    }

    /// How this outcome of an attempt at `job` is written.
    pub fn columns(&self, job: &Job) -> OutcomeColumns {
        let status = match self {
            _ if self.ends_dead(job) => "dead",
            JobOutcome::Succeeded(_) => "succeeded",
            JobOutcome::Wait { .. } => "pending",
            JobOutcome::Retry { .. } | JobOutcome::Dead { .. } => "retrying",
        };
        let result = match self {
            JobOutcome::Succeeded(Some(value)) => Some(value.to_string()),
            _ => None,
        };
        let (error, delay_ms) = match self {
            JobOutcome::Succeeded(_) => (None, 0),
            JobOutcome::Wait { delay_ms } => (None, *delay_ms),
            JobOutcome::Retry { delay_ms, error } => (Some(error.clone()), *delay_ms),
            JobOutcome::Dead { error } => (Some(error.clone()), 0),
        };
        OutcomeColumns {
            status,
            result,
            error,
            delay_ms,
        }
    }
}

impl AlertCall {
    /// The Slack post an alert transition queues, for the event `job` evaluated.
    pub fn post_job(&self, job: &Job, key: String, payload: Value, max_attempts: u32) -> NewJob {
        NewJob {
            queue: Queue::Action,
            kind: "slack_post".into(),
            event_id: job.event_id.clone(),
            rule: Some(self.rule.clone()),
            job_key: key,
            coalesce_key: None,
            payload,
            max_attempts: max_attempts.max(1),
        }
    }
}

/// What a finished attempt writes besides its own outcome, in the same transaction: an
/// event it emits (`freshet.action.failed`, `tableau.refresh.completed`) with its
/// `evaluate` job, and a job it starts (following a Tableau refresh).
#[derive(Debug, Clone, Default)]
pub struct FollowUp {
    pub event: Option<Event>,
    pub job: Option<NewJob>,
}

/// A job's state, looked up by its key.
#[derive(Debug, Clone, PartialEq)]
pub struct KeyedJob {
    pub status: String,
    pub result: Option<Value>,
}

/// What one rule did with one event.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RuleRun {
    pub rule: String,
    /// `fired` (called at least one action) or `error`.
    pub outcome: String,
    pub actions: usize,
    pub error: Option<String>,
}

/// Everything an evaluation decided, written in one transaction.
#[derive(Debug, Clone)]
pub struct Evaluation {
    pub rule_runs: Vec<RuleRun>,
    pub jobs: Vec<NewJob>,
    pub alerts: Vec<AlertCall>,
    /// `max_attempts` for the Slack posts that alert transitions queue.
    pub alert_max_attempts: u32,
    /// Decides each alert call's transition from the state stored when the transaction
    /// reads it (the evaluate stage's `alerts::transition`): the journal applies it and
    /// knows nothing of alerts itself.
    pub decide_alert: AlertDecider,
}

impl Default for Evaluation {
    fn default() -> Self {
        Evaluation {
            rule_runs: Vec::new(),
            jobs: Vec::new(),
            alerts: Vec::new(),
            alert_max_attempts: 1,
            decide_alert: |_, _, _| AlertTransition::default(),
        }
    }
}

/// What an alert call does: the state to store (if it changes) and the post to queue
/// (its job key and payload).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct AlertTransition {
    pub new_state: Option<AlertState>,
    pub post: Option<(String, Value)>,
}

/// Decides an alert call's transition from the stored state, at a time (ms).
pub type AlertDecider = fn(Option<&AlertState>, &AlertCall, i64) -> AlertTransition;

/// Wakes the stage that takes jobs of a queue (when another instance queued work).
pub type WorkWaker = Arc<dyn Fn(Queue) + Send + Sync>;

/// A call to `alert(..)`: the transition is decided inside the evaluation's transaction.
#[derive(Debug, Clone, PartialEq)]
pub struct AlertCall {
    pub rule: String,
    pub name: String,
    pub firing: bool,
    /// What to post when the alert starts firing (or renotifies). The resolved message
    /// is `Resolved: <name>` and does not use it.
    pub text: String,
    pub channel: Option<String>,
    pub renotify_minutes: Option<u64>,
    pub resolve: bool,
}

/// Stored state of one alert.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct AlertState {
    pub name: String,
    pub firing: bool,
    pub version: i64,
    pub since_ms: i64,
    pub last_notified_ms: Option<i64>,
}

/// One line of `freshet events`.
#[derive(Debug, Clone, Serialize)]
pub struct EventSummary {
    pub id: String,
    /// The instance that journaled it (a shared journal only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub instance: Option<String>,
    #[serde(rename = "type")]
    pub kind: String,
    pub received_at: String,
    pub status: String,
    pub rules: Vec<RuleRun>,
    pub actions: Vec<JobSummary>,
}

/// One line of `freshet actions`.
#[derive(Debug, Clone, Serialize)]
pub struct JobSummary {
    pub id: i64,
    /// The instance that ran (or runs) it (a shared journal only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub instance: Option<String>,
    pub kind: String,
    pub event_id: String,
    pub rule: Option<String>,
    pub status: String,
    pub attempt: u32,
    pub max_attempts: u32,
    pub last_error: Option<String>,
    pub payload: Value,
    pub result: Option<Value>,
}

/// The journal interface every backend implements. Methods other than `append` are
/// blocking; async callers go through [`blocking`].
pub trait JournalStore: Send + Sync + 'static {
    /// Queues the event and its first job (`enrich` for Mode run events, else `evaluate`)
    /// to be inserted in one transaction, and returns at once without blocking. The ticket
    /// answers after that transaction is committed: a known id inserts nothing and answers
    /// `Duplicate`. Appends queued together may share a transaction (group commit).
    fn append(&self, event: &Event, first_job: FirstJob) -> AppendTicket;

    /// [`Self::append`] for a caller that can share the event. A backend may keep a
    /// freshly journaled event in memory for [`Self::event_to_evaluate`], so that the
    /// evaluate stage does not read back and decode what intake has just written.
    fn append_shared(&self, event: Arc<Event>, first_job: FirstJob) -> AppendTicket {
        self.append(&event, first_job)
    }

    /// Fails when the journal cannot be written (for `/healthz`).
    fn check_writable(&self) -> Result<(), JournalError>;

    /// An event by id, as last written (enriched fields included).
    fn event(&self, id: &str) -> Result<Option<Event>, JournalError>;

    /// The event an evaluate job names: as [`Self::event`], or the event `append_shared`
    /// kept in memory if it is still there and unchanged since it was committed.
    fn event_to_evaluate(&self, id: &str) -> Result<Option<Arc<Event>>, JournalError> {
        Ok(self.event(id)?.map(Arc::new))
    }

    /// Newest first, optionally only events with `status`.
    fn events(&self, limit: usize, status: Option<&str>)
        -> Result<Vec<EventSummary>, JournalError>;

    /// Claims up to `limit` due jobs of `queue`, leasing them for `lease_ms`. A job that
    /// was tried before is claimed alone (it may be the one that stopped the process), and
    /// a job whose lease ran out with no attempts left becomes dead instead.
    fn claim(&self, queue: Queue, limit: usize, lease_ms: u64) -> Result<Vec<Job>, JournalError>;

    /// Milliseconds until the next job of `queue` is due (None: nothing waiting).
    fn next_due_in(&self, queue: Queue) -> Result<Option<u64>, JournalError>;

    /// Records an attempt's outcome if the lease is still ours, with its `follow_up` in the
    /// same transaction. Returns the job's new status, or None if the lease was lost (and
    /// then nothing is written).
    fn finish(
        &self,
        job: &Job,
        outcome: &JobOutcome,
        follow_up: &FollowUp,
    ) -> Result<Option<String>, JournalError>;

    /// The job with `job_key`, if there is one.
    fn job_by_key(&self, job_key: &str) -> Result<Option<KeyedJob>, JournalError>;

    /// Replaces the event's body (enrichment), finishes the `enrich` job and queues the
    /// `evaluate` job, in one transaction.
    fn finish_enrichment(&self, job: &Job, event: &Event) -> Result<bool, JournalError>;

    /// Records evaluations: for each, the rule runs, alert transitions, action jobs and the
    /// `evaluate` job's end; all in one transaction (one commit for a batch of events).
    /// For each, false if its lease was lost (nothing is written for it).
    fn finish_evaluations(&self, batch: &[(Job, Evaluation)]) -> Result<Vec<bool>, JournalError>;

    /// [`Self::finish_evaluations`], then [`Self::claim`] of the next `limit` evaluate
    /// jobs. A backend may do both in one transaction (SQLite does, in a commit it shares
    /// with intake): the claim's commit then costs nothing more, and the job rows the
    /// finish rewrites are written out once. When the claim alone fails, the finish stands
    /// and no jobs come back (the caller claims again the usual way); when the finish
    /// fails, nothing is claimed, and the evaluations run again when their leases end.
    fn finish_evaluations_and_claim(
        &self,
        batch: &[(Job, Evaluation)],
        limit: usize,
        lease_ms: u64,
    ) -> Result<(Vec<bool>, Vec<Job>), JournalError> {
        let recorded = self.finish_evaluations(batch)?;
        let claimed = self
            .claim(Queue::Evaluate, limit, lease_ms)
            .unwrap_or_else(|error| {
                tracing::error!(error = %error, "Cannot claim evaluate jobs.");
                Vec::new()
            });
        Ok((recorded, claimed))
    }

    /// Queues a new evaluation of a journaled event (`freshet replay`), or a new
    /// enrichment that is followed by one; returns the job's id.
    fn queue_replay(&self, event_id: &str, replay: &Replay) -> Result<i64, JournalError>;

    /// Makes every `running` job claimable again (called at start: with SQLite only one
    /// process uses the journal, so they were left by a crash). The interrupted attempt
    /// counts: a job with no attempts left is dead instead.
    fn release_running(&self) -> Result<Released, JournalError>;

    /// Jobs of the action queue, newest first, optionally by status.
    fn jobs(&self, status: Option<&str>, limit: usize) -> Result<Vec<JobSummary>, JournalError>;

    /// Puts a dead job back to pending with one more attempt allowed.
    fn retry(&self, job_id: i64) -> Result<(), JournalError>;

    /// Action jobs not yet finished (pending, retrying, running).
    fn backlog(&self) -> Result<u64, JournalError>;

    /// Current state of every alert.
    fn alerts(&self) -> Result<Vec<AlertState>, JournalError>;

    /// Sets alert `name` to OK without posting anything (`freshet alerts --reset`): a new
    /// state version, so a later transition posts as usual. None if there is no such
    /// alert; Some(false) if it was OK already.
    fn reset_alert(&self, name: &str) -> Result<Option<bool>, JournalError>;

    /// Deletes events older than `days` whose jobs are all finished; returns how many.
    fn prune(&self, days: u32) -> Result<usize, JournalError>;

    /// Gives up a claimed job without an outcome (its event could not be read, its task
    /// failed): it runs again when its lease ends. A backend that renews leases
    /// (PostgreSQL) stops renewing this one; SQLite's leases simply run out.
    fn abandon(&self, _job: &Job) {}

    /// Asks to be woken when another process queues work (PostgreSQL: `LISTEN`). The
    /// stages poll as well, so a backend without notifications does nothing here.
    fn on_work(&self, _waker: WorkWaker) {}

    /// This process's name in a shared journal (who journaled an event, who ran a job);
    /// None when one process has the journal to itself.
    fn instance(&self) -> Option<String> {
        None
    }
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
/// if it does so again, it takes no other job's attempt with it (SPEC section 11, poison
/// events). Fresh jobs are leased together, the earliest due deciding which kind goes
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

/// Opens the journal the config names for `freshet serve`: PostgreSQL with `url`
/// (several instances share it), else the SQLite file (held exclusively). Blocking.
pub fn open_for_serve(config: &crate::config::JournalConfig) -> Result<Journal, JournalError> {
    Ok(match &config.url {
        Some(url) => Arc::new(PostgresJournal::open(
            url.expose(),
            config.lease_seconds,
            postgres::Role::Serve,
        )?),
        None => Arc::new(SqliteJournal::open_for_serve(&config.path)?),
    })
}

/// Opens the journal for a CLI command, beside a running daemon; never creates one.
pub fn open_for_command(config: &crate::config::JournalConfig) -> Result<Journal, JournalError> {
    Ok(match &config.url {
        Some(url) => Arc::new(PostgresJournal::open(
            url.expose(),
            config.lease_seconds,
            postgres::Role::Command,
        )?),
        None => Arc::new(SqliteJournal::open_existing(&config.path)?),
    })
}

/// Where the journal is, for logs: the SQLite path, or "PostgreSQL" (a URL may hold a
/// password, so it is never shown).
pub fn describe(config: &crate::config::JournalConfig) -> String {
    match &config.url {
        Some(_) => "PostgreSQL (journal.url)".to_string(),
        None => config.path.display().to_string(),
    }
}

/// Runs a blocking journal call off the async workers.
pub async fn blocking<T, F>(journal: &Journal, call: F) -> Result<T, JournalError>
where
    T: Send + 'static,
    F: FnOnce(&dyn JournalStore) -> Result<T, JournalError> + Send + 'static,
{
    let journal = Arc::clone(journal);
    tokio::task::spawn_blocking(move || call(journal.as_ref()))
        .await
        .unwrap_or_else(|join_error| {
            Err(JournalError::Invalid(format!(
                "journal task failed: {join_error}"
            )))
        })
}
