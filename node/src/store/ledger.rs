//! The ledger's tables: every entry of every feed this node holds, an index
//! by entry id, and the study commitments this node made (with their salts,
//! sealed), so that only this node can say which study a commitment names.

use medmesh_seal::{open_box, seal_box};
use redb::{ReadableDatabase, ReadableTable};
use zeroize::Zeroizing;

use super::{
    LEDGER_COMMITS, LEDGER_ENTRIES, LEDGER_FORKS, LEDGER_IDS, LEDGER_SPLITS, LEDGER_STUDIES, LEDGER_WITNESSES,
    StoreError, StudyRef,
};
use crate::identity::Identity;
use crate::ids::EntryId;
use crate::ledger::{self, Event, SignedEntry};

/// Who signs the entries a change appends in its own write transaction,
/// and when (`Store::append_in`).
#[derive(Clone, Copy)]
pub struct Author<'a> {
    /// This node's identity (signs the entries).
    pub identity: &'a Identity,
    /// The entries' time (Unix seconds).
    pub time: i64,
}

impl std::fmt::Debug for Author<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Author")
            .field("time", &self.time)
            .finish_non_exhaustive()
    }
}

/// A stored entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredEntry {
    /// Its author's Ed25519 key.
    pub author: [u8; 32],
    /// Its position in the author's feed.
    pub seq: u64,
    /// Its signed envelope, as stored.
    pub bytes: Vec<u8>,
}

/// The head of a feed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FeedHead {
    /// The feed's author's Ed25519 key.
    pub author: [u8; 32],
    /// The seq of its last entry held here.
    pub seq: u64,
    /// That entry's id.
    pub id: EntryId,
}

fn entry_key(author: &[u8; 32], seq: u64) -> [u8; 40] {
    let mut k = [0u8; 40];
    k[..32].copy_from_slice(author);
    k[32..].copy_from_slice(&seq.to_be_bytes());
    k
}

/// (author, seq) of a key that starts with an [`entry_key`].
fn split_key(k: &[u8]) -> ([u8; 32], u64) {
    let mut author = [0u8; 32];
    author.copy_from_slice(&k[..32]);
    let mut seq = [0u8; 8];
    seq.copy_from_slice(&k[32..40]);
    (author, u64::from_be_bytes(seq))
}

/// The head (seq, id) of `author`'s feed in an entries table: only its last
/// entry is read.
fn feed_head(
    table: &impl ReadableTable<[u8; 40], &'static [u8]>,
    author: &[u8; 32],
) -> Result<Option<(u64, [u8; 32])>, redb::StorageError> {
    Ok(table
        .range(entry_key(author, 0)..=entry_key(author, u64::MAX))?
        .next_back()
        .transpose()?
        .map(|(k, v)| (split_key(&k.value()).1, *blake3::hash(v.value()).as_bytes())))
}

/// `meta-v1` key: the highest seq of this node's own feed that a peer was
/// seen to hold (u64 LE), raised by catch-up, gossip and witnesses.
const OWN_FEED_SEEN: &str = "own-feed-seen";

/// The highest seq of this node's own feed seen at a peer (0: none).
fn own_feed_seen(meta: &impl ReadableTable<&'static str, &'static [u8]>) -> Result<u64, redb::StorageError> {
    Ok(meta
        .get(OWN_FEED_SEEN)?
        .and_then(|v| <[u8; 8]>::try_from(v.value()).ok())
        .map_or(0, u64::from_le_bytes))
}

impl super::Store {
    /// Records that a peer holds this node's own feed up to `seq` (from its
    /// heads, a witness or an entry it sent). Returns `Some((held, seen))`
    /// while the feed held here is shorter: appending is refused until the
    /// missing entries are taken back from peers.
    ///
    /// # Errors
    /// [`StoreError::Database`].
    pub fn ledger_own_seen(&self, author: &[u8; 32], seq: u64) -> Result<Option<(u64, u64)>, StoreError> {
        let mut txn = self.db.begin_write().map_err(|e| self.err(e))?;
        self.durability(&mut txn)?;
        let (held, seen) = {
            let held = feed_head(&txn.open_table(LEDGER_ENTRIES).map_err(|e| self.err(e))?, author)
                .map_err(|e| self.err(e))?
                .map_or(0, |(s, _)| s);
            let mut meta = txn.open_table(super::META).map_err(|e| self.err(e))?;
            let mut seen = own_feed_seen(&meta).map_err(|e| self.err(e))?;
            if seq > seen {
                meta.insert(OWN_FEED_SEEN, seq.to_le_bytes().as_slice())
                    .map_err(|e| self.err(e))?;
                seen = seq;
            }
            (held, seen)
        };
        txn.commit().map_err(|e| self.err(e))?;
        Ok((seen > held).then_some((held, seen)))
    }

