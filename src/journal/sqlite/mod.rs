//! The SQLite journal: one file, WAL mode, `synchronous = FULL` so that a commit is on disk
//! before intake answers 200 (the evaluate stage's own bookkeeping excepted: [`Durability`]).

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc};
use std::time::Duration;

use parking_lot::Mutex;
use rusqlite::{params, Connection, OpenFlags, OptionalExtension};
use serde_json::Value;

use super::schema::{MIGRATIONS, NOW_MS};
use super::{
    isolate_retried, replay_suffix, stage_job, AlertState, AppendReply, AppendTicket, Appended,
    Evaluation, EventSummary, FirstJob, FollowUp, Job, JobOutcome, JobSummary, JournalError,
    JournalStore, KeyedJob, OutcomeColumns, Queue, Released, Replay, RuleRun,
};
use crate::event::Event;

mod body;
mod file;
mod recent;
mod statements;
#[cfg(test)]
mod tests;

use file::{FileWatch, Opener, ServeLock};
use recent::RecentEvents;

use statements::*;

/// The SQLite implementation of [`JournalStore`].
pub struct SqliteJournal {
    /// A second, read-only connection for the reads outside transactions (an event to
    /// evaluate, listings). WAL lets it read while the writer commits, so the evaluate
    /// stage no longer queues behind each intake commit (fsync included) for every event
    /// it loads; without it, evaluation fell behind sustained intake (bench/README.md).
    ///
    /// Declared first so that it closes first: the writer, closing last, checkpoints
    /// the WAL into the file and removes it (a read-only connection cannot).
    reader: Mutex<Connection>,
    /// The one writing connection: every call is short and runs on a blocking thread (or
    /// the commit thread), and SQLite serializes writers anyway.
    conn: Arc<Mutex<Connection>>,
    /// Set (under the connection's lock) while the writer may be at `synchronous =
    /// NORMAL` after an evaluate-stage write ([`Durability::Deferred`]); every other
    /// write, intake's included, puts it back to FULL before it begins.
    relaxed: Arc<AtomicBool>,
    /// The events the commit thread committed last, for the evaluate stage.
    recent: Arc<Mutex<RecentEvents>>,
    /// Feeds the commit thread ([`commit_queued`]); None once dropping.
    queue: Option<mpsc::Sender<Work>>,
    committer: Option<std::thread::JoinHandle<()>>,
    /// Whether the file is still the one at the journal's path, and the last commit's
    /// outcome (`/healthz`).
    watch: Arc<FileWatch>,
    /// `serve`'s exclusive hold on the journal, for the life of the process.
    _lock: Option<ServeLock>,
}

/// What the commit thread commits, in batches: each batch one transaction.
enum Work {
    /// An event and its first job, from intake.
    Append(PendingAppend),
    /// The evaluate stage's finished evaluations, and its claim of the next batch.
    Evaluations(PendingEvaluations),
}

struct PendingEvaluations {
    batch: Vec<(Job, Evaluation)>,
    /// How many evaluate jobs to claim once the batch is recorded (0: none), and for how
    /// long.
    claim: usize,
    lease_ms: u64,
    reply: mpsc::SyncSender<EvaluationsOutcome>,
}

/// Which evaluations were recorded (false: the lease was lost) and the jobs claimed.
type EvaluationsOutcome = Result<(Vec<bool>, Vec<Job>), JournalError>;

struct PendingAppend {
    event: EventRow,
    first_job: FirstJob,
    /// The event itself, to keep in [`RecentEvents`] once committed (evaluate-first
    /// events shared by intake only).
    keep: Option<Arc<Event>>,
    reply: AppendReply,
}

/// How a write transaction reaches the disk.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Durability {
    /// `synchronous = FULL`: on disk (fsync) before the call returns. Intake, actions,
    /// commands: everything that answers someone or follows an outside effect.
    Synced,
    /// `synchronous = NORMAL`, for the evaluate stage's claims and finishes only (those
    /// the commit thread commits with appends are synced with them, at no cost). The
    /// commit is atomic and survives the process being killed (it is in the WAL, in the
    /// OS's cache); only a power loss before the next synced commit (intake's next batch,
    /// an action's claim) can take it back, since that commit's fsync covers the whole WAL
    /// before it. What such a loss undoes is an evaluation's bookkeeping, never an event:
    /// the evaluate job is open again and runs again, and evaluation is idempotent (its
    /// action jobs have deterministic keys, rule runs and alert states are upserts), the
    /// same as when a process dies mid-evaluation. No outside effect can depend on the
    /// undone commit: an action runs only after its own claim, a synced commit, has made
    /// the evaluation that queued it durable. Halves the fsyncs the evaluate stage waits
    /// for while holding the writer (bench/README.md).
    Deferred,
}

const COMMIT_THREAD_STOPPED: &str = "the journal's commit thread has stopped";

