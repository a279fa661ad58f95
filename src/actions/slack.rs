//! Slack posts (../shared/api/tableau-slack-hex-powerbi.md section 2): the incoming
//! webhook for `slack_post(text)` and `chat.postMessage` with the bot token for
//! `slack_post(channel, text)`. The webhook URL is a secret and never appears in an error.

use reqwest::header::CONTENT_TYPE;
use reqwest::{Client, StatusCode};
use serde_json::{json, Value};

use super::client::{excerpt, send, status_error, ActionError};
use crate::config::SlackConfig;

const SERVICE: &str = "slack";

/// `chat.postMessage` errors that are worth another attempt; every other one is final.
const RETRYABLE_API_ERRORS: [&str; 5] = [
    "ratelimited",
    "rate_limited",
    "internal_error",
    "fatal_error",
    "service_unavailable",
];

/// One message to post.
pub struct Message<'a> {
    /// With a channel: chat.postMessage with the bot token; without: the incoming webhook.
    pub channel: Option<&'a str>,
    pub text: &'a str,
    pub blocks: Option<&'a Value>,
    /// Reply in this message's thread (chat.postMessage only).
    pub thread_ts: Option<&'a str>,
}

/// Slack asks for the charset on JSON bodies, and warns (`missing_charset`) without it.
const JSON_UTF8: &str = "application/json; charset=utf-8";

/// Posts `message`. chat.postMessage answers with the message's `channel` and `ts`, kept
/// as the job's result (an alert's later posts go in its thread).
pub async fn post(
    http: &Client,
    config: &SlackConfig,
    message: &Message<'_>,
) -> Result<Value, ActionError> {
    let mut body = json!({ "text": message.text });
    if let Some(blocks) = message.blocks {
        body["blocks"] = blocks.clone();
    }
    let body_for = |body: &Value| serde_json::to_vec(body).expect("JSON always serializes");
    match message.channel {
        None => {
            let url = config.webhook_url.as_ref().ok_or_else(|| {
                ActionError::final_error("slack is not configured (slack.webhook_url)")
            })?;
            let request = http
                .post(url.expose())
                .header(CONTENT_TYPE, JSON_UTF8)
                .body(body_for(&body));
            let answer = send(SERVICE, request).await?;
            if answer.status == StatusCode::OK {
                return Ok(Value::Null);
            }
            Err(answer.into_error("slack webhook"))
        }
        Some(channel) => {
            let token = config.bot_token.as_ref().ok_or_else(|| {
                ActionError::final_error("slack is not configured (slack.bot_token)")
            })?;
            body["channel"] = json!(channel);
            if let Some(thread_ts) = message.thread_ts {
                body["thread_ts"] = json!(thread_ts);
            }
            let url = format!(
                "{}/chat.postMessage",
                config.api_base.as_str().trim_end_matches('/')
            );
            let request = http
                .post(url)
                .bearer_auth(token.expose())
                .header(CONTENT_TYPE, JSON_UTF8)
                .body(body_for(&body));
            let answer = send(SERVICE, request).await?;
            let (status, wait, body) = (answer.status, answer.retry_after, answer.body);
            if !status.is_success() {
                return Err(status_error(
                    "slack chat.postMessage",
                    status,
                    wait,
                    &excerpt(&body),
                ));
            }
            let answer: Value = serde_json::from_str(&body).map_err(|_| {
                ActionError::retryable(format!("slack: answer is not JSON: {}", excerpt(&body)))
            })?;
            if answer.get("ok").and_then(Value::as_bool) == Some(true) {
                return Ok(json!({ "channel": answer.get("channel"), "ts": answer.get("ts") }));
            }
            let error = answer
                .get("error")
                .and_then(Value::as_str)
                .unwrap_or("unknown_error");
            let message = format!("slack chat.postMessage: {error}");
            if RETRYABLE_API_ERRORS.contains(&error) {
                Err(ActionError::Retryable {
                    message,
                    retry_after: wait,
                })
            } else {
                Err(ActionError::Final(message))
            }
        }
    }
}
