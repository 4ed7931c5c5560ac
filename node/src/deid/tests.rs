//! Tests generated from Table E.1-1: synthetic objects carrying every
//! attribute of the table, the corpus files, references between objects,
//! pixels, private attributes, and properties of the keyed mappings.
#![allow(clippy::unwrap_used, clippy::cast_possible_truncation)]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use dicom_core::dictionary::{DataDictionary, DataDictionaryEntry, VirtualVr};
use dicom_core::header::{HasLength, Header};
use dicom_core::value::{DataSetSequence, PrimitiveValue, Value};
use dicom_core::{DataElement, Length, Tag, VR};
use dicom_dictionary_std::{StandardDataDictionary, tags, uids};
use dicom_object::InMemDicomObject;
use dicom_object::meta::FileMetaTableBuilder;
use proptest::prelude::*;

use super::table::{Action, Pattern};
use super::*;

const CT_CIOD_SOP: &str = uids::CT_IMAGE_STORAGE;

fn vr_of(tag: Tag) -> VR {
    match StandardDataDictionary.by_tag(tag).map(DataDictionaryEntry::vr) {
        Some(VirtualVr::Exact(vr)) => vr,
        Some(VirtualVr::Xs) => VR::US,
        Some(_) => VR::OW,
        None => VR::UN,
    }
}

/// A value of `vr` that is recognisable in the output, unique per tag.
fn value_for(tag: Tag, vr: VR) -> Value<InMemDicomObject> {
    let id = format!("{:04X}{:04X}", tag.group(), tag.element());
    Value::Primitive(match vr {
        VR::DA => PrimitiveValue::from("20240315"),
        VR::DT => PrimitiveValue::from("20240315101112"),
        VR::TM => PrimitiveValue::from("101112"),
        VR::UI => PrimitiveValue::from(format!(
            "1.2.826.0.1.3680043.99.{}",
            u32::from(tag.group()) * 65536 + u32::from(tag.element())
        )),
        VR::AS => PrimitiveValue::from("042Y"),
        VR::DS => PrimitiveValue::from("1.5"),
        VR::IS => PrimitiveValue::from("7"),
        VR::CS => PrimitiveValue::from(format!("V{id}")),
        VR::AE => PrimitiveValue::from(format!("AE{id}")),
        VR::PN => PrimitiveValue::from(format!("Name{id}^Given")),
        VR::US => PrimitiveValue::from(7u16),
        VR::SS => PrimitiveValue::from(7i16),
        VR::UL => PrimitiveValue::from(7u32),
        VR::SL => PrimitiveValue::from(7i32),
        VR::FL => PrimitiveValue::from(7f32),
        VR::FD => PrimitiveValue::from(7f64),
        VR::AT => PrimitiveValue::Tags([tags::PATIENT_ID].into_iter().collect()),
        VR::OB | VR::OW | VR::UN | VR::OF | VR::OD | VR::OL | VR::OV => {
            PrimitiveValue::U8([1u8, 2, 3, 4].into_iter().collect())
        }
        _ => PrimitiveValue::from(format!("text {id}")),
    })
}

/// An item holding one UID reference, for sequences.
fn ref_item() -> InMemDicomObject {
    InMemDicomObject::from_element_iter([
        DataElement::new(
            tags::REFERENCED_SOP_CLASS_UID,
            VR::UI,
            PrimitiveValue::from(CT_CIOD_SOP),
        ),
        DataElement::new(
            tags::REFERENCED_SOP_INSTANCE_UID,
            VR::UI,
            PrimitiveValue::from("1.2.826.0.1.3680043.99.777"),
        ),
    ])
}

/// A CT object that carries every attribute of Table E.1-1 with its own
/// tag (not the file meta group), and the attributes a CT needs.
fn synthetic() -> InMemDicomObject {
    let t = tables().unwrap();
    let mut obj = InMemDicomObject::new_empty();
    for (tag, _) in t.exact_rows() {
        if tag.group() <= 0x0002 {
            continue;
        }
        let vr = vr_of(*tag);
        let elem = if vr == VR::SQ {
            DataElement::new(
                *tag,
                VR::SQ,
                Value::from(DataSetSequence::new(vec![ref_item()], Length::UNDEFINED)),
            )
        } else {
            DataElement::new(*tag, vr, value_for(*tag, vr))
        };
        obj.put(elem);
    }
    for (tag, vr, v) in [
        (tags::SOP_CLASS_UID, VR::UI, CT_CIOD_SOP),
        (tags::MODALITY, VR::CS, "CT"),
        (tags::PATIENT_ID, VR::LO, "PID-SYNTH-0001"),
        (tags::ISSUER_OF_PATIENT_ID, VR::LO, "SYNTH HOSPITAL"),
        (tags::PATIENT_NAME, VR::PN, "Doe^Jane"),
    ] {
        obj.put(DataElement::new(tag, vr, PrimitiveValue::from(v)));
    }
    obj
}

