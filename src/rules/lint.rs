//! Name checks for `freshet check` (docs/behaviour.md section 8). Rhai resolves function calls only
//! when a script runs, so a misspelled `slack_pots(..)` compiles and fails at the first
//! event that reaches it. This pass reads a rule's source, finds every call, and reports
//! those that name no function the engine knows or the script defines, with the nearest
//! known name; for a known name it also checks the number of arguments against the
//! signatures the engine has.
//!
//! It is a scanner, not a parser: Rhai's AST is only open with its `internals` feature,
//! which the sandbox must not enable (STYLE.md). It understands enough of the syntax to
//! be exact on calls: comments, strings (with `${..}` interpolation, whose code it
//! scans), character literals, `fn` definitions, method calls and namespaces.

use std::collections::{BTreeMap, BTreeSet};

use rhai::Engine;

/// Functions the language itself provides (keywords that look like calls), which the
/// engine does not list. Their argument counts vary (`call`, `curry`), so they are never
/// counted.
const LANGUAGE_FUNCTIONS: [&str; 10] = [
    "print",
    "debug",
    "type_of",
    "eval",
    "Fn",
    "call",
    "curry",
    "is_shared",
    "is_def_var",
    "is_def_fn",
];

/// Words followed by `(` that are not calls.
const KEYWORDS: [&str; 16] = [
    "if", "else", "while", "for", "in", "loop", "do", "until", "switch", "return", "throw", "try",
    "catch", "let", "const", "fn",
];

/// What the engine knows: every function name, with the argument counts it accepts.
pub struct KnownFunctions {
    arities: BTreeMap<String, BTreeSet<usize>>,
}

impl KnownFunctions {
    /// The functions of `engine`: its packages and freshet's rule API.
    pub fn of(engine: &Engine) -> KnownFunctions {
        let mut arities: BTreeMap<String, BTreeSet<usize>> = BTreeMap::new();
        for signature in engine.gen_fn_signatures(true) {
            let Some((name, rest)) = signature.split_once('(') else {
                continue;
            };
            if !is_identifier(name) {
                continue; // operators, property getters (`get$x`)
            }
            let params = rest.split(')').next().unwrap_or("");
            let count = if params.trim().is_empty() {
                0
            } else {
                params.split(',').count()
            };
            arities.entry(name.to_string()).or_default().insert(count);
        }
        KnownFunctions { arities }
    }

    fn contains(&self, name: &str) -> bool {
        self.arities.contains_key(name) || LANGUAGE_FUNCTIONS.contains(&name)
    }

    /// The known name nearest to `name`, if one is close enough to be a typo.
    fn nearest(&self, name: &str, own: &BTreeMap<String, BTreeSet<usize>>) -> Option<String> {
        let limit = (name.chars().count() / 3).clamp(1, 3);
        self.arities
            .keys()
            .map(String::as_str)
            .chain(LANGUAGE_FUNCTIONS)
            .chain(own.keys().map(String::as_str))
            .map(|known| (edit_distance(name, known), known))
            .filter(|(distance, _)| *distance <= limit)
            .min()
            .map(|(_, known)| known.to_string())
    }
}

/// A problem found in a rule's source: 1-based line and column, and the message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NameProblem {
    pub line: usize,
    pub column: usize,
    pub message: String,
}

/// One call in a source: the name, where it is, whether it is a method call
/// (`x.name(..)`, whose receiver is an argument too), and how many arguments it has.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Call {
    name: String,
    line: usize,
    column: usize,
    method: bool,
    args: usize,
}

