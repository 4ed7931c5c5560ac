//! What a peer, however trusted, can make this node spend (`[limits]` of
//! the configuration, docs/OPERATIONS.md "Limits"): each limit is checked
//! before the resource is spent.
//!
//! - transfer requests: a token bucket per peer ([`RequestLimiter`]); a
//!   request over it is answered retry-later ([`Limited::RateLimited`]) with
//!   the seconds to wait, before anything is recorded or written to the
//!   ledger; and at most `pending_approvals_per_peer` of a peer's requests
//!   wait for a person ([`approvals_decision`]);
//! - inbound `/medmesh/stream/1` streams: at most `streams_per_peer` at once
//!   per peer ([`StreamSlots`]); a stream over it is reset before it is read;
//! - unsolicited shares: from whom (`shares_from`), how many not yet landed
//!   and how many bytes per peer ([`share_decision`]);
//! - incoming transfers that receive nothing for `incoming_stale_secs` are
//!   failed and their parts deleted ([`STALE_REASON`]).
//!
//! This module decides; it knows the configuration and nothing of the
//! transfers it limits: the transfer service counts what a peer has
//! pending, asks here, and answers the peer with [`Limited::code`] and
//! its text. Ledger fork evidence is capped in the store
//! ([`crate::store::MAX_FORKS_PER_AUTHOR`]).

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use crate::config::{LimitsConfig, SharesFrom};

/// Why a limit of `[limits]` stops a peer's request or share, now or for good.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Limited {
    /// More transfer requests a minute than `[limits]` allows.
    #[error("more than {per_minute} transfer requests a minute from this peer; try again in {retry_after_secs} s")]
    RateLimited {
        /// Requests a minute allowed.
        per_minute: u32,
        /// Whole seconds to wait (at least 1).
        retry_after_secs: u64,
    },
    /// Too many of the peer's requests wait for a person here.
    #[error(
        "{pending} requests from this peer wait for a person at the holder (at most {max}); \
         try again when they are decided"
    )]
    ApprovalsFull {
        /// Requests waiting.
        pending: u32,
        /// At most.
        max: u32,
    },
    /// This site takes no unsolicited shares.
    #[error("this site takes no unsolicited shares: ask it to request the study")]
    NoShares,
    /// This site takes unsolicited shares only from the peers it lists.
    #[error("this site takes unsolicited shares only from the peers it lists; ask it to request the study")]
    SharesUnlisted,
    /// Too many of the peer's shares are not landed yet.
    #[error("{pending} unsolicited shares from you are not landed yet (at most {max}); try again later")]
    ShareCount {
        /// Shares not landed.
        pending: u32,
        /// At most.
        max: u32,
    },
    /// The peer's shares not landed yet would hold too many bytes.
    #[error(
        "unsolicited shares from you not landed yet would hold {bytes} bytes here (at most {max}); try again later"
    )]
    ShareBytes {
        /// Bytes they would hold.
        bytes: u64,
        /// At most.
        max: u64,
    },
}

impl Limited {
    /// The code the peer is answered with (the wire's string).
    #[must_use]
    pub fn code(&self) -> &'static str {
        match self {
            Limited::RateLimited { .. } => "rate-limited",
            Limited::ApprovalsFull { .. } => "approvals-full",
            Limited::NoShares | Limited::SharesUnlisted => "shares-refused",
            Limited::ShareCount { .. } | Limited::ShareBytes { .. } => "share-quota",
        }
    }

    /// Whether the refusal is for good (the policy refuses the peer), not for now.
    #[must_use]
    pub fn permanent(&self) -> bool {
        matches!(self, Limited::NoShares | Limited::SharesUnlisted)
    }

    /// The seconds a request is asked to wait before it is sent again.
    #[must_use]
    pub fn retry_after_secs(&self) -> u64 {
        match self {
            Limited::RateLimited { retry_after_secs, .. } => *retry_after_secs,
            Limited::ApprovalsFull { .. } => 600,
            _ => 0,
        }
    }
}

/// Peers whose request buckets are remembered at once; beyond it, full
/// buckets (peers that have been quiet) are forgotten first.
const MAX_TRACKED_PEERS: usize = 4096;

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// A token bucket: `capacity` tokens, refilled at `per_sec`.
#[derive(Debug, Clone)]
pub struct TokenBucket {
    capacity: f64,
    per_sec: f64,
    tokens: f64,
    last: Instant,
}