fn part10(obj: InMemDicomObject) -> Vec<u8> {
    let sop = obj.get(tags::SOP_INSTANCE_UID).unwrap().to_str().unwrap().to_string();
    let meta = FileMetaTableBuilder::new()
        .media_storage_sop_class_uid(CT_CIOD_SOP)
        .media_storage_sop_instance_uid(sop.trim_end_matches('\0'))
        .transfer_syntax(uids::EXPLICIT_VR_LITTLE_ENDIAN)
        .build()
        .unwrap();
    let mut out = Vec::new();
    obj.with_exact_meta(meta).write_all(&mut out).unwrap();
    out
}

fn profile(level: DeidLevel, options: &[DeidOption]) -> Profile {
    Profile::new(level, options, Vec::new()).unwrap()
}

fn read(bytes: &[u8]) -> InMemDicomObject {
    crate::dicom::parse_whole(bytes).unwrap().0
}

/// Attributes the de-identifier itself sets, whatever the table says.
fn set_by_us(tag: Tag) -> bool {
    [
        tags::PATIENT_NAME,
        tags::PATIENT_ID,
        tags::PATIENT_IDENTITY_REMOVED,
        tags::DEIDENTIFICATION_METHOD,
        tags::DEIDENTIFICATION_METHOD_CODE_SEQUENCE,
        tags::LONGITUDINAL_TEMPORAL_INFORMATION_MODIFIED,
        tags::BURNED_IN_ANNOTATION,
    ]
    .contains(&tag)
}

/// Checks that every table attribute of `input` (top level) got the action
/// the table requires in `output`; returns the actions seen.
fn check_actions(
    input: &InMemDicomObject,
    output: &InMemDicomObject,
    p: &Profile,
    keys: &DeidKeys,
    what: &str,
) -> BTreeMap<&'static str, usize> {
    let t = tables().unwrap();
    let sop = str_at(input, tags::SOP_CLASS_UID);
    let ciod = t.ciod(&sop);
    let mut seen = BTreeMap::new();
    for e in input.iter() {
        let tag = e.tag();
        if set_by_us(tag) || tag.group() % 2 == 1 {
            continue;
        }
        let Some(row) = t.row(tag) else { continue };
        let ty = ciod.and_then(|c| t.attr_type(c, &[tag]));
        let action = row.action(p.options(), ty);
        let out = output.get(tag);
        let label = format!("{what}: {tag} {} ({}, {action:?})", row.keyword, row.basic.code());
        match action {
            Action::Remove => assert!(out.is_none(), "{label}: still present"),
            Action::Zero => {
                let o = out.unwrap_or_else(|| panic!("{label}: removed"));
                match o.value() {
                    Value::Sequence(s) => assert!(s.items().is_empty(), "{label}: items left"),
                    v => assert!(
                        v.to_str()
                            .map(|s| s.trim_matches(['\0', ' ']).is_empty())
                            .unwrap_or(true),
                        "{label}: not empty"
                    ),
                }
            }
            Action::Keep => {
                let o = out.unwrap_or_else(|| panic!("{label}: removed"));
                if e.vr() != VR::SQ {
                    assert_eq!(o.to_str().ok(), e.to_str().ok(), "{label}: changed");
                }
            }
            Action::Dummy => {
                let o = out.unwrap_or_else(|| panic!("{label}: removed"));
                if e.vr() != VR::SQ {
                    let s = o.to_str().map(|s| s.to_string()).unwrap_or_default();
                    assert!(!o.value().is_empty() || !s.is_empty(), "{label}: empty");
                    if e.vr() != VR::UI
                        && matches!(
                            e.vr(),
                            VR::PN | VR::LO | VR::SH | VR::LT | VR::ST | VR::UT | VR::DA | VR::DT
                        )
                    {
                        assert_ne!(Some(s), e.to_str().ok().map(|s| s.to_string()), "{label}: unchanged");
                    }
                }
            }
            Action::Uid => {
                let o = out.unwrap_or_else(|| panic!("{label}: removed"));
                if e.vr() == VR::UI {
                    let before = str_at(input, tag);
                    let after = str_at(output, tag);
                    if !before.is_empty() && !super::is_standard_uid(&before) {
                        assert_eq!(after, keys.map_uid(&before), "{label}: not the keyed mapping");
                    }
                } else {
                    assert!(o.value().length() != Length(0) || o.vr() == VR::SQ, "{label}: empty");
                }
            }
            Action::Clean => {
                if e.vr() == VR::DA && p.options().contains(&DeidOption::RetainLongModifiedDates) {
                    let o = out.unwrap_or_else(|| panic!("{label}: removed"));
                    let before = str_at(input, tag);
                    let after = o.to_str().unwrap().trim().to_string();
                    if before.len() == 8 {
                        let shift = keys.date_shift(
                            &str_at(input, tags::ISSUER_OF_PATIENT_ID),
                            &str_at(input, tags::PATIENT_ID),
                        );
                        assert_eq!(
                            after,
                            super::shift_value(VR::DA, &before, shift),
                            "{label}: not shifted"
                        );
                        assert_ne!(after, before, "{label}: unchanged");
                    }
                }
            }
        }
        *seen
            .entry(match action {
                Action::Remove => "X",
                Action::Zero => "Z",
                Action::Keep => "K",
                Action::Dummy => "D",
                Action::Uid => "U",
                Action::Clean => "C",
            })
            .or_insert(0) += 1;
    }
    seen
}

