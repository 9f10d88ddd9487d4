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
mod sandbox_api;
pub mod session;

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
