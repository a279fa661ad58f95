//! dbt's own artifacts, `run_results.json` and `manifest.json`, turned into why a run
//! failed: one [`Failure`] per model that errored or test that failed, with its owner and
//! tags when the manifest is read (docs/behaviour.md section 13). dbt Cloud runs (the
//! enrich stage fetches the artifacts) and dbt Core invocations (`freshet send dbt-core`
//! reads them from `target/`) share this, so one rule serves both.
//!
//! The recipe is dbt Labs' own (dbt-mcp, `run_results_errors/parser.py`): keep the
//! results whose status is `error` or `fail` (`runtime error` in older dbt). The manifest
//! can be tens of megabytes, so it is read as a stream and only what the failures need is
//! kept, never the whole document.

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::io::Read;

use serde::de::{DeserializeSeed, IgnoredAny, MapAccess, Visitor};
use serde::{Deserialize, Deserializer, Serialize};
use serde_json::Value;

/// Most failures an event carries; `failures_truncated` counts the rest.
pub const MAX_FAILURES: usize = 50;
/// Longest failure message kept, in characters.
pub const MAX_MESSAGE_CHARS: usize = 1_000;
/// The log tail that stands in for a step without a usable artifact.
pub const LOG_TAIL_LINES: usize = 50;
pub const LOG_TAIL_BYTES: usize = 4 << 10;

/// The result statuses that are failures (dbt-mcp's parser; `runtime error` is how dbt
/// before 1.0 wrote `error`).
const FAILED: [&str; 3] = ["error", "fail", "runtime error"];

/// Why one node failed, or (without `node`) the tail of a step's logs when its artifact
/// could not be had.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Failure {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resource_type: Option<String>,
    pub status: String,
    pub message: String,
    pub step: String,
    /// From the manifest: the node's `config.meta.owner`, else `meta.owner`, else its
    /// group's owner (e-mail, else name); a test without one takes its model's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub owner: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tags: Option<Vec<String>>,
}

impl Failure {
    /// The entry of a step whose artifact is missing or too large: its logs' last lines.
    pub fn log_tail(step: &str, logs: &str) -> Failure {
        Failure {
            node: None,
            name: None,
            resource_type: None,
            status: "error".into(),
            message: log_tail(logs),
            step: step.into(),
            owner: None,
            tags: None,
        }
    }
}

/// The parts of `run_results.json` freshet reads.
#[derive(Debug, Clone, Deserialize)]
pub struct RunResults {
    #[serde(default)]
    pub metadata: RunMetadata,
    pub results: Vec<NodeResult>,
    #[serde(default)]
    pub elapsed_time: Option<f64>,
    /// The invocation's arguments: `which` (the command), `select`, `target`, ...
    #[serde(default)]
    pub args: Value,
}

