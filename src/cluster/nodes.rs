//! Who is in the cluster: each node writes a heartbeat (`<prefix>:node:<id>`, JSON, expiring
//! after three heartbeat periods) with its id, SMTP addresses, version and queue depth, and
//! `smtp-relay cluster status` lists them with this node's view of Redis.

use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use super::{Cluster, ClusterError};

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct NodeInfo {
    pub id: String,
    /// The node's SMTP listeners as bound.
    pub addresses: Vec<String>,
    pub version: String,
    pub queue_depth: i64,
    /// Seconds since the epoch of this heartbeat.
    pub seen: u64,
}

impl NodeInfo {
    pub fn new(id: String) -> NodeInfo {
        NodeInfo {
            id,
            addresses: Vec::new(),
            version: env!("CARGO_PKG_VERSION").to_string(),
            queue_depth: 0,
            seen: 0,
        }
    }
}

fn now_secs() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

impl Cluster {
    fn nodes_key(&self) -> String {
        format!("{}:nodes", self.prefix())
    }

    fn node_key(&self, id: &str) -> String {
        format!("{}:node:{id}", self.prefix())
    }

    /// The listener addresses the heartbeat announces (set once they are bound).
    pub fn set_addresses(&self, addresses: Vec<String>) {
        let mut n = self.inner.node.lock().unwrap_or_else(|e| e.into_inner());
        n.addresses = addresses;
    }

    async fn info(&self) -> NodeInfo {
        let mut n = self
            .inner
            .node
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        let store = self.store().clone();
        // A scan of the schedule index: off the async workers.
        let depth = tokio::task::spawn_blocking(move || crate::queue::Queue::new(store).stats());
        n.queue_depth = match depth.await {
            Ok(Ok(s)) => i64::try_from(s.scheduled).unwrap_or(i64::MAX),
            _ => -1,
        };
        n.seen = now_secs();
        n
    }

    pub(super) async fn heartbeat(&self) -> Result<(), ClusterError> {
        let info = self.info().await;
        let body = serde_json::to_string(&info).unwrap_or_default();
        let ttl = self.config().heartbeat_secs.saturating_mul(3).max(3);
        let mut p = redis::pipe();
        p.cmd("SET")
            .arg(self.node_key(&info.id))
            .arg(body)
            .arg("EX")
            .arg(ttl)
            .ignore();
        p.cmd("SADD").arg(self.nodes_key()).arg(&info.id).ignore();
        self.conn().pipe::<()>(&p).await
    }

    /// `cluster status`: this node, Redis as it sees it, and every node known.
    pub async fn status(&self) -> Value {
        let redis_up = self
            .conn()
            .query::<String>(&redis::cmd("PING"))
            .await
            .is_ok();
        let mut nodes = Vec::new();
        if redis_up
            && let Ok(ids) = self
                .conn()
                .query::<Vec<String>>(redis::cmd("SMEMBERS").arg(self.nodes_key()))
                .await
        {
            let mut ids = ids;
            ids.sort();
            for id in ids {
                let raw: Option<String> = self
                    .conn()
                    .query(redis::cmd("GET").arg(self.node_key(&id)))
                    .await
                    .unwrap_or(None);
                match raw.and_then(|r| serde_json::from_str::<NodeInfo>(&r).ok()) {
                    Some(n) => nodes.push(json!({
                        "id": n.id, "state": "up", "addresses": n.addresses,
                        "version": n.version, "queue_depth": n.queue_depth,
                        "last_heartbeat_secs_ago": now_secs().saturating_sub(n.seen),
                    })),
                    None => nodes.push(json!({ "id": id, "state": "gone" })),
                }
            }
        }
        json!({
            "clustered": true,
            "node_id": self.node_id(),
            "redis": if redis_up { "up" } else { "unreachable" },
            "degraded": self.is_degraded(),
            "fallback_share": format!("1/{}", self.config().nodes),
            "nodes": nodes,
        })
    }
}
