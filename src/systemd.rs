//! systemd integration: `Type=notify` readiness, reload and stop notifications, and the
//! watchdog ping.
//!
//! Everything is a no-op outside systemd (no `$NOTIFY_SOCKET`). The watchdog ping is sent
//! only while the database answers a flush within half the watchdog interval, so a wedged
//! storage engine (see DESIGN.md on sled) makes systemd restart the service instead of
//! leaving a relay that accepts connections but can never answer `250`.

use std::time::Duration;

use sd_notify::NotifyState;
use tokio::sync::watch;

use crate::store::Store;

fn send(states: &[NotifyState]) {
    if let Err(e) = sd_notify::notify(states) {
        tracing::warn!(error = %e, "cannot notify systemd");
    }
}

/// Listeners are bound and the queue is open.
pub fn ready(status: &str) {
    send(&[NotifyState::Ready, NotifyState::Status(status)]);
}

/// A reload starts; [`ready`] ends it.
pub fn reloading() {
    match NotifyState::monotonic_usec_now() {
        Ok(now) => send(&[NotifyState::Reloading, now]),
        Err(_) => send(&[NotifyState::Reloading]),
    }
}

pub fn stopping() {
    send(&[NotifyState::Stopping, NotifyState::Status("shutting down")]);
}

/// Pings the watchdog at half its interval while the store stays responsive, until shutdown.
pub async fn watchdog(store: Store, mut shutdown: watch::Receiver<bool>) {
    let Some(interval) = sd_notify::watchdog_enabled() else {
        return;
    };
    let every = (interval / 2).max(Duration::from_millis(10));
    tracing::debug!(
        interval_ms = interval.as_millis() as u64,
        "systemd watchdog enabled"
    );
    loop {
        tokio::select! {
            _ = tokio::time::sleep(every) => {}
            _ = crate::shutdown::stopped(&mut shutdown) => return,
        }
        let s = store.clone();
        let check = tokio::task::spawn_blocking(move || s.flush_now());
        match tokio::time::timeout(every, check).await {
            Ok(Ok(Ok(()))) => send(&[NotifyState::Watchdog]),
            Ok(Ok(Err(e))) => tracing::error!(error = %e, "watchdog: the database flush failed"),
            Ok(Err(e)) => tracing::error!(error = %e, "watchdog: health check task failed"),
            Err(_) => tracing::error!("watchdog: the database did not answer in time"),
        }
    }
}
