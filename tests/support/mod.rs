//! Test helpers: start the real `freshet` binary on 127.0.0.1:0 with a config written into
//! a temp dir, talk to it over loopback, and print its whole log when something fails.
#![allow(dead_code)]

pub mod fake;
pub mod tls;

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

pub const BIN: &str = env!("CARGO_BIN_EXE_freshet");

/// The `[vars]` the shipped finance rules read.
pub const FINANCE_VARS: &str = "[vars]\nfinance_channel = \"#finance\"\nrevenue_floor = 1000.0";

/// The vendors' documented webhook bodies in tests/fixtures/samples.
pub fn sample(name: &str) -> Vec<u8> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/samples")
        .join(name);
    std::fs::read(&path).unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()))
}

/// A shipped example rule (`rules/NAME`), as text.
pub fn example_rule(name: &str) -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("rules")
        .join(name);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()))
}

pub fn sign(secret: &str, body: &[u8]) -> String {
    freshet::ingest::signature::sign(secret.as_bytes(), body)
}

/// A running daemon. Killed on drop.
pub struct Daemon {
    child: Option<Child>,
    pub addr: SocketAddr,
    pub dir: PathBuf,
    _temp: Option<tempfile::TempDir>,
    log: Arc<Mutex<Vec<String>>>,
    env: Vec<(String, String)>,
    file_limit: Option<u64>,
}

/// What to put in the daemon's config and environment.
#[derive(Default, Clone)]
pub struct Setup {
    /// TOML appended after the `[server]`, `[journal]` and `[rules]` sections.
    pub extra_config: String,
    pub env: Vec<(String, String)>,
    /// Rule files to write into rules/ before start.
    pub rules: Vec<(String, String)>,
    /// Other files to write next to the config (secret files).
    pub files: Vec<(String, String)>,
    pub max_body_bytes: Option<usize>,
    /// Soft and hard limit on open files for the daemon (`RLIMIT_NOFILE`).
    pub file_limit: Option<u64>,
    /// More keys for the `[server]`, `[rules]` and `[journal]` sections.
    pub server_keys: String,
    pub rules_keys: String,
    pub journal_keys: String,
}

impl Setup {
    /// The start most tests share: dbt webhooks signed with `secret` (handed to the daemon
    /// as `T_SECRET`), and retries fast enough for a test: `max_attempts`, the backoff
    /// from `initial_ms` up to `max_ms`.
    pub fn dbt(secret: &str, max_attempts: u32, initial_ms: u64, max_ms: u64) -> Setup {
        Setup::new(&format!(
            "[dbt]\nwebhook_secrets = [{{ env = \"T_SECRET\" }}]\n\n\
             [actions]\nmax_attempts = {max_attempts}\n\
             backoff_initial_ms = {initial_ms}\nbackoff_max_ms = {max_ms}\n"
        ))
        .env("T_SECRET", secret)
    }

    pub fn new(extra_config: &str) -> Setup {
        Setup {
            extra_config: extra_config.to_string(),
            ..Default::default()
        }
    }
    /// Appends a TOML section to the config.
    pub fn section(mut self, toml: &str) -> Setup {
        self.extra_config.push('\n');
        self.extra_config.push_str(toml);
        self
    }
    pub fn env(mut self, key: &str, value: &str) -> Setup {
        self.env.push((key.into(), value.into()));
        self
    }
    pub fn rule(mut self, name: &str, source: &str) -> Setup {
        self.rules.push((name.into(), source.into()));
        self
    }
    pub fn file(mut self, name: &str, contents: &str) -> Setup {
        self.files.push((name.into(), contents.into()));
        self
    }
}

impl Daemon {
    /// Writes the config into a fresh temp dir and starts `freshet serve`.
    pub fn start(setup: Setup) -> Daemon {
        let temp = tempfile::tempdir().unwrap();
        let dir = temp.path().to_path_buf();
        std::fs::create_dir_all(dir.join("rules")).unwrap();
        for (name, source) in &setup.rules {
            std::fs::write(dir.join("rules").join(name), source).unwrap();
        }
        for (name, contents) in &setup.files {
            let path = dir.join(name);
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(path, contents).unwrap();
        }
        let config = format!(
            "[server]\nlisten = \"127.0.0.1:0\"\nmax_body_bytes = {}\n{}\n\n[journal]\npath = \"journal.db\"\n{}\n\n[rules]\ndir = \"rules\"\n{}\n\n{}\n",
            setup.max_body_bytes.unwrap_or(262_144),
            setup.server_keys,
            setup.journal_keys,
            setup.rules_keys,
            setup.extra_config
        );
        std::fs::write(dir.join("freshet.toml"), config).unwrap();
        let mut daemon = Daemon {
            child: None,
            addr: "127.0.0.1:0".parse().unwrap(),
            dir,
            _temp: Some(temp),
            log: Arc::new(Mutex::new(Vec::new())),
            env: setup.env,
            file_limit: setup.file_limit,
        };
        daemon.spawn();
        daemon
    }

