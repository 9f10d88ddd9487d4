//! Load generator and fast sink for the Postfix comparison (bench/compare.sh, BENCHMARKS.md).
//!
//! It is an example rather than part of the library because it is a measuring instrument: it
//! speaks SMTP the way an app does (connect, optional STARTTLS or implicit TLS, AUTH PLAIN, then
//! MAIL/RCPT/DATA, K messages per connection) against any submission server, so the same bytes
//! and the same client code go to smtp-relay and to Postfix. The sink runs in the same process
//! so "done" means "the upstream holds every accepted message", not "the server said 250"; it
//! only counts messages carrying this run's token, so stragglers from an earlier run cannot
//! finish a later one.
//!
//! Subcommands: `run` (measure), `sink` (a standalone sink, for trying things by hand, or with
//! `--token` the counting sink for another generator, bench/pygen.py),
//! `idle` (hold N authenticated-capable TLS sessions open after EHLO, for memory figures).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use base64::Engine;
use clap::{Parser, Subcommand, ValueEnum};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, ServerName};
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Mutex;
use tokio_rustls::TlsConnector;

#[derive(Parser)]
#[command(about = "SMTP submission load generator with a built-in counting sink")]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Copy, Clone, ValueEnum, PartialEq, Eq, Debug)]
enum Mode {
    /// No TLS (loopback plaintext listener).
    Plain,
    Starttls,
    Implicit,
}

#[derive(clap::Args, Clone)]
struct Target {
    /// Submission server address.
    #[arg(long)]
    addr: SocketAddr,
    #[arg(long, value_enum, default_value = "starttls")]
    mode: Mode,
    /// PEM file of the CA (or self-signed certificate) the server's certificate chains to.
    #[arg(long)]
    ca: Option<PathBuf>,
    /// Name to verify the server certificate against.
    #[arg(long, default_value = "localhost")]
    server_name: String,
    /// Per-step deadline (seconds).
    #[arg(long, default_value_t = 60)]
    step_secs: u64,
    /// Never resume a TLS session: every connection makes a full handshake (the server signs
    /// with its certificate key each time), like clients that keep no sessions.
    #[arg(long)]
    no_resume: bool,
}

#[derive(Subcommand)]
enum Cmd {
    /// Send M messages of S bytes with N concurrent clients; print figures.
    Run {
        #[command(flatten)]
        target: Target,
        /// AUTH PLAIN username; no AUTH when absent.
        #[arg(long)]
        user: Option<String>,
        #[arg(long, env = "LOADGEN_PASS")]
        pass: Option<String>,
        #[arg(long, default_value_t = 16)]
        clients: usize,
        #[arg(long, default_value_t = 1000)]
        messages: usize,
        /// Message size in bytes (headers included).
        #[arg(long, default_value_t = 4096)]
        size: usize,
        /// Messages per connection.
        #[arg(long, default_value_t = 1)]
        per_conn: usize,
        #[arg(long, default_value = "bench@bench.example")]
        from: String,
        #[arg(long, default_value = "rcpt@sink.example")]
        to: String,
        /// Run a counting sink here and wait until it holds every accepted message.
        #[arg(long)]
        sink: Option<SocketAddr>,
        /// Give up (and report what was done) after this many seconds.
        #[arg(long, default_value_t = 300)]
        max_secs: u64,
        /// Label copied into the JSON line.
        #[arg(long, default_value = "")]
        label: String,
        /// Send over the HTTP send API instead of SMTP: `POST /emails` to `--addr` (plain
        /// HTTP), `--pass` as the bearer token, one keep-alive connection per client.
        #[arg(long)]
        http: bool,
    },
    /// Accept and discard mail, printing a count every second. With `--token`: the sink of
    /// `run --sink` for another generator (bench/pygen.py): prints `ready` once listening, counts
    /// the messages carrying the token, and exits with one JSON line once the expected number
    /// arrived or `--max-secs` passed.
    Sink {
        #[arg(long)]
        listen: SocketAddr,
        /// The run's token (its `X-Bench-Run` header): count only messages that carry it.
        #[arg(long)]
        token: Option<String>,
        /// How many messages with the token to wait for; without it, the first line of stdin
        /// gives the number (the generator's accepted count once it is done; end of stdin: 0).
        #[arg(long, requires = "token")]
        expect: Option<usize>,
        /// With `--token`: stop waiting this many seconds after the start.
        #[arg(long, default_value_t = 300)]
        max_secs: u64,
    },
    /// Open N connections, finish TLS and EHLO, then hold them idle.
    Idle {
        #[command(flatten)]
        target: Target,
        #[arg(long, default_value_t = 1000)]
        connections: usize,
        /// How long to hold them (seconds) after all are open.
        #[arg(long, default_value_t = 30)]
        hold_secs: u64,
        /// Concurrent handshakes while opening.
        #[arg(long, default_value_t = 50)]
        parallel: usize,
    },
}

