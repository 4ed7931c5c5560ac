//! The ledger service ("audit"): writing this node's entries, reading them
//! for `medmesh log tail|show|verify`, taking peers' entries (replication
//! and gossip), and notifying this node of accesses to its data.
//!
//! [`Audit`] holds the store, the identity that signs, the watch the network
//! publishes from, and a view of trust (whose entries are kept). The
//! network side of replication, which asks and answers peers, is
//! [`replication`].

pub mod replication;

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::clock::rfc3339;
use crate::identity::Identity;
use crate::ids::EntryId;
use crate::ledger::{self, Event, SignedEntry};
use crate::store::{Author, FeedHead, SplitRow, StoredEntry};
use crate::store::{Store, StoreError};
use crate::trust::service::{TrustOpError, TrustService};

pub use crate::ledger::ADMIN_ROLE;

/// An entry as `log tail` and `log show` print it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct EntryView {
    /// Entry id (hex BLAKE3 of its envelope).
    pub id: EntryId,
    /// Author peer id.
    pub author: String,
    /// Position in the author's feed.
    pub seq: u64,
    /// Previous entry's id (hex).
    pub prev: String,
    /// When (RFC 3339).
    pub time: String,
    /// Kind.
    pub kind: String,
    /// The event.
    pub event: Event,
    /// The Study Instance UID the entry's commitment names, on the node that
    /// made the commitment (`log show` only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub study_uid: Option<String>,
}

/// One author's feed in a verification.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct FeedReport {
    /// Author peer id.
    pub author: String,
    /// Entries held.
    pub entries: u64,
    /// Head seq.
    pub head_seq: u64,
    /// Head id (hex).
    pub head_id: String,
    /// What is wrong (bad signature, broken chain, gap, equivocation, split
    /// view); empty when it verifies.
    pub problems: Vec<String>,
    /// Peers whose latest countersignature (witness) names an entry of this
    /// feed that is the one held here.
    #[serde(default)]
    pub countersigned: u64,
}

/// `log verify`: every feed this node holds.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct VerifyReport {
    /// True when every feed verifies.
    pub ok: bool,
    /// Per author.
    pub feeds: Vec<FeedReport>,
}

/// Why `log show` found no single entry.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum LookupError {
    /// 64 characters that are not 64 hex digits.
    #[error("{id}: not an entry id (64 hex digits)")]
    NotAnId {
        /// What was given.
        id: String,
    },
    /// A prefix that more than one entry id starts with.
    #[error("{id}: more than one entry starts so")]
    Ambiguous {
        /// What was given.
        id: String,
    },
    /// Fewer than 8 hex digits.
    #[error("{id}: give at least 8 hex digits of the entry id")]
    TooShort {
        /// What was given.
        id: String,
    },
    /// No entry of that id here.
    #[error("no entry {id} on this node")]
    NotFound {
        /// What was given.
        id: String,
    },
    /// The entry held does not open.
    #[error(transparent)]
    Damaged(#[from] ledger::LedgerError),
}

fn view(e: &SignedEntry) -> EntryView {
    EntryView {
        id: EntryId::from(e.id),
        author: e.author_peer(),
        seq: e.entry.seq,
        prev: hex::encode(&e.entry.prev),
        time: rfc3339(e.entry.time),
        kind: e.entry.event.kind().to_string(),
        event: e.entry.event.clone(),
        study_uid: None,
    }
}

/// Errors of the ledger service.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AuditError {
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// Trust could not be read (to judge an author).
    #[error(transparent)]
    Trust(#[from] TrustOpError),
    /// No single entry of that id.
    #[error(transparent)]
    Lookup(#[from] LookupError),
}

/// The ledger service of a node.
#[derive(Clone)]
pub struct Audit<'a> {
    store: &'a Store,
    identity: &'a Identity,
    seq: &'a tokio::sync::watch::Sender<u64>,
    trust: TrustService<'a>,
}

impl std::fmt::Debug for Audit<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Audit").finish_non_exhaustive()
    }
}

impl<'a> Audit<'a> {
    /// The service over its handles: the store, the identity that signs,
    /// the watch of this node's last seq (the network publishes what
    /// follows what it sent), and a view of trust.
    #[must_use]
    pub fn new(
        store: &'a Store,
        identity: &'a Identity,
        seq: &'a tokio::sync::watch::Sender<u64>,
        trust: TrustService<'a>,
    ) -> Self {
        Audit {
            store,
            identity,
            seq,
            trust,
        }
    }

    /// Watches the seq of this node's last ledger entry.
    #[must_use]
    pub fn watch(&self) -> tokio::sync::watch::Receiver<u64> {
        self.seq.subscribe()
    }
}

impl<'a> Audit<'a> {
    /// Appends `event` to this node's feed.
    ///
    /// # Errors
    /// Store errors: the caller's operation fails rather than go unrecorded.
    ///
    /// An action that changes state writes its entry with the change, in the
    /// same write transaction (see [`Audit::author`]); this is for entries
    /// that record what changes no state here (an export, a request sent).
    pub fn log(&self, event: Event) -> Result<(), StoreError> {
        let kind = event.kind();
        let e = self
            .store
            .ledger_append(self.identity, crate::clock::now(), event)
            .inspect_err(|err| {
                if matches!(err, StoreError::OwnFeedBehind { .. }) {
                    tracing::error!(kind, "ledger entry not written: {err}");
                }
            })?;
        self.logged(std::slice::from_ref(&e));
        Ok(())
    }

