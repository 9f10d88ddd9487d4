//! Idempotency keys: a retried request (HTTP `Idempotency-Key`, or an SMTP message carrying an
//! `Idempotency-Key:` / `X-Idempotency-Key:` / `Resend-Idempotency-Key:` header) must not send a
//! second password-reset mail.
//!
//! A key is scoped to its project and remembered for the window (`idempotency.window_secs`,
//! 24 h by default) in the `idempotency` tree. The API is four calls, small on purpose so that
//! a shared store (cluster mode) can stand in for sled later: [`Idempotency::check_or_reserve`]
//! (answer from a finished request, or refuse a different or concurrent one, or reserve the
//! key), [`Idempotency::complete`] (record the outcome — a staged write that the caller's group
//! commit makes durable *together with* the message), [`Idempotency::release`] (the request was
//! refused: forget the reservation so a retry may run), and [`Idempotency::prune`].
//!
//! Reservations are in memory (a request in flight dies with the process, and its client got
//! no answer); records are durable. The record is written after the message in the same flush,
//! and sled recovers a prefix of its log, so a durable record always has its durable message:
//! a crash can at worst forget a key whose message survived unacknowledged (the client's
//! retry then sends a duplicate), never answer a retry with the id of a lost message.
//!
//! Keys: `k ‖ project \0 key` → record (JSON); `x ‖ expiry (BE u64 ms) ‖ project \0 key` → ()
//! so pruning reads only what has expired.
//!
//! Cluster mode ([`Idempotency::set_cluster`]): a key new to this node is also reserved in
//! Redis ([`Idempotency::check_or_reserve_shared`], `cluster/idempotency.rs`), so a retry
//! that reaches another node finds it in flight or answered; the record is written there
//! once the message is durable here ([`Idempotency::share`]). The local records stay (each
//! node's own durability). While Redis does not answer the node decides alone: a retry sent
//! to another node may then be queued twice — duplicated, never lost.

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::store::{Store, StoreError, be64, read_be64};

/// Longest key accepted (Resend's limit).
pub const MAX_KEY_LEN: usize = 256;

/// Header fields an SMTP message may carry its key in (Resend documents the last one).
pub const HEADER_NAMES: [&str; 3] = [
    "Idempotency-Key",
    "X-Idempotency-Key",
    "Resend-Idempotency-Key",
];

#[derive(Debug, thiserror::Error)]
pub enum IdempotencyError {
    #[error("the idempotency key has to be between 1 and {MAX_KEY_LEN} characters")]
    InvalidKey,
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl From<sled::Error> for IdempotencyError {
    fn from(e: sled::Error) -> Self {
        IdempotencyError::Store(StoreError::Sled(e))
    }
}

/// What makes two requests "the same": a digest of what the client sent (HTTP: path and body),
/// or `Any` for SMTP, where a retry is rebuilt by the client's mailer with a new Date and
/// Message-ID and so never has the same bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Fingerprint {
    Digest(String),
    Any,
}

impl Fingerprint {
    pub fn of(parts: &[&[u8]]) -> Fingerprint {
        let mut h = Sha256::new();
        for p in parts {
            h.update((p.len() as u64).to_be_bytes());
            h.update(p);
        }
        Fingerprint::Digest(hex::encode(h.finalize()))
    }
}

/// What the first request produced, replayed to its retries.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Outcome {
    /// Queue (or sandbox) ids, in request order.
    pub ids: Vec<String>,
    /// A `POST /emails/batch` answer (`{"data": [...]}`), not a single `{"id"}`.
    #[serde(default)]
    pub batch: bool,
    /// Per-email errors of a batch that was queued only in part.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub errors: Option<serde_json::Value>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Record {
    created_ms: u64,
    expires_ms: u64,
    /// `None`: recorded by SMTP (no request digest).
    fingerprint: Option<String>,
    outcome: Outcome,
}

