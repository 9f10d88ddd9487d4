//! The suppression list: recipients a project's mail is no longer sent to, because an upstream
//! refused them for good (or a sysadmin put them there).
//!
//! Sending again to an address the upstream called non-existent only earns another refusal and
//! hurts the sender's reputation with the provider, so the relay remembers such refusals and
//! answers the next RCPT itself (`550 5.1.1 Recipient suppressed…`). Entries live in the
//! `suppression` tree (`project \0 address` → entry), are written by the queue in the same
//! group commit as the delivery outcome that caused them ([`record_refusals`]), and expire
//! `suppression.expire_secs` after they were added (read time decides; [`Suppressions::prune`]
//! removes them for good). Policy reads the list; nothing here knows about sockets or
//! upstreams. The API is deliberately small (`is_suppressed`, `add`, `remove`, `list`,
//! `prune`) so that another backend can stand in for sled.
//!
//! Cluster mode ([`Suppressions::with_cluster`], `cluster/suppression.rs`): entries are also
//! written to Redis (admin add/remove through `admin::execute_async`, delivery refusals by the
//! queue once durable, [`share_entries`]), and the RCPT check asks Redis after the local tree,
//! so a recipient refused via one node is refused by all. Redis not answering leaves the local
//! tree as the only answer: mail is never refused because Redis is down.

use serde::{Deserialize, Serialize};

use crate::events::{Event, EventKind};
use crate::queue::now_ms;
use crate::store::{Store, StoreError};

#[derive(Debug, thiserror::Error)]
pub enum SuppressionError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("invalid address {0:?}: give a full address such as user@example.com")]
    InvalidAddress(String),
    #[error("{0} is not on the suppression list of project {1}")]
    NotFound(String, String),
}

impl From<sled::Error> for SuppressionError {
    fn from(e: sled::Error) -> Self {
        SuppressionError::Store(StoreError::Sled(e))
    }
}

/// One suppressed recipient of one project.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    pub project: String,
    pub address: String,
    /// Why: the upstream's reply, or the admin's note.
    pub reason: String,
    /// `upstream` (a permanent refusal) or `admin`.
    pub source: String,
    pub added_ms: u64,
    /// The relay's id of the message that was refused (upstream entries).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message_id: Option<String>,
    /// Computed from `added_ms` and the configured lifetime when read; not stored.
    #[serde(default, skip_serializing)]
    pub expires_ms: u64,
}

/// A removal, as left in Redis (cluster mode).
#[derive(Deserialize)]
struct Tombstone {
    removed_ms: u64,
}

/// Redis's answer for one address.
enum Shared {
    Live(Entry),
    Removed(u64),
    Absent,
}

/// The list, with the lifetime of its entries.
#[derive(Clone, Debug)]
pub struct Suppressions {
    store: Store,
    expire_ms: u64,
    cluster: Option<crate::cluster::Cluster>,
}

/// Addresses compare case-insensitively: providers treat local parts so in practice, and a
/// refusal of `Bob@x` must also stop `bob@x`.
fn normalize(address: &str) -> Result<String, SuppressionError> {
    let a = address.trim().trim_start_matches('<').trim_end_matches('>');
    match a.rsplit_once('@') {
        Some((local, domain))
            if !local.is_empty()
                && domain.contains('.')
                && !a.chars().any(|c| c.is_whitespace() || c.is_control()) =>
        {
            Ok(a.to_lowercase())
        }
        _ => Err(SuppressionError::InvalidAddress(address.to_string())),
    }
}

fn key(project: &str, address: &str) -> Vec<u8> {
    let mut k = project.as_bytes().to_vec();
    k.push(0);
    k.extend_from_slice(address.as_bytes());
    k
}

