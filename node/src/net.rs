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

pub mod codec;
pub mod gate;
pub mod hello;
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
use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, oneshot, watch};

use self::codec::CborCodec;
use self::gate::Gate;
use self::hello::{Accepted, Hello};
use crate::cbor;
use crate::config::NetworkConfig;
use crate::home::{HomeError, Node, rfc3339};
use crate::ledger::sync::{SyncRequest, SyncResponse};
use crate::transfer::wire::{Answer as TransferAnswer, Msg as TransferMsg};
use crate::trust::{Refusal, TrustState, Via};

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
/// Trust-store key prefix of peers met (their last accepted hello).
const KNOWN_PREFIX: &str = "known/";

/// Errors of the network.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum NetError {
    /// The home could not be read (trust records, identity).
    #[error(transparent)]
    Home(#[from] HomeError),
    /// The swarm could not be built.
    #[error("cannot start the network: {0}")]
    Build(String),
    /// A listen address could not be used.
    #[error("cannot listen on {addr}: {reason}")]
    Listen {
        /// The address.
        addr: String,
        /// Why.
        reason: String,
    },
    /// The network task has stopped.
    #[error("the network task has stopped")]
    Stopped,
    /// A peer could not be reached or did not answer.
    #[error("peer {peer}: {reason}")]
    Peer {
        /// The peer.
        peer: String,
        /// Why.
        reason: String,
    },
    /// The trust records could not be read again.
    #[error("the running node could not reload its trust records: {0}")]
    Reload(String),
}

/// A trusted (or once trusted) peer, for `medmesh peers`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PeerEntry {
    /// Peer id.
    pub peer_id: String,
    /// Institution.
    pub institution: String,
    /// Jurisdiction.
    pub jurisdiction: String,
    /// How it is trusted: `consortium <id> serial <n>` or `bilateral`.
    pub via: String,
    /// Purposes it is trusted for.
    pub purposes: Vec<consent_schema::Purpose>,
    /// Addresses known for it.
    pub addresses: Vec<String>,
    /// Connected now.
    pub connected: bool,
    /// Trusted now (certificate or bilateral trust valid, not revoked or blocked).
    pub trusted: bool,
    /// `trusted`, or why not any more.
    pub status: String,
    /// When its certificate or bilateral trust ends (RFC 3339), if it does.
    pub expires: Option<String>,
    /// Last accepted hello (RFC 3339).
    pub last_seen: Option<String>,
}

/// A peer this node refused.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RefusedEntry {
    /// Peer id.
    pub peer_id: String,
    /// Stable reason code (`expired`, `revoked`, `blocked`, ...).
    pub code: String,
    /// The reason, as a sentence.
    pub reason: String,
    /// The address it connected from or was dialled at.
    pub address: Option<String>,
    /// Last refusal (RFC 3339).
    pub time: String,
    /// Refusals since the node started.
    pub count: u64,
}

/// A peer that did not answer this node's hello (it does not trust this node,
/// or is not a medmesh node).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UnansweredEntry {
    /// Peer id.
    pub peer_id: String,
    /// What happened.
    pub detail: String,
    /// When (RFC 3339).
    pub time: String,
}

/// What `medmesh peers` shows.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PeersReport {
    /// Whether the node is running (else `connected` is false everywhere and
    /// the refusal lists are empty).
    pub running: bool,
    /// Trusted and once-trusted peers.
    pub peers: Vec<PeerEntry>,
    /// Peers refused recently, most recent first.
    pub refused: Vec<RefusedEntry>,
    /// Peers that did not answer our hello recently, most recent first.
    pub unanswered: Vec<UnansweredEntry>,
}

/// What `medmesh status` shows about the running node's network.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NetStatus {
    /// Peer id.
    pub peer_id: String,
    /// Addresses the node listens on, each ending in `/p2p/<peer id>`.
    pub listen: Vec<String>,
    /// Peers connected and trusted.
    pub trusted_connected: u64,
    /// Connections, all peers.
    pub connections: u64,
    /// Started at (RFC 3339).
    pub started: String,
}

/// Commands to the network task.
#[derive(Debug)]
enum Command {
    Peers(oneshot::Sender<PeersReport>),
    Status(oneshot::Sender<NetStatus>),
    TrustChanged(oneshot::Sender<Result<(), String>>),
    /// Send a `/medmesh/transfer/1` message once the peer is connected and trusted.
    Transfer(PeerId, TransferMsg, oneshot::Sender<Result<TransferAnswer, String>>),
    /// Whether a peer is connected and trusted now.
    Ready(PeerId, oneshot::Sender<bool>),
    /// Dial a known peer.
    Dial(PeerId),
}

