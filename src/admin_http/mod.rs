//! The HTTP admin API and web panel: the admin operations (`admin::execute`) over HTTP/1.1,
//! as JSON for scripts (`/api/v1`, bearer tokens) and as HTML pages for people (`/`, session
//! cookies). It owns the listener, TLS, deadlines, authentication and sessions; it never
//! touches a store itself, so the CLI, the Unix socket and HTTP cannot drift apart.
//!
//! `[admin_http] address` turns it on. Off loopback it must be HTTPS (`tls = true`, with the
//! relay's certificate or its own), checked at config time. Every connection has a header
//! deadline and an overall deadline, like every other read in the relay.

pub mod api;
pub mod auth;
pub mod openapi;
mod pages;
pub mod panel;
pub mod session;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;

use crate::admin::AdminContext;
use crate::config::{Config, TlsConfig};
use crate::policy::throttle::Throttle;

/// Deadline for the request headers.
const HEADER_TIMEOUT: Duration = Duration::from_secs(10);
/// Deadline for a whole connection (keep-alive included).
const CONNECTION_TIMEOUT: Duration = Duration::from_secs(120);

#[derive(Debug, thiserror::Error)]
pub enum AdminHttpError {
    #[error("cannot listen for the admin API on {address}: {source}")]
    Bind {
        address: SocketAddr,
        source: std::io::Error,
    },
    #[error("admin API TLS: {0}")]
    Tls(#[from] crate::inbound::tls::TlsError),
}

/// What the HTTP handlers share.
#[derive(Clone)]
pub struct HttpState {
    pub admin: AdminContext,
    /// Failed bearer tokens, per client IP, with the SMTP AUTH policy (delay, cool-down).
    pub throttle: Arc<Throttle>,
}

pub struct AdminHttp {
    listener: TcpListener,
    tls: Option<tokio_rustls::TlsAcceptor>,
    session_ttl: Duration,
}

impl AdminHttp {
    /// Binds the configured address (and loads its certificate) before anything is served.
    pub async fn bind(config: &Config) -> Result<Option<AdminHttp>, AdminHttpError> {
        let Some(address) = config.admin_http.address else {
            return Ok(None);
        };
        let tls = if config.admin_http.tls {
            let tls_config = match (&config.admin_http.cert_file, &config.admin_http.key_file) {
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
            .map_err(|source| AdminHttpError::Bind { address, source })?;
        let session_ttl = Duration::from_secs_f64(config.admin_http.session_hours * 3600.0);
        Ok(Some(AdminHttp {
            listener,
            tls,
            session_ttl,
        }))
    }

    pub fn local_addr(&self) -> Option<SocketAddr> {
        self.listener.local_addr().ok()
    }

    /// The URL people open (`https://` when served with TLS).
    pub fn url(&self) -> String {
        let scheme = if self.tls.is_some() { "https" } else { "http" };
        match self.local_addr() {
            Some(a) => format!("{scheme}://{a}/"),
            None => format!("{scheme}://?/"),
        }
    }

    /// Serves until `shutdown`.
    pub async fn serve(self, state: HttpState, mut shutdown: crate::shutdown::Signal) {
        let scheme = if self.tls.is_some() { "https" } else { "http" };
        let panel = panel::PanelState {
            http: state.clone(),
            sessions: Arc::new(session::Sessions::new(self.session_ttl, self.tls.is_some())),
            scheme,
        };
        // The API's fallback (JSON 404) answers whatever the panel does not route.
        let router = panel::router(panel).merge(api::router(state));
        loop {
            let accepted = tokio::select! {
                a = self.listener.accept() => a,
                _ = crate::shutdown::stopped(&mut shutdown) => return,
            };
            let (tcp, peer) = match accepted {
                Ok(a) => a,
                Err(e) => {
                    tracing::warn!(error = %e, "admin API accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            };
            let _ = tcp.set_nodelay(true);
            // The client address reaches the handlers through a request extension.
            let app = router
                .clone()
                .layer(axum::Extension(auth::ClientAddr(peer)));
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
