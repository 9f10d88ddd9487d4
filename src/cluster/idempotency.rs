//! Idempotency keys shared by the nodes: a retried request that the load balancer sends to
//! another node must find the first node's reservation or answer there.
//!
//! One string per key, `<prefix>:idem:<project>:<key>`. A request reserves it with
//! `SET … NX PX` (value `inflight <token>`), so two nodes cannot both accept the same key;
//! once the message is durable on the node that took it, the value becomes the key's record
//! (opaque here: `policy/idempotency.rs` encodes and judges it) for the rest of the window. A
//! refused request deletes its reservation only if it still holds it (compare and delete).
//! Values are never parsed in this module, as with the registry trees.

use super::{Cluster, ClusterError};

/// Reserve, or say what is there: `""` when this call reserved the key, else the value held.
const RESERVE: &str = r#"
local ok = redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2])
if ok then return '' end
local v = redis.call('GET', KEYS[1])
if not v then return ARGV[1] end
return v
"#;

/// Delete the key only while it still holds this reservation.
const RELEASE: &str = r#"
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"#;

/// What Redis said about a key.
#[derive(Debug)]
pub enum SharedKey {
    /// This node holds it now.
    Reserved,
    /// Another request holds it (`inflight …`) or finished it (the record), as stored.
    Taken(String),
}

impl Cluster {
    fn idem_key(&self, project: &str, key: &str) -> String {
        format!("{}:idem:{project}:{key}", self.prefix())
    }

    /// Whether shared keys are asked at all (not while degraded: the caller stays local).
    pub fn idempotency_shared(&self) -> bool {
        !self.is_degraded()
    }

    /// `SET NX PX` of `token` (an `inflight …` value), or the value another request left.
    pub async fn idem_reserve(
        &self,
        project: &str,
        key: &str,
        token: &str,
        ttl_ms: u64,
    ) -> Result<SharedKey, ClusterError> {
        let script = redis::Script::new(RESERVE);
        let mut inv = script.key(self.idem_key(project, key));
        inv.arg(token).arg(ttl_ms.max(1));
        let r: Result<String, _> = self.conn().script(&inv).await;
        match r {
            Ok(v) if v.is_empty() => Ok(SharedKey::Reserved),
            Ok(v) => Ok(SharedKey::Taken(v)),
            Err(e) => {
                self.note_failure(&e);
                Err(e)
            }
        }
    }

    /// The finished key's record, kept for the rest of the window.
    pub async fn idem_record(
        &self,
        project: &str,
        key: &str,
        record: &str,
        ttl_ms: u64,
    ) -> Result<(), ClusterError> {
        let r: Result<(), _> = self
            .conn()
            .query(
                redis::cmd("SET")
                    .arg(self.idem_key(project, key))
                    .arg(record)
                    .arg("PX")
                    .arg(ttl_ms.max(1)),
            )
            .await;
        r.inspect_err(|e| self.note_failure(e))
    }

    /// The request was refused: its reservation goes, unless something replaced it.
    pub async fn idem_release(
        &self,
        project: &str,
        key: &str,
        token: &str,
    ) -> Result<(), ClusterError> {
        let script = redis::Script::new(RELEASE);
        let mut inv = script.key(self.idem_key(project, key));
        inv.arg(token);
        let r: Result<i64, _> = self.conn().script(&inv).await;
        r.map(|_| ()).inspect_err(|e| self.note_failure(e))
    }
}
