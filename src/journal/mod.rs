//! The durable journal of events, jobs and alert state (ARCHITECTURE.md, "The journal").
//!
//! Every stage hands work on through here rather than through memory: intake commits an
//! event and its first job before answering 200, evaluation and actions are jobs claimed
//! with a lease, and each stage's result is written in one transaction. A crash anywhere
//! therefore loses nothing that was acknowledged.
//!
//! [`JournalStore`] is the one small interface. [`sqlite::SqliteJournal`] is the embedded
//! implementation (one process per journal); [`postgres::PostgresJournal`] lets several
//! instances share one journal and job queue. `contract.rs` holds the tests both pass.

mod common;
#[cfg(test)]
mod contract;
pub mod postgres;
pub mod sqlite;
mod types;

use std::sync::Arc;

use crate::event::Event;

pub use common::{isolate_retried, job_key, replay_suffix, rfc3339 as common_rfc3339, stage_job};
pub use types::*;

pub use postgres::PostgresJournal;
pub use sqlite::SqliteJournal;

/// Shared handle on the journal, used by every stage.
pub type Journal = Arc<dyn JournalStore>;

/// Why the journal could not do what was asked. Callers decide by the kind: a refusal
/// says nothing about the journal's health (`/healthz` ignores it), an unavailable journal
/// is a 503 and a retry later, corrupt data and a failed open stop the command.
#[derive(Debug, thiserror::Error)]
pub enum JournalError {
    /// The request does not fit the journal's state: no such job, an action that is not
    /// dead, a journal not set up yet, a value that cannot be stored.
    #[error("{0}")]
    Refused(String),
    /// The journal cannot be read or written now: a statement or a commit failed, the
    /// file went away, PostgreSQL is unreachable. The message says which.
    #[error("{message}")]
    Unavailable {
        message: String,
        #[source]
        source: Option<Box<dyn std::error::Error + Send + Sync>>,
    },
    /// Data in the journal is not what this freshet writes or knows.
    #[error("journal data is corrupt: {0}")]
    Corrupt(String),
    /// The journal could not be opened (or created) at all.
    #[error("cannot open the journal {path}: {message}")]
    Open { path: String, message: String },
}

impl JournalError {
    /// The journal cannot be used now, for the reason `message` gives.
    pub fn unavailable(message: impl Into<String>) -> JournalError {
        JournalError::Unavailable {
            message: message.into(),
            source: None,
        }
    }

    /// A commit that did not happen.
    pub fn commit_failed(message: impl std::fmt::Display) -> JournalError {
        JournalError::unavailable(format!("the journal could not commit: {message}"))
    }
}

impl From<rusqlite::Error> for JournalError {
    fn from(error: rusqlite::Error) -> JournalError {
        JournalError::Unavailable {
            message: format!("journal database error: {error}"),
            source: Some(Box::new(error)),
        }
    }
}

