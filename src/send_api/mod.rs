//! The HTTP send API: Resend-compatible `POST /emails` and `POST /emails/batch`, so an app
//! that sends with Resend's SDKs switches to the relay by changing the base URL and the key.
//!
//! It owns its own listener (`[send_api]`), apart from the admin API: apps and admins are
//! different audiences, and the admin port can stay on loopback while this one is exposed.
//! Off loopback it must be HTTPS (checked at config time). Every connection has a header
//! deadline and an overall deadline. A request is authenticated with the project's SMTP token
//! (`Authorization: Bearer smtpr_…`), turned into a MIME message by mail-builder and handed
//! to `inbound::submit` — the same acceptance path as SMTP DATA, so sender checks, limits,
//! branding, DKIM and the durable queue are the same code; `200` only once it is queued.

pub mod emails;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::config::{Config, TlsConfig};
use crate::inbound::Shared;

/// Deadline for the request headers.
const HEADER_TIMEOUT: Duration = Duration::from_secs(10);
/// Deadline for a whole connection (keep-alive included): a request body has to arrive
/// within it.
const CONNECTION_TIMEOUT: Duration = Duration::from_secs(120);

#[derive(Debug, thiserror::Error)]
pub enum SendApiError {
    #[error("cannot listen for the send API on {address}: {source}")]
    Bind {
        address: SocketAddr,
        source: std::io::Error,
    },
    #[error("send API TLS: {0}")]
    Tls(#[from] crate::inbound::tls::TlsError),
}

/// The TCP peer of the connection (set by the accept loop).
#[derive(Debug, Clone, Copy)]
pub struct ClientAddr(pub SocketAddr);

/// What the handlers share: the current [`Shared`] (a reload replaces it).
#[derive(Clone)]
pub struct ApiState {
    pub shared: watch::Receiver<Arc<Shared>>,
    /// Served over HTTPS (recorded in the Received header like SMTP's TLS).
    pub tls: bool,
}

pub struct SendApi {
    listener: TcpListener,
    tls: Option<tokio_rustls::TlsAcceptor>,
}

impl SendApi {
    /// Binds the configured address (and loads its certificate) before anything is served.
    pub async fn bind(config: &Config) -> Result<Option<SendApi>, SendApiError> {
        let Some(address) = config.send_api.address else {
            return Ok(None);
        };
        let tls = if config.send_api.tls {
            let tls_config = match (&config.send_api.cert_file, &config.send_api.key_file) {
                (Some(cert), Some(key)) => TlsConfig {
                    cert_file: cert.clone(),
                    key_file: key.clone(),
                    generate_dev_cert: false,
                },
                _ => config.tls.clone(),
            };
            let mut server =
                (*crate::inbound::tls::server_config(&tls_config, &config.server.hostname)?)
                    .clone();
            server.alpn_protocols = vec![b"http/1.1".to_vec()];
            Some(tokio_rustls::TlsAcceptor::from(Arc::new(server)))
        } else {
            None
        };
        let listener = TcpListener::bind(address)
            .await
            .map_err(|source| SendApiError::Bind { address, source })?;
        Ok(Some(SendApi { listener, tls }))
    }

    pub fn local_addr(&self) -> Option<SocketAddr> {
        self.listener.local_addr().ok()
    }

    pub fn is_tls(&self) -> bool {
        self.tls.is_some()
    }

    /// Serves until `shutdown`.
    pub async fn serve(self, state: ApiState, mut shutdown: crate::shutdown::Signal) {
        let router = emails::router(state);
        loop {
            let accepted = tokio::select! {
                a = self.listener.accept() => a,
                _ = crate::shutdown::stopped(&mut shutdown) => return,
            };
            let (tcp, peer) = match accepted {
                Ok(a) => a,
                Err(e) => {
                    tracing::warn!(error = %e, "send API accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            };
            let _ = tcp.set_nodelay(true);
            let app = router.clone().layer(axum::Extension(ClientAddr(peer)));
            let tls = self.tls.clone();
            tokio::spawn(async move {
                let service = TowerToHyperService::new(app);
                let builder = {
                    let mut b = hyper::server::conn::http1::Builder::new();
                    b.timer(TokioTimer::new())
                        .header_read_timeout(HEADER_TIMEOUT);
                    b
                };
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
