//! The memory budget for large messages: how many bytes of whole large messages the relay
//! holds in memory at once, across receiving sessions and delivery attempts.
//!
//! Without it, memory grows as clients × message size (20 clients sending 25 MiB each held
//! over 1 GiB). A message body above [`SPILL_THRESHOLD`] is written to an unnamed temporary
//! file while it arrives (`inbound/connection.rs`), so a slow upload costs no memory; it is
//! read back to be transformed and queued only under a reservation of its size from this
//! budget, and delivery reserves the same way before it loads a large message from the queue.
//! Small messages are not counted: each session holds at most the threshold of its own.
//!
//! Reservations are FIFO (tokio's semaphore is fair), so a 25 MiB message is not starved by a
//! stream of 1 MiB ones; a message larger than the whole budget reserves all of it and runs
//! alone. Waiting is bounded by the caller's deadline.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// Bodies up to this size stay in the session's memory; larger ones are spilled to disk while
/// they arrive and need a reservation to be loaded.
pub const SPILL_THRESHOLD: usize = 256 * 1024;

/// Permits are KiB, so a budget of any practical size fits the semaphore's counter.
const UNIT: usize = 1024;

/// Makes glibc hand large buffers (message bodies) back to the kernel when they are freed.
///
/// glibc raises its mmap threshold to the size of the largest block freed (up to 32 MiB), after
/// which 25 MiB bodies come from per-thread heaps that keep the memory: 20 × 25 MiB measured
/// 604 MiB peak and 579 MiB afterwards with the default, 188 MiB peak and 41 MiB afterwards
/// with the threshold pinned (BENCHMARKS.md). Called once at startup, before any threads.
pub fn release_large_blocks() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only sets an allocator parameter; called before other threads exist.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, SPILL_THRESHOLD as libc::c_int);
    }
}

#[derive(Debug, Clone)]
pub struct MemoryBudget {
    permits: Arc<Semaphore>,
    total_units: u32,
}

/// Held while a large message is in memory; the bytes return to the budget on drop.
#[derive(Debug)]
pub struct Reservation {
    _permit: Option<OwnedSemaphorePermit>,
}

#[derive(Debug, thiserror::Error)]
#[error(
    "no memory for a {size}-byte message within {waited:?}: the relay is busy with other large messages"
)]
pub struct BudgetTimeout {
    pub size: usize,
    pub waited: Duration,
}

impl MemoryBudget {
    /// A budget of `mib` MiB (at least 1).
    pub fn new(mib: u64) -> MemoryBudget {
        let units = mib.max(1).saturating_mul(1024).min(u32::MAX as u64 >> 4) as u32;
        MemoryBudget {
            permits: Arc::new(Semaphore::new(units as usize)),
            total_units: units,
        }
    }

    /// True when a message of `size` bytes must reserve before it is loaded.
    pub fn is_large(size: usize) -> bool {
        size > SPILL_THRESHOLD
    }

    /// Reserves `size` bytes, waiting up to `wait` for other large messages to finish. Small
    /// messages get an empty reservation at once.
    pub async fn reserve(&self, size: usize, wait: Duration) -> Result<Reservation, BudgetTimeout> {
        if !Self::is_large(size) {
            return Ok(Reservation { _permit: None });
        }
        let units = size.div_ceil(UNIT).min(self.total_units as usize) as u32;
        match tokio::time::timeout(wait, self.permits.clone().acquire_many_owned(units)).await {
            Ok(Ok(p)) => Ok(Reservation { _permit: Some(p) }),
            // The semaphore is never closed; treat it like a timeout rather than panic.
            Ok(Err(_)) | Err(_) => Err(BudgetTimeout { size, waited: wait }),
        }
    }

    /// Bytes not reserved right now.
    #[cfg(test)]
    fn available_bytes(&self) -> usize {
        self.permits.available_permits() * UNIT
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn small_messages_are_free_and_large_ones_wait_their_turn() {
        let budget = MemoryBudget::new(1); // 1 MiB
        let full = budget.available_bytes();
        let small = budget.reserve(SPILL_THRESHOLD, Duration::ZERO).await;
        assert!(small.is_ok());
        assert_eq!(budget.available_bytes(), full);

        let a = budget
            .reserve(700 * 1024, Duration::from_millis(10))
            .await
            .expect("fits");
        assert_eq!(budget.available_bytes(), full - 700 * 1024);
        // 700 KiB + 700 KiB > 1 MiB: the second waits, and times out while the first is held.
        let b = budget.reserve(700 * 1024, Duration::from_millis(20)).await;
        assert!(b.is_err());
        drop(a);
        let b = budget.reserve(700 * 1024, Duration::from_millis(20)).await;
        assert!(b.is_ok());
        drop(b);
        // Larger than the whole budget: takes all of it rather than waiting forever.
        let huge = budget
            .reserve(50 * 1024 * 1024, Duration::from_millis(20))
            .await
            .expect("clamped to the budget");
        assert_eq!(budget.available_bytes(), 0);
        drop(huge);
        assert_eq!(budget.available_bytes(), full);
    }
}
