//! Replays the checked-in fuzz corpus (`fuzz/corpus/`) through the fuzz
//! harness on every test run, so inputs that once found a bug, or reach deep
//! paths, keep being tried without libFuzzer.

use std::fs;
use std::path::Path;

fn replay(target: &str, run: fn(&[u8])) -> usize {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../fuzz/corpus")
        .join(target);
    let mut n = 0;
    for entry in fs::read_dir(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())) {
        let path = entry.expect("entry").path();
        let data = fs::read(&path).expect("corpus file");
        run(&data);
        n += 1;
    }
    n
}

#[test]
fn the_decode_corpus_replays_cleanly() {
    weft_sync::guard::install_panic_hook();
    assert!(replay("decode_frame", weft_sync::harness::decode) >= 6);
}

#[test]
fn the_room_corpus_replays_cleanly() {
    weft_sync::guard::install_panic_hook();
    assert!(replay("room", weft_sync::harness::room) >= 2);
}
