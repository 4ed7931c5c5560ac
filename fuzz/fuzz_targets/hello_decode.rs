//! `/medmesh/hello/1` messages: CBOR decode with version and size checks, then the full trust
//! evaluation (node record verification, certificate decoding and verification) against a node
//! that has joined the consortium of docs/vectors/trust-v1.json.
#![no_main]

use libfuzzer_sys::fuzz_target;
use medmesh_node::trust::hello::{Hello, evaluate};
use medmesh_node::trust::{Consortium, TrustState};

/// The consortium of docs/vectors/trust-v1.json.
const CONSORTIUM: &[u8] = include_bytes!("vector-consortium.cbor");

fuzz_target!(|data: &[u8]| {
    let Ok(hello) = Hello::from_bytes(data) else { return };
    let mut state = TrustState::default();
    if let Ok(c) = Consortium::from_bytes(CONSORTIUM) {
        state.consortia.push(c);
    }
    let _ = evaluate(&state, "12D3KooWK99VoVxNE7XzyBwXEzW7xhK7Gpv85r9F3V3fyKSUKPH5", &hello, 1_750_000_000);
});
