//! The gateway's forwarding queue (issue 18, item 2): one row per (study,
//! destination) in `forward-queue-v1`, and the private spool where the
//! objects of an item being sent are opened for the C-STORE SCU.
//!
//! | table | key | value |
//! |---|---|---|
//! | `forward-queue-v1` | item id `u64` (from 1, never reused) | CBOR [`ForwardRow`] |
//!
//! The row names its study by study ref (the blind index), its destination
//! by the `name` of its `[[gateway.destination]]` and AE title, its source
//! by peer id and institution, `import` or the calling AE: no patient data.
//! An item is sent again after a crash while it was `sending` (C-STORE is
//! idempotent for the receiver); the `study-forwarded` ledger entry is
//! written in the transaction that marks it `sent`.
//!
//! An object leaves the store for the SCU through [`DataSetReader`]
//! ([`super::Store::open_data_set`]): its data set streamed, each piece
//! authenticated and hashed before it is returned; no plaintext is written
//! to disk. The spool folder of older versions (`blobs/forward/`, the
//! plaintext of one batch) is emptied when the store opens.

use std::fs;
use std::io::{BufReader, Read};
use std::path::{Path, PathBuf};

use consent_schema::{DeidLevel, Purpose};
use redb::{ReadableDatabase, ReadableTable, TableDefinition, TableError};
use serde::{Deserialize, Serialize};

use super::{Author, FileError, InstanceMeta, InstanceRow, StoreError, StudyRef};
use crate::ledger::{Event, SignedEntry};

pub(super) const FORWARD: TableDefinition<'_, u64, &[u8]> = TableDefinition::new("forward-queue-v1");

/// The version of [`ForwardRow`].
pub const FORWARD_ROW_VERSION: u32 = 1;
const MAX_FORWARD_ROW: usize = 64 * 1024;

/// Where an item of the forwarding queue stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ForwardState {
    /// Waiting to be sent.
    Queued,
    /// Being sent (at a restart: sent again).
    Sending,
    /// The last attempt failed; sent again at `next_attempt`.
    Retrying,
    /// Every object was stored by the destination.
    Sent,
    /// Not to be sent (by the site admin, or because the study may not be
    /// forwarded any more): `last_error` says why.
    Cancelled,
    /// Failed `give_up_after` times: not tried again unless retried.
    GivenUp,
}

impl ForwardState {
    /// The spelling in rows, the API and the CLI.
    #[must_use]
    pub const fn as_str(self) -> &'static str {
        match self {
            ForwardState::Queued => "queued",
            ForwardState::Sending => "sending",
            ForwardState::Retrying => "retrying",
            ForwardState::Sent => "sent",
            ForwardState::Cancelled => "cancelled",
            ForwardState::GivenUp => "given-up",
        }
    }

    /// Whether the worker still has something to do for it.
    #[must_use]
    pub const fn is_open(self) -> bool {
        matches!(
            self,
            ForwardState::Queued | ForwardState::Sending | ForwardState::Retrying
        )
    }
}

/// Where a queued study came from (no patient data).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "kebab-case")]
pub enum ForwardSource {
    /// Received from a peer.
    Peer {
        /// Its peer id, as text (the row's documented test vector holds an
        /// example that is not a real peer id).
        peer: String,
        /// Its institution, as certified.
        institution: String,
    },
    /// `study import` at this site.
    Import,
    /// The gateway's SCP, from this calling AE.
    Scp {
        /// The calling AE title.
        calling_ae: String,
    },
}

