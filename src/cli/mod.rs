//! The command line of docs/behaviour.md section 1 (clap derive) and the dispatch to each command.
//!
//! Every command returns `Ok(true)` when all went well, `Ok(false)` for a failed check
//! (exit 1 without an error chain), or an error that `main` prints once (exit 1). Usage
//! errors are clap's (exit 2).

mod dry_run;
mod init;
mod inspect;
mod online;
mod rule_tests;
mod send;

use std::path::PathBuf;

use clap::{Parser, Subcommand};

use crate::config;
use crate::journal::JobStatus;
use crate::telemetry::LogFormat;

#[derive(Debug, Parser)]
#[command(
    name = "freshet",
    version,
    about = "Automation daemon: dbt Cloud and Mode webhooks -> Rhai rules -> Mode, Tableau and Slack."
)]
pub struct Cli {
    /// Config file (else $FRESHET_CONFIG, else freshet.toml in the user config dir).
    #[arg(long, global = true, value_name = "FILE")]
    pub config: Option<PathBuf>,

    /// Log line format on stderr.
    #[arg(long, global = true, value_enum, default_value = "text")]
    pub log_format: LogFormat,

    /// With `--json`: print the journal's location as the first line (`{"journal": ..}`);
    /// without `--json` it is always named on stderr.
    #[arg(long, global = true)]
    pub verbose: bool,

    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the daemon: HTTP listener, rules with hot reload, action runner, journal.
    Serve,
    /// Validate the config and compile every rule; check the functions rules call. No network.
    Check {
        /// Also try each configured service once with a call that changes nothing (Slack
        /// auth.test, Tableau sign-in and sign-out, Mode's workspace, dbt Cloud's account,
        /// PagerDuty's key shape): one line each, exit 1 if any fails.
        #[arg(long)]
        online: bool,
    },
    /// Dry run: evaluate the rules on event files and print the calls they make; with no
    /// event files, run the rule tests in `<rules dir>/tests/*.toml`.
    Test {
        /// A rules folder or one rule file (default: the configured rules folder).
        #[arg(long, value_name = "PATH")]
        rules: Option<PathBuf>,
        /// One JSON object a line: {"event","rule","action","args"}.
        #[arg(long)]
        json: bool,
        /// Raw dbt or Mode webhook bodies, or journaled events (`events --show` output).
        #[arg(value_name = "EVENT.json")]
        events: Vec<PathBuf>,
    },
    /// Write a freshet.toml that works at once (a generated dbt webhook secret beside it,
    /// service sections commented out), the example rules and their tests into DIR
    /// (default: the user config dir).
    Init {
        dir: Option<PathBuf>,
        /// Write the form the packaged systemd unit reads: secrets as credentials from
        /// DIR/credentials, the journal in /var/lib/freshet (DIR defaults to /etc/freshet).
        #[arg(long)]
        systemd: bool,
    },
    /// Post a webhook to a running daemon (a file, or a built-in sample) and print the answer.
    Send {
        #[command(subcommand)]
        target: SendTarget,
    },
    /// List journaled events, newest first, or show one as JSON, or follow new ones.
    Events {
        /// How many events to list.
        #[arg(long, default_value_t = 20)]
        limit: usize,
        /// Only events with this status.
        #[arg(long, value_enum)]
        status: Option<EventStatus>,
        /// Print this event as JSON, enriched fields included.
        #[arg(long, value_name = "ID", conflicts_with = "follow")]
        show: Option<String>,
        /// Print events and action outcomes as they are journaled, until interrupted.
        #[arg(long)]
        follow: bool,
        /// With --follow: start with the events of this recent past (10m, 2h) and their
        /// actions' outcomes.
        #[arg(long, value_name = "DURATION", requires = "follow")]
        since: Option<String>,
        /// One JSON object a line.
        #[arg(long)]
        json: bool,
    },
    /// List queued and finished actions (and jobs that are dead or retrying).
    Actions {
        /// Only actions with this status.
        #[arg(long, value_enum)]
        status: Option<JobStatusArg>,
        #[arg(long, default_value_t = 50)]
        limit: usize,
        /// One JSON object a line.
        #[arg(long)]
        json: bool,
    },
    /// List alert states, or reset one to OK without posting.
    Alerts {
        /// Set this alert to OK, posting nothing.
        #[arg(long, value_name = "NAME", conflicts_with_all = ["mute", "unmute"])]
        reset: Option<String>,
        /// Keep tracking this alert but post and page nothing for `--for` (a transition
        /// meanwhile is posted when the mute ends, if the alert is still in that state).
        #[arg(
            long,
            value_name = "NAME",
            requires = "for_",
            conflicts_with = "unmute"
        )]
        mute: Option<String>,
        /// How long to mute: 90s, 30m, 2h, 1d.
        #[arg(long = "for", value_name = "DURATION")]
        for_: Option<String>,
        /// Why, shown by `freshet alerts`.
        #[arg(long, requires = "mute")]
        reason: Option<String>,
        /// End an alert's mute now.
        #[arg(long, value_name = "NAME")]
        unmute: Option<String>,
        /// One JSON object a line.
        #[arg(long)]
        json: bool,
    },
    /// List the deadlines: when each is next due, the last check-in, met or missed.
    Deadlines {
        /// One JSON object a line.
        #[arg(long)]
        json: bool,
    },
    /// Re-queue a dead action (or job) for one more attempt.
    Retry {
        #[arg(value_name = "ACTION_ID")]
        id: i64,
    },
    /// Evaluate the rules again on a journaled event and queue the actions they call.
    Replay {
        #[arg(value_name = "ID")]
        id: String,
        /// Print the calls the rules make now, and queue nothing.
        #[arg(long)]
        dry_run: bool,
        /// Evaluate only this rule (its file name without .rhai).
        #[arg(long, value_name = "NAME")]
        rule: Option<String>,
    },
}

