//! The node's side of the DICOM gateway: the [`Sink`] through which the
//! SCP imports what it receives (as `study import` imports a file), and
//! starting the SCP inside `medmesh run`.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::api::GatewayStatus;
use crate::audit::AuditError;
use crate::dicom::ingest::{self, ImportOptions};
use crate::gateway::forward::Source;
use crate::gateway::scp::{Scp, ScpError};
use crate::gateway::{ObjectBytes, PreSealed, Received, Sink, StoreRefusal, Stored};
use crate::home::Node;
use crate::ledger::Event;
use crate::store::Origin;
use medmesh_seal::DataKey;

/// The largest object an association holds in memory while it arrives
/// (a CT or MR slice is under 1 MiB, a radiograph tens of MiB): larger
/// ones are staged to a file.
const IN_MEMORY_MAX: u64 = 32 * 1024 * 1024;

/// Imports each received object into the node's store.
pub(super) struct NodeSink {
    node: Arc<Node>,
    staging: PathBuf,
    options: ImportOptions,
}

impl NodeSink {
    pub(super) fn new(node: Arc<Node>) -> Self {
        // One object at a time per association: no import worker threads.
        let options = ImportOptions {
            threads: 1,
            ..node.import_options()
        };
        Self {
            staging: node.store().receiving_dir(),
            node,
            options,
        }
    }
}

impl NodeSink {
    /// The refusal answered for an object import refused, logged.
    fn refuse(&self, e: &ingest::ObjectError, received: &Received) -> StoreRefusal {
        // The cause names the file's attribute or the store's failure,
        // never patient data.
        tracing::warn!(calling_ae = %received.calling_ae, sop_class = %received.sop_class_uid, error = %e, "DICOM SCP: object not imported");
        StoreRefusal::from_import(e)
    }
}

impl Sink for NodeSink {
    fn staging_dir(&self) -> &Path {
        &self.staging
    }

    fn store(&self, file: &Path, received: &Received) -> Result<Stored, StoreRefusal> {
        match ingest::import_object(self.node.store(), file, &self.options) {
            Ok(done) => Ok(Stored {
                duplicate: done.duplicate,
                study_uid: Some(done.study_uid),
            }),
            Err(e) => Err(self.refuse(&e, received)),
        }
    }

    /// Objects up to the size that import parses whole (and at most
    /// [`IN_MEMORY_MAX`]) stay in memory: hashed as they arrive, parsed and
    /// sealed from there (no staging file written and read back).
    fn memory_limit(&self) -> u64 {
        self.options.full_parse_limit.min(IN_MEMORY_MAX)
    }

    fn store_bytes(&self, object: ObjectBytes, received: &Received) -> Result<Stored, StoreRefusal> {
        let label = Path::new("C-STORE");
        match ingest::import_bytes(self.node.store(), object, label, &self.options) {
            Ok(done) => Ok(Stored {
                duplicate: done.duplicate,
                study_uid: Some(done.study_uid),
            }),
            Err(e) => Err(self.refuse(&e, received)),
        }
    }

    /// Seals under the study's key (a fresh key for a study not stored
    /// yet, which import adopts unless another import of the same new
    /// study came first) into a temporary blob of the store.
    fn begin_sealing(&self, study_uid: &str) -> Option<PreSealed> {
        let store = self.node.store();
        let study = store.study_ref(study_uid);
        let key = match store.study_row(&study) {
            Ok(Some(row)) if matches!(row.origin, Origin::Local) => store.unwrap_study_key(&study, &row).ok()?,
            // A received study: import refuses the object; nothing to seal.
            Ok(Some(_)) | Err(_) => return None,
            Ok(None) => DataKey::try_generate().ok()?,
        };
        match store.stream_to_tmp(&key, self.options.chunk_size) {
            Ok(blob) => Some(PreSealed {
                study_uid: study_uid.to_string(),
                key,
                blob,
            }),
            Err(e) => {
                tracing::warn!(error = %e, "DICOM SCP: cannot seal as the object arrives; sealing it after");
                None
            }
        }
    }

    /// The studies an association added objects to are whole as far as
    /// the sender is concerned: a `study-imported` entry for each, then the
    /// forwarding routes look at them.
    fn released(&self, calling_ae: &str, studies: Vec<(String, u64)>) {
        tracing::info!(calling_ae = %calling_ae, studies = studies.len(), "DICOM SCP: association stored new objects");
        for (uid, objects) in &studies {
            let audit = self.node.audit();
            let logged = audit.study_commitment(uid).and_then(|c| {
                audit
                    .log(Event::StudyImported {
                        study: hex::encode(c),
                        objects: *objects,
                        source: "dicom".into(),
                        calling_ae: Some(calling_ae.to_string()),
                    })
                    .map_err(AuditError::from)
            });
            if let Err(error) = logged {
                tracing::warn!(calling_ae = %calling_ae, error = %error, "DICOM SCP: the study-imported ledger entry could not be written");
            }
        }
        let studies: Vec<String> = studies.into_iter().map(|(uid, _)| uid).collect();
        let source = Source::Scp {
            calling_ae: calling_ae.to_string(),
        };
        match self.node.forwarding().study_uids_arrived(&studies, &source) {
            Ok(queued) if !queued.is_empty() => {
                tracing::info!(calling_ae = %calling_ae, queued = queued.len(), "DICOM SCP: studies queued for forwarding");
            }
            Ok(_) => {}
            Err(e) => {
                tracing::warn!(calling_ae = %calling_ae, error = %e, "DICOM SCP: queueing the studies for forwarding failed")
            }
        }
    }
}

