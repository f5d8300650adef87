//! `weft snapshot diff`: what changed in each root type between two
//! versions of a document, readable by a person.
//!
//! Each root is rendered as text (text roots as themselves, everything else
//! as pretty JSON) and compared line by line.

use serde::Serialize;
use serde_json::Value;
use similar::{ChangeTag, TextDiff};

/// How one root type changed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RootDiff {
    pub root: String,
    /// `added`, `removed`, `changed` or `unchanged`.
    pub status: &'static str,
    /// Unified-diff lines (`+`, `-`, ` `), empty when unchanged.
    pub lines: Vec<String>,
}

/// Compares two documents given as their JSON (`json::doc_to_json`).
pub fn roots(old: &Value, new: &Value) -> Vec<RootDiff> {
    let empty = serde_json::Map::new();
    let (old, new) = (
        old.as_object().unwrap_or(&empty),
        new.as_object().unwrap_or(&empty),
    );
    let mut names: Vec<&String> = old.keys().chain(new.keys()).collect();
    names.sort();
    names.dedup();
    names
        .into_iter()
        .map(|name| {
            let (a, b) = (old.get(name), new.get(name));
            let status = match (a, b) {
                (None, Some(_)) => "added",
                (Some(_), None) => "removed",
                (a, b) if a == b => "unchanged",
                _ => "changed",
            };
            let lines = if status == "unchanged" {
                Vec::new()
            } else {
                line_diff(&render_root(a), &render_root(b))
            };
            RootDiff {
                root: name.clone(),
                status,
                lines,
            }
        })
        .collect()
}

fn render_root(v: Option<&Value>) -> String {
    match v {
        None => String::new(),
        Some(Value::String(s)) => s.clone(),
        Some(other) => serde_json::to_string_pretty(other).unwrap_or_default(),
    }
}

fn line_diff(a: &str, b: &str) -> Vec<String> {
    TextDiff::from_lines(a, b)
        .iter_all_changes()
        .map(|c| {
            let sign = match c.tag() {
                ChangeTag::Delete => '-',
                ChangeTag::Insert => '+',
                ChangeTag::Equal => ' ',
            };
            format!("{sign}{}", c.value().trim_end_matches('\n'))
        })
        .collect()
}

pub fn render(diffs: &[RootDiff], from: u64, to: u64) -> String {
    let mut out = format!("snapshot {from} → {to}");
    for d in diffs {
        out.push_str(&format!("\n\n{} ({})", d.root, d.status));
        for line in &d.lines {
            out.push_str("\n  ");
            out.push_str(line);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn reports_each_root() {
        let old = json!({ "text": "one\ntwo", "map": {"a": 1}, "gone": [1] });
        let new = json!({ "text": "one\nthree", "map": {"a": 1}, "new": "x" });
        let d = roots(&old, &new);
        let status: Vec<_> = d.iter().map(|r| (r.root.as_str(), r.status)).collect();
        assert_eq!(
            status,
            vec![
                ("gone", "removed"),
                ("map", "unchanged"),
                ("new", "added"),
                ("text", "changed")
            ]
        );
        assert_eq!(d[3].lines, vec![" one", "-two", "+three"]);
    }
}
