//! How a consortium revocation reaches every member by itself
//! (docs/PROTOCOL.md §7.4).
//!
//! - **Publish.** Whenever this node's applied revocations grow (an admin ran
//!   `medmesh trust apply`, or one came from a peer), each new one goes out
//!   on the ledger gossip topic as a [`GossipMsg::Revocation`]. A member
//!   passes it on only after [`TrustService::revocation_from_peer`](crate::home::trust::TrustService::revocation_from_peer) verified its
//!   admin signatures against the consortium's revocation threshold and
//!   applied it; a forged, under-signed or malformed one is rejected (not
//!   applied, not relayed, counted against the sender).
//! - **Catch up.** Every hello carries a [`RevocationSummary`] per consortium
//!   (count and digest). When a peer's differs from ours, or every
//!   maintenance round, this node asks the peer (`/medmesh/ledger/1`,
//!   [`SyncRequest::Revocations`] with our digest) and applies what it gets
//!   the same way.
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
use std::sync::Arc;
use std::time::{Duration, Instant};

use libp2p::PeerId;
use libp2p::request_response::OutboundRequestId;

use super::hello::{self, Hello};
use super::{Internal, Service, now};
use crate::home::trust::RevocationTaken;
use crate::ledger::gossip::GossipMsg;
use crate::ledger::sync::{SyncRequest, SyncResponse};
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
    /// BLAKE3 of every applied revocation (None before the first load).
    known: Option<HashSet<[u8; 32]>>,
    /// What the hello says.
    pub(super) summaries: Vec<RevocationSummary>,
    /// Catch-up requests in flight.
    pending: std::collections::HashMap<OutboundRequestId, PeerId>,
}

impl Service {
    /// Reloads the applied revocations: the summaries for the hello, and
    /// each one new since the last load published on the gossip topic
    /// (nothing is published on the first load, at start).
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
        let fresh: Vec<Vec<u8>> = match &self.revocations.known {
            Some(known) => applied
                .iter()
                .filter(|a| !known.contains(&a.hash))
                .map(|a| a.bytes.clone())
                .collect(),
            None => Vec::new(),
        };
        self.revocations.known = Some(pairs.iter().map(|(_, h)| *h).collect());
        for bytes in fresh {
            tracing::info!("publishing a revocation to the consortium's members");
            self.gossip_publish(&GossipMsg::Revocation {
                v: crate::ledger::LEDGER_VERSION,
                revocation: serde_bytes::ByteBuf::from(bytes),
            });
        }
    }

    /// Asks `peer` for the revocations of `consortia` (each with our digest).
    pub(super) fn ask_revocations(&mut self, peer: PeerId, consortia: Vec<String>) {
        for consortium in consortia {
            let digest = self
                .revocations
                .summaries
                .iter()
                .find(|s| s.consortium == consortium)
                .map(|s| s.digest.clone())
                .unwrap_or_default();
            let id = self.swarm.behaviour_mut().ledger.send_request(
                &peer,
                SyncRequest::Revocations {
                    v: crate::ledger::LEDGER_VERSION,
                    consortium,
                    digest,
                },
            );
            self.revocations.pending.insert(id, peer);
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
        #[cfg(feature = "fault-injection")]
        self.publish_injected();
    }

    /// Test builds only (cargo feature `fault-injection`): with
    /// `MEDMESH_FAULT_PUBLISH_REVOCATION=FILE[:FILE...]`, this node publishes
    /// each file's bytes as a revocation on the gossip topic every
    /// maintenance round, unchecked, as a rogue or broken member would: tests
    /// show that the others neither apply nor relay what does not verify.
    #[cfg(feature = "fault-injection")]
    fn publish_injected(&mut self) {
        let Ok(files) = std::env::var("MEDMESH_FAULT_PUBLISH_REVOCATION") else {
            return;
        };
        for f in files.split(':') {
            if let Ok(bytes) = std::fs::read(f) {
                self.gossip_publish(&GossipMsg::Revocation {
                    v: crate::ledger::LEDGER_VERSION,
                    revocation: serde_bytes::ByteBuf::from(bytes),
                });
            }
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

    /// Whether `request` is a revocation catch-up request for us to answer
    /// from a peer that is parked (revocations are no secret among members).
    pub(super) fn answers_parked(&self, peer: &PeerId, request: &SyncRequest) -> bool {
        matches!(request, SyncRequest::Revocations { .. }) && self.is_parked(peer)
    }

    /// Whether `id` is a catch-up request of ours (its answer goes to
    /// [`Self::on_revocations_answer`], not to the ledger's exchanges).
    pub(super) fn is_revocations_request(&self, id: &OutboundRequestId) -> bool {
        self.revocations.pending.contains_key(id)
    }

    /// Takes an answer to a catch-up request.
    pub(super) fn on_revocations_answer(&mut self, peer: PeerId, id: OutboundRequestId, response: SyncResponse) {
        self.revocations.pending.remove(&id);
        let SyncResponse::Revocations { revocations, .. } = response else {
            self.revocations_done(peer);
            return;
        };
        let (node, internal) = (Arc::clone(&self.node), self.internal.clone());
        tokio::spawn(async move {
            let from = peer.to_string();
            let _ = tokio::task::spawn_blocking(move || {
                for r in &revocations {
                    match node.trust().revocation_from_peer(&from, r) {
                        Ok(RevocationTaken::Refused(_)) => {
                            tracing::warn!(peer = %from, "a peer's catch-up answer holds a revocation that does not verify");
                        }
                        Ok(_) => {}
                        Err(e) => tracing::warn!(peer = %from, cause = %e, "revocation from a peer not taken"),
                    }
                }
            })
            .await;
            let _ = internal.send(Internal::RevocationsDone(peer)).await;
        });
    }

    /// A catch-up request failed; returns false when `id` was not one.
    pub(super) fn on_revocations_failure(&mut self, id: OutboundRequestId) -> bool {
        self.revocations.pending.remove(&id).is_some()
    }

    /// A catch-up exchange with `peer` is over (its revocations applied).
    pub(super) fn revocations_done(&mut self, peer: PeerId) {
        if let Some(hold) = &mut self.hold {
            hold.reconciled.insert(peer);
        }
        self.release_hold_if_done();
    }
}
