//! What only the SQLite journal does, against real files in a temp dir (the contract
//! every backend keeps is in `journal/contract.rs`).

use std::path::PathBuf;
use std::sync::atomic::Ordering;

use super::committer::commit_batch;
use super::schema::MIGRATIONS;
use super::*;
use crate::journal::contract::event;
use crate::journal::{
    Admin, Appended, Evaluation, FirstJob, JobStatus, Operations, Queue, Released, Replay,
    StageQueue,
};

/// A journal file's path in a new temp dir (the dir goes when dropped).
fn temp_path() -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("j.db");
    (dir, path)
}

fn open() -> (tempfile::TempDir, SqliteJournal) {
    let (dir, path) = temp_path();
    (dir, SqliteJournal::open(&path).unwrap())
}

/// Journals event `id` (evaluate first) and claims its evaluate job.
fn journal_and_claim(journal: &SqliteJournal, id: &str) -> Job {
    journal
        .append(&event(id), FirstJob::EVALUATE)
        .wait()
        .unwrap();
    let mut jobs = journal.claim(Queue::Evaluate, 1, 600_000).unwrap();
    assert_eq!(jobs.len(), 1);
    jobs.remove(0)
}

/// docs/behaviour.md section 17: a new journal and the folder made for it are its owner's
/// only, whatever the umask; SQLite's -wal file follows the journal's mode.
#[test]
fn a_new_journal_and_its_folder_are_private() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("state/freshet/journal.db");
    let journal = SqliteJournal::open(&path).unwrap();
    journal
        .append(&event("dbt:private"), FirstJob::EVALUATE)
        .wait()
        .unwrap();
    let mode = |p: &std::path::Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&path), 0o600);
    assert_eq!(mode(path.parent().unwrap()), 0o700);
    assert_eq!(mode(&dir.path().join("state")), 0o700);
    assert_eq!(mode(&path.with_extension("db-wal")), 0o600);
}

#[test]
fn appends_still_queued_when_the_journal_is_dropped_are_committed() {
    let (_dir, path) = temp_path();
    let journal = SqliteJournal::open(&path).unwrap();
    let tickets: Vec<_> = (0..50)
        .map(|i| journal.append(&event(&format!("dbt:{i}")), FirstJob::EVALUATE))
        .collect();
    drop(journal);
    for ticket in tickets {
        assert_eq!(ticket.wait().unwrap(), Appended::New);
    }
    let reopened = SqliteJournal::open(&path).unwrap();
    assert_eq!(reopened.events(100, None).unwrap().len(), 50);
}

#[test]
fn running_jobs_are_released_at_start() {
    let (_dir, path) = temp_path();
    {
        let journal = SqliteJournal::open(&path).unwrap();
        journal
            .append(&event("dbt:a"), FirstJob::EVALUATE)
            .wait()
            .unwrap();
        assert_eq!(journal.claim(Queue::Evaluate, 1, 600_000).unwrap().len(), 1);
    }
    let journal = SqliteJournal::open(&path).unwrap();
    assert!(journal
        .claim(Queue::Evaluate, 1, 600_000)
        .unwrap()
        .is_empty());
    assert_eq!(
        journal.release_running().unwrap(),
        Released { again: 1, dead: 0 }
    );
    assert_eq!(journal.claim(Queue::Evaluate, 1, 600_000).unwrap().len(), 1);
}

/// An expired lease with no attempts left ends the job instead of running it again.
#[test]
fn an_expired_lease_with_no_attempts_left_is_dead() {
    let (_dir, journal) = open();
    journal
        .append(&event("dbt:a"), FirstJob::EVALUATE)
        .wait()
        .unwrap();
    journal
        .with(|c| Ok(c.execute("UPDATE jobs SET max_attempts = 1", [])?))
        .unwrap();
    assert_eq!(journal.claim(Queue::Evaluate, 1, 0).unwrap().len(), 1);
    std::thread::sleep(std::time::Duration::from_millis(5));
    assert!(journal
        .claim(Queue::Evaluate, 1, 60_000)
        .unwrap()
        .is_empty());
    assert_eq!(journal.jobs(Some(JobStatus::Dead), 10).unwrap().len(), 1);
}

