//! A fake dbt Cloud Admin API v2: `Authorization: Token` (or `Bearer`, as dbt-mcp sends
//! it), one account, known jobs, stateful runs with steps, and per-step artifacts served
//! from the real `dbt build` of tests/fixtures/dbt. Like dbt Cloud, an artifact answers
//! 404 until it has been ingested (`ingest_after`), triggers need a `cause` of at most
//! 255 characters and refuse unknown keys, and every answer is the `{status, data}`
//! envelope.

use super::*;

use serde_json::{json, Value};

pub const DBT_ACCOUNT: i64 = 43;
pub const DBT_TOKEN: &str = "dbtc_service_token_f00dfeed";
pub const DBT_JOB: i64 = 302451;
pub const DBT_PROJECT: i64 = 167194;
/// The run the fake knows from the start: a `dbt build` whose model and tests failed.
pub const FAILED_RUN: i64 = 70_000_001;

/// The trigger body's keys dbt Cloud accepts (docs.getdbt.com, "Trigger job to run").
const TRIGGER_KEYS: [&str; 12] = [
    "cause",
    "git_sha",
    "git_branch",
    "azure_pull_request_id",
    "github_pull_request_id",
    "gitlab_merge_request_id",
    "schema_override",
    "dbt_version_override",
    "threads_override",
    "target_name_override",
    "generate_docs_override",
    "timeout_seconds_override",
];
const STEPS_OVERRIDE: &str = "steps_override";

#[derive(Debug, Clone)]
pub struct DbtStep {
    pub index: i64,
    pub name: String,
    pub status: i64,
    pub logs: String,
    /// Artifact name -> bytes.
    pub artifacts: Vec<(String, Vec<u8>)>,
}

#[derive(Debug, Clone)]
pub struct DbtCloudRun {
    pub id: i64,
    pub job: i64,
    pub status: i64,
    pub cause: String,
    pub body: Value,
    pub steps: Vec<DbtStep>,
    /// Artifact requests answered 404 before they are served (dbt ingests them after the
    /// `errored` webhook).
    pub ingest_after: usize,
}

#[derive(Default)]
pub struct DbtCloudState {
    pub runs: Vec<DbtCloudRun>,
    pub faults: Faults,
    /// The next this many triggers start their run and then answer too late (the
    /// client's timeout): the run exists, the caller does not know it.
    pub slow_triggers: usize,
    next_run: i64,
}

pub type FakeDbtCloud = Fake<DbtCloudState>;

