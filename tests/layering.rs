//! The library's layers import only downward (issue #10).
//!
//! Every top-level module of `src/` belongs to one layer of [`LAYERS`], lowest first; a
//! module may name modules of its own layer or of lower ones, never of higher ones. This
//! test reads the sources (it does not use the library's API): for every file under
//! `src/` except `src/lib.rs` (which declares the modules and the crate-root re-exports)
//! and `src/bin/` (the `blo` command, which may use anything), it collects the top-level
//! modules the file names and fails, listing every violation with file:line and both
//! layers, when one of them sits above the file's own module.
//!
//! What counts as naming a module:
//! - `crate::NAME` anywhere (paths in `use`, in expressions, in types, `$crate::` in
//!   macros), and every first segment inside `crate::{a, b::c, …}` groups (over any
//!   number of lines). A name that is a crate-root re-export (`crate::Tensor`,
//!   `crate::Result`) counts as the module `src/lib.rs` re-exports it from.
//! - `super::…` chains that climb out of the file's top-level module to the crate root
//!   (`super::super::bilevel` in `src/ops/binary.rs`); the file's own module path and
//!   inline `mod name { … }` blocks give the depth.
//!
//! What does not count: comments (`//`, doc comments, nested `/* */`), string and
//! character literals (raw strings too), and test code. Test code is found the way the
//! compiler finds it, not by where it sits in a file: every item at the top level of a
//! file that carries `#[cfg(test)]` (a `mod tests { … }`, a `#[cfg(test)]` macro or
//! function in the middle of a file, …) is cut out whole, up to its closing `;` or `}`,
//! and a file whose module is declared `#[cfg(test)] mod name;` in its parent (with
//! everything under it) is skipped; a file that starts with `#![cfg(test)]` too. Code
//! after a test module is still checked. `#[cfg(test)]` on something nested (a field, an
//! item inside an `impl`) is not cut out: that code is checked as if it were not test
//! code, which can only report too much, never too little.
//!
//! A top-level module missing from [`LAYERS`] (a new file under `src/`, a new
//! `mod` in `src/lib.rs`, or an unknown `crate::NAME`) fails the test with a message
//! saying to add it to the table, so a new module cannot bypass the check.
//!
//! The scanner itself is tested below on small in-memory sources.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

/// The layers, lowest first. Modules of one entry form one layer and may name each
/// other.
const LAYERS: &[&[&str]] = &[
    &["dtype", "error"],
    &["device", "backend"],
    &["tensor"],
    &["ops"],
    &["autodiff"],
    &["solvers"],
    // Meta-learning sits beside the bilevel core and runs its inner trajectories.
    &["bilevel", "meta"],
    &["problems"],
    &["experiment"],
    // Test helpers (`blo check`, `blo::testing`).
    &["check", "testing"],
];

// ---- the real sources ---------------------------------------------------------------

#[test]
fn layers_import_only_downward() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let lib = std::fs::read_to_string(src.join("lib.rs")).expect("read src/lib.rs");
    let mut files = Vec::new();
    collect(&src, &src, &mut files);
    assert!(
        files.len() > 20,
        "found only {} source files under {}",
        files.len(),
        src.display()
    );
    let report = scan(&lib, &files);
    assert!(
        report.problems.is_empty(),
        "layering violations (layers, lowest first: {}); see tests/layering.rs:\n{}",
        LAYERS
            .iter()
            .map(|l| l.join(" + "))
            .collect::<Vec<_>>()
            .join(" < "),
        report.problems.join("\n")
    );
    // Not vacuous: the library's modules do name each other, downward.
    assert!(
        report.references > 100,
        "only {} crate:: references found: is the scanner broken?",
        report.references
    );
}

/// Every `.rs` file under `dir`, as (path relative to `src/` with `/`, contents),
/// except `src/bin/` and `src/lib.rs`.
fn collect(src: &Path, dir: &Path, out: &mut Vec<(String, String)>) {
    let mut entries: Vec<_> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("read {}: {e}", dir.display()))
        .map(|e| e.expect("directory entry").path())
        .collect();
    entries.sort();
    for path in entries {
        let rel = path
            .strip_prefix(src)
            .expect("under src/")
            .components()
            .map(|c| c.as_os_str().to_string_lossy().into_owned())
            .collect::<Vec<_>>()
            .join("/");
        if path.is_dir() {
            if rel != "bin" {
                collect(src, &path, out);
            }
        } else if rel.ends_with(".rs") && rel != "lib.rs" {
            let text = std::fs::read_to_string(&path)
                .unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
            out.push((rel, text));
        }
    }
}