#[test]
fn prune_keeps_recent_events() {
    let (_dir, journal) = open();
    journal
        .append(&event("dbt:a"), FirstJob::EVALUATE)
        .wait()
        .unwrap();
    assert_eq!(journal.prune(30, &|| true).unwrap(), 0);
    journal
        .with(|c| Ok(c.execute("UPDATE events SET received_ms = 0", [])?))
        .unwrap();
    assert_eq!(
        journal.prune(30, &|| true).unwrap(),
        0,
        "an event with an unfinished job stays"
    );
    journal
        .with(|c| Ok(c.execute("UPDATE jobs SET status = 'succeeded'", [])?))
        .unwrap();
    assert_eq!(journal.prune(30, &|| true).unwrap(), 1);
    assert!(journal.event("dbt:a").unwrap().is_none());
}

/// docs/behaviour.md section 12 (retention at volume): pruning deletes a batch of events
/// per transaction until none is left (or freshet stops), and never an event whose jobs
/// are not finished.
#[test]
fn pruning_goes_in_batches_and_keeps_events_with_open_jobs() {
    let (_dir, journal) = open();
    for i in 0..7 {
        let job = journal_and_claim(&journal, &format!("dbt:old{i}"));
        journal
            .finish_evaluations(&[(job, Evaluation::default())])
            .unwrap();
    }
    journal
        .append(&event("dbt:open"), FirstJob::EVALUATE)
        .wait()
        .unwrap();
    // Stopping: the batch under way ends, and no other begins.
    assert_eq!(journal.prune_in_batches(0, 3, &|| false).unwrap(), 3);
    assert_eq!(journal.prune_in_batches(0, 3, &|| true).unwrap(), 4);
    assert!(journal.event("dbt:old6").unwrap().is_none());
    assert!(journal.event("dbt:open").unwrap().is_some());
    assert_eq!(journal.prune_in_batches(0, 3, &|| true).unwrap(), 0);
}

/// Column `column` of each row `{explain} {sql}` answers on the writing connection
/// (`EXPLAIN QUERY PLAN`: the plan's lines; `EXPLAIN`: the program's opcodes).
/// Parameters left unbound are NULL; neither the plan nor the program depends on them.
fn explained(journal: &SqliteJournal, explain: &str, sql: &str, column: usize) -> Vec<String> {
    journal
        .with(|c| {
            let mut statement = c.prepare(&format!("{explain} {sql}"))?;
            let mut rows = statement.raw_query();
            let mut lines = Vec::new();
            while let Some(row) = rows.next()? {
                lines.push(row.get::<_, String>(column)?);
            }
            Ok(lines)
        })
        .unwrap()
}

#[test]
fn open_job_queries_use_the_open_jobs_index() {
    let (_dir, journal) = open();
    let plan = |sql: &str| explained(&journal, "EXPLAIN QUERY PLAN", sql, 3).join("\n");
    for (name, sql) in [
        ("claim", sql::CLAIM_CANDIDATES_SQL.as_str()),
        ("next due", sql::NEXT_DUE_SQL.as_str()),
        ("backlog", sql::BACKLOG_SQL),
    ] {
        let plan = plan(sql);
        assert!(
            plan.contains("USING INDEX jobs_open"),
            "{name} plan:\n{plan}"
        );
        assert!(!plan.contains("TEMP B-TREE"), "{name} sorts:\n{plan}");
    }
    // Leases: only the running jobs, however many wait.
    for (name, sql) in [
        ("reap", sql::REAP_SQL.as_str()),
        ("next due", sql::NEXT_DUE_SQL.as_str()),
    ] {
        let plan = plan(sql);
        assert!(plan.contains("INDEX jobs_running"), "{name} plan:\n{plan}");
    }
    // Leasing the chosen jobs: by rowid, never a scan of the table.
    let plan_lease = plan(&sql::CLAIM_SQL);
    assert!(
        plan_lease.contains("USING INTEGER PRIMARY KEY") && !plan_lease.contains("SCAN jobs"),
        "lease plan:\n{plan_lease}"
    );
    // Recording a batch of evaluations: jobs by rowid, events by their key.
    let plan_end = plan(&sql::END_EVALUATIONS_SQL);
    assert!(
        plan_end.contains("USING INTEGER PRIMARY KEY") && !plan_end.contains("SCAN jobs"),
        "end plan:\n{plan_end}"
    );
    let plan_mark = plan(sql::MARK_EVALUATED_SQL);
    assert!(
        plan_mark.contains("sqlite_autoindex_events_1") && !plan_mark.contains("SCAN events"),
        "mark plan:\n{plan_mark}"
    );
}

