#![allow(clippy::cast_possible_truncation)] // test data patterns: values are reduced mod 251 or < 32

use proptest::prelude::*;

use super::*;

fn key(byte: u8) -> DataKey {
    DataKey::from_bytes([byte; 32])
}

fn sample(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i % 251) as u8).collect()
}

const CS: u32 = MIN_CHUNK_SIZE;

#[test]
fn round_trip_sizes() {
    let k = key(1);
    for len in [0usize, 1, 4095, 4096, 4097, 3 * 4096, 3 * 4096 + 17] {
        let plain = sample(len);
        let sealed = seal_to_vec(&k, 5, CS, &plain).unwrap();
        let header = Header::decode(&sealed).unwrap();
        assert_eq!(header.sealed_len(), sealed.len() as u64, "len {len}");
        assert_eq!(header.object_index, 5);
        let (opened, hash) = open_to_vec(&k, &sealed).unwrap();
        assert_eq!(opened, plain);
        assert_eq!(hash, blake3::hash(&plain));
    }
}

#[test]
fn empty_object_has_one_chunk() {
    let sealed = seal_to_vec(&key(1), 0, CS, b"").unwrap();
    assert_eq!(sealed.len(), HEADER_LEN + TAG_LEN);
}

fn three_chunks() -> (DataKey, Vec<u8>, Vec<u8>) {
    let k = key(9);
    let plain = sample(2 * 4096 + 100);
    let sealed = seal_to_vec(&k, 0, CS, &plain).unwrap();
    (k, plain, sealed)
}

#[test]
fn any_flipped_header_byte_is_detected() {
    let (k, _, sealed) = three_chunks();
    for i in 0..HEADER_LEN {
        let mut bad = sealed.clone();
        bad[i] ^= 0x01;
        assert!(open_to_vec(&k, &bad).is_err(), "header byte {i} flip undetected");
    }
}

#[test]
fn flipped_ciphertext_and_tag_bytes_are_detected() {
    let (k, _, sealed) = three_chunks();
    for i in [
        HEADER_LEN,
        HEADER_LEN + 4095,
        HEADER_LEN + 4096,
        HEADER_LEN + 4096 + 15,
        sealed.len() - 1,
    ] {
        let mut bad = sealed.clone();
        bad[i] ^= 0x80;
        match open_to_vec(&k, &bad) {
            Err(SealError::Tampered { .. }) => {}
            other => panic!("byte {i}: expected Tampered, got {other:?}"),
        }
    }
}

#[test]
fn truncation_and_extension_are_detected() {
    let (k, _, sealed) = three_chunks();
    // Drop the last chunk entirely.
    let cut = HEADER_LEN + 2 * (4096 + TAG_LEN);
    assert!(matches!(open_to_vec(&k, &sealed[..cut]), Err(SealError::Length { .. })));
    // Streaming reader sees EOF before the last chunk.
    assert!(matches!(
        open_stream(&k, &sealed[..cut], Vec::new()),
        Err(SealError::Length { .. })
    ));
    // One byte short, one byte extra.
    assert!(open_to_vec(&k, &sealed[..sealed.len() - 1]).is_err());
    let mut longer = sealed.clone();
    longer.push(0);
    assert!(matches!(
        open_stream(&k, &longer[..], Vec::new()),
        Err(SealError::Length { .. })
    ));
    // Header only.
    assert!(open_to_vec(&k, &sealed[..HEADER_LEN]).is_err());
    assert!(matches!(open_to_vec(&k, &sealed[..10]), Err(SealError::NotSealed)));
}

#[test]
fn truncating_to_a_chunk_boundary_with_forged_length_is_detected() {
    // An attacker shortens the object to its first chunk and rewrites the
    // length: the header is authenticated by every chunk, and chunk 0 was not
    // sealed as "last".
    let (k, _, sealed) = three_chunks();
    let mut bad = sealed[..HEADER_LEN + 4096 + TAG_LEN].to_vec();
    bad[16..24].copy_from_slice(&4096u64.to_le_bytes());
    assert!(matches!(open_to_vec(&k, &bad), Err(SealError::Tampered { chunk: 0 })));
}

#[test]
fn reordered_chunks_are_detected() {
    let (k, _, sealed) = three_chunks();
    let c = 4096 + TAG_LEN;
    let mut bad = sealed.clone();
    let (a, b) = (HEADER_LEN, HEADER_LEN + c);
    let first = sealed[a..a + c].to_vec();
    let second = sealed[b..b + c].to_vec();
    bad[a..a + c].copy_from_slice(&second);
    bad[b..b + c].copy_from_slice(&first);
    assert!(matches!(open_to_vec(&k, &bad), Err(SealError::Tampered { chunk: 0 })));
}

