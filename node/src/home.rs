//! A node's home directory and the [`Node`] that opens it.
//!
//! ```text
//! HOME/                 0700
//!   config.toml         settings, every one documented (config::TEMPLATE)
//!   node-record.cbor    the signed NodeRecord (public)
//!   keys/               0700
//!     master.key        master key wrapped under the passphrase (Argon2id), 0600
//!     identity.key      Ed25519 identity secret, sealed under the master key, 0600
//!     x25519.key        X25519 static secret, sealed under the master key, 0600
//!   db/medmesh.redb     the index (redb), 0600
//!   blobs/              sealed study objects, content-addressed, 0700
//!   node.sock           admin API socket while `medmesh run` runs, 0600
//! ```

pub mod consent;
pub mod deid;
pub mod ledger;
pub mod retention;
pub mod trust;

use std::fs;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::config::{self, Config, ConfigError};
use crate::dicom::StudyAttributes;
use crate::dicom::export::{self, ExportError, ExportOutcome, ExportSummary};
use crate::dicom::ingest::{self, ImportEvent, ImportOptions, ImportSummary, IngestError};
use crate::fsutil;
use crate::identity::{
    Identity, IdentityError, NODE_RECORD_VERSION, NodeRecord, VerifiedNodeRecord, check_jurisdiction,
};
use crate::keystore::{KeystoreError, MasterKey, Passphrase};
use crate::store::{Origin, Store, StoreError, StudyRef};

