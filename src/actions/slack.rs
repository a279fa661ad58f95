//! The `slack_post` action: the incoming webhook for `slack_post(text)`
//! (<https://api.slack.com/messaging/webhooks>) and `chat.postMessage` with the bot token
//! for `slack_post(channel, text)` (<https://api.slack.com/methods/chat.postMessage>). The
//! webhook URL is a secret and never appears in an error.

use reqwest::header::CONTENT_TYPE;
use reqwest::{Client, StatusCode};
use rhai::{Dynamic, Engine, Map, NativeCallContext};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use super::client::{excerpt, send, status_error, ActionError};
use super::{ActionRequest, Services};
use crate::config::SlackConfig;
use crate::rules::api::{bad_argument, get_string, non_empty, record, to_plain_json, Fallible};

const SERVICE: &str = "slack";

/// `chat.postMessage` errors that are worth another attempt; every other one is final.
const RETRYABLE_API_ERRORS: [&str; 5] = [
    "ratelimited",
    "rate_limited",
    "internal_error",
    "fatal_error",
    "service_unavailable",
];

/// One message to post: `slack_post(..)`, or an alert's post (`alerts.rs` writes those).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SlackPost {
    /// With a channel: chat.postMessage with the bot token; without: the incoming webhook.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub channel: Option<String>,
    pub text: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub blocks: Option<Value>,
    /// Post as a reply in this message's thread (a chat.postMessage `ts`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub thread_ts: Option<String>,
    /// An alert's renotification or resolution: posted in the thread of the post that
    /// announced the alert, the job with this key, once its `ts` is known (the act stage
    /// looks it up).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub thread_of: Option<String>,
    /// Who is mentioned: Slack user or group ids, `@here`, `@channel`, e-mail addresses
    /// (`[slack.users]`); written where Slack notifies them when the post is sent.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub mention: Vec<String>,
    /// An alert's resolution: update the post that announced it (the job with this key)
    /// in place with `chat.update`, once its `ts` is known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub update_of: Option<String>,
    /// The message to update (`chat.update`), filled in by the act stage from `update_of`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub update_ts: Option<String>,
}

impl SlackPost {
    /// A plain message, to the webhook (`channel` None) or a channel.
    pub fn text(channel: Option<String>, text: String) -> SlackPost {
        SlackPost {
            channel,
            text,
            blocks: None,
            thread_ts: None,
            thread_of: None,
            mention: Vec::new(),
            update_of: None,
            update_ts: None,
        }
    }

    pub async fn call(&self, services: &Services<'_>) -> Result<Value, ActionError> {
        let slack = services
            .config
            .slack
            .as_ref()
            .ok_or_else(|| ActionError::not_configured(SERVICE))?;
        post(services.http, slack, self).await
    }
}

/// The rule functions that build a [`SlackPost`].
pub(super) fn register(engine: &mut Engine) {
    engine.register_fn(
        "slack_post",
        |ctx: NativeCallContext, text: &str| -> Fallible {
            let text = non_empty(&ctx, "slack_post", "the text", text)?;
            let written = json!([text]);
            let post = SlackPost::text(None, text);
            record(&ctx, ActionRequest::SlackPost(post), written)
        },
    );
    engine.register_fn(
        "slack_post",
        |ctx: NativeCallContext, message: Map| -> Fallible { message_call(&ctx, None, message) },
    );
    engine.register_fn(
        "slack_post",
        |ctx: NativeCallContext, channel: &str, text: &str| -> Fallible {
            let channel = non_empty(&ctx, "slack_post", "the channel", channel)?;
            let text = non_empty(&ctx, "slack_post", "the text", text)?;
            let written = json!([channel, text]);
            let post = SlackPost::text(Some(channel), text);
            record(&ctx, ActionRequest::SlackPost(post), written)
        },
    );
    engine.register_fn(
        "slack_post",
        |ctx: NativeCallContext, channel: &str, message: Map| -> Fallible {
            let channel = non_empty(&ctx, "slack_post", "the channel", channel)?;
            message_call(&ctx, Some(channel), message)
        },
    );
}

/// The keys of `slack_post`'s message map (checked when a rule runs, and by `freshet check`).
pub const MESSAGE_KEYS: [&str; 4] = ["text", "blocks", "thread_ts", "mention"];