    /// `Some((held, seen))` when this node's own feed (`author`) held here
    /// ends before what a peer was seen to hold.
    ///
    /// # Errors
    /// [`StoreError::Database`].
    pub fn ledger_own_behind(&self, author: &[u8; 32]) -> Result<Option<(u64, u64)>, StoreError> {
        let read = self.db.begin_read().map_err(|e| self.err(e))?;
        let held = feed_head(&read.open_table(LEDGER_ENTRIES).map_err(|e| self.err(e))?, author)
            .map_err(|e| self.err(e))?
            .map_or(0, |(s, _)| s);
        let seen = own_feed_seen(&read.open_table(super::META).map_err(|e| self.err(e))?).map_err(|e| self.err(e))?;
        Ok((seen > held).then_some((held, seen)))
    }

    /// Refuses to append to this node's own feed, whose head here is
    /// `head_seq`, when a peer was seen holding it further: the next entry
    /// would sign a seq signed before. Every append to the own feed calls
    /// this inside its write transaction.
    ///
    /// # Errors
    /// [`StoreError::OwnFeedBehind`], [`StoreError::Database`].
    pub(crate) fn own_feed_check(&self, txn: &redb::WriteTransaction, head_seq: u64) -> Result<(), StoreError> {
        let meta = txn.open_table(super::META).map_err(|e| self.err(e))?;
        let seen = own_feed_seen(&meta).map_err(|e| self.err(e))?;
        if seen > head_seq {
            return Err(StoreError::OwnFeedBehind { held: head_seq, seen });
        }
        Ok(())
    }

    fn commit_key(&self) -> medmesh_seal::DataKey {
        self.master.derive(super::LEDGER_COMMIT_KEY_CONTEXT)
    }

    /// The commitment that names `study` in this node's entries: made (with
    /// a new random salt) the first time.
    ///
    /// # Errors
    /// [`StoreError::Database`].
    pub fn study_commitment(&self, study: &StudyRef, study_uid: &str) -> Result<[u8; 32], StoreError> {
        {
            let read = self.db.begin_read().map_err(|e| self.err(e))?;
            let t = read.open_table(LEDGER_STUDIES).map_err(|e| self.err(e))?;
            if let Some(v) = t.get(study.0).map_err(|e| self.err(e))? {
                return Ok(v.value());
            }
        }
        let mut salt = Zeroizing::new([0u8; 32]);
        getrandom::fill(&mut salt[..]).map_err(StoreError::Random)?;
        let c = ledger::commitment(&salt, study_uid);
        let mut plain = Zeroizing::new(salt.to_vec());
        plain.extend_from_slice(study_uid.as_bytes());
        let sealed = seal_box(&self.commit_key(), &c, &plain).map_err(|e| StoreError::Commitment {
            commitment: hex::encode(&c[..8]),
            fault: super::CommitmentFault::Seal(e),
        })?;
        let mut txn = self.db.begin_write().map_err(|e| self.err(e))?;
        self.durability(&mut txn)?;
        let c = {
            let mut studies = txn.open_table(LEDGER_STUDIES).map_err(|e| self.err(e))?;
            // Another writer may have made one meanwhile: keep the first.
            let existing = studies.get(study.0).map_err(|e| self.err(e))?.map(|v| v.value());
            match existing {
                Some(c) => c,
                None => {
                    studies.insert(study.0, c).map_err(|e| self.err(e))?;
                    txn.open_table(LEDGER_COMMITS)
                        .map_err(|e| self.err(e))?
                        .insert(c, sealed.as_slice())
                        .map_err(|e| self.err(e))?;
                    c
                }
            }
        };
        txn.commit().map_err(|e| self.err(e))?;
        Ok(c)
    }

