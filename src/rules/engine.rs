//! The one Rhai engine every rule runs on: built once with every sandbox limit set, the
//! rule API registered, and then shared read-only (`sync` feature) by all evaluations.

use std::cell::Cell;
use std::time::{Duration, Instant};

use rhai::{Dynamic, Engine};

use super::{api, memory};

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
    if memory::live_bytes() - budget.memory_at_start > memory::MAX_EVALUATION_BYTES {
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
    engine
}
