//! Intake: the HTTP routes of docs/behaviour.md section 2. A webhook is verified, turned into an
//! [`Event`], and committed to the journal *before* the 200 is sent;
//! everything after that (enrichment, rules, actions) happens in the pipeline.

pub mod dbt_cloud;
pub mod dbt_core;
pub mod listener;
pub mod mode;
pub mod openlineage;
mod rejection;
pub mod signature;

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use bytes::{Bytes, BytesMut};
use futures_util::StreamExt;
use serde_json::json;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use warp::http::StatusCode;
use warp::{Filter, Rejection, Reply};

use crate::config::{Config, DbtConfig, Secret};
use crate::event::{now_rfc3339, Event};
use crate::journal::{blocking, Appended, FirstJob, Journal};
use crate::metrics::Metrics;
use crate::stages::Wakes;

pub use rejection::{error_reply, handle_rejection};

/// Why a body was refused after its signature or token was accepted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BodyError {
    #[error("body is not JSON: {0}")]
    NotJson(String),
    #[error("{0}")]
    Shape(String),
}

/// The secrets intake checks against; swapped as a whole on SIGHUP.
#[derive(Debug, Clone, Default)]
pub struct IntakeSecrets {
    pub dbt: Vec<Secret>,
    pub mode: Option<ModeIntake>,
    /// `[openlineage] api_keys`: the Bearer keys OpenLineage clients send.
    pub openlineage: Vec<Secret>,
    /// Whether a failed dbt Cloud run is fetched (enrich stage) before the rules see it.
    pub dbt_fetch_failures: bool,
}

#[derive(Debug, Clone)]
pub struct ModeIntake {
    pub workspace: String,
    pub webhook_token: Secret,
}

impl IntakeSecrets {
    /// The source (named as in the config) that has a secret here and none in `next`.
    pub fn sources_lost_in(&self, next: &IntakeSecrets) -> Option<&'static str> {
        if !self.dbt.is_empty() && next.dbt.is_empty() {
            return Some("dbt.webhook_secrets");
        }
        if self.mode.is_some() && next.mode.is_none() {
            return Some("mode.webhook_token");
        }
        if !self.openlineage.is_empty() && next.openlineage.is_empty() {
            return Some("openlineage.api_keys");
        }
        None
    }

    pub fn from_config(config: &Config) -> IntakeSecrets {
        IntakeSecrets {
            dbt: config
                .dbt
                .as_ref()
                .map(|dbt| dbt.webhook_secrets.clone())
                .unwrap_or_default(),
            mode: config.mode.as_ref().and_then(|mode| {
                mode.webhook_token.as_ref().map(|token| ModeIntake {
                    workspace: mode.workspace.clone(),
                    webhook_token: token.clone(),
                })
            }),
            openlineage: config
                .openlineage
                .as_ref()
                .map(|openlineage| openlineage.api_keys.clone())
                .unwrap_or_default(),
            dbt_fetch_failures: config.dbt.as_ref().is_some_and(DbtConfig::fetches_failures),
        }
    }
}

/// What the routes need. Cloned into every request (all fields are shared handles).
#[derive(Clone)]
pub struct Intake {
    pub journal: Journal,
    pub secrets: Arc<ArcSwap<IntakeSecrets>>,
    pub metrics: Arc<Metrics>,
    pub max_body_bytes: usize,
    /// The memory that request bodies being read may hold at once, in bytes
    /// (`server.max_pending_body_bytes`): bodies are read before their signature can be
    /// checked, so without a shared budget unauthenticated clients could fill memory.
    pub body_budget: Arc<Semaphore>,
    /// What `/healthz` reports besides the journal.
    pub health: Arc<Health>,
    /// Attempts of a Mode run's enrichment (`actions.max_attempts`: it retries like an
    /// action).
    pub enrich_attempts: u32,
    /// Wake the stage that takes a new event's first job.
    pub wakes: Wakes,
}

/// How long a request waits for room in the body budget before it gets 503.
const BODY_BUDGET_WAIT: Duration = Duration::from_secs(5);
/// How long a client may take to send a whole body.
const BODY_TIMEOUT: Duration = Duration::from_secs(30);

