//! Threshold alerts end to end with the fake Mode and Slack: enrichment of Mode run
//! events, once-per-incident posts, resolution, failed and purged runs, the full
//! dbt -> Mode -> alert -> Slack chain, and alert state across a restart.

use crate::support::fake::{recorder, FakeMode, FakeSlack};
use crate::support::{
    dbt_completed, evaluated, eventually, example_rule, send_dbt, send_mode_run_completed, Daemon,
    Setup, FINANCE_VARS,
};
use serde_json::{json, Value};

const SECRET: &str = "alerts-test-secret-2";
const HOOK_TOKEN: &str = "mode-hook-token-7";
const REPORT: &str = "2b3c4d5e6f70";

fn setup(mode: &FakeMode, slack: &FakeSlack) -> Setup {
    let setup = Setup::dbt(SECRET, 3, 10, 40).section(FINANCE_VARS);
    slack
        .configure(mode.configure(setup, Some(HOOK_TOKEN)))
        .rule("revenue_floor.rhai", &example_rule("revenue_floor.rhai"))
        .rule(
            "mode_run_failed.rhai",
            &example_rule("mode_run_failed.rhai"),
        )
}

/// Posts a Mode webhook for `run` of the report; returns the event id.
async fn mode_webhook(daemon: &Daemon, host: &str, run: &str) -> String {
    let url = format!("{host}/api/acme/reports/{REPORT}/runs/{run}");
    send_mode_run_completed(daemon, HOOK_TOKEN, &url).await
}

fn revenue(value: f64) -> Vec<(&'static str, Value)> {
    vec![(
        "Daily revenue",
        json!([{"order_date": "2026-08-06", "total_amt_usd": value}, {"order_date": "2026-08-05", "total_amt_usd": 2000}]),
    )]
}

/// Waits until the event is evaluated and all actions are finished.
async fn quiet(daemon: &Daemon, event_id: &str) -> String {
    let block = evaluated(daemon, event_id).await;
    eventually(daemon, "actions to finish", || {
        let listing = daemon.cli_ok(&["actions"]);
        (!listing.contains("[pending]")
            && !listing.contains("[running]")
            && !listing.contains("[retrying]"))
        .then_some(())
    })
    .await;
    block
}

#[tokio::test]
async fn one_post_per_incident_and_one_resolution() {
    let (mode, slack) = (FakeMode::start().await, FakeSlack::start().await);
    let daemon = Daemon::start(setup(&mode, &slack));
    for (i, value) in [950.0, 900.0, 800.0].iter().enumerate() {
        let run = format!("low{i}");
        mode.add_run(REPORT, &run, "succeeded", Some(revenue(*value)));
        let id = mode_webhook(&daemon, "https://modeanalytics.com", &run).await;
        quiet(&daemon, &id).await;
    }
    assert_eq!(
        slack.posts(),
        vec![(
            "#finance".to_string(),
            "Revenue on 2026-08-06 was 950.0, under 1000.0".to_string()
        )],
        "one post while the value stays under the floor"
    );
    // Every fetch used Basic auth on the configured base: run, report, query runs, results.
    let paths: Vec<String> = mode
        .requests()
        .iter()
        .filter(|r| r.path.contains("/low0"))
        .map(|r| r.path.clone())
        .collect();
    assert_eq!(
        paths,
        vec![
            format!("/api/acme/reports/{REPORT}/runs/low0"),
            format!("/api/acme/reports/{REPORT}/runs/low0/query_runs"),
            format!("/api/acme/reports/{REPORT}/runs/low0/query_runs/qr0/results/content.json"),
        ]
    );
    assert!(mode.requests().iter().all(|r| r
        .header("authorization")
        .is_some_and(|a| a.starts_with("Basic "))));

    mode.add_run(REPORT, "ok1", "succeeded", Some(revenue(1500.0)));
    let id = mode_webhook(&daemon, "https://modeanalytics.com", "ok1").await;
    quiet(&daemon, &id).await;
    mode.add_run(REPORT, "ok2", "succeeded", Some(revenue(1600.0)));
    let id = mode_webhook(&daemon, "https://modeanalytics.com", "ok2").await;
    quiet(&daemon, &id).await;
    let posts = slack.posts();
    assert_eq!(posts.len(), 2, "{posts:?}");
    // The resolution goes to the channel id Slack answered the first post with.
    let finance = slack.messages()[0].channel_id.clone();
    assert_eq!(posts[0].0, "#finance");
    assert_eq!(posts[1], (finance, "Resolved: revenue-floor".to_string()));
}