/// Most pieces of work (appends, batches of evaluations) in one transaction, so that one
/// commit cannot grow without bound.
const MAX_WORK_PER_COMMIT: usize = 1024;

impl SqliteJournal {
    /// Opens (creating if needed) the journal at `path` and applies migrations. Takes no
    /// lock: for tests and tools.
    pub fn open(path: &Path) -> Result<SqliteJournal, JournalError> {
        SqliteJournal::open_as(path, Opener::Any)
    }

    /// Opens the journal for `freshet serve`: holds it exclusively (a second `serve` on
    /// the same file fails at once, naming the pid that holds it), creates it if needed,
    /// and refuses a file that fails `PRAGMA quick_check`.
    pub fn open_for_serve(path: &Path) -> Result<SqliteJournal, JournalError> {
        SqliteJournal::open_as(path, Opener::Serve)
    }

    /// Opens an existing journal for a CLI command; never creates one.
    pub fn open_existing(path: &Path) -> Result<SqliteJournal, JournalError> {
        SqliteJournal::open_as(path, Opener::Command)
    }

    fn open_as(path: &Path, opener: Opener) -> Result<SqliteJournal, JournalError> {
        if opener == Opener::Command {
            file::ensure_exists(path)?;
        } else {
            file::create_folder(path)?;
        }
        let lock = match opener {
            Opener::Serve => Some(ServeLock::acquire(path)?),
            Opener::Command | Opener::Any => None,
        };
        if opener == Opener::Serve {
            // Before any connection: closing a descriptor of the file drops every POSIX
            // lock the process holds on it, SQLite's included.
            file::read_ahead(path);
        }
        let flags = match opener {
            Opener::Command => OpenFlags::default() - OpenFlags::SQLITE_OPEN_CREATE,
            Opener::Serve | Opener::Any => OpenFlags::default(),
        };
        let mut conn =
            Connection::open_with_flags(path, flags).map_err(|e| file::open_error(path, &e))?;
        conn.busy_timeout(Duration::from_secs(5))?;
        let mode: String = conn
            .query_row("PRAGMA journal_mode = WAL", [], |row| row.get(0))
            .map_err(|e| file::open_error(path, &e))?;
        if !mode.eq_ignore_ascii_case("wal") {
            return Err(file::open_error(
                path,
                &format!("could not switch to WAL mode (got {mode})"),
            ));
        }
        conn.execute_batch("PRAGMA synchronous = FULL; PRAGMA foreign_keys = ON;")?;
        if opener == Opener::Serve {
            file::quick_check(&conn, path)?;
        }
        migrate(&mut conn)?;
        let reader = Connection::open_with_flags(
            path,
            (OpenFlags::default()
                - OpenFlags::SQLITE_OPEN_CREATE
                - OpenFlags::SQLITE_OPEN_READ_WRITE)
                | OpenFlags::SQLITE_OPEN_READ_ONLY,
        )
        .map_err(|e| file::open_error(path, &e))?;
        reader.busy_timeout(Duration::from_secs(5))?;
        let watch = Arc::new(FileWatch::new(path));
        let conn = Arc::new(Mutex::new(conn));
        let relaxed = Arc::new(AtomicBool::new(false));
        let recent = Arc::new(Mutex::new(RecentEvents::default()));
        let (queue, queued) = mpsc::channel();
        let committer = std::thread::Builder::new()
            .name("freshet-journal".into())
            .spawn({
                let conn = Arc::clone(&conn);
                let relaxed = Arc::clone(&relaxed);
                let recent = Arc::clone(&recent);
                let watch = Arc::clone(&watch);
                move || commit_queued(&conn, &relaxed, &recent, &queued, &watch)
            })
            .map_err(|e| file::open_error(path, &format!("cannot start the commit thread: {e}")))?;
        Ok(SqliteJournal {
            conn,
            relaxed,
            recent,
            reader: Mutex::new(reader),
            queue: Some(queue),
            committer: Some(committer),
            watch,
            _lock: lock,
        })
    }

    /// Hands an append to the commit thread ([`commit_queued`]).
    fn queue_append(
        &self,
        event: &Event,
        first_job: FirstJob,
        keep: Option<Arc<Event>>,
    ) -> AppendTicket {
        let row = match EventRow::new(event) {
            Ok(row) => row,
            Err(error) => return AppendTicket::ready(Err(error)),
        };
        let (reply, ticket) = AppendTicket::new();
        let pending = PendingAppend {
            event: row,
            first_job,
            keep,
            reply,
        };
        if let Some(Work::Append(pending)) = self.send(Work::Append(pending)) {
            pending.reply.send(Err(COMMIT_THREAD_STOPPED.into()));
        }
        ticket
    }

