//! What a route of the admin API is: its method, path, request and answer
//! types (the wire), and how it is served from a node. Every route is one
//! type implementing [`Call`] (one JSON answer) or [`Stream`] (JSON Lines
//! progress, then a summary), listed once in [`super::routes::TABLE`].
//!
//! The same handler serves a route in the node's admin server and, when no
//! node runs on the home, in the CLI's own process on the home's files
//! ([`Ctx::offline`]): the client and the server share the route table, so
//! an operation is written once in its service and once here.

use std::future::Future;
use std::path::PathBuf;
use std::sync::Arc;

use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::access::{Operation, SiteRole};
use crate::api::GatewayStatus;
use crate::home::{HomeError, Node};
use crate::net::{NetError, NetHandle};
use crate::transfer::protocol::TransferNet;

/// The HTTP method of a route.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verb {
    /// `GET`: no request body (the request type is `()`).
    Get,
    /// `POST`: a JSON request body.
    Post,
}

impl Verb {
    /// The method's name on the wire.
    #[must_use]
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Get => "GET",
            Self::Post => "POST",
        }
    }
}

impl std::fmt::Display for Verb {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Who may call a route through the web API (`/api/v1`, the `web` module),
/// besides the admin socket, which serves every route.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WebAccess {
    /// Only on the admin socket: the route names files of the node's host
    /// (import, export, de-identify), or is the host operator's (purge,
    /// store check).
    Socket,
    /// A person or machine client holding a role that the permission table
    /// ([`crate::access::TABLE`]) grants one of these operations.
    AnyOf(&'static [Operation]),
}

/// A person (or machine client) calling through the web, as the identity
/// provider asserted them: their pseudonymous reference at this site and
/// their site roles (never empty for a caller that got this far).
#[derive(Clone, PartialEq, Eq)]
pub struct Person {
    /// The keyed reference of the provider's subject (32 hex digits; the
    /// ledger's `user`).
    pub user: String,
    /// Their roles, in table order.
    pub roles: Vec<SiteRole>,
    /// How they called: `console` (a session) or `api` (a bearer token).
    pub via: &'static str,
}

impl std::fmt::Debug for Person {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Person")
            .field("user", &self.user)
            .field("roles", &self.roles)
            .field("via", &self.via)
            .finish()
    }
}

impl Person {
    /// Whether one of their roles may perform `op`.
    #[must_use]
    pub fn may(&self, op: Operation) -> bool {
        self.roles.iter().any(|r| crate::access::permits(*r, op))
    }

    /// Whether one of their roles may call a route of `access`.
    #[must_use]
    pub fn may_call(&self, access: WebAccess) -> bool {
        match access {
            WebAccess::Socket => false,
            WebAccess::AnyOf(ops) => ops.iter().any(|op| self.may(*op)),
        }
    }

    /// The role the ledger names for their action: the first of theirs that
    /// the table grants `op` (the first role when none does).
    #[must_use]
    pub fn role_for(&self, op: Option<Operation>) -> Option<SiteRole> {
        op.and_then(|op| self.roles.iter().copied().find(|r| crate::access::permits(*r, op)))
            .or_else(|| self.roles.first().copied())
    }
}

/// Who sent a request to a route.
#[derive(Debug, Clone)]
pub enum Caller {
    /// The admin socket: the home's owner on the node's host.
    Socket,
    /// A person or machine client through the web API.
    Person(Person),
}

