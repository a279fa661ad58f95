//! Intake on PostgreSQL groups commits, as the SQLite journal's commit thread does: the
//! webhooks that arrive while a commit is under way are journaled together in the next
//! one, each batch in one statement whatever its size. One transaction per webhook spent
//! a round trip per statement and a WAL flush per event; grouped, the flush is shared
//! (docs/behaviour.md section 12).
//!
//! A few committers take turns at the queue, so that one batch is gathered while another
//! commits; a webhook waits no longer than the append budget in all (queue included) and
//! gets its 503 when that runs out, never a 200 for an event that was not committed.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Instant;

use serde_json::Value;
use tokio::sync::mpsc::{UnboundedReceiver, UnboundedSender};
use tokio::sync::Mutex as AsyncMutex;
use tokio_util::sync::CancellationToken;

use super::schema::NOW_MS;
use super::session::Typed;
use super::{backend, Shared, APPEND_TIMEOUT};
use crate::event::Event;
use crate::journal::{stage_job, AppendReply, Appended, FirstJob, Job, JournalError, Queue};

/// Committers taking turns at the queue.
const COMMITTERS: usize = 4;
/// Most webhooks journaled in one transaction.
const BATCH: usize = 256;

/// A webhook's event waiting for its commit.
pub(super) struct Pending {
    pub event: Event,
    pub first_job: FirstJob,
    pub reply: AppendReply,
    pub since: Instant,
}

pub(super) type Appends = UnboundedSender<Pending>;

/// Starts the committers; they end when `stop` is cancelled or the sender is dropped.
pub(super) fn start(
    runtime: &tokio::runtime::Runtime,
    shared: &Arc<Shared>,
    queue: UnboundedReceiver<Pending>,
    stop: &CancellationToken,
) {
    let queue = Arc::new(AsyncMutex::new(queue));
    for _ in 0..COMMITTERS {
        runtime.spawn(committer(
            Arc::clone(shared),
            Arc::clone(&queue),
            stop.clone(),
        ));
    }
}

async fn committer(
    shared: Arc<Shared>,
    queue: Arc<AsyncMutex<UnboundedReceiver<Pending>>>,
    stop: CancellationToken,
) {
    loop {
        let batch = {
            let mut queue = queue.lock().await;
            let first = tokio::select! {
                _ = stop.cancelled() => return,
                pending = queue.recv() => match pending {
                    Some(pending) => pending,
                    None => return,
                },
            };
            let mut batch = vec![first];
            while batch.len() < BATCH {
                match queue.try_recv() {
                    Ok(pending) => batch.push(pending),
                    Err(_) => break,
                }
            }
            batch
        };
        commit(&shared, batch).await;
    }
}

/// Journals `batch` in one transaction and answers each webhook.
async fn commit(shared: &Shared, batch: Vec<Pending>) {
    // Those that waited out the budget in the queue get their 503 now; the rest share
    // what is left of the oldest one's budget.
    let (late, batch): (Vec<_>, Vec<_>) = batch
        .into_iter()
        .partition(|pending| pending.since.elapsed() >= APPEND_TIMEOUT);
    for pending in late {
        pending.reply.send(Err(timed_out().to_string()));
    }
    let Some(oldest) = batch.iter().map(|pending| pending.since).min() else {
        return;
    };
    let budget = APPEND_TIMEOUT.saturating_sub(oldest.elapsed());
    let outcome = tokio::time::timeout(budget, insert_batch(shared, &batch))
        .await
        .unwrap_or_else(|_| Err(timed_out()));
    shared.note(&outcome);
    match outcome {
        Ok(new) => {
            for (pending, new) in batch.into_iter().zip(new) {
                pending.reply.send(Ok(if new {
                    Appended::New
                } else {
                    Appended::Duplicate
                }));
            }
        }
        Err(error) => {
            let error = error.to_string();
            for pending in batch {
                pending.reply.send(Err(error.clone()));
            }
        }
    }
}

fn timed_out() -> JournalError {
    JournalError::unavailable(format!(
        "PostgreSQL did not commit within {} s",
        APPEND_TIMEOUT.as_secs()
    ))
}