    /// Why this node writes no ledger entry now, if it does not: its own
    /// feed is shorter than what a peer holds (see [`StoreError::OwnFeedBehind`](crate::store::StoreError::OwnFeedBehind)).
    #[must_use]
    pub fn own_feed_problem(&self) -> Option<String> {
        match self.store.ledger_own_behind(&self.identity.ed25519_public()) {
            Ok(Some((held, seen))) => Some(crate::store::StoreError::OwnFeedBehind { held, seen }.to_string()),
            Ok(None) => None,
            Err(e) => Some(format!("cannot read the ledger: {e}")),
        }
    }

    /// Who signs the entries a change appends in its own write transaction
    /// (the store's `…_logged` calls, `land_study`, `lock_study`,
    /// `purge_study`): this node, now.
    #[must_use]
    pub fn author(&self) -> Author<'a> {
        Author {
            identity: self.identity,
            time: crate::clock::now(),
        }
    }

    /// Notes entries appended (and committed) with a change: wakes the
    /// ledger's publication.
    pub fn logged(&self, entries: &[SignedEntry]) {
        for e in entries {
            tracing::debug!(seq = e.entry.seq, kind = e.entry.event.kind(), "ledger entry written");
            self.seq.send_if_modified(|s| {
                let newer = e.entry.seq > *s;
                *s = (*s).max(e.entry.seq);
                newer
            });
        }
    }

    /// This node's commitment of a study (made on first use).
    ///
    /// # Errors
    /// Store errors.
    pub fn study_commitment(&self, study_uid: &str) -> Result<[u8; 32], AuditError> {
        let study = self.store.study_ref(study_uid);
        Ok(self.store.study_commitment(&study, study_uid)?)
    }

    /// The last `limit` entries this node holds, oldest first (by time, then author and seq).
    ///
    /// # Errors
    /// Store errors; an entry that does not open is skipped here (see `log verify`).
    pub fn log_tail(&self, limit: usize) -> Result<Vec<EntryView>, AuditError> {
        let mut all: Vec<SignedEntry> = self
            .store
            .ledger_entries()?
            .into_iter()
            .filter_map(|s| ledger::open_entry(&s.bytes).ok())
            .collect();
        all.sort_by(|a, b| {
            (a.entry.time, &a.entry.author, a.entry.seq).cmp(&(b.entry.time, &b.entry.author, b.entry.seq))
        });
        let skip = all.len().saturating_sub(limit);
        Ok(all[skip..].iter().map(view).collect())
    }

    /// One entry by its id (hex, or a unique prefix of at least 8 digits).
    /// On the node that made its study commitment, the study is resolved.
    ///
    /// # Errors
    /// [`AuditError::Lookup`]: no single entry of that id.
    pub fn log_show(&self, id: &str) -> Result<EntryView, AuditError> {
        let id = id.trim().to_lowercase();
        let bytes = if id.len() == 64 {
            let key: EntryId = id.parse().map_err(|_| LookupError::NotAnId { id: id.clone() })?;
            self.store.ledger_entry(&key)?
        } else if id.len() >= 8 {
            let matches: Vec<Vec<u8>> = self
                .store
                .ledger_entries()?
                .into_iter()
                .map(|s| s.bytes)
                .filter(|b| blake3::hash(b).to_hex().starts_with(&id))
                .collect();
            if matches.len() > 1 {
                return Err(LookupError::Ambiguous { id }.into());
            }
            matches.into_iter().next()
        } else {
            return Err(LookupError::TooShort { id }.into());
        };
        let bytes = bytes.ok_or_else(|| LookupError::NotFound { id: id.clone() })?;
        let e = ledger::open_entry(&bytes).map_err(LookupError::from)?;
        let mut v = view(&e);
        if let Some(c) = e
            .entry
            .event
            .study()
            .and_then(|s| hex::decode(s).ok())
            .and_then(|b| <[u8; 32]>::try_from(b).ok())
        {
            v.study_uid = self.store.resolve_commitment(&c)?;
            if v.study_uid.is_some() {
                tracing::info!(entry = %v.id, "a ledger entry's study commitment resolved");
            }
        }
        Ok(v)
    }

    /// Verifies every feed this node holds: each entry's signature and
    /// author, and the chain (seq 1, 2, ... each naming the one before).
    ///
    /// # Errors
    /// Store errors.
    pub fn log_verify(&self) -> Result<VerifyReport, AuditError> {
        let mut feeds: BTreeMap<[u8; 32], Vec<(u64, Vec<u8>)>> = BTreeMap::new();
        for StoredEntry { author, seq, bytes } in self.store.ledger_entries()? {
            feeds.entry(author).or_default().push((seq, bytes));
        }
        let mut out = Vec::new();
        for (author, entries) in feeds {
            let author_peer = peer_text(&author);
            let mut problems = Vec::new();
            let mut prev: Option<SignedEntry> = None;
            let mut head = (0, String::new());
            for (seq, bytes) in &entries {
                match ledger::open_entry(bytes) {
                    Ok(e) => {
                        if e.entry.author != author || e.entry.seq != *seq {
                            problems.push(format!("entry {seq}: stored under another author or seq"));
                        }
                        match &prev {
                            Some(p) => {
                                if let Err(err) = ledger::check_link(p, &e) {
                                    problems.push(err.to_string());
                                }
                            }
                            None if e.entry.seq != 1 => {
                                problems.push(format!("entries 1 to {} are missing", e.entry.seq - 1));
                            }
                            None => {}
                        }
                        head = (e.entry.seq, hex::encode(e.id));
                        prev = Some(e);
                    }
                    Err(err) => {
                        problems.push(format!("entry {seq}: {err}"));
                        prev = None;
                    }
                }
            }
            out.push(FeedReport {
                author: author_peer,
                entries: entries.len() as u64,
                head_seq: head.0,
                head_id: head.1,
                problems,
                countersigned: 0,
            });
        }
        // This node's own feed shorter than what its peers hold.
        let own = self.identity.ed25519_public();
        if let Some((held, seen)) = self.store.ledger_own_behind(&own)? {
            let problem = format!(
                "this node's own feed ends at entry {held} here but its peers hold it up to entry {seen}: entries {} to {seen} were lost here (a crash, a restore from backup); no entry is written until they are taken back from peers",
                held + 1
            );
            add_problem(&mut out, peer_text(&own), problem);
        }
        // Equivocations: a second entry of a seq, kept as evidence.
        for StoredEntry { author, seq, bytes } in self.store.ledger_forks()? {
            let id = hex::encode(blake3::hash(&bytes).as_bytes());
            let peer = peer_text(&author);
            let problem = format!(
                "equivocation: a second entry {seq} ({}) signed by the author",
                &id[..16]
            );
            add_problem(&mut out, peer, problem);
        }
        // Split views: a peer countersigned another entry than the one held here.
        for SplitRow {
            author,
            seq,
            envelope: bytes,
            ..
        } in self.store.ledger_splits()?
        {
            let peer = peer_text(&author);
            let witness = ledger::gossip::open_witness(&bytes).map_or_else(|_| "(unreadable)".into(), |w| w.peer());
            let problem = format!("split view: {witness} countersigned another entry {seq} than the one held here");
            add_problem(&mut out, peer, problem);
        }
        // Countersignatures that agree with the feeds held here.
        for bytes in self.store.ledger_witnesses()? {
            let Ok(w) = ledger::gossip::open_witness(&bytes) else {
                continue;
            };
            for h in &w.witness.heads {
                let Ok(author) = <[u8; 32]>::try_from(h.author.as_slice()) else {
                    continue;
                };
                if self
                    .store
                    .ledger_id_at(&author, h.seq)?
                    .is_some_and(|id| id.as_bytes().as_slice() == h.id.as_slice())
                {
                    let peer = peer_text(&author);
                    if let Some(f) = out.iter_mut().find(|f| f.author == peer) {
                        f.countersigned += 1;
                    }
                }
            }
        }
        Ok(VerifyReport {
            ok: out.iter().all(|f| f.problems.is_empty()),
            feeds: out,
        })
    }
}

