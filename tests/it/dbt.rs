//! docs/behaviour.md section 13: why a dbt run failed (the failed steps' real artifacts,
//! read from a fake dbt Cloud Admin API), dbt jobs as actions (`dbt_run`, its tagged
//! cause and adoption after a lost answer), chains across dbt, and dbt Core through
//! `freshet send dbt-core`.

use serde_json::{json, Value};

use crate::support::fake::*;
use crate::support::*;

const SECRET: &str = "dbt-section-13-secret";
const REVENUE_ERROR: &str =
    r#"Binder Error: Referenced column "discount" not found in FROM clause!"#;

/// A dbt Cloud webhook for run `run` of the fake's account and job.
fn run_webhook(event_id: &str, event_type: &str, run: i64, status: &str, reason: &str) -> Vec<u8> {
    serde_json::to_vec(&json!({
        "accountId": DBT_ACCOUNT, "webhooksID": "wsu_1", "eventId": event_id,
        "timestamp": "2026-12-06T05:02:20Z", "eventType": event_type, "webhookName": "freshet",
        "data": {"jobId": DBT_JOB.to_string(), "jobName": "Nightly", "runId": run.to_string(),
                 "environmentId": "1234", "environmentName": "Production",
                 "projectName": "shop", "projectId": DBT_PROJECT.to_string(),
                 "runStatus": status, "runStatusCode": if status == "Success" { 10 } else { 20 },
                 "runStatusMessage": "None", "runReason": reason,
                 "runStartedAt": "2026-12-06T05:00:05Z", "runFinishedAt": "2026-12-06T05:02:15Z"}
    }))
    .unwrap()
}

/// The first Slack post that announces a failed run (the shipped rule's "... errored").
async fn failure_post(daemon: &Daemon, slack: &FakeSlack, what: &str) -> String {
    eventually(daemon, what, || {
        slack
            .posts()
            .into_iter()
            .map(|(_, text)| text)
            .find(|text| text.contains("errored"))
    })
    .await
}

fn show(daemon: &Daemon, id: &str) -> Value {
    serde_json::from_str(&daemon.cli_ok(&["events", "--show", id])).unwrap()
}

fn setup(dbt: &FakeDbtCloud, slack: &FakeSlack, dbt_keys: &str) -> Setup {
    let setup = dbt.configure(Setup::dbt(SECRET, 3, 50, 200), dbt_keys);
    slack
        .configure(setup)
        .rule("dbt_failures.rhai", &example_rule("dbt_failures.rhai"))
        .env("RUST_LOG", "trace")
}

