//! Identifiers and references carried by consent records and requests.
//!
//! Every identifier is a newtype that can only hold a valid value: parsing is the only way in
//! (`FromStr`, `TryFrom<String>`, serde), so code that holds a [`Jurisdiction`] knows it is an
//! assigned ISO 3166-1 alpha-2 code, and code that holds a [`PatientRef`] knows it is a 32-byte
//! keyed pseudonym and never a raw patient identifier.
//!
//! Two text shapes exist:
//!
//! - *tokens* ([`ConsentId`], [`PeerId`], [`ConsortiumId`], [`StudyRef`], [`SeriesRef`],
//!   [`EpisodeId`]): 1 to 128 printable ASCII characters, no whitespace. They are opaque: the node
//!   chooses their content (a libp2p peer id, a study key of its store, ...).
//! - *labels* ([`InstitutionId`]): 1 to 200 characters of printable Unicode, no control characters,
//!   no leading or trailing whitespace, so that an institution can be named as people write it.

use std::borrow::Cow;
use std::fmt;
use std::str::FromStr;

use schemars::{JsonSchema, Schema, SchemaGenerator, json_schema};
use serde::{Deserialize, Serialize};

/// Why a text could not become an identifier.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum IdError {
    /// The text is empty.
    #[error("{what} is empty")]
    Empty {
        /// Which kind of identifier was being parsed.
        what: &'static str,
    },
    /// The text is longer than the identifier allows.
    #[error("{what} is longer than {max} characters")]
    TooLong {
        /// Which kind of identifier was being parsed.
        what: &'static str,
        /// The maximum length in characters.
        max: usize,
    },
    /// The text contains a character the identifier does not allow.
    #[error("{what} contains the character {found:?}, which is not allowed ({allowed})")]
    BadChar {
        /// Which kind of identifier was being parsed.
        what: &'static str,
        /// The first offending character.
        found: char,
        /// What is allowed, in words.
        allowed: &'static str,
    },
    /// A label starts or ends with whitespace.
    #[error("{what} starts or ends with whitespace")]
    Whitespace {
        /// Which kind of identifier was being parsed.
        what: &'static str,
    },
    /// Not an assigned ISO 3166-1 alpha-2 code.
    #[error("jurisdiction {found:?} is not an assigned ISO 3166-1 alpha-2 code{hint}")]
    Jurisdiction {
        /// The rejected text.
        found: String,
        /// A hint for common mistakes (`UK`, `EL`, `EU`, lower case), or empty.
        hint: &'static str,
    },
    /// A patient reference that is not 32 bytes of lowercase hex.
    #[error("patient reference must be 64 lowercase hexadecimal characters (a 32-byte keyed pseudonym)")]
    PatientRef,
    /// Not a DICOM modality code.
    #[error("modality {found:?} is not a DICOM modality code (1 to 16 characters of A-Z, 0-9 and _)")]
    Modality {
        /// The rejected text.
        found: String,
    },
    /// Not a defined term of Modality (0008,0060).
    #[error(
        "{found:?} is not a DICOM modality (a defined term of Modality (0008,0060), PS3.3 C.7.3.1.1.1){}",
        if near.is_empty() { String::new() } else { format!("; did you mean {}?", near.join(", ")) }
    )]
    UndefinedModality {
        /// The rejected text.
        found: String,
        /// The nearest defined terms.
        near: Vec<String>,
    },
}

const TOKEN_MAX: usize = 128;
const LABEL_MAX: usize = 200;
const TOKEN_ALLOWED: &str = "printable ASCII without spaces";
const LABEL_ALLOWED: &str = "printable characters without control characters";

fn check_token(what: &'static str, s: &str) -> Result<(), IdError> {
    if s.is_empty() {
        return Err(IdError::Empty { what });
    }
    if s.len() > TOKEN_MAX {
        return Err(IdError::TooLong { what, max: TOKEN_MAX });
    }
    if let Some(found) = s.chars().find(|c| !c.is_ascii_graphic()) {
        return Err(IdError::BadChar {
            what,
            found,
            allowed: TOKEN_ALLOWED,
        });
    }
    Ok(())
}

