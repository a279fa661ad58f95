//! A fake Slack: the incoming webhook, and chat.postMessage and chat.update with the bot
//! token.

use super::*;

pub const SLACK_WEBHOOK_PATH: &str = "/services/T0001/B0001/hooksecret123";
pub const SLACK_BOT_TOKEN: &str = "xoxb-test-token-1";

/// A message chat.postMessage accepted.
#[derive(Debug, Clone, PartialEq)]
pub struct SlackMessage {
    /// The channel as the post named it (a name or an id).
    pub channel: String,
    /// The channel's id, which Slack answers with and which stays when it is renamed.
    pub channel_id: String,
    pub text: String,
    pub ts: String,
    pub thread_ts: Option<String>,
    pub blocks: Option<serde_json::Value>,
    /// How many times chat.update changed it.
    pub edits: usize,
}

#[derive(Default)]
pub struct SlackState {
    /// (channel or "webhook", text) of every accepted post.
    pub posts: Vec<(String, String)>,
    /// When each of `posts` arrived (a post is in flight from then until `delay_ms` later).
    pub arrivals: Vec<std::time::Instant>,
    /// Every message posted with the bot token, with its `ts` and thread.
    pub messages: Vec<SlackMessage>,
    /// Warnings Slack would have sent back (`missing_charset`).
    pub warnings: Vec<String>,
    pub faults: Faults,
    /// How long each post takes to be answered (taken at once, answered late).
    pub delay_ms: u64,
    /// Channel names and their ids, made on first use as a workspace's channels exist.
    pub channels: Vec<(String, String)>,
    /// Names that channels had before a rename: Slack no longer knows them.
    pub retired: Vec<String>,
    /// How many auth.test calls were made (whatever their answer).
    pub auth_tests: usize,
}

impl SlackState {
    /// The id of the channel a post names (by name or id), as Slack resolves it.
    fn channel_id(&mut self, named: &str) -> Option<String> {
        if let Some((_, id)) = self
            .channels
            .iter()
            .find(|(name, id)| name == named || id == named)
        {
            return Some(id.clone());
        }
        if self.retired.iter().any(|name| name == named) {
            return None;
        }
        let id = format!("C{:010}", self.channels.len() + 1);
        self.channels.push((named.to_string(), id.clone()));
        Some(id)
    }
}

/// A fake Slack: the incoming webhook answers plain `ok`; chat.postMessage needs the bot
/// token and answers `{"ok": ..}` with HTTP 200 for method errors, like Slack.
pub type FakeSlack = Fake<SlackState>;

impl FakeSlack {
    /// Renames a channel, as a workspace admin does: its id stays, its old name is gone.
    pub fn rename(&self, old: &str, new: &str) {
        let mut state = self.state.lock().unwrap();
        for (name, _) in state.channels.iter_mut().filter(|(name, _)| name == old) {
            *name = new.to_string();
        }
        state.retired.push(old.to_string());
    }

    /// Adds a `[slack]` section pointing at this fake, with its webhook URL and bot token.
    pub fn configure(&self, setup: Setup) -> Setup {
        self.configure_with(setup, "")
    }

    /// As [`FakeSlack::configure`], with more lines in the `[slack]` section.
    pub fn configure_with(&self, setup: Setup, more: &str) -> Setup {
        setup
            .section(&format!(
                "[slack]\nwebhook_url = {{ env = \"T_SLACK_URL\" }}\nbot_token = {{ env = \"T_SLACK_BOT\" }}\napi_base = \"{}\"\n{more}",
                self.api_base()
            ))
            .env("T_SLACK_URL", &self.webhook_url())
            .env("T_SLACK_BOT", SLACK_BOT_TOKEN)
    }

    pub async fn start() -> FakeSlack {
        Fake::spawn(SlackState::default(), slack_handle)
    }

    pub fn webhook_url(&self) -> String {
        format!("http://{}{SLACK_WEBHOOK_PATH}", self.addr)
    }

    pub fn api_base(&self) -> String {
        format!("http://{}/api", self.addr)
    }

    pub fn posts(&self) -> Vec<(String, String)> {
        self.state.lock().unwrap().posts.clone()
    }

    pub fn messages(&self) -> Vec<SlackMessage> {
        self.state.lock().unwrap().messages.clone()
    }
}