impl Command {
    /// Commands whose output is read by other programs (`| head`, `| jq`) and that write
    /// to no socket.
    pub fn prints_to_a_pipe(&self) -> bool {
        !matches!(
            self,
            Command::Serve | Command::Send { .. } | Command::Check { online: true }
        )
    }
}

/// An event's status in the journal, for `events --status`.
#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub enum EventStatus {
    /// Journaled, not evaluated yet (Mode runs: not fetched yet).
    Received,
    /// The rules have run on it.
    Evaluated,
}

/// A job's status, for `actions --status` (README, "Operating").
#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub enum JobStatusArg {
    Pending,
    Running,
    Retrying,
    Succeeded,
    Dead,
    Merged,
}

impl EventStatus {
    fn as_str(self) -> &'static str {
        match self {
            EventStatus::Received => "received",
            EventStatus::Evaluated => "evaluated",
        }
    }
}

impl From<JobStatusArg> for JobStatus {
    fn from(status: JobStatusArg) -> JobStatus {
        match status {
            JobStatusArg::Pending => JobStatus::Pending,
            JobStatusArg::Running => JobStatus::Running,
            JobStatusArg::Retrying => JobStatus::Retrying,
            JobStatusArg::Succeeded => JobStatus::Succeeded,
            JobStatusArg::Dead => JobStatus::Dead,
            JobStatusArg::Merged => JobStatus::Merged,
        }
    }
}