fn check_label(what: &'static str, s: &str) -> Result<(), IdError> {
    if s.is_empty() {
        return Err(IdError::Empty { what });
    }
    if s.chars().count() > LABEL_MAX {
        return Err(IdError::TooLong { what, max: LABEL_MAX });
    }
    if let Some(found) = s.chars().find(|c| c.is_control()) {
        return Err(IdError::BadChar {
            what,
            found,
            allowed: LABEL_ALLOWED,
        });
    }
    if s.trim() != s {
        return Err(IdError::Whitespace { what });
    }
    Ok(())
}

/// Defines a validated string newtype with `FromStr`, `Display`, serde and a JSON Schema.
macro_rules! text_id {
    ($(#[$meta:meta])* $name:ident, $what:literal, $check:ident, $pattern:literal, $max:ident) => {
        $(#[$meta])*
        #[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
        #[serde(try_from = "String", into = "String")]
        pub struct $name(String);

        impl $name {
            /// Parses and validates `s`.
            ///
            /// # Errors
            ///
            /// [`IdError`] when `s` is empty, too long or holds a character that is not allowed.
            pub fn new(s: impl Into<String>) -> Result<Self, IdError> {
                let s = s.into();
                $check($what, &s)?;
                Ok(Self(s))
            }

            /// The identifier as text.
            #[must_use]
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl FromStr for $name {
            type Err = IdError;
            fn from_str(s: &str) -> Result<Self, IdError> {
                Self::new(s)
            }
        }

        impl TryFrom<String> for $name {
            type Error = IdError;
            fn try_from(s: String) -> Result<Self, IdError> {
                Self::new(s)
            }
        }

        impl From<$name> for String {
            fn from(id: $name) -> String {
                id.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl JsonSchema for $name {
            fn inline_schema() -> bool {
                true
            }
            fn schema_name() -> Cow<'static, str> {
                stringify!($name).into()
            }
            fn json_schema(_: &mut SchemaGenerator) -> Schema {
                json_schema!({
                    "type": "string",
                    "minLength": 1,
                    "maxLength": $max,
                    "pattern": $pattern,
                })
            }
        }
    };
}

text_id!(
    /// Identifier of a consent record, unique within the node that holds it (e.g. `c-17`).
    ConsentId, "consent id", check_token, "^[!-~]+$", TOKEN_MAX
);
text_id!(
    /// A peer's network identity as text (the node uses the libp2p `PeerId` string).
    PeerId, "peer id", check_token, "^[!-~]+$", TOKEN_MAX
);
text_id!(
    /// Identifier of a consortium the requesting peer is a verified member of.
    ConsortiumId, "consortium id", check_token, "^[!-~]+$", TOKEN_MAX
);
text_id!(
    /// Opaque reference to a study, chosen by the node that holds it.
    StudyRef, "study reference", check_token, "^[!-~]+$", TOKEN_MAX
);
text_id!(
    /// Opaque reference to a series within a study, chosen by the node that holds it.
    SeriesRef, "series reference", check_token, "^[!-~]+$", TOKEN_MAX
);
text_id!(
    /// Identifier of an episode of care (the stay or treatment course a study belongs to).
    EpisodeId, "episode of care id", check_token, "^[!-~]+$", TOKEN_MAX
);
text_id!(
    /// An institution as people name it (e.g. `Charité – Universitätsmedizin Berlin`).
    ///
    /// Matching is exact: the node must use the same spelling in requests (the institution named
    /// in the peer's verified membership certificate) as in consents.
    InstitutionId, "institution", check_label, "^\\S(.*\\S)?$", LABEL_MAX
);

/// A keyed pseudonym of a patient: 32 bytes, written as 64 lowercase hex characters.
///
/// The node computes it (a keyed hash of the raw patient identifier under a site secret); this
/// crate only carries and compares it. There is deliberately no way to build one from a raw
/// identifier here.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct PatientRef([u8; 32]);

impl PatientRef {
    /// Wraps the 32 bytes of a pseudonym the node computed.
    #[must_use]
    pub const fn from_bytes(bytes: [u8; 32]) -> Self {
        Self(bytes)
    }

    /// The 32 bytes of the pseudonym.
    #[must_use]
    pub const fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }
}

impl FromStr for PatientRef {
    type Err = IdError;
    fn from_str(s: &str) -> Result<Self, IdError> {
        if s.len() != 64 || s.bytes().any(|b| b.is_ascii_uppercase()) {
            return Err(IdError::PatientRef);
        }
        let mut bytes = [0u8; 32];
        hex::decode_to_slice(s, &mut bytes).map_err(|_| IdError::PatientRef)?;
        Ok(Self(bytes))
    }
}

impl TryFrom<String> for PatientRef {
    type Error = IdError;
    fn try_from(s: String) -> Result<Self, IdError> {
        s.parse()
    }
}

impl From<PatientRef> for String {
    fn from(p: PatientRef) -> String {
        hex::encode(p.0)
    }
}

impl fmt::Display for PatientRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&hex::encode(self.0))
    }
}

