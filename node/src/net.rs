//! The node on the network: a libp2p swarm (TCP + Noise + Yamux, QUIC,
//! identify, ping, Kademlia, optional mDNS, `/medmesh/hello/1`) and the task
//! that drives it.
//!
//! Gating, in order:
//! 1. a peer the site admin blocked is denied at connection establishment;
//! 2. every other connection must complete `/medmesh/hello/1` (node record and
//!    certificates, checked by [`hello::evaluate`]) within
//!    `network.hello_timeout_secs`; the listener answers a hello only when it
//!    accepts the dialer, so an untrusted peer gets no answer;
//! 3. until a peer is accepted, Kademlia hears nothing from it ([`gate::Gate`]):
//!    its requests go unanswered and its answers are ignored; what it says on
//!    the ledger's gossip topic is held until it is accepted, dropped if not;
//! 4. a refused peer is disconnected, and the refusal is logged with its peer
//!    id and reason code and kept for `medmesh peers`;
//! 5. on every trust change (join, add-peer, revocation, block) and every
//!    `network.maintenance_secs`, connected peers are checked again and those
//!    no longer trusted are disconnected;
//! 6. consortium revocations spread by themselves, and a node that starts or
//!    was cut off catches up on them before it trusts a consortium peer
//!    ([`revocations`]).
//!
//! The network knows no application: services (the ledger, transfers)
//! register their protocols on a [`protocol::Router`] and the network hands
//! them what accepted peers send ([`protocol`]). Gating and limits apply to
//! every protocol alike.

pub mod codec;
pub mod gate;
use crate::trust::hello;
mod peers;
pub mod protocol;
mod revocations;
#[cfg(test)]
mod vectors;

use std::collections::{HashMap, HashSet, VecDeque};
use std::num::NonZeroUsize;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use libp2p::multiaddr::Protocol;
use libp2p::swarm::behaviour::toggle::Toggle;
use libp2p::swarm::dial_opts::{DialOpts, PeerCondition};
use libp2p::swarm::{NetworkBehaviour, SwarmEvent};
use libp2p::{
    Multiaddr, PeerId, StreamProtocol, Swarm, allow_block_list, connection_limits, gossipsub, identify, kad, mdns,
    noise, ping, request_response, tcp, yamux,
};
use tokio::sync::{mpsc, oneshot, watch};

use self::codec::CborCodec;
use self::gate::Gate;
use self::hello::{Accepted, Hello};
pub use self::peers::{NetStatus, PeerEntry, PeersReport, RefusedEntry, UnansweredEntry, offline_peers};
use self::peers::{add_bilateral_unmet, entry_for, via_text};
use self::protocol::{Acceptance, Admit, CatchUp, Delivery, RawCodec, RequestHandler, Router, TopicHandler};
use crate::clock::{now, rfc3339};
use crate::config::NetworkConfig;
use crate::home::{HomeError, Node};
use crate::trust::known;
use crate::trust::{Refusal, TrustState};

/// Kademlia protocol name: a private DHT of medmesh nodes.
pub const KAD_PROTOCOL: &str = "/medmesh/kad/1";
/// Identify protocol version string.
pub const IDENTIFY_VERSION: &str = "/medmesh/1";
/// Incoming connections still in their handshake, at most.
const MAX_PENDING_INCOMING: u32 = 128;
/// Established incoming connections, at most.
const MAX_ESTABLISHED_INCOMING: u32 = 1024;
/// Connections per peer, at most (TCP and QUIC, both directions).
const MAX_PER_PEER: u32 = 4;
/// Refused peers remembered for `medmesh peers`.
const REFUSED_KEPT: usize = 64;
/// Connections of one peer established within this of each other may be a
/// simultaneous dial; a hello on one does not close the other.
const HELLO_RACE: Duration = Duration::from_secs(3);
/// Every connection is pinged this often.
const PING_EVERY: Duration = Duration::from_secs(5);
/// A ping unanswered this long fails; libp2p-ping reports the second failure
/// in a row, which closes the connection: a cut TCP link is noticed in about
/// 2 x (PING_EVERY + PING_TIMEOUT). Long enough for a ping queued behind a
/// transfer on a slow, saturated link.
const PING_TIMEOUT: Duration = Duration::from_secs(20);

/// Errors of the network.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum NetError {
    /// The home could not be read (trust records, identity).
    #[error(transparent)]
    Home(#[from] HomeError),
    /// The swarm could not be built.
    #[error("cannot start the network: {stage}: {source}")]
    Build {
        /// What was being built.
        stage: BuildStage,
        /// The libp2p error.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// A listen address could not be used.
    #[error("cannot listen on {addr}: {reason}")]
    Listen {
        /// The address.
        addr: String,
        /// Why.
        reason: ListenFault,
    },
    /// The network task has stopped.
    #[error("the network task has stopped")]
    Stopped,
    /// A peer could not be reached or did not answer.
    #[error("peer {peer}: {reason}")]
    Peer {
        /// The peer.
        peer: PeerId,
        /// Why.
        reason: PeerFailure,
    },
    /// The trust records could not be read again.
    #[error("the running node could not reload its trust records: {0}")]
    Reload(#[source] HomeError),
    /// A message of a registered protocol could not be encoded, or an
    /// answer decoded.
    #[error("peer {peer}: malformed {protocol} message: {source}")]
    Malformed {
        /// The peer.
        peer: PeerId,
        /// The protocol.
        protocol: &'static str,
        /// Why.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// No service registered the protocol.
    #[error("no service speaks {protocol}")]
    NoProtocol {
        /// The protocol name.
        protocol: String,
    },
    /// The services' protocols could not be registered.
    #[error(transparent)]
    Router(#[from] protocol::RouterError),
}

/// Why a request to a peer got no answer.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PeerFailure {
    /// The peer was not connected and trusted in time.
    #[error("not connected and trusted within {secs} s (is it running, reachable and trusting this node?)")]
    NotTrusted {
        /// How long the request waited.
        secs: u64,
    },
    /// The peer is not connected and trusted now.
    #[error("not connected and trusted now")]
    NotReady,
    /// The request went out but no answer came back.
    #[error("no answer: {0}")]
    NoAnswer(#[source] request_response::OutboundFailure),
}

/// What was being built when the network could not start ([`NetError::Build`]).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum BuildStage {
    /// The gossip behaviour.
    #[error("gossip")]
    Gossip,
    /// The TCP transport (with Noise and yamux).
    #[error("TCP transport")]
    Tcp,
    /// The DNS resolver.
    #[error("DNS resolver")]
    Dns,
    /// The swarm's behaviours.
    #[error("behaviours")]
    Behaviours,
    /// The subscription to a gossip topic.
    #[error("gossip topic {name}")]
    Topic {
        /// The topic.
        name: String,
    },
}

/// Why a listen or bootstrap address cannot be used ([`NetError::Listen`]).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ListenFault {
    /// The configured addresses do not parse.
    #[error(transparent)]
    Address(crate::config::AddrError),
    /// The transport refuses the address.
    #[error(transparent)]
    Transport(libp2p::TransportError<std::io::Error>),
}

/// A [`NetError::Build`] at `stage`.
fn build_err(stage: BuildStage, e: impl Into<Box<dyn std::error::Error + Send + Sync>>) -> NetError {
    NetError::Build {
        stage,
        source: e.into(),
    }
}

/// Commands to the network task.
#[derive(Debug)]
enum Command {
    Peers(oneshot::Sender<PeersReport>),
    Status(oneshot::Sender<NetStatus>),
    TrustChanged(oneshot::Sender<Result<(), HomeError>>),
    /// Send a request of a registered protocol.
    Request(Outbound),
    /// Publish on the gossip topic.
    Publish(Vec<u8>),
    /// Whether a peer is connected and trusted now.
    Ready(PeerId, oneshot::Sender<bool>),
    /// The peers connected and trusted now.
    ReadyPeers(oneshot::Sender<Vec<PeerId>>),
    /// Dial a known peer.
    Dial(PeerId),
}

/// The answer to an outbound request: the response's bytes.
type Reply = oneshot::Sender<Result<Vec<u8>, PeerFailure>>;

/// An outbound request of a registered protocol.
#[derive(Debug)]
struct Outbound {
    protocol: &'static str,
    peer: PeerId,
    request: Vec<u8>,
    delivery: Delivery,
    reply: Reply,
}

/// Work finished off the network task, handed back to it.
enum Internal {
    /// Answer a request of the protocol in this slot.
    Respond(usize, request_response::ResponseChannel<Vec<u8>>, Vec<u8>),
    /// A revocation catch-up exchange with a peer is over.
    RevocationsDone(PeerId),
    /// The verdict on a gossip message.
    GossipVerdict(gossipsub::MessageId, PeerId, gossipsub::MessageAcceptance),
}

/// A handle on the running network task.
#[derive(Clone)]
pub struct NetHandle {
    tx: mpsc::Sender<Command>,
    wake: Vec<Arc<tokio::sync::Notify>>,
    control: libp2p_stream::Control,
}

impl std::fmt::Debug for NetHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NetHandle").finish_non_exhaustive()
    }
}

