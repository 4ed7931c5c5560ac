//! A `request_response` codec for the network's own CBOR messages (the
//! hello; services' protocols go through [`super::protocol::RawCodec`]): each request and each
//! response is one CBOR value written to its own stream, which is then
//! closed. Reads stop at a size limit per direction; oversize or malformed
//! input is an `InvalidData` error naming the message, never a panic.

use std::io;
use std::marker::PhantomData;

use futures::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use libp2p::StreamProtocol;
use libp2p::request_response;

/// A message that has a CBOR wire form with a version and a size limit.
pub trait Wire: Sized + Send + 'static {
    /// What it is, for error messages.
    const WHAT: &'static str;
    /// Largest encoding accepted, bytes.
    const MAX: usize;
    /// Why it does not encode or decode.
    type Error: std::error::Error + Send + Sync + 'static;
    /// Encodes.
    ///
    /// # Errors
    /// [`Self::Error`].
    fn encode(&self) -> Result<Vec<u8>, Self::Error>;
    /// Decodes and checks (version, limits).
    ///
    /// # Errors
    /// [`Self::Error`].
    fn decode(bytes: &[u8]) -> Result<Self, Self::Error>;
}

impl Wire for crate::trust::hello::Hello {
    const WHAT: &'static str = "hello";
    const MAX: usize = crate::trust::hello::MAX_HELLO;
    type Error = crate::trust::hello::HelloError;
    fn encode(&self) -> Result<Vec<u8>, Self::Error> {
        self.to_bytes()
    }
    fn decode(bytes: &[u8]) -> Result<Self, Self::Error> {
        Self::from_bytes(bytes)
    }
}

/// The codec for request type `Q` and response type `R`.
#[derive(Debug)]
pub struct CborCodec<Q, R> {
    _types: PhantomData<fn() -> (Q, R)>,
}

impl<Q, R> Default for CborCodec<Q, R> {
    fn default() -> Self {
        Self { _types: PhantomData }
    }
}

impl<Q, R> Clone for CborCodec<Q, R> {
    fn clone(&self) -> Self {
        Self::default()
    }
}

async fn read_one<T: Wire, S: AsyncRead + Unpin + Send>(io: &mut S) -> io::Result<T> {
    let mut buf = Vec::new();
    let limit = u64::try_from(T::MAX).unwrap_or(u64::MAX).saturating_add(1);
    io.take(limit).read_to_end(&mut buf).await?;
    if buf.len() > T::MAX {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("{} larger than {} bytes", T::WHAT, T::MAX),
        ));
    }
    T::decode(&buf).map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))
}

fn encode<T: Wire>(value: &T) -> io::Result<Vec<u8>> {
    value
        .encode()
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))
}

async fn write_bytes<S: AsyncWrite + Unpin + Send>(io: &mut S, bytes: io::Result<Vec<u8>>) -> io::Result<()> {
    io.write_all(&bytes?).await?;
    io.close().await
}

impl<Q: Wire, R: Wire> request_response::Codec for CborCodec<Q, R> {
    type Protocol = StreamProtocol;
    type Request = Q;
    type Response = R;

    async fn read_request<T>(&mut self, _: &StreamProtocol, io: &mut T) -> io::Result<Q>
    where
        T: AsyncRead + Unpin + Send,
    {
        read_one(io).await
    }

    async fn read_response<T>(&mut self, _: &StreamProtocol, io: &mut T) -> io::Result<R>
    where
        T: AsyncRead + Unpin + Send,
    {
        read_one(io).await
    }

    async fn write_request<T>(&mut self, _: &StreamProtocol, io: &mut T, req: Q) -> io::Result<()>
    where
        T: AsyncWrite + Unpin + Send,
    {
        write_bytes(io, encode(&req)).await
    }

    async fn write_response<T>(&mut self, _: &StreamProtocol, io: &mut T, res: R) -> io::Result<()>
    where
        T: AsyncWrite + Unpin + Send,
    {
        write_bytes(io, encode(&res)).await
    }
}
