//! All persistent state: the redb index and the encrypted blob store.
//!
//! `store` is the only module that opens redb. Every multi-step change is one
//! redb transaction, and the blob files it refers to are made durable first:
//!
//! 1. sealed objects are written to `blobs/tmp/` and synced;
//! 2. a transaction records their addresses in `pending-v1` (an intent);
//! 3. the files are renamed into place and their directories synced;
//! 4. one transaction inserts the index rows and clears the intent.
//!
//! On open, any intent still recorded (a crash between 2 and 4) is rolled
//! back: its files are removed unless an index row owns them, and `tmp/` is
//! emptied. So after a crash at any point the store holds either the old or
//! the new state, every index row has its blob, and no blob lacks its row.
//!
//! Nothing identifying is stored in the clear. Rows are keyed by keyed BLAKE3
//! hashes (a blind index) of the UIDs and patient IDs; identifying attributes
//! are sealed under the study's data key; blob file names are keyed hashes of
//! the content hash, so a file's presence cannot be confirmed by hashing it.
//!
//! Tables (names carry their version):
//!
//! | table | key | value |
//! |---|---|---|
//! | `meta-v1` | `&str` | `&[u8]` (schema version) |
//! | `studies-v1` | study ref `[u8; 32]` | CBOR [`StudyRow`] |
//! | `instances-v1` | study ref ‖ blob address `[u8; 64]` | CBOR [`InstanceRow`] |
//! | `blobs-v1` | blob address `[u8; 32]` | study ref `[u8; 32]` |
//! | `patients-v1` (multimap) | patient ref `[u8; 32]` | study ref `[u8; 32]` |
//! | `pending-v1` | blob address `[u8; 32]` | `()` |
//! | `trust-v1` | `kind/key` text | trust record bytes (consortia, certificates, bilateral peers, revocations, blocks) |
//! | `consents-v1` | consent ref `[u8; 32]` (blind index of the consent id) | the consent record (CBOR), sealed |
//! | `consent-patients-v1` (multimap) | patient ref `[u8; 32]` | consent ref `[u8; 32]` |
//! | `transfers-v1` | transfer id `[u8; 16]` | the transfer record (CBOR), sealed |
//! | `transfer-docs-v1` | transfer id ‖ kind `[u8; 17]` | signed manifest (kind 1), wrapped transfer key (kind 2) |
//! | `transfer-chunks-v1` | transfer id ‖ object index (BE) `[u8; 20]` | chunks received and verified, in order (`u64`) |
//! | `forward-queue-v1` | item id `u64` | CBOR [`ForwardRow`] (the gateway's forwarding queue, see `forward`) |
//!
//! Objects of a transfer being received are written to
//! `blobs/incoming/<transfer id>/<object index>` as they arrive, in the
//! sealed-object format (sealed to this node by the sender), and linked into
//! place when the whole study has been verified (see [`Store::land_study`]).
//! No batch, import or landing, ever renames or links over a blob a row owns
//! or another batch claims, nor changes a blob's owner.
//!
//! A change that has a ledger entry appends it in its own write transaction
//! (`append_in`, with an [`Author`]): the change and its entry are committed
//! together or not at all.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::fs::{self, File};
use std::io::{self, Read};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use consent_schema::{ConsentId, ConsentRecord};
use medmesh_seal::{DataKey, WrappedKey, open_box, seal_box};
use redb::{
    Database, Durability, MultimapTableDefinition, ReadableDatabase, ReadableMultimapTable, ReadableTable,
    ReadableTableMetadata, TableDefinition,
};
use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

use crate::cbor::{self, CodecError};
use crate::fsutil;
use crate::keystore::{KeystoreError, MasterKey};
use crate::ledger::{Event, SignedEntry};

mod arrivals;
mod backend;
mod files;
mod forward;
mod ledger;
mod notify;
mod purge;
mod relink;
mod sealing;
mod transfers;
pub use arrivals::Arrival;
pub use files::{FileError, OutgoingStaging, SealedFile};
pub use forward::{
    DataSetReader, Enqueued, FORWARD_ROW_VERSION, ForwardCause, ForwardRow, ForwardSource, ForwardState, SpoolError,
};
pub use ledger::{Author, FeedHead, Inserted, MAX_FORKS_PER_AUTHOR, NotificationRow, SplitRow, StoredEntry};
pub use notify::{OutboxItem, SinkState};
pub use purge::Purged;
pub use relink::{RELINK_VERSION, RelinkRecord};
pub use sealing::{ImportLock, StreamingBlob};
pub(crate) use transfers::{DOC_ATTESTATION, DOC_INDEX, DOC_KEY, DOC_MANIFEST, DOC_OBJECTS, DOC_PREP_KEY};
pub use transfers::{LandedObject, Landing};

const META: TableDefinition<'_, &str, &[u8]> = TableDefinition::new("meta-v1");
const STUDIES: TableDefinition<'_, [u8; 32], &[u8]> = TableDefinition::new("studies-v1");
const INSTANCES: TableDefinition<'_, [u8; 64], &[u8]> = TableDefinition::new("instances-v1");
const BLOBS: TableDefinition<'_, [u8; 32], [u8; 32]> = TableDefinition::new("blobs-v1");
const PATIENTS: MultimapTableDefinition<'_, [u8; 32], [u8; 32]> = MultimapTableDefinition::new("patients-v1");
const PENDING: TableDefinition<'_, [u8; 32], ()> = TableDefinition::new("pending-v1");
const TRUST: TableDefinition<'_, &str, &[u8]> = TableDefinition::new("trust-v1");
const CONSENTS: TableDefinition<'_, [u8; 32], &[u8]> = TableDefinition::new("consents-v1");
const CONSENT_PATIENTS: MultimapTableDefinition<'_, [u8; 32], [u8; 32]> =
    MultimapTableDefinition::new("consent-patients-v1");
const TRANSFERS: TableDefinition<'_, [u8; 16], &[u8]> = TableDefinition::new("transfers-v1");
const TRANSFER_DOCS: TableDefinition<'_, [u8; 17], &[u8]> = TableDefinition::new("transfer-docs-v1");
const TRANSFER_CHUNKS: TableDefinition<'_, [u8; 20], u64> = TableDefinition::new("transfer-chunks-v1");
const RELINK: TableDefinition<'_, &str, &[u8]> = TableDefinition::new("relink-v1");
const LEDGER_ENTRIES: TableDefinition<'_, [u8; 40], &[u8]> = TableDefinition::new("ledger-entries-v1");
const LEDGER_IDS: TableDefinition<'_, [u8; 32], [u8; 40]> = TableDefinition::new("ledger-ids-v1");
const LEDGER_STUDIES: TableDefinition<'_, [u8; 32], [u8; 32]> = TableDefinition::new("ledger-studies-v1");
const LEDGER_COMMITS: TableDefinition<'_, [u8; 32], &[u8]> = TableDefinition::new("ledger-commitments-v1");
const LEDGER_FORKS: TableDefinition<'_, [u8; 72], &[u8]> = TableDefinition::new("ledger-forks-v1");
const NOTIFICATIONS: TableDefinition<'_, [u8; 32], &[u8]> = TableDefinition::new("notifications-v1");
/// Latest witness (countersigned feed heads) of each witness key.
const LEDGER_WITNESSES: TableDefinition<'_, [u8; 32], &[u8]> = TableDefinition::new("ledger-witnesses-v1");
/// Witnesses that named another entry than the one held here: witness ‖ author ‖ seq → witness envelope.
const LEDGER_SPLITS: TableDefinition<'_, [u8; 72], &[u8]> = TableDefinition::new("ledger-splits-v1");

/// Version of the store's schema.
pub const SCHEMA_VERSION: u32 = 1;
/// Version of the row formats.
pub const ROW_VERSION: u32 = 1;
const MAX_ROW_LEN: usize = 16 * 1024 * 1024;
const INDEX_KEY_CONTEXT: &str = "medmesh/v1/blind index key";
const ADDRESS_KEY_CONTEXT: &str = "medmesh/v1/blob address key";
const CONSENT_KEY_CONTEXT: &str = "medmesh/v1/consent record key";
const RELINK_KEY_CONTEXT: &str = "medmesh/v1/relink record key";
const LEDGER_COMMIT_KEY_CONTEXT: &str = "medmesh/v1/ledger commitment key";
const DEID_SECRET_CONTEXT: &str = "medmesh/v1/deid site secret";

/// Plaintext bytes per transfer chunk: import records the hash of every
/// piece of this size ([`InstanceRow`]), and transfers send objects in them.
pub const CHUNK_SIZE: u32 = 256 * 1024;
/// The BLAKE3 hash of each [`CHUNK_SIZE`] piece of `data`, concatenated (one
/// hash of the empty input for empty data: an object has at least one chunk).
#[must_use]
pub fn chunk_hashes(data: &[u8]) -> Vec<u8> {
    if data.is_empty() {
        return blake3::hash(&[]).as_bytes().to_vec();
    }
    let mut out = Vec::with_capacity(data.len().div_ceil(CHUNK_SIZE as usize) * 32);
    for c in data.chunks(CHUNK_SIZE as usize) {
        out.extend_from_slice(blake3::hash(c).as_bytes());
    }
    out
}

