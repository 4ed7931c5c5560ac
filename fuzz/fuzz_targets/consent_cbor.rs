//! CBOR consent records: decode; a decoded record round-trips through CBOR and JSON.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    consent_schema::fuzzing::cbor_record(data);
});
