//! SMTP replies, and the one place where errors become reply codes (DESIGN.md's table).
//!
//! Lines are formatted here rather than with smtp-proto's writer, which always inserts an
//! enhanced status code (wrong for 220/334/354).

use std::borrow::Cow;

use super::envelope::ParamError;
use crate::policy::sender::{RecipientError, SenderError};
use crate::queue::QueueError;
use crate::transform::TransformError;
use crate::transform::branding::SettingsError;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    pub code: u16,
    /// Text after the code, including the enhanced status code where one applies.
    pub text: Cow<'static, str>,
}

impl Reply {
    pub const fn new(code: u16, text: &'static str) -> Reply {
        Reply {
            code,
            text: Cow::Borrowed(text),
        }
    }

    pub fn owned(code: u16, text: String) -> Reply {
        Reply {
            code,
            text: Cow::Owned(text),
        }
    }

    pub fn to_line(&self) -> String {
        format!("{} {}\r\n", self.code, self.text)
    }

    pub fn is_positive(&self) -> bool {
        self.code < 400
    }
}

pub const OK: Reply = Reply::new(250, "2.0.0 Ok");
pub const SENDER_OK: Reply = Reply::new(250, "2.1.0 Ok");
pub const RCPT_OK: Reply = Reply::new(250, "2.1.5 Ok");
pub const RESET_OK: Reply = Reply::new(250, "2.0.0 Reset");
pub const BYE: Reply = Reply::new(221, "2.0.0 Bye");
pub const READY_TLS: Reply = Reply::new(220, "2.0.0 Ready to start TLS");
pub const START_DATA: Reply = Reply::new(354, "End data with <CR><LF>.<CR><LF>");
pub const AUTH_OK: Reply = Reply::new(235, "2.7.0 Authentication successful");
pub const NEEDS_TLS: Reply = Reply::new(530, "5.7.0 Must issue a STARTTLS command first");
pub const AUTH_REQUIRED: Reply = Reply::new(530, "5.7.0 Authentication required");
pub const BAD_CREDENTIALS: Reply = Reply::new(535, "5.7.8 Authentication credentials invalid");
pub const AUTH_TEMP: Reply = Reply::new(454, "4.7.0 Temporary authentication failure");
pub const AUTH_CANCELLED: Reply = Reply::new(501, "5.0.0 Authentication cancelled");
pub const AUTH_MECH: Reply = Reply::new(504, "5.5.4 Unrecognized authentication type");
pub const AUTH_AGAIN: Reply = Reply::new(503, "5.5.1 Already authenticated");
pub const AUTH_SYNTAX: Reply = Reply::new(501, "5.5.2 Invalid AUTH response");
/// RFC 4954 §4: a response that is not base64 rejects the AUTH command with 501.
pub const AUTH_BASE64: Reply = Reply::new(501, "5.5.2 Cannot decode AUTH response (not base64)");
pub const TOO_LARGE: Reply = Reply::new(552, "5.3.4 Message size exceeds fixed limit");
pub const TOO_MANY_RCPTS: Reply = Reply::new(452, "4.5.3 Too many recipients");
pub const TOO_MANY_CONNECTIONS: Reply = Reply::new(421, "4.7.0 Too many connections, try later");
pub const TOO_MANY_ERRORS: Reply = Reply::new(421, "4.7.0 Too many errors, closing connection");
/// Over `[server] junk_command_limit` NOOP/RSET/VRFY/HELP/unknown commands.
pub const TOO_MANY_JUNK: Reply = Reply::new(
    421,
    "4.7.0 Too many commands without mail, closing connection",
);
/// An HTTP request line or header on the SMTP port: answered once, then closed (as Postfix).
pub const NOT_SMTP: Reply = Reply::new(221, "2.7.0 Error: not an SMTP command (HTTP?), closing");
pub const TIMEOUT: Reply = Reply::new(421, "4.4.2 Timeout, closing connection");
pub const SHUTTING_DOWN: Reply = Reply::new(421, "4.3.2 Service shutting down, closing connection");
pub const NO_STORAGE: Reply = Reply::new(452, "4.3.1 Insufficient system storage");
/// A large message waited too long for its turn in memory (`memory_budget.rs`).
pub const MEMORY_BUSY: Reply = Reply::new(
    451,
    "4.3.1 Too many large messages in progress, try again later",
);
pub const LOCAL_ERROR: Reply = Reply::new(451, "4.3.0 Local error in processing");
pub const IDEMPOTENCY_KEY_INVALID: Reply = Reply::new(
    554,
    "5.6.0 Idempotency-Key header must be 1 to 256 characters",
);
pub const IDEMPOTENCY_IN_FLIGHT: Reply = Reply::new(
    451,
    "4.5.0 A message with this Idempotency-Key is still being accepted, try again later",
);
pub const IDEMPOTENCY_MISMATCH: Reply = Reply::new(
    554,
    "5.6.0 This Idempotency-Key was used for a different request",
);
pub const BARE_LF: Reply = Reply::new(550, "5.5.2 Error: bare <LF> received");
pub const BARE_CR: Reply = Reply::new(550, "5.5.2 Error: bare <CR> received");
pub const NUL_BYTE: Reply = Reply::new(550, "5.5.2 Error: NUL character received");
/// `\n.\n`, `\r\n.\n`, `\n.\r\n`: not an end of data, refused as a smuggling attempt.
pub const LONE_DOT: Reply = Reply::new(
    550,
    "5.5.2 Error: bare <LF> around a \".\" line; only <CR><LF>.<CR><LF> ends data",
);
pub const LINE_TOO_LONG: Reply = Reply::new(500, "5.5.2 Line too long");
pub const BAD_SEQUENCE_MAIL: Reply = Reply::new(503, "5.5.1 Error: need MAIL command");
pub const BAD_SEQUENCE_RCPT: Reply = Reply::new(503, "5.5.1 Error: need RCPT command");
pub const BAD_SEQUENCE_NESTED: Reply = Reply::new(503, "5.5.1 Error: nested MAIL command");
pub const BAD_SEQUENCE_HELO: Reply = Reply::new(503, "5.5.1 Error: send HELO/EHLO first");
pub const TLS_ALREADY: Reply = Reply::new(503, "5.5.1 Error: TLS already active");
pub const TLS_UNAVAILABLE: Reply = Reply::new(502, "5.5.1 Error: STARTTLS not available here");
pub const UNKNOWN_COMMAND: Reply = Reply::new(500, "5.5.1 Error: command not recognized");
pub const NOT_IMPLEMENTED: Reply = Reply::new(502, "5.5.1 Error: command not implemented");
pub const VRFY_REFUSED: Reply = Reply::new(502, "5.5.1 VRFY command is disabled");
pub const EXPN_REFUSED: Reply = Reply::new(502, "5.5.1 EXPN command is disabled");
pub const NULL_SENDER: Reply = Reply::new(
    553,
    "5.7.1 <>: Sender address rejected: not owned by project",
);
pub const BAD_RCPT: Reply = Reply::new(501, "5.1.3 Bad recipient address syntax");
pub const BAD_SENDER: Reply = Reply::new(501, "5.1.7 Bad sender address syntax");
/// A non-ASCII address in a transaction that did not say SMTPUTF8 (RFC 6531 §3.5).
pub const SMTPUTF8_UNDECLARED: Reply =
    Reply::new(553, "5.6.7 Must declare SMTPUTF8 to send unicode address");
