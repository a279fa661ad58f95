//! The evaluate stage: claims `evaluate` jobs, runs every rule on the event off the async
//! workers, and journals in one transaction which rules fired, the alert transitions and
//! the action jobs (ARCHITECTURE.md, "The journal": evaluation is a job too).

use std::sync::Arc;

use arc_swap::ArcSwap;
use tokio_util::sync::CancellationToken;

use super::{next_jobs, Wakes};
use crate::actions::ActionRequest;
use crate::config::Config;
use crate::event::Event;
use crate::journal::{
    blocking, job_key, replay_suffix, Evaluation, Job, Journal, NewJob, Queue, RuleOutcome, RuleRun,
};
use crate::metrics::{Metrics, RuleLabels};
use crate::rules::watch::Rules;
use crate::rules::RuleResult;

/// Events at this chain depth (freshet reacting to its own events) queue no more actions.
pub const MAX_CHAIN_DEPTH: u32 = 3;
/// Most jobs claimed (and then journaled) together. Each claim and each finish is a
/// commit, so the batch sets how many commits an event costs the evaluate stage: at 16,
/// evaluation fell behind sustained intake and the backlog grew without end; 64 keeps
/// up, and more gained nothing (bench/README.md). Under light load a claim takes what
/// is there, so a batch is as small as the traffic.
const EVALUATE_BATCH: usize = 64;
/// How long a claimed batch is evaluated before what is done is journaled. Cheap rules
/// get through a whole batch in one slice; with many rules a whole batch would hold the
/// first event's actions back for the whole batch's time. The rules in force are read
/// again for each slice, so an edited rule applies within one.
const EVALUATE_SLICE: std::time::Duration = std::time::Duration::from_millis(10);
/// Events read together for evaluation ([`crate::journal::StageQueue::events_to_evaluate`]).
const LOAD_CHUNK: usize = 32;
/// How long an evaluation may hold its job before another worker may take it.
const LEASE_MS: u64 = 60_000;

/// The evaluate stage's dependencies.
pub struct EvaluateWorker {
    pub journal: Journal,
    pub rules: Rules,
    pub config: Arc<ArcSwap<Config>>,
    pub metrics: Arc<Metrics>,
    /// Woken by intake (and by finished actions that emit events); wakes the action
    /// stage when jobs were queued.
    pub wakes: Wakes,
}

impl EvaluateWorker {
    pub async fn run(self, stop: CancellationToken) {
        while let Some(mut jobs) = next_jobs(
            &self.journal,
            Queue::Evaluate,
            EVALUATE_BATCH,
            LEASE_MS,
            &self.wakes.evaluate,
            &stop,
        )
        .await
        {
            // An evaluation is short and local: finish the batch even when asked to stop.
            while !jobs.is_empty() {
                let (evaluated, rest) = self.evaluate(jobs).await;
                jobs = if !rest.is_empty() {
                    self.finish(evaluated).await;
                    rest
                } else if stop.is_cancelled() {
                    // The rest stays queued for the next start (as `next_jobs` does).
                    self.finish(evaluated).await;
                    Vec::new()
                } else {
                    // With a backlog, the next batch comes in the finish's commit.
                    self.finish_and_claim(evaluated).await
                };
            }
        }
    }

