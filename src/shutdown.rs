//! The shutdown signal every long-running task listens to: a `watch` channel whose value
//! becomes `true` once the server stops. It has its own module so that the stages (listener,
//! sessions, delivery, admin socket, metrics, watchdog) depend on it and not on `server.rs`,
//! which wires them together and must sit on top of them (as mini-redis's `shutdown.rs`).

use tokio::sync::watch;

/// The sending half, held by the server.
pub type Trigger = watch::Sender<bool>;
/// The receiving half, cloned into every task.
pub type Signal = watch::Receiver<bool>;

/// A new, not yet triggered, shutdown signal.
pub fn channel() -> (Trigger, Signal) {
    watch::channel(false)
}

/// Resolves once the shutdown flag is set (or its sender is gone).
pub async fn stopped(rx: &mut Signal) {
    let _ = rx.wait_for(|stop| *stop).await;
}
