//! One SMTP session: the state machine from greeting to QUIT.
//!
//! The per-phase handlers live beside it (`auth.rs`, `envelope.rs`, `data.rs`), each an
//! `impl Session` block, as in Stalwart's inbound crate. A session owns its state; STARTTLS
//! throws all of it away, including any bytes the client pipelined after the command.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use smtp_proto::{EhloResponse, Request};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;

use super::Shared;
use super::connection::{BareNewline, Connection, FrameError, MAX_COMMAND_LINE};
use super::reply::{self, Reply};
use crate::config::{ListenerConfig, ListenerMode};
use crate::policy::limits::ProjectSession;
use crate::policy::projects::Authenticated;

/// After this many protocol errors the session is closed with 421.
const MAX_ERRORS: u32 = 10;
/// Policy refusals (452 too many recipients, 451 rate limit, 553 sender…) a session may collect
/// between accepted messages before each further one counts as an error too (as Postfix's
/// `smtpd_recipient_overshoot_limit`), so a client looping on refused commands is cut off.
const MAX_POLICY_REFUSALS: u32 = 1000;

pub struct Session {
    pub(super) shared: Arc<Shared>,
    pub(super) peer: SocketAddr,
    pub(super) mode: ListenerMode,
    pub(super) allow_plaintext_auth: bool,
    pub(super) tls: bool,
    pub(super) helo: Option<String>,
    pub(super) auth: Option<Authenticated>,
    /// The registry generation `auth` was last checked against (`auth.rs`, `revalidate`).
    pub(super) registry_generation: u64,
    /// The project's limits and its session place, from AUTH on (see `quota.rs`).
    pub(super) quota: Option<ProjectSession>,
    pub(super) auth_failures: u32,
    pub(super) mail_from: Option<String>,
    pub(super) rcpts: Vec<String>,
    /// MAIL/RCPT parameters of the open transaction (`envelope.rs`).
    pub(super) tx: super::envelope::TxParams,
    pub(super) errors: u32,
    /// Policy refusals since the last accepted message (see [`MAX_POLICY_REFUSALS`]).
    pub(super) refusals: u32,
    /// NOOP/RSET/VRFY/EXPN/HELP/unknown commands since the last accepted message.
    pub(super) junk_commands: u32,
    pub(super) accepted: u32,
    pub(super) started: Instant,
    /// Ids of the messages accepted in this session, for the outcome log line.
    pub(super) message_ids: Vec<String>,
    /// Code of the last reply sent.
    pub(super) last_code: u16,
}

/// How a run of the command loop ended.
pub(super) enum Flow {
    Continue,
    Close,
    StartTls,
}

impl Session {
    pub fn new(shared: Arc<Shared>, peer: SocketAddr, listener: &ListenerConfig) -> Session {
        Session {
            shared,
            peer,
            mode: listener.mode,
            allow_plaintext_auth: listener.allow_plaintext_auth,
            tls: listener.mode == ListenerMode::Implicit,
            helo: None,
            auth: None,
            registry_generation: 0,
            quota: None,
            auth_failures: 0,
            mail_from: None,
            rcpts: Vec::new(),
            tx: Default::default(),
            errors: 0,
            refusals: 0,
            junk_commands: 0,
            accepted: 0,
            started: Instant::now(),
            message_ids: Vec::new(),
            last_code: 0,
        }
    }

