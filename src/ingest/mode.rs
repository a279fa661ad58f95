//! Mode webhook bodies -> [`Event`].
//!
//! Mode does not sign its webhooks and sends only `{"event": .., "<thing>_url": ..}`. The
//! body is a hint: only the *path* of that URL is kept, it must be `/api/{workspace}/...`
//! for the configured workspace, and every later request is rebuilt on the configured
//! `mode.api_base`. The host written in the payload is never contacted.

use serde_json::{Map, Value};
use url::Url;

use super::BodyError;
use crate::event::{Event, Source};

/// Longest resource path accepted; real ones are well under 100 characters.
const MAX_PATH_LEN: usize = 512;

/// The payload keys that may carry the resource URL, most specific first. Mode's own
/// documents disagree on `report_run_url` vs `report_url` for `report_created`.
const URL_KEYS: [&str; 6] = [
    "report_run_url",
    "report_url",
    "definition_url",
    "connection_url",
    "member_url",
    "resource_url",
];

/// Parses a Mode webhook body for the configured `workspace`.
pub fn parse(body: &[u8], workspace: &str, received_at: String) -> Result<Event, BodyError> {
    let raw: Value = serde_json::from_slice(body).map_err(|e| BodyError::NotJson(e.to_string()))?;
    from_value(raw, workspace, received_at)
}

/// Mode's test delivery: when a webhook is created, Mode posts to it to see that it
/// answers (Mode's help article shows samples, not a schema: the payload is unconfirmed).
/// A JSON object that names no resource URL is taken as one: answered 200 so that
/// creating the webhook succeeds, and journaled nothing, since there is nothing to fetch.
/// Returns why it was ignored.
pub fn test_delivery(raw: &Value) -> Option<String> {
    let top = raw.as_object()?;
    resource_url(top).is_none().then(|| {
        "a Mode webhook test delivery (it names no report or run): nothing to journal".to_string()
    })
}

/// Builds the event from an already parsed body.
pub fn from_value(raw: Value, workspace: &str, received_at: String) -> Result<Event, BodyError> {
    let shape = |message: String| BodyError::Shape(format!("not a Mode webhook: {message}"));
    let top = raw
        .as_object()
        .ok_or_else(|| shape("the body is not a JSON object".into()))?;
    let name = top
        .get("event")
        .and_then(Value::as_str)
        .filter(|e| {
            !e.is_empty()
                && e.len() <= 64
                && e.chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
        })
        .ok_or_else(|| {
            shape("event is missing or not a name such as report_run_completed".into())
        })?;
    let url_text = resource_url(top).ok_or_else(|| shape("no *_url field".into()))?;
    let path =
        resource_path(url_text).ok_or_else(|| shape("the *_url is not a URL or path".into()))?;
    let segments: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    if segments.len() < 2 || segments[0] != "api" || segments[1] != workspace {
        return Err(BodyError::Shape(format!(
            "the resource path must start with /api/{workspace}/"
        )));
    }
    if path.len() > MAX_PATH_LEN
        || segments[2..]
            .iter()
            .any(|s| s.is_empty() || *s == "." || *s == "..")
        || !path
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "/_-.".contains(c))
    {
        return Err(shape("the resource path has unexpected characters".into()));
    }

    let mut fields = Map::new();
    fields.insert("workspace".into(), Value::String(workspace.to_string()));
    fields.insert("resource_path".into(), Value::String(path.clone()));
    let token_after = |marker: &str| {
        segments
            .iter()
            .position(|s| *s == marker)
            .and_then(|i| segments.get(i + 1))
            .map(|s| Value::String(s.to_string()))
            .unwrap_or(Value::Null)
    };
    fields.insert("report_token".into(), token_after("reports"));
    fields.insert("run_token".into(), token_after("runs"));
    fields.insert("verified".into(), Value::Bool(false));

    Ok(Event {
        id: format!("mode:{name}:{path}"),
        source: Source::Mode,
        kind: format!("mode.{name}"),
        received_at,
        chain_depth: 0,
        fields,
        raw,
    })
}

/// The payload's resource URL: a known key first, else any `*_url` field.
fn resource_url(top: &Map<String, Value>) -> Option<&str> {
    URL_KEYS
        .iter()
        .find_map(|key| top.get(*key).and_then(Value::as_str))
        .or_else(|| {
            top.iter()
                .filter(|(key, _)| key.ends_with("_url"))
                .find_map(|(_, value)| value.as_str())
        })
}

