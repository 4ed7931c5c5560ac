//! Deterministic synthetic DICOM studies.
//!
//! [`generate`] writes a study as DICOM Part 10 files (PS3.10 §7.1: 128-byte preamble, `DICM`,
//! file meta group, then the data set in Explicit VR Little Endian); [`SyntheticStudy`] builds the
//! same objects in memory, one slice at a time, for tests and benchmarks.
//!
//! Everything is a pure function of the [`StudySpec`]: the same seed and spec give byte-identical
//! files. UIDs, names, dates and pixel noise are derived from the seed with BLAKE3 in derive-key
//! mode under the context [`DERIVE_CONTEXT`]; pixel noise comes from a SplitMix64 stream seeded
//! that way, so no random-number crate is involved.
//!
//! The objects look like what a scanner sends to a PACS, and carry fake protected health
//! information where real ones carry real PHI: Patient module attributes, physicians and operators,
//! institution and device, identifiers nested inside sequences (Request Attributes Sequence, Other
//! Patient IDs Sequence), and a private block (creator [`PRIVATE_CREATOR`]) that repeats the patient
//! name, as real scanners do. [`Phi`] lists every such value so that de-identification tests can
//! search the output for leaks. Text is encoded as ISO-IR 100 (Latin-1), and the name lists contain
//! Latin-1 letters (`Müller`, `José`), so byte-level searches must use [`latin1`].
//!
//! Pixel data is a cheap CT-like phantom (body ellipse, lungs, spine, aorta, a lesion that appears
//! in the middle slices) plus low-amplitude noise, written straight into a little-endian buffer.
//!
//! ```no_run
//! use medmesh_testnet::{StudySpec, generate};
//!
//! let spec = StudySpec { seed: 7, slices: 3, rows: 64, cols: 64, ..StudySpec::default() };
//! let study = generate(&spec, std::path::Path::new("/tmp/study"))?;
//! assert_eq!(study.files.len(), 3);
//! # Ok::<(), medmesh_testnet::GenError>(())
//! ```

use std::f64::consts::PI;
use std::fmt;
use std::io;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use dicom_core::value::{DataSetSequence, PrimitiveValue};
use dicom_core::{DataElement, Tag, VR};
use dicom_dictionary_std::{tags, uids};
use dicom_object::mem::InMemElement;
use dicom_object::meta::FileMetaTableBuilder;
use dicom_object::{FileDicomObject, InMemDicomObject};
use serde::Serialize;

/// BLAKE3 `derive_key` context for every value derived from a seed.
pub const DERIVE_CONTEXT: &str = "medmesh/v1/testnet-gen";

/// Implementation Class UID (0002,0012) written in the file meta group of generated files.
///
/// `2.25.` followed by the decimal form of the first 16 bytes (little endian) of
/// `blake3::derive_key("medmesh/v1/implementation-class-uid", b"medmesh-testnet")`
/// (PS3.5 §B.2: UUID-derived UIDs under the `2.25` root); a unit test recomputes it.
pub const IMPLEMENTATION_CLASS_UID: &str = "2.25.224485306544218505296420173391379865983";

/// Implementation Version Name (0002,0013): SH, at most 16 characters.
pub const IMPLEMENTATION_VERSION_NAME: &str = "MEDMESH_TN_0.1";

/// Private creator of the private block in group 0x0009 (element (0009,0010)).
pub const PRIVATE_CREATOR: &str = "MEDMESH SYNTH 1";

/// Largest Rows or Columns value accepted (keeps one slice under 128 MiB).
pub const MAX_DIMENSION: u16 = 8192;

/// Largest number of slices accepted in one study.
pub const MAX_SLICES: u32 = 100_000;

/// The study to generate. `StudySpec::default()` is a 10-slice 512x512 CT in one series.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StudySpec {
    /// Seed: every UID, name, date and noise sample derives from it.
    pub seed: u64,
    /// Number of slices (one file each), spread over `series`.
    pub slices: u32,
    /// Rows of each slice.
    pub rows: u16,
    /// Columns of each slice.
    pub cols: u16,
    /// Modality, which selects the SOP class and the modality-specific attributes.
    pub modality: Modality,
    /// Number of series; the first `slices % series` series get one slice more.
    pub series: u32,
    /// Write the private block (group 0x0009) that repeats the patient name.
    pub with_private: bool,
    /// Burned In Annotation (0028,0301): `YES`/`NO`, or absent when `None`.
    pub burned_in_annotation: Option<bool>,
    /// Pixel Representation (0028,0103); `Signed` needs a 16-bit modality (CT or MR).
    pub pixel_representation: PixelRepresentation,
    /// Fixed patient values instead of seed-derived ones.
    pub patient: Option<PatientOverrides>,
}

impl Default for StudySpec {
    fn default() -> Self {
        Self {
            seed: 0,
            slices: 10,
            rows: 512,
            cols: 512,
            modality: Modality::Ct,
            series: 1,
            with_private: true,
            burned_in_annotation: None,
            pixel_representation: PixelRepresentation::Unsigned,
            patient: None,
        }
    }
}

/// Imaging modality of a generated study.
///
/// CT and MR slices are 16 bits allocated, 12 stored, high bit 11; US and SC are 8/8/7. All are
/// MONOCHROME2.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize)]
#[serde(rename_all = "UPPERCASE")]
#[non_exhaustive]
pub enum Modality {
    /// CT Image Storage, with Rescale Intercept -1024 and Slope 1 (values in HU).
    #[default]
    Ct,
    /// MR Image Storage.
    Mr,
    /// Ultrasound Image Storage.
    Us,
    /// Secondary Capture Image Storage (Modality `OT`).
    Sc,
}

impl Modality {
    /// The value of Modality (0008,0060).
    pub fn code(self) -> &'static str {
        match self {
            Self::Ct => "CT",
            Self::Mr => "MR",
            Self::Us => "US",
            Self::Sc => "OT",
        }
    }

    /// The SOP Class UID of its storage objects.
    pub fn sop_class_uid(self) -> &'static str {
        match self {
            Self::Ct => uids::CT_IMAGE_STORAGE,
            Self::Mr => uids::MR_IMAGE_STORAGE,
            Self::Us => uids::ULTRASOUND_IMAGE_STORAGE,
            Self::Sc => uids::SECONDARY_CAPTURE_IMAGE_STORAGE,
        }
    }

    /// Bits Allocated for this modality (16 or 8).
    pub fn bits_allocated(self) -> u16 {
        match self {
            Self::Ct | Self::Mr => 16,
            Self::Us | Self::Sc => 8,
        }
    }

    /// Whether slices sit in a patient frame of reference (Image Plane module).
    fn has_image_plane(self) -> bool {
        matches!(self, Self::Ct | Self::Mr)
    }
}

impl fmt::Display for Modality {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Ct => "CT",
            Self::Mr => "MR",
            Self::Us => "US",
            Self::Sc => "SC",
        })
    }
}

impl FromStr for Modality {
    type Err = GenError;

    /// Parses `CT`, `MR`, `US`, `SC` (or `OT`), in any case.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.to_ascii_uppercase().as_str() {
            "CT" => Ok(Self::Ct),
            "MR" => Ok(Self::Mr),
            "US" => Ok(Self::Us),
            "SC" | "OT" => Ok(Self::Sc),
            _ => Err(GenError::InvalidSpec {
                field: "modality",
                reason: format!("unknown modality {s:?}; expected CT, MR, US or SC"),
            }),
        }
    }
}

/// Pixel Representation (0028,0103). Stored values are the same either way (0..2047 fits both).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize)]
pub enum PixelRepresentation {
    /// 0: unsigned integers.
    #[default]
    Unsigned,
    /// 1: two's complement.
    Signed,
}

/// Patient's Sex (0010,0040).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
pub enum Sex {
    /// `F`
    Female,
    /// `M`
    Male,
    /// `O`
    Other,
}

impl Sex {
    /// The DICOM code string.
    pub fn code(self) -> &'static str {
        match self {
            Self::Female => "F",
            Self::Male => "M",
            Self::Other => "O",
        }
    }
}

/// Patient values that replace the seed-derived ones. Each must be encodable in Latin-1.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PatientOverrides {
    /// Patient's Name, PN form (`Family^Given`).
    pub name: Option<String>,
    /// Patient ID.
    pub id: Option<String>,
    /// Patient's Birth Date, `YYYYMMDD`.
    pub birth_date: Option<String>,
    /// Patient's Sex.
    pub sex: Option<Sex>,
}

/// The fake identifying values written into a study, for leak searches after de-identification.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Phi {
    /// Patient's Name (0010,0010); also in the private block when `with_private`.
    pub patient_name: String,
    /// Patient ID (0010,0020); also in the private block when `with_private`.
    pub patient_id: String,
    /// Issuer of Patient ID (0010,0021).
    pub issuer_of_patient_id: String,
    /// Patient ID inside Other Patient IDs Sequence (0010,1002).
    pub other_patient_id: String,
    /// Other Patient Names (0010,1001): the name spelled in ASCII.
    pub other_patient_names: String,
    /// Patient's Birth Date (0010,0030).
    pub birth_date: String,
    /// Patient's Sex (0010,0040).
    pub sex: String,
    /// Patient's Age (0010,1010), e.g. `047Y`.
    pub age: String,
    /// Patient's Weight (0010,1030) in kg.
    pub weight: String,
    /// Patient's Address (0010,1040).
    pub patient_address: String,
    /// Patient's Telephone Numbers (0010,2154).
    pub patient_telephone: String,
    /// Accession Number (0008,0050), also inside Request Attributes Sequence.
    pub accession_number: String,
    /// Requested Procedure ID (0040,1001) inside Request Attributes Sequence.
    pub requested_procedure_id: String,
    /// Scheduled Procedure Step ID (0040,0009) inside Request Attributes Sequence.
    pub scheduled_procedure_step_id: String,
    /// Study ID (0020,0010).
    pub study_id: String,
    /// Study Date (0008,0020).
    pub study_date: String,
    /// Institution Name (0008,0080).
    pub institution_name: String,
    /// Institution Address (0008,0081).
    pub institution_address: String,
    /// Referring Physician's Name (0008,0090).
    pub referring_physician: String,
    /// Performing Physician's Name (0008,1050).
    pub performing_physician: String,
    /// Operators' Name (0008,1070).
    pub operators_name: String,
    /// Requesting Physician (0032,1032) inside Request Attributes Sequence.
    pub requesting_physician: String,
    /// Station Name (0008,1010).
    pub station_name: String,
    /// Device Serial Number (0018,1000).
    pub device_serial_number: String,
}

