//! The [`JournalStore`] calls of [`PostgresJournal`], each one transaction (or one
//! statement) run on the journal's runtime.

use super::session::{Param, Typed};
use std::sync::{Arc, LazyLock};
use std::time::Instant;

use super::schema::NOW_MS;
use super::sql::*;
use super::{backend, PostgresJournal, Shared, APPEND_TIMEOUT, CALL_TIMEOUT, HEALTH_TIMEOUT};
use crate::event::Event;
use crate::journal::common::{self, attempts, WriteTx};
use crate::journal::{
    replay_suffix, stage_job, ActionOrigin, Admin, AlertState, AppendTicket, ClockJudgement,
    ClockState, Evaluation, EventActivity, EventCursor, EventFilter, EventLine, EventSummary,
    FirstJob, FollowUp, Job, JobOutcome, JobStatus, JobSummary, JournalError, KeyedJob, Operations,
    OutcomeColumns, Overview, Queue, Released, Replay, Retried, RuleRun, StageQueue, WorkWaker,
};

type Result<T> = std::result::Result<T, JournalError>;

impl PostgresJournal {
    /// Records a batch of evaluations in one transaction and, with `claim`, claims the
    /// next batch of up to that many evaluate jobs in it too.
    fn record_and_claim(
        &self,
        batch: &[(Job, Evaluation)],
        claim: Option<usize>,
    ) -> Result<(Vec<bool>, Vec<Job>)> {
        let shared = self.shared();
        {
            let mut held = shared.held();
            for (job, _) in batch {
                held.remove(&job.id);
            }
        }
        let batch = batch.to_vec();
        self.run(CALL_TIMEOUT, async move {
            let mut client = shared.client().await?;
            let tx = client.transaction().await.map_err(backend)?;
            // Sent together, answered in order on the one connection (tokio-postgres
            // pipelines the requests of futures polled together): a round trip less.
            let (deferred, recorded) =
                tokio::join!(defer_commit(&tx), record_evaluations(&tx, &shared, &batch));
            deferred?;
            let recorded = recorded?;
            let Some(limit) = claim else {
                tx.commit().await.map_err(backend)?;
                return Ok((recorded, Vec::new()));
            };
            // The next batch: what intake handed over, and a claim in the same
            // transaction when one is due; a claim that fails alone is rolled back to
            // here, and the finish stands (the caller claims again).
            let more = shared.handoff().claim_now(limit);
            if more == 0 {
                tx.commit().await.map_err(backend)?;
                return Ok((recorded, with_handed(&shared, Vec::new(), limit)));
            }
            let started = Instant::now();
            let (savepoint, claimed) = tokio::join!(
                tx.batch_execute("SAVEPOINT next_claim"),
                claim_in(&tx, &shared, Queue::Evaluate, more)
            );
            savepoint.map_err(backend)?;
            let claimed = match claimed {
                Ok(jobs) => jobs,
                Err(error) => {
                    tracing::error!(error = %error, "Cannot claim evaluate jobs.");
                    tx.batch_execute("ROLLBACK TO SAVEPOINT next_claim")
                        .await
                        .map_err(backend)?;
                    Vec::new()
                }
            };
            tx.commit().await.map_err(backend)?;
            shared.hold(claimed.iter().map(|job| job.id), started);
            Ok((recorded, with_handed(&shared, claimed, limit)))
        })
    }

    fn shared(&self) -> Arc<Shared> {
        Arc::clone(&self.shared)
    }
}

impl StageQueue for PostgresJournal {
    fn append(&self, event: &Event, first_job: FirstJob) -> AppendTicket {
        let (reply, ticket) = AppendTicket::new();
        let shared = self.shared();
        let event = event.clone();
        // `serve`: with the others that arrive meanwhile, in one commit (intake.rs).
        if let Some(appends) = &shared.appends {
            let pending = super::intake::Pending {
                event,
                first_job,
                reply,
                since: Instant::now(),
            };
            if let Err(refused) = appends.send(pending) {
                refused
                    .0
                    .reply
                    .send(Err("the PostgreSQL journal is closing".to_string()));
            }
            return ticket;
        }
        self.spawn(async move {
            let appended = tokio::time::timeout(APPEND_TIMEOUT, async {
                let mut client = shared.client().await?;
                let tx = client.transaction().await.map_err(backend)?;
                let appended = insert_event(&tx, &event, first_job, &shared.instance).await?;
                tx.commit().await.map_err(backend)?;
                Ok::<_, JournalError>(appended)
            })
            .await
            .unwrap_or_else(|_| {
                Err(JournalError::unavailable(format!(
                    "PostgreSQL did not commit within {} s",
                    APPEND_TIMEOUT.as_secs()
                )))
            });
            shared.note(&appended);
            reply.send(appended.map_err(|error| error.to_string()));
        });
        ticket
    }