#[derive(Debug, Subcommand)]
pub enum SendTarget {
    /// Sign a dbt Cloud webhook with the configured dbt secret and post it to /webhooks/dbt.
    Dbt {
        /// The body to post (or use --sample).
        #[arg(required_unless_present = "sample", conflicts_with = "sample")]
        file: Option<PathBuf>,
        /// A built-in sample, with a fresh event id each time.
        #[arg(long, value_enum)]
        sample: Option<DbtSample>,
        /// Give FILE a fresh event id, so posting it again is not a duplicate.
        #[arg(long)]
        new_id: bool,
        /// Set a field of the body by its dotted path: `--set data.jobName="nightly finance"`,
        /// `--set data.runStatus=Errored` (a JSON value, or else a string). Repeatable.
        #[arg(long = "set", value_name = "PATH=VALUE")]
        set: Vec<String>,
        /// Where to post (default: the configured listen address).
        #[arg(long)]
        url: Option<String>,
    },
    /// Post a dbt Core invocation (its target/run_results.json) to /webhooks/dbt-core,
    /// signed with the configured dbt secret: run it as the step after `dbt build`.
    #[command(name = "dbt-core")]
    DbtCore {
        /// The invocation's run_results.json (target/run_results.json).
        run_results: PathBuf,
        /// Its manifest.json, for the failed nodes' owners and tags.
        #[arg(long)]
        manifest: Option<PathBuf>,
        /// The job's name in the event (default: the dbt command and its selectors).
        #[arg(long)]
        job: Option<String>,
        /// Where to post (default: the configured listen address).
        #[arg(long)]
        url: Option<String>,
    },
    /// Post a Mode webhook to the configured Mode token route.
    Mode {
        /// The body to post (or use --sample).
        #[arg(required_unless_present = "sample", conflicts_with = "sample")]
        file: Option<PathBuf>,
        /// A built-in sample, with a fresh run (and so event id) each time.
        #[arg(long, value_enum)]
        sample: Option<ModeSample>,
        /// Give FILE a fresh run token, so posting it again is not a duplicate.
        #[arg(long)]
        new_id: bool,
        /// Set a field of the body by its dotted path: `--set data.jobName="nightly finance"`,
        /// `--set data.runStatus=Errored` (a JSON value, or else a string). Repeatable.
        #[arg(long = "set", value_name = "PATH=VALUE")]
        set: Vec<String>,
        /// Where to post (default: the configured listen address and token route).
        #[arg(long)]
        url: Option<String>,
    },
}

/// The built-in dbt Cloud samples (`send dbt --sample`).
#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub enum DbtSample {
    #[value(name = "job.run.completed")]
    JobRunCompleted,
    #[value(name = "job.run.errored")]
    JobRunErrored,
    #[value(name = "job.run.started")]
    JobRunStarted,
}

/// The built-in Mode samples (`send mode --sample`).
#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub enum ModeSample {
    #[value(name = "report_run_completed")]
    ReportRunCompleted,
}

/// Runs one command.
pub async fn run(cli: Cli) -> anyhow::Result<bool> {
    let config_path = cli.config.clone();
    let verbose = cli.verbose;
    match cli.command {
        Command::Serve => {
            let location = config::locate(config_path.as_deref())?;
            let config = match &location {
                config::ConfigLocation::File(path) => config::Config::from_file(path)?,
                config::ConfigLocation::Embedded => {
                    let config = config::Config::embedded()?;
                    announce_embedded(&config);
                    config
                }
            };
            for warning in &config.warnings {
                tracing::warn!(problem = %warning, "Configuration warning.");
            }
            crate::pipeline::serve(config, config_path).await?;
            Ok(true)
        }
        Command::Check { online } => {
            let ok = dry_run::check(config_path.as_deref())?;
            if !online {
                return Ok(ok);
            }
            // A config that does not load was reported above: nothing to try.
            let Ok(config) = dry_run::check_config(config_path.as_deref()) else {
                return Ok(false);
            };
            let outcomes = online::try_services(&config)
                .await
                .map_err(anyhow::Error::msg)?;
            Ok(online::print(&outcomes) && ok)
        }
        Command::Test {
            rules,
            json,
            events,
        } if events.is_empty() => rule_tests::run(config_path.as_deref(), rules.as_deref(), json),
        Command::Test {
            rules,
            json,
            events,
        } => dry_run::test(config_path.as_deref(), rules.as_deref(), json, &events),
        Command::Init { dir, systemd } => init::run(
            dir,
            if systemd {
                init::Target::Systemd
            } else {
                init::Target::Here
            },
        ),
        Command::Send { target } => send::run(config_path.as_deref(), target).await,
        Command::Events {
            limit,
            status,
            show,
            follow,
            since,
            json,
        } => {
            let config = config::load_without_secrets(config_path.as_deref())?;
            name_journal(&config, json && show.is_none(), verbose);
            match (show, follow) {
                (Some(id), _) => inspect::show_event(&config, &id),
                (None, true) => inspect::follow(&config, json, since.as_deref()).await,
                (None, false) => {
                    inspect::list_events(&config, limit, status.map(EventStatus::as_str), json)
                }
            }
        }
        Command::Actions {
            status,
            limit,
            json,
        } => {
            let config = config::load_without_secrets(config_path.as_deref())?;
            name_journal(&config, json, verbose);
            inspect::list_actions(&config, status.map(JobStatus::from), limit, json)
        }
        Command::Alerts {
            reset,
            mute,
            for_,
            reason,
            unmute,
            json,
        } => {
            let config = config::load_without_secrets(config_path.as_deref())?;
            name_journal(&config, json, verbose);
            match (reset, mute, unmute) {
                (Some(name), _, _) => inspect::reset_alert(&config, &name),
                (_, Some(name), _) => inspect::mute_alert(
                    &config,
                    &name,
                    for_.as_deref().unwrap_or_default(),
                    reason.as_deref(),
                ),
                (_, _, Some(name)) => inspect::unmute_alert(&config, &name),
                _ => inspect::list_alerts(&config, json),
            }
        }
        Command::Deadlines { json } => {
            let config = config::load_without_secrets(config_path.as_deref())?;
            name_journal(&config, json, verbose);
            inspect::list_deadlines(&config, json)
        }
        Command::Retry { id } => {
            let config = config::load_without_secrets(config_path.as_deref())?;
            name_journal(&config, false, verbose);
            inspect::retry(&config, id)
        }
        Command::Replay { id, dry_run, rule } => {
            let config = config::load_without_secrets(config_path.as_deref())?;
            name_journal(&config, false, verbose);
            if dry_run {
                dry_run::replay(&config, &id, rule.as_deref())
            } else {
                inspect::replay(&config, &id, rule)
            }
        }
    }
}

