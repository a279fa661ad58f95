//! The rule authors' toolkit (docs/behaviour.md section 8): rule tests (the shipped ones, and a
//! failing one with its reason), replay with care, samples that are never duplicates,
//! following the journal, JSON lines, alert states and their reset, and what `test` says
//! of a Mode webhook it cannot enrich.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use crate::support::fake::FakeSlack;
use crate::support::{dbt_completed, evaluated, eventually, send_dbt, Daemon, Setup, BIN};
use serde_json::Value;

const SECRET: &str = "toolkit-secret-3";

fn setup(slack: &FakeSlack) -> Setup {
    slack.configure(Setup::dbt(SECRET, 3, 10, 20))
}

fn repo(path: &str) -> String {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join(path)
        .display()
        .to_string()
}

fn freshet(args: &[&str]) -> std::process::Output {
    Command::new(BIN)
        .args(args)
        .env_remove("FRESHET_CONFIG")
        .output()
        .unwrap()
}

fn stdout(output: &std::process::Output) -> String {
    String::from_utf8_lossy(&output.stdout).to_string()
}

/// The shipped tests of the example rules pass (this is how `cargo test` runs them).
#[test]
fn the_example_rules_pass_their_tests() {
    let output = freshet(&["test", "--rules", &repo("rules")]);
    let text = stdout(&output);
    assert!(
        output.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(text.contains("17 passed, 0 failed"), "{text}");
    assert!(!text.contains("FAIL"), "{text}");
}

/// A failing rule test says which call was expected and which were made; exit 1.
#[test]
fn a_failing_rule_test_says_why() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("tests")).unwrap();
    std::fs::write(
        dir.path().join("refresh.rhai"),
        r#"if event.type == "dbt.job.run.completed" { tableau_refresh("Sales"); }"#,
    )
    .unwrap();
    std::fs::write(
        dir.path().join("tests/refresh.toml"),
        format!(
            r#"
[[test]]
name = "refreshes finance"
event = "{}"
[[test.expect]]
rule = "refresh"
action = "tableau_refresh"
args = ["Finance"]

[[test]]
name = "posts nothing"
event = {{ eventType = "job.run.completed", eventId = "t1", data = {{ jobId = "1" }} }}
expect_no = ["slack_post"]
only = true
[[test.expect]]
action = "tableau_refresh"
args = ["Sales"]
"#,
            repo("tests/fixtures/samples/dbt-job-run-completed.json")
        ),
    )
    .unwrap();
    let output = freshet(&["test", "--rules", dir.path().to_str().unwrap()]);
    let text = stdout(&output);
    assert_eq!(output.status.code(), Some(1), "{text}");
    assert!(
        text.contains("FAIL refreshes finance: expected call not made\n      - refresh: tableau_refresh([\"Finance\"])\n    calls made:\n      + refresh: tableau_refresh([\"Sales\"])"),
        "{text}"
    );
    assert!(text.contains("PASS posts nothing"), "{text}");
    assert!(text.ends_with("1 passed, 1 failed\n"), "{text}");
}

/// docs/behaviour.md section 14: rule tests take `now` (the clock alert decisions see) and
/// inline deadline events; a renotification is listed only once its interval has passed
/// at `now`, and a test that expects otherwise fails.
#[test]
fn rule_tests_take_now_and_inline_deadline_events() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("tests")).unwrap();
    std::fs::write(
        dir.path().join("late.rhai"),
        r##"if event.type == "freshet.deadline.missed" {
    alert("late", true, #{ channel: "#data", text: `${event.name} missed ${event.due_at}`, renotify_minutes: 60 });
}"##,
    )
    .unwrap();
    let event = r#"{ id = "freshet:deadline.missed:nightly:1", source = "freshet", type = "freshet.deadline.missed", received_at = "1970-01-01T00:00:00Z", name = "nightly", due_at = "1970-01-01T00:00:00.001Z" }"#;
    std::fs::write(
        dir.path().join("tests/late.toml"),
        format!(
            r##"
[[test]]
name = "quiet within the hour"
event = {event}
alerts = {{ late = "firing" }}
now = "1970-01-01T00:30:00Z"
expect_no = ["slack_post"]

[[test]]
name = "renotifies after the hour"
event = {event}
alerts = {{ late = "firing" }}
now = "1970-01-01T02:00:00Z"
[[test.expect]]
action = "slack_post"
args = ["#data", {{ text = "nightly missed 1970-01-01T00:00:00.001Z" }}]

[[test]]
name = "wrongly expects a post within the hour"
event = {event}
alerts = {{ late = "firing" }}
now = "1970-01-01T00:30:00Z"
[[test.expect]]
action = "slack_post"
"##
        ),
    )
    .unwrap();
    let output = freshet(&["test", "--rules", dir.path().to_str().unwrap()]);
    let text = stdout(&output);
    assert_eq!(output.status.code(), Some(1), "{text}");
    assert!(text.contains("PASS quiet within the hour"), "{text}");
    assert!(text.contains("PASS renotifies after the hour"), "{text}");
    assert!(
        text.contains("FAIL wrongly expects a post within the hour"),
        "{text}"
    );
    assert!(text.ends_with("2 passed, 1 failed\n"), "{text}");
}

