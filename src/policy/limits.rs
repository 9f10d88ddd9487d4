//! Per-project limits: message size and recipients per message, concurrent sessions, and the
//! rate windows and quotas, enforced with governor's GCRA.
//!
//! Every project gets the `[limits]` defaults of the config; `smtp-relay project limits`
//! stores an override per project (the `limits` tree), key by key. Several windows apply at
//! once — per second (with a burst), minute, hour and day for messages, per day for recipients —
//! and a message must fit all of them. Each window is one governor direct limiter: a keyed
//! governor limiter has a single quota for all its keys, and projects have different quotas.
//!
//! What is counted where (the README says the same to users):
//! * MAIL FROM *checks* the message windows and the recipient quota for one more message, so an
//!   app over its limit hears `451 4.7.1 … retry in N s` before it uploads the body.
//! * RCPT TO *checks* the recipient quota for the recipients so far.
//! * A message *consumes* — one message, and its recipients — only when it is accepted: after
//!   DATA and the content checks, just before it is queued, all windows at once or none. If
//!   storing it fails, the consumption is refunded. A refused message consumes nothing.
//!
//! The decision instant is ours, not the wall clock's: the limiters run on a [`DecisionClock`]
//! that we set to the instant being decided. All windows of one message see the same instant,
//! and `accept-and-delay` can ask governor whether a message would conform at a *future*
//! instant, which is how it reserves a release slot: the message is queued with that slot as
//! its first due time, so delivery releases it in submission order, never faster than the
//! windows, without delivery ever calling back into policy.
//!
//! The GCRA state (theoretical arrival time, TAT) lives in a state store of ours, so windows of
//! an hour or more can be written to the `counters` tree with each consumption; they are flushed
//! by the same group commit that makes the message durable, so a restart never resets a daily
//! quota and costs no extra fsync.

use std::collections::HashMap;
use std::num::{NonZeroU32, NonZeroU64};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, RwLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use governor::clock::Clock;
use governor::middleware::NoOpMiddleware;
use governor::nanos::Nanos;
use governor::state::{NotKeyed, StateStore};
use governor::{Quota, RateLimiter};
use serde::{Deserialize, Serialize};

use crate::config::{Config, LimitMode, LimitsConfig};
use crate::store::{Store, StoreError};

/// Per-message limits that do not depend on time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MessageLimits {
    pub max_size: usize,
    pub max_recipients: usize,
}

impl MessageLimits {
    pub fn from_config(c: &Config) -> MessageLimits {
        MessageLimits {
            max_size: c.server.max_message_size,
            max_recipients: c.server.max_recipients,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum LimitsError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("{0}")]
    Invalid(String),
    #[error("project {project} already has {max} open sessions")]
    TooManySessions { project: String, max: u32 },
}

impl From<sled::Error> for LimitsError {
    fn from(e: sled::Error) -> Self {
        LimitsError::Store(StoreError::Sled(e))
    }
}

/// A project's override of the `[limits]` defaults. `None` inherits the default; `Some(0)`
/// for a window means "no limit" for this project.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LimitOverride {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub per_second: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub burst: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub per_minute: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub per_hour: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub per_day: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub recipients_per_day: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_recipients: Option<usize>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_size: Option<usize>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_connections: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mode: Option<LimitMode>,
}

impl LimitOverride {
    pub fn is_empty(&self) -> bool {
        *self == LimitOverride::default()
    }

    /// Keys set in `other` replace ours.
    pub fn merge(&mut self, other: &LimitOverride) {
        fn take<T: Copy>(a: &mut Option<T>, b: Option<T>) {
            if b.is_some() {
                *a = b;
            }
        }
        take(&mut self.per_second, other.per_second);
        take(&mut self.burst, other.burst);
        take(&mut self.per_minute, other.per_minute);
        take(&mut self.per_hour, other.per_hour);
        take(&mut self.per_day, other.per_day);
        take(&mut self.recipients_per_day, other.recipients_per_day);
        take(&mut self.max_recipients, other.max_recipients);
        take(&mut self.max_size, other.max_size);
        take(&mut self.max_connections, other.max_connections);
        take(&mut self.mode, other.mode);
    }

    fn validate(&self) -> Result<(), LimitsError> {
        if self.max_recipients == Some(0) {
            return Err(LimitsError::Invalid(
                "max recipients must be at least 1".into(),
            ));
        }
        if self.max_size.is_some_and(|s| s < 1024) {
            return Err(LimitsError::Invalid(
                "max size must be at least 1024 bytes".into(),
            ));
        }
        Ok(())
    }
}

/// One kind of window. Windows of an hour or more are persisted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum WindowKind {
    Second,
    Minute,
    Hour,
    Day,
    RecipientsDay,
}

