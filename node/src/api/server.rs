//! The admin API server (see the [module docs](super)).

use std::convert::Infallible;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use bytes::Bytes;
use futures::future::BoxFuture;
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full, Limited, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use serde::Serialize;
use tokio::net::UnixListener;
use tokio::sync::{mpsc, watch};

use super::MAX_REQUEST;
use super::route::{Call, Caller, Ctx, Route, ServeError, Stream, Verb, WebAccess};
use crate::api::GatewayStatus;
use crate::home::Node;
use crate::net::NetHandle;

/// The body of the API's answers.
pub type Body = BoxBody<Bytes, Infallible>;

/// Errors of starting the API.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ServerError {
    /// Another node answers on the socket.
    #[error("a node is already running on {socket}")]
    Running {
        /// The socket's path.
        socket: String,
    },
    /// The socket could not be made.
    #[error("cannot listen on {path}: {source}")]
    Bind {
        /// The socket path.
        path: String,
        /// The cause.
        source: std::io::Error,
    },
}

/// A bound API socket, removed again on drop.
#[derive(Debug)]
pub struct Bound {
    listener: UnixListener,
    path: PathBuf,
}

impl Drop for Bound {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// Binds the socket at `path` with mode 0600. A stale socket (nobody
/// answering) is replaced; a live one is an error.
///
/// The socket is created under the umask 077, so it is never, not even
/// between `bind` and `chmod`, open to the group or others (it also lives in
/// the 0700 home, which `medmesh run` checks first).
///
/// # Errors
/// [`ServerError`].
pub fn bind(path: &Path) -> Result<Bound, ServerError> {
    if path.exists() {
        if std::os::unix::net::UnixStream::connect(path).is_ok() {
            return Err(ServerError::Running {
                socket: path.display().to_string(),
            });
        }
        let _ = std::fs::remove_file(path);
    }
    let err = |source| ServerError::Bind {
        path: path.display().to_string(),
        source,
    };
    // 077, not 177: another thread creating a directory meanwhile still gets
    // its owner's search bit. The umask is process-wide; restored at once.
    let old = nix::sys::stat::umask(nix::sys::stat::Mode::from_bits_truncate(0o077));
    let listener = UnixListener::bind(path);
    nix::sys::stat::umask(old);
    let listener = listener.map_err(err)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).map_err(err)?;
    Ok(Bound {
        listener,
        path: path.to_path_buf(),
    })
}

/// Whether the process at the other end of an admin connection may use the
/// API: only the owner of the home (`owner`, the uid owning the socket's
/// folder) and root are admitted. `Err` carries the refused uid (or `None`
/// when the credentials cannot be read, which is refused too).
///
/// # Errors
/// The connecting uid when it is refused.
pub fn admitted(stream: &tokio::net::UnixStream, owner: u32) -> Result<u32, Option<u32>> {
    match stream.peer_cred() {
        Ok(cred) if cred.uid() == owner || cred.uid() == 0 => Ok(cred.uid()),
        Ok(cred) => Err(Some(cred.uid())),
        Err(_) => Err(None),
    }
}

/// The uid owning the folder of the socket at `path` (the home's owner).
fn home_owner(path: &Path) -> Option<u32> {
    let dir = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    std::fs::metadata(dir).ok().map(|m| m.uid())
}

