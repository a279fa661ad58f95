//! [`PostgresJournal`]: the [`JournalStore`] on PostgreSQL.

use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod};
use tokio_postgres::NoTls;
use tokio_util::sync::CancellationToken;

use super::schema::{MIGRATIONS, MIGRATION_LOCK, NOW_MS, WORK_CHANNEL};
use crate::journal::{JournalError, Queue, WorkWaker};

/// How long getting a connection may take (connect, or wait for one from the pool).
const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
/// How long one journal call may take in all.
pub(super) const CALL_TIMEOUT: Duration = Duration::from_secs(10);
/// How long an append may take: its webhook waits for it, and dbt Cloud gives up at 10 s.
pub(super) const APPEND_TIMEOUT: Duration = Duration::from_secs(4);
/// Connections per instance.
const POOL_SIZE: usize = 16;

/// What an attempt that never finished leaves in a job's errors (as in SQLite).
pub(super) const INTERRUPTED: &str =
    "interrupted: the attempt never finished (the instance stopped or lost the lease while it ran)";

/// The PostgreSQL implementation of [`JournalStore`].
pub struct PostgresJournal {
    /// The runtime the async client runs on; calls from any thread wait on it.
    runtime: Option<tokio::runtime::Runtime>,
    pub(super) shared: Arc<Shared>,
    /// Ends the lease renewer and the listener.
    stop: CancellationToken,
}

pub(super) struct Shared {
    pool: Pool,
    /// This process: `host-pid-random`, in `locked_by` and `events.instance`.
    pub(super) instance: String,
    pub(super) lease_ms: i64,
    /// The last failure talking to PostgreSQL, while it is the latest outcome.
    last_error: Mutex<Option<String>>,
    /// Wakes this instance's stages when any instance queues work.
    pub(super) waker: Mutex<Option<WorkWaker>>,
    /// The jobs this instance holds and is working on: only their leases are renewed. A
    /// job leaves when its outcome is written or its write failed, or it is abandoned,
    /// so its lease runs out and it runs again instead of staying held forever.
    pub(super) held: Mutex<std::collections::HashSet<i64>>,
    /// For the listener's own connection.
    config: tokio_postgres::Config,
}

/// Who opens the journal.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// `freshet serve`: applies migrations, renews its leases, listens for work.
    Serve,
    /// A CLI command: only reads and steers.
    Command,
}

/// A PostgreSQL error, with its causes (tokio-postgres keeps the useful part in them).
pub(super) fn backend(error: impl std::error::Error) -> JournalError {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text = format!("{text}: {cause}");
        source = cause.source();
    }
    JournalError::Backend(format!("PostgreSQL: {text}"))
}

fn pool_error(error: deadpool_postgres::PoolError) -> JournalError {
    match error {
        deadpool_postgres::PoolError::Timeout(_) => JournalError::Backend(format!(
            "PostgreSQL is unreachable (no connection within {} s)",
            CONNECT_TIMEOUT.as_secs()
        )),
        deadpool_postgres::PoolError::Backend(error) => {
            let JournalError::Backend(text) = backend(error) else {
                unreachable!("backend() makes a Backend error")
            };
            JournalError::Backend(text.replacen("PostgreSQL:", "PostgreSQL is unreachable:", 1))
        }
        other => JournalError::Backend(format!("PostgreSQL is unreachable: {other}")),
    }
}