/// Why an item was not sent (its last attempt), or why it was cancelled:
/// codes and counts only.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[serde(tag = "code", rename_all = "kebab-case")]
#[non_exhaustive]
pub enum ForwardCause {
    /// No association: the destination did not answer, or rejected it.
    #[error("the destination could not be reached or rejected the association")]
    Unreachable,
    /// The destination's TLS files cannot be used.
    #[error("the destination's TLS settings cannot be used")]
    Tls,
    /// The association broke, or the destination answered out of protocol.
    #[error("the DICOM exchange with the destination failed")]
    Protocol,
    /// The destination answered a failure status for some objects.
    #[error("the destination refused {failed} of {objects} objects (last status {status:#06x})")]
    Refused {
        /// Objects refused.
        failed: u64,
        /// Objects of the study.
        objects: u64,
        /// The last failure status.
        status: u16,
    },
    /// The destination accepted no presentation context for some objects
    /// (their SOP class or transfer syntax).
    #[error("the destination accepted no presentation context for {failed} of {objects} objects")]
    NoContext {
        /// Objects without a context.
        failed: u64,
        /// Objects of the study.
        objects: u64,
    },
    /// Objects could not be opened from the store (damaged, or the disk).
    #[error("{failed} objects could not be opened from the store")]
    StoreRead {
        /// Objects that could not be opened.
        failed: u64,
    },
    /// The destination is no longer configured.
    #[error("the destination is no longer configured")]
    UnknownDestination,
    /// The study is no longer held (purged).
    #[error("the study is no longer held")]
    StudyGone,
    /// The study is locked: the grant it was received under expired.
    #[error("the study is locked: the grant it was received under expired")]
    Locked,
    /// The site keeps no study received for this purpose.
    #[error("the site's policy keeps no study received for purpose {purpose}")]
    PurposeNotKept {
        /// The grant's purpose.
        purpose: Purpose,
    },
    /// The site keeps no study received at this level.
    #[error("the site's policy keeps no study received at level {}", level.as_str())]
    LevelNotKept {
        /// The grant's level.
        level: DeidLevel,
    },
    /// Cancelled by the site admin (`medmesh gateway cancel`).
    #[error("cancelled by the site admin")]
    ByAdmin,
}

/// A row of `forward-queue-v1`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ForwardRow {
    /// [`FORWARD_ROW_VERSION`].
    pub v: u32,
    /// The study ref (32 bytes).
    #[serde(with = "serde_bytes")]
    pub study: Vec<u8>,
    /// The `name` of the `[[gateway.destination]]`.
    pub destination: String,
    /// Its AE title when the item was queued.
    pub ae_title: String,
    /// Where the study came from.
    pub source: ForwardSource,
    /// Where the item stands.
    pub state: ForwardState,
    /// Attempts made since it was last queued.
    pub attempts: u32,
    /// When the next attempt is due (Unix seconds), when retrying.
    #[serde(default)]
    pub next_attempt: Option<i64>,
    /// Why the last attempt failed, or why it was cancelled.
    #[serde(default)]
    pub last_error: Option<ForwardCause>,
    /// When queued first (Unix seconds).
    pub created: i64,
    /// When it last changed (Unix seconds).
    pub updated: i64,
    /// Objects stored by the destination in the last complete send (0
    /// before).
    #[serde(default)]
    pub sent_objects: u64,
    /// When it was last sent completely (Unix seconds).
    #[serde(default)]
    pub sent_at: Option<i64>,
}

impl ForwardRow {
    /// The study ref.
    #[must_use]
    pub fn study_ref(&self) -> Option<StudyRef> {
        <[u8; 32]>::try_from(self.study.as_slice()).ok().map(StudyRef)
    }
}

fn missing_is_empty<T>(r: Result<T, TableError>) -> Result<Option<T>, TableError> {
    match r {
        Ok(t) => Ok(Some(t)),
        Err(TableError::TableDoesNotExist(_)) => Ok(None),
        Err(e) => Err(e),
    }
}

/// What [`super::Store::forward_enqueue`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Enqueued {
    /// A new item.
    New(u64),
    /// An item sent before, queued again: the study has another number of
    /// objects now.
    Again(u64),
    /// An item is open, cancelled or given up already: left as it is.
    Exists(u64),
    /// Sent before with as many objects: nothing to send.
    Sent(u64),
}

/// Why an object could not be opened for forwarding, or failed
/// verification while it was read.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SpoolError {
    /// The index row names no valid blob address.
    #[error("the index row has a bad blob address")]
    BadAddress,
    /// The object's metadata could not be opened.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The blob could not be opened.
    #[error(transparent)]
    File(#[from] FileError),
    /// The sealed object did not open (damaged, or another key).
    #[error("the stored object failed verification: {0}")]
    Verify(medmesh_seal::SealError),
    /// The object's BLAKE3 (of a piece, or of the whole) differs from the
    /// one recorded at import.
    #[error("the stored object failed verification: its BLAKE3 differs from the one recorded at import")]
    Hash,
    /// The object's length differs from the one recorded at import.
    #[error("the stored object failed verification: its length differs from the one recorded at import")]
    Length,
    /// A Part 10 object's preamble and file meta group cannot be skipped
    /// (no `DICM`, no File Meta Information Group Length).
    #[error("the stored Part 10 object has no readable file meta group")]
    FileMeta,
}

impl From<SpoolError> for std::io::Error {
    fn from(e: SpoolError) -> Self {
        match e {
            SpoolError::File(f) => f.source,
            e => std::io::Error::new(std::io::ErrorKind::InvalidData, e),
        }
    }
}

