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
//! The spool (`blobs/forward/<id>/`, private) holds the plaintext of at
//! most one batch of objects of the item being sent; it is deleted when the
//! batch was sent ([`ForwardSpool`] deletes it when dropped), and emptied
//! when the store opens (a crash while sending).

use std::fs::{self, OpenOptions};
use std::io::{BufReader, BufWriter, Write};
use std::os::unix::fs::OpenOptionsExt;
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

/// Why an object was not opened into the spool.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SpoolError {
    /// The index row names no valid blob address.
    #[error("the index row has a bad blob address")]
    BadAddress,
    /// The object's metadata could not be opened.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// A file of the spool or the blob could not be opened or written.
    #[error(transparent)]
    File(#[from] FileError),
    /// The sealed object did not open (damaged, or another key).
    #[error("the stored object failed verification: {0}")]
    Verify(medmesh_seal::SealError),
    /// The object's BLAKE3 differs from the one recorded at import.
    #[error("the stored object failed verification: its BLAKE3 differs from the one recorded at import")]
    Hash,
    /// The file meta group of an object stored without one could not be
    /// made or written.
    #[error("cannot write a file meta group: {0}")]
    Meta(#[source] Box<dicom_object::meta::Error>),
    /// Writing the spool file failed.
    #[error("writing the spool file: {0}")]
    Write(#[source] std::io::Error),
}

/// The private folder (`blobs/forward/<id>/`) where the objects of a batch
/// being forwarded are opened; deleted with what it holds when dropped.
#[derive(Debug)]
pub struct ForwardSpool {
    dir: PathBuf,
}

impl ForwardSpool {
    /// Opens object `n` of the batch (its blob, under the study key `key`)
    /// into a Part 10 file of the spool, checking its BLAKE3; an object
    /// stored without a file meta group gets one made from its metadata.
    /// Returns the file's path.
    ///
    /// # Errors
    /// [`SpoolError`].
    pub fn write(
        &self,
        store: &super::Store,
        n: usize,
        key: &medmesh_seal::DataKey,
        row: &InstanceRow,
        meta: &InstanceMeta,
    ) -> Result<PathBuf, SpoolError> {
        let address: [u8; 32] = row.blob.as_slice().try_into().map_err(|_| SpoolError::BadAddress)?;
        let path = self.dir.join(format!("{n}.dcm"));
        let at = |source| FileError {
            path: path.clone(),
            source,
        };
        let blob = store.blob_file(&address).open()?;
        let file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&path)
            .map_err(at)?;
        let mut w = BufWriter::with_capacity(256 * 1024, file);
        if !meta.part10 {
            write_file_meta(&mut w, meta)?;
        }
        let (_, hash) = medmesh_seal::open_stream(key, BufReader::with_capacity(256 * 1024, blob), &mut w)
            .map_err(SpoolError::Verify)?;
        if hash.as_bytes().as_slice() != meta.blake3 {
            return Err(SpoolError::Hash);
        }
        w.flush().map_err(at)?;
        Ok(path)
    }
}

/// Writes the preamble and a file meta group for a data set stored
/// without one (its transfer syntax, SOP class and instance).
fn write_file_meta(w: &mut impl Write, meta: &InstanceMeta) -> Result<(), SpoolError> {
    let table = dicom_object::meta::FileMetaTableBuilder::new()
        .transfer_syntax(meta.transfer_syntax.as_str())
        .media_storage_sop_class_uid(meta.sop_class_uid.as_str())
        .media_storage_sop_instance_uid(meta.sop_instance_uid.as_str())
        .build()
        .map_err(|e| SpoolError::Meta(Box::new(e)))?;
    w.write_all(&[0u8; 128])
        .and_then(|()| w.write_all(b"DICM"))
        .map_err(SpoolError::Write)?;
    table.write(w).map_err(|e| SpoolError::Meta(Box::new(e)))
}

impl Drop for ForwardSpool {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.dir);
    }
}

impl super::Store {
    fn forward_dir(&self) -> PathBuf {
        self.blobs.join("forward")
    }

    /// Empties the spool (at open: a crash while sending left it).
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

    /// A fresh, private spool folder for a batch of item `id` (what an
    /// earlier batch left is removed first).
    ///
    /// # Errors
    /// [`FileError`] naming the folder.
    pub fn forward_spool(&self, id: u64) -> Result<ForwardSpool, FileError> {
        let root = self.forward_dir();
        crate::fsutil::create_private_dir(&root).map_err(|source| FileError {
            path: root.clone(),
            source,
        })?;
        let dir = root.join(id.to_string());
        if dir.exists() {
            fs::remove_dir_all(&dir).map_err(|source| FileError {
                path: dir.clone(),
                source,
            })?;
        }
        crate::fsutil::create_private_dir(&dir).map_err(|source| FileError {
            path: dir.clone(),
            source,
        })?;
        Ok(ForwardSpool { dir })
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
        let spool = store.forward_spool(1).unwrap();
        std::mem::forget(spool);
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
}
