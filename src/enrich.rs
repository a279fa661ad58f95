//! The enrich stage: Mode webhooks carry only a link, and a failed run also says
//! `report_run_completed`. Before the rules see a Mode run event, this stage fetches the
//! run from the configured `mode.api_base` (never the host in the payload) and, for a
//! succeeded run, its result rows, then hands the event on to evaluation.
//!
//! Fetch failures that may pass (5xx, 429, timeouts) retry like actions; when they do not
//! pass, the event still reaches the rules, with `verified: false` and the `error`.

use std::sync::Arc;

use arc_swap::ArcSwap;
use serde_json::{json, Map, Value};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::actions::client::{backoff, ActionError};
use crate::actions::mode::Mode;
use crate::config::{Config, ModeConfig};
use crate::event::Event;
use crate::journal::{blocking, Job, JobOutcome, Journal, Queue};
use crate::worker::next_jobs;

/// How long one enrichment may hold its job: the run, the report, the query runs and
/// each query's results.
const LEASE_MS: u64 = 600_000;

/// The enrich stage's dependencies.
pub struct EnrichWorker {
    pub journal: Journal,
    pub config: Arc<ArcSwap<Config>>,
    /// Woken by intake.
    pub wake: Arc<Notify>,
    /// Wakes the evaluate stage once the event is ready.
    pub evaluate_wake: Arc<Notify>,
    /// The daemon's one HTTP client.
    pub http: reqwest::Client,
}

impl EnrichWorker {
    pub async fn run(self, stop: CancellationToken) {
        while let Some(jobs) =
            next_jobs(&self.journal, Queue::Enrich, 4, LEASE_MS, &self.wake, &stop).await
        {
            for job in jobs {
                self.enrich(job).await;
            }
        }
    }

    async fn enrich(&self, job: Job) {
        let event_id = job.event_id.clone();
        let mut event = match blocking(&self.journal, move |j| j.event(&event_id)).await {
            Ok(Some(event)) => event,
            Ok(None) | Err(_) => {
                tracing::error!(event_id = %job.event_id, "Cannot load the event to enrich; it is retried when the lease ends.");
                return;
            }
        };
        let config = self.config.load_full();
        let result = match &config.mode {
            Some(mode) => fetch(&self.http, mode, &event).await,
            None => Err(ActionError::not_configured("mode")),
        };
        match result {
            Ok(fields) => {
                let run_state = fields.get("run_state").cloned().unwrap_or(Value::Null);
                tracing::info!(event_id = %event.id, run_state = %run_state, "Mode run fetched.");
                event.fields.extend(fields);
            }
            Err(ActionError::Retryable {
                message,
                retry_after,
            }) if job.attempt < job.max_attempts => {
                let delay_ms =
                    backoff(&config.actions, job.attempt, retry_after).as_millis() as u64;
                tracing::warn!(event_id = %event.id, attempt = job.attempt, error = %message, "Fetching the Mode run failed; will retry.");
                let outcome = JobOutcome::Retry {
                    delay_ms,
                    error: message,
                };
                if let Err(error) =
                    blocking(&self.journal, move |j| j.finish(&job, &outcome, None)).await
                {
                    tracing::error!(error = %error, "Cannot journal the enrichment retry.");
                }
                return;
            }
            Err(error) => {
                tracing::warn!(event_id = %event.id, error = %error, "Mode run could not be fetched; rules see it unverified.");
                event.fields.insert("verified".into(), Value::Bool(false));
                event
                    .fields
                    .insert("error".into(), json!(error.to_string()));
            }
        }
        let finished = blocking(&self.journal, move |j| j.finish_enrichment(&job, &event)).await;
        match finished {
            Ok(true) => self.evaluate_wake.notify_waiters(),
            Ok(false) => tracing::warn!("Enrichment lease lost; another run recorded it."),
            Err(error) => tracing::error!(error = %error, "Cannot journal the enriched event."),
        }
    }
}