/// The BLAKE3 hash of an object and its [`chunk_hashes`], computed as its
/// bytes arrive (the gateway's SCP hashes each fragment as it is received;
/// import hashes a large file as it reads it): one pass over the bytes.
#[derive(Debug)]
pub struct ContentHasher {
    whole: blake3::Hasher,
    piece: blake3::Hasher,
    piece_len: usize,
    chunks: Vec<u8>,
}

impl Default for ContentHasher {
    fn default() -> Self {
        Self::new()
    }
}

impl ContentHasher {
    /// Nothing hashed yet.
    #[must_use]
    pub fn new() -> Self {
        Self {
            whole: blake3::Hasher::new(),
            piece: blake3::Hasher::new(),
            piece_len: 0,
            chunks: Vec::new(),
        }
    }

    /// Hashes the next bytes of the object.
    pub fn update(&mut self, mut data: &[u8]) {
        self.whole.update(data);
        let chunk = CHUNK_SIZE as usize;
        while !data.is_empty() {
            let take = (chunk - self.piece_len).min(data.len());
            self.piece.update(&data[..take]);
            self.piece_len += take;
            data = &data[take..];
            if self.piece_len == chunk {
                self.chunks.extend_from_slice(self.piece.finalize().as_bytes());
                self.piece.reset();
                self.piece_len = 0;
            }
        }
    }

    /// The object's hash and its chunk hashes (as [`chunk_hashes`] of all
    /// the bytes given).
    #[must_use]
    pub fn finish(mut self) -> (blake3::Hash, Vec<u8>) {
        if self.piece_len > 0 || self.chunks.is_empty() {
            self.chunks.extend_from_slice(self.piece.finalize().as_bytes());
        }
        (self.whole.finalize(), self.chunks)
    }
}

/// Study-level attributes, all identifying: sealed at rest.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct StudyAttributes {
    /// Patient's Name.
    pub patient_name: String,
    /// Patient ID.
    pub patient_id: String,
    /// Issuer of Patient ID.
    pub issuer_of_patient_id: String,
    /// Patient's Birth Date.
    pub birth_date: String,
    /// Patient's Sex.
    pub sex: String,
    /// Accession Number.
    pub accession_number: String,
    /// Study ID.
    pub study_id: String,
    /// Study Date.
    pub study_date: String,
    /// Study Time.
    pub study_time: String,
    /// Study Description.
    pub study_description: String,
    /// Referring Physician's Name.
    pub referring_physician: String,
    /// Institution Name.
    pub institution: String,
    /// Admission ID (0038,0010): the hospital stay the study belongs to,
    /// used as its episode of care for consent scoping. `None` in rows
    /// stored before it was recorded (unknown, not absent).
    #[serde(default)]
    pub admission_id: Option<String>,
}

/// Errors of the store.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// The database could not be opened or used.
    #[error("database {path}: {source}")]
    Database {
        /// The database file.
        path: String,
        /// The database's error (boxed: it is large).
        #[source]
        source: Box<redb::Error>,
    },
    /// A blob file could not be read or written.
    #[error("blob {path}: {source}")]
    BlobIo {
        /// The blob file.
        path: String,
        /// The cause.
        source: io::Error,
    },
    /// A row could not be decoded.
    #[error("damaged index row in {table}: {source}")]
    Row {
        /// The table.
        table: &'static str,
        /// The cause.
        source: CodecError,
    },
    /// A key could not be unwrapped, or a sealed record did not open.
    #[error("{what} of study {study} does not open under this node's master key")]
    Key {
        /// What failed.
        what: &'static str,
        /// Short study reference.
        study: String,
    },
    /// The keystore failed.
    #[error(transparent)]
    Keystore(#[from] KeystoreError),
    /// A study is locked: its data key was destroyed.
    #[error("study {study} is locked: its data key was destroyed")]
    Locked {
        /// The study's short reference.
        study: String,
    },
    /// The change would overwrite something it must not.
    #[error(transparent)]
    Held(#[from] Conflict),
    /// Nothing is stored under that reference.
    #[error("no study {study} in this store")]
    UnknownStudy {
        /// The study as named (its UID or short reference).
        study: String,
    },
    /// A stored consent record does not open or decode.
    #[error("consent record {record} in consents-v1 does not open under this node's master key or is damaged")]
    Consent {
        /// The record's short key (hex).
        record: String,
    },
    /// A ledger entry cannot be made.
    #[error("ledger: {0}")]
    Ledger(#[source] crate::ledger::LedgerError),
    /// The database file does not exist.
    #[error("database {path}: does not exist (is this a medmesh home? run `medmesh init`)")]
    NoDatabase {
        /// The database file.
        path: String,
    },
    /// The database has another schema version than this build reads.
    #[error("database {path}: schema version {found:?}, this build reads {supported}")]
    Schema {
        /// The database file.
        path: String,
        /// The version found (none when the database has no version).
        found: Option<u32>,
        /// The version this build reads.
        supported: u32,
    },
    /// A row could not be encoded, or a small record decoded.
    #[error(transparent)]
    Codec(CodecError),
    /// The system's random source failed.
    #[error("random: {0}")]
    Random(#[source] getrandom::Error),
    /// A study commitment's row cannot be made or read.
    #[error("commitment {commitment}: {fault}")]
    Commitment {
        /// The commitment's first 8 bytes, in hex (empty while it is made).
        commitment: String,
        /// What is wrong.
        fault: CommitmentFault,
    },
    /// A sink's delivery is recorded out of order (deliveries are in
    /// order, none skipped).
    #[error("sink {sink}: delivered {seq} out of order (cursor at {cursor})")]
    SinkOrder {
        /// The sink.
        sink: String,
        /// The seq recorded as delivered.
        seq: u64,
        /// The sink's cursor.
        cursor: u64,
    },
    /// Ledger entries were to be appended without an author to sign them
    /// (a bug of the caller).
    #[error("ledger: an entry to append has no author")]
    NoAuthor,
    /// Another process holds the database (a node running or starting on
    /// this home, or another command).
    #[error(
        "database {path} is in use by another medmesh process (a node running or starting on this home, or another command){waited}"
    )]
    Busy {
        /// The database file.
        path: String,
        /// How long it was waited for, as text (empty when not waited).
        waited: String,
    },
    /// This node's own feed is shorter than what its peers hold: appending
    /// would sign seqs it signed before (an equivocation).
    #[error(
        "this node's own ledger feed ends at entry {held} here, but its peers hold it up to entry {seen} (entries lost in a crash or a restore from backup): it writes no entry until it has taken them back from its peers (they are caught up from connected peers)"
    )]
    OwnFeedBehind {
        /// The last seq held here.
        held: u64,
        /// The highest seq of this node's feed seen at a peer.
        seen: u64,
    },
    /// A re-link record does not open.
    #[error(
        "re-link record of pseudonym {pseudonym} in relink-v1 does not open under this node's master key or is damaged"
    )]
    Relink {
        /// The pseudonym.
        pseudonym: String,
    },
}

/// What is wrong with a study commitment's row ([`StoreError::Commitment`]).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CommitmentFault {
    /// The salt and study could not be sealed.
    #[error("cannot be sealed: {0}")]
    Seal(#[source] medmesh_seal::SealError),
    /// The row does not open under this node's key.
    #[error("does not open")]
    DoesNotOpen,
    /// The row is too short to hold a salt.
    #[error("a commitment row is too short")]
    TooShort,
    /// The row's salt and study do not give the commitment.
    #[error("a commitment row does not match its commitment")]
    Mismatch,
}

/// What a change would overwrite ([`StoreError::Held`]). Objects are
/// named by their blob's short address, studies by their short reference.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Conflict {
    /// A crash injected by a test at a named step.
    #[error("crash injected at {step}")]
    CrashInjected {
        /// The step.
        step: &'static str,
    },
    /// An object of a batch is held or being stored already.
    #[error("object {object} is held or being stored already; it is not stored again")]
    ObjectPending {
        /// The blob's short address.
        object: String,
    },
    /// A landing names the same blob address twice.
    #[error("the same blob address twice in one landing")]
    SameAddressTwice,
    /// The landing's study is held here already.
    #[error("study {study} {held}; a landing never replaces it")]
    StudyHeld {
        /// The study's short reference.
        study: String,
        /// How it is held.
        held: HeldAs,
    },
    /// An object of the landing is held here already, in another study.
    #[error("object {object} is held here already, in another study; a landing never replaces it")]
    ObjectHeld {
        /// The blob's short address.
        object: String,
    },
    /// An object of the landing is being stored or deleted by another batch.
    #[error("object {object} is being stored or deleted by another batch")]
    ObjectBusy {
        /// The blob's short address.
        object: String,
    },
    /// Files are imported into a study received from another site.
    #[error("this study was received from another site under a grant: files are not imported into it")]
    ReceivedStudy,
}

