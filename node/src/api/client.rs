//! The admin API client: what the CLI (and the testnet) use to drive a
//! running node.

use std::path::{Path, PathBuf};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::{Method, Request, StatusCode};
use hyper_util::rt::TokioIo;
use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio::net::UnixStream;

use super::Line;

/// Errors of talking to a running node.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ClientError {
    /// The socket could not be reached.
    #[error("cannot reach the node at {path}: {source}")]
    Connect {
        /// Socket path.
        path: String,
        /// The cause.
        source: std::io::Error,
    },
    /// HTTP failed.
    #[error("admin API at {path}: {reason}")]
    Http {
        /// Socket path.
        path: String,
        /// Why.
        reason: String,
    },
    /// The node refused or failed the operation.
    #[error("{0}")]
    Remote(String),
    /// An answer could not be decoded.
    #[error("admin API answer: {0}")]
    Decode(String),
}

/// A client of one node's admin API.
#[derive(Debug, Clone)]
pub struct Client {
    socket: PathBuf,
}

impl Client {
    /// The client of the node running on `home`, if one answers on its
    /// socket. A socket nobody answers on (left by a killed node) counts as
    /// not running.
    #[must_use]
    pub fn detect(home: &Path) -> Option<Self> {
        let socket = crate::home::HomePaths::new(home).socket();
        std::os::unix::net::UnixStream::connect(&socket).ok()?;
        Some(Self { socket })
    }

    /// A client of the socket at `socket`, not checked.
    #[must_use]
    pub fn new(socket: PathBuf) -> Self {
        Self { socket }
    }

    fn http(&self, reason: impl std::fmt::Display) -> ClientError {
        ClientError::Http {
            path: self.socket.display().to_string(),
            reason: reason.to_string(),
        }
    }

    async fn send(
        &self,
        method: Method,
        path: &str,
        body: Vec<u8>,
    ) -> Result<hyper::Response<hyper::body::Incoming>, ClientError> {
        let stream = UnixStream::connect(&self.socket)
            .await
            .map_err(|source| ClientError::Connect {
                path: self.socket.display().to_string(),
                source,
            })?;
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|e| self.http(e))?;
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!(cause = %e, "admin API connection ended with an error");
            }
        });
        let req = Request::builder()
            .method(method)
            .uri(format!("{}{path}", super::PREFIX))
            .header(hyper::header::HOST, "medmesh")
            .header(hyper::header::CONTENT_TYPE, "application/json")
            .body(Full::new(Bytes::from(body)))
            .map_err(|e| self.http(e))?;
        let resp = sender.send_request(req).await.map_err(|e| self.http(e))?;
        if resp.status() != StatusCode::OK {
            let status = resp.status();
            let bytes = resp.into_body().collect().await.map_err(|e| self.http(e))?.to_bytes();
            let message = serde_json::from_slice::<serde_json::Value>(&bytes)
                .ok()
                .and_then(|v| v.get("error").and_then(|e| e.as_str()).map(str::to_string))
                .unwrap_or_else(|| format!("HTTP {status}"));
            return Err(ClientError::Remote(message));
        }
        Ok(resp)
    }

    /// `GET /v1{path}`, decoded.
    ///
    /// # Errors
    /// [`ClientError`].
    pub async fn get<T: DeserializeOwned>(&self, path: &str) -> Result<T, ClientError> {
        let resp = self.send(Method::GET, path, Vec::new()).await?;
        let bytes = resp.into_body().collect().await.map_err(|e| self.http(e))?.to_bytes();
        serde_json::from_slice(&bytes).map_err(|e| ClientError::Decode(e.to_string()))
    }

    /// `POST /v1{path}` with a JSON body, decoded.
    ///
    /// # Errors
    /// [`ClientError`].
    pub async fn post<B: Serialize, T: DeserializeOwned>(&self, path: &str, body: &B) -> Result<T, ClientError> {
        let body = serde_json::to_vec(body).map_err(|e| ClientError::Decode(e.to_string()))?;
        let resp = self.send(Method::POST, path, body).await?;
        let bytes = resp.into_body().collect().await.map_err(|e| self.http(e))?.to_bytes();
        serde_json::from_slice(&bytes).map_err(|e| ClientError::Decode(e.to_string()))
    }

    /// `POST /v1{path}` answered by JSON Lines: `on_line` gets each record
    /// as it arrives. A final `error` record becomes [`ClientError::Remote`].
    ///
    /// # Errors
    /// [`ClientError`]; the first error `on_line` returns.
    pub async fn post_lines<B: Serialize>(
        &self,
        path: &str,
        body: &B,
        mut on_line: impl FnMut(Line) -> Result<(), ClientError>,
    ) -> Result<(), ClientError> {
        let body = serde_json::to_vec(body).map_err(|e| ClientError::Decode(e.to_string()))?;
        let mut resp = self.send(Method::POST, path, body).await?;
        let mut pending: Vec<u8> = Vec::new();
        let mut error = None;
        while let Some(frame) = resp.body_mut().frame().await {
            let frame = frame.map_err(|e| self.http(e))?;
            let Some(data) = frame.data_ref() else { continue };
            pending.extend_from_slice(data);
            while let Some(pos) = pending.iter().position(|b| *b == b'\n') {
                let line: Vec<u8> = pending.drain(..=pos).collect();
                let line: Line = serde_json::from_slice(&line).map_err(|e| ClientError::Decode(e.to_string()))?;
                if line.kind == "error" {
                    error = Some(
                        line.data
                            .get("message")
                            .and_then(|m| m.as_str())
                            .unwrap_or("the operation failed")
                            .to_string(),
                    );
                } else {
                    on_line(line)?;
                }
            }
        }
        match error {
            Some(m) => Err(ClientError::Remote(m)),
            None => Ok(()),
        }
    }
}