/// The answer to a key.
#[derive(Debug)]
pub enum Check {
    /// Never seen in the window: go ahead; the key is held until completed or released.
    Fresh(Reservation),
    /// Done before: answer this, queue nothing.
    Replay(Outcome),
    /// Done before, with a different request (HTTP 409 `invalid_idempotent_request`).
    Mismatch,
    /// The first request is still running (HTTP 409 `concurrent_idempotent_requests`).
    InFlight,
}

/// A key held by one request. Dropping it without [`Idempotency::complete`] releases it.
#[derive(Debug)]
pub struct Reservation {
    key: Vec<u8>,
    fingerprint: Option<String>,
    window_ms: u64,
    in_flight: Arc<Mutex<HashSet<Vec<u8>>>>,
    /// Cluster mode: the reservation this request also holds in Redis.
    shared: Option<SharedHold>,
    /// The record [`Idempotency::complete`] wrote, and its expiry, for [`Idempotency::share`].
    recorded: Mutex<Option<(String, u64)>>,
}

#[derive(Debug)]
struct SharedHold {
    cluster: crate::cluster::Cluster,
    project: String,
    key: String,
    token: String,
    /// The record replaced the reservation in Redis: nothing to release.
    settled: AtomicBool,
}

impl Drop for Reservation {
    fn drop(&mut self) {
        if let Ok(mut set) = self.in_flight.lock() {
            set.remove(&self.key);
        }
        // A refused request frees its shared reservation too, so that a retry may run on
        // any node (best effort: it expires by itself otherwise).
        if let Some(h) = self.shared.take()
            && !h.settled.load(Ordering::Acquire)
            && let Ok(rt) = tokio::runtime::Handle::try_current()
        {
            rt.spawn(async move {
                if let Err(e) = h.cluster.idem_release(&h.project, &h.key, &h.token).await {
                    tracing::warn!(project = %h.project, error = %e, "cluster: cannot release an idempotency key; it expires by itself");
                }
            });
        }
    }
}

/// How long a shared reservation outlives a node that died holding it (a request runs
/// seconds, not minutes).
const SHARED_IN_FLIGHT_MS: u64 = 10 * 60 * 1000;

#[derive(Clone, Debug)]
pub struct Idempotency {
    store: Store,
    in_flight: Arc<Mutex<HashSet<Vec<u8>>>>,
    cluster: Arc<OnceLock<crate::cluster::Cluster>>,
}

fn record_key(project: &str, key: &str) -> Vec<u8> {
    let mut k = Vec::with_capacity(project.len() + key.len() + 2);
    k.push(b'k');
    k.extend_from_slice(project.as_bytes());
    k.push(0);
    k.extend_from_slice(key.as_bytes());
    k
}

fn expiry_key(expires_ms: u64, record_key: &[u8]) -> Vec<u8> {
    let mut k = Vec::with_capacity(record_key.len() + 9);
    k.push(b'x');
    k.extend_from_slice(&be64(expires_ms));
    k.extend_from_slice(&record_key[1..]);
    k
}

/// Whether a request with `fingerprint` is the one `rec` recorded (SMTP matches anything).
fn same_request(fingerprint: &Fingerprint, rec: &Record) -> bool {
    match (fingerprint, &rec.fingerprint) {
        (Fingerprint::Any, _) => true,
        (Fingerprint::Digest(a), Some(b)) => a == b,
        (Fingerprint::Digest(_), None) => false,
    }
}

/// A key as the client gave it, checked: 1 to 256 characters, no control characters.
pub fn validate_key(raw: &str) -> Result<&str, IdempotencyError> {
    let key = raw.trim();
    if key.is_empty() || key.chars().count() > MAX_KEY_LEN || key.chars().any(char::is_control) {
        return Err(IdempotencyError::InvalidKey);
    }
    Ok(key)
}

impl Idempotency {
    pub fn new(store: Store) -> Idempotency {
        Idempotency {
            store,
            in_flight: Arc::default(),
            cluster: Arc::default(),
        }
    }

