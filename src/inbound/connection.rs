//! Framing for one client connection: command lines and DATA, kept apart from the command
//! logic (as in mini-redis's `connection.rs`).
//!
//! Every read has a deadline. Line ends are CRLF; a line ending in a bare LF is read as CRLF
//! (`[server] bare_newline = "normalize"`, the default) or refused (`"reject"`). A bare CR or a
//! NUL is always an error the session answers with `550 5.5.2` and a close. What defeats SMTP
//! smuggling: only `CRLF.CRLF` ends DATA, and a lone `.` line next to a bare LF — the one thing
//! normalising could turn into an end of data — is refused the same way, so nothing after it
//! is ever read as a command and nothing that could end DATA upstream is stored.
//!
//! Memory: reads go straight into the framing buffer's spare room (no read array inside the
//! connection's future, which every idle session would carry), and a session awaiting a
//! command holds only a small buffer — the one a DATA transfer grew is released once it is
//! empty. With a thousand idle TLS sessions this is a good part of the relay's RSS.

use std::time::Duration;

use smtp_proto::request::receiver::DataReceiver;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::time::{Instant, timeout_at};

use super::reply::Reply;
pub use crate::config::BareNewline;
use crate::memory_budget::SPILL_THRESHOLD;
use crate::queue::QueueError;

/// RFC 5321 §4.5.3.1.4: 512 octets including CRLF.
pub const MAX_COMMAND_LINE: usize = 512;
/// Longest text line in DATA, excluding CRLF (RFC 5322 §2.1.1).
pub const MAX_TEXT_LINE: usize = 998;
/// How much of an over-long command line we read and throw away before giving up.
const MAX_DISCARD: usize = 1024 * 1024;
/// Room a read offers while a command line is awaited: a command (or a pipelined group) fits.
const COMMAND_READ: usize = 512;
/// Room a read offers during DATA.
const DATA_READ: usize = 8192;

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    #[error("line too long")]
    TooLong,
    #[error("bare LF")]
    BareLf,
    #[error("bare CR")]
    BareCr,
    #[error("NUL byte")]
    Nul,
    #[error("lone \".\" line next to a bare LF (SMTP smuggling attempt)")]
    LoneDot,
    #[error("timeout")]
    Timeout,
    #[error("connection closed")]
    Closed,
    #[error("I/O error")]
    Io,
}

impl FrameError {
    /// The reply that goes with this error, if the connection can still take one.
    pub fn reply(self) -> Option<Reply> {
        use super::reply::*;
        match self {
            FrameError::TooLong => Some(LINE_TOO_LONG),
            FrameError::BareLf => Some(BARE_LF),
            FrameError::BareCr => Some(BARE_CR),
            FrameError::Nul => Some(NUL_BYTE),
            FrameError::LoneDot => Some(LONE_DOT),
            FrameError::Timeout => Some(TIMEOUT),
            FrameError::Closed | FrameError::Io => None,
        }
    }
}

/// What DATA produced.
#[derive(Debug)]
pub enum DataOutcome {
    /// The unstuffed message, CRLF line ends, no terminator.
    Message(Body),
    /// Terminated properly but larger than allowed: the bytes were discarded.
    TooLarge,
    /// Terminated properly but a line exceeds 998 octets.
    LineTooLong,
    /// Terminated properly, but a large body could not be written to disk (space guard, I/O).
    NotStored(QueueError),
}

/// A received message body: in memory, or (over [`SPILL_THRESHOLD`]) in an unnamed file on
/// the spool's filesystem, so that a slow upload does not hold memory.
#[derive(Debug)]
pub enum Body {
    Memory(Vec<u8>),
    Spilled { file: std::fs::File, len: usize },
}

/// Makes the file a large body is spilled to (`Queue::spill_file`).
pub type SpillFn<'a> = dyn Fn() -> Result<std::fs::File, QueueError> + Send + Sync + 'a;

