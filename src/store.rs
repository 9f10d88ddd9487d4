//! The one place that opens the sled database and names its trees.
//!
//! Every other module reaches storage through the typed handles here (or through the queue's
//! and registry's own types), so the engine could be swapped without touching the pipeline.
//! It also owns the group commit: many sessions waiting for durability share one
//! `flush_async`, because a `250` may only be sent once the bytes are on disk.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use tokio::sync::{mpsc, oneshot};

/// Most waiters released by a single flush (DESIGN.md: ≤ 100 messages per flush).
const MAX_GROUP: usize = 100;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("cannot open the database in {path}: {source}")]
    Open { path: PathBuf, source: sled::Error },
    #[error("the database in {0} is in use by another process (is the server running?)")]
    Locked(PathBuf),
    #[error("storage error: {0}")]
    Sled(#[from] sled::Error),
    #[error("stored record is corrupt: {0}")]
    Corrupt(String),
    #[error("the durability flusher has stopped")]
    FlusherGone,
    #[error("insufficient disk space in {path}: {free} bytes free, {needed} needed")]
    Full {
        path: PathBuf,
        free: u64,
        needed: u64,
    },
    #[error("storage has failed earlier in this process ({0}); refusing further writes")]
    Failed(String),
    #[error("the disk did not confirm a flush within {0} s")]
    FlushTimeout(u64),
}

impl StoreError {
    /// Out of space, before or after trying: the client should hear 452 4.3.1.
    pub fn is_disk_full(&self) -> bool {
        match self {
            StoreError::Full { .. } => true,
            StoreError::Sled(sled::Error::Io(e)) => e.raw_os_error() == Some(libc::ENOSPC),
            other => other.to_string().contains("No space left"),
        }
    }
}

/// How long a flush may take before the store is declared failed.
const FLUSH_DEADLINE_SECS: u64 = 30;

/// Set once storage has returned an I/O error or stalled. sled 0.34 hangs on every later
/// call after an I/O error such as ENOSPC (reproduced here), so from then on nothing touches
/// it: writes fail fast with 451 and the server exits for its supervisor to restart it.
#[derive(Debug, Default)]
pub struct FailureFlag {
    reason: std::sync::Mutex<Option<String>>,
    notify: tokio::sync::Notify,
}

impl FailureFlag {
    pub fn get(&self) -> Option<String> {
        self.reason.lock().ok().and_then(|r| r.clone())
    }
    pub fn set(&self, reason: String) {
        if let Ok(mut r) = self.reason.lock()
            && r.is_none()
        {
            tracing::error!(reason = %reason, "storage failed; no further writes, the server will exit");
            *r = Some(reason);
        }
        self.notify.notify_waiters();
    }
    /// Resolves when the store fails.
    pub async fn wait(&self) {
        loop {
            let notified = self.notify.notified();
            if self.get().is_some() {
                return;
            }
            notified.await;
        }
    }
}

