//! The `mode_run` action and the Mode API (<https://mode.com/developer/api-reference/>):
//! start a report run, and read runs and their results (the enrich stage's fetch of Mode
//! events). HTTP Basic with the API token and secret; every URL is built on the
//! configured `api_base`.

use reqwest::Client;
use rhai::{Engine, Map as RhaiMap, NativeCallContext};
use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};

use super::client::{excerpt, send, send_following_redirects, ActionError, Answer};
use super::{ActionRequest, Services};
use crate::config::ModeConfig;
use crate::rules::api::{non_empty, record, to_json, Fallible};

const SERVICE: &str = "mode";

/// `mode_run(report[, parameters])`: run a Mode report.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ModeRun {
    pub report: String,
    #[serde(default, skip_serializing_if = "Map::is_empty")]
    pub parameters: Map<String, Value>,
}

impl ModeRun {
    /// Starts the run; the answer holds the new run's token.
    pub async fn call(&self, services: &Services<'_>) -> Result<Value, ActionError> {
        let mode = services
            .config
            .mode
            .as_ref()
            .ok_or_else(|| ActionError::not_configured(SERVICE))?;
        Mode {
            http: services.http,
            config: mode,
        }
        .run_report(&self.report, &self.parameters)
        .await
    }
}

/// The rule functions that build a [`ModeRun`].
pub(super) fn register(engine: &mut Engine) {
    engine.register_fn(
        "mode_run",
        |ctx: NativeCallContext, report: &str| -> Fallible {
            let report = non_empty(&ctx, "mode_run", "the report token", report)?;
            let written = json!([report]);
            let run = ModeRun {
                report,
                parameters: Map::new(),
            };
            record(&ctx, ActionRequest::ModeRun(run), written)
        },
    );
    engine.register_fn(
        "mode_run",
        |ctx: NativeCallContext, report: &str, params: RhaiMap| -> Fallible {
            let report = non_empty(&ctx, "mode_run", "the report token", report)?;
            let parameters = to_json(&ctx, "mode_run", params)?;
            let written = json!([report, parameters]);
            let run = ModeRun { report, parameters };
            record(&ctx, ActionRequest::ModeRun(run), written)
        },
    );
}

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

impl Mode<'_> {
    /// `freshet check --online`: `GET /api/{workspace}`, the workspace the credentials
    /// must reach (read-only).
    pub async fn probe(&self) -> Result<String, ActionError> {
        let (token, secret) = self.credentials()?;
        let path = format!("/api/{}", self.config.workspace);
        let request = self
            .http
            .get(self.url(&path))
            .basic_auth(token, Some(secret))
            .header("Accept", "application/hal+json");
        let workspace = read_json(send(SERVICE, request).await?)?;
        let name = workspace
            .get("name")
            .and_then(Value::as_str)
            .unwrap_or(&self.config.workspace);
        Ok(format!("workspace {:?} ({name})", self.config.workspace))
    }

    /// The rows of a query's results (`.../results/content.json`, a JSON array of row
    /// objects), streamed: rows are parsed as their bytes arrive, at most `max_rows` are
    /// kept (the rest is not downloaded), and a body longer than `max_bytes` is refused
    /// (`TooLarge`), so memory stays bounded whatever Mode sends (docs/behaviour.md section 7).
    pub async fn result_rows(
        &self,
        path: &str,
        max_rows: usize,
        max_bytes: usize,
    ) -> Result<Vec<Value>, RowsError> {
        let (token, secret) = self.credentials()?;
        if !path.starts_with(&format!("/api/{}/", self.config.workspace)) {
            return Err(ActionError::final_error(format!(
                "mode: refusing to fetch {path}: not in the workspace"
            ))
            .into());
        }
        let request = self
            .http
            .get(self.url(path))
            .basic_auth(token, Some(secret))
            .header("Accept", "application/json");
        let mut response = send_following_redirects(SERVICE, request).await?;
        if !response.status().is_success() {
            let answer = Answer::read(SERVICE, response).await?;
            return Err(answer.into_error(SERVICE).into());
        }
        let mut rows = RowSplitter::default();
        let mut read = 0usize;
        while let Some(chunk) = response
            .chunk()
            .await
            .map_err(|e| super::client::transport_error(SERVICE, e))?
        {
            read += chunk.len();
            if read > max_bytes {
                return Err(RowsError::TooLarge(max_bytes));
            }
            rows.feed(&chunk)
                .map_err(|why| ActionError::final_error(format!("mode: results: {why}")))?;
            if rows.rows.len() >= max_rows {
                // Enough: the rest is never downloaded.
                rows.rows.truncate(max_rows);
                return Ok(rows.rows);
            }
        }
        rows.finish()
            .map_err(|why| ActionError::final_error(format!("mode: results: {why}")).into())
    }
}

