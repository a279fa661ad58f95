//! What real Tableau, Mode and Slack servers do, against fakes that do it too (docs/behaviour.md
//! section 7): API versions, refresh jobs followed to their end (across a kill -9),
//! project-qualified names, Mode run states, per-query result errors, bounded result
//! downloads, Mode outages and rate limits, and alert threads in Slack.

use std::time::Duration;

use crate::support::fake::{FakeMode, FakeSlack, FakeTableau, QueryResult, Reply};
use crate::support::{
    dbt_completed, evaluated, eventually, example_rule, send_dbt, send_mode_run_completed, Daemon,
    Setup, FINANCE_VARS,
};
use serde_json::{json, Value};

const SECRET: &str = "real-servers-secret-6";
const HOOK_TOKEN: &str = "real-servers-hook-1";
const REPORT: &str = "2b3c4d5e6f70";

fn base() -> Setup {
    Setup::dbt(SECRET, 3, 10, 40)
        .section(FINANCE_VARS)
        .env("T_PAT", crate::support::fake::TABLEAU_PAT_SECRET)
}

fn show(daemon: &Daemon, id: &str) -> Value {
    serde_json::from_str(&daemon.cli_ok(&["events", "--show", id])).unwrap()
}

/// The job rows of the journal, as `freshet actions --json` would give them.
fn jobs(daemon: &Daemon) -> Vec<freshet::journal::JobSummary> {
    use freshet::journal::Admin;
    freshet::journal::SqliteJournal::open_existing(&daemon.dir.join("journal.db"))
        .unwrap()
        .jobs(None, 1000)
        .unwrap()
}

// ---------------------------------------------------------------------------------------
// Tableau
// ---------------------------------------------------------------------------------------

/// docs/behaviour.md section 7: with no `api_version`, the server's own (from serverinfo) is used;
/// a pinned version the server does not have is a final error that says what to do.
#[tokio::test]
async fn the_api_version_is_the_servers_own_unless_pinned() {
    let tableau = FakeTableau::start().await;
    tableau.state.lock().unwrap().max_api_version = "3.19".into();
    let refresh = r#"if event.source == "dbt" { tableau_refresh("Finance Overview"); }"#;
    let daemon = Daemon::start(
        base()
            .section(&tableau.section(None))
            .rule("r.rhai", refresh),
    );
    send_dbt(&daemon, SECRET, dbt_completed("wev_v1", "x", "Success")).await;
    eventually(&daemon, "the refresh", || {
        (tableau.refreshes().len() == 1).then_some(())
    })
    .await;
    let calls = tableau.calls();
    assert_eq!(calls[0], "GET /api/2.4/serverinfo", "{calls:#?}");
    assert!(
        calls[1..].iter().all(|c| c.contains("/api/3.19/")),
        "{calls:#?}"
    );
    daemon.wait_for_log("api_version=3.19", Duration::from_secs(10));

    // A server that only has 3.19 refuses 3.22.
    let pinned = Daemon::start(
        base()
            .section(&tableau.section(Some("3.22")))
            .rule("r.rhai", refresh),
    );
    send_dbt(&pinned, SECRET, dbt_completed("wev_v2", "x", "Success")).await;
    let dead = eventually(&pinned, "the refused refresh", || {
        let dead = pinned.cli_ok(&["actions", "--status", "dead"]);
        dead.contains("tableau_refresh").then_some(dead)
    })
    .await;
    assert!(
        dead.contains("does not support REST API version 3.22; leave tableau.api_version out"),
        "{dead}"
    );
}

/// The job that followed the refresh ended succeeded on its first attempt: its polls
/// (and any transient failure between them) spent none.
fn assert_followed_without_spending_attempts(daemon: &Daemon) {
    let follow = jobs(daemon)
        .into_iter()
        .find(|j| j.kind == "tableau_job")
        .unwrap();
    assert_eq!((follow.status.as_str(), follow.attempt), ("succeeded", 1));
}

