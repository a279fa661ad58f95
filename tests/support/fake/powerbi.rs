//! A fake Entra ID token endpoint and Power BI REST API
//! (../shared/api/tableau-slack-hex-powerbi.md section 4): client credentials form-encoded
//! in, a Bearer token out (counted, so tests see it cached); `POST
//! /v1.0/myorg/groups/{g}/datasets/{d}/refreshes` with a token it issued and
//! `notifyOption: NoNotification` (the only option a service principal has), answered 202
//! with a `RequestId` header; a second refresh while one runs refused as "already
//! executing"; the shared capacity's daily limit (8 a day); `GET ...refreshes?$top=1`
//! with the newest refresh, `Unknown` until its scripted end.

use super::*;

use serde_json::{json, Value};

pub const POWERBI_TENANT: &str = "0f9e8d7c-6b5a-4321-8765-43210fedcba9";
pub const POWERBI_CLIENT: &str = "00000000-0000-0000-0000-000000000001";
pub const POWERBI_SECRET: &str = "powerbi-client-secret-1";
pub const POWERBI_GROUP: &str = "f089354e-8366-4e18-aea3-4cb4a3a50b48";
pub const POWERBI_DATASET: &str = "cfafbeb1-8037-4d0c-896e-a46fb27ff229";

#[derive(Debug, Clone)]
pub struct PowerBiRefreshRun {
    pub request_id: String,
    pub body: Value,
    /// History reads left while it runs.
    pub looks_left: usize,
    /// `Completed` or `Failed`.
    pub terminal: String,
}

pub struct PowerBiState {
    /// Tokens issued (each valid).
    pub tokens: Vec<String>,
    pub refreshes: Vec<PowerBiRefreshRun>,
    /// Refreshes allowed a day (shared capacity: 8).
    pub daily_limit: usize,
    pub next_terminal: String,
    pub next_looks: usize,
    pub faults: Faults,
}

impl Default for PowerBiState {
    fn default() -> Self {
        PowerBiState {
            tokens: Vec::new(),
            refreshes: Vec::new(),
            daily_limit: 8,
            next_terminal: "Completed".into(),
            next_looks: 2,
            faults: Faults::default(),
        }
    }
}

pub type FakePowerBi = Fake<PowerBiState>;

impl FakePowerBi {
    pub async fn start() -> FakePowerBi {
        Fake::spawn(PowerBiState::default(), powerbi_handle)
    }

    /// Adds `[powerbi]` with this fake as both the login and the API base, the client
    /// secret from `T_PBI`, and a 1 s poll.
    pub fn configure(&self, setup: Setup) -> Setup {
        setup
            .section(&format!(
                "[powerbi]\ntenant_id = \"{POWERBI_TENANT}\"\nclient_id = \"{POWERBI_CLIENT}\"\nclient_secret = {{ env = \"T_PBI\" }}\napi_base = \"{0}/v1.0/myorg\"\nlogin_base = \"{0}\"\npoll_seconds = 1\n",
                self.base()
            ))
            .env("T_PBI", POWERBI_SECRET)
    }

    pub fn tokens_issued(&self) -> usize {
        self.state.lock().unwrap().tokens.len()
    }

    pub fn refreshes(&self) -> Vec<PowerBiRefreshRun> {
        self.state.lock().unwrap().refreshes.clone()
    }
}

fn api_error(status: u16, code: &str, message: &str) -> Reply {
    Reply::json(status, json!({"error": {"code": code, "message": message}}))
}

