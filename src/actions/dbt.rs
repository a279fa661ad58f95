//! The `dbt_run` action and the dbt Cloud Admin API v2 (docs/behaviour.md section 13):
//! trigger a job, list a job's runs, read a run with its steps and a step's artifacts
//! (the enrich stage's fetch of a failed run). `Authorization: Token <token>`, as the
//! Airflow dbt Cloud hook sends it; every URL is built on the configured `dbt.api_base`,
//! never on a host from a payload.
//!
//! Triggering is not idempotent: a trigger whose answer was lost (a timeout, a dropped
//! connection, a 5xx) may have started the run. So every trigger's `cause` ends with
//! `[freshet:<action id>]`, and an attempt after the first looks for a recent run of the
//! job with that tag and adopts it instead of starting another.

use std::io::Read;

use reqwest::{Client, Response, StatusCode};
use rhai::{Engine, Map as RhaiMap, NativeCallContext};
use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};

use super::client::{read_capped, send, send_following_redirects, transport_error, ActionError};
use super::{ActionRequest, Services};
use crate::config::DbtConfig;
use crate::rules::api::{bad_argument, record, to_json, Fallible};

const SERVICE: &str = "dbt";

/// dbt Cloud's limit on a trigger's `cause` (the Airflow provider cuts it there too).
pub const MAX_CAUSE_CHARS: usize = 255;

/// How many of a job's newest runs are searched for a trigger's tag before triggering
/// again.
const ADOPTION_WINDOW: usize = 20;

/// The options `dbt_run` passes through to the trigger, as dbt Cloud names them.
pub const TRIGGER_OPTIONS: [&str; 7] = [
    "cause",
    "git_branch",
    "git_sha",
    "schema_override",
    "steps_override",
    "threads_override",
    "target_name_override",
];

/// `dbt_run(job_id[, options])`: trigger a dbt Cloud job.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DbtRun {
    pub job_id: i64,
    #[serde(default, skip_serializing_if = "Map::is_empty")]
    pub options: Map<String, Value>,
}

/// The tag a trigger's cause ends with: how a run freshet started is known again, in the
/// list of a job's runs (adoption) and in the run's webhooks (`runReason`).
pub fn cause_tag(action_id: i64) -> String {
    format!("[freshet:{action_id}]")
}

/// The action id in a cause or run reason that carries [`cause_tag`].
pub fn tagged_action(text: &str) -> Option<i64> {
    let start = text.rfind("[freshet:")? + "[freshet:".len();
    let rest = &text[start..];
    let end = rest.find(']')?;
    rest[..end].parse().ok().filter(|id: &i64| *id > 0)
}

impl DbtRun {
    /// Triggers the job, or adopts the run an earlier attempt started.
    pub async fn call(&self, services: &Services<'_>) -> Result<Value, ActionError> {
        let dbt = services
            .config
            .dbt
            .as_ref()
            .filter(|dbt| dbt.api_token.is_some())
            .ok_or_else(|| ActionError::not_configured("dbt (dbt.api_token)"))?;
        let account = dbt.account_id.ok_or_else(|| {
            ActionError::final_error("dbt: dbt_run needs dbt.account_id, the account of the job")
        })?;
        let cloud = DbtCloud {
            http: services.http,
            config: dbt,
        };
        let origin = services.origin;
        let tag = cause_tag(origin.action_id);
        if origin.attempt > 1 {
            if let Some(run) = cloud.run_with_tag(account, self.job_id, &tag).await? {
                tracing::info!(
                    job_id = origin.action_id,
                    dbt_job = self.job_id,
                    "dbt: adopted the run an earlier attempt started."
                );
                return Ok(cloud.run_answer(account, &run, true));
            }
        }
        let asked = self
            .options
            .get("cause")
            .and_then(Value::as_str)
            .map(String::from)
            .unwrap_or_else(|| {
                format!(
                    "freshet: rule {} on {}",
                    origin.rule.unwrap_or("-"),
                    origin.event_id
                )
            });
        let mut body = self.options.clone();
        body.insert("cause".into(), json!(tagged_cause(&asked, &tag)));
        let run = cloud
            .trigger(account, self.job_id, &Value::Object(body))
            .await?;
        Ok(cloud.run_answer(account, &run, false))
    }
}