/// State `/healthz` shows that only the daemon knows: the last SIGHUP reload.
#[derive(Debug, Default)]
pub struct Health {
    last_reload: std::sync::Mutex<Option<ReloadOutcome>>,
}

/// How the last reload of the config went.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct ReloadOutcome {
    pub ok: bool,
    pub at: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

impl Health {
    pub fn reloaded(&self, result: Result<(), String>) {
        let outcome = ReloadOutcome {
            ok: result.is_ok(),
            at: now_rfc3339(),
            error: result.err(),
        };
        *self
            .last_reload
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner()) = Some(outcome);
    }

    pub fn last_reload(&self) -> Option<ReloadOutcome> {
        self.last_reload
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .clone()
    }
}

/// What intake did with a webhook it accepted.
enum Accepted {
    Journaled(Arc<Event>, Appended),
    /// Answered 200 and journaled nothing (Mode's test delivery), with why.
    Ignored(String),
}

/// Everything intake answers, as a typed error mapped to a status in one place.
#[derive(Debug, thiserror::Error)]
enum IntakeError {
    #[error("body is larger than {0} bytes")]
    TooLarge(usize),
    #[error("could not read the body")]
    BodyRead,
    #[error("{0}")]
    Signature(#[from] signature::SignatureError),
    #[error("not found")]
    NotFound,
    #[error("no Authorization: Bearer header with a key of [openlineage] api_keys")]
    BadKey,
    #[error("the gzip body does not inflate")]
    BadGzip,
    #[error("Content-Encoding {0} is not accepted (gzip is)")]
    Encoding(String),
    #[error("{0}")]
    Body(#[from] BodyError),
    #[error("journal unavailable")]
    Journal,
    #[error("too many request bodies are being read; try again")]
    Busy,
    #[error("the body did not arrive within {} s", BODY_TIMEOUT.as_secs())]
    BodyTimeout,
}

impl IntakeError {
    fn status(&self) -> StatusCode {
        match self {
            IntakeError::TooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            IntakeError::BodyRead | IntakeError::Body(_) => StatusCode::BAD_REQUEST,
            IntakeError::Signature(_) => StatusCode::UNAUTHORIZED,
            IntakeError::NotFound => StatusCode::NOT_FOUND,
            IntakeError::BadKey => StatusCode::UNAUTHORIZED,
            IntakeError::BadGzip => StatusCode::BAD_REQUEST,
            IntakeError::Encoding(_) => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            IntakeError::Journal | IntakeError::Busy => StatusCode::SERVICE_UNAVAILABLE,
            IntakeError::BodyTimeout => StatusCode::REQUEST_TIMEOUT,
        }
    }

    fn reason(&self) -> &'static str {
        match self {
            IntakeError::TooLarge(_) => "too_large",
            IntakeError::BodyRead => "body_read",
            IntakeError::Signature(error) => error.reason(),
            IntakeError::NotFound => "bad_token",
            IntakeError::BadKey => "bad_key",
            IntakeError::BadGzip => "bad_gzip",
            IntakeError::Encoding(_) => "bad_encoding",
            IntakeError::Body(BodyError::NotJson(_)) => "not_json",
            IntakeError::Body(BodyError::Shape(_)) => "bad_shape",
            IntakeError::Journal => "journal_unavailable",
            IntakeError::Busy => "busy",
            IntakeError::BodyTimeout => "body_timeout",
        }
    }
}

/// All routes, with the one `recover` that turns warp's own rejections into JSON.
pub fn routes(intake: Intake) -> impl Filter<Extract = (impl Reply,), Error = Infallible> + Clone {
    dbt_route(intake.clone(), "dbt")
        .or(dbt_route(intake.clone(), "dbt-core"))
        .or(mode_route(intake.clone()))
        .or(openlineage_route(intake.clone()))
        .or(healthz_route(intake.clone()))
        .or(metrics_route(intake))
        .recover(handle_rejection)
}

fn with_intake(intake: Intake) -> impl Filter<Extract = (Intake,), Error = Infallible> + Clone {
    warp::any().map(move || intake.clone())
}

/// The raw body stream; read (and limited) inside the handler, after the cheap checks.
type BodyStream =
    std::pin::Pin<Box<dyn futures_util::Stream<Item = Result<Bytes, warp::Error>> + Send>>;

/// `POST /webhooks/dbt` (dbt Cloud) and `POST /webhooks/dbt-core` (`freshet send
/// dbt-core`): both signed with a `[dbt]` webhook secret.
fn dbt_route(
    intake: Intake,
    segment: &'static str,
) -> impl Filter<Extract = (warp::reply::Response,), Error = Rejection> + Clone {
    warp::path("webhooks")
        .and(warp::path(segment))
        .and(warp::path::end())
        .and(warp::post())
        .and(with_intake(intake))
        .and(warp::header::optional::<u64>("content-length"))
        .and(warp::header::optional::<String>("authorization"))
        .and(raw_body())
        .then(
            move |intake: Intake,
                  length: Option<u64>,
                  authorization: Option<String>,
                  body: BodyStream| async move {
                let authorization = authorization.as_deref();
                let result = if segment == "dbt-core" {
                    receive_dbt_core(&intake, length, authorization, body).await
                } else {
                    receive_dbt(&intake, length, authorization, body).await
                };
                respond(&intake, segment, result)
            },
        )
}

fn mode_route(
    intake: Intake,
) -> impl Filter<Extract = (warp::reply::Response,), Error = Rejection> + Clone {
    // The token is taken as the path's tail, not with `path::param`: warp logs every
    // param it parses at TRACE, and the token is a secret (docs/behaviour.md section 11).
    warp::path("webhooks")
        .and(warp::path("mode"))
        .and(warp::path::tail())
        .and(warp::post())
        .and(with_intake(intake))
        .and(warp::header::optional::<u64>("content-length"))
        .and(raw_body())
        .then(
            |token: warp::path::Tail,
             intake: Intake,
             length: Option<u64>,
             body: BodyStream| async move {
                let result = receive_mode(&intake, token.as_str(), length, body).await;
                respond(&intake, "mode", result)
            },
        )
}

/// `POST /api/v1/lineage` (the path OpenLineage's HTTP transport posts to): a RunEvent,
/// with `Authorization: Bearer <key>` and, when the client compresses, gzip.
fn openlineage_route(
    intake: Intake,
) -> impl Filter<Extract = (warp::reply::Response,), Error = Rejection> + Clone {
    warp::path!("api" / "v1" / "lineage")
        .and(warp::post())
        .and(with_intake(intake))
        .and(warp::header::optional::<u64>("content-length"))
        .and(warp::header::optional::<String>("authorization"))
        .and(warp::header::optional::<String>("content-encoding"))
        .and(raw_body())
        .then(
            |intake: Intake,
             length: Option<u64>,
             authorization: Option<String>,
             encoding: Option<String>,
             body: BodyStream| async move {
                let result = receive_openlineage(
                    &intake,
                    length,
                    authorization.as_deref(),
                    encoding.as_deref(),
                    body,
                )
                .await;
                respond(&intake, "openlineage", result)
            },
        )
}

/// The unread request body, so that the size limit applies whether or not the sender gave
/// a Content-Length (warp's own limit refuses bodies without one).
fn raw_body() -> impl Filter<Extract = (BodyStream,), Error = Rejection> + Clone {
    warp::body::stream().map(boxed_body)
}

fn boxed_body<S, B>(stream: S) -> BodyStream
where
    S: futures_util::Stream<Item = Result<B, warp::Error>> + Send + 'static,
    B: bytes::Buf,
{
    Box::pin(stream.map(|chunk| chunk.map(|mut buf| buf.copy_to_bytes(buf.remaining()))))
}

/// GET, and HEAD (the same answer without its body: hyper leaves it out).
fn get_or_head() -> impl Filter<Extract = (), Error = Rejection> + Clone {
    warp::get().or(warp::head()).unify()
}

fn healthz_route(
    intake: Intake,
) -> impl Filter<Extract = (warp::reply::Response,), Error = Rejection> + Clone {
    warp::path!("healthz")
        .and(get_or_head())
        .and(with_intake(intake))
        .then(|intake: Intake| async move {
            let mut health = json!({
                "status": "ok",
                "rules_loaded": intake.metrics.rules_loaded.get(),
                "rule_errors": intake.metrics.rule_compile_errors.get(),
                "journal": "ok",
                "last_reload": intake.health.last_reload(),
            });
            let mut status = StatusCode::OK;
            if let Err(error) = blocking(&intake.journal, |j| j.check_writable()).await {
                tracing::error!(error = %error, "Journal is not writable.");
                health["status"] = json!("unavailable");
                health["journal"] = json!("unavailable");
                health["error"] = json!(error.to_string());
                status = StatusCode::SERVICE_UNAVAILABLE;
            } else if health["last_reload"]["ok"] == json!(false) {
                // Still serving on the config it had: degraded, not down.
                health["status"] = json!("degraded");
            }
            let failing = intake.metrics.failing_sources();
            if !failing.is_empty() {
                // dbt Cloud turns a webhook off after 5 failed deliveries in a row: say so
                // while there is still time to look (README, "Run as a service").
                health["webhook_consecutive_failures"] = failing
                    .into_iter()
                    .map(|(source, count)| (source.to_string(), json!(count)))
                    .collect();
            }
            warp::reply::with_status(warp::reply::json(&health), status).into_response()
        })
}

fn metrics_route(
    intake: Intake,
) -> impl Filter<Extract = (warp::reply::Response,), Error = Rejection> + Clone {
    warp::path!("metrics")
        .and(get_or_head())
        .and(with_intake(intake))
        .then(|intake: Intake| async move {
            if let Ok(backlog) = blocking(&intake.journal, |j| j.backlog()).await {
                intake.metrics.journal_backlog.set(backlog as i64);
            }
            warp::reply::with_header(
                intake.metrics.encode(),
                "content-type",
                "application/openmetrics-text; version=1.0.0; charset=utf-8",
            )
            .into_response()
        })
}

/// Reads at most `limit` bytes; a declared or actual larger body is refused. The bytes
/// held count against the shared body budget until the request ends (the permits are
/// returned with the body); a body that finds no room within [`BODY_BUDGET_WAIT`] gets
/// 503, and one that takes longer than [`BODY_TIMEOUT`] to arrive gets 408.
async fn read_limited(
    intake: &Intake,
    length: Option<u64>,
    body: BodyStream,
) -> Result<(Bytes, OwnedSemaphorePermit), IntakeError> {
    let limit = intake.max_body_bytes;
    if length.is_some_and(|declared| declared > limit as u64) {
        return Err(IntakeError::TooLarge(limit));
    }
    tokio::time::timeout(
        BODY_TIMEOUT,
        read_within_budget(intake, length, body, limit),
    )
    .await
    .unwrap_or(Err(IntakeError::BodyTimeout))
}

async fn read_within_budget(
    intake: &Intake,
    length: Option<u64>,
    mut body: BodyStream,
    limit: usize,
) -> Result<(Bytes, OwnedSemaphorePermit), IntakeError> {
    // A declared length is reserved at once; otherwise each chunk as it comes.
    let mut held = reserve(intake, length.unwrap_or(0) as usize).await?;
    let mut collected = BytesMut::new();
    while let Some(chunk) = body.next().await {
        let chunk = chunk.map_err(|_| IntakeError::BodyRead)?;
        if collected.len() + chunk.len() > limit {
            return Err(IntakeError::TooLarge(limit));
        }
        let needed = (collected.len() + chunk.len()).saturating_sub(held.num_permits());
        if needed > 0 {
            held.merge(reserve(intake, needed).await?);
        }
        collected.extend_from_slice(&chunk);
    }
    Ok((collected.freeze(), held))
}

/// Takes `bytes` from the body budget, waiting at most [`BODY_BUDGET_WAIT`].
async fn reserve(intake: &Intake, bytes: usize) -> Result<OwnedSemaphorePermit, IntakeError> {
    let permits = u32::try_from(bytes).map_err(|_| IntakeError::TooLarge(bytes))?;
    let acquire = Arc::clone(&intake.body_budget).acquire_many_owned(permits);
    match tokio::time::timeout(BODY_BUDGET_WAIT, acquire).await {
        Ok(Ok(permit)) => Ok(permit),
        // Timed out, or (never) closed.
        _ => Err(IntakeError::Busy),
    }
}

async fn receive_dbt(
    intake: &Intake,
    length: Option<u64>,
    authorization: Option<&str>,
    body: BodyStream,
) -> Result<Accepted, IntakeError> {
    let (body, _budget) = read_limited(intake, length, body).await?;
    let secrets = intake.secrets.load();
    signature::verify(authorization, &body, &secrets.dbt)?;
    let mut event = dbt_cloud::parse(&body, now_rfc3339())?;
    continue_chain(intake, &mut event).await?;
    let first = first_job(intake, &event, secrets.dbt_fetch_failures);
    journal_event(intake, event, first).await
}

/// A dbt Core invocation, as `freshet send dbt-core` posts it, signed with a `[dbt]`
/// webhook secret.
async fn receive_dbt_core(
    intake: &Intake,
    length: Option<u64>,
    authorization: Option<&str>,
    body: BodyStream,
) -> Result<Accepted, IntakeError> {
    let (body, _budget) = read_limited(intake, length, body).await?;
    let secrets = intake.secrets.load();
    signature::verify(authorization, &body, &secrets.dbt)?;
    let event = dbt_core::parse(&body, now_rfc3339())?;
    journal_event(intake, event, FirstJob::EVALUATE).await
}

/// A run `dbt_run` started names its action in its reason (the cause's
/// `[freshet:<action id>]` tag): its webhook gets `triggered_by` and continues that
/// action's chain, so a rule that answers a finished run with `dbt_run` cannot loop
/// (docs/behaviour.md section 13).
async fn continue_chain(intake: &Intake, event: &mut Event) -> Result<(), IntakeError> {
    let Some(action_id) = event
        .field("run_reason")
        .and_then(serde_json::Value::as_str)
        .and_then(crate::actions::dbt::tagged_action)
    else {
        return Ok(());
    };
    let origin = blocking(&intake.journal, move |j| j.action_origin(action_id))
        .await
        .map_err(|error| {
            tracing::error!(error = %error, "Cannot read the action that started this dbt run; answering 503 so dbt Cloud delivers it again.");
            IntakeError::Journal
        })?;
    let Some(origin) = origin else {
        tracing::info!(event_id = %event.id, action_id, "The dbt run names a freshet action this journal does not hold (pruned, or another freshet's).");
        return Ok(());
    };
    event.chain_depth = origin.chain_depth + 1;
    event.fields.insert(
        "triggered_by".into(),
        json!({ "rule": origin.rule, "action_id": action_id, "cause_event_id": origin.event_id }),
    );
    Ok(())
}

async fn receive_mode(
    intake: &Intake,
    token: &str,
    length: Option<u64>,
    body: BodyStream,
) -> Result<Accepted, IntakeError> {
    let secrets = intake.secrets.load();
    let mode = secrets.mode.as_ref().ok_or(IntakeError::NotFound)?;
    if !signature::secrets_equal(token, &mode.webhook_token) {
        return Err(IntakeError::NotFound);
    }
    let (body, _budget) = read_limited(intake, length, body).await?;
    let raw: serde_json::Value =
        serde_json::from_slice(&body).map_err(|e| BodyError::NotJson(e.to_string()))?;
    if let Some(why) = mode::test_delivery(&raw) {
        return Ok(Accepted::Ignored(why));
    }
    let event = mode::from_value(raw, &mode.workspace, now_rfc3339())?;
    let first = first_job(intake, &event, secrets.dbt_fetch_failures);
    journal_event(intake, event, first).await
}

/// An OpenLineage RunEvent. The key is checked before the body is read (as Mode's token
/// is); a gzip body is inflated within `server.max_body_bytes` too.
async fn receive_openlineage(
    intake: &Intake,
    length: Option<u64>,
    authorization: Option<&str>,
    encoding: Option<&str>,
    body: BodyStream,
) -> Result<Accepted, IntakeError> {
    let secrets = intake.secrets.load();
    let key = authorization
        .and_then(|value| value.strip_prefix("Bearer "))
        .map(str::trim);
    let known = key.is_some_and(|key| {
        secrets
            .openlineage
            .iter()
            .any(|expected| signature::secrets_equal(key, expected))
    });
    if !known {
        return Err(IntakeError::BadKey);
    }
    let (body, _budget) = read_limited(intake, length, body).await?;
    let inflated;
    let body: &[u8] = match encoding.map(str::trim) {
        None | Some("identity") => &body,
        Some(gzip) if gzip.eq_ignore_ascii_case("gzip") => {
            inflated =
                openlineage::gunzip(&body, intake.max_body_bytes).map_err(|error| match error {
                    openlineage::GunzipError::TooLarge => {
                        IntakeError::TooLarge(intake.max_body_bytes)
                    }
                    openlineage::GunzipError::Corrupt => IntakeError::BadGzip,
                })?;
            &inflated
        }
        Some(other) => return Err(IntakeError::Encoding(other.to_string())),
    };
    let event = openlineage::parse(body, now_rfc3339())?;
    journal_event(intake, event, FirstJob::EVALUATE).await
}

/// A Mode run, or a failed dbt run when its failures are fetched, goes to the enrich
/// stage first; every other event straight to evaluation.
fn first_job(intake: &Intake, event: &Event, dbt_fetches_failures: bool) -> FirstJob {
    if event.needs_fetching(dbt_fetches_failures) {
        FirstJob::enrich(intake.enrich_attempts)
    } else {
        FirstJob::EVALUATE
    }
}

async fn journal_event(
    intake: &Intake,
    event: Event,
    first: FirstJob,
) -> Result<Accepted, IntakeError> {
    let event = Arc::new(event);
    let appended = intake
        .journal
        .append_shared(Arc::clone(&event), first)
        .committed()
        .await
        .map_err(|error| {
            tracing::error!(error = %error, event_id = %event.id, "Could not journal the event.");
            IntakeError::Journal
        })?;
    if appended == Appended::New {
        intake.wakes.wake(first.queue);
    }
    Ok(Accepted::Journaled(event, appended))
}

fn respond(
    intake: &Intake,
    source: &str,
    result: Result<Accepted, IntakeError>,
) -> warp::reply::Response {
    intake.metrics.webhook_answered(source, result.is_ok());
    match result {
        Ok(Accepted::Ignored(why)) => {
            tracing::info!(source, reason = %why, "Webhook answered and ignored.");
            warp::reply::with_status(
                warp::reply::json(&json!({ "event_id": null, "ignored": why })),
                StatusCode::OK,
            )
            .into_response()
        }
        Ok(Accepted::Journaled(event, appended)) => {
            let duplicate = appended == Appended::Duplicate;
            if duplicate {
                tracing::info!(event_id = %event.id, source, "Duplicate event ignored.");
            } else {
                intake.metrics.event_received(source, &event.kind);
                tracing::info!(event_id = %event.id, source, event_type = %event.kind, "Event journaled.");
            }
            warp::reply::with_status(
                warp::reply::json(&json!({ "event_id": event.id, "duplicate": duplicate })),
                StatusCode::OK,
            )
            .into_response()
        }
        Err(error) => {
            intake.metrics.webhook_rejected(source, error.reason());
            tracing::warn!(source, reason = error.reason(), error = %error, "Webhook rejected.");
            error_reply(error.status(), &error.to_string())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::journal::{
        Admin, AlertState, AppendTicket, Evaluation, EventSummary, Job, JobOutcome, JobSummary,
        JournalError, Operations, Queue, StageQueue,
    };

    /// A journal whose disk is gone: every call fails.
    struct BrokenJournal;

    fn down<T>() -> Result<T, JournalError> {
        Err(JournalError::unavailable("disk I/O error"))
    }

    impl StageQueue for BrokenJournal {
        fn append(&self, _: &Event, _: FirstJob) -> AppendTicket {
            AppendTicket::ready(down())
        }
        fn event(&self, _: &str) -> Result<Option<Event>, JournalError> {
            down()
        }
        fn action_origin(
            &self,
            _: i64,
        ) -> Result<Option<crate::journal::ActionOrigin>, JournalError> {
            down()
        }
        fn clock(&self, _: &str) -> Result<Option<crate::journal::ClockState>, JournalError> {
            down()
        }
        fn judge_clock(&self, _: &crate::journal::ClockJudgement) -> Result<bool, JournalError> {
            down()
        }
        fn claim(&self, _: Queue, _: usize, _: u64) -> Result<Vec<Job>, JournalError> {
            down()
        }
        fn next_due_in(&self, _: Queue) -> Result<Option<u64>, JournalError> {
            down()
        }
        fn finish(
            &self,
            _: &Job,
            _: &JobOutcome,
            _: &crate::journal::FollowUp,
        ) -> Result<Option<crate::journal::JobStatus>, JournalError> {
            down()
        }
        fn job_by_key(&self, _: &str) -> Result<Option<crate::journal::KeyedJob>, JournalError> {
            down()
        }
        fn finish_enrichment(&self, _: &Job, _: &Event) -> Result<bool, JournalError> {
            down()
        }
        fn finish_evaluations(&self, _: &[(Job, Evaluation)]) -> Result<Vec<bool>, JournalError> {
            down()
        }
    }

    impl Admin for BrokenJournal {
        fn mute_alert(
            &self,
            _: &str,
            _: Option<i64>,
            _: Option<&str>,
        ) -> Result<bool, JournalError> {
            down()
        }
        fn clocks(&self) -> Result<Vec<crate::journal::ClockState>, JournalError> {
            down()
        }
        fn events(&self, _: usize, _: Option<&str>) -> Result<Vec<EventSummary>, JournalError> {
            down()
        }
        fn events_page(
            &self,
            _: &crate::journal::EventFilter,
            _: Option<&crate::journal::EventCursor>,
            _: usize,
        ) -> Result<Vec<crate::journal::EventLine>, JournalError> {
            down()
        }
        fn event_activity(&self, _: &str) -> Result<crate::journal::EventActivity, JournalError> {
            down()
        }
        fn overview(&self, _: i64) -> Result<crate::journal::Overview, JournalError> {
            down()
        }
        fn queue_replay(&self, _: &str, _: &crate::journal::Replay) -> Result<i64, JournalError> {
            down()
        }
        fn jobs(
            &self,
            _: Option<crate::journal::JobStatus>,
            _: usize,
        ) -> Result<Vec<JobSummary>, JournalError> {
            down()
        }
        fn retry(&self, _: i64) -> Result<crate::journal::Retried, JournalError> {
            down()
        }
        fn alerts(&self) -> Result<Vec<AlertState>, JournalError> {
            down()
        }
        fn reset_alert(&self, _: &str) -> Result<Option<bool>, JournalError> {
            down()
        }
    }

    impl Operations for BrokenJournal {
        fn check_writable(&self) -> Result<(), JournalError> {
            down()
        }
        fn release_running(&self) -> Result<crate::journal::Released, JournalError> {
            down()
        }
        fn backlog(&self) -> Result<u64, JournalError> {
            down()
        }
        fn prune(&self, _: u32, _: &(dyn Fn() -> bool + Sync)) -> Result<usize, JournalError> {
            down()
        }
    }

    #[tokio::test]
    async fn an_unwritable_journal_is_503_never_200() {
        let intake = Intake {
            journal: Arc::new(BrokenJournal),
            secrets: Arc::new(ArcSwap::from_pointee(IntakeSecrets {
                dbt: vec![Secret::new("s")],
                mode: None,
                openlineage: Vec::new(),
                dbt_fetch_failures: false,
            })),
            metrics: Arc::new(Metrics::new()),
            max_body_bytes: 1024,
            body_budget: Arc::new(Semaphore::new(1 << 20)),
            health: Arc::default(),
            enrich_attempts: 3,
            wakes: Wakes::default(),
        };
        let filter = routes(intake);
        let body = br#"{"eventId":"wev_1","eventType":"job.run.completed","data":{}}"#;
        let response = warp::test::request()
            .method("POST")
            .path("/webhooks/dbt")
            .header("authorization", signature::sign(b"s", body))
            .body(body.as_slice())
            .reply(&filter)
            .await;
        assert_eq!(response.status(), 503);
        assert_eq!(
            response.body().as_ref(),
            br#"{"error":"journal unavailable"}"#
        );

        let health = warp::test::request().path("/healthz").reply(&filter).await;
        assert_eq!(health.status(), 503);
    }
}
