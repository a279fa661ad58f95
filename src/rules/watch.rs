//! Hot reload: notify watches the rules folder; changes are debounced, the folder is
//! recompiled off the async workers, and the new [`RuleSet`] is published with
//! `ArcSwap::store`. Evaluations already running keep the snapshot they loaded.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use notify::{RecommendedWatcher, RecursiveMode, Watcher};
use rhai::Engine;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::load::load_dir;
use super::RuleSet;
use crate::metrics::Metrics;

/// How long to wait for an editor's burst of writes to settle before recompiling.
const DEBOUNCE: Duration = Duration::from_millis(100);

/// The rules in force and what it takes to reload them. Cheap to clone.
#[derive(Clone)]
pub struct Rules {
    pub engine: Arc<Engine>,
    pub current: Arc<ArcSwap<RuleSet>>,
    pub dir: PathBuf,
    metrics: Arc<Metrics>,
}

impl Rules {
    /// Compiles `dir` for the first time.
    pub fn load(engine: Arc<Engine>, dir: &Path, metrics: Arc<Metrics>) -> Rules {
        let rules = Rules {
            engine,
            current: Arc::new(ArcSwap::from_pointee(RuleSet::default())),
            dir: dir.to_path_buf(),
            metrics,
        };
        rules.reload();
        rules
    }

    /// Recompiles the folder and publishes the result (blocking).
    pub fn reload(&self) {
        let previous = self.current.load_full();
        let set = load_dir(&self.engine, &self.dir, Some(&previous));
        for error in &set.errors {
            tracing::error!(
                rule = %error.file.display(), line = error.line, column = error.column, error = %error,
                "Rule failed to compile; its last good version (if any) keeps running."
            );
        }
        let removed: Vec<&String> = previous
            .rules
            .keys()
            .filter(|name| !set.rules.contains_key(*name))
            .collect();
        for name in removed {
            tracing::info!(rule = %name, "Rule removed.");
        }
        self.metrics.rules_loaded.set(set.rules.len() as i64);
        self.metrics
            .rule_compile_errors
            .set(set.errors.len() as i64);
        tracing::info!(
            rules_loaded = set.rules.len(),
            rule_errors = set.errors.len(),
            compiled = set.compiled,
            "Rules reloaded."
        );
        self.current.store(Arc::new(set));
    }

    /// Reloads on a blocking thread.
    pub async fn reload_async(&self) {
        let rules = self.clone();
        if let Err(error) = tokio::task::spawn_blocking(move || rules.reload()).await {
            tracing::error!(error = %error, "Rule reload task failed.");
        }
    }
}

/// Sends a reload request to the watch task (from SIGHUP).
pub type ReloadRequests = mpsc::Sender<()>;

/// The rules folder's watcher and the reloads it has queued, before the task that acts on
/// them runs.
pub struct Watch {
    requests: ReloadRequests,
    queued: mpsc::Receiver<()>,
    watcher: Option<RecommendedWatcher>,
}

impl Watch {
    /// Starts watching `dir`. Called before the first load, so that a file changed while
    /// the rules compile (or before the daemon is up) queues a reload instead of being
    /// missed until the next change.
    pub fn start(dir: &Path) -> Watch {
        let (requests, queued) = mpsc::channel::<()>(16);
        let watcher_tx = requests.clone();
        let watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
            // Reading the files to compile them shows up as access events.
            let relevant = match &event {
                Ok(event) => !event.kind.is_access(),
                Err(_) => true,
            };
            if relevant {
                // A full channel already has a reload queued, which will see this change too.
                let _ = watcher_tx.try_send(());
            }
        });
        let watcher = match watcher {
            Ok(mut watcher) => match watcher.watch(dir, RecursiveMode::NonRecursive) {
                Ok(()) => Some(watcher),
                Err(error) => {
                    tracing::warn!(dir = %dir.display(), error = %error,
                        "Cannot watch the rules folder; rules reload on SIGHUP only.");
                    None
                }
            },
            Err(error) => {
                tracing::warn!(error = %error, "File watching is unavailable; rules reload on SIGHUP only.");
                None
            }
        };
        Watch {
            requests,
            queued,
            watcher,
        }
    }

    /// Reloads `rules` on every queued change or request until `stop`.
    pub fn spawn(
        self,
        rules: Rules,
        stop: CancellationToken,
    ) -> (ReloadRequests, tokio::task::JoinHandle<()>) {
        let Watch {
            requests,
            mut queued,
            watcher,
        } = self;
        let handle = tokio::spawn(async move {
            // The watcher lives as long as this task.
            let _watcher = watcher;
            loop {
                tokio::select! {
                    _ = stop.cancelled() => return,
                    request = queued.recv() => if request.is_none() { return },
                }
                tokio::time::sleep(DEBOUNCE).await;
                while queued.try_recv().is_ok() {}
                rules.reload_async().await;
            }
        });
        (requests, handle)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rules::engine::build_engine;

    /// A rule file written after the first load, but before the watch task runs, is
    /// picked up: the folder was already being watched while the rules compiled.
    #[tokio::test]
    async fn a_change_before_the_watch_task_runs_is_reloaded() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("a.rhai"), "print(1);\n").unwrap();
        let watch = Watch::start(dir.path());
        let rules = Rules::load(
            Arc::new(build_engine(100_000)),
            dir.path(),
            Arc::new(Metrics::new()),
        );
        assert_eq!(rules.current.load().rules.len(), 1);
        std::fs::write(dir.path().join("b.rhai"), "print(2);\n").unwrap();

        let stop = CancellationToken::new();
        let (_requests, task) = watch.spawn(rules.clone(), stop.clone());
        // Nothing announces a reload but the swapped rule set, so look at it until it
        // changes, within a bound that only a failing test reaches.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        while rules.current.load().rules.len() < 2 {
            assert!(
                tokio::time::Instant::now() < deadline,
                "the change was never reloaded"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert!(rules.current.load().rules.contains_key("b"));
        stop.cancel();
        task.await.unwrap();
    }
}
