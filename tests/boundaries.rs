//! Dependencies between batchd's modules point one way: from the edge
//! (`app`, `api`) down to the records (`domain`). This test reads every file
//! under `src/`, collects the crate modules each one names (`use crate::x`,
//! `crate::x::` inline, `crate::{x, y}` groups, and `super::` chains that
//! climb out of a top-level module), and checks them against `ALLOWED`.
//! Comments, doc comments and string literals do not count.
//!
//! It exists because nothing else stops a cycle from coming back: the
//! compiler accepts any path, and the store in particular must stay
//! buildable without the services above it (a PostgreSQL store is next).

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// Each module of `src/lib.rs` and the crate modules it may name. Read from
/// the top, it is the architecture from the bottom up: every module may only
/// name modules listed above it, which `the_table_has_no_cycles` checks.
const ALLOWED: &[(&str, &[&str])] = &[
    // Leaves: records and values, the error type, plumbing. They name no
    // other module, so anything may use them.
    ("domain", &[]),
    ("error", &[]),
    ("ids", &[]),
    ("config", &[]),
    ("metrics", &[]),
    ("http_client", &[]),
    ("openai_error", &["error"]),
    // Persistence: records in, records out. A second store implementation
    // must be able to build on these alone.
    ("store", &["domain", "error", "ids"]),
    // Services over the store.
    // `files` opens the configured object store (`[storage]`), whose S3
    // client is built like every outgoing client.
    ("files", &["config", "domain", "error", "http_client", "ids", "store"]),
    ("auth", &["domain", "error", "ids", "store"]),
    ("webhooks", &["config", "http_client", "ids", "metrics", "store"]),
    // Model servers: talking to them (no batch in sight: a line is bytes to
    // a backend), starting them, and the embedded engine, which is its own
    // HTTP server and shares only the error envelope with the API.
    ("backends", &["config", "http_client", "metrics"]),
    ("models", &["backends", "config", "http_client", "ids"]),
    ("engine", &["config", "ids", "openai_error"]),
    // Running batches on all of the above.
    (
        "batch",
        &[
            "backends", "config", "domain", "error", "files", "ids", "metrics", "models", "store",
        ],
    ),
    // The HTTP edge calls services; it never names the store.
    (
        "api",
        &[
            "auth",
            "backends",
            "batch",
            "config",
            "domain",
            "error",
            "files",
            "ids",
            "metrics",
            "models",
            "openai_error",
        ],
    ),
    ("server", &[]),
    ("testing", &["http_client", "ids"]),
    // Wiring: the one module that picks the store (SQLite or PostgreSQL).
    (
        "app",
        &[
            "api",
            "auth",
            "backends",
            "batch",
            "config",
            "files",
            "models",
            "server",
            "store",
            "store::postgres",
            "store::sqlite",
            "webhooks",
        ],
    ),
];

/// Submodules that count as a module of their own: naming `store` does not
/// allow naming the implementations behind it.
const SUBMODULES: &[&str] = &["store::postgres", "store::sqlite"];

/// What `#[cfg(test)]` code may name besides its module's row: unit tests
/// run against the real store.
const TEST_ALSO: &[&str] = &["store::postgres", "store::sqlite"];

#[test]
fn modules_import_only_what_the_table_allows() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let declared = declared_modules(&src);
    let table: BTreeMap<&str, &[&str]> = ALLOWED.iter().copied().collect();
    let rows: BTreeSet<&str> = table.keys().copied().collect();
    let declared_set: BTreeSet<&str> = declared.iter().map(String::as_str).collect();
    assert_eq!(
        declared_set, rows,
        "every module in src/lib.rs needs a row in ALLOWED (and every row a module)"
    );

    // A set: `use crate::x::{A, B}` is one offending import, not two.
    let mut violations = BTreeSet::new();
    for file in rust_files(&src) {
        let rel = file.strip_prefix(&src).unwrap();
        let Some(module) = top_module(rel).filter(|m| declared_set.contains(m.as_str())) else {
            continue; // lib.rs, main.rs, bin/: not inside a library module.
        };
        let text = std::fs::read_to_string(&file).unwrap();
        for reference in references(rel, &text) {
            let top = top_of(&reference.target);
            if top == module || !declared_set.contains(top) {
                continue;
            }
            let allowed = table[module.as_str()].contains(&reference.target.as_str())
                || (reference.in_test && TEST_ALSO.contains(&reference.target.as_str()));
            if !allowed {
                violations.insert(format!(
                    "src/{}:{}: `{module}` may not depend on `{}`: {}",
                    rel.display(),
                    reference.line,
                    reference.target,
                    text.lines().nth(reference.line - 1).unwrap_or("").trim(),
                ));
            }
        }
    }
    assert!(
        violations.is_empty(),
        "imports against the module table in tests/boundaries.rs (see ARCHITECTURE.md, \
         \"Dependencies point one way\"):\n{}",
        violations.into_iter().collect::<Vec<_>>().join("\n")
    );
}