/// Starts the SCP when `[gateway] enabled`.
///
/// # Errors
/// [`ScpError`] when it cannot listen or its TLS files do not load.
pub(super) async fn start(node: &Arc<Node>) -> Result<Option<(Scp, GatewayStatus)>, ScpError> {
    let config = &node.config().gateway;
    if !config.enabled {
        return Ok(None);
    }
    let scp = Scp::bind(config, Arc::new(NodeSink::new(Arc::clone(node)))).await?;
    let status = GatewayStatus {
        ae_title: scp.ae_title().to_string(),
        listen: scp.local_addr(),
        tls: scp.tls(),
    };
    tracing::info!(ae_title = %status.ae_title, listen = %status.listen, tls = status.tls, "DICOM gateway listening");
    Ok(Some((scp, status)))
}

/// How often the requests waiting for the PACS are looked at.
const FETCH_EVERY: std::time::Duration = std::time::Duration::from_secs(2);

/// C-MOVE attempts for a study the PACS could not be asked for (it did
/// not answer) before its requests are decided without it.
const FETCH_ATTEMPTS: u32 = 3;

/// `[policy] fetch_from_pacs`: fetches from the PACS, one study at a time,
/// the studies that peers' requests wait for, then decides those requests
/// again (granted, pending for a person, or not available when the PACS
/// does not have the study either). Runs until `stop`.
pub(super) async fn fetch_for_requests(
    ctx: crate::api::route::Ctx,
    scp_ae: String,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    let mut failures: std::collections::HashMap<String, u32> = std::collections::HashMap::new();
    loop {
        tokio::select! {
            _ = stop.changed() => return,
            () = tokio::time::sleep(FETCH_EVERY) => {}
        }
        let waiting = match ctx.blocking(|n| Ok(n.transfers().awaiting_pacs()?)).await {
            Ok(w) => w,
            Err(e) => {
                tracing::warn!(error = %e, "fetch from the PACS: cannot list the requests that wait for it");
                continue;
            }
        };
        let mut fetched: std::collections::HashMap<String, bool> = std::collections::HashMap::new();
        for (id, study) in waiting {
            if *stop.borrow() {
                return;
            }
            let decide = match fetched.get(&study) {
                Some(decide) => *decide,
                None => {
                    let decide = match fetch(&ctx, &scp_ae, &study).await {
                        Ok(()) => true,
                        Err(e) => {
                            let n = failures.entry(study.clone()).or_default();
                            *n += 1;
                            tracing::warn!(transfer = %id, attempt = *n, error = %e, "fetch from the PACS failed");
                            *n >= FETCH_ATTEMPTS
                        }
                    };
                    fetched.insert(study.clone(), decide);
                    decide
                }
            };
            if !decide {
                continue;
            }
            failures.remove(&study);
            let tid = id.to_string();
            match ctx.blocking(move |n| Ok(n.transfers().decide_fetched(&tid)?)).await {
                Ok((view, msg)) => {
                    tracing::info!(transfer = %id, state = view.state.as_str(), "request decided after the fetch from the PACS");
                    ctx.wake_transfers();
                    ctx.tell_requester(&view, msg);
                }
                Err(e) => {
                    tracing::warn!(transfer = %id, error = %e, "deciding a request after the fetch from the PACS failed")
                }
            }
        }
    }
}

/// One C-MOVE of `study` from the PACS to this node's SCP.
async fn fetch(ctx: &crate::api::route::Ctx, scp_ae: &str, study: &str) -> Result<(), crate::api::route::ServeError> {
    use crate::api::route::{NoDicomPeer, ServeError};
    let pacs = ctx
        .node()
        .config()
        .gateway
        .pacs
        .clone()
        .ok_or(ServeError::NoDicomPeer(NoDicomPeer::Pacs))?;
    let dest = crate::gateway::scu::Destination::from_config(&pacs).map_err(|source| ServeError::Dicom {
        op: "TLS setup",
        ae: pacs.name.clone(),
        source: Box::new(source),
    })?;
    let outcome = crate::gateway::scu::move_study(scp_ae, &dest, study, scp_ae)
        .await
        .map_err(|source| ServeError::Dicom {
            op: "C-MOVE",
            ae: pacs.name.clone(),
            source: Box::new(source),
        })?;
    tracing::info!(
        completed = outcome.completed,
        failed = outcome.failed,
        "fetch from the PACS done"
    );
    Ok(())
}
