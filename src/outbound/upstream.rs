//! SMTP toward an upstream provider, with mail-send's client primitives.
//!
//! Connection setup is driven step by step here (TCP, greeting, EHLO, STARTTLS or implicit
//! TLS, EHLO again, AUTH) rather than by `SmtpClientBuilder::connect`, for two reasons: every
//! step gets its own deadline (mail-send's defaults are one hour, and no greeting timeout on
//! plain connections), and every failure keeps its class — refused, unresolvable, TLS
//! certificate expired, AUTH refused — which failover and `send-test` need.
//!
//! Every recipient gets its own result, and the body is dot-stuffed here rather than by
//! mail-send, which misses a dot at the very start of the message. When the upstream
//! advertises PIPELINING (RFC 2920; every large provider does) the envelope goes as one group —
//! `[RSET] MAIL RCPT… DATA` in one write, the replies read together — so a message costs two
//! round trips instead of one per command; otherwise the commands go one by one. The replies
//! are judged by the same code either way. A [`Connection`] outlives one transaction: the pool
//! (`pool.rs`) resets and reuses it.
//!
//! MAIL and RCPT carry what the message needs and the upstream offers ([`EnvelopeParams`]):
//! `BODY=8BITMIME` for 8-bit bodies (RFC 6152), `SMTPUTF8` for non-ASCII addresses or
//! headers (RFC 6531), and the client's DSN parameters (RFC 3461). A message that needs
//! SMTPUTF8 is never downgraded: an upstream without it refuses it for good, in plain words.

use std::sync::Arc;
use std::time::{Duration, Instant};

use mail_send::{Credentials, SmtpClient};
use rustls::CertificateError;
use rustls_pki_types::ServerName;
use smtp_proto::{EhloResponse, Response};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

pub use super::client_tls::{UpstreamError, client_config, root_store, tls_connector};
use super::oauth2::TokenSource;
use super::{Attempt, RcptOutcome};
use crate::config::{UpstreamAuth, UpstreamConfig, UpstreamSecrets, UpstreamTls};
use crate::queue::Envelope;
use crate::secret::Secret;

/// Any byte stream an SMTP session runs over (plain TCP, or TLS over it).
pub trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

/// An open, greeted and authenticated SMTP session with an upstream.
pub struct Connection {
    client: SmtpClient<Box<dyn Io>>,
    /// The upstream advertised PIPELINING.
    pipelining: bool,
    /// Its EHLO capabilities (`smtp_proto::EXT_*`): 8BITMIME, SMTPUTF8, DSN decide MAIL/RCPT.
    capabilities: u32,
    /// Transactions completed over this connection.
    pub sent: usize,
    pub opened: Instant,
}

impl Connection {
    /// The upstream announced PIPELINING, so a pooled connection's RSET rides in the group.
    pub fn pipelines(&self) -> bool {
        self.pipelining
    }

    /// The upstream announced this extension (`smtp_proto::EXT_*`) in its EHLO.
    fn offers(&self, ext: u32) -> bool {
        self.capabilities & ext != 0
    }
}

/// What one message needs on MAIL and RCPT, and what it carries from the client.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EnvelopeParams {
    /// Declared `BODY=8BITMIME`, or the body has 8-bit bytes.
    pub eight_bit: bool,
    /// A non-ASCII envelope address or header: SMTPUTF8 or nothing.
    pub smtputf8: bool,
    /// Declared `SMTPUTF8` (repeated when offered even if all is ASCII).
    pub smtputf8_declared: bool,
}

impl EnvelopeParams {
    /// `mail_from`: the sender actually used (an upstream may rewrite it).
    pub fn of(env: &Envelope, mail_from: &str, rcpts: &[String], message: &[u8]) -> Self {
        let p = &env.mail_params;
        let headers = match memchr::memmem::find(message, b"\r\n\r\n") {
            Some(end) => &message[..end],
            None => message,
        };
        EnvelopeParams {
            eight_bit: p.body_8bitmime || !message.is_ascii(),
            smtputf8: !mail_from.is_ascii()
                || rcpts.iter().any(|r| !r.is_ascii())
                || !headers.is_ascii(),
            smtputf8_declared: p.smtputf8,
        }
    }

    /// `MAIL FROM:<…> [BODY=8BITMIME] [SMTPUTF8] [RET=…] [ENVID=…]\r\n`, each parameter only
    /// where the upstream offers its extension.
    fn mail_line(&self, mail_from: &str, env: &Envelope, conn: &Connection) -> String {
        let mut line = format!("MAIL FROM:<{mail_from}>");
        if self.eight_bit && conn.offers(smtp_proto::EXT_8BIT_MIME) {
            line.push_str(" BODY=8BITMIME");
        }
        if (self.smtputf8 || self.smtputf8_declared) && conn.offers(smtp_proto::EXT_SMTP_UTF8) {
            line.push_str(" SMTPUTF8");
        }
        if conn.offers(smtp_proto::EXT_DSN) {
            if let Some(ret) = &env.mail_params.ret {
                line.push_str(&format!(" RET={ret}"));
            }
            if let Some(envid) = &env.mail_params.envid {
                line.push_str(&format!(" ENVID={envid}"));
            }
        }
        line.push_str("\r\n");
        line
    }