    /// Has the commit thread record `batch` and then claim up to `claim` evaluate jobs,
    /// and waits for its answer.
    fn queue_evaluations(
        &self,
        batch: &[(Job, Evaluation)],
        claim: usize,
        lease_ms: u64,
    ) -> EvaluationsOutcome {
        let (reply, answer) = mpsc::sync_channel(1);
        let pending = PendingEvaluations {
            batch: batch.to_vec(),
            claim,
            lease_ms,
            reply,
        };
        let stopped = || JournalError::Commit(COMMIT_THREAD_STOPPED.into());
        if self.send(Work::Evaluations(pending)).is_some() {
            return Err(stopped());
        }
        answer.recv().map_err(|_| stopped())?
    }

    /// Queues work for the commit thread; gives it back if that thread has stopped.
    fn send(&self, work: Work) -> Option<Work> {
        match &self.queue {
            Some(queue) => queue.send(work).err().map(|failed| failed.0),
            None => Some(work),
        }
    }

    fn with<T>(
        &self,
        f: impl FnOnce(&mut Connection) -> Result<T, JournalError>,
    ) -> Result<T, JournalError> {
        f(&mut lock(&self.conn))
    }

    /// Runs `f` on the read-only connection: it sees every committed transaction.
    fn read<T>(
        &self,
        f: impl FnOnce(&Connection) -> Result<T, JournalError>,
    ) -> Result<T, JournalError> {
        f(&lock(&self.reader))
    }

    /// Runs `f` in one write transaction and commits it, recording the outcome for
    /// `/healthz`, and fails once the journal file is found removed or replaced.
    fn write<T>(
        &self,
        f: impl FnOnce(&rusqlite::Transaction) -> Result<T, JournalError>,
    ) -> Result<T, JournalError> {
        self.write_as(Durability::Synced, f)
    }

    /// [`Self::write`] with the durability the caller needs ([`Durability`]).
    fn write_as<T>(
        &self,
        durability: Durability,
        f: impl FnOnce(&rusqlite::Transaction) -> Result<T, JournalError>,
    ) -> Result<T, JournalError> {
        self.with(|conn| {
            self.watch.ensure_present()?;
            set_durability(conn, &self.relaxed, durability)?;
            let outcome = write_transaction(conn)
                .map_err(JournalError::from)
                .and_then(|tx| {
                    let value = f(&tx)?;
                    tx.commit()?;
                    Ok(value)
                });
            match &outcome {
                Ok(_) => self.watch.committed(&Ok(())),
                // A failed statement is a failed write as much as a failed commit; a
                // refusal (no such job, not dead) says nothing about the journal.
                Err(error @ JournalError::Database(_)) => {
                    self.watch.committed(&Err(error.to_string()))
                }
                Err(_) => {}
            }
            let value = outcome?;
            self.watch.verify()?;
            Ok(value)
        })
    }
}

impl Drop for SqliteJournal {
    /// Ends the commit thread after it has committed what was queued, so that the
    /// connection is closed (and the WAL checkpointed) when the journal is dropped.
    fn drop(&mut self) {
        self.queue = None;
        if let Some(committer) = self.committer.take() {
            let _ = committer.join();
        }
    }
}

/// Locks the connection. A panic elsewhere does not poison it (parking_lot's mutex has
/// no poisoning): SQLite rolls back an unfinished transaction, so the connection itself
/// is still sound.
fn lock(conn: &Mutex<Connection>) -> parking_lot::MutexGuard<'_, Connection> {
    conn.lock()
}

/// The commit thread: group commit for intake, and for the evaluate stage's bookkeeping.
/// It takes the first queued piece of work, and everything else queued by the time it
/// holds the connection, commits them in one transaction (one fsync), and only then
/// answers each. Under load the batch grows by itself, because work queues up while the
/// previous commit waits for the disk; alone, an append is committed at once. Waiting
/// callers hold no thread, so none of them has to take the connection in turn just to
/// learn that its append is already committed.
///
/// The evaluate stage's finish and claim ride in the same commits as intake's appends
/// instead of transactions of their own: one commit instead of two, and the job and event
/// pages both write are written out once (+10 % intake, bench/README.md, sixth session).
/// Its claim comes after the appends, so the events of the batch are claimed at once.
fn commit_queued(
    conn: &Mutex<Connection>,
    relaxed: &AtomicBool,
    recent: &Mutex<RecentEvents>,
    queued: &mpsc::Receiver<Work>,
    watch: &FileWatch,
) {
    while let Ok(first) = queued.recv() {
        let mut conn = lock(conn);
        let mut appends = Vec::new();
        let mut evaluations = Vec::new();
        for work in std::iter::once(first).chain(queued.try_iter().take(MAX_WORK_PER_COMMIT - 1)) {
            match work {
                Work::Append(pending) => appends.push(pending),
                Work::Evaluations(pending) => evaluations.push(pending),
            }
        }
        let result = commit_batch(&mut conn, relaxed, watch, &appends, &evaluations);
        // Hand the connection straight to a stage waiting for it: released the usual way,
        // this thread took it back for the next batch before a waiter woke, and the
        // evaluate stage fell ever further behind intake.
        parking_lot::MutexGuard::unlock_fair(conn);
        watch.committed(&result.as_ref().map(|_| ()).map_err(|e| e.to_string()));
        // Committed into the file we hold; but if the path no longer names that file, the
        // next start will not see these events: answer as if the commit had failed.
        let result = result.and_then(|outcomes| watch.verify().map(|()| outcomes));
        match result {
            Ok((outcomes, evaluated)) => {
                // Kept before anyone is answered, so before intake wakes the evaluate stage
                // (or the stage learns of the jobs it claimed).
                {
                    let mut recent = recent.lock();
                    for (pending, outcome) in appends.iter().zip(&outcomes) {
                        if let (Some(event), Appended::New) = (&pending.keep, outcome) {
                            recent.insert(Arc::clone(event));
                        }
                    }
                }
                for (pending, outcome) in appends.into_iter().zip(outcomes) {
                    pending.reply.send(Ok(outcome));
                }
                for (pending, outcome) in evaluations.into_iter().zip(evaluated) {
                    // The stage may have gone (stopping); its jobs' leases run out.
                    let _ = pending.reply.send(outcome);
                }
            }
            Err(error) => {
                let message = error.to_string();
                for pending in appends {
                    pending.reply.send(Err(message.clone()));
                }
                for pending in evaluations {
                    let _ = pending
                        .reply
                        .send(Err(JournalError::Commit(message.clone())));
                }
            }
        }
    }
}