    fn events_to_evaluate(&self, ids: &[&str]) -> Vec<Result<Option<Arc<Event>>>> {
        let shared = self.shared();
        // Those intake handed over with their jobs are in hand; the rest are read.
        let in_hand: Vec<Option<Arc<Event>>> =
            ids.iter().map(|id| shared.handoff().event(id)).collect();
        if in_hand.iter().all(Option::is_some) {
            return in_hand.into_iter().map(Ok).collect();
        }
        let wanted: Vec<String> = ids
            .iter()
            .zip(&in_hand)
            .filter(|(_, event)| event.is_none())
            .map(|(id, _)| id.to_string())
            .collect();
        let bodies = self.run(CALL_TIMEOUT, async move {
            let client = shared.client().await?;
            let rows = client
                .rows("SELECT id, body FROM events WHERE id = ANY($1)", &[&wanted])
                .await
                .map_err(backend)?;
            Ok(rows
                .iter()
                .map(|row| (row.get::<_, String>(0), row.get::<_, String>(1)))
                .collect::<std::collections::HashMap<_, _>>())
        });
        match bodies {
            // A batch may name an event twice (a replay beside its first evaluation).
            Ok(bodies) => ids
                .iter()
                .zip(in_hand)
                .map(|(id, in_hand)| {
                    if let Some(event) = in_hand {
                        return Ok(Some(event));
                    }
                    bodies
                        .get(*id)
                        .map(|body| {
                            serde_json::from_str::<Event>(body)
                                .map(Arc::new)
                                .map_err(|e| JournalError::Corrupt(e.to_string()))
                        })
                        .transpose()
                })
                .collect(),
            Err(error) => {
                let message = error.to_string();
                in_hand
                    .into_iter()
                    .map(|event| {
                        event
                            .map(Some)
                            .ok_or_else(|| JournalError::unavailable(message.clone()))
                    })
                    .collect()
            }
        }
    }

    fn event(&self, id: &str) -> Result<Option<Event>> {
        let shared = self.shared();
        let id = id.to_string();
        self.run(CALL_TIMEOUT, async move {
            let client = shared.client().await?;
            let row = client
                .row_opt("SELECT body FROM events WHERE id = $1", &[&id])
                .await
                .map_err(backend)?;
            row.map(|row| {
                serde_json::from_str::<Event>(&row.get::<_, String>(0))
                    .map_err(|e| JournalError::Corrupt(e.to_string()))
            })
            .transpose()
        })
    }

    fn claim(&self, queue: Queue, limit: usize, _lease_ms: u64) -> Result<Vec<Job>> {
        // The lease is `journal.lease_seconds`, renewed while this instance lives, rather
        // than the caller's longest-attempt guess: a dead instance's jobs are taken over
        // within one lease.
        let shared = self.shared();
        self.run(CALL_TIMEOUT, async move {
            let started = Instant::now();
            if queue == Queue::Evaluate {
                let more = shared.handoff().claim_now(limit);
                if more == 0 {
                    return Ok(with_handed(&shared, Vec::new(), limit));
                }
                let mut client = shared.client().await?;
                let tx = client.transaction().await.map_err(backend)?;
                defer_commit(&tx).await?;
                let jobs = claim_in(&tx, &shared, queue, more).await?;
                tx.commit().await.map_err(backend)?;
                shared.hold(jobs.iter().map(|job| job.id), started);
                Ok(with_handed(&shared, jobs, limit))
            } else {
                let client = shared.client().await?;
                let jobs = claim_in(&client, &shared, queue, limit).await?;
                shared.hold(jobs.iter().map(|job| job.id), started);
                Ok(jobs)
            }
        })
    }

