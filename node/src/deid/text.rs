//! Cleaning of free text and links: every identifying string of the object
//! (the patient's names, IDs, address and birth date, every person name the
//! object carries at any depth, the institution, the accession number), every
//! host name of the site, and every UID-like token are found in a text value,
//! ignoring case (Unicode simple lower-casing), and replaced: strings by
//! `*`, UIDs by their keyed mapping (so a UID quoted in a report still names
//! the same de-identified object).

use dicom_core::VR;
use dicom_core::header::Header;
use dicom_dictionary_std::tags;
use dicom_object::InMemDicomObject;

use super::{DeidKeys, is_standard_uid, trim_value};

/// What replaces an identifying string in text.
pub const MASK: &str = "*";

/// How a needle must occur to match.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Fit {
    /// Anywhere, also inside a word (long values: IDs, full names, hosts).
    Anywhere,
    /// As a whole word only (short name parts such as "Li" or "Wu", which
    /// would otherwise hit inside common words).
    Word,
}

/// The identifying strings of one object (and of its site), lower-cased,
/// with how each must occur.
#[derive(Debug, Clone, Default)]
pub struct Needles {
    items: Vec<(String, Fit)>,
}

/// The shortest value looked for anywhere in text; shorter name parts (of
/// two characters) are looked for as whole words; single characters not at all.
const MIN_ANYWHERE: usize = 3;

impl Needles {
    fn push(&mut self, value: &str, fit: Fit) {
        let v = trim_value(value).trim();
        let n = v.chars().count();
        let fit = match (fit, n) {
            (_, 0 | 1) => return,
            // A short value that is not a name part (a two-digit Study ID)
            // would hit numbers in text: not looked for, as before.
            (Fit::Anywhere, n) if n < MIN_ANYWHERE => return,
            (Fit::Word, _) if n >= MIN_ANYWHERE => Fit::Anywhere,
            (f, _) => f,
        };
        self.items.push((fold(v), fit));
    }

    /// A part of a person's name: anywhere from three characters, as a
    /// whole word when it has two ("Li", "Wu", "Ng").
    fn push_name_part(&mut self, part: &str) {
        self.push(part, Fit::Word);
    }

    /// A value matched anywhere (at least three characters).
    pub fn add_value(&mut self, value: &str) {
        self.push(value, Fit::Anywhere);
    }

    /// A person name (PN): every component group whole, and every part of
    /// its family, given and middle names (prefixes and suffixes such as
    /// "Dr" or "Jr" identify no one), split at spaces and hyphens too.
    pub fn add_person_name(&mut self, pn: &str) {
        for group in pn.split('=') {
            let group = trim_value(group);
            if group.is_empty() {
                continue;
            }
            self.push(group, Fit::Anywhere);
            let comps: Vec<&str> = group.split('^').collect();
            for comp in comps.iter().take(3) {
                self.push_name_part(comp);
                for part in comp.split([' ', '-', ',']) {
                    self.push_name_part(part);
                }
            }
            if comps.len() >= 2 {
                let (family, given) = (trim_value(comps[0]), trim_value(comps[1]));
                if !family.is_empty() && !given.is_empty() {
                    self.push(&format!("{given} {family}"), Fit::Anywhere);
                    self.push(&format!("{family} {given}"), Fit::Anywhere);
                    self.push(&format!("{family}, {given}"), Fit::Anywhere);
                }
            }
        }
    }

    /// A date (DA, `YYYYMMDD`), also as text writes it: `YYYY-MM-DD`,
    /// `DD.MM.YYYY`, `DD/MM/YYYY`, `MM/DD/YYYY`.
    pub fn add_date(&mut self, da: &str) {
        let d = trim_value(da);
        self.push(d, Fit::Anywhere);
        if d.len() == 8 && d.bytes().all(|b| b.is_ascii_digit()) {
            let (y, m, dd) = (&d[..4], &d[4..6], &d[6..8]);
            for v in [
                format!("{y}-{m}-{dd}"),
                format!("{dd}.{m}.{y}"),
                format!("{dd}/{m}/{y}"),
                format!("{m}/{dd}/{y}"),
            ] {
                self.push(&v, Fit::Anywhere);
            }
        }
    }

