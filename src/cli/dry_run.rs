//! `freshet check` and `freshet test`: validate and try rules offline. Neither contacts a
//! service nor writes to the journal.

use std::path::{Path, PathBuf};

use anyhow::Context;
use serde_json::{json, Value};

use crate::config::{self, Config, ConfigLocation};
use crate::event::{now_rfc3339, Event};
use crate::ingest::{dbt_cloud, mode};
use crate::journal::AlertState;
use crate::rules::engine::build_engine;
use crate::rules::lint::{check_in_problems, unknown_field_warnings};
use crate::rules::load::{load_dir, load_files};
use crate::rules::RuleError;
use crate::rules::RuleResult;
use crate::rules::RuleSet;

/// The config for `check`: the file if there is one, with its secrets read (check says
/// when one is missing), else the defaults (without generating the embedded secret: a
/// check creates nothing).
pub(super) fn check_config(explicit: Option<&Path>) -> Result<Config, config::ConfigErrors> {
    match config::locate(explicit)? {
        ConfigLocation::File(path) => Config::from_file(&path),
        ConfigLocation::Embedded => Config::defaults(),
    }
}

/// `freshet check`: every config problem as `PATH: key: message`, every rule problem as
/// `PATH:LINE:COL: message` with the source line and a caret.
pub fn check(explicit: Option<&Path>) -> anyhow::Result<bool> {
    let config = match check_config(explicit) {
        Ok(config) => config,
        Err(errors) => {
            for problem in &errors.0 {
                println!("{problem}");
            }
            return Ok(false);
        }
    };
    for warning in &config.warnings {
        println!(
            "{}: {}: warning: {}",
            warning.path.display(),
            warning.key,
            warning.message
        );
    }
    let engine = build_engine(config.rules.max_operations);
    let set = load_dir(&engine, &config.rules.dir, None);
    for error in &set.errors {
        println!("{}", error.with_source_excerpt());
    }
    // Unknown functions and map keys are load errors (above). Check-ins are checked
    // against the config's deadlines, when there is a config file (in a folder, no
    // deadline is known). A read of a field no event has is a warning: the rule runs, and
    // the condition that reads it is never true.
    let mut name_errors = 0;
    for rule in set.rules.values() {
        let Ok(source) = std::fs::read_to_string(&rule.path) else {
            continue;
        };
        let check_ins = match config.path {
            Some(_) => check_in_problems(&source, &config.deadlines),
            None => Vec::new(),
        };
        name_errors += check_ins.len();
        for problem in unknown_field_warnings(&source).into_iter().chain(check_ins) {
            let problem = RuleError {
                file: rule.path.clone(),
                line: problem.line,
                column: problem.column,
                message: problem.message,
            };
            println!("{}", problem.with_source_excerpt());
        }
    }
    let folder_found = config.rules.dir.is_dir();
    if !folder_found {
        println!(
            "{}: rules folder not found (create it, or write the example rules with `freshet init DIR`)",
            config.rules.dir.display()
        );
    }
    let ok = set.errors.is_empty() && folder_found && name_errors == 0;
    println!(
        "{}: {} rule(s) compiled, {} with errors",
        config
            .path
            .as_deref()
            .map(|p| p.display().to_string())
            .unwrap_or_else(|| "embedded defaults".into()),
        set.rules.len(),
        set.errors.len() + name_errors
    );
    Ok(ok)
}

/// What `configured(NAME)` answers in a dry run: as the config file says; with none (the
/// embedded defaults), every service counts as configured, so the dry run shows what the
/// rules would do once they are.
fn set_configured_from(config: &Config) {
    crate::rules::api::set_configured(config.path.as_ref().map(|_| config.configured_services()));
}

/// `freshet test`: evaluate the rules on event files and print the calls they make.
pub fn test(
    explicit: Option<&Path>,
    rules: Option<&Path>,
    json_lines: bool,
    events: &[PathBuf],
) -> anyhow::Result<bool> {
    let config = config::load_without_secrets(explicit)?;
    set_configured_from(&config);
    let engine = build_engine(config.rules.max_operations);
    let set = load_rules(&engine, rules.unwrap_or(&config.rules.dir))?;
    let mut ok = true;
    for error in &set.errors {
        eprintln!("{error}");
        ok = false;
    }
    let alerts = current_alerts(&config);
    let vars = Value::Object(config.vars.clone());
    for path in events {
        let event = read_event(path, &config)?;
        if !json_lines {
            println!(
                "event {} ({}) from {}",
                event.id,
                event.kind,
                path.display()
            );
            if let Some(note) = not_enriched_note(&event) {
                println!("  note: {note}");
            }
        }
        let outcomes = set.evaluate(&engine, &event.to_json(), &vars);
        ok &= print_outcomes(&event, &outcomes, &alerts, json_lines)?;
    }
    Ok(ok)
}

