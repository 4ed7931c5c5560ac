//! How a consortium revocation reaches every member by itself
//! (docs/PROTOCOL.md §7.4).
//!
//! - **Publish.** Whenever this node's applied revocations grow (an admin ran
//!   `medmesh trust apply`, or one came from a peer), each new one goes out
//!   on the ledger gossip topic (the ledger's replication does it,
//!   `crate::audit::replication`). A member passes it on only after
//!   verifying its admin signatures against the consortium's revocation
//!   threshold and applying it; a forged, under-signed or malformed one is
//!   rejected (not applied, not relayed, counted against the sender).
//! - **Catch up.** Every hello carries a [`RevocationSummary`] per consortium
//!   (count and digest). When a peer's differs from ours, or every
//!   maintenance round, this node asks the peer through the registered
//!   [`super::protocol::CatchUp`] service (which speaks `/medmesh/ledger/1` with our digest)
//!   and it applies what it gets the same way.
//! - **Hold.** A node that starts (or lost every trusted connection) does not
//!   yet know what was revoked while it was away. For a short hold
//!   ([`hold_for`]), a peer trusted through a consortium certificate is
//!   answered its hello but not yet trusted (no transfer, ledger or gossip
//!   traffic, no routing): the node first asks it, and the other members it
//!   meets, for their revocations. The hold ends once two peers have been
//!   reconciled with (so one revoked peer claiming to know nothing new is not
//!   enough), or when it runs out; every parked peer is then judged again
//!   under the revocations learnt meanwhile, and a revoked one is refused
//!   before anything else was said to it.

use std::collections::HashSet;
use std::time::{Duration, Instant};

use libp2p::PeerId;

use super::{Internal, Service, now};
use crate::trust::hello::{self, Hello};
use crate::trust::{RevocationSummary, Via};

/// Longest hold.
const HOLD_MAX: Duration = Duration::from_secs(5);
/// Peers reconciled with that end a hold early.
const HOLD_RECONCILED: usize = 2;

/// The hold for a node whose hello timeout is `hello_timeout`: half of it
/// (a parked peer must be judged before its hello deadline), at most [`HOLD_MAX`].
#[must_use]
pub(super) fn hold_for(hello_timeout: Duration) -> Duration {
    (hello_timeout / 2).min(HOLD_MAX)
}

/// A hold in force.
#[derive(Debug)]
pub(super) struct Hold {
    until: Instant,
    reconciled: HashSet<PeerId>,
    parked: Vec<(PeerId, Hello)>,
}

impl Hold {
    pub(super) fn new(length: Duration) -> Self {
        Self {
            until: Instant::now() + length,
            reconciled: HashSet::new(),
            parked: Vec::new(),
        }
    }
}

/// This node's revocation state, as the network last loaded it.
#[derive(Debug, Default)]
pub(super) struct RevocationState {
    /// What the hello says.
    pub(super) summaries: Vec<RevocationSummary>,
}

impl Service {
    /// Reloads the applied revocations: the summaries for the hello.
    pub(super) fn reload_revocations(&mut self) {
        let applied = match self.node.trust().applied_revocations() {
            Ok(a) => a,
            Err(e) => {
                tracing::warn!(cause = %e, "applied revocations not read");
                return;
            }
        };
        let pairs: Vec<(String, [u8; 32])> = applied.iter().map(|a| (a.consortium.clone(), a.hash)).collect();
        self.revocations.summaries = crate::trust::summarize_revocations(&pairs);
    }

    /// Asks `peer` for the revocations of `consortia` (each with our digest),
    /// through the registered catch-up service.
    pub(super) fn ask_revocations(&mut self, peer: PeerId, consortia: Vec<String>) {
        let Some(catch_up) = self.catch_up.clone() else { return };
        for consortium in consortia {
            let digest = self
                .revocations
                .summaries
                .iter()
                .find(|s| s.consortium == consortium)
                .map(|s| s.digest.clone())
                .unwrap_or_default();
            let exchange = catch_up.catch_up(peer, consortium, digest);
            let internal = self.internal.clone();
            tokio::spawn(async move {
                if exchange.await {
                    let _ = internal.send(Internal::RevocationsDone(peer)).await;
                }
            });
        }
    }

