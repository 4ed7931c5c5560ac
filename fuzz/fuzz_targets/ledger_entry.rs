//! Ledger entries, witnesses, sync and gossip messages: any bytes open to an
//! entry or a witness or an error, never a panic; an entry that opens is kept
//! byte for byte and named by its BLAKE3; a witness that opens names at most
//! its limit of heads, authors ascending; sync requests and responses and
//! gossip messages decode or are refused.
#![no_main]

use libfuzzer_sys::fuzz_target;
use medmesh_node::ledger::gossip::{GossipMsg, MAX_WITNESS_HEADS, open_witness};
use medmesh_node::ledger::open_entry;
use medmesh_node::ledger::sync::{decode_request, decode_response};

fuzz_target!(|data: &[u8]| {
    // The /medmesh/ledger/1 messages decode or refuse, never panic.
    let _ = decode_request(data);
    let _ = decode_response(data);
    let _ = GossipMsg::from_bytes(data);
    if let Ok(w) = open_witness(data) {
        assert!(w.witness.heads.len() <= MAX_WITNESS_HEADS);
        assert!(w.witness.heads.windows(2).all(|p| p[0].author < p[1].author));
    }
    if let Ok(e) = open_entry(data) {
        assert_eq!(e.bytes, data, "an entry that opens is kept as received");
        assert_eq!(&e.id, blake3::hash(data).as_bytes());
        assert!(e.entry.seq >= 1);
    }
});
