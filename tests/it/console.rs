//! docs/behaviour.md section 16: the console, over HTTP: its pages with the journal's data,
//! the Host allowlist, the token (Bearer or the login form's cookie), CSRF and same-origin
//! checks on writes, read-only mode, the headers on every answer, escaping, keyset
//! pagination, and retrying dead actions.

use std::time::Duration;

use reqwest::StatusCode;
use serde_json::json;

use crate::support::fake::{FakeSlack, Reply};
use crate::support::{dbt_completed, eventually, send_dbt, Daemon, Setup};

const SECRET: &str = "console-secret-1";
const TOKEN: &str = "console-token-0123456789";

/// Every dbt event posts to Slack, which is made to refuse: each post ends dead at once.
fn setup(slack: &FakeSlack, admin: &str) -> Setup {
    slack
        .configure(Setup::dbt(SECRET, 1, 10, 20))
        .section(&format!("[admin]\nlisten = \"127.0.0.1:0\"\n{admin}"))
        .rule(
            "post.rhai",
            r#"if event.source == "dbt" { slack_post(`run ${event.run_id} of ${event.job_name}`); }"#,
        )
}

/// The console's base URL, from the line `serve` logs.
fn console_url(daemon: &Daemon) -> String {
    daemon.wait_for_log("Console listening.", Duration::from_secs(10));
    let log = daemon.log();
    let line = log
        .lines()
        .find(|l| l.contains("Console listening."))
        .unwrap();
    line.split_whitespace()
        .find_map(|w| w.strip_prefix("url="))
        .unwrap()
        .trim_end_matches('/')
        .to_string()
}

fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap()
}

async fn get(url: &str, auth: Option<&str>) -> reqwest::Response {
    let mut request = client().get(url);
    if let Some(auth) = auth {
        request = request.header("authorization", auth);
    }
    request.send().await.unwrap()
}

fn bearer() -> Option<&'static str> {
    Some("Bearer console-token-0123456789")
}

fn assert_security_headers(response: &reqwest::Response) {
    let headers = response.headers();
    assert_eq!(
        headers["content-security-policy"],
        "default-src 'none'; style-src 'self'; img-src 'self'; form-action 'self'; frame-ancestors 'none'"
    );
    assert_eq!(headers["cache-control"], "no-store");
    assert_eq!(headers["x-content-type-options"], "nosniff");
    assert_eq!(headers["referrer-policy"], "same-origin");
}

/// The value of the hidden CSRF field on a page.
fn csrf_of(page: &str) -> String {
    let at = page
        .find("name=\"csrf\" value=\"")
        .expect("a form with a CSRF token")
        + 19;
    page[at..].split('"').next().unwrap().to_string()
}

/// Dead Slack posts, one per dbt event sent.
async fn dead_posts(daemon: &Daemon, slack: &FakeSlack, n: usize) {
    slack
        .state
        .lock()
        .unwrap()
        .faults
        .add("/services/", n, Reply::text(400, "invalid_payload"));
    for i in 0..n {
        let body = dbt_completed(&format!("wev_console_{i}"), "nightly", "Success");
        send_dbt(daemon, SECRET, body).await;
    }
    eventually(daemon, "the dead posts", || {
        let dead = daemon.cli_ok(&["actions", "--status", "dead"]);
        (dead.lines().count() >= n).then_some(())
    })
    .await;
}