impl WindowKind {
    pub fn name(self) -> &'static str {
        match self {
            WindowKind::Second => "per_second",
            WindowKind::Minute => "per_minute",
            WindowKind::Hour => "per_hour",
            WindowKind::Day => "per_day",
            WindowKind::RecipientsDay => "recipients_per_day",
        }
    }

    pub fn span(self) -> Duration {
        Duration::from_secs(match self {
            WindowKind::Second => 1,
            WindowKind::Minute => 60,
            WindowKind::Hour => 3600,
            WindowKind::Day | WindowKind::RecipientsDay => 86_400,
        })
    }

    pub fn counts_recipients(self) -> bool {
        self == WindowKind::RecipientsDay
    }

    /// Short windows refill within a restart; long ones must not reset on one.
    pub fn persistent(self) -> bool {
        self.span() >= Duration::from_secs(3600)
    }
}

/// A window as configured: `limit` per `kind.span()`, up to `burst` at once.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WindowSpec {
    pub kind: WindowKind,
    pub limit: u32,
    pub burst: u32,
}

impl WindowSpec {
    fn quota(&self) -> Option<Quota> {
        let limit = NonZeroU32::new(self.limit)?;
        let burst = NonZeroU32::new(self.burst)?;
        Quota::with_period(self.kind.span() / limit.get()).map(|q| q.allow_burst(burst))
    }
}

/// The limits that apply to one project: its override on top of the defaults.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Effective {
    pub windows: Vec<WindowSpec>,
    pub message: MessageLimits,
    pub max_connections: Option<u32>,
    pub mode: LimitMode,
}

impl Effective {
    /// Each key is inherited on its own: an override of `per_second` keeps the default burst.
    pub fn resolve(defaults: &Defaults, o: &LimitOverride) -> Effective {
        let d = &defaults.limits;
        let pick = |o: Option<u32>, d: Option<u32>| o.or(d).filter(|&n| n > 0);
        let mut windows = Vec::new();
        if let Some(rate) = pick(o.per_second, d.per_second) {
            let burst = pick(o.burst, d.burst).unwrap_or(rate);
            windows.push(WindowSpec {
                kind: WindowKind::Second,
                limit: rate,
                burst,
            });
        }
        for (kind, n) in [
            (WindowKind::Minute, pick(o.per_minute, d.per_minute)),
            (WindowKind::Hour, pick(o.per_hour, d.per_hour)),
            (WindowKind::Day, pick(o.per_day, d.per_day)),
            (
                WindowKind::RecipientsDay,
                pick(o.recipients_per_day, d.recipients_per_day),
            ),
        ] {
            if let Some(n) = n {
                windows.push(WindowSpec {
                    kind,
                    limit: n,
                    burst: n,
                });
            }
        }
        Effective {
            windows,
            message: MessageLimits {
                max_size: o.max_size.unwrap_or(defaults.message.max_size),
                max_recipients: o.max_recipients.unwrap_or(defaults.message.max_recipients),
            },
            max_connections: pick(o.max_connections, d.max_connections),
            mode: o.mode.unwrap_or(d.mode),
        }
    }

    /// The most recipients one message can ever have: the per-message limit, and no more than
    /// a recipient window holds (a message over that could never be accepted).
    pub fn max_recipients(&self) -> usize {
        self.windows
            .iter()
            .filter(|w| w.kind.counts_recipients())
            .map(|w| w.burst as usize)
            .fold(self.message.max_recipients, usize::min)
    }
}

/// The config's defaults, resolved once.
#[derive(Debug, Clone)]
pub struct Defaults {
    pub limits: LimitsConfig,
    pub message: MessageLimits,
}

impl Defaults {
    pub fn from_config(c: &Config) -> Defaults {
        Defaults {
            limits: c.limits.clone(),
            message: MessageLimits::from_config(c),
        }
    }
}

/// What one message costs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cost {
    pub messages: u32,
    pub recipients: u32,
}

impl Cost {
    /// One message with `recipients` recipients.
    pub fn message(recipients: usize) -> Cost {
        Cost {
            messages: 1,
            recipients: u32::try_from(recipients).unwrap_or(u32::MAX),
        }
    }

    /// Recipients only (RCPT TO), no message.
    pub fn recipients(recipients: usize) -> Cost {
        Cost {
            messages: 0,
            recipients: u32::try_from(recipients).unwrap_or(u32::MAX),
        }
    }

    fn of(self, kind: WindowKind) -> u32 {
        if kind.counts_recipients() {
            self.recipients
        } else {
            self.messages
        }
    }
}

/// The answer to "may this project send this now?".
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    Allowed,
    /// Over a window: it would fit after this long (governor's wait time, the longest over all
    /// windows, so the tightest window wins).
    Exceeded(Duration),
    /// The cost is larger than a window can ever hold (too many recipients for the quota).
    TooLarge,
}

/// Whole seconds to announce in `retry in N s`: rounded up, so waiting N seconds is enough.
pub fn retry_secs(wait: Duration) -> u64 {
    let secs = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
    secs.max(1)
}

/// Wall-clock nanoseconds since the Unix epoch, monotonic within the process: GCRA state must
/// mean the same after a restart (hence wall time), and must not jump inside one (hence the
/// anchor and `Instant`).
pub fn now_ns() -> u64 {
    static ANCHOR: OnceLock<(u64, Instant)> = OnceLock::new();
    let (wall, mono) = ANCHOR.get_or_init(|| {
        let wall = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(0);
        (wall, Instant::now())
    });
    wall + mono.elapsed().as_nanos() as u64
}

