//! The daemon as a systemd service: readiness and watchdog notifications, a clean stop
//! that answers the request in flight, and SIGHUP picking up a changed secret.

use std::io::{Read, Write};
use std::os::unix::net::UnixDatagram;
use std::time::Duration;

use crate::support::{
    count_in_log, dbt_completed, eventually, sample, send_dbt, sign, Daemon, Setup,
};

const SECRET: &str = "service-test-secret-4";

fn setup() -> Setup {
    Setup::new("[dbt]\nwebhook_secrets = [{ env = \"T_SECRET\" }]\n").env("T_SECRET", SECRET)
}

#[test]
fn notifies_ready_then_watchdog() {
    let dir = tempfile::tempdir().unwrap();
    let socket_path = dir.path().join("notify.sock");
    let socket = UnixDatagram::bind(&socket_path).unwrap();
    socket
        .set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    let daemon = Daemon::start(
        setup()
            .env("NOTIFY_SOCKET", socket_path.to_str().unwrap())
            .env("WATCHDOG_USEC", "100000"),
    );
    let mut messages = Vec::new();
    let mut buffer = [0u8; 4096];
    while !messages.iter().any(|m: &String| m.contains("WATCHDOG=1")) {
        let n = socket.recv(&mut buffer).unwrap_or_else(|e| {
            panic!(
                "no notification ({e}); got {messages:?}; log:\n{}",
                daemon.log()
            )
        });
        messages.push(String::from_utf8_lossy(&buffer[..n]).to_string());
    }
    let ready = messages
        .iter()
        .position(|m| m.contains("READY=1"))
        .expect("READY=1 was sent");
    let watchdog = messages
        .iter()
        .position(|m| m.contains("WATCHDOG=1"))
        .unwrap();
    assert!(ready < watchdog, "{messages:?}");
}

#[test]
fn sigterm_answers_the_request_in_flight_and_exits_0() {
    let mut daemon = Daemon::start(setup());
    let body = sample("dbt-job-run-completed.json");
    let signature = sign(SECRET, &body);
    let mut stream = std::net::TcpStream::connect(daemon.addr).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    write!(
        stream,
        "POST /webhooks/dbt HTTP/1.1\r\nHost: x\r\nAuthorization: {signature}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
        body.len()
    )
    .unwrap();
    let (first, rest) = body.split_at(body.len() / 2);
    stream.write_all(first).unwrap();
    stream.flush().unwrap();
    // The server has no signal for "headers parsed"; give it a moment to read them, so the
    // stop really arrives mid-request (it only makes the test stricter, never flaky-green).
    std::thread::sleep(Duration::from_millis(200));
    daemon.signal("TERM");
    daemon.wait_for_log("SIGTERM received.", Duration::from_secs(10));
    stream.write_all(rest).unwrap();
    let mut answer = String::new();
    stream.read_to_string(&mut answer).unwrap();
    assert!(
        answer.starts_with("HTTP/1.1 200"),
        "{answer}\nlog:\n{}",
        daemon.log()
    );
    assert!(
        answer.contains("dbt:wev_2L6ZDoilyiWzKkSA59Gmc2d7FDD"),
        "{answer}"
    );
    let (status, took) = daemon.stop_wait();
    assert!(
        status.success(),
        "exit status {status}; log:\n{}",
        daemon.log()
    );
    assert!(took < Duration::from_secs(10), "took {took:?}");
    // The acknowledged event is journaled.
    let listing = daemon.cli_ok(&["events"]);
    assert!(
        listing.contains("dbt:wev_2L6ZDoilyiWzKkSA59Gmc2d7FDD"),
        "{listing}"
    );
}