/// A route of the admin API: what travels on the wire.
pub trait Route: Send + Sync + 'static {
    /// Its method.
    const METHOD: Verb;
    /// Its whole path, `/v1/...`.
    const PATH: &'static str;
    /// The request body (`()` for a `GET`).
    type Request: Serialize + DeserializeOwned + Send + 'static;
    /// The answer (for a [`Stream`], its summary).
    type Answer: Serialize + DeserializeOwned + Send + 'static;

    /// The local paths the request names. The node has its own working
    /// directory: the client makes them absolute before sending, and the
    /// server refuses a relative one ([`Route::check`]).
    fn paths(_request: &mut Self::Request) -> Vec<&mut PathBuf> {
        Vec::new()
    }

    /// Who may call it through the web API.
    const WEB: WebAccess;

    /// Whether a person's call is in the ledger (`person-acted`): every
    /// action, and every view of patient data or of the ledger; not the
    /// listings without either that a console page polls (the transfer
    /// queue, approvals, sink status, feed heads), which would fill the
    /// shared ledger with page views.
    const LOGGED: bool = true;

    /// What the web layer checks and fixes of a request of `person` (who
    /// may call the route, [`Person::may_call`]) before serving it: e.g. a
    /// study request carries the person's own role, never one they typed.
    ///
    /// # Errors
    /// [`ServeError::Forbidden`] naming what their roles do not allow.
    fn admit(_request: &mut Self::Request, _person: &Person) -> Result<(), ServeError> {
        Ok(())
    }

    /// What of the answer `person` may see: by default all of it (their
    /// roles allow the route); a route whose answer mixes what some roles
    /// may see with what they may not filters it here.
    ///
    /// # Errors
    /// [`ServeError::Forbidden`] when nothing of it may be shown.
    fn shape(answer: Self::Answer, _person: &Person) -> Result<Self::Answer, ServeError> {
        Ok(answer)
    }

    /// What the person's action concerned, for the ledger's `person-acted`
    /// entry: a transfer id, a consent's keyed reference, never patient data.
    fn target(_node: &Node, _answer: &Self::Answer) -> Option<String> {
        None
    }

    /// What the server checks of a request from its socket before serving
    /// it: by default, that every path of [`Route::paths`] is absolute.
    ///
    /// # Errors
    /// [`ServeError::RelativePath`].
    fn check(request: &mut Self::Request) -> Result<(), ServeError> {
        match Self::paths(request).into_iter().find(|p| !p.is_absolute()) {
            Some(p) => Err(ServeError::RelativePath(p.clone())),
            None => Ok(()),
        }
    }
}

/// A route answered with one JSON value.
pub trait Call: Route {
    /// Serves `request`.
    fn serve(ctx: Ctx, request: Self::Request) -> impl Future<Output = Result<Self::Answer, ServeError>> + Send;
}

/// A route answered with JSON Lines: one `{"type", "data"}` record per
/// [`Stream::Progress`] as the work goes on, then `{"type": SUMMARY, "data":
/// answer}`, or `{"type": "error", "data": {"message"}}`. Served in a
/// blocking task.
pub trait Stream: Route {
    /// The progress records, adjacently tagged (`type`, `data`).
    type Progress: Serialize + DeserializeOwned + Send + 'static;
    /// The record type of the summary line.
    const SUMMARY: &'static str;
    /// What the work is called in messages ("the import").
    const WORK: &'static str;

    /// Serves `request`, telling `progress` as it goes.
    ///
    /// # Errors
    /// The service's error.
    fn serve(
        node: &Node,
        request: Self::Request,
        progress: &mut dyn FnMut(Self::Progress),
    ) -> Result<Self::Answer, HomeError>;
}

/// What a route is served with: the node, and its network when it runs.
#[derive(Debug, Clone)]
pub struct Ctx {
    node: Arc<Node>,
    online: Option<Online>,
}

#[derive(Debug, Clone)]
struct Online {
    net: NetHandle,
    socket: PathBuf,
    gateway: Option<GatewayStatus>,
    web: Option<std::net::SocketAddr>,
}

impl Ctx {
    /// A node opened on its files, without its network (the CLI when no
    /// node runs on the home).
    #[must_use]
    pub fn offline(node: Arc<Node>) -> Self {
        Self { node, online: None }
    }

    /// The running node with its network, serving on `socket`, with its
    /// DICOM gateway's SCP when it listens.
    #[must_use]
    pub fn online(node: Arc<Node>, net: NetHandle, socket: PathBuf, gateway: Option<GatewayStatus>) -> Self {
        Self {
            node,
            online: Some(Online {
                net,
                socket,
                gateway,
                web: None,
            }),
        }
    }

