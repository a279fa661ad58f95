//! Stateful threshold alerts (docs/behaviour.md section 6): decide, from an alert's stored state
//! and a rule's `alert(name, firing, ..)` call, whether the state changes and what to post.
//!
//! Pure functions: the journal applies the decision inside the evaluation's transaction,
//! so one transition yields at most one post even if an evaluation is retried.

use serde_json::{json, Value};

use crate::actions::ActionRequest;
use crate::journal::{job_key, AlertCall, AlertState, AlertTransition};

/// The alert call a rule's `alert(..)` made, as the journal decides it; None for the
/// other actions.
pub fn call_of(request: &ActionRequest, rule: &str) -> Option<AlertCall> {
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
    })
}

/// What an `alert(..)` call leads to.
#[derive(Debug, Clone, PartialEq)]
pub struct Decision {
    /// The state to store, if it changes (new transition or a renotification).
    pub new_state: Option<AlertState>,
    /// The `slack_post` payload to queue, with a job key unique to this post.
    pub post: Option<(String, Value)>,
    /// A short description for `freshet test` and logs.
    pub summary: String,
}

/// [`decide`] as the journal applies it (`Evaluation::decide_alert`).
pub fn transition(previous: Option<&AlertState>, call: &AlertCall, now_ms: i64) -> AlertTransition {
    let decision = decide(previous, call, now_ms);
    AlertTransition {
        new_state: decision.new_state,
        post: decision.post,
    }
}

/// Decides the effect of `call` given the stored state `previous`, at `now_ms`.
pub fn decide(previous: Option<&AlertState>, call: &AlertCall, now_ms: i64) -> Decision {
    let was_firing = previous.is_some_and(|p| p.firing);
    let version = previous.map(|p| p.version).unwrap_or(0);
    let payload = |text: String| match &call.channel {
        Some(channel) => json!({ "channel": channel, "text": text }),
        None => json!({ "text": text }),
    };
    // Posted with the bot token, an alert's later posts go in the thread of the post
    // that announced it (docs/behaviour.md section 7): they name that post's job.
    let in_thread = |text: String, firing_version: i64| {
        let mut post = payload(text);
        if call.channel.is_some() {
            post["thread_of"] = json!(firing_key(&call.name, firing_version));
        }
        post
    };
    match (was_firing, call.firing) {
        (false, true) => {
            let version = version + 1;
            Decision {
                new_state: Some(AlertState {
                    name: call.name.clone(),
                    firing: true,
                    version,
                    since_ms: now_ms,
                    last_notified_ms: Some(now_ms),
                }),
                post: Some((firing_key(&call.name, version), payload(call.text.clone()))),
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
            if due {
                Decision {
                    new_state: Some(AlertState {
                        last_notified_ms: Some(now_ms),
                        ..previous.clone()
                    }),
                    post: Some((
                        job_key(&[
                            "alert",
                            &call.name,
                            &format!("v{}", previous.version),
                            "renotify",
                            &now_ms.to_string(),
                        ]),
                        in_thread(call.text.clone(), previous.version),
                    )),
                    summary: "still firing, renotify interval passed: posts again".into(),
                }
            } else {
                Decision {
                    new_state: None,
                    post: None,
                    summary: "still firing: stays quiet".into(),
                }
            }
        }
        (true, false) => {
            let version = version + 1;
            let post = call.resolve.then(|| {
                (
                    job_key(&["alert", &call.name, &format!("v{version}"), "resolved"]),
                    // `version - 1`: the transition to firing that this one ends.
                    in_thread(format!("Resolved: {}", call.name), version - 1),
                )
            });
            Decision {
                new_state: Some(AlertState {
                    name: call.name.clone(),
                    firing: false,
                    version,
                    since_ms: now_ms,
                    last_notified_ms: previous.and_then(|p| p.last_notified_ms),
                }),
                summary: if post.is_some() {
                    "firing -> ok: posts a resolved message".into()
                } else {
                    "firing -> ok: resolve is off, posts nothing".into()
                },
                post,
            }
        }
        (false, false) => Decision {
            new_state: None,
            post: None,
            summary: "ok: nothing to do".into(),
        },
    }
}

/// The key of the job that posts alert `name`'s announcement at state `version`.
fn firing_key(name: &str, version: i64) -> String {
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
        }
    }

    #[test]
    fn fires_once_then_resolves_once() {
        let first = decide(None, &call(true), 1_000);
        let state = first.new_state.clone().unwrap();
        assert!(state.firing && state.version == 1);
        assert_eq!(
            first.post.as_ref().unwrap().1,
            json!({"channel": "#fin", "text": "low"})
        );

        let again = decide(Some(&state), &call(true), 2_000);
        assert!(again.post.is_none() && again.new_state.is_none());

        let resolved = decide(Some(&state), &call(false), 3_000);
        let resolved_state = resolved.new_state.unwrap();
        assert!(!resolved_state.firing && resolved_state.version == 2);
        let (_, post) = resolved.post.unwrap();
        assert_eq!(post["text"], "Resolved: revenue-floor");
        assert_eq!(
            post["thread_of"],
            json!(first.post.as_ref().unwrap().0),
            "the resolution goes in the thread of the firing post"
        );

        assert!(decide(Some(&resolved_state), &call(false), 4_000)
            .post
            .is_none());
    }

    #[test]
    fn renotifies_after_the_interval_only() {
        let mut c = call(true);
        c.renotify_minutes = Some(10);
        let state = decide(None, &c, 0).new_state.unwrap();
        assert!(decide(Some(&state), &c, 9 * 60_000).post.is_none());
        let later = decide(Some(&state), &c, 10 * 60_000);
        assert!(later.post.is_some());
        assert_eq!(later.new_state.unwrap().last_notified_ms, Some(10 * 60_000));
    }

    #[test]
    fn resolve_false_posts_nothing_but_changes_state() {
        let mut c = call(true);
        let state = decide(None, &c, 0).new_state.unwrap();
        c.firing = false;
        c.resolve = false;
        let decision = decide(Some(&state), &c, 1);
        assert!(decision.post.is_none());
        assert!(!decision.new_state.unwrap().firing);
    }
}
