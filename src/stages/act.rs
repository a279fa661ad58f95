//! The action stage: claims action jobs from the journal, runs each with bounded
//! concurrency (overall and per service), and journals the outcome: succeeded, retrying
//! after a backoff, or dead, in which case a `freshet.action.failed` event joins the stream
//! in the same transaction.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

use arc_swap::ArcSwap;
use serde_json::{json, Map, Value};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::{follow, wait_for_work, Wakes};
use crate::actions::client::{backoff, ActionError};
use crate::actions::slack::SlackPost;
use crate::actions::tableau::Tableau;
use crate::actions::{ActionRequest, CallOrigin, Services};
use crate::config::Config;
use crate::event::{now_rfc3339, Event, Source};
use crate::journal::{blocking, FollowUp, Job, JobOutcome, JobStatus, Journal, Queue};
use crate::metrics::{ActionLabels, KindLabels, Metrics};

/// Actions running at once, all services together.
const MAX_IN_FLIGHT: usize = 8;
/// Per service: Slack asks for about one message a second, so posts go one at a time;
/// one Tableau session serves all refreshes.
const PER_SERVICE: [(&str, usize); 7] = [
    ("mode", 4),
    ("dbt", 2),
    ("tableau", 2),
    ("hex", 2),
    ("powerbi", 2),
    ("slack", 1),
    // One at a time, so an alert's trigger reaches PagerDuty before its resolve.
    ("pagerduty", 1),
];

/// The action stage's dependencies.
pub struct ActionWorker {
    pub journal: Journal,
    pub config: Arc<ArcSwap<Config>>,
    pub metrics: Arc<Metrics>,
    /// Woken when evaluations queue actions; wakes the evaluate stage when a dead action
    /// (or a followed refresh) emits an event.
    pub wakes: Wakes,
    /// The daemon's one HTTP client (shared with the enrich stage: one connection pool).
    pub http: reqwest::Client,
}

/// What a running job needs, shared by all of them.
pub struct Shared {
    pub(super) journal: Journal,
    config: Arc<ArcSwap<Config>>,
    metrics: Arc<Metrics>,
    wakes: Wakes,
    pub(super) http: reqwest::Client,
    pub(super) tableau: Tableau,
    pub(super) powerbi: crate::actions::powerbi::Tokens,
    services: HashMap<&'static str, Arc<Semaphore>>,
}

impl ActionWorker {
    /// Runs until `stop`; then waits for the attempts in flight (the caller bounds that).
    pub async fn run(self, stop: CancellationToken) {
        let config = self.config.load_full();
        let shared = Arc::new(Shared {
            http: self.http,
            journal: self.journal,
            config: self.config,
            metrics: self.metrics,
            wakes: self.wakes.clone(),
            tableau: Tableau::default(),
            powerbi: Default::default(),
            services: PER_SERVICE
                .iter()
                .map(|(name, n)| (*name, Arc::new(Semaphore::new(*n))))
                .collect(),
        });
        let slots = Arc::new(Semaphore::new(MAX_IN_FLIGHT));
        let running = TaskTracker::new();
        // A lease long enough for a Tableau refresh (sign-in, lookup pages, refresh) plus
        // the wait for a service slot. Only a crashed process lets one run out.
        let lease_ms = config
            .actions
            .timeout_ms
            .saturating_mul(10)
            .saturating_add(60_000);
        loop {
            let first = tokio::select! {
                _ = stop.cancelled() => break,
                permit = Arc::clone(&slots).acquire_owned() => permit.expect("the semaphore is never closed"),
            };
            let free = 1 + slots.available_permits();
            let journal = Arc::clone(&shared.journal);
            let jobs =
                match blocking(&journal, move |j| j.claim(Queue::Action, free, lease_ms)).await {
                    Ok(jobs) => jobs,
                    Err(error) => {
                        tracing::error!(error = %error, "Cannot claim actions.");
                        Vec::new()
                    }
                };
            if jobs.is_empty() {
                drop(first);
                if !wait_for_work(&shared.journal, Queue::Action, &self.wakes.act, &stop).await {
                    break;
                }
                continue;
            }
            let mut first = Some(first);
            for job in jobs {
                let permit = match first.take() {
                    Some(permit) => permit,
                    // Claimed no more jobs than there were free slots, so this is immediate.
                    None => Arc::clone(&slots)
                        .acquire_owned()
                        .await
                        .expect("the semaphore is never closed"),
                };
                let shared = Arc::clone(&shared);
                running.spawn(async move {
                    run_job(&shared, job).await;
                    drop(permit);
                });
            }
        }
        running.close();
        running.wait().await;
    }
}

