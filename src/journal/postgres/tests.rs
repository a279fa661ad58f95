//! What only the PostgreSQL journal does: leases that its instance renews, taken over
//! when they run out, and fenced finishing writes.

use std::time::Duration;

use crate::journal::contract::{event, TestStore};
use crate::journal::postgres::{Pooler, PostgresJournal, Role, DEFAULT_SCHEMA};
use crate::journal::{
    Evaluation, FirstJob, FollowUp, Job, JobOutcome, JobStatus, Queue, StageQueue,
};

/// A fresh PostgreSQL test database and its URL (see `TestStore::postgres`).
fn postgres_store() -> (TestStore, String) {
    let store = TestStore::postgres();
    let TestStore::Postgres(url) = &store else {
        unreachable!("a PostgreSQL store")
    };
    let url = url.clone();
    (store, url)
}

fn claim_one(journal: &crate::journal::Journal) -> Option<Job> {
    journal.claim(Queue::Evaluate, 1, 60_000).unwrap().pop()
}

#[test]
#[cfg_attr(
    not(freshet_postgres_tests),
    ignore = "needs PostgreSQL: build with FRESHET_TEST_DATABASE_URL set (source .ci/postgres.sh)"
)]
fn a_held_lease_is_renewed_and_an_abandoned_one_is_taken_over() {
    let store = TestStore::postgres();
    let a = store.open();
    let b = store.open();
    a.append(&event("dbt:a"), FirstJob::EVALUATE)
        .wait()
        .unwrap();
    let held = claim_one(&a).expect("a claims");
    // Past the lease: a renews what it holds, so b finds nothing.
    std::thread::sleep(Duration::from_millis(1_600));
    assert!(claim_one(&b).is_none(), "a held lease was taken over");
    // a gives it up (it could not finish it): it runs out and b takes it.
    a.abandon(&held);
    std::thread::sleep(Duration::from_millis(1_600));
    let taken = claim_one(&b).expect("b takes the job over");
    assert_eq!((taken.id, taken.attempt), (held.id, 2));
}

#[test]
#[cfg_attr(
    not(freshet_postgres_tests),
    ignore = "needs PostgreSQL: build with FRESHET_TEST_DATABASE_URL set (source .ci/postgres.sh)"
)]
fn a_finish_after_the_lease_was_lost_is_discarded() {
    let store = TestStore::postgres();
    let a = store.open();
    let b = store.open();
    a.append(&event("dbt:a"), FirstJob::EVALUATE)
        .wait()
        .unwrap();
    let stale = claim_one(&a).unwrap();
    // a stalls (no renewal), b takes over.
    a.abandon(&stale);
    std::thread::sleep(Duration::from_millis(1_600));
    let current = claim_one(&b).unwrap();
    // a wakes up and reports: fenced off, nothing written, no further attempt.
    let outcome = JobOutcome::Dead {
        error: "late".into(),
    };
    assert_eq!(
        a.finish(&stale, &outcome, &FollowUp::default()).unwrap(),
        None
    );
    assert_eq!(
        a.finish_evaluations(&[(stale.clone(), Evaluation::default())])
            .unwrap(),
        vec![false]
    );
    assert!(b.jobs(Some(JobStatus::Dead), 10).unwrap().is_empty());
    assert_eq!(
        b.finish_evaluations(&[(current, Evaluation::default())])
            .unwrap(),
        vec![true]
    );
    let shown = b.events(10, None).unwrap();
    assert_eq!(shown[0].status, "evaluated");
    assert!(shown[0].instance.is_some());
}