    /// Sorts longest first and removes duplicates.
    pub fn finish(&mut self) {
        self.items.sort_by(|a, b| {
            b.0.len()
                .cmp(&a.0.len())
                .then_with(|| a.0.cmp(&b.0))
                .then(a.1.cmp(&b.1))
        });
        self.items.dedup_by(|a, b| a.0 == b.0);
    }

    /// Whether there is nothing to look for.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }

    /// The needles, lower-cased (for tests).
    #[cfg(test)]
    pub fn values(&self) -> impl Iterator<Item = &str> {
        self.items.iter().map(|(s, _)| s.as_str())
    }
}

/// Attributes whose whole value identifies the patient, a person, the
/// institution or the device, wherever they occur (retired ones included:
/// old files still carry them).
#[allow(deprecated)]
const WHOLE: [dicom_core::Tag; 26] = [
    tags::PATIENT_ID,
    tags::OTHER_PATIENT_I_DS,
    tags::ISSUER_OF_PATIENT_ID,
    tags::ACCESSION_NUMBER,
    tags::INSTITUTION_NAME,
    tags::INSTITUTION_ADDRESS,
    tags::INSTITUTIONAL_DEPARTMENT_NAME,
    tags::STATION_NAME,
    tags::DEVICE_SERIAL_NUMBER,
    tags::STUDY_ID,
    tags::MEDICAL_RECORD_LOCATOR,
    tags::PATIENT_ADDRESS,
    tags::PATIENT_TELEPHONE_NUMBERS,
    tags::ADMISSION_ID,
    tags::REQUESTED_PROCEDURE_ID,
    tags::SCHEDULED_PROCEDURE_STEP_ID,
    tags::PERFORMED_PROCEDURE_STEP_ID,
    tags::VERIFYING_ORGANIZATION,
    tags::PERSON_ADDRESS,
    tags::PERSON_TELEPHONE_NUMBERS,
    tags::RETRIEVE_AE_TITLE,
    tags::STATION_AE_TITLE,
    tags::SCHEDULED_STATION_AE_TITLE,
    tags::PERFORMED_STATION_AE_TITLE,
    tags::PATIENT_TELECOM_INFORMATION,
    tags::REGION_OF_RESIDENCE,
];

/// Collects the identifying strings of `obj` at every depth: the values of
/// [`WHOLE`], every person name (any PN element), the birth date in the
/// forms text uses.
pub fn identifying_strings(obj: &InMemDicomObject) -> Needles {
    let mut n = Needles::default();
    collect(obj, &mut n);
    n.finish();
    n
}

fn collect(obj: &InMemDicomObject, n: &mut Needles) {
    for e in obj.iter() {
        if let Some(items) = e.items() {
            for i in items {
                collect(i, n);
            }
            continue;
        }
        let tag = e.tag();
        let Ok(vals) = e.to_multi_str() else { continue };
        if e.vr() == VR::PN {
            for v in vals.iter() {
                n.add_person_name(v);
            }
        } else if tag == tags::PATIENT_BIRTH_DATE {
            for v in vals.iter() {
                n.add_date(v);
            }
        } else if WHOLE.contains(&tag) {
            for v in vals.iter() {
                n.add_value(v);
            }
        }
    }
}

/// Lower-cases `s` char by char (simple case mapping; a character whose
/// lower case is several characters gives them all).
fn fold(s: &str) -> String {
    s.chars().flat_map(char::to_lowercase).collect()
}

/// One replacement in a text value (byte range of the original).
#[derive(Debug, Clone, Copy)]
struct Span {
    start: usize,
    end: usize,
    uid: bool,
}

