//! Actions against strict, stateful local fakes of Mode, Tableau and Slack: the calls
//! sent, sessions, retries with Retry-After, dead jobs and `freshet retry`, failure
//! events, and exactly-once delivery across a crash.

use crate::support::fake::{
    FakeMode, FakeSlack, FakeTableau, Reply, SLACK_BOT_TOKEN, SLACK_WEBHOOK_PATH,
    TABLEAU_PAT_SECRET,
};
use crate::support::{count_in_log, dbt_completed, eventually, send_dbt, Daemon, Setup};
use freshet::journal::{Admin, JobSummary, SqliteJournal};

const SECRET: &str = "actions-test-secret-5";

struct Fakes {
    mode: FakeMode,
    tableau: FakeTableau,
    slack: FakeSlack,
}

async fn fakes() -> Fakes {
    Fakes {
        mode: FakeMode::start().await,
        tableau: FakeTableau::start().await,
        slack: FakeSlack::start().await,
    }
}

fn setup(fakes: &Fakes, max_attempts: u32) -> Setup {
    setup_with(fakes, max_attempts, true)
}

/// The config for the fakes; without `tableau`, the [tableau] section is left out.
fn setup_with(fakes: &Fakes, max_attempts: u32, tableau: bool) -> Setup {
    let tableau_section = if tableau {
        fakes.tableau.section(Some("3.22"))
    } else {
        String::new()
    };
    let setup = Setup::new(&format!(
        r#"
[dbt]
webhook_secrets = [{{ env = "T_SECRET" }}]

{tableau_section}
[actions]
max_attempts = {max_attempts}
backoff_initial_ms = 10
backoff_max_ms = 40
timeout_ms = 5000
"#,
    ))
    .env("T_SECRET", SECRET)
    .env("T_PAT", TABLEAU_PAT_SECRET);
    let setup = fakes.mode.configure(setup, None);
    fakes.slack.configure(setup)
}

fn jobs(daemon: &Daemon) -> Vec<JobSummary> {
    SqliteJournal::open(&daemon.dir.join("journal.db"))
        .unwrap()
        .jobs(None, 1000)
        .unwrap()
}

/// Waits until `expected` calls have been made and every job is finished (succeeded or
/// dead), the jobs following Tableau refreshes included, and returns the calls' jobs.
async fn settled(daemon: &Daemon, expected: usize) -> Vec<JobSummary> {
    eventually(daemon, &format!("{expected} finished actions"), || {
        let jobs = jobs(daemon);
        let done = jobs
            .iter()
            .all(|j| j.status == "succeeded" || j.status == "dead");
        let calls: Vec<JobSummary> = jobs
            .into_iter()
            .filter(|j| j.kind != "tableau_job")
            .collect();
        (done && calls.len() >= expected).then_some(calls)
    })
    .await
}