/// Errors of creating or opening a home.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum HomeError {
    /// The home already exists.
    #[error("{0} already exists and is not empty: refusing to overwrite a node home")]
    Exists(String),
    /// The home does not exist or is not a medmesh home.
    #[error("{path} is not a medmesh home ({reason}); create one with `medmesh init`")]
    NotAHome {
        /// The path.
        path: String,
        /// Why.
        reason: String,
    },
    /// A file of the home could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: String,
        /// The cause.
        source: std::io::Error,
    },
    /// The institution name is empty or too long.
    #[error("institution name must be 1 to 200 characters, without control characters")]
    BadInstitution,
    /// Keystore failure (wrong passphrase among them).
    #[error(transparent)]
    Keystore(#[from] KeystoreError),
    /// Identity failure.
    #[error(transparent)]
    Identity(#[from] IdentityError),
    /// Configuration failure.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// Store failure.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// Import failure.
    #[error(transparent)]
    Import(#[from] IngestError),
    /// Export failure.
    #[error(transparent)]
    Export(#[from] ExportError),
    /// De-identification cannot run as asked.
    #[error("{0}")]
    Deid(String),
    /// A ledger lookup failed.
    #[error("{0}")]
    Ledger(String),
    /// Trust operation failure.
    #[error(transparent)]
    Trust(#[from] trust::TrustOpError),
    /// Consent operation failure.
    #[error(transparent)]
    Consent(#[from] consent::ConsentOpError),
    /// Transfer failure.
    #[error(transparent)]
    Transfer(#[from] crate::transfer::TransferError),
    /// The home, its keys or the socket's folder are open to the group or
    /// others: `medmesh run` refuses to start.
    #[error(
        "{}: open to the group or others; only the home's owner may read it. Fix with: chmod go-rwx {}",
        .0.iter().map(|(p, m)| format!("{p} (mode {m:04o})")).collect::<Vec<_>>().join(", "),
        .0.iter().map(|(p, _)| shell_quote(p)).collect::<Vec<_>>().join(" ")
    )]
    Exposed(Vec<(String, u32)>),
}

/// Whether a file mode gives the group or others any access.
#[must_use]
pub fn exposed(mode: u32) -> bool {
    mode & 0o077 != 0
}

fn shell_quote(s: &str) -> String {
    if s.chars().all(|c| c.is_ascii_alphanumeric() || "/._-+,:=@".contains(c)) {
        s.to_string()
    } else {
        format!("'{}'", s.replace('\'', "'\\''"))
    }
}

fn io(path: &Path, source: std::io::Error) -> HomeError {
    HomeError::Io {
        path: path.display().to_string(),
        source,
    }
}

/// The paths of a home.
#[derive(Debug, Clone)]
pub struct HomePaths {
    /// The home directory.
    pub root: PathBuf,
}

impl HomePaths {
    /// Paths of the home at `root`.
    #[must_use]
    pub fn new(root: &Path) -> Self {
        Self {
            root: root.to_path_buf(),
        }
    }
    /// `node.sock`: the admin API of the running node (0600).
    #[must_use]
    pub fn socket(&self) -> PathBuf {
        self.root.join("node.sock")
    }
    /// `config.toml`.
    #[must_use]
    pub fn config(&self) -> PathBuf {
        self.root.join("config.toml")
    }
    /// `node-record.cbor`.
    #[must_use]
    pub fn record(&self) -> PathBuf {
        self.root.join("node-record.cbor")
    }
    /// `keys/`.
    #[must_use]
    pub fn keys(&self) -> PathBuf {
        self.root.join("keys")
    }
    /// `keys/master.key`.
    #[must_use]
    pub fn master_key(&self) -> PathBuf {
        self.keys().join("master.key")
    }
    /// `keys/identity.key`.
    #[must_use]
    pub fn identity_key(&self) -> PathBuf {
        self.keys().join("identity.key")
    }
    /// `keys/x25519.key`.
    #[must_use]
    pub fn x25519_key(&self) -> PathBuf {
        self.keys().join("x25519.key")
    }
    /// `db/medmesh.redb`.
    #[must_use]
    pub fn db(&self) -> PathBuf {
        self.root.join("db").join("medmesh.redb")
    }
    /// `blobs/`.
    #[must_use]
    pub fn blobs(&self) -> PathBuf {
        self.root.join("blobs")
    }

    /// Checks that the home (the socket's folder), `keys/` and the key files
    /// give the group and others no access, as `medmesh init` made them.
    ///
    /// # Errors
    /// [`HomeError::Exposed`] naming every such path with its mode and the
    /// `chmod` command that fixes them; [`HomeError::Io`] when one cannot be read.
    pub fn check_private(&self) -> Result<(), HomeError> {
        use std::os::unix::fs::PermissionsExt;
        let socket_dir = match self.socket().parent() {
            Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
            _ => PathBuf::from("."),
        };
        let mut wanted = vec![socket_dir, self.root.clone(), self.keys()];
        wanted.extend([self.master_key(), self.identity_key(), self.x25519_key()]);
        wanted.dedup();
        let mut open = Vec::new();
        for path in wanted {
            let mode = fs::metadata(&path).map_err(|e| io(&path, e))?.permissions().mode() & 0o7777;
            if exposed(mode) {
                open.push((path.display().to_string(), mode));
            }
        }
        if open.is_empty() {
            Ok(())
        } else {
            Err(HomeError::Exposed(open))
        }
    }
}

/// An opened node home: keys unlocked, store open.
#[derive(Debug)]
pub struct Node {
    paths: HomePaths,
    config: Config,
    identity: Identity,
    record: VerifiedNodeRecord,
    store: Store,
    live: crate::transfer::Live,
    /// Held while a study is purged: purges (by a person, and by the
    /// retention policy from several places) never run at once.
    purging: std::sync::Mutex<()>,
    /// The seq of this node's last ledger entry (the network publishes what follows what it sent).
    ledger_seq: tokio::sync::watch::Sender<u64>,
    /// Bumped whenever a revocation is applied (by an admin, or received
    /// from a peer): the network reloads trust, disconnects and passes it on.
    trust_seq: tokio::sync::watch::Sender<u64>,
}

/// Public facts about a node, for `medmesh id`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct IdInfo {
    /// libp2p PeerId.
    pub peer_id: String,
    /// X25519 public key, hex.
    pub x25519: String,
    /// Institution.
    pub institution: String,
    /// Jurisdiction.
    pub jurisdiction: String,
    /// Record creation time (RFC 3339).
    pub created: String,
}

/// One study in `medmesh study list`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct StudySummary {
    /// Study Instance UID.
    pub study_uid: String,
    /// Patient's Name.
    pub patient_name: String,
    /// Patient ID.
    pub patient_id: String,
    /// Study Date.
    pub study_date: String,
    /// Study Description.
    pub description: String,
    /// Modalities.
    pub modalities: Vec<String>,
    /// Number of series.
    pub series: u64,
    /// Number of instances.
    pub instances: u64,
    /// Total bytes.
    pub bytes: u64,
    /// Where it came from (`local`, `received`).
    pub origin: String,
    /// For a received study: the grant it is held under.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub received: Option<ReceivedInfo>,
    /// True when its data key was destroyed (grant ended): only the grant is shown.
    #[serde(default)]
    pub locked: bool,
    /// Its reference in this store (16 hex digits; names a locked study, e.g. to `study purge`).
    #[serde(default)]
    pub reference: String,
}

/// One series in `medmesh study show`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct SeriesDetail {
    /// Series Instance UID.
    pub series_uid: String,
    /// Series Number.
    pub number: Option<i64>,
    /// Modality.
    pub modality: String,
    /// Series Description.
    pub description: String,
    /// Instances.
    pub instances: Vec<InstanceDetail>,
}

/// One instance in `medmesh study show`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct InstanceDetail {
    /// SOP Instance UID.
    pub sop_instance_uid: String,
    /// SOP Class UID.
    pub sop_class_uid: String,
    /// Instance Number.
    pub instance_number: Option<i64>,
    /// Transfer Syntax UID.
    pub transfer_syntax: String,
    /// Size in bytes.
    pub bytes: u64,
    /// BLAKE3 of the original bytes, hex.
    pub blake3: String,
    /// Frames.
    pub frames: u32,
    /// Notes recorded at import.
    pub notes: Vec<String>,
}

