//! DICOM ingest and export: parse and validate files, group them into
//! study / series / instance, and write them back out byte-identical.
//!
//! Validation on import (each failure names the file and the attribute):
//! - the file is a DICOM Part 10 file (128-byte preamble, `DICM`, file meta
//!   group), or a bare data set without file meta in Implicit VR Little
//!   Endian, Explicit VR Little Endian or Explicit VR Big Endian (accepted
//!   with a note: PS3.10 allows such streams on media of the ACR-NEMA era);
//! - the transfer syntax is present in the file meta and known;
//! - the whole data set parses with that transfer syntax (files above the
//!   configured size are parsed up to Pixel Data, whose length is checked);
//! - SOP Class UID, SOP Instance UID, Study Instance UID and Series Instance
//!   UID are present and are valid UIDs (PS3.5 §9.1), and the file meta's
//!   Media Storage SOP Class / Instance UID agree with the data set;
//! - the Image Pixel attributes that size the pixel data (Rows, Columns,
//!   Bits Allocated, Samples per Pixel, Number of Frames) are valid numbers,
//!   native Pixel Data is as long as they say, and encapsulated Pixel Data
//!   has at least one fragment per frame (or a fragment for a single frame).
//!
//! A DICOMDIR (Media Storage Directory) is not a study object: met while
//! walking a folder it is skipped with a note, and named explicitly it is
//! followed to the files it references.

pub mod export;
pub mod ingest;

pub use crate::store::StudyAttributes;

use std::borrow::Cow;
use std::fs::File;
use std::io::{BufReader, Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

use dicom_core::header::HasLength;
use dicom_core::value::Value;
use dicom_core::{DataDictionary, Tag};
use dicom_dictionary_std::{tags, uids};
use dicom_encoding::TransferSyntaxIndex;
use dicom_object::file::ReadPreamble;
use dicom_object::{InMemDicomObject, OpenFileOptions};
use dicom_transfer_syntax_registry::TransferSyntaxRegistry;
use serde::{Deserialize, Serialize};

/// Why a file was not accepted as a DICOM object.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DicomError {
    /// The file could not be read.
    #[error("cannot read: {0}")]
    Io(#[from] std::io::Error),
    /// The file is not DICOM at all.
    #[error("not a DICOM file: {0}")]
    NotDicom(NotDicom),
    /// The file is DICOM but cannot be parsed.
    #[error("malformed DICOM: {0}")]
    Malformed(Malformed),
    /// A required attribute is missing (an empty one is [`DicomError::Invalid`]).
    #[error("has no {0}")]
    Missing(&'static str),
    /// An attribute has a value that is not valid.
    #[error("attribute {attribute} is invalid: {reason}")]
    Invalid {
        /// Attribute keyword and tag.
        attribute: &'static str,
        /// Why.
        reason: InvalidValue,
    },
    /// Two places in the file disagree.
    #[error("inconsistent: {0}")]
    Inconsistent(Inconsistency),
    /// The file is a DICOMDIR and was named where a study object was expected.
    #[error("a DICOMDIR is a media directory, not a study object")]
    Dicomdir,
}

/// Why a file is not DICOM at all ([`DicomError::NotDicom`]).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum NotDicom {
    /// It is shorter than one data element.
    #[error("shorter than one data element")]
    TooShort,
    /// No DICM marker, and it does not start with a data element.
    #[error("no DICM marker at byte 128 or 0, and the first bytes are not a DICOM data element")]
    NoMarker,
}

/// Why a DICOM file cannot be parsed ([`DicomError::Malformed`]).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Malformed {
    /// The parser (dicom-rs) refused it; the message carries the parser's
    /// chain of causes.
    #[error("{}", flatten_error(.0.as_ref()))]
    Parse(#[source] Box<dicom_object::ReadError>),
    /// A file without a Part 10 header is too large to parse whole.
    #[error("a file without a Part 10 header must be small enough to parse whole (raise store.full_parse_limit)")]
    HeaderlessTooLarge,
    /// A deflated data set is too large to parse whole.
    #[error("a deflated data set must be small enough to parse whole (raise store.full_parse_limit)")]
    DeflatedTooLarge,
    /// The transfer syntax has no codec in this build.
    #[error("transfer syntax {uid} is not available")]
    TransferSyntax {
        /// The transfer syntax UID.
        uid: String,
    },
    /// Encapsulated Pixel Data has no fragments.
    #[error("encapsulated Pixel Data has no fragments")]
    NoFragments,
    /// Pixel Data is a sequence of items.
    #[error("Pixel Data is a sequence of items")]
    PixelDataItems,
    /// The file ends inside a structure.
    #[error("the file ends inside {inside} (no delimiter)")]
    EndsInside {
        /// The structure.
        inside: &'static str,
    },
    /// An element declares more bytes than remain.
    #[error("element ({:04X},{:04X}) declares {len} bytes, but only {remain} remain in the file", .tag.0, .tag.1)]
    Overrun {
        /// The element's tag.
        tag: (u16, u16),
        /// Its declared length.
        len: u32,
        /// The bytes left in the file.
        remain: u64,
    },
    /// Sequences are nested too deeply.
    #[error("sequences nested deeper than {max} levels")]
    TooDeep {
        /// The deepest nesting read.
        max: usize,
    },
    /// An item tag where a data element was expected.
    #[error("unexpected item tag (FFFE,{elem:04X}) in a data set")]
    UnexpectedItem {
        /// The item tag's element number.
        elem: u16,
    },
    /// A sequence encoded as UN with undefined length.
    #[error("element ({:04X},{:04X}) is a sequence encoded as UN with undefined length, which the DICOM parser of this build (dicom-rs 0.10) cannot read", .tag.0, .tag.1)]
    UnSequence {
        /// The element's tag.
        tag: (u16, u16),
    },
    /// Something else than an item or a sequence delimiter in a sequence.
    #[error("expected an item or a sequence delimiter, found ({:04X},{:04X})", .found.0, .found.1)]
    ExpectedItem {
        /// The tag found.
        found: (u16, u16),
    },
    /// Something else than a fragment or the delimiter in encapsulated Pixel Data.
    #[error("encapsulated Pixel Data: expected a fragment or the sequence delimiter, found ({:04X},{:04X})", .found.0, .found.1)]
    ExpectedFragment {
        /// The tag found.
        found: (u16, u16),
    },
    /// The file meta group cannot be walked.
    #[error("file meta group: {0}")]
    Meta(MetaFault),
    /// A deflated data set does not inflate.
    #[error("deflated data set does not inflate: {0}")]
    Inflate(#[source] std::io::Error),
    /// A deflated data set inflates to too much.
    #[error("deflated data set inflates to more than {limit} bytes")]
    Inflated {
        /// The limit.
        limit: u64,
    },
    /// The first compressed frame's header cannot be read.
    #[error("compressed pixel data: {0}")]
    Codestream(CodestreamFault),
}

/// What is wrong with the file meta group ([`Malformed::Meta`]).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum MetaFault {
    /// Its elements overrun its declared length.
    #[error("elements overrun the group length")]
    Overrun,
    /// The file ends inside it.
    #[error("the file ends inside it")]
    EndsInside,
    /// An element of another group lies inside its declared length.
    #[error("an element of another group lies inside the declared group length")]
    OtherGroup,
    /// An element declares bytes past the end of the file.
    #[error("element (0002,{elem:04X}) declares {len} bytes past the end of the file")]
    PastEnd {
        /// The element number.
        elem: u16,
        /// Its declared length.
        len: usize,
    },
}

/// What is wrong with a compressed frame's header ([`Malformed::Codestream`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum CodestreamFault {
    /// A JPEG 2000 frame lacks its SOC and SIZ markers.
    #[error("a JPEG 2000 frame does not start with the SOC and SIZ markers")]
    J2kMarkers,
    /// The JPEG 2000 SIZ segment is truncated.
    #[error("truncated JPEG 2000 SIZ segment")]
    J2kSiz,
    /// The JPEG 2000 image offset lies outside the image.
    #[error("JPEG 2000 image offset lies outside the image")]
    J2kOffset,
    /// A JPEG frame lacks its SOI marker.
    #[error("a JPEG frame does not start with the SOI marker")]
    JpegSoi,
    /// JPEG marker segments are out of sync.
    #[error("JPEG marker segments are out of sync")]
    JpegSync,
    /// A JPEG segment is truncated.
    #[error("truncated JPEG segment")]
    JpegSegment,
    /// The JPEG SOF segment is truncated.
    #[error("truncated JPEG SOF segment")]
    JpegSof,
    /// No SOF before the scan data.
    #[error("no JPEG frame header (SOF) before the scan data")]
    NoSof,
}

