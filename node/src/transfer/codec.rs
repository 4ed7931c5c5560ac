//! The one codec of the stream frames (`/medmesh/stream/1`): the frame
//! header (length `u32` BE of type and body, type `u8`), the chunk frame's
//! body (object `u32` BE, chunk `u64` BE, ciphertext ‖ tag), and the sealed
//! chunk (ciphertext ‖ tag) that the recipient keeps as it arrived. The
//! sender, the receiver and the object writer all go through it.

use medmesh_seal::TAG_LEN;

use super::wire::frame;

/// The header of a frame of `kind` whose body is `body_len` bytes; `None`
/// when the body is too long for a frame.
#[must_use]
pub fn header(kind: u8, body_len: usize) -> Option<[u8; frame::HEADER]> {
    let len = u32::try_from(body_len.checked_add(1)?).ok()?;
    let mut head = [0u8; frame::HEADER];
    head[..4].copy_from_slice(&len.to_be_bytes());
    head[4] = kind;
    Some(head)
}

/// The length (of type and body) and the type a frame header announces.
#[must_use]
pub fn parse_header(head: &[u8; frame::HEADER]) -> (usize, u8) {
    let mut len = [0u8; 4];
    len.copy_from_slice(&head[..4]);
    (u32::from_be_bytes(len) as usize, head[4])
}

/// A whole chunk frame of `plain_len` plaintext bytes for chunk `index` of
/// object `object`, header and prefix written; the caller fills the
/// plaintext at `[start..start + plain_len]` (sealed in place) and the tag
/// after it. Returns the frame and `start`; `None` when too long.
#[must_use]
pub fn chunk_frame(object: u32, index: u64, plain_len: usize) -> Option<(Vec<u8>, usize)> {
    let body_len = frame::CHUNK_PREFIX + plain_len + TAG_LEN;
    let head = header(frame::CHUNK, body_len)?;
    let mut f = vec![0u8; frame::HEADER + body_len];
    f[..frame::HEADER].copy_from_slice(&head);
    f[frame::HEADER..frame::HEADER + 4].copy_from_slice(&object.to_be_bytes());
    f[frame::HEADER + 4..frame::HEADER + frame::CHUNK_PREFIX].copy_from_slice(&index.to_be_bytes());
    Some((f, frame::HEADER + frame::CHUNK_PREFIX))
}

/// The object, chunk index and sealed bytes (ciphertext ‖ tag) of a chunk
/// frame's body; `None` when it is too short.
#[must_use]
pub fn parse_chunk(body: &[u8]) -> Option<(u32, u64, &[u8])> {
    let prefix = body.get(..frame::CHUNK_PREFIX)?;
    let mut o = [0u8; 4];
    o.copy_from_slice(&prefix[..4]);
    let mut c = [0u8; 8];
    c.copy_from_slice(&prefix[4..]);
    Some((
        u32::from_be_bytes(o),
        u64::from_be_bytes(c),
        &body[frame::CHUNK_PREFIX..],
    ))
}

/// The DONE frame.
#[must_use]
pub fn done_frame() -> [u8; frame::HEADER] {
    let len = 1u32.to_be_bytes();
    [len[0], len[1], len[2], len[3], frame::DONE]
}

/// The ciphertext and tag of a sealed chunk of `plain_len` plaintext bytes;
/// `None` when it is not that long.
#[must_use]
pub fn split_sealed(sealed: &[u8], plain_len: usize) -> Option<(&[u8], [u8; TAG_LEN])> {
    if sealed.len() != plain_len + TAG_LEN {
        return None;
    }
    let (ct, tag) = sealed.split_at(plain_len);
    let mut t = [0u8; TAG_LEN];
    t.copy_from_slice(tag);
    Some((ct, t))
}

/// [`split_sealed`], the ciphertext mutable (opened in place).
#[must_use]
pub fn split_sealed_mut(sealed: &mut [u8], plain_len: usize) -> Option<(&mut [u8], [u8; TAG_LEN])> {
    if sealed.len() != plain_len + TAG_LEN {
        return None;
    }
    let (ct, tag) = sealed.split_at_mut(plain_len);
    let mut t = [0u8; TAG_LEN];
    t.copy_from_slice(tag);
    Some((ct, t))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The layout written once here is the one on the wire.
    #[test]
    fn a_chunk_frame_is_laid_out_as_the_protocol_says_and_parses_back() {
        let (mut f, start) = chunk_frame(7, 0x0102_0304_0506_0708, 3).unwrap();
        assert_eq!(start, frame::HEADER + frame::CHUNK_PREFIX);
        f[start..start + 3].copy_from_slice(b"abc");
        let body_len = frame::CHUNK_PREFIX + 3 + TAG_LEN;
        assert_eq!(f.len(), frame::HEADER + body_len);
        assert_eq!(&f[..4], &u32::try_from(body_len + 1).unwrap().to_be_bytes());
        assert_eq!(f[4], frame::CHUNK);
        assert_eq!(&f[5..9], &7u32.to_be_bytes());
        assert_eq!(&f[9..17], &[1, 2, 3, 4, 5, 6, 7, 8]);
        let mut head = [0u8; frame::HEADER];
        head.copy_from_slice(&f[..frame::HEADER]);
        assert_eq!(parse_header(&head), (body_len + 1, frame::CHUNK));
        let (o, i, sealed) = parse_chunk(&f[frame::HEADER..]).unwrap();
        assert_eq!((o, i), (7, 0x0102_0304_0506_0708));
        let (ct, _) = split_sealed(sealed, 3).unwrap();
        assert_eq!(ct, b"abc");
        assert!(split_sealed(sealed, 4).is_none());
        assert!(parse_chunk(&[0u8; frame::CHUNK_PREFIX - 1]).is_none());
        assert_eq!(done_frame(), [0, 0, 0, 1, frame::DONE]);
        assert_eq!(header(frame::HAVE, 9), Some([0, 0, 0, 10, frame::HAVE]));
    }
}
