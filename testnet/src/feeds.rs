//! The shared ledger across a local network, for scenarios and tests: feed
//! heads of running nodes read through their admin API (`GET /v1/log/heads`,
//! many nodes polled concurrently), and entries tampered with or forged in a
//! stopped node's store (what `medmesh-testnet scenario ledger` and the e2e
//! tests drill).
//!
//! ```no_run
//! use medmesh_testnet::feeds;
//! # fn demo(author_home: &std::path::Path, server_home: &std::path::Path, seq: u64) -> Result<(), feeds::FeedError> {
//! // Both nodes stopped: serve node-1's entry `seq` with its signature broken.
//! let author = feeds::open_home(author_home)?;
//! let genuine = feeds::entry_at(&author, seq)?;
//! let key = author.identity().ed25519_public();
//! drop(author);
//! feeds::plant(server_home, &key, seq, &feeds::flipped(&genuine.bytes))?;
//! # Ok(()) }
//! ```

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use medmesh_node::api::HeadView;
use medmesh_node::api::client::{Client, ClientError};
use medmesh_node::api::routes::LogHeads;
use medmesh_node::home::{HomeError, HomePaths, Node};
use medmesh_node::keystore::Passphrase;
use medmesh_node::ledger::{self, Event, LedgerError, SignedEntry};

use crate::process;

/// Each author's head seq (author peer id → seq), as one node holds them.
pub type Heads = BTreeMap<String, u64>;

/// Every polled node's heads, in the order of the homes (`None`: its API
/// did not answer).
pub type Poll = Vec<Option<Heads>>;