impl TokenBucket {
    /// A full bucket.
    #[must_use]
    pub fn new(capacity: u32, per_minute: u32, now: Instant) -> Self {
        Self {
            capacity: f64::from(capacity.max(1)),
            per_sec: f64::from(per_minute.max(1)) / 60.0,
            tokens: f64::from(capacity.max(1)),
            last: now,
        }
    }

    fn refill(&mut self, now: Instant) {
        let dt = now.saturating_duration_since(self.last).as_secs_f64();
        self.tokens = (self.tokens + dt * self.per_sec).min(self.capacity);
        self.last = now;
    }

    /// Takes a token, or says how long until one is there.
    ///
    /// # Errors
    /// The wait, when the bucket is empty.
    pub fn take(&mut self, now: Instant) -> Result<(), Duration> {
        self.refill(now);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            Ok(())
        } else {
            Err(Duration::from_secs_f64((1.0 - self.tokens) / self.per_sec))
        }
    }

    fn is_full(&mut self, now: Instant) -> bool {
        self.refill(now);
        self.tokens >= self.capacity
    }
}

/// Transfer requests per peer: a [`TokenBucket`] each.
#[derive(Debug)]
pub struct RequestLimiter {
    burst: u32,
    per_minute: u32,
    buckets: Mutex<HashMap<String, TokenBucket>>,
}

impl RequestLimiter {
    /// From `[limits]`.
    #[must_use]
    pub fn new(cfg: &LimitsConfig) -> Self {
        Self {
            burst: cfg.request_burst,
            per_minute: cfg.requests_per_minute,
            buckets: Mutex::new(HashMap::new()),
        }
    }

    /// Takes a request of `peer` at `now`, or says how many whole seconds
    /// to wait (at least 1).
    ///
    /// # Errors
    /// The seconds to wait.
    pub fn check(&self, peer: &str, now: Instant) -> Result<(), u64> {
        let mut b = lock(&self.buckets);
        if !b.contains_key(peer) && b.len() >= MAX_TRACKED_PEERS {
            b.retain(|_, t| !t.is_full(now));
            if b.len() >= MAX_TRACKED_PEERS {
                // Every tracked peer is still spending: a new one waits too.
                return Err(60);
            }
        }
        b.entry(peer.to_string())
            .or_insert_with(|| TokenBucket::new(self.burst, self.per_minute, now))
            .take(now)
            .map_err(|wait| {
                u64::try_from(wait.as_millis().div_ceil(1000))
                    .unwrap_or(u64::MAX)
                    .max(1)
            })
    }

    /// Peers tracked now.
    #[must_use]
    pub fn tracked(&self) -> usize {
        lock(&self.buckets).len()
    }

    /// Takes a transfer request of `peer` at `now` (a decision or a
    /// receipt names a transfer that exists already, and is not counted).
    ///
    /// # Errors
    /// [`Limited::RateLimited`] when it is over its rate.
    pub fn admit_request(&self, peer: &str, now: Instant) -> Result<(), Limited> {
        self.check(peer, now).map_err(|secs| Limited::RateLimited {
            per_minute: self.per_minute,
            retry_after_secs: secs,
        })
    }
}

/// Inbound transfer streams open at once, per peer.
#[derive(Debug)]
pub struct StreamSlots {
    max: u32,
    open: Mutex<HashMap<String, u32>>,
}

/// An inbound stream's place; given back when dropped.
#[derive(Debug)]
pub struct StreamSlot {
    slots: Arc<StreamSlots>,
    peer: String,
}

impl StreamSlots {
    /// At most `max` per peer.
    #[must_use]
    pub fn new(max: u32) -> Arc<Self> {
        Arc::new(Self {
            max,
            open: Mutex::new(HashMap::new()),
        })
    }

    /// A place for a new stream of `peer`, or `None` when it has `max` open.
    #[must_use]
    pub fn acquire(self: &Arc<Self>, peer: &str) -> Option<StreamSlot> {
        let mut open = lock(&self.open);
        let n = open.entry(peer.to_string()).or_insert(0);
        if *n >= self.max {
            return None;
        }
        *n += 1;
        Some(StreamSlot {
            slots: Arc::clone(self),
            peer: peer.to_string(),
        })
    }

    /// Streams of `peer` open now.
    #[must_use]
    pub fn open(&self, peer: &str) -> u32 {
        lock(&self.open).get(peer).copied().unwrap_or(0)
    }
}

impl Drop for StreamSlot {
    fn drop(&mut self) {
        let mut open = lock(&self.slots.open);
        if let Some(n) = open.get_mut(&self.peer) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                open.remove(&self.peer);
            }
        }
    }
}

