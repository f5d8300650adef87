//! Edits from backends that do not speak Yjs: a Quill Delta applied to a
//! text, a whole new text (applied as the smallest change to the current
//! one, so that editors' cursors elsewhere in it survive), or keys set on
//! a map.
//!
//! Sans-IO: [`edit_text`] and [`edit_map`] take the document as it stands
//! (a Yjs v1 update of its whole state) and the edit, and give the Yjs
//! update that makes it, or `None` when it would change nothing. The
//! server sends that update through the document's room like any other,
//! so it is durable before it is broadcast, and it merges with whatever
//! editors typed since the state was read, as a concurrent edit would.
//! Positions and lengths count UTF-16 code units, as Yjs and Quill do.
//! Each edit is made by a client id of its own, as a Yjs client session
//! would be: two edits made from the same state never claim one id.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use serde_json::{Map, Value};
use yrs::types::{AsPrelim, Attrs, Delta};
use yrs::{
    Any, Doc, In, Map as _, MapRef, Number, OffsetKind, Options, Out, ReadTxn, Text, Transact,
    TransactionMut, WriteTxn,
};

use crate::guard::{guarded, with_txn};

/// How long the smallest-change search for a whole new text may take
/// before it settles for a coarser change (still correct, just larger).
const DIFF_DEADLINE: Duration = Duration::from_millis(200);

/// The most ops one delta may hold.
pub const MAX_OPS: usize = 10_000;

/// The largest changed middle (after what both texts share at either end)
/// searched for the smallest change; a larger one is replaced whole.
const MAX_DIFFED_BYTES: usize = 64 * 1024;

/// What to do to a text.
#[derive(Debug, Clone, PartialEq)]
pub enum TextEdit {
    /// Quill Delta operations, from the start of the text.
    Delta(Vec<DeltaOp>),
    /// The whole text, replaced by this.
    Replace(String),
}

/// One Quill Delta operation.
#[derive(Debug, Clone, PartialEq)]
pub enum DeltaOp {
    /// Text (or, for an object, an embed) inserted at the cursor, with
    /// its formatting.
    Insert(Value, Map<String, Value>),
    /// Keeps this many units, applying the formatting if any.
    Retain(u32, Map<String, Value>),
    /// Removes this many units.
    Delete(u32),
}

/// Why an edit was refused; `code` names the problem for programs, the
/// message says it for people.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct EditError {
    pub code: &'static str,
    pub message: String,
}

fn refused(code: &'static str, message: impl Into<String>) -> EditError {
    EditError {
        code,
        message: message.into(),
    }
}

/// Reads a Quill Delta: `[{"insert": "hi", "attributes": {…}}, {"retain":
/// 5}, {"delete": 3}, …]`.
pub fn parse_delta(ops: &[Value]) -> Result<Vec<DeltaOp>, EditError> {
    if ops.len() > MAX_OPS {
        return Err(refused(
            "invalid_delta",
            format!("{} ops; at most {MAX_OPS} in one edit", ops.len()),
        ));
    }
    ops.iter()
        .enumerate()
        .map(|(i, op)| {
            parse_op(op).map_err(|why| refused("invalid_delta", format!("op {i}: {why}")))
        })
        .collect()
}

fn parse_op(op: &Value) -> Result<DeltaOp, String> {
    let Value::Object(fields) = op else {
        return Err("each op is an object".into());
    };
    let attributes = match fields.get("attributes") {
        None | Some(Value::Null) => Map::new(),
        Some(Value::Object(attrs)) => attrs.clone(),
        Some(_) => return Err("attributes is an object".into()),
    };
    let count = |v: &Value, what: &str| -> Result<u32, String> {
        v.as_u64()
            .and_then(|n| u32::try_from(n).ok())
            .filter(|&n| n > 0)
            .ok_or_else(|| format!("{what} is a positive whole number"))
    };
    match (
        fields.get("insert"),
        fields.get("retain"),
        fields.get("delete"),
    ) {
        (Some(Value::String(s)), None, None) if !s.is_empty() => {
            Ok(DeltaOp::Insert(Value::String(s.clone()), attributes))
        }
        (Some(embed @ Value::Object(_)), None, None) => {
            Ok(DeltaOp::Insert(embed.clone(), attributes))
        }
        (Some(_), None, None) => Err("insert is a non-empty string or an embed object".into()),
        (None, Some(n), None) => Ok(DeltaOp::Retain(count(n, "retain")?, attributes)),
        (None, None, Some(n)) if attributes.is_empty() => Ok(DeltaOp::Delete(count(n, "delete")?)),
        (None, None, Some(_)) => Err("delete takes no attributes".into()),
        _ => Err("each op has exactly one of insert, retain and delete".into()),
    }
}