/// The console's reads of jobs go through indexes intake never writes; through the whole
/// table they read every evaluate job (one per event) on a page load.
#[test]
fn the_consoles_job_reads_use_their_indexes() {
    let (_dir, journal) = open();
    let plan = |sql: &str| explained(&journal, "EXPLAIN QUERY PLAN", sql, 3).join("\n");
    for status in [JobStatus::Dead, JobStatus::Retrying, JobStatus::Succeeded] {
        let listed = plan(&crate::journal::common::listed_jobs_of(status));
        assert!(
            listed.contains("INDEX jobs_listed"),
            "listed plan:\n{listed}"
        );
        assert!(!listed.contains("TEMP B-TREE"), "listed sorts:\n{listed}");
    }
    let actions = plan(&crate::journal::common::OVERVIEW_JOBS);
    assert!(
        actions.contains("INDEX jobs_action_created"),
        "actions plan:\n{actions}"
    );
    let waiting = plan(&crate::journal::common::OVERVIEW_WAITING);
    assert!(
        waiting.contains("INDEX jobs_open") && waiting.contains("INDEX jobs_listed"),
        "waiting plan:\n{waiting}"
    );
    assert!(!waiting.contains("SCAN jobs"), "waiting plan:\n{waiting}");
    let filter = crate::journal::EventFilter {
        status: Some("received".into()),
        source: Some("dbt".into()),
        ..Default::default()
    };
    let cursor = crate::journal::EventCursor {
        received_ms: 1,
        id: "dbt:a".into(),
    };
    let (sql, _) =
        crate::journal::common::events_page_sql(&filter, Some(&cursor), 50, |n| format!("?{n}"));
    let received = plan(&sql);
    assert!(
        received.contains("INDEX jobs_open") && received.contains("INDEX jobs_listed"),
        "received page plan:\n{received}"
    );
    assert!(
        !received.contains("SCAN e ") && !received.contains("SCAN events"),
        "received page plan:\n{received}"
    );
}

/// Inserting a job and ending one check each partial index's condition for the row; an
/// `IN` list of three values there was a temporary B-tree built and dropped per row
/// (migration 6). Plain comparisons now: no `OpenEphemeral` in either program.
#[test]
fn writing_a_job_builds_no_temporary_table() {
    let (_dir, journal) = open();
    for (name, sql) in [
        ("insert job", sql::INSERT_JOB_SQL.as_str()),
        ("end job", sql::END_JOB_SQL.as_str()),
    ] {
        let program = explained(&journal, "EXPLAIN", sql, 1);
        assert!(program.iter().any(|op| op == "Halt"), "{name}: {program:?}");
        assert!(
            !program.iter().any(|op| op == "OpenEphemeral"),
            "{name} builds a temporary table: {program:?}"
        );
    }
}

