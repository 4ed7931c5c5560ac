//! Trust operations on a node home: join a consortium, trust a peer
//! directly, apply a revocation, block a peer, list what is trusted. Records
//! live in the store's `trust-v1` table under `consortium/<id>`,
//! `own-certificate/<id>`, `bilateral/<peer>`, `revocation/<hash>` and
//! `blocked/<peer>`, each as the signed bytes received (re-verified on load).
//!
//! The [`TrustService`] does them (`node.trust()`): it holds the store, this
//! node's record, the [`TrustChanges`] it bumps, and the narrow
//! [`Effects`] hooks (write a ledger entry, end affected transfers).
//!
//! A revocation is applied by [`TrustService::apply_revocation`] whichever way it
//! came: from the site admin (`medmesh trust apply`), from a peer on the
//! ledger gossip topic ([`TrustService::revocation_from_peer`]) or from a peer's
//! catch-up answer. Each is verified against the joined consortium (its
//! admin signatures and `revocation_threshold`) before it is stored; the
//! network then disconnects the revoked peer and passes the revocation on.

use consent_schema::Purpose;
use serde::{Deserialize, Serialize};

use crate::cbor;
use crate::clock::rfc3339;
use crate::effects::Effects;
use crate::identity::VerifiedNodeRecord;
use crate::store::{Store, StoreError};
use crate::trust::{
    self, Bilateral, Certificate, Consortium, Refusal, Revocation, RevocationSummary, TrustError, TrustState,
    verify_certificate, verify_revocation,
};

/// Trust-store key prefix of applied revocations (`revocation/<BLAKE3 hex of the bytes>`).
const REVOCATION_PREFIX: &str = "revocation/";
/// Most revocation bytes sent in one catch-up answer (well under the sync protocol's 8 MiB).
pub const MAX_REVOCATIONS_ANSWER: usize = 4 * 1024 * 1024;

/// A revocation applied here that verifies now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AppliedRevocation {
    /// Its consortium's id.
    pub consortium: String,
    /// BLAKE3 of its bytes.
    pub hash: [u8; 32],
    /// Its bytes, as the admins signed them.
    pub bytes: Vec<u8>,
}

/// What became of a revocation a peer sent.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum RevocationTaken {
    /// Verified and applied now.
    Applied(RevocationEntry),
    /// Already applied here.
    Known,
    /// Of a consortium this node has not joined: not judged, not passed on.
    Foreign(String),
    /// Refused (malformed, forged, too few admin signatures): not applied, not passed on.
    Refused(String),
}

/// Errors of trust operations.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TrustOpError {
    /// A record is malformed or inconsistent.
    #[error(transparent)]
    Record(#[from] TrustError),
    /// The certificate does not admit this node.
    #[error("the certificate does not admit this node: {0}")]
    NotAdmitted(Refusal),
    /// The certificate names another node.
    #[error("the certificate is for peer {found}, this node is {own}")]
    OtherNode {
        /// The certificate's subject.
        found: String,
        /// This node.
        own: String,
    },
    /// The revocation's consortium is not joined.
    #[error("the revocation is for consortium {consortium}, which this node has not joined")]
    UnknownConsortium {
        /// The consortium id.
        consortium: String,
    },
    /// A node record does not verify.
    #[error("the node record does not verify: {0}")]
    NodeRecord(#[from] crate::identity::IdentityError),
    /// Bilateral trust was asked for no purpose.
    #[error("give at least one purpose")]
    NoPurpose,
    /// The string given is not a medmesh peer id.
    #[error("{given:?} is not a medmesh peer id (12D3KooW...)")]
    NotAPeerId {
        /// The value given.
        given: String,
    },
    /// A joined consortium is missing from the listing right after it was stored.
    #[error("the consortium was not stored")]
    NotStored,
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl TrustOpError {
    /// Whether the cause is the record itself (malformed, forged, not
    /// joined), not the store: a peer's revocation with such a cause is
    /// refused, not failed on.
    #[must_use]
    pub fn is_refusal(&self) -> bool {
        !matches!(self, TrustOpError::Store(_))
    }
}

/// Revocations applied by this process, counted (by an admin, or received
/// from a peer): the network watches it to reload trust, disconnect and
/// pass them on.
#[derive(Debug)]
pub struct TrustChanges(tokio::sync::watch::Sender<u64>);

impl Default for TrustChanges {
    fn default() -> Self {
        Self(tokio::sync::watch::Sender::new(0))
    }
}

impl TrustChanges {
    /// Watches the count.
    #[must_use]
    pub fn watch(&self) -> tokio::sync::watch::Receiver<u64> {
        self.0.subscribe()
    }

    fn bump(&self) {
        self.0.send_modify(|n| *n = n.wrapping_add(1));
    }
}

/// The trust service of a home: what this node trusts, and the changes to it.
#[derive(Clone, Copy)]
pub struct TrustService<'a> {
    store: &'a Store,
    own: &'a VerifiedNodeRecord,
    changes: &'a TrustChanges,
    effects: &'a dyn Effects,
}

impl std::fmt::Debug for TrustService<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TrustService").finish_non_exhaustive()
    }
}

