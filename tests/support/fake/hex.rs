//! A fake Hex API 1.0.0 (../shared/api/tableau-slack-hex-powerbi.md section 3): the Bearer
//! token (401 without it, 403 for a token without the run scope), `POST
//! /api/v1/project/{id}/run` for published projects only (404 otherwise) with a JSON body
//! whose `inputParams` is an object, `GET .../run/{runId}` stepping each run PENDING ->
//! RUNNING -> its scripted terminal status, `GET /api/v1/projects` (ListProjects), and
//! 429 with `Retry-After` as RunProject's rate limit answers.

use super::*;

use serde_json::{json, Value};

pub const HEX_TOKEN: &str = "hxtw_test_token_0123456789";
/// A token that reads but may not run projects.
pub const HEX_READ_ONLY_TOKEN: &str = "hxtr_read_only_token";
pub const HEX_PROJECT: &str = "5a8591dd-4039-49df-9202-96385ba3eff8";

#[derive(Debug, Clone)]
pub struct HexRun {
    pub project_id: String,
    pub run_id: String,
    /// The body RunProject got.
    pub body: Value,
    /// Looks left before the run ends (each status read takes one).
    pub looks_left: usize,
    pub terminal: String,
}

pub struct HexState {
    /// Published projects.
    pub projects: Vec<String>,
    pub runs: Vec<HexRun>,
    /// How the next run ends, and after how many status reads.
    pub next_terminal: String,
    pub next_looks: usize,
    pub faults: Faults,
}

impl Default for HexState {
    fn default() -> Self {
        HexState {
            projects: vec![HEX_PROJECT.to_string()],
            runs: Vec::new(),
            next_terminal: "COMPLETED".into(),
            next_looks: 2,
            faults: Faults::default(),
        }
    }
}

pub type FakeHex = Fake<HexState>;

impl FakeHex {
    pub async fn start() -> FakeHex {
        Fake::spawn(HexState::default(), hex_handle)
    }

    /// Adds `[hex]` with this fake's base, the token from `T_HEX`, and a 1 s poll.
    pub fn configure(&self, setup: Setup) -> Setup {
        setup
            .section(&format!(
                "[hex]\napi_base = \"{}/api/v1\"\ntoken = {{ env = \"T_HEX\" }}\npoll_seconds = 1\n",
                self.base()
            ))
            .env("T_HEX", HEX_TOKEN)
    }

    pub fn runs(&self) -> Vec<HexRun> {
        self.state.lock().unwrap().runs.clone()
    }
}

fn hex_error(status: u16, reason: &str) -> Reply {
    Reply::json(status, json!({ "reason": reason }))
}

fn hex_handle(state: &mut HexState, seen: &Seen) -> Reply {
    let read_only =
        seen.header("authorization") == Some(format!("Bearer {HEX_READ_ONLY_TOKEN}").as_str());
    if seen.header("authorization") != Some(format!("Bearer {HEX_TOKEN}").as_str()) && !read_only {
        return hex_error(401, "Unauthorized: invalid or missing API token");
    }
    if let Some(reply) = state.faults.take(seen) {
        return reply;
    }
    let Some(rest) = seen.path.strip_prefix("/api/v1/") else {
        return hex_error(404, "Not found");
    };
    let parts: Vec<&str> = rest.split('/').collect();
    match (seen.method.as_str(), parts.as_slice()) {
        ("GET", ["projects"]) => Reply::json(
            200,
            json!({"values": state.projects.iter().take(1).map(|id| json!({"id": id})).collect::<Vec<_>>(),
                   "pagination": {"after": null}}),
        ),
        ("POST", ["project", project, "run"]) => {
            if read_only {
                return hex_error(403, "Forbidden: the token lacks the Run projects scope");
            }
            if !state.projects.iter().any(|p| p == project) {
                return hex_error(404, "Project not found or not published");
            }
            if !seen
                .header("content-type")
                .is_some_and(|c| c.starts_with("application/json"))
            {
                return hex_error(400, "Content-Type must be application/json");
            }
            let body = seen.json();
            if !body.is_object()
                || body.get("inputParams").is_some_and(|p| !p.is_object())
                || body.get("updateCache").is_some_and(|u| !u.is_boolean())
            {
                return hex_error(400, "Invalid request body");
            }
            let run_id = format!("78c33d0e-8b2e-4b9c-9a77-{:012x}", state.runs.len() + 1);
            state.runs.push(HexRun {
                project_id: project.to_string(),
                run_id: run_id.clone(),
                body,
                looks_left: state.next_looks,
                terminal: state.next_terminal.clone(),
            });
            Reply::json(
                201,
                json!({
                    "projectId": project,
                    "runId": run_id,
                    "runUrl": format!("https://app.hex.tech/acme/app/{project}/latest?runId={run_id}"),
                    "runStatusUrl": format!("https://app.hex.tech/api/v1/project/{project}/run/{run_id}"),
                    "traceId": "3f1e2d4c5b6a7980",
                    "projectVersion": 12,
                }),
            )
        }
        ("GET", ["project", project, "run", run_id]) => {
            let Some(run) = state
                .runs
                .iter_mut()
                .find(|r| r.project_id == *project && r.run_id == *run_id)
            else {
                return hex_error(404, "Run not found");
            };
            let status = if run.looks_left == 0 {
                run.terminal.clone()
            } else {
                run.looks_left -= 1;
                if run.looks_left % 2 == 0 {
                    "RUNNING"
                } else {
                    "PENDING"
                }
                .to_string()
            };
            let ended = !matches!(status.as_str(), "PENDING" | "RUNNING");
            Reply::json(
                200,
                json!({
                    "projectId": project,
                    "runId": run_id,
                    "runUrl": format!("https://app.hex.tech/acme/app/{project}/latest?runId={run_id}"),
                    "status": status,
                    "startTime": "2026-12-06T05:10:00.000Z",
                    "endTime": if ended { json!("2026-12-06T05:11:42.000Z") } else { Value::Null },
                    "elapsedTime": if ended { json!(102000) } else { Value::Null },
                }),
            )
        }
        (_, ["project", ..]) | (_, ["projects"]) => hex_error(405, "Method not allowed"),
        _ => hex_error(404, "Not found"),
    }
}