    /// The commitment the ledger names a stored study by, hex: the holder's
    /// (from the grant) for a received copy, this node's own otherwise
    /// ([`Store::study_commitment`], its UID read from the sealed metadata).
    ///
    /// # Errors
    /// [`StoreError::UnknownStudy`] when the study is not stored; database
    /// and key errors.
    pub fn ledger_study(&self, study: &StudyRef) -> Result<String, StoreError> {
        let row = self.study_row(study)?.ok_or_else(|| StoreError::UnknownStudy {
            study: format!("study {}", study.short()),
        })?;
        if let super::Origin::Received(g) = &row.origin
            && !g.study_ref.is_empty()
        {
            return Ok(hex::encode(&g.study_ref));
        }
        let key = self.unwrap_study_key(study, &row)?;
        let meta = self.open_study_meta(study, &key, &row)?;
        Ok(hex::encode(self.study_commitment(study, &meta.study_uid)?))
    }

    /// The Study Instance UID a commitment of this node names, if this node
    /// made it and its salt is not erased.
    ///
    /// # Errors
    /// [`StoreError::Database`]; a row that does not open.
    pub fn resolve_commitment(&self, c: &[u8; 32]) -> Result<Option<String>, StoreError> {
        let read = self.db.begin_read().map_err(|e| self.err(e))?;
        let t = read.open_table(LEDGER_COMMITS).map_err(|e| self.err(e))?;
        let Some(v) = t.get(c).map_err(|e| self.err(e))? else {
            return Ok(None);
        };
        let fault = |fault| StoreError::Commitment {
            commitment: hex::encode(&c[..8]),
            fault,
        };
        let plain =
            open_box(&self.commit_key(), c, v.value()).map_err(|_| fault(super::CommitmentFault::DoesNotOpen))?;
        if plain.len() < 32 {
            return Err(fault(super::CommitmentFault::TooShort));
        }
        let uid = String::from_utf8_lossy(&plain[32..]).to_string();
        let mut salt = [0u8; 32];
        salt.copy_from_slice(&plain[..32]);
        if ledger::commitment(&salt, &uid) != *c {
            return Err(fault(super::CommitmentFault::Mismatch));
        }
        Ok(Some(uid))
    }

    /// Erases the salt of a study's commitment: every entry naming it, here
    /// and at every other node, still verifies but names nothing any more.
    ///
    /// # Errors
    /// [`StoreError::Database`].
    pub fn erase_commitment(&self, study: &StudyRef) -> Result<bool, StoreError> {
        let mut txn = self.db.begin_write().map_err(|e| self.err(e))?;
        self.durability(&mut txn)?;
        let erased = self.erase_commitment_in(&txn, study)?;
        txn.commit().map_err(|e| self.err(e))?;
        Ok(erased)
    }

    /// As `erase_commitment`, inside the caller's write transaction.
    pub(super) fn erase_commitment_in(
        &self,
        txn: &redb::WriteTransaction,
        study: &StudyRef,
    ) -> Result<bool, StoreError> {
        let mut studies = txn.open_table(LEDGER_STUDIES).map_err(|e| self.err(e))?;
        let c = studies.remove(study.0).map_err(|e| self.err(e))?.map(|v| v.value());
        match c {
            Some(c) => {
                txn.open_table(LEDGER_COMMITS)
                    .map_err(|e| self.err(e))?
                    .remove(c)
                    .map_err(|e| self.err(e))?;
                Ok(true)
            }
            None => Ok(false),
        }
    }

    /// Appends `event` to this node's own feed, in one write transaction
    /// (the head is read inside it, so two appends never share a seq).
    ///
    /// # Errors
    /// [`StoreError::Database`], [`StoreError::Ledger`].
    pub fn ledger_append(&self, identity: &Identity, time: i64, event: Event) -> Result<SignedEntry, StoreError> {
        let mut txn = self.db.begin_write().map_err(|e| self.err(e))?;
        self.durability(&mut txn)?;
        let entry = self.append_in(&txn, &Author { identity, time }, event)?;
        txn.commit().map_err(|e| self.err(e))?;
        Ok(entry)
    }