/// How a study is held already ([`Conflict::StudyHeld`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum HeldAs {
    /// Imported at this site.
    Imported,
    /// Received earlier and locked.
    ReceivedLocked,
    /// Received from a peer under another transfer.
    Received,
}

impl std::fmt::Display for HeldAs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            HeldAs::Imported => "was imported at this site",
            HeldAs::ReceivedLocked => {
                "is held here already, received earlier and locked (purge it first to receive it again)"
            }
            HeldAs::Received => "is held here already, received from a peer under another transfer",
        })
    }
}

/// Opens the database file, waiting up to `wait` (polling) while another
/// process holds it; says once in the log that it waits.
fn open_db(db_path: &Path, fsync: bool, wait: Duration, give_up: &dyn Fn() -> bool) -> Result<Database, StoreError> {
    let start = Instant::now();
    let mut said = false;
    loop {
        match backend::create(db_path, fsync) {
            Ok(db) => return Ok(db),
            Err(redb::DatabaseError::DatabaseAlreadyOpen) => {
                let waited = start.elapsed();
                if waited >= wait || give_up() {
                    return Err(StoreError::Busy {
                        path: db_path.display().to_string(),
                        waited: if wait.is_zero() {
                            String::new()
                        } else {
                            format!("; waited {} s for it to be released", wait.as_secs())
                        },
                    });
                }
                if !said {
                    tracing::warn!(
                        db = %db_path.display(),
                        wait_secs = wait.as_secs(),
                        "the database is in use by another medmesh process (a command run on this home?); waiting for it to be released"
                    );
                    said = true;
                }
                std::thread::sleep(Duration::from_millis(100).min(wait - waited));
            }
            Err(e) => return Err(db_err(db_path, e)),
        }
    }
}

fn db_err(path: &Path, e: impl Into<redb::Error>) -> StoreError {
    StoreError::Database {
        path: path.display().to_string(),
        source: Box::new(e.into()),
    }
}

/// A keyed reference to a study (blind index of its Study Instance UID).
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct StudyRef(pub [u8; 32]);

impl StudyRef {
    /// A short printable form (first 8 bytes, hex).
    #[must_use]
    pub fn short(&self) -> String {
        hex::encode(&self.0[..8])
    }
}

impl fmt::Debug for StudyRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "StudyRef({})", self.short())
    }
}

/// Where a study came from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "kebab-case")]
#[non_exhaustive]
// A study row's origin is decoded one row at a time; the grant's PeerId
// (a fixed 64-byte multihash) makes it large, which costs nothing here.
#[allow(clippy::large_enum_variant)]
pub enum Origin {
    /// Imported at this site.
    Local,
    /// Received from a peer under a grant.
    Received(ReceivedGrant),
}

/// The grant a received study is held under (no patient data: it is kept
/// in the clear in the study row, so a locked study still shows it).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReceivedGrant {
    /// The transfer id (hex).
    pub transfer_id: String,
    /// The holder that sent it (peer id).
    #[serde(with = "crate::ids::peer_text::peer")]
    pub peer: crate::ids::PeerId,
    /// Its institution, as certified.
    pub institution: String,
    /// Purpose of the grant.
    pub purpose: consent_schema::Purpose,
    /// De-identification level it was sent at.
    pub level: consent_schema::DeidLevel,
    /// When the grant ends (Unix seconds): the study is locked then.
    pub expires: i64,
    /// BLAKE3 of the signed grant (hex).
    pub grant_hash: String,
    /// When it was received (Unix seconds).
    pub received: i64,
    /// When it was locked (Unix seconds), once it is.
    #[serde(default)]
    pub locked: Option<i64>,
    /// The holder's signed de-identification attestation (PROTOCOL.md §12.3).
    #[serde(default, with = "serde_bytes")]
    pub attestation: Vec<u8>,
    /// The holder's ledger commitment of the study (from the grant).
    #[serde(default, with = "serde_bytes")]
    pub study_ref: Vec<u8>,
}

/// Index row of a study.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StudyRow {
    /// Row format version.
    pub v: u32,
    /// The study's data key, wrapped under the master key (bound to the study ref).
    #[serde(with = "serde_bytes")]
    pub wrapped_key: Vec<u8>,
    /// [`StudyMeta`], sealed under the study key.
    #[serde(with = "serde_bytes")]
    pub meta: Vec<u8>,
    /// Where the study came from.
    pub origin: Origin,
    /// First stored, Unix seconds.
    pub created: i64,
    /// Last changed, Unix seconds.
    pub updated: i64,
    /// Number of instances.
    pub instances: u64,
    /// Total plaintext bytes.
    pub bytes: u64,
}

/// Identifying study metadata: only ever stored sealed.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct StudyMeta {
    /// Study Instance UID.
    pub study_uid: String,
    /// Patient and study attributes.
    pub attrs: StudyAttributes,
    /// Series by Series Instance UID.
    pub series: BTreeMap<String, SeriesMeta>,
}

impl StudyMeta {
    /// Modalities present in the study.
    #[must_use]
    pub fn modalities(&self) -> BTreeSet<String> {
        self.series
            .values()
            .map(|s| s.modality.clone())
            .filter(|m| !m.is_empty())
            .collect()
    }
}

/// Series metadata.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SeriesMeta {
    /// Series Number.
    pub number: Option<i64>,
    /// Series Description.
    pub description: String,
    /// Modality.
    pub modality: String,
    /// Number of instances stored.
    pub instances: u64,
}

/// Index row of an instance.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct InstanceRow {
    /// Row format version.
    pub v: u32,
    /// Address of the sealed blob.
    #[serde(with = "serde_bytes")]
    pub blob: Vec<u8>,
    /// Plaintext length.
    pub size: u64,
    /// [`InstanceMeta`], sealed under the study key.
    #[serde(with = "serde_bytes")]
    pub meta: Vec<u8>,
}

/// Instance metadata: only ever stored sealed.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct InstanceMeta {
    /// SOP Class UID.
    pub sop_class_uid: String,
    /// SOP Instance UID.
    pub sop_instance_uid: String,
    /// Series Instance UID.
    pub series_uid: String,
    /// Instance Number.
    pub instance_number: Option<i64>,
    /// Transfer Syntax UID.
    pub transfer_syntax: String,
    /// BLAKE3 of the original file bytes.
    #[serde(with = "serde_bytes")]
    pub blake3: Vec<u8>,
    /// Whether the original was a Part 10 file.
    pub part10: bool,
    /// Number of frames.
    pub frames: u32,
    /// Notes from validation.
    pub notes: Vec<String>,
    /// BLAKE3 of each 256 KiB piece of the original bytes (the transfer
    /// chunk size), concatenated: computed at import so a transfer manifest
    /// needs no second pass over the data. Empty in rows written before it
    /// existed (a transfer then hashes the object).
    #[serde(default, skip_serializing_if = "Vec::is_empty", with = "serde_bytes")]
    pub chunks: Vec<u8>,
    /// The object's own Modality (0008,0060), recorded at import so that a
    /// consent's modality scope is decided per object, not per series.
    /// `None` in rows written before it existed (the series' is used).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub modality: Option<String>,
}

/// A sealed object ready to be moved into the store.
#[derive(Debug)]
pub struct StagedObject {
    /// Study it belongs to.
    pub study: StudyRef,
    /// Blob address (also the instance's key within the study).
    pub address: [u8; 32],
    /// The temporary file holding the sealed object.
    pub tmp: PathBuf,
    /// The index row.
    pub row: InstanceRow,
}

/// A new or changed study row to write with a batch.
#[derive(Debug)]
pub struct StudyUpdate {
    /// The study.
    pub study: StudyRef,
    /// Its row.
    pub row: StudyRow,
    /// Blind reference of its patient, for look-up by patient ID.
    pub patient: Option<[u8; 32]>,
    /// Objects of this update stored by the gateway's SCP from a calling
    /// AE: counted in `arrivals-v1` until the node announces them.
    pub arrived: Option<(String, u64)>,
}

/// The store: index and blobs, with the keys derived for them.
pub struct Store {
    db: Database,
    db_path: PathBuf,
    blobs: PathBuf,
    master: MasterKey,
    index_key: DataKey,
    address_key: DataKey,
    consent_key: DataKey,
    fsync: bool,
    /// The outbox's last sequence, sent whenever a notification is added (wakes delivery).
    outbox_tx: tokio::sync::watch::Sender<u64>,
    /// Keys of new studies being imported, and the import lock ([`ImportLock`]).
    new_study_keys: sealing::NewStudyKeys,
    /// Tests: the step of a multi-step change at which to stop as a crash would.
    #[cfg(test)]
    crash_at: std::sync::Mutex<Option<&'static str>>,
}

