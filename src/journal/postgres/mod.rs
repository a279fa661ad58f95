//! The PostgreSQL journal: several `freshet serve` instances share one database, so that
//! losing a machine loses neither webhooks (another instance takes them) nor the jobs it
//! held (another instance takes them over when their lease runs out). docs/behaviour.md section 10.
//!
//! It follows the Postgres-backed queues (River, Oban, graphile-worker):
//! - a claim is one `UPDATE .. WHERE id IN (SELECT .. FOR UPDATE SKIP LOCKED)`, so
//!   instances never wait for each other's rows, on a partial index of open jobs;
//! - a lease belongs to an instance (`locked_by`) and is renewed by it while it lives;
//!   a job whose lease ran out is claimable by anyone;
//! - a finishing write is fenced (`locked_by = me AND attempt = n AND status =
//!   'running'`): an instance that lost its lease (dead, paused, cut off) cannot
//!   overwrite the new owner's outcome; its own is discarded;
//! - alert transitions lock the alert's row inside the evaluation's transaction;
//! - `NOTIFY` after queueing work wakes the other instances; polling stays the truth,
//!   since notifications are lost across reconnects;
//! - migrations run under an advisory lock.
//!
//! The [`JournalStore`](super::JournalStore) interface is blocking; this store runs its async
//! client (`tokio-postgres` with the `deadpool` pool) on a small runtime of its own and waits
//! for each call, so it serves the daemon's blocking threads and the CLI alike.
//!
//! Every call is bounded in time (connections within 3 s, calls within a few seconds):
//! while PostgreSQL is unreachable, webhooks get 503 within 5 s (dbt Cloud gives up on a
//! delivery after 10 s), never a 200 for an event that was not committed.
//!
//! - this file: [`PostgresJournal`], its pool and runtime, opening it;
//! - `calls.rs`: the [`JournalStore`](super::JournalStore) calls; `sql.rs`: the
//!   statements they share;
//! - `schema.rs`: the schema's migrations, applied under an advisory lock;
//! - `intake.rs`: webhooks' grouped commits; `handoff.rs`: the evaluations intake leases
//!   to this instance's evaluate stage;
//! - `leases.rs`: renewing this instance's leases; `listen.rs`: `LISTEN` for work;
//! - `tls.rs`: `sslmode` and `sslrootcert`, with rustls.

mod calls;
mod handoff;
mod intake;
mod leases;
mod listen;
mod schema;
pub(crate) mod session;
mod sql;
#[cfg(test)]
mod tests;
pub mod tls;

use self::session::Typed;
use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod};
use tokio_postgres_rustls::MakeRustlsConnect;
use tokio_util::sync::CancellationToken;

use crate::journal::{JournalError, WorkWaker};
use leases::renew_leases;
use listen::listen;
use schema::migrate;

/// How long getting a connection may take (connect, or wait for one from the pool).
const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
/// How long one journal call may take in all.
pub(super) const CALL_TIMEOUT: Duration = Duration::from_secs(10);
/// How long an append may take: its webhook waits for it, and dbt Cloud gives up at 10 s.
pub(super) const APPEND_TIMEOUT: Duration = Duration::from_secs(4);
/// Longest wait for a lock inside PostgreSQL: within the append budget, so a locked
/// table answers a webhook 503 rather than leaving it to time out.
const LOCK_TIMEOUT: Duration = Duration::from_secs(3);
/// How long `/healthz`'s check may take in all: it must answer within a second while the
/// journal is locked, slow or down.
pub(super) const HEALTH_TIMEOUT: Duration = Duration::from_millis(900);
/// The part of a lease an instance keeps in hand: it calls out for a job only while
/// less than `lease - lease / 3` has passed since its lease was last confirmed.
pub(super) const LEASE_MARGIN_DIVISOR: u32 = 3;
/// Connections per instance.
const POOL_SIZE: usize = 16;