/// The update that applies `edit` to the text `name` of the document
/// whose state is `state` (`None`: a document never written).
pub fn edit_text(
    state: Option<&[u8]>,
    name: &str,
    edit: TextEdit,
) -> Result<Option<Vec<u8>>, EditError> {
    with_document(state, name, RootKind::Text, |txn| {
        let text = txn.get_or_insert_text(name);
        let units = text_units(txn, &text, name)?;
        let delta = match edit {
            TextEdit::Delta(ops) => within_text(ops, &units)?,
            TextEdit::Replace(new) => smallest_change(&String::from_utf16_lossy(&units), &new),
        };
        text.apply_delta(txn, delta.into_iter().map(to_yrs_delta));
        Ok(())
    })
}

/// The text as the UTF-16 units positions count, each embed (or embedded
/// type) one U+FFFC; refused unless that is all the text holds (a root
/// built by hand may mix in other content, which yrs counts in the text's
/// length but cannot edit as text).
fn text_units<T: ReadTxn>(txn: &T, text: &yrs::TextRef, name: &str) -> Result<Vec<u16>, EditError> {
    let mut units: Vec<u16> = Vec::new();
    for chunk in text.diff(txn, yrs::types::text::YChange::identity) {
        match chunk.insert {
            Out::Any(Any::String(s)) => units.extend(s.encode_utf16()),
            _ => units.push(0xFFFC),
        }
    }
    if u32::try_from(units.len()).ok() != Some(text.len(txn)) {
        return Err(refused(
            "wrong_root_type",
            format!("{name} holds content that is not text (made by hand, not by an editor); it cannot be edited as text"),
        ));
    }
    Ok(units)
}

/// The update that sets `entries` on the map `name` (`null` removes a
/// key) of the document whose state is `state`.
pub fn edit_map(
    state: Option<&[u8]>,
    name: &str,
    entries: Map<String, Value>,
) -> Result<Option<Vec<u8>>, EditError> {
    let mut values = Vec::with_capacity(entries.len());
    for (key, value) in entries {
        let value = match value {
            Value::Null => None,
            value => Some(json_to_any(value)),
        };
        values.push((key, value));
    }
    with_document(state, name, RootKind::Map, |txn| {
        let map: MapRef = txn.get_or_insert_map(name);
        for (key, value) in values {
            let current = map.get(txn, &key);
            match (value, current) {
                (None, None) => {}
                (None, Some(_)) => {
                    map.remove(txn, &key);
                }
                // Unchanged: no change to store.
                (Some(value), Some(Out::Any(now))) if now == value => {}
                (Some(value), _) => {
                    map.insert(txn, key, value);
                }
            }
        }
        Ok(())
    })
}

/// What a root must be for an edit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum RootKind {
    Text,
    Map,
    Other,
}