    /// Cluster mode: keys are reserved and recorded in Redis too from now on.
    pub fn set_cluster(&self, cluster: crate::cluster::Cluster) {
        let _ = self.cluster.set(cluster);
    }

    /// [`Idempotency::check_or_reserve`], then, for a key new to this node in cluster mode,
    /// the shared reservation: another node's reservation or record decides instead. Redis
    /// not answering leaves the local answer (module doc).
    pub async fn check_or_reserve_shared(
        &self,
        project: &str,
        key: &str,
        fingerprint: Fingerprint,
        window_secs: u64,
        now_ms: u64,
    ) -> Result<Check, IdempotencyError> {
        let checked =
            self.check_or_reserve(project, key, fingerprint.clone(), window_secs, now_ms)?;
        let mut r = match (checked, self.cluster.get()) {
            (Check::Fresh(r), Some(c)) if c.idempotency_shared() => r,
            (other, _) => return Ok(other),
        };
        let Some(cluster) = self.cluster.get() else {
            return Ok(Check::Fresh(r));
        };
        let key = validate_key(key)?;
        let token = format!(
            "inflight {} {:016x}",
            cluster.node_id(),
            rand::random::<u64>()
        );
        let ttl = r.window_ms.clamp(1, SHARED_IN_FLIGHT_MS);
        match cluster.idem_reserve(project, key, &token, ttl).await {
            Ok(crate::cluster::idempotency::SharedKey::Reserved) => {
                r.shared = Some(SharedHold {
                    cluster: cluster.clone(),
                    project: project.to_string(),
                    key: key.to_string(),
                    token,
                    settled: AtomicBool::new(false),
                });
                Ok(Check::Fresh(r))
            }
            Ok(crate::cluster::idempotency::SharedKey::Taken(v)) => {
                if v.starts_with("inflight") {
                    return Ok(Check::InFlight);
                }
                match serde_json::from_str::<Record>(&v) {
                    Ok(rec) => Ok(if same_request(&fingerprint, &rec) {
                        Check::Replay(rec.outcome)
                    } else {
                        Check::Mismatch
                    }),
                    // Not ours to judge: this node's answer stands.
                    Err(_) => Ok(Check::Fresh(r)),
                }
            }
            Err(e) => {
                tracing::warn!(project, error = %e, "cluster: idempotency key checked on this node only");
                Ok(Check::Fresh(r))
            }
        }
    }

    /// Cluster mode: the record [`Idempotency::complete`] wrote goes to Redis, for retries
    /// that reach other nodes. Call it once the message is durable here.
    pub async fn share(&self, r: &Reservation) {
        let Some(h) = &r.shared else { return };
        let recorded = r.recorded.lock().ok().and_then(|g| g.clone());
        let Some((record, expires_ms)) = recorded else {
            return;
        };
        let ttl = expires_ms.saturating_sub(crate::queue::now_ms());
        match h
            .cluster
            .idem_record(&h.project, &h.key, &record, ttl)
            .await
        {
            Ok(()) => h.settled.store(true, Ordering::Release),
            Err(e) => {
                tracing::warn!(project = %h.project, error = %e, "cluster: idempotency key recorded on this node only");
            }
        }
    }

