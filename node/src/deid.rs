//! De-identification of DICOM objects: the Basic Application Level
//! Confidentiality Profile of PS3.15 Annex E with its options, driven by
//! Table E.1-1 as data ([`table`]), applied recursively into sequences.
//!
//! - Every attribute of the table gets its action (D, Z, X, K, C, U); a
//!   combined code is resolved by the attribute's Type in the object's IOD at
//!   that nesting path (X/Z: Type 2 → Z, else X; X/D: Type 1 or 2 → D;
//!   Z/D: Type 1 → D; X/Z/D and X/Z/U* likewise). Attributes the table does
//!   not list are kept, except UIDs that are not well-known DICOM UIDs, which
//!   are remapped like U, and string values, which are cleaned ([`text`]);
//!   medmesh adds rows for Text Value (D, C with Clean Structured Content),
//!   Retrieve URL and Retrieve URI (X).
//! - Cleaning (C, and every string the table does not list) removes, at any
//!   depth and ignoring case, every identifying string of the object (every
//!   person name and its parts, the patient's IDs, address, birth date, the
//!   accession number, the institution...) and the site's names (its host
//!   names: [`Profile::with_site_names`]), and maps UIDs quoted in text.
//! - The options ([`DeidOption`]) replace the basic action with their K or C
//!   where the table says so.
//! - Private attributes go, unless Retain Safe Private is on and the
//!   attribute is on the safe list of Table E.3.10-1.
//! - UIDs are remapped with a keyed hash: the same UID gives the same new UID
//!   under the same keys, so references between objects still resolve. New
//!   UIDs are `2.25.` + a 128-bit UUID (version 8) as a decimal integer.
//! - Dates shift by a keyed per-patient number of days when Retain
//!   Longitudinal Temporal Information with Modified Dates is on (both ends
//!   of a DA or DT range by the same days).
//! - The patient's name and ID become a keyed pseudonym.
//! - Patient Identity Removed, De-identification Method, its code sequence
//!   (CID 7050) and Longitudinal Temporal Information Modified are set.
//! - Objects with burned-in identifiers, or of a kind that often has them,
//!   are refused unless a masking rule covers them ([`pixels`]).

pub mod pixels;
pub mod service;
pub mod table;
#[cfg(test)]
mod tests;
pub mod text;
#[cfg(test)]
mod text_tests;
#[cfg(test)]
mod vectors;

use std::collections::{BTreeSet, HashMap};
use std::fmt;

use consent_schema::DeidLevel;
use dicom_core::header::Header;
use dicom_core::value::{DataSetSequence, PrimitiveValue, Value};
use dicom_core::{DataElement, Length, Tag, VR};
use dicom_dictionary_std::tags;
use dicom_object::InMemDicomObject;
use dicom_object::meta::FileMetaTableBuilder;
use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

pub use crate::config::{DeidOption, MaskRule};
pub use service::{DeidEvent, DeidOutcome, DeidService, DeidServiceError, DeidSummary, RelinkView};
pub use table::{Action, tables};