impl PostgresJournal {
    /// Connects to the journal at `url` (a postgres:// URL). For `Role::Serve`, brings the
    /// schema up to date and starts renewing leases and listening for work.
    pub fn open(
        url: &str,
        lease_seconds: u64,
        role: Role,
    ) -> Result<PostgresJournal, JournalError> {
        let mut config: tokio_postgres::Config = url.parse().map_err(|_| JournalError::Open {
            path: "journal.url".into(),
            message: "not a PostgreSQL URL (postgres://USER@HOST:PORT/DB)".into(),
        })?;
        config
            .connect_timeout(CONNECT_TIMEOUT)
            .keepalives(true)
            .keepalives_idle(Duration::from_secs(10))
            .application_name("freshet");
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("freshet-postgres")
            .enable_all()
            .build()
            .map_err(backend)?;
        let manager = Manager::from_config(
            config.clone(),
            NoTls,
            ManagerConfig {
                recycling_method: RecyclingMethod::Fast,
            },
        );
        let pool = Pool::builder(manager)
            .max_size(POOL_SIZE)
            .wait_timeout(Some(CONNECT_TIMEOUT))
            .create_timeout(Some(CONNECT_TIMEOUT))
            .recycle_timeout(Some(CONNECT_TIMEOUT))
            .runtime(deadpool_postgres::Runtime::Tokio1)
            .build()
            .map_err(|e| JournalError::Backend(format!("PostgreSQL: {e}")))?;
        let shared = Arc::new(Shared {
            pool,
            instance: instance_id(),
            lease_ms: (lease_seconds * 1000) as i64,
            last_error: Mutex::new(None),
            waker: Mutex::new(None),
            held: Mutex::default(),
            config,
        });
        let journal = PostgresJournal {
            runtime: Some(runtime),
            shared,
            stop: CancellationToken::new(),
        };
        let shared = Arc::clone(&journal.shared);
        journal
            .run(
                CALL_TIMEOUT * 3,
                async move { migrate(&shared, role).await },
            )
            .map_err(|error| JournalError::Open {
                path: "journal.url".into(),
                message: error.to_string(),
            })?;
        if role == Role::Serve {
            let runtime = journal.runtime.as_ref().expect("set until dropped");
            runtime.spawn(renew_leases(
                Arc::clone(&journal.shared),
                journal.stop.clone(),
            ));
            runtime.spawn(listen(Arc::clone(&journal.shared), journal.stop.clone()));
        }
        Ok(journal)
    }

    /// Starts `task` on the journal's runtime.
    pub(super) fn spawn(&self, task: impl Future<Output = ()> + Send + 'static) {
        self.runtime
            .as_ref()
            .expect("set until dropped")
            .spawn(task);
    }

    /// Runs `call` on the journal's runtime, waits for it at most `timeout`, and notes
    /// the outcome for `/healthz`.
    pub(super) fn run<T, F>(&self, timeout: Duration, call: F) -> Result<T, JournalError>
    where
        T: Send + 'static,
        F: Future<Output = Result<T, JournalError>> + Send + 'static,
    {
        let (tx, rx) = std::sync::mpsc::channel();
        let shared = Arc::clone(&self.shared);
        self.runtime
            .as_ref()
            .expect("set until dropped")
            .spawn(async move {
                let result = match tokio::time::timeout(timeout, call).await {
                    Ok(result) => result,
                    Err(_) => Err(JournalError::Backend(format!(
                        "PostgreSQL did not answer within {} s",
                        timeout.as_secs()
                    ))),
                };
                shared.note(&result);
                let _ = tx.send(result);
            });
        // A std channel, not tokio's: this waits on any thread, the CLI's async main
        // thread included, without tokio's "blocking in a runtime" panic.
        rx.recv().unwrap_or_else(|_| {
            Err(JournalError::Backend(
                "the PostgreSQL journal's runtime stopped".into(),
            ))
        })
    }

    /// The instance id this journal writes as `locked_by` and `instance`.
    pub fn instance(&self) -> &str {
        &self.shared.instance
    }
}

impl Drop for PostgresJournal {
    fn drop(&mut self) {
        self.stop.cancel();
        if let Some(runtime) = self.runtime.take() {
            // Dropping a runtime waits for its tasks; in an async context that panics.
            runtime.shutdown_background();
        }
    }
}

impl Shared {
    pub(super) fn note<T>(&self, result: &Result<T, JournalError>) {
        let mut last = self.last_error.lock().unwrap_or_else(|p| p.into_inner());
        match result {
            Ok(_) => *last = None,
            // Refusals (no such job) say nothing about the database.
            Err(JournalError::NotFound(_) | JournalError::Invalid(_)) => {}
            Err(error) => *last = Some(error.to_string()),
        }
    }

    pub(super) async fn client(&self) -> Result<deadpool_postgres::Object, JournalError> {
        self.pool.get().await.map_err(pool_error)
    }

    pub(super) fn held(&self) -> std::sync::MutexGuard<'_, std::collections::HashSet<i64>> {
        self.held.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub(super) fn last_error(&self) -> Option<String> {
        self.last_error
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }
}