/// The UID-like tokens of `s`: runs of digits and dots of at least 8
/// characters with at least two dots and no empty component, not the
/// standard's own (`1.2.840.10008.`); an IP address is one too.
fn uid_spans(s: &str, out: &mut Vec<Span>) {
    let b = s.as_bytes();
    let mut i = 0;
    while i < b.len() {
        if !b[i].is_ascii_digit() {
            i += 1;
            continue;
        }
        let start = i;
        while i < b.len() && (b[i].is_ascii_digit() || b[i] == b'.') {
            i += 1;
        }
        let mut end = i;
        while end > start && b[end - 1] == b'.' {
            end -= 1;
        }
        let tok = &s[start..end];
        if tok.len() >= 8
            && tok.bytes().filter(|c| *c == b'.').count() >= 2
            && tok.split('.').all(|c| !c.is_empty())
            && !is_standard_uid(tok)
        {
            out.push(Span { start, end, uid: true });
        }
    }
}

fn is_word_char(c: Option<char>) -> bool {
    c.is_some_and(char::is_alphanumeric)
}

/// The spans of `s` where a needle occurs (case ignored).
fn needle_spans(s: &str, needles: &[&Needles], out: &mut Vec<Span>) {
    // The folded text, and for each of its bytes the original char's range.
    let mut folded = String::with_capacity(s.len());
    let mut origin: Vec<(usize, usize)> = Vec::with_capacity(s.len());
    for (i, c) in s.char_indices() {
        for lc in c.to_lowercase() {
            let before = folded.len();
            folded.push(lc);
            origin.extend(std::iter::repeat_n((i, i + c.len_utf8()), folded.len() - before));
        }
    }
    for n in needles {
        for (needle, fit) in &n.items {
            let mut from = 0;
            while let Some(pos) = folded[from..].find(needle.as_str()) {
                let (fs, fe) = (from + pos, from + pos + needle.len());
                from = fs + folded[fs..].chars().next().map_or(1, char::len_utf8);
                let (start, end) = (origin[fs].0, origin[fe - 1].1);
                if *fit == Fit::Word
                    && (is_word_char(s[..start].chars().next_back()) || is_word_char(s[end..].chars().next()))
                {
                    continue;
                }
                out.push(Span { start, end, uid: false });
            }
        }
    }
}

/// `s` with every identifying string of `needles` replaced by [`MASK`] and
/// every UID-like token by its mapping under `keys` (left as it is without
/// keys: Retain UIDs); `None` when nothing was found. Overlapping finds are
/// merged: a range that is exactly one UID token (finds inside it included)
/// gives its mapping, anything else the mask.
#[must_use]
pub fn scrub(s: &str, needles: &[&Needles], keys: Option<&DeidKeys>) -> Option<String> {
    let mut spans = Vec::new();
    if keys.is_some() {
        uid_spans(s, &mut spans);
    }
    let uids = spans.len();
    needle_spans(s, needles, &mut spans);
    // A needle that is exactly a UID-like token (a date written 07.12.1963)
    // is masked, not mapped.
    let (uid_part, needle_part) = spans.split_at(uids);
    let exact: Vec<(usize, usize)> = needle_part
        .iter()
        .filter(|n| uid_part.iter().any(|u| u.start == n.start && u.end == n.end))
        .map(|n| (n.start, n.end))
        .collect();
    spans.retain(|sp| !(sp.uid && exact.contains(&(sp.start, sp.end))));
    if spans.is_empty() {
        return None;
    }
    spans.sort_by(|a, b| a.start.cmp(&b.start).then(b.end.cmp(&a.end)));
    // Merged ranges; `uid` while the range is exactly one UID token.
    let mut merged: Vec<Span> = Vec::new();
    for sp in spans {
        match merged.last_mut() {
            Some(last) if sp.start < last.end => {
                // A find inside a UID token is covered by its mapping; one
                // that reaches beyond it makes the whole range a mask.
                if sp.end > last.end {
                    last.end = sp.end;
                    last.uid = false;
                }
            }
            _ => merged.push(sp),
        }
    }
    let mut out = String::with_capacity(s.len());
    let mut at = 0;
    for m in merged {
        out.push_str(&s[at..m.start]);
        match keys {
            Some(k) if m.uid => out.push_str(&k.map_uid(&s[m.start..m.end])),
            _ => out.push_str(MASK),
        }
        at = m.end;
    }
    out.push_str(&s[at..]);
    Some(out)
}
