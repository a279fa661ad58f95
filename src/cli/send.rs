//! `freshet send`: post a webhook to a running daemon, signed like dbt Cloud signs it (or
//! on the Mode token route), so a deployment can be tried without dbt Cloud. A body comes
//! from a file or a built-in sample; samples (and files with `--new-id`) get a fresh
//! event id each time, so trying again is never a duplicate. `send dbt-core` is how dbt
//! Core, which sends no webhooks, reports an invocation: it reads the artifacts and posts
//! what they say (docs/behaviour.md section 13).

use std::net::{IpAddr, Ipv4Addr, SocketAddr};

use anyhow::{bail, Context};
use serde_json::Value;

use super::{DbtSample, ModeSample, SendTarget};
use crate::config;
use crate::dbt_artifacts::{ManifestFacts, RunResults};
use crate::ingest::dbt_core::Invocation;
use crate::ingest::signature;

/// The built-in samples: the vendors' documented webhook bodies, kept in
/// tests/fixtures/samples.
const DBT_COMPLETED: &str = include_str!("../../tests/fixtures/samples/dbt-job-run-completed.json");
const DBT_ERRORED: &str = include_str!("../../tests/fixtures/samples/dbt-job-run-errored.json");
const DBT_STARTED: &str = include_str!("../../tests/fixtures/samples/dbt-job-run-started.json");
const MODE_RUN_COMPLETED: &str =
    include_str!("../../tests/fixtures/samples/mode-webhook-report-run-completed.json");

pub async fn run(
    config_path: Option<&std::path::Path>,
    target: SendTarget,
) -> anyhow::Result<bool> {
    // Only the secret it signs with: the others (Tableau, Slack, the journal's URL) may
    // not be readable where `send` runs (a CI step, a laptop).
    let keys: &'static [&'static str] = match &target {
        SendTarget::Mode { .. } => &["mode.webhook_token"],
        SendTarget::Dbt { .. } | SendTarget::DbtCore { .. } => &["dbt.webhook_secrets"],
    };
    let config = config::load_only(config_path, keys)?;
    let base = format!("http://{}", reachable(config.server.listen));
    let client = reqwest::Client::new();
    let (request, shown_url) = match target {
        SendTarget::Dbt {
            file,
            sample,
            new_id,
            url,
            set,
        } => {
            let body = match (sample, file) {
                (Some(sample), _) => fresh_dbt_id(sample_text(sample).as_bytes())?,
                (None, Some(file)) => {
                    let body = read(&file)?;
                    if new_id {
                        fresh_dbt_id(&body)?
                    } else {
                        body
                    }
                }
                (None, None) => bail!("name a FILE or a --sample"),
            };
            let body = with_fields_set(body, &set)?;
            let url = url.unwrap_or_else(|| format!("{base}/webhooks/dbt"));
            (signed_post(&client, &config, &url, body)?, url)
        }
        SendTarget::DbtCore {
            run_results,
            manifest,
            job,
            url,
        } => {
            let body = dbt_core_body(&run_results, manifest.as_deref(), job)?;
            let url = url.unwrap_or_else(|| format!("{base}/webhooks/dbt-core"));
            (signed_post(&client, &config, &url, body)?, url)
        }
        SendTarget::Mode {
            file,
            sample,
            new_id,
            url,
            set,
        } => {
            let body = match (sample, file) {
                (Some(ModeSample::ReportRunCompleted), _) => {
                    // The sample names the configured workspace: the daemon refuses a
                    // webhook about another one.
                    let workspace = config.mode.as_ref().map(|mode| mode.workspace.as_str());
                    fresh_mode_run(&in_workspace(MODE_RUN_COMPLETED.as_bytes(), workspace)?)?
                }
                (None, Some(file)) => {
                    let body = read(&file)?;
                    if new_id {
                        fresh_mode_run(&body)?
                    } else {
                        body
                    }
                }
                (None, None) => bail!("name a FILE or a --sample"),
            };
            let body = with_fields_set(body, &set)?;
            let (url, shown) = match url {
                Some(url) => (url, "the given --url".to_string()),
                None => {
                    let Some(token) = config.mode.as_ref().and_then(|m| m.webhook_token.as_ref())
                    else {
                        bail!("no Mode webhook token is configured ([mode] webhook_token)");
                    };
                    // The token is a secret: show the route, not the token.
                    (
                        format!("{base}/webhooks/mode/{}", token.expose()),
                        format!("{base}/webhooks/mode/<token>"),
                    )
                }
            };
            (
                client
                    .post(&url)
                    .header("content-type", "application/json")
                    .body(body),
                shown,
            )
        }
    };
    let request = request
        .build()
        .map_err(|error| anyhow::anyhow!("cannot post to {shown_url}: {}", error.without_url()))?;
    // Host and port are not secret (a Mode route's token is): name them when no one answers.
    let addr = format!(
        "{}:{}",
        request.url().host_str().unwrap_or("?"),
        request.url().port_or_known_default().unwrap_or(0)
    );
    let response = client.execute(request).await.map_err(|error| {
        if error.is_connect() {
            anyhow::anyhow!("connection refused: is freshet serve running on {addr}?")
        } else {
            anyhow::anyhow!("cannot reach {shown_url}: {}", error.without_url())
        }
    })?;
    let status = response.status();
    let text = response.text().await.unwrap_or_default();
    println!("POST {shown_url} -> {}", status.as_u16());
    println!("{text}");
    Ok(status.is_success())
}

