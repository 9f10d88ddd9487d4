//! What the running server knows about itself and keeps nowhere else: when it started, what
//! it listens on, the TLS certificate it serves (subject, expiry, the 14-day warning), each
//! upstream's last success and last error, and per-project outcomes over the last hour.
//!
//! `smtp-relay status` reads it through the admin socket (`admin/status.rs`), so it always
//! describes the *running* server; a CLI process that opened the database itself has no
//! start time here and says so. Like the metrics registry it is process-wide: the stages feed
//! it through the one-line helpers they already call (`metrics::accepted`,
//! `metrics::delivery_outcome`, `metrics::upstream_attempt`), so nothing new is threaded
//! through their types. The hourly counts live in memory: after a restart they cover the time
//! since the start (the report says how long that is).

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::sync::{LazyLock, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use serde::Serialize;
use serde_json::Value;

use crate::queue::now_ms;

/// A certificate expiring within this many days is warned about (log and metric).
pub const CERT_WARN_DAYS: i64 = 14;
/// How often the running server re-evaluates the certificate's expiry and warns again.
pub const CERT_CHECK_INTERVAL: Duration = Duration::from_secs(6 * 3600);
/// Minute buckets kept per project: the last hour.
const WINDOW_MINUTES: usize = 60;

/// The serving certificate as loaded at startup or by the last reload.
#[derive(Debug, Clone, Serialize)]
pub struct CertInfo {
    pub file: String,
    pub subject: String,
    /// Seconds since the epoch.
    pub not_after: i64,
}

impl CertInfo {
    pub fn seconds_left(&self) -> i64 {
        self.not_after - (now_ms() / 1000) as i64
    }

    /// Whole days left, rounded down (negative once expired).
    pub fn days_left(&self) -> i64 {
        self.seconds_left().div_euclid(86_400)
    }

    pub fn expiring_soon(&self) -> bool {
        self.seconds_left() < CERT_WARN_DAYS * 86_400
    }
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct UpstreamHealth {
    /// Epoch ms of the last attempt the upstream accepted (some recipients at least).
    pub last_success_ms: Option<u64>,
    /// Epoch ms and reply of the last attempt that delivered nothing.
    pub last_error_ms: Option<u64>,
    pub last_error: Option<String>,
}

/// What a project's messages did in the last hour.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct HourCounts {
    pub accepted: u64,
    pub relayed: u64,
    pub deferred: u64,
    pub failed: u64,
}

#[derive(Debug, Clone, Copy)]
pub enum Outcome {
    Accepted,
    Relayed,
    Deferred,
    Failed,
}

/// One counter set per minute; a bucket whose minute has passed out of the hour is reused.
#[derive(Debug, Clone, Copy, Default)]
struct Bucket {
    minute: u64,
    counts: HourCounts,
}

#[derive(Debug, Default)]
struct State {
    started: Option<(u64, Instant)>,
    listeners: Vec<Value>,
    cert: Option<Result<CertInfo, String>>,
    upstreams: BTreeMap<String, UpstreamHealth>,
    projects: HashMap<String, [Bucket; WINDOW_MINUTES]>,
}

static STATE: LazyLock<Mutex<State>> = LazyLock::new(Mutex::default);

/// A panic elsewhere while holding the lock must not take status reporting down with it.
fn state() -> MutexGuard<'static, State> {
    STATE.lock().unwrap_or_else(|e| e.into_inner())
}

/// The server is up: its listeners (as in `listeners.json`) and configured upstream names, so
/// an upstream never used yet is reported as such rather than missing.
pub fn server_started(listeners: Vec<Value>, upstreams: impl IntoIterator<Item = String>) {
    let mut s = state();
    s.started = Some((now_ms(), Instant::now()));
    s.listeners = listeners;
    for name in upstreams {
        s.upstreams.entry(name).or_default();
    }
}

/// Epoch ms of the start and the uptime; `None` in a process that is not serving.
pub fn started() -> Option<(u64, Duration)> {
    state().started.map(|(ms, at)| (ms, at.elapsed()))
}

pub fn listeners() -> Vec<Value> {
    state().listeners.clone()
}

/// Reads the serving certificate (the first in `path`), records it for `status` and the
/// expiry metric, and warns when it expires within [`CERT_WARN_DAYS`]. Called at startup and
/// after each reload; a certificate that cannot be read is recorded as an error, never fatal
/// here (the TLS setup has already accepted or refused the file).
pub fn certificate_loaded(path: &Path) {
    let info = inspect_certificate(path);
    match &info {
        Ok(c) => crate::metrics::tls_certificate(c.not_after),
        Err(e) => {
            tracing::warn!(file = %path.display(), error = %e, "cannot read the TLS certificate's expiry")
        }
    }
    state().cert = Some(info);
    warn_if_expiring();
}

pub fn certificate() -> Option<Result<CertInfo, String>> {
    state().cert.clone()
}

