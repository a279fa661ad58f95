//! The console's pages (askama templates in `templates/console/`, compiled into the
//! binary and checked at build time; everything is HTML-escaped) and its writes, each
//! the CLI's own journal call.

use askama::Template;
use warp::http::{Response, StatusCode};
use warp::hyper::Body;

use super::{css_path, plain, redirect, Console, Request};
use crate::journal::common_rfc3339 as rfc3339;
use crate::journal::{blocking, EventCursor, EventFilter, EventLine, JobStatus, JobSummary};

/// Events a page shows.
const PAGE_SIZE: usize = 50;
/// Most dead actions "retry all matching" re-queues at once.
const RETRY_ALL_LIMIT: usize = 1000;
/// The overview's window.
const OVERVIEW_MS: i64 = 24 * 3600 * 1000;

const SOURCES: [&str; 8] = [
    "dbt",
    "dbt-core",
    "mode",
    "openlineage",
    "tableau",
    "hex",
    "powerbi",
    "freshet",
];
const EVENT_STATUSES: [&str; 3] = ["received", "enriching", "evaluated"];
const JOB_STATUSES: [&str; 6] = [
    "dead",
    "retrying",
    "pending",
    "running",
    "succeeded",
    "merged",
];

fn html(status: StatusCode, page: Result<String, askama::Error>) -> Response<Body> {
    match page {
        Ok(text) => Response::builder()
            .status(status)
            .header("content-type", "text/html; charset=utf-8")
            .body(Body::from(text))
            .expect("a page"),
        Err(error) => {
            tracing::error!(error = %error, "A console page failed to render.");
            plain(
                StatusCode::INTERNAL_SERVER_ERROR,
                "the page failed to render",
            )
        }
    }
}

fn optional_time(ms: Option<i64>) -> String {
    ms.map(rfc3339).unwrap_or_else(|| "-".into())
}

fn journal_error(error: crate::journal::JournalError) -> Response<Body> {
    tracing::error!(error = %error, "The console could not read the journal.");
    error_page(
        StatusCode::SERVICE_UNAVAILABLE,
        "Journal unavailable",
        "The journal cannot be read now; try again.",
    )
}

#[derive(Template)]
#[template(path = "console/error.html")]
struct ErrorPage<'a> {
    css: &'a str,
    notice: Option<String>,
    title: &'a str,
    message: &'a str,
}

fn error_page(status: StatusCode, title: &str, message: &str) -> Response<Body> {
    let page = ErrorPage {
        css: css_path(),
        notice: None,
        title,
        message,
    };
    html(status, page.render())
}

#[derive(Template)]
#[template(path = "console/login.html")]
struct LoginPage<'a> {
    css: &'a str,
    notice: Option<String>,
}

pub(super) fn login_page(status: StatusCode, notice: Option<&str>) -> Response<Body> {
    let page = LoginPage {
        css: css_path(),
        notice: notice.map(String::from),
    };
    html(status, page.render())
}

/// Every GET.
pub(super) async fn read(console: &Console, request: &Request, csrf: &str) -> Response<Body> {
    let notice = request.query_param("notice");
    match request.path.as_str() {
        "/" => overview(console, notice).await,
        "/events" => events(console, request, notice).await,
        "/actions" => actions(console, request, csrf, notice).await,
        "/alerts" => alerts(console, csrf, notice).await,
        "/deadlines" => deadlines(console, notice).await,
        "/rules" => rules(console, notice),
        path => match path.strip_prefix("/events/") {
            Some(id) => {
                let id = percent_encoding::percent_decode_str(id)
                    .decode_utf8_lossy()
                    .into_owned();
                event(console, &id, csrf, notice).await
            }
            None => error_page(StatusCode::NOT_FOUND, "Not found", "No such page."),
        },
    }
}

#[derive(Template)]
#[template(path = "console/overview.html")]
struct OverviewPage<'a> {
    css: &'a str,
    notice: Option<String>,
    rule_errors: Vec<String>,
    jobs: Vec<(String, u64)>,
    events: Vec<(String, String, u64)>,
    last_event: Vec<(String, String)>,
    firing: Vec<String>,
    missed: Vec<(String, String)>,
}

