//! The rules ARCHITECTURE.md states about the code's shape, checked.

use std::fs;
use std::path::{Path, PathBuf};

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn manifest(krate: &str) -> String {
    fs::read_to_string(root().join("crates").join(krate).join("Cargo.toml")).expect("manifest")
}

/// Dependency names in the `[dependencies]` table of a crate's manifest.
fn dependencies(krate: &str) -> Vec<String> {
    let text = manifest(krate);
    let mut in_deps = false;
    let mut deps = Vec::new();
    for line in text.lines() {
        let line = line.trim();
        if line.starts_with('[') {
            in_deps = line == "[dependencies]";
            continue;
        }
        if in_deps {
            if let Some(name) = line.split(['.', '=', ' ']).next().filter(|n| !n.is_empty()) {
                deps.push(name.to_owned());
            }
        }
    }
    deps
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in fs::read_dir(dir).expect("readable dir") {
        let path = entry.expect("entry").path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

#[test]
fn dependencies_flow_server_to_sync_to_storage() {
    let storage = dependencies("storage");
    let sync = dependencies("sync");
    assert!(
        !storage.iter().any(|d| d.starts_with("weft-")),
        "{storage:?}"
    );
    assert!(sync.contains(&"weft-storage".to_owned()));
    assert!(!sync.contains(&"weft-server".to_owned()), "{sync:?}");
    let server = dependencies("server");
    assert!(server.contains(&"weft-sync".to_owned()));
}

#[test]
fn only_storage_names_sled() {
    for krate in ["sync", "server"] {
        assert!(!dependencies(krate).contains(&"sled".to_owned()), "{krate}");
        let mut files = Vec::new();
        rust_files(&root().join("crates").join(krate).join("src"), &mut files);
        for f in files {
            let text = fs::read_to_string(&f).expect("source");
            let needle = concat!("sled", "::");
            assert!(!text.contains(needle), "{} names sled", f.display());
        }
    }
}

#[test]
fn the_engine_does_no_network_io() {
    let deps = dependencies("sync");
    for forbidden in [
        "axum",
        "hyper",
        "tokio-tungstenite",
        "tungstenite",
        "reqwest",
    ] {
        assert!(
            !deps.contains(&forbidden.to_owned()),
            "weft-sync depends on {forbidden}"
        );
    }
    assert!(
        !manifest("sync").contains("\"net\""),
        "weft-sync enables tokio's net feature"
    );
    let mut files = Vec::new();
    rust_files(&root().join("crates/sync/src"), &mut files);
    for f in files {
        let text = fs::read_to_string(&f).expect("source");
        for forbidden in ["std::net", "tokio::net"] {
            assert!(
                !text.contains(forbidden),
                "{} uses {forbidden}",
                f.display()
            );
        }
    }
}

#[test]
fn every_source_file_says_what_it_owns() {
    let mut files = Vec::new();
    rust_files(&root().join("crates"), &mut files);
    assert!(files.len() > 10);
    for f in files {
        let text = fs::read_to_string(&f).expect("source");
        assert!(
            text.trim_start().starts_with("//!"),
            "{} does not start with a //! doc comment",
            f.display()
        );
    }
}

#[test]
fn release_builds_check_yrs_arithmetic_on_client_clocks() {
    // The fuzz workspace too: it must find what release builds would do.
    for manifest in ["Cargo.toml", "fuzz/Cargo.toml"] {
        let text = fs::read_to_string(root().join(manifest)).expect("manifest");
        let table: toml::Table = text.parse().expect("valid TOML");
        let checked = table
            .get("profile")
            .and_then(|p| p.get("release"))
            .and_then(|r| r.get("package"))
            .and_then(|p| p.get("yrs"))
            .and_then(|y| y.get("overflow-checks"))
            .and_then(toml::Value::as_bool);
        assert_eq!(
            checked,
            Some(true),
            "{manifest}: [profile.release.package.yrs] overflow-checks = true is missing; \
             without it a malformed update is accepted and its document no longer loads"
        );
    }
}

/// Dependency names in a crate's `[dev-dependencies]` table.
fn dev_dependencies(krate: &str) -> Vec<String> {
    let table: toml::Table = manifest(krate).parse().expect("valid TOML");
    table
        .get("dev-dependencies")
        .and_then(toml::Value::as_table)
        .map(|deps| deps.keys().cloned().collect())
        .unwrap_or_default()
}

#[test]
fn tests_respect_the_dependency_direction_too() {
    let storage = dev_dependencies("storage");
    assert!(
        !storage.iter().any(|d| d.starts_with("weft-")),
        "{storage:?}"
    );
    let sync = dev_dependencies("sync");
    assert!(!sync.contains(&"weft-server".to_owned()), "{sync:?}");
}

#[test]
fn configuration_never_touches_the_process_environment() {
    let mut files = Vec::new();
    rust_files(&root().join("crates"), &mut files);
    for f in files {
        let text = fs::read_to_string(&f).expect("source");
        for needle in [concat!("set", "_var("), concat!("remove", "_var(")] {
            assert!(!text.contains(needle), "{} calls {needle}", f.display());
        }
    }
}

/// The longest a function outside tests may be, in lines.
const LONGEST_FUNCTION: usize = 100;

/// Each function of a rustfmt-formatted file outside its test modules, with
/// its length in lines: from its `fn` line to the `}` at the same indentation.
fn function_lengths(text: &str) -> Vec<(String, usize, usize)> {
    let lines: Vec<&str> = text.lines().collect();
    let mut found = Vec::new();
    let mut in_tests: Option<String> = None;
    for (i, line) in lines.iter().enumerate() {
        // A `#[cfg(test)]` module written inline is skipped to its closing
        // brace; one in a file of its own (`mod tests;`) is not in this file.
        if let Some(close) = &in_tests {
            if line == close {
                in_tests = None;
            }
            continue;
        }
        if line.trim_start().starts_with("#[cfg(test)]") {
            if let Some(next) = lines.get(i + 1).filter(|l| l.trim_end().ends_with('{')) {
                let indent = &next[..next.len() - next.trim_start().len()];
                in_tests = Some(format!("{indent}}}"));
            }
            continue;
        }
        let Some(name) = function_name(line) else {
            continue;
        };
        let indent = &line[..line.len() - line.trim_start().len()];
        // The signature may span lines; a declaration without a body ends in `;`.
        let Some(open) = (i..lines.len()).find(|&j| {
            let l = lines[j].trim_end();
            l.ends_with('{') || l.ends_with(';') || l.ends_with('}')
        }) else {
            continue;
        };
        if !lines[open].trim_end().ends_with('{') {
            continue;
        }
        let close = format!("{indent}}}");
        if let Some(end) = (open + 1..lines.len()).find(|&j| lines[j] == close) {
            found.push((name, i + 1, end - i + 1));
        }
    }
    found
}

/// The name of the function a line starts, if it starts one.
fn function_name(line: &str) -> Option<String> {
    let mut words = line.split_whitespace().peekable();
    while let Some(word) = words.next() {
        match word {
            "fn" => {
                let name = words.next()?;
                let end = name.find(['(', '<']).unwrap_or(name.len());
                return Some(name[..end].to_owned());
            }
            "pub" | "async" | "const" | "unsafe" => continue,
            w if w.starts_with("pub(") => continue,
            _ => return None,
        }
    }
    None
}

#[test]
fn no_function_outside_tests_is_longer_than_a_hundred_lines() {
    let mut files = Vec::new();
    for krate in ["storage", "sync", "server", "bench"] {
        rust_files(&root().join("crates").join(krate).join("src"), &mut files);
    }
    let mut long = Vec::new();
    for f in files {
        let text = fs::read_to_string(&f).expect("source");
        for (name, line, length) in function_lengths(&text) {
            if length > LONGEST_FUNCTION {
                long.push(format!("{}:{line} {name}: {length} lines", f.display()));
            }
        }
    }
    assert!(
        long.is_empty(),
        "functions longer than {LONGEST_FUNCTION} lines; split them into named steps:\n{}",
        long.join("\n")
    );
}

#[test]
fn the_function_length_rule_sees_functions() {
    let text = "#[cfg(test)]\nmod tests;\n\nfn short() {\n    1\n}\n\npub(crate) async fn longer(\n    a: u8,\n) -> u8 {\n    a\n}\n\nfn declared();\n\n#[cfg(test)]\nmod tests {\n    fn skipped() {\n    }\n}\n\nfn after() {\n}\n";
    let found = function_lengths(text);
    assert_eq!(
        found,
        vec![
            ("short".to_owned(), 4, 3),
            ("longer".to_owned(), 8, 5),
            ("after".to_owned(), 22, 2)
        ]
    );
}
