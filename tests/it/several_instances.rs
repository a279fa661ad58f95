//! Several `freshet serve` instances on one PostgreSQL journal (docs/behaviour.md section 10),
//! against the server `.ci/postgres.sh` starts (`FRESHET_TEST_DATABASE_URL`; without it each test
//! says it is skipped). Each test has a database of its own.

use std::collections::BTreeMap;
use std::time::Duration;

use crate::support::fake::FakeSlack;
use crate::support::{
    dbt_completed, eventually, fresh_postgres, postgres_rows, sign, Daemon, Setup,
};
use serde_json::Value;

const SECRET: &str = "several-instances-secret-1";

fn instance_setup(slack: &FakeSlack, url: &str, rule: &str) -> Setup {
    let setup = Setup {
        journal_keys: "url = { env = \"T_DB\" }\nlease_seconds = 3".into(),
        ..Setup::dbt(SECRET, 5, 50, 200)
    };
    slack
        .configure(setup)
        .env("T_DB", url)
        .rule("post.rhai", rule)
}

const POST_EACH: &str = r#"if event.source == "dbt" { slack_post(`event ${event.id}`); }"#;

async fn post(daemon: &Daemon, body: Vec<u8>) -> (u16, Value) {
    let response = reqwest::Client::new()
        .post(daemon.url("/webhooks/dbt"))
        .header("Authorization", sign(SECRET, &body))
        .body(body)
        .timeout(Duration::from_secs(15))
        .send()
        .await
        .unwrap();
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

/// How many times each text was posted.
fn post_counts(slack: &FakeSlack) -> BTreeMap<String, usize> {
    let mut counts = BTreeMap::new();
    for (_, text) in slack.posts() {
        *counts.entry(text).or_default() += 1;
    }
    counts
}

/// The same signed event sent to both instances at once: journaled once (one
/// `duplicate: true`), acted on once.
#[cfg_attr(
    not(freshet_postgres_tests),
    ignore = "needs PostgreSQL: build with FRESHET_TEST_DATABASE_URL set (source .ci/postgres.sh)"
)]
#[tokio::test]
async fn one_event_sent_to_both_is_journaled_once_and_acted_on_once() {
    let url = fresh_postgres().await;
    let slack = FakeSlack::start().await;
    let a = Daemon::start(instance_setup(&slack, &url, POST_EACH));
    let b = Daemon::start(instance_setup(&slack, &url, POST_EACH));
    for i in 0..10 {
        let body = dbt_completed(&format!("wev_both{i}"), "x", "Success");
        let (first, second) = tokio::join!(post(&a, body.clone()), post(&b, body));
        assert_eq!((first.0, second.0), (200, 200));
        let duplicates = [&first.1, &second.1]
            .iter()
            .filter(|answer| answer["duplicate"] == true)
            .count();
        assert_eq!(duplicates, 1, "{first:?} {second:?}");
    }
    eventually(&a, "ten posts", || {
        (slack.posts().len() >= 10).then_some(())
    })
    .await;
    // Everything finished: nothing more can come.
    eventually(&a, "all jobs finished", || {
        let listing = a.cli_ok(&["actions", "--json"]);
        let done = listing
            .lines()
            .all(|l| l.contains(r#""status":"succeeded""#));
        (done && listing.lines().count() == 10).then_some(())
    })
    .await;
    assert!(
        post_counts(&slack).values().all(|n| *n == 1),
        "{:?}",
        post_counts(&slack)
    );
    // Who journaled what is shown.
    let events = a.cli_ok(&["events", "--limit", "3"]);
    assert!(events.contains("  by "), "{events}");
}

/// 200 events spread over two instances: every action runs exactly once.
#[cfg_attr(
    not(freshet_postgres_tests),
    ignore = "needs PostgreSQL: build with FRESHET_TEST_DATABASE_URL set (source .ci/postgres.sh)"
)]
#[tokio::test]
async fn two_hundred_events_over_two_instances_run_each_action_once() {
    let url = fresh_postgres().await;
    let slack = FakeSlack::start().await;
    let a = Daemon::start(instance_setup(&slack, &url, POST_EACH));
    let b = Daemon::start(instance_setup(&slack, &url, POST_EACH));
    let mut sends = Vec::new();
    for i in 0..200 {
        let target = if i % 2 == 0 { &a } else { &b };
        sends.push(post(
            target,
            dbt_completed(&format!("wev_many{i}"), "x", "Success"),
        ));
    }
    for (status, answer) in futures_util::future::join_all(sends).await {
        assert_eq!(status, 200, "{answer}");
        assert_eq!(answer["duplicate"], false);
    }
    eventually(&a, "200 posts", || {
        (slack.posts().len() >= 200).then_some(())
    })
    .await;
    eventually(&a, "all jobs finished", || {
        let rows = a.cli_ok(&["actions", "--json", "--limit", "1000"]);
        (rows.lines().count() == 200 && rows.lines().all(|l| l.contains(r#""status":"succeeded""#)))
            .then_some(())
    })
    .await;
    let counts = post_counts(&slack);
    assert_eq!(counts.len(), 200);
    assert!(
        counts.values().all(|n| *n == 1),
        "a post was delivered twice"
    );
    let runners = postgres_rows(
        &url,
        "SELECT DISTINCT locked_by FROM jobs WHERE queue = 'action'",
    )
    .await;
    eprintln!("actions ran on {} instance(s)", runners.len());
}

/// kill -9 one of two instances while it holds running jobs whose service is slow: the
/// other takes them over when the lease runs out, and every post is delivered. A post is
/// delivered twice only if the killed instance had sent it already (the at-least-once
/// window); the test names those.
#[cfg_attr(
    not(freshet_postgres_tests),
    ignore = "needs PostgreSQL: build with FRESHET_TEST_DATABASE_URL set (source .ci/postgres.sh)"
)]
#[tokio::test]
async fn a_killed_instances_jobs_are_taken_over_after_its_lease() {
    let url = fresh_postgres().await;
    let slack = FakeSlack::start().await;
    slack.state.lock().unwrap().delay_ms = 1500;
    let mut a = Daemon::start(instance_setup(&slack, &url, POST_EACH));
    let b = Daemon::start(instance_setup(&slack, &url, POST_EACH));
    let killed = a.instance_name();
    for i in 0..8 {
        let (status, _) = post(&a, dbt_completed(&format!("wev_kill{i}"), "x", "Success")).await;
        assert_eq!(status, 200);
    }
    // Wait until the instance to be killed holds a running post.
    let held = {
        let sql = format!(
            "SELECT id, payload FROM jobs WHERE queue = 'action' AND status = 'running' AND locked_by = '{killed}'"
        );
        let mut held = Vec::new();
        for _ in 0..400 {
            held = postgres_rows(&url, &sql).await;
            if !held.is_empty() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        assert!(!held.is_empty(), "the instance never held a running post");
        held.iter()
            .map(|row| row.get::<_, String>(1))
            .collect::<Vec<_>>()
    };
    a.kill();
    eventually(&b, "every post delivered", || {
        (post_counts(&slack).len() == 8).then_some(())
    })
    .await;
    eventually(&b, "every job finished", || {
        let listing = b.cli_ok(&["actions", "--json"]);
        (listing.lines().count() == 8
            && listing
                .lines()
                .all(|l| l.contains(r#""status":"succeeded""#)))
        .then_some(())
    })
    .await;
    let taken_over = postgres_rows(
        &url,
        &format!(
            "SELECT payload FROM jobs WHERE queue = 'action' AND attempt > 1 AND locked_by <> '{killed}'"
        ),
    )
    .await;
    assert!(
        !taken_over.is_empty(),
        "the surviving instance took over a job of the killed one"
    );
    let counts = post_counts(&slack);
    for (text, n) in &counts {
        assert!(*n <= 2, "{text} posted {n} times");
        if *n == 2 {
            let was_in_flight = held.iter().any(|payload| payload.contains(text.as_str()));
            assert!(
                was_in_flight,
                "{text} was posted twice but the killed instance had not sent it"
            );
            eprintln!("{text}: posted twice: the killed instance had sent it before it died (at least once)");
        }
    }
}

/// An alert evaluated by both instances at the same time fires once: its row is locked
/// in each evaluation's transaction.
#[cfg_attr(
    not(freshet_postgres_tests),
    ignore = "needs PostgreSQL: build with FRESHET_TEST_DATABASE_URL set (source .ci/postgres.sh)"
)]
#[tokio::test]
async fn an_alert_evaluated_by_both_at_once_fires_once() {
    let url = fresh_postgres().await;
    let slack = FakeSlack::start().await;
    let rule = r#"if event.source == "dbt" { alert("orders-late", true, "orders are late"); }"#;
    let a = Daemon::start(instance_setup(&slack, &url, rule));
    let b = Daemon::start(instance_setup(&slack, &url, rule));
    let mut sends = Vec::new();
    for i in 0..40 {
        let target = if i % 2 == 0 { &a } else { &b };
        sends.push(post(
            target,
            dbt_completed(&format!("wev_alert{i}"), "x", "Errored"),
        ));
    }
    futures_util::future::join_all(sends).await;
    eventually(&a, "40 events evaluated", || {
        let listing = a.cli_ok(&[
            "events",
            "--json",
            "--limit",
            "100",
            "--status",
            "evaluated",
        ]);
        (listing.lines().count() == 40).then_some(())
    })
    .await;
    eventually(&a, "the post delivered", || {
        (slack.posts().len() == 1).then_some(())
    })
    .await;
    // Settled, and still one.
    eventually(&a, "no job left", || {
        a.cli_ok(&["actions"]).contains("[succeeded]").then_some(())
    })
    .await;
    assert_eq!(slack.posts().len(), 1, "{:?}", slack.posts());
    let alerts = a.cli_ok(&["alerts"]);
    assert!(alerts.starts_with("orders-late  [firing]"), "{alerts}");
}

/// Every command works against the PostgreSQL journal.
#[cfg_attr(
    not(freshet_postgres_tests),
    ignore = "needs PostgreSQL: build with FRESHET_TEST_DATABASE_URL set (source .ci/postgres.sh)"
)]
#[tokio::test]
async fn the_commands_work_against_postgresql() {
    let url = fresh_postgres().await;
    let slack = FakeSlack::start().await;
    slack.state.lock().unwrap().faults.add(
        crate::support::fake::SLACK_WEBHOOK_PATH,
        5,
        crate::support::fake::Reply::text(404, "no_service"),
    );
    let a = Daemon::start(instance_setup(&slack, &url, POST_EACH));
    let (status, _) = post(&a, dbt_completed("wev_cli", "x", "Success")).await;
    assert_eq!(status, 200);
    let dead = eventually(&a, "the dead post", || {
        let dead = a.cli_ok(&["actions", "--status", "dead"]);
        dead.contains("slack_post").then_some(dead)
    })
    .await;
    assert!(dead.contains("no_service"), "{dead}");
    let shown: Value =
        serde_json::from_str(&a.cli_ok(&["events", "--show", "dbt:wev_cli"])).unwrap();
    assert_eq!(shown["type"], "dbt.job.run.completed");
    let id = dead
        .split_whitespace()
        .next()
        .unwrap()
        .trim_start_matches('#');
    slack.state.lock().unwrap().faults.heal();
    a.cli_ok(&["retry", id]);
    eventually(&a, "the retried post", || {
        (slack.posts().len() == 1).then_some(())
    })
    .await;
    assert!(a
        .cli_ok(&["replay", "dbt:wev_cli", "--dry-run"])
        .contains("slack_post"));
    a.cli_ok(&["replay", "dbt:wev_cli"]);
    eventually(&a, "the replayed post", || {
        (slack.posts().len() == 2).then_some(())
    })
    .await;
    a.cli_ok(&["alerts"]);
    let health: Value = a.get_json("/healthz").await;
    assert_eq!(health["journal"], "ok");
    let metrics = a.get_text("/metrics").await;
    assert!(metrics.contains("freshet_instance{instance="), "{metrics}");
}

/// docs/behaviour.md section 12 (bounded waits, a truthful health): while another
/// session holds a lock on freshet's tables, webhooks get 503 (the server gives up the
/// lock wait within the append budget), and `/healthz` answers within a second and does
/// not say ok; once the lock is gone, webhooks are journaled and `/healthz` is ok again.
#[cfg_attr(
    not(freshet_postgres_tests),
    ignore = "needs PostgreSQL: build with FRESHET_TEST_DATABASE_URL set (source .ci/postgres.sh)"
)]
#[tokio::test]
async fn a_locked_journal_answers_503_and_health_says_so_within_a_second() {
    let url = fresh_postgres().await;
    let slack = FakeSlack::start().await;
    let daemon = Daemon::start(instance_setup(&slack, &url, POST_EACH));
    let (status, _) = post(&daemon, dbt_completed("wev_before_lock", "x", "Success")).await;
    assert_eq!(status, 200);

    let (locker, connection) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(connection);
    // The two locks are taken one after the other, so a freshet transaction that holds
    // the second and wants the first can make PostgreSQL end one side as a deadlock:
    // the lock is then taken again.
    let mut tries = 0;
    while let Err(error) = locker
        .batch_execute("BEGIN; LOCK TABLE freshet.events, freshet.jobs IN ACCESS EXCLUSIVE MODE")
        .await
    {
        tries += 1;
        assert!(
            tries < 10
                && error.code() == Some(&tokio_postgres::error::SqlState::T_R_DEADLOCK_DETECTED),
            "{error}"
        );
        locker.batch_execute("ROLLBACK").await.unwrap();
    }
    // The health check first, before any webhook failed: its own probe finds the lock.
    let started = std::time::Instant::now();
    let health = reqwest::get(daemon.url("/healthz")).await.unwrap();
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "/healthz took {:?}",
        started.elapsed()
    );
    assert_eq!(health.status(), 503);
    let health: Value = health.json().await.unwrap();
    assert_ne!(health["journal"], "ok", "{health}");
    let started = std::time::Instant::now();
    let (status, answer) = post(&daemon, dbt_completed("wev_locked", "x", "Success")).await;
    assert_eq!(status, 503, "{answer}");
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "the 503 took {:?}",
        started.elapsed()
    );
    let health = reqwest::get(daemon.url("/healthz")).await.unwrap();
    assert_eq!(health.status(), 503, "still locked");

    locker.batch_execute("ROLLBACK").await.unwrap();
    let (status, answer) = post(&daemon, dbt_completed("wev_after_lock", "x", "Success")).await;
    assert_eq!(status, 200, "{answer}");
    let health = reqwest::get(daemon.url("/healthz")).await.unwrap();
    assert_eq!(health.status(), 200);
}
