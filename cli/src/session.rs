//! A home, reached either through its running node's admin API or, when no
//! node runs on it, on its files (which needs the passphrase). Every command
//! that reads or changes a home goes through here, so it works the same
//! either way.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use medmesh_node::api::client::{Client, ClientError};
use medmesh_node::api::{
    AddPeerRequest, ApplyRequest, BlockRequest, CheckRequest, ConsentListRequest, DeidRequest, DenyRequest,
    ExportRequest, HeadView, IdRequest, ImportRequest, JoinRequest, Line, ListRequest, LogTailRequest,
    NotificationsRequest, PurgeRequest, RelinkRequest, ShowRequest, Status, TransferAsk, Unblocked, WithdrawRequest,
};
use medmesh_node::consent_schema::{DeidLevel, Purpose};
use medmesh_node::deid::DeidOption;
use medmesh_node::dicom::export::{ExportOutcome, ExportSummary};
use medmesh_node::dicom::ingest::{FileOutcome, ImportEvent, ImportSummary};
use medmesh_node::home::consent::{CheckQuery, ConsentCheck, ConsentEntry, FhirImport, ImportedConsent, NewConsent};
use medmesh_node::home::deid::{DeidEvent, DeidOutcome, DeidSummary, RelinkView};
use medmesh_node::home::ledger::{EntryView, NotificationView, VerifyReport};
use medmesh_node::home::retention::{PurgeReason, PurgeReport};
use medmesh_node::home::trust::{BilateralEntry, BlockedEntry, ConsortiumEntry, RevocationEntry, TrustListing};
use medmesh_node::home::{Node, StudyDetail, StudySummary};
use medmesh_node::net::PeersReport;
use medmesh_node::notify::SinkStatus;
use medmesh_node::store::CheckReport;
use medmesh_node::transfer::TransferView;
use serde::Serialize;
use serde::de::DeserializeOwned;

/// A home, local or through its running node.
pub enum Session {
    /// No node runs on the home: opened on its files.
    Local(Box<Node>),
    /// The home's node runs: through its admin API.
    Remote {
        client: Client,
        rt: tokio::runtime::Runtime,
    },
}

/// Files and bytes of a `started` line (import, de-identification).
fn started(line: &Line) -> (u64, u64) {
    let n = |k: &str| line.data.get(k).and_then(serde_json::Value::as_u64).unwrap_or(0);
    (n("files"), n("bytes"))
}

fn decode<T: DeserializeOwned>(line: Line) -> Result<T, ClientError> {
    serde_json::from_value(line.data).map_err(|e| ClientError::Decode(format!("{} record: {e}", line.kind)))
}

impl Session {
    /// Through the running node if one answers on the home's socket, else on
    /// the files (asking for the passphrase).
    pub fn open(home: &Path) -> Result<Self> {
        let remote = |client: Client| -> Result<Self> {
            tracing::debug!(home = %home.display(), "using the running node's admin API");
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .context("starting the async runtime")?;
            Ok(Self::Remote { client, rt })
        };
        if let Some(client) = Client::detect(home) {
            return remote(client);
        }
        match crate::open(home)? {
            Some(node) => Ok(Self::Local(Box::new(node))),
            // A node started meanwhile: its admin API answers now.
            None => remote(
                Client::detect(home).with_context(|| format!("the node on {} stopped answering", home.display()))?,
            ),
        }
    }

    fn get<T: DeserializeOwned>(client: &Client, rt: &tokio::runtime::Runtime, path: &str) -> Result<T> {
        Ok(rt.block_on(client.get(path))?)
    }

    fn post<B: Serialize, T: DeserializeOwned>(
        client: &Client,
        rt: &tokio::runtime::Runtime,
        path: &str,
        body: &B,
    ) -> Result<T> {
        Ok(rt.block_on(client.post(path, body))?)
    }

    pub fn status(&self) -> Result<Option<Status>> {
        match self {
            Self::Local(_) => Ok(None),
            Self::Remote { client, rt } => Self::get(client, rt, "/status").map(Some),
        }
    }

    pub fn studies(&self, patient: Option<(&str, &str)>) -> Result<Vec<StudySummary>> {
        match self {
            Self::Local(node) => Ok(node.studies(patient)?),
            Self::Remote { client, rt } => Self::post(
                client,
                rt,
                "/studies/list",
                &ListRequest {
                    patient: patient.map(|(p, i)| (p.to_string(), i.to_string())),
                },
            ),
        }
    }