/// Whether a permanent refusal names the recipient itself, so that sending to it again would
/// be refused again: an RFC 3463 `5.1.x` (bad destination mailbox or address) or `5.2.1`
/// (mailbox disabled), or a bare `550`/`551` without an enhanced code (RFC 5321's mailbox
/// replies). Delivery does not say whether a refusal came at RCPT, MAIL or DATA, so the reply
/// decides: a refusal of the message or the sender (`5.1.7`/`5.1.8` bad sender, `5.7.x`
/// policy or spam, `5.6.x` content, `5.3.4` size, a `5.7.1 relaying denied` from a
/// misconfigured route, a bare `553`, which is also the usual MAIL FROM refusal) is the same
/// for every recipient and suppresses none of them.
pub fn refusal_names_recipient(reply: &str) -> bool {
    let mut words = reply.split_whitespace();
    let code = words.next().unwrap_or("");
    if !code.starts_with('5') {
        return false;
    }
    let code = code.get(..3).unwrap_or(code);
    match words.next().filter(|w| w.starts_with("5.")) {
        Some(enhanced) => {
            (enhanced.starts_with("5.1.") && !matches!(enhanced, "5.1.7" | "5.1.8"))
                || enhanced == "5.2.1"
        }
        None => matches!(code, "550" | "551"),
    }
}

/// Adds the recipients of `failed`/`refused` events whose reply names them to the project's
/// list. Called by the queue before the group commit of the outcome, so an entry exists
/// exactly when the refusal that caused it does.
///
/// Returns the entries written, for [`share_entries`] once the commit is durable.
pub fn record_refusals(store: &Store, events: &[Event]) -> Result<Vec<Entry>, sled::Error> {
    let now = now_ms();
    let mut written = Vec::new();
    for e in events.iter().filter(|e| {
        e.kind == EventKind::Failed
            && e.reason.as_deref() == Some("refused")
            && e.reply.as_deref().is_some_and(refusal_names_recipient)
    }) {
        for rcpt in &e.recipients {
            let Ok(address) = normalize(rcpt) else {
                continue;
            };
            let entry = Entry {
                project: e.project.clone(),
                address: address.clone(),
                reason: e.reply.clone().unwrap_or_default(),
                source: "upstream".into(),
                added_ms: now,
                message_id: Some(e.message_id.clone()),
                expires_ms: 0,
            };
            store.suppression.insert(
                key(&e.project, &address),
                serde_json::to_vec(&entry).unwrap_or_default(),
            )?;
            crate::metrics::suppression_added("upstream");
            tracing::info!(project = %e.project, recipient = %address, reply = e.reply.as_deref().unwrap_or(""), "recipient suppressed after a permanent refusal");
            written.push(entry);
        }
    }
    Ok(written)
}

/// An entry as Redis keeps it: `(project, address, entry JSON)`.
fn shared_row(e: &Entry) -> (String, String, String) {
    (
        e.project.clone(),
        e.address.clone(),
        serde_json::to_string(e).unwrap_or_default(),
    )
}

/// Cluster mode: entries written locally go to Redis too. A failure is logged and the entry
/// stays on this node only (other nodes keep mailing the address until it is refused there).
pub async fn share_entries(cluster: &crate::cluster::Cluster, entries: &[Entry]) {
    if entries.is_empty() {
        return;
    }
    let rows: Vec<_> = entries.iter().map(shared_row).collect();
    if let Err(e) = cluster.suppression_put(&rows).await {
        tracing::warn!(error = %e, entries = rows.len(), "cluster: suppression entries kept on this node only");
    }
}

/// Cluster mode: each time the node regains Redis, its live entries that Redis does not know
/// (written while it was unreachable, or all of them after Redis lost its data) are added
/// there; a removal made elsewhere meanwhile keeps its tombstone and wins.
pub async fn catch_up(suppressions: Suppressions, mut shutdown: crate::shutdown::Signal) {
    let Some(cluster) = suppressions.cluster.clone() else {
        return;
    };
    let mut contact = cluster.contact();
    // Contact made before this task subscribed counts too.
    let mut pending = *contact.borrow_and_update() > 0;
    loop {
        if !pending {
            tokio::select! {
                changed = contact.changed() => if changed.is_err() { return },
                _ = crate::shutdown::stopped(&mut shutdown) => return,
            }
        }
        pending = false;
        let rows = match crate::run_blocking(|| suppressions.all_live()) {
            Ok(rows) => rows,
            Err(e) => {
                tracing::warn!(error = %e, "cluster: cannot read the suppression list to share it");
                continue;
            }
        };
        match cluster.suppression_put_missing(&rows).await {
            Ok(0) => {}
            Ok(n) => tracing::info!(
                entries = n,
                "cluster: suppression entries kept while Redis was away are shared now"
            ),
            Err(e) => tracing::warn!(error = %e, "cluster: suppression entries not shared yet"),
        }
    }
}