impl NetHandle {
    /// The peers report.
    ///
    /// # Errors
    /// [`NetError::Stopped`].
    pub async fn peers(&self) -> Result<PeersReport, NetError> {
        self.ask(Command::Peers).await
    }

    async fn ask<T>(&self, command: impl FnOnce(oneshot::Sender<T>) -> Command) -> Result<T, NetError> {
        let (tx, rx) = oneshot::channel();
        self.tx.send(command(tx)).await.map_err(|_| NetError::Stopped)?;
        rx.await.map_err(|_| NetError::Stopped)
    }

    /// Network status.
    ///
    /// # Errors
    /// [`NetError::Stopped`].
    pub async fn status(&self) -> Result<NetStatus, NetError> {
        self.ask(Command::Status).await
    }

    /// Tells the network that trust records changed; returns once connected
    /// peers have been checked again (and the untrusted disconnected).
    ///
    /// # Errors
    /// [`NetError::Stopped`]; [`NetError::Reload`] when the records could not
    /// be read again (the previous ones stay in force until the next reload).
    pub async fn trust_changed(&self) -> Result<(), NetError> {
        self.ask(Command::TrustChanged).await?.map_err(NetError::Reload)
    }

    /// Sends `request` to `peer` on the registered request-response
    /// `protocol`, waiting for the peer as `delivery` says, and returns the
    /// response's bytes.
    ///
    /// # Errors
    /// [`NetError::Stopped`]; [`NetError::NoProtocol`]; [`NetError::Peer`]
    /// when the peer cannot be reached or did not answer.
    pub async fn request(
        &self,
        protocol: &'static str,
        peer: PeerId,
        request: Vec<u8>,
        delivery: Delivery,
    ) -> Result<Vec<u8>, NetError> {
        let (reply, rx) = oneshot::channel();
        let outbound = Outbound {
            protocol,
            peer,
            request,
            delivery,
            reply,
        };
        self.tx
            .send(Command::Request(outbound))
            .await
            .map_err(|_| NetError::Stopped)?;
        match rx.await {
            Ok(Ok(bytes)) => Ok(bytes),
            Ok(Err(reason)) => Err(NetError::Peer { peer, reason }),
            // The network task drops the reply of a protocol nobody registered.
            Err(_) => Err(NetError::NoProtocol {
                protocol: protocol.to_string(),
            }),
        }
    }

    /// Publishes `message` on the gossip topic.
    pub async fn publish(&self, message: Vec<u8>) {
        let _ = self.tx.send(Command::Publish(message)).await;
    }

    /// The peers connected and trusted now.
    pub async fn ready_peers(&self) -> Vec<PeerId> {
        self.ask(Command::ReadyPeers).await.unwrap_or_default()
    }

    /// Streams to and from peers (`libp2p_stream`), for services that speak
    /// a streaming protocol.
    #[must_use]
    pub fn stream_control(&self) -> libp2p_stream::Control {
        self.control.clone()
    }

    /// Whether `peer` is connected and trusted now.
    pub async fn is_ready(&self, peer: PeerId) -> bool {
        self.ask(|tx| Command::Ready(peer, tx)).await.unwrap_or(false)
    }

    /// Dials `peer` at its known addresses (no-op when connected).
    pub async fn dial(&self, peer: PeerId) {
        let _ = self.tx.send(Command::Dial(peer)).await;
    }

    /// Wakes the services that registered [`Router::on_accept`] (the
    /// transfer engine: a transfer was granted or approved).
    pub fn wake_transfers(&self) {
        for w in &self.wake {
            w.notify_one();
        }
    }
}

/// How long a transfer message waits for its peer to be connected and trusted.
pub const SEND_WAIT: Duration = Duration::from_secs(20);

#[derive(NetworkBehaviour)]
struct Behaviour {
    blocked: allow_block_list::Behaviour<allow_block_list::BlockedPeers>,
    limits: connection_limits::Behaviour,
    identify: identify::Behaviour,
    ping: ping::Behaviour,
    kad: Gate<kad::Behaviour<kad::store::MemoryStore>>,
    mdns: Toggle<mdns::tokio::Behaviour>,
    hello: request_response::Behaviour<CborCodec<Hello, Hello>>,
    // The services' request-response protocols, in the order registered
    // (one field each: libp2p's derive wants named fields).
    rpc0: Toggle<request_response::Behaviour<RawCodec>>,
    rpc1: Toggle<request_response::Behaviour<RawCodec>>,
    rpc2: Toggle<request_response::Behaviour<RawCodec>>,
    rpc3: Toggle<request_response::Behaviour<RawCodec>>,
    gossip: Gate<gossipsub::Behaviour>,
    stream: libp2p_stream::Behaviour,
}

impl Behaviour {
    /// The request-response behaviour of the protocol in `slot`.
    fn rpc(&mut self, slot: usize) -> Option<&mut request_response::Behaviour<RawCodec>> {
        match slot {
            0 => self.rpc0.as_mut(),
            1 => self.rpc1.as_mut(),
            2 => self.rpc2.as_mut(),
            3 => self.rpc3.as_mut(),
            _ => None,
        }
    }
}

/// Events a gossip peer may send before its hello is accepted (its
/// subscriptions, as a connection opens), held until then, and for how many
/// undecided peers at once: at most 4 × 32 messages of at most the topic's
/// largest message (the ledger's: about 25 MiB) whoever connects.
const GOSSIP_HELD: usize = 4;
const GOSSIP_HELD_PEERS: usize = 32;

/// Largest gossip message when no service registered a topic.
const NO_TOPIC_MAX: usize = 64 * 1024;

