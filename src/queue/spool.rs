//! The spool: every accepted, not yet finished message — its envelope and its exact bytes.
//!
//! Keys: `id ‖ 'e'` → envelope (JSON), `id ‖ 'm'` → message bytes. Each change to a message
//! is a short sequence of single-key writes to spool, log and schedule, then made durable by
//! the group commit. Not a sled transaction: sled seals and writes its log buffer twice for
//! every transaction or batch (`pin_log`), which was most of its disk writes per message.
//! Instead the order of the writes keeps every crash state recoverable (sled recovers a prefix
//! of its log): a message is written body → envelope → log → schedule, and finished
//! log → envelope → body. So a body never lacks its envelope while the message is live, a
//! body without an envelope is the leftover of a message never acknowledged or already
//! finished, and the schedule, derived from the envelopes, is rebuilt by [`Queue::recover`].
//! The delivery events of a change and the webhook deliveries they owe are written right after
//! the log entry (`events::stage`), so the same flush makes them durable.
//!
//! Bodies over `memory_budget::SPILL_THRESHOLD` are not put in sled: sled keeps large values
//! in memory long after they are written (20 × 25 MiB held over 1 GiB). They go to
//! `<state_dir>/bodies/<id>`, written and fsync'd (file and directory) before sled is written,
//! which then records `id ‖ 'f'` instead of `id ‖ 'm'`. A crash between the two leaves only an
//! orphan file, removed by [`Queue::recover`]; the file is unlinked after the writes that
//! finish or delete the message.

use serde::{Deserialize, Serialize};

use crate::queue::{now_ms, schedule};
use crate::store::{Store, StoreError};

