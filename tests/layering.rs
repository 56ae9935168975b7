//! The layering of DESIGN.md (style rule 7), checked on the source: each layer uses only
//! what is below it — main → commands → cli/export → transfer → azure, image — and
//! `output` (rendering) and `error` (the public error and its exit codes) only from
//! `commands` and `main`. `interrupt` and `units` are leaves every layer may use. clap
//! stays in `cli`, terminal rendering in `output`.
//!
//! Reads every `src/**.rs`, takes each `crate::<module>` path outside comments (grouped
//! `use crate::{a, b}` included) and fails on an edge the table below does not allow,
//! naming the file, the line and the edge.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// Top-level module → the top-level modules it may use (itself always).
const ALLOWED: &[(&str, &[&str])] = &[
    (
        "main",
        &[
            "cli",
            "commands",
            "error",
            "export",
            "transfer",
            "azure",
            "image",
            "output",
            "interrupt",
            "units",
        ],
    ),
    ("lib", &[]),
    (
        "commands",
        &[
            "cli",
            "export",
            "transfer",
            "azure",
            "image",
            "output",
            "error",
            "interrupt",
            "units",
        ],
    ),
    // Flags are mapped onto the core's own types (formats, consistency, shard).
    ("cli", &["export", "transfer", "azure", "image", "units"]),
    (
        "export",
        &["transfer", "azure", "image", "interrupt", "units"],
    ),
    ("transfer", &["azure", "image", "interrupt", "units"]),
    ("azure", &["interrupt", "units"]),
    ("image", &["interrupt", "units"]),
    ("output", &["units"]),
    // The one place where each layer's errors become exit codes.
    ("error", &["export", "transfer", "azure", "image"]),
    ("interrupt", &[]),
    ("units", &[]),
];

/// External crates that belong to one layer: (crate path, modules that may use it).
const CRATES: &[(&str, &[&str])] = &[
    ("clap::", &["cli", "main"]),
    ("indicatif::", &["output"]),
    ("tracing_subscriber::", &["output"]),
];

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// `src/export/plan.rs` → `export`; `src/main.rs` → `main`.
fn top_module(src: &Path, file: &Path) -> String {
    let rel = file.strip_prefix(src).unwrap();
    let first = rel
        .components()
        .next()
        .unwrap()
        .as_os_str()
        .to_string_lossy();
    first.trim_end_matches(".rs").to_string()
}

/// The code of a line: without `//` comments (not inside a string: `"https://…"`).
fn code_of(line: &str) -> &str {
    let mut in_str = false;
    let mut prev = ' ';
    for (i, c) in line.char_indices() {
        match c {
            '"' if prev != '\\' => in_str = !in_str,
            '/' if !in_str && prev == '/' => return &line[..i - 1],
            _ => {}
        }
        prev = c;
    }
    line
}

/// Every top-level module a line names through `crate::`.
fn crate_uses(code: &str) -> Vec<String> {
    let mut found = Vec::new();
    let mut rest = code;
    while let Some(at) = rest.find("crate::") {
        // Not a longer identifier ending in `crate` (e.g. `my_crate::`).
        let before = rest[..at].chars().next_back();
        rest = &rest[at + "crate::".len()..];
        if before.is_some_and(|c| c.is_alphanumeric() || c == '_') {
            continue;
        }
        if let Some(group) = rest.strip_prefix('{') {
            // `crate::{a::b, c}`: the first segment of each item (one line's worth).
            let inner = group.split('}').next().unwrap_or("");
            found.extend(
                inner
                    .split(',')
                    .filter_map(|item| item.trim().split("::").next())
                    .filter(|s| !s.is_empty())
                    .map(str::to_string),
            );
        } else {
            let ident: String = rest
                .chars()
                .take_while(|c| c.is_alphanumeric() || *c == '_')
                .collect();
            if !ident.is_empty() {
                found.push(ident);
            }
        }
    }
    found
}

/// Every forbidden edge in the crate, as `file:line: from → to`.
fn violations(src: &Path) -> Vec<String> {
    let allowed: BTreeMap<&str, &[&str]> = ALLOWED.iter().copied().collect();
    let mut files = Vec::new();
    rust_files(src, &mut files);
    files.sort();
    let mut bad = Vec::new();
    for file in &files {
        let from = top_module(src, file);
        let Some(may) = allowed.get(from.as_str()) else {
            bad.push(format!(
                "{}: module {from} is not in the layering table of tests/layering.rs",
                file.display()
            ));
            continue;
        };
        let text = std::fs::read_to_string(file).unwrap();
        for (n, line) in text.lines().enumerate() {
            let code = code_of(line);
            for to in crate_uses(code) {
                if to != from && !may.contains(&to.as_str()) {
                    bad.push(format!("{}:{}: {from} → {to}", file.display(), n + 1));
                }
            }
            for (krate, users) in CRATES {
                if code.contains(krate) && !users.contains(&from.as_str()) {
                    bad.push(format!(
                        "{}:{}: {from} uses {}",
                        file.display(),
                        n + 1,
                        krate.trim_end_matches("::")
                    ));
                }
            }
        }
    }
    bad
}

#[test]
fn each_layer_uses_only_what_is_below_it() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let bad = violations(&src);
    assert!(
        bad.is_empty(),
        "edges DESIGN.md forbids (see tests/layering.rs):\n{}",
        bad.join("\n")
    );
}