/// docs/behaviour.md section 7: a refresh job is followed to its end; a failure (finishCode 1, with
/// Tableau's notes) becomes `tableau.refresh.completed` and the example rule posts it.
#[tokio::test]
async fn a_failed_refresh_is_followed_and_reaches_slack() {
    let tableau = FakeTableau::start().await;
    let slack = FakeSlack::start().await;
    tableau.state.lock().unwrap().next_job = (
        2,
        Some(1),
        Some("java.lang.RuntimeException: Login failed for user 'etl'.".into()),
    );
    let daemon = Daemon::start(
        slack
            .configure(base().section(&tableau.section(None)))
            .rule(
                "refresh.rhai",
                r#"if event.source == "dbt" { tableau_refresh(#{ workbook: "Finance Overview", project: "Finance" }); }"#,
            )
            .rule(
                "tableau_refresh_failed.rhai",
                &example_rule("tableau_refresh_failed.rhai"),
            ),
    );
    send_dbt(&daemon, SECRET, dbt_completed("wev_f1", "x", "Success")).await;
    let posts = eventually(&daemon, "the failure posted", || {
        let posts = slack.posts();
        (!posts.is_empty()).then_some(posts)
    })
    .await;
    assert_eq!(
        posts,
        vec![(
            "webhook".to_string(),
            "Tableau refresh of Finance Overview (project Finance) failed: java.lang.RuntimeException: Login failed for user 'etl'.".to_string()
        )]
    );
    let event = show(&daemon, "tableau:refresh:job-1");
    assert_eq!(event["type"], "tableau.refresh.completed");
    assert_eq!(event["source"], "tableau");
    assert_eq!(event["status"], "failed");
    assert_eq!(event["finish_code"], 1);
    assert_eq!(event["job_id"], "job-1");
    assert_eq!(event["workbook"], "Finance Overview");
    assert_eq!(event["project"], "Finance");
    assert_eq!(event["rule"], "refresh");
    assert_eq!(event["cause_event_id"], "dbt:wev_f1");
    assert_eq!(event["completed_at"], "2026-11-30T10:05:00Z");
    assert_eq!(event["chain_depth"], 1);
    // Polled until done: 2 answers "in progress", then the end; the polls spent no attempt.
    let polls = tableau
        .calls()
        .iter()
        .filter(|c| c.ends_with("/jobs/job-1"))
        .count();
    assert_eq!(polls, 3);
    assert_followed_without_spending_attempts(&daemon);
}

/// docs/behaviour.md section 12: transient errors while a refresh is followed (here five
/// 503s in a row, more than the three attempts an action has) spend no attempt: the
/// follow looks again later and the outcome still arrives.
#[tokio::test]
async fn transient_errors_while_following_spend_no_attempts() {
    let tableau = FakeTableau::start().await;
    let slack = FakeSlack::start().await;
    tableau.state.lock().unwrap().next_job = (1, Some(0), None);
    tableau.state.lock().unwrap().faults.add(
        "/jobs/job-1",
        5,
        Reply::json(503, json!({"error": {"code": "503000", "summary": "down"}})),
    );
    let daemon = Daemon::start(
        slack.configure(base().section(&tableau.section(None))).rule(
            "refresh.rhai",
            r#"if event.source == "dbt" { tableau_refresh(#{ workbook: "Finance Overview", project: "Finance" }); }"#,
        ),
    );
    send_dbt(&daemon, SECRET, dbt_completed("wev_flaky", "x", "Success")).await;
    let event = eventually(&daemon, "the refresh's outcome", || {
        daemon
            .cli(&["events", "--show", "tableau:refresh:job-1"])
            .status
            .success()
            .then(|| show(&daemon, "tableau:refresh:job-1"))
    })
    .await;
    assert_eq!(event["status"], "succeeded", "{event}");
    assert_followed_without_spending_attempts(&daemon);
}

