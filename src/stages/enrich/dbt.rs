//! dbt Cloud's half of the enrich stage: why a run failed (docs/behaviour.md section 13).
//!
//! The recipe is dbt Labs' own (dbt-mcp's run-results parser): read the run with its
//! steps; for each step that errored, its `run_results.json`; each failed result is one
//! entry of `failures`. A step without a usable artifact gives the tail of its logs
//! instead. dbt sends `job.run.errored` before it has ingested the run's artifacts, so a
//! 404 is waited out for `dbt.artifact_wait_seconds` before it counts as missing.
//!
//! dbt delivers one failed run twice (`job.run.completed` with `Errored`, and
//! `job.run.errored`): [`RecentRuns`] lets both events share one fetch, the second waiting
//! for the first when they arrive together.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{json, Map, Value};

use crate::actions::client::ActionError;
use crate::actions::dbt::{ArtifactError, DbtCloud};
use crate::config::DbtConfig;
use crate::dbt_artifacts::{Failure, ManifestFacts, RunResults, MAX_FAILURES};
use crate::event::Event;

/// dbt Cloud's status code of a step (and run) that errored.
const ERRORED: i64 = 20;
/// How long a fetched run serves a later delivery of the same run.
const KEEP_FOR: Duration = Duration::from_secs(600);
/// Most runs remembered.
const KEEP_AT_MOST: usize = 256;
/// The longest pause between two looks for an artifact dbt has not ingested yet.
const ARTIFACT_POLL_MAX: Duration = Duration::from_secs(10);

/// Runs fetched lately, by account and run id, each behind its own lock so that a second
/// delivery waits for the fetch in progress instead of making its own.
#[derive(Default, Clone)]
pub struct RecentRuns {
    runs: Arc<Mutex<HashMap<String, Slot>>>,
}

/// One run's fetch: locked while it is under way, then holding its outcome.
type Slot = Arc<tokio::sync::Mutex<Option<Fetched>>>;

#[derive(Clone)]
struct Fetched {
    at: Instant,
    fields: Map<String, Value>,
}

impl RecentRuns {
    /// The event's failed run as event fields: fetched, or taken from a fetch of the same
    /// run a moment ago unless `anew` (a replay fetches again).
    pub async fn fetch(
        &self,
        http: &reqwest::Client,
        config: &DbtConfig,
        event: &Event,
        anew: bool,
    ) -> Result<Map<String, Value>, ActionError> {
        let (Some(account), Some(run)) = (
            event.field("account_id").and_then(Value::as_i64),
            event.field("run_id").and_then(Value::as_i64),
        ) else {
            return Err(ActionError::final_error(
                "dbt: the event names no account and run",
            ));
        };
        let slot = self.slot(&format!("{account}:{run}"));
        let mut fetched = slot.lock().await;
        if let Some(recent) = fetched
            .as_ref()
            .filter(|f| !anew && f.at.elapsed() < KEEP_FOR)
        {
            tracing::debug!(event_id = %event.id, run, "The failed dbt run was fetched a moment ago for its other delivery.");
            return Ok(recent.fields.clone());
        }
        let cloud = DbtCloud { http, config };
        let fields = fetch_run(&cloud, account, run).await?;
        *fetched = Some(Fetched {
            at: Instant::now(),
            fields: fields.clone(),
        });
        Ok(fields)
    }

    fn slot(&self, key: &str) -> Slot {
        let mut runs = self.runs.lock().unwrap_or_else(|p| p.into_inner());
        if runs.len() >= KEEP_AT_MOST && !runs.contains_key(key) {
            // Full: forget every run nobody is fetching or waiting for (no other holder
            // of its slot), recent or not. A later delivery of one of them fetches again.
            runs.retain(|_, slot| Arc::strong_count(slot) > 1);
        }
        Arc::clone(runs.entry(key.to_string()).or_default())
    }
}

