//! `powerbi_refresh(#{ group, dataset })`: refreshes a Power BI semantic model with a
//! service principal's client credentials (`POST /groups/{group}/datasets/{dataset}/refreshes`),
//! and the follow stage follows the refresh to its end into a `powerbi.refresh.completed`
//! event (docs/behaviour.md section 15). Contract: ../shared/api/tableau-slack-hex-powerbi.md
//! section 4 (Entra ID client credentials; Refresh Dataset In Group; Get Refresh History).

use std::time::{Duration, Instant};

use reqwest::StatusCode;
use rhai::{Dynamic, Engine, Map as RhaiMap, NativeCallContext};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use tokio::sync::Mutex;

use super::client::{excerpt, send, status_error, ActionError};
use super::{ActionRequest, Services};
use crate::config::PowerBiConfig;
use crate::rules::api::{bad_argument, get_string, non_empty, record, to_plain_json, Fallible};

const SERVICE: &str = "powerbi";
/// The scope of a token for the Power BI REST API (client credentials, Entra ID v2).
const SCOPE: &str = "https://analysis.windows.net/powerbi/api/.default";
/// A token is used until this long before it expires: a call never starts with a token
/// that runs out on the way.
const TOKEN_MARGIN: Duration = Duration::from_secs(300);

/// The keys of `powerbi_refresh`'s map (checked when a rule runs, and by `freshet check`).
pub const KEYS: [&str; 2] = ["group", "dataset"];

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PowerBiRefresh {
    /// The workspace (group) id.
    pub group: String,
    /// The semantic model (dataset) id.
    pub dataset: String,
}

/// The cached access token, one per daemon, shared by every refresh and follow: two
/// refreshes ask Entra ID once.
#[derive(Default)]
pub struct Tokens {
    cached: Mutex<Option<Token>>,
}

struct Token {
    /// Whose token it is (tenant, client, secret, login base, as a digest): a reload that
    /// changes any of them asks anew.
    identity: [u8; 32],
    access_token: String,
    use_until: Instant,
}

fn identity(config: &PowerBiConfig) -> [u8; 32] {
    use sha2::{Digest, Sha256};
    let mut digest = Sha256::new();
    for part in [
        config.login_base.as_str(),
        &config.tenant_id,
        &config.client_id,
        config.client_secret.expose(),
    ] {
        digest.update(part.as_bytes());
        digest.update([0]);
    }
    digest.finalize().into()
}

impl Tokens {
    /// A token for the API: the cached one while it is good, else a new one.
    pub async fn get(
        &self,
        http: &reqwest::Client,
        config: &PowerBiConfig,
    ) -> Result<String, ActionError> {
        let mut cached = self.cached.lock().await;
        let wanted = identity(config);
        if let Some(token) = cached.as_ref() {
            if token.identity == wanted && Instant::now() < token.use_until {
                return Ok(token.access_token.clone());
            }
        }
        let token = request_token(http, config).await?;
        let access_token = token.access_token.clone();
        *cached = Some(Token {
            identity: wanted,
            ..token
        });
        Ok(access_token)
    }

    /// Forgets a token the API refused (revoked, or expired early).
    pub async fn forget(&self) {
        *self.cached.lock().await = None;
    }
}

/// `POST {login_base}/{tenant}/oauth2/v2.0/token`, client credentials, form-encoded.
async fn request_token(
    http: &reqwest::Client,
    config: &PowerBiConfig,
) -> Result<Token, ActionError> {
    let url = format!(
        "{}/{}/oauth2/v2.0/token",
        config.login_base.as_str().trim_end_matches('/'),
        config.tenant_id
    );
    let request = http.post(url).form(&[
        ("grant_type", "client_credentials"),
        ("client_id", config.client_id.as_str()),
        ("client_secret", config.client_secret.expose()),
        ("scope", SCOPE),
    ]);
    let answer = send(SERVICE, request).await?;
    let body: Value = serde_json::from_str(&answer.body).unwrap_or(Value::Null);
    if !answer.status.is_success() {
        // Entra ID answers {"error": "invalid_client", "error_description": ".."}; the
        // description names no secret.
        let error = body.get("error").and_then(Value::as_str).unwrap_or("");
        let description = body
            .get("error_description")
            .and_then(Value::as_str)
            .map(|d| d.lines().next().unwrap_or(d).to_string())
            .unwrap_or_else(|| excerpt(&answer.body));
        return Err(status_error(
            "powerbi token",
            answer.status,
            answer.retry_after,
            &format!(
                "{error}: {description} (check powerbi.tenant_id, client_id and client_secret)"
            ),
        ));
    }
    let access_token = body
        .get("access_token")
        .and_then(Value::as_str)
        .ok_or_else(|| ActionError::retryable("powerbi token: the answer has no access_token"))?;
    let expires_in = body
        .get("expires_in")
        .and_then(Value::as_u64)
        .unwrap_or(3599);
    let lifetime = Duration::from_secs(expires_in);
    Ok(Token {
        identity: [0; 32],
        access_token: access_token.to_string(),
        use_until: Instant::now() + lifetime.saturating_sub(TOKEN_MARGIN.min(lifetime / 2)),
    })
}