#[tokio::test]
async fn tableau_refresh_signs_in_once_finds_the_id_and_renews_an_expired_session() {
    let fakes = fakes().await;
    let daemon = Daemon::start(setup(&fakes, 3).rule(
        "r.rhai",
        r#"if event.source == "dbt" { tableau_refresh("Finance Overview"); }"#,
    ));

    send_dbt(
        &daemon,
        SECRET,
        dbt_completed("wev_t1", "nightly", "Success"),
    )
    .await;
    let done = settled(&daemon, 1).await;
    assert_eq!(done[0].status, "succeeded", "{done:?}");
    assert_eq!(
        fakes.tableau.refreshes(),
        vec![(
            "workbooks".to_string(),
            "9a1b2c3d-0000-4000-8000-000000000001".to_string()
        )]
    );
    let lookups: Vec<String> = fakes
        .tableau
        .log
        .lock()
        .unwrap()
        .iter()
        .filter(|s| s.method == "GET" && s.path.ends_with("/workbooks"))
        .map(|s| s.query.clone())
        .collect();
    assert_eq!(
        lookups,
        vec!["filter=name:eq:Finance%20Overview&pageSize=100&pageNumber=1"]
    );

    // A second refresh reuses the session.
    send_dbt(
        &daemon,
        SECRET,
        dbt_completed("wev_t2", "nightly", "Success"),
    )
    .await;
    settled(&daemon, 2).await;
    assert_eq!(fakes.tableau.sign_ins(), 1);

    // An expired session is renewed once and the call goes through.
    fakes.tableau.expire_session();
    send_dbt(
        &daemon,
        SECRET,
        dbt_completed("wev_t3", "nightly", "Success"),
    )
    .await;
    let done = settled(&daemon, 3).await;
    assert!(done.iter().all(|j| j.status == "succeeded"), "{done:?}");
    assert_eq!(fakes.tableau.sign_ins(), 2, "{:#?}", fakes.tableau.calls());
    assert_eq!(fakes.tableau.refreshes().len(), 3);
    let log = daemon.log();
    assert!(
        !log.contains(TABLEAU_PAT_SECRET) && !log.contains("tok1|"),
        "a secret or session token was logged:\n{log}"
    );
}

/// docs/behaviour.md section 12: Tableau keeps one session per personal access token, so
/// two instances sharing a PAT sign each other out. A session refused right after
/// freshet signed in is not a final error: the attempt is retried with the backoff, and
/// the log says to give each instance its own PAT.
#[tokio::test]
async fn a_session_taken_by_another_sign_in_with_the_same_pat_is_retried_not_dead() {
    let fakes = fakes().await;
    // Our sign-in and our sign-in again are each followed by a rival's.
    fakes.tableau.state.lock().unwrap().rival_sign_ins = 2;
    let daemon = Daemon::start(setup(&fakes, 3).rule(
        "r.rhai",
        r#"if event.source == "dbt" { tableau_refresh("Finance Overview"); }"#,
    ));
    send_dbt(
        &daemon,
        SECRET,
        dbt_completed("wev_pat", "nightly", "Success"),
    )
    .await;
    let done = settled(&daemon, 1).await;
    assert_eq!(done[0].status, "succeeded", "{done:?}");
    assert_eq!(
        done[0].attempt, 2,
        "the first attempt was retried: {done:?}"
    );
    assert_eq!(fakes.tableau.refreshes().len(), 1);
    assert_eq!(fakes.tableau.sign_ins(), 3);
    assert!(
        count_in_log(&daemon, "one PAT per instance") > 0,
        "{}",
        daemon.log()
    );
}

/// docs/behaviour.md section 12: a reload that points `tableau.server` elsewhere drops the
/// session signed in with the old server: the next refresh signs in at the new one and
/// goes there, not to the old server with its old token.
#[tokio::test]
async fn a_reload_that_changes_the_tableau_server_signs_in_anew() {
    let fakes = fakes().await;
    let other = FakeTableau::start().await;
    let daemon = Daemon::start(setup(&fakes, 3).rule(
        "r.rhai",
        r#"if event.source == "dbt" { tableau_refresh("Finance Overview"); }"#,
    ));
    send_dbt(
        &daemon,
        SECRET,
        dbt_completed("wev_old", "nightly", "Success"),
    )
    .await;
    settled(&daemon, 1).await;
    assert_eq!(fakes.tableau.refreshes().len(), 1);

    let config = std::fs::read_to_string(daemon.config_path()).unwrap();
    let moved = config.replace(&fakes.tableau.base(), &other.base());
    assert_ne!(config, moved);
    std::fs::write(daemon.config_path(), moved).unwrap();
    daemon.signal("HUP");
    daemon.wait_for_log(
        "Configuration reloaded.",
        std::time::Duration::from_secs(10),
    );
    send_dbt(
        &daemon,
        SECRET,
        dbt_completed("wev_new", "nightly", "Success"),
    )
    .await;
    let done = settled(&daemon, 2).await;
    assert!(done.iter().all(|j| j.status == "succeeded"), "{done:?}");
    assert_eq!(other.sign_ins(), 1, "a sign-in at the new server");
    assert_eq!(
        other.refreshes().len(),
        1,
        "the refresh went to the new server"
    );
    assert_eq!(
        fakes.tableau.refreshes().len(),
        1,
        "nothing more for the old one"
    );
}