#[derive(Debug, Clone, Default, Deserialize)]
pub struct RunMetadata {
    #[serde(default)]
    pub invocation_id: Option<String>,
    #[serde(default)]
    pub generated_at: Option<String>,
    #[serde(default)]
    pub dbt_version: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct NodeResult {
    pub unique_id: String,
    pub status: String,
    #[serde(default)]
    pub message: Option<String>,
    #[serde(default)]
    pub timing: Vec<Timing>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct Timing {
    #[serde(default)]
    pub started_at: Option<String>,
    #[serde(default)]
    pub completed_at: Option<String>,
}

impl RunResults {
    /// Parses `run_results.json`, naming what is wrong when it is not one.
    pub fn parse(bytes: &[u8]) -> Result<RunResults, String> {
        let deserializer = &mut serde_json::Deserializer::from_slice(bytes);
        serde_path_to_error::deserialize(deserializer)
            .map_err(|error| format!("not a dbt run_results.json: {error}"))
    }

    /// One [`Failure`] per failed result, in dbt's order, each naming `step`.
    pub fn failures(&self, step: &str) -> Vec<Failure> {
        self.results
            .iter()
            .filter(|result| FAILED.contains(&result.status.as_str()))
            .map(|result| {
                let mut parts = result.unique_id.split('.');
                let resource_type = parts.next().map(String::from);
                let name = parts.nth(1).map(String::from);
                Failure {
                    node: Some(result.unique_id.clone()),
                    name,
                    resource_type,
                    status: result.status.clone(),
                    message: capped_chars(
                        result.message.as_deref().unwrap_or(""),
                        MAX_MESSAGE_CHARS,
                    ),
                    step: step.into(),
                    owner: None,
                    tags: None,
                }
            })
            .collect()
    }

    /// How many results ended in each status (`success`, `error`, `pass`, `fail`, ...).
    pub fn counts(&self) -> HashMap<String, u64> {
        let mut counts = HashMap::new();
        for result in &self.results {
            *counts.entry(result.status.clone()).or_insert(0) += 1;
        }
        counts
    }
}

/// What the manifest says of one node that a failure needs.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct NodeFacts {
    pub name: Option<String>,
    pub resource_type: Option<String>,
    pub owner: Option<String>,
    pub tags: Vec<String>,
    /// A test's model: its owner stands in for a test that has none.
    pub attached_node: Option<String>,
}

/// The nodes of a manifest that failures need.
#[derive(Debug, Default)]
pub struct ManifestFacts {
    nodes: HashMap<String, NodeFacts>,
}

impl ManifestFacts {
    /// Reads `manifest.json` from `reader` as a stream, keeping the nodes named in
    /// `wanted`, and of the others only whom they belong to (a failed test takes its
    /// model's owner), never a node's SQL, columns or descriptions.
    pub fn read(reader: impl Read, wanted: &HashSet<String>) -> Result<ManifestFacts, String> {
        let reader = std::io::BufReader::with_capacity(64 << 10, reader);
        let mut deserializer = serde_json::Deserializer::from_reader(reader);
        let raw = ManifestSeed { wanted }
            .deserialize(&mut deserializer)
            .map_err(|error| format!("not a dbt manifest.json: {error}"))?;
        let owners_of_groups: HashMap<String, String> = raw
            .groups
            .into_values()
            .filter_map(|group| {
                let owner = group.owner?;
                Some((group.name?, owner.email.or(owner.name)?))
            })
            .collect();
        let resolve = |owner: OwnerRef| match owner {
            OwnerRef::Direct(value) => owner_text(value),
            OwnerRef::Group(group) => owners_of_groups.get(&group).cloned(),
        };
        let mut nodes: HashMap<String, NodeFacts> = raw
            .nodes
            .wanted
            .into_iter()
            .map(|(id, mut node)| {
                let owner = node.owner_ref().and_then(resolve);
                let tags = if node.config.tags.is_empty() {
                    node.tags
                } else {
                    node.config.tags
                };
                let facts = NodeFacts {
                    name: node.name,
                    resource_type: node.resource_type,
                    owner,
                    tags,
                    attached_node: node.attached_node,
                };
                (id, facts)
            })
            .collect();
        // A failed test's model, when the model is not itself among the failures: its
        // owner alone.
        let models: Vec<String> = nodes
            .values()
            .filter_map(|node| node.attached_node.clone())
            .filter(|model| !nodes.contains_key(model))
            .collect();
        let mut owners = raw.nodes.owners;
        for model in models {
            if let Some(owner) = owners.remove(&model).and_then(resolve) {
                nodes.insert(
                    model,
                    NodeFacts {
                        owner: Some(owner),
                        ..NodeFacts::default()
                    },
                );
            }
        }
        Ok(ManifestFacts { nodes })
    }

    pub fn node(&self, id: &str) -> Option<&NodeFacts> {
        self.nodes.get(id)
    }

