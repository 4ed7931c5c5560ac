//! Burned-in identifiers: which objects may show text in their pixels, and
//! the masking rules (rectangles per modality, manufacturer and image size)
//! that blank it.

use dicom_core::value::{PrimitiveValue, Value};
use dicom_core::{DataElement, Tag, VR};
use dicom_dictionary_std::{tags, uids};
use dicom_object::InMemDicomObject;

use super::{BurnedIn, DeidError, MaskCause, MaskRule, str_at};

/// Modalities whose images commonly carry burned-in text (ultrasound,
/// external-camera photography, endoscopy, "other" such as screenshots).
const SUSPECT_MODALITIES: [&str; 4] = ["US", "XC", "ES", "OT"];

/// SOP classes that commonly carry burned-in text: secondary capture (screen
/// captures, scanned documents) and ultrasound.
const SUSPECT_SOP_CLASSES: [&str; 8] = [
    uids::SECONDARY_CAPTURE_IMAGE_STORAGE,
    uids::MULTI_FRAME_SINGLE_BIT_SECONDARY_CAPTURE_IMAGE_STORAGE,
    uids::MULTI_FRAME_GRAYSCALE_BYTE_SECONDARY_CAPTURE_IMAGE_STORAGE,
    uids::MULTI_FRAME_GRAYSCALE_WORD_SECONDARY_CAPTURE_IMAGE_STORAGE,
    uids::MULTI_FRAME_TRUE_COLOR_SECONDARY_CAPTURE_IMAGE_STORAGE,
    uids::ULTRASOUND_IMAGE_STORAGE,
    uids::ULTRASOUND_MULTI_FRAME_IMAGE_STORAGE,
    uids::VIDEO_ENDOSCOPIC_IMAGE_STORAGE,
];

fn u16_at(obj: &InMemDicomObject, tag: Tag) -> Option<u16> {
    obj.get(tag).and_then(|e| e.to_int::<u16>().ok())
}

/// Why `obj` may carry identifiers in its pixels, or `None`: Burned In
/// Annotation (0028,0301) is YES, or the attribute is absent on a kind of
/// object that often has them. Objects without pixel data (`has_pixels`
/// false) have none.
#[must_use]
pub fn burned_in_reason(obj: &InMemDicomObject, has_pixels: bool) -> Option<BurnedIn> {
    if !has_pixels {
        return None;
    }
    let flag = str_at(obj, tags::BURNED_IN_ANNOTATION).to_uppercase();
    if flag == "YES" {
        return Some(BurnedIn::Flagged);
    }
    if flag == "NO" {
        return None;
    }
    let modality = str_at(obj, tags::MODALITY).to_uppercase();
    if SUSPECT_MODALITIES.contains(&modality.as_str()) {
        return Some(BurnedIn::Modality { modality });
    }
    let class = str_at(obj, tags::SOP_CLASS_UID);
    if SUSPECT_SOP_CLASSES.contains(&class.as_str()) {
        return Some(BurnedIn::SopClass { class });
    }
    None
}

/// The first rule that covers `obj`.
#[must_use]
pub fn find_rule<'a>(rules: &'a [MaskRule], obj: &InMemDicomObject) -> Option<&'a MaskRule> {
    let modality = str_at(obj, tags::MODALITY);
    let manufacturer = str_at(obj, tags::MANUFACTURER).to_lowercase();
    let rows = u16_at(obj, tags::ROWS);
    let cols = u16_at(obj, tags::COLUMNS);
    rules.iter().find(|r| {
        (r.modality == "*" || r.modality.eq_ignore_ascii_case(&modality))
            && r.manufacturer
                .as_ref()
                .is_none_or(|m| manufacturer.contains(&m.to_lowercase()))
            && r.rows.is_none_or(|n| Some(n) == rows)
            && r.columns.is_none_or(|n| Some(n) == cols)
    })
}