impl Suppressions {
    /// Every live entry of every project, as `(project, address, JSON)` rows for Redis.
    fn all_live(&self) -> Result<Vec<(String, String, String)>, SuppressionError> {
        let now = now_ms();
        let mut out = Vec::new();
        for item in self.store.suppression.iter() {
            let (_, v) = item?;
            if let Some(e) = self.decode(&v).filter(|e| e.expires_ms > now) {
                out.push(shared_row(&e));
            }
        }
        Ok(out)
    }

    pub fn new(store: Store, expire_secs: u64) -> Suppressions {
        Suppressions {
            store,
            expire_ms: expire_secs.saturating_mul(1000),
            cluster: None,
        }
    }

    /// Cluster mode: the RCPT check also asks Redis, and admin changes are written there.
    pub fn with_cluster(mut self, cluster: Option<crate::cluster::Cluster>) -> Suppressions {
        self.cluster = cluster;
        self
    }

    pub fn cluster(&self) -> Option<&crate::cluster::Cluster> {
        self.cluster.as_ref()
    }

    /// What Redis says about `address` (cluster mode); `None` without a cluster or on any
    /// Redis error (the local tree answers alone then).
    async fn shared_state(&self, project: &str, address: &str) -> Option<Shared> {
        let cluster = self.cluster.as_ref()?;
        let address = normalize(address).ok()?;
        let v = cluster.suppression_get(project, &address).await.ok()?;
        Some(v.map_or(Shared::Absent, |v| self.shared_value(&v, now_ms())))
    }

    /// One value of the shared hash: a live entry, a removal, or nothing that counts (expired,
    /// or unreadable).
    fn shared_value(&self, v: &str, now: u64) -> Shared {
        match self.decode(v.as_bytes()) {
            Some(e) if e.expires_ms > now => Shared::Live(e),
            Some(_) => Shared::Absent,
            None => match serde_json::from_str::<Tombstone>(v) {
                Ok(t) => Shared::Removed(t.removed_ms),
                Err(_) => Shared::Absent,
            },
        }
    }

    /// [`Suppressions::remove`], and from Redis too in cluster mode: found in either is found.
    pub async fn remove_shared(
        &self,
        project: &str,
        address: &str,
    ) -> Result<Entry, SuppressionError> {
        let local = crate::run_blocking(|| self.remove(project, address));
        let Some(cluster) = &self.cluster else {
            return local;
        };
        let normalized = normalize(address)?;
        let tombstone = serde_json::json!({ "removed_ms": now_ms() }).to_string();
        let shared = match cluster
            .suppression_del(project, &normalized, &tombstone)
            .await
        {
            Ok(v) => v.and_then(|v| self.decode(v.as_bytes())),
            Err(e) => {
                tracing::warn!(project, error = %e, "cluster: suppression entry removed on this node only");
                None
            }
        };
        match (local, shared) {
            (Ok(e), _) => Ok(e),
            (Err(SuppressionError::NotFound(..)), Some(e)) => Ok(e),
            (Err(e), _) => Err(e),
        }
    }

    fn decode(&self, v: &[u8]) -> Option<Entry> {
        let mut e: Entry = serde_json::from_slice(v).ok()?;
        e.expires_ms = e.added_ms.saturating_add(self.expire_ms);
        Some(e)
    }

    /// The live entry for `address` in `project`, if any (an expired one does not count).
    pub fn is_suppressed(
        &self,
        project: &str,
        address: &str,
    ) -> Result<Option<Entry>, SuppressionError> {
        let Ok(address) = normalize(address) else {
            return Ok(None);
        };
        Ok(self
            .store
            .suppression
            .get(key(project, &address))?
            .and_then(|v| self.decode(&v))
            .filter(|e| e.expires_ms > now_ms()))
    }

