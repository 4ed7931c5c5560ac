//! DICOM TLS (PS3.15 Annex B) on rustls with the aws-lc-rs provider (the one
//! already in the tree): TLS 1.2 and 1.3, PEM files.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

/// Errors of building a TLS configuration.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TlsError {
    /// A PEM file cannot be read or parsed.
    #[error("cannot read PEM file {file}: {source}")]
    Pem {
        /// The file.
        file: PathBuf,
        /// The cause.
        source: rustls::pki_types::pem::Error,
    },
    /// A PEM file holds no certificate.
    #[error("{0} holds no certificate")]
    NoCertificate(PathBuf),
    /// rustls refused the certificates, key or protocol versions.
    #[error("TLS configuration with {file}: {source}")]
    Rustls {
        /// The file concerned.
        file: PathBuf,
        /// The cause.
        source: rustls::Error,
    },
    /// The client certificate verifier could not be built.
    #[error("client CA {file}: {source}")]
    Verifier {
        /// The CA file.
        file: PathBuf,
        /// The cause.
        source: rustls::server::VerifierBuilderError,
    },
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}

fn certs(file: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let pem = |source| TlsError::Pem {
        file: file.to_path_buf(),
        source,
    };
    let chain = CertificateDer::pem_file_iter(file)
        .map_err(pem)?
        .collect::<Result<Vec<_>, _>>()
        .map_err(pem)?;
    if chain.is_empty() {
        return Err(TlsError::NoCertificate(file.to_path_buf()));
    }
    Ok(chain)
}

fn key(file: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    PrivateKeyDer::from_pem_file(file).map_err(|source| TlsError::Pem {
        file: file.to_path_buf(),
        source,
    })
}

fn roots(file: &Path) -> Result<rustls::RootCertStore, TlsError> {
    let mut roots = rustls::RootCertStore::empty();
    for c in certs(file)? {
        roots.add(c).map_err(|source| TlsError::Rustls {
            file: file.to_path_buf(),
            source,
        })?;
    }
    Ok(roots)
}

/// The SCP's server configuration: its certificate chain and key; with
/// `client_ca`, a client certificate signed by one of its CAs is required.
///
/// # Errors
/// [`TlsError`] naming the file.
pub fn server_config(
    cert: &Path,
    key_file: &Path,
    client_ca: Option<&Path>,
) -> Result<Arc<rustls::ServerConfig>, TlsError> {
    let rustls_err = |file: &Path| {
        let file = file.to_path_buf();
        move |source| TlsError::Rustls { file, source }
    };
    let builder = rustls::ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(rustls_err(cert))?;
    let builder = match client_ca {
        None => builder.with_no_client_auth(),
        Some(ca) => {
            let verifier =
                rustls::server::WebPkiClientVerifier::builder_with_provider(Arc::new(roots(ca)?), provider())
                    .build()
                    .map_err(|source| TlsError::Verifier {
                        file: ca.to_path_buf(),
                        source,
                    })?;
            builder.with_client_cert_verifier(verifier)
        }
    };
    let config = builder
        .with_single_cert(certs(cert)?, key(key_file)?)
        .map_err(rustls_err(cert))?;
    Ok(Arc::new(config))
}

/// A client configuration trusting the CAs of `ca` and, with `client` =
/// (certificate chain, key), presenting that certificate.
///
/// # Errors
/// [`TlsError`] naming the file.
pub fn client_config(ca: &Path, client: Option<(&Path, &Path)>) -> Result<Arc<rustls::ClientConfig>, TlsError> {
    let builder = rustls::ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(|source| TlsError::Rustls {
            file: ca.to_path_buf(),
            source,
        })?
        .with_root_certificates(roots(ca)?);
    let config = match client {
        None => builder.with_no_client_auth(),
        Some((cert, key_file)) => builder
            .with_client_auth_cert(certs(cert)?, key(key_file)?)
            .map_err(|source| TlsError::Rustls {
                file: cert.to_path_buf(),
                source,
            })?,
    };
    Ok(Arc::new(config))
}

/// A client configuration trusting the Mozilla roots (a destination with
/// `tls = true` and no `tls_ca`), presenting `client` when given.
///
/// # Errors
/// [`TlsError`] naming the file.
pub fn client_config_system_roots(client: Option<(&Path, &Path)>) -> Result<Arc<rustls::ClientConfig>, TlsError> {
    let mut roots = rustls::RootCertStore::empty();
    roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    let builder = rustls::ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(|source| TlsError::Rustls {
            file: PathBuf::from("(Mozilla roots)"),
            source,
        })?
        .with_root_certificates(roots);
    let config = match client {
        None => builder.with_no_client_auth(),
        Some((cert, key_file)) => builder
            .with_client_auth_cert(certs(cert)?, key(key_file)?)
            .map_err(|source| TlsError::Rustls {
                file: cert.to_path_buf(),
                source,
            })?,
    };
    Ok(Arc::new(config))
}