fn config<'a>(services: &'a Services<'_>) -> Result<&'a PowerBiConfig, ActionError> {
    services
        .config
        .powerbi
        .as_ref()
        .ok_or_else(|| ActionError::not_configured(SERVICE))
}

/// Group and dataset ids go into the URL's path as they are: GUIDs.
fn is_id(id: &str) -> bool {
    !id.is_empty() && id.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
}

fn refreshes_url(config: &PowerBiConfig, group: &str, dataset: &str) -> String {
    format!(
        "{}/groups/{group}/datasets/{dataset}/refreshes",
        config.api_base.as_str().trim_end_matches('/')
    )
}

/// Power BI's error envelope: `{"error": {"code", "message"}}`.
fn error_text(body: &str) -> (String, String) {
    let parsed: Value = serde_json::from_str(body).unwrap_or(Value::Null);
    let code = parsed
        .pointer("/error/code")
        .and_then(Value::as_str)
        .unwrap_or("")
        .to_string();
    let message = parsed
        .pointer("/error/message")
        .and_then(Value::as_str)
        .map(String::from)
        .unwrap_or_else(|| excerpt(body));
    (code, message)
}

/// Whether a refused refresh is the shared capacity's daily limit (8 refreshes a day,
/// scheduled ones included): waiting minutes will not help, so it is final.
fn is_daily_limit(status: StatusCode, code: &str, message: &str) -> bool {
    let text = format!("{code} {message}").to_lowercase();
    (status == StatusCode::BAD_REQUEST || status == StatusCode::TOO_MANY_REQUESTS)
        && (text.contains("exceeded") || text.contains("limit"))
        && (text.contains("day") || text.contains("24 hour"))
}

/// Whether a refused refresh says one is already running: what was asked for happens.
fn is_already_running(status: StatusCode, message: &str) -> bool {
    let text = message.to_lowercase();
    status == StatusCode::CONFLICT
        || (status == StatusCode::BAD_REQUEST
            && text.contains("already")
            && (text.contains("progress")
                || text.contains("running")
                || text.contains("executing")))
}

impl PowerBiRefresh {
    /// Starts the refresh; the answer names what the follow stage follows.
    pub async fn call(
        &self,
        services: &Services<'_>,
        tokens: &Tokens,
    ) -> Result<Value, ActionError> {
        let powerbi = config(services)?;
        if !is_id(&self.group) || !is_id(&self.dataset) {
            return Err(ActionError::final_error(format!(
                "powerbi: {:?} / {:?} are not a workspace and dataset id",
                self.group, self.dataset
            )));
        }
        let token = tokens.get(services.http, powerbi).await?;
        // Service principals may only ask for no notification.
        let request = services
            .http
            .post(refreshes_url(powerbi, &self.group, &self.dataset))
            .bearer_auth(&token)
            .json(&json!({ "notifyOption": "NoNotification" }));
        let response = super::client::send_following_redirects(SERVICE, request).await?;
        // The refresh's id, when Power BI says it (a `RequestId` header): the follow
        // stage then waits for that entry of the history.
        let request_id = response
            .headers()
            .get("RequestId")
            .and_then(|value| value.to_str().ok())
            .filter(|id| is_id(id))
            .map(String::from);
        let answer = super::client::Answer::read(SERVICE, response).await?;
        if answer.status.is_success() {
            return Ok(json!({
                "group": self.group,
                "dataset": self.dataset,
                "request_id": request_id,
            }));
        }
        if answer.status == StatusCode::UNAUTHORIZED {
            tokens.forget().await;
        }
        let (code, message) = error_text(&answer.body);
        if is_already_running(answer.status, &message) {
            tracing::info!(group = %self.group, dataset = %self.dataset,
                "A Power BI refresh is already running: following it.");
            return Ok(json!({
                "group": self.group,
                "dataset": self.dataset,
                "request_id": null,
                "already_running": true,
            }));
        }
        if is_daily_limit(answer.status, &code, &message) {
            return Err(ActionError::final_error(format!(
                "powerbi: the refresh was refused for the shared capacity's daily limit (8 refreshes a day, scheduled ones included); not retried: {code} {message}"
            )));
        }
        Err(status_error(
            SERVICE,
            answer.status,
            answer.retry_after,
            format!("{code} {message}").trim(),
        ))
    }
}

/// One refresh of the history, as the follow stage needs it.
#[derive(Debug, Clone, PartialEq)]
pub struct RefreshState {
    pub request_id: Option<String>,
    /// `Unknown` (running), `Completed`, `Failed`, `Disabled`.
    pub status: String,
    /// `serviceExceptionJson`, for a failed refresh.
    pub error: Option<String>,
    pub started_at: Option<String>,
    pub ended_at: Option<String>,
}