/// The instant governor decides at, set by us before each decision (see the module doc).
#[derive(Debug, Clone, Default)]
pub struct DecisionClock(Arc<AtomicU64>);

impl DecisionClock {
    fn set(&self, ns: u64) {
        self.0.store(ns, Ordering::Release);
    }
}

impl Clock for DecisionClock {
    type Instant = Duration;
    fn now(&self) -> Duration {
        Duration::from_nanos(self.0.load(Ordering::Acquire))
    }
}

/// A window's GCRA state: the theoretical arrival time in nanoseconds since the Unix epoch
/// (the limiters are created with the clock at 0), 0 meaning "never used". Ours rather than
/// governor's `InMemoryState` so it can be read, persisted, restored and refunded.
#[derive(Debug, Clone, Default)]
struct Tat(Arc<AtomicU64>);

impl Tat {
    fn get(&self) -> u64 {
        self.0.load(Ordering::Acquire)
    }
    fn set(&self, v: u64) {
        self.0.store(v, Ordering::Release);
    }
}

impl StateStore for Tat {
    type Key = NotKeyed;

    fn measure_and_replace<T, F, E>(&self, _key: &NotKeyed, f: F) -> Result<T, E>
    where
        F: Fn(Option<Nanos>) -> Result<(T, Nanos), E>,
    {
        let mut prev = self.0.load(Ordering::Acquire);
        loop {
            let (result, next) = f(NonZeroU64::new(prev).map(|n| Nanos::from(n.get())))?;
            match self.0.compare_exchange_weak(
                prev,
                next.into(),
                Ordering::AcqRel,
                Ordering::Acquire,
            ) {
                Ok(_) => return Ok(result),
                Err(actual) => prev = actual,
            }
        }
    }
}

type WindowLimiter = RateLimiter<NotKeyed, Tat, DecisionClock, NoOpMiddleware<Duration>>;

struct Window {
    spec: WindowSpec,
    /// Nanoseconds one unit takes to replenish.
    period: u64,
    tat: Tat,
    limiter: WindowLimiter,
}

impl Window {
    /// Units used and still available at `now`.
    fn usage(&self, now: u64) -> (u64, u64) {
        let debt = self.tat.get().saturating_sub(now);
        let burst = u64::from(self.spec.burst);
        let used = debt.div_ceil(self.period.max(1)).min(burst);
        (used, burst - used)
    }
}

/// Carries "units used" across a change of the window's period: the debt (TAT − now) counts
/// used units, so it is rescaled from the old period to the new one.
fn rescale(tat: u64, old_period: u64, new_period: u64, now: u64) -> u64 {
    if tat <= now || old_period == 0 {
        return 0;
    }
    let debt = u128::from(tat - now) * u128::from(new_period) / u128::from(old_period);
    now.saturating_add(u64::try_from(debt).unwrap_or(u64::MAX))
}

struct ProjectState {
    effective: Effective,
    clock: DecisionClock,
    windows: Vec<Window>,
    /// Latest accept-and-delay slot handed out: slots never go backwards, so releases keep the
    /// submission order.
    last_slot: u64,
    sessions: u32,
}

/// A window's saved TATs, to undo a trial decision.
type Snapshot = [u64; 5];

impl ProjectState {
    /// Builds the windows for `effective`, carrying over usage from `previous` (same kind)
    /// or, for persistent windows, from the stored counters.
    fn build(
        effective: Effective,
        previous: Option<&ProjectState>,
        stored: &dyn Fn(WindowKind) -> Option<(u64, u64)>,
        now: u64,
    ) -> ProjectState {
        let clock = DecisionClock::default();
        // Created at instant 0, so governor's TATs (relative to its start) are epoch times.
        clock.set(0);
        let windows = effective
            .windows
            .iter()
            .filter_map(|spec| {
                let quota = spec.quota()?;
                let period = quota.replenish_interval().as_nanos() as u64;
                let carried = previous
                    .and_then(|p| p.windows.iter().find(|w| w.spec.kind == spec.kind))
                    .map(|w| (w.tat.get(), w.period))
                    .or_else(|| spec.kind.persistent().then(|| stored(spec.kind)).flatten());
                let tat = Tat::default();
                if let Some((old_tat, old_period)) = carried {
                    tat.set(rescale(old_tat, old_period, period, now));
                }
                let limiter = RateLimiter::new(quota, tat.clone(), clock.clone());
                Some(Window {
                    spec: *spec,
                    period,
                    tat,
                    limiter,
                })
            })
            .collect();
        ProjectState {
            effective,
            clock,
            windows,
            last_slot: previous.map(|p| p.last_slot).unwrap_or(0),
            sessions: previous.map(|p| p.sessions).unwrap_or(0),
        }
    }

    fn snapshot(&self) -> Snapshot {
        let mut s = [0; 5];
        for (slot, w) in s.iter_mut().zip(&self.windows) {
            *slot = w.tat.get();
        }
        s
    }

    fn restore(&self, s: &Snapshot) {
        for (v, w) in s.iter().zip(&self.windows) {
            w.tat.set(*v);
        }
    }