/// The failed run reaches the rules with dbt's real messages and the owners from the
/// manifest; both deliveries of the run share one fetch, made once dbt has ingested the
/// artifacts; a successful run is not fetched at all; the token is in no log line.
#[tokio::test]
async fn a_failed_run_reaches_the_rules_with_its_failures_and_owners() {
    let (dbt, slack) = (FakeDbtCloud::start().await, FakeSlack::start().await);
    // dbt has not ingested the artifacts when `errored` arrives: two 404s first.
    dbt.with_run(FAILED_RUN, |run| run.ingest_after = 2);
    let daemon = Daemon::start(setup(&dbt, &slack, "fetch_owners = true"));

    let success = run_webhook(
        "wev_ok",
        "job.run.completed",
        69_999_999,
        "Success",
        "Scheduled",
    );
    let ok_id = send_dbt(&daemon, SECRET, success).await["event_id"]
        .as_str()
        .unwrap()
        .to_string();
    evaluated(&daemon, &ok_id).await;
    assert!(dbt.requests().is_empty(), "a successful run was fetched");

    let errored = run_webhook(
        "wev_errored",
        "job.run.errored",
        FAILED_RUN,
        "Errored",
        "Scheduled",
    );
    let completed = run_webhook(
        "wev_completed",
        "job.run.completed",
        FAILED_RUN,
        "Errored",
        "Scheduled",
    );
    send_dbt(&daemon, SECRET, errored).await;
    send_dbt(&daemon, SECRET, completed).await;
    evaluated(&daemon, "dbt:wev_errored").await;
    evaluated(&daemon, "dbt:wev_completed").await;

    let event = show(&daemon, "dbt:wev_completed");
    assert_eq!(event["verified"], true, "{event}");
    assert_eq!(
        event["run_url"],
        format!("https://cloud.getdbt.com/deploy/{DBT_ACCOUNT}/projects/{DBT_PROJECT}/runs/{FAILED_RUN}/")
    );
    assert!(event["status_message"]
        .as_str()
        .unwrap()
        .contains("revenue"));
    let failures = event["failures"].as_array().unwrap();
    assert_eq!(failures.len(), 3, "{event}");
    let revenue = &failures[0];
    assert_eq!(revenue["node"], "model.shop.revenue");
    assert_eq!(revenue["name"], "revenue");
    assert_eq!(revenue["resource_type"], "model");
    assert_eq!(revenue["status"], "error");
    assert_eq!(revenue["step"], "Invoke dbt with `dbt build`");
    assert!(
        revenue["message"].as_str().unwrap().contains(REVENUE_ERROR),
        "{revenue}"
    );
    assert_eq!(revenue["owner"], "finance-data@example.com");
    assert_eq!(revenue["tags"], json!(["finance", "nightly"]));
    let not_null = &failures[2];
    assert_eq!(
        not_null["node"],
        "test.shop.not_null_orders_amount.106140f9fd"
    );
    assert_eq!(not_null["status"], "fail");
    assert_eq!(
        not_null["message"],
        "Got 1 result, configured to fail if != 0"
    );
    assert_eq!(
        not_null["owner"], "dana@example.com",
        "a test takes its model's owner"
    );
    // The other delivery got the same failures, from the same fetch.
    assert_eq!(
        show(&daemon, "dbt:wev_errored")["failures"],
        event["failures"]
    );
    let run_reads = dbt.requests_to(&format!("/runs/{FAILED_RUN}/"));
    let run_gets = run_reads
        .iter()
        .filter(|s| s.path.ends_with(&format!("/runs/{FAILED_RUN}/")))
        .count();
    let results = run_reads
        .iter()
        .filter(|s| s.path.ends_with("/run_results.json"))
        .count();
    let manifests = run_reads
        .iter()
        .filter(|s| s.path.ends_with("/manifest.json"))
        .count();
    assert_eq!(
        (run_gets, results, manifests),
        (1, 3, 1),
        "two 404s, then one read each"
    );
    for seen in dbt.requests() {
        assert_eq!(
            seen.header("authorization"),
            Some(format!("Token {DBT_TOKEN}").as_str())
        );
    }
    assert!(dbt
        .requests_to("/artifacts/run_results.json")
        .iter()
        .all(|s| s.query == "step=4"));

    // The shipped rule posts once per run (on `completed`), naming model, error and owner.
    let text = failure_post(&daemon, &slack, "the failure post").await;
    assert!(
        text.contains("revenue error (owner: finance-data@example.com)"),
        "{text}"
    );
    assert!(
        text.contains("Binder Error: Referenced column \"discount\" not found"),
        "{text}"
    );
    assert!(
        text.contains("not_null_orders_amount fail (owner: dana@example.com)"),
        "{text}"
    );
    assert_eq!(slack.posts().len(), 1, "one post for the two deliveries");
    let log = daemon.log();
    assert!(log.contains("TRACE"));
    assert!(!log.contains(DBT_TOKEN), "the dbt token reached the log");
}

