//! Stateful threshold alerts (docs/behaviour.md section 6): decide, from an alert's stored state
//! and a rule's `alert(name, firing, ..)` call, whether the state changes and what to post.
//!
//! Pure functions: the journal applies the decision inside the evaluation's transaction,
//! so one transition yields at most one post even if an evaluation is retried.

use serde_json::{json, Value};

use crate::actions::alert::Presentation;
use crate::actions::ActionRequest;
use crate::journal::{job_key, AlertCall, AlertJob, AlertState, AlertTransition};
use crate::rules::api::slack_escape;

/// Slack's limits on Block Kit (docs/behaviour.md section 14): a header's text, a
/// section's text, a field's text.
const HEADER_CHARS: usize = 150;
const SECTION_CHARS: usize = 3_000;
const FIELD_CHARS: usize = 2_000;
/// PagerDuty's limit on `payload.summary`.
const SUMMARY_CHARS: usize = 1_024;

/// The alert call a rule's `alert(..)` made on event `event_id`, as the journal decides
/// it; None for the other actions.
pub fn call_of(request: &ActionRequest, rule: &str, event_id: &str) -> Option<AlertCall> {
    let ActionRequest::Alert(alert) = request else {
        return None;
    };
    Some(AlertCall {
        rule: rule.to_string(),
        name: alert.name.clone(),
        firing: alert.firing,
        text: alert.text.clone(),
        channel: alert.channel.clone(),
        renotify_minutes: alert.renotify_minutes,
        resolve: alert.resolve,
        event_id: event_id.to_string(),
        presentation: serde_json::to_value(&alert.presentation).unwrap_or(Value::Null),
    })
}

/// What an `alert(..)` call leads to.
#[derive(Debug, Clone, PartialEq)]
pub struct Decision {
    /// The state to store, if it changes (new transition or a renotification).
    pub new_state: Option<AlertState>,
    /// The Slack posts and updates and the PagerDuty events to queue, each with a job key
    /// unique to it.
    pub jobs: Vec<AlertJob>,
    /// A short description for `freshet test` and logs.
    pub summary: String,
}

/// [`decide`] as the journal applies it (`Evaluation::decide_alert`).
pub fn transition(previous: Option<&AlertState>, call: &AlertCall, now_ms: i64) -> AlertTransition {
    let decision = decide(previous, call, now_ms);
    AlertTransition {
        new_state: decision.new_state,
        jobs: decision.jobs,
    }
}

/// Decides the effect of `call` given the stored state `previous`, at `now_ms`. A muted
/// alert (`freshet alerts --mute`) changes state as usual and posts and pages nothing; a
/// transition made while muted is posted at the first call after the mute ended, if the
/// alert is still in that state.
pub fn decide(previous: Option<&AlertState>, call: &AlertCall, now_ms: i64) -> Decision {
    let muted = previous.is_some_and(|p| p.muted_until_ms.is_some_and(|until| until > now_ms));
    if let Some(owed) = previous.filter(|p| !muted && p.unposted && p.firing == call.firing) {
        return catch_up(owed, call, now_ms);
    }
    let mut decision = decide_unmuted(previous, call, now_ms);
    let Some(previous) = previous else {
        return decision;
    };
    if let Some(state) = decision.new_state.as_mut() {
        state.muted_until_ms = previous.muted_until_ms;
        state.mute_reason = previous.mute_reason.clone();
        let transition = state.version != previous.version;
        if transition && previous.unposted {
            // It returns to the state last posted: nothing is owed any more.
            state.unposted = false;
        } else if transition && muted {
            state.unposted = !decision.jobs.is_empty();
        } else {
            state.unposted = previous.unposted;
        }
    }
    if muted && !decision.jobs.is_empty() {
        decision.jobs.clear();
        decision.summary = format!("{} (muted: posts and pages nothing)", decision.summary);
    }
    if previous.unposted
        && !muted
        && decision
            .new_state
            .as_ref()
            .is_some_and(|s| s.version != previous.version)
    {
        // The transition owed was never posted, and this one undoes it: say nothing.
        decision.jobs.clear();
    }
    decision
}