/// Work finished off the network task, handed back to it.
enum Internal {
    Respond(request_response::ResponseChannel<TransferAnswer>, TransferAnswer),
    /// Answer a ledger sync request.
    LedgerRespond(request_response::ResponseChannel<SyncResponse>, SyncResponse),
    /// Send a ledger sync request (the ranges a heads answer showed missing).
    LedgerSend(PeerId, SyncRequest),
    /// A ledger exchange with a peer is over.
    LedgerDone(PeerId),
    /// A peer served invalid entries of this author's feed.
    LedgerInvalid(PeerId, Vec<u8>),
    /// A revocation catch-up exchange with a peer is over.
    RevocationsDone(PeerId),
    /// The verdict on a gossip message, and the ranges to ask its sender for.
    GossipVerdict(
        gossipsub::MessageId,
        PeerId,
        gossipsub::MessageAcceptance,
        Vec<SyncRequest>,
    ),
}

/// A handle on the running network task.
#[derive(Debug, Clone)]
pub struct NetHandle {
    tx: mpsc::Sender<Command>,
    wake: Arc<tokio::sync::Notify>,
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

    /// Sends a `/medmesh/transfer/1` message to `peer` (dialling it and
    /// waiting until it is trusted, at most [`SEND_WAIT`]) and returns the answer.
    ///
    /// # Errors
    /// [`NetError::Stopped`]; [`NetError::Peer`] when the peer cannot be
    /// reached or did not answer.
    pub async fn transfer_message(&self, peer: PeerId, msg: TransferMsg) -> Result<TransferAnswer, NetError> {
        self.ask(|tx| Command::Transfer(peer, msg, tx))
            .await?
            .map_err(|reason| NetError::Peer {
                peer: peer.to_string(),
                reason,
            })
    }

    /// Whether `peer` is connected and trusted now.
    pub async fn is_ready(&self, peer: PeerId) -> bool {
        self.ask(|tx| Command::Ready(peer, tx)).await.unwrap_or(false)
    }

    /// Dials `peer` at its known addresses (no-op when connected).
    pub async fn dial(&self, peer: PeerId) {
        let _ = self.tx.send(Command::Dial(peer)).await;
    }

    /// Wakes the transfer engine (a transfer was granted or approved).
    pub fn wake_transfers(&self) {
        self.wake.notify_one();
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
    transfer: request_response::Behaviour<CborCodec<TransferMsg, TransferAnswer>>,
    ledger: request_response::Behaviour<CborCodec<SyncRequest, SyncResponse>>,
    gossip: Gate<gossipsub::Behaviour>,
    stream: libp2p_stream::Behaviour,
}

/// Events a gossip peer may send before its hello is accepted (its
/// subscriptions, as a connection opens), held until then, and for how many
/// undecided peers at once: at most 4 × 32 messages of at most
/// [`crate::ledger::gossip::MAX_GOSSIP`] bytes (about 25 MiB) whoever connects.
const GOSSIP_HELD: usize = 4;
const GOSSIP_HELD_PEERS: usize = 32;

/// The ledger's gossipsub: messages are self-authenticating (signed
/// entries and witnesses), so gossipsub adds no signature of its own; a
/// message is named by the BLAKE3 of its bytes, and every message is
/// judged by the node before it is passed on.
fn ledger_gossip() -> Result<gossipsub::Behaviour, String> {
    let config = gossipsub::ConfigBuilder::default()
        .validation_mode(gossipsub::ValidationMode::Anonymous)
        .message_id_fn(|m: &gossipsub::Message| gossipsub::MessageId::from(blake3::hash(&m.data).as_bytes().to_vec()))
        .max_transmit_size(crate::ledger::gossip::MAX_GOSSIP + 4096)
        .validate_messages()
        .heartbeat_interval(Duration::from_millis(700))
        .build()
        .map_err(|e| e.to_string())?;
    gossipsub::Behaviour::new(gossipsub::MessageAuthenticity::Anonymous, config).map_err(ToString::to_string)
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

fn build_swarm(node: &Node, cfg: &NetworkConfig) -> Result<Swarm<Behaviour>, NetError> {
    let keypair = node.identity().libp2p_keypair().map_err(HomeError::from)?;
    let hello_timeout = Duration::from_secs(cfg.hello_timeout_secs);
    let mdns_on = cfg.mdns;
    let swarm = libp2p::SwarmBuilder::with_existing_identity(keypair)
        .with_tokio()
        .with_tcp(tcp::Config::default(), noise::Config::new, yamux::Config::default)
        .map_err(|e| NetError::Build(e.to_string()))?
        .with_quic()
        .with_dns()
        .map_err(|e| NetError::Build(format!("DNS resolver: {e}")))?
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
                transfer: cbor_protocol(crate::transfer::wire::PROTOCOL, Duration::from_secs(60), 32),
                ledger: cbor_protocol(crate::ledger::sync::SYNC_PROTOCOL, Duration::from_secs(30), 16),
                gossip: Gate::holding(ledger_gossip()?, GOSSIP_HELD, GOSSIP_HELD_PEERS),
                stream: libp2p_stream::Behaviour::new(),
            })
        })
        .map_err(|e| NetError::Build(e.to_string()))?
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

#[derive(Serialize, Deserialize)]
struct KnownRow {
    v: u32,
    #[serde(with = "serde_bytes")]
    hello: Vec<u8>,
    addrs: Vec<String>,
    last_seen: i64,
}