#[derive(Serialize, Deserialize)]
struct BilateralRow {
    v: u32,
    #[serde(with = "serde_bytes")]
    record: Vec<u8>,
    purposes: Vec<Purpose>,
    until: Option<i64>,
}

#[derive(Serialize, Deserialize)]
struct BlockedRow {
    v: u32,
    reason: String,
    time: i64,
}

/// What `medmesh trust list` shows.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct TrustListing {
    /// Joined consortia.
    pub consortia: Vec<ConsortiumEntry>,
    /// Peers trusted directly.
    pub bilateral: Vec<BilateralEntry>,
    /// Applied revocations.
    pub revocations: Vec<RevocationEntry>,
    /// Blocked peers.
    pub blocked: Vec<BlockedEntry>,
}

/// A joined consortium and this node's membership.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct ConsortiumEntry {
    /// Id.
    pub id: String,
    /// Name.
    pub name: String,
    /// Admins (hex keys).
    pub admins: Vec<String>,
    /// Threshold.
    pub threshold: u32,
    /// This node's certificate serial.
    pub serial: Option<u64>,
    /// Purposes this node is admitted for.
    pub purposes: Vec<Purpose>,
    /// This node's certificate expiry (RFC 3339).
    pub expires: Option<String>,
    /// Whether this node's certificate verifies now (or why not).
    pub status: String,
}

/// A peer trusted directly.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct BilateralEntry {
    /// Peer id.
    pub peer_id: String,
    /// Institution.
    pub institution: String,
    /// Jurisdiction.
    pub jurisdiction: String,
    /// Purposes.
    pub purposes: Vec<Purpose>,
    /// Until (RFC 3339), if limited.
    pub until: Option<String>,
}

/// An applied revocation.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct RevocationEntry {
    /// Consortium id.
    pub consortium: String,
    /// What it revokes.
    pub target: String,
    /// Why.
    pub reason: String,
    /// When (RFC 3339).
    pub time: String,
}

/// A blocked peer.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct BlockedEntry {
    /// Peer id.
    pub peer_id: String,
    /// Why.
    pub reason: String,
    /// Since (RFC 3339).
    pub since: String,
}

fn revocation_key(bytes: &[u8]) -> String {
    format!("{REVOCATION_PREFIX}{}", blake3::hash(bytes).to_hex())
}

fn refused_from(from: &str, why: String) -> RevocationTaken {
    tracing::warn!(peer = %from, cause = %why, "revocation from a peer refused: not applied, not passed on");
    RevocationTaken::Refused(why)
}

pub(crate) use crate::clock::now;