impl Phi {
    /// The values that identify a patient, a person or a place, by attribute keyword.
    ///
    /// These are long and distinctive enough to search for in encoded files; Sex, Age and Weight
    /// are left out because their short values occur by chance.
    pub fn identifiers(&self) -> Vec<(&'static str, &str)> {
        vec![
            ("PatientName", &self.patient_name),
            ("PatientID", &self.patient_id),
            ("IssuerOfPatientID", &self.issuer_of_patient_id),
            ("OtherPatientIDsSequence/PatientID", &self.other_patient_id),
            ("OtherPatientNames", &self.other_patient_names),
            ("PatientBirthDate", &self.birth_date),
            ("PatientAddress", &self.patient_address),
            ("PatientTelephoneNumbers", &self.patient_telephone),
            ("AccessionNumber", &self.accession_number),
            ("RequestedProcedureID", &self.requested_procedure_id),
            ("ScheduledProcedureStepID", &self.scheduled_procedure_step_id),
            ("StudyID", &self.study_id),
            ("StudyDate", &self.study_date),
            ("InstitutionName", &self.institution_name),
            ("InstitutionAddress", &self.institution_address),
            ("ReferringPhysicianName", &self.referring_physician),
            ("PerformingPhysicianName", &self.performing_physician),
            ("OperatorsName", &self.operators_name),
            ("RequestingPhysician", &self.requesting_physician),
            ("StationName", &self.station_name),
            ("DeviceSerialNumber", &self.device_serial_number),
        ]
    }
}

/// Encodes `s` as ISO-IR 100 (Latin-1) bytes, as it appears in generated files; `None` if a
/// character is outside Latin-1.
pub fn latin1(s: &str) -> Option<Vec<u8>> {
    s.chars().map(|c| u8::try_from(u32::from(c)).ok()).collect()
}

/// What [`generate`] wrote.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct GeneratedStudy {
    /// Every file, in series then instance order.
    pub files: Vec<PathBuf>,
    /// Study Instance UID.
    pub study_uid: String,
    /// Series Instance UIDs, in series order.
    pub series_uids: Vec<String>,
    /// SOP Instance UIDs, in the order of `files`.
    pub sop_instance_uids: Vec<String>,
    /// Frame of Reference UID (CT and MR; empty for US and SC).
    pub frame_of_reference_uid: String,
    /// The fake identifying values written.
    pub phi: Phi,
    /// Sum of the file sizes in bytes.
    pub total_bytes: u64,
}

/// One generated file held in memory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GeneratedFile {
    /// Path relative to the study directory, e.g. `series-001/slice-0001.dcm`.
    pub rel_path: PathBuf,
    /// The complete Part 10 file.
    pub bytes: Vec<u8>,
}

/// Position of one slice: series index and index within the series, both 0-based.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct SliceRef {
    /// 0-based series index.
    pub series: u32,
    /// 0-based instance index within the series.
    pub index: u32,
}

/// Errors of the generator, each naming the stage and the file concerned.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum GenError {
    /// The spec asks for something the generator cannot produce.
    #[error("invalid study spec: {field}: {reason}")]
    InvalidSpec {
        /// The offending `StudySpec` field.
        field: &'static str,
        /// Why it was refused.
        reason: String,
    },
    /// A slice reference outside the study was asked for.
    #[error("no slice {index} in series {series} of this study")]
    NoSuchSlice {
        /// 0-based series index.
        series: u32,
        /// 0-based instance index.
        index: u32,
    },
    /// Building the file meta group failed.
    #[error("building the file meta group of {file}")]
    BuildMeta {
        /// File (relative path) being built.
        file: PathBuf,
        /// Cause.
        #[source]
        source: Box<dicom_object::WithMetaError>,
    },
    /// Encoding the object as a Part 10 file failed.
    #[error("encoding {file}")]
    Encode {
        /// File (relative path) being encoded.
        file: PathBuf,
        /// Cause.
        #[source]
        source: Box<dicom_object::WriteError>,
    },
    /// Creating an output directory failed.
    #[error("creating directory {dir}")]
    CreateDir {
        /// The directory.
        dir: PathBuf,
        /// Cause.
        #[source]
        source: io::Error,
    },
    /// Reading a DICOM file failed.
    #[error("reading {file}")]
    ReadFile {
        /// The file.
        file: PathBuf,
        /// Cause.
        #[source]
        source: Box<dicom_object::ReadError>,
    },
    /// Writing an output file failed.
    #[error("writing {file}")]
    WriteFile {
        /// The file.
        file: PathBuf,
        /// Cause.
        #[source]
        source: io::Error,
    },
}

/// Writes a copy of the generated object `src` to `dest` as an object of another kind filed
/// in the same series (same Study and Series Instance UIDs): its Modality, its SOP Class and a
/// new SOP Instance UID, in the data set and in the file meta group. Tests of the per-object
/// consent scope use it for an OT or SR object carrying a CT series' UID.
///
/// # Errors
/// [`GenError::ReadFile`] when `src` cannot be read, [`GenError::Encode`] when `dest` cannot
/// be written.
pub fn restyle(
    src: &Path,
    dest: &Path,
    modality: &str,
    sop_class: &str,
    sop_instance_uid: &str,
) -> Result<(), GenError> {
    let mut obj = dicom_object::open_file(src).map_err(|source| GenError::ReadFile {
        file: src.to_path_buf(),
        source: Box::new(source),
    })?;
    obj.put(DataElement::new(tags::MODALITY, VR::CS, PrimitiveValue::from(modality)));
    obj.put(DataElement::new(
        tags::SOP_CLASS_UID,
        VR::UI,
        PrimitiveValue::from(sop_class),
    ));
    obj.put(DataElement::new(
        tags::SOP_INSTANCE_UID,
        VR::UI,
        PrimitiveValue::from(sop_instance_uid),
    ));
    obj.update_meta(|m| {
        m.media_storage_sop_class_uid = sop_class.to_string();
        m.media_storage_sop_instance_uid = sop_instance_uid.to_string();
    });
    obj.write_to_file(dest).map_err(|source| GenError::Encode {
        file: dest.to_path_buf(),
        source: Box::new(source),
    })
}

/// Generates the study described by `spec` into `out_dir`, creating it if needed.
///
/// Files are `series-NNN/slice-NNNN.dcm` (1-based numbers); files of the same name are
/// overwritten, other files are left alone. Memory use is one slice at a time.
///
/// # Errors
///
/// [`GenError::InvalidSpec`] when the spec is out of range (see [`SyntheticStudy::new`]);
/// [`GenError::CreateDir`] or [`GenError::WriteFile`] when the output cannot be written;
/// [`GenError::BuildMeta`] or [`GenError::Encode`] if dicom-object refuses an object (a bug).
pub fn generate(spec: &StudySpec, out_dir: &Path) -> Result<GeneratedStudy, GenError> {
    let study = SyntheticStudy::new(spec)?;
    let mut files = Vec::with_capacity(usize::try_from(spec.slices).unwrap_or(0));
    let mut sop_instance_uids = Vec::with_capacity(files.capacity());
    let mut total_bytes = 0_u64;
    let mut buf = Vec::new();
    for series in 0..spec.series {
        let dir = out_dir.join(series_dir_name(series));
        std::fs::create_dir_all(&dir).map_err(|source| GenError::CreateDir {
            dir: dir.clone(),
            source,
        })?;
        for index in 0..study.series_len(series) {
            let slice = SliceRef { series, index };
            buf.clear();
            study.encode_into(slice, &mut buf)?;
            let file = out_dir.join(study.rel_path(slice));
            std::fs::write(&file, &buf).map_err(|source| GenError::WriteFile {
                file: file.clone(),
                source,
            })?;
            total_bytes += u64::try_from(buf.len()).unwrap_or(u64::MAX);
            files.push(file);
            sop_instance_uids.push(study.sop_instance_uid(slice));
        }
    }
    Ok(GeneratedStudy {
        files,
        study_uid: study.study_uid().to_owned(),
        series_uids: (0..spec.series).map(|s| study.series_uid(s)).collect(),
        sop_instance_uids,
        frame_of_reference_uid: study.frame_of_reference_uid().to_owned(),
        phi: study.phi().clone(),
        total_bytes,
    })
}

/// Generates the whole study in memory: one [`GeneratedFile`] per slice, in file order.
///
/// Meant for small specs in tests; use [`SyntheticStudy`] to stream large ones.
///
/// # Errors
///
/// As [`generate`], without the I/O errors.
pub fn generate_to_vec(spec: &StudySpec) -> Result<Vec<GeneratedFile>, GenError> {
    let study = SyntheticStudy::new(spec)?;
    study
        .slices()
        .map(|slice| {
            Ok(GeneratedFile {
                rel_path: study.rel_path(slice),
                bytes: study.encode(slice)?,
            })
        })
        .collect()
}

