//! The `tableau_refresh` and `tableau_refresh_datasource` actions: Tableau extract
//! refreshes (Tableau's REST API,
//! <https://help.tableau.com/current/api/rest_api/en-us/REST/rest_api_ref.htm>).
//!
//! A personal access token allows one live session: signing in again ends the previous
//! one. So one [`Tableau`] holds the one session for every job, signs in under a lock,
//! reuses the token until Tableau refuses it (401002/401000), then signs in once more.
//!
//! Unless `tableau.api_version` pins one, the REST API version is the server's own,
//! asked of `serverinfo` before each sign-in (docs/behaviour.md section 7): a fixed default is
//! refused by every server older than it. Names are unique only within a project, so a name may
//! come with its project. An accepted refresh is only queued; [`Tableau::job`] reads the
//! job that runs it, which `stages/follow.rs` polls to its end.

use percent_encoding::{utf8_percent_encode, AsciiSet, NON_ALPHANUMERIC};
use reqwest::{Client, Method, StatusCode};
use rhai::{Dynamic, Engine, EvalAltResult, Map, NativeCallContext};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use tokio::sync::Mutex;

use super::client::{excerpt, send, status_error, ActionError};
use super::{ActionRequest, Services};
use crate::config::TableauConfig;
use crate::rules::api::{bad_argument, get_string, non_empty, record, to_plain_json, Fallible};

const SERVICE: &str = "tableau";
const PAGE_SIZE: u64 = 100;
/// Characters kept as they are in a filter value; everything else is percent-encoded.
const FILTER_VALUE: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'_')
    .remove(b'.')
    .remove(b'~');

/// `tableau_refresh(workbook)` / `tableau_refresh(#{ workbook, project })`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RefreshWorkbook {
    pub workbook: String,
    /// The project that holds it, when the name alone is ambiguous.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub project: Option<String>,
}

/// `tableau_refresh_datasource(name)` / `tableau_refresh_datasource(#{ datasource,
/// project })`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RefreshDatasource {
    pub datasource: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub project: Option<String>,
}

impl RefreshWorkbook {
    pub fn target(&self) -> Target<'_> {
        Target {
            content: Content::Workbook,
            name: &self.workbook,
            project: self.project.as_deref(),
        }
    }
}

impl RefreshDatasource {
    pub fn target(&self) -> Target<'_> {
        Target {
            content: Content::Datasource,
            name: &self.datasource,
            project: self.project.as_deref(),
        }
    }
}

/// Refreshes `target` through the daemon's one Tableau session.
pub async fn call(services: &Services<'_>, target: Target<'_>) -> Result<Value, ActionError> {
    let tableau = services
        .config
        .tableau
        .as_ref()
        .ok_or_else(|| ActionError::not_configured(SERVICE))?;
    services
        .tableau
        .refresh(services.http, tableau, target)
        .await
}

/// The rule functions that build a [`RefreshWorkbook`] or a [`RefreshDatasource`].
pub(super) fn register(engine: &mut Engine) {
    engine.register_fn(
        "tableau_refresh",
        |ctx: NativeCallContext, workbook: &str| -> Fallible {
            let workbook = non_empty(&ctx, "tableau_refresh", "the workbook name", workbook)?;
            let written = json!([workbook]);
            let refresh = RefreshWorkbook {
                workbook,
                project: None,
            };
            record(&ctx, ActionRequest::TableauRefresh(refresh), written)
        },
    );
    engine.register_fn(
        "tableau_refresh",
        |ctx: NativeCallContext, target: Map| -> Fallible {
            let (workbook, project) = named_target(&ctx, "tableau_refresh", "workbook", &target)?;
            let written = to_plain_json(&Dynamic::from_map(target));
            let refresh = RefreshWorkbook { workbook, project };
            record(&ctx, ActionRequest::TableauRefresh(refresh), written)
        },
    );
    engine.register_fn(
        "tableau_refresh_datasource",
        |ctx: NativeCallContext, name: &str| -> Fallible {
            let datasource = non_empty(
                &ctx,
                "tableau_refresh_datasource",
                "the data source name",
                name,
            )?;
            let written = json!([datasource]);
            let refresh = RefreshDatasource {
                datasource,
                project: None,
            };
            record(
                &ctx,
                ActionRequest::TableauRefreshDatasource(refresh),
                written,
            )
        },
    );
    engine.register_fn(
        "tableau_refresh_datasource",
        |ctx: NativeCallContext, target: Map| -> Fallible {
            let (datasource, project) =
                named_target(&ctx, "tableau_refresh_datasource", "datasource", &target)?;
            let written = to_plain_json(&Dynamic::from_map(target));
            let refresh = RefreshDatasource {
                datasource,
                project,
            };
            record(
                &ctx,
                ActionRequest::TableauRefreshDatasource(refresh),
                written,
            )
        },
    );
}