#[test]
fn chunk_moved_between_objects_is_detected() {
    let k = key(3);
    let plain = sample(4096 * 2);
    let a = seal_to_vec(&k, 0, CS, &plain).unwrap();
    let b = seal_to_vec(&k, 1, CS, &plain).unwrap();
    let mut bad = a.clone();
    bad[HEADER_LEN..HEADER_LEN + 4096 + TAG_LEN].copy_from_slice(&b[HEADER_LEN..HEADER_LEN + 4096 + TAG_LEN]);
    assert!(matches!(open_to_vec(&k, &bad), Err(SealError::Tampered { chunk: 0 })));
    // Same object index, same key, different salt: still refused.
    let c = seal_to_vec(&k, 0, CS, &plain).unwrap();
    let mut bad = a.clone();
    bad[HEADER_LEN..].copy_from_slice(&c[HEADER_LEN..]);
    assert!(open_to_vec(&k, &bad).is_err());
}

#[test]
fn wrong_key_is_detected() {
    let (_, _, sealed) = three_chunks();
    assert!(matches!(
        open_to_vec(&key(10), &sealed),
        Err(SealError::Tampered { chunk: 0 })
    ));
}

#[test]
fn unknown_version_and_flags_are_refused() {
    let (k, _, sealed) = three_chunks();
    let mut bad = sealed.clone();
    bad[6] = 3;
    assert!(matches!(open_to_vec(&k, &bad), Err(SealError::UnsupportedVersion(3))));
    // A version 1 object relabelled as streamed (version 2) fails its first chunk.
    let mut bad = sealed.clone();
    bad[6] = STREAMED_VERSION;
    assert!(matches!(open_to_vec(&k, &bad), Err(SealError::Tampered { chunk: 0 })));
    let mut bad = sealed.clone();
    bad[7] = 1;
    assert!(matches!(open_to_vec(&k, &bad), Err(SealError::BadHeader(_))));
}

#[test]
fn a_length_whose_sealed_size_overflows_is_refused() {
    // Regression (cargo fuzz, seal_open): a header with plaintext_len near
    // u64::MAX made sealed_len() wrap and open_to_vec reserve ~1.8e19 bytes.
    for len in [u64::MAX, 0xff00_ff00_ff00_ff10, u64::MAX - 56] {
        let mut bytes = Header {
            chunk_size: MAX_CHUNK_SIZE,
            object_index: 0,
            plaintext_len: 0,
            salt: [0; 32],
            streamed: false,
        }
        .encode()
        .to_vec();
        bytes[8..12].copy_from_slice(&4096u32.to_le_bytes());
        bytes[16..24].copy_from_slice(&len.to_le_bytes());
        bytes.extend_from_slice(&[0u8; 16]);
        assert!(
            matches!(Header::decode(&bytes), Err(SealError::BadHeader(_))),
            "{len:#x}"
        );
        assert!(open_to_vec(&key(1), &bytes).is_err());
    }
    for f in ["seal-wrap-72.bin", "seal-sealed_len-overflow.bin"] {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../fuzz/corpus/seal_open")
            .join(f);
        let data = std::fs::read(&path).expect("regression input in fuzz/corpus/seal_open");
        fuzzing::open_arbitrary(&data);
    }
}

#[test]
fn bad_chunk_sizes_are_refused() {
    for cs in [0u32, 1, 4095, 5000, 32 * 1024 * 1024] {
        assert!(Header::new(cs, 0, 10).is_err(), "chunk size {cs}");
    }
}

#[test]
fn sealer_refuses_misuse() {
    let header = Header::new(CS, 0, 10).unwrap();
    let mut sealer = Sealer::new(&key(1), header);
    assert!(sealer.seal_chunk(&mut [0u8; 9]).is_err());
    sealer.seal_chunk(&mut [0u8; 10]).unwrap();
    assert!(sealer.is_done());
    assert!(matches!(sealer.seal_chunk(&mut [0u8; 10]), Err(SealError::Misuse(_))));
}

