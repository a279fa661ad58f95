//! `freshet serve`: the one function that opens the journal, starts every task and wires
//! them together. Read this first.
//!
//! ```text
//! HTTP intake ──► journal (event + first job) ──► 200
//!                    │
//!                    ├─► enrich worker   (Mode runs: fetch state and results)
//!                    ├─► evaluate worker (Rhai rules → action jobs, alert state)
//!                    └─► action worker   (Mode, Tableau, Slack with retries)
//! ```
//!
//! Workers find their work in the journal, not in channels: intake only *wakes* them
//! (`Notify`), so a crash between two stages loses nothing.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use arc_swap::ArcSwap;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::actions::runner::ActionWorker;
use crate::config::{self, Config};
use crate::enrich::EnrichWorker;
use crate::ingest::{self, Intake, IntakeSecrets};
use crate::journal::{blocking, Journal, SqliteJournal};
use crate::metrics::Metrics;
use crate::rules::engine::build_engine;
use crate::rules::watch::{Rules, Watch};
use crate::rules::worker::EvaluateWorker;
use crate::service;
use crate::shutdown::Signals;

/// How long a stop may take before in-flight work is abandoned (SPEC: at most 10 s).
pub const SHUTDOWN_DEADLINE: Duration = Duration::from_secs(10);

/// Runs the daemon until SIGTERM or SIGINT. `config_path` is what `--config` named, so
/// SIGHUP can read the same file again.
pub async fn serve(config: Config, config_path: Option<PathBuf>) -> anyhow::Result<()> {
    let signals = Signals::install();
    let journal_path = config.journal.path.clone();
    let journal: Journal = Arc::new(
        tokio::task::spawn_blocking(move || SqliteJournal::open(&journal_path))
            .await
            .context("journal open task failed")??,
    );
    let released = blocking(&journal, |j| j.release_running()).await?;
    if released > 0 {
        tracing::warn!(
            jobs = released,
            "Jobs left running by the last stop will run again."
        );
    }

    let metrics = Arc::new(Metrics::new());
    let current = Arc::new(ArcSwap::from_pointee(config.clone()));
    let secrets = Arc::new(ArcSwap::from_pointee(IntakeSecrets::from_config(&config)));
    let evaluate_wake = Arc::new(Notify::new());
    let enrich_wake = Arc::new(Notify::new());
    // One client (and connection pool) for every call to Mode, Tableau and Slack.
    let http = crate::actions::client::build_client(&config.actions);
    let actions_wake = Arc::new(Notify::new());

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
        evaluate_wake: Arc::clone(&evaluate_wake),
        enrich_wake: Arc::clone(&enrich_wake),
    };

    // `stop_http` ends the listener first; `stop_workers` follows once requests are done.
    let stop_http = CancellationToken::new();
    let stop_workers = CancellationToken::new();
    let tracker = TaskTracker::new();

    let (addr, server) = warp::serve(ingest::routes(intake))
        .try_bind_with_graceful_shutdown(config.server.listen, stop_http.clone().cancelled_owned())
        .with_context(|| format!("cannot listen on {}", config.server.listen))?;
    let server = tokio::spawn(server);

    let (reload_rules, _watch) = watch.spawn(rules.clone(), stop_workers.clone());
    tracker.spawn(
        EvaluateWorker {
            journal: Arc::clone(&journal),
            rules,
            config: Arc::clone(&current),
            metrics: Arc::clone(&metrics),
            wake: Arc::clone(&evaluate_wake),
            actions_wake: Arc::clone(&actions_wake),
        }
        .run(stop_workers.clone()),
    );
    tracker.spawn(
        EnrichWorker {
            journal: Arc::clone(&journal),
            config: Arc::clone(&current),
            wake: enrich_wake,
            evaluate_wake: Arc::clone(&evaluate_wake),
            http: http.clone(),
        }
        .run(stop_workers.clone()),
    );
    tracker.spawn(
        ActionWorker {
            journal: Arc::clone(&journal),
            config: Arc::clone(&current),
            metrics: Arc::clone(&metrics),
            wake: Arc::clone(&actions_wake),
            events_wake: Arc::clone(&evaluate_wake),
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
    tracing::info!(addr = %addr, journal = %config.journal.path.display(), "Listening.");
    // READY=1 first: the watchdog's first ping goes out at once.
    service::ready();
    service::spawn_watchdog(stop_workers.clone());

    let reload = {
        let current = Arc::clone(&current);
        let secrets = Arc::clone(&secrets);
        move || {
            reload_config(config_path.clone(), &current, &secrets);
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
    tracing::info!("Stopped.");
    Ok(())
}

/// SIGHUP: read the config again and swap in its secrets. A config that no longer loads
/// keeps the running one and says why.
fn reload_config(
    path: Option<PathBuf>,
    current: &ArcSwap<Config>,
    secrets: &ArcSwap<IntakeSecrets>,
) {
    match config::load(path.as_deref()) {
        Ok(config) => {
            secrets.store(Arc::new(IntakeSecrets::from_config(&config)));
            current.store(Arc::new(config));
            tracing::info!("Configuration reloaded.");
        }
        Err(errors) => {
            for problem in &errors.0 {
                tracing::error!(problem = %problem, "Configuration reload failed; keeping the running one.");
            }
        }
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
        match blocking(&journal, move |j| j.prune(days)).await {
            Ok(0) => {}
            Ok(pruned) => tracing::info!(events = pruned, days, "Pruned old events."),
            Err(error) => tracing::error!(error = %error, "Pruning the journal failed."),
        }
    }
}