#[tokio::test]
async fn a_sign_in_redirected_on_the_same_server_is_posted_again_there_and_used() {
    let fakes = fakes().await;
    fakes.tableau.state.lock().unwrap().redirect_signin_to =
        Some("/pod/api/3.22/auth/signin".into());
    let daemon = Daemon::start(setup(&fakes, 3).rule(
        "r.rhai",
        r#"if event.source == "dbt" { tableau_refresh("Finance Overview"); }"#,
    ));
    send_dbt(
        &daemon,
        SECRET,
        dbt_completed("wev_p1", "nightly", "Success"),
    )
    .await;
    let done = settled(&daemon, 1).await;
    assert_eq!(done[0].status, "succeeded", "{done:?}");
    let calls: Vec<String> = fakes
        .tableau
        .log
        .lock()
        .unwrap()
        .iter()
        .map(|s| format!("{} {}", s.method, s.path))
        .collect();
    assert_eq!(calls[0], "POST /api/3.22/auth/signin");
    assert_eq!(calls[1], "POST /pod/api/3.22/auth/signin", "{calls:#?}");
    assert!(
        calls[2..]
            .iter()
            .all(|c| c.contains(" /pod/api/3.22/sites/")),
        "later calls go where the sign-in was answered: {calls:#?}"
    );
    assert_eq!(fakes.tableau.sign_ins(), 1);
}

/// docs/behaviour.md section 7 and the hardening issue: a sign-in redirected to another host must
/// not take the PAT there.
#[tokio::test]
async fn a_sign_in_redirected_to_another_host_is_refused_and_sends_it_nothing() {
    let fakes = fakes().await;
    let (elsewhere, seen_elsewhere) = crate::support::fake::recorder().await;
    // "localhost" is another host name than the configured 127.0.0.1.
    fakes.tableau.state.lock().unwrap().redirect_signin_to = Some(format!(
        "http://localhost:{}/api/3.22/auth/signin",
        elsewhere.port()
    ));
    let daemon = Daemon::start(setup(&fakes, 3).rule(
        "r.rhai",
        r#"if event.source == "dbt" { tableau_refresh("Finance Overview"); }"#,
    ));
    send_dbt(
        &daemon,
        SECRET,
        dbt_completed("wev_p2", "nightly", "Success"),
    )
    .await;
    let done = settled(&daemon, 1).await;
    assert_eq!(done[0].status, "dead", "{done:?}");
    let error = done[0].last_error.as_deref().unwrap_or_default();
    assert!(
        error.contains(&format!(
            "refused a redirect to another server (localhost:{})",
            elsewhere.port()
        )),
        "{error}"
    );
    assert!(
        seen_elsewhere.lock().unwrap().is_empty(),
        "the other host was contacted"
    );
    assert_eq!(
        fakes.tableau.log.lock().unwrap().len(),
        1,
        "one sign-in, not followed"
    );
}

