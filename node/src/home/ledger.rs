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
        Ok(VerifyReport {
            ok: out.iter().all(|f| f.problems.is_empty()),
            feeds: out,
        })
    }
}