/// The PostgreSQL implementation of [`JournalStore`](super::JournalStore).
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
    /// The jobs this instance holds and is working on, each with the moment (on this
    /// process's monotonic clock) the request that last confirmed its lease was sent:
    /// the claim, or a renewal the database answered. Only these leases are renewed. A
    /// job leaves when its outcome is written or its write failed, or it is abandoned,
    /// so its lease runs out and it runs again instead of staying held forever.
    pub(super) held: Mutex<HashMap<i64, Instant>>,
    /// Evaluate jobs intake leased to this instance, for its evaluate stage (`serve` only).
    handoff: Mutex<handoff::HandOff>,
    /// For the listener's own connection.
    config: tokio_postgres::Config,
    tls: MakeRustlsConnect,
    /// The `SET LOCAL`s every transaction begins with, behind a transaction pooler.
    pooled: Option<Arc<str>>,
    /// Where sessions send the wakes they owe the other instances (`serve` only).
    notifier: Option<session::Notifier>,
    /// Where webhooks' events wait for their grouped commit (`serve` only).
    appends: Option<intake::Appends>,
    /// The schema freshet's tables live in (every connection's `search_path`).
    pub(super) schema: String,
}

/// The schema of freshet's tables unless `journal.schema` names another: its own, so a
/// database shared with other applications (their own `events` or `jobs`) works.
pub const DEFAULT_SCHEMA: &str = "freshet";

/// Whether `name` is a schema name freshet can use as it is in SQL and in a connection's
/// `search_path`: lowercase letters, digits and `_`, not starting with a digit, at most
/// 63 bytes (PostgreSQL's limit for names).
pub fn is_schema_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars
        .next()
        .is_some_and(|first| first.is_ascii_lowercase() || first == '_')
        && chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
        && name.len() <= 63
}

/// What stands between freshet and PostgreSQL (`journal.pooler`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Pooler {
    /// PostgreSQL itself, or a pooler in session mode: a connection is one session.
    #[default]
    None,
    /// PgBouncer in transaction mode: a server connection serves other clients between
    /// transactions, so nothing may outlive a transaction (no session settings, no
    /// named prepared statements, no `LISTEN`).
    Transaction,
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
pub(super) fn backend(error: impl std::error::Error + Send + Sync + 'static) -> JournalError {
    backend_as("PostgreSQL", error)
}

/// [`backend`] with the message's first words chosen by the caller.
fn backend_as(what: &str, error: impl std::error::Error + Send + Sync + 'static) -> JournalError {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text = format!("{text}: {cause}");
        source = cause.source();
    }
    JournalError::Unavailable {
        message: format!("{what}: {text}"),
        source: Some(Box::new(error)),
    }
}

/// `HOST:PORT/DATABASE` of a connection, for messages: never the user's password.
pub fn endpoint(config: &tokio_postgres::Config) -> String {
    let host = match config.get_hosts().first() {
        Some(tokio_postgres::config::Host::Tcp(host)) => host.clone(),
        Some(tokio_postgres::config::Host::Unix(path)) => path.display().to_string(),
        None => "localhost".to_string(),
    };
    let port = config.get_ports().first().copied().unwrap_or(5432);
    let user = config.get_user().unwrap_or("");
    let database = config.get_dbname().unwrap_or(user);
    format!("{host}:{port}/{database}")
}