    /// The check at RCPT and in the send API: `Some(reply text)` when `address` is suppressed,
    /// after recording a `suppressed` event (and the webhooks it owes). The event is best
    /// effort: failing to store it never turns the refusal into an acceptance.
    pub async fn refuse(&self, project: &str, address: &str) -> Option<String> {
        let local = match self.is_suppressed(project, address) {
            Ok(e) => e,
            Err(e) => {
                // The list cannot be read: let the message through rather than refuse mail
                // on a storage hiccup (the upstream will refuse a dead address again).
                tracing::warn!(project, error = %e, "cannot read the suppression list");
                return None;
            }
        };
        // Cluster mode: a shared entry counts too; a removal on any node outranks an older
        // entry in this node's own tree.
        let entry = match (local, self.shared_state(project, address).await) {
            (_, Some(Shared::Live(e))) => e,
            (Some(l), Some(Shared::Removed(at))) if at >= l.added_ms => {
                self.drop_outranked(project, &l.address, at);
                return None;
            }
            (Some(l), _) => l,
            (None, _) => return None,
        };
        let text = refusal_text(project, &entry);
        crate::metrics::recipient_suppressed(project);
        tracing::info!(project, recipient = %entry.address, "recipient refused: suppressed");
        let event = suppressed_event(project, &entry.address, &format!("550 {text}"));
        match crate::events::stage(&self.store, &[event]) {
            Ok(()) => {
                if self.store.durable().await.is_ok() {
                    crate::events::outbox::wake();
                }
            }
            Err(e) => tracing::warn!(project, error = %e, "cannot record a suppressed event"),
        }
        Some(text)
    }

    /// Adds (or renews) an entry by hand.
    pub fn add(
        &self,
        project: &str,
        address: &str,
        reason: &str,
    ) -> Result<Entry, SuppressionError> {
        let address = normalize(address)?;
        let reason = reason.trim();
        let entry = Entry {
            project: project.to_string(),
            address: address.clone(),
            reason: if reason.is_empty() {
                "added by an administrator".into()
            } else {
                reason
                    .chars()
                    .filter(|c| !c.is_control())
                    .take(500)
                    .collect()
            },
            source: "admin".into(),
            added_ms: now_ms(),
            message_id: None,
            expires_ms: 0,
        };
        self.store.suppression.insert(
            key(project, &address),
            serde_json::to_vec(&entry).unwrap_or_default(),
        )?;
        self.store.flush_now()?;
        crate::metrics::suppression_added("admin");
        Ok(Entry {
            expires_ms: entry.added_ms.saturating_add(self.expire_ms),
            ..entry
        })
    }

    /// Removes an entry; an address not on the list is an error naming it.
    pub fn remove(&self, project: &str, address: &str) -> Result<Entry, SuppressionError> {
        let address = normalize(address)?;
        let old = self.store.suppression.remove(key(project, &address))?;
        self.store.flush_now()?;
        old.and_then(|v| self.decode(&v))
            .ok_or_else(|| SuppressionError::NotFound(address, project.to_string()))
    }

    /// The project's live entries, in address order.
    pub fn list(&self, project: &str) -> Result<Vec<Entry>, SuppressionError> {
        let mut prefix = project.as_bytes().to_vec();
        prefix.push(0);
        let now = now_ms();
        let mut out = Vec::new();
        for item in self.store.suppression.scan_prefix(prefix) {
            let (_, v) = item?;
            if let Some(e) = self.decode(&v).filter(|e| e.expires_ms > now) {
                out.push(e);
            }
        }
        Ok(out)
    }

    /// [`Suppressions::list`] as the cluster sees it: this node's entries and the shared ones,
    /// a removal on any node outranking an older entry here (as at RCPT). With Redis
    /// unreachable, this node's own entries (and a warning in the log).
    pub async fn list_shared(&self, project: &str) -> Result<Vec<Entry>, SuppressionError> {
        let local = crate::run_blocking(|| self.list(project))?;
        let Some(cluster) = &self.cluster else {
            return Ok(local);
        };
        let shared = match cluster.suppression_all(project).await {
            Ok(v) => v,
            Err(e) => {
                tracing::warn!(project, error = %e, "cluster: suppression list of this node only");
                return Ok(local);
            }
        };
        let now = now_ms();
        let mut merged: std::collections::BTreeMap<String, Entry> =
            local.into_iter().map(|e| (e.address.clone(), e)).collect();
        for (address, v) in shared {
            let local = merged.get(&address);
            match self.shared_value(&v, now) {
                Shared::Live(e) if local.is_none_or(|l| l.added_ms <= e.added_ms) => {
                    merged.insert(address, e);
                }
                Shared::Removed(at) if local.is_some_and(|l| at >= l.added_ms) => {
                    merged.remove(&address);
                    self.drop_outranked(project, &address, at);
                }
                _ => {}
            }
        }
        Ok(merged.into_values().collect())
    }

