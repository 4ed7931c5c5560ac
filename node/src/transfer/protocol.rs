//! `/medmesh/transfer/1` on the network: answering the messages of trusted
//! peers (requests, decisions, receipts), under the per-peer request rate of
//! `[limits]`, and sending this node's own.
//!
//! The network hands a message to [`TransferProtocol`] only from a peer it
//! accepted now; the answer is one of the transfer functions'.

use std::sync::Arc;
use std::time::Instant;

use libp2p::PeerId;

use super::wire::{Answer, AnswerBody, Msg, MsgBody, WIRE_VERSION};
use super::{Host, TransferError};

/// What the transfer protocol makes of a message, before answering it.
pub enum Taken {
    /// Answer at once with these bytes (over the peer's request rate).
    Now(Vec<u8>),
    /// Answer after this (blocking) work.
    Later(Box<dyn FnOnce() -> Option<Vec<u8>> + Send>),
    /// No answer (the message did not decode).
    Drop,
}

impl std::fmt::Debug for Taken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Now(_) => "Now",
            Self::Later(_) => "Later",
            Self::Drop => "Drop",
        })
    }
}

/// The holder's side of `/medmesh/transfer/1`.
pub struct TransferProtocol {
    node: Arc<dyn Host>,
    /// Transfer requests per peer (`[limits]`).
    requests: crate::limits::RequestLimiter,
    /// Wakes the transfer engine (a request was granted).
    wake: Arc<tokio::sync::Notify>,
}

impl std::fmt::Debug for TransferProtocol {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TransferProtocol").finish_non_exhaustive()
    }
}

fn encode(answer: &Answer) -> Option<Vec<u8>> {
    match super::wire::encode("transfer answer", answer) {
        Ok(b) => Some(b),
        Err(e) => {
            tracing::warn!(cause = %e, "transfer answer not encoded");
            None
        }
    }
}

impl TransferProtocol {
    /// The protocol of `node`; `wake` wakes its transfer engine.
    #[must_use]
    pub fn new(node: Arc<dyn Host>, wake: Arc<tokio::sync::Notify>) -> Arc<Self> {
        let requests = crate::limits::RequestLimiter::new(&node.config().limits);
        Arc::new(Self { node, requests, wake })
    }

    /// Takes a message from `peer` (trusted now): over its request rate, it
    /// is answered at once and nothing is recorded; else it is answered by
    /// [`answer_transfer`], off the network task.
    #[must_use]
    pub fn take(self: &Arc<Self>, peer: PeerId, message: &[u8]) -> Taken {
        let msg: Msg = match super::wire::decode("transfer message", message, super::wire::MAX_MESSAGE) {
            Ok(m) => m,
            Err(e) => {
                tracing::debug!(peer = %peer, cause = %e, "inbound transfer message failed");
                return Taken::Drop;
            }
        };
        if let Some(body) =
            crate::transfer::admission::admit_message(&self.requests, &peer.to_string(), &msg.body, Instant::now())
        {
            tracing::warn!(peer = %peer, "transfer request over the peer's rate: answered retry-later");
            count_refusal(&*self.node, &body);
            return encode(&Answer { v: WIRE_VERSION, body }).map_or(Taken::Drop, Taken::Now);
        }
        let this = Arc::clone(self);
        Taken::Later(Box::new(move || {
            let body = match answer_transfer(&*this.node, peer, msg) {
                Ok(b) => b,
                Err(e) => {
                    tracing::error!(peer = %peer, cause = %e, "cannot answer a transfer message");
                    AnswerBody::Refused {
                        code: "internal".into(),
                        text: "the holder could not decide; try again later".into(),
                    }
                }
            };
            count_refusal(&*this.node, &body);
            let granted = matches!(body, AnswerBody::Granted { .. });
            let answer = encode(&Answer { v: WIRE_VERSION, body });
            if granted {
                this.wake.notify_one();
            }
            answer
        }))
    }
}

/// Counts an answer that refuses a message (`/metrics`): a retry-later of
/// `[limits]` or a refusal, by its code. A denial's reasons are counted
/// where the holder decides ([`super::Transfers::answer_request`]).
fn count_refusal(node: &dyn Host, body: &AnswerBody) {
    match body {
        AnswerBody::RetryLater { code, .. } | AnswerBody::Refused { code, .. } => {
            node.transfers().live().counters().refused(code);
        }
        _ => {}
    }
}

/// The node's answer to a transfer message from a trusted peer.
///
/// # Errors
/// The transfer functions' errors.
pub fn answer_transfer(node: &dyn Host, peer: PeerId, msg: Msg) -> Result<AnswerBody, TransferError> {
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
            if request_id.parse::<super::RequestId>().is_err() || crate::dicom::check_uid(&study_uid).is_err() {
                return Ok(AnswerBody::Refused {
                    code: "bad-request".into(),
                    text: "request id or Study Instance UID malformed".into(),
                });
            }
            if let Some(busy) = node.transfers().admit_request(peer)? {
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

/// What the transfer service needs of the network: sending
/// `/medmesh/transfer/1` messages, and reaching a peer. The composition root
/// implements it on the network's handle (`daemon`), so that transfer never
/// names the network.
pub trait TransferNet: Clone + Send + Sync + 'static {
    /// Why a message got no answer.
    type Error: std::error::Error + Send + Sync + 'static;
    /// Sends `msg` to `peer` (dialling it and waiting until it is trusted,
    /// a bounded time) and returns the answer.
    ///
    /// # Errors
    /// The network stopped, the peer could not be reached or did not
    /// answer, or the answer did not decode.
    fn transfer_message(
        &self,
        peer: PeerId,
        msg: Msg,
    ) -> impl std::future::Future<Output = Result<Answer, Self::Error>> + Send;
    /// Whether `peer` is connected and trusted now.
    fn is_ready(&self, peer: PeerId) -> impl std::future::Future<Output = bool> + Send;
    /// Dials `peer` (known addresses) if it is not connected.
    fn dial(&self, peer: PeerId) -> impl std::future::Future<Output = ()> + Send;
}
