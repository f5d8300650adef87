//! Restoring old content as a new change.
//!
//! Replacing a document's state would not work with live editors: their
//! clients still hold the newer items and would sync them straight back. So
//! a restore is a forward edit: in one transaction, every root type's current
//! content is removed and the old content is inserted again (text with its
//! formatting and embeds, maps, arrays, XML trees, nested types), copied out
//! of the old state with yrs' own deep copy (`as_prelim`). Editors receive it
//! like any edit and converge to the old content without reloading.

use std::collections::BTreeMap;

use yrs::types::xml::XmlIn;
use yrs::types::AsPrelim;
use yrs::{
    Array, Doc, In, Map, Out, ReadTxn, Text, Transact, TransactionMut, WriteTxn, XmlFragment,
};

use crate::guard::with_txn;
use crate::protocol::decode_update;

/// The kinds of root type a restore knows how to rewrite.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum RootKind {
    Text,
    Map,
    Array,
    XmlFragment,
}

/// Makes every root type of `doc` hold what it held in `old_state` (a Yjs v1
/// update), as one transaction. Returns that transaction's update (empty
/// if nothing changed).
pub fn restore_into(doc: &Doc, old_state: &[u8]) -> Result<Vec<u8>, String> {
    let targets = roots_of(old_state)?;
    with_txn(doc, |txn| {
        // Plan first, so a root that cannot be restored stops the restore
        // before anything changed.
        for (name, kind, target) in plan(txn, targets)? {
            rewrite(txn, &name, kind, target);
        }
        Ok(txn.encode_update_v1())
    })
}

/// Every root type of the document `state` (a Yjs v1 update) holds, as a
/// deep copy, by name.
fn roots_of(state: &[u8]) -> Result<BTreeMap<String, In>, String> {
    let update = decode_update(state).map_err(|e| e.to_string())?.update;
    let old = Doc::new();
    with_txn(&old, |txn| txn.apply_update(update))
        .map_err(|e| format!("the snapshot does not load: {e}"))?;
    let old_txn = old.transact();
    let mut roots = BTreeMap::new();
    for (name, out) in old_txn.root_refs() {
        roots.insert(name.to_owned(), out.as_prelim(&old_txn));
    }
    Ok(roots)
}

/// Each root to rewrite, with its kind and what it should hold: every root
/// the document has now, then those only the snapshot has. Refuses a root
/// whose kind changed since.
fn plan(
    txn: &TransactionMut,
    mut targets: BTreeMap<String, In>,
) -> Result<Vec<(String, RootKind, Option<In>)>, String> {
    let current: BTreeMap<String, Option<RootKind>> = txn
        .root_refs()
        .map(|(name, out)| (name.to_owned(), kind_of_current(txn, out)))
        .collect();
    let mut plan = Vec::new();
    for (name, current_kind) in &current {
        let target = targets.remove(name);
        let target_kind = target.as_ref().and_then(kind_of_target);
        // An empty root says nothing about its type; use what is known.
        let Some(kind) = target_kind.or(*current_kind) else {
            continue;
        };
        if let (Some(a), Some(b)) = (current_kind, target_kind) {
            if *a != b {
                return Err(format!(
                    "root {name:?} is a {a:?} now but was a {b:?} in the snapshot; it cannot be restored"
                ));
            }
        }
        plan.push((name.clone(), kind, target));
    }
    // Roots that only the snapshot has.
    for (name, target) in targets {
        if let Some(kind) = kind_of_target(&target) {
            plan.push((name, kind, Some(target)));
        }
    }
    Ok(plan)
}

fn kind_of_current(txn: &TransactionMut, out: Out) -> Option<RootKind> {
    match out {
        Out::YText(t) => (t.len(txn) > 0).then_some(RootKind::Text),
        Out::YMap(m) => (m.len(txn) > 0).then_some(RootKind::Map),
        Out::YArray(a) => (a.len(txn) > 0).then_some(RootKind::Array),
        Out::YXmlFragment(x) => (x.len(txn) > 0).then_some(RootKind::XmlFragment),
        undefined @ Out::UndefinedRef(_) => kind_of_target(&undefined.as_prelim(txn)),
        _ => None,
    }
}

/// The kind of content a deep copy holds; `None` when it is empty.
fn kind_of_target(content: &In) -> Option<RootKind> {
    match content {
        In::Text(delta) if !delta.is_empty() => Some(RootKind::Text),
        In::XmlText(_) => Some(RootKind::Text),
        In::Map(map) if !map.is_empty() => Some(RootKind::Map),
        In::Array(items) if !items.is_empty() => {
            let xml = items
                .iter()
                .all(|i| matches!(i, In::XmlElement(_) | In::XmlText(_) | In::XmlFragment(_)));
            Some(if xml {
                RootKind::XmlFragment
            } else {
                RootKind::Array
            })
        }
        In::XmlFragment(_) | In::XmlElement(_) => Some(RootKind::XmlFragment),
        _ => None,
    }
}