/// The table itself must be a one-way order: a cycle in it would allow a
/// cycle in the code.
#[test]
fn the_table_has_no_cycles() {
    let mut seen = BTreeSet::new();
    for (module, allowed) in ALLOWED {
        for dependency in *allowed {
            assert!(
                seen.contains(top_of(dependency)),
                "`{module}` may depend on `{dependency}`, which is not listed above it"
            );
        }
        seen.insert(*module);
    }
}

/// The checker on sources it must refuse or accept, so that a scanner that
/// silently finds nothing cannot pass.
#[test]
fn the_scanner_finds_every_kind_of_reference() {
    let targets = |rel: &str, text: &str| -> Vec<(String, bool)> {
        references(Path::new(rel), text)
            .into_iter()
            .map(|r| (r.target, r.in_test))
            .collect()
    };
    let plain = |names: &[&str]| -> Vec<(String, bool)> { names.iter().map(|n| (n.to_string(), false)).collect() };
    assert_eq!(
        targets("store/mod.rs", "use crate::batch::record::BatchRecord;"),
        plain(&["batch"])
    );
    assert_eq!(
        targets("engine/server.rs", "fn f() -> crate::api::error::ApiError { todo!() }"),
        plain(&["api"])
    );
    assert_eq!(
        targets(
            "api/x.rs",
            "use crate::{domain::Page, store::{sqlite::SqliteStore, Store}};"
        ),
        plain(&["domain", "store::sqlite", "store"])
    );
    assert_eq!(
        targets("store/sqlite/x.rs", "use super::super::super::batch::X;"),
        plain(&["batch"])
    );
    assert_eq!(targets("store/sqlite/x.rs", "use super::super::Store;"), plain(&[]));
    assert_eq!(
        targets("config.rs", "mod tests { use super::super::models::X; use super::*; }"),
        plain(&["models"])
    );
    assert_eq!(
        targets(
            "batch/x.rs",
            "#[cfg(test)]\nmod tests {\n    use crate::store::sqlite::SqliteStore;\n}"
        ),
        vec![("store::sqlite".to_string(), true)]
    );
    let ignored = r####"
        // use crate::api::x;
        /// See `crate::api::error`.
        /* crate::api:: /* nested crate::api:: */ crate::api:: */
        const S: &str = "crate::api::x";
        const R: &str = r#"crate::api::"x"#;
        const C: char = '"'; const D: char = '\''; fn f<'a>(x: &'a str) {}
        macro_rules! m { () => { $crate::api::x } }
    "####;
    assert_eq!(targets("store/mod.rs", ignored), plain(&[]));
}

/// `pub mod name;` lines of `src/lib.rs` (the `#[cfg]` on a line above
/// does not matter: the engine's code must obey the table too).
fn declared_modules(src: &Path) -> Vec<String> {
    let lib = std::fs::read_to_string(src.join("lib.rs")).unwrap();
    lib.lines()
        .filter_map(|line| line.trim().strip_prefix("pub mod ")?.strip_suffix(';'))
        .map(str::to_owned)
        .collect()
}

fn rust_files(dir: &Path) -> Vec<PathBuf> {
    let mut files = vec![];
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            files.extend(rust_files(&path));
        } else if path.extension().is_some_and(|e| e == "rs") {
            files.push(path);
        }
    }
    files.sort();
    files
}

/// `store/sqlite/batches.rs` -> `store`, `config.rs` -> `config`.
fn top_module(rel: &Path) -> Option<String> {
    let first = rel.components().next()?.as_os_str().to_str()?;
    Some(first.strip_suffix(".rs").unwrap_or(first).to_owned())
}

fn top_of(target: &str) -> &str {
    target.split("::").next().unwrap_or(target)
}

/// The module path of a file below the crate root: `store/sqlite/mod.rs` is
/// `[store, sqlite]`, `store/sqlite/batches.rs` `[store, sqlite, batches]`.
fn file_module_path(rel: &Path) -> Vec<String> {
    let mut path: Vec<String> = rel
        .components()
        .map(|c| c.as_os_str().to_string_lossy().trim_end_matches(".rs").to_owned())
        .collect();
    if path.last().is_some_and(|last| last == "mod") {
        path.pop();
    }
    path
}

struct Reference {
    /// A top-level module, or one of `SUBMODULES`.
    target: String,
    line: usize,
    in_test: bool,
}

