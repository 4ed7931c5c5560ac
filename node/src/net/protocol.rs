//! The protocols services register with the network, and how the network
//! hands them what accepted peers send (after iroh's `Router` and
//! `ProtocolHandler`: the endpoint knows no application).
//!
//! A service registers, on a [`Router`], before the network starts:
//! - a request-response protocol ([`Router::request_response`]): one request
//!   written to its own stream, then closed, and one response the same way
//!   (the framing of [`super::codec`]); the network reads at most the
//!   registered sizes and gives the service the bytes, which it decodes;
//! - a gossip topic ([`Router::topic`]): every message from an accepted peer
//!   is handed to the service, whose verdict decides whether it is passed on;
//! - a revocation catch-up ([`Router::catch_up`]), which the network's gating
//!   calls while it holds consortium peers (see [`super::revocations`]).
//!
//! Streams (`libp2p_stream`) are open to every service through
//! [`super::NetHandle::stream_control`].
//!
//! Gating, limits and back-pressure stay in the network and apply to every
//! protocol alike: a request or a gossip message from a peer that is not
//! accepted now is never handed to a service (a parked peer's request only
//! when [`RequestHandler::serves_parked`] says so), requests in flight per
//! protocol and connection are bounded, and reads stop at the sizes given.

use std::io;
use std::sync::Arc;
use std::time::Duration;

use futures::future::BoxFuture;
use futures::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use libp2p::{PeerId, StreamProtocol, request_response};

/// Request-response protocols a router holds, at most (libp2p's derived
/// behaviour needs a field per protocol; unused ones are switched off).
pub const MAX_REQUEST_PROTOCOLS: usize = 4;

/// What a service says of a request, on the network task (so, quickly).
pub enum Admit {
    /// Answer this at once (a refusal, a retry-later).
    Answer(Vec<u8>),
    /// Do this off the network task (it may block) and answer with what it
    /// returns; `None` sends no answer.
    Work(Box<dyn FnOnce() -> Option<Vec<u8>> + Send>),
    /// No answer (the request did not decode).
    Drop,
}

impl std::fmt::Debug for Admit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Answer(_) => "Answer",
            Self::Work(_) => "Work",
            Self::Drop => "Drop",
        })
    }
}

/// A service's side of a request-response protocol.
pub trait RequestHandler: Send + Sync + 'static {
    /// Whether `request` may be answered to a parked peer (its hello is
    /// acceptable, but it waits while this node catches up on revocations).
    fn serves_parked(&self, request: &[u8]) -> bool {
        let _ = request;
        false
    }

    /// Takes a request from `peer`, accepted now.
    fn admit(&self, peer: PeerId, request: Vec<u8>) -> Admit;
}

/// What becomes of a gossip message (gossipsub's validation verdict).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Acceptance {
    /// Valid: pass it on.
    Accept,
    /// Not for this node to judge: do not pass it on.
    Ignore,
    /// Invalid: do not pass it on, and count it against the sender.
    Reject,
}

/// A service's side of a gossip topic.
pub trait TopicHandler: Send + Sync + 'static {
    /// Judges a message `peer` (accepted now) passed on; called off the
    /// network task (it may block).
    fn on_message(&self, peer: PeerId, data: &[u8]) -> Acceptance;
}

/// The service that catches this node up on consortium revocations.
pub trait CatchUp: Send + Sync + 'static {
    /// Asks `peer` for the revocations of `consortium` this node lacks
    /// (`digest`: the summary digest of those applied here) and applies
    /// them; resolves to `true` once the peer answered (and what it sent was
    /// taken), `false` when it did not answer.
    fn catch_up(&self, peer: PeerId, consortium: String, digest: Vec<u8>) -> BoxFuture<'static, bool>;

    /// Called every maintenance round (test builds use it to misbehave on cue).
    fn maintenance(&self) {}
}

/// A registered request-response protocol.
pub(super) struct RequestProtocol {
    pub(super) name: &'static str,
    pub(super) codec: RawCodec,
    pub(super) timeout: Duration,
    pub(super) streams: usize,
    pub(super) handler: Arc<dyn RequestHandler>,
}

/// A registered gossip topic.
pub(super) struct TopicRegistration {
    pub(super) name: &'static str,
    pub(super) max_message: usize,
    pub(super) handler: Arc<dyn TopicHandler>,
}

/// What services registered, for [`super::start`].
#[derive(Default)]
pub struct Router {
    pub(super) requests: Vec<RequestProtocol>,
    pub(super) topic: Option<TopicRegistration>,
    pub(super) catch_up: Option<Arc<dyn CatchUp>>,
    pub(super) on_accept: Vec<Arc<tokio::sync::Notify>>,
}

impl std::fmt::Debug for Router {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Router")
            .field("requests", &self.requests.iter().map(|p| p.name).collect::<Vec<_>>())
            .field("topic", &self.topic.as_ref().map(|t| t.name))
            .finish_non_exhaustive()
    }
}

/// Limits of a request-response protocol.
#[derive(Debug, Clone, Copy)]
pub struct RequestLimits {
    /// What its messages are, for errors.
    pub what: &'static str,
    /// Largest request read, bytes.
    pub max_request: usize,
    /// Largest response read, bytes.
    pub max_response: usize,
    /// How long a request waits for its answer.
    pub timeout: Duration,
    /// Requests in flight per connection, at most.
    pub streams: usize,
}