/// A planned study: the study-level values are fixed, slices are built on demand.
#[derive(Debug, Clone)]
pub struct SyntheticStudy {
    spec: StudySpec,
    derive: Derive,
    phi: Phi,
    study_uid: String,
    frame_of_reference_uid: String,
    study_time: String,
    body_part: BodyPart,
    device: &'static Device,
    /// Spacing between pixel centres in mm (row and column spacing are equal).
    pixel_spacing: f64,
    slice_thickness: f64,
}

impl SyntheticStudy {
    /// Validates `spec` and fixes the study-level values.
    ///
    /// # Errors
    ///
    /// [`GenError::InvalidSpec`] when `slices` is 0 or above [`MAX_SLICES`], `series` is 0 or above
    /// `slices`, `rows` or `cols` is 0 or above [`MAX_DIMENSION`], `pixel_representation` is
    /// `Signed` for an 8-bit modality, or a patient override is not Latin-1 or not in its VR's form.
    pub fn new(spec: &StudySpec) -> Result<Self, GenError> {
        validate(spec)?;
        let derive = Derive { seed: spec.seed };
        let mut rng = derive.rng("study", 0, 0);

        let body_part = *pick(&mut rng, BODY_PARTS);
        let device = pick(&mut rng, DEVICES);
        let (family, given) = (*pick(&mut rng, FAMILY_NAMES), *pick(&mut rng, GIVEN_NAMES));
        let sex = if rng.below(2) == 0 { Sex::Female } else { Sex::Male };
        let study_date = Date::from_day_index(rng.below(6 * 365) + Date::days_before_year(2020));
        let birth_date = Date::from_day_index(
            Date::days_before_year(1935) + rng.below(60 * 365), // adults, born 1935..1995
        );
        let study_time = format!("{:02}{:02}{:02}", 7 + rng.below(12), rng.below(60), rng.below(60));
        let institution = pick(&mut rng, INSTITUTIONS);
        let referring = person_name(&mut rng, "Dr.");
        let performing = person_name(&mut rng, "Dr.");
        let operator = person_name(&mut rng, "");
        let requesting = person_name(&mut rng, "Dr.");

        let overrides = spec.patient.clone().unwrap_or_default();
        let patient_name = overrides.name.unwrap_or_else(|| format!("{family}^{given}"));
        let sex = overrides.sex.unwrap_or(sex);
        let birth_date = match overrides.birth_date {
            Some(d) => Date::parse(&d).ok_or_else(|| GenError::InvalidSpec {
                field: "patient.birth_date",
                reason: format!("{d:?} is not a YYYYMMDD date"),
            })?,
            None => birth_date,
        };
        let age_years = study_date.years_since(birth_date);
        let patient_id = overrides
            .id
            .unwrap_or_else(|| format!("MM{:07}", rng.below(10_000_000)));
        let phi = Phi {
            other_patient_names: ascii_fold(&patient_name),
            patient_name,
            patient_id,
            issuer_of_patient_id: institution.issuer.to_owned(),
            other_patient_id: format!("{}-{:06}", institution.issuer, rng.below(1_000_000)),
            birth_date: birth_date.da(),
            sex: sex.code().to_owned(),
            age: format!("{:03}Y", age_years.min(999)),
            weight: format!("{}", 45 + rng.below(60)),
            patient_address: format!(
                "{} {}, {}",
                pick(&mut rng, STREETS),
                1 + rng.below(120),
                institution.city
            ),
            patient_telephone: format!(
                "+{} {:03} {:07}",
                institution.dial,
                rng.below(1000),
                rng.below(10_000_000)
            ),
            accession_number: format!("A{}{:06}", study_date.year, rng.below(1_000_000)),
            requested_procedure_id: format!("RP{:08}", rng.below(100_000_000)),
            scheduled_procedure_step_id: format!("SPS{:07}", rng.below(10_000_000)),
            study_id: format!("{}", 1000 + rng.below(9000)),
            study_date: study_date.da(),
            institution_name: institution.name.to_owned(),
            institution_address: institution.address.to_owned(),
            referring_physician: referring,
            performing_physician: performing,
            operators_name: operator,
            requesting_physician: requesting,
            station_name: format!("{}{:02}", device.station_prefix, 1 + rng.below(20)),
            device_serial_number: format!("{}{:06}", device.serial_prefix, rng.below(1_000_000)),
        };
        for (field, value) in phi.identifiers() {
            if latin1(value).is_none() {
                return Err(GenError::InvalidSpec {
                    field: "patient",
                    reason: format!("{field} {value:?} is not encodable in ISO-IR 100 (Latin-1)"),
                });
            }
        }

        let fov = match (spec.modality, body_part) {
            (Modality::Ct | Modality::Mr, BodyPart::Head) => 240.0,
            (Modality::Ct | Modality::Mr, _) => *pick(&mut rng, &[360.0, 380.0, 400.0, 420.0, 450.0]),
            (Modality::Us, _) => 160.0,
            (Modality::Sc, _) => 400.0,
        };
        let pixel_spacing = fov / f64::from(spec.rows.max(spec.cols));
        let slice_thickness = if spec.slices > 400 { 0.625 } else { 2.5 };

        Ok(Self {
            study_uid: derive.uid("study", 0, 0),
            frame_of_reference_uid: if spec.modality.has_image_plane() {
                derive.uid("frame-of-reference", 0, 0)
            } else {
                String::new()
            },
            spec: spec.clone(),
            derive,
            phi,
            study_time,
            body_part,
            device,
            pixel_spacing,
            slice_thickness,
        })
    }

    /// The spec this study was planned from.
    pub fn spec(&self) -> &StudySpec {
        &self.spec
    }

    /// The fake identifying values of this study.
    pub fn phi(&self) -> &Phi {
        &self.phi
    }

    /// Study Instance UID.
    pub fn study_uid(&self) -> &str {
        &self.study_uid
    }

    /// Frame of Reference UID; empty for US and SC.
    pub fn frame_of_reference_uid(&self) -> &str {
        &self.frame_of_reference_uid
    }

    /// Series Instance UID of the 0-based `series`.
    pub fn series_uid(&self, series: u32) -> String {
        self.derive.uid("series", u64::from(series), 0)
    }

    /// SOP Instance UID of `slice`.
    pub fn sop_instance_uid(&self, slice: SliceRef) -> String {
        self.derive
            .uid("sop-instance", u64::from(slice.series), u64::from(slice.index))
    }

    /// Number of slices in the 0-based `series` (0 if there is no such series).
    pub fn series_len(&self, series: u32) -> u32 {
        if series >= self.spec.series {
            return 0;
        }
        let base = self.spec.slices / self.spec.series;
        base + u32::from(series < self.spec.slices % self.spec.series)
    }

