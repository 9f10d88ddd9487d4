//! Routes a message over its project's upstreams: ordered failover, throttle backoff and the
//! per-upstream sending rate.
//!
//! * **Failover.** The upstreams of a route are tried in order. The next one is tried only
//!   when the previous one accepted nothing and refused at the connection level: it was
//!   unreachable, refused or failed TLS, failed AUTH, or answered 421/454 or a throttle reply
//!   outside RCPT. Recipients it refused with a 5xx are final, whichever upstream said it. A
//!   transaction whose DATA was sent but not answered may have been accepted, so it is never
//!   sent elsewhere (no fan-out): it waits for the message's next retry.
//! * **Backoff.** A throttle reply (see `upstream::is_throttle`) puts that upstream aside for
//!   `throttle_backoff_secs`, doubling while it goes on (at most 16×) and reset by the next
//!   success. The state is shared by every worker, so one throttle reply slows all of them
//!   down instead of each message spending its own retries.
//! * **Rate.** `max_rate` is a GCRA limiter per upstream. A wait of up to [`MAX_RATE_SLEEP`]
//!   is slept in place; a longer one puts the upstream aside like a backoff.
//!
//! An upstream put aside is skipped for the next one of the route. When every upstream of the
//! route is aside, the message is rescheduled for when the first comes back, and that does not
//! count as a delivery attempt.

use std::collections::BTreeMap;
use std::num::NonZeroU32;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use governor::clock::{Clock, DefaultClock};
use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};

use super::outbox::Outbox;
use super::pool::{Pool, PoolResult};
use super::upstream::{SmtpUpstream, UpstreamError};
use super::{Attempt, RcptOutcome};
use crate::config::{Config, Rate, UpstreamConfig, UpstreamKind};
use crate::policy::routes::RouteTable;
use crate::queue::{Envelope, now_ms};

/// Rate-limit waits up to this long are slept by the worker; longer ones reschedule.
pub const MAX_RATE_SLEEP: Duration = Duration::from_secs(5);
/// Consecutive throttles double the backoff up to this factor.
const MAX_BACKOFF_FACTOR: u32 = 16;

pub enum Upstream {
    Outbox(Outbox),
    Smtp(Pool),
}

/// One upstream and the state its workers share.
pub struct Slot {
    pub name: String,
    pub upstream: Upstream,
    backoff_base: Duration,
    backoff: Mutex<Backoff>,
    limiter: Option<DefaultDirectRateLimiter>,
}

#[derive(Default)]
struct Backoff {
    until: Option<Instant>,
    level: u32,
}

/// The outcome of routing one attempt of a message.
#[derive(Debug, Clone)]
pub struct RouteOutcome {
    /// The upstream whose reply is the summary (the last one tried).
    pub upstream: Option<String>,
    /// One outcome per recipient passed in, same order.
    pub attempt: Attempt,
    /// Whether any upstream was contacted (else the attempt does not count).
    pub attempted: bool,
    /// Earliest time worth trying again, when an upstream was put aside (epoch ms).
    pub retry_at_ms: Option<u64>,
    /// `name: reply` for every upstream tried or skipped, in order.
    pub path: Vec<String>,
}

fn quota(rate: Rate) -> Option<Quota> {
    let burst = NonZeroU32::new(rate.count)?;
    let period = Duration::from_secs(rate.per_secs) / rate.count;
    Quota::with_period(period).map(|q| q.allow_burst(burst))
}

fn to_epoch_ms(at: Instant) -> u64 {
    now_ms() + at.saturating_duration_since(Instant::now()).as_millis() as u64
}

impl Slot {
    fn new(name: &str, upstream: Upstream, cfg: &UpstreamConfig) -> Slot {
        Slot {
            name: name.to_string(),
            upstream,
            backoff_base: cfg.throttle_backoff(),
            backoff: Mutex::new(Backoff::default()),
            limiter: cfg.max_rate.and_then(quota).map(RateLimiter::direct),
        }
    }

    /// When the slot is backed off, until when.
    pub fn backed_off_until(&self) -> Option<Instant> {
        let b = self.backoff.lock().ok()?;
        b.until.filter(|t| *t > Instant::now())
    }