/// Names of the trees, in one place.
pub mod trees {
    pub const PROJECTS: &str = "projects";
    pub const TOKENS: &str = "tokens";
    pub const SPOOL: &str = "spool";
    pub const SCHEDULE: &str = "schedule";
    pub const LOG: &str = "log";
    pub const COUNTERS: &str = "counters";
    /// Per-project branding settings (transform::branding::settings).
    pub const BRANDING: &str = "branding";
    /// Per-project overrides of the `[limits]` defaults (policy::limits), keyed by project id.
    pub const LIMITS: &str = "limits";
    /// Per-project upstream routes (project id → primary + fallbacks).
    pub const ROUTES: &str = "routes";
    /// DKIM key metadata, `domain \0 selector` → key info (private keys are files).
    pub const DKIM: &str = "dkim";
    /// Per-project DKIM settings (signing failure policy), by project id.
    pub const DKIM_PROJECTS: &str = "dkim_projects";
    /// Cluster mode only: DKIM private keys sealed with a key derived from the server secret,
    /// `domain \0 selector` → sealed PEM (crate::sealing), mirrored through Redis.
    pub const DKIM_SEALED: &str = "dkim_sealed";
    /// Spool entries that could not be decoded, kept for inspection instead of blocking the queue.
    pub const QUARANTINE: &str = "quarantine";
    /// Admin tokens for the HTTP API and panel: HMAC digest → label, role, id.
    pub const ADMIN_TOKENS: &str = "admin_tokens";
    /// Delivery events, `message id ‖ time ‖ random` → event (events::Event).
    pub const EVENTS: &str = "events";
    /// Suppressed recipients, `project \0 address` → entry (policy::suppression).
    pub const SUPPRESSION: &str = "suppression";
    /// Webhook endpoints, endpoint id → endpoint (events::webhooks).
    pub const WEBHOOKS: &str = "webhooks";
    /// Webhook deliveries owed, `due time ‖ endpoint id ‖ event id` → payload (events::outbox).
    pub const WEBHOOK_OUTBOX: &str = "webhook_outbox";
    /// Recent delivery attempts per endpoint, `endpoint id ‖ time ‖ random` → attempt.
    pub const WEBHOOK_ATTEMPTS: &str = "webhook_attempts";
    /// Idempotency keys per project (policy::idempotency): `k ‖ project \0 key` → outcome,
    /// `x ‖ expiry ‖ project \0 key` → () for pruning.
    pub const IDEMPOTENCY: &str = "idempotency";
    /// Mail of sandbox projects, captured instead of sent (queue::sandbox):
    /// `project \0 id` → envelope and message bytes.
    pub const SANDBOX: &str = "sandbox";
}

/// How long a flush asked for only by [`Store::durable_soon`] waits for company.
const SOON: std::time::Duration = std::time::Duration::from_millis(2);

/// One waiter of the group commit: gets the result of the flush that covered its writes.
struct Waiter {
    done: oneshot::Sender<Result<(), String>>,
    /// Someone (a client waiting for `250`) is held up until the flush.
    urgent: bool,
}

type FlushSender = mpsc::UnboundedSender<Waiter>;

#[derive(Clone)]
pub struct Store {
    db: sled::Db,
    pub projects: sled::Tree,
    pub tokens: sled::Tree,
    pub spool: sled::Tree,
    pub schedule: sled::Tree,
    pub log: sled::Tree,
    pub counters: sled::Tree,
    pub branding: sled::Tree,
    pub limits: sled::Tree,
    pub routes: sled::Tree,
    pub dkim: sled::Tree,
    pub dkim_projects: sled::Tree,
    pub dkim_sealed: sled::Tree,
    pub quarantine: sled::Tree,
    pub admin_tokens: sled::Tree,
    pub events: sled::Tree,
    pub suppression: sled::Tree,
    pub webhooks: sled::Tree,
    pub webhook_outbox: sled::Tree,
    pub webhook_attempts: sled::Tree,
    pub idempotency: sled::Tree,
    pub sandbox: sled::Tree,
    flusher: Arc<tokio::sync::OnceCell<FlushSender>>,
    /// When false (development only), `durable()` returns without flushing.
    fsync: bool,
    state_dir: PathBuf,
    pub failure: Arc<FailureFlag>,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store").finish_non_exhaustive()
    }
}