/// One batch's transaction: the evaluations recorded, the appends inserted, then the
/// claims. Synced when it holds an append, deferred when it is evaluate-stage bookkeeping
/// only ([`Durability`]). The evaluations' part of it can fail without failing the appends
/// ([`in_savepoint`]): an evaluation the journal refuses must not cost webhooks their 200.
/// Fails as a whole only when the transaction does (then nothing of it is kept).
fn commit_batch(
    conn: &mut Connection,
    relaxed: &AtomicBool,
    watch: &FileWatch,
    appends: &[PendingAppend],
    evaluations: &[PendingEvaluations],
) -> Result<(Vec<Appended>, Vec<EvaluationsOutcome>), JournalError> {
    watch.ensure_present()?;
    let durability = if appends.is_empty() {
        Durability::Deferred
    } else {
        Durability::Synced
    };
    set_durability(conn, relaxed, durability)?;
    let tx = write_transaction(conn)?;
    let mut recorded = Vec::with_capacity(evaluations.len());
    for pending in evaluations {
        recorded.push(in_savepoint(&tx, |tx| {
            record_evaluations(tx, &pending.batch)
        })?);
    }
    let mut outcomes = Vec::with_capacity(appends.len());
    for pending in appends {
        outcomes.push(insert_event(&tx, &pending.event, pending.first_job)?);
    }
    let mut evaluated = Vec::with_capacity(evaluations.len());
    for (pending, recorded) in evaluations.iter().zip(recorded) {
        evaluated.push(match recorded {
            Ok(recorded) if pending.claim > 0 => {
                // A claim that fails alone leaves the finish standing and claims nothing:
                // the stage claims again the usual way (the trait's promise).
                let claimed = in_savepoint(&tx, |tx| {
                    claim_in(tx, Queue::Evaluate, pending.claim, pending.lease_ms)
                })?
                .unwrap_or_else(|error| {
                    tracing::warn!(error = %error, "Cannot claim evaluate jobs; claiming again.");
                    Vec::new()
                });
                Ok((recorded, claimed))
            }
            Ok(recorded) => Ok((recorded, Vec::new())),
            Err(error) => Err(error),
        });
    }
    tx.commit()?;
    Ok((outcomes, evaluated))
}

/// Runs `f` inside a savepoint of `tx`. The inner result is `f`'s: when it fails, what it
/// wrote is undone and the rest of the transaction goes on. The outer one fails when the
/// transaction itself is lost (SQLite rolls the whole transaction back on some errors,
/// a full disk or an I/O error among them), and then nothing else may run in it.
fn in_savepoint<T>(
    tx: &rusqlite::Transaction,
    f: impl FnOnce(&rusqlite::Transaction) -> Result<T, JournalError>,
) -> Result<Result<T, JournalError>, JournalError> {
    exec(tx, "SAVEPOINT stage", [])?;
    match f(tx) {
        Ok(value) => {
            exec(tx, "RELEASE stage", [])?;
            Ok(Ok(value))
        }
        Err(error) if tx.is_autocommit() => Err(error),
        Err(error) => {
            exec(tx, "ROLLBACK TO stage", [])?;
            exec(tx, "RELEASE stage", [])?;
            Ok(Err(error))
        }
    }
}

