//! Entry points for fuzzing: the code paths client bytes reach, as plain
//! functions of those bytes. The `fuzz/` targets call them under
//! libFuzzer; `tests/fuzz_corpus.rs` replays the checked-in corpus through
//! them on every test run.

use std::sync::{Arc, Once};

use weft_storage::{DocMeta, StoredDoc};

use yrs::updates::decoder::Decode;
use yrs::{ReadTxn, Transact, Update};

use crate::doc_state::{Access, DocLimits, DocState, Effects};
use crate::protocol::decode_frame;
use crate::SystemClock;

/// libFuzzer's panic hook aborts on any panic, even one a guard catches;
/// ours (set once, on top of it) lets caught panics through and still
/// aborts on the rest.
fn hook() {
    static ONCE: Once = Once::new();
    ONCE.call_once(crate::guard::install_panic_hook);
}

/// Decodes `data` as one WebSocket frame of y-protocols messages.
pub fn decode(data: &[u8]) {
    hook();
    let _ = decode_frame(data);
}

/// Splits fuzz input into frames, each a little-endian u16 length and then
/// that many bytes (the last frame takes whatever is left).
fn frames(mut data: &[u8]) -> impl Iterator<Item = &[u8]> {
    std::iter::from_fn(move || {
        if data.len() < 2 {
            return None;
        }
        let len = usize::from(u16::from_le_bytes([data[0], data[1]])).min(data.len() - 2);
        let (frame, rest) = data[2..].split_at(len);
        data = rest;
        Some(frame)
    })
}

/// Feeds `data`, split into frames, to a live document from
/// a writer and a read-only connection, as a room would, and checks that
/// what it recorded reloads, with nothing set aside, to the same clocks,
/// and that a snapshot of the reload reads back.
pub fn room(data: &[u8]) {
    hook();
    let stored = StoredDoc {
        meta: DocMeta {
            incarnation: 1,
            created_at_ms: 0,
        },
        exists: true,
        snapshot: None,
        log: Vec::new(),
    };
    let Ok(mut state) = DocState::load(&stored, 16, Arc::new(SystemClock)) else {
        return;
    };
    state.set_limits(DocLimits {
        max_document_bytes: 1 << 20,
        max_presence_bytes: 4096,
        max_presence_clients_per_connection: 4,
        max_document_presence_bytes: 1 << 16,
        readers_presence: true,
    });
    let mut fx = Effects::default();
    state.join(1, true, &mut fx);
    state.join(2, true, &mut fx);
    let mut changes = Vec::new();
    for (i, frame) in frames(data).enumerate() {
        let Ok(messages) = decode_frame(frame) else {
            continue;
        };
        let (conn, access) = if i % 3 == 2 {
            (2, Access::ReadOnly)
        } else {
            (1, Access::ReadWrite)
        };
        if state.admits(frame.len()).is_err() {
            continue;
        }
        let mut fx = Effects::default();
        for message in messages {
            if state.receive(conn, access, message, &mut fx).is_err() {
                break;
            }
        }
        changes.extend(fx.changes);
        if state.is_poisoned() {
            return; // the room would reload from storage here
        }
    }
    state.leave(1, &mut Effects::default());
    // What was recorded must rebuild the same document.
    let replay = StoredDoc {
        log: changes
            .iter()
            .map(|c| weft_storage::LogEntry {
                seq: c.seq,
                at_ms: c.at_ms,
                update: c.update.to_vec(),
                by: weft_storage::Provenance::clone(&c.by),
            })
            .collect(),
        ..stored
    };
    match DocState::load(&replay, 16, Arc::new(SystemClock)) {
        Ok(mut reloaded) => {
            assert!(
                reloaded.set_aside().is_empty(),
                "changes the document accepted do not reload: {:?}",
                reloaded.set_aside()
            );
            assert_eq!(reloaded.last_seq(), state.last_seq());
            let clocks = |s: &DocState| s.doc().transact().state_vector();
            assert_eq!(clocks(&reloaded), clocks(&state), "the reload differs");
            // A snapshot of it must load too.
            if let Ok(snapshot) = reloaded.encode_state() {
                assert!(
                    Update::decode_v1(&snapshot).is_ok(),
                    "the reloaded document's snapshot does not read back"
                );
            }
        }
        Err(e) => panic!("changes the document accepted do not reload: {e}"),
    }
}
