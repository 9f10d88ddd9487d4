//! Delivery workers and the retry discipline.
//!
//! A dispatcher takes due messages from the queue (at most `workers` at a time, as many in one
//! pass over the schedule as there are free workers; woken by every enqueue, the poll interval
//! only a safety net), a task per message delivers it, and the outcome goes back to the queue:
//! delivered → removed from the spool; temporary failure → rescheduled with backoff and
//! jitter; permanent failure or expiry → failed, kept in the message log. Each attempt is one
//! log line.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::Semaphore;

use super::RcptOutcome;
use super::routing::Router;
use crate::config::Config;
use crate::events::{Event, EventKind};
use crate::queue::schedule::retry_delay_ms;
use crate::queue::{Envelope, MessageState, Queue, RcptState, now_ms};

pub struct Delivery {
    pub queue: Queue,
    pub config: Arc<Config>,
    /// Routes, upstreams and their connection pools (`routing.rs`).
    pub router: Arc<Router>,
    /// Shared with inbound: a large message is loaded only under a reservation.
    pub memory: crate::memory_budget::MemoryBudget,
    /// Read for each finished message: does its project want bounces (`bounce.rs`)?
    pub registry: crate::policy::projects::Registry,
    /// Bounces are DKIM-signed like the project's other mail (`bounce.rs`).
    pub dkim: crate::transform::dkim_keys::DkimKeys,
}

/// How long an attempt waits for memory before it gives the turn to others.
const MEMORY_WAIT: Duration = Duration::from_secs(60);

impl Delivery {
    /// Runs until `shutdown` turns true, then waits up to the grace period for attempts in
    /// flight. An attempt cut off is retried after restart (the schedule is rebuilt).
    pub async fn run(self, mut shutdown: tokio::sync::watch::Receiver<bool>) {
        let this = Arc::new(self);
        let workers = this.config.queue.workers;
        let permits = Arc::new(Semaphore::new(workers));
        let in_flight: Arc<Mutex<HashSet<String>>> = Arc::default();
        let wake = this.queue.wake_handle();
        let poll = Duration::from_millis(this.config.queue.poll_interval_ms);
        loop {
            if *shutdown.borrow() {
                break;
            }
            let first = tokio::select! {
                p = permits.clone().acquire_owned() => match p { Ok(p) => p, Err(_) => break },
                _ = crate::shutdown::stopped(&mut shutdown) => break,
            };
            // One pass over the schedule for every free worker at once (not one scan from the
            // start per worker). Only as many ids as there are permits leave the schedule, so
            // an id taken is always attempted at once; one cut off by a shutdown comes back
            // when the schedule is rebuilt at start.
            let mut batch = vec![first];
            while let Ok(p) = permits.clone().try_acquire_owned() {
                batch.push(p);
            }
            let due = match this.queue.take_due(now_ms(), batch.len()) {
                Ok(d) => d,
                Err(e) => {
                    tracing::error!(error = %e, "cannot read the schedule");
                    Vec::new()
                }
            };
            if due.is_empty() {
                drop(batch);
                let sleep_for = match this.queue.next_due() {
                    Ok(Some(t)) => Duration::from_millis(t.saturating_sub(now_ms())).min(poll),
                    _ => poll,
                };
                // `enqueue` (and every reschedule) notifies: a new message starts its delivery
                // at once; the poll is only the safety net (and the wait for a future retry).
                tokio::select! {
                    _ = wake.notified() => {}
                    _ = tokio::time::sleep(sleep_for) => {}
                    _ = crate::shutdown::stopped(&mut shutdown) => break,
                }
                continue;
            }
            // Unused permits go back before the attempts start.
            batch.truncate(due.len());
            for (id, permit) in due.into_iter().zip(batch) {
                let inserted = in_flight
                    .lock()
                    .map(|mut set| set.insert(id.clone()))
                    .unwrap_or(false);
                if !inserted {
                    continue;
                }
                let this2 = this.clone();
                let in_flight2 = in_flight.clone();
                tokio::spawn(async move {
                    this2.attempt(&id).await;
                    if let Ok(mut set) = in_flight2.lock() {
                        set.remove(&id);
                    }
                    drop(permit);
                });
            }
        }
        let grace = Duration::from_secs(this.config.server.shutdown_grace_secs);
        let _ = tokio::time::timeout(grace, permits.acquire_many(workers as u32)).await;
        this.router.close().await;
    }