    /// Starts `freshet serve` on a folder that holds its own `freshet.toml` (one that
    /// `freshet init` wrote, say), with no environment set.
    pub fn start_in(temp: tempfile::TempDir) -> Daemon {
        let mut daemon = Daemon {
            child: None,
            addr: "127.0.0.1:0".parse().unwrap(),
            dir: temp.path().to_path_buf(),
            _temp: Some(temp),
            log: Arc::new(Mutex::new(Vec::new())),
            env: Vec::new(),
            file_limit: None,
        };
        daemon.spawn();
        daemon
    }

    /// The `freshet serve` command for this daemon's dir and config.
    fn serve_command(&self) -> Command {
        let mut command = Command::new(BIN);
        command
            .args(["serve", "--config"])
            .arg(self.dir.join("freshet.toml"))
            .current_dir(&self.dir)
            .env("RUST_LOG", "debug")
            .env_remove("FRESHET_CONFIG")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        for (key, value) in &self.env {
            command.env(key, value);
        }
        if let Some(limit) = self.file_limit {
            use std::os::unix::process::CommandExt;
            // SAFETY: setrlimit is async-signal-safe; nothing else runs in the child here.
            unsafe {
                command.pre_exec(move || {
                    let rlimit = libc::rlimit {
                        rlim_cur: limit,
                        rlim_max: limit,
                    };
                    if libc::setrlimit(libc::RLIMIT_NOFILE, &rlimit) != 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                    Ok(())
                });
            }
        }
        command
    }

    /// Runs another `freshet serve` on this dir that is expected to exit by itself
    /// (refusing to start); panics if it is still running after 30 s.
    pub fn serve_expecting_exit(&self) -> Output {
        let child = self
            .serve_command()
            .stdout(Stdio::piped())
            .spawn()
            .expect("start freshet");
        wait_with_timeout(child, Duration::from_secs(30))
    }