impl Body {
    pub fn len(&self) -> usize {
        match self {
            Body::Memory(v) => v.len(),
            Body::Spilled { len, .. } => *len,
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The bytes in memory. A spilled body is read back off the async workers; the caller
    /// reserves memory for it first (`memory_budget.rs`).
    pub async fn into_vec(self) -> std::io::Result<Vec<u8>> {
        match self {
            Body::Memory(v) => Ok(v),
            Body::Spilled { mut file, len } => tokio::task::spawn_blocking(move || {
                use std::io::{Read, Seek};
                file.seek(std::io::SeekFrom::Start(0))?;
                let mut v = Vec::with_capacity(len);
                file.read_to_end(&mut v)?;
                Ok(v)
            })
            .await
            .map_err(std::io::Error::other)?,
        }
    }
}

/// Longest line of a body seen in pieces, excluding CRLF (the spilled path cannot look at the
/// whole message at the end).
#[derive(Debug, Default)]
struct LineLength {
    current: usize,
    longest: usize,
}

impl LineLength {
    fn feed(&mut self, bytes: &[u8]) {
        let mut rest = bytes;
        while let Some(i) = memchr::memchr(b'\n', rest) {
            // DataLines guarantees a CR before every LF.
            let line = self.current + i;
            self.longest = self.longest.max(line.saturating_sub(1));
            self.current = 0;
            rest = &rest[i + 1..];
        }
        self.current += rest.len();
        self.longest = self.longest.max(self.current);
    }
}

/// Where DATA bytes go while they arrive.
enum Sink {
    Memory,
    File(tokio::fs::File),
    /// Too large, or the spill failed: count and drop until the terminator.
    Discard,
}

pub struct Connection<S> {
    stream: S,
    buf: Vec<u8>,
    start: usize,
    /// Code of the last reply written, for the session's outcome log line.
    last_code: u16,
    bare_newline: BareNewline,
}

/// What the DATA line being read holds so far.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum LineSoFar {
    Empty,
    /// Exactly one `.`: an end of data if CRLF follows (and preceded it).
    Dot,
    Other,
}

/// Checks DATA's raw bytes for CR/LF/NUL misuse and writes them out with CRLF line ends,
/// state carried across reads. It also finds the end of data, so that it never reads past it
/// into pipelined commands; smtp-proto's receiver, fed only its output, unstuffs.
#[derive(Debug)]
struct DataLines {
    mode: BareNewline,
    /// The last byte was a CR whose LF has not arrived yet.
    pending_cr: bool,
    line: LineSoFar,
    /// The previous line ended in a bare LF. The first line follows the DATA command, whose
    /// 354 the client waited for, so it counts as after CRLF.
    after_bare_lf: bool,
}

impl DataLines {
    fn new(mode: BareNewline) -> DataLines {
        DataLines {
            mode,
            pending_cr: false,
            line: LineSoFar::Empty,
            after_bare_lf: false,
        }
    }

    /// Appends `input` to `out` with CRLF line ends, stopping after the end of data. Returns
    /// how many bytes of `input` it used and whether the end of data was among them.
    fn feed(&mut self, input: &[u8], out: &mut Vec<u8>) -> Result<(usize, bool), FrameError> {
        let mut i = 0;
        while i < input.len() {
            if self.pending_cr {
                self.pending_cr = false;
                if input[i] != b'\n' {
                    return Err(FrameError::BareCr);
                }
                i += 1;
                if self.end_line(false, out)? {
                    return Ok((i, true));
                }
                continue;
            }
            let rest = &input[i..];
            let Some(p) = memchr::memchr3(b'\r', b'\n', 0, rest) else {
                self.text(rest, out);
                return Ok((input.len(), false));
            };
            self.text(&rest[..p], out);
            i += p + 1;
            match rest[p] {
                b'\r' => self.pending_cr = true,
                b'\n' if self.mode == BareNewline::Reject => return Err(FrameError::BareLf),
                b'\n' => {
                    if self.end_line(true, out)? {
                        return Ok((i, true));
                    }
                }
                _ => return Err(FrameError::Nul),
            }
        }
        Ok((i, false))
    }

    fn text(&mut self, bytes: &[u8], out: &mut Vec<u8>) {
        if bytes.is_empty() {
            return;
        }
        self.line = match (self.line, bytes) {
            (LineSoFar::Empty, b".") => LineSoFar::Dot,
            _ => LineSoFar::Other,
        };
        out.extend_from_slice(bytes);
    }