    fn next_due_in(&self, queue: Queue) -> Result<Option<u64>> {
        static SQL: LazyLock<String> = LazyLock::new(|| {
            format!(
                // The soonest waiting job and the soonest lease to end, each from its own
                // index (`jobs_open`, `jobs_running`) without a scan of the backlog.
                "SELECT LEAST(
                    (SELECT scheduled_at FROM jobs
                     WHERE queue = $1 AND status IN ('pending', 'retrying', 'running')
                       AND status <> 'running'
                     ORDER BY scheduled_at LIMIT 1),
                    (SELECT MIN(lease_until) FROM jobs WHERE queue = $1 AND status = 'running')
                 ) - {NOW_MS}"
            )
        });
        let shared = self.shared();
        self.run(CALL_TIMEOUT, async move {
            let client = shared.client().await?;
            let due: Option<i64> = client
                .row(SQL.as_str(), &[&queue.as_str()])
                .await
                .map_err(backend)?
                .get(0);
            Ok(due.map(|ms| ms.max(0) as u64))
        })
    }

    fn finish(
        &self,
        job: &Job,
        outcome: &JobOutcome,
        follow_up: &FollowUp,
    ) -> Result<Option<JobStatus>> {
        static SQL: LazyLock<String> = LazyLock::new(|| {
            format!(
                "UPDATE jobs SET status = $1,
                    last_error = $2,
                    errors = CASE WHEN $2::text IS NULL THEN errors
                                  ELSE errors || jsonb_build_array(jsonb_build_object('attempt', attempt, 'started', started_at, 'at', {NOW_MS}, 'error', $2::text)) END,
                    scheduled_at = CASE WHEN $1 IN ('retrying', 'pending') THEN {NOW_MS} + $3 ELSE scheduled_at END,
                    attempt = CASE WHEN $1 = 'pending' THEN attempt - 1 ELSE attempt END,
                    finished_at = CASE WHEN $1 IN ('succeeded', 'dead', 'merged') THEN {NOW_MS} ELSE NULL END,
                    lease_until = NULL,
                    result = COALESCE($6, result),
                    merged_into = $8
                 WHERE id = $4 AND status = 'running' AND attempt = $5 AND locked_by = $7"
            )
        });
        let OutcomeColumns {
            mut status,
            result,
            error,
            delay_ms,
        } = outcome.columns(job);
        let shared = self.shared();
        shared.held().remove(&job.id);
        let job = job.clone();
        let follow_up = follow_up.clone();
        self.run(CALL_TIMEOUT, async move {
            let mut client = shared.client().await?;
            let tx = client.transaction().await.map_err(backend)?;
            // Open again beside an identical pending call, it would break the unique
            // coalescing index: the two become one instead.
            let mut merged_into = None;
            if matches!(status, JobStatus::Retrying | JobStatus::Pending) {
                merged_into = PgTx(&tx).open_twin(job.id).await?;
                if merged_into.is_some() {
                    status = JobStatus::Merged;
                }
            }
            let updated = tx
                .exec(
                    SQL.as_str(),
                    &[
                        &status,
                        &error,
                        &(delay_ms as i64),
                        &job.id,
                        &(job.attempt as i32),
                        &result,
                        &shared.instance,
                        &merged_into,
                    ],
                )
                .await
                .map_err(backend)?;
            if updated != 1 {
                // The lease is lost (taken over): this outcome is discarded.
                return Ok(None);
            }
            if let Some(event) = &follow_up.event {
                insert_event(&tx, event, FirstJob::EVALUATE, &shared.instance).await?;
            }
            if let Some(next) = &follow_up.job {
                insert_job(&tx, next).await?;
            }
            if status.is_open() {
                notify(&tx, job.queue).await?;
            }
            tx.commit().await.map_err(backend)?;
            Ok(Some(status))
        })
    }

    fn job_by_key(&self, job_key: &str) -> Result<Option<KeyedJob>> {
        let shared = self.shared();
        let key = job_key.to_string();
        self.run(CALL_TIMEOUT, async move {
            let client = shared.client().await?;
            let row = client
                .row_opt(
                    "SELECT status, result FROM jobs WHERE job_key = $1",
                    &[&key],
                )
                .await
                .map_err(backend)?;
            Ok(row.map(|row| KeyedJob {
                status: row.get(0),
                result: row
                    .get::<_, Option<String>>(1)
                    .and_then(|text| serde_json::from_str(&text).ok()),
            }))
        })
    }

    fn action_origin(&self, job_id: i64) -> Result<Option<ActionOrigin>> {
        let shared = self.shared();
        self.run(CALL_TIMEOUT, async move {
            let client = shared.client().await?;
            let row = client
                .row_opt(ACTION_ORIGIN, &[&job_id])
                .await
                .map_err(backend)?;
            Ok(row.map(|row| ActionOrigin {
                rule: row.get(0),
                event_id: row.get(1),
                chain_depth: row.get::<_, i32>(2) as u32,
            }))
        })
    }

    fn clock(&self, name: &str) -> Result<Option<ClockState>> {
        let shared = self.shared();
        let name = name.to_string();
        self.run(CALL_TIMEOUT, async move {
            let client = shared.client().await?;
            let row = client.row_opt(CLOCK, &[&name]).await.map_err(backend)?;
            Ok(row.map(|row| clock_row(&row)))
        })
    }

    fn judge_clock(&self, judgement: &ClockJudgement) -> Result<bool> {
        let shared = self.shared();
        let name = judgement.name.to_string();
        let (last, due, missed) = (judgement.last_due_ms, judgement.due_ms, judgement.missed);
        let event = judgement.event.cloned();
        self.run(CALL_TIMEOUT, async move {
            let mut client = shared.client().await?;
            let tx = client.transaction().await.map_err(backend)?;
            // The compare-and-set on last_due_ms: of two instances judging one due time,
            // the second finds it moved and judges nothing.
            let changed = match last {
                None => tx.exec(CLOCK_START, &[&name, &due]).await,
                Some(last) => tx.exec(CLOCK_JUDGED, &[&name, &due, &last, &missed]).await,
            }
            .map_err(backend)?;
            if changed == 1 {
                if let Some(event) = &event {
                    insert_event(&tx, event, FirstJob::EVALUATE, &shared.instance).await?;
                }
            }
            tx.commit().await.map_err(backend)?;
            Ok(changed == 1)
        })
    }

    fn finish_enrichment(&self, job: &Job, event: &Event) -> Result<bool> {
        let shared = self.shared();
        shared.held().remove(&job.id);
        let job = job.clone();
        let event = event.clone();
        self.run(CALL_TIMEOUT, async move {
            let mut client = shared.client().await?;
            let tx = client.transaction().await.map_err(backend)?;
            if !end_job(&tx, &job, "succeeded", &shared.instance).await? {
                return Ok(false);
            }
            let body =
                serde_json::to_string(&event).map_err(|e| JournalError::Refused(e.to_string()))?;
            tx.exec(
                "UPDATE events SET body = $1 WHERE id = $2",
                &[&body, &event.id],
            )
            .await
            .map_err(backend)?;
            let suffix = replay_suffix(&job.payload);
            insert_job(
                &tx,
                &stage_job(
                    FirstJob::EVALUATE,
                    &event.id,
                    suffix.as_deref(),
                    job.payload.clone(),
                ),
            )
            .await?;
            tx.commit().await.map_err(backend)?;
            Ok(true)
        })
    }

    fn finish_evaluations(&self, batch: &[(Job, Evaluation)]) -> Result<Vec<bool>> {
        self.record_and_claim(batch, None)
            .map(|(recorded, _)| recorded)
    }

    fn finish_evaluations_and_claim(
        &self,
        batch: &[(Job, Evaluation)],
        limit: usize,
        _lease_ms: u64,
    ) -> Result<(Vec<bool>, Vec<Job>)> {
        self.record_and_claim(batch, Some(limit))
    }

    fn abandon(&self, job: &Job) {
        self.shared.held().remove(&job.id);
    }

    fn lease_held(&self, job: &Job) -> bool {
        self.shared.lease_held(job.id)
    }

    fn on_work(&self, waker: WorkWaker) {
        *self
            .shared
            .waker
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner()) = Some(waker);
    }
}

