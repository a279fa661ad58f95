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

/// docs/behaviour.md section 17: `freshet init DIR` writes a config that `check`,
/// `serve` and `send` accept at once, with no environment set; `init --systemd` the form
/// the unit's credentials match.
#[tokio::test]
async fn init_writes_a_config_that_works_where_it_is_run() {
    let temp = tempfile::tempdir().unwrap();
    let target = temp.path().to_path_buf();
    let run = |args: &[&str], env: &[(&str, &std::path::Path)]| {
        let mut command = std::process::Command::new(crate::support::BIN);
        command
            .args(args)
            .env_remove("FRESHET_CONFIG")
            .env_remove("CREDENTIALS_DIRECTORY");
        for (key, value) in env {
            command.env(key, value);
        }
        command.output().unwrap()
    };
    let output = run(&["init", target.to_str().unwrap()], &[]);
    let stdout = String::from_utf8_lossy(&output.stdout).to_string();
    assert!(
        output.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(stdout.contains("freshet check --config"), "{stdout}");
    let secret = target.join("dbt_webhook_secret");
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&secret).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
    }
    let config = target.join("freshet.toml");
    let config_arg = config.to_str().unwrap();
    let text = std::fs::read_to_string(&config).unwrap();
    assert!(text.contains("path = \"journal.db\""), "{text}");
    assert!(text.contains("# [tableau]"), "{text}");

    // check: clean at once.
    let output = run(&["check", "--config", config_arg], &[]);
    let check = String::from_utf8_lossy(&output.stdout);
    assert_eq!(output.status.code(), Some(0), "{check}");
    assert!(
        check.contains("10 rule(s) compiled, 0 with errors"),
        "{check}"
    );

    // serve and send: a sample is signed with the written secret and accepted.
    std::fs::write(
        &config,
        text.replace("listen = \"127.0.0.1:8787\"", "listen = \"127.0.0.1:0\"")
            .replace("listen = \"127.0.0.1:8788\"", "listen = \"127.0.0.1:0\""),
    )
    .unwrap();
    let daemon = Daemon::start_in(temp);
    let url = daemon.url("/webhooks/dbt");
    let output = run(
        &[
            "send",
            "dbt",
            "--sample",
            "job.run.errored",
            "--config",
            config_arg,
            "--url",
            &url,
        ],
        &[],
    );
    assert!(
        output.status.success(),
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    // The journal commands name the journal they read.
    let output = run(&["events", "--config", config_arg], &[]);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains(&format!(
            "journal: {}",
            daemon.dir.join("journal.db").display()
        )),
        "{stderr}"
    );
    assert!(String::from_utf8_lossy(&output.stdout).contains("dbt.job.run.errored"));
    let output = run(&["events", "--json", "--config", config_arg], &[]);
    assert!(
        output.stderr.is_empty(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let output = run(
        &["events", "--json", "--verbose", "--config", config_arg],
        &[],
    );
    let first: serde_json::Value = serde_json::from_str(
        String::from_utf8_lossy(&output.stdout)
            .lines()
            .next()
            .unwrap(),
    )
    .unwrap();
    assert_eq!(
        first["journal"],
        daemon.dir.join("journal.db").display().to_string()
    );

    // A second init refuses to overwrite.
    let output = run(&["init", daemon.dir.to_str().unwrap()], &[]);
    assert_eq!(output.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&output.stderr).contains("refusing to overwrite"));

    // --systemd: the credential form, checked with the folder the unit's lines read.
    let systemd = tempfile::tempdir().unwrap();
    let output = run(
        &["init", "--systemd", systemd.path().to_str().unwrap()],
        &[],
    );
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let config = systemd.path().join("freshet.toml");
    let text = std::fs::read_to_string(&config).unwrap();
    assert!(text.contains("webhook_secrets = [{ credential = \"dbt_webhook_secret\" }]"));
    assert!(text.contains("path = \"/var/lib/freshet/journal.db\""));
    let credentials = systemd.path().join("credentials");
    let output = run(&["check", "--config", config.to_str().unwrap()], &[]);
    assert_eq!(
        output.status.code(),
        Some(1),
        "without the unit's credentials"
    );
    let output = run(
        &["check", "--config", config.to_str().unwrap()],
        &[("CREDENTIALS_DIRECTORY", &credentials)],
    );
    assert_eq!(
        output.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&output.stdout)
    );
}
