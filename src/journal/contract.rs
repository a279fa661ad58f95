//! The journal's contract: tests every backend passes, unchanged (docs/behaviour.md section 10).
//! Each runs on SQLite (a temp file) and on PostgreSQL (a fresh database on the server named
//! by `FRESHET_TEST_DATABASE_URL`; without it when the tests are built, the PostgreSQL runs
//! are listed as ignored, see build.rs).
//!
//! "A process stops" differs by backend and is the one thing a test asks the store to do
//! for it ([`TestStore::crash`]): SQLite releases the running jobs at the next start,
//! PostgreSQL leaves them until their lease runs out and another instance claims them.

use std::sync::Arc;
use std::time::Duration;

use serde_json::json;

use super::EventFilter;
use super::{
    ActionOrigin, AlertCall, AlertJob, AlertState, AlertTransition, Appended, ClockJudgement,
    Evaluation, FirstJob, FollowUp, Job, JobOutcome, JobStatus, Journal, NewJob, PostgresJournal,
    Queue, Replay, Retried, RuleOutcome, RuleRun, SqliteJournal,
};
use crate::event::{Event, Source};

/// The PostgreSQL lease in these tests: short, so a "dead" instance's jobs are taken over
/// quickly.
const TEST_LEASE_SECONDS: u64 = 1;

/// One store for one test: a new SQLite file, or a new PostgreSQL database.
pub enum TestStore {
    Sqlite(tempfile::TempDir),
    Postgres(String),
}

impl TestStore {
    pub fn sqlite() -> TestStore {
        TestStore::Sqlite(tempfile::tempdir().unwrap())
    }

    /// A fresh database on the test server. The tests that call it are ignored unless
    /// `FRESHET_TEST_DATABASE_URL` was set when they were built (build.rs), so here it
    /// must be set.
    pub fn postgres() -> TestStore {
        let url = std::env::var("FRESHET_TEST_DATABASE_URL").expect(
            "FRESHET_TEST_DATABASE_URL was set when the tests were built: set it again (source .ci/postgres.sh)",
        );
        TestStore::Postgres(fresh_database(&url))
    }

    /// Another fresh store of the same kind.
    pub fn another(&self) -> TestStore {
        match self {
            TestStore::Sqlite(_) => TestStore::sqlite(),
            TestStore::Postgres(url) => TestStore::Postgres(fresh_database(url)),
        }
    }

    /// A new process (SQLite) or instance (PostgreSQL) on this store.
    pub fn open(&self) -> Journal {
        match self {
            TestStore::Sqlite(dir) => {
                Arc::new(SqliteJournal::open(&dir.path().join("j.db")).unwrap())
            }
            TestStore::Postgres(url) => Arc::new(
                PostgresJournal::open(
                    url,
                    super::postgres::DEFAULT_SCHEMA,
                    TEST_LEASE_SECONDS,
                    super::postgres::Pooler::None,
                    super::postgres::Role::Serve,
                )
                .unwrap(),
            ),
        }
    }

    /// The process holding `journal` dies with its jobs running; returns the journal of
    /// the process (or instance) that carries on.
    pub fn crash(&self, journal: Journal) -> Journal {
        drop(journal);
        let next = self.open();
        match self {
            TestStore::Sqlite(_) => {
                next.release_running().unwrap();
            }
            TestStore::Postgres(_) => {
                // The dead instance no longer renews: its leases run out.
                std::thread::sleep(Duration::from_millis(TEST_LEASE_SECONDS * 1000 + 300));
            }
        }
        next
    }
}

/// Creates a database of its own for one test, on the server of `url`.
fn fresh_database(url: &str) -> String {
    let name = format!("freshet_t_{:016x}", rand::random::<u64>());
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let (client, connection) = tokio_postgres::connect(url, tokio_postgres::NoTls)
            .await
            .expect("the test database server answers");
        tokio::spawn(connection);
        client
            .batch_execute(&format!("CREATE DATABASE {name}"))
            .await
            .unwrap();
    });
    let (base, _) = url.rsplit_once('/').expect("a URL with a database name");
    format!("{base}/{name}")
}

