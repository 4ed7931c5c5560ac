//! The ledger on a node: writing this node's entries, and `medmesh log
//! tail|show|verify`.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::{HomeError, Node, rfc3339};
use crate::ledger::{self, Event, SignedEntry};

/// Who does what at a site, as entries name people: by role and site only.
pub const ADMIN_ROLE: &str = "site-admin";

/// An entry as `log tail` and `log show` print it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct EntryView {
    /// Entry id (hex BLAKE3 of its envelope).
    pub id: String,
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
    /// What is wrong (bad signature, broken chain, gap); empty when it verifies.
    pub problems: Vec<String>,
}

/// `log verify`: every feed this node holds.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct VerifyReport {
    /// True when every feed verifies.
    pub ok: bool,
    /// Per author.
    pub feeds: Vec<FeedReport>,
}

fn view(e: &SignedEntry) -> EntryView {
    EntryView {
        id: hex::encode(e.id),
        author: e.author_peer(),
        seq: e.entry.seq,
        prev: hex::encode(&e.entry.prev),
        time: rfc3339(e.entry.time),
        kind: e.entry.event.kind().to_string(),
        event: e.entry.event.clone(),
        study_uid: None,
    }
}

impl Node {
    /// Appends `event` to this node's feed.
    ///
    /// # Errors
    /// Store errors: the caller's operation fails rather than go unrecorded.
    pub fn log(&self, event: Event) -> Result<(), HomeError> {
        let kind = event.kind();
        let e = self
            .store()
            .ledger_append(self.identity(), super::trust::now(), event)?;
        tracing::debug!(seq = e.entry.seq, kind, "ledger entry written");
        Ok(())
    }

    /// This node's commitment of a study (made on first use).
    ///
    /// # Errors
    /// Store errors.
    pub fn study_commitment(&self, study_uid: &str) -> Result<[u8; 32], HomeError> {
        let study = self.store().study_ref(study_uid);
        Ok(self.store().study_commitment(&study, study_uid)?)
    }