#[test]
fn the_table_loads_every_row_and_matches_the_spot_checks() {
    let t = tables().unwrap();
    assert_eq!(t.len(), 656);
    let basic = |tag: Tag| t.row(tag).unwrap().basic.code();
    assert_eq!(basic(tags::PATIENT_NAME), "Z");
    assert_eq!(basic(tags::PATIENT_ID), "Z/D");
    assert_eq!(basic(tags::STUDY_DATE), "Z");
    assert_eq!(basic(tags::INSTITUTION_NAME), "X/Z/D");
    assert_eq!(basic(tags::STUDY_INSTANCE_UID), "U");
    assert_eq!(basic(tags::REFERENCED_IMAGE_SEQUENCE), "X/Z/U*");
    assert_eq!(basic(Tag(0x6002, 0x3000)), "X");
    assert_eq!(basic(Tag(0x0029, 0x1010)), "X");
    let opt = |tag: Tag, o: DeidOption| t.row(tag).unwrap().action(&[o], None);
    assert_eq!(
        opt(tags::PATIENT_SEX, DeidOption::RetainPatientCharacteristics),
        Action::Keep
    );
    assert_eq!(
        opt(tags::STUDY_DATE, DeidOption::RetainLongModifiedDates),
        Action::Clean
    );
    assert_eq!(
        opt(tags::STUDY_DESCRIPTION, DeidOption::CleanDescriptors),
        Action::Clean
    );
    assert_eq!(
        opt(tags::INSTITUTION_NAME, DeidOption::RetainInstitutionIdentity),
        Action::Keep
    );
    assert_eq!(opt(tags::STATION_NAME, DeidOption::RetainDeviceIdentity), Action::Keep);
    assert!(matches!(t.row(Tag(0x0009, 0x0010)).unwrap().pattern, Pattern::Private));
    assert!(t.ciod(CT_CIOD_SOP).is_some(), "CT Image Storage has its IOD");
}

#[test]
fn combined_codes_resolve_by_type_as_the_standard_says() {
    use super::table::{AttrType, Basic};
    // (code, Type 1, Type 2, Type 3 or absent)
    let cases = [
        (Basic::ZD, Action::Dummy, Action::Zero, Action::Zero),
        (Basic::XD, Action::Dummy, Action::Dummy, Action::Remove),
        (Basic::XZ, Action::Zero, Action::Zero, Action::Remove),
        (Basic::XZD, Action::Dummy, Action::Zero, Action::Remove),
        (Basic::XZU, Action::Uid, Action::Zero, Action::Remove),
    ];
    for (code, one, two, three) in cases {
        assert_eq!(code.resolve(Some(AttrType::One)), one, "{}", code.code());
        assert_eq!(code.resolve(Some(AttrType::Two)), two, "{}", code.code());
        assert_eq!(code.resolve(Some(AttrType::Three)), three, "{}", code.code());
        assert_eq!(code.resolve(None), three, "{} absent from the IOD", code.code());
    }
}

