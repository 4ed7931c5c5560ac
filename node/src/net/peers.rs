//! What `medmesh peers` and `medmesh status` show of the network: the
//! peers met or trusted, those refused, those that did not answer.

use std::collections::HashSet;

use libp2p::Multiaddr;
use serde::{Deserialize, Serialize};

use super::load_known;
use crate::clock::{now, rfc3339};
use crate::home::{HomeError, Node};
use crate::trust::hello::{self, Hello};
use crate::trust::{TrustState, Via};

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

pub(super) fn via_text(via: &Via) -> String {
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
    let state = node.trust().state()?;
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
pub(super) fn add_bilateral_unmet(state: &TrustState, seen: &HashSet<String>, t: i64, peers: &mut Vec<PeerEntry>) {
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

pub(super) fn entry_for(
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
