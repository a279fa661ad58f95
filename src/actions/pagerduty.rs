//! The `pagerduty_event` action: PagerDuty's Events API v2
//! (<https://developer.pagerduty.com/docs/events-api-v2/trigger-events/>), from a rule, or
//! from an alert with `pagerduty` (`alerts.rs` writes those: trigger, re-trigger,
//! resolve, all with `dedup_key = "freshet/<name>"`). The routing key is a secret of
//! `[pagerduty.routing_keys]`, named by rules, sent in the body and never logged.
//!
//! Events with the same `dedup_key` go to the same open incident, so a trigger retried
//! after a lost answer opens no second one: `429` and `5xx` retry with the backoff, `400`
//! (an invalid event) is final, as PagerDuty's own client does.

use rhai::{Dynamic, Engine, Map as RhaiMap, NativeCallContext};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use super::client::{excerpt, send, ActionError};
use super::{ActionRequest, Services};
use crate::rules::api::{bad_argument, record, to_plain_json, Fallible};

const SERVICE: &str = "pagerduty";
/// PagerDuty's event actions.
const ACTIONS: [&str; 3] = ["trigger", "acknowledge", "resolve"];
/// PagerDuty's limits: `dedup_key`, `payload.summary`.
const MAX_DEDUP_KEY: usize = 255;
const MAX_SUMMARY: usize = 1_024;

/// `pagerduty_event(#{ action, routing_key, dedup_key, summary, severity, details })`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PagerDutyEvent {
    /// `trigger`, `acknowledge` or `resolve` (the rule's `action`; stored under
    /// PagerDuty's own name, as `action` tags the job's kind).
    #[serde(rename = "event_action")]
    pub action: String,
    /// The name of a `[pagerduty.routing_keys]` entry (not the key itself).
    pub routing_key: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dedup_key: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub summary: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub severity: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub details: Option<Value>,
}

impl PagerDutyEvent {
    /// Sends the event; PagerDuty answers `202 {"status": "success", "dedup_key"}`.
    pub async fn call(&self, services: &Services<'_>) -> Result<Value, ActionError> {
        let pagerduty = services
            .config
            .pagerduty
            .as_ref()
            .ok_or_else(|| ActionError::not_configured(SERVICE))?;
        let key = pagerduty
            .routing_keys
            .get(&self.routing_key)
            .ok_or_else(|| {
                ActionError::final_error(format!(
                    "pagerduty: no routing key named {:?} in [pagerduty.routing_keys]",
                    self.routing_key
                ))
            })?;
        let mut body = json!({
            "routing_key": key.expose(),
            "event_action": self.action,
        });
        if let Some(dedup_key) = &self.dedup_key {
            body["dedup_key"] = json!(dedup_key);
        }
        if self.action == "trigger" {
            let mut payload = json!({
                "summary": self.summary.as_deref().unwrap_or(""),
                "source": services.config.server.source_name(),
                "severity": self.severity.as_deref().unwrap_or("error"),
            });
            if let Some(details) = &self.details {
                payload["custom_details"] = details.clone();
            }
            body["payload"] = payload;
        }
        let request = services
            .http
            .post(pagerduty.events_url.as_str())
            .header("Content-Type", "application/json")
            .json(&body);
        let answer = send(SERVICE, request).await?;
        if answer.status.is_success() {
            let answered: Value = serde_json::from_str(&answer.body).unwrap_or(Value::Null);
            return Ok(json!({
                "status": answered.get("status"),
                "dedup_key": answered.get("dedup_key"),
            }));
        }
        // The error text may quote the event, not the key; keep it short all the same.
        let detail = excerpt(&answer.body);
        Err(super::client::status_error(
            SERVICE,
            answer.status,
            answer.retry_after,
            &detail.replace(key.expose(), "<routing key>"),
        ))
    }
}

/// The rule function that builds a [`PagerDutyEvent`].
pub(super) fn register(engine: &mut Engine) {
    engine.register_fn(
        "pagerduty_event",
        |ctx: NativeCallContext, event: RhaiMap| -> Fallible {
            let written = json!([to_plain_json(&Dynamic::from_map(event.clone()))]);
            let event = checked(&ctx, event)?;
            record(&ctx, ActionRequest::PagerDutyEvent(event), written)
        },
    );
}

/// The keys of `pagerduty_event`'s map (checked when a rule runs, and by `freshet check`).
pub const KEYS: [&str; 6] = [
    "action",
    "routing_key",
    "dedup_key",
    "summary",
    "severity",
    "details",
];

fn checked(
    ctx: &NativeCallContext,
    event: RhaiMap,
) -> Result<PagerDutyEvent, Box<rhai::EvalAltResult>> {
    if let Some(key) = event.keys().find(|k| !KEYS.contains(&k.as_str())) {
        return Err(bad_argument(
            ctx,
            format!("pagerduty_event: unknown key `{key}` ({})", KEYS.join(", ")),
        ));
    }
    let mut value = rhai::serde::from_dynamic::<Value>(&Dynamic::from_map(event))
        .map_err(|e| bad_argument(ctx, format!("pagerduty_event: {e}")))?;
    if let Some(map) = value.as_object_mut() {
        if let Some(action) = map.remove("action") {
            map.insert("event_action".into(), action);
        }
    }
    let event: PagerDutyEvent = serde_json::from_value(value)
        .map_err(|e| bad_argument(ctx, format!("pagerduty_event: {e}")))?;
    let fail = |message: String| Err(bad_argument(ctx, format!("pagerduty_event: {message}")));
    if !ACTIONS.contains(&event.action.as_str()) {
        return fail(format!("action must be one of {}", ACTIONS.join(", ")));
    }
    if event.routing_key.trim().is_empty() {
        return fail("routing_key names a [pagerduty.routing_keys] entry".into());
    }
    if event
        .dedup_key
        .as_ref()
        .is_some_and(|k| k.is_empty() || k.chars().count() > MAX_DEDUP_KEY)
    {
        return fail(format!("dedup_key must be 1 to {MAX_DEDUP_KEY} characters"));
    }
    if event.action != "trigger" && event.dedup_key.is_none() {
        return fail(format!(
            "{} needs the dedup_key of the trigger",
            event.action
        ));
    }
    if event.action == "trigger" {
        match &event.summary {
            Some(summary) if !summary.trim().is_empty() => {
                if summary.chars().count() > MAX_SUMMARY {
                    return fail(format!("summary is over {MAX_SUMMARY} characters"));
                }
            }
            _ => return fail("a trigger needs a summary".into()),
        }
    }
    if let Some(severity) = &event.severity {
        if !super::alert::SEVERITIES.contains(&severity.as_str()) {
            return fail(format!(
                "severity must be one of {}",
                super::alert::SEVERITIES.join(", ")
            ));
        }
    }
    if event.details.as_ref().is_some_and(|d| !d.is_object()) {
        return fail("details must be a map".into());
    }
    Ok(event)
}