impl fmt::Debug for Store {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Store")
            .field("db", &self.db_path)
            .field("blobs", &self.blobs)
            .finish_non_exhaustive()
    }
}

/// Result of [`Store::check`].
#[derive(Debug, Default, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct CheckReport {
    /// Studies in the index.
    pub studies: u64,
    /// Instances in the index.
    pub instances: u64,
    /// Blob files found.
    pub blob_files: u64,
    /// Instances whose blob file is missing.
    pub missing_blobs: Vec<String>,
    /// Blob files that no index row owns.
    pub orphan_blobs: Vec<String>,
    /// Blobs that failed to open or whose hash differs.
    pub damaged: Vec<String>,
    /// Blobs referenced by more than one index row.
    pub duplicates: u64,
    /// Crash-recovery intents still recorded.
    pub pending: u64,
    /// Consent records.
    #[serde(default)]
    pub consents: u64,
    /// Consent rows that do not open, or whose patient index entry is wrong.
    #[serde(default)]
    pub damaged_consents: Vec<String>,
}

impl CheckReport {
    /// True when the store is consistent.
    #[must_use]
    pub fn is_clean(&self) -> bool {
        self.missing_blobs.is_empty()
            && self.orphan_blobs.is_empty()
            && self.damaged.is_empty()
            && self.duplicates == 0
            && self.pending == 0
            && self.damaged_consents.is_empty()
    }
}

impl Store {
    /// Creates a new, empty store.
    ///
    /// # Errors
    /// [`StoreError::Database`] when the database cannot be created.
    pub fn create(db_path: &Path, blobs: &Path, master: MasterKey, fsync: bool) -> Result<Self, StoreError> {
        fsutil::create_private_dir(blobs).map_err(|source| blob_io(blobs, source))?;
        fsutil::create_private_dir(&blobs.join("tmp")).map_err(|source| blob_io(blobs, source))?;
        // The 256 fan-out folders of the blob paths, made once here rather
        // than on the import path.
        for prefix in 0..=255u8 {
            let dir = blobs.join(hex::encode([prefix]));
            fsutil::create_private_dir(&dir).map_err(|source| blob_io(&dir, source))?;
        }
        let db = backend::create(db_path, fsync).map_err(|e| db_err(db_path, e))?;
        let store = Self::with_db(db, db_path, blobs, master, fsync);
        let txn = store.db.begin_write().map_err(|e| db_err(db_path, e))?;
        {
            let mut meta = txn.open_table(META).map_err(|e| db_err(db_path, e))?;
            meta.insert("schema_version", SCHEMA_VERSION.to_le_bytes().as_slice())
                .map_err(|e| db_err(db_path, e))?;
            // A new store has no notification from before the outbox.
            meta.insert(notify::OUTBOX_MIGRATED, [1u8].as_slice())
                .map_err(|e| db_err(db_path, e))?;
            txn.open_table(STUDIES).map_err(|e| db_err(db_path, e))?;
            txn.open_table(INSTANCES).map_err(|e| db_err(db_path, e))?;
            txn.open_table(BLOBS).map_err(|e| db_err(db_path, e))?;
            txn.open_table(PENDING).map_err(|e| db_err(db_path, e))?;
            txn.open_table(TRUST).map_err(|e| db_err(db_path, e))?;
            txn.open_table(CONSENTS).map_err(|e| db_err(db_path, e))?;
            txn.open_multimap_table(PATIENTS).map_err(|e| db_err(db_path, e))?;
            txn.open_multimap_table(CONSENT_PATIENTS)
                .map_err(|e| db_err(db_path, e))?;
            txn.open_table(TRANSFERS).map_err(|e| db_err(db_path, e))?;
            txn.open_table(TRANSFER_DOCS).map_err(|e| db_err(db_path, e))?;
            txn.open_table(TRANSFER_CHUNKS).map_err(|e| db_err(db_path, e))?;
            txn.open_table(RELINK).map_err(|e| db_err(db_path, e))?;
            txn.open_table(LEDGER_ENTRIES).map_err(|e| db_err(db_path, e))?;
            txn.open_table(LEDGER_IDS).map_err(|e| db_err(db_path, e))?;
            txn.open_table(LEDGER_STUDIES).map_err(|e| db_err(db_path, e))?;
            txn.open_table(LEDGER_COMMITS).map_err(|e| db_err(db_path, e))?;
            txn.open_table(LEDGER_FORKS).map_err(|e| db_err(db_path, e))?;
            txn.open_table(NOTIFICATIONS).map_err(|e| db_err(db_path, e))?;
            txn.open_table(notify::OUTBOX).map_err(|e| db_err(db_path, e))?;
            txn.open_table(notify::SINKS).map_err(|e| db_err(db_path, e))?;
            txn.open_table(LEDGER_WITNESSES).map_err(|e| db_err(db_path, e))?;
            txn.open_table(LEDGER_SPLITS).map_err(|e| db_err(db_path, e))?;
        }
        txn.commit().map_err(|e| db_err(db_path, e))?;
        Ok(store)
    }

    /// Opens an existing store and rolls back any interrupted batch.
    ///
    /// # Errors
    /// [`StoreError::Database`] when the database cannot be opened (for
    /// example because another process holds it) or has another schema.
    pub fn open(db_path: &Path, blobs: &Path, master: MasterKey, fsync: bool) -> Result<Self, StoreError> {
        Self::open_waiting(db_path, blobs, master, fsync, Duration::ZERO, &|| false)
    }

    /// As [`Store::open`], waiting up to `wait` while another process holds
    /// the database (a command run on the home while its node starts), or
    /// until `give_up` returns true (checked between tries).
    ///
    /// # Errors
    /// [`StoreError::Busy`] when it is still held after `wait` or when
    /// `give_up`; as [`Store::open`] otherwise.
    pub fn open_waiting(
        db_path: &Path,
        blobs: &Path,
        master: MasterKey,
        fsync: bool,
        wait: Duration,
        give_up: &dyn Fn() -> bool,
    ) -> Result<Self, StoreError> {
        if !db_path.exists() {
            return Err(StoreError::NoDatabase {
                path: db_path.display().to_string(),
            });
        }
        let db = open_db(db_path, fsync, wait, give_up)?;
        let store = Self::with_db(db, db_path, blobs, master, fsync);
        let read = store.db.begin_read().map_err(|e| store.err(e))?;
        let meta = read.open_table(META).map_err(|e| store.err(e))?;
        let version = meta
            .get("schema_version")
            .map_err(|e| store.err(e))?
            .and_then(|v| <[u8; 4]>::try_from(v.value()).ok())
            .map(u32::from_le_bytes);
        if version != Some(SCHEMA_VERSION) {
            return Err(StoreError::Schema {
                path: db_path.display().to_string(),
                found: version,
                supported: SCHEMA_VERSION,
            });
        }
        drop(meta);
        drop(read);
        store.recover()?;
        // Before anything else can write a notification.
        store.outbox_migrate()?;
        Ok(store)
    }

    fn with_db(db: Database, db_path: &Path, blobs: &Path, master: MasterKey, fsync: bool) -> Self {
        let index_key = master.derive(INDEX_KEY_CONTEXT);
        let address_key = master.derive(ADDRESS_KEY_CONTEXT);
        let consent_key = master.derive(CONSENT_KEY_CONTEXT);
        Store {
            db,
            db_path: db_path.to_path_buf(),
            blobs: blobs.to_path_buf(),
            master,
            index_key,
            address_key,
            consent_key,
            fsync,
            outbox_tx: tokio::sync::watch::Sender::new(0),
            new_study_keys: sealing::NewStudyKeys::default(),
            #[cfg(test)]
            crash_at: std::sync::Mutex::new(None),
        }
    }

    /// Tests: the next multi-step change that reaches `step` stops there,
    /// as if the process died (nothing after it runs, not even clean-up).
    #[cfg(test)]
    pub(crate) fn crash_at(&self, step: &'static str) {
        *self.crash_at.lock().unwrap_or_else(std::sync::PoisonError::into_inner) = Some(step);
    }

    /// Where a test may stop a multi-step change ([`Store::crash_at`]).
    #[allow(clippy::unnecessary_wraps, clippy::unused_self)] // a no-op outside tests
    fn crash_point(&self, step: &'static str) -> Result<(), StoreError> {
        #[cfg(test)]
        {
            let mut at = self.crash_at.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            if *at == Some(step) {
                *at = None;
                return Err(Conflict::CrashInjected { step }.into());
            }
        }
        let _ = step;
        Ok(())
    }

    fn err(&self, e: impl Into<redb::Error>) -> StoreError {
        db_err(&self.db_path, e)
    }

    /// The site's de-identification secret, derived from the master key,
    /// from which `deid::DeidKeys::site` derives the keys of the UID map,
    /// the pseudonyms and the date shifts: the same input gives the same
    /// output on this node every time.
    #[must_use]
    pub fn deid_secret(&self) -> DataKey {
        self.master.derive(DEID_SECRET_CONTEXT)
    }