#[test]
fn every_table_attribute_gets_its_action_under_every_option() {
    let input = synthetic();
    let bytes = part10(input.clone());
    let mut runs = vec![Vec::new()];
    runs.extend(
        DeidOption::ALL
            .iter()
            .filter(|o| **o != DeidOption::RetainUids)
            .map(|o| vec![*o]),
    );
    runs.push(vec![DeidOption::RetainUids]);
    for options in runs {
        let level = if options.contains(&DeidOption::RetainUids) {
            DeidLevel::Pseudonymised
        } else {
            DeidLevel::Anonymised
        };
        let p = profile(level, &options);
        let keys = DeidKeys::from_secret(&[5u8; 32]);
        let out = deidentify(&bytes, &p, &keys).unwrap();
        let obj = read(&out.bytes);
        let seen = check_actions(&input, &obj, &p, &keys, &format!("{options:?}"));
        assert!(seen.values().sum::<usize>() > 600, "{options:?}: {seen:?}");
        // The identity attributes are set.
        assert_eq!(str_at(&obj, tags::PATIENT_IDENTITY_REMOVED), "YES");
        assert_eq!(str_at(&obj, tags::PATIENT_ID), out.patient.pseudonym);
        let codes = obj.get(tags::DEIDENTIFICATION_METHOD_CODE_SEQUENCE).unwrap();
        let items = codes.items().unwrap();
        assert_eq!(items.len(), 1 + options.len(), "{options:?}");
        assert_eq!(str_at(&items[0], tags::CODE_VALUE), "113100");
        for (item, o) in items[1..].iter().zip(&options) {
            assert_eq!(str_at(item, tags::CODE_VALUE), o.code().value);
            assert_eq!(str_at(item, tags::CODING_SCHEME_DESIGNATOR), "DCM");
        }
    }
}

#[test]
fn sequences_are_walked_and_uids_inside_them_remapped() {
    let input = synthetic();
    let bytes = part10(input);
    let keys = DeidKeys::from_secret(&[6u8; 32]);
    let p = profile(DeidLevel::Anonymised, &[]);
    let obj = read(&deidentify(&bytes, &p, &keys).unwrap().bytes);
    // Source Image Sequence (0008,2112) is X/Z/U* and Type 3 in CT: removed;
    // Referenced Study Sequence (0008,1110) is X/Z and Type 3... so look for a
    // kept sequence instead: any sequence left must have no original UID.
    let mut checked = 0;
    for e in obj.iter() {
        if let Some(items) = e.items() {
            for item in items {
                if let Some(r) = item.get(tags::REFERENCED_SOP_INSTANCE_UID) {
                    let v = r.to_str().unwrap().trim_end_matches('\0').to_string();
                    assert_eq!(v, keys.map_uid("1.2.826.0.1.3680043.99.777"), "{}", e.tag());
                    // The standard's own UIDs stay.
                    assert_eq!(str_at(item, tags::REFERENCED_SOP_CLASS_UID), CT_CIOD_SOP);
                    checked += 1;
                }
            }
        }
    }
    assert!(checked > 0, "no sequence kept its items");
}

/// The repository's corpus, or the folder in `MEDMESH_DEID_CORPUS` (for a
/// wider run, e.g. over the shared corpus the repository's copy comes from).
pub(super) fn corpus_files() -> Vec<PathBuf> {
    let root = std::env::var_os("MEDMESH_DEID_CORPUS").map_or_else(
        || Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/data/corpus"),
        PathBuf::from,
    );
    let mut out = Vec::new();
    let mut stack = vec![root];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            let name = p.file_name().unwrap().to_string_lossy().to_string();
            if p.is_dir() {
                if name != "malformed" && name != "LICENSES" && name != "dicomdir" {
                    stack.push(p);
                }
            } else if !name.ends_with(".md")
                && !name.ends_with(".json")
                && !name.ends_with(".txt")
                && !name.ends_with(".sh")
            {
                out.push(p);
            }
        }
    }
    out.sort();
    out
}

/// Every text value of an object, at every depth.
fn text_values(obj: &InMemDicomObject) -> Vec<String> {
    let mut out = Vec::new();
    for e in obj.iter() {
        if let Some(items) = e.items() {
            for i in items {
                out.extend(text_values(i));
            }
        } else if super::is_text_vr(e.vr())
            && let Ok(v) = e.to_str()
        {
            out.push(v.to_string());
        }
    }
    out
}

/// The identifying strings of an input that must not survive anonymisation.
fn phi_of(obj: &InMemDicomObject) -> Vec<String> {
    let mut out = Vec::new();
    // A manufacturer's name (kept: it identifies no one) can equal the
    // institution's in test files; such a value is not counted.
    let manufacturer = str_at(obj, tags::MANUFACTURER);
    for t in [
        tags::PATIENT_NAME,
        tags::PATIENT_ID,
        tags::PATIENT_BIRTH_DATE,
        tags::ACCESSION_NUMBER,
        tags::INSTITUTION_NAME,
    ] {
        let v = str_at(obj, t);
        if v.len() >= 4 && !manufacturer.contains(&v) {
            out.push(v.clone());
        }
    }
    fn uids(obj: &InMemDicomObject, out: &mut Vec<String>) {
        for e in obj.iter() {
            if e.vr() == VR::UI
                && let Ok(vals) = e.to_multi_str()
            {
                for v in vals.iter() {
                    let v = v.trim_matches(['\0', ' ']);
                    if v.len() > 8 && !super::is_standard_uid(v) {
                        out.push(v.to_string());
                    }
                }
            }
            if let Some(items) = e.items() {
                for i in items {
                    uids(i, out);
                }
            }
        }
    }
    uids(obj, &mut out);
    out.sort();
    out.dedup();
    out
}