/// `cause` cut so that it and ` [freshet:N]` fit in [`MAX_CAUSE_CHARS`].
pub fn tagged_cause(cause: &str, tag: &str) -> String {
    let room = MAX_CAUSE_CHARS.saturating_sub(tag.chars().count() + 1);
    let cut = crate::dbt_artifacts::capped_chars(cause.trim(), room);
    if cut.is_empty() {
        tag.to_string()
    } else {
        format!("{cut} {tag}")
    }
}

/// The rule functions that build a [`DbtRun`].
pub(super) fn register(engine: &mut Engine) {
    engine.register_fn(
        "dbt_run",
        |ctx: NativeCallContext, job_id: i64| -> Fallible {
            let run = checked(&ctx, job_id, Map::new())?;
            record(&ctx, ActionRequest::DbtRun(run), json!([job_id]))
        },
    );
    engine.register_fn(
        "dbt_run",
        |ctx: NativeCallContext, job_id: i64, options: RhaiMap| -> Fallible {
            let options = to_json(&ctx, "dbt_run", options)?;
            let written = json!([job_id, options]);
            let run = checked(&ctx, job_id, options)?;
            record(&ctx, ActionRequest::DbtRun(run), written)
        },
    );
}

fn checked(
    ctx: &NativeCallContext,
    job_id: i64,
    options: Map<String, Value>,
) -> Result<DbtRun, Box<rhai::EvalAltResult>> {
    if job_id <= 0 {
        return Err(bad_argument(
            ctx,
            format!("dbt_run: {job_id} is not a dbt Cloud job id"),
        ));
    }
    if let Some(unknown) = options
        .keys()
        .find(|key| !TRIGGER_OPTIONS.contains(&key.as_str()))
    {
        return Err(bad_argument(
            ctx,
            format!(
                "dbt_run: unknown option {unknown:?} (known: {})",
                TRIGGER_OPTIONS.join(", ")
            ),
        ));
    }
    if options.get("steps_override").is_some_and(|steps| {
        !steps
            .as_array()
            .is_some_and(|s| s.iter().all(Value::is_string))
    }) {
        return Err(bad_argument(
            ctx,
            "dbt_run: steps_override must be an array of dbt commands".into(),
        ));
    }
    Ok(DbtRun { job_id, options })
}

/// A dbt Cloud Admin API client for the configured `[dbt]`.
pub struct DbtCloud<'a> {
    pub http: &'a Client,
    pub config: &'a DbtConfig,
}

/// Why an artifact could not be read.
#[derive(Debug)]
pub enum ArtifactError {
    /// 404: the step wrote none, or dbt has not ingested it yet.
    Missing,
    /// Longer than `dbt.max_artifact_bytes`.
    TooLarge,
    /// Not the artifact it should be.
    Unreadable(String),
    Action(ActionError),
}

impl From<ActionError> for ArtifactError {
    fn from(error: ActionError) -> ArtifactError {
        ArtifactError::Action(error)
    }
}

