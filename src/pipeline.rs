//! `freshet serve`: the one function that opens the journal, starts every task and wires
//! them together. Read this first.
//!
//! ```text
//! HTTP intake ──► journal (event + first job) ──► 200
//!                    │
//!                    ├─► enrich worker   (Mode runs, failed dbt runs: fetch what they lack)
//!                    ├─► evaluate worker (Rhai rules → action jobs, alert state, check-ins)
//!                    └─► action worker   (dbt, Mode, Tableau, Slack, PagerDuty with retries)
//! clock worker (deadlines, schedules) ──► journal (due-time events) ──► evaluate worker
//! ```
//!
//! Workers find their work in the journal, not in channels: intake only *wakes* them
//! (`Notify`), so a crash between two stages loses nothing.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use arc_swap::ArcSwap;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::{self, Config};
use crate::ingest::{self, listener, Health, Intake, IntakeSecrets};
use crate::journal::{self, blocking, Journal};
use crate::metrics::Metrics;
use crate::rules::engine::build_engine;
use crate::rules::watch::{Rules, Watch};
use crate::service;
use crate::shutdown::Signals;
use crate::stages::act::ActionWorker;
use crate::stages::clock::ClockWorker;
use crate::stages::enrich::EnrichWorker;
use crate::stages::evaluate::EvaluateWorker;
use crate::stages::Wakes;

/// How long a stop may take before in-flight work is abandoned (docs/behaviour.md section 1: at
/// most 10 s).
pub const SHUTDOWN_DEADLINE: Duration = Duration::from_secs(10);

