//! Local fake servers for the services freshet talks to, built from ../shared/api.
//! Each records every request it gets, so tests can assert on exactly what was sent.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use warp::Filter;

use super::Setup;

/// One request as a fake saw it.
#[derive(Debug, Clone)]
pub struct Seen {
    pub method: String,
    pub path: String,
    pub query: String,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Seen {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or(serde_json::Value::Null)
    }
}

pub type Log = Arc<Mutex<Vec<Seen>>>;

/// A server that answers every request with 200 `{}` and records it: stands for a host
/// that must never be contacted.
pub async fn recorder() -> (SocketAddr, Log) {
    serve(|_| Reply::json(200, serde_json::json!({})))
}

/// A filter that extracts the whole request as a [`Seen`].
pub fn capture() -> impl Filter<Extract = (Seen,), Error = warp::Rejection> + Clone {
    warp::method()
        .and(warp::path::full())
        .and(warp::query::raw().or(warp::any().map(String::new)).unify())
        .and(warp::header::headers_cloned())
        .and(warp::body::bytes())
        .map(
            |method: warp::http::Method,
             path: warp::path::FullPath,
             query: String,
             headers: warp::http::HeaderMap,
             body: bytes::Bytes| Seen {
                method: method.to_string(),
                path: path.as_str().to_string(),
                query,
                headers: headers
                    .iter()
                    .map(|(k, v)| {
                        (
                            k.to_string(),
                            String::from_utf8_lossy(v.as_bytes()).to_string(),
                        )
                    })
                    .collect(),
                body: body.to_vec(),
            },
        )
}

/// What a fake answers.
#[derive(Debug, Clone)]
pub struct Reply {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
    /// Send the body in chunks with no Content-Length, as a streaming server does.
    pub chunked: bool,
    /// Answer only after this long (a slow service); the request has been taken by then.
    pub delay_ms: u64,
}

impl Reply {
    pub fn json(status: u16, body: serde_json::Value) -> Reply {
        Reply {
            status,
            headers: vec![("content-type".into(), "application/json".into())],
            body: body.to_string().into_bytes(),
            chunked: false,
            delay_ms: 0,
        }
    }
    pub fn text(status: u16, body: &str) -> Reply {
        Reply {
            status,
            headers: vec![("content-type".into(), "text/plain".into())],
            body: body.as_bytes().to_vec(),
            chunked: false,
            delay_ms: 0,
        }
    }
    /// `body`, sent in 64 KiB chunks without a Content-Length.
    pub fn streamed(status: u16, content_type: &str, body: Vec<u8>) -> Reply {
        Reply {
            status,
            headers: vec![("content-type".into(), content_type.into())],
            body,
            chunked: true,
            delay_ms: 0,
        }
    }
    pub fn with_header(mut self, name: &str, value: &str) -> Reply {
        self.headers.push((name.into(), value.into()));
        self
    }
}

/// Canned failures: the next `n` requests whose path contains `path` get `reply`.
#[derive(Default)]
pub struct Faults(Vec<(String, usize, Reply)>);

impl Faults {
    pub fn add(&mut self, path: &str, n: usize, reply: Reply) {
        self.0.push((path.into(), n, reply));
    }
    fn take(&mut self, seen: &Seen) -> Option<Reply> {
        let entry = self
            .0
            .iter_mut()
            .find(|(path, n, _)| *n > 0 && seen.path.contains(path.as_str()))?;
        entry.1 -= 1;
        Some(entry.2.clone())
    }
    /// Removes every remaining canned failure: the service has healed.
    pub fn heal(&mut self) {
        self.0.clear();
    }
}

/// Serves `handler` on 127.0.0.1:0; every request is recorded in the returned log.
pub fn serve<F>(handler: F) -> (SocketAddr, Log)
where
    F: Fn(&Seen) -> Reply + Send + Sync + 'static,
{
    let log: Log = Arc::default();
    let seen_log = Arc::clone(&log);
    let handler = Arc::new(handler);
    let route = capture().then(move |request: Seen| {
        let reply = handler(&request);
        seen_log.lock().unwrap().push(request);
        async move {
            if reply.delay_ms > 0 {
                tokio::time::sleep(std::time::Duration::from_millis(reply.delay_ms)).await;
            }
            respond(reply)
        }
    });
    let (addr, server) = warp::serve(route).bind_ephemeral(([127, 0, 0, 1], 0));
    tokio::spawn(server);
    (addr, log)
}