    /// Appends `event` to this node's own feed inside the caller's write
    /// transaction: the entry is committed with the caller's change, or
    /// neither is (the head is read inside it, so two appends never share a
    /// seq).
    ///
    /// # Errors
    /// [`StoreError::Database`], [`StoreError::Ledger`].
    pub(super) fn append_in(
        &self,
        txn: &redb::WriteTransaction,
        author: &Author<'_>,
        event: Event,
    ) -> Result<SignedEntry, StoreError> {
        self.crash_point("ledger: append")?;
        let key = author.identity.ed25519_public();
        let mut entries = txn.open_table(LEDGER_ENTRIES).map_err(|e| self.err(e))?;
        let head = feed_head(&entries, &key).map_err(|e| self.err(e))?;
        // Never re-sign a sequence number a peer has seen (a feed lost in a crash).
        self.own_feed_check(txn, head.map_or(0, |(s, _)| s))?;
        let entry = ledger::make_entry(author.identity, head, author.time, event).map_err(StoreError::Ledger)?;
        entries
            .insert(entry_key(&key, entry.entry.seq), entry.bytes.as_slice())
            .map_err(|e| self.err(e))?;
        txn.open_table(LEDGER_IDS)
            .map_err(|e| self.err(e))?
            .insert(entry.id, entry_key(&key, entry.entry.seq))
            .map_err(|e| self.err(e))?;
        Ok(entry)
    }

    /// Appends each of `events`, in order, inside the caller's write transaction.
    ///
    /// # Errors
    /// As `Store::append_in`.
    pub(super) fn append_all_in(
        &self,
        txn: &redb::WriteTransaction,
        author: &Author<'_>,
        events: Vec<Event>,
    ) -> Result<Vec<SignedEntry>, StoreError> {
        events.into_iter().map(|e| self.append_in(txn, author, e)).collect()
    }

    /// Every entry this node holds, as stored (envelope bytes), by author
    /// then seq.
    ///
    /// # Errors
    /// [`StoreError::Database`].
    pub fn ledger_entries(&self) -> Result<Vec<StoredEntry>, StoreError> {
        self.stored_entries(LEDGER_ENTRIES)
    }

    /// The entry with id `id`, if this node holds it.
    ///
    /// # Errors
    /// [`StoreError::Database`].
    pub fn ledger_entry(&self, id: &EntryId) -> Result<Option<Vec<u8>>, StoreError> {
        let read = self.db.begin_read().map_err(|e| self.err(e))?;
        let ids = read.open_table(LEDGER_IDS).map_err(|e| self.err(e))?;
        let Some(key) = ids.get(id.as_bytes()).map_err(|e| self.err(e))?.map(|v| v.value()) else {
            return Ok(None);
        };
        let t = read.open_table(LEDGER_ENTRIES).map_err(|e| self.err(e))?;
        Ok(t.get(key).map_err(|e| self.err(e))?.map(|v| v.value().to_vec()))
    }
}

/// What became of an entry received from another node.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Inserted {
    /// Stored: it follows the author's head held here.
    Added,
    /// Held already.
    Duplicate,
    /// Another entry of the same author and seq is held: both kept as evidence.
    Fork,
    /// It does not follow the head held here (a gap); not stored.
    Gap,
    /// Its `prev` is not the id of the entry before it held here; not stored.
    Broken,
    /// Evidence of equivocation held already, or the author has
    /// [`MAX_FORKS_PER_AUTHOR`] pieces of evidence kept: not stored again,
    /// not alerted, not relayed.
    ForkKnown,
}

/// Most pieces of equivocation evidence kept per author: one is proof
/// enough, and an author signing conflicting entries without end must not
/// fill the store.
pub const MAX_FORKS_PER_AUTHOR: usize = 64;

