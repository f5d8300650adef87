//! What the document's unit tests share: a fixed clock, an empty stored
//! document, and clients that make updates and presence.

use std::sync::Arc;

use bytes::Bytes;
use weft_storage::{DocMeta, LogEntry, StoredDoc};
use yrs::sync::AwarenessUpdate;
use yrs::updates::decoder::Decode;
use yrs::updates::encoder::Encode;
use yrs::{ClientID, Doc, GetString, Text, Transact, Update};

use super::DocState;
use crate::protocol::{decode_frame, ClientUpdate, Inbound};
use crate::Clock;

pub(super) struct FixedClock;
impl Clock for FixedClock {
    fn now_ms(&self) -> u64 {
        42
    }
}

pub(super) fn empty() -> StoredDoc {
    StoredDoc {
        meta: DocMeta {
            incarnation: 7,
            created_at_ms: 1,
        },
        exists: true,
        snapshot: None,
        log: vec![],
    }
}

pub(super) fn state(stored: &StoredDoc) -> DocState {
    DocState::load(stored, 4, Arc::new(FixedClock)).expect("loads")
}

/// A client-side document that produces updates.
pub(super) fn edit(doc: &Doc, at: u32, s: &str) -> Update {
    let text = doc.get_or_insert_text("t");
    let mut txn = doc.transact_mut();
    text.insert(&mut txn, at, s);
    Update::decode_v1(&txn.encode_update_v1()).expect("valid")
}

pub(super) fn text_of(doc: &Doc) -> String {
    doc.get_or_insert_text("t").get_string(&doc.transact())
}

/// A change as it would arrive from a client.
pub(super) fn incoming(update: Update) -> ClientUpdate {
    ClientUpdate::decode(&update.encode_v1()).expect("valid")
}

pub(super) fn decode_one(frame: &Bytes) -> Inbound {
    decode_frame(frame).expect("valid frame").remove(0)
}

pub(super) fn stored_entry(seq: u64, doc: &Doc, at: u32, s: &str) -> LogEntry {
    let text = doc.get_or_insert_text("t");
    let mut txn = doc.transact_mut();
    text.insert(&mut txn, at, s);
    LogEntry {
        seq,
        at_ms: 5,
        update: txn.encode_update_v1(),
        by: Default::default(),
    }
}

pub(super) fn presence(client: u64, clock: u32, json: &str) -> AwarenessUpdate {
    let mut update = AwarenessUpdate {
        clients: Default::default(),
    };
    update.clients.insert(
        ClientID::new(client),
        yrs::sync::awareness::AwarenessUpdateEntry {
            clock,
            json: json.into(),
        },
    );
    update
}

pub(super) fn awareness_clients(frame: &Bytes) -> Vec<(u64, String)> {
    let Inbound::Awareness(u) = decode_one(frame) else {
        panic!("expected awareness");
    };
    presence_clients(&u)
}

pub(super) fn presence_clients(u: &AwarenessUpdate) -> Vec<(u64, String)> {
    let mut v: Vec<_> = u
        .clients
        .iter()
        .map(|(c, e)| (c.get(), e.json.to_string()))
        .collect();
    v.sort();
    v
}