    /// `RCPT TO:<…> [NOTIFY=…] [ORCPT=…]\r\n`: DSN parameters where the upstream offers DSN.
    fn rcpt_line(&self, env: &Envelope, rcpt: &str, conn: &Connection) -> String {
        let mut line = format!("RCPT TO:<{rcpt}>");
        // Recipients are unique in an envelope (kept once at RCPT), so the address finds them.
        let params = env
            .recipients
            .iter()
            .find(|r| r.address == rcpt)
            .map(|r| &r.params);
        if let Some(p) = params.filter(|_| conn.offers(smtp_proto::EXT_DSN)) {
            if let Some(notify) = &p.notify {
                line.push_str(&format!(" NOTIFY={notify}"));
            }
            if let Some(orcpt) = &p.orcpt {
                line.push_str(&format!(" ORCPT={orcpt}"));
            }
        }
        line.push_str("\r\n");
        line
    }
}

/// Why a connection could not be set up. Every variant is a temporary failure of this
/// upstream: the message may move to the next upstream of its route.
#[derive(Debug, Clone, thiserror::Error)]
pub enum SetupError {
    #[error("cannot resolve {host}: {message}")]
    Resolve { host: String, message: String },
    #[error("connection refused by {addr}")]
    Refused { addr: String },
    #[error("cannot connect to {addr}: {message}")]
    Connect { addr: String, message: String },
    #[error("timeout: no answer from {addr} within {secs} s ({stage})")]
    Timeout {
        addr: String,
        stage: &'static str,
        secs: u64,
    },
    #[error("{addr} closed the connection ({stage})")]
    Closed { addr: String, stage: &'static str },
    #[error("{addr} refused the session: {reply}")]
    Greeting { addr: String, reply: String },
    #[error("{addr} refused EHLO: {reply}")]
    Ehlo { addr: String, reply: String },
    #[error("{addr} does not offer STARTTLS")]
    NoStartTls { addr: String },
    #[error("{addr} refused STARTTLS: {reply}")]
    StartTlsRefused { addr: String, reply: String },
    /// Plain words: "TLS certificate for smtp.example.com expired on …".
    #[error("{0}")]
    Tls(String),
    #[error("authentication failed: {reply}")]
    Auth { reply: String },
    #[error("{addr} offers no AUTH mechanism we can use ({wanted})")]
    AuthUnsupported { addr: String, wanted: &'static str },
    #[error("OAuth2 token request failed: {0}")]
    Token(String),
    #[error("{addr}: {message}")]
    Protocol { addr: String, message: String },
}

/// What one transaction over an open connection produced.
#[derive(Debug, Clone)]
pub struct Transaction {
    pub attempt: Attempt,
    /// The connection can carry another message (after RSET).
    pub reusable: bool,
    /// A reused connection broke before answering the whole pipelined group that starts with
    /// its RSET: it died while idle. No body was sent, so nothing can have been delivered; the
    /// pool tries another connection.
    pub stale: bool,
    /// Nothing was accepted and the refusal concerned the connection, not a recipient
    /// (421, 454, a throttle reply before DATA ended): the next upstream may be tried.
    pub failover: bool,
    /// The upstream asked us to slow down.
    pub throttled: bool,
}

impl Transaction {
    fn all(
        n: usize,
        outcome: RcptOutcome,
        reusable: bool,
        failover: bool,
        throttled: bool,
    ) -> Self {
        Transaction {
            attempt: Attempt::all(n, outcome),
            reusable,
            stale: false,
            failover,
            throttled,
        }
    }
}

/// Where the replies of one transaction come from: asked one command at a time, or already
/// read as one pipelined group, in command order.
enum Replies {
    Live,
    Read(std::vec::IntoIter<Response<String>>),
}

enum AuthMethod {
    None,
    Password {
        user: String,
        secret: Secret,
    },
    XOAuth2 {
        user: String,
        tokens: Arc<TokenSource>,
    },
}

pub struct SmtpUpstream {
    pub name: String,
    host: String,
    port: u16,
    tls: UpstreamTls,
    helo: String,
    auth: AuthMethod,
    connector: TlsConnector,
    /// Envelope sender to use instead of the message's (with `rewrite_from`).
    envelope_from: Option<String>,
    pub connect_timeout: Duration,
    pub command_timeout: Duration,
    data_timeout: Duration,
}

impl std::fmt::Debug for SmtpUpstream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SmtpUpstream")
            .field("name", &self.name)
            .field("host", &self.host)
            .field("port", &self.port)
            .finish_non_exhaustive()
    }
}

/// `250 2.0.0 text` from a parsed reply.
pub fn reply_text(r: &Response<String>) -> String {
    let text = r.message.replace(['\r', '\n'], " ");
    if r.esc[0] != 0 {
        format!("{} {}.{}.{} {}", r.code, r.esc[0], r.esc[1], r.esc[2], text)
    } else {
        format!("{} {}", r.code, text)
    }
}

/// Office 365 answers `554 5.2.0 …SubmissionQuotaExceededException` when a mailbox is over
/// its daily quota: a 5xx in form, temporary in fact.
fn is_quota_5xx(r: &Response<String>) -> bool {
    r.code / 100 == 5 && r.esc == [5, 2, 0] && r.message.to_ascii_lowercase().contains("quota")
}

