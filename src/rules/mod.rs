//! Rules: every `*.rhai` file in the rules folder is one rule, run on every event with
//! `event` and `vars` in scope (docs/behaviour.md section 5). Compiled once, evaluated many times
//! on one frozen, sandboxed engine, with a fresh scope per evaluation so no state leaks.
//!
//! - [`engine`]: the sandboxed engine and its limits.
//! - [`api`]: the functions rules call; they only record.
//! - [`lint`]: the name checks of `freshet check` (unknown functions, argument counts).
//! - [`load`]: compile a folder, keeping the last good version of a broken file.
//! - [`memory`]: the memory budget of one evaluation.
//! - [`watch`]: hot reload (notify, debounced) into an `ArcSwap<RuleSet>`.

pub mod api;
pub mod engine;
pub mod lint;
pub mod load;
pub mod memory;
pub mod watch;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;

use rhai::{Dynamic, Engine, EvalAltResult, Scope, AST};
use serde_json::Value;

pub use api::RecordedCall;
pub use load::RuleError;

/// One compiled rule.
#[derive(Debug)]
pub struct Rule {
    pub name: String,
    pub path: PathBuf,
    pub ast: Arc<AST>,
    /// SHA-256 of the source the AST was compiled from.
    pub digest: [u8; 32],
}

/// The rules in force, by name, and the compile errors of the last load.
#[derive(Debug, Default, Clone)]
pub struct RuleSet {
    pub rules: BTreeMap<String, Arc<Rule>>,
    /// Files that failed to compile (their last good version, if any, is in `rules`).
    pub errors: Vec<RuleError>,
    /// How many files this load compiled (the others were unchanged and kept).
    pub compiled: usize,
}

/// What one rule did with one event.
#[derive(Debug)]
pub struct RuleResult {
    pub rule: String,
    pub calls: Vec<RecordedCall>,
    pub logs: Vec<(usize, String)>,
    /// Set when the rule raised an error or hit a limit; its calls are then discarded.
    pub error: Option<(RuleError, Box<EvalAltResult>)>,
}

impl RuleSet {
    /// Runs every rule on `event`. A rule that fails is stopped and reported; the others
    /// still run. Blocking: call it off the async workers.
    pub fn evaluate(&self, engine: &Engine, event: &Value, vars: &Value) -> Vec<RuleResult> {
        self.evaluate_only(engine, || event.clone(), vars, None)
    }

    /// Like [`RuleSet::evaluate`], with only the rule named `only`, when given (`freshet
    /// replay --rule`).
    pub fn evaluate_only(
        &self,
        engine: &Engine,
        event: impl FnOnce() -> Value,
        vars: &Value,
        only: Option<&str>,
    ) -> Vec<RuleResult> {
        let rules: Vec<&Arc<Rule>> = self
            .rules
            .values()
            .filter(|rule| only.map_or(true, |name| rule.name == name))
            .collect();
        // The event's JSON is built only when a rule will read it.
        if rules.is_empty() {
            return Vec::new();
        }
        let event = to_dynamic(&event());
        let vars = to_dynamic(vars);
        rules
            .into_iter()
            .map(|rule| evaluate_rule(engine, rule, &event, &vars))
            .collect()
    }
}

fn to_dynamic(value: &Value) -> Dynamic {
    // JSON always maps onto Rhai values (maps, arrays, strings, INT/FLOAT, bool, unit).
    rhai::serde::to_dynamic(value).unwrap_or(Dynamic::UNIT)
}

