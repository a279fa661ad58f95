//! OpenLineage run events (`POST /api/v1/lineage`, docs/behaviour.md section 15): the one
//! open standard Airflow, Dagster, Spark and dbt Core (`dbt-ol`) already speak, so one
//! endpoint makes each of them a source for rules. A `RunEvent` becomes an
//! `openlineage.<eventType>` event with the run's and job's names, the parent job (a dbt
//! model's invocation, an Airflow task's DAG run) and the failure's message.
//!
//! The spec: OpenLineage/OpenLineage `spec/OpenLineage.json` (RunEvent, the `parent` and
//! `errorMessage` run facets).

use std::io::Read;

use serde_json::{json, Map, Value};

use super::BodyError;
use crate::event::{Event, Source};

/// The longest `error_message` kept: a stack trace can be long, and the rules need the
/// message.
pub const MAX_ERROR_MESSAGE_BYTES: usize = 4096;

/// A RunEvent's body as an event.
pub fn parse(body: &[u8], received_at: String) -> Result<Event, BodyError> {
    let raw: Value = serde_json::from_slice(body).map_err(|e| BodyError::NotJson(e.to_string()))?;
    from_value(raw, received_at)
}

fn shape(what: &str) -> BodyError {
    BodyError::Shape(format!("not an OpenLineage RunEvent: {what}"))
}

pub fn from_value(raw: Value, received_at: String) -> Result<Event, BodyError> {
    let text = |value: Option<&Value>, what: &str| -> Result<String, BodyError> {
        value
            .and_then(Value::as_str)
            .filter(|text| !text.is_empty())
            .map(String::from)
            .ok_or_else(|| shape(&format!("{what} is missing or not text")))
    };
    let event_type = text(raw.get("eventType"), "eventType")?;
    if !event_type.chars().all(|c| c.is_ascii_alphabetic()) {
        return Err(shape("eventType is not a name such as START or FAIL"));
    }
    let event_time = text(raw.get("eventTime"), "eventTime")?;
    let run = raw.get("run").ok_or_else(|| shape("run is missing"))?;
    let run_id = text(run.get("runId"), "run.runId")?;
    let job = raw.get("job").ok_or_else(|| shape("job is missing"))?;
    let job_namespace = text(job.get("namespace"), "job.namespace")?;
    let job_name = text(job.get("name"), "job.name")?;
    let facets = run.get("facets");
    let parent = facets.and_then(|f| f.get("parent"));
    let error_message = facets
        .and_then(|f| f.pointer("/errorMessage/message"))
        .and_then(Value::as_str)
        .map(|message| truncated(message, MAX_ERROR_MESSAGE_BYTES));

    let mut fields = Map::new();
    fields.insert("run_id".into(), json!(run_id));
    fields.insert("job_namespace".into(), json!(job_namespace));
    fields.insert("job_name".into(), json!(job_name));
    fields.insert("event_time".into(), json!(event_time));
    fields.insert("producer".into(), json!(raw.get("producer")));
    fields.insert(
        "parent_job_name".into(),
        json!(parent.and_then(|p| p.pointer("/job/name"))),
    );
    fields.insert(
        "parent_run_id".into(),
        json!(parent.and_then(|p| p.pointer("/run/runId"))),
    );
    fields.insert("error_message".into(), json!(error_message));
    fields.insert("inputs".into(), json!(datasets(raw.get("inputs"))));
    fields.insert("outputs".into(), json!(datasets(raw.get("outputs"))));
    Ok(Event {
        // A client that sends the same RunEvent again (a retry) makes a duplicate.
        id: format!("openlineage:{run_id}:{event_type}:{event_time}"),
        source: Source::OpenLineage,
        kind: format!("openlineage.{}", event_type.to_lowercase()),
        received_at,
        chain_depth: 0,
        fields,
        raw,
    })
}

/// `namespace/name` of each dataset (inputs or outputs).
fn datasets(list: Option<&Value>) -> Vec<String> {
    list.and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(|dataset| {
            let namespace = dataset.get("namespace")?.as_str()?;
            let name = dataset.get("name")?.as_str()?;
            Some(format!("{namespace}/{name}"))
        })
        .collect()
}

/// At most `limit` bytes of `text`, cut at a character boundary.
fn truncated(text: &str, limit: usize) -> String {
    if text.len() <= limit {
        return text.to_string();
    }
    let mut end = limit;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    text[..end].to_string()
}