    pub fn study(&self, study_uid: &str) -> Result<StudyDetail> {
        match self {
            Self::Local(node) => Ok(node.study(study_uid)?),
            Self::Remote { client, rt } => Self::post(
                client,
                rt,
                "/studies/show",
                &ShowRequest {
                    study_uid: study_uid.into(),
                },
            ),
        }
    }

    pub fn purge(&self, study: &str, reason: PurgeReason) -> Result<PurgeReport> {
        match self {
            Self::Local(node) => Ok(node.purge_study(study, reason)?),
            Self::Remote { client, rt } => Self::post(
                client,
                rt,
                "/studies/purge",
                &PurgeRequest {
                    study: study.into(),
                    reason,
                },
            ),
        }
    }

    pub fn check(&self, deep: bool) -> Result<CheckReport> {
        match self {
            Self::Local(node) => Ok(node.store().check(deep)?),
            Self::Remote { client, rt } => Self::post(client, rt, "/store/check", &CheckRequest { deep }),
        }
    }

    pub fn import(&self, paths: &[PathBuf], mut progress: impl FnMut(ImportEvent<'_>)) -> Result<ImportSummary> {
        match self {
            Self::Local(node) => Ok(node.import(paths, progress)?),
            Self::Remote { client, rt } => {
                // The node has its own working directory: send absolute paths.
                let mut abs = Vec::new();
                for p in paths {
                    abs.push(std::path::absolute(p).with_context(|| format!("{}", p.display()))?);
                }
                let mut summary = None;
                rt.block_on(
                    client.post_lines("/studies/import", &ImportRequest { paths: abs }, |line| {
                        match line.kind.as_str() {
                            "started" => {
                                let (files, bytes) = started(&line);
                                progress(ImportEvent::Started { files, bytes });
                            }
                            "file" => {
                                let outcome: FileOutcome = decode(line)?;
                                progress(ImportEvent::File(&outcome));
                            }
                            "import-summary" => summary = Some(decode::<ImportSummary>(line)?),
                            _ => {}
                        }
                        Ok(())
                    }),
                )?;
                summary.context("the node ended the import without a summary")
            }
        }
    }

    pub fn deid(
        &self,
        paths: &[PathBuf],
        out: &Path,
        level: DeidLevel,
        options: &[DeidOption],
        mut progress: impl FnMut(DeidEvent<'_>),
    ) -> Result<DeidSummary> {
        match self {
            Self::Local(node) => Ok(node.deid(paths, out, level, options, progress)?),
            Self::Remote { client, rt } => {
                let mut abs = Vec::new();
                for p in paths {
                    abs.push(std::path::absolute(p).with_context(|| format!("{}", p.display()))?);
                }
                let req = DeidRequest {
                    paths: abs,
                    out: std::path::absolute(out).with_context(|| format!("{}", out.display()))?,
                    level,
                    options: options.to_vec(),
                };
                let mut summary = None;
                rt.block_on(client.post_lines("/studies/deid", &req, |line| {
                    match line.kind.as_str() {
                        "started" => {
                            let (files, bytes) = started(&line);
                            progress(DeidEvent::Started { files, bytes });
                        }
                        "file" => {
                            let outcome: DeidOutcome = decode(line)?;
                            progress(DeidEvent::File(&outcome));
                        }
                        "deid-summary" => summary = Some(decode::<DeidSummary>(line)?),
                        _ => {}
                    }
                    Ok(())
                }))?;
                summary.context("the node ended de-identification without a summary")
            }
        }
    }

    pub fn relink(&self, pseudonym: &str) -> Result<RelinkView> {
        match self {
            Self::Local(node) => Ok(node.relink(pseudonym)?),
            Self::Remote { client, rt } => Self::post(
                client,
                rt,
                "/studies/relink",
                &RelinkRequest {
                    pseudonym: pseudonym.into(),
                },
            ),
        }
    }

    pub fn export(
        &self,
        study_uid: &str,
        out: &Path,
        force: bool,
        mut progress: impl FnMut(&ExportOutcome),
    ) -> Result<ExportSummary> {
        match self {
            Self::Local(node) => Ok(node.export(study_uid, out, force, progress)?),
            Self::Remote { client, rt } => {
                let req = ExportRequest {
                    study_uid: study_uid.into(),
                    out: std::path::absolute(out).with_context(|| format!("{}", out.display()))?,
                    force,
                };
                let mut summary = None;
                rt.block_on(client.post_lines("/studies/export", &req, |line| {
                    match line.kind.as_str() {
                        "object" => progress(&decode::<ExportOutcome>(line)?),
                        "export-summary" => summary = Some(decode::<ExportSummary>(line)?),
                        _ => {}
                    }
                    Ok(())
                }))?;
                summary.context("the node ended the export without a summary")
            }
        }
    }

    pub fn join(&self, descriptor: &[u8], certificate: &[u8]) -> Result<ConsortiumEntry> {
        match self {
            Self::Local(node) => Ok(node.join(descriptor, certificate)?),
            Self::Remote { client, rt } => Self::post(
                client,
                rt,
                "/trust/join",
                &JoinRequest {
                    descriptor: hex::encode(descriptor),
                    certificate: hex::encode(certificate),
                },
            ),
        }
    }

    pub fn add_peer(&self, record: &[u8], purposes: Vec<Purpose>, valid_days: Option<u32>) -> Result<BilateralEntry> {
        match self {
            Self::Local(node) => Ok(node.add_peer(record, purposes, valid_days)?),
            Self::Remote { client, rt } => Self::post(
                client,
                rt,
                "/trust/add-peer",
                &AddPeerRequest {
                    record: hex::encode(record),
                    purposes,
                    valid_days,
                },
            ),
        }
    }

    pub fn apply_revocation(&self, revocation: &[u8]) -> Result<RevocationEntry> {
        match self {
            Self::Local(node) => Ok(node.apply_revocation(revocation)?),
            Self::Remote { client, rt } => Self::post(
                client,
                rt,
                "/trust/apply",
                &ApplyRequest {
                    revocation: hex::encode(revocation),
                },
            ),
        }
    }

    pub fn block(&self, peer_id: &str, reason: &str) -> Result<BlockedEntry> {
        match self {
            Self::Local(node) => Ok(node.block(peer_id, reason)?),
            Self::Remote { client, rt } => Self::post(
                client,
                rt,
                "/trust/block",
                &BlockRequest {
                    peer_id: peer_id.into(),
                    reason: reason.into(),
                },
            ),
        }
    }

    pub fn unblock(&self, peer_id: &str) -> Result<Unblocked> {
        match self {
            Self::Local(node) => Ok(Unblocked {
                peer_id: peer_id.into(),
                was_blocked: node.unblock(peer_id)?,
            }),
            Self::Remote { client, rt } => Self::post(
                client,
                rt,
                "/trust/unblock",
                &BlockRequest {
                    peer_id: peer_id.into(),
                    reason: String::new(),
                },
            ),
        }
    }

    pub fn trust_listing(&self) -> Result<TrustListing> {
        match self {
            Self::Local(node) => Ok(node.trust_listing()?),
            Self::Remote { client, rt } => Self::get(client, rt, "/trust"),
        }
    }

    pub fn peers(&self) -> Result<PeersReport> {
        match self {
            Self::Local(node) => Ok(medmesh_node::net::offline_peers(node)?),
            Self::Remote { client, rt } => Self::get(client, rt, "/peers"),
        }
    }

    pub fn consents(&self, patient: Option<(&str, &str)>) -> Result<Vec<ConsentEntry>> {
        match self {
            Self::Local(node) => Ok(node.consents(patient)?),
            Self::Remote { client, rt } => Self::post(
                client,
                rt,
                "/consents/list",
                &ConsentListRequest {
                    patient: patient.map(|(p, i)| (p.to_string(), i.to_string())),
                },
            ),
        }
    }

    pub fn consent_add(&self, c: NewConsent) -> Result<ConsentEntry> {
        match self {
            Self::Local(node) => Ok(node.consent_add(c)?),
            Self::Remote { client, rt } => Self::post(client, rt, "/consents/add", &c),
        }
    }

    pub fn consent_import_fhir(&self, mut req: FhirImport) -> Result<Vec<ImportedConsent>> {
        match self {
            Self::Local(node) => Ok(node.consent_import_fhir(&req)?),
            Self::Remote { client, rt } => {
                // The node has its own working directory: send absolute paths.
                for f in &mut req.files {
                    *f = std::path::absolute(&*f).with_context(|| format!("{}", f.display()))?;
                }
                Self::post(client, rt, "/consents/import-fhir", &req)
            }
        }
    }

    pub fn consent_withdraw(&self, id: &str) -> Result<ConsentEntry> {
        match self {
            Self::Local(node) => Ok(node.consent_withdraw(id)?),
            Self::Remote { client, rt } => {
                Self::post(client, rt, "/consents/withdraw", &WithdrawRequest { id: id.into() })
            }
        }
    }

    pub fn log_tail(&self, limit: usize) -> Result<Vec<EntryView>> {
        match self {
            Self::Local(node) => Ok(node.log_tail(limit)?),
            Self::Remote { client, rt } => Self::post(client, rt, "/log/tail", &LogTailRequest { limit }),
        }
    }

    pub fn log_show(&self, id: &str) -> Result<EntryView> {
        match self {
            Self::Local(node) => Ok(node.log_show(id)?),
            Self::Remote { client, rt } => Self::post(client, rt, "/log/show", &IdRequest { id: id.into() }),
        }
    }

    pub fn notifications(&self, unread: bool) -> Result<Vec<NotificationView>> {
        match self {
            Self::Local(node) => Ok(node.notifications(unread)?),
            Self::Remote { client, rt } => Self::post(client, rt, "/notifications", &NotificationsRequest { unread }),
        }
    }

    pub fn notify_status(&self) -> Result<Vec<SinkStatus>> {
        match self {
            Self::Local(node) => Ok(node.notify_status()?),
            Self::Remote { client, rt } => Self::get(client, rt, "/notifications/status"),
        }
    }

    pub fn log_heads(&self) -> Result<Vec<HeadView>> {
        match self {
            Self::Local(node) => Ok(HeadView::list(&node.ledger_heads()?)),
            Self::Remote { client, rt } => Self::get(client, rt, "/log/heads"),
        }
    }

    pub fn log_verify(&self) -> Result<VerifyReport> {
        match self {
            Self::Local(node) => Ok(node.log_verify()?),
            Self::Remote { client, rt } => Self::get(client, rt, "/log/verify"),
        }
    }

    pub fn transfers(&self) -> Result<Vec<TransferView>> {
        match self {
            Self::Local(node) => Ok(node.transfers().list()?),
            Self::Remote { client, rt } => Self::get(client, rt, "/transfers"),
        }
    }

    pub fn transfer_show(&self, id: &str) -> Result<TransferView> {
        match self {
            Self::Local(node) => Ok(node.transfers().transfer_show(id)?),
            Self::Remote { client, rt } => Self::post(client, rt, "/transfers/show", &IdRequest { id: id.into() }),
        }
    }

    /// Asks the holder for a study: needs the running node (the network).
    pub fn request(&self, ask: &TransferAsk) -> Result<TransferView> {
        match self {
            Self::Local(_) => anyhow::bail!(
                "requesting a study needs this home's node to be running (`medmesh run`): it talks to the holder"
            ),
            Self::Remote { client, rt } => Self::post(client, rt, "/transfers/request", ask),
        }
    }

    /// Shares a study; on the files, the decision is recorded and the node
    /// streams it once it runs.
    pub fn share(&self, ask: &TransferAsk) -> Result<TransferView> {
        match self {
            Self::Local(node) => {
                Ok(node
                    .transfers()
                    .share(&ask.peer_id, &ask.study_uid, ask.purpose, ask.role, ask.level)?)
            }
            Self::Remote { client, rt } => Self::post(client, rt, "/transfers/share", ask),
        }
    }

    pub fn approvals(&self) -> Result<Vec<TransferView>> {
        match self {
            Self::Local(node) => Ok(node.transfers().approvals()?),
            Self::Remote { client, rt } => Self::get(client, rt, "/approvals"),
        }
    }

    pub fn approve(&self, id: &str) -> Result<TransferView> {
        match self {
            Self::Local(node) => Ok(node.transfers().approve(id)?.0),
            Self::Remote { client, rt } => Self::post(client, rt, "/approvals/approve", &IdRequest { id: id.into() }),
        }
    }

    /// Denies a pending request; on the files the requester is not told
    /// (it is, when the node runs).
    pub fn deny(&self, id: &str, reason: &str) -> Result<TransferView> {
        match self {
            Self::Local(node) => Ok(node.transfers().deny_approval(id, reason)?.0),
            Self::Remote { client, rt } => Self::post(
                client,
                rt,
                "/approvals/deny",
                &DenyRequest {
                    id: id.into(),
                    reason: reason.into(),
                },
            ),
        }
    }

    pub fn is_remote(&self) -> bool {
        matches!(self, Self::Remote { .. })
    }

    pub fn consent_check(&self, q: &CheckQuery) -> Result<ConsentCheck> {
        match self {
            Self::Local(node) => Ok(node.consent_check(q)?),
            Self::Remote { client, rt } => Self::post(client, rt, "/consents/check", q),
        }
    }
}
