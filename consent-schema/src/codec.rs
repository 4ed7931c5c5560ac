//! JSON and CBOR encodings of [`ConsentRecord`].
//!
//! Both encodings carry the same fields (see `schema/consent-record.schema.json`), with a
//! `version` field first. Decoding:
//!
//! 1. checks the input size against [`MAX_RECORD_SIZE`] before parsing anything;
//! 2. parses into a generic value (CBOR: `ciborium::Value`, recursion limited to
//!    [`MAX_NESTING`]; JSON: `serde_json::Value`) and rejects trailing bytes;
//! 3. reads `version` and refuses any version other than [`FORMAT_VERSION`] with
//!    [`ConsentError::UnsupportedVersion`], before looking at other fields, so a newer record gives a
//!    clear error rather than "unknown field";
//! 4. decodes the fields (unknown fields are refused) and checks every invariant through
//!    [`ConsentRecord::new`].
//!
//! Timestamps are RFC 3339 text in both encodings (UTC, `Z`), so that JSON and CBOR round-trip
//! each other exactly.

use serde::Serialize;

use crate::record::{ConsentError, ConsentRecord, FORMAT_VERSION, RecordWire};

/// The largest encoded record accepted, in bytes (64 KiB).
///
/// A record with a thousand study references of 64 characters is about 70 KiB in JSON; real
/// consents name a handful. The bound keeps a hostile or corrupt row from costing more than a
/// few hundred microseconds.
pub const MAX_RECORD_SIZE: usize = 64 * 1024;

/// Nesting limit for CBOR decoding; a record nests at most 5 levels.
pub const MAX_NESTING: usize = 16;