/// The gossipsub of the registered topic: messages are self-authenticating
/// (the ledger's are signed entries, witnesses and revocations), so
/// gossipsub adds no signature of its own; a message is named by the BLAKE3
/// of its bytes, and every message is judged by its service before it is
/// passed on.
fn topic_gossip(max_message: usize) -> Result<gossipsub::Behaviour, NetError> {
    let config = gossipsub::ConfigBuilder::default()
        .validation_mode(gossipsub::ValidationMode::Anonymous)
        .message_id_fn(|m: &gossipsub::Message| gossipsub::MessageId::from(blake3::hash(&m.data).as_bytes().to_vec()))
        .max_transmit_size(max_message + 4096)
        .validate_messages()
        .heartbeat_interval(Duration::from_millis(700))
        .build()
        .map_err(|e| build_err(BuildStage::Gossip, e))?;
    gossipsub::Behaviour::new(gossipsub::MessageAuthenticity::Anonymous, config)
        .map_err(|e| build_err(BuildStage::Gossip, e))
}

/// A request-response behaviour of a registered protocol.
fn raw_protocol(p: &protocol::RequestProtocol) -> request_response::Behaviour<RawCodec> {
    request_response::Behaviour::with_codec(
        p.codec,
        [(StreamProtocol::new(p.name), request_response::ProtocolSupport::Full)],
        request_response::Config::default()
            .with_request_timeout(p.timeout)
            .with_max_concurrent_streams(p.streams),
    )
}

/// A request-response behaviour speaking one CBOR protocol (both ways).
fn cbor_protocol<Q: codec::Wire, R: codec::Wire>(
    protocol: &'static str,
    timeout: Duration,
    streams: usize,
) -> request_response::Behaviour<CborCodec<Q, R>> {
    request_response::Behaviour::with_codec(
        CborCodec::default(),
        [(StreamProtocol::new(protocol), request_response::ProtocolSupport::Full)],
        request_response::Config::default()
            .with_request_timeout(timeout)
            .with_max_concurrent_streams(streams),
    )
}

fn build_swarm(node: &Node, cfg: &NetworkConfig, router: &Router) -> Result<Swarm<Behaviour>, NetError> {
    let keypair = node.identity().libp2p_keypair().map_err(HomeError::from)?;
    let hello_timeout = Duration::from_secs(cfg.hello_timeout_secs);
    let mdns_on = cfg.mdns;
    let gossip = topic_gossip(router.topic.as_ref().map_or(NO_TOPIC_MAX, |t| t.max_message))?;
    let mut rpc: Vec<Option<request_response::Behaviour<RawCodec>>> =
        router.requests.iter().map(|p| Some(raw_protocol(p))).collect();
    rpc.resize_with(protocol::MAX_REQUEST_PROTOCOLS, || None);
    let mut rpc = rpc.into_iter();
    let mut next_rpc = move || Toggle::from(rpc.next().flatten());
    let (rpc0, rpc1, rpc2, rpc3) = (next_rpc(), next_rpc(), next_rpc(), next_rpc());
    let swarm = libp2p::SwarmBuilder::with_existing_identity(keypair)
        .with_tokio()
        .with_tcp(tcp::Config::default(), noise::Config::new, yamux::Config::default)
        .map_err(|e| build_err(BuildStage::Tcp, e))?
        .with_quic()
        .with_dns()
        .map_err(|e| build_err(BuildStage::Dns, e))?
        .with_behaviour(|key| {
            let local = key.public().to_peer_id();
            let mut kad_cfg = kad::Config::new(StreamProtocol::new(KAD_PROTOCOL));
            kad_cfg.set_kbucket_inserts(kad::BucketInserts::Manual);
            kad_cfg.set_record_filtering(kad::StoreInserts::FilterBoth);
            if let Some(n) = NonZeroUsize::new(20) {
                kad_cfg.set_kbucket_size(n);
            }
            let mut kad = kad::Behaviour::with_config(local, kad::store::MemoryStore::new(local), kad_cfg);
            kad.set_mode(Some(kad::Mode::Server));
            let mdns = if mdns_on {
                Some(mdns::tokio::Behaviour::new(mdns::Config::default(), local)?)
            } else {
                None
            };
            Ok(Behaviour {
                blocked: allow_block_list::Behaviour::default(),
                limits: connection_limits::Behaviour::new(
                    connection_limits::ConnectionLimits::default()
                        .with_max_pending_incoming(Some(MAX_PENDING_INCOMING))
                        .with_max_established_incoming(Some(MAX_ESTABLISHED_INCOMING))
                        .with_max_established_per_peer(Some(MAX_PER_PEER)),
                ),
                identify: identify::Behaviour::new(
                    identify::Config::new(IDENTIFY_VERSION.into(), key.public())
                        .with_agent_version(format!("medmesh/{}", env!("CARGO_PKG_VERSION"))),
                ),
                ping: ping::Behaviour::new(ping::Config::new().with_interval(PING_EVERY).with_timeout(PING_TIMEOUT)),
                kad: Gate::new(kad),
                mdns: Toggle::from(mdns),
                hello: cbor_protocol(hello::PROTOCOL, hello_timeout, 4),
                rpc0,
                rpc1,
                rpc2,
                rpc3,
                gossip: Gate::holding(gossip, GOSSIP_HELD, GOSSIP_HELD_PEERS),
                stream: libp2p_stream::Behaviour::new(),
            })
        })
        .map_err(|e| build_err(BuildStage::Behaviours, e))?
        .with_swarm_config(|c| c.with_idle_connection_timeout(Duration::from_secs(cfg.idle_timeout_secs)))
        .build();
    Ok(swarm)
}

#[derive(Debug, Default)]
struct PeerState {
    /// Last accepted hello and what it gave.
    hello: Option<Hello>,
    /// Trusted on the current connections.
    trusted: bool,
    /// The open connections, with when each was established.
    connections: HashMap<libp2p::swarm::ConnectionId, Instant>,
    addrs: Vec<Multiaddr>,
    /// Deadline for a valid hello on the current connections.
    deadline: Option<Instant>,
    hello_in_flight: bool,
    /// The address of the latest connection, as seen by this node.
    remote: Option<Multiaddr>,
    last_seen: Option<i64>,
}

/// A peer accepted before: its last hello, addresses, when.
type Known = (PeerId, Hello, Vec<Multiaddr>, i64);

/// The peers this node accepted before (from the trust store), with their addresses.
fn load_known(node: &Node) -> Result<Vec<Known>, HomeError> {
    Ok(known::load(node.store())?
        .into_iter()
        .filter_map(|k| {
            let parsed = (|| {
                let peer: PeerId = k.peer.parse().ok()?;
                let hello = Hello::from_bytes(&k.hello).ok()?;
                let addrs = k.addrs.iter().filter_map(|a| a.parse().ok()).collect();
                Some((peer, hello, addrs, k.last_seen))
            })();
            if parsed.is_none() {
                tracing::warn!(record = %k.key, "skipping a damaged known-peer record");
            }
            parsed
        })
        .collect())
}