/// Without credentials nothing is shown; Bearer and the login form's cookie both work
/// (the cookie is HttpOnly and SameSite=Strict); a wrong Host is 421; every answer has
/// the security headers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_console_shows_nothing_without_the_token() {
    let slack = FakeSlack::start().await;
    let daemon = Daemon::start(setup(&slack, &format!("token = \"{TOKEN}\"")));
    let url = console_url(&daemon);
    send_dbt(
        &daemon,
        SECRET,
        dbt_completed("wev_secret_data", "nightly", "Success"),
    )
    .await;

    for path in [
        "/",
        "/events",
        "/events/dbt:wev_secret_data",
        "/actions",
        "/alerts",
        "/rules",
    ] {
        let response = get(&format!("{url}{path}"), None).await;
        assert_eq!(response.status(), StatusCode::SEE_OTHER, "{path}");
        assert_eq!(response.headers()["location"], "/login");
        assert_security_headers(&response);
        assert!(!response.text().await.unwrap().contains("wev_secret_data"));
    }
    let response = client()
        .post(format!("{url}/actions/retry-all"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
    let response = get(&format!("{url}/"), Some("Bearer not-the-token")).await;
    assert_eq!(response.status(), StatusCode::SEE_OTHER);

    let response = client()
        .get(format!("{url}/"))
        .header("host", "evil.example")
        .header("authorization", bearer().unwrap())
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::MISDIRECTED_REQUEST);
    assert_security_headers(&response);

    let response = get(&format!("{url}/events"), bearer()).await;
    assert_eq!(response.status(), StatusCode::OK);
    assert_security_headers(&response);
    assert!(response
        .text()
        .await
        .unwrap()
        .contains("dbt:wev_secret_data"));

    // The login form: a wrong token is refused, the right one sets the cookie.
    let host = url.trim_start_matches("http://").to_string();
    let login = |token: &str| {
        client()
            .post(format!("{url}/login"))
            .header("origin", format!("http://{host}"))
            .form(&[("token", token)])
            .send()
    };
    assert_eq!(
        login("wrong").await.unwrap().status(),
        StatusCode::UNAUTHORIZED
    );
    let response = login(TOKEN).await.unwrap();
    assert_eq!(response.status(), StatusCode::SEE_OTHER);
    let cookie = response.headers()["set-cookie"]
        .to_str()
        .unwrap()
        .to_string();
    assert!(
        cookie.contains("HttpOnly") && cookie.contains("SameSite=Strict"),
        "{cookie}"
    );
    assert!(!cookie.contains("Secure"), "plain HTTP: {cookie}");
    // Behind a proxy that ends TLS, the page's origin is https: the cookie is Secure.
    let response = client()
        .post(format!("{url}/login"))
        .header("origin", format!("https://{host}"))
        .form(&[("token", TOKEN)])
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::SEE_OTHER);
    let secure = response.headers()["set-cookie"].to_str().unwrap();
    assert!(
        secure.contains("HttpOnly") && secure.contains("; Secure"),
        "{secure}"
    );
    let session = cookie.split(';').next().unwrap().to_string();
    let page = client()
        .get(format!("{url}/events"))
        .header("cookie", &session)
        .send()
        .await
        .unwrap();
    assert_eq!(page.status(), StatusCode::OK);
    assert!(page.text().await.unwrap().contains("dbt:wev_secret_data"));
    assert!(
        !daemon.log().contains(TOKEN),
        "the console token was logged"
    );
}

/// A non-loopback `admin.listen` without `admin.token` is refused by `check` and `serve`.
#[test]
fn a_console_off_loopback_needs_a_token() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("freshet.toml");
    std::fs::write(
        &config,
        "[server]\nlisten = \"127.0.0.1:0\"\n[admin]\nlisten = \"0.0.0.0:0\"\n",
    )
    .unwrap();
    for command in ["check", "serve"] {
        let output = std::process::Command::new(crate::support::BIN)
            .args([command, "--config", config.to_str().unwrap()])
            .env_remove("FRESHET_CONFIG")
            .output()
            .unwrap();
        assert_eq!(output.status.code(), Some(1), "{command}");
        let said = format!(
            "{}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
        assert!(
            said.contains(
                "admin.token: required when admin.listen (0.0.0.0:0) is not a loopback address"
            ),
            "{command}: {said}"
        );
    }
}

