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
mod branding_page;
mod dkim_api;
mod dkim_page;
pub mod openapi;
mod pages;
pub mod panel;
mod sandbox_api;
mod send_test_page;
pub mod session;
mod tokens_page;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use crate::admin::AdminContext;
use crate::config::Config;
use crate::http_listener::{HttpListener, HttpListenerError, ListenerSpec};
use crate::policy::throttle::Throttle;

/// What the HTTP handlers share.
#[derive(Clone)]
pub struct HttpState {
    pub admin: AdminContext,
    /// Failed bearer tokens, per client IP, with the SMTP AUTH policy (delay, cool-down).
    pub throttle: Arc<Throttle>,
}

pub struct AdminHttp {
    listener: HttpListener,
    session_ttl: Duration,
}

impl AdminHttp {
    /// Binds the configured address (and loads its certificate) before anything is served.
    pub async fn bind(config: &Config) -> Result<Option<AdminHttp>, HttpListenerError> {
        let c = &config.admin_http;
        let Some(address) = c.address else {
            return Ok(None);
        };
        let spec = ListenerSpec {
            service: "admin API",
            address,
            tls: c.tls,
            cert_file: c.cert_file.as_ref(),
            key_file: c.key_file.as_ref(),
        };
        let listener = HttpListener::bind(spec, config).await?;
        let session_ttl = Duration::from_secs_f64(config.admin_http.session_hours * 3600.0);
        Ok(Some(AdminHttp {
            listener,
            session_ttl,
        }))
    }

    /// [`bind`](Self::bind), except that with the built-in development config a port already
    /// in use is a warning and the panel stays off: a second `smtp-relay serve` on the same
    /// machine, or anything else on 2580, must not stop a first run. A config file's address
    /// is the operator's choice, so there it stays an error.
    pub async fn bind_for(config: &Config) -> Result<Option<AdminHttp>, HttpListenerError> {
        match AdminHttp::bind(config).await {
            Err(HttpListenerError::Bind {
                address, source, ..
            }) if config.is_builtin() && source.kind() == std::io::ErrorKind::AddrInUse => {
                tracing::warn!(
                    address = %address,
                    "web panel off: {address} is in use (built-in config; set [admin_http] \
                     address in a config file to choose another)"
                );
                Ok(None)
            }
            other => other,
        }
    }

    pub fn local_addr(&self) -> Option<SocketAddr> {
        self.listener.local_addr()
    }

    /// The URL people open (`https://` when served with TLS).
    pub fn url(&self) -> String {
        let scheme = if self.listener.is_tls() {
            "https"
        } else {
            "http"
        };
        match self.local_addr() {
            Some(a) => format!("{scheme}://{a}/"),
            None => format!("{scheme}://?/"),
        }
    }

    /// Serves until `shutdown`.
    pub async fn serve(self, state: HttpState, shutdown: crate::shutdown::Signal) {
        let scheme = if self.listener.is_tls() {
            "https"
        } else {
            "http"
        };
        let panel = panel::PanelState {
            http: state.clone(),
            sessions: Arc::new(session::Sessions::new(
                self.session_ttl,
                self.listener.is_tls(),
            )),
            scheme,
        };
        // The API's fallback (JSON 404) answers whatever the panel does not route.
        let router = panel::router(panel).merge(api::router(state));
        self.listener.serve(router, shutdown).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn busy_port_warns_for_the_builtin_config_only() {
        let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let mut c = Config::builtin().unwrap();
        c.admin_http.address = Some(taken.local_addr().unwrap());
        assert!(AdminHttp::bind_for(&c).await.unwrap().is_none());
        // The same settings from a file of the operator's: the start fails, naming the address.
        let mut explicit = Config::parse(
            crate::config::DEFAULT_CONFIG,
            "/etc/smtp-relay/smtp-relay.toml",
        )
        .unwrap();
        explicit.admin_http.address = Some(taken.local_addr().unwrap());
        assert!(!explicit.is_builtin());
        let e = AdminHttp::bind_for(&explicit)
            .await
            .err()
            .expect("an error");
        assert!(
            e.to_string().contains("cannot listen for the admin API"),
            "{e}"
        );
    }
}