    /// Gives each failure its node's name, owner and tags (a test without an owner takes
    /// its model's).
    pub fn annotate(&self, failures: &mut [Failure]) {
        for failure in failures {
            let Some(node) = failure.node.as_deref().and_then(|id| self.node(id)) else {
                continue;
            };
            if let Some(name) = &node.name {
                failure.name = Some(name.clone());
            }
            failure.owner = node.owner.clone().or_else(|| {
                let model = node.attached_node.as_deref()?;
                self.node(model)?.owner.clone()
            });
            failure.tags = Some(node.tags.clone());
        }
    }
}

/// An owner as text: a string as it is; an e-mail or name out of an object; a list's
/// first entry.
fn owner_text(value: Value) -> Option<String> {
    match value {
        Value::String(text) if !text.trim().is_empty() => Some(text),
        Value::Object(map) => ["email", "name"]
            .iter()
            .find_map(|key| map.get(*key).and_then(Value::as_str).map(String::from)),
        Value::Array(items) => items.into_iter().find_map(owner_text),
        _ => None,
    }
}

/// `text`, cut to `max` characters.
pub fn capped_chars(text: &str, max: usize) -> String {
    match text.char_indices().nth(max) {
        Some((end, _)) => text[..end].to_string(),
        None => text.to_string(),
    }
}

/// The last [`LOG_TAIL_LINES`] lines of `logs`, at most [`LOG_TAIL_BYTES`] (the end kept).
pub fn log_tail(logs: &str) -> String {
    let trimmed = logs.trim_end();
    let start = trimmed
        .rmatch_indices('\n')
        .nth(LOG_TAIL_LINES - 1)
        .map_or(0, |(at, _)| at + 1);
    let mut tail = &trimmed[start..];
    if tail.len() > LOG_TAIL_BYTES {
        let mut cut = tail.len() - LOG_TAIL_BYTES;
        while !tail.is_char_boundary(cut) {
            cut += 1;
        }
        tail = &tail[cut..];
    }
    tail.to_string()
}

#[derive(Default)]
struct RawManifest {
    nodes: KeptNodes,
    groups: HashMap<String, RawGroup>,
}

#[derive(Deserialize, Default)]
struct RawNode {
    name: Option<String>,
    resource_type: Option<String>,
    #[serde(default)]
    meta: RawMeta,
    #[serde(default)]
    config: RawConfig,
    #[serde(default)]
    tags: Vec<String>,
    group: Option<String>,
    attached_node: Option<String>,
}

#[derive(Deserialize, Default)]
struct RawConfig {
    #[serde(default)]
    meta: RawMeta,
    #[serde(default, deserialize_with = "tags")]
    tags: Vec<String>,
    group: Option<String>,
}

/// `meta` is free-form; only `owner` is read, everything else is skipped unread.
#[derive(Deserialize, Default)]
struct RawMeta {
    owner: Option<Value>,
}

#[derive(Deserialize)]
struct RawGroup {
    name: Option<String>,
    owner: Option<RawOwner>,
}

#[derive(Deserialize)]
struct RawOwner {
    name: Option<String>,
    email: Option<String>,
}

/// `config.tags` is a list, or one string in older manifests.
fn tags<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Vec<String>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Tags {
        One(String),
        Many(Vec<String>),
        None(()),
    }
    Ok(match Tags::deserialize(deserializer)? {
        Tags::One(tag) => vec![tag],
        Tags::Many(tags) => tags,
        Tags::None(()) => Vec::new(),
    })
}

/// Reads the manifest's top level: `nodes` through [`NodesSeed`], `groups` whole (they
/// are few), every other key (macros, docs, the lineage maps) skipped unread.
struct ManifestSeed<'a> {
    wanted: &'a HashSet<String>,
}

impl<'de> DeserializeSeed<'de> for ManifestSeed<'_> {
    type Value = RawManifest;

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<RawManifest, D::Error> {
        deserializer.deserialize_map(self)
    }
}

impl<'de> Visitor<'de> for ManifestSeed<'_> {
    type Value = RawManifest;

    fn expecting(&self, formatter: &mut fmt::Formatter) -> fmt::Result {
        formatter.write_str("a dbt manifest (a JSON object)")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<RawManifest, A::Error> {
        let mut manifest = RawManifest::default();
        while let Some(key) = map.next_key::<String>()? {
            match key.as_str() {
                "nodes" => {
                    manifest.nodes = map.next_value_seed(NodesSeed {
                        wanted: self.wanted,
                    })?
                }
                "groups" => {
                    manifest.groups = map
                        .next_value::<Option<HashMap<String, RawGroup>>>()?
                        .unwrap_or_default()
                }
                _ => {
                    map.next_value::<IgnoredAny>()?;
                }
            }
        }
        Ok(manifest)
    }
}

/// Reads `nodes` one at a time, keeping the wanted ones, and of the others their owner.
struct NodesSeed<'a> {
    wanted: &'a HashSet<String>,
}

/// The failed nodes whole, and of every other node only whom it belongs to.
#[derive(Default)]
struct KeptNodes {
    wanted: HashMap<String, RawNode>,
    owners: HashMap<String, OwnerRef>,
}

/// A node's owner as the manifest gives it: directly, or through its group.
enum OwnerRef {
    Direct(Value),
    Group(String),
}