fn respond(reply: Reply) -> warp::http::Response<warp::hyper::Body> {
    let mut response = warp::http::Response::builder().status(reply.status);
    for (name, value) in &reply.headers {
        response = response.header(name, value);
    }
    let body = if reply.chunked {
        let chunks: Vec<Result<Vec<u8>, std::convert::Infallible>> = reply
            .body
            .chunks(64 << 10)
            .map(|chunk| Ok(chunk.to_vec()))
            .collect();
        warp::hyper::Body::wrap_stream(futures_util::stream::iter(chunks))
    } else {
        warp::hyper::Body::from(reply.body)
    };
    response.body(body).unwrap()
}

/// A running fake service: where it listens, every request it saw, and its state, which
/// tests read and change (canned faults, content).
pub struct Fake<S> {
    pub addr: SocketAddr,
    pub log: Log,
    pub state: Arc<Mutex<S>>,
}

impl<S> Clone for Fake<S> {
    fn clone(&self) -> Self {
        Fake {
            addr: self.addr,
            log: Arc::clone(&self.log),
            state: Arc::clone(&self.state),
        }
    }
}

impl<S: Send + 'static> Fake<S> {
    /// Serves `handle` over `state` on 127.0.0.1:0.
    fn spawn(state: S, handle: fn(&mut S, &Seen) -> Reply) -> Fake<S> {
        let state = Arc::new(Mutex::new(state));
        let handler_state = Arc::clone(&state);
        let (addr, log) = serve(move |seen| handle(&mut handler_state.lock().unwrap(), seen));
        Fake { addr, log, state }
    }

    pub fn base(&self) -> String {
        format!("http://{}", self.addr)
    }
}

fn basic_auth(user: &str, password: &str) -> String {
    use std::io::Write;
    let mut raw = Vec::new();
    write!(raw, "{user}:{password}").unwrap();
    format!("Basic {}", base64_encode(&raw))
}