/// Puts the writer at `durability`'s `synchronous` level, with the connection locked. A
/// deferred write leaves it at NORMAL (consecutive evaluate-stage writes switch once);
/// the next synced write sees `relaxed` and puts FULL back first, and fails if it cannot.
fn set_durability(
    conn: &Connection,
    relaxed: &AtomicBool,
    durability: Durability,
) -> Result<(), JournalError> {
    match durability {
        Durability::Synced if relaxed.load(Ordering::Acquire) => {
            conn.execute_batch("PRAGMA synchronous = FULL")?;
            relaxed.store(false, Ordering::Release);
        }
        Durability::Synced => {}
        Durability::Deferred => {
            relaxed.store(true, Ordering::Release);
            conn.execute_batch("PRAGMA synchronous = NORMAL")?;
        }
    }
    Ok(())
}

/// Brings the schema up to date. An up-to-date journal (every open but the first after
/// an upgrade) is only read, so read-only CLI commands take no write lock. Otherwise the
/// version is read again inside one write transaction, so that two processes opening an
/// old journal together (the daemon and a CLI command) cannot both apply a migration.
fn migrate(conn: &mut Connection) -> Result<(), JournalError> {
    if schema_version(conn)? == MIGRATIONS.len() {
        return Ok(());
    }
    let tx = write_transaction(conn)?;
    let version = schema_version(&tx)?;
    for migration in &MIGRATIONS[version..] {
        tx.execute_batch(migration)?;
    }
    tx.pragma_update(None, "user_version", MIGRATIONS.len())?;
    tx.commit()?;
    Ok(())
}

/// The journal's schema version, refusing one newer than this build knows.
fn schema_version(conn: &Connection) -> Result<usize, JournalError> {
    let version: usize = conn.query_row("PRAGMA user_version", [], |row| row.get(0))?;
    if version > MIGRATIONS.len() {
        return Err(JournalError::Corrupt(format!(
            "the journal has schema version {version}, newer than this freshet knows ({})",
            MIGRATIONS.len()
        )));
    }
    Ok(version)
}

/// Runs one statement through the connection's statement cache: these run per event or
/// per job, and parsing their SQL each time was a tenth of the intake's CPU.
pub(super) fn exec(
    conn: &Connection,
    sql: &str,
    params: impl rusqlite::Params,
) -> rusqlite::Result<usize> {
    conn.prepare_cached(sql)?.execute(params)
}

/// Begins a write transaction that takes SQLite's write lock at once (IMMEDIATE). The
/// CLI writes the same file from another process; a deferred transaction that read first
/// would fail outright when it then tried to write after the other process's commit,
/// since SQLite cannot wait out a stale read snapshot. Taking the lock first makes the
/// busy timeout apply instead.
fn write_transaction(conn: &mut Connection) -> rusqlite::Result<rusqlite::Transaction<'_>> {
    conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
}

pub(super) fn now_ms(tx: &Connection) -> Result<i64, JournalError> {
    Ok(tx.query_row(&format!("SELECT {NOW_MS}"), [], |row| row.get(0))?)
}

impl JournalStore for SqliteJournal {
    fn append(&self, event: &Event, first_job: FirstJob) -> AppendTicket {
        self.queue_append(event, first_job, None)
    }

    fn append_shared(&self, event: Arc<Event>, first_job: FirstJob) -> AppendTicket {
        let keep = (first_job.queue == Queue::Evaluate).then(|| Arc::clone(&event));
        self.queue_append(&event, first_job, keep)
    }

    fn check_writable(&self) -> Result<(), JournalError> {
        // Intake can only journal through the commit thread.
        if !self.committer.as_ref().is_some_and(|c| !c.is_finished()) {
            return Err(JournalError::Commit(COMMIT_THREAD_STOPPED.into()));
        }
        self.watch.verify()?;
        if let Some(error) = self.watch.last_commit_error() {
            // The last commit failed: try one (a row of its own) to learn whether the
            // journal has recovered, rather than report the past forever.
            self.write(|tx| {
                exec(
                    tx,
                    &format!(
                        "INSERT INTO health (id, checked_ms) VALUES (1, {NOW_MS})
                         ON CONFLICT (id) DO UPDATE SET checked_ms = excluded.checked_ms"
                    ),
                    [],
                )?;
                Ok(())
            })
            .map_err(|_| JournalError::Commit(format!("the last commit failed: {error}")))?;
        }
        self.with(|conn| {
            // Takes the write lock and gives it back: fails if another process holds the
            // lock for too long.
            conn.execute_batch("BEGIN IMMEDIATE; ROLLBACK;")?;
            Ok(())
        })
    }

    fn event(&self, id: &str) -> Result<Option<Event>, JournalError> {
        self.read(|conn| {
            let mut statement = conn.prepare_cached(
                "SELECT id, source, type, received_at, chain_depth, body FROM events WHERE id = ?1",
            )?;
            let mut rows = statement.query([id])?;
            let Some(row) = rows.next()? else {
                return Ok(None);
            };
            let header = body::Header {
                id: row.get(0)?,
                source: row.get(1)?,
                kind: row.get(2)?,
                received_at: row.get(3)?,
                chain_depth: row.get(4)?,
            };
            body::decode_event(header, row.get_ref(5)?).map(Some)
        })
    }