impl fmt::Debug for PatientRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PatientRef({})", hex::encode(self.0))
    }
}

impl JsonSchema for PatientRef {
    fn inline_schema() -> bool {
        true
    }
    fn schema_name() -> Cow<'static, str> {
        "PatientRef".into()
    }
    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({
            "description": "Keyed pseudonym of the patient: 32 bytes as lowercase hex.",
            "type": "string",
            "pattern": "^[0-9a-f]{64}$",
        })
    }
}

/// An assigned ISO 3166-1 alpha-2 country code, upper case (e.g. `DE`, `FR`, `US`).
///
/// Only the 249 officially assigned codes are accepted (list as of ISO 3166-1:2020 with its
/// newsletters up to 2024, checked against Debian `iso-codes` 4.15). Reserved or exceptional codes
/// such as `UK`, `EL` or `EU` are refused with a hint.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Jurisdiction([u8; 2]);

impl Jurisdiction {
    /// The code as text.
    #[must_use]
    pub fn as_str(&self) -> &str {
        // The bytes are two ASCII capitals: checked by `from_str`, the only constructor.
        std::str::from_utf8(&self.0).unwrap_or("??")
    }
}

/// The assigned ISO 3166-1 alpha-2 codes, sorted (binary search).
const ISO_3166_ALPHA2: [&str; 249] = [
    "AD", "AE", "AF", "AG", "AI", "AL", "AM", "AO", "AQ", "AR", "AS", "AT", "AU", "AW", "AX", "AZ", "BA", "BB", "BD",
    "BE", "BF", "BG", "BH", "BI", "BJ", "BL", "BM", "BN", "BO", "BQ", "BR", "BS", "BT", "BV", "BW", "BY", "BZ", "CA",
    "CC", "CD", "CF", "CG", "CH", "CI", "CK", "CL", "CM", "CN", "CO", "CR", "CU", "CV", "CW", "CX", "CY", "CZ", "DE",
    "DJ", "DK", "DM", "DO", "DZ", "EC", "EE", "EG", "EH", "ER", "ES", "ET", "FI", "FJ", "FK", "FM", "FO", "FR", "GA",
    "GB", "GD", "GE", "GF", "GG", "GH", "GI", "GL", "GM", "GN", "GP", "GQ", "GR", "GS", "GT", "GU", "GW", "GY", "HK",
    "HM", "HN", "HR", "HT", "HU", "ID", "IE", "IL", "IM", "IN", "IO", "IQ", "IR", "IS", "IT", "JE", "JM", "JO", "JP",
    "KE", "KG", "KH", "KI", "KM", "KN", "KP", "KR", "KW", "KY", "KZ", "LA", "LB", "LC", "LI", "LK", "LR", "LS", "LT",
    "LU", "LV", "LY", "MA", "MC", "MD", "ME", "MF", "MG", "MH", "MK", "ML", "MM", "MN", "MO", "MP", "MQ", "MR", "MS",
    "MT", "MU", "MV", "MW", "MX", "MY", "MZ", "NA", "NC", "NE", "NF", "NG", "NI", "NL", "NO", "NP", "NR", "NU", "NZ",
    "OM", "PA", "PE", "PF", "PG", "PH", "PK", "PL", "PM", "PN", "PR", "PS", "PT", "PW", "PY", "QA", "RE", "RO", "RS",
    "RU", "RW", "SA", "SB", "SC", "SD", "SE", "SG", "SH", "SI", "SJ", "SK", "SL", "SM", "SN", "SO", "SR", "SS", "ST",
    "SV", "SX", "SY", "SZ", "TC", "TD", "TF", "TG", "TH", "TJ", "TK", "TL", "TM", "TN", "TO", "TR", "TT", "TV", "TW",
    "TZ", "UA", "UG", "UM", "US", "UY", "UZ", "VA", "VC", "VE", "VG", "VI", "VN", "VU", "WF", "WS", "YE", "YT", "ZA",
    "ZM", "ZW",
];

