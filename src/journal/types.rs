//! The journal's vocabulary: what goes in (events' first jobs, new jobs, evaluations),
//! what comes out (claimed jobs, summaries, alert states), and the typed names of job
//! statuses, queues and rule outcomes that both backends store as text.

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::JournalError;
use crate::event::Event;

/// Where a job is in its life; stored as its lowercase name (`as_str`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum JobStatus {
    /// Waiting to be claimed (when `scheduled_at` is due).
    Pending,
    /// Claimed, under a lease.
    Running,
    /// An attempt failed; waiting for the next one.
    Retrying,
    Succeeded,
    /// Failed for good: listed, and `freshet retry` queues it again.
    Dead,
    /// Would have been open again (a retry, `freshet retry`) while an identical call was
    /// pending: that one stands for both (`merged_into` names it).
    Merged,
}

impl JobStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            JobStatus::Pending => "pending",
            JobStatus::Running => "running",
            JobStatus::Retrying => "retrying",
            JobStatus::Succeeded => "succeeded",
            JobStatus::Dead => "dead",
            JobStatus::Merged => "merged",
        }
    }

    /// The status a row stores as `text`.
    pub fn parse(text: &str) -> Result<JobStatus, JournalError> {
        Ok(match text {
            "pending" => JobStatus::Pending,
            "running" => JobStatus::Running,
            "retrying" => JobStatus::Retrying,
            "succeeded" => JobStatus::Succeeded,
            "dead" => JobStatus::Dead,
            "merged" => JobStatus::Merged,
            other => {
                return Err(JournalError::Corrupt(format!(
                    "a job has the unknown status {other:?}"
                )))
            }
        })
    }

    /// Not ended yet: pending, running or retrying.
    pub fn is_open(self) -> bool {
        matches!(
            self,
            JobStatus::Pending | JobStatus::Running | JobStatus::Retrying
        )
    }
}

/// Statuses, queues and rule outcomes are shown (and stored) by name.
macro_rules! shown_by_name {
    ($($name:ty),*) => {$(
        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(self.as_str())
            }
        }
    )*};
}

shown_by_name!(JobStatus, Queue, RuleOutcome);

/// A status, queue or outcome equals its name: `job.status == "dead"` reads as the
/// listing prints it.
macro_rules! equals_its_name {
    ($($name:ty),*) => {$(
        impl PartialEq<str> for $name {
            fn eq(&self, name: &str) -> bool {
                self.as_str() == name
            }
        }

        impl PartialEq<&str> for $name {
            fn eq(&self, name: &&str) -> bool {
                self.as_str() == *name
            }
        }
    )*};
}

equals_its_name!(JobStatus, Queue, RuleOutcome);

/// What one rule did with one event; stored as its lowercase name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum RuleOutcome {
    /// It called at least one action.
    Fired,
    /// It failed; its calls were dropped.
    Error,
    /// It called actions on an event at the chain depth limit: none were queued.
    Suppressed,
}

impl RuleOutcome {
    pub fn as_str(self) -> &'static str {
        match self {
            RuleOutcome::Fired => "fired",
            RuleOutcome::Error => "error",
            RuleOutcome::Suppressed => "suppressed",
        }
    }

    /// The outcome a row stores as `text`.
    pub fn parse(text: &str) -> Result<RuleOutcome, JournalError> {
        Ok(match text {
            "fired" => RuleOutcome::Fired,
            "error" => RuleOutcome::Error,
            "suppressed" => RuleOutcome::Suppressed,
            other => {
                return Err(JournalError::Corrupt(format!(
                    "a rule run has the unknown outcome {other:?}"
                )))
            }
        })
    }
}

/// The result of appending an event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Appended {
    New,
    /// The id was already journaled; nothing was inserted.
    Duplicate,
}

