//! docs/behaviour.md section 15: Hex runs and Power BI refreshes started by rules and
//! followed to their end (against strict fakes), OpenLineage run events as a source, and
//! `send mode --sample` for the configured workspace.

use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::support::fake::{
    FakeHex, FakeMode, FakePowerBi, FakeSlack, Reply, HEX_PROJECT, HEX_TOKEN, POWERBI_DATASET,
    POWERBI_GROUP, POWERBI_SECRET,
};
use crate::support::{dbt_completed, eventually, send_dbt, Daemon, Setup};

const SECRET: &str = "stack-secret-1";
const OPENLINEAGE_KEY: &str = "ol-key-0123456789abcdef";

/// The events of `kind` the journal holds, as `events --show` prints them.
fn events_of(daemon: &Daemon, kind: &str) -> Vec<Value> {
    daemon
        .cli_ok(&["events", "--json", "--limit", "200"])
        .lines()
        .filter_map(|line| serde_json::from_str::<Value>(line).ok())
        .filter(|event| event["type"] == kind)
        .map(|event| {
            let id = event["id"].as_str().unwrap().to_string();
            serde_json::from_str(&daemon.cli_ok(&["events", "--show", &id])).unwrap()
        })
        .collect()
}

async fn one_event_of(daemon: &Daemon, kind: &str) -> Value {
    eventually(daemon, kind, || events_of(daemon, kind).pop()).await
}

/// The ids and status of the action jobs, as `actions --json` lists them.
fn actions(daemon: &Daemon) -> Vec<Value> {
    daemon
        .cli_ok(&["actions", "--json", "--limit", "200"])
        .lines()
        .filter_map(|line| serde_json::from_str::<Value>(line).ok())
        .collect()
}

fn hex_setup(hex: &FakeHex, slack: &FakeSlack, rule: &str) -> Setup {
    let setup = Setup::dbt(SECRET, 3, 50, 200).rule("hex.rhai", rule);
    slack.configure(hex.configure(setup))
}

/// `hex_run` posts `inputParams` with the Bearer token, the run is followed to its end,
/// and `hex.run.completed` reaches the rules with `succeeded` (and `failed` for an
/// errored run); the token is in no log line, TRACE included.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hex_run_is_started_followed_and_its_end_reaches_the_rules() {
    let (hex, slack) = (FakeHex::start().await, FakeSlack::start().await);
    let rule = format!(
        r#"
        if event.source == "dbt" && event.job_name == "nightly" {{
            hex_run("{HEX_PROJECT}", #{{ inputs: #{{ run_date: "2026-12-06", region: "EMEA" }} }});
        }}
        if event.type == "hex.run.completed" {{
            slack_post(`hex ${{event.project_id}} ${{event.status}} ${{event.run_url}}`);
        }}
        "#
    );
    let daemon = Daemon::start(hex_setup(&hex, &slack, &rule).env("RUST_LOG", "trace"));
    send_dbt(
        &daemon,
        SECRET,
        dbt_completed("wev_hex_1", "nightly", "Success"),
    )
    .await;
    let event = one_event_of(&daemon, "hex.run.completed").await;
    assert_eq!(event["status"], "succeeded", "{event}");
    assert_eq!(event["source"], "hex");
    assert_eq!(event["project_id"], HEX_PROJECT);
    assert_eq!(event["elapsed"], 102000);
    assert_eq!(event["rule"], "hex");
    assert_eq!(event["cause_event_id"], "dbt:wev_hex_1");
    let runs = hex.runs();
    assert_eq!(runs.len(), 1);
    assert_eq!(
        runs[0].body,
        json!({"inputParams": {"run_date": "2026-12-06", "region": "EMEA"}})
    );
    assert_eq!(event["run_id"], runs[0].run_id.as_str());
    eventually(&daemon, "the Slack post", || {
        slack
            .posts()
            .iter()
            .any(|(_, text)| text.starts_with(&format!("hex {HEX_PROJECT} succeeded https://")))
            .then_some(())
    })
    .await;

    // An errored run ends `failed`.
    hex.state.lock().unwrap().next_terminal = "ERRORED".into();
    send_dbt(
        &daemon,
        SECRET,
        dbt_completed("wev_hex_2", "nightly", "Success"),
    )
    .await;
    eventually(&daemon, "the failed run", || {
        events_of(&daemon, "hex.run.completed")
            .into_iter()
            .find(|e| e["status"] == "failed")
    })
    .await;
    assert!(
        !daemon.log().contains(HEX_TOKEN),
        "the Hex token was logged"
    );
}

