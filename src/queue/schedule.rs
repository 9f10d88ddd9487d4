//! The due-time index: `due_ms ‖ id` → nothing, so a range scan yields what is due, in order.
//!
//! It is only an index. The spool envelope holds the authoritative next-attempt time, and the
//! index is rebuilt from the spool at startup, so a crash between writes cannot strand a message.

use crate::store::{be64, read_be64};

pub fn key(due_ms: u64, id: &str) -> Vec<u8> {
    let mut k = Vec::with_capacity(8 + id.len());
    k.extend_from_slice(&be64(due_ms));
    k.extend_from_slice(id.as_bytes());
    k
}

pub fn parse_key(k: &[u8]) -> Option<(u64, String)> {
    let due = read_be64(k)?;
    let id = std::str::from_utf8(k.get(8..)?).ok()?.to_string();
    Some((due, id))
}

/// Delay before attempt number `attempt + 1`, given how many attempts already failed,
/// with ±10 % jitter so a burst of deferred messages does not retry in lockstep.
pub fn retry_delay_ms(schedule_secs: &[u64], failed_attempts: u32, jitter: f64) -> u64 {
    let idx = (failed_attempts.max(1) as usize - 1).min(schedule_secs.len().saturating_sub(1));
    let base = schedule_secs.get(idx).copied().unwrap_or(3600) as f64 * 1000.0;
    let j = jitter.clamp(-1.0, 1.0) * 0.1;
    (base * (1.0 + j)).max(0.0) as u64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_sort_by_time() {
        let a = key(5, "zzz");
        let b = key(300, "aaa");
        assert!(a < b);
        assert_eq!(parse_key(&b), Some((300, "aaa".to_string())));
    }

    #[test]
    fn schedule_repeats_last_step() {
        let s = [60, 120, 300];
        assert_eq!(retry_delay_ms(&s, 1, 0.0), 60_000);
        assert_eq!(retry_delay_ms(&s, 2, 0.0), 120_000);
        assert_eq!(retry_delay_ms(&s, 9, 0.0), 300_000);
        let j = retry_delay_ms(&s, 1, 1.0);
        assert_eq!(j, 66_000);
    }
}