    /// The same context, telling that the web console listens on `addr`.
    #[must_use]
    pub fn with_web(mut self, addr: Option<std::net::SocketAddr>) -> Self {
        if let Some(o) = self.online.as_mut() {
            o.web = addr;
        }
        self
    }

    /// The gateway's SCP, when the node runs with one.
    #[must_use]
    pub fn gateway(&self) -> Option<&GatewayStatus> {
        self.online.as_ref().and_then(|o| o.gateway.as_ref())
    }

    /// The node.
    #[must_use]
    pub fn node(&self) -> &Node {
        &self.node
    }

    /// The network, when the node runs.
    #[must_use]
    pub fn net(&self) -> Option<&NetHandle> {
        self.online.as_ref().map(|o| &o.net)
    }

    /// The web console's address, when the node runs with one.
    #[must_use]
    pub fn web(&self) -> Option<std::net::SocketAddr> {
        self.online.as_ref().and_then(|o| o.web)
    }

    /// The admin API socket, when the node runs.
    #[must_use]
    pub fn socket(&self) -> Option<&std::path::Path> {
        self.online.as_ref().map(|o| o.socket.as_path())
    }

    /// Runs a blocking operation on the node in a blocking task.
    ///
    /// # Errors
    /// The operation's error; [`ServeError::Task`] when it panicked.
    pub async fn blocking<T, F>(&self, f: F) -> Result<T, ServeError>
    where
        T: Send + 'static,
        F: FnOnce(&Node) -> Result<T, HomeError> + Send + 'static,
    {
        let node = Arc::clone(&self.node);
        Ok(tokio::task::spawn_blocking(move || f(&node)).await??)
    }

    /// Runs a blocking operation that changes trust, then, when the node
    /// runs, lets the network check its peers again before answering. Both
    /// run in their own task, so a client that goes away cannot leave the
    /// change stored but not applied.
    ///
    /// # Errors
    /// The operation's error, the network's, [`ServeError::Task`].
    pub async fn trust_change<T, F>(&self, f: F) -> Result<T, ServeError>
    where
        T: Send + 'static,
        F: FnOnce(&Node) -> Result<T, HomeError> + Send + 'static,
    {
        let ctx = self.clone();
        tokio::spawn(async move {
            let v = ctx.blocking(f).await?;
            if let Some(net) = ctx.net() {
                net.trust_changed().await?;
            }
            Ok(v)
        })
        .await?
    }

    /// Lets the running node's transfer task look at its transfers again.
    pub fn wake_transfers(&self) {
        if let Some(net) = self.net() {
            net.wake_transfers();
        }
    }

    /// Tells a requester of a decision on its pending request, when the
    /// node runs and the requester can be reached; the decision stands
    /// either way.
    pub fn tell_requester(&self, view: &crate::transfer::TransferView, msg: Option<crate::transfer::wire::Msg>) {
        let Some(net) = self.net() else { return };
        if let Some(msg) = msg {
            let peer = view.peer;
            let net = net.clone();
            tokio::spawn(async move {
                if let Err(e) = net.transfer_message(peer, msg).await {
                    tracing::info!(peer = %peer, cause = %e, "could not tell the requester of the denial");
                }
            });
        }
    }
}