/// A project that is not published is 404: the action is dead at its first attempt. A
/// 429 from RunProject is retried after its `Retry-After`, not the (shorter) backoff.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hex_404_is_final_and_429_waits_for_retry_after() {
    let (hex, slack) = (FakeHex::start().await, FakeSlack::start().await);
    let rule = r#"
        if event.job_name == "unpublished" { hex_run("0000dead-0000-4000-8000-000000000000"); }
        if event.job_name == "busy" { hex_run("5a8591dd-4039-49df-9202-96385ba3eff8"); }
    "#;
    let daemon = Daemon::start(hex_setup(&hex, &slack, rule));
    send_dbt(
        &daemon,
        SECRET,
        dbt_completed("wev_hex_404", "unpublished", "Success"),
    )
    .await;
    let dead = eventually(&daemon, "the dead hex_run", || {
        actions(&daemon)
            .into_iter()
            .find(|a| a["kind"] == "hex_run" && a["status"] == "dead")
    })
    .await;
    assert_eq!(dead["attempt"], 1, "{dead}");
    assert!(
        dead["last_error"].as_str().unwrap().contains("HTTP 404"),
        "{dead}"
    );

    hex.state.lock().unwrap().faults.add(
        "/run",
        1,
        Reply::json(429, json!({"reason": "Too many requests"})).with_header("Retry-After", "2"),
    );
    let asked = Instant::now();
    send_dbt(
        &daemon,
        SECRET,
        dbt_completed("wev_hex_429", "busy", "Success"),
    )
    .await;
    let first = eventually(&daemon, "the refused run", || {
        (hex.log
            .lock()
            .unwrap()
            .iter()
            .filter(|s| s.method == "POST")
            .count()
            >= 2)
            .then(Instant::now)
    })
    .await;
    let second = eventually(&daemon, "the run after Retry-After", || {
        (!hex.runs().is_empty()).then(Instant::now)
    })
    .await;
    assert!(
        second.duration_since(asked) >= Duration::from_millis(1900),
        "retried {:?} after the 429 (backoff is 50 ms; Retry-After said 2 s); first refusal seen at {:?}",
        second.duration_since(asked),
        first.duration_since(asked)
    );
}

fn powerbi_setup(powerbi: &FakePowerBi, rule: &str) -> Setup {
    powerbi.configure(Setup::dbt(SECRET, 3, 50, 200).rule("powerbi.rhai", rule))
}

const POWERBI_RULE: &str = r#"
    if event.source == "dbt" {
        powerbi_refresh(#{ group: "f089354e-8366-4e18-aea3-4cb4a3a50b48",
                           dataset: "cfafbeb1-8037-4d0c-896e-a46fb27ff229" });
    }
"#;

/// Two refreshes ask Entra ID for one token; each posts `NoNotification`, is followed to
/// `powerbi.refresh.completed` (a failed one with Power BI's error text); the shared
/// capacity's daily limit makes the action dead at once, saying so; the client secret and
/// the token are in no log line, TRACE included.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn power_bi_refreshes_share_a_token_are_followed_and_the_daily_limit_is_final() {
    let powerbi = FakePowerBi::start().await;
    let daemon = Daemon::start(powerbi_setup(&powerbi, POWERBI_RULE).env("RUST_LOG", "trace"));
    send_dbt(
        &daemon,
        SECRET,
        dbt_completed("wev_pbi_1", "nightly", "Success"),
    )
    .await;
    let first = one_event_of(&daemon, "powerbi.refresh.completed").await;
    assert_eq!(first["status"], "succeeded", "{first}");
    assert_eq!(first["source"], "powerbi");
    assert_eq!(first["group"], POWERBI_GROUP);
    assert_eq!(first["dataset"], POWERBI_DATASET);
    assert_eq!(
        first["request_id"],
        powerbi.refreshes()[0].request_id.as_str()
    );
    assert_eq!(first["cause_event_id"], "dbt:wev_pbi_1");

    powerbi.state.lock().unwrap().next_terminal = "Failed".into();
    send_dbt(
        &daemon,
        SECRET,
        dbt_completed("wev_pbi_2", "nightly", "Success"),
    )
    .await;
    let failed = eventually(&daemon, "the failed refresh", || {
        events_of(&daemon, "powerbi.refresh.completed")
            .into_iter()
            .find(|e| e["status"] == "failed")
    })
    .await;
    assert!(
        failed["error"]
            .as_str()
            .unwrap()
            .contains("ModelRefreshFailed_CredentialsNotSpecified"),
        "{failed}"
    );
    assert_eq!(powerbi.tokens_issued(), 1, "two refreshes, one token");
    for refresh in powerbi.refreshes() {
        assert_eq!(refresh.body, json!({"notifyOption": "NoNotification"}));
    }

    // The day's refreshes are used up: dead at once, and said.
    {
        let mut state = powerbi.state.lock().unwrap();
        state.daily_limit = state.refreshes.len();
    }
    send_dbt(
        &daemon,
        SECRET,
        dbt_completed("wev_pbi_3", "nightly", "Success"),
    )
    .await;
    let dead = eventually(&daemon, "the refused refresh", || {
        actions(&daemon)
            .into_iter()
            .find(|a| a["kind"] == "powerbi_refresh" && a["status"] == "dead")
    })
    .await;
    assert_eq!(dead["attempt"], 1, "{dead}");
    assert!(
        dead["last_error"].as_str().unwrap().contains("daily limit"),
        "{dead}"
    );
    let log = daemon.log();
    assert!(
        !log.contains(POWERBI_SECRET),
        "the client secret was logged"
    );
    assert!(
        !log.contains("eyJ0eXAiOiJKV1QiLCJhbGciOiJSUzI1NiJ9.fake"),
        "the token was logged"
    );
}

