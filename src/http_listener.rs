//! One HTTP listener for the relay's HTTP services (the admin API and panel, the send API):
//! bind, optional TLS with the relay's certificate or the section's own, and the accept loop
//! that serves each connection with HTTP/1.1 under a header deadline and an overall deadline,
//! until shutdown. The services bring their routers; how a connection is accepted, secured
//! and timed out is the same for all of them, so it is written once.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;

use crate::config::{Config, TlsConfig};

/// Deadline for the request headers (and the TLS handshake).
const HEADER_TIMEOUT: Duration = Duration::from_secs(10);
/// Deadline for a whole connection (keep-alive included): a request body has to arrive
/// within it.
const CONNECTION_TIMEOUT: Duration = Duration::from_secs(120);

#[derive(Debug, thiserror::Error)]
pub enum HttpListenerError {
    #[error("cannot listen for the {service} on {address}: {source}")]
    Bind {
        service: &'static str,
        address: SocketAddr,
        source: std::io::Error,
    },
    #[error("{service} TLS: {source}")]
    Tls {
        service: &'static str,
        source: crate::inbound::tls::TlsError,
    },
}

/// The TCP peer of a connection, given to the handlers as a request extension.
#[derive(Debug, Clone, Copy)]
pub struct ClientAddr(pub SocketAddr);

/// The token of an `Authorization: Bearer <token>` header (scheme case-insensitive).
pub fn bearer_token(headers: &axum::http::HeaderMap) -> Option<&str> {
    let value = headers
        .get(axum::http::header::AUTHORIZATION)?
        .to_str()
        .ok()?;
    let (scheme, token) = value.split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
}

/// What a config section says about its listener.
pub struct ListenerSpec<'a> {
    /// For logs and errors: "admin API", "send API".
    pub service: &'static str,
    pub address: SocketAddr,
    pub tls: bool,
    /// The section's own certificate and key; `None`: the relay's (`[tls]`).
    pub cert_file: Option<&'a PathBuf>,
    pub key_file: Option<&'a PathBuf>,
}

pub struct HttpListener {
    service: &'static str,
    listener: TcpListener,
    tls: Option<tokio_rustls::TlsAcceptor>,
}

impl HttpListener {
    /// Binds the address (and loads the certificate) before anything is served.
    pub async fn bind(
        spec: ListenerSpec<'_>,
        config: &Config,
    ) -> Result<HttpListener, HttpListenerError> {
        let service = spec.service;
        let tls = if spec.tls {
            let tls_config = match (spec.cert_file, spec.key_file) {
                (Some(cert), Some(key)) => TlsConfig {
                    cert_file: cert.clone(),
                    key_file: key.clone(),
                    generate_dev_cert: false,
                },
                _ => config.tls.clone(),
            };
            let server = crate::inbound::tls::server_config(&tls_config, &config.server.hostname)
                .map_err(|source| HttpListenerError::Tls { service, source })?;
            let mut server = (*server).clone();
            server.alpn_protocols = vec![b"http/1.1".to_vec()];
            Some(tokio_rustls::TlsAcceptor::from(Arc::new(server)))
        } else {
            None
        };
        let address = spec.address;
        let listener =
            TcpListener::bind(address)
                .await
                .map_err(|source| HttpListenerError::Bind {
                    service,
                    address,
                    source,
                })?;
        Ok(HttpListener {
            service,
            listener,
            tls,
        })
    }

    pub fn local_addr(&self) -> Option<SocketAddr> {
        self.listener.local_addr().ok()
    }

    pub fn is_tls(&self) -> bool {
        self.tls.is_some()
    }

    /// Serves `router` until `shutdown`; each request carries its connection's [`ClientAddr`].
    pub async fn serve(self, router: axum::Router, mut shutdown: crate::shutdown::Signal) {
        loop {
            let accepted = tokio::select! {
                a = self.listener.accept() => a,
                _ = crate::shutdown::stopped(&mut shutdown) => return,
            };
            let (tcp, peer) = match accepted {
                Ok(a) => a,
                Err(e) => {
                    tracing::warn!(service = self.service, error = %e, "HTTP accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            };
            let _ = tcp.set_nodelay(true);
            let app = router.clone().layer(axum::Extension(ClientAddr(peer)));
            let tls = self.tls.clone();
            tokio::spawn(async move {
                let service = TowerToHyperService::new(app);
                let mut builder = hyper::server::conn::http1::Builder::new();
                builder
                    .timer(TokioTimer::new())
                    .header_read_timeout(HEADER_TIMEOUT);
                let served = async {
                    match tls {
                        Some(acceptor) => {
                            let Ok(Ok(stream)) =
                                tokio::time::timeout(HEADER_TIMEOUT, acceptor.accept(tcp)).await
                            else {
                                return;
                            };
                            let _ = builder
                                .serve_connection(TokioIo::new(stream), service)
                                .await;
                        }
                        None => {
                            let _ = builder.serve_connection(TokioIo::new(tcp), service).await;
                        }
                    }
                };
                let _ = tokio::time::timeout(CONNECTION_TIMEOUT, served).await;
            });
        }
    }
}
