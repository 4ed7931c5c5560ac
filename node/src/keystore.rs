//! The keystore: the node's master key, derived keys, and secret key files.
//!
//! A random 32-byte master key protects everything at rest. It is stored
//! wrapped under a key-encryption key derived from the site's passphrase
//! with Argon2id (RFC 9106), so the passphrase can change without
//! re-encrypting the store. Study data keys, identity secrets and blind-index
//! keys all hang off the master key:
//!
//! ```text
//! passphrase --Argon2id(salt, m=64 MiB, t=3, p=1)--> KEK --unwrap--> master key
//! master key --BLAKE3 derive_key("medmesh/v1/blind index key")--> blind-index key
//! master key --wrap(context = study ref)--> study data key (one per study)
//! master key --seal_box(context = "medmesh/v1/secret key/<kind>")--> identity secrets
//! ```
//!
//! File format of `keys/master.key` (CBOR map, see docs/PROTOCOL.md):
//! `{v: 1, kdf: "argon2id-v19", m_kib, t, p, salt: bytes(16), wrapped: bytes(73)}`.

use std::fmt;
use std::path::Path;

use medmesh_seal::{DataKey, SealError, WrappedKey, open_box, seal_box, unwrap_key, wrap_key};
use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

use crate::cbor::{self, CodecError};
use crate::fsutil;

/// Version of the key file formats.
pub const KEYFILE_VERSION: u32 = 1;
/// Argon2id memory cost in KiB (64 MiB: RFC 9106 §4, second recommended option).
pub const ARGON2_M_KIB: u32 = 64 * 1024;
/// Argon2id passes (RFC 9106 §4).
pub const ARGON2_T: u32 = 3;
/// Argon2id lanes.
pub const ARGON2_P: u32 = 1;
/// Shortest passphrase accepted when a home is created.
pub const MIN_PASSPHRASE_LEN: usize = 8;
const MAX_KEYFILE_LEN: usize = 4096;
const MASTER_WRAP_CONTEXT: &[u8] = b"medmesh/v1/master key";
const KDF_NAME: &str = "argon2id-v19";

/// Errors of the keystore.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum KeystoreError {
    /// The passphrase does not unlock the master key.
    #[error("wrong passphrase for {path} (the master key did not unlock)")]
    WrongPassphrase {
        /// The master key file.
        path: String,
    },
    /// The passphrase is too short to create a home with.
    #[error("the passphrase must be at least {MIN_PASSPHRASE_LEN} characters")]
    WeakPassphrase,
    /// A key file could not be read or written.
    #[error("key file {path}: {source}")]
    Io {
        /// The file.
        path: String,
        /// The cause.
        source: std::io::Error,
    },
    /// A key file is damaged or of an unknown format.
    #[error("key file {path} is not a valid medmesh key file: {source}")]
    Format {
        /// The file.
        path: String,
        /// The cause.
        source: CodecError,
    },
    /// A key file holds parameters this build refuses.
    #[error("key file {path}: {reason}")]
    Unsupported {
        /// The file.
        path: String,
        /// Why (boxed: it names kinds).
        reason: Box<KeyFileFault>,
    },
    /// A cryptographic operation failed.
    #[error("key operation failed: {0}")]
    Crypto(#[from] SealError),
    /// Argon2 rejected its parameters.
    #[error("Argon2id failed: {0}")]
    Kdf(#[source] argon2::Error),
}

/// Why a key file is refused ([`KeystoreError::Unsupported`]).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum KeyFileFault {
    /// A secret key file holds another kind of key than asked for.
    #[error("holds a {found:?} key, expected {expected:?}")]
    SecretKind {
        /// The kind the file holds.
        found: String,
        /// The kind asked for.
        expected: String,
    },
    /// A passphrase-locked key file holds another kind of key than asked for.
    #[error("holds a {found} key, expected a {expected} key")]
    LockedKind {
        /// The kind the file holds (`master` for the master key).
        found: String,
        /// The kind asked for.
        expected: String,
    },
    /// The secret key does not open under the home's master key.
    #[error("the secret key does not open under this home's master key")]
    DoesNotOpen,
    /// The file names a KDF this build does not know.
    #[error("unknown KDF {kdf:?}")]
    UnknownKdf {
        /// The KDF named.
        kdf: String,
    },
    /// The Argon2id parameters are out of the accepted range.
    #[error("Argon2id parameters out of the accepted range")]
    KdfParameters,
    /// The salt is shorter than 16 bytes.
    #[error("salt shorter than 16 bytes")]
    ShortSalt,
}

