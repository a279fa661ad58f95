//! The Mode API (../shared/api/dbt-cloud-and-mode.md section 3): start a report run
//! (`mode_run`) and read runs and their results (enrichment of Mode events). HTTP Basic
//! with the API token and secret; every URL is built on the configured `api_base`.

use reqwest::Client;
use serde_json::{json, Map, Value};

use super::client::{excerpt, send, ActionError, Answer};
use crate::config::ModeConfig;

const SERVICE: &str = "mode";

/// A Mode API client for one configured workspace.
pub struct Mode<'a> {
    pub http: &'a Client,
    pub config: &'a ModeConfig,
}

impl Mode<'_> {
    fn credentials(&self) -> Result<(&str, &str), ActionError> {
        match (&self.config.api_token, &self.config.api_secret) {
            (Some(token), Some(secret)) => Ok((token.expose(), secret.expose())),
            _ => Err(ActionError::final_error(
                "mode is not configured (mode.api_token and mode.api_secret)",
            )),
        }
    }

    /// `api_base` + `path`, where `path` starts with `/api/`.
    fn url(&self, path: &str) -> String {
        format!(
            "{}{}",
            self.config.api_base.as_str().trim_end_matches('/'),
            path
        )
    }

    /// Starts a run of `report` with `parameters`; returns the new run's token.
    pub async fn run_report(
        &self,
        report: &str,
        parameters: &Map<String, Value>,
    ) -> Result<Value, ActionError> {
        if !is_token(report) {
            return Err(ActionError::final_error(format!(
                "mode: {report:?} is not a report token"
            )));
        }
        let (token, secret) = self.credentials()?;
        let path = format!("/api/{}/reports/{report}/runs", self.config.workspace);
        let request = self
            .http
            .post(self.url(&path))
            .basic_auth(token, Some(secret))
            .header("Accept", "application/hal+json")
            .json(&json!({ "parameters": parameters }));
        let run = read_json(send(SERVICE, request).await?)?;
        let run_token = run
            .get("token")
            .and_then(Value::as_str)
            .map(String::from)
            .or_else(|| {
                run.pointer("/_links/self/href")
                    .and_then(Value::as_str)
                    .and_then(|href| href.rsplit('/').next())
                    .map(String::from)
            });
        Ok(json!({ "run_token": run_token, "state": run.get("state") }))
    }

    /// GETs an API path (which must start with `/api/{workspace}/`) as JSON.
    pub async fn get(&self, path: &str) -> Result<Value, ActionError> {
        let (token, secret) = self.credentials()?;
        if !path.starts_with(&format!("/api/{}/", self.config.workspace)) {
            return Err(ActionError::final_error(format!(
                "mode: refusing to fetch {path}: not in the workspace"
            )));
        }
        let request = self
            .http
            .get(self.url(path))
            .basic_auth(token, Some(secret))
            .header("Accept", "application/hal+json");
        read_json(send(SERVICE, request).await?)
    }
}

/// Mode tokens are short lowercase hex-like strings; anything else cannot be put in a path.
fn is_token(text: &str) -> bool {
    !text.is_empty()
        && text.len() <= 64
        && text
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
}

/// A successful JSON answer, or the error it stands for.
fn read_json(answer: Answer) -> Result<Value, ActionError> {
    if !answer.status.is_success() {
        return Err(answer.into_error(SERVICE));
    }
    serde_json::from_str(&answer.body).map_err(|_| {
        ActionError::retryable(format!(
            "mode: answer is not JSON: {}",
            excerpt(&answer.body)
        ))
    })
}