    fn throttled(&self, reply: &str) {
        if let Ok(mut b) = self.backoff.lock() {
            let factor = 1u32 << b.level.min(4);
            let d = self.backoff_base * factor.min(MAX_BACKOFF_FACTOR);
            b.until = Some(Instant::now() + d);
            b.level = b.level.saturating_add(1);
            tracing::warn!(upstream = %self.name, backoff_secs = d.as_secs(), reply, "upstream is throttling; leaving it alone for a while");
        }
    }

    fn succeeded(&self) {
        if let Ok(mut b) = self.backoff.lock()
            && b.level > 0
        {
            *b = Backoff::default();
            tracing::info!(upstream = %self.name, "upstream accepts mail again; backoff cleared");
        }
    }

    /// Waits for the rate limiter when the wait is short; returns the time to come back when
    /// it is long.
    async fn pace(&self) -> Option<Instant> {
        let limiter = self.limiter.as_ref()?;
        loop {
            match limiter.check() {
                Ok(()) => return None,
                Err(not_until) => {
                    let wait = not_until.wait_time_from(DefaultClock::default().now());
                    if wait > MAX_RATE_SLEEP {
                        return Some(Instant::now() + wait);
                    }
                    tokio::time::sleep(wait).await;
                }
            }
        }
    }
}

/// Builds every configured upstream. Secrets are read here, once; a missing one is a config
/// error naming its key.
pub fn build_slots(config: &Config) -> Result<BTreeMap<String, Arc<Slot>>, UpstreamError> {
    let mut out = BTreeMap::new();
    for (name, u) in &config.upstreams {
        let up = match u.kind {
            UpstreamKind::Outbox => Upstream::Outbox(Outbox {
                dir: u
                    .dir
                    .clone()
                    .unwrap_or_else(|| config.server.state_dir.join("outbox")),
            }),
            UpstreamKind::Smtp => {
                let secrets = config.upstream_secrets(name)?;
                let smtp = SmtpUpstream::new(name, u, secrets, &config.server.hostname)?;
                Upstream::Smtp(Pool::new(smtp, u))
            }
        };
        out.insert(name.clone(), Arc::new(Slot::new(name, up, u)));
    }
    Ok(out)
}

pub struct Router {
    slots: BTreeMap<String, Arc<Slot>>,
    pub routes: RouteTable,
}

impl Router {
    pub fn new(config: &Config, routes: RouteTable) -> Result<Router, UpstreamError> {
        Ok(Router {
            slots: build_slots(config)?,
            routes,
        })
    }

    /// Each upstream's name and, when it is put aside (throttle backoff), until when (epoch ms).
    pub fn backoffs(&self) -> Vec<(String, Option<u64>)> {
        self.slots
            .iter()
            .map(|(name, slot)| (name.clone(), slot.backed_off_until().map(to_epoch_ms)))
            .collect()
    }

    /// Delivers over the project's route.
    pub async fn deliver(&self, env: &Envelope, rcpts: &[String], bytes: &[u8]) -> RouteOutcome {
        let names = self.routes.resolve(&env.project).names();
        self.deliver_via(&names, env, rcpts, bytes).await
    }