// ---- the scanner --------------------------------------------------------------------

#[derive(Debug, Default)]
struct Report {
    /// One line per violation or unknown module: `src/FILE:LINE: …`.
    problems: Vec<String>,
    /// How many references to top-level modules were checked.
    references: usize,
}

/// Checks `files` ((path relative to `src/`, contents)) against [`LAYERS`], with the
/// crate-root re-exports of `lib_rs`.
fn scan(lib_rs: &str, files: &[(String, String)]) -> Report {
    let mut report = Report::default();
    let lib_toks = strip_test_items(&tokenize(lib_rs)).0;
    for (line, module) in declared_modules(&lib_toks) {
        if layer_of(&module).is_none() {
            report.problems.push(format!(
                "src/lib.rs:{line}: module `{module}` is not in the layer table: add it to LAYERS in tests/layering.rs"
            ));
        }
    }
    let reexports = reexports(&lib_toks);

    // Each file without its test items, and the test-only modules declared in it.
    let mut kept: BTreeMap<&str, Vec<Tok>> = BTreeMap::new();
    let mut test_only: BTreeSet<String> = BTreeSet::new();
    for (path, text) in files {
        let (toks, test_mods) = strip_test_items(&tokenize(text));
        let dir = children_dir(path);
        for (line, name) in test_mods {
            let stem = format!("{dir}{name}");
            let found = files
                .iter()
                .any(|(p, _)| *p == format!("{stem}.rs") || *p == format!("{stem}/mod.rs"));
            if !found {
                report.problems.push(format!(
                    "src/{path}:{line}: cannot find the file of test module `{name}` (src/{stem}.rs or src/{stem}/mod.rs); the scanner would check it as library code"
                ));
            }
            test_only.insert(stem);
        }
        kept.insert(path, toks);
    }

    for (path, toks) in &kept {
        let is_test = test_only.iter().any(|stem| {
            *path == format!("{stem}.rs").as_str() || path.starts_with(&format!("{stem}/"))
        });
        if is_test {
            continue;
        }
        let from = top_module(path);
        let Some(from_layer) = layer_of(from) else {
            report.problems.push(format!(
                "src/{path}: top-level module `{from}` is not in the layer table: add it to LAYERS in tests/layering.rs"
            ));
            continue;
        };
        for (line, name) in references(toks, module_depth(path)) {
            report.references += 1;
            let (to, via) = match reexports.get(&name) {
                Some(m) if layer_of(&name).is_none() => {
                    (m.as_str(), format!(" (crate-root re-export `{name}`)"))
                }
                _ => (name.as_str(), String::new()),
            };
            let Some(to_layer) = layer_of(to) else {
                report.problems.push(format!(
                    "src/{path}:{line}: `crate::{name}` is neither a module in the layer table nor a re-export in src/lib.rs: add the module to LAYERS in tests/layering.rs"
                ));
                continue;
            };
            if to_layer > from_layer {
                report.problems.push(format!(
                    "src/{path}:{line}: {from} (layer {from_layer}) imports {to} (layer {to_layer}){via}, a higher layer"
                ));
            }
        }
    }
    report
}

/// The index of `module`'s layer in [`LAYERS`].
fn layer_of(module: &str) -> Option<usize> {
    LAYERS.iter().position(|l| l.contains(&module))
}

/// The top-level module of a file: `tensor/tape.rs` → `tensor`, `solvers.rs` → `solvers`.
fn top_module(path: &str) -> &str {
    let first = path.split('/').next().unwrap_or(path);
    first.strip_suffix(".rs").unwrap_or(first)
}

/// How deep a file's module is below the crate root: `solvers.rs` and `ops/mod.rs` are
/// 1, `ops/binary.rs` is 2.
fn module_depth(path: &str) -> usize {
    let parts = path.split('/').count();
    if path.ends_with("/mod.rs") {
        parts - 1
    } else {
        parts
    }
}

