//! Ledger replication: how this node's entries reach every member and
//! theirs reach it (PROTOCOL.md §14.4), and the policy of it: what to ask
//! whom and when, which peer not to ask for a while, how often to
//! countersign the heads held here.
//!
//! - every [`LEDGER_SYNC`], each trusted peer not already in an exchange is
//!   asked for its feed heads (`/medmesh/ledger/1`), then for the entries
//!   this node lacks, in batches;
//! - this node's new entries, its countersignatures (witnesses, every
//!   [`WITNESS_EVERY`] when the heads changed, every [`WITNESS_AGAIN`]
//!   anyway) and the revocations it applies go out on the gossip topic;
//! - a peer that served invalid entries of a feed is not asked for that feed
//!   for [`SHUN_FIRST`], doubled each time after, up to [`SHUN_MAX`];
//! - the revocation catch-up the network's gating asks for
//!   ([`Replication::catch_up`]) speaks the same protocol.
//!
//! The replication reaches peers through a [`Link`], which the composition
//! root makes of the network: it never names the network itself.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::time::{Duration, Instant};

use futures::future::BoxFuture;
use libp2p::PeerId;
use tokio::sync::watch;

use super::{Audit, AuditError, Verdict};
use crate::identity::Identity;
use crate::ledger::LEDGER_VERSION;
use crate::ledger::gossip::{GossipMsg, make_witness};
use crate::ledger::sync::{BATCH, Head, SyncRequest, SyncResponse, decode_request, decode_response};
use crate::trust::service::{RevocationTaken, TrustService};

/// How often a node compares feed heads with each trusted peer.
pub const LEDGER_SYNC: Duration = Duration::from_secs(2);
/// How long a peer that served invalid entries of a feed is not asked for
/// it again, the first time; doubled each time after, up to [`SHUN_MAX`].
pub const SHUN_FIRST: Duration = Duration::from_secs(30);
/// The longest such pause.
pub const SHUN_MAX: Duration = Duration::from_secs(15 * 60);
/// Most (peer, feed) pauses remembered.
const MAX_SHUNNED: usize = 4096;
/// How often a node countersigns the feed heads it holds, when they changed.
pub const WITNESS_EVERY: Duration = Duration::from_secs(3);
/// How often it does so even when they did not (for peers that joined since).
pub const WITNESS_AGAIN: Duration = Duration::from_secs(60);

/// What the replication needs of the network (the composition root makes
/// it of the network's handle).
pub trait Link: Send + Sync + 'static {
    /// The peers connected and trusted now.
    fn ready_peers(&self) -> BoxFuture<'static, Vec<PeerId>>;
    /// Sends a `/medmesh/ledger/1` request to `peer` (only when it is
    /// connected and trusted now, with `only_trusted`; else at once) and
    /// resolves to the answer's bytes, `None` when there was none.
    fn request(&self, peer: PeerId, request: Vec<u8>, only_trusted: bool) -> BoxFuture<'static, Option<Vec<u8>>>;
    /// Publishes a message on the ledger's gossip topic.
    fn publish(&self, message: Vec<u8>) -> BoxFuture<'static, ()>;
}

/// What the replication needs of the node: the ledger and trust services
/// and the identity that countersigns (the composition root implements it).
pub trait Host: Send + Sync + 'static {
    /// The ledger service.
    fn audit(&self) -> Audit<'_>;
    /// The trust service (revocations travel with the ledger).
    fn trust(&self) -> TrustService<'_>;
    /// The identity that signs witnesses.
    fn identity(&self) -> &Identity;
}

/// What the replication keeps between rounds.
#[derive(Default)]
struct State {
    /// Peers with an exchange under way (one at a time per peer).
    busy: HashSet<PeerId>,
    /// Peers that served invalid entries of a feed: not asked for it again
    /// until the instant, then with the delay doubled if they do again.
    shunned: HashMap<(PeerId, Vec<u8>), (Instant, Duration)>,
    /// The seq of this node's last entry published on the gossip topic.
    published: u64,
    /// The heads of the last witness published, and when.
    witnessed: Vec<Head>,
    witnessed_at: Option<Instant>,
    /// BLAKE3 of every applied revocation (None before the first load).
    revocations: Option<HashSet<[u8; 32]>>,
}

