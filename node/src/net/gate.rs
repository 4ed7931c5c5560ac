//! [`Gate`]: wraps a behaviour so that it hears nothing from peers that have
//! not (yet) proved trust. Events from the connection handlers of other peers
//! are dropped before the inner behaviour sees them, so an inbound request
//! of that protocol (a Kademlia `FIND_NODE`, say) is never answered, and the
//! answers such a peer gives to our queries are never believed.
//!
//! A gate may instead *hold* a bounded number of events per undecided peer
//! ([`Gate::holding`]): gossipsub says which topics a peer reads once, as a
//! connection opens, before the hello has proved anything; held events are
//! handed on if the peer is accepted and dropped if it is refused or leaves.

use std::collections::{HashMap, HashSet, VecDeque};
use std::task::{Context, Poll};

use libp2p::core::Endpoint;
use libp2p::core::transport::PortUse;
use libp2p::swarm::{
    ConnectionDenied, ConnectionId, FromSwarm, NetworkBehaviour, THandler, THandlerInEvent, THandlerOutEvent, ToSwarm,
};
use libp2p::{Multiaddr, PeerId};

/// Events held for one undecided peer.
type Held<B> = VecDeque<(ConnectionId, THandlerOutEvent<B>)>;

/// A behaviour that only hears allowed peers.
pub struct Gate<B: NetworkBehaviour> {
    inner: B,
    allowed: HashSet<PeerId>,
    /// Most events held per undecided peer (0: none, they are dropped).
    hold: usize,
    /// Most undecided peers held for at once.
    hold_peers: usize,
    held: HashMap<PeerId, Held<B>>,
}

impl<B: NetworkBehaviour> std::fmt::Debug for Gate<B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Gate")
            .field("allowed", &self.allowed.len())
            .field("held", &self.held.len())
            .finish_non_exhaustive()
    }
}

impl<B: NetworkBehaviour> Gate<B> {
    /// Wraps `inner`; nobody is allowed yet, and what undecided peers say is dropped.
    pub fn new(inner: B) -> Self {
        Self::holding(inner, 0, 0)
    }

    /// Wraps `inner`, holding up to `hold` events for each of up to
    /// `hold_peers` undecided peers until the peer is allowed (then handed
    /// on, in order) or denied (then dropped); beyond that they are dropped.
    /// Memory held is bounded by `hold × hold_peers` events.
    pub fn holding(inner: B, hold: usize, hold_peers: usize) -> Self {
        Self {
            inner,
            allowed: HashSet::new(),
            hold,
            hold_peers,
            held: HashMap::new(),
        }
    }

    /// Lets `peer` be heard, handing on what it said while undecided.
    pub fn allow(&mut self, peer: PeerId) {
        self.allowed.insert(peer);
        for (connection, event) in self.held.remove(&peer).unwrap_or_default() {
            self.inner.on_connection_handler_event(peer, connection, event);
        }
    }

    /// Stops hearing `peer` (and drops what it said while undecided).
    pub fn deny(&mut self, peer: &PeerId) {
        self.allowed.remove(peer);
        self.held.remove(peer);
    }

    /// Whether `peer` is heard.
    pub fn is_allowed(&self, peer: &PeerId) -> bool {
        self.allowed.contains(peer)
    }

    /// The wrapped behaviour.
    pub fn inner_mut(&mut self) -> &mut B {
        &mut self.inner
    }
}

impl<B: NetworkBehaviour> NetworkBehaviour for Gate<B> {
    type ConnectionHandler = THandler<B>;
    type ToSwarm = B::ToSwarm;

    fn handle_pending_inbound_connection(
        &mut self,
        connection_id: ConnectionId,
        local_addr: &Multiaddr,
        remote_addr: &Multiaddr,
    ) -> Result<(), ConnectionDenied> {
        self.inner
            .handle_pending_inbound_connection(connection_id, local_addr, remote_addr)
    }

    fn handle_established_inbound_connection(
        &mut self,
        connection_id: ConnectionId,
        peer: PeerId,
        local_addr: &Multiaddr,
        remote_addr: &Multiaddr,
    ) -> Result<THandler<Self>, ConnectionDenied> {
        self.inner
            .handle_established_inbound_connection(connection_id, peer, local_addr, remote_addr)
    }

    fn handle_pending_outbound_connection(
        &mut self,
        connection_id: ConnectionId,
        maybe_peer: Option<PeerId>,
        addresses: &[Multiaddr],
        effective_role: Endpoint,
    ) -> Result<Vec<Multiaddr>, ConnectionDenied> {
        self.inner
            .handle_pending_outbound_connection(connection_id, maybe_peer, addresses, effective_role)
    }

    fn handle_established_outbound_connection(
        &mut self,
        connection_id: ConnectionId,
        peer: PeerId,
        addr: &Multiaddr,
        role_override: Endpoint,
        port_use: PortUse,
    ) -> Result<THandler<Self>, ConnectionDenied> {
        self.inner
            .handle_established_outbound_connection(connection_id, peer, addr, role_override, port_use)
    }

    fn on_swarm_event(&mut self, event: FromSwarm<'_>) {
        if let FromSwarm::ConnectionClosed(c) = &event
            && let Some(held) = self.held.get_mut(&c.peer_id)
        {
            held.retain(|(id, _)| *id != c.connection_id);
            if held.is_empty() {
                self.held.remove(&c.peer_id);
            }
        }
        self.inner.on_swarm_event(event);
    }

    fn on_connection_handler_event(
        &mut self,
        peer_id: PeerId,
        connection_id: ConnectionId,
        event: THandlerOutEvent<Self>,
    ) {
        if self.allowed.contains(&peer_id) {
            self.inner.on_connection_handler_event(peer_id, connection_id, event);
        } else if self.hold > 0 && (self.held.contains_key(&peer_id) || self.held.len() < self.hold_peers) {
            let held = self.held.entry(peer_id).or_default();
            if held.len() < self.hold {
                held.push_back((connection_id, event));
            } else {
                tracing::debug!(peer = %peer_id, "dropped a protocol event from an undecided peer: too many held");
            }
        } else {
            tracing::debug!(peer = %peer_id, "dropped a protocol event from a peer that is not trusted");
        }
    }

    fn poll(&mut self, cx: &mut Context<'_>) -> Poll<ToSwarm<Self::ToSwarm, THandlerInEvent<Self>>> {
        self.inner.poll(cx)
    }
}