/// Reads the run, its failed steps' artifacts, and (with `fetch_owners`) their manifests.
async fn fetch_run(
    cloud: &DbtCloud<'_>,
    account: i64,
    run_id: i64,
) -> Result<Map<String, Value>, ActionError> {
    let run = cloud.run(account, run_id).await?;
    let mut failures = Vec::new();
    let steps = run
        .get("run_steps")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    for step in steps
        .iter()
        .filter(|step| step.get("status").and_then(Value::as_i64) == Some(ERRORED))
    {
        failures.extend(step_failures(cloud, account, run_id, step).await?);
    }
    let truncated = failures.len().saturating_sub(MAX_FAILURES);
    failures.truncate(MAX_FAILURES);
    let mut fields = Map::new();
    fields.insert("failures".into(), json!(failures));
    fields.insert("failures_truncated".into(), json!(truncated));
    fields.insert("run_url".into(), json!(cloud.run_url(account, &run)));
    fields.insert(
        "status_message".into(),
        run.get("status_message").cloned().unwrap_or(Value::Null),
    );
    fields.insert("verified".into(), Value::Bool(true));
    Ok(fields)
}

/// The failures of one errored step: from its `run_results.json`, else its logs' tail.
async fn step_failures(
    cloud: &DbtCloud<'_>,
    account: i64,
    run: i64,
    step: &Value,
) -> Result<Vec<Failure>, ActionError> {
    let name = step.get("name").and_then(Value::as_str).unwrap_or("dbt");
    let logs = step.get("logs").and_then(Value::as_str).unwrap_or("");
    let Some(index) = step.get("index").and_then(Value::as_i64) else {
        return Ok(vec![Failure::log_tail(name, logs)]);
    };
    let bytes = match artifact_when_ingested(cloud, account, run, index, "run_results.json").await {
        Ok(bytes) => bytes,
        Err(ArtifactError::Action(error)) => return Err(error),
        Err(why) => {
            tracing::info!(run, step = index, why = ?why, "No usable run_results.json for the failed step: its logs stand in.");
            return Ok(vec![Failure::log_tail(name, logs)]);
        }
    };
    let results = match RunResults::parse(&bytes) {
        Ok(results) => results,
        Err(why) => {
            tracing::warn!(run, step = index, error = %why, "The failed step's run_results.json is unreadable: its logs stand in.");
            return Ok(vec![Failure::log_tail(name, logs)]);
        }
    };
    let mut failures = results.failures(name);
    if failures.is_empty() {
        // The step failed outside any node (a bad selector, a freshness check): its logs
        // say why.
        return Ok(vec![Failure::log_tail(name, logs)]);
    }
    if cloud.config.fetch_owners {
        let wanted: HashSet<String> = failures.iter().filter_map(|f| f.node.clone()).collect();
        let read = cloud
            .artifact_streamed(account, run, index, "manifest.json", move |reader| {
                ManifestFacts::read(reader, &wanted)
            })
            .await;
        match read {
            Ok(facts) => facts.annotate(&mut failures),
            Err(ArtifactError::Action(error)) => return Err(error),
            Err(why) => {
                tracing::warn!(run, step = index, why = ?why, "The failed step's manifest.json cannot be read: the failures have no owners.")
            }
        }
    }
    Ok(failures)
}

/// An artifact, waiting (with a growing pause) up to `dbt.artifact_wait_seconds` while
/// dbt answers 404 because it has not ingested it yet.
async fn artifact_when_ingested(
    cloud: &DbtCloud<'_>,
    account: i64,
    run: i64,
    step: i64,
    name: &str,
) -> Result<Vec<u8>, ArtifactError> {
    let deadline = Instant::now() + Duration::from_secs(cloud.config.artifact_wait_seconds);
    let mut pause = Duration::from_millis(500);
    loop {
        match cloud.artifact(account, run, step, name).await {
            Err(ArtifactError::Missing) if Instant::now() + pause <= deadline => {
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(ARTIFACT_POLL_MAX);
            }
            other => return other,
        }
    }
}