/// `freshet replay ID --dry-run`: what the rules (or one rule) would call now for a
/// journaled event; nothing is queued.
pub fn replay(config: &Config, id: &str, rule: Option<&str>) -> anyhow::Result<bool> {
    if let Some(rule) = rule {
        super::inspect::ensure_rule_exists(config, rule)?;
    }
    let journal = crate::journal::open_for_command(&config.journal)?;
    let event = journal
        .event(id)?
        .with_context(|| format!("no journaled event with id {id}"))?;
    let alerts = journal.alerts()?;
    drop(journal);
    set_configured_from(config);
    let engine = build_engine(config.rules.max_operations);
    let set = load_dir(&engine, &config.rules.dir, None);
    let mut ok = true;
    for error in &set.errors {
        eprintln!("{error}");
        ok = false;
    }
    let vars = Value::Object(config.vars.clone());
    println!(
        "event {} ({}), dry run: nothing is queued",
        event.id, event.kind
    );
    if let Some(note) = not_enriched_note(&event) {
        println!("  note: {note}");
    }
    let outcomes = set.evaluate_only(&engine, || event.to_json(), &vars, rule);
    ok &= print_outcomes(&event, &outcomes, &alerts, false)?;
    Ok(ok)
}

/// For a Mode run event, or a failed dbt Cloud run, that was never fetched: what the
/// rules will not see in it.
pub fn not_enriched_note(event: &Event) -> Option<String> {
    if event.is_unfetched_mode_run() {
        return Some("this Mode event is not enriched: freshet fetches the run from Mode before the rules see it, so run_state, report_name, run_url, results and result_errors are missing here and verified is false. Test with the journaled event (`freshet events --show ID > event.json`) to have them.".to_string());
    }
    (event.is_failed_dbt_cloud_run() && event.field("failures").is_none()).then(|| {
        "this failed dbt run is not enriched: with dbt.api_token, freshet fetches why it failed before the rules see it, so failures, failures_truncated, run_url and status_message are missing here. Test with the journaled event (`freshet events --show ID > event.json`) to have them.".to_string()
    })
}

/// Prints what each rule did: log lines, errors (on stderr), and each call, with what an
/// `alert(..)` call would do given `alerts`. False if a rule failed.
fn print_outcomes(
    event: &Event,
    outcomes: &[RuleResult],
    alerts: &[AlertState],
    json_lines: bool,
) -> anyhow::Result<bool> {
    let mut ok = true;
    for outcome in outcomes {
        for (line, text) in &outcome.logs {
            if !json_lines {
                println!("  rule {} log (line {line}): {text}", outcome.rule);
            }
        }
        if let Some((error, _)) = &outcome.error {
            eprintln!("{error}");
            ok = false;
            continue;
        }
        for call in &outcome.calls {
            let mut line = json!({
                "event": event.id, "rule": outcome.rule,
                // As the rule wrote it: the form a rule test's `args` takes, so a line can
                // be pasted into a test (docs/behaviour.md section 17).
                "action": call.request.kind(), "args": call.written,
            });
            if let Some(alert) = crate::alerts::call_of(&call.request, &outcome.rule, &event.id) {
                let state = alerts.iter().find(|a| a.name == alert.name);
                let decision =
                    crate::alerts::decide(state, &alert, chrono::Utc::now().timestamp_millis());
                line["alert"] = json!(decision.summary);
            }
            if json_lines {
                println!("{line}");
            } else {
                let alert = line
                    .get("alert")
                    .map(|a| format!("  ({})", a.as_str().unwrap_or("")))
                    .unwrap_or_default();
                println!(
                    "  rule {}: {} {}{alert}",
                    outcome.rule,
                    call.request.kind(),
                    call.written
                );
            }
        }
    }
    Ok(ok)
}

pub fn load_rules(engine: &rhai::Engine, path: &Path) -> anyhow::Result<RuleSet> {
    if path.is_file() {
        return Ok(load_files(engine, &[path.to_path_buf()], None));
    }
    anyhow::ensure!(path.is_dir(), "rules not found at {}", path.display());
    Ok(load_dir(engine, path, None))
}

/// Alert states from the journal, if one exists (opened only to read).
pub fn current_alerts(config: &Config) -> Vec<AlertState> {
    if config.journal.url.is_none() && !config.journal.path.is_file() {
        return Vec::new();
    }
    crate::journal::open_for_command(&config.journal)
        .and_then(|journal| journal.alerts())
        .unwrap_or_default()
}

/// An event file: a journaled event (`events --show` output), or a raw dbt or Mode
/// webhook body, told apart by shape.
pub fn read_event(path: &Path, config: &Config) -> anyhow::Result<Event> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    let value: Value =
        serde_json::from_str(&text).with_context(|| format!("{} is not JSON", path.display()))?;
    event_from_value(value, config, &path.display().to_string())
}

/// An event from JSON: a journaled event, or a raw dbt or Mode webhook body, told apart
/// by shape. `origin` names where it came from, for errors.
pub fn event_from_value(value: Value, config: &Config, origin: &str) -> anyhow::Result<Event> {
    if value.get("id").is_some() && value.get("source").is_some() && value.get("type").is_some() {
        return Event::from_json(value)
            .with_context(|| format!("{origin} is not a journaled event"));
    }
    if dbt_cloud::looks_like(&value) {
        return dbt_cloud::from_value(value, now_rfc3339()).with_context(|| origin.to_string());
    }
    if mode::looks_like(&value) {
        // Without a configured workspace, trust the one in the file: nothing is fetched.
        let workspace = config
            .mode
            .as_ref()
            .map(|m| m.workspace.clone())
            .or_else(|| mode::workspace_named_in(&value))
            .unwrap_or_default();
        return mode::from_value(value, &workspace, now_rfc3339())
            .with_context(|| origin.to_string());
    }
    anyhow::bail!("{origin}: neither a dbt Cloud webhook, a Mode webhook nor a journaled event")
}