    /// Every slice, in file order (series, then instance).
    pub fn slices(&self) -> impl Iterator<Item = SliceRef> + '_ {
        (0..self.spec.series)
            .flat_map(move |series| (0..self.series_len(series)).map(move |index| SliceRef { series, index }))
    }

    /// Path of `slice` relative to the study directory: `series-001/slice-0001.dcm`.
    pub fn rel_path(&self, slice: SliceRef) -> PathBuf {
        Path::new(&series_dir_name(slice.series)).join(format!("slice-{:04}.dcm", u64::from(slice.index) + 1))
    }

    /// Builds the Part 10 object of `slice`.
    ///
    /// # Errors
    ///
    /// [`GenError::NoSuchSlice`] when `slice` is outside the study; [`GenError::BuildMeta`] if
    /// dicom-object refuses the file meta group.
    pub fn object(&self, slice: SliceRef) -> Result<FileDicomObject<InMemDicomObject>, GenError> {
        if slice.index >= self.series_len(slice.series) {
            return Err(GenError::NoSuchSlice {
                series: slice.series,
                index: slice.index,
            });
        }
        let obj = InMemDicomObject::from_element_iter(self.elements(slice));
        obj.with_meta(
            FileMetaTableBuilder::new()
                .transfer_syntax(uids::EXPLICIT_VR_LITTLE_ENDIAN)
                .implementation_class_uid(IMPLEMENTATION_CLASS_UID)
                .implementation_version_name(IMPLEMENTATION_VERSION_NAME),
        )
        .map_err(|source| GenError::BuildMeta {
            file: self.rel_path(slice),
            source: Box::new(source),
        })
    }

    /// Encodes `slice` as a complete Part 10 file.
    ///
    /// # Errors
    ///
    /// As [`SyntheticStudy::object`], plus [`GenError::Encode`].
    pub fn encode(&self, slice: SliceRef) -> Result<Vec<u8>, GenError> {
        let mut out = Vec::new();
        self.encode_into(slice, &mut out)?;
        Ok(out)
    }

    /// Appends the Part 10 encoding of `slice` to `out`.
    ///
    /// # Errors
    ///
    /// As [`SyntheticStudy::encode`].
    pub fn encode_into(&self, slice: SliceRef, out: &mut Vec<u8>) -> Result<(), GenError> {
        let obj = self.object(slice)?;
        out.reserve(self.pixel_bytes_len() + 8 * 1024);
        obj.write_all(&mut *out).map_err(|source| GenError::Encode {
            file: self.rel_path(slice),
            source: Box::new(source),
        })
    }

    /// The pixel data of `slice`: Rows x Columns samples, little endian.
    pub fn pixel_data(&self, slice: SliceRef) -> Vec<u8> {
        let total = f64::from(self.spec.slices.max(2) - 1);
        let t = f64::from(self.global_index(slice)) / total;
        let mut rng = self
            .derive
            .rng("pixels", u64::from(slice.series), u64::from(slice.index));
        render_phantom(
            self.spec.modality,
            self.body_part,
            self.spec.rows,
            self.spec.cols,
            t,
            &mut rng,
        )
    }

    fn pixel_bytes_len(&self) -> usize {
        usize::from(self.spec.rows) * usize::from(self.spec.cols) * usize::from(self.spec.modality.bits_allocated() / 8)
    }

    /// 0-based position of `slice` in the whole study.
    fn global_index(&self, slice: SliceRef) -> u32 {
        (0..slice.series).map(|s| self.series_len(s)).sum::<u32>() + slice.index
    }

    /// All data elements of one slice (file meta excluded).
    fn elements(&self, slice: SliceRef) -> Vec<InMemElement> {
        let spec = &self.spec;
        let phi = &self.phi;
        let modality = spec.modality;
        let series_no = slice.series + 1;
        let instance_no = slice.index + 1;
        let series_desc = self.series_description(slice.series);
        let content_time = add_seconds(&self.study_time, 60 * u64::from(slice.series) + u64::from(slice.index));
        let series_time = add_seconds(&self.study_time, 60 * u64::from(slice.series));
        let bits = modality.bits_allocated();
        let protocol = format!("{} {}", self.body_part.protocol(), modality.code());

        let mut e = vec![
            text(tags::SPECIFIC_CHARACTER_SET, VR::CS, "ISO_IR 100"),
            strs(tags::IMAGE_TYPE, VR::CS, &["ORIGINAL", "PRIMARY", self.image_type3()]),
            text(tags::INSTANCE_CREATION_DATE, VR::DA, &phi.study_date),
            text(tags::INSTANCE_CREATION_TIME, VR::TM, &content_time),
            text(tags::SOP_CLASS_UID, VR::UI, modality.sop_class_uid()),
            text(tags::SOP_INSTANCE_UID, VR::UI, &self.sop_instance_uid(slice)),
            text(tags::STUDY_DATE, VR::DA, &phi.study_date),
            text(tags::SERIES_DATE, VR::DA, &phi.study_date),
            text(tags::ACQUISITION_DATE, VR::DA, &phi.study_date),
            text(tags::CONTENT_DATE, VR::DA, &phi.study_date),
            text(tags::STUDY_TIME, VR::TM, &self.study_time),
            text(tags::SERIES_TIME, VR::TM, &series_time),
            text(tags::ACQUISITION_TIME, VR::TM, &content_time),
            text(tags::CONTENT_TIME, VR::TM, &content_time),
            text(tags::ACCESSION_NUMBER, VR::SH, &phi.accession_number),
            text(tags::MODALITY, VR::CS, modality.code()),
            text(tags::MANUFACTURER, VR::LO, self.device.manufacturer),
            text(tags::INSTITUTION_NAME, VR::LO, &phi.institution_name),
            text(tags::INSTITUTION_ADDRESS, VR::ST, &phi.institution_address),
            text(tags::REFERRING_PHYSICIAN_NAME, VR::PN, &phi.referring_physician),
            text(tags::STATION_NAME, VR::SH, &phi.station_name),
            text(
                tags::STUDY_DESCRIPTION,
                VR::LO,
                self.body_part.study_description(modality),
            ),
            text(tags::SERIES_DESCRIPTION, VR::LO, &series_desc),
            text(tags::PERFORMING_PHYSICIAN_NAME, VR::PN, &phi.performing_physician),
            text(tags::OPERATORS_NAME, VR::PN, &phi.operators_name),
            text(tags::MANUFACTURER_MODEL_NAME, VR::LO, self.device.model(modality)),
            sequence(
                tags::REFERENCED_STUDY_SEQUENCE,
                vec![item(vec![
                    // Study Component Management SOP Class (retired, but what scanners send).
                    text(tags::REFERENCED_SOP_CLASS_UID, VR::UI, "1.2.840.10008.3.1.2.3.2"),
                    text(
                        tags::REFERENCED_SOP_INSTANCE_UID,
                        VR::UI,
                        &self.derive.uid("referenced-study", 0, 0),
                    ),
                ])],
            ),
            sequence(
                tags::PROCEDURE_CODE_SEQUENCE,
                vec![code_item(
                    self.body_part.procedure_code(modality),
                    "99MEDMESH",
                    self.body_part.study_description(modality),
                )],
            ),
            text(tags::PATIENT_NAME, VR::PN, &phi.patient_name),
            text(tags::PATIENT_ID, VR::LO, &phi.patient_id),
            text(tags::ISSUER_OF_PATIENT_ID, VR::LO, &phi.issuer_of_patient_id),
            text(tags::PATIENT_BIRTH_DATE, VR::DA, &phi.birth_date),
            text(tags::PATIENT_SEX, VR::CS, &phi.sex),
            text(tags::OTHER_PATIENT_NAMES, VR::PN, &phi.other_patient_names),
            sequence(
                tags::OTHER_PATIENT_I_DS_SEQUENCE,
                vec![item(vec![
                    text(tags::PATIENT_ID, VR::LO, &phi.other_patient_id),
                    text(tags::ISSUER_OF_PATIENT_ID, VR::LO, &phi.issuer_of_patient_id),
                    text(tags::TYPE_OF_PATIENT_ID, VR::CS, "TEXT"),
                ])],
            ),
            text(tags::PATIENT_AGE, VR::AS, &phi.age),
            text(tags::PATIENT_WEIGHT, VR::DS, &phi.weight),
            text(tags::PATIENT_ADDRESS, VR::LO, &phi.patient_address),
            text(tags::PATIENT_TELEPHONE_NUMBERS, VR::SH, &phi.patient_telephone),
            text(tags::BODY_PART_EXAMINED, VR::CS, self.body_part.code()),
            text(tags::DEVICE_SERIAL_NUMBER, VR::LO, &phi.device_serial_number),
            text(tags::SOFTWARE_VERSIONS, VR::LO, self.device.software),
            text(tags::PROTOCOL_NAME, VR::LO, &protocol),
            text(tags::STUDY_INSTANCE_UID, VR::UI, &self.study_uid),
            text(tags::SERIES_INSTANCE_UID, VR::UI, &self.series_uid(slice.series)),
            text(tags::STUDY_ID, VR::SH, &phi.study_id),
            text(tags::SERIES_NUMBER, VR::IS, &series_no.to_string()),
            text(tags::ACQUISITION_NUMBER, VR::IS, "1"),
            text(tags::INSTANCE_NUMBER, VR::IS, &instance_no.to_string()),
            u16_el(tags::SAMPLES_PER_PIXEL, 1),
            text(tags::PHOTOMETRIC_INTERPRETATION, VR::CS, "MONOCHROME2"),
            u16_el(tags::ROWS, spec.rows),
            u16_el(tags::COLUMNS, spec.cols),
            u16_el(tags::BITS_ALLOCATED, bits),
            u16_el(tags::BITS_STORED, if bits == 16 { 12 } else { 8 }),
            u16_el(tags::HIGH_BIT, if bits == 16 { 11 } else { 7 }),
            u16_el(
                tags::PIXEL_REPRESENTATION,
                match spec.pixel_representation {
                    PixelRepresentation::Unsigned => 0,
                    PixelRepresentation::Signed => 1,
                },
            ),
            text(tags::LOSSY_IMAGE_COMPRESSION, VR::CS, "00"),
            sequence(
                tags::REQUEST_ATTRIBUTES_SEQUENCE,
                vec![item(vec![
                    text(tags::ACCESSION_NUMBER, VR::SH, &phi.accession_number),
                    text(
                        tags::SCHEDULED_PROCEDURE_STEP_DESCRIPTION,
                        VR::LO,
                        self.body_part.study_description(modality),
                    ),
                    text(
                        tags::SCHEDULED_PROCEDURE_STEP_ID,
                        VR::SH,
                        &phi.scheduled_procedure_step_id,
                    ),
                    text(tags::REQUESTING_PHYSICIAN, VR::PN, &phi.requesting_physician),
                    text(
                        tags::REQUESTED_PROCEDURE_DESCRIPTION,
                        VR::LO,
                        self.body_part.study_description(modality),
                    ),
                    sequence(
                        tags::REQUESTED_PROCEDURE_CODE_SEQUENCE,
                        vec![code_item(
                            self.body_part.procedure_code(modality),
                            "99MEDMESH",
                            self.body_part.study_description(modality),
                        )],
                    ),
                    text(tags::REQUESTED_PROCEDURE_ID, VR::SH, &phi.requested_procedure_id),
                ])],
            ),
        ];

        if modality.has_image_plane() {
            e.extend(self.image_plane_elements(slice));
        }
        match modality {
            Modality::Ct => e.extend([
                text(tags::KVP, VR::DS, "120"),
                text(tags::DATA_COLLECTION_DIAMETER, VR::DS, "500"),
                text(
                    tags::RECONSTRUCTION_DIAMETER,
                    VR::DS,
                    &ds(self.pixel_spacing * f64::from(spec.cols)),
                ),
                text(tags::GANTRY_DETECTOR_TILT, VR::DS, "0"),
                text(tags::TABLE_HEIGHT, VR::DS, "160"),
                text(tags::X_RAY_TUBE_CURRENT, VR::IS, "250"),
                text(tags::EXPOSURE, VR::IS, "180"),
                text(
                    tags::CONVOLUTION_KERNEL,
                    VR::SH,
                    if slice.series.is_multiple_of(2) {
                        "STANDARD"
                    } else {
                        "BONE"
                    },
                ),
                text(tags::PATIENT_POSITION, VR::CS, "HFS"),
                text(tags::RESCALE_INTERCEPT, VR::DS, "-1024"),
                text(tags::RESCALE_SLOPE, VR::DS, "1"),
                text(tags::RESCALE_TYPE, VR::LO, "HU"),
            ]),
            Modality::Mr => e.extend([
                text(tags::SCANNING_SEQUENCE, VR::CS, "SE"),
                text(tags::SEQUENCE_VARIANT, VR::CS, "SK"),
                text(tags::SCAN_OPTIONS, VR::CS, ""),
                text(tags::MR_ACQUISITION_TYPE, VR::CS, "2D"),
                text(tags::REPETITION_TIME, VR::DS, "550"),
                text(tags::ECHO_TIME, VR::DS, "14"),
                text(tags::IMAGING_FREQUENCY, VR::DS, "63.87"),
                text(tags::IMAGED_NUCLEUS, VR::SH, "1H"),
                text(tags::MAGNETIC_FIELD_STRENGTH, VR::DS, "1.5"),
                text(tags::ECHO_TRAIN_LENGTH, VR::IS, "1"),
                text(tags::PATIENT_POSITION, VR::CS, "HFS"),
            ]),
            Modality::Us => {}
            Modality::Sc => e.push(text(tags::CONVERSION_TYPE, VR::CS, "WSD")),
        }
        let (center, width) = match (modality, slice.series % 2) {
            (Modality::Ct, 0) => ("40", "400"),
            (Modality::Ct, _) => ("-600", "1500"),
            (Modality::Mr, _) => ("900", "1800"),
            (Modality::Us | Modality::Sc, _) => ("128", "256"),
        };
        e.push(text(tags::WINDOW_CENTER, VR::DS, center));
        e.push(text(tags::WINDOW_WIDTH, VR::DS, width));
        if let Some(yes) = spec.burned_in_annotation {
            e.push(text(tags::BURNED_IN_ANNOTATION, VR::CS, if yes { "YES" } else { "NO" }));
        }
        if spec.with_private {
            e.extend(self.private_elements(slice));
        }
        e.push(DataElement::new(
            tags::PIXEL_DATA,
            if bits == 16 { VR::OW } else { VR::OB },
            PrimitiveValue::from(self.pixel_data(slice)),
        ));
        e
    }

    fn image_plane_elements(&self, slice: SliceRef) -> Vec<InMemElement> {
        let s = self.pixel_spacing;
        let x0 = -s * f64::from(self.spec.cols) / 2.0 + s / 2.0;
        let y0 = -s * f64::from(self.spec.rows) / 2.0 + s / 2.0;
        let z = self.body_part.z_start() - f64::from(slice.index) * self.slice_thickness;
        let (px, py, pz) = (ds(x0), ds(y0), ds(z));
        vec![
            text(tags::SLICE_THICKNESS, VR::DS, &ds(self.slice_thickness)),
            strs(tags::IMAGE_POSITION_PATIENT, VR::DS, &[&px, &py, &pz]),
            strs(tags::IMAGE_ORIENTATION_PATIENT, VR::DS, &["1", "0", "0", "0", "1", "0"]),
            text(tags::FRAME_OF_REFERENCE_UID, VR::UI, &self.frame_of_reference_uid),
            text(tags::POSITION_REFERENCE_INDICATOR, VR::LO, ""),
            text(tags::SLICE_LOCATION, VR::DS, &pz),
            strs(tags::PIXEL_SPACING, VR::DS, &[&ds(s), &ds(s)]),
        ]
    }

    /// The private block: creator (0009,0010) and elements (0009,10xx), PHI included.
    fn private_elements(&self, slice: SliceRef) -> Vec<InMemElement> {
        let phi = &self.phi;
        vec![
            text(Tag(0x0009, 0x0010), VR::LO, PRIVATE_CREATOR),
            text(Tag(0x0009, 0x1001), VR::LO, "SYNTHETIC RECON v2"),
            // PHI hidden in a private tag, as real scanners do.
            text(Tag(0x0009, 0x1002), VR::PN, &phi.patient_name),
            text(
                Tag(0x0009, 0x1003),
                VR::LO,
                &format!("{}/{}", phi.patient_id, phi.accession_number),
            ),
            text(
                Tag(0x0009, 0x1004),
                VR::DS,
                &ds(0.5 + f64::from(slice.index % 7) * 0.25),
            ),
            DataElement::new(
                Tag(0x0009, 0x1005),
                VR::OB,
                PrimitiveValue::from(
                    self.derive
                        .bytes("private-blob", u64::from(slice.series), u64::from(slice.index))[..16]
                        .to_vec(),
                ),
            ),
        ]
    }

    fn series_description(&self, series: u32) -> String {
        let names: &[&str] = match self.spec.modality {
            Modality::Ct => &[
                "AXIAL 2.5mm STD",
                "AXIAL 2.5mm LUNG",
                "AXIAL 1.25mm BONE",
                "AXIAL 5mm C+",
            ],
            Modality::Mr => &["AX T1 SE", "AX T2 FSE", "AX FLAIR", "AX DWI b1000"],
            Modality::Us => &["B-MODE", "B-MODE 2", "HARMONIC", "DOPPLER"],
            Modality::Sc => &["SCREEN CAPTURE", "KEY IMAGES", "REPORT PAGE", "SNAPSHOT"],
        };
        let series = usize::try_from(series).unwrap_or(usize::MAX);
        let i = series % names.len();
        if series < names.len() {
            names[i].to_owned()
        } else {
            format!("{} ({})", names[i], series + 1)
        }
    }

    fn image_type3(&self) -> &'static str {
        match self.spec.modality {
            Modality::Ct | Modality::Mr => "AXIAL",
            Modality::Us | Modality::Sc => "",
        }
    }
}