/// Starts the network for `node` with the services' protocols in
/// `router`: listens, dials the bootstrap and known peers, and runs until
/// `shutdown` turns true. Returns the handle and the task.
///
/// # Errors
/// [`NetError`] when the swarm cannot be built, an address cannot be
/// listened on, or the trust records cannot be read.
pub async fn start(
    node: Arc<Node>,
    router: Router,
    shutdown: watch::Receiver<bool>,
) -> Result<(NetHandle, tokio::task::JoinHandle<()>), NetError> {
    let cfg = node.config().network.clone();
    let mut swarm = build_swarm(&node, &cfg, &router)?;
    let listen = cfg.listen_addrs().map_err(|e| NetError::Listen {
        addr: "network.listen".into(),
        reason: ListenFault::Address(e),
    })?;
    for addr in listen {
        swarm.listen_on(addr.clone()).map_err(|e| NetError::Listen {
            addr: addr.to_string(),
            reason: ListenFault::Transport(e),
        })?;
    }
    let bootstrap = cfg.bootstrap_peers().map_err(|e| NetError::Listen {
        addr: "network.bootstrap".into(),
        reason: ListenFault::Address(e),
    })?;
    let (tx, rx) = mpsc::channel(32);
    let (internal_tx, internal_rx) = mpsc::channel(64);
    let control = swarm.behaviour().stream.new_control();
    let topic = match router.topic {
        Some(t) => {
            let topic = gossipsub::IdentTopic::new(t.name);
            swarm
                .behaviour_mut()
                .gossip
                .inner_mut()
                .subscribe(&topic)
                .map_err(|e| {
                    build_err(
                        BuildStage::Topic {
                            name: t.name.to_string(),
                        },
                        e,
                    )
                })?;
            Some((topic, t.handler))
        }
        None => None,
    };
    let protocols = router.requests.into_iter().map(|p| (p.name, p.handler)).collect();
    let mut service = Service {
        internal: internal_tx,
        wake: router.on_accept.clone(),
        protocols,
        topic,
        catch_up: router.catch_up,
        waiting: HashMap::new(),
        outbound: HashMap::new(),
        local: *swarm.local_peer_id(),
        swarm,
        node,
        trust: TrustState::default(),
        own_hello: Hello::new(Vec::new(), Vec::new()),
        peers: HashMap::new(),
        refused: VecDeque::new(),
        unanswered: VecDeque::new(),
        listen: Vec::new(),
        bootstrap,
        hello_timeout: Duration::from_secs(cfg.hello_timeout_secs),
        maintenance: Duration::from_secs(cfg.maintenance_secs),
        started: now(),
        blocked_now: HashSet::new(),
        bootstrapping: false,
        revocations: revocations::RevocationState::default(),
        hold: Some(revocations::Hold::new(revocations::hold_for(Duration::from_secs(
            cfg.hello_timeout_secs,
        )))),
    };
    service.reload_trust()?;
    for (peer, hello, addrs, last_seen) in load_known(&service.node)? {
        let st = service.peers.entry(peer).or_default();
        st.hello = Some(hello);
        st.addrs = addrs;
        st.last_seen = Some(last_seen);
    }
    let task = tokio::spawn(service.run(rx, internal_rx, shutdown));
    let handle = NetHandle {
        tx,
        wake: router.on_accept,
        control,
    };
    Ok((handle, task))
}

/// An outbound request waiting for its peer: its protocol's slot, the
/// request, the reply, and until when it waits.
type Waiting = (usize, Vec<u8>, Reply, Instant);

struct Service {
    internal: mpsc::Sender<Internal>,
    /// Notified when a peer becomes trusted.
    wake: Vec<Arc<tokio::sync::Notify>>,
    /// The registered request-response protocols, by slot.
    protocols: Vec<(&'static str, Arc<dyn RequestHandler>)>,
    /// The registered gossip topic.
    topic: Option<(gossipsub::IdentTopic, Arc<dyn TopicHandler>)>,
    /// The registered revocation catch-up.
    catch_up: Option<Arc<dyn CatchUp>>,
    waiting: HashMap<PeerId, Vec<Waiting>>,
    /// Requests in flight, by slot and request.
    outbound: HashMap<(usize, request_response::OutboundRequestId), Reply>,
    local: PeerId,
    swarm: Swarm<Behaviour>,
    node: Arc<Node>,
    trust: TrustState,
    own_hello: Hello,
    peers: HashMap<PeerId, PeerState>,
    refused: VecDeque<RefusedEntry>,
    unanswered: VecDeque<UnansweredEntry>,
    listen: Vec<Multiaddr>,
    bootstrap: Vec<(PeerId, Multiaddr)>,
    hello_timeout: Duration,
    maintenance: Duration,
    started: i64,
    blocked_now: HashSet<PeerId>,
    bootstrapping: bool,
    /// Applied revocations as last loaded (hello summaries).
    revocations: revocations::RevocationState,
    /// While in force, consortium peers wait until revocations are caught up.
    hold: Option<revocations::Hold>,
}

impl Service {
    async fn run(
        mut self,
        mut rx: mpsc::Receiver<Command>,
        mut internal: mpsc::Receiver<Internal>,
        mut shutdown: watch::Receiver<bool>,
    ) {
        let mut trust_watch = self.node.trust().watch();
        let mut tick = tokio::time::interval(Duration::from_millis(500));
        let mut maintenance = tokio::time::interval(self.maintenance);
        loop {
            tokio::select! {
                event = self.swarm.select_next_some() => self.on_event(event),
                cmd = rx.recv() => match cmd {
                    Some(cmd) => self.on_command(cmd),
                    None => break,
                },
                Some(msg) = internal.recv() => match msg {
                    Internal::Respond(slot, channel, answer) => {
                        if let Some(rpc) = self.swarm.behaviour_mut().rpc(slot) {
                            let _ = rpc.send_response(channel, answer);
                        }
                    }
                    Internal::RevocationsDone(peer) => self.revocations_done(peer),
                    Internal::GossipVerdict(id, source, verdict) => {
                        let _ = self
                            .swarm
                            .behaviour_mut()
                            .gossip
                            .inner_mut()
                            .report_message_validation_result(&id, &source, verdict);
                    }
                },
                // A revocation was applied (by the admin or from a peer): same as a trust change.
                Ok(()) = trust_watch.changed() => {
                    let _ = self.trust_reloaded();
                }
                _ = tick.tick() => self.check_deadlines(),
                _ = maintenance.tick() => self.maintain(),
                changed = shutdown.changed() => {
                    if changed.is_err() || *shutdown.borrow() {
                        break;
                    }
                }
            }
        }
        let connected: Vec<PeerId> = self.swarm.connected_peers().copied().collect();
        for p in connected {
            let _ = self.swarm.disconnect_peer_id(p);
        }
        tracing::info!("network stopped");
    }

    fn on_command(&mut self, cmd: Command) {
        match cmd {
            Command::Peers(tx) => {
                let _ = tx.send(self.peers_report());
            }
            Command::Status(tx) => {
                let _ = tx.send(NetStatus {
                    peer_id: self.local.to_string(),
                    listen: self.listen.iter().map(ToString::to_string).collect(),
                    trusted_connected: self
                        .peers
                        .values()
                        .filter(|p| p.trusted && !p.connections.is_empty())
                        .count() as u64,
                    connections: self.swarm.network_info().num_peers() as u64,
                    started: rfc3339(self.started),
                });
            }
            Command::TrustChanged(tx) => {
                let _ = tx.send(self.trust_reloaded());
            }
            Command::Request(out) => self.send_request(out),
            Command::Publish(message) => self.publish(message),
            Command::Ready(peer, tx) => {
                let _ = tx.send(self.is_ready(&peer));
            }
            Command::ReadyPeers(tx) => {
                let ready = self
                    .peers
                    .iter()
                    .filter(|(_, st)| st.trusted && !st.connections.is_empty())
                    .map(|(p, _)| *p)
                    .collect();
                let _ = tx.send(ready);
            }
            Command::Dial(peer) => self.dial_peer(peer),
        }
    }