/// Loads `state` into a throwaway document, checks that root `name` is
/// (or can be) of `kind`, runs `edit` in one transaction and returns what
/// it changed as an update.
fn with_document(
    state: Option<&[u8]>,
    name: &str,
    kind: RootKind,
    edit: impl FnOnce(&mut TransactionMut<'_>) -> Result<(), EditError>,
) -> Result<Option<Vec<u8>>, EditError> {
    let state = state
        .map(crate::protocol::decode_update)
        .transpose()
        .map_err(|e| {
            refused(
                "engine_failure",
                format!("the stored document did not decode: {e}"),
            )
        })?;
    let made = guarded(|| {
        let doc = Doc::with_options(Options {
            offset_kind: OffsetKind::Utf16,
            ..Options::default()
        });
        if let Some(state) = state {
            with_txn(&doc, |txn| txn.apply_update(state.update)).map_err(|e| {
                refused(
                    "engine_failure",
                    format!("the stored document did not apply: {e}"),
                )
            })?;
        }
        check_kind(&doc, name, kind)?;
        with_txn(&doc, |txn| {
            edit(txn)?;
            let update = txn.encode_update_v1();
            // An update that carries nothing is two zero bytes.
            Ok((update.len() > 2).then_some(update))
        })
    });
    made.map_err(|panic| {
        refused(
            "engine_failure",
            format!("the document engine failed: {panic}"),
        )
    })?
}

/// Refuses an edit of `kind` on a root that holds something else.
fn check_kind(doc: &Doc, name: &str, kind: RootKind) -> Result<(), EditError> {
    let txn = doc.transact();
    let Some((_, root)) = txn.root_refs().find(|(n, _)| *n == name) else {
        return Ok(());
    };
    let found = match root {
        Out::YText(_) => Some(RootKind::Text),
        Out::YMap(_) => Some(RootKind::Map),
        // Untyped (as every root is on a server): what its content says.
        Out::UndefinedRef(_) => match root.as_prelim(&txn) {
            In::Text(_) => Some(RootKind::Text),
            In::Map(entries) if entries.is_empty() => None,
            In::Map(_) => Some(RootKind::Map),
            In::Array(items) if items.is_empty() => None,
            _ => Some(RootKind::Other),
        },
        _ => Some(RootKind::Other),
    };
    match found {
        None => Ok(()),
        Some(found) if found == kind => Ok(()),
        Some(_) => Err(refused(
            "wrong_root_type",
            format!(
                "{name} holds {} here, not a {}; edit it as what it is",
                describe(&txn, root),
                match kind {
                    RootKind::Text => "text",
                    RootKind::Map => "map",
                    RootKind::Other => "root",
                }
            ),
        )),
    }
}

/// What a root holds, for a refusal.
fn describe<T: ReadTxn>(txn: &T, root: Out) -> &'static str {
    match root {
        Out::YArray(_) => "an array",
        Out::YXmlElement(_) | Out::YXmlFragment(_) | Out::YXmlText(_) => "XML (rich text)",
        Out::UndefinedRef(_) => match root.as_prelim(txn) {
            In::Array(_) => "an array or XML (rich text)",
            In::Text(_) => "a text",
            In::Map(_) => "a map",
            _ => "XML (rich text)",
        },
        Out::YText(_) => "a text",
        Out::YMap(_) => "a map",
        _ => "another type",
    }
}

/// `ops` checked against the text's `units`: what they retain and delete
/// (each unit of the text at most once) must be within it, and no
/// position may fall between the two halves of a character (yrs would
/// split it, and every replica would show two broken halves).
fn within_text(ops: Vec<DeltaOp>, units: &[u16]) -> Result<Vec<DeltaOp>, EditError> {
    let len = units.len() as u64;
    let mut consumed: u64 = 0;
    for op in &ops {
        if let DeltaOp::Retain(n, _) | DeltaOp::Delete(n) = op {
            consumed += u64::from(*n);
            if consumed > len {
                return Err(refused(
                    "past_end",
                    format!(
                        "the delta retains and deletes {consumed} units, past the end of the \
                         text ({len} UTF-16 units long)"
                    ),
                ));
            }
            let at = consumed as usize;
            let splits = at > 0
                && at < units.len()
                && (0xD800..0xDC00).contains(&units[at - 1])
                && (0xDC00..0xE000).contains(&units[at]);
            if splits {
                return Err(refused(
                    "invalid_position",
                    format!("position {at} falls inside a character (between the two UTF-16 units of one)"),
                ));
            }
        }
    }
    Ok(ops)
}

/// The smallest delta (within [`DIFF_DEADLINE`]) that turns `old` into
/// `new`.
fn smallest_change(old: &str, new: &str) -> Vec<DeltaOp> {
    let units = |s: &str| u32::try_from(s.encode_utf16().count()).unwrap_or(u32::MAX);
    // What both share at the ends needs no search: only the middle is
    // diffed, and a middle too large to diff cheaply is replaced whole.
    let prefix = common_prefix(old, new);
    let suffix = common_suffix(&old[prefix..], &new[prefix..]);
    let (old_mid, new_mid) = (
        &old[prefix..old.len() - suffix],
        &new[prefix..new.len() - suffix],
    );
    let mut ops: Vec<DeltaOp> = Vec::new();
    if prefix > 0 {
        ops.push(DeltaOp::Retain(units(&old[..prefix]), Map::new()));
    }
    if old_mid.len().max(new_mid.len()) > MAX_DIFFED_BYTES {
        if !old_mid.is_empty() {
            ops.push(DeltaOp::Delete(units(old_mid)));
        }
        if !new_mid.is_empty() {
            ops.push(DeltaOp::Insert(
                Value::String(new_mid.to_owned()),
                Map::new(),
            ));
        }
        return ops;
    }
    let diff = similar::TextDiff::configure()
        .timeout(DIFF_DEADLINE)
        .diff_chars(old_mid, new_mid);
    for change in diff.iter_all_changes() {
        let value = change.value();
        let op = match change.tag() {
            similar::ChangeTag::Equal => DeltaOp::Retain(units(value), Map::new()),
            similar::ChangeTag::Delete => DeltaOp::Delete(units(value)),
            similar::ChangeTag::Insert => {
                DeltaOp::Insert(Value::String(value.to_owned()), Map::new())
            }
        };
        // Runs of one kind become one op.
        match (ops.last_mut(), op) {
            (Some(DeltaOp::Retain(n, _)), DeltaOp::Retain(m, _)) => *n += m,
            (Some(DeltaOp::Delete(n)), DeltaOp::Delete(m)) => *n += m,
            (Some(DeltaOp::Insert(Value::String(a), _)), DeltaOp::Insert(Value::String(b), _)) => {
                a.push_str(&b)
            }
            (_, op) => ops.push(op),
        }
    }
    // A trailing retain changes nothing.
    if matches!(ops.last(), Some(DeltaOp::Retain(..))) {
        ops.pop();
    }
    ops
}