impl Admin for PostgresJournal {
    fn events(&self, limit: usize, status: Option<&str>) -> Result<Vec<EventSummary>> {
        let shared = self.shared();
        let status = status.map(String::from);
        self.run(CALL_TIMEOUT, async move {
            let client = shared.client().await?;
            let rows = client
                .rows(
                    "SELECT id, type, received_at, status, instance FROM events
                     WHERE ($1::text IS NULL OR status = $1)
                     ORDER BY received_ms DESC, id DESC LIMIT $2",
                    &[&status, &(limit as i64)],
                )
                .await
                .map_err(backend)?;
            let mut events = Vec::with_capacity(rows.len());
            for row in rows {
                let id: String = row.get("id");
                let rules = client
                    .rows(
                        "SELECT rule, outcome, actions, error FROM rule_runs WHERE event_id = $1 ORDER BY rule",
                        &[&id],
                    )
                    .await
                    .map_err(backend)?
                    .iter()
                    .map(rule_run)
                    .collect();
                let jobs = client
                    .rows(
                        "SELECT * FROM jobs WHERE event_id = $1 AND queue = 'action' ORDER BY id",
                        &[&id],
                    )
                    .await
                    .map_err(backend)?;
                let actions = jobs.iter().map(job_summary).collect::<Result<_>>()?;
                events.push(EventSummary {
                    instance: row.get("instance"),
                    kind: row.get("type"),
                    received_at: row.get("received_at"),
                    status: row.get("status"),
                    id,
                    rules,
                    actions,
                });
            }
            Ok(events)
        })
    }

