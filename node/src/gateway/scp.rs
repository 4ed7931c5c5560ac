//! The storage SCP: a tokio listener that accepts associations by the
//! [`policy`](super::policy), one task each, over TCP or DICOM TLS, and
//! answers C-ECHO and C-STORE.
//!
//! Presentation contexts accepted: Verification and every Storage SOP class
//! ([`sop::STORAGE`], [`sop::RETIRED_STORAGE`]), each with the first
//! transfer syntax proposed that dicom-rs can parse (no transcoding: the
//! object is stored in the one it arrives in). A C-STORE's data set arrives
//! fragment by fragment behind a Part 10 file meta (the negotiated transfer
//! syntax, the command's SOP class and instance): into memory, hashed as it
//! comes, up to the sink's [`Sink::memory_limit`], and into a file in the
//! sink's staging folder past it; its SOP Class and Instance UID are checked
//! against the command, then the [`Sink`] stores it, and only then is
//! Success answered.
//!
//! ```no_run
//! # async fn f(sink: std::sync::Arc<dyn medmesh_node::gateway::Sink>) -> Result<(), Box<dyn std::error::Error>> {
//! use medmesh_node::{config::gateway::GatewayConfig, gateway::scp::Scp};
//! let scp = Scp::bind(&GatewayConfig::default(), sink).await?;
//! println!("{} listening on {}", scp.ae_title(), scp.local_addr());
//! // ... until the daemon stops:
//! scp.shutdown().await;
//! # Ok(()) }
//! ```

use std::collections::BTreeSet;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use dicom_dictionary_std::tags;
use dicom_object::file::ReadPreamble;
use dicom_object::{FileMetaTableBuilder, OpenFileOptions};
use dicom_ul::association::server::{AcceptAny, AccessControl, DefaultNegotiation};
use dicom_ul::association::{AsyncAssociation, ServerAssociationOptions};
use dicom_ul::pdu::{AssociationRJServiceUserReason, Pdu, PresentationContextResultReason, UserIdentity};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Semaphore, watch};
use tokio::task::JoinSet;
use tracing::{debug, info, warn};

use super::dimse::{Channel, Command, CommandField, DimseError, Incoming, Status};
use super::policy::{self, Allowed, Policy, Rejection};
use super::{ObjectBytes, Received, Sink, StoreRefusal, Stored, sop, tls};
use crate::config::gateway::GatewayConfig;
use crate::store::ContentHasher;

/// The largest PDU the SCP receives: with the sink's memory limit, this
/// bounds the memory of an association (one object in memory at a time,
/// one PDU being read).
const MAX_PDU: u32 = 1024 * 1024;

/// How long the SCP waits for the peer's next PDU.
const READ_TIMEOUT: Duration = Duration::from_secs(120);

/// How long a shutdown lets running associations finish.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);

/// Errors of starting the SCP.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ScpError {
    /// `listen` is not `address:port`.
    #[error("gateway.listen {address:?} is not address:port")]
    ListenAddress {
        /// The value configured.
        address: String,
    },
    /// The address cannot be bound.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// The cause.
        source: std::io::Error,
    },
    /// The TLS configuration cannot be built.
    #[error("gateway TLS: {0}")]
    Tls(#[from] tls::TlsError),
}

/// What every association task shares.
struct Shared {
    policy: Policy,
    base: ServerAssociationOptions<'static, AcceptAny, DefaultNegotiation>,
    tls: Option<Arc<rustls::ServerConfig>>,
    sink: Arc<dyn Sink>,
    slots: Arc<Semaphore>,
}

