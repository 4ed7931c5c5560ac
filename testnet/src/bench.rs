//! `medmesh-testnet bench-ledger`: how fast ledger entries are made, opened
//! and verified on one thread, and how fast a node appends and verifies its
//! feed, through the node library (release builds for figures).

use std::path::Path;
use std::time::Instant;

use medmesh_node::home::{HomeError, Node};
use medmesh_node::identity::Identity;
use medmesh_node::keystore::Passphrase;
use medmesh_node::ledger::{self, Event, LedgerError, SignedEntry};
use serde::Serialize;

use crate::cluster::{ClusterError, throwaway_store};
use crate::process;

/// Errors of the ledger benchmark.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BenchError {
    /// Making or opening an entry failed (a bug: they are made here).
    #[error(transparent)]
    Ledger(#[from] LedgerError),
    /// The home could not be made or used.
    #[error(transparent)]
    Home(#[from] HomeError),
    /// No identity could be generated.
    #[error(transparent)]
    Identity(#[from] medmesh_node::identity::IdentityError),
    /// Its config could not be changed.
    #[error(transparent)]
    Cluster(#[from] ClusterError),
    /// A check failed.
    #[error("{0}")]
    Check(String),
}

/// The figures of a ledger benchmark.
#[derive(Debug, Clone, Serialize)]
pub struct LedgerBench {
    /// Entries.
    pub entries: u64,
    /// Average envelope size, bytes.
    pub entry_bytes: u64,
    /// Entries made and signed per second ([`ledger::make_entry`]).
    pub make_per_s: f64,
    /// Entries opened (decoded, signature and encoding checked) and linked
    /// to the one before per second ([`ledger::open_entry`], [`ledger::check_link`]).
    pub verify_per_s: f64,
    /// With a home: entries appended to the node's own feed per second
    /// (`Node::log`, one write transaction each, fsync off).
    pub append_per_s: Option<f64>,
    /// With a home: seconds of `Node::log_verify` on it (every feed, in process).
    pub log_verify_s: Option<f64>,
    /// With a home: entries verified per second by `Node::log_verify`.
    pub log_verify_per_s: Option<f64>,
}

fn per_s(n: u64, secs: f64) -> f64 {
    // Display only.
    n as f64 / secs.max(1e-9)
}

/// Event `i` of the benchmark feed: a consent id, as `consent add` writes.
fn event(i: u64) -> Event {
    Event::ConsentAdded {
        consent: hex::encode(blake3::hash(&i.to_le_bytes()).as_bytes()),
    }
}

/// Makes `n` chained entries in memory, then opens and links each, on one
/// thread. With `home` (which must not exist), also creates a node there
/// (fsync off), appends `n` entries to its feed and times `log_verify` on it;
/// the home is left for `medmesh log verify` to be timed on.
///
/// # Errors
/// [`BenchError`].
pub fn ledger(n: u64, home: Option<&Path>) -> Result<LedgerBench, BenchError> {
    let identity = Identity::generate()?;
    let mut entries: Vec<SignedEntry> = Vec::with_capacity(usize::try_from(n).unwrap_or(0));
    let t = Instant::now();
    let mut head = None;
    for i in 0..n {
        let e = ledger::make_entry(&identity, head, 1_700_000_000, event(i))?;
        head = Some((e.entry.seq, e.id));
        entries.push(e);
    }
    let make_s = t.elapsed().as_secs_f64();
    let bytes: Vec<Vec<u8>> = entries.iter().map(|e| e.bytes.clone()).collect();
    drop(entries);
    let t = Instant::now();
    let mut prev: Option<SignedEntry> = None;
    for b in &bytes {
        let e = ledger::open_entry(b)?;
        if let Some(p) = &prev {
            ledger::check_link(p, &e)?;
        }
        prev = Some(e);
    }
    let verify_s = t.elapsed().as_secs_f64();
    let total: usize = bytes.iter().map(Vec::len).sum();
    let entry_bytes = u64::try_from(total / bytes.len().max(1)).unwrap_or(0);
    let mut out = LedgerBench {
        entries: n,
        entry_bytes,
        make_per_s: per_s(n, make_s),
        verify_per_s: per_s(n, verify_s),
        append_per_s: None,
        log_verify_s: None,
        log_verify_per_s: None,
    };
    if let Some(home) = home {
        let pass = Passphrase::new(process::passphrase());
        drop(Node::init(home, "Bench Hospital", "DE", &pass)?);
        throwaway_store(home)?;
        let node = Node::open(home, &pass)?;
        let t = Instant::now();
        for i in 0..n {
            node.audit().log(event(i)).map_err(HomeError::from)?;
        }
        out.append_per_s = Some(per_s(n, t.elapsed().as_secs_f64()));
        let t = Instant::now();
        let report = node.audit().log_verify().map_err(HomeError::from)?;
        let secs = t.elapsed().as_secs_f64();
        let held: u64 = report.feeds.iter().map(|f| f.entries).sum();
        if !report.ok || held < n {
            return Err(BenchError::Check(format!(
                "log verify: ok {}, {held} entries held, {n} written",
                report.ok
            )));
        }
        out.log_verify_s = Some(secs);
        out.log_verify_per_s = Some(per_s(held, secs));
    }
    Ok(out)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // in tests a panic is the failure report
mod tests {
    use super::*;

    #[test]
    fn small_ledger_bench() {
        let dir = std::env::temp_dir().join(format!("medmesh-bench-test-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let b = ledger(40, Some(&dir)).unwrap();
        assert_eq!(b.entries, 40);
        assert!(b.entry_bytes > 64 && b.verify_per_s > 0.0 && b.make_per_s > 0.0);
        assert!(b.append_per_s.is_some() && b.log_verify_per_s.is_some());
        let _ = std::fs::remove_dir_all(&dir);
    }
}