/// A peer accepted before: its last hello, addresses, when.
type Known = (PeerId, Hello, Vec<Multiaddr>, i64);

/// The peers this node accepted before (from the trust store), with their addresses.
fn load_known(node: &Node) -> Result<Vec<Known>, HomeError> {
    let mut out = Vec::new();
    for (key, bytes) in node.store().trust_records(KNOWN_PREFIX)? {
        let parsed = cbor::decode::<KnownRow>("known peer", &bytes, hello::MAX_HELLO * 2)
            .ok()
            .and_then(|row| {
                let peer: PeerId = key.trim_start_matches(KNOWN_PREFIX).parse().ok()?;
                let hello = Hello::from_bytes(&row.hello).ok()?;
                let addrs = row.addrs.iter().filter_map(|a| a.parse().ok()).collect();
                Some((peer, hello, addrs, row.last_seen))
            });
        match parsed {
            Some(p) => out.push(p),
            None => tracing::warn!(record = %key, "skipping a damaged known-peer record"),
        }
    }
    Ok(out)
}

/// The last hello a peer presented (from its `known/` row), else a hello
/// made of its bilateral node record in `state`; `None` for a peer this node
/// has never met and does not trust directly.
///
/// # Errors
/// Store errors.
pub fn peer_hello(node: &Node, state: &TrustState, peer: &str) -> Result<Option<Hello>, HomeError> {
    if let Some(bytes) = node.store().trust_get(&format!("{KNOWN_PREFIX}{peer}"))?
        && let Ok(row) = cbor::decode::<KnownRow>("known peer", &bytes, hello::MAX_HELLO * 2)
        && let Ok(h) = Hello::from_bytes(&row.hello)
    {
        return Ok(Some(h));
    }
    Ok(state
        .bilateral
        .iter()
        .find(|b| b.record.record().peer_id == peer)
        .and_then(|b| b.record.envelope().to_bytes().ok())
        .map(|record| Hello::new(record, Vec::new())))
}

use crate::home::trust::now;

fn via_text(via: &Via) -> String {
    match via {
        Via::Consortium { consortium, serial } => format!("consortium {consortium} serial {serial}"),
        Via::Bilateral => "bilateral".into(),
    }
}

/// The peers report of a home whose node is not running: bilateral peers and
/// the peers met before, with trust decided now.
///
/// # Errors
/// Store errors.
pub fn offline_peers(node: &Node) -> Result<PeersReport, HomeError> {
    let state = node.trust_state()?;
    let t = now();
    let mut peers = Vec::new();
    let mut seen = HashSet::new();
    for (peer, hello, addrs, last_seen) in load_known(node)? {
        let peer_s = peer.to_string();
        seen.insert(peer_s.clone());
        peers.push(entry_for(&state, &peer_s, &hello, &addrs, false, Some(last_seen), t));
    }
    add_bilateral_unmet(&state, &seen, t, &mut peers);
    Ok(PeersReport {
        running: false,
        peers,
        refused: Vec::new(),
        unanswered: Vec::new(),
    })
}

/// Adds the bilaterally trusted peers not in `seen` (never met), then sorts
/// the list by institution.
fn add_bilateral_unmet(state: &TrustState, seen: &HashSet<String>, t: i64, peers: &mut Vec<PeerEntry>) {
    for b in &state.bilateral {
        let r = b.record.record();
        if seen.contains(&r.peer_id) {
            continue;
        }
        let hello = Hello::new(b.record.envelope().to_bytes().unwrap_or_default(), Vec::new());
        peers.push(entry_for(state, &r.peer_id, &hello, &[], false, None, t));
    }
    peers.sort_by(|a, b| a.institution.cmp(&b.institution).then(a.peer_id.cmp(&b.peer_id)));
}

fn entry_for(
    state: &TrustState,
    peer: &str,
    hello: &Hello,
    addrs: &[Multiaddr],
    connected: bool,
    last_seen: Option<i64>,
    t: i64,
) -> PeerEntry {
    let record = crate::identity::VerifiedNodeRecord::from_bytes(&hello.record).ok();
    let (institution, jurisdiction) = record
        .as_ref()
        .map(|r| (r.record().institution.clone(), r.record().jurisdiction.clone()))
        .unwrap_or_default();
    let mut e = PeerEntry {
        peer_id: peer.to_string(),
        institution,
        jurisdiction,
        via: String::new(),
        purposes: Vec::new(),
        addresses: addrs.iter().map(ToString::to_string).collect(),
        connected,
        trusted: false,
        status: String::new(),
        expires: None,
        last_seen: last_seen.map(rfc3339),
    };
    match hello::evaluate(state, peer, hello, t) {
        Ok(a) => {
            e.via = via_text(&a.trusted.via);
            e.purposes = a.trusted.purposes;
            e.expires = a.trusted.until.map(rfc3339);
            e.trusted = true;
            e.status = "trusted".into();
        }
        Err(r) => {
            e.status = format!("not trusted: {r} [{}]", r.code());
        }
    }
    e
}

