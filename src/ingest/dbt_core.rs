//! dbt Core invocations -> [`Event`] (docs/behaviour.md section 13). dbt Core sends no
//! webhooks: `freshet send dbt-core` reads an invocation's `run_results.json` (and
//! `manifest.json`) and posts this compact body, signed like a dbt Cloud webhook, to
//! `POST /webhooks/dbt-core`. It becomes a `dbt.job.run.completed` event with
//! `source = "dbt-core"` and the same `failures` as a dbt Cloud run's, so one rule serves
//! both.

use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};

use super::BodyError;
use crate::dbt_artifacts::{capped_chars, Failure, RunResults, MAX_FAILURES, MAX_MESSAGE_CHARS};
use crate::event::{Event, Source};

/// The body `freshet send dbt-core` posts.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Invocation {
    pub invocation_id: String,
    /// The dbt command (`build`, `run`, `test`, ...).
    pub command: Option<String>,
    /// `--select` as given.
    #[serde(default)]
    pub selectors: Vec<String>,
    pub target: Option<String>,
    /// `--job`, when given; else the event's `job_name` is the command and its selectors.
    pub job_name: Option<String>,
    pub dbt_version: Option<String>,
    pub started_at: Option<String>,
    pub finished_at: Option<String>,
    pub elapsed_seconds: Option<f64>,
    /// Results by status (`success`, `error`, `pass`, `fail`, `skipped`, ...).
    #[serde(default)]
    pub counts: Map<String, Value>,
    #[serde(default)]
    pub failures: Vec<Failure>,
    #[serde(default)]
    pub failures_truncated: u64,
}

impl Invocation {
    /// The body for an invocation's artifacts; `failures` already carry owners when the
    /// manifest was read.
    pub fn from_run_results(
        results: &RunResults,
        mut failures: Vec<Failure>,
        job_name: Option<String>,
    ) -> Result<Invocation, String> {
        let invocation_id = results
            .metadata
            .invocation_id
            .clone()
            .ok_or("run_results.json has no metadata.invocation_id")?;
        let text = |key: &str| {
            results
                .args
                .get(key)
                .and_then(Value::as_str)
                .map(String::from)
        };
        let selectors = match results.args.get("select") {
            Some(Value::Array(items)) => items
                .iter()
                .filter_map(Value::as_str)
                .map(String::from)
                .collect(),
            Some(Value::String(one)) => vec![one.clone()],
            _ => Vec::new(),
        };
        let started_at = results
            .results
            .iter()
            .flat_map(|result| result.timing.iter())
            .filter_map(|timing| timing.started_at.clone())
            .min();
        let truncated = failures.len().saturating_sub(MAX_FAILURES);
        failures.truncate(MAX_FAILURES);
        Ok(Invocation {
            invocation_id,
            command: text("which"),
            selectors,
            target: text("target"),
            job_name,
            dbt_version: results.metadata.dbt_version.clone(),
            started_at,
            finished_at: results.metadata.generated_at.clone(),
            elapsed_seconds: results.elapsed_time,
            counts: results
                .counts()
                .into_iter()
                .map(|(status, n)| (status, json!(n)))
                .collect(),
            failures,
            failures_truncated: truncated as u64,
        })
    }

    /// `dbt build --select a b`, the job's name when `--job` was not given.
    fn command_line(&self) -> String {
        let mut line = format!("dbt {}", self.command.as_deref().unwrap_or("run"));
        if !self.selectors.is_empty() {
            line.push_str(" --select ");
            line.push_str(&self.selectors.join(" "));
        }
        line
    }
}