/// The real artifacts of tests/fixtures/dbt's `dbt build`.
pub fn fixture(name: &str) -> Vec<u8> {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/dbt")
        .join(name);
    std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// The steps of a dbt Cloud run of `dbt build` that failed at its last step, with that
/// step's real artifacts and console log.
pub fn failed_build_steps() -> Vec<DbtStep> {
    let ok = |index: i64, name: &str| DbtStep {
        index,
        name: name.into(),
        status: 10,
        logs: format!("{name}: done\n"),
        artifacts: Vec::new(),
    };
    vec![
        ok(1, "Clone git repository"),
        ok(2, "Create profile from connection Snowflake"),
        ok(3, "Invoke dbt with `dbt deps`"),
        DbtStep {
            index: 4,
            name: "Invoke dbt with `dbt build`".into(),
            status: 20,
            logs: String::from_utf8(fixture("build.log")).unwrap(),
            artifacts: vec![
                ("run_results.json".into(), fixture("run_results.json")),
                ("manifest.json".into(), fixture("manifest.json")),
            ],
        },
    ]
}

impl FakeDbtCloud {
    pub async fn start() -> FakeDbtCloud {
        let state = DbtCloudState {
            next_run: FAILED_RUN + 1,
            runs: vec![DbtCloudRun {
                id: FAILED_RUN,
                job: DBT_JOB,
                status: 20,
                cause: "Scheduled".into(),
                body: json!({}),
                steps: failed_build_steps(),
                ingest_after: 0,
            }],
            ..Default::default()
        };
        Fake::spawn(state, dbt_handle)
    }

    /// Adds `api_base`, `account_id` and `api_token` (as `T_DBT_TOKEN`) to the `[dbt]`
    /// section `Setup::dbt` starts, plus `extra` keys.
    pub fn configure(&self, setup: Setup, extra: &str) -> Setup {
        let mut setup = setup.env("T_DBT_TOKEN", DBT_TOKEN);
        setup.extra_config = setup.extra_config.replacen(
            "[dbt]\n",
            &format!(
                "[dbt]\napi_base = \"{}\"\naccount_id = {DBT_ACCOUNT}\napi_token = {{ env = \"T_DBT_TOKEN\" }}\n{extra}\n",
                self.base()
            ),
            1,
        );
        setup
    }

    pub fn requests(&self) -> Vec<Seen> {
        self.log.lock().unwrap().clone()
    }

    /// The requests whose path contains `part`.
    pub fn requests_to(&self, part: &str) -> Vec<Seen> {
        self.requests()
            .into_iter()
            .filter(|seen| seen.path.contains(part))
            .collect()
    }

    pub fn run(&self, id: i64) -> Option<DbtCloudRun> {
        self.state
            .lock()
            .unwrap()
            .runs
            .iter()
            .find(|run| run.id == id)
            .cloned()
    }

    pub fn with_run<T>(&self, id: i64, change: impl FnOnce(&mut DbtCloudRun) -> T) -> T {
        let mut state = self.state.lock().unwrap();
        let run = state
            .runs
            .iter_mut()
            .find(|run| run.id == id)
            .expect("a known run");
        change(run)
    }

    /// Adds a failed run of `dbt build` with these steps (as if run on dbt's schedule).
    pub fn add_failed_run(&self, id: i64, steps: Vec<DbtStep>) {
        self.state.lock().unwrap().runs.push(DbtCloudRun {
            id,
            job: DBT_JOB,
            status: 20,
            cause: "Scheduled".into(),
            body: json!({}),
            steps,
            ingest_after: 0,
        });
    }

    /// The runs triggered through the API, oldest first.
    pub fn triggered(&self) -> Vec<DbtCloudRun> {
        self.state
            .lock()
            .unwrap()
            .runs
            .iter()
            .filter(|run| run.cause != "Scheduled")
            .cloned()
            .collect()
    }
}

fn envelope(code: u16, data: Value) -> Reply {
    Reply::json(
        code,
        json!({
            "status": {"code": code, "is_success": (200..300).contains(&code),
                       "user_message": "Success!", "developer_message": ""},
            "data": data,
        }),
    )
}

fn refusal(code: u16, message: &str) -> Reply {
    Reply::json(
        code,
        json!({
            "status": {"code": code, "is_success": false, "user_message": message,
                       "developer_message": null},
            "data": null,
        }),
    )
}

fn run_json(run: &DbtCloudRun, with_steps: bool) -> Value {
    let mut value = json!({
        "id": run.id, "account_id": DBT_ACCOUNT, "job_definition_id": run.job,
        "project_id": DBT_PROJECT, "environment_id": 1234,
        "status": run.status,
        "status_humanized": match run.status { 1 => "Queued", 3 => "Running", 10 => "Success", 20 => "Error", 30 => "Cancelled", _ => "Starting" },
        "status_message": if run.status == 20 { Value::String("Database Error in model revenue (models/revenue.sql)".into()) } else { Value::Null },
        "git_branch": "main", "git_sha": "7a8b9c0",
        "created_at": "2026-12-06 05:00:00.123456+00:00",
        "started_at": "2026-12-06 05:00:05.123456+00:00",
        "finished_at": if run.status >= 10 { Value::String("2026-12-06 05:02:15.123456+00:00".into()) } else { Value::Null },
        "trigger": {"id": run.id + 1_000_000, "cause": run.cause},
        "href": format!("https://cloud.getdbt.com/deploy/{DBT_ACCOUNT}/projects/{DBT_PROJECT}/runs/{}/", run.id),
    });
    if with_steps {
        value["run_steps"] = run
            .steps
            .iter()
            .map(|step| {
                json!({"index": step.index, "name": step.name, "status": step.status,
                       "logs": step.logs, "truncated_debug_logs": "", "run_id": run.id,
                       "started_at": "2026-12-06 05:00:05.123456+00:00",
                       "finished_at": "2026-12-06 05:02:15.123456+00:00", "duration": "00:00:10"})
            })
            .collect();
    }
    value
}

fn query_value(query: &str, key: &str) -> Option<String> {
    query.split('&').find_map(|pair| {
        let (k, v) = pair.split_once('=')?;
        (k == key).then(|| percent_decode(v))
    })
}

fn dbt_handle(state: &mut DbtCloudState, seen: &Seen) -> Reply {
    let authorized = [format!("Token {DBT_TOKEN}"), format!("Bearer {DBT_TOKEN}")];
    if !seen
        .header("authorization")
        .is_some_and(|given| authorized.iter().any(|a| a == given))
    {
        return refusal(401, "Invalid token.");
    }
    if let Some(reply) = state.faults.take(seen) {
        return reply;
    }
    let path = seen.path.as_str();
    let Some(rest) = path.strip_prefix(&format!("/api/v2/accounts/{DBT_ACCOUNT}/")) else {
        return refusal(404, "Account not found.");
    };
    let parts: Vec<&str> = rest.split('/').collect();
    match (seen.method.as_str(), parts.as_slice()) {
        // The account: `GET /api/v2/accounts/{id}/`.
        ("GET", [""]) => Reply::json(
            200,
            json!({"status": {"code": 200, "is_success": true},
                "data": {"id": DBT_ACCOUNT, "name": "Acme", "state": 1}}),
        ),
        ("POST", ["jobs", job, "run", ""]) => {
            if job.parse::<i64>().ok() != Some(DBT_JOB) {
                return refusal(404, "Job definition not found.");
            }
            if !seen
                .header("content-type")
                .is_some_and(|c| c.starts_with("application/json"))
            {
                return refusal(415, "Unsupported media type.");
            }
            let body = seen.json();
            let Some(object) = body.as_object() else {
                return refusal(400, "The body must be a JSON object.");
            };
            let Some(cause) = object.get("cause").and_then(Value::as_str) else {
                return refusal(400, "cause: This field is required.");
            };
            if cause.chars().count() > 255 {
                return refusal(
                    400,
                    "cause: Ensure this field has no more than 255 characters.",
                );
            }
            if let Some(key) = object
                .keys()
                .find(|k| !TRIGGER_KEYS.contains(&k.as_str()) && k.as_str() != STEPS_OVERRIDE)
            {
                return refusal(400, &format!("{key}: unknown field."));
            }
            let id = state.next_run;
            state.next_run += 1;
            let run = DbtCloudRun {
                id,
                job: DBT_JOB,
                status: 1,
                cause: cause.to_string(),
                body: body.clone(),
                steps: Vec::new(),
                ingest_after: 0,
            };
            let mut reply = envelope(200, run_json(&run, false));
            state.runs.push(run);
            if state.slow_triggers > 0 {
                state.slow_triggers -= 1;
                reply.delay_ms = 5_000;
            }
            reply
        }
        ("GET", ["runs", ""]) => {
            let Some(job) = query_value(&seen.query, "job_definition_id") else {
                return refusal(400, "job_definition_id is required here.");
            };
            let limit: usize = query_value(&seen.query, "limit")
                .and_then(|l| l.parse().ok())
                .unwrap_or(100);
            if limit > 100 {
                return refusal(400, "limit: at most 100.");
            }
            if query_value(&seen.query, "order_by").as_deref() != Some("-id") {
                // The fake only knows newest first; anything else would be a guess.
                return refusal(400, "order_by: only -id is supported by this fake.");
            }
            let mut runs: Vec<&DbtCloudRun> = state
                .runs
                .iter()
                .filter(|run| run.job.to_string() == job)
                .collect();
            runs.sort_by_key(|run| -run.id);
            let listed: Vec<Value> = runs
                .iter()
                .take(limit)
                .map(|r| run_json(r, false))
                .collect();
            let mut reply = envelope(200, Value::Array(listed));
            if let Ok(mut body) = serde_json::from_slice::<Value>(&reply.body) {
                body["extra"] = json!({"pagination": {"count": runs.len().min(limit), "total_count": runs.len()}});
                reply.body = body.to_string().into_bytes();
            }
            reply
        }
        ("GET", ["runs", run, ""]) => {
            let Some(run) = state.runs.iter().find(|r| r.id.to_string() == *run) else {
                return refusal(404, "Run not found.");
            };
            let related = query_value(&seen.query, "include_related").unwrap_or_default();
            envelope(200, run_json(run, related.contains("run_steps")))
        }
        ("GET", ["runs", run, "artifacts", name]) => {
            let Some(run) = state.runs.iter_mut().find(|r| r.id.to_string() == *run) else {
                return refusal(404, "Run not found.");
            };
            if run.ingest_after > 0 {
                run.ingest_after -= 1;
                return refusal(404, "The requested artifact was not found.");
            }
            let step = match query_value(&seen.query, "step") {
                Some(index) => run.steps.iter().find(|s| s.index.to_string() == index),
                None => run.steps.last(),
            };
            let artifact = step.and_then(|step| {
                step.artifacts
                    .iter()
                    .find(|(n, _)| n == name)
                    .map(|(_, bytes)| bytes.clone())
            });
            match artifact {
                Some(bytes) => Reply::streamed(200, "application/json", bytes),
                None => refusal(404, "The requested artifact was not found."),
            }
        }
        _ => refusal(404, "Not found."),
    }
}