/// Why an attribute's value is refused ([`DicomError::Invalid`]).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum InvalidValue {
    /// It is not a valid UID.
    #[error(transparent)]
    Uid(UidError),
    /// It is not a number.
    #[error("not a number ({0})")]
    NotANumber(#[source] dicom_core::value::ConvertValueError),
    /// The transfer syntax is not one known.
    #[error("{uid} is not a known transfer syntax")]
    UnknownTransferSyntax {
        /// The transfer syntax UID.
        uid: String,
    },
    /// It is negative.
    #[error("{value} is negative")]
    Negative {
        /// The value.
        value: i64,
    },
    /// The number of frames is not plausible.
    #[error("{frames} frames is not plausible")]
    Frames {
        /// The number of frames.
        frames: u64,
    },
}

/// Two places in a DICOM file that disagree ([`DicomError::Inconsistent`]).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Inconsistency {
    /// The image attributes need more pixel data than the file holds.
    #[error("image attributes need {need} bytes of pixel data, the file has {file_len} bytes")]
    FileTooShort {
        /// Bytes needed.
        need: u64,
        /// The file's length.
        file_len: u64,
    },
    /// Fewer fragments than frames.
    #[error("NumberOfFrames is {frames} but encapsulated Pixel Data holds only {fragments} fragments")]
    Fragments {
        /// NumberOfFrames.
        frames: u64,
        /// Fragments held.
        fragments: usize,
    },
    /// The compressed frame header disagrees with the image attributes.
    #[error(
        "the compressed frame header says {width}x{height} with {components} components, but Columns x Rows is {columns}x{rows} with {samples} samples per pixel"
    )]
    FrameHeader {
        /// Width in the frame header.
        width: u32,
        /// Height in the frame header.
        height: u32,
        /// Components in the frame header.
        components: u32,
        /// Columns.
        columns: u64,
        /// Rows.
        rows: u64,
        /// Samples per pixel.
        samples: u64,
    },
    /// Native Pixel Data is shorter than the image attributes need.
    #[error("Pixel Data holds {have} bytes, but Rows x Columns x Frames x Samples x BitsAllocated need {need}")]
    PixelData {
        /// Bytes held.
        have: u64,
        /// Bytes needed.
        need: u64,
    },
}

/// Explicit VR Big Endian (retired in PS3.5, but still met in archives).
const EXPLICIT_VR_BIG_ENDIAN: &str = "1.2.840.10008.1.2.2";

/// Media Storage Directory Storage (DICOMDIR).
pub const DICOMDIR_SOP_CLASS: &str = "1.2.840.10008.1.3.10";

/// Everything import needs from one parsed file. Identifying values are
/// kept only in memory and sealed before they reach disk.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ObjectInfo {
    /// True for a Part 10 file (preamble, DICM, file meta).
    pub part10: bool,
    /// Transfer Syntax UID (from the file meta, or detected for a bare data set).
    pub transfer_syntax: String,
    /// SOP Class UID.
    pub sop_class_uid: String,
    /// SOP Instance UID.
    pub sop_instance_uid: String,
    /// Study Instance UID.
    pub study_uid: String,
    /// Series Instance UID.
    pub series_uid: String,
    /// Modality.
    pub modality: String,
    /// Series Number.
    pub series_number: Option<i64>,
    /// Series Description.
    pub series_description: String,
    /// Instance Number.
    pub instance_number: Option<i64>,
    /// Number of Frames (1 when absent).
    pub frames: u32,
    /// Patient-level and study-level identifying attributes.
    pub study: StudyAttributes,
    /// Notes about tolerated irregularities.
    pub notes: Vec<String>,
}

/// A parsed file: what it is, and its bytes when they were read whole.
#[derive(Debug)]
pub struct Parsed {
    /// What import needs to know.
    pub info: ObjectInfo,
    /// The file's bytes, when it was small enough to be read whole.
    pub bytes: Option<Vec<u8>>,
    /// The file's length.
    pub len: u64,
}

/// What a file turned out to be.
#[derive(Debug)]
pub enum Sniffed {
    /// A DICOM object.
    Object(Box<Parsed>),
    /// A DICOMDIR, with the files it references (resolved, existing or not).
    Dicomdir(Vec<PathBuf>),
}

/// Parses and validates one file. Files up to `full_parse_limit` bytes are
/// read whole and parsed completely; larger ones are parsed up to Pixel Data.
///
/// # Errors
/// A [`DicomError`] saying why the file is not an acceptable DICOM object.
pub fn sniff_file(path: &Path, full_parse_limit: u64) -> Result<Sniffed, DicomError> {
    let len = std::fs::metadata(path)?.len();
    if len <= full_parse_limit {
        let bytes = std::fs::read(path)?;
        let obj = parse_bytes(&bytes)?;
        sniff(obj, Some(bytes), len, path)
    } else {
        let mut file = BufReader::new(File::open(path)?);
        let obj = parse_reader(&mut file, len)?;
        sniff(obj, None, len, path)
    }
}