/// Checks every call in `source` against `known` and the functions `source` defines.
pub fn check_names(source: &str, known: &KnownFunctions) -> Vec<NameProblem> {
    let scan = Scan::of(source);
    let mut problems = Vec::new();
    for call in &scan.calls {
        let own = scan.defined.get(&call.name);
        if own.is_none() && !known.contains(&call.name) {
            let hint = known
                .nearest(&call.name, &scan.defined)
                .map(|near| format!(" (did you mean {near}?)"))
                .unwrap_or_default();
            problems.push(NameProblem {
                line: call.line,
                column: call.column,
                message: format!("unknown function {}{hint}", call.name),
            });
            continue;
        }
        if LANGUAGE_FUNCTIONS.contains(&call.name.as_str()) {
            continue;
        }
        let args = call.args + usize::from(call.method);
        let accepted: BTreeSet<usize> = own
            .into_iter()
            .flatten()
            .chain(known.arities.get(&call.name).into_iter().flatten())
            .copied()
            .collect();
        if !accepted.is_empty() && !accepted.contains(&args) {
            let counts: Vec<String> = accepted.iter().map(usize::to_string).collect();
            problems.push(NameProblem {
                line: call.line,
                column: call.column,
                message: format!(
                    "{} takes {} argument{}, not {args}",
                    call.name,
                    join_or(&counts),
                    if accepted == BTreeSet::from([1]) {
                        ""
                    } else {
                        "s"
                    }
                ),
            });
        }
    }
    problems
}

/// Every `check_in("NAME")` in `source` whose NAME is not in `deadlines`: a check-in
/// that would record nothing (docs/behaviour.md section 14). Names given as anything but
/// a string literal are known only when the rule runs, and are not checked here.
pub fn check_in_problems(
    source: &str,
    deadlines: &std::collections::BTreeMap<String, crate::config::ClockConfig>,
) -> Vec<NameProblem> {
    let scan = Scan::of(source);
    let lines: Vec<&str> = source.lines().collect();
    let mut problems = Vec::new();
    for call in scan
        .calls
        .iter()
        .filter(|c| c.name == "check_in" && !c.method)
    {
        let Some(text) = lines.get(call.line.saturating_sub(1)) else {
            continue;
        };
        // The call's column counts characters from 1; the argument follows `check_in(`.
        let after: String = text
            .chars()
            .skip(call.column.saturating_sub(1) + "check_in".len())
            .collect();
        let Some(rest) = after.trim_start().strip_prefix('(') else {
            continue;
        };
        let Some(literal) = rest.trim_start().strip_prefix('"') else {
            continue;
        };
        let Some(name) = literal.split('"').next() else {
            continue;
        };
        if !deadlines.contains_key(name) {
            problems.push(NameProblem {
                line: call.line,
                column: call.column,
                message: format!(
                    "check_in names no deadline {name:?} (add [deadlines.{name}] to the config)"
                ),
            });
        }
    }
    problems
}

fn join_or(items: &[String]) -> String {
    match items {
        [] => String::new(),
        [one] => one.clone(),
        [init @ .., last] => format!("{} or {last}", init.join(", ")),
    }
}

/// The calls and the function definitions found in a source.
#[derive(Default)]
struct Scan {
    calls: Vec<Call>,
    /// Functions the script defines, with their parameter counts.
    defined: BTreeMap<String, BTreeSet<usize>>,
}

impl Scan {
    fn of(source: &str) -> Scan {
        let chars: Vec<char> = source.chars().collect();
        let mut scan = Scan::default();
        let mut scanner = Scanner {
            chars: &chars,
            at: 0,
            line: 1,
            column: 1,
        };
        scanner.code(&mut scan, None);
        scan
    }
}

/// A cursor over the source that knows its line and column.
struct Scanner<'a> {
    chars: &'a [char],
    at: usize,
    line: usize,
    column: usize,
}