    /// The last `limit` entries this node holds, oldest first (by time, then author and seq).
    ///
    /// # Errors
    /// Store errors; an entry that does not open is skipped here (see `log verify`).
    pub fn log_tail(&self, limit: usize) -> Result<Vec<EntryView>, HomeError> {
        let mut all: Vec<SignedEntry> = self
            .store()
            .ledger_entries()?
            .into_iter()
            .filter_map(|(_, _, bytes)| ledger::open_entry(&bytes).ok())
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
    /// [`HomeError::Deid`]-like lookup errors as [`HomeError::Ledger`].
    pub fn log_show(&self, id: &str) -> Result<EntryView, HomeError> {
        let id = id.trim().to_lowercase();
        let bytes = if id.len() == 64 {
            let key: [u8; 32] = hex::decode(&id)
                .ok()
                .and_then(|b| b.try_into().ok())
                .ok_or_else(|| HomeError::Ledger(format!("{id}: not an entry id (64 hex digits)")))?;
            self.store().ledger_entry(&key)?
        } else if id.len() >= 8 {
            let matches: Vec<Vec<u8>> = self
                .store()
                .ledger_entries()?
                .into_iter()
                .map(|(_, _, b)| b)
                .filter(|b| blake3::hash(b).to_hex().starts_with(&id))
                .collect();
            if matches.len() > 1 {
                return Err(HomeError::Ledger(format!("{id}: more than one entry starts so")));
            }
            matches.into_iter().next()
        } else {
            return Err(HomeError::Ledger(format!(
                "{id}: give at least 8 hex digits of the entry id"
            )));
        };
        let bytes = bytes.ok_or_else(|| HomeError::Ledger(format!("no entry {id} on this node")))?;
        let e = ledger::open_entry(&bytes).map_err(|e| HomeError::Ledger(e.to_string()))?;
        let mut v = view(&e);
        if let Some(c) = e
            .entry
            .event
            .study()
            .and_then(|s| hex::decode(s).ok())
            .and_then(|b| <[u8; 32]>::try_from(b).ok())
        {
            v.study_uid = self.store().resolve_commitment(&c)?;
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
    pub fn log_verify(&self) -> Result<VerifyReport, HomeError> {
        let mut feeds: BTreeMap<[u8; 32], Vec<(u64, Vec<u8>)>> = BTreeMap::new();
        for (author, seq, bytes) in self.store().ledger_entries()? {
            feeds.entry(author).or_default().push((seq, bytes));
        }
        let mut out = Vec::new();
        for (author, entries) in feeds {
            let author_peer = crate::identity::peer_id_of(&author).unwrap_or_else(|_| hex::encode(author));
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
            });
        }
        // Equivocations: a second entry of a seq, kept as evidence.
        for (author, seq, bytes) in self.store().ledger_forks()? {
            let id = hex::encode(blake3::hash(&bytes).as_bytes());
            let peer = crate::identity::peer_id_of(&author).unwrap_or_else(|_| hex::encode(author));
            let problem = format!(
                "equivocation: a second entry {seq} ({}) signed by the author",
                &id[..16]
            );
            match out.iter_mut().find(|f| f.author == peer) {
                Some(f) => f.problems.push(problem),
                None => out.push(FeedReport {
                    author: peer,
                    entries: 0,
                    head_seq: 0,
                    head_id: String::new(),
                    problems: vec![problem],
                }),
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
}

/// What [`Node::ledger_accept`] did with a batch of entries from a peer.
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
}

impl Node {
    /// Whether entries by `author` (Ed25519 key) are kept here: this node's
    /// own (never taken from others), or a peer this node trusts now.
    fn author_trusted(&self, author: &[u8; 32]) -> Result<bool, HomeError> {
        let Ok(peer) = crate::identity::peer_id_of(author) else {
            return Ok(false);
        };
        let state = self.trust_state()?;
        let Some(h) = crate::net::peer_hello(self, &state, &peer)? else {
            return Ok(false);
        };
        Ok(crate::net::hello::evaluate(&state, &peer, &h, super::trust::now()).is_ok())
    }

    /// The heads of the feeds held here, for `/medmesh/ledger/1`.
    ///
    /// # Errors
    /// Store errors.
    pub fn ledger_heads(&self) -> Result<Vec<ledger::sync::Head>, HomeError> {
        Ok(self
            .store()
            .ledger_heads()?
            .into_iter()
            .map(|(a, seq, id)| ledger::sync::Head {
                author: a.to_vec(),
                seq,
                id: id.to_vec(),
            })
            .collect())
    }

    /// Entries of a feed held here, for `/medmesh/ledger/1`.
    ///
    /// # Errors
    /// Store errors.
    pub fn ledger_range(&self, author: &[u8], from: u64, limit: u64) -> Result<Vec<Vec<u8>>, HomeError> {
        let Ok(author) = <[u8; 32]>::try_from(author) else {
            return Ok(Vec::new());
        };
        Ok(self
            .store()
            .ledger_range(&author, from, limit.min(ledger::sync::BATCH))?)
    }

    /// Which ranges to ask a peer for, given its heads: every trusted
    /// author's entries after the head held here (a batch each).
    ///
    /// # Errors
    /// Store errors.
    pub fn ledger_wants(&self, heads: &[ledger::sync::Head]) -> Result<Vec<(Vec<u8>, u64, u64)>, HomeError> {
        let own = self.identity().ed25519_public();
        let mine: BTreeMap<[u8; 32], u64> = self
            .store()
            .ledger_heads()?
            .into_iter()
            .map(|(a, s, _)| (a, s))
            .collect();
        let mut out = Vec::new();
        for h in heads {
            let Ok(author) = <[u8; 32]>::try_from(h.author.as_slice()) else {
                continue;
            };
            let held = mine.get(&author).copied().unwrap_or(0);
            if author == own || h.seq <= held || !self.author_trusted(&author)? {
                continue;
            }
            out.push((h.author.clone(), held + 1, (h.seq - held).min(ledger::sync::BATCH)));
        }
        Ok(out)
    }

    /// Takes entries sent by `from`: each must open, be by a trusted author
    /// other than this node, and extend the feed held here; a different
    /// entry of a seq held already is kept as evidence of equivocation and
    /// raised as an alert. The sender of a refused entry is logged.
    ///
    /// # Errors
    /// Store errors.
    pub fn ledger_accept(&self, from: &str, entries: &[Vec<u8>]) -> Result<AcceptReport, HomeError> {
        let own = self.identity().ed25519_public();
        let mut r = AcceptReport::default();
        for bytes in entries {
            let e = match ledger::open_entry(bytes) {
                Ok(e) => e,
                Err(err) => {
                    r.rejected.push(err.to_string());
                    continue;
                }
            };
            let Ok(author) = <[u8; 32]>::try_from(e.entry.author.as_slice()) else {
                r.rejected.push("author key is not 32 bytes".into());
                continue;
            };
            if author == own {
                continue;
            }
            if !self.author_trusted(&author)? {
                r.rejected
                    .push(format!("entry by {}: not a trusted author", e.author_peer()));
                continue;
            }
            match self.store().ledger_insert_foreign(&e)? {
                crate::store::Inserted::Added => {
                    r.added += 1;
                    self.notify_if_ours(&e)?;
                }
                crate::store::Inserted::Duplicate => r.duplicates += 1,
                crate::store::Inserted::Fork => {
                    r.forks += 1;
                    tracing::error!(author = %e.author_peer(), seq = e.entry.seq, from, "equivocation: two different entries of one author and seq; both kept as evidence");
                }
                crate::store::Inserted::Gap => {
                    r.rejected.push(format!(
                        "entry {} of {}: not the next one held here",
                        e.entry.seq,
                        e.author_peer()
                    ));
                }
                crate::store::Inserted::Broken => {
                    r.rejected.push(format!(
                        "entry {} of {}: does not name the entry before it held here",
                        e.entry.seq,
                        e.author_peer()
                    ));
                }
            }
        }
        if !r.rejected.is_empty() {
            tracing::warn!(peer = %from, refused = r.rejected.len(), first = %r.rejected[0], "ledger entries refused from this peer");
        }
        Ok(r)
    }
}

impl Node {
    /// Records a notification when an entry of another node names a study
    /// whose commitment this node made (its study was requested, granted,
    /// sent, received or opened elsewhere).
    fn notify_if_ours(&self, e: &SignedEntry) -> Result<(), HomeError> {
        let Some(study) = e.entry.event.study() else {
            return Ok(());
        };
        let Some(c) = hex::decode(study).ok().and_then(|b| <[u8; 32]>::try_from(b).ok()) else {
            return Ok(());
        };
        if self.store().resolve_commitment(&c)?.is_none() {
            return Ok(());
        }
        let row = crate::store::NotificationRow {
            v: 1,
            author: e.author_peer(),
            seq: e.entry.seq,
            kind: e.entry.event.kind().to_string(),
            time: e.entry.time,
            study: study.to_string(),
            noted: super::trust::now(),
            read: false,
        };
        self.store().notification_put(&e.id, &row)?;
        tracing::info!(author = %row.author, kind = %row.kind, "notification: an entry of another site concerns a study of this one");
        Ok(())
    }

    /// The notifications of this site, oldest first (with `unread_only`,
    /// those not shown before); shown ones are marked read.
    ///
    /// # Errors
    /// Store errors.
    pub fn notifications(&self, unread_only: bool) -> Result<Vec<NotificationView>, HomeError> {
        let mut out = Vec::new();
        for (id, r) in self.store().notifications_take(unread_only)? {
            let study_uid = hex::decode(&r.study)
                .ok()
                .and_then(|b| <[u8; 32]>::try_from(b).ok())
                .map(|c| self.store().resolve_commitment(&c))
                .transpose()?
                .flatten()
                .unwrap_or_else(|| "(erased)".into());
            out.push(NotificationView {
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