/// As [`sniff_file`], for a file's bytes already in memory (parsed whole,
/// whatever their size); `path` names them in a DICOMDIR's references.
///
/// # Errors
/// As [`sniff_file`].
pub fn sniff_bytes(bytes: Vec<u8>, path: &Path) -> Result<Sniffed, DicomError> {
    let obj = parse_bytes(&bytes)?;
    let len = bytes.len() as u64;
    sniff(obj, Some(bytes), len, path)
}

fn sniff(parsed: ParsedDataset, bytes: Option<Vec<u8>>, len: u64, path: &Path) -> Result<Sniffed, DicomError> {
    if parsed.sop_class_hint.as_deref() == Some(DICOMDIR_SOP_CLASS)
        || str_of(&parsed.obj, tags::SOP_CLASS_UID).as_deref() == Some(DICOMDIR_SOP_CLASS)
        || parsed.obj.get(tags::DIRECTORY_RECORD_SEQUENCE).is_some()
    {
        return Ok(Sniffed::Dicomdir(dicomdir_references(&parsed.obj, path)));
    }
    let info = validate(&parsed, len)?;
    Ok(Sniffed::Object(Box::new(Parsed { info, bytes, len })))
}

/// Parses bytes already in memory (used by import and by the fuzz targets).
///
/// # Errors
/// As [`sniff_file`].
pub fn parse_and_validate(bytes: &[u8]) -> Result<ObjectInfo, DicomError> {
    let parsed = parse_bytes(bytes)?;
    validate(&parsed, bytes.len() as u64)
}

struct ParsedDataset {
    obj: InMemDicomObject,
    part10: bool,
    transfer_syntax: String,
    meta_sop_class: Option<String>,
    meta_sop_instance: Option<String>,
    sop_class_hint: Option<String>,
    /// Bytes of the data set not parsed (header-only parse of a large file).
    unparsed_tail: Option<u64>,
    notes: Vec<String>,
}

/// How the bytes begin.
enum Layout {
    /// 128-byte preamble, then "DICM" and the file meta group.
    Preamble,
    /// "DICM" and the file meta group, no preamble.
    MagicOnly,
    /// File meta group without preamble or magic.
    MetaOnly,
    /// A bare data set in the given transfer syntax.
    Bare(&'static str),
}

fn layout(head: &[u8]) -> Result<Layout, DicomError> {
    if head.len() >= 132 && &head[128..132] == b"DICM" {
        return Ok(Layout::Preamble);
    }
    if head.len() >= 4 && &head[..4] == b"DICM" {
        return Ok(Layout::MagicOnly);
    }
    if head.len() < 8 {
        return Err(DicomError::NotDicom(NotDicom::TooShort));
    }
    let group_le = u16::from_le_bytes([head[0], head[1]]);
    let group_be = u16::from_be_bytes([head[0], head[1]]);
    let vr_letters = head[4].is_ascii_uppercase() && head[5].is_ascii_uppercase();
    if group_le == 0x0002 && vr_letters {
        return Ok(Layout::MetaOnly);
    }
    // A bare data set starts with a low, even group: 0008 (identification) in
    // practice; 0000..0028 are accepted.
    let plausible = |g: u16| g <= 0x0028 && g.is_multiple_of(2);
    if plausible(group_le) && group_le != 0 {
        return Ok(Layout::Bare(if vr_letters {
            uids::EXPLICIT_VR_LITTLE_ENDIAN
        } else {
            uids::IMPLICIT_VR_LITTLE_ENDIAN
        }));
    }
    if plausible(group_be) && group_be != 0 && vr_letters {
        return Ok(Layout::Bare(EXPLICIT_VR_BIG_ENDIAN));
    }
    Err(DicomError::NotDicom(NotDicom::NoMarker))
}

/// Parses the part of a Part 10 file before its Pixel Data (see
/// [`pixel_span`]). Returns the data set and its transfer syntax UID.
///
/// # Errors
/// [`DicomError::Malformed`] for bytes that do not parse.
pub fn parse_before_pixels(bytes: &[u8], span: &PixelSpan) -> Result<(InMemDicomObject, String), DicomError> {
    let p = parse_part10_reader(&bytes[span.skip..span.start], None)?;
    Ok((p.obj, p.transfer_syntax))
}

/// Parses a whole object in memory (pixel data included), as import reads
/// it: a Part 10 file (with or without preamble) or a bare data set. Returns
/// the data set and its transfer syntax UID.
///
/// # Errors
/// [`DicomError::Malformed`] for bytes that do not parse.
pub fn parse_whole(bytes: &[u8]) -> Result<(InMemDicomObject, String), DicomError> {
    let p = parse_bytes(bytes)?;
    Ok((p.obj, p.transfer_syntax))
}

fn parse_bytes(bytes: &[u8]) -> Result<ParsedDataset, DicomError> {
    let layout = layout(bytes)?;
    let meta_start = match layout {
        Layout::Preamble => Some(132),
        Layout::MagicOnly => Some(4),
        Layout::MetaOnly => Some(0),
        Layout::Bare(_) => None,
    };
    let pixel_end = match (meta_start, &layout) {
        (Some(start), _) => {
            let (ds, ts) = after_meta(bytes, start)?;
            prescan(bytes, ds, (bytes.len() - ds) as u64, &ts)?
        }
        (None, Layout::Bare(ts)) => prescan(bytes, 0, bytes.len() as u64, ts)?,
        _ => None,
    };
    match layout {
        Layout::Preamble => parse_part10(bytes, 128, pixel_end),
        Layout::MagicOnly => parse_part10(bytes, 0, pixel_end),
        Layout::MetaOnly => {
            let mut with_magic = Vec::with_capacity(bytes.len() + 4);
            with_magic.extend_from_slice(b"DICM");
            with_magic.extend_from_slice(bytes);
            let mut p = parse_part10(&with_magic, 0, None)?;
            p.notes.push("file meta without the DICM marker".into());
            Ok(p)
        }
        Layout::Bare(ts) => parse_bare(bytes, ts),
    }
}

fn parse_reader(file: &mut BufReader<File>, len: u64) -> Result<ParsedDataset, DicomError> {
    let mut head = vec![0u8; 132];
    let n = read_up_to(file, &mut head)?;
    head.truncate(n);
    let skip = match layout(&head)? {
        Layout::Preamble => 128,
        Layout::MagicOnly => 0,
        Layout::MetaOnly | Layout::Bare(_) => {
            return Err(DicomError::Malformed(Malformed::HeaderlessTooLarge));
        }
    };
    // Check the structure of the first MiB (the header, in practice) against
    // the file's length before the parser allocates anything.
    let mut prefix = vec![0u8; 1024 * 1024];
    file.seek(SeekFrom::Start(0))?;
    let n = read_up_to(file, &mut prefix)?;
    prefix.truncate(n);
    let meta_start = if skip == 128 { 132 } else { 4 };
    let (ds, ts) = after_meta(&prefix, meta_start)?;
    prescan(&prefix, ds, len.saturating_sub(ds as u64), &ts)?;
    file.seek(SeekFrom::Start(skip))?;
    let reader = file.by_ref();
    let p = parse_part10_reader(reader, Some(tags::PIXEL_DATA))?;
    Ok(p)
}

fn read_up_to(r: &mut impl Read, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut filled = 0;
    while filled < buf.len() {
        let n = r.read(&mut buf[filled..])?;
        if n == 0 {
            break;
        }
        filled += n;
    }
    Ok(filled)
}

fn parse_part10(bytes: &[u8], skip: usize, pixel_end: Option<usize>) -> Result<ParsedDataset, DicomError> {
    match parse_part10_reader(&bytes[skip..], None) {
        Ok(p) => Ok(p),
        Err(e) => {
            // Some writers pad files with a run of zero bytes after the data
            // set; zeros parse as bogus group-0000 elements and fail at the end.
            // When everything after Pixel Data is zeros, parse up to there and
            // say so (the stored bytes stay the original file's).
            if let Some(end) = pixel_end
                && end < bytes.len()
                && bytes[end..].iter().all(|b| *b == 0)
                && let Ok(mut p) = parse_part10_reader(&bytes[skip..end], None)
            {
                p.notes.push(format!(
                    "the file ends in {} zero bytes of padding after the data set",
                    bytes.len() - end
                ));
                return Ok(p);
            }
            Err(e)
        }
    }
}

fn parse_part10_reader<R: Read>(reader: R, until: Option<Tag>) -> Result<ParsedDataset, DicomError> {
    let mut opts = OpenFileOptions::new().read_preamble(ReadPreamble::Never);
    if let Some(tag) = until {
        opts = opts.read_until(tag);
    }
    let obj = opts
        .from_reader(reader)
        .map_err(|e| DicomError::Malformed(Malformed::Parse(Box::new(e))))?;
    let meta = obj.meta();
    let transfer_syntax = trim_uid(meta.transfer_syntax()).to_string();
    let meta_sop_class = Some(trim_uid(meta.media_storage_sop_class_uid()).to_string()).filter(|s| !s.is_empty());
    let meta_sop_instance = Some(trim_uid(meta.media_storage_sop_instance_uid()).to_string()).filter(|s| !s.is_empty());
    let mut notes = Vec::new();
    if meta.information_group_length == 0 {
        notes.push("file meta has no group length (0002,0000)".into());
    }
    let unparsed_tail = until.filter(|t| *t == tags::PIXEL_DATA).map(|_| 0);
    Ok(ParsedDataset {
        sop_class_hint: meta_sop_class.clone(),
        obj: obj.into_inner(),
        part10: true,
        transfer_syntax,
        meta_sop_class,
        meta_sop_instance,
        unparsed_tail,
        notes,
    })
}

fn parse_bare(bytes: &[u8], ts_uid: &'static str) -> Result<ParsedDataset, DicomError> {
    let ts = TransferSyntaxRegistry.get(ts_uid).ok_or_else(|| {
        DicomError::Malformed(Malformed::TransferSyntax {
            uid: ts_uid.to_string(),
        })
    })?;
    let obj = InMemDicomObject::read_dataset_with_ts(bytes, ts)
        .map_err(|e| DicomError::Malformed(Malformed::Parse(Box::new(e))))?;
    Ok(ParsedDataset {
        obj,
        part10: false,
        transfer_syntax: ts_uid.to_string(),
        meta_sop_class: None,
        meta_sop_instance: None,
        sop_class_hint: None,
        unparsed_tail: None,
        notes: vec![format!("no Part 10 header: a bare data set, read as {}", ts.name())],
    })
}

/// Joins an error with its sources into one line.
fn flatten_error(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut source = e.source();
    while let Some(inner) = source {
        let msg = inner.to_string();
        if !s.contains(&msg) {
            s.push_str(": ");
            s.push_str(&msg);
        }
        source = inner.source();
    }
    s
}

fn trim_uid(s: &str) -> &str {
    s.trim_end_matches(['\0', ' '])
}

/// The text of an attribute, trimmed; a known attribute encoded as UN is
/// read as its text.
pub(crate) fn str_of(obj: &InMemDicomObject, tag: Tag) -> Option<String> {
    let elem = obj.get(tag)?;
    let s: Cow<'_, str> = if elem.vr() == dicom_core::VR::UN {
        // Value of a known attribute encoded as UN (for example by a converter
        // that lost the VRs): its bytes are the attribute's text encoding.
        let bytes = elem.to_bytes().ok()?;
        Cow::Owned(bytes.iter().map(|&b| char::from(b)).collect())
    } else {
        elem.to_str().ok()?
    };
    let t = s.trim_matches(|c: char| c == '\0' || c.is_whitespace());
    Some(t.to_string())
}