/// The data set of one stored object, opened for the C-STORE SCU without
/// a copy on disk: its plaintext is read one transfer chunk
/// ([`super::CHUNK_SIZE`]) at a time, and a piece's bytes are returned
/// only once its seal chunks authenticated (ChaCha20-Poly1305 under the
/// study key) and its BLAKE3 equals the one recorded at import. An object
/// imported before per-piece hashes were recorded is checked against its
/// whole BLAKE3 instead, before the bytes of its last piece are returned
/// (so a receiver never gets the end of a data set that fails). A Part 10
/// object's preamble and file meta group are read and checked, not
/// returned: what [`std::io::Read`] gives is the data set a C-STORE
/// carries. Memory: one piece and one seal chunk.
pub struct DataSetReader {
    inner: medmesh_seal::OpenReader<BufReader<std::fs::File>>,
    /// The piece hashes recorded at import (empty: check `whole` instead).
    pieces: Vec<u8>,
    whole: Vec<u8>,
    hasher: Option<blake3::Hasher>,
    buf: zeroize::Zeroizing<Vec<u8>>,
    pos: usize,
    len: usize,
    piece: usize,
    left: u64,
}

impl std::fmt::Debug for DataSetReader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DataSetReader")
            .field("piece", &self.piece)
            .field("left", &self.left)
            .finish_non_exhaustive()
    }
}

impl DataSetReader {
    fn fill(&mut self) -> Result<bool, SpoolError> {
        if self.left == 0 {
            return Ok(false);
        }
        let n = usize::try_from(self.left.min(u64::from(super::CHUNK_SIZE))).map_err(|_| SpoolError::Length)?;
        let piece = &mut self.buf[..n];
        self.inner.read_exact(piece).map_err(|e| match e.kind() {
            std::io::ErrorKind::UnexpectedEof => SpoolError::Length,
            std::io::ErrorKind::InvalidData => match e.into_inner().map(|b| b.downcast::<medmesh_seal::SealError>()) {
                Some(Ok(seal)) => SpoolError::Verify(*seal),
                _ => SpoolError::Hash,
            },
            _ => SpoolError::Verify(medmesh_seal::SealError::Io(e)),
        })?;
        self.left -= n as u64;
        match &mut self.hasher {
            None => {
                let at = self.piece * 32;
                if self.pieces.get(at..at + 32) != Some(blake3::hash(piece).as_bytes().as_slice()) {
                    return Err(SpoolError::Hash);
                }
            }
            Some(h) => {
                h.update(piece);
                if self.left == 0 && h.finalize().as_bytes().as_slice() != self.whole {
                    return Err(SpoolError::Hash);
                }
            }
        }
        self.piece += 1;
        self.pos = 0;
        self.len = n;
        Ok(true)
    }

    /// Reads exactly `out.len()` bytes (the file meta group).
    fn read_meta(&mut self, out: &mut [u8]) -> Result<(), SpoolError> {
        let mut filled = 0;
        while filled < out.len() {
            if self.pos == self.len && !self.fill()? {
                return Err(SpoolError::FileMeta);
            }
            let n = (out.len() - filled).min(self.len - self.pos);
            out[filled..filled + n].copy_from_slice(&self.buf[self.pos..self.pos + n]);
            self.pos += n;
            filled += n;
        }
        Ok(())
    }

    /// Skips the 128-byte preamble, `DICM` and the file meta group (its
    /// length from (0002,0000), as dicom-rs reads it).
    fn skip_file_meta(&mut self) -> Result<(), SpoolError> {
        let mut head = [0u8; 144];
        self.read_meta(&mut head)?;
        if &head[128..132] != b"DICM" || head[132..140] != [0x02, 0x00, 0x00, 0x00, b'U', b'L', 0x04, 0x00] {
            return Err(SpoolError::FileMeta);
        }
        let mut skip = u64::from(u32::from_le_bytes([head[140], head[141], head[142], head[143]]));
        while skip > 0 {
            if self.pos == self.len && !self.fill()? {
                return Err(SpoolError::FileMeta);
            }
            let n = usize::try_from(skip).unwrap_or(usize::MAX).min(self.len - self.pos);
            self.pos += n;
            skip -= n as u64;
        }
        Ok(())
    }
}