/// The running SCP. Dropping it stops accepting (running associations are
/// aborted); [`Scp::shutdown`] lets them finish first.
#[derive(Debug)]
pub struct Scp {
    local_addr: SocketAddr,
    ae_title: String,
    tls: bool,
    stop: watch::Sender<bool>,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl Scp {
    /// Binds `config.listen` and starts serving in a task of the current
    /// runtime.
    ///
    /// # Errors
    /// [`ScpError`]: the address, binding, the TLS files.
    pub async fn bind(config: &GatewayConfig, sink: Arc<dyn Sink>) -> Result<Scp, ScpError> {
        let addr: SocketAddr = config.listen.parse().map_err(|_| ScpError::ListenAddress {
            address: config.listen.clone(),
        })?;
        let tls = match (&config.tls_cert, &config.tls_key) {
            (Some(cert), Some(key)) => Some(tls::server_config(
                Path::new(cert),
                Path::new(key),
                config.tls_client_ca.as_deref().map(Path::new),
            )?),
            _ => None,
        };
        let listener = TcpListener::bind(addr)
            .await
            .map_err(|source| ScpError::Bind { addr, source })?;
        let local_addr = listener
            .local_addr()
            .map_err(|source| ScpError::Bind { addr, source })?;
        let ae_title = config.ae_title.trim().to_string();
        let mut base = ServerAssociationOptions::new()
            .accept_any()
            .ae_title(ae_title.clone())
            .max_pdu_length(MAX_PDU)
            .read_timeout(READ_TIMEOUT)
            .write_timeout(READ_TIMEOUT)
            .with_abstract_syntax(sop::VERIFICATION);
        for uid in sop::STORAGE.iter().chain(sop::RETIRED_STORAGE) {
            base = base.with_abstract_syntax(*uid);
        }
        let max = config.max_associations.max(1);
        let shared = Arc::new(Shared {
            policy: Policy {
                ae_title: ae_title.clone(),
                allowed: Allowed::from_config(&config.calling),
                max_associations: max,
            },
            base,
            tls: tls.clone(),
            sink,
            slots: Arc::new(Semaphore::new(usize::try_from(max).unwrap_or(1))),
        });
        let (stop, stopped) = watch::channel(false);
        let task = tokio::spawn(accept_loop(listener, shared, stopped));
        info!(ae_title = %ae_title, %local_addr, tls = tls.is_some(), "DICOM SCP listening");
        Ok(Scp {
            local_addr,
            ae_title,
            tls: tls.is_some(),
            stop,
            task: Some(task),
        })
    }

    /// The address it listens on.
    #[must_use]
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Its AE title.
    #[must_use]
    pub fn ae_title(&self) -> &str {
        &self.ae_title
    }

    /// Whether it speaks DICOM TLS.
    #[must_use]
    pub fn tls(&self) -> bool {
        self.tls
    }

    /// Stops accepting, lets running associations finish (10 s at most,
    /// then aborts them) and returns when all are done.
    pub async fn shutdown(mut self) {
        let _ = self.stop.send(true);
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
    }

    /// Serves until `signal` completes, then shuts down.
    pub async fn run_until(self, signal: impl std::future::Future<Output = ()>) {
        signal.await;
        self.shutdown().await;
    }
}

impl Drop for Scp {
    fn drop(&mut self) {
        let _ = self.stop.send(true);
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}

async fn accept_loop(listener: TcpListener, shared: Arc<Shared>, mut stopped: watch::Receiver<bool>) {
    let mut tasks = JoinSet::new();
    loop {
        tokio::select! {
            _ = stopped.changed() => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => {
                    let shared = shared.clone();
                    tasks.spawn(async move { connection(stream, peer, shared).await });
                }
                Err(e) => {
                    warn!(error = %e, "DICOM SCP: accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            },
            Some(_) = tasks.join_next(), if !tasks.is_empty() => {}
        }
    }
    drop(listener);
    let drain = async { while tasks.join_next().await.is_some() {} };
    if tokio::time::timeout(SHUTDOWN_GRACE, drain).await.is_err() {
        tasks.abort_all();
        while tasks.join_next().await.is_some() {}
    }
}

/// The policy as dicom-ul's access control, for one connection.
struct Gate<'a> {
    policy: &'a Policy,
    host: IpAddr,
}

impl AccessControl for Gate<'_> {
    fn check_access(
        &self,
        _this_ae_title: &str,
        calling_ae_title: &str,
        called_ae_title: &str,
        _user_identity: Option<&UserIdentity>,
    ) -> Result<(), AssociationRJServiceUserReason> {
        let request = policy::Request {
            called_ae: called_ae_title,
            calling_ae: calling_ae_title,
            host: self.host,
            active: 0,
        };
        policy::decide(self.policy, &request).map_err(|r| match r {
            Rejection::CalledAeNotRecognised => AssociationRJServiceUserReason::CalledAETitleNotRecognized,
            _ => AssociationRJServiceUserReason::CallingAETitleNotRecognized,
        })
    }
}

async fn connection(stream: TcpStream, peer: SocketAddr, shared: Arc<Shared>) {
    let _ = stream.set_nodelay(true);
    let Ok(_slot) = shared.slots.clone().try_acquire_owned() else {
        // Full: read the request and refuse it (by the same policy, so an
        // unknown caller still hears "not recognised").
        let refused = match &shared.tls {
            None => refuse_busy(stream, peer.ip(), &shared.policy).await,
            Some(config) => match tokio_rustls::TlsAcceptor::from(config.clone()).accept(stream).await {
                Ok(tls) => refuse_busy(tls, peer.ip(), &shared.policy).await,
                Err(e) => Err(e),
            },
        };
        if let Err(e) = refused {
            debug!(%peer, error = %e, "DICOM SCP: refusing a connection over the limit failed");
        }
        return;
    };
    let options = shared.base.clone().ae_access_control(Gate {
        policy: &shared.policy,
        host: peer.ip(),
    });
    let result = match &shared.tls {
        None => match options.establish_async(stream).await {
            Ok(assoc) => serve(Channel::new(assoc), &shared).await,
            Err(e) => Err(e.into()),
        },
        Some(config) => match options.tls_config(config.clone()).establish_tls_async(stream).await {
            Ok(assoc) => serve(Channel::new(assoc), &shared).await,
            Err(e) => Err(e.into()),
        },
    };
    match result {
        Ok(()) => {}
        Err(DimseError::Association(e)) if matches!(*e, dicom_ul::association::Error::Rejected { .. }) => {
            info!(%peer, "DICOM SCP: association rejected by the gateway policy");
        }
        Err(e) => warn!(%peer, error = %e, "DICOM SCP: association ended in error"),
    }
}

/// Reads the A-ASSOCIATE-RQ of a connection over the limit and answers it
/// with an A-ASSOCIATE-RJ.
async fn refuse_busy<S: AsyncRead + AsyncWrite + Unpin>(
    mut stream: S,
    host: IpAddr,
    policy: &Policy,
) -> std::io::Result<()> {
    let mut buffer = bytes::BytesMut::new();
    let read = dicom_ul::association::read_pdu_from_wire_async(&mut stream, &mut buffer, MAX_PDU, false);
    let pdu = match tokio::time::timeout(Duration::from_secs(10), read).await {
        Ok(Ok(pdu)) => pdu,
        _ => return Ok(()),
    };
    let Pdu::AssociationRQ(rq) = pdu else {
        return Ok(());
    };
    let request = policy::Request {
        called_ae: &rq.called_ae_title,
        calling_ae: &rq.calling_ae_title,
        host,
        active: policy.max_associations,
    };
    let rejection = policy::decide(policy, &request).err().unwrap_or(Rejection::Congestion);
    info!(calling_ae = %crate::text::clean(&rq.calling_ae_title, 16), reason = %rejection, "DICOM SCP: association refused");
    let mut out = Vec::new();
    dicom_ul::write_pdu(&mut out, &Pdu::AssociationRJ(rejection.to_pdu())).map_err(std::io::Error::other)?;
    stream.write_all(&out).await?;
    stream.shutdown().await
}

/// Serves one association until it is released or fails, then tells the
/// sink which studies it added to.
async fn serve<A, S>(channel: Channel<A, S>, shared: &Shared) -> Result<(), DimseError>
where
    A: AsyncAssociation<S> + Send,
    S: AsyncRead + AsyncWrite + Unpin + Send,
{
    let calling_ae = channel.association().peer_ae_title().trim().to_string();
    info!(calling_ae = %calling_ae, "DICOM SCP: association accepted");
    let mut studies = BTreeSet::new();
    let result = serve_commands(channel, shared, &calling_ae, &mut studies).await;
    if !studies.is_empty() {
        let sink = shared.sink.clone();
        let studies = studies.into_iter().collect();
        let _ = tokio::task::spawn_blocking(move || sink.released(&calling_ae, studies)).await;
    }
    result
}

/// The commands of one association, until it is released or fails.
async fn serve_commands<A, S>(
    mut channel: Channel<A, S>,
    shared: &Shared,
    calling_ae: &str,
    studies: &mut BTreeSet<String>,
) -> Result<(), DimseError>
where
    A: AsyncAssociation<S> + Send,
    S: AsyncRead + AsyncWrite + Unpin + Send,
{
    let mut stored = 0u32;
    let mut refused = 0u32;
    // The size of the last object received: the next is most likely alike.
    let mut size_hint = 0usize;
    loop {
        let incoming = match channel.receive_command().await {
            Ok(i) => i,
            Err(DimseError::Aborted) => {
                info!(calling_ae = %calling_ae, stored, refused, "DICOM SCP: association aborted by the peer");
                return Ok(());
            }
            Err(e) => {
                let _ = channel.into_association().abort().await;
                return Err(e);
            }
        };
        let (context, command) = match incoming {
            Incoming::Release => {
                channel.reply_release().await?;
                info!(calling_ae = %calling_ae, stored, refused, "DICOM SCP: association released");
                return Ok(());
            }
            Incoming::Command { context, command } => (context, command),
        };
        match command.field {
            CommandField::CEchoRq => {
                let rsp = Command::response_to(&command, Status::Success, None);
                channel.send_command(context, &rsp).await?;
            }
            CommandField::CStoreRq => {
                let status = store(&mut channel, context, &command, calling_ae, shared, &mut size_hint).await?;
                let (status, comment) = match status {
                    Ok(done) => {
                        stored += 1;
                        if let (false, Some(study)) = (done.duplicate, done.study_uid) {
                            studies.insert(study);
                        }
                        (Status::Success, None)
                    }
                    Err(refusal) => {
                        refused += 1;
                        info!(
                            calling_ae = %calling_ae,
                            sop_class = command.affected_sop_class.as_deref().unwrap_or(""),
                            status = %refusal.status(),
                            reason = %refusal,
                            "DICOM SCP: C-STORE refused"
                        );
                        (refusal.status(), Some(refusal.to_string()))
                    }
                };
                let rsp = Command::response_to(&command, status, comment);
                channel.send_command(context, &rsp).await?;
            }
            CommandField::CCancelRq => {}
            _ => {
                if command.has_data_set {
                    channel.receive_data_to(context, &mut tokio::io::sink()).await?;
                }
                let rsp = Command::response_to(
                    &command,
                    Status::UnrecognizedOperation,
                    Some("this SCP serves C-ECHO and C-STORE only".into()),
                );
                channel.send_command(context, &rsp).await?;
            }
        }
    }
}

/// Receives one C-STORE's data set into a staging file and hands it to the
/// sink. The outer error ends the association; the inner one is the
/// refusal answered.
async fn store<A, S>(
    channel: &mut Channel<A, S>,
    context: u8,
    command: &Command,
    calling_ae: &str,
    shared: &Shared,
    size_hint: &mut usize,
) -> Result<Result<Stored, StoreRefusal>, DimseError>
where
    A: AsyncAssociation<S> + Send,
    S: AsyncRead + AsyncWrite + Unpin + Send,
{
    let transfer_syntax = channel
        .association()
        .presentation_contexts()
        .iter()
        .find(|pc| pc.id == context && pc.reason == PresentationContextResultReason::Acceptance)
        .map(|pc| pc.transfer_syntax.trim_end_matches('\0').to_string());
    let (Some(transfer_syntax), true) = (transfer_syntax, command.has_data_set) else {
        if command.has_data_set {
            channel.receive_data_to(context, &mut tokio::io::sink()).await?;
        }
        return Ok(Err(StoreRefusal::NotDicom));
    };
    let (Some(sop_class), Some(sop_instance)) = (
        command.affected_sop_class.clone().filter(|s| !s.is_empty()),
        command.affected_sop_instance.clone().filter(|s| !s.is_empty()),
    ) else {
        channel.receive_data_to(context, &mut tokio::io::sink()).await?;
        return Ok(Err(StoreRefusal::MissingUid("Affected SOP Class/Instance UID")));
    };
    let meta = FileMetaTableBuilder::new()
        .transfer_syntax(transfer_syntax.as_str())
        .media_storage_sop_class_uid(sop_class.as_str())
        .media_storage_sop_instance_uid(sop_instance.as_str())
        .source_application_entity_title(calling_ae)
        .build();
    let mut header = vec![0u8; 128];
    header.extend_from_slice(b"DICM");
    let meta_ok = meta.ok().and_then(|m| m.write(&mut header).ok()).is_some();
    if !meta_ok {
        channel.receive_data_to(context, &mut tokio::io::sink()).await?;
        return Ok(Err(StoreRefusal::MissingUid("Affected SOP Class/Instance UID")));
    }
    let limit = usize::try_from(shared.sink.memory_limit()).unwrap_or(usize::MAX);
    let mut out = Receiving::new(header, limit, shared.sink.staging_dir(), *size_hint);
    if let Receiving::Memory { sealing, .. } = &mut out {
        *sealing = Sealing::Looking {
            sink: Arc::clone(&shared.sink),
            attempts: 0,
        };
    }
    if let Err(e) = channel.receive_data_to(context, &mut out).await {
        out.discard();
        return Err(e);
    }
    let received = Received {
        calling_ae: calling_ae.to_string(),
        sop_class_uid: sop_class,
        sop_instance_uid: sop_instance,
        transfer_syntax,
    };
    let sink = shared.sink.clone();
    match out {
        Receiving::Memory {
            bytes, hasher, sealing, ..
        } => {
            *size_hint = bytes.len();
            let (hash, chunk_hashes) = hasher.finish();
            let object = ObjectBytes {
                bytes,
                hash,
                chunk_hashes,
                sealed: match sealing {
                    Sealing::On(p) => Some(*p),
                    Sealing::Looking { .. } | Sealing::Off => None,
                },
            };
            let outcome = tokio::task::spawn_blocking(move || {
                check_data_set(
                    OpenFileOptions::new()
                        .read_preamble(ReadPreamble::Never)
                        .read_until(tags::PIXEL_DATA)
                        .from_reader(object.bytes.get(PREAMBLE..).unwrap_or_default()),
                    &received,
                )?;
                sink.store_bytes(object, &received)
            })
            .await
            .unwrap_or(Err(StoreRefusal::Internal));
            Ok(outcome)
        }
        Receiving::File { path, mut staging } => {
            if let Some(e) = staging.error.take() {
                let _ = std::fs::remove_file(&path);
                warn!(error = %e, "DICOM SCP: writing a staging file failed");
                return Ok(Err(if super::is_storage_full(&e) {
                    StoreRefusal::StorageFull
                } else {
                    StoreRefusal::Internal
                }));
            }
            drop(staging);
            let staged = path.clone();
            let outcome = tokio::task::spawn_blocking(move || {
                check_data_set(
                    OpenFileOptions::new().read_until(tags::PIXEL_DATA).open_file(&staged),
                    &received,
                )?;
                sink.store(&staged, &received)
            })
            .await
            .unwrap_or(Err(StoreRefusal::Internal));
            let _ = std::fs::remove_file(&path);
            Ok(outcome)
        }
    }
}

/// The 128-byte preamble of a Part 10 file.
const PREAMBLE: usize = 128;

/// Where a C-STORE's data set goes as it arrives: memory (hashed fragment
/// by fragment) up to the sink's [`Sink::memory_limit`], then a staging
/// file for the rest of a larger object.
enum Receiving {
    Memory {
        bytes: Vec<u8>,
        /// Two BLAKE3 states (about 4 KB): boxed.
        hasher: Box<ContentHasher>,
        limit: usize,
        dir: PathBuf,
        /// Sealing as the bytes arrive.
        sealing: Sealing,
    },
    File {
        path: PathBuf,
        staging: Staging,
    },
}

impl Receiving {
    /// Starts with the Part 10 `header` (preamble and file meta). `hint`:
    /// the size of the association's previous object, to allocate once.
    fn new(mut header: Vec<u8>, limit: usize, dir: &Path, hint: usize) -> Self {
        let mut hasher = Box::new(ContentHasher::new());
        hasher.update(&header);
        if header.len() > limit {
            let (path, mut staging) = Staging::create(dir);
            staging.write(&header);
            return Receiving::File { path, staging };
        }
        header.reserve(hint.min(limit).saturating_sub(header.len()));
        Receiving::Memory {
            bytes: header,
            hasher,
            limit,
            dir: dir.to_path_buf(),
            sealing: Sealing::Off,
        }
    }