    /// Asks governor, window by window, whether `cost` conforms at instant `at`. With
    /// `commit`, the windows keep the consumption only if every window allowed it.
    fn decide(&self, at: u64, cost: Cost, commit: bool) -> Decision {
        self.clock.set(at);
        let before = self.snapshot();
        let mut wait = Duration::ZERO;
        let mut too_large = false;
        for w in &self.windows {
            let Some(n) = NonZeroU32::new(cost.of(w.spec.kind)) else {
                continue;
            };
            match w.limiter.check_n(n) {
                Ok(Ok(())) => {}
                Ok(Err(not_until)) => {
                    wait = wait.max(not_until.wait_time_from(self.clock.now()));
                }
                Err(_insufficient) => too_large = true,
            }
        }
        let decision = if too_large {
            Decision::TooLarge
        } else if wait > Duration::ZERO {
            Decision::Exceeded(wait)
        } else {
            Decision::Allowed
        };
        if !commit || decision != Decision::Allowed {
            self.restore(&before);
        }
        decision
    }

    /// The earliest instant ≥ `from` at which `cost` fits every window. Two rounds suffice:
    /// waiting for the slowest window never makes another window refuse.
    fn earliest(&self, from: u64, cost: Cost) -> Result<u64, Decision> {
        let mut at = from;
        for _ in 0..4 {
            match self.decide(at, cost, false) {
                Decision::Allowed => return Ok(at),
                Decision::Exceeded(w) => at = at.saturating_add(w.as_nanos() as u64),
                Decision::TooLarge => return Err(Decision::TooLarge),
            }
        }
        Err(Decision::Exceeded(Duration::from_nanos(
            at.saturating_sub(from),
        )))
    }

    /// Undoes a consumption made earlier (the message could not be stored). GCRA's inverse:
    /// each unit moves the TAT back by one period.
    fn refund(&self, cost: Cost) {
        for w in &self.windows {
            let n = u64::from(cost.of(w.spec.kind));
            if n > 0 {
                let tat = w.tat.get();
                if tat > 0 {
                    w.tat.set(tat.saturating_sub(n * w.period));
                }
            }
        }
    }
}

/// Where accept-and-delay puts a message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Slot {
    /// Release no earlier than this (milliseconds since the epoch; may be now).
    At(u64),
    /// Its slot would fall after the deadline (its maximum age): retry after this long.
    Exceeded(Duration),
    TooLarge,
}

/// One window as `project show` reports it.
#[derive(Debug, Clone, Serialize)]
pub struct WindowReport {
    pub window: &'static str,
    /// `messages` or `recipients`.
    pub unit: &'static str,
    pub limit: u32,
    /// second, minute, hour or day.
    pub per: &'static str,
    pub burst: u32,
    pub used: u64,
    pub remaining: u64,
    /// Until the window is completely refilled.
    pub refills_in_secs: f64,
    /// Counters survive a restart.
    pub persistent: bool,
    /// `project` (overridden) or `default`.
    pub source: &'static str,
}

#[derive(Debug, Clone, Serialize)]
pub struct LimitsReport {
    pub mode: &'static str,
    pub max_size: usize,
    pub max_recipients: usize,
    pub max_connections: Option<u32>,
    pub connections: u32,
    pub windows: Vec<WindowReport>,
    /// The project's own settings (empty: all defaults).
    #[serde(rename = "override")]
    pub overrides: LimitOverride,
}

/// A project session's share of the limits, held from AUTH to the end of the session: the
/// limits it was admitted with, and its place among the project's open sessions.
#[derive(Debug)]
pub struct ProjectSession {
    pub project: String,
    pub effective: Effective,
    limiter: Limiter,
    /// Cluster mode: this session's place in the cluster-wide count (given back on drop).
    _lease: Option<crate::cluster::leases::Lease>,
}

impl Drop for ProjectSession {
    fn drop(&mut self) {
        if let Some(state) = self.limiter.loaded(&self.project) {
            let mut st = lock(&state);
            st.sessions = st.sessions.saturating_sub(1);
        }
    }
}

/// The shared handle: every session, the admin operations and the benchmark use one of these.
#[derive(Clone)]
pub struct Limiter {
    inner: Arc<Inner>,
}

struct Inner {
    store: Store,
    defaults: Defaults,
    /// Sharded by project, so sessions on different cores do not all bounce one lock's
    /// reader count between them.
    shards: Vec<RwLock<HashMap<String, Arc<Mutex<ProjectState>>>>>,
    /// Cluster mode: the rate windows are shared through Redis (`cluster::limits`); set once
    /// at startup.
    cluster: OnceLock<crate::cluster::Cluster>,
}

const SHARDS: usize = 64;

impl Inner {
    fn shard(&self, project: &str) -> &RwLock<HashMap<String, Arc<Mutex<ProjectState>>>> {
        // FNV-1a: cheap, and project ids are ours (no hash flooding from clients).
        let h = project.bytes().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| {
            (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3)
        });
        &self.shards[(h % SHARDS as u64) as usize]
    }
}