    /// Every maintenance round: asks each trusted, connected peer about
    /// every joined consortium (an answer is empty when nothing differs).
    pub(super) fn revocation_round(&mut self) {
        let consortia: Vec<String> = self.trust.consortia.iter().map(|c| c.id.clone()).collect();
        if consortia.is_empty() {
            return;
        }
        let ready: Vec<PeerId> = self
            .peers
            .iter()
            .filter(|(_, st)| st.trusted && !st.connections.is_empty())
            .map(|(p, _)| *p)
            .collect();
        for peer in ready {
            self.ask_revocations(peer, consortia.clone());
        }
        if let Some(c) = &self.catch_up {
            c.maintenance();
        }
    }

    /// A hello of `peer` was found acceptable: asks it for what differs, and
    /// while a hold is in force parks a consortium-trusted peer instead of
    /// trusting it. Returns true when parked (the caller does not accept it).
    pub(super) fn revocations_on_hello(&mut self, peer: PeerId, hello: &Hello, via: &Via) -> bool {
        let behind = hello.revocations_behind(&self.revocations.summaries);
        let parking = self.hold.is_some() && matches!(via, Via::Consortium { .. });
        if parking {
            // Asked about every joined consortium: a peer that says nothing
            // of a revocation still answers with what it has.
            let all: Vec<String> = self.trust.consortia.iter().map(|c| c.id.clone()).collect();
            let shared = hello.revocations == self.revocations.summaries;
            if let Some(hold) = &mut self.hold {
                hold.parked.retain(|(p, _)| *p != peer);
                hold.parked.push((peer, hello.clone()));
                if shared {
                    hold.reconciled.insert(peer);
                }
            }
            tracing::debug!(peer = %peer, "peer parked until this node has caught up on revocations");
            if !shared {
                self.ask_revocations(peer, all);
            }
            self.release_hold_if_done();
            return true;
        }
        if !behind.is_empty() {
            self.ask_revocations(peer, behind);
        }
        false
    }

    /// Whether `peer` waits in a hold.
    pub(super) fn is_parked(&self, peer: &PeerId) -> bool {
        self.hold
            .as_ref()
            .is_some_and(|h| h.parked.iter().any(|(p, _)| p == peer))
    }

    /// Starts a hold when no trusted peer is connected any more (the node
    /// may miss revocations from now on).
    pub(super) fn hold_if_alone(&mut self) {
        if self.hold.is_none() && !self.peers.values().any(|st| st.trusted && !st.connections.is_empty()) {
            self.hold = Some(Hold::new(hold_for(self.hello_timeout)));
        }
    }

    /// Ends the hold when enough peers were reconciled with or it ran out:
    /// every parked peer still connected is judged again and accepted or refused.
    pub(super) fn release_hold_if_done(&mut self) {
        // Two peers reconciled with, or every peer this node knows when it knows fewer.
        let known = self
            .peers
            .iter()
            .filter(|(p, st)| st.hello.is_some() || self.is_parked(p))
            .count();
        let needed = HOLD_RECONCILED.min(known.max(1));
        let done = self
            .hold
            .as_ref()
            .is_some_and(|h| h.reconciled.len() >= needed || Instant::now() >= h.until);
        if !done {
            return;
        }
        let Some(hold) = self.hold.take() else { return };
        if let Err(e) = self.reload_trust() {
            tracing::error!(cause = %e, "cannot reload trust records; keeping the previous ones");
        }
        let t = now();
        for (peer, h) in hold.parked {
            let connected = self.peers.get(&peer).is_some_and(|st| !st.connections.is_empty());
            if !connected {
                continue;
            }
            match hello::evaluate(&self.trust, &peer.to_string(), &h, t) {
                Ok(accepted) => self.accept(peer, h, accepted),
                Err(r) => self.refuse(peer, r, None),
            }
        }
    }

    /// A catch-up exchange with `peer` is over (its revocations applied).
    pub(super) fn revocations_done(&mut self, peer: PeerId) {
        if let Some(hold) = &mut self.hold {
            hold.reconciled.insert(peer);
        }
        self.release_hold_if_done();
    }
}