impl DbtCloud<'_> {
    fn token(&self) -> Result<&str, ActionError> {
        self.config
            .api_token
            .as_ref()
            .map(|token| token.expose())
            .ok_or_else(|| ActionError::not_configured("dbt (dbt.api_token)"))
    }

    fn url(&self, path: &str) -> String {
        format!(
            "{}{}",
            self.config.api_base.as_str().trim_end_matches('/'),
            path
        )
    }

    fn get(&self, path: &str) -> Result<reqwest::RequestBuilder, ActionError> {
        Ok(self
            .http
            .get(self.url(path))
            .header("Authorization", format!("Token {}", self.token()?))
            .header("Accept", "application/json"))
    }

    /// `freshet check --online`: `GET /api/v2/accounts/{account}/`, the account the
    /// token must reach (read-only).
    pub async fn probe(&self, account: i64) -> Result<String, ActionError> {
        let answer = send(SERVICE, self.get(&format!("/api/v2/accounts/{account}/"))?).await?;
        if !answer.status.is_success() {
            return Err(answer.into_error(SERVICE));
        }
        let body: Value = serde_json::from_str(&answer.body).unwrap_or(Value::Null);
        let name = body
            .pointer("/data/name")
            .and_then(Value::as_str)
            .unwrap_or("?");
        Ok(format!("account {account} ({name})"))
    }

    /// A run with its steps.
    pub async fn run(&self, account: i64, run: i64) -> Result<Value, ActionError> {
        let path = format!("/api/v2/accounts/{account}/runs/{run}/");
        let request = self
            .get(&path)?
            .query(&[("include_related", r#"["run_steps"]"#)]);
        data(send(SERVICE, request).await?)
    }

    /// The job's newest runs, newest first.
    async fn runs_of_job(&self, account: i64, job: i64) -> Result<Vec<Value>, ActionError> {
        let path = format!("/api/v2/accounts/{account}/runs/");
        let request = self.get(&path)?.query(&[
            ("job_definition_id", job.to_string()),
            ("order_by", "-id".into()),
            ("limit", ADOPTION_WINDOW.to_string()),
        ]);
        match data(send(SERVICE, request).await?)? {
            Value::Array(runs) => Ok(runs),
            _ => Err(ActionError::final_error("dbt: the run list is not a list")),
        }
    }

    /// The newest run of `job` whose cause carries `tag`.
    async fn run_with_tag(
        &self,
        account: i64,
        job: i64,
        tag: &str,
    ) -> Result<Option<Value>, ActionError> {
        let runs = self.runs_of_job(account, job).await?;
        Ok(runs.into_iter().find(|run| {
            run.pointer("/trigger/cause")
                .and_then(Value::as_str)
                .is_some_and(|cause| cause.contains(tag))
        }))
    }

    /// Triggers `job` with `body` (its cause tagged); returns the new run.
    async fn trigger(&self, account: i64, job: i64, body: &Value) -> Result<Value, ActionError> {
        let path = format!("/api/v2/accounts/{account}/jobs/{job}/run/");
        let request = self
            .http
            .post(self.url(&path))
            .header("Authorization", format!("Token {}", self.token()?))
            .header("Accept", "application/json")
            .json(body);
        data(send(SERVICE, request).await?)
    }

    /// What `dbt_run` answers: the run's id and page.
    fn run_answer(&self, account: i64, run: &Value, adopted: bool) -> Value {
        json!({
            "run_id": run.get("id"),
            "run_url": self.run_url(account, run),
            "adopted": adopted,
        })
    }

    /// The run's page in dbt Cloud: its `href` when dbt gives one, else built from the
    /// account, project and run as dbt Cloud's own links are.
    pub fn run_url(&self, account: i64, run: &Value) -> Option<String> {
        if let Some(href) = run.get("href").and_then(Value::as_str) {
            return Some(href.to_string());
        }
        let id = run.get("id").and_then(Value::as_i64)?;
        let project = run.get("project_id").and_then(Value::as_i64)?;
        Some(format!(
            "{}/deploy/{account}/projects/{project}/runs/{id}/",
            self.config.api_base.as_str().trim_end_matches('/')
        ))
    }

    /// A step's artifact (`run_results.json`, `manifest.json`), read whole up to
    /// `dbt.max_artifact_bytes`.
    pub async fn artifact(
        &self,
        account: i64,
        run: i64,
        step: i64,
        name: &str,
    ) -> Result<Vec<u8>, ArtifactError> {
        let response = self.artifact_response(account, run, step, name).await?;
        let max = self.config.max_artifact_bytes;
        if response
            .content_length()
            .is_some_and(|length| length > max as u64)
        {
            return Err(ArtifactError::TooLarge);
        }
        match read_capped(SERVICE, response, max).await {
            Ok(bytes) => Ok(bytes),
            Err(ActionError::Final(_)) => Err(ArtifactError::TooLarge),
            Err(error) => Err(error.into()),
        }
    }

    /// A step's artifact read as a stream by `parse` on a blocking thread, so a manifest
    /// of tens of megabytes is never held whole; more than `dbt.max_artifact_bytes` is
    /// `TooLarge`.
    pub async fn artifact_streamed<T: Send + 'static>(
        &self,
        account: i64,
        run: i64,
        step: i64,
        name: &str,
        parse: impl FnOnce(ChunkReader) -> Result<T, String> + Send + 'static,
    ) -> Result<T, ArtifactError> {
        let mut response = self.artifact_response(account, run, step, name).await?;
        let max = self.config.max_artifact_bytes;
        let (sender, receiver) = tokio::sync::mpsc::channel(8);
        let parser = tokio::task::spawn_blocking(move || {
            parse(ChunkReader {
                receiver,
                current: bytes::Bytes::new(),
            })
        });
        let mut read = 0usize;
        let mut outcome = Ok(());
        loop {
            match response.chunk().await {
                Ok(Some(chunk)) => {
                    read += chunk.len();
                    if read > max {
                        outcome = Err(ArtifactError::TooLarge);
                        break;
                    }
                    if sender.send(Ok(chunk)).await.is_err() {
                        break; // The parser has all it needs (or gave up).
                    }
                }
                Ok(None) => break,
                Err(error) => {
                    outcome = Err(transport_error(SERVICE, error).into());
                    break;
                }
            }
        }
        if outcome.is_err() {
            // Tell the parser the stream broke rather than let it read a short document.
            let _ = sender.send(Err(())).await;
        }
        drop(sender);
        let parsed = parser
            .await
            .map_err(|_| ArtifactError::Unreadable(format!("dbt: reading {name} failed")))?;
        outcome?;
        parsed.map_err(ArtifactError::Unreadable)
    }

    async fn artifact_response(
        &self,
        account: i64,
        run: i64,
        step: i64,
        name: &str,
    ) -> Result<Response, ArtifactError> {
        let path = format!("/api/v2/accounts/{account}/runs/{run}/artifacts/{name}");
        let request = self.get(&path)?.query(&[("step", step)]);
        let response = send_following_redirects(SERVICE, request).await?;
        match response.status() {
            status if status.is_success() => Ok(response),
            StatusCode::NOT_FOUND => Err(ArtifactError::Missing),
            _ => {
                let answer = super::client::Answer::read(SERVICE, response).await?;
                Err(answer.into_error(SERVICE).into())
            }
        }
    }
}

/// A [`Read`] over an artifact's chunks as they arrive from the network (for serde_json's
/// streaming reader on a blocking thread).
pub struct ChunkReader {
    receiver: tokio::sync::mpsc::Receiver<Result<bytes::Bytes, ()>>,
    current: bytes::Bytes,
}

impl Read for ChunkReader {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        while self.current.is_empty() {
            match self.receiver.blocking_recv() {
                Some(Ok(chunk)) => self.current = chunk,
                Some(Err(())) => {
                    return Err(std::io::Error::other("the download broke off"));
                }
                None => return Ok(0),
            }
        }
        let n = buf.len().min(self.current.len());
        buf[..n].copy_from_slice(&self.current.split_to(n));
        Ok(n)
    }
}