impl RawNode {
    fn owner_ref(&mut self) -> Option<OwnerRef> {
        if let Some(owner) = self.config.meta.owner.take().or(self.meta.owner.take()) {
            return Some(OwnerRef::Direct(owner));
        }
        self.config
            .group
            .take()
            .or(self.group.take())
            .map(OwnerRef::Group)
    }
}

impl<'de> DeserializeSeed<'de> for NodesSeed<'_> {
    type Value = KeptNodes;

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<Self::Value, D::Error> {
        deserializer.deserialize_map(self)
    }
}

impl<'de> Visitor<'de> for NodesSeed<'_> {
    type Value = KeptNodes;

    fn expecting(&self, formatter: &mut fmt::Formatter) -> fmt::Result {
        formatter.write_str("the manifest's nodes (an object)")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let mut kept = KeptNodes::default();
        while let Some(id) = map.next_key::<String>()? {
            let mut node: RawNode = map.next_value()?;
            if self.wanted.contains(&id) {
                kept.wanted.insert(id, node);
            } else if let Some(owner) = node.owner_ref() {
                kept.owners.insert(id, owner);
            }
        }
        Ok(kept)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const RUN_RESULTS: &[u8] = include_bytes!("../tests/fixtures/dbt/run_results.json");
    const MANIFEST: &[u8] = include_bytes!("../tests/fixtures/dbt/manifest.json");

    #[test]
    fn real_run_results_give_the_failed_model_and_tests() {
        let results = RunResults::parse(RUN_RESULTS).unwrap();
        let failures = results.failures("dbt build");
        let nodes: Vec<_> = failures.iter().map(|f| f.node.clone().unwrap()).collect();
        assert_eq!(
            nodes,
            [
                "model.shop.revenue",
                "test.shop.accepted_values_orders_status__shipped__placed.a1866e162a",
                "test.shop.not_null_orders_amount.106140f9fd",
            ]
        );
        assert_eq!(failures[0].name.as_deref(), Some("revenue"));
        assert_eq!(failures[0].resource_type.as_deref(), Some("model"));
        assert_eq!(failures[0].status, "error");
        assert!(failures[0]
            .message
            .contains(r#"Referenced column "discount" not found"#));
        assert_eq!(failures[1].status, "fail");
        assert_eq!(results.counts()["skipped"], 1);
    }

    #[test]
    fn the_manifest_gives_owners_from_meta_groups_and_a_tests_model() {
        let results = RunResults::parse(RUN_RESULTS).unwrap();
        let mut failures = results.failures("dbt build");
        let wanted = failures.iter().filter_map(|f| f.node.clone()).collect();
        let facts = ManifestFacts::read(MANIFEST, &wanted).unwrap();
        facts.annotate(&mut failures);
        // The group's owner (an e-mail) for the model in group finance.
        assert_eq!(
            failures[0].owner.as_deref(),
            Some("finance-data@example.com")
        );
        assert_eq!(
            failures[0].tags.as_deref(),
            Some(&["finance".to_string(), "nightly".to_string()][..])
        );
        // A test on orders takes orders' config.meta.owner.
        assert_eq!(failures[2].owner.as_deref(), Some("dana@example.com"));
        assert_eq!(failures[2].name.as_deref(), Some("not_null_orders_amount"));
        // Only the failed nodes and the failed test's model were kept.
        assert!(facts.node("model.shop.raw_orders").is_none());
        assert!(facts.node("model.shop.revenue_by_day").is_none());
    }

    #[test]
    fn messages_and_log_tails_are_bounded() {
        assert_eq!(capped_chars("ééé", 2), "éé");
        let logs: String = (0..200).map(|i| format!("line {i}\n")).collect();
        let tail = log_tail(&logs);
        assert!(tail.starts_with("line 150\n") && tail.ends_with("line 199"));
        let long = "é".repeat(10_000);
        assert!(log_tail(&long).len() <= LOG_TAIL_BYTES);
    }

    #[test]
    fn not_an_artifact_is_named() {
        let error = RunResults::parse(br#"{"results": [{"status": "error"}]}"#).unwrap_err();
        assert!(error.contains("results[0]"), "{error}");
        let error = ManifestFacts::read(&b"[1]"[..], &HashSet::new()).unwrap_err();
        assert!(error.contains("manifest"), "{error}");
    }
}