/// Why no connection could be had, naming the cause a person can act on (a refused
/// password, a missing database) and where (host, port, database), never the password.
fn pool_error(
    config: &tokio_postgres::Config,
    error: deadpool_postgres::PoolError,
) -> JournalError {
    let at = endpoint(config);
    match error {
        deadpool_postgres::PoolError::Timeout(_) => JournalError::unavailable(format!(
            "PostgreSQL at {at} is unreachable (no connection within {} s)",
            CONNECT_TIMEOUT.as_secs()
        )),
        deadpool_postgres::PoolError::Backend(error) => {
            use tokio_postgres::error::SqlState;
            let user = config.get_user().unwrap_or("");
            let Some(db) = error.as_db_error() else {
                return backend_as(&format!("PostgreSQL at {at} is unreachable"), error);
            };
            let message = match db.code() {
                code if *code == SqlState::INVALID_PASSWORD => format!(
                    "PostgreSQL at {at} refused the password of user {user:?} (wrong password in journal.url)"
                ),
                code if *code == SqlState::INVALID_AUTHORIZATION_SPECIFICATION => format!(
                    "PostgreSQL at {at} refused user {user:?}: {}",
                    db.message()
                ),
                code if *code == SqlState::INVALID_CATALOG_NAME => format!(
                    "PostgreSQL at {at}: the database {:?} does not exist (create it, or name another in journal.url)",
                    config.get_dbname().unwrap_or(user)
                ),
                _ => return backend_as(&format!("PostgreSQL at {at}"), error),
            };
            JournalError::Unavailable {
                message,
                source: Some(Box::new(error)),
            }
        }
        other => JournalError::unavailable(format!("PostgreSQL at {at} is unreachable: {other}")),
    }
}