/// Errors of registering protocols.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RouterError {
    /// A protocol or topic of that name is registered already.
    #[error("protocol {0} is registered twice")]
    Duplicate(&'static str),
    /// More request-response protocols than [`MAX_REQUEST_PROTOCOLS`].
    #[error("more than {MAX_REQUEST_PROTOCOLS} request-response protocols")]
    TooMany,
    /// A second gossip topic (the network carries one).
    #[error("a second gossip topic ({0})")]
    SecondTopic(&'static str),
}

impl Router {
    /// An empty router.
    #[must_use]
    pub fn new() -> Self {
        Self::default()
    }

    /// Registers a request-response protocol named `name`.
    ///
    /// # Errors
    /// [`RouterError`] when the name is taken or there are too many.
    pub fn request_response(
        mut self,
        name: &'static str,
        limits: RequestLimits,
        handler: Arc<dyn RequestHandler>,
    ) -> Result<Self, RouterError> {
        if self.requests.iter().any(|p| p.name == name) {
            return Err(RouterError::Duplicate(name));
        }
        if self.requests.len() >= MAX_REQUEST_PROTOCOLS {
            return Err(RouterError::TooMany);
        }
        self.requests.push(RequestProtocol {
            name,
            codec: RawCodec {
                what: limits.what,
                max_request: limits.max_request,
                max_response: limits.max_response,
            },
            timeout: limits.timeout,
            streams: limits.streams,
            handler,
        });
        Ok(self)
    }

    /// Registers the gossip topic `name`, whose messages are at most
    /// `max_message` bytes.
    ///
    /// # Errors
    /// [`RouterError::SecondTopic`].
    pub fn topic(
        mut self,
        name: &'static str,
        max_message: usize,
        handler: Arc<dyn TopicHandler>,
    ) -> Result<Self, RouterError> {
        if self.topic.is_some() {
            return Err(RouterError::SecondTopic(name));
        }
        self.topic = Some(TopicRegistration {
            name,
            max_message,
            handler,
        });
        Ok(self)
    }

    /// Registers the revocation catch-up.
    #[must_use]
    pub fn catch_up(mut self, catch_up: Arc<dyn CatchUp>) -> Self {
        self.catch_up = Some(catch_up);
        self
    }

    /// Notifies `wake` whenever a peer becomes trusted (services waiting for
    /// a peer resume).
    #[must_use]
    pub fn on_accept(mut self, wake: Arc<tokio::sync::Notify>) -> Self {
        self.on_accept.push(wake);
        self
    }
}

/// How an outbound request waits for its peer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Delivery {
    /// Dial the peer if needed and wait until it is connected and trusted,
    /// at most [`super::SEND_WAIT`].
    WaitTrusted,
    /// Send only if the peer is connected and trusted now; else fail at once.
    IfTrusted,
    /// Send now, whatever the peer's state (revocation catch-up with a parked peer).
    Now,
}

/// The codec of every registered request-response protocol: the bytes of
/// one message written to its own stream, which is then closed; reads stop
/// at a size limit per direction (oversize input is an `InvalidData` error
/// naming the message). The service decodes the bytes.
#[derive(Debug, Clone, Copy)]
pub struct RawCodec {
    what: &'static str,
    max_request: usize,
    max_response: usize,
}

async fn read_bytes<S: AsyncRead + Unpin + Send>(io: &mut S, what: &str, max: usize) -> io::Result<Vec<u8>> {
    let mut buf = Vec::new();
    let limit = u64::try_from(max).unwrap_or(u64::MAX).saturating_add(1);
    io.take(limit).read_to_end(&mut buf).await?;
    if buf.len() > max {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("{what} larger than {max} bytes"),
        ));
    }
    Ok(buf)
}

async fn write_all<S: AsyncWrite + Unpin + Send>(io: &mut S, bytes: &[u8]) -> io::Result<()> {
    io.write_all(bytes).await?;
    io.close().await
}

impl request_response::Codec for RawCodec {
    type Protocol = StreamProtocol;
    type Request = Vec<u8>;
    type Response = Vec<u8>;

    async fn read_request<T>(&mut self, _: &StreamProtocol, io: &mut T) -> io::Result<Vec<u8>>
    where
        T: AsyncRead + Unpin + Send,
    {
        read_bytes(io, self.what, self.max_request).await
    }

    async fn read_response<T>(&mut self, _: &StreamProtocol, io: &mut T) -> io::Result<Vec<u8>>
    where
        T: AsyncRead + Unpin + Send,
    {
        read_bytes(io, self.what, self.max_response).await
    }

    async fn write_request<T>(&mut self, _: &StreamProtocol, io: &mut T, req: Vec<u8>) -> io::Result<()>
    where
        T: AsyncWrite + Unpin + Send,
    {
        write_all(io, &req).await
    }

    async fn write_response<T>(&mut self, _: &StreamProtocol, io: &mut T, res: Vec<u8>) -> io::Result<()>
    where
        T: AsyncWrite + Unpin + Send,
    {
        write_all(io, &res).await
    }
}
