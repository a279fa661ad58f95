//! Following work a service accepted to its end (docs/behaviour.md sections 7 and 15): a
//! Tableau refresh job, a Hex run, a Power BI refresh. The call's answer only says the
//! work was queued; refreshes fail every day in real sites (expired credentials,
//! timeouts), and nobody would be told. So an accepted call starts a follow job, in the
//! same transaction that records the call; it looks at the work every `poll` seconds (a
//! look spends no attempt) until the work ends, or its timeout has passed, and then emits
//! `tableau.refresh.completed`, `hex.run.completed` or `powerbi.refresh.completed` for the
//! rules, in the transaction that ends it. Being a journaled job, following survives a
//! restart; the event's id is the work's own, so it is emitted once.
//!
//! One loop serves the three services (`poll_as`); each says how to look at its work
//! (`Target`).

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};

use super::act::{emitted_event, Shared};
use crate::actions::client::ActionError;
use crate::actions::{hex, powerbi, ActionRequest};
use crate::config::Config;
use crate::event::Source;
use crate::journal::{job_key, FollowUp, Job, JobOutcome, NewJob, Queue};

/// The kind of the jobs that follow a Tableau refresh.
pub const TABLEAU_KIND: &str = "tableau_job";
/// The kind of the jobs that follow a Hex run.
pub const HEX_KIND: &str = "hex_job";
/// The kind of the jobs that follow a Power BI refresh.
pub const POWERBI_KIND: &str = "powerbi_job";

/// Whether jobs of `kind` follow work (rather than make a call).
pub fn follows(kind: &str) -> bool {
    matches!(kind, TABLEAU_KIND | HEX_KIND | POWERBI_KIND)
}

/// What every follow job knows besides its service's work: where it came from, and when
/// to give up.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Followed<T> {
    #[serde(flatten)]
    target: T,
    rule: Option<String>,
    cause_event_id: String,
    /// When to give up (ms since the Unix epoch).
    give_up_at_ms: i64,
}

/// A look at followed work.
enum Look {
    Running,
    /// Ended: the event's fields (`status` among them).
    Ended(Map<String, Value>),
}

/// One service's followed work.
trait Target: Serialize + DeserializeOwned {
    const KIND: &'static str;
    const SERVICE: &'static str;
    const SOURCE: Source;
    const EVENT_TYPE: &'static str;
    /// How often to look (seconds) and how long to follow (minutes), from the config in
    /// force; None when the service is not configured (any more).
    fn timing(config: &Config) -> Option<(u64, u64)>;
    /// The emitted event's id: one per followed piece of work.
    fn event_id(&self) -> String;
    /// Where the work is.
    async fn look(&self, shared: &Shared, config: &Config) -> Result<Look, ActionError>;
    /// The event's fields when following gave up, with the last error seen, if any.
    fn timed_out(&self, error: Option<String>) -> Map<String, Value>;
}

/// The job that follows what `request` started, when its answer says there is something
/// to follow (a Tableau refresh "already queued" has no job id, so none).
pub fn start(
    config: &Config,
    job: &Job,
    request: &ActionRequest,
    answer: &Value,
) -> Option<NewJob> {
    match request {
        ActionRequest::TableauRefresh(refresh) => {
            TableauJob::from_answer("workbook", &refresh.workbook, answer)
                .map(|target| new_job(config, job, target))?
        }
        ActionRequest::TableauRefreshDatasource(refresh) => {
            TableauJob::from_answer("datasource", &refresh.datasource, answer)
                .map(|target| new_job(config, job, target))?
        }
        ActionRequest::HexRun(run) => {
            let run_id = answer.get("run_id").and_then(Value::as_str)?;
            let target = HexJob {
                project_id: run.project_id.clone(),
                run_id: run_id.to_string(),
                run_url: answer
                    .get("run_url")
                    .and_then(Value::as_str)
                    .map(String::from),
            };
            new_job(config, job, target)
        }
        ActionRequest::PowerBiRefresh(refresh) => {
            let target = PowerBiJob {
                group: refresh.group.clone(),
                dataset: refresh.dataset.clone(),
                request_id: answer
                    .get("request_id")
                    .and_then(Value::as_str)
                    .map(String::from),
                action_id: job.id,
            };
            new_job(config, job, target)
        }
        _ => None,
    }
}

