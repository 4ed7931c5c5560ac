//! The transfer engine of a running node: streams prepared transfers to
//! their recipients (`/medmesh/stream/1`), takes streams from holders,
//! resumes what is unfinished, sends delivery receipts, and locks received
//! studies whose grant ended.
//!
//! A holder's *session* opens up to `transfer.streams` streams to the
//! recipient. Each sends [`Open`] (grant and manifest) and gets [`Have`]
//! (chunks verified per object); objects still missing are shared out
//! between the streams, each object's chunks in order from where the
//! recipient stands. After [`frame::DONE`] the recipient answers with
//! [`Have`] again. A session that ends early (a dropped connection, a chunk
//! the recipient refused, a restart of either side) is followed by another
//! after `transfer.retry_secs`, which sends only what is missing.

use std::collections::{HashMap, HashSet, VecDeque};
use std::io::{BufReader, Read};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::{AsyncReadExt, AsyncWriteExt, StreamExt};
use libp2p::{PeerId, StreamProtocol};
use medmesh_seal::{Header, OpenReader, Sealer, TAG_LEN};
use tokio::sync::{Notify, mpsc, oneshot, watch};
use zeroize::Zeroizing;

use super::Host;
use super::wire::{self, Have, MAX_MANIFEST, MAX_MESSAGE, Open, Refuse, WIRE_VERSION, frame};
use super::{Accepted, Direction, ObjectWriter, RefuseCode, SendPlan, Source, State, TransferId};
use crate::transfer::protocol::TransferNet;

/// Largest frame accepted (an [`Open`] with the largest manifest).
const MAX_FRAME: usize = MAX_MANIFEST + MAX_MESSAGE + 4096;
/// Frames queued per stream between the sealing thread and the network.
const QUEUE: usize = 4;
/// Seconds between checks for expired grants.
const EXPIRY_EVERY: Duration = Duration::from_secs(10);
/// A peer that does not answer a frame within this time is given up on (the session is retried).
const IO_TIMEOUT: Duration = Duration::from_secs(60);

type Stream = libp2p::Stream;

fn io_other(e: impl std::fmt::Display) -> std::io::Error {
    std::io::Error::other(e.to_string())
}

async fn write_frame(s: &mut Stream, kind: u8, body: &[u8]) -> std::io::Result<()> {
    let head = super::codec::header(kind, body.len()).ok_or_else(|| io_other("frame too long"))?;
    s.write_all(&head).await?;
    s.write_all(body).await
}

pub(crate) async fn read_frame<R: futures::AsyncRead + Unpin>(s: &mut R, max: usize) -> std::io::Result<(u8, Vec<u8>)> {
    let mut head = [0u8; frame::HEADER];
    s.read_exact(&mut head).await?;
    let (len, kind) = super::codec::parse_header(&head);
    if len == 0 || len > max {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("frame of {len} bytes (at most {max})"),
        ));
    }
    // Allocated as the bytes arrive, not at the length the peer announced.
    let body = crate::limits::read_body(s, len - 1).await?;
    Ok((kind, body))
}

async fn timed<T>(what: &str, f: impl std::future::Future<Output = std::io::Result<T>>) -> std::io::Result<T> {
    match tokio::time::timeout(IO_TIMEOUT, f).await {
        Ok(r) => r,
        Err(_) => Err(std::io::Error::new(
            std::io::ErrorKind::TimedOut,
            format!("{what}: no progress in {} s", IO_TIMEOUT.as_secs()),
        )),
    }
}

/// Shared state of the engine.
struct Engine<N> {
    node: Arc<dyn Host>,
    net: N,
    control: libp2p_stream::Control,
    /// Holder sessions running.
    sending: Mutex<HashSet<TransferId>>,
    /// Receipts being sent.
    receipts: Mutex<HashSet<TransferId>>,
    /// Recipient side: objects being written, per transfer.
    busy: Mutex<HashMap<TransferId, HashSet<u32>>>,
    /// Recipient side: transfers being landed.
    landing: Mutex<HashSet<TransferId>>,
    wake: Arc<Notify>,
}

