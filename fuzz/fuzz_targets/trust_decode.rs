//! Consortium descriptors, membership certificates and revocations: CBOR decode, id and field
//! checks, then signature and threshold verification against the decoded consortium.
#![no_main]

use libfuzzer_sys::fuzz_target;
use medmesh_node::trust::{Certificate, Consortium, Revocation, verify_certificate, verify_revocation};

fuzz_target!(|data: &[u8]| {
    let consortium = Consortium::from_bytes(data).ok();
    if let Ok(cert) = Certificate::from_bytes(data) {
        if let Some(c) = &consortium {
            let _ = verify_certificate(&cert, c, 1_800_000_000);
        }
    }
    if let (Ok(rev), Some(c)) = (Revocation::from_bytes(data), &consortium) {
        let _ = verify_revocation(&rev, c);
    }
});