    fn events_page(
        &self,
        filter: &EventFilter,
        before: Option<&EventCursor>,
        limit: usize,
    ) -> Result<Vec<EventLine>> {
        let shared = self.shared();
        let (sql, params) = common::events_page_sql(filter, before, limit, |n| format!("${n}"));
        self.run(CALL_TIMEOUT, async move {
            let client = shared.client().await?;
            let refs: Vec<&dyn Param> = params
                .iter()
                .map(|p| -> &dyn Param {
                    match p {
                        common::ParamValue::Text(text) => text,
                        common::ParamValue::Int(n) => n,
                    }
                })
                .collect();
            let rows = client.rows(&sql, &refs).await.map_err(backend)?;
            Ok(rows
                .iter()
                .map(|row| EventLine {
                    id: row.get(0),
                    source: row.get(1),
                    kind: row.get(2),
                    received_at: row.get(3),
                    received_ms: row.get(4),
                    status: row.get(5),
                })
                .collect())
        })
    }

    fn event_activity(&self, event_id: &str) -> Result<EventActivity> {
        let shared = self.shared();
        let event_id = event_id.to_string();
        self.run(CALL_TIMEOUT, async move {
            let client = shared.client().await?;
            let rules = client
                .rows(
                    "SELECT rule, outcome, actions, error FROM rule_runs WHERE event_id = $1 ORDER BY rule",
                    &[&event_id],
                )
                .await
                .map_err(backend)?
                .iter()
                .map(rule_run)
                .collect();
            let rows = client
                .rows(
                    "SELECT *, errors::text AS attempt_errors FROM jobs
                     WHERE event_id = $1 AND queue = 'action' ORDER BY id",
                    &[&event_id],
                )
                .await
                .map_err(backend)?;
            let mut jobs = Vec::with_capacity(rows.len());
            for row in &rows {
                let summary = job_summary(row)?;
                let attempts = attempts(
                    row.get("attempt_errors"),
                    summary.status,
                    summary.attempt,
                    row.get("started_at"),
                    row.get("finished_at"),
                );
                jobs.push((summary, attempts));
            }
            Ok(EventActivity { rules, jobs })
        })
    }

    fn overview(&self, since_ms: i64) -> Result<Overview> {
        let shared = self.shared();
        self.run(CALL_TIMEOUT, async move {
            let client = shared.client().await?;
            let totals = client
                .rows(common::OVERVIEW_TOTALS, &[&since_ms])
                .await
                .map_err(backend)?
                .iter()
                .map(|row| (row.get(0), row.get::<_, i64>(1) as u64, row.get(2)))
                .collect();
            let waiting = client
                .rows(common::OVERVIEW_WAITING.as_str(), &[&since_ms])
                .await
                .map_err(backend)?
                .iter()
                .map(|row| (row.get(0), row.get(1), row.get::<_, i64>(2) as u64))
                .collect();
            let counts = client
                .row(common::OVERVIEW_JOBS.as_str(), &[&since_ms])
                .await
                .map_err(backend)?;
            let jobs = common::action_counts(
                (0..common::OVERVIEW_JOB_STATUSES.len()).map(|i| counts.get::<_, i64>(i)),
            );
            Ok(common::overview(totals, waiting, jobs))
        })
    }

    fn queue_replay(&self, event_id: &str, replay: &Replay) -> Result<i64> {
        let shared = self.shared();
        let event_id = event_id.to_string();
        let replay = replay.clone();
        self.run(CALL_TIMEOUT, async move {
            let mut client = shared.client().await?;
            let tx = client.transaction().await.map_err(backend)?;
            let id = common::queue_replay(&mut PgTx(&tx), &event_id, &replay).await?;
            tx.commit().await.map_err(backend)?;
            Ok(id)
        })
    }

    fn jobs(&self, status: Option<JobStatus>, limit: usize) -> Result<Vec<JobSummary>> {
        let shared = self.shared();
        self.run(CALL_TIMEOUT, async move {
            let client = shared.client().await?;
            let limit = limit as i64;
            let rows = match status {
                Some(status) => {
                    client
                        .rows(&common::listed_jobs_of(status), &[&limit])
                        .await
                }
                None => client.rows(common::LISTED_JOBS, &[&limit]).await,
            }
            .map_err(backend)?;
            rows.iter().map(job_summary).collect()
        })
    }