/// Errors of de-identification.
#[derive(Debug, thiserror::Error)]
pub enum DeidError {
    /// An embedded table does not parse.
    #[error("de-identification table {file} line {line}: {reason}")]
    Table {
        /// The data file.
        file: String,
        /// Its line.
        line: usize,
        /// What is wrong.
        reason: Box<TableCause>,
    },
    /// The object cannot be read or written.
    #[error("not a readable DICOM object: {0}")]
    Dicom(#[source] DicomCause),
    /// The object may show identifiers in its pixels and no masking rule covers it.
    #[error("may carry burned-in identifiers ({0}) and no masking rule covers it")]
    BurnedIn(BurnedIn),
    /// A masking rule covers the object but cannot be applied.
    #[error("masking rule cannot be applied: {0}")]
    Mask(#[from] MaskCause),
    /// A profile that cannot be used.
    #[error(transparent)]
    Profile(#[from] ProfileCause),
}

/// What is wrong with an embedded de-identification table
/// ([`DeidError::Table`]). Cells are quoted as written: the tables are
/// medmesh's own data.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TableCause {
    /// The CSV does not read.
    #[error(transparent)]
    Csv(#[from] csv::Error),
    /// A column is missing.
    #[error("no column {column}")]
    NoColumn {
        /// The column.
        column: String,
    },
    /// A cell is not 4 hex digits.
    #[error("{cell:?} is not 4 hex digits")]
    Hex {
        /// The cell.
        cell: String,
    },
    /// A tag is not (gggg,eeee).
    #[error("tag {cell:?} is not (gggg,eeee)")]
    Tag {
        /// The cell.
        cell: String,
    },
    /// An unknown action.
    #[error("action {cell:?}")]
    Action {
        /// The cell.
        cell: String,
    },
    /// An option column that is not K or C.
    #[error("{column}: {cell:?} is not K or C")]
    Flag {
        /// The column.
        column: String,
        /// The cell.
        cell: String,
    },
    /// A tag twice in a table.
    #[error("tag {tag} twice")]
    TagTwice {
        /// The tag.
        tag: String,
    },
    /// An addition that names no or several tags.
    #[error("an addition names one tag")]
    AdditionTags,
    /// An addition of a tag that a table has already.
    #[error("tag {tag} is already in a table")]
    Added {
        /// The tag.
        tag: String,
    },
    /// An unknown attribute type.
    #[error("type {cell:?}")]
    Type {
        /// The cell.
        cell: String,
    },
    /// An element offset that is not 2 hex digits.
    #[error("element {cell:?} is not a 2-hex-digit offset")]
    Element {
        /// The cell.
        cell: String,
    },
    /// The tables failed to load (the error says where).
    #[error(transparent)]
    Load(&'static DeidError),
}

/// Why an object cannot be read or written ([`DeidError::Dicom`]).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DicomCause {
    /// It does not parse.
    #[error(transparent)]
    Parse(Box<crate::dicom::DicomError>),
    /// It has no SOP Class UID.
    #[error("no SOP Class UID (0008,0016): a data set, not a composite object")]
    NoSopClass,
    /// A UID of it (named by its attribute) is not valid.
    #[error("{attribute}: {cause}")]
    Uid {
        /// The attribute (keyword and tag).
        attribute: &'static str,
        /// What is wrong with it.
        #[source]
        cause: crate::dicom::UidError,
    },
    /// The file meta group of the output cannot be built.
    #[error("file meta: {0}")]
    Meta(#[source] Box<dicom_object::meta::Error>),
    /// The output cannot be written.
    #[error("writing: {0}")]
    Write(#[source] Box<dicom_object::WriteError>),
}

/// Why an object may show identifiers in its pixels ([`DeidError::BurnedIn`]).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum BurnedIn {
    /// Burned In Annotation says so.
    #[error("Burned In Annotation (0028,0301) is YES")]
    Flagged,
    /// A modality that often has burned-in text, without the attribute.
    #[error("modality {modality} without Burned In Annotation (0028,0301)")]
    Modality {
        /// The modality.
        modality: String,
    },
    /// A SOP class that often has burned-in text, without the attribute.
    #[error("SOP class {class} (secondary capture or ultrasound) without Burned In Annotation (0028,0301)")]
    SopClass {
        /// The SOP Class UID.
        class: String,
    },
}

/// Why a masking rule cannot be applied ([`DeidError::Mask`]).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum MaskCause {
    /// No Rows.
    #[error("no Rows (0028,0010)")]
    NoRows,
    /// No Columns.
    #[error("no Columns (0028,0011)")]
    NoColumns,
    /// Bits allocated that are not whole bytes.
    #[error("{bits} bits allocated: only whole bytes can be masked")]
    Bits {
        /// Bits Allocated.
        bits: usize,
    },
    /// No Pixel Data.
    #[error("no Pixel Data")]
    NoPixelData,
    /// Compressed pixel data.
    #[error("compressed pixel data (transfer syntax {transfer_syntax}) cannot be masked; decompress it first")]
    Compressed {
        /// The transfer syntax UID.
        transfer_syntax: String,
    },
    /// Pixel data of an unexpected value type.
    #[error("pixel data of an unexpected type")]
    PixelType,
    /// Zero rows or columns.
    #[error("an image of zero rows or columns")]
    Empty,
    /// Dimensions that overflow.
    #[error("image dimensions too large")]
    TooLarge,
    /// Pixel data of another length than the attributes describe.
    #[error("pixel data has {found} bytes, the image attributes describe {described}")]
    Length {
        /// Bytes found.
        found: usize,
        /// Bytes described.
        described: usize,
    },
}

/// Why a profile cannot be used ([`DeidError::Profile`]).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ProfileCause {
    /// The identifiable level.
    #[error("the identifiable level is not de-identified")]
    Identifiable,
    /// Both longitudinal temporal options.
    #[error("retain-long-full-dates and retain-long-modified-dates exclude each other")]
    BothDateOptions,
    /// Retain UIDs at the anonymised level.
    #[error("retain-uids keeps the original UIDs, which link back to the source: not at the anonymised level")]
    RetainUidsAnonymised,
    /// The system has no randomness to give.
    #[error("random: {0}")]
    Random(#[source] getrandom::Error),
}

/// A coded concept (code value, coding scheme, meaning).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Code {
    /// Code Value.
    pub value: String,
    /// Coding Scheme Designator.
    pub scheme: String,
    /// Code Meaning.
    pub meaning: String,
}

fn dcm(value: &str, meaning: &str) -> Code {
    Code {
        value: value.into(),
        scheme: "DCM".into(),
        meaning: meaning.into(),
    }
}

/// CID 7050 code of the basic profile.
pub const BASIC_PROFILE_CODE: (&str, &str) = ("113100", "Basic Application Confidentiality Profile");
/// CID 7050 code of the Clean Pixel Data Option (applied by a masking rule).
pub const CLEAN_PIXEL_CODE: (&str, &str) = ("113101", "Clean Pixel Data Option");

impl DeidOption {
    /// Every option, in table order.
    pub const ALL: [DeidOption; 10] = [
        DeidOption::RetainSafePrivate,
        DeidOption::RetainUids,
        DeidOption::RetainDeviceIdentity,
        DeidOption::RetainInstitutionIdentity,
        DeidOption::RetainPatientCharacteristics,
        DeidOption::RetainLongFullDates,
        DeidOption::RetainLongModifiedDates,
        DeidOption::CleanDescriptors,
        DeidOption::CleanStructuredContent,
        DeidOption::CleanGraphics,
    ];

    /// The name used on the command line and in JSON.
    #[must_use]
    pub fn name(self) -> &'static str {
        match self {
            DeidOption::RetainSafePrivate => "retain-safe-private",
            DeidOption::RetainUids => "retain-uids",
            DeidOption::RetainDeviceIdentity => "retain-device-identity",
            DeidOption::RetainInstitutionIdentity => "retain-institution-identity",
            DeidOption::RetainPatientCharacteristics => "retain-patient-characteristics",
            DeidOption::RetainLongFullDates => "retain-long-full-dates",
            DeidOption::RetainLongModifiedDates => "retain-long-modified-dates",
            DeidOption::CleanDescriptors => "clean-descriptors",
            DeidOption::CleanStructuredContent => "clean-structured-content",
            DeidOption::CleanGraphics => "clean-graphics",
        }
    }

    /// The option named `s` (see [`DeidOption::name`]).
    #[must_use]
    pub fn from_name(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|o| o.name() == s)
    }