/// The ledger's replication service.
pub struct Replication {
    node: Arc<dyn Host>,
    maintenance: Duration,
    link: OnceLock<Arc<dyn Link>>,
    state: Mutex<State>,
}

impl std::fmt::Debug for Replication {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Replication").finish_non_exhaustive()
    }
}

/// Sync requests for ranges (author key, first seq, how many).
fn ranges(r: Vec<(Vec<u8>, u64, u64)>) -> Vec<SyncRequest> {
    r.into_iter()
        .map(|(author, from, limit)| SyncRequest::Range {
            v: LEDGER_VERSION,
            author,
            from,
            limit,
        })
        .collect()
}

fn encode<T: serde::Serialize>(what: &'static str, value: &T) -> Option<Vec<u8>> {
    match crate::cbor::encode(what, value) {
        Ok(b) => Some(b),
        Err(e) => {
            tracing::warn!(cause = %e, "{what} not encoded");
            None
        }
    }
}

impl Replication {
    /// The replication of the ledger of `node`, with its maintenance
    /// cadence (`[network] maintenance_secs`: how often shunned peers are
    /// forgotten); it reaches peers once [`Self::connect`] gave it a link.
    #[must_use]
    pub fn new(node: Arc<dyn Host>, maintenance: Duration) -> Arc<Self> {
        let published = *node.audit().watch().borrow();
        Arc::new(Self {
            node,
            maintenance,
            link: OnceLock::new(),
            state: Mutex::new(State {
                published,
                ..State::default()
            }),
        })
    }

    /// Gives the replication its way to peers (once).
    pub fn connect(&self, link: Arc<dyn Link>) {
        let _ = self.link.set(link);
    }

    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn link(&self) -> Option<Arc<dyn Link>> {
        self.link.get().cloned()
    }

    /// Whether a request may be answered to a parked peer: revocation
    /// catch-up only (revocations are no secret among members).
    #[must_use]
    pub fn serves_parked(request: &[u8]) -> bool {
        matches!(decode_request(request), Ok(SyncRequest::Revocations { .. }))
    }

    /// Answers a `/medmesh/ledger/1` request from `peer` (blocking);
    /// `None` (no answer) when it does not decode.
    #[must_use]
    pub fn answer(&self, peer: PeerId, request: &[u8]) -> Option<Vec<u8>> {
        let request = match decode_request(request) {
            Ok(r) => r,
            Err(e) => {
                tracing::debug!(peer = %peer, cause = %e, "inbound ledger request failed");
                return None;
            }
        };
        let node = &self.node;
        let v = LEDGER_VERSION;
        let answer = match request {
            SyncRequest::Heads { .. } => node
                .audit()
                .ledger_heads()
                .map(|heads| SyncResponse::Heads { v, heads }),
            SyncRequest::Range {
                author, from, limit, ..
            } => node.audit().ledger_range(&author, from, limit).and_then(|e| {
                Ok(SyncResponse::Entries {
                    v,
                    entries: e.into_iter().map(serde_bytes::ByteBuf::from).collect(),
                    credentials: node
                        .audit()
                        .ledger_credentials(&author)?
                        .map(serde_bytes::ByteBuf::from),
                })
            }),
            SyncRequest::Revocations { consortium, digest, .. } => node
                .trust()
                .revocations_for_peer(&consortium, &digest)
                .map_err(AuditError::from)
                .map(|r| SyncResponse::Revocations {
                    v,
                    consortium,
                    revocations: r.into_iter().map(serde_bytes::ByteBuf::from).collect(),
                }),
        };
        let answer = answer.unwrap_or_else(|e| {
            tracing::warn!(peer = %peer, cause = %e, "cannot answer a ledger request");
            SyncResponse::Refused {
                v,
                text: "the node could not answer; try again later".into(),
            }
        });
        encode("ledger sync response", &answer)
    }