fn keyword(tag: Tag) -> &'static str {
    dicom_dictionary_std::StandardDataDictionary
        .by_tag(tag)
        .map(|e| e.alias)
        .unwrap_or("(unknown attribute)")
}

fn required_uid(obj: &InMemDicomObject, tag: Tag, name: &'static str) -> Result<String, DicomError> {
    let value = str_of(obj, tag).ok_or(DicomError::Missing(name))?;
    check_uid(&value).map_err(|reason| DicomError::Invalid {
        attribute: name,
        reason: InvalidValue::Uid(reason),
    })?;
    Ok(value)
}

/// Why a text is not a UID.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum UidError {
    /// It is empty.
    #[error("is empty")]
    Empty,
    /// It is longer than 64 characters.
    #[error("{0} characters, over the 64 allowed")]
    TooLong(usize),
    /// A component between dots is empty.
    #[error("has an empty component")]
    EmptyComponent,
    /// It holds another character than digits and dots.
    #[error("contains {0:?}: a UID holds only digits and dots")]
    Character(char),
}

/// Checks UID syntax (PS3.5 §9.1): at most 64 characters, dot-separated
/// numeric components, no empty component. Leading zeros, which the standard
/// forbids but some devices write, are tolerated.
///
/// # Errors
/// [`UidError`]: what is wrong.
pub fn check_uid(uid: &str) -> Result<(), UidError> {
    if uid.is_empty() {
        return Err(UidError::Empty);
    }
    if uid.len() > 64 {
        return Err(UidError::TooLong(uid.len()));
    }
    if uid.split('.').any(|c| c.is_empty()) {
        return Err(UidError::EmptyComponent);
    }
    if let Some(c) = uid.chars().find(|c| !c.is_ascii_digit() && *c != '.') {
        return Err(UidError::Character(c));
    }
    Ok(())
}

fn optional_int(obj: &InMemDicomObject, tag: Tag, name: &'static str) -> Result<Option<i64>, DicomError> {
    let Some(elem) = obj.get(tag) else {
        return Ok(None);
    };
    if elem.is_empty() {
        return Ok(None);
    }
    elem.to_int::<i64>().map(Some).map_err(|e| DicomError::Invalid {
        attribute: name,
        reason: InvalidValue::NotANumber(e),
    })
}

