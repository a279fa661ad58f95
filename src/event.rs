//! The common event: what every webhook becomes (docs/behaviour.md section 4), and the contract
//! between intake, the journal, the rules and the CLI.
//!
//! An event serializes to one flat JSON object (`id`, `source`, `type`, `received_at`, the
//! source's own fields, `raw`). That object is what the journal stores, what
//! `freshet events --show` prints and what rules read as `event`.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// Where an event came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Source {
    Dbt,
    /// dbt Core invocations, posted by `freshet send dbt-core`.
    #[serde(rename = "dbt-core")]
    DbtCore,
    Mode,
    /// OpenLineage run events (Airflow, Dagster, Spark, `dbt-ol`).
    OpenLineage,
    /// Outcomes of the Tableau refreshes freshet started (`tableau.refresh.completed`).
    Tableau,
    /// Outcomes of the Hex runs freshet started (`hex.run.completed`).
    Hex,
    /// Outcomes of the Power BI refreshes freshet started (`powerbi.refresh.completed`).
    PowerBi,
    /// Events freshet emits itself, such as action outcomes.
    Freshet,
}

impl Source {
    pub fn as_str(self) -> &'static str {
        match self {
            Source::Dbt => "dbt",
            Source::DbtCore => "dbt-core",
            Source::Mode => "mode",
            Source::OpenLineage => "openlineage",
            Source::Tableau => "tableau",
            Source::Hex => "hex",
            Source::PowerBi => "powerbi",
            Source::Freshet => "freshet",
        }
    }
}

/// Every field some event type has (docs/rules.md, "Events"): `freshet check` warns about
/// a rule reading `event.NAME` for a NAME not listed, naming the nearest one. A test
/// keeps it in step with the docs' tables and with what intake makes of the samples.
pub const FIELDS: &[&str] = &[
    // Every event.
    "id",
    "source",
    "type",
    "received_at",
    "chain_depth",
    "raw",
    "verified",
    // dbt Cloud.
    "account_id",
    "webhook_name",
    "webhook_id",
    "timestamp",
    "job_id",
    "run_id",
    "environment_id",
    "project_id",
    "run_status_code",
    "job_name",
    "environment_name",
    "project_name",
    "dbt_version",
    "run_status",
    "run_status_message",
    "run_reason",
    "started_at",
    "finished_at",
    "errored_at",
    "triggered_by",
    "failures",
    "failures_truncated",
    "run_url",
    "status_message",
    // dbt Core.
    "command",
    "selectors",
    "target",
    "counts",
    // Mode.
    "workspace",
    "report_token",
    "run_token",
    "resource_path",
    "run_state",
    "report_name",
    "results",
    "result_errors",
    // OpenLineage.
    "job_namespace",
    "event_time",
    "producer",
    "parent_job_name",
    "parent_run_id",
    "error_message",
    "inputs",
    "outputs",
    // Tableau refresh outcomes.
    "status",
    "finish_code",
    "notes",
    "workbook",
    "datasource",
    "project",
    "completed_at",
    "rule",
    "cause_event_id",
    // Hex runs and Power BI refreshes.
    "project_id",
    "elapsed",
    "ended_at",
    "group",
    "dataset",
    "request_id",
    // freshet's own: failed actions, deadlines, schedules.
    "action",
    "args",
    "error",
    "action_id",
    "name",
    "due_at",
    "last_check_in",
    "late_minutes",
];

/// One normalized event.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Event {
    /// Unique: `dbt:<eventId>`, `mode:<event>:<resource path>`, `freshet:...`.
    pub id: String,
    pub source: Source,
    #[serde(rename = "type")]
    pub kind: String,
    /// RFC 3339.
    pub received_at: String,
    /// How many freshet-emitted events led here; at 3 no further actions are queued.
    #[serde(default)]
    pub chain_depth: u32,
    /// The source's own fields (dbt run fields, Mode tokens and enrichment, ...).
    #[serde(flatten)]
    pub fields: Map<String, Value>,
    /// The webhook body as received (parsed JSON).
    #[serde(default)]
    pub raw: Value,
}

impl Event {
    /// The event as one JSON object, as rules and `events --show` see it.
    pub fn to_json(&self) -> Value {
        // Serializing a struct of strings, numbers and JSON values cannot fail.
        serde_json::to_value(self).expect("an Event always serializes")
    }

    /// Reads an event back from its JSON object.
    pub fn from_json(value: Value) -> Result<Event, serde_json::Error> {
        serde_json::from_value(value)
    }

    pub fn field(&self, name: &str) -> Option<&Value> {
        self.fields.get(name)
    }

    /// A Mode event that names a report run: its run is fetched from Mode (enrichment)
    /// before the rules see it.
    pub fn names_mode_run(&self) -> bool {
        self.source == Source::Mode && self.field("run_token").is_some_and(|t| !t.is_null())
    }

    /// A dbt Cloud event of a run that failed (`job.run.errored`, or `job.run.completed`
    /// with `Errored`): its failures are fetched before the rules see it, when a dbt Cloud
    /// API token is configured (docs/behaviour.md section 13).
    pub fn is_failed_dbt_cloud_run(&self) -> bool {
        self.source == Source::Dbt
            && (self.kind == "dbt.job.run.errored"
                || (self.kind == "dbt.job.run.completed"
                    && (self.field("run_status").and_then(Value::as_str) == Some("Errored")
                        || self.field("run_status_code").and_then(Value::as_i64) == Some(20))))
    }

    /// Whether the enrich stage fetches what this event lacks before the rules see it:
    /// a Mode run not fetched yet, or a failed dbt Cloud run when `dbt_fetches_failures`.
    /// Intake and `freshet replay` decide the first job with it.
    pub fn needs_fetching(&self, dbt_fetches_failures: bool) -> bool {
        self.is_unfetched_mode_run() || (dbt_fetches_failures && self.is_failed_dbt_cloud_run())
    }

    /// A Mode run event whose run has not been fetched (yet, or ever).
    pub fn is_unfetched_mode_run(&self) -> bool {
        self.names_mode_run() && self.field("verified") != Some(&Value::Bool(true))
    }
}

/// The current time as RFC 3339 with millisecond precision, UTC.
pub fn now_rfc3339() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn round_trips_as_a_flat_object() {
        let mut fields = Map::new();
        fields.insert("job_id".into(), json!(302451));
        let event = Event {
            id: "dbt:wev_1".into(),
            source: Source::Dbt,
            kind: "dbt.job.run.completed".into(),
            received_at: "2026-01-01T00:00:00.000Z".into(),
            chain_depth: 0,
            fields,
            raw: json!({"eventId": "wev_1"}),
        };
        let value = event.to_json();
        assert_eq!(value["type"], "dbt.job.run.completed");
        assert_eq!(value["job_id"], 302451);
        assert_eq!(value["source"], "dbt");
        assert_eq!(Event::from_json(value).unwrap(), event);
    }
}