/// A passphrase, zeroized on drop, never printed.
pub struct Passphrase(Zeroizing<String>);

impl Passphrase {
    /// Wraps a passphrase read from the environment or a prompt.
    #[must_use]
    pub fn new(secret: String) -> Self {
        Self(Zeroizing::new(secret))
    }

    fn as_bytes(&self) -> &[u8] {
        self.0.as_bytes()
    }

    fn len(&self) -> usize {
        self.0.chars().count()
    }
}

impl fmt::Debug for Passphrase {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Passphrase(..)")
    }
}

/// The node's unlocked master key.
pub struct MasterKey(DataKey);

impl fmt::Debug for MasterKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("MasterKey(..)")
    }
}

/// A key file locked by a passphrase: the master key (`kind` empty) or a
/// consortium admin key (`kind` = "consortium-admin", with its public key).
#[derive(Serialize, Deserialize)]
struct MasterKeyFile {
    v: u32,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    kind: String,
    #[serde(default, with = "serde_bytes", skip_serializing_if = "Vec::is_empty")]
    public: Vec<u8>,
    kdf: String,
    m_kib: u32,
    t: u32,
    p: u32,
    #[serde(with = "serde_bytes")]
    salt: Vec<u8>,
    #[serde(with = "serde_bytes")]
    wrapped: Vec<u8>,
}

#[derive(Serialize, Deserialize)]
struct SecretKeyFile {
    v: u32,
    kind: String,
    #[serde(with = "serde_bytes")]
    public: Vec<u8>,
    #[serde(with = "serde_bytes")]
    sealed: Vec<u8>,
}

fn kek(passphrase: &Passphrase, salt: &[u8], m_kib: u32, t: u32, p: u32) -> Result<DataKey, KeystoreError> {
    let params = argon2::Params::new(m_kib, t, p, Some(32)).map_err(KeystoreError::Kdf)?;
    let argon = argon2::Argon2::new(argon2::Algorithm::Argon2id, argon2::Version::V0x13, params);
    let mut out = Zeroizing::new([0u8; 32]);
    argon
        .hash_password_into(passphrase.as_bytes(), salt, &mut out[..])
        .map_err(KeystoreError::Kdf)?;
    Ok(DataKey::from_bytes(*out))
}

impl MasterKey {
    /// Creates a new random master key and writes it, wrapped under the
    /// passphrase, to `path` (mode 0600, refusing to overwrite).
    ///
    /// # Errors
    /// [`KeystoreError::WeakPassphrase`], I/O errors naming the file.
    pub fn create(path: &Path, passphrase: &Passphrase) -> Result<Self, KeystoreError> {
        let master = DataKey::try_generate()?;
        create_locked(path, passphrase, "", &[], &master, MASTER_WRAP_CONTEXT)?;
        Ok(MasterKey(master))
    }

    /// Unlocks the master key in `path` with the passphrase.
    ///
    /// # Errors
    /// [`KeystoreError::WrongPassphrase`] when the passphrase does not unlock
    /// it; format and I/O errors naming the file.
    pub fn unlock(path: &Path, passphrase: &Passphrase) -> Result<Self, KeystoreError> {
        let (_, master) = unlock_locked(path, passphrase, "", MASTER_WRAP_CONTEXT)?;
        Ok(MasterKey(master))
    }

    /// A subkey for one purpose (BLAKE3 `derive_key` with a versioned context).
    #[must_use]
    pub fn derive(&self, context: &str) -> DataKey {
        self.0.derive(context)
    }

    /// Wraps a study or transfer data key, bound to `context`.
    ///
    /// # Errors
    /// [`KeystoreError::Crypto`] if the OS RNG fails.
    pub fn wrap(&self, key: &DataKey, context: &[u8]) -> Result<WrappedKey, KeystoreError> {
        Ok(wrap_key(&self.0, key, context)?)
    }

    /// Unwraps a data key wrapped with [`MasterKey::wrap`].
    ///
    /// # Errors
    /// [`KeystoreError::Crypto`] when the wrapped key does not authenticate.
    pub fn unwrap(&self, wrapped: &WrappedKey, context: &[u8]) -> Result<DataKey, KeystoreError> {
        Ok(unwrap_key(&self.0, wrapped, context)?)
    }

