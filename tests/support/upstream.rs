//! A scriptable SMTP server that plays the *upstream* (the provider the relay delivers to).
//!
//! Hand-written and deliberately independent of the relay's own code (no smtp-proto, no
//! mail-send): if both sides shared a parser, a shared bug would go unnoticed.
//!
//! * binds `127.0.0.1:0` (or [`UpstreamOptions::addr`], to simulate "down, then up again on the
//!   same port"), one tokio task per connection;
//! * `Plain`, `StartTls` and `Implicit` TLS modes (certificates from [`TestPki`]);
//! * optional AUTH PLAIN / LOGIN with one required user/password, and optional AUTH XOAUTH2
//!   whose bearer tokens a test-supplied function checks (e.g. against a test token endpoint);
//! * every stage's reply can be overridden by a [`Script`], changeable at any time with
//!   [`TestUpstream::set_script`];
//! * records every completed transaction with the exact wire bytes of DATA
//!   ([`ReceivedMessage::raw`]) and the dot-unstuffed message ([`ReceivedMessage::data`]).
//!
//! Strictness (so relay bugs show up): MAIL needs a prior EHLO/HELO (again after STARTTLS), needs
//! TLS in `StartTls` mode, needs AUTH when credentials are configured; AUTH is offered and
//! accepted only inside TLS in the TLS modes. Only `CRLF.CRLF` ends DATA. Every read times out
//! after [`READ_TIMEOUT`]; a reply starting with `421` (scripted or not) closes the connection.
//!
//! Lenient but recorded in [`TestUpstream::violations`]: commands ending in a bare LF (accepted),
//! bare CR/LF, NUL or over-long lines in DATA (stored as received), bytes pipelined after
//! STARTTLS (discarded), MAIL/RCPT parameters of an extension the EHLO reply did not offer
//! (SMTPUTF8, BODY=8BITMIME, DSN's RET/ENVID/NOTIFY/ORCPT), a non-ASCII address without
//! SMTPUTF8 on MAIL, 8-bit DATA without BODY=8BITMIME when 8BITMIME was offered. (Raw UTF-8
//! in headers without SMTPUTF8 is common in clients, lettre included, and not flagged.)
//! 8BITMIME is offered by default; SMTPUTF8 and DSN only when asked for
//! ([`UpstreamOptions::with_smtputf8`], [`UpstreamOptions::with_dsn`]).

use std::collections::HashMap;
use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use base64::Engine as _;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::AbortHandle;
use tokio_rustls::TlsAcceptor;

use super::certs::TestPki;

/// Deadline for every read (command line, DATA chunk, TLS handshake) and write.
pub const READ_TIMEOUT: Duration = Duration::from_secs(30);
/// Advertised (and enforced against `MAIL ... SIZE=`) maximum message size.
pub const MAX_SIZE: usize = 50 * 1024 * 1024;
/// Longest command line accepted (DATA lines are not limited).
const MAX_LINE: usize = 64 * 1024;
const GREETING: &str = "220 test-upstream ESMTP";

/// How the upstream does TLS.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum UpstreamTls {
    /// No TLS at all (STARTTLS not offered).
    Plain,
    /// Plain TCP, STARTTLS offered; MAIL and AUTH require TLS first.
    StartTls,
    /// TLS from the first byte (like port 465).
    Implicit,
}

/// Reply overrides, per stage. `None` (or a missing recipient) means the normal success reply.
///
/// A reply is one line such as `"451 4.3.0 try later"`; for a multi-line reply separate the
/// lines with `\n` and format them yourself (`"250-first\n250 last"`). A reply starting with
/// `421` is sent and the connection is closed.
#[derive(Clone, Debug, Default)]
pub struct Script {
    /// Replaces the greeting; anything not starting with `2` is sent and the connection closed.
    pub greeting: Option<String>,
    /// Replaces the EHLO reply (the session counts as greeted only if it starts with `2`).
    pub ehlo: Option<String>,
    /// Replaces the final AUTH reply, after the credential exchange. A `2xx` logs the user in
    /// whatever the credentials were; anything else leaves the session unauthenticated.
    pub auth: Option<String>,
    /// Replaces the MAIL reply (transaction opened only if it starts with `2`).
    pub mail: Option<String>,
    /// Per recipient address (lowercased) → reply; the recipient is accepted only on `2xx`.
    pub rcpt: HashMap<String, String>,
    /// Replaces the `354` reply to DATA. If it does not start with `354` no body is read and the
    /// transaction is reset.
    pub data: Option<String>,
    /// Replaces the reply after the final `CRLF.CRLF`. Only a `2xx` makes the message count as
    /// delivered ([`TestUpstream::messages`]); otherwise it lands in [`TestUpstream::rejected`].
    pub data_end: Option<String>,
    /// Read the whole body, then close the connection without replying.
    pub drop_after_data: bool,
    /// Reply to the body as usual, then close the connection without a word (an upstream that
    /// drops idle connections): the client's next command on it finds the connection gone.
    pub close_after_data_end: bool,
    /// Wait this long after the body before replying (the message counts as received first).
    pub delay_data_end: Option<Duration>,
    /// Accept the TCP connection (and, in `Implicit` mode, the TLS handshake) but never send
    /// the greeting; the connection is closed when the client closes it or after
    /// [`READ_TIMEOUT`].
    pub hang_greeting: bool,
}

impl Script {
    /// Convenience: a script rejecting/deferring one recipient.
    pub fn with_rcpt(mut self, addr: &str, reply: &str) -> Script {
        self.rcpt.insert(addr.to_lowercase(), reply.to_string());
        self
    }
}