/// `slack_post` with a map: `text` (required, the notification fallback), `blocks`, and
/// `thread_ts` (post as a reply in that message's thread, docs/rules.md).
fn message_call(ctx: &NativeCallContext, channel: Option<String>, message: Map) -> Fallible {
    let written_map = to_plain_json(&Dynamic::from_map(message.clone()));
    let written = match &channel {
        Some(channel) => json!([channel, written_map]),
        None => written_map,
    };
    for key in message.keys() {
        if !MESSAGE_KEYS.contains(&key.as_str()) {
            return Err(bad_argument(
                ctx,
                format!(
                    "slack_post: unknown key `{key}` ({})",
                    MESSAGE_KEYS.join(", ")
                ),
            ));
        }
    }
    let mention = match message.get("mention") {
        None => Vec::new(),
        Some(list) => {
            let list: Vec<Value> = rhai::serde::from_dynamic::<Vec<Value>>(list)
                .map_err(|_| bad_argument(ctx, "slack_post: mention must be an array".into()))?;
            let mut mention = Vec::new();
            for item in list {
                match item.as_str() {
                    Some(text) if super::alert::valid_mention(text) => mention.push(text.to_string()),
                    _ => return Err(bad_argument(ctx, format!("slack_post: mention: {item} is not a Slack user or group id, @here, @channel or an e-mail address"))),
                }
            }
            mention
        }
    };
    let text = get_string(&message, "text").ok_or_else(|| {
        bad_argument(
            ctx,
            "slack_post: the map needs a `text` (the notification fallback)".into(),
        )
    })?;
    let blocks = match message.get("blocks") {
        None => None,
        Some(blocks) if blocks.is_array() => Some(
            rhai::serde::from_dynamic::<Value>(blocks)
                .map_err(|e| bad_argument(ctx, format!("slack_post: blocks: {e}")))?,
        ),
        Some(_) => {
            return Err(bad_argument(
                ctx,
                "slack_post: `blocks` must be an array".into(),
            ))
        }
    };
    let thread_ts = get_string(&message, "thread_ts");
    if thread_ts.is_some() && channel.is_none() {
        return Err(bad_argument(
            ctx,
            "slack_post: thread_ts needs a channel: slack_post(channel, #{ text, thread_ts })"
                .into(),
        ));
    }
    let post = SlackPost {
        channel,
        text,
        blocks,
        thread_ts,
        thread_of: None,
        mention,
        update_of: None,
        update_ts: None,
    };
    record(ctx, ActionRequest::SlackPost(post), written)
}

/// Slack asks for the charset on JSON bodies, and warns (`missing_charset`) without it.
const JSON_UTF8: &str = "application/json; charset=utf-8";