impl Read for DataSetReader {
    fn read(&mut self, out: &mut [u8]) -> std::io::Result<usize> {
        if self.pos == self.len && !self.fill()? {
            return Ok(0);
        }
        let n = out.len().min(self.len - self.pos);
        out[..n].copy_from_slice(&self.buf[self.pos..self.pos + n]);
        self.pos += n;
        Ok(n)
    }
}

impl super::Store {
    fn forward_dir(&self) -> PathBuf {
        self.blobs.join("forward")
    }

    /// Opens the data set of the object `row` of `study` (metadata `meta`,
    /// under the study key `key`) for the C-STORE SCU: see
    /// [`DataSetReader`]. Opening reads the object's header and, for a
    /// Part 10 object, its file meta group.
    ///
    /// # Errors
    /// [`SpoolError`].
    pub fn open_data_set(
        &self,
        key: &medmesh_seal::DataKey,
        row: &InstanceRow,
        meta: &InstanceMeta,
    ) -> Result<DataSetReader, SpoolError> {
        let address: [u8; 32] = row.blob.as_slice().try_into().map_err(|_| SpoolError::BadAddress)?;
        let blob = self.blob_file(&address).open()?;
        let inner = medmesh_seal::OpenReader::new(key, BufReader::with_capacity(256 * 1024, blob))
            .map_err(SpoolError::Verify)?;
        let size = inner.header().plaintext_len;
        if size != row.size {
            return Err(SpoolError::Length);
        }
        let pieces = size.div_ceil(u64::from(super::CHUNK_SIZE)).max(1);
        let by_piece = meta.chunks.len() as u64 == pieces * 32;
        let mut reader = DataSetReader {
            inner,
            pieces: if by_piece { meta.chunks.clone() } else { Vec::new() },
            whole: meta.blake3.clone(),
            hasher: (!by_piece).then(blake3::Hasher::new),
            buf: zeroize::Zeroizing::new(vec![0u8; super::CHUNK_SIZE as usize]),
            pos: 0,
            len: 0,
            piece: 0,
            left: size,
        };
        if size == 0 {
            // One piece: the hash of the empty input.
            let empty = blake3::hash(&[]);
            if (by_piece && meta.chunks != empty.as_bytes()) || (!by_piece && meta.blake3 != empty.as_bytes()) {
                return Err(SpoolError::Hash);
            }
        }
        if meta.part10 {
            reader.skip_file_meta()?;
        }
        Ok(reader)
    }

    /// Empties the spool of older versions (at open: a crash while
    /// sending left it).
    pub(super) fn forward_spool_clear(&self) {
        let dir = self.forward_dir();
        if dir.exists() {
            let _ = fs::remove_dir_all(&dir);
        }
    }

    /// Whether `path` is in the spool (not a blob, for `store check`).
    pub(super) fn in_forward_spool(&self, path: &Path) -> bool {
        path.starts_with(self.forward_dir())
    }

    fn forward_decode(&self, bytes: &[u8]) -> Result<ForwardRow, StoreError> {
        let row: ForwardRow =
            super::cbor::decode("forward queue row", bytes, MAX_FORWARD_ROW).map_err(|source| StoreError::Row {
                table: "forward-queue-v1",
                source,
            })?;
        if row.v != FORWARD_ROW_VERSION {
            return Err(StoreError::Row {
                table: "forward-queue-v1",
                source: super::cbor::CodecError::Version {
                    what: "forward queue row",
                    found: row.v,
                    supported: FORWARD_ROW_VERSION,
                },
            });
        }
        Ok(row)
    }

