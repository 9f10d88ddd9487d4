//! Transform turns the accepted bytes into the bytes that will leave.
//!
//! The order is fixed: trace and missing headers first, then branding (a later issue), then
//! DKIM signing last (a later issue) — nothing may touch the message after it is signed.
//! The input is already validated (CRLF line ends, no line over 998 octets).

pub mod from_rewrite;
pub mod headers;

/// Everything the transform stage may need to know about one message.
#[derive(Debug, Clone)]
pub struct TransformContext<'a> {
    pub message_id: &'a str,
    pub hostname: &'a str,
    pub helo: &'a str,
    pub client_ip: std::net::IpAddr,
    pub tls: bool,
    pub received_ms: u64,
    /// Rewrite header From to this mailbox (decided by the first upstream of the project's
    /// route; see `from_rewrite`).
    pub from_rewrite: Option<String>,
}

/// Runs every transformation in order and returns the bytes to spool.
pub fn apply(ctx: &TransformContext<'_>, message: Vec<u8>) -> Vec<u8> {
    // Branding (issue 4) and DKIM (issue 5) slot in after this line, in that order.
    let message = headers::complete(ctx, message);
    // From rewriting stays right before DKIM: the signature must cover the final From.
    match &ctx.from_rewrite {
        Some(mailbox) => from_rewrite::rewrite(message, mailbox),
        None => message,
    }
}
