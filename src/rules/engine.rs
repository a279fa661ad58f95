//! The one Rhai engine every rule runs on: built once with every sandbox limit set, the
//! rule API registered, and then shared read-only (`sync` feature) by all evaluations.

use std::cell::Cell;
use std::time::{Duration, Instant};

use rhai::{Dynamic, Engine, EvalAltResult, ImmutableString, NativeCallContext};

use super::api::{self, Fallible};
use super::memory;

/// Wall-clock budget of one rule evaluation, on top of the operation limit.
pub const WALL_CLOCK_LIMIT: Duration = Duration::from_secs(2);
/// Recursion depth of rule functions.
pub const MAX_CALL_LEVELS: usize = 32;
/// Longest string a rule may build (bytes).
pub const MAX_STRING_SIZE: usize = 1 << 20;
/// Largest array a rule may build (Mode results may hold `max_result_rows` rows).
pub const MAX_ARRAY_SIZE: usize = 100_000;
/// Largest object map a rule may build.
pub const MAX_MAP_SIZE: usize = 10_000;
/// Most memory one rule evaluation may hold on to at once (see `memory.rs` for how it
/// is counted).
pub const MAX_EVALUATION_BYTES: i64 = 64 << 20;

/// The limits of the evaluation running on a thread.
#[derive(Clone, Copy)]
struct Budget {
    /// When it must stop.
    deadline: Instant,
    /// The thread's live-bytes counter when it started ([`memory`]).
    memory_at_start: i64,
}

thread_local! {
    /// The budget of the evaluation running on this thread, if any.
    static BUDGET: Cell<Option<Budget>> = const { Cell::new(None) };
}

/// Runs `f` with a wall-clock deadline and a memory budget for the rule evaluated in it.
pub fn with_budget<T>(limit: Duration, f: impl FnOnce() -> T) -> T {
    BUDGET.with(|b| {
        b.set(Some(Budget {
            deadline: Instant::now() + limit,
            memory_at_start: memory::live_bytes(),
        }))
    });
    let result = f();
    BUDGET.with(|b| b.set(None));
    result
}

/// Why the evaluation running on this thread must stop now, if it must.
fn over_budget(operations: u64) -> Option<&'static str> {
    let budget = BUDGET.with(Cell::get)?;
    if memory::live_bytes() - budget.memory_at_start > MAX_EVALUATION_BYTES {
        return Some("memory limit exceeded");
    }
    // Reading the clock on every operation would dominate small rules; every 1024 is
    // frequent enough for a budget counted in seconds.
    (operations % 1024 == 0 && Instant::now() >= budget.deadline)
        .then_some("wall-clock limit exceeded")
}

/// Builds the sandboxed engine with `max_operations` per evaluation.
pub fn build_engine(max_operations: u64) -> Engine {
    let mut engine = Engine::new();
    engine.set_max_operations(max_operations);
    engine.set_max_call_levels(MAX_CALL_LEVELS);
    engine.set_max_expr_depths(64, 32);
    engine.set_max_string_size(MAX_STRING_SIZE);
    engine.set_max_array_size(MAX_ARRAY_SIZE);
    engine.set_max_map_size(MAX_MAP_SIZE);
    // Rules never import modules: no module resolver means no file access through `import`.
    engine.set_max_modules(0);
    engine.set_module_resolver(rhai::module_resolvers::DummyModuleResolver::new());
    engine.disable_symbol("eval");
    engine.set_strict_variables(true);
    engine.on_progress(|operations| over_budget(operations).map(Dynamic::from));
    engine.on_print(|text| api::record_log(rhai::Position::NONE, text.to_string()));
    engine.on_debug(|text, _source, position| api::record_log(position, text.to_string()));
    api::register(&mut engine);
    register_checked_replace(&mut engine);
    engine
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