async fn overview(console: &Console, notice: Option<String>) -> Response<Body> {
    let since = chrono::Utc::now().timestamp_millis() - OVERVIEW_MS;
    let read = blocking(&console.journal, move |j| {
        Ok((j.overview(since)?, j.alerts()?, j.clocks()?))
    })
    .await;
    let (overview, alerts, clocks) = match read {
        Ok(read) => read,
        Err(error) => return journal_error(error),
    };
    let mut jobs = overview.jobs;
    // Dead ones first: they are what someone has to act on.
    jobs.sort_by_key(|(status, _)| status != "dead");
    let page = OverviewPage {
        css: css_path(),
        notice,
        rule_errors: console
            .rules
            .load()
            .errors
            .iter()
            .map(ToString::to_string)
            .collect(),
        jobs,
        events: overview.events,
        last_event: overview.last_event,
        firing: alerts
            .into_iter()
            .filter(|a| a.firing)
            .map(|a| a.name)
            .collect(),
        missed: clocks
            .into_iter()
            .filter_map(|c| c.missed_due_ms.map(|due| (c.name, rfc3339(due))))
            .collect(),
    };
    html(StatusCode::OK, page.render())
}

#[derive(Template)]
#[template(path = "console/events.html")]
struct EventsPage<'a> {
    css: &'a str,
    notice: Option<String>,
    /// (value, selected) of each option.
    sources: Vec<(&'static str, bool)>,
    statuses: Vec<(&'static str, bool)>,
    filter_type: String,
    events: Vec<EventLine>,
    older: Option<String>,
}

/// A select's options, the chosen one marked.
fn options(values: &[&'static str], chosen: Option<&str>) -> Vec<(&'static str, bool)> {
    values.iter().map(|v| (*v, Some(*v) == chosen)).collect()
}

/// `before=<received ms>:<id>`, the keyset cursor of the "older" link.
fn parse_cursor(text: &str) -> Option<EventCursor> {
    let (ms, id) = text.split_once(':')?;
    Some(EventCursor {
        received_ms: ms.parse().ok()?,
        id: id.to_string(),
    })
}

async fn events(console: &Console, request: &Request, notice: Option<String>) -> Response<Body> {
    let filter = EventFilter {
        source: request.query_param("source"),
        kind: request.query_param("type"),
        status: request.query_param("status"),
    };
    let before = request.query_param("before").and_then(|b| parse_cursor(&b));
    let query = filter.clone();
    let page = blocking(&console.journal, move |j| {
        j.events_page(&query, before.as_ref(), PAGE_SIZE)
    })
    .await;
    let events = match page {
        Ok(events) => events,
        Err(error) => return journal_error(error),
    };
    let older = (events.len() == PAGE_SIZE)
        .then(|| events.last())
        .flatten()
        .map(|last| {
            let cursor = last.cursor();
            let mut link = url::form_urlencoded::Serializer::new(String::new());
            for (key, value) in [
                ("source", &filter.source),
                ("type", &filter.kind),
                ("status", &filter.status),
            ] {
                if let Some(value) = value {
                    link.append_pair(key, value);
                }
            }
            link.append_pair("before", &format!("{}:{}", cursor.received_ms, cursor.id));
            format!("/events?{}", link.finish())
        });
    let page = EventsPage {
        css: css_path(),
        notice,
        sources: options(&SOURCES, filter.source.as_deref()),
        statuses: options(&EVENT_STATUSES, filter.status.as_deref()),
        filter_type: filter.kind.unwrap_or_default(),
        events,
        older,
    };
    html(StatusCode::OK, page.render())
}

/// An action job as the pages show it.
struct JobView {
    id: i64,
    kind: String,
    status: String,
    attempt: u32,
    max_attempts: u32,
    rule: Option<String>,
    event_id: String,
    last_error: Option<String>,
    args: String,
    /// Every attempt: (attempt, started, duration, status, error).
    attempts: Vec<AttemptView>,
}

/// One attempt of an action, as the event page shows it.
struct AttemptView {
    attempt: u32,
    started: String,
    duration: String,
    status: &'static str,
    error: String,
}

impl JobView {
    fn of(job: JobSummary, attempts: Vec<crate::journal::Attempt>) -> JobView {
        JobView {
            id: job.id,
            kind: job.kind,
            status: job.status.as_str().to_string(),
            attempt: job.attempt,
            max_attempts: job.max_attempts,
            rule: job.rule,
            event_id: job.event_id,
            last_error: job.last_error,
            args: job.payload.to_string(),
            attempts: attempts
                .into_iter()
                .map(|a| AttemptView {
                    attempt: a.attempt,
                    started: optional_time(a.started_ms),
                    duration: a.duration_ms().map_or_else(
                        || {
                            if a.ended_ms.is_none() {
                                "running".into()
                            } else {
                                "-".into()
                            }
                        },
                        duration,
                    ),
                    status: a.status,
                    error: a.error.unwrap_or_default(),
                })
                .collect(),
        }
    }
}

/// A duration as people read it: milliseconds under a second, else seconds, else minutes.
fn duration(ms: i64) -> String {
    match ms {
        0..=999 => format!("{ms} ms"),
        1_000..=59_999 => format!("{:.1} s", ms as f64 / 1_000.0),
        _ => format!("{} min {} s", ms / 60_000, ms % 60_000 / 1_000),
    }
}

#[derive(Template)]
#[template(path = "console/event.html")]
struct EventPage<'a> {
    css: &'a str,
    notice: Option<String>,
    id: String,
    fields: Vec<(String, String)>,
    rules: Vec<crate::journal::RuleRun>,
    jobs: Vec<JobView>,
    body: String,
    csrf: &'a str,
    read_only: bool,
}

async fn event(console: &Console, id: &str, csrf: &str, notice: Option<String>) -> Response<Body> {
    let wanted = id.to_string();
    let read = blocking(&console.journal, move |j| {
        Ok((j.event(&wanted)?, j.event_activity(&wanted)?))
    })
    .await;
    let (event, activity) = match read {
        Ok((Some(event), activity)) => (event, activity),
        Ok((None, _)) => {
            return error_page(
                StatusCode::NOT_FOUND,
                "No such event",
                "The journal holds no event with this id (it may have been pruned).",
            )
        }
        Err(error) => return journal_error(error),
    };
    let mut fields = vec![
        ("source".to_string(), event.source.as_str().to_string()),
        ("type".to_string(), event.kind.clone()),
        ("received_at".to_string(), event.received_at.clone()),
        ("chain_depth".to_string(), event.chain_depth.to_string()),
    ];
    fields.extend(event.fields.iter().map(|(name, value)| {
        let shown = match value {
            serde_json::Value::String(text) => text.clone(),
            other => other.to_string(),
        };
        (name.clone(), shown)
    }));
    let page = EventPage {
        css: css_path(),
        notice,
        id: event.id.clone(),
        fields,
        rules: activity.rules,
        jobs: activity
            .jobs
            .into_iter()
            .map(|(job, attempts)| JobView::of(job, attempts))
            .collect(),
        body: serde_json::to_string_pretty(&event.raw).unwrap_or_default(),
        csrf,
        read_only: console.admin.read_only,
    };
    html(StatusCode::OK, page.render())
}

#[derive(Template)]
#[template(path = "console/actions.html")]
struct ActionsPage<'a> {
    css: &'a str,
    notice: Option<String>,
    statuses: Vec<(&'static str, bool)>,
    heading: String,
    kind: String,
    jobs: Vec<JobView>,
    csrf: &'a str,
    can_retry: bool,
}

fn job_status(text: &str) -> Option<JobStatus> {
    [
        JobStatus::Dead,
        JobStatus::Retrying,
        JobStatus::Pending,
        JobStatus::Running,
        JobStatus::Succeeded,
        JobStatus::Merged,
    ]
    .into_iter()
    .find(|status| status.as_str() == text)
}

async fn actions(
    console: &Console,
    request: &Request,
    csrf: &str,
    notice: Option<String>,
) -> Response<Body> {
    let status_text = request
        .query_param("status")
        .unwrap_or_else(|| "dead".into());
    let Some(status) = job_status(&status_text) else {
        return error_page(
            StatusCode::BAD_REQUEST,
            "No such status",
            "Choose a status from the list.",
        );
    };
    let kind = request.query_param("kind").unwrap_or_default();
    let jobs = match blocking(&console.journal, move |j| j.jobs(Some(status), 200)).await {
        Ok(jobs) => jobs,
        Err(error) => return journal_error(error),
    };
    let page = ActionsPage {
        css: css_path(),
        notice,
        statuses: options(&JOB_STATUSES, Some(&status_text)),
        heading: format!(
            "{}{} actions",
            status_text[..1].to_uppercase(),
            &status_text[1..]
        ),
        jobs: jobs
            .into_iter()
            .filter(|job| kind.is_empty() || job.kind == kind)
            .map(|job| JobView::of(job, Vec::new()))
            .collect(),
        kind,
        csrf,
        can_retry: status == JobStatus::Dead && !console.admin.read_only,
    };
    html(StatusCode::OK, page.render())
}

/// An alert as the page shows it.
struct AlertView {
    name: String,
    firing: bool,
    state: &'static str,
    since: String,
    last_notified: String,
    muted: String,
    is_muted: bool,
    /// The Slack thread of its last firing: (where, link to it with `slack.workspace_url`).
    thread: Option<(String, Option<String>)>,
}

#[derive(Template)]
#[template(path = "console/alerts.html")]
struct AlertsPage<'a> {
    css: &'a str,
    notice: Option<String>,
    alerts: Vec<AlertView>,
    csrf: &'a str,
    read_only: bool,
}