/// Replies by which a provider says "slow down" rather than "no".
pub fn is_throttle(r: &Response<String>) -> bool {
    let text = r.message.to_ascii_lowercase();
    let temp = r.code / 100 == 4;
    (r.code == 421 && r.esc == [4, 7, 0])
        || (r.code == 454 && (text.contains("throttl") || text.contains("rate")))
        || (r.code == 450 && r.esc == [4, 2, 1])
        || (r.code == 451 && r.esc[0] == 4 && r.esc[1] == 7)
        || (temp && r.esc == [4, 3, 2])
        || (temp && text.contains("throttl"))
        || is_quota_5xx(r)
}

/// A reply about the whole connection rather than one recipient.
fn is_connection_level(r: &Response<String>) -> bool {
    r.code == 421 || r.code == 454 || is_throttle(r)
}

fn classify(r: &Response<String>) -> RcptOutcome {
    let text = reply_text(r);
    match r.code {
        200..=299 => RcptOutcome::Delivered(text),
        _ if is_quota_5xx(r) => RcptOutcome::Deferred(text),
        500..=599 => RcptOutcome::Failed(text),
        _ => RcptOutcome::Deferred(text),
    }
}

fn describe(e: &mail_send::Error) -> String {
    match e {
        mail_send::Error::UnexpectedReply(r) | mail_send::Error::AuthenticationFailed(r) => {
            reply_text(r)
        }
        mail_send::Error::Io(e) => format!("connection error: {e}"),
        mail_send::Error::Tls(e) => format!("TLS error: {e}"),
        mail_send::Error::Timeout => "timeout".into(),
        mail_send::Error::UnparseableReply => "connection closed or unreadable reply".into(),
        other => other.to_string(),
    }
}

/// Seconds since the epoch as `YYYY-MM-DD HH:MM:SS UTC`.
fn utc(secs: u64) -> String {
    let dt = mail_parser::DateTime::from_timestamp(secs as i64);
    format!(
        "{:04}-{:02}-{:02} {:02}:{:02}:{:02} UTC",
        dt.year, dt.month, dt.day, dt.hour, dt.minute, dt.second
    )
}

/// A TLS failure in plain words, naming the host.
pub fn tls_words(host: &str, e: &rustls::Error) -> String {
    match e {
        rustls::Error::InvalidCertificate(c) => match c {
            CertificateError::ExpiredContext { not_after, .. } => format!(
                "TLS certificate for {host} expired on {}",
                utc(not_after.as_secs())
            ),
            CertificateError::Expired => format!("TLS certificate for {host} has expired"),
            CertificateError::NotValidYetContext { not_before, .. } => format!(
                "TLS certificate for {host} is not valid before {}",
                utc(not_before.as_secs())
            ),
            CertificateError::NotValidYet => format!("TLS certificate for {host} is not valid yet"),
            // BadSignature: an issuer of the same name signed it, but not the trusted one.
            CertificateError::UnknownIssuer | CertificateError::BadSignature => format!(
                "TLS certificate for {host} is not signed by a trusted authority (for a private CA set ca_file)"
            ),
            CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. } => {
                format!("TLS certificate presented by {host} is not valid for that name")
            }
            CertificateError::Revoked => format!("TLS certificate for {host} has been revoked"),
            other => format!("TLS certificate for {host} was refused: {other:?}"),
        },
        other => format!("TLS handshake with {host} failed: {other}"),
    }
}

/// Dot-stuffs a CRLF-only message and appends the terminator.
pub fn dot_stuff(message: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(message.len() + message.len() / 64 + 5);
    let mut at_line_start = true;
    stuff_into(&mut out, message, &mut at_line_start);
    finish_stuffed(&mut out, message);
    out
}

/// Copies `chunk` a line at a time (memchr), doubling a dot that starts a line.
fn stuff_into(out: &mut Vec<u8>, chunk: &[u8], at_line_start: &mut bool) {
    let mut rest = chunk;
    while let Some(&first) = rest.first() {
        if *at_line_start && first == b'.' {
            out.push(b'.');
        }
        let end = memchr::memchr(b'\n', rest).map_or(rest.len(), |i| i + 1);
        out.extend_from_slice(&rest[..end]);
        *at_line_start = rest[end - 1] == b'\n';
        rest = &rest[end..];
    }
}

fn finish_stuffed(out: &mut Vec<u8>, message: &[u8]) {
    if !message.is_empty() && !message.ends_with(b"\r\n") {
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b".\r\n");
}