#[derive(Debug, thiserror::Error)]
pub enum QueueError {
    #[error("storage error: {0}")]
    Store(#[from] StoreError),
    #[error("no queued message {0}")]
    NotFound(String),
    #[error("cannot write a large message to disk: {0}")]
    Spill(std::io::Error),
}

impl From<sled::Error> for QueueError {
    fn from(e: sled::Error) -> Self {
        QueueError::Store(StoreError::Sled(e))
    }
}

impl QueueError {
    /// Out of space or an I/O failure: the session must answer 452/451, never 250.
    pub fn is_disk_full(&self) -> bool {
        match self {
            QueueError::Store(e) => e.is_disk_full(),
            QueueError::Spill(e) => e.raw_os_error() == Some(libc::ENOSPC),
            QueueError::NotFound(_) => false,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum MessageState {
    Queued,
    Deferred,
    Delivered,
    Failed,
    Expired,
    Deleted,
}

impl MessageState {
    pub fn is_final(self) -> bool {
        !matches!(self, MessageState::Queued | MessageState::Deferred)
    }
    pub fn as_str(self) -> &'static str {
        match self {
            MessageState::Queued => "queued",
            MessageState::Deferred => "deferred",
            MessageState::Delivered => "delivered",
            MessageState::Failed => "failed",
            MessageState::Expired => "expired",
            MessageState::Deleted => "deleted",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RcptState {
    Pending,
    Delivered,
    Failed,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Recipient {
    pub address: String,
    pub state: RcptState,
    pub reply: Option<String>,
    /// DSN parameters of its RCPT (absent in envelopes written before they were kept).
    #[serde(default, skip_serializing_if = "RcptParams::is_empty")]
    pub params: RcptParams,
}

/// What the client said on MAIL FROM beyond the address, kept so delivery can say it again
/// to the upstream (RFC 6152 8BITMIME, RFC 6531 SMTPUTF8, RFC 3461 DSN). Every field
/// defaults, so envelopes queued before these were kept still load.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct MailParams {
    /// `BODY=8BITMIME` was declared.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub body_8bitmime: bool,
    /// `SMTPUTF8` was declared.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub smtputf8: bool,
    /// `RET=FULL` or `RET=HDRS`, uppercased.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ret: Option<String>,
    /// `ENVID`, still xtext-encoded as received: passed on verbatim.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub envid: Option<String>,
}

impl MailParams {
    pub fn is_empty(&self) -> bool {
        *self == MailParams::default()
    }
}

/// DSN parameters of one RCPT TO (RFC 3461), validated at RCPT and passed on verbatim.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RcptParams {
    /// `NOTIFY`: `NEVER`, or a comma list of `SUCCESS`, `FAILURE`, `DELAY` (uppercased).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub notify: Option<String>,
    /// `ORCPT`: `addr-type;xtext`, as received.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub orcpt: Option<String>,
}

impl RcptParams {
    pub fn is_empty(&self) -> bool {
        self.notify.is_none() && self.orcpt.is_none()
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Envelope {
    pub id: String,
    pub project: String,
    pub mail_from: String,
    /// MAIL FROM parameters to repeat to the upstream.
    #[serde(default, skip_serializing_if = "MailParams::is_empty")]
    pub mail_params: MailParams,
    pub recipients: Vec<Recipient>,
    pub size: usize,
    pub client_ip: String,
    pub received_ms: u64,
    pub expires_ms: u64,
    pub next_attempt_ms: u64,
    pub attempts: u32,
    pub state: MessageState,
    pub upstream: Option<String>,
    pub last_reply: Option<String>,
    /// The app's own `Message-ID` header, for delivery events (absent in older envelopes).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub header_message_id: Option<String>,
    /// Subject, header From and header fields for the log (`summary.rs`; empty in older envelopes).
    #[serde(default)]
    pub summary: crate::queue::summary::MessageSummary,
}

/// Queue size for monitoring.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QueueStats {
    /// Messages waiting for a delivery attempt (not counting attempts in flight).
    pub scheduled: u64,
    /// When the oldest message still in the spool was accepted.
    pub oldest_received_ms: Option<u64>,
}

/// What a session hands to the queue.
#[derive(Debug, Clone)]
pub struct NewMessage {
    /// From [`new_id`], chosen by the session so the Received header can name it.
    pub id: String,
    pub project: String,
    pub mail_from: String,
    pub mail_params: MailParams,
    pub recipients: Vec<String>,
    /// DSN parameters, in the order of `recipients` (missing ones: none given).
    pub rcpt_params: Vec<RcptParams>,
    pub client_ip: String,
    pub max_age_secs: u64,
    /// First delivery no earlier than this (ms since the epoch): the release slot of a project
    /// in accept-and-delay mode. `None`: due at once.
    pub not_before_ms: Option<u64>,
    /// Subject and header From of the message as the app submitted it.
    pub summary: crate::queue::summary::MessageSummary,
}

pub(crate) fn decode<T: for<'a> Deserialize<'a>>(v: &[u8]) -> Result<T, QueueError> {
    serde_json::from_slice(v).map_err(|e| QueueError::Store(StoreError::Corrupt(e.to_string())))
}

fn encode<T: Serialize>(v: &T) -> Vec<u8> {
    serde_json::to_vec(v).unwrap_or_default()
}

fn env_key(id: &str) -> Vec<u8> {
    let mut k = id.as_bytes().to_vec();
    k.push(b'e');
    k
}

fn msg_key(id: &str) -> Vec<u8> {
    let mut k = id.as_bytes().to_vec();
    k.push(b'm');
    k
}

/// Marks a body kept in a file of its own.
fn file_key(id: &str) -> Vec<u8> {
    let mut k = id.as_bytes().to_vec();
    k.push(b'f');
    k
}

/// A queued body: as sled holds it (no copy), or read from its own file.
pub enum StoredBody {
    Inline(sled::IVec),
    File(Vec<u8>),
}

impl std::ops::Deref for StoredBody {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        match self {
            StoredBody::Inline(v) => v,
            StoredBody::File(v) => v,
        }
    }
}

/// Writes `bytes` to `path` and makes file and directory entry durable.
pub(crate) fn write_durable(
    dir: &std::path::Path,
    path: &std::path::Path,
    bytes: &[u8],
) -> std::io::Result<()> {
    use std::io::Write;
    std::fs::create_dir_all(dir)?;
    let mut f = std::fs::File::create(path)?;
    f.write_all(bytes)?;
    f.sync_all()?;
    std::fs::File::open(dir)?.sync_all()
}

/// Time-ordered id: 12 hex digits of milliseconds, 12 of randomness.
pub fn new_id(now: u64) -> String {
    let r: u64 = rand::random::<u64>() & 0xffff_ffff_ffff;
    format!("{:012x}{:012x}", now & 0xffff_ffff_ffff, r)
}

/// The acceptance time encoded in the first 12 hex digits of an id (see [`new_id`]).
fn id_time_ms(key: &[u8]) -> Option<u64> {
    let hex = std::str::from_utf8(key.get(..12)?).ok()?;
    u64::from_str_radix(hex, 16).ok()
}

#[derive(Clone, Debug)]
pub struct Queue {
    store: Store,
    wake: std::sync::Arc<tokio::sync::Notify>,
    /// Bytes that must stay free on the spool's filesystem (`server.min_free_space`).
    min_free: u64,
    /// Cluster mode: suppression entries from refusals are shared once durable.
    cluster: std::sync::Arc<std::sync::OnceLock<crate::cluster::Cluster>>,
}

impl Queue {
    pub fn new(store: Store) -> Queue {
        Queue {
            store,
            wake: std::sync::Arc::new(tokio::sync::Notify::new()),
            min_free: 0,
            cluster: std::sync::Arc::default(),
        }
    }

    /// Cluster mode: suppression entries recorded with an outcome also go to Redis.
    pub fn set_cluster(&self, cluster: crate::cluster::Cluster) {
        let _ = self.cluster.set(cluster);
    }

    /// Refuse new messages while less than `bytes` would stay free on disk.
    pub fn with_min_free(mut self, bytes: u64) -> Queue {
        self.min_free = bytes;
        self
    }

    /// Records a failed write (I/O errors mark the store failed) and converts it.
    fn write_err(&self, e: sled::Error) -> QueueError {
        self.store.note_error(&e);
        QueueError::from(e)
    }

    /// An unnamed file on the spool's filesystem for a large body while it arrives
    /// (`inbound/connection.rs`); it disappears when closed, and after a crash. Refused, like a
    /// new message, while space is short: the database must never be the one to hit ENOSPC.
    pub fn spill_file(&self, max_size: usize) -> Result<std::fs::File, QueueError> {
        self.store.check_healthy()?;
        self.store.ensure_space(max_size as u64, self.min_free)?;
        let dir = self.store.state_dir().join("incoming");
        std::fs::create_dir_all(&dir).map_err(QueueError::Spill)?;
        tempfile::tempfile_in(&dir).map_err(QueueError::Spill)
    }

    /// Woken when new work is scheduled, so delivery does not wait for its next poll.
    pub fn wake_handle(&self) -> std::sync::Arc<tokio::sync::Notify> {
        self.wake.clone()
    }

    /// Stores a message durably. Returns its id only once it is safe to answer `250`.
    pub async fn enqueue(&self, msg: NewMessage, bytes: &[u8]) -> Result<Envelope, QueueError> {
        self.enqueue_with(msg, bytes, || Ok(())).await
    }

    /// Refuses a write of `len` bytes while less than `server.min_free_space` would stay free.
    pub fn ensure_space(&self, len: usize) -> Result<(), QueueError> {
        Ok(self.store.ensure_space(len as u64, self.min_free)?)
    }

    /// The envelope a new message gets when it is accepted now.
    pub fn envelope_for(&self, msg: NewMessage, bytes: &[u8]) -> Envelope {
        let now = now_ms();
        Envelope {
            id: msg.id,
            project: msg.project,
            mail_from: msg.mail_from,
            mail_params: msg.mail_params,
            recipients: {
                let mut params = msg.rcpt_params.into_iter();
                msg.recipients
                    .into_iter()
                    .map(|address| Recipient {
                        address,
                        state: RcptState::Pending,
                        reply: None,
                        params: params.next().unwrap_or_default(),
                    })
                    .collect()
            },
            size: bytes.len(),
            client_ip: msg.client_ip,
            received_ms: now,
            expires_ms: now + msg.max_age_secs * 1000,
            next_attempt_ms: msg.not_before_ms.unwrap_or(now).max(now),
            attempts: 0,
            state: MessageState::Queued,
            upstream: None,
            last_reply: None,
            header_message_id: crate::events::header_message_id(bytes),
            summary: crate::queue::summary::with_headers(msg.summary, bytes),
        }
    }

    /// [`Queue::enqueue`]; `also` runs after the message's writes and before the group commit,
    /// so what it writes (an idempotency record) is durable exactly when the message is — and,
    /// sled recovering a prefix of its log, never without it.
    pub async fn enqueue_with(
        &self,
        msg: NewMessage,
        bytes: &[u8],
        also: impl FnOnce() -> Result<(), sled::Error>,
    ) -> Result<Envelope, QueueError> {
        self.store.check_healthy()?;
        self.store.ensure_space(bytes.len() as u64, self.min_free)?;
        let now = now_ms();
        let env = self.envelope_for(msg, bytes);
        let encoded = encode(&env);
        let all: Vec<String> = env.recipients.iter().map(|r| r.address.clone()).collect();
        let mut events = vec![crate::events::Event::new(
            crate::events::EventKind::Accepted,
            &env,
            all.clone(),
        )];
        if env.next_attempt_ms > now {
            // Accept-and-delay: held back by the project's limits until its release slot.
            let mut held =
                crate::events::Event::new(crate::events::EventKind::RateLimited, &env, all);
            held.next_attempt_ms = Some(env.next_attempt_ms);
            events.push(held);
        }
        let in_file = crate::memory_budget::MemoryBudget::is_large(bytes.len());
        if in_file {
            let path = self.body_path(&env.id);
            if let Err(e) = crate::run_blocking(|| write_durable(&self.bodies_dir(), &path, bytes))
            {
                let _ = std::fs::remove_file(&path);
                return Err(QueueError::Spill(e));
            }
        }
        // Order matters (module doc): body, envelope, log, and the schedule last, so delivery
        // never picks up a message whose log entry is still to be written.
        let spool = &self.store.spool;
        let written = (|| {
            if in_file {
                spool.insert(file_key(&env.id), &[])?;
            } else {
                spool.insert(msg_key(&env.id), bytes)?;
            }
            spool.insert(env_key(&env.id), encoded.as_slice())?;
            self.store
                .log
                .insert(env.id.as_bytes(), encoded.as_slice())?;
            crate::events::stage(&self.store, &events)?;
            self.store
                .schedule
                .insert(schedule::key(env.next_attempt_ms, &env.id), &[])?;
            also()
        })();
        written.map_err(|e| {
            if in_file {
                let _ = std::fs::remove_file(self.body_path(&env.id));
            }
            self.write_err(e)
        })?;
        self.store.durable().await?;
        self.wake.notify_one();
        crate::events::outbox::wake();
        Ok(env)
    }

    /// Removes and returns up to `limit` ids whose time has come.
    pub fn take_due(&self, now: u64, limit: usize) -> Result<Vec<String>, QueueError> {
        self.store.check_healthy()?;
        let mut out = Vec::new();
        let end = schedule::key(now, "~");
        for item in self.store.schedule.range(..end) {
            let (k, _) = item?;
            if self.store.schedule.remove(&k)?.is_some()
                && let Some((_, id)) = schedule::parse_key(&k)
            {
                out.push(id);
            }
            if out.len() >= limit {
                break;
            }
        }
        Ok(out)
    }

    /// Time of the earliest scheduled attempt, if any.
    pub fn next_due(&self) -> Result<Option<u64>, QueueError> {
        Ok(self
            .store
            .schedule
            .first()?
            .and_then(|(k, _)| schedule::parse_key(&k))
            .map(|(due, _)| due))
    }

    /// The message bytes. A large body is read from its file: reserve memory first.
    pub async fn body(&self, id: &str) -> Result<Option<StoredBody>, QueueError> {
        if let Some(v) = self.store.spool.get(msg_key(id))? {
            return Ok(Some(StoredBody::Inline(v)));
        }
        if self.store.spool.get(file_key(id))?.is_none() {
            return Ok(None);
        }
        match tokio::fs::read(self.body_path(id)).await {
            Ok(v) => Ok(Some(StoredBody::File(v))),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Err(QueueError::Store(
                StoreError::Corrupt(format!("body file of {id} is missing")),
            )),
            Err(e) => Err(QueueError::Spill(e)),
        }
    }

    fn has_body(&self, id: &str) -> Result<bool, QueueError> {
        Ok(self.store.spool.contains_key(msg_key(id))?
            || self.store.spool.contains_key(file_key(id))?)
    }

    fn bodies_dir(&self) -> std::path::PathBuf {
        self.store.state_dir().join("bodies")
    }

    fn body_path(&self, id: &str) -> std::path::PathBuf {
        self.bodies_dir().join(id)
    }

    /// Unlinks a body file once sled no longer refers to it (best effort: a leftover is
    /// removed by the next `recover`).
    fn remove_body_file(&self, id: &str) {
        match std::fs::remove_file(self.body_path(id)) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                tracing::warn!(id, error = %e, "cannot remove a delivered message's body file")
            }
            _ => {}
        }
    }

    pub fn envelope(&self, id: &str) -> Result<Option<Envelope>, QueueError> {
        match self.store.spool.get(env_key(id))? {
            Some(v) => Ok(Some(decode(&v)?)),
            None => Ok(None),
        }
    }

    /// Records a new state: final states leave the spool, others are rescheduled.
    pub async fn update(&self, env: &Envelope) -> Result<(), QueueError> {
        self.update_with_events(env, &[]).await
    }

    /// [`Queue::update`], with the delivery events of this outcome in the same group commit.
    pub async fn update_with_events(
        &self,
        env: &Envelope,
        events: &[crate::events::Event],
    ) -> Result<(), QueueError> {
        self.store.check_healthy()?;
        let encoded = encode(env);
        let id = &env.id;
        let state = env.state;
        let due = env.next_attempt_ms;
        // Whether the finished message had a body file, which may go once this is durable.
        // Order matters (module doc): the log first, then the envelope, the body last.
        let mut suppressed = Vec::new();
        let had_file = (|| {
            self.store.log.insert(id.as_bytes(), encoded.as_slice())?;
            crate::events::stage(&self.store, events)?;
            // Permanent refusals that name a recipient put it on the project's suppression
            // list, in this same commit (policy::suppression).
            suppressed = crate::policy::suppression::record_refusals(&self.store, events)?;
            if state.is_final() {
                self.remove_entry(id)
            } else {
                self.store.spool.insert(env_key(id), encoded.as_slice())?;
                self.store.schedule.insert(schedule::key(due, id), &[])?;
                Ok(false)
            }
        })()
        .map_err(|e| self.write_err(e))?;
        self.store.durable_soon().await?;
        if let Some(c) = self.cluster.get() {
            crate::policy::suppression::share_entries(c, &suppressed).await;
        }
        if !events.is_empty() {
            crate::events::outbox::wake();
        }
        if !state.is_final() {
            self.wake.notify_one();
        }
        if had_file {
            self.remove_body_file(id);
        }
        Ok(())
    }

    /// The store under the queue, for its health (`status`, the store metrics).
    pub fn store(&self) -> &Store {
        &self.store
    }

    /// Counts scheduled messages and finds the oldest one. Reads only schedule keys and the
    /// first spool key (ids start with their acceptance time), never message bodies.
    pub fn stats(&self) -> Result<QueueStats, QueueError> {
        let mut scheduled = 0u64;
        for item in self.store.schedule.iter().keys() {
            item?;
            scheduled += 1;
        }
        let oldest_received_ms = self.store.spool.first()?.and_then(|(k, _)| id_time_ms(&k));
        Ok(QueueStats {
            scheduled,
            oldest_received_ms,
        })
    }

    /// All messages still in the spool, oldest first. Undecodable entries are skipped here
    /// (and moved aside by [`Queue::recover`]).
    pub fn list(&self) -> Result<Vec<Envelope>, QueueError> {
        let mut out = Vec::new();
        for item in self.store.spool.iter() {
            let (k, v) = item?;
            if k.last() == Some(&b'e')
                && let Ok(env) = decode::<Envelope>(&v)
            {
                out.push(env);
            }
        }
        Ok(out)
    }

    /// Moves a message whose stored form cannot be read out of the spool into the quarantine
    /// tree, so one bad entry never blocks the rest of the queue.
    pub fn quarantine(&self, id: &str, reason: &str) -> Result<(), QueueError> {
        // Copied first, removed after: a crash in between leaves the entry in both trees (the
        // next start quarantines it again), never in neither. A body file stays where it is,
        // for inspection; its marker goes with the entry.
        for key in [env_key(id), msg_key(id), file_key(id)] {
            if let Some(v) = self.store.spool.get(&key)? {
                self.store.quarantine.insert(key, v)?;
            }
        }
        self.remove_entry(id)?;
        self.remove_schedule_entries(id)?;
        self.store.flush_now()?;
        tracing::error!(
            id,
            reason,
            "queue entry quarantined (kept in the `quarantine` tree)"
        );
        Ok(())
    }

    /// Makes a queued or deferred message due now.
    pub fn retry_now(&self, id: &str) -> Result<Envelope, QueueError> {
        let mut env = self
            .envelope(id)?
            .ok_or_else(|| QueueError::NotFound(id.into()))?;
        self.remove_schedule_entries(id)?;
        env.next_attempt_ms = now_ms();
        self.store.spool.insert(env_key(id), encode(&env))?;
        self.store
            .schedule
            .insert(schedule::key(env.next_attempt_ms, id), &[])?;
        self.store.flush_now()?;
        self.wake.notify_one();
        Ok(env)
    }

    /// Deletes a message from the queue; the log keeps it as `deleted`.
    pub fn delete(&self, id: &str) -> Result<Envelope, QueueError> {
        let mut env = self
            .envelope(id)?
            .ok_or_else(|| QueueError::NotFound(id.into()))?;
        self.remove_schedule_entries(id)?;
        env.state = MessageState::Deleted;
        self.store.log.insert(id.as_bytes(), encode(&env))?;
        let had_file = self.remove_entry(id)?;
        self.store.flush_now()?;
        if had_file {
            self.remove_body_file(id);
        }
        Ok(env)
    }

    /// Takes a message out of the spool in the crash-safe order (module doc): envelope first,
    /// then the body. Returns whether it had a body file, to unlink once this is durable.
    fn remove_entry(&self, id: &str) -> Result<bool, sled::Error> {
        self.store.spool.remove(env_key(id))?;
        self.store.spool.remove(msg_key(id))?;
        Ok(self.store.spool.remove(file_key(id))?.is_some())
    }

    fn remove_schedule_entries(&self, id: &str) -> Result<(), QueueError> {
        let mut stale = Vec::new();
        for item in self.store.schedule.iter() {
            let (k, _) = item?;
            if schedule::parse_key(&k).is_some_and(|(_, i)| i == id) {
                stale.push(k);
            }
        }
        for k in stale {
            self.store.schedule.remove(k)?;
        }
        Ok(())
    }

    /// Rebuilds the schedule from the spool. Run at startup: whatever was in flight when the
    /// process died is due again. Entries that cannot be decoded are quarantined.
    pub fn recover(&self) -> Result<usize, QueueError> {
        self.store.schedule.clear()?;
        let mut ids = Vec::new();
        let mut bad = Vec::new();
        let mut leftovers = Vec::new();
        for item in self.store.spool.iter() {
            let (k, v) = item?;
            let Some((&kind, id)) = k.split_last() else {
                continue;
            };
            let id = String::from_utf8_lossy(id).to_string();
            match kind {
                b'e' => match decode::<Envelope>(&v) {
                    Ok(env) if env.id != id => {
                        bad.push((id, "envelope id does not match its key".to_string()))
                    }
                    // The body is written before the envelope and removed after it, so this
                    // is damage, not a crash leftover: keep it for inspection.
                    Ok(_) if !self.has_body(&id)? => {
                        bad.push((id, "envelope without message body".to_string()))
                    }
                    Ok(env) => ids.push((env.next_attempt_ms, id)),
                    Err(e) => bad.push((id, e.to_string())),
                },
                // A crash between the writes of a message that was never acknowledged, or of
                // one already finished (its log entry says which).
                b'm' | b'f' if self.store.spool.get(env_key(&id))?.is_none() => leftovers.push(k),
                _ => {}
            }
        }
        for k in &leftovers {
            self.store.spool.remove(k)?;
        }
        if !leftovers.is_empty() {
            tracing::info!(
                count = leftovers.len(),
                "removed message bodies left by an interrupted write (never acknowledged, or already finished)"
            );
        }
        // Body files sled does not know: written just before a crash that lost their
        // marker (the client got no 250), or left after delivery. Never referenced again.
        if let Ok(entries) = std::fs::read_dir(self.bodies_dir()) {
            for entry in entries.flatten() {
                let name = entry.file_name().to_string_lossy().to_string();
                if self.store.spool.get(file_key(&name))?.is_none()
                    && self.store.quarantine.get(file_key(&name))?.is_none()
                {
                    let _ = std::fs::remove_file(entry.path());
                }
            }
        }
        for (id, reason) in bad {
            self.quarantine(&id, &reason)?;
        }
        for (due, id) in &ids {
            self.store.schedule.insert(schedule::key(*due, id), &[])?;
        }
        self.store.flush_now()?;
        Ok(ids.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Envelopes queued before MAIL/RCPT parameters were kept still load, and a new one
    /// round-trips what it keeps.
    #[test]
    fn old_envelopes_still_load() {
        let old = br#"{"id":"x","project":"p","mail_from":"a@b.test","recipients":[{"address":"u@ext.test","state":"pending","reply":null}],"size":3,"client_ip":"127.0.0.1","received_ms":1,"expires_ms":2,"next_attempt_ms":1,"attempts":0,"state":"queued","upstream":null,"last_reply":null}"#;
        let env: Envelope = decode(old).unwrap();
        assert!(env.mail_params.is_empty());
        assert!(env.recipients[0].params.is_empty());

        let mut new = env.clone();
        new.mail_params = MailParams {
            body_8bitmime: true,
            smtputf8: true,
            ret: Some("HDRS".into()),
            envid: Some("QQ+2B".into()),
        };
        new.recipients[0].params.notify = Some("NEVER".into());
        let back: Envelope = decode(&encode(&new)).unwrap();
        assert_eq!(back, new);
        // Nothing extra is written for a message that has no parameters.
        assert!(!String::from_utf8(encode(&env)).unwrap().contains("params"));
    }
}
