//! `hex_run(project_id)` / `hex_run(project_id, #{ inputs, update_cache })`: runs the
//! published version of a Hex project (`POST /project/{id}/run`, Bearer token), and the
//! follow stage follows the run to its end into a `hex.run.completed` event
//! (docs/behaviour.md section 15). Contract: ../shared/api/tableau-slack-hex-powerbi.md
//! section 3 (Hex API 1.0.0, RunProject and GetRunStatus).

use reqwest::StatusCode;
use rhai::{Dynamic, Engine, Map as RhaiMap, NativeCallContext};
use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};

use super::client::{excerpt, send, status_error, ActionError};
use super::{ActionRequest, Services};
use crate::config::HexConfig;
use crate::rules::api::{bad_argument, non_empty, record, to_json, to_plain_json, Fallible};

const SERVICE: &str = "hex";

/// The keys of `hex_run`'s options map (checked when a rule runs, and by `freshet check`).
pub const OPTION_KEYS: [&str; 2] = ["inputs", "update_cache"];

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HexRun {
    pub project_id: String,
    /// The app's published input parameters, by variable name (`inputParams`).
    #[serde(default, skip_serializing_if = "Map::is_empty")]
    pub inputs: Map<String, Value>,
    /// Run the SQL without cache and update the published app's cache (`updateCache`;
    /// Hex ignores it when inputs are given).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub update_cache: bool,
}

/// Where a run is: a terminal state, or still going.
#[derive(Debug, Clone, PartialEq)]
pub struct RunState {
    /// Hex's status: `PENDING`, `RUNNING`, `COMPLETED`, `ERRORED`, `KILLED`,
    /// `UNABLE_TO_ALLOCATE_KERNEL`.
    pub status: String,
    pub run_url: Option<String>,
    pub elapsed: Option<Value>,
    pub started_at: Option<String>,
    pub ended_at: Option<String>,
}

impl RunState {
    /// freshet's status for a terminal Hex status; None while the run goes on.
    pub fn outcome(&self) -> Option<&'static str> {
        match self.status.as_str() {
            "COMPLETED" => Some("succeeded"),
            "ERRORED" | "UNABLE_TO_ALLOCATE_KERNEL" => Some("failed"),
            "KILLED" => Some("cancelled"),
            _ => None,
        }
    }
}

fn config<'a>(services: &'a Services<'_>) -> Result<&'a HexConfig, ActionError> {
    services
        .config
        .hex
        .as_ref()
        .ok_or_else(|| ActionError::not_configured(SERVICE))
}

/// A project or run id goes into the URL's path as it is: only the characters Hex's
/// UUIDs have.
fn is_id(id: &str) -> bool {
    !id.is_empty() && id.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
}

fn url(config: &HexConfig, path: &str) -> String {
    format!("{}{path}", config.api_base.as_str().trim_end_matches('/'))
}

/// Hex's error answers are not documented: a JSON `reason` or `message`, else the text.
fn hex_error(
    status: StatusCode,
    retry_after: Option<std::time::Duration>,
    body: &str,
    project: &str,
) -> ActionError {
    let parsed: Value = serde_json::from_str(body).unwrap_or(Value::Null);
    let detail = parsed
        .get("reason")
        .or_else(|| parsed.get("message"))
        .and_then(Value::as_str)
        .map(String::from)
        .unwrap_or_else(|| excerpt(body));
    let detail = match status {
        StatusCode::NOT_FOUND => format!(
            "project {project} not found, or never published (only a published version runs): {detail}"
        ),
        StatusCode::UNAUTHORIZED => format!("the token was refused (hex.token): {detail}"),
        StatusCode::FORBIDDEN => {
            format!("the token may not run projects (it needs the run scope): {detail}")
        }
        _ => detail,
    };
    status_error(SERVICE, status, retry_after, &detail)
}

/// A run's answer (RunProject's or GetRunStatus's) as JSON, or why not.
fn run_answer(answer: super::client::Answer, project: &str) -> Result<Value, ActionError> {
    if !answer.status.is_success() {
        return Err(hex_error(
            answer.status,
            answer.retry_after,
            &answer.body,
            project,
        ));
    }
    serde_json::from_str(&answer.body).map_err(|_| {
        ActionError::retryable(format!(
            "hex: answer is not JSON: {}",
            excerpt(&answer.body)
        ))
    })
}

