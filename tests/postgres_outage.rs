//! PostgreSQL stops under load (docs/behaviour.md section 10): while it is down, webhooks get 503,
//! never 200, within 5 s, and /healthz says why; when it is back, intake and jobs resume
//! without a restart, and nothing acknowledged is lost.
//!
//! A test binary of its own: it stops the test server, which no other test may be using
//! then (cargo runs test binaries one at a time).

mod support;

use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::Value;
use support::fake::FakeSlack;
use support::{dbt_completed, eventually, fresh_postgres, sign, Daemon, Setup};

const SECRET: &str = "outage-secret-9";

/// `pg_ctl ARGS` on the test server, as the user it runs as.
fn pg_ctl(args: &[&str]) {
    let pg_ctl = std::env::var("FRESHET_TEST_PG_CTL").expect("FRESHET_TEST_PG_CTL");
    let data = std::env::var("FRESHET_TEST_PG_DATA").expect("FRESHET_TEST_PG_DATA");
    let user = std::env::var("FRESHET_TEST_PG_USER").unwrap_or_default();
    let mut command = if unsafe { libc::geteuid() } == 0 {
        let mut c = Command::new("runuser");
        c.args(["-u", &user, "--", &pg_ctl]);
        c
    } else {
        Command::new(&pg_ctl)
    };
    command.args(["-D", &data]).args(args);
    if let Ok(log) = std::env::var("FRESHET_TEST_PG_LOG") {
        command.args(["-l", &log]);
    }
    let status = command.status().unwrap();
    assert!(status.success(), "pg_ctl {args:?}");
}

/// Starts the test server when dropped (a failing test must not leave it stopped).
struct StartOnDrop(bool);

impl Drop for StartOnDrop {
    fn drop(&mut self) {
        if self.0 {
            pg_ctl(&["-w", "start"]);
        }
    }
}

#[cfg_attr(
    not(freshet_postgres_tests),
    ignore = "needs PostgreSQL: build with FRESHET_TEST_DATABASE_URL set (source .ci/postgres.sh)"
)]
#[tokio::test]
async fn a_postgres_outage_gets_503_and_work_resumes_after_it() {
    let url = fresh_postgres().await;
    let slack = FakeSlack::start().await;
    let daemon = Daemon::start(
        slack
            .configure(Setup {
                journal_keys: "url = { env = \"T_DB\" }\nlease_seconds = 3".into(),
                ..Setup::new(
                    "[dbt]\nwebhook_secrets = [{ env = \"T_SECRET\" }]\n[actions]\nmax_attempts = 50\nbackoff_initial_ms = 100\nbackoff_max_ms = 500\n",
                )
            })
            .env("T_SECRET", SECRET)
            .env("T_DB", &url)
            .rule("post.rhai", r#"if event.source == "dbt" { slack_post(`event ${event.id}`); }"#),
    );
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(20))
        .build()
        .unwrap();
    let send = |i: usize| {
        let body = dbt_completed(&format!("wev_out{i}"), "x", "Success");
        let request = client
            .post(daemon.url("/webhooks/dbt"))
            .header("Authorization", sign(SECRET, &body))
            .body(body);
        async move {
            let started = Instant::now();
            let status = request
                .send()
                .await
                .map(|r| r.status().as_u16())
                .unwrap_or(0);
            (i, status, started.elapsed())
        }
    };
    let mut acknowledged = Vec::new();
    for i in 0..20 {
        let (i, status, _) = send(i).await;
        assert_eq!(status, 200);
        acknowledged.push(i);
    }

    pg_ctl(&["-m", "fast", "-w", "stop"]);
    // Started again whatever happens next: the other tests need the server.
    let restart = StartOnDrop(true);
    let mut refused = 0;
    for i in 20..26 {
        let (i, status, took) = send(i).await;
        assert_ne!(
            status, 200,
            "event {i} was acknowledged while PostgreSQL was down"
        );
        assert_eq!(status, 503, "event {i}");
        assert!(took < Duration::from_secs(6), "the 503 took {took:?}");
        refused += 1;
    }
    assert_eq!(refused, 6);
    let health = client.get(daemon.url("/healthz")).send().await.unwrap();
    assert_eq!(health.status(), 503);
    let health: Value = health.json().await.unwrap();
    assert!(
        health["error"].as_str().unwrap().contains("PostgreSQL"),
        "{health}"
    );

    pg_ctl(&["-w", "start"]);
    std::mem::forget(restart);
    eventually(&daemon, "/healthz ok again", || {
        let output = Command::new("curl")
            .args(["-s", &daemon.url("/healthz")])
            .output()
            .ok()?;
        let health: Value = serde_json::from_slice(&output.stdout).ok()?;
        (health["status"] == "ok").then_some(())
    })
    .await;
    for i in 26..46 {
        let (i, status, _) = send(i).await;
        assert_eq!(status, 200, "event {i} after the outage");
        acknowledged.push(i);
    }
    // Nothing acknowledged is lost: each event's post arrives.
    eventually(&daemon, "every acknowledged event acted on", || {
        let posts = slack.posts();
        acknowledged
            .iter()
            .all(|i| {
                let text = format!("event dbt:wev_out{i}");
                posts.iter().any(|(_, t)| *t == text)
            })
            .then_some(())
    })
    .await;
}
