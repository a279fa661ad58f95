//! The events intake has just committed, kept in memory for the evaluate stage.
//!
//! Under load the evaluate stage reads each event a few milliseconds after intake
//! committed it; reading it back meant a query, a zstd frame to decompress and the JSON
//! to parse again, a tenth of the daemon's CPU when profiled (bench/README.md). The window
//! is small and bounded: when evaluation falls further behind than it holds, the evaluate
//! stage reads from the file as before, so the window only saves work, it never decides
//! what is evaluated.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;

use crate::event::Event;

/// Events held at most: a few claim batches' worth, so that the window's memory stays
/// small (a dbt event in memory is a few KiB) however far evaluation is behind.
const CAPACITY: usize = 512;

/// The last [`CAPACITY`] events appended with an `evaluate` first job, by id. Only events
/// the file holds unchanged are here: the commit thread adds an event after its commit,
/// and whatever rewrites an event (enrichment) or deletes it (pruning) drops it first.
#[derive(Default)]
pub(super) struct RecentEvents {
    by_id: HashMap<String, Arc<Event>>,
    /// Ids in the order they came; may name events already taken.
    order: VecDeque<String>,
}

impl RecentEvents {
    /// Keeps `event`, forgetting the oldest one kept if the window is full.
    pub(super) fn insert(&mut self, event: Arc<Event>) {
        if self.order.len() >= CAPACITY {
            if let Some(oldest) = self.order.pop_front() {
                self.by_id.remove(&oldest);
            }
        }
        self.order.push_back(event.id.clone());
        self.by_id.insert(event.id.clone(), event);
    }

    /// Takes the event out: an evaluation reads its event once, and a second reading (a
    /// replay, an evaluation run again after a lost lease) goes to the file.
    pub(super) fn take(&mut self, id: &str) -> Option<Arc<Event>> {
        self.by_id.remove(id)
    }

    /// Forgets everything (the events may be about to change or go).
    pub(super) fn clear(&mut self) {
        self.by_id.clear();
        self.order.clear();
    }

    #[cfg(test)]
    pub(super) fn len(&self) -> usize {
        self.by_id.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::Source;

    fn event(id: &str) -> Arc<Event> {
        Arc::new(Event {
            id: id.into(),
            source: Source::Dbt,
            kind: "job.run.completed".into(),
            received_at: "2026-11-30T00:00:00Z".into(),
            chain_depth: 0,
            fields: Default::default(),
            raw: serde_json::Value::Null,
        })
    }

    #[test]
    fn holds_at_most_its_capacity_and_forgets_the_oldest_first() {
        let mut recent = RecentEvents::default();
        for n in 0..CAPACITY + 10 {
            recent.insert(event(&format!("dbt:{n}")));
        }
        assert_eq!(recent.len(), CAPACITY);
        assert!(
            recent.take("dbt:9").is_none(),
            "among the oldest, forgotten"
        );
        assert_eq!(recent.take("dbt:10").unwrap().id, "dbt:10");
        assert!(recent.take("dbt:10").is_none(), "taken once");
        assert_eq!(recent.order.len(), CAPACITY, "the order is bounded too");
    }
}
