//! Fault tests, bounded in count and time, loopback only: a crash with 40+ events pending
//! against a failing service, a barrage of hostile requests, and 100 concurrent events.

use crate::support::fake::{FakeSlack, Reply, SLACK_WEBHOOK_PATH};
use crate::support::{dbt_completed, eventually, send_dbt, sign, Daemon, Setup};
use freshet::journal::{Admin, SqliteJournal};

const SECRET: &str = "faults-test-secret-8";
const MODE_HOOK: &str = "faults-mode-hook-3";

fn setup(slack: &FakeSlack, backoff_ms: u64) -> Setup {
    let setup = Setup::new(&format!(
        r#"
[dbt]
webhook_secrets = [{{ env = "T_SECRET" }}]

[mode]
api_base = "http://127.0.0.1:9"
workspace = "acme"
webhook_token = {{ env = "T_HOOK" }}

[actions]
max_attempts = 1000
backoff_initial_ms = {backoff_ms}
backoff_max_ms = {backoff_ms}
"#
    ))
    .env("T_SECRET", SECRET)
    .env("T_HOOK", MODE_HOOK);
    slack.configure(setup).rule(
        "post.rhai",
        r#"if event.source == "dbt" { slack_post(`event ${event.id}`); }"#,
    )
}

fn journal(daemon: &Daemon) -> SqliteJournal {
    SqliteJournal::open(&daemon.dir.join("journal.db")).unwrap()
}

fn assert_each_posted_once(slack: &FakeSlack, expected: usize) {
    let mut posts: Vec<String> = slack.posts().into_iter().map(|(_, text)| text).collect();
    assert_eq!(posts.len(), expected, "posts: {posts:#?}");
    posts.sort();
    posts.dedup();
    assert_eq!(posts.len(), expected, "a post was delivered twice");
}

#[tokio::test]
async fn kill_9_with_40_events_pending_loses_and_doubles_nothing() {
    let slack = FakeSlack::start().await;
    slack.state.lock().unwrap().faults.add(
        SLACK_WEBHOOK_PATH,
        100_000,
        Reply::text(500, "rollup_error"),
    );
    // 5 s between attempts: once each job has failed once, nothing is in flight.
    let mut daemon = Daemon::start(setup(&slack, 5000));
    for i in 0..45 {
        send_dbt(
            &daemon,
            SECRET,
            dbt_completed(&format!("wev_f{i}"), "nightly", "Success"),
        )
        .await;
    }
    eventually(
        &daemon,
        "45 actions that failed once, none in flight",
        || {
            let jobs = journal(&daemon).jobs(None, 1000).unwrap();
            let answered = slack.log.lock().unwrap().len();
            (jobs.len() == 45 && jobs.iter().all(|j| j.status == "retrying") && answered == 45)
                .then_some(())
        },
    )
    .await;
    daemon.kill();
    slack.state.lock().unwrap().faults.heal();
    daemon.spawn();
    eventually(&daemon, "every action delivered", || {
        let jobs = journal(&daemon).jobs(None, 1000).unwrap();
        (jobs.len() == 45 && jobs.iter().all(|j| j.status == "succeeded")).then_some(())
    })
    .await;
    assert_each_posted_once(&slack, 45);
}

/// A deterministic stream of pseudo-random bytes (no dependency, same every run).
fn noise(seed: &mut u64, len: usize) -> Vec<u8> {
    (0..len)
        .map(|_| {
            *seed = seed
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            (*seed >> 33) as u8
        })
        .collect()
}

#[tokio::test]
async fn a_barrage_of_hostile_requests_gets_only_4xx() {
    let slack = FakeSlack::start().await;
    let daemon = Daemon::start(setup(&slack, 10));
    let client = reqwest::Client::new();
    let mut seed = 42u64;
    let mut statuses = Vec::new();
    let nested_depth = 5000;
    let nested = format!("{}{}", "[".repeat(nested_depth), "]".repeat(nested_depth)).into_bytes();
    for i in 0..300 {
        let dbt = daemon.url("/webhooks/dbt");
        let mode = daemon.url(&format!("/webhooks/mode/{MODE_HOOK}"));
        let request = match i % 10 {
            // Random bytes, unsigned and signed.
            0 => client.post(&dbt).body(noise(&mut seed, 1 + i * 7)),
            1 => {
                let body = noise(&mut seed, 1 + i * 3);
                client.post(&dbt).header("Authorization", sign(SECRET, &body)).body(body)
            }
            // Wrong methods.
            2 => client.get(&dbt),
            3 => client.put(&mode).body("{}"),
            4 => client.delete(daemon.url("/healthz")),
            // Wrong content type, and invalid UTF-8, correctly signed.
            5 => {
                let body = b"\xff\xfe\xfd{\"eventId\": \"\xc3\x28\"}".to_vec();
                client.post(&dbt).header("Content-Type", "text/xml").header("Authorization", sign(SECRET, &body)).body(body)
            }
            // Deeply nested JSON, correctly signed.
            6 => client.post(&dbt).header("Authorization", sign(SECRET, &nested)).body(nested.clone()),
            // Huge headers.
            7 => client.post(&dbt).header("X-Padding", "a".repeat(200_000)).body("{}"),
            // Mode: garbage, wrong token, other workspace, path tricks.
            8 => client.post(&mode).body(noise(&mut seed, 64)),
            _ => client.post(&mode).body(format!(
                r#"{{"event":"report_run_completed","report_run_url":"https://app.mode.com/api/acme/reports/../../x/{i}/runs/%2e%2e"}}"#
            )),
        };
        let status = match request.send().await {
            Ok(response) => response.status().as_u16(),
            Err(error) => panic!(
                "request {i} failed at the transport level: {error}\nlog:\n{}",
                daemon.log()
            ),
        };
        statuses.push((i, status));
    }
    let not_4xx: Vec<_> = statuses
        .iter()
        .filter(|(_, s)| !(400..500).contains(s))
        .collect();
    assert!(not_4xx.is_empty(), "answers outside 4xx: {not_4xx:?}");
    let health = client.get(daemon.url("/healthz")).send().await.unwrap();
    assert_eq!(health.status(), 200);
    assert!(
        journal(&daemon).events(10, None).unwrap().is_empty(),
        "nothing hostile was journaled"
    );
    // And it still takes real work.
    send_dbt(
        &daemon,
        SECRET,
        dbt_completed("wev_after", "nightly", "Success"),
    )
    .await;
}

#[tokio::test]
async fn a_hundred_concurrent_events_are_all_journaled_and_acted_on() {
    let slack = FakeSlack::start().await;
    let daemon = Daemon::start(setup(&slack, 10));
    let client = reqwest::Client::new();
    let mut tasks = Vec::new();
    for i in 0..100 {
        let body = dbt_completed(&format!("wev_c{i}"), "nightly", "Success");
        let request = client
            .post(daemon.url("/webhooks/dbt"))
            .header("Authorization", sign(SECRET, &body))
            .body(body);
        tasks.push(tokio::spawn(async move {
            request.send().await.map(|r| r.status().as_u16())
        }));
    }
    for task in tasks {
        assert_eq!(task.await.unwrap().unwrap(), 200);
    }
    assert_eq!(journal(&daemon).events(1000, None).unwrap().len(), 100);
    eventually(&daemon, "100 delivered actions", || {
        let jobs = journal(&daemon).jobs(None, 1000).unwrap();
        (jobs.len() == 100 && jobs.iter().all(|j| j.status == "succeeded")).then_some(())
    })
    .await;
    assert_each_posted_once(&slack, 100);
}