    /// Queues `study` for `destination`, unless an item for the pair is
    /// open, cancelled or given up (left as it is), or was sent with
    /// `objects` objects (nothing new). A sent item whose study has another
    /// number of objects now is queued again.
    ///
    /// # Errors
    /// [`StoreError::Database`].
    pub fn forward_enqueue(
        &self,
        study: &StudyRef,
        destination: &str,
        ae_title: &str,
        source: &ForwardSource,
        objects: u64,
        now: i64,
    ) -> Result<Enqueued, StoreError> {
        let mut txn = self.db.begin_write().map_err(|e| self.err(e))?;
        self.durability(&mut txn)?;
        let out = {
            let mut t = txn.open_table(FORWARD).map_err(|e| self.err(e))?;
            let mut found = None;
            for item in t.iter().map_err(|e| self.err(e))? {
                let (k, v) = item.map_err(|e| self.err(e))?;
                let row = self.forward_decode(v.value())?;
                if row.study == study.0 && row.destination == destination {
                    found = Some((k.value(), row));
                    break;
                }
            }
            match found {
                Some((id, row)) if row.state != ForwardState::Sent => Enqueued::Exists(id),
                Some((id, row)) if row.sent_objects == objects => Enqueued::Sent(id),
                Some((id, mut row)) => {
                    row.state = ForwardState::Queued;
                    row.attempts = 0;
                    row.next_attempt = None;
                    row.last_error = None;
                    row.ae_title = ae_title.to_string();
                    row.source = source.clone();
                    row.updated = now;
                    let bytes = super::cbor::encode("forward queue row", &row).map_err(StoreError::Codec)?;
                    t.insert(id, bytes.as_slice()).map_err(|e| self.err(e))?;
                    Enqueued::Again(id)
                }
                None => {
                    let id = t
                        .last()
                        .map_err(|e| self.err(e))?
                        .map_or(1, |(k, _)| k.value().saturating_add(1));
                    let row = ForwardRow {
                        v: FORWARD_ROW_VERSION,
                        study: study.0.to_vec(),
                        destination: destination.to_string(),
                        ae_title: ae_title.to_string(),
                        source: source.clone(),
                        state: ForwardState::Queued,
                        attempts: 0,
                        next_attempt: None,
                        last_error: None,
                        created: now,
                        updated: now,
                        sent_objects: 0,
                        sent_at: None,
                    };
                    let bytes = super::cbor::encode("forward queue row", &row).map_err(StoreError::Codec)?;
                    t.insert(id, bytes.as_slice()).map_err(|e| self.err(e))?;
                    Enqueued::New(id)
                }
            }
        };
        txn.commit().map_err(|e| self.err(e))?;
        Ok(out)
    }

    /// Every item of the queue, by id.
    ///
    /// # Errors
    /// [`StoreError::Database`], a row that does not decode.
    pub fn forward_items(&self) -> Result<Vec<(u64, ForwardRow)>, StoreError> {
        let read = self.db.begin_read().map_err(|e| self.err(e))?;
        let Some(t) = missing_is_empty(read.open_table(FORWARD)).map_err(|e| self.err(e))? else {
            return Ok(Vec::new());
        };
        let mut out = Vec::new();
        for item in t.iter().map_err(|e| self.err(e))? {
            let (k, v) = item.map_err(|e| self.err(e))?;
            out.push((k.value(), self.forward_decode(v.value())?));
        }
        Ok(out)
    }

    /// Item `id`, if there is one.
    ///
    /// # Errors
    /// [`StoreError::Database`], a row that does not decode.
    pub fn forward_item(&self, id: u64) -> Result<Option<ForwardRow>, StoreError> {
        let read = self.db.begin_read().map_err(|e| self.err(e))?;
        let Some(t) = missing_is_empty(read.open_table(FORWARD)).map_err(|e| self.err(e))? else {
            return Ok(None);
        };
        t.get(id)
            .map_err(|e| self.err(e))?
            .map(|v| self.forward_decode(v.value()))
            .transpose()
    }

    /// Changes item `id` in one write transaction: `change` sees the row
    /// and says whether to write it back. `None` when there is no such item.
    ///
    /// # Errors
    /// [`StoreError::Database`].
    pub fn forward_update<T>(
        &self,
        id: u64,
        change: impl FnOnce(&mut ForwardRow) -> (bool, T),
    ) -> Result<Option<(ForwardRow, T)>, StoreError> {
        let mut txn = self.db.begin_write().map_err(|e| self.err(e))?;
        self.durability(&mut txn)?;
        let out = {
            let mut t = txn.open_table(FORWARD).map_err(|e| self.err(e))?;
            let current = t
                .get(id)
                .map_err(|e| self.err(e))?
                .map(|v| self.forward_decode(v.value()))
                .transpose()?;
            match current {
                None => None,
                Some(mut row) => {
                    let (write, out) = change(&mut row);
                    if write {
                        let bytes = super::cbor::encode("forward queue row", &row).map_err(StoreError::Codec)?;
                        t.insert(id, bytes.as_slice()).map_err(|e| self.err(e))?;
                    }
                    Some((row, out))
                }
            }
        };
        txn.commit().map_err(|e| self.err(e))?;
        Ok(out)
    }