/// Why a query's rows could not be read.
#[derive(Debug)]
pub enum RowsError {
    /// The results are longer than `mode.max_result_bytes`.
    TooLarge(usize),
    Action(ActionError),
}

impl From<ActionError> for RowsError {
    fn from(error: ActionError) -> RowsError {
        RowsError::Action(error)
    }
}

/// Cuts a JSON array, as it arrives in chunks, into its elements, each parsed on its own:
/// only the element being received is held, never the whole body.
#[derive(Default)]
struct RowSplitter {
    rows: Vec<Value>,
    /// The bytes of the element being received.
    element: Vec<u8>,
    started: bool,
    ended: bool,
    /// Nesting inside the current element.
    depth: usize,
    in_string: bool,
    escaped: bool,
}

impl RowSplitter {
    fn feed(&mut self, bytes: &[u8]) -> Result<(), String> {
        for &byte in bytes {
            if self.ended {
                if !byte.is_ascii_whitespace() {
                    return Err("data after the end of the array".into());
                }
                continue;
            }
            if !self.started {
                match byte {
                    b'[' => self.started = true,
                    b if b.is_ascii_whitespace() => {}
                    _ => return Err("not a JSON array of rows".into()),
                }
                continue;
            }
            if self.in_string {
                self.element.push(byte);
                match (self.escaped, byte) {
                    (true, _) => self.escaped = false,
                    (false, b'\\') => self.escaped = true,
                    (false, b'"') => self.in_string = false,
                    _ => {}
                }
                continue;
            }
            match byte {
                b',' | b']' if self.depth == 0 => {
                    self.end_element()?;
                    if byte == b']' {
                        self.ended = true;
                    }
                }
                b'"' => {
                    self.in_string = true;
                    self.element.push(byte);
                }
                b'{' | b'[' => {
                    self.depth += 1;
                    self.element.push(byte);
                }
                b'}' | b']' => {
                    self.depth = self
                        .depth
                        .checked_sub(1)
                        .ok_or("unbalanced brackets in the results")?;
                    self.element.push(byte);
                }
                b if b.is_ascii_whitespace() && self.depth == 0 => {}
                _ => self.element.push(byte),
            }
        }
        Ok(())
    }

    fn end_element(&mut self) -> Result<(), String> {
        if self.element.is_empty() {
            // `[]`, or a stray comma that the parse of the next element would not notice.
            return if self.rows.is_empty() {
                Ok(())
            } else {
                Err("an empty element in the results".into())
            };
        }
        let row = serde_json::from_slice(&self.element).map_err(|e| e.to_string())?;
        self.rows.push(row);
        self.element.clear();
        Ok(())
    }

    fn finish(self) -> Result<Vec<Value>, String> {
        if self.ended {
            Ok(self.rows)
        } else {
            Err("the results end before the array does".into())
        }
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

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn split(chunks: &[&str]) -> Result<Vec<Value>, String> {
        let mut splitter = RowSplitter::default();
        for chunk in chunks {
            splitter.feed(chunk.as_bytes())?;
        }
        splitter.finish()
    }

    #[test]
    fn rows_are_cut_out_of_the_array_whatever_the_chunks() {
        let text = r#" [ {"a": 1, "b": "x,]}"}, {"a": [2, {"c": "\"]"}]} ,{"a":3}] "#;
        let whole = split(&[text]).unwrap();
        assert_eq!(
            whole,
            vec![
                json!({"a": 1, "b": "x,]}"}),
                json!({"a": [2, {"c": "\"]"}]}),
                json!({"a": 3})
            ]
        );
        // Byte by byte gives the same rows.
        let bytes: Vec<String> = text.chars().map(String::from).collect();
        let pieces: Vec<&str> = bytes.iter().map(String::as_str).collect();
        assert_eq!(split(&pieces).unwrap(), whole);
        assert_eq!(split(&["[]"]).unwrap(), Vec::<Value>::new());
    }

    #[test]
    fn malformed_results_are_errors() {
        assert!(split(&["{\"a\": 1}"]).is_err());
        assert!(split(&["[{\"a\": 1}"]).is_err(), "unterminated");
        assert!(split(&["[{\"a\": 1},,{}]"]).is_err());
        assert!(split(&["[{\"a\": }]"]).is_err());
        assert!(split(&["[1] x"]).is_err());
    }
}