    /// Judges a message of the ledger's gossip topic from `peer` (blocking),
    /// and asks `peer` for the ranges it showed missing.
    pub fn on_gossip(self: &Arc<Self>, peer: PeerId, data: &[u8]) -> Verdict {
        match self.node.audit().ledger_gossip(&peer.to_string(), data) {
            Ok(o) => {
                for r in ranges(o.follow) {
                    self.request(peer, r);
                }
                o.verdict
            }
            Err(e) => {
                tracing::warn!(peer = %peer, cause = %e, "ledger gossip not taken");
                Verdict::Ignore
            }
        }
    }

    /// Sends a ledger sync request to `peer` when it is connected and
    /// trusted, and not shunned for the feed asked for; takes the answer.
    fn request(self: &Arc<Self>, peer: PeerId, req: SyncRequest) {
        let author = match &req {
            SyncRequest::Range { author, .. } => Some(author.clone()),
            SyncRequest::Heads { .. } | SyncRequest::Revocations { .. } => None,
        };
        if let Some(a) = &author
            && self
                .state()
                .shunned
                .get(&(peer, a.clone()))
                .is_some_and(|(until, _)| Instant::now() < *until)
        {
            return;
        }
        let (Some(link), Some(bytes)) = (self.link(), encode("ledger sync request", &req)) else {
            return;
        };
        let this = Arc::clone(self);
        let Ok(rt) = tokio::runtime::Handle::try_current() else {
            return;
        };
        rt.spawn(async move {
            let answer = link.request(peer, bytes, true).await;
            if let Some(answer) = answer {
                let taker = Arc::clone(&this);
                let _ = tokio::task::spawn_blocking(move || taker.take_answer(peer, author, &answer)).await;
            }
            // Ranges asked for here end the exchange when their answers are in.
            this.state().busy.remove(&peer);
        });
    }

    /// Takes `peer`'s answer to a request for `asked`'s feed (or for its
    /// heads): asks for what it showed missing; shuns a peer that served
    /// invalid entries.
    fn take_answer(self: &Arc<Self>, peer: PeerId, asked: Option<Vec<u8>>, answer: &[u8]) {
        let response = match decode_response(answer) {
            Ok(r) => r,
            Err(e) => {
                tracing::debug!(peer = %peer, cause = %e, "ledger request failed");
                return;
            }
        };
        let peer_s = peer.to_string();
        let next = match response {
            SyncResponse::Heads { heads, .. } => self.node.audit().ledger_wants(&heads).map(ranges),
            SyncResponse::Entries {
                entries, credentials, ..
            } => {
                let entries: Vec<Vec<u8>> = entries.into_iter().map(serde_bytes::ByteBuf::into_vec).collect();
                self.node
                    .audit()
                    .ledger_accept(&peer_s, &entries, credentials.as_deref().map(|c| c.as_slice()))
                    .map(|r| {
                        if r.invalid
                            && let Some(author) = asked
                        {
                            self.shun(peer, author);
                        }
                        ranges(r.follow)
                    })
            }
            // Answers to catch-up requests are taken in `catch_up`.
            SyncResponse::Revocations { .. } => Ok(Vec::new()),
            SyncResponse::Refused { text, .. } => {
                tracing::debug!(peer = %peer_s, text, "ledger request refused");
                Ok(Vec::new())
            }
        };
        match next {
            Ok(reqs) => {
                for r in reqs {
                    self.request(peer, r);
                }
            }
            Err(e) => tracing::warn!(peer = %peer, cause = %e, "ledger sync failed"),
        }
    }