impl PostgresJournal {
    /// Connects to the journal at `url` (a postgres:// URL), its tables in `schema`. For
    /// `Role::Serve`, brings the schema up to date and starts renewing leases and
    /// listening for work.
    pub fn open(
        url: &str,
        schema: &str,
        lease_seconds: u64,
        pooler: Pooler,
        role: Role,
    ) -> Result<PostgresJournal, JournalError> {
        let tls::Connection {
            mut config, tls, ..
        } = tls::connection(url).map_err(|message| JournalError::Open {
            path: "journal.url".into(),
            message,
        })?;
        if !is_schema_name(schema) {
            return Err(JournalError::Open {
                path: "journal.schema".into(),
                message: format!("{schema:?} is not a plain schema name"),
            });
        }
        // Every statement names its tables unqualified: the search path puts them in the
        // journal's own schema, whatever else the database holds. And every wait on the
        // server is bounded (docs/behaviour.md section 12), so that a paused or cut-off
        // instance cannot hold locks that block the others: a statement, a wait for a
        // lock, and a transaction left idle all end within half a lease at most; a lock
        // wait within the append budget, so a webhook meeting a locked table gets its
        // 503 from the server; and TCP keepalives notice a dead peer within 25 s.
        let lease_ms = lease_seconds.saturating_mul(1000);
        let half_lease = lease_ms / 2;
        let statement_ms = half_lease.min(CALL_TIMEOUT.as_millis() as u64);
        let lock_ms = half_lease.min(LOCK_TIMEOUT.as_millis() as u64);
        config
            .connect_timeout(CONNECT_TIMEOUT)
            .keepalives(true)
            .keepalives_idle(Duration::from_secs(10))
            .keepalives_interval(Duration::from_secs(5))
            .keepalives_retries(3)
            .application_name("freshet");
        // Behind a transaction pooler, a session setting would stay on a server
        // connection that other clients get next (and PgBouncer refuses the `options`
        // startup parameter), so every transaction sets them with `SET LOCAL` instead.
        let pooled = match pooler {
            Pooler::None => {
                // Generic plans for the statements each connection keeps prepared: with
                // custom plans (PostgreSQL's choice here) every claim was planned anew,
                // 0.4 ms of its 0.6; freshet's statements all read through their index
                // whatever the parameters. No parallel workers: a generic plan takes a
                // range such as `received_ms >= $1` for a third of the table, and for the
                // console's overview started two workers whose start-up was 5 ms of the
                // 6 its few rows took (and more under load, on the same cores).
                //
                // `serve` plans no whole-table scan where an index serves: its connections
                // live long, a generic plan is made once per connection, and a new
                // journal's connections make theirs on empty tables, where a scan is the
                // cheapest plan. It stayed until an analyze of the table happened to come,
                // and meanwhile every claim read all jobs (11 ms a claim in bench/postgres,
                // where each run starts empty). Pruning, which does want to read the
                // oldest rows in the table's order, allows it in its own transactions. A
                // command's connection plans on the tables as they are and ends.
                let no_scans = if role == Role::Serve {
                    " -c enable_seqscan=off"
                } else {
                    ""
                };
                config.options(format!(
                    "-c search_path={schema} -c statement_timeout={statement_ms} \
                     -c lock_timeout={lock_ms} -c idle_in_transaction_session_timeout={half_lease} \
                     -c plan_cache_mode=force_generic_plan -c max_parallel_workers_per_gather=0 \
                     -c client_min_messages=warning{no_scans}"
                ));
                None
            }
            // Unnamed statements here are planned each time, on the tables as they are.
            Pooler::Transaction => Some(Arc::from(format!(
                "SET LOCAL search_path = {schema}; SET LOCAL statement_timeout = {statement_ms}; \
                 SET LOCAL lock_timeout = {lock_ms}; SET LOCAL idle_in_transaction_session_timeout = {half_lease}; \
                 SET LOCAL max_parallel_workers_per_gather = 0"
            ))),
        };
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("freshet-postgres")
            .enable_all()
            .build()
            .map_err(backend)?;
        let manager = Manager::from_config(
            config.clone(),
            tls.clone(),
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
            .map_err(|e| JournalError::unavailable(format!("PostgreSQL: {e}")))?;
        let (notifier_tx, notifier_rx) = tokio::sync::mpsc::unbounded_channel();
        let (notifier_tx, notifier_rx) = match role {
            Role::Serve => (Some(notifier_tx), Some(notifier_rx)),
            Role::Command => (None, None),
        };
        let (appends_tx, appends_rx) = tokio::sync::mpsc::unbounded_channel();
        let (appends_tx, appends_rx) = match role {
            Role::Serve => (Some(appends_tx), Some(appends_rx)),
            Role::Command => (None, None),
        };
        let shared = Arc::new(Shared {
            appends: appends_tx,
            pool,
            instance: instance_id(),
            lease_ms: (lease_seconds * 1000) as i64,
            last_error: Mutex::new(None),
            waker: Mutex::new(None),
            held: Mutex::default(),
            handoff: Mutex::default(),
            config,
            tls,
            pooled,
            notifier: notifier_tx,
            schema: schema.to_string(),
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
            if let Some(appends) = appends_rx {
                intake::start(runtime, &journal.shared, appends, &journal.stop);
            }
            if let Some(owed) = notifier_rx {
                runtime.spawn(listen::notifier(
                    Arc::clone(&journal.shared),
                    owed,
                    journal.stop.clone(),
                ));
            }
            // A transaction pooler cannot hold a `LISTEN` (Oban's notifier notes the
            // same): the stages poll, and this instance's own wakes still work.
            if journal.shared.pooled.is_none() {
                runtime.spawn(listen(Arc::clone(&journal.shared), journal.stop.clone()));
            }
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
                    Err(_) => Err(JournalError::unavailable(format!(
                        "PostgreSQL did not answer within {} ms",
                        timeout.as_millis()
                    ))),
                };
                shared.note(&result);
                let _ = tx.send(result);
            });
        // A std channel, not tokio's: this waits on any thread, the CLI's async main
        // thread included, without tokio's "blocking in a runtime" panic.
        rx.recv().unwrap_or_else(|_| {
            Err(JournalError::unavailable(
                "the PostgreSQL journal's runtime stopped",
            ))
        })
    }

    /// The instance id this journal writes as `locked_by` and `instance`.
    pub fn instance(&self) -> &str {
        &self.shared.instance
    }
}