impl RefreshState {
    /// freshet's status for a finished refresh; None while it runs.
    pub fn outcome(&self) -> Option<&'static str> {
        match self.status.as_str() {
            "Completed" => Some("succeeded"),
            "Failed" => Some("failed"),
            "Disabled" => Some("disabled"),
            _ => None,
        }
    }
}

/// The newest refresh of a dataset (`GET …/refreshes?$top=1`); None when it has none.
pub async fn newest_refresh(
    http: &reqwest::Client,
    powerbi: &PowerBiConfig,
    tokens: &Tokens,
    group: &str,
    dataset: &str,
) -> Result<Option<RefreshState>, ActionError> {
    if !is_id(group) || !is_id(dataset) {
        return Err(ActionError::final_error(format!(
            "powerbi: {group:?} / {dataset:?} are not a workspace and dataset id"
        )));
    }
    let token = tokens.get(http, powerbi).await?;
    let request = http
        .get(format!("{}?$top=1", refreshes_url(powerbi, group, dataset)))
        .bearer_auth(&token)
        .header("Accept", "application/json");
    let answer = send(SERVICE, request).await?;
    if !answer.status.is_success() {
        if answer.status == StatusCode::UNAUTHORIZED {
            tokens.forget().await;
        }
        let (code, message) = error_text(&answer.body);
        return Err(status_error(
            SERVICE,
            answer.status,
            answer.retry_after,
            format!("{code} {message}").trim(),
        ));
    }
    let body: Value = serde_json::from_str(&answer.body).map_err(|_| {
        ActionError::retryable(format!(
            "powerbi: answer is not JSON: {}",
            excerpt(&answer.body)
        ))
    })?;
    let Some(newest) = body.pointer("/value/0") else {
        return Ok(None);
    };
    let text = |key: &str| newest.get(key).and_then(Value::as_str).map(String::from);
    Ok(Some(RefreshState {
        request_id: text("requestId"),
        status: text("status").unwrap_or_else(|| "Unknown".into()),
        error: text("serviceExceptionJson"),
        started_at: text("startTime"),
        ended_at: text("endTime"),
    }))
}

/// `freshet check --online`: a token from Entra ID with the client credentials.
pub async fn probe(http: &reqwest::Client, powerbi: &PowerBiConfig) -> Result<String, ActionError> {
    let token = request_token(http, powerbi).await?;
    let minutes = token
        .use_until
        .saturating_duration_since(Instant::now())
        .as_secs()
        / 60;
    Ok(format!(
        "a token for client {} in tenant {} (used for about {minutes} min)",
        powerbi.client_id, powerbi.tenant_id
    ))
}

/// The rule function that builds a [`PowerBiRefresh`].
pub(super) fn register(engine: &mut Engine) {
    engine.register_fn(
        "powerbi_refresh",
        |ctx: NativeCallContext, target: RhaiMap| -> Fallible {
            let written = to_plain_json(&Dynamic::from_map(target.clone()));
            if let Some(key) = target.keys().find(|k| !KEYS.contains(&k.as_str())) {
                return Err(bad_argument(
                    &ctx,
                    format!("powerbi_refresh: unknown key `{key}` ({})", KEYS.join(", ")),
                ));
            }
            let id = |key: &str| -> Result<String, Box<rhai::EvalAltResult>> {
                let value = get_string(&target, key).ok_or_else(|| {
                    bad_argument(&ctx, format!("powerbi_refresh: the map needs `{key}`"))
                })?;
                non_empty(&ctx, "powerbi_refresh", &format!("`{key}`"), &value)
            };
            let refresh = PowerBiRefresh {
                group: id("group")?,
                dataset: id("dataset")?,
            };
            record(&ctx, ActionRequest::PowerBiRefresh(refresh), written)
        },
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_daily_limit_and_a_running_refresh_are_told_apart() {
        assert!(is_daily_limit(
            StatusCode::BAD_REQUEST,
            "InvalidRequest",
            "Invalid dataset refresh request. Number of refresh requests has exceeded the limit for the day"
        ));
        assert!(!is_daily_limit(
            StatusCode::BAD_REQUEST,
            "ItemNotFound",
            "Dataset x is not found!"
        ));
        assert!(is_already_running(
            StatusCode::BAD_REQUEST,
            "Another refresh request is already executing"
        ));
        assert!(is_already_running(StatusCode::CONFLICT, ""));
        assert!(!is_already_running(
            StatusCode::BAD_REQUEST,
            "Dataset x is not found!"
        ));
    }

    #[test]
    fn refresh_states_map_to_outcomes() {
        let state = |status: &str| RefreshState {
            request_id: None,
            status: status.into(),
            error: None,
            started_at: None,
            ended_at: None,
        };
        assert_eq!(state("Unknown").outcome(), None);
        assert_eq!(state("Completed").outcome(), Some("succeeded"));
        assert_eq!(state("Failed").outcome(), Some("failed"));
        assert_eq!(state("Disabled").outcome(), Some("disabled"));
    }
}
