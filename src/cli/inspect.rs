//! The journal commands: `events`, `actions`, `retry`, `replay`. They open the journal
//! file directly (SQLite in WAL mode lets them read while the daemon writes).

use anyhow::Context;

use crate::config::Config;
use crate::journal::{FirstJob, JournalStore, Replay, SqliteJournal};

/// The journal the config names; it must exist (a mistyped path creates nothing). The
/// error names the path once.
fn open(config: &Config) -> anyhow::Result<SqliteJournal> {
    Ok(SqliteJournal::open_existing(&config.journal.path)?)
}

pub fn list_events(config: &Config, limit: usize, status: Option<&str>) -> anyhow::Result<bool> {
    let journal = open(config)?;
    let events = journal.events(limit, status)?;
    if events.is_empty() {
        println!("no events");
    }
    for event in events {
        println!(
            "{}  {}  {}  [{}]",
            event.received_at, event.kind, event.id, event.status
        );
        for rule in &event.rules {
            match &rule.error {
                Some(error) => println!("    rule {}: {}: {error}", rule.rule, rule.outcome),
                None => println!(
                    "    rule {}: {} ({} action calls)",
                    rule.rule, rule.outcome, rule.actions
                ),
            }
        }
        for action in &event.actions {
            println!(
                "    action #{} {} {} [{}] attempt {}/{}{}",
                action.id,
                action.kind,
                action.payload,
                action.status,
                action.attempt,
                action.max_attempts,
                action
                    .last_error
                    .as_deref()
                    .map(|e| format!(": {e}"))
                    .unwrap_or_default()
            );
        }
    }
    Ok(true)
}

pub fn show_event(config: &Config, id: &str) -> anyhow::Result<bool> {
    let journal = open(config)?;
    let event = journal
        .event(id)?
        .with_context(|| format!("no journaled event with id {id}"))?;
    println!("{}", serde_json::to_string_pretty(&event.to_json())?);
    Ok(true)
}

pub fn list_actions(config: &Config, status: Option<&str>, limit: usize) -> anyhow::Result<bool> {
    let journal = open(config)?;
    let jobs = journal.jobs(status, limit)?;
    if jobs.is_empty() {
        println!("no actions");
    }
    for job in jobs {
        println!(
            "#{}  {}  {}  [{}]  attempt {}/{}  rule {}  event {}{}",
            job.id,
            job.kind,
            job.payload,
            job.status,
            job.attempt,
            job.max_attempts,
            job.rule.as_deref().unwrap_or("-"),
            job.event_id,
            job.last_error
                .as_deref()
                .map(|e| format!("  last error: {e}"))
                .unwrap_or_default()
        );
    }
    Ok(true)
}

pub fn retry(config: &Config, id: i64) -> anyhow::Result<bool> {
    open(config)?.retry(id)?;
    println!("action #{id} queued again");
    Ok(true)
}

pub fn replay(config: &Config, id: &str) -> anyhow::Result<bool> {
    let journal = open(config)?;
    let event = journal
        .event(id)?
        .with_context(|| format!("no journaled event with id {id}"))?;
    // A Mode run event whose run was never fetched (Mode was down, the enrichment died)
    // is fetched first: the rules must not see it as if Mode had no results.
    let unverified_run = event.field("run_token").is_some_and(|t| !t.is_null())
        && event.field("verified") != Some(&serde_json::Value::Bool(true));
    let first = if unverified_run {
        FirstJob::enrich(config.actions.max_attempts)
    } else {
        FirstJob::EVALUATE
    };
    let job = journal.queue_replay(id, &Replay { first, rule: None })?;
    if unverified_run {
        println!("event {id} queued: its Mode run is fetched from Mode first, then the rules run (job #{job}); a running daemon picks it up");
    } else {
        println!("event {id} queued for evaluation (job #{job}); a running daemon picks it up");
    }
    Ok(true)
}
