//! Simulated recipients: `delivered@…`, `bounced@…` and `deferred@…` at any name under
//! `smtp-relay.test` (a reserved `.test` name, RFC 6761, so never a real mailbox). Apps test
//! their handling of each outcome against them in any project mode: delivery records the
//! outcome (message log, delivery events, webhooks) as if an upstream had answered, without
//! contacting one, and a sandbox project sends such messages through the queue rather than
//! capturing them.

/// The simulated domain; recipients at it or any name under it are simulated.
pub const DOMAIN: &str = "smtp-relay.test";

/// The outcome a simulated recipient stands for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Simulated {
    Delivered,
    Bounced,
    Deferred,
}

impl Simulated {
    /// The reply delivery records, as an upstream would have sent it.
    pub fn reply(self) -> &'static str {
        match self {
            Simulated::Delivered => "250 2.0.0 Ok: simulated delivery (smtp-relay.test)",
            Simulated::Bounced => {
                "550 5.1.1 Simulated bounce: mailbox does not exist (smtp-relay.test)"
            }
            Simulated::Deferred => {
                "451 4.3.0 Simulated deferral, try again later (smtp-relay.test)"
            }
        }
    }
}

/// Which outcome `address` simulates, if it is a simulated recipient.
pub fn outcome(address: &str) -> Option<Simulated> {
    let (local, domain) = address.rsplit_once('@')?;
    let domain = domain.trim_end_matches('.').to_ascii_lowercase();
    if !(domain == DOMAIN || domain.ends_with(&format!(".{DOMAIN}"))) {
        return None;
    }
    match local.to_ascii_lowercase().as_str() {
        "delivered" => Some(Simulated::Delivered),
        "bounced" => Some(Simulated::Bounced),
        "deferred" => Some(Simulated::Deferred),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn simulated_addresses() {
        assert_eq!(
            outcome("delivered@app.smtp-relay.test"),
            Some(Simulated::Delivered)
        );
        assert_eq!(
            outcome("Bounced@x.y.SMTP-RELAY.test"),
            Some(Simulated::Bounced)
        );
        assert_eq!(
            outcome("deferred@smtp-relay.test"),
            Some(Simulated::Deferred)
        );
        assert_eq!(outcome("someone@app.smtp-relay.test"), None);
        assert_eq!(outcome("delivered@evilsmtp-relay.test"), None);
        assert_eq!(outcome("delivered@example.com"), None);
    }
}