    /// Looks the key up for `project`; reserves it when it is new. `window_secs` is how long
    /// a completed key will be remembered.
    pub fn check_or_reserve(
        &self,
        project: &str,
        key: &str,
        fingerprint: Fingerprint,
        window_secs: u64,
        now_ms: u64,
    ) -> Result<Check, IdempotencyError> {
        let key = validate_key(key)?;
        self.store.check_healthy()?;
        let rk = record_key(project, key);
        // One lock around look-up and reservation: two requests racing for a new key must
        // not both see it as new.
        let mut set = self
            .in_flight
            .lock()
            .map_err(|_| StoreError::Failed("idempotency lock poisoned".into()))?;
        if set.contains(&rk) {
            return Ok(Check::InFlight);
        }
        if let Some(v) = self.store.idempotency.get(&rk)?
            && let Ok(rec) = serde_json::from_slice::<Record>(&v)
            && rec.expires_ms > now_ms
        {
            return Ok(if same_request(&fingerprint, &rec) {
                Check::Replay(rec.outcome)
            } else {
                Check::Mismatch
            });
        }
        set.insert(rk.clone());
        Ok(Check::Fresh(Reservation {
            key: rk,
            fingerprint: match fingerprint {
                Fingerprint::Digest(d) => Some(d),
                Fingerprint::Any => None,
            },
            window_ms: window_secs.saturating_mul(1000),
            in_flight: self.in_flight.clone(),
            shared: None,
            recorded: Mutex::new(None),
        }))
    }

    /// Records the outcome of a reserved key. Not durable by itself: call it right after the
    /// message's own writes and before the group commit that acknowledges them.
    pub fn complete(
        &self,
        r: &Reservation,
        outcome: &Outcome,
        now_ms: u64,
    ) -> Result<(), sled::Error> {
        let expires_ms = now_ms.saturating_add(r.window_ms);
        let rec = Record {
            created_ms: now_ms,
            expires_ms,
            fingerprint: r.fingerprint.clone(),
            outcome: outcome.clone(),
        };
        let encoded = serde_json::to_vec(&rec).unwrap_or_default();
        if r.shared.is_some()
            && let Ok(mut g) = r.recorded.lock()
        {
            *g = Some((String::from_utf8_lossy(&encoded).into_owned(), expires_ms));
        }
        self.store.idempotency.insert(&r.key, encoded)?;
        self.store
            .idempotency
            .insert(expiry_key(expires_ms, &r.key), &[])?;
        Ok(())
    }

    /// [`Idempotency::complete`] for an outcome that has no message commit of its own to
    /// ride on (a batch queued only in part): written and flushed.
    pub async fn complete_durably(
        &self,
        r: &Reservation,
        outcome: &Outcome,
        now_ms: u64,
    ) -> Result<(), StoreError> {
        self.complete(r, outcome, now_ms)
            .inspect_err(|e| self.store.note_error(e))?;
        self.store.durable().await?;
        self.share(r).await;
        Ok(())
    }

    /// The request was refused: the key is free again, and a retry runs as a new request.
    pub fn release(&self, r: Reservation) {
        drop(r);
    }

    /// Removes the records whose window has passed; returns how many. Idempotent: an
    /// interrupted prune is finished by the next.
    pub fn prune(&self, now_ms: u64) -> Result<usize, IdempotencyError> {
        self.store.check_healthy()?;
        let mut end = vec![b'x'];
        end.extend_from_slice(&be64(now_ms));
        let mut removed = 0;
        for item in self.store.idempotency.range(b"x".to_vec()..end) {
            let (ik, _) = item?;
            let Some(expires_ms) = ik.get(1..9).and_then(read_be64) else {
                self.store.idempotency.remove(&ik)?;
                continue;
            };
            let mut rk = vec![b'k'];
            rk.extend_from_slice(&ik[9..]);
            // The key may have been used again since: only a record this old goes.
            let stale = match self.store.idempotency.get(&rk)? {
                Some(v) => serde_json::from_slice::<Record>(&v)
                    .map(|r| r.expires_ms <= expires_ms)
                    .unwrap_or(true),
                None => false,
            };
            if stale {
                self.store.idempotency.remove(&rk)?;
                removed += 1;
            }
            self.store.idempotency.remove(&ik)?;
        }
        Ok(removed)
    }
}