pub fn event(id: &str) -> Event {
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

pub fn action(event_id: &str, key: &str, coalesce: Option<&str>) -> NewJob {
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

fn append(journal: &Journal, id: &str) -> Appended {
    journal
        .append(&event(id), FirstJob::EVALUATE)
        .wait()
        .unwrap()
}

fn evaluate_with(journal: &Journal, evaluation: Evaluation) -> Job {
    let job = journal.claim(Queue::Evaluate, 1, 60_000).unwrap().remove(0);
    assert!(
        journal
            .finish_evaluations(&[(job.clone(), evaluation)])
            .unwrap()[0]
    );
    job
}

macro_rules! contract {
    ($($name:ident),* $(,)?) => {
        mod on_sqlite {
            $( #[test] fn $name() { super::$name(&super::TestStore::sqlite()); } )*
        }
        mod on_postgres {
            $( #[test]
            #[cfg_attr(
                not(freshet_postgres_tests),
                ignore = "needs PostgreSQL: build with FRESHET_TEST_DATABASE_URL set (source .ci/postgres.sh)"
            )]
            fn $name() { super::$name(&super::TestStore::postgres()); } )*
        }
    };
}

contract!(
    duplicate_ids_insert_nothing,
    concurrent_appends_are_each_answered_after_their_commit,
    an_evaluation_is_recorded_once_and_identical_calls_coalesce,
    retries_then_dead_then_a_manual_retry,
    a_wait_spends_no_attempt,
    follow_ups_are_written_with_the_outcome,
    alert_transitions_are_decided_from_the_stored_state,
    a_job_that_keeps_stopping_the_process_ends_dead_and_holds_nothing_back,
    job_keys_are_unambiguous_whatever_an_id_contains,
    replays_of_one_rule_are_queued_each,
    finishing_evaluations_claims_the_next_batch,
    a_job_open_again_beside_an_identical_pending_one_ends_merged,
    an_action_names_its_rule_event_and_chain_depth,
    a_due_time_is_judged_once_and_a_late_check_in_meets_it,
    console_pages_of_events_neither_overlap_nor_skip,
    console_activity_shows_rule_runs_and_failed_attempts,
);

/// docs/behaviour.md section 16: the console's events page is keyset-paginated (received
/// time, then id), newest first, with filters; 120 events page as 50 + 50 + 20.
fn console_pages_of_events_neither_overlap_nor_skip(store: &TestStore) {
    let journal = store.open();
    for i in 0..120 {
        let mut event = event(&format!("dbt:e{i:03}"));
        // Three events share each millisecond: the id breaks the tie.
        event.received_at = format!(
            "2026-01-01T00:00:{:02}.{:03}Z",
            i / 3 / 1000,
            (i / 3) % 1000
        );
        if i % 4 == 0 {
            event.source = Source::Mode;
            event.kind = "mode.report_run_completed".into();
        }
        journal.append(&event, FirstJob::EVALUATE).wait().unwrap();
    }
    let all = EventFilter::default();
    let first = journal.events_page(&all, None, 50).unwrap();
    let second = journal
        .events_page(&all, Some(&first.last().unwrap().cursor()), 50)
        .unwrap();
    let third = journal
        .events_page(&all, Some(&second.last().unwrap().cursor()), 50)
        .unwrap();
    assert_eq!((first.len(), second.len(), third.len()), (50, 50, 20));
    let ids: Vec<&str> = first
        .iter()
        .chain(&second)
        .chain(&third)
        .map(|e| e.id.as_str())
        .collect();
    let mut expected: Vec<String> = (0..120).map(|i| format!("dbt:e{i:03}")).collect();
    expected.reverse();
    assert_eq!(ids, expected, "newest first, each once");
    let mode = EventFilter {
        source: Some("mode".into()),
        ..Default::default()
    };
    let modes = journal.events_page(&mode, None, 50).unwrap();
    assert_eq!(modes.len(), 30);
    assert!(modes
        .iter()
        .all(|e| e.source == "mode" && e.kind == "mode.report_run_completed"));
    let received = EventFilter {
        status: Some("received".into()),
        kind: Some("dbt.job.run.completed".into()),
        ..Default::default()
    };
    assert_eq!(journal.events_page(&received, None, 200).unwrap().len(), 90);
    let overview = journal.overview(0).unwrap();
    assert_eq!(
        overview.events,
        vec![
            ("dbt".to_string(), "received".to_string(), 90),
            ("mode".to_string(), "received".to_string(), 30)
        ]
    );
    let newest_dbt = first
        .iter()
        .chain(&second)
        .chain(&third)
        .filter(|e| e.source == "dbt")
        .map(|e| e.received_ms)
        .max()
        .unwrap();
    assert_eq!(
        overview.last_event[0],
        ("dbt".to_string(), super::common::rfc3339(newest_dbt))
    );

    // Evaluated events leave the "received" pages (found through the open first jobs),
    // which page by the same cursor.
    let claimed = journal.claim(Queue::Evaluate, 10, 60_000).unwrap();
    let evaluated: Vec<(Job, Evaluation)> = claimed
        .into_iter()
        .map(|job| (job, Evaluation::default()))
        .collect();
    assert!(journal
        .finish_evaluations(&evaluated)
        .unwrap()
        .iter()
        .all(|ended| *ended));
    let first = journal.events_page(&received, None, 50).unwrap();
    let rest = journal
        .events_page(&received, Some(&first.last().unwrap().cursor()), 50)
        .unwrap();
    assert_eq!((first.len(), rest.len()), (50, 33));
    let done: Vec<&str> = evaluated
        .iter()
        .map(|(job, _)| job.event_id.as_str())
        .collect();
    let mut seen: Vec<&str> = first.iter().chain(&rest).map(|e| e.id.as_str()).collect();
    assert!(seen.iter().all(|id| !done.contains(id)), "{seen:?}");
    assert!(first.iter().chain(&rest).all(|e| e.status == "received"));
    let mut newest_first = seen.clone();
    newest_first.sort_by(|a, b| b.cmp(a));
    assert_eq!(seen, newest_first);
    seen.dedup();
    assert_eq!(seen.len(), 83);
    let evaluated_page = EventFilter {
        status: Some("evaluated".into()),
        ..Default::default()
    };
    assert_eq!(
        journal
            .events_page(&evaluated_page, None, 50)
            .unwrap()
            .len(),
        10
    );
}

/// The console's event page: each rule's run, and each action with its failed attempts.
fn console_activity_shows_rule_runs_and_failed_attempts(store: &TestStore) {
    let journal = store.open();
    append(&journal, "dbt:a");
    evaluate_with(
        &journal,
        Evaluation {
            rule_runs: vec![RuleRun {
                rule: "refresh".into(),
                outcome: RuleOutcome::Fired,
                actions: 1,
                error: None,
            }],
            jobs: vec![action("dbt:a", "k1", None)],
            ..Default::default()
        },
    );
    let job = journal.claim(Queue::Action, 1, 60_000).unwrap().remove(0);
    let retry = JobOutcome::Retry {
        delay_ms: 0,
        error: "tableau: HTTP 503".into(),
    };
    journal.finish(&job, &retry, &FollowUp::default()).unwrap();
    let activity = journal.event_activity("dbt:a").unwrap();
    assert_eq!(activity.rules.len(), 1);
    assert_eq!(activity.rules[0].rule, "refresh");
    assert_eq!(activity.jobs.len(), 1);
    let (summary, attempts) = &activity.jobs[0];
    assert_eq!(summary.kind, "tableau_refresh");
    assert_eq!(summary.status, JobStatus::Retrying);
    assert_eq!(attempts.len(), 1);
    assert_eq!(attempts[0].attempt, 1);
    assert_eq!(attempts[0].status, "failed");
    assert_eq!(attempts[0].error.as_deref(), Some("tableau: HTTP 503"));
    let started = attempts[0].started_ms.expect("the claim records the start");
    assert!(attempts[0].ended_ms.unwrap() >= started);
    let overview = journal.overview(0).unwrap();
    assert_eq!(overview.jobs, vec![("retrying".to_string(), 1)]);

    // The second attempt, while it runs and once it has succeeded.
    let job = journal.claim(Queue::Action, 1, 60_000).unwrap().remove(0);
    let (_, attempts) = journal.event_activity("dbt:a").unwrap().jobs.remove(0);
    assert_eq!(attempts.len(), 2);
    assert_eq!((attempts[1].attempt, attempts[1].status), (2, "running"));
    assert!(attempts[1].started_ms.unwrap() >= started);
    assert_eq!(attempts[1].ended_ms, None);
    let done = JobOutcome::Succeeded(None);
    journal.finish(&job, &done, &FollowUp::default()).unwrap();
    let (_, attempts) = journal.event_activity("dbt:a").unwrap().jobs.remove(0);
    assert_eq!(attempts.len(), 2);
    assert_eq!((attempts[1].attempt, attempts[1].status), (2, "succeeded"));
    assert!(attempts[1].duration_ms().is_some());
    assert!(journal.event_activity("dbt:none").unwrap().jobs.is_empty());
}

/// docs/behaviour.md section 14: a clock's due time is judged once (a compare-and-set on
/// its last due time, the event in the same transaction), and the first check-in after a
/// miss emits `freshet.deadline.met`.
fn a_due_time_is_judged_once_and_a_late_check_in_meets_it(store: &TestStore) {
    let journal = store.open();
    let judge = |last: Option<i64>, due: i64, event: Option<&Event>, missed: bool| {
        journal
            .judge_clock(&ClockJudgement {
                name: "deadline:nightly",
                last_due_ms: last,
                due_ms: due,
                event,
                missed,
            })
            .unwrap()
    };
    assert!(judge(None, 1_000, None, false), "the clock starts");
    assert!(!judge(None, 1_000, None, false), "it starts once");
    let mut missed = event("freshet:deadline.missed:nightly:2000");
    missed.source = Source::Freshet;
    missed.kind = "freshet.deadline.missed".into();
    assert!(judge(Some(1_000), 2_000, Some(&missed), true));
    // Another instance read the same state: its judgement finds the due time moved.
    assert!(!judge(Some(1_000), 2_000, Some(&missed), true));
    let state = journal.clock("deadline:nightly").unwrap().unwrap();
    assert_eq!(
        (state.last_due_ms, state.missed_due_ms),
        (2_000, Some(2_000))
    );
    assert_eq!(
        journal.events(10, None).unwrap().len(),
        1,
        "one missed event"
    );

    // A check-in (in an evaluation) meets the miss: freshet.deadline.met, once.
    for id in ["dbt:ok1", "dbt:ok2"] {
        append(&journal, id);
        evaluate_with(
            &journal,
            Evaluation {
                check_ins: vec!["deadline:nightly".into()],
                ..Default::default()
            },
        );
    }
    let events = journal.events(10, None).unwrap();
    let met: Vec<_> = events
        .iter()
        .filter(|e| e.kind == "freshet.deadline.met")
        .collect();
    assert_eq!(met.len(), 1, "{events:?}");
    assert_eq!(met[0].id, "freshet:deadline.met:nightly:2000");
    let state = journal.clock("deadline:nightly").unwrap().unwrap();
    assert!(state.missed_due_ms.is_none() && state.last_check_in_ms.is_some());
    assert_eq!(journal.clocks().unwrap().len(), 1);
}

/// A dbt run `dbt_run` started names its action; the action's origin continues the chain
/// (docs/behaviour.md section 13).
fn an_action_names_its_rule_event_and_chain_depth(store: &TestStore) {
    let journal = store.open();
    let mut deep = event("dbt:deep");
    deep.chain_depth = 2;
    journal.append(&deep, FirstJob::EVALUATE).wait().unwrap();
    evaluate_with(
        &journal,
        Evaluation {
            jobs: vec![action("dbt:deep", "k1", None)],
            ..Default::default()
        },
    );
    let id = journal.jobs(None, 10).unwrap()[0].id;
    assert_eq!(
        journal.action_origin(id).unwrap(),
        Some(ActionOrigin {
            rule: Some("r".into()),
            event_id: "dbt:deep".into(),
            chain_depth: 2,
        })
    );
    assert_eq!(journal.action_origin(id + 1000).unwrap(), None);
    // An evaluate job is not an action.
    append(&journal, "dbt:other");
    let evaluate = journal.claim(Queue::Evaluate, 1, 60_000).unwrap().remove(0);
    assert_eq!(journal.action_origin(evaluate.id).unwrap(), None);
}

fn duplicate_ids_insert_nothing(store: &TestStore) {
    let journal = store.open();
    assert_eq!(append(&journal, "dbt:a"), Appended::New);
    assert_eq!(append(&journal, "dbt:a"), Appended::Duplicate);
    assert_eq!(journal.claim(Queue::Evaluate, 10, 60_000).unwrap().len(), 1);
    assert!(
        journal
            .claim(Queue::Evaluate, 10, 60_000)
            .unwrap()
            .is_empty(),
        "leased jobs are not claimed twice"
    );
}

fn concurrent_appends_are_each_answered_after_their_commit(store: &TestStore) {
    let journal = store.open();
    // Queued all at once, each id twice: only one of each may be new.
    let tickets: Vec<_> = (0..150)
        .flat_map(|i| {
            let id = format!("dbt:{i}");
            [
                (id.clone(), journal.append(&event(&id), FirstJob::EVALUATE)),
                (id.clone(), journal.append(&event(&id), FirstJob::EVALUATE)),
            ]
        })
        .collect();
    let mut new = std::collections::BTreeSet::new();
    for (id, ticket) in tickets {
        if ticket.wait().unwrap() == Appended::New {
            assert!(new.insert(id.clone()), "{id} was new twice");
        }
    }
    assert_eq!(new.len(), 150);
    let reopened = store.open();
    assert_eq!(reopened.events(1000, None).unwrap().len(), 150);
    // Claimed by the instance that journaled them: on PostgreSQL intake leases each
    // evaluation to its own instance (docs/behaviour.md section 12).
    let claimed = journal.claim(Queue::Evaluate, 1000, 60_000).unwrap();
    let ids: std::collections::BTreeSet<String> =
        claimed.iter().map(|job| job.event_id.clone()).collect();
    assert_eq!(
        (claimed.len(), ids),
        (150, new),
        "one evaluate job per new event"
    );
}

fn an_evaluation_is_recorded_once_and_identical_calls_coalesce(store: &TestStore) {
    let journal = store.open();
    append(&journal, "dbt:a");
    let job = journal.claim(Queue::Evaluate, 1, 60_000).unwrap().remove(0);
    let evaluation = Evaluation {
        rule_runs: vec![RuleRun {
            rule: "r".into(),
            outcome: RuleOutcome::Fired,
            actions: 2,
            error: None,
        }],
        jobs: vec![
            action("dbt:a", "k1", Some("c")),
            action("dbt:a", "k2", Some("c")),
        ],
        ..Default::default()
    };
    assert!(
        journal
            .finish_evaluations(&[(job.clone(), evaluation.clone())])
            .unwrap()[0]
    );
    assert!(
        !journal.finish_evaluations(&[(job, evaluation)]).unwrap()[0],
        "a finished lease cannot finish again"
    );
    let jobs = journal.jobs(None, 10).unwrap();
    assert_eq!(jobs.len(), 1, "identical pending calls merge");
    let summary = &journal.events(10, None).unwrap()[0];
    assert_eq!(summary.status, "evaluated");
    assert_eq!(summary.rules[0].rule, "r");
    assert_eq!(summary.actions.len(), 1);
    assert_eq!(journal.backlog().unwrap(), 1);
}

fn retries_then_dead_then_a_manual_retry(store: &TestStore) {
    let journal = store.open();
    append(&journal, "dbt:a");
    evaluate_with(
        &journal,
        Evaluation {
            jobs: vec![action("dbt:a", "k1", None)],
            ..Default::default()
        },
    );
    let job = journal.claim(Queue::Action, 1, 60_000).unwrap().remove(0);
    let retry = JobOutcome::Retry {
        delay_ms: 0,
        error: "HTTP 500".into(),
    };
    assert_eq!(
        journal
            .finish(&job, &retry, &FollowUp::default())
            .unwrap()
            .map(JobStatus::as_str),
        Some("retrying")
    );
    let job = journal.claim(Queue::Action, 1, 60_000).unwrap().remove(0);
    assert_eq!(job.attempt, 2);
    let mut failure = event("freshet:action.failed:1");
    failure.source = Source::Freshet;
    let follow_up = FollowUp {
        event: Some(failure),
        job: None,
    };
    assert_eq!(
        journal
            .finish(&job, &retry, &follow_up)
            .unwrap()
            .map(JobStatus::as_str),
        Some("dead")
    );
    assert!(
        journal.event("freshet:action.failed:1").unwrap().is_some(),
        "dead jobs emit their event"
    );
    let dead = journal.jobs(Some(JobStatus::Dead), 10).unwrap();
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0].last_error.as_deref(), Some("HTTP 500"));
    journal.retry(job.id).unwrap();
    let again = journal.claim(Queue::Action, 1, 60_000).unwrap().remove(0);
    assert_eq!(again.attempt, 3);
    assert_eq!(
        journal
            .finish(
                &again,
                &JobOutcome::Succeeded(Some(json!({"ts": "1.2"}))),
                &FollowUp::default()
            )
            .unwrap()
            .map(JobStatus::as_str),
        Some("succeeded")
    );
    let done = &journal.jobs(None, 10).unwrap()[0];
    assert_eq!(done.last_error, None, "a success shows no earlier error");
    assert_eq!(
        journal.job_by_key("k1").unwrap().unwrap().result,
        Some(json!({"ts": "1.2"}))
    );
    assert!(
        journal.retry(job.id).is_err(),
        "only dead jobs can be retried"
    );
    assert!(journal.retry(999_999).is_err());
}

