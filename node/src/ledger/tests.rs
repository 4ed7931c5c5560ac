//! Table tests of entry checks and property tests of the feed invariants.
#![allow(clippy::unwrap_used)]

use proptest::prelude::*;

use super::*;
use crate::identity::Identity;

fn identity(seed: u8) -> Identity {
    Identity::from_secrets(&[seed; 32], &[seed.wrapping_add(1); 32]).unwrap()
}

fn event(i: u64) -> Event {
    match i % 4 {
        0 => Event::ConsentAdded {
            consent: format!("c-{i:016x}"),
        },
        1 => Event::Accessed {
            action: "export".into(),
            study: Some(hex::encode(commitment(&[1; 32], "1.2.3"))),
            objects: i,
            role: "site-admin".into(),
        },
        2 => Event::PeerBlocked {
            peer: format!("peer-{i}"),
        },
        _ => Event::TransferDenied {
            transfer: format!("{i:032x}"),
            peer: "12D3KooWpeer".into(),
            purpose: "research".into(),
            codes: vec!["no-consent".into()],
        },
    }
}

fn feed(id: &Identity, n: u64) -> Vec<SignedEntry> {
    let mut out: Vec<SignedEntry> = Vec::new();
    for i in 0..n {
        let head = out.last().map(|e| (e.entry.seq, e.id));
        out.push(make_entry(id, head, 1_700_000_000 + i64::try_from(i).unwrap(), event(i)).unwrap());
    }
    out
}

fn resign(id: &Identity, e: &Entry) -> Vec<u8> {
    id.sign(ENTRY_DOMAIN, cbor::encode("e", e).unwrap()).to_bytes().unwrap()
}

#[test]
fn a_feed_chains_and_verifies() {
    let a = identity(3);
    let f = feed(&a, 5);
    for (i, e) in f.iter().enumerate() {
        assert_eq!(e.entry.seq, i as u64 + 1);
        let opened = open_entry(&e.bytes).unwrap();
        assert_eq!(&opened, e);
        if i > 0 {
            check_link(&f[i - 1], e).unwrap();
        }
    }
    assert_eq!(f[0].entry.prev, vec![0u8; 32]);
}

#[test]
fn modified_forged_and_broken_entries_are_refused() {
    let (a, b) = (identity(3), identity(9));
    let f = feed(&a, 3);
    // (what, bytes, refused when opened?, refused as the successor of f[1]?)
    let mut flipped_sig = f[2].bytes.clone();
    let n = flipped_sig.len();
    flipped_sig[n - 2] ^= 1;
    let mut changed = f[2].entry.clone();
    changed.event = event(99);
    let changed_unsigned = {
        // The new body under the old signature.
        let mut env = SignedEnvelope::from_bytes(&f[2].bytes).unwrap();
        env.payload = cbor::encode("e", &changed).unwrap();
        env.to_bytes().unwrap()
    };
    let mut bad_prev = f[2].entry.clone();
    bad_prev.prev = vec![7u8; 32];
    let mut gap = f[2].entry.clone();
    gap.seq = 4;
    let mut first_with_prev = f[0].entry.clone();
    first_with_prev.prev = vec![1u8; 32];
    let mut zero = f[0].entry.clone();
    zero.seq = 0;
    let mut wrong_author = f[2].entry.clone();
    wrong_author.author = b.ed25519_public().to_vec();
    let cases: Vec<(&str, Vec<u8>, bool, bool)> = vec![
        ("flipped signature bit", flipped_sig, true, true),
        ("changed body", changed_unsigned, true, true),
        ("broken previous hash", resign(&a, &bad_prev), false, true),
        ("a gap", resign(&a, &gap), false, true),
        (
            "first entry naming a previous one",
            resign(&a, &first_with_prev),
            true,
            true,
        ),
        ("seq 0", resign(&a, &zero), true, true),
        (
            "signed by another node than its author",
            resign(&b, &f[2].entry),
            true,
            true,
        ),
        ("another author's entry", resign(&b, &wrong_author), false, true),
        ("oversize", vec![0u8; MAX_ENTRY + 1], true, true),
        ("the genuine entry", f[2].bytes.clone(), false, false),
    ];
    for (what, bytes, refused_open, refused_link) in cases {
        let opened = open_entry(&bytes);
        assert_eq!(opened.is_err(), refused_open, "{what}: {opened:?}");
        if let Ok(e) = opened {
            assert_eq!(check_link(&f[1], &e).is_err(), refused_link, "{what}");
        }
    }
}

#[test]
fn commitments_are_salted_and_deterministic() {
    let c = commitment(&[1; 32], "1.2.840.1");
    assert_eq!(c, commitment(&[1; 32], "1.2.840.1"));
    assert_ne!(c, commitment(&[2; 32], "1.2.840.1"));
    assert_ne!(c, commitment(&[1; 32], "1.2.840.2"));
}

