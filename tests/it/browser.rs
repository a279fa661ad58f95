//! docs/behaviour.md section 16, in a real browser: headless Chromium (Debian's `chromium`
//! and `chromium-driver`), driven over the W3C WebDriver protocol, opens the dead
//! actions, retries one with the page's own form, and sees it succeed at a fake Slack.
//! The few WebDriver commands it needs are plain HTTP calls to chromedriver on 127.0.0.1.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::support::fake::{FakeSlack, Reply};
use crate::support::{dbt_completed, eventually, send_dbt, Daemon, Setup};

const SECRET: &str = "browser-secret-1";

/// chromedriver on a free loopback port, killed on drop.
struct Driver {
    child: Child,
    base: String,
    _profile: tempfile::TempDir,
}

impl Drop for Driver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A WebDriver session in headless Chromium.
struct Session {
    http: reqwest::Client,
    url: String,
}

impl Driver {
    async fn start(chromedriver: &str) -> Driver {
        let port = {
            let probe = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            probe.local_addr().unwrap().port()
        };
        let child = Command::new(chromedriver)
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start chromedriver");
        let base = format!("http://127.0.0.1:{port}");
        let started = Instant::now();
        loop {
            if let Ok(response) = reqwest::get(format!("{base}/status")).await {
                let status: Value = response.json().await.unwrap_or(Value::Null);
                if status["value"]["ready"] == true {
                    break;
                }
            }
            assert!(
                started.elapsed() < Duration::from_secs(30),
                "chromedriver did not start"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        Driver {
            child,
            base,
            _profile: tempfile::tempdir().unwrap(),
        }
    }

    async fn session(&self) -> Session {
        let http = reqwest::Client::new();
        let args = [
            "--headless".to_string(),
            "--no-sandbox".into(),
            "--disable-gpu".into(),
            "--disable-dev-shm-usage".into(),
            "--window-size=1280,900".into(),
            format!("--user-data-dir={}", self._profile.path().display()),
        ];
        let response: Value = http
            .post(format!("{}/session", self.base))
            .json(&json!({"capabilities": {"alwaysMatch": {
                "browserName": "chrome",
                "goog:chromeOptions": {"args": args, "binary": chromium_binary()}
            }}}))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let id = response["value"]["sessionId"]
            .as_str()
            .unwrap_or_else(|| panic!("no WebDriver session: {response}"))
            .to_string();
        Session {
            http,
            url: format!("{}/session/{id}", self.base),
        }
    }
}

/// Debian's Chromium binary.
fn chromium_binary() -> &'static str {
    ["/usr/bin/chromium", "/usr/lib/chromium/chromium"]
        .into_iter()
        .find(|path| std::path::Path::new(path).exists())
        .unwrap_or("/usr/bin/chromium")
}

impl Session {
    async fn command(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> Value {
        let mut request = self.http.request(method, format!("{}{path}", self.url));
        if let Some(body) = body {
            request = request.json(&body);
        }
        let answer: Value = request.send().await.unwrap().json().await.unwrap();
        answer["value"].clone()
    }

    async fn open(&self, url: &str) {
        self.command(reqwest::Method::POST, "/url", Some(json!({ "url": url })))
            .await;
    }

    async fn click(&self, css: &str) {
        let element = self
            .command(
                reqwest::Method::POST,
                "/element",
                Some(json!({"using": "css selector", "value": css})),
            )
            .await;
        let id = element
            .as_object()
            .and_then(|o| o.values().next())
            .and_then(Value::as_str)
            .unwrap_or_else(|| panic!("no element {css}: {element}"))
            .to_string();
        self.command(
            reqwest::Method::POST,
            &format!("/element/{id}/click"),
            Some(json!({})),
        )
        .await;
    }

    async fn source(&self) -> String {
        self.command(reqwest::Method::GET, "/source", None)
            .await
            .as_str()
            .unwrap_or_default()
            .to_string()
    }

    async fn current_url(&self) -> String {
        self.command(reqwest::Method::GET, "/url", None)
            .await
            .as_str()
            .unwrap_or_default()
            .to_string()
    }

    /// A PNG of the window, written to `path` (the README's screenshots).
    async fn screenshot(&self, path: &std::path::Path) {
        use base64::Engine;
        let data = self
            .command(reqwest::Method::GET, "/screenshot", None)
            .await;
        let png = base64::engine::general_purpose::STANDARD
            .decode(data.as_str().unwrap())
            .unwrap();
        std::fs::write(path, png).unwrap();
    }

    async fn close(&self) {
        self.command(reqwest::Method::DELETE, "", None).await;
    }
}

/// Headless Chromium opens the dead actions, retries one with the page's own form (the
/// browser sends the CSRF token and its Origin), follows the redirect, and the post
/// reaches the healed Slack. With `FRESHET_CONSOLE_SCREENSHOTS=DIR`, it also writes the
/// README's screenshots of the overview and the dead actions there.
#[cfg_attr(
    not(freshet_browser_tests),
    ignore = "needs Chromium and chromedriver: build with FRESHET_TEST_CHROMEDRIVER set (.ci/run installs chromium-driver)"
)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_browser_retries_a_dead_action() {
    let chromedriver = std::env::var("FRESHET_TEST_CHROMEDRIVER")
        .expect("FRESHET_TEST_CHROMEDRIVER was set when the tests were built: set it again");
    let slack = FakeSlack::start().await;
    let daemon = Daemon::start(
        slack
            .configure(Setup::dbt(SECRET, 1, 10, 20))
            .section("[admin]\nlisten = \"127.0.0.1:0\"\n")
            .rule(
                "post.rhai",
                r#"if event.source == "dbt" { slack_post(`nightly run ${event.run_id} done`); }"#,
            ),
    );
    slack
        .state
        .lock()
        .unwrap()
        .faults
        .add("/services/", 2, Reply::text(400, "invalid_payload"));
    for id in ["wev_browser_1", "wev_browser_2"] {
        send_dbt(&daemon, SECRET, dbt_completed(id, "nightly", "Success")).await;
    }
    let dead_id = eventually(&daemon, "two dead posts", || {
        let dead = daemon.cli_ok(&["actions", "--status", "dead"]);
        (dead.lines().count() == 2).then(|| {
            dead.lines()
                .last()
                .unwrap()
                .split_whitespace()
                .next()
                .unwrap()
                .trim_start_matches('#')
                .to_string()
        })
    })
    .await;
    daemon.wait_for_log("Console listening.", Duration::from_secs(10));
    let console = daemon
        .log()
        .lines()
        .find(|l| l.contains("Console listening."))
        .and_then(|l| l.split_whitespace().find_map(|w| w.strip_prefix("url=")))
        .unwrap()
        .trim_end_matches('/')
        .to_string();
    slack.state.lock().unwrap().faults.heal();

    let driver = Driver::start(&chromedriver).await;
    let browser = driver.session().await;
    let screenshots = std::env::var_os("FRESHET_CONSOLE_SCREENSHOTS").map(std::path::PathBuf::from);
    if let Some(dir) = &screenshots {
        browser.open(&format!("{console}/")).await;
        browser.screenshot(&dir.join("console-overview.png")).await;
    }
    browser
        .open(&format!("{console}/actions?status=dead"))
        .await;
    let page = browser.source().await;
    assert!(page.contains(&format!("retry-{dead_id}")), "{page}");
    if let Some(dir) = &screenshots {
        browser
            .screenshot(&dir.join("console-dead-actions.png"))
            .await;
    }
    browser.click(&format!("#retry-{dead_id}")).await;
    // Post, then redirect back to the dead actions with what was done. The click returns
    // before the browser has loaded the page the form leads to: wait for it.
    let started = Instant::now();
    let mut after = browser.source().await;
    while !after.contains("1 re-queued") {
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "the page after the retry never came: {after}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
        after = browser.source().await;
    }
    assert!(browser.current_url().await.contains("/actions?status=dead"));
    eventually(&daemon, "the retried post at Slack", || {
        (slack.posts().len() == 1).then_some(())
    })
    .await;
    assert_eq!(
        daemon
            .cli_ok(&["actions", "--status", "dead"])
            .lines()
            .count(),
        1,
        "the other dead action stays dead"
    );
    browser.close().await;
}
