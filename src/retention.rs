//! Retention: the periodic prune that keeps the database from growing for ever.
//!
//! The message log, the delivery events and the webhook attempt history are written for every
//! message and, without this, never removed. Every `retention.prune_interval_secs` the server
//! removes finished messages from `log`, events from `events` and attempts from
//! `webhook_attempts` older than `retention.max_age_secs`, plus expired suppression entries,
//! and says what it removed (a log line and `smtp_relay_retention_pruned_records_total`).
//! A message still in the spool keeps its log entry and events whatever their age. Removals
//! are not flushed on their own: a crash only means the next prune does them again.

use std::time::Duration;

use crate::config::retention::RetentionConfig;
use crate::policy::suppression::Suppressions;
use crate::queue::now_ms;
use crate::store::{Store, StoreError, read_be64};

/// What one prune removed, per tree.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Pruned {
    pub log: usize,
    pub events: usize,
    pub webhook_attempts: usize,
    pub suppression: usize,
}

/// The acceptance time in the first 12 hex digits of a message id (`queue::spool::new_id`).
fn id_time_ms(id: &[u8]) -> Option<u64> {
    u64::from_str_radix(std::str::from_utf8(id.get(..12)?).ok()?, 16).ok()
}

/// The time after the first NUL of a `prefix \0 time ‖ …` key (events, webhook attempts).
fn time_after_nul(key: &[u8]) -> Option<(&[u8], u64)> {
    let nul = memchr::memchr(0, key)?;
    Some((&key[..nul], read_be64(&key[nul + 1..])?))
}

fn in_spool(store: &Store, id: &[u8]) -> Result<bool, sled::Error> {
    let mut k = id.to_vec();
    k.push(b'e');
    store.spool.contains_key(k)
}

/// Removes what is older than `max_age_ms` at `now`.
pub fn prune(
    store: &Store,
    suppressions: &Suppressions,
    max_age_ms: u64,
    now: u64,
) -> Result<Pruned, StoreError> {
    let cutoff = now.saturating_sub(max_age_ms);
    let mut out = Pruned::default();
    // Log keys are ids, which start with their acceptance time: stop at the first young one.
    let mut old = Vec::new();
    for item in store.log.iter() {
        let (k, _) = item?;
        match id_time_ms(&k) {
            Some(t) if t >= cutoff => break,
            _ => {}
        }
        if !in_spool(store, &k)? {
            old.push(k);
        }
    }
    for k in old {
        store.log.remove(k)?;
        out.log += 1;
    }
    let mut old = Vec::new();
    for item in store.events.iter() {
        let (k, _) = item?;
        match time_after_nul(&k) {
            Some((message, t)) if t < cutoff => {
                if message.is_empty() || !in_spool(store, message)? {
                    old.push(k);
                }
            }
            Some(_) => {}
            None => old.push(k),
        }
    }
    for k in old {
        store.events.remove(k)?;
        out.events += 1;
    }
    let mut old = Vec::new();
    for item in store.webhook_attempts.iter() {
        let (k, _) = item?;
        if time_after_nul(&k).is_none_or(|(_, t)| t < cutoff) {
            old.push(k);
        }
    }
    for k in old {
        store.webhook_attempts.remove(k)?;
        out.webhook_attempts += 1;
    }
    out.suppression = suppressions.prune(now).map_err(|e| match e {
        crate::policy::suppression::SuppressionError::Store(s) => s,
        other => StoreError::Corrupt(other.to_string()),
    })?;
    Ok(out)
}

/// The server's prune task: once at start, then every `prune_interval_secs`, until shutdown.
pub async fn run(
    store: Store,
    suppressions: Suppressions,
    config: RetentionConfig,
    mut shutdown: tokio::sync::watch::Receiver<bool>,
) {
    let every = Duration::from_secs(config.prune_interval_secs);
    let max_age_ms = config.max_age_secs.saturating_mul(1000);
    loop {
        if store.check_healthy().is_err() {
            return;
        }
        let s = store.clone();
        let sup = suppressions.clone();
        let result =
            tokio::task::spawn_blocking(move || prune(&s, &sup, max_age_ms, now_ms())).await;
        match result {
            Ok(Ok(p)) => {
                for (tree, n) in [
                    ("log", p.log),
                    ("events", p.events),
                    ("webhook_attempts", p.webhook_attempts),
                    ("suppression", p.suppression),
                ] {
                    crate::metrics::retention_pruned(tree, n);
                }
                if p != Pruned::default() {
                    tracing::info!(
                        log = p.log,
                        events = p.events,
                        webhook_attempts = p.webhook_attempts,
                        suppression = p.suppression,
                        max_age_secs = config.max_age_secs,
                        "retention: pruned old records"
                    );
                }
            }
            Ok(Err(e)) => tracing::warn!(error = %e, "retention prune failed"),
            Err(_) => tracing::warn!("retention prune task panicked"),
        }
        tokio::select! {
            _ = tokio::time::sleep(every) => {}
            _ = crate::shutdown::stopped(&mut shutdown) => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_times() {
        assert_eq!(id_time_ms(b"00000000000aXXXX"), Some(10));
        let mut k = b"msg".to_vec();
        k.push(0);
        k.extend_from_slice(&7u64.to_be_bytes());
        k.extend_from_slice(b"evt");
        assert_eq!(time_after_nul(&k), Some((&b"msg"[..], 7)));
    }
}