/// What [`Operations::release_running`](super::Operations::release_running) did.
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

    /// Enrichment calls the Mode API and retries like an action (docs/behaviour.md section 7).
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
    /// The queue a row (or a notification) names as `text`.
    pub fn parse(text: &str) -> Result<Queue, JournalError> {
        match text {
            "enrich" => Ok(Queue::Enrich),
            "evaluate" => Ok(Queue::Evaluate),
            "action" => Ok(Queue::Action),
            other => Err(JournalError::Corrupt(format!(
                "a job is in the unknown queue {other:?}"
            ))),
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
    pub queue: Queue,
    pub kind: String,
    pub event_id: String,
    pub rule: Option<String>,
    pub payload: Value,
    /// 1 on the first attempt. Together with `id` it identifies this lease.
    pub attempt: u32,
    pub max_attempts: u32,
    /// Set when this claim took over an action whose last attempt never finished (its
    /// process died, or its instance lost the lease): no attempt is left, so the act
    /// stage ends it dead with this error, without a call, and tells it as it tells any
    /// death (docs/behaviour.md section 12). `attempt` is that last attempt's.
    pub interrupted: Option<String>,
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
    /// The job's new status: succeeded, pending (a wait), retrying or dead.
    pub status: JobStatus,
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
            _ if self.ends_dead(job) => JobStatus::Dead,
            JobOutcome::Succeeded(_) => JobStatus::Succeeded,
            JobOutcome::Wait { .. } => JobStatus::Pending,
            JobOutcome::Retry { .. } | JobOutcome::Dead { .. } => JobStatus::Retrying,
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
    /// The action job (a Slack post, a PagerDuty event) an alert transition queues, for
    /// the event `job` evaluated.
    pub fn alert_job(&self, job: &Job, queued: AlertJob, max_attempts: u32) -> NewJob {
        NewJob {
            queue: Queue::Action,
            kind: queued.kind,
            event_id: job.event_id.clone(),
            rule: Some(self.rule.clone()),
            job_key: queued.key,
            coalesce_key: None,
            payload: queued.payload,
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
    pub status: JobStatus,
    pub result: Option<Value>,
}

/// A deadline's or schedule's stored state (docs/behaviour.md section 14): the latest due
/// time judged (or, before the first, when the clock started), the last check-in, and a
/// deadline's miss that no check-in has met yet. Keyed `deadline:NAME` or `schedule:NAME`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ClockState {
    pub name: String,
    pub last_due_ms: i64,
    pub last_check_in_ms: Option<i64>,
    pub missed_due_ms: Option<i64>,
}

/// What one due time of a clock leads to, judged once.
#[derive(Debug, Clone)]
pub struct ClockJudgement<'a> {
    /// The key (`deadline:NAME`, `schedule:NAME`).
    pub name: &'a str,
    /// The last due time as read before judging (None: the clock has no row yet); the
    /// judgement stands only if it is still so.
    pub last_due_ms: Option<i64>,
    pub due_ms: i64,
    /// The event it emits (`freshet.deadline.missed`, `freshet.schedule`), journaled with
    /// its evaluate job.
    pub event: Option<&'a Event>,
    /// A deadline missed: remembered until a check-in meets it.
    pub missed: bool,
}

/// Where an action job came from: a dbt run it started reports back with the job's id
/// (docs/behaviour.md section 13), and its webhook continues this chain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ActionOrigin {
    pub rule: Option<String>,
    pub event_id: String,
    /// The chain depth of the event whose rule asked for the action (0 when that event
    /// has been pruned).
    pub chain_depth: u32,
}

/// What one rule did with one event.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RuleRun {
    pub rule: String,
    pub outcome: RuleOutcome,
    pub actions: usize,
    pub error: Option<String>,
}

/// Everything an evaluation decided, written in one transaction.
#[derive(Debug, Clone)]
pub struct Evaluation {
    pub rule_runs: Vec<RuleRun>,
    pub jobs: Vec<NewJob>,
    pub alerts: Vec<AlertCall>,
    /// Deadlines the rules checked in (`check_in(NAME)`, keyed `deadline:NAME`).
    pub check_ins: Vec<String>,
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
            check_ins: Vec::new(),
            alert_max_attempts: 1,
            decide_alert: |_, _, _| AlertTransition::default(),
        }
    }
}

/// What an alert call does: the state to store (if it changes) and the action jobs to
/// queue (Slack posts and updates, PagerDuty events).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct AlertTransition {
    pub new_state: Option<AlertState>,
    pub jobs: Vec<AlertJob>,
}

