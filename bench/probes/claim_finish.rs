//! Claim + finish of one job on a SQLite journal that already holds 1,000,000 finished
//! jobs (and their events), against the same on an empty journal: what each job costs the
//! pipeline once the journal has a long history.
//!
//! Usage: claim_finish DIR [FINISHED]   (prints one `key value` line per figure)
//!
//! Two kinds of job: an evaluate job, claimed and recorded as the evaluate stage does it
//! (both commits deferred: `synchronous = NORMAL`, no fsync), and a job whose claim and
//! finish are both synced (`synchronous = FULL`), as for an action or an enrichment (an
//! enrich job here), so that on a disk that figure is mostly two fsyncs. Run it with DIR
//! on tmpfs (/dev/shm, where fsync costs nothing) to see the journal's own work;
//! `bench/run` reports both.

use std::path::Path;
use std::time::{Duration, Instant};

use freshet::event::{Event, Source};
use freshet::journal::{
    Evaluation, FirstJob, FollowUp, JobOutcome, Queue, SqliteJournal, StageQueue,
};

/// Jobs claimed and finished per measurement.
const ROUNDS: usize = 2000;

fn event(id: usize) -> Event {
    Event {
        id: format!("dbt:wev_claim_{id}"),
        source: Source::Dbt,
        kind: "dbt.job.run.completed".into(),
        received_at: "2026-11-30T00:00:00.000Z".into(),
        chain_depth: 0,
        fields: serde_json::Map::new(),
        raw: serde_json::json!({"eventId": format!("wev_claim_{id}")}),
    }
}

/// Fills a new journal with `finished` events whose evaluate jobs succeeded, in one
/// transaction of plain SQL (the API would take minutes to write a million).
fn fill(path: &Path, finished: usize) {
    drop(SqliteJournal::open(path).expect("create the journal"));
    let conn = rusqlite::Connection::open(path).unwrap();
    conn.execute_batch(&format!(
        "BEGIN;
         WITH RECURSIVE n(i) AS (SELECT 0 UNION ALL SELECT i + 1 FROM n WHERE i + 1 < {finished})
         INSERT INTO events (id, source, type, received_at, received_ms, status, body)
           SELECT 'dbt:wev_old_' || i, 'dbt', 'dbt.job.run.completed', '2026-11-29T00:00:00.000Z',
                  1764374400000 + i, 'evaluated', '{{}}' FROM n;
         INSERT INTO jobs (queue, kind, event_id, job_key, payload, status, attempt, max_attempts,
                           scheduled_at, created_at, finished_at)
           SELECT 'evaluate', 'evaluate', id, json_array('evaluate', id), 'null', 'succeeded', 1, 5,
                  received_ms, received_ms, received_ms FROM events;
         COMMIT;"
    ))
    .unwrap();
}

/// Mean time of claim + finish of one job of `queue`, over [`ROUNDS`] jobs queued
/// beforehand (events from `offset` on).
fn claim_finish(journal: &SqliteJournal, queue: Queue, offset: usize) -> Duration {
    let first = match queue {
        Queue::Evaluate => FirstJob::EVALUATE,
        _ => FirstJob::enrich(5),
    };
    for i in 0..ROUNDS {
        journal.append(&event(offset + i), first).wait().unwrap();
    }
    let started = Instant::now();
    for _ in 0..ROUNDS {
        let job = journal
            .claim(queue, 1, 60_000)
            .unwrap()
            .pop()
            .expect("a queued job");
        if queue == Queue::Evaluate {
            let recorded = journal
                .finish_evaluations(&[(job, Evaluation::default())])
                .unwrap();
            assert_eq!(recorded, vec![true], "still leased");
        } else {
            journal
                .finish(&job, &JobOutcome::Succeeded(None), &FollowUp::default())
                .unwrap()
                .expect("still leased");
        }
    }
    started.elapsed() / ROUNDS as u32
}

/// Both kinds of job on `journal`: (evaluate, synced).
fn both(journal: &SqliteJournal) -> (Duration, Duration) {
    let evaluate = claim_finish(journal, Queue::Evaluate, 0);
    let synced = claim_finish(journal, Queue::Enrich, ROUNDS);
    (evaluate, synced)
}

fn main() {
    let mut args = std::env::args().skip(1);
    let dir = args.next().expect("usage: claim_finish DIR [FINISHED]");
    let finished: usize = args.next().map_or(1_000_000, |n| n.parse().unwrap());
    let dir = tempfile::tempdir_in(dir).unwrap();

    let empty = SqliteJournal::open(&dir.path().join("empty.db")).unwrap();
    let on_empty = both(&empty);
    drop(empty);

    let path = dir.path().join("full.db");
    let filling = Instant::now();
    fill(&path, finished);
    eprintln!("filled {finished} finished jobs in {:?}", filling.elapsed());
    let full = SqliteJournal::open(&path).unwrap();
    let on_full = both(&full);

    let ms = |d: Duration| format!("{:.3}", d.as_secs_f64() * 1000.0);
    println!("finished_jobs {finished}");
    println!("claim_finish_empty_ms {}", ms(on_empty.0));
    println!("claim_finish_full_ms {}", ms(on_full.0));
    println!("synced_claim_finish_empty_ms {}", ms(on_empty.1));
    println!("synced_claim_finish_full_ms {}", ms(on_full.1));
}