/// Fetches the run (and for a succeeded completion, its results) into event fields.
async fn fetch(
    http: &reqwest::Client,
    config: &ModeConfig,
    event: &Event,
) -> Result<Map<String, Value>, ActionError> {
    let mode = Mode { http, config };
    let (Some(report), Some(run)) = (
        event.field("report_token").and_then(Value::as_str),
        event.field("run_token").and_then(Value::as_str),
    ) else {
        return Err(ActionError::final_error("the event names no report run"));
    };
    let ws = &config.workspace;
    let run_path = format!("/api/{ws}/reports/{report}/runs/{run}");
    let run_object = mode.get(&run_path).await?;
    let state = run_object
        .get("state")
        .and_then(Value::as_str)
        .unwrap_or("unknown")
        .to_string();
    let mut fields = Map::new();
    fields.insert("run_state".into(), json!(state));
    fields.insert("verified".into(), Value::Bool(true));
    let run_url = run_object
        .pointer("/_links/web_external_url/href")
        .and_then(Value::as_str)
        .map(|href| href.split('?').next().unwrap_or(href).to_string());
    fields.insert("run_url".into(), json!(run_url));
    // The report's name is a nicety for messages: its failure does not fail the event.
    let report_name = mode
        .get(&format!("/api/{ws}/reports/{report}"))
        .await
        .ok()
        .and_then(|r| r.get("name").and_then(Value::as_str).map(String::from));
    fields.insert("report_name".into(), json!(report_name));

    if event.kind == "mode.report_run_completed" && state == "succeeded" && config.fetch_results {
        match fetch_results(&mode, &run_path, config.max_result_rows).await {
            Ok(results) => {
                fields.insert("results".into(), Value::Object(results));
            }
            // Purged results (404) and other final answers: the run is known, the rows are not.
            Err(ActionError::Final(message)) => {
                fields.insert("results".into(), json!({}));
                fields.insert("error".into(), json!(message));
            }
            Err(retryable) => return Err(retryable),
        }
    }
    Ok(fields)
}

/// Query name -> rows, for every query run of the report run.
async fn fetch_results(
    mode: &Mode<'_>,
    run_path: &str,
    max_rows: usize,
) -> Result<Map<String, Value>, ActionError> {
    let listing = mode.get(&format!("{run_path}/query_runs")).await?;
    let query_runs = listing
        .pointer("/_embedded/query_runs")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    let mut results = Map::new();
    for query_run in query_runs {
        let Some(token) = query_run.get("token").and_then(Value::as_str) else {
            continue;
        };
        if !token
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
        {
            continue;
        }
        let name = query_run
            .get("query_name")
            .and_then(Value::as_str)
            .or_else(|| query_run.get("query_token").and_then(Value::as_str))
            .unwrap_or(token)
            .to_string();
        let rows = mode
            .get(&format!(
                "{run_path}/query_runs/{token}/results/content.json"
            ))
            .await?;
        let Value::Array(rows) = rows else {
            return Err(ActionError::final_error(format!(
                "mode: results of query {name:?} are not an array of rows"
            )));
        };
        let rows: Vec<Value> = rows
            .into_iter()
            .take(max_rows)
            .map(numbers_as_numbers)
            .collect();
        results.insert(name, Value::Array(rows));
    }
    Ok(results)
}

/// Mode may send numbers as strings; turn plain numeric strings into numbers so rules can
/// compare them. Strings that would change when written back ("02134", "1e3") stay text.
fn numbers_as_numbers(row: Value) -> Value {
    let Value::Object(map) = row else { return row };
    Value::Object(
        map.into_iter()
            .map(|(key, value)| {
                let converted = match &value {
                    Value::String(text) => numeric(text).unwrap_or(value),
                    _ => value,
                };
                (key, converted)
            })
            .collect(),
    )
}

fn numeric(text: &str) -> Option<Value> {
    if let Ok(int) = text.parse::<i64>() {
        return (int.to_string() == text).then(|| json!(int));
    }
    let plain = text
        .chars()
        .all(|c| c.is_ascii_digit() || c == '.' || c == '-');
    let float = text.parse::<f64>().ok().filter(|f| f.is_finite())?;
    let leading_zero = text.trim_start_matches('-').starts_with('0')
        && !text.trim_start_matches('-').starts_with("0.");
    (plain && !leading_zero).then(|| json!(float))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numeric_strings_become_numbers_only_when_plain() {
        let row = numbers_as_numbers(
            json!({"a": "12", "b": "1250.75", "c": "02134", "d": "2026-08-06", "e": 3, "f": "-0.5", "g": "1e3"}),
        );
        assert_eq!(
            row,
            json!({"a": 12, "b": 1250.75, "c": "02134", "d": "2026-08-06", "e": 3, "f": -0.5, "g": "1e3"})
        );
    }
}
