//! `medmesh run`: the node as a service. Opens the admin API socket, starts
//! the network and notification delivery, and runs until SIGINT or SIGTERM,
//! then stops them and removes the socket.

use std::sync::Arc;

use tokio::sync::watch;

use crate::api::Status;
use crate::api::server::{self, ServerError};
use crate::home::Node;
use crate::net::{self, NetError};

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
    #[error("{0}")]
    TaskEnded(String),
    /// The home, its keys or the socket's folder are open to others.
    #[error(transparent)]
    Home(#[from] crate::home::HomeError),
    /// Signal handlers could not be installed.
    #[error("cannot install signal handlers: {0}")]
    Signals(std::io::Error),
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
    let (stop_tx, stop_rx) = watch::channel(false);
    let (net, net_task) = net::start(Arc::clone(&node), stop_rx.clone()).await?;
    // Notification delivery (webhook, syslog): returns at once when none is configured.
    let notify_task = {
        let (config, origin) = (node.config().notify.clone(), crate::notify::Origin::of(node.record()));
        let node = Arc::clone(&node);
        let stop = stop_rx.clone();
        tokio::spawn(async move { crate::notify::run(node, &config, origin, stop).await })
    };
    let mut api_task = tokio::spawn(server::serve(bound, Arc::clone(&node), net.clone(), stop_rx));
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
        ledger_problem: node.own_feed_problem(),
    });
    tracing::info!(socket = %socket.display(), "node running");
    let died = tokio::select! {
        _ = term.recv() => { tracing::info!("SIGTERM: stopping"); None }
        _ = int.recv() => { tracing::info!("SIGINT: stopping"); None }
        r = &mut net_task => Some(format!("the network task ended: {r:?}")),
        r = &mut api_task => Some(format!("the admin API task ended: {r:?}")),
    };
    let _ = stop_tx.send(true);
    if !api_task.is_finished() {
        let _ = api_task.await;
    }
    if !net_task.is_finished() {
        let _ = net_task.await;
    }
    let _ = notify_task.await;
    tracing::info!("node stopped");
    match died {
        Some(why) => Err(DaemonError::TaskEnded(why)),
        None => Ok(()),
    }
}