fn validate(p: &ParsedDataset, file_len: u64) -> Result<ObjectInfo, DicomError> {
    let obj = &p.obj;
    let mut notes = p.notes.clone();
    if p.part10 {
        if p.transfer_syntax.is_empty() {
            return Err(DicomError::Missing("Transfer Syntax UID (0002,0010) in the file meta"));
        }
        if TransferSyntaxRegistry.get(&p.transfer_syntax).is_none() {
            return Err(DicomError::Invalid {
                attribute: "TransferSyntaxUID (0002,0010)",
                reason: InvalidValue::UnknownTransferSyntax {
                    uid: p.transfer_syntax.clone(),
                },
            });
        }
    }
    let sop_class_uid = required_uid(obj, tags::SOP_CLASS_UID, "SOP Class UID (0008,0016)")?;
    let sop_instance_uid = required_uid(obj, tags::SOP_INSTANCE_UID, "SOP Instance UID (0008,0018)")?;
    let study_uid = required_uid(obj, tags::STUDY_INSTANCE_UID, "Study Instance UID (0020,000D)")?;
    let series_uid = required_uid(obj, tags::SERIES_INSTANCE_UID, "Series Instance UID (0020,000E)")?;
    match &p.meta_sop_instance {
        Some(m) if *m != sop_instance_uid => {
            notes.push("MediaStorageSOPInstanceUID (0002,0003) differs from SOPInstanceUID (0008,0018); the data set's UID is used".into());
        }
        None if p.part10 => notes.push("file meta lacks MediaStorageSOPInstanceUID (0002,0003)".into()),
        _ => {}
    }
    match &p.meta_sop_class {
        Some(m) if *m != sop_class_uid => {
            notes.push(
                "MediaStorageSOPClassUID (0002,0002) differs from SOPClassUID (0008,0016); the data set's UID is used"
                    .into(),
            );
        }
        None if p.part10 => notes.push("file meta lacks MediaStorageSOPClassUID (0002,0002)".into()),
        _ => {}
    }
    let frames = check_pixels(p, file_len, &mut notes)?;
    let text = |tag| str_of(obj, tag).unwrap_or_default();
    Ok(ObjectInfo {
        part10: p.part10,
        transfer_syntax: p.transfer_syntax.clone(),
        sop_class_uid,
        sop_instance_uid,
        study_uid,
        series_uid,
        modality: text(tags::MODALITY),
        series_number: optional_int(obj, tags::SERIES_NUMBER, "SeriesNumber (0020,0011)")?,
        series_description: text(tags::SERIES_DESCRIPTION),
        instance_number: optional_int(obj, tags::INSTANCE_NUMBER, "InstanceNumber (0020,0013)")?,
        frames,
        study: StudyAttributes {
            patient_name: text(tags::PATIENT_NAME),
            patient_id: text(tags::PATIENT_ID),
            issuer_of_patient_id: text(tags::ISSUER_OF_PATIENT_ID),
            birth_date: text(tags::PATIENT_BIRTH_DATE),
            sex: text(tags::PATIENT_SEX),
            accession_number: text(tags::ACCESSION_NUMBER),
            study_id: text(tags::STUDY_ID),
            study_date: text(tags::STUDY_DATE),
            study_time: text(tags::STUDY_TIME),
            study_description: text(tags::STUDY_DESCRIPTION),
            referring_physician: text(tags::REFERRING_PHYSICIAN_NAME),
            institution: text(tags::INSTITUTION_NAME),
            admission_id: Some(text(tags::ADMISSION_ID)),
        },
        notes,
    })
}

/// Checks the attributes that size Pixel Data against Pixel Data itself;
/// returns the number of frames.
fn check_pixels(p: &ParsedDataset, file_len: u64, notes: &mut Vec<String>) -> Result<u32, DicomError> {
    let obj = &p.obj;
    let int = |tag: Tag| -> Result<Option<u64>, DicomError> {
        match optional_int(obj, tag, keyword(tag))? {
            None => Ok(None),
            Some(v) if v >= 0 => Ok(Some(v.unsigned_abs())),
            Some(v) => Err(DicomError::Invalid {
                attribute: keyword(tag),
                reason: InvalidValue::Negative { value: v },
            }),
        }
    };
    let frames = int(tags::NUMBER_OF_FRAMES)?.unwrap_or(1).max(1);
    let rows = int(tags::ROWS)?;
    let cols = int(tags::COLUMNS)?;
    let bits = int(tags::BITS_ALLOCATED)?;
    let spp = int(tags::SAMPLES_PER_PIXEL)?.unwrap_or(1);
    let frames32 = u32::try_from(frames).map_err(|_| DicomError::Invalid {
        attribute: "NumberOfFrames",
        reason: InvalidValue::Frames { frames },
    })?;
    let Some(pixel) = obj.get(tags::PIXEL_DATA) else {
        // Header-only parse of a large file: Pixel Data was not read. Native
        // (uncompressed, not deflated) pixel data must fit in the file.
        let native = TransferSyntaxRegistry.get(&p.transfer_syntax).is_some_and(|ts| {
            !ts.is_encapsulated_pixel_data() && !p.transfer_syntax.starts_with("1.2.840.10008.1.2.1.99")
        });
        if p.unparsed_tail.is_some()
            && native
            && let (Some(r), Some(c), Some(b)) = (rows, cols, bits)
        {
            let need = r * c * frames * spp * b / 8;
            if need > file_len {
                return Err(DicomError::Inconsistent(Inconsistency::FileTooShort { need, file_len }));
            }
        }
        return Ok(frames32);
    };
    match pixel.value() {
        Value::PixelSequence(seq) => {
            let fragments = seq.fragments();
            let Some(first) = fragments.first() else {
                return Err(DicomError::Malformed(Malformed::NoFragments));
            };
            // Every frame is encoded in one or more fragments (PS3.5 A.4), except
            // in the video transfer syntaxes, where one stream holds all frames.
            let video = VIDEO_TRANSFER_SYNTAXES.contains(&p.transfer_syntax.as_str());
            if !video && (fragments.len() as u64) < frames {
                return Err(DicomError::Inconsistent(Inconsistency::Fragments {
                    frames,
                    fragments: fragments.len(),
                }));
            }
            if let (Some(r), Some(c)) = (rows, cols)
                && let Some((h, w, n)) = codestream_dimensions(&p.transfer_syntax, first)?
                && ((h != 0 && u64::from(h) != r) || u64::from(w) != c || u64::from(n) != spp)
            {
                return Err(DicomError::Inconsistent(Inconsistency::FrameHeader {
                    width: w,
                    height: h,
                    components: n,
                    columns: c,
                    rows: r,
                    samples: spp,
                }));
            }
        }
        Value::Primitive(v) => {
            if let (Some(r), Some(c), Some(b)) = (rows, cols, bits) {
                let need_bits = r * c * frames * spp * b;
                let need = need_bits.div_ceil(8);
                let have = v.calculate_byte_len() as u64;
                if have == 0 && need > 0 {
                    // What dcmtk and Orthanc store too: the site keeps what it
                    // has, as it is, and is told.
                    notes.push(format!(
                        "WARNING: Pixel Data is empty although Rows x Columns x Frames x Samples x BitsAllocated need {need} bytes; stored as it is"
                    ));
                } else if have < need {
                    return Err(DicomError::Inconsistent(Inconsistency::PixelData { have, need }));
                }
            }
        }
        Value::Sequence(_) => {
            return Err(DicomError::Malformed(Malformed::PixelDataItems));
        }
    }
    Ok(frames32)
}