/// Where the files of the modules a file declares live: `ops/mod.rs` → `ops/`,
/// `ops/binary.rs` → `ops/binary/`, `lib.rs` → ``.
fn children_dir(path: &str) -> String {
    match path.rsplit_once('/') {
        Some((dir, "mod.rs")) => format!("{dir}/"),
        _ if path == "lib.rs" => String::new(),
        _ => format!("{}/", path.trim_end_matches(".rs")),
    }
}

#[derive(Debug, Clone)]
struct Tok {
    text: String,
    line: usize,
}

/// The tokens of Rust source, enough of them to find paths: identifiers, `::` and
/// single punctuation characters, with their lines. Comments are dropped; string and
/// character literals become `""` and `''`, so nothing inside them is seen.
fn tokenize(src: &str) -> Vec<Tok> {
    let c: Vec<char> = src.chars().collect();
    let at = |k: usize| c.get(k).copied().unwrap_or('\0');
    let ident_start = |ch: char| ch.is_alphabetic() || ch == '_';
    let ident_continue = |ch: char| ch.is_alphanumeric() || ch == '_';
    let mut toks = Vec::new();
    let mut push = |text: String, line: usize| toks.push(Tok { text, line });
    let (mut i, mut line) = (0, 1);
    while i < c.len() {
        let ch = c[i];
        if ch == '\n' {
            line += 1;
            i += 1;
        } else if ch.is_whitespace() {
            i += 1;
        } else if ch == '/' && at(i + 1) == '/' {
            while i < c.len() && c[i] != '\n' {
                i += 1;
            }
        } else if ch == '/' && at(i + 1) == '*' {
            // Block comments nest.
            let mut depth = 0;
            while i < c.len() {
                if c[i] == '/' && at(i + 1) == '*' {
                    depth += 1;
                    i += 2;
                } else if c[i] == '*' && at(i + 1) == '/' {
                    depth -= 1;
                    i += 2;
                    if depth == 0 {
                        break;
                    }
                } else {
                    if c[i] == '\n' {
                        line += 1;
                    }
                    i += 1;
                }
            }
        } else if ident_start(ch) {
            let start = i;
            while i < c.len() && ident_continue(c[i]) {
                i += 1;
            }
            let word: String = c[start..i].iter().collect();
            let mut hashes = 0;
            while at(i + hashes) == '#' {
                hashes += 1;
            }
            if matches!(word.as_str(), "r" | "br" | "cr") && at(i + hashes) == '"' {
                // A raw string: ends at a quote followed by as many #s.
                let first = line;
                let mut j = i + hashes + 1;
                while j < c.len() && !(c[j] == '"' && (1..=hashes).all(|h| at(j + h) == '#')) {
                    if c[j] == '\n' {
                        line += 1;
                    }
                    j += 1;
                }
                i = j + 1 + hashes;
                push("\"\"".into(), first);
            } else if word == "r" && hashes == 1 && ident_start(at(i + 1)) {
                // A raw identifier, r#name.
                let start = i + 1;
                i = start;
                while i < c.len() && ident_continue(c[i]) {
                    i += 1;
                }
                push(c[start..i].iter().collect(), line);
            } else if matches!(word.as_str(), "b" | "c") && matches!(at(i), '"' | '\'') {
                // A byte or C string or a byte: the literal follows.
            } else {
                push(word, line);
            }
        } else if ch.is_ascii_digit() {
            let start = i;
            while i < c.len() && ident_continue(c[i]) {
                i += 1;
            }
            push(c[start..i].iter().collect(), line);
        } else if ch == '"' {
            let first = line;
            i += 1;
            while i < c.len() && c[i] != '"' {
                if c[i] == '\\' {
                    i += 1;
                }
                if at(i) == '\n' {
                    line += 1;
                }
                i += 1;
            }
            i += 1;
            push("\"\"".into(), first);
        } else if ch == '\'' {
            if at(i + 1) == '\\' {
                // '\n', '\'', '\u{..}': the escaped character, then up to the quote.
                let mut j = i + 3;
                while j < c.len() && c[j] != '\'' {
                    j += 1;
                }
                i = j + 1;
                push("''".into(), line);
            } else if at(i + 2) == '\'' {
                i += 3;
                push("''".into(), line);
            } else {
                // A lifetime or a label.
                let start = i;
                i += 1;
                while i < c.len() && ident_continue(c[i]) {
                    i += 1;
                }
                push(c[start..i].iter().collect(), line);
            }
        } else if ch == ':' && at(i + 1) == ':' {
            push("::".into(), line);
            i += 2;
        } else {
            push(ch.to_string(), line);
            i += 1;
        }
    }
    toks
}