    fn retry(&self, job_id: i64) -> Result<Retried> {
        let shared = self.shared();
        self.run(CALL_TIMEOUT, async move {
            let mut client = shared.client().await?;
            let tx = client.transaction().await.map_err(backend)?;
            let retried = common::retry(&mut PgTx(&tx), job_id).await?;
            tx.commit().await.map_err(backend)?;
            Ok(retried)
        })
    }

    fn alerts(&self) -> Result<Vec<AlertState>> {
        let shared = self.shared();
        self.run(CALL_TIMEOUT, async move {
            let client = shared.client().await?;
            let rows = client
                .rows(
                    "SELECT name, state, version, since_ms, last_notified_ms, muted_until_ms, mute_reason, unposted FROM alerts
                     WHERE version > 0 ORDER BY name",
                    &[],
                )
                .await
                .map_err(backend)?;
            Ok(rows.iter().map(alert_state).collect())
        })
    }

    fn mute_alert(&self, name: &str, until_ms: Option<i64>, reason: Option<&str>) -> Result<bool> {
        let shared = self.shared();
        let (name, reason) = (name.to_string(), reason.map(String::from));
        self.run(CALL_TIMEOUT, async move {
            let client = shared.client().await?;
            let changed = client
                .exec(MUTE_ALERT, &[&name, &until_ms, &reason])
                .await
                .map_err(backend)?;
            Ok(changed == 1)
        })
    }

    fn clocks(&self) -> Result<Vec<ClockState>> {
        let shared = self.shared();
        self.run(CALL_TIMEOUT, async move {
            let client = shared.client().await?;
            let rows = client.rows(CLOCKS, &[]).await.map_err(backend)?;
            Ok(rows.iter().map(clock_row).collect())
        })
    }

    fn reset_alert(&self, name: &str) -> Result<Option<bool>> {
        let shared = self.shared();
        let name = name.to_string();
        self.run(CALL_TIMEOUT, async move {
            let mut client = shared.client().await?;
            let tx = client.transaction().await.map_err(backend)?;
            let reset = common::reset_alert(&mut PgTx(&tx), &name).await?;
            if reset == Some(true) {
                tx.commit().await.map_err(backend)?;
            }
            Ok(reset)
        })
    }
}

impl Operations for PostgresJournal {
    fn check_writable(&self) -> Result<()> {
        let shared = self.shared();
        let last = shared.last_error();
        // A write probe that writes nothing: the lock an insert takes on the tables
        // intake writes, waited for briefly. A table locked by someone else, a pool
        // with no connection to spare or a server that does not answer all fail it
        // within the health check's second (a `SELECT 1` passed through all of them).
        // Once it passes, the journal takes writes again, whatever failed before: an
        // instance a load balancer keeps out while unhealthy must be let back in.
        self.run(HEALTH_TIMEOUT, async move {
            let mut client = shared.client().await?;
            let tx = client.transaction().await.map_err(backend)?;
            tx.batch_execute(
                "SET LOCAL lock_timeout = '500ms';
                 LOCK TABLE events, jobs IN ROW EXCLUSIVE MODE",
            )
            .await
            .map_err(backend)?;
            tx.rollback().await.map_err(backend)
        })
        .map_err(|error| match last {
            Some(last) if last != error.to_string() => {
                JournalError::unavailable(format!("{error} (before that: {last})"))
            }
            _ => error,
        })
    }

    fn release_running(&self) -> Result<Released> {
        // With several instances, a running job belongs to its instance until its lease
        // runs out; then a claim takes it over (or ends it, with no attempts left).
        Ok(Released::default())
    }

    fn release_unstarted(&self) -> Result<usize> {
        let shared = self.shared();
        let ids: Vec<i64> = shared
            .handoff()
            .take(usize::MAX)
            .iter()
            .map(|job| job.id)
            .collect();
        if ids.is_empty() {
            return Ok(0);
        }
        {
            let mut held = shared.held();
            for id in &ids {
                held.remove(id);
            }
        }
        // Fenced like an end: only what is still this instance's first, untaken lease.
        self.run(CALL_TIMEOUT, async move {
            let client = shared.client().await?;
            let released = client
                .exec(
                    "UPDATE jobs SET status = 'pending', attempt = 0, started_at = NULL,
                        lease_until = NULL, locked_by = NULL
                     WHERE id = ANY($1) AND locked_by = $2 AND status = 'running' AND attempt = 1",
                    &[&ids, &shared.instance],
                )
                .await
                .map_err(backend)?;
            if released > 0 {
                client.wake_others(Queue::Evaluate).await.map_err(backend)?;
            }
            Ok(released as usize)
        })
    }

