//! docs/behaviour.md section 14: silence is an event. A deadline with a seconds cron emits
//! one `freshet.deadline.missed` per due time without a check-in, also across a restart
//! and with two instances on PostgreSQL; a late check-in emits `freshet.deadline.met`;
//! check-ins in time emit nothing. A schedule emits one `freshet.schedule` per due time.
//! These tests wait for the clock by nature (the due times are every two seconds); each
//! wait is bounded by `eventually`.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use crate::support::fake::FakeSlack;
use crate::support::*;

const SECRET: &str = "deadlines-secret";
/// Every two seconds, with seconds first (6 fields).
const EVERY_TWO_SECONDS: &str = "*/2 * * * * *";

const CHECK_IN: &str = r#"
if event.type == "dbt.job.run.completed" && event.job_name == "nightly" && event.run_status == "Success" {
    check_in("nightly");
}
"#;

fn clocks(extra: &str) -> String {
    format!(
        "[deadlines.nightly]\ncron = \"{EVERY_TWO_SECONDS}\"\ntimezone = \"Europe/Paris\"\n{extra}"
    )
}

/// The due times (ms) of the journaled events of `kind` (`deadline.missed`, ...) for
/// clock `name`, from their ids (`freshet:<kind>:<name>:<due ms>`).
fn due_times(daemon: &Daemon, kind: &str, name: &str) -> BTreeSet<i64> {
    let prefix = format!("freshet:{kind}:{name}:");
    daemon
        .cli_ok(&["events", "--limit", "1000", "--json"])
        .lines()
        .filter_map(|line| {
            let event: serde_json::Value = serde_json::from_str(line).ok()?;
            event["id"].as_str()?.strip_prefix(&prefix)?.parse().ok()
        })
        .collect()
}

/// Consecutive due times of a two-second cron, each once.
fn assert_consecutive(dues: &BTreeSet<i64>) {
    let dues: Vec<i64> = dues.iter().copied().collect();
    for pair in dues.windows(2) {
        assert_eq!(
            pair[1] - pair[0],
            2_000,
            "a due time skipped or doubled: {dues:?}"
        );
    }
}

async fn nightly_success(daemon: &Daemon, id: &str) {
    send_dbt(daemon, SECRET, dbt_completed(id, "nightly", "Success")).await;
    evaluated(daemon, &format!("dbt:{id}")).await;
}

#[tokio::test]
async fn a_missed_deadline_is_one_event_per_due_time_and_a_late_check_in_meets_it() {
    let slack = FakeSlack::start().await;
    let schedule = "[schedules.morning]\ncron = \"*/2 * * * * *\"\n";
    let mut daemon = Daemon::start(
        slack
            .configure(Setup::dbt(SECRET, 3, 50, 200).section(&clocks(schedule)))
            .rule("check_in.rhai", CHECK_IN),
    );
    // No check-in: a miss at each due time.
    let missed = eventually(&daemon, "three missed due times", || {
        let dues = due_times(&daemon, "deadline.missed", "nightly");
        (dues.len() >= 3).then_some(dues)
    })
    .await;
    assert_consecutive(&missed);
    let schedules = due_times(&daemon, "schedule", "morning");
    assert!(schedules.len() >= 2, "{schedules:?}");
    assert_consecutive(&schedules);

    // A check-in after the miss: met, with the miss's due time.
    nightly_success(&daemon, "wev_late").await;
    let met = eventually(&daemon, "the deadline met", || {
        let met = due_times(&daemon, "deadline.met", "nightly");
        (!met.is_empty()).then_some(met)
    })
    .await;
    assert_eq!(met.len(), 1, "{met:?}");
    let met_due = *met.iter().next().unwrap();
    assert!(missed.contains(&met_due) || met_due > *missed.iter().next_back().unwrap());

    // Check-ins in time: every 400 ms for 4.5 s, over at least two due times. No miss
    // is judged for a due time with a check-in before it.
    let quiet_from = chrono::Utc::now().timestamp_millis() + 500;
    let started = Instant::now();
    let mut i = 0;
    while started.elapsed() < Duration::from_millis(4_500) {
        nightly_success(&daemon, &format!("wev_in_time{i}")).await;
        i += 1;
        tokio::time::sleep(Duration::from_millis(400)).await;
    }
    let quiet_to = chrono::Utc::now().timestamp_millis();
    let during: Vec<i64> = due_times(&daemon, "deadline.missed", "nightly")
        .into_iter()
        .filter(|due| (quiet_from..quiet_to).contains(due))
        .collect();
    assert!(during.is_empty(), "missed while checked in: {during:?}");

    // Stopped across several due times: at start, the latest only is judged (one
    // event, not a burst), and nothing judged before is judged again.
    let before = due_times(&daemon, "deadline.missed", "nightly");
    daemon.stop();
    let stopped_at = chrono::Utc::now().timestamp_millis();
    tokio::time::sleep(Duration::from_millis(5_000)).await;
    // Due times up to here passed while freshet was down (two or three of them).
    let spawned_at = chrono::Utc::now().timestamp_millis();
    daemon.spawn();
    let after = eventually(&daemon, "the miss judged at start", || {
        let after = due_times(&daemon, "deadline.missed", "nightly");
        (after.iter().any(|due| *due > stopped_at)).then_some(after)
    })
    .await;
    let while_down: Vec<i64> = after
        .iter()
        .copied()
        .filter(|due| *due > stopped_at && *due <= spawned_at)
        .collect();
    assert!(
        while_down.len() <= 1,
        "at most one event for the due times passed while down (the latest): {while_down:?}"
    );
    assert!(before.is_subset(&after));
}

/// Two instances on one PostgreSQL journal: each due time is judged by one of them.
#[cfg_attr(
    not(freshet_postgres_tests),
    ignore = "needs PostgreSQL: build with FRESHET_TEST_DATABASE_URL set (source .ci/postgres.sh)"
)]
#[tokio::test]
async fn two_instances_judge_each_due_time_once() {
    let url = fresh_postgres().await;
    let slack = FakeSlack::start().await;
    let setup = || {
        let setup = Setup {
            journal_keys: "url = { env = \"T_DB\" }\nlease_seconds = 3".into(),
            ..Setup::dbt(SECRET, 3, 50, 200)
        };
        slack
            .configure(setup.section(&clocks("")))
            .env("T_DB", &url)
            .rule("check_in.rhai", CHECK_IN)
    };
    let (a, b) = (Daemon::start(setup()), Daemon::start(setup()));
    let missed = eventually(&a, "four missed due times", || {
        let dues = due_times(&a, "deadline.missed", "nightly");
        (dues.len() >= 4).then_some(dues)
    })
    .await;
    assert_consecutive(&missed);
    // Both ticked at every due time; the journal holds one event each, judged once
    // (the events are one per id; the judgements are counted in the logs).
    let judged = count_in_log(&a, "Clock due: event journaled.")
        + count_in_log(&b, "Clock due: event journaled.");
    let now_missed = due_times(&b, "deadline.missed", "nightly");
    assert!(
        missed.len() <= judged && judged <= now_missed.len(),
        "{judged} judgements for {} to {} due times",
        missed.len(),
        now_missed.len()
    );
}