/// `#{ workbook, project }` or `#{ datasource, project }`: the name, and the project that
/// holds it.
/// The keys of `tableau_refresh`'s and `tableau_refresh_datasource`'s map.
pub const WORKBOOK_KEYS: [&str; 2] = ["workbook", "project"];
pub const DATASOURCE_KEYS: [&str; 2] = ["datasource", "project"];

fn named_target(
    ctx: &NativeCallContext,
    function: &str,
    name_key: &str,
    map: &Map,
) -> Result<(String, Option<String>), Box<EvalAltResult>> {
    for key in map.keys() {
        if key.as_str() != name_key && key.as_str() != "project" {
            return Err(bad_argument(
                ctx,
                format!("{function}: unknown key `{key}` ({name_key}, project)"),
            ));
        }
    }
    let name = get_string(map, name_key)
        .ok_or_else(|| bad_argument(ctx, format!("{function}: the map needs `{name_key}`")))?;
    let name = non_empty(ctx, function, &format!("`{name_key}`"), &name)?;
    let project = match get_string(map, "project") {
        Some(project) => Some(non_empty(ctx, function, "`project`", &project)?),
        None => None,
    };
    Ok((name, project))
}

/// What to refresh: an item's name, and the project it is in when the name alone is
/// ambiguous.
#[derive(Debug, Clone, Copy)]
pub struct Target<'a> {
    pub content: Content,
    pub name: &'a str,
    pub project: Option<&'a str>,
}

/// A refresh job as Tableau's Query Job call reports it.
#[derive(Debug, Clone, PartialEq)]
pub struct JobState {
    /// Set once the job has ended; until then the job is queued or running.
    pub completed_at: Option<String>,
    pub started_at: Option<String>,
    /// 0 success, 1 failed, 2 cancelled, 3 completed (success); None while running.
    pub finish_code: Option<i64>,
    /// The error text of a failed job (`extractRefreshJob.notes`).
    pub notes: Option<String>,
}

/// A signed-in session.
#[derive(Clone)]
struct Session {
    token: String,
    site_id: String,
    /// `{server}/api/{version}` of the server that signed us in: after a 301 (Tableau
    /// Cloud sends sign-ins to the site's pod) every later call goes to the pod too.
    api_root: String,
    /// Whom it was signed in as ([`signed_in_as`]): a reload that changes the server,
    /// the site or the PAT makes it no longer the session the config asks for.
    identity: [u8; 32],
}

/// The server, site and PAT a session belongs to, as one digest (the PAT's secret is not
/// kept in the clear beside the token).
fn signed_in_as(config: &TableauConfig) -> [u8; 32] {
    use sha2::{Digest, Sha256};
    let mut digest = Sha256::new();
    for part in [
        config.server.as_str(),
        config.site.as_str(),
        config.pat_name.as_str(),
        config.pat_secret.expose(),
    ] {
        digest.update(part.len().to_le_bytes());
        digest.update(part.as_bytes());
    }
    digest.finalize().into()
}

/// What to refresh.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Content {
    Workbook,
    Datasource,
}