/// Writes the message dot-stuffed, with its terminator, a chunk at a time: a large message is
/// not copied whole a second time.
pub async fn write_dot_stuffed<W: tokio::io::AsyncWrite + Unpin>(
    w: &mut W,
    message: &[u8],
) -> std::io::Result<()> {
    const CHUNK: usize = 64 * 1024;
    // Sized to the message when it is smaller: a 68 KiB buffer per delivery made glibc
    // consolidate its free lists on every free (BENCHMARKS.md, issue 21).
    let room = message.len().min(CHUNK);
    let mut buf = Vec::with_capacity(room + room / 16 + 8);
    let mut at_line_start = true;
    let mut chunks = message.chunks(CHUNK).peekable();
    while let Some(chunk) = chunks.next() {
        stuff_into(&mut buf, chunk, &mut at_line_start);
        if chunks.peek().is_none() {
            finish_stuffed(&mut buf, message);
        }
        w.write_all(&buf).await?;
        buf.clear();
    }
    if message.is_empty() {
        finish_stuffed(&mut buf, message);
        w.write_all(&buf).await?;
    }
    w.flush().await
}

impl SmtpUpstream {
    pub fn new(
        name: &str,
        cfg: &UpstreamConfig,
        secrets: UpstreamSecrets,
        default_helo: &str,
    ) -> Result<SmtpUpstream, UpstreamError> {
        let tls = cfg.tls.unwrap_or(UpstreamTls::Starttls);
        let user = cfg.username.clone().unwrap_or_default();
        let missing = |what: &str| UpstreamError::Credential {
            name: name.to_string(),
            message: format!("{what} is not configured"),
        };
        let auth = match cfg.auth.unwrap_or(UpstreamAuth::None) {
            UpstreamAuth::None => AuthMethod::None,
            UpstreamAuth::Plain | UpstreamAuth::Login => AuthMethod::Password {
                user,
                secret: secrets.password.ok_or_else(|| missing("the password"))?,
            },
            UpstreamAuth::Xoauth2 => {
                let o = cfg.oauth2.as_ref().ok_or_else(|| missing("oauth2"))?;
                AuthMethod::XOAuth2 {
                    user,
                    tokens: Arc::new(TokenSource::new(name, o, &secrets)?),
                }
            }
        };
        Ok(SmtpUpstream {
            name: name.to_string(),
            host: cfg.host.clone().unwrap_or_default(),
            port: cfg.port.unwrap_or(587),
            tls,
            helo: cfg
                .helo_name
                .clone()
                .unwrap_or_else(|| default_helo.to_string()),
            auth,
            connector: tls_connector(name, cfg.ca_file.as_deref())?,
            envelope_from: cfg.rewrite_address(),
            connect_timeout: Duration::from_secs(cfg.connect_timeout_secs),
            command_timeout: Duration::from_secs(cfg.command_timeout_secs),
            data_timeout: Duration::from_secs(cfg.data_timeout_secs),
        })
    }

    fn addr(&self) -> String {
        format!("{}:{}", self.host, self.port)
    }

    fn timeout(&self, stage: &'static str, d: Duration) -> SetupError {
        SetupError::Timeout {
            addr: self.addr(),
            stage,
            secs: d.as_secs(),
        }
    }

    /// Maps a mail-send error during setup to a [`SetupError`].
    fn setup_err(&self, stage: &'static str, e: mail_send::Error) -> SetupError {
        match e {
            mail_send::Error::Io(e) => SetupError::Connect {
                addr: self.addr(),
                message: e.to_string(),
            },
            mail_send::Error::Timeout => self.timeout(stage, self.command_timeout),
            mail_send::Error::UnparseableReply => SetupError::Closed {
                addr: self.addr(),
                stage,
            },
            other => SetupError::Protocol {
                addr: self.addr(),
                message: describe(&other),
            },
        }
    }

    async fn tcp(&self) -> Result<TcpStream, SetupError> {
        let target = (self.host.as_str(), self.port);
        let addrs: Vec<std::net::SocketAddr> =
            match tokio::time::timeout(self.connect_timeout, tokio::net::lookup_host(target)).await
            {
                Ok(Ok(a)) => a.collect(),
                Ok(Err(e)) => {
                    return Err(SetupError::Resolve {
                        host: self.host.clone(),
                        message: e.to_string(),
                    });
                }
                Err(_) => return Err(self.timeout("resolving the host name", self.connect_timeout)),
            };
        let mut last = None;
        for a in addrs {
            match tokio::time::timeout(self.connect_timeout, TcpStream::connect(a)).await {
                Ok(Ok(s)) => {
                    let _ = s.set_nodelay(true);
                    return Ok(s);
                }
                Ok(Err(e)) if e.kind() == std::io::ErrorKind::ConnectionRefused => {
                    last = Some(SetupError::Refused { addr: self.addr() });
                }
                Ok(Err(e)) => {
                    last = Some(SetupError::Connect {
                        addr: self.addr(),
                        message: e.to_string(),
                    })
                }
                Err(_) => last = Some(self.timeout("connecting", self.connect_timeout)),
            }
        }
        Err(last.unwrap_or_else(|| SetupError::Resolve {
            host: self.host.clone(),
            message: "no address".into(),
        }))
    }

