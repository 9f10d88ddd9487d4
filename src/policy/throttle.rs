//! Abuse throttles per client IP, independent of projects: concurrent connections and the
//! connection rate (asked by the listener before a byte is read), and failed AUTHs (asked by
//! the session), which put an IP that keeps guessing in a cool-down.
//!
//! Everything here is keyed by the client's address only. A guessing IP is refused even with a
//! correct token, but it never locks the project out for its other clients. All quotas are
//! the same for every IP, so governor's keyed limiters fit (unlike per-project limits).

use std::collections::HashMap;
use std::net::IpAddr;
use std::num::NonZeroU32;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use governor::{DefaultKeyedRateLimiter, Quota};

use crate::config::ThrottleConfig;

/// Housekeeping (dropping idle IPs from the maps) runs once per this many admissions.
const HOUSEKEEPING_EVERY: u64 = 1024;

/// Why a connection or an AUTH is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    TooManyConnections,
    ConnectionRate,
    /// Too many failed AUTHs recently; refused for this much longer.
    CoolingDown(Duration),
}

pub struct Throttle {
    config: ThrottleConfig,
    open: Mutex<HashMap<IpAddr, u32>>,
    connect_rate: Option<DefaultKeyedRateLimiter<IpAddr>>,
    auth_failures: Option<DefaultKeyedRateLimiter<IpAddr>>,
    cooldowns: Mutex<HashMap<IpAddr, Instant>>,
    admitted: AtomicU64,
}

impl std::fmt::Debug for Throttle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Throttle").finish_non_exhaustive()
    }
}

/// Holds one of the IP's connection places until the connection ends.
#[derive(Debug)]
pub struct IpGuard {
    throttle: Arc<Throttle>,
    ip: IpAddr,
}

impl Drop for IpGuard {
    fn drop(&mut self) {
        let mut open = lock(&self.throttle.open);
        if let Some(n) = open.get_mut(&self.ip) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                open.remove(&self.ip);
            }
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// `n` per `window`, all of them at once if need be.
fn quota(n: u32, window: Duration) -> Option<Quota> {
    let n = NonZeroU32::new(n)?;
    Quota::with_period(window / n.get()).map(|q| q.allow_burst(n))
}

impl Throttle {
    pub fn new(config: &ThrottleConfig) -> Arc<Throttle> {
        let connect_rate = quota(
            config.connections_per_ip_per_minute,
            Duration::from_secs(60),
        )
        .map(DefaultKeyedRateLimiter::keyed);
        let auth_failures = quota(
            config.auth_failures_per_ip,
            Duration::from_secs(config.auth_failure_window_secs.max(1)),
        )
        .map(DefaultKeyedRateLimiter::keyed);
        Arc::new(Throttle {
            config: config.clone(),
            open: Mutex::new(HashMap::new()),
            connect_rate,
            auth_failures,
            cooldowns: Mutex::new(HashMap::new()),
            admitted: AtomicU64::new(0),
        })
    }

    /// A new connection from `ip`: admitted with a guard, or refused (421 and close).
    pub fn admit(self: &Arc<Self>, ip: IpAddr) -> Result<IpGuard, Refusal> {
        if self
            .admitted
            .fetch_add(1, Ordering::Relaxed)
            .is_multiple_of(HOUSEKEEPING_EVERY)
        {
            self.housekeeping();
        }
        if let Some(left) = self.cooling_down(ip) {
            return Err(Refusal::CoolingDown(left));
        }
        let mut open = lock(&self.open);
        let n = open.get(&ip).copied().unwrap_or(0);
        let max = self.config.max_connections_per_ip;
        if max > 0 && n >= max {
            return Err(Refusal::TooManyConnections);
        }
        // Checked after the concurrency limit, so a refused connection costs no rate.
        if let Some(rate) = &self.connect_rate
            && rate.check_key(&ip).is_err()
        {
            return Err(Refusal::ConnectionRate);
        }
        open.insert(ip, n + 1);
        Ok(IpGuard {
            throttle: self.clone(),
            ip,
        })
    }

    /// How much longer `ip` is refused for failed AUTHs, if it is.
    pub fn cooling_down(&self, ip: IpAddr) -> Option<Duration> {
        let mut cooldowns = lock(&self.cooldowns);
        let until = *cooldowns.get(&ip)?;
        let now = Instant::now();
        if until > now {
            Some(until - now)
        } else {
            cooldowns.remove(&ip);
            None
        }
    }

    /// Records a failed AUTH from `ip`. True when this failure starts its cool-down.
    pub fn auth_failed(&self, ip: IpAddr) -> bool {
        let Some(limiter) = &self.auth_failures else {
            return false;
        };
        if limiter.check_key(&ip).is_ok() {
            return false;
        }
        let until = Instant::now() + Duration::from_secs(self.config.auth_cooldown_secs);
        lock(&self.cooldowns).insert(ip, until);
        tracing::warn!(client = %ip, cooldown_secs = self.config.auth_cooldown_secs, "too many failed logins; refusing this address");
        true
    }

    /// How long after the credentials arrived a failed AUTH is answered.
    pub fn auth_failure_delay(&self) -> Duration {
        Duration::from_millis(self.config.auth_failure_delay_ms)
    }

    /// Forgets IPs whose state no longer matters, so memory follows the active clients.
    fn housekeeping(&self) {
        if let Some(l) = &self.connect_rate {
            l.retain_recent();
            l.shrink_to_fit();
        }
        if let Some(l) = &self.auth_failures {
            l.retain_recent();
            l.shrink_to_fit();
        }
        let now = Instant::now();
        lock(&self.cooldowns).retain(|_, until| *until > now);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg() -> ThrottleConfig {
        ThrottleConfig {
            max_connections_per_ip: 2,
            connections_per_ip_per_minute: 3,
            auth_failure_delay_ms: 0,
            auth_failures_per_ip: 2,
            auth_failure_window_secs: 60,
            auth_cooldown_secs: 60,
        }
    }

    #[test]
    fn connections_per_ip_are_counted_and_released() {
        let t = Throttle::new(&cfg());
        let a: IpAddr = "192.0.2.1".parse().unwrap();
        let b: IpAddr = "192.0.2.2".parse().unwrap();
        let g1 = t.admit(a).unwrap();
        let _g2 = t.admit(a).unwrap();
        assert_eq!(t.admit(a).unwrap_err(), Refusal::TooManyConnections);
        let _other = t.admit(b).unwrap();
        drop(g1);
        let g3 = t.admit(a).unwrap();
        drop(g3);
        // A place is free, but the rate (3 a minute) is spent.
        assert_eq!(t.admit(a).unwrap_err(), Refusal::ConnectionRate);
    }

    #[test]
    fn auth_failures_cool_down_one_ip_only() {
        let t = Throttle::new(&cfg());
        let a: IpAddr = "2001:db8::1".parse().unwrap();
        let b: IpAddr = "2001:db8::2".parse().unwrap();
        assert!(!t.auth_failed(a));
        assert!(!t.auth_failed(a));
        assert!(t.auth_failed(a));
        assert!(t.cooling_down(a).is_some());
        assert!(matches!(t.admit(a), Err(Refusal::CoolingDown(_))));
        assert!(t.cooling_down(b).is_none());
        assert!(t.admit(b).is_ok());
    }
}