    /// Its CID 7050 code.
    #[must_use]
    pub fn code(self) -> Code {
        let (v, m) = match self {
            DeidOption::RetainSafePrivate => ("113111", "Retain Safe Private Option"),
            DeidOption::RetainUids => ("113110", "Retain UIDs Option"),
            DeidOption::RetainDeviceIdentity => ("113109", "Retain Device Identity Option"),
            DeidOption::RetainInstitutionIdentity => ("113112", "Retain Institution Identity Option"),
            DeidOption::RetainPatientCharacteristics => ("113108", "Retain Patient Characteristics Option"),
            DeidOption::RetainLongFullDates => ("113106", "Retain Longitudinal Temporal Information Full Dates Option"),
            DeidOption::RetainLongModifiedDates => (
                "113107",
                "Retain Longitudinal Temporal Information Modified Dates Option",
            ),
            DeidOption::CleanDescriptors => ("113105", "Clean Descriptors Option"),
            DeidOption::CleanStructuredContent => ("113104", "Clean Structured Content Option"),
            DeidOption::CleanGraphics => ("113103", "Clean Graphics Option"),
        };
        dcm(v, m)
    }
}

impl fmt::Display for DeidOption {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// What to do: the level and the options, and the masking rules that make
/// objects with burned-in identifiers sendable.
#[derive(Debug, Clone)]
pub struct Profile {
    level: DeidLevel,
    options: Vec<DeidOption>,
    masks: Vec<MaskRule>,
    /// The site's names (host names of its PACS and other systems, its
    /// institution's name), removed from free text and links.
    site: text::Needles,
}

impl Profile {
    /// A profile for `level` (pseudonymised or anonymised).
    ///
    /// # Errors
    /// [`DeidError::Profile`] for the identifiable level, for both
    /// longitudinal temporal options at once, and for Retain UIDs at the
    /// anonymised level (original UIDs link back to the source).
    pub fn new(level: DeidLevel, options: &[DeidOption], masks: Vec<MaskRule>) -> Result<Self, DeidError> {
        if level == DeidLevel::Identifiable {
            return Err(ProfileCause::Identifiable.into());
        }
        let set: BTreeSet<DeidOption> = options.iter().copied().collect();
        if set.contains(&DeidOption::RetainLongFullDates) && set.contains(&DeidOption::RetainLongModifiedDates) {
            return Err(ProfileCause::BothDateOptions.into());
        }
        if level == DeidLevel::Anonymised && set.contains(&DeidOption::RetainUids) {
            return Err(ProfileCause::RetainUidsAnonymised.into());
        }
        Ok(Profile {
            level,
            options: set.into_iter().collect(),
            masks,
            site: text::Needles::default(),
        })
    }

    /// This profile, also removing `names` (the site's host names and
    /// institution name) from every free text and link it keeps. Names of
    /// fewer than three characters are ignored.
    #[must_use]
    pub fn with_site_names<S: AsRef<str>>(mut self, names: &[S]) -> Self {
        for n in names {
            self.site.add_value(n.as_ref());
        }
        self.site.finish();
        self
    }

    /// The level.
    #[must_use]
    pub fn level(&self) -> DeidLevel {
        self.level
    }

    /// The options, sorted.
    #[must_use]
    pub fn options(&self) -> &[DeidOption] {
        &self.options
    }

    /// The masking rules.
    #[must_use]
    pub fn masks(&self) -> &[MaskRule] {
        &self.masks
    }

    fn has(&self, o: DeidOption) -> bool {
        self.options.contains(&o)
    }

    /// The CID 7050 codes of what this profile applies (the basic profile
    /// first), plus Clean Pixel Data when `masked`.
    #[must_use]
    pub fn codes(&self, masked: bool) -> Vec<Code> {
        let mut out = vec![dcm(BASIC_PROFILE_CODE.0, BASIC_PROFILE_CODE.1)];
        if masked {
            out.push(dcm(CLEAN_PIXEL_CODE.0, CLEAN_PIXEL_CODE.1));
        }
        out.extend(self.options.iter().map(|o| o.code()));
        out
    }
}

/// The keys of a de-identification run: UIDs, pseudonyms and date shifts
/// are keyed hashes under them. A site's keys (derived from its master key)
/// give the same output for the same input every time, which keeps studies
/// linkable across pseudonymised transfers; fresh random keys (the
/// anonymised level) keep outputs consistent within one run only.
pub struct DeidKeys {
    uid: Zeroizing<[u8; 32]>,
    patient: Zeroizing<[u8; 32]>,
    dates: Zeroizing<[u8; 32]>,
}

impl fmt::Debug for DeidKeys {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("DeidKeys(..)")
    }
}

impl DeidKeys {
    /// Keys derived from a 32-byte site secret.
    #[must_use]
    pub fn from_secret(secret: &[u8; 32]) -> Self {
        DeidKeys {
            uid: Zeroizing::new(blake3::derive_key("medmesh/v1/deid uid key", secret)),
            patient: Zeroizing::new(blake3::derive_key("medmesh/v1/deid pseudonym key", secret)),
            dates: Zeroizing::new(blake3::derive_key("medmesh/v1/deid date shift key", secret)),
        }
    }

    /// Fresh random keys.
    ///
    /// # Errors
    /// [`DeidError::Profile`] when the system has no randomness to give.
    pub fn random() -> Result<Self, DeidError> {
        let mut secret = Zeroizing::new([0u8; 32]);
        getrandom::fill(&mut secret[..]).map_err(|e| DeidError::from(ProfileCause::Random(e)))?;
        Ok(Self::from_secret(&secret))
    }