/// docs/behaviour.md section 7: following is journaled work. kill -9 while a job is followed;
/// after the restart the outcome still arrives, once.
#[tokio::test]
async fn following_survives_a_kill_9_and_the_outcome_arrives_once() {
    let tableau = FakeTableau::start().await;
    let slack = FakeSlack::start().await;
    // The job keeps running until the test lets it finish.
    tableau.state.lock().unwrap().next_job = (usize::MAX, Some(0), None);
    let mut daemon = Daemon::start(
        slack
            .configure(base().section(&tableau.section(None)))
            .rule(
                "refresh.rhai",
                r#"if event.source == "dbt" { tableau_refresh("Finance Overview"); }
                   if event.type == "tableau.refresh.completed" { slack_post(`refresh ${event.status}`); }"#,
            ),
    );
    send_dbt(&daemon, SECRET, dbt_completed("wev_k1", "x", "Success")).await;
    eventually(&daemon, "the job polled twice", || {
        let polls = tableau
            .calls()
            .iter()
            .filter(|c| c.ends_with("/jobs/job-1"))
            .count();
        (polls >= 2).then_some(())
    })
    .await;
    daemon.kill();
    tableau.state.lock().unwrap().jobs[0].polls_left = 0;
    daemon.spawn();
    eventually(&daemon, "the outcome posted", || {
        (slack.posts() == vec![("webhook".to_string(), "refresh succeeded".to_string())])
            .then_some(())
    })
    .await;
    // Settled: the follow job is done, the event was journaled once, nothing else runs.
    eventually(&daemon, "all jobs finished", || {
        jobs(&daemon)
            .iter()
            .all(|j| j.status == "succeeded")
            .then_some(())
    })
    .await;
    let listing = daemon.cli_ok(&["events"]);
    assert_eq!(
        listing.matches("tableau:refresh:job-1").count(),
        1,
        "{listing}"
    );
    assert_eq!(slack.posts().len(), 1);
    assert_eq!(
        tableau.refreshes().len(),
        1,
        "the refresh itself was not repeated"
    );
}