impl FromStr for Jurisdiction {
    type Err = IdError;
    fn from_str(s: &str) -> Result<Self, IdError> {
        if ISO_3166_ALPHA2.binary_search(&s).is_ok() {
            let b = s.as_bytes();
            return Ok(Self([b[0], b[1]]));
        }
        let hint = match s {
            "UK" => " (the United Kingdom is GB)",
            "EL" => " (Greece is GR)",
            "EU" => " (name each member state, or scope the consent to a consortium)",
            _ if ISO_3166_ALPHA2.binary_search(&s.to_ascii_uppercase().as_str()).is_ok() => " (write it in upper case)",
            _ => "",
        };
        Err(IdError::Jurisdiction {
            found: s.to_owned(),
            hint,
        })
    }
}

impl TryFrom<String> for Jurisdiction {
    type Error = IdError;
    fn try_from(s: String) -> Result<Self, IdError> {
        s.parse()
    }
}

impl From<Jurisdiction> for String {
    fn from(j: Jurisdiction) -> String {
        j.as_str().to_owned()
    }
}

impl fmt::Display for Jurisdiction {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl fmt::Debug for Jurisdiction {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Jurisdiction({})", self.as_str())
    }
}

impl JsonSchema for Jurisdiction {
    fn schema_name() -> Cow<'static, str> {
        "Jurisdiction".into()
    }
    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({
            "description": "Assigned ISO 3166-1 alpha-2 country code, upper case.",
            "type": "string",
            "enum": ISO_3166_ALPHA2.to_vec(),
        })
    }
}

/// A DICOM modality code, the value of Modality (0008,0060) of a series (e.g. `CT`, `MR`, `US`).
///
/// Any value a DICOM `CS` element can hold for a modality is accepted (1 to 16 characters of
/// `A-Z`, `0-9`, `_`), so that a site can scope consent to a modality this crate does not know
/// yet. [`Modality::is_defined_term`] tells whether it is one of the defined terms.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Modality(String);

/// Modality defined terms of DICOM PS3.16 CID 33 "Modality" (which contains CID 29 "Acquisition
/// Modality"), DICOM 2024 editions, sorted (binary search). Retired terms are left out.
const MODALITY_DEFINED_TERMS: &[&str] = &[
    "ANN",
    "AR",
    "ASMT",
    "AU",
    "BDUS",
    "BI",
    "BMD",
    "CFM",
    "CR",
    "CT",
    "CTPROTOCOL",
    "DG",
    "DMS",
    "DOC",
    "DX",
    "ECG",
    "EEG",
    "EMG",
    "EOG",
    "EPS",
    "ES",
    "FID",
    "GM",
    "HC",
    "HD",
    "IO",
    "IOL",
    "IVOCT",
    "IVUS",
    "KER",
    "KO",
    "LEN",
    "LS",
    "M3D",
    "MG",
    "MR",
    "NM",
    "OAM",
    "OCT",
    "OP",
    "OPM",
    "OPT",
    "OPTBSV",
    "OPTENF",
    "OPV",
    "OSS",
    "OT",
    "PA",
    "PLAN",
    "POS",
    "PR",
    "PT",
    "PX",
    "REG",
    "RESP",
    "RF",
    "RG",
    "RTDOSE",
    "RTIMAGE",
    "RTINTENT",
    "RTPLAN",
    "RTRAD",
    "RTRECORD",
    "RTSEGANN",
    "RTSTRUCT",
    "RWV",
    "SEG",
    "SM",
    "SMR",
    "SR",
    "SRF",
    "STAIN",
    "TEXTUREMAP",
    "TG",
    "US",
    "VA",
    "XA",
    "XAPROTOCOL",
    "XC",
];