    /// Deletes this node's entry for `address` if it is older than a removal made on another
    /// node, so the node does not refuse it again while Redis is away. Best effort: the
    /// tombstone keeps outranking it meanwhile.
    fn drop_outranked(&self, project: &str, address: &str, removed_ms: u64) {
        let k = key(project, address);
        let outranked = |v: Option<&[u8]>| {
            v.and_then(|v| self.decode(v))
                .is_some_and(|e| e.added_ms <= removed_ms)
        };
        if let Ok(current) = self.store.suppression.get(&k)
            && outranked(current.as_deref())
        {
            // Only if unchanged since read: an entry re-added meanwhile stays.
            let _ = self
                .store
                .suppression
                .compare_and_swap(&k, current, None as Option<&[u8]>);
        }
    }

    /// Removes expired entries (and undecodable ones); returns how many.
    pub fn prune(&self, now: u64) -> Result<usize, SuppressionError> {
        let mut stale = Vec::new();
        for item in self.store.suppression.iter() {
            let (k, v) = item?;
            if self.decode(&v).is_none_or(|e| e.expires_ms <= now) {
                stale.push(k);
            }
        }
        for k in &stale {
            self.store.suppression.remove(k)?;
        }
        Ok(stale.len())
    }
}

/// The RCPT reply for a suppressed recipient (DESIGN.md reply table). The reason is cut to
/// 120 characters so the line stays within SMTP's 512 octets with the longest address.
pub fn refusal_text(project: &str, entry: &Entry) -> String {
    let reason: String = entry
        .reason
        .chars()
        .filter(|c| !c.is_control())
        .take(120)
        .collect();
    format!(
        "5.1.1 Recipient suppressed: {reason}; remove with smtp-relay suppression remove {project} {}",
        entry.address
    )
}

/// The `suppressed` event for a recipient refused before any message existed: no message id.
pub fn suppressed_event(project: &str, address: &str, reply: &str) -> Event {
    let mut e = Event::new_unqueued(EventKind::Suppressed, project, vec![address.to_string()]);
    e = e.with_reply(Some(reply));
    e.reason = Some("suppressed".into());
    e
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn which_refusals_suppress() {
        assert!(refusal_names_recipient("550 5.1.1 No such user"));
        assert!(refusal_names_recipient(
            "550 5.1.10 RESOLVER.ADR.RecipientNotFound"
        ));
        assert!(refusal_names_recipient("554 5.2.1 Mailbox disabled"));
        assert!(refusal_names_recipient("550 No such user here"));
        assert!(!refusal_names_recipient(
            "550 5.7.1 Message rejected as spam"
        ));
        assert!(!refusal_names_recipient("554 5.6.7 needs SMTPUTF8"));
        assert!(!refusal_names_recipient("452 4.2.2 Mailbox full"));
        assert!(!refusal_names_recipient("552 5.2.2 Mailbox full"));
        assert!(!refusal_names_recipient("554 Transaction failed"));
        assert!(!refusal_names_recipient("553 Sender address rejected"));
        assert!(!refusal_names_recipient(
            "550 5.1.8 Sender domain does not exist"
        ));
        assert!(!refusal_names_recipient(
            "553 5.1.7 Bad sender address syntax"
        ));
        assert!(!refusal_names_recipient(""));
    }

    #[test]
    fn addresses_normalize() {
        assert_eq!(normalize("<Bob@Example.NET>").unwrap(), "bob@example.net");
        assert!(normalize("bob").is_err());
        assert!(normalize("a b@x.test").is_err());
        assert!(normalize("@x.test").is_err());
    }
}
