//! Following an accepted Tableau refresh to its end (docs/behaviour.md section 7). The refresh
//! call's 202 only says a job was queued; extract refreshes fail every day in real sites
//! (expired credentials, timeouts), and nobody would be told. So a refresh that returns a
//! job id starts a `tableau_job` job, in the same transaction that records the refresh;
//! it polls the Tableau job every `tableau.job_poll_seconds` (a poll spends no attempt)
//! until `completedAt` is set, or `tableau.job_timeout_minutes` have passed, and then
//! emits `tableau.refresh.completed` for the rules, in the transaction that ends it.
//! Being a journaled job, following survives a restart; the event's id is the Tableau
//! job's, so it is emitted once.

use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};

use super::act::{emitted_event, Shared};
use crate::actions::client::ActionError;
use crate::actions::tableau::JobState;
use crate::actions::ActionRequest;
use crate::config::Config;
use crate::event::Source;
use crate::journal::{job_key, FollowUp, Job, JobOutcome, NewJob, Queue};

/// The kind of the jobs that follow a refresh.
pub const KIND: &str = "tableau_job";
/// The type of the event a followed refresh ends with.
pub const EVENT_TYPE: &str = "tableau.refresh.completed";

/// What a follow job knows: the Tableau job, what it refreshes, and where it came from.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Followed {
    job_id: String,
    /// `workbook` or `datasource`.
    content: String,
    name: String,
    project: Option<String>,
    rule: Option<String>,
    cause_event_id: String,
    /// When to give up (ms since the Unix epoch).
    give_up_at_ms: i64,
}

/// The job that follows `request`'s refresh, when Tableau answered with a job id (a
/// refresh "already queued" has none: docs/behaviour.md section 7 does not follow it).
pub fn start(
    config: &Config,
    job: &Job,
    request: &ActionRequest,
    answer: &Value,
) -> Option<NewJob> {
    let (content, name) = match request {
        ActionRequest::TableauRefresh(refresh) => ("workbook", &refresh.workbook),
        ActionRequest::TableauRefreshDatasource(refresh) => ("datasource", &refresh.datasource),
        _ => return None,
    };
    let job_id = answer.get("job_id").and_then(Value::as_str)?;
    let timeout_minutes = config.tableau.as_ref()?.job_timeout_minutes;
    let followed = Followed {
        job_id: job_id.to_string(),
        content: content.to_string(),
        name: name.clone(),
        project: answer
            .get("project")
            .and_then(Value::as_str)
            .map(String::from),
        rule: job.rule.clone(),
        cause_event_id: job.event_id.clone(),
        give_up_at_ms: chrono::Utc::now().timestamp_millis()
            + (timeout_minutes as i64).saturating_mul(60_000),
    };
    Some(NewJob {
        queue: Queue::Action,
        kind: KIND.to_string(),
        event_id: job.event_id.clone(),
        rule: job.rule.clone(),
        job_key: job_key(&["follow", &job.id.to_string()]),
        coalesce_key: None,
        payload: serde_json::to_value(&followed).expect("a Followed always serializes"),
        max_attempts: config.actions.max_attempts,
    })
}

/// One look at the followed Tableau job.
pub async fn poll(shared: &Shared, config: &Config, job: &Job) -> Option<(JobOutcome, FollowUp)> {
    if !super::lease_still_held(&shared.journal, job) {
        return None;
    }
    Some(poll_once(shared, config, job).await)
}

/// One look at the followed Tableau job.
async fn poll_once(shared: &Shared, config: &Config, job: &Job) -> (JobOutcome, FollowUp) {
    let nothing = FollowUp::default();
    let followed: Followed = match serde_json::from_value(job.payload.clone()) {
        Ok(followed) => followed,
        Err(error) => {
            let error = format!("{KIND} job has bad arguments: {error}");
            return (JobOutcome::Dead { error }, nothing);
        }
    };
    let Some(tableau) = &config.tableau else {
        let error = ActionError::not_configured("tableau");
        return (error.into_outcome(config, job), nothing);
    };
    let poll_ms = tableau.job_poll_seconds.saturating_mul(1000);
    let given_up = chrono::Utc::now().timestamp_millis() >= followed.give_up_at_ms;
    let state = match shared
        .tableau
        .job(&shared.http, tableau, &followed.job_id)
        .await
    {
        Ok(state) => state,
        // A transient failure (a 5xx, a timeout, a rate limit) while the refresh runs is
        // no reason to give it up: look again later, spending no attempt; the follow is
        // bounded by `tableau.job_timeout_minutes` instead (docs/behaviour.md section 12).
        Err(ActionError::Retryable {
            message,
            retry_after,
        }) => {
            tracing::warn!(job_id = job.id, tableau_job = %followed.job_id, error = %message,
                "Reading the Tableau job failed; looking again later.");
            if !given_up {
                let wait = retry_after.map_or(0, |wait| wait.as_millis() as u64);
                let delay_ms = wait.max(poll_ms);
                return (JobOutcome::Wait { delay_ms }, nothing);
            }
            JobState {
                completed_at: None,
                started_at: None,
                finish_code: None,
                notes: Some(message),
            }
        }
        Err(error) => {
            tracing::warn!(job_id = job.id, tableau_job = %followed.job_id, error = %error,
                "Reading the Tableau job failed.");
            return (error.into_outcome(config, job), nothing);
        }
    };
    let status = match (&state.completed_at, state.finish_code) {
        (Some(_), Some(0 | 3)) => "succeeded",
        (Some(_), Some(2)) => "cancelled",
        (Some(_), _) => "failed",
        (None, _) if given_up => "timed_out",
        (None, _) => return (JobOutcome::Wait { delay_ms: poll_ms }, nothing),
    };
    let mut fields = Map::new();
    fields.insert("status".into(), json!(status));
    fields.insert("finish_code".into(), json!(state.finish_code));
    fields.insert("job_id".into(), json!(followed.job_id));
    fields.insert(followed.content.clone(), json!(followed.name));
    fields.insert("project".into(), json!(followed.project));
    fields.insert("notes".into(), json!(state.notes));
    fields.insert("rule".into(), json!(followed.rule));
    fields.insert("cause_event_id".into(), json!(followed.cause_event_id));
    fields.insert("started_at".into(), json!(state.started_at));
    fields.insert("completed_at".into(), json!(state.completed_at));
    tracing::info!(tableau_job = %followed.job_id, status, event_id = %followed.cause_event_id,
        "Tableau refresh ended.");
    let event = emitted_event(
        &shared.journal,
        &followed.cause_event_id,
        format!("tableau:refresh:{}", followed.job_id),
        Source::Tableau,
        EVENT_TYPE,
        fields,
    )
    .await;
    let follow_up = FollowUp {
        event: Some(event),
        job: None,
    };
    (
        JobOutcome::Succeeded(Some(json!({ "status": status }))),
        follow_up,
    )
}
