//! Inbound speaks SMTP to apps: listeners, TLS, the session state machine, AUTH, envelope and
//! DATA. It asks policy for decisions and hands accepted messages to transform and the queue;
//! it knows nothing about upstreams.

pub mod auth;
pub mod connection;
pub mod data;
pub mod envelope;
pub mod listener;
pub mod proxy;
pub mod quota;
pub mod reply;
pub mod session;
pub mod submit;
pub mod tls;

use std::sync::Arc;

use crate::config::Config;
use crate::policy::limits::{Limiter, MessageLimits};
use crate::policy::projects::Registry;
use crate::policy::throttle::Throttle;
use crate::queue::Queue;
use crate::transform::branding::BrandingStore;

/// What every session of the running server shares. A reload builds a new one (a clone with
/// the new config, TLS and limits); sessions keep the one they started with.
#[derive(Clone)]
pub struct Shared {
    pub config: Arc<Config>,
    pub registry: Registry,
    /// Per-project routes: the first upstream decides From rewriting at acceptance.
    pub routes: crate::policy::routes::RouteTable,
    pub queue: Queue,
    pub branding: BrandingStore,
    pub tls: Arc<rustls::ServerConfig>,
    pub limits: MessageLimits,
    /// Per-project rate windows and session counts.
    pub limiter: Limiter,
    /// Per-client-IP connection and AUTH-failure throttles.
    pub throttle: Arc<Throttle>,
    pub dkim: crate::transform::dkim_keys::DkimKeys,
    /// The server's last domain checks (`dns.require_verified_domain`).
    pub domain_reports: crate::domain_check::LastReports,
    /// Recipients the project's mail is refused for (policy::suppression).
    pub suppression: crate::policy::suppression::Suppressions,
    /// Shared with delivery: large messages in memory at once.
    pub memory: crate::memory_budget::MemoryBudget,
    /// Idempotency keys of SMTP messages and send API requests.
    pub idempotency: crate::policy::idempotency::Idempotency,
    /// Where sandbox projects' mail is captured.
    pub sandbox: crate::queue::sandbox::Sandbox,
    /// Becomes `true` when the server is shutting down.
    pub shutdown: tokio::sync::watch::Receiver<bool>,
}