impl Content {
    fn collection(self) -> &'static str {
        match self {
            Content::Workbook => "workbooks",
            Content::Datasource => "datasources",
        }
    }
    fn item(self) -> &'static str {
        match self {
            Content::Workbook => "workbook",
            Content::Datasource => "datasource",
        }
    }
    fn noun(self) -> &'static str {
        match self {
            Content::Workbook => "workbook",
            Content::Datasource => "data source",
        }
    }
}

/// The shared Tableau session. One per daemon.
#[derive(Default)]
pub struct Tableau {
    /// Held while signing in, so concurrent jobs never sign in twice (which would end
    /// each other's sessions).
    session: Mutex<Option<Session>>,
}

impl Tableau {
    /// Refreshes the extracts of the workbook or data source `target`. The answer holds
    /// the item's id and project and, when Tableau queued a job, its `job_id`.
    pub async fn refresh(
        &self,
        http: &Client,
        config: &TableauConfig,
        target: Target<'_>,
    ) -> Result<Value, ActionError> {
        let content = target.content;
        let (id, project) = self.find(http, config, target).await?;
        let path = format!("{}/{id}/refresh", content.collection());
        let (status, body) = self
            .call(http, config, Method::POST, &path, Some(json!({})))
            .await?;
        if status.is_success() {
            let job = body.pointer("/job/id").cloned().unwrap_or(Value::Null);
            return Ok(json!({ "id": id, "project": project, "job_id": job }));
        }
        if error_code(&body).as_deref() == Some("409093") {
            // A refresh is already queued or running: what we asked for will happen. No
            // job id comes with it (tableauserverclient #1090), so there is none to follow.
            return Ok(json!({ "id": id, "project": project, "already_queued": true }));
        }
        Err(tableau_error(status, None, &body))
    }

    /// The state of refresh job `job_id` (`GET .../sites/{site-id}/jobs/{job-id}`).
    pub async fn job(
        &self,
        http: &Client,
        config: &TableauConfig,
        job_id: &str,
    ) -> Result<JobState, ActionError> {
        if !job_id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-')
        {
            return Err(ActionError::final_error(format!(
                "tableau: {job_id:?} is not a job id"
            )));
        }
        let (status, body) = self
            .call(http, config, Method::GET, &format!("jobs/{job_id}"), None)
            .await?;
        if !status.is_success() {
            return Err(tableau_error(status, None, &body));
        }
        let job = body
            .get("job")
            .ok_or_else(|| ActionError::retryable("tableau: the job answer has no job"))?;
        let text = |key: &str| job.get(key).and_then(Value::as_str).map(String::from);
        // The job's own kind of child (extractRefreshJob, ...) holds the notes.
        let notes = job
            .as_object()
            .into_iter()
            .flat_map(|fields| fields.values())
            .find_map(|child| child.get("notes").and_then(Value::as_str))
            .map(String::from);
        Ok(JobState {
            completed_at: text("completedAt"),
            started_at: text("startedAt"),
            finish_code: number(job.get("finishCode")).map(|code| code as i64),
            notes,
        })
    }