    fn backlog(&self) -> Result<u64> {
        let shared = self.shared();
        self.run(CALL_TIMEOUT, async move {
            let client = shared.client().await?;
            let count: i64 = client
                .row(
                    "SELECT COUNT(*) FROM jobs WHERE queue = 'action' AND status IN ('pending', 'retrying', 'running')",
                    &[],
                )
                .await
                .map_err(backend)?
                .get(0);
            Ok(count as u64)
        })
    }

    fn prune(&self, days: u32, go_on: &(dyn Fn() -> bool + Sync)) -> Result<usize> {
        self.prune_in_batches(days, common::PRUNE_BATCH, go_on)
    }

    fn instance(&self) -> Option<String> {
        Some(self.shared.instance.clone())
    }
}

/// A claim: one statement, as River's `JobGetAvailable` (riverdriver's
/// `JobGetAvailable` query): one round trip, its row locks held only while it runs.
/// In it:
/// - "now" is read once, in a scalar subquery: a bare `clock_timestamp()` is
///   volatile and cannot bound an index scan (it made every claim walk all open
///   jobs of the queue, the not yet due included: 39 ms with 100,000 of them);
/// - `due` (waiting jobs up to now, `jobs_open`) and `lapsed` (running jobs whose
///   lease ran out, `jobs_running`) are each bounded by their own index;
/// - `reaped`: a lapsed stage job (enrich, evaluate) with no attempt left ends
///   dead here; a lapsed action with none left is taken instead, unchanged, so
///   that the act stage ends it dead the way it ends any action, with its
///   `freshet.action.failed` event, metric and log line (`Job::interrupted`);
/// - `chosen`: `common::isolate_retried`, in SQL: a job that already ran (it may
///   be the one that kills instances) is claimed alone;
/// - a takeover records who lost the lease in the job's errors.
static CLAIM_SQL: LazyLock<String> = LazyLock::new(|| {
    format!(
            "WITH now AS MATERIALIZED (SELECT {NOW_MS} AS ms),
             reaped AS (
                 UPDATE jobs SET status = 'dead', lease_until = NULL,
                    finished_at = (SELECT ms FROM now),
                    last_error = 'interrupted: instance ' || COALESCE(locked_by, '?') || ' lost its lease',
                    errors = errors || jsonb_build_array(jsonb_build_object(
                        'attempt', attempt, 'started', started_at, 'at', (SELECT ms FROM now),
                        'error', 'interrupted: instance ' || COALESCE(locked_by, '?') || ' lost its lease'))
                 WHERE id IN (
                     SELECT id FROM jobs
                     WHERE queue = $1 AND $1 <> 'action' AND status = 'running'
                       AND lease_until < (SELECT ms FROM now) AND attempt >= max_attempts
                     FOR UPDATE SKIP LOCKED)
                 RETURNING id),
             due AS (
                 SELECT id, attempt, scheduled_at, status, max_attempts, locked_by FROM jobs
                 WHERE queue = $1 AND status IN ('pending', 'retrying')
                   AND scheduled_at <= (SELECT ms FROM now)
                 ORDER BY scheduled_at, id LIMIT $2
                 FOR UPDATE SKIP LOCKED),
             lapsed AS (
                 SELECT id, attempt, scheduled_at, status, max_attempts, locked_by FROM jobs
                 WHERE queue = $1 AND status = 'running'
                   AND lease_until < (SELECT ms FROM now)
                   AND ($1 = 'action' OR attempt < max_attempts)
                 ORDER BY lease_until, id LIMIT $2
                 FOR UPDATE SKIP LOCKED),
             open AS (
                 SELECT * FROM (SELECT * FROM due UNION ALL SELECT * FROM lapsed) o
                 ORDER BY scheduled_at, id LIMIT $2),
             first AS (SELECT attempt FROM open ORDER BY scheduled_at, id LIMIT 1),
             chosen AS (
                 SELECT * FROM open WHERE attempt = 0 AND (SELECT attempt FROM first) = 0
                 UNION ALL
                 (SELECT * FROM open WHERE (SELECT attempt FROM first) > 0
                  ORDER BY scheduled_at, id LIMIT 1))
             UPDATE jobs j SET status = 'running',
                attempt = CASE WHEN c.status = 'running' AND c.attempt >= c.max_attempts
                               THEN j.attempt ELSE j.attempt + 1 END,
                -- taken only to be ended dead, the last attempt keeps its start
                started_at = CASE WHEN c.status = 'running' AND c.attempt >= c.max_attempts
                                  THEN j.started_at ELSE (SELECT ms FROM now) END,
                errors = CASE WHEN c.status = 'running' AND c.attempt < c.max_attempts
                              THEN j.errors || jsonb_build_array(jsonb_build_object(
                                  'attempt', j.attempt, 'started', j.started_at, 'at', (SELECT ms FROM now),
                                  'error', 'interrupted: instance ' || COALESCE(c.locked_by, '?') || ' lost its lease'))
                              ELSE j.errors END,
                last_error = CASE WHEN c.status = 'running' AND c.attempt < c.max_attempts
                                  THEN 'interrupted: instance ' || COALESCE(c.locked_by, '?') || ' lost its lease'
                                  ELSE j.last_error END,
                -- after a takeover, a job taken more recently (the one that keeps
                -- killing its instance) goes behind the others
                scheduled_at = (SELECT ms FROM now),
                lease_until = (SELECT ms FROM now) + $3, locked_by = $4
             FROM chosen c
             WHERE j.id = c.id
             RETURNING j.id, j.queue, j.kind, j.event_id, j.rule, j.payload, j.attempt, j.max_attempts,
                CASE WHEN c.status = 'running' AND c.attempt >= c.max_attempts
                     THEN 'interrupted: instance ' || COALESCE(c.locked_by, '?') || ' lost its lease' END,
                (SELECT count(*) FROM reaped)"
        )
});