fn powerbi_handle(state: &mut PowerBiState, seen: &Seen) -> Reply {
    if let Some(reply) = state.faults.take(seen) {
        return reply;
    }
    if seen.path == format!("/{POWERBI_TENANT}/oauth2/v2.0/token") {
        return token(state, seen);
    }
    let Some(rest) = seen.path.strip_prefix("/v1.0/myorg/") else {
        return api_error(404, "NotFound", "Not found");
    };
    let bearer = seen
        .header("authorization")
        .and_then(|a| a.strip_prefix("Bearer "));
    if !bearer.is_some_and(|token| state.tokens.iter().any(|t| t == token)) {
        return api_error(
            401,
            "TokenExpired",
            "Access token has expired or is not valid",
        );
    }
    let parts: Vec<&str> = rest.split('/').collect();
    let ["groups", group, "datasets", dataset, "refreshes"] = parts.as_slice() else {
        return api_error(404, "NotFound", "Not found");
    };
    if *group != POWERBI_GROUP || *dataset != POWERBI_DATASET {
        return api_error(
            404,
            "ItemNotFound",
            &format!("Dataset {dataset} is not found! please verify datasetId is correct and user have sufficient permissions."),
        );
    }
    match seen.method.as_str() {
        "POST" => {
            if !seen
                .header("content-type")
                .is_some_and(|c| c.starts_with("application/json"))
            {
                return api_error(415, "UnsupportedMediaType", "Unsupported media type");
            }
            let body = seen.json();
            if body.get("notifyOption") != Some(&json!("NoNotification")) {
                return api_error(
                    400,
                    "InvalidRequest",
                    "Invalid NotifyOption value for refreshing a dataset by a service principal: only NoNotification is supported",
                );
            }
            if state.refreshes.iter().any(|r| r.looks_left > 0) {
                return api_error(
                    400,
                    "InvalidRequest",
                    "Invalid dataset refresh request. Another refresh request is already executing",
                );
            }
            if state.refreshes.len() >= state.daily_limit {
                return api_error(
                    400,
                    "InvalidRequest",
                    "Invalid dataset refresh request. Number of refresh requests has exceeded the limit of 8 per day for a dataset on shared capacity",
                );
            }
            let request_id = format!("9399bb89-25d1-44f8-8576-{:012x}", state.refreshes.len() + 1);
            state.refreshes.push(PowerBiRefreshRun {
                request_id: request_id.clone(),
                body,
                looks_left: state.next_looks,
                terminal: state.next_terminal.clone(),
            });
            let mut reply = Reply::text(202, "");
            reply.headers.clear();
            reply.with_header("RequestId", &request_id)
        }
        "GET" => {
            let params = query_params(&seen.query);
            if !params.iter().any(|(k, v)| k == "$top" && v == "1") {
                return api_error(400, "InvalidRequest", "this fake serves $top=1 only");
            }
            let value: Vec<Value> = state
                .refreshes
                .iter_mut()
                .rev()
                .take(1)
                .map(|refresh| {
                    let status = if refresh.looks_left == 0 {
                        refresh.terminal.clone()
                    } else {
                        refresh.looks_left -= 1;
                        "Unknown".to_string()
                    };
                    let mut entry = json!({
                        "requestId": refresh.request_id,
                        "id": 823456,
                        "refreshType": "ViaApi",
                        "startTime": "2026-12-06T05:20:43.153Z",
                        "status": status,
                    });
                    if status != "Unknown" {
                        entry["endTime"] = json!("2026-12-06T05:26:43.153Z");
                    }
                    if status == "Failed" {
                        entry["serviceExceptionJson"] =
                            json!("{\"errorCode\":\"ModelRefreshFailed_CredentialsNotSpecified\"}");
                    }
                    entry
                })
                .collect();
            Reply::json(200, json!({ "value": value }))
        }
        _ => api_error(405, "MethodNotAllowed", "Method not allowed"),
    }
}

/// Entra ID's client-credentials grant (form-encoded; errors as OAuth's `error`).
fn token(state: &mut PowerBiState, seen: &Seen) -> Reply {
    if seen.method != "POST"
        || !seen
            .header("content-type")
            .is_some_and(|c| c.starts_with("application/x-www-form-urlencoded"))
    {
        return Reply::json(
            400,
            json!({"error": "invalid_request", "error_description": "AADSTS900144: The request body must be form-encoded."}),
        );
    }
    let form = query_params(&String::from_utf8_lossy(&seen.body));
    let get = |key: &str| form.iter().find(|(k, _)| k == key).map(|(_, v)| v.as_str());
    if get("grant_type") != Some("client_credentials")
        || get("scope") != Some("https://analysis.windows.net/powerbi/api/.default")
    {
        return Reply::json(
            400,
            json!({"error": "invalid_request", "error_description": "AADSTS900144: grant_type or scope is missing or wrong."}),
        );
    }
    if get("client_id") != Some(POWERBI_CLIENT) || get("client_secret") != Some(POWERBI_SECRET) {
        return Reply::json(
            401,
            json!({"error": "invalid_client", "error_description": "AADSTS7000215: Invalid client secret provided. Ensure the secret being sent in the request is the client secret value."}),
        );
    }
    let token = format!(
        "eyJ0eXAiOiJKV1QiLCJhbGciOiJSUzI1NiJ9.fake{}",
        state.tokens.len() + 1
    );
    state.tokens.push(token.clone());
    Reply::json(
        200,
        json!({"token_type": "Bearer", "expires_in": 3599, "ext_expires_in": 3599, "access_token": token}),
    )
}