/// A POST of `body` signed as dbt Cloud signs webhooks, with the first `[dbt]` secret.
fn signed_post(
    client: &reqwest::Client,
    config: &config::Config,
    url: &str,
    body: Vec<u8>,
) -> anyhow::Result<reqwest::RequestBuilder> {
    let secret = config
        .dbt
        .as_ref()
        .and_then(|dbt| dbt.webhook_secrets.first())
        .context("no dbt secret is configured ([dbt] webhook_secrets)")?;
    let signature = signature::sign(secret.expose().as_bytes(), &body);
    Ok(client
        .post(url)
        .header("content-type", "application/json")
        .header("authorization", signature)
        .body(body))
}

/// The `/webhooks/dbt-core` body for a dbt Core invocation's artifacts.
fn dbt_core_body(
    run_results: &std::path::Path,
    manifest: Option<&std::path::Path>,
    job: Option<String>,
) -> anyhow::Result<Vec<u8>> {
    let results = RunResults::parse(&read(run_results)?)
        .map_err(|why| anyhow::anyhow!("{}: {why}", run_results.display()))?;
    let step = format!(
        "dbt {}",
        results
            .args
            .get("which")
            .and_then(Value::as_str)
            .unwrap_or("run")
    );
    let mut failures = results.failures(&step);
    if let Some(manifest) = manifest {
        let wanted = failures.iter().filter_map(|f| f.node.clone()).collect();
        let file = std::fs::File::open(manifest)
            .with_context(|| format!("cannot read {}", manifest.display()))?;
        let facts = ManifestFacts::read(file, &wanted)
            .map_err(|why| anyhow::anyhow!("{}: {why}", manifest.display()))?;
        facts.annotate(&mut failures);
    }
    let invocation = Invocation::from_run_results(&results, failures, job)
        .map_err(|why| anyhow::anyhow!("{}: {why}", run_results.display()))?;
    Ok(serde_json::to_vec(&invocation)?)
}

/// The body with each `PATH=VALUE` of `--set` applied: a dotted path into the JSON
/// object (objects are made on the way), the value JSON if it reads as JSON, else the
/// text as a string (as the Stripe CLI's `trigger --override` does).
fn with_fields_set(body: Vec<u8>, set: &[String]) -> anyhow::Result<Vec<u8>> {
    if set.is_empty() {
        return Ok(body);
    }
    let mut value: Value = serde_json::from_slice(&body).context("the body is not JSON")?;
    for assignment in set {
        let (path, text) = assignment.split_once('=').with_context(|| {
            format!("--set {assignment:?}: write PATH=VALUE (data.jobName=nightly)")
        })?;
        let keys: Vec<&str> = path.split('.').collect();
        anyhow::ensure!(
            keys.iter().all(|k| !k.is_empty()),
            "--set {assignment:?}: the path {path:?} has an empty key"
        );
        let new =
            serde_json::from_str::<Value>(text).unwrap_or_else(|_| Value::String(text.to_string()));
        let mut at = &mut value;
        for key in &keys[..keys.len() - 1] {
            let object = at.as_object_mut().with_context(|| {
                format!("--set {assignment:?}: {key} is inside a value that is not an object")
            })?;
            at = object
                .entry(key.to_string())
                .or_insert_with(|| Value::Object(Default::default()));
        }
        let object = at.as_object_mut().with_context(|| {
            format!("--set {assignment:?}: the path does not lead into an object")
        })?;
        object.insert(keys[keys.len() - 1].to_string(), new);
    }
    Ok(serde_json::to_vec(&value)?)
}

fn sample_text(sample: DbtSample) -> &'static str {
    match sample {
        DbtSample::JobRunCompleted => DBT_COMPLETED,
        DbtSample::JobRunErrored => DBT_ERRORED,
        DbtSample::JobRunStarted => DBT_STARTED,
    }
}

fn read(file: &std::path::Path) -> anyhow::Result<Vec<u8>> {
    std::fs::read(file).with_context(|| format!("cannot read {}", file.display()))
}

/// 26 random letters and digits, the shape of dbt's and Mode's own ids.
fn random_id(len: usize) -> String {
    use rand::Rng;
    const ALPHABET: &[u8] = b"0123456789abcdefghijklmnopqrstuvwxyz";
    let mut rng = rand::thread_rng();
    (0..len)
        .map(|_| ALPHABET[rng.gen_range(0..ALPHABET.len())] as char)
        .collect()
}

/// The dbt body with a new `eventId` (dbt's de-duplication key), so it is a new event.
fn fresh_dbt_id(body: &[u8]) -> anyhow::Result<Vec<u8>> {
    let mut value: Value = serde_json::from_slice(body).context("the body is not JSON")?;
    let object = value
        .as_object_mut()
        .context("a dbt webhook body is a JSON object")?;
    object.insert(
        "eventId".into(),
        Value::String(format!("wev_{}", random_id(27))),
    );
    Ok(serde_json::to_vec(&value)?)
}

