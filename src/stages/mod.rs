//! The stages: every task that claims work from the journal, runs it, and journals what
//! it did. Intake journals an event with its first job; from there each stage finds its
//! work in the journal, never in a channel, so a crash between two stages loses nothing.
//!
//! - [`enrich`]: fetches what a Mode webhook did not send (the run, its results).
//! - [`evaluate`]: runs the rules on each event; journals rule runs, alert transitions
//!   and action jobs in one transaction.
//! - [`act`]: runs action jobs (the calls in `actions/`) with retries.
//! - [`follow`]: polls work a service accepted (a Tableau refresh) to its end and emits
//!   the event that reports it.
//!
//! This file holds what they share: the claim-or-sleep loop and [`Wakes`].

pub mod act;
pub mod clock;
pub mod enrich;
pub mod evaluate;
pub mod follow;

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::journal::{blocking, Job, Journal, Queue};

/// One `Notify` per queue. A stage (or intake) that journals work for another wakes it;
/// a wake only shortens the sleep, so a lost one costs at most `IDLE_POLL` (a second).
#[derive(Clone, Default)]
pub struct Wakes {
    pub enrich: Arc<Notify>,
    pub evaluate: Arc<Notify>,
    pub act: Arc<Notify>,
}

impl Wakes {
    /// The `Notify` of the stage that takes `queue`'s jobs.
    pub fn of(&self, queue: Queue) -> &Arc<Notify> {
        match queue {
            Queue::Enrich => &self.enrich,
            Queue::Evaluate => &self.evaluate,
            Queue::Action => &self.act,
        }
    }

    /// Wakes the stage that takes `queue`'s jobs.
    pub fn wake(&self, queue: Queue) {
        self.of(queue).notify_waiters();
    }
}

/// Whether this process may still make an outside call for `job`: it surely holds the
/// job's lease (docs/behaviour.md section 12). If not (a PostgreSQL instance paused or cut
/// off past its lease), the job is dropped here, without a call and without an outcome:
/// its lease runs out or has already, and whichever instance holds it next runs it.
pub fn lease_still_held(journal: &Journal, job: &Job) -> bool {
    if journal.lease_held(job) {
        return true;
    }
    tracing::warn!(job_id = job.id, kind = %job.kind, event_id = %job.event_id,
        "This instance may have lost the job's lease (it was paused or cut off); dropping it without a call.");
    journal.abandon(job);
    false
}

/// Longest idle sleep. Work queued by another process (`freshet replay`, `freshet retry`)
/// cannot wake us, so it is picked up within this time.
const IDLE_POLL: Duration = Duration::from_secs(1);

/// The next batch of due jobs of `queue` (at most `limit`, leased for `lease_ms`), waiting
/// while there are none. None once a stop is asked: checked before each claim, not only
/// when idle, so that with a backlog a stage ends after the batch in hand and the rest
/// stays queued for the next start.
pub async fn next_jobs(
    journal: &Journal,
    queue: Queue,
    limit: usize,
    lease_ms: u64,
    wake: &Arc<Notify>,
    stop: &CancellationToken,
) -> Option<Vec<Job>> {
    while !stop.is_cancelled() {
        match blocking(journal, move |j| j.claim(queue, limit, lease_ms)).await {
            Ok(jobs) if !jobs.is_empty() => return Some(jobs),
            Ok(_) => {}
            Err(error) => {
                tracing::error!(error = %error, queue = queue.as_str(), "Cannot claim jobs.")
            }
        }
        if !wait_for_work(journal, queue, wake, stop).await {
            break;
        }
    }
    None
}

/// Waits until work of `queue` may be due. Returns false when it is time to stop.
pub async fn wait_for_work(
    journal: &Journal,
    queue: Queue,
    wake: &Arc<Notify>,
    stop: &CancellationToken,
) -> bool {
    // Register interest before looking, so a job journaled in between still wakes us.
    let notified = wake.notified();
    tokio::pin!(notified);
    notified.as_mut().enable();
    let due = match blocking(journal, move |j| j.next_due_in(queue)).await {
        Ok(Some(ms)) => Duration::from_millis(ms).min(IDLE_POLL),
        Ok(None) => IDLE_POLL,
        Err(error) => {
            tracing::error!(error = %error, queue = queue.as_str(), "Cannot read the journal; retrying.");
            Duration::from_secs(1)
        }
    };
    if due.is_zero() {
        return !stop.is_cancelled();
    }
    tokio::select! {
        _ = stop.cancelled() => false,
        _ = &mut notified => true,
        _ = tokio::time::sleep(due) => true,
    }
}