    /// The master key (for wrapping keys outside the store).
    #[must_use]
    pub fn master(&self) -> &MasterKey {
        &self.master
    }

    fn blind(&self, label: &str, value: &str) -> [u8; 32] {
        let mut h = blake3::Hasher::new_keyed(self.index_key.expose_secret());
        h.update(label.as_bytes());
        h.update(&[0]);
        h.update(value.as_bytes());
        *h.finalize().as_bytes()
    }

    /// The blind reference of a Study Instance UID.
    #[must_use]
    pub fn study_ref(&self, study_uid: &str) -> StudyRef {
        StudyRef(self.blind("study-instance-uid", study_uid))
    }

    /// The blind reference (keyed pseudonym) of a patient: Patient ID
    /// qualified by its issuer.
    #[must_use]
    pub fn patient_ref(&self, patient_id: &str, issuer: &str) -> [u8; 32] {
        self.blind("patient-id", &format!("{issuer}\u{1f}{patient_id}"))
    }

    /// The keyed reference of a person who logs in to the web console or
    /// API: their identity provider's issuer and subject, blinded with the
    /// store's index key (16 bytes, hex). Only this site can compute it
    /// again from a subject, so the ledger names people without naming them.
    #[must_use]
    pub fn user_ref(&self, issuer: &str, subject: &str) -> String {
        hex::encode(&self.blind("web-user", &format!("{issuer}\u{1f}{subject}"))[..16])
    }

    /// The blob address of content with the given BLAKE3 hash.
    #[must_use]
    pub fn blob_address(&self, content: &blake3::Hash) -> [u8; 32] {
        *blake3::keyed_hash(self.address_key.expose_secret(), content.as_bytes()).as_bytes()
    }

    /// The path of a blob.
    #[must_use]
    pub(crate) fn blob_path(&self, address: &[u8; 32]) -> PathBuf {
        let hex = hex::encode(address);
        self.blobs.join(&hex[..2]).join(&hex)
    }

    /// A private folder on the store's file system where a service spools
    /// files it receives for import (the gateway's SCP): on the same file
    /// system as the blobs, and emptied when the store opens, so that
    /// nothing half-received outlives a crash.
    #[must_use]
    pub fn receiving_dir(&self) -> PathBuf {
        self.blobs.join("tmp")
    }

    /// A fresh temporary path for a blob being written.
    ///
    /// # Errors
    /// [`StoreError::BlobIo`] if the OS RNG fails.
    pub(crate) fn tmp_path(&self) -> Result<PathBuf, StoreError> {
        let mut name = [0u8; 16];
        getrandom::fill(&mut name).map_err(|e| blob_io(&self.blobs, io::Error::other(e.to_string())))?;
        Ok(self.blobs.join("tmp").join(hex::encode(name)))
    }

    /// Seals `reader` (exactly `len` bytes) under `key` into a new temporary
    /// blob and returns its path. With `expect`, the plaintext is hashed while
    /// it is sealed and must have that BLAKE3 hash (for a file read a second
    /// time, which could have changed in between); without, it is not hashed
    /// again (the caller hashed the very bytes it passes).
    ///
    /// # Errors
    /// [`StoreError::BlobIo`], also when the hash differs from `expect`.
    pub fn seal_to_tmp<R: Read>(
        &self,
        key: &DataKey,
        chunk_size: u32,
        len: u64,
        reader: R,
        expect: Option<&blake3::Hash>,
    ) -> Result<PathBuf, StoreError> {
        let tmp = self.tmp_path()?;
        let result = (|| {
            // Unbuffered: the sealer writes each chunk with its tag in one call.
            let mut file = File::create_new(&tmp)?;
            let invalid = |e: medmesh_seal::SealError| io::Error::new(io::ErrorKind::InvalidData, e);
            match expect {
                Some(expected) => {
                    let (_, hash) =
                        medmesh_seal::seal_stream(key, 0, chunk_size, len, reader, &mut file).map_err(invalid)?;
                    if hash != *expected {
                        return Err(io::Error::new(
                            io::ErrorKind::InvalidData,
                            "the file changed while it was being imported",
                        ));
                    }
                }
                None => {
                    medmesh_seal::seal_stream_unhashed(key, 0, chunk_size, len, reader, &mut file).map_err(invalid)?;
                }
            }
            if self.fsync {
                file.sync_data()?;
            }
            Ok::<_, io::Error>(())
        })();
        match result {
            Ok(()) => Ok(tmp),
            Err(source) => {
                let _ = fs::remove_file(&tmp);
                Err(blob_io(&tmp, source))
            }
        }
    }

    /// The data key of a study, if the study exists.
    ///
    /// # Errors
    /// [`StoreError::Key`] when the wrapped key does not open.
    pub fn study_key(&self, study: &StudyRef) -> Result<Option<DataKey>, StoreError> {
        let Some(row) = self.study_row(study)? else {
            return Ok(None);
        };
        self.unwrap_study_key(study, &row).map(Some)
    }

    /// Unwraps the data key held in a study row.
    ///
    /// # Errors
    /// [`StoreError::Key`], [`StoreError::Locked`].
    pub fn unwrap_study_key(&self, study: &StudyRef, row: &StudyRow) -> Result<DataKey, StoreError> {
        if row.wrapped_key.is_empty() {
            return Err(StoreError::Locked { study: study.short() });
        }
        let wrapped = WrappedKey::from_bytes(&row.wrapped_key).map_err(|_| key_err("data key", study))?;
        self.master
            .unwrap(&wrapped, &study.0)
            .map_err(|_| key_err("data key", study))
    }

    /// Wraps a new study key for a study row.
    ///
    /// # Errors
    /// [`StoreError::Keystore`] if the OS RNG fails.
    pub fn wrap_study_key(&self, study: &StudyRef, key: &DataKey) -> Result<Vec<u8>, StoreError> {
        Ok(self.master.wrap(key, &study.0)?.as_bytes().to_vec())
    }

    /// Reads a study row.
    ///
    /// # Errors
    /// [`StoreError::Database`], [`StoreError::Row`].
    pub fn study_row(&self, study: &StudyRef) -> Result<Option<StudyRow>, StoreError> {
        let read = self.db.begin_read().map_err(|e| self.err(e))?;
        let table = read.open_table(STUDIES).map_err(|e| self.err(e))?;
        let Some(v) = table.get(study.0).map_err(|e| self.err(e))? else {
            return Ok(None);
        };
        decode_row::<StudyRow>("studies-v1", v.value()).map(Some)
    }

    /// True when an object with this blob address is stored (in any study).
    ///
    /// # Errors
    /// [`StoreError::Database`].
    pub fn has_blob(&self, address: &[u8; 32]) -> Result<bool, StoreError> {
        let read = self.db.begin_read().map_err(|e| self.err(e))?;
        let table = read.open_table(BLOBS).map_err(|e| self.err(e))?;
        Ok(table.get(address).map_err(|e| self.err(e))?.is_some())
    }

    /// All studies, in reference order.
    ///
    /// # Errors
    /// [`StoreError::Database`], [`StoreError::Row`].
    pub fn studies(&self) -> Result<Vec<(StudyRef, StudyRow)>, StoreError> {
        let read = self.db.begin_read().map_err(|e| self.err(e))?;
        let table = read.open_table(STUDIES).map_err(|e| self.err(e))?;
        let mut out = Vec::new();
        for item in table.iter().map_err(|e| self.err(e))? {
            let (k, v) = item.map_err(|e| self.err(e))?;
            out.push((StudyRef(k.value()), decode_row("studies-v1", v.value())?));
        }
        Ok(out)
    }

    /// The studies of a patient (by the blind patient reference).
    ///
    /// # Errors
    /// [`StoreError::Database`].
    pub fn studies_of_patient(&self, patient: &[u8; 32]) -> Result<Vec<StudyRef>, StoreError> {
        let read = self.db.begin_read().map_err(|e| self.err(e))?;
        let table = read.open_multimap_table(PATIENTS).map_err(|e| self.err(e))?;
        let mut out = Vec::new();
        for v in table.get(patient).map_err(|e| self.err(e))? {
            out.push(StudyRef(v.map_err(|e| self.err(e))?.value()));
        }
        Ok(out)
    }

    /// All instance rows of a study, in reference order.
    ///
    /// # Errors
    /// [`StoreError::Database`], [`StoreError::Row`].
    pub fn instances(&self, study: &StudyRef) -> Result<Vec<([u8; 32], InstanceRow)>, StoreError> {
        let read = self.db.begin_read().map_err(|e| self.err(e))?;
        let table = read.open_table(INSTANCES).map_err(|e| self.err(e))?;
        let lo = instance_key(study, &[0u8; 32]);
        let hi = instance_key(study, &[0xffu8; 32]);
        let mut out = Vec::new();
        for item in table.range(lo..=hi).map_err(|e| self.err(e))? {
            let (k, v) = item.map_err(|e| self.err(e))?;
            let key = k.value();
            let mut iref = [0u8; 32];
            iref.copy_from_slice(&key[32..]);
            out.push((iref, decode_row("instances-v1", v.value())?));
        }
        Ok(out)
    }