/// The answer to [`StageQueue::append`], given once the transaction that holds the event
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
            Ok(Err(message)) => Err(JournalError::commit_failed(message)),
            Err(_) => Err(JournalError::commit_failed(
                "the journal closed before the event was committed",
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

/// Wakes the stage that takes jobs of a queue (when another instance queued work).
pub type WorkWaker = Arc<dyn Fn(Queue) + Send + Sync>;

/// What the stages use: intake's append, claiming jobs, finishing them with what they
/// cause. Blocking but for `append`; async callers go through [`blocking`].
pub trait StageQueue: Send + Sync {
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

    /// An event by id, as last written (enriched fields included).
    fn event(&self, id: &str) -> Result<Option<Event>, JournalError>;

    /// The event an evaluate job names: as [`Self::event`], or the event `append_shared`
    /// kept in memory if it is still there and unchanged since it was committed.
    fn event_to_evaluate(&self, id: &str) -> Result<Option<Arc<Event>>, JournalError> {
        Ok(self.event(id)?.map(Arc::new))
    }

    /// The events of a batch of evaluate jobs, in the order of `ids`: each as
    /// [`Self::event_to_evaluate`] gives it, read together where that saves round trips
    /// (PostgreSQL: one statement for the batch instead of one per event).
    fn events_to_evaluate(&self, ids: &[&str]) -> Vec<Result<Option<Arc<Event>>, JournalError>> {
        ids.iter().map(|id| self.event_to_evaluate(id)).collect()
    }

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
    ) -> Result<Option<JobStatus>, JournalError>;

    /// The job with `job_key`, if there is one.
    fn job_by_key(&self, job_key: &str) -> Result<Option<KeyedJob>, JournalError>;

    /// The rule and event of action job `job_id`, if there is one.
    fn action_origin(&self, job_id: i64) -> Result<Option<ActionOrigin>, JournalError>;

    /// A deadline's or schedule's stored state.
    fn clock(&self, name: &str) -> Result<Option<ClockState>, JournalError>;

    /// Judges one due time of a clock, once across restarts and instances: when the
    /// stored last due time is still `judgement.last_due_ms`, it becomes `due_ms`, and
    /// the event (if any) is journaled with its evaluate job, in one transaction. False
    /// when it was judged already.
    fn judge_clock(&self, judgement: &ClockJudgement) -> Result<bool, JournalError>;

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

    /// Gives up a claimed job without an outcome (its event could not be read, its task
    /// failed): it runs again when its lease ends. A backend that renews leases
    /// (PostgreSQL) stops renewing this one; SQLite's leases simply run out.
    fn abandon(&self, _job: &Job) {}

    /// Whether this process surely still holds `job`'s lease, so that it may make an
    /// outside call for it (docs/behaviour.md section 12). One SQLite process holds every
    /// lease it took while it runs; PostgreSQL judges it on the monotonic clock.
    fn lease_held(&self, _job: &Job) -> bool {
        true
    }

    /// Asks to be woken when another process queues work (PostgreSQL: `LISTEN`). The
    /// stages poll as well, so a backend without notifications does nothing here.
    fn on_work(&self, _waker: WorkWaker) {}
}

/// What the CLI (and the console) read and steer: listings, replay, retry, alert resets.
pub trait Admin: Send + Sync {
    /// Newest first, optionally only events with `status`.
    fn events(&self, limit: usize, status: Option<&str>)
        -> Result<Vec<EventSummary>, JournalError>;

    /// Queues a new evaluation of a journaled event (`freshet replay`), or a new
    /// enrichment that is followed by one; returns the job's id.
    fn queue_replay(&self, event_id: &str, replay: &Replay) -> Result<i64, JournalError>;

    /// Jobs of the action queue, newest first, optionally by status.
    fn jobs(
        &self,
        status: Option<JobStatus>,
        limit: usize,
    ) -> Result<Vec<JobSummary>, JournalError>;

    /// Puts a dead job back to pending with one more attempt allowed; when an identical
    /// call is pending already, the dead job ends `merged` into it instead.
    fn retry(&self, job_id: i64) -> Result<Retried, JournalError>;

    /// A page of events for the console, newest first, strictly older than `before`.
    fn events_page(
        &self,
        filter: &EventFilter,
        before: Option<&EventCursor>,
        limit: usize,
    ) -> Result<Vec<EventLine>, JournalError>;

    /// What the rules did with an event and its action jobs with their failed attempts.
    fn event_activity(&self, event_id: &str) -> Result<EventActivity, JournalError>;

    /// Counts since `since_ms` for the console's overview.
    fn overview(&self, since_ms: i64) -> Result<Overview, JournalError>;

    /// Current state of every alert.
    fn alerts(&self) -> Result<Vec<AlertState>, JournalError>;

    /// Every deadline's and schedule's stored state.
    fn clocks(&self) -> Result<Vec<ClockState>, JournalError>;

    /// Mutes alert `name` until `until_ms` (None: unmutes it), with a reason; false if
    /// there is no such alert.
    fn mute_alert(
        &self,
        name: &str,
        until_ms: Option<i64>,
        reason: Option<&str>,
    ) -> Result<bool, JournalError>;

    /// Sets alert `name` to OK without posting anything (`freshet alerts --reset`): a new
    /// state version, so a later transition posts as usual. None if there is no such
    /// alert; Some(false) if it was OK already.
    fn reset_alert(&self, name: &str) -> Result<Option<bool>, JournalError>;
}

/// What keeps the journal running: its health, the release at start, pruning, and who
/// this process is in a shared journal.
pub trait Operations: Send + Sync {
    /// Fails when the journal cannot be written (for `/healthz`).
    fn check_writable(&self) -> Result<(), JournalError>;

    /// Makes every `running` job claimable again (called at start: with SQLite only one
    /// process uses the journal, so they were left by a crash). The interrupted attempt
    /// counts: a job with no attempts left is dead instead.
    fn release_running(&self) -> Result<Released, JournalError>;

    /// At a stop, once the stages are done: gives back the evaluations intake leased to
    /// this instance that its evaluate stage never took (PostgreSQL's hand-off), so that
    /// the next start or another instance evaluates them at once rather than after the
    /// lease. Returns how many.
    fn release_unstarted(&self) -> Result<usize, JournalError> {
        Ok(0)
    }

    /// Action jobs not yet finished (pending, retrying, running).
    fn backlog(&self) -> Result<u64, JournalError>;

    /// Deletes events older than `days` whose jobs are all finished, in batches; returns
    /// how many. Stops after the batch during which `go_on` turned false (freshet is
    /// stopping: a million expired events take about a minute).
    fn prune(&self, days: u32, go_on: &(dyn Fn() -> bool + Sync)) -> Result<usize, JournalError>;

    /// This process's name in a shared journal (who journaled an event, who ran a job);
    /// None when one process has the journal to itself.
    fn instance(&self) -> Option<String> {
        None
    }
}

/// The whole journal, as every backend implements it: the three audiences' traits. The
/// daemon holds one as [`Journal`]; a caller imports the trait of its audience.
pub trait JournalStore: StageQueue + Admin + Operations + 'static {}

impl<T: StageQueue + Admin + Operations + 'static> JournalStore for T {}

/// Opens the journal the config names for `freshet serve`: PostgreSQL with `url`
/// (several instances share it), else the SQLite file (held exclusively). Blocking.
pub fn open_for_serve(config: &crate::config::JournalConfig) -> Result<Journal, JournalError> {
    open(config, postgres::Role::Serve)
}

/// Opens the journal for a CLI command, beside a running daemon; never creates one.
pub fn open_for_command(config: &crate::config::JournalConfig) -> Result<Journal, JournalError> {
    open(config, postgres::Role::Command)
}

fn open(
    config: &crate::config::JournalConfig,
    role: postgres::Role,
) -> Result<Journal, JournalError> {
    Ok(match (&config.url, role) {
        (Some(url), role) => Arc::new(PostgresJournal::open(
            url.expose(),
            &config.schema,
            config.lease_seconds,
            config.pooler,
            role,
        )?),
        (None, postgres::Role::Serve) => Arc::new(SqliteJournal::open_for_serve(&config.path)?),
        (None, postgres::Role::Command) => Arc::new(SqliteJournal::open_existing(&config.path)?),
    })
}

/// Where the journal is, for logs and the commands' `journal:` line: the SQLite path, or
/// PostgreSQL's host, port and database (a URL may hold a password, so it is never shown).
pub fn describe(config: &crate::config::JournalConfig) -> String {
    match &config.url {
        Some(url) => match postgres::tls::connection(url.expose()) {
            Ok(connection) => format!(
                "PostgreSQL {} (journal.url)",
                postgres::endpoint(&connection.config)
            ),
            Err(_) => "PostgreSQL (journal.url)".to_string(),
        },
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
            Err(JournalError::unavailable(format!(
                "journal task failed: {join_error}"
            )))
        })
}