    fn is_ready(&self, peer: &PeerId) -> bool {
        self.peers
            .get(peer)
            .is_some_and(|st| st.trusted && !st.connections.is_empty())
    }

    /// Dials a peer at the addresses known for it.
    fn dial_peer(&mut self, peer: PeerId) {
        let addrs = self.peers.get(&peer).map(|st| st.addrs.clone()).unwrap_or_default();
        let addrs = if addrs.is_empty() {
            self.bootstrap
                .iter()
                .filter(|(p, _)| *p == peer)
                .map(|(_, a)| a.clone())
                .collect()
        } else {
            addrs
        };
        if addrs.is_empty() {
            tracing::debug!(peer = %peer, "no address known for the peer");
            return;
        }
        self.dial(peer, addrs);
    }

    /// Sends a request of a registered protocol, now or once its peer is
    /// trusted, as its delivery says.
    fn send_request(&mut self, out: Outbound) {
        // An unknown protocol: the reply is dropped (the caller sees NoProtocol).
        let Some(slot) = self.protocols.iter().position(|(name, _)| *name == out.protocol) else {
            return;
        };
        let ready = self.is_ready(&out.peer);
        match out.delivery {
            Delivery::Now => self.send_in_slot(slot, out.peer, out.request, out.reply),
            _ if ready => self.send_in_slot(slot, out.peer, out.request, out.reply),
            Delivery::IfTrusted => {
                let _ = out.reply.send(Err(PeerFailure::NotReady));
            }
            Delivery::WaitTrusted => {
                self.waiting.entry(out.peer).or_default().push((
                    slot,
                    out.request,
                    out.reply,
                    Instant::now() + SEND_WAIT,
                ));
                self.dial_peer(out.peer);
            }
        }
    }

    fn send_in_slot(&mut self, slot: usize, peer: PeerId, request: Vec<u8>, reply: Reply) {
        if let Some(rpc) = self.swarm.behaviour_mut().rpc(slot) {
            let id = rpc.send_request(&peer, request);
            self.outbound.insert((slot, id), reply);
        }
    }

    /// Publishes `message` on the registered gossip topic.
    fn publish(&mut self, message: Vec<u8>) {
        let Some((topic, _)) = &self.topic else { return };
        let topic = topic.clone();
        #[cfg(feature = "fault-injection")]
        trace_gossip("sent", &message);
        match self.swarm.behaviour_mut().gossip.inner_mut().publish(topic, message) {
            Ok(_) => {}
            // Nobody to tell now: catch-up (by feed heads) brings it to them later.
            Err(gossipsub::PublishError::NoPeersSubscribedToTopic | gossipsub::PublishError::Duplicate) => {}
            Err(e) => tracing::debug!(cause = %e, "gossip not published"),
        }
    }

    /// Sends the requests that waited for `peer` to be trusted.
    fn flush_waiting(&mut self, peer: PeerId) {
        for (slot, request, reply, _) in self.waiting.remove(&peer).unwrap_or_default() {
            self.send_in_slot(slot, peer, request, reply);
        }
    }

    /// Reloads trust, checks connected peers again (disconnecting those no
    /// longer trusted) and dials the known ones.
    fn trust_reloaded(&mut self) -> Result<(), HomeError> {
        let result = self.reload_trust().inspect_err(|e| {
            tracing::error!(cause = %e, "cannot reload trust records; keeping the previous ones");
        });
        self.recheck();
        self.dial_known();
        result
    }

    /// Reads the trust records again, rebuilds this node's hello and the
    /// connection-level block list; publishes revocations applied since.
    fn reload_trust(&mut self) -> Result<(), HomeError> {
        let trust = self.node.trust().state()?;
        let certs = self
            .node
            .trust()
            .own_certificates()
            .map_err(HomeError::from)?
            .iter()
            .filter_map(|c| c.to_bytes().ok())
            .collect();
        let record = self.node.record().envelope().to_bytes().map_err(HomeError::from)?;
        self.trust = trust;
        self.reload_revocations();
        self.own_hello = Hello::new(record, certs).with_revocations(self.revocations.summaries.clone());
        let want: HashSet<PeerId> = self.trust.blocked.iter().filter_map(|(p, _)| p.parse().ok()).collect();
        for p in want.difference(&self.blocked_now) {
            self.swarm.behaviour_mut().blocked.block_peer(*p);
        }
        for p in self.blocked_now.difference(&want) {
            self.swarm.behaviour_mut().blocked.unblock_peer(*p);
        }
        self.blocked_now = want;
        Ok(())
    }

    /// Checks every trusted peer again; disconnects those no longer trusted.
    fn recheck(&mut self) {
        let t = now();
        let mut refuse = Vec::new();
        let mut forget = Vec::new();
        for (peer, st) in &self.peers {
            let Some(h) = &st.hello else { continue };
            if let Err(r) = hello::evaluate(&self.trust, &peer.to_string(), h, t) {
                if st.trusted {
                    refuse.push((*peer, r));
                } else {
                    forget.push(*peer);
                }
            }
        }
        for (peer, r) in refuse {
            self.refuse(peer, r, None);
        }
        // Not connected and no longer trusted: out of the routing table, so
        // that no member learns its address from us and we do not dial it.
        for peer in forget {
            self.swarm.behaviour_mut().kad.inner_mut().remove_peer(&peer);
        }
    }

    fn maintain(&mut self) {
        // Reloading here too means a trust change whose notification was lost
        // (say, the admin API client went away mid-call) still takes effect.
        if let Err(e) = self.reload_trust() {
            tracing::error!(cause = %e, "cannot reload trust records; keeping the previous ones");
        }
        self.recheck();
        self.dial_known();
        self.revocation_round();
        if !self.bootstrapping && self.peers.values().any(|p| p.trusted) {
            self.bootstrapping = self.swarm.behaviour_mut().kad.inner_mut().bootstrap().is_ok();
        }
        // Forget peers that never got accepted and are gone.
        self.peers
            .retain(|_, st| st.hello.is_some() || !st.connections.is_empty());
    }

    /// Dials bootstrap peers and known trusted peers that are not connected.
    fn dial_known(&mut self) {
        let t = now();
        let mut dials: Vec<(PeerId, Vec<Multiaddr>)> = Vec::new();
        for (peer, addr) in &self.bootstrap {
            // A bootstrap peer we know to be revoked or blocked gets no more hellos.
            let refused = self.peers.get(peer).and_then(|st| st.hello.as_ref()).is_some_and(|h| {
                matches!(
                    hello::evaluate(&self.trust, &peer.to_string(), h, t),
                    Err(Refusal::Revoked { .. } | Refusal::Blocked { .. })
                )
            });
            if !refused {
                dials.push((*peer, vec![addr.clone()]));
            }
        }
        for (peer, st) in &self.peers {
            let still_trusted = st
                .hello
                .as_ref()
                .is_some_and(|h| hello::evaluate(&self.trust, &peer.to_string(), h, t).is_ok());
            if still_trusted && !st.addrs.is_empty() {
                dials.push((*peer, st.addrs.clone()));
            }
        }
        for (peer, addrs) in dials {
            self.dial(peer, addrs);
        }
    }

