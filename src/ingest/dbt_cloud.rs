//! dbt Cloud webhook bodies -> [`Event`].
//!
//! Lenient where dbt varies (ids as numeric strings or numbers, `webhooksID` or
//! `webhookId`, extra fields, empty strings), strict where the event's identity depends on
//! it (`eventId`, `eventType`, `data` must be there).

use serde_json::{json, Map, Value};

use super::BodyError;
use crate::event::{Event, Source};

/// Longest `eventId` accepted; dbt's are `wev_` + 27 characters.
const MAX_EVENT_ID_LEN: usize = 128;

/// Parses a dbt Cloud webhook body received at `received_at`.
pub fn parse(body: &[u8], received_at: String) -> Result<Event, BodyError> {
    let raw: Value = serde_json::from_slice(body).map_err(|e| BodyError::NotJson(e.to_string()))?;
    from_value(raw, received_at)
}

/// Builds the event from an already parsed body (also used by `freshet test`).
pub fn from_value(raw: Value, received_at: String) -> Result<Event, BodyError> {
    let shape = |message: &str| BodyError::Shape(format!("not a dbt Cloud webhook: {message}"));
    let top = raw
        .as_object()
        .ok_or_else(|| shape("the body is not a JSON object"))?;
    let event_id = top
        .get("eventId")
        .and_then(Value::as_str)
        .ok_or_else(|| shape("eventId is missing"))?;
    if event_id.is_empty()
        || event_id.len() > MAX_EVENT_ID_LEN
        || !event_id.chars().all(|c| c.is_ascii_graphic())
    {
        return Err(shape("eventId is empty, too long or not printable ASCII"));
    }
    let event_type = top
        .get("eventType")
        .and_then(Value::as_str)
        .filter(|t| {
            !t.is_empty()
                && t.len() <= 64
                && t.chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '.' || c == '_')
        })
        .ok_or_else(|| shape("eventType is missing or not a name such as job.run.completed"))?;
    let data = top
        .get("data")
        .and_then(Value::as_object)
        .ok_or_else(|| shape("data is missing or not an object"))?;

    let mut fields = Map::new();
    fields.insert("account_id".into(), integer(top.get("accountId")));
    fields.insert("webhook_name".into(), text(top.get("webhookName")));
    fields.insert(
        "webhook_id".into(),
        text(top.get("webhooksID").or_else(|| top.get("webhookId"))),
    );
    fields.insert("timestamp".into(), text(top.get("timestamp")));
    for (ours, theirs) in [
        ("job_id", "jobId"),
        ("run_id", "runId"),
        ("environment_id", "environmentId"),
        ("project_id", "projectId"),
        ("run_status_code", "runStatusCode"),
    ] {
        fields.insert(ours.into(), integer(data.get(theirs)));
    }
    for (ours, theirs) in [
        ("job_name", "jobName"),
        ("environment_name", "environmentName"),
        ("project_name", "projectName"),
        ("dbt_version", "dbtVersion"),
        ("run_status", "runStatus"),
        ("run_status_message", "runStatusMessage"),
        ("run_reason", "runReason"),
        ("started_at", "runStartedAt"),
        ("finished_at", "runFinishedAt"),
        ("errored_at", "runErroredAt"),
    ] {
        fields.insert(ours.into(), text(data.get(theirs)));
    }

    Ok(Event {
        id: format!("dbt:{event_id}"),
        source: Source::Dbt,
        kind: format!("dbt.{event_type}"),
        received_at,
        chain_depth: 0,
        fields,
        raw,
    })
}

/// Whether a parsed body looks like a dbt Cloud webhook (for `freshet test`'s detection).
pub fn looks_like(value: &Value) -> bool {
    value.get("eventId").is_some() && value.get("eventType").is_some()
}

