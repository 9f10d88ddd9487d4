//! Outbound takes due messages from the queue and forwards them to an upstream, recording
//! per-recipient outcomes. `upstream` speaks SMTP to providers (mail-send), `pool` reuses its
//! connections, `oauth2` gets XOAUTH2 tokens, `client_tls` builds the TLS both use (provider
//! presets are config facts: `config/providers.rs`), `routing` runs a project's route (failover, throttle backoff, sending rate), `outbox` is
//! the no-server development upstream, `delivery` runs the workers and the retry discipline, `bounce` builds the RFC 3464
//! bounce a project may ask for,
//! `send_test` sends one test message synchronously.

pub mod bounce;
pub mod client_tls;
pub mod delivery;
pub mod oauth2;
pub mod outbox;
pub mod pool;
pub mod routing;
pub mod send_test;
pub mod simulated;
pub mod upstream;

/// The result of one attempt for one recipient.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RcptOutcome {
    Delivered(String),
    /// Try again later (4xx, connection trouble, timeout).
    Deferred(String),
    /// Final refusal (5xx).
    Failed(String),
}

impl RcptOutcome {
    pub fn reply(&self) -> &str {
        match self {
            RcptOutcome::Delivered(r) | RcptOutcome::Deferred(r) | RcptOutcome::Failed(r) => r,
        }
    }
}

/// What an upstream reports for one attempt: an outcome per attempted recipient (same order)
/// and the reply that best summarises the attempt.
#[derive(Debug, Clone)]
pub struct Attempt {
    pub outcomes: Vec<RcptOutcome>,
    pub summary: String,
}

impl Attempt {
    /// The same outcome for every recipient (connection-level results).
    pub fn all(n: usize, outcome: RcptOutcome) -> Attempt {
        Attempt {
            summary: outcome.reply().to_string(),
            outcomes: vec![outcome; n],
        }
    }
}
