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
}

/// Each waiter gets the result of the flush that covered its writes.
type FlushSender = mpsc::UnboundedSender<oneshot::Sender<Result<(), String>>>;

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
    flusher: Arc<tokio::sync::OnceCell<FlushSender>>,
    /// When false (development only), `durable()` returns without flushing.
    fsync: bool,
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
            db,
            flusher: Arc::new(tokio::sync::OnceCell::new()),
            fsync: true,
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
        if !self.fsync {
            return Ok(());
        }
        let tx = self
            .flusher
            .get_or_init(|| async { spawn_flusher(self.db.clone()) })
            .await;
        let (done_tx, done_rx) = oneshot::channel();
        tx.send(done_tx).map_err(|_| StoreError::FlusherGone)?;
        match done_rx.await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(StoreError::Sled(sled::Error::Io(std::io::Error::other(e)))),
            Err(_) => Err(StoreError::FlusherGone),
        }
    }

    /// Synchronous flush, for the CLI and shutdown.
    pub fn flush_now(&self) -> Result<(), StoreError> {
        self.db.flush()?;
        Ok(())
    }
}

fn spawn_flusher(db: sled::Db) -> FlushSender {
    let (tx, mut rx) = mpsc::unbounded_channel::<oneshot::Sender<Result<(), String>>>();
    tokio::spawn(async move {
        let mut group = Vec::with_capacity(MAX_GROUP);
        while rx.recv_many(&mut group, MAX_GROUP).await > 0 {
            // Everything in `group` was written before its sender asked; one flush covers all.
            let result = db
                .flush_async()
                .await
                .map(|_| ())
                .map_err(|e| e.to_string());
            for waiter in group.drain(..) {
                let _ = waiter.send(result.clone());
            }
        }
    });
    tx
}

/// Big-endian u64, so sled scans come out in numeric order.
pub fn be64(n: u64) -> [u8; 8] {
    n.to_be_bytes()
}

pub fn read_be64(bytes: &[u8]) -> Option<u64> {
    bytes.get(..8)?.try_into().ok().map(u64::from_be_bytes)
}