/// An integer whatever JSON type dbt used: numbers stay, numeric strings are parsed,
/// anything else becomes null.
fn integer(value: Option<&Value>) -> Value {
    match value {
        Some(Value::Number(n)) if n.is_i64() => Value::Number(n.clone()),
        Some(Value::Number(n)) => n
            .as_f64()
            .filter(|f| f.fract() == 0.0 && f.abs() < 9.0e15)
            .map(|f| json!(f as i64))
            .unwrap_or(Value::Null),
        Some(Value::String(s)) => s
            .trim()
            .parse::<i64>()
            .map(|i| json!(i))
            .unwrap_or(Value::Null),
        _ => Value::Null,
    }
}

/// A string field; numbers are turned into their text, anything else is null.
fn text(value: Option<&Value>) -> Value {
    match value {
        Some(Value::String(s)) => Value::String(s.clone()),
        Some(Value::Number(n)) => Value::String(n.to_string()),
        _ => Value::Null,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const COMPLETED: &str = r#"{
      "accountId": 1, "webhooksID": "wsu_12345abcde", "eventId": "wev_2L6ZDoilyiWzKkSA59Gmc2d7FDD",
      "timestamp": "2023-01-31T19:29:35.789265936Z", "eventType": "job.run.completed", "webhookName": "test",
      "data": {"jobId": "123", "jobName": "Daily Job (dbt build)", "runId": "12345", "environmentId": "1234",
        "environmentName": "Production", "dbtVersion": "1.0.0", "projectName": "Snowflake Github Demo",
        "projectId": "167194", "runStatus": "Success", "runStatusCode": 10, "runStatusMessage": "None",
        "runReason": "Kicked off from UI by test@test.com", "runStartedAt": "2023-01-31T19:28:07Z",
        "runFinishedAt": "2023-01-31T19:29:32Z", "somethingNew": true}
    }"#;

    #[test]
    fn maps_the_documented_sample() {
        let event = parse(COMPLETED.as_bytes(), "t".into()).unwrap();
        assert_eq!(event.id, "dbt:wev_2L6ZDoilyiWzKkSA59Gmc2d7FDD");
        assert_eq!(event.kind, "dbt.job.run.completed");
        assert_eq!(event.fields["job_id"], json!(123));
        assert_eq!(event.fields["run_id"], json!(12345));
        assert_eq!(event.fields["project_id"], json!(167194));
        assert_eq!(event.fields["run_status_code"], json!(10));
        assert_eq!(event.fields["run_status"], json!("Success"));
        assert_eq!(event.fields["webhook_id"], json!("wsu_12345abcde"));
        assert_eq!(event.fields["errored_at"], Value::Null);
        assert_eq!(event.raw["data"]["somethingNew"], json!(true));
    }

    #[test]
    fn accepts_the_other_spelling_and_numeric_ids() {
        let body = r#"{"eventId":"wev_x","eventType":"job.run.started","webhookId":"wsu_9","data":{"jobId":302451,"runId":"7"}}"#;
        let event = parse(body.as_bytes(), "t".into()).unwrap();
        assert_eq!(event.fields["webhook_id"], json!("wsu_9"));
        assert_eq!(event.fields["job_id"], json!(302451));
    }

    #[test]
    fn rejects_what_is_not_a_dbt_webhook() {
        assert!(matches!(
            parse(b"not json", "t".into()),
            Err(BodyError::NotJson(_))
        ));
        assert!(matches!(
            parse(b"[1,2]", "t".into()),
            Err(BodyError::Shape(_))
        ));
        assert!(matches!(
            parse(br#"{"eventType":"job.run.started","data":{}}"#, "t".into()),
            Err(BodyError::Shape(_))
        ));
        assert!(matches!(
            parse(br#"{"eventId":"","eventType":"x","data":{}}"#, "t".into()),
            Err(BodyError::Shape(_))
        ));
        assert!(matches!(
            parse(
                br#"{"eventId":"a b","eventType":"x","data":{}}"#,
                "t".into()
            ),
            Err(BodyError::Shape(_))
        ));
        assert!(matches!(
            parse(br#"{"eventId":"a","eventType":"x"}"#, "t".into()),
            Err(BodyError::Shape(_))
        ));
    }
}
