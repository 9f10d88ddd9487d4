//! Shared rate limits: every window of a project checked and taken in one Lua script (one
//! round trip, atomic), GCRA as the local limiter does it (`policy/limits.rs`), on Redis's
//! clock so all nodes agree on "now".
//!
//! Redis keeps one hash per project (`<prefix>:rate:<project>`, field = window name, value =
//! its theoretical arrival time in µs), expiring once every window has refilled. A message
//! fits when, for every window, `max(tat, now) + cost·T − now ≤ burst·T` (T = span / limit);
//! the wait announced in `451 … retry in N s` is the largest excess.
//!
//! When Redis cannot answer in time the node is *degraded*: it stops asking Redis (the health
//! probe in `mod.rs` clears it) and limits each project locally at 1/`nodes` of every window —
//! with N nodes that keeps the cluster within its limits while each node decides alone.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use crate::policy::limits::{Cost, Decision, Effective, Slot, WindowSpec, now_ns};

use super::{Cluster, ClusterError};

const GCRA: &str = r#"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local mode = ARGV[1]
local n = tonumber(ARGV[2])
local wait = 0
local news = {}
local ttl = 0
for i = 0, n - 1 do
  local field = ARGV[3 + i * 4]
  local step = tonumber(ARGV[4 + i * 4])
  local tau = tonumber(ARGV[5 + i * 4])
  local cost = tonumber(ARGV[6 + i * 4])
  local tat = tonumber(redis.call('HGET', KEYS[1], field) or '0')
  if tat < now then tat = now end
  local new
  if mode == 'refund' then
    new = tat - cost * step
    if new < now then new = now end
  else
    if cost * step > tau then return {2, 0} end
    new = tat + cost * step
    local excess = new - now - tau
    if excess > wait then wait = excess end
  end
  news[i + 1] = {field, new}
  if new - now > ttl then ttl = new - now end
end
if mode == 'check' or wait > 0 then
  if wait > 0 then return {1, wait} end
  return {0, 0}
end
for _, e in ipairs(news) do redis.call('HSET', KEYS[1], e[1], string.format('%.0f', e[2])) end
redis.call('PEXPIRE', KEYS[1], math.floor(ttl / 1000) + 1000)
return {0, 0}
"#;

/// accept-and-delay: the first instant every window fits (`at ≥ tat + cost·T − τ` for each),
/// never before the last slot handed out, taken at that instant. Answers the delay from now
/// in µs (Redis's clock), or how far past `max_wait` the slot would fall.
const RESERVE: &str = r#"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local max_wait = tonumber(ARGV[1])
local n = tonumber(ARGV[2])
local at = tonumber(redis.call('HGET', KEYS[1], '_slot') or '0')
if at < now then at = now end
local w = {}
for i = 0, n - 1 do
  local field = ARGV[3 + i * 4]
  local step = tonumber(ARGV[4 + i * 4])
  local tau = tonumber(ARGV[5 + i * 4])
  local cost = tonumber(ARGV[6 + i * 4])
  if cost * step > tau then return {2, 0} end
  local tat = tonumber(redis.call('HGET', KEYS[1], field) or '0')
  local earliest = tat + cost * step - tau
  if earliest > at then at = earliest end
  w[i + 1] = {field, tat, step, cost}
end
if at - now > max_wait then return {1, at - now - max_wait} end
local ttl = 0
for _, e in ipairs(w) do
  local tat = e[2]
  if tat < at then tat = at end
  local new = tat + e[4] * e[3]
  redis.call('HSET', KEYS[1], e[1], string.format('%.0f', new))
  if new - now > ttl then ttl = new - now end
end
redis.call('HSET', KEYS[1], '_slot', string.format('%.0f', at))
redis.call('PEXPIRE', KEYS[1], math.floor(ttl / 1000) + 1000)
return {0, at - now}
"#;

pub struct SharedLimits {
    script: redis::Script,
    reserve: redis::Script,
    /// Per project: the TAT (ns) of each fallback window, by window name.
    fallback: Mutex<HashMap<String, HashMap<&'static str, u64>>>,
}

