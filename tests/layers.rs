//! The crate's layers point one way (docs/architecture.md): each top-level module may
//! import only modules of lower rows. This test reads every source file, collects the
//! `crate::NAME` paths it uses (outside comments and unit tests) and fails on an edge
//! that points up or sideways, naming the file, so a new cycle cannot land unnoticed.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

/// The rows of docs/architecture.md, bottom first.
const ROWS: &[&[&str]] = &[
    &["wire"],
    &["config"],
    &["observe", "window"],
    &["cluster"],
    &[
        "auth",
        "cors",
        "iplist",
        "router",
        "tls",
        "grpc",
        "telemetry",
    ],
    &["transform", "ratelimit"],
    &["upstream"],
    &["cache", "split"],
    &["mirror"],
    &["runtime"],
    &["context", "error"],
    &["gateway"],
    &["control"],
    &["admin"],
    &["server"],
];

fn row(module: &str) -> Option<usize> {
    ROWS.iter().position(|r| r.contains(&module))
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).expect("src is readable") {
        let path = entry.expect("directory entry").path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// The top-level module a file belongs to (`src/upstream/retry.rs` -> `upstream`).
fn module_of(src: &Path, file: &Path) -> String {
    let relative = file.strip_prefix(src).expect("under src");
    let first = relative
        .components()
        .next()
        .and_then(|c| c.as_os_str().to_str())
        .unwrap_or_default();
    first.trim_end_matches(".rs").to_string()
}

/// The code of a file without comment lines and without its unit-test module.
fn code(text: &str) -> String {
    let text = match text.find("#[cfg(test)]\nmod tests") {
        Some(at) => &text[..at],
        None => text,
    };
    text.lines()
        .filter(|l| !l.trim_start().starts_with("//"))
        .collect::<Vec<_>>()
        .join("\n")
}

/// Every module named right after `crate::`, including each name of `crate::{a, b::c}`.
fn imported_modules(code: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let ident = |s: &str| -> String {
        s.chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
            .collect()
    };
    for (at, _) in code.match_indices("crate::") {
        let rest = &code[at + "crate::".len()..];
        if let Some(group) = rest.strip_prefix('{') {
            let mut depth = 0usize;
            let mut start = true;
            for (i, c) in group.char_indices() {
                match c {
                    '{' => depth += 1,
                    '}' if depth == 0 => break,
                    '}' => depth -= 1,
                    ',' if depth == 0 => start = true,
                    c if c.is_whitespace() => {}
                    _ if start && depth == 0 => {
                        out.insert(ident(&group[i..]));
                        start = false;
                    }
                    _ => {}
                }
            }
        } else {
            out.insert(ident(rest));
        }
    }
    out
}

#[test]
fn imports_point_down_the_layers() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    files.sort();
    let mut violations = Vec::new();
    let mut unplaced = BTreeSet::new();
    let mut edges = 0;
    for file in &files {
        let from = module_of(&src, file);
        if from == "lib" || from == "main" || file.ends_with("tests.rs") {
            continue;
        }
        let Some(from_row) = row(&from) else {
            unplaced.insert(from.clone());
            continue;
        };
        let text = std::fs::read_to_string(file).expect("source is readable");
        for to in imported_modules(&code(&text)) {
            if to == from || to.is_empty() || to == "self" {
                continue;
            }
            edges += 1;
            match row(&to) {
                Some(to_row) if to_row < from_row => {}
                Some(_) => violations.push(format!(
                    "{} ({from}) imports {to}: same or higher row",
                    file.strip_prefix(&src).unwrap_or(file).display()
                )),
                None => {
                    unplaced.insert(to);
                }
            }
        }
    }
    assert!(
        edges > 50,
        "found only {edges} imports: is the scan broken?"
    );
    assert!(
        unplaced.is_empty(),
        "modules missing from ROWS (place them in docs/architecture.md and here): {unplaced:?}"
    );
    assert!(violations.is_empty(), "{}", violations.join("\n"));
}

#[test]
fn the_scan_reads_grouped_and_plain_paths() {
    let found = imported_modules(
        "use crate::{wire::body::Body, observe::{Metrics, Outcome}, config};\nlet x = crate::upstream::Upstream::build();",
    );
    let expected: BTreeSet<String> = ["wire", "observe", "config", "upstream"]
        .into_iter()
        .map(String::from)
        .collect();
    assert_eq!(found, expected);
    assert!(imported_modules(&code("// crate::gateway in a comment\n")).is_empty());
}