/// Blanks the rule's rectangles in every frame of native (uncompressed)
/// pixel data: every sample of a covered pixel becomes 0.
///
/// # Errors
/// [`DeidError::Mask`] for encapsulated (compressed) pixel data or an image
/// whose layout attributes are missing or inconsistent with its pixel data.
pub fn apply(obj: &mut InMemDicomObject, rule: &MaskRule, ts: &str) -> Result<(), DeidError> {
    let rows = usize::from(u16_at(obj, tags::ROWS).ok_or_else(|| DeidError::from(MaskCause::NoRows))?);
    let cols = usize::from(u16_at(obj, tags::COLUMNS).ok_or_else(|| DeidError::from(MaskCause::NoColumns))?);
    let spp = usize::from(u16_at(obj, tags::SAMPLES_PER_PIXEL).unwrap_or(1).max(1));
    let bits = usize::from(u16_at(obj, tags::BITS_ALLOCATED).unwrap_or(16));
    let planar = u16_at(obj, tags::PLANAR_CONFIGURATION).unwrap_or(0) == 1;
    let frames = obj
        .get(tags::NUMBER_OF_FRAMES)
        .and_then(|e| e.to_int::<u32>().ok())
        .map_or(1, |n| usize::try_from(n.max(1)).unwrap_or(1));
    if bits % 8 != 0 || bits == 0 {
        return Err(MaskCause::Bits { bits }.into());
    }
    let elem = obj
        .take(tags::PIXEL_DATA)
        .ok_or_else(|| DeidError::from(MaskCause::NoPixelData))?;
    let vr = elem.vr();
    let mut data: Vec<u8> = match elem.into_value() {
        Value::Primitive(PrimitiveValue::U8(b)) => b.into_iter().collect(),
        Value::Primitive(PrimitiveValue::U16(w)) => w.iter().flat_map(|v| v.to_le_bytes()).collect(),
        Value::PixelSequence(_) => {
            return Err(MaskCause::Compressed {
                transfer_syntax: ts.to_string(),
            }
            .into());
        }
        _ => return Err(MaskCause::PixelType.into()),
    };
    let bpp = bits / 8;
    if rows == 0 || cols == 0 {
        return Err(MaskCause::Empty.into());
    }
    let frame_len = rows
        .checked_mul(cols)
        .and_then(|n| n.checked_mul(spp))
        .and_then(|n| n.checked_mul(bpp))
        .ok_or_else(|| DeidError::from(MaskCause::TooLarge))?;
    let need = frame_len
        .checked_mul(frames)
        .ok_or_else(|| DeidError::from(MaskCause::TooLarge))?;
    // Exactly the declared frames (one pad byte allowed): frames beyond
    // Number of Frames would otherwise go out unmasked.
    if data.len() != need && data.len() != need + 1 {
        return Err(MaskCause::Length {
            found: data.len(),
            described: need,
        }
        .into());
    }
    for f in 0..frames {
        let frame = &mut data[f * frame_len..(f + 1) * frame_len];
        for r in &rule.rects {
            let (x0, y0) = (r[0] as usize, r[1] as usize);
            let x1 = (x0 + r[2] as usize).min(cols);
            let y1 = (y0 + r[3] as usize).min(rows);
            for y in y0.min(rows)..y1 {
                for x in x0.min(cols)..x1 {
                    if planar {
                        for s in 0..spp {
                            let at = (s * rows * cols + y * cols + x) * bpp;
                            frame[at..at + bpp].fill(0);
                        }
                    } else {
                        let at = (y * cols + x) * spp * bpp;
                        frame[at..at + spp * bpp].fill(0);
                    }
                }
            }
        }
    }
    let value = if vr == VR::OW && bpp == 2 {
        PrimitiveValue::U16(data.chunks_exact(2).map(|c| u16::from_le_bytes([c[0], c[1]])).collect())
    } else {
        PrimitiveValue::U8(data.into_iter().collect())
    };
    obj.put(DataElement::new(tags::PIXEL_DATA, vr, value));
    Ok(())
}