fn to_yrs_delta(op: DeltaOp) -> Delta<In> {
    let attrs = |map: Map<String, Value>| -> Option<Box<Attrs>> {
        if map.is_empty() {
            return None;
        }
        let attrs: HashMap<Arc<str>, Any> = map
            .into_iter()
            .map(|(k, v)| (Arc::from(k.as_str()), json_to_any(v)))
            .collect();
        Some(Box::new(attrs))
    };
    match op {
        DeltaOp::Insert(Value::String(s), a) => Delta::Inserted(In::Any(Any::from(s)), attrs(a)),
        DeltaOp::Insert(embed, a) => Delta::Inserted(In::Any(json_to_any(embed)), attrs(a)),
        DeltaOp::Retain(n, a) => Delta::Retain(n, attrs(a)),
        DeltaOp::Delete(n) => Delta::Deleted(n),
    }
}

/// JSON as a JavaScript client holds it: a whole number beyond 2^53 as a
/// double, as `JSON.parse` makes it (yrs would send it as a BigInt),
/// objects and arrays all the way down. `null` formatting removes a
/// format, as in Quill.
fn json_to_any(value: Value) -> Any {
    match value {
        Value::Null => Any::Null,
        Value::Bool(b) => Any::Bool(b),
        Value::Number(n) => Any::Number(match n.as_i64() {
            Some(i) if i.abs() <= Number::I64_MAX_SAFE_INTEGER => Number::Int(i),
            _ => Number::Float(n.as_f64().unwrap_or(f64::NAN)),
        }),
        Value::String(s) => Any::from(s),
        Value::Array(items) => Any::from(items.into_iter().map(json_to_any).collect::<Vec<_>>()),
        Value::Object(fields) => Any::from(
            fields
                .into_iter()
                .map(|(k, v)| (k, json_to_any(v)))
                .collect::<HashMap<String, Any>>(),
        ),
    }
}

/// Bytes at the start that two texts share (on a character boundary).
fn common_prefix(a: &str, b: &str) -> usize {
    a.char_indices()
        .zip(b.chars())
        .find(|((_, x), y)| x != y)
        .map_or(a.len().min(b.len()), |((i, _), _)| i)
}

/// Bytes at the end that two texts share (on a character boundary).
fn common_suffix(a: &str, b: &str) -> usize {
    a.chars()
        .rev()
        .zip(b.chars().rev())
        .take_while(|(x, y)| x == y)
        .map(|(c, _)| c.len_utf8())
        .sum()
}

#[cfg(test)]
mod tests {
    use super::*;
    use yrs::updates::decoder::Decode;
    use yrs::{GetString, Update};

    fn apply(doc: &Doc, update: &[u8]) {
        doc.transact_mut()
            .apply_update(Update::decode_v1(update).expect("decodes"))
            .expect("applies");
    }

    fn state(doc: &Doc) -> Vec<u8> {
        doc.transact()
            .encode_state_as_update_v1(&yrs::StateVector::default())
    }

    fn utf16_doc() -> Doc {
        Doc::with_options(Options {
            offset_kind: OffsetKind::Utf16,
            ..Options::default()
        })
    }

    fn delta(json: Value) -> TextEdit {
        TextEdit::Delta(parse_delta(json.as_array().expect("array")).expect("valid"))
    }