/// The `data` of a dbt Cloud answer (`{"status": {...}, "data": ...}`), or the error it
/// is: `status.user_message` names what went wrong without echoing credentials.
fn data(answer: super::client::Answer) -> Result<Value, ActionError> {
    if !answer.status.is_success() {
        return Err(answer.into_error(SERVICE));
    }
    let mut body: Value = serde_json::from_str(&answer.body).map_err(|_| {
        ActionError::final_error(format!(
            "dbt: HTTP {}: the answer is not JSON",
            answer.status.as_u16()
        ))
    })?;
    if body.pointer("/status/is_success") == Some(&Value::Bool(false)) {
        let message = body
            .pointer("/status/user_message")
            .and_then(Value::as_str)
            .unwrap_or("is_success is false");
        return Err(ActionError::final_error(format!(
            "dbt: {}",
            crate::dbt_artifacts::capped_chars(message, 300)
        )));
    }
    match body.get_mut("data").map(Value::take) {
        Some(data) if !data.is_null() => Ok(data),
        _ => Err(ActionError::final_error("dbt: the answer has no data")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cause_is_cut_to_255_characters_and_keeps_its_tag() {
        let tag = cause_tag(123456);
        let cause = tagged_cause(&"é".repeat(400), &tag);
        assert_eq!(cause.chars().count(), MAX_CAUSE_CHARS);
        assert!(cause.ends_with(" [freshet:123456]"));
        assert_eq!(tagged_cause("  ", &tag), tag);
        assert_eq!(tagged_action(&cause), Some(123456));
        assert_eq!(tagged_action("Kicked off from UI by x"), None);
        assert_eq!(tagged_action("[freshet:abc]"), None);
    }
}