type BoxError = Box<dyn std::error::Error + Send + Sync>;

trait Stream: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Stream for T {}

/// Why a message was not accepted: a reply code, or what went wrong on the wire.
#[derive(Debug)]
enum Failure {
    Reply(u16, String),
    Io(String),
    Timeout,
}

impl Failure {
    fn key(&self) -> String {
        match self {
            Failure::Reply(code, _) => code.to_string(),
            Failure::Io(_) => "io".into(),
            Failure::Timeout => "timeout".into(),
        }
    }

    fn describe(&self) -> String {
        match self {
            Failure::Reply(_, text) => text.clone(),
            Failure::Io(e) => format!("i/o: {e}"),
            Failure::Timeout => "timed out".into(),
        }
    }
}

impl From<std::io::Error> for Failure {
    fn from(e: std::io::Error) -> Self {
        Failure::Io(e.to_string())
    }
}

struct Smtp<S> {
    stream: S,
    buf: Vec<u8>,
    step: Duration,
}

impl<S: AsyncRead + AsyncWrite + Unpin> Smtp<S> {
    fn new(stream: S, step: Duration) -> Self {
        Smtp {
            stream,
            buf: Vec::with_capacity(1024),
            step,
        }
    }

    async fn reply(&mut self) -> Result<(u16, String), Failure> {
        let step = self.step;
        tokio::time::timeout(step, self.reply_inner())
            .await
            .map_err(|_| Failure::Timeout)?
    }

    async fn reply_inner(&mut self) -> Result<(u16, String), Failure> {
        let mut text = String::new();
        loop {
            while let Some(pos) = self.buf.iter().position(|&b| b == b'\n') {
                let line: Vec<u8> = self.buf.drain(..=pos).collect();
                let line = String::from_utf8_lossy(&line);
                let line = line.trim_end();
                let code: u16 = line.get(..3).and_then(|c| c.parse().ok()).unwrap_or(0);
                text.push_str(line);
                if line.as_bytes().get(3) != Some(&b'-') {
                    return Ok((code, text));
                }
                text.push('\n');
            }
            let mut chunk = [0u8; 4096];
            let n = self.stream.read(&mut chunk).await?;
            if n == 0 {
                return Err(Failure::Io("connection closed".into()));
            }
            self.buf.extend_from_slice(&chunk[..n]);
        }
    }

    async fn send(&mut self, bytes: &[u8]) -> Result<(), Failure> {
        let step = self.step;
        tokio::time::timeout(step, async {
            self.stream.write_all(bytes).await?;
            self.stream.flush().await
        })
        .await
        .map_err(|_| Failure::Timeout)??;
        Ok(())
    }

    /// Sends a command and expects `want`.
    async fn cmd(&mut self, line: &str, want: u16) -> Result<String, Failure> {
        self.send(line.as_bytes()).await?;
        self.expect(want).await
    }

    async fn expect(&mut self, want: u16) -> Result<String, Failure> {
        let (code, text) = self.reply().await?;
        if code == want {
            Ok(text)
        } else {
            Err(Failure::Reply(code, text))
        }
    }
}

