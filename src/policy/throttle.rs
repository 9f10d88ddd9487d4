//! Abuse throttles per client IP, independent of projects: concurrent connections and the
//! connection rate (asked by the listener before a byte is read), and failed AUTHs (asked by
//! the session), which put a login that keeps failing in a cool-down.
//!
//! Failed AUTHs are counted per (client IP, username): many apps share one NAT or cluster
//! egress address, and one app with a stale token must not lock its neighbours out. That
//! login (username from that IP) is refused for the cool-down, even with a correct token, so
//! a token cannot be guessed there. A second, much higher threshold counts all failures of an
//! IP (username spraying); once it is reached, every failed AUTH from that IP closes its
//! session at once — but a correct token of a login that is not cooling down is still
//! accepted. All quotas are the same for every key, so governor's keyed limiters fit.

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
}

/// What a failed AUTH led to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct AuthFailure {
    /// This failure started (or found) the cool-down of its (IP, username).
    pub login_cooling_down: bool,
    /// The IP as a whole is over its (spraying) threshold.
    pub ip_cooling_down: bool,
}

impl AuthFailure {
    /// Whether the session ends with this failure.
    pub fn closes_session(self) -> bool {
        self.login_cooling_down || self.ip_cooling_down
    }
}

type LoginKey = (IpAddr, String);

pub struct Throttle {
    config: ThrottleConfig,
    open: Mutex<HashMap<IpAddr, u32>>,
    connect_rate: Option<DefaultKeyedRateLimiter<IpAddr>>,
    auth_failures: Option<DefaultKeyedRateLimiter<IpAddr>>,
    login_failures: Option<DefaultKeyedRateLimiter<LoginKey>>,
    cooldowns: Mutex<HashMap<IpAddr, Instant>>,
    login_cooldowns: Mutex<HashMap<LoginKey, Instant>>,
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

/// Time left of a cool-down in `map`, forgetting it once over.
fn left<K: std::hash::Hash + Eq>(map: &mut HashMap<K, Instant>, key: &K) -> Option<Duration> {
    let until = *map.get(key)?;
    let now = Instant::now();
    if until > now {
        Some(until - now)
    } else {
        map.remove(key);
        None
    }
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
        let login_failures = quota(
            config.auth_failures_per_user,
            Duration::from_secs(config.auth_failure_window_secs.max(1)),
        )
        .map(DefaultKeyedRateLimiter::keyed);
        Arc::new(Throttle {
            config: config.clone(),
            open: Mutex::new(HashMap::new()),
            connect_rate,
            auth_failures,
            login_failures,
            cooldowns: Mutex::new(HashMap::new()),
            login_cooldowns: Mutex::new(HashMap::new()),
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

    /// How much longer `ip` is over the spraying threshold, if it is.
    pub fn ip_cooling_down(&self, ip: IpAddr) -> Option<Duration> {
        left(&mut lock(&self.cooldowns), &ip)
    }

    /// How much longer logging in as `user` from `ip` is refused, if it is.
    pub fn login_cooling_down(&self, ip: IpAddr, user: &str) -> Option<Duration> {
        left(&mut lock(&self.login_cooldowns), &(ip, user.to_string()))
    }

    /// Records a failed AUTH as `user` from `ip`.
    pub fn auth_failed(&self, ip: IpAddr, user: &str) -> AuthFailure {
        let cooldown = Duration::from_secs(self.config.auth_cooldown_secs);
        let mut out = AuthFailure::default();
        let key = (ip, user.to_string());
        if let Some(limiter) = &self.login_failures
            && limiter.check_key(&key).is_err()
        {
            lock(&self.login_cooldowns).insert(key, Instant::now() + cooldown);
            tracing::warn!(client = %ip, user = %crate::inbound::reply::printable(user), cooldown_secs = self.config.auth_cooldown_secs, "too many failed logins for this user from this address; refusing it");
            out.login_cooling_down = true;
        }
        if let Some(limiter) = &self.auth_failures
            && limiter.check_key(&ip).is_err()
        {
            let mut cooldowns = lock(&self.cooldowns);
            if !cooldowns.contains_key(&ip) {
                tracing::warn!(client = %ip, cooldown_secs = self.config.auth_cooldown_secs, "too many failed logins from this address (spraying?); failed logins now close the session");
            }
            cooldowns.insert(ip, Instant::now() + cooldown);
            out.ip_cooling_down = true;
        }
        out.ip_cooling_down |= self.ip_cooling_down(ip).is_some();
        out
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
        if let Some(l) = &self.login_failures {
            l.retain_recent();
            l.shrink_to_fit();
        }
        let now = Instant::now();
        lock(&self.cooldowns).retain(|_, until| *until > now);
        lock(&self.login_cooldowns).retain(|_, until| *until > now);
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
            auth_failures_per_user: 2,
            auth_failures_per_ip: 20,
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
    fn auth_failures_cool_down_one_login_only() {
        let t = Throttle::new(&cfg());
        let a: IpAddr = "2001:db8::1".parse().unwrap();
        let b: IpAddr = "2001:db8::2".parse().unwrap();
        assert_eq!(t.auth_failed(a, "prj_x"), AuthFailure::default());
        assert_eq!(t.auth_failed(a, "prj_x"), AuthFailure::default());
        assert!(t.auth_failed(a, "prj_x").login_cooling_down);
        assert!(t.login_cooling_down(a, "prj_x").is_some());
        // Other users from the same IP, the same user from another IP, and connections.
        assert!(t.login_cooling_down(a, "prj_y").is_none());
        assert!(t.login_cooling_down(b, "prj_x").is_none());
        assert!(t.ip_cooling_down(a).is_none());
        assert!(t.admit(a).is_ok());
    }

    #[test]
    fn many_users_failing_from_one_ip_is_spraying() {
        let t = Throttle::new(&ThrottleConfig {
            auth_failures_per_ip: 4,
            ..cfg()
        });
        let a: IpAddr = "192.0.2.9".parse().unwrap();
        for user in ["u1", "u2", "u3", "u4"] {
            assert!(!t.auth_failed(a, user).closes_session(), "{user}");
        }
        let f = t.auth_failed(a, "u5");
        assert!(f.ip_cooling_down && !f.login_cooling_down, "{f:?}");
        assert!(t.ip_cooling_down(a).is_some());
        assert!(t.login_cooling_down(a, "u6").is_none());
        assert!(t.admit(a).is_ok());
    }
}