impl Modality {
    /// Parses and validates a modality code.
    ///
    /// # Errors
    ///
    /// [`IdError::Modality`] when `s` is not 1 to 16 characters of `A-Z`, `0-9` and `_`.
    pub fn new(s: impl Into<String>) -> Result<Self, IdError> {
        let s = s.into();
        let ok = (1..=16).contains(&s.len())
            && s.bytes()
                .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit() || b == b'_');
        if ok {
            Ok(Self(s))
        } else {
            Err(IdError::Modality { found: s })
        }
    }

    /// The code as text.
    #[must_use]
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Whether the code is a defined term of DICOM CID 33 (Modality).
    #[must_use]
    pub fn is_defined_term(&self) -> bool {
        let s = self.0.as_str();
        MODALITY_DEFINED_TERMS.binary_search(&s).is_ok()
    }

    /// Parses what a person typed: one of the defined terms of Modality
    /// (0008,0060), PS3.3 C.7.3.1.1.1, in any case (`ct` is `CT`).
    ///
    /// # Errors
    /// [`IdError::UndefinedModality`] with the defined terms nearest to the input.
    pub fn defined(s: &str) -> Result<Self, IdError> {
        let up = s.trim().to_ascii_uppercase();
        if MODALITY_DEFINED_TERMS.binary_search(&up.as_str()).is_ok() {
            return Ok(Self(up));
        }
        Err(IdError::UndefinedModality {
            found: s.to_string(),
            near: near_modalities(&up),
        })
    }

    /// The defined terms of Modality (0008,0060), sorted.
    #[must_use]
    pub fn defined_terms() -> &'static [&'static str] {
        MODALITY_DEFINED_TERMS
    }
}

/// Up to five defined terms within edit distance 2 of `s` (or sharing its
/// first two letters), nearest first.
fn near_modalities(s: &str) -> Vec<String> {
    let mut scored: Vec<(usize, &str)> = MODALITY_DEFINED_TERMS
        .iter()
        .map(|t| (edit_distance(s, t), *t))
        .filter(|(d, t)| *d <= 2 || (s.len() >= 2 && t.starts_with(&s[..2])))
        .collect();
    scored.sort();
    scored.into_iter().take(5).map(|(_, t)| t.to_string()).collect()
}

fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut cur = vec![i + 1];
        for (j, cb) in b.iter().enumerate() {
            let cost = usize::from(ca != *cb);
            cur.push((prev[j] + cost).min(prev[j + 1] + 1).min(cur[j] + 1));
        }
        prev = cur;
    }
    prev[b.len()]
}

impl FromStr for Modality {
    type Err = IdError;
    fn from_str(s: &str) -> Result<Self, IdError> {
        Self::new(s)
    }
}

impl TryFrom<String> for Modality {
    type Error = IdError;
    fn try_from(s: String) -> Result<Self, IdError> {
        Self::new(s)
    }
}

impl From<Modality> for String {
    fn from(m: Modality) -> String {
        m.0
    }
}