fn evaluate_rule(engine: &Engine, rule: &Rule, event: &Dynamic, vars: &Dynamic) -> RuleResult {
    let mut scope = Scope::new();
    scope.push_constant("event", event.clone());
    scope.push_constant("vars", vars.clone());
    let (result, mut recording) = api::recording(|| {
        engine::with_budget(engine::WALL_CLOCK_LIMIT, || {
            engine.run_ast_with_scope(&mut scope, &rule.ast)
        })
    });
    if recording.logs_dropped > 0 {
        recording.logs.push((
            0,
            format!(
                "... {} more log lines of this evaluation were dropped",
                recording.logs_dropped
            ),
        ));
    }
    match result {
        Ok(()) => RuleResult {
            rule: rule.name.clone(),
            calls: recording.calls,
            logs: recording.logs,
            error: None,
        },
        Err(error) => {
            let message = describe(&error);
            RuleResult {
                rule: rule.name.clone(),
                calls: Vec::new(),
                logs: recording.logs,
                error: Some((RuleError::new(&rule.path, error.position(), message), error)),
            }
        }
    }
}

/// A one-line description of a runtime error, naming the limit when one was hit.
fn describe(error: &EvalAltResult) -> String {
    match error {
        EvalAltResult::ErrorTooManyOperations(_) => {
            "stopped: operation limit (rules.max_operations) exceeded".into()
        }
        EvalAltResult::ErrorStackOverflow(_) => "stopped: call depth limit exceeded".into(),
        EvalAltResult::ErrorTerminated(reason, _) => format!("stopped: {reason}"),
        EvalAltResult::ErrorDataTooLarge(what, _) => {
            format!("stopped: {what} exceeds its size limit")
        }
        EvalAltResult::ErrorRuntime(message, _) => message.to_string(),
        other => {
            // Rhai appends " (line N, position M)" to its Display; our prefix has it already.
            let text = other.to_string();
            match text.rfind(" (line ") {
                Some(index) => text[..index].to_string(),
                None => text,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::actions::slack::SlackPost;
    use crate::actions::tableau::RefreshWorkbook;
    use crate::actions::ActionRequest;
    use serde_json::json;

    fn rule_set(files: &[(&str, &str)]) -> (tempfile::TempDir, Engine, RuleSet) {
        let dir = tempfile::tempdir().unwrap();
        for (name, source) in files {
            std::fs::write(dir.path().join(name), source).unwrap();
        }
        let engine = engine::build_engine(10_000);
        let set = load::load_dir(&engine, dir.path(), None);
        (dir, engine, set)
    }

    fn outcome<'a>(outcomes: &'a [RuleResult], rule: &str) -> &'a RuleResult {
        outcomes.iter().find(|o| o.rule == rule).unwrap()
    }

    #[test]
    fn rules_record_calls_with_event_and_vars() {
        let (_dir, engine, set) = rule_set(&[(
            "finance.rhai",
            r#"if event.type == "dbt.job.run.completed" && event.job_id == 302451 {
                   tableau_refresh("Finance");
                   slack_post(vars.channel, "done");
               }"#,
        )]);
        assert!(set.errors.is_empty(), "{:?}", set.errors);
        let outcomes = set.evaluate(
            &engine,
            &json!({"type": "dbt.job.run.completed", "job_id": 302451}),
            &json!({"channel": "#fin"}),
        );
        let calls: Vec<_> = outcome(&outcomes, "finance")
            .calls
            .iter()
            .map(|c| c.request.clone())
            .collect();
        assert_eq!(
            calls,
            vec![
                ActionRequest::TableauRefresh(RefreshWorkbook {
                    workbook: "Finance".into(),
                    project: None,
                }),
                ActionRequest::SlackPost(SlackPost::text(Some("#fin".into()), "done".into())),
            ]
        );
        assert_eq!(outcome(&outcomes, "finance").calls[0].line, 2);
    }

    #[test]
    fn limits_stop_a_rule_with_the_exact_error_and_others_still_run() {
        let (_dir, engine, set) = rule_set(&[
            ("spin.rhai", "loop { }"),
            ("deep.rhai", "fn down(n) { down(n + 1) } down(0);"),
            ("fine.rhai", r#"slack_post("still here");"#),
        ]);
        let outcomes = set.evaluate(&engine, &json!({}), &json!({}));
        let spin = outcome(&outcomes, "spin").error.as_ref().unwrap();
        assert!(
            matches!(*spin.1, EvalAltResult::ErrorTooManyOperations(_)),
            "{:?}",
            spin.1
        );
        assert_eq!(spin.0.line, 1);
        let deep = outcome(&outcomes, "deep").error.as_ref().unwrap();
        assert!(
            matches!(*deep.1, EvalAltResult::ErrorStackOverflow(_)),
            "{:?}",
            deep.1
        );
        assert_eq!(outcome(&outcomes, "fine").calls.len(), 1);
    }

    #[test]
    fn a_failing_rule_drops_its_calls() {
        let (_dir, engine, set) = rule_set(&[("half.rhai", "slack_post(\"a\");\nthrow \"boom\";")]);
        let outcomes = set.evaluate(&engine, &json!({}), &json!({}));
        let half = outcome(&outcomes, "half");
        assert!(half.calls.is_empty());
        assert_eq!(half.error.as_ref().unwrap().0.line, 2);
    }

    #[test]
    fn sandbox_refuses_eval_imports_and_unknown_variables() {
        let (_dir, engine, set) = rule_set(&[
            ("evil.rhai", r#"eval("1")"#),
            ("typo.rhai", "if evnt.type == \"x\" { }"),
            ("imports.rhai", r#"import "/etc/passwd" as p;"#),
        ]);
        let files: Vec<String> = set.errors.iter().map(|e| e.to_string()).collect();
        assert_eq!(set.errors.len(), 2, "{files:?}");
        let typo = set
            .errors
            .iter()
            .find(|e| e.file.ends_with("typo.rhai"))
            .unwrap();
        assert_eq!((typo.line, typo.column), (1, 4));
        assert!(typo.to_string().contains("typo.rhai:1:4: "), "{typo}");
        // `import` parses, but no module can be loaded: no file access.
        let outcomes = set.evaluate(&engine, &json!({}), &json!({}));
        let imports = outcome(&outcomes, "imports")
            .error
            .as_ref()
            .expect("import must fail");
        assert!(
            matches!(*imports.1, EvalAltResult::ErrorTooManyModules(_)),
            "{:?}",
            imports.1
        );
    }

    #[test]
    fn rules_cannot_change_the_event_or_keep_state() {
        let (_dir, engine, set) = rule_set(&[("mutate.rhai", "event.x = 1;")]);
        let outcomes = set.evaluate(&engine, &json!({"x": 0}), &json!({}));
        assert!(outcomes[0].error.is_some(), "event is a constant");
    }

    /// Scripts that tried to take the process down (docs/behaviour.md section 11): each must end
    /// in a rule error, never in an allocation that aborts the process.
    #[test]
    fn no_function_builds_a_value_over_the_limits() {
        let (_dir, engine, set) = rule_set(&[
            (
                "replace.rhai",
                r#"let s = "x"; while s.len() < 1000000 { s += s }; s.truncate(1000000); s.replace("x", s);"#,
            ),
            (
                "replace_char.rhai",
                r#"let s = "x"; while s.len() < 1000000 { s += s }; s.truncate(1000000); s.replace('x', s);"#,
            ),
            (
                "replace_empty.rhai",
                r#"let s = "x"; while s.len() < 1000000 { s += s }; s.truncate(1000000); s.replace("", s);"#,
            ),
            (
                "hoard.rhai",
                r#"fn f(x) { x }
                   let keep = []; let s = "x"; while s.len() < 500000 { s += s };
                   for i in 0..100000 { keep.push(Fn("f").curry(s + i)); }"#,
            ),
            (
                "fine.rhai",
                r#"let s = "ab"; s.replace("a", "xyz"); slack_post(s);"#,
            ),
        ]);
        assert!(set.errors.is_empty(), "{:?}", set.errors);
        let outcomes = set.evaluate(&engine, &json!({}), &json!({}));
        for rule in ["replace", "replace_char", "replace_empty"] {
            let error = outcome(&outcomes, rule).error.as_ref().expect(rule);
            assert!(
                matches!(*error.1, EvalAltResult::ErrorDataTooLarge(..)),
                "{rule}: {:?}",
                error.1
            );
        }
        let hoard = outcome(&outcomes, "hoard").error.as_ref().unwrap();
        assert!(
            hoard.0.message.contains("memory limit exceeded"),
            "{}",
            hoard.0
        );
        let fine = outcome(&outcomes, "fine");
        assert!(fine.error.is_none(), "{:?}", fine.error);
        assert_eq!(
            fine.calls[0].request,
            ActionRequest::SlackPost(SlackPost::text(None, "xyzb".into()))
        );
    }

    #[test]
    fn calls_per_event_and_argument_sizes_are_limited() {
        let (_dir, engine, set) = rule_set(&[
            ("hundred.rhai", "for i in 0..100 { slack_post(`m${i}`); }"),
            ("flood.rhai", "for i in 0..101 { slack_post(`m${i}`); }"),
            (
                "big.rhai",
                "let s = \"x\"; while s.len() < 65536 { s += s }; slack_post(\"ok\");\ntableau_refresh(s);",
            ),
            ("chatty.rhai", "for i in 0..1000 { print(i); }"),
        ]);
        let outcomes = set.evaluate(&engine, &json!({}), &json!({}));
        assert_eq!(outcome(&outcomes, "hundred").calls.len(), 100);
        let flood = outcome(&outcomes, "flood");
        assert!(
            flood.calls.is_empty(),
            "calls of a stopped rule are dropped"
        );
        let error = &flood.error.as_ref().unwrap().0;
        assert!(
            error.message.contains("more than 100 action calls"),
            "{error}"
        );
        assert_eq!(error.line, 1);
        let big = outcome(&outcomes, "big");
        assert!(big.calls.is_empty());
        let error = &big.error.as_ref().unwrap().0;
        assert!(
            error.message.contains("over the limit of 65536 bytes"),
            "{error}"
        );
        assert_eq!(error.line, 2);
        let chatty = outcome(&outcomes, "chatty");
        assert_eq!(chatty.logs.len(), 101);
        assert!(
            chatty.logs[100].1.contains("900 more log lines"),
            "{:?}",
            chatty.logs[100]
        );
    }

    #[test]
    fn a_broken_file_keeps_its_last_good_version() {
        let (dir, engine, good) = rule_set(&[("r.rhai", r#"slack_post("v1");"#)]);
        std::fs::write(dir.path().join("r.rhai"), "slack_post(").unwrap();
        let next = load::load_dir(&engine, dir.path(), Some(&good));
        assert_eq!(next.errors.len(), 1);
        let outcomes = next.evaluate(&engine, &json!({}), &json!({}));
        assert_eq!(outcomes[0].calls.len(), 1, "the v1 rule keeps running");
    }

    #[test]
    fn a_reload_compiles_only_the_files_that_changed() {
        let (dir, engine, first) = rule_set(&[
            ("a.rhai", r#"slack_post("a");"#),
            ("b.rhai", r#"slack_post("b1");"#),
        ]);
        assert_eq!(first.compiled, 2);
        std::fs::write(dir.path().join("b.rhai"), r#"slack_post("b2");"#).unwrap();
        let second = load::load_dir(&engine, dir.path(), Some(&first));
        assert_eq!(second.compiled, 1);
        assert!(Arc::ptr_eq(&first.rules["a"], &second.rules["a"]));
        let outcomes = second.evaluate(&engine, &json!({}), &json!({}));
        assert_eq!(outcomes[1].calls[0].written, json!(["b2"]));

        // The same text written again, and a file renamed, are both noticed by content
        // and place, not by time stamps.
        std::fs::write(dir.path().join("b.rhai"), r#"slack_post("b2");"#).unwrap();
        std::fs::rename(dir.path().join("a.rhai"), dir.path().join("c.rhai")).unwrap();
        let third = load::load_dir(&engine, dir.path(), Some(&second));
        assert_eq!(third.compiled, 1, "only c.rhai, a new name, is compiled");
        assert!(Arc::ptr_eq(&second.rules["b"], &third.rules["b"]));
        assert_eq!(third.rules.keys().collect::<Vec<_>>(), ["b", "c"]);
    }
}