/// docs/behaviour.md section 12 (retention at volume): pruning deletes a batch of events
/// per transaction, under an advisory lock that one instance holds at a time, and never
/// an event whose jobs are not finished.
#[test]
#[cfg_attr(
    not(freshet_postgres_tests),
    ignore = "needs PostgreSQL: build with FRESHET_TEST_DATABASE_URL set (source .ci/postgres.sh)"
)]
fn pruning_goes_in_batches_and_keeps_events_with_open_jobs() {
    let (_store, url) = postgres_store();
    let url = &url;
    let journal = PostgresJournal::open(url, DEFAULT_SCHEMA, 3, Pooler::None, Role::Serve).unwrap();
    for i in 0..7 {
        journal
            .append(&event(&format!("dbt:old{i}")), FirstJob::EVALUATE)
            .wait()
            .unwrap();
    }
    let claimed = journal.claim(Queue::Evaluate, 10, 60_000).unwrap();
    let batch: Vec<_> = claimed
        .into_iter()
        .map(|job| (job, Evaluation::default()))
        .collect();
    journal.finish_evaluations(&batch).unwrap();
    journal
        .append(&event("dbt:open"), FirstJob::EVALUATE)
        .wait()
        .unwrap();
    // Stopping: the batch under way ends, and no other begins.
    assert_eq!(journal.prune_in_batches(0, 3, &|| false).unwrap(), 3);
    assert_eq!(journal.prune_in_batches(0, 3, &|| true).unwrap(), 4);
    assert!(journal.event("dbt:old6").unwrap().is_none());
    assert!(journal.event("dbt:open").unwrap().is_some());
}

/// Runs `sql` on the database at `url` outside freshet, and returns the first column of
/// each row as text.
fn outside(url: &str, sql: &str) -> Vec<String> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let (client, connection) = tokio_postgres::connect(url, tokio_postgres::NoTls)
            .await
            .unwrap();
        tokio::spawn(connection);
        client
            .simple_query(sql)
            .await
            .unwrap()
            .into_iter()
            .filter_map(|message| match message {
                tokio_postgres::SimpleQueryMessage::Row(row) => {
                    Some(row.get(0).unwrap_or_default().to_string())
                }
                _ => None,
            })
            .collect()
    })
}

fn tables_in(url: &str, schema: &str) -> Vec<String> {
    outside(
        url,
        &format!(
            "SELECT table_name FROM information_schema.tables WHERE table_schema = '{schema}' ORDER BY table_name"
        ),
    )
}

/// docs/behaviour.md section 12 (its own schema): in a database whose `public` schema has
/// an application's own `events` and `jobs`, freshet's tables live in `freshet`, the
/// others stay as they were, and the journal works.
#[test]
#[cfg_attr(
    not(freshet_postgres_tests),
    ignore = "needs PostgreSQL: build with FRESHET_TEST_DATABASE_URL set (source .ci/postgres.sh)"
)]
fn a_database_with_its_own_events_and_jobs_tables_works() {
    let (_store, url) = postgres_store();
    let url = &url;
    outside(
        url,
        "CREATE TABLE public.events (n INTEGER); CREATE TABLE public.jobs (name TEXT);
         INSERT INTO public.jobs VALUES ('theirs')",
    );
    let journal = PostgresJournal::open(url, DEFAULT_SCHEMA, 3, Pooler::None, Role::Serve).unwrap();
    journal
        .append(&event("dbt:ours"), FirstJob::EVALUATE)
        .wait()
        .unwrap();
    assert_eq!(claim_one_of(&journal).unwrap().event_id, "dbt:ours");
    assert_eq!(tables_in(url, "public"), ["events", "jobs"]);
    assert_eq!(
        tables_in(url, "freshet"),
        [
            "alerts",
            "clocks",
            "events",
            "freshet_schema",
            "jobs",
            "rule_runs"
        ]
    );
    assert_eq!(outside(url, "SELECT name FROM public.jobs"), ["theirs"]);
}

/// docs/behaviour.md section 12 (its own schema): a journal an older freshet kept in
/// `public` is moved into `freshet` at the next start, its rows with it.
#[test]
#[cfg_attr(
    not(freshet_postgres_tests),
    ignore = "needs PostgreSQL: build with FRESHET_TEST_DATABASE_URL set (source .ci/postgres.sh)"
)]
fn an_older_journal_in_public_is_moved_into_its_own_schema() {
    let (_store, url) = postgres_store();
    let url = &url;
    // What an older freshet made: its tables in `public`, the connection's default.
    let older = PostgresJournal::open(url, "public", 3, Pooler::None, Role::Serve).unwrap();
    older
        .append(&event("dbt:before"), FirstJob::EVALUATE)
        .wait()
        .unwrap();
    drop(older);
    let journal = PostgresJournal::open(url, DEFAULT_SCHEMA, 3, Pooler::None, Role::Serve).unwrap();
    assert!(journal.event("dbt:before").unwrap().is_some());
    assert!(
        tables_in(url, "public").is_empty(),
        "{:?}",
        tables_in(url, "public")
    );
    assert!(tables_in(url, "freshet").contains(&"events".to_string()));
    // A command (which only reads the version) finds it set up.
    PostgresJournal::open(url, DEFAULT_SCHEMA, 3, Pooler::None, Role::Command).unwrap();
}