/// Decides whether an XOAUTH2 bearer token is currently valid.
pub type TokenCheck = Arc<dyn Fn(&str) -> bool + Send + Sync>;

/// How to start a [`TestUpstream`]. `Default` is a plain, unauthenticated upstream on an
/// ephemeral port.
#[derive(Clone)]
pub struct UpstreamOptions {
    pub tls: UpstreamTls,
    /// Required for `StartTls` and `Implicit`.
    pub pki: Option<TestPki>,
    /// Required credentials (user, password) for AUTH PLAIN and LOGIN; `None` = no AUTH.
    pub auth: Option<(String, String)>,
    /// Required user and bearer-token check for AUTH XOAUTH2; `None` = not offered.
    pub xoauth2: Option<(String, TokenCheck)>,
    pub script: Script,
    /// Bind here instead of `127.0.0.1:0`.
    pub addr: Option<SocketAddr>,
    /// Do not advertise PIPELINING; a command arriving before the previous reply is then a
    /// violation.
    pub no_pipelining: bool,
    /// Do not advertise 8BITMIME.
    pub no_8bitmime: bool,
    /// Advertise SMTPUTF8 (RFC 6531).
    pub smtputf8: bool,
    /// Advertise DSN (RFC 3461).
    pub dsn: bool,
}

impl Default for UpstreamOptions {
    fn default() -> Self {
        UpstreamOptions {
            tls: UpstreamTls::Plain,
            pki: None,
            auth: None,
            xoauth2: None,
            script: Script::default(),
            addr: None,
            no_pipelining: false,
            no_8bitmime: false,
            smtputf8: false,
            dsn: false,
        }
    }
}

impl UpstreamOptions {
    pub fn plain() -> Self {
        Self::default()
    }

    pub fn starttls(pki: &TestPki) -> Self {
        UpstreamOptions {
            tls: UpstreamTls::StartTls,
            pki: Some(pki.clone()),
            ..Self::default()
        }
    }

    pub fn implicit(pki: &TestPki) -> Self {
        UpstreamOptions {
            tls: UpstreamTls::Implicit,
            pki: Some(pki.clone()),
            ..Self::default()
        }
    }

    pub fn with_auth(mut self, user: &str, password: &str) -> Self {
        self.auth = Some((user.to_string(), password.to_string()));
        self
    }

    /// Offers AUTH XOAUTH2 for `user`, accepting a bearer token when `check` says it is valid.
    pub fn with_xoauth2(mut self, user: &str, check: TokenCheck) -> Self {
        self.xoauth2 = Some((user.to_string(), check));
        self
    }

    pub fn with_script(mut self, script: Script) -> Self {
        self.script = script;
        self
    }

    pub fn at(mut self, addr: SocketAddr) -> Self {
        self.addr = Some(addr);
        self
    }

    pub fn without_pipelining(mut self) -> Self {
        self.no_pipelining = true;
        self
    }

    pub fn without_8bitmime(mut self) -> Self {
        self.no_8bitmime = true;
        self
    }

    pub fn with_smtputf8(mut self) -> Self {
        self.smtputf8 = true;
        self
    }

    pub fn with_dsn(mut self) -> Self {
        self.dsn = true;
        self
    }
}

/// One transaction the upstream received.
#[derive(Clone, Debug)]
pub struct ReceivedMessage {
    /// Reverse path without the angle brackets (`""` for the null sender).
    pub mail_from: String,
    /// Accepted recipients only, as sent (without angle brackets).
    pub rcpt_to: Vec<String>,
    /// Exact wire bytes after the `354` up to and including the final `"\r\n.\r\n"` (an empty
    /// message is just `".\r\n"`).
    pub raw: Vec<u8>,
    /// Dot-unstuffed message, without the terminating `".\r\n"` (so normally ends in CRLF).
    pub data: Vec<u8>,
    /// Whether the transaction ran inside TLS.
    pub tls: bool,
    /// The authenticated user, if any.
    pub auth_user: Option<String>,
    /// Everything after `MAIL FROM:<...>`, trimmed (e.g. `"SIZE=123 BODY=8BITMIME"`).
    pub mail_params: String,
    /// Everything after `RCPT TO:<...>`, trimmed, for each accepted recipient (same order as
    /// `rcpt_to`; `""` when it had none).
    pub rcpt_params: Vec<String>,
    /// 1-based number of the TCP connection that carried it (see [`TestUpstream::connections`]).
    pub connection: usize,
    /// The reply sent after the body (`250 ...`, or the scripted `data_end`; `""` if dropped).
    pub reply: String,
    /// When the body had been received (timing of releases, e.g. rate limits).
    pub received_at: std::time::Instant,
}

impl ReceivedMessage {
    /// `data` as (lossy) UTF-8.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.data).into_owned()
    }
}