    /// Moves to a staging file, beginning with what memory held and `more`.
    fn spill(&mut self, more: &[u8]) {
        let Receiving::Memory { bytes, dir, .. } = self else {
            return;
        };
        let (path, mut staging) = Staging::create(dir);
        staging.write(bytes);
        staging.write(more);
        *self = Receiving::File { path, staging };
    }

    /// Drops what was received (the association failed mid-object).
    fn discard(self) {
        if let Receiving::File { path, .. } = self {
            let _ = std::fs::remove_file(&path);
        }
    }
}

impl AsyncWrite for Receiving {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        _cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        let this = &mut *self;
        match this {
            Receiving::Memory {
                bytes,
                hasher,
                limit,
                sealing,
                ..
            } => {
                if bytes.len().saturating_add(buf.len()) > *limit {
                    this.spill(buf);
                } else {
                    hasher.update(buf);
                    bytes.extend_from_slice(buf);
                    sealing.take(bytes, buf);
                }
            }
            Receiving::File { staging, .. } => staging.write(buf),
        }
        std::task::Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        _cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        if let Receiving::File { staging, .. } = &mut *self {
            staging.flush();
        }
        std::task::Poll::Ready(Ok(()))
    }

    fn poll_shutdown(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        self.poll_flush(cx)
    }
}

/// Sealing an object held in memory while the rest of it arrives (see
/// [`Sink::begin_sealing`]): once its first bytes hold the Study Instance
/// UID, every byte goes to the sink's sealer as it comes.
enum Sealing {
    /// Reading the Study Instance UID from the first bytes.
    Looking { sink: Arc<dyn Sink>, attempts: u8 },
    /// Sealing (boxed: the sealer holds its chunk buffer's header and keys).
    On(Box<super::PreSealed>),
    /// Not sealing as it arrives: the object is sealed after its last fragment.
    Off,
}

/// Attempts at reading the Study Instance UID, one per fragment, before
/// the object is left to be sealed after its last fragment (the UID comes
/// in the first few KiB of any object seen).
const STUDY_UID_ATTEMPTS: u8 = 4;

impl Sealing {
    /// `buf`, just appended to `bytes` (everything so far).
    fn take(&mut self, bytes: &[u8], buf: &[u8]) {
        match self {
            Sealing::Off => {}
            Sealing::On(p) => {
                if let Err(e) = p.blob.update(buf) {
                    warn!(error = %e, "DICOM SCP: sealing as the object arrives failed; sealing it after");
                    *self = Sealing::Off;
                }
            }
            Sealing::Looking { sink, attempts } => {
                let Some(uid) = study_uid_in(bytes) else {
                    *attempts += 1;
                    if *attempts >= STUDY_UID_ATTEMPTS {
                        *self = Sealing::Off;
                    }
                    return;
                };
                *self = match sink.begin_sealing(&uid) {
                    Some(mut p) => match p.blob.update(bytes) {
                        Ok(()) => Sealing::On(Box::new(p)),
                        Err(e) => {
                            warn!(error = %e, "DICOM SCP: sealing as the object arrives failed; sealing it after");
                            Sealing::Off
                        }
                    },
                    None => Sealing::Off,
                };
            }
        }
    }
}

/// The Study Instance UID in the first bytes of a Part 10 object (from the
/// preamble on), if they hold it; `None` also for bytes cut inside an
/// element (more will come).
fn study_uid_in(prefix: &[u8]) -> Option<String> {
    let object = OpenFileOptions::new()
        .read_preamble(ReadPreamble::Never)
        .read_until(tags::SERIES_INSTANCE_UID)
        .from_reader(prefix.get(PREAMBLE..)?)
        .ok()?;
    // Read as import reads it (the same text or the blob is not used).
    crate::dicom::str_of(&object, tags::STUDY_INSTANCE_UID).filter(|uid| !uid.is_empty())
}

/// Writes an object held in memory to a new staging file in `dir`, hands
/// it to `store` and deletes it (for a sink that takes files only).
///
/// # Errors
/// [`StoreRefusal::StorageFull`] or [`StoreRefusal::Internal`] when the
/// file cannot be written; `store`'s refusal.
pub(crate) fn store_staged(
    dir: &Path,
    bytes: &[u8],
    store: impl FnOnce(&Path) -> Result<Stored, StoreRefusal>,
) -> Result<Stored, StoreRefusal> {
    let path = stage_bytes(dir, bytes)?;
    let stored = store(&path);
    let _ = std::fs::remove_file(&path);
    stored
}

/// Writes an object held in memory to a new staging file in `dir`.
fn stage_bytes(dir: &Path, bytes: &[u8]) -> Result<PathBuf, StoreRefusal> {
    let (path, mut staging) = Staging::create(dir);
    staging.write(bytes);
    staging.flush();
    match staging.error {
        None => Ok(path),
        Some(e) => {
            let _ = std::fs::remove_file(&path);
            warn!(error = %e, "DICOM SCP: writing a staging file failed");
            Err(if super::is_storage_full(&e) {
                StoreRefusal::StorageFull
            } else {
                StoreRefusal::Internal
            })
        }
    }
}

/// The staging file being written: a write error is kept and the rest of
/// the data set discarded, so that the association stays in step and the
/// C-STORE is answered with a failure. Writes are plain blocking writes of
/// one fragment (at most [`MAX_PDU`]) into the page cache: short enough
/// for a runtime thread, and no `tokio/fs` in the tree.
struct Staging {
    file: Option<std::io::BufWriter<std::fs::File>>,
    error: Option<std::io::Error>,
}

impl Staging {
    /// A new staging file in `dir`, readable by the node only (patient
    /// data); one that cannot be created keeps the error for the answer.
    fn create(dir: &Path) -> (PathBuf, Self) {
        use std::os::unix::fs::OpenOptionsExt;
        let path = staging_path(dir);
        let created = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&path);
        let staging = match created {
            Ok(file) => Staging::new(file),
            Err(e) => {
                warn!(error = %e, "DICOM SCP: cannot create a staging file");
                Staging::failed(e)
            }
        };
        (path, staging)
    }