/// A notification as `medmesh notifications` shows it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct NotificationView {
    /// The entry's id (hex).
    pub entry: String,
    /// Its author (peer id).
    pub author: String,
    /// Its seq.
    pub seq: u64,
    /// What happened (the entry's kind).
    pub kind: String,
    /// When (RFC 3339).
    pub time: String,
    /// The study of this site it concerns (resolved here).
    pub study_uid: String,
    /// Taken by this node (RFC 3339).
    pub noted: String,
    /// Shown before.
    pub read: bool,
    /// The role behind the access (the requesting role of a request, the
    /// role that opened data), when the entry names one and this node holds
    /// it, or when it is about a transfer this node recorded (the role the
    /// request carried).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub role: Option<String>,
    /// The transfer the entry is about, if any (hex id).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub transfer: Option<String>,
}

/// What [`Audit::ledger_accept`] did with a batch of entries from a peer.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AcceptReport {
    /// Stored.
    pub added: u64,
    /// Held already.
    pub duplicates: u64,
    /// Equivocations found (kept as evidence).
    pub forks: u64,
    /// Refused, with why (bad signature or encoding, unknown author, broken chain, gap).
    pub rejected: Vec<String>,
    /// Ranges to ask the same peer for next (author key, first seq, how
    /// many): the rest of a feed after a full batch, or what a gap left out.
    pub follow: Vec<(Vec<u8>, u64, u64)>,
    /// Whether the peer sent an invalid entry (bad signature or encoding,
    /// broken chain): it is not asked for that feed again for a while.
    pub invalid: bool,
}

/// What to do with a gossip message (gossipsub's validation verdict).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Verdict {
    /// Valid: keep passing it on.
    Accept,
    /// Not for this node to judge (an author or witness it does not know, its own entry): do not pass it on.
    Ignore,
    /// Invalid: do not pass it on, and count it against the peer that sent it.
    Reject,
}

/// What [`Audit::ledger_gossip`] made of a gossip message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GossipOutcome {
    /// The verdict.
    pub verdict: Verdict,
    /// Ranges to ask the sending peer for (author key, first seq, how many).
    pub follow: Vec<(Vec<u8>, u64, u64)>,
}

/// What became of one entry from a peer.
enum Taken {
    Added,
    Duplicate,
    Fork,
    /// This node's own entry, held as is.
    Own,
    /// By an author this node does not trust (or does not know yet).
    Untrusted(String),
    /// Not next in the feed held here, whose head is this seq.
    Gap(u64),
    /// Next in seq but naming another previous entry (kept as evidence).
    OtherBranch,
    /// Evidence of equivocation held already, or over the author's cap
    /// ([`crate::store::MAX_FORKS_PER_AUTHOR`]): not kept, alerted nor relayed.
    ForkKnown,
    /// Invalid: why.
    Refused(String),
}

