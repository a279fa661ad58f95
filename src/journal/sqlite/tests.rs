//! The SQLite journal against real files in a temp dir.

use super::*;
use std::path::PathBuf;

use crate::event::Source;
use crate::journal::{Appended, FirstJob, FollowUp, NewJob, Released, Replay};
use serde_json::json;

fn event(id: &str) -> Event {
    Event {
        id: id.into(),
        source: Source::Dbt,
        kind: "dbt.job.run.completed".into(),
        received_at: "2026-01-01T00:00:00.000Z".into(),
        chain_depth: 0,
        fields: Default::default(),
        raw: json!({}),
    }
}

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

fn action(event_id: &str, key: &str, coalesce: Option<&str>) -> NewJob {
    NewJob {
        queue: Queue::Action,
        kind: "tableau_refresh".into(),
        event_id: event_id.into(),
        rule: Some("r".into()),
        job_key: key.into(),
        coalesce_key: coalesce.map(String::from),
        payload: json!({"workbook": "Finance"}),
        max_attempts: 2,
    }
}

#[test]
fn duplicate_ids_insert_nothing() {
    let (_dir, journal) = open();
    assert_eq!(
        journal
            .append(&event("dbt:a"), FirstJob::EVALUATE)
            .wait()
            .unwrap(),
        Appended::New
    );
    assert_eq!(
        journal
            .append(&event("dbt:a"), FirstJob::EVALUATE)
            .wait()
            .unwrap(),
        Appended::Duplicate
    );
    let jobs = journal.claim(Queue::Evaluate, 10, 60_000).unwrap();
    assert_eq!(jobs.len(), 1);
    assert!(
        journal
            .claim(Queue::Evaluate, 10, 60_000)
            .unwrap()
            .is_empty(),
        "leased jobs are not claimed twice"
    );
}

