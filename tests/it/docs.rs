//! The docs are part of the feature: docs/rules.md documents every function the rule
//! engine has, and the commands the tutorial (docs/rules.md) and the walk-through
//! (README.md) show run as shown.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::support::{wait_with_timeout, BIN};

fn read(relative: &str) -> String {
    std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join(relative)).unwrap()
}

/// The names of the functions `engine` lists.
fn names(engine: &rhai::Engine, include_packages: bool) -> std::collections::BTreeSet<String> {
    engine
        .gen_fn_signatures(include_packages)
        .iter()
        .filter_map(|signature| signature.split_once('(').map(|(name, _)| name.to_string()))
        .filter(|name| name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'))
        .collect()
}

/// docs/behaviour.md section 8: every function registered in the rule engine is in docs/rules.md,
/// so the reference cannot drift from the engine; and every function it documents exists.
#[test]
fn every_function_of_the_rule_engine_is_documented() {
    let docs = read("docs/rules.md");
    let engine = freshet::rules::engine::build_engine(1000);
    let standard = names(&rhai::Engine::new(), true);
    let ours = names(&engine, false);
    assert!(
        ours.contains("slack_post") && ours.contains("alert"),
        "{ours:?}"
    );
    let standard_section = docs
        .split("### Rhai's own functions")
        .nth(1)
        .expect("docs/rules.md has a section on Rhai's own functions");
    for name in &ours {
        if standard.contains(name) {
            // freshet's own version of a standard function: named where those are.
            assert!(
                standard_section.contains(&format!("`{name}`")),
                "docs/rules.md does not mention {name} among Rhai's own functions"
            );
        } else {
            assert!(
                docs.contains(&format!("### `{name}`")),
                "docs/rules.md has no section for the rule function {name}"
            );
        }
    }
    for heading in docs.lines().filter_map(|l| l.strip_prefix("### `")) {
        let name = heading.split('`').next().unwrap();
        if name.contains('.') || name.contains(' ') {
            continue; // an event type
        }
        assert!(
            ours.contains(name),
            "docs/rules.md documents {name}, which rules do not have"
        );
    }
}

/// The ```sh blocks of `markdown` after `heading`, up to the next `## ` heading.
fn sh_blocks(markdown: &str, heading: &str) -> Vec<String> {
    let section = markdown
        .split(heading)
        .nth(1)
        .unwrap_or_else(|| panic!("no {heading} section"));
    let section = section.split("\n## ").next().unwrap();
    section
        .split("```sh\n")
        .skip(1)
        .map(|block| block.split("\n```").next().unwrap().to_string())
        .collect()
}

/// A shell with `freshet` on its PATH and a home of its own (no user config is found).
fn shell(dir: &Path, script: &str, extra_env: &[(&str, String)]) -> std::process::Output {
    let bin_dir = PathBuf::from(BIN).parent().unwrap().to_path_buf();
    let path = format!(
        "{}:{}",
        bin_dir.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let mut command = Command::new("bash");
    command
        .arg("-c")
        .arg(format!("set -euo pipefail\n{script}"))
        .current_dir(dir)
        .env("PATH", path)
        .env("HOME", dir.join("home"))
        .env("XDG_CONFIG_HOME", dir.join("home/.config"))
        .env("XDG_DATA_HOME", dir.join("home/.local/share"))
        .env_remove("FRESHET_CONFIG")
        .env_remove("CREDENTIALS_DIRECTORY")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    for (key, value) in extra_env {
        command.env(key, value);
    }
    wait_with_timeout(command.spawn().unwrap(), std::time::Duration::from_secs(60))
}

/// docs/behaviour.md section 8, "done when": the tutorial of docs/rules.md, from `freshet init` to
/// a tested rule, runs as written.
#[test]
fn the_rules_tutorial_runs_as_written() {
    let docs = read("docs/rules.md");
    let blocks = sh_blocks(&docs, "## Tutorial");
    assert_eq!(blocks.len(), 5, "the tutorial has five steps");
    let dir = tempfile::tempdir().unwrap();
    let mut outputs = Vec::new();
    for (step, block) in blocks.iter().enumerate() {
        let output = shell(dir.path(), block, &[]);
        let stdout = String::from_utf8_lossy(&output.stdout).to_string();
        assert!(
            output.status.success(),
            "tutorial step {}:\n{block}\nstdout:\n{stdout}\nstderr:\n{}",
            step + 1,
            String::from_utf8_lossy(&output.stderr)
        );
        outputs.push(stdout);
    }
    // What the text says each step prints.
    assert!(outputs[0].contains("17 passed, 0 failed"), "{}", outputs[0]);
    assert!(
        outputs[2].contains("11 rule(s) compiled, 0 with errors"),
        "{}",
        outputs[2]
    );
    assert!(
        outputs[3].contains(
            r##"rule orders_failed: slack_post ["#data","orders run 9001 ended Errored"]"##
        ),
        "{}",
        outputs[3]
    );
    assert!(outputs[4].contains("19 passed, 0 failed"), "{}", outputs[4]);

    // And check catches the typo the text says it does.
    let rule = dir.path().join("my-freshet/rules/orders_failed.rhai");
    let source = std::fs::read_to_string(&rule).unwrap();
    std::fs::write(&rule, source.replace("slack_post(", "slack_pots(")).unwrap();
    let output = shell(&dir.path().join("my-freshet"), "freshet check", &[]);
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert_eq!(output.status.code(), Some(1), "{stdout}");
    assert!(
        stdout.contains(
            "rules/orders_failed.rhai:4:5: unknown function slack_pots (did you mean slack_post?)"
        ),
        "{stdout}"
    );
}

/// docs/behaviour.md section 9 (README commands stay true): the walk-through of README.md runs as
/// shown against a daemon on the embedded defaults. The daemon listens on a free port
/// instead of 8787 (tests never take fixed ports); the commands are otherwise as written.
#[test]
fn the_readme_walk_through_runs_as_shown() {
    let readme = read("README.md");
    let blocks = sh_blocks(&readme, "## Walk-through");
    assert_eq!(blocks.len(), 1);
    let port = {
        // Bound and let go at once: the daemon takes it right after.
        let probe = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        probe.local_addr().unwrap().port()
    };
    let dir = tempfile::tempdir().unwrap();
    let repo = Path::new(env!("CARGO_MANIFEST_DIR"));
    // The embedded defaults, at another port: the same config file the defaults mean.
    let config = dir.path().join("home/.config/freshet/freshet.toml");
    std::fs::create_dir_all(config.parent().unwrap()).unwrap();
    std::fs::write(
        &config,
        format!(
            "[server]\nlisten = \"127.0.0.1:{port}\"\n[rules]\ndir = \"{}\"\n[journal]\npath = \"{}\"\n[dbt]\nwebhook_secrets = [{{ file = \"{}\" }}]\n",
            repo.join("rules").display(),
            dir.path().join("home/.local/share/freshet/journal.db").display(),
            dir.path().join("secret").display()
        ),
    )
    .unwrap();
    std::fs::write(dir.path().join("secret"), "walk-through-secret\n").unwrap();
    let mut daemon = Command::new(BIN)
        .arg("serve")
        .current_dir(repo)
        .env("HOME", dir.path().join("home"))
        .env("XDG_CONFIG_HOME", dir.path().join("home/.config"))
        .env("XDG_DATA_HOME", dir.path().join("home/.local/share"))
        .env_remove("FRESHET_CONFIG")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = daemon.stderr.take().unwrap();
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    let log = std::sync::Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
    let daemon_log = std::sync::Arc::clone(&log);
    std::thread::spawn(move || {
        use std::io::BufRead;
        for line in std::io::BufReader::new(stderr)
            .lines()
            .map_while(Result::ok)
        {
            if line.contains("Listening.") {
                let _ = ready_tx.send(());
            }
            daemon_log.lock().unwrap().push(line);
        }
    });
    ready_rx
        .recv_timeout(std::time::Duration::from_secs(30))
        .expect("the daemon started");
    let script = blocks[0].replace("8787", &port.to_string());
    let home = dir.path().to_path_buf();
    let output = {
        let bin_dir = PathBuf::from(BIN).parent().unwrap().to_path_buf();
        let child = Command::new("bash")
            .arg("-c")
            .arg(format!("set -euo pipefail\n{script}"))
            .current_dir(repo)
            .env(
                "PATH",
                format!(
                    "{}:{}",
                    bin_dir.display(),
                    std::env::var("PATH").unwrap_or_default()
                ),
            )
            .env("HOME", home.join("home"))
            .env("XDG_CONFIG_HOME", home.join("home/.config"))
            .env("XDG_DATA_HOME", home.join("home/.local/share"))
            .env_remove("FRESHET_CONFIG")
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        wait_with_timeout(child, std::time::Duration::from_secs(60))
    };
    // docs/behaviour.md section 17: on the embedded defaults the walk-through is quiet: the
    // example rules queue nothing for services that are not configured, so no action
    // dies and no ERROR line is logged (once the events are evaluated).
    let freshet_cmd = |args: &[&str]| {
        Command::new(BIN)
            .args(args)
            .current_dir(repo)
            .env("HOME", home.join("home"))
            .env("XDG_CONFIG_HOME", home.join("home/.config"))
            .env("XDG_DATA_HOME", home.join("home/.local/share"))
            .env_remove("FRESHET_CONFIG")
            .output()
            .unwrap()
    };
    let started = std::time::Instant::now();
    loop {
        let received = freshet_cmd(&["events", "--status", "received"]);
        if String::from_utf8_lossy(&received.stdout).trim() == "no events" {
            break;
        }
        assert!(
            started.elapsed() < std::time::Duration::from_secs(30),
            "events not evaluated"
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    let actions = freshet_cmd(&["actions"]);
    let actions = String::from_utf8_lossy(&actions.stdout).to_string();
    let _ = daemon.kill();
    let _ = daemon.wait();
    assert!(!actions.contains("[dead]"), "{actions}");
    let errors: Vec<String> = log
        .lock()
        .unwrap()
        .iter()
        .filter(|line| line.contains(" ERROR "))
        .cloned()
        .collect();
    assert!(errors.is_empty(), "{errors:#?}");
    // The errored sample reaches the shipped failure rule, which says what it would post.
    let failure_logged = log
        .lock()
        .unwrap()
        .iter()
        .any(|line| line.contains("a failed dbt run, not posted"));
    assert!(failure_logged, "{:#?}", log.lock().unwrap());
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "the walk-through:\n{script}\nstdout:\n{stdout}\nstderr:\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    // What the README says the commands print.
    assert!(
        stdout.contains(r#"{"duplicate":false,"event_id":"dbt:wev_2L6ZDoilyiWzKkSA59Gmc2d7FDD"}"#),
        "{stdout}"
    );
    assert!(
        stdout.contains(r#"{"duplicate":true,"event_id":"dbt:wev_2L6ZDoilyiWzKkSA59Gmc2d7FDD"}"#),
        "{stdout}"
    );
    assert!(stdout.contains(r#""status":"ok""#), "{stdout}");
}

/// The fields `freshet check` knows (`event::FIELDS`, for its warning about a read of a
/// field no event has) are every field docs/rules.md's event tables name, and every field
/// intake makes of the sample webhooks: a field added to an event and its docs but not to
/// the list would be warned about in correct rules.
#[test]
fn the_fields_check_knows_are_the_documented_and_the_parsed_ones() {
    let known = freshet::event::FIELDS;
    let rules = read("docs/rules.md");
    let events = &rules[rules.find("## Events").unwrap()..rules.find("## Rule tests").unwrap()];
    let mut documented = vec!["id", "source", "type", "received_at", "chain_depth", "raw"];
    for row in events.lines().filter(|l| l.starts_with("| `")) {
        let first = row.split('|').nth(1).unwrap();
        documented.extend(
            first
                .split('`')
                .skip(1)
                .step_by(2)
                .filter(|name| name.chars().all(|c| c.is_ascii_lowercase() || c == '_')),
        );
    }
    // freshet.schedule's are in prose.
    documented.extend(["name", "due_at"]);
    for field in &documented {
        assert!(
            known.contains(field),
            "docs/rules.md names `{field}`, event::FIELDS lacks it"
        );
    }
    assert!(documented.len() > 50, "{documented:?}");
    let samples = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/samples");
    for entry in std::fs::read_dir(samples).unwrap() {
        let path = entry.unwrap().path();
        let body = std::fs::read(&path).unwrap();
        let name = path.file_name().unwrap().to_string_lossy().to_string();
        let event = if name.starts_with("dbt-") {
            freshet::ingest::dbt_cloud::parse(&body, "2026-12-06T00:00:00Z".into())
        } else {
            freshet::ingest::mode::parse(&body, "acme", "2026-12-06T00:00:00Z".into())
        }
        .unwrap_or_else(|e| panic!("{name}: {e:?}"));
        for field in event.fields.keys() {
            assert!(
                known.contains(&field.as_str()),
                "{name}: intake makes `{field}`, event::FIELDS lacks it"
            );
        }
    }
}