fn a_wait_spends_no_attempt(store: &TestStore) {
    let journal = store.open();
    append(&journal, "dbt:a");
    evaluate_with(
        &journal,
        Evaluation {
            jobs: vec![action("dbt:a", "k1", None)],
            ..Default::default()
        },
    );
    for _ in 0..3 {
        let job = journal.claim(Queue::Action, 1, 60_000).unwrap().remove(0);
        assert_eq!(job.attempt, 1, "polls spend no attempt");
        assert_eq!(
            journal
                .finish(
                    &job,
                    &JobOutcome::Wait { delay_ms: 0 },
                    &FollowUp::default()
                )
                .unwrap()
                .map(JobStatus::as_str),
            Some("pending")
        );
    }
    let job = journal.claim(Queue::Action, 1, 60_000).unwrap().remove(0);
    journal
        .finish(
            &job,
            &JobOutcome::Wait { delay_ms: 60_000 },
            &FollowUp::default(),
        )
        .unwrap();
    assert!(
        journal.claim(Queue::Action, 1, 60_000).unwrap().is_empty(),
        "not due before its delay"
    );
    let due = journal.next_due_in(Queue::Action).unwrap().unwrap();
    assert!((50_000..=60_000).contains(&due), "{due}");
}

fn follow_ups_are_written_with_the_outcome(store: &TestStore) {
    let journal = store.open();
    append(&journal, "dbt:a");
    evaluate_with(
        &journal,
        Evaluation {
            jobs: vec![action("dbt:a", "k1", None)],
            ..Default::default()
        },
    );
    let job = journal.claim(Queue::Action, 1, 60_000).unwrap().remove(0);
    let mut next = action("dbt:a", "follow-k1", None);
    next.kind = "tableau_job".into();
    let mut emitted = event("tableau:refresh:job-1");
    emitted.source = Source::Tableau;
    let follow_up = FollowUp {
        event: Some(emitted),
        job: Some(next),
    };
    journal
        .finish(&job, &JobOutcome::Succeeded(None), &follow_up)
        .unwrap();
    assert!(journal.event("tableau:refresh:job-1").unwrap().is_some());
    let evaluate = journal.claim(Queue::Evaluate, 10, 60_000).unwrap();
    assert_eq!(evaluate.len(), 1, "the emitted event is evaluated");
    let started = journal.claim(Queue::Action, 10, 60_000).unwrap();
    assert_eq!(started.len(), 1);
    assert_eq!(started[0].kind, "tableau_job");
}