/// Everything about a study, for `medmesh study show`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct StudyDetail {
    /// Study Instance UID.
    pub study_uid: String,
    /// Patient and study attributes.
    pub attributes: StudyAttributes,
    /// Where it came from.
    pub origin: String,
    /// For a received study: the grant it is held under.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub received: Option<ReceivedInfo>,
    /// First stored (RFC 3339).
    pub created: String,
    /// Number of instances.
    pub instances: u64,
    /// Total bytes.
    pub bytes: u64,
    /// Series, by Series Number then UID.
    pub series: Vec<SeriesDetail>,
}

pub(crate) use crate::clock::rfc3339;

fn origin_name(o: &Origin) -> String {
    match o {
        Origin::Local => "local".into(),
        Origin::Received(_) => "received".into(),
    }
}

/// The grant a received study is held under, for listings.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct ReceivedInfo {
    /// Transfer id.
    pub transfer_id: String,
    /// The holder that sent it.
    pub from_peer: String,
    /// Its institution.
    pub from_institution: String,
    /// Purpose of the grant.
    pub purpose: consent_schema::Purpose,
    /// Level it was sent at.
    pub level: consent_schema::DeidLevel,
    /// When the grant ends (RFC 3339).
    pub expires: String,
    /// When it was received (RFC 3339).
    pub received: String,
    /// When it was locked (RFC 3339), if it is.
    pub locked: Option<String>,
    /// The holder's de-identification attestation, verified.
    pub attestation: Option<AttestationInfo>,
}

/// A received study's de-identification attestation, as `study show` prints it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct AttestationInfo {
    /// Level applied.
    pub level: consent_schema::DeidLevel,
    /// Profile and option codes (CID 7050): "value (scheme) meaning".
    pub profile: Vec<String>,
    /// Option names.
    pub options: Vec<String>,
    /// Annex E table version.
    pub table_version: String,
    /// Objects attested.
    pub objects: usize,
    /// BLAKE3 of each object before and after (hex).
    pub hashes: Vec<(String, String)>,
    /// Signed by (peer id).
    pub holder: String,
    /// When (RFC 3339).
    pub created: String,
}

