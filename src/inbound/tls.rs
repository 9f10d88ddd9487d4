//! Server-side TLS: loading the certificate and key, and generating a development
//! certificate on first start when the config asks for one.
//!
//! Every rustls config the relay builds — listeners, and (`outbound/client_tls.rs`) upstreams,
//! webhooks and token endpoints — uses one provider, aws-lc-rs, explicitly
//! (`builder_with_provider`). aws-lc-rs rather than ring: on this project's benchmark machine
//! it makes an RSA-2048 server signature in about half ring's time, and the full handshake is
//! most of a new connection's CPU (BENCHMARKS.md). ring stays in the tree only because
//! mail-auth and hickory are built on it. The same provider is also installed as the process
//! default ([`install_process_default`]) for the one library that builds a rustls config of
//! its own (redis, for `rediss://`): with both providers compiled into rustls, it could not
//! pick one.
//!
//! Both RSA and ECDSA (P-256, P-384) certificates work; the development certificate is ECDSA
//! P-256, whose signature costs a fraction of an RSA-2048 one. Resumption: stateless TLS 1.3
//! and TLS 1.2 tickets (a key rotated by rustls every 6 hours), so any number of clients can
//! resume without a server-side cache entry each (the stateful default holds 256): a client
//! that keeps sessions (Java's JSSE, so Jakarta Mail; rustls clients) skips the certificate
//! signature on every connection after its first. A session-ID cache remains for TLS 1.2
//! clients that do not take tickets.
//!
//! The listeners announce the ALPN names `smtp` and `esmtp` (as Exim does): a client that
//! offers ALPN but none of these — say only `http/1.1`, a browser lured into talking to the
//! relay (the ALPACA cross-protocol attack) — gets the `no_application_protocol` alert and no
//! session. Clients that offer no ALPN at all, which is every SMTP library today, are unaffected.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

use crate::config::TlsConfig;

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error(
        "TLS certificate file {0} does not exist (set [tls] cert_file, or generate_dev_cert = true)"
    )]
    MissingCert(PathBuf),
    #[error("TLS key file {0} does not exist (set [tls] key_file)")]
    MissingKey(PathBuf),
    #[error("cannot read TLS certificate {path}: {message}")]
    BadCert { path: PathBuf, message: String },
    #[error("cannot read TLS key {path}: {message}")]
    BadKey { path: PathBuf, message: String },
    #[error("TLS certificate and key do not work together: {0}")]
    Mismatch(String),
    #[error("cannot generate the development certificate in {path}: {message}")]
    Generate { path: PathBuf, message: String },
}

/// ALPN protocol names the SMTP listeners accept.
pub const ALPN: [&[u8]; 2] = [b"smtp", b"esmtp"];

/// Session-ID cache entries for TLS 1.2 clients without ticket support (a few hundred bytes
/// each); everyone else resumes with a stateless ticket.
const SESSION_CACHE_ENTRIES: usize = 1024;

/// The binary's one rustls crypto provider (module doc).
pub fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}

/// The listeners' provider: [`provider`] with AES-128-GCM suites ahead of AES-256-GCM.
fn server_provider() -> Arc<rustls::crypto::CryptoProvider> {
    use rustls::crypto::aws_lc_rs::cipher_suite as cs;
    let mut p = rustls::crypto::aws_lc_rs::default_provider();
    let first = [
        cs::TLS13_AES_128_GCM_SHA256,
        cs::TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256,
        cs::TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256,
    ];
    p.cipher_suites
        .sort_by_key(|s| !first.iter().any(|f| f.suite() == s.suite()));
    Arc::new(p)
}

/// Makes [`provider`] the process default, for libraries that build rustls configs without
/// naming a provider. Idempotent; call once at start, before any such library runs.
pub fn install_process_default() {
    // Err only when a default is already installed: then there is nothing to do.
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
}

/// Loads (or first generates) the server certificate and builds the acceptor config.
pub fn server_config(
    cfg: &TlsConfig,
    hostname: &str,
) -> Result<Arc<rustls::ServerConfig>, TlsError> {
    if cfg.generate_dev_cert && !cfg.cert_file.exists() && !cfg.key_file.exists() {
        generate_dev_cert(&cfg.cert_file, &cfg.key_file, hostname)?;
    }
    if !cfg.cert_file.exists() {
        return Err(TlsError::MissingCert(cfg.cert_file.clone()));
    }
    if !cfg.key_file.exists() {
        return Err(TlsError::MissingKey(cfg.key_file.clone()));
    }
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(&cfg.cert_file)
        .and_then(|it| it.collect::<Result<Vec<_>, _>>())
        .map_err(|e| TlsError::BadCert {
            path: cfg.cert_file.clone(),
            message: e.to_string(),
        })?;
    if certs.is_empty() {
        return Err(TlsError::BadCert {
            path: cfg.cert_file.clone(),
            message: "no PEM certificate found".into(),
        });
    }
    let key = PrivateKeyDer::from_pem_file(&cfg.key_file).map_err(|e| TlsError::BadKey {
        path: cfg.key_file.clone(),
        message: e.to_string(),
    })?;
    let mut config = rustls::ServerConfig::builder_with_provider(server_provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError::Mismatch(e.to_string()))?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|e| TlsError::Mismatch(e.to_string()))?;
    config.alpn_protocols = ALPN.iter().map(|p| p.to_vec()).collect();
    // The server's order (AES-128-GCM first, as in Mozilla's recommended configurations),
    // not the client's: most clients list AES-256-GCM-SHA384 first, whose SHA-384 key
    // schedule costs more per handshake than SHA-256 with the CPU's SHA extensions.
    config.ignore_client_order = true;
    // One TLS 1.3 ticket per handshake instead of rustls's two: a resuming client spends one
    // per connection.
    config.send_tls13_tickets = 1;
    // Stateless tickets (module doc): no per-client server memory, no 256-entry ceiling.
    config.ticketer = rustls::crypto::aws_lc_rs::Ticketer::new()
        .map_err(|e| TlsError::Mismatch(format!("cannot set up TLS session tickets: {e}")))?;
    config.session_storage = rustls::server::ServerSessionMemoryCache::new(SESSION_CACHE_ENTRIES);
    Ok(Arc::new(config))
}

fn generate_dev_cert(cert: &Path, key: &Path, hostname: &str) -> Result<(), TlsError> {
    let fail = |message: String| TlsError::Generate {
        path: cert.to_path_buf(),
        message,
    };
    let mut names = vec!["localhost".to_string(), "127.0.0.1".to_string()];
    if !names.iter().any(|n| n == hostname) {
        names.push(hostname.to_string());
    }
    let certified = rcgen::generate_simple_self_signed(names).map_err(|e| fail(e.to_string()))?;
    for path in [cert, key] {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|e| fail(e.to_string()))?;
        }
    }
    std::fs::write(cert, certified.cert.pem()).map_err(|e| fail(e.to_string()))?;
    write_private(key, certified.signing_key.serialize_pem().as_bytes())
        .map_err(|e| fail(e.to_string()))?;
    tracing::warn!(cert = %cert.display(), "generated a self-signed development certificate; configure a real one for production");
    Ok(())
}

fn write_private(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)?;
    f.write_all(bytes)?;
    f.sync_all()
}