/// Runs the daemon until SIGTERM or SIGINT. `config_path` is what `--config` named, so
/// SIGHUP can read the same file again.
pub async fn serve(config: Config, config_path: Option<PathBuf>) -> anyhow::Result<()> {
    let signals = Signals::install();
    ensure_rules_folder(&config.rules.dir)?;
    let file_limit = listener::raise_file_limit().unwrap_or(1024);
    let journal_config = config.journal.clone();
    let journal: Journal =
        tokio::task::spawn_blocking(move || journal::open_for_serve(&journal_config))
            .await
            .context("journal open task failed")??;
    let released = blocking(&journal, |j| j.release_running()).await?;
    if released.again > 0 {
        tracing::warn!(
            jobs = released.again,
            "Jobs left running by the last stop will run again."
        );
    }
    if released.dead > 0 {
        tracing::error!(
            jobs = released.dead,
            "Jobs left running by the last stop had no attempts left and are dead; `freshet actions --status dead` lists them."
        );
    }

    let metrics = Arc::new(Metrics::new());
    if let Some(instance) = journal.instance() {
        metrics.instance(&instance);
        tracing::info!(instance = %instance, "Sharing the PostgreSQL journal as this instance.");
    }
    let health = Arc::new(Health::default());
    let current = Arc::new(ArcSwap::from_pointee(config.clone()));
    let secrets = Arc::new(ArcSwap::from_pointee(IntakeSecrets::from_config(&config)));
    // What `configured(NAME)` answers in rules.
    crate::rules::api::set_configured(Some(config.configured_services()));
    let wakes = Wakes::default();
    // One client (and connection pool) for every call to Mode, Tableau and Slack.
    let http = crate::actions::client::build_client(&config.actions).map_err(anyhow::Error::msg)?;
    // Work queued by another instance (a shared journal) wakes the stage that takes it.
    journal.on_work({
        let wakes = wakes.clone();
        Arc::new(move |queue| wakes.wake(queue))
    });

    let watch = Watch::start(&config.rules.dir);
    let rules = {
        let engine = Arc::new(build_engine(config.rules.max_operations));
        let dir = config.rules.dir.clone();
        let metrics = Arc::clone(&metrics);
        tokio::task::spawn_blocking(move || Rules::load(engine, &dir, metrics))
            .await
            .context("rule loading task failed")?
    };

    let intake = Intake {
        journal: Arc::clone(&journal),
        secrets: Arc::clone(&secrets),
        metrics: Arc::clone(&metrics),
        max_body_bytes: config.server.max_body_bytes,
        body_budget: Arc::new(Semaphore::new(config.server.max_pending_body_bytes)),
        health: Arc::clone(&health),
        enrich_attempts: config.actions.max_attempts,
        wakes: wakes.clone(),
    };

    // `stop_http` ends the listener first; `stop_workers` follows once requests are done.
    let stop_http = CancellationToken::new();
    let stop_workers = CancellationToken::new();
    let tracker = TaskTracker::new();

    let tcp = listener::bind(config.server.listen)?;
    let addr = tcp.local_addr()?;
    let limits = listener::Limits {
        max_connections: listener::connection_cap(config.server.max_connections, file_limit),
    };
    if limits.max_connections < config.server.max_connections {
        tracing::warn!(
            max_connections = limits.max_connections,
            file_limit,
            "The open-file limit allows fewer connections than server.max_connections."
        );
    }
    let server = tokio::spawn(listener::serve(
        tcp,
        warp::service(ingest::routes(intake)),
        limits,
        stop_http.clone(),
    ));

    // The console: a listener of its own, never the webhook one (docs/behaviour.md section 16).
    if let Some(admin) = config.admin.clone() {
        let console = Arc::new(crate::console::Console::new(
            Arc::clone(&journal),
            Arc::clone(&current),
            Arc::clone(&rules.current),
            admin,
        ));
        let (console_addr, _console) = console.serve(stop_http.clone())?;
        tracing::info!(url = %format!("http://{console_addr}/"), "Console listening.");
    }

    let (reload_rules, _watch) = watch.spawn(rules.clone(), stop_workers.clone());
    tracker.spawn(
        EvaluateWorker {
            journal: Arc::clone(&journal),
            rules,
            config: Arc::clone(&current),
            metrics: Arc::clone(&metrics),
            wakes: wakes.clone(),
        }
        .run(stop_workers.clone()),
    );
    tracker.spawn(
        ClockWorker {
            journal: Arc::clone(&journal),
            config: Arc::clone(&current),
            wakes: wakes.clone(),
        }
        .run(stop_workers.clone()),
    );
    tracker.spawn(
        EnrichWorker {
            journal: Arc::clone(&journal),
            config: Arc::clone(&current),
            wakes: wakes.clone(),
            http: http.clone(),
            dbt_runs: Default::default(),
        }
        .run(stop_workers.clone()),
    );
    tracker.spawn(
        ActionWorker {
            journal: Arc::clone(&journal),
            config: Arc::clone(&current),
            metrics: Arc::clone(&metrics),
            wakes,
            http,
        }
        .run(stop_workers.clone()),
    );
    tracker.spawn(prune_loop(
        Arc::clone(&journal),
        Arc::clone(&current),
        stop_workers.clone(),
    ));
    tracker.close();

    // Logged once every stage and the rules watcher are running: tests and operators
    // take this line to mean the daemon is up, not only its port.
    tracing::info!(addr = %addr, journal = %journal::describe(&config.journal), "Listening.");
    // READY=1 first: the watchdog's first ping goes out at once.
    service::ready();
    service::spawn_watchdog(stop_workers.clone());

    let reload = {
        let current = Arc::clone(&current);
        let secrets = Arc::clone(&secrets);
        move || {
            let outcome = reload_config(config_path.clone(), &current, &secrets);
            health.reloaded(outcome);
            // A full queue already holds a reload that will read the same files.
            let _ = reload_rules.try_send(());
        }
    };
    signals.wait_for_stop(reload).await;

    tracing::info!("Stopping: finishing requests in flight.");
    service::stopping();
    stop_http.cancel();
    let deadline = tokio::time::Instant::now() + SHUTDOWN_DEADLINE;
    if tokio::time::timeout_at(deadline, server).await.is_err() {
        tracing::warn!("Requests still open at the deadline were dropped.");
    }
    stop_workers.cancel();
    if tokio::time::timeout_at(deadline, tracker.wait())
        .await
        .is_err()
    {
        tracing::warn!("Work still running at the deadline was left for the next start.");
    }
    match blocking(&journal, |j| j.release_unstarted()).await {
        Ok(0) => {}
        Ok(released) => tracing::info!(
            released,
            "Gave back evaluations this instance had not started, for the next start or another instance."
        ),
        Err(error) => tracing::warn!(error = %error, "Cannot give back the evaluations not started; they run again when their leases end."),
    }
    tracing::info!("Stopped.");
    Ok(())
}