async fn run_job(shared: &Shared, job: Job) {
    // Its last attempt never finished (its process died, or its instance lost the
    // lease): no attempt is left, and its death is told like any other.
    if let Some(error) = job.interrupted.clone() {
        tracing::warn!(action = %job.kind, job_id = job.id, event_id = %job.event_id, error = %error,
            "An action's last attempt never finished.");
        return finish(
            shared,
            &job,
            JobOutcome::Dead { error },
            FollowUp::default(),
        )
        .await;
    }
    let config = shared.config.load_full();
    let ran = if follow::follows(&job.kind) {
        follow::poll(shared, &config, &job).await
    } else {
        run_action(shared, &config, &job).await
    };
    if let Some((outcome, follow_up)) = ran {
        finish(shared, &job, outcome, follow_up).await;
    }
}

/// One attempt at a call a rule made; None when it was not made because the lease may
/// have lapsed (`lease_still_held`).
async fn run_action(shared: &Shared, config: &Config, job: &Job) -> Option<(JobOutcome, FollowUp)> {
    let request = match ActionRequest::from_job(&job.kind, &job.payload) {
        Ok(request) => request,
        Err(error) => {
            let outcome = ActionError::final_error(error).into_outcome(config, job);
            return Some((outcome, FollowUp::default()));
        }
    };
    let request = match thread_of_alert(shared, request).await {
        Ok(request) => request,
        Err(wait) => return Some((wait, FollowUp::default())),
    };
    let service = request.service();
    let _slot = match shared.services.get(service) {
        Some(semaphore) => Some(
            semaphore
                .acquire()
                .await
                .expect("the semaphore is never closed"),
        ),
        None => None,
    };
    // Checked last, after any wait for a slot: the call goes out now or not at all.
    if !super::lease_still_held(&shared.journal, job) {
        return None;
    }
    let started = Instant::now();
    let services = Services {
        http: &shared.http,
        config,
        tableau: &shared.tableau,
        powerbi: &shared.powerbi,
        origin: &CallOrigin {
            action_id: job.id,
            attempt: job.attempt,
            rule: job.rule.as_deref(),
            event_id: &job.event_id,
        },
    };
    let result = request.call(&services).await;
    shared
        .metrics
        .action_latency
        .get_or_create(&KindLabels {
            kind: job.kind.clone(),
        })
        .observe(started.elapsed().as_secs_f64());
    match result {
        Ok(value) => {
            tracing::info!(action = %job.kind, job_id = job.id, event_id = %job.event_id,
                rule = job.rule.as_deref().unwrap_or("-"), "Action succeeded.");
            let follow_up = FollowUp {
                event: None,
                job: follow::start(config, job, &request, &value),
            };
            Some((
                JobOutcome::Succeeded(Some(value).filter(|v| !v.is_null())),
                follow_up,
            ))
        }
        Err(error) => {
            tracing::warn!(action = %job.kind, job_id = job.id, event_id = %job.event_id, attempt = job.attempt,
                max_attempts = job.max_attempts, error = %error, "Action attempt failed.");
            Some((error.into_outcome(config, job), FollowUp::default()))
        }
    }
}

/// An alert's renotification or resolution goes in the thread of the post that announced
/// the alert (docs/behaviour.md section 7), whose `ts` is known once that post has been
/// delivered; and to the channel id Slack answered that post with, not the name the rule
/// gave, so a channel renamed since keeps its threads (section 12). Until then this one
/// waits; if that post never went out (dead, or not through the bot token), this one is
/// posted on its own.
async fn thread_of_alert(
    shared: &Shared,
    request: ActionRequest,
) -> Result<ActionRequest, JobOutcome> {
    let ActionRequest::SlackPost(post) = request else {
        return Ok(request);
    };
    let lookup = match (&post.thread_of, &post.update_of) {
        (Some(key), _) if post.thread_ts.is_none() => key.clone(),
        (_, Some(key)) if post.update_ts.is_none() => key.clone(),
        _ => return Ok(ActionRequest::SlackPost(post)),
    };
    let announcing = blocking(&shared.journal, move |j| j.job_by_key(&lookup))
        .await
        .ok()
        .flatten();
    let result = match announcing {
        Some(job) if job.status.is_open() => {
            return Err(JobOutcome::Wait {
                delay_ms: THREAD_WAIT_MS,
            })
        }
        Some(job) => job.result.unwrap_or_default(),
        None => Value::Null,
    };
    let answered = |key: &str| result.get(key).and_then(Value::as_str).map(String::from);
    let (ts, channel_id) = (answered("ts"), answered("channel"));
    if post.update_of.is_some() {
        // The first post was never delivered through the bot token: there is nothing to
        // update (the resolved reply says it all).
        let (Some(ts), Some(channel)) = (ts, channel_id) else {
            return Err(JobOutcome::Succeeded(Some(
                serde_json::json!({"skipped": "the alert's first post has no ts to update"}),
            )));
        };
        return Ok(ActionRequest::SlackPost(SlackPost {
            update_ts: Some(ts),
            channel: Some(channel),
            ..post
        }));
    }
    let channel = match (&ts, channel_id) {
        (Some(_), Some(id)) => Some(id),
        _ => post.channel.clone(),
    };
    Ok(ActionRequest::SlackPost(SlackPost {
        thread_ts: ts,
        channel,
        ..post
    }))
}

