//! The queue is the hand-off point between accepting a message and delivering it.
//!
//! `enqueue` returns only after the message and its envelope are on disk, which is what makes
//! the `250` reply a promise. After that, the queue keeps the message until delivery succeeds,
//! fails permanently, or the message expires; the message log remembers the outcome.

pub mod log;
pub mod sandbox;
pub mod schedule;
pub mod spool;
pub mod summary;

pub use log::MessageLog;
pub use spool::{Envelope, MessageState, Queue, QueueError, QueueStats, RcptState, Recipient};

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}