impl<'a> TrustService<'a> {
    /// The service over `store`, for the node of record `own`; `changes`
    /// counts the revocations it applies, `effects` writes its ledger
    /// entries and ends the transfers a change affects.
    #[must_use]
    pub fn new(
        store: &'a Store,
        own: &'a VerifiedNodeRecord,
        changes: &'a TrustChanges,
        effects: &'a dyn Effects,
    ) -> Self {
        Self {
            store,
            own,
            changes,
            effects,
        }
    }

    /// Watches the revocations applied by this process (see [`TrustChanges`]).
    #[must_use]
    pub fn watch(&self) -> tokio::sync::watch::Receiver<u64> {
        self.changes.watch()
    }

    /// Installs a consortium descriptor and this node's certificate, after
    /// checking that the certificate verifies now and names this node.
    ///
    /// # Errors
    /// [`TrustOpError`] naming what is wrong.
    pub fn join(&self, descriptor: &[u8], certificate: &[u8]) -> Result<ConsortiumEntry, TrustOpError> {
        let consortium = Consortium::from_bytes(descriptor).map_err(TrustOpError::from)?;
        let cert = Certificate::from_bytes(certificate).map_err(TrustOpError::from)?;
        let verified = verify_certificate(&cert, &consortium, now()).map_err(TrustOpError::NotAdmitted)?;
        let own = self.own.record().peer_id.clone();
        if verified.payload().peer_id != own {
            return Err(TrustOpError::OtherNode {
                found: verified.payload().peer_id.clone(),
                own,
            });
        }
        self.store
            .trust_put(&format!("consortium/{}", consortium.id), descriptor)?;
        self.store
            .trust_put(&format!("own-certificate/{}", consortium.id), certificate)?;
        let listing = self.listing()?;
        self.effects.log(crate::ledger::Event::TrustJoined {
            consortium: consortium.id.clone(),
        })?;
        self.effects.end_affected_transfers_after("certificate changed");
        listing
            .consortia
            .into_iter()
            .find(|c| c.id == consortium.id)
            .ok_or(TrustOpError::NotStored)
    }

    /// This node's certificates (one per joined consortium), to present to peers.
    ///
    /// # Errors
    /// Store errors.
    pub fn own_certificates(&self) -> Result<Vec<Certificate>, TrustOpError> {
        let mut out = Vec::new();
        for (_, bytes) in self.store.trust_records("own-certificate/")? {
            out.push(Certificate::from_bytes(&bytes).map_err(TrustOpError::from)?);
        }
        Ok(out)
    }

    /// Trusts a peer directly (bilateral trust) for the given purposes.
    ///
    /// # Errors
    /// [`TrustOpError`] when the record does not verify or no purpose is given.
    pub fn add_peer(
        &self,
        record: &[u8],
        purposes: Vec<Purpose>,
        valid_days: Option<u32>,
    ) -> Result<BilateralEntry, TrustOpError> {
        if purposes.is_empty() {
            return Err(TrustOpError::NoPurpose);
        }
        let verified = VerifiedNodeRecord::from_bytes(record).map_err(TrustOpError::from)?;
        let until = valid_days.map(|d| now() + i64::from(d) * 86_400);
        let row = BilateralRow {
            v: 1,
            record: record.to_vec(),
            purposes: purposes.clone(),
            until,
        };
        let bytes = cbor::encode("bilateral trust", &row)
            .map_err(TrustError::from)
            .map_err(TrustOpError::from)?;
        let r = verified.record();
        self.store.trust_put(&format!("bilateral/{}", r.peer_id), &bytes)?;
        self.effects.log(crate::ledger::Event::PeerAdded {
            peer: r.peer_id.clone(),
        })?;
        self.effects.end_affected_transfers_after("bilateral trust changed");
        Ok(BilateralEntry {
            peer_id: r.peer_id.clone(),
            institution: r.institution.clone(),
            jurisdiction: r.jurisdiction.clone(),
            purposes,
            until: until.map(rfc3339),
        })
    }

