//! Hostile clients, hostile rules and a journal that fails under the daemon (docs/behaviour.md
//! section 11). Every test talks to 127.0.0.1 only and is bounded in count and time; the two that
//! wait out the listener's timeouts take about 30 s and 60 s and run beside the others.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use crate::support::fake::{FakeSlack, Reply, SLACK_WEBHOOK_PATH};
use crate::support::{
    count_in_log, dbt_completed, evaluated, eventually, post_dbt, raise_own_file_limit, send_dbt,
    sign, Daemon, Setup,
};
use serde_json::Value;

const SECRET: &str = "hostile-test-secret-4";
const MODE_HOOK: &str = "hostile-mode-hook-token-9";

fn setup() -> Setup {
    Setup::dbt(SECRET, 3, 10, 20)
        .section(
            r#"[mode]
api_base = "http://127.0.0.1:9"
workspace = "acme"
webhook_token = { env = "T_HOOK" }"#,
        )
        .env("T_HOOK", MODE_HOOK)
}

/// A client with a timeout, so that a daemon that does not answer fails the test instead
/// of hanging it. The bound is generous: it is a liveness check, not a speed test.
fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap()
}

/// Whether the server has closed `stream` (reads give EOF or an error), waiting at most
/// `within`.
fn closed_by_server(stream: &mut TcpStream, within: Duration) -> bool {
    stream
        .set_read_timeout(Some(within.max(Duration::from_millis(1))))
        .unwrap();
    let mut buf = [0u8; 1024];
    loop {
        match stream.read(&mut buf) {
            Ok(0) => return true,
            // An answer (a 408, say) is fine: keep reading until the close.
            Ok(_) => continue,
            Err(error)
                if error.kind() == std::io::ErrorKind::WouldBlock
                    || error.kind() == std::io::ErrorKind::TimedOut =>
            {
                return false
            }
            Err(_) => return true,
        }
    }
}

/// docs/behaviour.md section 11 (connections): at the cap with no idle connection, the
/// connection whose request body has been arriving longest is closed to make room, so
/// 260 slow, unsigned bodies at a cap of 200 cannot keep /healthz or a signed webhook
/// waiting: each is answered within 1 s.
#[tokio::test]
async fn slow_bodies_cannot_hold_every_slot() {
    let daemon = Daemon::start(Setup {
        server_keys: "max_connections = 200".into(),
        ..setup()
    });
    let addr = daemon.addr;
    let mut held = Vec::new();
    for _ in 0..260 {
        let mut stream = TcpStream::connect(addr).unwrap();
        stream
            .write_all(b"POST /webhooks/dbt HTTP/1.1\r\nHost: x\r\nAuthorization: 00\r\nContent-Length: 100000\r\n\r\n{\"eventId\":")
            .unwrap();
        held.push(stream);
    }
    // Every slot holds a request whose body is still arriving, and the rest wait in the
    // backlog: the daemon has started closing the slowest to take them in.
    eventually(&daemon, "the cap reached with no idle connection", || {
        (count_in_log(
            &daemon,
            "closed the one whose request body has been arriving longest",
        ) > 0)
            .then_some(())
    })
    .await;
    let started = Instant::now();
    let health = client().get(daemon.url("/healthz")).send().await.unwrap();
    assert_eq!(health.status(), 200);
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "/healthz took {:?}",
        started.elapsed()
    );
    let started = Instant::now();
    let answer = post_dbt(&daemon, SECRET, dbt_completed("wev_slots", "x", "Success")).await;
    assert_eq!(answer.status(), 200);
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "the signed webhook took {:?}",
        started.elapsed()
    );
    drop(held);
}