    async fn handshake(&self, tcp: TcpStream) -> Result<Box<dyn Io>, SetupError> {
        let name = ServerName::try_from(self.host.clone()).map_err(|_| {
            SetupError::Tls(format!("{} is not a valid TLS server name", self.host))
        })?;
        match tokio::time::timeout(self.command_timeout, self.connector.connect(name, tcp)).await {
            Ok(Ok(s)) => Ok(Box::new(s)),
            Ok(Err(e)) => {
                let kind = e.kind();
                let text = e.to_string();
                match e.into_inner().map(|i| i.downcast::<rustls::Error>()) {
                    Some(Ok(tls)) => Err(SetupError::Tls(tls_words(&self.host, &tls))),
                    _ if kind == std::io::ErrorKind::UnexpectedEof => {
                        Err(SetupError::Tls(format!(
                            "{} closed the connection during the TLS handshake (is it really TLS on port {}?)",
                            self.addr(),
                            self.port
                        )))
                    }
                    _ => Err(SetupError::Tls(format!(
                        "TLS handshake with {} failed: {text}",
                        self.host
                    ))),
                }
            }
            Err(_) => Err(self.timeout("TLS handshake", self.command_timeout)),
        }
    }

    async fn greeting<T: AsyncRead + AsyncWrite + Unpin>(
        &self,
        client: &mut SmtpClient<T>,
    ) -> Result<(), SetupError> {
        match tokio::time::timeout(self.command_timeout, client.read()).await {
            Ok(Ok(r)) if r.code / 100 == 2 => Ok(()),
            Ok(Ok(r)) => Err(SetupError::Greeting {
                addr: self.addr(),
                reply: reply_text(&r),
            }),
            Ok(Err(e)) => Err(self.setup_err("waiting for the greeting", e)),
            Err(_) => Err(self.timeout("waiting for the greeting", self.command_timeout)),
        }
    }

    async fn ehlo<T: AsyncRead + AsyncWrite + Unpin>(
        &self,
        client: &mut SmtpClient<T>,
    ) -> Result<EhloResponse<String>, SetupError> {
        match tokio::time::timeout(self.command_timeout, client.ehlo(&self.helo)).await {
            Ok(Ok(r)) => Ok(r),
            Ok(Err(mail_send::Error::UnexpectedReply(r))) => Err(SetupError::Ehlo {
                addr: self.addr(),
                reply: reply_text(&r),
            }),
            Ok(Err(e)) => Err(self.setup_err("EHLO", e)),
            Err(_) => Err(self.timeout("EHLO", self.command_timeout)),
        }
    }

    /// Opens a new session: TCP, TLS, greeting, EHLO, AUTH — each with its deadline.
    pub async fn connect(&self) -> Result<Connection, SetupError> {
        // Fetch the token first: a token failure must not leave a half-open session behind.
        let token = match &self.auth {
            AuthMethod::XOAuth2 { tokens, .. } => Some(
                tokens
                    .token()
                    .await
                    .map_err(|e| SetupError::Token(e.to_string()))?,
            ),
            _ => None,
        };
        let tcp = self.tcp().await?;
        let new = |stream: Box<dyn Io>| SmtpClient {
            stream,
            timeout: self.command_timeout,
        };
        let mut client = match self.tls {
            UpstreamTls::Implicit => {
                let mut c = new(self.handshake(tcp).await?);
                self.greeting(&mut c).await?;
                c
            }
            UpstreamTls::None => {
                let mut c = new(Box::new(tcp));
                self.greeting(&mut c).await?;
                c
            }
            UpstreamTls::Starttls => {
                let mut plain = SmtpClient {
                    stream: tcp,
                    timeout: self.command_timeout,
                };
                self.greeting(&mut plain).await?;
                let caps = self.ehlo(&mut plain).await?;
                if !caps.has_capability(smtp_proto::EXT_START_TLS) {
                    return Err(SetupError::NoStartTls { addr: self.addr() });
                }
                let r = match tokio::time::timeout(self.command_timeout, plain.cmd(b"STARTTLS\r\n"))
                    .await
                {
                    Ok(Ok(r)) => r,
                    Ok(Err(e)) => return Err(self.setup_err("STARTTLS", e)),
                    Err(_) => return Err(self.timeout("STARTTLS", self.command_timeout)),
                };
                if r.code != 220 {
                    return Err(SetupError::StartTlsRefused {
                        addr: self.addr(),
                        reply: reply_text(&r),
                    });
                }
                new(self.handshake(plain.stream).await?)
            }
        };
        let caps = self.ehlo(&mut client).await?;
        match (&self.auth, token) {
            (AuthMethod::None, _) => {}
            (AuthMethod::Password { user, secret }, _) => {
                let creds = Credentials::new(user.clone(), secret.expose().to_string());
                match tokio::time::timeout(self.command_timeout, client.authenticate(&creds, &caps))
                    .await
                {
                    Ok(Ok(_)) => {}
                    Ok(Err(
                        mail_send::Error::AuthenticationFailed(r)
                        | mail_send::Error::UnexpectedReply(r),
                    )) => {
                        return Err(SetupError::Auth {
                            reply: reply_text(&r),
                        });
                    }
                    Ok(Err(mail_send::Error::UnsupportedAuthMechanism)) => {
                        return Err(SetupError::AuthUnsupported {
                            addr: self.addr(),
                            wanted: "PLAIN or LOGIN",
                        });
                    }
                    Ok(Err(e)) => return Err(self.setup_err("AUTH", e)),
                    Err(_) => return Err(self.timeout("AUTH", self.command_timeout)),
                }
            }
            (AuthMethod::XOAuth2 { user, .. }, Some(token)) => {
                self.auth_xoauth2(&mut client, &caps, user, &token).await?;
            }
            (AuthMethod::XOAuth2 { .. }, None) => {}
        }
        Ok(Connection {
            client,
            pipelining: caps.has_capability(smtp_proto::EXT_PIPELINING),
            capabilities: caps.capabilities,
            sent: 0,
            opened: Instant::now(),
        })
    }