/// A decider for the test: firing posts once per transition, as `alerts::transition`.
fn decide(previous: Option<&AlertState>, call: &AlertCall, now: i64) -> AlertTransition {
    let was = previous.is_some_and(|p| p.firing);
    if was == call.firing {
        return AlertTransition::default();
    }
    let version = previous.map_or(0, |p| p.version) + 1;
    AlertTransition {
        new_state: Some(AlertState {
            name: call.name.clone(),
            firing: call.firing,
            version,
            since_ms: now,
            last_notified_ms: Some(now),
            ..AlertState::default()
        }),
        jobs: vec![AlertJob {
            key: super::job_key(&["alert", &call.name, &version.to_string()]),
            kind: "slack_post".into(),
            payload: json!({ "text": call.text }),
        }],
    }
}

fn alert_transitions_are_decided_from_the_stored_state(store: &TestStore) {
    let journal = store.open();
    let call = |firing: bool| AlertCall {
        rule: "r".into(),
        name: "floor".into(),
        firing,
        text: "low".into(),
        channel: None,
        renotify_minutes: None,
        resolve: true,
        event_id: "dbt:0".into(),
        presentation: serde_json::Value::Null,
    };
    for (i, firing) in [true, true, false].into_iter().enumerate() {
        let id = format!("dbt:{i}");
        append(&journal, &id);
        evaluate_with(
            &journal,
            Evaluation {
                alerts: vec![call(firing)],
                decide_alert: decide,
                ..Default::default()
            },
        );
    }
    let posts = journal.jobs(None, 10).unwrap();
    assert_eq!(posts.len(), 2, "fired once, resolved once: {posts:?}");
    let alerts = journal.alerts().unwrap();
    assert_eq!(alerts.len(), 1);
    assert!(!alerts[0].firing);
    assert_eq!(alerts[0].version, 2);
    assert_eq!(journal.reset_alert("floor").unwrap(), Some(false));
    assert_eq!(journal.reset_alert("nope").unwrap(), None);
}