    /// Runs a whole connection, including the TLS handshake(s), in the connection's own task.
    ///
    /// This future is what every session — idle ones included — keeps allocated for its
    /// whole life, and the compiler gives it room for every local it keeps across an await,
    /// side by side more often than not. So the handshake and TLS phase, the command loops and
    /// the closing are futures of their own, boxed while they run, and nothing here holds a
    /// second copy of the TLS stream (an `if let` on the handshake's result kept one alive).
    pub async fn run(mut self, tcp: TcpStream) {
        let _active = crate::metrics::connection_opened();
        let _ = tcp.set_nodelay(true);
        match self.mode {
            ListenerMode::Implicit => Box::pin(self.serve_tls(tcp, false)).await,
            ListenerMode::Starttls | ListenerMode::Plain => {
                let mut conn = Connection::new(tcp).with_bare_newline(self.bare_newline());
                let flow = Box::pin(self.serve(&mut conn, true)).await;
                self.last_code = conn.last_code();
                if let Flow::StartTls = flow {
                    // Anything buffered beyond STARTTLS is dropped with the plaintext framing.
                    let tcp = conn.into_inner();
                    Box::pin(self.serve_tls(tcp, true)).await;
                } else {
                    Box::pin(conn.shutdown()).await;
                }
            }
        }
        tracing::info!(
            client = %self.peer,
            project = self.auth.as_ref().map(|a| a.project.id.as_str()).unwrap_or("-"),
            tls = self.tls,
            accepted = self.accepted,
            message_ids = %self.message_ids.join(","),
            last_reply = self.last_code,
            errors = self.errors,
            duration_ms = self.started.elapsed().as_millis() as u64,
            "session closed"
        );
    }

    /// The TLS part of a session: handshake, command loop, close. After STARTTLS the session
    /// starts over (RFC 3207: no greeting, EHLO again, nothing from before TLS kept).
    async fn serve_tls(&mut self, tcp: TcpStream, after_starttls: bool) {
        let Some(tls) = Box::pin(self.handshake(tcp)).await else {
            return;
        };
        if after_starttls {
            self.tls = true;
            self.helo = None;
            self.auth = None;
            self.quota = None;
            self.reset_transaction();
        }
        let mut conn = Connection::new(tls).with_bare_newline(self.bare_newline());
        Box::pin(self.serve(&mut conn, !after_starttls)).await;
        self.last_code = conn.last_code();
        conn.shutdown().await;
    }

    async fn handshake(
        &self,
        tcp: TcpStream,
    ) -> Option<tokio_rustls::server::TlsStream<TcpStream>> {
        let acceptor = tokio_rustls::TlsAcceptor::from(self.shared.tls.clone());
        match tokio::time::timeout(self.shared.config.handshake_timeout(), acceptor.accept(tcp))
            .await
        {
            Ok(Ok(stream)) => {
                crate::metrics::tls_handshake(true);
                Some(stream)
            }
            Ok(Err(e)) => {
                crate::metrics::tls_handshake(false);
                tracing::debug!(client = %self.peer, error = %e, "TLS handshake failed");
                None
            }
            Err(_) => {
                crate::metrics::tls_handshake(false);
                tracing::debug!(client = %self.peer, "TLS handshake timed out");
                None
            }
        }
    }

    pub(super) fn reset_transaction(&mut self) {
        self.mail_from = None;
        self.rcpts.clear();
        self.tx = Default::default();
    }

    fn bare_newline(&self) -> BareNewline {
        self.shared.config.server.bare_newline
    }

    /// The authenticated project's id, or "" before AUTH (for metrics labels).
    pub(super) fn project_id(&self) -> &str {
        self.auth
            .as_ref()
            .map(|a| a.project.id.as_str())
            .unwrap_or("")
    }

    /// Whether AUTH may be offered and used on this connection right now.
    pub(super) fn auth_allowed(&self) -> bool {
        self.tls || (self.mode == ListenerMode::Plain && self.allow_plaintext_auth)
    }

    /// The command loop. Returns when the connection must close or switch to TLS.
    async fn serve<S: AsyncRead + AsyncWrite + Unpin>(
        &mut self,
        conn: &mut Connection<S>,
        greet: bool,
    ) -> Flow {
        if greet
            && conn
                .write_reply(&reply::greeting(&self.shared.config.server.hostname))
                .await
                .is_err()
        {
            return Flow::Close;
        }
        let mut shutdown = self.shared.shutdown.clone();
        loop {
            let line = tokio::select! {
                line = conn.read_line(MAX_COMMAND_LINE, self.shared.config.command_timeout()) => line,
                _ = crate::shutdown::stopped(&mut shutdown) => {
                    let _ = conn.write_reply(&reply::SHUTTING_DOWN).await;
                    return Flow::Close;
                }
            };
            let flow = match line {
                Ok(line) => {
                    // The transcript (SMTP_RELAY_LOG=trace); lines answering a 334 are read
                    // in auth.rs and never reach this point.
                    tracing::trace!(client = %self.peer, "C: {}", crate::logging::redact_command(&line));
                    // Boxed: a command's future (DATA, submission, the durable enqueue) is many
                    // times the size of the wait for the next line; inline, every idle session's
                    // task would reserve room for it.
                    Box::pin(self.command(conn, line)).await
                }
                Err(FrameError::TooLong) => self.error(conn, &reply::LINE_TOO_LONG).await,
                Err(e) => {
                    if let Some(r) = e.reply() {
                        crate::metrics::rejected(self.project_id(), &r);
                        let _ = conn.write_reply(&r).await;
                    }
                    Flow::Close
                }
            };
            match flow {
                Flow::Continue => {}
                other => return other,
            }
        }
    }