/// Why an encoded record could not be decoded.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CodecError {
    /// The input is larger than [`MAX_RECORD_SIZE`].
    #[error("consent record is {size} bytes, more than the {MAX_RECORD_SIZE} bytes allowed")]
    TooLarge {
        /// The input size.
        size: usize,
    },
    /// The bytes are not one well-formed CBOR item.
    #[error("consent record is not well-formed CBOR: {0}")]
    Cbor(#[source] ciborium::de::Error<std::io::Error>),
    /// The text is not one well-formed JSON value.
    #[error("consent record is not well-formed JSON: {0}")]
    Json(#[source] serde_json::Error),
    /// Bytes follow the record.
    #[error("consent record is followed by {extra} unexpected bytes")]
    TrailingBytes {
        /// How many bytes follow.
        extra: usize,
    },
    /// The top-level item is not a map with an unsigned integer `version`.
    #[error("consent record has no `version` field (expected a map with version {FORMAT_VERSION})")]
    MissingVersion,
    /// Well-formed, but the fields do not make a record.
    #[error("consent record fields are invalid: {0}")]
    Fields(#[source] ciborium::value::Error),
    /// Well-formed JSON, but the fields do not make a record.
    #[error("consent record fields are invalid: {0}")]
    JsonFields(#[source] serde_json::Error),
    /// The fields make an impossible record, or a version this build does not read.
    #[error(transparent)]
    Record(#[from] ConsentError),
}

impl ConsentRecord {
    /// Encodes the record as CBOR.
    #[must_use]
    pub fn to_cbor(&self) -> Vec<u8> {
        let mut out = Vec::new();
        // Writing into a Vec cannot fail, and every field serialises (strings, integers, maps
        // with string keys), so an error here would be a bug in this crate.
        #[allow(clippy::expect_used)]
        ciborium::into_writer(self, &mut out).expect("consent record serialises to CBOR");
        out
    }

    /// Decodes a record from CBOR (see the module docs for the steps).
    ///
    /// # Errors
    ///
    /// [`CodecError::TooLarge`] over [`MAX_RECORD_SIZE`], [`CodecError::Cbor`] for malformed
    /// CBOR, [`CodecError::TrailingBytes`], [`CodecError::MissingVersion`],
    /// [`CodecError::Record`] with [`ConsentError::UnsupportedVersion`] or an invariant, and
    /// [`CodecError::Fields`] for missing, unknown or mistyped fields.
    pub fn from_cbor(bytes: &[u8]) -> Result<Self, CodecError> {
        if bytes.len() > MAX_RECORD_SIZE {
            return Err(CodecError::TooLarge { size: bytes.len() });
        }
        let mut rest = bytes;
        let value: ciborium::Value =
            ciborium::de::from_reader_with_recursion_limit(&mut rest, MAX_NESTING).map_err(CodecError::Cbor)?;
        if !rest.is_empty() {
            return Err(CodecError::TrailingBytes { extra: rest.len() });
        }
        let version = value
            .as_map()
            .and_then(|m| m.iter().find(|(k, _)| k.as_text() == Some("version")).map(|(_, v)| v))
            .and_then(ciborium::Value::as_integer)
            .and_then(|i| u64::try_from(i).ok())
            .ok_or(CodecError::MissingVersion)?;
        check_version(version)?;
        let wire: RecordWire = value.deserialized().map_err(CodecError::Fields)?;
        Ok(ConsentRecord::try_from(wire)?)
    }

    /// Encodes the record as compact JSON.
    #[must_use]
    pub fn to_json(&self) -> String {
        // Every field serialises to JSON (no non-string map keys, no floats).
        #[allow(clippy::expect_used)]
        serde_json::to_string(self).expect("consent record serialises to JSON")
    }

    /// Encodes the record as indented JSON, for people.
    #[must_use]
    pub fn to_json_pretty(&self) -> String {
        let mut out = Vec::new();
        let mut ser =
            serde_json::Serializer::with_formatter(&mut out, serde_json::ser::PrettyFormatter::with_indent(b"  "));
        // As in `to_json`; the output is UTF-8 because serde_json writes only UTF-8.
        #[allow(clippy::expect_used)]
        self.serialize(&mut ser).expect("consent record serialises to JSON");
        String::from_utf8(out).unwrap_or_default()
    }

    /// Decodes a record from JSON (see the module docs for the steps).
    ///
    /// # Errors
    ///
    /// As [`ConsentRecord::from_cbor`], with [`CodecError::Json`] for malformed JSON (trailing
    /// characters included) and [`CodecError::JsonFields`] for missing, unknown or mistyped fields.
    pub fn from_json(text: &str) -> Result<Self, CodecError> {
        if text.len() > MAX_RECORD_SIZE {
            return Err(CodecError::TooLarge { size: text.len() });
        }
        // serde_json rejects trailing characters other than whitespace and limits nesting to 128.
        let value: serde_json::Value = serde_json::from_str(text).map_err(CodecError::Json)?;
        let version = value
            .get("version")
            .and_then(serde_json::Value::as_u64)
            .ok_or(CodecError::MissingVersion)?;
        check_version(version)?;
        let wire: RecordWire = serde_json::from_value(value).map_err(CodecError::JsonFields)?;
        Ok(ConsentRecord::try_from(wire)?)
    }
}

fn check_version(version: u64) -> Result<(), ConsentError> {
    if version == u64::from(FORMAT_VERSION) {
        Ok(())
    } else {
        Err(ConsentError::UnsupportedVersion { found: version })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::sample_record;

    #[test]
    fn json_and_cbor_round_trip() {
        let r = sample_record();
        assert_eq!(ConsentRecord::from_json(&r.to_json()).unwrap(), r);
        assert_eq!(ConsentRecord::from_json(&r.to_json_pretty()).unwrap(), r);
        assert_eq!(ConsentRecord::from_cbor(&r.to_cbor()).unwrap(), r);
    }

    #[test]
    fn trailing_bytes_are_refused() {
        let mut bytes = sample_record().to_cbor();
        bytes.push(0x00);
        assert!(matches!(
            ConsentRecord::from_cbor(&bytes),
            Err(CodecError::TrailingBytes { extra: 1 })
        ));
        let json = format!("{} {{}}", sample_record().to_json());
        assert!(matches!(ConsentRecord::from_json(&json), Err(CodecError::Json(_))));
    }

    #[test]
    fn size_is_checked_before_decoding() {
        let big = vec![0xff; MAX_RECORD_SIZE + 1];
        assert!(matches!(
            ConsentRecord::from_cbor(&big),
            Err(CodecError::TooLarge { .. })
        ));
        let big = " ".repeat(MAX_RECORD_SIZE + 1);
        assert!(matches!(
            ConsentRecord::from_json(&big),
            Err(CodecError::TooLarge { .. })
        ));
    }

    #[test]
    fn unknown_version_is_a_clear_error_even_with_new_fields() {
        let mut v: serde_json::Value = serde_json::from_str(&sample_record().to_json()).unwrap();
        v["version"] = 2.into();
        v["future_field"] = true.into();
        let err = ConsentRecord::from_json(&v.to_string()).unwrap_err();
        assert!(
            matches!(err, CodecError::Record(ConsentError::UnsupportedVersion { found: 2 })),
            "{err}"
        );
        let mut cbor = Vec::new();
        ciborium::into_writer(&v, &mut cbor).unwrap();
        let err = ConsentRecord::from_cbor(&cbor).unwrap_err();
        assert_eq!(
            err.to_string(),
            "version: consent record format version 2 is not supported (this build reads version 1)"
        );
        v.as_object_mut().unwrap().remove("version");
        assert!(matches!(
            ConsentRecord::from_json(&v.to_string()),
            Err(CodecError::MissingVersion)
        ));
    }

    #[test]
    fn unknown_fields_and_invariants_are_refused() {
        let mut v: serde_json::Value = serde_json::from_str(&sample_record().to_json()).unwrap();
        v["extra"] = 1.into();
        assert!(
            matches!(ConsentRecord::from_json(&v.to_string()), Err(CodecError::JsonFields(m)) if m.to_string().contains("extra"))
        );
        let mut v: serde_json::Value = serde_json::from_str(&sample_record().to_json()).unwrap();
        v["scope"]["purposes"] = serde_json::json!([]);
        let err = ConsentRecord::from_json(&v.to_string()).unwrap_err();
        assert!(matches!(err, CodecError::Record(ConsentError::NoPurposes)), "{err}");
        let mut v: serde_json::Value = serde_json::from_str(&sample_record().to_json()).unwrap();
        v["scope"]["recipients"] = serde_json::json!({"only": [{"jurisdiction": "UK"}]});
        let err = ConsentRecord::from_json(&v.to_string()).unwrap_err();
        assert!(err.to_string().contains("GB"), "{err}");
    }

    #[test]
    fn cbor_garbage_does_not_panic() {
        for bytes in [
            &[][..],
            &[0xa1],
            &[0xbf, 0x61],
            &[0x9f; 64],
            &[0x5b, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff],
        ] {
            assert!(ConsentRecord::from_cbor(bytes).is_err());
        }
    }

    /// Pins the CBOR encoding of a minimal record, field by field (a map with text keys in
    /// declaration order, `version` first; enums as text or one-entry maps; times as RFC 3339).
    #[test]
    fn cbor_wire_format() {
        let record = ConsentRecord::new(crate::ConsentDraft {
            id: "c-1".parse().unwrap(),
            patient: crate::PatientRef::from_bytes([0xab; 32]),
            consented_by: crate::ConsentedBy::Patient,
            provision: crate::Provision::Deny,
            scope: crate::Scope {
                purposes: [crate::Purpose::Research].into(),
                modalities: crate::ModalityScope::All,
                recipients: crate::RecipientScope::Any,
                coverage: crate::Coverage::WholeRecord,
                data_period: None,
            },
            valid_from: "2026-01-01T00:00:00Z".parse().unwrap(),
            valid_until: None,
            withdrawn_at: None,
            legal_basis: crate::LegalBasis::new("GDPR-21", "").unwrap(),
        })
        .unwrap();
        let fields: &[(&str, &str)] = &[
            ("a8", "map, 8 entries (absent options are left out)"),
            ("67 76657273696f6e 01", "\"version\": 1"),
            ("62 6964 63 632d31", "\"id\": \"c-1\""),
            ("67 70617469656e74 7840", "\"patient\": text(64), the pseudonym in hex:"),
            (&"6162".repeat(32), "  \"abab…ab\""),
            (
                "6c 636f6e73656e7465645f6279 67 70617469656e74",
                "\"consented_by\": \"patient\"",
            ),
            ("69 70726f766973696f6e 64 64656e79", "\"provision\": \"deny\""),
            ("65 73636f7065 a4", "\"scope\": map, 4 entries (no data_period)"),
            (
                "68 707572706f736573 81 68 7265736561726368",
                "  \"purposes\": [\"research\"]",
            ),
            ("6a 6d6f64616c6974696573 63 616c6c", "  \"modalities\": \"all\""),
            ("6a 726563697069656e7473 63 616e79", "  \"recipients\": \"any\""),
            (
                "68 636f766572616765 6c 77686f6c652d7265636f7264",
                "  \"coverage\": \"whole-record\"",
            ),
            (
                "6a 76616c69645f66726f6d 74 323032362d30312d30315430303a30303a30305a",
                "\"valid_from\": \"2026-01-01T00:00:00Z\"",
            ),
            ("6b 6c6567616c5f6261736973 a2", "\"legal_basis\": map, 2 entries"),
            ("64 636f6465 67 474450522d3231", "  \"code\": \"GDPR-21\""),
            ("64 74657874 60", "  \"text\": \"\""),
        ];
        let expected: String = fields.iter().map(|(bytes, _)| bytes.replace(' ', "")).collect();
        assert_eq!(hex::encode(record.to_cbor()), expected);
        assert_eq!(
            ConsentRecord::from_cbor(&hex::decode(expected).unwrap()).unwrap(),
            record
        );
    }
}