impl Store {
    /// Opens (creating if needed) the database under `state_dir/db`.
    pub fn open(state_dir: &Path) -> Result<Store, StoreError> {
        let path = state_dir.join("db");
        let db = sled::Config::new()
            .path(&path)
            .cache_capacity(64 * 1024 * 1024)
            .open()
            .map_err(|source| match &source {
                sled::Error::Io(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                    StoreError::Locked(state_dir.to_path_buf())
                }
                sled::Error::Io(e) if e.to_string().contains("lock") => {
                    StoreError::Locked(state_dir.to_path_buf())
                }
                _ => StoreError::Open {
                    path: path.clone(),
                    source,
                },
            })?;
        Ok(Store {
            projects: db.open_tree(trees::PROJECTS)?,
            tokens: db.open_tree(trees::TOKENS)?,
            spool: db.open_tree(trees::SPOOL)?,
            schedule: db.open_tree(trees::SCHEDULE)?,
            log: db.open_tree(trees::LOG)?,
            counters: db.open_tree(trees::COUNTERS)?,
            branding: db.open_tree(trees::BRANDING)?,
            limits: db.open_tree(trees::LIMITS)?,
            routes: db.open_tree(trees::ROUTES)?,
            dkim: db.open_tree(trees::DKIM)?,
            dkim_projects: db.open_tree(trees::DKIM_PROJECTS)?,
            dkim_sealed: db.open_tree(trees::DKIM_SEALED)?,
            quarantine: db.open_tree(trees::QUARANTINE)?,
            admin_tokens: db.open_tree(trees::ADMIN_TOKENS)?,
            events: db.open_tree(trees::EVENTS)?,
            suppression: db.open_tree(trees::SUPPRESSION)?,
            webhooks: db.open_tree(trees::WEBHOOKS)?,
            webhook_outbox: db.open_tree(trees::WEBHOOK_OUTBOX)?,
            webhook_attempts: db.open_tree(trees::WEBHOOK_ATTEMPTS)?,
            idempotency: db.open_tree(trees::IDEMPOTENCY)?,
            sandbox: db.open_tree(trees::SANDBOX)?,
            db,
            flusher: Arc::new(tokio::sync::OnceCell::new()),
            fsync: true,
            state_dir: state_dir.to_path_buf(),
            failure: Arc::default(),
        })
    }

    /// Development mode: acknowledge without waiting for the disk. Never the default.
    pub fn without_fsync(mut self) -> Store {
        self.fsync = false;
        self
    }

    /// Waits until everything written before this call is on disk. Concurrent callers share
    /// one flush (group commit).
    pub async fn durable(&self) -> Result<(), StoreError> {
        self.wait_flush(true).await
    }

    /// [`Store::durable`] for writes nobody outside waits on (a delivery's outcome): the
    /// flush may wait up to [`SOON`] for other writers, so it is usually the one a message's
    /// acceptance asks for anyway — one flush per message at load instead of two.
    pub async fn durable_soon(&self) -> Result<(), StoreError> {
        self.wait_flush(false).await
    }

    async fn wait_flush(&self, urgent: bool) -> Result<(), StoreError> {
        self.check_healthy()?;
        if !self.fsync {
            return Ok(());
        }
        let tx = self
            .flusher
            .get_or_init(|| async { spawn_flusher(self.db.clone()) })
            .await;
        let (done_tx, done_rx) = oneshot::channel();
        tx.send(Waiter {
            done: done_tx,
            urgent,
        })
        .map_err(|_| StoreError::FlusherGone)?;
        let deadline = std::time::Duration::from_secs(FLUSH_DEADLINE_SECS);
        let result = match tokio::time::timeout(deadline, done_rx).await {
            Ok(Ok(Ok(()))) => return Ok(()),
            Ok(Ok(Err(e))) => StoreError::Sled(sled::Error::Io(std::io::Error::other(e))),
            Ok(Err(_)) => StoreError::FlusherGone,
            Err(_) => StoreError::FlushTimeout(FLUSH_DEADLINE_SECS),
        };
        self.failure.set(result.to_string());
        Err(result)
    }

    /// Fails fast once storage has failed (see [`FailureFlag`]).
    pub fn check_healthy(&self) -> Result<(), StoreError> {
        match self.failure.get() {
            Some(reason) => Err(StoreError::Failed(reason)),
            None => Ok(()),
        }
    }

    /// Records an error from a write; I/O errors mark the store failed.
    pub fn note_error(&self, e: &sled::Error) {
        if matches!(e, sled::Error::Io(_) | sled::Error::ReportableBug(_)) {
            self.failure.set(e.to_string());
        }
    }