    /// Writes a secret key file: the public part in clear, the secret sealed
    /// under the master key (mode 0600, refusing to overwrite).
    ///
    /// # Errors
    /// I/O errors naming the file.
    pub fn write_secret(&self, path: &Path, kind: &str, public: &[u8], secret: &[u8]) -> Result<(), KeystoreError> {
        let sealed = seal_box(&self.0, secret_context(kind).as_bytes(), secret)?;
        let file = SecretKeyFile {
            v: KEYFILE_VERSION,
            kind: kind.into(),
            public: public.to_vec(),
            sealed,
        };
        let bytes = cbor::encode("secret key file", &file).map_err(|source| format_err(path, source))?;
        fsutil::write_new_private(path, &bytes).map_err(|source| io_err(path, source))
    }

    /// Reads a secret key file of the given kind; returns (public, secret).
    ///
    /// # Errors
    /// Format, I/O and authentication errors naming the file.
    pub fn read_secret(&self, path: &Path, kind: &str) -> Result<(Vec<u8>, Zeroizing<Vec<u8>>), KeystoreError> {
        let bytes = std::fs::read(path).map_err(|source| io_err(path, source))?;
        let file: SecretKeyFile =
            cbor::decode("secret key file", &bytes, MAX_KEYFILE_LEN).map_err(|source| format_err(path, source))?;
        cbor::check_version("secret key file", file.v, KEYFILE_VERSION).map_err(|source| format_err(path, source))?;
        if file.kind != kind {
            return Err(unsupported(
                path,
                KeyFileFault::SecretKind {
                    found: file.kind,
                    expected: kind.to_string(),
                },
            ));
        }
        let secret = open_box(&self.0, secret_context(kind).as_bytes(), &file.sealed)
            .map_err(|_| unsupported(path, KeyFileFault::DoesNotOpen))?;
        Ok((file.public, secret))
    }
}

/// Writes a 32-byte secret locked by a passphrase (Argon2id, then a wrapped
/// key bound to `context`), with its kind and public key in clear; mode
/// 0600, refusing to overwrite. The master key and consortium admin keys use
/// this format.
///
/// # Errors
/// [`KeystoreError::WeakPassphrase`], I/O errors naming the file.
pub fn create_locked(
    path: &Path,
    passphrase: &Passphrase,
    kind: &str,
    public: &[u8],
    secret: &DataKey,
    context: &[u8],
) -> Result<(), KeystoreError> {
    if passphrase.len() < MIN_PASSPHRASE_LEN {
        return Err(KeystoreError::WeakPassphrase);
    }
    let mut salt = [0u8; 16];
    getrandom::fill(&mut salt).map_err(|e| SealError::Random(e.to_string()))?;
    let kek = kek(passphrase, &salt, ARGON2_M_KIB, ARGON2_T, ARGON2_P)?;
    let wrapped = wrap_key(&kek, secret, context)?;
    let file = MasterKeyFile {
        v: KEYFILE_VERSION,
        kind: kind.into(),
        public: public.to_vec(),
        kdf: KDF_NAME.into(),
        m_kib: ARGON2_M_KIB,
        t: ARGON2_T,
        p: ARGON2_P,
        salt: salt.to_vec(),
        wrapped: wrapped.as_bytes().to_vec(),
    };
    let bytes = cbor::encode("passphrase-locked key file", &file).map_err(|source| format_err(path, source))?;
    fsutil::write_new_private(path, &bytes).map_err(|source| io_err(path, source))
}

/// Reads the public key of a passphrase-locked key file of `kind` without unlocking it.
///
/// # Errors
/// Format and I/O errors naming the file, or a file of another kind.
pub fn locked_public(path: &Path, kind: &str) -> Result<Vec<u8>, KeystoreError> {
    Ok(read_locked(path, kind)?.public)
}

fn read_locked(path: &Path, kind: &str) -> Result<MasterKeyFile, KeystoreError> {
    let bytes = std::fs::read(path).map_err(|source| io_err(path, source))?;
    let file: MasterKeyFile = cbor::decode("passphrase-locked key file", &bytes, MAX_KEYFILE_LEN)
        .map_err(|source| format_err(path, source))?;
    cbor::check_version("passphrase-locked key file", file.v, KEYFILE_VERSION)
        .map_err(|source| format_err(path, source))?;
    if file.kind != kind {
        let what = |k: &str| {
            if k.is_empty() {
                "master".to_string()
            } else {
                k.to_string()
            }
        };
        return Err(unsupported(
            path,
            KeyFileFault::LockedKind {
                found: what(&file.kind),
                expected: what(kind),
            },
        ));
    }
    Ok(file)
}