    fn event_to_evaluate(&self, id: &str) -> Result<Option<Arc<Event>>, JournalError> {
        if let Some(event) = self.recent.lock().take(id) {
            return Ok(Some(event));
        }
        Ok(self.event(id)?.map(Arc::new))
    }

    fn events(
        &self,
        limit: usize,
        status: Option<&str>,
    ) -> Result<Vec<EventSummary>, JournalError> {
        self.read(|conn| {
            let mut statement = conn.prepare(
                "SELECT id, type, received_at, status FROM events
                 WHERE (?1 IS NULL OR status = ?1) ORDER BY rowid DESC LIMIT ?2",
            )?;
            let rows = statement.query_map(params![status, limit as i64], |row| {
                Ok(EventSummary {
                    id: row.get(0)?,
                    instance: None,
                    kind: row.get(1)?,
                    received_at: row.get(2)?,
                    status: row.get(3)?,
                    rules: Vec::new(),
                    actions: Vec::new(),
                })
            })?;
            let mut events = rows.collect::<Result<Vec<_>, _>>()?;
            let mut rules = conn.prepare(
                "SELECT rule, outcome, actions, error FROM rule_runs WHERE event_id = ?1 ORDER BY rule",
            )?;
            let mut jobs = conn.prepare(
                "SELECT * FROM jobs WHERE event_id = ?1 AND queue = 'action' ORDER BY id",
            )?;
            for event in &mut events {
                event.rules = rules
                    .query_map([&event.id], |row| {
                        Ok(RuleRun {
                            rule: row.get(0)?,
                            outcome: row.get(1)?,
                            actions: row.get::<_, i64>(2)? as usize,
                            error: row.get(3)?,
                        })
                    })?
                    .collect::<Result<_, _>>()?;
                for row in jobs.query_map([&event.id], job_summary)? {
                    let (mut summary, payload) = row?;
                    summary.payload = parse_json(&payload)?;
                    event.actions.push(summary);
                }
            }
            Ok(events)
        })
    }

    fn claim(&self, queue: Queue, limit: usize, lease_ms: u64) -> Result<Vec<Job>, JournalError> {
        let durability = match queue {
            Queue::Evaluate => Durability::Deferred,
            Queue::Enrich | Queue::Action => Durability::Synced,
        };
        self.write_as(durability, |tx| claim_in(tx, queue, limit, lease_ms))
    }

    fn next_due_in(&self, queue: Queue) -> Result<Option<u64>, JournalError> {
        self.read(|conn| {
            let due: Option<i64> =
                conn.query_row(&NEXT_DUE_SQL, [queue.as_str()], |row| row.get(0))?;
            Ok(due.map(|ms| ms.max(0) as u64))
        })
    }

    fn finish(
        &self,
        job: &Job,
        outcome: &JobOutcome,
        follow_up: &FollowUp,
    ) -> Result<Option<String>, JournalError> {
        self.write(|tx| {
            let OutcomeColumns {
                status,
                result,
                error,
                delay_ms,
            } = outcome.columns(job);
            let updated = exec(tx,
                &format!(
                    "UPDATE jobs SET status = ?1,
                        last_error = ?2,
                        errors = CASE WHEN ?2 IS NULL THEN errors
                                      ELSE json_insert(errors, '$[#]', json_object('attempt', attempt, 'at', {NOW_MS}, 'error', ?2)) END,
                        scheduled_at = CASE WHEN ?1 IN ('retrying', 'pending') THEN {NOW_MS} + ?3 ELSE scheduled_at END,
                        -- A wait is not an attempt: give back the one the claim counted.
                        attempt = CASE WHEN ?1 = 'pending' THEN attempt - 1 ELSE attempt END,
                        finished_at = CASE WHEN ?1 IN ('succeeded', 'dead') THEN {NOW_MS} ELSE NULL END,
                        lease_until = NULL,
                        result = COALESCE(?6, result)
                     WHERE id = ?4 AND status = 'running' AND attempt = ?5"
                ),
                params![status, error, delay_ms as i64, job.id, job.attempt, result],
            )?;
            if updated != 1 {
                return Ok(None);
            }
            if let Some(event) = &follow_up.event {
                insert_event(tx, &EventRow::new(event)?, FirstJob::EVALUATE)?;
            }
            if let Some(next) = &follow_up.job {
                insert_job(tx, next)?;
            }
            Ok(Some(status.to_string()))
        })
    }

    fn job_by_key(&self, job_key: &str) -> Result<Option<KeyedJob>, JournalError> {
        self.read(|conn| {
            let row: Option<(String, Option<String>)> = conn
                .prepare_cached("SELECT status, result FROM jobs WHERE job_key = ?1")?
                .query_row([job_key], |row| Ok((row.get(0)?, row.get(1)?)))
                .optional()?;
            Ok(row.map(|(status, result)| KeyedJob {
                status,
                result: result.and_then(|text| serde_json::from_str(&text).ok()),
            }))
        })
    }