    /// The id and project of the one item named exactly `name` (in `project`, if given).
    async fn find(
        &self,
        http: &Client,
        config: &TableauConfig,
        target: Target<'_>,
    ) -> Result<(String, String), ActionError> {
        let Target {
            content,
            name,
            project,
        } = target;
        // Filter expressions cannot contain ',' or '&', even encoded: list and compare here.
        let filter = if name.contains(',') || name.contains('&') {
            String::new()
        } else {
            format!(
                "filter=name:eq:{}&",
                utf8_percent_encode(name, FILTER_VALUE)
            )
        };
        let mut matches = Vec::new();
        let mut page = 1u64;
        loop {
            let path = format!(
                "{}?{filter}pageSize={PAGE_SIZE}&pageNumber={page}",
                content.collection()
            );
            let (status, body) = self.call(http, config, Method::GET, &path, None).await?;
            if !status.is_success() {
                return Err(tableau_error(status, None, &body));
            }
            let items = body
                .get(content.collection())
                .and_then(|c| c.get(content.item()))
                .and_then(Value::as_array)
                .cloned()
                .unwrap_or_default();
            for item in &items {
                if item.get("name").and_then(Value::as_str) != Some(name) {
                    continue;
                }
                let id = item.get("id").and_then(Value::as_str).unwrap_or_default();
                let in_project = item
                    .pointer("/project/name")
                    .and_then(Value::as_str)
                    .unwrap_or("?");
                if project.map_or(true, |wanted| wanted == in_project) {
                    matches.push((id.to_string(), in_project.to_string()));
                }
            }
            let total = number(body.pointer("/pagination/totalAvailable")).unwrap_or(0);
            if items.is_empty() || page * PAGE_SIZE >= total {
                break;
            }
            page += 1;
        }
        let noun = content.noun();
        match (matches.len(), project) {
            (0, None) => Err(ActionError::final_error(format!(
                "tableau: no {noun} named {name:?} on site {:?}",
                config.site
            ))),
            (0, Some(project)) => Err(ActionError::final_error(format!(
                "tableau: no {noun} named {name:?} in project {project:?} on site {:?}",
                config.site
            ))),
            (1, _) => Ok(matches.remove(0)),
            (n, None) => Err(ActionError::final_error(format!(
                "tableau: {n} {noun}s are named {name:?}, in projects {}; name the project: #{{ {}: {name:?}, project: \"...\" }}",
                matches
                    .iter()
                    .map(|(_, p)| format!("{p:?}"))
                    .collect::<Vec<_>>()
                    .join(", "),
                content.item()
            ))),
            (n, Some(project)) => Err(ActionError::final_error(format!(
                "tableau: {n} {noun}s are named {name:?} in project {project:?}"
            ))),
        }
    }

    /// Sends a request under the site with the session token, signing in first if there
    /// is no session, and once more if Tableau says the token is no longer valid.
    async fn call(
        &self,
        http: &Client,
        config: &TableauConfig,
        method: Method,
        path: &str,
        body: Option<Value>,
    ) -> Result<(StatusCode, Value), ActionError> {
        let mut renewed = false;
        loop {
            let session = self.session(http, config).await?;
            let url = format!("{}/sites/{}/{path}", session.api_root, session.site_id);
            let mut request = http
                .request(method.clone(), url)
                .header("X-Tableau-Auth", &session.token)
                .header("Accept", "application/json");
            if let Some(body) = &body {
                request = request.json(body);
            }
            let answer = send(SERVICE, request).await?;
            let (status, wait) = (answer.status, answer.retry_after);
            let parsed = parse_body(&answer.body);
            let code = error_code(&parsed);
            let session_refused = status == StatusCode::UNAUTHORIZED
                && matches!(code.as_deref(), Some("401002") | Some("401000") | None);
            if session_refused && !renewed {
                tracing::info!(
                    action = "tableau",
                    "Tableau session refused; signing in again."
                );
                self.forget(&session.token).await;
                renewed = true;
                continue;
            }
            if session_refused {
                // Refused right after a sign-in of our own: Tableau keeps one session per
                // personal access token, so another process (a second instance) signed in
                // with the same PAT in between. Not final: the next attempt signs in again
                // (docs/behaviour.md section 12).
                self.forget(&session.token).await;
                tracing::warn!(
                    action = "tableau",
                    "Tableau refused a session signed in just now: another process signs in with the same personal access token; give each instance its own PAT (one PAT per instance)."
                );
                return Err(ActionError::retryable(
                    "tableau: a session signed in just now was refused: another process uses the same personal access token (one PAT per instance)",
                ));
            }
            if status == StatusCode::TOO_MANY_REQUESTS || status.is_server_error() {
                return Err(tableau_error(status, wait, &parsed));
            }
            return Ok((status, parsed));
        }
    }

    async fn session(&self, http: &Client, config: &TableauConfig) -> Result<Session, ActionError> {
        let mut slot = self.session.lock().await;
        let identity = signed_in_as(config);
        match slot.as_ref() {
            Some(session) if session.identity == identity => return Ok(session.clone()),
            Some(_) => tracing::info!(
                action = "tableau",
                "The Tableau server, site or token changed (a reload); signing in anew."
            ),
            None => {}
        }
        let session = sign_in(http, config).await?;
        *slot = Some(session.clone());
        Ok(session)
    }