impl std::fmt::Debug for Limiter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Limiter").finish_non_exhaustive()
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// One record per project in the counters tree: `rate/<project>` → for each persistent window,
/// its kind (1 byte), TAT and period (big-endian u64 each). One write per accepted message.
fn counter_key(project: &str) -> Vec<u8> {
    format!("rate/{project}").into_bytes()
}

const COUNTER_ENTRY: usize = 17;

fn kind_byte(kind: WindowKind) -> u8 {
    match kind {
        WindowKind::Second => 0,
        WindowKind::Minute => 1,
        WindowKind::Hour => 2,
        WindowKind::Day => 3,
        WindowKind::RecipientsDay => 4,
    }
}

fn ms(ns: u64) -> u64 {
    ns.div_ceil(1_000_000)
}

impl Limiter {
    pub fn new(store: Store, defaults: Defaults) -> Limiter {
        Limiter {
            inner: Arc::new(Inner {
                store,
                defaults,
                shards: (0..SHARDS).map(|_| RwLock::new(HashMap::new())).collect(),
                cluster: OnceLock::new(),
            }),
        }
    }

    /// Cluster mode: reject-mode rate windows are taken from the shared limiter from now on.
    pub fn set_cluster(&self, cluster: crate::cluster::Cluster) {
        let _ = self.inner.cluster.set(cluster);
    }

    pub fn cluster(&self) -> Option<&crate::cluster::Cluster> {
        self.inner.cluster.get()
    }

    pub fn defaults(&self) -> &Defaults {
        &self.inner.defaults
    }

    /// The project's stored override (empty when it has none).
    pub fn get_override(&self, project: &str) -> Result<LimitOverride, LimitsError> {
        match self.inner.store.limits.get(project.as_bytes())? {
            Some(v) => serde_json::from_slice(&v)
                .map_err(|e| LimitsError::Store(StoreError::Corrupt(e.to_string()))),
            None => Ok(LimitOverride::default()),
        }
    }

    /// Merges `set` into the project's override (after dropping it with `clear`), stores it,
    /// and applies it at once to the running limiter, keeping the usage so far.
    pub fn set_override(
        &self,
        project: &str,
        set: &LimitOverride,
        clear: bool,
    ) -> Result<LimitOverride, LimitsError> {
        let mut o = if clear {
            LimitOverride::default()
        } else {
            self.get_override(project)?
        };
        o.merge(set);
        o.validate()?;
        if o.is_empty() {
            self.inner.store.limits.remove(project.as_bytes())?;
        } else {
            let bytes = serde_json::to_vec(&o)
                .map_err(|e| LimitsError::Store(StoreError::Corrupt(e.to_string())))?;
            self.inner.store.limits.insert(project.as_bytes(), bytes)?;
        }
        self.inner.store.flush_now()?;
        let effective = Effective::resolve(&self.inner.defaults, &o);
        self.state_for(project, effective)?;
        Ok(o)
    }

    pub fn effective(&self, project: &str) -> Result<Effective, LimitsError> {
        Ok(Effective::resolve(
            &self.inner.defaults,
            &self.get_override(project)?,
        ))
    }

    /// Drops everything about a deleted project: override, counters, in-memory state.
    pub fn forget(&self, project: &str) -> Result<(), LimitsError> {
        self.inner
            .shard(project)
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .remove(project);
        self.inner.store.limits.remove(project.as_bytes())?;
        self.inner.store.counters.remove(counter_key(project))?;
        Ok(())
    }

    fn loaded(&self, project: &str) -> Option<Arc<Mutex<ProjectState>>> {
        self.inner
            .shard(project)
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(project)
            .cloned()
    }

    /// The stored (TAT, period) of one persistent window, if any.
    fn stored_counter(&self, project: &str, kind: WindowKind) -> Option<(u64, u64)> {
        let v = self.inner.store.counters.get(counter_key(project)).ok()??;
        v.chunks_exact(COUNTER_ENTRY)
            .find(|e| e[0] == kind_byte(kind))
            .and_then(|e| {
                let tat = crate::store::read_be64(&e[1..])?;
                let period = crate::store::read_be64(&e[9..])?;
                Some((tat, period))
            })
    }

    /// The project's state, built (or rebuilt, keeping usage) for `effective`.
    fn state_for(
        &self,
        project: &str,
        effective: Effective,
    ) -> Result<Arc<Mutex<ProjectState>>, LimitsError> {
        if let Some(state) = self.loaded(project) {
            let mut st = lock(&state);
            if st.effective != effective {
                let rebuilt = ProjectState::build(
                    effective,
                    Some(&st),
                    &|k| self.stored_counter(project, k),
                    now_ns(),
                );
                *st = rebuilt;
            }
            drop(st);
            return Ok(state);
        }
        let built = ProjectState::build(
            effective,
            None,
            &|k| self.stored_counter(project, k),
            now_ns(),
        );
        let mut map = self
            .inner
            .shard(project)
            .write()
            .unwrap_or_else(|e| e.into_inner());
        Ok(map
            .entry(project.to_string())
            .or_insert_with(|| Arc::new(Mutex::new(built)))
            .clone())
    }

