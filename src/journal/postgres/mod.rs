//! The PostgreSQL journal: several `freshet serve` instances share one database, so that
//! losing a machine loses neither webhooks (another instance takes them) nor the jobs it
//! held (another instance takes them over when their lease runs out). SPEC section 10.
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
//! The [`JournalStore`] interface is blocking; this store runs its async client
//! (`tokio-postgres` with the `deadpool` pool) on a small runtime of its own and waits
//! for each call, so it serves the daemon's blocking threads and the CLI alike.
//!
//! Every call is bounded in time (connections within 3 s, calls within a few seconds):
//! while PostgreSQL is unreachable, webhooks get 503 within 5 s (dbt Cloud gives up on a
//! delivery after 10 s), never a 200 for an event that was not committed.

mod calls;
mod schema;
mod store;

pub use store::{PostgresJournal, Role};