/// Names the journal a command reads (docs/behaviour.md section 17), so nobody reads
/// another journal than they meant (root's own, beside the packaged daemon's) unawares:
/// on stderr, or, for `--json` output, as its first line when asked (`--verbose`).
fn name_journal(config: &config::Config, json: bool, verbose: bool) {
    let place = crate::journal::describe(&config.journal);
    if !json {
        eprintln!("journal: {place}");
    } else if verbose {
        println!("{}", serde_json::json!({ "journal": place }));
    }
}

/// With no config file, tell the newcomer what the daemon generated and how to try it.
/// Printed on stdout, once, at start-up (docs/behaviour.md section 3); never written to the log.
fn announce_embedded(config: &config::Config) {
    print!("{}", embedded_banner(config));
}

fn embedded_banner(config: &config::Config) -> String {
    let secret = config
        .dbt
        .as_ref()
        .and_then(|dbt| dbt.webhook_secrets.first())
        .map(|s| s.expose().to_string())
        .unwrap_or_default();
    format!(
        "freshet: no config file found; running on embedded defaults.\n\
         \x20 journal:    {}\n\
         \x20 rules:      {}\n\
         \x20 dbt secret: {secret}  (kept in {})\n\
         \x20 console:    http://{}/\n\
         \x20 try it:     freshet send dbt --sample job.run.completed\n\
         \x20             freshet send dbt --sample job.run.errored   (a failed run)\n",
        config.journal.path.display(),
        config.rules.dir.display(),
        config::default_data_dir()
            .join(config::GENERATED_SECRET_FILE)
            .display(),
        config
            .admin
            .as_ref()
            .map_or("(none)".to_string(), |admin| admin.listen.to_string()),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_start_banner_names_the_samples() {
        let config = config::Config::defaults().unwrap();
        let banner = embedded_banner(&config);
        assert!(
            banner.contains("  try it:     freshet send dbt --sample job.run.completed\n"),
            "{banner}"
        );
        assert!(banner.contains("--sample job.run.errored"), "{banner}");
        assert!(
            banner.contains("  console:    http://127.0.0.1:8788/\n"),
            "{banner}"
        );
        assert!(
            banner.contains("(kept in ") && !banner.contains("(kept in 127.0.0.1"),
            "{banner}"
        );
    }
}