/// Starts the engine; it stops when `shutdown` turns true.
pub fn start<N: TransferNet>(
    node: Arc<dyn Host>,
    net: N,
    mut control: libp2p_stream::Control,
    wake: Arc<Notify>,
    mut shutdown: watch::Receiver<bool>,
) -> tokio::task::JoinHandle<()> {
    let incoming = control.accept(StreamProtocol::new(wire::STREAM_PROTOCOL));
    let engine = Arc::new(Engine {
        node,
        net,
        control,
        sending: Mutex::new(HashSet::new()),
        receipts: Mutex::new(HashSet::new()),
        busy: Mutex::new(HashMap::new()),
        landing: Mutex::new(HashSet::new()),
        wake,
    });
    tokio::spawn(async move {
        let mut incoming = match incoming {
            Ok(i) => i,
            Err(e) => {
                tracing::error!(cause = %e, "cannot take transfer streams");
                return;
            }
        };
        // Inbound streams are taken by a task that does nothing else:
        // libp2p-stream hands them over through a channel with room for one
        // and drops (silently, at debug level) a stream that finds it full.
        // Taken in the loop below, every stream that arrived while a round
        // ran was dropped, and its holder retried after `retry_secs`.
        let mut accept = {
            let engine = Arc::clone(&engine);
            tokio::spawn(async move {
                let slots = crate::limits::StreamSlots::new(engine.node.config().limits.streams_per_peer);
                while let Some((peer, stream)) = incoming.next().await {
                    // At most `streams_per_peer` at once: another is reset unread.
                    let Some(slot) = slots.acquire(&peer.to_string()) else {
                        tracing::warn!(peer = %peer, "too many transfer streams open from this peer: one reset unread");
                        engine
                            .node
                            .transfers()
                            .live()
                            .counters()
                            .refused(crate::limits::STREAMS_FULL);
                        drop(stream);
                        continue;
                    };
                    let e = Arc::clone(&engine);
                    tokio::spawn(async move {
                        e.receive(peer, stream).await;
                        drop(slot);
                    });
                }
            })
        };
        let retry = Duration::from_secs(engine.node.config().transfer.retry_secs);
        let mut tick = tokio::time::interval(retry);
        let mut expiry = tokio::time::interval(EXPIRY_EVERY);
        loop {
            tokio::select! {
                _ = &mut accept => break,
                _ = tick.tick() => engine.clone().round().await,
                () = engine.wake.notified() => engine.clone().round().await,
                _ = expiry.tick() => {
                    let node = Arc::clone(&engine.node);
                    let swept = move || {
                        // Grants that ended, consent or trust that changed without a
                        // call (a record that expired): every affected transfer ends.
                        node.transfers().end_affected_transfers_after("periodic check");
                        node.transfers().sweep_stale_incoming(crate::clock::now())?;
                        node.transfers().enforce_expiry()
                    };
                    match tokio::task::spawn_blocking(swept).await {
                        Ok(Err(e)) => tracing::warn!(cause = %e, "cannot check grant expiry"),
                        Err(e) => tracing::warn!(cause = %e, "grant expiry check failed"),
                        Ok(Ok(_)) => {}
                    }
                }
                changed = shutdown.changed() => {
                    if changed.is_err() || *shutdown.borrow() {
                        break;
                    }
                }
            }
        }
        accept.abort();
    })
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl<N: TransferNet> Engine<N> {
    /// One pass over the transfer records: start what can start.
    async fn round(self: Arc<Self>) {
        let node = Arc::clone(&self.node);
        let records = match tokio::task::spawn_blocking(move || node.transfers().transfer_records()).await {
            Ok(Ok(r)) => r,
            Ok(Err(e)) => {
                tracing::warn!(cause = %e, "cannot read transfer records");
                return;
            }
            Err(_) => return,
        };
        for rec in records {
            let id = rec.id;
            let peer = rec.peer;
            match (rec.direction, rec.state) {
                (Direction::Outgoing, State::Granted | State::Streaming) => {
                    if lock(&self.sending).contains(&id) {
                        continue;
                    }
                    if !self.net.is_ready(peer).await {
                        self.net.dial(peer).await;
                        continue;
                    }
                    lock(&self.sending).insert(id);
                    let e = Arc::clone(&self);
                    tokio::spawn(async move {
                        e.send(id, peer).await;
                        lock(&e.sending).remove(&id);
                    });
                }
                (Direction::Outgoing, State::Failed) if rec.tell => {
                    // Ended: the recipient is told once it is connected (a
                    // revoked or blocked peer is never dialled).
                    if !lock(&self.receipts).insert(id) {
                        continue;
                    }
                    if !self.net.is_ready(peer).await {
                        self.net.dial(peer).await;
                        lock(&self.receipts).remove(&id);
                        continue;
                    }
                    let e = Arc::clone(&self);
                    tokio::spawn(async move {
                        e.tell_ended(id, peer).await;
                        lock(&e.receipts).remove(&id);
                    });
                }
                (Direction::Incoming, State::Landed) => {
                    if !lock(&self.receipts).insert(id) {
                        continue;
                    }
                    let e = Arc::clone(&self);
                    tokio::spawn(async move {
                        e.deliver_receipt(id, peer).await;
                        lock(&e.receipts).remove(&id);
                    });
                }
                _ => {}
            }
        }
    }

    async fn deliver_receipt(&self, id: TransferId, peer: PeerId) {
        let node = Arc::clone(&self.node);
        let receipt = match tokio::task::spawn_blocking(move || node.transfers().receipt(&id)).await {
            Ok(Ok(r)) => r,
            Ok(Err(e)) => {
                tracing::warn!(transfer = %hex::encode(id), cause = %e, "cannot make the delivery receipt");
                return;
            }
            Err(_) => return,
        };
        let msg = wire::Msg {
            v: WIRE_VERSION,
            body: wire::MsgBody::Receipt { receipt },
        };
        match self.net.transfer_message(peer, msg).await {
            Ok(wire::Answer {
                body: wire::AnswerBody::Ack,
                ..
            }) => {
                let node = Arc::clone(&self.node);
                let _ = tokio::task::spawn_blocking(move || node.transfers().receipt_acknowledged(&id)).await;
                tracing::info!(transfer = %hex::encode(id), "delivery receipt acknowledged: transfer complete");
            }
            Ok(other) => {
                tracing::warn!(transfer = %hex::encode(id), answer = ?other.body, "the holder did not take the delivery receipt");
            }
            Err(e) => tracing::debug!(transfer = %hex::encode(id), cause = %e, "receipt not delivered yet"),
        }
    }

    /// Holder: tells the recipient that a transfer was ended.
    async fn tell_ended(&self, id: TransferId, peer: PeerId) {
        let node = Arc::clone(&self.node);
        let msg = match tokio::task::spawn_blocking(move || {
            node.transfers()
                .transfer(&id)
                .map(|r| node.transfers().ended_message(&r))
        })
        .await
        {
            Ok(Ok(Some(m))) => m,
            _ => return,
        };
        match self.net.transfer_message(peer, msg).await {
            Ok(wire::Answer {
                body: wire::AnswerBody::Ack | wire::AnswerBody::Refused { .. },
                ..
            }) => {
                let node = Arc::clone(&self.node);
                let _ = tokio::task::spawn_blocking(move || node.transfers().ended_told(&id)).await;
                tracing::info!(transfer = %hex::encode(id), "the recipient was told that the transfer ended");
            }
            Ok(_) => {}
            Err(e) => tracing::debug!(transfer = %hex::encode(id), cause = %e, "end of transfer not told yet"),
        }
    }

    /// Holder: decides again, prepares (once) and runs one session of a transfer.
    async fn send(&self, id: TransferId, peer: PeerId) {
        let idh = hex::encode(id);
        let node = Arc::clone(&self.node);
        let plan = tokio::task::spawn_blocking(move || {
            // The whole decision, taken again before every session (each resume included).
            if !node.transfers().session_check(&id)? {
                return Ok(None);
            }
            // Prepared now: the plan preparation returned; prepared before
            // (a resume, also after a restart): the plan read back.
            let prepared = node.transfers().prepare(&id)?;
            if !node.transfers().session_check(&id)? {
                return Ok(None);
            }
            match prepared {
                Some(plan) => Ok(Some(plan)),
                None => node.transfers().send_plan(&id).map(Some),
            }
        })
        .await;
        let plan = match plan {
            Ok(Ok(Some(p))) => Arc::new(p),
            Ok(Ok(None)) => {
                tracing::info!(transfer = %idh, "the transfer has ended; no session");
                self.wake.notify_one();
                return;
            }
            Ok(Err(e)) => {
                tracing::error!(transfer = %idh, cause = %e, "cannot prepare the transfer");
                let node = Arc::clone(&self.node);
                let why = e.to_string();
                let _ = tokio::task::spawn_blocking(move || node.transfers().fail_transfer(&id, &why)).await;
                return;
            }
            Err(e) => {
                // A panic while preparing would repeat on every round: the transfer fails.
                tracing::error!(transfer = %idh, cause = %e, "preparing the transfer stopped");
                let node = Arc::clone(&self.node);
                let why = format!("preparing stopped: {e}");
                let _ = tokio::task::spawn_blocking(move || node.transfers().fail_transfer(&id, &why)).await;
                return;
            }
        };
        let sent = Arc::new(AtomicU64::new(0));
        let outcome = self.session(&plan, peer, &sent).await;
        let sent_now = sent.load(Ordering::Relaxed);
        let node = Arc::clone(&self.node);
        let result = match outcome {
            Ok(done) => {
                if done {
                    tracing::info!(transfer = %idh, "every chunk verified by the recipient; waiting for its receipt");
                }
                tokio::task::spawn_blocking(move || node.transfers().note_session(&id, sent_now, done, None)).await
            }
            Err(SessionError::Ended) => {
                tracing::info!(transfer = %idh, "session stopped: the transfer was ended");
                self.wake.notify_one();
                tokio::task::spawn_blocking(move || node.transfers().note_session(&id, sent_now, false, None)).await
            }
            Err(SessionError::Refused(r)) if RefuseCode::from_wire(&r.code) == Some(RefuseCode::Replayed) => {
                // The recipient has landed it already (its last HAVE was lost): wait for the receipt.
                tokio::task::spawn_blocking(move || node.transfers().note_session(&id, sent_now, true, None)).await
            }
            Err(SessionError::Refused(r)) if r.permanent => {
                tracing::warn!(transfer = %idh, code = %r.code, "the recipient refused the transfer: {}", r.text);
                let why = format!("refused by the recipient: {} [{}]", r.text, r.code);
                tokio::task::spawn_blocking(move || {
                    node.transfers().note_session(&id, sent_now, false, None)?;
                    node.transfers().fail_transfer(&id, &why)
                })
                .await
            }
            Err(e) => {
                tracing::info!(transfer = %idh, cause = %e, "transfer session ended early; it resumes");
                let why = e.to_string();
                tokio::task::spawn_blocking(move || node.transfers().note_session(&id, sent_now, false, Some(why)))
                    .await
            }
        };
        if let Ok(Err(e)) = result {
            tracing::warn!(transfer = %idh, cause = %e, "cannot record the transfer session");
        }
    }

    async fn open(&self, plan: &SendPlan, peer: PeerId, session: u64) -> Result<(Stream, Vec<u64>), SessionError> {
        let mut control = self.control.clone();
        let mut s = control
            .open_stream(peer, StreamProtocol::new(wire::STREAM_PROTOCOL))
            .await
            .map_err(|e| SessionError::Io(io_other(e)))?;
        let open = Open {
            v: WIRE_VERSION,
            session,
            grant: plan.grant.clone(),
            manifest: plan.manifest_bytes.clone(),
        };
        let body = wire::encode("open", &open).map_err(|e| SessionError::Io(io_other(e)))?;
        timed("open", write_frame(&mut s, frame::OPEN, &body)).await?;
        let have = timed_session("have", read_have(&mut s, plan.manifest.objects.len())).await?;
        Ok((s, have))
    }

    /// One session: returns true when the recipient holds every chunk.
    async fn session(&self, plan: &Arc<SendPlan>, peer: PeerId, sent: &Arc<AtomicU64>) -> Result<bool, SessionError> {
        let mut session = [0u8; 8];
        getrandom::fill(&mut session).map_err(|e| SessionError::Io(io_other(e)))?;
        let session = u64::from_le_bytes(session);
        let (first, have) = self.open(plan, peer, session).await?;
        let counts: Vec<u64> = plan
            .manifest
            .objects
            .iter()
            .map(|o| o.size.div_ceil(u64::from(plan.manifest.chunk_size)).max(1))
            .collect();
        let done = |have: &[u64]| have.iter().zip(&counts).all(|(h, n)| h >= n);
        report_progress(&*self.node, plan, &have, &counts);
        if done(&have) {
            return Ok(true);
        }
        let queue: VecDeque<(u32, u64)> = have
            .iter()
            .zip(&counts)
            .enumerate()
            .filter(|(_, (h, n))| h < n)
            .filter_map(|(i, (h, _))| u32::try_from(i).ok().map(|i| (i, *h)))
            .collect();
        let streams = usize::from(self.node.config().transfer.streams).min(queue.len()).max(1);
        let queue = Arc::new(Mutex::new(queue));
        let rate = Arc::new(Rate::new(self.node.config().transfer.max_rate_mb_s));
        let mut tasks = Vec::new();
        let mut first = Some(first);
        for _ in 0..streams {
            let stream = match first.take() {
                Some(s) => s,
                None => self.open(plan, peer, session).await?.0,
            };
            let (plan, queue, sent, rate, node) = (
                Arc::clone(plan),
                Arc::clone(&queue),
                Arc::clone(sent),
                Arc::clone(&rate),
                Arc::clone(&self.node),
            );
            tasks.push(tokio::spawn(async move {
                send_stream(stream, session, &plan, &queue, &sent, &rate, &node).await
            }));
        }
        let mut last = have;
        let mut error = None;
        for t in tasks {
            match t.await {
                Ok(Ok(h)) => {
                    for (l, n) in last.iter_mut().zip(h) {
                        *l = (*l).max(n);
                    }
                }
                Ok(Err(e)) => error = Some(e),
                Err(e) => error = Some(SessionError::Io(io_other(e))),
            }
        }
        report_progress(&*self.node, plan, &last, &counts);
        if done(&last) {
            return Ok(true);
        }
        Err(error.unwrap_or_else(|| SessionError::Io(io_other("the recipient is still missing chunks"))))
    }

    /// Recipient: one incoming stream.
    async fn receive(self: Arc<Self>, peer: PeerId, mut s: Stream) {
        let result = self.receive_inner(peer, &mut s).await;
        if let Err(e) = result {
            tracing::info!(peer = %peer, cause = %e, "incoming transfer stream ended early");
        }
        let _ = s.close().await;
    }

    async fn receive_inner(self: &Arc<Self>, peer: PeerId, s: &mut Stream) -> Result<(), SessionError> {
        // Nothing is read from a peer whose hello this node has not accepted.
        if !self.net.is_ready(peer).await {
            return Err(SessionError::Io(io_other("stream from a peer that is not trusted")));
        }
        let (kind, body) = timed("open", read_frame(s, MAX_FRAME)).await?;
        if kind != frame::OPEN {
            return Err(SessionError::Io(io_other("the stream does not start with OPEN")));
        }
        let open: Open = match wire::decode("open", &body, MAX_FRAME) {
            Ok(o) => o,
            Err(e) => {
                let r = super::refuse(RefuseCode::BadOpen, e.to_string(), true);
                self.node.transfers().live().counters().refused(&r.code);
                send_refuse(s, &r).await;
                return Err(SessionError::Refused(r));
            }
        };
        let node = Arc::clone(&self.node);
        let accepted = tokio::task::spawn_blocking(move || node.transfers().accept_stream(peer, &open))
            .await
            .map_err(|e| SessionError::Io(io_other(e)))?;
        let accepted = match accepted {
            Ok(a) => Arc::new(a),
            Err(r) => {
                tracing::warn!(peer = %peer, code = %r.code, "refused a transfer stream: {}", r.text);
                self.node.transfers().live().counters().refused(&r.code);
                send_refuse(s, &r).await;
                return Err(SessionError::Refused(r));
            }
        };
        let have = Have {
            v: WIRE_VERSION,
            chunks: accepted.have.clone(),
        };
        let body = wire::encode("have", &have).map_err(|e| SessionError::Io(io_other(e)))?;
        timed("have", write_frame(s, frame::HAVE, &body)).await?;
        // Chunks go to a blocking worker that verifies and writes them.
        let (tx, rx) = mpsc::channel::<Work>(QUEUE);
        let failed = Arc::new(AtomicBool::new(false));
        let worker = {
            let (e, a, failed) = (Arc::clone(self), Arc::clone(&accepted), Arc::clone(&failed));
            tokio::task::spawn_blocking(move || e.write_worker(&a, rx, &failed))
        };
        let result = async {
            loop {
                if failed.load(Ordering::Relaxed) {
                    let r = super::refuse(
                        RefuseCode::ChunkRefused,
                        "a chunk failed verification and was not written; send it again",
                        false,
                    );
                    self.node.transfers().live().counters().refused(&r.code);
                    send_refuse(s, &r).await;
                    return Err(SessionError::Io(io_other(
                        "a chunk was refused; the holder sends it again",
                    )));
                }
                let (kind, body) = timed(
                    "chunk",
                    read_frame(s, frame::CHUNK_PREFIX + wire::CHUNK_SIZE as usize + TAG_LEN + 1),
                )
                .await?;
                match kind {
                    frame::CHUNK => {
                        if tx.send(Work::Chunk(body)).await.is_err() {
                            return Err(SessionError::Io(io_other("the writer stopped")));
                        }
                    }
                    frame::DONE => {
                        let (reply, answer) = oneshot::channel();
                        if tx.send(Work::Done(reply)).await.is_err() {
                            return Err(SessionError::Io(io_other("the writer stopped")));
                        }
                        let have = answer
                            .await
                            .map_err(|_| SessionError::Io(io_other("the writer stopped")))?;
                        let complete = have
                            .iter()
                            .zip(&accepted.manifest.objects)
                            .all(|(h, o)| *h >= o.size.div_ceil(u64::from(accepted.manifest.chunk_size)).max(1));
                        if complete {
                            self.land(&accepted).await;
                        }
                        let body = wire::encode(
                            "have",
                            &Have {
                                v: WIRE_VERSION,
                                chunks: have,
                            },
                        )
                        .map_err(|e| SessionError::Io(io_other(e)))?;
                        timed("have", write_frame(s, frame::HAVE, &body)).await?;
                        return Ok(());
                    }
                    other => return Err(SessionError::Io(io_other(format!("unexpected frame type {other}")))),
                }
            }
        }
        .await;
        drop(tx);
        let _ = worker.await;
        result
    }

    async fn land(self: &Arc<Self>, accepted: &Arc<Accepted>) {
        if !lock(&self.landing).insert(accepted.id) {
            return;
        }
        let (node, a) = (Arc::clone(&self.node), Arc::clone(accepted));
        let r = tokio::task::spawn_blocking(move || node.transfers().land(&a)).await;
        lock(&self.landing).remove(&accepted.id);
        match r {
            Ok(Ok(())) => self.wake.notify_one(),
            Ok(Err(e)) => {
                tracing::error!(transfer = %hex::encode(accepted.id), cause = %e, "cannot store the received study");
                let node = Arc::clone(&self.node);
                let (id, why) = (accepted.id, e.to_string());
                let _ = tokio::task::spawn_blocking(move || node.transfers().fail_transfer(&id, &why)).await;
            }
            Err(_) => {}
        }
    }

    /// The blocking side of a receiving stream.
    fn write_worker(&self, a: &Accepted, mut rx: mpsc::Receiver<Work>, failed: &AtomicBool) {
        let mut writers: HashMap<u32, ObjectWriter> = HashMap::new();
        let mut scratch = Zeroizing::new(Vec::new());
        let idh = hex::encode(a.id);
        let release = |writers: &mut HashMap<u32, ObjectWriter>| {
            for (obj, mut w) in writers.drain() {
                if let Err(e) = w.checkpoint(self.node.transfers().store(), true) {
                    tracing::warn!(transfer = %idh, cause = %e, "cannot record received chunks");
                }
                if let Some(set) = lock(&self.busy).get_mut(&a.id) {
                    set.remove(&obj);
                }
            }
        };
        while let Some(work) = rx.blocking_recv() {
            match work {
                Work::Chunk(body) => {
                    if failed.load(Ordering::Relaxed) {
                        continue;
                    }
                    if let Err(e) = self.take_chunk(a, &mut writers, &body, &mut scratch) {
                        tracing::warn!(transfer = %idh, "refused a chunk: {e}");
                        failed.store(true, Ordering::Relaxed);
                    }
                }
                Work::Done(reply) => {
                    release(&mut writers);
                    let mut have = vec![0u64; a.manifest.objects.len()];
                    if let Ok(done) = self.node.transfers().store().chunks_done(&a.id) {
                        for (obj, n) in done {
                            if let Some(h) = have.get_mut(obj as usize) {
                                *h = n;
                            }
                        }
                    }
                    let _ = reply.send(have);
                }
            }
        }
        release(&mut writers);
    }

    fn take_chunk(
        &self,
        a: &Accepted,
        writers: &mut HashMap<u32, ObjectWriter>,
        body: &[u8],
        scratch: &mut Zeroizing<Vec<u8>>,
    ) -> Result<(), TakeError> {
        let (object, chunk, sealed) = super::codec::parse_chunk(body).ok_or(TakeError::Short)?;
        if object as usize >= a.manifest.objects.len() {
            return Err(TakeError::NotInManifest(object));
        }
        if !writers.contains_key(&object) {
            // Finish the objects this stream wrote before (one at a time per stream).
            let done: Vec<u32> = writers
                .iter()
                .filter(|(_, w)| w.is_complete())
                .map(|(k, _)| *k)
                .collect();
            for k in done {
                if let Some(mut w) = writers.remove(&k) {
                    w.checkpoint(self.node.transfers().store(), true)?;
                }
                if let Some(set) = lock(&self.busy).get_mut(&a.id) {
                    set.remove(&k);
                }
            }
            if !lock(&self.busy).entry(a.id).or_default().insert(object) {
                return Err(TakeError::Busy(object));
            }
            // What is durable now, not what was when the stream opened.
            let have = self.node.transfers().store().chunk_done(&a.id, object)?;
            match ObjectWriter::open(self.node.transfers().store(), a, object, have) {
                Ok(w) => {
                    writers.insert(object, w);
                }
                Err(e) => {
                    if let Some(set) = lock(&self.busy).get_mut(&a.id) {
                        set.remove(&object);
                    }
                    return Err(e.into());
                }
            }
        }
        let w = writers.get_mut(&object).ok_or(TakeError::NoWriter(object))?;
        let added = w.write_chunk(chunk, sealed, &a.manifest, scratch)?;
        let complete = w.is_complete();
        w.checkpoint(self.node.transfers().store(), complete)?;
        self.node.transfers().live().update(&a.id, |p| {
            p.done_bytes += added;
            if complete {
                p.done_objects += 1;
            }
        });
        self.node.transfers().live().counters().received(added, complete);
        Ok(())
    }
}

/// Why a received chunk frame was not taken.
#[derive(Debug, thiserror::Error)]
enum TakeError {
    #[error("short chunk frame")]
    Short,
    #[error("object {0} is not in the manifest")]
    NotInManifest(u32),
    #[error("object {0} is being received on another stream")]
    Busy(u32),
    #[error("object {0}: no writer")]
    NoWriter(u32),
    #[error(transparent)]
    Chunk(#[from] super::ChunkError),
    #[error(transparent)]
    Transfer(#[from] super::TransferError),
    #[error(transparent)]
    Store(#[from] crate::store::StoreError),
}

/// Why the chunks of an object could not be produced.
#[derive(Debug, thiserror::Error)]
enum ProduceError {
    #[error("no object {0}")]
    NoObject(u32),
    #[error("bad salt")]
    BadSalt,
    #[error("no source for object {0}")]
    NoSource(u32),
    #[error("chunk {0} is too large")]
    TooLarge(u64),
    /// Reading `object` (a blob by its short address, or an object by its
    /// index: never a UID) failed.
    #[error("{object}: {cause}")]
    Read {
        object: String,
        #[source]
        cause: std::io::Error,
    },
    #[error("{object}: {cause}")]
    Open {
        object: String,
        #[source]
        cause: medmesh_seal::SealError,
    },
    #[error("object {object} chunk {index}: the stored data changed since the manifest was signed")]
    Changed { object: u32, index: u64 },
    #[error(transparent)]
    Seal(#[from] medmesh_seal::SealError),
}

enum Work {
    Chunk(Vec<u8>),
    Done(oneshot::Sender<Vec<u64>>),
}

/// Why a session ended early.
#[derive(Debug, thiserror::Error)]
enum SessionError {
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error("refused: {} [{}]", .0.text, .0.code)]
    Refused(Refuse),
    /// The holder ended the transfer while the session ran.
    #[error("the transfer was ended")]
    Ended,
}

async fn send_refuse(s: &mut Stream, r: &Refuse) {
    if let Ok(body) = wire::encode("refuse", r) {
        let _ = timed("refuse", write_frame(s, frame::REFUSE, &body)).await;
    }
}

async fn read_have<R: futures::AsyncRead + Unpin>(s: &mut R, objects: usize) -> Result<Vec<u64>, SessionError> {
    let max = MAX_MESSAGE + objects * 10;
    let (kind, body) = read_frame(s, max).await?;
    match kind {
        frame::HAVE => {
            let have: Have = wire::decode("have", &body, max).map_err(io_other)?;
            if have.chunks.len() != objects {
                return Err(SessionError::Io(io_other("HAVE names another number of objects")));
            }
            Ok(have.chunks)
        }
        frame::REFUSE => {
            let r: Refuse = wire::decode("refuse", &body, MAX_MESSAGE).map_err(io_other)?;
            Err(SessionError::Refused(r))
        }
        other => Err(SessionError::Io(io_other(format!("unexpected frame type {other}")))),
    }
}

fn report_progress(node: &dyn Host, plan: &SendPlan, have: &[u64], counts: &[u64]) {
    let cs = u64::from(plan.manifest.chunk_size);
    let mut bytes = 0;
    let mut objects = 0;
    for ((h, n), o) in have.iter().zip(counts).zip(&plan.manifest.objects) {
        bytes += (h * cs).min(o.size);
        if h >= n {
            objects += 1;
        }
    }
    node.transfers().live().update(&plan.id, |p| {
        p.done_bytes = bytes;
        p.done_objects = objects;
    });
}

/// A send-rate cap shared by the streams of a session.
struct Rate {
    bytes_per_sec: u64,
    start: Instant,
    sent: AtomicU64,
}

impl Rate {
    fn new(mb_s: u32) -> Self {
        Rate {
            bytes_per_sec: u64::from(mb_s) * 1_000_000,
            start: Instant::now(),
            sent: AtomicU64::new(0),
        }
    }

    async fn pace(&self, n: u64) {
        if self.bytes_per_sec == 0 {
            return;
        }
        let total = self.sent.fetch_add(n, Ordering::Relaxed) + n;
        let due = Duration::from_secs_f64(total as f64 / self.bytes_per_sec as f64);
        let elapsed = self.start.elapsed();
        if due > elapsed {
            tokio::time::sleep(due - elapsed).await;
        }
    }
}

/// One stream of a session: takes objects from the queue until it is
/// empty, then DONE, then the recipient's final HAVE. The recipient's frames
/// are read while chunks are written, so a refusal (a chunk it did not
/// accept) ends the stream at once; the next session sends the rest.
async fn send_stream(
    s: Stream,
    session: u64,
    plan: &Arc<SendPlan>,
    queue: &Mutex<VecDeque<(u32, u64)>>,
    sent: &AtomicU64,
    rate: &Rate,
    node: &Arc<dyn Host>,
) -> Result<Vec<u64>, SessionError> {
    let (mut rd, mut wr) = s.split();
    let objects = plan.manifest.objects.len();
    let reply = async move { read_have(&mut rd, objects).await };
    let write = async {
        loop {
            let next = lock(queue).pop_front();
            let Some((object, from)) = next else { break };
            let (tx, mut rx) = mpsc::channel::<Result<Vec<u8>, ProduceError>>(QUEUE);
            let p = Arc::clone(plan);
            let producer = tokio::task::spawn_blocking(move || produce(&p, session, object, from, &tx));
            while let Some(item) = rx.recv().await {
                if node.transfers().live().is_ended(&plan.id) {
                    return Err(SessionError::Ended);
                }
                let f = item.map_err(|e| SessionError::Io(io_other(e)))?;
                timed("chunk", wr.write_all(&f)).await?;
                let n = f.len() as u64;
                sent.fetch_add(n, Ordering::Relaxed);
                node.transfers().live().update(&plan.id, |p| p.bytes_sent += n);
                node.transfers().live().counters().sent(n);
                rate.pace(n).await;
            }
            let _ = producer.await;
        }
        timed("done", wr.write_all(&super::codec::done_frame())).await?;
        timed("flush", wr.flush()).await?;
        Ok::<_, SessionError>(wr)
    };
    tokio::pin!(reply);
    let mut wr = tokio::select! {
        // The recipient spoke before DONE: a refusal (or a protocol error).
        early = &mut reply => {
            return match early {
                Ok(_) => Err(SessionError::Io(io_other("the recipient answered before the end of the stream"))),
                Err(e) => Err(e),
            };
        }
        written = write => written?,
    };
    let have = timed_session("have", reply).await?;
    let _ = wr.close().await;
    Ok(have)
}

async fn timed_session<T>(
    what: &str,
    f: impl std::future::Future<Output = Result<T, SessionError>>,
) -> Result<T, SessionError> {
    match tokio::time::timeout(IO_TIMEOUT, f).await {
        Ok(r) => r,
        Err(_) => Err(SessionError::Io(std::io::Error::new(
            std::io::ErrorKind::TimedOut,
            format!("{what}: no answer in {} s", IO_TIMEOUT.as_secs()),
        ))),
    }
}

/// Reads, checks and seals the chunks of one object from chunk `from` on,
/// as ready-to-send frames.
fn produce(plan: &SendPlan, session: u64, object: u32, from: u64, tx: &mpsc::Sender<Result<Vec<u8>, ProduceError>>) {
    if let Err(e) = produce_inner(plan, session, object, from, tx) {
        let _ = tx.blocking_send(Err(e));
    }
}

fn produce_inner(
    plan: &SendPlan,
    session: u64,
    object: u32,
    from: u64,
    tx: &mpsc::Sender<Result<Vec<u8>, ProduceError>>,
) -> Result<(), ProduceError> {
    let o = plan
        .manifest
        .objects
        .get(object as usize)
        .ok_or(ProduceError::NoObject(object))?;
    let salt: [u8; 32] = o.salt.as_slice().try_into().map_err(|_| ProduceError::BadSalt)?;
    let header = Header {
        chunk_size: plan.manifest.chunk_size,
        object_index: object,
        plaintext_len: o.size,
        salt,
        streamed: false,
    };
    let mut sealer = Sealer::new(&plan.key, header);
    let cs = u64::from(plan.manifest.chunk_size);
    let mut reader: Box<dyn Read + Send> = match plan.sources.get(object as usize) {
        Some(Source::Blob { address, file, key }) => {
            let path = format!("blob {}", hex::encode(&address[..8]));
            let file = file.open().map_err(|e| ProduceError::Read {
                object: path.clone(),
                cause: e.source,
            })?;
            let mut r = OpenReader::new(key, BufReader::with_capacity(512 * 1024, file)).map_err(|cause| {
                ProduceError::Open {
                    object: path.clone(),
                    cause,
                }
            })?;
            r.seek_plain(from * cs)
                .map_err(|cause| ProduceError::Open { object: path, cause })?;
            Box::new(r)
        }
        Some(Source::Memory(bytes)) => {
            let start = usize::try_from((from * cs).min(bytes.len() as u64)).unwrap_or(0);
            Box::new(std::io::Cursor::new(bytes[start..].to_vec()))
        }
        None => return Err(ProduceError::NoSource(object)),
    };
    for index in from..header.chunk_count() {
        let len = usize::try_from(header.chunk_plain_len(index)).map_err(|_| ProduceError::TooLarge(index))?;
        let (mut f, start) = super::codec::chunk_frame(object, index, len).ok_or(ProduceError::TooLarge(index))?;
        let plain = &mut f[start..start + len];
        reader.read_exact(plain).map_err(|cause| ProduceError::Read {
            object: format!("object {object}"),
            cause,
        })?;
        // Sealing again at an index is safe only for the same plaintext: check it.
        let at = usize::try_from(index * 32).map_err(|_| ProduceError::TooLarge(index))?;
        if Some(blake3::hash(plain).as_bytes().as_slice()) != o.chunks.get(at..at + 32) {
            return Err(ProduceError::Changed { object, index });
        }
        let tag = sealer.seal_chunk_at(index, plain)?;
        f[start + len..].copy_from_slice(&tag);
        #[cfg(feature = "fault-injection")]
        fault::apply(plan, session, object, index, &mut f[start..]);
        #[cfg(not(feature = "fault-injection"))]
        let _ = session;
        if tx.blocking_send(Ok(f)).is_err() {
            return Ok(());
        }
    }
    Ok(())
}

/// Fault injection for tests (cargo feature `fault-injection`, never in
/// release builds): `MEDMESH_FAULT=corrupt:OBJECT:CHUNK` flips a byte of that
/// sealed chunk on the wire, `foreign:OBJECT:CHUNK` replaces it with the
/// same chunk sealed under another transfer's key; several, comma-separated,
/// fire one after the other: each once, the first time its chunk is sent in
/// a session later than the one where the spec before it fired (a session
/// cut short by a refusal may never have shown the recipient the chunks
/// behind the refused one, so two faults never share a session).
#[cfg(feature = "fault-injection")]
mod fault {
    use std::sync::Mutex;

    /// The session each spec fired in, in the order of the specs.
    static FIRED: Mutex<Vec<u64>> = Mutex::new(Vec::new());

    pub(super) fn apply(plan: &super::SendPlan, session: u64, object: u32, index: u64, sealed: &mut [u8]) {
        let Ok(specs) = std::env::var("MEDMESH_FAULT") else {
            return;
        };
        let mut fired = FIRED.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let Some(spec) = specs.split(',').nth(fired.len()) else {
            return;
        };
        if fired.last() == Some(&session) {
            return;
        }
        let mut parts = spec.trim().split(':');
        let (Some(kind), Some(o), Some(c)) = (parts.next(), parts.next(), parts.next()) else {
            return;
        };
        if o.parse::<u32>().ok() != Some(object) || c.parse::<u64>().ok() != Some(index) {
            return;
        }
        fired.push(session);
        drop(fired);
        tracing::warn!(
            object,
            chunk = index,
            kind,
            "fault injection: altering a chunk on the wire"
        );
        match kind {
            "corrupt" => {
                if let Some(b) = sealed.get_mut(7) {
                    *b ^= 0x40;
                }
            }
            "foreign" => foreign(plan, object, index, sealed),
            _ => {}
        }
    }

    /// Replaces the chunk with the same position of another transfer: the
    /// same plaintext sealed under another transfer key.
    fn foreign(plan: &super::SendPlan, object: u32, index: u64, sealed: &mut [u8]) {
        let Some(o) = plan.manifest.objects.get(object as usize) else {
            return;
        };
        let mut salt = [0u8; 32];
        salt.copy_from_slice(&o.salt);
        let header = medmesh_seal::Header {
            chunk_size: plan.manifest.chunk_size,
            object_index: object,
            plaintext_len: o.size,
            salt,
            streamed: false,
        };
        let len = sealed.len() - medmesh_seal::TAG_LEN;
        let (body, tag) = sealed.split_at_mut(len);
        // Back to plaintext under this transfer's key, then sealed under another.
        let ours = medmesh_seal::Opener::new(&plan.key, header);
        let mut t = [0u8; medmesh_seal::TAG_LEN];
        t.copy_from_slice(tag);
        if ours.open_chunk(index, body, &t).is_err() {
            return;
        }
        let other = medmesh_seal::DataKey::generate();
        let mut s = medmesh_seal::Sealer::new(&other, header);
        if let Ok(t) = s.seal_chunk_at(index, body) {
            tag.copy_from_slice(&t);
        }
    }
}