#[test]
fn failed_open_zeroes_the_buffer() {
    let header = Header::new(CS, 0, 5).unwrap();
    let opener = Opener::new(&key(1), header);
    let mut chunk = *b"hello";
    assert!(opener.open_chunk(0, &mut chunk, &[0u8; TAG_LEN]).is_err());
    assert_eq!(chunk, [0u8; 5]);
}

#[test]
fn wrap_and_box_round_trip_and_bind_context() {
    let kek = key(1);
    let dk = key(2);
    let w = wrap_key(&kek, &dk, b"study-1").unwrap();
    assert_eq!(unwrap_key(&kek, &w, b"study-1").unwrap(), dk);
    assert!(unwrap_key(&kek, &w, b"study-2").is_err());
    assert!(unwrap_key(&key(3), &w, b"study-1").is_err());
    let mut bytes = *w.as_bytes();
    bytes[30] ^= 1;
    assert!(unwrap_key(&kek, &WrappedKey::from_bytes(&bytes).unwrap(), b"study-1").is_err());
    assert!(WrappedKey::from_bytes(&bytes[1..]).is_err());

    let b = seal_box(&dk, b"meta", b"PATIENT^NAME").unwrap();
    assert_eq!(&open_box(&dk, b"meta", &b).unwrap()[..], b"PATIENT^NAME");
    assert!(open_box(&dk, b"other", &b).is_err());
    let mut bad = b.clone();
    bad[26] ^= 1;
    assert!(open_box(&dk, b"meta", &bad).is_err());
    assert!(open_box(&dk, b"meta", &b[..10]).is_err());
}

#[test]
fn debug_never_prints_keys() {
    let k = key(0xab);
    assert_eq!(format!("{k:?}"), "DataKey(..)");
    let w = wrap_key(&k, &k, b"").unwrap();
    assert_eq!(format!("{w:?}"), "WrappedKey(..)");
}

proptest! {
    #[test]
    fn prop_round_trip(data in proptest::collection::vec(any::<u8>(), 0..20_000), idx in any::<u32>(), shift in 0u32..3) {
        let k = key(4);
        let cs = CS << shift;
        let sealed = seal_to_vec(&k, idx, cs, &data).unwrap();
        let (opened, hash) = open_to_vec(&k, &sealed).unwrap();
        prop_assert_eq!(&opened, &data);
        prop_assert_eq!(hash, blake3::hash(&data));
        prop_assert_eq!(Header::decode(&sealed).unwrap().sealed_len(), sealed.len() as u64);
    }

    #[test]
    fn prop_any_single_bit_flip_is_detected(len in 0usize..9000, pos in any::<proptest::sample::Index>(), bit in 0u8..8) {
        let k = key(5);
        let sealed = seal_to_vec(&k, 0, CS, &sample(len)).unwrap();
        let mut bad = sealed.clone();
        let i = pos.index(bad.len());
        bad[i] ^= 1 << bit;
        prop_assert!(open_to_vec(&k, &bad).is_err());
    }

    #[test]
    fn prop_decoders_never_panic(data in proptest::collection::vec(any::<u8>(), 0..300)) {
        fuzzing::open_arbitrary(&data);
    }
}

/// The published test vectors (docs/vectors/seal-v1.json, shown in docs/PROTOCOL.md).
mod vectors {
    use super::*;
    use serde_json::Value;

    const PATH: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/vectors/seal-v1.json");
    const PROTOCOL: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/PROTOCOL.md");

    fn vector_key() -> DataKey {
        DataKey::from_bytes(std::array::from_fn(|i| i as u8))
    }

    fn vector_header(len: usize) -> Header {
        Header {
            chunk_size: MIN_CHUNK_SIZE,
            object_index: 3,
            plaintext_len: len as u64,
            salt: std::array::from_fn(|i| 0x20 + i as u8),
            streamed: false,
        }
    }