impl Scanner<'_> {
    fn peek(&self, ahead: usize) -> Option<char> {
        self.chars.get(self.at + ahead).copied()
    }

    fn bump(&mut self) -> Option<char> {
        let c = self.peek(0)?;
        self.at += 1;
        if c == '\n' {
            self.line += 1;
            self.column = 1;
        } else {
            self.column += 1;
        }
        Some(c)
    }

    /// Scans code until the end, or until `until` closes it at depth 0 (the `}` of an
    /// interpolation).
    fn code(&mut self, scan: &mut Scan, until: Option<char>) {
        // The last significant token: an identifier, or a punctuation character.
        let mut previous: Option<String> = None;
        let mut depth = 0usize;
        while let Some(c) = self.peek(0) {
            match c {
                '/' if self.peek(1) == Some('/') => {
                    while self.peek(0).is_some_and(|c| c != '\n') {
                        self.bump();
                    }
                }
                '/' if self.peek(1) == Some('*') => self.block_comment(),
                '"' => {
                    self.string('"', scan);
                    previous = Some("\"".into());
                }
                '`' => {
                    self.string('`', scan);
                    previous = Some("`".into());
                }
                '\'' => {
                    self.bump();
                    while let Some(c) = self.bump() {
                        match c {
                            '\\' => {
                                self.bump();
                            }
                            '\'' => break,
                            _ => {}
                        }
                    }
                    previous = Some("'".into());
                }
                c if c.is_ascii_alphabetic() || c == '_' => {
                    let (line, column) = (self.line, self.column);
                    let mut word = String::new();
                    while self
                        .peek(0)
                        .is_some_and(|c| c.is_ascii_alphanumeric() || c == '_')
                    {
                        word.push(self.bump().unwrap_or_default());
                    }
                    let mut after = 0;
                    while self.peek(after).is_some_and(char::is_whitespace) {
                        after += 1;
                    }
                    let is_call = self.peek(after) == Some('(')
                        && !KEYWORDS.contains(&word.as_str())
                        && previous.as_deref() != Some("::");
                    if is_call && previous.as_deref() == Some("fn") {
                        let params = self.count_args(after);
                        scan.defined.entry(word.clone()).or_default().insert(params);
                    } else if is_call {
                        let method = matches!(previous.as_deref(), Some(".") | Some("?."));
                        let args = self.count_args(after);
                        scan.calls.push(Call {
                            name: word.clone(),
                            line,
                            column,
                            method,
                            args,
                        });
                    }
                    previous = Some(word);
                }
                c if c.is_ascii_digit() => {
                    while self
                        .peek(0)
                        .is_some_and(|c| c.is_ascii_alphanumeric() || c == '_' || c == '.')
                    {
                        // `1.to_string()` would read as a number: stop before a method.
                        if self.peek(0) == Some('.')
                            && self.peek(1).is_some_and(|c| c.is_ascii_alphabetic())
                        {
                            break;
                        }
                        self.bump();
                    }
                    previous = Some("0".into());
                }
                ':' if self.peek(1) == Some(':') => {
                    self.bump();
                    self.bump();
                    previous = Some("::".into());
                }
                '?' if self.peek(1) == Some('.') => {
                    self.bump();
                    self.bump();
                    previous = Some("?.".into());
                }
                c if c.is_whitespace() => {
                    self.bump();
                }
                c => {
                    if Some(c) == until && depth == 0 {
                        self.bump();
                        return;
                    }
                    match c {
                        '{' => depth += 1,
                        '}' => depth = depth.saturating_sub(1),
                        _ => {}
                    }
                    self.bump();
                    previous = Some(c.to_string());
                }
            }
        }
    }

    fn block_comment(&mut self) {
        // Rhai's block comments nest.
        let mut depth = 0usize;
        while let Some(c) = self.peek(0) {
            if c == '/' && self.peek(1) == Some('*') {
                depth += 1;
                self.bump();
                self.bump();
            } else if c == '*' && self.peek(1) == Some('/') {
                self.bump();
                self.bump();
                depth -= 1;
                if depth == 0 {
                    return;
                }
            } else {
                self.bump();
            }
        }
    }

    /// A string closed by `quote`; in a backtick string, `${..}` is code.
    fn string(&mut self, quote: char, scan: &mut Scan) {
        self.bump();
        while let Some(c) = self.bump() {
            match c {
                '\\' if quote == '"' => {
                    self.bump();
                }
                '$' if quote == '`' && self.peek(0) == Some('{') => {
                    self.bump();
                    self.code(scan, Some('}'));
                }
                c if c == quote => return,
                _ => {}
            }
        }
    }

    /// The number of arguments of the call whose `(` is `offset` characters ahead:
    /// top-level commas, skipping strings and nested brackets. Looks without moving.
    fn count_args(&self, offset: usize) -> usize {
        let mut at = self.at + offset + 1;
        let mut depth = 0usize;
        let mut commas = 0;
        let mut empty = true;
        while let Some(&c) = self.chars.get(at) {
            match c {
                '"' | '`' | '\'' => {
                    at += 1;
                    while let Some(&inner) = self.chars.get(at) {
                        if inner == '\\' {
                            at += 1;
                        } else if inner == c {
                            break;
                        }
                        at += 1;
                    }
                    empty = false;
                }
                '(' | '[' | '{' => {
                    depth += 1;
                    empty = false;
                }
                ')' | ']' | '}' if depth == 0 => break,
                ')' | ']' | '}' => depth -= 1,
                ',' if depth == 0 => commas += 1,
                c if c.is_whitespace() => {}
                _ => empty = false,
            }
            at += 1;
        }
        if empty && commas == 0 {
            0
        } else {
            commas + 1
        }
    }
}