async fn alerts(console: &Console, csrf: &str, notice: Option<String>) -> Response<Body> {
    let alerts = match blocking(&console.journal, |j| {
        let alerts = j.alerts()?;
        let mut threads = Vec::with_capacity(alerts.len());
        for alert in &alerts {
            threads.push(announcement(j, alert)?);
        }
        Ok(alerts.into_iter().zip(threads).collect::<Vec<_>>())
    })
    .await
    {
        Ok(alerts) => alerts,
        Err(error) => return journal_error(error),
    };
    let workspace = console
        .config
        .load()
        .slack
        .as_ref()
        .and_then(|s| s.workspace_url.clone());
    let now = chrono::Utc::now().timestamp_millis();
    let page = AlertsPage {
        css: css_path(),
        notice,
        alerts: alerts
            .into_iter()
            .map(|(alert, announced)| {
                let thread = announced.map(|(channel, ts)| {
                    let link = workspace
                        .as_ref()
                        .map(|base| permalink(base, &channel, &ts));
                    (format!("{channel} at {ts}"), link)
                });
                let is_muted = alert.muted_until_ms.is_some_and(|until| until > now);
                AlertView {
                    firing: alert.firing,
                    state: if alert.firing { "firing" } else { "ok" },
                    since: rfc3339(alert.since_ms),
                    last_notified: optional_time(alert.last_notified_ms),
                    muted: match (is_muted, alert.muted_until_ms, &alert.mute_reason) {
                        (true, Some(until), Some(reason)) => {
                            format!("until {} ({reason})", rfc3339(until))
                        }
                        (true, Some(until), None) => format!("until {}", rfc3339(until)),
                        _ => "-".into(),
                    },
                    is_muted,
                    name: alert.name,
                    thread,
                }
            })
            .collect(),
        csrf,
        read_only: console.admin.read_only,
    };
    html(StatusCode::OK, page.render())
}