/// Posts the transition made while muted, now that the mute has ended and the alert is
/// still in that state: as if it had happened now, keeping its since.
fn catch_up(owed: &AlertState, call: &AlertCall, now_ms: i64) -> Decision {
    let before = AlertState {
        firing: !owed.firing,
        version: owed.version - 1,
        ..owed.clone()
    };
    let mut decision = decide_unmuted(Some(&before), call, now_ms);
    if let Some(state) = decision.new_state.as_mut() {
        state.since_ms = owed.since_ms;
        state.muted_until_ms = owed.muted_until_ms;
        state.mute_reason = owed.mute_reason.clone();
        state.unposted = false;
    }
    decision.summary = format!("{} (held back while muted)", decision.summary);
    decision
}

fn decide_unmuted(previous: Option<&AlertState>, call: &AlertCall, now_ms: i64) -> Decision {
    let was_firing = previous.is_some_and(|p| p.firing);
    let version = previous.map(|p| p.version).unwrap_or(0);
    let shown: Presentation = serde_json::from_value(call.presentation.clone()).unwrap_or_default();
    let post = |key: String, payload: Value| AlertJob {
        key,
        kind: "slack_post".into(),
        payload,
    };
    let page = |key: String, action: &str| {
        shown.pagerduty.as_ref().map(|routing_key| AlertJob {
            key,
            kind: "pagerduty_event".into(),
            payload: page_payload(call, &shown, routing_key, action),
        })
    };
    match (was_firing, call.firing) {
        (false, true) => {
            let version = version + 1;
            let blocks = layout(
                call,
                &shown,
                "firing",
                &format!("firing since {}", when(now_ms)),
            );
            let mut jobs = vec![post(
                firing_key(&call.name, version),
                message(call, &shown, call.text.clone(), blocks),
            )];
            jobs.extend(page(
                job_key(&["alert", &call.name, &format!("v{version}"), "page"]),
                "trigger",
            ));
            Decision {
                new_state: Some(AlertState {
                    name: call.name.clone(),
                    firing: true,
                    version,
                    since_ms: now_ms,
                    last_notified_ms: Some(now_ms),
                    ..AlertState::default()
                }),
                jobs,
                summary: "ok -> firing: posts the alert".into(),
            }
        }
        (true, true) => {
            // Unwrap-free: was_firing implies previous is Some.
            let Some(previous) = previous else {
                unreachable!("firing state implies a stored alert")
            };
            let due = call.renotify_minutes.is_some_and(|minutes| {
                let last = previous.last_notified_ms.unwrap_or(previous.since_ms);
                now_ms.saturating_sub(last) >= (minutes as i64).saturating_mul(60_000)
            });
            if !due {
                return Decision {
                    new_state: None,
                    jobs: Vec::new(),
                    summary: "still firing: stays quiet".into(),
                };
            }
            let key = |what: &str| {
                job_key(&[
                    "alert",
                    &call.name,
                    &format!("v{}", previous.version),
                    what,
                    &now_ms.to_string(),
                ])
            };
            let blocks = layout(
                call,
                &shown,
                "still firing",
                &format!("firing since {}", when(previous.since_ms)),
            );
            let mut payload = message(call, &shown, call.text.clone(), blocks);
            in_thread_of(&mut payload, call, previous.version);
            let mut jobs = vec![post(key("renotify"), payload)];
            // PagerDuty folds a trigger with the same dedup_key into the open incident.
            jobs.extend(page(key("page"), "trigger"));
            Decision {
                new_state: Some(AlertState {
                    last_notified_ms: Some(now_ms),
                    ..previous.clone()
                }),
                jobs,
                summary: "still firing, renotify interval passed: posts again".into(),
            }
        }
        (true, false) => {
            let version = version + 1;
            // `version - 1`: the transition to firing that this one ends.
            let fired = version - 1;
            let since = previous.map_or(now_ms, |p| p.since_ms);
            let mut jobs = Vec::new();
            if call.resolve {
                let key =
                    |what: &str| job_key(&["alert", &call.name, &format!("v{version}"), what]);
                let text = format!("Resolved: {}", call.name);
                let mut reply = json!({ "text": text });
                if let Some(channel) = &call.channel {
                    reply["channel"] = json!(channel);
                }
                in_thread_of(&mut reply, call, fired);
                jobs.push(post(key("resolved"), reply));
                // With the bot token the first post follows the alert: updated in place.
                if call.channel.is_some() && shown.blocks.is_none() {
                    let status = format!(
                        "resolved {} after firing for {}",
                        when(now_ms),
                        duration(now_ms.saturating_sub(since))
                    );
                    let blocks = layout(call, &shown, "resolved", &status);
                    let mut update = json!({
                        "channel": call.channel,
                        "text": format!("Resolved: {}: {}", call.name, call.text),
                        "blocks": blocks,
                        "update_of": firing_key(&call.name, fired),
                    });
                    if update["channel"].is_null() {
                        update.as_object_mut().map(|m| m.remove("channel"));
                    }
                    jobs.push(post(key("update"), update));
                }
            }
            // An incident stays open until told: resolved even when Slack hears nothing.
            jobs.extend(page(
                job_key(&["alert", &call.name, &format!("v{version}"), "page"]),
                "resolve",
            ));
            let summary = if call.resolve {
                "firing -> ok: posts a resolved message".into()
            } else {
                "firing -> ok: resolve is off, posts nothing".into()
            };
            Decision {
                new_state: Some(AlertState {
                    name: call.name.clone(),
                    firing: false,
                    version,
                    since_ms: now_ms,
                    last_notified_ms: previous.and_then(|p| p.last_notified_ms),
                    ..AlertState::default()
                }),
                jobs,
                summary,
            }
        }
        (false, false) => Decision {
            new_state: None,
            jobs: Vec::new(),
            summary: "ok: nothing to do".into(),
        },
    }
}