    fn finish_enrichment(&self, job: &Job, event: &Event) -> Result<bool, JournalError> {
        // The row is about to change: no copy from before may be evaluated.
        self.recent.lock().take(&event.id);
        self.write(|tx| {
            if !end_job(tx, job, "succeeded")? {
                return Ok(false);
            }
            // The body holds all but the row's columns; the type and depth are written
            // too, so that the row stays the whole event whatever enrichment changes.
            let body = body::encode_event(event)?;
            tx.execute(
                "UPDATE events SET body = ?1, type = ?3, chain_depth = ?4 WHERE id = ?2",
                params![body, event.id, event.kind, event.chain_depth],
            )?;
            // A replayed enrichment carries the replay's number on to its evaluation.
            let suffix = replay_suffix(&job.payload);
            insert_job(
                tx,
                &stage_job(
                    FirstJob::EVALUATE,
                    &event.id,
                    suffix.as_deref(),
                    job.payload.clone(),
                ),
            )?;
            Ok(true)
        })
    }

    fn finish_evaluations(&self, batch: &[(Job, Evaluation)]) -> Result<Vec<bool>, JournalError> {
        self.queue_evaluations(batch, 0, 0)
            .map(|(recorded, _)| recorded)
    }

    fn finish_evaluations_and_claim(
        &self,
        batch: &[(Job, Evaluation)],
        limit: usize,
        lease_ms: u64,
    ) -> Result<(Vec<bool>, Vec<Job>), JournalError> {
        // Committed by the commit thread, with whatever intake has queued.
        self.queue_evaluations(batch, limit, lease_ms)
    }

    fn queue_replay(&self, event_id: &str, replay: &Replay) -> Result<i64, JournalError> {
        self.write(|tx| {
            let exists: Option<i64> = tx
                .query_row("SELECT 1 FROM events WHERE id = ?1", [event_id], |row| {
                    row.get(0)
                })
                .optional()?;
            if exists.is_none() {
                return Err(JournalError::NotFound(format!(
                    "no journaled event with id {event_id}"
                )));
            }
            let replays: i64 = tx.query_row(
                "SELECT COUNT(*) FROM jobs WHERE event_id = ?1 AND queue = 'evaluate'",
                [event_id],
                |row| row.get(0),
            )?;
            // A replay is a new evaluation: its key (and so its action keys) differ from
            // the first evaluation's, so the actions run again.
            let mut payload = serde_json::json!({ "replay": replays });
            if let Some(rule) = &replay.rule {
                payload["rule"] = serde_json::json!(rule);
            }
            let inserted = insert_job(
                tx,
                &stage_job(
                    replay.first,
                    event_id,
                    Some(&format!("replay{replays}")),
                    payload,
                ),
            )?;
            if !inserted {
                return Err(JournalError::Invalid(format!(
                    "a replay of {event_id} is already queued"
                )));
            }
            let id = tx.last_insert_rowid();
            Ok(id)
        })
    }

    fn release_running(&self) -> Result<Released, JournalError> {
        self.write(|tx| {
            // The attempt that was running counts: with none left, the job is dead.
            let dead = tx.execute(
                &format!(
                    "UPDATE jobs SET status = 'dead', lease_until = NULL, finished_at = {NOW_MS},
                        last_error = ?1,
                        errors = json_insert(errors, '$[#]', json_object('attempt', attempt, 'at', {NOW_MS}, 'error', ?1))
                     WHERE status = 'running' AND attempt >= max_attempts"
                ),
                [INTERRUPTED],
            )?;
            let again = tx.execute(
                &format!(
                    "UPDATE jobs SET status = 'retrying', lease_until = NULL, scheduled_at = {NOW_MS},
                        last_error = ?1,
                        errors = json_insert(errors, '$[#]', json_object('attempt', attempt, 'at', {NOW_MS}, 'error', ?1))
                     WHERE status = 'running'"
                ),
                [INTERRUPTED],
            )?;
            Ok(Released { again, dead })
        })
    }

    fn jobs(&self, status: Option<&str>, limit: usize) -> Result<Vec<JobSummary>, JournalError> {
        self.read(|conn| {
            let mut statement = conn.prepare(
                "SELECT * FROM jobs
                 WHERE (queue = 'action' OR status IN ('dead', 'retrying'))
                   AND (?1 IS NULL OR status = ?1)
                 ORDER BY id DESC LIMIT ?2",
            )?;
            let mut jobs = Vec::new();
            for row in statement.query_map(params![status, limit as i64], job_summary)? {
                let (mut summary, payload) = row?;
                summary.payload = parse_json(&payload)?;
                jobs.push(summary);
            }
            Ok(jobs)
        })
    }