    /// SASL XOAUTH2 (Google's and Microsoft's SMTP OAuth). On failure the server sends a 334
    /// with a JSON error; the client answers with an empty line and gets the final 5xx.
    async fn auth_xoauth2(
        &self,
        client: &mut SmtpClient<Box<dyn Io>>,
        caps: &EhloResponse<String>,
        user: &str,
        token: &Secret,
    ) -> Result<(), SetupError> {
        if caps.auth_mechanisms & smtp_proto::AUTH_XOAUTH2 == 0 {
            return Err(SetupError::AuthUnsupported {
                addr: self.addr(),
                wanted: "XOAUTH2",
            });
        }
        let creds = Credentials::new_xoauth2(user, token.expose());
        let initial = creds
            .encode(smtp_proto::AUTH_XOAUTH2, "")
            .map_err(|e| self.setup_err("AUTH", e))?;
        let r = self
            .auth_step(client, format!("AUTH XOAUTH2 {initial}\r\n"))
            .await?;
        match r.code {
            235 => Ok(()),
            334 => {
                let fin = self.auth_step(client, "\r\n".to_string()).await?;
                Err(SetupError::Auth {
                    reply: reply_text(&fin),
                })
            }
            _ => Err(SetupError::Auth {
                reply: reply_text(&r),
            }),
        }
    }

    async fn auth_step(
        &self,
        client: &mut SmtpClient<Box<dyn Io>>,
        line: String,
    ) -> Result<Response<String>, SetupError> {
        match tokio::time::timeout(self.command_timeout, client.cmd(line.as_bytes())).await {
            Ok(Ok(r)) => Ok(r),
            Ok(Err(e)) => Err(self.setup_err("AUTH", e)),
            Err(_) => Err(self.timeout("AUTH", self.command_timeout)),
        }
    }

    async fn command(
        &self,
        conn: &mut Connection,
        line: String,
    ) -> Result<Response<String>, String> {
        match tokio::time::timeout(self.command_timeout, conn.client.cmd(line.as_bytes())).await {
            Ok(Ok(r)) => Ok(r),
            Ok(Err(e)) => Err(describe(&e)),
            Err(_) => Err("timeout".into()),
        }
    }

    /// The next reply of a transaction: sends `line` and waits, or takes the pipelined one
    /// (the line was sent with the group, so it is not built again).
    async fn reply(
        &self,
        conn: &mut Connection,
        replies: &mut Replies,
        line: impl FnOnce() -> String,
    ) -> Result<Response<String>, String> {
        match replies {
            Replies::Live => self.command(conn, line()).await,
            Replies::Read(r) => r
                .next()
                .ok_or_else(|| "missing pipelined reply".to_string()),
        }
    }

    /// Sends a command group in one write and reads `count` replies (RFC 2920).
    async fn pipelined(
        &self,
        conn: &mut Connection,
        group: &str,
        count: usize,
    ) -> Result<Vec<Response<String>>, String> {
        let client = &mut conn.client;
        let io = async {
            client.stream.write_all(group.as_bytes()).await?;
            client.stream.flush().await?;
            client.read_many(count).await
        };
        match tokio::time::timeout(self.command_timeout, io).await {
            Ok(Ok(r)) if r.len() == count => Ok(r),
            Ok(Ok(_)) => Err("missing pipelined reply".into()),
            Ok(Err(e)) => Err(describe(&e)),
            Err(_) => Err("timeout".into()),
        }
    }

    /// RSET before reusing a pooled connection; `false` means it is dead.
    pub async fn reset(&self, conn: &mut Connection) -> bool {
        matches!(self.command(conn, "RSET\r\n".into()).await, Ok(r) if r.code == 250)
    }

    /// Polite close; errors do not matter any more.
    pub async fn quit(&self, mut conn: Connection) {
        let _ = tokio::time::timeout(Duration::from_secs(5), conn.client.cmd(b"QUIT\r\n")).await;
        let _ = conn.client.stream.shutdown().await;
    }