/// Serves the API on `bound` until `shutdown` turns true.
pub async fn serve(
    bound: Bound,
    node: Arc<Node>,
    net: NetHandle,
    gateway: Option<GatewayStatus>,
    web: Option<std::net::SocketAddr>,
    mut shutdown: watch::Receiver<bool>,
) {
    let ctx = Ctx::online(node, net, bound.path.clone(), gateway).with_web(web);
    // Root when the owner cannot be read: then only root is admitted.
    let owner = home_owner(&bound.path).unwrap_or(0);
    loop {
        tokio::select! {
            accepted = bound.listener.accept() => match accepted {
                Ok((stream, _)) => {
                    if let Err(uid) = admitted(&stream, owner) {
                        let pid = stream.peer_cred().ok().and_then(|c| c.pid());
                        match uid {
                            Some(uid) => tracing::warn!(uid, ?pid, owner, "admin API: refused a connection from uid {uid}: only the home's owner (uid {owner}) and root may use it"),
                            None => tracing::warn!("admin API: refused a connection whose credentials cannot be read"),
                        }
                        drop(stream);
                        continue;
                    }
                    let ctx = ctx.clone();
                    tokio::spawn(async move {
                        let service = service_fn(move |req| {
                            let ctx = ctx.clone();
                            async move { Ok::<_, Infallible>(handle(ctx, req).await) }
                        });
                        if let Err(e) = http1::Builder::new().serve_connection(TokioIo::new(stream), service).await {
                            tracing::debug!(cause = %e, "admin API connection ended with an error");
                        }
                    });
                }
                Err(e) => {
                    // Out of file descriptors, say: do not spin.
                    tracing::warn!(cause = %e, "admin API accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                }
            },
            changed = shutdown.changed() => {
                if changed.is_err() || *shutdown.borrow() {
                    break;
                }
            }
        }
    }
    drop(bound);
}

fn full(status: StatusCode, body: Vec<u8>) -> Response<Body> {
    let mut r = Response::new(Full::new(Bytes::from(body)).boxed());
    *r.status_mut() = status;
    r.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("application/json"),
    );
    r
}

fn json<T: Serialize>(value: &T) -> Response<Body> {
    match serde_json::to_vec(value) {
        Ok(b) => full(StatusCode::OK, b),
        Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, &format!("encoding the answer: {e}")).into_response(),
    }
}

/// A failed request: HTTP status and the message for `{"error": ...}`.
#[derive(Debug)]
pub(crate) struct Fail(StatusCode, String);

impl Fail {
    pub(crate) fn into_response(self) -> Response<Body> {
        full(
            self.0,
            serde_json::to_vec(&serde_json::json!({ "error": self.1 })).unwrap_or_default(),
        )
    }
}

impl From<ServeError> for Fail {
    fn from(e: ServeError) -> Self {
        let status = StatusCode::from_u16(e.status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        // The message names what and why.
        Self(status, format!("{e:#}"))
    }
}

pub(crate) fn error(status: StatusCode, message: &str) -> Fail {
    Fail(status, message.to_string())
}

/// The request of route `R`: its JSON body, or `()` for a `GET`.
fn request<R: Route>(body: &[u8]) -> Result<R::Request, Fail> {
    if R::METHOD == Verb::Get {
        return serde_json::from_value(serde_json::Value::Null)
            .map_err(|e| error(StatusCode::BAD_REQUEST, &format!("request body: {e}")));
    }
    serde_json::from_slice(body).map_err(|e| error(StatusCode::BAD_REQUEST, &format!("request body: {e}")))
}

/// Reads a request's body, at most [`MAX_REQUEST`] bytes.
///
/// # Errors
/// The HTTP answer for a body too long or cut short.
pub(crate) async fn body<B>(body: B) -> Result<Bytes, Response<Body>>
where
    B: hyper::body::Body<Data = Bytes>,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    match Limited::new(body, MAX_REQUEST).collect().await {
        Ok(c) => Ok(c.to_bytes()),
        Err(e) => Err(error(StatusCode::BAD_REQUEST, &format!("reading the request: {e}")).into_response()),
    }
}

/// How the server serves one row of the [route table](super::routes::TABLE):
/// the context, who calls (the socket, or a person through the web layer,
/// which checked that their roles may call the route) and the request body.
pub(crate) type Serve = fn(Ctx, Caller, Bytes) -> BoxFuture<'static, Response<Body>>;