    /// Drops the session if it is still the one that was refused (another job may have
    /// renewed it meanwhile).
    async fn forget(&self, token: &str) {
        let mut slot = self.session.lock().await;
        if slot.as_ref().is_some_and(|s| s.token == token) {
            *slot = None;
        }
    }
}

/// The REST API version to use: the configured one, or the server's own from
/// `GET {server}/api/2.4/serverinfo` (no sign-in needed; 2.4 is the oldest version that
/// has it, so every server answers it). tableauserverclient does the same with
/// `server.use_server_version()` (server/server.py).
async fn api_version(http: &Client, config: &TableauConfig) -> Result<String, ActionError> {
    if let Some(pinned) = &config.api_version {
        return Ok(pinned.clone());
    }
    let url = format!(
        "{}/api/2.4/serverinfo",
        config.server.as_str().trim_end_matches('/')
    );
    let answer = send(SERVICE, http.get(url).header("Accept", "application/json")).await?;
    let (status, wait) = (answer.status, answer.retry_after);
    let parsed = parse_body(&answer.body);
    if !status.is_success() {
        return Err(tableau_error(status, wait, &parsed));
    }
    let version = match parsed.pointer("/serverInfo/restApiVersion") {
        Some(Value::String(version)) => Some(version.clone()),
        // Tableau documents serverinfo's XML answer only; its JSON shape is unconfirmed:
        // accept {"value": ..}.
        Some(other) => other.get("value").and_then(Value::as_str).map(String::from),
        None => None,
    };
    match version {
        Some(version)
            if !version.is_empty() && version.chars().all(|c| c.is_ascii_digit() || c == '.') =>
        {
            Ok(version)
        }
        _ => Err(ActionError::retryable(
            "tableau: serverinfo gave no restApiVersion; set tableau.api_version",
        )),
    }
}

/// `freshet check --online`: serverinfo, a PAT sign-in, the site, and a sign-out, on a
/// session of its own; nothing is changed. Tableau keeps one session per PAT, so a
/// running freshet with the same PAT signs in again at its next call.
pub async fn probe(http: &Client, config: &TableauConfig) -> Result<String, ActionError> {
    let session = sign_in(http, config).await?;
    let site = send(
        SERVICE,
        http.get(format!("{}/sites/{}", session.api_root, session.site_id))
            .header("X-Tableau-Auth", &session.token)
            .header("Accept", "application/json"),
    )
    .await;
    // Signed out whatever the site's answer was, so no session is left behind.
    let signed_out = send(
        SERVICE,
        http.post(format!("{}/auth/signout", session.api_root))
            .header("X-Tableau-Auth", &session.token)
            .header("Accept", "application/json"),
    )
    .await;
    let site = site?;
    let parsed = parse_body(&site.body);
    if !site.status.is_success() {
        return Err(tableau_error(site.status, site.retry_after, &parsed));
    }
    let name = parsed
        .pointer("/site/name")
        .and_then(Value::as_str)
        .unwrap_or(&config.site);
    let version = session
        .api_root
        .rsplit('/')
        .next()
        .unwrap_or_default()
        .to_string();
    let signed_out = match signed_out {
        Ok(answer) if answer.status.is_success() => "signed out".to_string(),
        Ok(answer) => format!("sign-out answered HTTP {}", answer.status.as_u16()),
        Err(error) => format!("sign-out failed: {error}"),
    };
    Ok(format!(
        "signed in to site {name:?} as PAT {:?} (REST API {version}), {signed_out}",
        config.pat_name
    ))
}

