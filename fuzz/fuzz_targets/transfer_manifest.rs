//! Signed transfer documents and `/medmesh/stream/1` frame bodies: `open_signed` (envelope
//! decode, domain, strict Ed25519 signature, payload decode with version check) of a manifest
//! followed by `check_manifest`, and of a grant and a receipt; `check_manifest` also on the input
//! decoded as an unsigned manifest payload (a signature cannot be forged by the fuzzer, so this is
//! how the shape checks see mutated manifests); the bodies of OPEN (with the grant and manifest
//! inside it), HAVE and REFUSE; the study index object. A manifest that passes `check_manifest`
//! must describe sealed objects whose headers are valid and whose chunk count matches its chunk
//! hashes.
#![no_main]

use libfuzzer_sys::fuzz_target;
use medmesh_node::transfer::wire::{
    self, GRANT_DOMAIN, Grant, Have, MANIFEST_DOMAIN, MAX_INDEX, MAX_MANIFEST, MAX_MESSAGE, Manifest, Open,
    RECEIPT_DOMAIN, Receipt, Refuse, StudyIndex,
};
use medmesh_seal::Header;

/// Largest OPEN body the transfer engine reads (its `MAX_FRAME`).
const MAX_OPEN: usize = MAX_MANIFEST + MAX_MESSAGE + 4096;

fn check(m: &Manifest) {
    if wire::check_manifest(m).is_err() {
        return;
    }
    let _ = wire::objects_root(&m.objects);
    for (i, o) in m.objects.iter().enumerate() {
        let header = Header {
            chunk_size: m.chunk_size,
            object_index: u32::try_from(i).expect("check_manifest bounds the object count"),
            plaintext_len: o.size,
            salt: o
                .salt
                .as_slice()
                .try_into()
                .expect("check_manifest checks the salt length"),
            streamed: false,
        };
        let decoded = Header::decode(&header.encode()).expect("check_manifest accepted this header");
        assert_eq!(decoded, header);
        assert_eq!(
            o.chunks.len() as u64,
            header.chunk_count() * 32,
            "chunk hashes of object {i}"
        );
        let _ = header.sealed_len();
    }
}

fn signed_manifest(bytes: &[u8]) {
    if let Ok((_, m)) = wire::open_signed::<Manifest>("manifest", MANIFEST_DOMAIN, bytes, MAX_MANIFEST) {
        check(&m);
    }
}

fuzz_target!(|data: &[u8]| {
    signed_manifest(data);
    if let Ok(m) = wire::decode::<Manifest>("manifest", data, MAX_MANIFEST) {
        check(&m);
    }
    let _ = wire::open_signed::<Grant>("grant", GRANT_DOMAIN, data, MAX_MESSAGE);
    let _ = wire::open_signed::<Receipt>("receipt", RECEIPT_DOMAIN, data, MAX_MESSAGE);
    if let Ok(open) = wire::decode::<Open>("open", data, MAX_OPEN) {
        let _ = wire::open_signed::<Grant>("grant", GRANT_DOMAIN, &open.grant, MAX_MESSAGE);
        signed_manifest(&open.manifest);
    }
    let _ = wire::decode::<Have>("have", data, MAX_MESSAGE);
    let _ = wire::decode::<Refuse>("refuse", data, MAX_MESSAGE);
    let _ = wire::decode::<StudyIndex>("study index", data, MAX_INDEX);
});