    /// Applies a signed revocation of a joined consortium, after checking
    /// its admin signatures against the consortium's revocation threshold.
    /// Applying one already applied changes nothing and logs nothing.
    /// This is the one path of every revocation, typed by an admin or
    /// received from a peer: the network is told (it disconnects the peer
    /// and passes the revocation on to the members it talks to).
    ///
    /// # Errors
    /// [`TrustOpError`] for an unknown consortium or a bad or missing signature.
    pub fn apply_revocation(&self, revocation: &[u8]) -> Result<RevocationEntry, TrustOpError> {
        let rev = Revocation::from_bytes(revocation).map_err(TrustOpError::from)?;
        let payload = rev.payload().map_err(TrustOpError::from)?;
        let state = self.state()?;
        let consortium = state
            .consortia
            .iter()
            .find(|c| c.id == payload.consortium)
            .ok_or_else(|| TrustOpError::UnknownConsortium {
                consortium: payload.consortium.clone(),
            })?;
        verify_revocation(&rev, consortium).map_err(TrustOpError::from)?;
        let entry = RevocationEntry {
            consortium: payload.consortium,
            target: payload.target.to_string(),
            reason: payload.reason,
            time: rfc3339(payload.time),
        };
        let key = revocation_key(revocation);
        if self.store.trust_get(&key)?.is_some() {
            return Ok(entry);
        }
        self.store.trust_put(&key, revocation)?;
        self.effects.log(crate::ledger::Event::PeerRevoked {
            peer: entry.target.clone(),
        })?;
        self.changes.bump();
        self.effects.end_affected_transfers_after("revocation applied");
        Ok(entry)
    }

    /// Takes a revocation a peer sent (gossip or catch-up): applied when it
    /// verifies, else refused with the reason (and never passed on).
    ///
    /// # Errors
    /// Store errors.
    pub fn revocation_from_peer(&self, from: &str, revocation: &[u8]) -> Result<RevocationTaken, TrustOpError> {
        if self.store.trust_get(&revocation_key(revocation))?.is_some() {
            return Ok(RevocationTaken::Known);
        }
        let payload = match Revocation::from_bytes(revocation).and_then(|r| r.payload()) {
            Ok(p) => p,
            Err(e) => return Ok(refused_from(from, e.to_string())),
        };
        if self
            .store
            .trust_get(&format!("consortium/{}", payload.consortium))?
            .is_none()
        {
            return Ok(RevocationTaken::Foreign(payload.consortium));
        }
        match self.apply_revocation(revocation) {
            Ok(entry) => {
                tracing::info!(peer = %from, consortium = %entry.consortium, target = %entry.target, "revocation received from a peer and applied");
                Ok(RevocationTaken::Applied(entry))
            }
            Err(e) if e.is_refusal() => Ok(refused_from(from, e.to_string())),
            Err(e) => Err(e),
        }
    }

    /// The applied revocations that verify now.
    ///
    /// # Errors
    /// Store errors.
    pub fn applied_revocations(&self) -> Result<Vec<AppliedRevocation>, TrustOpError> {
        let state = self.state()?;
        let mut out = Vec::new();
        for (_, bytes) in self.store.trust_records(REVOCATION_PREFIX)? {
            let Ok(rev) = Revocation::from_bytes(&bytes) else {
                continue;
            };
            let Ok(p) = rev.payload() else { continue };
            let Some(c) = state.consortia.iter().find(|c| c.id == p.consortium) else {
                continue;
            };
            if verify_revocation(&rev, c).is_ok() {
                out.push(AppliedRevocation {
                    consortium: p.consortium,
                    hash: *blake3::hash(&bytes).as_bytes(),
                    bytes,
                });
            }
        }
        Ok(out)
    }