/// The idempotency key header of a message's header section (the first of [`HEADER_NAMES`]),
/// unfolded and trimmed. The transform's header step removes every such field before the
/// message leaves (`transform/headers.rs`).
pub fn find_in_message(message: &[u8]) -> Option<String> {
    crate::transform::headers::HeaderFields::new(message)
        .find(|f| HEADER_NAMES.iter().any(|n| f.is(n)))
        .map(|f| {
            let unfolded: String = String::from_utf8_lossy(f.value)
                .chars()
                .filter(|c| *c != '\r' && *c != '\n')
                .collect();
            unfolded.trim().to_string()
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn store() -> (tempfile::TempDir, Idempotency) {
        let dir = tempfile::tempdir().unwrap();
        let s = Store::open(dir.path()).unwrap();
        (dir, Idempotency::new(s))
    }

    fn outcome(id: &str) -> Outcome {
        Outcome {
            ids: vec![id.into()],
            batch: false,
            errors: None,
        }
    }

    #[test]
    fn reserve_complete_replay_mismatch_expire() {
        let (_d, idem) = store();
        let fp = Fingerprint::of(&[b"/emails", b"{}"]);
        let Check::Fresh(r) = idem
            .check_or_reserve("p", "k1", fp.clone(), 60, 1_000)
            .unwrap()
        else {
            panic!("new key")
        };
        assert!(matches!(
            idem.check_or_reserve("p", "k1", fp.clone(), 60, 1_000)
                .unwrap(),
            Check::InFlight
        ));
        idem.complete(&r, &outcome("m1"), 1_000).unwrap();
        drop(r);
        match idem
            .check_or_reserve("p", "k1", fp.clone(), 60, 2_000)
            .unwrap()
        {
            Check::Replay(o) => assert_eq!(o.ids, vec!["m1".to_string()]),
            other => panic!("{other:?}"),
        }
        let other = Fingerprint::of(&[b"/emails", b"{\"a\":1}"]);
        assert!(matches!(
            idem.check_or_reserve("p", "k1", other, 60, 2_000).unwrap(),
            Check::Mismatch
        ));
        // SMTP retries match whatever was sent.
        assert!(matches!(
            idem.check_or_reserve("p", "k1", Fingerprint::Any, 60, 2_000)
                .unwrap(),
            Check::Replay(_)
        ));
        // Another project's key space.
        assert!(matches!(
            idem.check_or_reserve("q", "k1", fp.clone(), 60, 2_000)
                .unwrap(),
            Check::Fresh(_)
        ));
        // Past the window: new again, and pruned.
        assert_eq!(idem.prune(30_000).unwrap(), 0);
        assert_eq!(idem.prune(61_001).unwrap(), 1);
        assert!(matches!(
            idem.check_or_reserve("p", "k1", fp, 60, 61_001).unwrap(),
            Check::Fresh(_)
        ));
    }

    #[test]
    fn released_keys_are_free() {
        let (_d, idem) = store();
        let Check::Fresh(r) = idem
            .check_or_reserve("p", "k", Fingerprint::Any, 60, 1)
            .unwrap()
        else {
            panic!()
        };
        idem.release(r);
        assert!(matches!(
            idem.check_or_reserve("p", "k", Fingerprint::Any, 60, 1)
                .unwrap(),
            Check::Fresh(_)
        ));
        assert!(matches!(
            idem.check_or_reserve("p", "", Fingerprint::Any, 60, 1),
            Err(IdempotencyError::InvalidKey)
        ));
        let long = "a".repeat(257);
        assert!(
            idem.check_or_reserve("p", &long, Fingerprint::Any, 60, 1)
                .is_err()
        );
    }

    #[test]
    fn header_found() {
        let m = b"From: a@b.test\r\nX-Idempotency-Key: reset/\r\n 42\r\nSubject: s\r\n\r\nIdempotency-Key: body\r\n";
        assert_eq!(find_in_message(m).as_deref(), Some("reset/ 42"));
        assert_eq!(
            find_in_message(b"Subject: s\r\n\r\nIdempotency-Key: body\r\n"),
            None
        );
    }
}
