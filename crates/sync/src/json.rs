//! A document's content as JSON, for people and scripts that don't run Yjs.
//!
//! Root types arrive from clients untyped (Yjs only learns a root's type when
//! code asks for it), so each root's type is inferred from its content the
//! way yrs does (`Out::as_prelim`): text as a string, maps as objects, arrays
//! as arrays, XML (fragments, elements, text) as an XML string.

use serde_json::{Map, Value};

use crate::guard::{guarded, with_txn};
use yrs::types::AsPrelim;
use yrs::types::ToJson;
use yrs::{
    ArrayRef, Doc, GetString, In, MapRef, Out, ReadTxn, TextRef, Transact, XmlElementRef,
    XmlFragmentRef, XmlTextRef,
};

/// The JSON of a document given as a Yjs v1 update.
pub fn update_to_json(update: &[u8]) -> Result<Value, String> {
    let update = crate::protocol::decode_update(update).map_err(|e| e.to_string())?;
    guarded(|| {
        let doc = Doc::new();
        with_txn(&doc, |txn| txn.apply_update(update.update)).map_err(|e| e.to_string())?;
        Ok(doc_to_json(&doc))
    })
    .map_err(|panic| format!("the document engine failed internally: {panic}"))?
}

/// Every root type of `doc`, by name.
pub fn doc_to_json(doc: &Doc) -> Value {
    let txn = doc.transact();
    let mut roots = Map::new();
    for (name, out) in txn.root_refs() {
        roots.insert(name.to_owned(), root_to_json(&txn, out));
    }
    Value::Object(roots)
}

fn root_to_json<T: ReadTxn>(txn: &T, out: Out) -> Value {
    let Out::UndefinedRef(branch) = out else {
        return out_to_json(txn, &out);
    };
    match out.as_prelim(txn) {
        In::Text(_) => Value::String(TextRef::from(branch).get_string(txn)),
        In::Map(_) => any_to_json(&MapRef::from(branch).to_json(txn)),
        In::XmlText(_) => Value::String(XmlTextRef::from(branch).get_string(txn)),
        In::XmlElement(_) => Value::String(XmlElementRef::from(branch).get_string(txn)),
        In::XmlFragment(_) => Value::String(XmlFragmentRef::from(branch).get_string(txn)),
        In::Array(items) => {
            let all_xml = !items.is_empty()
                && items
                    .iter()
                    .all(|i| matches!(i, In::XmlElement(_) | In::XmlText(_) | In::XmlFragment(_)));
            if all_xml {
                Value::String(XmlFragmentRef::from(branch).get_string(txn))
            } else {
                any_to_json(&ArrayRef::from(branch).to_json(txn))
            }
        }
        _ => Value::Null,
    }
}

fn out_to_json<T: ReadTxn>(txn: &T, out: &Out) -> Value {
    match out {
        Out::YText(t) => Value::String(t.get_string(txn)),
        Out::YXmlElement(x) => Value::String(x.get_string(txn)),
        Out::YXmlFragment(x) => Value::String(x.get_string(txn)),
        Out::YXmlText(x) => Value::String(x.get_string(txn)),
        other => any_to_json(&other.to_json(txn)),
    }
}

fn any_to_json(any: &yrs::Any) -> Value {
    serde_json::to_value(any).unwrap_or(Value::Null)
}

#[cfg(test)]
mod tests {
    use super::*;
    use yrs::updates::decoder::Decode;
    use yrs::{
        Array, Map as _, Text, Update, WriteTxn, XmlElementPrelim, XmlFragment, XmlTextPrelim,
    };

    /// What a server sees: the content arrives as an update, types unknown.
    fn as_server_sees(client: &Doc) -> Doc {
        let update = client
            .transact()
            .encode_state_as_update_v1(&yrs::StateVector::default());
        let doc = Doc::new();
        doc.transact_mut()
            .apply_update(Update::decode_v1(&update).expect("valid"))
            .expect("applies");
        doc
    }

    #[test]
    fn renders_every_kind_of_root() {
        let client = Doc::new();
        {
            let mut txn = client.transact_mut();
            let text = txn.get_or_insert_text("text");
            text.insert(&mut txn, 0, "hello");
            let map = txn.get_or_insert_map("map");
            map.insert(&mut txn, "n", 1.5);
            map.insert(&mut txn, "s", "x");
            let arr = txn.get_or_insert_array("list");
            arr.insert(&mut txn, 0, true);
            arr.insert(&mut txn, 1, "two");
            let xml = txn.get_or_insert_xml_fragment("xml");
            let p = xml.insert(&mut txn, 0, XmlElementPrelim::empty("p"));
            p.insert(&mut txn, 0, XmlTextPrelim::new("hi"));
        }
        let json = doc_to_json(&as_server_sees(&client));
        assert_eq!(json["text"], "hello");
        assert_eq!(json["map"], serde_json::json!({"n": 1.5, "s": "x"}));
        assert_eq!(json["list"], serde_json::json!([true, "two"]));
        assert_eq!(json["xml"], "<p>hi</p>");
    }
}
