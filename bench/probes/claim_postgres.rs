//! A claim on the PostgreSQL journal while the queue holds 100,000 open jobs that are not
//! due yet (retries backing off, say): a claim must read only due jobs, through an index
//! bound, never the whole backlog (docs/behaviour.md section 12, goal: at most 1 ms).
//!
//! Usage: FRESHET_TEST_DATABASE_URL=postgres://... claim_postgres [NOT_DUE]
//! (`bash bench/run` starts a throwaway server with .ci/postgres.sh.) Prints one
//! `key value` line per figure: claims that find nothing due, and claims of one due job.

use std::time::{Duration, Instant};

use freshet::journal::postgres::{Pooler, Role, DEFAULT_SCHEMA};
use freshet::journal::{PostgresJournal, Queue, StageQueue};

/// Claims timed per figure.
const ROUNDS: usize = 2000;

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() as f64 * p) as usize).min(sorted.len() - 1)]
}

fn report(name: &str, mut times: Vec<Duration>) {
    times.sort();
    let mean = times.iter().sum::<Duration>() / times.len() as u32;
    println!("{name}_mean_ms {:.3}", mean.as_secs_f64() * 1000.0);
    println!(
        "{name}_p50_ms {:.3}",
        percentile(&times, 0.5).as_secs_f64() * 1000.0
    );
    println!(
        "{name}_p99_ms {:.3}",
        percentile(&times, 0.99).as_secs_f64() * 1000.0
    );
}

/// [`ROUNDS`] claims of up to `limit` action jobs, each expected to return `expect`.
async fn time_claims(
    journal: &std::sync::Arc<PostgresJournal>,
    limit: usize,
    expect: usize,
) -> Vec<Duration> {
    let journal = std::sync::Arc::clone(journal);
    tokio::task::spawn_blocking(move || {
        (0..ROUNDS)
            .map(|_| {
                let started = Instant::now();
                let jobs = journal.claim(Queue::Action, limit, 30_000).unwrap();
                let took = started.elapsed();
                assert_eq!(jobs.len(), expect);
                took
            })
            .collect()
    })
    .await
    .unwrap()
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let url = std::env::var("FRESHET_TEST_DATABASE_URL")
        .expect("FRESHET_TEST_DATABASE_URL (source .ci/postgres.sh)");
    let not_due: i64 = std::env::args()
        .nth(1)
        .map(|n| n.parse().expect("NOT_DUE is a number"))
        .unwrap_or(100_000);
    let (admin, connection) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
        .await
        .expect("connect");
    tokio::spawn(connection);
    let database = format!("freshet_claim_{}", std::process::id());
    admin
        .batch_execute(&format!("CREATE DATABASE {database}"))
        .await
        .unwrap();
    let (base, _) = url.rsplit_once('/').unwrap();
    let bench_url = format!("{base}/{database}");

    let journal = tokio::task::spawn_blocking({
        let url = bench_url.clone();
        move || PostgresJournal::open(&url, DEFAULT_SCHEMA, 30, Pooler::None, Role::Serve).unwrap()
    })
    .await
    .unwrap();
    let (client, connection) = tokio_postgres::connect(&bench_url, tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(connection);
    // Open action jobs due in a day, as plain SQL (the API would take minutes).
    client
        .batch_execute(&format!(
            "SET search_path = {DEFAULT_SCHEMA};
             INSERT INTO events (id, source, type, received_at, received_ms, status, body)
               VALUES ('dbt:wev_backlog', 'dbt', 'dbt.job.run.completed', '2026-12-06T00:00:00.000Z', 0, 'evaluated', '{{}}');
             INSERT INTO jobs (queue, kind, event_id, rule, job_key, payload, status, attempt,
                               max_attempts, scheduled_at, created_at)
               SELECT 'action', 'slack_post', 'dbt:wev_backlog', 'r.rhai', 'later:' || i, 'null',
                      'retrying', 1, 5, (extract(epoch from now()) * 1000)::bigint + 86400000, 0
               FROM generate_series(1, {not_due}) i;
             ANALYZE jobs;"
        ))
        .await
        .unwrap();
    println!("not_due_jobs {not_due}");

    let journal = std::sync::Arc::new(journal);
    report("claim_nothing_due", time_claims(&journal, 8, 0).await);

    client
        .batch_execute(&format!(
            "INSERT INTO jobs (queue, kind, event_id, rule, job_key, payload, status, attempt,
                               max_attempts, scheduled_at, created_at)
               SELECT 'action', 'slack_post', 'dbt:wev_backlog', 'r.rhai', 'due:' || i, 'null',
                      'pending', 0, 5, i, 0
               FROM generate_series(1, {ROUNDS}) i"
        ))
        .await
        .unwrap();
    report("claim_one_due", time_claims(&journal, 1, 1).await);

    drop(journal);
    drop(client);
    if std::env::var_os("FRESHET_BENCH_KEEP").is_some() {
        println!("kept_database {database}");
        return;
    }
    admin
        .batch_execute(&format!("DROP DATABASE {database} WITH (FORCE)"))
        .await
        .unwrap();
}
