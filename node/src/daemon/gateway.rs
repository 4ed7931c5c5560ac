//! The node's side of the DICOM gateway: the [`Sink`] through which the
//! SCP imports what it receives (as `study import` imports a file), and
//! starting the SCP inside `medmesh run`.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::api::GatewayStatus;
use crate::dicom::ingest::{self, ImportOptions};
use crate::gateway::forward::Source;
use crate::gateway::scp::{Scp, ScpError};
use crate::gateway::{ObjectBytes, PreSealed, Received, Sink, StoreRefusal, Stored};
use crate::home::Node;
use crate::ledger::Event;
use crate::store::{Origin, StoreError};
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
        match ingest::import_object(self.node.store(), file, &self.options, Some(&received.calling_ae)) {
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
        match ingest::import_bytes(
            self.node.store(),
            object,
            label,
            &self.options,
            Some(&received.calling_ae),
        ) {
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
    /// the sender is concerned: what it stored is announced from the counts
    /// committed with the objects (see [`announce_arrivals`]).
    fn released(&self, calling_ae: &str, studies: Vec<String>) {
        tracing::info!(calling_ae = %calling_ae, studies = studies.len(), "DICOM SCP: association stored new objects");
        announce_arrivals(&self.node, Some(calling_ae));
    }
}

/// Announces the objects the SCP stored and the node has not announced
/// yet (`store::Arrival`, counted in the commit of each object), of the
/// calling AE `only` or of every AE: a `study-imported` ledger entry per
/// study and AE, then the study queued for the forwarding routes, then the
/// counts taken off. At the end of each association, and at each start for
/// what a stopped or killed node left. A failure is logged and the count
/// kept for the next time. Returns the arrivals announced.
pub(super) fn announce_arrivals(node: &Node, only: Option<&str>) -> usize {
    let store = node.store();
    let arrivals = match store.arrivals() {
        Ok(a) => a,
        Err(e) => {
            tracing::warn!(error = %e, "DICOM SCP: the objects to announce could not be read");
            return 0;
        }
    };
    let mut done = Vec::new();
    for a in arrivals
        .into_iter()
        .filter(|a| only.is_none_or(|ae| ae == a.calling_ae))
    {
        let announced = store.ledger_study(&a.study).and_then(|study| {
            node.audit().log(Event::StudyImported {
                study,
                objects: a.objects,
                source: "dicom".into(),
                calling_ae: Some(a.calling_ae.clone()),
            })?;
            let source = Source::Scp {
                calling_ae: a.calling_ae.clone(),
            };
            match node.forwarding().study_arrived(&[a.study], &source) {
                Ok(queued) if !queued.is_empty() => {
                    tracing::info!(calling_ae = %a.calling_ae, queued = queued.len(), "DICOM SCP: study queued for forwarding");
                }
                Ok(_) => {}
                Err(e) => {
                    tracing::warn!(calling_ae = %a.calling_ae, error = %e, "DICOM SCP: queueing the study for forwarding failed");
                }
            }
            Ok(())
        });
        match announced {
            Ok(()) => done.push(a),
            // Purged before it was announced: its purge is in the ledger.
            Err(StoreError::UnknownStudy { .. }) => done.push(a),
            Err(error) => {
                tracing::warn!(calling_ae = %a.calling_ae, study = %a.study.short(), error = %error, "DICOM SCP: the study-imported ledger entry could not be written; kept for the next time");
            }
        }
    }
    let n = done.len();
    if let Err(e) = store.arrivals_announced(&done) {
        tracing::warn!(error = %e, "DICOM SCP: the announced objects could not be taken off (announced again at the next start)");
    }
    n
}

/// Starts the SCP when `[gateway] enabled`.
///
/// # Errors
/// [`ScpError`] when it cannot listen or its TLS files do not load.
pub(super) async fn start(node: &Arc<Node>) -> Result<Option<(Scp, GatewayStatus)>, ScpError> {
    // What the SCP stored before a stop or a crash and did not announce.
    let pending = Arc::clone(node);
    let announced = tokio::task::spawn_blocking(move || announce_arrivals(&pending, None))
        .await
        .unwrap_or(0);
    if announced > 0 {
        tracing::info!(announced, "DICOM SCP: objects stored before the last stop announced");
    }
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

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use std::path::Path;

    use super::*;
    use crate::keystore::Passphrase;
    use crate::store::Arrival;

    const CT: &str = "ct/ct_ge_small_explicit-le.dcm";

    /// Objects the SCP stored are counted in their own commit, survive
    /// the node (a new `Node` on the same home stands for a restart), and
    /// are announced once: one `study-imported` entry naming the AE, and
    /// the count gone.
    #[test]
    fn stored_objects_are_announced_once_even_after_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("home");
        let pass = Passphrase::new("correct horse battery staple gateway".into());
        let node = Node::init(&root, "Hospital Gw", "DE", &pass).unwrap();
        let file = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../tests/data/corpus")
            .join(CT);
        let options = node.import_options();
        let done = ingest::import_object(node.store(), &file, &options, Some("MODALITY")).unwrap();
        assert!(!done.duplicate);
        let study = node.store().study_ref(&done.study_uid);
        let counted = vec![Arrival {
            study,
            calling_ae: "MODALITY".into(),
            objects: 1,
        }];
        assert_eq!(node.store().arrivals().unwrap(), counted);
        // The same object again stores nothing new and counts nothing.
        let again = ingest::import_object(node.store(), &file, &options, Some("MODALITY")).unwrap();
        assert!(again.duplicate);
        // `study import` (no calling AE) counts nothing either.
        assert_eq!(node.store().arrivals().unwrap(), counted);
        drop(node);

        let node = Node::open(&root, &pass).unwrap();
        assert_eq!(node.store().arrivals().unwrap(), counted, "the count survives the node");
        assert_eq!(announce_arrivals(&node, Some("OTHER")), 0);
        assert_eq!(node.store().arrivals().unwrap(), counted);
        assert_eq!(announce_arrivals(&node, None), 1);
        assert!(node.store().arrivals().unwrap().is_empty());
        assert_eq!(announce_arrivals(&node, None), 0);
        let entries: Vec<_> = node
            .audit()
            .log_tail(100)
            .unwrap()
            .into_iter()
            .filter(|e| e.kind == "study-imported")
            .collect();
        assert_eq!(entries.len(), 1);
        match &entries[0].event {
            Event::StudyImported {
                objects,
                source,
                calling_ae,
                ..
            } => {
                assert_eq!(
                    (*objects, source.as_str(), calling_ae.as_deref()),
                    (1, "dicom", Some("MODALITY"))
                );
            }
            other => panic!("{other:?}"),
        }
    }
}
