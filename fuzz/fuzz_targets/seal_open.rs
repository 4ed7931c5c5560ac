//! Sealed objects, boxes and wrapped keys: header decode, full open, box open, key unwrap.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    medmesh_seal::fuzzing::open_arbitrary(data);
});