/// Why a route was not served. The server answers each with its HTTP
/// status ([`ServeError::status`]) and `{"error": message}`.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ServeError {
    /// The operation failed.
    #[error(transparent)]
    Home(#[from] HomeError),
    /// The network failed or a peer did not answer.
    #[error(transparent)]
    Net(#[from] NetError),
    /// A hex field of the request is not hex.
    #[error("{what}: not hex: {source}")]
    NotHex {
        /// The field.
        what: &'static str,
        /// The cause.
        source: hex::FromHexError,
    },
    /// A path of the request is relative.
    #[error("{}: paths must be absolute", .0.display())]
    RelativePath(PathBuf),
    /// The output folder of the request is relative.
    #[error("{}: the output folder must be absolute", .0.display())]
    RelativeOut(PathBuf),
    /// A peer id of the request is not one.
    #[error("peer {peer:?}: not a peer id: {source}")]
    PeerId {
        /// The text sent.
        peer: String,
        /// The cause.
        source: libp2p::identity::ParseError,
    },
    /// A Study Instance UID of the request is not one.
    #[error("study UID {uid:?}: {reason}")]
    StudyUid {
        /// The text sent.
        uid: String,
        /// Why (from [`crate::dicom::check_uid`]).
        reason: crate::dicom::UidError,
    },
    /// A study was asked for that this node imported itself.
    #[error("study {study}: this node holds it already (imported here)")]
    HeldHere {
        /// The Study Instance UID.
        study: String,
    },
    /// The holder asks to wait before asking again.
    #[error("the holder asks to wait {secs} s before asking again: {text}")]
    RetryAfter {
        /// Seconds to wait.
        secs: u64,
        /// The holder's words.
        text: String,
    },
    /// No random bytes for a new id.
    #[error("{0}")]
    Random(getrandom::Error),
    /// Asking a holder for a study needs the network.
    #[error("requesting a study needs this home's node to be running (`medmesh run`): it talks to the holder")]
    RequestOffline,
    /// The node's status is that of its network.
    #[error("the node's status needs it running (`medmesh run`)")]
    StatusOffline,
    /// The task serving the operation ended abnormally.
    #[error("operation failed: {0}")]
    Task(#[from] tokio::task::JoinError),
    /// The remote DICOM AE named is not in the configuration.
    #[error("{0}")]
    NoDicomPeer(NoDicomPeer),
    /// A DICOM operation with a remote AE failed.
    #[error("DICOM {op} with {ae}: {source}")]
    Dicom {
        /// The operation (`C-FIND`).
        op: &'static str,
        /// The remote AE's name in the configuration.
        ae: String,
        /// The cause.
        source: Box<crate::gateway::scu::ScuError>,
    },
    /// The C-FIND keys are not acceptable.
    #[error("gateway find: {0}")]
    Query(#[from] crate::gateway::scu::QueryError),
    /// A study request over the admin socket names no requesting role.
    #[error("the request names no requesting role")]
    NoRole,
    /// The caller's roles do not allow this (web API).
    #[error("forbidden: {0}")]
    Forbidden(String),
    /// Fetching from the PACS needs the running node's SCP.
    #[error(
        "fetching from the PACS needs this home's node running (`medmesh run`) with `[gateway] enabled`: the PACS sends the study to its DICOM SCP"
    )]
    FetchOffline,
}

/// Which remote DICOM AE is missing from `[gateway]`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NoDicomPeer {
    /// No `[gateway.pacs]`.
    #[error("no [gateway.pacs] in config.toml: name the site's PACS there (docs/OPERATIONS.md, Connecting the PACS)")]
    Pacs,
    /// No destination of that name.
    #[error("no [[gateway.destination]] named {name:?} in config.toml")]
    Destination {
        /// The name asked for.
        name: String,
    },
}

impl ServeError {
    /// The HTTP status the server answers it with.
    #[must_use]
    pub fn status(&self) -> u16 {
        match self {
            Self::NotHex { .. }
            | Self::RelativePath(_)
            | Self::RelativeOut(_)
            | Self::PeerId { .. }
            | Self::StudyUid { .. }
            | Self::Query(_)
            | Self::NoRole => 400,
            Self::RetryAfter { .. } => 429,
            Self::Forbidden(_) => 403,
            Self::Random(_) | Self::Task(_) => 500,
            Self::Home(_)
            | Self::Net(_)
            | Self::HeldHere { .. }
            | Self::RequestOffline
            | Self::StatusOffline
            | Self::NoDicomPeer(_)
            | Self::Dicom { .. }
            | Self::FetchOffline => 422,
        }
    }
}

/// Decodes a hex field of a request.
///
/// # Errors
/// [`ServeError::NotHex`].
pub fn unhex(what: &'static str, s: &str) -> Result<Vec<u8>, ServeError> {
    hex::decode(s).map_err(|source| ServeError::NotHex { what, source })
}