    /// Marks item `id` sent (`objects` stored by the destination) and
    /// appends `event` (its `study-forwarded` entry) in the same
    /// transaction. `None` when there is no such item.
    ///
    /// # Errors
    /// [`StoreError::Database`], the ledger.
    pub fn forward_sent(
        &self,
        id: u64,
        objects: u64,
        now: i64,
        author: &Author<'_>,
        event: Event,
    ) -> Result<Option<SignedEntry>, StoreError> {
        let mut txn = self.db.begin_write().map_err(|e| self.err(e))?;
        self.durability(&mut txn)?;
        let entry = {
            let mut t = txn.open_table(FORWARD).map_err(|e| self.err(e))?;
            let current = t
                .get(id)
                .map_err(|e| self.err(e))?
                .map(|v| self.forward_decode(v.value()))
                .transpose()?;
            let Some(mut row) = current else {
                return Ok(None);
            };
            row.state = ForwardState::Sent;
            row.sent_objects = objects;
            row.sent_at = Some(now);
            row.next_attempt = None;
            row.last_error = None;
            row.updated = now;
            let bytes = super::cbor::encode("forward queue row", &row).map_err(StoreError::Codec)?;
            t.insert(id, bytes.as_slice()).map_err(|e| self.err(e))?;
            drop(t);
            self.append_in(&txn, author, event)?
        };
        txn.commit().map_err(|e| self.err(e))?;
        Ok(Some(entry))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row() -> ForwardRow {
        ForwardRow {
            v: 1,
            study: vec![7; 32],
            destination: "pacs".into(),
            ae_title: "PACS".into(),
            source: ForwardSource::Peer {
                peer: "12D3KooWExamplePeer".into(),
                institution: "Klinikum Nord".into(),
            },
            state: ForwardState::Retrying,
            attempts: 2,
            next_attempt: Some(1_767_225_660),
            last_error: Some(ForwardCause::Refused {
                failed: 1,
                objects: 3,
                status: 0xA700,
            }),
            created: 1_767_225_600,
            updated: 1_767_225_630,
            sent_objects: 0,
            sent_at: None,
        }
    }

    /// The row's test vector (docs/PROTOCOL.md §6, `forward-queue-v1`).
    const ROW_VECTOR: &str = "ad617601657374756479582007070707070707070707070707070707070707070707070707070707070707076b64657374696e6174696f6e64706163736861655f7469746c65645041435366736f75726365a3646b696e646470656572647065657273313244334b6f6f574578616d706c65506565726b696e737469747574696f6e6d4b6c696e696b756d204e6f7264657374617465687265747279696e6768617474656d707473026c6e6578745f617474656d70741a6955b93c6a6c6173745f6572726f72a464636f64656772656675736564666661696c656401676f626a65637473036673746174757319a70067637265617465641a6955b90067757064617465641a6955b91e6c73656e745f6f626a65637473006773656e745f6174f6";

    #[test]
    fn the_row_is_versioned_cbor_with_a_test_vector() {
        let bytes = crate::cbor::encode("forward queue row", &row()).unwrap();
        let want: String = ROW_VECTOR.split_whitespace().collect();
        assert_eq!(hex::encode(&bytes), want);
        let back: ForwardRow = crate::cbor::decode("forward queue row", &bytes, MAX_FORWARD_ROW).unwrap();
        assert_eq!(back, row());
        // docs/PROTOCOL.md §6 shows the same bytes.
        let doc = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/PROTOCOL.md")).unwrap();
        let at = doc.find("The forwarding queue's row, test vector").unwrap();
        let block = doc[at..].split("```").nth(1).unwrap();
        assert_eq!(block.split_whitespace().collect::<String>(), want);
    }

    fn open(dir: &std::path::Path) -> super::super::Store {
        use crate::keystore::{MasterKey, Passphrase};
        let db = dir.join("index.redb");
        let blobs = dir.join("blobs");
        let key = dir.join("master.key");
        let pass = Passphrase::new("correct horse battery forward".into());
        if db.exists() {
            super::super::Store::open(&db, &blobs, MasterKey::unlock(&key, &pass).unwrap(), false).unwrap()
        } else {
            super::super::Store::create(&db, &blobs, MasterKey::create(&key, &pass).unwrap(), false).unwrap()
        }
    }

    #[test]
    fn the_queue_keeps_one_item_per_study_and_destination_across_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        let store = open(dir.path());
        let (a, b) = (StudyRef([1; 32]), StudyRef([2; 32]));
        let src = ForwardSource::Import;
        assert!(store.forward_items().unwrap().is_empty());
        assert_eq!(
            store.forward_enqueue(&a, "pacs", "PACS", &src, 3, 10).unwrap(),
            Enqueued::New(1)
        );
        assert_eq!(
            store.forward_enqueue(&a, "pacs", "PACS", &src, 3, 11).unwrap(),
            Enqueued::Exists(1)
        );
        assert_eq!(
            store.forward_enqueue(&a, "archive", "ARCH", &src, 3, 11).unwrap(),
            Enqueued::New(2)
        );
        assert_eq!(
            store.forward_enqueue(&b, "pacs", "PACS", &src, 1, 12).unwrap(),
            Enqueued::New(3)
        );
        // Item 1 is being sent when the node stops; its spool is left behind.
        store
            .forward_update(1, |r| {
                r.state = ForwardState::Sending;
                r.attempts = 1;
                (true, ())
            })
            .unwrap()
            .unwrap();
        // (What an older version left: the plaintext of a batch.)
        fs::create_dir_all(dir.path().join("blobs/forward/1")).unwrap();
        fs::write(dir.path().join("blobs/forward/1/0.dcm"), b"plaintext").unwrap();
        assert!(dir.path().join("blobs/forward/1").is_dir());
        drop(store);
        let store = open(dir.path());
        assert!(
            !dir.path().join("blobs/forward").exists(),
            "the spool is emptied at open"
        );
        let items = store.forward_items().unwrap();
        assert_eq!(items.iter().map(|(id, _)| *id).collect::<Vec<_>>(), vec![1, 2, 3]);
        assert_eq!((items[0].1.state, items[0].1.attempts), (ForwardState::Sending, 1));
        assert_eq!(items[0].1.study_ref(), Some(a));
        // Sent with 3 objects: the same count queues nothing, more objects queue it again.
        store
            .forward_update(1, |r| {
                r.state = ForwardState::Sent;
                r.sent_objects = 3;
                (true, ())
            })
            .unwrap();
        assert_eq!(
            store.forward_enqueue(&a, "pacs", "PACS", &src, 3, 20).unwrap(),
            Enqueued::Sent(1)
        );
        assert_eq!(
            store.forward_enqueue(&a, "pacs", "PACS", &src, 4, 21).unwrap(),
            Enqueued::Again(1)
        );
        let again = store.forward_item(1).unwrap().unwrap();
        assert_eq!(
            (again.state, again.attempts, again.updated),
            (ForwardState::Queued, 0, 21)
        );
        // Cancelled stays cancelled; a missing item is None; ids are not reused.
        store
            .forward_update(3, |r| {
                r.state = ForwardState::Cancelled;
                r.last_error = Some(ForwardCause::ByAdmin);
                (true, ())
            })
            .unwrap();
        assert_eq!(
            store.forward_enqueue(&b, "pacs", "PACS", &src, 2, 30).unwrap(),
            Enqueued::Exists(3)
        );
        assert!(store.forward_update(99, |_| (true, ())).unwrap().is_none());
        assert_eq!(
            store.forward_enqueue(&b, "other", "OTHER", &src, 2, 31).unwrap(),
            Enqueued::New(4)
        );
        assert!(store.check(false).unwrap().is_clean());
    }