fn claim_one_of(journal: &PostgresJournal) -> Option<Job> {
    journal.claim(Queue::Evaluate, 1, 60_000).unwrap().pop()
}

/// docs/behaviour.md section 12 (bounded waits): a call that times out cancels its query
/// on the server and its connection is discarded, never handed back to the pool busy.
#[test]
#[cfg_attr(
    not(freshet_postgres_tests),
    ignore = "needs PostgreSQL: build with FRESHET_TEST_DATABASE_URL set (source .ci/postgres.sh)"
)]
fn a_timed_out_call_cancels_its_query_and_discards_its_connection() {
    use super::session::Typed;
    let (_store, url) = postgres_store();
    let url = &url;
    let journal =
        PostgresJournal::open(url, DEFAULT_SCHEMA, 30, Pooler::None, Role::Serve).unwrap();
    let shared = std::sync::Arc::clone(&journal.shared);
    let result = journal.run(Duration::from_millis(300), async move {
        let session = shared.client().await?;
        session
            .rows("SELECT pg_sleep(20), 'freshet-cut-off'", &[])
            .await
            .map_err(super::backend)?;
        Ok(())
    });
    assert!(
        result
            .unwrap_err()
            .to_string()
            .contains("did not answer within"),
        "the call timed out"
    );
    // The server stops the statement (the cancel request), instead of running it to
    // its end on a connection a later call would wait behind.
    let started = std::time::Instant::now();
    loop {
        let running = outside(
            url,
            "SELECT count(*) FROM pg_stat_activity
             WHERE query LIKE '%freshet-cut-off%' AND state = 'active' AND pid <> pg_backend_pid()",
        );
        if running == ["0"] {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "the cut-off statement still runs"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    // And the pool kept no connection that was busy with it: the next call is answered
    // at once, from a clean connection.
    let status = journal.shared.pool.status();
    assert_eq!(status.size, status.available, "{status:?}");
    assert!(journal.event("dbt:none").unwrap().is_none());
}

/// docs/behaviour.md section 12 (intake on PostgreSQL): an instance sends at most one
/// `NOTIFY` per queue per 50 ms, however many events it journals, and each after the
/// commit it reports (the others still hear of the work).
#[test]
#[cfg_attr(
    not(freshet_postgres_tests),
    ignore = "needs PostgreSQL: build with FRESHET_TEST_DATABASE_URL set (source .ci/postgres.sh)"
)]
fn wakes_for_the_other_instances_are_debounced() {
    use futures_util::future::poll_fn;
    let (_store, url) = postgres_store();
    let url = &url;
    let journal =
        PostgresJournal::open(url, DEFAULT_SCHEMA, 30, Pooler::None, Role::Serve).unwrap();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let (notes_tx, notes_rx) = std::sync::mpsc::channel::<(std::time::Instant, String)>();
    let listening = runtime.block_on(async {
        let (client, mut connection) = tokio_postgres::connect(url, tokio_postgres::NoTls)
            .await
            .unwrap();
        tokio::spawn(async move {
            while let Some(Ok(message)) = poll_fn(|cx| connection.poll_message(cx)).await {
                if let tokio_postgres::AsyncMessage::Notification(note) = message {
                    let _ = notes_tx.send((std::time::Instant::now(), note.payload().to_string()));
                }
            }
        });
        client
            .batch_execute(&format!("LISTEN {}", super::schema::WORK_CHANNEL))
            .await
            .unwrap();
        client
    });
    let started = std::time::Instant::now();
    let tickets: Vec<_> = (0..300)
        // Enrich jobs: intake hands evaluations to its own instance and wakes no other
        // for them while the hand-off has room.
        .map(|i| journal.append(&event(&format!("dbt:burst{i}")), FirstJob::enrich(3)))
        .collect();
    for ticket in tickets {
        ticket.wait().unwrap();
    }
    let elapsed = started.elapsed();
    // The last wake, at most one period after the last commit.
    let first = notes_rx
        .recv_timeout(Duration::from_secs(5))
        .expect("a wake");
    std::thread::sleep(super::listen::NOTIFY_EVERY * 3);
    let mut notes = vec![first];
    notes.extend(notes_rx.try_iter());
    assert!(
        notes.iter().all(|(_, queue)| queue == "enrich"),
        "{notes:?}"
    );
    let periods = (elapsed + super::listen::NOTIFY_EVERY * 3).as_millis()
        / super::listen::NOTIFY_EVERY.as_millis()
        + 1;
    assert!(
        notes.len() as u128 <= periods,
        "{} notifications for 300 commits in {elapsed:?}",
        notes.len()
    );
    for pair in notes.windows(2) {
        assert!(
            pair[1].0 - pair[0].0 >= super::listen::NOTIFY_EVERY - Duration::from_millis(5),
            "two wakes {:?} apart",
            pair[1].0 - pair[0].0
        );
    }
    drop(listening);
}