fn attestation_info(bytes: &[u8]) -> Option<AttestationInfo> {
    use crate::transfer::wire::{ATTESTATION_DOMAIN, Attestation, MAX_MANIFEST, open_signed};
    let (signer, a) = open_signed::<Attestation>("attestation", ATTESTATION_DOMAIN, bytes, MAX_MANIFEST).ok()?;
    if crate::identity::peer_id_of(&signer).ok()? != a.holder {
        return None;
    }
    Some(AttestationInfo {
        level: a.level,
        profile: a
            .profile
            .iter()
            .map(|c| format!("{} ({}) {}", c.value, c.scheme, c.meaning))
            .collect(),
        options: a.options,
        table_version: a.table_version,
        objects: a.objects.len(),
        hashes: a
            .objects
            .iter()
            .map(|o| (hex::encode(&o.before), hex::encode(&o.after)))
            .collect(),
        holder: a.holder,
        created: rfc3339(a.created),
    })
}

fn received_info(o: &Origin) -> Option<ReceivedInfo> {
    match o {
        Origin::Local => None,
        Origin::Received(g) => Some(ReceivedInfo {
            transfer_id: g.transfer_id.clone(),
            from_peer: g.peer.clone(),
            from_institution: g.institution.clone(),
            purpose: g.purpose,
            level: g.level,
            expires: rfc3339(g.expires),
            received: rfc3339(g.received),
            locked: g.locked.map(rfc3339),
            attestation: attestation_info(&g.attestation),
        }),
    }
}

impl Node {
    /// Creates a new home at `root`: keys, signed record, config, database.
    /// The home is built in a hidden sibling folder and renamed into place, so
    /// a failed init leaves nothing behind.
    ///
    /// # Errors
    /// [`HomeError::Exists`] when `root` exists and is not empty; weak
    /// passphrase, bad jurisdiction or institution; I/O errors.
    pub fn init(
        root: &Path,
        institution: &str,
        jurisdiction: &str,
        passphrase: &Passphrase,
    ) -> Result<Node, HomeError> {
        if root.exists() {
            let empty = fs::read_dir(root).map_err(|e| io(root, e))?.next().is_none();
            if !empty {
                return Err(HomeError::Exists(root.display().to_string()));
            }
        }
        let institution = institution.trim();
        if institution.is_empty()
            || institution.chars().count() > 200
            || institution.chars().any(crate::text::is_unsafe)
        {
            return Err(HomeError::BadInstitution);
        }
        check_jurisdiction(jurisdiction)?;
        let parent = match root.parent() {
            Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
            _ => PathBuf::from("."),
        };
        fs::create_dir_all(&parent).map_err(|e| io(&parent, e))?;
        let name = root
            .file_name()
            .map(|n| n.to_string_lossy().to_string())
            .unwrap_or_else(|| "home".into());
        let mut rnd = [0u8; 6];
        getrandom::fill(&mut rnd).map_err(|e| io(&parent, std::io::Error::other(e.to_string())))?;
        let staging = parent.join(format!(".{name}.init-{}", hex::encode(rnd)));
        let result = Self::build(&staging, institution, jurisdiction, passphrase);
        if let Err(e) = result {
            let _ = fs::remove_dir_all(&staging);
            return Err(e);
        }
        if root.exists() {
            fs::remove_dir(root).map_err(|e| io(root, e))?;
        }
        if let Err(e) = fs::rename(&staging, root) {
            let _ = fs::remove_dir_all(&staging);
            return Err(io(root, e));
        }
        fsutil::sync_parent(root).map_err(|e| io(root, e))?;
        Self::open(root, passphrase)
    }

