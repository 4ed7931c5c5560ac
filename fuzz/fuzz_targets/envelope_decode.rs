//! Signed envelopes and node records: CBOR decode, then signature, key, PeerId and field checks.
#![no_main]

use libfuzzer_sys::fuzz_target;
use medmesh_node::identity::{SignedEnvelope, VerifiedNodeRecord};

fuzz_target!(|data: &[u8]| {
    if let Ok(env) = SignedEnvelope::from_bytes(data) {
        let _ = VerifiedNodeRecord::from_envelope(env);
    }
    let _ = VerifiedNodeRecord::from_bytes(data);
});