    #[test]
    fn a_delta_edits_the_text_as_quill_would() {
        let doc = utf16_doc();
        let text = doc.get_or_insert_text("t");
        text.insert(&mut doc.transact_mut(), 0, "hello world");
        let ops = serde_json::json!([{"retain": 6}, {"delete": 5}, {"insert": "weft", "attributes": {"bold": true}}]);
        let update = edit_text(Some(&state(&doc)), "t", delta(ops))
            .expect("edits")
            .expect("changes");
        apply(&doc, &update);
        assert_eq!(text.get_string(&doc.transact()), "hello weft");
        let diff = text.diff(&doc.transact(), yrs::types::text::YChange::identity);
        assert_eq!(diff.len(), 2, "the insert is bold: {diff:?}");
    }

    #[test]
    fn positions_count_utf16_units() {
        let doc = utf16_doc();
        let text = doc.get_or_insert_text("t");
        text.insert(&mut doc.transact_mut(), 0, "🙂é!");
        // 🙂 is two UTF-16 units, é one.
        let ops = serde_json::json!([{"retain": 3}, {"insert": "?"}]);
        let update = edit_text(Some(&state(&doc)), "t", delta(ops))
            .expect("edits")
            .expect("changes");
        apply(&doc, &update);
        assert_eq!(text.get_string(&doc.transact()), "🙂é?!");
    }

    #[test]
    fn a_delta_past_the_end_is_refused() {
        let doc = utf16_doc();
        doc.get_or_insert_text("t")
            .insert(&mut doc.transact_mut(), 0, "abc");
        for ops in [
            serde_json::json!([{"retain": 4}]),
            serde_json::json!([{"retain": 2}, {"delete": 2}]),
        ] {
            let refused = edit_text(Some(&state(&doc)), "t", delta(ops)).expect_err("refused");
            assert_eq!(refused.code, "past_end", "{refused}");
        }
        // Deleting to the very end is fine.
        let ops = serde_json::json!([{"retain": 1}, {"delete": 2}, {"insert": "x"}]);
        assert!(edit_text(Some(&state(&doc)), "t", delta(ops)).is_ok());
    }

    #[test]
    fn bad_ops_are_refused_saying_which() {
        for (ops, says) in [
            (serde_json::json!([{"retain": 0}]), "op 0: retain"),
            (
                serde_json::json!([{"insert": "a"}, {"delete": -1}]),
                "op 1: delete",
            ),
            (
                serde_json::json!([{"insert": "a", "delete": 1}]),
                "exactly one",
            ),
            (serde_json::json!([7]), "object"),
        ] {
            let e = parse_delta(ops.as_array().expect("array")).expect_err("refused");
            assert_eq!(e.code, "invalid_delta");
            assert!(e.message.contains(says), "{e}");
        }
    }

    #[test]
    fn a_whole_new_text_keeps_what_did_not_change() {
        let doc = utf16_doc();
        let text = doc.get_or_insert_text("t");
        text.insert(&mut doc.transact_mut(), 0, "the quick brown fox");
        // An editor's concurrent insert inside an unchanged part survives.
        let before = state(&doc);
        text.insert(&mut doc.transact_mut(), 4, "very ");
        let update = edit_text(
            Some(&before),
            "t",
            TextEdit::Replace("the quick red fox".into()),
        )
        .expect("edits")
        .expect("changes");
        apply(&doc, &update);
        assert_eq!(text.get_string(&doc.transact()), "the very quick red fox");
        // The same text again changes nothing.
        let same = edit_text(
            Some(&state(&doc)),
            "t",
            TextEdit::Replace("the very quick red fox".into()),
        );
        assert_eq!(same, Ok(None));
    }

    #[test]
    fn a_position_inside_a_character_is_refused() {
        let doc = utf16_doc();
        doc.get_or_insert_text("t")
            .insert(&mut doc.transact_mut(), 0, "🙂");
        let ops = serde_json::json!([{"retain": 1}, {"insert": "x"}]);
        let e = edit_text(Some(&state(&doc)), "t", delta(ops)).expect_err("refused");
        assert_eq!(e.code, "invalid_position", "{e}");
    }

