//! Transform turns the accepted bytes into the bytes that will leave.
//!
//! The order is fixed: trace and missing headers first, then the project's branding, then
//! DKIM signing last (a later issue) — nothing may touch the message after it is signed.
//! The input is already validated (CRLF line ends, no line over 998 octets), and every step
//! keeps it so.

pub mod branding;
pub mod headers;

use self::branding::{Branding, BrandingError};

/// Everything the transform stage may need to know about one message.
#[derive(Debug, Clone)]
pub struct TransformContext<'a> {
    pub message_id: &'a str,
    pub hostname: &'a str,
    pub helo: &'a str,
    pub client_ip: std::net::IpAddr,
    pub tls: bool,
    pub received_ms: u64,
    /// The project's branding, when it is on.
    pub branding: Option<&'a Branding>,
}

/// Why a message cannot be transformed (the session turns this into a reply).
#[derive(Debug, thiserror::Error)]
pub enum TransformError {
    #[error(transparent)]
    Branding(#[from] BrandingError),
}

/// Runs every transformation in order and returns the bytes to spool.
pub fn apply(ctx: &TransformContext<'_>, message: Vec<u8>) -> Result<Vec<u8>, TransformError> {
    let message = headers::complete(ctx, message);
    let message = match ctx.branding {
        Some(b) => branding::apply(ctx, b, message)?,
        None => message,
    };
    // DKIM (issue 5) slots in here, last.
    Ok(message)
}