    /// Refuses a write of `needed` bytes when the state directory's filesystem would keep
    /// less than `reserve` bytes free. Checked before sled is touched: sled must never see
    /// ENOSPC (it hangs afterwards).
    pub fn ensure_space(&self, needed: u64, reserve: u64) -> Result<(), StoreError> {
        if reserve == 0 {
            // `min_free_space_mb = 0` turns the guard off (tests of the failure path use it).
            return Ok(());
        }
        let free = free_bytes(&self.state_dir).unwrap_or(u64::MAX);
        // sled writes each value to its log and may rewrite segments: count twice.
        let want = needed.saturating_mul(2).saturating_add(reserve);
        if free < want {
            return Err(StoreError::Full {
                path: self.state_dir.clone(),
                free,
                needed: want,
            });
        }
        Ok(())
    }

    /// The directory the database lives in (large bodies are spilled next to it).
    pub fn state_dir(&self) -> &Path {
        &self.state_dir
    }

    /// Synchronous flush, for the CLI and shutdown. Skipped once storage has failed.
    pub fn flush_now(&self) -> Result<(), StoreError> {
        self.check_healthy()?;
        self.db.flush().inspect_err(|e| self.note_error(e))?;
        Ok(())
    }
}

fn spawn_flusher(db: sled::Db) -> FlushSender {
    let (tx, mut rx) = mpsc::unbounded_channel::<Waiter>();
    tokio::spawn(async move {
        let mut group: Vec<Waiter> = Vec::with_capacity(MAX_GROUP);
        while rx.recv_many(&mut group, MAX_GROUP).await > 0 {
            if !group.iter().any(|w| w.urgent) {
                // Nobody is held up yet: wait a little for others to share this flush.
                let until = tokio::time::sleep(SOON);
                tokio::pin!(until);
                while group.len() < MAX_GROUP && !group.iter().any(|w| w.urgent) {
                    let room = MAX_GROUP - group.len();
                    tokio::select! {
                        () = &mut until => break,
                        n = rx.recv_many(&mut group, room) => {
                            if n == 0 {
                                break;
                            }
                        }
                    }
                }
            }
            // Everything in `group` was written before its sender asked; one flush covers all.
            let result = db
                .flush_async()
                .await
                .map(|_| ())
                .map_err(|e| e.to_string());
            for waiter in group.drain(..) {
                let _ = waiter.done.send(result.clone());
            }
        }
    });
    tx
}

/// Free bytes available to this (unprivileged) process on the filesystem holding `path`.
pub fn free_bytes(path: &Path) -> Option<u64> {
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(path.as_os_str().as_bytes()).ok()?;
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: `c` is a valid NUL-terminated path and `st` a properly sized out-parameter.
    let rc = unsafe { libc::statvfs(c.as_ptr(), &mut st) };
    (rc == 0).then(|| (st.f_bavail as u64).saturating_mul(st.f_frsize as u64))
}

/// Big-endian u64, so sled scans come out in numeric order.
pub fn be64(n: u64) -> [u8; 8] {
    n.to_be_bytes()
}

pub fn read_be64(bytes: &[u8]) -> Option<u64> {
    bytes.get(..8)?.try_into().ok().map(u64::from_be_bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A lone `durable_soon` still gets its flush (after the short wait: it must not hang for
    /// want of company), and an urgent waiter arriving meanwhile takes the waiting group along.
    /// (That a flushed write survives kill -9 is `tests/faults_crash.rs`'s.)
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn soon_and_urgent_waiters_share_the_group_commit() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let bound = std::time::Duration::from_secs(10);
        store.log.insert(b"lone", b"1").unwrap();
        let lone = tokio::time::timeout(bound, store.durable_soon()).await;
        assert!(matches!(lone, Ok(Ok(()))), "{lone:?}");

        let mut soon = Vec::new();
        for i in 0..20u8 {
            store.log.insert([b's', i], b"1").unwrap();
            let s = store.clone();
            soon.push(tokio::spawn(async move { s.durable_soon().await }));
        }
        store.log.insert(b"urgent", b"1").unwrap();
        let urgent = tokio::time::timeout(bound, store.durable()).await;
        assert!(matches!(urgent, Ok(Ok(()))), "{urgent:?}");
        for t in soon {
            let r = tokio::time::timeout(bound, t).await;
            assert!(matches!(r, Ok(Ok(Ok(())))), "{r:?}");
        }
        assert_eq!(store.log.scan_prefix(b"s").count(), 20);
    }
}