#[test]
fn a_journal_of_the_first_schema_is_migrated() {
    let (_dir, path) = temp_path();
    {
        let conn = Connection::open(&path).unwrap();
        conn.execute_batch(&format!(
            "BEGIN; {}; PRAGMA user_version = 1; COMMIT;",
            MIGRATIONS[0]
        ))
        .unwrap();
        conn.execute_batch(
            "INSERT INTO events (id, source, type, received_at, received_ms, status, body)
             VALUES ('dbt:old', 'dbt', 'dbt.job.run.completed', 't', 0, 'received', '{}');
             INSERT INTO jobs (queue, kind, event_id, job_key, payload, status, max_attempts,
                               scheduled_at, created_at)
             VALUES ('evaluate', 'evaluate', 'dbt:old', 'evaluate:dbt:old', 'null', 'pending', 1, 0, 0);",
        )
        .unwrap();
    }
    let journal = SqliteJournal::open(&path).unwrap();
    let version: usize = journal
        .with(|c| Ok(c.query_row("PRAGMA user_version", [], |row| row.get(0))?))
        .unwrap();
    assert_eq!(version, MIGRATIONS.len());
    let claimed = journal.claim(Queue::Evaluate, 10, 60_000).unwrap();
    assert_eq!(
        claimed.len(),
        1,
        "the old journal's pending job is still claimed"
    );
    assert_eq!(claimed[0].event_id, "dbt:old");
}

/// Set when the journal's connection first waits for a lock, or its write has ended.
static BLOCKED_OR_DONE: (std::sync::Mutex<bool>, std::sync::Condvar) =
    (std::sync::Mutex::new(false), std::sync::Condvar::new());

fn set_blocked_or_done() {
    *BLOCKED_OR_DONE.0.lock().unwrap() = true;
    BLOCKED_OR_DONE.1.notify_all();
}

/// A busy handler that records the wait (so the test knows the write is blocked) and
/// keeps waiting, like `busy_timeout`, for up to about 10 s.
fn note_busy(attempt: i32) -> bool {
    set_blocked_or_done();
    std::thread::sleep(Duration::from_millis(1));
    attempt < 10_000
}

/// `freshet replay` and the daemon write the same file from two processes. A write
/// transaction that has to wait for the other process must carry on after its commit,
/// not fail: SQLite does not wait out a read snapshot that went stale before the write
/// (SQLITE_BUSY_SNAPSHOT), so the journal's write transactions take the lock first.
#[test]
fn a_write_that_waits_for_another_process_carries_on_after_its_commit() {
    let (_dir, path) = temp_path();
    let journal = SqliteJournal::open(&path).unwrap();
    journal
        .append(&event("dbt:a"), FirstJob::EVALUATE)
        .wait()
        .unwrap();
    let other = Connection::open(&path).unwrap();
    other
        .execute_batch("BEGIN IMMEDIATE; UPDATE events SET received_at = received_at;")
        .unwrap();
    lock(&journal.conn).busy_handler(Some(note_busy)).unwrap();
    let replay = std::thread::scope(|scope| {
        let replay = scope.spawn(|| {
            let result = journal.queue_replay(
                "dbt:a",
                &Replay {
                    first: FirstJob::EVALUATE,
                    rule: None,
                },
            );
            // SQLite may also fail the write at once, without waiting.
            set_blocked_or_done();
            result
        });
        let mut flag = BLOCKED_OR_DONE.0.lock().unwrap();
        while !*flag {
            flag = BLOCKED_OR_DONE.1.wait(flag).unwrap();
        }
        drop(flag);
        other.execute_batch("COMMIT").unwrap();
        replay.join().unwrap()
    });
    replay.expect("the replay waits for the other process and then commits");
    assert_eq!(journal.claim(Queue::Evaluate, 10, 60_000).unwrap().len(), 2);
}

/// A journal written by a newer freshet is refused, not opened and misread.
#[test]
fn a_journal_of_a_newer_schema_is_refused() {
    let (_dir, path) = temp_path();
    drop(SqliteJournal::open(&path).unwrap());
    Connection::open(&path)
        .unwrap()
        .pragma_update(None, "user_version", MIGRATIONS.len() + 1)
        .unwrap();
    let error = SqliteJournal::open(&path).err().expect("refused");
    assert!(
        error.to_string().contains("newer than this freshet knows"),
        "{error}"
    );
}

