//! The node as the [`crate::metrics`] listener's [`Source`]: the counters of
//! its transfer service, the state read from its store and its network at
//! each scrape, and its readiness. Store reads run on a blocking thread.

use std::sync::Arc;

use futures::future::BoxFuture;

use crate::home::Node;
use crate::metrics::{Counters, LedgerSample, NotReady, PeersSample, Sample, Source};
use crate::net::NetHandle;
use crate::store::ForwardState;
use crate::transfer::{Direction, PendingCode, State};

/// Every transfer state, in the order of the lifecycle.
const STATES: [State; 8] = [
    State::Pending,
    State::Denied,
    State::Granted,
    State::Streaming,
    State::AwaitingReceipt,
    State::Landed,
    State::Complete,
    State::Failed,
];

/// Every state of the forwarding queue.
const FORWARD_STATES: [ForwardState; 6] = [
    ForwardState::Queued,
    ForwardState::Sending,
    ForwardState::Retrying,
    ForwardState::Sent,
    ForwardState::Cancelled,
    ForwardState::GivenUp,
];

fn direction(d: Direction) -> &'static str {
    match d {
        Direction::Outgoing => "outgoing",
        Direction::Incoming => "incoming",
    }
}

/// The running node and its network.
pub(super) struct NodeSource {
    pub(super) node: Arc<Node>,
    pub(super) net: NetHandle,
}

impl Source for NodeSource {
    fn counters(&self) -> &Counters {
        self.node.live().counters()
    }

    fn sample(&self) -> BoxFuture<'_, Sample> {
        Box::pin(async move {
            let peers = match self.net.status().await {
                Ok(s) => Some(PeersSample {
                    trusted: s.trusted_connected,
                    connections: s.connections,
                }),
                Err(e) => {
                    tracing::warn!(cause = %e, "metrics: the network does not answer");
                    None
                }
            };
            let node = Arc::clone(&self.node);
            let mut sample = tokio::task::spawn_blocking(move || stored(&node))
                .await
                .unwrap_or_else(|e| {
                    tracing::warn!(cause = %e, "metrics: reading the store failed");
                    Sample::default()
                });
            sample.peers = peers;
            sample
        })
    }

    fn ready(&self) -> BoxFuture<'_, Result<(), NotReady>> {
        Box::pin(async move {
            let status = self.net.status().await.map_err(|e| NotReady::Network(Box::new(e)))?;
            if status.listen.is_empty() {
                return Err(NotReady::NotListening);
            }
            let node = Arc::clone(&self.node);
            tokio::task::spawn_blocking(move || {
                node.store().outbox_head().map_err(|e| NotReady::Store(Box::new(e)))?;
                let own = node.identity().ed25519_public();
                node.store()
                    .ledger_heads_of(&own)
                    .map_err(|e| NotReady::Ledger(Box::new(e)))?;
                Ok(())
            })
            .await
            .map_err(|e| NotReady::Store(Box::new(e)))?
        })
    }
}

/// What the store says now; a part that cannot be read is left out (and logged).
fn stored(node: &Node) -> Sample {
    fn part<T, E: std::fmt::Display>(what: &str, r: Result<T, E>) -> Option<T> {
        r.map_err(|e| tracing::warn!(cause = %e, "metrics: cannot read {what}"))
            .ok()
    }
    let mut sample = Sample::default();
    if let Some(records) = part("the transfers", node.transfers().transfer_records()) {
        let mut series = Vec::with_capacity(2 * STATES.len());
        for d in [Direction::Outgoing, Direction::Incoming] {
            for s in STATES {
                let n = records.iter().filter(|r| r.direction == d && r.state == s).count();
                series.push((direction(d), s.as_str(), n as u64));
            }
        }
        sample.transfers = Some(series);
        let approvals = records.iter().filter(|r| {
            r.direction == Direction::Outgoing
                && r.state == State::Pending
                && !r
                    .reasons
                    .iter()
                    .any(|x| x.code == PendingCode::FetchingFromPacs.as_str())
        });
        sample.approvals_pending = Some(approvals.count() as u64);
    }
    if let Some(heads) = part("the ledger", node.store().ledger_heads()) {
        let own = node.identity().ed25519_public();
        let mut l = LedgerSample::default();
        for h in &heads {
            if h.author.as_slice() == own.as_slice() {
                l.own = h.seq;
            } else {
                l.peers = l.peers.saturating_add(h.seq);
            }
        }
        l.feeds = heads.len() as u64;
        sample.ledger = Some(l);
    }
    if let Some(items) = part("the forwarding queue", node.store().forward_items()) {
        sample.forward_queue = Some(
            FORWARD_STATES
                .iter()
                .map(|s| (s.as_str(), items.iter().filter(|(_, r)| r.state == *s).count() as u64))
                .collect(),
        );
    }
    if let Some(sinks) = part("the notification outbox", node.notify().status()) {
        sample.outbox = Some(
            sinks
                .iter()
                .filter(|s| s.configured)
                .filter_map(|s| {
                    let name = [crate::notify::WEBHOOK, crate::notify::SYSLOG]
                        .into_iter()
                        .find(|n| *n == s.sink)?;
                    Some((name, s.pending))
                })
                .collect(),
        );
    }
    sample
}
