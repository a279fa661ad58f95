//! The functions rules call (SPEC section 5). None of them does anything by itself: each
//! one only *records* the call, with its position, for the evaluation to journal. That
//! keeps an evaluation free of side effects, and `check` and `test` true dry runs.
//!
//! The record lives in a thread-local for the length of one evaluation: Rhai is
//! synchronous, so an evaluation runs start to end on the thread that set it up.

use std::cell::RefCell;

use rhai::{Dynamic, Engine, EvalAltResult, ImmutableString, Map, NativeCallContext, Position};

use super::engine::MAX_STRING_SIZE;

use crate::actions::ActionRequest;

/// One action call made by a rule.
#[derive(Debug, Clone, PartialEq)]
pub struct RecordedCall {
    pub request: ActionRequest,
    /// The arguments as the rule wrote them: a list for positional calls, the map for a
    /// call with one map (what rule tests compare against, SPEC section 8).
    pub written: serde_json::Value,
    pub line: usize,
    pub column: usize,
}

/// Most action calls one rule may make for one event (SPEC section 11).
pub const MAX_CALLS: usize = 100;
/// Largest serialized arguments of one action call, in bytes (SPEC section 11).
pub const MAX_CALL_ARGS_BYTES: usize = 64 << 10;
/// Most `log`/`print`/`debug` lines kept from one evaluation, and the longest kept line:
/// a rule printing in a loop must not fill memory or the log.
const MAX_LOG_LINES: usize = 100;
const MAX_LOG_LINE_BYTES: usize = 4 << 10;

