//! A home, reached either through its running node's admin API or, when no
//! node runs on it, on its files (which needs the passphrase). Every command
//! that reads or changes a home calls a route of the admin API's table
//! ([`medmesh_node::api::routes`]) through here: sent over the socket to the
//! running node, or served in this process by the same handler the node's
//! server uses, so it works the same either way.

use std::path::Path;
use std::sync::Arc;

use anyhow::{Context, Result};
use medmesh_node::api::Status;
use medmesh_node::api::client::Client;
use medmesh_node::api::route::{Call, Ctx, Stream};
use medmesh_node::api::routes::GetStatus;

/// A home, local or through its running node.
pub enum Session {
    /// No node runs on the home: opened on its files, routes served here.
    Local { ctx: Ctx, rt: tokio::runtime::Runtime },
    /// The home's node runs: through its admin API.
    Remote {
        client: Client,
        rt: tokio::runtime::Runtime,
    },
}

fn runtime() -> Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")
}

impl Session {
    /// Through the running node if one answers on the home's socket, else on
    /// the files (asking for the passphrase).
    pub fn open(home: &Path) -> Result<Self> {
        let remote = |client: Client| -> Result<Self> {
            tracing::debug!(home = %home.display(), "using the running node's admin API");
            Ok(Self::Remote { client, rt: runtime()? })
        };
        if let Some(client) = Client::detect(home) {
            return remote(client);
        }
        match crate::open(home)? {
            Some(node) => Ok(Self::Local {
                ctx: Ctx::offline(Arc::new(node)),
                rt: runtime()?,
            }),
            // A node started meanwhile: its admin API answers now.
            None => remote(
                Client::detect(home).with_context(|| format!("the node on {} stopped answering", home.display()))?,
            ),
        }
    }

    /// Calls route `R` with `request`: through the running node, or served
    /// here on the files.
    pub fn call<R: Call>(&self, request: R::Request) -> Result<R::Answer> {
        match self {
            Self::Local { ctx, rt } => Ok(rt.block_on(R::serve(ctx.clone(), request))?),
            Self::Remote { client, rt } => Ok(rt.block_on(client.call::<R>(request))?),
        }
    }

    /// Calls streamed route `R` with `request`, `progress` getting each
    /// progress record; the answer is its summary.
    pub fn stream<R: Stream>(&self, request: R::Request, mut progress: impl FnMut(R::Progress)) -> Result<R::Answer> {
        match self {
            Self::Local { ctx, .. } => Ok(R::serve(ctx.node(), request, &mut progress)?),
            Self::Remote { client, rt } => Ok(rt.block_on(client.stream::<R>(request, progress))?),
        }
    }

    /// The running node's status; `None` on the files.
    pub fn status(&self) -> Result<Option<Status>> {
        match self {
            Self::Local { .. } => Ok(None),
            Self::Remote { .. } => self.call::<GetStatus>(()).map(Some),
        }
    }

    pub fn is_remote(&self) -> bool {
        matches!(self, Self::Remote { .. })
    }
}