/// Errors of reading or altering feeds.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum FeedError {
    /// A home could not be opened (is its node still running?).
    #[error("opening {home}: {source}")]
    Home {
        /// The home.
        home: String,
        /// The cause.
        source: HomeError,
    },
    /// Making or opening an entry failed.
    #[error(transparent)]
    Ledger(#[from] LedgerError),
    /// The store refused a write.
    #[error(transparent)]
    Store(#[from] medmesh_node::store::StoreError),
    /// A node's admin API failed.
    #[error(transparent)]
    Client(#[from] ClientError),
    /// Something expected is not there.
    #[error("{0}")]
    Missing(String),
    /// The async runtime could not start.
    #[error("async runtime: {0}")]
    Runtime(std::io::Error),
}

/// `author`'s seq in every poll (`None` where the node did not answer or does
/// not hold that feed).
#[must_use]
pub fn seqs_of(poll: &[Option<Heads>], author: &str) -> Vec<Option<u64>> {
    poll.iter()
        .map(|h| h.as_ref().and_then(|h| h.get(author).copied()))
        .collect()
}

/// The heads of `views` by author peer id.
#[must_use]
pub fn heads_of(views: &[HeadView]) -> Heads {
    views.iter().map(|v| (v.author.clone(), v.seq)).collect()
}

/// Whether `held` has, for every author in `want`, exactly that seq.
#[must_use]
pub fn holds(held: &Heads, want: &Heads) -> bool {
    want.iter().all(|(a, s)| held.get(a) == Some(s))
}

/// Whether every node answered and holds `want` ([`holds`]).
#[must_use]
pub fn converged(poll: &[Option<Heads>], want: &Heads) -> bool {
    poll.iter().all(|h| h.as_ref().is_some_and(|h| holds(h, want)))
}

/// The admin API client of the node running on `home` (not checked).
#[must_use]
pub fn client(home: &Path) -> Client {
    Client::new(HomePaths::new(home).socket())
}

/// `GET /v1/log/heads` of one running node.
///
/// # Errors
/// [`ClientError`].
pub async fn api_heads(client: &Client) -> Result<Heads, ClientError> {
    Ok(heads_of(&client.call::<LogHeads>(()).await?))
}

/// Polls the feed heads of running nodes through their admin API, all
/// concurrently; a node that does not answer counts as `None`.
#[derive(Debug)]
pub struct HeadsPoller {
    rt: tokio::runtime::Runtime,
    clients: Vec<Client>,
}

impl HeadsPoller {
    /// A poller of the nodes running on `homes`.
    ///
    /// # Errors
    /// [`FeedError::Runtime`].
    pub fn new(homes: &[PathBuf]) -> Result<Self, FeedError> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(FeedError::Runtime)?;
        Ok(Self {
            rt,
            clients: homes.iter().map(|h| client(h)).collect(),
        })
    }

    /// Every node's heads now.
    #[must_use]
    pub fn poll(&self) -> Poll {
        self.rt.block_on(poll_all(&self.clients))
    }

    /// Polls every `every` until `done` holds of a poll, at most `timeout`.
    /// Returns whether it held, how long it took, and the last poll.
    pub fn wait(&self, timeout: Duration, every: Duration, mut done: impl FnMut(&[Option<Heads>]) -> bool) -> Waited {
        let start = Instant::now();
        loop {
            let poll = self.poll();
            if done(&poll) {
                return Waited {
                    ok: true,
                    took: start.elapsed(),
                    poll,
                };
            }
            if start.elapsed() > timeout {
                return Waited {
                    ok: false,
                    took: start.elapsed(),
                    poll,
                };
            }
            std::thread::sleep(every);
        }
    }
}

/// What [`HeadsPoller::wait`] saw.
#[derive(Debug, Clone)]
pub struct Waited {
    /// Whether the condition held before the timeout.
    pub ok: bool,
    /// How long the wait took.
    pub took: Duration,
    /// The last poll.
    pub poll: Poll,
}

/// The heads of every node of `clients`, asked concurrently.
pub async fn poll_all(clients: &[Client]) -> Poll {
    let mut set = tokio::task::JoinSet::new();
    for (i, c) in clients.iter().enumerate() {
        let c = c.clone();
        set.spawn(async move { (i, api_heads(&c).await.ok()) });
    }
    let mut out = vec![None; clients.len()];
    while let Some(joined) = set.join_next().await {
        if let Ok((i, heads)) = joined
            && let Some(slot) = out.get_mut(i)
        {
            *slot = heads;
        }
    }
    out
}

/// Opens a stopped node's home in this process, with the test passphrase
/// ([`process::passphrase`]).
///
/// # Errors
/// [`FeedError::Home`], e.g. while its node still runs (the store is locked).
pub fn open_home(home: &Path) -> Result<Node, FeedError> {
    Node::open(home, &Passphrase::new(process::passphrase())).map_err(|source| FeedError::Home {
        home: home.display().to_string(),
        source,
    })
}

/// Entry `seq` of `node`'s own feed, opened.
///
/// # Errors
/// [`FeedError::Missing`] when it does not hold it; [`FeedError::Ledger`]
/// when it does not open.
pub fn entry_at(node: &Node, seq: u64) -> Result<SignedEntry, FeedError> {
    let key = node.identity().ed25519_public();
    let bytes = node
        .audit()
        .ledger_range(&key, seq, 1)
        .map_err(|e| FeedError::Home {
            home: "the author's home".into(),
            source: e.into(),
        })?
        .into_iter()
        .next()
        .ok_or_else(|| FeedError::Missing(format!("no entry {seq} in the node's own feed")))?;
    Ok(ledger::open_entry(&bytes)?)
}

/// `bytes` with the last byte flipped: in a signed envelope, a broken
/// signature.
#[must_use]
pub fn flipped(bytes: &[u8]) -> Vec<u8> {
    let mut out = bytes.to_vec();
    if let Some(last) = out.last_mut() {
        *last ^= 0x01;
    }
    out
}

/// A fork of `genuine`, `author`'s entry: another entry of the same seq
/// and previous id, validly signed by the author, recording `event`
/// instead. Two of them are an equivocation.
///
/// # Errors
/// [`FeedError::Ledger`].
pub fn forge_fork(author: &Node, genuine: &SignedEntry, event: Event) -> Result<SignedEntry, FeedError> {
    let seq = genuine.entry.seq;
    let head = if seq <= 1 {
        None
    } else {
        let prev: [u8; 32] = genuine
            .entry
            .prev
            .as_slice()
            .try_into()
            .map_err(|_| FeedError::Missing(format!("entry {seq} names no 32-byte previous entry")))?;
        Some((seq - 1, prev))
    };
    Ok(ledger::make_entry(author.identity(), head, genuine.entry.time, event)?)
}

/// Puts `bytes` in place of `author`'s entry `seq` in the store of the
/// stopped node on `home` (dropping the entries after it), as someone with
/// write access to its database could ([`medmesh_node::store::Store::ledger_tamper`]).
///
/// # Errors
/// [`FeedError`].
pub fn plant(home: &Path, author: &[u8; 32], seq: u64, bytes: &[u8]) -> Result<(), FeedError> {
    let node = open_home(home)?;
    node.store().ledger_tamper(author, seq, bytes)?;
    Ok(())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // in tests a panic is the failure report
mod tests {
    use super::*;

    fn h(pairs: &[(&str, u64)]) -> Heads {
        pairs.iter().map(|(a, s)| ((*a).to_string(), *s)).collect()
    }

    #[test]
    fn convergence_needs_every_node_at_every_wanted_head() {
        let want = h(&[("a", 3), ("b", 1)]);
        assert!(holds(&h(&[("a", 3), ("b", 1), ("c", 9)]), &want));
        assert!(!holds(&h(&[("a", 4), ("b", 1)]), &want));
        assert!(!holds(&h(&[("a", 3)]), &want));
        let poll = vec![Some(h(&[("a", 3), ("b", 1)])), Some(h(&[("a", 3), ("b", 1)]))];
        assert!(converged(&poll, &want));
        assert!(!converged(&[poll[0].clone(), None], &want));
        assert_eq!(seqs_of(&[poll[0].clone(), None], "a"), vec![Some(3), None]);
    }

    #[test]
    fn heads_are_keyed_by_peer_id() {
        let views = vec![HeadView {
            author: "12D3Koo".into(),
            key: "00".into(),
            seq: 7,
            id: "ff".into(),
        }];
        assert_eq!(heads_of(&views), h(&[("12D3Koo", 7)]));
    }

    #[test]
    fn tampered_and_forged_entries() {
        let dir = std::env::temp_dir().join(format!("medmesh-feeds-test-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let pass = Passphrase::new(process::passphrase());
        let node = Node::init(&dir, "Feeds Test Hospital", "DE", &pass).unwrap();
        node.audit().log(Event::ConsentAdded { consent: "c1".into() }).unwrap();
        node.audit().log(Event::ConsentAdded { consent: "c2".into() }).unwrap();
        let seq = node
            .audit()
            .ledger_heads()
            .unwrap()
            .into_iter()
            .map(|h| h.seq)
            .max()
            .unwrap();
        let genuine = entry_at(&node, seq).unwrap();
        assert!(ledger::open_entry(&flipped(&genuine.bytes)).is_err());
        let forged = forge_fork(&node, &genuine, Event::PeerBlocked { peer: "forged".into() }).unwrap();
        assert_eq!((forged.entry.seq, &forged.entry.prev), (seq, &genuine.entry.prev));
        assert_ne!(forged.id, genuine.id);
        assert!(ledger::open_entry(&forged.bytes).is_ok());
        let before = entry_at(&node, seq - 1).unwrap();
        assert!(ledger::check_link(&before, &forged).is_ok());
        let key = node.identity().ed25519_public();
        drop(node);
        plant(&dir, &key, seq, &forged.bytes).unwrap();
        let node = open_home(&dir).unwrap();
        assert_eq!(entry_at(&node, seq).unwrap().id, forged.id);
        drop(node);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
