//! Inbound speaks SMTP to apps: listeners, TLS, the session state machine, AUTH, envelope and
//! DATA. It asks policy for decisions and hands accepted messages to transform and the queue;
//! it knows nothing about upstreams.

pub mod auth;
pub mod connection;
pub mod data;
pub mod envelope;
pub mod listener;
pub mod reply;
pub mod session;
pub mod tls;

use std::sync::Arc;

use crate::config::Config;
use crate::policy::limits::MessageLimits;
use crate::policy::projects::Registry;
use crate::queue::Queue;
use crate::transform::branding::BrandingStore;

/// What every session of the running server shares.
pub struct Shared {
    pub config: Arc<Config>,
    pub registry: Registry,
    pub queue: Queue,
    pub branding: BrandingStore,
    pub tls: Arc<rustls::ServerConfig>,
    pub limits: MessageLimits,
    pub dkim: crate::transform::dkim_keys::DkimKeys,
    /// Becomes `true` when the server is shutting down.
    pub shutdown: tokio::sync::watch::Receiver<bool>,
}