    /// Per joined consortium with revocations, their count and digest (for the hello).
    ///
    /// # Errors
    /// Store errors.
    pub fn revocation_summaries(&self) -> Result<Vec<RevocationSummary>, TrustOpError> {
        let pairs: Vec<(String, [u8; 32])> = self
            .applied_revocations()?
            .into_iter()
            .map(|a| (a.consortium, a.hash))
            .collect();
        Ok(trust::summarize_revocations(&pairs))
    }

    /// The revocations of `consortium` applied here, for a peer whose summary
    /// differs (`theirs`: nothing when it is equal to ours), at most
    /// [`MAX_REVOCATIONS_ANSWER`] bytes.
    ///
    /// # Errors
    /// Store errors.
    pub fn revocations_for_peer(&self, consortium: &str, theirs: &[u8]) -> Result<Vec<Vec<u8>>, TrustOpError> {
        let ours = self.revocation_summaries()?;
        if ours.iter().any(|s| s.consortium == consortium && s.digest == theirs) {
            return Ok(Vec::new());
        }
        let mut out = Vec::new();
        let mut size = 0;
        for a in self.applied_revocations()? {
            if a.consortium == consortium && size + a.bytes.len() <= MAX_REVOCATIONS_ANSWER {
                size += a.bytes.len();
                out.push(a.bytes);
            }
        }
        Ok(out)
    }

    /// Blocks a peer.
    ///
    /// # Errors
    /// [`TrustOpError::Invalid`] for a string that is not a peer id.
    pub fn block(&self, peer_id: &str, reason: &str) -> Result<BlockedEntry, TrustOpError> {
        if !peer_id.starts_with("12D3KooW") || peer_id.len() < 46 || !peer_id.chars().all(|c| c.is_ascii_alphanumeric())
        {
            return Err(TrustOpError::NotAPeerId {
                given: peer_id.to_string(),
            });
        }
        let time = now();
        let row = BlockedRow {
            v: 1,
            reason: reason.into(),
            time,
        };
        let bytes = cbor::encode("block", &row)
            .map_err(TrustError::from)
            .map_err(TrustOpError::from)?;
        self.store.trust_put(&format!("blocked/{peer_id}"), &bytes)?;
        self.effects
            .log(crate::ledger::Event::PeerBlocked { peer: peer_id.into() })?;
        self.effects.end_affected_transfers_after("peer blocked");
        Ok(BlockedEntry {
            peer_id: peer_id.into(),
            reason: reason.into(),
            since: rfc3339(time),
        })
    }

    /// Lifts a block; returns whether the peer was blocked.
    ///
    /// # Errors
    /// Store errors.
    pub fn unblock(&self, peer_id: &str) -> Result<bool, TrustOpError> {
        Ok(self.store.trust_remove(&format!("blocked/{peer_id}"))?)
    }

    /// Everything this node knows that bears on trust, verified again.
    /// A stored record that no longer verifies is skipped with a warning.
    ///
    /// # Errors
    /// Store errors.
    pub fn state(&self) -> Result<TrustState, TrustOpError> {
        let mut state = TrustState::default();
        for (key, bytes) in self.store.trust_records("consortium/")? {
            match Consortium::from_bytes(&bytes) {
                Ok(c) => state.consortia.push(c),
                Err(e) => tracing::warn!(record = %key, cause = %e, "skipping a damaged trust record"),
            }
        }
        for (key, bytes) in self.store.trust_records("bilateral/")? {
            let parsed = cbor::decode::<BilateralRow>("bilateral trust", &bytes, trust::MAX_TRUST_RECORD)
                .ok()
                .and_then(|row| VerifiedNodeRecord::from_bytes(&row.record).ok().map(|r| (row, r)));
            match parsed {
                Some((row, record)) => state.bilateral.push(Bilateral {
                    record,
                    purposes: row.purposes,
                    until: row.until,
                }),
                None => tracing::warn!(record = %key, "skipping a damaged trust record"),
            }
        }
        for (key, bytes) in self.store.trust_records(REVOCATION_PREFIX)? {
            let verified = Revocation::from_bytes(&bytes).ok().and_then(|r| {
                let p = r.payload().ok()?;
                let c = state.consortia.iter().find(|c| c.id == p.consortium)?;
                verify_revocation(&r, c).ok()
            });
            match verified {
                Some(v) => state.revocations.push(v),
                None => tracing::warn!(record = %key, "skipping a revocation that does not verify"),
            }
        }
        for (key, bytes) in self.store.trust_records("blocked/")? {
            let peer = key.trim_start_matches("blocked/").to_string();
            let reason = cbor::decode::<BlockedRow>("block", &bytes, trust::MAX_TRUST_RECORD)
                .map(|r| r.reason)
                .unwrap_or_default();
            state.blocked.push((peer, reason));
        }
        Ok(state)
    }