fn validate(spec: &StudySpec) -> Result<(), GenError> {
    let bad = |field, reason: String| Err(GenError::InvalidSpec { field, reason });
    if spec.slices == 0 || spec.slices > MAX_SLICES {
        return bad("slices", format!("{} is not in 1..={MAX_SLICES}", spec.slices));
    }
    if spec.series == 0 || spec.series > spec.slices {
        return bad(
            "series",
            format!(
                "{} is not in 1..={} (at most one series per slice)",
                spec.series, spec.slices
            ),
        );
    }
    for (field, v) in [("rows", spec.rows), ("cols", spec.cols)] {
        if v == 0 || v > MAX_DIMENSION {
            return bad(field, format!("{v} is not in 1..={MAX_DIMENSION}"));
        }
    }
    if spec.pixel_representation == PixelRepresentation::Signed && spec.modality.bits_allocated() == 8 {
        return bad(
            "pixel_representation",
            format!("signed pixels need a 16-bit modality (CT or MR), not {}", spec.modality),
        );
    }
    if let Some(p) = &spec.patient {
        if let Some(name) = &p.name
            && (name.is_empty() || name.chars().count() > 64 || name.contains('\\'))
        {
            return bad(
                "patient.name",
                format!("{name:?} is not a PN value of 1..=64 characters"),
            );
        }
        if let Some(id) = &p.id
            && (id.is_empty() || id.chars().count() > 64 || id.contains('\\'))
        {
            return bad("patient.id", format!("{id:?} is not a LO value of 1..=64 characters"));
        }
    }
    Ok(())
}

fn series_dir_name(series: u32) -> String {
    format!("series-{:03}", u64::from(series) + 1)
}

// ---------------------------------------------------------------------------------------------
// Element helpers

fn text(tag: Tag, vr: VR, value: &str) -> InMemElement {
    DataElement::new(tag, vr, PrimitiveValue::from(value))
}

fn strs(tag: Tag, vr: VR, values: &[&str]) -> InMemElement {
    DataElement::new(
        tag,
        vr,
        PrimitiveValue::Strs(values.iter().map(|s| (*s).to_owned()).collect()),
    )
}

fn u16_el(tag: Tag, value: u16) -> InMemElement {
    DataElement::new(tag, VR::US, PrimitiveValue::from(value))
}

fn item(elements: Vec<InMemElement>) -> InMemDicomObject {
    InMemDicomObject::from_element_iter(elements)
}

fn sequence(tag: Tag, items: Vec<InMemDicomObject>) -> InMemElement {
    DataElement::new(tag, VR::SQ, DataSetSequence::from(items))
}

fn code_item(value: &str, scheme: &str, meaning: &str) -> InMemDicomObject {
    item(vec![
        text(tags::CODE_VALUE, VR::SH, value),
        text(tags::CODING_SCHEME_DESIGNATOR, VR::SH, scheme),
        text(tags::CODE_MEANING, VR::LO, meaning),
    ])
}

/// Formats a Decimal String value: at most 6 decimals, no trailing zeros, at most 16 characters.
fn ds(v: f64) -> String {
    let mut s = format!("{v:.6}");
    if s.contains('.') {
        while s.ends_with('0') {
            s.pop();
        }
        if s.ends_with('.') {
            s.pop();
        }
    }
    if s == "-0" {
        s = "0".to_owned();
    }
    s.truncate(16);
    s
}

/// Adds seconds to an `HHMMSS` time, wrapping at midnight.
fn add_seconds(hhmmss: &str, secs: u64) -> String {
    let field = |r: std::ops::Range<usize>| hhmmss.get(r).and_then(|s| s.parse::<u64>().ok()).unwrap_or(0);
    let total = (field(0..2) * 3600 + field(2..4) * 60 + field(4..6) + secs) % 86_400;
    format!("{:02}{:02}{:02}", total / 3600, total / 60 % 60, total % 60)
}