/// Serves a [`Call`] route: its request checked, its answer as JSON. For a
/// person, the request is admitted ([`Route::admit`]) instead of checked
/// for local paths, and the action is in the ledger (`person-acted`, with
/// their keyed reference and role) before the answer leaves.
pub(super) fn call<R: Call>(ctx: Ctx, caller: Caller, body: Bytes) -> BoxFuture<'static, Response<Body>> {
    Box::pin(async move {
        let result = async {
            let mut r = request::<R>(&body)?;
            match &caller {
                Caller::Socket => R::check(&mut r)?,
                Caller::Person(p) => R::admit(&mut r, p)?,
            }
            let answer = R::serve(ctx.clone(), r).await?;
            let answer = match &caller {
                Caller::Socket => answer,
                Caller::Person(p) => R::shape(answer, p)?,
            };
            if let Caller::Person(p) = caller {
                let target = R::target(ctx.node(), &answer);
                let op = match R::WEB {
                    WebAccess::AnyOf(ops) => ops.iter().copied().find(|op| p.may(*op)),
                    WebAccess::Socket => None,
                };
                // Seeing the dashboard or a polled listing (no patient data) is not an action.
                if !R::LOGGED || op == Some(crate::access::Operation::SeeStatus) {
                    return Ok(json(&answer));
                }
                let event = crate::ledger::Event::PersonActed {
                    user: p.user.clone(),
                    role: p.role_for(op).map(|r| r.as_str().to_owned()).unwrap_or_default(),
                    operation: op.map(|o| o.as_str().to_owned()).unwrap_or_default(),
                    route: R::PATH.to_owned(),
                    via: p.via.to_owned(),
                    target,
                };
                ctx.blocking(move |node| node.audit().log(event).map_err(Into::into))
                    .await?;
            }
            Ok::<_, Fail>(json(&answer))
        }
        .await;
        result.unwrap_or_else(Fail::into_response)
    })
}

/// One JSON Lines record `{"type": kind, "data": data}`, with its newline.
fn line(value: &serde_json::Value) -> Bytes {
    let mut line = serde_json::to_vec(value).unwrap_or_default();
    line.push(b'\n');
    Bytes::from(line)
}

/// Serves a [`Stream`] route: its request checked, then a JSON Lines answer
/// fed by the blocking operation, record by record.
pub(super) fn stream<R: Stream>(ctx: Ctx, caller: Caller, body: Bytes) -> BoxFuture<'static, Response<Body>> {
    Box::pin(async move {
        if let Caller::Person(_) = caller {
            // Streamed routes name files of the node's host: socket only.
            return error(
                StatusCode::FORBIDDEN,
                &format!("{} is served on the admin socket only", R::PATH),
            )
            .into_response();
        }
        let mut r = match request::<R>(&body) {
            Ok(r) => r,
            Err(f) => return f.into_response(),
        };
        if let Err(e) = R::check(&mut r) {
            return Fail::from(e).into_response();
        }
        let (tx, rx) = mpsc::channel::<Bytes>(64);
        tokio::task::spawn_blocking(move || {
            // A client that went away stops getting lines; the work goes on.
            let send = |value: serde_json::Value| {
                let _ = tx.blocking_send(line(&value));
            };
            let result = R::serve(ctx.node(), r, &mut |p| {
                send(serde_json::to_value(&p).unwrap_or_default());
            });
            match result {
                Ok(summary) => send(serde_json::json!({ "type": R::SUMMARY, "data": summary })),
                Err(e) => send(serde_json::json!({ "type": "error", "data": { "message": format!("{e:#}") } })),
            }
        });
        let lines = futures::stream::unfold(rx, |mut rx| async move {
            rx.recv().await.map(|b| (Ok::<_, Infallible>(Frame::data(b)), rx))
        });
        let mut r = Response::new(StreamBody::new(lines).boxed());
        r.headers_mut().insert(
            hyper::header::CONTENT_TYPE,
            hyper::header::HeaderValue::from_static("application/jsonl"),
        );
        r
    })
}

