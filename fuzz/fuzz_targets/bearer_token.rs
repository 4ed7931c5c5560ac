//! Bearer tokens sent to `/api/v1` (`Authorization: Bearer ...`): the compact JWS decoded, its
//! algorithm checked, and its claims checked against the default `[web]` settings, as the node
//! does before (and after) verifying the signature.
#![no_main]

use libfuzzer_sys::fuzz_target;
use medmesh_node::config::web::WebConfig;
use medmesh_node::web::bearer::{check_claims, unverified_claims};

fuzz_target!(|data: &[u8]| {
    let Ok(token) = std::str::from_utf8(data) else { return };
    if let Ok(claims) = unverified_claims(token) {
        let _ = check_claims(&WebConfig::default(), &claims, 1_800_000_000);
    }
});