    /// A Part 10 object's bytes: preamble, `DICM`, a file meta group of
    /// `meta_len` bytes after its group length, then `data`.
    fn part10(meta_len: u32, data: &[u8]) -> Vec<u8> {
        let mut v = vec![0u8; 128];
        v.extend_from_slice(b"DICM");
        v.extend_from_slice(&[0x02, 0x00, 0x00, 0x00, b'U', b'L', 0x04, 0x00]);
        v.extend_from_slice(&meta_len.to_le_bytes());
        v.extend(std::iter::repeat_n(0x02, meta_len as usize));
        v.extend_from_slice(data);
        v
    }

    /// Seals `plain` into the store as a blob; its row and metadata (with
    /// piece hashes when `by_piece`).
    fn blob(
        store: &super::super::Store,
        key: &medmesh_seal::DataKey,
        n: u8,
        plain: &[u8],
        part10: bool,
        by_piece: bool,
    ) -> (InstanceRow, InstanceMeta) {
        let address = [n; 32];
        let path = store.blob_path(&address);
        fs::create_dir_all(path.parent().unwrap()).unwrap();
        let file = fs::File::create(&path).unwrap();
        medmesh_seal::seal_stream(
            key,
            0,
            medmesh_seal::DEFAULT_CHUNK_SIZE,
            plain.len() as u64,
            plain,
            file,
        )
        .unwrap();
        let row = InstanceRow {
            v: 1,
            blob: address.to_vec(),
            size: plain.len() as u64,
            meta: Vec::new(),
        };
        let meta = InstanceMeta {
            blake3: blake3::hash(plain).as_bytes().to_vec(),
            chunks: if by_piece {
                super::super::chunk_hashes(plain)
            } else {
                Vec::new()
            },
            part10,
            ..InstanceMeta::default()
        };
        (row, meta)
    }