    /// Sends an error reply. Protocol errors count, and too many close the session; policy
    /// refusals do not (RFC 5321 §4.5.3.1.10: a client told 452 for recipient 101 sends the
    /// message to the first 100), up to [`MAX_POLICY_REFUSALS`] between accepted messages.
    pub(super) async fn error<S: AsyncRead + AsyncWrite + Unpin>(
        &mut self,
        conn: &mut Connection<S>,
        r: &Reply,
    ) -> Flow {
        crate::metrics::rejected(self.project_id(), r);
        let counts = is_protocol_error(r) || {
            self.refusals += 1;
            self.refusals > MAX_POLICY_REFUSALS
        };
        if counts {
            self.errors += 1;
            if self.errors > MAX_ERRORS {
                let _ = conn.write_reply(&reply::TOO_MANY_ERRORS).await;
                return Flow::Close;
            }
        }
        self.send(conn, r).await
    }

    /// Counts a command that moves no mail; past `junk_command_limit`, 421 and close.
    async fn junk<S: AsyncRead + AsyncWrite + Unpin>(
        &mut self,
        conn: &mut Connection<S>,
    ) -> Option<Flow> {
        let limit = self.shared.config.server.junk_command_limit;
        self.junk_commands = self.junk_commands.saturating_add(1);
        if limit == 0 || self.junk_commands <= limit {
            return None;
        }
        tracing::info!(client = %self.peer, limit, "too many commands without mail, closing");
        crate::metrics::rejected(self.project_id(), &reply::TOO_MANY_JUNK);
        let _ = conn.write_reply(&reply::TOO_MANY_JUNK).await;
        Some(Flow::Close)
    }

    pub(super) async fn send<S: AsyncRead + AsyncWrite + Unpin>(
        &mut self,
        conn: &mut Connection<S>,
        r: &Reply,
    ) -> Flow {
        match conn.write_reply(r).await {
            Ok(()) => Flow::Continue,
            Err(_) => Flow::Close,
        }
    }