    fn build() -> Value {
        let k = vector_key();
        let mut positives = Vec::new();
        for (name, plain) in [
            ("empty", Vec::new()),
            ("short", b"medmesh".to_vec()),
            ("two-chunks", sample(4096 + 100)),
        ] {
            let sealed = fuzzing::seal_with_salt(&k, vector_header(plain.len()), &plain).unwrap();
            positives.push(serde_json::json!({
                "name": name,
                "plaintext": hex::encode(&plain),
                "plaintext_blake3": blake3::hash(&plain).to_hex().to_string(),
                "sealed": hex::encode(&sealed),
                "sealed_blake3": blake3::hash(&sealed).to_hex().to_string(),
                "expect": "ok",
            }));
        }
        let two = fuzzing::seal_with_salt(&k, vector_header(4196), &sample(4196)).unwrap();
        let c = 4096 + TAG_LEN;
        let mut negatives = Vec::new();
        let mut flip_len = two.clone();
        flip_len[16] ^= 1;
        negatives.push(("header-length-changed", flip_len, "length failure"));
        let mut flip_tag = two.clone();
        let last = flip_tag.len() - 1;
        flip_tag[last] ^= 1;
        negatives.push(("last-tag-flipped", flip_tag, "chunk 1 authentication failure"));
        negatives.push(("last-chunk-dropped", two[..HEADER_LEN + c].to_vec(), "length failure"));
        let mut swapped = two[..HEADER_LEN].to_vec();
        swapped.extend_from_slice(&two[HEADER_LEN + c..]);
        swapped.extend_from_slice(&two[HEADER_LEN..HEADER_LEN + c]);
        negatives.push(("chunks-swapped", swapped, "chunk 0 authentication failure"));
        let mut version = two.clone();
        // Version 2 exists (streamed objects): a version no build knows.
        version[6] = 9;
        negatives.push(("unknown-version", version, "unsupported version"));
        let negatives: Vec<Value> = negatives
            .into_iter()
            .map(|(name, bytes, expect)| serde_json::json!({"name": name, "sealed": hex::encode(bytes), "expect": expect}))
            .collect();
        serde_json::json!({
            "format": "medmesh sealed object v1",
            "key": hex::encode(k.expose_secret()),
            "chunk_size": MIN_CHUNK_SIZE,
            "object_index": 3,
            "salt": hex::encode(vector_header(0).salt),
            "vectors": positives,
            "negative": negatives,
        })
    }

    fn classify(err: &SealError) -> String {
        match err {
            SealError::Length { .. } => "length failure".into(),
            SealError::Tampered { chunk } => format!("chunk {chunk} authentication failure"),
            SealError::UnsupportedVersion(_) => "unsupported version".into(),
            other => format!("{other}"),
        }
    }

    /// Compares the published vector file at `path` with `built` (rewritten
    /// first with `UPDATE_VECTORS=1`), then checks the file independently of
    /// how it was built: every positive opens to its plaintext, every
    /// negative fails as it says, and docs/PROTOCOL.md shows each vector
    /// (`shown` picks the field it shows: the sealed bytes or their hash).
    pub(super) fn check_published(path: &str, built: &Value, shown: impl Fn(&Value) -> &Value) -> Value {
        if std::env::var_os("UPDATE_VECTORS").is_some() {
            std::fs::write(path, serde_json::to_string_pretty(built).unwrap() + "\n").unwrap();
        }
        let text = std::fs::read_to_string(path).expect("vector file (regenerate with UPDATE_VECTORS=1)");
        let file: Value = serde_json::from_str(&text).unwrap();
        assert_eq!(
            &file, built,
            "seal vectors changed ({path}): the format is frozen; regenerate only with a new version"
        );
        let k = DataKey::from_bytes(hex::decode(file["key"].as_str().unwrap()).unwrap().try_into().unwrap());
        for v in file["vectors"].as_array().unwrap() {
            let sealed = hex::decode(v["sealed"].as_str().unwrap()).unwrap();
            let (plain, hash) = open_to_vec(&k, &sealed).unwrap();
            assert_eq!(hex::encode(plain), v["plaintext"].as_str().unwrap());
            assert_eq!(hash.to_hex().as_str(), v["plaintext_blake3"].as_str().unwrap());
        }
        for v in file["negative"].as_array().unwrap() {
            let sealed = hex::decode(v["sealed"].as_str().unwrap()).unwrap();
            let err = open_to_vec(&k, &sealed).unwrap_err();
            assert_eq!(classify(&err), v["expect"].as_str().unwrap(), "vector {}", v["name"]);
        }
        let protocol = std::fs::read_to_string(PROTOCOL).unwrap();
        for v in file["vectors"].as_array().unwrap() {
            assert!(
                protocol.contains(shown(v).as_str().unwrap()),
                "docs/PROTOCOL.md lacks vector {} of {path}",
                v["name"]
            );
        }
        file
    }

    #[test]
    fn vectors_match_the_published_file() {
        // docs/PROTOCOL.md shows the two-chunk vector by its hash, the others in full.
        check_published(PATH, &build(), |v| {
            if v["name"] == "two-chunks" {
                &v["sealed_blake3"]
            } else {
                &v["sealed"]
            }
        });
    }
}