/// docs/behaviour.md section 11: `/healthz` reports the last commit's outcome, and sees the journal
/// recover without waiting for traffic.
#[test]
fn health_follows_the_last_commit_and_its_recovery() {
    let (_dir, journal) = open();
    journal.check_writable().unwrap();
    // A read-only journal (as on a full or remounted disk): every write fails.
    journal
        .with(|c| Ok(c.execute_batch("PRAGMA query_only = ON")?))
        .unwrap();
    assert!(journal
        .append(&event("dbt:a"), FirstJob::EVALUATE)
        .wait()
        .is_err());
    let error = journal.check_writable().unwrap_err().to_string();
    assert!(error.contains("the last commit failed"), "{error}");
    journal
        .with(|c| Ok(c.execute_batch("PRAGMA query_only = OFF")?))
        .unwrap();
    journal.check_writable().unwrap();
    assert_eq!(
        journal
            .append(&event("dbt:a"), FirstJob::EVALUATE)
            .wait()
            .unwrap(),
        Appended::New
    );
}

/// docs/behaviour.md section 9: one serve per SQLite journal; the second names the holder's pid.
#[test]
fn a_second_serve_on_one_journal_is_refused_naming_the_holder() {
    let (_dir, path) = temp_path();
    let first = SqliteJournal::open_for_serve(&path).unwrap();
    let error = SqliteJournal::open_for_serve(&path)
        .err()
        .unwrap()
        .to_string();
    assert!(error.contains(&path.display().to_string()), "{error}");
    assert!(
        error.contains(&format!("(pid {})", std::process::id())),
        "{error}"
    );
    // Commands open it beside the serve.
    SqliteJournal::open_existing(&path).unwrap();
    drop(first);
    SqliteJournal::open_for_serve(&path).unwrap();
}

/// docs/behaviour.md section 9: a command never creates a journal.
#[test]
fn a_command_on_a_missing_journal_creates_nothing() {
    let (_dir, path) = temp_path();
    let error = SqliteJournal::open_existing(&path)
        .err()
        .unwrap()
        .to_string();
    assert!(error.contains("no journal there"), "{error}");
    assert!(!path.exists());
}

#[test]
fn closing_the_journal_checkpoints_the_wal_into_the_file() {
    let (_dir, path) = temp_path();
    let journal = SqliteJournal::open(&path).unwrap();
    journal
        .append(&event("dbt:a"), FirstJob::EVALUATE)
        .wait()
        .unwrap();
    assert!(
        journal.event("dbt:a").unwrap().is_some(),
        "read on the reader"
    );
    drop(journal);
    let wal = path.with_extension("db-wal");
    assert!(!wal.exists(), "{} is left behind", wal.display());
    let conn = Connection::open(&path).unwrap();
    let events: i64 = conn
        .query_row("SELECT COUNT(*) FROM events", [], |row| row.get(0))
        .unwrap();
    assert_eq!(events, 1);
}

/// The writer's `synchronous` level, read on the writing connection itself.
fn writer_synchronous(journal: &SqliteJournal) -> i64 {
    journal
        .with(|conn| Ok(conn.query_row("PRAGMA synchronous", [], |row| row.get(0))?))
        .unwrap()
}

const FULL: i64 = 2;
const NORMAL: i64 = 1;