    /// The project's state as it is, or loaded with its stored settings.
    fn state(&self, project: &str) -> Result<Arc<Mutex<ProjectState>>, LimitsError> {
        match self.loaded(project) {
            Some(s) => Ok(s),
            None => {
                let effective = self.effective(project)?;
                self.state_for(project, effective)
            }
        }
    }

    /// At AUTH: reads the project's current limits and takes one of its session places.
    pub fn open_session(&self, project: &str) -> Result<ProjectSession, LimitsError> {
        let effective = self.effective(project)?;
        let state = self.state_for(project, effective.clone())?;
        let mut st = lock(&state);
        if let Some(max) = effective.max_connections
            && st.sessions >= max
        {
            return Err(LimitsError::TooManySessions {
                project: project.to_string(),
                max,
            });
        }
        st.sessions += 1;
        Ok(ProjectSession {
            project: project.to_string(),
            effective,
            limiter: self.clone(),
            _lease: None,
        })
    }

    /// [`open_session`](Self::open_session), and in cluster mode also a lease among the
    /// project's `max_connections` across all nodes (`cluster::leases`).
    pub async fn open_session_shared(&self, project: &str) -> Result<ProjectSession, LimitsError> {
        let mut session = self.open_session(project)?;
        if let (Some(cluster), Some(max)) = (self.cluster(), session.effective.max_connections) {
            use crate::cluster::leases::LeaseResult;
            match cluster.lease(project, max).await {
                LeaseResult::Granted(lease) => session._lease = Some(lease),
                LeaseResult::Unavailable => {}
                LeaseResult::Full => {
                    return Err(LimitsError::TooManySessions {
                        project: project.to_string(),
                        max,
                    });
                }
            }
        }
        Ok(session)
    }

    /// Would `cost` fit now? Consumes nothing (MAIL FROM, RCPT TO).
    pub fn check(&self, project: &str, cost: Cost) -> Result<Decision, LimitsError> {
        let state = self.state(project)?;
        let st = lock(&state);
        Ok(st.decide(now_ns(), cost, false))
    }

    /// Consumes `cost` from every window now, or from none (the message is being accepted).
    /// Long windows are written to the counters tree; the caller's durable flush covers them.
    pub fn acquire(&self, project: &str, cost: Cost) -> Result<Decision, LimitsError> {
        let state = self.state(project)?;
        let st = lock(&state);
        let before = st.snapshot();
        let d = st.decide(now_ns(), cost, true);
        if d == Decision::Allowed
            && let Err(e) = self.persist(project, &st)
        {
            st.restore(&before);
            return Err(e);
        }
        Ok(d)
    }

    /// Gives back what [`acquire`](Self::acquire) or [`reserve`](Self::reserve) took, when the
    /// message could not be stored after all.
    pub fn refund(&self, project: &str, cost: Cost) -> Result<(), LimitsError> {
        let state = self.state(project)?;
        let st = lock(&state);
        st.refund(cost);
        self.persist(project, &st)
    }

    /// accept-and-delay: the first instant the message fits every window, no earlier than the
    /// slots already handed out. Nothing is consumed (MAIL FROM).
    pub fn preview_slot(
        &self,
        project: &str,
        cost: Cost,
        deadline_ms: u64,
    ) -> Result<Slot, LimitsError> {
        let state = self.state(project)?;
        let st = lock(&state);
        Ok(Self::slot_in(&st, cost, deadline_ms).0)
    }

    /// accept-and-delay: reserves the message's release slot, consuming at that instant.
    pub fn reserve(
        &self,
        project: &str,
        cost: Cost,
        deadline_ms: u64,
    ) -> Result<Slot, LimitsError> {
        let state = self.state(project)?;
        let mut st = lock(&state);
        let (slot, at) = Self::slot_in(&st, cost, deadline_ms);
        if let Slot::At(_) = slot {
            let before = st.snapshot();
            if st.decide(at, cost, true) != Decision::Allowed {
                // Cannot happen: `at` was just found to conform, under the same lock.
                st.restore(&before);
                return Ok(Slot::Exceeded(Duration::from_secs(1)));
            }
            if let Err(e) = self.persist(project, &st) {
                st.restore(&before);
                return Err(e);
            }
            st.last_slot = at;
        }
        Ok(slot)
    }

    fn slot_in(st: &ProjectState, cost: Cost, deadline_ms: u64) -> (Slot, u64) {
        let now = now_ns();
        match st.earliest(now.max(st.last_slot), cost) {
            Ok(at) => {
                let release = ms(at);
                if release > deadline_ms {
                    let late = Duration::from_millis(release - deadline_ms);
                    (Slot::Exceeded(late), at)
                } else {
                    (Slot::At(release), at)
                }
            }
            Err(Decision::TooLarge) => (Slot::TooLarge, 0),
            Err(Decision::Exceeded(w)) => (Slot::Exceeded(w), 0),
            Err(Decision::Allowed) => (Slot::At(ms(now)), now),
        }
    }