pub const EMPTY_MESSAGE: Reply = Reply::new(554, "5.6.0 Message has no header section");
/// More `Received` fields than `server.max_received_headers`: a mail loop.
pub const TOO_MANY_HOPS: Reply = Reply::new(554, "5.4.6 Too many hops");
pub const TOO_COMPLEX: Reply = Reply::new(
    554,
    "5.6.0 Message structure too complex (MIME nesting or part count limit)",
);

/// Sent after [`credentials_withdrawn`]: the session ends.
pub const CREDENTIALS_WITHDRAWN_CLOSE: Reply =
    Reply::new(421, "4.7.0 Credentials no longer valid, closing connection");

/// A logged-in session whose token was revoked, or whose project was disabled or deleted.
pub fn credentials_withdrawn(why: &str) -> Reply {
    Reply::owned(
        535,
        format!("5.7.8 Authentication credentials invalid: {why}"),
    )
}

pub const IP_TOO_MANY_CONNECTIONS: Reply = Reply::new(
    421,
    "4.7.0 Too many connections from your address, try later",
);
/// Sent after a failed AUTH while the IP is over its spraying threshold.
pub const IP_COOLING_DOWN: Reply = Reply::new(
    421,
    "4.7.0 Too many failed logins from your address, try later",
);
/// This username from this address failed too often: refused for the cool-down.
pub const LOGIN_COOLING_DOWN: Reply = Reply::new(
    421,
    "4.7.0 Too many failed logins for this user from your address, try later",
);

/// A project over one of its rate windows; `secs` is when the same message would fit.
pub fn rate_limited(project: &str, secs: u64) -> Reply {
    Reply::owned(
        451,
        format!("4.7.1 Rate limit exceeded for project {project}, retry in {secs} s"),
    )
}

pub fn project_connections(project: &str) -> Reply {
    Reply::owned(
        421,
        format!("4.7.0 Too many connections for project {project}, try later"),
    )
}

pub fn syntax(hint: &str) -> Reply {
    Reply::owned(501, format!("5.5.4 Syntax: {hint}"))
}