    /// The new UID for `uid`.
    #[must_use]
    pub fn map_uid(&self, uid: &str) -> String {
        let h = blake3::keyed_hash(&self.uid, trim_value(uid).as_bytes());
        let mut b = [0u8; 16];
        b.copy_from_slice(&h.as_bytes()[..16]);
        // A UUID version 8 (RFC 9562), as PS3.5 B.2 reads 2.25 UIDs.
        b[6] = (b[6] & 0x0F) | 0x80;
        b[8] = (b[8] & 0x3F) | 0x80;
        format!("2.25.{}", u128::from_be_bytes(b))
    }

    /// The pseudonym of a patient (issuer and ID), with `prefix`.
    #[must_use]
    pub fn pseudonym(&self, prefix: &str, issuer: &str, patient_id: &str) -> String {
        let mut h = blake3::Hasher::new_keyed(&self.patient);
        h.update(trim_value(issuer).as_bytes());
        h.update(&[0]);
        h.update(trim_value(patient_id).as_bytes());
        let hex = h.finalize().to_hex();
        format!("{prefix}{}", hex[..20].to_uppercase())
    }

    /// Days to add to every date of a patient: between −3650 and −1.
    #[must_use]
    pub fn date_shift(&self, issuer: &str, patient_id: &str) -> i64 {
        let mut h = blake3::Hasher::new_keyed(&self.dates);
        h.update(trim_value(issuer).as_bytes());
        h.update(&[0]);
        h.update(trim_value(patient_id).as_bytes());
        let mut b = [0u8; 8];
        b.copy_from_slice(&h.finalize().as_bytes()[..8]);
        -1 - i64::try_from(u64::from_le_bytes(b) % 3650).unwrap_or(0)
    }
}

/// The patient an output came from, for the re-link map (pseudonymised level).
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PatientLink {
    /// The pseudonym written into the output.
    pub pseudonym: String,
    /// Patient ID of the input.
    pub patient_id: String,
    /// Issuer of Patient ID of the input.
    pub issuer: String,
    /// Patient's Name of the input.
    pub patient_name: String,
}

impl fmt::Debug for PatientLink {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PatientLink")
            .field("pseudonym", &self.pseudonym)
            .finish_non_exhaustive()
    }
}

/// One de-identified object.
#[derive(Debug)]
pub struct Deidentified {
    /// The output, a DICOM Part 10 file.
    pub bytes: Vec<u8>,
    /// The patient behind the pseudonym.
    pub patient: PatientLink,
    /// Study Instance UID of the input and of the output.
    pub study_uid: (String, String),
    /// SOP Instance UID of the output.
    pub sop_instance_uid: String,
    /// Whether a masking rule blanked part of the pixels.
    pub masked: bool,
    /// The CID 7050 codes written into the object.
    pub codes: Vec<Code>,
}

/// Trims the padding of a DICOM string value.
fn trim_value(s: &str) -> &str {
    s.trim_matches(|c: char| c == '\0' || c == ' ')
}

fn str_at(obj: &InMemDicomObject, tag: Tag) -> String {
    crate::dicom::str_of(obj, tag).unwrap_or_default()
}

/// Whether a UN element of `tag` can be handled: its dictionary VR is known
/// and is not a sequence (whose items, kept as bytes, would escape the walk).
fn un_is_walkable(tag: Tag) -> bool {
    use dicom_core::dictionary::{DataDictionary, DataDictionaryEntry, VirtualVr};
    matches!(
        dicom_dictionary_std::StandardDataDictionary.by_tag(tag).map(DataDictionaryEntry::vr),
        Some(VirtualVr::Exact(vr)) if vr != VR::SQ
    )
}

/// A known attribute encoded as UN (a converter that lost the VRs) gets its
/// dictionary VR back when that VR is text, so its action applies to its
/// value; anything else stays as it is.
fn retype_un(elem: DataElement<InMemDicomObject>) -> DataElement<InMemDicomObject> {
    use dicom_core::dictionary::{DataDictionary, DataDictionaryEntry, VirtualVr};
    if elem.vr() != VR::UN {
        return elem;
    }
    let tag = elem.tag();
    let Some(VirtualVr::Exact(vr)) = dicom_dictionary_std::StandardDataDictionary
        .by_tag(tag)
        .map(DataDictionaryEntry::vr)
    else {
        return elem;
    };
    if !is_text_vr(vr) {
        return elem;
    }
    let Ok(bytes) = elem.to_bytes() else { return elem };
    let text: String = bytes.iter().map(|&b| char::from(b)).collect();
    let values: Vec<String> = text
        .trim_matches(|c: char| c == '\0' || c == ' ')
        .split('\\')
        .map(str::to_string)
        .collect();
    DataElement::new(tag, vr, strs(values))
}

/// The standard's own UIDs (SOP classes, transfer syntaxes, coding schemes…)
/// identify nothing and are kept wherever they occur.
fn is_standard_uid(uid: &str) -> bool {
    trim_value(uid).starts_with("1.2.840.10008.")
}

fn is_text_vr(vr: VR) -> bool {
    matches!(
        vr,
        VR::AE
            | VR::AS
            | VR::CS
            | VR::DA
            | VR::DS
            | VR::DT
            | VR::IS
            | VR::LO
            | VR::LT
            | VR::PN
            | VR::SH
            | VR::ST
            | VR::TM
            | VR::UC
            | VR::UI
            | VR::UR
            | VR::UT
    )
}

/// Longest value of a string VR (PS3.5 Table 6.2-1), where it has one.
fn max_len(vr: VR) -> Option<usize> {
    Some(match vr {
        VR::AE | VR::CS | VR::SH => 16,
        VR::LO => 64,
        VR::PN => 64,
        VR::ST => 1024,
        VR::LT => 10240,
        VR::UI => 64,
        VR::DA => 8,
        VR::TM => 14,
        VR::DT => 26,
        VR::AS => 4,
        VR::DS => 16,
        VR::IS => 12,
        _ => return None,
    })
}