/// A Slack post of the alert: the rule's text as the notification fallback, the layout
/// (or the rule's own `blocks`), and the mentions, which the act stage writes where they
/// notify (it knows `[slack.users]`).
fn message(call: &AlertCall, shown: &Presentation, text: String, layout: Value) -> Value {
    let mut payload = json!({ "text": text, "blocks": shown.blocks.clone().unwrap_or(layout) });
    if let Some(channel) = &call.channel {
        payload["channel"] = json!(channel);
    }
    if !shown.mention.is_empty() {
        payload["mention"] = json!(shown.mention);
    }
    payload
}

/// Posted with the bot token, an alert's later posts go in the thread of the post that
/// announced it (docs/behaviour.md section 7): they name that post's job.
fn in_thread_of(payload: &mut Value, call: &AlertCall, firing_version: i64) {
    if call.channel.is_some() {
        payload["thread_of"] = json!(firing_key(&call.name, firing_version));
    }
}

/// The Block Kit layout of an alert post (docs/behaviour.md section 14): a header with
/// the name and state, the text, the fields, a context line and a link button, each
/// within Slack's limits.
pub fn layout(call: &AlertCall, shown: &Presentation, state: &str, status: &str) -> Value {
    let mut blocks = vec![
        json!({"type": "header", "text": {"type": "plain_text",
            "text": cut(&format!("{}: {state}", call.name), HEADER_CHARS), "emoji": true}}),
        json!({"type": "section", "text": {"type": "mrkdwn", "text": cut(&call.text, SECTION_CHARS)}}),
    ];
    if !shown.fields.is_empty() {
        let fields: Vec<Value> = shown
            .fields
            .iter()
            .take(10)
            .map(|(label, value)| {
                let value = match value {
                    Value::String(text) => text.clone(),
                    other => other.to_string(),
                };
                let text = format!("*{}*\n{}", slack_escape(label), slack_escape(&value));
                json!({"type": "mrkdwn", "text": cut(&text, FIELD_CHARS)})
            })
            .collect();
        blocks.push(json!({"type": "section", "fields": fields}));
    }
    let context = format!(
        "rule {} · event {} · {status}",
        slack_escape(&call.rule),
        slack_escape(&call.event_id)
    );
    blocks.push(json!({"type": "context", "elements": [{"type": "mrkdwn", "text": cut(&context, SECTION_CHARS)}]}));
    if let Some(url) = &shown.url {
        blocks.push(json!({"type": "actions", "elements": [{"type": "button",
            "text": {"type": "plain_text", "text": "Open"}, "url": url}]}));
    }
    Value::Array(blocks)
}

/// The `pagerduty_event` payload of an alert's page: `dedup_key = "freshet/<name>"`, so
/// every trigger of one alert folds into one incident and its resolve closes it.
fn page_payload(call: &AlertCall, shown: &Presentation, routing_key: &str, action: &str) -> Value {
    let mut payload = json!({
        "event_action": action,
        "routing_key": routing_key,
        "dedup_key": format!("freshet/{}", call.name),
    });
    if action == "trigger" {
        payload["summary"] = json!(cut(&call.text, SUMMARY_CHARS));
        payload["severity"] = json!(shown.severity.as_deref().unwrap_or("error"));
        if !shown.fields.is_empty() {
            payload["details"] = Value::Object(shown.fields.clone());
        }
    }
    payload
}

