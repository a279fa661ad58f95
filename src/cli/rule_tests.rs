//! Rule tests (docs/behaviour.md section 8): `freshet test` with no event files runs the tests in
//! `<rules dir>/tests/*.toml`, so a rule author can say in CI what a rule must do.
//!
//! ```toml
//! [[test]]
//! name = "nightly finance refreshes the dashboard"
//! event = "../../tests/fixtures/samples/dbt-job-run-completed.json"  # or an inline table
//! alerts = { "revenue-floor" = "firing" }   # the state alert calls see; default: all ok
//! only = false                              # true: calls not expected fail the test
//! expect_no = ["mode_run"]                  # these actions must not be called
//! [[test.expect]]
//! rule = "finance"                          # optional
//! action = "tableau_refresh"
//! args = ["Finance Overview"]               # optional; exactly, as a list or a map
//! ```
//!
//! Each test prints `PASS name` or `FAIL name: why` with the calls made, then a count.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::Context;
use serde::Deserialize;
use serde_json::{json, Value};

use super::dry_run::{event_from_value, load_rules, read_event};
use crate::config::{self, Config};
use crate::journal::AlertState;
use crate::rules::engine::build_engine;
use crate::rules::RuleSet;

/// One `tests/*.toml` file.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct TestFile {
    #[serde(default, rename = "test")]
    tests: Vec<RuleTest>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RuleTest {
    name: String,
    event: EventSpec,
    #[serde(default)]
    expect: Vec<Expected>,
    #[serde(default)]
    expect_no: Vec<String>,
    #[serde(default)]
    only: bool,
    /// Alert name -> "firing" or "ok".
    #[serde(default)]
    alerts: BTreeMap<String, String>,
    /// The clock alert decisions see (RFC 3339), for `renotify_minutes`; default: now.
    now: Option<String>,
    /// The services `configured(NAME)` says are configured; default: every one.
    configured: Option<Vec<String>>,
}

/// The event: a file (relative to the test file) or an inline table.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum EventSpec {
    File(PathBuf),
    Inline(toml::Table),
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct Expected {
    rule: Option<String>,
    action: String,
    args: Option<toml::Value>,
}

/// A call a rule made, as tests see it.
#[derive(Debug, Clone, PartialEq)]
struct SeenCall {
    rule: String,
    action: String,
    /// As written: a list for positional calls, a map for a call with one map.
    args: Value,
}

impl std::fmt::Display for SeenCall {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}({})", self.rule, self.action, self.args)
    }
}

/// `freshet test` with no event files.
pub fn run(explicit: Option<&Path>, rules: Option<&Path>, json: bool) -> anyhow::Result<bool> {
    let config = config::load_without_secrets(explicit)?;
    let rules_path = rules.unwrap_or(&config.rules.dir).to_path_buf();
    let engine = build_engine(config.rules.max_operations);
    let set = load_rules(&engine, &rules_path)?;
    for error in &set.errors {
        eprintln!("{error}");
    }
    let folder = if rules_path.is_file() {
        rules_path.parent().unwrap_or(Path::new(".")).to_path_buf()
    } else {
        rules_path.clone()
    };
    let tests_dir = folder.join("tests");
    let files = test_files(&tests_dir)?;
    if files.is_empty() {
        println!(
            "no rule tests in {} (write tests/*.toml there; docs/rules.md shows how)",
            tests_dir.display()
        );
        return Ok(set.errors.is_empty());
    }
    let (mut passed, mut failed) = (0, 0);
    for file in files {
        let text = std::fs::read_to_string(&file)
            .with_context(|| format!("cannot read {}", file.display()))?;
        let parsed: TestFile = toml::from_str(&text)
            .map_err(|error| anyhow::anyhow!("{}: {}", file.display(), error.message().trim()))?;
        for test in parsed.tests {
            let result = run_one(&test, &file, &config, &engine, &set);
            let line = match &result {
                Ok(()) => {
                    passed += 1;
                    format!("PASS {}", test.name)
                }
                Err(why) => {
                    failed += 1;
                    format!("FAIL {}: {why}", test.name)
                }
            };
            if json {
                println!(
                    "{}",
                    json!({"test": test.name, "file": file.display().to_string(),
                           "passed": result.is_ok(), "why": result.err()})
                );
            } else {
                println!("{line}");
            }
        }
    }
    if !json {
        println!("{passed} passed, {failed} failed");
    }
    Ok(failed == 0 && set.errors.is_empty())
}