/// One action job an alert transition queues: its key (unique to this transition), its
/// action and its payload.
#[derive(Debug, Clone, PartialEq)]
pub struct AlertJob {
    pub key: String,
    pub kind: String,
    pub payload: Value,
}

/// Decides an alert call's transition from the stored state, at a time (ms).
pub type AlertDecider = fn(Option<&AlertState>, &AlertCall, i64) -> AlertTransition;

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
    /// The event the rule ran on (shown in the alert's context line).
    pub event_id: String,
    /// How the alert is shown and whom it reaches (the action's `Presentation`, as JSON:
    /// the journal passes it through).
    pub presentation: Value,
}

/// Stored state of one alert.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct AlertState {
    pub name: String,
    pub firing: bool,
    pub version: i64,
    pub since_ms: i64,
    pub last_notified_ms: Option<i64>,
    /// Muted until then (`freshet alerts --mute`): tracked, but nothing posted or paged.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub muted_until_ms: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mute_reason: Option<String>,
    /// A transition happened while muted and was not posted: posted when the mute has
    /// ended, if the alert is still in that state.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub unposted: bool,
}

/// What the console's events page keeps (None: any).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EventFilter {
    pub source: Option<String>,
    pub kind: Option<String>,
    pub status: Option<String>,
}

/// Where a page of events starts: strictly older than this event (keyset pagination:
/// received time, then id; no offset, no count).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EventCursor {
    pub received_ms: i64,
    pub id: String,
}

/// One row of the console's events page.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct EventLine {
    pub id: String,
    pub source: String,
    #[serde(rename = "type")]
    pub kind: String,
    pub received_at: String,
    pub received_ms: i64,
    pub status: String,
}

impl EventLine {
    /// The cursor of the page that follows this row.
    pub fn cursor(&self) -> EventCursor {
        EventCursor {
            received_ms: self.received_ms,
            id: self.id.clone(),
        }
    }
}

/// A failed attempt of a job, as the journal keeps it (each entry of `jobs.errors`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AttemptError {
    pub attempt: u32,
    /// When it ended (ms since the Unix epoch).
    pub at: i64,
    pub error: String,
    /// When it started: absent in entries written before the journal kept it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started: Option<i64>,
}

/// One attempt of an action job, as the console shows it: every failed one (from
/// `jobs.errors`) and the one running or that succeeded (from the job's own columns).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Attempt {
    pub attempt: u32,
    /// When it started (ms since the Unix epoch); unknown for attempts made before the
    /// journal kept it.
    pub started_ms: Option<i64>,
    /// When it ended; none while it runs.
    pub ended_ms: Option<i64>,
    /// `running`, `succeeded`, `failed` (another attempt may follow) or `dead` (the last).
    pub status: &'static str,
    pub error: Option<String>,
}

impl Attempt {
    pub fn duration_ms(&self) -> Option<i64> {
        Some(self.ended_ms? - self.started_ms?).filter(|ms| *ms >= 0)
    }
}

/// What became of one event: what each rule did, and each action job with its attempts.
#[derive(Debug, Clone, Default)]
pub struct EventActivity {
    pub rules: Vec<RuleRun>,
    pub jobs: Vec<(JobSummary, Vec<Attempt>)>,
}

/// The console's overview of the recent past.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Overview {
    /// Events received since then, by source and status.
    pub events: Vec<(String, String, u64)>,
    /// Action jobs created since then, by status.
    pub jobs: Vec<(String, u64)>,
    /// The newest event of each source since then (source, received_at).
    pub last_event: Vec<(String, String)>,
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
    pub status: JobStatus,
    pub attempt: u32,
    pub max_attempts: u32,
    pub last_error: Option<String>,
    /// The job a `merged` one merged into.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub merged_into: Option<i64>,
    pub payload: Value,
    pub result: Option<Value>,
}

/// What `freshet retry` did with a dead job.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Retried {
    /// Pending again, with one more attempt.
    Queued,
    /// An identical call was pending already: the dead job merged into it.
    MergedInto(i64),
}