struct Shared {
    tls: UpstreamTls,
    acceptor: Option<TlsAcceptor>,
    auth: Option<(String, String)>,
    xoauth2: Option<(String, TokenCheck)>,
    bearer_tokens: Mutex<Vec<String>>,
    script: Mutex<Script>,
    messages: Mutex<Vec<ReceivedMessage>>,
    rejected: Mutex<Vec<ReceivedMessage>>,
    transcript: Mutex<Vec<String>>,
    violations: Mutex<Vec<String>>,
    count: watch::Sender<usize>,
    connections: AtomicUsize,
    conn_tasks: Mutex<Vec<AbortHandle>>,
    stopped: AtomicBool,
    pipelining: bool,
    eight_bit_mime: bool,
    smtputf8: bool,
    dsn: bool,
    /// Command lines that arrived with more client bytes already behind them.
    pipelined: AtomicUsize,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Shared {
    fn script(&self) -> Script {
        lock(&self.script).clone()
    }

    fn log(&self, conn: usize, line: String) {
        lock(&self.transcript).push(format!("[{conn}] {line}"));
    }

    fn violation(&self, conn: usize, what: String) {
        self.log(conn, format!("-- VIOLATION: {what}"));
        lock(&self.violations).push(format!("[{conn}] {what}"));
    }
}

/// A running test upstream. Dropping it (or [`stop`](TestUpstream::stop)) takes it down.
pub struct TestUpstream {
    addr: SocketAddr,
    shared: Arc<Shared>,
    listener: Arc<TcpListener>,
    accept_task: AbortHandle,
}

impl TestUpstream {
    /// Binds and starts serving. Panics if the options are inconsistent or the bind fails
    /// (a given address is retried for up to 5 s, for "down then up on the same port").
    pub async fn start(opts: UpstreamOptions) -> TestUpstream {
        let acceptor = match (opts.tls, &opts.pki) {
            (UpstreamTls::Plain, _) => None,
            (_, Some(pki)) => Some(TlsAcceptor::from(pki.server_config())),
            (mode, None) => panic!("TestUpstream: {mode:?} mode needs UpstreamOptions::pki"),
        };
        let listener = bind(opts.addr).await;
        let addr = listener.local_addr().expect("local_addr");
        let listener = Arc::new(listener);
        let shared = Arc::new(Shared {
            tls: opts.tls,
            acceptor,
            auth: opts.auth,
            xoauth2: opts.xoauth2,
            bearer_tokens: Mutex::new(Vec::new()),
            script: Mutex::new(opts.script),
            messages: Mutex::new(Vec::new()),
            rejected: Mutex::new(Vec::new()),
            transcript: Mutex::new(Vec::new()),
            violations: Mutex::new(Vec::new()),
            count: watch::Sender::new(0),
            connections: AtomicUsize::new(0),
            conn_tasks: Mutex::new(Vec::new()),
            stopped: AtomicBool::new(false),
            pipelining: !opts.no_pipelining,
            eight_bit_mime: !opts.no_8bitmime,
            smtputf8: opts.smtputf8,
            dsn: opts.dsn,
            pipelined: AtomicUsize::new(0),
        });
        let accept_task =
            tokio::spawn(accept_loop(listener.clone(), shared.clone())).abort_handle();
        TestUpstream {
            addr,
            shared,
            listener,
            accept_task,
        }
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    /// Replaces the script; affects commands read from now on (also on open connections).
    pub fn set_script(&self, s: Script) {
        *lock(&self.shared.script) = s;
    }

    pub fn script(&self) -> Script {
        self.shared.script()
    }

    /// Completed transactions (body received and answered `2xx`), in completion order.
    pub fn messages(&self) -> Vec<ReceivedMessage> {
        lock(&self.shared.messages).clone()
    }

    /// Bodies received but answered with a non-`2xx` `data_end`, or dropped (`drop_after_data`).
    pub fn rejected(&self) -> Vec<ReceivedMessage> {
        lock(&self.shared.rejected).clone()
    }

    /// Waits until at least `n` messages were accepted; panics with a transcript on timeout.
    pub async fn wait_for(&self, n: usize, timeout: Duration) -> Vec<ReceivedMessage> {
        let mut rx = self.shared.count.subscribe();
        let ok = matches!(
            tokio::time::timeout(timeout, rx.wait_for(|c| *c >= n)).await,
            Ok(Ok(_))
        );
        if !ok {
            let transcript = self.transcript();
            let tail = &transcript[transcript.len().saturating_sub(40)..];
            panic!(
                "test upstream {}: waited {:?} for {} accepted message(s), got {} \
                 (connections: {}, rejected: {})\nlast transcript lines:\n  {}",
                self.addr,
                timeout,
                n,
                self.messages().len(),
                self.connections(),
                self.rejected().len(),
                tail.join("\n  ")
            );
        }
        self.messages()
    }

    /// Every bearer token presented with AUTH XOAUTH2, valid or not, in arrival order.
    pub fn bearer_tokens(&self) -> Vec<String> {
        lock(&self.shared.bearer_tokens).clone()
    }

    /// TCP connections accepted so far.
    pub fn connections(&self) -> usize {
        self.shared.connections.load(Ordering::SeqCst)
    }

    /// Everything said so far, all connections interleaved: `"[conn] C: line"` for client
    /// lines (AUTH data included), `"[conn] S: line"` for replies, `"[conn] -- event"`.
    pub fn transcript(&self) -> Vec<String> {
        lock(&self.shared.transcript).clone()
    }

    /// How many command lines arrived with the client's next bytes already behind them
    /// (pipelined, RFC 2920).
    pub fn pipelined(&self) -> usize {
        self.shared.pipelined.load(Ordering::SeqCst)
    }

    /// Just the client command lines (`"[conn] MAIL FROM:<a@b>"` …), in arrival order.
    pub fn commands(&self) -> Vec<String> {
        self.transcript()
            .into_iter()
            .filter_map(|l| {
                let (conn, rest) = l.split_once(' ')?;
                rest.strip_prefix("C: ").map(|c| format!("{conn} {c}"))
            })
            .collect()
    }

    /// Protocol violations seen from clients, e.g. a bare LF or CR in a command or in DATA, a
    /// DATA line over 998 octets, a NUL in DATA, bytes pipelined after STARTTLS. A well-behaved
    /// relay leaves this empty: `assert!(up.violations().is_empty(), "{:?}", up.violations())`.
    pub fn violations(&self) -> Vec<String> {
        lock(&self.shared.violations).clone()
    }

    /// Takes the upstream down: the listening socket stops accepting at once (connections are
    /// refused) and open connections are dropped. Idempotent; also done on drop. Start a new
    /// `TestUpstream` with `UpstreamOptions::at(old.addr())` to bring it back on the same port.
    pub fn stop(&self) {
        if self.shared.stopped.swap(true, Ordering::SeqCst) {
            return;
        }
        // Dropping a tokio listener only happens when its task is next polled; shutting the
        // socket down makes the refusal immediate and deterministic. Safe: `self.listener` keeps
        // the descriptor open.
        #[cfg(unix)]
        {
            use std::os::fd::AsRawFd;
            // SAFETY: plain syscall on a descriptor we own and keep open.
            unsafe {
                libc::shutdown(self.listener.as_raw_fd(), libc::SHUT_RDWR);
            }
        }
        self.accept_task.abort();
        for task in lock(&self.shared.conn_tasks).drain(..) {
            task.abort();
        }
    }
}

impl Drop for TestUpstream {
    fn drop(&mut self) {
        self.stop();
    }
}

async fn bind(addr: Option<SocketAddr>) -> TcpListener {
    let Some(addr) = addr else {
        return TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind 127.0.0.1:0");
    };
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    loop {
        match TcpListener::bind(addr).await {
            Ok(l) => return l,
            Err(_) if tokio::time::Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            Err(e) => panic!("TestUpstream: cannot bind {addr}: {e}"),
        }
    }
}

async fn accept_loop(listener: Arc<TcpListener>, shared: Arc<Shared>) {
    loop {
        match listener.accept().await {
            Ok((stream, peer)) => {
                if shared.stopped.load(Ordering::SeqCst) {
                    return;
                }
                let id = shared.connections.fetch_add(1, Ordering::SeqCst) + 1;
                shared.log(id, format!("-- connection from {peer}"));
                let s = shared.clone();
                let handle = tokio::spawn(async move {
                    let result = serve(stream, id, &s).await;
                    let how = match result {
                        Ok(()) => "closed".to_string(),
                        Err(e) => format!("closed: {e}"),
                    };
                    s.log(id, format!("-- {how}"));
                });
                let mut tasks = lock(&shared.conn_tasks);
                tasks.retain(|t| !t.is_finished());
                tasks.push(handle.abort_handle());
                if shared.stopped.load(Ordering::SeqCst) {
                    handle.abort();
                }
            }
            Err(_) if shared.stopped.load(Ordering::SeqCst) => return,
            Err(_) => tokio::time::sleep(Duration::from_millis(10)).await,
        }
    }
}

trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

fn timed_out(what: &str) -> io::Error {
    io::Error::new(io::ErrorKind::TimedOut, format!("timeout: {what}"))
}

/// One connection's stream plus the bytes read but not yet consumed.
struct Conn<'a> {
    stream: Box<dyn Io>,
    buf: Vec<u8>,
    id: usize,
    shared: &'a Shared,
}

impl Conn<'_> {
    /// Reads more bytes into `buf`; returns 0 on EOF.
    async fn fill(&mut self) -> io::Result<usize> {
        let mut tmp = [0u8; 16 * 1024];
        let n = tokio::time::timeout(READ_TIMEOUT, self.stream.read(&mut tmp))
            .await
            .map_err(|_| timed_out("read"))??;
        self.buf.extend_from_slice(&tmp[..n]);
        Ok(n)
    }