    fn build(dir: &Path, institution: &str, jurisdiction: &str, passphrase: &Passphrase) -> Result<(), HomeError> {
        let paths = HomePaths::new(dir);
        fsutil::create_private_dir(dir).map_err(|e| io(dir, e))?;
        fsutil::create_private_dir(&paths.keys()).map_err(|e| io(&paths.keys(), e))?;
        let db_dir = dir.join("db");
        fsutil::create_private_dir(&db_dir).map_err(|e| io(&db_dir, e))?;
        let master = MasterKey::create(&paths.master_key(), passphrase)?;
        let identity = Identity::generate()?;
        master.write_secret(
            &paths.identity_key(),
            "ed25519",
            &identity.ed25519_public(),
            &identity.ed25519_secret()[..],
        )?;
        master.write_secret(
            &paths.x25519_key(),
            "x25519",
            &identity.x25519_public(),
            &identity.x25519_secret()[..],
        )?;
        let record = NodeRecord {
            v: NODE_RECORD_VERSION,
            peer_id: identity.peer_id(),
            ed25519: identity.ed25519_public().to_vec(),
            x25519: identity.x25519_public().to_vec(),
            institution: institution.into(),
            jurisdiction: jurisdiction.into(),
            addrs: Vec::new(),
            created: crate::clock::now(),
        };
        let bytes = record.sign(&identity)?.to_bytes()?;
        fsutil::write_new_private(&paths.record(), &bytes).map_err(|e| io(&paths.record(), e))?;
        fsutil::write_new_private(&paths.config(), config::TEMPLATE.as_bytes()).map_err(|e| io(&paths.config(), e))?;
        let config = Config::load(&paths.config())?;
        let store = Store::create(&paths.db(), &paths.blobs(), master, config.store.fsync)?;
        drop(store);
        use std::os::unix::fs::PermissionsExt;
        fs::set_permissions(paths.db(), fs::Permissions::from_mode(0o600)).map_err(|e| io(&paths.db(), e))?;
        Ok(())
    }

    /// Reads the public identity of a home without unlocking it.
    ///
    /// # Errors
    /// [`HomeError::NotAHome`], identity errors for a damaged record.
    pub fn read_record(root: &Path) -> Result<VerifiedNodeRecord, HomeError> {
        let paths = HomePaths::new(root);
        let bytes = fs::read(paths.record()).map_err(|e| HomeError::NotAHome {
            path: root.display().to_string(),
            reason: format!("cannot read {}: {e}", paths.record().display()),
        })?;
        Ok(VerifiedNodeRecord::from_bytes(&bytes)?)
    }

    /// Opens the home at `root` with the passphrase.
    ///
    /// # Errors
    /// [`HomeError::NotAHome`], [`KeystoreError::WrongPassphrase`] (as
    /// [`HomeError::Keystore`]), config and store errors.
    pub fn open(root: &Path, passphrase: &Passphrase) -> Result<Node, HomeError> {
        Self::open_waiting(root, passphrase, std::time::Duration::ZERO, &|| false)
    }

