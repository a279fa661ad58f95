//! What both backends do alike, written once: the keys of stage and action jobs, which
//! claim candidates to lease, and replays.

use serde_json::Value;

use super::{FirstJob, NewJob, Queue};

/// A job key made of `parts`, unambiguous whatever the parts contain: the parts are
/// written as a JSON array, so an event id holding `:` (or anything else) can never make
/// two different keys look alike (ARCHITECTURE.md, "Durability contract").
pub fn job_key(parts: &[&str]) -> String {
    serde_json::to_string(parts).expect("a list of strings always serializes")
}

/// An `enrich` or `evaluate` job for an event. Its key is made of the queue and the event
/// id, plus `suffix` for a later evaluation of the same event (a replay).
pub fn stage_job(stage: FirstJob, event_id: &str, suffix: Option<&str>, payload: Value) -> NewJob {
    let queue = stage.queue;
    let key = match suffix {
        // Every event has one of these keys, stored twice (in the row and in the unique
        // index), so it is short: `["evaluate","<id>"]` was 24 bytes an event more than
        // this. It is as unambiguous: every other key is a JSON array (it starts with
        // `[`), and after the queue's letter comes the id, whole. Rows written before keep
        // their old keys; no stage job is ever inserted twice for one event, so the two
        // forms never meet.
        None => format!("{}:{event_id}", stage_letter(queue)),
        Some(suffix) => job_key(&[queue.as_str(), event_id, suffix]),
    };
    NewJob {
        queue,
        kind: queue.as_str().to_string(),
        event_id: event_id.to_string(),
        rule: None,
        job_key: key,
        coalesce_key: None,
        payload,
        max_attempts: stage.max_attempts,
    }
}

/// The first letter of a stage job's key.
fn stage_letter(queue: Queue) -> char {
    match queue {
        Queue::Evaluate => 'e',
        Queue::Enrich => 'n',
        Queue::Action => 'a',
    }
}

/// Which of the claim candidates (soonest first; id and attempts so far) to lease. A job
/// tried before may be the one that killed the process last time, so it is leased alone:
/// if it does so again, it takes no other job's attempt with it (SPEC section 11, poison
/// events). Fresh jobs are leased together, the earliest due deciding which kind goes
/// first.
pub fn isolate_retried(candidates: &[(i64, u32)]) -> Vec<i64> {
    match candidates.first() {
        None => Vec::new(),
        Some(&(id, attempt)) if attempt > 0 => vec![id],
        Some(_) => candidates
            .iter()
            .filter(|(_, attempt)| *attempt == 0)
            .map(|(id, _)| *id)
            .collect(),
    }
}

/// The replay suffix of a stage job's key (`replay3`), from its payload.
pub fn replay_suffix(payload: &Value) -> Option<String> {
    payload
        .get("replay")
        .and_then(Value::as_i64)
        .map(|n| format!("replay{n}"))
}