impl HexRun {
    /// Starts the run; the answer holds the run's id and page for the follow stage.
    pub async fn call(&self, services: &Services<'_>) -> Result<Value, ActionError> {
        let hex = config(services)?;
        if !is_id(&self.project_id) {
            return Err(ActionError::final_error(format!(
                "hex: {:?} is not a project id",
                self.project_id
            )));
        }
        let mut body = json!({});
        if !self.inputs.is_empty() {
            body["inputParams"] = json!(self.inputs);
        }
        if self.update_cache {
            body["updateCache"] = json!(true);
        }
        let request = services
            .http
            .post(url(hex, &format!("/project/{}/run", self.project_id)))
            .bearer_auth(hex.token.expose())
            .header("Accept", "application/json")
            .json(&body);
        let run = run_answer(send(SERVICE, request).await?, &self.project_id)?;
        let run_id = run
            .get("runId")
            .and_then(Value::as_str)
            .filter(|id| is_id(id))
            .ok_or_else(|| ActionError::retryable("hex: the run's answer has no runId"))?;
        Ok(json!({
            "project_id": self.project_id,
            "run_id": run_id,
            "run_url": run.get("runUrl"),
        }))
    }
}

/// `GET /project/{id}/run/{runId}`: where the run is.
pub async fn run_state(
    http: &reqwest::Client,
    hex: &HexConfig,
    project_id: &str,
    run_id: &str,
) -> Result<RunState, ActionError> {
    if !is_id(project_id) || !is_id(run_id) {
        return Err(ActionError::final_error(format!(
            "hex: {project_id:?}/{run_id:?} is not a project and run id"
        )));
    }
    let request = http
        .get(url(hex, &format!("/project/{project_id}/run/{run_id}")))
        .bearer_auth(hex.token.expose())
        .header("Accept", "application/json");
    let run = run_answer(send(SERVICE, request).await?, project_id)?;
    let text = |key: &str| run.get(key).and_then(Value::as_str).map(String::from);
    Ok(RunState {
        status: text("status")
            .ok_or_else(|| ActionError::retryable("hex: the run's status is missing"))?,
        run_url: text("runUrl"),
        elapsed: run.get("elapsedTime").cloned(),
        started_at: text("startTime"),
        ended_at: text("endTime"),
    })
}

/// `freshet check --online`: lists one project (`GET /projects?limit=1`, ListProjects),
/// read-only. A runs listing (what section 17 names) needs a project id, which the
/// config does not hold; the token and its reach are what can be checked.
pub async fn probe(http: &reqwest::Client, hex: &HexConfig) -> Result<String, ActionError> {
    let request = http
        .get(url(hex, "/projects?limit=1"))
        .bearer_auth(hex.token.expose())
        .header("Accept", "application/json");
    let answer = send(SERVICE, request).await?;
    match answer.status {
        status if status.is_success() => Ok("the token lists projects".into()),
        status => Err(hex_error(status, answer.retry_after, &answer.body, "-")),
    }
}

/// The rule functions that build a [`HexRun`].
pub(super) fn register(engine: &mut Engine) {
    engine.register_fn(
        "hex_run",
        |ctx: NativeCallContext, project_id: &str| -> Fallible {
            let project_id = non_empty(&ctx, "hex_run", "the project id", project_id)?;
            let written = json!([project_id]);
            let run = HexRun {
                project_id,
                inputs: Map::new(),
                update_cache: false,
            };
            record(&ctx, ActionRequest::HexRun(run), written)
        },
    );
    engine.register_fn(
        "hex_run",
        |ctx: NativeCallContext, project_id: &str, options: RhaiMap| -> Fallible {
            let project_id = non_empty(&ctx, "hex_run", "the project id", project_id)?;
            let written = json!([
                project_id,
                to_plain_json(&Dynamic::from_map(options.clone()))
            ]);
            if let Some(key) = options.keys().find(|k| !OPTION_KEYS.contains(&k.as_str())) {
                return Err(bad_argument(
                    &ctx,
                    format!("hex_run: unknown key `{key}` ({})", OPTION_KEYS.join(", ")),
                ));
            }
            let inputs = match options.get("inputs") {
                None => Map::new(),
                Some(inputs) => match inputs.clone().try_cast::<RhaiMap>() {
                    Some(map) => to_json(&ctx, "hex_run", map)?,
                    None => {
                        return Err(bad_argument(
                            &ctx,
                            "hex_run: inputs must be a map of input names to values".into(),
                        ))
                    }
                },
            };
            let update_cache = match options.get("update_cache") {
                None => false,
                Some(value) => value.as_bool().map_err(|_| {
                    bad_argument(&ctx, "hex_run: update_cache must be true or false".into())
                })?,
            };
            let run = HexRun {
                project_id,
                inputs,
                update_cache,
            };
            record(&ctx, ActionRequest::HexRun(run), written)
        },
    );
}