fn tls_connector(ca: &Option<PathBuf>, no_resume: bool) -> Result<TlsConnector, BoxError> {
    let mut roots = rustls::RootCertStore::empty();
    if let Some(path) = ca {
        for cert in CertificateDer::pem_file_iter(path)? {
            roots.add(cert?)?;
        }
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_no_client_auth();
    if no_resume {
        config.resumption = rustls::client::Resumption::disabled();
    }
    Ok(TlsConnector::from(Arc::new(config)))
}

struct Conn {
    target: Target,
    tls: TlsConnector,
    name: ServerName<'static>,
}

impl Conn {
    /// Connects and gets as far as a session ready for AUTH (after the post-TLS EHLO).
    async fn open(&self) -> Result<Smtp<Box<dyn Stream>>, Failure> {
        let step = Duration::from_secs(self.target.step_secs);
        let tcp = tokio::time::timeout(step, TcpStream::connect(self.target.addr))
            .await
            .map_err(|_| Failure::Timeout)??;
        let _ = tcp.set_nodelay(true);
        let stream: Box<dyn Stream> = match self.target.mode {
            Mode::Plain => Box::new(tcp),
            Mode::Implicit => Box::new(self.handshake(tcp, step).await?),
            Mode::Starttls => {
                let mut s = Smtp::new(tcp, step);
                s.expect(220).await?;
                s.cmd("EHLO loadgen.bench\r\n", 250).await?;
                s.cmd("STARTTLS\r\n", 220).await?;
                Box::new(self.handshake(s.stream, step).await?)
            }
        };
        let mut s = Smtp::new(stream, step);
        if self.target.mode != Mode::Starttls {
            s.expect(220).await?;
        }
        s.cmd("EHLO loadgen.bench\r\n", 250).await?;
        Ok(s)
    }

    async fn handshake(
        &self,
        tcp: TcpStream,
        step: Duration,
    ) -> Result<tokio_rustls::client::TlsStream<TcpStream>, Failure> {
        tokio::time::timeout(step, self.tls.connect(self.name.clone(), tcp))
            .await
            .map_err(|_| Failure::Timeout)?
            .map_err(|e| Failure::Io(format!("tls: {e}")))
    }
}

/// Counts messages carrying the run token; shared by the in-process sink and the waiter.
struct SinkState {
    token: Vec<u8>,
    matched: AtomicUsize,
    total: AtomicUsize,
    last: Mutex<Option<Instant>>,
}

async fn sink_listen(addr: SocketAddr, state: Arc<SinkState>) -> Result<(), BoxError> {
    let listener = TcpListener::bind(addr).await?;
    tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                continue;
            };
            let state = state.clone();
            tokio::spawn(async move {
                let _ = sink_session(tcp, state).await;
            });
        }
    });
    Ok(())
}

/// Minimal ESMTP receiver: advertises PIPELINING and answers every command in order, so
/// pipelined batches work without any lookahead.
async fn sink_session(tcp: TcpStream, state: Arc<SinkState>) -> std::io::Result<()> {
    let _ = tcp.set_nodelay(true);
    let (r, mut w) = tcp.into_split();
    let mut r = BufReader::with_capacity(64 * 1024, r);
    w.write_all(b"220 sink.bench ESMTP\r\n").await?;
    let mut line = Vec::with_capacity(1024);
    let idle = Duration::from_secs(600);
    loop {
        if !read_line(&mut r, &mut line, idle).await? {
            return Ok(());
        }
        let verb: String = line
            .iter()
            .take(4)
            .map(|b| b.to_ascii_uppercase() as char)
            .collect();
        match verb.as_str() {
            "EHLO" => {
                w.write_all(
                    b"250-sink.bench\r\n250-PIPELINING\r\n250-8BITMIME\r\n250 SIZE 1000000000\r\n",
                )
                .await?
            }
            "HELO" | "MAIL" | "RCPT" | "RSET" | "NOOP" => w.write_all(b"250 2.0.0 Ok\r\n").await?,
            "QUIT" => {
                w.write_all(b"221 2.0.0 Bye\r\n").await?;
                return Ok(());
            }
            "DATA" => {
                w.write_all(b"354 End data with <CR><LF>.<CR><LF>\r\n")
                    .await?;
                let mut in_headers = true;
                let mut found = false;
                loop {
                    if !read_line(&mut r, &mut line, idle).await? {
                        return Ok(());
                    }
                    if line == b".\r\n" {
                        break;
                    }
                    if in_headers {
                        if line == b"\r\n" {
                            in_headers = false;
                        } else if !found && contains(&line, &state.token) {
                            found = true;
                        }
                    }
                }
                state.total.fetch_add(1, Ordering::Relaxed);
                if found {
                    state.matched.fetch_add(1, Ordering::Relaxed);
                    *state.last.lock().await = Some(Instant::now());
                }
                w.write_all(b"250 2.0.0 Ok: queued\r\n").await?;
            }
            _ => {
                w.write_all(b"502 5.5.2 Error: command not recognized\r\n")
                    .await?
            }
        }
    }
}