fn is_identifier(text: &str) -> bool {
    let mut chars = text.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// Levenshtein distance, for "did you mean".
fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut diagonal = row[0];
        row[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let above = row[j + 1];
            row[j + 1] = (diagonal + usize::from(ca != *cb))
                .min(row[j] + 1)
                .min(above + 1);
            diagonal = above;
        }
    }
    row[b.len()]
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rules::engine::build_engine;

    fn problems(source: &str) -> Vec<String> {
        let known = KnownFunctions::of(&build_engine(1000));
        check_names(source, &known)
            .into_iter()
            .map(|p| format!("{}:{}: {}", p.line, p.column, p.message))
            .collect()
    }

    #[test]
    fn unknown_functions_are_found_with_the_nearest_name() {
        assert_eq!(
            problems("if true {\n    slack_pots(\"x\");\n}"),
            vec!["2:5: unknown function slack_pots (did you mean slack_post?)"]
        );
        assert_eq!(
            problems("frobnicate(1);"),
            vec!["1:1: unknown function frobnicate"]
        );
        // Method calls, calls inside interpolation.
        assert_eq!(
            problems("let s = `${event.name.to_uper()}`;"),
            vec!["1:23: unknown function to_uper (did you mean to_upper?)"]
        );
    }

    #[test]
    fn known_and_own_functions_pass() {
        let source = r#"
            // slack_pots("in a comment");
            /* nested /* slack_pots() */ still a comment slack_pots() */
            fn double(x) { x * 2 }
            let text = "not a call: slack_pots(1)";
            let c = '(';
            let rows = event.results["q"] ?? [];
            let n = rows.len() + double(2) + 1.max(2);
            let f = Fn("double");
            print(f.call(3));
            if n > 0 { slack_post(vars.channel, `n is ${n.to_string()}`); }
            tableau_refresh(#{ workbook: "a", project: "b" });
            alert("x", n > 1, #{ text: "y" });
        "#;
        assert_eq!(problems(source), Vec::<String>::new());
    }

    #[test]
    fn argument_counts_of_known_functions_are_checked() {
        assert_eq!(
            problems(r##"slack_post("#c", "t", "extra");"##),
            vec!["1:1: slack_post takes 1 or 2 arguments, not 3"]
        );
        assert_eq!(
            problems("mode_run();"),
            vec!["1:1: mode_run takes 1 or 2 arguments, not 0"]
        );
        assert_eq!(
            problems("fn one(a) { a }\none(1, 2);"),
            vec!["2:1: one takes 1 argument, not 2"]
        );
        // A method call counts its receiver.
        assert_eq!(problems(r#""abc".len();"#), Vec::<String>::new());
    }
}
