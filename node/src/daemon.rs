//! `medmesh run`: the node as a service. Opens the admin API socket, starts
//! the network, notification delivery and the gateway's forwarding worker, and runs until SIGINT or SIGTERM,
//! then stops them and removes the socket.

mod gateway;
mod metrics;

use std::sync::Arc;

use tokio::sync::watch;

use futures::FutureExt;
use futures::future::BoxFuture;
use libp2p::PeerId;

use crate::api::Status;
use crate::api::server::{self, ServerError};
use crate::audit::Verdict;
use crate::audit::replication::{Link, Replication};
use crate::home::Node;
use crate::net::protocol::{Acceptance, Admit, CatchUp, Delivery, RequestHandler, RequestLimits, Router, TopicHandler};
use crate::net::{self, NetError, NetHandle};
use crate::transfer::protocol::{Taken, TransferNet, TransferProtocol};
use crate::transfer::wire::{self, Answer, Msg};

/// Errors of running the node.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DaemonError {
    /// The admin API could not start.
    #[error(transparent)]
    Api(#[from] ServerError),
    /// The network could not start.
    #[error(transparent)]
    Net(#[from] NetError),
    /// A task of the node ended on its own (a bug): the node stopped.
    #[error("the {task} task ended on its own{}", if *.panicked { " (it panicked)" } else { "" })]
    TaskEnded {
        /// Which task: `network` or `admin API`.
        task: &'static str,
        /// It panicked (else it returned).
        panicked: bool,
    },
    /// The home, its keys or the socket's folder are open to others.
    #[error(transparent)]
    Home(#[from] crate::home::HomeError),
    /// Signal handlers could not be installed.
    #[error("cannot install signal handlers: {0}")]
    Signals(std::io::Error),
    /// The DICOM gateway's SCP could not start.
    #[error("DICOM gateway: {0}")]
    Gateway(#[from] crate::gateway::scp::ScpError),
    /// The web console could not start.
    #[error("web console: {0}")]
    Web(#[from] crate::web::WebError),
    /// The metrics listener (`[metrics] listen`) could not start.
    #[error(transparent)]
    Metrics(#[from] crate::metrics::MetricsError),
}

/// Runs the node until SIGINT or SIGTERM. `ready` is called once, when the
/// API answers and the network listens, with the node's status.
///
/// # Errors
/// [`DaemonError`] when something cannot start, [`DaemonError::Home`] among
/// them when the home, its keys or the socket's folder are open to the group
/// or others ([`crate::home::HomePaths::check_private`]).
pub async fn run(node: Node, ready: impl FnOnce(&Status)) -> Result<(), DaemonError> {
    node.paths().check_private()?;
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).map_err(DaemonError::Signals)?;
    let mut int = signal(SignalKind::interrupt()).map_err(DaemonError::Signals)?;
    let node = Arc::new(node);
    let socket = node.paths().socket();
    let bound = server::bind(&socket)?;
    // The DICOM gateway's SCP, when enabled: before the network, so that
    // a port in use or a bad certificate stops the start at once.
    let (scp, gateway) = match gateway::start(&node).await? {
        Some((scp, status)) => (Some(scp), Some(status)),
        None => (None, None),
    };
    // The web console's listener, bound before the network for the same reason.
    let web = crate::web::bind(node.config()).await?;
    let web_addr = web.as_ref().map(|w| w.addr);
    // [metrics] listen: bound before the network too (a port in use stops the start).
    let metrics_listener = match node.config().metrics.listen {
        Some(addr) => {
            let (listener, bound) = crate::metrics::bind(addr).await?;
            node.set_metrics_listen(bound);
            Some(listener)
        }
        None => None,
    };
    let (stop_tx, stop_rx) = watch::channel(false);
    // The services register their protocols with the network.
    let wake = Arc::new(tokio::sync::Notify::new());
    let maintenance = std::time::Duration::from_secs(node.config().network.maintenance_secs);
    let replication = Replication::new(
        Arc::clone(&node) as Arc<dyn crate::audit::replication::Host>,
        maintenance,
    );
    let host: Arc<dyn crate::transfer::Host> = Arc::clone(&node) as _;
    let transfers = TransferProtocol::new(Arc::clone(&host), Arc::clone(&wake));
    let router = router(&replication, &transfers, &wake).map_err(NetError::from)?;
    let (net, net_task) = net::start(Arc::clone(&node), router, stop_rx.clone()).await?;
    replication.connect(Arc::new(NetLink(net.clone())));
    let replication_task = tokio::spawn(Arc::clone(&replication).run(stop_rx.clone()));
    let engine = crate::transfer::engine::start(host, net.clone(), net.stream_control(), wake, stop_rx.clone());
    // The engine and the replication end with the network.
    let net_task = tokio::spawn(async move {
        let _ = net_task.await;
        engine.abort();
        replication_task.abort();
    });
    // [policy] fetch_from_pacs: requests for studies not held yet wait for the PACS.
    let fetch_task = match (
        &gateway,
        node.config().policy.fetch_from_pacs && node.config().gateway.pacs.is_some(),
    ) {
        (Some(g), true) => {
            let ctx = crate::api::route::Ctx::online(Arc::clone(&node), net.clone(), socket.clone(), gateway.clone());
            Some(tokio::spawn(gateway::fetch_for_requests(
                ctx,
                g.ae_title.clone(),
                stop_rx.clone(),
            )))
        }
        _ => None,
    };
    // Notification delivery (webhook, syslog): returns at once when none is configured.
    let notify_task = {
        let (config, origin) = (node.config().notify.clone(), crate::notify::Origin::of(node.record()));
        let node = Arc::clone(&node);
        let stop = stop_rx.clone();
        tokio::spawn(async move { crate::notify::run(node, &config, origin, stop).await })
    };
    // The gateway's forwarding queue (sends nothing until a study is queued).
    let forward_task = tokio::spawn(crate::gateway::forward::run(
        Arc::clone(&node) as Arc<dyn crate::gateway::forward::ForwardHost>,
        stop_rx.clone(),
    ));
    let web_task = web.map(|bound| {
        let ctx = crate::api::route::Ctx::online(Arc::clone(&node), net.clone(), socket.clone(), gateway.clone())
            .with_web(web_addr);
        tokio::spawn(crate::web::serve(bound, ctx, stop_rx.clone()))
    });
    let metrics_task = metrics_listener.map(|listener| {
        let source = metrics::NodeSource {
            node: Arc::clone(&node),
            net: net.clone(),
        };
        tokio::spawn(crate::metrics::serve(listener, Arc::new(source), stop_rx.clone()))
    });
    let mut api_task = tokio::spawn(server::serve(
        bound,
        Arc::clone(&node),
        net.clone(),
        gateway.clone(),
        web_addr,
        stop_rx,
    ));
    let mut net_task = net_task;
    // Wait until every listen address is bound before reporting ready.
    let want = node.config().network.listen.len();
    let mut status = net.status().await?;
    for _ in 0..500 {
        if status.listen.len() >= want {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        status = net.status().await?;
    }
    ready(&Status {
        node: Node::id_info(node.record()),
        net: status,
        socket: socket.clone(),
        ledger_problem: node.audit().own_feed_problem(),
        gateway,
        web: web_addr,
        metrics: node.metrics_listen(),
    });
    tracing::info!(socket = %socket.display(), "node running");
    let died = tokio::select! {
        _ = term.recv() => { tracing::info!("SIGTERM: stopping"); None }
        _ = int.recv() => { tracing::info!("SIGINT: stopping"); None }
        r = &mut net_task => Some(("network", r.is_err())),
        r = &mut api_task => Some(("admin API", r.is_err())),
    };
    let _ = stop_tx.send(true);
    if !api_task.is_finished() {
        let _ = api_task.await;
    }
    if !net_task.is_finished() {
        let _ = net_task.await;
    }
    let _ = notify_task.await;
    if let Some(task) = fetch_task {
        let _ = task.await;
    }
    let _ = forward_task.await;
    if let Some(task) = web_task {
        let _ = task.await;
    }
    if let Some(task) = metrics_task {
        let _ = task.await;
    }
    if let Some(scp) = scp {
        scp.shutdown().await;
    }
    tracing::info!("node stopped");
    match died {
        Some((task, panicked)) => Err(DaemonError::TaskEnded { task, panicked }),
        None => Ok(()),
    }
}

/// The services' protocols: the ledger's sync protocol, gossip topic and
/// revocation catch-up, and the transfer protocol.
fn router(
    replication: &Arc<Replication>,
    transfers: &Arc<TransferProtocol>,
    wake: &Arc<tokio::sync::Notify>,
) -> Result<Router, net::protocol::RouterError> {
    use crate::ledger::{gossip, sync};
    use std::time::Duration;
    Ok(Router::new()
        .request_response(
            crate::transfer::wire::PROTOCOL,
            RequestLimits {
                what: "transfer message",
                max_request: crate::transfer::wire::MAX_MESSAGE,
                max_response: crate::transfer::wire::MAX_MESSAGE,
                timeout: Duration::from_secs(60),
                streams: 32,
            },
            Arc::new(TransferHandler(Arc::clone(transfers))),
        )?
        .request_response(
            sync::SYNC_PROTOCOL,
            RequestLimits {
                what: "ledger sync message",
                max_request: sync::MAX_SYNC,
                max_response: sync::MAX_SYNC,
                timeout: Duration::from_secs(30),
                streams: 16,
            },
            Arc::new(LedgerHandler(Arc::clone(replication))),
        )?
        .topic(
            gossip::TOPIC,
            gossip::MAX_GOSSIP,
            Arc::new(LedgerHandler(Arc::clone(replication))),
        )?
        .catch_up(Arc::new(LedgerHandler(Arc::clone(replication))))
        .on_accept(Arc::clone(wake)))
}

/// The ledger's replication, as the network sees it.
struct LedgerHandler(Arc<Replication>);

impl RequestHandler for LedgerHandler {
    fn serves_parked(&self, request: &[u8]) -> bool {
        Replication::serves_parked(request)
    }

    fn admit(&self, peer: PeerId, request: Vec<u8>) -> Admit {
        let replication = Arc::clone(&self.0);
        Admit::Work(Box::new(move || replication.answer(peer, &request)))
    }
}

impl TopicHandler for LedgerHandler {
    fn on_message(&self, peer: PeerId, data: &[u8]) -> Acceptance {
        match self.0.on_gossip(peer, data) {
            Verdict::Accept => Acceptance::Accept,
            Verdict::Ignore => Acceptance::Ignore,
            Verdict::Reject => Acceptance::Reject,
        }
    }
}

impl CatchUp for LedgerHandler {
    fn catch_up(&self, peer: PeerId, consortium: String, digest: Vec<u8>) -> BoxFuture<'static, bool> {
        Arc::clone(&self.0).catch_up(peer, consortium, digest).boxed()
    }

    fn maintenance(&self) {
        #[cfg(feature = "fault-injection")]
        self.0.publish_injected();
    }
}

/// The transfer protocol, as the network sees it.
struct TransferHandler(Arc<TransferProtocol>);

impl RequestHandler for TransferHandler {
    fn admit(&self, peer: PeerId, request: Vec<u8>) -> Admit {
        match self.0.take(peer, &request) {
            Taken::Now(answer) => Admit::Answer(answer),
            Taken::Later(work) => Admit::Work(work),
            Taken::Drop => Admit::Drop,
        }
    }
}

/// The network, as the ledger's replication sees it.
struct NetLink(NetHandle);

impl Link for NetLink {
    fn ready_peers(&self) -> BoxFuture<'static, Vec<PeerId>> {
        let net = self.0.clone();
        async move { net.ready_peers().await }.boxed()
    }

    fn request(&self, peer: PeerId, request: Vec<u8>, only_trusted: bool) -> BoxFuture<'static, Option<Vec<u8>>> {
        let net = self.0.clone();
        let delivery = if only_trusted {
            Delivery::IfTrusted
        } else {
            Delivery::Now
        };
        async move {
            match net
                .request(crate::ledger::sync::SYNC_PROTOCOL, peer, request, delivery)
                .await
            {
                Ok(answer) => Some(answer),
                Err(e) => {
                    tracing::debug!(peer = %peer, cause = %e, "ledger request failed");
                    None
                }
            }
        }
        .boxed()
    }

    fn publish(&self, message: Vec<u8>) -> BoxFuture<'static, ()> {
        let net = self.0.clone();
        async move { net.publish(message).await }.boxed()
    }
}

/// The transfer service reaches peers through the network's handle.
impl TransferNet for NetHandle {
    type Error = NetError;

    async fn transfer_message(&self, peer: PeerId, msg: Msg) -> Result<Answer, NetError> {
        let malformed = |source: wire::WireError| NetError::Malformed {
            peer,
            protocol: wire::PROTOCOL,
            source: Box::new(source),
        };
        let bytes = wire::encode("transfer message", &msg).map_err(malformed)?;
        let answer = self.request(wire::PROTOCOL, peer, bytes, Delivery::WaitTrusted).await?;
        wire::decode("transfer answer", &answer, wire::MAX_MESSAGE).map_err(malformed)
    }

    async fn is_ready(&self, peer: PeerId) -> bool {
        NetHandle::is_ready(self, peer).await
    }

    async fn dial(&self, peer: PeerId) {
        NetHandle::dial(self, peer).await;
    }
}
