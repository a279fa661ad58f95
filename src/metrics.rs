//! Prometheus metrics for `/metrics` (docs/behaviour.md section 2), through the official
//! `prometheus-client` crate rather than hand-formatted text.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct EventLabels {
    pub source: String,
    pub r#type: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RejectLabels {
    pub source: String,
    pub reason: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct SourceLabels {
    pub source: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RuleLabels {
    pub rule: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ActionLabels {
    pub kind: String,
    pub outcome: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct InstanceLabels {
    pub instance: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct KindLabels {
    pub kind: String,
}

/// Every metric freshet exports. Cheap to clone handles live inside; share it by `Arc`.
pub struct Metrics {
    registry: Registry,
    pub events_received: Family<EventLabels, Counter>,
    pub webhooks_rejected: Family<RejectLabels, Counter>,
    pub rule_evaluations: Family<RuleLabels, Counter>,
    pub rule_errors: Family<RuleLabels, Counter>,
    pub actions: Family<ActionLabels, Counter>,
    pub action_latency: Family<KindLabels, Histogram>,
    pub rules_loaded: Gauge,
    pub rule_compile_errors: Gauge,
    pub journal_backlog: Gauge,
    /// 1 for this instance's name in a shared journal.
    pub instance_info: Family<InstanceLabels, Gauge>,
    /// Answers other than 2xx to a source's webhooks since its last 2xx.
    pub webhook_consecutive_failures: Family<SourceLabels, Gauge>,
}

/// dbt Cloud deactivates a webhook after 5 failed deliveries in a row; past this many,
/// `/healthz` shows the count, while the operator can still act.
pub const CONSECUTIVE_FAILURES_SHOWN: i64 = 2;

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Metrics {
        let mut registry = Registry::with_prefix("freshet");
        let events_received = Family::<EventLabels, Counter>::default();
        registry.register(
            "events_received",
            "Webhooks accepted and journaled, by source and type",
            events_received.clone(),
        );
        let webhooks_rejected = Family::<RejectLabels, Counter>::default();
        registry.register(
            "webhooks_rejected",
            "Webhooks refused, by source and reason",
            webhooks_rejected.clone(),
        );
        let rule_evaluations = Family::<RuleLabels, Counter>::default();
        registry.register(
            "rule_evaluations",
            "Rule evaluations, by rule",
            rule_evaluations.clone(),
        );
        let rule_errors = Family::<RuleLabels, Counter>::default();
        registry.register(
            "rule_errors",
            "Rule evaluations that raised an error or hit a limit, by rule",
            rule_errors.clone(),
        );
        let actions = Family::<ActionLabels, Counter>::default();
        registry.register(
            "actions",
            "Action attempts, by kind and outcome",
            actions.clone(),
        );
        let action_latency = Family::<KindLabels, Histogram>::new_with_constructor(|| {
            Histogram::new([0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0].into_iter())
        });
        registry.register(
            "action_latency_seconds",
            "Time of one action attempt",
            action_latency.clone(),
        );
        let rules_loaded = Gauge::default();
        registry.register(
            "rules_loaded",
            "Rules currently loaded",
            rules_loaded.clone(),
        );
        let rule_compile_errors = Gauge::default();
        registry.register(
            "rule_compile_errors",
            "Rule files that failed to compile at the last load",
            rule_compile_errors.clone(),
        );
        let journal_backlog = Gauge::default();
        registry.register(
            "journal_backlog",
            "Actions not yet finished (pending, retrying, running)",
            journal_backlog.clone(),
        );
        let instance_info = Family::<InstanceLabels, Gauge>::default();
        registry.register(
            "instance",
            "This instance's name in a shared (PostgreSQL) journal: the events it journals and the jobs it runs carry it",
            instance_info.clone(),
        );
        let webhook_consecutive_failures = Family::<SourceLabels, Gauge>::default();
        registry.register(
            "webhook_consecutive_failures",
            "Answers other than 2xx to a source's webhooks since its last 2xx (dbt Cloud deactivates a webhook after 5 failed deliveries in a row)",
            webhook_consecutive_failures.clone(),
        );
        Metrics {
            webhook_consecutive_failures,
            registry,
            instance_info,
            events_received,
            webhooks_rejected,
            rule_evaluations,
            rule_errors,
            actions,
            action_latency,
            rules_loaded,
            rule_compile_errors,
            journal_backlog,
        }
    }

    pub fn event_received(&self, source: &str, kind: &str) {
        self.events_received
            .get_or_create(&EventLabels {
                source: source.to_string(),
                r#type: kind.to_string(),
            })
            .inc();
    }

    pub fn instance(&self, name: &str) {
        self.instance_info
            .get_or_create(&InstanceLabels {
                instance: name.to_string(),
            })
            .set(1);
    }

    /// Notes how a source's webhook was answered: a 2xx resets the count of failures in a
    /// row, anything else adds one.
    pub fn webhook_answered(&self, source: &str, succeeded: bool) {
        let failures = self
            .webhook_consecutive_failures
            .get_or_create(&SourceLabels {
                source: source.to_string(),
            });
        if succeeded {
            failures.set(0);
        } else {
            failures.inc();
        }
    }

    /// Each source whose webhooks have failed more than [`CONSECUTIVE_FAILURES_SHOWN`]
    /// times in a row, with the count.
    pub fn failing_sources(&self) -> Vec<(&'static str, i64)> {
        ["dbt", "mode", "openlineage"]
            .into_iter()
            .filter_map(|source| {
                let count = self
                    .webhook_consecutive_failures
                    .get_or_create(&SourceLabels {
                        source: source.to_string(),
                    })
                    .get();
                (count > CONSECUTIVE_FAILURES_SHOWN).then_some((source, count))
            })
            .collect()
    }

    pub fn webhook_rejected(&self, source: &str, reason: &str) {
        self.webhooks_rejected
            .get_or_create(&RejectLabels {
                source: source.to_string(),
                reason: reason.to_string(),
            })
            .inc();
    }

    /// The Prometheus text exposition.
    pub fn encode(&self) -> String {
        let mut text = String::new();
        // Writing into a String cannot fail.
        prometheus_client::encoding::text::encode(&mut text, &self.registry)
            .expect("encoding into a String");
        text
    }
}