    #[test]
    fn a_text_root_mixed_with_other_content_is_refused_not_a_panic() {
        // One client used the root as text, another as an array: yrs
        // counts both in the text's length but can only edit the text.
        let (as_text, as_array) = (Doc::with_client_id(1), Doc::with_client_id(2));
        as_text
            .get_or_insert_text("t")
            .insert(&mut as_text.transact_mut(), 0, "a");
        yrs::Array::insert_range(
            &as_array.get_or_insert_array("t"),
            &mut as_array.transact_mut(),
            0,
            [1, 2, 3],
        );
        let server = Doc::new();
        apply(&server, &state(&as_text));
        apply(&server, &state(&as_array));
        let ops = serde_json::json!([{"delete": 2}]);
        let e = edit_text(Some(&state(&server)), "t", delta(ops)).expect_err("refused");
        assert_eq!(e.code, "wrong_root_type", "{e}");
    }

    #[test]
    fn a_whole_new_text_counts_embeds_as_one_unit() {
        let doc = utf16_doc();
        let text = doc.get_or_insert_text("t");
        {
            let mut txn = doc.transact_mut();
            text.insert(&mut txn, 0, "ab");
            let image: HashMap<String, Any> = [("image".to_owned(), Any::from("cat.png"))].into();
            text.insert_embed(&mut txn, 1, Any::from(image));
        }
        let update = edit_text(Some(&state(&doc)), "t", TextEdit::Replace("ab!".into()))
            .expect("edits")
            .expect("changes");
        apply(&doc, &update);
        assert_eq!(text.get_string(&doc.transact()), "ab!");
        assert_eq!(
            text.len(&doc.transact()),
            3,
            "the embed is gone, nothing else"
        );
    }

    #[test]
    fn numbers_are_what_javascript_reads() {
        let doc = utf16_doc();
        let entries = serde_json::json!({"small": 7, "huge": 9007199254740993_u64, "x": 1.5});
        let update = edit_map(
            Some(&state(&doc)),
            "m",
            entries.as_object().cloned().expect("object"),
        )
        .expect("edits")
        .expect("changes");
        apply(&doc, &update);
        let map = doc.get_or_insert_map("m");
        let txn = doc.transact();
        assert_eq!(
            map.get(&txn, "small"),
            Some(Out::Any(Any::Number(Number::Int(7))))
        );
        assert!(matches!(
            map.get(&txn, "huge"),
            Some(Out::Any(Any::Number(Number::Float(_))))
        ));
    }

    #[test]
    fn map_keys_are_set_and_removed() {
        let doc = utf16_doc();
        let map = doc.get_or_insert_map("m");
        map.insert(&mut doc.transact_mut(), "gone", "soon");
        let entries =
            serde_json::json!({"n": 2, "s": "x", "nested": {"a": [1, true]}, "gone": null});
        let update = edit_map(
            Some(&state(&doc)),
            "m",
            entries.as_object().cloned().expect("object"),
        )
        .expect("edits")
        .expect("changes");
        apply(&doc, &update);
        let json = crate::json::doc_to_json(&doc);
        assert_eq!(
            json["m"],
            serde_json::json!({"n": 2, "s": "x", "nested": {"a": [1, true]}})
        );
        // Setting what is already there changes nothing.
        let again = serde_json::json!({"s": "x"})
            .as_object()
            .cloned()
            .expect("object");
        assert_eq!(edit_map(Some(&state(&doc)), "m", again), Ok(None));
    }

    #[test]
    fn a_document_never_written_can_be_edited() {
        let update = edit_text(None, "t", TextEdit::Replace("first".into()))
            .expect("edits")
            .expect("changes");
        let doc = utf16_doc();
        apply(&doc, &update);
        assert_eq!(
            doc.get_or_insert_text("t").get_string(&doc.transact()),
            "first"
        );
    }

    #[test]
    fn an_edit_of_the_wrong_kind_of_root_is_refused() {
        let doc = utf16_doc();
        doc.get_or_insert_map("m")
            .insert(&mut doc.transact_mut(), "k", 1);
        doc.get_or_insert_text("t")
            .insert(&mut doc.transact_mut(), 0, "x");
        // As a server sees it: roots untyped.
        let stored = state(&doc);
        let e = edit_text(Some(&stored), "m", TextEdit::Replace("y".into())).expect_err("refused");
        assert_eq!(e.code, "wrong_root_type");
        assert!(e.message.contains("a map"), "{e}");
        let entries = serde_json::json!({"k": 1})
            .as_object()
            .cloned()
            .expect("object");
        let e = edit_map(Some(&stored), "t", entries).expect_err("refused");
        assert_eq!(e.code, "wrong_root_type");
    }
}