#[test]
fn only_the_evaluate_stage_writes_without_waiting_for_the_disk() {
    let (_dir, journal) = open();
    assert_eq!(writer_synchronous(&journal), FULL);
    let job = journal_and_claim(&journal, "dbt:a");
    assert_eq!(
        writer_synchronous(&journal),
        NORMAL,
        "evaluate claims defer"
    );
    // Intake's next commit puts FULL back before it writes (its fsync then covers the
    // claim too).
    journal
        .append(&event("dbt:b"), FirstJob::EVALUATE)
        .wait()
        .unwrap();
    assert_eq!(writer_synchronous(&journal), FULL);
    let batch = vec![(job, Evaluation::default())];
    assert_eq!(journal.finish_evaluations(&batch).unwrap(), vec![true]);
    assert_eq!(writer_synchronous(&journal), NORMAL, "finishes defer");
    // Every other write is synced: an action claim, here with nothing to claim.
    journal.claim(Queue::Action, 1, 600_000).unwrap();
    assert_eq!(writer_synchronous(&journal), FULL);
}

#[test]
fn a_synced_write_puts_full_back_whatever_left_the_writer_lower() {
    let (_dir, journal) = open();
    // As if a deferred write had left the writer at NORMAL.
    journal
        .with(|conn| Ok(conn.execute_batch("PRAGMA synchronous = NORMAL")?))
        .unwrap();
    journal.relaxed.store(true, Ordering::Release);
    journal
        .append(&event("dbt:a"), FirstJob::EVALUATE)
        .wait()
        .unwrap();
    assert_eq!(writer_synchronous(&journal), FULL);
    assert!(!journal.relaxed.load(Ordering::Acquire));
}

#[test]
fn the_evaluate_stage_gets_a_fresh_event_from_memory_exactly_as_the_file_holds_it() {
    let (_dir, journal) = open();
    let mut fresh = event("dbt:fresh");
    fresh
        .fields
        .insert("runId".into(), serde_json::json!(70403103));
    fresh.raw = serde_json::json!({"eventId": "fresh", "data": {"runStatus": "Success", "n": 1.5}});
    journal
        .append_shared(Arc::new(fresh.clone()), FirstJob::EVALUATE)
        .wait()
        .unwrap();
    assert_eq!(journal.recent.lock().len(), 1);
    let from_memory = journal.event_to_evaluate("dbt:fresh").unwrap().unwrap();
    assert_eq!(journal.recent.lock().len(), 0, "taken");
    let from_file = journal.event("dbt:fresh").unwrap().unwrap();
    assert_eq!(*from_memory, from_file);
    assert_eq!(*from_memory, fresh);
    // Read again (a replay, a lost lease): from the file.
    assert_eq!(
        *journal.event_to_evaluate("dbt:fresh").unwrap().unwrap(),
        from_file
    );
}

#[test]
fn only_unchanged_evaluate_first_events_are_kept_in_memory() {
    let (_dir, journal) = open();
    // A duplicate is not kept: the file holds the first one.
    journal
        .append(&event("dbt:dup"), FirstJob::EVALUATE)
        .wait()
        .unwrap();
    let mut second = event("dbt:dup");
    second.kind = "dbt.job.run.errored".into();
    assert_eq!(
        journal
            .append_shared(Arc::new(second), FirstJob::EVALUATE)
            .wait()
            .unwrap(),
        Appended::Duplicate
    );
    // An event enriched first is rewritten before it is evaluated: never kept.
    journal
        .append_shared(Arc::new(event("mode:run")), FirstJob::enrich(3))
        .wait()
        .unwrap();
    assert_eq!(journal.recent.lock().len(), 0);
    assert_eq!(
        journal.event_to_evaluate("dbt:dup").unwrap().unwrap().kind,
        "dbt.job.run.completed"
    );
    // Enrichment drops a kept copy in any case.
    journal
        .append_shared(Arc::new(event("dbt:kept")), FirstJob::EVALUATE)
        .wait()
        .unwrap();
    assert_eq!(journal.recent.lock().len(), 1);
    let mut enriched = event("dbt:kept");
    enriched.kind = "changed".into();
    let enrich_job = Job {
        id: 0,
        queue: Queue::Enrich,
        kind: "mode_run".into(),
        event_id: "dbt:kept".into(),
        rule: None,
        payload: serde_json::Value::Null,
        attempt: 1,
        max_attempts: 3,
        interrupted: None,
    };
    journal.finish_enrichment(&enrich_job, &enriched).unwrap();
    assert_eq!(journal.recent.lock().len(), 0);
}

