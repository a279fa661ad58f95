//! Intake against the real daemon on 127.0.0.1:0: signatures, de-duplication, status codes,
//! Mode's token route, health and metrics, and no secrets in the log.

use crate::support::{fake, sample, sign, Daemon, Setup};
use serde_json::Value;

const SECRET: &str = "dbt-secret-3f9a1c";
const OLD_SECRET: &str = "dbt-old-secret-77b2";
const MODE_TOKEN: &str = "mode-token-5e8d0b";

fn setup() -> Setup {
    Setup::new(
        r#"
[dbt]
webhook_secrets = [{ env = "T_DBT_SECRET" }, { env = "T_DBT_OLD_SECRET" }]

[mode]
api_base = "http://127.0.0.1:9"
workspace = "acme"
webhook_token = { env = "T_MODE_TOKEN" }
"#,
    )
    .env("T_DBT_SECRET", SECRET)
    .env("T_DBT_OLD_SECRET", OLD_SECRET)
    .env("T_MODE_TOKEN", MODE_TOKEN)
}

async fn post(daemon: &Daemon, path: &str, auth: Option<&str>, body: Vec<u8>) -> (u16, Value) {
    let mut request = reqwest::Client::new().post(daemon.url(path)).body(body);
    if let Some(auth) = auth {
        request = request.header("Authorization", auth);
    }
    let response = request.send().await.unwrap();
    let status = response.status().as_u16();
    let text = response.text().await.unwrap();
    (
        status,
        serde_json::from_str(&text).unwrap_or(Value::String(text)),
    )
}

fn events_listing(daemon: &Daemon) -> String {
    daemon.cli_ok(&["events", "--limit", "100"])
}

#[tokio::test]
async fn signed_dbt_webhooks_are_journaled_once() {
    let daemon = Daemon::start(setup());
    let body = sample("dbt-job-run-completed.json");

    let (status, answer) = post(
        &daemon,
        "/webhooks/dbt",
        Some(&sign(SECRET, &body)),
        body.clone(),
    )
    .await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["event_id"], "dbt:wev_2L6ZDoilyiWzKkSA59Gmc2d7FDD");
    assert_eq!(answer["duplicate"], false);
    assert!(events_listing(&daemon).contains("dbt:wev_2L6ZDoilyiWzKkSA59Gmc2d7FDD"));

    let (status, answer) = post(
        &daemon,
        "/webhooks/dbt",
        Some(&sign(SECRET, &body)),
        body.clone(),
    )
    .await;
    assert_eq!(
        (status, answer["duplicate"].clone()),
        (200, Value::Bool(true))
    );
    assert_eq!(events_listing(&daemon).matches("dbt:wev_").count(), 1);

    // `events --show` gives the normalized event with integer ids.
    let shown: Value = serde_json::from_str(&daemon.cli_ok(&[
        "events",
        "--show",
        "dbt:wev_2L6ZDoilyiWzKkSA59Gmc2d7FDD",
    ]))
    .unwrap();
    assert_eq!(shown["job_id"], 123);
    assert_eq!(shown["run_status"], "Success");
    assert_eq!(shown["type"], "dbt.job.run.completed");
}

#[tokio::test]
async fn bad_signatures_are_refused_and_nothing_is_journaled() {
    let daemon = Daemon::start(setup());
    let body = sample("dbt-job-run-started.json");
    let wrong = sign("not-the-secret", &body);
    assert_eq!(
        post(&daemon, "/webhooks/dbt", Some(&wrong), body.clone())
            .await
            .0,
        401
    );
    assert_eq!(
        post(&daemon, "/webhooks/dbt", None, body.clone()).await.0,
        401
    );
    assert_eq!(
        post(&daemon, "/webhooks/dbt", Some("sha256=00"), body.clone())
            .await
            .0,
        401
    );
    // The right signature over different bytes.
    let mut tampered = body.clone();
    tampered.push(b' ');
    assert_eq!(
        post(
            &daemon,
            "/webhooks/dbt",
            Some(&sign(SECRET, &body)),
            tampered
        )
        .await
        .0,
        401
    );
    assert!(events_listing(&daemon).contains("no events"));
}

#[tokio::test]
async fn uppercase_hex_and_the_rotation_secret_are_accepted() {
    let daemon = Daemon::start(setup());
    let started = sample("dbt-job-run-started.json");
    let upper = sign(SECRET, &started).to_uppercase();
    assert_eq!(
        post(&daemon, "/webhooks/dbt", Some(&upper), started)
            .await
            .0,
        200
    );
    let errored = sample("dbt-job-run-errored.json");
    assert_eq!(
        post(
            &daemon,
            "/webhooks/dbt",
            Some(&sign(OLD_SECRET, &errored)),
            errored
        )
        .await
        .0,
        200
    );
    assert_eq!(events_listing(&daemon).matches("dbt:wev_").count(), 2);
}

