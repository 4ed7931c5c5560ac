//! The route table of the admin API: every route once, with its method,
//! path, request and answer, and the handler that serves it from the node
//! (see [`super::route`]). The server dispatches from [`TABLE`]; the client
//! calls `client.call::<R>(request)`; the CLI serves the same handlers in
//! its own process when no node runs. docs/PROTOCOL.md ("Admin API") lists
//! the same routes (a test checks it).

use std::path::PathBuf;

use super::route::{Call, Ctx, Person, Route, ServeError, Stream, Verb, WebAccess, unhex};
use super::server;
use super::{
    AddPeerRequest, ApplyRequest, BlockRequest, CheckRequest, ConsentListRequest, DeidProgress, DeidRequest,
    DenyRequest, EchoReport, EchoRequest, ExportProgress, ExportRequest, FetchReport, FetchRequest, HeadView,
    IdRequest, ImportProgress, ImportRequest, JoinRequest, ListRequest, LogTailRequest, NotificationsRequest,
    PurgeRequest, RelinkRequest, ShowRequest, Status, TransferAsk, Unblocked, WithdrawRequest,
};
use crate::access::Operation;
use crate::audit::{EntryView, NotificationView, VerifyReport};
use crate::consent::{CheckQuery, ConsentCheck, ConsentEntry, FhirImport, ImportedConsent, NewConsent};
use crate::deid::{DeidEvent, DeidSummary, RelinkView};
use crate::dicom::export::ExportSummary;
use crate::dicom::ingest::{ImportEvent, ImportSummary};
use crate::gateway::forward::{ForwardItem, ItemRequest};
use crate::home::{HomeError, Node};
use crate::net::PeersReport;
use crate::notify::SinkStatus;
use crate::retention::PurgeReport;
use crate::store::CheckReport;
use crate::studies::{StudyDetail, StudySummary};
use crate::transfer::TransferView;
use crate::transfer::protocol::TransferNet;
use crate::trust::service::{BilateralEntry, BlockedEntry, ConsortiumEntry, RevocationEntry, TrustListing};

/// One row of the table: a route's method and path, and how the server
/// serves it.
#[derive(Debug, Clone, Copy)]
pub struct Entry {
    /// Its method.
    pub method: Verb,
    /// Its whole path.
    pub path: &'static str,
    /// Who may call it through the web API.
    pub web: WebAccess,
    pub(crate) serve: server::Serve,
}

impl Entry {
    const fn call<R: Call>() -> Self {
        Self {
            method: R::METHOD,
            path: R::PATH,
            web: R::WEB,
            serve: server::call::<R>,
        }
    }

    const fn stream<R: Stream>() -> Self {
        Self {
            method: R::METHOD,
            path: R::PATH,
            web: R::WEB,
            serve: server::stream::<R>,
        }
    }
}

/// Every route of the admin API.
pub static TABLE: &[Entry] = &[
    Entry::call::<GetStatus>(),
    Entry::call::<Peers>(),
    Entry::call::<TrustList>(),
    Entry::call::<TrustJoin>(),
    Entry::call::<TrustAddPeer>(),
    Entry::call::<TrustApply>(),
    Entry::call::<TrustBlock>(),
    Entry::call::<TrustUnblock>(),
    Entry::call::<StudiesList>(),
    Entry::call::<StudiesShow>(),
    Entry::call::<StudiesPurge>(),
    Entry::stream::<StudiesImport>(),
    Entry::stream::<StudiesExport>(),
    Entry::stream::<StudiesDeid>(),
    Entry::call::<StudiesRelink>(),
    Entry::call::<LogTail>(),
    Entry::call::<LogShow>(),
    Entry::call::<LogVerify>(),
    Entry::call::<LogHeads>(),
    Entry::call::<Notifications>(),
    Entry::call::<NotificationsStatus>(),
    Entry::call::<StoreCheck>(),
    Entry::call::<ConsentsList>(),
    Entry::call::<ConsentsAdd>(),
    Entry::call::<ConsentsImportFhir>(),
    Entry::call::<ConsentsWithdraw>(),
    Entry::call::<ConsentsCheck>(),
    Entry::call::<Transfers>(),
    Entry::call::<TransfersShow>(),
    Entry::call::<TransfersRequest>(),
    Entry::call::<TransfersShare>(),
    Entry::call::<Approvals>(),
    Entry::call::<ApprovalsApprove>(),
    Entry::call::<ApprovalsDeny>(),
    Entry::call::<GatewayEcho>(),
    Entry::call::<GatewayFind>(),
    Entry::call::<GatewayFetch>(),
    Entry::call::<GatewayQueue>(),
    Entry::call::<GatewayRetry>(),
    Entry::call::<GatewayCancel>(),
];

/// The row of `method` and `path`, if any.
#[must_use]
pub fn find(method: Verb, path: &str) -> Option<&'static Entry> {
    TABLE.iter().find(|e| e.method == method && e.path == path)
}