    /// As [`Node::open`], waiting up to `wait` while another process holds
    /// its database, or until `give_up` returns true (checked between
    /// tries): `medmesh run` waits for a command run on the home, a command
    /// for a node starting on it (giving up when its admin API answers).
    ///
    /// # Errors
    /// As [`Node::open`]; [`StoreError::Busy`](crate::store::StoreError::Busy)
    /// (as [`HomeError::Store`]) when the database is still held after
    /// `wait` or when `give_up`.
    pub fn open_waiting(
        root: &Path,
        passphrase: &Passphrase,
        wait: std::time::Duration,
        give_up: &dyn Fn() -> bool,
    ) -> Result<Node, HomeError> {
        let paths = HomePaths::new(root);
        if !paths.master_key().exists() {
            return Err(HomeError::NotAHome {
                path: root.display().to_string(),
                reason: "no keys/master.key".into(),
            });
        }
        let config = Config::load(&paths.config())?;
        let record = Self::read_record(root)?;
        let master = MasterKey::unlock(&paths.master_key(), passphrase)?;
        let (ed_pub, ed) = master.read_secret(&paths.identity_key(), "ed25519")?;
        let (_, x) = master.read_secret(&paths.x25519_key(), "x25519")?;
        let identity = Identity::from_secrets(&ed, &x)?;
        if identity.ed25519_public().as_slice() != ed_pub.as_slice() || record.record().ed25519 != ed_pub {
            return Err(HomeError::Identity(IdentityError::Inconsistent(
                "the identity key does not match node-record.cbor".into(),
            )));
        }
        let store = Store::open_waiting(&paths.db(), &paths.blobs(), master, config.store.fsync, wait, give_up)?;
        let own_seq = store.ledger_heads_of(&identity.ed25519_public())?.map_or(0, |(s, _)| s);
        Ok(Node {
            paths,
            config,
            identity,
            record,
            store,
            live: crate::transfer::Live::default(),
            purging: std::sync::Mutex::new(()),
            ledger_seq: tokio::sync::watch::Sender::new(own_seq),
            trust_seq: tokio::sync::watch::Sender::new(0),
        })
    }

    /// Watches revocations applied by this process (see `trust_seq`).
    #[must_use]
    pub fn trust_watch(&self) -> tokio::sync::watch::Receiver<u64> {
        self.trust_seq.subscribe()
    }

    /// Watches the seq of this node's last ledger entry.
    #[must_use]
    pub fn ledger_watch(&self) -> tokio::sync::watch::Receiver<u64> {
        self.ledger_seq.subscribe()
    }

    /// Live progress of the transfers this process runs.
    #[must_use]
    pub fn live(&self) -> &crate::transfer::Live {
        &self.live
    }