    /// Opens a study's sealed metadata.
    ///
    /// # Errors
    /// [`StoreError::Key`], [`StoreError::Row`].
    pub fn open_study_meta(&self, study: &StudyRef, key: &DataKey, row: &StudyRow) -> Result<StudyMeta, StoreError> {
        let plain = open_box(key, &study.0, &row.meta).map_err(|_| key_err("metadata", study))?;
        decode_row("studies-v1 (sealed metadata)", &plain)
    }

    /// Seals a study's metadata for its row.
    ///
    /// # Errors
    /// [`StoreError::Row`] (encoding), [`StoreError::Key`] (RNG).
    pub fn seal_study_meta(&self, study: &StudyRef, key: &DataKey, meta: &StudyMeta) -> Result<Vec<u8>, StoreError> {
        let plain = Zeroizing::new(cbor::encode("study metadata", meta).map_err(|source| StoreError::Row {
            table: "studies-v1",
            source,
        })?);
        seal_box(key, &study.0, &plain).map_err(|_| key_err("metadata", study))
    }

    /// Opens an instance's sealed metadata.
    ///
    /// # Errors
    /// [`StoreError::Key`], [`StoreError::Row`].
    pub fn open_instance_meta(
        &self,
        study: &StudyRef,
        address: &[u8; 32],
        key: &DataKey,
        row: &InstanceRow,
    ) -> Result<InstanceMeta, StoreError> {
        let plain =
            open_box(key, &instance_key(study, address), &row.meta).map_err(|_| key_err("instance metadata", study))?;
        decode_row("instances-v1 (sealed metadata)", &plain)
    }

    /// Seals an instance's metadata for its row.
    ///
    /// # Errors
    /// [`StoreError::Row`] (encoding), [`StoreError::Key`] (RNG).
    pub fn seal_instance_meta(
        &self,
        study: &StudyRef,
        address: &[u8; 32],
        key: &DataKey,
        meta: &InstanceMeta,
    ) -> Result<Vec<u8>, StoreError> {
        let plain = Zeroizing::new(
            cbor::encode("instance metadata", meta).map_err(|source| StoreError::Row {
                table: "instances-v1",
                source,
            })?,
        );
        seal_box(key, &instance_key(study, address), &plain).map_err(|_| key_err("instance metadata", study))
    }

    /// Steps 1 and 2 of a batch (see the module docs): records the blobs'
    /// addresses as pending, then renames their files into place and syncs
    /// the directories. The caller writes the rows and clears the intent.
    /// An address a row owns or another batch claims (a landing, a purge)
    /// refuses the batch: a batch never renames over a blob the store holds.
    /// With `sync_dirs` false (an import with `store.fsync = false`) the
    /// directories are not synced.
    fn place_blobs<'a>(
        &self,
        files: impl Iterator<Item = ([u8; 32], &'a Path)> + Clone,
        sync_dirs: bool,
    ) -> Result<(), StoreError> {
        let mut txn = self.db.begin_write().map_err(|e| self.err(e))?;
        self.durability(&mut txn)?;
        {
            let blobs = txn.open_table(BLOBS).map_err(|e| self.err(e))?;
            let mut pending = txn.open_table(PENDING).map_err(|e| self.err(e))?;
            for (address, _) in files.clone() {
                if blobs.get(address).map_err(|e| self.err(e))?.is_some()
                    || pending.get(address).map_err(|e| self.err(e))?.is_some()
                {
                    return Err(Conflict::ObjectPending {
                        object: hex::encode(&address[..8]),
                    }
                    .into());
                }
                pending.insert(address, ()).map_err(|e| self.err(e))?;
            }
        }
        txn.commit().map_err(|e| self.err(e))?;
        let mut dirs = BTreeSet::new();
        for (address, file) in files {
            let dest = self.blob_path(&address);
            let dir = dest.parent().map_or_else(|| self.blobs.clone(), Path::to_path_buf);
            // The fan-out folders exist from `Store::create` on; one missing
            // (a store made before, or removed by hand) is made here.
            match fs::rename(file, &dest) {
                Err(e) if e.kind() == io::ErrorKind::NotFound && file.exists() => {
                    fsutil::create_private_dir(&dir).map_err(|source| blob_io(&dir, source))?;
                    fs::rename(file, &dest).map_err(|source| blob_io(&dest, source))?;
                }
                r => r.map_err(|source| blob_io(&dest, source))?,
            }
            dirs.insert(dir);
        }
        if sync_dirs {
            for dir in &dirs {
                fsutil::sync_dir(dir).map_err(|source| blob_io(dir, source))?;
            }
        }
        Ok(())
    }

    /// Moves a batch of staged objects into the store and writes their index
    /// rows, crash-safely (see the module docs).
    ///
    /// # Errors
    /// [`StoreError::Database`], [`StoreError::BlobIo`]. On error nothing of
    /// the batch is visible in the index.
    pub fn commit_batch(&self, objects: Vec<StagedObject>, studies: Vec<StudyUpdate>) -> Result<(), StoreError> {
        self.place_blobs(objects.iter().map(|o| (o.address, o.tmp.as_path())), self.fsync)?;
        // 3. Index rows and clear the intent, in one transaction.
        let mut txn = self.db.begin_write().map_err(|e| self.err(e))?;
        self.durability(&mut txn)?;
        {
            let mut instances = txn.open_table(INSTANCES).map_err(|e| self.err(e))?;
            let mut blobs = txn.open_table(BLOBS).map_err(|e| self.err(e))?;
            let mut pending = txn.open_table(PENDING).map_err(|e| self.err(e))?;
            for o in &objects {
                let row = cbor::encode("instance row", &o.row).map_err(|source| StoreError::Row {
                    table: "instances-v1",
                    source,
                })?;
                instances
                    .insert(instance_key(&o.study, &o.address), row.as_slice())
                    .map_err(|e| self.err(e))?;
                blobs.insert(o.address, o.study.0).map_err(|e| self.err(e))?;
                pending.remove(o.address).map_err(|e| self.err(e))?;
            }
            let mut table = txn.open_table(STUDIES).map_err(|e| self.err(e))?;
            let mut patients = txn.open_multimap_table(PATIENTS).map_err(|e| self.err(e))?;
            for s in &studies {
                let row = cbor::encode("study row", &s.row).map_err(|source| StoreError::Row {
                    table: "studies-v1",
                    source,
                })?;
                table.insert(s.study.0, row.as_slice()).map_err(|e| self.err(e))?;
                if let Some(p) = &s.patient {
                    patients.insert(p, s.study.0).map_err(|e| self.err(e))?;
                }
            }
            if studies.iter().any(|s| s.arrived.is_some()) {
                let mut arrivals = txn.open_table(arrivals::ARRIVALS).map_err(|e| self.err(e))?;
                for s in &studies {
                    if let Some((ae, n)) = &s.arrived {
                        let key = arrivals::arrival_key(&s.study, ae);
                        let before = arrivals
                            .get(key.as_slice())
                            .map_err(|e| self.err(e))?
                            .map_or(0, |v| v.value());
                        arrivals
                            .insert(key.as_slice(), before.saturating_add(*n))
                            .map_err(|e| self.err(e))?;
                    }
                }
            }
        }
        txn.commit().map_err(|e| self.err(e))
    }

    /// Stores a trust record under `key` (`kind/id`), replacing any previous one.
    ///
    /// # Errors
    /// [`StoreError::Database`].
    pub fn trust_put(&self, key: &str, value: &[u8]) -> Result<(), StoreError> {
        let txn = self.db.begin_write().map_err(|e| self.err(e))?;
        txn.open_table(TRUST)
            .map_err(|e| self.err(e))?
            .insert(key, value)
            .map_err(|e| self.err(e))?;
        txn.commit().map_err(|e| self.err(e))
    }

    /// Removes a trust record; true when it existed.
    ///
    /// # Errors
    /// [`StoreError::Database`].
    pub fn trust_remove(&self, key: &str) -> Result<bool, StoreError> {
        let txn = self.db.begin_write().map_err(|e| self.err(e))?;
        let existed = txn
            .open_table(TRUST)
            .map_err(|e| self.err(e))?
            .remove(key)
            .map_err(|e| self.err(e))?
            .is_some();
        txn.commit().map_err(|e| self.err(e))?;
        Ok(existed)
    }

    /// The trust record stored under `key`, if any.
    ///
    /// # Errors
    /// [`StoreError::Database`].
    pub fn trust_get(&self, key: &str) -> Result<Option<Vec<u8>>, StoreError> {
        let read = self.db.begin_read().map_err(|e| self.err(e))?;
        let table = read.open_table(TRUST).map_err(|e| self.err(e))?;
        Ok(table.get(key).map_err(|e| self.err(e))?.map(|v| v.value().to_vec()))
    }

