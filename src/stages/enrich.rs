//! The enrich stage: Mode webhooks carry only a link, and a failed run also says
//! `report_run_completed`. Before the rules see a Mode run event, this stage fetches the
//! run from the configured `mode.api_base` (never the host in the payload) and, for a
//! succeeded (or `completed`) run, its result rows, then hands the event on to evaluation.
//!
//! Rules never see a half-fetched event as if Mode had no results (docs/behaviour.md section 7): a
//! fetch that fails is retried like an action (the `actions.*` backoff, `Retry-After`
//! honoured), and when it gives up the job is `dead`, listed and retryable, with a
//! `freshet.action.failed` event. Only a query whose results cannot be had (purged, too
//! large) is left out, named in `result_errors`. Without Mode API credentials nothing
//! can be fetched, and the event reaches the rules unverified.

use std::sync::Arc;

use arc_swap::ArcSwap;
use serde_json::{json, Map, Value};
use tokio_util::sync::CancellationToken;

use crate::actions::client::ActionError;
use crate::actions::mode::{Mode, RowsError};
use crate::config::{Config, ModeConfig};
use crate::event::Event;
use crate::journal::{blocking, FollowUp, Job, JobOutcome, JobStatus, Journal, Queue};

use super::act::failure_if_dead;
use super::{next_jobs, Wakes};

/// How long one enrichment may hold its job: the run, the report, the query runs and
/// each query's results.
const LEASE_MS: u64 = 600_000;

/// The run states whose results are fetched: Mode documents both for a finished run.
const FINISHED_WITH_RESULTS: [&str; 2] = ["succeeded", "completed"];

/// The enrich stage's dependencies.
pub struct EnrichWorker {
    pub journal: Journal,
    pub config: Arc<ArcSwap<Config>>,
    /// Woken by intake; wakes the evaluate stage once the event is ready (or a failure
    /// event was emitted).
    pub wakes: Wakes,
    /// The daemon's one HTTP client.
    pub http: reqwest::Client,
}

impl EnrichWorker {
    pub async fn run(self, stop: CancellationToken) {
        while let Some(jobs) = next_jobs(
            &self.journal,
            Queue::Enrich,
            4,
            LEASE_MS,
            &self.wakes.enrich,
            &stop,
        )
        .await
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
                self.journal.abandon(&job);
                return;
            }
        };
        let config = self.config.load_full();
        let mode = config
            .mode
            .as_ref()
            .filter(|mode| mode.api_token.is_some() && mode.api_secret.is_some());
        let Some(mode) = mode else {
            tracing::warn!(event_id = %event.id, "No Mode API credentials (mode.api_token, mode.api_secret): the run cannot be fetched; rules see the event unverified.");
            event.fields.insert("verified".into(), Value::Bool(false));
            return self.enriched(job, event).await;
        };
        if !super::lease_still_held(&self.journal, &job) {
            return;
        }
        match fetch(&self.http, mode, &event).await {
            Ok(fields) => {
                let run_state = fields.get("run_state").cloned().unwrap_or(Value::Null);
                tracing::info!(event_id = %event.id, run_state = %run_state, "Mode run fetched.");
                event.fields.extend(fields);
                self.enriched(job, event).await;
            }
            Err(error) => {
                tracing::warn!(event_id = %event.id, attempt = job.attempt, max_attempts = job.max_attempts,
                    error = %error, "Fetching the Mode run failed.");
                let outcome = error.into_outcome(&config, &job);
                self.failed(job, outcome).await;
            }
        }
    }

    /// Journals the enriched event with its `evaluate` job.
    async fn enriched(&self, job: Job, event: Event) {
        let finished = blocking(&self.journal, move |j| j.finish_enrichment(&job, &event)).await;
        match finished {
            Ok(true) => self.wakes.evaluate.notify_waiters(),
            Ok(false) => tracing::warn!("Enrichment lease lost; another run recorded it."),
            Err(error) => tracing::error!(error = %error, "Cannot journal the enriched event."),
        }
    }

    /// Journals a failed attempt: retrying, or dead with a `freshet.action.failed` event.
    async fn failed(&self, job: Job, outcome: JobOutcome) {
        let follow_up = FollowUp {
            event: failure_if_dead(&self.journal, &job, &outcome).await,
            job: None,
        };
        let id = job.id;
        match blocking(&self.journal, move |j| j.finish(&job, &outcome, &follow_up)).await {
            Ok(Some(JobStatus::Dead)) => {
                tracing::error!(
                    job_id = id,
                    "Mode enrichment is dead; `freshet retry` queues it again."
                );
                self.wakes.evaluate.notify_waiters();
            }
            Ok(_) => {}
            Err(error) => tracing::error!(error = %error, "Cannot journal the enrichment attempt."),
        }
    }
}

/// Fetches the run (and for a finished run, its results) into event fields.
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

    if event.kind == "mode.report_run_completed"
        && FINISHED_WITH_RESULTS.contains(&state.as_str())
        && config.fetch_results
    {
        let (results, errors) = fetch_results(&mode, &run_path, config).await?;
        fields.insert("results".into(), Value::Object(results));
        fields.insert("result_errors".into(), Value::Object(errors));
    }
    Ok(fields)
}

/// Query name -> rows, for every query run of the report run, and query name -> why for
/// the queries whose rows could not be had. A failure that may pass (Mode down, 429)
/// fails the whole fetch, to be retried: the rules get all the rows Mode has, or wait.
async fn fetch_results(
    mode: &Mode<'_>,
    run_path: &str,
    config: &ModeConfig,
) -> Result<(Map<String, Value>, Map<String, Value>), ActionError> {
    let mut results = Map::new();
    let mut errors = Map::new();
    let listing = match mode.get(&format!("{run_path}/query_runs")).await {
        Ok(listing) => listing,
        Err(ActionError::Final(message)) => {
            // The run's queries are gone (purged): the run is known, its rows are not.
            errors.insert("query_runs".into(), json!(message));
            return Ok((results, errors));
        }
        Err(retryable) => return Err(retryable),
    };
    let query_runs = listing
        .pointer("/_embedded/query_runs")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    for query_run in query_runs {
        let Some(token) = query_run.get("token").and_then(Value::as_str) else {
            continue;
        };
        let name = query_run
            .get("query_name")
            .and_then(Value::as_str)
            .or_else(|| query_run.get("query_token").and_then(Value::as_str))
            .unwrap_or(token)
            .to_string();
        if !token
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
        {
            errors.insert(name, json!("mode: the query run's token is not a token"));
            continue;
        }
        let path = format!("{run_path}/query_runs/{token}/results/content.json");
        match mode
            .result_rows(&path, config.max_result_rows, config.max_result_bytes)
            .await
        {
            Ok(rows) => {
                let rows = rows.into_iter().map(numbers_as_numbers).collect();
                results.insert(name, Value::Array(rows));
            }
            Err(RowsError::TooLarge(limit)) => {
                errors.insert(
                    name,
                    json!(format!(
                        "the results are larger than {limit} bytes (mode.max_result_bytes)"
                    )),
                );
            }
            Err(RowsError::Action(ActionError::Final(message))) => {
                errors.insert(name, json!(message));
            }
            Err(RowsError::Action(retryable)) => return Err(retryable),
        }
    }
    Ok((results, errors))
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