/// Claims up to `limit` due jobs of `queue` on `client` ([`CLAIM_SQL`]), in id order.
async fn claim_in(
    client: &impl Typed,
    shared: &Shared,
    queue: Queue,
    limit: usize,
) -> Result<Vec<Job>> {
    let params: [&dyn Param; 4] = [&queue, &(limit as i64), &shared.lease_ms, &shared.instance];
    let rows = client
        .rows(CLAIM_SQL.as_str(), &params)
        .await
        .map_err(backend)?;
    let mut jobs = Vec::with_capacity(rows.len());
    for row in rows {
        jobs.push(Job {
            id: row.get(0),
            queue: row.get(1),
            kind: row.get(2),
            event_id: row.get(3),
            rule: row.get(4),
            payload: parse_json(&row.get::<_, String>(5))?,
            attempt: row.get::<_, i32>(6) as u32,
            max_attempts: row.get::<_, i32>(7) as u32,
            interrupted: row.get(8),
        });
    }
    jobs.sort_by_key(|job| job.id);
    Ok(jobs)
}

/// The evaluate jobs `claimed` from the journal and up to `limit` that intake handed over
/// (already leased and held), in id order.
fn with_handed(shared: &Shared, claimed: Vec<Job>, limit: usize) -> Vec<Job> {
    let mut jobs = shared.handoff().take(limit);
    if jobs.is_empty() {
        return claimed;
    }
    jobs.extend(claimed);
    jobs.sort_by_key(|job| job.id);
    jobs
}

/// Records a batch of evaluations in `tx`; for each, whether its lease was still ours.
/// The whole batch's fenced ends and its events' status go in one statement: two
/// statements per event were most of the evaluate stage's round trips (and of intake's
/// cost on PostgreSQL).
async fn record_evaluations(
    tx: &super::session::Tx<'_>,
    shared: &Shared,
    batch: &[(Job, Evaluation)],
) -> Result<Vec<bool>> {
    common::lock_alerts_in_name_order(&mut PgTx(tx), batch).await?;
    let ended = end_evaluations(tx, batch, &shared.instance).await?;
    let mut recorded = Vec::with_capacity(batch.len());
    for (job, evaluation) in batch {
        let ours = ended.contains(&job.id);
        if ours {
            common::record_outcome(&mut PgTx(tx), job, evaluation).await?;
        }
        recorded.push(ours);
    }
    Ok(recorded)
}

fn clock_row(row: &tokio_postgres::Row) -> ClockState {
    ClockState {
        name: row.get(0),
        last_due_ms: row.get(1),
        last_check_in_ms: row.get(2),
        missed_due_ms: row.get(3),
    }
}

/// A `rule_runs` row (`rule, outcome, actions, error`).
fn rule_run(row: &tokio_postgres::Row) -> RuleRun {
    RuleRun {
        rule: row.get(0),
        outcome: row.get(1),
        actions: row.get::<_, i32>(2) as usize,
        error: row.get(3),
    }
}