/// Logs a warning when the loaded certificate expires within [`CERT_WARN_DAYS`] (or has).
pub fn warn_if_expiring() {
    let Some(Ok(c)) = certificate() else {
        return;
    };
    if c.expiring_soon() {
        tracing::warn!(
            file = %c.file,
            subject = %c.subject,
            not_after = c.not_after,
            days_left = c.days_left(),
            "TLS certificate expires within {CERT_WARN_DAYS} days: renew it, then `systemctl reload smtp-relay`"
        );
    }
}

/// Warns again every [`CERT_CHECK_INTERVAL`] while the server runs, so an expiring
/// certificate on a server that is never reloaded keeps being noticed.
pub async fn watch_certificate(mut shutdown: crate::shutdown::Signal) {
    loop {
        tokio::select! {
            _ = tokio::time::sleep(CERT_CHECK_INTERVAL) => warn_if_expiring(),
            _ = crate::shutdown::stopped(&mut shutdown) => return,
        }
    }
}

/// Subject and expiry of the first certificate in a PEM file.
pub fn inspect_certificate(path: &Path) -> Result<CertInfo, String> {
    use rustls_pki_types::CertificateDer;
    use rustls_pki_types::pem::PemObject;
    let der = CertificateDer::pem_file_iter(path)
        .map_err(|e| e.to_string())?
        .next()
        .ok_or_else(|| "no certificate in the file".to_string())?
        .map_err(|e| e.to_string())?;
    let (_, cert) = x509_parser::parse_x509_certificate(der.as_ref())
        .map_err(|e| format!("not an X.509 certificate: {e}"))?;
    Ok(CertInfo {
        file: path.display().to_string(),
        subject: cert.subject().to_string(),
        not_after: cert.validity().not_after.timestamp(),
    })
}

/// One attempt over `upstream`: `ok` when it accepted some recipients, else `reply` is why not.
pub fn upstream_attempt(upstream: &str, ok: bool, reply: &str) {
    let mut s = state();
    let u = s.upstreams.entry(upstream.to_string()).or_default();
    let now = now_ms();
    if ok {
        u.last_success_ms = Some(now);
    } else {
        u.last_error_ms = Some(now);
        u.last_error = Some(reply.chars().take(500).collect());
    }
}

pub fn upstreams() -> BTreeMap<String, UpstreamHealth> {
    state().upstreams.clone()
}

fn current_minute() -> u64 {
    now_ms() / 60_000
}

pub fn project_outcome(project: &str, outcome: Outcome) {
    let minute = current_minute();
    let mut s = state();
    let buckets = s
        .projects
        .entry(project.to_string())
        .or_insert_with(|| [Bucket::default(); WINDOW_MINUTES]);
    let b = &mut buckets[(minute % WINDOW_MINUTES as u64) as usize];
    if b.minute != minute {
        *b = Bucket {
            minute,
            counts: HourCounts::default(),
        };
    }
    let c = &mut b.counts;
    match outcome {
        Outcome::Accepted => c.accepted += 1,
        Outcome::Relayed => c.relayed += 1,
        Outcome::Deferred => c.deferred += 1,
        Outcome::Failed => c.failed += 1,
    }
}

/// Per project, what happened in the last 60 minutes (projects with no activity left out).
pub fn last_hour() -> BTreeMap<String, HourCounts> {
    let now = current_minute();
    let s = state();
    let mut out = BTreeMap::new();
    for (project, buckets) in &s.projects {
        let mut sum = HourCounts::default();
        for b in buckets
            .iter()
            .filter(|b| now.saturating_sub(b.minute) < WINDOW_MINUTES as u64)
        {
            sum.accepted += b.counts.accepted;
            sum.relayed += b.counts.relayed;
            sum.deferred += b.counts.deferred;
            sum.failed += b.counts.failed;
        }
        if sum != HourCounts::default() {
            out.insert(project.clone(), sum);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hour_counts_add_up_per_project() {
        project_outcome("prj_health_a", Outcome::Accepted);
        project_outcome("prj_health_a", Outcome::Accepted);
        project_outcome("prj_health_a", Outcome::Relayed);
        project_outcome("prj_health_b", Outcome::Failed);
        let h = last_hour();
        assert_eq!(
            h["prj_health_a"],
            HourCounts {
                accepted: 2,
                relayed: 1,
                deferred: 0,
                failed: 0
            }
        );
        assert_eq!(h["prj_health_b"].failed, 1);
    }

    #[test]
    fn certificate_expiry_is_read_from_the_pem() {
        let mut params = rcgen::CertificateParams::new(vec!["relay.test".into()]).unwrap();
        params.not_after = rcgen::date_time_ymd(2031, 5, 6);
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = params.self_signed(&key).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("cert.pem");
        std::fs::write(&path, cert.pem()).unwrap();
        let info = inspect_certificate(&path).unwrap();
        // 2031-05-06T00:00:00Z
        assert_eq!(info.not_after, 1_935_792_000);
        assert!(!info.expiring_soon());
        assert!(inspect_certificate(&dir.path().join("missing.pem")).is_err());
    }
}