/// The workspace a body's resource URL names (`/api/{workspace}/...`), for dry runs
/// without a configured workspace. Intake never uses it: there the config decides.
pub fn workspace_named_in(value: &Value) -> Option<String> {
    let path = resource_path(resource_url(value.as_object()?)?)?;
    let mut segments = path.trim_start_matches('/').split('/');
    (segments.next() == Some("api"))
        .then(|| segments.next().map(String::from))
        .flatten()
}

/// Whether a parsed body looks like a Mode webhook (for `freshet test`'s detection).
pub fn looks_like(value: &Value) -> bool {
    value.get("event").and_then(Value::as_str).is_some()
        && value
            .as_object()
            .is_some_and(|o| o.keys().any(|k| k.ends_with("_url")))
}

/// The path of an absolute URL or of a bare `/api/...` path, without query or fragment.
/// Percent-escapes are refused outright: Mode's tokens never need them, and decoding
/// `%2e%2e` would let a payload walk the path.
fn resource_path(text: &str) -> Option<String> {
    let before_query = text.split(['?', '#']).next().unwrap_or("");
    if before_query.contains('%') || before_query.contains('\\') {
        return None;
    }
    if text.starts_with('/') {
        let base = Url::parse("http://localhost").ok()?;
        return base.join(text).ok().map(|u| u.path().to_string());
    }
    let url = Url::parse(text).ok()?;
    if !matches!(url.scheme(), "http" | "https") {
        return None;
    }
    Some(url.path().trim_end_matches('/').to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn keeps_only_the_path_of_the_run_url() {
        let body = br#"{"event":"report_run_completed","report_run_url":"https://evil.example/api/acme/reports/2b3c4d5e6f70/runs/4d5e6f708192"}"#;
        let event = parse(body, "acme", "t".into()).unwrap();
        assert_eq!(
            event.id,
            "mode:report_run_completed:/api/acme/reports/2b3c4d5e6f70/runs/4d5e6f708192"
        );
        assert_eq!(event.kind, "mode.report_run_completed");
        assert_eq!(event.fields["report_token"], json!("2b3c4d5e6f70"));
        assert_eq!(event.fields["run_token"], json!("4d5e6f708192"));
        assert_eq!(
            event.fields["resource_path"],
            json!("/api/acme/reports/2b3c4d5e6f70/runs/4d5e6f708192")
        );
    }

    #[test]
    fn report_created_accepts_either_key() {
        for key in ["report_url", "report_run_url"] {
            let body = format!(
                r#"{{"event":"report_created","{key}":"https://modeanalytics.com/api/acme/reports/abc"}}"#
            );
            let event = parse(body.as_bytes(), "acme", "t".into()).unwrap();
            assert_eq!(event.fields["report_token"], json!("abc"));
            assert_eq!(event.fields["run_token"], Value::Null);
        }
    }

    #[test]
    fn refuses_other_workspaces_and_odd_paths() {
        let other = br#"{"event":"report_run_completed","report_run_url":"https://modeanalytics.com/api/other/reports/a/runs/b"}"#;
        assert!(matches!(
            parse(other, "acme", "t".into()),
            Err(BodyError::Shape(_))
        ));
        let dots = br#"{"event":"report_run_completed","report_run_url":"https://modeanalytics.com/api/acme/reports/%2e%2e/runs/b"}"#;
        assert!(matches!(
            parse(dots, "acme", "t".into()),
            Err(BodyError::Shape(_))
        ));
        let scheme =
            br#"{"event":"report_run_completed","report_run_url":"file:///api/acme/reports/a"}"#;
        assert!(matches!(
            parse(scheme, "acme", "t".into()),
            Err(BodyError::Shape(_))
        ));
        assert!(matches!(
            parse(br#"{"event":"x"}"#, "acme", "t".into()),
            Err(BodyError::Shape(_))
        ));
        assert!(test_delivery(&serde_json::json!({"event": "x"})).is_some());
        assert!(test_delivery(&serde_json::json!({})).is_some());
        assert!(test_delivery(&serde_json::json!([])).is_none());
        assert!(test_delivery(
            &serde_json::json!({"event": "report_created", "report_url": "/api/acme/reports/a"})
        )
        .is_none());
        assert!(matches!(
            parse(b"{", "acme", "t".into()),
            Err(BodyError::NotJson(_))
        ));
    }

    #[test]
    fn query_strings_are_not_part_of_the_id() {
        let body = br#"{"event":"member_joined_organization","member_url":"https://app.mode.com/api/acme/memberships/m1?embed[user]=1"}"#;
        let event = parse(body, "acme", "t".into()).unwrap();
        assert_eq!(
            event.id,
            "mode:member_joined_organization:/api/acme/memberships/m1"
        );
    }
}
