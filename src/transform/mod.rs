//! Transform turns the accepted bytes into the bytes that will leave.
//!
//! The order is fixed: trace and missing headers first, then branding (a later issue), then
//! DKIM signing last (`dkim.rs`) — nothing may touch the message after it is signed.
//! The input is already validated (CRLF line ends, no line over 998 octets).

pub mod dkim;
pub mod dkim_keys;
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
    /// DKIM keys and the sending project; `None` leaves the message unsigned.
    pub dkim: Option<dkim::Signing<'a>>,
}

/// A transformation that could not be done; the message is refused with a 4xx, never lost.
#[derive(Debug, thiserror::Error)]
pub enum TransformError {
    #[error(transparent)]
    Dkim(#[from] dkim::DkimError),
}

/// Runs every transformation in order and returns the bytes to spool.
pub fn apply(ctx: &TransformContext<'_>, message: Vec<u8>) -> Result<Vec<u8>, TransformError> {
    // Branding (issue 4) slots in after this line.
    let message = headers::complete(ctx, message);
    // From rewriting right before DKIM: the signature must cover the final From.
    let message = match &ctx.from_rewrite {
        Some(mailbox) => from_rewrite::rewrite(message, mailbox),
        None => message,
    };
    // DKIM last: nothing may change the bytes after this.
    Ok(match &ctx.dkim {
        Some(signing) => dkim::sign(ctx, signing, message)?,
        None => message,
    })
}