    fn retry(&self, job_id: i64) -> Result<(), JournalError> {
        self.write(|tx| {
            let status: Option<String> = tx
                .query_row("SELECT status FROM jobs WHERE id = ?1", [job_id], |row| {
                    row.get(0)
                })
                .optional()?;
            match status.as_deref() {
                None => Err(JournalError::NotFound(format!(
                    "no action with id {job_id}"
                ))),
                Some("dead") => {
                    tx.execute(
                        &format!(
                            "UPDATE jobs SET status = 'pending', max_attempts = attempt + 1,
                                scheduled_at = {NOW_MS}, finished_at = NULL
                             WHERE id = ?1 AND status = 'dead'"
                        ),
                        [job_id],
                    )?;
                    Ok(())
                }
                Some(other) => Err(JournalError::Invalid(format!(
                    "action {job_id} is {other}; only dead actions can be retried"
                ))),
            }
        })
    }

    fn backlog(&self) -> Result<u64, JournalError> {
        self.read(|conn| Ok(conn.query_row(BACKLOG_SQL, [], |row| row.get::<_, i64>(0))? as u64))
    }

    fn alerts(&self) -> Result<Vec<AlertState>, JournalError> {
        self.read(|conn| {
            let mut statement = conn.prepare(
                "SELECT name, state, version, since_ms, last_notified_ms FROM alerts ORDER BY name",
            )?;
            let rows = statement.query_map([], alert_row)?;
            Ok(rows.collect::<Result<_, _>>()?)
        })
    }

    fn reset_alert(&self, name: &str) -> Result<Option<bool>, JournalError> {
        self.write(|tx| {
            let Some(state) = load_alert(tx, name)? else {
                return Ok(None);
            };
            if !state.firing {
                return Ok(Some(false));
            }
            exec(
                tx,
                &format!(
                    "UPDATE alerts SET state = 'ok', version = version + 1, since_ms = {NOW_MS}
                     WHERE name = ?1"
                ),
                [name],
            )?;
            Ok(Some(true))
        })
    }

    fn prune(&self, days: u32) -> Result<usize, JournalError> {
        self.recent.lock().clear();
        self.write(|tx| {
            let cutoff = format!("{NOW_MS} - {}", i64::from(days) * 86_400_000);
            tx.execute_batch(&format!(
                "CREATE TEMP TABLE IF NOT EXISTS prunable (id TEXT PRIMARY KEY);
                 DELETE FROM prunable;
                 INSERT INTO prunable SELECT id FROM events e
                   WHERE e.received_ms < {cutoff}
                     AND NOT EXISTS (SELECT 1 FROM jobs j WHERE j.event_id = e.id
                                     AND j.status IN ('pending', 'retrying', 'running'));
                 DELETE FROM rule_runs WHERE event_id IN (SELECT id FROM prunable);
                 DELETE FROM jobs WHERE event_id IN (SELECT id FROM prunable);"
            ))?;
            let pruned = tx.execute(
                "DELETE FROM events WHERE id IN (SELECT id FROM prunable)",
                [],
            )?;
            Ok(pruned)
        })
    }
}

/// Claims up to `limit` due jobs of `queue` inside `tx` ([`JournalStore::claim`]).
fn claim_in(
    tx: &rusqlite::Transaction,
    queue: Queue,
    limit: usize,
    lease_ms: u64,
) -> Result<Vec<Job>, JournalError> {
    exec(tx, &REAP_SQL, params![queue.as_str(), INTERRUPTED])?;
    let candidates: Vec<(i64, u32)> = tx
        .prepare_cached(&CLAIM_CANDIDATES_SQL)?
        .query_map(params![queue.as_str(), limit as i64], |row| {
            Ok((row.get(0)?, row.get(1)?))
        })?
        .collect::<Result<_, _>>()?;
    let chosen = isolate_retried(&candidates);
    if chosen.is_empty() {
        return Ok(Vec::new());
    }
    // One statement for the whole batch: per-row statements were a fifth of a
    // claim's time.
    let ids = json_text(&chosen)?;
    let mut jobs = tx
        .prepare_cached(&CLAIM_SQL)?
        .query_map(params![ids, lease_ms as i64], |row| {
            Ok((
                Job {
                    id: row.get(0)?,
                    queue: row.get(1)?,
                    kind: row.get(2)?,
                    event_id: row.get(3)?,
                    rule: row.get(4)?,
                    payload: Value::Null,
                    attempt: row.get(6)?,
                    max_attempts: row.get(7)?,
                },
                row.get::<_, String>(5)?,
            ))
        })?
        .map(|row| {
            let (mut job, payload) = row?;
            job.payload = parse_json(&payload)?;
            Ok(job)
        })
        .collect::<Result<Vec<Job>, JournalError>>()?;
    // RETURNING comes in no promised order: back to the order they were due in.
    jobs.sort_by_key(|job| chosen.iter().position(|id| *id == job.id));
    Ok(jobs)
}