#[tokio::test]
async fn names_with_commas_already_queued_unknown_names_and_datasources() {
    let fakes = fakes().await;
    fakes.tableau.state.lock().unwrap().faults.add("/workbooks/3cc6cd06-89ce-4fdc-b935-5294135d6d42/refresh", 1, Reply::json(409, serde_json::json!({
        "error": {"code": "409093", "summary": "Resource Conflict", "detail": "Job for 'Sales Overview, Q3' is already queued."}})));
    // "Quarterly" is a workbook in two projects: a bare name cannot say which is meant.
    let daemon = Daemon::start(setup(&fakes, 3).rule(
        "r.rhai",
        r#"if event.source == "dbt" { tableau_refresh("Sales Overview, Q3"); tableau_refresh("No Such Book"); tableau_refresh_datasource("Revenue Extract"); tableau_refresh("Quarterly"); }"#,
    ));
    send_dbt(
        &daemon,
        SECRET,
        dbt_completed("wev_n1", "nightly", "Success"),
    )
    .await;
    let done = settled(&daemon, 4).await;
    let by_arg = |needle: &str| {
        done.iter()
            .find(|j| j.kind != "tableau_job" && j.payload.to_string().contains(needle))
            .unwrap()
            .clone()
    };
    let comma = by_arg("Sales Overview, Q3");
    assert_eq!(
        comma.status, "succeeded",
        "409093 counts as success: {comma:?}"
    );
    assert_eq!(comma.result.as_ref().unwrap()["already_queued"], true);
    let missing = by_arg("No Such Book");
    assert_eq!((missing.status.as_str(), missing.attempt), ("dead", 1));
    assert!(
        missing
            .last_error
            .as_deref()
            .unwrap()
            .contains("no workbook named \"No Such Book\""),
        "{missing:?}"
    );
    assert_eq!(by_arg("Revenue Extract").status, "succeeded");
    let ambiguous = by_arg("Quarterly");
    assert_eq!((ambiguous.status.as_str(), ambiguous.attempt), ("dead", 1));
    assert!(
        ambiguous
            .last_error
            .as_deref()
            .unwrap()
            .contains("2 workbooks are named \"Quarterly\", in projects \"Finance\", \"Sales\""),
        "{ambiguous:?}"
    );
    assert!(fakes.tableau.refreshes().contains(&(
        "datasources".to_string(),
        "7d6c5b4a-0000-4000-8000-000000000002".to_string()
    )));
    // The comma name was looked up without a filter (Tableau refuses ',' in filters).
    assert!(fakes
        .tableau
        .log
        .lock()
        .unwrap()
        .iter()
        .any(|s| s.method == "GET" && !s.query.contains("filter=")));
}

#[tokio::test]
async fn mode_run_sends_basic_auth_and_parameters() {
    let fakes = fakes().await;
    let daemon = Daemon::start(setup(&fakes, 3).rule(
        "r.rhai",
        r#"mode_run("2b3c4d5e6f70", #{ region: "EU", run_id: event.run_id });"#,
    ));
    send_dbt(
        &daemon,
        SECRET,
        dbt_completed("wev_m1", "nightly", "Success"),
    )
    .await;
    let done = settled(&daemon, 1).await;
    assert_eq!(done[0].status, "succeeded", "{done:?}");
    let requests = fakes.mode.requests();
    assert_eq!(requests.len(), 1);
    let post = &requests[0];
    assert_eq!(
        (post.method.as_str(), post.path.as_str()),
        ("POST", "/api/acme/reports/2b3c4d5e6f70/runs")
    );
    assert_eq!(post.header("accept"), Some("application/hal+json"));
    // base64("mode-api-token-1:mode-api-secret-1")
    assert_eq!(
        post.header("authorization"),
        Some("Basic bW9kZS1hcGktdG9rZW4tMTptb2RlLWFwaS1zZWNyZXQtMQ==")
    );
    assert_eq!(
        post.json(),
        serde_json::json!({"parameters": {"region": "EU", "run_id": 777}})
    );
    assert_eq!(
        done[0].result.as_ref().unwrap()["run_token"],
        "run000000001",
        "the run token is kept"
    );
}