/// The pages show what the journal holds: the overview's counts, the dead actions, an
/// event with its rule run and each failed attempt, alerts, deadlines, rules and their
/// load errors; a value with `<script>` is escaped.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_pages_show_the_journal() {
    let slack = FakeSlack::start().await;
    let daemon = Daemon::start(
        setup(&slack, "")
            .rule("broken.rhai", "if event.type == { slack_post(\"x\"); }")
            .section("[deadlines.nightly]\ncron = \"0 7 * * *\"\n"),
    );
    let url = console_url(&daemon);
    dead_posts(&daemon, &slack, 1).await;
    let body = serde_json::to_vec(&json!({
        "accountId": 1, "eventId": "wev_script", "eventType": "job.run.completed",
        "timestamp": "2026-11-25T10:00:00Z", "webhookName": "t",
        "data": {"jobId": "1", "jobName": "<script>alert(1)</script>", "runId": "9",
                 "runStatus": "Success", "runStatusCode": 10}
    }))
    .unwrap();
    send_dbt(&daemon, SECRET, body).await;

    let page = |path: &str| {
        let url = format!("{url}{path}");
        async move {
            let response = get(&url, None).await;
            assert_eq!(response.status(), StatusCode::OK, "{url}");
            assert_security_headers(&response);
            response.text().await.unwrap()
        }
    };
    let overview = page("/").await;
    assert!(
        overview.contains("<a href=\"/actions?status=dead\">dead</a></td><td>1</td>"),
        "{overview}"
    );
    assert!(
        overview.contains("broken.rhai"),
        "the rule's load error is on the overview"
    );

    let dead = page("/actions?status=dead").await;
    assert!(
        dead.contains("slack_post") && dead.contains("dbt:wev_console_0"),
        "{dead}"
    );
    assert!(dead.contains("HTTP 400"), "{dead}");

    let event = page("/events/dbt%3Awev_console_0").await;
    assert!(
        event.contains("<td>post</td><td>fired</td><td>1</td>"),
        "{event}"
    );
    assert!(
        event.contains("slack_post") && event.contains("dead"),
        "{event}"
    );
    // The attempt: its number, when it started, how long it took, how it ended, why.
    let attempt = event
        .split("<tr><td>1</td><td>")
        .nth(1)
        .expect("the attempt is listed")
        .split("</tr>")
        .next()
        .unwrap();
    assert!(attempt.starts_with("20"), "a start time: {attempt}");
    assert!(
        attempt.contains(" ms</td><td><span class=\"status dead\">dead</span>")
            || attempt.contains(" s</td><td><span class=\"status dead\">dead</span>"),
        "a duration and the status: {attempt}"
    );
    assert!(attempt.contains("HTTP 400"), "the error: {attempt}");

    eventually(&daemon, "the script event", || {
        daemon
            .cli_ok(&["events"])
            .contains("wev_script")
            .then_some(())
    })
    .await;
    let escaped = page("/events/dbt%3Awev_script").await;
    assert!(!escaped.contains("<script>alert(1)</script>"), "{escaped}");
    assert!(
        escaped.contains("&lt;script&gt;alert(1)&lt;/script&gt;"),
        "{escaped}"
    );
    let list = page("/events").await;
    assert!(!list.contains("<script>"), "{list}");

    let rules = page("/rules").await;
    assert!(
        rules.contains("<td>post</td>") && rules.contains("broken.rhai:1:"),
        "{rules}"
    );
    let deadlines = page("/deadlines").await;
    assert!(
        deadlines.contains("nightly") || deadlines.contains("None yet."),
        "{deadlines}"
    );
    let alerts = page("/alerts").await;
    assert!(alerts.contains("<h1>Alerts</h1>"), "{alerts}");
    let css = get(&format!("{url}{}", freshet_css_path(&overview)), None).await;
    assert_eq!(css.headers()["content-type"], "text/css; charset=utf-8");
}

