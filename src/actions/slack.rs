//! Slack posts (../shared/api/tableau-slack-hex-powerbi.md section 2): the incoming
//! webhook for `slack_post(text)` and `chat.postMessage` with the bot token for
//! `slack_post(channel, text)`. The webhook URL is a secret and never appears in an error.

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

/// Posts `text` (and `blocks`) to `channel` with the bot token, or to the incoming webhook
/// when there is no channel.
pub async fn post(
    http: &Client,
    config: &SlackConfig,
    channel: Option<&str>,
    text: &str,
    blocks: Option<&Value>,
) -> Result<Value, ActionError> {
    let mut message = json!({ "text": text });
    if let Some(blocks) = blocks {
        message["blocks"] = blocks.clone();
    }
    match channel {
        None => {
            let url = config.webhook_url.as_ref().ok_or_else(|| {
                ActionError::final_error("slack is not configured (slack.webhook_url)")
            })?;
            let answer = send(SERVICE, http.post(url.expose()).json(&message)).await?;
            if answer.status == StatusCode::OK {
                return Ok(Value::Null);
            }
            Err(answer.into_error("slack webhook"))
        }
        Some(channel) => {
            let token = config.bot_token.as_ref().ok_or_else(|| {
                ActionError::final_error("slack is not configured (slack.bot_token)")
            })?;
            message["channel"] = json!(channel);
            let url = format!(
                "{}/chat.postMessage",
                config.api_base.as_str().trim_end_matches('/')
            );
            let answer = send(
                SERVICE,
                http.post(url).bearer_auth(token.expose()).json(&message),
            )
            .await?;
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