/// How long an alert's follow-up post waits for the announcing post to be delivered.
const THREAD_WAIT_MS: u64 = 1_000;

impl ActionError {
    /// The attempt's outcome: a retry after the backoff (at least the server's
    /// Retry-After), or dead.
    pub fn into_outcome(self, config: &Config, job: &Job) -> JobOutcome {
        match self {
            ActionError::Retryable {
                message,
                retry_after,
            } => JobOutcome::Retry {
                delay_ms: backoff(&config.actions, job.attempt, retry_after).as_millis() as u64,
                error: message,
            },
            ActionError::Final(error) => JobOutcome::Dead { error },
        }
    }
}

async fn finish(shared: &Shared, job: &Job, outcome: JobOutcome, mut follow_up: FollowUp) {
    if let Some(failure) = failure_if_dead(&shared.journal, job, &outcome).await {
        follow_up.event = Some(failure);
    }
    let status = {
        let job = job.clone();
        let outcome = outcome.clone();
        blocking(&shared.journal, move |j| {
            j.finish(&job, &outcome, &follow_up)
        })
        .await
    };
    match status {
        Ok(Some(JobStatus::Pending)) => {}
        Ok(Some(status)) => {
            shared
                .metrics
                .actions
                .get_or_create(&ActionLabels {
                    kind: job.kind.clone(),
                    outcome: status.to_string(),
                })
                .inc();
            if status == JobStatus::Dead {
                tracing::error!(action = %job.kind, job_id = job.id, event_id = %job.event_id,
                    rule = job.rule.as_deref().unwrap_or("-"), "Action is dead; `freshet retry` queues it again.");
            }
            // A dead job and a followed refresh both emit an event for the rules.
            shared.wakes.evaluate.notify_waiters();
        }
        Ok(None) => {
            tracing::warn!(action = %job.kind, job_id = job.id, "Action lease lost; its outcome was not recorded.")
        }
        Err(error) => {
            tracing::error!(action = %job.kind, job_id = job.id, error = %error, "Cannot journal the action outcome.")
        }
    }
}

/// An event freshet emits about job `job` of event `cause_event_id`: one step further
/// down its chain (docs/behaviour.md section 6), so rules reacting to their own outcomes stop.
pub async fn emitted_event(
    journal: &Journal,
    cause_event_id: &str,
    id: String,
    source: Source,
    kind: &str,
    fields: Map<String, Value>,
) -> Event {
    let cause_id = cause_event_id.to_string();
    let cause_depth = blocking(journal, move |j| j.event(&cause_id))
        .await
        .ok()
        .flatten()
        .map(|event| event.chain_depth)
        .unwrap_or(0);
    Event {
        id,
        source,
        kind: kind.to_string(),
        received_at: now_rfc3339(),
        chain_depth: cause_depth + 1,
        fields,
        raw: Value::Null,
    }
}

/// The `freshet.action.failed` event for `job`, if `outcome` ends it dead.
pub async fn failure_if_dead(journal: &Journal, job: &Job, outcome: &JobOutcome) -> Option<Event> {
    if outcome.ends_dead(job) {
        Some(failure_event(journal, job, outcome).await)
    } else {
        None
    }
}

/// The `freshet.action.failed` event for a job that is dead.
pub async fn failure_event(journal: &Journal, job: &Job, outcome: &JobOutcome) -> Event {
    let error = match outcome {
        JobOutcome::Retry { error, .. } | JobOutcome::Dead { error } => error.clone(),
        JobOutcome::Succeeded(_) | JobOutcome::Wait { .. } => String::new(),
    };
    let mut fields = Map::new();
    fields.insert("action".into(), json!(job.kind));
    fields.insert("args".into(), job.payload.clone());
    fields.insert("error".into(), json!(error));
    fields.insert("rule".into(), json!(job.rule));
    fields.insert("cause_event_id".into(), json!(job.event_id));
    fields.insert("action_id".into(), json!(job.id));
    emitted_event(
        journal,
        &job.event_id,
        format!("freshet:action.failed:{}:{}", job.id, job.attempt),
        Source::Freshet,
        "freshet.action.failed",
        fields,
    )
    .await
}
