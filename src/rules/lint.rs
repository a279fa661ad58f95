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
    /// Where its `(` is, in characters from the source's start.
    open: usize,
}

/// A read of `event.NAME` (or `event?.NAME`) that is not a method call.
#[derive(Debug, Clone, PartialEq, Eq)]
struct FieldRead {
    name: String,
    line: usize,
    column: usize,
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
        if let Some(problem) = map_key_problem(&scan, call, source) {
            problems.push(problem);
        }
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

/// The actions that take a map of fixed keys: for a call of `name` with `args`
/// arguments, which argument is the map and the keys it may have.
fn map_argument(name: &str, args: usize) -> Option<(usize, &'static [&'static str])> {
    use crate::actions::{alert, dbt, hex, pagerduty, powerbi, slack, tableau};
    Some(match (name, args) {
        ("tableau_refresh", 1) => (0, &tableau::WORKBOOK_KEYS),
        ("tableau_refresh_datasource", 1) => (0, &tableau::DATASOURCE_KEYS),
        ("slack_post", 1) => (0, &slack::MESSAGE_KEYS),
        ("slack_post", 2) => (1, &slack::MESSAGE_KEYS),
        ("dbt_run", 2) => (1, &dbt::TRIGGER_OPTIONS),
        ("alert", 3) => (2, &alert::OPTIONS),
        ("pagerduty_event", 1) => (0, &pagerduty::KEYS),
        ("hex_run", 2) => (1, &hex::OPTION_KEYS),
        ("powerbi_refresh", 1) => (0, &powerbi::KEYS),
        _ => return None,
    })
}

/// The first unknown key of a map literal (`#{ .. }`) given to an action that takes a
/// map of fixed keys: `unknown key workbok (did you mean workbook?)`. A map built
/// elsewhere (a variable) is checked when the rule runs.
fn map_key_problem(scan: &Scan, call: &Call, source: &str) -> Option<NameProblem> {
    if call.method || scan.defined.contains_key(&call.name) {
        return None;
    }
    let (position, keys) = map_argument(&call.name, call.args)?;
    let chars: Vec<char> = source.chars().collect();
    let start = argument_start(&chars, call.open, position)?;
    for (key, at) in map_literal_keys(&chars, start) {
        if keys.contains(&key.as_str()) {
            continue;
        }
        let limit = (key.chars().count() / 3).clamp(1, 3);
        let hint = keys
            .iter()
            .map(|known| (edit_distance(&key, known), *known))
            .filter(|(distance, _)| *distance <= limit)
            .min()
            .map(|(_, near)| format!("did you mean {near}?"))
            .unwrap_or_else(|| format!("{} takes {}", call.name, keys.join(", ")));
        let (line, column) = line_column(&chars, at);
        return Some(NameProblem {
            line,
            column,
            message: format!("unknown key {key} ({hint})"),
        });
    }
    None
}

/// Where argument `position` of the call whose `(` is at `open` starts (after blanks).
fn argument_start(chars: &[char], open: usize, position: usize) -> Option<usize> {
    let mut at = open + 1;
    let mut depth = 0usize;
    let mut index = 0;
    let mut start = Some(at);
    while let Some(&c) = chars.get(at) {
        match c {
            '"' | '`' | '\'' => at = skip_quoted(chars, at),
            '(' | '[' | '{' => depth += 1,
            ')' | ']' | '}' if depth == 0 => break,
            ')' | ']' | '}' => depth -= 1,
            ',' if depth == 0 => {
                if index == position {
                    break;
                }
                index += 1;
                start = Some(at + 1);
            }
            _ => {}
        }
        at += 1;
    }
    let mut start = start.filter(|_| index == position)?;
    while chars.get(start).is_some_and(|c| c.is_whitespace()) {
        start += 1;
    }
    Some(start)
}