#[test]
fn corpus_files_keep_no_identifier_and_every_table_attribute_gets_its_action() {
    let plain = profile(DeidLevel::Anonymised, &[]);
    // Rules without rectangles: the kinds of images that are refused for
    // possible burned-in text are declared clean, so every file is checked.
    let clean = |m: &str| MaskRule {
        modality: m.into(),
        manufacturer: None,
        rows: None,
        columns: None,
        rects: Vec::new(),
    };
    let declared = Profile::new(DeidLevel::Anonymised, &[], vec![clean("*")]).unwrap();
    let keys = DeidKeys::from_secret(&[7u8; 32]);
    let (mut done, mut refused) = (0, 0);
    for path in corpus_files() {
        let bytes = std::fs::read(&path).unwrap();
        if matches!(deidentify(&bytes, &plain, &keys), Err(DeidError::BurnedIn(_))) {
            refused += 1;
        }
        let p = &declared;
        // Only what import takes (a node holds nothing else).
        let (Ok(_), Ok((input, _))) = (
            crate::dicom::parse_and_validate(&bytes),
            crate::dicom::parse_whole(&bytes),
        ) else {
            eprintln!("not importable: {}", path.display());
            continue;
        };
        if input.get(tags::SOP_CLASS_UID).is_none() {
            continue;
        }
        let out = match deidentify(&bytes, p, &keys) {
            Ok(o) => o,
            Err(e) => panic!("{}: {e}", path.display()),
        };
        let obj = read(&out.bytes);
        check_actions(&input, &obj, p, &keys, &path.display().to_string());
        let texts = text_values(&obj);
        for needle in phi_of(&input) {
            // Anywhere in the bytes; a short value (a 4-digit ID, say) can
            // occur by chance in binary data or inside a dummy date, so it is
            // looked for as a word of every text value of the output instead.
            let found = if needle.len() >= 6 {
                out.bytes.windows(needle.len()).any(|w| w == needle.as_bytes())
            } else {
                texts
                    .iter()
                    .any(|t| t == &needle || t.split(|c: char| !c.is_alphanumeric()).any(|w| w == needle))
            };
            assert!(!found, "{}: {needle:?} is still in the output", path.display());
        }
        // Pixel data is unchanged (no masking rule applied).
        if let (Some(a), Some(b)) = (input.get(tags::PIXEL_DATA), obj.get(tags::PIXEL_DATA)) {
            assert_eq!(
                a.to_bytes().ok(),
                b.to_bytes().ok(),
                "{}: pixels changed",
                path.display()
            );
        }
        done += 1;
    }
    assert!(done >= 40, "only {done} corpus files de-identified");
    assert!(
        refused >= 10,
        "only {refused} corpus files were refused for burned-in identifiers"
    );
}

/// Two objects of one series, the second referencing the first.
fn pair() -> (Vec<u8>, Vec<u8>, String) {
    let base = |sop: &str, n: &str| {
        let mut o = InMemDicomObject::new_empty();
        for (tag, vr, v) in [
            (tags::SOP_CLASS_UID, VR::UI, CT_CIOD_SOP),
            (tags::SOP_INSTANCE_UID, VR::UI, sop),
            (tags::STUDY_INSTANCE_UID, VR::UI, "1.2.826.0.1.3680043.99.1"),
            (tags::SERIES_INSTANCE_UID, VR::UI, "1.2.826.0.1.3680043.99.1.2"),
            (tags::FRAME_OF_REFERENCE_UID, VR::UI, "1.2.826.0.1.3680043.99.1.9"),
            (tags::PATIENT_ID, VR::LO, "PID-PAIR"),
            (tags::PATIENT_NAME, VR::PN, "Roe^Richard"),
            (tags::MODALITY, VR::CS, "CT"),
            (tags::INSTANCE_NUMBER, VR::IS, n),
            (tags::STUDY_DATE, VR::DA, "20200102"),
        ] {
            o.put(DataElement::new(tag, vr, PrimitiveValue::from(v)));
        }
        o
    };
    let a = base("1.2.826.0.1.3680043.99.1.2.1", "1");
    let mut b = base("1.2.826.0.1.3680043.99.1.2.2", "2");
    b.put(DataElement::new(
        tags::REFERENCED_IMAGE_SEQUENCE,
        VR::SQ,
        Value::from(DataSetSequence::new(
            vec![InMemDicomObject::from_element_iter([
                DataElement::new(
                    tags::REFERENCED_SOP_CLASS_UID,
                    VR::UI,
                    PrimitiveValue::from(CT_CIOD_SOP),
                ),
                DataElement::new(
                    tags::REFERENCED_SOP_INSTANCE_UID,
                    VR::UI,
                    PrimitiveValue::from("1.2.826.0.1.3680043.99.1.2.1"),
                ),
            ])],
            Length::UNDEFINED,
        )),
    ));
    (part10(a), part10(b), "1.2.826.0.1.3680043.99.1".into())
}

