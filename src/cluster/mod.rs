//! Cluster mode: several relays behind a TCP load balancer sharing their state through Redis.
//! This module is the whole shared-state layer — the stages call it through a few methods
//! and no Redis command is issued anywhere else:
//!
//! * `registry_sync.rs` — the registry (projects, token HMACs, limit overrides, routes,
//!   branding, admin tokens, webhook endpoints, DKIM keys with their private keys sealed by
//!   `crate::sealing`) mirrored in Redis; each node keeps its sled copy, updated by
//!   pub/sub invalidation plus a periodic full reconciliation; admin changes go to Redis
//!   before they are answered (`admin::execute_async` calls [`Cluster::write`]); stages with
//!   their own view of a tree (the DKIM signer) subscribe with [`Cluster::on_change`].
//! * `limits.rs` — shared rate windows (GCRA in one Lua script), and the 1/N local fallback
//!   while Redis is unreachable (`inbound::quota` calls [`Cluster::rate`]).
//! * `leases.rs` — per-project session counts as expiring leases (`Limiter::open_session_shared`
//!   calls [`Cluster::lease`]).
//! * `idempotency.rs` — idempotency keys reserved and recorded in Redis, so a retry sent to
//!   another node is answered, not queued again (`policy::idempotency` calls it).
//! * `suppression.rs` — the suppression list written through to Redis and read after the
//!   local tree at RCPT (`policy::suppression` and the queue call it).
//! * `nodes.rs` — each node's heartbeat and `smtp-relay cluster status`.
//! * `connection.rs` — the Redis connection (lazy, reconnecting, a deadline on every command).
//!
//! Per node, as in every MTA: the queue and delivery. Without a `[cluster]` table none of this
//! runs and the relay is the embedded single node.
//!
//! The node is *degraded* while Redis does not answer: it keeps accepting mail from known
//! projects with its cached registry and the fallback limits, refuses registry changes, and
//! says so in the log and in `smtp_relay_cluster_degraded`. A probe every second notices when
//! Redis is back, reconciles at once, and returns to the shared limits.

pub mod connection;
pub mod idempotency;
pub mod leases;
pub mod limits;
pub mod nodes;
pub mod registry_sync;
pub mod suppression;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use futures_util::StreamExt;

use crate::config::Config;
use crate::config::cluster::ClusterConfig;
use crate::policy::projects::Registry;
use crate::store::Store;

pub use limits::RateMode;
pub use registry_sync::is_registry_write;

#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    #[error("{0}")]
    Config(String),
    #[error("Redis unavailable: {0}")]
    Unavailable(String),
    #[error(
        "cluster: Redis is unreachable ({0}); registry changes are refused until it is back, \
         so that nodes do not diverge"
    )]
    WriteRefused(String),
    #[error("local store: {0}")]
    Store(String),
    #[error("cluster: the registry in Redis {0}; this node keeps its own copy")]
    Sealed(String),
}

impl ClusterError {
    fn store(e: sled::Error) -> ClusterError {
        ClusterError::Store(e.to_string())
    }
}

/// The cluster handle every stage holds (cheap to clone).
#[derive(Clone)]
pub struct Cluster {
    inner: Arc<Inner>,
}

struct Inner {
    config: ClusterConfig,
    node_id: String,
    conn: connection::Connection,
    store: Store,
    registry: Registry,
    degraded: AtomicBool,
    /// Redis answered once and the registries were reconciled (until then a node serves with
    /// its own copy and pulls nothing).
    contacted: AtomicBool,
    /// Reconciliations and admin writes one at a time (both compare snapshots).
    sync: tokio::sync::Mutex<()>,
    limits: limits::SharedLimits,
    /// Wakes the reconciler (an invalidation message arrived).
    changed: tokio::sync::Notify,
    /// What the heartbeat says about this node.
    pub(crate) node: std::sync::Mutex<nodes::NodeInfo>,
    /// HMAC of a fixed text with the server secret: equal on every node that shares it.
    secret_check: String,
    /// Seals every registry record written to Redis (crate::sealing).
    seal: crate::sealing::SealKey,
    /// Told which records changed whenever local trees are made equal to Redis's.
    listeners: std::sync::RwLock<Vec<ChangeListener>>,
    /// Counts the times Redis was reached after being unreachable (or first reached), for
    /// the stages that push what they kept locally meanwhile.
    contact: tokio::sync::watch::Sender<u64>,
}

/// A stage that keeps its own view of mirrored trees (the DKIM signing cache and key files).
pub type ChangeListener = Arc<dyn Fn(&[registry_sync::Change]) + Send + Sync>;