fn freshet_css_path(page: &str) -> String {
    let at = page.find("href=\"/static/console.").unwrap() + 6;
    page[at..].split('"').next().unwrap().to_string()
}

/// A write needs the session's CSRF token and the console's own origin (else 403, and
/// nothing changes); with both, a dead action is retried and reaches Slack once it has
/// healed; "retry all matching" re-queues every dead one; post/redirect/get.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_need_the_csrf_token_and_retry_dead_actions() {
    let slack = FakeSlack::start().await;
    let daemon = Daemon::start(setup(&slack, ""));
    let url = console_url(&daemon);
    let origin = url.clone();
    dead_posts(&daemon, &slack, 3).await;

    let response = get(&format!("{url}/actions?status=dead"), None).await;
    let cookie = response.headers()["set-cookie"]
        .to_str()
        .unwrap()
        .to_string();
    let session = cookie.split(';').next().unwrap().to_string();
    let page = response.text().await.unwrap();
    let csrf = csrf_of(&page);
    let dead_id = daemon
        .cli_ok(&["actions", "--status", "dead"])
        .split_whitespace()
        .next()
        .unwrap()
        .trim_start_matches('#')
        .to_string();
    let post = |path: String, origin: Option<String>, form: Vec<(&'static str, String)>| {
        let mut request = client()
            .post(format!("{url}{path}"))
            .header("cookie", &session)
            .form(&form);
        if let Some(origin) = origin {
            request = request.header("origin", origin);
        }
        request.send()
    };
    let refused = [
        post(
            format!("/actions/{dead_id}/retry"),
            Some(origin.clone()),
            vec![],
        ),
        post(
            format!("/actions/{dead_id}/retry"),
            Some(origin.clone()),
            vec![("csrf", "0".repeat(64))],
        ),
        post(
            format!("/actions/{dead_id}/retry"),
            Some("http://evil.example".into()),
            vec![("csrf", csrf.clone())],
        ),
        post(
            format!("/actions/{dead_id}/retry"),
            None,
            vec![("csrf", csrf.clone())],
        ),
    ];
    for response in refused {
        let response = response.await.unwrap();
        assert_eq!(response.status(), StatusCode::FORBIDDEN);
        assert_security_headers(&response);
    }
    assert_eq!(
        daemon
            .cli_ok(&["actions", "--status", "dead"])
            .lines()
            .count(),
        3,
        "a refused write changed something"
    );

    // Healed: one retried, then all that match.
    slack.state.lock().unwrap().faults.heal();
    let response = post(
        format!("/actions/{dead_id}/retry"),
        Some(origin.clone()),
        vec![("csrf", csrf.clone())],
    )
    .await
    .unwrap();
    assert_eq!(response.status(), StatusCode::SEE_OTHER);
    assert!(response.headers()["location"]
        .to_str()
        .unwrap()
        .starts_with("/actions?status=dead&notice=1+re-queued"));
    eventually(&daemon, "the retried post", || {
        (slack.posts().len() == 1).then_some(())
    })
    .await;
    let response = post(
        "/actions/retry-all".into(),
        Some(origin.clone()),
        vec![("csrf", csrf.clone()), ("kind", "slack_post".into())],
    )
    .await
    .unwrap();
    assert_eq!(response.status(), StatusCode::SEE_OTHER);
    eventually(&daemon, "every post", || {
        (slack.posts().len() == 3).then_some(())
    })
    .await;
    assert_eq!(
        daemon.cli_ok(&["actions", "--status", "dead"]).trim(),
        "no actions"
    );
}