fn new_job<T: Target>(config: &Config, job: &Job, target: T) -> Option<NewJob> {
    let (_, timeout_minutes) = T::timing(config)?;
    let followed = Followed {
        target,
        rule: job.rule.clone(),
        cause_event_id: job.event_id.clone(),
        give_up_at_ms: chrono::Utc::now().timestamp_millis()
            + (timeout_minutes as i64).saturating_mul(60_000),
    };
    Some(NewJob {
        queue: Queue::Action,
        kind: T::KIND.to_string(),
        event_id: job.event_id.clone(),
        rule: job.rule.clone(),
        job_key: job_key(&["follow", &job.id.to_string()]),
        coalesce_key: None,
        payload: serde_json::to_value(&followed).expect("a follow job always serializes"),
        max_attempts: config.actions.max_attempts,
    })
}

/// One look at the followed work of `job`; None when the lease may have lapsed.
pub async fn poll(shared: &Shared, config: &Config, job: &Job) -> Option<(JobOutcome, FollowUp)> {
    if !super::lease_still_held(&shared.journal, job) {
        return None;
    }
    Some(match job.kind.as_str() {
        HEX_KIND => poll_as::<HexJob>(shared, config, job).await,
        POWERBI_KIND => poll_as::<PowerBiJob>(shared, config, job).await,
        _ => poll_as::<TableauJob>(shared, config, job).await,
    })
}

