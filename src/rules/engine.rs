//! The one Rhai engine every rule runs on: built once with every sandbox limit set, the
//! rule API registered, and then shared read-only (`sync` feature) by all evaluations.

use std::cell::Cell;
use std::time::{Duration, Instant};

use rhai::{Dynamic, Engine};

use super::api;

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

thread_local! {
    /// When the evaluation running on this thread must stop.
    static DEADLINE: Cell<Option<Instant>> = const { Cell::new(None) };
}

/// Runs `f` with a wall-clock deadline for the rule evaluated inside it.
pub fn with_deadline<T>(limit: Duration, f: impl FnOnce() -> T) -> T {
    DEADLINE.with(|d| d.set(Some(Instant::now() + limit)));
    let result = f();
    DEADLINE.with(|d| d.set(None));
    result
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
    engine.on_progress(|operations| {
        // Reading the clock on every operation would dominate small rules; every 1024 is
        // frequent enough for a budget counted in seconds.
        if operations % 1024 != 0 {
            return None;
        }
        let expired = DEADLINE.with(|d| d.get().is_some_and(|deadline| Instant::now() >= deadline));
        expired.then(|| Dynamic::from("wall-clock limit exceeded"))
    });
    engine.on_print(|text| api::record_log(rhai::Position::NONE, text.to_string()));
    engine.on_debug(|text, _source, position| api::record_log(position, text.to_string()));
    api::register(&mut engine);
    engine
}