impl super::Store {
    /// The head (seq, id) of every feed held here.
    ///
    /// # Errors
    /// [`StoreError::Database`].
    pub fn ledger_heads(&self) -> Result<Vec<FeedHead>, StoreError> {
        // Asked every few seconds by every peer: the authors from the keys,
        // then only each feed's last entry is read and hashed.
        // Skip from feed to feed: one lookup for the next author, one for its head.
        let read = self.db.begin_read().map_err(|e| self.err(e))?;
        let t = read.open_table(LEDGER_ENTRIES).map_err(|e| self.err(e))?;
        let mut out = Vec::new();
        let mut from = [0u8; 40];
        loop {
            let Some(item) = t.range(from..).map_err(|e| self.err(e))?.next() else {
                break;
            };
            let author = split_key(&item.map_err(|e| self.err(e))?.0.value()).0;
            if let Some((seq, id)) = feed_head(&t, &author).map_err(|e| self.err(e))? {
                out.push(FeedHead {
                    author,
                    seq,
                    id: EntryId::from(id),
                });
            }
            // The smallest key of the next author: author + 1 (big-endian), seq 0.
            let mut next = author;
            let mut carry = true;
            for b in next.iter_mut().rev() {
                if carry {
                    let (v, c) = b.overflowing_add(1);
                    *b = v;
                    carry = c;
                }
            }
            if carry {
                break;
            }
            from = entry_key(&next, 0);
        }
        Ok(out)
    }

    /// Entries `from ..` of `author`'s feed, at most `limit`.
    ///
    /// # Errors
    /// [`StoreError::Database`].
    pub fn ledger_range(&self, author: &[u8; 32], from: u64, limit: u64) -> Result<Vec<Vec<u8>>, StoreError> {
        let read = self.db.begin_read().map_err(|e| self.err(e))?;
        let t = read.open_table(LEDGER_ENTRIES).map_err(|e| self.err(e))?;
        let mut out = Vec::new();
        for item in t
            .range(entry_key(author, from.max(1))..=entry_key(author, u64::MAX))
            .map_err(|e| self.err(e))?
            .take(usize::try_from(limit).unwrap_or(usize::MAX))
        {
            out.push(item.map_err(|e| self.err(e))?.1.value().to_vec());
        }
        Ok(out)
    }

    /// Stores an entry of another author (already opened and its author
    /// found trusted) if it extends the feed held here; keeps a different
    /// entry of a seq held already as evidence of equivocation.
    ///
    /// # Errors
    /// [`StoreError::Database`].
    pub fn ledger_insert_foreign(&self, e: &SignedEntry) -> Result<Inserted, StoreError> {
        let Ok(author) = <[u8; 32]>::try_from(e.entry.author.as_slice()) else {
            return Ok(Inserted::Broken);
        };
        let mut txn = self.db.begin_write().map_err(|e| self.err(e))?;
        self.durability(&mut txn)?;
        let outcome = {
            let mut entries = txn.open_table(LEDGER_ENTRIES).map_err(|e| self.err(e))?;
            let held = entries
                .get(entry_key(&author, e.entry.seq))
                .map_err(|e| self.err(e))?
                .map(|v| v.value().to_vec());
            let head = feed_head(&entries, &author).map_err(|e| self.err(e))?;
            let outcome = match (held, head) {
                (Some(bytes), _) if *blake3::hash(&bytes).as_bytes() == e.id => Inserted::Duplicate,
                (Some(_), _) => Inserted::Fork,
                (None, head) => {
                    let (head_seq, head_id) = head.unwrap_or((0, [0u8; 32]));
                    if head_seq.checked_add(1) != Some(e.entry.seq) {
                        Inserted::Gap
                    } else if e.entry.prev != head_id {
                        // Signed by the author, naming another previous entry
                        // than the one held: evidence that it forked earlier.
                        Inserted::Broken
                    } else {
                        entries
                            .insert(entry_key(&author, e.entry.seq), e.bytes.as_slice())
                            .map_err(|e| self.err(e))?;
                        txn.open_table(LEDGER_IDS)
                            .map_err(|e| self.err(e))?
                            .insert(e.id, entry_key(&author, e.entry.seq))
                            .map_err(|e| self.err(e))?;
                        Inserted::Added
                    }
                }
            };
            if matches!(outcome, Inserted::Fork | Inserted::Broken) {
                let mut key = [0u8; 72];
                key[..40].copy_from_slice(&entry_key(&author, e.entry.seq));
                key[40..].copy_from_slice(&e.id);
                let mut forks = txn.open_table(LEDGER_FORKS).map_err(|e| self.err(e))?;
                let mut low = [0u8; 72];
                low[..32].copy_from_slice(&author);
                let mut high = [0xffu8; 72];
                high[..32].copy_from_slice(&author);
                let held = forks
                    .range(low..=high)
                    .map_err(|e| self.err(e))?
                    .take(MAX_FORKS_PER_AUTHOR)
                    .count();
                if held >= MAX_FORKS_PER_AUTHOR || forks.get(key).map_err(|e| self.err(e))?.is_some() {
                    Inserted::ForkKnown
                } else {
                    forks.insert(key, e.bytes.as_slice()).map_err(|e| self.err(e))?;
                    outcome
                }
            } else {
                outcome
            }
        };
        txn.commit().map_err(|e| self.err(e))?;
        Ok(outcome)
    }