#[test]
fn open_reader_reads_and_seeks_by_chunk() {
    let key = DataKey::generate();
    let plain: Vec<u8> = (0..50_000u32).map(|i| (i % 251) as u8).collect();
    let sealed = seal_to_vec(&key, 3, 4096, &plain).unwrap();
    let mut r = OpenReader::new(&key, std::io::Cursor::new(&sealed)).unwrap();
    let mut all = Vec::new();
    r.read_to_end(&mut all).unwrap();
    assert_eq!(all, plain);
    for offset in [0u64, 1, 4095, 4096, 4097, 12_288, 49_999, 50_000] {
        r.seek_plain(offset).unwrap();
        let mut rest = Vec::new();
        r.read_to_end(&mut rest).unwrap();
        assert_eq!(rest, &plain[usize::try_from(offset).unwrap()..], "offset {offset}");
    }
    // A flipped byte in chunk 2 fails when that chunk is read, not before.
    let mut bad = sealed.clone();
    bad[HEADER_LEN + 2 * (4096 + TAG_LEN) + 5] ^= 1;
    let mut r = OpenReader::new(&key, std::io::Cursor::new(&bad)).unwrap();
    let mut first = vec![0u8; 8192];
    r.read_exact(&mut first).unwrap();
    let err = r.read_to_end(&mut Vec::new()).unwrap_err();
    assert_eq!(err.kind(), std::io::ErrorKind::InvalidData);
}

#[test]
fn sealing_a_chunk_again_by_index_gives_the_same_bytes() {
    let key = DataKey::generate();
    let plain: Vec<u8> = (0..20_000u32).map(|i| (i % 13) as u8).collect();
    let header = Header::new(4096, 1, plain.len() as u64).unwrap();
    let mut first = Sealer::new(&key, header);
    let mut tags = Vec::new();
    let mut sealed = Vec::new();
    for c in plain.chunks(4096) {
        let mut c = c.to_vec();
        tags.push(first.seal_chunk(&mut c).unwrap());
        sealed.push(c);
    }
    let mut again = Sealer::new(&key, header);
    for i in [3u64, 1, 4] {
        let start = usize::try_from(i).unwrap() * 4096;
        let mut c = plain[start..(start + 4096).min(plain.len())].to_vec();
        let tag = again.seal_chunk_at(i, &mut c).unwrap();
        assert_eq!(tag, tags[usize::try_from(i).unwrap()]);
        assert_eq!(c, sealed[usize::try_from(i).unwrap()]);
    }
    assert!(again.seal_chunk_at(5, &mut [0u8; 10]).is_err(), "past the last chunk");
}

/// The published vectors of version 2 (streamed): docs/vectors/seal-v2.json,
/// shown in docs/PROTOCOL.md.
mod streamed_vectors {
    use super::*;
    use serde_json::Value;

    const PATH: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/vectors/seal-v2.json");
    const SALT: [u8; 32] = [
        0x20, 0x21, 0x22, 0x23, 0x24, 0x25, 0x26, 0x27, 0x28, 0x29, 0x2a, 0x2b, 0x2c, 0x2d, 0x2e, 0x2f, 0x30, 0x31,
        0x32, 0x33, 0x34, 0x35, 0x36, 0x37, 0x38, 0x39, 0x3a, 0x3b, 0x3c, 0x3d, 0x3e, 0x3f,
    ];

    fn sample(n: usize) -> Vec<u8> {
        (0..n).map(|i| (i % 251) as u8).collect()
    }

    /// Seals `plain` in pieces of 1000 bytes, as fragments arrive.
    fn streamed(plain: &[u8]) -> Vec<u8> {
        let k = DataKey::from_bytes(std::array::from_fn(|i| i as u8));
        let pieces: Vec<&[u8]> = plain.chunks(1000).collect();
        fuzzing::stream_with_salt(&k, MIN_CHUNK_SIZE, 3, SALT, &pieces).unwrap()
    }

    fn set_len(sealed: &mut [u8], len: u64) {
        sealed[16..24].copy_from_slice(&len.to_le_bytes());
    }