/// Reads one line into `line` (cleared first); false at end of stream.
async fn read_line<R: tokio::io::AsyncBufRead + Unpin>(
    r: &mut R,
    line: &mut Vec<u8>,
    idle: Duration,
) -> std::io::Result<bool> {
    line.clear();
    let n = tokio::time::timeout(idle, r.read_until(b'\n', line))
        .await
        .map_err(|_| std::io::Error::other("idle"))??;
    Ok(n > 0)
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    !needle.is_empty() && hay.windows(needle.len()).any(|w| w == needle)
}

/// The body shared by every message: 76-character lines up to the requested size.
fn make_body(size: usize, header_len: usize) -> Vec<u8> {
    let want = size.saturating_sub(header_len).max(2);
    let line = b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789abcdefghijklmn\r\n";
    let mut body = Vec::with_capacity(want + line.len());
    while body.len() + line.len() <= want {
        body.extend_from_slice(line);
    }
    if body.len() < want {
        let rest = want - body.len();
        if rest >= 3 {
            body.extend(std::iter::repeat_n(b'x', rest - 2));
        }
        body.extend_from_slice(b"\r\n");
    }
    body
}

struct RunShared {
    conn: Conn,
    auth: Option<String>,
    from: String,
    to: String,
    token: String,
    body: Vec<u8>,
    messages: usize,
    per_conn: usize,
    next: AtomicUsize,
    accepted: AtomicUsize,
    deadline: Instant,
    latencies: Mutex<Vec<u64>>,
    failures: Mutex<BTreeMap<String, usize>>,
    first_failure: Mutex<Option<String>>,
    bytes_out: AtomicU64,
    /// `--http`: the client, the `POST /emails` URL and the bearer token.
    http: Option<(reqwest::Client, String, String)>,
}

impl RunShared {
    fn headers(&self, n: usize) -> String {
        format!(
            "From: Bench <{from}>\r\nTo: <{to}>\r\nSubject: bench message {n}\r\nDate: Thu, 01 Jan 2026 00:00:00 +0000\r\nMessage-ID: <{n}.{token}@bench.example>\r\nX-Bench-Run: {token}\r\nMIME-Version: 1.0\r\nContent-Type: text/plain; charset=us-ascii\r\n\r\n",
            from = self.from,
            to = self.to,
            token = self.token,
        )
    }

    async fn fail(&self, f: Failure) {
        *self.failures.lock().await.entry(f.key()).or_default() += 1;
        let mut first = self.first_failure.lock().await;
        if first.is_none() {
            *first = Some(f.describe());
        }
    }

    /// Takes the next message number, or None when all are taken or time is up.
    fn take(&self) -> Option<usize> {
        if Instant::now() >= self.deadline {
            return None;
        }
        let n = self.next.fetch_add(1, Ordering::Relaxed);
        (n < self.messages).then_some(n)
    }
}

