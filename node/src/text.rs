//! Text from outside this node made safe to store and to print.
//!
//! Reasons of refusals and denials, institution names in hellos, node
//! records and certificates come from peers; patient names and other DICOM
//! text come from files. Before such text is stored, logged or shown on a
//! terminal, [`clean`] escapes every control and invisible formatting
//! character (an ESC that would drive the terminal, a newline that would
//! forge a log line, a right-to-left override that would hide text) and caps
//! its length, so a peer cannot fill the store or the screen with it.

use std::borrow::Cow;

/// Most characters of a reason (refusal, denial) kept from a peer.
pub const MAX_REASON: usize = 500;
/// Most characters of a reason code kept from a peer.
pub const MAX_CODE: usize = 64;
/// Most characters of an institution name kept from a peer (as `init` allows).
pub const MAX_NAME: usize = 200;

/// Whether `c` must not reach a terminal or a log as is: C0 and C1 controls,
/// DEL, and the invisible formatting characters (bidirectional overrides and
/// isolates, zero-width characters, the byte-order mark, line and paragraph
/// separators).
#[must_use]
pub fn is_unsafe(c: char) -> bool {
    c.is_control()
        || matches!(c,
            '\u{200B}'..='\u{200F}'
            | '\u{2028}'..='\u{202E}'
            | '\u{2060}'..='\u{2069}'
            | '\u{FEFF}'
            | '\u{FFF9}'..='\u{FFFB}')
}

/// `s` with every [`is_unsafe`] character written as its Rust escape
/// (`\n`, `\t`, `\u{1b}`, `\u{202e}`), cut to at most `max` characters (the
/// last one then `…`). Text that needs nothing is borrowed.
#[must_use]
pub fn clean(s: &str, max: usize) -> Cow<'_, str> {
    if !s.chars().any(is_unsafe) && s.chars().nth(max).is_none() {
        return Cow::Borrowed(s);
    }
    let mut out = String::with_capacity(s.len().min(max.saturating_mul(4)));
    let mut count = 0usize;
    let mut cut = false;
    'chars: for c in s.chars() {
        let piece: Vec<char> = if is_unsafe(c) {
            c.escape_default().collect()
        } else {
            vec![c]
        };
        for p in piece {
            if count == max {
                cut = true;
                break 'chars;
            }
            out.push(p);
            count += 1;
        }
    }
    if cut && max > 0 {
        out.pop();
        out.push('…');
    }
    Cow::Owned(out)
}

/// [`clean`] without a length cap: for text shown to the site's own users
/// (DICOM names and descriptions in `study list` and `study show`).
#[must_use]
pub fn escape(s: &str) -> Cow<'_, str> {
    clean(s, usize::MAX)
}

/// Serde helpers that clean text as it is decoded, so text from a peer is
/// never held raw: `#[serde(deserialize_with = "crate::text::de::reason")]`.
pub mod de {
    use serde::{Deserialize, Deserializer};

    use super::{MAX_CODE, MAX_NAME, MAX_REASON, clean};

    /// A reason, cleaned and capped at [`MAX_REASON`].
    ///
    /// # Errors
    /// When the value is not a string.
    pub fn reason<'de, D: Deserializer<'de>>(d: D) -> Result<String, D::Error> {
        let s = String::deserialize(d)?;
        Ok(clean(&s, MAX_REASON).into_owned())
    }

    /// A code, cleaned and capped at [`MAX_CODE`].
    ///
    /// # Errors
    /// When the value is not a string.
    pub fn code<'de, D: Deserializer<'de>>(d: D) -> Result<String, D::Error> {
        let s = String::deserialize(d)?;
        Ok(clean(&s, MAX_CODE).into_owned())
    }

