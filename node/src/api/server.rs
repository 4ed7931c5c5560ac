//! The admin API server (see the [module docs](super)).

use std::convert::Infallible;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use bytes::Bytes;
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full, Limited, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio::net::UnixListener;
use tokio::sync::{mpsc, watch};

use super::{
    AddPeerRequest, ApplyRequest, BlockRequest, CheckRequest, ConsentListRequest, DeidRequest, DenyRequest,
    ExportRequest, IdRequest, ImportRequest, JoinRequest, ListRequest, LogTailRequest, MAX_REQUEST,
    NotificationsRequest, PurgeRequest, RelinkRequest, ShowRequest, Status, TransferAsk, Unblocked, WithdrawRequest,
};
use crate::dicom::ingest::ImportEvent;
use crate::home::consent::{CheckQuery, FhirImport, NewConsent};
use crate::home::deid::DeidEvent;
use crate::home::{HomeError, Node};
use crate::net::NetHandle;

type Body = BoxBody<Bytes, Infallible>;

/// Errors of starting the API.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ServerError {
    /// Another node answers on the socket.
    #[error("a node is already running on {0}")]
    Running(String),
    /// The socket could not be made.
    #[error("cannot listen on {path}: {source}")]
    Bind {
        /// The socket path.
        path: String,
        /// The cause.
        source: std::io::Error,
    },
}