/// One HTTP client task: `POST /emails` for each message it takes, one request at a time; the
/// shared client's pool keeps a connection alive per task (HTTP/1.1 keep-alive).
async fn http_client(shared: Arc<RunShared>) {
    let Some((client, url, token)) = &shared.http else {
        return;
    };
    let text = String::from_utf8_lossy(&shared.body).into_owned();
    while let Some(n) = shared.take() {
        let body = serde_json::json!({
            "from": format!("Bench <{}>", shared.from),
            "to": [shared.to],
            "subject": format!("bench message {n}"),
            "text": text,
            "headers": { "X-Bench-Run": shared.token },
        });
        let t0 = Instant::now();
        let sent = client.post(url).bearer_auth(token).json(&body).send().await;
        match sent {
            Ok(r) if r.status().is_success() => {
                let _ = r.bytes().await;
                shared
                    .latencies
                    .lock()
                    .await
                    .push(t0.elapsed().as_micros() as u64);
                shared.accepted.fetch_add(1, Ordering::Relaxed);
                shared
                    .bytes_out
                    .fetch_add(shared.body.len() as u64, Ordering::Relaxed);
            }
            Ok(r) => {
                let code = r.status().as_u16();
                let text = r.text().await.unwrap_or_default();
                shared.fail(Failure::Reply(code, text)).await;
            }
            Err(e) if e.is_timeout() => shared.fail(Failure::Timeout).await,
            Err(e) => shared.fail(Failure::Io(e.to_string())).await,
        }
    }
}

async fn client(shared: Arc<RunShared>) {
    if shared.http.is_some() {
        return http_client(shared).await;
    }
    while let Some(first) = shared.take() {
        let started = Instant::now();
        let mut s = match shared.conn.open().await {
            Ok(s) => s,
            Err(f) => {
                shared.fail(f).await;
                continue;
            }
        };
        if let Some(auth) = &shared.auth
            && let Err(f) = s.cmd(auth, 235).await
        {
            shared.fail(f).await;
            continue;
        }
        let mut n = Some(first);
        let mut t0 = started;
        let mut sent = 0;
        while let Some(num) = n {
            match send_one(&shared, &mut s, num).await {
                Ok(()) => {
                    let us = t0.elapsed().as_micros() as u64;
                    shared.latencies.lock().await.push(us);
                    shared.accepted.fetch_add(1, Ordering::Relaxed);
                }
                Err(f) => {
                    // The session state is unknown after a failure: start a new connection.
                    shared.fail(f).await;
                    break;
                }
            }
            sent += 1;
            if sent >= shared.per_conn {
                let _ = s.cmd("QUIT\r\n", 221).await;
                break;
            }
            n = shared.take();
            t0 = Instant::now();
        }
    }
}

async fn send_one(
    shared: &RunShared,
    s: &mut Smtp<Box<dyn Stream>>,
    num: usize,
) -> Result<(), Failure> {
    s.cmd(&format!("MAIL FROM:<{}>\r\n", shared.from), 250)
        .await?;
    s.cmd(&format!("RCPT TO:<{}>\r\n", shared.to), 250).await?;
    s.cmd("DATA\r\n", 354).await?;
    let headers = shared.headers(num);
    s.send(headers.as_bytes()).await?;
    // Large bodies go in pieces so a TLS writer never buffers the whole message at once.
    for chunk in shared.body.chunks(256 * 1024) {
        s.send(chunk).await?;
    }
    s.send(b".\r\n").await?;
    shared.bytes_out.fetch_add(
        (headers.len() + shared.body.len()) as u64,
        Ordering::Relaxed,
    );
    s.expect(250).await?;
    Ok(())
}