/// A step whose artifact is missing, or larger than `dbt.max_artifact_bytes`, gives the
/// tail of its logs instead.
#[tokio::test]
async fn a_missing_or_too_large_artifact_gives_the_log_tail() {
    let (dbt, slack) = (FakeDbtCloud::start().await, FakeSlack::start().await);
    // run_results.json is about 5.7 KB: over this limit.
    let daemon = Daemon::start(setup(
        &dbt,
        &slack,
        "max_artifact_bytes = 4000\nartifact_wait_seconds = 0",
    ));
    let too_large = run_webhook("wev_large", "job.run.errored", FAILED_RUN, "Errored", "x");
    send_dbt(&daemon, SECRET, too_large).await;
    evaluated(&daemon, "dbt:wev_large").await;
    let failures = show(&daemon, "dbt:wev_large")["failures"].clone();
    assert_eq!(failures.as_array().unwrap().len(), 1, "{failures}");
    let tail = failures[0]["message"].as_str().unwrap();
    assert_eq!(failures[0]["step"], "Invoke dbt with `dbt build`");
    assert!(failures[0].get("node").is_none());
    assert!(
        tail.ends_with("Done. PASS=2 WARN=0 ERROR=3 SKIP=1 TOTAL=6"),
        "{tail}"
    );
    assert!(tail.lines().count() <= 50 && tail.len() <= 4096);

    // Another failed run whose step wrote no artifacts at all.
    let bare = FAILED_RUN + 500;
    let mut steps = failed_build_steps();
    steps[3].artifacts.clear();
    dbt.add_failed_run(bare, steps);
    let missing = run_webhook("wev_missing", "job.run.completed", bare, "Errored", "x");
    send_dbt(&daemon, SECRET, missing).await;
    evaluated(&daemon, "dbt:wev_missing").await;
    let failures = show(&daemon, "dbt:wev_missing")["failures"].clone();
    assert_eq!(failures.as_array().unwrap().len(), 1, "{failures}");
    assert!(
        failures[0]["message"]
            .as_str()
            .unwrap()
            .ends_with("TOTAL=6"),
        "{failures}"
    );
    let asked = dbt.requests_to(&format!("/runs/{bare}/artifacts/run_results.json"));
    assert_eq!(asked.len(), 1, "artifact_wait_seconds = 0: asked once");
}

/// dbt Cloud down: the enrichment is retried, then dead and listed with a failure event;
/// the rules have not seen the run as if it had no failures. Once dbt is back, `freshet
/// retry` fetches it and the rule posts the failures.
#[tokio::test]
async fn a_dbt_outage_ends_dead_and_retry_completes_it() {
    let (dbt, slack) = (FakeDbtCloud::start().await, FakeSlack::start().await);
    dbt.state.lock().unwrap().faults.add(
        &format!("/runs/{FAILED_RUN}/"),
        3,
        Reply::json(503, json!({"status": {"code": 503, "is_success": false}})),
    );
    let daemon = Daemon::start(setup(&dbt, &slack, ""));
    let body = run_webhook("wev_down", "job.run.errored", FAILED_RUN, "Errored", "x");
    send_dbt(&daemon, SECRET, body).await;
    let dead = eventually(&daemon, "the dead enrichment", || {
        let dead = daemon.cli_ok(&["actions", "--status", "dead"]);
        dead.contains("enrich").then_some(dead)
    })
    .await;
    assert!(
        dead.contains("dbt:wev_down") && dead.contains("dbt: HTTP 503"),
        "{dead}"
    );
    assert!(daemon.cli_ok(&["events"]).contains("freshet.action.failed"));
    assert!(slack.posts().iter().all(|(_, t)| !t.contains("errored")));
    let job = dead
        .split_whitespace()
        .next()
        .unwrap()
        .trim_start_matches('#');
    daemon.cli_ok(&["retry", job]);
    let text = failure_post(&daemon, &slack, "the post after the retry").await;
    assert!(text.contains("revenue error: "), "{text}");
    assert!(text.contains(REVENUE_ERROR), "{text}");

    // A replay fetches the run again (not the fetch of a moment ago).
    let run_gets = || {
        dbt.requests()
            .iter()
            .filter(|s| s.path.ends_with(&format!("/runs/{FAILED_RUN}/")))
            .count()
    };
    let before = run_gets();
    let replayed = daemon.cli_ok(&["replay", "dbt:wev_down"]);
    assert!(
        replayed.contains("fetched from dbt Cloud first"),
        "{replayed}"
    );
    eventually(&daemon, "the second post, after the replay", || {
        (slack
            .posts()
            .iter()
            .filter(|(_, t)| t.contains("errored"))
            .count()
            == 2)
            .then_some(())
    })
    .await;
    assert_eq!(run_gets(), before + 1);
}