/// docs/behaviour.md section 12 (intake on PostgreSQL): webhooks that arrive together are
/// journaled in shared commits; the same id twice in one batch is new once and a
/// duplicate once, and every event gets its first job.
#[test]
#[cfg_attr(
    not(freshet_postgres_tests),
    ignore = "needs PostgreSQL: build with FRESHET_TEST_DATABASE_URL set (source .ci/postgres.sh)"
)]
fn appends_that_arrive_together_share_commits() {
    let (_store, url) = postgres_store();
    let url = &url;
    let journal =
        PostgresJournal::open(url, DEFAULT_SCHEMA, 30, Pooler::None, Role::Serve).unwrap();
    // Every writing transaction takes a transaction id: their count between two reads
    // is the number of commits (and this check's own read).
    let commits = |url: &str| -> i64 { outside(url, "SELECT txid_current()")[0].parse().unwrap() };
    let before = commits(url);
    let tickets: Vec<_> = (0..400)
        .map(|i| {
            journal.append(
                &event(&format!("dbt:together{}", i % 200)),
                FirstJob::EVALUATE,
            )
        })
        .collect();
    let answers: Vec<_> = tickets.into_iter().map(|t| t.wait().unwrap()).collect();
    let new = answers
        .iter()
        .filter(|a| matches!(a, crate::journal::Appended::New))
        .count();
    assert_eq!(new, 200, "each id new once");
    let rows = outside(
        url,
        "SELECT count(*) FROM freshet.events e JOIN freshet.jobs j ON j.event_id = e.id AND j.queue = 'evaluate'",
    );
    assert_eq!(rows, ["200"]);
    let spent = commits(url) - before - 1;
    assert!(
        spent < 200,
        "{spent} commits for 400 appends (with the checks' own)"
    );
}

/// A batch's events in one statement, in the order asked, an id asked twice given twice
/// and one that is gone given as none.
#[test]
#[cfg_attr(
    not(freshet_postgres_tests),
    ignore = "needs PostgreSQL: build with FRESHET_TEST_DATABASE_URL set (source .ci/postgres.sh)"
)]
fn the_events_of_a_batch_are_read_together_in_order() {
    let (store, _url) = postgres_store();
    let journal = store.open();
    for id in ["dbt:a", "dbt:b"] {
        journal
            .append(&event(id), FirstJob::EVALUATE)
            .wait()
            .unwrap();
    }
    let read = journal.events_to_evaluate(&["dbt:b", "dbt:gone", "dbt:a", "dbt:b"]);
    let ids: Vec<Option<String>> = read
        .into_iter()
        .map(|event| event.unwrap().map(|event| event.id.clone()))
        .collect();
    assert_eq!(
        ids,
        [
            Some("dbt:b".to_string()),
            None,
            Some("dbt:a".to_string()),
            Some("dbt:b".to_string())
        ]
    );
}

