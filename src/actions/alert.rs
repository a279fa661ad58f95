//! `alert(name, firing, text | options)`: a threshold alert. Unlike the other actions it
//! makes no call of its own: the evaluate stage decides the alert's transition
//! (`alerts.rs`, which turns this request into the journal's `AlertCall`) in the
//! evaluation's transaction, and the Slack posts and PagerDuty events it yields are
//! `slack_post` and `pagerduty_event` jobs (docs/behaviour.md sections 6 and 14).

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
    /// How the alert is shown and whom it reaches (docs/behaviour.md section 14).
    #[serde(default, skip_serializing_if = "Presentation::is_empty")]
    pub presentation: Presentation,
}

/// An alert's layout and audience: `fields`, `url`, `mention`, `blocks`, `pagerduty`,
/// `severity`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Presentation {
    /// Label -> value, shown as Block Kit fields (at most 10).
    #[serde(default, skip_serializing_if = "serde_json::Map::is_empty")]
    pub fields: serde_json::Map<String, serde_json::Value>,
    /// A link button.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
    /// Slack user or group ids, `@here`, `@channel`, or e-mail addresses (`[slack.users]`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub mention: Vec<String>,
    /// Blocks that replace the layout.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub blocks: Option<serde_json::Value>,
    /// The `[pagerduty.routing_keys]` name to page through.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pagerduty: Option<String>,
    /// PagerDuty's severity: critical, error (the default), warning, info.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub severity: Option<String>,
}

impl Presentation {
    pub fn is_empty(&self) -> bool {
        *self == Presentation::default()
    }
}

/// PagerDuty's severities (Events API v2).
pub const SEVERITIES: [&str; 4] = ["critical", "error", "warning", "info"];

/// Checks `mention`'s entries: ids, `@here`/`@channel`, or e-mail addresses.
pub fn valid_mention(mention: &str) -> bool {
    let id = |prefix: &[char]| {
        mention.len() >= 3
            && mention.starts_with(prefix)
            && mention.chars().all(|c| c.is_ascii_alphanumeric())
    };
    id(&['U', 'W', 'S'])
        || mention == "@here"
        || mention == "@channel"
        || (mention.contains('@')
            && !mention.starts_with('@')
            && !mention.contains(char::is_whitespace))
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
        if !OPTIONS.contains(&key.as_str()) {
            return Err(bad_argument(
                ctx,
                format!("alert: unknown option `{key}` ({})", OPTIONS.join(", ")),
            ));
        }
    }
    let presentation = presentation(ctx, &options)?;
    let alert = Alert {
        name,
        firing,
        text,
        channel,
        renotify_minutes,
        resolve,
        presentation,
    };
    record(ctx, ActionRequest::Alert(alert), written)
}

/// The options `alert(..)` takes.
/// The keys of `alert`'s options map (checked when a rule runs, and by `freshet check`).
pub const OPTIONS: [&str; 10] = [
    "text",
    "channel",
    "renotify_minutes",
    "resolve",
    "fields",
    "url",
    "mention",
    "blocks",
    "pagerduty",
    "severity",
];

fn presentation(
    ctx: &NativeCallContext,
    options: &Map,
) -> Result<Presentation, Box<rhai::EvalAltResult>> {
    let json = |key: &str| {
        options
            .get(key)
            .map(rhai::serde::from_dynamic::<serde_json::Value>)
            .transpose()
            .map_err(|e| bad_argument(ctx, format!("alert: {key}: {e}")))
    };
    let fields = match json("fields")? {
        None => serde_json::Map::new(),
        Some(serde_json::Value::Object(fields)) if fields.len() <= 10 => fields,
        Some(serde_json::Value::Object(_)) => {
            return Err(bad_argument(
                ctx,
                "alert: at most 10 fields (Slack shows no more)".into(),
            ))
        }
        Some(_) => {
            return Err(bad_argument(
                ctx,
                "alert: fields must be a map of label -> value".into(),
            ))
        }
    };
    let mention = match json("mention")? {
        None => Vec::new(),
        Some(serde_json::Value::Array(items)) => {
            let mut mention = Vec::new();
            for item in items {
                match item.as_str() {
                    Some(text) if valid_mention(text) => mention.push(text.to_string()),
                    _ => {
                        return Err(bad_argument(
                            ctx,
                            format!("alert: mention: {item} is not a Slack user or group id, @here, @channel or an e-mail address"),
                        ))
                    }
                }
            }
            mention
        }
        Some(_) => return Err(bad_argument(ctx, "alert: mention must be an array".into())),
    };
    let blocks = match json("blocks")? {
        None => None,
        Some(blocks @ serde_json::Value::Array(_)) => Some(blocks),
        Some(_) => return Err(bad_argument(ctx, "alert: blocks must be an array".into())),
    };
    let url = get_string(options, "url");
    if url
        .as_deref()
        .is_some_and(|u| !(u.starts_with("https://") || u.starts_with("http://")))
    {
        return Err(bad_argument(
            ctx,
            "alert: url must be an http(s) URL".into(),
        ));
    }
    let severity = get_string(options, "severity");
    if let Some(severity) = &severity {
        if !SEVERITIES.contains(&severity.as_str()) {
            return Err(bad_argument(
                ctx,
                format!("alert: severity must be one of {}", SEVERITIES.join(", ")),
            ));
        }
    }
    Ok(Presentation {
        fields,
        url,
        mention,
        blocks,
        pagerduty: get_string(options, "pagerduty"),
        severity,
    })
}