/// Every crate module `text` (the file `rel` below `src/`) names.
fn references(rel: &Path, text: &str) -> Vec<Reference> {
    let code = code_only(text);
    let tests = test_items(&code);
    let inline_mods = inline_modules(&code);
    let depth = file_module_path(rel).len();
    let mut found = vec![];
    let mut push = |segments: Vec<String>, at: usize| {
        if let Some(target) = target_of(&segments) {
            found.push(Reference {
                target,
                line: code[..at].iter().filter(|c| **c == '\n').count() + 1,
                in_test: tests.iter().any(|(open, close)| (*open..=*close).contains(&at)),
            });
        }
    };
    let mut i = 0;
    while i < code.len() {
        if !starts_path(&code, i) {
            i += 1;
            continue;
        }
        if word_at(&code, i, "crate") {
            let mut paths = vec![];
            let end = parse_tree(&code, i + "crate".len(), vec![], &mut paths);
            for path in paths {
                push(path, i);
            }
            i = end.max(i + 1);
        } else if word_at(&code, i, "super") {
            // `super` k times from a module k levels deep reaches the crate
            // root, and the next segment is a top-level module.
            let mut at = i;
            let mut climbs = 0;
            while word_at(&code, at, "super") && text_at(&code, at + "super".len(), "::") {
                climbs += 1;
                at += "super::".len();
            }
            let level = depth + inline_mods.iter().filter(|(o, c)| (*o..=*c).contains(&i)).count();
            if climbs > 0 && climbs >= level {
                let mut paths = vec![];
                parse_tree(&code, at - "::".len(), vec![], &mut paths);
                for path in paths {
                    push(path, i);
                }
            }
            i = at.max(i + 1);
        } else {
            i += 1;
        }
    }
    found
}

/// The target a path from the crate root names, if it names a module
/// (`crate::x` or `crate::{x, ...}`; `self`, `*` and the like name none).
fn target_of(segments: &[String]) -> Option<String> {
    let first = segments.first()?;
    if !first.chars().next()?.is_ascii_lowercase() || first == "self" {
        return None;
    }
    let two = segments.iter().take(2).cloned().collect::<Vec<_>>().join("::");
    Some(if SUBMODULES.contains(&two.as_str()) {
        two
    } else {
        first.clone()
    })
}

/// Parses what follows a path prefix (`::a::b`, `::{a, b::{c}}`) from `at`,
/// pushing each full path; returns where the path ends.
fn parse_tree(code: &[char], mut at: usize, prefix: Vec<String>, out: &mut Vec<Vec<String>>) -> usize {
    let mut path = prefix;
    loop {
        at = skip_space(code, at);
        if !text_at(code, at, "::") {
            break;
        }
        at = skip_space(code, at + 2);
        if code.get(at) == Some(&'{') {
            at += 1;
            loop {
                at = skip_space(code, at);
                match code.get(at) {
                    Some('}') => return at + 1,
                    Some(',') => at += 1,
                    None => return at,
                    _ => {
                        let start = at;
                        let (name, next) = ident(code, at);
                        let mut inner = path.clone();
                        if !name.is_empty() {
                            inner.push(name);
                        }
                        at = parse_tree(code, next, inner, out);
                        // Skip `as alias`, `*` and anything else up to the
                        // next element.
                        while !matches!(code.get(at), Some(',' | '}') | None) {
                            at += 1;
                        }
                        if at == start {
                            at += 1;
                        }
                    }
                }
            }
        }
        let (name, next) = ident(code, at);
        if name.is_empty() {
            break;
        }
        path.push(name);
        at = next;
    }
    if !path.is_empty() {
        out.push(path);
    }
    at
}

fn ident(code: &[char], at: usize) -> (String, usize) {
    let mut end = at;
    while code.get(end).is_some_and(|c| c.is_alphanumeric() || *c == '_') {
        end += 1;
    }
    (code[at..end].iter().collect(), end)
}

fn skip_space(code: &[char], mut at: usize) -> usize {
    while code.get(at).is_some_and(|c| c.is_whitespace()) {
        at += 1;
    }
    at
}

fn text_at(code: &[char], at: usize, s: &str) -> bool {
    s.chars().enumerate().all(|(k, c)| code.get(at + k) == Some(&c))
}

/// `word` at `at` as a whole identifier.
fn word_at(code: &[char], at: usize, word: &str) -> bool {
    text_at(code, at, word)
        && !code
            .get(at + word.len())
            .is_some_and(|c| c.is_alphanumeric() || *c == '_')
}