/// Parses a `/webhooks/dbt-core` body received at `received_at`.
pub fn parse(body: &[u8], received_at: String) -> Result<Event, BodyError> {
    let raw: Value = serde_json::from_slice(body).map_err(|e| BodyError::NotJson(e.to_string()))?;
    let shape = |message: String| {
        BodyError::Shape(format!(
            "not a dbt Core invocation (as freshet send dbt-core posts it): {message}"
        ))
    };
    let invocation: Invocation =
        serde_path_to_error::deserialize(&raw).map_err(|error| shape(error.to_string()))?;
    let id = &invocation.invocation_id;
    if id.is_empty() || id.len() > 128 || !id.chars().all(|c| c.is_ascii_graphic()) {
        return Err(shape(
            "invocation_id is empty, too long or not printable ASCII".into(),
        ));
    }
    if invocation.failures.len() > MAX_FAILURES {
        return Err(shape(format!("more than {MAX_FAILURES} failures")));
    }
    let failed = !invocation.failures.is_empty()
        || ["error", "fail", "runtime error"].iter().any(|status| {
            invocation
                .counts
                .get(*status)
                .and_then(Value::as_u64)
                .unwrap_or(0)
                > 0
        });
    let failures: Vec<Failure> = invocation
        .failures
        .iter()
        .cloned()
        .map(|mut failure| {
            failure.message = capped_chars(&failure.message, MAX_MESSAGE_CHARS);
            failure
        })
        .collect();
    let mut fields = Map::new();
    let job_name = invocation
        .job_name
        .clone()
        .filter(|name| !name.trim().is_empty())
        .unwrap_or_else(|| invocation.command_line());
    fields.insert("job_name".into(), json!(job_name));
    fields.insert("run_id".into(), json!(id));
    fields.insert(
        "run_status".into(),
        json!(if failed { "Errored" } else { "Success" }),
    );
    fields.insert(
        "run_status_code".into(),
        json!(if failed { 20 } else { 10 }),
    );
    fields.insert("command".into(), json!(invocation.command));
    fields.insert("selectors".into(), json!(invocation.selectors));
    fields.insert("target".into(), json!(invocation.target));
    fields.insert("dbt_version".into(), json!(invocation.dbt_version));
    fields.insert("started_at".into(), json!(invocation.started_at));
    fields.insert("finished_at".into(), json!(invocation.finished_at));
    fields.insert("counts".into(), Value::Object(invocation.counts.clone()));
    fields.insert("failures".into(), json!(failures));
    fields.insert(
        "failures_truncated".into(),
        json!(invocation.failures_truncated),
    );
    // Signed with a webhook secret, and read from dbt's own artifacts.
    fields.insert("verified".into(), Value::Bool(true));
    Ok(Event {
        id: format!("dbt-core:{id}"),
        source: Source::DbtCore,
        kind: "dbt.job.run.completed".into(),
        received_at,
        chain_depth: 0,
        fields,
        raw,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const RUN_RESULTS: &[u8] = include_bytes!("../../tests/fixtures/dbt/run_results.json");

    #[test]
    fn a_real_failed_build_becomes_an_errored_completed_run() {
        let results = RunResults::parse(RUN_RESULTS).unwrap();
        let failures = results.failures("dbt build");
        let invocation = Invocation::from_run_results(&results, failures, None).unwrap();
        let body = serde_json::to_vec(&invocation).unwrap();
        let event = parse(&body, "t".into()).unwrap();
        assert_eq!(event.source, Source::DbtCore);
        assert_eq!(event.kind, "dbt.job.run.completed");
        assert_eq!(
            event.id,
            format!("dbt-core:{}", results.metadata.invocation_id.unwrap())
        );
        assert_eq!(event.fields["run_status"], "Errored");
        assert_eq!(event.fields["job_name"], "dbt build");
        assert_eq!(event.fields["failures"].as_array().unwrap().len(), 3);
        assert_eq!(event.fields["failures"][0]["node"], "model.shop.revenue");
        assert_eq!(event.fields["counts"]["skipped"], 1);
    }

    #[test]
    fn a_body_of_another_shape_is_refused_with_its_path() {
        let error = parse(
            br#"{"invocation_id": "x", "failures": [{"node": 1}]}"#,
            "t".into(),
        )
        .unwrap_err();
        assert!(error.to_string().contains("failures[0]"), "{error}");
        assert!(parse(br#"{"invocation_id": ""}"#, "t".into()).is_err());
        assert!(parse(br#"{"invocation_id": "a", "extra": 1}"#, "t".into()).is_err());
    }
}
