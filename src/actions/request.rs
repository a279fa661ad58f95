//! What a rule can ask for: the [`ActionRequest`] values that rule functions build and
//! the journal stores as job payloads.

use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};

use crate::journal::AlertCall;

/// One action call a rule made.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "action", rename_all = "snake_case")]
pub enum ActionRequest {
    ModeRun {
        report: String,
        #[serde(default, skip_serializing_if = "Map::is_empty")]
        parameters: Map<String, Value>,
    },
    TableauRefresh {
        workbook: String,
        /// The project that holds it, when the name alone is ambiguous.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        project: Option<String>,
    },
    TableauRefreshDatasource {
        datasource: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        project: Option<String>,
    },
    SlackPost {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        channel: Option<String>,
        text: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        blocks: Option<Value>,
        /// Post as a reply in this message's thread (a chat.postMessage `ts`).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        thread_ts: Option<String>,
        /// An alert's renotification or resolution: posted in the thread of the post that
        /// announced the alert, the job with this key, once its `ts` is known.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        thread_of: Option<String>,
    },
    Alert {
        name: String,
        firing: bool,
        text: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        channel: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        renotify_minutes: Option<u64>,
        resolve: bool,
    },
}

impl ActionRequest {
    /// The action's name as rules write it and jobs record it.
    pub fn kind(&self) -> &'static str {
        match self {
            ActionRequest::ModeRun { .. } => "mode_run",
            ActionRequest::TableauRefresh { .. } => "tableau_refresh",
            ActionRequest::TableauRefreshDatasource { .. } => "tableau_refresh_datasource",
            ActionRequest::SlackPost { .. } => "slack_post",
            ActionRequest::Alert { .. } => "alert",
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
            ActionRequest::SlackPost { .. } | ActionRequest::Alert { .. } => None,
            other => Some(format!("{}:{}", other.kind(), other.args())),
        }
    }

    /// The alert call, for `alert(..)` requests.
    pub fn as_alert(&self, rule: &str) -> Option<AlertCall> {
        match self {
            ActionRequest::Alert {
                name,
                firing,
                text,
                channel,
                renotify_minutes,
                resolve,
            } => Some(AlertCall {
                rule: rule.to_string(),
                name: name.clone(),
                firing: *firing,
                text: text.clone(),
                channel: channel.clone(),
                renotify_minutes: *renotify_minutes,
                resolve: *resolve,
            }),
            _ => None,
        }
    }

    /// The service an action needs, for "<service> is not configured" and concurrency.
    pub fn service(&self) -> &'static str {
        match self {
            ActionRequest::ModeRun { .. } => "mode",
            ActionRequest::TableauRefresh { .. }
            | ActionRequest::TableauRefreshDatasource { .. } => "tableau",
            ActionRequest::SlackPost { .. } | ActionRequest::Alert { .. } => "slack",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_through_a_job_payload() {
        let request = ActionRequest::ModeRun {
            report: "a1b2".into(),
            parameters: json!({"region": "EU"}).as_object().unwrap().clone(),
        };
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
        let a = ActionRequest::TableauRefresh {
            workbook: "Finance".into(),
            project: None,
        };
        let b = ActionRequest::TableauRefresh {
            workbook: "Finance".into(),
            project: None,
        };
        assert_eq!(a.coalesce_key(), b.coalesce_key());
        let post = ActionRequest::SlackPost {
            channel: None,
            text: "x".into(),
            blocks: None,
            thread_ts: None,
            thread_of: None,
        };
        assert_eq!(post.coalesce_key(), None);
    }
}
