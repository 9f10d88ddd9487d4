//! The durable webhook outbox and the task that empties it.
//!
//! Every delivery owed is a `webhook_outbox` entry keyed `due time ‖ endpoint id ‖ event id`,
//! written with the outcome it reports (`events::stage`), so it survives a restart or kill -9.
//! The worker POSTs due entries, removes an entry only after a 2xx (at-least-once: receivers
//! deduplicate on `webhook-id`), and otherwise moves it to its next due time from
//! `[webhooks] retry_schedule_secs`, giving it up after the last. `410 Gone` disables the
//! endpoint; so do failures lasting `disable_after_secs`. Each attempt is kept (status,
//! duration, error) in `webhook_attempts`, the last [`ATTEMPTS_KEPT`] per endpoint.
//! Requests go to the address checked by `webhooks::resolve_checked` (no second DNS lookup),
//! never follow redirects, time out after `timeout_secs`, and read at most
//! [`MAX_RESPONSE_BYTES`] of a response.

use std::collections::HashSet;
use std::sync::{Arc, LazyLock, Mutex};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use tokio::sync::{Notify, Semaphore};

use super::webhooks::{self, Endpoint, Endpoints};
use crate::config::WebhooksConfig;
use crate::queue::now_ms;
use crate::store::{Store, be64, read_be64};

/// Attempts kept per endpoint for `webhook show`.
pub const ATTEMPTS_KEPT: usize = 50;
/// Bytes of a response body kept (for the attempt history); the rest is not read.
pub const MAX_RESPONSE_BYTES: usize = 4096;
/// Deliveries in flight at once.
const PARALLEL: usize = 8;

static WAKE: LazyLock<Notify> = LazyLock::new(Notify::new);

/// Tells the worker that something new is owed.
pub fn wake() {
    WAKE.notify_one();
}

/// One delivery owed.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Pending {
    pub endpoint: String,
    pub event_id: String,
    pub payload: String,
    /// Attempts already made.
    pub attempts: u32,
}

/// One attempt, as kept and shown.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Attempt {
    pub time_ms: u64,
    pub event_id: String,
    /// HTTP status, when a response came.
    pub status: Option<u16>,
    pub duration_ms: u64,
    pub error: Option<String>,
}

fn key(due_ms: u64, endpoint: &str, event_id: &str) -> Vec<u8> {
    let mut k = be64(due_ms).to_vec();
    k.extend_from_slice(endpoint.as_bytes());
    k.push(0);
    k.extend_from_slice(event_id.as_bytes());
    k
}

/// Queues a delivery of `payload` to `endpoint`, due at `due_ms`.
pub fn push(
    store: &Store,
    endpoint: &str,
    event_id: &str,
    payload: &str,
    due_ms: u64,
) -> Result<(), sled::Error> {
    let p = Pending {
        endpoint: endpoint.to_string(),
        event_id: event_id.to_string(),
        payload: payload.to_string(),
        attempts: 0,
    };
    store.webhook_outbox.insert(
        key(due_ms, endpoint, event_id),
        serde_json::to_vec(&p).unwrap_or_default(),
    )?;
    Ok(())
}

/// Deliveries still owed to an endpoint.
pub fn pending_count(store: &Store, endpoint: &str) -> usize {
    store
        .webhook_outbox
        .iter()
        .values()
        .filter_map(|v| v.ok())
        .filter_map(|v| serde_json::from_slice::<Pending>(&v).ok())
        .filter(|p| p.endpoint == endpoint)
        .count()
}

/// The endpoint's recent attempts, newest first.
pub fn attempts(store: &Store, endpoint: &str) -> Result<Vec<Attempt>, sled::Error> {
    let mut prefix = endpoint.as_bytes().to_vec();
    prefix.push(0);
    let mut out = Vec::new();
    for item in store.webhook_attempts.scan_prefix(prefix).rev() {
        let (_, v) = item?;
        if let Ok(a) = serde_json::from_slice::<Attempt>(&v) {
            out.push(a);
        }
    }
    Ok(out)
}

fn record_attempt(store: &Store, endpoint: &str, a: &Attempt) -> Result<(), sled::Error> {
    let mut prefix = endpoint.as_bytes().to_vec();
    prefix.push(0);
    let mut k = prefix.clone();
    k.extend_from_slice(&be64(a.time_ms));
    k.extend_from_slice(&be64(rand::random()));
    store
        .webhook_attempts
        .insert(k, serde_json::to_vec(a).unwrap_or_default())?;
    let keys: Vec<_> = store
        .webhook_attempts
        .scan_prefix(&prefix)
        .keys()
        .filter_map(|k| k.ok())
        .collect();
    for old in keys.iter().take(keys.len().saturating_sub(ATTEMPTS_KEPT)) {
        store.webhook_attempts.remove(old)?;
    }
    Ok(())
}