#[derive(Debug)]
struct Api {
    node: Arc<Node>,
    net: NetHandle,
    socket: PathBuf,
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
            return Err(ServerError::Running(path.display().to_string()));
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
pub async fn serve(bound: Bound, node: Arc<Node>, net: NetHandle, mut shutdown: watch::Receiver<bool>) {
    let api = Arc::new(Api {
        node,
        net,
        socket: bound.path.clone(),
    });
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
                    let api = Arc::clone(&api);
                    tokio::spawn(async move {
                        let service = service_fn(move |req| {
                            let api = Arc::clone(&api);
                            async move { Ok::<_, Infallible>(handle(&api, req).await) }
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
struct Fail(StatusCode, String);

impl Fail {
    fn into_response(self) -> Response<Body> {
        full(
            self.0,
            serde_json::to_vec(&serde_json::json!({ "error": self.1 })).unwrap_or_default(),
        )
    }
}

fn error(status: StatusCode, message: &str) -> Fail {
    Fail(status, message.to_string())
}

/// An operation failed: the message names what and why.
fn failed(e: &impl std::fmt::Display) -> Fail {
    error(StatusCode::UNPROCESSABLE_ENTITY, &format!("{e:#}"))
}

async fn body<T: DeserializeOwned>(req: Request<Incoming>) -> Result<T, Fail> {
    let bytes = Limited::new(req.into_body(), MAX_REQUEST)
        .collect()
        .await
        .map_err(|e| error(StatusCode::BAD_REQUEST, &format!("reading the request: {e}")))?
        .to_bytes();
    serde_json::from_slice(&bytes).map_err(|e| error(StatusCode::BAD_REQUEST, &format!("request body: {e}")))
}

fn unhex(what: &str, s: &str) -> Result<Vec<u8>, Fail> {
    hex::decode(s).map_err(|e| error(StatusCode::BAD_REQUEST, &format!("{what}: not hex: {e}")))
}

/// Runs a blocking operation on the node.
async fn blocking<T, F>(api: &Api, f: F) -> Result<T, Fail>
where
    T: Send + 'static,
    F: FnOnce(&Node) -> Result<T, HomeError> + Send + 'static,
{
    let node = Arc::clone(&api.node);
    match tokio::task::spawn_blocking(move || f(&node)).await {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => Err(failed(&e)),
        Err(e) => Err(error(
            StatusCode::INTERNAL_SERVER_ERROR,
            &format!("operation failed: {e}"),
        )),
    }
}

/// Runs a blocking operation that changes trust, then lets the network
/// check its peers again before answering. Both run in their own task, so a
/// client that goes away cannot leave the change stored but not applied.
async fn trust_change<T, F>(api: &Arc<Api>, f: F) -> Response<Body>
where
    T: Serialize + Send + 'static,
    F: FnOnce(&Node) -> Result<T, HomeError> + Send + 'static,
{
    let api = Arc::clone(api);
    let task = tokio::spawn(async move {
        let v = blocking(&api, f).await?;
        api.net.trust_changed().await.map_err(|e| failed(&e))?;
        Ok::<_, Fail>(json(&v))
    });
    match task.await {
        Ok(Ok(r)) => r,
        Ok(Err(f)) => f.into_response(),
        Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, &format!("operation failed: {e}")).into_response(),
    }
}

/// A streamed JSON Lines answer fed by a blocking operation.
fn stream<F>(api: &Api, f: F) -> Response<Body>
where
    F: FnOnce(&Node, &dyn Fn(&str, &dyn erased::Ser)) + Send + 'static,
{
    let (tx, rx) = mpsc::channel::<Bytes>(64);
    let node = Arc::clone(&api.node);
    tokio::task::spawn_blocking(move || {
        let send = |kind: &str, data: &dyn erased::Ser| {
            let mut line = data.line(kind);
            line.push(b'\n');
            // A client that went away stops getting lines; the work goes on.
            let _ = tx.blocking_send(Bytes::from(line));
        };
        f(&node, &send);
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
}

mod erased {
    /// A value that can be written as one JSON Lines record.
    pub trait Ser {
        fn line(&self, kind: &str) -> Vec<u8>;
    }
    impl<T: serde::Serialize> Ser for T {
        fn line(&self, kind: &str) -> Vec<u8> {
            serde_json::to_vec(&serde_json::json!({ "type": kind, "data": self })).unwrap_or_default()
        }
    }
}

/// Tells a requester that its pending request was denied, when it can be
/// reached; the denial stands either way.
fn tell_requester(api: &Api, view: &crate::transfer::TransferView, msg: Option<crate::transfer::wire::Msg>) {
    if let (Some(msg), Ok(peer)) = (msg, view.peer.parse::<libp2p::PeerId>()) {
        let net = api.net.clone();
        tokio::spawn(async move {
            if let Err(e) = net.transfer_message(peer, msg).await {
                tracing::info!(peer = %peer, cause = %e, "could not tell the requester of the denial");
            }
        });
    }
}

/// Sends a transfer request to the holder and records its answer.
async fn request_transfer(api: &Api, r: TransferAsk) -> Result<crate::transfer::TransferView, Fail> {
    let peer: libp2p::PeerId = r.peer_id.parse().map_err(|e| {
        error(
            StatusCode::BAD_REQUEST,
            &format!("peer {:?}: not a peer id: {e}", r.peer_id),
        )
    })?;
    crate::dicom::check_uid(&r.study_uid)
        .map_err(|e| error(StatusCode::BAD_REQUEST, &format!("study UID {:?}: {e}", r.study_uid)))?;
    let uid = r.study_uid.clone();
    let held = blocking(api, move |n| {
        let study = n.store().study_ref(&uid);
        Ok(n.store()
            .study_row(&study)?
            .is_some_and(|row| matches!(row.origin, crate::store::Origin::Local)))
    })
    .await?;
    if held {
        return Err(error(
            StatusCode::UNPROCESSABLE_ENTITY,
            &format!("study {}: this node holds it already (imported here)", r.study_uid),
        ));
    }
    let mut rid = [0u8; 16];
    getrandom::fill(&mut rid).map_err(|e| error(StatusCode::INTERNAL_SERVER_ERROR, &e.to_string()))?;
    let request_id = hex::encode(rid);
    let msg = crate::transfer::wire::Msg {
        v: crate::transfer::wire::WIRE_VERSION,
        body: crate::transfer::wire::MsgBody::Request {
            request_id: request_id.clone(),
            study_uid: r.study_uid.clone(),
            purpose: r.purpose,
            role: r.role,
            level: r.level,
        },
    };
    // Until the answer is recorded, a stream the holder opens for it is refused for now, not for good.
    let _asking = api.node.live().asking(&request_id);
    let answer = crate::limits::send_honouring_retry_after(|| api.net.transfer_message(peer, msg.clone()))
        .await
        .map_err(|e| failed(&e))?
        .map_err(|(secs, text)| {
            error(
                StatusCode::TOO_MANY_REQUESTS,
                &format!("the holder asks to wait {secs} s before asking again: {text}"),
            )
        })?;
    let view = blocking(api, move |n| {
        Ok(n.transfers().note_answer(
            &r.peer_id,
            &request_id,
            &r.study_uid,
            r.purpose,
            r.role,
            r.level,
            &answer.body,
        )?)
    })
    .await?;
    api.net.wake_transfers();
    Ok(view)
}

async fn handle(api: &Arc<Api>, req: Request<Incoming>) -> Response<Body> {
    let path = req.uri().path().to_string();
    let Some(route) = path.strip_prefix(super::PREFIX) else {
        return error(
            StatusCode::NOT_FOUND,
            &format!("no route {path}: routes start with /v1"),
        )
        .into_response();
    };
    let method = req.method().clone();
    let result: Result<Response<Body>, Fail> = async {
        Ok(match (&method, route) {
            (&Method::GET, "/status") => {
                let net = api.net.status().await.map_err(|e| failed(&e))?;
                json(&Status {
                    node: Node::id_info(api.node.record()),
                    net,
                    socket: api.socket.clone(),
                    ledger_problem: api.node.own_feed_problem(),
                })
            }
            (&Method::GET, "/peers") => json(&api.net.peers().await.map_err(|e| failed(&e))?),
            (&Method::GET, "/trust") => json(&blocking(api, Node::trust_listing).await?),
            (&Method::POST, "/trust/join") => {
                let r: JoinRequest = body(req).await?;
                let (d, c) = (
                    unhex("descriptor", &r.descriptor)?,
                    unhex("certificate", &r.certificate)?,
                );
                trust_change(api, move |n| n.join(&d, &c)).await
            }
            (&Method::POST, "/trust/add-peer") => {
                let r: AddPeerRequest = body(req).await?;
                let rec = unhex("record", &r.record)?;
                trust_change(api, move |n| n.add_peer(&rec, r.purposes, r.valid_days)).await
            }
            (&Method::POST, "/trust/apply") => {
                let r: ApplyRequest = body(req).await?;
                let rev = unhex("revocation", &r.revocation)?;
                trust_change(api, move |n| n.apply_revocation(&rev)).await
            }
            (&Method::POST, "/trust/block") => {
                let r: BlockRequest = body(req).await?;
                trust_change(api, move |n| n.block(&r.peer_id, &r.reason)).await
            }
            (&Method::POST, "/trust/unblock") => {
                let r: BlockRequest = body(req).await?;
                trust_change(api, move |n| {
                    n.unblock(&r.peer_id).map(|was_blocked| Unblocked {
                        peer_id: r.peer_id,
                        was_blocked,
                    })
                })
                .await
            }
            (&Method::POST, "/studies/list") => {
                let r: ListRequest = body(req).await?;
                json(
                    &blocking(api, move |n| {
                        n.studies(r.patient.as_ref().map(|(p, i)| (p.as_str(), i.as_str())))
                    })
                    .await?,
                )
            }
            (&Method::POST, "/studies/show") => {
                let r: ShowRequest = body(req).await?;
                json(&blocking(api, move |n| n.study(&r.study_uid)).await?)
            }
            (&Method::POST, "/studies/purge") => {
                let r: PurgeRequest = body(req).await?;
                json(&blocking(api, move |n| n.purge_study(&r.study, r.reason)).await?)
            }
            (&Method::POST, "/consents/list") => {
                let r: ConsentListRequest = body(req).await?;
                json(
                    &blocking(api, move |n| {
                        n.consents(r.patient.as_ref().map(|(p, i)| (p.as_str(), i.as_str())))
                    })
                    .await?,
                )
            }
            (&Method::POST, "/consents/add") => {
                let r: NewConsent = body(req).await?;
                json(&blocking(api, move |n| n.consent_add(r)).await?)
            }
            (&Method::POST, "/consents/import-fhir") => {
                let r: FhirImport = body(req).await?;
                if let Some(p) = r.files.iter().find(|p| !p.is_absolute()) {
                    return Err(error(
                        StatusCode::BAD_REQUEST,
                        &format!("{}: paths must be absolute", p.display()),
                    ));
                }
                json(&blocking(api, move |n| n.consent_import_fhir(&r)).await?)
            }
            (&Method::POST, "/consents/withdraw") => {
                let r: WithdrawRequest = body(req).await?;
                json(&blocking(api, move |n| n.consent_withdraw(&r.id)).await?)
            }
            (&Method::POST, "/consents/check") => {
                let r: CheckQuery = body(req).await?;
                json(&blocking(api, move |n| n.consent_check(&r)).await?)
            }
            (&Method::POST, "/store/check") => {
                let r: CheckRequest = body(req).await?;
                json(&blocking(api, move |n| Ok(n.store().check(r.deep)?)).await?)
            }
            (&Method::POST, "/studies/import") => {
                let r: ImportRequest = body(req).await?;
                if let Some(p) = r.paths.iter().find(|p| !p.is_absolute()) {
                    return Err(error(
                        StatusCode::BAD_REQUEST,
                        &format!("{}: paths must be absolute", p.display()),
                    ));
                }
                stream(api, move |n, send| {
                    let result = n.import(&r.paths, |event| match event {
                        ImportEvent::Started { files, bytes } => {
                            send("started", &serde_json::json!({ "files": files, "bytes": bytes }));
                        }
                        ImportEvent::File(outcome) => send("file", outcome),
                    });
                    match result {
                        Ok(summary) => send("import-summary", &summary),
                        Err(e) => send("error", &serde_json::json!({ "message": format!("{e:#}") })),
                    }
                })
            }
            (&Method::POST, "/studies/export") => {
                let r: ExportRequest = body(req).await?;
                if !r.out.is_absolute() {
                    return Err(error(
                        StatusCode::BAD_REQUEST,
                        &format!("{}: the output folder must be absolute", r.out.display()),
                    ));
                }
                stream(api, move |n, send| {
                    match n.export(&r.study_uid, &r.out, r.force, |o| send("object", o)) {
                        Ok(summary) => send("export-summary", &summary),
                        Err(e) => send("error", &serde_json::json!({ "message": format!("{e:#}") })),
                    }
                })
            }
            (&Method::POST, "/studies/deid") => {
                let r: DeidRequest = body(req).await?;
                if let Some(p) = r.paths.iter().chain([&r.out]).find(|p| !p.is_absolute()) {
                    return Err(error(
                        StatusCode::BAD_REQUEST,
                        &format!("{}: paths must be absolute", p.display()),
                    ));
                }
                stream(api, move |n, send| {
                    let result = n.deid(&r.paths, &r.out, r.level, &r.options, |event| match event {
                        DeidEvent::Started { files, bytes } => {
                            send("started", &serde_json::json!({ "files": files, "bytes": bytes }));
                        }
                        DeidEvent::File(outcome) => send("file", outcome),
                    });
                    match result {
                        Ok(summary) => send("deid-summary", &summary),
                        Err(e) => send("error", &serde_json::json!({ "message": format!("{e:#}") })),
                    }
                })
            }
            (&Method::POST, "/studies/relink") => {
                let r: RelinkRequest = body(req).await?;
                json(&blocking(api, move |n| n.relink(&r.pseudonym)).await?)
            }
            (&Method::POST, "/log/tail") => {
                let r: LogTailRequest = body(req).await?;
                json(&blocking(api, move |n| n.log_tail(r.limit)).await?)
            }
            (&Method::POST, "/log/show") => {
                let r: IdRequest = body(req).await?;
                json(&blocking(api, move |n| n.log_show(&r.id)).await?)
            }
            (&Method::GET, "/log/verify") => json(&blocking(api, Node::log_verify).await?),
            (&Method::GET, "/log/heads") => {
                json(&blocking(api, |n| n.ledger_heads().map(|h| super::HeadView::list(&h))).await?)
            }
            (&Method::GET, "/notifications/status") => json(&blocking(api, Node::notify_status).await?),
            (&Method::POST, "/notifications") => {
                let r: NotificationsRequest = body(req).await?;
                json(&blocking(api, move |n| n.notifications(r.unread)).await?)
            }
            (&Method::GET, "/transfers") => json(&blocking(api, |n| Ok(n.transfers().list()?)).await?),
            (&Method::POST, "/transfers/show") => {
                let r: IdRequest = body(req).await?;
                json(&blocking(api, move |n| Ok(n.transfers().transfer_show(&r.id)?)).await?)
            }
            (&Method::POST, "/transfers/request") => {
                let r: TransferAsk = body(req).await?;
                json(&request_transfer(api, r).await?)
            }
            (&Method::POST, "/transfers/share") => {
                let r: TransferAsk = body(req).await?;
                let view = blocking(api, move |n| {
                    Ok(n.transfers()
                        .share(&r.peer_id, &r.study_uid, r.purpose, r.role, r.level)?)
                })
                .await?;
                api.net.wake_transfers();
                json(&view)
            }
            (&Method::GET, "/approvals") => json(&blocking(api, |n| Ok(n.transfers().approvals()?)).await?),
            (&Method::POST, "/approvals/approve") => {
                let r: IdRequest = body(req).await?;
                let (view, msg) = blocking(api, move |n| Ok(n.transfers().approve(&r.id)?)).await?;
                api.net.wake_transfers();
                tell_requester(api, &view, msg);
                json(&view)
            }
            (&Method::POST, "/approvals/deny") => {
                let r: DenyRequest = body(req).await?;
                let (view, msg) = blocking(api, move |n| Ok(n.transfers().deny_approval(&r.id, &r.reason)?)).await?;
                tell_requester(api, &view, msg);
                json(&view)
            }
            _ => error(StatusCode::NOT_FOUND, &format!("no route {method} {path}")).into_response(),
        })
    }
    .await;
    result.unwrap_or_else(Fail::into_response)
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
