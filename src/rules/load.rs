//! Compiling rule files: a folder of `*.rhai` files becomes a [`RuleSet`]. A file that
//! fails to compile keeps its last good version (if it had one), so one broken edit never
//! takes working rules down, and its error is reported as `PATH:LINE:COL: message`.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rhai::{Engine, Position, Scope};
use sha2::{Digest, Sha256};

use super::lint::{check_names, KnownFunctions};
use super::{api, Rule, RuleSet};

/// A rule that failed to compile or to run, with where.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RuleError {
    pub file: PathBuf,
    pub line: usize,
    pub column: usize,
    pub message: String,
}

impl fmt::Display for RuleError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}:{}:{}: {}",
            self.file.display(),
            self.line,
            self.column,
            self.message
        )
    }
}

impl RuleError {
    /// An error at `position` of `file`. The message is capped at
    /// [`api::MAX_TEXT_BYTES`] like a `log()` line: a rule can throw a string as long as
    /// the sandbox allows, and its error goes to the log, the journal and the CLI.
    pub fn new(file: &Path, position: Position, message: impl Into<String>) -> RuleError {
        RuleError {
            file: file.to_path_buf(),
            line: position.line().unwrap_or(0),
            column: position.position().unwrap_or(0),
            message: api::capped(message.into()),
        }
    }

    /// The message with the offending source line and a caret under the column, as
    /// Rhai's own `rhai-run` prints it (for `freshet check`).
    pub fn with_source_excerpt(&self) -> String {
        let mut text = self.to_string();
        if let Ok(source) = std::fs::read_to_string(&self.file) {
            if let Some(line) = self.line.checked_sub(1).and_then(|i| source.lines().nth(i)) {
                let gutter = format!("{} | ", self.line);
                text.push('\n');
                text.push_str(&gutter);
                text.push_str(line);
                text.push('\n');
                text.push_str(&" ".repeat(gutter.len() + self.column.saturating_sub(1)));
                text.push('^');
            }
        }
        text
    }
}

/// The names rules may use without declaring them; strict variables checks against these.
pub fn compile_scope() -> Scope<'static> {
    let mut scope = Scope::new();
    scope.push_constant("event", ());
    scope.push_constant("vars", ());
    scope
}

/// Compiles one rule file.
pub fn compile_file(engine: &Engine, path: &Path) -> Result<Rule, RuleError> {
    compile_source(engine, &KnownFunctions::of(engine), path, &read_rule(path)?)
}

fn read_rule(path: &Path) -> Result<String, RuleError> {
    std::fs::read_to_string(path).map_err(|error| {
        RuleError::new(
            path,
            Position::NONE,
            format!("cannot read the rule: {error}"),
        )
    })
}

/// What identifies a rule's text: a reload compiles only files whose digest changed.
fn digest(source: &str) -> [u8; 32] {
    Sha256::digest(source.as_bytes()).into()
}

/// Compiles a rule and checks the functions it calls (`lint::check_names`): Rhai finds an
/// unknown function only when the call runs, so a typo would load and then fail on every
/// event. It is a load error instead, as `freshet check` reports it (docs/behaviour.md
/// section 17), and the last good version keeps running.
fn compile_source(
    engine: &Engine,
    known: &KnownFunctions,
    path: &Path,
    source: &str,
) -> Result<Rule, RuleError> {
    let mut ast = engine
        .compile_with_scope(&compile_scope(), source)
        .map_err(|error| RuleError::new(path, error.position(), error.err_type().to_string()))?;
    if let Some(problem) = check_names(source, known).into_iter().next() {
        return Err(RuleError {
            file: path.to_path_buf(),
            line: problem.line,
            column: problem.column,
            message: problem.message,
        });
    }
    ast.set_source(path.display().to_string());
    Ok(Rule {
        name: rule_name(path),
        path: path.to_path_buf(),
        ast: Arc::new(ast),
        digest: digest(source),
    })
}

/// The rule's name: its file name without `.rhai`.
pub fn rule_name(path: &Path) -> String {
    path.file_stem()
        .map(|s| s.to_string_lossy().to_string())
        .unwrap_or_default()
}

/// The `*.rhai` files of `dir`, sorted. A missing dir has none.
pub fn rule_files(dir: &Path) -> std::io::Result<Vec<PathBuf>> {
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(error) => return Err(error),
    };
    let mut files: Vec<PathBuf> = entries
        .filter_map(|entry| entry.ok().map(|e| e.path()))
        .filter(|path| path.extension().is_some_and(|ext| ext == "rhai") && path.is_file())
        .collect();
    files.sort();
    Ok(files)
}

/// Compiles `paths` (a folder's files, or files named on the command line). A file that
/// fails keeps its version from `previous`, if any. A file whose text is the same as its
/// version in `previous` is not compiled again: with a thousand rules, compiling them all
/// took 29 ms for a one-file edit (5 ms now, most of it reading and hashing), and the
/// engine is the same for the life of the process, so the old AST is exactly what
/// compiling would give.
pub fn load_files(engine: &Engine, paths: &[PathBuf], previous: Option<&RuleSet>) -> RuleSet {
    let mut rules = BTreeMap::new();
    let mut errors = Vec::new();
    let mut compiled = 0;
    // The engine's functions, listed once a load and only if something is compiled.
    let known = std::cell::OnceCell::new();
    for path in paths {
        let unchanged = |source: &String| {
            let old = previous?.rules.get(&rule_name(path))?;
            (old.path == *path && old.digest == digest(source)).then(|| Arc::clone(old))
        };
        let outcome = read_rule(path).and_then(|source| match unchanged(&source) {
            Some(old) => Ok(old),
            None => {
                compiled += 1;
                let known = known.get_or_init(|| KnownFunctions::of(engine));
                compile_source(engine, known, path, &source).map(Arc::new)
            }
        });
        match outcome {
            Ok(rule) => {
                rules.insert(rule.name.clone(), rule);
            }
            Err(error) => {
                let name = rule_name(path);
                if let Some(old) = previous.and_then(|p| p.rules.get(&name)) {
                    rules.insert(name, Arc::clone(old));
                }
                errors.push(error);
            }
        }
    }
    RuleSet {
        rules,
        errors,
        compiled,
    }
}

/// Compiles every rule of `dir`; see [`load_files`].
pub fn load_dir(engine: &Engine, dir: &Path, previous: Option<&RuleSet>) -> RuleSet {
    match rule_files(dir) {
        Ok(files) => load_files(engine, &files, previous),
        Err(error) => RuleSet {
            // An unreadable folder keeps everything that ran before.
            rules: previous.map(|p| p.rules.clone()).unwrap_or_default(),
            errors: vec![RuleError::new(
                dir,
                Position::NONE,
                format!("cannot read the rules folder: {error}"),
            )],
            compiled: 0,
        },
    }
}