    /// One transaction of `message` to `rcpts` over an open connection. `reset`: start with
    /// RSET (a reused connection); only asked for when the connection pipelines — otherwise the
    /// pool sends its RSET first on its own.
    pub async fn transaction(
        &self,
        conn: &mut Connection,
        reset: bool,
        env: &Envelope,
        rcpts: &[String],
        message: &[u8],
    ) -> Transaction {
        let n = rcpts.len();
        let mail_from = self.envelope_from.as_deref().unwrap_or(&env.mail_from);
        let params = EnvelopeParams::of(env, mail_from, rcpts, message);
        if params.smtputf8 && !conn.offers(smtp_proto::EXT_SMTP_UTF8) {
            // Nothing was sent: the connection stays usable for other messages.
            let why = format!(
                "554 5.6.7 upstream {} does not offer SMTPUTF8, which this message needs \
                 (non-ASCII address or header); not downgraded",
                self.name
            );
            return Transaction::all(n, RcptOutcome::Failed(why), true, false, false);
        }
        let mail_line = params.mail_line(mail_from, env, conn);
        let rcpt_lines: Vec<String> = rcpts
            .iter()
            .map(|r| params.rcpt_line(env, r, conn))
            .collect();
        // A broken server may answer 354 to a pipelined DATA although nothing was accepted;
        // then an empty body ends it and the connection is not reused.
        let mut poisoned = false;
        let mut replies = Replies::Live;
        if conn.pipelining {
            use std::fmt::Write;
            let mut group = String::with_capacity(64 + rcpts.len() * 48);
            if reset {
                group.push_str("RSET\r\n");
            }
            let _ = write!(group, "{mail_line}");
            for line in &rcpt_lines {
                let _ = write!(group, "{line}");
            }
            group.push_str("DATA\r\n");
            let count = usize::from(reset) + n + 2;
            let mut got = match self.pipelined(conn, &group, count).await {
                Ok(r) => r,
                Err(e) => {
                    let mut t = Transaction::all(n, RcptOutcome::Deferred(e), false, true, false);
                    t.stale = reset;
                    return t;
                }
            };
            if reset {
                got.remove(0);
            }
            let accepted_any = got.first().is_some_and(|r| r.code == 250)
                && got[1..=n].iter().any(|r| matches!(r.code, 250 | 251));
            if !accepted_any && got.last().is_some_and(|r| r.code == 354) {
                let _ = self.command(conn, ".\r\n".into()).await;
                poisoned = true;
            }
            replies = Replies::Read(got.into_iter());
        }
        let mut t = self
            .judge(conn, &mut replies, &mail_line, &rcpt_lines, message)
            .await;
        t.reusable &= !poisoned;
        t
    }