/// Replaces Latin-1 letters by ASCII look-alikes (`Müller^José` -> `Mueller^Jose`).
fn ascii_fold(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            'ä' => out.push_str("ae"),
            'ö' | 'ø' => out.push_str("oe"),
            'ü' => out.push_str("ue"),
            'Ä' => out.push_str("Ae"),
            'Ö' | 'Ø' => out.push_str("Oe"),
            'Ü' => out.push_str("Ue"),
            'ß' => out.push_str("ss"),
            'å' => out.push_str("aa"),
            'é' | 'è' | 'ê' | 'ë' => out.push('e'),
            'á' | 'à' | 'â' => out.push('a'),
            'í' | 'ï' => out.push('i'),
            'ó' | 'ô' => out.push('o'),
            'ú' => out.push('u'),
            'ñ' => out.push('n'),
            'ç' => out.push('c'),
            c if c.is_ascii() => out.push(c),
            _ => out.push('?'),
        }
    }
    out
}

fn person_name(rng: &mut SplitMix64, prefix: &str) -> String {
    let family = pick(rng, FAMILY_NAMES);
    let given = pick(rng, GIVEN_NAMES);
    if prefix.is_empty() {
        format!("{family}^{given}")
    } else {
        format!("{family}^{given}^^{prefix}")
    }
}

fn pick<'a, T>(rng: &mut SplitMix64, items: &'a [T]) -> &'a T {
    // Only called on the non-empty lists below. `below(len) < len`, and len came from a usize.
    let len = u64::try_from(items.len()).unwrap_or(u64::MAX);
    let i = usize::try_from(rng.below(len)).unwrap_or(0);
    &items[i.min(items.len().saturating_sub(1))]
}

// ---------------------------------------------------------------------------------------------
// Derivation: BLAKE3 for identities, SplitMix64 for streams

#[derive(Debug, Clone, Copy)]
struct Derive {
    seed: u64,
}

impl Derive {
    /// 32 bytes bound to (seed, role, a, b); the role is length-prefixed.
    fn bytes(&self, role: &str, a: u64, b: u64) -> [u8; 32] {
        let mut h = blake3::Hasher::new_derive_key(DERIVE_CONTEXT);
        h.update(&self.seed.to_le_bytes());
        h.update(&u64::try_from(role.len()).unwrap_or(u64::MAX).to_le_bytes());
        h.update(role.as_bytes());
        h.update(&a.to_le_bytes());
        h.update(&b.to_le_bytes());
        *h.finalize().as_bytes()
    }

    /// A UID `2.25.<decimal of a 128-bit value>`: at most 44 characters, valid UI syntax.
    fn uid(&self, role: &str, a: u64, b: u64) -> String {
        uid_from_bytes(&self.bytes(role, a, b))
    }

    fn rng(&self, role: &str, a: u64, b: u64) -> SplitMix64 {
        let bytes = self.bytes(role, a, b);
        let mut seed = [0_u8; 8];
        seed.copy_from_slice(&bytes[..8]);
        SplitMix64(u64::from_le_bytes(seed))
    }
}

fn uid_from_bytes(bytes: &[u8; 32]) -> String {
    let mut v = [0_u8; 16];
    v.copy_from_slice(&bytes[..16]);
    format!("2.25.{}", u128::from_le_bytes(v))
}

/// SplitMix64 (Steele, Lea, Flood 2014): tiny, fast, and good enough for noise and picks.
#[derive(Debug, Clone)]
struct SplitMix64(u64);

