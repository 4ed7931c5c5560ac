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

use std::fs;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::audit::{Audit, replication};
use crate::config::{self, Config, ConfigError};
use crate::consent::ConsentService;
use crate::dicom::ingest::ImportOptions;
use crate::effects::{Effects, HookError};
use crate::fsutil;
use crate::identity::{
    Identity, IdentityError, NODE_RECORD_VERSION, NodeRecord, VerifiedNodeRecord, check_jurisdiction,
};
use crate::keystore::{KeystoreError, MasterKey, Passphrase};
use crate::retention::{self, RetentionService};
use crate::store::{Store, StoreError, StudyRef};
use crate::studies::{self, StudiesService};
use crate::trust::service::{TrustChanges, TrustService};

/// Errors of creating or opening a home.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum HomeError {
    /// The home already exists.
    #[error("{path} already exists and is not empty: refusing to overwrite a node home")]
    Exists {
        /// The home's path.
        path: String,
    },
    /// The home does not exist or is not a medmesh home.
    #[error("{path} is not a medmesh home ({reason}); create one with `medmesh init`")]
    NotAHome {
        /// The path.
        path: String,
        /// Why.
        reason: NotAHome,
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
    /// De-identification failure.
    #[error(transparent)]
    Deid(#[from] crate::deid::DeidServiceError),
    /// A ledger lookup failed.
    #[error(transparent)]
    Ledger(#[from] crate::audit::AuditError),
    /// Trust operation failure.
    #[error(transparent)]
    Trust(#[from] crate::trust::service::TrustOpError),
    /// Consent operation failure.
    #[error(transparent)]
    Consent(#[from] crate::consent::ConsentOpError),
    /// Purge or retention failure.
    #[error(transparent)]
    Retention(#[from] retention::RetentionError),
    /// Failure listing, showing, importing or exporting studies.
    #[error(transparent)]
    Studies(#[from] studies::StudiesError),
    /// Notification failure.
    #[error(transparent)]
    Notify(#[from] crate::notify::NotifyError),
    /// Transfer failure.
    #[error(transparent)]
    Transfer(#[from] crate::transfer::TransferError),
    /// The gateway's forwarding queue.
    #[error(transparent)]
    Forward(#[from] crate::gateway::forward::ForwardError),
    /// The home, its keys or the socket's folder are open to the group or
    /// others: `medmesh run` refuses to start.
    #[error(
        "{}: open to the group or others; only the home's owner may read it. Fix with: chmod go-rwx {}",
        .0.iter().map(|(p, m)| format!("{p} (mode {m:04o})")).collect::<Vec<_>>().join(", "),
        .0.iter().map(|(p, _)| shell_quote(p)).collect::<Vec<_>>().join(" ")
    )]
    Exposed(Vec<(String, u32)>),
}

/// Why a folder is not a medmesh home ([`HomeError::NotAHome`]).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum NotAHome {
    /// It has no master key.
    #[error("no keys/master.key")]
    NoMasterKey,
    /// Its node record cannot be read.
    #[error("cannot read {file}: {source}")]
    Record {
        /// The node record's file.
        file: String,
        /// The cause.
        source: std::io::Error,
    },
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
    /// Held while a study is purged (see [`retention::Purging`]).
    purging: retention::Purging,
    /// The seq of this node's last ledger entry (the network publishes what follows what it sent).
    ledger_seq: tokio::sync::watch::Sender<u64>,
    /// Bumped whenever a revocation is applied (by an admin, or received
    /// from a peer): the network reloads trust, disconnects and passes it on.
    trust_changes: TrustChanges,
    /// Wakes the gateway's forwarding worker when a study is queued.
    forward_wake: tokio::sync::Notify,
    /// Where `medmesh run` serves `/metrics` (`[metrics] listen`, as bound).
    metrics_listen: std::sync::OnceLock<std::net::SocketAddr>,
}

/// A transfer error as a hook's error: a store error stays itself, so
/// that the service given the hook can tell an unknown study.
fn hook(e: crate::transfer::TransferError) -> HookError {
    match e {
        crate::transfer::TransferError::Store(s) => Box::new(s),
        e => Box::new(e),
    }
}

impl studies::Expiry for Node {
    fn enforce_expiry(&self) -> Result<u64, HookError> {
        self.transfers().enforce_expiry().map_err(hook)
    }
}

impl retention::TransferRecords for Node {
    fn forget_study(&self, study: &StudyRef, grant_transfer: Option<&str>) -> Result<u64, HookError> {
        let mut n = 0;
        for rec in self.transfers().transfer_records().map_err(hook)? {
            let named = (!rec.study_uid.is_empty() && self.store.study_ref(&rec.study_uid) == *study)
                || grant_transfer == Some(rec.id.to_string().as_str());
            if !named {
                continue;
            }
            let id = rec.id;
            self.transfers().scrub_transfer(&id).map_err(hook)?;
            n += 1;
        }
        Ok(n)
    }
}

impl Effects for Node {
    fn log(&self, event: crate::ledger::Event) -> Result<(), StoreError> {
        self.audit().log(event)
    }
    fn author(&self) -> crate::store::Author<'_> {
        self.audit().author()
    }
    fn logged(&self, entries: &[crate::ledger::SignedEntry]) {
        self.audit().logged(entries);
    }
    fn end_affected_transfers_after(&self, change: &str) {
        self.transfers().end_affected_transfers_after(change);
    }
    fn studies_imported(&self, studies: &[StudyRef]) {
        if let Err(e) = self
            .forwarding()
            .study_arrived(studies, &crate::gateway::forward::Source::Import)
        {
            tracing::warn!(cause = %e, "imported studies could not be queued for forwarding");
        }
    }
}

impl crate::gateway::forward::ForwardHost for Node {
    fn forwarding(&self) -> crate::gateway::forward::Forwarding<'_> {
        Node::forwarding(self)
    }
    fn forward_wake(&self) -> &tokio::sync::Notify {
        &self.forward_wake
    }
}

impl replication::Host for Node {
    fn audit(&self) -> Audit<'_> {
        Node::audit(self)
    }
    fn trust(&self) -> TrustService<'_> {
        Node::trust(self)
    }
    fn identity(&self) -> &Identity {
        &self.identity
    }
}

impl crate::transfer::Host for Node {
    fn consents(&self) -> ConsentService<'_> {
        Node::consents(self)
    }
    fn trust(&self) -> TrustService<'_> {
        Node::trust(self)
    }
    fn deid(&self) -> crate::deid::DeidService<'_> {
        Node::deid(self)
    }
    fn retention(&self) -> RetentionService<'_> {
        Node::retention(self)
    }
    fn audit(&self) -> Audit<'_> {
        Node::audit(self)
    }
    fn config(&self) -> &Config {
        &self.config
    }
    fn transfers(&self) -> crate::transfer::Transfers<'_> {
        Node::transfers(self)
    }
    fn study_landed(&self, study: &StudyRef) {
        // The source of a received study is its grant (from its row).
        if let Err(e) = self
            .forwarding()
            .study_arrived(&[*study], &crate::gateway::forward::Source::Import)
        {
            tracing::warn!(study = %study.short(), cause = %e, "a received study could not be queued for forwarding");
        }
    }
}

