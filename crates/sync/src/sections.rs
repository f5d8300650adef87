//! Refusing updates whose client sections are forged, before yrs
//! integrates them.
//!
//! A Yjs v1 update lists, for each client, one section: a starting clock and
//! structs that follow on from it. Every encoder (Yjs, yrs, merges) writes a
//! client once. yrs' decoder appends a second section for the same client to
//! the first, so its structs go back in time and overlap; integrating such a
//! list corrupts yrs' block store (fuzzing found a use after free that
//! crashed the process, and histories that no longer replay). The same walk
//! refuses a section whose clocks run past 2^32, where yrs' arithmetic would
//! overflow, and a struct that refers (as an origin or its parent) to a
//! clock of its own client at or after its own, which no real client can
//! write and which led yrs to a second use after free.
//!
//! The same walk reports what the update depends on ([`Dependencies`]), so
//! the document can set aside an update that would wait in yrs' pending
//! store (`ClientUpdate::would_wait`), and the first item of legacy JSON
//! content (Yjs' `ContentJSON`, ref 2), which the document refuses
//! (`ClientUpdate::unstorable`): yrs 0.28 decodes such an item with one
//! entry more than its count says and encodes it with the count it holds,
//! so what a document records of it reads back as something else (one
//! item longer, and the bytes after it misread). A history an earlier
//! build stored that way did not replay after a restart (fuzzing found
//! it). Current Yjs and yrs never create that content (they write
//! `ContentAny` for JSON values); Yjs still reads it, for old documents.
//!
//! The walk reads structs with yrs' own decoder pieces, so it agrees with
//! yrs on where each one ends; the real decoding is still yrs'.

use std::collections::HashSet;

use yrs::block::{
    ItemContent, BLOCK_GC_REF_NUMBER, BLOCK_ITEM_JSON_REF_NUMBER, BLOCK_SKIP_REF_NUMBER,
    HAS_ORIGIN, HAS_PARENT_SUB, HAS_RIGHT_ORIGIN,
};
use yrs::encoding::read::{Cursor, Error, Read};
use yrs::updates::decoder::{Decoder, DecoderV1};
use yrs::{ClientID, StateVector, ID};

/// Why an update's sections were refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum BadSections {
    #[error("client id {0} is wider than 53 bits (Yjs ids are at most 2^53 - 1)")]
    WideClient(u64),
    #[error("client {0} has two sections in one update (an update lists each client once)")]
    RepeatedClient(u64),
    #[error("client {0}'s clocks run past 2^32")]
    ClockOverflow(u64),
    #[error(
        "client {client}'s struct at clock {clock} refers to its own clock {refers_to}, \
         which it cannot have seen yet"
    )]
    RefersAhead {
        client: u64,
        clock: u64,
        refers_to: u32,
    },
    #[error("{0}")]
    Unreadable(String),
}

impl From<Error> for BadSections {
    fn from(e: Error) -> Self {
        BadSections::Unreadable(e.to_string())
    }
}

/// What an update refers to outside itself: what the document must have
/// (or the update bring) for none of it to wait.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Dependencies {
    /// For each other client its structs refer to (as origins or parents),
    /// one past the highest clock referred to.
    pub other_clients: StateVector,
    /// For each client whose section skips a range and goes on after it,
    /// the end of the last such range: structs after a skip integrate only
    /// if the document already has what was skipped.
    pub skipped: StateVector,
    /// For each client, the end of its last struct that is not a skip:
    /// what the update itself brings of that client.
    pub brings: StateVector,
    /// The first item of legacy JSON content, which yrs does not write
    /// back as it read it.
    pub legacy_json: Option<ID>,
}

/// One struct as the walk saw it.
struct Struct {
    /// Clock ticks it takes.
    len: u32,
    skip: bool,
    legacy_json: bool,
}

/// Checks that each client of a Yjs v1 update has one section, that its
/// clocks fit in 32 bits, and that no struct refers to a later one of its
/// own client. Returns what the update depends on.
pub fn check(update: &[u8]) -> Result<Dependencies, BadSections> {
    let mut decoder = DecoderV1::new(Cursor::new(update));
    let sections: u32 = decoder.read_var()?;
    let mut seen = HashSet::new();
    let mut needs = Dependencies::default();
    for _ in 0..sections {
        let structs: u32 = decoder.read_var()?;
        // Read as a number first: yrs only asserts the width in debug
        // builds, and a release build would keep the low 53 bits.
        let client: u64 = decoder.read_var()?;
        if client > crate::plausible::MAX_CLIENT_ID {
            return Err(BadSections::WideClient(client));
        }
        let client = ClientID::new(client);
        if !seen.insert(client) {
            return Err(BadSections::RepeatedClient(client.get()));
        }
        let mut clock = u64::from(decoder.read_var::<u32>()?);
        let mut skipped_to = None;
        let mut brought = None;
        for _ in 0..structs {
            let at = u32::try_from(clock).unwrap_or(u32::MAX);
            let read = read_struct(&mut decoder, client, clock, &mut needs.other_clients)?;
            if read.legacy_json && needs.legacy_json.is_none() {
                needs.legacy_json = Some(ID::new(client, at));
            }
            clock += u64::from(read.len);
            let end = u32::try_from(clock).unwrap_or(u32::MAX);
            if read.skip {
                skipped_to = Some(end);
                continue;
            }
            if let Some(skipped) = skipped_to.take() {
                needs.skipped.set_max(client, skipped);
            }
            brought = Some(end);
        }
        if let Some(end) = brought {
            needs.brings.set_max(client, end);
        }
        if clock > u64::from(u32::MAX) {
            return Err(BadSections::ClockOverflow(client.get()));
        }
    }
    Ok(needs)
}