    /// The second entries of equivocations kept as evidence: (author, seq, envelope).
    ///
    /// # Errors
    /// [`StoreError::Database`].
    pub fn ledger_forks(&self) -> Result<Vec<StoredEntry>, StoreError> {
        self.stored_entries(LEDGER_FORKS)
    }

    /// Every row of a table keyed by author ‖ seq (‖ more) holding envelopes.
    fn stored_entries<const N: usize>(
        &self,
        table: redb::TableDefinition<'_, [u8; N], &[u8]>,
    ) -> Result<Vec<StoredEntry>, StoreError> {
        let read = self.db.begin_read().map_err(|e| self.err(e))?;
        let t = read.open_table(table).map_err(|e| self.err(e))?;
        let mut out = Vec::new();
        for item in t.iter().map_err(|e| self.err(e))? {
            let (k, v) = item.map_err(|e| self.err(e))?;
            let (author, seq) = split_key(&k.value());
            out.push(StoredEntry {
                author,
                seq,
                bytes: v.value().to_vec(),
            });
        }
        Ok(out)
    }
}

/// A witness statement kept as evidence of a split view.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SplitRow {
    /// The author of the feed it concerns.
    pub author: [u8; 32],
    /// The seq it concerns.
    pub seq: u64,
    /// The witness's key.
    pub witness: [u8; 32],
    /// The witness envelope.
    pub envelope: Vec<u8>,
}

/// Most split-view statements kept per witness.
pub const MAX_SPLITS_PER_WITNESS: usize = 64;

impl super::Store {
    /// Keeps `w` as its witness's latest statement, unless a later one is
    /// held. Returns whether it was kept.
    ///
    /// # Errors
    /// [`StoreError::Database`].
    pub fn ledger_witness_put(&self, w: &ledger::gossip::SignedWitness) -> Result<bool, StoreError> {
        let mut txn = self.db.begin_write().map_err(|e| self.err(e))?;
        self.local_durability(&mut txn)?;
        let kept = {
            let mut t = txn.open_table(LEDGER_WITNESSES).map_err(|e| self.err(e))?;
            let newer = match t.get(w.key()).map_err(|e| self.err(e))? {
                Some(v) => {
                    ledger::gossip::open_witness(v.value()).map_or(true, |old| old.witness.time < w.witness.time)
                }
                None => true,
            };
            if newer {
                t.insert(w.key(), w.bytes.as_slice()).map_err(|e| self.err(e))?;
            }
            newer
        };
        txn.commit().map_err(|e| self.err(e))?;
        Ok(kept)
    }

    /// The latest witness envelope of every witness heard from.
    ///
    /// # Errors
    /// [`StoreError::Database`].
    pub fn ledger_witnesses(&self) -> Result<Vec<Vec<u8>>, StoreError> {
        let read = self.db.begin_read().map_err(|e| self.err(e))?;
        let t = read.open_table(LEDGER_WITNESSES).map_err(|e| self.err(e))?;
        let mut out = Vec::new();
        for item in t.iter().map_err(|e| self.err(e))? {
            out.push(item.map_err(|e| self.err(e))?.1.value().to_vec());
        }
        Ok(out)
    }

