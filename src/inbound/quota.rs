//! The session's side of the project's limits: which question goes to `policy::limits` at
//! MAIL FROM, RCPT TO and DATA, and which reply comes back.
//!
//! MAIL FROM and RCPT TO only *check* (an app over its limit hears `451` before it uploads the
//! body); DATA *consumes*, once the message passed every other check, right before it is
//! queued — and gives it back if it could not be stored. In `accept-and-delay` mode DATA
//! reserves the message's release slot instead, and the message is queued due at that slot.

use crate::config::LimitMode;
use crate::policy::limits::{Cost, Decision, LimitsError, MessageLimits, Slot, retry_secs};
use crate::queue::now_ms;

use super::reply::{self, Reply};
use super::session::Session;

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

    /// MAIL FROM: would one more message (with one recipient) fit? `Some` refuses it.
    pub(super) fn check_rate_at_mail(&self) -> Option<Reply> {
        let q = self.quota.as_ref()?;
        let cost = Cost::message(1);
        let limiter = &self.shared.limiter;
        let result = match q.effective.mode {
            LimitMode::Reject => limiter.check(&q.project, cost).map(|d| self.decided(d)),
            LimitMode::AcceptAndDelay => limiter
                .preview_slot(&q.project, cost, self.deadline_ms())
                .map(|s| self.slotted(s).err()),
        };
        result.unwrap_or_else(|e| Some(self.limits_unavailable(&e)))
    }

    /// RCPT TO: would `count` recipients fit the recipient quota? (Reject mode only: in
    /// accept-and-delay the message waits for its slot instead.)
    pub(super) fn check_rate_at_rcpt(&self, count: usize) -> Option<Reply> {
        let q = self.quota.as_ref()?;
        if q.effective.mode != LimitMode::Reject {
            return None;
        }
        self.shared
            .limiter
            .check(&q.project, Cost::recipients(count))
            .map(|d| self.decided(d))
            .unwrap_or_else(|e| Some(self.limits_unavailable(&e)))
    }

    /// DATA, just before queueing: consumes the message from every window. `Ok(Some(ms))` is
    /// the accept-and-delay release slot; `Err` refuses the message (nothing was consumed).
    pub(super) fn consume_rate(&self, recipients: usize) -> Result<Option<u64>, Reply> {
        let Some(q) = self.quota.as_ref() else {
            return Ok(None);
        };
        let cost = Cost::message(recipients);
        let limiter = &self.shared.limiter;
        match q.effective.mode {
            LimitMode::Reject => match limiter.acquire(&q.project, cost) {
                Ok(d) => self.decided(d).map_or(Ok(None), Err),
                Err(e) => Err(self.limits_unavailable(&e)),
            },
            LimitMode::AcceptAndDelay => {
                match limiter.reserve(&q.project, cost, self.deadline_ms()) {
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
    pub(super) fn refund_rate(&self, recipients: usize) {
        if let Some(q) = &self.quota
            && let Err(e) = self
                .shared
                .limiter
                .refund(&q.project, Cost::message(recipients))
        {
            tracing::error!(project = %q.project, error = %e, "cannot refund rate limit");
        }
    }

    /// When a message accepted now would expire.
    fn deadline_ms(&self) -> u64 {
        now_ms() + self.max_age_secs() * 1000
    }

    fn decided(&self, d: Decision) -> Option<Reply> {
        let project = self.quota.as_ref().map(|q| q.project.as_str())?;
        match d {
            Decision::Allowed => None,
            Decision::Exceeded(wait) => {
                tracing::info!(client = %self.peer, project, wait_ms = wait.as_millis() as u64, "rate limit exceeded");
                Some(reply::rate_limited(project, retry_secs(wait)))
            }
            Decision::TooLarge => Some(reply::TOO_MANY_RCPTS),
        }
    }

    fn slotted(&self, s: Slot) -> Result<u64, Reply> {
        match s {
            Slot::At(ms) => Ok(ms),
            Slot::Exceeded(wait) => Err(self
                .decided(Decision::Exceeded(wait))
                .unwrap_or(reply::LOCAL_ERROR)),
            Slot::TooLarge => Err(reply::TOO_MANY_RCPTS),
        }
    }

    fn limits_unavailable(&self, e: &LimitsError) -> Reply {
        tracing::error!(client = %self.peer, error = %e, "rate limits unavailable");
        reply::LOCAL_ERROR
    }
}