/// Most ranges asked for after one witness.
const MAX_FOLLOW: usize = 64;

/// Trust decisions within one batch, by author key.
type TrustCache = BTreeMap<[u8; 32], bool>;

/// The trust-table key of a hello learned through the ledger, for an author never met.
pub(crate) const LEDGER_AUTHOR_PREFIX: &str = "ledger-author/";

impl Audit<'_> {
    /// Whether entries by `author` (Ed25519 key) are kept here: a peer this
    /// node trusts now (met, bilateral, or learned from relayed credentials).
    fn author_trusted(&self, author: &[u8; 32], cache: &mut TrustCache) -> Result<bool, AuditError> {
        if let Some(t) = cache.get(author) {
            return Ok(*t);
        }
        let Ok(peer) = crate::identity::peer_id_of(author) else {
            return Ok(false);
        };
        let state = self.trust.state()?;
        let trusted = match self.author_hello(&state, &peer)? {
            Some(h) => crate::trust::hello::evaluate(&state, &peer, &h, crate::clock::now()).is_ok(),
            None => false,
        };
        cache.insert(*author, trusted);
        Ok(trusted)
    }

    /// Whether this node holds a hello or record of `author` (met, bilateral or relayed).
    fn author_known(&self, author: &[u8; 32]) -> Result<bool, AuditError> {
        let Ok(peer) = crate::identity::peer_id_of(author) else {
            return Ok(true);
        };
        let state = self.trust.state()?;
        Ok(self.author_hello(&state, &peer)?.is_some())
    }

    /// The hello by which ledger entries of `peer` are judged: the one met
    /// or the bilateral record, else one relayed with its entries (used for
    /// the ledger only, never for transfers).
    fn author_hello(
        &self,
        state: &crate::trust::TrustState,
        peer: &str,
    ) -> Result<Option<crate::trust::hello::Hello>, AuditError> {
        if let Some(h) = crate::trust::hello::peer_hello(self.store, state, peer)? {
            return Ok(Some(h));
        }
        Ok(self
            .store
            .trust_get(&format!("{LEDGER_AUTHOR_PREFIX}{peer}"))?
            .and_then(|bytes| crate::trust::hello::Hello::from_bytes(&bytes).ok()))
    }

    /// Takes `credentials` (a hello relayed with entries of an author this
    /// node never met) when they are that author's, valid, and trusted
    /// here; they are kept so that later entries need none.
    fn learn_author(&self, author: &[u8; 32], credentials: &[u8], cache: &mut TrustCache) -> Result<bool, AuditError> {
        let Ok(peer) = crate::identity::peer_id_of(author) else {
            return Ok(false);
        };
        let Ok(h) = crate::trust::hello::Hello::from_bytes(credentials) else {
            return Ok(false);
        };
        let state = self.trust.state()?;
        if crate::trust::hello::evaluate(&state, &peer, &h, crate::clock::now()).is_err() {
            return Ok(false);
        }
        self.store
            .trust_put(&format!("{LEDGER_AUTHOR_PREFIX}{peer}"), credentials)?;
        cache.insert(*author, true);
        tracing::info!(author = %peer, "ledger author learned from relayed credentials");
        Ok(true)
    }

    /// The credentials (hello) this node relays with entries of `author`:
    /// a hello with certificates that it accepts now; none for its own feed
    /// (whoever asks has met this node), for a bilateral-only peer (its
    /// record would tell others its addresses, and only sites trusting it
    /// bilaterally take it anyway) or for a peer it refuses.
    ///
    /// # Errors
    /// Store errors.
    pub fn ledger_credentials(&self, author: &[u8]) -> Result<Option<Vec<u8>>, AuditError> {
        let Ok(author) = <[u8; 32]>::try_from(author) else {
            return Ok(None);
        };
        if author == self.identity.ed25519_public() {
            return Ok(None);
        }
        let Ok(peer) = crate::identity::peer_id_of(&author) else {
            return Ok(None);
        };
        let state = self.trust.state()?;
        let Some(h) = self.author_hello(&state, &peer)? else {
            return Ok(None);
        };
        if h.certificates.is_empty() || crate::trust::hello::evaluate(&state, &peer, &h, crate::clock::now()).is_err() {
            return Ok(None);
        }
        Ok(h.to_bytes().ok())
    }

    /// The heads of the feeds held here, for `/medmesh/ledger/1`.
    ///
    /// # Errors
    /// Store errors.
    pub fn ledger_heads(&self) -> Result<Vec<ledger::sync::Head>, AuditError> {
        Ok(self
            .store
            .ledger_heads()?
            .into_iter()
            .map(|FeedHead { author: a, seq, id }| ledger::sync::Head {
                author: a.to_vec(),
                seq,
                id: id.as_bytes().to_vec(),
            })
            .collect())
    }

    /// Entries of a feed held here, for `/medmesh/ledger/1`.
    ///
    /// # Errors
    /// Store errors.
    pub fn ledger_range(&self, author: &[u8], from: u64, limit: u64) -> Result<Vec<Vec<u8>>, AuditError> {
        let Ok(author) = <[u8; 32]>::try_from(author) else {
            return Ok(Vec::new());
        };
        Ok(self.store.ledger_range(&author, from, limit.min(ledger::sync::BATCH))?)
    }

    /// Which ranges to ask a peer for, given its heads: every trusted
    /// author's entries after the head held here (a batch each), and the
    /// peer's head entry itself when it is another entry than the one held
    /// here at that seq (an equivocation to take as evidence).
    ///
    /// # Errors
    /// Store errors.
    pub fn ledger_wants(&self, heads: &[ledger::sync::Head]) -> Result<Vec<(Vec<u8>, u64, u64)>, AuditError> {
        let own = self.identity.ed25519_public();
        let mine: BTreeMap<[u8; 32], u64> = self
            .store
            .ledger_heads()?
            .into_iter()
            .map(|h| (h.author, h.seq))
            .collect();
        let mut cache = TrustCache::new();
        let mut out = Vec::new();
        for h in heads {
            let Ok(author) = <[u8; 32]>::try_from(h.author.as_slice()) else {
                continue;
            };
            let held = mine.get(&author).copied().unwrap_or(0);
            if h.seq <= held {
                let differs = self
                    .store
                    .ledger_id_at(&author, h.seq)?
                    .is_some_and(|id| id.as_bytes().as_slice() != h.id.as_slice());
                if differs && (author == own || self.author_trusted(&author, &mut cache)?) {
                    out.push((h.author.clone(), h.seq, 1));
                }
                continue;
            }
            if author == own {
                // The peer says it holds more of this node's own feed than
                // this node does (lost in a crash, or restored from a
                // backup): ask for it. Appending stops when an entry comes
                // (signed by this node: heads are not, so a peer cannot stop
                // this node's appending by claiming a head), and the entries
                // are taken back.
                out.push(catch_up(&h.author, held, h.seq));
                continue;
            }
            if self.author_trusted(&author, &mut cache)? {
                out.push(catch_up(&h.author, held, h.seq));
            } else if !self.author_known(&author)? {
                // Never met: one entry, whose answer carries the author's credentials.
                out.push((h.author.clone(), held + 1, 1));
            }
            // (Known and refused: revoked, blocked, expired: not asked for.)
        }
        Ok(out)
    }

    /// Takes entries sent by `from` (with the author's relayed
    /// `credentials`, if any): each must open, be by a trusted author, and
    /// extend the feed held here; a different entry of a seq held already is
    /// kept as evidence of equivocation and raised as an alert. A refused
    /// entry is logged and raised as an alert naming the sender.
    ///
    /// # Errors
    /// Store errors.
    pub fn ledger_accept(
        &self,
        from: &str,
        entries: &[Vec<u8>],
        credentials: Option<&[u8]>,
    ) -> Result<AcceptReport, AuditError> {
        let mut r = AcceptReport::default();
        let mut cache = TrustCache::new();
        let mut last: Option<([u8; 32], u64)> = None;
        for bytes in entries {
            match self.take_entry(from, bytes, credentials, &mut cache)? {
                (Taken::Added, e) => {
                    r.added += 1;
                    last = e.map(|e| (author_key(&e), e.entry.seq));
                }
                (Taken::Duplicate | Taken::Own, e) => {
                    r.duplicates += 1;
                    last = e.map(|e| (author_key(&e), e.entry.seq));
                }
                (Taken::Fork, _) => r.forks += 1,
                (Taken::ForkKnown, _) => {}
                (Taken::OtherBranch, Some(e)) => {
                    r.forks += 1;
                    r.rejected.push(format!(
                        "entry {} of {}: names another previous entry than the one held here",
                        e.entry.seq,
                        e.author_peer()
                    ));
                    // The peer may hold the other branch: ask it for the entry before.
                    r.follow
                        .push((e.entry.author.clone(), e.entry.seq.saturating_sub(1).max(1), 1));
                }
                (Taken::OtherBranch, None) => {}
                (Taken::Untrusted(why), _) => r.rejected.push(why),
                (Taken::Refused(why), _) => {
                    r.invalid = true;
                    r.rejected.push(why);
                }
                (Taken::Gap(held), Some(e)) => {
                    r.rejected.push(format!(
                        "entry {} of {}: not the next one held here ({held})",
                        e.entry.seq,
                        e.author_peer()
                    ));
                }
                (Taken::Gap(_), None) => {}
            }
        }
        // A full batch that all fitted: there may be more.
        if entries.len() as u64 >= ledger::sync::BATCH
            && r.rejected.is_empty()
            && let Some((author, seq)) = last
        {
            r.follow
                .push((author.to_vec(), seq.saturating_add(1), ledger::sync::BATCH));
        }
        if !r.rejected.is_empty() {
            tracing::warn!(peer = %from, refused = r.rejected.len(), first = %r.rejected[0], "ledger entries refused from this peer");
        }
        Ok(r)
    }

    /// Judges a message of the ledger's gossip topic sent by `from`: a new
    /// entry is taken as [`Audit::ledger_accept`] would; a witness is kept,
    /// and every head it names that differs from the entry held here is
    /// kept as evidence of a split view and raised as an alert.
    ///
    /// # Errors
    /// Store errors.
    pub fn ledger_gossip(&self, from: &str, data: &[u8]) -> Result<GossipOutcome, AuditError> {
        let reject = |node: &Self, why: String| -> Result<GossipOutcome, AuditError> {
            node.refused(from, 0, &why)?;
            Ok(GossipOutcome {
                verdict: Verdict::Reject,
                follow: Vec::new(),
            })
        };
        let msg = match ledger::gossip::GossipMsg::from_bytes(data) {
            Ok(m) => m,
            Err(why) => return reject(self, format!("gossip message from {from}: {why}")),
        };
        let mut cache = TrustCache::new();
        match msg {
            ledger::gossip::GossipMsg::Entry { entry, .. } => {
                let (taken, e) = self.take_entry(from, &entry, None, &mut cache)?;
                let (verdict, follow) = match (taken, e) {
                    (Taken::Added | Taken::Duplicate | Taken::Fork, _) => (Verdict::Accept, Vec::new()),
                    (Taken::OtherBranch, Some(e)) => (
                        Verdict::Accept,
                        vec![(e.entry.author.clone(), e.entry.seq.saturating_sub(1).max(1), 1)],
                    ),
                    (Taken::OtherBranch, None) => (Verdict::Accept, Vec::new()),
                    // Evidence relayed once, when first kept here.
                    (Taken::Own | Taken::Untrusted(_) | Taken::ForkKnown, _) => (Verdict::Ignore, Vec::new()),
                    // Valid and trusted, but entries before it are missing here: pass it on, fetch them.
                    (Taken::Gap(held), Some(e)) => {
                        (Verdict::Accept, vec![catch_up(&e.entry.author, held, e.entry.seq)])
                    }
                    (Taken::Gap(_), None) => (Verdict::Ignore, Vec::new()),
                    (Taken::Refused(_), _) => (Verdict::Reject, Vec::new()),
                };
                Ok(GossipOutcome { verdict, follow })
            }
            ledger::gossip::GossipMsg::Witness { witness, .. } => {
                let w = match ledger::gossip::open_witness(&witness) {
                    Ok(w) => w,
                    Err(why) => return reject(self, format!("witness from {from}: {why}")),
                };
                let own = self.identity.ed25519_public();
                if w.key() == own || !self.author_trusted(&w.key(), &mut cache)? {
                    return Ok(GossipOutcome {
                        verdict: Verdict::Ignore,
                        follow: Vec::new(),
                    });
                }
                let follow = self.take_witness(&w, &mut cache)?;
                Ok(GossipOutcome {
                    verdict: Verdict::Accept,
                    follow,
                })
            }
            // Judged on its admin signatures, not on the peer that sent it (home/trust.rs).
            ledger::gossip::GossipMsg::Revocation { revocation, .. } => Ok(GossipOutcome {
                verdict: match self.trust.revocation_from_peer(from, &revocation)? {
                    crate::trust::service::RevocationTaken::Applied(_)
                    | crate::trust::service::RevocationTaken::Known => Verdict::Accept,
                    crate::trust::service::RevocationTaken::Refused(_) => Verdict::Reject,
                    _ => Verdict::Ignore,
                },
                follow: Vec::new(),
            }),
        }
    }

    /// Keeps witness `w` and compares the heads it names with the feeds
    /// held here; returns the ranges to fetch (the conflicting entry of a
    /// split view, or what this node lacks).
    fn take_witness(
        &self,
        w: &ledger::gossip::SignedWitness,
        cache: &mut TrustCache,
    ) -> Result<Vec<(Vec<u8>, u64, u64)>, AuditError> {
        self.store.ledger_witness_put(w)?;
        let own = self.identity.ed25519_public();
        let heads: BTreeMap<[u8; 32], u64> = self
            .store
            .ledger_heads()?
            .into_iter()
            .map(|h| (h.author, h.seq))
            .collect();
        let mut follow = Vec::new();
        for h in &w.witness.heads {
            let Ok(author) = <[u8; 32]>::try_from(h.author.as_slice()) else {
                continue;
            };
            let held = heads.get(&author).copied().unwrap_or(0);
            match self.store.ledger_id_at(&author, h.seq)? {
                Some(id) if id.as_bytes().as_slice() != h.id.as_slice() => {
                    if author != own && !self.author_trusted(&author, cache)? {
                        continue;
                    }
                    let peer = peer_text(&author);
                    if self.store.ledger_split_put(&author, h.seq, w)? {
                        let what = if author == own {
                            format!(
                                "{} holds another entry {} of this node's own feed (restored from an old backup?)",
                                w.peer(),
                                h.seq
                            )
                        } else {
                            format!(
                                "split view: {} countersigned another entry {} of {peer} than the one held here",
                                w.peer(),
                                h.seq
                            )
                        };
                        tracing::error!(author = %peer, seq = h.seq, witness = %w.peer(), "{what}");
                        // One alert per witness and author, however many seqs it names.
                        let mut key = author.to_vec();
                        key.extend_from_slice(&w.key());
                        self.alert("alert-split-view", &peer, h.seq, &what, &key)?;
                    }
                    if author != own {
                        follow.push((h.author.clone(), h.seq, 1));
                    }
                }
                Some(_) => {}
                // (For this node's own feed too: what comes back is signed by
                // it, and stops its appending until the feed is whole.)
                None if h.seq > held => {
                    follow.push(catch_up(&h.author, held, h.seq));
                }
                None => {}
            }
        }
        follow.truncate(MAX_FOLLOW);
        Ok(follow)
    }

    /// Takes one entry from `from`.
    fn take_entry(
        &self,
        from: &str,
        bytes: &[u8],
        credentials: Option<&[u8]>,
        cache: &mut TrustCache,
    ) -> Result<(Taken, Option<SignedEntry>), AuditError> {
        let e = match ledger::open_entry(bytes) {
            Ok(e) => e,
            Err(err) => {
                let why = err.to_string();
                self.refused(from, 0, &why)?;
                return Ok((Taken::Refused(why), None));
            }
        };
        let author = author_key(&e);
        let own = self.identity.ed25519_public();
        if author == own {
            return match self.store.ledger_id_at(&own, e.entry.seq)? {
                Some(id) if *id.as_bytes() != e.id => {
                    let what = format!(
                        "{from} sent another entry {} of this node's own feed (restored from an old backup?)",
                        e.entry.seq
                    );
                    tracing::error!(seq = e.entry.seq, from, "{what}");
                    self.alert("alert-equivocation", from, e.entry.seq, &what, &hourly(&own))?;
                    Ok((Taken::Fork, Some(e)))
                }
                Some(_) => Ok((Taken::Own, Some(e))),
                None => self.take_own_back(from, e),
            };
        }
        let trusted = self.author_trusted(&author, cache)?
            || match credentials {
                Some(c) => self.learn_author(&author, c, cache)?,
                None => false,
            };
        if !trusted {
            return Ok((
                Taken::Untrusted(format!("entry by {}: not a trusted author", e.author_peer())),
                Some(e),
            ));
        }
        let taken = match self.store.ledger_insert_foreign(&e)? {
            crate::store::Inserted::Added => {
                self.notify_if_ours(&e)?;
                Taken::Added
            }
            crate::store::Inserted::Duplicate => Taken::Duplicate,
            crate::store::Inserted::Fork => {
                let what = format!(
                    "equivocation: {} signed two different entries {}; both kept as evidence",
                    e.author_peer(),
                    e.entry.seq
                );
                self.equivocation(&e, from, &what, &author)?;
                Taken::Fork
            }
            crate::store::Inserted::Gap => {
                let held = self.store.ledger_heads_of(&author)?.map_or(0, |(s, _)| s);
                Taken::Gap(held)
            }
            crate::store::Inserted::Broken => {
                // The author signed it: the author is at fault, not the peer that relayed it.
                let what = format!(
                    "equivocation: {} signed an entry {} naming another previous entry than the one held here; kept as evidence",
                    e.author_peer(),
                    e.entry.seq
                );
                self.equivocation(&e, from, &what, &author)?;
                Taken::OtherBranch
            }
            crate::store::Inserted::ForkKnown => Taken::ForkKnown,
        };
        Ok((taken, Some(e)))
    }

    /// An entry of this node's own feed that it does not hold, sent by
    /// `from`: lost here (a crash, a restore from backup). Appending stops
    /// until the feed is whole again; the entry is taken back when it is the
    /// next one (it verifies: this node signed it).
    fn take_own_back(&self, from: &str, e: SignedEntry) -> Result<(Taken, Option<SignedEntry>), AuditError> {
        self.own_feed_seen(e.entry.seq, from)?;
        let taken = match self.store.ledger_insert_foreign(&e)? {
            crate::store::Inserted::Added => {
                tracing::warn!(
                    seq = e.entry.seq,
                    from,
                    "an entry of this node's own feed, lost here, taken back from a peer"
                );
                if self.store.ledger_own_behind(&self.identity.ed25519_public())?.is_none() {
                    tracing::info!(
                        seq = e.entry.seq,
                        "this node's own feed is whole again: appending resumes"
                    );
                    self.seq.send_if_modified(|s| {
                        let newer = e.entry.seq > *s;
                        *s = (*s).max(e.entry.seq);
                        newer
                    });
                }
                Taken::Added
            }
            crate::store::Inserted::Duplicate => Taken::Own,
            crate::store::Inserted::ForkKnown => Taken::ForkKnown,
            crate::store::Inserted::Gap => {
                let held = self
                    .store
                    .ledger_heads_of(&self.identity.ed25519_public())?
                    .map_or(0, |(s, _)| s);
                Taken::Gap(held)
            }
            crate::store::Inserted::Fork | crate::store::Inserted::Broken => {
                let what = format!(
                    "{from} sent an entry {} of this node's own feed naming another previous entry than the one held here",
                    e.entry.seq
                );
                tracing::error!(seq = e.entry.seq, from, "{what}");
                self.alert("alert-equivocation", from, e.entry.seq, &what, &e.id)?;
                Taken::OtherBranch
            }
        };
        Ok((taken, Some(e)))
    }

    /// Records that a peer (`source`) holds this node's own feed up to
    /// `seq` (it sent an entry of it, signed by this node); says so once in
    /// the log when the feed held here is shorter.
    fn own_feed_seen(&self, seq: u64, source: &str) -> Result<(), AuditError> {
        let own = self.identity.ed25519_public();
        let before = self.store.ledger_own_behind(&own)?;
        if let Some((held, seen)) = self.store.ledger_own_seen(&own, seq)?
            && before.is_none_or(|(_, s)| s < seen)
        {
            tracing::error!(
                held,
                seen,
                source,
                "this node's own ledger feed is behind what its peers hold (entries lost in a crash or a restore from backup): no entry is written until they are taken back from peers"
            );
        }
        Ok(())
    }

    /// Logs and alerts (at most once an hour per author) the equivocation
    /// `what` of the author of `e`, relayed by `from`.
    fn equivocation(&self, e: &SignedEntry, from: &str, what: &str, author: &[u8; 32]) -> Result<(), AuditError> {
        tracing::error!(author = %e.author_peer(), seq = e.entry.seq, from, "{what}");
        self.alert(
            "alert-equivocation",
            &e.author_peer(),
            e.entry.seq,
            what,
            &hourly(author),
        )
    }

    /// Raises `alert-refused-entry` naming `from`, the peer that sent an
    /// invalid entry or message: at most one per peer and hour, so a faulty
    /// peer cannot flood the notifications (every refusal is logged).
    fn refused(&self, from: &str, seq: u64, why: &str) -> Result<(), AuditError> {
        let hour = crate::clock::now().div_euclid(3600);
        let evidence = format!("{from}/{hour}");
        self.alert("alert-refused-entry", from, seq, why, evidence.as_bytes())
    }

    /// Raises an alert: a notification row of `kind` (`alert-…`) naming
    /// `peer`, recorded once per `evidence` (its BLAKE3 names the row).
    fn alert(&self, kind: &str, peer: &str, seq: u64, what: &str, evidence: &[u8]) -> Result<(), AuditError> {
        let mut h = blake3::Hasher::new();
        h.update(kind.as_bytes());
        h.update(evidence);
        let t = crate::clock::now();
        let row = crate::store::NotificationRow {
            v: 1,
            author: peer.to_string(),
            seq,
            kind: kind.to_string(),
            time: t,
            study: String::new(),
            noted: t,
            read: false,
        };
        tracing::debug!(kind, peer, detail = %what, "alert recorded");
        self.store.notification_put(h.finalize().as_bytes(), &row)?;
        Ok(())
    }
}