/// docs/behaviour.md section 11, poison events: every stopped attempt counts; the job ends dead,
/// and the events that were claimed with it, or came later, are each evaluated once.
fn a_job_that_keeps_stopping_the_process_ends_dead_and_holds_nothing_back(store: &TestStore) {
    let mut journal = store.open();
    append(&journal, "dbt:poison");
    append(&journal, "dbt:innocent");
    // Both claimed in one batch; then the process dies.
    assert_eq!(journal.claim(Queue::Evaluate, 16, 60_000).unwrap().len(), 2);
    append(&journal, "dbt:later");
    let mut evaluated = Vec::new();
    let mut crashes = 1;
    loop {
        journal = store.crash(journal);
        if journal
            .jobs(Some(JobStatus::Dead), 10)
            .unwrap()
            .iter()
            .any(|j| j.event_id == "dbt:poison")
        {
            break;
        }
        // Evaluate until the poison job is claimed, then "crash" again.
        loop {
            let batch = journal.claim(Queue::Evaluate, 16, 60_000).unwrap();
            if batch.iter().any(|job| job.event_id == "dbt:poison") {
                assert_eq!(batch.len(), 1, "a job tried before is claimed alone");
                break;
            }
            if batch.is_empty() {
                // Its stopped attempt was its last: it ends at the next claim.
                break;
            }
            for job in batch {
                evaluated.push(job.event_id.clone());
                journal
                    .finish_evaluations(&[(job, Evaluation::default())])
                    .unwrap();
            }
        }
        crashes += 1;
        assert!(crashes <= 6, "the poison job never ended");
    }
    let dead = journal.jobs(Some(JobStatus::Dead), 10).unwrap();
    assert_eq!(dead.len(), 1, "{dead:?}");
    assert_eq!((dead[0].attempt, dead[0].max_attempts), (5, 5));
    assert!(dead[0]
        .last_error
        .as_deref()
        .unwrap()
        .starts_with("interrupted"));
    evaluated.sort();
    assert_eq!(evaluated, vec!["dbt:innocent", "dbt:later"]);
    journal.retry(dead[0].id).unwrap();
}