impl fmt::Display for Modality {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl JsonSchema for Modality {
    fn inline_schema() -> bool {
        true
    }
    fn schema_name() -> Cow<'static, str> {
        "Modality".into()
    }
    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({
            "description": "DICOM modality code (0008,0060), e.g. CT, MR, US.",
            "type": "string",
            "pattern": "^[A-Z0-9_]{1,16}$",
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn iso_table_is_sorted_and_unique() {
        assert!(ISO_3166_ALPHA2.windows(2).all(|w| w[0] < w[1]));
        assert!(MODALITY_DEFINED_TERMS.windows(2).all(|w| w[0] < w[1]));
        assert!(
            ISO_3166_ALPHA2
                .iter()
                .all(|c| c.len() == 2 && c.bytes().all(|b| b.is_ascii_uppercase()))
        );
    }

    #[test]
    fn defined_modalities() {
        for (input, want) in [
            ("CT", Some("CT")),
            ("ct", Some("CT")),
            (" mr ", Some("MR")),
            ("Sr", Some("SR")),
            ("CTT", None),
            ("XX", None),
            ("", None),
        ] {
            assert_eq!(
                Modality::defined(input).ok().map(|m| m.as_str().to_string()).as_deref(),
                want,
                "{input:?}"
            );
        }
        let e = Modality::defined("CTT").unwrap_err().to_string();
        assert!(
            e.contains("\"CTT\" is not a DICOM modality") && e.contains("did you mean CT"),
            "{e}"
        );
        let e = Modality::defined("mrr").unwrap_err().to_string();
        assert!(e.contains("MR"), "{e}");
    }

    #[test]
    fn jurisdiction_table() {
        for (input, ok) in [
            ("DE", true),
            ("FR", true),
            ("GB", true),
            ("US", true),
            ("UK", false),
            ("EU", false),
            ("EL", false),
            ("de", false),
            ("D", false),
            ("DEU", false),
            ("XX", false),
            ("", false),
        ] {
            assert_eq!(input.parse::<Jurisdiction>().is_ok(), ok, "{input}");
        }
        let err = "UK".parse::<Jurisdiction>().unwrap_err().to_string();
        assert!(err.contains("GB"), "{err}");
        let err = "de".parse::<Jurisdiction>().unwrap_err().to_string();
        assert!(err.contains("upper case"), "{err}");
    }

    #[test]
    fn patient_ref_is_lowercase_hex_of_32_bytes() {
        let hex64 = "ab".repeat(32);
        let p: PatientRef = hex64.parse().unwrap();
        assert_eq!(p.as_bytes(), &[0xab; 32]);
        assert_eq!(p.to_string(), hex64);
        assert!("AB".repeat(32).parse::<PatientRef>().is_err());
        assert!("ab".repeat(31).parse::<PatientRef>().is_err());
        assert!("zz".repeat(32).parse::<PatientRef>().is_err());
        assert!("12345".parse::<PatientRef>().is_err());
    }

    #[test]
    fn tokens_and_labels() {
        assert!(ConsentId::new("c-17").is_ok());
        assert_eq!(ConsentId::new(""), Err(IdError::Empty { what: "consent id" }));
        assert!(matches!(
            ConsentId::new("c 17"),
            Err(IdError::BadChar { found: ' ', .. })
        ));
        assert!(matches!(
            PeerId::new("x".repeat(129)),
            Err(IdError::TooLong { max: 128, .. })
        ));
        assert!(InstitutionId::new("Charité – Universitätsmedizin Berlin").is_ok());
        assert!(matches!(
            InstitutionId::new(" Charité"),
            Err(IdError::Whitespace { .. })
        ));
        assert!(matches!(InstitutionId::new("a\nb"), Err(IdError::BadChar { .. })));
    }

    #[test]
    fn modality_codes() {
        for ok in ["CT", "MR", "US", "RTSTRUCT", "X_1"] {
            assert!(Modality::new(ok).is_ok(), "{ok}");
        }
        for bad in ["", "ct", "C T", "ABCDEFGHIJKLMNOPQ"] {
            assert!(Modality::new(bad).is_err(), "{bad}");
        }
        assert!(Modality::new("CT").unwrap().is_defined_term());
        assert!(Modality::new("XC").unwrap().is_defined_term());
        assert!(!Modality::new("X_1").unwrap().is_defined_term());
    }
}