/// `dbt_run` posts with `Authorization: Token` and a cause cut to 255 characters that
/// ends with its tag. A trigger whose answer is lost (the client times out) is not made
/// again: the next attempt finds the run by its tag and adopts it. That run's webhook
/// carries `triggered_by`, and a rule answering each success with `dbt_run` stops at the
/// chain depth.
#[tokio::test]
async fn dbt_run_is_triggered_once_adopted_after_a_lost_answer_and_chains_stop() {
    let (dbt, slack) = (FakeDbtCloud::start().await, FakeSlack::start().await);
    dbt.state.lock().unwrap().slow_triggers = 1;
    let rule = format!(
        r#"if event.type == "dbt.job.run.completed" && event.run_status == "Success" {{
    dbt_run({DBT_JOB}, #{{ cause: "{}", git_branch: "main", steps_override: ["dbt build -s revenue+"] }});
}}"#,
        "x".repeat(300)
    );
    let mut setup = setup(&dbt, &slack, "").rule("rebuild.rhai", &rule);
    setup.extra_config = setup.extra_config.replace(
        "backoff_max_ms = 200\n",
        "backoff_max_ms = 200\ntimeout_ms = 1000\n",
    );
    let daemon = Daemon::start(setup);

    let first = run_webhook(
        "wev_chain0",
        "job.run.completed",
        69_000_000,
        "Success",
        "Scheduled",
    );
    send_dbt(&daemon, SECRET, first).await;
    let actions = eventually(&daemon, "the adopted trigger", || {
        let listing = daemon.cli_ok(&["actions", "--status", "succeeded"]);
        listing.contains("dbt_run").then_some(listing)
    })
    .await;
    let triggered = dbt.triggered();
    assert_eq!(triggered.len(), 1, "exactly one POST: {actions}");
    assert_eq!(
        dbt.requests().iter().filter(|s| s.method == "POST").count(),
        1
    );
    let post = dbt
        .requests()
        .into_iter()
        .find(|s| s.method == "POST")
        .unwrap();
    assert_eq!(
        post.header("authorization"),
        Some(format!("Token {DBT_TOKEN}").as_str())
    );
    assert_eq!(
        post.path,
        format!("/api/v2/accounts/{DBT_ACCOUNT}/jobs/{DBT_JOB}/run/")
    );
    let cause = triggered[0].cause.clone();
    assert_eq!(cause.chars().count(), 255, "{cause}");
    assert!(cause.starts_with("xxx"));
    let tag = cause.rsplit(' ').next().unwrap().to_string();
    assert!(
        tag.starts_with("[freshet:") && tag.ends_with(']'),
        "{cause}"
    );
    assert_eq!(triggered[0].body["git_branch"], "main");
    assert_eq!(
        triggered[0].body["steps_override"],
        json!(["dbt build -s revenue+"])
    );
    let listed = dbt
        .requests_to("/runs/")
        .into_iter()
        .find(|s| s.method == "GET")
        .unwrap();
    assert!(
        listed
            .query
            .contains(&format!("job_definition_id={DBT_JOB}")),
        "{}",
        listed.query
    );
    let jobs = daemon.cli_ok(&["actions", "--status", "succeeded", "--json"]);
    let job: Value =
        serde_json::from_str(jobs.lines().find(|l| l.contains("dbt_run")).unwrap()).unwrap();
    assert_eq!(job["result"]["run_id"], triggered[0].id, "{job}");
    assert_eq!(job["result"]["adopted"], true, "{job}");
    assert_eq!(job["attempt"], 2, "{actions}");
    assert!(job["result"]["run_url"]
        .as_str()
        .unwrap()
        .ends_with(&format!("/runs/{}/", triggered[0].id)));

    // dbt reports the run it started; each success is answered with dbt_run again.
    let mut depth_seen = Vec::new();
    for round in 1..=3 {
        let run = dbt.triggered().last().unwrap().clone();
        let id = format!("wev_chain{round}");
        let body = run_webhook(&id, "job.run.completed", run.id, "Success", &run.cause);
        send_dbt(&daemon, SECRET, body).await;
        evaluated(&daemon, &format!("dbt:{id}")).await;
        let event = show(&daemon, &format!("dbt:{id}"));
        depth_seen.push(event["chain_depth"].as_u64().unwrap());
        let by = &event["triggered_by"];
        assert_eq!(by["rule"], "rebuild", "{event}");
        assert!(by["action_id"].as_i64().unwrap() > 0);
        assert!(by["cause_event_id"]
            .as_str()
            .unwrap()
            .starts_with("dbt:wev_chain"));
        if round < 3 {
            eventually(&daemon, "the next trigger", || {
                (dbt.triggered().len() == round + 1).then_some(())
            })
            .await;
        }
    }
    assert_eq!(depth_seen, [1, 2, 3]);
    // At depth 3 the rule's call was not queued (evaluation has recorded that): three
    // dbt_run jobs in all.
    let all = daemon.cli_ok(&["actions", "--limit", "100"]);
    assert_eq!(all.matches("dbt_run").count(), 3, "{all}");
    assert!(daemon.log().contains("Chain depth limit reached"));
}