/// `host-pid-random`: unique per process, readable in `freshet actions`.
fn instance_id() -> String {
    let mut name = [0u8; 256];
    // SAFETY: gethostname writes at most `len` bytes into the buffer we own.
    let host = unsafe {
        if libc::gethostname(name.as_mut_ptr().cast(), name.len()) == 0 {
            let end = name.iter().position(|b| *b == 0).unwrap_or(name.len());
            String::from_utf8_lossy(&name[..end]).into_owned()
        } else {
            "host".into()
        }
    };
    format!(
        "{host}-{}-{:04x}",
        std::process::id(),
        rand::random::<u16>()
    )
}

async fn migrate(shared: &Shared, role: Role) -> Result<(), JournalError> {
    let mut client = shared.client().await?;
    let tx = client.transaction().await.map_err(backend)?;
    // Instances starting together take turns; each sees the version the last one left.
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK])
        .await
        .map_err(backend)?;
    tx.batch_execute("CREATE TABLE IF NOT EXISTS freshet_schema (version INTEGER NOT NULL)")
        .await
        .map_err(backend)?;
    let version: i32 = tx
        .query_opt("SELECT version FROM freshet_schema", &[])
        .await
        .map_err(backend)?
        .map(|row| row.get(0))
        .unwrap_or(0);
    let known = MIGRATIONS.len() as i32;
    if version > known {
        return Err(JournalError::Corrupt(format!(
            "the journal has schema version {version}, newer than this freshet knows ({known})"
        )));
    }
    if version < known && role == Role::Command {
        return Err(JournalError::Invalid(
            "the PostgreSQL journal is not set up yet: `freshet serve` creates its tables".into(),
        ));
    }
    for migration in &MIGRATIONS[version as usize..] {
        tx.batch_execute(migration).await.map_err(backend)?;
    }
    tx.execute("DELETE FROM freshet_schema", &[])
        .await
        .map_err(backend)?;
    tx.execute(
        "INSERT INTO freshet_schema (version) VALUES ($1)",
        &[&known],
    )
    .await
    .map_err(backend)?;
    tx.commit().await.map_err(backend)
}

/// Extends this instance's leases while it lives (every third of a lease), so that only
/// a dead or stalled instance's jobs are taken over.
async fn renew_leases(shared: Arc<Shared>, stop: CancellationToken) {
    let period = Duration::from_millis((shared.lease_ms / 3).max(100) as u64);
    let sql = format!(
        "UPDATE jobs SET lease_until = {NOW_MS} + $2
         WHERE id = ANY($3) AND locked_by = $1 AND status = 'running'"
    );
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(period) => {}
        }
        let held: Vec<i64> = shared.held().iter().copied().collect();
        if held.is_empty() {
            continue;
        }
        let renewed = async {
            let client = shared.client().await?;
            client
                .execute(&sql, &[&shared.instance, &shared.lease_ms, &held])
                .await
                .map_err(backend)
        };
        if let Err(error) = renewed.await {
            tracing::warn!(error = %error, "Cannot renew job leases.");
        }
    }
}

/// `LISTEN`s for work queued by any instance and wakes this one's stages. Reconnects
/// when the connection drops; a lost notification only delays work to the next poll.
async fn listen(shared: Arc<Shared>, stop: CancellationToken) {
    use futures_util::future::poll_fn;
    loop {
        if let Ok((client, mut connection)) = shared.config.connect(NoTls).await {
            let (tx, mut notes) = tokio::sync::mpsc::unbounded_channel::<String>();
            // Polling for messages also drives the connection (the LISTEN below).
            let driver = tokio::spawn(async move {
                while let Some(Ok(message)) = poll_fn(|cx| connection.poll_message(cx)).await {
                    if let tokio_postgres::AsyncMessage::Notification(note) = message {
                        if tx.send(note.payload().to_string()).is_err() {
                            return;
                        }
                    }
                }
            });
            if client
                .batch_execute(&format!("LISTEN {WORK_CHANNEL}"))
                .await
                .is_ok()
            {
                loop {
                    tokio::select! {
                        _ = stop.cancelled() => {
                            driver.abort();
                            return;
                        }
                        note = notes.recv() => {
                            let Some(queue) = note else { break };
                            let waker = shared.waker.lock().unwrap_or_else(|p| p.into_inner()).clone();
                            if let (Some(waker), Some(queue)) = (waker, Queue::parse(&queue)) {
                                waker(queue);
                            }
                        }
                    }
                }
            }
            driver.abort();
        }
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
        }
    }
}