fn base64_encode(bytes: &[u8]) -> String {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for chunk in bytes.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(ALPHABET[((n >> (18 - 6 * i)) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

fn percent_decode(text: &str) -> String {
    let text = text.replace('+', " ");
    percent_encoding::percent_decode_str(&text)
        .decode_utf8_lossy()
        .to_string()
}

fn query_params(query: &str) -> Vec<(String, String)> {
    query
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|pair| {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            (percent_decode(k), percent_decode(v))
        })
        .collect()
}

// ---------------------------------------------------------------------------------------
// Mode
// ---------------------------------------------------------------------------------------

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

// ---------------------------------------------------------------------------------------
// Tableau
// ---------------------------------------------------------------------------------------

pub const TABLEAU_PAT_NAME: &str = "freshet";
pub const TABLEAU_PAT_SECRET: &str = "tableau-pat-secret-1";
pub const TABLEAU_SITE: &str = "finance";
pub const TABLEAU_SITE_ID: &str = "6b7179ba-b82b-4f0f-91ed-812074ac5da6";

/// A workbook or data source on the fake site.
#[derive(Debug, Clone)]
pub struct TableauItem {
    pub id: String,
    pub name: String,
    /// "workbooks" or "datasources".
    pub kind: String,
    pub project: String,
}

/// A refresh job, and how it will end.
#[derive(Debug, Clone)]
pub struct TableauJob {
    pub id: String,
    pub kind: String,
    pub item: String,
    /// Polls still answered "in progress".
    pub polls_left: usize,
    /// finishCode once done (0 ok, 1 failed, 2 cancelled); None never finishes.
    pub finish_code: Option<u8>,
    pub notes: Option<String>,
}

pub struct TableauState {
    pub content: Vec<TableauItem>,
    /// The newest REST API version the server supports; newer ones are refused with
    /// 404001, as Tableau Server 2023.3 refuses 3.22.
    pub max_api_version: String,
    pub current_token: Option<String>,
    pub sign_ins: usize,
    /// (kind, id) of every accepted refresh.
    pub refreshes: Vec<(String, String)>,
    pub jobs: Vec<TableauJob>,
    /// How the next refresh jobs end: polls in progress, finishCode, notes.
    pub next_job: (usize, Option<u8>, Option<String>),
    pub faults: Faults,
    /// Answer sign-ins with a 301 to this `Location` (absolute or relative). Paths under
    /// `/pod` are served too, as a load balancer's path on the same server would be.
    pub redirect_signin_to: Option<String>,
}

impl Default for TableauState {
    fn default() -> Self {
        TableauState {
            content: Vec::new(),
            max_api_version: "3.22".into(),
            current_token: None,
            sign_ins: 0,
            refreshes: Vec::new(),
            jobs: Vec::new(),
            next_job: (1, Some(0), None),
            faults: Faults::default(),
            redirect_signin_to: None,
        }
    }
}

/// A fake Tableau REST API (JSON): version checks and serverinfo, PAT sign-in with one
/// live session per PAT, name filters, pagination, projects, refresh jobs that run their
/// course.
pub type FakeTableau = Fake<TableauState>;

impl FakeTableau {
    pub async fn start() -> FakeTableau {
        let mut state = TableauState::default();
        for (id, name, kind, project) in [
            (
                "3cc6cd06-89ce-4fdc-b935-5294135d6d42",
                "Sales Overview, Q3",
                "workbooks",
                "Sales",
            ),
            (
                "9a1b2c3d-0000-4000-8000-000000000001",
                "Finance Overview",
                "workbooks",
                "Finance",
            ),
            (
                "7d6c5b4a-0000-4000-8000-000000000002",
                "Revenue Extract",
                "datasources",
                "Finance",
            ),
            // The same name in two projects (names are unique only within a project).
            (
                "aa000000-0000-4000-8000-00000000000a",
                "Quarterly",
                "workbooks",
                "Finance",
            ),
            (
                "bb000000-0000-4000-8000-00000000000b",
                "Quarterly",
                "workbooks",
                "Sales",
            ),
        ] {
            state.content.push(TableauItem {
                id: id.into(),
                name: name.into(),
                kind: kind.into(),
                project: project.into(),
            });
        }
        Fake::spawn(state, tableau_handle)
    }

    /// A `[tableau]` section pointing at this fake; `api_version` pinned or left out.
    pub fn section(&self, api_version: Option<&str>) -> String {
        let version = api_version
            .map(|v| format!("api_version = \"{v}\"\n"))
            .unwrap_or_default();
        format!(
            "[tableau]\nserver = \"{}\"\nsite = \"{TABLEAU_SITE}\"\n{version}job_poll_seconds = 1\npat_name = \"{TABLEAU_PAT_NAME}\"\npat_secret = {{ env = \"T_PAT\" }}\n",
            self.base()
        )
    }

    /// Ends the current session, as an expiry or another sign-in would.
    pub fn expire_session(&self) {
        self.state.lock().unwrap().current_token = Some("expired-elsewhere".into());
    }

    pub fn sign_ins(&self) -> usize {
        self.state.lock().unwrap().sign_ins
    }

    pub fn refreshes(&self) -> Vec<(String, String)> {
        self.state.lock().unwrap().refreshes.clone()
    }

    /// "METHOD path" of every request, in order.
    pub fn calls(&self) -> Vec<String> {
        self.log
            .lock()
            .unwrap()
            .iter()
            .map(|s| format!("{} {}", s.method, s.path))
            .collect()
    }
}

fn tableau_error(status: u16, code: &str, summary: &str) -> Reply {
    Reply::json(
        status,
        serde_json::json!({"error": {"code": code, "summary": summary, "detail": summary}}),
    )
}

/// "3.22" as (3, 22), for comparing versions.
fn api_version(text: &str) -> Option<(u32, u32)> {
    let (major, minor) = text.split_once('.')?;
    Some((major.parse().ok()?, minor.parse().ok()?))
}

fn tableau_handle(state: &mut TableauState, seen: &Seen) -> Reply {
    let under_pod = seen.path.starts_with("/pod/");
    let path = seen.path.strip_prefix("/pod").unwrap_or(&seen.path);
    let Some((version, rest)) = path.strip_prefix("/api/").and_then(|p| p.split_once('/')) else {
        return tableau_error(404, "404000", "Resource Not Found");
    };
    match (api_version(version), api_version(&state.max_api_version)) {
        (Some(asked), Some(max)) if asked <= max => {}
        _ => return tableau_error(404, "404001", "Invalid version"),
    }
    // Without these headers Tableau reads the body as XML and answers in XML.
    if seen.method == "POST"
        && !seen
            .header("content-type")
            .is_some_and(|c| c.starts_with("application/json"))
    {
        return Reply::text(
            400,
            r#"<tsResponse><error code="400000"><summary>Bad Request</summary></error></tsResponse>"#,
        );
    }
    if !seen
        .header("accept")
        .is_some_and(|a| a.contains("application/json"))
    {
        return Reply::text(200, "<tsResponse/>");
    }
    if rest == "serverinfo" {
        if seen.method != "GET" {
            return tableau_error(405, "405000", "Method Not Allowed");
        }
        return Reply::json(
            200,
            serde_json::json!({"serverInfo": {
                "productVersion": {"value": "2023.1.0", "build": "20231.23.0"},
                "restApiVersion": state.max_api_version}}),
        );
    }
    if rest == "auth/signin" {
        if seen.method != "POST" {
            return tableau_error(405, "405000", "Method Not Allowed");
        }
        if let (Some(location), false) = (&state.redirect_signin_to, under_pod) {
            return Reply::text(301, "").with_header("location", location);
        }
        let body = seen.json();
        let credentials = &body["credentials"];
        if credentials["personalAccessTokenName"] != TABLEAU_PAT_NAME
            || credentials["personalAccessTokenSecret"] != TABLEAU_PAT_SECRET
            || credentials["site"]["contentUrl"] != TABLEAU_SITE
        {
            return tableau_error(401, "401001", "Signin Error");
        }
        state.sign_ins += 1;
        let token = format!("tok{}|{TABLEAU_SITE_ID}", state.sign_ins);
        state.current_token = Some(token.clone());
        return Reply::json(
            200,
            serde_json::json!({"credentials": {
            "token": token, "site": {"id": TABLEAU_SITE_ID, "contentUrl": TABLEAU_SITE}, "user": {"id": "u1"}}}),
        );
    }
    match seen.header("x-tableau-auth") {
        None => return tableau_error(401, "401000", "No authentication credentials were provided"),
        Some(token) if Some(token) != state.current_token.as_deref() => {
            return tableau_error(401, "401002", "Unauthorized Access")
        }
        Some(_) => {}
    }
    if let Some(reply) = state.faults.take(seen) {
        return reply;
    }
    let parts: Vec<&str> = rest.split('/').collect();
    match (seen.method.as_str(), parts.as_slice()) {
        ("GET", ["sites", site, kind])
            if *site == TABLEAU_SITE_ID && (*kind == "workbooks" || *kind == "datasources") =>
        {
            let params = query_params(&seen.query);
            let get = |k: &str| {
                params
                    .iter()
                    .find(|(key, _)| key == k)
                    .map(|(_, v)| v.clone())
            };
            let page_size: usize = get("pageSize").and_then(|v| v.parse().ok()).unwrap_or(100);
            let page: usize = get("pageNumber").and_then(|v| v.parse().ok()).unwrap_or(1);
            let mut items: Vec<&TableauItem> = state
                .content
                .iter()
                .filter(|item| item.kind == *kind)
                .collect();
            if let Some(filter) = get("filter") {
                // Filters cannot hold ',' or '&', even encoded: Tableau refuses them.
                let Some(name) = filter.strip_prefix("name:eq:") else {
                    return tableau_error(400, "400006", "Invalid filter");
                };
                if name.contains(',') || name.contains('&') {
                    return tableau_error(400, "400006", "Invalid filter");
                }
                items.retain(|item| item.name == name);
            }
            let total = items.len();
            let page_items: Vec<serde_json::Value> = items
                .iter()
                .skip((page - 1) * page_size)
                .take(page_size)
                .map(|item| {
                    serde_json::json!({"id": item.id, "name": item.name,
                    "project": {"id": format!("p-{}", item.project), "name": item.project}})
                })
                .collect();
            let singular = kind.trim_end_matches('s');
            let listing = if page_items.is_empty() {
                serde_json::json!({})
            } else {
                serde_json::json!({ singular: page_items })
            };
            Reply::json(
                200,
                serde_json::json!({
                    "pagination": {"pageNumber": page.to_string(), "pageSize": page_size.to_string(), "totalAvailable": total.to_string()},
                    *kind: listing
                }),
            )
        }
        ("POST", ["sites", site, kind, id, "refresh"]) if *site == TABLEAU_SITE_ID => {
            if seen.json() != serde_json::json!({}) {
                return tableau_error(400, "400000", "Bad Request");
            }
            let Some(item) = state
                .content
                .iter()
                .find(|item| item.id == *id && item.kind == *kind)
            else {
                return tableau_error(404, "404006", "Resource Not Found");
            };
            let item_name = item.name.clone();
            state.refreshes.push((kind.to_string(), id.to_string()));
            let job_id = format!("job-{}", state.refreshes.len());
            let (polls, finish_code, notes) = state.next_job.clone();
            state.jobs.push(TableauJob {
                id: job_id.clone(),
                kind: kind.to_string(),
                item: item_name,
                polls_left: polls,
                finish_code,
                notes,
            });
            Reply::json(
                202,
                serde_json::json!({"job": {"id": job_id, "mode": "Asynchronous", "type": "RefreshExtract"}}),
            )
        }
        ("GET", ["sites", site, "jobs", id]) if *site == TABLEAU_SITE_ID => {
            let Some(job) = state.jobs.iter_mut().find(|job| job.id == *id) else {
                return tableau_error(404, "404031", "Job Not Found");
            };
            let child = if job.kind == "workbooks" {
                "workbook"
            } else {
                "datasource"
            };
            let mut body = serde_json::json!({"job": {
                "id": job.id, "mode": "Asynchronous", "type": "RefreshExtract",
                "createdAt": "2026-11-30T10:00:00Z", "startedAt": "2026-11-30T10:00:01Z",
                "extractRefreshJob": { child: {"id": "x", "name": job.item} }}});
            match (job.polls_left, job.finish_code) {
                (0, Some(code)) => {
                    body["job"]["progress"] = serde_json::json!("100");
                    body["job"]["completedAt"] = serde_json::json!("2026-11-30T10:05:00Z");
                    body["job"]["finishCode"] = serde_json::json!(code.to_string());
                    if let Some(notes) = &job.notes {
                        body["job"]["extractRefreshJob"]["notes"] = serde_json::json!(notes);
                    }
                }
                (left, _) => {
                    job.polls_left = left.saturating_sub(1);
                    body["job"]["progress"] = serde_json::json!("40");
                }
            }
            Reply::json(200, body)
        }
        _ => tableau_error(404, "404000", "Resource Not Found"),
    }
}

// ---------------------------------------------------------------------------------------
// Slack
// ---------------------------------------------------------------------------------------

pub const SLACK_WEBHOOK_PATH: &str = "/services/T0001/B0001/hooksecret123";
pub const SLACK_BOT_TOKEN: &str = "xoxb-test-token-1";

/// A message chat.postMessage accepted.
#[derive(Debug, Clone, PartialEq)]
pub struct SlackMessage {
    pub channel: String,
    pub text: String,
    pub ts: String,
    pub thread_ts: Option<String>,
}

#[derive(Default)]
pub struct SlackState {
    /// (channel or "webhook", text) of every accepted post.
    pub posts: Vec<(String, String)>,
    /// Every message posted with the bot token, with its `ts` and thread.
    pub messages: Vec<SlackMessage>,
    /// Warnings Slack would have sent back (`missing_charset`).
    pub warnings: Vec<String>,
    pub faults: Faults,
    /// How long each post takes to be answered (taken at once, answered late).
    pub delay_ms: u64,
}

/// A fake Slack: the incoming webhook answers plain `ok`; chat.postMessage needs the bot
/// token and answers `{"ok": ..}` with HTTP 200 for method errors, like Slack.
pub type FakeSlack = Fake<SlackState>;

impl FakeSlack {
    /// Adds a `[slack]` section pointing at this fake, with its webhook URL and bot token.
    pub fn configure(&self, setup: Setup) -> Setup {
        setup
            .section(&format!(
                "[slack]\nwebhook_url = {{ env = \"T_SLACK_URL\" }}\nbot_token = {{ env = \"T_SLACK_BOT\" }}\napi_base = \"{}\"\n",
                self.api_base()
            ))
            .env("T_SLACK_URL", &self.webhook_url())
            .env("T_SLACK_BOT", SLACK_BOT_TOKEN)
    }

    pub async fn start() -> FakeSlack {
        Fake::spawn(SlackState::default(), slack_handle)
    }

    pub fn webhook_url(&self) -> String {
        format!("http://{}{SLACK_WEBHOOK_PATH}", self.addr)
    }

    pub fn api_base(&self) -> String {
        format!("http://{}/api", self.addr)
    }

    pub fn posts(&self) -> Vec<(String, String)> {
        self.state.lock().unwrap().posts.clone()
    }

    pub fn messages(&self) -> Vec<SlackMessage> {
        self.state.lock().unwrap().messages.clone()
    }
}

fn slack_handle(state: &mut SlackState, seen: &Seen) -> Reply {
    if seen.method != "POST" {
        return Reply::text(405, "method_not_allowed");
    }
    if let Some(reply) = state.faults.take(seen) {
        return reply;
    }
    if !seen
        .header("content-type")
        .is_some_and(|c| c.starts_with("application/json"))
    {
        return Reply::text(400, "invalid_payload");
    }
    let body = seen.json();
    if seen.path == SLACK_WEBHOOK_PATH {
        let Some(text) = body.get("text").and_then(|t| t.as_str()) else {
            return Reply::text(
                400,
                if body.is_null() {
                    "invalid_payload"
                } else {
                    "missing_text_or_fallback_or_attachments"
                },
            );
        };
        state.posts.push(("webhook".into(), text.to_string()));
        let mut reply = Reply::text(200, "ok");
        reply.delay_ms = state.delay_ms;
        return reply;
    }
    if seen.path == "/api/chat.postMessage" {
        match seen.header("authorization") {
            None => {
                return Reply::json(200, serde_json::json!({"ok": false, "error": "not_authed"}))
            }
            Some(auth) if auth != format!("Bearer {SLACK_BOT_TOKEN}") => {
                return Reply::json(
                    200,
                    serde_json::json!({"ok": false, "error": "invalid_auth"}),
                )
            }
            Some(_) => {}
        }
        let channel = body.get("channel").and_then(|c| c.as_str());
        let text = body.get("text").and_then(|t| t.as_str());
        let (Some(channel), Some(text)) = (channel, text) else {
            return Reply::json(200, serde_json::json!({"ok": false, "error": "no_text"}));
        };
        if channel == "#not-a-member" {
            return Reply::json(
                200,
                serde_json::json!({"ok": false, "error": "not_in_channel"}),
            );
        }
        let thread_ts = match body.get("thread_ts") {
            None => None,
            Some(serde_json::Value::String(ts)) => {
                // A reply names a message that was posted.
                if !state.messages.iter().any(|m| &m.ts == ts) {
                    return Reply::json(
                        200,
                        serde_json::json!({"ok": false, "error": "thread_not_found"}),
                    );
                }
                Some(ts.clone())
            }
            Some(_) => {
                return Reply::json(
                    200,
                    serde_json::json!({"ok": false, "error": "invalid_thread_ts"}),
                )
            }
        };
        // Slack reads JSON without a charset but warns about it.
        let mut warning = None;
        if !seen.header("content-type").is_some_and(|c| {
            c.replace(' ', "")
                .eq_ignore_ascii_case("application/json;charset=utf-8")
        }) {
            state.warnings.push("missing_charset".into());
            warning = Some("missing_charset");
        }
        state.posts.push((channel.to_string(), text.to_string()));
        let ts = format!("1725574158.{:06}", state.posts.len());
        state.messages.push(SlackMessage {
            channel: channel.to_string(),
            text: text.to_string(),
            ts: ts.clone(),
            thread_ts,
        });
        let mut answer = serde_json::json!({"ok": true, "channel": "C0123456789", "ts": ts});
        if let Some(warning) = warning {
            answer["warning"] = serde_json::json!(warning);
        }
        return Reply::json(200, answer);
    }
    // A wrong webhook path: Slack says no_service.
    Reply::text(404, "no_service")
}