#[tokio::test]
async fn malformed_and_oversized_bodies() {
    let mut setup = setup();
    setup.max_body_bytes = Some(1024);
    let daemon = Daemon::start(setup);

    let not_json = b"this is not json".to_vec();
    let (status, answer) = post(
        &daemon,
        "/webhooks/dbt",
        Some(&sign(SECRET, &not_json)),
        not_json,
    )
    .await;
    assert_eq!(status, 400);
    assert!(
        answer["error"].as_str().unwrap().contains("not JSON"),
        "{answer}"
    );

    let not_dbt = br#"{"hello": "world"}"#.to_vec();
    assert_eq!(
        post(
            &daemon,
            "/webhooks/dbt",
            Some(&sign(SECRET, &not_dbt)),
            not_dbt
        )
        .await
        .0,
        400
    );

    let huge = vec![b'x'; 4096];
    let (status, answer) = post(
        &daemon,
        "/webhooks/dbt",
        Some(&sign(SECRET, &huge)),
        huge.clone(),
    )
    .await;
    assert_eq!(status, 413, "{answer}");

    // Without a Content-Length (chunked), the limit still holds.
    let chunks = futures_util::stream::iter(vec![
        Ok::<_, std::io::Error>(huge[..2048].to_vec()),
        Ok(huge[2048..].to_vec()),
    ]);
    let response = reqwest::Client::new()
        .post(daemon.url("/webhooks/dbt"))
        .header("Authorization", sign(SECRET, &huge))
        .body(reqwest::Body::wrap_stream(chunks))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 413);
    assert!(events_listing(&daemon).contains("no events"));
}

#[tokio::test]
async fn mode_token_route() {
    let daemon = Daemon::start(setup());
    let body = sample("mode-webhook-report-run-completed.json");
    let (status, answer) = post(&daemon, "/webhooks/mode/wrong-token", None, body.clone()).await;
    assert_eq!(status, 404, "{answer}");
    let (status, answer) = post(
        &daemon,
        &format!("/webhooks/mode/{MODE_TOKEN}"),
        None,
        body.clone(),
    )
    .await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(
        answer["event_id"],
        "mode:report_run_completed:/api/acme/reports/2b3c4d5e6f70/runs/4d5e6f708192"
    );
    let (_, again) = post(&daemon, &format!("/webhooks/mode/{MODE_TOKEN}"), None, body).await;
    assert_eq!(
        again["duplicate"], true,
        "Mode retries de-duplicate on the resource path"
    );

    let other_workspace = br#"{"event":"report_run_completed","report_run_url":"https://app.mode.com/api/globex/reports/a1/runs/b2"}"#.to_vec();
    let (status, answer) = post(
        &daemon,
        &format!("/webhooks/mode/{MODE_TOKEN}"),
        None,
        other_workspace,
    )
    .await;
    assert_eq!(status, 400, "{answer}");
    assert_eq!(
        post(
            &daemon,
            &format!("/webhooks/mode/{MODE_TOKEN}"),
            None,
            b"{".to_vec()
        )
        .await
        .0,
        400
    );
}

#[tokio::test]
async fn health_and_metrics() {
    let daemon = Daemon::start(setup());
    let body = sample("dbt-job-run-completed.json");
    post(
        &daemon,
        "/webhooks/dbt",
        Some(&sign(SECRET, &body)),
        body.clone(),
    )
    .await;
    post(&daemon, "/webhooks/dbt", None, body).await;

    let health = reqwest::get(daemon.url("/healthz")).await.unwrap();
    assert_eq!(health.status().as_u16(), 200);
    let health: Value = health.json().await.unwrap();
    assert_eq!(health["status"], "ok");
    assert_eq!(health["journal"], "ok");
    assert!(
        health["rules_loaded"].is_number() && health["rule_errors"].is_number(),
        "{health}"
    );

    let metrics = daemon.get_text("/metrics").await;
    assert!(
        metrics.contains(
            r#"freshet_events_received_total{source="dbt",type="dbt.job.run.completed"} 1"#
        ),
        "{metrics}"
    );
    assert!(
        metrics.contains(
            r#"freshet_webhooks_rejected_total{source="dbt",reason="signature_missing"} 1"#
        ),
        "{metrics}"
    );
    assert!(metrics.contains("freshet_journal_backlog"), "{metrics}");
    assert!(metrics.contains("freshet_rules_loaded"), "{metrics}");

    let (status, _) = post(&daemon, "/nowhere", None, vec![]).await;
    assert_eq!(status, 404);
}

