//! Sharing the registry: the sled trees that describe projects and their settings are
//! mirrored in Redis, one hash per tree (`<prefix>:tree:<name>`, field = sled key, value =
//! the stored bytes, sealed with a key derived from the server secret (`crate::sealing`): Redis
//! never holds a readable record — webhook signing secrets included — and a value written
//! there without the secret does not open; the reconciliation then fails as a whole and the
//! node keeps its own copy).
//!
//! Whole stored records travel, never parsed ones: a field another part of the relay adds to a
//! `Project` (or any record here) passes through without this file knowing it. Redis is the
//! authority once the cluster is seeded (the first node to start pushes its registry; later
//! nodes take Redis's). Each node keeps its own sled copy, which is what AUTH reads — it never
//! waits on the network — and a node restarted while Redis is down serves with it.
//!
//! * **pull** (`reconcile`): read every mirrored hash, make the local trees equal to it, bump
//!   the registry generation when anything changed (open sessions re-check their project).
//!   Runs on every invalidation message, every `reconcile_secs`, and when Redis comes back.
//! * **push** (`write`): an admin change runs locally between two snapshots of the mirrored
//!   trees; the keys that changed go to Redis in one MULTI/EXEC with the version counter, then
//!   an invalidation is published. If Redis refuses, the local change is rolled back and the
//!   operation fails with a clear error, so nodes never diverge.

use std::collections::{BTreeMap, HashMap};

use redis::Value as RedisValue;

use crate::store::Store;

use super::{Cluster, ClusterError};

/// The mirrored trees, most important first. DKIM private keys travel sealed
/// (`dkim_sealed`, crate::sealing); each node writes its own key files from them.
pub const TREES: &[&str] = &[
    "projects",
    "tokens",
    "limits",
    "routes",
    "branding",
    "admin_tokens",
    "webhooks",
    "dkim",
    "dkim_projects",
    "dkim_sealed",
];

/// Trees shared only since a later version. A cluster seeded before has none of them in
/// Redis: the first node to reconcile after the upgrade adds its entries (HSETNX, so another
/// node's that got there first win) instead of taking Redis's empty hash, which would wipe
/// its keys. Never done for the older trees, where a stale node would resurrect revoked
/// tokens.
const LATE_TREES: &[&str] = &["dkim", "dkim_projects", "dkim_sealed"];

fn tree<'a>(store: &'a Store, name: &str) -> Option<&'a sled::Tree> {
    Some(match name {
        "projects" => &store.projects,
        "tokens" => &store.tokens,
        "limits" => &store.limits,
        "routes" => &store.routes,
        "branding" => &store.branding,
        "admin_tokens" => &store.admin_tokens,
        "webhooks" => &store.webhooks,
        "dkim" => &store.dkim,
        "dkim_projects" => &store.dkim_projects,
        "dkim_sealed" => &store.dkim_sealed,
        _ => return None,
    })
}

fn known_tree<'a>(store: &'a Store, name: &str) -> Result<&'a sled::Tree, ClusterError> {
    tree(store, name).ok_or_else(|| ClusterError::Store(format!("no tree {name}")))
}

type Tree = BTreeMap<Vec<u8>, Vec<u8>>;
pub type Snapshot = HashMap<&'static str, Tree>;

/// What Redis holds of the registry.
struct Remote {
    /// The cluster was seeded (a Redis restarted without its data is not: its empty hashes
    /// must not wipe the nodes' registries).
    seeded: bool,
    /// Late trees Redis has never had.
    unseeded: Vec<&'static str>,
    trees: Snapshot,
}

/// Every mirrored tree as it is now.
pub fn snapshot(store: &Store) -> Result<Snapshot, ClusterError> {
    let mut out = HashMap::new();
    for &name in TREES {
        let mut t = Tree::new();
        for kv in known_tree(store, name)?.iter() {
            let (k, v) = kv.map_err(ClusterError::store)?;
            t.insert(k.to_vec(), v.to_vec());
        }
        out.insert(name, t);
    }
    Ok(out)
}

/// One key that differs: its new value, or `None` when removed.
pub struct Change {
    pub tree: &'static str,
    pub key: Vec<u8>,
    pub value: Option<Vec<u8>>,
}

pub fn diff(before: &Snapshot, after: &Snapshot) -> Vec<Change> {
    let empty = Tree::new();
    let mut out = Vec::new();
    for &name in TREES {
        let b = before.get(name).unwrap_or(&empty);
        let a = after.get(name).unwrap_or(&empty);
        for (k, v) in a {
            if b.get(k) != Some(v) {
                out.push(Change {
                    tree: name,
                    key: k.clone(),
                    value: Some(v.clone()),
                });
            }
        }
        for k in b.keys().filter(|k| !a.contains_key(*k)) {
            out.push(Change {
                tree: name,
                key: k.clone(),
                value: None,
            });
        }
    }
    out
}