/// A gzip body inflated, refused once it passes `limit` bytes (a small body can inflate
/// to gigabytes).
pub fn gunzip(body: &[u8], limit: usize) -> Result<Vec<u8>, GunzipError> {
    let mut inflated = Vec::new();
    let mut decoder = flate2::read::GzDecoder::new(body).take(limit as u64 + 1);
    decoder
        .read_to_end(&mut inflated)
        .map_err(|_| GunzipError::Corrupt)?;
    if inflated.len() > limit {
        return Err(GunzipError::TooLarge);
    }
    Ok(inflated)
}

#[derive(Debug, PartialEq, Eq)]
pub enum GunzipError {
    Corrupt,
    TooLarge,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run_event(event_type: &str) -> Value {
        json!({
            "eventType": event_type,
            "eventTime": "2026-12-06T05:00:00.000Z",
            "producer": "https://github.com/OpenLineage/OpenLineage/tree/1.0.0/integration/dbt",
            "schemaURL": "https://openlineage.io/spec/2-0-2/OpenLineage.json#/$defs/RunEvent",
            "run": {"runId": "0193a6b0-0000-7000-8000-000000000001", "facets": {
                "parent": {"run": {"runId": "0193a6b0-0000-7000-8000-00000000000a"},
                           "job": {"namespace": "dbt", "name": "dbt-run-shop"}},
                "errorMessage": {"message": "Binder Error: column \"discount\" not found",
                                 "programmingLanguage": "sql"}}},
            "job": {"namespace": "dbt", "name": "shop.main.revenue"},
            "inputs": [{"namespace": "duckdb://shop.duckdb", "name": "main.orders"}],
            "outputs": [{"namespace": "duckdb://shop.duckdb", "name": "main.revenue"}]
        })
    }

    #[test]
    fn a_run_event_becomes_an_openlineage_event() {
        let event = from_value(run_event("FAIL"), "2026-12-06T05:00:01.000Z".into()).unwrap();
        assert_eq!(event.kind, "openlineage.fail");
        assert_eq!(event.source, Source::OpenLineage);
        assert_eq!(
            event.id,
            "openlineage:0193a6b0-0000-7000-8000-000000000001:FAIL:2026-12-06T05:00:00.000Z"
        );
        assert_eq!(event.fields["job_name"], "shop.main.revenue");
        assert_eq!(event.fields["job_namespace"], "dbt");
        assert_eq!(event.fields["parent_job_name"], "dbt-run-shop");
        assert_eq!(
            event.fields["parent_run_id"],
            "0193a6b0-0000-7000-8000-00000000000a"
        );
        assert!(event.fields["error_message"]
            .as_str()
            .unwrap()
            .starts_with("Binder Error"));
        assert_eq!(
            event.fields["inputs"],
            json!(["duckdb://shop.duckdb/main.orders"])
        );
        assert_eq!(
            event.fields["outputs"],
            json!(["duckdb://shop.duckdb/main.revenue"])
        );
    }

    #[test]
    fn what_is_not_a_run_event_is_refused() {
        let mut no_run = run_event("START");
        no_run.as_object_mut().unwrap().remove("run");
        assert!(matches!(
            from_value(no_run, String::new()),
            Err(BodyError::Shape(_))
        ));
        // A dataset event (no eventType, no run) is not a RunEvent either.
        let dataset = json!({"eventTime": "t", "dataset": {"namespace": "n", "name": "d"}});
        assert!(from_value(dataset, String::new()).is_err());
        assert!(matches!(
            parse(b"{", String::new()),
            Err(BodyError::NotJson(_))
        ));
    }

    #[test]
    fn long_error_messages_are_cut_at_a_character_boundary() {
        let mut event = run_event("FAIL");
        event["run"]["facets"]["errorMessage"]["message"] = json!("é".repeat(3000));
        let event = from_value(event, String::new()).unwrap();
        let message = event.fields["error_message"].as_str().unwrap();
        assert!(message.len() <= MAX_ERROR_MESSAGE_BYTES && message.len() >= 4094);
    }

    #[test]
    fn gzip_is_inflated_within_the_limit() {
        use std::io::Write;
        let body = serde_json::to_vec(&run_event("START")).unwrap();
        let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        encoder.write_all(&body).unwrap();
        let gzipped = encoder.finish().unwrap();
        assert_eq!(gunzip(&gzipped, 1 << 20).unwrap(), body);
        assert_eq!(gunzip(&gzipped, 100), Err(GunzipError::TooLarge));
        assert_eq!(gunzip(b"not gzip", 1 << 20), Err(GunzipError::Corrupt));
    }
}