#[tokio::test]
async fn failed_and_purged_runs_reach_the_rules() {
    let (mode, slack) = (FakeMode::start().await, FakeSlack::start().await);
    let daemon = Daemon::start(setup(&mode, &slack).rule(
        "purged.rhai",
        r#"if event.run_state == "succeeded" && event.result_errors.len() > 0 { slack_post(`no rows: ${event.result_errors}`); }"#,
    ));
    mode.add_run(REPORT, "bad1", "failed", None);
    let id = mode_webhook(&daemon, "https://app.mode.com", "bad1").await;
    quiet(&daemon, &id).await;
    let shown: Value = serde_json::from_str(&daemon.cli_ok(&["events", "--show", &id])).unwrap();
    assert_eq!(shown["run_state"], "failed");
    assert_eq!(shown["verified"], true);
    assert_eq!(
        shown["run_url"],
        format!("https://app.mode.com/acme/reports/{REPORT}/runs/bad1")
    );
    assert!(shown.get("results").is_none(), "{shown}");
    assert!(
        !mode
            .requests()
            .iter()
            .any(|r| r.path.contains("bad1/query_runs")),
        "no results fetch for a failed run"
    );
    assert!(
        slack
            .posts()
            .iter()
            .any(|(c, t)| c == "#finance" && t.starts_with("Mode report Daily revenue failed:")),
        "{:?}",
        slack.posts()
    );

    // Results purged (404): the event still reaches the rules, with the error.
    mode.add_run(
        REPORT,
        "old1",
        "succeeded",
        Some(vec![("Daily revenue", json!([]))]),
    );
    mode.state.lock().unwrap().faults.add(
        "old1/query_runs/qr0/results",
        1,
        crate::support::fake::Reply::json(
            404,
            json!({"id": "not_found", "message": "run results not found"}),
        ),
    );
    let id = mode_webhook(&daemon, "https://app.mode.com", "old1").await;
    quiet(&daemon, &id).await;
    assert!(
        slack
            .posts()
            .iter()
            .any(|(_, t)| t.starts_with("no rows: ") && t.contains("mode: HTTP 404")),
        "{:?}",
        slack.posts()
    );
    let health: Value = daemon.get_json("/healthz").await;
    assert_eq!(health["status"], "ok");
}

#[tokio::test]
async fn the_payload_host_is_never_contacted() {
    let (mode, slack) = (FakeMode::start().await, FakeSlack::start().await);
    let (evil, evil_log) = recorder().await;
    let daemon = Daemon::start(setup(&mode, &slack));
    mode.add_run(REPORT, "r1", "succeeded", Some(revenue(5000.0)));
    let id = mode_webhook(&daemon, &format!("http://{evil}"), "r1").await;
    quiet(&daemon, &id).await;
    assert!(
        mode.requests()
            .iter()
            .any(|r| r.path == format!("/api/acme/reports/{REPORT}/runs/r1")),
        "the configured api_base was asked"
    );
    assert!(
        evil_log.lock().unwrap().is_empty(),
        "the host in the payload was contacted"
    );
}

#[tokio::test]
async fn dbt_to_mode_to_alert_to_slack_and_state_survives_a_restart() {
    let (mode, slack) = (FakeMode::start().await, FakeSlack::start().await);
    let mut daemon = Daemon::start(setup(&mode, &slack).rule(
        "chain.rhai",
        &format!(r#"if event.type == "dbt.job.run.completed" && event.run_status == "Success" {{ mode_run("{REPORT}"); }}"#),
    ));
    let answer = send_dbt(
        &daemon,
        SECRET,
        dbt_completed("wev_c1", "nightly", "Success"),
    )
    .await;
    quiet(&daemon, answer["event_id"].as_str().unwrap()).await;
    let run = mode
        .state
        .lock()
        .unwrap()
        .runs
        .last()
        .expect("mode_run started a run")
        .token
        .clone();

    // The run finishes in Mode, and Mode sends its webhook.
    mode.complete(&run, "succeeded", revenue(10.0));
    let id = mode_webhook(&daemon, "https://modeanalytics.com", &run).await;
    quiet(&daemon, &id).await;
    assert_eq!(
        slack.posts(),
        vec![(
            "#finance".to_string(),
            "Revenue on 2026-08-06 was 10.0, under 1000.0".to_string()
        )]
    );

    // Restart: the incident is still open, so another low run posts nothing.
    let (status, _) = daemon.stop();
    assert!(status.success());
    daemon.spawn();
    mode.add_run(REPORT, "again", "succeeded", Some(revenue(20.0)));
    let id = mode_webhook(&daemon, "https://modeanalytics.com", "again").await;
    let block = quiet(&daemon, &id).await;
    assert!(block.contains("rule revenue_floor: fired"), "{block}");
    assert_eq!(
        slack.posts().len(),
        1,
        "no second post for the same incident: {:?}",
        slack.posts()
    );
}