/// dbt Core: `freshet send dbt-core` of a real invocation's artifacts journals a
/// `dbt.job.run.completed` with `source = "dbt-core"`, `Errored`, the real failures and
/// owners, and the same rule posts them. A wrong signature is 401.
#[tokio::test]
async fn send_dbt_core_reports_a_real_invocation() {
    let slack = FakeSlack::start().await;
    let daemon = Daemon::start(
        slack
            .configure(Setup::dbt(SECRET, 3, 50, 200))
            .rule("dbt_failures.rhai", &example_rule("dbt_failures.rhai")),
    );
    let fixtures = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/dbt");
    let run_results = fixtures.join("run_results.json");
    let manifest = fixtures.join("manifest.json");
    // Run as a CI step would: only the dbt secret in its environment, not Slack's
    // (docs/behaviour.md section 17: send reads only the secret it signs with).
    let output = std::process::Command::new(BIN)
        .args([
            "send",
            "dbt-core",
            run_results.to_str().unwrap(),
            "--manifest",
            manifest.to_str().unwrap(),
            "--job",
            "nightly",
            "--url",
            &daemon.url("/webhooks/dbt-core"),
            "--config",
            daemon.config_path().to_str().unwrap(),
        ])
        .env_clear()
        .env("T_SECRET", SECRET)
        .output()
        .unwrap();
    let out = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success() && out.contains("-> 200"),
        "{out}{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let invocation: Value = serde_json::from_slice(&fixture("run_results.json")).unwrap();
    let id = format!(
        "dbt-core:{}",
        invocation["metadata"]["invocation_id"].as_str().unwrap()
    );
    evaluated(&daemon, &id).await;
    let event = show(&daemon, &id);
    assert_eq!(event["source"], "dbt-core");
    assert_eq!(event["type"], "dbt.job.run.completed");
    assert_eq!(event["run_status"], "Errored");
    assert_eq!(event["job_name"], "nightly");
    assert_eq!(event["failures"][0]["node"], "model.shop.revenue");
    assert_eq!(event["failures"][0]["owner"], "finance-data@example.com");
    assert_eq!(event["failures"][0]["step"], "dbt build");
    assert!(event["failures"][0]["message"]
        .as_str()
        .unwrap()
        .contains(REVENUE_ERROR));
    let text = failure_post(&daemon, &slack, "the dbt Core failure post").await;
    assert!(text.contains("dbt job nightly"), "{text}");
    assert!(
        text.contains("revenue error (owner: finance-data@example.com)"),
        "{text}"
    );

    let body = br#"{"invocation_id": "forged"}"#.to_vec();
    let response = reqwest::Client::new()
        .post(daemon.url("/webhooks/dbt-core"))
        .header("Authorization", sign("not-the-secret", &body))
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 401);
    assert!(!daemon.cli_ok(&["events"]).contains("forged"));
}