#[test]
fn references_inside_a_study_stay_consistent() {
    let (a, b, study) = pair();
    let keys = DeidKeys::from_secret(&[8u8; 32]);
    let p = profile(DeidLevel::Pseudonymised, &[DeidOption::RetainLongModifiedDates]);
    let (da, db) = (deidentify(&a, &p, &keys).unwrap(), deidentify(&b, &p, &keys).unwrap());
    let (oa, ob) = (read(&da.bytes), read(&db.bytes));
    for t in [
        tags::STUDY_INSTANCE_UID,
        tags::SERIES_INSTANCE_UID,
        tags::FRAME_OF_REFERENCE_UID,
    ] {
        assert_eq!(str_at(&oa, t), str_at(&ob, t), "{t}");
        assert!(str_at(&oa, t).starts_with("2.25."), "{t}");
    }
    assert_eq!(da.study_uid, (study, str_at(&oa, tags::STUDY_INSTANCE_UID)));
    // Referenced Image Sequence is Type 3 in CT (X/Z/U* → X) unless kept;
    // the reference is checked through the keyed mapping of both objects.
    assert_eq!(
        keys.map_uid("1.2.826.0.1.3680043.99.1.2.1"),
        str_at(&oa, tags::SOP_INSTANCE_UID)
    );
    // The same patient gets the same pseudonym and date shift in both.
    assert_eq!(da.patient.pseudonym, db.patient.pseudonym);
    assert!(da.patient.pseudonym.starts_with("PSN-"));
    assert_eq!(str_at(&oa, tags::STUDY_DATE), str_at(&ob, tags::STUDY_DATE));
    assert_ne!(str_at(&oa, tags::STUDY_DATE), "20200102");
    // The file meta names the new instance.
    let meta_sop = dicom_object::OpenFileOptions::new()
        .read_preamble(dicom_object::file::ReadPreamble::Always)
        .from_reader(&db.bytes[..])
        .unwrap()
        .meta()
        .media_storage_sop_instance_uid()
        .trim_end_matches('\0')
        .to_string();
    assert_eq!(meta_sop, db.sop_instance_uid);
}

/// An ultrasound image of 8×4 pixels (8 bits), all 200, with `burned`.
fn ultrasound(burned: Option<&str>) -> Vec<u8> {
    let mut o = InMemDicomObject::new_empty();
    for (tag, vr, v) in [
        (tags::SOP_CLASS_UID, VR::UI, uids::ULTRASOUND_IMAGE_STORAGE),
        (tags::SOP_INSTANCE_UID, VR::UI, "1.2.826.0.1.3680043.99.5.1"),
        (tags::STUDY_INSTANCE_UID, VR::UI, "1.2.826.0.1.3680043.99.5"),
        (tags::SERIES_INSTANCE_UID, VR::UI, "1.2.826.0.1.3680043.99.5.2"),
        (tags::MODALITY, VR::CS, "US"),
        (tags::MANUFACTURER, VR::LO, "Acme Medical"),
        (tags::PATIENT_ID, VR::LO, "PID-US"),
        (tags::PHOTOMETRIC_INTERPRETATION, VR::CS, "MONOCHROME2"),
    ] {
        o.put(DataElement::new(tag, vr, PrimitiveValue::from(v)));
    }
    if let Some(b) = burned {
        o.put(DataElement::new(
            tags::BURNED_IN_ANNOTATION,
            VR::CS,
            PrimitiveValue::from(b),
        ));
    }
    for (tag, v) in [
        (tags::ROWS, 4u16),
        (tags::COLUMNS, 8),
        (tags::SAMPLES_PER_PIXEL, 1),
        (tags::BITS_ALLOCATED, 8),
        (tags::BITS_STORED, 8),
        (tags::HIGH_BIT, 7),
        (tags::PIXEL_REPRESENTATION, 0),
    ] {
        o.put(DataElement::new(tag, VR::US, PrimitiveValue::from(v)));
    }
    o.put(DataElement::new(
        tags::PIXEL_DATA,
        VR::OB,
        PrimitiveValue::U8(vec![200u8; 32].into_iter().collect()),
    ));
    let sop = "1.2.826.0.1.3680043.99.5.1";
    let meta = FileMetaTableBuilder::new()
        .media_storage_sop_class_uid(uids::ULTRASOUND_IMAGE_STORAGE)
        .media_storage_sop_instance_uid(sop)
        .transfer_syntax(uids::EXPLICIT_VR_LITTLE_ENDIAN)
        .build()
        .unwrap();
    let mut out = Vec::new();
    o.with_exact_meta(meta).write_all(&mut out).unwrap();
    out
}

