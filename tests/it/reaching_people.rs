//! docs/behaviour.md section 14: alerts that reach people. The Block Kit layout, mentions
//! written where Slack notifies, the first post updated when the alert resolves, and
//! PagerDuty pages (trigger, resolve, retries) against fake Slack and PagerDuty.

use serde_json::{json, Value};

use crate::support::fake::*;
use crate::support::*;

const SECRET: &str = "section-14-secret";

/// A rule that fires `nightly` while the dbt job's runs fail.
const NIGHTLY: &str = r##"
if event.type == "dbt.job.run.completed" {
    alert("nightly", event.run_status != "Success", #{
        channel: "#data",
        text: `nightly ${event.run_status}`,
        fields: #{ "Run": event.run_id, "Job": event.job_name },
        url: "https://cloud.getdbt.com/deploy/1/projects/1/runs/777/",
        mention: ["U024BE7LH", "S0615G0KT", "@here", "ana@acme.com", "nobody@acme.com"],
        pagerduty: "data",
        severity: "critical"
    });
}
"##;

fn setup(slack: &FakeSlack, pagerduty: &FakePagerDuty) -> Setup {
    let setup = slack
        .configure(Setup::dbt(SECRET, 3, 50, 200))
        .section("[slack.users]\n\"ana@acme.com\" = \"U0ANA0001\"\n")
        .env("RUST_LOG", "trace");
    pagerduty.configure(setup)
}

async fn run(daemon: &Daemon, id: &str, status: &str) {
    send_dbt(daemon, SECRET, dbt_completed(id, "nightly", status)).await;
    evaluated(daemon, &format!("dbt:{id}")).await;
}

/// The firing post is Block Kit with the header, text, fields, context, button and the
/// fallback text, with every mention where Slack notifies; resolving updates that post in
/// place and replies in its thread. PagerDuty gets one incident, triggered and resolved
/// with `freshet/nightly`.
#[tokio::test]
async fn a_firing_alert_notifies_people_and_its_first_post_follows_it() {
    let (slack, pagerduty) = (FakeSlack::start().await, FakePagerDuty::start().await);
    let daemon = Daemon::start(setup(&slack, &pagerduty).rule("nightly.rhai", NIGHTLY));
    run(&daemon, "wev_n1", "Errored").await;
    let first = eventually(&daemon, "the firing post", || {
        slack.messages().first().cloned()
    })
    .await;
    let mentions = "<@U024BE7LH> <!subteam^S0615G0KT> <!here> <@U0ANA0001> nobody@acme.com";
    assert_eq!(first.text, format!("{mentions} nightly Errored"));
    let blocks = first.blocks.clone().expect("a Block Kit post");
    assert_eq!(
        blocks[0],
        json!({"type": "header", "text": {"type": "plain_text", "text": "nightly: firing", "emoji": true}})
    );
    assert_eq!(
        blocks[1]["text"]["text"],
        format!("{mentions} nightly Errored")
    );
    assert_eq!(
        blocks[2]["fields"],
        json!([{"type": "mrkdwn", "text": "*Job*\nnightly"}, {"type": "mrkdwn", "text": "*Run*\n777"}])
    );
    let context = blocks[3]["elements"][0]["text"].as_str().unwrap();
    assert!(
        context.starts_with("rule nightly · event dbt:wev_n1 · firing since "),
        "{context}"
    );
    assert_eq!(
        blocks[4]["elements"][0]["url"],
        "https://cloud.getdbt.com/deploy/1/projects/1/runs/777/"
    );
    assert_eq!(
        count_in_log(&daemon, "no [slack.users] entry"),
        1,
        "the unmapped address is logged once"
    );

    // Still failing: quiet. Then it succeeds: resolved.
    run(&daemon, "wev_n2", "Errored").await;
    run(&daemon, "wev_n3", "Success").await;
    let reply = eventually(&daemon, "the resolved reply", || {
        slack
            .messages()
            .into_iter()
            .find(|m| m.text == "Resolved: nightly")
    })
    .await;
    assert_eq!(reply.thread_ts.as_deref(), Some(first.ts.as_str()));
    let updated = eventually(&daemon, "the first post updated", || {
        slack
            .messages()
            .into_iter()
            .find(|m| m.ts == first.ts && m.edits == 1)
    })
    .await;
    let blocks = updated.blocks.unwrap();
    assert_eq!(blocks[0]["text"]["text"], "nightly: resolved");
    let context = blocks[3]["elements"][0]["text"].as_str().unwrap();
    assert!(context.contains(" after firing for "), "{context}");
    assert_eq!(slack.messages().len(), 2, "the update is not a new post");

    let events = eventually(&daemon, "the page resolved", || {
        let events = pagerduty.events();
        (events.len() == 2).then_some(events)
    })
    .await;
    assert_eq!(events[0]["event_action"], "trigger");
    assert_eq!(events[0]["dedup_key"], "freshet/nightly");
    assert_eq!(events[0]["payload"]["summary"], "nightly Errored");
    assert_eq!(events[0]["payload"]["severity"], "critical");
    assert_eq!(
        events[0]["payload"]["custom_details"],
        json!({"Job": "nightly", "Run": 777})
    );
    assert!(!events[0]["payload"]["source"].as_str().unwrap().is_empty());
    assert_eq!(
        events[1],
        json!({"routing_key": PAGERDUTY_KEY, "event_action": "resolve", "dedup_key": "freshet/nightly"})
    );
    let incidents = pagerduty.incidents();
    assert_eq!(incidents.len(), 1);
    assert!(!incidents[0].open && incidents[0].triggers == 1);
    assert!(
        !daemon.log().contains(PAGERDUTY_KEY),
        "the routing key reached the log"
    );
}

