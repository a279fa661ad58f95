//! The journal commands: `events` (and `--follow`), `actions`, `alerts`, `retry`,
//! `replay`. They open the journal file directly (SQLite in WAL mode lets them read while
//! the daemon writes); `--json` prints one object a line, for scripts.

use anyhow::Context;

use crate::config::Config;
use crate::journal::{
    self, EventSummary, FirstJob, JobStatus, JobSummary, Journal, Replay, Retried,
};

/// The journal the config names; it must exist (a mistyped path creates nothing). The
/// error names the path once.
fn open(config: &Config) -> anyhow::Result<Journal> {
    Ok(journal::open_for_command(&config.journal)?)
}

pub fn list_events(
    config: &Config,
    limit: usize,
    status: Option<&str>,
    json: bool,
) -> anyhow::Result<bool> {
    let journal = open(config)?;
    let events = journal.events(limit, status)?;
    if json {
        for event in &events {
            println!("{}", serde_json::to_string(event)?);
        }
        return Ok(true);
    }
    if events.is_empty() {
        println!("no events");
    }
    for event in events {
        print_event(&event);
    }
    Ok(true)
}

fn print_event(event: &EventSummary) {
    println!(
        "{}  {}  {}  [{}]{}",
        event.received_at,
        event.kind,
        event.id,
        event.status,
        event
            .instance
            .as_deref()
            .map(|i| format!("  by {i}"))
            .unwrap_or_default()
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

pub fn show_event(config: &Config, id: &str) -> anyhow::Result<bool> {
    let journal = open(config)?;
    let event = journal
        .event(id)?
        .with_context(|| format!("no journaled event with id {id}"))?;
    println!("{}", serde_json::to_string_pretty(&event.to_json())?);
    Ok(true)
}

pub fn list_actions(
    config: &Config,
    status: Option<JobStatus>,
    limit: usize,
    json: bool,
) -> anyhow::Result<bool> {
    let journal = open(config)?;
    let jobs = journal.jobs(status, limit)?;
    if json {
        for job in &jobs {
            println!("{}", serde_json::to_string(job)?);
        }
        return Ok(true);
    }
    if jobs.is_empty() {
        println!("no actions");
    }
    for job in jobs {
        print_job(&job);
    }
    Ok(true)
}

fn print_job(job: &JobSummary) {
    let merged = job
        .merged_into
        .map(|twin| format!("  merged into #{twin}"))
        .unwrap_or_default();
    let error = job
        .last_error
        .as_deref()
        .map(|e| format!("  last error: {e}"))
        .unwrap_or_default();
    println!(
        "#{}  {}  {}  [{}]  attempt {}/{}  rule {}  event {}{merged}{error}",
        job.id,
        job.kind,
        job.payload,
        job.status,
        job.attempt,
        job.max_attempts,
        job.rule.as_deref().unwrap_or("-"),
        job.event_id,
    );
}

pub fn retry(config: &Config, id: i64) -> anyhow::Result<bool> {
    match open(config)?.retry(id)? {
        Retried::Queued => println!("action #{id} queued again"),
        Retried::MergedInto(twin) => println!(
            "action #{id} merged into #{twin}: an identical call is pending already and runs for both"
        ),
    }
    Ok(true)
}

pub fn replay(config: &Config, id: &str, rule: Option<String>) -> anyhow::Result<bool> {
    if let Some(rule) = &rule {
        ensure_rule_exists(config, rule)?;
    }
    let journal = open(config)?;
    let event = journal
        .event(id)?
        .with_context(|| format!("no journaled event with id {id}"))?;
    // A Mode run event whose run was never fetched (Mode was down, the enrichment died)
    // is fetched first: the rules must not see it as if Mode had no results. A failed dbt
    // Cloud run is fetched again (docs/behaviour.md section 13): its failures as dbt has
    // them now.
    let dbt_fetches = config
        .dbt
        .as_ref()
        .is_some_and(|dbt| dbt.fetches_failures());
    let refetched_dbt_run = dbt_fetches && event.is_failed_dbt_cloud_run();
    let unverified_run = event.needs_fetching(dbt_fetches);
    let first = if unverified_run {
        FirstJob::enrich(config.actions.max_attempts)
    } else {
        FirstJob::EVALUATE
    };
    let job = journal.queue_replay(
        id,
        &Replay {
            first,
            rule: rule.clone(),
        },
    )?;
    let rules = match &rule {
        Some(rule) => format!("rule {rule}"),
        None => "the rules".to_string(),
    };
    if unverified_run {
        let service = if refetched_dbt_run {
            "dbt Cloud"
        } else {
            "Mode"
        };
        println!("event {id} queued: its run is fetched from {service} first, then {rules} run (job #{job}); a running daemon picks it up");
    } else {
        println!("event {id} queued for evaluation by {rules} (job #{job}); a running daemon picks it up");
    }
    Ok(true)
}

/// `--rule NAME` names a rule of the configured folder.
pub fn ensure_rule_exists(config: &Config, rule: &str) -> anyhow::Result<()> {
    let path = config.rules.dir.join(format!("{rule}.rhai"));
    anyhow::ensure!(
        path.is_file(),
        "no rule {rule} in {} (a rule is named after its file, without .rhai)",
        config.rules.dir.display()
    );
    Ok(())
}

/// An alert's state for people: times as RFC 3339.
#[derive(serde::Serialize)]
struct AlertLine {
    name: String,
    state: &'static str,
    since: String,
    last_notified: Option<String>,
    version: i64,
    #[serde(skip_serializing_if = "Option::is_none")]
    muted_until: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    mute_reason: Option<String>,
}

fn rfc3339(ms: i64) -> String {
    chrono::DateTime::from_timestamp_millis(ms)
        .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true))
        .unwrap_or_else(|| ms.to_string())
}