pub fn queued(id: &str) -> Reply {
    Reply::owned(250, format!("2.0.0 Ok: queued as {id}"))
}

pub fn greeting(hostname: &str) -> Reply {
    Reply::owned(220, format!("{hostname} ESMTP smtp-relay"))
}

/// The sender's domain failed the server's last DNS check (`dns.require_verified_domain`).
pub fn domain_failing(domain: &str) -> Reply {
    Reply::owned(
        550,
        format!(
            "5.7.26 Sending domain {domain} fails its SPF/DKIM/DMARC check; see `smtp-relay domain verify {domain}`"
        ),
    )
}

impl From<&SenderError> for Reply {
    fn from(e: &SenderError) -> Reply {
        match e {
            SenderError::EnvelopeNotOwned(addr) => Reply::owned(
                553,
                format!(
                    "5.7.1 <{}>: Sender address rejected: not owned by project",
                    printable(addr)
                ),
            ),
            other => Reply::owned(550, format!("5.7.1 {}", printable(&other.to_string()))),
        }
    }
}

impl From<&RecipientError> for Reply {
    fn from(e: &RecipientError) -> Reply {
        let text = printable(&e.to_string());
        match e {
            RecipientError::Syntax => BAD_RCPT,
            RecipientError::Routed(_) => Reply::owned(501, format!("5.1.3 {text}")),
            RecipientError::DomainRefused(..) => Reply::owned(550, format!("5.1.2 {text}")),
        }
    }
}

impl From<&ParamError> for Reply {
    fn from(e: &ParamError) -> Reply {
        let code = match e {
            ParamError::Unsupported(_) => 555,
            ParamError::Invalid(_) | ParamError::Duplicate(_) => 501,
        };
        Reply::owned(code, format!("5.5.4 {}", printable(&e.to_string())))
    }
}

impl From<&QueueError> for Reply {
    fn from(e: &QueueError) -> Reply {
        if e.is_disk_full() {
            NO_STORAGE
        } else {
            LOCAL_ERROR
        }
    }
}

impl From<&TransformError> for Reply {
    fn from(e: &TransformError) -> Reply {
        match e {
            TransformError::Branding(_) => TOO_COMPLEX,
            // Only the `tempfail` policy turns a signing failure into an error (dkim.rs).
            TransformError::Dkim(e) => Reply::owned(
                451,
                format!(
                    "4.3.0 Cannot DKIM-sign for {}, try again later",
                    printable(e.domain())
                ),
            ),
        }
    }
}

impl From<&super::submit::Refusal> for Reply {
    fn from(r: &super::submit::Refusal) -> Reply {
        use super::submit::Refusal;
        match r {
            Refusal::TooManyHops(_) => TOO_MANY_HOPS,
            Refusal::Sender(e) => Reply::from(e),
            Refusal::Branding(e) => Reply::from(e),
            Refusal::Transform(e) => Reply::from(e),
            Refusal::Withdrawn(why) => credentials_withdrawn(why),
            Refusal::Registry(_) => LOCAL_ERROR,
            Refusal::Rate(e) => Reply::from(e),
            Refusal::Storage(e) => Reply::from(e),
            Refusal::Idempotency(k) => Reply::from(*k),
        }
    }
}

/// A message stopped by its idempotency key header.
impl From<super::submit::KeyRefusal> for Reply {
    fn from(k: super::submit::KeyRefusal) -> Reply {
        use super::submit::KeyRefusal;
        match k {
            KeyRefusal::Invalid => IDEMPOTENCY_KEY_INVALID,
            KeyRefusal::InFlight => IDEMPOTENCY_IN_FLIGHT,
            // SMTP keys match any content; only a key first used over HTTP gets here.
            KeyRefusal::Mismatch => IDEMPOTENCY_MISMATCH,
            KeyRefusal::Unavailable => LOCAL_ERROR,
        }
    }
}

/// Branding settings that cannot be read: the message is kept by the client and retried.
impl From<&SettingsError> for Reply {
    fn from(_: &SettingsError) -> Reply {
        LOCAL_ERROR
    }
}

/// Makes client-controlled text safe to echo in a reply or a log line.
/// The first line of the EHLO reply: `250-<hostname> Hello <client name> [<client ip>]`.
pub fn ehlo_greeting(hostname: &str, client: &str, ip: std::net::IpAddr) -> String {
    let name: String = client
        .chars()
        .take(64)
        .map(|c| if c.is_ascii_graphic() { c } else { '?' })
        .collect();
    format!("250-{hostname} Hello {name} [{ip}]\r\n")
}

pub fn printable(s: &str) -> String {
    s.chars()
        .take(256)
        .map(|c| if c.is_control() { '?' } else { c })
        .collect()
}
