//! Rules end to end: `check` and `test` output, hot reload into a running daemon, broken
//! edits, sandbox limits, deleted rules and `vars`.

use std::path::Path;

use crate::support::fake::FakeSlack;
use crate::support::{
    count_in_log, dbt_completed, evaluated, eventually, send_dbt, Daemon, Setup, BIN,
};
use serde_json::Value;

const SECRET: &str = "rules-test-secret-91";

fn fixture(path: &str) -> String {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(path)
        .display()
        .to_string()
}

fn freshet(args: &[&str]) -> std::process::Output {
    std::process::Command::new(BIN)
        .args(args)
        .env_remove("FRESHET_CONFIG")
        .output()
        .unwrap()
}

fn setup() -> Setup {
    Setup::new(
        "[dbt]\nwebhook_secrets = [{ env = \"T_SECRET\" }]\n\n[vars]\nchannel = \"#from-vars\"\n",
    )
    .env("T_SECRET", SECRET)
}

#[test]
fn check_reports_file_line_and_column_with_a_caret() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("rules")).unwrap();
    std::fs::copy(
        fixture("rules/syntax_error.rhai"),
        dir.path().join("rules/syntax_error.rhai"),
    )
    .unwrap();
    std::fs::write(dir.path().join("rules/good.rhai"), "slack_post(\"ok\");\n").unwrap();
    let config = dir.path().join("freshet.toml");
    std::fs::write(&config, "[rules]\ndir = \"rules\"\n").unwrap();

    let output = freshet(&["check", "--config", config.to_str().unwrap()]);
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert_eq!(output.status.code(), Some(1), "{stdout}");
    let expected = format!(
        "{}:4:16: Unexpected '*'",
        dir.path().join("rules/syntax_error.rhai").display()
    );
    assert!(stdout.contains(&expected), "{stdout}");
    assert!(
        stdout.contains("4 |     let x = 1 +* 2;\n                   ^"),
        "{stdout}"
    );

    std::fs::remove_file(dir.path().join("rules/syntax_error.rhai")).unwrap();
    let output = freshet(&["check", "--config", config.to_str().unwrap()]);
    assert_eq!(
        output.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&output.stdout)
    );

    std::fs::write(&config, "[rules]\ndir = \"rules\"\nmax_operation = 5\n").unwrap();
    let output = freshet(&["check", "--config", config.to_str().unwrap()]);
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert_eq!(output.status.code(), Some(1));
    assert!(
        stdout.contains("freshet.toml: rules.max_operation: unknown field `max_operation`"),
        "{stdout}"
    );
}