impl SplitMix64 {
    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n` (Lemire's multiply-shift; the tiny bias is irrelevant here). `n > 0`.
    fn below(&mut self, n: u64) -> u64 {
        let wide = u128::from(self.next_u64()) * u128::from(n);
        // The high 64 bits of a 64x64 product always fit in u64.
        u64::try_from(wide >> 64).unwrap_or(0)
    }
}

// ---------------------------------------------------------------------------------------------
// Calendar (proleptic Gregorian, enough for DA values)

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
struct Date {
    year: u64,
    month: u64,
    day: u64,
}

impl Date {
    fn is_leap(year: u64) -> bool {
        (year.is_multiple_of(4) && !year.is_multiple_of(100)) || year.is_multiple_of(400)
    }

    fn month_len(year: u64, month: u64) -> u64 {
        match month {
            2 if Self::is_leap(year) => 29,
            2 => 28,
            4 | 6 | 9 | 11 => 30,
            _ => 31,
        }
    }

    /// Days from 1900-01-01 to `year`-01-01.
    fn days_before_year(year: u64) -> u64 {
        (1900..year).map(|y| if Self::is_leap(y) { 366 } else { 365 }).sum()
    }

    /// The date `days` after 1900-01-01.
    fn from_day_index(mut days: u64) -> Self {
        let mut year = 1900;
        loop {
            let len = if Self::is_leap(year) { 366 } else { 365 };
            if days < len {
                break;
            }
            days -= len;
            year += 1;
        }
        let mut month = 1;
        while days >= Self::month_len(year, month) {
            days -= Self::month_len(year, month);
            month += 1;
        }
        Self {
            year,
            month,
            day: days + 1,
        }
    }

    fn parse(s: &str) -> Option<Self> {
        if s.len() != 8 || !s.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        let year = s.get(0..4)?.parse().ok()?;
        let month = s.get(4..6)?.parse().ok()?;
        let day = s.get(6..8)?.parse().ok()?;
        ((1..=12).contains(&month) && (1..=Self::month_len(year, month)).contains(&day)).then_some(Self {
            year,
            month,
            day,
        })
    }

    fn da(self) -> String {
        format!("{:04}{:02}{:02}", self.year, self.month, self.day)
    }

    /// Whole years from `birth` to `self` (0 if `birth` is later).
    fn years_since(self, birth: Self) -> u64 {
        let years = self.year.saturating_sub(birth.year);
        if (self.month, self.day) < (birth.month, birth.day) {
            years.saturating_sub(1)
        } else {
            years
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Pixel phantom

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Tissue {
    Air,
    Fat,
    Soft,
    Lung,
    Bone,
    Vessel,
    Lesion,
}

impl Tissue {
    /// Stored pixel value for the modality (CT: HU + 1024; MR: arbitrary units; 8-bit: grey).
    fn stored(self, modality: Modality) -> i32 {
        let (ct_hu, mr, grey) = match self {
            Self::Air => (-1000, 0, 0),
            Self::Fat => (-100, 1400, 170),
            Self::Soft => (40, 700, 110),
            Self::Lung => (-850, 60, 15),
            Self::Bone => (700, 250, 235),
            Self::Vessel => (180, 1000, 60),
            Self::Lesion => (90, 1800, 200),
        };
        match modality {
            Modality::Ct => ct_hu + 1024,
            Modality::Mr => mr,
            Modality::Us | Modality::Sc => grey,
        }
    }
}

/// Renders one slice at relative position `t` (0 = first, 1 = last slice of the study).
///
/// Cost is a handful of multiply-adds per pixel plus one SplitMix64 step per 4 pixels.
fn render_phantom(
    modality: Modality,
    body_part: BodyPart,
    rows: u16,
    cols: u16,
    t: f64,
    rng: &mut SplitMix64,
) -> Vec<u8> {
    let wide = modality.bits_allocated() == 16;
    let n = usize::from(rows) * usize::from(cols);
    let mut out = Vec::with_capacity(if wide { 2 * n } else { n });

    let lungs = body_part == BodyPart::Chest;
    let head = body_part == BodyPart::Head;
    // Lungs grow then shrink along the study; the lesion shows in the middle 40 %.
    let lung_scale = (PI * (0.15 + 0.7 * t)).sin();
    let lesion_r = {
        let d = (t - 0.5) / 0.2;
        if d.abs() < 1.0 {
            0.07 * (1.0 - d * d).sqrt()
        } else {
            0.0
        }
    };
    let (body_a, body_b) = if head { (0.72, 0.85) } else { (0.88, 0.66) };
    let (lung_a, lung_b) = (0.24 * lung_scale, 0.36 * lung_scale);
    let noise_amp: i32 = match modality {
        Modality::Ct => 12,
        Modality::Mr => 24,
        Modality::Us | Modality::Sc => 6,
    };
    let max = match modality {
        Modality::Ct | Modality::Mr => 2047, // fits 12 bits unsigned and signed alike
        Modality::Us | Modality::Sc => 255,
    };

    let inv_r = 2.0 / f64::from(rows);
    let inv_c = 2.0 / f64::from(cols);
    let mut noise = [0_u8; 8];
    let mut noise_pos = noise.len();
    for r in 0..rows {
        let v = (f64::from(r) + 0.5) * inv_r - 1.0;
        let v2 = v * v;
        for c in 0..cols {
            let u = (f64::from(c) + 0.5) * inv_c - 1.0;
            let body = (u * u) / (body_a * body_a) + v2 / (body_b * body_b);
            let tissue = if body > 1.0 {
                Tissue::Air
            } else if body > 0.86 {
                if head { Tissue::Bone } else { Tissue::Fat }
            } else if lungs && sq(u.abs() - 0.42) / sq(lung_a) + sq(v + 0.05) / sq(lung_b) < 1.0 {
                Tissue::Lung
            } else if !head && sq(u) + sq(v - 0.45) < sq(0.1) {
                Tissue::Bone
            } else if !head && sq(u - 0.1) + sq(v - 0.22) < sq(0.055) {
                Tissue::Vessel
            } else if lesion_r > 0.0 && sq(u + 0.28) + sq(v - 0.2) < sq(lesion_r) {
                Tissue::Lesion
            } else {
                Tissue::Soft
            };
            if noise_pos >= noise.len() {
                noise = rng.next_u64().to_le_bytes();
                noise_pos = 0;
            }
            // Triangular noise in -amp..=amp from two 8-bit uniforms.
            let a = i32::from(noise[noise_pos]);
            let b = i32::from(noise[noise_pos + 1]);
            noise_pos += 2;
            let delta = if tissue == Tissue::Air {
                0
            } else {
                (a + b - 255) * noise_amp / 255
            };
            let value = (tissue.stored(modality) + delta).clamp(0, max);
            // `value` is clamped to 0..=2047, so it fits u16 (and u8 when max is 255).
            let value = u16::try_from(value).unwrap_or(0);
            if wide {
                out.extend_from_slice(&value.to_le_bytes());
            } else {
                out.push(u8::try_from(value).unwrap_or(u8::MAX));
            }
        }
    }
    out
}

fn sq(x: f64) -> f64 {
    x * x
}

// ---------------------------------------------------------------------------------------------
// Built-in value lists (all fake)

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum BodyPart {
    Chest,
    Abdomen,
    Head,
}

const BODY_PARTS: &[BodyPart] = &[BodyPart::Chest, BodyPart::Chest, BodyPart::Abdomen, BodyPart::Head];

impl BodyPart {
    fn code(self) -> &'static str {
        match self {
            Self::Chest => "CHEST",
            Self::Abdomen => "ABDOMEN",
            Self::Head => "HEAD",
        }
    }

    fn protocol(self) -> &'static str {
        match self {
            Self::Chest => "THORAX ROUTINE",
            Self::Abdomen => "ABDOMEN PORTAL VENOUS",
            Self::Head => "BRAIN ROUTINE",
        }
    }

    fn study_description(self, modality: Modality) -> &'static str {
        match (modality, self) {
            (Modality::Ct, Self::Chest) => "CT THORAX WITH CONTRAST",
            (Modality::Ct, Self::Abdomen) => "CT ABDOMEN PELVIS WITH CONTRAST",
            (Modality::Ct, Self::Head) => "CT HEAD WITHOUT CONTRAST",
            (Modality::Mr, Self::Chest) => "MR THORAX",
            (Modality::Mr, Self::Abdomen) => "MR ABDOMEN LIVER",
            (Modality::Mr, Self::Head) => "MR BRAIN WITHOUT CONTRAST",
            (Modality::Us, Self::Head) => "US TRANSCRANIAL DOPPLER",
            (Modality::Us, _) => "US ABDOMEN COMPLETE",
            (Modality::Sc, _) => "SECONDARY CAPTURE",
        }
    }

    fn procedure_code(self, modality: Modality) -> &'static str {
        match (modality, self) {
            (Modality::Ct, Self::Chest) => "CTTHXC",
            (Modality::Ct, Self::Abdomen) => "CTABPC",
            (Modality::Ct, Self::Head) => "CTHDNC",
            (Modality::Mr, Self::Chest) => "MRTHX",
            (Modality::Mr, Self::Abdomen) => "MRABDL",
            (Modality::Mr, Self::Head) => "MRBRNC",
            (Modality::Us, _) => "USABD",
            (Modality::Sc, _) => "SCAP",
        }
    }

    /// Table position (mm) of the first slice.
    fn z_start(self) -> f64 {
        match self {
            Self::Chest => -20.0,
            Self::Abdomen => -250.0,
            Self::Head => 60.0,
        }
    }
}

#[derive(Debug)]
struct Device {
    manufacturer: &'static str,
    models: [&'static str; 4], // CT, MR, US, SC
    software: &'static str,
    station_prefix: &'static str,
    serial_prefix: &'static str,
}

impl Device {
    fn model(&self, modality: Modality) -> &'static str {
        match modality {
            Modality::Ct => self.models[0],
            Modality::Mr => self.models[1],
            Modality::Us => self.models[2],
            Modality::Sc => self.models[3],
        }
    }
}

const DEVICES: &[Device] = &[
    Device {
        manufacturer: "Nordlicht Medizintechnik",
        models: ["Helios CT 128", "Aurora 1.5T", "Sonara X5", "ViewStation"],
        software: "NL-IMG 7.2.1",
        station_prefix: "NLCT",
        serial_prefix: "NL",
    },
    Device {
        manufacturer: "Acme Imaging Systems",
        models: ["Spiral 64", "MagnaView 3T", "EchoStar 9", "CaptureSuite"],
        software: "AIS 2024.1",
        station_prefix: "ACME",
        serial_prefix: "AIS",
    },
    Device {
        manufacturer: "Medmesh Synthetic Devices",
        models: ["SynthCT One", "SynthMR One", "SynthUS One", "SynthSC One"],
        software: "MMS 0.1.0",
        station_prefix: "SYN",
        serial_prefix: "MMS",
    },
];

#[derive(Debug)]
struct Institution {
    name: &'static str,
    address: &'static str,
    city: &'static str,
    issuer: &'static str,
    dial: &'static str,
}

const INSTITUTIONS: &[Institution] = &[
    Institution {
        name: "Klinikum Nordstadt (Synthetisch)",
        address: "Gärtnerstraße 12, 10115 Berlin, DE",
        city: "10115 Berlin, DE",
        issuer: "KNS",
        dial: "49",
    },
    Institution {
        name: "Hôpital Saint-Lazare Synthétique",
        address: "17 rue de la Forêt, 69003 Lyon, FR",
        city: "69003 Lyon, FR",
        issuer: "HSLS",
        dial: "33",
    },
    Institution {
        name: "Hospital Universitario del Sur (Sintético)",
        address: "Calle de la Montaña 8, 41001 Sevilla, ES",
        city: "41001 Sevilla, ES",
        issuer: "HUSS",
        dial: "34",
    },
    Institution {
        name: "Søndre Testhospital",
        address: "Havnegade 4, 8000 Århus, DK",
        city: "8000 Århus, DK",
        issuer: "STH",
        dial: "45",
    },
    Institution {
        name: "Riverside Teaching Hospital (Synthetic)",
        address: "1 Mill Lane, Cambridge CB2 1RX, GB - Zoë Wing",
        city: "Cambridge CB2 1RX, GB",
        issuer: "RTH",
        dial: "44",
    },
];

const STREETS: &[&str] = &[
    "Lindenallee",
    "Rue des Écoles",
    "Calle Mayor",
    "Østergade",
    "Birkenweg",
    "Via Roma",
    "Station Road",
    "Schloßstraße",
];

const FAMILY_NAMES: &[&str] = &[
    "Müller",
    "Schröder",
    "Dubois",
    "García",
    "Sørensen",
    "Núñez",
    "Jönsson",
    "Lefèvre",
    "Okafor",
    "Rossi",
    "Kowalski",
    "Brennan",
    "Hoffmann",
    "Costa",
    "Andersen",
    "Martín",
];

const GIVEN_NAMES: &[&str] = &[
    "Anna",
    "José",
    "François",
    "Zoë",
    "Björn",
    "Chloé",
    "Mateo",
    "Ingrid",
    "Liam",
    "Amélie",
    "Jürgen",
    "Sofia",
    "Noah",
    "Elif",
    "Kenji",
    "Maëlle",
];

#[cfg(test)]
#[allow(clippy::unwrap_used)] // in tests a panic is the failure report
mod tests {
    use super::*;

    fn small(seed: u64) -> StudySpec {
        StudySpec {
            seed,
            slices: 3,
            rows: 64,
            cols: 64,
            ..StudySpec::default()
        }
    }

    fn tempdir(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("medmesh-testnet-gen-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        dir
    }

    fn find(haystack: &[u8], needle: &[u8]) -> bool {
        haystack.windows(needle.len()).any(|w| w == needle)
    }

    #[test]
    fn implementation_class_uid_is_derived_as_documented() {
        let key = blake3::derive_key("medmesh/v1/implementation-class-uid", b"medmesh-testnet");
        assert_eq!(uid_from_bytes(&key), IMPLEMENTATION_CLASS_UID);
        assert!(IMPLEMENTATION_VERSION_NAME.len() <= 16);
    }

    #[test]
    fn files_reopen_with_expected_attributes() {
        let dir = tempdir("reopen");
        let spec = StudySpec { series: 2, ..small(1) };
        let study = generate(&spec, &dir).unwrap();
        assert_eq!(study.files.len(), 3);
        assert_eq!(study.series_uids.len(), 2);
        assert!(study.files[0].ends_with("series-001/slice-0001.dcm"));
        assert!(study.files[2].ends_with("series-002/slice-0001.dcm"));
        let on_disk: u64 = study.files.iter().map(|f| std::fs::metadata(f).unwrap().len()).sum();
        assert_eq!(on_disk, study.total_bytes);

        for (i, file) in study.files.iter().enumerate() {
            let obj = dicom_object::open_file(file).unwrap();
            assert_eq!(obj.meta().transfer_syntax(), uids::EXPLICIT_VR_LITTLE_ENDIAN);
            assert_eq!(obj.meta().media_storage_sop_class_uid(), uids::CT_IMAGE_STORAGE);
            assert_eq!(
                obj.meta().implementation_class_uid().trim_end_matches('\0'),
                IMPLEMENTATION_CLASS_UID
            );
            let s = |tag| obj.element(tag).unwrap().to_str().unwrap().into_owned();
            assert_eq!(s(tags::SOP_INSTANCE_UID), study.sop_instance_uids[i]);
            assert_eq!(s(tags::STUDY_INSTANCE_UID), study.study_uid);
            assert_eq!(s(tags::PATIENT_NAME), study.phi.patient_name);
            assert_eq!(s(tags::PATIENT_ID), study.phi.patient_id);
            assert_eq!(s(tags::ACCESSION_NUMBER), study.phi.accession_number);
            assert_eq!(s(tags::SPECIFIC_CHARACTER_SET), "ISO_IR 100");
            assert_eq!(s(tags::RESCALE_INTERCEPT), "-1024");
            assert_eq!(obj.element(tags::ROWS).unwrap().to_int::<u16>().unwrap(), 64);
            let pixels = obj.element(tags::PIXEL_DATA).unwrap().to_bytes().unwrap();
            assert_eq!(pixels.len(), 64 * 64 * 2);
            // private block with the patient name in it
            assert_eq!(s(Tag(0x0009, 0x0010)), PRIVATE_CREATOR);
            assert_eq!(s(Tag(0x0009, 0x1002)), study.phi.patient_name);
            // nested identifiers
            let req = obj.element(tags::REQUEST_ATTRIBUTES_SEQUENCE).unwrap();
            let item = &req.items().unwrap()[0];
            assert_eq!(
                item.element(tags::REQUESTED_PROCEDURE_ID).unwrap().to_str().unwrap(),
                study.phi.requested_procedure_id
            );
            assert!(
                item.element(tags::REQUESTED_PROCEDURE_CODE_SEQUENCE)
                    .unwrap()
                    .items()
                    .is_some()
            );
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn same_seed_is_byte_identical_and_different_seed_differs() {
        let a = generate_to_vec(&small(42)).unwrap();
        let b = generate_to_vec(&small(42)).unwrap();
        let c = generate_to_vec(&small(43)).unwrap();
        assert_eq!(a, b);
        assert_eq!(a.len(), c.len());
        for (x, y) in a.iter().zip(&c) {
            assert_eq!(x.rel_path, y.rel_path);
            assert_ne!(x.bytes, y.bytes);
        }
        // and the on-disk files are the in-memory ones
        let dir = tempdir("identical");
        let study = generate(&small(42), &dir).unwrap();
        for (file, mem) in study.files.iter().zip(&a) {
            assert_eq!(std::fs::read(file).unwrap(), mem.bytes);
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn uids_are_valid_and_distinct() {
        let spec = StudySpec {
            slices: 6,
            series: 3,
            ..small(9)
        };
        let study = SyntheticStudy::new(&spec).unwrap();
        let mut all: Vec<String> = study.slices().map(|s| study.sop_instance_uid(s)).collect();
        all.extend((0..3).map(|s| study.series_uid(s)));
        all.push(study.study_uid().to_owned());
        all.push(study.frame_of_reference_uid().to_owned());
        for uid in &all {
            assert!(uid.len() <= 64, "{uid}");
            assert!(uid.starts_with("2.25."));
            for comp in uid.split('.') {
                assert!(!comp.is_empty() && comp.bytes().all(|b| b.is_ascii_digit()), "{uid}");
                assert!(comp == "0" || !comp.starts_with('0'), "{uid}");
            }
        }
        let unique: std::collections::HashSet<_> = all.iter().collect();
        assert_eq!(unique.len(), all.len());
    }

    #[test]
    fn phi_is_in_the_bytes_latin1_encoded() {
        let spec = StudySpec {
            patient: Some(PatientOverrides {
                name: Some("Müller^Jürgen".to_owned()),
                ..PatientOverrides::default()
            }),
            ..small(5)
        };
        let files = generate_to_vec(&spec).unwrap();
        let study = SyntheticStudy::new(&spec).unwrap();
        assert_eq!(study.phi().other_patient_names, "Mueller^Juergen");
        let needle = latin1("Müller^Jürgen").unwrap();
        assert!(!find(&files[0].bytes, "Müller".as_bytes()), "must not be UTF-8");
        for f in &files {
            for (field, value) in study.phi().identifiers() {
                assert!(find(&f.bytes, &latin1(value).unwrap()), "{field} {value:?} missing");
            }
            // patient name: standard tag + private tag
            let count = f
                .bytes
                .windows(needle.len())
                .filter(|w| *w == needle.as_slice())
                .count();
            assert_eq!(count, 2);
        }
        let obj = dicom_object::from_reader(&files[0].bytes[128..]).unwrap();
        assert_eq!(
            obj.element(tags::PATIENT_NAME).unwrap().to_str().unwrap(),
            "Müller^Jürgen"
        );
    }

    #[test]
    fn options_change_the_objects() {
        let spec = StudySpec {
            with_private: false,
            burned_in_annotation: Some(true),
            modality: Modality::Mr,
            pixel_representation: PixelRepresentation::Signed,
            ..small(3)
        };
        let study = SyntheticStudy::new(&spec).unwrap();
        let obj = study.object(SliceRef { series: 0, index: 0 }).unwrap();
        assert!(obj.element(Tag(0x0009, 0x0010)).is_err());
        assert_eq!(
            obj.element(tags::BURNED_IN_ANNOTATION).unwrap().to_str().unwrap(),
            "YES"
        );
        assert_eq!(obj.element(tags::MODALITY).unwrap().to_str().unwrap(), "MR");
        assert_eq!(
            obj.element(tags::PIXEL_REPRESENTATION)
                .unwrap()
                .to_int::<u16>()
                .unwrap(),
            1
        );
        assert!(obj.element(tags::RESCALE_INTERCEPT).is_err());

        for modality in [Modality::Us, Modality::Sc] {
            let spec = StudySpec { modality, ..small(3) };
            let files = generate_to_vec(&spec).unwrap();
            let obj = dicom_object::from_reader(&files[0].bytes[128..]).unwrap();
            assert_eq!(obj.meta().media_storage_sop_class_uid(), modality.sop_class_uid());
            assert_eq!(obj.element(tags::BITS_ALLOCATED).unwrap().to_int::<u16>().unwrap(), 8);
            assert_eq!(
                obj.element(tags::PIXEL_DATA).unwrap().to_bytes().unwrap().len(),
                64 * 64
            );
            assert!(obj.element(tags::BURNED_IN_ANNOTATION).is_err());
        }
    }

    #[test]
    fn series_split_and_bad_specs() {
        let study = SyntheticStudy::new(&StudySpec {
            slices: 7,
            series: 3,
            ..small(0)
        })
        .unwrap();
        assert_eq!((0..4).map(|s| study.series_len(s)).collect::<Vec<_>>(), [3, 2, 2, 0]);
        assert_eq!(study.slices().count(), 7);
        assert!(matches!(
            study.object(SliceRef { series: 1, index: 2 }),
            Err(GenError::NoSuchSlice { .. })
        ));
        for (spec, field) in [
            (StudySpec { slices: 0, ..small(0) }, "slices"),
            (StudySpec { series: 4, ..small(0) }, "series"),
            (StudySpec { rows: 0, ..small(0) }, "rows"),
            (
                StudySpec {
                    cols: MAX_DIMENSION + 1,
                    ..small(0)
                },
                "cols",
            ),
            (
                StudySpec {
                    modality: Modality::Us,
                    pixel_representation: PixelRepresentation::Signed,
                    ..small(0)
                },
                "pixel_representation",
            ),
            (
                StudySpec {
                    patient: Some(PatientOverrides {
                        name: Some("Иванов^Иван".to_owned()),
                        ..Default::default()
                    }),
                    ..small(0)
                },
                "patient",
            ),
            (
                StudySpec {
                    patient: Some(PatientOverrides {
                        birth_date: Some("19990231".to_owned()),
                        ..Default::default()
                    }),
                    ..small(0)
                },
                "patient.birth_date",
            ),
        ] {
            match SyntheticStudy::new(&spec) {
                Err(GenError::InvalidSpec { field: f, .. }) => assert_eq!(f, field),
                other => panic!("{field}: {other:?}"),
            }
        }
    }

    #[test]
    fn a_one_gigabyte_spec_is_accepted() {
        // 2000 slices of 512x512x2 bytes = 1 GiB of pixel data; only planned, not generated.
        let spec = StudySpec {
            slices: 2000,
            ..StudySpec::default()
        };
        let study = SyntheticStudy::new(&spec).unwrap();
        assert_eq!(study.slices().count(), 2000);
        assert_eq!(study.pixel_bytes_len(), 512 * 512 * 2);
        assert_eq!(
            study.rel_path(SliceRef { series: 0, index: 1999 }),
            Path::new("series-001/slice-2000.dcm")
        );
    }

    #[test]
    fn calendar_and_formatting_helpers() {
        assert_eq!(Date::from_day_index(0).da(), "19000101");
        assert_eq!(Date::from_day_index(Date::days_before_year(2024) + 59).da(), "20240229");
        assert_eq!(Date::parse("20240229").map(Date::da).as_deref(), Some("20240229"));
        assert_eq!(Date::parse("20230229"), None);
        let d = |s| Date::parse(s).unwrap();
        assert_eq!(d("20240301").years_since(d("19800301")), 44);
        assert_eq!(d("20240228").years_since(d("19800301")), 43);
        assert_eq!(ds(-1024.0), "-1024");
        assert_eq!(ds(0.703125), "0.703125");
        assert_eq!(ds(-0.0000001), "0");
        assert_eq!(add_seconds("235959", 2), "000001");
        assert_eq!(ascii_fold("Sørensen^Zoë"), "Soerensen^Zoe");
    }

    #[test]
    fn phantom_has_air_body_and_noise() {
        let study = SyntheticStudy::new(&StudySpec {
            rows: 128,
            cols: 128,
            ..small(11)
        })
        .unwrap();
        let px = study.pixel_data(SliceRef { series: 0, index: 1 });
        let values: Vec<u16> = px.chunks_exact(2).map(|c| u16::from_le_bytes([c[0], c[1]])).collect();
        assert_eq!(values[0], 24, "corner is air (-1000 HU)");
        let centre = values[64 * 128 + 64];
        assert!((1000..1200).contains(&centre), "centre is soft tissue, got {centre}");
        let distinct: std::collections::HashSet<_> = values.iter().collect();
        assert!(distinct.len() > 20, "noise and tissues give many values");
        assert!(values.iter().all(|v| *v <= 2047));
    }
}