impl Default for SharedLimits {
    fn default() -> Self {
        Self::new()
    }
}

impl SharedLimits {
    pub fn new() -> SharedLimits {
        SharedLimits {
            script: redis::Script::new(GCRA),
            reserve: redis::Script::new(RESERVE),
            fallback: Mutex::new(HashMap::new()),
        }
    }
}

fn step_us(w: &WindowSpec) -> u64 {
    (w.kind.span().as_micros() as u64 / u64::from(w.limit.max(1))).max(1)
}

/// The windows as both scripts read them: their count, then per window its name, emission
/// interval T (µs), tolerance τ = burst·T and the cost in its unit.
fn window_args(inv: &mut redis::ScriptInvocation<'_>, effective: &Effective, cost: Cost) {
    inv.arg(effective.windows.len());
    for w in &effective.windows {
        let step = step_us(w);
        inv.arg(w.kind.name())
            .arg(step)
            .arg(step.saturating_mul(u64::from(w.burst.max(1))))
            .arg(cost_of(w, cost));
    }
}

/// A window's emission interval and tolerance (ns) at 1/nodes of its limit and burst.
fn fallback_window(w: &WindowSpec, nodes: u64) -> (u64, u64) {
    let limit = u64::from(w.limit).div_ceil(nodes).max(1);
    let burst = u64::from(w.burst).div_ceil(nodes).max(1);
    let step = (w.kind.span().as_nanos() as u64 / limit).max(1);
    (step, step.saturating_mul(burst))
}

fn cost_of(w: &WindowSpec, cost: Cost) -> u32 {
    if w.kind.counts_recipients() {
        cost.recipients
    } else {
        cost.messages
    }
}

impl Cluster {
    fn rate_key(&self, project: &str) -> String {
        format!("{}:rate:{project}", self.prefix())
    }

    /// Takes `cost` from every window of the project in Redis (or, degraded, locally at
    /// 1/nodes). `refund` gives back what an earlier take took.
    pub async fn rate(
        &self,
        project: &str,
        effective: &Effective,
        cost: Cost,
        mode: RateMode,
    ) -> Decision {
        // Nothing to count (no windows, or only windows this cost does not touch, such as the
        // recipient quota asked about a message): no round trip.
        if effective.windows.iter().all(|w| cost_of(w, cost) == 0) {
            return Decision::Allowed;
        }
        if !self.is_degraded() {
            match self.rate_shared(project, effective, cost, mode).await {
                Ok(d) => return d,
                Err(e) => self.note_failure(&e),
            }
        }
        self.rate_local(project, effective, cost, mode)
    }

    async fn rate_shared(
        &self,
        project: &str,
        effective: &Effective,
        cost: Cost,
        mode: RateMode,
    ) -> Result<Decision, ClusterError> {
        let limits = self.limits();
        let mut inv = limits.script.key(self.rate_key(project));
        inv.arg(mode.as_str());
        window_args(&mut inv, effective, cost);
        let (status, wait_us): (i64, i64) = self.conn().script(&inv).await?;
        Ok(match status {
            0 => Decision::Allowed,
            2 => Decision::TooLarge,
            _ => Decision::Exceeded(Duration::from_micros(wait_us.max(1) as u64)),
        })
    }

    /// accept-and-delay in cluster mode: the message's release slot in the shared windows
    /// (or, degraded, in this node's 1/nodes windows), taken. `max_wait`: its maximum age.
    pub async fn reserve(
        &self,
        project: &str,
        effective: &Effective,
        cost: Cost,
        max_wait: Duration,
    ) -> Slot {
        let at = |delay: Duration| {
            Slot::At((crate::policy::limits::now_ns() / 1_000_000) + delay.as_millis() as u64)
        };
        if effective.windows.is_empty() {
            return at(Duration::ZERO);
        }
        if !self.is_degraded() {
            match self
                .reserve_shared(project, effective, cost, max_wait)
                .await
            {
                Ok(Ok(delay)) => return at(delay),
                Ok(Err(slot)) => return slot,
                Err(e) => self.note_failure(&e),
            }
        }
        match self.reserve_local(project, effective, cost, max_wait) {
            Ok(delay) => at(delay),
            Err(slot) => slot,
        }
    }

