//! The SCU side of the gateway: C-ECHO; C-STORE of Part 10 files as they
//! are (presentation contexts negotiated from the files' own SOP classes
//! and transfer syntaxes, one transfer syntax per context, so nothing is
//! transcoded); C-FIND at study level (Study Root); C-MOVE of one study.
//!
//! A data set is sent as it is read ([`store_items`] over [`DataSets`]: a
//! file's bytes after its file meta group, or a stored object's opened
//! pieces), unchanged, a few pieces read ahead of the network. Nothing logged or returned holds
//! patient data (query keys and matches are the caller's).

use std::io::{BufReader, Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use dicom_core::{DataElement, PrimitiveValue, Tag, VR};
use dicom_dictionary_std::tags;
use dicom_encoding::TransferSyntaxIndex;
use dicom_object::{FileMetaTable, InMemDicomObject};
use dicom_transfer_syntax_registry::TransferSyntaxRegistry;
use dicom_ul::association::{AsyncAssociation, ClientAssociationOptions};
use dicom_ul::pdu::PresentationContextResultReason;
use tokio::io::{AsyncRead, AsyncWrite};
use tracing::info;
use zeroize::Zeroizing;

use super::dimse::{Channel, Command, CommandField, DimseError, Status, StatusKind};
use super::{sop, tls};
use crate::config::gateway::DicomPeer;

/// Explicit VR Little Endian.
const EXPLICIT_VR_LE: &str = "1.2.840.10008.1.2.1";

/// The most presentation contexts one association proposes (PS3.8: 128,
/// ids 1 to 255).
const MAX_CONTEXTS: usize = 127;

/// The largest C-FIND response identifier read.
const MAX_IDENTIFIER: usize = 1024 * 1024;

/// Errors of an SCU operation.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ScuError {
    /// Connecting, associating (a rejection included) or the association
    /// failed.
    #[error("association with {ae_title}: {source}")]
    Association {
        /// The called AE title.
        ae_title: String,
        /// The cause.
        source: Box<dicom_ul::association::Error>,
    },
    /// The DIMSE exchange failed.
    #[error("DIMSE: {0}")]
    Dimse(#[from] DimseError),
    /// The TLS configuration cannot be built.
    #[error("TLS: {0}")]
    Tls(#[from] tls::TlsError),
    /// The peer accepted no presentation context for the SOP class.
    #[error("the peer accepted no presentation context for {0}")]
    NoContext(&'static str),
    /// The peer answered with a failure status.
    #[error("the peer answered {status}{}", comment.as_deref().map(|c| format!(": {c}")).unwrap_or_default())]
    Failed {
        /// The status.
        status: Status,
        /// Its Error Comment, made safe to print.
        comment: Option<String>,
    },
    /// A response of another command came.
    #[error("unexpected response {0:?}")]
    UnexpectedResponse(CommandField),
    /// An identifier could not be encoded.
    #[error("cannot encode the identifier: {0}")]
    EncodeIdentifier(#[source] Box<dicom_object::WriteError>),
    /// A response identifier could not be decoded.
    #[error("cannot decode a response identifier: {0}")]
    DecodeIdentifier(#[source] Box<dicom_object::ReadError>),
    /// The negotiated transfer syntax is not known to dicom-rs.
    #[error("unknown transfer syntax {uid}")]
    UnknownTransferSyntax {
        /// Its UID.
        uid: String,
    },
}

/// A remote AE to call.
#[derive(Debug, Clone)]
pub struct Destination {
    /// Its AE title (the called AE title).
    pub ae_title: String,
    /// Host name or IP address.
    pub host: String,
    /// TCP port.
    pub port: u16,
    /// DICOM TLS client configuration, when it speaks TLS.
    pub tls: Option<Arc<rustls::ClientConfig>>,
}

impl Destination {
    /// A plain TCP destination.
    #[must_use]
    pub fn plain(ae_title: &str, host: &str, port: u16) -> Self {
        Self {
            ae_title: ae_title.to_string(),
            host: host.to_string(),
            port,
            tls: None,
        }
    }

    /// The destination of a `[[gateway.destination]]` or `[gateway.pacs]`.
    ///
    /// # Errors
    /// [`ScuError::Tls`]: its TLS files.
    pub fn from_config(peer: &DicomPeer) -> Result<Self, ScuError> {
        let tls = if peer.tls {
            let ca = peer.tls_ca.as_deref().map(Path::new);
            let client = peer
                .tls_cert
                .as_deref()
                .zip(peer.tls_key.as_deref())
                .map(|(c, k)| (Path::new(c), Path::new(k)));
            Some(match ca {
                Some(ca) => tls::client_config(ca, client)?,
                None => tls::client_config_system_roots(client)?,
            })
        } else {
            None
        };
        Ok(Self {
            ae_title: peer.ae_title.clone(),
            host: peer.host.clone(),
            port: peer.port,
            tls,
        })
    }
}

/// Establishes an association with `dest` and runs `$body` with `$ch`, a
/// [`Channel`] over it (plain or TLS: two stream types, one body).
macro_rules! with_channel {
    ($options:expr, $dest:expr, |$ch:ident| $body:expr) => {{
        let dest: &Destination = $dest;
        let addr = (dest.host.as_str(), dest.port);
        let assoc_err = |source| ScuError::Association {
            ae_title: dest.ae_title.clone(),
            source: Box::new(source),
        };
        match &dest.tls {
            None => {
                #[allow(unused_mut)]
                let mut assoc = $options.establish_async(addr).await.map_err(assoc_err)?;
                // Data sets go out in large gathered writes; the last PDU of
                // each is small and must not wait for an ACK (Nagle).
                let _ = assoc.inner_stream().set_nodelay(true);
                #[allow(unused_mut)]
                let mut $ch = Channel::new(assoc);
                $body
            }
            Some(config) => {
                #[allow(unused_mut)]
                let mut assoc = $options
                    .tls_config(config.clone())
                    .server_name(&dest.host)
                    .establish_tls_async(addr)
                    .await
                    .map_err(assoc_err)?;
                let _ = assoc.inner_stream().get_ref().0.set_nodelay(true);
                #[allow(unused_mut)]
                let mut $ch = Channel::new(assoc);
                $body
            }
        }
    }};
}

fn options<'a>(calling_ae: &'a str, dest: &'a Destination) -> ClientAssociationOptions<'a> {
    ClientAssociationOptions::new()
        .calling_ae_title(calling_ae)
        .called_ae_title(dest.ae_title.as_str())
        .max_pdu_length(1024 * 1024)
        .read_timeout(std::time::Duration::from_secs(120))
        .write_timeout(std::time::Duration::from_secs(120))
}

/// The accepted context of `abstract_syntax` (and `ts`, when given).
fn context<A>(assoc: &A, abstract_syntax: &str, ts: Option<&str>) -> Option<(u8, String)>
where
    A: dicom_ul::association::Association,
{
    assoc
        .presentation_contexts()
        .iter()
        .find(|pc| {
            pc.reason == PresentationContextResultReason::Acceptance
                && pc.abstract_syntax.trim_end_matches('\0') == abstract_syntax
                && ts.is_none_or(|t| pc.transfer_syntax.trim_end_matches('\0') == t)
        })
        .map(|pc| (pc.id, pc.transfer_syntax.trim_end_matches('\0').to_string()))
}

async fn release<A, S>(channel: Channel<A, S>)
where
    A: AsyncAssociation<S> + Send,
    S: AsyncRead + AsyncWrite + Unpin + Send,
{
    let _ = AsyncAssociation::release(channel.into_association()).await;
}

fn failed(rsp: &Command) -> ScuError {
    ScuError::Failed {
        status: rsp.status_or_failure(),
        comment: rsp
            .error_comment
            .as_deref()
            .map(|c| crate::text::clean(c, 64).into_owned()),
    }
}

/// C-ECHO: verifies that `dest` answers.
///
/// # Errors
/// [`ScuError`]: no association, or a failure status.
pub async fn echo(calling_ae: &str, dest: &Destination) -> Result<(), ScuError> {
    let opts = options(calling_ae, dest).with_abstract_syntax(sop::VERIFICATION);
    with_channel!(opts, dest, |ch| {
        let (ctx, _) = context(ch.association(), sop::VERIFICATION, None).ok_or(ScuError::NoContext("Verification"))?;
        ch.send_command(ctx, &Command::echo_rq(1)).await?;
        let (_, rsp) = ch.expect_command().await?;
        release(ch).await;
        if rsp.field != CommandField::CEchoRsp {
            return Err(ScuError::UnexpectedResponse(rsp.field));
        }
        match rsp.status_or_failure().kind() {
            StatusKind::Success => Ok(()),
            _ => Err(failed(&rsp)),
        }
    })
}

/// One object of a C-STORE: what its request names and the presentation
/// context it needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoreItem {
    /// Its SOP Class UID (the data set's own).
    pub sop_class: String,
    /// Its SOP Instance UID (the data set's own).
    pub sop_instance: String,
    /// The transfer syntax its data set is encoded in (sent as it is).
    pub transfer_syntax: String,
}

/// Where the data sets of a C-STORE's objects come from. [`DataSets::open`]
/// runs on a blocking thread, in the order the objects are sent, ahead of
/// the network by a few pieces (the next object is opened while the
/// previous one is answered).
pub trait DataSets: Send + Sync + 'static {
    /// Opens the data set of object `n` (the bytes a C-STORE carries: after
    /// any preamble and file meta group). A read error midway makes the SCU
    /// abort the association before the data set's last fragment.
    ///
    /// # Errors
    /// [`StoreFailure`]: the object cannot be opened (it is not sent).
    fn open(&self, n: usize) -> Result<Box<dyn Read + Send>, StoreFailure>;
}

/// Bytes read from a data set at a time, and pieces read ahead of the
/// network at most (memory: about `READ_AHEAD + 2` pieces per association).
const PIECE: usize = 256 * 1024;
const READ_AHEAD: usize = 6;

/// What a file holds, from its file meta group.
#[derive(Debug, Clone)]
struct FileObject {
    path: PathBuf,
    item: StoreItem,
    data_set_offset: u64,
}

/// Why one object was not stored.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreFailure {
    /// The file cannot be read as a Part 10 file (no file meta group).
    #[error("not a DICOM Part 10 file")]
    NotPart10,
    /// The peer accepted no context for its SOP class and transfer syntax.
    #[error("the peer accepted no presentation context for SOP class {sop_class} in {transfer_syntax}")]
    NoContext {
        /// The SOP class.
        sop_class: String,
        /// The transfer syntax.
        transfer_syntax: String,
    },
    /// Opening or reading the data set failed (before or while sending:
    /// then the association was aborted before its last fragment).
    #[error("reading the data set: {0}")]
    Io(#[from] std::io::Error),
    /// The peer answered with a failure status.
    #[error("the peer answered {status}{}", comment.as_deref().map(|c| format!(": {c}")).unwrap_or_default())]
    Status {
        /// The status.
        status: Status,
        /// Its Error Comment, made safe to print.
        comment: Option<String>,
    },
}

/// The outcome of one file of a C-STORE.
#[derive(Debug)]
pub struct StoreOutcome {
    /// The file.
    pub file: PathBuf,
    /// Success or warning status, or why not stored.
    pub result: Result<Status, StoreFailure>,
}

fn read_file_object(path: &Path) -> Result<FileObject, StoreFailure> {
    let file = std::fs::File::open(path)?;
    let mut reader = BufReader::new(file);
    reader.seek(SeekFrom::Start(128))?;
    let meta = FileMetaTable::from_reader(&mut reader).map_err(|_| StoreFailure::NotPart10)?;
    let data_set_offset = reader.stream_position()?;
    // The command names the data set's own SOP Class and Instance UID (as
    // dcmtk's storescu does), which the receiver checks the data set against;
    // the file meta's copies may differ in old files.
    let object = dicom_object::OpenFileOptions::new()
        .read_until(tags::PIXEL_DATA)
        .open_file(path)
        .map_err(|_| StoreFailure::NotPart10)?;
    let uid = |tag, fallback: &str| {
        object
            .element(tag)
            .ok()
            .and_then(|e| e.to_str().ok())
            .map(|s| s.trim_end_matches(['\0', ' ']).to_string())
            .filter(|s| !s.is_empty())
            .unwrap_or_else(|| fallback.to_string())
    };
    Ok(FileObject {
        path: path.to_path_buf(),
        item: StoreItem {
            sop_class: uid(tags::SOP_CLASS_UID, meta.media_storage_sop_class_uid()),
            sop_instance: uid(tags::SOP_INSTANCE_UID, meta.media_storage_sop_instance_uid()),
            transfer_syntax: meta.transfer_syntax().to_string(),
        },
        data_set_offset,
    })
}

/// The data sets of Part 10 files (after their file meta groups).
struct FileDataSets(Vec<FileObject>);

impl DataSets for FileDataSets {
    fn open(&self, n: usize) -> Result<Box<dyn Read + Send>, StoreFailure> {
        let obj = self.0.get(n).ok_or(StoreFailure::NotPart10)?;
        let mut file = std::fs::File::open(&obj.path)?;
        file.seek(SeekFrom::Start(obj.data_set_offset))?;
        Ok(Box::new(file))
    }
}

/// C-STORE of `files` (Part 10) to `dest`, each in its own transfer
/// syntax: as [`store_items`]. Returns one outcome per file, in order.
///
/// # Errors
/// [`ScuError`]: an association could not be made or broke (the files
/// not yet sent have no outcome then).
pub async fn store(calling_ae: &str, dest: &Destination, files: &[PathBuf]) -> Result<Vec<StoreOutcome>, ScuError> {
    let mut results: Vec<Option<Result<Status, StoreFailure>>> = Vec::with_capacity(files.len());
    let mut objects = Vec::new();
    let mut at = Vec::new();
    for (i, path) in files.iter().enumerate() {
        match read_file_object(path) {
            Err(e) => results.push(Some(Err(e))),
            Ok(obj) => {
                results.push(None);
                at.push(i);
                objects.push(obj);
            }
        }
    }
    let items: Vec<StoreItem> = objects.iter().map(|o| o.item.clone()).collect();
    let sent = store_items(calling_ae, dest, &items, Arc::new(FileDataSets(objects))).await?;
    for (i, r) in at.into_iter().zip(sent) {
        if let Some(slot) = results.get_mut(i) {
            *slot = Some(r);
        }
    }
    Ok(files
        .iter()
        .zip(results)
        .map(|(file, r)| StoreOutcome {
            file: file.clone(),
            result: r.unwrap_or(Err(StoreFailure::NotPart10)),
        })
        .collect())
}

/// C-STORE of `items` to `dest`, each data set (from `sets`) sent as it
/// is read, in its own transfer syntax: presentation contexts negotiated
/// from the items' SOP classes and transfer syntaxes (one transfer syntax
/// per context, so nothing is transcoded), one association per 127
/// distinct pairs. An object whose data set fails midway is answered
/// [`StoreFailure::Io`]: the association is aborted before the data set's
/// last fragment (the peer never gets it whole), and the objects after it
/// go on a new association. Returns one outcome per item, in order.
///
/// # Errors
/// [`ScuError`]: an association could not be made or broke (the items not
/// yet sent have no outcome then).
pub async fn store_items(
    calling_ae: &str,
    dest: &Destination,
    items: &[StoreItem],
    sets: Arc<dyn DataSets>,
) -> Result<Vec<Result<Status, StoreFailure>>, ScuError> {
    let mut outcomes: Vec<Option<Result<Status, StoreFailure>>> = (0..items.len()).map(|_| None).collect();
    let mut message_id = 0u16;
    let mut start = 0;
    while start < items.len() {
        // The next group: at most MAX_CONTEXTS distinct pairs.
        let mut pairs: Vec<(&str, &str)> = Vec::new();
        let mut end = start;
        while let Some(item) = items.get(end) {
            let pair = (item.sop_class.as_str(), item.transfer_syntax.as_str());
            if !pairs.contains(&pair) {
                if pairs.len() == MAX_CONTEXTS {
                    break;
                }
                pairs.push(pair);
            }
            end += 1;
        }
        loop {
            let todo: Vec<usize> = (start..end).filter(|&n| outcomes[n].is_none()).collect();
            if todo.is_empty() {
                break;
            }
            store_batch(
                calling_ae,
                dest,
                &pairs,
                items,
                &todo,
                &sets,
                &mut message_id,
                &mut outcomes,
            )
            .await?;
            if todo.iter().all(|&n| outcomes[n].is_none()) {
                // No progress: cannot happen (a batch decides at least one).
                break;
            }
        }
        start = end;
    }
    let outcomes: Vec<Result<Status, StoreFailure>> = outcomes
        .into_iter()
        .map(|o| o.unwrap_or_else(|| Err(StoreFailure::Io(std::io::ErrorKind::Interrupted.into()))))
        .collect();
    let stored = outcomes.iter().filter(|o| o.is_ok()).count();
    info!(called_ae = %dest.ae_title, objects = items.len(), stored, "DICOM SCU: C-STORE done");
    Ok(outcomes)
}

/// A piece of a data set read ahead of the network.
enum Piece {
    Data(Zeroizing<Vec<u8>>),
    End,
    Failed(StoreFailure),
}

/// Reads the data sets of `order` into pieces, in order, until the
/// receiver is gone; buffers come back through `recycle`.
fn read_ahead(
    sets: &Arc<dyn DataSets>,
    order: &[usize],
    tx: &tokio::sync::mpsc::Sender<(usize, Piece)>,
    recycle: &std::sync::mpsc::Receiver<Zeroizing<Vec<u8>>>,
) {
    for &n in order {
        let mut input = match sets.open(n) {
            Ok(r) => r,
            Err(e) => {
                if tx.blocking_send((n, Piece::Failed(e))).is_err() {
                    return;
                }
                continue;
            }
        };
        loop {
            let mut buf = recycle
                .try_recv()
                .unwrap_or_else(|_| Zeroizing::new(Vec::with_capacity(PIECE)));
            buf.resize(PIECE, 0);
            let mut filled = 0;
            let mut failed = None;
            while filled < PIECE {
                match input.read(&mut buf[filled..]) {
                    Ok(0) => break,
                    Ok(k) => filled += k,
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                    Err(e) => {
                        failed = Some(e);
                        break;
                    }
                }
            }
            buf.truncate(filled);
            let at_end = filled < PIECE;
            let send = |p| tx.blocking_send((n, p)).is_ok();
            if let Some(e) = failed {
                if !send(Piece::Failed(StoreFailure::Io(e))) {
                    return;
                }
                break;
            }
            if filled > 0 && !send(Piece::Data(buf)) {
                return;
            }
            if at_end {
                if !send(Piece::End) {
                    return;
                }
                break;
            }
        }
    }
}

/// How one object of a batch went.
enum Sent {
    /// Sent and answered (or refused): its outcome.
    Answered(Result<Status, StoreFailure>),
    /// Could not be opened: nothing of it was sent.
    Unopened(StoreFailure),
    /// Failed midway: the association must be aborted.
    Broken(StoreFailure),
}

#[allow(clippy::too_many_arguments)]
async fn store_batch(
    calling_ae: &str,
    dest: &Destination,
    pairs: &[(&str, &str)],
    items: &[StoreItem],
    todo: &[usize],
    sets: &Arc<dyn DataSets>,
    message_id: &mut u16,
    outcomes: &mut [Option<Result<Status, StoreFailure>>],
) -> Result<(), ScuError> {
    let mut opts = options(calling_ae, dest);
    for (class, ts) in pairs {
        opts = opts.with_presentation_context(*class, vec![*ts]);
    }
    with_channel!(opts, dest, |ch| {
        let mut order = Vec::with_capacity(todo.len());
        for &n in todo {
            let item = &items[n];
            match context(ch.association(), &item.sop_class, Some(&item.transfer_syntax)) {
                Some((ctx, _)) => order.push((n, ctx)),
                None => {
                    outcomes[n] = Some(Err(StoreFailure::NoContext {
                        sop_class: item.sop_class.clone(),
                        transfer_syntax: item.transfer_syntax.clone(),
                    }));
                }
            }
        }
        let (tx, mut rx) = tokio::sync::mpsc::channel(READ_AHEAD);
        let (back, recycle) = std::sync::mpsc::channel();
        let reader_order: Vec<usize> = order.iter().map(|(n, _)| *n).collect();
        let reader_sets = Arc::clone(sets);
        // Ends when `rx` is dropped (this batch ends or fails).
        tokio::task::spawn_blocking(move || read_ahead(&reader_sets, &reader_order, &tx, &recycle));
        for &(n, ctx) in &order {
            match store_one(&mut ch, &mut rx, &back, n, ctx, &items[n], message_id).await? {
                Sent::Answered(r) => outcomes[n] = Some(r),
                Sent::Unopened(e) => outcomes[n] = Some(Err(e)),
                Sent::Broken(e) => {
                    tracing::warn!(called_ae = %dest.ae_title, cause = %e, "DICOM SCU: a data set failed midway; association aborted");
                    outcomes[n] = Some(Err(e));
                    let _ = AsyncAssociation::abort(ch.into_association()).await;
                    return Ok(());
                }
            }
        }
        release(ch).await;
        Ok(())
    })
}

async fn store_one<A, S>(
    ch: &mut Channel<A, S>,
    rx: &mut tokio::sync::mpsc::Receiver<(usize, Piece)>,
    back: &std::sync::mpsc::Sender<Zeroizing<Vec<u8>>>,
    n: usize,
    ctx: u8,
    item: &StoreItem,
    message_id: &mut u16,
) -> Result<Sent, ScuError>
where
    A: AsyncAssociation<S> + Send,
    S: AsyncRead + AsyncWrite + Unpin + Send,
{
    let mut next = async || match rx.recv().await {
        Some((m, piece)) if m == n => Ok(piece),
        // The reader stopped (it panicked) or is out of step: give up the association.
        _ => Err(ScuError::Dimse(DimseError::Io(std::io::Error::other(
            "the data set reader stopped",
        )))),
    };
    let mut piece = next().await?;
    if let Piece::Failed(e) = piece {
        return Ok(Sent::Unopened(e));
    }
    *message_id = message_id.wrapping_add(1);
    ch.send_command(
        ctx,
        &Command::store_rq(*message_id, &item.sop_class, &item.sop_instance),
    )
    .await?;
    loop {
        match piece {
            Piece::Data(buf) => {
                ch.write_data(ctx, &buf).await?;
                let _ = back.send(buf);
            }
            Piece::End => {
                ch.finish_data(ctx).await?;
                break;
            }
            Piece::Failed(e) => {
                ch.discard_data();
                return Ok(Sent::Broken(e));
            }
        }
        piece = next().await?;
    }
    let (_, rsp) = ch.expect_command().await?;
    if rsp.field != CommandField::CStoreRsp {
        return Err(ScuError::UnexpectedResponse(rsp.field));
    }
    let status = rsp.status_or_failure();
    Ok(Sent::Answered(match status.kind() {
        StatusKind::Success | StatusKind::Warning => Ok(status),
        _ => Err(StoreFailure::Status {
            status,
            comment: rsp
                .error_comment
                .as_deref()
                .map(|c| crate::text::clean(c, 64).into_owned()),
        }),
    }))
}

/// The keys of a study-level C-FIND; absent ones match anything.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StudyQuery {
    /// Patient ID (0010,0020).
    pub patient_id: Option<String>,
    /// Accession Number (0008,0050).
    pub accession_number: Option<String>,
    /// Study Instance UID (0020,000D).
    pub study_uid: Option<String>,
    /// First Study Date, `YYYYMMDD`.
    pub date_from: Option<String>,
    /// Last Study Date, `YYYYMMDD`.
    pub date_to: Option<String>,
}

/// Why a [`StudyQuery`] is not one.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum QueryError {
    /// A date is not `YYYYMMDD`.
    #[error("{0}: a date is YYYYMMDD")]
    Date(&'static str),
    /// A key holds a character that would make it a wildcard, a range or
    /// a list, or is longer than its VR allows.
    #[error("{0}: no wildcards (* ?), backslashes or control characters, at most 64 characters")]
    Key(&'static str),
    /// No key at all: the whole PACS would match.
    #[error("give at least one key: patient id, accession number, study UID or a date")]
    Empty,
}

impl StudyQuery {
    /// Checks the keys: exact values (no wildcard, range or list syntax
    /// smuggled in), dates `YYYYMMDD`, and at least one key.
    ///
    /// # Errors
    /// [`QueryError`] naming the key.
    pub fn check(&self) -> Result<(), QueryError> {
        for (name, v) in [
            ("patient id", &self.patient_id),
            ("accession number", &self.accession_number),
            ("study UID", &self.study_uid),
        ] {
            if let Some(v) = v
                && (v.is_empty() || v.len() > 64 || v.chars().any(|c| matches!(c, '*' | '?' | '\\') || c.is_control()))
            {
                return Err(QueryError::Key(name));
            }
        }
        for (name, v) in [("date from", &self.date_from), ("date to", &self.date_to)] {
            if let Some(v) = v
                && (v.len() != 8 || !v.bytes().all(|b| b.is_ascii_digit()))
            {
                return Err(QueryError::Date(name));
            }
        }
        if *self == StudyQuery::default() {
            return Err(QueryError::Empty);
        }
        Ok(())
    }
}

/// One study matched by C-FIND.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct StudyMatch {
    /// Study Instance UID.
    pub study_uid: String,
    /// Patient ID.
    pub patient_id: String,
    /// Patient's Name.
    pub patient_name: String,
    /// Study Date.
    pub study_date: String,
    /// Study Description.
    pub description: String,
    /// Accession Number.
    pub accession_number: String,
    /// Modalities in Study.
    pub modalities: Vec<String>,
    /// Number of Study Related Instances, when the peer gives it.
    pub instances: Option<u32>,
}

impl StudyQuery {
    fn identifier(&self) -> InMemDicomObject {
        let mut obj = InMemDicomObject::new_empty();
        let mut put = |tag: Tag, vr: VR, value: Option<&str>| {
            obj.put(DataElement::new(
                tag,
                vr,
                PrimitiveValue::from(value.unwrap_or("").to_string()),
            ));
        };
        put(tags::QUERY_RETRIEVE_LEVEL, VR::CS, Some("STUDY"));
        put(tags::STUDY_INSTANCE_UID, VR::UI, self.study_uid.as_deref());
        put(tags::PATIENT_ID, VR::LO, self.patient_id.as_deref());
        put(tags::ACCESSION_NUMBER, VR::SH, self.accession_number.as_deref());
        let date = match (&self.date_from, &self.date_to) {
            (None, None) => String::new(),
            (Some(a), Some(b)) if a == b => a.clone(),
            (a, b) => format!("{}-{}", a.as_deref().unwrap_or(""), b.as_deref().unwrap_or("")),
        };
        put(tags::STUDY_DATE, VR::DA, Some(&date));
        put(tags::PATIENT_NAME, VR::PN, None);
        put(tags::STUDY_DESCRIPTION, VR::LO, None);
        put(tags::MODALITIES_IN_STUDY, VR::CS, None);
        put(tags::NUMBER_OF_STUDY_RELATED_INSTANCES, VR::IS, None);
        obj
    }
}

fn encode_identifier(obj: &InMemDicomObject, ts_uid: &str) -> Result<Vec<u8>, ScuError> {
    let ts = TransferSyntaxRegistry
        .get(ts_uid)
        .ok_or_else(|| ScuError::UnknownTransferSyntax {
            uid: ts_uid.to_string(),
        })?;
    let mut out = Vec::new();
    obj.write_dataset_with_ts(&mut out, ts)
        .map_err(|e| ScuError::EncodeIdentifier(Box::new(e)))?;
    Ok(out)
}

fn study_match(bytes: &[u8], ts_uid: &str) -> Result<StudyMatch, ScuError> {
    let ts = TransferSyntaxRegistry
        .get(ts_uid)
        .ok_or_else(|| ScuError::UnknownTransferSyntax {
            uid: ts_uid.to_string(),
        })?;
    let obj = InMemDicomObject::read_dataset_with_ts(bytes, ts).map_err(|e| ScuError::DecodeIdentifier(Box::new(e)))?;
    let text = |tag| {
        obj.element(tag)
            .ok()
            .and_then(|e| e.to_str().ok())
            .map(|s| s.trim_matches(['\0', ' ']).to_string())
            .unwrap_or_default()
    };
    let modalities = obj
        .element(tags::MODALITIES_IN_STUDY)
        .ok()
        .and_then(|e| e.to_multi_str().ok())
        .map(|v| {
            v.iter()
                .map(|s| s.trim().to_string())
                .filter(|s| !s.is_empty())
                .collect()
        })
        .unwrap_or_default();
    let instances = obj
        .element(tags::NUMBER_OF_STUDY_RELATED_INSTANCES)
        .ok()
        .and_then(|e| e.to_int::<u32>().ok());
    Ok(StudyMatch {
        study_uid: text(tags::STUDY_INSTANCE_UID),
        patient_id: text(tags::PATIENT_ID),
        patient_name: text(tags::PATIENT_NAME),
        study_date: text(tags::STUDY_DATE),
        description: text(tags::STUDY_DESCRIPTION),
        accession_number: text(tags::ACCESSION_NUMBER),
        modalities,
        instances,
    })
}

/// C-FIND at study level (Study Root Query/Retrieve Information Model -
/// FIND): the studies matching `query`.
///
/// # Errors
/// [`ScuError`]: no association, a failure status, a response that cannot
/// be decoded.
pub async fn find_studies(
    calling_ae: &str,
    dest: &Destination,
    query: &StudyQuery,
) -> Result<Vec<StudyMatch>, ScuError> {
    let opts = options(calling_ae, dest)
        .with_presentation_context(sop::STUDY_ROOT_FIND, vec![EXPLICIT_VR_LE, super::dimse::IMPLICIT_VR_LE]);
    let matches = with_channel!(opts, dest, |ch| {
        let (ctx, ts) = context(ch.association(), sop::STUDY_ROOT_FIND, None)
            .ok_or(ScuError::NoContext("Study Root Query/Retrieve - FIND"))?;
        let identifier = encode_identifier(&query.identifier(), &ts)?;
        ch.send_command(ctx, &Command::find_rq(1, sop::STUDY_ROOT_FIND)).await?;
        ch.send_data(ctx, &identifier).await?;
        let mut matches = Vec::new();
        loop {
            let (rctx, rsp) = ch.expect_command().await?;
            if rsp.field != CommandField::CFindRsp {
                return Err(ScuError::UnexpectedResponse(rsp.field));
            }
            let data = if rsp.has_data_set {
                Some(ch.receive_data_vec(rctx, MAX_IDENTIFIER).await?)
            } else {
                None
            };
            match rsp.status_or_failure().kind() {
                StatusKind::Pending => {
                    if let Some(data) = data {
                        matches.push(study_match(&data, &ts)?);
                    }
                }
                StatusKind::Success | StatusKind::Warning | StatusKind::Cancel => break,
                StatusKind::Failure => return Err(failed(&rsp)),
            }
        }
        release(ch).await;
        Ok::<_, ScuError>(matches)
    })?;
    info!(called_ae = %dest.ae_title, matches = matches.len(), "DICOM SCU: C-FIND done");
    Ok(matches)
}

/// The result of a C-MOVE.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MoveOutcome {
    /// The final status (success, or warning when some failed).
    pub status: Status,
    /// Sub-operations completed.
    pub completed: u16,
    /// Sub-operations failed.
    pub failed: u16,
    /// Sub-operations with a warning.
    pub warning: u16,
}

/// C-MOVE of the study `study_uid` from `dest` to the AE `move_destination`
/// (medmesh's own SCP, which `dest` must know), with the sub-operation
/// counts of the final response.
///
/// # Errors
/// [`ScuError`]: no association, or a failure status (e.g. A801, move
/// destination unknown).
pub async fn move_study(
    calling_ae: &str,
    dest: &Destination,
    study_uid: &str,
    move_destination: &str,
) -> Result<MoveOutcome, ScuError> {
    let opts = options(calling_ae, dest)
        .with_presentation_context(sop::STUDY_ROOT_MOVE, vec![EXPLICIT_VR_LE, super::dimse::IMPLICIT_VR_LE]);
    let outcome = with_channel!(opts, dest, |ch| {
        let (ctx, ts) = context(ch.association(), sop::STUDY_ROOT_MOVE, None)
            .ok_or(ScuError::NoContext("Study Root Query/Retrieve - MOVE"))?;
        let mut id = InMemDicomObject::new_empty();
        id.put(DataElement::new(
            tags::QUERY_RETRIEVE_LEVEL,
            VR::CS,
            PrimitiveValue::from("STUDY"),
        ));
        id.put(DataElement::new(
            tags::STUDY_INSTANCE_UID,
            VR::UI,
            PrimitiveValue::from(study_uid.to_string()),
        ));
        let identifier = encode_identifier(&id, &ts)?;
        ch.send_command(ctx, &Command::move_rq(1, sop::STUDY_ROOT_MOVE, move_destination))
            .await?;
        ch.send_data(ctx, &identifier).await?;
        let outcome = loop {
            let (rctx, rsp) = ch.expect_command().await?;
            if rsp.field != CommandField::CMoveRsp {
                return Err(ScuError::UnexpectedResponse(rsp.field));
            }
            if rsp.has_data_set {
                // The failed SOP instance list of a final response.
                ch.receive_data_vec(rctx, MAX_IDENTIFIER).await?;
            }
            let status = rsp.status_or_failure();
            match status.kind() {
                StatusKind::Pending => {}
                StatusKind::Failure => return Err(failed(&rsp)),
                _ => {
                    break MoveOutcome {
                        status,
                        completed: rsp.completed.unwrap_or(0),
                        failed: rsp.failed.unwrap_or(0),
                        warning: rsp.warning.unwrap_or(0),
                    };
                }
            }
        };
        release(ch).await;
        Ok::<_, ScuError>(outcome)
    })?;
    info!(
        called_ae = %dest.ae_title,
        move_destination,
        status = %outcome.status,
        completed = outcome.completed,
        failed = outcome.failed,
        "DICOM SCU: C-MOVE done"
    );
    Ok(outcome)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn study_query_identifier_round_trips() {
        let q = StudyQuery {
            patient_id: Some("P1".into()),
            date_from: Some("20240101".into()),
            date_to: Some("20241231".into()),
            ..StudyQuery::default()
        };
        let bytes = encode_identifier(&q.identifier(), EXPLICIT_VR_LE).unwrap();
        let ts = TransferSyntaxRegistry.get(EXPLICIT_VR_LE).unwrap();
        let obj = InMemDicomObject::read_dataset_with_ts(bytes.as_slice(), ts).unwrap();
        let s = |t| obj.element(t).unwrap().to_str().unwrap().trim().to_string();
        assert_eq!(s(tags::QUERY_RETRIEVE_LEVEL), "STUDY");
        assert_eq!(s(tags::PATIENT_ID), "P1");
        assert_eq!(s(tags::STUDY_DATE), "20240101-20241231");
        assert_eq!(s(tags::STUDY_INSTANCE_UID), "");
        let m = study_match(&bytes, EXPLICIT_VR_LE).unwrap();
        assert_eq!(m.patient_id, "P1");
        assert_eq!(m.instances, None);
        assert!(m.modalities.is_empty());
    }
}
