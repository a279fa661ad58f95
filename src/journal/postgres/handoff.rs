//! Evaluations handed from intake to this instance's evaluate stage. Intake writes each
//! webhook's evaluate job already leased to its own instance (`running`, attempt 1), and
//! passes the job and its event here, so the evaluate stage takes them without a claim
//! (an `UPDATE` of every job, its five index entries and a round trip) and without
//! reading the event back. That claim was a quarter of PostgreSQL's time per event in
//! bench/postgres (issue 25).
//!
//! Nothing here is the truth: the jobs are leased in the journal like claimed ones (held,
//! renewed, fenced at their end), so if this instance dies they are taken over when their
//! lease runs out, as a claimed batch is. The hand-off is bounded ([`HANDOFF_CAP`]): past
//! it, intake writes the job `pending` for any instance to claim, so a lagging evaluate
//! stage never leaves more than that many events waiting for a dead instance's leases.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::event::Event;
use crate::journal::Job;

/// Most evaluations waiting in the hand-off: a few batches' worth.
pub(super) const HANDOFF_CAP: usize = 256;
/// With evaluations in hand, how often the evaluate stage still claims from the journal.
const CLAIM_EVERY: Duration = Duration::from_millis(100);

#[derive(Default)]
pub(super) struct HandOff {
    jobs: VecDeque<Job>,
    /// Room set aside by batches being committed.
    reserved: usize,
    /// The events of handed jobs, until the evaluate stage reads them. A cache: an event
    /// not found here is read from the journal.
    events: HashMap<String, Arc<Event>>,
    /// When the evaluate stage last claimed from the journal ([`HandOff::claim_now`]).
    last_claim: Option<Instant>,
}

impl HandOff {
    /// Sets aside room for up to `wanted` jobs; returns how many it got.
    pub(super) fn reserve(&mut self, wanted: usize) -> usize {
        let room = HANDOFF_CAP.saturating_sub(self.jobs.len() + self.reserved);
        let granted = wanted.min(room);
        self.reserved += granted;
        granted
    }

    pub(super) fn unreserve(&mut self, granted: usize) {
        self.reserved = self.reserved.saturating_sub(granted);
    }

    pub(super) fn push(&mut self, job: Job, event: Arc<Event>) {
        // Events whose jobs were taken but never read (an evaluation that failed) would
        // otherwise stay: the cache is dropped whole past twice the cap.
        if self.events.len() >= 2 * HANDOFF_CAP {
            self.events.clear();
        }
        self.events.insert(job.event_id.clone(), event);
        self.jobs.push_back(job);
    }

    /// How many evaluate jobs to claim from the journal for a batch of up to `limit`
    /// beside what is in hand; 0 for no claim at all. With nothing in hand, the whole
    /// batch. With jobs in hand, a claim (of what they leave of the batch, and at least an
    /// eighth of it) at most every [`CLAIM_EVERY`]: a claim per batch was a statement per
    /// batch, most finding nothing, while evaluations queued by others (replays,
    /// enrichments, chained events, another instance's overflow, takeovers) still wait no
    /// longer than that for this instance's own.
    pub(super) fn claim_now(&mut self, limit: usize) -> usize {
        let in_hand = self.jobs.len();
        if in_hand > 0 && self.last_claim.is_some_and(|at| at.elapsed() < CLAIM_EVERY) {
            return 0;
        }
        self.last_claim = Some(Instant::now());
        (limit - in_hand.min(limit)).max(limit / 8).max(1)
    }

    /// Up to `limit` handed jobs, oldest first.
    pub(super) fn take(&mut self, limit: usize) -> Vec<Job> {
        let n = limit.min(self.jobs.len());
        self.jobs.drain(..n).collect()
    }

    /// The event of a handed job, once.
    pub(super) fn event(&mut self, id: &str) -> Option<Arc<Event>> {
        self.events.remove(id)
    }
}