/// Whether a path may start at `at`: not inside an identifier, not after
/// `::` (then it is not the path's first segment) nor after `$` (`$crate`
/// in a macro names whichever crate uses the macro).
fn starts_path(code: &[char], at: usize) -> bool {
    let before = if at == 0 { None } else { code.get(at - 1) };
    !before.is_some_and(|c| c.is_alphanumeric() || matches!(c, '_' | '$' | ':'))
}

/// Brace ranges of items under `#[cfg(test)]`.
fn test_items(code: &[char]) -> Vec<(usize, usize)> {
    let mut ranges = vec![];
    for (at, _) in code
        .iter()
        .enumerate()
        .filter(|(at, _)| text_at(code, *at, "#[cfg(test)]"))
    {
        if let Some(open) = (at..code.len())
            .find(|k| matches!(code[*k], '{' | ';'))
            .filter(|k| code[*k] == '{')
        {
            ranges.push((open, matching_brace(code, open)));
        }
    }
    ranges
}

/// Brace ranges of inline `mod name { ... }` blocks: each adds a level
/// that `super` climbs.
fn inline_modules(code: &[char]) -> Vec<(usize, usize)> {
    let mut ranges = vec![];
    for at in 0..code.len() {
        if !(word_at(code, at, "mod") && starts_path(code, at)) {
            continue;
        }
        let (name, next) = ident(code, skip_space(code, at + 3));
        let open = skip_space(code, next);
        if !name.is_empty() && code.get(open) == Some(&'{') {
            ranges.push((open, matching_brace(code, open)));
        }
    }
    ranges
}

fn matching_brace(code: &[char], open: usize) -> usize {
    let mut depth = 0;
    for (k, c) in code.iter().enumerate().skip(open) {
        match c {
            '{' => depth += 1,
            '}' => {
                depth -= 1;
                if depth == 0 {
                    return k;
                }
            }
            _ => {}
        }
    }
    code.len()
}

/// `text` with comments, string literals and char literals blanked out
/// (newlines kept, so positions keep their line numbers).
fn code_only(text: &str) -> Vec<char> {
    let src: Vec<char> = text.chars().collect();
    let mut out = src.clone();
    let blank = |out: &mut Vec<char>, from: usize, to: usize| {
        for c in &mut out[from..to.min(src.len())] {
            if *c != '\n' {
                *c = ' ';
            }
        }
    };
    let mut i = 0;
    while i < src.len() {
        let rest = &src[i..];
        let after_ident = i > 0 && (src[i - 1].is_alphanumeric() || src[i - 1] == '_');
        if rest.starts_with(&['/', '/']) {
            let end = (i..src.len()).find(|k| src[*k] == '\n').unwrap_or(src.len());
            blank(&mut out, i, end);
            i = end;
        } else if rest.starts_with(&['/', '*']) {
            let (mut depth, mut k) = (0, i);
            while k < src.len() {
                if src[k..].starts_with(&['/', '*']) {
                    depth += 1;
                    k += 2;
                } else if src[k..].starts_with(&['*', '/']) {
                    depth -= 1;
                    k += 2;
                    if depth == 0 {
                        break;
                    }
                } else {
                    k += 1;
                }
            }
            blank(&mut out, i, k);
            i = k;
        } else if src[i] == 'r' && (!after_ident || src[i - 1] == 'b') && raw_hashes(&src, i + 1).is_some() {
            let hashes = raw_hashes(&src, i + 1).unwrap();
            let body = i + 1 + hashes + 1;
            let closing: Vec<char> = std::iter::once('"').chain(std::iter::repeat_n('#', hashes)).collect();
            let end = (body..src.len())
                .find(|k| src[*k..].starts_with(&closing))
                .map_or(src.len(), |k| k + closing.len());
            blank(&mut out, i, end);
            i = end;
        } else if src[i] == '"' {
            let mut k = i + 1;
            while k < src.len() && src[k] != '"' {
                k += if src[k] == '\\' { 2 } else { 1 };
            }
            blank(&mut out, i, k + 1);
            i = k + 1;
        } else if src[i] == '\'' && src.get(i + 1) == Some(&'\\') {
            let end = (i + 3..src.len()).find(|k| src[*k] == '\'').unwrap_or(src.len());
            blank(&mut out, i, end + 1);
            i = end + 1;
        } else if src[i] == '\'' && src.get(i + 2) == Some(&'\'') {
            blank(&mut out, i, i + 3);
            i += 3;
        } else {
            i += 1; // Code, or a lifetime.
        }
    }
    out
}

/// For `r##"`: the number of `#` between `r` and `"`, if a raw string starts.
fn raw_hashes(src: &[char], at: usize) -> Option<usize> {
    let hashes = src[at..].iter().take_while(|c| **c == '#').count();
    (src.get(at + hashes) == Some(&'"')).then_some(hashes)
}