#[tokio::test]
async fn slack_both_paths_and_rate_limits_deliver_exactly_once() {
    let fakes = fakes().await;
    fakes.slack.state.lock().unwrap().faults.add(
        "/api/chat.postMessage",
        2,
        Reply::json(
            429,
            serde_json::json!({"ok": false, "error": "ratelimited"}),
        )
        .with_header("Retry-After", "1"),
    );
    let daemon = Daemon::start(setup(&fakes, 5).rule("r.rhai", r##"slack_post("to the webhook"); slack_post("#finance", #{ text: "to a channel", blocks: [] });"##));
    send_dbt(
        &daemon,
        SECRET,
        dbt_completed("wev_s1", "nightly", "Success"),
    )
    .await;
    let done = settled(&daemon, 2).await;
    assert!(done.iter().all(|j| j.status == "succeeded"), "{done:?}");
    let mut posts = fakes.slack.posts();
    posts.sort();
    assert_eq!(
        posts,
        vec![
            ("#finance".to_string(), "to a channel".to_string()),
            ("webhook".to_string(), "to the webhook".to_string())
        ]
    );
    let channel_job = done
        .iter()
        .find(|j| j.payload["channel"] == "#finance")
        .unwrap();
    assert_eq!(channel_job.attempt, 3, "two 429s then success");
    let calls = fakes
        .slack
        .log
        .lock()
        .unwrap()
        .iter()
        .filter(|s| s.path == "/api/chat.postMessage")
        .count();
    assert_eq!(calls, 3);
    let log = daemon.log();
    assert!(
        !log.contains("hooksecret123") && !log.contains(SLACK_BOT_TOKEN),
        "a Slack secret was logged:\n{log}"
    );
}

#[tokio::test]
async fn server_errors_until_dead_then_retry_and_failure_events() {
    let fakes = fakes().await;
    fakes.mode.state.lock().unwrap().faults.add(
        "/runs",
        100,
        Reply::json(500, serde_json::json!({"message": "boom"})),
    );
    let daemon = Daemon::start(
        setup(&fakes, 3)
            .rule("run.rhai", r#"if event.source == "dbt" { mode_run("2b3c4d5e6f70"); }"#)
            .rule("bad.rhai", r##"if event.source == "dbt" { slack_post("#not-a-member", "hello"); }"##)
            .rule("failures.rhai", r#"if event.type == "freshet.action.failed" { slack_post(`failed: ${event.action}: ${event.error}`); }"#),
    );
    send_dbt(
        &daemon,
        SECRET,
        dbt_completed("wev_d1", "nightly", "Success"),
    )
    .await;
    // mode_run dies after 3 attempts; the Slack post to a channel the bot is not in dies at
    // once; each failure event becomes one more (successful) webhook post.
    let done = settled(&daemon, 4).await;
    let mode_job = done.iter().find(|j| j.kind == "mode_run").unwrap().clone();
    assert_eq!(
        (mode_job.status.as_str(), mode_job.attempt),
        ("dead", 3),
        "{mode_job:?}"
    );
    let not_member = done
        .iter()
        .find(|j| j.payload["channel"] == "#not-a-member")
        .unwrap();
    assert_eq!(
        (not_member.status.as_str(), not_member.attempt),
        ("dead", 1)
    );
    assert!(not_member
        .last_error
        .as_deref()
        .unwrap()
        .contains("not_in_channel"));
    let webhook_posts: Vec<String> = fakes
        .slack
        .posts()
        .into_iter()
        .filter(|(c, _)| c == "webhook")
        .map(|(_, t)| t)
        .collect();
    assert_eq!(webhook_posts.len(), 2, "{webhook_posts:?}");
    assert!(
        webhook_posts
            .iter()
            .any(|t| t.starts_with("failed: mode_run: mode: HTTP 500")),
        "{webhook_posts:?}"
    );

    let dead = daemon.cli_ok(&["actions", "--status", "dead"]);
    assert!(
        dead.contains(&format!("#{}  mode_run", mode_job.id)),
        "{dead}"
    );

    // Heal the fake, retry: delivered once.
    fakes.mode.state.lock().unwrap().faults.heal();
    daemon.cli_ok(&["retry", &mode_job.id.to_string()]);
    eventually(&daemon, "the retried mode_run", || {
        jobs(&daemon)
            .into_iter()
            .find(|j| j.id == mode_job.id && j.status == "succeeded")
    })
    .await;
    let runs = fakes.mode.state.lock().unwrap().runs.len();
    assert_eq!(runs, 1, "the healed Mode started exactly one run");
}

#[tokio::test]
async fn a_bad_request_is_final_and_unconfigured_services_fail_clearly() {
    let fakes = fakes().await;
    fakes.slack.state.lock().unwrap().faults.add(
        SLACK_WEBHOOK_PATH,
        1,
        Reply::text(400, "invalid_payload"),
    );
    let setup = setup_with(&fakes, 5, false);
    let daemon = Daemon::start(setup.rule(
        "r.rhai",
        r#"if event.source == "dbt" { slack_post("x"); tableau_refresh("Finance Overview"); }"#,
    ));
    send_dbt(
        &daemon,
        SECRET,
        dbt_completed("wev_b1", "nightly", "Success"),
    )
    .await;
    let done = settled(&daemon, 2).await;
    let post = done.iter().find(|j| j.kind == "slack_post").unwrap();
    assert_eq!(
        (post.status.as_str(), post.attempt),
        ("dead", 1),
        "{post:?}"
    );
    let refresh = done.iter().find(|j| j.kind == "tableau_refresh").unwrap();
    assert_eq!(
        refresh.last_error.as_deref(),
        Some("tableau is not configured")
    );
    let health: serde_json::Value = daemon.get_json("/healthz").await;
    assert_eq!(health["status"], "ok", "the daemon keeps running");
}

#[tokio::test]
async fn after_kill_9_every_pending_action_runs_exactly_once() {
    let fakes = fakes().await;
    // Slack fails everything until healed, so the actions stay pending across the crash.
    fakes.slack.state.lock().unwrap().faults.add(
        SLACK_WEBHOOK_PATH,
        10_000,
        Reply::text(503, "unavailable"),
    );
    let mut setup = setup(&fakes, 1000);
    // After its first failed attempt each job waits 5 s, so once every job has failed once
    // and the fake has answered every attempt, nothing is in flight when the process dies.
    // (A request in flight at a crash is the one honest at-least-once case: ARCHITECTURE.md.)
    setup.extra_config = setup
        .extra_config
        .replace("backoff_initial_ms = 10", "backoff_initial_ms = 5000")
        .replace("backoff_max_ms = 40", "backoff_max_ms = 5000");
    let mut daemon = Daemon::start(setup.rule("r.rhai", r#"slack_post(`event ${event.id}`);"#));
    for i in 0..12 {
        send_dbt(
            &daemon,
            SECRET,
            dbt_completed(&format!("wev_k{i}"), "nightly", "Success"),
        )
        .await;
    }
    eventually(
        &daemon,
        "12 actions that each failed once, none in flight",
        || {
            let jobs = jobs(&daemon);
            let answered = fakes.slack.log.lock().unwrap().len();
            let quiet = jobs.len() == 12
                && jobs
                    .iter()
                    .all(|j| j.status == "retrying" && j.attempt == 1)
                && answered == 12;
            quiet.then_some(())
        },
    )
    .await;
    daemon.kill();
    fakes.slack.state.lock().unwrap().faults.heal();
    daemon.spawn();
    let done = settled(&daemon, 12).await;
    assert!(
        done.iter()
            .all(|j| j.status == "succeeded" && j.attempt == 2),
        "{done:?}"
    );
    let mut posts: Vec<String> = fakes.slack.posts().into_iter().map(|(_, t)| t).collect();
    assert_eq!(posts.len(), 12, "no post was delivered twice: {posts:#?}");
    posts.sort();
    posts.dedup();
    assert_eq!(posts.len(), 12, "every event was posted");
}