#[tokio::test]
async fn the_log_never_shows_a_secret() {
    let daemon = Daemon::start(setup());
    let body = sample("dbt-job-run-completed.json");
    let good = sign(SECRET, &body);
    post(&daemon, "/webhooks/dbt", Some(&good), body.clone()).await;
    post(
        &daemon,
        "/webhooks/dbt",
        Some(&sign("guess", &body)),
        body.clone(),
    )
    .await;
    post(
        &daemon,
        &format!("/webhooks/mode/{MODE_TOKEN}"),
        None,
        sample("mode-webhook-report-run-started.json"),
    )
    .await;
    post(
        &daemon,
        "/webhooks/mode/not-it",
        None,
        sample("mode-webhook-report-run-started.json"),
    )
    .await;
    daemon.signal("HUP");
    daemon.wait_for_log(
        "Configuration reloaded.",
        std::time::Duration::from_secs(10),
    );
    let log = daemon.log();
    assert!(
        log.contains("Event journaled."),
        "the log is captured at debug level:\n{log}"
    );
    for secret in [SECRET, OLD_SECRET, MODE_TOKEN, good.as_str()] {
        assert!(
            !log.contains(secret),
            "the log contains a secret ({secret}):\n{log}"
        );
    }
}

#[tokio::test]
async fn a_mode_url_naming_another_host_never_reaches_it() {
    let (evil, evil_log) = fake::recorder().await;
    let daemon = Daemon::start(setup());
    let body = format!(
        r#"{{"event":"report_run_completed","report_run_url":"http://{evil}/api/acme/reports/2b3c4d5e6f70/runs/4d5e6f708192"}}"#
    );
    let (status, answer) = post(
        &daemon,
        &format!("/webhooks/mode/{MODE_TOKEN}"),
        None,
        body.into_bytes(),
    )
    .await;
    assert_eq!(status, 200, "{answer}");
    // Let the pipeline finish with the event (enrichment included), so the checks below
    // cover every request the daemon makes for it.
    crate::support::evaluated(&daemon, answer["event_id"].as_str().unwrap()).await;
    // The event keeps only the path; the enrichment, whatever it does, targets api_base.
    let shown: Value = serde_json::from_str(&daemon.cli_ok(&[
        "events",
        "--show",
        answer["event_id"].as_str().unwrap(),
    ]))
    .unwrap();
    assert_eq!(
        shown["resource_path"],
        "/api/acme/reports/2b3c4d5e6f70/runs/4d5e6f708192"
    );
    assert!(!shown
        .to_string()
        .replace(&shown["raw"].to_string(), "")
        .contains(&evil.to_string()));
    assert!(
        evil_log.lock().unwrap().is_empty(),
        "the payload's host was contacted"
    );
}

/// docs/behaviour.md section 12: dbt Cloud turns a webhook off after 5 failed deliveries in
/// a row, so freshet counts the answers other than 2xx since the last 2xx per source
/// (`/metrics`), and `/healthz` shows the count past 2, until a delivery succeeds.
#[tokio::test]
async fn failed_deliveries_in_a_row_are_counted_until_one_succeeds() {
    let daemon = Daemon::start(setup());
    let body = sample("dbt-job-run-completed.json");
    for _ in 0..3 {
        let (status, _) = post(&daemon, "/webhooks/dbt", Some("00"), body.clone()).await;
        assert_eq!(status, 401);
    }
    let metrics = daemon.get_text("/metrics").await;
    assert!(
        metrics.contains("freshet_webhook_consecutive_failures{source=\"dbt\"} 3"),
        "{metrics}"
    );
    let health = daemon.get_json("/healthz").await;
    assert_eq!(health["webhook_consecutive_failures"]["dbt"], 3, "{health}");
    let (status, _) = post(
        &daemon,
        "/webhooks/dbt",
        Some(&sign(SECRET, &body)),
        body.clone(),
    )
    .await;
    assert_eq!(status, 200);
    let metrics = daemon.get_text("/metrics").await;
    assert!(
        metrics.contains("freshet_webhook_consecutive_failures{source=\"dbt\"} 0"),
        "{metrics}"
    );
    let health = daemon.get_json("/healthz").await;
    assert!(
        health.get("webhook_consecutive_failures").is_none(),
        "{health}"
    );
}