/// Posts `message`. chat.postMessage answers with the message's `channel` and `ts`, kept
/// as the job's result (an alert's later posts go in its thread).
async fn post(
    http: &Client,
    config: &SlackConfig,
    message: &SlackPost,
) -> Result<Value, ActionError> {
    let mentions = mentions(config, &message.mention);
    let mut body = json!({ "text": with_mentions(&mentions, &message.text) });
    if let Some(blocks) = &message.blocks {
        body["blocks"] = blocks_with_mentions(&mentions, blocks.clone());
    }
    let body_for = |body: &Value| serde_json::to_vec(body).expect("JSON always serializes");
    match &message.channel {
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
            if let Some(thread_ts) = &message.thread_ts {
                body["thread_ts"] = json!(thread_ts);
            }
            // An alert's first post, updated in place (https://api.slack.com/methods/chat.update):
            // the channel must be the id Slack answered the post with.
            let method = match &message.update_ts {
                Some(ts) => {
                    body["ts"] = json!(ts);
                    "chat.update"
                }
                None => "chat.postMessage",
            };
            let url = format!(
                "{}/{method}",
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
                    &format!("slack {method}"),
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
            let message = format!("slack {method}: {error}");
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

/// `freshet check --online`: `auth.test` with the bot token (who the token is; it posts
/// nothing). slack_sdk's `WebClient.auth_test()` POSTs it as an empty form.
pub async fn probe(http: &Client, config: &SlackConfig) -> Result<String, ActionError> {
    let Some(token) = &config.bot_token else {
        return Err(ActionError::not_configured("slack (slack.bot_token)"));
    };
    let url = format!(
        "{}/auth.test",
        config.api_base.as_str().trim_end_matches('/')
    );
    let request = http
        .post(url)
        .bearer_auth(token.expose())
        .header(CONTENT_TYPE, "application/x-www-form-urlencoded");
    let answer = send(SERVICE, request).await?;
    if !answer.status.is_success() {
        return Err(answer.into_error("slack auth.test"));
    }
    let body: Value = serde_json::from_str(&answer.body).map_err(|_| {
        ActionError::retryable(format!(
            "slack auth.test: answer is not JSON: {}",
            excerpt(&answer.body)
        ))
    })?;
    if body.get("ok").and_then(Value::as_bool) != Some(true) {
        let error = body
            .get("error")
            .and_then(Value::as_str)
            .unwrap_or("unknown_error");
        return Err(ActionError::Final(format!("slack auth.test: {error}")));
    }
    let text = |key: &str| body.get(key).and_then(Value::as_str).unwrap_or("?");
    Ok(format!(
        "bot token of {:?} in workspace {:?}",
        text("user"),
        text("team")
    ))
}

/// Mentions as Slack writes them where they notify (https://api.slack.com/reference/surfaces/formatting):
/// `<@U…>`, `<!subteam^S…>`, `<!here>`, `<!channel>`; an e-mail address through
/// `[slack.users]`, or as plain text when it has no mapping (logged: nobody is notified).
fn mentions(config: &SlackConfig, wanted: &[String]) -> String {
    let written: Vec<String> = wanted
        .iter()
        .map(|mention| match mention.as_str() {
            "@here" => "<!here>".to_string(),
            "@channel" => "<!channel>".to_string(),
            id if id.starts_with('S') && !id.contains('@') => format!("<!subteam^{id}>"),
            id if !id.contains('@') => format!("<@{id}>"),
            address => match config.users.get(&address.to_lowercase()) {
                Some(id) => format!("<@{id}>"),
                None => {
                    unmapped(address);
                    crate::rules::api::slack_escape(address)
                }
            },
        })
        .collect();
    written.join(" ")
}

/// Logs an address with no `[slack.users]` entry, once per address per process.
fn unmapped(address: &str) {
    static SEEN: std::sync::Mutex<Vec<String>> = std::sync::Mutex::new(Vec::new());
    let mut seen = SEEN.lock().unwrap_or_else(|p| p.into_inner());
    if seen.len() < 1_000 && !seen.iter().any(|a| a == address) {
        seen.push(address.to_string());
        tracing::warn!(address, "A mention names an e-mail address with no [slack.users] entry: shown as text, nobody is notified.");
    }
}

fn with_mentions(mentions: &str, text: &str) -> String {
    if mentions.is_empty() {
        text.to_string()
    } else {
        format!("{mentions} {text}")
    }
}

/// The mentions go into the first section's text too: Slack notifies for mentions in the
/// top-level text and in blocks, never in attachments.
fn blocks_with_mentions(mentions: &str, mut blocks: Value) -> Value {
    if mentions.is_empty() {
        return blocks;
    }
    if let Some(text) = blocks.as_array_mut().and_then(|blocks| {
        blocks.iter_mut().find_map(|block| {
            (block.get("type") == Some(&json!("section")))
                .then(|| block.pointer_mut("/text/text"))
                .flatten()
        })
    }) {
        if let Some(current) = text.as_str() {
            *text = json!(with_mentions(mentions, current));
        }
    }
    blocks
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mentions_are_written_where_slack_notifies() {
        let mut config = SlackConfig {
            webhook_url: None,
            bot_token: None,
            api_base: url::Url::parse("https://slack.com/api").unwrap(),
            users: Default::default(),
            workspace_url: None,
        };
        config
            .users
            .insert("ana@acme.com".into(), "U024BE7LH".into());
        let written = mentions(
            &config,
            &[
                "U1".into(),
                "S2".into(),
                "@here".into(),
                "Ana@Acme.com".into(),
                "bo@acme.com".into(),
            ],
        );
        assert_eq!(
            written,
            "<@U1> <!subteam^S2> <!here> <@U024BE7LH> bo@acme.com"
        );
        let blocks = blocks_with_mentions(
            "<@U1>",
            json!([{"type": "header", "text": {"type": "plain_text", "text": "h"}},
                   {"type": "section", "text": {"type": "mrkdwn", "text": "low"}}]),
        );
        assert_eq!(blocks[1]["text"]["text"], "<@U1> low");
        assert_eq!(blocks[0]["text"]["text"], "h");
    }
}