/// The Slack message that announced the alert's last firing (its thread holds what
/// followed): the channel id and `ts` Slack answered the post with. None when it fired
/// before, went out through the webhook (no `ts`), or was never delivered.
fn announcement(
    journal: &dyn crate::journal::JournalStore,
    alert: &crate::journal::AlertState,
) -> Result<Option<(String, String)>, crate::journal::JournalError> {
    // A firing alert's version is its firing; a resolved one's firing is the one before.
    let fired = if alert.firing {
        alert.version
    } else {
        alert.version - 1
    };
    if fired < 1 {
        return Ok(None);
    }
    let Some(job) = journal.job_by_key(&crate::alerts::firing_key(&alert.name, fired))? else {
        return Ok(None);
    };
    let answered = |key: &str| {
        job.result
            .as_ref()
            .and_then(|result| result.get(key))
            .and_then(serde_json::Value::as_str)
            .map(String::from)
    };
    Ok(answered("channel").zip(answered("ts")))
}

/// A message's permalink as Slack's `chat.getPermalink` answers it:
/// `https://WORKSPACE.slack.com/archives/CHANNEL/pTS`, the `ts` without its dot.
fn permalink(workspace: &url::Url, channel: &str, ts: &str) -> String {
    format!(
        "{}/archives/{}/p{}",
        workspace.as_str().trim_end_matches('/'),
        percent_encoding::utf8_percent_encode(channel, percent_encoding::NON_ALPHANUMERIC),
        ts.replace('.', "")
    )
}

#[derive(Template)]
#[template(path = "console/deadlines.html")]
struct DeadlinesPage<'a> {
    css: &'a str,
    notice: Option<String>,
    /// (name, last due, last check-in, missed due).
    clocks: Vec<(String, String, String, Option<String>)>,
}

async fn deadlines(console: &Console, notice: Option<String>) -> Response<Body> {
    let clocks = match blocking(&console.journal, |j| j.clocks()).await {
        Ok(clocks) => clocks,
        Err(error) => return journal_error(error),
    };
    let page = DeadlinesPage {
        css: css_path(),
        notice,
        clocks: clocks
            .into_iter()
            .map(|c| {
                (
                    c.name,
                    rfc3339(c.last_due_ms),
                    optional_time(c.last_check_in_ms),
                    c.missed_due_ms.map(rfc3339),
                )
            })
            .collect(),
    };
    html(StatusCode::OK, page.render())
}

#[derive(Template)]
#[template(path = "console/rules.html")]
struct RulesPage<'a> {
    css: &'a str,
    notice: Option<String>,
    rules: Vec<(String, String)>,
    errors: Vec<String>,
}

