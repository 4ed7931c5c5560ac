//! [`Gate`]: wraps a behaviour so that it hears nothing from peers that have
//! not (yet) proved trust. Events from the connection handlers of other peers
//! are dropped before the inner behaviour sees them, so an inbound request
//! of that protocol (a Kademlia `FIND_NODE`, say) is never answered, and the
//! answers such a peer gives to our queries are never believed.

use std::collections::HashSet;
use std::task::{Context, Poll};

use libp2p::core::Endpoint;
use libp2p::core::transport::PortUse;
use libp2p::swarm::{
    ConnectionDenied, ConnectionId, FromSwarm, NetworkBehaviour, THandler, THandlerInEvent, THandlerOutEvent, ToSwarm,
};
use libp2p::{Multiaddr, PeerId};

/// A behaviour that only hears allowed peers.
#[derive(Debug)]
pub struct Gate<B> {
    inner: B,
    allowed: HashSet<PeerId>,
}

impl<B> Gate<B> {
    /// Wraps `inner`; nobody is allowed yet.
    pub fn new(inner: B) -> Self {
        Self {
            inner,
            allowed: HashSet::new(),
        }
    }

    /// Lets `peer` be heard.
    pub fn allow(&mut self, peer: PeerId) {
        self.allowed.insert(peer);
    }

    /// Stops hearing `peer`.
    pub fn deny(&mut self, peer: &PeerId) {
        self.allowed.remove(peer);
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
        } else {
            tracing::debug!(peer = %peer_id, "dropped a protocol event from a peer that is not trusted");
        }
    }

    fn poll(&mut self, cx: &mut Context<'_>) -> Poll<ToSwarm<Self::ToSwarm, THandlerInEvent<Self>>> {
        self.inner.poll(cx)
    }
}