/// docs/behaviour.md section 11 (request smuggling): a request with both `Content-Length`
/// and `Transfer-Encoding` is answered 400 and its connection closed (RFC 9112 section
/// 6.1), so no proxy in front can be made to read the body differently; nothing is
/// journaled.
#[tokio::test]
async fn content_length_with_transfer_encoding_is_refused_and_closed() {
    let daemon = Daemon::start(setup());
    let body = r#"{"eventId":"wev_smuggle","eventType":"job.run.completed","data":{}}"#;
    let mut stream = TcpStream::connect(daemon.addr).unwrap();
    let request = format!(
        "POST /webhooks/dbt HTTP/1.1\r\nHost: x\r\nAuthorization: {}\r\n\
         Content-Length: {}\r\nTransfer-Encoding: chunked\r\n\r\n{:x}\r\n{body}\r\n0\r\n\r\n",
        sign(SECRET, body.as_bytes()),
        body.len(),
        body.len(),
    );
    stream.write_all(request.as_bytes()).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut answer = Vec::new();
    let _ = stream.read_to_end(&mut answer);
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 400"), "{answer}");
    assert!(
        answer.to_ascii_lowercase().contains("connection: close"),
        "{answer}"
    );
    assert!(closed_by_server(&mut stream, Duration::from_secs(5)));
    assert_eq!(daemon.cli_ok(&["events"]).trim(), "no events");
}

/// docs/behaviour.md section 11 (connections): with both file limits at 1,024, 1,100 idle
/// connections are held open; the daemon closes the longest-idle ones to make room, and /healthz
/// and signed webhooks keep being answered.
#[tokio::test]
async fn idle_connections_cannot_lock_out_health_checks_and_webhooks() {
    let own_limit = raise_own_file_limit();
    assert!(
        own_limit > 1_300,
        "this test needs 1,300 open files, has {own_limit}"
    );
    let daemon = Daemon::start(Setup {
        file_limit: Some(1024),
        ..setup()
    });
    let mut idle: Vec<TcpStream> = (0..1_100)
        .map(|_| TcpStream::connect(daemon.addr).expect("connect"))
        .collect();
    let client = client();
    for round in 0..3 {
        let health = client.get(daemon.url("/healthz")).send().await;
        let health = health.unwrap_or_else(|e| panic!("round {round}: /healthz: {e}"));
        assert_eq!(health.status(), 200);
        let body = dbt_completed(&format!("wev_idle{round}"), "nightly", "Success");
        let answer = client
            .post(daemon.url("/webhooks/dbt"))
            .header("Authorization", sign(SECRET, &body))
            .body(body)
            .send()
            .await
            .unwrap_or_else(|e| panic!("round {round}: webhook: {e}"));
        assert_eq!(answer.status(), 200);
    }
    // The oldest idle connections were the ones closed to make room.
    let mut closed = 0;
    for stream in idle.iter_mut().take(300) {
        if closed_by_server(stream, Duration::from_millis(1)) {
            closed += 1;
        }
    }
    assert!(closed > 100, "only {closed} of the oldest 300 were closed");
    assert!(
        !closed_by_server(idle.last_mut().unwrap(), Duration::from_millis(1)),
        "the newest idle connection is still open"
    );
}

/// docs/behaviour.md section 11: a request head that is not complete within 30 s is closed
/// (slowloris); a keep-alive connection with no request is closed after 60 s.
#[tokio::test]
async fn slow_heads_and_idle_keep_alive_connections_are_closed() {
    let daemon = Daemon::start(setup());
    let addr = daemon.addr;
    let slow = tokio::task::spawn_blocking(move || {
        let mut stream = TcpStream::connect(addr).unwrap();
        let start = Instant::now();
        stream
            .write_all(b"POST /webhooks/dbt HTTP/1.1\r\nHost: x\r\n")
            .unwrap();
        // One header byte every 2 s keeps the connection busy, never completes the head.
        loop {
            if closed_by_server(&mut stream, Duration::from_secs(2)) {
                return start.elapsed();
            }
            assert!(start.elapsed() < Duration::from_secs(50), "never closed");
            if stream.write_all(b"X").is_err() {
                return start.elapsed();
            }
        }
    });
    let idle = tokio::task::spawn_blocking(move || {
        let mut stream = TcpStream::connect(addr).unwrap();
        stream
            .write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
            .unwrap();
        let start = Instant::now();
        // The answer, then nothing until the server closes the keep-alive connection.
        assert!(closed_by_server(&mut stream, Duration::from_secs(80)));
        start.elapsed()
    });
    let slow = slow.await.unwrap();
    assert!(
        slow >= Duration::from_secs(29),
        "closed after {slow:?}, before the head was due"
    );
    let idle = idle.await.unwrap();
    assert!(
        idle >= Duration::from_secs(59),
        "an idle keep-alive connection was closed after {idle:?}, before 60 s"
    );
}

