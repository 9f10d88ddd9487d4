//! Transform turns the accepted bytes into the bytes that will leave.
//!
//! The order is fixed: trace and missing headers first, then the project's branding
//! (`branding/`), then DKIM signing last (`dkim.rs`) — nothing may touch the message after it
//! is signed. The input is already validated (CRLF line ends, no line over 998 octets), and
//! every step keeps it so.

pub mod branding;
pub mod dkim;
pub mod dkim_keys;
pub mod from_rewrite;
pub mod headers;

use self::branding::{Branding, BrandingError};

/// Everything the transform stage may need to know about one message.
#[derive(Debug, Clone)]
pub struct TransformContext<'a> {
    pub message_id: &'a str,
    pub hostname: &'a str,
    pub helo: &'a str,
    /// The envelope sender (the Message-ID domain of last resort).
    pub mail_from: &'a str,
    pub client_ip: std::net::IpAddr,
    pub tls: bool,
    pub received_ms: u64,
    /// The project's branding, when it is on.
    pub branding: Option<&'a Branding>,
    /// Rewrite header From to this mailbox (decided by the first upstream of the project's
    /// route; see `from_rewrite`).
    pub from_rewrite: Option<String>,
    /// DKIM keys and the sending project; `None` leaves the message unsigned.
    pub dkim: Option<dkim::Signing<'a>>,
}

/// A transformation that could not be done; the message is refused (DKIM `tempfail`: 4xx,
/// never lost; branding over its limits: 554), never sent half-done.
#[derive(Debug, thiserror::Error)]
pub enum TransformError {
    #[error(transparent)]
    Branding(#[from] BrandingError),
    #[error(transparent)]
    Dkim(#[from] dkim::DkimError),
}

/// Runs every transformation in order and returns the bytes to spool.
pub fn apply(ctx: &TransformContext<'_>, message: Vec<u8>) -> Result<Vec<u8>, TransformError> {
    let message = headers::complete(ctx, message);
    let message = match ctx.branding {
        Some(b) => branding::apply(ctx, b, message)?,
        None => message,
    };
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
