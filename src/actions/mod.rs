//! Actions: what rules ask for ([`ActionRequest`]) and how each call reaches its service.
//! The stage that claims action jobs, runs them and retries them is `stages::act`.
//!
//! Each action is one file that holds its payload (the job's arguments), the rule
//! functions that build it, and its calls: [`mode`] (`mode_run`), [`dbt`] (`dbt_run`), [`tableau`]
//! (`tableau_refresh`, `tableau_refresh_datasource`), [`slack`] (`slack_post`),
//! [`pagerduty`] (`pagerduty_event`), [`hex`] (`hex_run`), [`powerbi`] (`powerbi_refresh`),
//! [`alert`] (`alert`, decided at evaluation, posted through Slack and PagerDuty),
//! [`check_in`] (`check_in`, recorded at evaluation). This file keeps the
//! enum, its job (de)serialization and the dispatch; [`client`] holds what the calls
//! share (HTTP client, error classification, backoff). ARCHITECTURE.md says what a new
//! action costs.

pub mod alert;
pub mod check_in;
pub mod client;
pub mod dbt;
pub mod hex;
pub mod mode;
pub mod pagerduty;
pub mod powerbi;
pub mod slack;
pub mod tableau;

use rhai::Engine;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use crate::config::Config;
use client::ActionError;

/// One action call a rule made. Its serialized form, tagged by `action`, is the job's
/// kind and payload (`args`, `from_job`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "action", rename_all = "snake_case")]
pub enum ActionRequest {
    ModeRun(mode::ModeRun),
    DbtRun(dbt::DbtRun),
    TableauRefresh(tableau::RefreshWorkbook),
    TableauRefreshDatasource(tableau::RefreshDatasource),
    SlackPost(slack::SlackPost),
    HexRun(hex::HexRun),
    #[serde(rename = "powerbi_refresh")]
    PowerBiRefresh(powerbi::PowerBiRefresh),
    #[serde(rename = "pagerduty_event")]
    PagerDutyEvent(pagerduty::PagerDutyEvent),
    Alert(alert::Alert),
    CheckIn(check_in::CheckIn),
}

/// What a call needs from the daemon: the one HTTP client (one connection pool), the
/// config in force, the one Tableau session, and the job the call is for.
pub struct Services<'a> {
    pub http: &'a reqwest::Client,
    pub config: &'a Config,
    pub tableau: &'a tableau::Tableau,
    /// The one cached Power BI token.
    pub powerbi: &'a powerbi::Tokens,
    /// Which call this is (its id tags a dbt trigger; its attempt says whether an
    /// earlier one may have started the run already).
    pub origin: &'a CallOrigin<'a>,
}

/// The job a call is made for, as the act stage knows it.
pub struct CallOrigin<'a> {
    /// The action job's id, as `freshet actions` lists it.
    pub action_id: i64,
    /// 1 on the first attempt.
    pub attempt: u32,
    pub rule: Option<&'a str>,
    pub event_id: &'a str,
}

/// Every action's name as rules write it and jobs record it (`kind`).
pub const KINDS: [&str; 10] = [
    "mode_run",
    "dbt_run",
    "tableau_refresh",
    "tableau_refresh_datasource",
    "hex_run",
    "powerbi_refresh",
    "slack_post",
    "pagerduty_event",
    "alert",
    "check_in",
];

impl ActionRequest {
    /// Registers every action's rule functions on `engine`.
    pub fn register_rule_functions(engine: &mut Engine) {
        mode::register(engine);
        dbt::register(engine);
        tableau::register(engine);
        hex::register(engine);
        powerbi::register(engine);
        slack::register(engine);
        pagerduty::register(engine);
        alert::register(engine);
        check_in::register(engine);
    }

    /// Makes the call: one attempt.
    pub async fn call(&self, services: &Services<'_>) -> Result<Value, ActionError> {
        match self {
            ActionRequest::ModeRun(run) => run.call(services).await,
            ActionRequest::DbtRun(run) => run.call(services).await,
            ActionRequest::TableauRefresh(refresh) => {
                tableau::call(services, refresh.target()).await
            }
            ActionRequest::TableauRefreshDatasource(refresh) => {
                tableau::call(services, refresh.target()).await
            }
            ActionRequest::HexRun(run) => run.call(services).await,
            ActionRequest::PowerBiRefresh(refresh) => {
                refresh.call(services, services.powerbi).await
            }
            ActionRequest::SlackPost(post) => post.call(services).await,
            ActionRequest::PagerDutyEvent(event) => event.call(services).await,
            ActionRequest::Alert(alert) => alert.call(),
            ActionRequest::CheckIn(check_in) => check_in.call(),
        }
    }