    fn build() -> Value {
        let k = DataKey::from_bytes(std::array::from_fn(|i| i as u8));
        let mut positives = Vec::new();
        for (name, plain) in [
            ("empty", Vec::new()),
            ("short", b"medmesh".to_vec()),
            ("one-full-chunk", sample(4096)),
            ("two-chunks", sample(4096 + 100)),
        ] {
            let sealed = streamed(&plain);
            positives.push(serde_json::json!({
                "name": name,
                "plaintext": hex::encode(&plain),
                "plaintext_blake3": blake3::hash(&plain).to_hex().to_string(),
                "sealed": hex::encode(&sealed),
                "sealed_blake3": blake3::hash(&sealed).to_hex().to_string(),
                "expect": "ok",
            }));
        }
        let two = streamed(&sample(4196));
        let c = 4096 + TAG_LEN;
        let mut negatives = Vec::new();
        let mut longer = two.clone();
        set_len(&mut longer, 4197);
        negatives.push(("length-one-more", longer, "length failure"));
        let mut three = two.clone();
        set_len(&mut three, 8193);
        negatives.push(("length-one-more-chunk", three, "length failure"));
        // Truncation with the length made to match: the first chunk was not sealed as the last.
        let mut cut = two[..HEADER_LEN + c].to_vec();
        set_len(&mut cut, 4096);
        negatives.push(("last-chunk-dropped-length-fixed", cut, "chunk 0 authentication failure"));
        negatives.push(("last-chunk-dropped", two[..HEADER_LEN + c].to_vec(), "length failure"));
        let mut v1 = two.clone();
        v1[6] = VERSION;
        negatives.push(("read-as-version-1", v1, "chunk 0 authentication failure"));
        let negatives: Vec<Value> = negatives
            .into_iter()
            .map(|(name, bytes, expect)| serde_json::json!({"name": name, "sealed": hex::encode(bytes), "expect": expect}))
            .collect();
        serde_json::json!({
            "format": "medmesh sealed object v2 (streamed)",
            "key": hex::encode(k.expose_secret()),
            "chunk_size": MIN_CHUNK_SIZE,
            "object_index": 3,
            "salt": hex::encode(SALT),
            "pieces": 1000,
            "vectors": positives,
            "negative": negatives,
        })
    }

    #[test]
    fn vectors_match_the_published_file() {
        // docs/PROTOCOL.md shows the short vector in full, the others by their hash.
        let file = super::vectors::check_published(PATH, &build(), |v| {
            if v["name"] == "short" {
                &v["sealed"]
            } else {
                &v["sealed_blake3"]
            }
        });
        for v in file["vectors"].as_array().unwrap() {
            assert_eq!(hex::decode(v["sealed"].as_str().unwrap()).unwrap()[6], STREAMED_VERSION);
        }
    }
}

proptest! {
    /// A streamed object opens to exactly its plaintext however the bytes
    /// arrived, reads by chunk like a version 1 object, and refuses a flipped
    /// byte anywhere.
    #[test]
    fn streamed_objects_open_whatever_the_pieces(
        plain in proptest::collection::vec(any::<u8>(), 0..20_000),
        cuts in proptest::collection::vec(0usize..20_000, 0..8),
        flip in any::<prop::sample::Index>(),
    ) {
        let key = DataKey::generate();
        let mut cuts: Vec<usize> = cuts.into_iter().map(|c| c.min(plain.len())).collect();
        cuts.sort_unstable();
        let mut sealer = StreamSealer::new(&key, MIN_CHUNK_SIZE, 5, std::io::Cursor::new(Vec::new())).unwrap();
        let mut at = 0;
        for c in cuts.into_iter().chain([plain.len()]) {
            sealer.update(&plain[at..c]).unwrap();
            at = c;
        }
        prop_assert_eq!(sealer.len(), plain.len() as u64);
        let (header, out) = sealer.finish().unwrap();
        let sealed = out.into_inner();
        prop_assert!(header.streamed);
        prop_assert_eq!(header.sealed_len(), sealed.len() as u64);
        prop_assert_eq!(Header::decode(&sealed).unwrap(), header);
        let (opened, hash) = open_to_vec(&key, &sealed).unwrap();
        prop_assert_eq!(&opened, &plain);
        prop_assert_eq!(hash, blake3::hash(&plain));
        let mut reader = OpenReader::new(&key, std::io::Cursor::new(&sealed)).unwrap();
        let mut again = Vec::new();
        reader.read_to_end(&mut again).unwrap();
        prop_assert_eq!(&again, &plain);
        let mut bad = sealed.clone();
        let i = flip.index(bad.len());
        bad[i] ^= 0x01;
        prop_assert!(open_to_vec(&key, &bad).is_err(), "flipped byte {} opened", i);
    }
}