/// Walks the element structure of the data set before the DICOM parser sees
/// it, so that no declared length can make the parser allocate more than the
/// file holds (a 700-byte file could otherwise ask for 4 GiB), and so that
/// encodings the parser cannot read are refused with a clear reason.
/// `bytes` may be a prefix of the file (large files); lengths are checked
/// against `total`, the bytes the data set has in the file.
fn prescan(bytes: &[u8], start: usize, total: u64, ts: &str) -> Result<Option<usize>, DicomError> {
    let mode = match ts {
        uids::IMPLICIT_VR_LITTLE_ENDIAN => Mode {
            explicit: false,
            big: false,
        },
        EXPLICIT_VR_BIG_ENDIAN => Mode {
            explicit: true,
            big: true,
        },
        // Deflated data sets are inflated (bounded) and checked as explicit VR LE.
        uids::DEFLATED_EXPLICIT_VR_LITTLE_ENDIAN | "1.2.840.10008.1.2.8.1" => {
            if (bytes.len() as u64) < total.saturating_add(start as u64) {
                return Err(DicomError::Malformed(Malformed::DeflatedTooLarge));
            }
            let inflated = inflate(&bytes[start..], MAX_INFLATED)?;
            prescan(&inflated, 0, inflated.len() as u64, uids::EXPLICIT_VR_LITTLE_ENDIAN)?;
            return Ok(None);
        }
        // A missing transfer syntax is reported by the parser.
        "" => return Ok(None),
        _ => Mode {
            explicit: true,
            big: false,
        },
    };
    let total = total.saturating_add(start as u64);
    let whole = bytes.len() as u64 >= total;
    let mut w = Walker {
        b: bytes,
        pos: start,
        total,
        mode,
        pixel_end: None,
        pixel_start: None,
        whole,
    };
    w.elements(None, 0)?;
    Ok(w.pixel_end)
}

/// Where the top-level Pixel Data element of a Part 10 file is, when it is
/// the last element (only zero padding after it) and the data set is not
/// deflated: the data set's transfer syntax, the file offset after the
/// preamble (where the "DICM" magic starts), and the element's byte range
/// (header included). A de-identifier can then parse and rewrite what comes
/// before it and copy the pixel data element as it is.
#[must_use]
pub fn pixel_span(bytes: &[u8]) -> Option<PixelSpan> {
    let skip = match layout(bytes).ok()? {
        Layout::Preamble => 128,
        Layout::MagicOnly => 0,
        Layout::MetaOnly | Layout::Bare(_) => return None,
    };
    let (ds, ts) = after_meta(bytes, skip + 4).ok()?;
    let mode = match ts.as_str() {
        uids::IMPLICIT_VR_LITTLE_ENDIAN => Mode {
            explicit: false,
            big: false,
        },
        EXPLICIT_VR_BIG_ENDIAN => Mode {
            explicit: true,
            big: true,
        },
        uids::DEFLATED_EXPLICIT_VR_LITTLE_ENDIAN | "1.2.840.10008.1.2.8.1" | "" => return None,
        _ => Mode {
            explicit: true,
            big: false,
        },
    };
    let mut w = Walker {
        b: bytes,
        pos: ds,
        total: bytes.len() as u64,
        mode,
        pixel_end: None,
        pixel_start: None,
        whole: true,
    };
    w.elements(None, 0).ok()?;
    let (start, end) = (w.pixel_start?, w.pixel_end?);
    if !bytes[end..].iter().all(|b| *b == 0) {
        return None;
    }
    Some(PixelSpan {
        transfer_syntax: ts,
        skip,
        start,
        end,
    })
}

/// See [`pixel_span`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PixelSpan {
    /// Transfer syntax UID of the data set.
    pub transfer_syntax: String,
    /// Bytes before the "DICM" magic (128, or 0 without a preamble).
    pub skip: usize,
    /// Offset of the Pixel Data element (its tag).
    pub start: usize,
    /// Offset just after it.
    pub end: usize,
}

#[derive(Clone, Copy)]
struct Mode {
    explicit: bool,
    big: bool,
}

struct Walker<'a> {
    b: &'a [u8],
    pos: usize,
    /// Length of the whole data set in the file (may exceed `b.len()`).
    total: u64,
    mode: Mode,
    /// Where the top-level Pixel Data element ends.
    pixel_end: Option<usize>,
    /// Where the top-level Pixel Data element's header starts.
    pixel_start: Option<usize>,
    /// True when `b` is the whole file (not a prefix of a large one).
    whole: bool,
}

const UNDEFINED: u32 = 0xFFFF_FFFF;
/// Largest inflated size of a deflated data set (1 GiB).
const MAX_INFLATED: u64 = 1 << 30;
const MAX_DEPTH: usize = 32;