/// The index of a quoted literal's closing quote (`at` is its opening one).
fn skip_quoted(chars: &[char], at: usize) -> usize {
    let quote = chars[at];
    let mut at = at + 1;
    while let Some(&c) = chars.get(at) {
        if c == '\\' {
            at += 1;
        } else if c == quote {
            return at;
        }
        at += 1;
    }
    at
}

/// The top-level keys of the map literal starting at `start` (`#{ key: .., "key": .. }`),
/// with where each is; nothing when no map literal starts there.
fn map_literal_keys(chars: &[char], start: usize) -> Vec<(String, usize)> {
    let mut keys = Vec::new();
    if chars.get(start) != Some(&'#') || chars.get(start + 1) != Some(&'{') {
        return keys;
    }
    let mut at = start + 2;
    // Whether the next token at depth 0 is a key (after `#{` or a top-level comma).
    let mut expecting_key = true;
    let mut depth = 0usize;
    while let Some(&c) = chars.get(at) {
        match c {
            c if c.is_whitespace() => {}
            '/' if chars.get(at + 1) == Some(&'/') => {
                while chars.get(at + 1).is_some_and(|c| *c != '\n') {
                    at += 1;
                }
            }
            '"' | '`' | '\'' => {
                let end = skip_quoted(chars, at);
                if expecting_key && depth == 0 && c == '"' {
                    keys.push((chars[at + 1..end.min(chars.len())].iter().collect(), at));
                }
                expecting_key = false;
                at = end;
            }
            '(' | '[' | '{' => {
                depth += 1;
                expecting_key = false;
            }
            '}' if depth == 0 => break,
            ')' | ']' | '}' => depth = depth.saturating_sub(1),
            ',' if depth == 0 => expecting_key = true,
            c if expecting_key && depth == 0 && (c.is_ascii_alphabetic() || c == '_') => {
                let begin = at;
                while chars
                    .get(at + 1)
                    .is_some_and(|c| c.is_ascii_alphanumeric() || *c == '_')
                {
                    at += 1;
                }
                keys.push((chars[begin..=at].iter().collect(), begin));
                expecting_key = false;
            }
            _ => expecting_key = false,
        }
        at += 1;
    }
    keys
}

/// The 1-based line and column of character `at`.
fn line_column(chars: &[char], at: usize) -> (usize, usize) {
    let before = &chars[..at.min(chars.len())];
    let line = before.iter().filter(|c| **c == '\n').count() + 1;
    let column = before.iter().rev().take_while(|c| **c != '\n').count() + 1;
    (line, column)
}