    /// Loads each job's event and runs the rules on it, all on one blocking thread (the
    /// journal reads and the scripts are both blocking), for up to [`EVALUATE_SLICE`];
    /// returns the evaluations and the jobs not reached yet (still leased). A job whose
    /// event cannot be loaded now is left out: it stays leased and is claimed again when
    /// the lease ends.
    async fn evaluate(&self, jobs: Vec<Job>) -> (Vec<(Job, Evaluation)>, Vec<Job>) {
        let journal = Arc::clone(&self.journal);
        let claimed = jobs.clone();
        let config = self.config.load_full();
        let set = self.rules.current.load_full();
        let engine = Arc::clone(&self.rules.engine);
        let metrics = Arc::clone(&self.metrics);
        let task = tokio::task::spawn_blocking(move || {
            let vars = serde_json::Value::Object(config.vars.clone());
            let started = std::time::Instant::now();
            let mut batch = Vec::with_capacity(jobs.len());
            let mut waiting = jobs.into_iter().peekable();
            while waiting.peek().is_some() {
                // Events are read a few at a time (one statement on PostgreSQL), so that
                // a slice that ends early has read few it did not use.
                let chunk: Vec<Job> = waiting.by_ref().take(LOAD_CHUNK).collect();
                let ids: Vec<&str> = chunk.iter().map(|job| job.event_id.as_str()).collect();
                let events = journal.events_to_evaluate(&ids);
                let mut chunk = chunk.into_iter().zip(events);
                for (job, event) in chunk.by_ref() {
                    if !batch.is_empty() && started.elapsed() >= EVALUATE_SLICE {
                        // Not reached: back to the front of what is left.
                        let rest: Vec<Job> = std::iter::once(job)
                            .chain(chunk.map(|(job, _)| job))
                            .chain(waiting)
                            .collect();
                        return (batch, rest);
                    }
                    let evaluation = match event {
                        Ok(Some(event)) => {
                            // A replay may name one rule (`freshet replay --rule`).
                            let only = job.payload.get("rule").and_then(|r| r.as_str());
                            let outcomes =
                                set.evaluate_only(&engine, || event.to_json(), &vars, only);
                            build_evaluation(&job, &event, &outcomes, &config, &metrics)
                        }
                        Ok(None) => {
                            tracing::warn!(event_id = %job.event_id, "Event to evaluate is gone (pruned).");
                            Evaluation::default()
                        }
                        Err(error) => {
                            tracing::error!(event_id = %job.event_id, error = %error, "Cannot load the event.");
                            journal.abandon(&job);
                            continue;
                        }
                    };
                    batch.push((job, evaluation));
                }
            }
            (batch, Vec::new())
        });
        task.await.unwrap_or_else(|error| {
            tracing::error!(error = %error, "Rule evaluation task failed; its jobs run again when their leases end.");
            for job in &claimed {
                self.journal.abandon(job);
            }
            (Vec::new(), Vec::new())
        })
    }

    /// Journals a batch of evaluations in one transaction.
    async fn finish(&self, batch: Vec<(Job, Evaluation)>) {
        if batch.is_empty() {
            return;
        }
        let queued = queued_by(&batch);
        let ids = event_ids(&batch);
        let recorded = blocking(&self.journal, move |j| j.finish_evaluations(&batch)).await;
        self.report(&ids, recorded, queued);
    }

    /// [`Self::finish`], and the next batch claimed in the same transaction: one commit
    /// less per batch while there is a backlog. Empty when nothing is due.
    async fn finish_and_claim(&self, batch: Vec<(Job, Evaluation)>) -> Vec<Job> {
        let queued = queued_by(&batch);
        let ids = event_ids(&batch);
        let outcome = blocking(&self.journal, move |j| {
            j.finish_evaluations_and_claim(&batch, EVALUATE_BATCH, LEASE_MS)
        })
        .await;
        match outcome {
            Ok((recorded, claimed)) => {
                self.report(&ids, Ok(recorded), queued);
                claimed
            }
            Err(error) => {
                self.report(&ids, Err(error), queued);
                Vec::new()
            }
        }
    }

    fn report(
        &self,
        event_ids: &[String],
        recorded: Result<Vec<bool>, crate::journal::JournalError>,
        queued: usize,
    ) {
        match recorded {
            Ok(recorded) => {
                for (event_id, done) in event_ids.iter().zip(recorded) {
                    if done {
                        tracing::debug!(event_id = %event_id, "Evaluation journaled.");
                    } else {
                        tracing::warn!(event_id = %event_id, "Evaluation lease lost; another run recorded it.");
                    }
                }
            }
            Err(error) => {
                tracing::error!(error = %error, "Cannot journal the evaluations; they run again when their leases end.");
                return;
            }
        }
        if queued > 0 {
            self.wakes.act.notify_waiters();
        }
    }
}

/// How many action jobs and alert calls a batch of evaluations queues.
fn queued_by(batch: &[(Job, Evaluation)]) -> usize {
    batch
        .iter()
        .map(|(_, e)| e.jobs.len() + e.alerts.len())
        .sum()
}