    /// The action's name as rules write it and jobs record it.
    pub fn kind(&self) -> &'static str {
        match self {
            ActionRequest::ModeRun(_) => "mode_run",
            ActionRequest::DbtRun(_) => "dbt_run",
            ActionRequest::TableauRefresh(_) => "tableau_refresh",
            ActionRequest::TableauRefreshDatasource(_) => "tableau_refresh_datasource",
            ActionRequest::HexRun(_) => "hex_run",
            ActionRequest::PowerBiRefresh(_) => "powerbi_refresh",
            ActionRequest::SlackPost(_) => "slack_post",
            ActionRequest::PagerDutyEvent(_) => "pagerduty_event",
            ActionRequest::Alert(_) => "alert",
            ActionRequest::CheckIn(_) => "check_in",
        }
    }

    /// The service an action needs, for "`<service>` is not configured" and concurrency.
    pub fn service(&self) -> &'static str {
        match self {
            ActionRequest::ModeRun(_) => "mode",
            ActionRequest::DbtRun(_) => "dbt",
            ActionRequest::TableauRefresh(_) | ActionRequest::TableauRefreshDatasource(_) => {
                "tableau"
            }
            ActionRequest::HexRun(_) => "hex",
            ActionRequest::PowerBiRefresh(_) => "powerbi",
            ActionRequest::SlackPost(_) | ActionRequest::Alert(_) => "slack",
            ActionRequest::PagerDutyEvent(_) => "pagerduty",
            ActionRequest::CheckIn(_) => "freshet",
        }
    }

    /// The arguments, as journaled in the job's payload and shown by `freshet test`.
    pub fn args(&self) -> Value {
        let mut value = serde_json::to_value(self).expect("an ActionRequest always serializes");
        if let Some(map) = value.as_object_mut() {
            map.remove("action");
        }
        value
    }

    /// Rebuilds a request from a job's kind and payload.
    pub fn from_job(kind: &str, payload: &Value) -> Result<ActionRequest, String> {
        let mut value = payload.clone();
        let map = value
            .as_object_mut()
            .ok_or_else(|| format!("{kind} job has no arguments"))?;
        map.insert("action".into(), json!(kind));
        serde_json::from_value(value).map_err(|e| format!("{kind} job has bad arguments: {e}"))
    }

    /// Key under which identical, not-yet-started calls merge (same action, same
    /// arguments). Slack posts never merge: two identical messages were asked for twice.
    pub fn coalesce_key(&self) -> Option<String> {
        match self {
            // Events with one dedup_key fold into one incident at PagerDuty already, and
            // a trigger and its resolve must both go out, in order.
            ActionRequest::SlackPost(_)
            | ActionRequest::Alert(_)
            | ActionRequest::CheckIn(_)
            | ActionRequest::PagerDutyEvent(_) => None,
            other => Some(format!("{}:{}", other.kind(), other.args())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `KINDS` (what rule tests accept as an action) names exactly the rule functions
    /// the actions register, so a new action cannot be left out of it.
    #[test]
    fn kinds_are_the_registered_action_functions() {
        let mut engine = Engine::new_raw();
        ActionRequest::register_rule_functions(&mut engine);
        let registered: std::collections::BTreeSet<String> = engine
            .gen_fn_signatures(false)
            .iter()
            .filter_map(|signature| signature.split('(').next().map(String::from))
            .collect();
        let kinds: std::collections::BTreeSet<String> =
            KINDS.iter().map(|kind| kind.to_string()).collect();
        assert_eq!(registered, kinds);
    }

    #[test]
    fn round_trips_through_a_job_payload() {
        let request = ActionRequest::ModeRun(mode::ModeRun {
            report: "a1b2".into(),
            parameters: json!({"region": "EU"}).as_object().unwrap().clone(),
        });
        assert_eq!(
            request.args(),
            json!({"report": "a1b2", "parameters": {"region": "EU"}})
        );
        assert_eq!(
            ActionRequest::from_job("mode_run", &request.args()).unwrap(),
            request
        );
        assert!(ActionRequest::from_job("mode_run", &json!({})).is_err());
    }

    #[test]
    fn identical_refreshes_share_a_coalesce_key() {
        let refresh = || {
            ActionRequest::TableauRefresh(tableau::RefreshWorkbook {
                workbook: "Finance".into(),
                project: None,
            })
        };
        assert_eq!(refresh().coalesce_key(), refresh().coalesce_key());
        let post = ActionRequest::SlackPost(slack::SlackPost::text(None, "x".into()));
        assert_eq!(post.coalesce_key(), None);
    }
}