/// Following is a journaled job: a daemon killed (-9) while it follows a Hex run picks
/// the run up again at its next start, and its end reaches the rules once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn following_survives_a_kill_and_the_event_arrives_once() {
    let (hex, slack) = (FakeHex::start().await, FakeSlack::start().await);
    hex.state.lock().unwrap().next_looks = 4;
    let rule = format!(r#"if event.source == "dbt" {{ hex_run("{HEX_PROJECT}"); }}"#);
    let mut daemon = Daemon::start(hex_setup(&hex, &slack, &rule));
    send_dbt(
        &daemon,
        SECRET,
        dbt_completed("wev_hex_kill", "nightly", "Success"),
    )
    .await;
    // Killed once the run is being followed (a first status read went out).
    eventually(&daemon, "the first look at the run", || {
        hex.log
            .lock()
            .unwrap()
            .iter()
            .any(|s| s.method == "GET" && s.path.contains("/run/"))
            .then_some(())
    })
    .await;
    daemon.kill();
    daemon.spawn();
    one_event_of(&daemon, "hex.run.completed").await;
    // Once no follow job is open, none can emit a second event.
    let follows = eventually(&daemon, "every follow job ended", || {
        let follows: Vec<Value> = actions(&daemon)
            .into_iter()
            .filter(|a| a["kind"] == "hex_job")
            .collect();
        follows
            .iter()
            .all(|a| a["status"] == "succeeded")
            .then_some(follows)
    })
    .await;
    assert_eq!(follows.len(), 1, "{follows:?}");
    assert_eq!(events_of(&daemon, "hex.run.completed").len(), 1);
    assert_eq!(hex.runs().len(), 1, "the run was started once");
}

/// `send mode --sample report_run_completed` names the configured workspace, so the
/// daemon it is sent to accepts it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_mode_sample_is_accepted_for_another_workspace() {
    let mode = FakeMode::start().await;
    let mut setup = mode.configure(Setup::dbt(SECRET, 3, 50, 200), Some("hook-token-1"));
    setup.extra_config = setup
        .extra_config
        .replace("workspace = \"acme\"", "workspace = \"acme-analytics\"");
    let daemon = Daemon::start(setup);
    let url = daemon.url("/webhooks/mode/hook-token-1");
    let output = daemon.cli(&[
        "send",
        "mode",
        "--sample",
        "report_run_completed",
        "--url",
        &url,
    ]);
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(stdout.contains("-> 200"), "{stdout}");
    assert!(
        stdout.contains("mode:report_run_completed:/api/acme-analytics/"),
        "{stdout}"
    );
}

fn openlineage_setup(slack: &FakeSlack) -> Setup {
    let setup = Setup::dbt(SECRET, 3, 50, 200)
        .section("[openlineage]\napi_keys = [{ env = \"T_OL_OLD\" }, { env = \"T_OL\" }]\n")
        .env("T_OL", OPENLINEAGE_KEY)
        .env("T_OL_OLD", "ol-key-being-rotated-out")
        .rule(
            "lineage.rhai",
            r#"if event.type == "openlineage.fail" {
                   slack_post(`${event.job_name} (in ${event.parent_job_name}) failed: ${event.error_message}`);
               }"#,
        );
    slack.configure(setup)
}

