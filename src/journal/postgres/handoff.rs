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

use crate::event::Event;
use crate::journal::Job;

/// Most evaluations waiting in the hand-off: a few batches' worth.
pub(super) const HANDOFF_CAP: usize = 256;

#[derive(Default)]
pub(super) struct HandOff {
    jobs: VecDeque<Job>,
    /// Room set aside by batches being committed.
    reserved: usize,
    /// The events of handed jobs, until the evaluate stage reads them. A cache: an event
    /// not found here is read from the journal.
    events: HashMap<String, Arc<Event>>,
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

    /// Up to `limit` handed jobs, oldest first.
    pub(super) fn take(&mut self, limit: usize) -> Vec<Job> {
        let n = limit.min(self.jobs.len());
        self.jobs.drain(..n).collect()
    }

    /// The event of a handed job, once.
    pub(super) fn event(&mut self, id: &str) -> Option<Arc<Event>> {
        self.events.remove(id)
    }

    pub(super) fn len(&self) -> usize {
        self.jobs.len()
    }
}
