//! Client-side TLS toward upstreams and token endpoints — the binary's one rustls provider,
//! the trusted roots (a CA file or the public web roots) — and the error building an upstream
//! can end in. Both `upstream.rs` (SMTP) and `oauth2.rs` (token requests) use it; keeping it
//! here lets `upstream` depend on `oauth2` without `oauth2` depending back on `upstream`.

use std::sync::Arc;

use rustls_pki_types::CertificateDer;
use rustls_pki_types::pem::PemObject;
use tokio_rustls::TlsConnector;

#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    #[error("upstream {name}: cannot read CA file {path}: {message}")]
    CaFile {
        name: String,
        path: String,
        message: String,
    },
    #[error("upstream {name}: {message}")]
    Credential { name: String, message: String },
    #[error("upstream {name}: TLS setup failed: {message}")]
    Tls { name: String, message: String },
    #[error(transparent)]
    Config(#[from] crate::config::ConfigError),
}

/// Root store for upstream certificates: the CA file if given, else the public web roots.
pub fn root_store(
    name: &str,
    ca_file: Option<&std::path::Path>,
) -> Result<rustls::RootCertStore, UpstreamError> {
    let mut roots = rustls::RootCertStore::empty();
    match ca_file {
        Some(path) => {
            let fail = |message: String| UpstreamError::CaFile {
                name: name.to_string(),
                path: path.display().to_string(),
                message,
            };
            let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(path)
                .and_then(|it| it.collect::<Result<Vec<_>, _>>())
                .map_err(|e| fail(e.to_string()))?;
            if certs.is_empty() {
                return Err(fail("no PEM certificate in file".into()));
            }
            for c in certs {
                roots.add(c).map_err(|e| fail(e.to_string()))?;
            }
        }
        None => roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned()),
    }
    Ok(roots)
}

/// A rustls client config with the binary's one crypto provider.
pub fn client_config(
    name: &str,
    roots: rustls::RootCertStore,
) -> Result<rustls::ClientConfig, UpstreamError> {
    Ok(
        rustls::ClientConfig::builder_with_provider(crate::inbound::tls::provider())
            .with_safe_default_protocol_versions()
            .map_err(|e| UpstreamError::Tls {
                name: name.to_string(),
                message: e.to_string(),
            })?
            .with_root_certificates(roots)
            .with_no_client_auth(),
    )
}

pub fn tls_connector(
    name: &str,
    ca_file: Option<&std::path::Path>,
) -> Result<TlsConnector, UpstreamError> {
    let config = client_config(name, root_store(name, ca_file)?)?;
    Ok(TlsConnector::from(Arc::new(config)))
}