/// `serve` refuses to start without its rules folder (docs/behaviour.md section 9): running with no
/// rules would look healthy and do nothing.
fn ensure_rules_folder(dir: &Path) -> anyhow::Result<()> {
    if dir.is_dir() {
        return Ok(());
    }
    anyhow::bail!(
        "{}: rules folder not found; create it (`mkdir -p {}`), or write a config and the example rules with `freshet init DIR`, or set rules.dir",
        dir.display(),
        dir.display()
    )
}

/// SIGHUP: reads the config again and swaps in its secrets. A config that does not load,
/// or that would leave a source that has a secret now without one (a file caught
/// half-written, emptied by mistake), is refused: the running one stays (docs/behaviour.md section
/// 11). Returns the outcome for `/healthz`.
fn reload_config(
    path: Option<PathBuf>,
    current: &ArcSwap<Config>,
    secrets: &ArcSwap<IntakeSecrets>,
) -> Result<(), String> {
    let config = match config::load(path.as_deref()) {
        Ok(config) => config,
        Err(errors) => {
            for problem in &errors.0 {
                tracing::error!(problem = %problem, "Configuration reload failed; keeping the running one.");
            }
            return Err(errors.to_string());
        }
    };
    let next = IntakeSecrets::from_config(&config);
    if let Some(lost) = secrets.load().sources_lost_in(&next) {
        let error = format!(
            "the reloaded config has no {lost}, which the running one has; kept the running config (a source is removed by a restart)"
        );
        tracing::error!(error = %error, "Configuration reload refused.");
        return Err(error);
    }
    warn_about_restart_only_changes(&current.load(), &config);
    secrets.store(Arc::new(next));
    crate::rules::api::set_configured(Some(config.configured_services()));
    current.store(Arc::new(config));
    tracing::info!("Configuration reloaded.");
    Ok(())
}

/// Settings a reload cannot apply (the listener, the journal, the rule engine and the
/// HTTP client are built at start): say so rather than pretend.
fn warn_about_restart_only_changes(running: &Config, next: &Config) {
    let changed = [
        ("server.listen", running.server.listen != next.server.listen),
        (
            "server limits",
            running.server.max_connections != next.server.max_connections
                || running.server.max_body_bytes != next.server.max_body_bytes
                || running.server.max_pending_body_bytes != next.server.max_pending_body_bytes,
        ),
        (
            "journal",
            running.journal.path != next.journal.path || running.journal.url != next.journal.url,
        ),
        ("rules.dir", running.rules.dir != next.rules.dir),
        (
            "rules.max_operations",
            running.rules.max_operations != next.rules.max_operations,
        ),
        (
            "actions.timeout_ms",
            running.actions.timeout_ms != next.actions.timeout_ms,
        ),
    ];
    for (key, _) in changed.iter().filter(|(_, changed)| *changed) {
        tracing::warn!(
            key,
            "This setting changed; it takes effect at the next restart."
        );
    }
}

/// Deletes events past `journal.retention_days`, hourly.
async fn prune_loop(journal: Journal, config: Arc<ArcSwap<Config>>, stop: CancellationToken) {
    let mut tick = tokio::time::interval(Duration::from_secs(3600));
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tick.tick() => {}
        }
        let days = config.load().journal.retention_days;
        // A stop waits for the batch under way, not for the whole backlog.
        let stopping = stop.clone();
        match blocking(&journal, move |j| {
            j.prune(days, &|| !stopping.is_cancelled())
        })
        .await
        {
            Ok(0) => {}
            Ok(pruned) => tracing::info!(events = pruned, days, "Pruned old events."),
            Err(error) => tracing::error!(error = %error, "Pruning the journal failed."),
        }
    }
}