impl PostgresJournal {
    /// Deletes events older than `days` whose jobs are all finished, `batch` events (with
    /// their jobs and rule runs) per transaction. One instance prunes at a time: each
    /// batch takes an advisory lock, and an instance that finds it taken stops (the other
    /// one is pruning). No further batch once `go_on` is false.
    pub(super) fn prune_in_batches(
        &self,
        days: u32,
        batch: usize,
        go_on: &(dyn Fn() -> bool + Sync),
    ) -> Result<usize, JournalError> {
        let shared = Arc::clone(&self.shared);
        let cutoff_ms = i64::from(days) * 86_400_000;
        crate::journal::common::prune_in_batches_with(batch, go_on, || {
            let shared = Arc::clone(&shared);
            self.run(CALL_TIMEOUT, async move {
                let mut client = shared.client().await?;
                let tx = client.transaction().await.map_err(backend)?;
                // The oldest events are read in the table's order, which a scan follows
                // and stops at the first batch (4 ms with 1,000,000 events; reading the
                // index of received times whole took 44 ms, and by the ids 490 ms). The
                // plan is made at the first run, in this transaction, and kept.
                tx.batch_execute("SET LOCAL enable_seqscan = on")
                    .await
                    .map_err(backend)?;
                let ours: bool = tx
                    .row(
                        "SELECT pg_try_advisory_xact_lock($1)",
                        &[&schema::PRUNE_LOCK],
                    )
                    .await
                    .map_err(backend)?
                    .get(0);
                if !ours {
                    tracing::debug!("Another instance is pruning the journal.");
                    return Ok(None);
                }
                let ids: Vec<String> = tx
                    .rows(
                        &format!(
                            "SELECT id FROM events e WHERE e.received_ms < {} - $1
                               AND NOT EXISTS (SELECT 1 FROM jobs j WHERE j.event_id = e.id
                                               AND j.status IN ('pending', 'retrying', 'running'))
                             LIMIT $2",
                            schema::NOW_MS
                        ),
                        &[&cutoff_ms, &(batch as i64)],
                    )
                    .await
                    .map_err(backend)?
                    .iter()
                    .map(|row| row.get(0))
                    .collect();
                for table in ["rule_runs", "jobs"] {
                    tx.exec(
                        &format!("DELETE FROM {table} WHERE event_id = ANY($1)"),
                        &[&ids],
                    )
                    .await
                    .map_err(backend)?;
                }
                let deleted = tx
                    .exec("DELETE FROM events WHERE id = ANY($1)", &[&ids])
                    .await
                    .map_err(backend)?;
                tx.commit().await.map_err(backend)?;
                Ok(Some(deleted as usize))
            })
        })
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
            Err(JournalError::Refused(_)) => {}
            Err(error) => *last = Some(error.to_string()),
        }
    }

    pub(super) async fn client(&self) -> Result<session::Session, JournalError> {
        let object = self
            .pool
            .get()
            .await
            .map_err(|error| pool_error(&self.config, error))?;
        Ok(session::Session::new(
            object,
            self.pooled.clone(),
            self.tls.clone(),
            self.notifier.clone(),
        ))
    }

    pub(super) fn held(&self) -> std::sync::MutexGuard<'_, HashMap<i64, Instant>> {
        self.held.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn handoff(&self) -> std::sync::MutexGuard<'_, handoff::HandOff> {
        self.handoff.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Notes that this instance holds `jobs`, leased by a request sent at `sent`.
    pub(super) fn hold(&self, jobs: impl Iterator<Item = i64>, sent: Instant) {
        self.held().extend(jobs.map(|id| (id, sent)));
    }

    /// Whether this instance surely still holds job `id`'s lease: the last confirmation
    /// was sent less than the lease minus a third of it ago, on this process's monotonic
    /// clock (the database set the lease's end no earlier than that request left). An
    /// instance paused or cut off past that margin makes no outside call for the job:
    /// its lease may have run out, and another instance may be running it
    /// (docs/behaviour.md section 12).
    pub(super) fn lease_held(&self, id: i64) -> bool {
        let lease = Duration::from_millis(self.lease_ms as u64);
        match self.held().get(&id) {
            Some(confirmed) => confirmed.elapsed() < lease - lease / LEASE_MARGIN_DIVISOR,
            None => false,
        }
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