/// What one rule evaluation recorded.
#[derive(Debug, Default)]
pub struct Recording {
    pub calls: Vec<RecordedCall>,
    /// `log(..)`, `print(..)` and `debug(..)` lines, with their line number.
    pub logs: Vec<(usize, String)>,
    /// Log lines past [`MAX_LOG_LINES`], counted but not kept.
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

/// Records an action call, refusing one over the limits of SPEC section 11: the error stops
/// the rule, and the calls it made in this run are then dropped with it.
fn record(ctx: &NativeCallContext, request: ActionRequest, written: serde_json::Value) -> Fallible {
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
pub fn record_log(position: Position, mut text: String) {
    RECORDING.with(|r| {
        let mut recording = r.borrow_mut();
        let Some(recording) = recording.as_mut() else {
            return;
        };
        if recording.logs.len() >= MAX_LOG_LINES {
            recording.logs_dropped += 1;
            return;
        }
        if text.len() > MAX_LOG_LINE_BYTES {
            let mut end = MAX_LOG_LINE_BYTES;
            while !text.is_char_boundary(end) {
                end -= 1;
            }
            text.truncate(end);
            text.push('…');
        }
        recording.logs.push((position.line().unwrap_or(0), text));
    });
}

type Fallible = Result<(), Box<EvalAltResult>>;

fn bad_argument(ctx: &NativeCallContext, message: String) -> Box<EvalAltResult> {
    EvalAltResult::ErrorRuntime(message.into(), ctx.call_position()).into()
}

fn non_empty(
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

fn to_json(
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

fn get_string(map: &Map, key: &str) -> Option<String> {
    map.get(key).filter(|v| !v.is_unit()).map(|v| v.to_string())
}

/// `slack_post` with a map: `text` (required, the notification fallback), `blocks`, and
/// `thread_ts` (post as a reply in that message's thread, SPEC section 7).
fn slack_message(ctx: &NativeCallContext, channel: Option<String>, message: Map) -> Fallible {
    let written_map = to_plain_json(&Dynamic::from_map(message.clone()));
    let written = match &channel {
        Some(channel) => serde_json::json!([channel, written_map]),
        None => written_map,
    };
    for key in message.keys() {
        if !["text", "blocks", "thread_ts"].contains(&key.as_str()) {
            return Err(bad_argument(
                ctx,
                format!("slack_post: unknown key `{key}` (text, blocks, thread_ts)"),
            ));
        }
    }
    let text = get_string(&message, "text").ok_or_else(|| {
        bad_argument(
            ctx,
            "slack_post: the map needs a `text` (the notification fallback)".into(),
        )
    })?;
    let blocks = match message.get("blocks") {
        None => None,
        Some(blocks) if blocks.is_array() => Some(
            rhai::serde::from_dynamic::<serde_json::Value>(blocks)
                .map_err(|e| bad_argument(ctx, format!("slack_post: blocks: {e}")))?,
        ),
        Some(_) => {
            return Err(bad_argument(
                ctx,
                "slack_post: `blocks` must be an array".into(),
            ))
        }
    };
    let thread_ts = get_string(&message, "thread_ts");
    if thread_ts.is_some() && channel.is_none() {
        return Err(bad_argument(
            ctx,
            "slack_post: thread_ts needs a channel: slack_post(channel, #{ text, thread_ts })"
                .into(),
        ));
    }
    record(
        ctx,
        ActionRequest::SlackPost {
            channel,
            text,
            blocks,
            thread_ts,
            thread_of: None,
        },
        written,
    )
}

/// A rule's value as plain JSON (for the arguments as written).
fn to_plain_json(value: &Dynamic) -> serde_json::Value {
    rhai::serde::from_dynamic::<serde_json::Value>(value)
        .unwrap_or_else(|_| serde_json::Value::String(value.to_string()))
}

/// `tableau_refresh(#{ workbook, project })` and `tableau_refresh_datasource(#{
/// datasource, project })`: the name, and the project that holds it.
fn tableau_target(
    ctx: &NativeCallContext,
    function: &str,
    name_key: &str,
    map: &Map,
) -> Result<(String, Option<String>), Box<EvalAltResult>> {
    for key in map.keys() {
        if key.as_str() != name_key && key.as_str() != "project" {
            return Err(bad_argument(
                ctx,
                format!("{function}: unknown key `{key}` ({name_key}, project)"),
            ));
        }
    }
    let name = get_string(map, name_key)
        .ok_or_else(|| bad_argument(ctx, format!("{function}: the map needs `{name_key}`")))?;
    let name = non_empty(ctx, function, &format!("`{name_key}`"), &name)?;
    let project = match get_string(map, "project") {
        Some(project) => Some(non_empty(ctx, function, "`project`", &project)?),
        None => None,
    };
    Ok((name, project))
}

fn alert(
    ctx: &NativeCallContext,
    name: &str,
    firing: bool,
    options: Map,
    written: serde_json::Value,
) -> Fallible {
    let name = non_empty(ctx, "alert", "the name", name)?;
    let text = get_string(&options, "text")
        .ok_or_else(|| bad_argument(ctx, "alert: options need a `text`".into()))?;
    let channel = get_string(&options, "channel");
    let renotify_minutes = match options.get("renotify_minutes") {
        None => None,
        Some(value) => match value.as_int() {
            Ok(minutes) if minutes > 0 => Some(minutes as u64),
            _ => {
                return Err(bad_argument(
                    ctx,
                    "alert: renotify_minutes must be a positive integer".into(),
                ))
            }
        },
    };
    let resolve = match options.get("resolve") {
        None => true,
        Some(value) => value
            .as_bool()
            .map_err(|_| bad_argument(ctx, "alert: resolve must be true or false".into()))?,
    };
    for key in options.keys() {
        if !["text", "channel", "renotify_minutes", "resolve"].contains(&key.as_str()) {
            return Err(bad_argument(ctx, format!("alert: unknown option `{key}`")));
        }
    }
    record(
        ctx,
        ActionRequest::Alert {
            name,
            firing,
            text,
            channel,
            renotify_minutes,
            resolve,
        },
        written,
    )
}

/// Escapes `&`, `<` and `>` for Slack mrkdwn, for text that came from data.
pub fn slack_escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

/// Registers every rule function on `engine`.
pub fn register(engine: &mut Engine) {
    engine.register_fn(
        "mode_run",
        |ctx: NativeCallContext, report: &str| -> Fallible {
            let report = non_empty(&ctx, "mode_run", "the report token", report)?;
            let written = serde_json::json!([report]);
            record(
                &ctx,
                ActionRequest::ModeRun {
                    report,
                    parameters: Default::default(),
                },
                written,
            )
        },
    );
    engine.register_fn(
        "mode_run",
        |ctx: NativeCallContext, report: &str, params: Map| -> Fallible {
            let report = non_empty(&ctx, "mode_run", "the report token", report)?;
            let parameters = to_json(&ctx, "mode_run", params)?;
            let written = serde_json::json!([report, parameters]);
            record(&ctx, ActionRequest::ModeRun { report, parameters }, written)
        },
    );
    engine.register_fn(
        "tableau_refresh",
        |ctx: NativeCallContext, workbook: &str| -> Fallible {
            let workbook = non_empty(&ctx, "tableau_refresh", "the workbook name", workbook)?;
            let written = serde_json::json!([workbook]);
            record(
                &ctx,
                ActionRequest::TableauRefresh {
                    workbook,
                    project: None,
                },
                written,
            )
        },
    );
    engine.register_fn(
        "tableau_refresh",
        |ctx: NativeCallContext, target: Map| -> Fallible {
            let (workbook, project) = tableau_target(&ctx, "tableau_refresh", "workbook", &target)?;
            let written = to_plain_json(&Dynamic::from_map(target));
            record(
                &ctx,
                ActionRequest::TableauRefresh { workbook, project },
                written,
            )
        },
    );
    engine.register_fn(
        "tableau_refresh_datasource",
        |ctx: NativeCallContext, name: &str| -> Fallible {
            let datasource = non_empty(
                &ctx,
                "tableau_refresh_datasource",
                "the data source name",
                name,
            )?;
            let written = serde_json::json!([datasource]);
            record(
                &ctx,
                ActionRequest::TableauRefreshDatasource {
                    datasource,
                    project: None,
                },
                written,
            )
        },
    );
    engine.register_fn(
        "tableau_refresh_datasource",
        |ctx: NativeCallContext, target: Map| -> Fallible {
            let (datasource, project) =
                tableau_target(&ctx, "tableau_refresh_datasource", "datasource", &target)?;
            let written = to_plain_json(&Dynamic::from_map(target));
            record(
                &ctx,
                ActionRequest::TableauRefreshDatasource {
                    datasource,
                    project,
                },
                written,
            )
        },
    );
    engine.register_fn(
        "slack_post",
        |ctx: NativeCallContext, text: &str| -> Fallible {
            let text = non_empty(&ctx, "slack_post", "the text", text)?;
            let written = serde_json::json!([text]);
            record(
                &ctx,
                ActionRequest::SlackPost {
                    channel: None,
                    text,
                    blocks: None,
                    thread_ts: None,
                    thread_of: None,
                },
                written,
            )
        },
    );
    engine.register_fn(
        "slack_post",
        |ctx: NativeCallContext, message: Map| -> Fallible { slack_message(&ctx, None, message) },
    );
    engine.register_fn(
        "slack_post",
        |ctx: NativeCallContext, channel: &str, text: &str| -> Fallible {
            let channel = non_empty(&ctx, "slack_post", "the channel", channel)?;
            let text = non_empty(&ctx, "slack_post", "the text", text)?;
            let written = serde_json::json!([channel, text]);
            record(
                &ctx,
                ActionRequest::SlackPost {
                    channel: Some(channel),
                    text,
                    blocks: None,
                    thread_ts: None,
                    thread_of: None,
                },
                written,
            )
        },
    );
    engine.register_fn(
        "slack_post",
        |ctx: NativeCallContext, channel: &str, message: Map| -> Fallible {
            let channel = non_empty(&ctx, "slack_post", "the channel", channel)?;
            slack_message(&ctx, Some(channel), message)
        },
    );
    engine.register_fn(
        "alert",
        |ctx: NativeCallContext, name: &str, firing: bool, text: &str| -> Fallible {
            let written = serde_json::json!([name, firing, text]);
            let mut options = Map::new();
            options.insert("text".into(), Dynamic::from(ImmutableString::from(text)));
            alert(&ctx, name, firing, options, written)
        },
    );
    engine.register_fn(
        "alert",
        |ctx: NativeCallContext, name: &str, firing: bool, options: Map| -> Fallible {
            let written = serde_json::json!([
                name,
                firing,
                to_plain_json(&Dynamic::from_map(options.clone()))
            ]);
            alert(&ctx, name, firing, options, written)
        },
    );
    engine.register_fn("log", |ctx: NativeCallContext, value: Dynamic| {
        record_log(ctx.call_position(), value.to_string());
    });
    engine.register_fn("slack_escape", |text: &str| slack_escape(text));
    register_checked_replace(engine);
}

/// Replaces Rhai's own `replace` for strings, which builds its result before the engine
/// checks the size: `s.replace("x", s)` on a 1 MB string would ask for a terabyte. These
/// compute the result's length first and refuse one over the string limit. Registered in
/// the engine's own namespace, they take precedence over the standard package's.
fn register_checked_replace(engine: &mut Engine) {
    fn checked(
        ctx: &NativeCallContext,
        string: &mut ImmutableString,
        find: &str,
        substitute: &str,
    ) -> Fallible {
        if find.is_empty() {
            // As Rhai's own: an empty pattern matches between every two characters.
            let count = string.chars().count() + 1;
            ensure_string_size(ctx, string.len() + count.saturating_mul(substitute.len()))?;
        } else if substitute.len() > find.len() {
            let count = string.matches(find).count();
            let grows = count.saturating_mul(substitute.len() - find.len());
            ensure_string_size(ctx, string.len().saturating_add(grows))?;
        }
        *string = string.replace(find, substitute).into();
        Ok(())
    }
    engine.register_fn(
        "replace",
        |ctx: NativeCallContext, string: &mut ImmutableString, find: &str, substitute: &str| {
            checked(&ctx, string, find, substitute)
        },
    );
    engine.register_fn(
        "replace",
        |ctx: NativeCallContext, string: &mut ImmutableString, find: &str, substitute: char| {
            checked(&ctx, string, find, substitute.encode_utf8(&mut [0; 4]))
        },
    );
    engine.register_fn(
        "replace",
        |ctx: NativeCallContext, string: &mut ImmutableString, find: char, substitute: &str| {
            checked(&ctx, string, find.encode_utf8(&mut [0; 4]), substitute)
        },
    );
    engine.register_fn(
        "replace",
        |ctx: NativeCallContext, string: &mut ImmutableString, find: char, substitute: char| {
            checked(
                &ctx,
                string,
                find.encode_utf8(&mut [0; 4]),
                substitute.encode_utf8(&mut [0; 4]),
            )
        },
    );
}

fn ensure_string_size(ctx: &NativeCallContext, length: usize) -> Fallible {
    if length > MAX_STRING_SIZE {
        return Err(EvalAltResult::ErrorDataTooLarge(
            "Length of string".into(),
            ctx.call_position(),
        )
        .into());
    }
    Ok(())
}
