//! TLS with rustls, for AMQPS and for the management listener's HTTPS: the server certificate
//! and key from PEM files, and optionally client certificates checked against a CA (RabbitMQ's
//! `ssl_options.verify = verify_peer`, required when `ssl_options.fail_if_no_peer_cert = true`;
//! `management.ssl.*` likewise).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio_rustls::rustls::server::WebPkiClientVerifier;
use tokio_rustls::rustls::{RootCertStore, ServerConfig};
use tokio_rustls::TlsAcceptor;

/// RabbitMQ's `ssl_options.*` (AMQPS) or `management.ssl.*` (HTTPS).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct TlsSettings {
    pub certfile: Option<PathBuf>,
    pub keyfile: Option<PathBuf>,
    pub cacertfile: Option<PathBuf>,
    /// Ask clients for a certificate and check it against `cacertfile`.
    pub verify_peer: bool,
    /// With `verify_peer`: refuse clients that send no certificate.
    pub fail_if_no_peer_cert: bool,
}

fn certs(setting: &str, path: &Path) -> Result<Vec<CertificateDer<'static>>, String> {
    let certs: Vec<_> = CertificateDer::pem_file_iter(path)
        .map_err(|e| format!("{setting} {}: {e}", path.display()))?
        .collect::<Result<_, _>>()
        .map_err(|e| format!("{setting} {}: {e}", path.display()))?;
    if certs.is_empty() {
        return Err(format!("{setting} {}: no PEM certificate in it", path.display()));
    }
    Ok(certs)
}

/// Builds the acceptor, or says which setting is wrong and why (a missing file, no certificate
/// or key in it, a key that does not match the certificate, an unusable CA). `prefix` is where
/// the settings came from, `ssl_options` or `management.ssl`, so errors name the right key.
pub fn acceptor(s: &TlsSettings, prefix: &str) -> Result<TlsAcceptor, String> {
    let provider = Arc::new(tokio_rustls::rustls::crypto::ring::default_provider());
    let certfile = s.certfile.as_deref().ok_or_else(|| format!("{prefix}.certfile is required for a TLS listener"))?;
    let keyfile = s.keyfile.as_deref().ok_or_else(|| format!("{prefix}.keyfile is required for a TLS listener"))?;
    let chain = certs(&format!("{prefix}.certfile"), certfile)?;
    let key = PrivateKeyDer::from_pem_file(keyfile)
        .map_err(|e| format!("{prefix}.keyfile {}: no usable private key: {e}", keyfile.display()))?;
    let builder = ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("TLS: {e}"))?;
    let builder = if s.verify_peer {
        let cafile = s
            .cacertfile
            .as_deref()
            .ok_or_else(|| format!("{prefix}.verify = verify_peer needs {prefix}.cacertfile"))?;
        let mut roots = RootCertStore::empty();
        for ca in certs(&format!("{prefix}.cacertfile"), cafile)? {
            roots.add(ca).map_err(|e| format!("{prefix}.cacertfile {}: {e}", cafile.display()))?;
        }
        let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider);
        let verifier = if s.fail_if_no_peer_cert { verifier } else { verifier.allow_unauthenticated() };
        builder.with_client_cert_verifier(verifier.build().map_err(|e| format!("{prefix}.cacertfile: {e}"))?)
    } else {
        builder.with_no_client_auth()
    };
    let config = builder.with_single_cert(chain, key).map_err(|e| {
        format!("{prefix}.certfile {} and {prefix}.keyfile {}: {e}", certfile.display(), keyfile.display())
    })?;
    Ok(TlsAcceptor::from(Arc::new(config)))
}
