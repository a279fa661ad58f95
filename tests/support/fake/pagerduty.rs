//! A fake PagerDuty Events API v2 (`POST /v2/enqueue`): known 32-character routing keys
//! in the body, the documented event shape (an invalid one is 400 with `errors`), and
//! incidents by `dedup_key` as PagerDuty keeps them: a trigger opens one or folds into
//! the open one, a resolve closes it, acknowledge and resolve of an unknown key are
//! dropped. Answers `202 {"status": "success", "message": "Event processed", "dedup_key"}`.

use super::*;

use serde_json::{json, Value};

/// The integration key tests configure as `[pagerduty.routing_keys] data`.
pub const PAGERDUTY_KEY: &str = "R0UT1NGKEY0123456789abcdefABCDEF";

#[derive(Debug, Clone, PartialEq)]
pub struct Incident {
    pub dedup_key: String,
    pub open: bool,
    /// Every trigger folded into it.
    pub triggers: usize,
    pub summary: String,
}

#[derive(Default)]
pub struct PagerDutyState {
    pub incidents: Vec<Incident>,
    /// Every event accepted, as sent.
    pub events: Vec<Value>,
    pub faults: Faults,
}

pub type FakePagerDuty = Fake<PagerDutyState>;

impl FakePagerDuty {
    pub async fn start() -> FakePagerDuty {
        Fake::spawn(PagerDutyState::default(), pagerduty_handle)
    }

    /// Adds `[pagerduty]` with this fake's URL and the routing key `data` (`T_PD_KEY`).
    pub fn configure(&self, setup: Setup) -> Setup {
        setup
            .section(&format!(
                "[pagerduty]\nevents_url = \"{}/v2/enqueue\"\n[pagerduty.routing_keys]\ndata = {{ env = \"T_PD_KEY\" }}\n",
                self.base()
            ))
            .env("T_PD_KEY", PAGERDUTY_KEY)
    }

    pub fn events(&self) -> Vec<Value> {
        self.state.lock().unwrap().events.clone()
    }

    pub fn incidents(&self) -> Vec<Incident> {
        self.state.lock().unwrap().incidents.clone()
    }
}

fn invalid(errors: &[&str]) -> Reply {
    Reply::json(
        400,
        json!({"status": "invalid event", "message": "Event object is invalid", "errors": errors}),
    )
}

fn pagerduty_handle(state: &mut PagerDutyState, seen: &Seen) -> Reply {
    if seen.path != "/v2/enqueue" {
        return Reply::json(404, json!({"status": "not found"}));
    }
    if seen.method != "POST" {
        return Reply::json(405, json!({"status": "method not allowed"}));
    }
    if let Some(reply) = state.faults.take(seen) {
        return reply;
    }
    if !seen
        .header("content-type")
        .is_some_and(|c| c.starts_with("application/json"))
    {
        return invalid(&["Content-Type must be application/json"]);
    }
    let event = seen.json();
    let Some(object) = event.as_object() else {
        return invalid(&["Event object is invalid"]);
    };
    if object.get("routing_key").and_then(Value::as_str) != Some(PAGERDUTY_KEY) {
        return invalid(&["'routing_key' is invalid"]);
    }
    let action = object
        .get("event_action")
        .and_then(Value::as_str)
        .unwrap_or("");
    let dedup_key = object.get("dedup_key").and_then(Value::as_str);
    if dedup_key.is_some_and(|k| k.is_empty() || k.chars().count() > 255) {
        return invalid(&["'dedup_key' must be 1 to 255 characters"]);
    }
    match action {
        "trigger" => {
            let payload = object.get("payload").cloned().unwrap_or(Value::Null);
            let summary = payload.get("summary").and_then(Value::as_str).unwrap_or("");
            let source = payload.get("source").and_then(Value::as_str).unwrap_or("");
            let severity = payload
                .get("severity")
                .and_then(Value::as_str)
                .unwrap_or("");
            let mut errors = Vec::new();
            if summary.is_empty() || summary.chars().count() > 1024 {
                errors.push("'payload.summary' is missing or longer than 1024 characters");
            }
            if source.is_empty() {
                errors.push("'payload.source' is missing");
            }
            if !["critical", "error", "warning", "info"].contains(&severity) {
                errors.push("'payload.severity' must be critical, error, warning or info");
            }
            if !errors.is_empty() {
                return invalid(&errors);
            }
            let key = dedup_key
                .map(String::from)
                .unwrap_or_else(|| format!("pd-{}", state.events.len()));
            match state
                .incidents
                .iter_mut()
                .find(|i| i.dedup_key == key && i.open)
            {
                Some(open) => open.triggers += 1,
                None => state.incidents.push(Incident {
                    dedup_key: key.clone(),
                    open: true,
                    triggers: 1,
                    summary: summary.to_string(),
                }),
            }
            state.events.push(event.clone());
            Reply::json(
                202,
                json!({"status": "success", "message": "Event processed", "dedup_key": key}),
            )
        }
        "acknowledge" | "resolve" => {
            let Some(key) = dedup_key else {
                return invalid(&["'dedup_key' is required for acknowledge and resolve"]);
            };
            if action == "resolve" {
                if let Some(open) = state
                    .incidents
                    .iter_mut()
                    .find(|i| i.dedup_key == key && i.open)
                {
                    open.open = false;
                }
            }
            state.events.push(event.clone());
            Reply::json(
                202,
                json!({"status": "success", "message": "Event processed", "dedup_key": key}),
            )
        }
        _ => invalid(&["'event_action' must be trigger, acknowledge or resolve"]),
    }
}