    /// Keeps witness `w` as evidence that it saw another entry `seq` of
    /// `author` than the one held here (once per witness, author and seq, and
    /// at most [`MAX_SPLITS_PER_WITNESS`] per witness, so that one member
    /// cannot fill the store with its own statements). Returns whether it
    /// was kept.
    ///
    /// # Errors
    /// [`StoreError::Database`].
    pub fn ledger_split_put(
        &self,
        author: &[u8; 32],
        seq: u64,
        w: &ledger::gossip::SignedWitness,
    ) -> Result<bool, StoreError> {
        let witness = w.key();
        let mut key = [0u8; 72];
        key[..32].copy_from_slice(&witness);
        key[32..].copy_from_slice(&entry_key(author, seq));
        let mut txn = self.db.begin_write().map_err(|e| self.err(e))?;
        self.local_durability(&mut txn)?;
        let new = {
            let mut t = txn.open_table(LEDGER_SPLITS).map_err(|e| self.err(e))?;
            let mut low = [0u8; 72];
            low[..32].copy_from_slice(&witness);
            let mut high = [0xffu8; 72];
            high[..32].copy_from_slice(&witness);
            let held = t
                .range(low..=high)
                .map_err(|e| self.err(e))?
                .take(MAX_SPLITS_PER_WITNESS)
                .count();
            let new = held < MAX_SPLITS_PER_WITNESS && t.get(key).map_err(|e| self.err(e))?.is_none();
            if new {
                t.insert(key, w.bytes.as_slice()).map_err(|e| self.err(e))?;
            }
            new
        };
        txn.commit().map_err(|e| self.err(e))?;
        Ok(new)
    }

    /// Every split-view statement kept.
    ///
    /// # Errors
    /// [`StoreError::Database`].
    pub fn ledger_splits(&self) -> Result<Vec<SplitRow>, StoreError> {
        let read = self.db.begin_read().map_err(|e| self.err(e))?;
        let t = read.open_table(LEDGER_SPLITS).map_err(|e| self.err(e))?;
        let mut out = Vec::new();
        for item in t.iter().map_err(|e| self.err(e))? {
            let (k, v) = item.map_err(|e| self.err(e))?;
            let k = k.value();
            let (author, seq) = split_key(&k[32..]);
            let mut witness = [0u8; 32];
            witness.copy_from_slice(&k[..32]);
            out.push(SplitRow {
                author,
                seq,
                witness,
                envelope: v.value().to_vec(),
            });
        }
        Ok(out)
    }

    /// Overwrites the stored bytes of `author`'s entry `seq` (and drops the
    /// entries after it), as someone with write access to the database file
    /// could. Nothing in the node calls this: it exists so that
    /// `medmesh-testnet scenario ledger` and the tests can drill what peers do
    /// with a tampered or forged feed (they refuse it, or keep it as evidence).
    ///
    /// # Errors
    /// [`StoreError::Database`].
    pub fn ledger_tamper(&self, author: &[u8; 32], seq: u64, bytes: &[u8]) -> Result<(), StoreError> {
        let mut txn = self.db.begin_write().map_err(|e| self.err(e))?;
        self.durability(&mut txn)?;
        {
            let mut entries = txn.open_table(LEDGER_ENTRIES).map_err(|e| self.err(e))?;
            let mut ids = txn.open_table(LEDGER_IDS).map_err(|e| self.err(e))?;
            let later: Vec<([u8; 40], [u8; 32])> = entries
                .range(entry_key(author, seq)..=entry_key(author, u64::MAX))
                .map_err(|e| self.err(e))?
                .map(|item| item.map(|(k, v)| (k.value(), *blake3::hash(v.value()).as_bytes())))
                .collect::<Result<_, _>>()
                .map_err(|e| self.err(e))?;
            for (k, id) in later {
                entries.remove(k).map_err(|e| self.err(e))?;
                ids.remove(id).map_err(|e| self.err(e))?;
            }
            entries.insert(entry_key(author, seq), bytes).map_err(|e| self.err(e))?;
            ids.insert(*blake3::hash(bytes).as_bytes(), entry_key(author, seq))
                .map_err(|e| self.err(e))?;
        }
        txn.commit().map_err(|e| self.err(e))?;
        Ok(())
    }

    /// The head (seq, id) of `author`'s feed held here.
    ///
    /// # Errors
    /// [`StoreError::Database`].
    pub fn ledger_heads_of(&self, author: &[u8; 32]) -> Result<Option<(u64, [u8; 32])>, StoreError> {
        let read = self.db.begin_read().map_err(|e| self.err(e))?;
        let t = read.open_table(LEDGER_ENTRIES).map_err(|e| self.err(e))?;
        feed_head(&t, author).map_err(|e| self.err(e))
    }