    /// Reads what the reader gives before it fails (or to its end).
    fn drain(r: &mut DataSetReader) -> (Vec<u8>, Option<String>) {
        let mut out = Vec::new();
        let mut buf = vec![0u8; 100_000];
        loop {
            match r.read(&mut buf) {
                Ok(0) => return (out, None),
                Ok(n) => out.extend_from_slice(&buf[..n]),
                Err(e) => return (out, Some(e.to_string())),
            }
        }
    }

    #[test]
    fn a_data_set_is_streamed_only_as_far_as_it_verifies() {
        let dir = tempfile::tempdir().unwrap();
        let store = open(dir.path());
        let key = medmesh_seal::DataKey::generate();
        let piece = super::super::CHUNK_SIZE as usize;
        let data: Vec<u8> = (0..(2 * piece + 1000))
            .map(|i| u8::try_from(i % 251).unwrap())
            .collect();
        let p10 = part10(60, &data);
        let tamper_piece = |m: &mut InstanceMeta| m.chunks[32] ^= 1;
        let tamper_whole = |m: &mut InstanceMeta| m.blake3[0] ^= 1;
        type Case<'a> = (
            &'a str,
            Vec<u8>,
            bool,
            bool,
            Option<&'a dyn Fn(&mut InstanceMeta)>,
            Result<Vec<u8>, (usize, &'a str)>,
        );
        // (name, stored bytes, part10, piece hashes, change to the metadata,
        //  Ok(data set) or Err(bytes returned before the failure, error))
        let cases: Vec<Case<'_>> = vec![
            ("part 10, by piece", p10.clone(), true, true, None, Ok(data.clone())),
            ("part 10, whole hash", p10.clone(), true, false, None, Ok(data.clone())),
            (
                "bare data set, by piece",
                data.clone(),
                false,
                true,
                None,
                Ok(data.clone()),
            ),
            (
                "bare data set, whole hash",
                data.clone(),
                false,
                false,
                None,
                Ok(data.clone()),
            ),
            ("empty data set", Vec::new(), false, true, None, Ok(Vec::new())),
            (
                "a piece's hash differs: nothing of it is returned",
                data.clone(),
                false,
                true,
                Some(&tamper_piece),
                Err((piece, "BLAKE3")),
            ),
            (
                "the whole hash differs: the last piece is withheld",
                data.clone(),
                false,
                false,
                Some(&tamper_whole),
                Err((2 * piece, "BLAKE3")),
            ),
        ];
        for (n, (name, plain, p10, by_piece, change, want)) in cases.into_iter().enumerate() {
            let (row, mut meta) = blob(&store, &key, u8::try_from(n).unwrap() + 1, &plain, p10, by_piece);
            if let Some(f) = change {
                f(&mut meta);
            }
            let mut r = store.open_data_set(&key, &row, &meta).unwrap();
            let (got, err) = drain(&mut r);
            match want {
                Ok(want) => {
                    assert_eq!(err, None, "{name}");
                    assert!(got == want, "{name}: {} bytes, expected {}", got.len(), want.len());
                }
                Err((len, text)) => {
                    assert_eq!(got.len(), len, "{name}");
                    assert!(got == data[..len], "{name}");
                    assert!(err.as_deref().is_some_and(|e| e.contains(text)), "{name}: {err:?}");
                }
            }
        }

        // Refused at open: not Part 10 after all, another length, another key.
        let (row, meta) = blob(&store, &key, 100, &data, true, true);
        assert!(matches!(
            store.open_data_set(&key, &row, &meta),
            Err(SpoolError::FileMeta)
        ));
        let (mut row, meta) = blob(&store, &key, 101, &data, false, true);
        row.size += 1;
        assert!(matches!(
            store.open_data_set(&key, &row, &meta),
            Err(SpoolError::Length)
        ));
        let (row, meta) = blob(&store, &key, 102, &data, false, true);
        let other = medmesh_seal::DataKey::generate();
        let err = store.open_data_set(&other, &row, &meta).map(|mut r| drain(&mut r));
        assert!(
            matches!(&err, Err(SpoolError::Verify(_))) || matches!(&err, Ok((got, Some(_))) if got.is_empty()),
            "{err:?}"
        );
    }
}