    /// The current line ended, in a bare LF when `bare`. `Ok(true)`: that was the end of data.
    fn end_line(&mut self, bare: bool, out: &mut Vec<u8>) -> Result<bool, FrameError> {
        let dot = self.line == LineSoFar::Dot;
        if dot && (bare || self.after_bare_lf) {
            return Err(FrameError::LoneDot);
        }
        out.extend_from_slice(b"\r\n");
        self.after_bare_lf = bare;
        self.line = LineSoFar::Empty;
        Ok(dot)
    }
}

/// One command line without its line end, checked: `Err` for a bare CR, a NUL, a bare LF
/// in reject mode, or more than `limit` octets counting a CRLF (a bare LF counts as two).
fn command_line(line: &[u8], limit: usize, mode: BareNewline) -> Result<&[u8], FrameError> {
    let (content, crlf) = match line.strip_suffix(b"\r") {
        Some(c) => (c, true),
        None => (line, false),
    };
    if content.len() + 2 > limit {
        Err(FrameError::TooLong)
    } else if !crlf && mode == BareNewline::Reject {
        Err(FrameError::BareLf)
    } else if content.contains(&b'\r') {
        Err(FrameError::BareCr)
    } else if content.contains(&0) {
        Err(FrameError::Nul)
    } else {
        Ok(content)
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> Connection<S> {
    pub fn new(stream: S) -> Connection<S> {
        Connection {
            stream,
            buf: Vec::new(),
            start: 0,
            last_code: 0,
            bare_newline: BareNewline::default(),
        }
    }

    /// How lines ending in a bare LF are taken (`[server] bare_newline`).
    pub fn with_bare_newline(mut self, mode: BareNewline) -> Connection<S> {
        self.bare_newline = mode;
        self
    }

    /// Gives the stream back, dropping anything buffered: bytes a client pipelined after
    /// STARTTLS must never be read as commands inside TLS (CVE-2011-0411).
    pub fn into_inner(self) -> S {
        self.stream
    }

    pub fn get_ref(&self) -> &S {
        &self.stream
    }

    /// The code of the last reply sent (0 before any).
    pub fn last_code(&self) -> u16 {
        self.last_code
    }

    pub fn has_buffered_input(&self) -> bool {
        self.start < self.buf.len()
    }

    fn pending(&self) -> &[u8] {
        &self.buf[self.start..]
    }

    fn consume(&mut self, n: usize) {
        self.start += n;
        if self.start >= self.buf.len() {
            self.buf.clear();
            self.start = 0;
        }
    }

    /// Reads more input, offering at least `room` bytes of space for it.
    async fn fill(&mut self, deadline: Instant, room: usize) -> Result<(), FrameError> {
        if self.start > 0 && self.start * 2 > self.buf.capacity() {
            self.buf.drain(..self.start);
            self.start = 0;
        }
        if self.buf.is_empty() && self.buf.capacity() > 2 * room {
            // Idle again after a larger transfer: give its buffer back.
            self.buf = Vec::new();
        }
        if self.buf.capacity() - self.buf.len() < room {
            self.buf.reserve(room);
        }
        match timeout_at(deadline, self.stream.read_buf(&mut self.buf)).await {
            Err(_) => Err(FrameError::Timeout),
            Ok(Err(_)) => Err(FrameError::Io),
            Ok(Ok(0)) => Err(FrameError::Closed),
            Ok(Ok(_)) => Ok(()),
        }
    }

    /// Reads one line (without CRLF). Over-long lines are read to their end and thrown away,
    /// so their tail is never taken for a command.
    pub async fn read_line(&mut self, limit: usize, wait: Duration) -> Result<Vec<u8>, FrameError> {
        let deadline = Instant::now() + wait;
        loop {
            if let Some(pos) = memchr::memchr(b'\n', self.pending()) {
                let line = command_line(&self.pending()[..pos], limit, self.bare_newline)
                    .map(<[u8]>::to_vec);
                self.consume(pos + 1);
                return line;
            }
            if self.pending().len() >= limit {
                return self.discard_line(deadline).await;
            }
            self.fill(deadline, COMMAND_READ).await?;
        }
    }

    async fn discard_line(&mut self, deadline: Instant) -> Result<Vec<u8>, FrameError> {
        let mut discarded = 0usize;
        loop {
            if let Some(pos) = self.pending().iter().position(|&b| b == b'\n') {
                self.consume(pos + 1);
                return Err(FrameError::TooLong);
            }
            discarded += self.pending().len();
            self.consume(self.pending().len());
            if discarded > MAX_DISCARD {
                return Err(FrameError::Closed);
            }
            self.fill(deadline, DATA_READ).await?;
        }
    }

    /// Receives DATA up to CRLF.CRLF. `idle` bounds each read, `total` the whole transfer.
    /// Reads DATA into memory (tests and fuzzing; the server spills large bodies).
    pub async fn read_data(
        &mut self,
        max_size: usize,
        idle: Duration,
        total: Duration,
    ) -> Result<DataOutcome, FrameError> {
        self.read_data_spilling(max_size, idle, total, None).await
    }

    /// Reads DATA up to the terminator. Bodies over [`SPILL_THRESHOLD`] go to the file `spill`
    /// makes as they arrive, so memory per session stays near the threshold.
    pub async fn read_data_spilling(
        &mut self,
        max_size: usize,
        idle: Duration,
        total: Duration,
        spill: Option<&SpillFn<'_>>,
    ) -> Result<DataOutcome, FrameError> {
        self.read_data_inner(max_size, idle, total, spill, SPILL_THRESHOLD)
            .await
    }

    /// `threshold` is a parameter so tests can spill tiny bodies at every chunk boundary.
    async fn read_data_inner(
        &mut self,
        max_size: usize,
        idle: Duration,
        total: Duration,
        spill: Option<&SpillFn<'_>>,
        threshold: usize,
    ) -> Result<DataOutcome, FrameError> {
        let overall = Instant::now() + total;
        let mut receiver = DataReceiver::new();
        let mut out = Vec::with_capacity(16 * 1024);
        // smtp-proto misreads the very first line unless primed with a CRLF (DESIGN.md).
        receiver.ingest(&mut b"\r\n".iter(), &mut out);
        let mut primed = true;
        let mut lines = DataLines::new(self.bare_newline);
        let mut normalised = Vec::new();
        let mut line_length = LineLength::default();
        let mut sink = Sink::Memory;
        // Bytes moved out of `out` (to the file or dropped), priming CRLF excluded.
        let mut moved = 0usize;
        let mut too_large = false;
        let mut not_stored: Option<QueueError> = None;
        loop {
            if self.has_buffered_input() {
                normalised.clear();
                let (used, end) = lines.feed(&self.buf[self.start..], &mut normalised)?;
                self.consume(used);
                let mut iter = normalised.iter();
                let done = receiver.ingest(&mut iter, &mut out);
                if done != end || !iter.as_slice().is_empty() {
                    // Both read the same CRLF-only bytes; never seen, but never guessed at.
                    tracing::error!(done, end, "DATA framing and smtp-proto disagree on the end");
                    return Err(FrameError::Io);
                }
                let body_len = moved + out.len() - if primed { 2 } else { 0 };
                if !too_large && body_len > max_size {
                    too_large = true;
                    sink = Sink::Discard;
                }
                let spill_now = match sink {
                    Sink::Memory => spill.is_some() && out.len() > threshold + 2,
                    Sink::File(_) => out.len() > threshold.min(64 * 1024) + 2,
                    Sink::Discard => out.len() > 4096 + 2,
                };
                if spill_now {
                    // Keep the last CRLF: the terminator logic may pop a byte (DESIGN.md).
                    let from = if primed { 2 } else { 0 };
                    let to = out.len() - 2;
                    primed = false;
                    if let (Sink::Memory, Some(make)) = (&sink, spill) {
                        sink = match make() {
                            Ok(f) => Sink::File(tokio::fs::File::from_std(f)),
                            Err(e) => {
                                not_stored = Some(e);
                                Sink::Discard
                            }
                        };
                    }
                    if let Sink::File(f) = &mut sink {
                        line_length.feed(&out[from..to]);
                        if let Err(e) = f.write_all(&out[from..to]).await {
                            not_stored = Some(QueueError::Spill(e));
                            sink = Sink::Discard;
                        }
                    }
                    moved += to - from;
                    out.drain(..to);
                }
                if done {
                    if too_large {
                        return Ok(DataOutcome::TooLarge);
                    }
                    if let Some(e) = not_stored {
                        return Ok(DataOutcome::NotStored(e));
                    }
                    if primed {
                        out.drain(..2);
                    }
                    return Ok(match sink {
                        Sink::File(mut f) => {
                            line_length.feed(&out);
                            let written = async {
                                f.write_all(&out).await?;
                                f.flush().await?;
                                Ok::<_, std::io::Error>(f.into_std().await)
                            };
                            match written.await {
                                Err(e) => DataOutcome::NotStored(QueueError::Spill(e)),
                                Ok(_) if line_length.longest > MAX_TEXT_LINE => {
                                    DataOutcome::LineTooLong
                                }
                                Ok(file) => DataOutcome::Message(Body::Spilled {
                                    file,
                                    len: moved + out.len(),
                                }),
                            }
                        }
                        _ if longest_line(&out) > MAX_TEXT_LINE => DataOutcome::LineTooLong,
                        _ => DataOutcome::Message(Body::Memory(out)),
                    });
                }
            }
            let deadline = std::cmp::min(Instant::now() + idle, overall);
            self.fill(deadline, DATA_READ).await?;
        }
    }

    pub async fn write_reply(&mut self, reply: &Reply) -> Result<(), FrameError> {
        self.write_raw(reply.to_line().as_bytes()).await
    }

    pub async fn write_raw(&mut self, bytes: &[u8]) -> Result<(), FrameError> {
        if let Some(code) = bytes
            .get(..3)
            .and_then(|c| std::str::from_utf8(c).ok())
            .and_then(|c| c.parse().ok())
        {
            self.last_code = code;
        }
        // Replies carry no secrets; the transcript's other half (session.rs logs commands).
        tracing::trace!("S: {}", crate::logging::reply_text(bytes));
        let io = async {
            self.stream.write_all(bytes).await?;
            self.stream.flush().await
        };
        match tokio::time::timeout(Duration::from_secs(60), io).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(_)) => Err(FrameError::Io),
            Err(_) => Err(FrameError::Timeout),
        }
    }

    /// Closes our side, then reads and discards what the client still sends for a moment
    /// ("lingering close"): closing with unread input makes the kernel send a RST, which can
    /// destroy our last reply (say, the 550 for a bare LF) before the client has read it.
    pub async fn shutdown(&mut self) {
        let _ = tokio::time::timeout(Duration::from_secs(5), self.stream.shutdown()).await;
        // On the heap, and only now: an array here would be part of every session's task,
        // idle ones included (module doc).
        let mut sink = vec![0u8; DATA_READ];
        let mut drained = 0usize;
        let deadline = Instant::now() + Duration::from_millis(500);
        while drained < 1024 * 1024 {
            match timeout_at(deadline, self.stream.read(&mut sink)).await {
                Ok(Ok(n)) if n > 0 => drained += n,
                _ => break,
            }
        }
    }
}

/// Length of the longest line, excluding its CRLF.
fn longest_line(msg: &[u8]) -> usize {
    msg.split(|&b| b == b'\n')
        .map(|l| l.strip_suffix(b"\r").unwrap_or(l).len())
        .max()
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    async fn data_of(input: &[u8]) -> (Result<DataOutcome, FrameError>, Vec<u8>) {
        data_in(BareNewline::Normalize, input).await
    }

    async fn data_in(
        mode: BareNewline,
        input: &[u8],
    ) -> (Result<DataOutcome, FrameError>, Vec<u8>) {
        let (mut client, server) = tokio::io::duplex(1 << 20);
        client.write_all(input).await.unwrap();
        drop(client);
        let mut conn = Connection::new(server).with_bare_newline(mode);
        let r = conn
            .read_data(1 << 20, Duration::from_secs(5), Duration::from_secs(5))
            .await;
        let rest = conn.pending().to_vec();
        (r, rest)
    }

    fn message(r: Result<DataOutcome, FrameError>) -> Vec<u8> {
        match r {
            Ok(DataOutcome::Message(Body::Memory(m))) => m,
            other => panic!("expected a message in memory, got {other:?}"),
        }
    }

    fn spill_ok() -> Result<std::fs::File, QueueError> {
        tempfile::tempfile().map_err(QueueError::Spill)
    }

    /// Reads DATA from `wire` written in `split`-byte pieces, spilling past `threshold`.
    async fn spilled(
        wire: Vec<u8>,
        split: usize,
        threshold: usize,
        spill: &SpillFn<'_>,
    ) -> (Result<DataOutcome, FrameError>, Vec<u8>) {
        let (mut client, server) = tokio::io::duplex(64);
        tokio::spawn(async move {
            for c in wire.chunks(split) {
                if client.write_all(c).await.is_err() {
                    break;
                }
            }
        });
        let mut conn = Connection::new(server);
        let t = Duration::from_secs(5);
        let r = conn
            .read_data_inner(1 << 20, t, t, Some(spill), threshold)
            .await;
        let rest = conn
            .read_line(512, Duration::from_millis(200))
            .await
            .unwrap_or_default();
        (r, rest)
    }

    #[tokio::test]
    async fn large_bodies_spill_to_a_file_and_come_back_intact() {
        let mut body = Vec::new();
        let mut i = 0;
        while body.len() < 3 * SPILL_THRESHOLD {
            body.extend_from_slice(format!("line {i} of a large message\r\n").as_bytes());
            i += 1;
        }
        let mut wire = b"..first line dot-stuffed\r\n".to_vec();
        wire.extend_from_slice(&body);
        wire.extend_from_slice(b".\r\nQUIT\r\n");
        let (r, rest) = spilled(wire, 7000, SPILL_THRESHOLD, &spill_ok).await;
        let Ok(DataOutcome::Message(b @ Body::Spilled { .. })) = r else {
            panic!("expected a spilled body, got {r:?}");
        };
        let mut expect = b".first line dot-stuffed\r\n".to_vec();
        expect.extend_from_slice(&body);
        assert_eq!(b.len(), expect.len());
        assert_eq!(b.into_vec().await.unwrap(), expect);
        assert_eq!(rest, b"QUIT");
    }

    #[tokio::test]
    async fn spilled_bodies_are_still_checked_for_lines_and_size() {
        let mut wire = b"short\r\n".repeat(100);
        wire.extend_from_slice(&[b'a'; 999]);
        wire.extend_from_slice(b"\r\nend\r\n.\r\nNOOP\r\n");
        let (r, rest) = spilled(wire, 33, 16, &spill_ok).await;
        assert!(matches!(r, Ok(DataOutcome::LineTooLong)), "{r:?}");
        assert_eq!(rest, b"NOOP");

        let mut wire = b"0123456789abcdef\r\n".repeat(70_000); // > 1 MiB limit
        wire.extend_from_slice(b".\r\nNOOP\r\n");
        let (r, rest) = spilled(wire, 4096, 1000, &spill_ok).await;
        assert!(matches!(r, Ok(DataOutcome::TooLarge)), "{r:?}");
        assert_eq!(rest, b"NOOP");
    }

    #[tokio::test]
    async fn a_failed_spill_reads_to_the_end_and_reports_it() {
        let refuse = || -> Result<std::fs::File, QueueError> {
            Err(QueueError::Spill(std::io::Error::from_raw_os_error(
                libc::ENOSPC,
            )))
        };
        let mut wire = b"0123456789abcdef\r\n".repeat(1000);
        wire.extend_from_slice(b".\r\nRSET\r\n");
        let (r, rest) = spilled(wire, 4096, 100, &refuse).await;
        match r {
            Ok(DataOutcome::NotStored(e)) => assert!(e.is_disk_full(), "{e}"),
            other => panic!("expected NotStored, got {other:?}"),
        }
        assert_eq!(rest, b"RSET");
    }

    #[tokio::test]
    async fn first_line_and_unstuffing() {
        let (r, rest) = data_of(b".\r\nNOOP\r\n").await;
        assert_eq!(message(r), b"");
        assert_eq!(rest, b"NOOP\r\n");
        let (r, _) = data_of(b"..x\r\n..\r\na\r\n.\r\n").await;
        assert_eq!(message(r), b".x\r\n.\r\na\r\n");
        // Fuzzer input: a stuffed lone dot on the first line is content, not the end.
        let (r, _) = data_of(b"..\r\n.\r\n\x11").await;
        assert_eq!(message(r), b".\r\n");
    }

    #[tokio::test]
    async fn smuggling_sequences_are_errors() {
        for mode in [BareNewline::Normalize, BareNewline::Reject] {
            for bad in [
                &b"a\n.\nMAIL FROM:<x@evil.test>\r\n.\r\n"[..],
                b"a\r\n.\nRSET\r\n.\r\n",
                b"a\n.\r\nRSET\r\n.\r\n",
                b".\nRSET\r\n.\r\n",
                b"a\r.\r\nRSET\r\n.\r\n",
                b"a\r\n.\r\r\nRSET\r\n.\r\n",
                b"a\r\n\0.\r\n.\r\n",
                b"a\r\n.\0\r\n.\r\n",
            ] {
                let (r, _) = data_in(mode, bad).await;
                assert!(
                    matches!(
                        r,
                        Err(FrameError::BareLf
                            | FrameError::BareCr
                            | FrameError::Nul
                            | FrameError::LoneDot)
                    ),
                    "{mode:?} {bad:?} → {r:?}"
                );
            }
        }
        // In normalize mode the three bare-LF forms of a lone dot are smuggling attempts.
        for bad in [&b"a\n.\nRSET\r\n"[..], b"a\r\n.\nRSET", b"a\n.\r\nRSET"] {
            let (r, _) = data_of(bad).await;
            assert_eq!(r.unwrap_err(), FrameError::LoneDot, "{bad:?}");
            let (r, _) = data_in(BareNewline::Reject, bad).await;
            assert_eq!(r.unwrap_err(), FrameError::BareLf, "{bad:?}");
        }
    }

    #[tokio::test]
    async fn bare_lf_lines_are_normalised() {
        // smtplib.sendmail(bytes) with LF line ends: stuffed with its own regex, then CRLF.CRLF.
        let (r, rest) = data_of(b"Subject: x\n\n..\n..leading\nlast\n\r\n.\r\nQUIT\r\n").await;
        assert_eq!(
            message(r),
            b"Subject: x\r\n\r\n.\r\n.leading\r\nlast\r\n\r\n"
        );
        assert_eq!(rest, b"QUIT\r\n", "nothing after the end was read as data");
        // Mixed endings; the end of data must still be CRLF.CRLF.
        let (r, _) = data_of(b"a\r\nb\nc\r\n.\r\n").await;
        assert_eq!(message(r), b"a\r\nb\r\nc\r\n");
        let (r, _) = data_in(BareNewline::Reject, b"a\r\nb\nc\r\n.\r\n").await;
        assert_eq!(r.unwrap_err(), FrameError::BareLf);
        // A normalised line is 998 octets + CRLF at most, in memory and spilled.
        for (len, ok) in [(998, true), (999, false)] {
            let mut wire = vec![b'a'; len];
            wire.extend_from_slice(b"\nend\r\n.\r\n");
            let (r, _) = data_of(&wire).await;
            assert_eq!(matches!(r, Ok(DataOutcome::Message(_))), ok, "{len}: {r:?}");
            let mut spilled_wire = b"x\n".repeat(50);
            spilled_wire.extend_from_slice(&wire);
            let (r, _) = spilled(spilled_wire, 17, 16, &spill_ok).await;
            match r {
                Ok(DataOutcome::Message(b)) if ok => {
                    let m = b.into_vec().await.unwrap();
                    assert_eq!(m.len(), 50 * 3 + len + 2 + 5, "{len}");
                    assert!(!m.windows(2).any(|w| w[1] == b'\n' && w[0] != b'\r'));
                }
                Ok(DataOutcome::LineTooLong) if !ok => {}
                other => panic!("{len} spilled: {other:?}"),
            }
        }
    }

    #[tokio::test]
    async fn command_lines_with_bare_lf() {
        let (mut client, server) = tokio::io::duplex(1 << 20);
        let mut input = b"NOOP\nRSET\r\nQUIT x\n".to_vec();
        input.extend_from_slice(&[b'A'; 510]);
        input.extend_from_slice(b"\n");
        input.extend_from_slice(&[b'B'; 511]);
        input.extend_from_slice(b"\nEHLO a\rb\nNOOP\n");
        client.write_all(&input).await.unwrap();
        let mut conn = Connection::new(server);
        let t = Duration::from_secs(5);
        assert_eq!(conn.read_line(512, t).await.unwrap(), b"NOOP");
        assert_eq!(conn.read_line(512, t).await.unwrap(), b"RSET");
        assert_eq!(conn.read_line(512, t).await.unwrap(), b"QUIT x");
        assert_eq!(conn.read_line(512, t).await.unwrap(), vec![b'A'; 510]);
        assert_eq!(conn.read_line(512, t).await, Err(FrameError::TooLong));
        assert_eq!(conn.read_line(512, t).await, Err(FrameError::BareCr));
        assert_eq!(conn.read_line(512, t).await.unwrap(), b"NOOP");
    }

    #[tokio::test]
    async fn long_lines_and_size() {
        let mut long = vec![b'a'; 999];
        long.extend_from_slice(b"\r\n.\r\n");
        assert!(matches!(
            data_of(&long).await.0,
            Ok(DataOutcome::LineTooLong)
        ));
        let (mut client, server) = tokio::io::duplex(1 << 16);
        tokio::spawn(async move {
            for _ in 0..100 {
                client.write_all(&[b'x'; 98]).await.unwrap();
                client.write_all(b"\r\n").await.unwrap();
            }
            client.write_all(b".\r\n").await.unwrap();
        });
        let mut conn = Connection::new(server);
        let r = conn
            .read_data(5000, Duration::from_secs(5), Duration::from_secs(5))
            .await;
        assert!(matches!(r, Ok(DataOutcome::TooLarge)), "{r:?}");
    }

    #[tokio::test]
    async fn command_lines() {
        let (mut client, server) = tokio::io::duplex(1 << 20);
        let mut long = vec![b'A'; 600];
        long.extend_from_slice(b" RSET\r\nNOOP\r\nbad\nQUIT\r\n");
        client.write_all(&long).await.unwrap();
        let mut conn = Connection::new(server).with_bare_newline(BareNewline::Reject);
        let t = Duration::from_secs(5);
        assert_eq!(conn.read_line(512, t).await, Err(FrameError::TooLong));
        assert_eq!(conn.read_line(512, t).await.unwrap(), b"NOOP");
        assert_eq!(conn.read_line(512, t).await, Err(FrameError::BareLf));
    }

    /// A session waiting for its next command holds a small framing buffer, not the one a
    /// DATA transfer grew (idle memory, module doc), and commands still arrive whole.
    #[tokio::test]
    async fn an_idle_session_gives_the_data_buffer_back() {
        let (mut client, server) = tokio::io::duplex(1 << 20);
        let mut conn = Connection::new(server);
        let t = Duration::from_secs(5);
        let body = "x".repeat(70).repeat(1500);
        let mut wire = Vec::new();
        for chunk in body.as_bytes().chunks(70) {
            wire.extend_from_slice(chunk);
            wire.extend_from_slice(b"\r\n");
        }
        wire.extend_from_slice(b".\r\n");
        client.write_all(&wire).await.unwrap();
        let r = conn.read_data(1 << 20, t, t).await;
        assert_eq!(message(r).len(), 1500 * 72);
        assert!(conn.buf.capacity() >= DATA_READ, "{}", conn.buf.capacity());
        let long_rcpt = format!("RCPT TO:<{}@example.net>\r\n", "a".repeat(400));
        client.write_all(long_rcpt.as_bytes()).await.unwrap();
        let line = conn.read_line(MAX_COMMAND_LINE, t).await.unwrap();
        assert_eq!(line, long_rcpt.trim_end().as_bytes());
        // Awaiting the next command: the buffer is back to command size.
        let next = tokio::spawn(async move {
            let line = conn.read_line(MAX_COMMAND_LINE, t).await;
            (line, conn.buf.capacity())
        });
        client.write_all(b"QUIT\r\n").await.unwrap();
        let (line, capacity) = next.await.unwrap();
        assert_eq!(line.unwrap(), b"QUIT");
        assert!(capacity <= 2 * COMMAND_READ, "{capacity}");
    }

    proptest! {
        /// Any body survives dot-stuffing on the wire and unstuffing here, intact, however
        /// the bytes are split across reads; lines sent with a bare LF arrive with CRLF
        /// (normalize), or the message is refused (reject).
        #[test]
        fn stuffed_bodies_round_trip(
            lines in proptest::collection::vec(("[.a-z ]{0,20}", any::<bool>()), 0..20),
            split in 1usize..50,
        ) {
            let mut body = Vec::new();
            let mut wire = Vec::new();
            for (l, bare) in &lines {
                body.extend_from_slice(l.as_bytes());
                body.extend_from_slice(b"\r\n");
                if l.starts_with('.') { wire.push(b'.'); }
                wire.extend_from_slice(l.as_bytes());
                wire.extend_from_slice(if *bare { b"\n" } else { b"\r\n" });
            }
            // As smtplib does: CRLF before the terminator unless the data ends in one.
            if lines.last().is_some_and(|(_, bare)| *bare) {
                wire.extend_from_slice(b"\r\n");
                body.extend_from_slice(b"\r\n");
            }
            wire.extend_from_slice(b".\r\n");
            let any_bare = lines.iter().any(|(_, bare)| *bare);
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
            for mode in [BareNewline::Normalize, BareNewline::Reject] {
                let got = rt.block_on(async {
                    let (mut client, server) = tokio::io::duplex(64);
                    let w = wire.clone();
                    tokio::spawn(async move {
                        for c in w.chunks(split) {
                            if client.write_all(c).await.is_err() { break; }
                        }
                    });
                    let mut conn = Connection::new(server).with_bare_newline(mode);
                    conn.read_data(1 << 20, Duration::from_secs(5), Duration::from_secs(5)).await
                });
                match got {
                    Err(FrameError::BareLf) if mode == BareNewline::Reject && any_bare => {}
                    Ok(DataOutcome::Message(Body::Memory(m)))
                        if mode == BareNewline::Normalize || !any_bare =>
                    {
                        prop_assert_eq!(m, body.clone())
                    }
                    other => prop_assert!(false, "{:?}: {:?}", mode, other),
                }
            }
            // The same body spilled to a file at a tiny threshold, split anywhere.
            let got = rt.block_on(async {
                let (r, _) = spilled(wire.clone(), split, 8, &spill_ok).await;
                match r {
                    Ok(DataOutcome::Message(b)) => b.into_vec().await.ok(),
                    _ => None,
                }
            });
            prop_assert_eq!(got, Some(body));
        }

        /// Pieces smuggling is made of, in any order: whatever ends DATA is a real CRLF.CRLF,
        /// and what was accepted is CRLF-only and reads back identically once stuffed for
        /// the upstream.
        #[test]
        fn only_crlf_dot_crlf_ends_data(
            pieces in proptest::collection::vec(
                proptest::sample::select(vec![&b"\r\n"[..], b"\n", b"\r", b".", b"..", b"a", b"\0", b"\r\n.\r\n"]),
                0..30,
            ),
        ) {
            let input = pieces.concat();
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
            let (r, rest) = rt.block_on(data_of(&input));
            if let Ok(DataOutcome::Message(Body::Memory(m))) = r {
                let mut primed = b"\r\n".to_vec();
                primed.extend_from_slice(&input[..input.len() - rest.len()]);
                prop_assert!(primed.ends_with(b"\r\n.\r\n"), "{:?}", input);
                for (i, &b) in m.iter().enumerate() {
                    prop_assert!(b != 0);
                    prop_assert!(b != b'\n' || (i > 0 && m[i - 1] == b'\r'));
                    prop_assert!(b != b'\r' || m.get(i + 1) == Some(&b'\n'));
                }
                let wire = crate::outbound::upstream::dot_stuff(&m);
                let (again, _) = rt.block_on(data_in(BareNewline::Reject, &wire));
                prop_assert_eq!(message(again), m);
            }
        }
    }
}
