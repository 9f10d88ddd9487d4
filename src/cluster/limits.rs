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

use crate::policy::limits::{Cost, Decision, Effective, WindowSpec, now_ns};

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

pub struct SharedLimits {
    script: redis::Script,
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
            fallback: Mutex::new(HashMap::new()),
        }
    }
}

fn step_us(w: &WindowSpec) -> u64 {
    (w.kind.span().as_micros() as u64 / u64::from(w.limit.max(1))).max(1)
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
        if effective.windows.is_empty() {
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
        inv.arg(mode.as_str()).arg(effective.windows.len());
        for w in &effective.windows {
            let step = step_us(w);
            inv.arg(w.kind.name())
                .arg(step)
                .arg(step.saturating_mul(u64::from(w.burst.max(1))))
                .arg(cost_of(w, cost));
        }
        let (status, wait_us): (i64, i64) = self.conn().script(&inv).await?;
        Ok(match status {
            0 => Decision::Allowed,
            2 => Decision::TooLarge,
            _ => Decision::Exceeded(Duration::from_micros(wait_us.max(1) as u64)),
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
        let nodes = u64::from(self.config().nodes.max(1));
        let now = now_ns();
        let mut all = self
            .limits()
            .fallback
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        let tats = all.entry(project.to_string()).or_default();
        let mut wait = 0u64;
        let mut news = Vec::new();
        for w in &effective.windows {
            let limit = u64::from(w.limit).div_ceil(nodes).max(1);
            let burst = u64::from(w.burst).div_ceil(nodes).max(1);
            let step = (w.kind.span().as_nanos() as u64 / limit).max(1);
            let tau = step.saturating_mul(burst);
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
