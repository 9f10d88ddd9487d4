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

use tokio::sync::watch;

use crate::config::Config;
pub use crate::http_listener::ClientAddr;
use crate::http_listener::{HttpListener, HttpListenerError, ListenerSpec};
use crate::inbound::Shared;

/// What the handlers share: the current [`Shared`] (a reload replaces it).
#[derive(Clone)]
pub struct ApiState {
    pub shared: watch::Receiver<Arc<Shared>>,
    /// Served over HTTPS (recorded in the Received header like SMTP's TLS).
    pub tls: bool,
}

pub struct SendApi {
    listener: HttpListener,
}

impl SendApi {
    /// Binds the configured address (and loads its certificate) before anything is served.
    pub async fn bind(config: &Config) -> Result<Option<SendApi>, HttpListenerError> {
        let c = &config.send_api;
        let Some(address) = c.address else {
            return Ok(None);
        };
        let spec = ListenerSpec {
            service: "send API",
            address,
            tls: c.tls,
            cert_file: c.cert_file.as_ref(),
            key_file: c.key_file.as_ref(),
        };
        Ok(Some(SendApi {
            listener: HttpListener::bind(spec, config).await?,
        }))
    }

    pub fn local_addr(&self) -> Option<SocketAddr> {
        self.listener.local_addr()
    }

    pub fn is_tls(&self) -> bool {
        self.listener.is_tls()
    }

    /// Serves until `shutdown`.
    pub async fn serve(self, state: ApiState, shutdown: crate::shutdown::Signal) {
        self.listener.serve(emails::router(state), shutdown).await;
    }
}
