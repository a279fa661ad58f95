//! A fake Mode API: Basic auth, one workspace, known reports, stateful runs and their
//! query results.

use super::*;

pub const MODE_WORKSPACE: &str = "acme";
pub const MODE_TOKEN: &str = "mode-api-token-1";
pub const MODE_SECRET: &str = "mode-api-secret-1";

/// What a query run's results give.
#[derive(Debug, Clone)]
pub enum QueryResult {
    Rows(serde_json::Value),
    /// Purged: 404 `run results not found`.
    Purged,
    /// A JSON array of rows this many bytes long, streamed.
    Huge(usize),
}

#[derive(Debug, Clone)]
pub struct ModeRun {
    pub report: String,
    pub token: String,
    pub state: String,
    pub parameters: serde_json::Value,
    /// (query name, results); None when the run's results were purged.
    pub queries: Option<Vec<(String, QueryResult)>>,
}

#[derive(Default)]
pub struct ModeState {
    pub reports: Vec<(String, String)>,
    pub runs: Vec<ModeRun>,
    pub faults: Faults,
    next_run: u64,
}

impl ModeState {
    /// A run of `report` by its token, as Mode's run URLs name it.
    fn run(&self, report: &str, token: &str) -> Option<&ModeRun> {
        self.runs
            .iter()
            .find(|r| r.report == report && r.token == token)
    }
}

/// A fake Mode API: Basic auth, one workspace, known reports, stateful runs.
pub type FakeMode = Fake<ModeState>;

impl FakeMode {
    /// Adds a `[mode]` section pointing at this fake, with its credentials, and the Mode
    /// webhook token when given.
    pub fn configure(&self, setup: Setup, webhook_token: Option<&str>) -> Setup {
        let hook = if webhook_token.is_some() {
            "webhook_token = { env = \"T_HOOK\" }\n"
        } else {
            ""
        };
        let setup = setup
            .section(&format!(
                "[mode]\napi_base = \"{}\"\nworkspace = \"{MODE_WORKSPACE}\"\napi_token = {{ env = \"T_MODE_TOKEN\" }}\napi_secret = {{ env = \"T_MODE_SECRET\" }}\n{hook}",
                self.base()
            ))
            .env("T_MODE_TOKEN", MODE_TOKEN)
            .env("T_MODE_SECRET", MODE_SECRET);
        match webhook_token {
            Some(token) => setup.env("T_HOOK", token),
            None => setup,
        }
    }

    pub async fn start() -> FakeMode {
        let mut state = ModeState::default();
        state
            .reports
            .push(("2b3c4d5e6f70".into(), "Daily revenue".into()));
        Fake::spawn(state, mode_handle)
    }

    /// Adds a finished run directly (as if run outside freshet).
    pub fn add_run(
        &self,
        report: &str,
        run: &str,
        state: &str,
        queries: Option<Vec<(&str, serde_json::Value)>>,
    ) {
        let queries = queries.map(|q| {
            q.into_iter()
                .map(|(n, r)| (n, QueryResult::Rows(r)))
                .collect()
        });
        self.add_run_with(report, run, state, queries);
    }

    /// Adds a finished run whose queries give `queries`.
    pub fn add_run_with(
        &self,
        report: &str,
        run: &str,
        state: &str,
        queries: Option<Vec<(&str, QueryResult)>>,
    ) {
        self.state.lock().unwrap().runs.push(ModeRun {
            report: report.into(),
            token: run.into(),
            state: state.into(),
            parameters: serde_json::json!({}),
            queries: queries.map(|q| q.into_iter().map(|(n, r)| (n.to_string(), r)).collect()),
        });
    }

    /// Finishes a run started through the API.
    pub fn complete(&self, run: &str, state: &str, queries: Vec<(&str, serde_json::Value)>) {
        let mut st = self.state.lock().unwrap();
        let run = st
            .runs
            .iter_mut()
            .find(|r| r.token == run)
            .expect("known run");
        run.state = state.into();
        run.queries = Some(
            queries
                .into_iter()
                .map(|(n, r)| (n.to_string(), QueryResult::Rows(r)))
                .collect(),
        );
    }

    pub fn requests(&self) -> Vec<Seen> {
        self.log.lock().unwrap().clone()
    }
}

fn mode_run_json(run: &ModeRun) -> serde_json::Value {
    let base = format!(
        "/api/{MODE_WORKSPACE}/reports/{}/runs/{}",
        run.report, run.token
    );
    serde_json::json!({
        "token": run.token, "state": run.state, "parameters": run.parameters,
        "created_at": "2026-08-07T07:47:06.501Z", "completed_at": null,
        "_links": {
            "self": {"href": base}, "query_runs": {"href": format!("{base}/query_runs")},
            "report": {"href": format!("/api/{MODE_WORKSPACE}/reports/{}", run.report)},
            "web_external_url": {"href": format!("https://app.mode.com/{MODE_WORKSPACE}/reports/{}/runs/{}", run.report, run.token)}
        }
    })
}

