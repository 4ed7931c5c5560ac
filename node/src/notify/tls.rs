//! TLS client configuration for https:// webhooks and syslog over TLS
//! (rustls with its aws-lc-rs provider, the one libp2p already uses).

use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

use super::SinkConfigError;

/// A client configuration trusting the certificates of `ca_file` (PEM) or,
/// when it is empty, the Mozilla roots; with `client` = (certificate
/// chain, private key) PEM files, the node authenticates itself too.
///
/// # Errors
/// [`SinkConfigError`]: a file that cannot be read or holds no usable
/// certificate or key, naming it.
pub fn client_config(
    ca_file: &str,
    client: Option<(&str, &str)>,
) -> Result<Arc<rustls::ClientConfig>, SinkConfigError> {
    let pem = |file: &str| {
        let file = file.to_string();
        move |source| SinkConfigError::Pem { file, source }
    };
    let tls = |file: &str| {
        let file = file.to_string();
        move |source| SinkConfigError::Tls { file, source }
    };
    let mut roots = rustls::RootCertStore::empty();
    if ca_file.is_empty() {
        roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    } else {
        let certs = CertificateDer::pem_file_iter(ca_file).map_err(pem(ca_file))?;
        for c in certs {
            let c = c.map_err(pem(ca_file))?;
            roots.add(c).map_err(tls(ca_file))?;
        }
        if roots.is_empty() {
            return Err(SinkConfigError::NoCertificate {
                file: ca_file.to_string(),
            });
        }
    }
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(SinkConfigError::Protocols)?
        .with_root_certificates(roots);
    let config = match client {
        None => builder.with_no_client_auth(),
        Some((cert_file, key_file)) => {
            let chain = CertificateDer::pem_file_iter(cert_file)
                .map_err(pem(cert_file))?
                .collect::<Result<Vec<_>, _>>()
                .map_err(pem(cert_file))?;
            if chain.is_empty() {
                return Err(SinkConfigError::NoCertificate {
                    file: cert_file.to_string(),
                });
            }
            let key = PrivateKeyDer::from_pem_file(key_file).map_err(pem(key_file))?;
            builder.with_client_auth_cert(chain, key).map_err(tls(cert_file))?
        }
    };
    Ok(Arc::new(config))
}
