//! A fake Tableau REST API: version checks and serverinfo, PAT sign-in with one live
//! session per PAT, name filters, pagination, projects, refresh jobs that run their
//! course.

use super::*;

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
    /// Sessions ended with `POST auth/signout`.
    pub sign_outs: usize,
    /// (kind, id) of every accepted refresh.
    pub refreshes: Vec<(String, String)>,
    pub jobs: Vec<TableauJob>,
    /// How the next refresh jobs end: polls in progress, finishCode, notes.
    pub next_job: (usize, Option<u8>, Option<String>),
    pub faults: Faults,
    /// Answer sign-ins with a 301 to this `Location` (absolute or relative). Paths under
    /// `/pod` are served too, as a load balancer's path on the same server would be.
    pub redirect_signin_to: Option<String>,
    /// This many of the next sign-ins are followed at once by another process's sign-in
    /// with the same PAT (a second instance): Tableau keeps one session per PAT, so the
    /// token just handed out is dead before it is used.
    pub rival_sign_ins: usize,
}

impl Default for TableauState {
    fn default() -> Self {
        TableauState {
            content: Vec::new(),
            max_api_version: "3.22".into(),
            current_token: None,
            sign_ins: 0,
            sign_outs: 0,
            refreshes: Vec::new(),
            jobs: Vec::new(),
            next_job: (1, Some(0), None),
            faults: Faults::default(),
            redirect_signin_to: None,
            rival_sign_ins: 0,
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
    // Without these headers Tableau reads the body as XML and answers in XML (sign-out
    // has no body, so no Content-Type: tableauserverclient sends none).
    if seen.method == "POST"
        && rest != "auth/signout"
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
        if state.rival_sign_ins > 0 {
            state.rival_sign_ins -= 1;
            state.current_token = Some(format!("rival{}", state.sign_ins));
        }
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
    if rest == "auth/signout" {
        if seen.method != "POST" {
            return tableau_error(405, "405000", "Method Not Allowed");
        }
        // The session ends: its token is refused from now on.
        state.current_token = None;
        state.sign_outs += 1;
        return Reply::text(204, "");
    }
    let parts: Vec<&str> = rest.split('/').collect();
    match (seen.method.as_str(), parts.as_slice()) {
        ("GET", ["sites", site]) if *site == TABLEAU_SITE_ID => Reply::json(
            200,
            serde_json::json!({"site": {"id": TABLEAU_SITE_ID, "name": "Finance",
                "contentUrl": TABLEAU_SITE, "state": "Active"}}),
        ),
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
