//! Ledger entries and sync messages: any bytes open to an entry or an error,
//! never a panic; an entry that opens is kept byte for byte and named by its
//! BLAKE3; sync requests and responses decode or are refused.
#![no_main]

use libfuzzer_sys::fuzz_target;
use medmesh_node::ledger::open_entry;
use medmesh_node::ledger::sync::{decode_request, decode_response};

fuzz_target!(|data: &[u8]| {
    // The /medmesh/ledger/1 messages decode or refuse, never panic.
    let _ = decode_request(data);
    let _ = decode_response(data);
    if let Ok(e) = open_entry(data) {
        assert_eq!(e.bytes, data, "an entry that opens is kept as received");
        assert_eq!(&e.id, blake3::hash(data).as_bytes());
        assert!(e.entry.seq >= 1);
    }
});