    /// What `medmesh trust list` shows.
    ///
    /// # Errors
    /// Store errors.
    pub fn listing(&self) -> Result<TrustListing, TrustOpError> {
        let state = self.state()?;
        let certs = self.own_certificates()?;
        let consortia = state
            .consortia
            .iter()
            .map(|c| {
                let own = certs.iter().find(|x| x.payload().is_ok_and(|p| p.consortium == c.id));
                let payload = own.and_then(|x| x.payload().ok());
                let status = match own
                    .map(|x| trust::decide(&state, &self.own.record().peer_id, std::slice::from_ref(x), now()))
                {
                    Some(trust::TrustDecision::Trust(_)) => "member".to_string(),
                    Some(trust::TrustDecision::Refuse(r)) => format!("not valid: {r}"),
                    None => "no certificate".to_string(),
                };
                ConsortiumEntry {
                    id: c.id.clone(),
                    name: c.name.clone(),
                    admins: c.admins.iter().map(hex::encode).collect(),
                    threshold: c.threshold,
                    serial: payload.as_ref().map(|p| p.serial),
                    purposes: payload.as_ref().map(|p| p.purposes.clone()).unwrap_or_default(),
                    expires: payload.as_ref().map(|p| rfc3339(p.not_after)),
                    status,
                }
            })
            .collect();
        let bilateral = state
            .bilateral
            .iter()
            .map(|b| {
                let r = b.record.record();
                BilateralEntry {
                    peer_id: r.peer_id.clone(),
                    institution: r.institution.clone(),
                    jurisdiction: r.jurisdiction.clone(),
                    purposes: b.purposes.clone(),
                    until: b.until.map(rfc3339),
                }
            })
            .collect();
        let revocations = state
            .revocations
            .iter()
            .map(|r| {
                let p = r.payload();
                RevocationEntry {
                    consortium: p.consortium.clone(),
                    target: p.target.to_string(),
                    reason: p.reason.clone(),
                    time: rfc3339(p.time),
                }
            })
            .collect();
        let mut blocked = Vec::new();
        for (key, bytes) in self.store.trust_records("blocked/")? {
            let row = cbor::decode::<BlockedRow>("block", &bytes, trust::MAX_TRUST_RECORD).ok();
            blocked.push(BlockedEntry {
                peer_id: key.trim_start_matches("blocked/").to_string(),
                reason: row.as_ref().map(|r| r.reason.clone()).unwrap_or_default(),
                since: row.map(|r| rfc3339(r.time)).unwrap_or_default(),
            });
        }
        Ok(TrustListing {
            consortia,
            bilateral,
            revocations,
            blocked,
        })
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use crate::home::Node;
    use crate::keystore::Passphrase;
    use crate::trust::RevocationTarget;

    fn admin(i: u8) -> [u8; 32] {
        [i; 32]
    }

    /// A home that joined a consortium of three admins whose revocations need two signatures.
    fn joined(dir: &std::path::Path) -> (Node, Consortium) {
        let pass = Passphrase::new("correct horse battery staple revocations".into());
        let node = Node::init(&dir.join("home"), "Hospital R", "DE", &pass).unwrap();
        let keys = (1..=3).map(|i| crate::identity::ed25519_public_of(&admin(i))).collect();
        let c = Consortium::new("EU imaging", keys, 1, now() - 10)
            .unwrap()
            .with_revocation_threshold(2)
            .unwrap();
        let cert = Certificate::issue(
            &c,
            &admin(1),
            node.record(),
            vec![Purpose::Treatment],
            now() - 10,
            now() + 86_400,
            1,
        )
        .unwrap();
        node.trust()
            .join(&c.to_bytes().unwrap(), &cert.to_bytes().unwrap())
            .unwrap();
        (node, c)
    }

    fn revocation(c: &Consortium, signers: &[u8], serial: u64) -> Revocation {
        let mut r = Revocation::issue(
            c,
            &admin(signers[0]),
            RevocationTarget::Serial(serial),
            "key lost",
            now(),
        )
        .unwrap();
        for s in &signers[1..] {
            r.cosign(c, &admin(*s)).unwrap();
        }
        r
    }

    #[test]
    fn revocations_from_peers_are_checked_then_applied_once() {
        let dir = tempfile::tempdir().unwrap();
        let (node, c) = joined(dir.path());
        let other = Consortium::new("other", vec![crate::identity::ed25519_public_of(&admin(1))], 1, now()).unwrap();
        let mut forged = revocation(&c, &[1, 2], 5);
        forged.signatures[1].sig[0] ^= 1;
        let good = revocation(&c, &[2, 3], 6).to_bytes().unwrap();
        let mut watch = node.trust().watch();
        let seq = || *node.audit().watch().borrow();
        let cases: Vec<(&str, Vec<u8>, &str, bool)> = vec![
            (
                "under-signed",
                revocation(&c, &[1], 5).to_bytes().unwrap(),
                "refused",
                false,
            ),
            ("forged second signature", forged.to_bytes().unwrap(), "refused", false),
            ("not a revocation", b"junk".to_vec(), "refused", false),
            (
                "consortium not joined",
                revocation(&other, &[1], 5).to_bytes().unwrap(),
                "foreign",
                false,
            ),
            ("two of three admins", good.clone(), "applied", true),
            ("the same again", good.clone(), "known", false),
        ];
        for (name, bytes, want, logged) in cases {
            let before = seq();
            let got = match node.trust().revocation_from_peer("12D3KooWtest", &bytes).unwrap() {
                RevocationTaken::Applied(_) => "applied",
                RevocationTaken::Known => "known",
                RevocationTaken::Foreign(_) => "foreign",
                RevocationTaken::Refused(_) => "refused",
            };
            assert_eq!(got, want, "{name}");
            assert_eq!(
                seq() > before,
                logged,
                "{name}: a peer-revoked entry only when newly applied"
            );
            assert_eq!(
                watch.has_changed().unwrap(),
                logged,
                "{name}: the network told only when newly applied"
            );
            watch.mark_unchanged();
        }
        let state = node.trust().state().unwrap();
        assert_eq!(state.revocations.len(), 1);
        let summaries = node.trust().revocation_summaries().unwrap();
        assert_eq!((summaries.len(), summaries[0].count), (1, 1));
        // A peer with the same digest gets nothing, another gets the revocation.
        assert!(
            node.trust()
                .revocations_for_peer(&c.id, &summaries[0].digest)
                .unwrap()
                .is_empty()
        );
        assert_eq!(node.trust().revocations_for_peer(&c.id, &[]).unwrap(), vec![good]);
        // The admin's path refuses an under-signed one too.
        assert!(
            node.trust()
                .apply_revocation(&revocation(&c, &[3], 9).to_bytes().unwrap())
                .is_err()
        );
    }
}
