//! Wires the pipeline together and runs it: opens the store, binds listeners, starts the
//! delivery workers, the admin socket and the metrics endpoint, tells systemd it is ready,
//! reloads the config on SIGHUP, and shuts everything down in order on SIGTERM/SIGINT (stop
//! accepting, let sessions finish up to the grace period, stop workers, flush).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{Semaphore, watch};

use crate::admin::{self, AdminContext};
use crate::config::{Config, ListenerMode};
use crate::inbound::{self, Shared, listener};
use crate::outbound::delivery::Delivery;
use crate::outbound::routing::Router;
use crate::outbound::send_test::Tester;
use crate::policy::limits::{Defaults, Limiter, MessageLimits};
use crate::policy::projects::Registry;
use crate::policy::routes::RouteTable;
use crate::policy::throttle::Throttle;
use crate::queue::{MessageLog, Queue};
use crate::secret::ServerSecret;
use crate::store::Store;
use crate::transform::branding::BrandingStore;
use crate::transform::dkim_keys::DkimKeys;

#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error("state directory {path} is not writable: {source}")]
    StateDir {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(transparent)]
    Store(#[from] crate::store::StoreError),
    #[error(transparent)]
    Secret(#[from] crate::secret::SecretError),
    #[error(transparent)]
    Tls(#[from] inbound::tls::TlsError),
    #[error(transparent)]
    Bind(#[from] listener::BindError),
    #[error(transparent)]
    Upstream(#[from] crate::outbound::upstream::UpstreamError),
    #[error(transparent)]
    Queue(#[from] crate::queue::QueueError),
    #[error("cannot create admin socket {path}: {source}")]
    AdminSocket {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot install signal handler: {0}")]
    Signal(std::io::Error),
    #[error(transparent)]
    Metrics(#[from] crate::metrics::http::MetricsBindError),
    #[error(transparent)]
    HttpListener(#[from] crate::http_listener::HttpListenerError),
    #[error(transparent)]
    Cluster(#[from] crate::cluster::ClusterError),
    #[error("storage failed: {0}; exiting so the service manager restarts the relay")]
    StorageFailed(String),
}

/// Makes sure the state directory exists and is writable, with a clear error otherwise.
pub fn prepare_state_dir(config: &Config) -> Result<(), ServerError> {
    let dir = &config.server.state_dir;
    let fail = |source| ServerError::StateDir {
        path: dir.clone(),
        source,
    };
    std::fs::create_dir_all(dir).map_err(fail)?;
    let probe = dir.join(".write-test");
    std::fs::write(&probe, b"ok").map_err(fail)?;
    let _ = std::fs::remove_file(&probe);
    Ok(())
}

/// Runs the relay until a termination signal; SIGHUP re-reads the built-in config.
pub async fn serve(config: Config) -> Result<(), ServerError> {
    serve_from(config, None).await
}

/// Runs the relay until a termination signal. SIGHUP re-reads `config_path` (the built-in
/// config when `None`) and the TLS certificate; see [`crate::reload`].
pub async fn serve_from(config: Config, config_path: Option<PathBuf>) -> Result<(), ServerError> {
    let config = Arc::new(config);
    if let Ok(level) = crate::logging::apply_level(config.log.level.as_deref()) {
        tracing::debug!(level, "log level");
    }
    prepare_state_dir(&config)?;
    let mut store = Store::open(&config.server.state_dir)?;
    if !config.server.durable_ack {
        tracing::warn!("durable_ack = false: messages are acknowledged before they reach the disk");
        store = store.without_fsync();
    }
    let secret = ServerSecret::load(
        config.server.secret_file.as_deref(),
        &config.server.state_dir,
    )?;
    let registry = Registry::new(store.clone(), secret.clone());
    let mut dkim = DkimKeys::new(store.clone(), &config);
    if config.cluster.is_some() {
        let seal =
            crate::sealing::SealKey::derive(&secret, crate::sealing::Purpose::DkimPrivateKeys)
                .map_err(|e| crate::cluster::ClusterError::Config(e.to_string()))?;
        dkim = dkim.with_sealing(seal);
    }
    let queue =
        Queue::new(store.clone()).with_min_free(config.server.min_free_space_mb * 1024 * 1024);
    let branding = BrandingStore::new(store.clone());
    let idempotency = crate::policy::idempotency::Idempotency::new(store.clone());
    let sandbox = crate::queue::sandbox::Sandbox::new(store.clone(), queue.clone());
    sandbox.recover()?;
    let limiter = Limiter::new(store.clone(), Defaults::from_config(&config));
    let cluster = crate::cluster::Cluster::new(&config, store.clone(), registry.clone(), &secret)?;
    if let Some(c) = &cluster {
        limiter.set_cluster(c.clone());
        idempotency.set_cluster(c.clone());
        queue.set_cluster(c.clone());
        match dkim.seal_existing() {
            Ok(0) => {}
            Ok(n) => tracing::info!(keys = n, "cluster: DKIM keys sealed for the other nodes"),
            Err(e) => tracing::warn!(error = %e, "cluster: cannot seal this node's DKIM keys"),
        }
        dkim.follow(c);
    }
    let recovered = queue.recover()?;
    let tls = inbound::tls::server_config(&config.tls, &config.server.hostname)?;
    let routes = RouteTable::new(store.clone(), config.clone());
    let router = Arc::new(Router::new(&config, routes.clone())?);
    let bound = listener::bind_all(&config.listeners).await?;
    let metrics_listener = match config.metrics.address {
        Some(addr) => Some(crate::metrics::http::bind(addr).await?),
        None => None,
    };

    let (shutdown_tx, shutdown_rx) = crate::shutdown::channel();
    let admin_path = config.admin_socket();
    let admin_listener =
        admin::socket::bind(&admin_path).map_err(|source| ServerError::AdminSocket {
            path: admin_path.clone(),
            source,
        })?;
    let domain_reports = crate::domain_check::LastReports::default();
    // One list for the admin operations, the RCPT check, the catch-up and retention.
    let suppressions = crate::policy::suppression::Suppressions::new(
        store.clone(),
        config.suppression.expire_secs,
    )
    .with_cluster(cluster.clone());
    let admin_ctx = AdminContext {
        cluster: cluster.clone(),
        domain_reports: domain_reports.clone(),
        admin_tokens: crate::policy::admin_tokens::AdminTokens::new(store.clone(), secret.clone()),
        registry: registry.clone(),
        queue: queue.clone(),
        log: MessageLog::new(store.clone()),
        branding: branding.clone(),
        limiter: limiter.clone(),
        routes: routes.clone(),
        suppression: suppressions.clone(),
        tester: Some(Arc::new(Tester {
            config: config.clone(),
            registry: registry.clone(),
            router: router.clone(),
            dkim: dkim.clone(),
            branding: branding.clone(),
        })),
        dkim: dkim.clone(),
        events: crate::events::webhooks::WebhookAdmin::new(store.clone(), &config.webhooks),
        sandbox: sandbox.clone(),
        default_max_age_secs: config.queue.max_age_secs,
    };
    tokio::spawn(prune_idempotency_keys(
        idempotency.clone(),
        shutdown_rx.clone(),
    ));
    if config.dns.recheck_secs > 0 {
        tokio::spawn(admin::domain::recheck(
            admin_ctx.clone(),
            std::time::Duration::from_secs(config.dns.recheck_secs),
            shutdown_rx.clone(),
        ));
    }
    let admin_http = crate::admin_http::AdminHttp::bind_for(&config).await?;
    let send_api = crate::send_api::SendApi::bind(&config).await?;
    let admin_http_state = crate::admin_http::HttpState {
        admin: admin_ctx.clone(),
        throttle: Throttle::new(&config.throttle),
    };
    let admin_task = tokio::spawn(admin::socket::serve(
        admin_listener,
        admin_ctx,
        shutdown_rx.clone(),
    ));

    let memory = crate::memory_budget::MemoryBudget::new(config.server.message_memory_mb);
    let shared = Shared {
        domain_reports,
        config: config.clone(),
        registry: registry.clone(),
        routes: routes.clone(),
        queue: queue.clone(),
        branding,
        tls,
        limits: MessageLimits::from_config(&config),
        suppression: suppressions.clone(),
        limiter,
        throttle: Throttle::new(&config.throttle),
        dkim: dkim.clone(),
        memory: memory.clone(),
        idempotency: idempotency.clone(),
        sandbox: sandbox.clone(),
        shutdown: shutdown_rx.clone(),
    };
    // Listeners read the current value at each accept; a reload replaces it.
    let (shared_tx, shared_rx) = watch::channel(Arc::new(shared));
    let max = config.server.max_connections;
    let permits = Arc::new(Semaphore::new(max));
    let mut listeners_info = Vec::new();
    let mut accept_tasks = Vec::new();
    let mut bound_ports = Vec::new();
    for b in bound {
        let addr = b.local_addr();
        bound_ports.push((b.config.mode, addr.port()));
        tracing::info!(address = %addr, mode = b.config.mode.as_str(), "listening");
        listeners_info.push(
            serde_json::json!({ "mode": b.config.mode.as_str(), "address": addr.to_string() }),
        );
        accept_tasks.push(tokio::spawn(listener::serve(
            b,
            shared_rx.clone(),
            permits.clone(),
        )));
    }
    if let Some(l) = metrics_listener {
        let addr = l.local_addr().ok();
        if let Some(addr) = addr {
            tracing::info!(address = %addr, "metrics endpoint listening on /metrics");
            listeners_info
                .push(serde_json::json!({ "mode": "metrics", "address": addr.to_string() }));
        }
        tokio::spawn(crate::metrics::http::serve(
            l,
            queue.clone(),
            shutdown_rx.clone(),
        ));
    }
    if let Some(http) = admin_http {
        if let Some(addr) = http.local_addr() {
            tracing::info!(
                address = %addr,
                url = %http.url(),
                "web panel and admin API at {} (log in with a token from \
                 `smtp-relay admin token add --label you --role admin`)",
                http.url()
            );
            listeners_info
                .push(serde_json::json!({ "mode": "admin_http", "address": addr.to_string() }));
        }
        tokio::spawn(http.serve(admin_http_state, shutdown_rx.clone()));
    }
    if let Some(api) = send_api {
        if let Some(addr) = api.local_addr() {
            tracing::info!(address = %addr, "send API listening (POST /emails)");
            listeners_info
                .push(serde_json::json!({ "mode": "send_api", "address": addr.to_string() }));
        }
        let state = crate::send_api::ApiState {
            shared: shared_rx.clone(),
            tls: api.is_tls(),
        };
        tokio::spawn(api.serve(state, shutdown_rx.clone()));
    }
    crate::health::server_started(listeners_info.clone(), config.upstreams.keys().cloned());
    crate::health::certificate_loaded(&config.tls.cert_file);
    tokio::spawn(crate::health::watch_certificate(shutdown_rx.clone()));
    if let Some(c) = &cluster {
        c.set_addresses(
            listeners_info
                .iter()
                .filter_map(|l| {
                    Some(format!(
                        "{} {}",
                        l["mode"].as_str()?,
                        l["address"].as_str()?
                    ))
                })
                .collect(),
        );
        c.start(shutdown_rx.clone());
        tracing::info!(
            node = c.node_id(),
            "cluster mode: sharing registry and limits through Redis"
        );
    }
    // Lets scripts and tests find the ports (useful with port 0).
    let _ = std::fs::write(
        config.server.state_dir.join("listeners.json"),
        serde_json::Value::Array(listeners_info).to_string(),
    );

    let delivery = Delivery {
        queue: queue.clone(),
        config: config.clone(),
        router,
        memory,
        registry: registry.clone(),
        dkim,
    };
    let delivery_task = tokio::spawn(delivery.run(shutdown_rx.clone()));
    let webhook_task = tokio::spawn(
        crate::events::outbox::Outbox {
            store: store.clone(),
            config: config.webhooks.clone(),
        }
        .run(shutdown_rx.clone()),
    );

    tokio::spawn(crate::policy::suppression::catch_up(
        suppressions.clone(),
        shutdown_rx.clone(),
    ));
    tokio::spawn(crate::retention::run(
        store.clone(),
        suppressions,
        config.retention.clone(),
        shutdown_rx.clone(),
    ));

    if recovered > 0 {
        tracing::info!(messages = recovered, "resuming queued messages");
    }
    if registry.is_empty() {
        tracing::warn!(
            "no projects yet; create one with: smtp-relay project add myapp --domain example.com"
        );
    }
    tracing::info!(
        // Option<u16>: a number, or no field when there is no such listener.
        starttls = port_of(&bound_ports, ListenerMode::Starttls),
        implicit_tls = port_of(&bound_ports, ListenerMode::Implicit),
        state_dir = %config.server.state_dir.display(),
        "smtp-relay ready"
    );

    crate::systemd::ready("accepting mail");
    tokio::spawn(crate::systemd::watchdog(store.clone(), shutdown_rx.clone()));

    let storage_failed = tokio::select! {
        r = wait_for_signal(|| reload(config_path.as_deref(), &shared_tx, &config)) => { r?; false }
        _ = store.failure.wait() => true,
    };
    crate::systemd::stopping();
    let _ = shutdown_tx.send(true);
    if storage_failed {
        // sled hangs after an I/O error: don't wait for it, let the supervisor restart us.
        // Everything acknowledged was flushed before its 250; the rest was refused.
        tokio::time::sleep(Duration::from_secs(1)).await;
        let _ = std::fs::remove_file(&admin_path);
        return Err(ServerError::StorageFailed(
            store.failure.get().unwrap_or_default(),
        ));
    }
    tracing::info!("shutting down: no new connections");
    for t in accept_tasks {
        let _ = t.await;
    }
    let grace = Duration::from_secs(config.server.shutdown_grace_secs);
    if tokio::time::timeout(grace, permits.acquire_many(max as u32))
        .await
        .is_err()
    {
        tracing::warn!("sessions still open after the grace period; closing them");
    }
    let _ = tokio::time::timeout(grace, delivery_task).await;
    let _ = tokio::time::timeout(grace, webhook_task).await;
    admin_task.abort();
    let _ = std::fs::remove_file(&admin_path);
    store.flush_now()?;
    tracing::info!("stopped");
    Ok(())
}

/// The port actually bound (a configured port 0 is chosen by the system) for `mode`.
fn port_of(bound: &[(ListenerMode, u16)], mode: ListenerMode) -> Option<u16> {
    bound.iter().find(|(m, _)| *m == mode).map(|(_, p)| *p)
}

/// Waits for SIGTERM or SIGINT, running `on_hup` for each SIGHUP meanwhile.
async fn wait_for_signal(mut on_hup: impl FnMut()) -> Result<(), ServerError> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).map_err(ServerError::Signal)?;
    let mut int = signal(SignalKind::interrupt()).map_err(ServerError::Signal)?;
    let mut hup = signal(SignalKind::hangup()).map_err(ServerError::Signal)?;
    loop {
        tokio::select! {
            _ = term.recv() => return Ok(()),
            _ = int.recv() => return Ok(()),
            _ = hup.recv() => on_hup(),
        }
    }
}

/// SIGHUP: swap in a new config and certificate for new sessions, or keep the running ones
/// when the new config is broken.
fn reload(path: Option<&Path>, shared: &watch::Sender<Arc<Shared>>, startup: &Config) {
    crate::systemd::reloading();
    let current = shared.borrow().clone();
    match crate::reload::prepare(path, &current, startup) {
        Ok(next) => {
            crate::health::certificate_loaded(&next.shared.config.tls.cert_file);
            let level = crate::logging::apply_level(next.shared.config.log.level.as_deref());
            shared.send_replace(Arc::new(next.shared));
            crate::metrics::config_reload(true);
            if let Err(e) = level {
                tracing::warn!(error = %e, "log level unchanged");
            }
            if next.needs_restart.is_empty() {
                tracing::info!("configuration reloaded; new sessions use it");
            } else {
                tracing::warn!(
                    not_applied = next.needs_restart.join(", "),
                    "configuration reloaded; new sessions use it, but some changes need a restart"
                );
            }
        }
        Err(e) => {
            crate::metrics::config_reload(false);
            tracing::error!(error = %e, "configuration reload refused; the running configuration stays");
        }
    }
    crate::systemd::ready("accepting mail");
}

/// Removes expired idempotency keys: at start, then every ten minutes, until shutdown.
async fn prune_idempotency_keys(
    idempotency: crate::policy::idempotency::Idempotency,
    mut shutdown: watch::Receiver<bool>,
) {
    let every = std::time::Duration::from_secs(600);
    loop {
        let idem = idempotency.clone();
        match tokio::task::spawn_blocking(move || idem.prune(crate::queue::now_ms())).await {
            Ok(Ok(n)) if n > 0 => tracing::info!(removed = n, "expired idempotency keys pruned"),
            Ok(Ok(_)) => {}
            Ok(Err(e)) => tracing::warn!(error = %e, "cannot prune idempotency keys"),
            Err(e) => tracing::warn!(error = %e, "idempotency key pruning stopped"),
        }
        tokio::select! {
            _ = tokio::time::sleep(every) => {}
            _ = crate::shutdown::stopped(&mut shutdown) => return,
        }
    }
}
