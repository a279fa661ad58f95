//! The functions rules call (docs/rules.md). None of them does anything by itself: each
//! one only *records* the call, with its position, for the evaluation to journal. That
//! keeps an evaluation free of side effects, and `check` and `test` true dry runs. The
//! action functions are defined with their action (`actions/`); this file holds the
//! recording they share, `log` and `slack_escape`.
//!
//! The record lives in a thread-local for the length of one evaluation: Rhai is
//! synchronous, so an evaluation runs start to end on the thread that set it up.

use std::cell::RefCell;

use rhai::{Dynamic, Engine, EvalAltResult, Map, NativeCallContext, Position};

use crate::actions::ActionRequest;

/// One action call made by a rule.
#[derive(Debug, Clone, PartialEq)]
pub struct RecordedCall {
    pub request: ActionRequest,
    /// The arguments as the rule wrote them: a list for positional calls, the map for a
    /// call with one map (what rule tests compare against, docs/behaviour.md section 8).
    pub written: serde_json::Value,
    pub line: usize,
    pub column: usize,
}

/// Most action calls one rule may make for one event (docs/behaviour.md section 11).
pub const MAX_CALLS: usize = 100;
/// Largest serialized arguments of one action call, in bytes (docs/behaviour.md section 11).
pub const MAX_CALL_ARGS_BYTES: usize = 64 << 10;
/// Most `log`/`print`/`debug` lines kept from one evaluation: a rule printing in a loop
/// must not fill memory or the log.
const MAX_LOG_LINES: usize = 100;
/// The longest text a rule can put in a log line or the journal: a `log()` line, or a
/// rule's error message (docs/behaviour.md section 11).
pub const MAX_TEXT_BYTES: usize = 4 << 10;

/// `text` cut to [`MAX_TEXT_BYTES`] at a character boundary, with `…` where it was cut.
pub fn capped(mut text: String) -> String {
    if text.len() > MAX_TEXT_BYTES {
        let mut end = MAX_TEXT_BYTES;
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        text.truncate(end);
        text.push('…');
    }
    text
}

/// What one rule evaluation recorded.
#[derive(Debug, Default)]
pub struct Recording {
    pub calls: Vec<RecordedCall>,
    /// `log(..)`, `print(..)` and `debug(..)` lines, with their line number.
    pub logs: Vec<(usize, String)>,
    /// Log lines past `MAX_LOG_LINES`, counted but not kept.
    pub logs_dropped: usize,
}

thread_local! {
    static RECORDING: RefCell<Option<Recording>> = const { RefCell::new(None) };
}

/// Runs `f` with an empty recording and returns what it recorded.
pub fn recording<T>(f: impl FnOnce() -> T) -> (T, Recording) {
    RECORDING.with(|r| *r.borrow_mut() = Some(Recording::default()));
    let result = f();
    let recorded = RECORDING
        .with(|r| r.borrow_mut().take())
        .unwrap_or_default();
    (result, recorded)
}

/// Records an action call, refusing one over the limits of docs/behaviour.md section 11: the error
/// stops the rule, and the calls it made in this run are then dropped with it.
pub(crate) fn record(
    ctx: &NativeCallContext,
    request: ActionRequest,
    written: serde_json::Value,
) -> Fallible {
    let size = serde_json::to_vec(&request.args()).map_or(usize::MAX, |bytes| bytes.len());
    if size > MAX_CALL_ARGS_BYTES {
        return Err(bad_argument(
            ctx,
            format!(
                "{}: the arguments are {size} bytes, over the limit of {MAX_CALL_ARGS_BYTES} bytes per call",
                request.kind()
            ),
        ));
    }
    let position = ctx.call_position();
    RECORDING.with(|r| {
        let mut recording = r.borrow_mut();
        let Some(recording) = recording.as_mut() else {
            return Ok(());
        };
        if recording.calls.len() >= MAX_CALLS {
            return Err(bad_argument(
                ctx,
                format!(
                    "{}: more than {MAX_CALLS} action calls for one event",
                    request.kind()
                ),
            ));
        }
        recording.calls.push(RecordedCall {
            request,
            written,
            line: position.line().unwrap_or(0),
            column: position.position().unwrap_or(0),
        });
        Ok(())
    })
}