    fn new(file: std::fs::File) -> Self {
        Self {
            file: Some(std::io::BufWriter::with_capacity(256 * 1024, file)),
            error: None,
        }
    }

    fn failed(e: std::io::Error) -> Self {
        Self {
            file: None,
            error: Some(e),
        }
    }

    fn keep(&mut self, r: std::io::Result<()>) {
        if let Err(e) = r {
            self.file = None;
            self.error.get_or_insert(e);
        }
    }
}

impl Staging {
    fn write(&mut self, buf: &[u8]) {
        use std::io::Write;
        if let Some(file) = self.file.as_mut() {
            let r = file.write_all(buf);
            self.keep(r);
        }
    }

    fn flush(&mut self) {
        use std::io::Write;
        if let Some(file) = self.file.as_mut() {
            let r = file.flush();
            self.keep(r);
        }
    }
}

/// A unique staging file name in `dir`.
fn staging_path(dir: &Path) -> PathBuf {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    dir.join(format!(".dicom-scp-{}-{n}-{nanos}.dcm.part", std::process::id()))
}

/// Checks the SOP Class and Instance UID of a received object, parsed up
/// to its pixel data, against the command.
fn check_data_set<E>(
    parsed: Result<dicom_object::DefaultDicomObject, E>,
    received: &Received,
) -> Result<(), StoreRefusal> {
    let object = parsed.map_err(|_| StoreRefusal::Malformed)?;
    let text = |tag| {
        object
            .element(tag)
            .ok()
            .and_then(|e| e.to_str().ok())
            .map(|s| s.trim_end_matches(['\0', ' ']).to_string())
    };
    let instance = text(tags::SOP_INSTANCE_UID).ok_or(StoreRefusal::MissingUid("SOPInstanceUID"))?;
    let class = text(tags::SOP_CLASS_UID).ok_or(StoreRefusal::MissingUid("SOPClassUID"))?;
    if instance != received.sop_instance_uid || class != received.sop_class_uid {
        return Err(StoreRefusal::InstanceMismatch);
    }
    Ok(())
}
