//! A connection pool per SMTP upstream: several queued messages go over one connection
//! (RSET between them, pipelined with the next envelope when the upstream allows), within the
//! upstream's limits.
//!
//! * at most `max_connections` sessions are open at once — a semaphore counts the ones in
//!   use, and a new session is only opened when no idle one is left, so idle plus busy never
//!   exceeds the limit;
//! * a session carries at most `max_messages_per_connection` messages, then it is closed;
//! * an idle session is closed (QUIT) after `idle_timeout`, by a reaper task that holds only a
//!   weak reference, so dropping the pool stops it;
//! * before reuse a session gets RSET: one that died while idle is dropped quietly and another
//!   one is used or opened — a stale connection is not an upstream failure. With PIPELINING the
//!   RSET goes in the same write as the envelope; if that group gets no answer the connection
//!   was stale, and nothing was sent (no body), so the message simply takes another one.

use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use tokio::sync::Semaphore;

use super::upstream::{Connection, SetupError, SmtpUpstream, Transaction};
use super::{Attempt, RcptOutcome};
use crate::config::UpstreamConfig;
use crate::queue::Envelope;

struct Idle {
    conn: Connection,
    since: Instant,
}

struct Inner {
    upstream: Arc<SmtpUpstream>,
    permits: Arc<Semaphore>,
    idle: Mutex<Vec<Idle>>,
    max_per_connection: usize,
    idle_timeout: Duration,
    reaper: std::sync::OnceLock<()>,
}

/// What a pooled delivery attempt produced.
pub enum PoolResult {
    /// No session could be set up: nothing was sent.
    Setup(SetupError),
    /// Every connection is busy and none freed up in time: nothing was tried.
    Busy,
    Sent(Transaction),
}

#[derive(Clone)]
pub struct Pool(Arc<Inner>);

impl Pool {
    pub fn new(upstream: SmtpUpstream, cfg: &UpstreamConfig) -> Pool {
        Pool(Arc::new(Inner {
            upstream: Arc::new(upstream),
            permits: Arc::new(Semaphore::new(cfg.max_connections())),
            idle: Mutex::new(Vec::new()),
            max_per_connection: cfg.max_messages_per_connection(),
            idle_timeout: cfg.idle_timeout(),
            reaper: std::sync::OnceLock::new(),
        }))
    }

    fn take_idle(&self) -> Option<Idle> {
        self.0.idle.lock().ok()?.pop()
    }

    /// One transaction through a pooled (or new) session.
    pub async fn deliver(&self, env: &Envelope, rcpts: &[String], message: &[u8]) -> PoolResult {
        let up = &self.0.upstream;
        let wait = up.connect_timeout + up.command_timeout;
        let permit = match tokio::time::timeout(wait, self.0.permits.clone().acquire_owned()).await
        {
            Ok(Ok(p)) => p,
            _ => return PoolResult::Busy,
        };
        let (t, mut conn) = loop {
            let mut reused = None;
            while let Some(idle) = self.take_idle() {
                let mut c = idle.conn;
                if idle.since.elapsed() >= self.0.idle_timeout {
                    let up = up.clone();
                    tokio::spawn(async move { up.quit(c).await });
                    continue;
                }
                if c.pipelines() || up.reset(&mut c).await {
                    reused = Some(c);
                    break;
                }
                tracing::debug!(upstream = %up.name, "pooled connection was closed while idle; dropping it");
            }
            let (mut c, reset) = match reused {
                Some(c) => {
                    let pipelined_reset = c.pipelines();
                    (c, pipelined_reset)
                }
                None => match up.connect().await {
                    Ok(c) => (c, false),
                    Err(e) => return PoolResult::Setup(e),
                },
            };
            let t = up.transaction(&mut c, reset, env, rcpts, message).await;
            if t.stale {
                tracing::debug!(upstream = %up.name, "pooled connection was closed while idle; dropping it");
                continue;
            }
            break (t, c);
        };
        conn.sent += 1;
        if t.reusable && conn.sent < self.0.max_per_connection {
            if let Ok(mut idle) = self.0.idle.lock() {
                idle.push(Idle {
                    conn,
                    since: Instant::now(),
                });
            }
            self.start_reaper();
        } else {
            up.quit(conn).await;
        }
        drop(permit);
        PoolResult::Sent(t)
    }

    /// Closes every idle session (at shutdown).
    pub async fn close_idle(&self) {
        let all: Vec<Idle> = match self.0.idle.lock() {
            Ok(mut v) => v.drain(..).collect(),
            Err(_) => Vec::new(),
        };
        for i in all {
            self.0.upstream.quit(i.conn).await;
        }
    }

    fn start_reaper(&self) {
        if self.0.reaper.set(()).is_err() {
            return;
        }
        let weak: Weak<Inner> = Arc::downgrade(&self.0);
        let tick = (self.0.idle_timeout / 4).max(Duration::from_millis(100));
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(tick).await;
                let Some(inner) = weak.upgrade() else { return };
                let expired: Vec<Idle> = match inner.idle.lock() {
                    Ok(mut v) => {
                        let (old, keep): (Vec<Idle>, Vec<Idle>) = v
                            .drain(..)
                            .partition(|i| i.since.elapsed() >= inner.idle_timeout);
                        *v = keep;
                        old
                    }
                    Err(_) => return,
                };
                for i in expired {
                    tracing::debug!(upstream = %inner.upstream.name, sent = i.conn.sent, "closing idle upstream connection");
                    inner.upstream.quit(i.conn).await;
                }
            }
        });
    }
}

impl PoolResult {
    /// The per-recipient view, for callers that do not care how it failed.
    pub fn attempt(&self, n: usize) -> Attempt {
        match self {
            PoolResult::Setup(e) => Attempt::all(n, RcptOutcome::Deferred(e.to_string())),
            PoolResult::Busy => Attempt::all(
                n,
                RcptOutcome::Deferred("all connections to the upstream are busy".into()),
            ),
            PoolResult::Sent(t) => t.attempt.clone(),
        }
    }
}