/// The Mode body with its run (or, with no run, its report) token replaced in the URL:
/// Mode's event id is the resource path. The run named is then one Mode does not have,
/// so fetching it fails (and is retried, then dead): the sample tries intake and rules
/// on an unverified event, not a real run.
fn fresh_mode_run(body: &[u8]) -> anyhow::Result<Vec<u8>> {
    let mut value: Value = serde_json::from_slice(body).context("the body is not JSON")?;
    let object = value
        .as_object_mut()
        .context("a Mode webhook body is a JSON object")?;
    let Some((key, url)) = object
        .iter()
        .find(|(key, value)| key.ends_with("_url") && value.is_string())
        .map(|(key, value)| (key.clone(), value.as_str().unwrap_or_default().to_string()))
    else {
        bail!("the Mode body has no *_url to give a fresh id");
    };
    let mut segments: Vec<String> = url.split('/').map(String::from).collect();
    let marker = if segments.iter().any(|s| s == "runs") {
        "runs"
    } else {
        "reports"
    };
    let at = segments
        .iter()
        .position(|s| s == marker)
        .map(|i| i + 1)
        .filter(|i| *i < segments.len())
        .with_context(|| format!("the {key} names no report or run"))?;
    segments[at] = random_id(12);
    object.insert(key, Value::String(segments.join("/")));
    Ok(serde_json::to_vec(&value)?)
}

/// A Mode webhook body whose links name `workspace` (`/api/{workspace}/...`), when one
/// is configured.
fn in_workspace(body: &[u8], workspace: Option<&str>) -> anyhow::Result<Vec<u8>> {
    let mut value: Value = serde_json::from_slice(body).context("the body is not JSON")?;
    let Some(workspace) = workspace else {
        return Ok(body.to_vec());
    };
    if let Some(object) = value.as_object_mut() {
        for (key, link) in object.iter_mut() {
            let Some(url) = link.as_str().filter(|_| key.ends_with("_url")) else {
                continue;
            };
            let mut segments: Vec<&str> = url.split('/').collect();
            if let Some(at) = segments.iter().position(|s| *s == "api") {
                if at + 1 < segments.len() {
                    segments[at + 1] = workspace;
                    *link = Value::String(segments.join("/"));
                }
            }
        }
    }
    Ok(serde_json::to_vec(&value)?)
}

/// The address to contact for a listen address (a wildcard listen is reached on loopback).
fn reachable(listen: SocketAddr) -> SocketAddr {
    if listen.ip().is_unspecified() {
        SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), listen.port())
    } else {
        listen
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_mode_sample_names_the_configured_workspace() {
        let body = in_workspace(MODE_RUN_COMPLETED.as_bytes(), Some("acme-analytics")).unwrap();
        let value: Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(
            value["report_run_url"],
            "https://modeanalytics.com/api/acme-analytics/reports/2b3c4d5e6f70/runs/4d5e6f708192"
        );
        assert_eq!(
            in_workspace(MODE_RUN_COMPLETED.as_bytes(), None).unwrap(),
            MODE_RUN_COMPLETED.as_bytes()
        );
    }

    #[test]
    fn set_writes_json_values_or_strings_by_dotted_path() {
        let body = with_fields_set(
            DBT_COMPLETED.as_bytes().to_vec(),
            &[
                "data.jobName=nightly finance".into(),
                "data.runStatusCode=20".into(),
                "data.extra.flag=true".into(),
            ],
        )
        .unwrap();
        let value: Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(value["data"]["jobName"], "nightly finance");
        assert_eq!(value["data"]["runStatusCode"], 20);
        assert_eq!(value["data"]["extra"]["flag"], true);
        assert!(with_fields_set(body.clone(), &["novalue".into()]).is_err());
        assert!(with_fields_set(body, &["eventId.x=1".into()]).is_err());
    }

    #[test]
    fn fresh_ids_differ_every_time() {
        let a: Value =
            serde_json::from_slice(&fresh_dbt_id(DBT_COMPLETED.as_bytes()).unwrap()).unwrap();
        let b: Value =
            serde_json::from_slice(&fresh_dbt_id(DBT_COMPLETED.as_bytes()).unwrap()).unwrap();
        assert_ne!(a["eventId"], b["eventId"]);
        assert_eq!(a["data"], b["data"], "only the id changes");
        let a: Value =
            serde_json::from_slice(&fresh_mode_run(MODE_RUN_COMPLETED.as_bytes()).unwrap())
                .unwrap();
        let b: Value =
            serde_json::from_slice(&fresh_mode_run(MODE_RUN_COMPLETED.as_bytes()).unwrap())
                .unwrap();
        assert_ne!(a["report_run_url"], b["report_run_url"]);
        assert!(a["report_run_url"]
            .as_str()
            .unwrap()
            .contains("/api/acme/reports/2b3c4d5e6f70/runs/"));
    }
}
