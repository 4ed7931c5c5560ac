//! `medmesh gateway queue|retry|cancel`: the forwarding queue to the site's
//! PACS (`[[gateway.destination]]`, `[[gateway.route]]`).

use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::Subcommand;
use medmesh_node::api::routes::{GatewayCancel, GatewayQueue, GatewayRetry};
use medmesh_node::clock::rfc3339;
use medmesh_node::gateway::forward::{ForwardItem, ItemRequest};
use medmesh_node::store::ForwardSource;

use crate::HomeArgs;
use crate::output::{Out, Table};
use crate::session::Session;

#[derive(Subcommand)]
pub(crate) enum GatewayCommand {
    /// The forwarding queue, newest first: one item per study and
    /// destination, with its state (queued, sending, retrying, sent,
    /// cancelled, given-up), attempts, next attempt and last error.
    Queue {
        #[command(flatten)]
        home: HomeArgs,
    },
    /// Send an item again now (one retrying, given up, cancelled or sent;
    /// its attempts count from 0). The running node sends it at once;
    /// otherwise when it next runs.
    Retry {
        #[command(flatten)]
        home: HomeArgs,
        /// The item's id (`gateway queue`).
        id: u64,
    },
    /// Cancel an item: it is not sent (`gateway retry` queues it again).
    Cancel {
        #[command(flatten)]
        home: HomeArgs,
        /// The item's id (`gateway queue`).
        id: u64,
    },
}

fn source(s: &ForwardSource) -> String {
    match s {
        ForwardSource::Peer { peer, institution } => {
            format!("{institution} ({}…)", peer.chars().take(16).collect::<String>())
        }
        ForwardSource::Import => "import".into(),
        ForwardSource::Scp { calling_ae } => format!("SCP {calling_ae}"),
    }
}

fn render(items: &[ForwardItem]) -> String {
    if items.is_empty() {
        return "the forwarding queue is empty\n".into();
    }
    let mut t = Table::new(&[
        "ID",
        "STATE",
        "DESTINATION",
        "STUDY",
        "FROM",
        "ATTEMPTS",
        "NEXT",
        "LAST ERROR",
    ]);
    for i in items {
        t.row(vec![
            i.id.to_string(),
            i.state.as_str().into(),
            format!("{} ({})", i.destination, i.ae_title),
            i.study.clone(),
            source(&i.source),
            i.attempts.to_string(),
            i.next_attempt.map(rfc3339).unwrap_or_else(|| "-".into()),
            i.last_error_text.clone().unwrap_or_else(|| "-".into()),
        ]);
    }
    t.render()
}

fn one(i: &ForwardItem) -> String {
    format!(
        "item {}: {} for {} ({})\n",
        i.id,
        i.state.as_str(),
        i.destination,
        i.ae_title
    )
}

pub(crate) fn gateway(cmd: GatewayCommand) -> Result<ExitCode> {
    match cmd {
        GatewayCommand::Queue { home } => {
            let out = Out::new(home.json);
            let node = Session::open(home.dir()?)?;
            let items = node.call::<GatewayQueue>(()).context("reading the forwarding queue")?;
            out.list("forward-item", &items, || render(&items))?;
        }
        GatewayCommand::Retry { home, id } => {
            let out = Out::new(home.json);
            let node = Session::open(home.dir()?)?;
            let item = node
                .call::<GatewayRetry>(ItemRequest { id })
                .with_context(|| format!("retrying forwarding item {id}"))?;
            out.emit("forward-item", &item, || one(&item))?;
        }
        GatewayCommand::Cancel { home, id } => {
            let out = Out::new(home.json);
            let node = Session::open(home.dir()?)?;
            let item = node
                .call::<GatewayCancel>(ItemRequest { id })
                .with_context(|| format!("cancelling forwarding item {id}"))?;
            out.emit("forward-item", &item, || one(&item))?;
        }
    }
    Ok(ExitCode::SUCCESS)
}
