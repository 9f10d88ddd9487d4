//! smtp-relay: a self-hosted, multi-tenant SMTP submission relay.
//!
//! Mail moves one way through single-purpose stages. [`inbound`] speaks SMTP to apps (TLS,
//! AUTH with a project ID and token, envelope, DATA); [`policy`] decides who the client is and
//! what it may send; [`transform`] turns accepted bytes into the bytes that will leave;
//! [`queue`] makes them durable before the `250` and keeps them until they are done;
//! [`outbound`] forwards them to the upstream provider with retries. [`store`] opens the one
//! sled database, [`admin`] holds the operations the CLI runs, [`server`] wires it together;
//! [`logging`], [`metrics`] and [`systemd`] are how operators watch and run it;
//! [`memory_budget`] bounds how many large messages are in memory at once.

pub mod admin;
pub mod admin_http;
pub mod cli;
pub mod cluster;
pub mod config;
pub mod domain_check;
pub mod events;
pub mod health;
pub mod http_listener;
pub mod inbound;
pub mod logging;
pub mod memory_budget;
pub mod metrics;
pub mod outbound;
pub mod policy;
pub mod queue;
pub mod reload;
pub mod retention;
pub mod sealing;
pub mod secret;
pub mod send_api;
pub mod server;
pub mod shutdown;
pub mod store;
pub mod systemd;
pub mod transform;

/// Seconds since the Unix epoch.
pub fn now_secs() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// Runs blocking work (a DKIM signature, the transform of a large message, writing its body
/// file) without stalling the other tasks of its async worker: through `block_in_place` on the
/// server's multi-threaded runtime, inline elsewhere (tests and fuzzing use current-thread
/// runtimes, where `block_in_place` would panic).
pub fn run_blocking<T>(f: impl FnOnce() -> T) -> T {
    match tokio::runtime::Handle::try_current().map(|h| h.runtime_flavor()) {
        Ok(tokio::runtime::RuntimeFlavor::MultiThread) => tokio::task::block_in_place(f),
        _ => f(),
    }
}
