//! Gzip for event streams that never holds an event back.
//!
//! A plain gzip body buffers until it has enough to compress, which would
//! delay live events indefinitely (this is why tower-http's compression
//! skips `text/event-stream`). Here every chunk is followed by a sync flush,
//! so each event leaves compressed and complete, while the stream keeps one
//! compression window and benefits from what earlier events had in common.

use std::io::Write;

use bytes::Bytes;
use flate2::write::GzEncoder;
use flate2::Compression;

#[derive(Debug)]
pub struct EventGzip {
    encoder: GzEncoder<Vec<u8>>,
}

impl Default for EventGzip {
    fn default() -> Self {
        EventGzip {
            encoder: GzEncoder::new(Vec::new(), Compression::default()),
        }
    }
}

impl EventGzip {
    /// Compresses `chunk` and returns everything needed to decode it now.
    pub fn compress(&mut self, chunk: &[u8]) -> Bytes {
        // Writes into a Vec cannot fail.
        let _ = self.encoder.write_all(chunk);
        let _ = self.encoder.flush();
        Bytes::from(std::mem::take(self.encoder.get_mut()))
    }

    /// The gzip trailer that ends the stream.
    pub fn finish(self) -> Bytes {
        Bytes::from(self.encoder.finish().unwrap_or_default())
    }
}

/// Whether an `Accept-Encoding` value allows gzip.
pub fn accepts_gzip(accept_encoding: &str) -> bool {
    accept_encoding.split(',').any(|part| {
        let mut params = part.split(';').map(str::trim);
        let coding = params.next().unwrap_or("");
        let refused = params.any(|p| {
            p.strip_prefix("q=")
                .and_then(|q| q.parse::<f32>().ok())
                .is_some_and(|q| q == 0.0)
        });
        (coding.eq_ignore_ascii_case("gzip") || coding == "*") && !refused
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use flate2::write::GzDecoder;

    #[test]
    fn each_chunk_decodes_as_soon_as_it_arrives() {
        let mut gz = EventGzip::default();
        let mut decoder = GzDecoder::new(Vec::new());
        for event in [
            "event: update\ndata: AAAA\n\n",
            "event: update\ndata: AAAB\n\n",
        ] {
            let wire = gz.compress(event.as_bytes());
            decoder.write_all(&wire).expect("decodes");
            decoder.flush().expect("flush");
            assert!(decoder.get_ref().ends_with(event.as_bytes()));
        }
        decoder.write_all(&gz.finish()).expect("trailer");
        assert!(decoder.finish().is_ok());
    }

    #[test]
    fn reads_accept_encoding() {
        assert!(accepts_gzip("gzip"));
        assert!(accepts_gzip("br, gzip;q=0.8"));
        assert!(accepts_gzip("*"));
        assert!(!accepts_gzip("gzip;q=0"));
        assert!(!accepts_gzip("identity"));
        assert!(!accepts_gzip(""));
    }
}
