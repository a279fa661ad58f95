//! The commit thread: group commit for intake, and for the evaluate stage's bookkeeping
//! (ARCHITECTURE.md, "Durability contract").

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc};

use parking_lot::Mutex;
use rusqlite::Connection;

use super::file::FileWatch;
use super::recent::RecentEvents;
use super::sql::{claim_in, insert_event, record_evaluations, EventRow};
use super::{exec, lock, rescue_wal, write_transaction};
use crate::event::Event;
use crate::journal::{AppendReply, Appended, Evaluation, FirstJob, Job, JournalError, Queue};

/// What the commit thread commits, in batches: each batch one transaction.
pub(super) enum Work {
    /// An event and its first job, from intake.
    Append(PendingAppend),
    /// The evaluate stage's finished evaluations, and its claim of the next batch.
    Evaluations(PendingEvaluations),
}

pub(super) struct PendingEvaluations {
    pub(super) batch: Vec<(Job, Evaluation)>,
    /// How many evaluate jobs to claim once the batch is recorded (0: none), and for how
    /// long.
    pub(super) claim: usize,
    pub(super) lease_ms: u64,
    pub(super) reply: mpsc::SyncSender<EvaluationsOutcome>,
}

/// Which evaluations were recorded (false: the lease was lost) and the jobs claimed.
pub(super) type EvaluationsOutcome = Result<(Vec<bool>, Vec<Job>), JournalError>;

pub(super) struct PendingAppend {
    pub(super) event: EventRow,
    pub(super) first_job: FirstJob,
    /// The event itself, to keep in [`RecentEvents`] once committed (evaluate-first
    /// events shared by intake only).
    pub(super) keep: Option<Arc<Event>>,
    pub(super) reply: AppendReply,
}

/// How a write transaction reaches the disk.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(super) enum Durability {
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
    /// the evaluation that queued it durable. It halves the fsyncs the evaluate stage
    /// waits for while it holds the writer (measured in bench/README.md).
    Deferred,
}

pub(super) const COMMIT_THREAD_STOPPED: &str = "the journal's commit thread has stopped";

/// Most pieces of work (appends, batches of evaluations) in one transaction, so that one
/// commit cannot grow without bound.
const MAX_WORK_PER_COMMIT: usize = 1024;

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
/// pages both write are written out once (the gain is measured in bench/README.md).
/// Its claim comes after the appends, so the events of the batch are claimed at once.
pub(super) fn commit_queued(
    writer: &Mutex<Connection>,
    relaxed: &AtomicBool,
    recent: &Mutex<RecentEvents>,
    queued: &mpsc::Receiver<Work>,
    watch: &FileWatch,
) {
    while let Ok(first) = queued.recv() {
        let mut conn = lock(writer);
        let mut appends = Vec::new();
        let mut evaluations = Vec::new();
        for work in std::iter::once(first).chain(queued.try_iter().take(MAX_WORK_PER_COMMIT - 1)) {
            match work {
                Work::Append(pending) => appends.push(pending),
                Work::Evaluations(pending) => evaluations.push(pending),
            }
        }
        // Looked at before committing as well as after: a batch is never committed into a
        // write-ahead log already removed, where the rescue below would keep what was
        // answered 503 (docs/behaviour.md section 11).
        let result = watch
            .verify()
            .and_then(|()| commit_batch(&mut conn, relaxed, watch, &appends, &evaluations));
        // Hand the connection straight to a stage waiting for it: released the usual way,
        // this thread took it back for the next batch before a waiter woke, and the
        // evaluate stage fell ever further behind intake.
        parking_lot::MutexGuard::unlock_fair(conn);
        watch.committed(&result.as_ref().map(|_| ()).map_err(|e| e.to_string()));
        // Committed into the file we hold; but if the path no longer names that file, the
        // next start will not see these events: answer as if the commit had failed.
        let result = result.and_then(|outcomes| watch.verify().map(|()| outcomes));
        if watch.wal_rescue_due() {
            rescue_wal(&lock(writer));
        }
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
                        .send(Err(JournalError::commit_failed(&message)));
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
pub(super) fn commit_batch(
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
pub(super) fn in_savepoint<T>(
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
pub(super) fn set_durability(
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