    async fn command<S: AsyncRead + AsyncWrite + Unpin>(
        &mut self,
        conn: &mut Connection<S>,
        mut line: Vec<u8>,
    ) -> Flow {
        if let Some(word) = non_smtp_command(&line) {
            // Only the first word: a header line could carry credentials.
            tracing::info!(client = %self.peer, command = %word, "non-SMTP command (HTTP request or header line), closing");
            crate::metrics::rejected(self.project_id(), &reply::NOT_SMTP);
            let _ = conn.write_reply(&reply::NOT_SMTP).await;
            return Flow::Close;
        }
        let has_argument = line.trim_ascii().iter().any(u8::is_ascii_whitespace);
        line.extend_from_slice(b"\r\n");
        // MAIL/RCPT parameters are parsed in envelope.rs, not by smtp-proto.
        let request = match Request::parse(&mut super::envelope::without_params(&line).iter()) {
            Ok(r) => r.into_owned(),
            Err(e) => {
                if matches!(e, smtp_proto::Error::UnknownCommand)
                    && let Some(flow) = self.junk(conn).await
                {
                    return flow;
                }
                return self.error(conn, &parse_error_reply(e)).await;
            }
        };
        if matches!(
            request,
            Request::Noop { .. }
                | Request::Rset
                | Request::Vrfy { .. }
                | Request::Expn { .. }
                | Request::Help { .. }
                | Request::Etrn { .. }
                | Request::Atrn { .. }
                | Request::Burl { .. }
                | Request::Bdat { .. }
                | Request::Lhlo { .. }
        ) && let Some(flow) = self.junk(conn).await
        {
            return flow;
        }
        match request {
            Request::Ehlo { host } => self.ehlo(conn, host, true).await,
            Request::Helo { host } => self.ehlo(conn, host, false).await,
            Request::StartTls if has_argument => self.error(conn, &reply::syntax("STARTTLS")).await,
            Request::StartTls => {
                if self.tls {
                    self.error(conn, &reply::TLS_ALREADY).await
                } else if self.mode != ListenerMode::Starttls {
                    self.error(conn, &reply::TLS_UNAVAILABLE).await
                } else {
                    match conn.write_reply(&reply::READY_TLS).await {
                        Ok(()) => Flow::StartTls,
                        Err(_) => Flow::Close,
                    }
                }
            }
            Request::Auth {
                mechanism,
                initial_response,
            } => self.auth(conn, mechanism, initial_response).await,
            Request::Mail { from } => self.mail(conn, from, &line).await,
            Request::Rcpt { to } => self.rcpt(conn, to, &line).await,
            Request::Data => {
                let accepted = self.accepted;
                let flow = self.data(conn).await;
                if self.accepted > accepted {
                    // As Postfix: a client that delivers mail is not idling.
                    self.junk_commands = 0;
                    self.refusals = 0;
                }
                flow
            }
            Request::Rset => {
                self.reset_transaction();
                self.send(conn, &reply::RESET_OK).await
            }
            Request::Noop { .. } => self.send(conn, &reply::OK).await,
            Request::Quit => {
                let _ = conn.write_reply(&reply::BYE).await;
                Flow::Close
            }
            Request::Vrfy { .. } => self.error(conn, &reply::VRFY_REFUSED).await,
            Request::Expn { .. } => self.error(conn, &reply::EXPN_REFUSED).await,
            _ => self.error(conn, &reply::NOT_IMPLEMENTED).await,
        }
    }

    async fn ehlo<S: AsyncRead + AsyncWrite + Unpin>(
        &mut self,
        conn: &mut Connection<S>,
        host: String,
        extended: bool,
    ) -> Flow {
        self.reset_transaction();
        self.helo = Some(host);
        let hostname = &self.shared.config.server.hostname;
        if !extended {
            return self.send(conn, &Reply::owned(250, hostname.clone())).await;
        }
        let mut ehlo = EhloResponse::new(hostname.as_str());
        ehlo.capabilities = smtp_proto::EXT_PIPELINING
            | smtp_proto::EXT_SIZE
            | smtp_proto::EXT_8BIT_MIME
            | smtp_proto::EXT_SMTP_UTF8
            | smtp_proto::EXT_DSN
            | smtp_proto::EXT_ENHANCED_STATUS_CODES;
        ehlo.size = self.shared.limits.max_size;
        if self.mode == ListenerMode::Starttls && !self.tls {
            ehlo.capabilities |= smtp_proto::EXT_START_TLS;
        }
        if self.auth_allowed() && self.auth.is_none() {
            ehlo.capabilities |= smtp_proto::EXT_AUTH;
            ehlo.auth_mechanisms = smtp_proto::AUTH_PLAIN | smtp_proto::AUTH_LOGIN;
        }
        let mut out = Vec::with_capacity(256);
        if ehlo.write(&mut out).is_err() {
            return Flow::Close;
        }
        // smtp-proto's first line is its own joke; ours greets the client by name.
        let first = memchr::memchr(b'\n', &out).map_or(0, |i| i + 1);
        let greeting =
            reply::ehlo_greeting(hostname, self.helo.as_deref().unwrap_or(""), self.peer.ip());
        out.splice(..first, greeting.into_bytes());
        match conn.write_raw(&out).await {
            Ok(()) => Flow::Continue,
            Err(_) => Flow::Close,
        }
    }
}