/// A non-empty dummy value of a VR (action D).
fn dummy(vr: VR) -> PrimitiveValue {
    match vr {
        VR::DA => PrimitiveValue::from("19000101"),
        VR::TM => PrimitiveValue::from("000000"),
        VR::DT => PrimitiveValue::from("19000101000000"),
        VR::AS => PrimitiveValue::from("000D"),
        VR::DS | VR::IS => PrimitiveValue::from("0"),
        VR::PN | VR::LO | VR::SH | VR::CS | VR::ST | VR::LT | VR::UT | VR::UC | VR::AE => {
            PrimitiveValue::from("ANONYMIZED")
        }
        VR::UR => PrimitiveValue::from("http://anonymized.invalid"),
        VR::US => PrimitiveValue::from(0u16),
        VR::SS => PrimitiveValue::from(0i16),
        VR::UL => PrimitiveValue::from(0u32),
        VR::SL => PrimitiveValue::from(0i32),
        VR::FL => PrimitiveValue::from(0f32),
        VR::FD => PrimitiveValue::from(0f64),
        VR::AT => PrimitiveValue::Tags([Tag(0, 0)].into_iter().collect()),
        _ => PrimitiveValue::U8([0u8, 0u8].into_iter().collect()),
    }
}

/// The de-identification of one object, as it walks the data set.
struct Walk<'a> {
    profile: &'a Profile,
    keys: &'a DeidKeys,
    tables: &'a table::Tables,
    ciod: Option<&'a str>,
    shift_days: i64,
    /// Identifying strings of this object, for cleaning free text.
    needles: text::Needles,
}