/// Who may call the routes through the web API (see [`WebAccess`] and the
/// permission table [`crate::access::TABLE`]).
const SOCKET: WebAccess = WebAccess::Socket;
const SEE_STATUS: WebAccess = WebAccess::AnyOf(&[Operation::SeeStatus]);
const TRUST: WebAccess = WebAccess::AnyOf(&[Operation::ManageTrust]);
/// A researcher sees the studies received de-identified only (filtered by the web layer).
const STUDIES: WebAccess = WebAccess::AnyOf(&[Operation::ViewStudy, Operation::ViewDeidentified]);
const RELINK: WebAccess = WebAccess::AnyOf(&[Operation::RelinkPseudonym]);
const LEDGER: WebAccess = WebAccess::AnyOf(&[Operation::ReadLedger]);
const VERIFY: WebAccess = WebAccess::AnyOf(&[Operation::VerifyLedger]);
const NOTIFICATIONS: WebAccess = WebAccess::AnyOf(&[Operation::ReadNotifications]);
const CONSENTS: WebAccess = WebAccess::AnyOf(&[Operation::ManageConsents]);
const TRANSFERS: WebAccess = WebAccess::AnyOf(&[Operation::RequestStudy, Operation::DecideApproval]);
const REQUEST: WebAccess = WebAccess::AnyOf(&[Operation::RequestStudy]);
const DECIDE: WebAccess = WebAccess::AnyOf(&[Operation::DecideApproval]);
const GATEWAY: WebAccess = WebAccess::AnyOf(&[Operation::ManageGateway]);
/// Querying and fetching from the PACS shows patients: the roles that view studies.
const PACS: WebAccess = WebAccess::AnyOf(&[Operation::ViewStudy]);

