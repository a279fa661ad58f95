//! Operating the daemon (docs/behaviour.md section 9): one serve per journal, commands that need no
//! secrets, a missing rules folder, and errors that say once what went wrong and what
//! to do.

use crate::support::fake::{FakeSlack, Reply, SLACK_WEBHOOK_PATH};
use crate::support::{dbt_completed, eventually, send_dbt, Daemon, Setup, BIN};
use serde_json::Value;

const SECRET: &str = "operating-test-secret-2";

fn setup() -> Setup {
    Setup::dbt(SECRET, 3, 10, 20)
}

fn stderr(output: &std::process::Output) -> String {
    String::from_utf8_lossy(&output.stderr).to_string()
}

fn stdout(output: &std::process::Output) -> String {
    String::from_utf8_lossy(&output.stdout).to_string()
}

/// docs/behaviour.md section 9: a second serve on the journal exits 1 at once, naming the journal
/// and the pid that holds it; the commands keep working beside the first.
#[tokio::test]
async fn a_second_serve_on_one_journal_exits_naming_the_holder() {
    let daemon = Daemon::start(setup());
    send_dbt(&daemon, SECRET, dbt_completed("wev_o1", "x", "Success")).await;
    let output = daemon.serve_expecting_exit();
    let error = stderr(&output);
    assert_eq!(output.status.code(), Some(1), "{error}");
    assert!(error.contains("journal.db"), "{error}");
    assert!(
        error.contains(&format!("(pid {})", daemon.pid())),
        "{error}"
    );
    assert_eq!(
        error.matches("another `freshet serve`").count(),
        1,
        "said once: {error}"
    );
    assert!(daemon.cli_ok(&["events"]).contains("dbt:wev_o1"));
    assert!(daemon.cli_ok(&["actions"]).contains("no actions"));
    // The first still serves.
    send_dbt(&daemon, SECRET, dbt_completed("wev_o2", "x", "Success")).await;
}