    /// Delivers over the given upstreams, in order.
    pub async fn deliver_via(
        &self,
        names: &[String],
        env: &Envelope,
        rcpts: &[String],
        bytes: &[u8],
    ) -> RouteOutcome {
        let n = rcpts.len();
        let mut outcomes: Vec<Option<RcptOutcome>> = vec![None; n];
        let mut pending: Vec<usize> = (0..n).collect();
        let mut last_deferred: Option<String> = None;
        let mut summary: Option<(String, String)> = None;
        let mut attempted = false;
        let mut retry_at: Option<Instant> = None;
        let mut path = Vec::new();
        let aside = |at: Instant, retry_at: &mut Option<Instant>| {
            *retry_at = Some(retry_at.map_or(at, |r: Instant| r.min(at)));
        };
        for (pos, name) in names.iter().enumerate() {
            let Some(slot) = self.slots.get(name) else {
                let why = format!("451 4.3.0 no upstream named {name} in the config");
                path.push(format!("{name}: {why}"));
                last_deferred = Some(why);
                continue;
            };
            if let Some(until) = slot.backed_off_until() {
                let secs = until.saturating_duration_since(Instant::now()).as_secs() + 1;
                path.push(format!("{name}: throttled, resting for {secs} s"));
                aside(until, &mut retry_at);
                continue;
            }
            if let Some(until) = slot.pace().await {
                let secs = until.saturating_duration_since(Instant::now()).as_secs() + 1;
                path.push(format!(
                    "{name}: sending rate reached, next slot in {secs} s"
                ));
                aside(until, &mut retry_at);
                continue;
            }
            let addrs: Vec<String> = pending.iter().map(|&i| rcpts[i].clone()).collect();
            let (attempt, failover, throttled) = match &slot.upstream {
                Upstream::Outbox(o) => {
                    let a = o.deliver(env, &addrs, bytes);
                    let failed = a
                        .outcomes
                        .iter()
                        .all(|o| matches!(o, RcptOutcome::Deferred(_)));
                    (a, failed, false)
                }
                Upstream::Smtp(pool) => match pool.deliver(env, &addrs, bytes).await {
                    PoolResult::Sent(t) => (t.attempt, t.failover, t.throttled),
                    r @ PoolResult::Setup(_) => (r.attempt(addrs.len()), true, false),
                    r @ PoolResult::Busy => (r.attempt(addrs.len()), true, false),
                },
            };
            attempted = true;
            path.push(format!("{name}: {}", attempt.summary));
            let delivered_some = attempt
                .outcomes
                .iter()
                .any(|o| matches!(o, RcptOutcome::Delivered(_)));
            crate::metrics::upstream_attempt(name, delivered_some, &attempt.summary);
            if throttled {
                slot.throttled(&attempt.summary);
                if let Some(until) = slot.backed_off_until() {
                    aside(until, &mut retry_at);
                }
            } else if delivered_some {
                slot.succeeded();
            }
            summary = Some((name.clone(), attempt.summary.clone()));
            let mut still = Vec::new();
            for (&i, o) in pending.iter().zip(attempt.outcomes) {
                match o {
                    RcptOutcome::Deferred(r) => {
                        last_deferred = Some(r);
                        still.push(i);
                    }
                    final_ => outcomes[i] = Some(final_),
                }
            }
            pending = still;
            if pending.is_empty() || !failover {
                break;
            }
            if let Some(next) = names.get(pos + 1) {
                tracing::warn!(
                    id = %env.id,
                    project = %env.project,
                    from = %name,
                    to = %next,
                    reason = %summary.as_ref().map(|s| s.1.as_str()).unwrap_or(""),
                    "upstream accepted nothing; trying the next upstream of the route"
                );
            }
        }
        let deferred = match (&last_deferred, attempted, retry_at) {
            (Some(r), _, _) => r.clone(),
            (None, false, Some(at)) => format!(
                "451 4.7.0 every upstream of the route is resting (throttled or at its sending rate); next try in {} s",
                at.saturating_duration_since(Instant::now()).as_secs() + 1
            ),
            _ => "451 4.3.0 the route has no upstream".to_string(),
        };
        let outcomes: Vec<RcptOutcome> = outcomes
            .into_iter()
            .map(|o| o.unwrap_or_else(|| RcptOutcome::Deferred(deferred.clone())))
            .collect();
        let summary_text = match (&summary, pending.is_empty()) {
            (Some((_, s)), true) => s.clone(),
            _ => deferred,
        };
        RouteOutcome {
            upstream: summary.map(|s| s.0),
            attempt: Attempt {
                outcomes,
                summary: summary_text,
            },
            attempted,
            retry_at_ms: retry_at.map(to_epoch_ms),
            path,
        }
    }

    /// Closes idle pooled connections (shutdown).
    pub async fn close(&self) {
        for slot in self.slots.values() {
            if let Upstream::Smtp(pool) = &slot.upstream {
                pool.close_idle().await;
            }
        }
    }
}