/// Inserts the batch's events and their first jobs; for each, whether it was new (the
/// first of its id, in the journal and in the batch).
///
/// An evaluate job is written leased to this instance, while the hand-off has room, and
/// handed to its evaluate stage with its event (handoff.rs); the others are `pending`, and
/// wake the other instances.
///
/// One statement, committed on its own: the first jobs are written for every event the
/// statement inserted (its `RETURNING`, which a data-modifying `WITH` lets the next insert
/// read), so nothing has to come back to freshet between the two inserts. As a
/// transaction it was five round trips a batch (`BEGIN`, the events, their jobs, the
/// `NOTIFY`, `COMMIT`), and at 32 connections the batches are small.
async fn insert_batch(shared: &Shared, batch: &[Pending]) -> Result<Vec<bool>, JournalError> {
    static INTAKE: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| {
        format!(
            "WITH inserted AS (
                 INSERT INTO events (id, source, type, received_at, received_ms, chain_depth, status, body, instance)
                 SELECT e.id, e.source, e.type, e.received_at, {NOW_MS}, e.chain_depth, 'received', e.body, $7
                 FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::int4[], $6::text[])
                      AS e(id, source, type, received_at, chain_depth, body)
                 ON CONFLICT (id) DO NOTHING
                 RETURNING id),
             first_jobs AS (
                 INSERT INTO jobs (queue, kind, event_id, job_key, payload, status, attempt, max_attempts,
                                   scheduled_at, created_at, started_at, lease_until, locked_by)
                 SELECT j.queue, j.kind, j.event_id, j.job_key, 'null',
                        CASE WHEN j.leased THEN 'running' ELSE 'pending' END,
                        CASE WHEN j.leased THEN 1 ELSE 0 END, j.max_attempts, {NOW_MS}, {NOW_MS},
                        CASE WHEN j.leased THEN {NOW_MS} END,
                        CASE WHEN j.leased THEN {NOW_MS} + $14 END,
                        CASE WHEN j.leased THEN $7 END
                 FROM unnest($8::text[], $9::text[], $10::text[], $11::text[], $12::int4[], $13::bool[])
                      AS j(queue, kind, event_id, job_key, max_attempts, leased)
                 WHERE j.event_id IN (SELECT id FROM inserted)
                 ON CONFLICT DO NOTHING
                 RETURNING id, event_id)
             SELECT i.id, f.id FROM inserted i LEFT JOIN first_jobs f ON f.event_id = i.id"
        )
    });
    // The first of each id in the batch is the one that may be new.
    let mut seen = HashSet::new();
    let firsts: Vec<bool> = batch
        .iter()
        .map(|pending| seen.insert(pending.event.id.as_str()))
        .collect();
    let evaluations = batch
        .iter()
        .zip(&firsts)
        .filter(|(pending, first)| **first && pending.first_job.queue == Queue::Evaluate)
        .count();
    let reservation = Reservation::new(shared, evaluations);
    let mut leasable = reservation.granted;
    let mut columns = EventColumns::default();
    let mut jobs = JobColumns::default();
    for (pending, first) in batch.iter().zip(&firsts) {
        if !*first {
            continue;
        }
        columns.push(&pending.event)?;
        let job = stage_job(pending.first_job, &pending.event.id, None, Value::Null);
        let leased = job.queue == Queue::Evaluate && leasable > 0;
        leasable -= usize::from(leased);
        jobs.queues.push(job.queue.as_str().to_string());
        jobs.kinds.push(job.kind);
        jobs.event_ids.push(job.event_id);
        jobs.keys.push(job.job_key);
        jobs.max_attempts.push(job.max_attempts as i32);
        jobs.leased.push(leased);
    }
    let client = shared.client().await?;
    let sent = Instant::now();
    let inserted: HashMap<String, Option<i64>> = client
        .rows(
            INTAKE.as_str(),
            &[
                &columns.ids,
                &columns.sources,
                &columns.kinds,
                &columns.received_at,
                &columns.depths,
                &columns.bodies,
                &shared.instance,
                &jobs.queues,
                &jobs.kinds,
                &jobs.event_ids,
                &jobs.keys,
                &jobs.max_attempts,
                &jobs.leased,
                &shared.lease_ms,
            ],
        )
        .await
        .map_err(backend)?
        .iter()
        .map(|row| (row.get(0), row.get(1)))
        .collect();
    let new: Vec<bool> = batch
        .iter()
        .zip(&firsts)
        .map(|(pending, first)| *first && inserted.contains_key(&pending.event.id))
        .collect();
    // Committed: hand the leased evaluations over, and wake the other instances for each
    // queue that got a job they may claim.
    let mut handed = Vec::new();
    let mut woken: Vec<Queue> = Vec::new();
    // The job columns have an entry for each first of its id, in the batch's order.
    let mut row = 0;
    for ((pending, first), new) in batch.iter().zip(&firsts).zip(&new) {
        if !*first {
            continue;
        }
        let at = row;
        row += 1;
        if !*new {
            continue;
        }
        let queue = pending.first_job.queue;
        let job_id = inserted.get(&pending.event.id).copied().flatten();
        if let (true, Some(id)) = (jobs.leased[at], job_id) {
            handed.push((
                Job {
                    id,
                    queue,
                    kind: jobs.kinds[at].clone(),
                    event_id: pending.event.id.clone(),
                    rule: None,
                    payload: Value::Null,
                    attempt: 1,
                    max_attempts: jobs.max_attempts[at] as u32,
                    interrupted: None,
                },
                Arc::new(pending.event.clone()),
            ));
            continue;
        }
        if job_id.is_some() && !woken.contains(&queue) {
            woken.push(queue);
            client.wake_others(queue).await.map_err(backend)?;
        }
    }
    shared.hold(handed.iter().map(|(job, _)| job.id), sent);
    reservation.fill(handed);
    Ok(new)
}