async fn handle(ctx: Ctx, req: Request<Incoming>) -> Response<Body> {
    let path = req.uri().path().to_string();
    if !path.starts_with(super::PREFIX) {
        return error(
            StatusCode::NOT_FOUND,
            &format!("no route {path}: routes start with {}", super::PREFIX),
        )
        .into_response();
    }
    let method = req.method().clone();
    let verb = match method {
        Method::GET => Some(Verb::Get),
        Method::POST => Some(Verb::Post),
        _ => None,
    };
    match verb.and_then(|v| super::routes::find(v, &path)) {
        Some(entry) => match body(req.into_body()).await {
            Ok(bytes) => (entry.serve)(ctx, Caller::Socket, bytes).await,
            Err(r) => r,
        },
        None => error(StatusCode::NOT_FOUND, &format!("no route {method} {path}")).into_response(),
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;
    use std::os::unix::process::CommandExt;

    use super::*;

    /// Env var telling [`connect_helper`] which socket to connect to.
    const HELPER_SOCKET: &str = "MEDMESH_TEST_ADMIN_SOCKET";

    /// Not a test by itself: run as another uid by
    /// `another_uid_is_refused`, it connects and waits for the server to close.
    #[test]
    #[ignore = "helper process of another_uid_is_refused"]
    fn connect_helper() {
        use std::io::Read;
        let Some(path) = std::env::var_os(HELPER_SOCKET) else {
            return;
        };
        let mut s = std::os::unix::net::UnixStream::connect(path).unwrap();
        s.set_read_timeout(Some(std::time::Duration::from_secs(10))).unwrap();
        let mut buf = Vec::new();
        let _ = s.read_to_end(&mut buf);
    }

    #[tokio::test]
    async fn socket_is_private_from_the_start() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("node.sock");
        let bound = bind(&path).unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        drop(bound);
        assert!(!path.exists(), "the socket is removed on drop");
    }

    #[tokio::test]
    async fn the_owner_and_root_are_admitted() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("node.sock");
        let bound = bind(&path).unwrap();
        let me = std::fs::metadata(dir.path()).unwrap().uid();
        assert_eq!(home_owner(&path), Some(me));
        let _client = tokio::net::UnixStream::connect(&path).await.unwrap();
        let (stream, _) = bound.listener.accept().await.unwrap();
        assert_eq!(admitted(&stream, me), Ok(me), "the home's owner");
        // Root is admitted whoever owns the home; anyone else is not.
        let other = if me == 0 { Ok(0) } else { Err(Some(me)) };
        assert_eq!(admitted(&stream, me.wrapping_add(4242)), other);
    }

    /// A process of another uid (nobody) reaching the socket is refused by
    /// its credentials (SO_PEERCRED), even with the file made world-writable.
    #[tokio::test]
    async fn another_uid_is_refused() {
        let me = std::fs::metadata("/proc/self").map(|m| m.uid()).unwrap_or(1);
        if me != 0 {
            eprintln!("skipped: running a client as another uid needs root");
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        let path = dir.path().join("node.sock");
        let bound = bind(&path).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o666)).unwrap();
        let exe = std::env::current_exe().unwrap();
        let mut child = std::process::Command::new(exe)
            .args(["--exact", "api::server::tests::connect_helper", "--ignored", "--quiet"])
            .env(HELPER_SOCKET, &path)
            .uid(65534)
            .gid(65534)
            .stdout(std::process::Stdio::null())
            .spawn()
            .unwrap();
        let accepted = tokio::time::timeout(std::time::Duration::from_secs(20), bound.listener.accept()).await;
        let (stream, _) = accepted.expect("the helper connects").unwrap();
        assert_eq!(admitted(&stream, 0), Err(Some(65534)), "nobody is not the home's owner");
        assert_eq!(admitted(&stream, 65534), Ok(65534), "unless it owns the home");
        drop(stream);
        let status = tokio::task::spawn_blocking(move || child.wait())
            .await
            .unwrap()
            .unwrap();
        assert!(status.success());
    }
}