/// docs/behaviour.md section 7: names are unique only within a project. A bare name found in two
/// projects is a final error naming them; with its project, the right one is refreshed.
#[tokio::test]
async fn a_name_in_two_projects_needs_its_project() {
    let tableau = FakeTableau::start().await;
    let daemon = Daemon::start(
        base().section(&tableau.section(Some("3.22"))).rule(
            "refresh.rhai",
            r#"if event.id == "dbt:wev_p1" { tableau_refresh("Quarterly"); }
               if event.id == "dbt:wev_p2" { tableau_refresh(#{ workbook: "Quarterly", project: "Sales" }); }"#,
        ),
    );
    send_dbt(&daemon, SECRET, dbt_completed("wev_p1", "x", "Success")).await;
    let dead = eventually(&daemon, "the ambiguous refresh refused", || {
        let dead = daemon.cli_ok(&["actions", "--status", "dead"]);
        dead.contains("Quarterly").then_some(dead)
    })
    .await;
    assert!(
        dead.contains(
            r#"2 workbooks are named "Quarterly", in projects "Finance", "Sales"; name the project"#
        ),
        "{dead}"
    );
    assert!(tableau.refreshes().is_empty());
    send_dbt(&daemon, SECRET, dbt_completed("wev_p2", "x", "Success")).await;
    eventually(&daemon, "the Sales workbook refreshed", || {
        (tableau.refreshes()
            == vec![(
                "workbooks".to_string(),
                "bb000000-0000-4000-8000-00000000000b".to_string(),
            )])
        .then_some(())
    })
    .await;
}

/// docs/behaviour.md section 7: a redirect from https to plain http is refused, and nothing (no
/// PAT, no token) is sent over plain http.
#[tokio::test]
async fn a_redirect_from_https_to_http_is_refused() {
    let (plain, plain_log) = crate::support::fake::recorder().await;
    let https = crate::support::tls::https_redirect(format!(
        "http://127.0.0.1:{}/api/3.22/auth/signin",
        plain.port()
    ))
    .await;
    let section = format!(
        "[tableau]\nserver = \"{}\"\nsite = \"finance\"\napi_version = \"3.22\"\npat_name = \"freshet\"\npat_secret = {{ env = \"T_PAT\" }}\n",
        https.base()
    );
    let daemon = Daemon::start(
        base()
            .section(&section)
            .env("SSL_CERT_FILE", https.cert_file.to_str().unwrap())
            .rule(
                "refresh.rhai",
                r#"if event.source == "dbt" { tableau_refresh("Finance Overview"); }"#,
            ),
    );
    send_dbt(&daemon, SECRET, dbt_completed("wev_h1", "x", "Success")).await;
    let dead = eventually(&daemon, "the refused refresh", || {
        let dead = daemon.cli_ok(&["actions", "--status", "dead"]);
        dead.contains("tableau_refresh").then_some(dead)
    })
    .await;
    assert!(
        dead.contains("refused a redirect from https to plain http"),
        "{dead}"
    );
    let over_tls = https.log.lock().unwrap().clone();
    assert_eq!(over_tls.len(), 1, "one sign-in, over https");
    assert_eq!(over_tls[0].path, "/api/3.22/auth/signin");
    assert!(
        plain_log.lock().unwrap().is_empty(),
        "something went over plain http"
    );
}

// ---------------------------------------------------------------------------------------
// Mode
// ---------------------------------------------------------------------------------------

fn mode_setup(mode: &FakeMode, slack: &FakeSlack) -> Setup {
    slack
        .configure(mode.configure(base(), Some(HOOK_TOKEN)))
        .rule("revenue_floor.rhai", &example_rule("revenue_floor.rhai"))
        .rule(
            "mode_run_failed.rhai",
            &example_rule("mode_run_failed.rhai"),
        )
}

async fn mode_webhook(daemon: &Daemon, run: &str) -> String {
    let url = format!("https://app.mode.com/api/acme/reports/{REPORT}/runs/{run}");
    send_mode_run_completed(daemon, HOOK_TOKEN, &url).await
}

fn low_revenue() -> QueryResult {
    QueryResult::Rows(json!([
        {"order_date": "2026-08-06", "total_amt_usd": "12.5"},
        {"order_date": "2026-08-05", "total_amt_usd": 2000}
    ]))
}

/// docs/behaviour.md section 7: a cancelled run reaches the rules as such, with no results fetch;
/// the shipped failure rule covers it. A `completed` run has its results fetched.
#[tokio::test]
async fn cancelled_runs_reach_the_rules_and_completed_runs_have_results() {
    let (mode, slack) = (FakeMode::start().await, FakeSlack::start().await);
    let daemon = Daemon::start(mode_setup(&mode, &slack));
    mode.add_run(REPORT, "c1", "cancelled", None);
    let id = mode_webhook(&daemon, "c1").await;
    evaluated(&daemon, &id).await;
    let event = show(&daemon, &id);
    assert_eq!(event["run_state"], "cancelled");
    assert!(event.get("results").is_none(), "{event}");
    assert!(!mode
        .requests()
        .iter()
        .any(|r| r.path.contains("c1/query_runs")));
    eventually(&daemon, "the cancelled run posted", || {
        slack
            .posts()
            .iter()
            .any(|(c, t)| c == "#finance" && t.starts_with("Mode report Daily revenue cancelled:"))
            .then_some(())
    })
    .await;

    mode.add_run_with(
        REPORT,
        "d1",
        "completed",
        Some(vec![("Daily revenue", low_revenue())]),
    );
    let id = mode_webhook(&daemon, "d1").await;
    evaluated(&daemon, &id).await;
    let event = show(&daemon, &id);
    assert_eq!(event["results"]["Daily revenue"][0]["total_amt_usd"], 12.5);
    assert_eq!(event["result_errors"], json!({}));
}

/// docs/behaviour.md section 7: one query's results failing (purged: 404) leaves the other queries'
/// rows in place, with the failure in `result_errors`; a results body over
/// `mode.max_result_bytes` is cut off and named there, and memory stays flat.
#[tokio::test]
async fn one_querys_missing_or_huge_results_leave_the_others_rows() {
    let (mode, slack) = (FakeMode::start().await, FakeSlack::start().await);
    let setup = mode_setup(&mode, &slack);
    let daemon = Daemon::start(Setup {
        extra_config: setup.extra_config.replace(
            "[mode]\n",
            "[mode]\nmax_result_bytes = 1048576\nmax_result_rows = 1000000\n",
        ),
        ..setup
    });
    mode.add_run_with(
        REPORT,
        "p1",
        "succeeded",
        Some(vec![
            ("Daily revenue", low_revenue()),
            ("Old cohort", QueryResult::Purged),
            ("Everything", QueryResult::Huge(48 << 20)),
        ]),
    );
    let before = daemon.rss_bytes();
    let id = mode_webhook(&daemon, "p1").await;
    evaluated(&daemon, &id).await;
    let grown = daemon.rss_bytes().saturating_sub(before);
    let event = show(&daemon, &id);
    assert_eq!(event["results"]["Daily revenue"][0]["total_amt_usd"], 12.5);
    let queries: Vec<&String> = event["results"].as_object().unwrap().keys().collect();
    assert_eq!(
        queries,
        vec!["Daily revenue"],
        "only the rows that arrived whole"
    );
    let errors = &event["result_errors"];
    assert!(
        errors["Old cohort"].as_str().unwrap().contains("HTTP 404"),
        "{errors}"
    );
    assert_eq!(
        errors["Everything"],
        "the results are larger than 1048576 bytes (mode.max_result_bytes)"
    );
    assert!(grown < 24 << 20, "RSS grew by {} MiB", grown >> 20);
    // The alert still fired on the rows that did arrive.
    eventually(&daemon, "the alert", || {
        slack
            .posts()
            .iter()
            .any(|(c, t)| c == "#finance" && t.contains("was 12.5, under 1000"))
            .then_some(())
    })
    .await;
}

/// docs/behaviour.md section 7: Mode's 429 is retried after its Retry-After; an outage longer than
/// the attempts leaves the enrichment dead (listed, with a failure event), and once Mode is
/// back, `freshet retry` fetches the run and the alert fires. `freshet replay` of the
/// unverified event also fetches the run first.
#[tokio::test]
async fn a_mode_outage_ends_dead_and_retry_or_replay_recovers_it() {
    let (mode, slack) = (FakeMode::start().await, FakeSlack::start().await);
    let daemon = Daemon::start(mode_setup(&mode, &slack).rule(
        "action_failures.rhai",
        &example_rule("action_failures.rhai"),
    ));
    // A rate limit first: one 429 with Retry-After: 1.
    mode.add_run_with(
        REPORT,
        "r1",
        "succeeded",
        Some(vec![("Daily revenue", low_revenue())]),
    );
    mode.state.lock().unwrap().faults.add(
        "/runs/r1",
        1,
        Reply::json(429, json!({"message": "rate limited"})).with_header("retry-after", "1"),
    );
    let started = std::time::Instant::now();
    let id = mode_webhook(&daemon, "r1").await;
    evaluated(&daemon, &id).await;
    assert!(
        started.elapsed() >= Duration::from_secs(1),
        "the retry came before Retry-After"
    );
    assert_eq!(show(&daemon, &id)["verified"], true);

    eventually(&daemon, "the alert", || {
        slack
            .posts()
            .iter()
            .any(|(c, t)| c == "#finance" && t.contains("was 12.5"))
            .then_some(())
    })
    .await;

    // An outage: every attempt (3) gets 503. The run that would resolve the alert waits.
    let high = QueryResult::Rows(json!([{"order_date": "2026-08-07", "total_amt_usd": 5000}]));
    mode.add_run_with(
        REPORT,
        "r2",
        "succeeded",
        Some(vec![("Daily revenue", high)]),
    );
    mode.state.lock().unwrap().faults.add(
        "/runs/r2",
        3,
        Reply::json(503, json!({"message": "down"})),
    );
    let id = mode_webhook(&daemon, "r2").await;
    let dead = eventually(&daemon, "the dead enrichment", || {
        let dead = daemon.cli_ok(&["actions", "--status", "dead"]);
        dead.contains("enrich").then_some(dead)
    })
    .await;
    assert!(
        dead.contains(&id) && dead.contains("mode: HTTP 503"),
        "{dead}"
    );
    let listing = daemon.cli_ok(&["events"]);
    assert!(listing.contains("freshet.action.failed"), "{listing}");
    // The rules never saw it as a run without results: nothing resolved it.
    assert!(!slack.posts().iter().any(|(_, t)| t.starts_with("Resolved")));
    // Mode is back; retry it.
    let job = dead
        .split_whitespace()
        .next()
        .unwrap()
        .trim_start_matches('#');
    daemon.cli_ok(&["retry", job]);
    eventually(&daemon, "the resolution after the retry", || {
        slack
            .messages()
            .iter()
            .any(|m| {
                m.channel_id == slack.messages()[0].channel_id
                    && m.text == "Resolved: revenue-floor"
            })
            .then_some(())
    })
    .await;

    // Replay of an event whose run was never fetched fetches it first.
    mode.add_run_with(
        REPORT,
        "r3",
        "succeeded",
        Some(vec![("Daily revenue", low_revenue())]),
    );
    mode.state.lock().unwrap().faults.add(
        "/runs/r3",
        3,
        Reply::json(503, json!({"message": "down"})),
    );
    let id = mode_webhook(&daemon, "r3").await;
    eventually(&daemon, "the second dead enrichment", || {
        daemon
            .cli_ok(&["actions", "--status", "dead"])
            .contains(&id)
            .then_some(())
    })
    .await;
    let replayed = daemon.cli_ok(&["replay", &id]);
    assert!(replayed.contains("fetched from Mode first"), "{replayed}");
    eventually(&daemon, "the replayed event verified and alerting", || {
        let fired = slack
            .posts()
            .iter()
            .filter(|(_, t)| t.contains("was 12.5"))
            .count();
        (show(&daemon, &id)["verified"] == true && fired == 2).then_some(())
    })
    .await;
}

// ---------------------------------------------------------------------------------------
// Slack
// ---------------------------------------------------------------------------------------

/// Runs the report low (`run`): the revenue-floor alert fires; its post.
async fn fire_revenue_alert(
    daemon: &Daemon,
    mode: &FakeMode,
    slack: &FakeSlack,
    run: &str,
) -> crate::support::fake::SlackMessage {
    mode.add_run_with(
        REPORT,
        run,
        "succeeded",
        Some(vec![("Daily revenue", low_revenue())]),
    );
    let id = mode_webhook(daemon, run).await;
    evaluated(daemon, &id).await;
    eventually(daemon, "the alert", || {
        slack
            .messages()
            .into_iter()
            .find(|m| m.text.contains("under 1000"))
    })
    .await
}

/// Runs the report high (`run`): the revenue-floor alert resolves; its post.
async fn resolve_revenue_alert(
    daemon: &Daemon,
    mode: &FakeMode,
    slack: &FakeSlack,
    run: &str,
) -> crate::support::fake::SlackMessage {
    mode.add_run_with(
        REPORT,
        run,
        "succeeded",
        Some(vec![(
            "Daily revenue",
            QueryResult::Rows(json!([{"order_date": "2026-08-07", "total_amt_usd": 5000}])),
        )]),
    );
    let id = mode_webhook(daemon, run).await;
    evaluated(daemon, &id).await;
    eventually(daemon, "the resolution", || {
        slack
            .messages()
            .into_iter()
            .find(|m| m.text == "Resolved: revenue-floor")
    })
    .await
}

/// docs/behaviour.md section 12: a channel renamed while an alert fires keeps the alert's
/// thread: the resolution goes to the channel id Slack answered the first post with,
/// which a rename keeps, not to the name the rule gave, which Slack no longer knows.
#[tokio::test]
async fn an_alert_resolves_in_its_thread_after_the_channel_is_renamed() {
    let (mode, slack) = (FakeMode::start().await, FakeSlack::start().await);
    let daemon = Daemon::start(mode_setup(&mode, &slack));
    let firing = fire_revenue_alert(&daemon, &mode, &slack, "r1").await;
    slack.rename("#finance", "#finance-alerts");
    let resolved = resolve_revenue_alert(&daemon, &mode, &slack, "r2").await;
    assert_eq!(resolved.channel_id, firing.channel_id);
    assert_eq!(resolved.thread_ts.as_deref(), Some(firing.ts.as_str()));
}

/// docs/behaviour.md section 7: an alert posted with the bot token keeps its `ts`; its resolution
/// is posted in that thread. JSON goes with its charset, so Slack has nothing to warn about.
#[tokio::test]
async fn an_alert_resolves_in_the_thread_of_its_post() {
    let (mode, slack) = (FakeMode::start().await, FakeSlack::start().await);
    let daemon = Daemon::start(mode_setup(&mode, &slack).rule(
        "thread.rhai",
        r##"if event.source == "dbt" { slack_post("#finance", #{ text: "reply", thread_ts: event.job_name }); }"##,
    ));
    let firing = fire_revenue_alert(&daemon, &mode, &slack, "t1").await;
    assert_eq!(firing.thread_ts, None);
    let resolved = resolve_revenue_alert(&daemon, &mode, &slack, "t2").await;
    assert_eq!(firing.channel, "#finance");
    assert_eq!(
        resolved.channel, firing.channel_id,
        "replies name the channel by id"
    );
    assert_eq!(resolved.thread_ts.as_deref(), Some(firing.ts.as_str()));

    // Any post can be threaded: here in the alert's thread, named by a dbt job's name.
    send_dbt(
        &daemon,
        SECRET,
        dbt_completed("wev_t1", &firing.ts, "Success"),
    )
    .await;
    let reply = eventually(&daemon, "the threaded reply", || {
        slack.messages().into_iter().find(|m| m.text == "reply")
    })
    .await;
    assert_eq!(reply.thread_ts.as_deref(), Some(firing.ts.as_str()));
    assert!(slack.state.lock().unwrap().warnings.is_empty());
    let sent = slack.log.lock().unwrap().clone();
    assert!(sent
        .iter()
        .all(|s| s.header("content-type") == Some("application/json; charset=utf-8")));
}