impl Walk<'_> {
    /// The action for `tag` at `path` (the sequences above it, then itself).
    fn action(&self, tag: Tag, path: &[Tag]) -> Option<Action> {
        let row = self.tables.row(tag)?;
        let ty = self.ciod.and_then(|c| self.tables.attr_type(c, path));
        Some(row.action(self.profile.options(), ty))
    }

    fn data_set(&self, obj: InMemDicomObject, path: &mut Vec<Tag>) -> InMemDicomObject {
        // Private blocks: creator element (gggg,00xx) → creator string.
        let mut creators: HashMap<(u16, u8), String> = HashMap::new();
        for e in obj.iter() {
            let t = e.tag();
            if t.group() % 2 == 1 && (0x10..=0xFF).contains(&t.element()) {
                creators.insert(
                    (t.group(), u8::try_from(t.element()).unwrap_or(0)),
                    e.to_str().map(|s| s.to_string()).unwrap_or_default(),
                );
            }
        }
        let mut kept_blocks: BTreeSet<(u16, u8)> = BTreeSet::new();
        let mut out: Vec<DataElement<InMemDicomObject>> = Vec::new();
        for elem in obj {
            let tag = elem.tag();
            if tag.element() == 0 {
                // Group lengths are recomputed by the writer, if at all.
                continue;
            }
            if tag.group() % 2 == 1 {
                if tag.element() <= 0xFF {
                    // Creators and (gggg,0001-000F): decided after the data elements.
                    if tag.element() >= 0x10 {
                        out.push(elem);
                    }
                    continue;
                }
                let block = u8::try_from(tag.element() >> 8).unwrap_or(0);
                let offset = u8::try_from(tag.element() & 0xFF).unwrap_or(0);
                let safe = self.profile.has(DeidOption::RetainSafePrivate)
                    && creators
                        .get(&(tag.group(), block))
                        .is_some_and(|c| self.tables.is_safe_private(c, tag.group(), offset));
                if safe {
                    kept_blocks.insert((tag.group(), block));
                    path.push(tag);
                    let e = self.keep(elem, path);
                    path.pop();
                    out.push(e);
                }
                continue;
            }
            // A UN element that is a sequence, or of an attribute the
            // dictionary does not know, cannot be walked: removed.
            if elem.vr() == VR::UN && !un_is_walkable(tag) {
                continue;
            }
            path.push(tag);
            let action = self.action(tag, path);
            let next = self.element(retype_un(elem), action, path);
            path.pop();
            if let Some(e) = next {
                out.push(e);
            }
        }
        // Creators stay only for the blocks that kept an element.
        out.retain(|e| {
            let t = e.tag();
            !(t.group() % 2 == 1 && t.element() <= 0xFF)
                || kept_blocks.contains(&(t.group(), u8::try_from(t.element()).unwrap_or(0)))
        });
        InMemDicomObject::from_element_iter(out)
    }

    /// Keeps an element, still walking into its items.
    fn keep(&self, elem: DataElement<InMemDicomObject>, path: &mut Vec<Tag>) -> DataElement<InMemDicomObject> {
        let (tag, vr) = (elem.tag(), elem.vr());
        match elem.into_value() {
            Value::Sequence(seq) => DataElement::new(tag, vr, Value::from(self.items(seq, path))),
            v => DataElement::new(tag, vr, v),
        }
    }

    fn items(&self, seq: DataSetSequence<InMemDicomObject>, path: &mut Vec<Tag>) -> DataSetSequence<InMemDicomObject> {
        let items: Vec<InMemDicomObject> = seq.into_items().into_iter().map(|i| self.data_set(i, path)).collect();
        DataSetSequence::new(items, Length::UNDEFINED)
    }

    fn element(
        &self,
        elem: DataElement<InMemDicomObject>,
        action: Option<Action>,
        path: &mut Vec<Tag>,
    ) -> Option<DataElement<InMemDicomObject>> {
        let (tag, vr) = (elem.tag(), elem.vr());
        let listed = action.is_some();
        let action = match action {
            Some(a) => a,
            // Not in the table: kept, but a UID that is not the standard's is
            // an instance UID the table does not list, and is remapped.
            None if vr == VR::UI && !self.profile.has(DeidOption::RetainUids) => Action::Uid,
            None => Action::Keep,
        };
        if let Value::Sequence(seq) = elem.value() {
            let _ = seq;
            return match action {
                Action::Remove => None,
                Action::Zero => Some(DataElement::new(
                    tag,
                    vr,
                    Value::from(DataSetSequence::new(Vec::<InMemDicomObject>::new(), Length::UNDEFINED)),
                )),
                // D, K, C, U on a sequence: its items are walked, each attribute
                // in them getting its own action.
                _ => Some(self.keep(elem, path)),
            };
        }
        match action {
            Action::Remove => None,
            // Kept by the table (an option's K): as it is.
            Action::Keep if listed => Some(elem),
            // Not in the table: kept, its text cleaned of identifying strings.
            Action::Keep => Some(self.clean_unlisted(elem)),
            Action::Zero => Some(DataElement::new(tag, vr, PrimitiveValue::Empty)),
            Action::Dummy => Some(DataElement::new(
                tag,
                vr,
                if vr == VR::UI { self.uids(&elem) } else { dummy(vr) },
            )),
            Action::Uid => Some(DataElement::new(
                tag,
                vr,
                if vr == VR::UI { self.uids(&elem) } else { dummy(vr) },
            )),
            Action::Clean => self.clean(elem),
        }
    }

    /// Every value of a UI element, remapped (the standard's own UIDs kept).
    fn uids(&self, elem: &DataElement<InMemDicomObject>) -> PrimitiveValue {
        let values: Vec<String> = elem
            .to_multi_str()
            .map(|v| v.to_vec())
            .unwrap_or_default()
            .into_iter()
            .map(|u| {
                let u = trim_value(&u).to_string();
                if u.is_empty() || is_standard_uid(&u) {
                    u
                } else {
                    self.keys.map_uid(&u)
                }
            })
            .collect();
        strs(values)
    }

    fn clean(&self, elem: DataElement<InMemDicomObject>) -> Option<DataElement<InMemDicomObject>> {
        let (tag, vr) = (elem.tag(), elem.vr());
        match vr {
            VR::DA | VR::DT if self.profile.has(DeidOption::RetainLongModifiedDates) => {
                let values: Vec<String> = elem
                    .to_multi_str()
                    .map(|v| v.to_vec())
                    .unwrap_or_default()
                    .iter()
                    .map(|v| shift_value(vr, trim_value(v), self.shift_days))
                    .collect();
                Some(DataElement::new(tag, vr, strs(values)))
            }
            // Times move with their dates by whole days: unchanged.
            VR::TM => Some(elem),
            VR::DA | VR::DT => Some(DataElement::new(tag, vr, dummy(vr))),
            VR::UI => Some(DataElement::new(tag, vr, self.uids(&elem))),
            v if is_scrubbed_vr(v) => Some(self.clean_unlisted(elem)),
            // Numbers and ages identify no one.
            v if is_text_vr(v) => Some(elem),
            // Binary content (overlay bits, waveforms) cannot be cleaned: removed.
            _ => None,
        }
    }

    /// An element the table does not list: its text values cleaned (see
    /// [`Walk::scrub_values`]), anything else as it is.
    fn clean_unlisted(&self, elem: DataElement<InMemDicomObject>) -> DataElement<InMemDicomObject> {
        if !is_scrubbed_vr(elem.vr()) {
            return elem;
        }
        match self.scrub_values(&elem) {
            Some(v) => DataElement::new(elem.tag(), elem.vr(), v),
            None => elem,
        }
    }

    /// The values of a text element with every identifying string of the
    /// object and of the site replaced by `*` and every UID-like token by
    /// its mapping (unless Retain UIDs); a code (CS, AE) or link (UR) that
    /// held any becomes a dummy, as what is left of it means nothing.
    /// `None` when nothing was found.
    fn scrub_values(&self, elem: &DataElement<InMemDicomObject>) -> Option<PrimitiveValue> {
        let vr = elem.vr();
        let values: Vec<String> = elem.to_multi_str().map(|v| v.to_vec()).unwrap_or_default();
        let keys = (!self.profile.has(DeidOption::RetainUids)).then_some(self.keys);
        let needles = [&self.needles, &self.profile.site];
        let mut changed = false;
        let out: Vec<String> = values
            .iter()
            .map(|v| match text::scrub(v, &needles, keys) {
                None => v.clone(),
                Some(s) => {
                    changed = true;
                    match vr {
                        VR::UR => "http://anonymized.invalid".to_string(),
                        VR::CS | VR::AE => "ANONYMIZED".to_string(),
                        _ => truncate(s, max_len(vr)),
                    }
                }
            })
            .collect();
        changed.then(|| strs(out))
    }
}

/// `s` cut to at most `max` bytes, at a character boundary.
fn truncate(mut s: String, max: Option<usize>) -> String {
    if let Some(max) = max {
        let mut cut = s.len().min(max);
        while !s.is_char_boundary(cut) {
            cut -= 1;
        }
        s.truncate(cut);
    }
    s
}

/// String VRs whose values can hold identifying text.
fn is_scrubbed_vr(vr: VR) -> bool {
    matches!(
        vr,
        VR::AE | VR::CS | VR::LO | VR::LT | VR::PN | VR::SH | VR::ST | VR::UC | VR::UR | VR::UT
    )
}

fn strs(values: Vec<String>) -> PrimitiveValue {
    match values.len() {
        0 => PrimitiveValue::Empty,
        1 => PrimitiveValue::from(values.into_iter().next().unwrap_or_default()),
        _ => PrimitiveValue::Strs(values.into_iter().collect()),
    }
}

