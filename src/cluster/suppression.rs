//! The suppression list shared by the nodes: one Redis hash per project,
//! `<prefix>:suppression:<project>`, field = the normalised address, value = the entry as
//! stored in the local tree (JSON, opaque here; expiry is judged on read by
//! `policy/suppression.rs`, as for the local entries).
//!
//! A removal leaves a tombstone (`{"removed_ms":…}`), which outranks an older entry in a
//! node's own tree. Written after the local write (admin add/remove, delivery refusals once their outcome is
//! durable) and read at RCPT after the local tree, each under the command deadline. Nothing
//! here refuses mail: a caller that gets an error answers from its own tree.

use super::{Cluster, ClusterError};

impl Cluster {
    fn suppression_key(&self, project: &str) -> String {
        format!("{}:suppression:{project}", self.prefix())
    }

    /// Writes entries `(project, address, entry JSON)` in one round trip.
    pub async fn suppression_put(
        &self,
        entries: &[(String, String, String)],
    ) -> Result<(), ClusterError> {
        if entries.is_empty() || self.is_degraded() {
            return Err(ClusterError::Unavailable("degraded".into()));
        }
        let mut p = redis::pipe();
        for (project, address, json) in entries {
            p.cmd("HSET")
                .arg(self.suppression_key(project))
                .arg(address)
                .arg(json)
                .ignore();
        }
        let r: Result<(), _> = self.conn().pipe(&p).await;
        r.inspect_err(|e| self.note_failure(e))
    }

    /// Writes entries `(project, address, entry JSON)` where Redis has nothing for the
    /// address yet (a removal's tombstone, or another node's entry, stays); returns how many
    /// were new.
    pub async fn suppression_put_missing(
        &self,
        entries: &[(String, String, String)],
    ) -> Result<usize, ClusterError> {
        if entries.is_empty() {
            return Ok(0);
        }
        let mut p = redis::pipe();
        for (project, address, json) in entries {
            p.cmd("HSETNX")
                .arg(self.suppression_key(project))
                .arg(address)
                .arg(json);
        }
        let r: Result<Vec<i64>, _> = self.conn().pipe(&p).await;
        r.map(|added| added.iter().filter(|&&n| n == 1).count())
            .inspect_err(|e| self.note_failure(e))
    }

    /// The entry stored for `address`, if any. Not asked while degraded.
    pub async fn suppression_get(
        &self,
        project: &str,
        address: &str,
    ) -> Result<Option<String>, ClusterError> {
        if self.is_degraded() {
            return Err(ClusterError::Unavailable("degraded".into()));
        }
        let r: Result<Option<String>, _> = self
            .conn()
            .query(
                redis::cmd("HGET")
                    .arg(self.suppression_key(project))
                    .arg(address),
            )
            .await;
        r.inspect_err(|e| self.note_failure(e))
    }

    /// Every shared entry and tombstone of `project`: `(address, JSON)`. Not asked while
    /// degraded.
    pub async fn suppression_all(
        &self,
        project: &str,
    ) -> Result<Vec<(String, String)>, ClusterError> {
        if self.is_degraded() {
            return Err(ClusterError::Unavailable("degraded".into()));
        }
        let r: Result<Vec<(String, String)>, _> = self
            .conn()
            .query(redis::cmd("HGETALL").arg(self.suppression_key(project)))
            .await;
        r.inspect_err(|e| self.note_failure(e))
    }

    /// Replaces `address`'s entry with `tombstone` (so nodes that hold the entry in their own
    /// tree learn it was removed); returns what was there.
    pub async fn suppression_del(
        &self,
        project: &str,
        address: &str,
        tombstone: &str,
    ) -> Result<Option<String>, ClusterError> {
        let key = self.suppression_key(project);
        let mut p = redis::pipe();
        p.atomic()
            .cmd("HGET")
            .arg(&key)
            .arg(address)
            .cmd("HSET")
            .arg(&key)
            .arg(address)
            .arg(tombstone)
            .ignore();
        let r: Result<(Option<String>,), _> = self.conn().pipe(&p).await;
        r.map(|(v,)| v).inspect_err(|e| self.note_failure(e))
    }
}