/// docs/behaviour.md section 11 (unauthenticated bodies): 1,000 clients each send most of a 262,000
/// byte body with a wrong signature and stall. The bodies share one budget
/// (8 MiB here), so the daemon's memory stays bounded, and it keeps answering.
#[tokio::test]
async fn unauthenticated_bodies_share_one_memory_budget() {
    let own_limit = raise_own_file_limit();
    assert!(
        own_limit > 1_300,
        "this test needs 1,300 open files, has {own_limit}"
    );
    let daemon = Daemon::start(Setup {
        server_keys: "max_pending_body_bytes = 8388608".into(),
        ..setup()
    });
    let before = daemon.rss_bytes();
    let addr = daemon.addr;
    let partial = vec![b'{'; 200_000];
    let senders: Vec<_> = (0..1_000)
        .map(|i| {
            let partial = partial.clone();
            std::thread::spawn(move || {
                let mut stream = TcpStream::connect(addr).ok()?;
                let head = format!(
                    "POST /webhooks/dbt HTTP/1.1\r\nHost: x\r\nAuthorization: {}\r\nContent-Length: 262000\r\n\r\n",
                    "ab".repeat(32 + i % 2)
                );
                stream.write_all(head.as_bytes()).ok()?;
                // The server may stop reading (no room in the budget): write what it takes.
                stream.set_write_timeout(Some(Duration::from_secs(3))).ok()?;
                let _ = stream.write_all(&partial);
                Some(stream)
            })
        })
        .collect();
    let held: Vec<TcpStream> = senders
        .into_iter()
        .filter_map(|s| s.join().unwrap())
        .collect();
    assert!(
        held.len() > 900,
        "only {} connections were made",
        held.len()
    );
    let health = client().get(daemon.url("/healthz")).send().await.unwrap();
    assert_eq!(health.status(), 200, "/healthz kept answering");
    let after = daemon.rss_bytes();
    let grown = after.saturating_sub(before);
    // Unbounded, 1,000 x 200,000 bytes is 200 MB; the budget is 8 MiB, plus a few KiB of
    // buffers per connection.
    assert!(
        grown < 64 << 20,
        "RSS grew by {} MiB ({} -> {} MiB)",
        grown >> 20,
        before >> 20,
        after >> 20
    );
    // Those that found no room are told so (after waiting 5 s for some).
    let start = Instant::now();
    loop {
        let metrics = daemon.get_text("/metrics").await;
        if metrics.contains(r#"reason="busy""#) {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "no request was refused for want of room:\n{metrics}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    drop(held);
}

/// docs/behaviour.md section 11 (answers from services): a Slack answering 500 with a 64 MiB body
/// is read only up to the cap; the attempt fails as a retryable server error.
#[tokio::test]
async fn answers_from_services_are_read_up_to_a_cap() {
    let slack = FakeSlack::start().await;
    slack.state.lock().unwrap().faults.add(
        SLACK_WEBHOOK_PATH,
        1,
        Reply::streamed(500, "text/plain", vec![b'x'; 64 << 20]),
    );
    let daemon = Daemon::start(slack.configure(setup()).rule(
        "post.rhai",
        r#"if event.source == "dbt" { slack_post("hi"); }"#,
    ));
    let before = daemon.rss_bytes();
    send_dbt(
        &daemon,
        SECRET,
        dbt_completed("wev_big", "nightly", "Success"),
    )
    .await;
    let block = evaluated(&daemon, "dbt:wev_big").await;
    assert!(block.contains("slack_post"), "{block}");
    let listing = eventually(&daemon, "the post delivered on its second attempt", || {
        let listing = daemon.cli_ok(&["actions"]);
        listing.contains("[succeeded]").then_some(listing)
    })
    .await;
    assert!(listing.contains("attempt 2/3"), "{listing}");
    assert!(
        daemon
            .log()
            .contains("slack: HTTP 500: the answer is longer than 4194304 bytes"),
        "{}",
        daemon.log()
    );
    let grown = daemon.rss_bytes().saturating_sub(before);
    assert!(grown < 32 << 20, "RSS grew by {} MiB", grown >> 20);
    assert_eq!(slack.posts().len(), 1);
}

/// docs/behaviour.md section 11 (rules): rules that would build values past the sandbox's limits,
/// or flood the journal with calls, are stopped; the process stays up and the other rule
/// fires.
#[tokio::test]
async fn hostile_rules_are_stopped_and_the_process_stays_up() {
    let slack = FakeSlack::start().await;
    let daemon = Daemon::start(
        slack
            .configure(setup())
            .rule(
                "bomb.rhai",
                r#"let s = "x"; while s.len() < 1000000 { s += s }; s.truncate(1000000); s.replace("x", s);"#,
            )
            .rule(
                "hoard.rhai",
                "fn f(x) { x }\nlet keep = []; let s = \"x\"; while s.len() < 500000 { s += s };\nfor i in 0..100000 { keep.push(Fn(\"f\").curry(s + i)); }",
            )
            .rule(
                "flood.rhai",
                "let s = \"x\"; while s.len() < 1000000 { s += s }; s.truncate(1000000);\nfor i in 0..800 { tableau_refresh(s + i); }",
            )
            .rule("spam.rhai", "for i in 0..150000 { slack_post(`m${i}`); }")
            .rule("good.rhai", r#"if event.source == "dbt" { slack_post("still here"); }"#),
    );
    send_dbt(
        &daemon,
        SECRET,
        dbt_completed("wev_h", "nightly", "Success"),
    )
    .await;
    let block = evaluated(&daemon, "dbt:wev_h").await;
    for (rule, why) in [
        ("bomb", "exceeds its size limit"),
        ("hoard", "memory limit exceeded"),
        ("flood", "over the limit of 65536 bytes per call"),
        ("spam", "more than 100 action calls for one event"),
    ] {
        let line = block
            .lines()
            .find(|l| l.contains(&format!("rule {rule}: error")))
            .unwrap_or_else(|| panic!("{rule} did not fail:\n{block}"));
        assert!(line.contains(why), "{line}");
    }
    eventually(&daemon, "the good rule's post", || {
        (slack.posts() == vec![("webhook".to_string(), "still here".to_string())]).then_some(())
    })
    .await;
    let jobs = daemon.cli_ok(&["actions"]);
    assert_eq!(
        jobs.lines().count(),
        1,
        "only the good rule's call was queued:\n{jobs}"
    );
    let health = client().get(daemon.url("/healthz")).send().await.unwrap();
    assert_eq!(health.status(), 200);
}

/// docs/behaviour.md section 11: a rule's error text is capped like a `log()` line, so a
/// rule that throws a megabyte puts at most 4 KiB of it in the log and the journal.
#[tokio::test]
async fn a_rule_error_is_capped_in_the_log_and_the_journal() {
    let daemon = Daemon::start(setup().rule(
        "thrower.rhai",
        r#"let s = "y"; while s.len() < 1000000 { s += s }; s.truncate(1000000); throw s;"#,
    ));
    send_dbt(
        &daemon,
        SECRET,
        dbt_completed("wev_t", "nightly", "Success"),
    )
    .await;
    evaluated(&daemon, "dbt:wev_t").await;
    let listing = daemon.cli_ok(&["events", "--json"]);
    let event: Value = serde_json::from_str(listing.lines().next().unwrap()).unwrap();
    let error = event["rules"][0]["error"].as_str().unwrap_or_default();
    assert!(error.contains("yyyy"), "{event}");
    assert!(
        (4096..4096 + 256).contains(&error.len()),
        "journaled error of {} bytes",
        error.len()
    );
    let log = daemon.log();
    let failed: Vec<&str> = log.lines().filter(|l| l.contains("yyyy")).collect();
    assert!(!failed.is_empty(), "the error is logged:\n{log}");
    for line in failed {
        assert!(
            line.len() < 4096 + 512,
            "a log line of {} bytes",
            line.len()
        );
    }
}

fn evaluate_job_status(daemon: &Daemon, event_id: &str) -> Option<(String, i64)> {
    let conn = rusqlite::Connection::open(daemon.dir.join("journal.db")).ok()?;
    conn.query_row(
        "SELECT status, attempt FROM jobs WHERE event_id = ?1 AND queue = 'evaluate'",
        [event_id],
        |row| Ok((row.get(0)?, row.get(1)?)),
    )
    .ok()
}

/// docs/behaviour.md section 11 (poison events): an event whose evaluation the process never
/// survives (here: killed while the rule runs, every time) ends dead after its attempts, listed
/// and retryable; the event that came with it is evaluated and acted on.
#[tokio::test]
async fn a_poison_event_ends_dead_and_holds_nothing_back() {
    let slack = FakeSlack::start().await;
    // The poison rule must run long enough to be caught running: its 2 s of wall clock.
    let mut daemon = Daemon::start(Setup {
        rules_keys: "max_operations = 1000000000000".into(),
        ..slack.configure(setup()).rule(
            "slow.rhai",
            r#"if event.id == "dbt:wev_poison" { let i = 0; loop { i += 1; } }
               if event.id == "dbt:wev_fine" { slack_post("fine"); }"#,
        )
    });
    send_dbt(&daemon, SECRET, dbt_completed("wev_poison", "x", "Success")).await;
    send_dbt(&daemon, SECRET, dbt_completed("wev_fine", "x", "Success")).await;
    let mut kills = 0;
    while evaluate_job_status(&daemon, "dbt:wev_poison").map(|(s, _)| s) != Some("dead".into()) {
        assert!(kills < 6, "the poison event never ended");
        eventually(
            &daemon,
            "the poison event's evaluation running",
            || match evaluate_job_status(&daemon, "dbt:wev_poison") {
                Some((status, _)) if status == "running" => Some(()),
                _ => None,
            },
        )
        .await;
        daemon.kill();
        kills += 1;
        daemon.spawn();
    }
    assert_eq!(kills, 5, "five attempts (evaluations allow 5)");
    assert_eq!(
        evaluate_job_status(&daemon, "dbt:wev_poison"),
        Some(("dead".into(), 5))
    );
    eventually(&daemon, "the other event's post", || {
        (slack.posts() == vec![("webhook".to_string(), "fine".to_string())]).then_some(())
    })
    .await;
    let dead = daemon.cli_ok(&["actions", "--status", "dead"]);
    assert!(
        dead.contains("evaluate") && dead.contains("dbt:wev_poison"),
        "{dead}"
    );
    assert!(dead.contains("interrupted"), "{dead}");
    let id = dead
        .split_whitespace()
        .next()
        .unwrap()
        .trim_start_matches('#');
    let retried = daemon.cli_ok(&["retry", id]);
    assert!(retried.contains("queued again"), "{retried}");
}

/// docs/behaviour.md section 11 (the journal under the daemon): after `rm journal.db*`, webhooks
/// get 503 and /healthz says why; nothing is acknowledged that the next start would not see.
#[tokio::test]
async fn a_removed_journal_is_noticed_and_nothing_more_is_acknowledged() {
    let mut daemon = Daemon::start(setup());
    send_dbt(&daemon, SECRET, dbt_completed("wev_before", "x", "Success")).await;
    for suffix in ["", "-wal", "-shm"] {
        let _ = std::fs::remove_file(daemon.dir.join(format!("journal.db{suffix}")));
    }
    let client = client();
    let mut acknowledged = Vec::new();
    for i in 0..5 {
        let body = dbt_completed(&format!("wev_after{i}"), "x", "Success");
        let answer = post_dbt(&daemon, SECRET, body).await;
        if answer.status() == 200 {
            acknowledged.push(i);
        } else {
            assert_eq!(answer.status(), 503);
        }
    }
    assert!(
        acknowledged.is_empty(),
        "acknowledged after removal: {acknowledged:?}"
    );
    let health = client.get(daemon.url("/healthz")).send().await.unwrap();
    assert_eq!(health.status(), 503);
    let health: Value = health.json().await.unwrap();
    assert!(
        health["error"]
            .as_str()
            .unwrap()
            .contains("removed or replaced"),
        "{health}"
    );
    daemon.stop();
    daemon.spawn();
    let listing = daemon.cli_ok(&["events"]);
    assert!(!listing.contains("wev_after"), "{listing}");
}

/// docs/behaviour.md section 11: a journal that fails `PRAGMA quick_check` is refused at start.
/// docs/behaviour.md section 11: the journal's write-ahead log removed under the daemon is
/// noticed like the journal file: webhooks get 503 and /healthz says why; and what was
/// acknowledged before survives even a crash, since the log SQLite still has open is
/// copied into the journal file when the removal is found.
#[tokio::test]
async fn a_removed_write_ahead_log_is_noticed_and_nothing_acknowledged_is_lost() {
    let mut daemon = Daemon::start(setup());
    let client = client();
    for i in 0..20 {
        send_dbt(
            &daemon,
            SECRET,
            dbt_completed(&format!("wev_kept{i}"), "x", "Success"),
        )
        .await;
    }
    std::fs::remove_file(daemon.dir.join("journal.db-wal")).unwrap();
    let answer = post_dbt(
        &daemon,
        SECRET,
        dbt_completed("wev_after_wal", "x", "Success"),
    )
    .await;
    assert_eq!(answer.status(), 503, "acknowledged into a removed log");
    let health = client.get(daemon.url("/healthz")).send().await.unwrap();
    assert_eq!(health.status(), 503);
    let health: Value = health.json().await.unwrap();
    assert!(
        health["error"]
            .as_str()
            .unwrap()
            .contains("write-ahead log"),
        "{health}"
    );
    daemon.kill();
    daemon.spawn();
    let listing = daemon.cli_ok(&["events", "--limit", "100"]);
    for i in 0..20 {
        assert!(
            listing.contains(&format!("dbt:wev_kept{i} "))
                || listing.contains(&format!("dbt:wev_kept{i}\n")),
            "wev_kept{i} was acknowledged and is gone:\n{listing}"
        );
    }
    assert!(!listing.contains("wev_after_wal"), "{listing}");
}

#[tokio::test]
async fn a_corrupt_journal_is_refused_at_start() {
    let mut daemon = Daemon::start(setup());
    for i in 0..30 {
        send_dbt(
            &daemon,
            SECRET,
            dbt_completed(&format!("wev_c{i}"), "x", "Success"),
        )
        .await;
    }
    daemon.stop();
    let path = daemon.dir.join("journal.db");
    let mut bytes = std::fs::read(&path).unwrap();
    assert!(bytes.len() > 3 * 4096, "the journal has pages to corrupt");
    for byte in &mut bytes[4096 + 100..3 * 4096] {
        *byte = 0x5a;
    }
    std::fs::write(&path, bytes).unwrap();
    let output = daemon.serve_expecting_exit();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("journal.db"), "{stderr}");
    assert!(
        stderr.contains("failed its integrity check")
            || stderr.contains("not a freshet journal, or it is corrupt"),
        "{stderr}"
    );
}

/// docs/behaviour.md section 11 (reloads): `: > freshet.toml; kill -HUP` is refused; signed
/// webhooks and the Mode token keep working on the running config, and /healthz shows the failed
/// reload until a good one.
#[tokio::test]
async fn an_emptied_config_is_refused_on_reload() {
    let daemon = Daemon::start(setup());
    let good = std::fs::read_to_string(daemon.config_path()).unwrap();
    std::fs::write(daemon.config_path(), "").unwrap();
    daemon.signal("HUP");
    let health = eventually(&daemon, "the failed reload in /healthz", || {
        let text = std::process::Command::new("curl")
            .args(["-s", &daemon.url("/healthz")])
            .output()
            .ok()?;
        let health: Value = serde_json::from_slice(&text.stdout).ok()?;
        (health["last_reload"]["ok"] == false).then_some(health)
    })
    .await;
    assert_eq!(health["status"], "degraded", "{health}");
    assert!(
        health["last_reload"]["error"]
            .as_str()
            .unwrap()
            .contains("no dbt.webhook_secrets"),
        "{health}"
    );
    send_dbt(&daemon, SECRET, dbt_completed("wev_r1", "x", "Success")).await;
    let mode = client()
        .post(daemon.url(&format!("/webhooks/mode/{MODE_HOOK}")))
        .body(r#"{"event":"report_created","report_url":"https://app.mode.com/api/acme/reports/abc"}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(mode.status(), 200, "the Mode token still works");
    // A good reload clears it.
    std::fs::write(daemon.config_path(), good).unwrap();
    daemon.signal("HUP");
    eventually(&daemon, "the good reload in /healthz", || {
        let text = std::process::Command::new("curl")
            .args(["-s", &daemon.url("/healthz")])
            .output()
            .ok()?;
        let health: Value = serde_json::from_slice(&text.stdout).ok()?;
        (health["last_reload"]["ok"] == true && health["status"] == "ok").then_some(())
    })
    .await;
}

/// docs/behaviour.md section 11 (secrets): at RUST_LOG=trace, no log line holds the Mode token, the
/// dbt secret or a signature.
#[tokio::test]
async fn no_secret_reaches_the_log_even_at_trace() {
    let daemon = Daemon::start(setup().env("RUST_LOG", "trace"));
    let client = client();
    for token in [MODE_HOOK, "wrong-token-123456"] {
        client
            .post(daemon.url(&format!("/webhooks/mode/{token}")))
            .body(r#"{"event":"report_created","report_url":"https://app.mode.com/api/acme/reports/abc"}"#)
            .send()
            .await
            .unwrap();
    }
    let body = dbt_completed("wev_trace", "x", "Success");
    let signature = sign(SECRET, &body);
    send_dbt(&daemon, SECRET, body).await;
    daemon.wait_for_log("Event journaled", Duration::from_secs(10));
    let log = daemon.log();
    assert!(log.contains("TRACE"), "the daemon did log at trace");
    for secret in [MODE_HOOK, SECRET, signature.as_str()] {
        assert!(!log.contains(secret), "{secret:?} was logged");
    }
}

/// Mode's test delivery on the right token is answered 200 and journals nothing (docs/behaviour.md
/// section 7), so creating the webhook in Mode succeeds.
#[tokio::test]
async fn modes_test_delivery_is_answered_and_journals_nothing() {
    let daemon = Daemon::start(setup());
    let answer = client()
        .post(daemon.url(&format!("/webhooks/mode/{MODE_HOOK}")))
        .body(r#"{"event":"webhook_test"}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(answer.status(), 200);
    let answer: Value = answer.json().await.unwrap();
    assert_eq!(answer["event_id"], Value::Null, "{answer}");
    assert!(answer["ignored"]
        .as_str()
        .unwrap()
        .contains("test delivery"));
    assert!(daemon.cli_ok(&["events"]).contains("no events"));
    // Not JSON is still a 400, and a wrong token still a 404.
    let bad = client()
        .post(daemon.url(&format!("/webhooks/mode/{MODE_HOOK}")))
        .body("{")
        .send()
        .await
        .unwrap();
    assert_eq!(bad.status(), 400);
    let wrong = client()
        .post(daemon.url("/webhooks/mode/nope"))
        .body(r#"{"event":"webhook_test"}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(wrong.status(), 404);
}