/// Starts the network for `node`: listens, dials the bootstrap and known
/// peers, and runs until `shutdown` turns true. Returns the handle and the
/// task.
///
/// # Errors
/// [`NetError`] when the swarm cannot be built, an address cannot be
/// listened on, or the trust records cannot be read.
pub async fn start(
    node: Arc<Node>,
    shutdown: watch::Receiver<bool>,
) -> Result<(NetHandle, tokio::task::JoinHandle<()>), NetError> {
    let cfg = node.config().network.clone();
    let mut swarm = build_swarm(&node, &cfg)?;
    let listen = cfg.listen_addrs().map_err(|reason| NetError::Listen {
        addr: "network.listen".into(),
        reason,
    })?;
    for addr in listen {
        swarm.listen_on(addr.clone()).map_err(|e| NetError::Listen {
            addr: addr.to_string(),
            reason: e.to_string(),
        })?;
    }
    let bootstrap = cfg.bootstrap_peers().map_err(|reason| NetError::Listen {
        addr: "network.bootstrap".into(),
        reason,
    })?;
    let (tx, rx) = mpsc::channel(32);
    let (internal_tx, internal_rx) = mpsc::channel(64);
    let wake = Arc::new(tokio::sync::Notify::new());
    let control = swarm.behaviour().stream.new_control();
    swarm
        .behaviour_mut()
        .gossip
        .inner_mut()
        .subscribe(&gossipsub::IdentTopic::new(crate::ledger::gossip::TOPIC))
        .map_err(|e| NetError::Build(format!("ledger gossip topic: {e}")))?;
    let ledger_watch = node.ledger_watch();
    let published = *ledger_watch.borrow();
    let requests = crate::limits::RequestLimiter::new(&node.config().limits);
    let mut service = Service {
        internal: internal_tx,
        wake: Some(Arc::clone(&wake)),
        waiting: HashMap::new(),
        outbound: HashMap::new(),
        ledger_pending: HashMap::new(),
        ledger_busy: HashSet::new(),
        ledger_shunned: HashMap::new(),
        published,
        witnessed: Vec::new(),
        witnessed_at: None,
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
        requests,
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
    let engine_shutdown = shutdown.clone();
    let engine_node = Arc::clone(&service.node);
    let task = tokio::spawn(service.run(rx, internal_rx, shutdown));
    let handle = NetHandle {
        tx,
        wake: Arc::clone(&wake),
    };
    let engine = crate::transfer::engine::start(engine_node, handle.clone(), control, wake, engine_shutdown);
    let task = tokio::spawn(async move {
        let _ = task.await;
        engine.abort();
    });
    Ok((handle, task))
}

/// A transfer message waiting for its peer.
type Waiting = (TransferMsg, oneshot::Sender<Result<TransferAnswer, String>>, Instant);

struct Service {
    internal: mpsc::Sender<Internal>,
    wake: Option<Arc<tokio::sync::Notify>>,
    waiting: HashMap<PeerId, Vec<Waiting>>,
    outbound: HashMap<request_response::OutboundRequestId, oneshot::Sender<Result<TransferAnswer, String>>>,
    /// Ledger sync requests in flight, by request.
    ledger_pending: HashMap<request_response::OutboundRequestId, (PeerId, Option<Vec<u8>>)>,
    /// Peers with a ledger exchange under way (one at a time per peer).
    ledger_busy: HashSet<PeerId>,
    /// Peers that served invalid entries of a feed: not asked for it again
    /// until the instant, then with the delay doubled if they do again.
    ledger_shunned: HashMap<(PeerId, Vec<u8>), (Instant, Duration)>,
    /// The seq of this node's last entry published on the gossip topic.
    published: u64,
    /// The heads of the last witness published, and when.
    witnessed: Vec<crate::ledger::sync::Head>,
    witnessed_at: Option<Instant>,
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
    /// Transfer requests per peer (`[limits]`).
    requests: crate::limits::RequestLimiter,
    /// Applied revocations as last loaded (hello summaries, what was published).
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
        let mut ledger_watch = self.node.ledger_watch();
        let mut trust_watch = self.node.trust_watch();
        let mut witness_tick = tokio::time::interval(WITNESS_EVERY);
        let mut tick = tokio::time::interval(Duration::from_millis(500));
        let mut maintenance = tokio::time::interval(self.maintenance);
        let mut ledger_tick = tokio::time::interval(LEDGER_SYNC);
        loop {
            tokio::select! {
                event = self.swarm.select_next_some() => self.on_event(event),
                cmd = rx.recv() => match cmd {
                    Some(cmd) => self.on_command(cmd),
                    None => break,
                },
                Some(msg) = internal.recv() => match msg {
                    Internal::Respond(channel, answer) => {
                        let _ = self.swarm.behaviour_mut().transfer.send_response(channel, answer);
                    }
                    Internal::LedgerRespond(channel, answer) => {
                        let _ = self.swarm.behaviour_mut().ledger.send_response(channel, answer);
                    }
                    Internal::LedgerSend(peer, req) => self.ledger_request(peer, req),
                    Internal::LedgerDone(peer) => {
                        self.ledger_busy.remove(&peer);
                    }
                    Internal::LedgerInvalid(peer, author) if self.ledger_shunned.len() < MAX_SHUNNED => {
                        let delay = self
                            .ledger_shunned
                            .get(&(peer, author.clone()))
                            .map_or(SHUN_FIRST, |(_, d)| (*d * 2).min(SHUN_MAX));
                        tracing::debug!(peer = %peer, secs = delay.as_secs(), "a peer served invalid ledger entries: not asked for that feed for a while");
                        self.ledger_shunned.insert((peer, author), (Instant::now() + delay, delay));
                    }
                    Internal::LedgerInvalid(..) => {}
                    Internal::RevocationsDone(peer) => self.revocations_done(peer),
                    Internal::GossipVerdict(id, source, verdict, follow) => {
                        let _ = self
                            .swarm
                            .behaviour_mut()
                            .gossip
                            .inner_mut()
                            .report_message_validation_result(&id, &source, verdict);
                        for r in follow {
                            self.ledger_request(source, r);
                        }
                    }
                },
                Ok(()) = ledger_watch.changed() => self.publish_own(),
                // A revocation was applied (by the admin or from a peer): same as a trust change.
                Ok(()) = trust_watch.changed() => {
                    let _ = self.trust_reloaded();
                }
                _ = witness_tick.tick() => self.publish_witness(),
                _ = ledger_tick.tick() => self.ledger_round(),
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
            Command::Transfer(peer, msg, tx) => {
                if self.is_ready(&peer) {
                    let id = self.swarm.behaviour_mut().transfer.send_request(&peer, msg);
                    self.outbound.insert(id, tx);
                } else {
                    self.waiting
                        .entry(peer)
                        .or_default()
                        .push((msg, tx, Instant::now() + SEND_WAIT));
                    self.dial_peer(peer);
                }
            }
            Command::Ready(peer, tx) => {
                let _ = tx.send(self.is_ready(&peer));
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

    /// Sends the messages that waited for `peer` to be trusted.
    fn flush_waiting(&mut self, peer: PeerId) {
        for (msg, tx, _) in self.waiting.remove(&peer).unwrap_or_default() {
            let id = self.swarm.behaviour_mut().transfer.send_request(&peer, msg);
            self.outbound.insert(id, tx);
        }
    }

    /// Reloads trust, checks connected peers again (disconnecting those no
    /// longer trusted) and dials the known ones.
    fn trust_reloaded(&mut self) -> Result<(), String> {
        let result = self.reload_trust().map_err(|e| {
            tracing::error!(cause = %e, "cannot reload trust records; keeping the previous ones");
            e.to_string()
        });
        self.recheck();
        self.dial_known();
        result
    }

    /// Reads the trust records again, rebuilds this node's hello and the
    /// connection-level block list; publishes revocations applied since.
    fn reload_trust(&mut self) -> Result<(), HomeError> {
        let trust = self.node.trust_state()?;
        let certs = self
            .node
            .own_certificates()?
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
        // Pauses that ran out are forgotten (a pause doubles only while the peer keeps at it).
        let now_i = Instant::now();
        self.ledger_shunned.retain(|_, (until, delay)| *until + *delay > now_i);
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
            let (gone, keep): (Vec<Waiting>, Vec<Waiting>) = list.drain(..).partition(|(_, _, d)| *d <= now_i);
            *list = keep;
            for (_, tx, _) in gone {
                let _ = tx.send(Err(format!(
                    "not connected and trusted within {} s (is it running, reachable and trusting this node?)",
                    SEND_WAIT.as_secs()
                )));
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
        let row = KnownRow {
            v: 1,
            hello: hello_bytes,
            addrs: addrs.iter().map(ToString::to_string).collect(),
            last_seen: t,
        };
        let Ok(bytes) = cbor::encode("known peer", &row) else {
            return;
        };
        let node = Arc::clone(&self.node);
        let key = format!("{KNOWN_PREFIX}{peer}");
        tokio::task::spawn_blocking(move || {
            if let Err(e) = node.store().trust_put(&key, &bytes) {
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
            BehaviourEvent::Transfer(e) => self.on_transfer(e),
            BehaviourEvent::Ledger(e) => self.on_ledger(e),
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
        // The engine holds the other end; a notify with nobody waiting is kept.
        if let Some(w) = &self.wake {
            w.notify_one();
        }
    }

    fn on_transfer(&mut self, e: request_response::Event<TransferMsg, TransferAnswer>) {
        use request_response::{Event, Message};
        match e {
            Event::Message {
                peer,
                message: Message::Request { request, channel, .. },
                ..
            } => {
                // Zero trust: only a peer accepted now is answered at all.
                if !self.is_ready(&peer) {
                    tracing::warn!(peer = %peer, "transfer message from a peer that is not trusted: no answer");
                    return;
                }
                // Over its request rate: answered at once, nothing recorded.
                if let Some(body) = self.requests.admit(&peer.to_string(), &request.body, Instant::now()) {
                    tracing::warn!(peer = %peer, "transfer request over the peer's rate: answered retry-later");
                    let answer = TransferAnswer {
                        v: crate::transfer::wire::WIRE_VERSION,
                        body,
                    };
                    let _ = self.swarm.behaviour_mut().transfer.send_response(channel, answer);
                    return;
                }
                let node = Arc::clone(&self.node);
                let internal = self.internal.clone();
                let wake = self.wake.clone();
                tokio::spawn(async move {
                    let peer_s = peer.to_string();
                    let answer = tokio::task::spawn_blocking(move || answer_transfer(&node, &peer_s, request)).await;
                    let body = match answer {
                        Ok(Ok(b)) => b,
                        Ok(Err(e)) => {
                            tracing::error!(peer = %peer, cause = %e, "cannot answer a transfer message");
                            crate::transfer::wire::AnswerBody::Refused {
                                code: "internal".into(),
                                text: "the holder could not decide; try again later".into(),
                            }
                        }
                        Err(_) => return,
                    };
                    let granted = matches!(body, crate::transfer::wire::AnswerBody::Granted { .. });
                    let answer = TransferAnswer {
                        v: crate::transfer::wire::WIRE_VERSION,
                        body,
                    };
                    let _ = internal.send(Internal::Respond(channel, answer)).await;
                    if granted && let Some(w) = wake {
                        w.notify_one();
                    }
                });
            }
            Event::Message {
                message: Message::Response { request_id, response },
                ..
            } => {
                if let Some(tx) = self.outbound.remove(&request_id) {
                    let _ = tx.send(Ok(response));
                }
            }
            Event::OutboundFailure { request_id, error, .. } => {
                if let Some(tx) = self.outbound.remove(&request_id) {
                    let _ = tx.send(Err(format!("no answer: {error}")));
                }
            }
            Event::InboundFailure { peer, error, .. } => {
                tracing::debug!(peer = %peer, cause = %error, "inbound transfer message failed");
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

/// How often a node compares feed heads with each trusted peer.
const LEDGER_SYNC: Duration = Duration::from_secs(2);
/// How long a peer that served invalid entries of a feed is not asked for
/// it again, the first time; doubled each time after, up to [`SHUN_MAX`].
const SHUN_FIRST: Duration = Duration::from_secs(30);
/// The longest such pause.
const SHUN_MAX: Duration = Duration::from_secs(15 * 60);
/// Most (peer, feed) pauses remembered.
const MAX_SHUNNED: usize = 4096;
/// How often a node countersigns the feed heads it holds, when they changed.
const WITNESS_EVERY: Duration = Duration::from_secs(3);
/// How often it does so even when they did not (for peers that joined since).
const WITNESS_AGAIN: Duration = Duration::from_secs(60);

/// Test builds only (cargo feature `fault-injection`): with
/// `MEDMESH_GOSSIP_TRACE=FILE`, every ledger gossip message this node sends
/// or receives is appended to FILE as a line `sent|received HEX`, so tests can
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

/// Sync requests for ranges (author key, first seq, how many).
fn ranges(r: Vec<(Vec<u8>, u64, u64)>) -> Vec<SyncRequest> {
    r.into_iter()
        .map(|(author, from, limit)| SyncRequest::Range {
            v: crate::ledger::LEDGER_VERSION,
            author,
            from,
            limit,
        })
        .collect()
}

impl Service {
    fn gossip_publish(&mut self, msg: &crate::ledger::gossip::GossipMsg) {
        let bytes = match msg.to_bytes() {
            Ok(b) => b,
            Err(e) => {
                tracing::warn!(cause = %e, "ledger gossip message not encoded");
                return;
            }
        };
        #[cfg(feature = "fault-injection")]
        trace_gossip("sent", &bytes);
        let topic = gossipsub::IdentTopic::new(crate::ledger::gossip::TOPIC);
        match self.swarm.behaviour_mut().gossip.inner_mut().publish(topic, bytes) {
            Ok(_) => {}
            // Nobody to tell now: catch-up by feed heads brings it to them later.
            Err(gossipsub::PublishError::NoPeersSubscribedToTopic | gossipsub::PublishError::Duplicate) => {}
            Err(e) => tracing::debug!(cause = %e, "ledger gossip not published"),
        }
    }

    /// Publishes this node's entries written since the last published.
    fn publish_own(&mut self) {
        let head = *self.node.ledger_watch().borrow();
        let own = self.node.identity().ed25519_public();
        while self.published < head {
            let batch = match self
                .node
                .ledger_range(&own, self.published + 1, crate::ledger::sync::BATCH)
            {
                Ok(b) if !b.is_empty() => b,
                Ok(_) => break,
                Err(e) => {
                    tracing::warn!(cause = %e, "own ledger entries not read for gossip");
                    return;
                }
            };
            for bytes in batch {
                self.published += 1;
                self.gossip_publish(&crate::ledger::gossip::GossipMsg::Entry {
                    v: crate::ledger::LEDGER_VERSION,
                    entry: serde_bytes::ByteBuf::from(bytes),
                });
            }
        }
        self.published = self.published.max(head);
    }

    /// Countersigns the feed heads held here, when they changed (or every
    /// [`WITNESS_AGAIN`]), on the gossip topic.
    fn publish_witness(&mut self) {
        let heads = match self.node.ledger_heads() {
            Ok(h) => h,
            Err(e) => {
                tracing::warn!(cause = %e, "ledger heads not read for a witness");
                return;
            }
        };
        let stale = self.witnessed_at.is_none_or(|t| t.elapsed() >= WITNESS_AGAIN);
        if heads.is_empty() || (heads == self.witnessed && !stale) {
            return;
        }
        let mut mine = heads.clone();
        mine.truncate(crate::ledger::gossip::MAX_WITNESS_HEADS);
        match crate::ledger::gossip::make_witness(self.node.identity(), now(), mine) {
            Ok(w) => {
                self.gossip_publish(&crate::ledger::gossip::GossipMsg::Witness {
                    v: crate::ledger::LEDGER_VERSION,
                    witness: serde_bytes::ByteBuf::from(w.bytes),
                });
                self.witnessed = heads;
                self.witnessed_at = Some(Instant::now());
            }
            Err(e) => tracing::warn!(cause = %e, "witness not made"),
        }
    }

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
        if !self.is_ready(&source) {
            let _ = self
                .swarm
                .behaviour_mut()
                .gossip
                .inner_mut()
                .report_message_validation_result(&message_id, &source, gossipsub::MessageAcceptance::Ignore);
            return;
        }
        let (node, internal) = (Arc::clone(&self.node), self.internal.clone());
        tokio::spawn(async move {
            let from = source.to_string();
            let outcome = tokio::task::spawn_blocking(move || node.ledger_gossip(&from, &message.data)).await;
            let (verdict, follow) = match outcome {
                Ok(Ok(o)) => (
                    match o.verdict {
                        crate::home::ledger::Verdict::Accept => gossipsub::MessageAcceptance::Accept,
                        crate::home::ledger::Verdict::Ignore => gossipsub::MessageAcceptance::Ignore,
                        crate::home::ledger::Verdict::Reject => gossipsub::MessageAcceptance::Reject,
                    },
                    ranges(o.follow),
                ),
                Ok(Err(e)) => {
                    tracing::warn!(peer = %source, cause = %e, "ledger gossip not taken");
                    (gossipsub::MessageAcceptance::Ignore, Vec::new())
                }
                Err(_) => (gossipsub::MessageAcceptance::Ignore, Vec::new()),
            };
            let _ = internal
                .send(Internal::GossipVerdict(message_id, source, verdict, follow))
                .await;
        });
    }

    /// Asks every trusted peer not already in an exchange for its feed heads.
    fn ledger_round(&mut self) {
        let ready: Vec<PeerId> = self
            .peers
            .iter()
            .filter(|(p, st)| st.trusted && !st.connections.is_empty() && !self.ledger_busy.contains(p))
            .map(|(p, _)| *p)
            .collect();
        for peer in ready {
            self.ledger_busy.insert(peer);
            let id = self.swarm.behaviour_mut().ledger.send_request(
                &peer,
                SyncRequest::Heads {
                    v: crate::ledger::LEDGER_VERSION,
                },
            );
            self.ledger_pending.insert(id, (peer, None));
        }
    }

    /// Sends a ledger sync request to `peer` when it is connected and
    /// trusted, and not shunned for the feed asked for.
    fn ledger_request(&mut self, peer: PeerId, req: SyncRequest) {
        let author = match &req {
            SyncRequest::Range { author, .. } => Some(author.clone()),
            SyncRequest::Heads { .. } | SyncRequest::Revocations { .. } => None,
        };
        if let Some(a) = &author
            && self
                .ledger_shunned
                .get(&(peer, a.clone()))
                .is_some_and(|(until, _)| Instant::now() < *until)
        {
            return;
        }
        if self.is_ready(&peer) {
            let id = self.swarm.behaviour_mut().ledger.send_request(&peer, req);
            self.ledger_pending.insert(id, (peer, author));
        }
    }

    fn on_ledger(&mut self, e: request_response::Event<SyncRequest, SyncResponse>) {
        use request_response::{Event, Message};
        let v = crate::ledger::LEDGER_VERSION;
        match e {
            Event::Message {
                peer,
                message: Message::Request { request, channel, .. },
                ..
            } => {
                if !self.is_ready(&peer) && !self.answers_parked(&peer, &request) {
                    tracing::warn!(peer = %peer, "ledger request from a peer that is not trusted: no answer");
                    return;
                }
                let (node, internal) = (Arc::clone(&self.node), self.internal.clone());
                tokio::spawn(async move {
                    let answer = tokio::task::spawn_blocking(move || match request {
                        SyncRequest::Heads { .. } => node.ledger_heads().map(|heads| SyncResponse::Heads { v, heads }),
                        SyncRequest::Range {
                            author, from, limit, ..
                        } => node.ledger_range(&author, from, limit).and_then(|e| {
                            Ok(SyncResponse::Entries {
                                v,
                                entries: e.into_iter().map(serde_bytes::ByteBuf::from).collect(),
                                credentials: node.ledger_credentials(&author)?.map(serde_bytes::ByteBuf::from),
                            })
                        }),
                        SyncRequest::Revocations { consortium, digest, .. } => node
                            .revocations_for_peer(&consortium, &digest)
                            .map(|r| SyncResponse::Revocations {
                                v,
                                consortium,
                                revocations: r.into_iter().map(serde_bytes::ByteBuf::from).collect(),
                            }),
                    })
                    .await;
                    let answer = match answer {
                        Ok(Ok(a)) => a,
                        Ok(Err(e)) => {
                            tracing::warn!(peer = %peer, cause = %e, "cannot answer a ledger request");
                            SyncResponse::Refused {
                                v,
                                text: "the node could not answer; try again later".into(),
                            }
                        }
                        Err(_) => return,
                    };
                    let _ = internal.send(Internal::LedgerRespond(channel, answer)).await;
                });
            }
            Event::Message {
                peer,
                message: Message::Response { request_id, response },
                ..
            } => {
                if self.is_revocations_request(&request_id) {
                    self.on_revocations_answer(peer, request_id, response);
                    return;
                }
                let asked = self.ledger_pending.remove(&request_id).and_then(|(_, author)| author);
                let (node, internal) = (Arc::clone(&self.node), self.internal.clone());
                tokio::spawn(async move {
                    let peer_s = peer.to_string();
                    let invalid_tx = internal.clone();
                    let next = tokio::task::spawn_blocking(move || match response {
                        SyncResponse::Heads { heads, .. } => node.ledger_wants(&heads).map(ranges),
                        SyncResponse::Entries {
                            entries, credentials, ..
                        } => {
                            let entries: Vec<Vec<u8>> =
                                entries.into_iter().map(serde_bytes::ByteBuf::into_vec).collect();
                            let r =
                                node.ledger_accept(&peer_s, &entries, credentials.as_deref().map(|c| c.as_slice()))?;
                            if r.invalid
                                && let Some(author) = asked
                            {
                                let _ = invalid_tx.blocking_send(Internal::LedgerInvalid(peer, author));
                            }
                            Ok(ranges(r.follow))
                        }
                        // Answers to catch-up requests are taken in `revocations`.
                        SyncResponse::Revocations { .. } => Ok(Vec::new()),
                        SyncResponse::Refused { text, .. } => {
                            tracing::debug!(peer = %peer_s, text, "ledger request refused");
                            Ok(Vec::new())
                        }
                    })
                    .await;
                    match next {
                        Ok(Ok(reqs)) if !reqs.is_empty() => {
                            for r in reqs {
                                let _ = internal.send(Internal::LedgerSend(peer, r)).await;
                            }
                        }
                        Ok(Err(e)) => tracing::warn!(peer = %peer, cause = %e, "ledger sync failed"),
                        _ => {}
                    }
                    // Ranges asked for here end the exchange when their answers are in.
                    let _ = internal.send(Internal::LedgerDone(peer)).await;
                });
            }
            Event::OutboundFailure {
                peer,
                request_id,
                error,
                ..
            } => {
                if self.on_revocations_failure(request_id) {
                    return;
                }
                self.ledger_pending.remove(&request_id);
                self.ledger_busy.remove(&peer);
                tracing::debug!(peer = %peer, cause = %error, "ledger request failed");
            }
            Event::InboundFailure { peer, error, .. } => {
                tracing::debug!(peer = %peer, cause = %error, "inbound ledger request failed");
            }
            Event::ResponseSent { .. } => {}
        }
    }
}

/// The node's answer to a transfer message from a trusted peer.
pub(crate) fn answer_transfer(
    node: &Node,
    peer: &str,
    msg: TransferMsg,
) -> Result<crate::transfer::wire::AnswerBody, HomeError> {
    use crate::transfer::wire::{AnswerBody, MsgBody, WIRE_VERSION};
    if msg.v != WIRE_VERSION {
        return Ok(AnswerBody::Refused {
            code: "version".into(),
            text: format!("message version {} (this node speaks {WIRE_VERSION})", msg.v),
        });
    }
    match msg.body {
        MsgBody::Request {
            request_id,
            study_uid,
            purpose,
            role,
            level,
        } => {
            if crate::transfer::parse_id(&request_id).is_err() || crate::dicom::check_uid(&study_uid).is_err() {
                return Ok(AnswerBody::Refused {
                    code: "bad-request".into(),
                    text: "request id or Study Instance UID malformed".into(),
                });
            }
            if let Some(busy) = node.admit_request(peer)? {
                return Ok(busy);
            }
            Ok(node
                .transfers()
                .answer_request(peer, &request_id, &study_uid, purpose, role, level)?)
        }
        MsgBody::Decided { transfer_id, reasons } => Ok(node.transfers().note_decided(peer, &transfer_id, reasons)?),
        MsgBody::Receipt { receipt } => Ok(node.transfers().accept_receipt(peer, &receipt)?),
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