/// A stop that finds a backlog of evaluations ends after the batch in hand instead of
/// working through the backlog; the next start evaluates the rest, each event once.
#[tokio::test]
async fn sigterm_with_a_backlog_stops_between_batches_and_loses_nothing() {
    const EVENTS: usize = 200;
    // The events arrive all at once and each evaluation spins for a while, so a backlog
    // is waiting when the stop comes.
    let rule = "let n = 0; for i in 0..2000 { n += i; } print(`seen <${event.id}>`);";
    let mut daemon = Daemon::start(setup().rule("slow.rhai", rule));
    let sends = (0..EVENTS).map(|i| {
        let body = dbt_completed(&format!("wev_backlog_{i}"), "nightly", "Success");
        send_dbt(&daemon, SECRET, body)
    });
    futures_util::future::join_all(sends).await;
    let (status, _) = daemon.stop();
    assert!(status.success(), "exit status {status}");
    let seen_before_stop = count_in_log(&daemon, "seen <dbt:wev_backlog_");
    assert!(
        seen_before_stop < EVENTS,
        "the stop waited for the whole backlog; log:\n{}",
        daemon.log()
    );
    assert_eq!(
        count_in_log(&daemon, "at the deadline"),
        0,
        "{}",
        daemon.log()
    );

    daemon.spawn();
    eventually(&daemon, "the rest of the backlog", || {
        (count_in_log(&daemon, "seen <dbt:wev_backlog_") >= EVENTS).then_some(())
    })
    .await;
    for i in 0..EVENTS {
        let needle = format!("seen <dbt:wev_backlog_{i}>");
        assert_eq!(count_in_log(&daemon, &needle), 1, "{needle}");
    }
}

#[tokio::test]
async fn sighup_picks_up_a_changed_secret() {
    let daemon = Daemon::start(
        Setup::new("[dbt]\nwebhook_secrets = [{ file = \"dbt_secret\" }]\n")
            .file("dbt_secret", "old-secret\n"),
    );
    let body = sample("dbt-job-run-started.json");
    let post = |secret: &'static str| {
        let body = body.clone();
        let url = daemon.url("/webhooks/dbt");
        async move {
            reqwest::Client::new()
                .post(url)
                .header("Authorization", sign(secret, &body))
                .body(body)
                .send()
                .await
                .unwrap()
                .status()
                .as_u16()
        }
    };
    assert_eq!(post("new-secret").await, 401);
    std::fs::write(daemon.dir.join("dbt_secret"), "new-secret\n").unwrap();
    daemon.signal("HUP");
    daemon.wait_for_log("Configuration reloaded.", Duration::from_secs(10));
    assert_eq!(post("old-secret").await, 401);
    assert_eq!(post("new-secret").await, 200);
}

#[test]
fn init_writes_a_config_and_rules_that_check_clean() {
    let dir = tempfile::tempdir().unwrap();
    let target = dir.path().join("etc");
    let run = |args: &[&str], credentials: &std::path::Path| {
        std::process::Command::new(crate::support::BIN)
            .args(args)
            .env("CREDENTIALS_DIRECTORY", credentials)
            .env_remove("FRESHET_CONFIG")
            .output()
            .unwrap()
    };
    let credentials = dir.path().join("credentials");
    std::fs::create_dir(&credentials).unwrap();
    let output = run(&["init", target.to_str().unwrap()], &credentials);
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(
        target.join("freshet.toml").is_file() && target.join("rules/revenue_floor.rhai").is_file()
    );

    // Without the credentials, check names each missing one; with them, it is clean.
    let config = target.join("freshet.toml");
    let output = run(
        &["check", "--config", config.to_str().unwrap()],
        &credentials,
    );
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert_eq!(output.status.code(), Some(1), "{stdout}");
    assert!(
        stdout.contains("freshet.toml: tableau.pat_secret: cannot read secret file"),
        "{stdout}"
    );
    for name in [
        "dbt_webhook_secret",
        "dbt_api_token",
        "mode_api_token",
        "mode_api_secret",
        "mode_webhook_token",
        "tableau_pat_secret",
        "slack_bot_token",
    ] {
        std::fs::write(credentials.join(name), format!("value-of-{name}\n")).unwrap();
    }
    std::fs::write(
        credentials.join("slack_webhook_url"),
        "https://hooks.slack.com/services/T/B/x\n",
    )
    .unwrap();
    let output = run(
        &["check", "--config", config.to_str().unwrap()],
        &credentials,
    );
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert_eq!(output.status.code(), Some(0), "{stdout}");
    assert!(
        stdout.contains("7 rule(s) compiled, 0 with errors"),
        "{stdout}"
    );
    assert!(
        !stdout.contains("value-of-"),
        "check printed a secret: {stdout}"
    );

    // A second init refuses to overwrite.
    let output = run(&["init", target.to_str().unwrap()], &credentials);
    assert_eq!(output.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&output.stderr).contains("refusing to overwrite"));
}