    /// The daemon's process id.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("running").id()
    }

    /// The daemon's resident memory, in bytes (from /proc).
    pub fn rss_bytes(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid())).unwrap();
        let kib: u64 = status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse().ok())
            .expect("VmRSS in /proc/PID/status");
        kib * 1024
    }

    /// Whether the process is still running.
    pub fn is_running(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|child| child.try_wait().unwrap().is_none())
    }

    /// (Re)starts the process on the same dir and journal.
    pub fn spawn(&mut self) {
        let mut child = self.serve_command().spawn().expect("start freshet");
        let stderr = child.stderr.take().unwrap();
        let log = Arc::clone(&self.log);
        let (addr_tx, addr_rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                if line.contains("Listening.") {
                    if let Some(addr) = line
                        .split_whitespace()
                        .find_map(|w| w.strip_prefix("addr="))
                    {
                        let _ = addr_tx.send(addr.parse::<SocketAddr>().unwrap());
                    }
                }
                log.lock().unwrap().push(line);
            }
        });
        match addr_rx.recv_timeout(Duration::from_secs(30)) {
            Ok(addr) => self.addr = addr,
            Err(_) => {
                let _ = child.kill();
                panic!("freshet did not start listening; log:\n{}", self.log());
            }
        }
        self.child = Some(child);
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    /// GETs a path and returns the body as text.
    pub async fn get_text(&self, path: &str) -> String {
        reqwest::get(self.url(path))
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    }

    /// GETs a path and returns the body as JSON (whatever the status).
    pub async fn get_json(&self, path: &str) -> serde_json::Value {
        reqwest::get(self.url(path))
            .await
            .unwrap()
            .json()
            .await
            .unwrap()
    }

    pub fn config_path(&self) -> PathBuf {
        self.dir.join("freshet.toml")
    }

    /// Everything the daemon logged so far.
    pub fn log(&self) -> String {
        self.log.lock().unwrap().join("\n")
    }

    /// Waits until the log contains `needle`, or panics with the log.
    pub fn wait_for_log(&self, needle: &str, timeout: Duration) {
        let start = Instant::now();
        while start.elapsed() < timeout {
            if self.log().contains(needle) {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!("log never contained {needle:?}; log:\n{}", self.log());
    }

    /// The instance name a daemon on a PostgreSQL journal logged at start.
    pub fn instance_name(&self) -> String {
        self.wait_for_log("Sharing the PostgreSQL journal", Duration::from_secs(10));
        let log = self.log();
        let line = log
            .lines()
            .find(|l| l.contains("Sharing the PostgreSQL journal"))
            .expect("the instance line");
        line.split("instance=")
            .nth(1)
            .unwrap()
            .split_whitespace()
            .next()
            .unwrap()
            .to_string()
    }

    /// Runs another `freshet` command against the same config.
    pub fn cli(&self, args: &[&str]) -> Output {
        self.cli_with_env(args, &[])
    }

    /// Like `cli`, with some of the environment changed (`T_DB` pointing elsewhere).
    pub fn cli_with_env(&self, args: &[&str], changed: &[(&str, &str)]) -> Output {
        let mut command = Command::new(BIN);
        command
            .args(args)
            .arg("--config")
            .arg(self.config_path())
            .current_dir(&self.dir);
        for (key, value) in &self.env {
            command.env(key, value);
        }
        for (key, value) in changed {
            command.env(key, value);
        }
        command.output().expect("run freshet")
    }

    /// Runs another `freshet` command against the same config with none of the daemon's
    /// environment (its secrets).
    pub fn cli_without_env(&self, args: &[&str]) -> Output {
        Command::new(BIN)
            .args(args)
            .arg("--config")
            .arg(self.config_path())
            .current_dir(&self.dir)
            .env_remove("CREDENTIALS_DIRECTORY")
            .output()
            .expect("run freshet")
    }

    /// Like `cli`, but panics with everything if the command did not exit 0.
    pub fn cli_ok(&self, args: &[&str]) -> String {
        let output = self.cli(args);
        let stdout = String::from_utf8_lossy(&output.stdout).to_string();
        assert!(
            output.status.success(),
            "freshet {args:?} failed: {}\nstdout:\n{stdout}\nstderr:\n{}\ndaemon log:\n{}",
            output.status,
            String::from_utf8_lossy(&output.stderr),
            self.log()
        );
        stdout
    }

    pub fn signal(&self, name: &str) {
        let pid = self.child.as_ref().expect("running").id();
        let status = Command::new("kill")
            .args([&format!("-{name}"), &pid.to_string()])
            .status()
            .unwrap();
        assert!(status.success());
    }

    /// SIGTERM and wait; returns the exit status and how long the stop took.
    pub fn stop(&mut self) -> (std::process::ExitStatus, Duration) {
        self.signal("TERM");
        self.stop_wait()
    }

    /// Waits for the process to exit (after a signal sent earlier).
    pub fn stop_wait(&mut self) -> (std::process::ExitStatus, Duration) {
        let start = Instant::now();
        let mut child = self.child.take().unwrap();
        loop {
            if let Some(status) = child.try_wait().unwrap() {
                return (status, start.elapsed());
            }
            if start.elapsed() > Duration::from_secs(20) {
                let _ = child.kill();
                panic!("freshet did not stop within 20 s; log:\n{}", self.log());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// SIGKILL: a crash.
    pub fn kill(&mut self) {
        let mut child = self.child.take().unwrap();
        child.kill().unwrap();
        child.wait().unwrap();
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Waits for a child to exit; kills it and panics with its output after `timeout`.
pub fn wait_with_timeout(mut child: Child, timeout: Duration) -> Output {
    let start = Instant::now();
    loop {
        if child.try_wait().unwrap().is_some() {
            return child.wait_with_output().unwrap();
        }
        if start.elapsed() > timeout {
            let _ = child.kill();
            let output = child.wait_with_output().unwrap();
            panic!(
                "the command did not exit within {timeout:?}; stderr:\n{}",
                String::from_utf8_lossy(&output.stderr)
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A fresh PostgreSQL database on the test server (`FRESHET_TEST_DATABASE_URL`, which
/// .ci/postgres.sh sets), and its URL. The tests that call it are ignored unless the
/// variable was set when they were built (build.rs), so here it must be set.
pub async fn fresh_postgres() -> String {
    let url = std::env::var("FRESHET_TEST_DATABASE_URL").expect(
        "FRESHET_TEST_DATABASE_URL was set when the tests were built: set it again (source .ci/postgres.sh)",
    );
    let name = format!("freshet_i_{:016x}", rand::random::<u64>());
    let (client, connection) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
        .await
        .expect("the test database server answers");
    tokio::spawn(connection);
    client
        .batch_execute(&format!("CREATE DATABASE {name}"))
        .await
        .unwrap();
    let (base, _) = url.rsplit_once('/').unwrap();
    format!("{base}/{name}")
}

/// Runs one query on a test database, in the journal's schema, and returns its rows.
pub async fn postgres_rows(url: &str, sql: &str) -> Vec<tokio_postgres::Row> {
    let (client, connection) = tokio_postgres::connect(url, tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(connection);
    client
        .batch_execute(&format!(
            "SET search_path = {}",
            freshet::journal::postgres::DEFAULT_SCHEMA
        ))
        .await
        .unwrap();
    client.query(sql, &[]).await.unwrap()
}

/// Raises this test process's own soft limit on open files to its hard limit.
pub fn raise_own_file_limit() -> u64 {
    freshet::ingest::listener::raise_file_limit().unwrap()
}

/// How long [`eventually`] waits before it fails a test. Generous, because it only runs
/// out when a test is failing anyway, and CI machines are slower and shared.
const EVENTUALLY_BOUND: Duration = Duration::from_secs(60);

/// Polls `check` until it returns Some, or panics with `what` and the daemon's log.
pub async fn eventually<T>(daemon: &Daemon, what: &str, mut check: impl FnMut() -> Option<T>) -> T {
    let start = Instant::now();
    loop {
        if let Some(value) = check() {
            return value;
        }
        if start.elapsed() > EVENTUALLY_BOUND {
            panic!(
                "timed out waiting for {what}; daemon log:\n{}",
                daemon.log()
            );
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

/// A dbt `job.run.completed` body with its own event id.
pub fn dbt_completed(event_id: &str, job_name: &str, status: &str) -> Vec<u8> {
    serde_json::to_vec(&serde_json::json!({
        "accountId": 1, "webhooksID": "wsu_1", "eventId": event_id,
        "timestamp": "2026-11-25T10:00:00Z", "eventType": "job.run.completed", "webhookName": "test",
        "data": {"jobId": "302451", "jobName": job_name, "runId": "777", "environmentId": "1",
                 "environmentName": "Production", "projectName": "p", "projectId": "1",
                 "runStatus": status, "runStatusCode": if status == "Success" { 10 } else { 20 },
                 "runStatusMessage": "None", "runReason": "", "runStartedAt": "2026-11-25T09:00:00Z",
                 "runFinishedAt": "2026-11-25T10:00:00Z"}
    }))
    .unwrap()
}

/// Posts Mode's `report_run_completed` for the run at `run_url` to the token route; the
/// event id (panics unless 200).
pub async fn send_mode_run_completed(daemon: &Daemon, token: &str, run_url: &str) -> String {
    let body = serde_json::json!({"event": "report_run_completed", "report_run_url": run_url});
    let response = reqwest::Client::new()
        .post(daemon.url(&format!("/webhooks/mode/{token}")))
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let answer: serde_json::Value = response.json().await.unwrap();
    answer["event_id"].as_str().unwrap().to_string()
}

/// Posts a signed dbt body and returns the answer, whatever it is.
pub async fn post_dbt(daemon: &Daemon, secret: &str, body: Vec<u8>) -> reqwest::Response {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap()
        .post(daemon.url("/webhooks/dbt"))
        .header("Authorization", sign(secret, &body))
        .body(body)
        .send()
        .await
        .unwrap()
}

/// Posts a signed dbt body; panics unless 200.
pub async fn send_dbt(daemon: &Daemon, secret: &str, body: Vec<u8>) -> serde_json::Value {
    let response = post_dbt(daemon, secret, body).await;
    let status = response.status();
    let answer: serde_json::Value = response.json().await.unwrap();
    assert_eq!(status, 200, "{answer}\nlog:\n{}", daemon.log());
    answer
}

/// The `freshet events` block of one event, once it has been evaluated.
pub async fn evaluated(daemon: &Daemon, event_id: &str) -> String {
    eventually(daemon, &format!("evaluation of {event_id}"), || {
        let listing = daemon.cli_ok(&["events", "--limit", "1000"]);
        let mut block = String::new();
        let mut inside = false;
        for line in listing.lines() {
            if !line.starts_with(' ') {
                inside = line.contains(&format!("  {event_id}  "));
            }
            if inside {
                block.push_str(line);
                block.push('\n');
            }
        }
        block.contains("[evaluated]").then_some(block)
    })
    .await
}

/// How many times the log contains `needle`.
pub fn count_in_log(daemon: &Daemon, needle: &str) -> usize {
    daemon.log().matches(needle).count()
}