    /// `peer` served invalid entries of `author`'s feed: not asked for it
    /// for a while, longer each time.
    fn shun(&self, peer: PeerId, author: Vec<u8>) {
        let mut st = self.state();
        if st.shunned.len() >= MAX_SHUNNED {
            return;
        }
        let delay = st
            .shunned
            .get(&(peer, author.clone()))
            .map_or(SHUN_FIRST, |(_, d)| (*d * 2).min(SHUN_MAX));
        tracing::debug!(peer = %peer, secs = delay.as_secs(), "a peer served invalid ledger entries: not asked for that feed for a while");
        st.shunned.insert((peer, author), (Instant::now() + delay, delay));
    }

    /// Asks every trusted peer not already in an exchange for its feed heads.
    async fn round(self: &Arc<Self>) {
        let Some(link) = self.link() else { return };
        let ready = link.ready_peers().await;
        let fresh: Vec<PeerId> = {
            let mut st = self.state();
            ready.into_iter().filter(|p| st.busy.insert(*p)).collect()
        };
        for peer in fresh {
            self.request(peer, SyncRequest::Heads { v: LEDGER_VERSION });
        }
    }

    async fn publish(&self, msg: &GossipMsg) {
        let Some(link) = self.link() else { return };
        match msg.to_bytes() {
            Ok(bytes) => link.publish(bytes).await,
            Err(e) => tracing::warn!(cause = %e, "ledger gossip message not encoded"),
        }
    }

    /// Publishes this node's entries written since the last published.
    async fn publish_own(&self) {
        let head = *self.node.audit().watch().borrow();
        let own = self.node.identity().ed25519_public();
        loop {
            let published = self.state().published;
            if published >= head {
                break;
            }
            let batch = match self.node.audit().ledger_range(&own, published + 1, BATCH) {
                Ok(b) if !b.is_empty() => b,
                Ok(_) => break,
                Err(e) => {
                    tracing::warn!(cause = %e, "own ledger entries not read for gossip");
                    return;
                }
            };
            for bytes in batch {
                self.state().published += 1;
                self.publish(&GossipMsg::Entry {
                    v: LEDGER_VERSION,
                    entry: serde_bytes::ByteBuf::from(bytes),
                })
                .await;
            }
        }
        let mut st = self.state();
        st.published = st.published.max(head);
    }

    /// Countersigns the feed heads held here, when they changed (or every
    /// [`WITNESS_AGAIN`]), on the gossip topic.
    async fn publish_witness(&self) {
        let heads = match self.node.audit().ledger_heads() {
            Ok(h) => h,
            Err(e) => {
                tracing::warn!(cause = %e, "ledger heads not read for a witness");
                return;
            }
        };
        {
            let st = self.state();
            let stale = st.witnessed_at.is_none_or(|t| t.elapsed() >= WITNESS_AGAIN);
            if heads.is_empty() || (heads == st.witnessed && !stale) {
                return;
            }
        }
        let mut mine = heads.clone();
        mine.truncate(crate::ledger::gossip::MAX_WITNESS_HEADS);
        match make_witness(self.node.identity(), crate::clock::now(), mine) {
            Ok(w) => {
                self.publish(&GossipMsg::Witness {
                    v: LEDGER_VERSION,
                    witness: serde_bytes::ByteBuf::from(w.bytes),
                })
                .await;
                let mut st = self.state();
                st.witnessed = heads;
                st.witnessed_at = Some(Instant::now());
            }
            Err(e) => tracing::warn!(cause = %e, "witness not made"),
        }
    }