#[test]
fn burned_in_objects_are_refused_unless_a_masking_rule_covers_them() {
    let keys = DeidKeys::from_secret(&[9u8; 32]);
    let plain = profile(DeidLevel::Anonymised, &[]);
    for (burned, why) in [(None, "modality US"), (Some("YES"), "is YES")] {
        match deidentify(&ultrasound(burned), &plain, &keys) {
            Err(DeidError::BurnedIn(reason)) => assert!(reason.to_string().contains(why), "{reason}"),
            other => panic!("{burned:?}: {other:?}"),
        }
    }
    // Burned In Annotation NO: sent, pixels unchanged.
    let out = deidentify(&ultrasound(Some("NO")), &plain, &keys).unwrap();
    assert!(!out.masked);
    assert_eq!(
        read(&out.bytes)
            .get(tags::PIXEL_DATA)
            .unwrap()
            .to_bytes()
            .unwrap()
            .as_ref(),
        &[200u8; 32][..]
    );
    // A rule for another manufacturer does not cover it; the right one masks.
    let rule = |m: &str| MaskRule {
        modality: "US".into(),
        manufacturer: Some(m.into()),
        rows: Some(4),
        columns: Some(8),
        rects: vec![[0, 0, 8, 1], [6, 2, 5, 5]],
    };
    let other = Profile::new(DeidLevel::Anonymised, &[], vec![rule("Other Vendor")]).unwrap();
    assert!(matches!(
        deidentify(&ultrasound(Some("YES")), &other, &keys),
        Err(DeidError::BurnedIn(_))
    ));
    let masking = Profile::new(DeidLevel::Anonymised, &[], vec![rule("acme")]).unwrap();
    let out = deidentify(&ultrasound(Some("YES")), &masking, &keys).unwrap();
    assert!(out.masked);
    let obj = read(&out.bytes);
    assert_eq!(str_at(&obj, tags::BURNED_IN_ANNOTATION), "NO");
    let px = obj.get(tags::PIXEL_DATA).unwrap().to_bytes().unwrap().to_vec();
    for y in 0..4 {
        for x in 0..8 {
            let masked = y == 0 || (x >= 6 && y >= 2);
            assert_eq!(px[y * 8 + x], if masked { 0 } else { 200 }, "pixel ({x},{y})");
        }
    }
    assert!(out.codes.iter().any(|c| c.value == CLEAN_PIXEL_CODE.0));
}

#[test]
fn private_attributes_go_unless_safe_and_retained() {
    let mut input = synthetic();
    input.put(DataElement::new(
        Tag(0x0009, 0x0010),
        VR::LO,
        PrimitiveValue::from("ACME PRIVATE"),
    ));
    input.put(DataElement::new(
        Tag(0x0009, 0x1001),
        VR::LO,
        PrimitiveValue::from("Doe^Jane private"),
    ));
    let bytes = part10(input);
    let keys = DeidKeys::from_secret(&[10u8; 32]);
    let obj = read(
        &deidentify(&bytes, &profile(DeidLevel::Anonymised, &[]), &keys)
            .unwrap()
            .bytes,
    );
    assert!(
        obj.iter().all(|e| e.tag().group() % 2 == 0),
        "a private attribute is left"
    );
    // Not on the safe list: removed even with Retain Safe Private.
    let p = profile(DeidLevel::Anonymised, &[DeidOption::RetainSafePrivate]);
    let obj = read(&deidentify(&bytes, &p, &keys).unwrap().bytes);
    assert!(obj.get(Tag(0x0009, 0x1001)).is_none());
    assert!(
        obj.get(Tag(0x0009, 0x0010)).is_none(),
        "the creator of an emptied block is left"
    );
}

