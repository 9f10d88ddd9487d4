//! The session's side of the project's limits: which question goes to `policy::limits` at
//! MAIL FROM, RCPT TO and DATA, and which reply comes back.
//!
//! MAIL FROM and RCPT TO only *check* (an app over its limit hears `451` before it uploads the
//! body); DATA *consumes*, once the message passed every other check, right before it is
//! queued — and gives it back if it could not be stored. In `accept-and-delay` mode DATA
//! reserves the message's release slot instead, and the message is queued due at that slot.
//! [`RateCheck`] holds these questions without a session, so the HTTP send API asks the
//! same ones (`submit.rs`).

use std::net::SocketAddr;

use crate::cluster::RateMode;
use crate::config::LimitMode;
use crate::policy::limits::{
    Cost, Decision, Limiter, LimitsError, MessageLimits, ProjectSession, Slot, retry_secs,
};
use crate::queue::now_ms;

use super::reply::{self, Reply};
use super::session::Session;

/// Why the project's limits refuse a message (replies in `reply.rs`, HTTP statuses in
/// `send_api`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RateRefusal {
    /// Over a rate window; the same message would fit in `retry_secs`.
    Exceeded { project: String, retry_secs: u64 },
    /// More recipients than a window can ever hold.
    TooManyRecipients,
    /// The limiter's store failed.
    Unavailable,
}

impl From<&RateRefusal> for Reply {
    fn from(r: &RateRefusal) -> Reply {
        match r {
            RateRefusal::Exceeded {
                project,
                retry_secs,
            } => reply::rate_limited(project, *retry_secs),
            RateRefusal::TooManyRecipients => reply::TOO_MANY_RCPTS,
            RateRefusal::Unavailable => reply::LOCAL_ERROR,
        }
    }
}

/// The project's limits as one submission sees them.
pub struct RateCheck<'a> {
    pub limiter: &'a Limiter,
    /// `None` before AUTH: nothing is limited.
    pub quota: Option<&'a ProjectSession>,
    pub peer: SocketAddr,
    pub max_age_secs: u64,
}