    /// Next line without its line ending (CRLF, or a lone LF). `None` on EOF.
    async fn read_line(&mut self) -> io::Result<Option<String>> {
        loop {
            if let Some(pos) = self.buf.iter().position(|&b| b == b'\n') {
                let mut line: Vec<u8> = self.buf.drain(..=pos).collect();
                line.pop();
                let crlf = line.last() == Some(&b'\r');
                if crlf {
                    line.pop();
                }
                let line = String::from_utf8_lossy(&line).into_owned();
                self.shared.log(self.id, format!("C: {line}"));
                if !crlf {
                    self.shared
                        .violation(self.id, format!("bare LF ending command {line:?}"));
                }
                if line.contains('\r') {
                    self.shared
                        .violation(self.id, format!("bare CR in command {line:?}"));
                }
                return Ok(Some(line));
            }
            if self.buf.len() > MAX_LINE {
                self.reply("500 5.5.2 Line too long").await?;
                return Err(io::Error::new(io::ErrorKind::InvalidData, "line too long"));
            }
            if self.fill().await? == 0 {
                return Ok(None);
            }
        }
    }

    /// Sends a reply; `\n` in `text` separates lines. Each line gets CRLF.
    async fn reply(&mut self, text: &str) -> io::Result<()> {
        let mut out = String::new();
        for line in text.split('\n') {
            let line = line.trim_end_matches('\r');
            self.shared.log(self.id, format!("S: {line}"));
            out.push_str(line);
            out.push_str("\r\n");
        }
        tokio::time::timeout(READ_TIMEOUT, async {
            self.stream.write_all(out.as_bytes()).await?;
            self.stream.flush().await
        })
        .await
        .map_err(|_| timed_out("write"))?
    }

