//! TLS client configuration for https:// webhooks and syslog over TLS
//! (rustls with its aws-lc-rs provider, the one libp2p already uses).

use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

/// A client configuration trusting the certificates of `ca_file` (PEM) or,
/// when it is empty, the Mozilla roots; with `client` = (certificate
/// chain, private key) PEM files, the node authenticates itself too.
///
/// # Errors
/// A file that cannot be read or holds no usable certificate or key, as a
/// message naming it.
pub fn client_config(ca_file: &str, client: Option<(&str, &str)>) -> Result<Arc<rustls::ClientConfig>, String> {
    let mut roots = rustls::RootCertStore::empty();
    if ca_file.is_empty() {
        roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    } else {
        let certs = CertificateDer::pem_file_iter(ca_file).map_err(|e| format!("{ca_file}: {e}"))?;
        for c in certs {
            let c = c.map_err(|e| format!("{ca_file}: {e}"))?;
            roots.add(c).map_err(|e| format!("{ca_file}: {e}"))?;
        }
        if roots.is_empty() {
            return Err(format!("{ca_file}: no certificate"));
        }
    }
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_root_certificates(roots);
    let config = match client {
        None => builder.with_no_client_auth(),
        Some((cert_file, key_file)) => {
            let chain = CertificateDer::pem_file_iter(cert_file)
                .map_err(|e| format!("{cert_file}: {e}"))?
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| format!("{cert_file}: {e}"))?;
            if chain.is_empty() {
                return Err(format!("{cert_file}: no certificate"));
            }
            let key = PrivateKeyDer::from_pem_file(key_file).map_err(|e| format!("{key_file}: {e}"))?;
            builder
                .with_client_auth_cert(chain, key)
                .map_err(|e| format!("{cert_file}: {e}"))?
        }
    };
    Ok(Arc::new(config))
}