/// PagerDuty's 429 and 5xx are retried (the trigger lands once); 400 is final: the page
/// is dead and told. `pagerduty_event` sends exactly the fields the rule gave.
#[tokio::test]
async fn pages_are_retried_on_429_and_5xx_and_dead_on_400() {
    let (slack, pagerduty) = (FakeSlack::start().await, FakePagerDuty::start().await);
    {
        let mut state = pagerduty.state.lock().unwrap();
        state.faults.add(
            "/v2/enqueue",
            1,
            Reply::json(429, json!({"status": "throttled"})),
        );
        state.faults.add(
            "/v2/enqueue",
            1,
            Reply::json(503, json!({"status": "unavailable"})),
        );
    }
    let rule = r##"
if event.type == "dbt.job.run.completed" && event.job_name == "paged" {
    pagerduty_event(#{ action: "trigger", routing_key: "data", dedup_key: `dbt/${event.run_id}`,
                       summary: "dbt run failed", severity: "warning", details: #{ run: event.run_id } });
}
if event.type == "dbt.job.run.completed" && event.job_name == "refused" {
    pagerduty_event(#{ action: "trigger", routing_key: "data", summary: "will be refused" });
}
"##;
    let daemon = Daemon::start(setup(&slack, &pagerduty).rule("page.rhai", rule).rule(
        "action_failures.rhai",
        &example_rule("action_failures.rhai"),
    ));
    send_dbt(&daemon, SECRET, dbt_completed("wev_p1", "paged", "Errored")).await;
    let events = eventually(&daemon, "the page after a 429 and a 503", || {
        let events = pagerduty.events();
        (!events.is_empty()).then_some(events)
    })
    .await;
    assert_eq!(events.len(), 1, "{events:?}");
    let mut sent: Value = events[0].clone();
    assert!(sent["payload"]["source"]
        .as_str()
        .is_some_and(|s| !s.is_empty()));
    sent["payload"].as_object_mut().unwrap().remove("source");
    assert_eq!(
        sent,
        json!({"routing_key": PAGERDUTY_KEY, "event_action": "trigger", "dedup_key": "dbt/777",
               "payload": {"summary": "dbt run failed", "severity": "warning", "custom_details": {"run": 777}}})
    );
    let requests = pagerduty.log.lock().unwrap().len();
    assert_eq!(requests, 3, "a 429, a 503, then the accepted event");

    pagerduty.state.lock().unwrap().faults.add(
        "/v2/enqueue",
        1,
        Reply::json(
            400,
            json!({"status": "invalid event", "message": "Event object is invalid"}),
        ),
    );
    send_dbt(
        &daemon,
        SECRET,
        dbt_completed("wev_p2", "refused", "Errored"),
    )
    .await;
    let dead = eventually(&daemon, "the refused page dead", || {
        let dead = daemon.cli_ok(&["actions", "--status", "dead"]);
        dead.contains("pagerduty_event").then_some(dead)
    })
    .await;
    assert!(
        dead.contains("pagerduty: HTTP 400") && dead.contains("attempt 1/3"),
        "{dead}"
    );
    assert!(!dead.contains(PAGERDUTY_KEY));
}

/// A muted alert is tracked but posts and pages nothing; its resolution, made while
/// muted, is posted at the first call after the mute ends, the alert still OK.
#[tokio::test]
async fn a_muted_alert_posts_and_pages_nothing_until_unmuted() {
    let (slack, pagerduty) = (FakeSlack::start().await, FakePagerDuty::start().await);
    let daemon = Daemon::start(setup(&slack, &pagerduty).rule("nightly.rhai", NIGHTLY));
    run(&daemon, "wev_m1", "Errored").await;
    eventually(&daemon, "the firing post and page", || {
        (slack.messages().len() == 1 && pagerduty.events().len() == 1).then_some(())
    })
    .await;
    let muted = daemon.cli_ok(&[
        "alerts",
        "--mute",
        "nightly",
        "--for",
        "1h",
        "--reason",
        "warehouse maintenance",
    ]);
    assert!(muted.contains("alert nightly muted until"), "{muted}");
    let listing = daemon.cli_ok(&["alerts"]);
    assert!(
        listing.contains("[firing]") && listing.contains("(warehouse maintenance)"),
        "{listing}"
    );

    run(&daemon, "wev_m2", "Success").await;
    let state = daemon.cli_ok(&["alerts", "--json"]);
    assert!(
        state.contains(r#""state":"ok""#),
        "tracked while muted: {state}"
    );
    let all = daemon.cli_ok(&["actions", "--limit", "100"]);
    assert_eq!(
        all.matches("pagerduty_event").count(),
        1,
        "nothing queued while muted: {all}"
    );
    assert_eq!(slack.messages().len(), 1);

    let unmuted = daemon.cli_ok(&["alerts", "--unmute", "nightly"]);
    assert!(unmuted.contains("unmuted"), "{unmuted}");
    run(&daemon, "wev_m3", "Success").await;
    eventually(&daemon, "the resolution held back while muted", || {
        let resolved = slack
            .messages()
            .iter()
            .any(|m| m.text == "Resolved: nightly");
        let paged = pagerduty
            .events()
            .iter()
            .any(|e| e["event_action"] == "resolve");
        (resolved && paged).then_some(())
    })
    .await;
    assert!(!daemon.cli_ok(&["alerts"]).contains("muted"));
    let missing = daemon.cli(&["alerts", "--mute", "nope", "--for", "1h"]);
    assert!(!missing.status.success());
    assert!(String::from_utf8_lossy(&missing.stderr).contains("no alert named nope"));
}