impl crate::notify::HasStore for Node {
    fn store(&self) -> &Store {
        &self.store
    }
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

pub(crate) use crate::clock::rfc3339;

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
                return Err(HomeError::Exists {
                    path: root.display().to_string(),
                });
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
        let bytes = fs::read(paths.record()).map_err(|source| HomeError::NotAHome {
            path: root.display().to_string(),
            reason: NotAHome::Record {
                file: paths.record().display().to_string(),
                source,
            },
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
                reason: NotAHome::NoMasterKey,
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
                crate::identity::Inconsistency::HomeKey,
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
            purging: retention::Purging::default(),
            ledger_seq: tokio::sync::watch::Sender::new(own_seq),
            trust_changes: TrustChanges::default(),
            forward_wake: tokio::sync::Notify::new(),
            metrics_listen: std::sync::OnceLock::new(),
        })
    }

    /// The consent service: patients' consents, and the decision for a study, a peer and a purpose.
    #[must_use]
    pub fn consents(&self) -> ConsentService<'_> {
        ConsentService::new(&self.store, &self.record, &self.config.policy, self.trust(), self)
    }

    /// The studies service: import, list, show, export.
    #[must_use]
    pub fn studies(&self) -> StudiesService<'_> {
        StudiesService::new(&self.store, self.import_options(), self, self)
    }

    /// The retention service: purges, by a person or by the policy.
    #[must_use]
    pub fn retention(&self) -> RetentionService<'_> {
        RetentionService::new(&self.store, &self.config.retention, &self.purging, self, self)
    }

    /// The trust service: what this node trusts, and the changes to it.
    #[must_use]
    pub fn trust(&self) -> TrustService<'_> {
        TrustService::new(&self.store, &self.record, &self.trust_changes, self)
    }

    /// The ledger service: this node's entries, `log tail|show|verify`,
    /// peers' entries taken by replication and gossip, notifications.
    #[must_use]
    pub fn audit(&self) -> Audit<'_> {
        Audit::new(&self.store, &self.identity, &self.ledger_seq, self.trust())
    }

    /// Live progress of the transfers this process runs.
    #[must_use]
    pub fn live(&self) -> &crate::transfer::Live {
        &self.live
    }

    /// Where this process serves `/metrics`, `/healthz` and `/readyz`
    /// (`[metrics] listen` as bound), once `medmesh run` listens there.
    #[must_use]
    pub fn metrics_listen(&self) -> Option<std::net::SocketAddr> {
        self.metrics_listen.get().copied()
    }

    /// Notes the address the metrics listener bound (`daemon`; once).
    pub fn set_metrics_listen(&self, addr: std::net::SocketAddr) {
        let _ = self.metrics_listen.set(addr);
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

    /// The gateway's forwarding service (the queue to the site's PACS).
    #[must_use]
    pub fn forwarding(&self) -> crate::gateway::forward::Forwarding<'_> {
        crate::gateway::forward::Forwarding::new(&self.store, &self.config.gateway, self, &self.forward_wake)
    }

    /// The transfer service.
    #[must_use]
    pub fn transfers(&self) -> crate::transfer::Transfers<'_> {
        crate::transfer::Transfers::new(&self.store, &self.identity, &self.live, self)
    }

    /// The de-identification service (research exports, re-links, the
    /// profile and keys of transfers); it logs its accesses in this node's
    /// ledger.
    #[must_use]
    pub fn deid(&self) -> crate::deid::DeidService<'_> {
        crate::deid::DeidService::new(
            &self.store,
            &self.config.deid,
            &self.record.record().institution,
            self.import_options().threads,
            Box::new(move |action, objects| {
                self.audit()
                    .log(crate::ledger::Event::Accessed {
                        action: action.into(),
                        study: None,
                        objects,
                        role: crate::ledger::ADMIN_ROLE.into(),
                    })
                    .map_err(Into::into)
            }),
        )
    }

    /// The notification service (where delivery stands).
    #[must_use]
    pub fn notify(&self) -> crate::notify::NotifyService<'_> {
        crate::notify::NotifyService::new(&self.store, &self.config.notify)
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