    fn dial(&mut self, peer: PeerId, addrs: Vec<Multiaddr>) {
        if peer == self.local || self.blocked_now.contains(&peer) || self.swarm.is_connected(&peer) {
            return;
        }
        // A peer known to be revoked or blocked is never dialled (and so gets no hello).
        let t = now();
        if self.peers.get(&peer).and_then(|st| st.hello.as_ref()).is_some_and(|h| {
            matches!(
                hello::evaluate(&self.trust, &peer.to_string(), h, t),
                Err(Refusal::Revoked { .. } | Refusal::Blocked { .. })
            )
        }) {
            tracing::debug!(peer = %peer, "not dialling a revoked or blocked peer");
            return;
        }
        let opts = DialOpts::peer_id(peer)
            .addresses(addrs)
            .condition(PeerCondition::DisconnectedAndNotDialing)
            .build();
        if let Err(e) = self.swarm.dial(opts) {
            tracing::debug!(peer = %peer, cause = %e, "dial not started");
        }
    }

    fn check_deadlines(&mut self) {
        self.release_hold_if_done();
        let now_i = Instant::now();
        let late: Vec<PeerId> = self
            .peers
            .iter()
            .filter(|(_, st)| !st.trusted && !st.connections.is_empty() && st.deadline.is_some_and(|d| d <= now_i))
            .map(|(p, _)| *p)
            .collect();
        let secs = self.hello_timeout.as_secs();
        for peer in late {
            self.refuse(peer, Refusal::NoHello { secs }, None);
        }
        for list in self.waiting.values_mut() {
            let (gone, keep): (Vec<Waiting>, Vec<Waiting>) = list.drain(..).partition(|(_, _, _, d)| *d <= now_i);
            *list = keep;
            for (_, _, reply, _) in gone {
                let _ = reply.send(Err(PeerFailure::NotTrusted {
                    secs: SEND_WAIT.as_secs(),
                }));
            }
        }
        self.waiting.retain(|_, l| !l.is_empty());
    }

    fn refuse(&mut self, peer: PeerId, refusal: Refusal, address: Option<String>) {
        let code = refusal.code().to_string();
        // The reason may quote what the peer sent: no control characters, bounded.
        let reason = sanitize(&refusal.to_string());
        let peer_s = peer.to_string();
        let previous = self
            .refused
            .iter()
            .position(|r| r.peer_id == peer_s)
            .and_then(|pos| self.refused.remove(pos));
        let count = previous.as_ref().map_or(1, |r| r.count + 1);
        // A peer retrying in a loop is logged at refusals 1, 2, 4, 8, ...
        if count.is_power_of_two() {
            tracing::warn!(peer = %peer, code = %code, count, "refused peer {peer}: {reason}");
        }
        let st = self.peers.entry(peer).or_default();
        st.trusted = false;
        st.deadline = None;
        let address = address.or_else(|| st.remote.as_ref().map(ToString::to_string));
        self.swarm.behaviour_mut().kad.deny(&peer);
        self.swarm.behaviour_mut().kad.inner_mut().remove_peer(&peer);
        self.swarm.behaviour_mut().gossip.deny(&peer);
        let _ = self.swarm.disconnect_peer_id(peer);
        self.refused.push_front(RefusedEntry {
            peer_id: peer_s,
            code,
            reason,
            address: address.or(previous.and_then(|e| e.address)),
            time: rfc3339(now()),
            count,
        });
        self.refused.truncate(REFUSED_KEPT);
    }

    fn accept(&mut self, peer: PeerId, hello: Hello, accepted: Accepted) {
        let t = now();
        let via = via_text(&accepted.trusted.via);
        let st = self.peers.entry(peer).or_default();
        let first = !st.trusted;
        st.trusted = true;
        st.deadline = None;
        st.last_seen = Some(t);
        st.hello = Some(hello.clone());
        let addrs = st.addrs.clone();
        self.swarm.behaviour_mut().kad.allow(peer);
        self.swarm.behaviour_mut().gossip.allow(peer);
        for a in &addrs {
            self.swarm.behaviour_mut().kad.inner_mut().add_address(&peer, a.clone());
        }
        if first {
            tracing::info!(peer = %peer, via = %via, "peer trusted");
        }
        self.save_known(peer, &hello, &addrs, t);
        self.flush_waiting(peer);
        if first {
            self.wake_engine();
        }
    }

    fn save_known(&self, peer: PeerId, hello: &Hello, addrs: &[Multiaddr], t: i64) {
        let Ok(hello_bytes) = hello.to_bytes() else { return };
        let addrs = addrs.iter().map(ToString::to_string).collect();
        let Ok((key, row)) = known::row(&peer.to_string(), hello_bytes, addrs, t) else {
            return;
        };
        let node = Arc::clone(&self.node);
        tokio::task::spawn_blocking(move || {
            if let Err(e) = known::save(node.store(), &key, &row) {
                tracing::warn!(peer = %peer, cause = %e, "cannot remember the peer");
            }
        });
    }

    fn note_unanswered(&mut self, peer: PeerId, detail: String) {
        tracing::warn!(peer = %peer, "peer {peer} did not accept this node's hello: {detail}");
        self.unanswered.retain(|u| u.peer_id != peer.to_string());
        self.unanswered.push_front(UnansweredEntry {
            peer_id: peer.to_string(),
            detail,
            time: rfc3339(now()),
        });
        self.unanswered.truncate(REFUSED_KEPT);
    }

    fn add_addr(&mut self, peer: PeerId, addr: Multiaddr) {
        let addr: Multiaddr = addr.into_iter().filter(|p| !matches!(p, Protocol::P2p(_))).collect();
        let st = self.peers.entry(peer).or_default();
        if !st.addrs.contains(&addr) {
            // Newest first: dials try it first, and the oldest fall off.
            st.addrs.insert(0, addr.clone());
            st.addrs.truncate(16);
            if st.trusted {
                self.swarm.behaviour_mut().kad.inner_mut().add_address(&peer, addr);
            }
        }
    }