/// The evidence key of an alert about `author`: one per author and hour
/// (every piece of evidence is logged; notifications are not flooded).
fn hourly(author: &[u8; 32]) -> Vec<u8> {
    let mut key = author.to_vec();
    key.extend_from_slice(&crate::clock::now().div_euclid(3600).to_be_bytes());
    key
}

/// The range to ask for after `held` of `author`'s feed, towards `seq`: one batch at most.
fn catch_up(author: &[u8], held: u64, seq: u64) -> (Vec<u8>, u64, u64) {
    (
        author.to_vec(),
        held.saturating_add(1),
        seq.saturating_sub(held).min(ledger::sync::BATCH),
    )
}

/// A problem of `peer`'s feed in a verification, on its report (made when
/// this node holds no entry of that feed).
fn add_problem(out: &mut Vec<FeedReport>, peer: String, problem: String) {
    match out.iter_mut().find(|f| f.author == peer) {
        Some(f) => f.problems.push(problem),
        None => out.push(FeedReport {
            author: peer,
            entries: 0,
            head_seq: 0,
            head_id: String::new(),
            problems: vec![problem],
            countersigned: 0,
        }),
    }
}

/// An author key as text: its peer id, or hex when it is not a valid key.
fn peer_text(author: &[u8; 32]) -> String {
    crate::identity::peer_id_of(author).unwrap_or_else(|_| hex::encode(author))
}