fn event_ids(batch: &[(Job, Evaluation)]) -> Vec<String> {
    batch.iter().map(|(job, _)| job.event_id.clone()).collect()
}

/// Turns the rules' outcomes into what the journal records: rule runs, action jobs with
/// deterministic keys, and alert calls. Logs each rule's lines and errors.
pub fn build_evaluation(
    job: &Job,
    event: &Event,
    outcomes: &[RuleResult],
    config: &Config,
    metrics: &Metrics,
) -> Evaluation {
    // A replay is a new evaluation, so its job keys must differ from the first one's.
    let replay = replay_suffix(&job.payload);
    let too_deep = event.chain_depth >= MAX_CHAIN_DEPTH;
    let mut evaluation = Evaluation {
        alert_max_attempts: config.actions.max_attempts,
        decide_alert: crate::alerts::transition,
        ..Default::default()
    };
    for outcome in outcomes {
        let labels = RuleLabels {
            rule: outcome.rule.clone(),
        };
        metrics.rule_evaluations.get_or_create(&labels).inc();
        for (line, text) in &outcome.logs {
            tracing::info!(event_id = %event.id, rule = %outcome.rule, line, text = %text, "Rule log.");
        }
        if let Some((error, _)) = &outcome.error {
            metrics.rule_errors.get_or_create(&labels).inc();
            tracing::warn!(event_id = %event.id, rule = %outcome.rule, line = error.line, column = error.column,
                error = %error, "Rule failed; its calls were dropped.");
            evaluation.rule_runs.push(RuleRun {
                rule: outcome.rule.clone(),
                outcome: RuleOutcome::Error,
                actions: 0,
                error: Some(error.to_string()),
            });
            continue;
        }
        if outcome.calls.is_empty() {
            continue;
        }
        evaluation.rule_runs.push(RuleRun {
            rule: outcome.rule.clone(),
            outcome: if too_deep {
                RuleOutcome::Suppressed
            } else {
                RuleOutcome::Fired
            },
            actions: outcome.calls.len(),
            error: too_deep.then(|| {
                format!(
                    "chain depth {} reached: no actions queued",
                    event.chain_depth
                )
            }),
        });
        // A check-in queues nothing, so the chain depth does not hold it back.
        for call in &outcome.calls {
            let ActionRequest::CheckIn(check_in) = &call.request else {
                continue;
            };
            if config.deadlines.contains_key(&check_in.name) {
                tracing::info!(event_id = %event.id, rule = %outcome.rule, deadline = %check_in.name, "Deadline checked in.");
                evaluation.check_ins.push(check_in.clock_key());
            } else {
                tracing::warn!(event_id = %event.id, rule = %outcome.rule, deadline = %check_in.name,
                    "check_in names no [deadlines] entry; nothing is recorded (`freshet check` finds these).");
            }
        }
        if too_deep {
            tracing::warn!(event_id = %event.id, rule = %outcome.rule, depth = event.chain_depth,
                "Chain depth limit reached; the rule's actions were not queued.");
            continue;
        }
        for (seq, call) in outcome.calls.iter().enumerate() {
            tracing::info!(event_id = %event.id, rule = %outcome.rule, action = call.request.kind(),
                args = %call.request.args(), "Action queued.");
            if let Some(alert) = crate::alerts::call_of(&call.request, &outcome.rule, &event.id) {
                evaluation.alerts.push(alert);
                continue;
            }
            if matches!(call.request, ActionRequest::CheckIn(_)) {
                continue;
            }
            evaluation.jobs.push(NewJob {
                queue: Queue::Action,
                kind: call.request.kind().to_string(),
                event_id: event.id.clone(),
                rule: Some(outcome.rule.clone()),
                job_key: job_key(&[
                    &event.id,
                    replay.as_deref().unwrap_or(""),
                    &outcome.rule,
                    &call.line.to_string(),
                    &call.column.to_string(),
                    &seq.to_string(),
                ]),
                coalesce_key: call.request.coalesce_key(),
                payload: call.request.args(),
                max_attempts: config.actions.max_attempts,
            });
        }
    }
    evaluation
}