    /// Reads the applied revocations; publishes each one new since the
    /// last read on the gossip topic (nothing on the first read, at start).
    async fn reload_revocations(&self) {
        let applied = match self.node.trust().applied_revocations() {
            Ok(a) => a,
            Err(e) => {
                tracing::warn!(cause = %e, "applied revocations not read");
                return;
            }
        };
        let fresh: Vec<Vec<u8>> = {
            let mut st = self.state();
            let fresh = match &st.revocations {
                Some(known) => applied
                    .iter()
                    .filter(|a| !known.contains(&a.hash))
                    .map(|a| a.bytes.clone())
                    .collect(),
                None => Vec::new(),
            };
            st.revocations = Some(applied.iter().map(|a| a.hash).collect());
            fresh
        };
        for bytes in fresh {
            tracing::info!("publishing a revocation to the consortium's members");
            self.publish(&GossipMsg::Revocation {
                v: LEDGER_VERSION,
                revocation: serde_bytes::ByteBuf::from(bytes),
            })
            .await;
        }
    }

    /// Asks `peer` for the revocations of `consortium` this node lacks
    /// (`digest`: ours) and applies what it sends; `true` once it answered.
    pub async fn catch_up(self: Arc<Self>, peer: PeerId, consortium: String, digest: Vec<u8>) -> bool {
        let Some(link) = self.link() else { return false };
        let req = SyncRequest::Revocations {
            v: LEDGER_VERSION,
            consortium,
            digest,
        };
        let Some(bytes) = encode("ledger sync request", &req) else {
            return false;
        };
        let Some(answer) = link.request(peer, bytes, false).await else {
            return false;
        };
        let Ok(SyncResponse::Revocations { revocations, .. }) = decode_response(&answer) else {
            return true;
        };
        let node = Arc::clone(&self.node);
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
        true
    }

    /// Every maintenance round: forgets pauses that ran out (a pause
    /// doubles only while the peer keeps at it) and publishes revocations
    /// applied since.
    async fn maintain(&self) {
        let now_i = Instant::now();
        self.state().shunned.retain(|_, (until, delay)| *until + *delay > now_i);
        self.reload_revocations().await;
    }

    /// Test builds only (cargo feature `fault-injection`): with
    /// `MEDMESH_FAULT_PUBLISH_REVOCATION=FILE[:FILE...]`, this node publishes
    /// each file's bytes as a revocation on the gossip topic every
    /// maintenance round, unchecked, as a rogue or broken member would: tests
    /// show that the others neither apply nor relay what does not verify.
    #[cfg(feature = "fault-injection")]
    pub fn publish_injected(self: &Arc<Self>) {
        let Ok(files) = std::env::var("MEDMESH_FAULT_PUBLISH_REVOCATION") else {
            return;
        };
        let this = Arc::clone(self);
        let Ok(rt) = tokio::runtime::Handle::try_current() else {
            return;
        };
        rt.spawn(async move {
            for f in files.split(':') {
                if let Ok(bytes) = std::fs::read(f) {
                    this.publish(&GossipMsg::Revocation {
                        v: LEDGER_VERSION,
                        revocation: serde_bytes::ByteBuf::from(bytes),
                    })
                    .await;
                }
            }
        });
    }

    /// Runs the replication until `shutdown` turns true.
    pub async fn run(self: Arc<Self>, mut shutdown: watch::Receiver<bool>) {
        let mut ledger_watch = self.node.audit().watch();
        let mut trust_watch = self.node.trust().watch();
        let mut witness_tick = tokio::time::interval(WITNESS_EVERY);
        let mut ledger_tick = tokio::time::interval(LEDGER_SYNC);
        let maintenance = self.maintenance;
        let mut maintenance = tokio::time::interval(maintenance);
        // The first read publishes nothing: what was applied before is known to the members.
        self.reload_revocations().await;
        loop {
            tokio::select! {
                Ok(()) = ledger_watch.changed() => self.publish_own().await,
                Ok(()) = trust_watch.changed() => self.reload_revocations().await,
                _ = witness_tick.tick() => self.publish_witness().await,
                _ = ledger_tick.tick() => self.round().await,
                _ = maintenance.tick() => self.maintain().await,
                changed = shutdown.changed() => {
                    if changed.is_err() || *shutdown.borrow() {
                        break;
                    }
                }
            }
        }
    }
}
