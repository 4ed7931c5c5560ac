//! Tests of `dicom` (moved out of dicom.rs).
use dicom_core::value::PrimitiveValue;
use dicom_core::{DataElement, VR};
use dicom_object::meta::FileMetaTableBuilder;

use super::*;

const CT: &str = "1.2.840.10008.5.1.4.1.1.2";

/// A small CT object as Part 10 bytes: 4x4, 16 bits, with `pixels` as
/// Pixel Data; `without` leaves out one attribute.
fn ct(pixels: Vec<u8>, without: Option<Tag>) -> Vec<u8> {
    let mut obj = InMemDicomObject::new_empty();
    for (tag, vr, v) in [
        (tags::SOP_CLASS_UID, VR::UI, CT),
        (tags::SOP_INSTANCE_UID, VR::UI, "1.2.3.4.5"),
        (tags::STUDY_INSTANCE_UID, VR::UI, "1.2.3.4"),
        (tags::SERIES_INSTANCE_UID, VR::UI, "1.2.3.4.1"),
        (tags::MODALITY, VR::CS, "CT"),
        (tags::PATIENT_ID, VR::LO, "P1"),
    ] {
        if Some(tag) != without {
            obj.put(DataElement::new(tag, vr, PrimitiveValue::from(v)));
        }
    }
    for (tag, v) in [
        (tags::ROWS, 4u16),
        (tags::COLUMNS, 4),
        (tags::BITS_ALLOCATED, 16),
        (tags::BITS_STORED, 16),
        (tags::HIGH_BIT, 15),
        (tags::SAMPLES_PER_PIXEL, 1),
        (tags::PIXEL_REPRESENTATION, 0),
    ] {
        obj.put(DataElement::new(tag, VR::US, PrimitiveValue::from(v)));
    }
    obj.put(DataElement::new(
        tags::PHOTOMETRIC_INTERPRETATION,
        VR::CS,
        PrimitiveValue::from("MONOCHROME2"),
    ));
    obj.put(DataElement::new(tags::PIXEL_DATA, VR::OW, PrimitiveValue::from(pixels)));
    let meta = FileMetaTableBuilder::new()
        .media_storage_sop_class_uid(CT)
        .media_storage_sop_instance_uid("1.2.3.4.5")
        .transfer_syntax(uids::EXPLICIT_VR_LITTLE_ENDIAN)
        .build()
        .unwrap();
    let mut out = Vec::new();
    obj.with_exact_meta(meta).write_all(&mut out).unwrap();
    out
}

#[test]
fn a_missing_uid_is_named_as_missing() {
    assert!(parse_and_validate(&ct(vec![0; 32], None)).is_ok());
    for (tag, name) in [
        (tags::STUDY_INSTANCE_UID, "has no Study Instance UID (0020,000D)"),
        (tags::SERIES_INSTANCE_UID, "has no Series Instance UID (0020,000E)"),
        (tags::SOP_INSTANCE_UID, "has no SOP Instance UID (0008,0018)"),
    ] {
        let e = parse_and_validate(&ct(vec![0; 32], Some(tag))).unwrap_err().to_string();
        assert_eq!(e, name);
    }
    assert_eq!(check_uid("").map_err(|e| e.to_string()), Err("is empty".to_string()));
}

#[test]
fn empty_pixel_data_is_kept_with_a_warning_short_pixel_data_is_not() {
    let info = parse_and_validate(&ct(Vec::new(), None)).unwrap();
    assert!(
        info.notes.iter().any(|n| n.starts_with("WARNING: Pixel Data is empty")),
        "{:?}",
        info.notes
    );
    let e = parse_and_validate(&ct(vec![0; 8], None)).unwrap_err().to_string();
    assert!(e.starts_with("inconsistent: Pixel Data holds 8 bytes"), "{e}");
}

#[test]
fn uid_syntax() {
    assert!(check_uid("1.2.840.10008.5.1.4.1.1.2").is_ok());
    assert!(check_uid("1.2.3.0").is_ok());
    assert!(check_uid("1.2..3").is_err());
    assert!(check_uid("1.2.3a").is_err());
    assert!(check_uid(&"1.".repeat(40)).is_err());
    assert!(check_uid("abcdef0123").is_err());
}

#[test]
fn layouts() {
    assert!(matches!(layout(b"junk junk junk"), Err(DicomError::NotDicom(_))));
    assert!(matches!(
        layout(&[0x08, 0x00, 0x05, 0x00, b'C', b'S', 0x0a, 0x00]),
        Ok(Layout::Bare(uids::EXPLICIT_VR_LITTLE_ENDIAN))
    ));
    assert!(matches!(
        layout(&[0x08, 0x00, 0x05, 0x00, 0x0a, 0x00, 0x00, 0x00]),
        Ok(Layout::Bare(uids::IMPLICIT_VR_LITTLE_ENDIAN))
    ));
    assert!(matches!(
        layout(&[0x00, 0x08, 0x00, 0x05, b'C', b'S', 0x00, 0x0a]),
        Ok(Layout::Bare(EXPLICIT_VR_BIG_ENDIAN))
    ));
    // A stray byte before the first element shifts the tag out of range.
    assert!(layout(&[0x20, 0x08, 0x00, 0x05, 0x00, b'C', b'S', 0x0a]).is_err());
}