/// `admin.read_only`: no form is shown and every write is refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn read_only_shows_no_forms_and_refuses_writes() {
    let slack = FakeSlack::start().await;
    let daemon = Daemon::start(setup(&slack, "read_only = true"));
    let url = console_url(&daemon);
    dead_posts(&daemon, &slack, 1).await;
    for path in [
        "/actions?status=dead",
        "/alerts",
        "/events/dbt%3Awev_console_0",
    ] {
        let page = get(&format!("{url}{path}"), None)
            .await
            .text()
            .await
            .unwrap();
        assert!(!page.contains("<form method=\"post\""), "{path}: {page}");
    }
    let response = client()
        .post(format!("{url}/actions/retry-all"))
        .header("origin", &url)
        .form(&[("csrf", "x")])
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::FORBIDDEN);
    assert_eq!(
        daemon
            .cli_ok(&["actions", "--status", "dead"])
            .lines()
            .count(),
        1
    );
}

/// 120 events page as 50 + 50 + 20 through the "older" links, each once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_page_by_fifty_without_overlap() {
    let slack = FakeSlack::start().await;
    let daemon = Daemon::start(
        slack
            .configure(Setup::dbt(SECRET, 1, 10, 20))
            .section("[admin]\nlisten = \"127.0.0.1:0\"\n"),
    );
    let url = console_url(&daemon);
    for i in 0..120 {
        let body = dbt_completed(&format!("wev_page_{i:03}"), "nightly", "Success");
        send_dbt(&daemon, SECRET, body).await;
    }
    let mut next = Some("/events".to_string());
    let mut pages = Vec::new();
    let mut seen = Vec::new();
    while let Some(path) = next.take() {
        let page = get(&format!("{url}{path}"), None)
            .await
            .text()
            .await
            .unwrap();
        let ids: Vec<String> = page
            .match_indices("\">dbt:wev_page_")
            .map(|(at, _)| page[at + 2..at + 2 + 16].to_string())
            .collect();
        pages.push(ids.len());
        seen.extend(ids);
        next = page.find("rel=\"next\" href=\"").map(|at| {
            page[at + 17..]
                .split('"')
                .next()
                .unwrap()
                .replace("&amp;", "&")
        });
    }
    assert_eq!(pages, vec![50, 50, 20]);
    let mut unique = seen.clone();
    unique.sort();
    unique.dedup();
    assert_eq!(unique.len(), 120, "an event was shown twice or not at all");
}

/// `/alerts` shows each alert's Slack thread: the channel id and `ts` Slack answered its
/// firing post with, linked in the form of Slack's permalinks when `slack.workspace_url`
/// is set.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_alerts_page_links_each_alert_to_its_slack_thread() {
    let slack = FakeSlack::start().await;
    let setup = slack
        .configure_with(
            Setup::dbt(SECRET, 1, 10, 20),
            "workspace_url = \"https://acme.slack.com\"\n",
        )
        .section("[admin]\nlisten = \"127.0.0.1:0\"\n")
        .rule(
            "nightly.rhai",
            r##"if event.source == "dbt" {
                alert("nightly", event.run_status != "Success", #{ channel: "#data", text: "nightly failed" });
            }"##,
        );
    let daemon = Daemon::start(setup);
    let url = console_url(&daemon);
    send_dbt(
        &daemon,
        SECRET,
        dbt_completed("wev_thread", "nightly", "Error"),
    )
    .await;
    let posted = eventually(&daemon, "the firing post", || {
        slack.messages().first().cloned()
    })
    .await;
    // The post's answer is journaled with its job once it has succeeded.
    eventually(&daemon, "the firing post's job to succeed", || {
        daemon
            .cli_ok(&["actions", "--status", "succeeded", "--json"])
            .contains("slack_post")
            .then_some(())
    })
    .await;
    let alerts = get(&format!("{url}/alerts"), None)
        .await
        .text()
        .await
        .unwrap();
    let link = format!(
        "<a href=\"https://acme.slack.com/archives/{}/p{}\">{} at {}</a>",
        posted.channel_id,
        posted.ts.replace('.', ""),
        posted.channel_id,
        posted.ts
    );
    assert!(alerts.contains(&link), "{link} in {alerts}");
    assert!(alerts.contains("<td>firing</td>"), "{alerts}");
}