    /// All trust records whose key starts with `prefix`, in key order.
    ///
    /// # Errors
    /// [`StoreError::Database`].
    pub fn trust_records(&self, prefix: &str) -> Result<Vec<(String, Vec<u8>)>, StoreError> {
        let read = self.db.begin_read().map_err(|e| self.err(e))?;
        let table = read.open_table(TRUST).map_err(|e| self.err(e))?;
        let mut out = Vec::new();
        for item in table.range(prefix..).map_err(|e| self.err(e))? {
            let (k, v) = item.map_err(|e| self.err(e))?;
            if !k.value().starts_with(prefix) {
                break;
            }
            out.push((k.value().to_string(), v.value().to_vec()));
        }
        Ok(out)
    }

    /// The blind reference of a consent id (the key of its row).
    #[must_use]
    pub fn consent_ref(&self, id: &ConsentId) -> [u8; 32] {
        self.blind("consent-id", id.as_str())
    }

    fn seal_consent(&self, key: &[u8; 32], record: &ConsentRecord) -> Result<Vec<u8>, StoreError> {
        let plain = Zeroizing::new(record.to_cbor());
        seal_box(&self.consent_key, key, &plain).map_err(|_| StoreError::Consent {
            record: hex::encode(&key[..8]),
        })
    }

    fn open_consent(&self, key: &[u8; 32], sealed: &[u8]) -> Result<ConsentRecord, StoreError> {
        let damaged = || StoreError::Consent {
            record: hex::encode(&key[..8]),
        };
        let plain = open_box(&self.consent_key, key, sealed).map_err(|_| damaged())?;
        ConsentRecord::from_cbor(&plain).map_err(|_| damaged())
    }

    /// Changes consent records in one write transaction. For each id,
    /// `decide(index, stored)` sees the record stored now (`None` if there
    /// is none) and returns the record to store, `None` to leave it, or an
    /// error that aborts the whole transaction. Because the decision is made
    /// inside the (single) write transaction, a concurrent withdrawal cannot
    /// be overwritten by a decision made on an older read. Each record is
    /// sealed under the node's consent key and indexed by its patient.
    ///
    /// # Errors
    /// The first error of `decide`, [`StoreError::Database`], [`StoreError::Consent`].
    pub fn update_consents<E: From<StoreError>>(
        &self,
        ids: &[ConsentId],
        mut decide: impl FnMut(usize, Option<ConsentRecord>) -> Result<Option<ConsentRecord>, E>,
    ) -> Result<(), E> {
        self.update_consents_logged(ids, None, |i, stored| Ok::<_, E>((decide(i, stored)?, Vec::new())))?;
        Ok(())
    }

    /// As [`Store::update_consents`], and appends the ledger entries each
    /// decision returns (signed by `author`) in the same write transaction:
    /// a consent change and its entry are committed together or not at all.
    /// Returns the entries appended.
    ///
    /// # Errors
    /// As [`Store::update_consents`]; [`StoreError::Ledger`] (also for entries
    /// without an author).
    pub fn update_consents_logged<E: From<StoreError>>(
        &self,
        ids: &[ConsentId],
        author: Option<&Author<'_>>,
        mut decide: impl FnMut(usize, Option<ConsentRecord>) -> Result<(Option<ConsentRecord>, Vec<Event>), E>,
    ) -> Result<Vec<SignedEntry>, E> {
        let mut txn = self.db.begin_write().map_err(|e| self.err(e))?;
        self.durability(&mut txn)?;
        let mut events = Vec::new();
        {
            let mut table = txn.open_table(CONSENTS).map_err(|e| self.err(e))?;
            let mut index = txn.open_multimap_table(CONSENT_PATIENTS).map_err(|e| self.err(e))?;
            for (i, id) in ids.iter().enumerate() {
                let key = self.consent_ref(id);
                let stored = match table.get(key).map_err(|e| self.err(e))? {
                    Some(v) => Some(self.open_consent(&key, v.value())?),
                    None => None,
                };
                let previous_patient = stored.as_ref().map(|r| *r.patient().as_bytes());
                let (record, more) = decide(i, stored)?;
                events.extend(more);
                let Some(record) = record else {
                    continue;
                };
                if record.id() != id {
                    return Err(StoreError::Consent {
                        record: hex::encode(&key[..8]),
                    }
                    .into());
                }
                let sealed = self.seal_consent(&key, &record)?;
                table.insert(key, sealed.as_slice()).map_err(|e| self.err(e))?;
                if let Some(p) = previous_patient {
                    index.remove(p, key).map_err(|e| self.err(e))?;
                }
                index
                    .insert(record.patient().as_bytes(), key)
                    .map_err(|e| self.err(e))?;
            }
        }
        let entries = match author {
            Some(a) => self.append_all_in(&txn, a, events)?,
            None if events.is_empty() => Vec::new(),
            None => return Err(StoreError::NoAuthor.into()),
        };
        txn.commit().map_err(|e| self.err(e))?;
        Ok(entries)
    }

    /// The consent record with this id, if stored.
    ///
    /// # Errors
    /// [`StoreError::Database`], [`StoreError::Consent`].
    pub fn consent(&self, id: &ConsentId) -> Result<Option<ConsentRecord>, StoreError> {
        let key = self.consent_ref(id);
        let read = self.db.begin_read().map_err(|e| self.err(e))?;
        let table = read.open_table(CONSENTS).map_err(|e| self.err(e))?;
        let Some(v) = table.get(key).map_err(|e| self.err(e))? else {
            return Ok(None);
        };
        self.open_consent(&key, v.value()).map(Some)
    }

    /// The consent records of a patient (by the blind patient reference).
    ///
    /// # Errors
    /// [`StoreError::Database`], [`StoreError::Consent`].
    pub fn consents_of_patient(&self, patient: &[u8; 32]) -> Result<Vec<ConsentRecord>, StoreError> {
        let read = self.db.begin_read().map_err(|e| self.err(e))?;
        let index = read.open_multimap_table(CONSENT_PATIENTS).map_err(|e| self.err(e))?;
        let table = read.open_table(CONSENTS).map_err(|e| self.err(e))?;
        let mut out = Vec::new();
        for k in index.get(patient).map_err(|e| self.err(e))? {
            let key = k.map_err(|e| self.err(e))?.value();
            if let Some(v) = table.get(key).map_err(|e| self.err(e))? {
                out.push(self.open_consent(&key, v.value())?);
            }
        }
        out.sort_by(|a, b| a.id().cmp(b.id()));
        Ok(out)
    }

    /// Every consent record, sorted by id.
    ///
    /// # Errors
    /// [`StoreError::Database`], [`StoreError::Consent`].
    pub fn consents(&self) -> Result<Vec<ConsentRecord>, StoreError> {
        let read = self.db.begin_read().map_err(|e| self.err(e))?;
        let table = read.open_table(CONSENTS).map_err(|e| self.err(e))?;
        let mut out = Vec::new();
        for item in table.iter().map_err(|e| self.err(e))? {
            let (k, v) = item.map_err(|e| self.err(e))?;
            out.push(self.open_consent(&k.value(), v.value())?);
        }
        out.sort_by(|a, b| a.id().cmp(b.id()));
        Ok(out)
    }

    /// The durability of a commit that records what this node signs and
    /// sends away (a receipt, a grant, a ledger entry, a HAVE), shows as
    /// done (an import, a landing, a consent, a transfer's state) or must
    /// not forget (an intent, a key destroyed): written to the database
    /// file when `commit` returns, whatever `store.fsync` says, and flushed
    /// to disk too when it is on ([`backend`]). A node killed right after
    /// must not come back without it (and sign its seqs again).
    fn durability(&self, txn: &mut redb::WriteTransaction) -> Result<(), StoreError> {
        txn.set_durability(Durability::Immediate).map_err(|e| self.err(e))?;
        Ok(())
    }

    /// The durability of local bookkeeping that can be derived again and was
    /// told to nobody (read marks, delivery progress of notifications, peers'
    /// witness statements): with `store.fsync = false` it is not flushed, and
    /// becomes durable with the next durable commit; a crash before that
    /// loses it, and it is derived again (a notification delivered twice, a
    /// witness heard again).
    fn local_durability(&self, txn: &mut redb::WriteTransaction) -> Result<(), StoreError> {
        if !self.fsync {
            txn.set_durability(Durability::None).map_err(|e| self.err(e))?;
        }
        Ok(())
    }