/// Room in the hand-off, set aside while a batch commits, so that the committers running
/// side by side never hand over more than [`HANDOFF_CAP`](super::handoff::HANDOFF_CAP)
/// jobs together; what is not filled is given back when this is dropped (the commit
/// failed, or a job was a duplicate).
struct Reservation<'a> {
    shared: &'a Shared,
    granted: usize,
}

impl<'a> Reservation<'a> {
    fn new(shared: &'a Shared, wanted: usize) -> Self {
        // Only `serve` has committers, and so a hand-off and an evaluate stage to take it.
        let granted = shared.handoff().reserve(wanted);
        Reservation { shared, granted }
    }

    fn fill(mut self, jobs: Vec<(Job, Arc<Event>)>) {
        let mut handoff = self.shared.handoff();
        handoff.unreserve(self.granted);
        self.granted = 0;
        for (job, event) in jobs {
            handoff.push(job, event);
        }
    }
}

impl Drop for Reservation<'_> {
    fn drop(&mut self) {
        if self.granted > 0 {
            self.shared.handoff().unreserve(self.granted);
        }
    }
}

#[derive(Default)]
struct EventColumns {
    ids: Vec<String>,
    sources: Vec<String>,
    kinds: Vec<String>,
    received_at: Vec<String>,
    depths: Vec<i32>,
    bodies: Vec<String>,
}

impl EventColumns {
    fn push(&mut self, event: &Event) -> Result<(), JournalError> {
        self.ids.push(event.id.clone());
        self.sources.push(event.source.as_str().to_string());
        self.kinds.push(event.kind.clone());
        self.received_at.push(event.received_at.clone());
        self.depths.push(event.chain_depth as i32);
        self.bodies
            .push(serde_json::to_string(event).map_err(|e| JournalError::Refused(e.to_string()))?);
        Ok(())
    }
}

#[derive(Default)]
struct JobColumns {
    queues: Vec<String>,
    kinds: Vec<String>,
    event_ids: Vec<String>,
    keys: Vec<String>,
    max_attempts: Vec<i32>,
    /// Written leased to this instance, for the hand-off.
    leased: Vec<bool>,
}
