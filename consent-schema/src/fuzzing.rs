//! Entry points for fuzz targets (`fuzz/`). Not part of the API: no stability promise.
//!
//! Each function takes arbitrary bytes and must never panic; it also checks properties that
//! must hold for every input that decodes (re-encoding gives the same record).

use crate::fhir::{FhirPatient, ImportContext, import_consent_str};
use crate::ids::PatientRef;
use crate::record::ConsentRecord;

/// Decodes `data` as a CBOR consent record; a record that decodes must round-trip through CBOR
/// and JSON.
pub fn cbor_record(data: &[u8]) {
    if let Ok(record) = ConsentRecord::from_cbor(data) {
        round_trip(&record);
    }
}

/// Decodes `data` (if UTF-8) as a JSON consent record; a record that decodes must round-trip.
pub fn json_record(data: &[u8]) {
    if let Ok(text) = std::str::from_utf8(data)
        && let Ok(record) = ConsentRecord::from_json(text)
    {
        round_trip(&record);
    }
}

/// Imports `data` (if UTF-8) as a FHIR R4 Consent with a permissive context (every custodian
/// unknown, dates in UTC, patient assumed); every imported record must round-trip.
pub fn fhir_consent(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let pseudonymise = |p: &FhirPatient<'_>| {
        let mut bytes = [0u8; 32];
        let raw = p.reference.or(p.identifier_value)?;
        for (i, b) in raw.bytes().enumerate() {
            bytes[i % 32] ^= b;
        }
        Some(PatientRef::from_bytes(bytes))
    };
    let ctx = ImportContext::new(&pseudonymise)
        .custodian("Organization/f001")
        .assume_consented_by(crate::ConsentedBy::Patient)
        .purposes_when_unspecified([crate::Purpose::Treatment]);
    if let Ok(records) = import_consent_str(text, &ctx) {
        for record in &records {
            round_trip(record);
        }
    }
}

fn round_trip(record: &ConsentRecord) {
    let again = ConsentRecord::from_cbor(&record.to_cbor());
    assert!(
        again.as_ref().is_ok_and(|r| r == record),
        "CBOR round trip failed: {again:?}"
    );
    let again = ConsentRecord::from_json(&record.to_json());
    assert!(
        again.as_ref().is_ok_and(|r| r == record),
        "JSON round trip failed: {again:?}"
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hooks_accept_garbage_and_valid_input() {
        let record = crate::testutil::sample_record();
        for data in [
            &b""[..],
            b"\xff\x00",
            b"{}",
            b"[]",
            b"null",
            &record.to_cbor(),
            record.to_json().as_bytes(),
        ] {
            cbor_record(data);
            json_record(data);
            fhir_consent(data);
        }
        fhir_consent(include_bytes!("../tests/data/fhir/Consent-consent-example-basic.json"));
    }
}