/// Bytes a frame body grows by at most before they have arrived.
pub const READ_STEP: usize = 64 * 1024;

/// Reads exactly `len` bytes of a frame body, growing the buffer by at most
/// [`READ_STEP`] ahead of what has arrived: a peer that announces a large
/// frame and sends little of it costs what it sent, not what it announced.
///
/// # Errors
/// I/O errors; `UnexpectedEof` when the stream ends before `len` bytes.
pub async fn read_body<R: futures::AsyncRead + Unpin>(s: &mut R, len: usize) -> std::io::Result<Vec<u8>> {
    use futures::AsyncReadExt;
    let mut body = Vec::new();
    while body.len() < len {
        let have = body.len();
        let step = (len - have).min(READ_STEP);
        body.resize(have + step, 0);
        let n = s.read(&mut body[have..]).await?;
        if n == 0 {
            return Err(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                format!("frame ended after {have} of {len} bytes"),
            ));
        }
        body.truncate(have + n);
    }
    Ok(body)
}

/// The decision on an unsolicited share from `peer` (already trusted for
/// its purpose), given what it has pending here: its unsolicited incoming
/// transfers not yet landed, and their bytes.
///
/// # Errors
/// Why it is refused: for good when the policy refuses the peer
/// ([`Limited::permanent`]), for now when its quota is full.
pub fn share_decision(
    cfg: &LimitsConfig,
    peer: &str,
    pending: u32,
    pending_bytes: u64,
    bytes: u64,
) -> Result<(), Limited> {
    match cfg.shares_from {
        SharesFrom::None => return Err(Limited::NoShares),
        SharesFrom::Listed if !cfg.share_peers.iter().any(|p| p == peer) => return Err(Limited::SharesUnlisted),
        _ => {}
    }
    if pending >= cfg.pending_shares_per_peer {
        return Err(Limited::ShareCount {
            pending,
            max: cfg.pending_shares_per_peer,
        });
    }
    if pending_bytes.saturating_add(bytes) > cfg.pending_share_bytes_per_peer {
        return Err(Limited::ShareBytes {
            bytes: pending_bytes.saturating_add(bytes),
            max: cfg.pending_share_bytes_per_peer,
        });
    }
    Ok(())
}

/// The decision on a request of `peer` when `pending` of its requests wait
/// for a person here already.
///
/// # Errors
/// [`Limited::ApprovalsFull`] when they are as many as `[limits]` allows.
pub fn approvals_decision(cfg: &LimitsConfig, pending: u32) -> Result<(), Limited> {
    if pending >= cfg.pending_approvals_per_peer {
        return Err(Limited::ApprovalsFull {
            pending,
            max: cfg.pending_approvals_per_peer,
        });
    }
    Ok(())
}

/// Longest retry-after a requester waits out by itself; a longer one is
/// reported to whoever asked.
pub const MAX_HONOURED_WAIT: u64 = 30;
/// Times a request is sent when the holder keeps answering retry-later.
pub const SEND_ATTEMPTS: u32 = 3;

/// Sends a request with `send` and honours an answer that asks to wait
/// (`retry_later` gives its seconds and text): waits the seconds it names
/// (when at most [`MAX_HONOURED_WAIT`]) and sends again, at most
/// [`SEND_ATTEMPTS`] times in all; never sooner. `Ok(Err((secs, text)))`
/// when the holder still asks to wait.
///
/// # Errors
/// The error of `send`.
pub async fn send_honouring_retry_after<A, F, Fut, E>(
    mut send: F,
    retry_later: impl Fn(&A) -> Option<(u64, &str)>,
) -> Result<Result<A, (u64, String)>, E>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<A, E>>,
{
    let mut attempt = 0;
    loop {
        let answer = send().await?;
        let Some((retry_after_secs, text)) = retry_later(&answer) else {
            return Ok(Ok(answer));
        };
        attempt += 1;
        let secs = retry_after_secs.max(1);
        if secs > MAX_HONOURED_WAIT || attempt >= SEND_ATTEMPTS {
            return Ok(Err((secs, text.to_string())));
        }
        tracing::info!(wait = secs, "the holder asks to wait before asking again");
        tokio::time::sleep(Duration::from_secs(secs)).await;
    }
}

/// Why a stale transfer failed.
pub const STALE_REASON: &str = "stale";

/// The refusal counted (`/metrics`) when a peer opens more streams at once
/// than `streams_per_peer` and one is reset unread.
pub const STREAMS_FULL: &str = "streams-full";

#[cfg(test)]
mod tests;