    /// MAIL, RCPT and DATA replies → outcomes; sends the body when DATA was accepted.
    async fn judge(
        &self,
        conn: &mut Connection,
        replies: &mut Replies,
        mail_line: &str,
        rcpt_lines: &[String],
        message: &[u8],
    ) -> Transaction {
        let n = rcpt_lines.len();
        let pipelined = matches!(replies, Replies::Read(_));
        let r = match self.reply(conn, replies, || mail_line.to_string()).await {
            Ok(r) => r,
            Err(e) => return Transaction::all(n, RcptOutcome::Deferred(e), false, true, false),
        };
        if r.code != 250 {
            let level = is_connection_level(&r);
            return Transaction::all(n, classify(&r), r.code != 421, level, is_throttle(&r));
        }
        let mut outcomes = Vec::with_capacity(n);
        for rcpt_line in rcpt_lines {
            match self.reply(conn, replies, || rcpt_line.clone()).await {
                Ok(r) if r.code == 421 => {
                    // The server is closing: nothing was accepted, every recipient not
                    // refused for good may go elsewhere.
                    let text = reply_text(&r);
                    outcomes.resize(n, RcptOutcome::Deferred(text.clone()));
                    for o in outcomes.iter_mut() {
                        if matches!(o, RcptOutcome::Delivered(_)) {
                            *o = RcptOutcome::Deferred(text.clone());
                        }
                    }
                    return Transaction {
                        attempt: Attempt {
                            outcomes,
                            summary: text,
                        },
                        reusable: false,
                        stale: false,
                        failover: true,
                        throttled: is_throttle(&r),
                    };
                }
                Ok(r) => outcomes.push(match r.code {
                    250 | 251 => RcptOutcome::Delivered(reply_text(&r)),
                    _ => classify(&r),
                }),
                Err(e) => {
                    // The connection is gone: this and all remaining recipients wait, and so
                    // do the ones accepted so far (no DATA was sent).
                    for o in outcomes.iter_mut() {
                        if matches!(o, RcptOutcome::Delivered(_)) {
                            *o = RcptOutcome::Deferred(e.clone());
                        }
                    }
                    outcomes.resize(n, RcptOutcome::Deferred(e.clone()));
                    return Transaction {
                        attempt: Attempt {
                            outcomes,
                            summary: e,
                        },
                        reusable: false,
                        stale: false,
                        failover: true,
                        throttled: false,
                    };
                }
            }
        }
        let accepted: Vec<usize> = outcomes
            .iter()
            .enumerate()
            .filter(|(_, o)| matches!(o, RcptOutcome::Delivered(_)))
            .map(|(i, _)| i)
            .collect();
        if accepted.is_empty() {
            // Pipelined, DATA was refused already and the next group starts with RSET.
            let reusable = pipelined || self.reset(conn).await;
            let summary = outcomes
                .last()
                .map(|o| o.reply().to_string())
                .unwrap_or_default();
            return Transaction {
                attempt: Attempt { outcomes, summary },
                reusable,
                stale: false,
                failover: false,
                throttled: false,
            };
        }
        // Accepted recipients are only delivered once DATA is accepted.
        let reusable;
        let mut failover = false;
        let mut throttled = false;
        let data_result: RcptOutcome = match self.reply(conn, replies, || "DATA\r\n".into()).await {
            Ok(r) if r.code == 354 => {
                let io = write_dot_stuffed(&mut conn.client.stream, message);
                match tokio::time::timeout(self.data_timeout, io).await {
                    Ok(Ok(())) => {
                        match tokio::time::timeout(self.data_timeout, conn.client.read()).await {
                            Ok(Ok(r)) => {
                                // An explicit refusal after the body: nothing was accepted.
                                failover = r.code == 421 || r.code == 454;
                                throttled = is_throttle(&r);
                                reusable = r.code != 421;
                                classify(&r)
                            }
                            // Sent but unanswered: it may have been accepted, so it must not
                            // go to another upstream (no fan-out), only be retried here.
                            Ok(Err(e)) => {
                                reusable = false;
                                RcptOutcome::Deferred(describe(&e))
                            }
                            Err(_) => {
                                reusable = false;
                                RcptOutcome::Deferred("timeout waiting for DATA reply".into())
                            }
                        }
                    }
                    Ok(Err(e)) => {
                        reusable = false;
                        RcptOutcome::Deferred(format!("connection error: {e}"))
                    }
                    Err(_) => {
                        reusable = false;
                        RcptOutcome::Deferred("timeout sending DATA".into())
                    }
                }
            }
            Ok(r) => {
                failover = is_connection_level(&r);
                throttled = is_throttle(&r);
                reusable = r.code != 421 && (pipelined || self.reset(conn).await);
                classify(&r)
            }
            Err(e) => {
                reusable = false;
                failover = true;
                RcptOutcome::Deferred(e)
            }
        };
        for i in accepted {
            outcomes[i] = data_result.clone();
        }
        Transaction {
            attempt: Attempt {
                summary: data_result.reply().to_string(),
                outcomes,
            },
            reusable,
            stale: false,
            failover,
            throttled,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stuffing() {
        assert_eq!(dot_stuff(b".a\r\nb\r\n..\r\n"), b"..a\r\nb\r\n...\r\n.\r\n");
        assert_eq!(dot_stuff(b""), b".\r\n");
    }

    proptest::proptest! {
        /// The line-at-a-time copy equals the byte-at-a-time definition, for any bytes and
        /// any split of them into chunks.
        #[test]
        fn stuffing_is_the_bytewise_definition(
            m in proptest::collection::vec(proptest::sample::select(b".\r\nab".to_vec()), 0..200),
            cut in 0usize..200,
        ) {
            let mut want = Vec::new();
            let mut start = true;
            for &b in &m {
                if start && b == b'.' {
                    want.push(b'.');
                }
                want.push(b);
                start = b == b'\n';
            }
            let (a, b) = m.split_at(cut.min(m.len()));
            let mut got = Vec::new();
            let mut at = true;
            stuff_into(&mut got, a, &mut at);
            stuff_into(&mut got, b, &mut at);
            proptest::prop_assert_eq!(got, want);
            proptest::prop_assert_eq!(at, start);
        }
    }

    #[tokio::test]
    async fn chunked_stuffing_matches_whole_stuffing() {
        // Lines that start with a dot right at a 64 KiB chunk boundary must be stuffed too.
        let mut msg = Vec::new();
        let mut i = 0;
        while msg.len() < 300 * 1024 {
            let line = if i % 3 == 0 {
                ".dot line\r\n".to_string()
            } else {
                format!("l{i}\r\n")
            };
            msg.extend_from_slice(line.as_bytes());
            i += 1;
        }
        for cut in [0usize, 1, 5, 64 * 1024 - 1, 64 * 1024, 200_000] {
            let m = &msg[..cut.min(msg.len())];
            let mut wire = Vec::new();
            write_dot_stuffed(&mut wire, m).await.unwrap();
            assert_eq!(wire, dot_stuff(m), "cut {cut}");
        }
        let mut wire = Vec::new();
        write_dot_stuffed(&mut wire, &msg).await.unwrap();
        assert_eq!(wire, dot_stuff(&msg));
    }

    fn resp(code: u16, esc: [u8; 3], msg: &str) -> Response<String> {
        Response {
            code,
            esc,
            message: msg.to_string(),
        }
    }

    #[test]
    fn throttle_replies() {
        for r in [
            resp(
                454,
                [4, 7, 0],
                "Throttling failure: Maximum sending rate exceeded.",
            ),
            resp(421, [4, 7, 0], "Try again later, closing connection."),
            resp(450, [4, 2, 1], "Too many messages, slow down"),
            resp(451, [4, 7, 1], "Rate limited"),
            resp(432, [4, 3, 2], "Concurrent connections limit exceeded."),
            resp(
                554,
                [5, 2, 0],
                "STOREDRV.Submission.Exception:SubmissionQuotaExceededException",
            ),
        ] {
            assert!(is_throttle(&r), "{r:?}");
        }
        for r in [
            resp(550, [5, 1, 1], "No such user"),
            resp(451, [4, 3, 0], "Local error"),
            resp(554, [5, 2, 0], "Message rejected"),
        ] {
            assert!(!is_throttle(&r), "{r:?}");
        }
        assert!(matches!(
            classify(&resp(554, [5, 2, 0], "SubmissionQuotaExceededException")),
            RcptOutcome::Deferred(_)
        ));
    }
}
