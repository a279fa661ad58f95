//! The enrich stage: what a webhook does not say is fetched before the rules see the
//! event. Mode webhooks carry only a link, and a failed run also says
//! `report_run_completed`: `mode.rs` fetches the run from the configured `mode.api_base`
//! (never the host in the payload) and, for a finished run, its result rows. dbt Cloud
//! says a run errored, not why: `dbt.rs` reads the failed steps' artifacts into
//! `failures` (docs/behaviour.md section 13).
//!
//! Rules never see a half-fetched event as if there were nothing to fetch (docs/behaviour.md
//! sections 7 and 13): a fetch that fails is retried like an action (the `actions.*`
//! backoff, `Retry-After` honoured), and when it gives up the job is `dead`, listed and
//! retryable, with a `freshet.action.failed` event. Only what cannot be had (purged Mode
//! results, a missing or too large dbt artifact) is left out, and said so. Without API
//! credentials nothing can be fetched, and the event reaches the rules unverified.

mod dbt;
mod mode;

pub use dbt::RecentRuns;

use std::sync::Arc;

use arc_swap::ArcSwap;
use serde_json::Value;
use tokio_util::sync::CancellationToken;

use crate::config::Config;
use crate::event::{Event, Source};
use crate::journal::{blocking, FollowUp, Job, JobOutcome, JobStatus, Journal, Queue};

use super::act::failure_if_dead;
use super::{next_jobs, Wakes};

/// How long one enrichment may hold its job: the run, the report, the query runs and
/// each query's results; a dbt run's steps, artifacts and the wait for them
/// (`dbt.artifact_wait_seconds`, at most 300).
const LEASE_MS: u64 = 600_000;

/// How many enrichments run at once: a dbt enrichment waiting for an artifact does not
/// hold up the others claimed with it.
const BATCH: usize = 8;

/// The enrich stage's dependencies.
pub struct EnrichWorker {
    pub journal: Journal,
    pub config: Arc<ArcSwap<Config>>,
    /// Woken by intake; wakes the evaluate stage once the event is ready (or a failure
    /// event was emitted).
    pub wakes: Wakes,
    /// The daemon's one HTTP client.
    pub http: reqwest::Client,
    /// Failed dbt runs fetched lately: dbt delivers one failed run twice.
    pub dbt_runs: RecentRuns,
}

impl EnrichWorker {
    pub async fn run(self, stop: CancellationToken) {
        while let Some(jobs) = next_jobs(
            &self.journal,
            Queue::Enrich,
            BATCH,
            LEASE_MS,
            &self.wakes.enrich,
            &stop,
        )
        .await
        {
            futures_util::future::join_all(jobs.into_iter().map(|job| self.enrich(job))).await;
        }
    }

    async fn enrich(&self, job: Job) {
        let event_id = job.event_id.clone();
        let event = match blocking(&self.journal, move |j| j.event(&event_id)).await {
            Ok(Some(event)) => event,
            Ok(None) | Err(_) => {
                tracing::error!(event_id = %job.event_id, "Cannot load the event to enrich; it is retried when the lease ends.");
                self.journal.abandon(&job);
                return;
            }
        };
        let config = self.config.load_full();
        if event.source == Source::Mode {
            self.enrich_mode(job, event, &config).await
        } else {
            self.enrich_dbt(job, event, &config).await
        }
    }

    async fn enrich_mode(&self, job: Job, mut event: Event, config: &Config) {
        let mode = config
            .mode
            .as_ref()
            .filter(|mode| mode.api_token.is_some() && mode.api_secret.is_some());
        let Some(mode) = mode else {
            tracing::warn!(event_id = %event.id, "No Mode API credentials (mode.api_token, mode.api_secret): the run cannot be fetched; rules see the event unverified.");
            event.fields.insert("verified".into(), Value::Bool(false));
            return self.enriched(job, event).await;
        };
        if !super::lease_still_held(&self.journal, &job) {
            return;
        }
        match mode::fetch(&self.http, mode, &event).await {
            Ok(fields) => {
                let run_state = fields.get("run_state").cloned().unwrap_or(Value::Null);
                tracing::info!(event_id = %event.id, run_state = %run_state, "Mode run fetched.");
                event.fields.extend(fields);
                self.enriched(job, event).await;
            }
            Err(error) => {
                tracing::warn!(event_id = %event.id, attempt = job.attempt, max_attempts = job.max_attempts,
                    error = %error, "Fetching the Mode run failed.");
                let outcome = error.into_outcome(config, &job);
                self.failed(job, outcome, "Mode").await;
            }
        }
    }

    async fn enrich_dbt(&self, job: Job, mut event: Event, config: &Config) {
        let dbt = config.dbt.as_ref().filter(|dbt| dbt.fetches_failures());
        let Some(dbt) = dbt else {
            tracing::warn!(event_id = %event.id, "No dbt Cloud API token (dbt.api_token) or dbt.fetch_failures is off: the failed run cannot be fetched; rules see the event unverified.");
            event.fields.insert("verified".into(), Value::Bool(false));
            return self.enriched(job, event).await;
        };
        if !super::lease_still_held(&self.journal, &job) {
            return;
        }
        // A replay (its payload numbers it) asks for the run as dbt has it now.
        let anew = job.payload.get("replay").is_some();
        match self.dbt_runs.fetch(&self.http, dbt, &event, anew).await {
            Ok(fields) => {
                let failures = fields
                    .get("failures")
                    .and_then(Value::as_array)
                    .map_or(0, Vec::len);
                tracing::info!(event_id = %event.id, failures, "Failed dbt run fetched.");
                event.fields.extend(fields);
                self.enriched(job, event).await;
            }
            Err(error) => {
                tracing::warn!(event_id = %event.id, attempt = job.attempt, max_attempts = job.max_attempts,
                    error = %error, "Fetching the failed dbt run failed.");
                let outcome = error.into_outcome(config, &job);
                self.failed(job, outcome, "dbt").await;
            }
        }
    }

    /// Journals the enriched event with its `evaluate` job.
    async fn enriched(&self, job: Job, event: Event) {
        let finished = blocking(&self.journal, move |j| j.finish_enrichment(&job, &event)).await;
        match finished {
            Ok(true) => self.wakes.evaluate.notify_waiters(),
            Ok(false) => tracing::warn!("Enrichment lease lost; another run recorded it."),
            Err(error) => tracing::error!(error = %error, "Cannot journal the enriched event."),
        }
    }

    /// Journals a failed attempt: retrying, or dead with a `freshet.action.failed` event.
    async fn failed(&self, job: Job, outcome: JobOutcome, service: &str) {
        let follow_up = FollowUp {
            event: failure_if_dead(&self.journal, &job, &outcome).await,
            job: None,
        };
        let id = job.id;
        match blocking(&self.journal, move |j| j.finish(&job, &outcome, &follow_up)).await {
            Ok(Some(JobStatus::Dead)) => {
                tracing::error!(
                    job_id = id,
                    "{service} enrichment is dead; `freshet retry` queues it again."
                );
                self.wakes.evaluate.notify_waiters();
            }
            Ok(_) => {}
            Err(error) => tracing::error!(error = %error, "Cannot journal the enrichment attempt."),
        }
    }
}