/// Whether a refusal says the client broke the protocol (syntax, sequence, unknown command,
/// AUTH/TLS needed, bad credentials), which counts toward [`MAX_ERRORS`]. Everything else —
/// limits, rate, sender or content policy, our own temporary trouble — refuses a well-formed
/// request, and the client knows what to do with it without being disconnected.
fn is_protocol_error(r: &Reply) -> bool {
    matches!(r.code, 500..=504 | 530 | 535 | 555)
}

/// The first word of an HTTP request line (`GET /`, `CONNECT host:443`…) or header line
/// (`Host: x`), which no SMTP command looks like: Postfix's `smtpd_forbidden_commands`.
fn non_smtp_command(line: &[u8]) -> Option<String> {
    const METHODS: [&str; 8] = [
        "GET", "POST", "CONNECT", "HEAD", "PUT", "OPTIONS", "DELETE", "PATCH",
    ];
    let space = line.iter().position(|&b| b == b' ')?;
    let word = std::str::from_utf8(&line[..space]).ok()?;
    let header = word.len() > 1
        && word.ends_with(':')
        && word[..word.len() - 1]
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-');
    (header || METHODS.iter().any(|m| m.eq_ignore_ascii_case(word))).then(|| word.to_string())
}

fn parse_error_reply(e: smtp_proto::Error) -> Reply {
    use smtp_proto::Error as E;
    match e {
        E::UnknownCommand => reply::UNKNOWN_COMMAND,
        E::SyntaxError { syntax } => reply::syntax(syntax),
        E::InvalidSenderAddress => Reply::new(501, "5.1.7 Bad sender address syntax"),
        E::InvalidRecipientAddress => reply::BAD_RCPT,
        E::InvalidParameter { param } => {
            Reply::owned(501, format!("5.5.4 Invalid parameter {param}"))
        }
        E::UnsupportedParameter { param } => Reply::owned(
            555,
            format!("5.5.4 Unsupported parameter {}", reply::printable(&param)),
        ),
        _ => reply::syntax("command"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn http_lines_are_recognised_and_smtp_commands_are_not() {
        for (line, word) in [
            ("GET / HTTP/1.1", "GET"),
            ("post /x HTTP/1.1", "post"),
            ("CONNECT relay:587 HTTP/1.1", "CONNECT"),
            ("Host: relay.example", "Host:"),
            ("User-Agent: curl/8", "User-Agent:"),
            ("Authorization: Basic c2VjcmV0", "Authorization:"),
        ] {
            assert_eq!(
                non_smtp_command(line.as_bytes()).as_deref(),
                Some(word),
                "{line}"
            );
        }
        for line in [
            "MAIL FROM:<a@b.test>",
            "MAIL FROM: <a@b.test>",
            "RCPT TO: <a@b.test>",
            "AUTH PLAIN AGEAYg==",
            "EHLO host:1",
            "GET",
            "GETX / HTTP/1.1",
            "Host:x",
            ": x",
            "NOOP Host: x",
        ] {
            assert_eq!(non_smtp_command(line.as_bytes()), None, "{line}");
        }
    }

    #[test]
    fn policy_refusals_are_not_protocol_errors() {
        for r in [
            reply::UNKNOWN_COMMAND,
            reply::BAD_SEQUENCE_MAIL,
            reply::NOT_IMPLEMENTED,
            reply::AUTH_REQUIRED,
            reply::BAD_CREDENTIALS,
            reply::AUTH_BASE64,
            Reply::new(555, "5.5.4 Unsupported parameter HOLDFOR"),
            reply::syntax("STARTTLS"),
        ] {
            assert!(is_protocol_error(&r), "{r:?}");
        }
        for r in [
            reply::TOO_MANY_RCPTS,
            reply::rate_limited("p", 3),
            reply::NULL_SENDER,
            reply::TOO_LARGE,
            reply::TOO_COMPLEX,
            reply::LOCAL_ERROR,
            reply::NO_STORAGE,
            reply::AUTH_TEMP,
        ] {
            assert!(!is_protocol_error(&r), "{r:?}");
        }
    }
}