    fn persist(&self, project: &str, st: &ProjectState) -> Result<(), LimitsError> {
        let mut v = Vec::with_capacity(3 * COUNTER_ENTRY);
        for w in st.windows.iter().filter(|w| w.spec.kind.persistent()) {
            v.push(kind_byte(w.spec.kind));
            v.extend_from_slice(&crate::store::be64(w.tat.get()));
            v.extend_from_slice(&crate::store::be64(w.period));
        }
        if !v.is_empty() {
            self.inner.store.counters.insert(counter_key(project), v)?;
        }
        Ok(())
    }

    /// Each limit of the project with its usage right now.
    pub fn report(&self, project: &str) -> Result<LimitsReport, LimitsError> {
        let overrides = self.get_override(project)?;
        let effective = Effective::resolve(&self.inner.defaults, &overrides);
        let state = self.state_for(project, effective.clone())?;
        let st = lock(&state);
        let now = now_ns();
        let windows = st
            .windows
            .iter()
            .map(|w| {
                let (used, remaining) = w.usage(now);
                let kind = w.spec.kind;
                let overridden = match kind {
                    WindowKind::Second => {
                        overrides.per_second.is_some() || overrides.burst.is_some()
                    }
                    WindowKind::Minute => overrides.per_minute.is_some(),
                    WindowKind::Hour => overrides.per_hour.is_some(),
                    WindowKind::Day => overrides.per_day.is_some(),
                    WindowKind::RecipientsDay => overrides.recipients_per_day.is_some(),
                };
                WindowReport {
                    window: kind.name(),
                    unit: if kind.counts_recipients() {
                        "recipients"
                    } else {
                        "messages"
                    },
                    limit: w.spec.limit,
                    per: match kind {
                        WindowKind::Second => "second",
                        WindowKind::Minute => "minute",
                        WindowKind::Hour => "hour",
                        WindowKind::Day | WindowKind::RecipientsDay => "day",
                    },
                    burst: w.spec.burst,
                    used,
                    remaining,
                    refills_in_secs: w.tat.get().saturating_sub(now) as f64 / 1e9,
                    persistent: kind.persistent(),
                    source: if overridden { "project" } else { "default" },
                }
            })
            .collect();
        Ok(LimitsReport {
            mode: effective.mode.as_str(),
            max_size: effective.message.max_size,
            max_recipients: effective.max_recipients(),
            max_connections: effective.max_connections,
            connections: st.sessions,
            windows,
            overrides,
        })
    }
}