fn mode_handle(state: &mut ModeState, seen: &Seen) -> Reply {
    let not_found =
        |what: &str| Reply::json(404, serde_json::json!({"id": "not_found", "message": what}));
    if seen.header("authorization") != Some(basic_auth(MODE_TOKEN, MODE_SECRET).as_str()) {
        return Reply::json(
            401,
            serde_json::json!({"id": "unauthorized", "message": "bad credentials"}),
        );
    }
    if let Some(reply) = state.faults.take(seen) {
        return reply;
    }
    let parts: Vec<&str> = seen.path.trim_start_matches('/').split('/').collect();
    if parts.len() < 2 || parts[0] != "api" || parts[1] != MODE_WORKSPACE {
        return not_found("account not found");
    }
    match (seen.method.as_str(), &parts[2..]) {
        // The workspace (Mode calls it an account): `GET /api/{workspace}`.
        ("GET", []) => Reply::json(
            200,
            serde_json::json!({"username": MODE_WORKSPACE, "name": "Acme", "token": "a1b2c3",
                "_links": {"self": {"href": format!("/api/{MODE_WORKSPACE}")}}}),
        ),
        ("POST", ["reports", report, "runs"]) => {
            if !state.reports.iter().any(|(r, _)| r == report) {
                return not_found("report not found");
            }
            if !seen
                .header("content-type")
                .is_some_and(|c| c.starts_with("application/json"))
            {
                return Reply::json(
                    415,
                    serde_json::json!({"message": "unsupported media type"}),
                );
            }
            let body = seen.json();
            let parameters = match body.get("parameters") {
                None => serde_json::json!({}),
                Some(p) if p.is_object() => p.clone(),
                Some(_) => {
                    return Reply::json(
                        400,
                        serde_json::json!({"message": "parameters must be an object"}),
                    )
                }
            };
            if !body.is_object() {
                return Reply::json(400, serde_json::json!({"message": "bad request"}));
            }
            state.next_run += 1;
            let run = ModeRun {
                report: report.to_string(),
                token: format!("run{:09x}", state.next_run),
                state: "enqueued".into(),
                parameters,
                queries: None,
            };
            let reply = Reply::json(200, mode_run_json(&run));
            state.runs.push(run);
            reply
        }
        ("GET", ["reports", report, "runs", run]) => match state.run(report, run) {
            Some(run) => Reply::json(200, mode_run_json(run)),
            None => not_found("report run not found"),
        },
        ("GET", ["reports", report, "runs", run, "query_runs"]) => {
            let Some(run) = state.run(report, run) else {
                return not_found("report run not found");
            };
            let base = format!("/api/{MODE_WORKSPACE}/reports/{report}/runs/{}", run.token);
            let queries: Vec<serde_json::Value> = run
                .queries
                .iter()
                .flatten()
                .enumerate()
                .map(|(i, (name, _))| {
                    serde_json::json!({"token": format!("qr{i}"), "state": "succeeded", "query_name": name,
                        "query_token": format!("q{i}"),
                        "_links": {"result": {"href": format!("{base}/query_runs/qr{i}/results")}}})
                })
                .collect();
            Reply::json(
                200,
                serde_json::json!({"_embedded": {"query_runs": queries}, "_links": {"self": {"href": format!("{base}/query_runs")}}}),
            )
        }
        ("GET", ["reports", report, "runs", run, "query_runs", qr, "results", "content.json"]) => {
            let Some(run) = state.run(report, run) else {
                return not_found("report run not found");
            };
            let Some(queries) = &run.queries else {
                return not_found("run results not found");
            };
            let index: usize = qr.trim_start_matches("qr").parse().unwrap_or(usize::MAX);
            match queries.get(index) {
                Some((_, QueryResult::Rows(rows))) => Reply::json(200, rows.clone()),
                Some((_, QueryResult::Purged)) => not_found("run results not found"),
                Some((_, QueryResult::Huge(bytes))) => {
                    let row = br#"{"order_date":"2026-08-06","total_amt_usd":1250.75},"#;
                    let mut body = Vec::with_capacity(*bytes + row.len());
                    body.push(b'[');
                    while body.len() < *bytes {
                        body.extend_from_slice(row);
                    }
                    body.pop();
                    body.push(b']');
                    Reply::streamed(200, "application/json", body)
                }
                None => not_found("query run not found"),
            }
        }
        ("GET", ["reports", report]) => match state.reports.iter().find(|(r, _)| r == report) {
            Some((token, name)) => {
                Reply::json(200, serde_json::json!({"token": token, "name": name}))
            }
            None => not_found("report not found"),
        },
        _ => not_found("not found"),
    }
}