/// A RunEvent as OpenLineage's clients send it (spec/OpenLineage.json).
fn run_event(event_type: &str, run_id: &str) -> Value {
    json!({
        "eventType": event_type,
        "eventTime": "2026-12-06T05:00:00.000Z",
        "producer": "https://github.com/OpenLineage/OpenLineage/tree/1.26.0/integration/airflow",
        "schemaURL": "https://openlineage.io/spec/2-0-2/OpenLineage.json#/$defs/RunEvent",
        "run": {"runId": run_id, "facets": {
            "parent": {"run": {"runId": "0193a6b0-0000-7000-8000-00000000000a"},
                       "job": {"namespace": "airflow", "name": "nightly_dag"}},
            "errorMessage": {"message": "psycopg2.errors.UndefinedColumn: column \"discount\" does not exist",
                             "programmingLanguage": "python"}}},
        "job": {"namespace": "airflow", "name": "nightly_dag.load_orders"},
        "inputs": [], "outputs": [{"namespace": "postgres://db:5432", "name": "shop.orders"}]
    })
}

async fn post_lineage(daemon: &Daemon, key: Option<&str>, gzip: bool, body: &[u8]) -> (u16, Value) {
    let mut request = reqwest::Client::new()
        .post(daemon.url("/api/v1/lineage"))
        .header("content-type", "application/json");
    if let Some(key) = key {
        request = request.bearer_auth(key);
    }
    let body = if gzip {
        use std::io::Write;
        let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        encoder.write_all(body).unwrap();
        request = request.header("content-encoding", "gzip");
        encoder.finish().unwrap()
    } else {
        body.to_vec()
    };
    let response = request.body(body).send().await.unwrap();
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

/// `POST /api/v1/lineage` with a key of `[openlineage] api_keys` (either, during a
/// rotation): the RunEvent is journaled and reaches the rules as `openlineage.fail` with
/// its job, parent and error; a repeat is a duplicate; gzip works; a wrong or missing key
/// is 401 and journals nothing; what is not a RunEvent is 400; an inflated body over
/// `server.max_body_bytes` is 413; no key is logged.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openlineage_run_events_reach_the_rules() {
    let slack = FakeSlack::start().await;
    let daemon = Daemon::start(openlineage_setup(&slack).env("RUST_LOG", "trace"));
    let fail =
        serde_json::to_vec(&run_event("FAIL", "0193a6b0-0000-7000-8000-000000000001")).unwrap();
    let (status, answer) = post_lineage(&daemon, Some(OPENLINEAGE_KEY), false, &fail).await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["duplicate"], false);
    let id = answer["event_id"].as_str().unwrap().to_string();
    assert_eq!(
        id,
        "openlineage:0193a6b0-0000-7000-8000-000000000001:FAIL:2026-12-06T05:00:00.000Z"
    );
    let (status, answer) = post_lineage(&daemon, Some(OPENLINEAGE_KEY), false, &fail).await;
    assert_eq!((status, answer["duplicate"].clone()), (200, json!(true)));
    eventually(&daemon, "the Slack post", || {
        slack
            .posts()
            .iter()
            .any(|(_, text)| {
                text == "nightly_dag.load_orders (in nightly_dag) failed: psycopg2.errors.UndefinedColumn: column \"discount\" does not exist"
            })
            .then_some(())
    })
    .await;
    let event: Value = serde_json::from_str(&daemon.cli_ok(&["events", "--show", &id])).unwrap();
    assert_eq!(event["type"], "openlineage.fail");
    assert_eq!(event["source"], "openlineage");
    assert_eq!(event["job_namespace"], "airflow");
    assert_eq!(
        event["parent_run_id"],
        "0193a6b0-0000-7000-8000-00000000000a"
    );
    assert_eq!(event["outputs"], json!(["postgres://db:5432/shop.orders"]));

    // gzip, with the key being rotated out.
    let start =
        serde_json::to_vec(&run_event("START", "0193a6b0-0000-7000-8000-000000000002")).unwrap();
    let (status, answer) =
        post_lineage(&daemon, Some("ol-key-being-rotated-out"), true, &start).await;
    assert_eq!(status, 200, "{answer}");

    // Refusals journal nothing.
    let before = daemon
        .cli_ok(&["events", "--json", "--limit", "200"])
        .lines()
        .count();
    let other =
        serde_json::to_vec(&run_event("FAIL", "0193a6b0-0000-7000-8000-000000000003")).unwrap();
    assert_eq!(
        post_lineage(&daemon, Some("wrong-key"), false, &other)
            .await
            .0,
        401
    );
    assert_eq!(post_lineage(&daemon, None, false, &other).await.0, 401);
    assert_eq!(
        post_lineage(
            &daemon,
            Some(OPENLINEAGE_KEY),
            false,
            br#"{"eventType": "START"}"#
        )
        .await
        .0,
        400
    );
    assert_eq!(
        post_lineage(&daemon, Some(OPENLINEAGE_KEY), false, b"{")
            .await
            .0,
        400
    );
    // 300 KB of spaces compress to almost nothing, and inflate over the 256 KiB limit.
    let mut padded = other.clone();
    padded.splice(1..1, std::iter::repeat(b' ').take(300_000));
    assert_eq!(
        post_lineage(&daemon, Some(OPENLINEAGE_KEY), true, &padded)
            .await
            .0,
        413
    );
    let after = daemon
        .cli_ok(&["events", "--json", "--limit", "200"])
        .lines()
        .count();
    assert_eq!(before, after, "a refused RunEvent was journaled");
    let log = daemon.log();
    assert!(!log.contains(OPENLINEAGE_KEY) && !log.contains("ol-key-being-rotated-out"));
}