    /// One delivery attempt for one message, and the bookkeeping after it.
    pub async fn attempt(&self, id: &str) {
        let loaded = self
            .queue
            .envelope(id)
            .map(|env| env.filter(|e| !e.state.is_final()));
        let mut env = match loaded {
            Ok(Some(env)) => env,
            Ok(None) => return, // deleted meanwhile, or done
            Err(e) => return self.unreadable(id, e),
        };
        let Ok(_memory) = self.memory.reserve(env.size, MEMORY_WAIT).await else {
            // Other large messages hold the budget: try again shortly, no attempt spent.
            env.next_attempt_ms = now_ms() + MEMORY_WAIT.as_millis() as u64 / 2;
            tracing::info!(
                id,
                size = env.size,
                "delivery postponed: waiting for memory for a large message"
            );
            self.save(&env).await;
            return;
        };
        let bytes = match self.queue.body(id).await {
            Ok(Some(b)) => b,
            Ok(None) => return,
            Err(e) => return self.unreadable(id, e),
        };
        let _in_flight = crate::metrics::delivery_started();
        let started = Instant::now();
        let now = now_ms();
        if now >= env.expires_ms {
            let upstream_reply = env.last_reply.clone();
            env.state = MessageState::Expired;
            env.last_reply = Some(expiry_reason(&env, env.last_reply.as_deref()));
            let pending = env
                .recipients
                .iter()
                .filter(|r| r.state == RcptState::Pending)
                .map(|r| r.address.clone())
                .collect();
            let mut event =
                Event::new(EventKind::Failed, &env, pending).with_reply(upstream_reply.as_deref());
            event.reason = Some("expired".into());
            self.save_outcome(&env, &[event], &bytes).await;
            // Never attempted: no upstream to name.
            let upstream = env.upstream.clone().unwrap_or_else(|| "-".into());
            crate::metrics::delivery_outcome(&env, &upstream);
            tracing::warn!(id, project = %env.project, client = %env.client_ip, upstream, attempts = env.attempts, reason = env.last_reply.as_deref().unwrap_or_default(), "message expired");
            return;
        }
        let pending: Vec<usize> = env
            .recipients
            .iter()
            .enumerate()
            .filter(|(_, r)| r.state == RcptState::Pending)
            .map(|(i, _)| i)
            .collect();
        let addrs: Vec<String> = pending
            .iter()
            .map(|&i| env.recipients[i].address.clone())
            .collect();
        let routed = super::simulated::deliver(&self.router, &env, &addrs, &bytes[..]).await;
        if !routed.attempted && routed.retry_at_ms.is_some() {
            // Every upstream of the route is resting: wait for it without spending a retry.
            env.next_attempt_ms = routed
                .retry_at_ms
                .unwrap_or_else(now_ms)
                .min(env.expires_ms);
            env.state = MessageState::Deferred;
            env.last_reply = Some(routed.attempt.summary.clone());
            tracing::info!(id, project = %env.project, reply = %routed.attempt.summary, "delivery postponed");
            self.save(&env).await;
            return;
        }
        let attempt = routed.attempt;
        let name = routed.upstream.unwrap_or_default();
        env.attempts += 1;
        env.upstream = Some(name.clone());
        env.last_reply = Some(attempt.summary.clone());
        for (&i, outcome) in pending.iter().zip(attempt.outcomes.iter()) {
            let r = &mut env.recipients[i];
            r.reply = Some(outcome.reply().to_string());
            r.state = match outcome {
                RcptOutcome::Delivered(_) => RcptState::Delivered,
                RcptOutcome::Failed(_) => RcptState::Failed,
                RcptOutcome::Deferred(_) => RcptState::Pending,
            };
        }
        let still_pending = env.recipients.iter().any(|r| r.state == RcptState::Pending);
        env.state = if still_pending {
            let jitter = rand::random::<f64>() * 2.0 - 1.0;
            let next = (now_ms()
                + retry_delay_ms(&self.config.queue.retry_schedule_secs, env.attempts, jitter))
            .max(routed.retry_at_ms.unwrap_or(0));
            if next >= env.expires_ms {
                for r in env
                    .recipients
                    .iter_mut()
                    .filter(|r| r.state == RcptState::Pending)
                {
                    r.state = RcptState::Failed;
                }
                env.last_reply = Some(expiry_reason(&env, Some(&attempt.summary)));
                MessageState::Expired
            } else {
                env.next_attempt_ms = next;
                MessageState::Deferred
            }
        } else if env
            .recipients
            .iter()
            .any(|r| r.state == RcptState::Delivered)
        {
            MessageState::Delivered
        } else {
            MessageState::Failed
        };
        let events = attempt_events(&env, &pending, &attempt.outcomes);
        crate::metrics::delivery_outcome(&env, &name);
        tracing::info!(
            id,
            project = %env.project,
            client = %env.client_ip,
            upstream = %name,
            code = reply_code(&attempt.summary),
            reply = %attempt.summary,
            state = env.state.as_str(),
            attempt = env.attempts,
            duration_ms = started.elapsed().as_millis() as u64,
            "delivery attempt"
        );
        self.save_outcome(&env, &events, &bytes).await;
    }