/// Unlocks a passphrase-locked key file of `kind`; returns (public, secret).
///
/// # Errors
/// [`KeystoreError::WrongPassphrase`]; format and I/O errors naming the file.
pub fn unlock_locked(
    path: &Path,
    passphrase: &Passphrase,
    kind: &str,
    context: &[u8],
) -> Result<(Vec<u8>, DataKey), KeystoreError> {
    let file = read_locked(path, kind)?;
    if file.kdf != KDF_NAME {
        return Err(unsupported(path, KeyFileFault::UnknownKdf { kdf: file.kdf }));
    }
    // Refuse parameters that would let a tampered file weaken the KDF or exhaust memory.
    if file.m_kib < 19 * 1024 || file.m_kib > 4 * 1024 * 1024 || file.t < 2 || file.t > 64 || file.p == 0 || file.p > 64
    {
        return Err(unsupported(path, KeyFileFault::KdfParameters));
    }
    if file.salt.len() < 16 {
        return Err(unsupported(path, KeyFileFault::ShortSalt));
    }
    let wrapped = WrappedKey::from_bytes(&file.wrapped).map_err(KeystoreError::Crypto)?;
    let kek = kek(passphrase, &file.salt, file.m_kib, file.t, file.p)?;
    let secret = unwrap_key(&kek, &wrapped, context).map_err(|_| KeystoreError::WrongPassphrase {
        path: path.display().to_string(),
    })?;
    Ok((file.public, secret))
}

fn secret_context(kind: &str) -> String {
    format!("medmesh/v1/secret key/{kind}")
}

fn io_err(path: &Path, source: std::io::Error) -> KeystoreError {
    KeystoreError::Io {
        path: path.display().to_string(),
        source,
    }
}

fn format_err(path: &Path, source: CodecError) -> KeystoreError {
    KeystoreError::Format {
        path: path.display().to_string(),
        source,
    }
}

fn unsupported(path: &Path, reason: KeyFileFault) -> KeystoreError {
    KeystoreError::Unsupported {
        path: path.display().to_string(),
        reason: Box::new(reason),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn create_unlock_and_wrong_passphrase() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("master.key");
        let pass = Passphrase::new("correct horse battery".into());
        let m = MasterKey::create(&path, &pass).unwrap();
        let again = MasterKey::unlock(&path, &pass).unwrap();
        assert_eq!(m.derive("x").expose_secret(), again.derive("x").expose_secret());
        let err = MasterKey::unlock(&path, &Passphrase::new("wrong passphrase".into())).unwrap_err();
        assert!(matches!(err, KeystoreError::WrongPassphrase { .. }), "{err}");
        assert!(err.to_string().contains("master.key"));
        // Refuses to overwrite.
        assert!(MasterKey::create(&path, &pass).is_err());
        assert!(matches!(
            MasterKey::create(&dir.path().join("b"), &Passphrase::new("short".into())),
            Err(KeystoreError::WeakPassphrase)
        ));
    }

    #[test]
    fn secret_files_round_trip_and_bind_kind() {
        let dir = tempfile::tempdir().unwrap();
        let pass = Passphrase::new("correct horse battery".into());
        let m = MasterKey::create(&dir.path().join("master.key"), &pass).unwrap();
        let p = dir.path().join("id.key");
        m.write_secret(&p, "ed25519", b"pub", b"secret bytes").unwrap();
        let (public, secret) = m.read_secret(&p, "ed25519").unwrap();
        assert_eq!(public, b"pub");
        assert_eq!(&secret[..], b"secret bytes");
        assert!(m.read_secret(&p, "x25519").is_err());
        let raw = std::fs::read(&p).unwrap();
        assert!(!raw.windows(12).any(|w| w == b"secret bytes"));
    }

    #[test]
    fn debug_hides_secrets() {
        assert_eq!(
            format!("{:?}", Passphrase::new("hunter2hunter2".into())),
            "Passphrase(..)"
        );
    }
}
