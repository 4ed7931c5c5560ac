//! CBOR encoding of every medmesh record, on disk and on the wire.
//!
//! All records are CBOR (RFC 8949) written with `ciborium`. Decoding checks
//! the size before it starts and rejects trailing bytes, so one record is
//! exactly one CBOR item. Each record type carries its own `v` field, checked
//! by its decoder.

use std::io::Cursor;

use serde::Serialize;
use serde::de::DeserializeOwned;

/// Errors of CBOR encoding and decoding.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CodecError {
    /// The input is larger than the record type allows.
    #[error("{what} is {len} bytes, over the limit of {max} bytes")]
    TooLarge {
        /// Which record.
        what: &'static str,
        /// Its length.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// The bytes are not a valid CBOR encoding of the record.
    #[error("{what} is not valid CBOR of the expected shape: {source}")]
    Malformed {
        /// Which record.
        what: &'static str,
        /// The decoder's error (boxed: it is large).
        #[source]
        source: Box<ciborium::de::Error<std::io::Error>>,
    },
    /// Bytes follow the record.
    #[error("{what} has {extra} trailing bytes after the record")]
    Trailing {
        /// Which record.
        what: &'static str,
        /// How many bytes follow.
        extra: usize,
    },
    /// The record's version field names a version this build does not read.
    #[error("{what} has version {found}, this build reads version {supported}")]
    Version {
        /// Which record.
        what: &'static str,
        /// The version found.
        found: u32,
        /// The version supported.
        supported: u32,
    },
    /// Encoding failed (a bug: our types always encode).
    #[error("could not encode {what}: {source}")]
    Encode {
        /// Which record.
        what: &'static str,
        /// The encoder's error (boxed: it is large).
        #[source]
        source: Box<ciborium::ser::Error<std::io::Error>>,
    },
}

/// Encodes a record as CBOR.
///
/// # Errors
/// [`CodecError::Encode`] if serialisation fails.
pub fn encode<T: Serialize>(what: &'static str, value: &T) -> Result<Vec<u8>, CodecError> {
    let mut out = Vec::new();
    ciborium::into_writer(value, &mut out).map_err(|e| CodecError::Encode {
        what,
        source: Box::new(e),
    })?;
    Ok(out)
}

/// Decodes exactly one CBOR record of at most `max` bytes.
///
/// # Errors
/// [`CodecError::TooLarge`], [`CodecError::Malformed`] or [`CodecError::Trailing`].
pub fn decode<T: DeserializeOwned>(what: &'static str, bytes: &[u8], max: usize) -> Result<T, CodecError> {
    if bytes.len() > max {
        return Err(CodecError::TooLarge {
            what,
            len: bytes.len(),
            max,
        });
    }
    let mut cursor = Cursor::new(bytes);
    let value: T = ciborium::from_reader(&mut cursor).map_err(|e| CodecError::Malformed {
        what,
        source: Box::new(e),
    })?;
    let used = usize::try_from(cursor.position()).unwrap_or(usize::MAX);
    if used != bytes.len() {
        return Err(CodecError::Trailing {
            what,
            extra: bytes.len().saturating_sub(used),
        });
    }
    Ok(value)
}

/// Checks a record's version field.
///
/// # Errors
/// [`CodecError::Version`] when `found != supported`.
pub fn check_version(what: &'static str, found: u32, supported: u32) -> Result<(), CodecError> {
    if found == supported {
        Ok(())
    } else {
        Err(CodecError::Version { what, found, supported })
    }
}