pub fn list_alerts(config: &Config, json: bool) -> anyhow::Result<bool> {
    let alerts = open(config)?.alerts()?;
    let now = chrono::Utc::now().timestamp_millis();
    let lines = alerts.into_iter().map(|alert| AlertLine {
        state: if alert.firing { "firing" } else { "ok" },
        since: rfc3339(alert.since_ms),
        last_notified: alert.last_notified_ms.map(rfc3339),
        version: alert.version,
        muted_until: alert
            .muted_until_ms
            .filter(|until| *until > now)
            .map(rfc3339),
        mute_reason: alert
            .mute_reason
            .filter(|_| alert.muted_until_ms.is_some_and(|until| until > now)),
        name: alert.name,
    });
    let mut any = false;
    for line in lines {
        any = true;
        if json {
            println!("{}", serde_json::to_string(&line)?);
        } else {
            let muted = match (&line.muted_until, &line.mute_reason) {
                (Some(until), Some(reason)) => format!("  muted until {until} ({reason})"),
                (Some(until), None) => format!("  muted until {until}"),
                _ => String::new(),
            };
            println!(
                "{}  [{}]  since {}  last notified {}{muted}",
                line.name,
                line.state,
                line.since,
                line.last_notified.as_deref().unwrap_or("never")
            );
        }
    }
    if !any && !json {
        println!("no alerts");
    }
    Ok(true)
}

/// A deadline for people (`freshet deadlines`).
#[derive(serde::Serialize)]
struct DeadlineLine {
    name: String,
    cron: String,
    timezone: String,
    next_due: Option<String>,
    last_check_in: Option<String>,
    /// `missed` (a miss no check-in has met), `met` (checked in since the last due
    /// time), `waiting` (no check-in yet since the last due time) or `new`.
    state: &'static str,
    missed_due: Option<String>,
}

pub fn list_deadlines(config: &Config, json: bool) -> anyhow::Result<bool> {
    let states = open(config)?.clocks()?;
    let now = chrono::Utc::now().timestamp_millis();
    for (name, clock) in &config.deadlines {
        let key = crate::stages::clock::ClockKind::Deadline.key(name);
        let stored = states.iter().find(|s| s.name == key);
        let state = match stored {
            None => "new",
            Some(s) if s.missed_due_ms.is_some() => "missed",
            Some(s) if s.last_check_in_ms.is_some_and(|at| at > s.last_due_ms) => "met",
            Some(_) => "waiting",
        };
        let line = DeadlineLine {
            name: name.clone(),
            cron: clock.pattern.clone(),
            timezone: clock.timezone.name().to_string(),
            next_due: clock.next_after(now).map(rfc3339),
            last_check_in: stored.and_then(|s| s.last_check_in_ms).map(rfc3339),
            state,
            missed_due: stored.and_then(|s| s.missed_due_ms).map(rfc3339),
        };
        if json {
            println!("{}", serde_json::to_string(&line)?);
        } else {
            println!(
                "{}  [{}]  next due {}  last check-in {}{}",
                line.name,
                line.state,
                line.next_due.as_deref().unwrap_or("never"),
                line.last_check_in.as_deref().unwrap_or("never"),
                line.missed_due
                    .as_deref()
                    .map(|due| format!("  missed {due}"))
                    .unwrap_or_default()
            );
        }
    }
    if config.deadlines.is_empty() && !json {
        println!("no deadlines ([deadlines.NAME] in the config)");
    }
    Ok(true)
}

/// `freshet alerts --mute NAME --for DURATION [--reason TEXT]`.
pub fn mute_alert(
    config: &Config,
    name: &str,
    duration: &str,
    reason: Option<&str>,
) -> anyhow::Result<bool> {
    let length = parse_duration(duration)?;
    let until = chrono::Utc::now().timestamp_millis() + length;
    anyhow::ensure!(
        open(config)?.mute_alert(name, Some(until), reason)?,
        "no alert named {name} (`freshet alerts` lists them; an alert exists once a rule has raised it)"
    );
    println!(
        "alert {name} muted until {}: it is tracked, and nothing is posted or paged",
        rfc3339(until)
    );
    Ok(true)
}