fn text(toks: &[Tok], i: usize) -> &str {
    toks.get(i).map_or("", |t| t.text.as_str())
}

fn is_ident(s: &str) -> bool {
    s.starts_with(|ch: char| ch.is_alphabetic() || ch == '_')
}

/// The index just past the bracket group that opens at `i`.
fn skip_group(toks: &[Tok], i: usize) -> usize {
    let mut depth = 0;
    let mut j = i;
    while j < toks.len() {
        match text(toks, j) {
            "(" | "[" | "{" => depth += 1,
            ")" | "]" | "}" => {
                depth -= 1;
                if depth == 0 {
                    return j + 1;
                }
            }
            _ => {}
        }
        j += 1;
    }
    j
}

/// `toks` without the items at the file's top level that carry `#[cfg(test)]`, and
/// the modules declared `#[cfg(test)] mod name;` (their files are test code), with
/// their lines. A file starting with `#![cfg(test)]` is test code entirely.
fn strip_test_items(toks: &[Tok]) -> (Vec<Tok>, Vec<(usize, String)>) {
    let cfg_test = |i: usize, inner: bool| {
        let attr: &[&str] = if inner {
            &["#", "!", "[", "cfg", "(", "test", ")", "]"]
        } else {
            &["#", "[", "cfg", "(", "test", ")", "]"]
        };
        attr.iter()
            .enumerate()
            .all(|(k, want)| text(toks, i + k) == *want)
    };
    let mut kept = Vec::new();
    let mut test_mods = Vec::new();
    let mut depth = 0i32;
    let mut i = 0;
    while i < toks.len() {
        if depth == 0 && cfg_test(i, true) {
            return (Vec::new(), test_mods);
        }
        if depth == 0 && cfg_test(i, false) {
            let mut j = i + 7;
            // Further attributes of the same item.
            while text(toks, j) == "#" && text(toks, j + 1) == "[" {
                j = skip_group(toks, j + 1);
            }
            let mut k = j;
            if text(toks, k) == "pub" {
                k += 1;
                if text(toks, k) == "(" {
                    k = skip_group(toks, k);
                }
            }
            if text(toks, k) == "mod" && text(toks, k + 2) == ";" {
                test_mods.push((toks[k].line, text(toks, k + 1).to_string()));
            }
            // The item ends at a `;` outside brackets or at the `}` closing its body.
            let mut d = 0;
            while j < toks.len() {
                match text(toks, j) {
                    "(" | "[" | "{" => d += 1,
                    ")" | "]" => d -= 1,
                    "}" => {
                        d -= 1;
                        if d == 0 {
                            j += 1;
                            break;
                        }
                    }
                    ";" if d == 0 => {
                        j += 1;
                        break;
                    }
                    _ => {}
                }
                j += 1;
            }
            i = j;
            continue;
        }
        match text(toks, i) {
            "(" | "[" | "{" => depth += 1,
            ")" | "]" | "}" => depth -= 1,
            _ => {}
        }
        kept.push(toks[i].clone());
        i += 1;
    }
    (kept, test_mods)
}