#[test]
fn test_command_prints_the_example_rules_calls_for_the_samples() {
    let rules = Path::new(env!("CARGO_MANIFEST_DIR")).join("rules");
    // docs/behaviour.md section 17: with no service configured, the example rules queue
    // nothing (configured(NAME) is false for each).
    let samples = [
        fixture("samples/dbt-job-run-completed.json"),
        fixture("samples/dbt-job-run-errored.json"),
        fixture("events/mode-run-succeeded-low.json"),
    ];
    let mut args = vec!["test", "--json", "--config"];
    let none = fixture("no-services.toml");
    args.extend([none.as_str(), "--rules", rules.to_str().unwrap()]);
    args.extend(samples.iter().map(String::as_str));
    let output = freshet(&args);
    assert_eq!(output.status.code(), Some(0));
    assert!(
        String::from_utf8_lossy(&output.stdout).trim().is_empty(),
        "{}",
        String::from_utf8_lossy(&output.stdout)
    );

    let output = freshet(&[
        "test",
        "--json",
        "--config",
        &fixture("services.toml"),
        "--rules",
        rules.to_str().unwrap(),
        &fixture("samples/dbt-job-run-completed.json"),
        &fixture("samples/dbt-job-run-errored.json"),
        &fixture("samples/dbt-job-run-started.json"),
        &fixture("events/mode-run-succeeded-low.json"),
    ]);
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert_eq!(
        output.status.code(),
        Some(0),
        "{stdout}{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let lines: Vec<Value> = stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let brief: Vec<(String, String, String)> = lines
        .iter()
        .map(|l| {
            (
                l["event"].as_str().unwrap().to_string(),
                l["rule"].as_str().unwrap().to_string(),
                l["action"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    let expect = |e: &str, r: &str, a: &str| (e.to_string(), r.to_string(), a.to_string());
    assert_eq!(
        brief,
        vec![
            expect(
                "dbt:wev_2L6ZDoilyiWzKkSA59Gmc2d7FDD",
                "refresh_after_dbt",
                "tableau_refresh"
            ),
            expect(
                "dbt:wev_2L6ZDoilyiWzKkSA59Gmc2d7FDD",
                "refresh_after_dbt",
                "mode_run"
            ),
            expect(
                "dbt:wev_2L6m5BggBw9uPNuSmtg4MUiW4Re",
                "dbt_failures",
                "slack_post"
            ),
            expect(
                "mode:report_run_completed:/api/acme/reports/2b3c4d5e6f70/runs/4d5e6f708192",
                "revenue_floor",
                "alert"
            ),
        ],
        "{stdout}"
    );
    assert_eq!(lines[0]["args"], serde_json::json!(["Sales Overview, Q3"]));
    assert_eq!(
        lines[1]["args"],
        serde_json::json!(["2b3c4d5e6f70", {"run_id": 12345}])
    );
    assert_eq!(lines[3]["args"][1], true);
    assert_eq!(lines[3]["alert"], "ok -> firing: posts the alert");

    // A rule that raises an error makes `test` exit 1.
    let output = freshet(&[
        "test",
        "--config",
        &fixture("no-services.toml"),
        "--rules",
        &fixture("rules/spin.rhai"),
        &fixture("samples/dbt-job-run-started.json"),
    ]);
    assert_eq!(output.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&output.stderr).contains("spin.rhai:2:6: stopped: operation limit")
    );
}

#[tokio::test]
async fn rules_reload_while_running() {
    let daemon = Daemon::start(setup().rule("first.rhai", "if event.type == \"dbt.job.run.completed\" { slack_post(vars.channel, `first ${event.job_id}`); }\n"));
    let event = send_dbt(
        &daemon,
        SECRET,
        dbt_completed("wev_r1", "nightly", "Success"),
    )
    .await;
    let block = evaluated(&daemon, event["event_id"].as_str().unwrap()).await;
    assert!(block.contains("rule first: fired"), "{block}");
    assert!(
        block.contains(r##"{"channel":"#from-vars","text":"first 302451"}"##),
        "vars reach the script:\n{block}"
    );

    // Added file: fires on the next event.
    let reloads = count_in_log(&daemon, "Rules reloaded.");
    std::fs::write(
        daemon.dir.join("rules/second.rhai"),
        "tableau_refresh(\"Finance\");\n",
    )
    .unwrap();
    eventually(&daemon, "the reload after adding a rule", || {
        (count_in_log(&daemon, "Rules reloaded.") > reloads).then_some(())
    })
    .await;
    let event = send_dbt(
        &daemon,
        SECRET,
        dbt_completed("wev_r2", "nightly", "Success"),
    )
    .await;
    let block = evaluated(&daemon, event["event_id"].as_str().unwrap()).await;
    assert!(block.contains("rule second: fired"), "{block}");

    // Broken edit: the old version keeps firing and rule_errors goes up.
    let reloads = count_in_log(&daemon, "Rules reloaded.");
    std::fs::write(daemon.dir.join("rules/first.rhai"), "slack_post(\n").unwrap();
    eventually(&daemon, "the reload after a broken edit", || {
        (count_in_log(&daemon, "Rules reloaded.") > reloads).then_some(())
    })
    .await;
    let health: Value = daemon.get_json("/healthz").await;
    assert_eq!(health["rule_errors"], 1, "{health}");
    assert_eq!(health["rules_loaded"], 2, "{health}");
    assert!(
        daemon.log().contains("first.rhai:2:1: "),
        "the compile error is logged with its position:\n{}",
        daemon.log()
    );
    let event = send_dbt(
        &daemon,
        SECRET,
        dbt_completed("wev_r3", "nightly", "Success"),
    )
    .await;
    let block = evaluated(&daemon, event["event_id"].as_str().unwrap()).await;
    assert!(
        block.contains("rule first: fired"),
        "the last good version runs:\n{block}"
    );

    // An edit that compiles but calls a function no one has (docs/behaviour.md section
    // 17): a load error as `check` reports it, not a rule that fails on every event.
    let reloads = count_in_log(&daemon, "Rules reloaded.");
    std::fs::write(
        daemon.dir.join("rules/first.rhai"),
        "if event.type == \"dbt.job.run.completed\" {\n    slack_pots(\"typo\");\n}\n",
    )
    .unwrap();
    eventually(&daemon, "the reload after a typo", || {
        (count_in_log(&daemon, "Rules reloaded.") > reloads).then_some(())
    })
    .await;
    let health: Value = daemon.get_json("/healthz").await;
    assert_eq!(health["rule_errors"], 1, "{health}");
    assert!(
        daemon
            .log()
            .contains("first.rhai:2:5: unknown function slack_pots (did you mean slack_post?)"),
        "{}",
        daemon.log()
    );
    let event = send_dbt(
        &daemon,
        SECRET,
        dbt_completed("wev_r3b", "nightly", "Success"),
    )
    .await;
    let block = evaluated(&daemon, event["event_id"].as_str().unwrap()).await;
    assert!(
        block.contains("rule first: fired"),
        "the last good version still runs:\n{block}"
    );

    // Deleted file: stops firing.
    let reloads = count_in_log(&daemon, "Rules reloaded.");
    std::fs::remove_file(daemon.dir.join("rules/second.rhai")).unwrap();
    eventually(&daemon, "the reload after deleting a rule", || {
        (count_in_log(&daemon, "Rules reloaded.") > reloads).then_some(())
    })
    .await;
    let event = send_dbt(
        &daemon,
        SECRET,
        dbt_completed("wev_r4", "nightly", "Success"),
    )
    .await;
    let block = evaluated(&daemon, event["event_id"].as_str().unwrap()).await;
    assert!(!block.contains("rule second"), "{block}");
    assert!(block.contains("rule first: fired"), "{block}");
}

#[tokio::test]
async fn runaway_rules_are_stopped_and_the_others_fire() {
    // The good rule's post must succeed: a dead one would emit `freshet.action.failed`,
    // which every rule here evaluates again, and the counts below would be racing it.
    let slack = FakeSlack::start().await;
    let daemon = Daemon::start(
        slack
            .configure(setup())
            .rule(
                "spin.rhai",
                &std::fs::read_to_string(fixture("rules/spin.rhai")).unwrap(),
            )
            .rule(
                "deep.rhai",
                &std::fs::read_to_string(fixture("rules/deep.rhai")).unwrap(),
            )
            .rule("good.rhai", "slack_post(\"fine\");\n"),
    );
    let event = send_dbt(
        &daemon,
        SECRET,
        dbt_completed("wev_s1", "nightly", "Success"),
    )
    .await;
    let block = evaluated(&daemon, event["event_id"].as_str().unwrap()).await;
    assert!(block.contains("rule good: fired"), "{block}");
    assert!(
        block.contains("rule spin: error: ")
            && block.contains("spin.rhai:2:6: stopped: operation limit"),
        "{block}"
    );
    assert!(
        block.contains("rule deep: error: ")
            && block.contains("stopped: call depth limit exceeded"),
        "{block}"
    );
    let metrics = daemon.get_text("/metrics").await;
    assert!(
        metrics.contains(r#"freshet_rule_errors_total{rule="spin"} 1"#),
        "{metrics}"
    );
    assert!(
        metrics.contains(r#"freshet_rule_evaluations_total{rule="good"} 1"#),
        "{metrics}"
    );
    eventually(&daemon, "the good rule's post", || {
        (!slack.posts().is_empty()).then_some(())
    })
    .await;
    assert_eq!(slack.posts(), [("webhook".to_string(), "fine".to_string())]);
}

#[tokio::test]
async fn sighup_reloads_rules_and_replay_reevaluates() {
    let daemon = Daemon::start(setup().rule(
        "r.rhai",
        "if event.source == \"dbt\" { slack_post(\"v1\"); }\n",
    ));
    let event = send_dbt(
        &daemon,
        SECRET,
        dbt_completed("wev_h1", "nightly", "Success"),
    )
    .await;
    let id = event["event_id"].as_str().unwrap().to_string();
    evaluated(&daemon, &id).await;
    let reloads = count_in_log(&daemon, "Rules reloaded.");
    daemon.signal("HUP");
    eventually(&daemon, "the SIGHUP reload", || {
        (count_in_log(&daemon, "Rules reloaded.") > reloads).then_some(())
    })
    .await;

    daemon.cli_ok(&["replay", &id]);
    eventually(&daemon, "the replayed actions", || {
        let listing = daemon.cli_ok(&["actions"]);
        (listing.matches(r#"{"text":"v1"}"#).count() == 2).then_some(())
    })
    .await;
}
