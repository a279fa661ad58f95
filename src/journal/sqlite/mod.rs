//! The SQLite journal: one file, WAL mode, `synchronous = FULL` so that a commit is on disk
//! before intake answers 200 (the evaluate stage's own bookkeeping excepted:
//! `committer::Durability`).
//!
//! - this file: [`SqliteJournal`], opening it, and the write and read helpers;
//! - `calls.rs`: the [`super::JournalStore`] calls;
//! - `sql.rs`: the statements transactions are built from;
//! - `schema.rs`: the schema's migrations;
//! - `committer.rs`: the commit thread (group commit for intake and the evaluate stage);
//! - `file.rs`: the file itself (the serve lock, read-ahead, quick check, the watch on
//!   its path); `body.rs`: compressed event bodies; `recent.rs`: the events just
//!   committed, kept for the evaluate stage.

use std::path::Path;
use std::sync::atomic::AtomicBool;
use std::sync::{mpsc, Arc};
use std::time::Duration;

use parking_lot::Mutex;
use rusqlite::{Connection, OpenFlags};

use super::{AppendTicket, Evaluation, FirstJob, Job, JournalError};
use crate::event::Event;

mod body;
mod calls;
mod committer;
mod file;
mod recent;
mod schema;
mod sql;
#[cfg(test)]
mod tests;

use committer::{
    commit_queued, set_durability, Durability, EvaluationsOutcome, PendingAppend,
    PendingEvaluations, Work, COMMIT_THREAD_STOPPED,
};
use file::{FileWatch, Opener, ServeLock};
use recent::RecentEvents;
use schema::{migrate, NOW_MS};
use sql::EventRow;

/// The SQLite implementation of [`JournalStore`](super::JournalStore).
pub struct SqliteJournal {
    /// A second, read-only connection for the reads outside transactions (an event to
    /// evaluate, listings). WAL lets it read while the writer commits, so the evaluate
    /// stage no longer queues behind each intake commit (fsync included) for every event
    /// it loads; without it, evaluation fell behind sustained intake.
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
            file::create_private(path)?;
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
        let stopped = || JournalError::commit_failed(COMMIT_THREAD_STOPPED);
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
                Err(error @ JournalError::Unavailable { .. }) => {
                    self.watch.committed(&Err(error.to_string()))
                }
                Err(_) => {}
            }
            let value = outcome?;
            let verified = self.watch.verify();
            if self.watch.wal_rescue_due() {
                rescue_wal(conn);
            }
            verified?;
            Ok(value)
        })
    }
}

/// Copies the write-ahead log SQLite still has open into the journal file, once the log
/// was found removed or replaced at its path ([`FileWatch::wal_rescue_due`]): a start
/// after a crash reads the log at the path, so without this what was acknowledged before
/// would be lost with the old log. The journal refuses writes from then on.
fn rescue_wal(conn: &Connection) {
    let checkpoint = conn.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |row| {
        Ok((row.get::<_, i64>(0)?, row.get::<_, i64>(2)?))
    });
    match checkpoint {
        Ok((0, frames)) => tracing::warn!(
            frames,
            "Copied the removed write-ahead log into the journal file."
        ),
        Ok((_, frames)) => tracing::error!(
            frames,
            "Could copy only part of the removed write-ahead log into the journal file (a reader held it); stop freshet cleanly to copy the rest."
        ),
        Err(error) => tracing::error!(error = %error, "Cannot copy the removed write-ahead log into the journal file; stop freshet cleanly to copy it."),
    }
}

impl SqliteJournal {
    /// Deletes events older than `days` whose jobs are all finished, `batch` events (with
    /// their jobs and rule runs) per transaction, so intake's commits go between batches;
    /// no further batch once `go_on` is false.
    pub(super) fn prune_in_batches(
        &self,
        days: u32,
        batch: usize,
        go_on: &(dyn Fn() -> bool + Sync),
    ) -> Result<usize, JournalError> {
        self.recent.lock().clear();
        let cutoff = format!("{NOW_MS} - {}", i64::from(days) * 86_400_000);
        crate::journal::common::prune_in_batches_with(batch, go_on, || {
            let deleted = self.write(|tx| {
                tx.execute_batch(&format!(
                    "CREATE TEMP TABLE IF NOT EXISTS prunable (id TEXT PRIMARY KEY);
                     DELETE FROM prunable;
                     INSERT INTO prunable SELECT id FROM events e
                       WHERE e.received_ms < {cutoff}
                         AND NOT EXISTS (SELECT 1 FROM jobs j WHERE j.event_id = e.id
                                         AND j.status IN ('pending', 'retrying', 'running'))
                       LIMIT {batch};
                     DELETE FROM rule_runs WHERE event_id IN (SELECT id FROM prunable);
                     DELETE FROM jobs WHERE event_id IN (SELECT id FROM prunable);"
                ))?;
                Ok(tx.execute(
                    "DELETE FROM events WHERE id IN (SELECT id FROM prunable)",
                    [],
                )?)
            })?;
            Ok(Some(deleted))
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