/// The top-level modules a file names, with their lines: `crate::NAME`, the first
/// segments in `crate::{…}` groups, and `super::…` chains that climb to the crate root
/// from a module `depth` levels below it.
fn references(toks: &[Tok], depth: usize) -> Vec<(usize, String)> {
    let mut refs = Vec::new();
    // Brace depths at which inline `mod name {` blocks opened.
    let mut inline_mods: Vec<i32> = Vec::new();
    let mut braces = 0i32;
    // After `crate::` or a `super::` chain that reached the root: the names there.
    let root_names = |j: usize, refs: &mut Vec<(usize, String)>| {
        if text(toks, j) != "{" {
            refs.push((toks.get(j).map_or(0, |t| t.line), text(toks, j).to_string()));
            return;
        }
        let mut d = 0;
        let mut at_start = false;
        for (k, tok) in toks.iter().enumerate().skip(j) {
            match tok.text.as_str() {
                "{" => {
                    d += 1;
                    at_start = d == 1;
                }
                "}" => {
                    d -= 1;
                    if d == 0 {
                        break;
                    }
                }
                "," if d == 1 => at_start = true,
                t if at_start && d == 1 => {
                    if t != "self" {
                        refs.push((toks[k].line, t.to_string()));
                    }
                    at_start = false;
                }
                _ => {}
            }
        }
    };
    for i in 0..toks.len() {
        match text(toks, i) {
            "{" => {
                if text(toks, i.wrapping_sub(2)) == "mod" && is_ident(text(toks, i - 1)) {
                    inline_mods.push(braces);
                }
                braces += 1;
            }
            "}" => {
                braces -= 1;
                if inline_mods.last() == Some(&braces) {
                    inline_mods.pop();
                }
            }
            "crate" if text(toks, i + 1) == "::" && text(toks, i.wrapping_sub(1)) != "::" => {
                root_names(i + 2, &mut refs);
            }
            "super" if text(toks, i.wrapping_sub(1)) != "::" => {
                let mut ups = 1;
                let mut j = i + 1;
                while text(toks, j) == "::" && text(toks, j + 1) == "super" {
                    ups += 1;
                    j += 2;
                }
                if ups >= depth + inline_mods.len() && text(toks, j) == "::" {
                    root_names(j + 1, &mut refs);
                }
            }
            _ => {}
        }
    }
    refs.retain(|(_, name)| name != "self");
    refs
}

/// The modules `src/lib.rs` declares (`mod name;`, any visibility), with their lines.
fn declared_modules(toks: &[Tok]) -> Vec<(usize, String)> {
    (0..toks.len())
        .filter(|&i| text(toks, i) == "mod" && text(toks, i + 2) == ";")
        .map(|i| (toks[i].line, text(toks, i + 1).to_string()))
        .collect()
}

/// The crate-root re-exports of `src/lib.rs`: each name a `use` of it brings into the
/// crate root, mapped to the top-level module it comes from (`pub use
/// tensor::{DType, Tensor};` maps `DType` and `Tensor` to `tensor`).
fn reexports(toks: &[Tok]) -> BTreeMap<String, String> {
    let mut map = BTreeMap::new();
    let mut i = 0;
    while i < toks.len() {
        if text(toks, i) != "use" {
            i += 1;
            continue;
        }
        let mut j = i + 1;
        while matches!(text(toks, j), "crate" | "self" | "::") {
            j += 1;
        }
        let module = text(toks, j).to_string();
        while j < toks.len() && text(toks, j) != ";" {
            let t = text(toks, j);
            let next = text(toks, j + 1);
            if is_ident(t) && t != "self" && matches!(next, "," | "}" | ";") {
                map.insert(t.to_string(), module.clone());
            }
            j += 1;
        }
        i = j;
    }
    map
}

// ---- the scanner's own tests --------------------------------------------------------

const LIB: &str = "
pub mod bilevel;
mod dtype;
pub mod error;
pub mod ops;
pub mod tensor;
pub mod testing;
pub use error::{Error, Result};
pub use ops::update::Scalar;
pub use tensor::{DType as Kind, Tensor};
";

fn scan_one(path: &str, text: &str) -> Vec<String> {
    scan(LIB, &[(path.to_string(), text.to_string())]).problems
}

#[test]
fn an_upward_import_is_reported_with_its_file_line_and_layers() {
    let problems = scan_one(
        "tensor/tape.rs",
        "use crate::error::Result;\nuse crate::bilevel::Method;\n",
    );
    assert_eq!(
        problems,
        ["src/tensor/tape.rs:2: tensor (layer 2) imports bilevel (layer 6), a higher layer"]
    );
}