/// Applies `changes` to the local trees and flushes (blocking: call off the async threads).
pub fn apply(store: &Store, changes: &[Change]) -> Result<(), ClusterError> {
    for c in changes {
        let t = known_tree(store, c.tree)?;
        match &c.value {
            Some(v) => t.insert(c.key.as_slice(), v.as_slice()),
            None => t.remove(c.key.as_slice()),
        }
        .map_err(ClusterError::store)?;
    }
    store
        .flush_now()
        .map_err(|e| ClusterError::Store(e.to_string()))
}

/// The associated data of a sealed record: which tree and key it belongs to, so a value
/// copied to another record does not open.
fn context(tree: &str, key: &[u8]) -> Vec<u8> {
    let mut c = Vec::with_capacity(tree.len() + 1 + key.len());
    c.extend_from_slice(tree.as_bytes());
    c.push(0);
    c.extend_from_slice(key);
    c
}

impl Cluster {
    /// A record as it goes to Redis: sealed with the key derived from the server secret.
    fn sealed(&self, tree: &str, key: &[u8], value: &[u8]) -> Result<Vec<u8>, ClusterError> {
        self.seal()
            .seal(&context(tree, key), value)
            .map_err(|e| ClusterError::Sealed(e.to_string()))
    }

    fn tree_key(&self, name: &str) -> String {
        format!("{}:tree:{name}", self.prefix())
    }

    fn seeded_key(&self) -> String {
        format!("{}:registry:seeded", self.prefix())
    }

    fn seeded_trees_key(&self) -> String {
        format!("{}:registry:seeded-trees", self.prefix())
    }

    fn version_key(&self) -> String {
        format!("{}:registry:version", self.prefix())
    }

    pub(super) fn channel(&self) -> String {
        format!("{}:registry", self.prefix())
    }

    /// The registry as Redis has it.
    async fn remote(&self) -> Result<Remote, ClusterError> {
        let mut p = redis::pipe();
        p.cmd("EXISTS").arg(self.seeded_key());
        p.cmd("SMEMBERS").arg(self.seeded_trees_key());
        for &name in TREES {
            p.cmd("HGETALL").arg(self.tree_key(name));
        }
        let mut replies: Vec<RedisValue> = self.conn().pipe(&p).await?;
        if replies.len() != TREES.len() + 2 {
            return Err(ClusterError::Unavailable("short pipeline reply".into()));
        }
        let bad = |e: redis::ParsingError| ClusterError::Unavailable(e.to_string());
        let seeded: i64 = redis::from_redis_value(replies.remove(0)).map_err(bad)?;
        let seeded_trees: Vec<String> = redis::from_redis_value(replies.remove(0)).map_err(bad)?;
        let mut trees = HashMap::new();
        for (&name, reply) in TREES.iter().zip(replies) {
            let sealed: Tree = redis::from_redis_value(reply).map_err(bad)?;
            let mut t = Tree::new();
            for (k, v) in sealed {
                let plain = self.seal().open(&context(name, &k), &v).map_err(|e| {
                    ClusterError::Sealed(format!(
                        "holds a {name} record this node cannot open ({e})"
                    ))
                })?;
                t.insert(k, plain);
            }
            trees.insert(name, t);
        }
        let unseeded = LATE_TREES
            .iter()
            .copied()
            .filter(|t| !seeded_trees.iter().any(|s| s == t))
            .collect();
        Ok(Remote {
            seeded: seeded > 0,
            unseeded,
            trees,
        })
    }