fn percentile(sorted: &[u64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let idx = ((p / 100.0) * (sorted.len() as f64 - 1.0)).round() as usize;
    sorted[idx.min(sorted.len() - 1)] as f64 / 1000.0
}

#[allow(clippy::too_many_arguments)]
async fn run(
    target: Target,
    user: Option<String>,
    pass: Option<String>,
    clients: usize,
    messages: usize,
    size: usize,
    per_conn: usize,
    from: String,
    to: String,
    sink: Option<SocketAddr>,
    max_secs: u64,
    label: String,
    http: bool,
) -> Result<(), BoxError> {
    let token = format!(
        "run{:x}{:x}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)?
            .as_nanos()
    );
    let sink_state = Arc::new(SinkState {
        token: token.clone().into_bytes(),
        matched: AtomicUsize::new(0),
        total: AtomicUsize::new(0),
        last: Mutex::new(None),
    });
    if let Some(addr) = sink {
        sink_listen(addr, sink_state.clone()).await?;
    }
    let http = if http {
        // reqwest is built without a rustls provider of its own: the one the relay uses.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let step = Duration::from_secs(target.step_secs);
        Some((
            reqwest::Client::builder()
                .timeout(step)
                .pool_max_idle_per_host(clients)
                .build()?,
            format!("http://{}/emails", target.addr),
            pass.clone()
                .ok_or("--http needs --pass (the project token)")?,
        ))
    } else {
        None
    };
    let auth = match (user, pass) {
        (Some(u), Some(p)) => Some(format!(
            "AUTH PLAIN {}\r\n",
            base64::engine::general_purpose::STANDARD.encode(format!("\0{u}\0{p}"))
        )),
        (Some(_), None) => return Err("--user needs --pass (or LOADGEN_PASS)".into()),
        _ => None,
    };
    let name = ServerName::try_from(target.server_name.clone())?;
    let conn = Conn {
        tls: tls_connector(&target.ca, target.no_resume)?,
        target,
        name,
    };
    let started = Instant::now();
    let deadline = started + Duration::from_secs(max_secs);
    let mut shared = RunShared {
        conn,
        auth,
        from,
        to,
        token,
        body: Vec::new(),
        messages,
        per_conn: per_conn.max(1),
        next: AtomicUsize::new(0),
        accepted: AtomicUsize::new(0),
        deadline,
        latencies: Mutex::new(Vec::with_capacity(messages)),
        failures: Mutex::new(BTreeMap::new()),
        first_failure: Mutex::new(None),
        bytes_out: AtomicU64::new(0),
        http,
    };
    shared.body = make_body(size, shared.headers(messages).len());
    let shared = Arc::new(shared);
    let tasks: Vec<_> = (0..clients)
        .map(|_| tokio::spawn(client(shared.clone())))
        .collect();
    for t in tasks {
        let _ = t.await;
    }
    let submit_secs = started.elapsed().as_secs_f64();
    let accepted = shared.accepted.load(Ordering::Relaxed);
    let mut delivered = accepted;
    let mut e2e_secs = submit_secs;
    if sink.is_some() {
        while sink_state.matched.load(Ordering::Relaxed) < accepted && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        delivered = sink_state.matched.load(Ordering::Relaxed);
        if let Some(last) = *sink_state.last.lock().await {
            e2e_secs = last.duration_since(started).as_secs_f64().max(submit_secs);
        }
    }
    let mut lat = shared.latencies.lock().await.clone();
    lat.sort_unstable();
    let failures = shared.failures.lock().await.clone();
    let result = serde_json::json!({
        "label": label,
        "clients": clients,
        "messages": messages,
        "size": size,
        "per_conn": per_conn,
        "accepted": accepted,
        "delivered": delivered,
        "complete": delivered >= messages,
        "submit_secs": submit_secs,
        "e2e_secs": e2e_secs,
        "submit_mps": accepted as f64 / submit_secs,
        "e2e_mps": delivered as f64 / e2e_secs,
        "p50_ms": percentile(&lat, 50.0),
        "p90_ms": percentile(&lat, 90.0),
        "p99_ms": percentile(&lat, 99.0),
        "max_ms": lat.last().map(|&v| v as f64 / 1000.0).unwrap_or(0.0),
        "errors": failures,
        "first_error": *shared.first_failure.lock().await,
        "sink_other": sink_state.total.load(Ordering::Relaxed) - sink_state.matched.load(Ordering::Relaxed),
    });
    eprintln!(
        "{label}: {accepted}/{messages} accepted, {delivered} delivered; submit {:.1} msg/s, end-to-end {:.1} msg/s; latency ms p50 {:.2} p90 {:.2} p99 {:.2} max {:.2}; errors {:?}",
        result["submit_mps"].as_f64().unwrap_or(0.0),
        result["e2e_mps"].as_f64().unwrap_or(0.0),
        result["p50_ms"].as_f64().unwrap_or(0.0),
        result["p90_ms"].as_f64().unwrap_or(0.0),
        result["p99_ms"].as_f64().unwrap_or(0.0),
        result["max_ms"].as_f64().unwrap_or(0.0),
        failures,
    );
    println!("{result}");
    Ok(())
}

async fn idle(
    target: Target,
    connections: usize,
    hold_secs: u64,
    parallel: usize,
) -> Result<(), BoxError> {
    let name = ServerName::try_from(target.server_name.clone())?;
    let conn = Arc::new(Conn {
        tls: tls_connector(&target.ca, target.no_resume)?,
        target,
        name,
    });
    let sem = Arc::new(tokio::sync::Semaphore::new(parallel.max(1)));
    let tasks: Vec<_> = (0..connections)
        .map(|_| {
            let conn = conn.clone();
            let sem = sem.clone();
            tokio::spawn(async move {
                let _permit = sem.acquire_owned().await.ok()?;
                conn.open().await.ok()
            })
        })
        .collect();
    let mut open = Vec::new();
    for t in tasks {
        if let Ok(Some(s)) = t.await {
            open.push(s);
        }
    }
    println!("ready {}", open.len());
    eprintln!("{} of {connections} connections open and idle", open.len());
    tokio::time::sleep(Duration::from_secs(hold_secs)).await;
    drop(open);
    Ok(())
}

async fn standalone_sink(listen: SocketAddr) -> Result<(), BoxError> {
    let state = Arc::new(SinkState {
        token: Vec::new(),
        matched: AtomicUsize::new(0),
        total: AtomicUsize::new(0),
        last: Mutex::new(None),
    });
    sink_listen(listen, state.clone()).await?;
    let mut last = 0;
    loop {
        tokio::time::sleep(Duration::from_secs(1)).await;
        let now = state.total.load(Ordering::Relaxed);
        if now != last {
            eprintln!("sink: {now} messages (+{})", now - last);
            last = now;
        }
    }
}

/// `sink --token`: waits for the expected number of messages with the token (or the deadline),
/// then prints `{token, expected, matched, other, complete, last_unix}`; `last_unix` is when the
/// last of them arrived (seconds since the epoch, so another process can take its e2e time).
async fn token_sink(
    listen: SocketAddr,
    token: String,
    expect: Option<usize>,
    max_secs: u64,
) -> Result<(), BoxError> {
    let deadline = Instant::now() + Duration::from_secs(max_secs);
    let state = Arc::new(SinkState {
        token: token.clone().into_bytes(),
        matched: AtomicUsize::new(0),
        total: AtomicUsize::new(0),
        last: Mutex::new(None),
    });
    sink_listen(listen, state.clone()).await?;
    println!("ready");
    let expected = match expect {
        Some(n) => n,
        None => {
            // A plain thread: a pending tokio stdin read would hold up the runtime's shutdown.
            let (tx, rx) = tokio::sync::oneshot::channel();
            std::thread::spawn(move || {
                let mut line = String::new();
                let _ = std::io::stdin().read_line(&mut line);
                let _ = tx.send(line.trim().parse().unwrap_or(0));
            });
            match tokio::time::timeout_at(deadline.into(), rx).await {
                Ok(Ok(n)) => n,
                _ => 0,
            }
        }
    };
    while state.matched.load(Ordering::Relaxed) < expected && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let matched = state.matched.load(Ordering::Relaxed);
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH)?;
    let last_unix = state
        .last
        .lock()
        .await
        .map(|last| now.saturating_sub(last.elapsed()).as_secs_f64());
    let result = serde_json::json!({
        "token": token,
        "expected": expected,
        "matched": matched,
        "other": state.total.load(Ordering::Relaxed) - matched,
        "complete": matched >= expected,
        "last_unix": last_unix,
    });
    println!("{result}");
    Ok(())
}

#[tokio::main]
async fn main() -> Result<(), BoxError> {
    match Cli::parse().command {
        Cmd::Run {
            target,
            user,
            pass,
            clients,
            messages,
            size,
            per_conn,
            from,
            to,
            sink,
            max_secs,
            label,
            http,
        } => {
            run(
                target, user, pass, clients, messages, size, per_conn, from, to, sink, max_secs,
                label, http,
            )
            .await
        }
        Cmd::Sink {
            listen,
            token: Some(token),
            expect,
            max_secs,
        } => token_sink(listen, token, expect, max_secs).await,
        Cmd::Sink { listen, .. } => standalone_sink(listen).await,
        Cmd::Idle {
            target,
            connections,
            hold_secs,
            parallel,
        } => idle(target, connections, hold_secs, parallel).await,
    }
}