/// docs/behaviour.md section 17: an expectation naming no action fails the test (a typo
/// in `expect_no` would otherwise pass for ever), and a rule with a typo'd function is a
/// load error of the tests, as `check` reports it.
#[test]
fn rule_tests_refuse_unknown_actions_and_lint_their_rules() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("tests")).unwrap();
    std::fs::write(dir.path().join("post.rhai"), r#"slack_post("hi");"#).unwrap();
    std::fs::write(
        dir.path().join("tests/post.toml"),
        r#"
[[test]]
name = "a typo in expect_no"
event = { eventType = "job.run.completed", eventId = "t1", data = { jobId = "1" } }
expect_no = ["slack_psot"]
"#,
    )
    .unwrap();
    let output = freshet(&["test", "--rules", dir.path().to_str().unwrap()]);
    let text = stdout(&output);
    assert_eq!(output.status.code(), Some(1), "{text}");
    assert!(
        text.contains(r#"FAIL a typo in expect_no: no action is named "slack_psot""#),
        "{text}"
    );

    std::fs::write(dir.path().join("post.rhai"), r#"slack_pots("hi");"#).unwrap();
    let output = freshet(&["test", "--rules", dir.path().to_str().unwrap()]);
    let all = format!(
        "{}{}",
        stdout(&output),
        String::from_utf8_lossy(&output.stderr)
    );
    assert_ne!(output.status.code(), Some(0), "{all}");
    assert!(
        all.contains("post.rhai:1:1: unknown function slack_pots (did you mean slack_post?)"),
        "{all}"
    );
}

/// `freshet test` on a raw Mode run webhook says what it is missing.
#[test]
fn testing_a_raw_mode_webhook_says_it_is_not_enriched() {
    let output = freshet(&[
        "test",
        "--rules",
        &repo("rules"),
        &repo("tests/fixtures/samples/mode-webhook-report-run-completed.json"),
    ]);
    let text = stdout(&output);
    assert!(output.status.success(), "{text}");
    assert!(
        text.contains("note: this Mode event is not enriched")
            && text
                .contains("run_state, report_name, run_url, results and result_errors are missing"),
        "{text}"
    );
}

/// `replay --dry-run` prints the calls and queues nothing; `--rule` evaluates one rule.
#[tokio::test]
async fn replay_dry_run_queues_nothing_and_rule_picks_one() {
    let slack = FakeSlack::start().await;
    let daemon = Daemon::start(
        setup(&slack)
            .rule(
                "first.rhai",
                r#"if event.source == "dbt" { slack_post("from first"); }"#,
            )
            .rule(
                "second.rhai",
                r#"if event.source == "dbt" { slack_post("from second"); }"#,
            ),
    );
    send_dbt(&daemon, SECRET, dbt_completed("wev_r1", "x", "Success")).await;
    evaluated(&daemon, "dbt:wev_r1").await;
    eventually(&daemon, "both posts", || {
        (slack.posts().len() == 2).then_some(())
    })
    .await;
    let jobs_before = daemon.cli_ok(&["actions"]);

    let dry = daemon.cli_ok(&["replay", "dbt:wev_r1", "--dry-run"]);
    assert!(dry.contains("nothing is queued"), "{dry}");
    assert!(
        dry.contains(r#"rule first: slack_post ["from first"]"#)
            && dry.contains(r#"rule second: slack_post ["from second"]"#),
        "{dry}"
    );
    let dry_one = daemon.cli_ok(&["replay", "dbt:wev_r1", "--dry-run", "--rule", "second"]);
    assert!(
        dry_one.contains("from second") && !dry_one.contains("from first"),
        "{dry_one}"
    );
    assert_eq!(
        daemon.cli_ok(&["actions"]),
        jobs_before,
        "a dry run queued something"
    );

    let queued = daemon.cli_ok(&["replay", "dbt:wev_r1", "--rule", "second"]);
    assert!(queued.contains("by rule second"), "{queued}");
    eventually(&daemon, "the one rule's post again", || {
        (slack.posts().len() == 3).then_some(())
    })
    .await;
    assert_eq!(slack.posts()[2].1, "from second");
    let unknown = daemon.cli(&["replay", "dbt:wev_r1", "--rule", "nope"]);
    assert_eq!(unknown.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&unknown.stderr).contains("no rule nope in"));
}

/// Samples (and `--new-id`) are never duplicates.
#[tokio::test]
async fn samples_get_a_fresh_id_every_time() {
    let slack = FakeSlack::start().await;
    let daemon = Daemon::start(setup(&slack));
    let mut ids = Vec::new();
    for args in [
        vec!["send", "dbt", "--sample", "job.run.completed"],
        vec!["send", "dbt", "--sample", "job.run.completed"],
        vec!["send", "dbt", "--sample", "job.run.errored"],
        vec!["send", "dbt", "--sample", "job.run.started"],
    ] {
        let mut args = args.clone();
        let url = daemon.url("/webhooks/dbt");
        args.extend(["--url", &url]);
        let out = daemon.cli_ok(&args);
        let answer: Value = serde_json::from_str(out.lines().nth(1).unwrap()).unwrap();
        assert_eq!(answer["duplicate"], false, "{out}");
        ids.push(answer["event_id"].as_str().unwrap().to_string());
    }
    let sample = repo("tests/fixtures/samples/dbt-job-run-completed.json");
    for _ in 0..2 {
        let url = daemon.url("/webhooks/dbt");
        let out = daemon.cli_ok(&["send", "dbt", &sample, "--new-id", "--url", &url]);
        let answer: Value = serde_json::from_str(out.lines().nth(1).unwrap()).unwrap();
        assert_eq!(answer["duplicate"], false, "{out}");
        ids.push(answer["event_id"].as_str().unwrap().to_string());
    }
    let mut unique = ids.clone();
    unique.sort();
    unique.dedup();
    assert_eq!(unique.len(), ids.len(), "{ids:?}");
    let listing = daemon.cli_ok(&["events", "--limit", "10"]);
    assert!(listing.contains("dbt.job.run.errored") && listing.contains("dbt.job.run.started"));

    // docs/behaviour.md section 17: a sample shaped with --set (a string, a JSON value).
    let url = daemon.url("/webhooks/dbt");
    let out = daemon.cli_ok(&[
        "send",
        "dbt",
        "--sample",
        "job.run.completed",
        "--set",
        "data.jobName=nightly finance",
        "--set",
        "data.runStatus=Errored",
        "--set",
        "data.runStatusCode=20",
        "--url",
        &url,
    ]);
    let answer: Value = serde_json::from_str(out.lines().nth(1).unwrap()).unwrap();
    let shown = daemon.cli_ok(&["events", "--show", answer["event_id"].as_str().unwrap()]);
    let event: Value = serde_json::from_str(&shown).unwrap();
    assert_eq!(event["job_name"], "nightly finance");
    assert_eq!(event["run_status"], "Errored");
    assert_eq!(event["run_status_code"], 20);
}

/// `events --follow` prints an event sent after it started, and an action's outcome,
/// then ends on Ctrl-C with exit 0; `--json` lines parse.
#[tokio::test]
async fn follow_prints_what_comes_and_json_lines_parse() {
    let slack = FakeSlack::start().await;
    let daemon = Daemon::start(setup(&slack).rule(
        "post.rhai",
        r#"if event.source == "dbt" { slack_post("hi"); }"#,
    ));
    send_dbt(&daemon, SECRET, dbt_completed("wev_before", "x", "Success")).await;
    eventually(&daemon, "the first post", || {
        (slack.posts().len() == 1).then_some(())
    })
    .await;
    let mut follow = Command::new(BIN)
        .args(["events", "--follow", "--json", "--config"])
        .arg(daemon.config_path())
        .current_dir(&daemon.dir)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stdout = follow.stdout.take().unwrap();
    // It says when it has read what was there: only then is the next event "new".
    let mut stderr = BufReader::new(follow.stderr.take().unwrap());
    let mut banner = String::new();
    stderr.read_line(&mut banner).unwrap();
    assert!(banner.starts_with("Following "), "{banner}");
    // Killed if the test fails before it ends it.
    let follow = KillOnDrop(Some(follow));
    let lines = std::sync::Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
    let reader = {
        let lines = std::sync::Arc::clone(&lines);
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                lines.lock().unwrap().push(line);
            }
        })
    };
    send_dbt(&daemon, SECRET, dbt_completed("wev_after", "x", "Success")).await;
    let seen = eventually(&daemon, "the new event and its action outcome", || {
        let lines = lines.lock().unwrap().clone();
        let event = lines.iter().any(|l| l.contains(r#""id":"dbt:wev_after""#));
        let action = lines.iter().any(|l| {
            l.contains(r#""line":"action""#)
                && l.contains(r#""kind":"slack_post""#)
                && l.contains(r#""event_id":"dbt:wev_after""#)
        });
        (event && action).then_some(lines)
    })
    .await;
    for line in &seen {
        let value: Value = serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line}"));
        assert!(
            value["line"] == "event" || value["line"] == "action",
            "{line}"
        );
    }
    assert!(
        !seen.iter().any(|l| l.contains("wev_before")),
        "history is not followed: {seen:?}"
    );
    let mut follow = follow;
    let child = follow.0.take().unwrap();
    let status = Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());

    // --since: the recent past first (the event from before, with its action's kind).
    let mut since = Command::new(BIN)
        .args(["events", "--follow", "--json", "--since", "10m", "--config"])
        .arg(daemon.config_path())
        .current_dir(&daemon.dir)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut banner = String::new();
    BufReader::new(since.stderr.take().unwrap())
        .read_line(&mut banner)
        .unwrap();
    assert!(banner.starts_with("Following "), "{banner}");
    let _ = Command::new("kill")
        .args(["-INT", &since.id().to_string()])
        .status();
    let out = since.wait_with_output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains(r#""id":"dbt:wev_before""#), "{text}");
    assert!(
        text.lines()
            .any(|l| l.contains(r#""line":"action""#) && l.contains("dbt:wev_before")),
        "{text}"
    );
    let exit = crate::support::wait_with_timeout(child, Duration::from_secs(10));
    assert!(exit.status.success(), "--follow ended with {}", exit.status);
    reader.join().unwrap();

    for command in ["events", "actions", "alerts"] {
        let out = daemon.cli_ok(&[command, "--json"]);
        for line in out.lines() {
            serde_json::from_str::<Value>(line)
                .unwrap_or_else(|e| panic!("{command}: {e}: {line}"));
        }
        if command != "alerts" {
            assert!(out.lines().count() >= 2, "{command}: {out}");
        }
    }
}

/// A child process killed when dropped (a failing test leaves nothing running).
struct KillOnDrop(Option<std::process::Child>);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        if let Some(mut child) = self.0.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// `alerts` lists the states; `--reset` sets one to OK without posting, so the next
/// breach is a new incident.
#[tokio::test]
async fn alerts_are_listed_and_reset_without_posting() {
    let slack = FakeSlack::start().await;
    let daemon = Daemon::start(setup(&slack).rule(
        "floor.rhai",
        r#"if event.source == "dbt" { alert("orders-late", event.run_status != "Success", "orders are late"); }"#,
    ));
    send_dbt(&daemon, SECRET, dbt_completed("wev_a1", "x", "Errored")).await;
    eventually(&daemon, "the alert post", || {
        (slack.posts().len() == 1).then_some(())
    })
    .await;
    let listing = daemon.cli_ok(&["alerts"]);
    assert!(
        listing.starts_with("orders-late  [firing]  since "),
        "{listing}"
    );
    let json: Value = serde_json::from_str(daemon.cli_ok(&["alerts", "--json"]).trim()).unwrap();
    assert_eq!(json["state"], "firing");

    let reset = daemon.cli_ok(&["alerts", "--reset", "orders-late"]);
    assert!(reset.contains("reset to ok; nothing was posted"), "{reset}");
    assert!(daemon.cli_ok(&["alerts"]).contains("orders-late  [ok]"));
    assert_eq!(slack.posts().len(), 1, "the reset posted nothing");
    let unknown = daemon.cli(&["alerts", "--reset", "nope"]);
    assert_eq!(unknown.status.code(), Some(1));

    // Still failing: a new incident, posted again.
    send_dbt(&daemon, SECRET, dbt_completed("wev_a2", "x", "Errored")).await;
    eventually(&daemon, "the second incident's post", || {
        (slack.posts().len() == 2).then_some(())
    })
    .await;
}

/// docs/behaviour.md section 17: `check --online` tries each configured service once
/// (Slack auth.test, Tableau serverinfo + sign-in + site + sign-out, Mode's workspace,
/// dbt Cloud's account, PagerDuty's key shape), one line each; it changes nothing, shows
/// no secret, and exits 1 naming the service whose credentials are wrong. (Multi-thread:
/// the fakes answer while the test thread waits for the command.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_online_tries_each_service_and_changes_nothing() {
    use crate::support::fake::{
        FakeDbtCloud, FakeHex, FakeMode, FakePagerDuty, FakePowerBi, FakeTableau, DBT_TOKEN,
        HEX_TOKEN, MODE_SECRET, MODE_TOKEN, PAGERDUTY_KEY, POWERBI_SECRET, SLACK_BOT_TOKEN,
        TABLEAU_PAT_SECRET,
    };
    let slack = FakeSlack::start().await;
    let tableau = FakeTableau::start().await;
    let mode = FakeMode::start().await;
    let dbt = FakeDbtCloud::start().await;
    let pagerduty = FakePagerDuty::start().await;
    let hex = FakeHex::start().await;
    let powerbi = FakePowerBi::start().await;
    let setup = Setup::dbt(SECRET, 3, 10, 20)
        .section(&tableau.section(None))
        .env("T_PAT", TABLEAU_PAT_SECRET);
    let setup = dbt.configure(setup, "");
    let setup = pagerduty.configure(mode.configure(slack.configure(setup), None));
    let setup = powerbi.configure(hex.configure(setup));
    let daemon = Daemon::start(setup);

    let output = daemon.cli(&["check", "--online"]);
    let stdout = String::from_utf8_lossy(&output.stdout).to_string();
    let stderr = String::from_utf8_lossy(&output.stderr).to_string();
    assert_eq!(output.status.code(), Some(0), "{stdout}{stderr}");
    for line in [
        "dbt cloud: ok: account 43 (Acme)",
        "mode: ok: workspace \"acme\" (Acme)",
        "tableau: ok: signed in to site \"Finance\" as PAT \"freshet\" (REST API 3.22), signed out",
        "slack: ok: bot token of \"freshet\" in workspace \"Acme\"",
        "slack webhook: not tried: an incoming webhook has no call that does not post",
        "pagerduty data: ok: an integration key of the right shape",
        "hex: ok: the token lists projects",
        "powerbi: ok: a token for client 00000000-0000-0000-0000-000000000001 in tenant",
    ] {
        assert!(stdout.contains(line), "missing {line:?} in:\n{stdout}");
    }
    for secret in [
        DBT_TOKEN,
        MODE_TOKEN,
        MODE_SECRET,
        TABLEAU_PAT_SECRET,
        SLACK_BOT_TOKEN,
        PAGERDUTY_KEY,
        HEX_TOKEN,
        POWERBI_SECRET,
    ] {
        assert!(!stdout.contains(secret) && !stderr.contains(secret));
    }
    // Nothing changed anywhere: no post, no run, no refresh, no page; Tableau's session
    // was ended; dbt Cloud was only read.
    assert_eq!(slack.state.lock().unwrap().auth_tests, 1);
    assert!(slack.posts().is_empty() && slack.messages().is_empty());
    assert!(mode.state.lock().unwrap().runs.is_empty());
    {
        let tableau = tableau.state.lock().unwrap();
        assert_eq!((tableau.sign_ins, tableau.sign_outs), (1, 1));
        assert!(tableau.refreshes.is_empty() && tableau.current_token.is_none());
    }
    assert!(dbt.requests().iter().all(|seen| seen.method == "GET"));
    assert!(pagerduty.events().is_empty());
    assert!(hex.runs().is_empty() && powerbi.refreshes().is_empty());

    // Wrong credentials: each failing service is named, with why; exit 1.
    let output = daemon.cli_with_env(
        &["check", "--online"],
        &[
            ("T_SLACK_BOT", "xoxb-not-the-token"),
            ("T_MODE_TOKEN", "not-the-token"),
            ("T_PAT", "not-the-pat"),
            ("T_HEX", "not-the-hex-token"),
            ("T_PBI", "not-the-client-secret"),
        ],
    );
    let stdout = String::from_utf8_lossy(&output.stdout).to_string();
    assert_eq!(output.status.code(), Some(1), "{stdout}");
    for line in [
        "slack: FAILED: slack auth.test: invalid_auth",
        "mode: FAILED: mode: HTTP 401",
        "tableau: FAILED: tableau: sign-in refused (401001)",
        "dbt cloud: ok",
        "hex: FAILED: hex: HTTP 401: the token was refused (hex.token)",
        "powerbi: FAILED: powerbi token: HTTP 401: invalid_client",
    ] {
        assert!(stdout.contains(line), "missing {line:?} in:\n{stdout}");
    }
    assert!(!stdout.contains("not-the-pat") && !stdout.contains("xoxb-not-the-token"));
}