fn test_files(dir: &Path) -> anyhow::Result<Vec<PathBuf>> {
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(error) => return Err(error).with_context(|| format!("cannot read {}", dir.display())),
    };
    let mut files: Vec<PathBuf> = entries
        .filter_map(|entry| entry.ok().map(|e| e.path()))
        .filter(|path| path.extension().is_some_and(|ext| ext == "toml"))
        .collect();
    files.sort();
    Ok(files)
}

/// An alert's queued job as a call: `slack_post(channel, #{ text, blocks, mention })` as
/// it would be posted, `slack_update(..)` for the first post's update on resolve, and
/// `pagerduty_event(#{ .. })`.
fn alert_job_call(kind: String, mut payload: Value) -> SeenCall {
    if kind != "slack_post" {
        return SeenCall {
            rule: String::new(),
            action: kind,
            args: json!([payload]),
        };
    }
    let map = payload.as_object_mut();
    let channel = map.as_ref().and_then(|m| m.get("channel").cloned());
    let update = map.as_ref().is_some_and(|m| m.contains_key("update_of"));
    if let Some(map) = map {
        for internal in ["channel", "thread_of", "update_of"] {
            map.remove(internal);
        }
    }
    SeenCall {
        rule: String::new(),
        action: if update { "slack_update" } else { "slack_post" }.into(),
        args: match channel {
            Some(channel) => json!([channel, payload]),
            None => json!([payload]),
        },
    }
}

/// Runs one test; the error is why it failed, with the calls made.
fn run_one(
    test: &RuleTest,
    file: &Path,
    config: &Config,
    engine: &rhai::Engine,
    set: &RuleSet,
) -> Result<(), String> {
    let event = match &test.event {
        EventSpec::File(path) => {
            let path = file.parent().unwrap_or(Path::new(".")).join(path);
            read_event(&path, config)
        }
        EventSpec::Inline(table) => serde_json::to_value(table)
            .map_err(anyhow::Error::from)
            .and_then(|value| event_from_value(value, config, "the inline event")),
    }
    .map_err(|error| format!("the event: {error:#}"))?;
    let alerts = alert_states(&test.alerts)?;
    if let Some(unknown) = test
        .configured
        .iter()
        .flatten()
        .find(|name| !crate::rules::api::SERVICES.contains(&name.as_str()))
    {
        return Err(format!(
            "configured: no service {unknown:?} ({})",
            crate::rules::api::SERVICES.join(", ")
        ));
    }
    crate::rules::api::set_configured(
        test.configured
            .clone()
            .map(|names| names.into_iter().collect()),
    );
    let now = match &test.now {
        None => chrono::Utc::now().timestamp_millis(),
        Some(text) => chrono::DateTime::parse_from_rfc3339(text)
            .map_err(|e| format!("now: {text:?} is not an RFC 3339 time: {e}"))?
            .timestamp_millis(),
    };
    let vars = Value::Object(config.vars.clone());
    let mut calls = Vec::new();
    for outcome in set.evaluate(engine, &event.to_json(), &vars) {
        if let Some((error, _)) = &outcome.error {
            return Err(format!("rule {} failed: {error}", outcome.rule));
        }
        for call in &outcome.calls {
            calls.push(SeenCall {
                rule: outcome.rule.clone(),
                action: call.request.kind().to_string(),
                args: call.written.clone(),
            });
            // An alert shows what it would queue: its Slack post (with blocks and
            // mentions), a chat.update of the first post, its PagerDuty event.
            if let Some(alert) = crate::alerts::call_of(&call.request, &outcome.rule, &event.id) {
                let state = alerts.iter().find(|a| a.name == alert.name);
                for job in crate::alerts::decide(state, &alert, now).jobs {
                    calls.push(SeenCall {
                        rule: outcome.rule.clone(),
                        ..alert_job_call(job.kind, job.payload)
                    });
                }
            }
        }
    }
    check_expectations(test, &calls)
}