    /// Reads DATA up to and including `CRLF.CRLF`, where the stream is taken to start right
    /// after a (virtual) CRLF, so `".\r\n"` at once is an empty message. Returns the raw wire
    /// bytes; anything after the terminator stays buffered. `None` on EOF.
    async fn read_data(&mut self) -> io::Result<Option<Vec<u8>>> {
        let mut v = Vec::with_capacity(2 + self.buf.len());
        v.extend_from_slice(b"\r\n");
        v.append(&mut self.buf);
        let mut scan = 0;
        loop {
            if let Some(pos) = find(&v[scan..], b"\r\n.\r\n") {
                let end = scan + pos + 5;
                self.buf = v.split_off(end);
                v.drain(..2);
                return Ok(Some(v));
            }
            scan = v.len().saturating_sub(4);
            let mut tmp = [0u8; 64 * 1024];
            let n = tokio::time::timeout(READ_TIMEOUT, self.stream.read(&mut tmp))
                .await
                .map_err(|_| timed_out("DATA read"))??;
            if n == 0 {
                return Ok(None);
            }
            v.extend_from_slice(&tmp[..n]);
        }
    }

    /// Discards everything until EOF (or the read timeout).
    async fn drain_until_eof(&mut self) {
        while let Ok(n) = self.fill().await {
            self.buf.clear();
            if n == 0 {
                break;
            }
        }
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// Removes one leading `.` from every line (lines split at CRLF only).
pub fn unstuff(content: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(content.len());
    let mut at_line_start = true;
    for (i, &b) in content.iter().enumerate() {
        if at_line_start && b == b'.' {
            at_line_start = false;
            continue;
        }
        out.push(b);
        at_line_start = b == b'\n' && i > 0 && content[i - 1] == b'\r';
    }
    out
}

/// Checks DATA wire bytes: CRLF line ends only, no NUL, no line over 998 octets.
pub fn data_problems(raw: &[u8]) -> Vec<String> {
    let mut problems = Vec::new();
    let mut line_start = 0;
    for (i, &b) in raw.iter().enumerate() {
        match b {
            b'\n' if i == 0 || raw[i - 1] != b'\r' => {
                problems.push(format!("bare LF in DATA at byte {i}"))
            }
            b'\r' if raw.get(i + 1) != Some(&b'\n') => {
                problems.push(format!("bare CR in DATA at byte {i}"))
            }
            0 => problems.push(format!("NUL in DATA at byte {i}")),
            _ => {}
        }
        if b == b'\n' {
            let len = i + 1 - line_start;
            let content = len
                - if len >= 2 && raw[i - 1] == b'\r' {
                    2
                } else {
                    1
                };
            if content > 998 {
                problems.push(format!(
                    "DATA line of {content} octets (> 998) at byte {line_start}"
                ));
            }
            line_start = i + 1;
        }
    }
    problems
}

fn is_positive(reply: &str) -> bool {
    reply.starts_with('2')
}

fn closes(reply: &str) -> bool {
    reply.starts_with("421")
}

#[derive(Default)]
struct Session {
    greeted: bool,
    tls: bool,
    auth_user: Option<String>,
    tx: Option<Transaction>,
    /// Keywords of the last EHLO reply (`"8BITMIME"`, `"SMTPUTF8"`, `"DSN"`, …).
    offered: Vec<String>,
}

impl Session {
    fn offers(&self, keyword: &str) -> bool {
        self.offered.iter().any(|k| k.eq_ignore_ascii_case(keyword))
    }
}

struct Transaction {
    mail_from: String,
    mail_params: String,
    rcpt_to: Vec<String>,
    rcpt_params: Vec<String>,
}

/// Whether a `KEY[=value]` parameter list contains `key` (case-insensitive).
fn has_param(params: &str, key: &str) -> bool {
    params.split_whitespace().any(|p| {
        p.split('=')
            .next()
            .is_some_and(|k| k.eq_ignore_ascii_case(key))
    })
}

/// The keywords of an EHLO reply (first word of every line but the greeting line).
fn ehlo_keywords(reply: &str) -> Vec<String> {
    reply
        .split('\n')
        .skip(1)
        .filter_map(|l| l.get(4..)?.split_whitespace().next().map(str::to_string))
        .collect()
}

/// Parses `FROM:<addr> params` / `TO:<addr> params` (keyword case-insensitive, optional space
/// after the colon). Returns (addr, params).
fn parse_path<'a>(arg: &'a str, keyword: &str) -> Option<(&'a str, &'a str)> {
    let head = arg.get(..keyword.len())?;
    if !head.eq_ignore_ascii_case(keyword) {
        return None;
    }
    let rest = arg[keyword.len()..].trim_start();
    let rest = rest.strip_prefix('<')?;
    let close = rest.find('>')?;
    Some((&rest[..close], rest[close + 1..].trim()))
}

fn size_param(params: &str) -> Option<usize> {
    params.split_whitespace().find_map(|p| {
        let (k, v) = p.split_once('=')?;
        k.eq_ignore_ascii_case("SIZE")
            .then(|| v.parse().ok())
            .flatten()
    })
}

/// `user=<u>\x01auth=Bearer <token>\x01\x01` → (user, token).
fn parse_xoauth2(bytes: &[u8]) -> Option<(String, String)> {
    let text = std::str::from_utf8(bytes).ok()?;
    let rest = text.strip_suffix("\x01\x01")?;
    let (user, auth) = rest.split_once('\x01')?;
    let user = user.strip_prefix("user=")?;
    let token = auth.strip_prefix("auth=Bearer ")?;
    Some((user.to_string(), token.to_string()))
}

fn b64_decode(s: &str) -> Option<Vec<u8>> {
    if s == "=" {
        return Some(Vec::new());
    }
    base64::engine::general_purpose::STANDARD.decode(s).ok()
}

async fn serve(tcp: TcpStream, id: usize, shared: &Shared) -> io::Result<()> {
    let _ = tcp.set_nodelay(true);
    let mut session = Session::default();
    let stream: Box<dyn Io> = match shared.tls {
        UpstreamTls::Implicit => {
            let acceptor = shared.acceptor.clone().expect("acceptor");
            let tls = tokio::time::timeout(READ_TIMEOUT, acceptor.accept(tcp))
                .await
                .map_err(|_| timed_out("TLS handshake"))??;
            session.tls = true;
            shared.log(id, "-- implicit TLS established".into());
            Box::new(tls)
        }
        _ => Box::new(tcp),
    };
    let mut conn = Conn {
        stream,
        buf: Vec::new(),
        id,
        shared,
    };

    let script = shared.script();
    if script.hang_greeting {
        shared.log(id, "-- hanging (no greeting)".into());
        conn.drain_until_eof().await;
        return Ok(());
    }
    match script.greeting {
        Some(g) => {
            conn.reply(&g).await?;
            if !is_positive(&g) {
                return Ok(());
            }
        }
        None => conn.reply(GREETING).await?,
    }

    loop {
        let Some(line) = conn.read_line().await? else {
            return Ok(());
        };
        if !conn.buf.is_empty() {
            shared.pipelined.fetch_add(1, Ordering::SeqCst);
            if !shared.pipelining {
                shared.violation(
                    id,
                    format!("{line:?} pipelined although PIPELINING was not offered"),
                );
            }
        }
        let (verb, arg) = match line.split_once(' ') {
            Some((v, a)) => (v.to_ascii_uppercase(), a.trim()),
            None => (line.trim().to_ascii_uppercase(), ""),
        };
        let script = shared.script();
        match verb.as_str() {
            "EHLO" | "HELO" => {
                session.tx = None;
                if let Some(r) = script.ehlo.filter(|_| verb == "EHLO") {
                    session.greeted = is_positive(&r);
                    session.offered = ehlo_keywords(&r);
                    conn.reply(&r).await?;
                    if closes(&r) {
                        return Ok(());
                    }
                    continue;
                }
                session.greeted = true;
                if verb == "HELO" {
                    conn.reply("250 test-upstream").await?;
                    continue;
                }
                let mut lines = vec![
                    format!("test-upstream greets {arg}"),
                    format!("SIZE {MAX_SIZE}"),
                    "ENHANCEDSTATUSCODES".to_string(),
                ];
                if shared.eight_bit_mime {
                    lines.insert(1, "8BITMIME".to_string());
                }
                if shared.pipelining {
                    lines.insert(1, "PIPELINING".to_string());
                }
                if shared.smtputf8 {
                    lines.push("SMTPUTF8".to_string());
                }
                if shared.dsn {
                    lines.push("DSN".to_string());
                }
                if shared.tls == UpstreamTls::StartTls && !session.tls {
                    lines.push("STARTTLS".to_string());
                }
                if auth_allowed(shared, &session) {
                    let mut mechs = Vec::new();
                    if shared.auth.is_some() {
                        mechs.push("PLAIN LOGIN");
                    }
                    if shared.xoauth2.is_some() {
                        mechs.push("XOAUTH2");
                    }
                    lines.push(format!("AUTH {}", mechs.join(" ")));
                }
                session.offered = lines[1..]
                    .iter()
                    .filter_map(|l| l.split_whitespace().next().map(str::to_string))
                    .collect();
                let last = lines.len() - 1;
                let text: Vec<String> = lines
                    .iter()
                    .enumerate()
                    .map(|(i, l)| format!("250{}{l}", if i == last { ' ' } else { '-' }))
                    .collect();
                conn.reply(&text.join("\n")).await?;
            }
            "STARTTLS" => {
                if shared.tls != UpstreamTls::StartTls {
                    conn.reply("502 5.5.1 STARTTLS not supported").await?;
                    continue;
                }
                if session.tls {
                    conn.reply("503 5.5.1 TLS already active").await?;
                    continue;
                }
                conn.reply("220 2.0.0 Ready to start TLS").await?;
                if !conn.buf.is_empty() {
                    shared.violation(
                        id,
                        format!(
                            "{} byte(s) pipelined after STARTTLS (discarded)",
                            conn.buf.len()
                        ),
                    );
                }
                let acceptor = shared.acceptor.clone().expect("acceptor");
                let tls = tokio::time::timeout(READ_TIMEOUT, acceptor.accept(conn.stream))
                    .await
                    .map_err(|_| timed_out("STARTTLS handshake"))??;
                shared.log(id, "-- STARTTLS established".into());
                conn = Conn {
                    stream: Box::new(tls),
                    buf: Vec::new(),
                    id,
                    shared,
                };
                session = Session {
                    tls: true,
                    ..Session::default()
                };
            }
            "AUTH" => {
                if !auth_configured(shared) {
                    conn.reply("502 5.5.1 AUTH not supported").await?;
                } else if !auth_allowed(shared, &session) {
                    conn.reply("530 5.7.0 Must issue a STARTTLS command first")
                        .await?;
                } else if !session.greeted {
                    conn.reply("503 5.5.1 Send EHLO first").await?;
                } else if session.auth_user.is_some() {
                    conn.reply("503 5.5.1 Already authenticated").await?;
                } else if session.tx.is_some() {
                    conn.reply("503 5.5.1 AUTH not allowed during a mail transaction")
                        .await?;
                } else if !handle_auth(&mut conn, &mut session, arg, &script).await? {
                    return Ok(());
                }
            }
            "MAIL" => {
                if !session.greeted {
                    conn.reply("503 5.5.1 Send EHLO/HELO first").await?;
                } else if shared.tls == UpstreamTls::StartTls && !session.tls {
                    conn.reply("530 5.7.0 Must issue a STARTTLS command first")
                        .await?;
                } else if auth_configured(shared) && session.auth_user.is_none() {
                    conn.reply("530 5.7.0 Authentication required").await?;
                } else if session.tx.is_some() {
                    conn.reply("503 5.5.1 Nested MAIL command").await?;
                } else if let Some((from, params)) = parse_path(arg, "FROM:") {
                    if size_param(params).is_some_and(|s| s > MAX_SIZE) {
                        conn.reply("552 5.3.4 Message size exceeds fixed limit")
                            .await?;
                        continue;
                    }
                    for (key, ext) in [
                        ("SMTPUTF8", "SMTPUTF8"),
                        ("BODY", "8BITMIME"),
                        ("RET", "DSN"),
                        ("ENVID", "DSN"),
                    ] {
                        if has_param(params, key) && !session.offers(ext) {
                            shared.violation(id, format!("MAIL {key} without {ext} offered"));
                        }
                    }
                    if !from.is_ascii() && !has_param(params, "SMTPUTF8") {
                        shared.violation(id, format!("non-ASCII sender {from} without SMTPUTF8"));
                    }
                    let r = script
                        .mail
                        .unwrap_or_else(|| "250 2.1.0 Sender OK".to_string());
                    if is_positive(&r) {
                        session.tx = Some(Transaction {
                            mail_from: from.to_string(),
                            mail_params: params.to_string(),
                            rcpt_to: Vec::new(),
                            rcpt_params: Vec::new(),
                        });
                    }
                    conn.reply(&r).await?;
                    if closes(&r) {
                        return Ok(());
                    }
                } else {
                    conn.reply("501 5.5.4 Syntax: MAIL FROM:<address>").await?;
                }
            }
            "RCPT" => {
                let dsn_offered = session.offers("DSN");
                let Some(tx) = session.tx.as_mut() else {
                    conn.reply("503 5.5.1 Need MAIL first").await?;
                    continue;
                };
                let Some((to, params)) = parse_path(arg, "TO:") else {
                    conn.reply("501 5.5.4 Syntax: RCPT TO:<address>").await?;
                    continue;
                };
                for key in ["NOTIFY", "ORCPT"] {
                    if has_param(params, key) && !dsn_offered {
                        shared.violation(id, format!("RCPT {key} without DSN offered"));
                    }
                }
                if !to.is_ascii() && !has_param(&tx.mail_params, "SMTPUTF8") {
                    shared.violation(id, format!("non-ASCII recipient {to} without SMTPUTF8"));
                }
                let r = script
                    .rcpt
                    .get(&to.to_lowercase())
                    .cloned()
                    .unwrap_or_else(|| "250 2.1.5 Recipient OK".to_string());
                if is_positive(&r) {
                    tx.rcpt_to.push(to.to_string());
                    tx.rcpt_params.push(params.to_string());
                }
                conn.reply(&r).await?;
                if closes(&r) {
                    return Ok(());
                }
            }
            "DATA" => {
                let Some(tx) = session.tx.take() else {
                    conn.reply("503 5.5.1 Need MAIL first").await?;
                    continue;
                };
                if tx.rcpt_to.is_empty() {
                    session.tx = Some(tx);
                    conn.reply("554 5.5.1 No valid recipients").await?;
                    continue;
                }
                let r = script
                    .data
                    .unwrap_or_else(|| "354 Start mail input; end with <CRLF>.<CRLF>".into());
                conn.reply(&r).await?;
                if !r.starts_with("354") {
                    // transaction reset (tx already taken)
                    if closes(&r) {
                        return Ok(());
                    }
                    continue;
                }
                let Some(raw) = conn.read_data().await? else {
                    shared.log(id, "-- EOF inside DATA".into());
                    return Ok(());
                };
                let data = unstuff(&raw[..raw.len() - 3]);
                shared.log(id, format!("C: <{} byte(s) of DATA>", raw.len()));
                for problem in data_problems(&raw) {
                    shared.violation(id, problem);
                }
                if !data.is_ascii()
                    && session.offers("8BITMIME")
                    && !has_param(&tx.mail_params, "BODY")
                {
                    shared.violation(id, "8-bit DATA without BODY=8BITMIME".into());
                }
                let mut msg = ReceivedMessage {
                    mail_from: tx.mail_from,
                    rcpt_to: tx.rcpt_to,
                    raw,
                    data,
                    tls: session.tls,
                    auth_user: session.auth_user.clone(),
                    mail_params: tx.mail_params,
                    rcpt_params: tx.rcpt_params,
                    connection: id,
                    reply: String::new(),
                    received_at: std::time::Instant::now(),
                };
                let script = shared.script();
                if script.drop_after_data {
                    shared.log(id, "-- dropping connection after DATA".into());
                    lock(&shared.rejected).push(msg);
                    return Ok(());
                }
                let r = script
                    .data_end
                    .unwrap_or_else(|| format!("250 2.0.0 OK queued as m{id}"));
                msg.reply = r.clone();
                // Record before replying, so a client that saw 250 always finds the message.
                if is_positive(&r) {
                    let mut messages = lock(&shared.messages);
                    messages.push(msg);
                    shared.count.send_replace(messages.len());
                } else {
                    lock(&shared.rejected).push(msg);
                }
                if let Some(delay) = script.delay_data_end {
                    tokio::time::sleep(delay).await;
                }
                conn.reply(&r).await?;
                if closes(&r) {
                    return Ok(());
                }
                if script.close_after_data_end {
                    shared.log(id, "-- closing silently after the reply to DATA".into());
                    return Ok(());
                }
            }
            "RSET" => {
                session.tx = None;
                conn.reply("250 2.0.0 OK").await?;
            }
            "NOOP" => conn.reply("250 2.0.0 OK").await?,
            "VRFY" => conn.reply("252 2.5.2 Cannot VRFY user").await?,
            "QUIT" => {
                conn.reply("221 2.0.0 Bye").await?;
                return Ok(());
            }
            _ => conn.reply("500 5.5.2 Command not recognized").await?,
        }
    }
}

fn auth_configured(shared: &Shared) -> bool {
    shared.auth.is_some() || shared.xoauth2.is_some()
}

fn auth_allowed(shared: &Shared, session: &Session) -> bool {
    auth_configured(shared) && (shared.tls == UpstreamTls::Plain || session.tls)
}

/// Runs one AUTH exchange. Returns `Ok(false)` if the connection must close.
async fn handle_auth(
    conn: &mut Conn<'_>,
    session: &mut Session,
    arg: &str,
    script: &Script,
) -> io::Result<bool> {
    let (mech, initial) = match arg.split_once(' ') {
        Some((m, i)) => (m.to_ascii_uppercase(), Some(i.trim().to_string())),
        None => (arg.to_ascii_uppercase(), None),
    };

    // Reads one continuation line; None = cancelled / EOF (reply already sent for cancel).
    async fn continuation(conn: &mut Conn<'_>, prompt: &str) -> io::Result<Option<String>> {
        conn.reply(prompt).await?;
        match conn.read_line().await? {
            None => Ok(None),
            Some(l) if l.trim() == "*" => {
                conn.reply("501 5.7.0 Authentication cancelled").await?;
                Ok(None)
            }
            Some(l) => Ok(Some(l.trim().to_string())),
        }
    }

    let creds: Option<(String, String)> = match mech.as_str() {
        "XOAUTH2" if conn.shared.xoauth2.is_some() => {
            let resp = match initial {
                Some(i) => i,
                None => match continuation(conn, "334 ").await? {
                    Some(l) => l,
                    None => return Ok(true),
                },
            };
            let Some((user, token)) = b64_decode(&resp).and_then(|b| parse_xoauth2(&b)) else {
                conn.reply("501 5.5.2 Cannot decode AUTH response").await?;
                return Ok(true);
            };
            lock(&conn.shared.bearer_tokens).push(token.clone());
            let (want_user, check) = conn.shared.xoauth2.clone().expect("xoauth2 configured");
            let ok = match &script.auth {
                Some(r) => is_positive(r),
                None => user == want_user && check(&token),
            };
            if ok {
                session.auth_user = Some(user);
                conn.reply("235 2.7.0 Accepted").await?;
                return Ok(true);
            }
            // Google's and Microsoft's way: a 334 with a JSON error, an empty client line,
            // then the final failure.
            let err = base64::engine::general_purpose::STANDARD.encode(
                br#"{"status":"401","schemes":"bearer","scope":"https://mail.google.com/"}"#,
            );
            conn.reply(&format!("334 {err}")).await?;
            let _ = conn.read_line().await?;
            conn.reply("535 5.7.8 Username and Password not accepted (XOAUTH2)")
                .await?;
            return Ok(true);
        }
        _ if conn.shared.auth.is_none() => {
            conn.reply("504 5.5.4 Unrecognized authentication type")
                .await?;
            return Ok(true);
        }
        "PLAIN" => {
            let resp = match initial {
                Some(i) => i,
                None => match continuation(conn, "334 ").await? {
                    Some(l) => l,
                    None => return Ok(true),
                },
            };
            b64_decode(&resp).and_then(|bytes| {
                let mut parts = bytes.split(|&b| b == 0);
                let _authzid = parts.next()?;
                let user = parts.next()?;
                let pass = parts.next()?;
                if parts.next().is_some() {
                    return None;
                }
                Some((
                    String::from_utf8_lossy(user).into_owned(),
                    String::from_utf8_lossy(pass).into_owned(),
                ))
            })
        }
        "LOGIN" => {
            let user = match initial {
                Some(i) => i,
                None => match continuation(conn, "334 VXNlcm5hbWU6").await? {
                    Some(l) => l,
                    None => return Ok(true),
                },
            };
            let pass = match continuation(conn, "334 UGFzc3dvcmQ6").await? {
                Some(l) => l,
                None => return Ok(true),
            };
            match (b64_decode(&user), b64_decode(&pass)) {
                (Some(u), Some(p)) => Some((
                    String::from_utf8_lossy(&u).into_owned(),
                    String::from_utf8_lossy(&p).into_owned(),
                )),
                _ => None,
            }
        }
        _ => {
            conn.reply("504 5.5.4 Unrecognized authentication type")
                .await?;
            return Ok(true);
        }
    };
    let Some((user, pass)) = creds else {
        conn.reply("501 5.5.2 Cannot decode AUTH response").await?;
        return Ok(true);
    };
    let expected = conn.shared.auth.clone().expect("auth configured");
    let r = match &script.auth {
        Some(r) => r.clone(),
        None if (user.as_str(), pass.as_str()) == (expected.0.as_str(), expected.1.as_str()) => {
            "235 2.7.0 Authentication successful".to_string()
        }
        None => "535 5.7.8 Authentication credentials invalid".to_string(),
    };
    if is_positive(&r) {
        session.auth_user = Some(user);
    }
    conn.reply(&r).await?;
    Ok(!closes(&r))
}