#[test]
fn concurrent_appends_are_each_answered_after_their_commit() {
    let (_dir, path) = temp_path();
    let journal = SqliteJournal::open(&path).unwrap();
    // Queued all at once, so that the commit thread takes them in batches; each id is sent
    // twice in a row (most often into the same transaction), and only one may be new.
    let tickets: Vec<_> = (0..300)
        .map(|i| {
            let id = format!("dbt:{}", i / 2);
            (id.clone(), journal.append(&event(&id), FirstJob::EVALUATE))
        })
        .collect();
    // A connection of its own sees only committed rows: an event answered before its
    // commit would be missing here.
    let reader = Connection::open(&path).unwrap();
    let mut new = std::collections::BTreeSet::new();
    for (id, ticket) in tickets {
        if ticket.wait().unwrap() == Appended::New {
            assert!(new.insert(id.clone()), "{id} was new twice");
            let committed: i64 = reader
                .query_row("SELECT COUNT(*) FROM events WHERE id = ?1", [&id], |row| {
                    row.get(0)
                })
                .unwrap();
            assert_eq!(committed, 1, "{id} was answered before its commit");
        }
    }
    drop(journal);
    let reopened = SqliteJournal::open(&path).unwrap();
    let stored = reopened.events(1000, None).unwrap();
    assert_eq!(new.len(), 150);
    assert_eq!(stored.len(), 150);
    assert_eq!(
        reopened.claim(Queue::Evaluate, 1000, 60_000).unwrap().len(),
        150,
        "one evaluate job per new event"
    );
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
fn evaluation_is_recorded_once_and_actions_coalesce() {
    let (_dir, journal) = open();
    journal
        .append(&event("dbt:a"), FirstJob::EVALUATE)
        .wait()
        .unwrap();
    let job = journal.claim(Queue::Evaluate, 1, 60_000).unwrap().remove(0);
    let evaluation = Evaluation {
        rule_runs: vec![RuleRun {
            rule: "r".into(),
            outcome: "fired".into(),
            actions: 2,
            error: None,
        }],
        jobs: vec![
            action("dbt:a", "k1", Some("c")),
            action("dbt:a", "k2", Some("c")),
        ],
        alerts: vec![],
        alert_max_attempts: 2,
    };
    assert!(
        journal
            .finish_evaluations(&[(job.clone(), evaluation.clone())])
            .unwrap()[0]
    );
    assert!(
        !journal
            .finish_evaluations(&[(job.clone(), evaluation.clone())])
            .unwrap()[0],
        "a finished lease cannot finish again"
    );
    let jobs = journal.jobs(None, 10).unwrap();
    assert_eq!(jobs.len(), 1, "identical pending calls merge");
    let summary = &journal.events(10, None).unwrap()[0];
    assert_eq!(summary.status, "evaluated");
    assert_eq!(summary.rules[0].rule, "r");
}

#[test]
fn retries_then_dead_then_manual_retry() {
    let (_dir, journal) = open();
    journal
        .append(&event("dbt:a"), FirstJob::EVALUATE)
        .wait()
        .unwrap();
    let eval = journal.claim(Queue::Evaluate, 1, 60_000).unwrap().remove(0);
    let evaluation = Evaluation {
        jobs: vec![action("dbt:a", "k1", None)],
        ..Default::default()
    };
    journal.finish_evaluations(&[(eval, evaluation)]).unwrap();
    let job = journal.claim(Queue::Action, 1, 60_000).unwrap().remove(0);
    let retry = JobOutcome::Retry {
        delay_ms: 0,
        error: "HTTP 500".into(),
    };
    assert_eq!(
        journal
            .finish(&job, &retry, &FollowUp::default())
            .unwrap()
            .as_deref(),
        Some("retrying")
    );
    let job = journal.claim(Queue::Action, 1, 60_000).unwrap().remove(0);
    assert_eq!(job.attempt, 2);
    let mut failure = event("freshet:action.failed:1");
    failure.source = Source::Freshet;
    assert_eq!(
        journal
            .finish(
                &job,
                &retry,
                &FollowUp {
                    event: Some(failure),
                    job: None,
                },
            )
            .unwrap()
            .as_deref(),
        Some("dead")
    );
    assert!(
        journal.event("freshet:action.failed:1").unwrap().is_some(),
        "dead jobs emit their event"
    );
    assert_eq!(journal.jobs(Some("dead"), 10).unwrap().len(), 1);
    journal.retry(job.id).unwrap();
    let again = journal.claim(Queue::Action, 1, 60_000).unwrap().remove(0);
    assert_eq!(again.attempt, 3);
    assert_eq!(
        journal
            .finish(&again, &JobOutcome::Succeeded(None), &FollowUp::default())
            .unwrap()
            .as_deref(),
        Some("succeeded")
    );
    assert!(
        journal.retry(job.id).is_err(),
        "only dead jobs can be retried"
    );
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

/// A job that stops the process every time it runs (SPEC section 11, poison events):
/// each interrupted attempt counts, so it ends dead; the other event claimed with it the
/// first time is still evaluated, and no attempt of its is spent after that.
#[test]
fn a_job_that_keeps_stopping_the_process_ends_dead_and_holds_nothing_back() {
    let (_dir, path) = temp_path();
    for id in ["dbt:poison", "dbt:innocent", "dbt:later"] {
        let journal = SqliteJournal::open(&path).unwrap();
        journal
            .append(&event(id), FirstJob::EVALUATE)
            .wait()
            .unwrap();
        if id == "dbt:innocent" {
            // Both claimed in one batch; then the process dies.
            assert_eq!(
                journal.claim(Queue::Evaluate, 16, 600_000).unwrap().len(),
                2
            );
        }
    }
    let mut evaluated = Vec::new();
    let mut restarts = 0;
    loop {
        let journal = SqliteJournal::open(&path).unwrap();
        let released = journal.release_running().unwrap();
        if released.dead == 1 {
            break;
        }
        restarts += 1;
        assert!(restarts <= 5, "the poison job never ended");
        // Evaluate until the poison job is claimed, then "crash" (drop without finishing).
        loop {
            let batch = journal.claim(Queue::Evaluate, 16, 600_000).unwrap();
            assert!(!batch.is_empty(), "the poison job is always claimed again");
            if batch.iter().any(|job| job.event_id == "dbt:poison") {
                assert_eq!(batch.len(), 1, "a job tried before is claimed alone");
                break;
            }
            for job in batch {
                evaluated.push(job.event_id.clone());
                journal
                    .finish_evaluations(&[(job, Evaluation::default())])
                    .unwrap();
            }
        }
    }
    assert_eq!(restarts, 4, "5 attempts: the first batch and 4 restarts");
    let journal = SqliteJournal::open(&path).unwrap();
    let innocent = journal.events(10, None).unwrap();
    assert!(
        innocent
            .iter()
            .filter(|e| e.id != "dbt:poison")
            .all(|e| e.status == "evaluated"),
        "{innocent:?}"
    );
    drop(journal);
    let journal = SqliteJournal::open(&path).unwrap();
    let dead = journal.jobs(Some("dead"), 10).unwrap();
    assert_eq!(dead.len(), 1, "{dead:?}");
    assert_eq!(dead[0].event_id, "dbt:poison");
    assert_eq!((dead[0].attempt, dead[0].max_attempts), (5, 5));
    assert!(dead[0]
        .last_error
        .as_deref()
        .unwrap()
        .starts_with("interrupted"));
    // The event claimed with it, and the one that came later, were each evaluated once.
    evaluated.sort();
    assert_eq!(evaluated, vec!["dbt:innocent", "dbt:later"]);
    assert!(journal
        .claim(Queue::Evaluate, 16, 600_000)
        .unwrap()
        .is_empty());
    // Listed and retryable like a dead action.
    journal.retry(dead[0].id).unwrap();
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
    assert_eq!(journal.jobs(Some("dead"), 10).unwrap().len(), 1);
}

/// Event ids may contain `:`; job keys must still never collide (SPEC section 11).
#[test]
fn job_keys_are_unambiguous_whatever_an_id_contains() {
    for order in [
        ["dbt:wev_R:replay1", "dbt:wev_R"],
        ["dbt:wev_R", "dbt:wev_R:replay1"],
    ] {
        let (_dir, journal) = open();
        for id in order {
            journal
                .append(&event(id), FirstJob::EVALUATE)
                .wait()
                .unwrap();
        }
        let first = journal.claim(Queue::Evaluate, 16, 60_000).unwrap();
        assert_eq!(
            first.len(),
            2,
            "{order:?}: both events get their evaluation"
        );
        journal
            .queue_replay(
                "dbt:wev_R",
                &Replay {
                    first: FirstJob::EVALUATE,
                    rule: None,
                },
            )
            .unwrap();
        let replay = journal.claim(Queue::Evaluate, 16, 60_000).unwrap();
        assert_eq!(replay.len(), 1, "{order:?}: the replay is queued");
        assert_eq!(replay[0].event_id, "dbt:wev_R");
    }
}

#[test]
fn prune_keeps_recent_events() {
    let (_dir, journal) = open();
    journal
        .append(&event("dbt:a"), FirstJob::EVALUATE)
        .wait()
        .unwrap();
    assert_eq!(journal.prune(30).unwrap(), 0);
    journal
        .with(|c| Ok(c.execute("UPDATE events SET received_ms = 0", [])?))
        .unwrap();
    assert_eq!(
        journal.prune(30).unwrap(),
        0,
        "an event with an unfinished job stays"
    );
    journal
        .with(|c| Ok(c.execute("UPDATE jobs SET status = 'succeeded'", [])?))
        .unwrap();
    assert_eq!(journal.prune(30).unwrap(), 1);
    assert!(journal.event("dbt:a").unwrap().is_none());
}

#[test]
fn open_job_queries_use_the_open_jobs_index() {
    let (_dir, journal) = open();
    let plan = |sql: &str| -> String {
        journal
            .with(|c| {
                let mut statement = c.prepare(&format!("EXPLAIN QUERY PLAN {sql}"))?;
                // Parameters left unbound are NULL; the plan does not depend on them.
                let mut rows = statement.raw_query();
                let mut lines = Vec::new();
                while let Some(row) = rows.next()? {
                    lines.push(row.get::<_, String>(3)?);
                }
                Ok(lines.join("\n"))
            })
            .unwrap()
    };
    for (name, sql) in [
        ("claim", statements::CLAIM_CANDIDATES_SQL.as_str()),
        ("reap", statements::REAP_SQL.as_str()),
        ("next due", statements::NEXT_DUE_SQL.as_str()),
        ("backlog", statements::BACKLOG_SQL),
    ] {
        let plan = plan(sql);
        assert!(
            plan.contains("USING INDEX jobs_open"),
            "{name} plan:\n{plan}"
        );
        assert!(!plan.contains("TEMP B-TREE"), "{name} sorts:\n{plan}");
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
static BLOCKED_OR_DONE: (Mutex<bool>, std::sync::Condvar) =
    (Mutex::new(false), std::sync::Condvar::new());

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

/// SPEC section 11: `/healthz` reports the last commit's outcome, and sees the journal
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

/// SPEC section 9: one serve per SQLite journal; the second names the holder's pid.
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

/// SPEC section 9: a command never creates a journal.
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