fn slack_handle(state: &mut SlackState, seen: &Seen) -> Reply {
    if seen.method != "POST" {
        return Reply::text(405, "method_not_allowed");
    }
    if let Some(reply) = state.faults.take(seen) {
        return reply;
    }
    if seen.path == "/api/auth.test" {
        return auth_test(state, seen);
    }
    if !seen
        .header("content-type")
        .is_some_and(|c| c.starts_with("application/json"))
    {
        return Reply::text(400, "invalid_payload");
    }
    let body = seen.json();
    if seen.path == SLACK_WEBHOOK_PATH {
        let Some(text) = body.get("text").and_then(|t| t.as_str()) else {
            return Reply::text(
                400,
                if body.is_null() {
                    "invalid_payload"
                } else {
                    "missing_text_or_fallback_or_attachments"
                },
            );
        };
        state.posts.push(("webhook".into(), text.to_string()));
        state.arrivals.push(std::time::Instant::now());
        let mut reply = Reply::text(200, "ok");
        reply.delay_ms = state.delay_ms;
        return reply;
    }
    if seen.path == "/api/chat.update" {
        return chat_update(state, seen, &body);
    }
    if seen.path == "/api/chat.postMessage" {
        match seen.header("authorization") {
            None => {
                return Reply::json(200, serde_json::json!({"ok": false, "error": "not_authed"}))
            }
            Some(auth) if auth != format!("Bearer {SLACK_BOT_TOKEN}") => {
                return Reply::json(
                    200,
                    serde_json::json!({"ok": false, "error": "invalid_auth"}),
                )
            }
            Some(_) => {}
        }
        let channel = body.get("channel").and_then(|c| c.as_str());
        let text = body.get("text").and_then(|t| t.as_str());
        let (Some(channel), Some(text)) = (channel, text) else {
            return Reply::json(200, serde_json::json!({"ok": false, "error": "no_text"}));
        };
        if channel == "#not-a-member" {
            return Reply::json(
                200,
                serde_json::json!({"ok": false, "error": "not_in_channel"}),
            );
        }
        let Some(channel_id) = state.channel_id(channel) else {
            return Reply::json(
                200,
                serde_json::json!({"ok": false, "error": "channel_not_found"}),
            );
        };
        let thread_ts = match body.get("thread_ts") {
            None => None,
            Some(serde_json::Value::String(ts)) => {
                // A reply names a message that was posted in that channel.
                if !state
                    .messages
                    .iter()
                    .any(|m| &m.ts == ts && m.channel_id == channel_id)
                {
                    return Reply::json(
                        200,
                        serde_json::json!({"ok": false, "error": "thread_not_found"}),
                    );
                }
                Some(ts.clone())
            }
            Some(_) => {
                return Reply::json(
                    200,
                    serde_json::json!({"ok": false, "error": "invalid_thread_ts"}),
                )
            }
        };
        // Slack reads JSON without a charset but warns about it.
        let mut warning = None;
        if !seen.header("content-type").is_some_and(|c| {
            c.replace(' ', "")
                .eq_ignore_ascii_case("application/json;charset=utf-8")
        }) {
            state.warnings.push("missing_charset".into());
            warning = Some("missing_charset");
        }
        state.posts.push((channel.to_string(), text.to_string()));
        state.arrivals.push(std::time::Instant::now());
        let ts = format!("1725574158.{:06}", state.posts.len());
        state.messages.push(SlackMessage {
            channel: channel.to_string(),
            channel_id: channel_id.clone(),
            text: text.to_string(),
            ts: ts.clone(),
            thread_ts,
            blocks: body.get("blocks").cloned(),
            edits: 0,
        });
        let mut answer = serde_json::json!({"ok": true, "channel": channel_id, "ts": ts});
        if let Some(warning) = warning {
            answer["warning"] = serde_json::json!(warning);
        }
        return Reply::json(200, answer);
    }
    // A wrong webhook path: Slack says no_service.
    Reply::text(404, "no_service")
}

/// auth.test (https://api.slack.com/methods/auth.test): who the token is. Read-only; it
/// takes no arguments, so any body (slack_sdk posts an empty form) is accepted.
fn auth_test(state: &mut SlackState, seen: &Seen) -> Reply {
    state.auth_tests += 1;
    match seen.header("authorization") {
        None => Reply::json(200, serde_json::json!({"ok": false, "error": "not_authed"})),
        Some(auth) if auth != format!("Bearer {SLACK_BOT_TOKEN}") => Reply::json(
            200,
            serde_json::json!({"ok": false, "error": "invalid_auth"}),
        ),
        Some(_) => Reply::json(
            200,
            serde_json::json!({"ok": true, "url": "https://acme.slack.com/", "team": "Acme",
                "user": "freshet", "team_id": "T0001", "user_id": "U0FRESHET", "bot_id": "B0001"}),
        ),
    }
}

/// chat.update (https://api.slack.com/methods/chat.update): the bot token, the channel's
/// id (not its name) and the `ts` of a message in it; `message_not_found` otherwise.
fn chat_update(state: &mut SlackState, seen: &Seen, body: &serde_json::Value) -> Reply {
    if seen.header("authorization") != Some(format!("Bearer {SLACK_BOT_TOKEN}").as_str()) {
        return Reply::json(
            200,
            serde_json::json!({"ok": false, "error": "invalid_auth"}),
        );
    }
    let (Some(channel), Some(ts)) = (
        body.get("channel").and_then(|c| c.as_str()),
        body.get("ts").and_then(|t| t.as_str()),
    ) else {
        return Reply::json(
            200,
            serde_json::json!({"ok": false, "error": "invalid_arguments"}),
        );
    };
    let Some(text) = body.get("text").and_then(|t| t.as_str()) else {
        return Reply::json(200, serde_json::json!({"ok": false, "error": "no_text"}));
    };
    let Some(message) = state
        .messages
        .iter_mut()
        .find(|m| m.channel_id == channel && m.ts == ts)
    else {
        let error = if state.channels.iter().any(|(_, id)| id == channel) {
            "message_not_found"
        } else {
            "channel_not_found"
        };
        return Reply::json(200, serde_json::json!({"ok": false, "error": error}));
    };
    message.text = text.to_string();
    message.blocks = body.get("blocks").cloned();
    message.edits += 1;
    Reply::json(
        200,
        serde_json::json!({"ok": true, "channel": channel, "ts": ts, "text": text}),
    )
}