fn rules(console: &Console, notice: Option<String>) -> Response<Body> {
    let set = console.rules.load();
    let page = RulesPage {
        css: css_path(),
        notice,
        rules: set
            .rules
            .values()
            .map(|rule| (rule.name.clone(), rule.path.display().to_string()))
            .collect(),
        errors: set.errors.iter().map(ToString::to_string).collect(),
    };
    html(StatusCode::OK, page.render())
}

/// Every POST that passed the checks: the CLI's writes, then a redirect (post/redirect/get).
pub(super) async fn write(console: &Console, request: &Request) -> Response<Body> {
    let path = request.path.as_str();
    if let Some(id) = path
        .strip_prefix("/actions/")
        .and_then(|rest| rest.strip_suffix("/retry"))
    {
        let Ok(id) = id.parse::<i64>() else {
            return error_page(StatusCode::NOT_FOUND, "Not found", "No such action.");
        };
        return retry(console, vec![id]).await;
    }
    match path {
        "/actions/retry" => {
            let ids: Vec<i64> = request
                .form_params("id")
                .iter()
                .filter_map(|id| id.parse().ok())
                .collect();
            if ids.is_empty() {
                return redirect("/actions?status=dead&notice=Nothing+was+selected.");
            }
            retry(console, ids).await
        }
        "/actions/retry-all" => {
            let kind = request.form_param("kind");
            let dead = blocking(&console.journal, |j| {
                j.jobs(Some(JobStatus::Dead), RETRY_ALL_LIMIT)
            })
            .await;
            match dead {
                Ok(dead) => {
                    let ids = dead
                        .into_iter()
                        .filter(|job| kind.as_ref().map_or(true, |wanted| *wanted == job.kind))
                        .map(|job| job.id)
                        .collect();
                    retry(console, ids).await
                }
                Err(error) => journal_error(error),
            }
        }
        "/alerts/mute" | "/alerts/unmute" => mute(console, request, path == "/alerts/mute").await,
        _ => error_page(StatusCode::NOT_FOUND, "Not found", "No such form."),
    }
}

/// Re-queues dead actions as `freshet retry` does, then back to the dead actions.
async fn retry(console: &Console, ids: Vec<i64>) -> Response<Body> {
    let count = ids.len();
    let done = blocking(&console.journal, move |j| {
        let mut queued = 0;
        let mut merged = 0;
        for id in ids {
            match j.retry(id) {
                Ok(crate::journal::Retried::Queued) => queued += 1,
                Ok(crate::journal::Retried::MergedInto(_)) => merged += 1,
                // Not dead (any more): another click or another person was first.
                Err(crate::journal::JournalError::Refused(_)) => {}
                Err(error) => return Err(error),
            }
        }
        Ok((queued, merged))
    })
    .await;
    match done {
        Ok((queued, merged)) => {
            tracing::info!(
                asked = count,
                queued,
                merged,
                "Dead actions retried from the console."
            );
            redirect(&format!(
                "/actions?status=dead&notice={}",
                url::form_urlencoded::byte_serialize(
                    format!("{queued} re-queued, {merged} merged into an identical pending call.")
                        .as_bytes()
                )
                .collect::<String>()
            ))
        }
        Err(error) => journal_error(error),
    }
}

/// Mutes (`for` 1h, 4h or 1d, with a reason) or unmutes an alert, as `freshet alerts`.
async fn mute(console: &Console, request: &Request, muting: bool) -> Response<Body> {
    let Some(name) = request.form_param("name") else {
        return error_page(
            StatusCode::BAD_REQUEST,
            "No alert",
            "The form names no alert.",
        );
    };
    let until = if muting {
        let hours = match request.form_param("for").as_deref() {
            Some("1h") => 1,
            Some("4h") => 4,
            Some("1d") => 24,
            _ => {
                return error_page(
                    StatusCode::BAD_REQUEST,
                    "No duration",
                    "Choose how long to mute.",
                )
            }
        };
        Some(chrono::Utc::now().timestamp_millis() + hours * 3600 * 1000)
    } else {
        None
    };
    let reason = request.form_param("reason").filter(|_| muting);
    let alert = name.clone();
    let done = blocking(&console.journal, move |j| {
        j.mute_alert(&alert, until, reason.as_deref())
    })
    .await;
    match done {
        Ok(true) => {
            tracing::info!(alert = %name, muted = muting, "Alert mute changed from the console.");
            redirect("/alerts")
        }
        Ok(false) => error_page(
            StatusCode::NOT_FOUND,
            "No such alert",
            "The journal holds no alert by that name.",
        ),
        Err(error) => journal_error(error),
    }
}