/// Each connection plans its statements once (generic plans), and a new journal plans
/// them on empty tables, where reading the whole table is the cheapest plan. Unless
/// freshet's sessions rule that out, those plans stayed until an analyze of the table
/// happened to come, and every claim, finish and read of a journal that grew fast read
/// all of it (bench/postgres started each run in that state: a claim took 11 ms).
#[test]
#[cfg_attr(
    not(freshet_postgres_tests),
    ignore = "needs PostgreSQL: build with FRESHET_TEST_DATABASE_URL set (source .ci/postgres.sh)"
)]
fn statements_planned_on_an_empty_journal_read_through_indexes_once_it_has_grown() {
    const FILLED: usize = 20_000;
    let (_store, url) = postgres_store();
    let url = &url;
    let journal =
        PostgresJournal::open(url, DEFAULT_SCHEMA, 30, Pooler::None, Role::Serve).unwrap();
    // No analyze during the test: it would make PostgreSQL plan again by itself.
    outside(
        url,
        "ALTER TABLE freshet.events SET (autovacuum_enabled = off);
         ALTER TABLE freshet.jobs SET (autovacuum_enabled = off)",
    );
    let evaluate_all = |journal: &PostgresJournal, prefix: &str| {
        for i in 0..3 {
            journal
                .append(&event(&format!("dbt:{prefix}{i}")), FirstJob::EVALUATE)
                .wait()
                .unwrap();
        }
        let claimed = journal.claim(Queue::Evaluate, 10, 60_000).unwrap();
        assert_eq!(claimed.len(), 3);
        let ids: Vec<&str> = claimed.iter().map(|job| job.event_id.as_str()).collect();
        assert!(journal.events_to_evaluate(&ids).iter().all(|e| e.is_ok()));
        let batch: Vec<_> = claimed
            .into_iter()
            .map(|job| (job, Evaluation::default()))
            .collect();
        let (recorded, next) = journal
            .finish_evaluations_and_claim(&batch, 10, 60_000)
            .unwrap();
        assert_eq!((recorded, next.len()), (vec![true; 3], 0));
    };
    // Planned while the journal is empty...
    evaluate_all(&journal, "empty");
    // ...which then grows (evaluated events and their finished jobs)...
    outside(
        url,
        &format!(
            "INSERT INTO freshet.events (id, source, type, received_at, received_ms, status, body)
               SELECT 'dbt:filled' || i, 'dbt', 'dbt.job.run.completed', '2026-12-01T00:00:00.000Z',
                      i, 'evaluated', '{{}}'
               FROM generate_series(1, {FILLED}) AS i;
             INSERT INTO freshet.jobs (queue, kind, event_id, job_key, payload, status, attempt,
                                       max_attempts, scheduled_at, created_at, finished_at)
               SELECT 'evaluate', 'evaluate', 'dbt:filled' || i, 'e:dbt:filled' || i, 'null',
                      'succeeded', 1, 5, i, i, i
               FROM generate_series(1, {FILLED}) AS i"
        ),
    );
    // ...and runs the same statements on the same connections.
    evaluate_all(&journal, "grown");
    // Its sessions' table counters are complete once they have ended (other tests'
    // sessions are in other databases of the same server).
    drop(journal);
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while outside(
        url,
        "SELECT count(*) FROM pg_stat_activity
         WHERE application_name = 'freshet' AND datname = current_database()",
    ) != ["0"]
    {
        assert!(
            std::time::Instant::now() < deadline,
            "the journal's sessions did not end"
        );
        std::thread::yield_now();
    }
    let read: i64 = outside(
        url,
        "SELECT COALESCE(sum(seq_tup_read), 0) FROM pg_stat_user_tables
         WHERE schemaname = 'freshet' AND relname IN ('events', 'jobs')",
    )[0]
    .parse()
    .unwrap();
    assert!(
        read < FILLED as i64,
        "{read} rows read by whole-table scans after the journal grew to {FILLED} events"
    );
}

/// The lease of one of `job`s as the database has it, read outside freshet.
fn lease_until(url: &str, job: &Job) -> String {
    outside(
        url,
        &format!("SELECT lease_until FROM freshet.jobs WHERE id = {}", job.id),
    )
    .pop()
    .unwrap()
}

/// Polls the lease of `job` until it moves on from `before`, for at most `limit`.
fn lease_renewed(url: &str, job: &Job, before: &str, limit: Duration) -> bool {
    let deadline = std::time::Instant::now() + limit;
    while std::time::Instant::now() < deadline {
        if lease_until(url, job) != before {
            return true;
        }
        std::thread::yield_now();
    }
    false
}