/// `text` within `max` characters, an ellipsis marking a cut.
fn cut(text: &str, max: usize) -> String {
    if text.chars().count() <= max {
        return text.to_string();
    }
    let kept: String = text.chars().take(max.saturating_sub(1)).collect();
    format!("{kept}…")
}

/// A time for people: `2026-12-06 07:00 UTC`.
fn when(ms: i64) -> String {
    chrono::DateTime::from_timestamp_millis(ms)
        .map(|t| t.format("%Y-%m-%d %H:%M UTC").to_string())
        .unwrap_or_else(|| ms.to_string())
}

/// A duration for people: `2h 5m`, `45m`, `30s`.
fn duration(ms: i64) -> String {
    let seconds = ms / 1000;
    let (hours, minutes) = (seconds / 3600, (seconds % 3600) / 60);
    match (hours, minutes) {
        (0, 0) => format!("{seconds}s"),
        (0, m) => format!("{m}m"),
        (h, m) => format!("{h}h {m}m"),
    }
}

/// The key of the job that posts alert `name`'s announcement at state `version`.
pub(crate) fn firing_key(name: &str, version: i64) -> String {
    job_key(&["alert", name, &format!("v{version}"), "firing"])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn call(firing: bool) -> AlertCall {
        AlertCall {
            rule: "r".into(),
            name: "revenue-floor".into(),
            firing,
            text: "low".into(),
            channel: Some("#fin".into()),
            renotify_minutes: None,
            resolve: true,
            event_id: "mode:e1".into(),
            presentation: Value::Null,
        }
    }

    fn kinds(decision: &Decision) -> Vec<&str> {
        decision.jobs.iter().map(|job| job.kind.as_str()).collect()
    }

    #[test]
    fn fires_once_then_resolves_once_updating_the_first_post() {
        let first = decide(None, &call(true), 1_000);
        let state = first.new_state.clone().unwrap();
        assert!(state.firing && state.version == 1);
        assert_eq!(kinds(&first), ["slack_post"]);
        let post = &first.jobs[0].payload;
        assert_eq!(
            (post["channel"].as_str(), post["text"].as_str()),
            (Some("#fin"), Some("low"))
        );
        assert_eq!(post["blocks"][0]["type"], "header");
        assert_eq!(post["blocks"][0]["text"]["text"], "revenue-floor: firing");
        assert_eq!(post["blocks"][1]["text"]["text"], "low");
        let context = post["blocks"][2]["elements"][0]["text"].as_str().unwrap();
        assert!(
            context.starts_with("rule r · event mode:e1 · firing since 1970-01-01 00:00 UTC"),
            "{context}"
        );

        let again = decide(Some(&state), &call(true), 2_000);
        assert!(again.jobs.is_empty() && again.new_state.is_none());

        let resolved = decide(Some(&state), &call(false), 3_600_000 + 1_000);
        let resolved_state = resolved.new_state.clone().unwrap();
        assert!(!resolved_state.firing && resolved_state.version == 2);
        assert_eq!(kinds(&resolved), ["slack_post", "slack_post"]);
        let reply = &resolved.jobs[0].payload;
        assert_eq!(reply["text"], "Resolved: revenue-floor");
        assert_eq!(
            reply["thread_of"],
            json!(first.jobs[0].key),
            "the reply goes in the first post's thread"
        );
        let update = &resolved.jobs[1].payload;
        assert_eq!(
            update["update_of"],
            json!(first.jobs[0].key),
            "the first post is updated"
        );
        assert_eq!(
            update["blocks"][0]["text"]["text"],
            "revenue-floor: resolved"
        );
        let context = update["blocks"][2]["elements"][0]["text"].as_str().unwrap();
        assert!(context.ends_with("after firing for 1h 0m"), "{context}");

        assert!(decide(Some(&resolved_state), &call(false), 4_000)
            .jobs
            .is_empty());
    }

    #[test]
    fn renotifies_after_the_interval_only() {
        let mut c = call(true);
        c.renotify_minutes = Some(10);
        let state = decide(None, &c, 0).new_state.unwrap();
        assert!(decide(Some(&state), &c, 9 * 60_000).jobs.is_empty());
        let later = decide(Some(&state), &c, 10 * 60_000);
        assert_eq!(later.jobs.len(), 1);
        assert_eq!(later.new_state.unwrap().last_notified_ms, Some(10 * 60_000));
    }

    #[test]
    fn resolve_false_posts_nothing_but_changes_state() {
        let mut c = call(true);
        let state = decide(None, &c, 0).new_state.unwrap();
        c.firing = false;
        c.resolve = false;
        let decision = decide(Some(&state), &c, 1);
        assert!(decision.jobs.is_empty());
        assert!(!decision.new_state.unwrap().firing);
    }

    #[test]
    fn a_paging_alert_triggers_retriggers_and_resolves_one_incident() {
        let mut c = call(true);
        c.renotify_minutes = Some(1);
        c.presentation = json!({"pagerduty": "data", "severity": "critical",
                                "fields": {"Revenue": 950.75}, "url": "https://x/r", "mention": ["U1"]});
        let first = decide(None, &c, 0);
        assert_eq!(kinds(&first), ["slack_post", "pagerduty_event"]);
        let page = &first.jobs[1].payload;
        assert_eq!(
            *page,
            json!({"event_action": "trigger", "routing_key": "data", "dedup_key": "freshet/revenue-floor",
                   "summary": "low", "severity": "critical", "details": {"Revenue": 950.75}})
        );
        let post = &first.jobs[0].payload;
        assert_eq!(post["mention"], json!(["U1"]));
        assert_eq!(post["blocks"][2]["fields"][0]["text"], "*Revenue*\n950.75");
        assert_eq!(post["blocks"][4]["elements"][0]["url"], "https://x/r");
        let state = first.new_state.unwrap();
        let again = decide(Some(&state), &c, 60_000);
        assert_eq!(kinds(&again), ["slack_post", "pagerduty_event"]);
        assert_eq!(again.jobs[1].payload["event_action"], "trigger");
        assert_ne!(again.jobs[1].key, first.jobs[1].key);
        c.firing = false;
        c.resolve = false;
        let resolved = decide(Some(&state), &c, 120_000);
        assert_eq!(
            kinds(&resolved),
            ["pagerduty_event"],
            "paged even when Slack hears nothing"
        );
        assert_eq!(
            resolved.jobs[0].payload,
            json!({"event_action": "resolve", "routing_key": "data", "dedup_key": "freshet/revenue-floor"})
        );
    }

    #[test]
    fn a_muted_alert_posts_nothing_and_owes_only_what_still_holds() {
        let mut c = call(true);
        c.presentation = json!({"pagerduty": "data"});
        let fired = decide(None, &c, 0).new_state.unwrap();
        let resolved_state = decide(Some(&fired), &call(false), 1).new_state.unwrap();
        let muted = AlertState {
            muted_until_ms: Some(1_000),
            ..resolved_state
        };
        // Fires while muted: state changes, nothing goes out, the post is owed.
        let silent = decide(Some(&muted), &c, 10);
        assert!(silent.jobs.is_empty(), "{:?}", silent.jobs);
        let owed = silent.new_state.unwrap();
        assert!(owed.firing && owed.unposted && owed.muted_until_ms == Some(1_000));
        // Still muted, still firing: quiet.
        assert!(decide(Some(&owed), &c, 500).jobs.is_empty());
        // The mute over and still firing: the post and the page go out now, once.
        let caught_up = decide(Some(&owed), &c, 2_000);
        assert_eq!(kinds(&caught_up), ["slack_post", "pagerduty_event"]);
        let posted = caught_up.new_state.unwrap();
        assert!(!posted.unposted && posted.since_ms == 10 && posted.version == owed.version);
        assert!(decide(Some(&posted), &c, 3_000).jobs.is_empty());
        // Fired and resolved within the mute: nothing is owed after it.
        let back = decide(Some(&owed), &call(false), 600);
        assert!(back.jobs.is_empty());
        let back = back.new_state.unwrap();
        assert!(!back.unposted);
        assert!(decide(Some(&back), &call(false), 2_000).jobs.is_empty());
    }

    #[test]
    fn the_layout_keeps_to_slacks_limits() {
        let mut c = call(true);
        c.name = "n".repeat(400);
        c.text = "t".repeat(5_000);
        let post = &decide(None, &c, 0).jobs[0].payload;
        assert_eq!(
            post["blocks"][0]["text"]["text"]
                .as_str()
                .unwrap()
                .chars()
                .count(),
            150
        );
        assert_eq!(
            post["blocks"][1]["text"]["text"]
                .as_str()
                .unwrap()
                .chars()
                .count(),
            3_000
        );
        assert_eq!(
            post["text"].as_str().unwrap().len(),
            5_000,
            "the fallback text is whole"
        );
    }
}