    fn on_event(&mut self, event: SwarmEvent<BehaviourEvent>) {
        match event {
            SwarmEvent::NewListenAddr { address, .. } => {
                let full = address.with(Protocol::P2p(self.local));
                tracing::info!("listening on {full}");
                self.listen.push(full);
            }
            SwarmEvent::ExpiredListenAddr { address, .. } => {
                let full = address.with(Protocol::P2p(self.local));
                self.listen.retain(|a| a != &full);
            }
            SwarmEvent::ConnectionEstablished {
                peer_id,
                connection_id,
                endpoint,
                ..
            } => {
                if endpoint.is_dialer() {
                    self.add_addr(peer_id, endpoint.get_remote_address().clone());
                }
                let deadline = Instant::now() + self.hello_timeout;
                let st = self.peers.entry(peer_id).or_default();
                st.connections.insert(connection_id, Instant::now());
                st.remote = Some(endpoint.get_remote_address().clone());
                if st.trusted {
                    return;
                }
                st.deadline.get_or_insert(deadline);
                if endpoint.is_dialer() && !st.hello_in_flight {
                    st.hello_in_flight = true;
                    let h = self.own_hello.clone();
                    self.swarm.behaviour_mut().hello.send_request(&peer_id, h);
                }
            }
            SwarmEvent::ConnectionClosed {
                peer_id,
                connection_id,
                num_established,
                ..
            } => {
                let st = self.peers.entry(peer_id).or_default();
                st.connections.remove(&connection_id);
                if num_established == 0 {
                    st.connections.clear();
                    st.deadline = None;
                    st.hello_in_flight = false;
                    let was_trusted = st.trusted;
                    if st.trusted {
                        st.trusted = false;
                        tracing::info!(peer = %peer_id, "peer disconnected");
                    }
                    if st.hello.is_none() {
                        // Never accepted: keep nothing (its refusal stays in the bounded list).
                        self.peers.remove(&peer_id);
                    }
                    self.swarm.behaviour_mut().kad.deny(&peer_id);
                    self.swarm.behaviour_mut().gossip.deny(&peer_id);
                    if was_trusted {
                        self.hold_if_alone();
                    }
                }
            }
            SwarmEvent::IncomingConnectionError {
                peer_id: Some(peer),
                error: libp2p::swarm::ListenError::Denied { .. },
                send_back_addr,
                ..
            } => {
                if let Some((_, reason)) = self.trust.blocked.iter().find(|(p, _)| *p == peer.to_string()) {
                    let r = Refusal::Blocked { reason: reason.clone() };
                    self.refuse(peer, r, Some(send_back_addr.to_string()));
                }
            }
            SwarmEvent::OutgoingConnectionError { peer_id, error, .. } => {
                tracing::debug!(peer = ?peer_id, cause = %error, "outgoing connection failed");
            }
            SwarmEvent::Behaviour(ev) => self.on_behaviour(ev),
            _ => {}
        }
    }

    fn on_behaviour(&mut self, ev: BehaviourEvent) {
        match ev {
            BehaviourEvent::Hello(e) => self.on_hello(e),
            BehaviourEvent::Rpc0(e) => self.on_rpc(0, e),
            BehaviourEvent::Rpc1(e) => self.on_rpc(1, e),
            BehaviourEvent::Rpc2(e) => self.on_rpc(2, e),
            BehaviourEvent::Rpc3(e) => self.on_rpc(3, e),
            BehaviourEvent::Gossip(e) => self.on_gossip(e),
            BehaviourEvent::Identify(identify::Event::Received { peer_id, info, .. }) => {
                for a in info.listen_addrs {
                    if is_dialable(&a) {
                        self.add_addr(peer_id, a);
                    }
                }
            }
            BehaviourEvent::Kad(kad::Event::OutboundQueryProgressed {
                result: kad::QueryResult::GetClosestPeers(Ok(ok)),
                ..
            }) => {
                for p in ok.peers {
                    self.dial(p.peer_id, p.addrs);
                }
            }
            BehaviourEvent::Kad(kad::Event::OutboundQueryProgressed {
                result: kad::QueryResult::Bootstrap(_),
                step,
                ..
            }) if step.last => {
                self.bootstrapping = false;
                let local = self.local;
                self.swarm.behaviour_mut().kad.inner_mut().get_closest_peers(local);
            }
            BehaviourEvent::Kad(kad::Event::RoutingUpdated { peer, .. }) => {
                tracing::debug!(peer = %peer, "routing table updated");
            }
            BehaviourEvent::Mdns(mdns::Event::Discovered(list)) => {
                let mut by_peer: HashMap<PeerId, Vec<Multiaddr>> = HashMap::new();
                for (p, a) in list {
                    by_peer.entry(p).or_default().push(a);
                }
                for (p, addrs) in by_peer {
                    tracing::info!(peer = %p, "discovered on the local network");
                    self.dial(p, addrs);
                }
            }
            BehaviourEvent::Ping(ping::Event {
                peer,
                connection,
                result: Err(e),
            }) if !matches!(e, ping::Failure::Unsupported) => {
                // A connection that stops answering is closed (libp2p-ping no
                // longer does it): over TCP nothing else would notice a cut
                // link for the kernel's ~15 minutes of retransmissions, and a
                // transfer on it would stall instead of resuming once the peer
                // is dialled again. (A peer that does not speak ping is left alone.)
                tracing::info!(peer = %peer, cause = %e, "ping failed: closing the connection");
                self.swarm.close_connection(connection);
            }
            BehaviourEvent::Ping(ping::Event {
                peer, result: Err(e), ..
            }) => {
                tracing::debug!(peer = %peer, cause = %e, "ping failed");
            }
            _ => {}
        }
    }

    /// A peer already trusted that says hello again on a new connection has
    /// lost its older ones (it restarted, or its side saw them die): they are
    /// closed now rather than when ping or QUIC's idle timeout notices, so
    /// that no stream (a transfer session's resume) is opened on a dead one.
    /// Connections younger than [`HELLO_RACE`] are left alone: two nodes
    /// dialling each other at once both say hello.
    fn close_stale_connections(&mut self, peer: PeerId, fresh: libp2p::swarm::ConnectionId) {
        let Some(st) = self.peers.get(&peer) else { return };
        if !st.trusted {
            return;
        }
        let now_i = Instant::now();
        let stale: Vec<_> = st
            .connections
            .iter()
            .filter(|(c, since)| **c != fresh && now_i.saturating_duration_since(**since) >= HELLO_RACE)
            .map(|(c, _)| *c)
            .collect();
        if !stale.is_empty() {
            tracing::info!(
                peer = %peer,
                count = stale.len(),
                "peer said hello again on a new connection: closing its older connections"
            );
        }
        for c in stale {
            self.swarm.close_connection(c);
        }
    }

    fn on_hello(&mut self, e: request_response::Event<Hello, Hello>) {
        use request_response::{Event, Message};
        match e {
            Event::Message {
                peer,
                connection_id,
                message: Message::Request { request, channel, .. },
            } => match hello::evaluate(&self.trust, &peer.to_string(), &request, now()) {
                Ok(accepted) => {
                    self.close_stale_connections(peer, connection_id);
                    let answer = self.own_hello.clone();
                    if self.swarm.behaviour_mut().hello.send_response(channel, answer).is_ok()
                        && !self.revocations_on_hello(peer, &request, &accepted.trusted.via)
                    {
                        self.accept(peer, request, accepted);
                    }
                }
                // The channel is dropped: no answer.
                Err(r) => self.refuse(peer, r, None),
            },
            Event::Message {
                peer,
                message: Message::Response { response, .. },
                ..
            } => {
                if let Some(st) = self.peers.get_mut(&peer) {
                    st.hello_in_flight = false;
                }
                match hello::evaluate(&self.trust, &peer.to_string(), &response, now()) {
                    Ok(accepted) => {
                        if !self.revocations_on_hello(peer, &response, &accepted.trusted.via) {
                            self.accept(peer, response, accepted);
                        }
                    }
                    Err(r) => self.refuse(peer, r, None),
                }
            }
            Event::OutboundFailure { peer, error, .. } => {
                if let Some(st) = self.peers.get_mut(&peer) {
                    st.hello_in_flight = false;
                }
                let trusted = self.peers.get(&peer).is_some_and(|s| s.trusted);
                if !trusted {
                    self.note_unanswered(peer, format!("no answer to hello ({error})"));
                    let _ = self.swarm.disconnect_peer_id(peer);
                }
            }
            Event::InboundFailure { peer, error, .. } => {
                tracing::debug!(peer = %peer, cause = %error, "inbound hello failed");
                let trusted = self.peers.get(&peer).is_some_and(|s| s.trusted);
                if !trusted && matches!(error, request_response::InboundFailure::Io(_)) {
                    self.refuse(
                        peer,
                        Refusal::BadHello {
                            detail: error.to_string(),
                        },
                        None,
                    );
                }
            }
            Event::ResponseSent { .. } => {}
        }
    }