/// Warnings for reads of `event.NAME` where no event type has NAME
/// ([`crate::event::FIELDS`]), with the nearest field: `event.jobname` is `()` on every
/// event, so a condition on it is silently never true.
pub fn unknown_field_warnings(source: &str) -> Vec<NameProblem> {
    let scan = Scan::of(source);
    let fields = crate::event::FIELDS;
    scan.field_reads
        .iter()
        .filter(|read| !fields.contains(&read.name.as_str()))
        .map(|read| {
            let limit = (read.name.chars().count() / 3).clamp(1, 3);
            // Case and underscores first (`jobname`, `jobName`), then spelling.
            let folded = |s: &str| s.replace('_', "").to_lowercase();
            let near = fields
                .iter()
                .find(|field| folded(field) == folded(&read.name))
                .or_else(|| {
                    // On a tie, a field the read is the start of (`run_statu`: run_status).
                    fields
                        .iter()
                        .map(|field| {
                            let distance = edit_distance(&read.name, field);
                            (distance, !field.starts_with(read.name.as_str()), field)
                        })
                        .filter(|(distance, _, _)| *distance <= limit)
                        .min()
                        .map(|(_, _, field)| field)
                });
            let hint = near
                .map(|field| format!(" (did you mean event.{field}?)"))
                .unwrap_or_default();
            NameProblem {
                line: read.line,
                column: read.column,
                message: format!(
                    "warning: no event type has a field {}{hint}: event.{} is always ()",
                    read.name, read.name
                ),
            }
        })
        .collect()
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
    field_reads: Vec<FieldRead>,
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
                            open: self.at + after,
                        });
                    } else if word == "event"
                        && !matches!(previous.as_deref(), Some(".") | Some("?."))
                    {
                        if let Some(read) = self.field_read() {
                            scan.field_reads.push(read);
                        }
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

    /// The field read right after the word `event` (the cursor is past it): `.NAME` or
    /// `?.NAME`, not followed by `(`. Looks without moving.
    fn field_read(&self) -> Option<FieldRead> {
        let blank = |at: &mut usize| {
            while self.chars.get(*at).is_some_and(|c| c.is_whitespace()) {
                *at += 1;
            }
        };
        let mut at = self.at;
        blank(&mut at);
        if self.chars.get(at) == Some(&'?') {
            at += 1;
        }
        if self.chars.get(at) != Some(&'.') {
            return None;
        }
        at += 1;
        blank(&mut at);
        let start = at;
        while self
            .chars
            .get(at)
            .is_some_and(|c| c.is_ascii_alphanumeric() || *c == '_')
        {
            at += 1;
        }
        let name: String = self.chars[start..at].iter().collect();
        blank(&mut at);
        if !is_identifier(&name) || self.chars.get(at) == Some(&'(') {
            return None;
        }
        let (line, column) = line_column(self.chars, start);
        Some(FieldRead { name, line, column })
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
    fn unknown_keys_of_an_action_map_are_found_with_the_nearest_key() {
        assert_eq!(
            problems("tableau_refresh(#{ workbok: \"Sales\" });"),
            vec!["1:20: unknown key workbok (did you mean workbook?)"]
        );
        assert_eq!(
            problems("slack_post(\"#c\", #{\n  text: \"hi\",\n  \"colour\": 1 });"),
            vec!["3:3: unknown key colour (slack_post takes text, blocks, thread_ts, mention)"]
        );
        assert_eq!(
            problems("alert(\"a\", x > 1, #{ text: `${1 + 2}`, chanel: \"#c\" });"),
            vec!["1:40: unknown key chanel (did you mean channel?)"]
        );
        assert_eq!(
            problems("pagerduty_event(#{ action: \"trigger\", summery: \"s\" });"),
            vec!["1:39: unknown key summery (did you mean summary?)"]
        );
        // Known keys, nested maps, values that are maps, maps in variables, and
        // mode_run's free parameters pass.
        for fine in [
            "tableau_refresh(#{ workbook: \"w\", project: \"p\" });",
            "tableau_refresh_datasource(#{ datasource: \"d\" });",
            "alert(\"a\", true, #{ text: \"t\", fields: #{ anything: 1 }, pagerduty: \"data\" });",
            "dbt_run(1, #{ cause: \"c\", steps_override: [\"a, b\"] });",
            "let m = #{ workbok: 1 }; tableau_refresh(m);",
            "mode_run(\"r\", #{ any_parameter: 1 });",
        ] {
            assert_eq!(problems(fine), Vec::<String>::new(), "{fine}");
        }
    }

    #[test]
    fn reads_of_fields_no_event_has_are_warned_about() {
        let warnings = |source: &str| -> Vec<String> {
            unknown_field_warnings(source)
                .into_iter()
                .map(|p| format!("{}:{}: {}", p.line, p.column, p.message))
                .collect()
        };
        assert_eq!(
            warnings("if event.jobname == \"x\" {}"),
            vec!["1:10: warning: no event type has a field jobname (did you mean event.job_name?): event.jobname is always ()"]
        );
        assert_eq!(
            warnings("let s = `${event?.run_statu}`;"),
            vec!["1:19: warning: no event type has a field run_statu (did you mean event.run_status?): event.run_statu is always ()"]
        );
        // Known fields, method calls on the event, fields of other maps, indexing.
        assert!(warnings(
            "event.job_name; event.keys(); failure.jobname; x.event.foo; event[\"jobname\"];"
        )
        .is_empty());
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
