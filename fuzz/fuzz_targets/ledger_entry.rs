//! Ledger entries: any bytes open to an entry or an error, never a panic; an
//! entry that opens is in its one canonical encoding and named by its BLAKE3.
#![no_main]

use libfuzzer_sys::fuzz_target;
use medmesh_node::ledger::open_entry;

fuzz_target!(|data: &[u8]| {
    if let Ok(e) = open_entry(data) {
        assert_eq!(e.bytes, data, "an entry that opens is kept as received");
        assert_eq!(&e.id, blake3::hash(data).as_bytes());
        assert!(e.entry.seq >= 1);
    }
});