/// A DA or DT value (or a range of them: both ends move by the same days)
/// moved by `days`; a value that is not a full date becomes empty (it cannot
/// be shifted by days).
fn shift_value(vr: VR, v: &str, days: i64) -> String {
    if v.is_empty() {
        return String::new();
    }
    let one = |x: &str| {
        if x.is_empty() {
            String::new()
        } else {
            shift_one(x, days)
        }
    };
    match split_range(vr, v) {
        Some((a, b)) => format!("{}-{}", one(a), one(b)),
        None => shift_one(v, days),
    }
}

/// The two ends of a DA or DT range (PS3.4 C.2.2.2.5), either possibly
/// empty; `None` for a single value. In a DT, a `-` that starts a UTC offset
/// (four digits, hours up to 14 and minutes up to 59, at the end of the
/// value or before the range's own `-`) separates nothing.
fn split_range(vr: VR, v: &str) -> Option<(&str, &str)> {
    match vr {
        VR::DA => v.split_once('-'),
        VR::DT => v
            .match_indices('-')
            .map(|(i, _)| i)
            .find(|&i| !is_utc_offset(&v[i + 1..]))
            .map(|i| (&v[..i], &v[i + 1..])),
        _ => None,
    }
}

/// Whether `rest` (what follows a `-` in a DT) is a UTC offset `HHMM`,
/// alone or followed by a range's `-`.
fn is_utc_offset(rest: &str) -> bool {
    let b = rest.as_bytes();
    if b.len() < 4 || !b[..4].iter().all(u8::is_ascii_digit) || (b.len() > 4 && b[4] != b'-') {
        return false;
    }
    let hh = u32::from(b[0] - b'0') * 10 + u32::from(b[1] - b'0');
    let mm = u32::from(b[2] - b'0') * 10 + u32::from(b[3] - b'0');
    hh <= 14 && mm < 60
}

/// One DA or DT value moved by `days` (what follows the date is kept).
fn shift_one(v: &str, days: i64) -> String {
    let Some(date) = v
        .get(..8)
        .and_then(|d| chrono::NaiveDate::parse_from_str(d, "%Y%m%d").ok())
    else {
        return String::new();
    };
    let Some(moved) = date.checked_add_signed(chrono::Duration::days(days)) else {
        return String::new();
    };
    format!("{}{}", moved.format("%Y%m%d"), v.get(8..).unwrap_or(""))
}

/// Implementation Class UID written into de-identified files' meta.
pub const IMPLEMENTATION_CLASS_UID: &str = "2.25.137038125950654543545473540323428004911";
/// Implementation Version Name written into de-identified files' meta.
pub const IMPLEMENTATION_VERSION: &str = "MEDMESH_0_1";

/// De-identifies one DICOM object (a Part 10 file or a bare data set, as
/// import reads them) under `profile` and `keys`.
///
/// # Errors
/// [`DeidError::Dicom`] for input that does not parse or output that cannot
/// be written, [`DeidError::BurnedIn`] for an object that may show
/// identifiers in its pixels without a masking rule, [`DeidError::Mask`]
/// when the rule cannot be applied (compressed pixel data).
pub fn deidentify(bytes: &[u8], profile: &Profile, keys: &DeidKeys) -> Result<Deidentified, DeidError> {
    let mut out = Vec::with_capacity(bytes.len() + 1024);
    let info = deidentify_into(bytes, profile, keys, &mut out)?;
    Ok(Deidentified {
        bytes: out,
        patient: info.patient,
        study_uid: info.study_uid,
        sop_instance_uid: info.sop_instance_uid,
        masked: info.masked,
        codes: info.codes,
    })
}

/// What [`deidentify_into`] found and did (its output is in the caller's buffer).
#[derive(Debug)]
pub struct DeidInfo {
    /// The patient behind the pseudonym.
    pub patient: PatientLink,
    /// Study Instance UID of the input and of the output.
    pub study_uid: (String, String),
    /// SOP Instance UID of the output.
    pub sop_instance_uid: String,
    /// Whether a masking rule blanked part of the pixels.
    pub masked: bool,
    /// The CID 7050 codes written into the object.
    pub codes: Vec<Code>,
}