    /// The transfer service.
    #[must_use]
    pub fn transfers(&self) -> crate::transfer::Transfers<'_> {
        crate::transfer::Transfers::new(&self.store, &self.identity, &self.live, self)
    }

    /// The home's paths.
    #[must_use]
    pub fn paths(&self) -> &HomePaths {
        &self.paths
    }

    /// The configuration.
    #[must_use]
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// The identity (secret keys).
    #[must_use]
    pub fn identity(&self) -> &Identity {
        &self.identity
    }

    /// The signed node record.
    #[must_use]
    pub fn record(&self) -> &VerifiedNodeRecord {
        &self.record
    }

    /// The store.
    #[must_use]
    pub fn store(&self) -> &Store {
        &self.store
    }

    /// Public facts about a record.
    #[must_use]
    pub fn id_info(record: &VerifiedNodeRecord) -> IdInfo {
        let r = record.record();
        IdInfo {
            peer_id: r.peer_id.clone(),
            x25519: hex::encode(&r.x25519),
            institution: r.institution.clone(),
            jurisdiction: r.jurisdiction.clone(),
            created: rfc3339(r.created),
        }
    }

    /// Import options from the configuration.
    #[must_use]
    pub fn import_options(&self) -> ImportOptions {
        let s = &self.config.store;
        let threads = if s.import_threads == 0 {
            std::thread::available_parallelism().map(usize::from).unwrap_or(2)
        } else {
            s.import_threads as usize
        };
        ImportOptions {
            threads,
            full_parse_limit: s.full_parse_limit,
            batch_files: s.batch_files as usize,
            batch_bytes: s.batch_bytes,
            chunk_size: s.chunk_size,
        }
    }

    /// Imports files and folders.
    ///
    /// # Errors
    /// See [`ingest::import`].
    pub fn import(&self, paths: &[PathBuf], progress: impl FnMut(ImportEvent<'_>)) -> Result<ImportSummary, HomeError> {
        Ok(ingest::import(&self.store, paths, &self.import_options(), progress)?)
    }

    /// Exports a study.
    ///
    /// # Errors
    /// See [`export::export`].
    pub fn export(
        &self,
        study_uid: &str,
        out: &Path,
        overwrite: bool,
        progress: impl FnMut(&ExportOutcome),
    ) -> Result<ExportSummary, HomeError> {
        self.transfers().enforce_expiry()?;
        let summary = export::export(&self.store, study_uid, out, overwrite, progress)?;
        self.log(crate::ledger::Event::Accessed {
            action: "export".into(),
            study: Some(self.ledger_study(study_uid)?),
            objects: summary.written,
            role: ledger::ADMIN_ROLE.into(),
        })?;
        Ok(summary)
    }

    /// The commitment entries name a study of this node by: the holder's,
    /// from the grant, for a received study; this node's own otherwise.
    fn ledger_study(&self, study_uid: &str) -> Result<String, HomeError> {
        let study = self.store.study_ref(study_uid);
        if let Some(row) = self.store.study_row(&study)?
            && let Origin::Received(g) = &row.origin
            && !g.study_ref.is_empty()
        {
            return Ok(hex::encode(&g.study_ref));
        }
        Ok(hex::encode(self.study_commitment(study_uid)?))
    }

    /// All studies, decrypted, sorted by study date then UID. With
    /// `patient_id`, only that patient's studies (found by blind index).
    ///
    /// # Errors
    /// Store errors.
    pub fn studies(&self, patient_id: Option<(&str, &str)>) -> Result<Vec<StudySummary>, HomeError> {
        self.transfers().enforce_expiry()?;
        let rows = match patient_id {
            None => self.store.studies()?,
            Some((id, issuer)) => {
                let mut rows = Vec::new();
                for s in self.store.studies_of_patient(&self.store.patient_ref(id, issuer))? {
                    if let Some(row) = self.store.study_row(&s)? {
                        rows.push((s, row));
                    }
                }
                rows
            }
        };
        let mut out = Vec::with_capacity(rows.len());
        for (study, row) in rows {
            if row.wrapped_key.is_empty() {
                // Locked: nothing but its grant can be shown.
                out.push(StudySummary {
                    study_uid: String::new(),
                    patient_name: String::new(),
                    patient_id: String::new(),
                    study_date: String::new(),
                    description: format!("locked study {} (data key destroyed)", study.short()),
                    modalities: Vec::new(),
                    series: 0,
                    instances: row.instances,
                    bytes: row.bytes,
                    origin: origin_name(&row.origin),
                    received: received_info(&row.origin),
                    locked: true,
                    reference: study.short(),
                });
                continue;
            }
            let key = self.store.unwrap_study_key(&study, &row)?;
            let meta = self.store.open_study_meta(&study, &key, &row)?;
            out.push(StudySummary {
                study_uid: meta.study_uid.clone(),
                patient_name: meta.attrs.patient_name.clone(),
                patient_id: meta.attrs.patient_id.clone(),
                study_date: meta.attrs.study_date.clone(),
                description: meta.attrs.study_description.clone(),
                modalities: meta.modalities().into_iter().collect(),
                series: meta.series.len() as u64,
                instances: row.instances,
                bytes: row.bytes,
                origin: origin_name(&row.origin),
                received: received_info(&row.origin),
                locked: false,
                reference: study.short(),
            });
        }
        out.sort_by(|a, b| (&a.study_date, &a.study_uid).cmp(&(&b.study_date, &b.study_uid)));
        Ok(out)
    }

    /// Everything about one study.
    ///
    /// # Errors
    /// [`StoreError::UnknownStudy`], store errors.
    pub fn study(&self, study_uid: &str) -> Result<StudyDetail, HomeError> {
        self.transfers().enforce_expiry()?;
        let study: StudyRef = self.store.study_ref(study_uid);
        let row = self
            .store
            .study_row(&study)?
            .ok_or_else(|| StoreError::UnknownStudy(study_uid.to_string()))?;
        let key = self.store.unwrap_study_key(&study, &row)?;
        let meta = self.store.open_study_meta(&study, &key, &row)?;
        let mut series: Vec<SeriesDetail> = meta
            .series
            .iter()
            .map(|(uid, s)| SeriesDetail {
                series_uid: uid.clone(),
                number: s.number,
                modality: s.modality.clone(),
                description: s.description.clone(),
                instances: Vec::new(),
            })
            .collect();
        for (address, irow) in self.store.instances(&study)? {
            let m = self.store.open_instance_meta(&study, &address, &key, &irow)?;
            let detail = InstanceDetail {
                sop_instance_uid: m.sop_instance_uid,
                sop_class_uid: m.sop_class_uid,
                instance_number: m.instance_number,
                transfer_syntax: m.transfer_syntax,
                bytes: irow.size,
                blake3: hex::encode(&m.blake3),
                frames: m.frames,
                notes: m.notes,
            };
            if let Some(s) = series.iter_mut().find(|s| s.series_uid == m.series_uid) {
                s.instances.push(detail);
            }
        }
        for s in &mut series {
            s.instances.sort_by(|a, b| {
                (a.instance_number, &a.sop_instance_uid).cmp(&(b.instance_number, &b.sop_instance_uid))
            });
        }
        series.sort_by(|a, b| (a.number, &a.series_uid).cmp(&(b.number, &b.series_uid)));
        Ok(StudyDetail {
            study_uid: meta.study_uid.clone(),
            attributes: meta.attrs.clone(),
            origin: origin_name(&row.origin),
            received: received_info(&row.origin),
            created: rfc3339(row.created),
            instances: row.instances,
            bytes: row.bytes,
            series,
        })
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;

    #[test]
    fn exposed_modes() {
        for (mode, open) in [
            (0o700, false),
            (0o600, false),
            (0o400, false),
            (0o500, false),
            (0o710, true),
            (0o701, true),
            (0o750, true),
            (0o755, true),
            (0o640, true),
            (0o604, true),
            (0o777, true),
            (0o1700, false),
        ] {
            assert_eq!(exposed(mode), open, "mode {mode:o}");
        }
    }

    fn fake_home() -> (tempfile::TempDir, HomePaths) {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("h o'me");
        let paths = HomePaths::new(&root);
        fsutil::create_private_dir(&paths.keys()).unwrap();
        fs::set_permissions(&root, fs::Permissions::from_mode(0o700)).unwrap();
        for f in [paths.master_key(), paths.identity_key(), paths.x25519_key()] {
            fsutil::write_new_private(&f, b"k").unwrap();
        }
        (dir, paths)
    }

    #[test]
    fn a_private_home_passes() {
        let (_dir, paths) = fake_home();
        paths.check_private().unwrap();
    }

    #[test]
    fn an_open_home_or_key_is_refused_with_the_fix() {
        for (what, mode) in [("root", 0o755), ("keys", 0o750), ("key", 0o644), ("key", 0o660)] {
            let (_dir, paths) = fake_home();
            let path = match what {
                "root" => paths.root.clone(),
                "keys" => paths.keys(),
                _ => paths.identity_key(),
            };
            fs::set_permissions(&path, fs::Permissions::from_mode(mode)).unwrap();
            let e = paths.check_private().unwrap_err();
            let text = e.to_string();
            assert!(
                matches!(&e, HomeError::Exposed(v) if v.len() == 1 && v[0].1 == mode),
                "{text}"
            );
            assert!(text.contains(&format!("mode {mode:04o}")), "{text}");
            let quoted = shell_quote(&path.display().to_string());
            assert!(text.contains(&format!("chmod go-rwx {quoted}")), "{text}");
            // The command printed fixes it.
            let cmd = format!("chmod go-rwx {quoted}");
            assert!(
                std::process::Command::new("sh")
                    .args(["-c", &cmd])
                    .status()
                    .unwrap()
                    .success()
            );
            paths.check_private().unwrap();
        }
    }
}