/// Parses a size such as `25MiB`, `512KiB`, `10MB`, `1048576` (bytes).
pub fn parse_size(s: &str) -> Result<usize, String> {
    let t = s.trim();
    let split = t
        .find(|c: char| !c.is_ascii_digit() && c != '_')
        .unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: u64 = num
        .replace('_', "")
        .parse()
        .map_err(|_| format!("{s:?} is not a size: use e.g. 25MiB, 512KiB or 1048576"))?;
    let mult: u64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kb" => 1000,
        "kib" => 1 << 10,
        "m" | "mb" => 1_000_000,
        "mib" => 1 << 20,
        "g" | "gb" => 1_000_000_000,
        "gib" => 1 << 30,
        other => return Err(format!("unknown size unit {other:?} in {s:?}")),
    };
    n.checked_mul(mult)
        .and_then(|b| usize::try_from(b).ok())
        .ok_or_else(|| format!("{s:?} is too large"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn defaults(limits: LimitsConfig) -> Defaults {
        Defaults {
            limits,
            message: MessageLimits {
                max_size: 1 << 20,
                max_recipients: 50,
            },
        }
    }

    fn state(limits: LimitsConfig) -> ProjectState {
        let eff = Effective::resolve(&defaults(limits), &LimitOverride::default());
        ProjectState::build(eff, None, &|_| None, 0)
    }

    const S: u64 = 1_000_000_000;

    #[test]
    fn burst_then_wait_from_governor() {
        let st = state(LimitsConfig {
            per_second: Some(2),
            burst: Some(3),
            ..LimitsConfig::unlimited()
        });
        let t0 = 1_000 * S;
        for _ in 0..3 {
            assert_eq!(st.decide(t0, Cost::message(1), true), Decision::Allowed);
        }
        // Burst spent; one unit every 500 ms.
        assert_eq!(
            st.decide(t0, Cost::message(1), true),
            Decision::Exceeded(Duration::from_millis(500))
        );
        assert_eq!(
            st.decide(t0 + S / 2, Cost::message(1), true),
            Decision::Allowed
        );
    }

    #[test]
    fn tightest_window_wins_and_failed_decisions_consume_nothing() {
        let st = state(LimitsConfig {
            per_second: Some(10),
            per_minute: Some(3),
            ..LimitsConfig::unlimited()
        });
        let t0 = 5_000 * S;
        for _ in 0..3 {
            assert_eq!(st.decide(t0, Cost::message(1), true), Decision::Allowed);
        }
        let before = st.snapshot();
        // The per-second window would allow it; the minute window wants 20 s.
        assert_eq!(
            st.decide(t0, Cost::message(1), true),
            Decision::Exceeded(Duration::from_secs(20))
        );
        assert_eq!(st.snapshot(), before, "a refused decision changed state");
        assert_eq!(st.earliest(t0, Cost::message(1)), Ok(t0 + 20 * S));
    }

    #[test]
    fn recipients_beyond_a_quota_never_fit() {
        let st = state(LimitsConfig {
            recipients_per_day: Some(5),
            ..LimitsConfig::unlimited()
        });
        assert_eq!(st.decide(S, Cost::message(6), false), Decision::TooLarge);
        assert_eq!(st.decide(S, Cost::message(5), true), Decision::Allowed);
        assert!(matches!(
            st.decide(S, Cost::recipients(1), false),
            Decision::Exceeded(_)
        ));
        // Messages without recipients are not held back by a recipient quota.
        assert_eq!(st.decide(S, Cost::recipients(0), false), Decision::Allowed);
        assert_eq!(st.effective.max_recipients(), 5);
    }

    #[test]
    fn usage_matches_what_governor_allows() {
        let st = state(LimitsConfig {
            per_minute: Some(10),
            ..LimitsConfig::unlimited()
        });
        let t0 = 77 * S;
        for _ in 0..4 {
            st.decide(t0, Cost::message(1), true);
        }
        let (used, remaining) = st.windows[0].usage(t0 + S);
        assert_eq!((used, remaining), (4, 6));
        let mut allowed = 0;
        while st.decide(t0 + S, Cost::message(1), true) == Decision::Allowed {
            allowed += 1;
        }
        assert_eq!(allowed, remaining);
    }

    #[test]
    fn refund_gives_back_exactly() {
        let st = state(LimitsConfig {
            per_hour: Some(2),
            ..LimitsConfig::unlimited()
        });
        let t0 = 10 * S;
        st.decide(t0, Cost::message(1), true);
        st.decide(t0, Cost::message(1), true);
        assert!(matches!(
            st.decide(t0, Cost::message(1), false),
            Decision::Exceeded(_)
        ));
        st.refund(Cost::message(1));
        assert_eq!(st.decide(t0, Cost::message(1), true), Decision::Allowed);
    }

    #[test]
    fn usage_survives_a_change_of_settings() {
        let st = state(LimitsConfig {
            per_day: Some(10),
            ..LimitsConfig::unlimited()
        });
        let now = 1_000 * S;
        for _ in 0..5 {
            st.decide(now, Cost::message(1), true);
        }
        let eff = Effective::resolve(
            &defaults(LimitsConfig {
                per_day: Some(100),
                ..LimitsConfig::unlimited()
            }),
            &LimitOverride::default(),
        );
        let rebuilt = ProjectState::build(eff, Some(&st), &|_| None, now);
        assert_eq!(rebuilt.windows[0].usage(now), (5, 95));
    }

    #[test]
    fn override_keys_inherit_one_by_one() {
        let d = defaults(LimitsConfig {
            per_second: Some(10),
            burst: Some(40),
            per_day: Some(1000),
            max_connections: Some(5),
            ..LimitsConfig::unlimited()
        });
        let o = LimitOverride {
            per_second: Some(2),
            per_day: Some(0),
            max_size: Some(4096),
            ..Default::default()
        };
        let e = Effective::resolve(&d, &o);
        assert_eq!(
            e.windows,
            vec![WindowSpec {
                kind: WindowKind::Second,
                limit: 2,
                burst: 40
            }]
        );
        assert_eq!(e.message.max_size, 4096);
        assert_eq!(e.message.max_recipients, 50);
        assert_eq!(e.max_connections, Some(5));
    }

    #[test]
    fn long_windows_are_reloaded_from_the_store() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let d = defaults(LimitsConfig {
            per_minute: Some(100),
            per_day: Some(3),
            ..LimitsConfig::unlimited()
        });
        let first = Limiter::new(store.clone(), d.clone());
        for _ in 0..2 {
            assert_eq!(
                first.acquire("prj_a", Cost::message(1)).unwrap(),
                Decision::Allowed
            );
        }
        // A new limiter on the same database, as after a restart.
        let second = Limiter::new(store.clone(), d);
        let report = second.report("prj_a").unwrap();
        let used: Vec<_> = report.windows.iter().map(|w| (w.window, w.used)).collect();
        assert_eq!(used, vec![("per_minute", 0), ("per_day", 2)]);
        assert_eq!(report.windows[1].remaining, 1);
        assert!(second.report("prj_b").unwrap().windows[1].used == 0);
        second.forget("prj_a").unwrap();
        assert!(store.counters.is_empty());
    }

    #[test]
    fn sizes_parse() {
        assert_eq!(parse_size("25MiB"), Ok(25 << 20));
        assert_eq!(parse_size("10 MB"), Ok(10_000_000));
        assert_eq!(parse_size("4096"), Ok(4096));
        assert_eq!(parse_size("2kib"), Ok(2048));
        assert!(parse_size("12 parsecs").is_err());
        assert!(parse_size("MiB").is_err());
    }

    #[test]
    fn retry_is_rounded_up() {
        assert_eq!(retry_secs(Duration::from_millis(1)), 1);
        assert_eq!(retry_secs(Duration::from_millis(2500)), 3);
        assert_eq!(retry_secs(Duration::from_secs(20)), 20);
    }
}