async fn poll_as<T: Target>(shared: &Shared, config: &Config, job: &Job) -> (JobOutcome, FollowUp) {
    let nothing = FollowUp::default();
    let followed: Followed<T> = match serde_json::from_value(job.payload.clone()) {
        Ok(followed) => followed,
        Err(error) => {
            let error = format!("{} job has bad arguments: {error}", T::KIND);
            return (JobOutcome::Dead { error }, nothing);
        }
    };
    let Some((poll_seconds, _)) = T::timing(config) else {
        let error = ActionError::not_configured(T::SERVICE);
        return (error.into_outcome(config, job), nothing);
    };
    let poll_ms = poll_seconds.saturating_mul(1000);
    let given_up = chrono::Utc::now().timestamp_millis() >= followed.give_up_at_ms;
    let mut fields = match followed.target.look(shared, config).await {
        Ok(Look::Ended(fields)) => fields,
        Ok(Look::Running) if !given_up => return (JobOutcome::Wait { delay_ms: poll_ms }, nothing),
        Ok(Look::Running) => followed.target.timed_out(None),
        // A transient failure (a 5xx, a timeout, a rate limit) while the work runs is no
        // reason to give it up: look again later, spending no attempt; following is
        // bounded by its timeout instead (docs/behaviour.md section 12).
        Err(ActionError::Retryable {
            message,
            retry_after,
        }) => {
            tracing::warn!(job_id = job.id, kind = T::KIND, error = %message,
                "Looking at followed work failed; looking again later.");
            if !given_up {
                let wait = retry_after.map_or(0, |wait| wait.as_millis() as u64);
                return (
                    JobOutcome::Wait {
                        delay_ms: wait.max(poll_ms),
                    },
                    nothing,
                );
            }
            followed.target.timed_out(Some(message))
        }
        Err(error) => {
            tracing::warn!(job_id = job.id, kind = T::KIND, error = %error,
                "Looking at followed work failed.");
            return (error.into_outcome(config, job), nothing);
        }
    };
    fields.insert("rule".into(), json!(followed.rule));
    fields.insert("cause_event_id".into(), json!(followed.cause_event_id));
    let status = fields.get("status").cloned().unwrap_or(Value::Null);
    tracing::info!(kind = T::KIND, status = %status, event_id = %followed.cause_event_id,
        "Followed work ended.");
    let event = emitted_event(
        &shared.journal,
        &followed.cause_event_id,
        followed.target.event_id(),
        T::SOURCE,
        T::EVENT_TYPE,
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

/// A Tableau refresh job (`GET .../sites/{site-id}/jobs/{job-id}`).
#[derive(Debug, Clone, Serialize, Deserialize)]
struct TableauJob {
    job_id: String,
    /// `workbook` or `datasource`.
    content: String,
    name: String,
    project: Option<String>,
}

impl TableauJob {
    fn from_answer(content: &str, name: &str, answer: &Value) -> Option<TableauJob> {
        Some(TableauJob {
            job_id: answer.get("job_id").and_then(Value::as_str)?.to_string(),
            content: content.to_string(),
            name: name.to_string(),
            project: answer
                .get("project")
                .and_then(Value::as_str)
                .map(String::from),
        })
    }

    fn fields(
        &self,
        status: &str,
        state: Option<&crate::actions::tableau::JobState>,
    ) -> Map<String, Value> {
        let mut fields = Map::new();
        fields.insert("status".into(), json!(status));
        fields.insert(
            "finish_code".into(),
            json!(state.and_then(|s| s.finish_code)),
        );
        fields.insert("job_id".into(), json!(self.job_id));
        fields.insert(self.content.clone(), json!(self.name));
        fields.insert("project".into(), json!(self.project));
        fields.insert("notes".into(), json!(state.and_then(|s| s.notes.clone())));
        fields.insert(
            "started_at".into(),
            json!(state.and_then(|s| s.started_at.clone())),
        );
        fields.insert(
            "completed_at".into(),
            json!(state.and_then(|s| s.completed_at.clone())),
        );
        fields
    }
}

impl Target for TableauJob {
    const KIND: &'static str = TABLEAU_KIND;
    const SERVICE: &'static str = "tableau";
    const SOURCE: Source = Source::Tableau;
    const EVENT_TYPE: &'static str = "tableau.refresh.completed";

    fn timing(config: &Config) -> Option<(u64, u64)> {
        let tableau = config.tableau.as_ref()?;
        Some((tableau.job_poll_seconds, tableau.job_timeout_minutes))
    }

    fn event_id(&self) -> String {
        format!("tableau:refresh:{}", self.job_id)
    }

    async fn look(&self, shared: &Shared, config: &Config) -> Result<Look, ActionError> {
        let tableau = config
            .tableau
            .as_ref()
            .ok_or_else(|| ActionError::not_configured("tableau"))?;
        let state = shared
            .tableau
            .job(&shared.http, tableau, &self.job_id)
            .await?;
        let status = match (&state.completed_at, state.finish_code) {
            (Some(_), Some(0 | 3)) => "succeeded",
            (Some(_), Some(2)) => "cancelled",
            (Some(_), _) => "failed",
            (None, _) => return Ok(Look::Running),
        };
        Ok(Look::Ended(self.fields(status, Some(&state))))
    }

    fn timed_out(&self, error: Option<String>) -> Map<String, Value> {
        let mut fields = self.fields("timed_out", None);
        fields.insert("notes".into(), json!(error));
        fields
    }
}

/// A Hex run (`GET /project/{id}/run/{runId}`).
#[derive(Debug, Clone, Serialize, Deserialize)]
struct HexJob {
    project_id: String,
    run_id: String,
    run_url: Option<String>,
}

impl HexJob {
    fn fields(&self, status: &str, state: Option<&hex::RunState>) -> Map<String, Value> {
        let mut fields = Map::new();
        fields.insert("status".into(), json!(status));
        fields.insert("project_id".into(), json!(self.project_id));
        fields.insert("run_id".into(), json!(self.run_id));
        fields.insert(
            "run_url".into(),
            json!(state
                .and_then(|s| s.run_url.clone())
                .or(self.run_url.clone())),
        );
        fields.insert(
            "elapsed".into(),
            json!(state.and_then(|s| s.elapsed.clone())),
        );
        fields.insert(
            "started_at".into(),
            json!(state.and_then(|s| s.started_at.clone())),
        );
        fields.insert(
            "ended_at".into(),
            json!(state.and_then(|s| s.ended_at.clone())),
        );
        fields
    }
}

impl Target for HexJob {
    const KIND: &'static str = HEX_KIND;
    const SERVICE: &'static str = "hex";
    const SOURCE: Source = Source::Hex;
    const EVENT_TYPE: &'static str = "hex.run.completed";

    fn timing(config: &Config) -> Option<(u64, u64)> {
        let hex = config.hex.as_ref()?;
        Some((hex.poll_seconds, hex.timeout_minutes))
    }

    fn event_id(&self) -> String {
        format!("hex:run:{}", self.run_id)
    }

    async fn look(&self, shared: &Shared, config: &Config) -> Result<Look, ActionError> {
        let hex_config = config
            .hex
            .as_ref()
            .ok_or_else(|| ActionError::not_configured("hex"))?;
        let state =
            hex::run_state(&shared.http, hex_config, &self.project_id, &self.run_id).await?;
        Ok(match state.outcome() {
            Some(status) => Look::Ended(self.fields(status, Some(&state))),
            None => Look::Running,
        })
    }

    fn timed_out(&self, error: Option<String>) -> Map<String, Value> {
        let mut fields = self.fields("timed_out", None);
        fields.insert("error".into(), json!(error));
        fields
    }
}

/// A Power BI refresh (the newest of `GET …/refreshes?$top=1`; the one with our
/// `requestId` when Power BI gave one).
#[derive(Debug, Clone, Serialize, Deserialize)]
struct PowerBiJob {
    group: String,
    dataset: String,
    request_id: Option<String>,
    /// The action that started it: the event's id when Power BI gave no request id.
    action_id: i64,
}

impl PowerBiJob {
    fn fields(&self, status: &str, state: Option<&powerbi::RefreshState>) -> Map<String, Value> {
        let mut fields = Map::new();
        fields.insert("status".into(), json!(status));
        fields.insert("group".into(), json!(self.group));
        fields.insert("dataset".into(), json!(self.dataset));
        fields.insert(
            "request_id".into(),
            json!(self
                .request_id
                .clone()
                .or(state.and_then(|s| s.request_id.clone()))),
        );
        fields.insert("error".into(), json!(state.and_then(|s| s.error.clone())));
        fields.insert(
            "started_at".into(),
            json!(state.and_then(|s| s.started_at.clone())),
        );
        fields.insert(
            "ended_at".into(),
            json!(state.and_then(|s| s.ended_at.clone())),
        );
        fields
    }
}

impl Target for PowerBiJob {
    const KIND: &'static str = POWERBI_KIND;
    const SERVICE: &'static str = "powerbi";
    const SOURCE: Source = Source::PowerBi;
    const EVENT_TYPE: &'static str = "powerbi.refresh.completed";

    fn timing(config: &Config) -> Option<(u64, u64)> {
        let powerbi = config.powerbi.as_ref()?;
        Some((powerbi.poll_seconds, powerbi.timeout_minutes))
    }

    fn event_id(&self) -> String {
        match &self.request_id {
            Some(request_id) => format!("powerbi:refresh:{request_id}"),
            None => format!("powerbi:refresh:action-{}", self.action_id),
        }
    }

    async fn look(&self, shared: &Shared, config: &Config) -> Result<Look, ActionError> {
        let powerbi_config = config
            .powerbi
            .as_ref()
            .ok_or_else(|| ActionError::not_configured("powerbi"))?;
        let newest = powerbi::newest_refresh(
            &shared.http,
            powerbi_config,
            &shared.powerbi,
            &self.group,
            &self.dataset,
        )
        .await?;
        let Some(state) = newest else {
            return Ok(Look::Running);
        };
        // Until the history shows our refresh, the newest one is an older one.
        if self.request_id.is_some() && state.request_id != self.request_id {
            return Ok(Look::Running);
        }
        Ok(match state.outcome() {
            Some(status) => Look::Ended(self.fields(status, Some(&state))),
            None => Look::Running,
        })
    }

    fn timed_out(&self, error: Option<String>) -> Map<String, Value> {
        let mut fields = self.fields("timed_out", None);
        fields.insert("error".into(), json!(error));
        fields
    }
}