/// `freshet alerts --unmute NAME`.
pub fn unmute_alert(config: &Config, name: &str) -> anyhow::Result<bool> {
    anyhow::ensure!(
        open(config)?.mute_alert(name, None, None)?,
        "no alert named {name} (`freshet alerts` lists them)"
    );
    println!("alert {name} unmuted");
    Ok(true)
}

/// `90s`, `30m`, `2h`, `1d` (or a sum: `1h30m`) in ms.
fn parse_duration(text: &str) -> anyhow::Result<i64> {
    let mut total: i64 = 0;
    let mut number = String::new();
    for c in text.trim().chars() {
        if c.is_ascii_digit() {
            number.push(c);
            continue;
        }
        let unit = match c {
            's' => 1_000,
            'm' => 60_000,
            'h' => 3_600_000,
            'd' => 86_400_000,
            _ => anyhow::bail!("--for {text:?}: a duration such as 90s, 30m, 2h or 1d"),
        };
        let value: i64 = number
            .parse()
            .map_err(|_| anyhow::anyhow!("--for {text:?}: a number before each unit (2h)"))?;
        total = total.saturating_add(value.saturating_mul(unit));
        number.clear();
    }
    anyhow::ensure!(
        number.is_empty() && total > 0,
        "--for {text:?}: a duration such as 90s, 30m, 2h or 1d"
    );
    Ok(total)
}

pub fn reset_alert(config: &Config, name: &str) -> anyhow::Result<bool> {
    match open(config)?.reset_alert(name)? {
        None => anyhow::bail!("no alert named {name} (`freshet alerts` lists them)"),
        Some(false) => println!("alert {name} is already ok"),
        Some(true) => println!("alert {name} reset to ok; nothing was posted"),
    }
    Ok(true)
}

/// How often `--follow` looks at the journal.
const FOLLOW_EVERY: std::time::Duration = std::time::Duration::from_millis(250);

/// `events --follow`: prints each event and each action outcome journaled from now on,
/// until Ctrl-C (or SIGTERM). It reads the journal as the other commands do, so it
/// follows a daemon in another process.
/// With `since` (`10m`), the first look prints the events received within it and their
/// actions' outcomes before following.
pub async fn follow(config: &Config, json: bool, since: Option<&str>) -> anyhow::Result<bool> {
    let since_ms = since
        .map(parse_duration)
        .transpose()?
        .map(|length| chrono::Utc::now().timestamp_millis() - length);
    let recent = |event: &crate::journal::EventSummary| {
        since_ms.is_some_and(|from| {
            chrono::DateTime::parse_from_rfc3339(&event.received_at)
                .is_ok_and(|at| at.timestamp_millis() >= from)
        })
    };
    let mut recent_events = std::collections::HashSet::new();
    let journal = open(config)?;
    let mut seen_events = std::collections::HashSet::new();
    let mut job_states = std::collections::HashMap::new();
    let mut first = true;
    let mut interrupt = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::interrupt())?;
    let mut terminate = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    loop {
        let reading = std::sync::Arc::clone(&journal);
        let (events, jobs) = tokio::task::spawn_blocking(move || {
            Ok::<_, crate::journal::JournalError>((
                reading.events(FOLLOW_WINDOW, None)?,
                reading.jobs(None, FOLLOW_WINDOW)?,
            ))
        })
        .await??;
        // Oldest first, as they happened.
        for event in events.iter().rev() {
            let shown = !first || recent(event);
            if first && shown {
                recent_events.insert(event.id.clone());
            }
            if seen_events.insert(event.id.clone()) && shown {
                if json {
                    // `line` tells the two kinds of line apart; an event's `type` and an
                    // action's `kind` stay as they are (docs/behaviour.md section 17).
                    let mut line = serde_json::to_value(event)?;
                    line["line"] = serde_json::json!("event");
                    println!("{line}");
                } else {
                    println!("event  {}  {}  {}", event.received_at, event.kind, event.id);
                }
            }
        }
        for job in jobs.iter().rev() {
            let changed = job_states.insert(job.id, job.status) != Some(job.status);
            let outcome = matches!(
                job.status,
                JobStatus::Succeeded | JobStatus::Dead | JobStatus::Retrying
            );
            let shown = !first || recent_events.contains(&job.event_id);
            if changed && outcome && shown {
                if json {
                    let mut line = serde_json::to_value(job)?;
                    line["line"] = serde_json::json!("action");
                    println!("{line}");
                } else {
                    print!("action ");
                    print_job(job);
                }
            }
        }
        use std::io::Write;
        std::io::stdout().flush()?;
        if first {
            // On stderr, so that `--json` output stays JSON lines.
            eprintln!(
                "Following {}: new events and action outcomes appear below; Ctrl-C stops.",
                journal::describe(&config.journal)
            );
        }
        first = false;
        tokio::select! {
            _ = interrupt.recv() => return Ok(true),
            _ = terminate.recv() => return Ok(true),
            _ = tokio::time::sleep(FOLLOW_EVERY) => {}
        }
    }
}

/// How many of the newest events and jobs each look at the journal reads.
const FOLLOW_WINDOW: usize = 500;