/// Clears root `name` and, if given, inserts `target`'s content.
fn rewrite(txn: &mut TransactionMut, name: &str, kind: RootKind, target: Option<In>) {
    match kind {
        RootKind::Text => {
            let text = txn.get_or_insert_text(name);
            let len = text.len(txn);
            if len > 0 {
                text.remove_range(txn, 0, len);
            }
            match target {
                Some(In::Text(delta)) => text.apply_delta(txn, delta.iter().cloned()),
                Some(In::XmlText(delta)) => text.apply_delta(txn, delta.iter().cloned()),
                _ => {}
            }
        }
        RootKind::Map => {
            let map = txn.get_or_insert_map(name);
            map.clear(txn);
            if let Some(In::Map(entries)) = target {
                for (key, value) in entries.iter() {
                    map.insert(txn, key.clone(), value.clone());
                }
            }
        }
        RootKind::Array => {
            let array = txn.get_or_insert_array(name);
            let len = array.len(txn);
            if len > 0 {
                array.remove_range(txn, 0, len);
            }
            if let Some(In::Array(items)) = target {
                for (i, item) in items.iter().enumerate() {
                    array.insert(txn, i as u32, item.clone());
                }
            }
        }
        RootKind::XmlFragment => {
            let fragment = txn.get_or_insert_xml_fragment(name);
            let len = fragment.len(txn);
            if len > 0 {
                fragment.remove_range(txn, 0, len);
            }
            if let Some(In::Array(items)) = target {
                let mut at = 0;
                for item in items.iter() {
                    match item {
                        In::XmlElement(e) => {
                            fragment.insert(txn, at, XmlIn::Element(e.clone()));
                        }
                        In::XmlText(t) => {
                            fragment.insert(txn, at, XmlIn::Text(t.clone()));
                        }
                        _ => continue,
                    }
                    at += 1;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;
    use std::sync::Arc;
    use yrs::types::text::Diff;
    use yrs::types::Attrs;
    use yrs::updates::decoder::Decode;
    use yrs::GetString;
    use yrs::{Any, MapPrelim, StateVector, Update, XmlElementPrelim, XmlTextPrelim};

    fn state(doc: &Doc) -> Vec<u8> {
        doc.transact()
            .encode_state_as_update_v1(&StateVector::default())
    }

    fn sync(from: &Doc, to: &Doc) {
        let sv = to.transact().state_vector();
        let update = from.transact().encode_state_as_update_v1(&sv);
        to.transact_mut()
            .apply_update(Update::decode_v1(&update).expect("valid"))
            .expect("applies");
    }

    /// Everything a client can see, typed as a client would.
    fn content(doc: &Doc) -> (Vec<Diff<()>>, serde_json::Value, serde_json::Value, String) {
        let txn = doc.transact();
        let text = txn
            .get_text("rich")
            .map(|t| t.diff(&txn, |_| ()))
            .unwrap_or_default();
        drop(txn);
        let json = crate::json::doc_to_json(doc);
        let xml = doc
            .get_or_insert_xml_fragment("xml")
            .get_string(&doc.transact());
        (text, json["map"].clone(), json["list"].clone(), xml)
    }

    #[test]
    fn a_restore_brings_every_kind_of_root_back_as_a_forward_change() {
        let client = Doc::new();
        {
            let mut txn = client.transact_mut();
            let rich = txn.get_or_insert_text("rich");
            rich.insert(&mut txn, 0, "Hello world");
            let bold: Attrs = HashMap::from([(Arc::from("bold"), Any::Bool(true))]);
            rich.format(&mut txn, 0, 5, bold);
            let map = txn.get_or_insert_map("map");
            map.insert(&mut txn, "title", "v1");
            map.insert(&mut txn, "nested", MapPrelim::from([("k", 1)]));
            let list = txn.get_or_insert_array("list");
            list.insert(&mut txn, 0, "a");
            list.insert(&mut txn, 1, "b");
            let xml = txn.get_or_insert_xml_fragment("xml");
            let p = xml.insert(&mut txn, 0, XmlElementPrelim::empty("p"));
            p.insert(&mut txn, 0, XmlTextPrelim::new("para"));
        }
        let snapshot = state(&client);
        let before = content(&client);

        // Later edits, on every root.
        {
            let mut txn = client.transact_mut();
            let rich = txn.get_or_insert_text("rich");
            rich.insert(&mut txn, 11, "!!!");
            rich.remove_range(&mut txn, 0, 2);
            let map = txn.get_or_insert_map("map");
            map.insert(&mut txn, "title", "v2");
            map.insert(&mut txn, "extra", true);
            let list = txn.get_or_insert_array("list");
            list.remove_range(&mut txn, 0, 1);
            let xml = txn.get_or_insert_xml_fragment("xml");
            xml.insert(&mut txn, 1, XmlElementPrelim::empty("hr"));
        }
        assert_ne!(content(&client), before);

        // The server's copy knows no types: it only ever saw updates.
        let server = Doc::new();
        server
            .transact_mut()
            .apply_update(Update::decode_v1(&state(&client)).expect("valid"))
            .expect("applies");
        let change = restore_into(&server, &snapshot).expect("restores");
        client
            .transact_mut()
            .apply_update(Update::decode_v1(&change).expect("valid"))
            .expect("applies");
        assert_eq!(
            content(&client),
            before,
            "the live client is back to the snapshot"
        );

        // A client that went offline with edits of its own still converges.
        let other = Doc::new();
        sync(&server, &other);
        assert_eq!(content(&other), before);
        // Restoring again changes nothing visible.
        let again = restore_into(&server, &snapshot).expect("restores");
        other
            .transact_mut()
            .apply_update(Update::decode_v1(&again).expect("valid"))
            .expect("applies");
        assert_eq!(content(&other), before);
    }
}
