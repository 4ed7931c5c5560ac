//! What a peer, however trusted, can make this node spend (`[limits]` of
//! the configuration, docs/OPERATIONS.md "Limits"): each limit is checked
//! before the resource is spent.
//!
//! - transfer requests: a token bucket per peer ([`RequestLimiter`]); a
//!   request over it is answered [`AnswerBody::RetryLater`] with the seconds
//!   to wait, before anything is recorded or written to the ledger; and at
//!   most `pending_approvals_per_peer` of a peer's requests wait for a person;
//! - inbound `/medmesh/stream/1` streams: at most `streams_per_peer` at once
//!   per peer ([`StreamSlots`]); a stream over it is reset before it is read;
//! - unsolicited shares: from whom (`shares_from`), how many not yet landed
//!   and how many bytes per peer ([`Node::admit_share`]);
//! - incoming transfers that receive nothing for `incoming_stale_secs` are
//!   failed and their parts deleted ([`Node::sweep_stale_incoming`]).
//!
//! Ledger fork evidence is capped in the store
//! ([`crate::store::MAX_FORKS_PER_AUTHOR`]).

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use crate::config::{LimitsConfig, SharesFrom};
use crate::home::{HomeError, Node};
use crate::transfer::wire::{Answer, AnswerBody, Manifest, MsgBody, Refuse, WIRE_VERSION};
use crate::transfer::{Direction, Initiated, State};

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

    /// The answer to a transfer message of `peer` when it is over its rate:
    /// only requests count (a decision or a receipt names a transfer that
    /// exists already). `None`: go on.
    #[must_use]
    pub fn admit(&self, peer: &str, msg: &MsgBody, now: Instant) -> Option<AnswerBody> {
        if !matches!(msg, MsgBody::Request { .. }) {
            return None;
        }
        self.check(peer, now).err().map(|secs| AnswerBody::RetryLater {
            code: "rate-limited".into(),
            text: format!(
                "more than {} transfer requests a minute from this peer; try again in {secs} s",
                self.per_minute
            ),
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

fn refuse(code: &str, text: String, permanent: bool) -> Refuse {
    Refuse {
        v: WIRE_VERSION,
        code: code.into(),
        text,
        permanent,
    }
}

/// The decision on an unsolicited share from `peer` (already trusted for
/// its purpose), given what it has pending here: its unsolicited incoming
/// transfers not yet landed, and their bytes.
///
/// # Errors
/// The [`Refuse`] to send: permanent when the policy refuses the peer,
/// for now when its quota is full.
pub fn share_decision(
    cfg: &LimitsConfig,
    peer: &str,
    pending: u32,
    pending_bytes: u64,
    bytes: u64,
) -> Result<(), Refuse> {
    match cfg.shares_from {
        SharesFrom::None => {
            return Err(refuse(
                "shares-refused",
                "this site takes no unsolicited shares: ask it to request the study".into(),
                true,
            ));
        }
        SharesFrom::Listed if !cfg.share_peers.iter().any(|p| p == peer) => {
            return Err(refuse(
                "shares-refused",
                "this site takes unsolicited shares only from the peers it lists; ask it to request the study".into(),
                true,
            ));
        }
        _ => {}
    }
    if pending >= cfg.pending_shares_per_peer {
        return Err(refuse(
            "share-quota",
            format!(
                "{pending} unsolicited shares from you are not landed yet (at most {}); try again later",
                cfg.pending_shares_per_peer
            ),
            false,
        ));
    }
    if pending_bytes.saturating_add(bytes) > cfg.pending_share_bytes_per_peer {
        return Err(refuse(
            "share-quota",
            format!(
                "unsolicited shares from you not landed yet would hold {} bytes here (at most {}); try again later",
                pending_bytes.saturating_add(bytes),
                cfg.pending_share_bytes_per_peer
            ),
            false,
        ));
    }
    Ok(())
}

/// The answer to a request of `peer` when `pending` of its requests wait
/// for a person here already. `None`: go on.
#[must_use]
pub fn approvals_decision(cfg: &LimitsConfig, pending: u32) -> Option<AnswerBody> {
    (pending >= cfg.pending_approvals_per_peer).then(|| AnswerBody::RetryLater {
        code: "approvals-full".into(),
        text: format!(
            "{pending} requests from this peer wait for a person at the holder (at most {}); \
             try again when they are decided",
            cfg.pending_approvals_per_peer
        ),
        retry_after_secs: 600,
    })
}

/// Longest retry-after a requester waits out by itself; a longer one is
/// reported to whoever asked.
pub const MAX_HONOURED_WAIT: u64 = 30;
/// Times a request is sent when the holder keeps answering retry-later.
pub const SEND_ATTEMPTS: u32 = 3;

/// Sends a request with `send` and honours a [`AnswerBody::RetryLater`]
/// answer: waits the seconds it names (when at most [`MAX_HONOURED_WAIT`])
/// and sends again, at most [`SEND_ATTEMPTS`] times in all; never sooner.
/// `Ok(Err((secs, text)))` when the holder still asks to wait.
///
/// # Errors
/// The error of `send`.
pub async fn send_honouring_retry_after<F, Fut, E>(mut send: F) -> Result<Result<Answer, (u64, String)>, E>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<Answer, E>>,
{
    let mut attempt = 0;
    loop {
        let answer = send().await?;
        let AnswerBody::RetryLater {
            retry_after_secs, text, ..
        } = &answer.body
        else {
            return Ok(Ok(answer));
        };
        attempt += 1;
        let secs = (*retry_after_secs).max(1);
        if secs > MAX_HONOURED_WAIT || attempt >= SEND_ATTEMPTS {
            return Ok(Err((secs, text.clone())));
        }
        tracing::info!(wait = secs, "the holder asks to wait before asking again");
        tokio::time::sleep(Duration::from_secs(secs)).await;
    }
}

/// Why a stale transfer failed.
pub const STALE_REASON: &str = "stale";

impl Node {
    /// Checks an unsolicited share from `peer` against `[limits]`: from
    /// whom, how many of its shares are not landed yet and their bytes.
    ///
    /// # Errors
    /// The [`Refuse`] to send back.
    pub fn admit_share(&self, peer: &str, manifest: &Manifest) -> Result<(), Refuse> {
        let cfg = &self.config().limits;
        let (mut pending, mut bytes) = (0u32, 0u64);
        if cfg.shares_from != SharesFrom::None {
            let records = self
                .transfers()
                .transfer_records()
                .map_err(|e| refuse("internal", format!("the recipient failed: {e}"), false))?;
            for r in records.iter().filter(|r| {
                r.direction == Direction::Incoming
                    && r.initiated == Initiated::Share
                    && r.peer == peer
                    && matches!(r.state, State::Granted | State::Streaming)
            }) {
                pending = pending.saturating_add(1);
                bytes = bytes.saturating_add(r.bytes);
            }
        }
        let size = manifest.objects.iter().map(|o| o.size).fold(0u64, u64::saturating_add);
        share_decision(cfg, peer, pending, bytes, size)
    }

    /// The answer to a new request of `peer` when too many of its requests
    /// wait for a person already. `None`: go on.
    ///
    /// # Errors
    /// Store errors.
    pub fn admit_request(&self, peer: &str) -> Result<Option<AnswerBody>, HomeError> {
        let pending = self
            .transfers()
            .transfer_records()?
            .iter()
            .filter(|r| r.direction == Direction::Outgoing && r.state == State::Pending && r.peer == peer)
            .count();
        Ok(approvals_decision(
            &self.config().limits,
            u32::try_from(pending).unwrap_or(u32::MAX),
        ))
    }

    /// Fails every incoming transfer (granted or streaming) that has
    /// received nothing for `[limits] incoming_stale_secs` at `now` (Unix
    /// seconds), and deletes what it had received: its parts, chunk
    /// progress and documents. A holder that comes back gets a permanent
    /// refusal (`closed`). Returns how many were failed.
    ///
    /// # Errors
    /// Store errors.
    pub fn sweep_stale_incoming(&self, now: i64) -> Result<u64, HomeError> {
        let timeout = i64::try_from(self.config().limits.incoming_stale_secs).unwrap_or(i64::MAX);
        let mut n = 0;
        for r in self.transfers().transfer_records()? {
            if r.direction != Direction::Incoming || !matches!(r.state, State::Granted | State::Streaming) {
                continue;
            }
            let Ok(id) = crate::transfer::parse_id(&r.id) else {
                continue;
            };
            let dir = self.store().incoming_dir(&id);
            let last = r.updated.max(newest_mtime(&dir).unwrap_or(0));
            if now.saturating_sub(last) < timeout {
                continue;
            }
            let why = format!("{STALE_REASON}: nothing received for {timeout} s; what was received is deleted");
            self.transfers().fail_transfer(&id, &why)?;
            self.store().clear_chunks(&id)?;
            self.store().transfer_docs_remove(&id)?;
            if dir.exists()
                && let Err(e) = std::fs::remove_dir_all(&dir)
            {
                tracing::warn!(transfer = %r.id, cause = %e, "cannot remove the parts of a stale transfer");
            }
            tracing::warn!(transfer = %r.id, peer = %r.peer, "incoming transfer failed as stale; its parts deleted");
            n += 1;
        }
        Ok(n)
    }
}

/// The latest modification time (Unix seconds) of a file in `dir` (one level down too).
fn newest_mtime(dir: &std::path::Path) -> Option<i64> {
    let mut newest: Option<i64> = None;
    let mut note = |m: &std::fs::Metadata| {
        if let Ok(t) = m.modified()
            && let Ok(d) = t.duration_since(std::time::UNIX_EPOCH)
        {
            let s = i64::try_from(d.as_secs()).unwrap_or(i64::MAX);
            newest = Some(newest.map_or(s, |n| n.max(s)));
        }
    };
    for e in std::fs::read_dir(dir).ok()?.flatten() {
        let Ok(m) = e.metadata() else { continue };
        note(&m);
        if m.is_dir() {
            for e in std::fs::read_dir(e.path()).into_iter().flatten().flatten() {
                if let Ok(m) = e.metadata() {
                    note(&m);
                }
            }
        }
    }
    newest
}

#[cfg(test)]
mod tests;