    /// The id of `author`'s entry `seq`, if held.
    ///
    /// # Errors
    /// [`StoreError::Database`].
    pub fn ledger_id_at(&self, author: &[u8; 32], seq: u64) -> Result<Option<EntryId>, StoreError> {
        let read = self.db.begin_read().map_err(|e| self.err(e))?;
        let t = read.open_table(LEDGER_ENTRIES).map_err(|e| self.err(e))?;
        Ok(t.get(entry_key(author, seq))
            .map_err(|e| self.err(e))?
            .map(|v| EntryId::of(v.value())))
    }
}

/// A notification: an entry of another node that names a study of this one.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct NotificationRow {
    /// Row version (1).
    pub v: u32,
    /// The entry's author (peer id).
    pub author: String,
    /// Its seq.
    pub seq: u64,
    /// Its kind.
    pub kind: String,
    /// When it was written (Unix seconds).
    pub time: i64,
    /// The study commitment it names (hex).
    pub study: String,
    /// When this node took it (Unix seconds).
    pub noted: i64,
    /// Shown to a person already.
    pub read: bool,
}

impl super::Store {
    /// Records a notification for entry `id` (once), and in the same
    /// transaction gives it the next sequence of the delivery outbox
    /// (`notify-outbox-v1`); delivery workers are woken after the commit.
    ///
    /// # Errors
    /// [`StoreError::Database`].
    pub fn notification_put(&self, id: &[u8; 32], row: &NotificationRow) -> Result<(), StoreError> {
        let bytes = super::cbor::encode("notification", row).map_err(StoreError::Codec)?;
        let mut txn = self.db.begin_write().map_err(|e| self.err(e))?;
        self.durability(&mut txn)?;
        let added = {
            let mut t = txn.open_table(super::NOTIFICATIONS).map_err(|e| self.err(e))?;
            if t.get(id).map_err(|e| self.err(e))?.is_none() {
                t.insert(id, bytes.as_slice()).map_err(|e| self.err(e))?;
                let mut outbox = txn.open_table(super::notify::OUTBOX).map_err(|e| self.err(e))?;
                let seq = super::notify::outbox_next(&outbox).map_err(|e| self.err(e))?;
                outbox.insert(seq, id).map_err(|e| self.err(e))?;
                Some(seq)
            } else {
                None
            }
        };
        txn.commit().map_err(|e| self.err(e))?;
        if let Some(seq) = added {
            self.outbox_added(seq);
        }
        Ok(())
    }

    /// Every notification (entry id, row), and marks them read, in one
    /// write transaction; with `unread_only`, only those not read before.
    ///
    /// # Errors
    /// [`StoreError::Database`], a row that does not decode.
    pub fn notifications_take(&self, unread_only: bool) -> Result<Vec<([u8; 32], NotificationRow)>, StoreError> {
        let mut txn = self.db.begin_write().map_err(|e| self.err(e))?;
        self.local_durability(&mut txn)?;
        let mut out = Vec::new();
        {
            let mut t = txn.open_table(super::NOTIFICATIONS).map_err(|e| self.err(e))?;
            let mut rows = Vec::new();
            for item in t.iter().map_err(|e| self.err(e))? {
                let (k, v) = item.map_err(|e| self.err(e))?;
                let row: NotificationRow =
                    super::cbor::decode("notification", v.value(), 64 * 1024).map_err(StoreError::Codec)?;
                rows.push((k.value(), row));
            }
            for (id, mut row) in rows {
                if unread_only && row.read {
                    continue;
                }
                let shown = row.clone();
                if !row.read {
                    row.read = true;
                    let bytes = super::cbor::encode("notification", &row).map_err(StoreError::Codec)?;
                    t.insert(id, bytes.as_slice()).map_err(|e| self.err(e))?;
                }
                out.push((id, shown));
            }
        }
        txn.commit().map_err(|e| self.err(e))?;
        out.sort_by_key(|(_, r)| (r.time, r.seq));
        Ok(out)
    }
}
