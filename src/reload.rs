//! Configuration reload (SIGHUP, `systemctl reload`): re-read the config file and the TLS
//! certificate, and build what new sessions will get.
//!
//! Sessions in progress keep the [`Shared`] they started with; the listeners hand the new
//! one to connections accepted after the swap. A config that does not parse or validate, or
//! a certificate that does not load, is refused as a whole and the running one stays. Some
//! settings are bound at startup (sockets, the database, the delivery workers); a reload that
//! changes them says so in the log and they wait for a restart.

use std::path::Path;
use std::sync::Arc;

use crate::config::{Config, ConfigError};
use crate::inbound::Shared;
use crate::inbound::tls::{self, TlsError};
use crate::policy::limits::MessageLimits;

#[derive(Debug, thiserror::Error)]
pub enum ReloadError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Tls(#[from] TlsError),
}

pub struct Reloaded {
    pub shared: Shared,
    /// Settings that changed but only take effect after a restart.
    pub needs_restart: Vec<&'static str>,
}

/// Loads and checks the new config; nothing changes unless this returns `Ok`.
pub fn prepare(
    path: Option<&Path>,
    current: &Shared,
    startup: &Config,
) -> Result<Reloaded, ReloadError> {
    let config = Config::load_or_builtin(path)?;
    let tls = tls::server_config(&config.tls, &config.server.hostname)?;
    let needs_restart = restart_only_changes(startup, &config);
    let mut shared = current.clone();
    shared.limits = MessageLimits::from_config(&config);
    shared.config = Arc::new(config);
    shared.tls = tls;
    Ok(Reloaded {
        shared,
        needs_restart,
    })
}

/// The settings a reload cannot apply, named as in the config file.
pub fn restart_only_changes(old: &Config, new: &Config) -> Vec<&'static str> {
    fn differs<T: serde::Serialize>(a: &T, b: &T) -> bool {
        serde_json::to_value(a).ok() != serde_json::to_value(b).ok()
    }
    let (o, n) = (&old.server, &new.server);
    let (oq, nq) = (&old.queue, &new.queue);
    [
        ("[[listener]]", differs(&old.listeners, &new.listeners)),
        ("[cluster]", differs(&old.cluster, &new.cluster)),
        ("server.state_dir", o.state_dir != n.state_dir),
        ("server.secret_file", o.secret_file != n.secret_file),
        (
            "server.max_connections",
            o.max_connections != n.max_connections,
        ),
        ("server.durable_ack", o.durable_ack != n.durable_ack),
        (
            "server.min_free_space_mb",
            o.min_free_space_mb != n.min_free_space_mb,
        ),
        (
            "server.message_memory_mb",
            o.message_memory_mb != n.message_memory_mb,
        ),
        (
            "server.shutdown_grace_secs",
            o.shutdown_grace_secs != n.shutdown_grace_secs,
        ),
        ("queue.workers", oq.workers != nq.workers),
        (
            "queue.retry_schedule_secs",
            oq.retry_schedule_secs != nq.retry_schedule_secs,
        ),
        (
            "queue.poll_interval_ms",
            oq.poll_interval_ms != nq.poll_interval_ms,
        ),
        ("[delivery]", differs(&old.delivery, &new.delivery)),
        ("[upstream.*]", differs(&old.upstreams, &new.upstreams)),
        ("[metrics]", differs(&old.metrics, &new.metrics)),
        ("[send_api]", differs(&old.send_api, &new.send_api)),
        // The re-check task and its resolver settings are set up once, at startup.
        ("[dns]", differs(&old.dns, &new.dns)),
        ("[admin_http]", differs(&old.admin_http, &new.admin_http)),
        // The limiter and the per-IP throttle keep live state (windows, counters), so they
        // are built once, from the startup config; the limiter's defaults include the
        // message size and recipient limits authenticated sessions use.
        (
            "server.max_message_size",
            o.max_message_size != n.max_message_size,
        ),
        (
            "server.max_recipients",
            o.max_recipients != n.max_recipients,
        ),
        ("[limits]", differs(&old.limits, &new.limits)),
        ("[throttle]", differs(&old.throttle, &new.throttle)),
        ("[webhooks]", differs(&old.webhooks, &new.webhooks)),
        // The suppression list and the prune task are built once, at startup.
        ("[suppression]", differs(&old.suppression, &new.suppression)),
        ("[retention]", differs(&old.retention, &new.retention)),
    ]
    .into_iter()
    .filter(|(_, changed)| *changed)
    .map(|(name, _)| name)
    .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn restart_only_settings_are_named() {
        let old = Config::builtin().unwrap();
        let mut new = old.clone();
        assert!(restart_only_changes(&old, &new).is_empty());
        new.server.hostname = "mx.example.com".into();
        new.timeouts.command_secs = 5;
        new.log.level = Some("debug".into());
        assert!(restart_only_changes(&old, &new).is_empty(), "reloadable");
        new.listeners[0].address = "127.0.0.1:2600".parse().unwrap();
        new.queue.workers = 9;
        assert_eq!(
            restart_only_changes(&old, &new),
            vec!["[[listener]]", "queue.workers"]
        );
    }
}