    /// An institution name, cleaned and capped at [`MAX_NAME`].
    ///
    /// # Errors
    /// When the value is not a string.
    pub fn name<'de, D: Deserializer<'de>>(d: D) -> Result<String, D::Error> {
        let s = String::deserialize(d)?;
        Ok(clean(&s, MAX_NAME).into_owned())
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    #[test]
    fn table() {
        for (input, max, want) in [
            ("Klinikum Nord", 200, "Klinikum Nord"),
            ("", 10, ""),
            ("Hôpital Sud", 200, "Hôpital Sud"),
            ("日本語の病院", 200, "日本語の病院"),
            ("DOE^JOHN", 200, "DOE^JOHN"),
            ("a\nb", 200, "a\\nb"),
            ("a\r\nforged log line", 200, "a\\r\\nforged log line"),
            ("tab\there", 200, "tab\\there"),
            ("\u{1b}[31mred\u{1b}[0m", 200, "\\u{1b}[31mred\\u{1b}[0m"),
            ("\u{1b}]0;title\u{7}", 200, "\\u{1b}]0;title\\u{7}"),
            ("nul\0byte", 200, "nul\\u{0}byte"),
            ("del\u{7f}", 200, "del\\u{7f}"),
            ("c1\u{9b}2J", 200, "c1\\u{9b}2J"),
            ("evil\u{202e}gnp.exe", 200, "evil\\u{202e}gnp.exe"),
            ("zero\u{200b}width", 200, "zero\\u{200b}width"),
            ("\u{feff}bom", 200, "\\u{feff}bom"),
            ("line\u{2028}sep", 200, "line\\u{2028}sep"),
            ("back\\slash", 200, "back\\slash"),
            ("abcdef", 6, "abcdef"),
            ("abcdefg", 6, "abcde…"),
            ("a\nbcdef", 4, "a\\n…"),
            ("\u{1b}", 3, "\\u…"),
            ("abc", 0, ""),
        ] {
            assert_eq!(clean(input, max), want, "{input:?} max {max}");
        }
    }

    #[test]
    fn clean_text_is_borrowed() {
        assert!(matches!(clean("Klinikum Nord", 200), Cow::Borrowed(_)));
        assert!(matches!(escape("DOE^JOHN"), Cow::Borrowed(_)));
    }

    /// What a peer sends: 10 kB of text with terminal escapes, newlines and
    /// a right-to-left override.
    fn hostile() -> String {
        let mut s = String::from("denied\u{1b}[2J\u{1b}]0;pwned\u{7}\nFAKE LOG LINE level=ERROR\u{202e}");
        while s.len() < 10_000 {
            s.push_str("x\u{0}\r");
        }
        s
    }

    fn assert_clean(text: &str, max: usize) {
        assert!(!text.chars().any(is_unsafe), "{text:?}");
        assert!(text.chars().count() <= max, "{} characters", text.chars().count());
        assert!(text.starts_with("denied\\u{1b}[2J"), "{}", &text[..40.min(text.len())]);
    }

    #[test]
    fn a_peers_reasons_are_clean_and_capped_once_decoded() {
        use crate::transfer::wire::{self, Answer, AnswerBody, Refuse, WIRE_VERSION};
        let reason = crate::consent::Reason {
            code: "x\u{1b}[1m".repeat(50),
            text: hostile(),
        };
        for body in [
            AnswerBody::Denied {
                transfer_id: None,
                reasons: vec![reason.clone()],
            },
            AnswerBody::Refused {
                code: reason.code.clone(),
                text: reason.text.clone(),
            },
        ] {
            let bytes = wire::encode("answer", &Answer { v: WIRE_VERSION, body }).unwrap();
            let got: Answer = wire::decode("answer", &bytes, wire::MAX_MESSAGE).unwrap();
            let (code, text) = match got.body {
                AnswerBody::Denied { reasons, .. } => (reasons[0].code.clone(), reasons[0].text.clone()),
                AnswerBody::Refused { code, text } => (code, text),
                other => panic!("{other:?}"),
            };
            assert_clean(&text, MAX_REASON);
            assert!(
                !code.chars().any(is_unsafe) && code.chars().count() <= MAX_CODE,
                "{code:?}"
            );
        }
        let refuse = Refuse {
            v: WIRE_VERSION,
            code: "bad".into(),
            text: hostile(),
            permanent: true,
        };
        let bytes = wire::encode("refuse", &refuse).unwrap();
        let got: Refuse = wire::decode("refuse", &bytes, wire::MAX_MESSAGE).unwrap();
        assert_clean(&got.text, MAX_REASON);
        // What is stored is what was decoded: a record holding the reasons
        // keeps them clean through its own encoding.
        let stored = crate::cbor::encode("reasons", &vec![reason]).unwrap();
        let back: Vec<crate::consent::Reason> = crate::cbor::decode("reasons", &stored, 1 << 20).unwrap();
        assert_clean(&back[0].text, MAX_REASON);
    }

    #[test]
    fn a_peers_institution_name_is_clean_and_capped_once_decoded() {
        let id = crate::identity::Identity::generate().unwrap();
        let record = crate::identity::NodeRecord {
            v: crate::identity::NODE_RECORD_VERSION,
            peer_id: id.peer_id(),
            ed25519: id.ed25519_public().to_vec(),
            x25519: id.x25519_public().to_vec(),
            institution: hostile(),
            jurisdiction: "DE".into(),
            addrs: Vec::new(),
            created: 0,
        };
        let bytes = record.sign(&id).unwrap().to_bytes().unwrap();
        let got = crate::identity::VerifiedNodeRecord::from_bytes(&bytes).unwrap();
        assert_clean(&got.record().institution, MAX_NAME);
    }

    proptest! {
        #[test]
        fn never_unsafe_never_long(s in "\\PC*|[\\x00-\\x1f\\x7f-\\u{9f}\\u{200b}-\\u{202e}a-z]{0,300}", max in 0usize..120) {
            let c = clean(&s, max);
            prop_assert!(!c.chars().any(is_unsafe));
            prop_assert!(c.chars().count() <= max);
            if !s.chars().any(is_unsafe) && s.chars().count() <= max {
                prop_assert_eq!(c.as_ref(), s.as_str());
            }
        }
    }
}