    /// Adds this node's entries of the late trees Redis has never had (see [`LATE_TREES`]).
    async fn seed_late_trees(&self, trees: &[&'static str]) -> Result<(), ClusterError> {
        let store = self.store().clone();
        let local = crate::run_blocking(move || snapshot(&store))?;
        let mut p = redis::pipe();
        p.atomic();
        let mut added = 0;
        for &name in trees {
            for (k, v) in local.get(name).into_iter().flatten() {
                p.cmd("HSETNX")
                    .arg(self.tree_key(name))
                    .arg(k.as_slice())
                    .arg(self.sealed(name, k, v)?)
                    .ignore();
                added += 1;
            }
            p.cmd("SADD")
                .arg(self.seeded_trees_key())
                .arg(name)
                .ignore();
        }
        p.cmd("INCR").arg(self.version_key()).ignore();
        p.cmd("PUBLISH")
            .arg(self.channel())
            .arg(self.node_id())
            .ignore();
        self.conn().pipe::<()>(&p).await?;
        tracing::info!(
            trees = trees.join(","),
            records = added,
            "cluster: shared this node's entries of trees Redis did not have yet"
        );
        Ok(())
    }

    /// Makes the local trees equal to Redis's; returns how many keys changed. On a Redis with
    /// no registry (first start of the cluster, or Redis lost its data) the first node to get
    /// here copies its own registry there instead.
    pub async fn reconcile(&self) -> Result<usize, ClusterError> {
        let _serial = self.sync_lock().lock().await;
        let Remote {
            seeded,
            unseeded,
            trees: mut remote,
        } = self.remote().await?;
        if seeded && !unseeded.is_empty() {
            self.seed_late_trees(&unseeded).await?;
            remote = self.remote().await?.trees;
        }
        if !seeded {
            let won: Option<String> = self
                .conn()
                .query(
                    redis::cmd("SET")
                        .arg(self.seeded_key())
                        .arg(self.node_id())
                        .arg("NX"),
                )
                .await?;
            if won.is_some() {
                let store = self.store().clone();
                let local = crate::run_blocking(move || snapshot(&store))?;
                let changes = diff(&remote, &local);
                tracing::info!(
                    records = changes.len(),
                    "cluster: Redis had no registry; this node's copied there"
                );
                self.push(&changes).await?;
                self.mark_trees_seeded(TREES).await?;
                return Ok(0);
            }
            remote = self.remote().await?.trees;
        }
        let this = self.clone();
        let n = crate::run_blocking(move || {
            let local = snapshot(this.store())?;
            let changes = diff(&local, &remote);
            if changes.is_empty() {
                return Ok::<_, ClusterError>(0);
            }
            apply(this.store(), &changes)?;
            this.applied(&changes);
            Ok(changes.len())
        })?;
        if n > 0 {
            tracing::info!(changes = n, "cluster: registry updated from Redis");
        }
        Ok(n)
    }

    async fn mark_trees_seeded(&self, trees: &[&str]) -> Result<(), ClusterError> {
        let mut cmd = redis::cmd("SADD");
        cmd.arg(self.seeded_trees_key());
        for t in trees {
            cmd.arg(*t);
        }
        self.conn().query::<i64>(&cmd).await.map(|_| ())
    }

    /// After local trees were changed to match Redis (or rolled back): open sessions re-check
    /// their project (they compare the generation at MAIL FROM and before the final 250), and
    /// the stages that keep their own view of a tree are told.
    fn applied(&self, changes: &[Change]) {
        self.registry().bump_generation();
        self.notify_changed(changes);
    }

    /// Sends local changes to Redis atomically, then tells the other nodes.
    async fn push(&self, changes: &[Change]) -> Result<(), ClusterError> {
        if changes.is_empty() {
            return Ok(());
        }
        let mut p = redis::pipe();
        p.atomic();
        for c in changes {
            match &c.value {
                Some(v) => p
                    .cmd("HSET")
                    .arg(self.tree_key(c.tree))
                    .arg(c.key.as_slice())
                    .arg(self.sealed(c.tree, &c.key, v)?)
                    .ignore(),
                None => p
                    .cmd("HDEL")
                    .arg(self.tree_key(c.tree))
                    .arg(c.key.as_slice())
                    .ignore(),
            };
        }
        p.cmd("INCR").arg(self.version_key()).ignore();
        p.cmd("PUBLISH")
            .arg(self.channel())
            .arg(self.node_id())
            .ignore();
        self.conn().pipe::<()>(&p).await
    }

    /// Runs an admin change that touches the registry: Redis must be reachable, the local
    /// copy is brought up to date first, and what changed is pushed before the answer — or
    /// rolled back if Redis refuses it.
    pub async fn write<T: Send + 'static>(
        &self,
        op: impl FnOnce() -> T + Send + 'static,
    ) -> Result<T, ClusterError> {
        self.reconcile().await.map_err(|e| self.refused(e))?;
        let _serial = self.sync_lock().lock().await;
        let store = self.store().clone();
        let (before, out, changes) = crate::run_blocking(move || {
            let before = snapshot(&store)?;
            let out = op();
            let after = snapshot(&store)?;
            let changes = diff(&before, &after);
            Ok::<_, ClusterError>((before, out, changes))
        })?;
        if let Err(e) = self.push(&changes).await {
            let this = self.clone();
            let undo = crate::run_blocking(move || {
                let now = snapshot(this.store())?;
                let back = diff(&now, &before);
                apply(this.store(), &back)?;
                this.applied(&back);
                Ok::<_, ClusterError>(())
            });
            if let Err(u) = undo {
                tracing::error!(error = %u, "cluster: cannot roll back a local change Redis refused");
            }
            return Err(self.refused(e));
        }
        Ok(out)
    }

    fn refused(&self, e: ClusterError) -> ClusterError {
        self.note_failure(&e);
        match e {
            ClusterError::Unavailable(why) => ClusterError::WriteRefused(why),
            other => other,
        }
    }
}

/// Whether an admin operation changes mirrored state (queue, log, domain checks and webhook
/// test sends are per node and never wait on Redis).
pub fn is_registry_write(req: &crate::admin::AdminRequest) -> bool {
    use crate::admin::AdminRequest::*;
    if req.is_read_only() {
        return false;
    }
    !matches!(
        req,
        QueueRetry { .. }
            | QueueDelete { .. }
            | WebhookTest { .. }
            | SendTest(_)
            | DomainVerify { .. }
            | DomainStatus { .. }
            // Per node: the sandbox's captures and the suppression list (its upstream-made
            // entries are written by delivery, not through here).
            | SandboxRelease { .. }
            | SandboxClear { .. }
            | SuppressionAdd { .. }
            | SuppressionRemove { .. }
    )
}