    fn unreadable(&self, id: &str, e: crate::queue::QueueError) {
        tracing::error!(id, error = %e, "cannot load queued message");
        if matches!(
            e,
            crate::queue::QueueError::Store(crate::store::StoreError::Corrupt(_))
        ) {
            let _ = self.queue.quarantine(id, &e.to_string());
        }
    }

    async fn save(&self, env: &Envelope) {
        self.save_with(env, &[]).await
    }

    /// [`Delivery::save_with`], after queueing the bounce a finished message owes its sender
    /// when its project asked for bounces. The bounce is made durable first: a crash between
    /// the two leaves the message to be tried again (at worst a second bounce), never a
    /// recorded failure without its bounce.
    async fn save_outcome(&self, env: &Envelope, events: &[Event], original: &[u8]) {
        let project = match self.registry.get(&env.project) {
            Ok(p) if p.bounces && env.state.is_final() && super::bounce::owed(env, original) => {
                Some(p)
            }
            _ => None,
        };
        if let Some(project) = project
            && let Some((msg, bytes)) = super::bounce::build(
                env,
                original,
                &self.config.server.hostname,
                self.config.queue.max_age_secs,
            )
        {
            let bytes = self.transform_bounce(&project, &msg, bytes);
            match self.queue.enqueue(msg, &bytes).await {
                Ok(b) => {
                    crate::metrics::bounce_queued();
                    tracing::info!(id = %b.id, of = %env.id, to = %b.recipients.first().map(|r| r.address.as_str()).unwrap_or(""), "bounce queued");
                }
                Err(e) => {
                    tracing::error!(id = %env.id, error = %e, "cannot queue the bounce of a failed message")
                }
            }
        }
        self.save_with(env, events).await
    }

    /// The transform stage for a bounce, as for the project's other mail: our `Received`,
    /// From rewriting where the route's first upstream needs it, DKIM (it is sent as
    /// `mailer-daemon@` the sender's domain, which the project owns: signed, it passes
    /// DMARC). No branding. When signing fails the bounce goes unsigned rather than not at all.
    fn transform_bounce(
        &self,
        project: &crate::policy::projects::Project,
        msg: &crate::queue::spool::NewMessage,
        bytes: Vec<u8>,
    ) -> Vec<u8> {
        use crate::transform::{TransformContext, apply, dkim::Signing};
        let hostname = &self.config.server.hostname;
        let mut ctx = TransformContext {
            message_id: &msg.id,
            hostname,
            helo: hostname,
            mail_from: "",
            client_ip: std::net::IpAddr::from([127, 0, 0, 1]),
            tls: false,
            received_ms: now_ms(),
            branding: None,
            from_rewrite: self.router.routes.from_rewrite(&project.id),
            dkim: Some(Signing {
                keys: &self.dkim,
                project,
            }),
        };
        match apply(&ctx, bytes.clone()) {
            Ok(b) => b,
            Err(e) => {
                tracing::warn!(id = %msg.id, project = %project.id, error = %e, "bounce not DKIM-signed");
                ctx.dkim = None;
                apply(&ctx, bytes.clone()).unwrap_or(bytes)
            }
        }
    }