    /// Rolls back an interrupted batch: removes blobs recorded as pending that
    /// no index row owns, and empties `tmp/`.
    fn recover(&self) -> Result<(), StoreError> {
        let tmp = self.blobs.join("tmp");
        for e in fsutil::walk(&tmp, Some(1)).flatten() {
            let _ = fs::remove_file(e.path());
        }
        self.forward_spool_clear();
        let txn = self.db.begin_write().map_err(|e| self.err(e))?;
        {
            // Tables added after schema 1 was first written are created here.
            txn.open_table(TRUST).map_err(|e| self.err(e))?;
            txn.open_table(CONSENTS).map_err(|e| self.err(e))?;
            txn.open_multimap_table(CONSENT_PATIENTS).map_err(|e| self.err(e))?;
            txn.open_table(TRANSFERS).map_err(|e| self.err(e))?;
            txn.open_table(TRANSFER_DOCS).map_err(|e| self.err(e))?;
            txn.open_table(TRANSFER_CHUNKS).map_err(|e| self.err(e))?;
            txn.open_table(RELINK).map_err(|e| self.err(e))?;
            txn.open_table(LEDGER_ENTRIES).map_err(|e| self.err(e))?;
            txn.open_table(LEDGER_IDS).map_err(|e| self.err(e))?;
            txn.open_table(LEDGER_STUDIES).map_err(|e| self.err(e))?;
            txn.open_table(LEDGER_COMMITS).map_err(|e| self.err(e))?;
            txn.open_table(LEDGER_FORKS).map_err(|e| self.err(e))?;
            txn.open_table(NOTIFICATIONS).map_err(|e| self.err(e))?;
            txn.open_table(LEDGER_WITNESSES).map_err(|e| self.err(e))?;
            txn.open_table(LEDGER_SPLITS).map_err(|e| self.err(e))?;
            txn.open_table(forward::FORWARD).map_err(|e| self.err(e))?;
            let mut pending = txn.open_table(PENDING).map_err(|e| self.err(e))?;
            let blobs = txn.open_table(BLOBS).map_err(|e| self.err(e))?;
            let mut addresses = Vec::new();
            for item in pending.iter().map_err(|e| self.err(e))? {
                addresses.push(item.map_err(|e| self.err(e))?.0.value());
            }
            for address in addresses {
                if blobs.get(address).map_err(|e| self.err(e))?.is_none() {
                    let path = self.blob_path(&address);
                    match fs::remove_file(&path) {
                        Ok(()) => {
                            tracing::info!(blob = %hex::encode(&address[..8]), "removed a blob of an interrupted import")
                        }
                        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                        Err(source) => return Err(blob_io(&path, source)),
                    }
                }
                pending.remove(address).map_err(|e| self.err(e))?;
            }
        }
        txn.commit().map_err(|e| self.err(e))
    }

    /// Opens a blob file for reading.
    ///
    /// # Errors
    /// [`StoreError::BlobIo`] naming the file.
    pub fn open_blob(&self, address: &[u8; 32]) -> Result<File, StoreError> {
        let path = self.blob_path(address);
        File::open(&path).map_err(|source| blob_io(&path, source))
    }

    /// Checks the whole store: every index row has its blob, every blob has
    /// its row and opens under its study key with the recorded hash.
    ///
    /// # Errors
    /// [`StoreError::Database`] when the index cannot be read.
    pub fn check(&self, deep: bool) -> Result<CheckReport, StoreError> {
        let mut report = CheckReport::default();
        let studies = self.studies()?;
        report.studies = studies.len() as u64;
        let mut owned = BTreeSet::new();

        for (study, row) in &studies {
            let key = self.unwrap_study_key(study, row).ok();
            for (address, irow) in self.instances(study)? {
                report.instances += 1;
                if irow.blob.as_slice() != address.as_slice() {
                    report.damaged.push(format!(
                        "instance row {} names another blob",
                        hex::encode(&address[..8])
                    ));
                    continue;
                }
                if !owned.insert(address) {
                    report.duplicates += 1;
                }
                let path = self.blob_path(&address);
                if !path.exists() {
                    report.missing_blobs.push(hex::encode(address));
                    continue;
                }
                if deep {
                    let ok = key.as_ref().is_some_and(|k| {
                        let meta = self.open_instance_meta(study, &address, k, &irow).ok();
                        let opened = File::open(&path)
                            .ok()
                            .and_then(|f| medmesh_seal::open_stream(k, io::BufReader::new(f), io::sink()).ok());
                        matches!((meta, opened), (Some(m), Some((_, h))) if h.as_bytes().as_slice() == m.blake3.as_slice())
                    });
                    if !ok {
                        report.damaged.push(hex::encode(address));
                    }
                }
            }
        }
        // Shards (`blobs/<2 hex>/`) and their files; `tmp/`, `incoming/` and the forwarding spool are not the store's blobs.
        let (tmp, incoming) = (self.blobs.join("tmp"), self.blobs.join("incoming"));
        let not_blobs = |p: &Path| p.starts_with(&tmp) || p.starts_with(&incoming) || self.in_forward_spool(p);
        for f in fsutil::walk(&self.blobs, Some(2)) {
            let f = match f {
                Ok(f) => f,
                Err((path, _)) if not_blobs(&path) => continue,
                Err((path, source)) => return Err(blob_io(&path, source)),
            };
            if f.depth() == 2 && !not_blobs(f.path()) {
                report.blob_files += 1;
                let name = f.file_name().to_string_lossy().to_string();
                let known = hex::decode(&name)
                    .ok()
                    .and_then(|b| <[u8; 32]>::try_from(b).ok())
                    .is_some_and(|a| owned.contains(&a));
                if !known {
                    report.orphan_blobs.push(name);
                }
            }
        }
        self.check_consents(&mut report)?;
        let read = self.db.begin_read().map_err(|e| self.err(e))?;
        report.pending = read
            .open_table(PENDING)
            .map_err(|e| self.err(e))?
            .len()
            .map_err(|e| self.err(e))?;
        Ok(report)
    }
}

impl Store {
    /// Every consent row opens under the consent key, and the patient index
    /// names exactly the rows with their patient.
    fn check_consents(&self, report: &mut CheckReport) -> Result<(), StoreError> {
        let read = self.db.begin_read().map_err(|e| self.err(e))?;
        let table = read.open_table(CONSENTS).map_err(|e| self.err(e))?;
        let index = read.open_multimap_table(CONSENT_PATIENTS).map_err(|e| self.err(e))?;
        let mut expected = BTreeSet::new();
        for item in table.iter().map_err(|e| self.err(e))? {
            let (k, v) = item.map_err(|e| self.err(e))?;
            let key = k.value();
            report.consents += 1;
            match self.open_consent(&key, v.value()) {
                Ok(r) if self.consent_ref(r.id()) == key => {
                    expected.insert((*r.patient().as_bytes(), key));
                }
                _ => report.damaged_consents.push(hex::encode(&key[..8])),
            }
        }
        let mut indexed = BTreeSet::new();
        for item in index.iter().map_err(|e| self.err(e))? {
            let (patient, keys) = item.map_err(|e| self.err(e))?;
            for k in keys {
                indexed.insert((patient.value(), k.map_err(|e| self.err(e))?.value()));
            }
        }
        let damaged: BTreeSet<String> = report.damaged_consents.iter().cloned().collect();
        for (_, key) in indexed.symmetric_difference(&expected) {
            let short = hex::encode(&key[..8]);
            if !damaged.contains(&short) {
                report.damaged_consents.push(format!("{short} (patient index)"));
            }
        }
        Ok(())
    }
}

fn instance_key(study: &StudyRef, instance_ref: &[u8; 32]) -> [u8; 64] {
    let mut k = [0u8; 64];
    k[..32].copy_from_slice(&study.0);
    k[32..].copy_from_slice(instance_ref);
    k
}

fn decode_row<T: serde::de::DeserializeOwned + Versioned>(table: &'static str, bytes: &[u8]) -> Result<T, StoreError> {
    let row: T = cbor::decode(table, bytes, MAX_ROW_LEN).map_err(|source| StoreError::Row { table, source })?;
    if let Some(v) = row.version() {
        cbor::check_version(table, v, ROW_VERSION).map_err(|source| StoreError::Row { table, source })?;
    }
    Ok(row)
}

/// Rows that carry a format version.
trait Versioned {
    fn version(&self) -> Option<u32>;
}

impl Versioned for StudyRow {
    fn version(&self) -> Option<u32> {
        Some(self.v)
    }
}

impl Versioned for InstanceRow {
    fn version(&self) -> Option<u32> {
        Some(self.v)
    }
}

impl Versioned for StudyMeta {
    fn version(&self) -> Option<u32> {
        None
    }
}

impl Versioned for InstanceMeta {
    fn version(&self) -> Option<u32> {
        None
    }
}

fn blob_io(path: &Path, source: io::Error) -> StoreError {
    StoreError::BlobIo {
        path: path.display().to_string(),
        source,
    }
}

fn key_err(what: &'static str, study: &StudyRef) -> StoreError {
    StoreError::Key {
        what,
        study: study.short(),
    }
}

#[cfg(test)]
mod consent_tests;