proptest! {
    /// Any change to any byte of any entry of a feed is caught: the entry no
    /// longer opens, or it no longer links to its neighbours.
    #[test]
    fn a_changed_byte_anywhere_in_a_feed_is_caught(n in 2u64..6, pick in any::<prop::sample::Index>(), bit in 0u8..8) {
        let a = identity(5);
        let f = feed(&a, n);
        let at = pick.index(f.len());
        let mut bytes = f[at].bytes.clone();
        let pos = pick.index(bytes.len());
        bytes[pos] ^= 1 << bit;
        let caught = match open_entry(&bytes) {
            Err(_) => true,
            Ok(e) => {
                let before = at > 0 && check_link(&f[at - 1], &e).is_err();
                let after = at + 1 < f.len() && check_link(&e, &f[at + 1]).is_err();
                // A change that still opens must be a re-encoding of the same entry.
                before || after || e.entry != f[at].entry
            }
        };
        prop_assert!(caught, "entry {} byte {} bit {}", at, pos, bit);
    }

    /// Appending never changes what was there: every prefix of a feed is the feed it was.
    #[test]
    fn appending_keeps_every_earlier_entry(n in 1u64..8) {
        let a = identity(6);
        let f = feed(&a, n);
        let mut more = f.clone();
        let head = more.last().map(|e| (e.entry.seq, e.id));
        more.push(make_entry(&a, head, 1_800_000_000, event(7)).unwrap());
        prop_assert_eq!(&more[..f.len()], &f[..]);
        check_link(&more[f.len() - 1], &more[f.len()]).unwrap();
    }
}

fn heads_of(feeds: &[Vec<SignedEntry>]) -> Vec<sync::Head> {
    feeds
        .iter()
        .filter_map(|f| f.last())
        .map(|e| sync::Head {
            author: e.entry.author.clone(),
            seq: e.entry.seq,
            id: e.id.to_vec(),
        })
        .collect()
}

#[test]
fn a_witness_opens_only_as_signed_by_its_witness() {
    let w = identity(9);
    let heads = heads_of(&[feed(&identity(1), 3), feed(&identity(2), 1)]);
    let signed = gossip::make_witness(&w, 1_700_000_000, heads.clone()).unwrap();
    let opened = gossip::open_witness(&signed.bytes).unwrap();
    assert_eq!(opened.witness.witness, w.ed25519_public().to_vec());
    assert_eq!(opened.key(), w.ed25519_public());
    // Heads are kept sorted by author, whatever order they were given in.
    let mut sorted = heads.clone();
    sorted.sort_by(|a, b| a.author.cmp(&b.author));
    assert_eq!(opened.witness.heads, sorted);

    let resign_witness = |x: &gossip::Witness| {
        w.sign(gossip::WITNESS_DOMAIN, cbor::encode("w", x).unwrap())
            .to_bytes()
            .unwrap()
    };
    let mut flipped = signed.bytes.clone();
    let n = flipped.len();
    flipped[n - 1] ^= 1;
    let mut other_witness = opened.witness.clone();
    other_witness.witness = identity(3).ed25519_public().to_vec();
    let mut unsorted = opened.witness.clone();
    unsorted.heads.reverse();
    let mut short_id = opened.witness.clone();
    short_id.heads[0].id.truncate(31);
    let mut seq0 = opened.witness.clone();
    seq0.heads[0].seq = 0;
    let mut v2 = opened.witness.clone();
    v2.v = 2;
    let entry_domain = w
        .sign(ENTRY_DOMAIN, cbor::encode("w", &opened.witness).unwrap())
        .to_bytes()
        .unwrap();
    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        ("flipped signature bit", flipped, "signature"),
        (
            "signed by another key",
            resign_witness(&other_witness),
            "not signed by its witness",
        ),
        ("authors out of order", resign_witness(&unsorted), "ascending"),
        ("id of 31 bytes", resign_witness(&short_id), "32 bytes"),
        ("seq 0", resign_witness(&seq0), "seq at least 1"),
        ("version 2", resign_witness(&v2), "version"),
        (
            "an entry's signature domain",
            entry_domain,
            "found a signed medmesh/v1/ledger-entry",
        ),
        ("not CBOR", vec![0xff; 10], "witness"),
    ];
    for (name, bytes, want) in cases {
        let err = gossip::open_witness(&bytes).expect_err(name).to_string();
        assert!(err.contains(want), "{name}: {err}");
    }
    let too_many: Vec<sync::Head> = (0..=gossip::MAX_WITNESS_HEADS)
        .map(|i| sync::Head {
            author: blake3::hash(&i.to_be_bytes()).as_bytes().to_vec(),
            seq: 1,
            id: vec![0; 32],
        })
        .collect();
    assert!(gossip::make_witness(&w, 1, too_many).is_err());
}

#[test]
fn gossip_messages_carry_a_version_and_a_bounded_size() {
    let e = feed(&identity(1), 1).remove(0);
    let msg = gossip::GossipMsg::Entry {
        v: LEDGER_VERSION,
        entry: serde_bytes::ByteBuf::from(e.bytes.clone()),
    };
    let bytes = msg.to_bytes().unwrap();
    assert_eq!(gossip::GossipMsg::from_bytes(&bytes).unwrap(), msg);
    let v9 = gossip::GossipMsg::Entry {
        v: 9,
        entry: serde_bytes::ByteBuf::from(e.bytes),
    };
    let err = gossip::GossipMsg::from_bytes(&v9.to_bytes().unwrap()).unwrap_err();
    assert!(err.to_string().contains("version"), "{err}");
    let huge = gossip::GossipMsg::Entry {
        v: LEDGER_VERSION,
        entry: serde_bytes::ByteBuf::from(vec![0u8; gossip::MAX_GOSSIP]),
    };
    assert!(gossip::GossipMsg::from_bytes(&huge.to_bytes().unwrap()).is_err());
    assert!(gossip::GossipMsg::from_bytes(b"\xa1\x64kind\x63bad").is_err());
}