    /// Saves the outcome and its delivery events in one group commit.
    async fn save_with(&self, env: &Envelope, events: &[Event]) {
        if let Err(e) = self.queue.update_with_events(env, events).await {
            // The spool still holds the previous state; the message is retried after restart.
            tracing::error!(id = %env.id, error = %e, "cannot record delivery outcome");
        }
    }
}

/// The events of one attempt (`env` as it is after it): one per outcome and reply, naming the
/// recipients it concerns. Recipients still pending are `deferred`, or `failed` (expired)
/// when the message gave up.
fn attempt_events(env: &Envelope, pending: &[usize], outcomes: &[RcptOutcome]) -> Vec<Event> {
    type Group<'a> = (EventKind, Option<&'static str>, &'a str, Vec<String>);
    let mut groups: Vec<Group> = Vec::new();
    for (&i, outcome) in pending.iter().zip(outcomes.iter()) {
        let (kind, reason) = match outcome {
            RcptOutcome::Delivered(_) => (EventKind::Relayed, None),
            RcptOutcome::Failed(_) => (EventKind::Failed, Some("refused")),
            RcptOutcome::Deferred(_) if env.state == MessageState::Expired => {
                (EventKind::Failed, Some("expired"))
            }
            RcptOutcome::Deferred(_) => (EventKind::Deferred, None),
        };
        let reply = outcome.reply();
        let address = env.recipients[i].address.clone();
        match groups
            .iter_mut()
            .find(|(k, why, r, _)| *k == kind && *why == reason && *r == reply)
        {
            Some(g) => g.3.push(address),
            None => groups.push((kind, reason, reply, vec![address])),
        }
    }
    groups
        .into_iter()
        .map(|(kind, reason, reply, rcpts)| {
            let mut e = Event::new(kind, env, rcpts).with_reply(Some(reply));
            e.reason = reason.map(str::to_string);
            if kind == EventKind::Deferred {
                e.next_attempt_ms = Some(env.next_attempt_ms);
            }
            e
        })
        .collect()
}

/// Why a message expired, for the message log: always says so, even when no attempt was
/// made (then there is no reply to quote).
fn expiry_reason(env: &Envelope, last_reply: Option<&str>) -> String {
    let max_age = env.expires_ms.saturating_sub(env.received_ms) / 1000;
    let attempts = match env.attempts {
        1 => "1 attempt".to_string(),
        n => format!("{n} attempts"),
    };
    match last_reply.filter(|r| !r.is_empty()) {
        Some(r) => format!("expired after {attempts} (max age {max_age} s); last reply: {r}"),
        None => format!("expired after {attempts} (max age {max_age} s); never attempted"),
    }
}

/// The SMTP code a reply summary starts with (0 when it has none, e.g. a connection error).
fn reply_code(summary: &str) -> u16 {
    summary.get(..3).and_then(|c| c.parse().ok()).unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(attempts: u32) -> Envelope {
        Envelope {
            id: "m".into(),
            project: "p".into(),
            mail_from: "a@b.test".into(),
            mail_params: Default::default(),
            recipients: Vec::new(),
            size: 1,
            client_ip: "127.0.0.1".into(),
            received_ms: 1_000_000,
            expires_ms: 1_000_000 + 30_000,
            next_attempt_ms: 0,
            attempts,
            state: MessageState::Expired,
            upstream: None,
            last_reply: None,
            header_message_id: None,
            summary: Default::default(),
        }
    }

    #[test]
    fn an_expiry_always_has_a_reason() {
        assert_eq!(
            expiry_reason(&env(0), None),
            "expired after 0 attempts (max age 30 s); never attempted"
        );
        assert_eq!(
            expiry_reason(&env(0), Some("")),
            "expired after 0 attempts (max age 30 s); never attempted"
        );
        assert_eq!(
            expiry_reason(&env(1), Some("451 4.3.0 try later")),
            "expired after 1 attempt (max age 30 s); last reply: 451 4.3.0 try later"
        );
    }
}