/// Reads one struct as yrs' `Update::decode` does: how many clock ticks it
/// takes, whether it is a skip or legacy JSON. A client only ever refers to
/// its own structs that came before (the neighbours it typed between, the
/// container it typed into), so a reference to its own clock at or after
/// this struct is forged.
fn read_struct(
    decoder: &mut DecoderV1,
    client: ClientID,
    clock: u64,
    builds_on: &mut StateVector,
) -> Result<Struct, BadSections> {
    let mut earlier = |id: ID| {
        if id.client != client {
            builds_on.set_max(id.client, id.clock.saturating_add(1));
            Ok(())
        } else if u64::from(id.clock) >= clock {
            Err(BadSections::RefersAhead {
                client: client.get(),
                clock,
                refers_to: id.clock,
            })
        } else {
            Ok(())
        }
    };
    let info = decoder.read_info()?;
    let plain = |len| Struct {
        len,
        skip: false,
        legacy_json: false,
    };
    match info {
        BLOCK_SKIP_REF_NUMBER => Ok(Struct {
            skip: true,
            ..plain(decoder.read_var()?)
        }),
        BLOCK_GC_REF_NUMBER => Ok(plain(decoder.read_len()?)),
        info => {
            let parent_follows = info & (HAS_ORIGIN | HAS_RIGHT_ORIGIN) == 0;
            if info & HAS_ORIGIN != 0 {
                earlier(decoder.read_left_id()?)?;
            }
            if info & HAS_RIGHT_ORIGIN != 0 {
                earlier(decoder.read_right_id()?)?;
            }
            if parent_follows {
                if decoder.read_parent_info()? {
                    decoder.read_string()?;
                } else {
                    earlier(decoder.read_left_id()?)?;
                }
                if info & HAS_PARENT_SUB != 0 {
                    decoder.read_string()?;
                }
            }
            Ok(Struct {
                legacy_json: info & 0b1111 == BLOCK_ITEM_JSON_REF_NUMBER,
                ..plain(ItemContent::decode(decoder, info)?.len_utf16())
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use yrs::updates::decoder::Decode;
    use yrs::updates::encoder::Encode;
    use yrs::{Array, Doc, Map, ReadTxn, StateVector, Text, Transact, Update};

    #[test]
    fn a_client_id_wider_than_53_bits_is_refused_in_every_build() {
        // One section of one struct, for client 2^60 (yrs would keep its
        // low 53 bits, 0, in a release build).
        let mut update = vec![1, 1];
        update.extend_from_slice(&[0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x10]);
        update.extend_from_slice(&[0, 4, 1, b'x', 0]);
        let err = check(&update).expect_err("refused");
        assert!(
            matches!(err, BadSections::WideClient(id) if id == 1 << 60),
            "{err}"
        );
    }

    /// One client's edits of several kinds, from two clients, merged.
    fn real_update() -> Vec<u8> {
        let a = Doc::with_client_id(1);
        let b = Doc::with_client_id(2);
        let (text, map, array) = (
            a.get_or_insert_text("t"),
            a.get_or_insert_map("m"),
            a.get_or_insert_array("a"),
        );
        {
            let mut txn = a.transact_mut();
            text.insert(&mut txn, 0, "hello world");
            text.remove_range(&mut txn, 0, 6);
            text.insert(&mut txn, 0, "👋 é ");
            map.insert(&mut txn, "k", vec![1, 2, 3]);
            array.insert(&mut txn, 0, yrs::Any::from("x"));
        }
        let from_a = a
            .transact()
            .encode_state_as_update_v1(&StateVector::default());
        b.transact_mut()
            .apply_update(Update::decode_v1(&from_a).expect("valid"))
            .expect("applies");
        {
            let text = b.get_or_insert_text("t");
            let mut txn = b.transact_mut();
            text.insert(&mut txn, 0, "from b ");
        }
        let merged = b
            .transact()
            .encode_state_as_update_v1(&StateVector::default());
        merged
    }

    #[test]
    fn updates_real_encoders_write_pass() {
        let update = real_update();
        let needs = check(&update).expect("passes");
        // Client 2 typed next to client 1's text: it builds on client 1.
        assert!(needs.other_clients.get(&yrs::ClientID::new(1)) > 0);
        assert_eq!(
            needs.other_clients.get(&yrs::ClientID::new(2)),
            0,
            "not on itself"
        );
        assert!(needs.skipped.is_empty(), "real edits skip nothing");
        assert_eq!(
            check(&[0, 0]),
            Ok(Dependencies::default()),
            "the empty update"
        );
        // What yrs writes back out of a decoded update passes too.
        let again = Update::decode_v1(&update).expect("valid").encode_v1();
        assert!(check(&again).is_ok());
    }

    #[test]
    fn a_client_listed_twice_is_refused() {
        // Two sections for client 7: "ab" at clock 0, then "c" at clock 1,
        // which overlaps the first.
        let section = |clock: u8, text: &str| {
            let mut s = vec![1, 7, clock];
            // info 4: a string item with no origins, so a parent follows:
            // a named root type "t".
            s.extend([4, 1, 1, b't']);
            s.push(text.len() as u8);
            s.extend(text.as_bytes());
            s
        };
        let mut twice = vec![2];
        twice.extend(section(0, "ab"));
        twice.extend(section(1, "c"));
        twice.extend([0]); // empty delete set
        assert!(Update::decode_v1(&twice).is_ok(), "yrs itself takes it");
        assert_eq!(check(&twice), Err(BadSections::RepeatedClient(7)));

        let mut once = vec![1];
        once.extend(section(0, "ab"));
        once.extend([0]);
        let needs = check(&once).expect("one section");
        assert_eq!(needs.brings.get(&yrs::ClientID::new(7)), 2);
    }

    #[test]
    fn a_struct_that_refers_to_a_later_one_of_its_client_is_refused() {
        // Client 7: "ab" at clock 0, then "c" at clock 2 whose left origin
        // is 7#5, a clock the client has not reached.
        let forged = |origin_clock: u8| {
            let mut u = vec![1, 2, 7, 0];
            u.extend([4, 1, 1, b't', 2, b'a', b'b']);
            // info 0x84: a string item with a left origin (client, clock).
            u.extend([0x84, 7, origin_clock, 1, b'c']);
            u.push(0);
            u
        };
        assert_eq!(
            check(&forged(5)),
            Err(BadSections::RefersAhead {
                client: 7,
                clock: 2,
                refers_to: 5
            })
        );
        let needs = check(&forged(1)).expect("after the b it typed: fine");
        assert!(needs.other_clients.is_empty() && needs.skipped.is_empty());
    }

    #[test]
    fn what_follows_a_skip_needs_the_skipped_range() {
        // Client 7: "ab" at clock 0, a skip of 3, then "c" at clock 5.
        let mut update = vec![1, 3, 7, 0];
        update.extend([4, 1, 1, b't', 2, b'a', b'b']);
        update.extend([10, 3]);
        update.extend([0x84, 7, 1, 1, b'c']);
        update.push(0);
        let needs = check(&update).expect("well formed");
        assert_eq!(needs.skipped.get(&yrs::ClientID::new(7)), 5);
        // A skip at the end is just the end.
        let mut trailing = vec![1, 2, 7, 0];
        trailing.extend([4, 1, 1, b't', 2, b'a', b'b']);
        trailing.extend([10, 3, 0]);
        let needs = check(&trailing).expect("well formed");
        assert!(needs.skipped.is_empty());
        // What a trailing skip covers is not brought.
        assert_eq!(needs.brings.get(&yrs::ClientID::new(7)), 2);
    }

    #[test]
    fn legacy_json_content_is_found() {
        // Client 7: "ab" at clock 0, then legacy JSON content at clock 2
        // (count 0, which yrs reads as one entry, "1").
        let mut update = vec![1, 2, 7, 0];
        update.extend([4, 1, 1, b't', 2, b'a', b'b']);
        update.extend([0x82, 7, 1, 0, 1, b'1']);
        update.push(0);
        let needs = check(&update).expect("well formed");
        assert_eq!(needs.legacy_json, Some(ID::new(yrs::ClientID::new(7), 2)));
        assert_eq!(needs.brings.get(&yrs::ClientID::new(7)), 3);
        assert_eq!(check(&real_update()).expect("passes").legacy_json, None);
    }

    #[test]
    fn clocks_past_32_bits_are_refused() {
        // Client 7 from clock 2^32 - 2 with a deleted run of 5.
        let mut update = vec![1, 1, 7];
        update.extend([0xfe, 0xff, 0xff, 0xff, 0x0f]);
        update.extend([1, 1, 1, b't', 5]); // info 1: deleted content, length 5
        update.push(0);
        assert_eq!(check(&update), Err(BadSections::ClockOverflow(7)));
    }

    #[test]
    fn truncated_updates_are_unreadable_not_a_panic() {
        let update = real_update();
        for end in 0..update.len() {
            let _ = check(&update[..end]);
        }
        assert!(matches!(
            check(&update[..update.len() / 2]),
            Err(BadSections::Unreadable(_))
        ));
    }
}