#[test]
fn every_kind_of_reference_is_found() {
    let src = r#"
use crate::{
    dtype::DType,
    bilevel::{Method, inner},
    error,
};
fn f() -> crate::Scalar<'static> { todo!() }
fn g(x: &crate::ops::unary::UnaryOp) {}
macro_rules! m { () => { $crate::testing::oracle_pair() } }
fn h() { super::super::bilevel::run(); super::other(); }
mod inner { fn k() { super::super::super::testing::x(); super::super::tensor::y(); } }
#[cfg(test)]
mod tests {
    use crate::testing::oracle_pair;
}
fn after_the_tests() { crate::ops::x(); }
"#;
    let problems = scan_one("tensor/storage.rs", src);
    let want = [
        "src/tensor/storage.rs:4: tensor (layer 2) imports bilevel (layer 6), a higher layer",
        "src/tensor/storage.rs:7: tensor (layer 2) imports ops (layer 3) (crate-root re-export `Scalar`), a higher layer",
        "src/tensor/storage.rs:8: tensor (layer 2) imports ops (layer 3), a higher layer",
        "src/tensor/storage.rs:9: tensor (layer 2) imports testing (layer 9), a higher layer",
        "src/tensor/storage.rs:10: tensor (layer 2) imports bilevel (layer 6), a higher layer",
        "src/tensor/storage.rs:11: tensor (layer 2) imports testing (layer 9), a higher layer",
        "src/tensor/storage.rs:16: tensor (layer 2) imports ops (layer 3), a higher layer",
    ];
    assert_eq!(problems, want);
}

#[test]
fn comments_literals_and_test_code_are_not_references() {
    let src = r##"
//! Docs mention crate::bilevel.
use crate::error::Result; // and crate::bilevel in a comment
/* a block crate::bilevel /* nested crate::bilevel */ still crate::bilevel */
const S: &str = "crate::bilevel \" crate::bilevel";
const R: &str = r#"crate::bilevel "quoted" crate::bilevel"#;
const Q: char = '"';
const E: char = '\'';
fn f<'a>(x: &'a crate::Kind) -> &'a crate::Kind { x }
#[cfg(test)]
#[cfg(test)]
fn helper() { crate::testing::oracle_pair(); }
#[cfg(test)]
mod unit;
#[cfg(test)]
mod tests {
    use crate::testing::oracle_pair;
    fn t() { let _ = crate::bilevel::x; }
}
"##;
    let files = [
        ("tensor/mod.rs".to_string(), src.to_string()),
        // Declared `#[cfg(test)] mod unit;` above: test code.
        (
            "tensor/unit.rs".to_string(),
            "use crate::testing::oracle_pair;".to_string(),
        ),
        (
            "tensor/unit/deeper.rs".to_string(),
            "use crate::bilevel;".to_string(),
        ),
    ];
    let report = scan(LIB, &files);
    assert_eq!(report.problems, Vec::<String>::new());
    // crate::error and crate::Kind twice.
    assert_eq!(report.references, 3);
}

#[test]
fn a_module_missing_from_the_table_fails() {
    let lib = format!("{LIB}pub mod plugins;\n");
    let files = [
        (
            "plugins/mod.rs".to_string(),
            "use crate::tensor::Tensor;".to_string(),
        ),
        (
            "ops/mod.rs".to_string(),
            "use crate::mystery::X;".to_string(),
        ),
    ];
    let problems = scan(&lib, &files).problems;
    assert_eq!(problems.len(), 3, "{problems:#?}");
    assert!(problems[0].starts_with("src/lib.rs:11: module `plugins` is not in the layer table"));
    assert!(problems[1].starts_with("src/ops/mod.rs:1: `crate::mystery` is neither"));
    assert!(
        problems[2].starts_with(
            "src/plugins/mod.rs: top-level module `plugins` is not in the layer table"
        )
    );
}

#[test]
fn a_test_module_whose_file_is_missing_fails() {
    let problems = scan_one("ops/binary.rs", "#[cfg(test)]\nmod tests;\n");
    assert_eq!(problems.len(), 1, "{problems:#?}");
    assert!(problems[0].starts_with(
        "src/ops/binary.rs:2: cannot find the file of test module `tests` (src/ops/binary/tests.rs"
    ));
}