/// The alert states a test sets; the others are OK (absent).
fn alert_states(states: &BTreeMap<String, String>) -> Result<Vec<AlertState>, String> {
    states
        .iter()
        .map(|(name, state)| {
            let firing = match state.as_str() {
                "firing" => true,
                "ok" => false,
                other => {
                    return Err(format!(
                        "alerts: {name} = {other:?}: the state is \"firing\" or \"ok\""
                    ))
                }
            };
            Ok(AlertState {
                name: name.clone(),
                firing,
                version: 1,
                since_ms: 0,
                last_notified_ms: firing.then_some(0),
                ..AlertState::default()
            })
        })
        .collect()
}

fn check_expectations(test: &RuleTest, calls: &[SeenCall]) -> Result<(), String> {
    // An expectation naming no action could never be met (or never fail): a typo.
    let actions = test
        .expect
        .iter()
        .map(|expected| expected.action.as_str())
        .chain(test.expect_no.iter().map(String::as_str));
    for action in actions {
        if !crate::actions::KINDS.contains(&action) && action != "slack_update" {
            return Err(format!(
                "no action is named {action:?} (actions: {}, slack_update)",
                crate::actions::KINDS.join(", ")
            ));
        }
    }
    let made = || {
        if calls.is_empty() {
            "\n    calls made: none".to_string()
        } else {
            let lines: Vec<String> = calls.iter().map(|c| format!("\n      + {c}")).collect();
            format!("\n    calls made:{}", lines.concat())
        }
    };
    let mut unmatched: Vec<&SeenCall> = calls.iter().collect();
    for expected in &test.expect {
        let args = match &expected.args {
            Some(args) => {
                Some(serde_json::to_value(args).map_err(|e| format!("expect.args: {e}"))?)
            }
            None => None,
        };
        let found = unmatched.iter().position(|call| {
            call.action == expected.action
                && expected
                    .rule
                    .as_ref()
                    .map_or(true, |rule| &call.rule == rule)
                && args
                    .as_ref()
                    .map_or(true, |args| same_args(args, &call.args))
        });
        match found {
            Some(index) => {
                unmatched.remove(index);
            }
            None => {
                let rule = expected
                    .rule
                    .as_deref()
                    .map(|r| format!("{r}: "))
                    .unwrap_or_default();
                let args = args.map(|a| a.to_string()).unwrap_or_else(|| "..".into());
                return Err(format!(
                    "expected call not made\n      - {rule}{}({args}){}",
                    expected.action,
                    made()
                ));
            }
        }
    }
    if let Some(call) = calls.iter().find(|c| test.expect_no.contains(&c.action)) {
        return Err(format!(
            "{} was called, and expect_no forbids it\n      + {call}{}",
            call.action,
            made()
        ));
    }
    if test.only && !unmatched.is_empty() {
        let extra: Vec<String> = unmatched.iter().map(|c| format!("\n      + {c}")).collect();
        return Err(format!(
            "calls not expected (only = true):{}{}",
            extra.concat(),
            made()
        ));
    }
    Ok(())
}

/// Arguments compare exactly, but a number written `1.0` in TOML equals the rule's `1`.
fn same_args(expected: &Value, actual: &Value) -> bool {
    match (expected, actual) {
        (Value::Number(a), Value::Number(b)) => a.as_f64() == b.as_f64(),
        (Value::Array(a), Value::Array(b)) => {
            a.len() == b.len() && a.iter().zip(b).all(|(x, y)| same_args(x, y))
        }
        // A map names what it checks: keys it leaves out (an alert post's blocks) are
        // not compared.
        (Value::Object(a), Value::Object(b)) => a
            .iter()
            .all(|(key, x)| b.get(key).is_some_and(|y| same_args(x, y))),
        _ => expected == actual,
    }
}
