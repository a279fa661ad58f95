//! `alert(name, firing, text | options)`: a threshold alert. Unlike the other actions it
//! makes no call of its own: the evaluate stage decides the alert's transition
//! (`alerts.rs`, which turns this request into the journal's `AlertCall`) in the
//! evaluation's transaction, and the Slack posts it yields are `slack_post` jobs.

use rhai::{Dynamic, Engine, ImmutableString, Map, NativeCallContext};
use serde::{Deserialize, Serialize};
use serde_json::json;

use super::client::ActionError;
use super::ActionRequest;
use crate::rules::api::{bad_argument, get_string, non_empty, record, to_plain_json, Fallible};

/// What one `alert(..)` call asked for.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Alert {
    pub name: String,
    pub firing: bool,
    pub text: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub channel: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub renotify_minutes: Option<u64>,
    pub resolve: bool,
}

impl Alert {
    /// Never run as a job: an alert is decided at evaluation.
    pub fn call(&self) -> Result<serde_json::Value, ActionError> {
        Err(ActionError::final_error(
            "alert calls are decided at evaluation, not run",
        ))
    }
}

/// The rule functions that build an [`Alert`].
pub(super) fn register(engine: &mut Engine) {
    engine.register_fn(
        "alert",
        |ctx: NativeCallContext, name: &str, firing: bool, text: &str| -> Fallible {
            let written = json!([name, firing, text]);
            let mut options = Map::new();
            options.insert("text".into(), Dynamic::from(ImmutableString::from(text)));
            alert_call(&ctx, name, firing, options, written)
        },
    );
    engine.register_fn(
        "alert",
        |ctx: NativeCallContext, name: &str, firing: bool, options: Map| -> Fallible {
            let written = json!([
                name,
                firing,
                to_plain_json(&Dynamic::from_map(options.clone()))
            ]);
            alert_call(&ctx, name, firing, options, written)
        },
    );
}

fn alert_call(
    ctx: &NativeCallContext,
    name: &str,
    firing: bool,
    options: Map,
    written: serde_json::Value,
) -> Fallible {
    let name = non_empty(ctx, "alert", "the name", name)?;
    let text = get_string(&options, "text")
        .ok_or_else(|| bad_argument(ctx, "alert: options need a `text`".into()))?;
    let channel = get_string(&options, "channel");
    let renotify_minutes = match options.get("renotify_minutes") {
        None => None,
        Some(value) => match value.as_int() {
            Ok(minutes) if minutes > 0 => Some(minutes as u64),
            _ => {
                return Err(bad_argument(
                    ctx,
                    "alert: renotify_minutes must be a positive integer".into(),
                ))
            }
        },
    };
    let resolve = match options.get("resolve") {
        None => true,
        Some(value) => value
            .as_bool()
            .map_err(|_| bad_argument(ctx, "alert: resolve must be true or false".into()))?,
    };
    for key in options.keys() {
        if !["text", "channel", "renotify_minutes", "resolve"].contains(&key.as_str()) {
            return Err(bad_argument(ctx, format!("alert: unknown option `{key}`")));
        }
    }
    let alert = Alert {
        name,
        firing,
        text,
        channel,
        renotify_minutes,
        resolve,
    };
    record(ctx, ActionRequest::Alert(alert), written)
}