#[test]
fn profiles_that_contradict_themselves_are_refused() {
    assert!(Profile::new(DeidLevel::Identifiable, &[], Vec::new()).is_err());
    assert!(
        Profile::new(
            DeidLevel::Pseudonymised,
            &[DeidOption::RetainLongFullDates, DeidOption::RetainLongModifiedDates],
            Vec::new()
        )
        .is_err()
    );
    assert!(Profile::new(DeidLevel::Anonymised, &[DeidOption::RetainUids], Vec::new()).is_err());
    for o in DeidOption::ALL {
        assert_eq!(DeidOption::from_name(o.name()), Some(o));
    }
}

proptest! {
    #[test]
    fn remapped_uids_are_valid_consistent_and_new(uid in "[1-9][0-9]{0,5}(\\.[1-9][0-9]{0,8}){1,8}", key in any::<[u8; 32]>()) {
        let keys = DeidKeys::from_secret(&key);
        let a = keys.map_uid(&uid);
        prop_assert_eq!(&a, &keys.map_uid(&uid));
        prop_assert_eq!(&a, &keys.map_uid(&format!("{uid}\0")));
        prop_assert!(a.len() <= 64);
        prop_assert!(a.starts_with("2.25."));
        prop_assert!(a.split('.').all(|c| !c.is_empty() && (c == "0" || !c.starts_with('0')) && c.bytes().all(|b| b.is_ascii_digit())));
        prop_assert_ne!(&a, &uid);
    }

    #[test]
    fn date_shifts_keep_intervals_within_a_patient(days_a in 0i64..20000, days_b in 0i64..20000, pid in "[A-Z0-9]{1,12}") {
        let keys = DeidKeys::from_secret(&[3u8; 32]);
        let shift = keys.date_shift("ISSUER", &pid);
        prop_assert!((-3650..=-1).contains(&shift));
        let base = chrono::NaiveDate::from_ymd_opt(1950, 1, 1).unwrap();
        let a = base + chrono::Duration::days(days_a);
        let b = base + chrono::Duration::days(days_b);
        let fa = super::shift_value(VR::DA, &a.format("%Y%m%d").to_string(), shift);
        let fb = super::shift_value(VR::DA, &b.format("%Y%m%d").to_string(), shift);
        let pa = chrono::NaiveDate::parse_from_str(&fa, "%Y%m%d").unwrap();
        let pb = chrono::NaiveDate::parse_from_str(&fb, "%Y%m%d").unwrap();
        prop_assert_eq!((pb - pa).num_days(), days_b - days_a);
        prop_assert_eq!((pa - a).num_days(), shift);
    }
}

#[test]
fn masking_refuses_impossible_or_inconsistent_images() {
    let rule = MaskRule {
        modality: "US".into(),
        manufacturer: None,
        rows: None,
        columns: None,
        rects: vec![[0, 0, 1, 1]],
    };
    let image = |rows: u16, cols: u16, bits: u16, frames: &str, data: usize| {
        let mut o = InMemDicomObject::new_empty();
        for (tag, v) in [
            (tags::ROWS, rows),
            (tags::COLUMNS, cols),
            (tags::SAMPLES_PER_PIXEL, 3),
            (tags::BITS_ALLOCATED, bits),
        ] {
            o.put(DataElement::new(tag, VR::US, PrimitiveValue::from(v)));
        }
        o.put(DataElement::new(
            tags::NUMBER_OF_FRAMES,
            VR::IS,
            PrimitiveValue::from(frames),
        ));
        o.put(DataElement::new(
            tags::PIXEL_DATA,
            VR::OB,
            PrimitiveValue::U8(vec![9u8; data].into_iter().collect()),
        ));
        o
    };
    let ts = uids::EXPLICIT_VR_LITTLE_ENDIAN;
    // Dimensions whose product overflows: an error, not a panic.
    let mut huge = image(65535, 65535, 32, "4294967295", 16);
    assert!(matches!(pixels::apply(&mut huge, &rule, ts), Err(DeidError::Mask(_))));
    // More pixel data than the declared frames: refused (the rest would go unmasked).
    let mut extra = image(2, 2, 8, "1", 2 * 2 * 3 * 2);
    assert!(matches!(pixels::apply(&mut extra, &rule, ts), Err(DeidError::Mask(_))));
    // Zero rows: refused.
    let mut empty = image(0, 2, 8, "1", 0);
    assert!(matches!(pixels::apply(&mut empty, &rule, ts), Err(DeidError::Mask(_))));
    // The declared size: masked.
    let mut ok = image(2, 2, 8, "1", 2 * 2 * 3);
    pixels::apply(&mut ok, &rule, ts).unwrap();
    let px = ok.get(tags::PIXEL_DATA).unwrap().to_bytes().unwrap().to_vec();
    assert_eq!(&px[..3], &[0, 0, 0]);
    assert!(px[3..].iter().all(|b| *b == 9));
}