impl Walker<'_> {
    /// The bytes ran out inside a structure: an error for a whole file, the
    /// end of what can be checked for a prefix.
    fn ran_out(&self, inside: &'static str) -> Result<(), DicomError> {
        if self.whole {
            Err(DicomError::Malformed(Malformed::EndsInside { inside }))
        } else {
            Ok(())
        }
    }

    /// Fewer bytes than an element header left: zero padding at the end of
    /// the data set is allowed, anything else in a whole file is cut short.
    fn short_header(&self, depth: usize) -> Result<(), DicomError> {
        if depth == 0 && self.b.get(self.pos..).is_some_and(|rest| rest.iter().all(|b| *b == 0)) {
            return Ok(());
        }
        self.ran_out("an element header")
    }

    fn u16(&self, at: usize, big: bool) -> Option<u16> {
        let s = self.b.get(at..at + 2)?;
        Some(if big {
            u16::from_be_bytes([s[0], s[1]])
        } else {
            u16::from_le_bytes([s[0], s[1]])
        })
    }

    fn u32(&self, at: usize, big: bool) -> Option<u32> {
        let s = self.b.get(at..at + 4)?;
        let a = [s[0], s[1], s[2], s[3]];
        Some(if big {
            u32::from_be_bytes(a)
        } else {
            u32::from_le_bytes(a)
        })
    }

    fn fits(&self, tag: (u16, u16), len: u32) -> Result<(), DicomError> {
        if self.pos as u64 + u64::from(len) > self.total {
            return Err(DicomError::Malformed(Malformed::Overrun {
                tag,
                len,
                remain: self.total.saturating_sub(self.pos as u64),
            }));
        }
        Ok(())
    }

    /// Walks elements until `end` (a defined-length item), an item
    /// delimiter (undefined-length item), or the end of the data set.
    fn elements(&mut self, end: Option<usize>, depth: usize) -> Result<(), DicomError> {
        if depth > MAX_DEPTH {
            return Err(DicomError::Malformed(Malformed::TooDeep { max: MAX_DEPTH }));
        }
        let mode = self.mode;
        loop {
            if end.is_some_and(|e| self.pos >= e) {
                return Ok(());
            }
            let (Some(group), Some(elem)) = (self.u16(self.pos, mode.big), self.u16(self.pos + 2, mode.big)) else {
                // The end of the data set (or of the prefix we were given);
                // inside an undefined-length item it is a truncation.
                return if depth > 0 && end.is_none() {
                    self.ran_out("a sequence item")
                } else {
                    Ok(())
                };
            };
            if group == 0xFFFE {
                // An item delimiter ends an undefined-length item, and nothing else.
                let inside_item = depth > 0 && end.is_none();
                let (Some(_), true) = (self.u32(self.pos + 4, mode.big), elem == 0xE00D && inside_item) else {
                    return Err(DicomError::Malformed(Malformed::UnexpectedItem { elem }));
                };
                self.pos += 8; // item delimitation item
                return Ok(());
            }
            let tag = (group, elem);
            let (vr, len, header) = if mode.explicit {
                let vr = [
                    self.b.get(self.pos + 4).copied().unwrap_or(0),
                    self.b.get(self.pos + 5).copied().unwrap_or(0),
                ];
                let long = has_long_length(vr);
                let len = if long {
                    self.u32(self.pos + 8, mode.big)
                } else {
                    self.u16(self.pos + 6, mode.big).map(u32::from)
                };
                let Some(len) = len else {
                    return self.short_header(depth);
                };
                (vr, len, if long { 12 } else { 8 })
            } else {
                let Some(len) = self.u32(self.pos + 4, mode.big) else {
                    return self.short_header(depth);
                };
                (*b"??", len, 8)
            };
            let pixel = depth == 0 && tag == (0x7FE0, 0x0010);
            if pixel {
                self.pixel_start = Some(self.pos);
            }
            self.pos += header;
            if len != UNDEFINED {
                self.fits(tag, len)?;
                self.pos += len as usize;
                if pixel {
                    self.pixel_end = Some(self.pos);
                }
                continue;
            }
            if &vr == b"UN" {
                return Err(DicomError::Malformed(Malformed::UnSequence { tag: (group, elem) }));
            }
            if tag == (0x7FE0, 0x0010) {
                self.fragments()?;
                if pixel {
                    self.pixel_end = Some(self.pos);
                }
            } else {
                self.sequence(depth)?;
            }
        }
    }

    /// Reads an item, item delimiter or sequence delimiter header (tag and
    /// 32-bit length, in the data set's byte order) and moves past it.
    fn item_header(&mut self) -> Option<(u16, u16, u32)> {
        let big = self.mode.big;
        let header = (
            self.u16(self.pos, big)?,
            self.u16(self.pos + 2, big)?,
            self.u32(self.pos + 4, big)?,
        );
        self.pos += 8;
        Some(header)
    }

    /// Items of an undefined-length sequence, up to its delimiter.
    fn sequence(&mut self, depth: usize) -> Result<(), DicomError> {
        loop {
            let Some((g, e, len)) = self.item_header() else {
                return self.ran_out("a sequence");
            };
            match (g, e) {
                (0xFFFE, 0xE0DD) => return Ok(()),
                (0xFFFE, 0xE000) if len == UNDEFINED => self.elements(None, depth + 1)?,
                (0xFFFE, 0xE000) => {
                    self.fits((g, e), len)?;
                    let end = self.pos + len as usize;
                    self.elements(Some(end), depth + 1)?;
                    self.pos = end;
                }
                _ => {
                    return Err(DicomError::Malformed(Malformed::ExpectedItem { found: (g, e) }));
                }
            }
        }
    }

    /// Fragments of encapsulated Pixel Data, up to the sequence delimiter.
    fn fragments(&mut self) -> Result<(), DicomError> {
        loop {
            let Some((g, e, len)) = self.item_header() else {
                return self.ran_out("encapsulated Pixel Data");
            };
            match (g, e) {
                (0xFFFE, 0xE0DD) => return Ok(()),
                (0xFFFE, 0xE000) if len != UNDEFINED => {
                    self.fits((g, e), len)?;
                    self.pos += len as usize;
                }
                _ => {
                    return Err(DicomError::Malformed(Malformed::ExpectedFragment { found: (g, e) }));
                }
            }
        }
    }
}

/// VRs whose explicit-VR header has a 16-bit length (PS3.5 §7.1.2). Every
/// other VR, unknown ones included, has two reserved bytes and a 32-bit
/// length, which is also how the parser reads an unknown VR (as UN).
fn has_long_length(vr: [u8; 2]) -> bool {
    !matches!(
        &vr,
        b"AE"
            | b"AS"
            | b"AT"
            | b"CS"
            | b"DA"
            | b"DS"
            | b"DT"
            | b"FL"
            | b"FD"
            | b"IS"
            | b"LO"
            | b"LT"
            | b"PN"
            | b"SH"
            | b"SL"
            | b"SS"
            | b"ST"
            | b"TM"
            | b"UI"
            | b"UL"
            | b"US"
    )
}

/// Where the data set starts after the file meta group (explicit VR little
/// endian, PS3.10 §7.1), and the transfer syntax the meta names. The group's
/// end is taken from File Meta Information Group Length when present (as
/// the parser does), else from the first element of another group.
///
/// # Errors
/// [`DicomError::Malformed`] when the group cannot be walked.
fn after_meta(bytes: &[u8], start: usize) -> Result<(usize, String), DicomError> {
    let bad = |why: MetaFault| DicomError::Malformed(Malformed::Meta(why));
    let mut pos = start;
    let mut ts = String::new();
    let mut end: Option<usize> = None;
    loop {
        if end.is_some_and(|e| pos >= e) {
            return match end {
                Some(e) if pos == e => Ok((pos, ts)),
                _ => Err(bad(MetaFault::Overrun)),
            };
        }
        let s = bytes.get(pos..pos + 8).ok_or_else(|| bad(MetaFault::EndsInside))?;
        let group = u16::from_le_bytes([s[0], s[1]]);
        let elem = u16::from_le_bytes([s[2], s[3]]);
        if group != 0x0002 {
            return match end {
                None => Ok((pos, ts)),
                Some(_) => Err(bad(MetaFault::OtherGroup)),
            };
        }
        let (len, header) = if has_long_length([s[4], s[5]]) {
            let l = bytes.get(pos + 8..pos + 12).ok_or_else(|| bad(MetaFault::EndsInside))?;
            (u32::from_le_bytes([l[0], l[1], l[2], l[3]]) as usize, 12)
        } else {
            (usize::from(u16::from_le_bytes([s[6], s[7]])), 8)
        };
        let value = bytes
            .get(pos + header..(pos + header).saturating_add(len))
            .ok_or_else(|| bad(MetaFault::PastEnd { elem, len }))?;
        match elem {
            0x0000 if pos == start && len == 4 => {
                let v = u32::from_le_bytes([value[0], value[1], value[2], value[3]]) as usize;
                end = Some((pos + header + len).saturating_add(v));
            }
            0x0010 => ts = String::from_utf8_lossy(value).trim_end_matches(['\0', ' ']).to_string(),
            _ => {}
        }
        pos += header + len;
    }
}

