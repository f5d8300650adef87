//! Refusing allocation bombs before yrs sees them, and measuring what a
//! frame carries without decoding it.
//!
//! yrs sizes some hash maps from counts it reads off the wire (the clients
//! of an update, a state vector's entries, an awareness update's states) and
//! reserves them up front. A hash map's reservation is written to at once,
//! so a 12-byte frame claiming 400 million clients costs half a gigabyte
//! before decoding fails. Each such count is the first number of its
//! structure and every item it counts takes at least one more byte, so a
//! count larger than the bytes that follow it is a lie: refused here, before
//! any allocation. Only counts are checked; the real decoding is yrs'.

use yrs::encoding::read::{Cursor, Read};
use yrs::updates::decoder::DecoderV1;

use crate::protocol::ProtocolError;

/// The first count of `bytes` is at most the number of bytes after it.
fn count_fits(bytes: &[u8], what: &str) -> Result<(), ProtocolError> {
    let mut decoder = DecoderV1::new(Cursor::new(bytes));
    let Ok(count) = decoder.read_var::<u64>() else {
        return Ok(()); // not even a count: yrs will say what is wrong
    };
    let rest = bytes.len().saturating_sub(varint_len(count)) as u64;
    if count > rest {
        return Err(ProtocolError::Malformed(format!(
            "{what} claims {count} entries in {rest} bytes"
        )));
    }
    Ok(())
}

fn varint_len(mut n: u64) -> usize {
    let mut len = 1;
    while n >= 0x80 {
        n >>= 7;
        len += 1;
    }
    len
}

/// A Yjs v1 update's client count is plausible.
pub fn update(bytes: &[u8]) -> Result<(), ProtocolError> {
    count_fits(bytes, "the update")
}

/// A state vector's entry count is plausible.
pub fn state_vector(bytes: &[u8]) -> Result<(), ProtocolError> {
    count_fits(bytes, "the state vector")
}

/// Walks the messages of a frame (tags and buffers only) and checks the
/// counts inside each. Anything it cannot walk is left to the decoder.
pub fn frame(frame: &[u8]) -> Result<(), ProtocolError> {
    let mut decoder = DecoderV1::new(Cursor::new(frame));
    loop {
        let Ok(tag) = decoder.read_var::<u32>() else {
            return Ok(());
        };
        match tag {
            // sync: a sub-type, then a buffer
            0 => {
                let (Ok(kind), Ok(buf)) = (decoder.read_var::<u32>(), decoder.read_buf()) else {
                    return Ok(());
                };
                match kind {
                    0 => state_vector(buf)?,
                    _ => update(buf)?,
                }
            }
            // awareness: a buffer holding the states
            1 => match decoder.read_buf() {
                Ok(buf) => {
                    count_fits(buf, "the awareness update")?;
                    awareness_clients_fit(buf)?;
                }
                Err(_) => return Ok(()),
            },
            // query awareness: nothing follows
            3 => {}
            // auth and anything else: the decoder judges
            _ => return Ok(()),
        }
    }
}

/// The largest client id Yjs makes: ids are JavaScript-safe integers.
pub const MAX_CLIENT_ID: u64 = (1 << 53) - 1;

/// Every client id of an awareness update fits in 53 bits. yrs only
/// asserts that in debug builds; a release build would quietly take the
/// id's low 53 bits, so the same frame is refused in both.
fn awareness_clients_fit(buf: &[u8]) -> Result<(), ProtocolError> {
    let mut decoder = DecoderV1::new(Cursor::new(buf));
    let Ok(count) = decoder.read_var::<u64>() else {
        return Ok(());
    };
    for _ in 0..count {
        let (Ok(client), Ok(_clock), Ok(_state)) = (
            decoder.read_var::<u64>(),
            decoder.read_var::<u32>(),
            decoder.read_string(),
        ) else {
            return Ok(()); // the decoder says what is wrong
        };
        if client > MAX_CLIENT_ID {
            return Err(ProtocolError::Malformed(format!(
                "awareness client id {client} is wider than 53 bits (Yjs ids are at most 2^53 - 1)"
            )));
        }
    }
    Ok(())
}

/// The bytes of every awareness payload in a frame, walking its messages
/// as [`frame`] does (what it cannot walk counts as nothing more).
pub fn presence_bytes(frame: &[u8]) -> usize {
    let mut decoder = DecoderV1::new(Cursor::new(frame));
    let mut total = 0;
    loop {
        let Ok(tag) = decoder.read_var::<u32>() else {
            return total;
        };
        let walked = match tag {
            0 => decoder
                .read_var::<u32>()
                .and_then(|_| decoder.read_buf())
                .map(|_| ()),
            1 => decoder.read_buf().map(|buf| total += buf.len()),
            3 => Ok(()),
            _ => return total,
        };
        if walked.is_err() {
            return total;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lying_counts_are_refused_and_honest_ones_pass() {
        // SyncStep2 carrying an update that claims ~405 million clients.
        let bomb = [
            0x00, 0x01, 0x09, 0xd9, 0xef, 0x84, 0xc1, 0x01, 0xda, 0xea, 0x2a, 0xde,
        ];
        assert!(frame(&bomb).is_err());
        // Awareness claiming a billion states.
        assert!(frame(&[1, 5, 0x80, 0x94, 0xeb, 0xdc, 0x03]).is_err());
        // Honest: an empty update, a step 1 with an empty state vector.
        assert!(frame(&[0, 2, 2, 0, 0]).is_ok());
        assert!(frame(&[0, 0, 1, 0]).is_ok());
        assert!(update(&[0, 0]).is_ok());
        assert!(update(&[0x85, 0x01]).is_err());
    }

    #[test]
    fn presence_is_measured_across_the_messages_of_a_frame() {
        // Step 1 (empty state vector), awareness of 3 bytes, query,
        // awareness of 1 byte.
        let frame = [0, 0, 1, 0, 1, 3, 1, 2, 3, 3, 1, 1, 0];
        assert_eq!(presence_bytes(&frame), 4);
        assert_eq!(presence_bytes(&[1, 0x85]), 0, "truncated");
        assert_eq!(presence_bytes(&[]), 0);
    }
}