/// docs/behaviour.md section 9: events, actions, test, replay and retry never read secrets, so they
/// work where the daemon's secrets are not set (an operator's shell, sudo without the
/// credentials directory).
#[tokio::test]
async fn read_only_commands_need_no_secrets() {
    let slack = FakeSlack::start().await;
    slack
        .state
        .lock()
        .unwrap()
        .faults
        .add(SLACK_WEBHOOK_PATH, 100, Reply::text(404, "no_service"));
    let daemon = Daemon::start(
        slack
            .configure(setup())
            .section("[tableau]\nserver = \"https://tableau.example.com\"\npat_name = \"n\"\npat_secret = { credential = \"tableau_pat\" }\n")
            .file("credentials/tableau_pat", "pat-secret")
            .env("CREDENTIALS_DIRECTORY", "credentials")
            .rule("post.rhai", r#"if event.source == "dbt" { slack_post("x"); }"#),
    );
    send_dbt(&daemon, SECRET, dbt_completed("wev_s1", "x", "Success")).await;
    let dead = eventually(&daemon, "the dead post", || {
        let listing = daemon.cli_ok(&["actions", "--status", "dead"]);
        listing.contains("slack_post").then_some(listing)
    })
    .await;
    let id = dead
        .split_whitespace()
        .next()
        .unwrap()
        .trim_start_matches('#')
        .to_string();
    let sample = format!(
        "{}/tests/fixtures/samples/dbt-job-run-completed.json",
        env!("CARGO_MANIFEST_DIR")
    );
    for args in [
        vec!["events"],
        vec!["events", "--show", "dbt:wev_s1"],
        vec!["actions"],
        vec!["test", &sample],
        vec!["replay", "dbt:wev_s1"],
        vec!["retry", &id],
    ] {
        let output = daemon.cli_without_env(&args);
        assert!(
            output.status.success(),
            "freshet {args:?} without secrets: {}{}",
            stdout(&output),
            stderr(&output)
        );
    }
    // Those that use secrets still say which one is missing, by name only.
    let check = daemon.cli_without_env(&["check"]);
    assert_eq!(check.status.code(), Some(1));
    assert!(stdout(&check).contains("T_SECRET"), "{}", stdout(&check));
}

/// docs/behaviour.md section 9: a missing rules folder fails `check` and `serve`, with the path and
/// how to create it.
#[tokio::test]
async fn a_missing_rules_folder_fails_check_and_serve() {
    let mut daemon = Daemon::start(setup());
    daemon.stop();
    std::fs::remove_dir_all(daemon.dir.join("rules")).unwrap();
    let rules = daemon.dir.join("rules").display().to_string();
    let check = daemon.cli(&["check"]);
    assert_eq!(check.status.code(), Some(1), "{}", stdout(&check));
    assert!(
        stdout(&check).contains(&format!("{rules}: rules folder not found")),
        "{}",
        stdout(&check)
    );
    let serve = daemon.serve_expecting_exit();
    assert_eq!(serve.status.code(), Some(1));
    let error = stderr(&serve);
    assert!(
        error.contains(&format!("{rules}: rules folder not found")),
        "{error}"
    );
    assert!(error.contains("freshet init"), "{error}");
}

/// docs/behaviour.md section 9: each cause once, with the path and the likely fix.
#[tokio::test]
async fn errors_name_each_cause_once_with_what_to_do() {
    let daemon = Daemon::start(setup());
    // The port is taken (by the first daemon).
    let taken = std::fs::read_to_string(daemon.config_path())
        .unwrap()
        .replace("127.0.0.1:0", &daemon.addr.to_string())
        .replace("journal.db", "other/journal.db");
    std::fs::write(daemon.dir.join("taken.toml"), taken).unwrap();
    let output = crate::support::wait_with_timeout(
        std::process::Command::new(BIN)
            .args(["serve", "--config"])
            .arg(daemon.dir.join("taken.toml"))
            .env("T_SECRET", SECRET)
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap(),
        std::time::Duration::from_secs(30),
    );
    let error = stderr(&output);
    assert_eq!(output.status.code(), Some(1), "{error}");
    assert!(
        error.contains(&format!(
            "cannot listen on {}: the address is already in use",
            daemon.addr
        )),
        "{error}"
    );
    assert_eq!(error.matches("in use").count(), 1, "{error}");

    // A journal path whose folder is a file, and one that is a folder.
    std::fs::write(daemon.dir.join("afile"), "").unwrap();
    for (journal, expected) in [
        ("afile/journal.db", "afile is a file, not a folder"),
        ("rules", "it is a folder: set journal.path"),
    ] {
        let config = std::fs::read_to_string(daemon.config_path())
            .unwrap()
            .replace("path = \"journal.db\"", &format!("path = \"{journal}\""));
        std::fs::write(daemon.dir.join("bad.toml"), config).unwrap();
        let output = std::process::Command::new(BIN)
            .args(["events", "--config"])
            .arg(daemon.dir.join("bad.toml"))
            .output()
            .unwrap();
        let error = stderr(&output);
        assert_eq!(output.status.code(), Some(1), "{error}");
        let serve = crate::support::wait_with_timeout(
            std::process::Command::new(BIN)
                .args(["serve", "--config"])
                .arg(daemon.dir.join("bad.toml"))
                .env("T_SECRET", SECRET)
                .stderr(std::process::Stdio::piped())
                .spawn()
                .unwrap(),
            std::time::Duration::from_secs(30),
        );
        let error = stderr(&serve);
        assert_eq!(serve.status.code(), Some(1), "{error}");
        assert!(error.contains(expected), "{journal}: {error}");
        assert_eq!(
            error.matches("cannot open the journal").count(),
            1,
            "{error}"
        );
        assert!(!error.contains("os error"), "{error}");
    }
}

/// docs/behaviour.md section 9: a command on a mistyped journal path says none exists there and
/// creates nothing.
#[tokio::test]
async fn commands_never_create_a_journal() {
    let daemon = Daemon::start(setup());
    let config = std::fs::read_to_string(daemon.config_path())
        .unwrap()
        .replace("journal.db", "jornal.db");
    std::fs::write(daemon.dir.join("typo.toml"), config).unwrap();
    for command in ["events", "actions"] {
        let output = std::process::Command::new(BIN)
            .args([command, "--config"])
            .arg(daemon.dir.join("typo.toml"))
            .output()
            .unwrap();
        let error = stderr(&output);
        assert_eq!(output.status.code(), Some(1), "{error}");
        assert!(
            error.contains("jornal.db") && error.contains("no journal there"),
            "{error}"
        );
    }
    assert!(!daemon.dir.join("jornal.db").exists());
}

/// docs/behaviour.md section 9: unknown `--status` values are usage errors listing the allowed
/// ones.
#[tokio::test]
async fn unknown_status_values_are_refused() {
    let daemon = Daemon::start(setup());
    for (command, allowed) in [
        ("events", "received, evaluated"),
        ("actions", "pending, running, retrying, succeeded, dead"),
    ] {
        let output = daemon.cli(&[command, "--status", "bogus"]);
        assert_eq!(output.status.code(), Some(2));
        assert!(stderr(&output).contains(allowed), "{}", stderr(&output));
    }
}

/// docs/behaviour.md section 9: `send` to a daemon that is not running says so.
#[tokio::test]
async fn send_to_a_stopped_daemon_asks_whether_it_runs() {
    let mut daemon = Daemon::start(setup());
    let addr = daemon.addr;
    daemon.stop();
    let sample = format!(
        "{}/tests/fixtures/samples/dbt-job-run-completed.json",
        env!("CARGO_MANIFEST_DIR")
    );
    let output = daemon.cli(&[
        "send",
        "dbt",
        &sample,
        "--url",
        &format!("http://{addr}/webhooks/dbt"),
    ]);
    assert_eq!(output.status.code(), Some(1));
    assert!(
        stderr(&output).contains(&format!(
            "connection refused: is freshet serve running on {addr}?"
        )),
        "{}",
        stderr(&output)
    );
}

/// A succeeded action shows no error from an earlier attempt.
#[tokio::test]
async fn a_succeeded_action_lists_no_old_error() {
    let slack = FakeSlack::start().await;
    slack
        .state
        .lock()
        .unwrap()
        .faults
        .add(SLACK_WEBHOOK_PATH, 1, Reply::text(500, "rollup_error"));
    let daemon = Daemon::start(slack.configure(setup()).rule(
        "post.rhai",
        r#"if event.source == "dbt" { slack_post("x"); }"#,
    ));
    send_dbt(&daemon, SECRET, dbt_completed("wev_e1", "x", "Success")).await;
    let listing = eventually(&daemon, "the post delivered", || {
        let listing = daemon.cli_ok(&["actions"]);
        listing.contains("[succeeded]").then_some(listing)
    })
    .await;
    assert!(listing.contains("attempt 2/3"), "{listing}");
    assert!(!listing.contains("last error"), "{listing}");
}

/// HEAD on /healthz and /metrics answers like GET, without a body.
#[tokio::test]
async fn head_answers_like_get_without_a_body() {
    let daemon = Daemon::start(setup());
    let client = reqwest::Client::new();
    for path in ["/healthz", "/metrics"] {
        let head = client.head(daemon.url(path)).send().await.unwrap();
        assert_eq!(head.status(), 200, "{path}");
        let get = client.get(daemon.url(path)).send().await.unwrap();
        assert_eq!(
            head.headers().get("content-type"),
            get.headers().get("content-type")
        );
        assert!(head.bytes().await.unwrap().is_empty(), "{path}");
    }
    let health: Value = daemon.get_json("/healthz").await;
    assert_eq!(health["status"], "ok");
}
