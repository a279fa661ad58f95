//! Mode's half of the enrich stage: a Mode webhook carries only a link, so the run (and
//! for a finished run, its result rows) is fetched from the configured `mode.api_base`.

use serde_json::{json, Map, Value};

use crate::actions::client::ActionError;
use crate::actions::mode::{Mode, RowsError};
use crate::config::ModeConfig;
use crate::event::Event;

/// The run states whose results are fetched: Mode documents both for a finished run.
const FINISHED_WITH_RESULTS: [&str; 2] = ["succeeded", "completed"];

/// Fetches the run (and for a finished run, its results) into event fields.
pub(super) async fn fetch(
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