/// OpenLineage's own Python client (openlineage-python's `OpenLineageClient`, configured
/// only by `OPENLINEAGE_URL` and `OPENLINEAGE_API_KEY`) sends START and FAIL: both reach
/// the rules with the run, the job, its parent and the error message.
#[cfg_attr(
    not(freshet_openlineage_tests),
    ignore = "needs openlineage-python: build with FRESHET_TEST_OPENLINEAGE_PYTHON set (.ci/run makes the venv)"
)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openlineages_own_client_reaches_the_rules() {
    let python = std::env::var("FRESHET_TEST_OPENLINEAGE_PYTHON")
        .expect("FRESHET_TEST_OPENLINEAGE_PYTHON was set when the tests were built: set it again");
    let slack = FakeSlack::start().await;
    let daemon = Daemon::start(openlineage_setup(&slack));
    let run_id = "0193a6b0-0000-7000-8000-0000000000c1";
    let script =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/openlineage/emit.py");
    let output = std::process::Command::new(python)
        .arg(script)
        .arg(run_id)
        .env("OPENLINEAGE_URL", daemon.url(""))
        .env("OPENLINEAGE_API_KEY", OPENLINEAGE_KEY)
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    let start = one_event_of(&daemon, "openlineage.start").await;
    let fail = one_event_of(&daemon, "openlineage.fail").await;
    for event in [&start, &fail] {
        assert_eq!(event["run_id"], run_id, "{event}");
        assert_eq!(event["job_namespace"], "airflow");
        assert_eq!(event["job_name"], "nightly_dag.load_orders");
        assert_eq!(event["parent_job_name"], "nightly_dag");
    }
    assert_eq!(
        fail["error_message"],
        "UndefinedColumn: column \"discount\" does not exist"
    );
    eventually(&daemon, "the Slack post of the failure", || {
        slack
            .posts()
            .iter()
            .any(|(_, text)| {
                text.starts_with("nightly_dag.load_orders (in nightly_dag) failed: UndefinedColumn")
            })
            .then_some(())
    })
    .await;
}

/// What `dbt-ol build --consume-structured-logs` really posts for a project with a failing
/// model and two failing tests (46 RunEvents, recorded once: tests/fixtures/openlineage):
/// all are journaled, and the failed model reaches a rule with dbt's error message and
/// its invocation as the parent.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn what_dbt_ol_posts_reaches_the_rules() {
    let slack = FakeSlack::start().await;
    let daemon = Daemon::start(openlineage_setup(&slack));
    let recorded = std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fixtures/openlineage/dbt-ol-build.jsonl"),
    )
    .unwrap();
    let mut journaled = 0;
    for line in recorded.lines() {
        let (status, answer) =
            post_lineage(&daemon, Some(OPENLINEAGE_KEY), false, line.as_bytes()).await;
        assert_eq!(status, 200, "{answer}\n{line}");
        assert_eq!(answer["duplicate"], false, "{line}");
        journaled += 1;
    }
    assert_eq!(journaled, 46);
    let post = eventually(&daemon, "the failed model's post", || {
        slack
            .posts()
            .into_iter()
            .map(|(_, text)| text)
            .find(|text| text.starts_with("model.shop.revenue (in dbt-run-shop) failed: "))
    })
    .await;
    assert!(
        post.contains("Binder Error: Referenced column \"discount\" not found"),
        "{post}"
    );
    let fails = daemon
        .cli_ok(&["events", "--json", "--limit", "200"])
        .lines()
        .filter(|line| line.contains("\"openlineage.fail\""))
        .count();
    // The model and its failing statement, the two tests, and the invocation.
    assert_eq!(fails, 5);
}