/// The renewer neither waits for a held job's row that another transaction has locked
/// nor gives that lease up: waiting, it kept the rows it had renewed locked, and a
/// finishing evaluation that locked them in another order deadlocked with it.
#[test]
#[cfg_attr(
    not(freshet_postgres_tests),
    ignore = "needs PostgreSQL: build with FRESHET_TEST_DATABASE_URL set (source .ci/postgres.sh)"
)]
fn renewals_pass_a_locked_row_by_and_keep_its_lease() {
    let (_store, url) = postgres_store();
    let url = &url;
    // A lease of 3 s: renewed every 500 ms.
    let journal = PostgresJournal::open(url, DEFAULT_SCHEMA, 3, Pooler::None, Role::Serve).unwrap();
    for id in ["dbt:x", "dbt:y"] {
        journal
            .append(&event(id), FirstJob::EVALUATE)
            .wait()
            .unwrap();
    }
    let claimed = journal.claim(Queue::Evaluate, 2, 60_000).unwrap();
    let [x, y] = <[Job; 2]>::try_from(claimed).unwrap();
    // Another session locks y and keeps its transaction open.
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let (mut client, connection) = runtime
        .block_on(tokio_postgres::connect(url, tokio_postgres::NoTls))
        .unwrap();
    runtime.spawn(connection);
    let tx = runtime.block_on(client.transaction()).unwrap();
    runtime
        .block_on(tx.batch_execute(&format!(
            "SET LOCAL lock_timeout = '2s';
             SELECT id FROM freshet.jobs WHERE id = {} FOR UPDATE",
            y.id
        )))
        .unwrap();
    // While y is locked, x is renewed (the renewal committed)...
    let before = lease_until(url, &x);
    assert!(
        lease_renewed(url, &x, &before, Duration::from_secs(5)),
        "no renewal committed while another transaction held one of the rows"
    );
    // ...and holds no lock on it: the other session may update it.
    runtime
        .block_on(tx.batch_execute(&format!(
            "UPDATE freshet.jobs SET payload = payload WHERE id = {}",
            x.id
        )))
        .expect("the renewer keeps no lock on the rows it renewed");
    runtime.block_on(tx.commit()).unwrap();
    // y was kept: renewed once the lock is gone.
    let before = lease_until(url, &y);
    assert!(
        lease_renewed(url, &y, &before, Duration::from_secs(5)),
        "the lease of the row that was locked was given up"
    );
    assert!(journal.lease_held(&y));
}

/// docs/behaviour.md section 12 (intake on PostgreSQL): an event's evaluate job is written
/// leased to the instance that journaled it, which takes it (and its event) without a
/// claim; another instance cannot take it while that lease is held, and takes it over,
/// as a claimed job, once the lease has run out with its instance gone.
#[test]
#[cfg_attr(
    not(freshet_postgres_tests),
    ignore = "needs PostgreSQL: build with FRESHET_TEST_DATABASE_URL set (source .ci/postgres.sh)"
)]
fn intake_leases_each_evaluation_to_its_own_instance() {
    let (store, url) = postgres_store();
    let a = store.open();
    let b = store.open();
    for id in ["dbt:mine", "dbt:orphan"] {
        a.append(&event(id), FirstJob::EVALUATE).wait().unwrap();
    }
    let rows = outside(
        &url,
        "SELECT status || ' ' || attempt || ' ' || locked_by FROM freshet.jobs ORDER BY id",
    );
    let leased = format!("running 1 {}", a.instance().unwrap());
    assert_eq!(rows, [leased.clone(), leased]);
    assert!(
        b.claim(Queue::Evaluate, 64, 60_000).unwrap().is_empty(),
        "another instance took a held evaluation"
    );
    let mine = a.claim(Queue::Evaluate, 1, 60_000).unwrap();
    assert_eq!(mine.len(), 1);
    assert_eq!(
        (mine[0].event_id.as_str(), mine[0].attempt),
        ("dbt:mine", 1)
    );
    let read = a.events_to_evaluate(&["dbt:mine"]);
    assert_eq!(read[0].as_ref().unwrap().as_ref().unwrap().id, "dbt:mine");
    assert_eq!(
        a.finish_evaluations(&[(mine[0].clone(), Evaluation::default())])
            .unwrap(),
        vec![true]
    );
    assert_eq!(
        outside(
            &url,
            "SELECT status FROM freshet.events WHERE id = 'dbt:mine'"
        ),
        ["evaluated"]
    );
    // a dies holding the other one; once its lease has run out (set here, rather than
    // waited for), b takes it over as it takes over any claimed job.
    drop(a);
    outside(
        &url,
        "UPDATE freshet.jobs SET lease_until = 0 WHERE event_id = 'dbt:orphan'",
    );
    let taken = b.claim(Queue::Evaluate, 64, 60_000).unwrap();
    assert_eq!(taken.len(), 1);
    assert_eq!(
        (taken[0].event_id.as_str(), taken[0].attempt),
        ("dbt:orphan", 2)
    );
    let errors = outside(
        &url,
        "SELECT last_error FROM freshet.jobs WHERE event_id = 'dbt:orphan'",
    );
    assert!(errors[0].contains("lost its lease"), "{errors:?}");
}