    async fn reserve_shared(
        &self,
        project: &str,
        effective: &Effective,
        cost: Cost,
        max_wait: Duration,
    ) -> Result<Result<Duration, Slot>, ClusterError> {
        let limits = self.limits();
        let mut inv = limits.reserve.key(self.rate_key(project));
        inv.arg(max_wait.as_micros() as u64);
        window_args(&mut inv, effective, cost);
        let (status, us): (i64, i64) = self.conn().script(&inv).await?;
        let us = Duration::from_micros(us.max(0) as u64);
        Ok(match status {
            0 => Ok(us),
            2 => Err(Slot::TooLarge),
            _ => Err(Slot::Exceeded(us.max(Duration::from_micros(1)))),
        })
    }

    /// [`Cluster::reserve`] while degraded: the same arithmetic at 1/nodes of each window.
    fn reserve_local(
        &self,
        project: &str,
        effective: &Effective,
        cost: Cost,
        max_wait: Duration,
    ) -> Result<Duration, Slot> {
        self.with_fallback(project, |tats, nodes, now| {
            let mut at = tats.get("_slot").copied().unwrap_or(0).max(now);
            let mut windows = Vec::new();
            for w in &effective.windows {
                let (step, tau) = fallback_window(w, nodes);
                let c = u64::from(cost_of(w, cost));
                if c.saturating_mul(step) > tau {
                    return Err(Slot::TooLarge);
                }
                let tat = tats.get(w.kind.name()).copied().unwrap_or(0);
                at = at.max((tat + c * step).saturating_sub(tau));
                windows.push((w.kind.name(), tat, c * step));
            }
            let delay = Duration::from_nanos(at - now);
            if delay > max_wait {
                return Err(Slot::Exceeded(delay - max_wait));
            }
            for (name, tat, add) in windows {
                tats.insert(name, tat.max(at) + add);
            }
            tats.insert("_slot", at);
            Ok(delay)
        })
    }

    /// The degraded fallback: the same GCRA in this process, each window at 1/nodes.
    fn rate_local(
        &self,
        project: &str,
        effective: &Effective,
        cost: Cost,
        mode: RateMode,
    ) -> Decision {
        self.with_fallback(project, |tats, nodes, now| {
            let mut wait = 0u64;
            let mut news = Vec::new();
            for w in &effective.windows {
                let (step, tau) = fallback_window(w, nodes);
                let c = u64::from(cost_of(w, cost));
                let tat = tats.get(w.kind.name()).copied().unwrap_or(0).max(now);
                let new = match mode {
                    RateMode::Refund => tat.saturating_sub(c * step).max(now),
                    _ => {
                        if c.saturating_mul(step) > tau {
                            return Decision::TooLarge;
                        }
                        let new = tat + c * step;
                        wait = wait.max((new - now).saturating_sub(tau));
                        new
                    }
                };
                news.push((w.kind.name(), new));
            }
            if wait > 0 {
                return Decision::Exceeded(Duration::from_nanos(wait));
            }
            if mode != RateMode::Check {
                tats.extend(news);
            }
            Decision::Allowed
        })
    }

    /// Runs `f` on the project's fallback windows (TAT in ns by window name) with the node
    /// count and the time now, under the one lock.
    fn with_fallback<T>(
        &self,
        project: &str,
        f: impl FnOnce(&mut HashMap<&'static str, u64>, u64, u64) -> T,
    ) -> T {
        let nodes = u64::from(self.config().nodes.max(1));
        let mut all = self
            .limits()
            .fallback
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        f(all.entry(project.to_string()).or_default(), nodes, now_ns())
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RateMode {
    /// Would it fit? Takes nothing.
    Check,
    Take,
    Refund,
}

impl RateMode {
    fn as_str(self) -> &'static str {
        match self {
            RateMode::Check => "check",
            RateMode::Take => "take",
            RateMode::Refund => "refund",
        }
    }
}