/// Declares a route: its type, method, path, request and answer, and who
/// may call it through the web API.
macro_rules! route {
    ($(#[$doc:meta])* $name:ident: $verb:ident $path:literal, $req:ty => $answer:ty, web $web:ident $(, { $($extra:item)* })?) => {
        $(#[$doc])*
        #[derive(Debug, Clone, Copy)]
        pub struct $name;

        impl Route for $name {
            const METHOD: Verb = Verb::$verb;
            const PATH: &'static str = $path;
            type Request = $req;
            type Answer = $answer;
            const WEB: WebAccess = $web;
            $($($extra)*)?
        }
    };
}

route!(
    /// The node's identity, network and socket (only while it runs).
    GetStatus: Get "/v1/status", () => Status, web SEE_STATUS
);

impl Call for GetStatus {
    async fn serve(ctx: Ctx, (): ()) -> Result<Status, ServeError> {
        let (Some(net), Some(socket)) = (ctx.net(), ctx.socket()) else {
            return Err(ServeError::StatusOffline);
        };
        let net = net.status().await?;
        Ok(Status {
            node: Node::id_info(ctx.node().record()),
            net,
            socket: socket.to_path_buf(),
            ledger_problem: ctx.node().audit().own_feed_problem(),
            gateway: ctx.gateway().cloned(),
            web: ctx.web(),
            metrics: ctx.node().metrics_listen(),
        })
    }
}

route!(
    /// The trusted peers and their connections (from the trust records
    /// alone when the node does not run).
    Peers: Get "/v1/peers", () => PeersReport, web SEE_STATUS
);

impl Call for Peers {
    async fn serve(ctx: Ctx, (): ()) -> Result<PeersReport, ServeError> {
        match ctx.net() {
            Some(net) => Ok(net.peers().await?),
            None => ctx.blocking(crate::net::offline_peers).await,
        }
    }
}

route!(
    /// Consortia, bilateral trust, revocations and blocks.
    TrustList: Get "/v1/trust", () => TrustListing, web TRUST
);

impl Call for TrustList {
    async fn serve(ctx: Ctx, (): ()) -> Result<TrustListing, ServeError> {
        ctx.blocking(|n| Ok(n.trust().listing()?)).await
    }
}

route!(
    /// Joins a consortium.
    TrustJoin: Post "/v1/trust/join", JoinRequest => ConsortiumEntry, web TRUST
);

impl Call for TrustJoin {
    async fn serve(ctx: Ctx, r: JoinRequest) -> Result<ConsortiumEntry, ServeError> {
        let (d, c) = (
            unhex("descriptor", &r.descriptor)?,
            unhex("certificate", &r.certificate)?,
        );
        ctx.trust_change(move |n| Ok(n.trust().join(&d, &c)?)).await
    }
}

route!(
    /// Trusts a peer bilaterally.
    TrustAddPeer: Post "/v1/trust/add-peer", AddPeerRequest => BilateralEntry, web TRUST
);

impl Call for TrustAddPeer {
    async fn serve(ctx: Ctx, r: AddPeerRequest) -> Result<BilateralEntry, ServeError> {
        let rec = unhex("record", &r.record)?;
        ctx.trust_change(move |n| Ok(n.trust().add_peer(&rec, r.purposes, r.valid_days)?))
            .await
    }
}

route!(
    /// Applies a revocation.
    TrustApply: Post "/v1/trust/apply", ApplyRequest => RevocationEntry, web TRUST
);

impl Call for TrustApply {
    async fn serve(ctx: Ctx, r: ApplyRequest) -> Result<RevocationEntry, ServeError> {
        let rev = unhex("revocation", &r.revocation)?;
        ctx.trust_change(move |n| Ok(n.trust().apply_revocation(&rev)?)).await
    }
}

route!(
    /// Blocks a peer.
    TrustBlock: Post "/v1/trust/block", BlockRequest => BlockedEntry, web TRUST
);

impl Call for TrustBlock {
    async fn serve(ctx: Ctx, r: BlockRequest) -> Result<BlockedEntry, ServeError> {
        ctx.trust_change(move |n| Ok(n.trust().block(&r.peer_id, &r.reason)?))
            .await
    }
}

route!(
    /// Unblocks a peer.
    TrustUnblock: Post "/v1/trust/unblock", BlockRequest => Unblocked, web TRUST
);

impl Call for TrustUnblock {
    async fn serve(ctx: Ctx, r: BlockRequest) -> Result<Unblocked, ServeError> {
        ctx.trust_change(move |n| {
            Ok(n.trust().unblock(&r.peer_id).map(|was_blocked| Unblocked {
                peer_id: r.peer_id,
                was_blocked,
            })?)
        })
        .await
    }
}

route!(
    /// The studies held, or those of one patient.
    StudiesList: Post "/v1/studies/list", ListRequest => Vec<StudySummary>, web STUDIES, {
        /// Without `view-study`, only the studies received de-identified.
        fn shape(list: Vec<StudySummary>, person: &Person) -> Result<Vec<StudySummary>, ServeError> {
            if person.may(Operation::ViewStudy) {
                return Ok(list);
            }
            Ok(list.into_iter().filter(|s| deidentified(s.received.as_ref())).collect())
        }
    }
);

/// Whether a study was received de-identified (pseudonymised or anonymised).
fn deidentified(received: Option<&crate::studies::ReceivedInfo>) -> bool {
    received.is_some_and(|r| r.level != consent_schema::DeidLevel::Identifiable)
}

impl Call for StudiesList {
    async fn serve(ctx: Ctx, r: ListRequest) -> Result<Vec<StudySummary>, ServeError> {
        ctx.blocking(move |n| {
            Ok(n.studies()
                .list(r.patient.as_ref().map(|(p, i)| (p.as_str(), i.as_str())))?)
        })
        .await
    }
}

route!(
    /// One study.
    StudiesShow: Post "/v1/studies/show", ShowRequest => StudyDetail, web STUDIES, {
        /// Without `view-study`, only a study received de-identified.
        fn shape(detail: StudyDetail, person: &Person) -> Result<StudyDetail, ServeError> {
            if person.may(Operation::ViewStudy) || deidentified(detail.received.as_ref()) {
                return Ok(detail);
            }
            Err(ServeError::Forbidden("your roles may view studies received de-identified only".into()))
        }
    }
);

impl Call for StudiesShow {
    async fn serve(ctx: Ctx, r: ShowRequest) -> Result<StudyDetail, ServeError> {
        ctx.blocking(move |n| Ok(n.studies().show(&r.study_uid)?)).await
    }
}

route!(
    /// Purges a study.
    StudiesPurge: Post "/v1/studies/purge", PurgeRequest => PurgeReport, web SOCKET
);

impl Call for StudiesPurge {
    async fn serve(ctx: Ctx, r: PurgeRequest) -> Result<PurgeReport, ServeError> {
        ctx.blocking(move |n| Ok(n.retention().purge_study(&r.study, r.reason)?))
            .await
    }
}

route!(
    /// Imports files and folders.
    StudiesImport: Post "/v1/studies/import", ImportRequest => ImportSummary, web SOCKET, {
        fn paths(r: &mut ImportRequest) -> Vec<&mut PathBuf> {
            r.paths.iter_mut().collect()
        }
    }
);

impl Stream for StudiesImport {
    type Progress = ImportProgress;
    const SUMMARY: &'static str = "import-summary";
    const WORK: &'static str = "the import";

    fn serve(
        node: &Node,
        r: ImportRequest,
        progress: &mut dyn FnMut(ImportProgress),
    ) -> Result<ImportSummary, HomeError> {
        Ok(node.studies().import(&r.paths, |event| {
            progress(match event {
                ImportEvent::Started { files, bytes } => ImportProgress::Started { files, bytes },
                ImportEvent::File(outcome) => ImportProgress::File(outcome.clone()),
            });
        })?)
    }
}

route!(
    /// Exports a study to a folder.
    StudiesExport: Post "/v1/studies/export", ExportRequest => ExportSummary, web SOCKET, {
        fn paths(r: &mut ExportRequest) -> Vec<&mut PathBuf> {
            vec![&mut r.out]
        }

        fn check(r: &mut ExportRequest) -> Result<(), ServeError> {
            if r.out.is_absolute() {
                Ok(())
            } else {
                Err(ServeError::RelativeOut(r.out.clone()))
            }
        }
    }
);

impl Stream for StudiesExport {
    type Progress = ExportProgress;
    const SUMMARY: &'static str = "export-summary";
    const WORK: &'static str = "the export";

    fn serve(
        node: &Node,
        r: ExportRequest,
        progress: &mut dyn FnMut(ExportProgress),
    ) -> Result<ExportSummary, HomeError> {
        Ok(node.studies().export(&r.study_uid, &r.out, r.force, |o| {
            progress(ExportProgress::Object(o.clone()))
        })?)
    }
}

route!(
    /// De-identifies files and folders into a folder.
    StudiesDeid: Post "/v1/studies/deid", DeidRequest => DeidSummary, web SOCKET, {
        fn paths(r: &mut DeidRequest) -> Vec<&mut PathBuf> {
            r.paths.iter_mut().chain([&mut r.out]).collect()
        }
    }
);

impl Stream for StudiesDeid {
    type Progress = DeidProgress;
    const SUMMARY: &'static str = "deid-summary";
    const WORK: &'static str = "de-identification";

    fn serve(node: &Node, r: DeidRequest, progress: &mut dyn FnMut(DeidProgress)) -> Result<DeidSummary, HomeError> {
        Ok(node.deid().run(&r.paths, &r.out, r.level, &r.options, |event| {
            progress(match event {
                DeidEvent::Started { files, bytes } => DeidProgress::Started { files, bytes },
                DeidEvent::File(outcome) => DeidProgress::File(outcome.clone()),
            });
        })?)
    }
}

route!(
    /// Resolves a pseudonym.
    StudiesRelink: Post "/v1/studies/relink", RelinkRequest => RelinkView, web RELINK
);

impl Call for StudiesRelink {
    async fn serve(ctx: Ctx, r: RelinkRequest) -> Result<RelinkView, ServeError> {
        ctx.blocking(move |n| Ok(n.deid().relink(&r.pseudonym)?)).await
    }
}

route!(
    /// The last ledger entries.
    LogTail: Post "/v1/log/tail", LogTailRequest => Vec<EntryView>, web LEDGER
);

impl Call for LogTail {
    async fn serve(ctx: Ctx, r: LogTailRequest) -> Result<Vec<EntryView>, ServeError> {
        ctx.blocking(move |n| Ok(n.audit().log_tail(r.limit)?)).await
    }
}

route!(
    /// One ledger entry.
    LogShow: Post "/v1/log/show", IdRequest => EntryView, web LEDGER
);

impl Call for LogShow {
    async fn serve(ctx: Ctx, r: IdRequest) -> Result<EntryView, ServeError> {
        ctx.blocking(move |n| Ok(n.audit().log_show(&r.id)?)).await
    }
}

route!(
    /// Verifies every feed held.
    LogVerify: Get "/v1/log/verify", () => VerifyReport, web VERIFY
);

impl Call for LogVerify {
    async fn serve(ctx: Ctx, (): ()) -> Result<VerifyReport, ServeError> {
        ctx.blocking(|n| Ok(n.audit().log_verify()?)).await
    }
}

route!(
    /// Each feed's head.
    LogHeads: Get "/v1/log/heads", () => Vec<HeadView>, web LEDGER, {
        const LOGGED: bool = false;
    }
);

impl Call for LogHeads {
    async fn serve(ctx: Ctx, (): ()) -> Result<Vec<HeadView>, ServeError> {
        ctx.blocking(|n| Ok(HeadView::list(&n.audit().ledger_heads()?))).await
    }
}

route!(
    /// Notifications (marked read).
    Notifications: Post "/v1/notifications", NotificationsRequest => Vec<NotificationView>, web NOTIFICATIONS
);

impl Call for Notifications {
    async fn serve(ctx: Ctx, r: NotificationsRequest) -> Result<Vec<NotificationView>, ServeError> {
        ctx.blocking(move |n| {
            let mut list = n.audit().notifications(r.unread)?;
            // The role behind an access to a transfer of this node: the one its request carried.
            for v in list.iter_mut().filter(|v| v.role.is_none()) {
                let id = v
                    .transfer
                    .as_deref()
                    .and_then(|t| t.parse::<crate::ids::TransferId>().ok());
                if let Some(rec) = id.and_then(|id| n.transfers().transfer(&id).ok()) {
                    v.role = Some(rec.role.as_str().to_owned());
                }
            }
            Ok(list)
        })
        .await
    }
}

route!(
    /// Delivery state of the notification sinks.
    NotificationsStatus: Get "/v1/notifications/status", () => Vec<SinkStatus>, web NOTIFICATIONS, {
        const LOGGED: bool = false;
    }
);

impl Call for NotificationsStatus {
    async fn serve(ctx: Ctx, (): ()) -> Result<Vec<SinkStatus>, ServeError> {
        ctx.blocking(|n| Ok(n.notify().status()?)).await
    }
}

route!(
    /// Checks the store.
    StoreCheck: Post "/v1/store/check", CheckRequest => CheckReport, web SOCKET
);

impl Call for StoreCheck {
    async fn serve(ctx: Ctx, r: CheckRequest) -> Result<CheckReport, ServeError> {
        ctx.blocking(move |n| Ok(n.store().check(r.deep)?)).await
    }
}

route!(
    /// Consents, of one patient or all.
    ConsentsList: Post "/v1/consents/list", ConsentListRequest => Vec<ConsentEntry>, web CONSENTS
);

impl Call for ConsentsList {
    async fn serve(ctx: Ctx, r: ConsentListRequest) -> Result<Vec<ConsentEntry>, ServeError> {
        ctx.blocking(move |n| {
            Ok(n.consents()
                .list(r.patient.as_ref().map(|(p, i)| (p.as_str(), i.as_str())))?)
        })
        .await
    }
}

route!(
    /// Records a consent.
    ConsentsAdd: Post "/v1/consents/add", NewConsent => ConsentEntry, web CONSENTS
);

impl Call for ConsentsAdd {
    async fn serve(ctx: Ctx, r: NewConsent) -> Result<ConsentEntry, ServeError> {
        ctx.blocking(move |n| Ok(n.consents().add(r)?)).await
    }
}

route!(
    /// Imports FHIR Consent resources.
    ConsentsImportFhir: Post "/v1/consents/import-fhir", FhirImport => Vec<ImportedConsent>, web CONSENTS, {
        fn paths(r: &mut FhirImport) -> Vec<&mut PathBuf> {
            r.files.iter_mut().collect()
        }
        /// Through the web, resources come inline: no file of the node's host.
        fn admit(r: &mut FhirImport, _person: &Person) -> Result<(), ServeError> {
            if r.files.is_empty() {
                Ok(())
            } else {
                Err(ServeError::Forbidden("files of the node's host cannot be named through the web: send the resources inline (resources)".into()))
            }
        }
    }
);

impl Call for ConsentsImportFhir {
    async fn serve(ctx: Ctx, r: FhirImport) -> Result<Vec<ImportedConsent>, ServeError> {
        ctx.blocking(move |n| Ok(n.consents().import_fhir(&r)?)).await
    }
}

route!(
    /// Withdraws a consent.
    ConsentsWithdraw: Post "/v1/consents/withdraw", WithdrawRequest => ConsentEntry, web CONSENTS
);

impl Call for ConsentsWithdraw {
    async fn serve(ctx: Ctx, r: WithdrawRequest) -> Result<ConsentEntry, ServeError> {
        ctx.blocking(move |n| Ok(n.consents().withdraw(&r.id)?)).await
    }
}

route!(
    /// What a request for a study would be answered.
    ConsentsCheck: Post "/v1/consents/check", CheckQuery => ConsentCheck, web CONSENTS
);

impl Call for ConsentsCheck {
    async fn serve(ctx: Ctx, r: CheckQuery) -> Result<ConsentCheck, ServeError> {
        ctx.blocking(move |n| Ok(n.consents().check(&r)?)).await
    }
}

route!(
    /// Every transfer, newest first.
    Transfers: Get "/v1/transfers", () => Vec<TransferView>, web TRANSFERS, {
        const LOGGED: bool = false;
    }
);

impl Call for Transfers {
    async fn serve(ctx: Ctx, (): ()) -> Result<Vec<TransferView>, ServeError> {
        ctx.blocking(|n| Ok(n.transfers().list()?)).await
    }
}

route!(
    /// One transfer.
    TransfersShow: Post "/v1/transfers/show", IdRequest => TransferView, web TRANSFERS, {
        fn target(_node: &Node, answer: &TransferView) -> Option<String> {
            Some(answer.id.to_string())
        }
    }
);

impl Call for TransfersShow {
    async fn serve(ctx: Ctx, r: IdRequest) -> Result<TransferView, ServeError> {
        ctx.blocking(move |n| Ok(n.transfers().transfer_show(&r.id)?)).await
    }
}

route!(
    /// Asks the holder for a study (needs the running node).
    TransfersRequest: Post "/v1/transfers/request", TransferAsk => TransferView, web REQUEST, {
        /// The request carries the role of the person's that may request
        /// for its purpose, whatever role was sent.
        fn admit(r: &mut TransferAsk, person: &Person) -> Result<(), ServeError> {
            let role = person
                .roles
                .iter()
                .filter(|role| crate::access::may_request(**role, r.purpose))
                .find_map(|role| role.wire_role())
                .ok_or_else(|| ServeError::Forbidden(format!(
                    "your roles may not request studies for {}",
                    r.purpose.as_str()
                )))?;
            r.role = Some(role);
            Ok(())
        }
        fn target(_node: &Node, answer: &TransferView) -> Option<String> {
            Some(answer.id.to_string())
        }
    }
);

impl Call for TransfersRequest {
    async fn serve(ctx: Ctx, r: TransferAsk) -> Result<TransferView, ServeError> {
        request_transfer(ctx, r).await
    }
}

/// Sends a transfer request to the holder and records its answer.
async fn request_transfer(ctx: Ctx, r: TransferAsk) -> Result<TransferView, ServeError> {
    let Some(net) = ctx.net().cloned() else {
        return Err(ServeError::RequestOffline);
    };
    let peer: libp2p::PeerId = r.peer_id.parse().map_err(|source| ServeError::PeerId {
        peer: r.peer_id.clone(),
        source,
    })?;
    crate::dicom::check_uid(&r.study_uid).map_err(|reason| ServeError::StudyUid {
        uid: r.study_uid.clone(),
        reason,
    })?;
    let role = r.role.ok_or(ServeError::NoRole)?;
    let uid = r.study_uid.clone();
    let held = ctx
        .blocking(move |n| {
            let study = n.store().study_ref(&uid);
            Ok(n.store()
                .study_row(&study)?
                .is_some_and(|row| matches!(row.origin, crate::store::Origin::Local)))
        })
        .await?;
    if held {
        return Err(ServeError::HeldHere { study: r.study_uid });
    }
    let request_id = crate::transfer::RequestId::random()
        .map_err(ServeError::Random)?
        .to_string();
    let msg = crate::transfer::wire::Msg {
        v: crate::transfer::wire::WIRE_VERSION,
        body: crate::transfer::wire::MsgBody::Request {
            request_id: request_id.clone(),
            study_uid: r.study_uid.clone(),
            purpose: r.purpose,
            role,
            level: r.level,
        },
    };
    // Until the answer is recorded, a stream the holder opens for it is refused for now, not for good.
    let _asking = ctx.node().live().asking(&request_id);
    let answer = crate::limits::send_honouring_retry_after(
        || net.transfer_message(peer, msg.clone()),
        crate::transfer::admission::retry_later,
    )
    .await?
    .map_err(|(secs, text)| ServeError::RetryAfter { secs, text })?;
    let view = ctx
        .blocking(move |n| {
            Ok(n.transfers()
                .note_answer(peer, &request_id, &r.study_uid, r.purpose, role, r.level, &answer.body)?)
        })
        .await?;
    ctx.wake_transfers();
    Ok(view)
}

route!(
    /// Shares a study with a peer.
    TransfersShare: Post "/v1/transfers/share", TransferAsk => TransferView, web DECIDE, {
        /// Shared in the person's own role (a data steward's).
        fn admit(r: &mut TransferAsk, person: &Person) -> Result<(), ServeError> {
            r.role = person.roles.iter().find_map(|role| role.wire_role());
            r.role.map(|_| ()).ok_or(ServeError::NoRole)
        }
        fn target(_node: &Node, answer: &TransferView) -> Option<String> {
            Some(answer.id.to_string())
        }
    }
);

impl Call for TransfersShare {
    async fn serve(ctx: Ctx, r: TransferAsk) -> Result<TransferView, ServeError> {
        let peer: libp2p::PeerId = r.peer_id.parse().map_err(|source| ServeError::PeerId {
            peer: r.peer_id.clone(),
            source,
        })?;
        let role = r.role.ok_or(ServeError::NoRole)?;
        let view = ctx
            .blocking(move |n| Ok(n.transfers().share(peer, &r.study_uid, r.purpose, role, r.level)?))
            .await?;
        ctx.wake_transfers();
        Ok(view)
    }
}

route!(
    /// Outgoing transfers waiting for an approval.
    Approvals: Get "/v1/approvals", () => Vec<TransferView>, web DECIDE, {
        const LOGGED: bool = false;
    }
);

impl Call for Approvals {
    async fn serve(ctx: Ctx, (): ()) -> Result<Vec<TransferView>, ServeError> {
        ctx.blocking(|n| Ok(n.transfers().approvals()?)).await
    }
}

route!(
    /// Approves a pending request.
    ApprovalsApprove: Post "/v1/approvals/approve", IdRequest => TransferView, web DECIDE, {
        fn target(_node: &Node, answer: &TransferView) -> Option<String> {
            Some(answer.id.to_string())
        }
    }
);

impl Call for ApprovalsApprove {
    async fn serve(ctx: Ctx, r: IdRequest) -> Result<TransferView, ServeError> {
        let (view, msg) = ctx.blocking(move |n| Ok(n.transfers().approve(&r.id)?)).await?;
        ctx.wake_transfers();
        ctx.tell_requester(&view, msg);
        Ok(view)
    }
}

route!(
    /// Denies a pending request.
    ApprovalsDeny: Post "/v1/approvals/deny", DenyRequest => TransferView, web DECIDE, {
        fn target(_node: &Node, answer: &TransferView) -> Option<String> {
            Some(answer.id.to_string())
        }
    }
);

impl Call for ApprovalsDeny {
    async fn serve(ctx: Ctx, r: DenyRequest) -> Result<TransferView, ServeError> {
        let (view, msg) = ctx
            .blocking(move |n| Ok(n.transfers().deny_approval(&r.id, &r.reason)?))
            .await?;
        ctx.tell_requester(&view, msg);
        Ok(view)
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use super::*;

    fn documented() -> BTreeSet<(String, String)> {
        let doc = include_str!("../../../docs/PROTOCOL.md");
        doc.lines()
            .skip_while(|l| !(l.starts_with("## ") && l.contains("Admin API")))
            .skip(1)
            .take_while(|l| !l.starts_with("## "))
            .filter_map(|l| {
                let cell = l.strip_prefix("| `")?;
                let (route, _) = cell.split_once('`')?;
                let (method, path) = route.split_once(' ')?;
                Some((method.to_string(), path.to_string()))
            })
            .collect()
    }

    #[test]
    fn every_route_is_documented_and_every_documented_route_is_in_the_table() {
        let table: BTreeSet<(String, String)> = TABLE
            .iter()
            .map(|e| (e.method.as_str().to_string(), e.path.to_string()))
            .collect();
        assert_eq!(table.len(), TABLE.len(), "no route twice in the table");
        let doc = documented();
        let undocumented: Vec<_> = table.difference(&doc).collect();
        let missing: Vec<_> = doc.difference(&table).collect();
        assert!(
            undocumented.is_empty(),
            "routes not in docs/PROTOCOL.md: {undocumented:?}"
        );
        assert!(
            missing.is_empty(),
            "routes in docs/PROTOCOL.md but not in the table: {missing:?}"
        );
    }

    /// Progress records are on the wire as the server wrote them before
    /// the table: `{"type": kind, "data": value}`.
    #[test]
    fn progress_records_keep_their_wire_form() {
        let started = ImportProgress::Started { files: 3, bytes: 70 };
        let old = serde_json::json!({ "type": "started", "data": serde_json::json!({ "files": 3, "bytes": 70 }) });
        assert_eq!(
            serde_json::to_vec(&serde_json::to_value(&started).unwrap()).unwrap(),
            serde_json::to_vec(&old).unwrap()
        );
        let outcome = crate::dicom::export::ExportOutcome::Exists {
            path: "/tmp/x.dcm".into(),
        };
        let old = serde_json::json!({ "type": "object", "data": &outcome });
        let new = serde_json::to_value(ExportProgress::Object(outcome)).unwrap();
        assert_eq!(serde_json::to_vec(&new).unwrap(), serde_json::to_vec(&old).unwrap());
        let back: ExportProgress = serde_json::from_value(old).unwrap();
        assert!(matches!(
            back,
            ExportProgress::Object(crate::dicom::export::ExportOutcome::Exists { .. })
        ));
        let deid = DeidProgress::Started { files: 1, bytes: 2 };
        assert_eq!(
            serde_json::to_value(&deid).unwrap(),
            serde_json::json!({ "type": "started", "data": { "files": 1, "bytes": 2 } })
        );
    }

    /// Who may call which route through the web: one row per route checked,
    /// every role tried (what the permission table grants, through each
    /// route's `WEB`).
    #[test]
    fn who_may_call_which_route_through_the_web() {
        use crate::access::SiteRole::{self, *};
        let table: &[(&str, &[SiteRole])] = &[
            ("/v1/status", &SiteRole::ALL),
            ("/v1/approvals", &[DataSteward]),
            ("/v1/approvals/approve", &[DataSteward]),
            ("/v1/approvals/deny", &[DataSteward]),
            (
                "/v1/transfers/request",
                &[DataSteward, Clinician, Radiologist, Researcher],
            ),
            ("/v1/transfers", &[DataSteward, Clinician, Radiologist, Researcher]),
            ("/v1/studies/list", &[Clinician, Radiologist, Researcher]),
            ("/v1/studies/relink", &[PrivacyOfficer]),
            ("/v1/log/tail", &[DataSteward, PrivacyOfficer, Auditor]),
            ("/v1/log/verify", &[SiteAdmin, PrivacyOfficer, Auditor]),
            ("/v1/notifications", &[PrivacyOfficer, Auditor]),
            ("/v1/consents/add", &[DataSteward]),
            ("/v1/consents/import-fhir", &[DataSteward]),
            ("/v1/trust/block", &[SiteAdmin]),
            ("/v1/gateway/retry", &[SiteAdmin]),
            ("/v1/gateway/find", &[Clinician, Radiologist]),
            ("/v1/studies/import", &[]),
            ("/v1/studies/export", &[]),
            ("/v1/studies/purge", &[]),
            ("/v1/store/check", &[]),
        ];
        for (path, allowed) in table {
            let entry = TABLE.iter().find(|e| e.path == *path).expect(path);
            for role in SiteRole::ALL {
                let person = Person {
                    user: String::new(),
                    roles: vec![role],
                    via: "api",
                };
                assert_eq!(person.may_call(entry.web), allowed.contains(&role), "{role} on {path}");
            }
        }
        // Every route that names host files is socket-only.
        for e in TABLE {
            if ["/v1/studies/import", "/v1/studies/export", "/v1/studies/deid"].contains(&e.path) {
                assert_eq!(e.web, WebAccess::Socket, "{}", e.path);
            }
        }
    }

    /// A study request through the web carries the person's own role for its
    /// purpose, whatever they sent; a purpose their roles may not request for
    /// is refused.
    #[test]
    fn a_web_request_carries_the_persons_role() {
        use crate::access::SiteRole;
        use consent_schema::{Purpose, Role};
        let ask = |purpose, role| TransferAsk {
            peer_id: String::new(),
            study_uid: String::new(),
            purpose,
            role,
            level: None,
        };
        let person = |roles: Vec<SiteRole>| Person {
            user: String::new(),
            roles,
            via: "console",
        };
        type Row = (Vec<SiteRole>, Purpose, Option<Role>, Result<Role, ()>);
        let rows: &[Row] = &[
            (
                vec![SiteRole::Clinician],
                Purpose::Treatment,
                Some(Role::Researcher),
                Ok(Role::Clinician),
            ),
            (vec![SiteRole::Clinician], Purpose::Treatment, None, Ok(Role::Clinician)),
            (
                vec![SiteRole::Clinician],
                Purpose::Research,
                Some(Role::Clinician),
                Err(()),
            ),
            (
                vec![SiteRole::Researcher],
                Purpose::Research,
                Some(Role::Clinician),
                Ok(Role::Researcher),
            ),
            (vec![SiteRole::Researcher], Purpose::Treatment, None, Err(())),
            (
                vec![SiteRole::Radiologist],
                Purpose::Teaching,
                None,
                Ok(Role::Radiologist),
            ),
            (
                vec![SiteRole::Auditor],
                Purpose::Treatment,
                Some(Role::Clinician),
                Err(()),
            ),
            (
                vec![SiteRole::Clinician, SiteRole::Researcher],
                Purpose::Research,
                None,
                Ok(Role::Researcher),
            ),
        ];
        for (roles, purpose, sent, want) in rows {
            let mut r = ask(*purpose, *sent);
            let got = TransfersRequest::admit(&mut r, &person(roles.clone())).map(|()| r.role.unwrap());
            match (got, want) {
                (Ok(g), Ok(w)) => assert_eq!(g, *w, "{roles:?} {purpose:?}"),
                (Err(ServeError::Forbidden(_)), Err(())) => {}
                (g, w) => panic!("{roles:?} {purpose:?}: got {g:?}, want {w:?}"),
            }
        }
    }

    #[test]
    fn every_path_has_the_version_prefix() {
        for e in TABLE {
            assert!(e.path.starts_with(super::super::PREFIX), "{}", e.path);
            assert!(find(e.method, e.path).is_some());
        }
    }
}

/// A remote DICOM AE of the configuration, ready to call.
struct DicomPeer {
    name: String,
    dest: crate::gateway::scu::Destination,
    tls: bool,
    address: String,
}

/// The remote AE `to` names (a `[[gateway.destination]]`), or the PACS.
fn dicom_peer(node: &Node, to: Option<&str>) -> Result<DicomPeer, ServeError> {
    use super::route::NoDicomPeer;
    let gateway = &node.config().gateway;
    let peer = match to {
        None => gateway
            .pacs
            .as_ref()
            .ok_or(ServeError::NoDicomPeer(NoDicomPeer::Pacs))?,
        Some(name) => gateway
            .destination
            .iter()
            .find(|d| d.name == name)
            .ok_or_else(|| ServeError::NoDicomPeer(NoDicomPeer::Destination { name: name.to_string() }))?,
    };
    let dest = crate::gateway::scu::Destination::from_config(peer).map_err(|source| ServeError::Dicom {
        op: "TLS setup",
        ae: peer.name.clone(),
        source: Box::new(source),
    })?;
    Ok(DicomPeer {
        name: peer.name.clone(),
        dest,
        tls: peer.tls,
        address: format!("{}:{}", peer.host, peer.port),
    })
}

route!(
    /// C-ECHO to the site's PACS or a forwarding destination.
    GatewayEcho: Post "/v1/gateway/echo", EchoRequest => EchoReport, web GATEWAY
);

impl Call for GatewayEcho {
    async fn serve(ctx: Ctx, r: EchoRequest) -> Result<EchoReport, ServeError> {
        let DicomPeer {
            name,
            dest,
            tls,
            address,
        } = dicom_peer(ctx.node(), r.to.as_deref())?;
        let calling = ctx.node().config().gateway.ae_title.clone();
        let start = std::time::Instant::now();
        crate::gateway::scu::echo(&calling, &dest)
            .await
            .map_err(|source| ServeError::Dicom {
                op: "C-ECHO",
                ae: name.clone(),
                source: Box::new(source),
            })?;
        Ok(EchoReport {
            name,
            ae_title: dest.ae_title.clone(),
            address,
            tls,
            millis: u64::try_from(start.elapsed().as_millis()).unwrap_or(u64::MAX),
        })
    }
}

route!(
    /// C-FIND at study level on the site's PACS: the matches, stored nowhere.
    GatewayFind: Post "/v1/gateway/find", crate::gateway::scu::StudyQuery => Vec<crate::gateway::scu::StudyMatch>, web PACS
);

impl Call for GatewayFind {
    async fn serve(
        ctx: Ctx,
        query: crate::gateway::scu::StudyQuery,
    ) -> Result<Vec<crate::gateway::scu::StudyMatch>, ServeError> {
        query.check()?;
        if let Some(uid) = &query.study_uid {
            crate::dicom::check_uid(uid).map_err(|reason| ServeError::StudyUid {
                uid: uid.clone(),
                reason,
            })?;
        }
        let DicomPeer { name, dest, .. } = dicom_peer(ctx.node(), None)?;
        let calling = ctx.node().config().gateway.ae_title.clone();
        crate::gateway::scu::find_studies(&calling, &dest, &query)
            .await
            .map_err(|source| ServeError::Dicom {
                op: "C-FIND",
                ae: name,
                source: Box::new(source),
            })
    }
}

route!(
    /// C-MOVE of a study from the site's PACS to this node's SCP, which
    /// imports every object as it arrives (the node must run with
    /// `[gateway] enabled`).
    GatewayFetch: Post "/v1/gateway/fetch", FetchRequest => FetchReport, web PACS
);

impl Call for GatewayFetch {
    async fn serve(ctx: Ctx, r: FetchRequest) -> Result<FetchReport, ServeError> {
        crate::dicom::check_uid(&r.study_uid).map_err(|reason| ServeError::StudyUid {
            uid: r.study_uid.clone(),
            reason,
        })?;
        let Some(scp) = ctx.gateway() else {
            return Err(ServeError::FetchOffline);
        };
        let DicomPeer { name, dest, .. } = dicom_peer(ctx.node(), None)?;
        let outcome = crate::gateway::scu::move_study(&scp.ae_title, &dest, &r.study_uid, &scp.ae_title)
            .await
            .map_err(|source| ServeError::Dicom {
                op: "C-MOVE",
                ae: name,
                source: Box::new(source),
            })?;
        let uid = r.study_uid.clone();
        let instances_held = ctx
            .blocking(move |n| match n.studies().show(&uid) {
                Ok(d) => Ok(d.instances),
                Err(crate::studies::StudiesError::Store(crate::store::StoreError::UnknownStudy { .. })) => Ok(0),
                Err(e) => Err(e.into()),
            })
            .await?;
        Ok(FetchReport {
            study_uid: r.study_uid,
            status: outcome.status.code(),
            status_text: outcome.status.to_string(),
            completed: outcome.completed,
            failed: outcome.failed,
            warning: outcome.warning,
            instances_held,
        })
    }
}

route!(
    /// The gateway's forwarding queue, newest first.
    GatewayQueue: Get "/v1/gateway/queue", () => Vec<ForwardItem>, web GATEWAY
);

impl Call for GatewayQueue {
    async fn serve(ctx: Ctx, (): ()) -> Result<Vec<ForwardItem>, ServeError> {
        ctx.blocking(|n| Ok(n.forwarding().queue()?)).await
    }
}

route!(
    /// Sends a forwarding item again now.
    GatewayRetry: Post "/v1/gateway/retry", ItemRequest => ForwardItem, web GATEWAY
);

impl Call for GatewayRetry {
    async fn serve(ctx: Ctx, r: ItemRequest) -> Result<ForwardItem, ServeError> {
        ctx.blocking(move |n| Ok(n.forwarding().retry(r.id)?)).await
    }
}

route!(
    /// Cancels a forwarding item.
    GatewayCancel: Post "/v1/gateway/cancel", ItemRequest => ForwardItem, web GATEWAY
);

impl Call for GatewayCancel {
    async fn serve(ctx: Ctx, r: ItemRequest) -> Result<ForwardItem, ServeError> {
        ctx.blocking(move |n| Ok(n.forwarding().cancel(r.id)?)).await
    }
}