/// Records a log line from the rule (also used for `print` and `debug`).
pub fn record_log(position: Position, text: String) {
    RECORDING.with(|r| {
        let mut recording = r.borrow_mut();
        let Some(recording) = recording.as_mut() else {
            return;
        };
        if recording.logs.len() >= MAX_LOG_LINES {
            recording.logs_dropped += 1;
            return;
        }
        recording
            .logs
            .push((position.line().unwrap_or(0), capped(text)));
    });
}

pub(crate) type Fallible = Result<(), Box<EvalAltResult>>;

pub(crate) fn bad_argument(ctx: &NativeCallContext, message: String) -> Box<EvalAltResult> {
    EvalAltResult::ErrorRuntime(message.into(), ctx.call_position()).into()
}

pub(crate) fn non_empty(
    ctx: &NativeCallContext,
    function: &str,
    what: &str,
    value: &str,
) -> Result<String, Box<EvalAltResult>> {
    if value.trim().is_empty() {
        Err(bad_argument(
            ctx,
            format!("{function}: {what} must not be empty"),
        ))
    } else {
        Ok(value.to_string())
    }
}

pub(crate) fn to_json(
    ctx: &NativeCallContext,
    function: &str,
    map: Map,
) -> Result<serde_json::Map<String, serde_json::Value>, Box<EvalAltResult>> {
    match rhai::serde::from_dynamic::<serde_json::Value>(&Dynamic::from_map(map)) {
        Ok(serde_json::Value::Object(object)) => Ok(object),
        Ok(_) => Err(bad_argument(ctx, format!("{function}: expected a map"))),
        Err(error) => Err(bad_argument(ctx, format!("{function}: {error}"))),
    }
}

pub(crate) fn get_string(map: &Map, key: &str) -> Option<String> {
    map.get(key).filter(|v| !v.is_unit()).map(|v| v.to_string())
}

/// A rule's value as plain JSON (for the arguments as written).
pub(crate) fn to_plain_json(value: &Dynamic) -> serde_json::Value {
    rhai::serde::from_dynamic::<serde_json::Value>(value)
        .unwrap_or_else(|_| serde_json::Value::String(value.to_string()))
}

/// Escapes `&`, `<` and `>` for Slack mrkdwn, for text that came from data.
pub fn slack_escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

/// The services `configured(NAME)` knows (docs/behaviour.md section 17).
pub const SERVICES: [&str; 8] = [
    "slack",
    "slack_webhook",
    "tableau",
    "mode",
    "dbt_api",
    "pagerduty",
    "hex",
    "powerbi",
];

/// The services whose config is complete, as `configured(NAME)` answers it: set by
/// `serve` from its config (and on reload), by `freshet test` from the config it reads,
/// by a rule test from its `configured` list. Unset: every service counts as configured.
static CONFIGURED: std::sync::RwLock<Option<std::collections::BTreeSet<String>>> =
    std::sync::RwLock::new(None);

/// Sets what `configured(NAME)` answers from now on (None: true for every service).
pub fn set_configured(services: Option<std::collections::BTreeSet<String>>) {
    *CONFIGURED.write().unwrap_or_else(|p| p.into_inner()) = services;
}

/// Registers every rule function on `engine`: each action's (`actions/`), `log`,
/// `slack_escape` and `configured`.
pub fn register(engine: &mut Engine) {
    ActionRequest::register_rule_functions(engine);
    engine.register_fn(
        "configured",
        |ctx: NativeCallContext, service: &str| -> Result<bool, Box<EvalAltResult>> {
            if !SERVICES.contains(&service) {
                return Err(bad_argument(
                    &ctx,
                    format!(
                        "configured: no service {service:?} ({})",
                        SERVICES.join(", ")
                    ),
                ));
            }
            let configured = CONFIGURED.read().unwrap_or_else(|p| p.into_inner());
            Ok(configured
                .as_ref()
                .map_or(true, |set| set.contains(service)))
        },
    );
    engine.register_fn("log", |ctx: NativeCallContext, value: Dynamic| {
        record_log(ctx.call_position(), value.to_string());
    });
    engine.register_fn("slack_escape", |text: &str| slack_escape(text));
}