async fn sign_in(http: &Client, config: &TableauConfig) -> Result<Session, ActionError> {
    let version = api_version(http, config).await?;
    let body = json!({ "credentials": {
        "personalAccessTokenName": config.pat_name,
        "personalAccessTokenSecret": config.pat_secret.expose(),
        "site": { "contentUrl": config.site },
    }});
    let url = format!(
        "{}/api/{version}/auth/signin",
        config.server.as_str().trim_end_matches('/')
    );
    // A redirect (a load balancer's path, http -> https) is followed by `send` only on the
    // configured server: the PAT never goes anywhere else.
    let request = http
        .post(&url)
        .header("Accept", "application/json")
        .json(&body);
    let answer = send(SERVICE, request).await?;
    let (status, wait) = (answer.status, answer.retry_after);
    let parsed = parse_body(&answer.body);
    if !status.is_success() {
        return Err(match (status, error_code(&parsed).as_deref()) {
            (StatusCode::UNAUTHORIZED, code) => ActionError::final_error(format!(
                "tableau: sign-in refused ({}): check tableau.pat_name, pat_secret and site",
                code.unwrap_or("401")
            )),
            (StatusCode::NOT_FOUND, Some("404001")) => ActionError::final_error(format!(
                "tableau: the server does not support REST API version {version}; leave tableau.api_version out to use the server's own"
            )),
            _ => tableau_error(status, wait, &parsed),
        });
    }
    let token = parsed.pointer("/credentials/token").and_then(Value::as_str);
    let site_id = parsed
        .pointer("/credentials/site/id")
        .and_then(Value::as_str);
    match (token, site_id) {
        (Some(token), Some(site_id)) => {
            tracing::info!(action = "tableau", api_version = %version, "Signed in to Tableau.");
            Ok(Session {
                identity: signed_in_as(config),
                token: token.to_string(),
                site_id: site_id.to_string(),
                // Where the sign-in was answered: later calls go there too.
                api_root: answer
                    .url
                    .as_str()
                    .trim_end_matches("/auth/signin")
                    .to_string(),
            })
        }
        _ => Err(ActionError::retryable(
            "tableau: sign-in answer has no credentials token or site id",
        )),
    }
}

/// JSON bodies as JSON; anything else (XML errors, proxy pages) kept as text.
fn parse_body(text: &str) -> Value {
    serde_json::from_str(text).unwrap_or_else(|_| Value::String(text.to_string()))
}

/// The 6-digit Tableau error code of a JSON or XML error body.
fn error_code(body: &Value) -> Option<String> {
    match body {
        Value::String(text) => {
            let start = text.find("code=\"")? + 6;
            let end = text[start..].find('"')? + start;
            Some(text[start..end].to_string())
        }
        other => other.pointer("/error/code").and_then(|c| match c {
            Value::String(s) => Some(s.clone()),
            Value::Number(n) => Some(n.to_string()),
            _ => None,
        }),
    }
}

fn tableau_error(
    status: StatusCode,
    wait: Option<std::time::Duration>,
    body: &Value,
) -> ActionError {
    let detail = match body.get("error") {
        Some(error) => format!(
            "{} {}: {}",
            error_code(body).unwrap_or_default(),
            error.get("summary").and_then(Value::as_str).unwrap_or(""),
            error.get("detail").and_then(Value::as_str).unwrap_or("")
        ),
        None => excerpt(body.as_str().unwrap_or(&body.to_string())),
    };
    status_error(SERVICE, status, wait, &detail)
}

/// Tableau sends counts as strings or numbers.
fn number(value: Option<&Value>) -> Option<u64> {
    match value? {
        Value::Number(n) => n.as_u64(),
        Value::String(s) => s.parse().ok(),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_codes_from_json_and_xml() {
        assert_eq!(
            error_code(&json!({"error": {"code": "409093"}})).as_deref(),
            Some("409093")
        );
        let xml = Value::String(
            r#"<tsResponse><error code="401002"><summary>x</summary></error></tsResponse>"#.into(),
        );
        assert_eq!(error_code(&xml).as_deref(), Some("401002"));
        assert_eq!(error_code(&Value::String("<html>".into())), None);
    }

    #[test]
    fn filter_values_are_percent_encoded() {
        assert_eq!(
            utf8_percent_encode("Finance Overview", FILTER_VALUE).to_string(),
            "Finance%20Overview"
        );
        assert_eq!(
            utf8_percent_encode("Q3:rev/x", FILTER_VALUE).to_string(),
            "Q3%3Arev%2Fx"
        );
    }
}
