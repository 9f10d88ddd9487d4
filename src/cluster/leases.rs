//! Per-project session counts across the cluster, as expiring leases: one sorted set per
//! project (`<prefix>:sessions:<project>`, member = node and session, score = expiry in ms on
//! Redis's clock). Taking a lease drops the expired ones and counts the rest in one Lua script;
//! an open session renews its lease every third of its lifetime, and a session that ends
//! removes it. A node that crashes renews nothing, so its sessions free themselves within
//! [`LEASE_TTL`].
//!
//! While Redis does not answer, a session gets no lease (each node's own count still applies).

use std::time::Duration;

use super::{Cluster, ClusterError};

/// How long a lease lives without renewal (a crashed node's sessions are counted this long).
pub const LEASE_TTL: Duration = Duration::from_secs(60);

const TAKE: &str = r#"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local ttl = tonumber(ARGV[2])
if ARGV[3] == 'renew' then
  redis.call('ZADD', KEYS[1], 'XX', now + ttl, ARGV[1])
  redis.call('PEXPIRE', KEYS[1], ttl)
  return 1
end
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
if redis.call('ZCARD', KEYS[1]) >= tonumber(ARGV[3]) then return 0 end
redis.call('ZADD', KEYS[1], now + ttl, ARGV[1])
redis.call('PEXPIRE', KEYS[1], ttl)
return 1
"#;

/// A held lease: renewed in the background, given back when dropped.
#[derive(Debug)]
pub struct Lease {
    renew: tokio::task::JoinHandle<()>,
    cluster: Cluster,
    key: String,
    member: String,
}

impl Drop for Lease {
    fn drop(&mut self) {
        self.renew.abort();
        let (cluster, key, member) = (
            self.cluster.clone(),
            std::mem::take(&mut self.key),
            std::mem::take(&mut self.member),
        );
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            rt.spawn(async move {
                let _: Result<i64, _> = cluster
                    .conn()
                    .query(redis::cmd("ZREM").arg(key).arg(member))
                    .await;
            });
        }
    }
}

/// The answer to "may one more session of this project open?".
pub enum LeaseResult {
    Granted(Lease),
    /// `max` sessions are open across the cluster.
    Full,
    /// Redis did not answer: the node decides alone.
    Unavailable,
}

impl Cluster {
    fn sessions_key(&self, project: &str) -> String {
        format!("{}:sessions:{project}", self.prefix())
    }

    async fn lease_script(
        &self,
        key: &str,
        member: &str,
        third: &str,
    ) -> Result<i64, ClusterError> {
        // Hashed once (EVALSHA by that digest afterwards).
        static SCRIPT: std::sync::LazyLock<redis::Script> =
            std::sync::LazyLock::new(|| redis::Script::new(TAKE));
        let mut inv = SCRIPT.key(key);
        inv.arg(member).arg(LEASE_TTL.as_millis() as u64).arg(third);
        self.conn().script(&inv).await
    }

    /// One of the project's `max` session places across the cluster.
    pub async fn lease(&self, project: &str, max: u32) -> LeaseResult {
        if self.is_degraded() {
            return LeaseResult::Unavailable;
        }
        let key = self.sessions_key(project);
        let member = format!("{}/{:016x}", self.node_id(), rand::random::<u64>());
        match self.lease_script(&key, &member, &max.to_string()).await {
            Ok(0) => LeaseResult::Full,
            Ok(_) => {
                let (c, k, m) = (self.clone(), key.clone(), member.clone());
                let renew = tokio::spawn(async move {
                    loop {
                        tokio::time::sleep(LEASE_TTL / 3).await;
                        if let Err(e) = c.lease_script(&k, &m, "renew").await {
                            c.note_failure(&e);
                        }
                    }
                });
                LeaseResult::Granted(Lease {
                    renew,
                    cluster: self.clone(),
                    key,
                    member,
                })
            }
            Err(e) => {
                self.note_failure(&e);
                LeaseResult::Unavailable
            }
        }
    }
}