/// The hand-off is bounded: past `HANDOFF_CAP` evaluations waiting in an instance, intake
/// writes the job waiting, for any instance to claim, so an instance that dies leaves at
/// most that many events for its lease to run out.
#[test]
#[cfg_attr(
    not(freshet_postgres_tests),
    ignore = "needs PostgreSQL: build with FRESHET_TEST_DATABASE_URL set (source .ci/postgres.sh)"
)]
fn past_its_cap_intake_leaves_evaluations_for_any_instance() {
    let cap = super::handoff::HANDOFF_CAP;
    let (store, url) = postgres_store();
    let a = store.open();
    let b = store.open();
    let tickets: Vec<_> = (0..cap + 40)
        .map(|i| a.append(&event(&format!("dbt:many{i}")), FirstJob::EVALUATE))
        .collect();
    for ticket in tickets {
        ticket.wait().unwrap();
    }
    let counts = outside(
        &url,
        "SELECT status || ' ' || count(*) FROM freshet.jobs GROUP BY status ORDER BY status",
    );
    assert_eq!(counts, ["pending 40".to_string(), format!("running {cap}")]);
    assert_eq!(b.claim(Queue::Evaluate, 64, 60_000).unwrap().len(), 40);
    // a's own batches: the handed jobs, and a claim beside them that finds nothing now.
    let mut taken = 0;
    loop {
        let batch = a.claim(Queue::Evaluate, 64, 60_000).unwrap();
        if batch.is_empty() {
            break;
        }
        assert!(batch.iter().all(|job| job.attempt == 1));
        taken += batch.len();
    }
    assert_eq!(taken, cap);
}

/// At a stop, the evaluations intake leased to the stopping instance that its evaluate
/// stage never took are given back, so another instance (or the next start) evaluates
/// them at once instead of after the lease; one already taken is not.
#[test]
#[cfg_attr(
    not(freshet_postgres_tests),
    ignore = "needs PostgreSQL: build with FRESHET_TEST_DATABASE_URL set (source .ci/postgres.sh)"
)]
fn a_stop_gives_back_the_evaluations_not_started() {
    let (store, url) = postgres_store();
    let a = store.open();
    let b = store.open();
    for id in ["dbt:taken", "dbt:left1", "dbt:left2"] {
        a.append(&event(id), FirstJob::EVALUATE).wait().unwrap();
    }
    let taken = a.claim(Queue::Evaluate, 1, 60_000).unwrap();
    assert_eq!(taken[0].event_id, "dbt:taken");
    assert_eq!(a.release_unstarted().unwrap(), 2);
    assert_eq!(
        outside(
            &url,
            "SELECT status || ' ' || attempt || ' ' || coalesce(locked_by, '-') FROM freshet.jobs WHERE event_id LIKE 'dbt:left%'",
        ),
        ["pending 0 -", "pending 0 -"]
    );
    let claimed = b.claim(Queue::Evaluate, 64, 60_000).unwrap();
    let ids: Vec<&str> = claimed.iter().map(|job| job.event_id.as_str()).collect();
    assert_eq!(ids, ["dbt:left1", "dbt:left2"]);
    assert!(claimed.iter().all(|job| job.attempt == 1));
    // The one a took stays a's, and a can still end it.
    assert_eq!(
        a.finish_evaluations(&[(taken[0].clone(), Evaluation::default())])
            .unwrap(),
        vec![true]
    );
}