/// One batch of the commit thread ([`commit_batch`]), run directly so that an append and
/// an evaluation are sure to share a transaction: `event_id`'s append, and `batch`'s
/// evaluations with a claim of up to 10 evaluate jobs.
fn commit_together(
    journal: &SqliteJournal,
    event_id: &str,
    batch: Vec<(Job, Evaluation)>,
) -> (Vec<Appended>, Vec<EvaluationsOutcome>) {
    let (reply, _ticket) = AppendTicket::new();
    let append = PendingAppend {
        event: EventRow::new(&event(event_id)).unwrap(),
        first_job: FirstJob::EVALUATE,
        keep: None,
        reply,
    };
    let (reply, _answer) = mpsc::sync_channel(1);
    let evaluations = PendingEvaluations {
        batch,
        claim: 10,
        lease_ms: 600_000,
        reply,
    };
    journal
        .with(|conn| {
            commit_batch(
                conn,
                &journal.relaxed,
                &journal.watch,
                &[append],
                &[evaluations],
            )
        })
        .unwrap()
}

#[test]
fn evaluations_committed_with_appends_are_synced_and_claim_the_new_events() {
    let (_dir, journal) = open();
    let job = journal_and_claim(&journal, "dbt:a");
    assert_eq!(writer_synchronous(&journal), NORMAL);
    let (appended, evaluated) =
        commit_together(&journal, "dbt:b", vec![(job, Evaluation::default())]);
    assert_eq!(appended, vec![Appended::New]);
    let (recorded, claimed) = evaluated.into_iter().next().unwrap().unwrap();
    assert_eq!(recorded, vec![true]);
    // The claim comes after the append: the event appended with it is claimed at once.
    let claimed: Vec<_> = claimed.iter().map(|job| job.event_id.as_str()).collect();
    assert_eq!(claimed, vec!["dbt:b"]);
    // An append in the batch makes the whole commit a synced one.
    assert_eq!(writer_synchronous(&journal), FULL);
    assert_eq!(event_status(&journal, "dbt:a"), "evaluated");
}

#[test]
fn an_evaluation_the_journal_refuses_does_not_fail_the_appends_committed_with_it() {
    let (_dir, path) = temp_path();
    let journal = SqliteJournal::open(&path).unwrap();
    let job = journal_and_claim(&journal, "dbt:a");
    // From now on the journal refuses to mark any event evaluated.
    rusqlite::Connection::open(&path)
        .unwrap()
        .execute_batch(
            "CREATE TRIGGER refuse BEFORE UPDATE OF status ON events
             BEGIN SELECT RAISE(ABORT, 'refused by the test'); END;",
        )
        .unwrap();
    let (appended, evaluated) =
        commit_together(&journal, "dbt:b", vec![(job, Evaluation::default())]);
    assert_eq!(appended, vec![Appended::New]);
    let error = evaluated.into_iter().next().unwrap().unwrap_err();
    assert!(error.to_string().contains("refused by the test"), "{error}");
    // The append is committed; the evaluation left nothing behind (its job still runs).
    assert_eq!(event_status(&journal, "dbt:b"), "received");
    assert_eq!(event_status(&journal, "dbt:a"), "received");
    let open: i64 = journal
        .with(|conn| {
            Ok(conn.query_row(
                "SELECT COUNT(*) FROM jobs WHERE event_id = 'dbt:a' AND status = 'running'",
                [],
                |row| row.get(0),
            )?)
        })
        .unwrap();
    assert_eq!(open, 1);
}

fn event_status(journal: &SqliteJournal, id: &str) -> String {
    let events = journal.events(100, None).unwrap();
    let event = events.iter().find(|e| e.id == id).expect("journaled");
    event.status.clone()
}