impl RateCheck<'_> {
    /// Would one more message with `recipients` recipients fit now? Consumes nothing.
    pub fn check_message(&self, recipients: usize) -> Result<(), RateRefusal> {
        let Some(q) = self.quota else {
            return Ok(());
        };
        let cost = Cost::message(recipients);
        let result = match q.effective.mode {
            LimitMode::Reject => self
                .limiter
                .check(&q.project, cost)
                .map(|d| self.decided(d)),
            LimitMode::AcceptAndDelay => self
                .limiter
                .preview_slot(&q.project, cost, self.deadline_ms())
                .map(|s| self.slotted(s).err()),
        };
        match result {
            Ok(None) => Ok(()),
            Ok(Some(r)) => Err(r),
            Err(e) => Err(self.limits_unavailable(&e)),
        }
    }

    /// Would `count` recipients fit the recipient quota? (Reject mode only: in
    /// accept-and-delay the message waits for its slot instead.)
    pub fn check_recipients(&self, count: usize) -> Result<(), RateRefusal> {
        let Some(q) = self.quota else {
            return Ok(());
        };
        if q.effective.mode != LimitMode::Reject {
            return Ok(());
        }
        match self.limiter.check(&q.project, Cost::recipients(count)) {
            Ok(d) => self.decided(d).map_or(Ok(()), Err),
            Err(e) => Err(self.limits_unavailable(&e)),
        }
    }

    /// [`check_message`](Self::check_message) or, for a Reject-mode project in cluster mode,
    /// the same question asked of the shared windows (one round trip, nothing taken), so the
    /// refusal comes at MAIL FROM as on a single node, not only after DATA.
    pub async fn check_message_shared(&self, recipients: usize) -> Result<(), RateRefusal> {
        match self.ask_shared(Cost::message(recipients)).await {
            Some(answer) => answer,
            None => self.check_message(recipients),
        }
    }

    /// [`check_recipients`](Self::check_recipients), asked of the shared windows in cluster
    /// mode.
    pub async fn check_recipients_shared(&self, count: usize) -> Result<(), RateRefusal> {
        match self.ask_shared(Cost::recipients(count)).await {
            Some(answer) => answer,
            None => self.check_recipients(count),
        }
    }

    /// Would `cost` fit the shared windows? `None` when they do not count this project.
    async fn ask_shared(&self, cost: Cost) -> Option<Result<(), RateRefusal>> {
        let q = self.quota?;
        let cluster = self.shared_windows(q)?;
        let d = cluster
            .rate(&q.project, &q.effective, cost, RateMode::Check)
            .await;
        Some(self.decided(d).map_or(Ok(()), Err))
    }

    /// Counts the message (Reject) or reserves its release slot (AcceptAndDelay, `Some(ms)`).
    /// In cluster mode a Reject-mode message is counted in the shared windows instead.
    pub async fn consume(&self, recipients: usize) -> Result<Option<u64>, RateRefusal> {
        let Some(q) = self.quota else {
            return Ok(None);
        };
        let cost = Cost::message(recipients);
        if let Some(cluster) = self.limiter.cluster() {
            return match q.effective.mode {
                LimitMode::Reject => {
                    let d = cluster
                        .rate(&q.project, &q.effective, cost, RateMode::Take)
                        .await;
                    self.decided(d).map_or(Ok(None), Err)
                }
                LimitMode::AcceptAndDelay => {
                    let max_wait = std::time::Duration::from_secs(self.max_age_secs);
                    let slot = cluster
                        .reserve(&q.project, &q.effective, cost, max_wait)
                        .await;
                    self.slotted(slot).map(|at| (at > now_ms()).then_some(at))
                }
            };
        }
        match q.effective.mode {
            LimitMode::Reject => match self.limiter.acquire(&q.project, cost) {
                Ok(d) => self.decided(d).map_or(Ok(None), Err),
                Err(e) => Err(self.limits_unavailable(&e)),
            },
            LimitMode::AcceptAndDelay => {
                match self.limiter.reserve(&q.project, cost, self.deadline_ms()) {
                    // A slot not later than now (the limiter's clock) is no delay: due at
                    // once, and no `rate_limited` event for it.
                    Ok(slot) => self.slotted(slot).map(|at| {
                        (at > crate::policy::limits::now_ns().div_ceil(1_000_000)).then_some(at)
                    }),
                    Err(e) => Err(self.limits_unavailable(&e)),
                }
            }
        }
    }

    /// The message was consumed but could not be stored: give it back.
    pub async fn refund(&self, recipients: usize) {
        if let Some(q) = self.quota
            && let Some(cluster) = self.shared_windows(q)
        {
            let cost = Cost::message(recipients);
            cluster
                .rate(&q.project, &q.effective, cost, RateMode::Refund)
                .await;
            return;
        }
        if self.limiter.cluster().is_some() {
            // A shared accept-and-delay slot stays taken (the local limiter took nothing).
            return;
        }
        if let Some(q) = self.quota
            && let Err(e) = self.limiter.refund(&q.project, Cost::message(recipients))
        {
            tracing::error!(project = %q.project, error = %e, "cannot refund rate limit");
        }
    }

    /// The cluster whose shared windows count this project, for a refund (Reject mode; an
    /// accept-and-delay slot is not given back, as on a single node).
    fn shared_windows(&self, q: &ProjectSession) -> Option<&crate::cluster::Cluster> {
        (q.effective.mode == LimitMode::Reject)
            .then(|| self.limiter.cluster())
            .flatten()
    }

    /// When a message accepted now would expire.
    fn deadline_ms(&self) -> u64 {
        now_ms() + self.max_age_secs * 1000
    }

    fn decided(&self, d: Decision) -> Option<RateRefusal> {
        let project = self.quota.map(|q| q.project.as_str())?;
        match d {
            Decision::Allowed => None,
            Decision::Exceeded(wait) => {
                tracing::info!(client = %self.peer, project, wait_ms = wait.as_millis() as u64, "rate limit exceeded");
                Some(RateRefusal::Exceeded {
                    project: project.to_string(),
                    retry_secs: retry_secs(wait),
                })
            }
            Decision::TooLarge => Some(RateRefusal::TooManyRecipients),
        }
    }

    fn slotted(&self, s: Slot) -> Result<u64, RateRefusal> {
        match s {
            Slot::At(ms) => Ok(ms),
            Slot::Exceeded(wait) => Err(self
                .decided(Decision::Exceeded(wait))
                .unwrap_or(RateRefusal::Unavailable)),
            Slot::TooLarge => Err(RateRefusal::TooManyRecipients),
        }
    }

    fn limits_unavailable(&self, e: &LimitsError) -> RateRefusal {
        tracing::error!(client = %self.peer, error = %e, "rate limits unavailable");
        RateRefusal::Unavailable
    }
}

impl Session {
    /// Size and recipient limits of this session: the project's, once authenticated.
    pub(super) fn message_limits(&self) -> MessageLimits {
        match &self.quota {
            Some(q) => MessageLimits {
                max_size: q.effective.message.max_size,
                max_recipients: q.effective.max_recipients(),
            },
            None => self.shared.limits,
        }
    }

    /// How long the project's mail may wait in the queue.
    pub(super) fn max_age_secs(&self) -> u64 {
        self.auth
            .as_ref()
            .and_then(|a| a.project.max_age_secs)
            .unwrap_or(self.shared.config.queue.max_age_secs)
    }

    pub(super) fn rate(&self) -> RateCheck<'_> {
        RateCheck {
            limiter: &self.shared.limiter,
            quota: self.quota.as_ref(),
            peer: self.peer,
            max_age_secs: self.max_age_secs(),
        }
    }

    /// MAIL FROM: would one more message (with one recipient) fit? `Some` refuses it.
    pub(super) async fn check_rate_at_mail(&self) -> Option<Reply> {
        self.rate()
            .check_message_shared(1)
            .await
            .err()
            .map(|r| Reply::from(&r))
    }

    /// RCPT TO: would `count` recipients fit the recipient quota?
    pub(super) async fn check_rate_at_rcpt(&self, count: usize) -> Option<Reply> {
        self.rate()
            .check_recipients_shared(count)
            .await
            .err()
            .map(|r| Reply::from(&r))
    }
}