/// Inflates a deflated data set (PS3.5 A.5: raw deflate, RFC 1951) for the
/// structural pre-scan, refusing output beyond `limit` bytes.
fn inflate(compressed: &[u8], limit: u64) -> Result<Vec<u8>, DicomError> {
    let mut out = Vec::new();
    flate2::read::DeflateDecoder::new(compressed)
        .take(limit + 1)
        .read_to_end(&mut out)
        .map_err(|e| DicomError::Malformed(Malformed::Inflate(e)))?;
    if out.len() as u64 > limit {
        return Err(DicomError::Malformed(Malformed::Inflated { limit }));
    }
    Ok(out)
}

/// MPEG-2, MPEG-4 and HEVC transfer syntaxes: one stream for all frames.
const VIDEO_TRANSFER_SYNTAXES: &[&str] = &[
    "1.2.840.10008.1.2.4.100",
    "1.2.840.10008.1.2.4.100.1",
    "1.2.840.10008.1.2.4.101",
    "1.2.840.10008.1.2.4.101.1",
    "1.2.840.10008.1.2.4.102",
    "1.2.840.10008.1.2.4.102.1",
    "1.2.840.10008.1.2.4.103",
    "1.2.840.10008.1.2.4.103.1",
    "1.2.840.10008.1.2.4.104",
    "1.2.840.10008.1.2.4.104.1",
    "1.2.840.10008.1.2.4.105",
    "1.2.840.10008.1.2.4.105.1",
    "1.2.840.10008.1.2.4.106",
    "1.2.840.10008.1.2.4.106.1",
    "1.2.840.10008.1.2.4.107",
    "1.2.840.10008.1.2.4.108",
];

/// Reads (height, width, components) from the header of the first compressed
/// frame: the SOF segment of JPEG (ITU T.81 B.2.2) and JPEG-LS (T.87 C.2.2),
/// or the SIZ segment of a JPEG 2000 codestream (T.800 A.5.1). `None` when
/// the transfer syntax is not one of those or the frame is wrapped in a JP2
/// file format box.
fn codestream_dimensions(ts: &str, frame: &[u8]) -> Result<Option<(u32, u32, u32)>, DicomError> {
    let bad = |why: CodestreamFault| DicomError::Malformed(Malformed::Codestream(why));
    let be16 = |b: &[u8], i: usize| b.get(i..i + 2).map(|s| u32::from(u16::from_be_bytes([s[0], s[1]])));
    let be32 = |b: &[u8], i: usize| b.get(i..i + 4).map(|s| u32::from_be_bytes([s[0], s[1], s[2], s[3]]));
    let jpeg = ts.starts_with("1.2.840.10008.1.2.4.") && {
        let last: u32 = ts.rsplit('.').next().and_then(|x| x.parse().ok()).unwrap_or(0);
        (50..=81).contains(&last)
    };
    let j2k = matches!(
        ts,
        "1.2.840.10008.1.2.4.90"
            | "1.2.840.10008.1.2.4.91"
            | "1.2.840.10008.1.2.4.201"
            | "1.2.840.10008.1.2.4.202"
            | "1.2.840.10008.1.2.4.203"
    );
    if j2k {
        if frame.starts_with(&[0, 0, 0, 0x0c, 0x6a, 0x50, 0x20, 0x20]) {
            return Ok(None);
        }
        if !frame.starts_with(&[0xff, 0x4f, 0xff, 0x51]) {
            return Err(bad(CodestreamFault::J2kMarkers));
        }
        let field = |i| be32(frame, i).ok_or_else(|| bad(CodestreamFault::J2kSiz));
        let (xsiz, ysiz, xo, yo) = (field(8)?, field(12)?, field(16)?, field(20)?);
        let csiz = be16(frame, 40).ok_or_else(|| bad(CodestreamFault::J2kSiz))?;
        if xo > xsiz || yo > ysiz {
            return Err(bad(CodestreamFault::J2kOffset));
        }
        return Ok(Some((ysiz - yo, xsiz - xo, csiz)));
    }
    if jpeg {
        if !frame.starts_with(&[0xff, 0xd8]) {
            return Err(bad(CodestreamFault::JpegSoi));
        }
        let mut i = 2usize;
        while i + 4 <= frame.len() {
            if frame[i] != 0xff {
                return Err(bad(CodestreamFault::JpegSync));
            }
            let marker = frame[i + 1];
            if marker == 0xff {
                i += 1;
                continue;
            }
            let len = be16(frame, i + 2).ok_or_else(|| bad(CodestreamFault::JpegSegment))? as usize;
            let is_sof = matches!(marker, 0xc0..=0xcf) && !matches!(marker, 0xc4 | 0xc8 | 0xcc) || marker == 0xf7;
            if is_sof {
                let h = be16(frame, i + 5).ok_or_else(|| bad(CodestreamFault::JpegSof))?;
                let w = be16(frame, i + 7).ok_or_else(|| bad(CodestreamFault::JpegSof))?;
                let n = frame
                    .get(i + 9)
                    .map(|b| u32::from(*b))
                    .ok_or_else(|| bad(CodestreamFault::JpegSof))?;
                return Ok(Some((h, w, n)));
            }
            if marker == 0xda {
                break;
            }
            i += 2 + len;
        }
        return Err(bad(CodestreamFault::NoSof));
    }
    Ok(None)
}

fn dicomdir_references(obj: &InMemDicomObject, path: &Path) -> Vec<PathBuf> {
    let base = path.parent().unwrap_or_else(|| Path::new("."));
    let mut out = Vec::new();
    let Some(seq) = obj.get(tags::DIRECTORY_RECORD_SEQUENCE).and_then(|e| e.items()) else {
        return out;
    };
    for item in seq {
        let Some(id) = item.get(tags::REFERENCED_FILE_ID) else {
            continue;
        };
        let Ok(parts) = id.to_multi_str() else {
            continue;
        };
        let mut p = base.to_path_buf();
        let mut ok = false;
        for part in parts.iter() {
            let part = part.trim();
            if part.is_empty() || part == ".." || part.contains('/') {
                ok = false;
                break;
            }
            p.push(part);
            ok = true;
        }
        if ok {
            out.push(p);
        }
    }
    out
}

#[cfg(test)]
mod tests;