impl std::fmt::Debug for Cluster {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cluster")
            .field("node_id", &self.inner.node_id)
            .finish_non_exhaustive()
    }
}

impl Cluster {
    /// Builds the handle (reading the Redis password); no network yet.
    pub fn new(
        config: &Config,
        store: Store,
        registry: Registry,
        secret: &crate::secret::ServerSecret,
    ) -> Result<Option<Cluster>, ClusterError> {
        let Some(c) = &config.cluster else {
            return Ok(None);
        };
        let password = if c.password_file.is_some() || c.password_env.is_some() {
            Some(
                crate::secret::read_credential(
                    c.password_file.as_deref(),
                    c.password_env.as_deref(),
                )
                .map_err(|e| ClusterError::Config(format!("cluster.password_file: {e}")))?,
            )
        } else {
            None
        };
        let node_id = c
            .node_id
            .clone()
            .unwrap_or_else(|| config.server.hostname.clone());
        Ok(Some(Cluster {
            inner: Arc::new(Inner {
                conn: connection::Connection::new(c, password)?,
                config: c.clone(),
                node_id: node_id.clone(),
                store,
                registry,
                degraded: AtomicBool::new(false),
                contacted: AtomicBool::new(false),
                sync: tokio::sync::Mutex::new(()),
                limits: limits::SharedLimits::new(),
                changed: tokio::sync::Notify::new(),
                node: std::sync::Mutex::new(nodes::NodeInfo::new(node_id)),
                secret_check: hex::encode(crate::policy::tokens::digest(
                    secret,
                    "smtp-relay cluster secret check",
                )),
                listeners: std::sync::RwLock::default(),
                seal: crate::sealing::SealKey::derive(
                    secret,
                    crate::sealing::Purpose::RegistryRecords,
                )
                .map_err(|e| ClusterError::Config(e.to_string()))?,
                contact: tokio::sync::watch::Sender::new(0),
            }),
        }))
    }

    pub fn node_id(&self) -> &str {
        &self.inner.node_id
    }
    fn prefix(&self) -> &str {
        &self.inner.config.key_prefix
    }
    fn config(&self) -> &ClusterConfig {
        &self.inner.config
    }
    fn conn(&self) -> &connection::Connection {
        &self.inner.conn
    }
    fn store(&self) -> &Store {
        &self.inner.store
    }
    fn seal(&self) -> &crate::sealing::SealKey {
        &self.inner.seal
    }
    fn registry(&self) -> &Registry {
        &self.inner.registry
    }
    fn sync_lock(&self) -> &tokio::sync::Mutex<()> {
        &self.inner.sync
    }
    fn limits(&self) -> &limits::SharedLimits {
        &self.inner.limits
    }

    /// Calls `listener` (on a blocking thread) with the records that changed each time this
    /// node's trees are brought in line with Redis.
    pub fn on_change(&self, listener: impl Fn(&[registry_sync::Change]) + Send + Sync + 'static) {
        self.inner
            .listeners
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .push(Arc::new(listener));
    }

    /// Changes each time this node (re)gains contact with Redis and has reconciled.
    pub fn contact(&self) -> tokio::sync::watch::Receiver<u64> {
        self.inner.contact.subscribe()
    }

    fn notify_changed(&self, changes: &[registry_sync::Change]) {
        let listeners = self
            .inner
            .listeners
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        for l in listeners {
            l(changes);
        }
    }

    pub fn is_degraded(&self) -> bool {
        self.inner.degraded.load(Ordering::Acquire)
    }

    /// A Redis command failed: degraded until the probe succeeds again.
    fn note_failure(&self, e: &ClusterError) {
        match e {
            ClusterError::Unavailable(why) => self.set_degraded(true, why),
            ClusterError::Sealed(_) => tracing::error!(error = %e, "cluster: registry not updated"),
            _ => {}
        }
    }

    fn set_degraded(&self, degraded: bool, why: &str) {
        if self.inner.degraded.swap(degraded, Ordering::AcqRel) == degraded {
            return;
        }
        crate::metrics::cluster_degraded(degraded);
        if degraded {
            tracing::warn!(
                error = why,
                nodes = self.config().nodes,
                "cluster degraded: Redis unreachable; serving with the cached registry, \
                 rate limits local at 1/nodes, registry changes refused"
            );
        } else {
            tracing::info!("cluster: Redis reachable again; shared limits and registry resumed");
        }
    }