fn job_keys_are_unambiguous_whatever_an_id_contains(store: &TestStore) {
    for order in [
        ["dbt:wev_R:replay1", "dbt:wev_R"],
        ["dbt:wev_R", "dbt:wev_R:replay1"],
    ] {
        let store = store.another();
        let journal = store.open();
        for id in order {
            append(&journal, id);
        }
        assert_eq!(
            journal.claim(Queue::Evaluate, 16, 60_000).unwrap().len(),
            2,
            "{order:?}"
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

fn replays_of_one_rule_are_queued_each(store: &TestStore) {
    let journal = store.open();
    append(&journal, "dbt:a");
    evaluate_with(&journal, Evaluation::default());
    let replay = Replay {
        first: FirstJob::EVALUATE,
        rule: Some("finance".into()),
    };
    let first = journal.queue_replay("dbt:a", &replay).unwrap();
    let second = journal.queue_replay("dbt:a", &replay).unwrap();
    assert_ne!(first, second, "each replay is an evaluation of its own");
    let jobs = journal.claim(Queue::Evaluate, 16, 60_000).unwrap();
    assert_eq!(jobs.len(), 2);
    assert_eq!(jobs[0].payload["rule"], "finance");
    assert_eq!(jobs[0].payload["replay"], 1);
    assert_eq!(jobs[1].payload["replay"], 2);
    assert!(journal.queue_replay("dbt:nope", &replay).is_err());
}

fn finishing_evaluations_claims_the_next_batch(store: &TestStore) {
    let journal = store.open();
    for id in ["dbt:a", "dbt:b", "dbt:c"] {
        append(&journal, id);
    }
    let first = journal.claim(Queue::Evaluate, 2, 60_000).unwrap();
    assert_eq!(first.len(), 2);
    let fired = Evaluation {
        rule_runs: vec![RuleRun {
            rule: "r".into(),
            outcome: RuleOutcome::Fired,
            actions: 1,
            error: None,
        }],
        jobs: vec![action(&first[0].event_id, "k1", None)],
        ..Default::default()
    };
    let batch = vec![
        (first[0].clone(), fired),
        (first[1].clone(), Evaluation::default()),
    ];
    let (recorded, next) = journal
        .finish_evaluations_and_claim(&batch, 10, 60_000)
        .unwrap();
    assert_eq!(recorded, vec![true, true]);
    assert_eq!(
        next.iter()
            .map(|job| job.event_id.as_str())
            .collect::<Vec<_>>(),
        ["dbt:c"],
        "only the job not yet claimed comes back"
    );
    assert_eq!(next[0].attempt, 1, "the claim counts an attempt");
    let c = next[0].clone();
    assert_eq!(
        journal.jobs(None, 10).unwrap().len(),
        1,
        "the action was queued"
    );
    let statuses: std::collections::BTreeMap<String, String> = journal
        .events(10, None)
        .unwrap()
        .into_iter()
        .map(|event| (event.id, event.status))
        .collect();
    assert_eq!(statuses["dbt:a"], "evaluated");
    assert_eq!(statuses["dbt:b"], "evaluated");
    assert_eq!(statuses["dbt:c"], "received");

    assert!(
        journal
            .claim(Queue::Evaluate, 10, 60_000)
            .unwrap()
            .is_empty(),
        "a leased job is not claimed twice"
    );

    // In one batch, a lease that is no longer ours records nothing; the others are kept.
    let (recorded, next) = journal
        .finish_evaluations_and_claim(&[batch[1].clone(), (c, Evaluation::default())], 10, 60_000)
        .unwrap();
    assert_eq!(recorded, vec![false, true]);
    assert!(next.is_empty(), "nothing is due");
    assert_eq!(journal.events(10, Some("evaluated")).unwrap().len(), 3);
}

/// docs/behaviour.md section 6 (merging): a running refresh whose attempt fails while an
/// identical call is pending would be open twice, which the unique coalescing index
/// forbids; instead it ends `merged`, naming the pending one, and nothing fails. The
/// same for `freshet retry` of a dead job beside a pending twin.
fn a_job_open_again_beside_an_identical_pending_one_ends_merged(store: &TestStore) {
    let journal = store.open();
    append(&journal, "dbt:first");
    evaluate_with(
        &journal,
        Evaluation {
            jobs: vec![action("dbt:first", "k1", Some("refresh:Finance"))],
            ..Default::default()
        },
    );
    let running = journal.claim(Queue::Action, 1, 60_000).unwrap().remove(0);
    // While it runs, the same refresh is asked for again: a second job, pending.
    append(&journal, "dbt:second");
    evaluate_with(
        &journal,
        Evaluation {
            jobs: vec![action("dbt:second", "k2", Some("refresh:Finance"))],
            ..Default::default()
        },
    );
    let pending = journal
        .jobs(Some(JobStatus::Pending), 10)
        .unwrap()
        .remove(0)
        .id;
    let retry = JobOutcome::Retry {
        delay_ms: 0,
        error: "HTTP 503".into(),
    };
    assert_eq!(
        journal
            .finish(&running, &retry, &FollowUp::default())
            .unwrap(),
        Some(JobStatus::Merged)
    );
    let merged = journal.jobs(Some(JobStatus::Merged), 10).unwrap();
    assert_eq!(merged.len(), 1);
    assert_eq!(merged[0].id, running.id);
    assert_eq!(merged[0].merged_into, Some(pending));
    assert_eq!(merged[0].last_error.as_deref(), Some("HTTP 503"));

    // The pending one runs and dies; a third identical call is pending when it is retried.
    let twin = journal.claim(Queue::Action, 1, 60_000).unwrap().remove(0);
    assert_eq!(twin.id, pending);
    let dead = JobOutcome::Dead {
        error: "HTTP 400".into(),
    };
    assert_eq!(
        journal.finish(&twin, &dead, &FollowUp::default()).unwrap(),
        Some(JobStatus::Dead)
    );
    append(&journal, "dbt:third");
    evaluate_with(
        &journal,
        Evaluation {
            jobs: vec![action("dbt:third", "k3", Some("refresh:Finance"))],
            ..Default::default()
        },
    );
    let third = journal
        .jobs(Some(JobStatus::Pending), 10)
        .unwrap()
        .remove(0)
        .id;
    assert_eq!(journal.retry(twin.id).unwrap(), Retried::MergedInto(third));
    let twin_now = journal
        .jobs(None, 10)
        .unwrap()
        .into_iter()
        .find(|job| job.id == twin.id)
        .unwrap();
    assert_eq!(twin_now.status, JobStatus::Merged);
    assert_eq!(twin_now.merged_into, Some(third));
    assert_eq!(journal.backlog().unwrap(), 1, "one refresh is left to run");
}