/// An entry's author key (open_entry checked that the signer is the author, 32 bytes).
fn author_key(e: &SignedEntry) -> [u8; 32] {
    let mut k = [0u8; 32];
    if e.entry.author.len() == 32 {
        k.copy_from_slice(&e.entry.author);
    }
    k
}

impl Audit<'_> {
    /// Records a notification when an entry of another node names a study
    /// whose commitment this node made (its study was requested, granted,
    /// sent, received or opened elsewhere).
    fn notify_if_ours(&self, e: &SignedEntry) -> Result<(), AuditError> {
        let Some(study) = e.entry.event.study() else {
            return Ok(());
        };
        let Some(c) = hex::decode(study).ok().and_then(|b| <[u8; 32]>::try_from(b).ok()) else {
            return Ok(());
        };
        if self.store.resolve_commitment(&c)?.is_none() {
            return Ok(());
        }
        let row = crate::store::NotificationRow {
            v: 1,
            author: e.author_peer(),
            seq: e.entry.seq,
            kind: e.entry.event.kind().to_string(),
            time: e.entry.time,
            study: study.to_string(),
            noted: crate::clock::now(),
            read: false,
        };
        self.store.notification_put(&e.id, &row)?;
        tracing::info!(author = %row.author, kind = %row.kind, "notification: an entry of another site concerns a study of this one");
        Ok(())
    }

    /// The notifications of this site, oldest first (with `unread_only`,
    /// those not shown before); shown ones are marked read.
    ///
    /// # Errors
    /// Store errors.
    pub fn notifications(&self, unread_only: bool) -> Result<Vec<NotificationView>, AuditError> {
        let mut out = Vec::new();
        for (id, r) in self.store.notifications_take(unread_only)? {
            let study_uid = hex::decode(&r.study)
                .ok()
                .and_then(|b| <[u8; 32]>::try_from(b).ok())
                .map(|c| self.store.resolve_commitment(&c))
                .transpose()?
                .flatten()
                .unwrap_or_else(|| {
                    if r.study.is_empty() {
                        String::new()
                    } else {
                        "(erased)".into()
                    }
                });
            let event = self
                .store
                .ledger_entry(&EntryId::from(id))?
                .and_then(|bytes| crate::ledger::open_entry(&bytes).ok())
                .map(|e| e.entry.event);
            out.push(NotificationView {
                role: event.as_ref().and_then(|e| e.role().map(str::to_owned)),
                transfer: event.as_ref().and_then(|e| e.transfer().map(str::to_owned)),
                entry: hex::encode(id),
                author: r.author,
                seq: r.seq,
                kind: r.kind,
                time: rfc3339(r.time),
                study_uid,
                noted: rfc3339(r.noted),
                read: r.read,
            });
        }
        Ok(out)
    }
}