    /// Starts the background tasks: first contact (seed or pull), the health probe and
    /// heartbeat, the invalidation subscriber and the periodic reconciliation.
    pub fn start(&self, shutdown: crate::shutdown::Signal) {
        let c = self.clone();
        let mut s = shutdown.clone();
        tokio::spawn(async move {
            tokio::select! {
                _ = c.probe_loop() => {}
                _ = crate::shutdown::stopped(&mut s) => {}
            }
        });
        let c = self.clone();
        let mut s = shutdown.clone();
        tokio::spawn(async move {
            tokio::select! {
                _ = c.subscribe_loop() => {}
                _ = crate::shutdown::stopped(&mut s) => {}
            }
        });
        let c = self.clone();
        let mut s = shutdown;
        tokio::spawn(async move {
            tokio::select! {
                _ = c.reconcile_loop() => {}
                _ = crate::shutdown::stopped(&mut s) => {}
            }
        });
    }

    /// Every second: PING (degraded or not), the heartbeat every `heartbeat_secs`; first
    /// contact (seed or pull) as soon as Redis answers, and a pull whenever it comes back.
    async fn probe_loop(&self) {
        let mut contacted = false;
        let mut since_heartbeat = u64::MAX;
        loop {
            let ping: Result<String, _> = self.conn().query(&redis::cmd("PING")).await;
            match ping {
                Ok(_) => {
                    let was_degraded = self.is_degraded();
                    if !contacted || was_degraded {
                        match self.reconcile().await {
                            Ok(_) => {
                                if !contacted {
                                    self.check_secret().await;
                                }
                                contacted = true;
                                self.inner.contacted.store(true, Ordering::Release);
                                self.set_degraded(false, "");
                                self.inner.contact.send_modify(|n| *n += 1);
                            }
                            Err(e) => self.note_failure(&e),
                        }
                    }
                    if contacted && since_heartbeat >= self.config().heartbeat_secs {
                        since_heartbeat = 0;
                        if let Err(e) = self.heartbeat().await {
                            self.note_failure(&e);
                        }
                    }
                }
                Err(e) => {
                    if !contacted && !self.is_degraded() {
                        tracing::warn!(error = %e, "cluster: Redis unreachable at startup; serving with the local registry");
                    }
                    self.note_failure(&e);
                }
            }
            since_heartbeat = since_heartbeat.saturating_add(1);
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    }

    /// Token digests are HMACs with the server secret: a node with another secret would
    /// refuse every token created elsewhere. Said loudly at first contact.
    async fn check_secret(&self) {
        let key = format!("{}:secret-check", self.prefix());
        let _: Result<Option<String>, _> = self
            .conn()
            .query(
                redis::cmd("SET")
                    .arg(&key)
                    .arg(&self.inner.secret_check)
                    .arg("NX"),
            )
            .await;
        if let Ok(Some(theirs)) = self
            .conn()
            .query::<Option<String>>(redis::cmd("GET").arg(&key))
            .await
            && theirs != self.inner.secret_check
        {
            tracing::error!(
                "cluster: this node's server secret differs from the cluster's; tokens created on \
                 other nodes will not authenticate here (give every node the same server.secret_file)"
            );
        }
    }

    /// Listens for invalidations on its own connection (pub/sub cannot share the manager).
    async fn subscribe_loop(&self) {
        loop {
            let conn = tokio::time::timeout(
                self.conn().timeout * 4,
                self.conn().client().get_async_pubsub(),
            )
            .await;
            if let Ok(Ok(mut pubsub)) = conn
                && pubsub.subscribe(self.channel()).await.is_ok()
            {
                // Whatever changed while we were not listening.
                self.inner.changed.notify_one();
                let mut messages = pubsub.on_message();
                // A silent connection (no RST) would never end: re-subscribe after a quiet
                // period, which also reconciles (the notify above).
                let quiet = Duration::from_secs(self.config().reconcile_secs.max(30) * 2);
                while let Ok(Some(msg)) = tokio::time::timeout(quiet, messages.next()).await {
                    let from: String = msg.get_payload().unwrap_or_default();
                    if from != self.node_id() {
                        self.inner.changed.notify_one();
                    }
                }
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    }

    async fn reconcile_loop(&self) {
        let every = Duration::from_secs(self.config().reconcile_secs);
        loop {
            let _ = tokio::time::timeout(every, self.inner.changed.notified()).await;
            if self.is_degraded() || !self.inner.contacted.load(Ordering::Acquire) {
                continue;
            }
            if let Err(e) = self.reconcile().await {
                self.note_failure(&e);
            }
        }
    }
}