/// As [`deidentify`], writing the output into `out` (cleared first), so that
/// a caller de-identifying many objects reuses one buffer.
///
/// # Errors
/// As [`deidentify`].
pub fn deidentify_into(
    bytes: &[u8],
    profile: &Profile,
    keys: &DeidKeys,
    written: &mut Vec<u8>,
) -> Result<DeidInfo, DeidError> {
    written.clear();
    let tables = tables()?;
    let bad = |e: crate::dicom::DicomError| DeidError::Dicom(DicomCause::Parse(Box::new(e)));
    // When Pixel Data is the last element, only what comes before it is
    // parsed and rewritten; the pixel data element is copied as it is.
    let span = crate::dicom::pixel_span(bytes);
    let (mut obj, ts, mut tail) = match &span {
        Some(sp) => {
            let (o, ts) = crate::dicom::parse_before_pixels(bytes, sp).map_err(bad)?;
            (o, ts, Some(&bytes[sp.start..sp.end]))
        }
        None => {
            let (o, ts) = crate::dicom::parse_whole(bytes).map_err(bad)?;
            (o, ts, None)
        }
    };
    let sop_class = str_at(&obj, tags::SOP_CLASS_UID);
    if sop_class.is_empty() {
        return Err(DeidError::Dicom(DicomCause::NoSopClass));
    }
    crate::dicom::check_uid(&sop_class).map_err(|cause| {
        DeidError::Dicom(DicomCause::Uid {
            attribute: "SOP Class UID (0008,0016)",
            cause,
        })
    })?;
    // Pixels first: refuse what may show identifiers, mask what a rule covers.
    let mut masked = false;
    let has_pixels = tail.is_some() || obj.get(tags::PIXEL_DATA).is_some();
    if let Some(reason) = pixels::burned_in_reason(&obj, has_pixels) {
        match pixels::find_rule(&profile.masks, &obj) {
            // A rule without rectangles declares that kind of image clean.
            Some(rule) if rule.rects.is_empty() => {}
            Some(rule) => {
                if tail.is_some() {
                    obj = crate::dicom::parse_whole(bytes).map_err(bad)?.0;
                    tail = None;
                }
                pixels::apply(&mut obj, rule, &ts)?;
                masked = true;
            }
            None => return Err(DeidError::BurnedIn(reason)),
        }
    }
    let patient_id = str_at(&obj, tags::PATIENT_ID);
    let issuer = str_at(&obj, tags::ISSUER_OF_PATIENT_ID);
    // Without a Patient ID, the patient is told apart by name and birth date
    // (else every such patient would share one pseudonym and date shift).
    let (key_issuer, key_id) = if patient_id.is_empty() {
        (
            "\u{1}no patient id".to_string(),
            format!(
                "{}\u{0}{}",
                str_at(&obj, tags::PATIENT_NAME),
                str_at(&obj, tags::PATIENT_BIRTH_DATE)
            ),
        )
    } else {
        (issuer.clone(), patient_id.clone())
    };
    let prefix = if profile.level == DeidLevel::Pseudonymised {
        "PSN-"
    } else {
        "ANON-"
    };
    let link = PatientLink {
        pseudonym: keys.pseudonym(prefix, &key_issuer, &key_id),
        patient_id: patient_id.clone(),
        issuer: issuer.clone(),
        patient_name: str_at(&obj, tags::PATIENT_NAME),
    };
    let old_study = str_at(&obj, tags::STUDY_INSTANCE_UID);
    let walk = Walk {
        profile,
        keys,
        tables,
        ciod: tables.ciod(&sop_class),
        shift_days: keys.date_shift(&key_issuer, &key_id),
        needles: text::identifying_strings(&obj),
    };
    let mut out = walk.data_set(obj, &mut Vec::new());
    // The patient: the pseudonym as name and ID (Z allows a dummy value).
    out.put(DataElement::new(
        tags::PATIENT_NAME,
        VR::PN,
        PrimitiveValue::from(link.pseudonym.as_str()),
    ));
    out.put(DataElement::new(
        tags::PATIENT_ID,
        VR::LO,
        PrimitiveValue::from(link.pseudonym.as_str()),
    ));
    let codes = profile.codes(masked);
    out.put(DataElement::new(
        tags::PATIENT_IDENTITY_REMOVED,
        VR::CS,
        PrimitiveValue::from("YES"),
    ));
    let method: Vec<String> = std::iter::once(format!("medmesh PS3.15 E.1 basic, {}", profile.level.as_str()))
        .chain(codes.iter().skip(1).map(|c| c.meaning.chars().take(64).collect()))
        .collect();
    out.put(DataElement::new(tags::DEIDENTIFICATION_METHOD, VR::LO, strs(method)));
    let items: Vec<InMemDicomObject> = codes
        .iter()
        .map(|c| {
            InMemDicomObject::from_element_iter([
                DataElement::new(tags::CODE_VALUE, VR::SH, PrimitiveValue::from(c.value.as_str())),
                DataElement::new(
                    tags::CODING_SCHEME_DESIGNATOR,
                    VR::SH,
                    PrimitiveValue::from(c.scheme.as_str()),
                ),
                DataElement::new(tags::CODE_MEANING, VR::LO, PrimitiveValue::from(c.meaning.as_str())),
            ])
        })
        .collect();
    out.put(DataElement::new(
        tags::DEIDENTIFICATION_METHOD_CODE_SEQUENCE,
        VR::SQ,
        Value::from(DataSetSequence::new(items, Length::UNDEFINED)),
    ));
    let temporal = if profile.has(DeidOption::RetainLongModifiedDates) {
        "MODIFIED"
    } else if profile.has(DeidOption::RetainLongFullDates) {
        "UNMODIFIED"
    } else {
        "REMOVED"
    };
    out.put(DataElement::new(
        tags::LONGITUDINAL_TEMPORAL_INFORMATION_MODIFIED,
        VR::CS,
        PrimitiveValue::from(temporal),
    ));
    if masked {
        out.put(DataElement::new(
            tags::BURNED_IN_ANNOTATION,
            VR::CS,
            PrimitiveValue::from("NO"),
        ));
    }
    let new_study = str_at(&out, tags::STUDY_INSTANCE_UID);
    let sop_instance = str_at(&out, tags::SOP_INSTANCE_UID);
    crate::dicom::check_uid(&sop_instance).map_err(|cause| {
        DeidError::Dicom(DicomCause::Uid {
            attribute: "SOP Instance UID (0008,0018)",
            cause,
        })
    })?;
    let meta = FileMetaTableBuilder::new()
        .media_storage_sop_class_uid(sop_class.as_str())
        .media_storage_sop_instance_uid(sop_instance.as_str())
        .transfer_syntax(ts.as_str())
        .implementation_class_uid(IMPLEMENTATION_CLASS_UID)
        .implementation_version_name(IMPLEMENTATION_VERSION)
        .build()
        .map_err(|e| DeidError::Dicom(DicomCause::Meta(Box::new(e))))?;
    let file = out.with_exact_meta(meta);
    written.reserve(tail.map_or(0, <[u8]>::len) + 64 * 1024);
    file.write_all(&mut *written)
        .map_err(|e| DeidError::Dicom(DicomCause::Write(Box::new(e))))?;
    if let Some(pixels) = tail {
        written.extend_from_slice(pixels);
    }
    Ok(DeidInfo {
        patient: link,
        study_uid: (old_study, new_study),
        sop_instance_uid: sop_instance,
        masked,
        codes,
    })
}
