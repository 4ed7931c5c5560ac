//! The admin API client: what the CLI (and the testnet) use to drive a
//! running node, one typed call per route of the [table](super::routes).

use std::path::{Path, PathBuf};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::{Method, Request, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::UnixStream;

use super::Line;
use super::route::{Call, Route, Stream, Verb};

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
    /// HTTP failed (handshake, sending, reading the answer).
    #[error("admin API at {path}: {source}")]
    Http {
        /// Socket path.
        path: String,
        /// The cause.
        source: hyper::Error,
    },
    /// The request could not be made.
    #[error("admin API at {path}: {source}")]
    Request {
        /// Socket path.
        path: String,
        /// The cause.
        source: hyper::http::Error,
    },
    /// A path of the request could not be made absolute.
    #[error("{}: {source}", path.display())]
    Path {
        /// The path.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// The request could not be encoded.
    #[error("admin API request: {0}")]
    Encode(serde_json::Error),
    /// The node refused or failed the operation: its message.
    #[error("{message}")]
    Remote {
        /// HTTP status of the answer (200 for the `error` record of a
        /// streamed answer).
        status: u16,
        /// What the node said.
        message: String,
    },
    /// An answer could not be decoded.
    #[error("admin API answer: {0}")]
    Decode(serde_json::Error),
    /// A record of a streamed answer could not be decoded.
    #[error("admin API answer: {kind} record: {source}")]
    DecodeRecord {
        /// The record type.
        kind: String,
        /// The cause.
        source: serde_json::Error,
    },
    /// A streamed answer ended without its summary.
    #[error("the node ended {work} without a summary")]
    NoSummary {
        /// What it was doing ("the import").
        work: &'static str,
    },
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

    fn http(&self, source: hyper::Error) -> ClientError {
        ClientError::Http {
            path: self.socket.display().to_string(),
            source,
        }
    }

    async fn send(
        &self,
        verb: Verb,
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
        let method = match verb {
            Verb::Get => Method::GET,
            Verb::Post => Method::POST,
        };
        let req = Request::builder()
            .method(method)
            .uri(path)
            .header(hyper::header::HOST, "medmesh")
            .header(hyper::header::CONTENT_TYPE, "application/json")
            .body(Full::new(Bytes::from(body)))
            .map_err(|source| ClientError::Request {
                path: self.socket.display().to_string(),
                source,
            })?;
        let resp = sender.send_request(req).await.map_err(|e| self.http(e))?;
        if resp.status() != StatusCode::OK {
            let status = resp.status();
            let bytes = resp.into_body().collect().await.map_err(|e| self.http(e))?.to_bytes();
            let message = serde_json::from_slice::<serde_json::Value>(&bytes)
                .ok()
                .and_then(|v| v.get("error").and_then(|e| e.as_str()).map(str::to_string))
                .unwrap_or_else(|| format!("HTTP {status}"));
            return Err(ClientError::Remote {
                status: status.as_u16(),
                message,
            });
        }
        Ok(resp)
    }

    /// The request of route `R` sent: its local paths made absolute (the
    /// node has its own working directory), its body (none for a `GET`).
    async fn request<R: Route>(
        &self,
        mut request: R::Request,
    ) -> Result<hyper::Response<hyper::body::Incoming>, ClientError> {
        for p in R::paths(&mut request) {
            *p = std::path::absolute(&*p).map_err(|source| ClientError::Path {
                path: p.clone(),
                source,
            })?;
        }
        let body = match R::METHOD {
            Verb::Get => Vec::new(),
            Verb::Post => serde_json::to_vec(&request).map_err(ClientError::Encode)?,
        };
        self.send(R::METHOD, R::PATH, body).await
    }

    /// Calls route `R` with `request`: its answer.
    ///
    /// # Errors
    /// [`ClientError`].
    pub async fn call<R: Call>(&self, request: R::Request) -> Result<R::Answer, ClientError> {
        let resp = self.request::<R>(request).await?;
        let bytes = resp.into_body().collect().await.map_err(|e| self.http(e))?.to_bytes();
        serde_json::from_slice(&bytes).map_err(ClientError::Decode)
    }

    /// Calls streamed route `R` with `request`: `progress` gets each
    /// progress record as it arrives; the answer is the summary. A final
    /// `error` record becomes [`ClientError::Remote`].
    ///
    /// # Errors
    /// [`ClientError`].
    pub async fn stream<R: Stream>(
        &self,
        request: R::Request,
        mut progress: impl FnMut(R::Progress),
    ) -> Result<R::Answer, ClientError> {
        let mut resp = self.request::<R>(request).await?;
        let mut pending: Vec<u8> = Vec::new();
        let mut error = None;
        let mut summary = None;
        while let Some(frame) = resp.body_mut().frame().await {
            let frame = frame.map_err(|e| self.http(e))?;
            let Some(data) = frame.data_ref() else { continue };
            pending.extend_from_slice(data);
            while let Some(pos) = pending.iter().position(|b| *b == b'\n') {
                let line: Vec<u8> = pending.drain(..=pos).collect();
                let line: Line = serde_json::from_slice(&line).map_err(ClientError::Decode)?;
                let record = |source| ClientError::DecodeRecord {
                    kind: line.kind.clone(),
                    source,
                };
                if line.kind == "error" {
                    error = Some(
                        line.data
                            .get("message")
                            .and_then(|m| m.as_str())
                            .unwrap_or("the operation failed")
                            .to_string(),
                    );
                } else if line.kind == R::SUMMARY {
                    summary = Some(serde_json::from_value::<R::Answer>(line.data.clone()).map_err(record)?);
                } else {
                    let value = serde_json::json!({ "type": line.kind, "data": line.data });
                    progress(serde_json::from_value(value).map_err(record)?);
                }
            }
        }
        match (error, summary) {
            (Some(message), _) => Err(ClientError::Remote { status: 200, message }),
            (None, Some(summary)) => Ok(summary),
            (None, None) => Err(ClientError::NoSummary { work: R::WORK }),
        }
    }
}
