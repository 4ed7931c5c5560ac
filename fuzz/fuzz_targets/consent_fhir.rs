//! FHIR R4 Consent import; every imported record round-trips through CBOR and JSON.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    consent_schema::fuzzing::fhir_consent(data);
});