    fn wake_engine(&self) {
        // The service holds the other end; a notify with nobody waiting is kept.
        for w in &self.wake {
            w.notify_one();
        }
    }

    /// A request of a registered protocol, or the answer to one of ours.
    fn on_rpc(&mut self, slot: usize, e: request_response::Event<Vec<u8>, Vec<u8>>) {
        use request_response::{Event, Message};
        let Some((name, handler)) = self.protocols.get(slot).map(|(n, h)| (*n, Arc::clone(h))) else {
            return;
        };
        match e {
            Event::Message {
                peer,
                message: Message::Request { request, channel, .. },
                ..
            } => {
                // Zero trust: only a peer accepted now is answered at all (a
                // parked one only what its protocol serves to parked peers).
                let answered = self.is_ready(&peer) || (self.is_parked(&peer) && handler.serves_parked(&request));
                if !answered {
                    tracing::warn!(peer = %peer, protocol = name, "request from a peer that is not trusted: no answer");
                    return;
                }
                match handler.admit(peer, request) {
                    Admit::Answer(answer) => {
                        if let Some(rpc) = self.swarm.behaviour_mut().rpc(slot) {
                            let _ = rpc.send_response(channel, answer);
                        }
                    }
                    Admit::Work(work) => {
                        let internal = self.internal.clone();
                        tokio::spawn(async move {
                            if let Ok(Some(answer)) = tokio::task::spawn_blocking(work).await {
                                let _ = internal.send(Internal::Respond(slot, channel, answer)).await;
                            }
                        });
                    }
                    Admit::Drop => {}
                }
            }
            Event::Message {
                message: Message::Response { request_id, response },
                ..
            } => {
                if let Some(reply) = self.outbound.remove(&(slot, request_id)) {
                    let _ = reply.send(Ok(response));
                }
            }
            Event::OutboundFailure { request_id, error, .. } => {
                if let Some(reply) = self.outbound.remove(&(slot, request_id)) {
                    let _ = reply.send(Err(PeerFailure::NoAnswer(error)));
                }
            }
            Event::InboundFailure { peer, error, .. } => {
                tracing::debug!(peer = %peer, protocol = name, cause = %error, "inbound request failed");
            }
            Event::ResponseSent { .. } => {}
        }
    }

    fn peers_report(&self) -> PeersReport {
        let t = now();
        let mut peers = Vec::new();
        let mut seen = HashSet::new();
        for (peer, st) in &self.peers {
            let Some(h) = &st.hello else { continue };
            let connected = !st.connections.is_empty();
            let mut e = entry_for(&self.trust, &peer.to_string(), h, &st.addrs, connected, st.last_seen, t);
            if connected && !st.trusted {
                e.status = "connected, hello not yet accepted".into();
                e.trusted = false;
            }
            seen.insert(peer.to_string());
            peers.push(e);
        }
        add_bilateral_unmet(&self.trust, &seen, t, &mut peers);
        PeersReport {
            running: true,
            peers,
            refused: self.refused.iter().cloned().collect(),
            unanswered: self.unanswered.iter().cloned().collect(),
        }
    }
}

/// Test builds only (cargo feature `fault-injection`): with
/// `MEDMESH_GOSSIP_TRACE=FILE`, every gossip message this node sends or
/// receives is appended to FILE as a line `sent|received HEX`, so tests can
/// look at exactly what went over the topic.
#[cfg(feature = "fault-injection")]
fn trace_gossip(direction: &str, bytes: &[u8]) {
    use std::io::Write;
    let Ok(path) = std::env::var("MEDMESH_GOSSIP_TRACE") else {
        return;
    };
    if let Ok(mut f) = std::fs::OpenOptions::new().create(true).append(true).open(path) {
        let _ = writeln!(f, "{direction} {}", hex::encode(bytes));
    }
}

impl Service {
    /// A message on the gossip topic: judged by its service (off the
    /// network task) when its sender is accepted now, else ignored.
    fn on_gossip(&mut self, e: gossipsub::Event) {
        let gossipsub::Event::Message {
            propagation_source: source,
            message_id,
            message,
        } = e
        else {
            return;
        };
        #[cfg(feature = "fault-injection")]
        trace_gossip("received", &message.data);
        let handler = self.topic.as_ref().map(|(_, h)| Arc::clone(h));
        let Some(handler) = handler.filter(|_| self.is_ready(&source)) else {
            let _ = self
                .swarm
                .behaviour_mut()
                .gossip
                .inner_mut()
                .report_message_validation_result(&message_id, &source, gossipsub::MessageAcceptance::Ignore);
            return;
        };
        let internal = self.internal.clone();
        tokio::spawn(async move {
            let verdict = tokio::task::spawn_blocking(move || handler.on_message(source, &message.data))
                .await
                .map_or(gossipsub::MessageAcceptance::Ignore, |a| match a {
                    Acceptance::Accept => gossipsub::MessageAcceptance::Accept,
                    Acceptance::Ignore => gossipsub::MessageAcceptance::Ignore,
                    Acceptance::Reject => gossipsub::MessageAcceptance::Reject,
                });
            let _ = internal
                .send(Internal::GossipVerdict(message_id, source, verdict))
                .await;
        });
    }
}

/// Text that may come from a peer, made safe for logs and terminals
/// ([`crate::text::clean`]): at most 300 characters and an ellipsis.
fn sanitize(s: &str) -> String {
    crate::text::clean(s, 301).into_owned()
}

/// Whether an address advertised by a peer is worth dialling (not a
/// wildcard or port 0).
fn is_dialable(a: &Multiaddr) -> bool {
    !a.iter().any(|p| match p {
        Protocol::Ip4(ip) => ip.is_unspecified(),
        Protocol::Ip6(ip) => ip.is_unspecified(),
        Protocol::Tcp(0) | Protocol::Udp(0) => true,
        _ => false,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn peer_text_is_made_safe() {
        let cases = [
            ("plain", "plain"),
            ("a\nb", "a\\nb"),
            ("\u{1b}[31mred", "\\u{1b}[31mred"),
            ("tab\there", "tab\\there"),
        ];
        for (input, want) in cases {
            assert_eq!(sanitize(input), want, "{input:?}");
        }
        let long = "x".repeat(10_000);
        let s = sanitize(&long);
        assert_eq!(s.chars().count(), 301, "300 characters and an ellipsis");
    }

    #[test]
    fn dialable_addresses() {
        for (a, want) in [
            ("/ip4/10.0.0.1/tcp/7460", true),
            ("/ip4/0.0.0.0/tcp/7460", false),
            ("/ip4/10.0.0.1/tcp/0", false),
            ("/ip6/::/udp/7460/quic-v1", false),
            ("/dns4/example.org/tcp/7460", true),
        ] {
            assert_eq!(is_dialable(&a.parse().unwrap()), want, "{a}");
        }
    }
}