/// What one POST came to.
enum Outcome {
    Delivered(u16),
    /// The receiver said the endpoint is gone for good.
    Gone,
    Retry(Option<u16>, String),
}

pub struct Outbox {
    pub store: Store,
    pub config: WebhooksConfig,
}

impl Outbox {
    /// Delivers due entries until `shutdown`; attempts in flight are let finish briefly, and
    /// anything unfinished stays in the outbox for the next start.
    pub async fn run(self, mut shutdown: crate::shutdown::Signal) {
        let this = Arc::new(self);
        let permits = Arc::new(Semaphore::new(PARALLEL));
        let in_flight: Arc<Mutex<HashSet<Vec<u8>>>> = Arc::default();
        loop {
            if *shutdown.borrow() {
                break;
            }
            let now = now_ms();
            let mut next_due = None;
            for item in this.store.webhook_outbox.iter() {
                let Ok((k, v)) = item else { break };
                let due = read_be64(&k).unwrap_or(0);
                if due > now {
                    next_due = Some(due);
                    break;
                }
                let fresh = in_flight
                    .lock()
                    .map(|mut s| s.insert(k.to_vec()))
                    .unwrap_or(false);
                if !fresh {
                    continue;
                }
                let Ok(permit) = permits.clone().try_acquire_owned() else {
                    if let Ok(mut s) = in_flight.lock() {
                        s.remove(&k.to_vec());
                    }
                    break;
                };
                let (this2, in_flight2) = (this.clone(), in_flight.clone());
                tokio::spawn(async move {
                    this2.deliver(&k, &v).await;
                    if let Ok(mut s) = in_flight2.lock() {
                        s.remove(&k.to_vec());
                    }
                    drop(permit);
                });
            }
            let wait = next_due
                .map(|d| Duration::from_millis(d.saturating_sub(now)))
                .unwrap_or(Duration::from_secs(1))
                .clamp(Duration::from_millis(50), Duration::from_secs(1));
            tokio::select! {
                _ = WAKE.notified() => {}
                _ = tokio::time::sleep(wait) => {}
                _ = crate::shutdown::stopped(&mut shutdown) => break,
            }
        }
        let _ = tokio::time::timeout(
            Duration::from_secs(2),
            permits.acquire_many(PARALLEL as u32),
        )
        .await;
    }

    /// One attempt for one outbox entry, and the bookkeeping after it.
    async fn deliver(&self, k: &[u8], v: &[u8]) {
        let Ok(mut p) = serde_json::from_slice::<Pending>(v) else {
            tracing::error!("undecodable webhook outbox entry dropped");
            let _ = self.store.webhook_outbox.remove(k);
            return;
        };
        let ep = match Endpoints::get(&self.store, &p.endpoint) {
            Ok(ep) if ep.enabled => ep,
            // Removed or disabled since: nothing to deliver to.
            _ => {
                let _ = self.store.webhook_outbox.remove(k);
                return;
            }
        };
        let started = Instant::now();
        let outcome = self.post(&ep, &p).await;
        let now = now_ms();
        let (status, error) = match &outcome {
            Outcome::Delivered(s) => (Some(*s), None),
            Outcome::Gone => (Some(410), Some("410 Gone: endpoint disabled".to_string())),
            Outcome::Retry(s, e) => (*s, Some(e.clone())),
        };
        let attempt = Attempt {
            time_ms: now,
            event_id: p.event_id.clone(),
            status,
            duration_ms: started.elapsed().as_millis() as u64,
            error,
        };
        p.attempts += 1;
        let result = (|| -> Result<(), sled::Error> {
            record_attempt(&self.store, &ep.id, &attempt)?;
            self.store.webhook_outbox.remove(k)?;
            // The endpoint is changed through `modify`, never written back from `ep`: an
            // admin may have rotated, disabled or removed it during the request.
            match &outcome {
                Outcome::Delivered(_) => {
                    crate::metrics::webhook_delivery("delivered");
                    if ep.failing_since_ms.is_some() {
                        Endpoints::modify(&self.store, &ep.id, |e| e.failing_since_ms = None)?;
                    }
                }
                Outcome::Gone => {
                    crate::metrics::webhook_delivery("gone");
                    self.disable(&ep, "the receiver answered 410 Gone")?;
                }
                Outcome::Retry(_, why) => {
                    let since = ep.failing_since_ms.unwrap_or(now);
                    if ep.failing_since_ms.is_none() {
                        Endpoints::modify(&self.store, &ep.id, |e| {
                            e.failing_since_ms.get_or_insert(now);
                        })?;
                    }
                    let schedule = &self.config.retry_schedule_secs;
                    if now.saturating_sub(since) >= self.config.disable_after_secs * 1000 {
                        crate::metrics::webhook_delivery("failed");
                        self.disable(&ep, "every delivery failed for disable_after_secs")?;
                    } else if let Some(delay) = schedule.get(p.attempts as usize - 1) {
                        crate::metrics::webhook_delivery("retry");
                        let next = now + delay * 1000;
                        self.store.webhook_outbox.insert(
                            key(next, &p.endpoint, &p.event_id),
                            serde_json::to_vec(&p).unwrap_or_default(),
                        )?;
                        tracing::info!(endpoint = %ep.id, event = %p.event_id, attempt = p.attempts, error = %why, retry_in_secs = delay, "webhook delivery failed; will retry");
                    } else {
                        crate::metrics::webhook_delivery("failed");
                        tracing::warn!(endpoint = %ep.id, event = %p.event_id, attempts = p.attempts, error = %why, "webhook delivery given up after the last retry");
                    }
                }
            }
            Ok(())
        })();
        if let Err(e) = result {
            self.store.note_error(&e);
            tracing::error!(error = %e, "cannot record a webhook delivery");
            return;
        }
        if let Err(e) = self.store.durable().await {
            tracing::error!(error = %e, "cannot flush the webhook outbox");
        }
    }