#[test]
fn the_check_finds_forbidden_edges() {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path();
    std::fs::create_dir_all(src.join("transfer")).unwrap();
    std::fs::create_dir_all(src.join("export")).unwrap();
    std::fs::create_dir_all(src.join("azure")).unwrap();
    std::fs::write(
        src.join("transfer/job.rs"),
        "use crate::image::sink;\n// crate::output in a comment is fine\nuse crate::output::units::human_bytes;\n",
    )
    .unwrap();
    std::fs::write(
        src.join("export/plan.rs"),
        "use crate::{azure::arm::ResourceId, cli::DiskSet};\nlet u = \"https://x\"; // crate::cli\n",
    )
    .unwrap();
    std::fs::write(
        src.join("azure/cloud.rs"),
        "#[derive(clap::ValueEnum)]\nenum CloudName {}\nfn f() -> crate::error::Error { todo!() }\n",
    )
    .unwrap();
    std::fs::write(src.join("extra.rs"), "").unwrap();
    let bad = violations(src);
    let has = |s: &str| bad.iter().any(|b| b.ends_with(s));
    assert!(has("job.rs:3: transfer → output"), "{bad:?}");
    assert!(has("plan.rs:1: export → cli"), "{bad:?}");
    assert!(has("cloud.rs:1: azure uses clap"), "{bad:?}");
    assert!(has("cloud.rs:3: azure → error"), "{bad:?}");
    assert!(
        bad.iter()
            .any(|b| b.contains("module extra is not in the layering table"))
    );
    assert_eq!(bad.len(), 5, "{bad:?}");
}

/// Longest function DESIGN.md's "small focused functions" allows in src.
const MAX_FN_LINES: usize = 100;

/// Every `fn` with a body in `text`, as (name, first line, line count from the `fn` line
/// to its closing brace). A cheap brace counter, honest about what it counts: braces
/// outside `//` comments and outside `"…"` string literals (an escaped quote stays
/// inside); char literals `'{'` and `/* */` comments are not understood, and none in src
/// hold an unbalanced brace. Nested functions are measured on their own and also count
/// towards the function around them.
fn function_lengths(text: &str) -> Vec<(String, usize, usize)> {
    let mut found = Vec::new();
    // Functions whose body is open: (name, first line, depth outside the body).
    let mut open: Vec<(String, usize, usize)> = Vec::new();
    // A signature seen but whose body has not started: (name, first line).
    let mut pending: Option<(String, usize)> = None;
    let mut depth = 0usize;
    for (n, line) in text.lines().enumerate() {
        let code = code_of(line);
        if let Some(name) = fn_name(code) {
            pending = Some((name, n + 1));
        }
        let mut in_str = false;
        let mut prev = ' ';
        for c in code.chars() {
            match c {
                '"' if prev != '\\' => in_str = !in_str,
                '{' if !in_str => {
                    if let Some((name, start)) = pending.take() {
                        open.push((name, start, depth));
                    }
                    depth += 1;
                }
                '}' if !in_str => {
                    depth = depth.saturating_sub(1);
                    if open.last().is_some_and(|f| f.2 == depth) {
                        let (name, start, _) = open.pop().unwrap();
                        found.push((name, start, n + 2 - start));
                    }
                }
                ';' if !in_str && pending.is_some() && !code.contains('{') => {
                    // `fn f();` in a trait: no body.
                    pending = None;
                }
                _ => {}
            }
            prev = if prev == '\\' && c == '\\' { ' ' } else { c };
        }
    }
    found
}

/// The name of the function a line starts, if it does (`pub async fn name<…>(`).
fn fn_name(code: &str) -> Option<String> {
    let mut rest = code;
    while let Some(at) = rest.find("fn ") {
        let before = rest[..at].chars().next_back();
        let after = &rest[at + 3..];
        rest = after;
        if before.is_some_and(|c| c.is_alphanumeric() || c == '_') {
            continue;
        }
        let name: String = after
            .chars()
            .take_while(|c| c.is_alphanumeric() || *c == '_')
            .collect();
        let next = after[name.len()..].chars().next();
        if !name.is_empty() && matches!(next, Some('(' | '<')) {
            return Some(name);
        }
    }
    None
}

#[test]
fn no_function_in_src_is_over_100_lines() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    files.sort();
    let mut long = Vec::new();
    for file in &files {
        let text = std::fs::read_to_string(file).unwrap();
        for (name, start, lines) in function_lengths(&text) {
            if lines > MAX_FN_LINES {
                long.push(format!(
                    "{}:{start}: {name} has {lines} lines",
                    file.display()
                ));
            }
        }
    }
    assert!(
        long.is_empty(),
        "functions over {MAX_FN_LINES} lines (split them along their phases):\n{}",
        long.join("\n")
    );
}

#[test]
fn the_length_check_counts_bodies_not_strings_or_comments() {
    let mut text =
        String::from("trait T {\n    fn decl(&self);\n}\npub async fn long_one<T>(x: T) {\n");
    for _ in 0..100 {
        text.push_str("    let s = \"}\"; // }\n");
    }
    text.push_str("    fn inner() {\n    }\n}\nfn short() -> u8 {\n    1\n}\n");
    let got = function_lengths(&text);
    assert_eq!(
        got,
        vec![
            ("inner".to_string(), 105, 2),
            ("long_one".to_string(), 4, 104),
            ("short".to_string(), 108, 3),
        ]
    );
}