    fn disable(&self, ep: &Endpoint, why: &str) -> Result<(), sled::Error> {
        Endpoints::modify(&self.store, &ep.id, |e| {
            e.enabled = false;
            e.disabled_reason = Some(why.to_string());
        })?;
        crate::metrics::webhook_endpoint_disabled();
        // The endpoint id, not its URL: a URL may carry a token of the receiver's.
        tracing::warn!(endpoint = %ep.id, reason = why, "webhook endpoint disabled");
        Ok(())
    }

    async fn post(&self, ep: &Endpoint, p: &Pending) -> Outcome {
        let allow_loopback = self.config.allow_loopback;
        let target = match webhooks::parse_url(&ep.url, allow_loopback) {
            Ok(t) => t,
            Err(e) => return Outcome::Retry(None, e),
        };
        let addr = match webhooks::resolve_checked(&target, allow_loopback).await {
            Ok(a) => a,
            Err(e) => return Outcome::Retry(None, e),
        };
        let client = match self.client(&target.host, addr) {
            Ok(c) => c,
            Err(e) => return Outcome::Retry(None, e),
        };
        let ts = now_ms() / 1000;
        let sigs: Vec<String> = ep
            .signing_secrets(now_ms())
            .into_iter()
            .map(|s| webhooks::sign(s, &p.event_id, ts, p.payload.as_bytes()))
            .collect();
        let req = client
            .post(target.url.clone())
            .header("content-type", "application/json")
            .header("webhook-id", &p.event_id)
            .header("webhook-timestamp", ts.to_string())
            .header("webhook-signature", sigs.join(" "))
            .body(p.payload.clone());
        let mut resp = match req.send().await {
            Ok(r) => r,
            Err(e) => return Outcome::Retry(None, describe(&e)),
        };
        let status = resp.status().as_u16();
        // A small part of the body, for the history; never more.
        let mut body = Vec::new();
        while body.len() < MAX_RESPONSE_BYTES {
            match resp.chunk().await {
                Ok(Some(c)) => body.extend_from_slice(&c[..c.len().min(MAX_RESPONSE_BYTES)]),
                _ => break,
            }
        }
        body.truncate(MAX_RESPONSE_BYTES.min(200));
        match status {
            200..=299 => Outcome::Delivered(status),
            410 => Outcome::Gone,
            _ => Outcome::Retry(
                Some(status),
                format!(
                    "HTTP {status}: {}",
                    String::from_utf8_lossy(&body)
                        .chars()
                        .filter(|c| !c.is_control())
                        .collect::<String>()
                ),
            ),
        }
    }

    /// A client that connects to `addr` for `host` only, with no redirects and a deadline.
    fn client(&self, host: &str, addr: std::net::SocketAddr) -> Result<reqwest::Client, String> {
        let roots =
            crate::outbound::client_tls::root_store("webhook", None).map_err(|e| e.to_string())?;
        let mut tls = crate::outbound::client_tls::client_config("webhook", roots)
            .map_err(|e| e.to_string())?;
        tls.alpn_protocols = vec![b"http/1.1".to_vec()];
        let timeout = Duration::from_secs(self.config.timeout_secs);
        reqwest::Client::builder()
            .tls_backend_preconfigured(tls)
            .timeout(timeout)
            .connect_timeout(timeout)
            .redirect(reqwest::redirect::Policy::none())
            .no_proxy()
            .resolve(host, addr)
            .user_agent(concat!("smtp-relay/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| format!("cannot build the HTTP client: {e}"))
    }
}

/// A reqwest error in words, with its cause (reqwest's own text is often just "error
/// sending request").
fn describe(e: &reqwest::Error) -> String {
    let mut s = if e.is_timeout() {
        "timed out".to_string()
    } else if e.is_connect() {
        "connection failed".to_string()
    } else {
        e.to_string()
    };
    let mut src = std::error::Error::source(e);
    while let Some(c) = src {
        s.push_str(": ");
        s.push_str(&c.to_string());
        src = c.source();
    }
    s
}
