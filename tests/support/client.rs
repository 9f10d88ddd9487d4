//! A deliberately simple SMTP client for tests that need to control every byte: raw writes,
//! reading replies, STARTTLS with the test CA, and AUTH PLAIN.

use std::net::SocketAddr;
use std::time::Duration;

use base64::Engine;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;

use super::certs::TestPki;

pub trait Stream: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Stream for T {}

pub struct Client {
    stream: Box<dyn Stream>,
    buf: Vec<u8>,
}

/// A reply: code and the full text of all its lines.
#[derive(Debug, Clone)]
pub struct Reply {
    pub code: u16,
    pub text: String,
}

impl Reply {
    /// The queue id from `250 2.0.0 Ok: queued as <id>`.
    pub fn queued_id(&self) -> String {
        self.text.rsplit(' ').next().unwrap_or_default().to_string()
    }
}

impl Reply {
    /// `N` of a `451 4.7.1 Rate limit exceeded for project <id>, retry in <N> s` reply.
    pub fn retry_in_secs(&self) -> Option<u64> {
        if self.code != 451 {
            return None;
        }
        self.text
            .rsplit("retry in ")
            .next()?
            .strip_suffix(" s")?
            .parse()
            .ok()
    }
}

impl Client {
    /// Wraps a stream the test set up itself (e.g. TLS with its own client config).
    pub fn from_stream<S: Stream + 'static>(stream: S) -> Client {
        Client {
            stream: Box::new(stream),
            buf: Vec::new(),
        }
    }

    /// Gives the stream back (e.g. to start TLS with a client config of the test's own).
    pub fn into_stream(self) -> Box<dyn Stream> {
        self.stream
    }

    pub async fn connect(addr: SocketAddr) -> Client {
        let tcp = TcpStream::connect(addr).await.expect("connect");
        Client {
            stream: Box::new(tcp),
            buf: Vec::new(),
        }
    }

    /// Connects from a chosen local address (e.g. 127.0.0.2), to look like another client IP.
    pub async fn connect_from(local: std::net::IpAddr, addr: SocketAddr) -> Client {
        let socket = tokio::net::TcpSocket::new_v4().expect("socket");
        socket
            .bind(SocketAddr::new(local, 0))
            .expect("bind local address");
        let tcp = socket.connect(addr).await.expect("connect");
        Client {
            stream: Box::new(tcp),
            buf: Vec::new(),
        }
    }

    /// Connects with implicit TLS.
    pub async fn connect_tls(addr: SocketAddr, pki: &TestPki) -> Client {
        let tcp = TcpStream::connect(addr).await.expect("connect");
        let tls = tls_connect(tcp, pki).await;
        Client {
            stream: Box::new(tls),
            buf: Vec::new(),
        }
    }

    pub async fn write(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).await.expect("write");
        self.stream.flush().await.expect("flush");
    }

    /// Writes, ignoring errors: for tests where the server may close mid-write.
    pub async fn write_lossy(&mut self, bytes: &[u8]) -> bool {
        self.stream.write_all(bytes).await.is_ok() && self.stream.flush().await.is_ok()
    }

    /// Reads one (possibly multi-line) reply; panics on timeout or close.
    pub async fn reply(&mut self) -> Reply {
        self.try_reply(Duration::from_secs(20))
            .await
            .expect("reply expected, connection closed or timed out")
    }

    /// `None` when the server closed the connection or nothing came in time.
    pub async fn try_reply(&mut self, wait: Duration) -> Option<Reply> {
        let deadline = tokio::time::Instant::now() + wait;
        let mut text = String::new();
        loop {
            while let Some(pos) = self.buf.iter().position(|&b| b == b'\n') {
                let line: Vec<u8> = self.buf.drain(..=pos).collect();
                let line = String::from_utf8_lossy(&line).trim_end().to_string();
                if line.len() < 3 {
                    continue;
                }
                let code: u16 = line[..3].parse().unwrap_or(0);
                text.push_str(line.get(4..).unwrap_or(""));
                if line.as_bytes().get(3) != Some(&b'-') {
                    return Some(Reply { code, text });
                }
                text.push('\n');
            }
            let mut chunk = [0u8; 4096];
            match tokio::time::timeout_at(deadline, self.stream.read(&mut chunk)).await {
                Ok(Ok(0)) | Ok(Err(_)) | Err(_) => return None,
                Ok(Ok(n)) => self.buf.extend_from_slice(&chunk[..n]),
            }
        }
    }

    /// True when the server has closed the connection (EOF within `wait`).
    pub async fn closed(&mut self, wait: Duration) -> bool {
        let mut chunk = [0u8; 1024];
        matches!(
            tokio::time::timeout(wait, self.stream.read(&mut chunk)).await,
            Ok(Ok(0)) | Ok(Err(_))
        )
    }

    pub async fn cmd(&mut self, line: &str) -> Reply {
        self.write(format!("{line}\r\n").as_bytes()).await;
        self.reply().await
    }

    /// Greeting, EHLO, STARTTLS, EHLO again. Returns the EHLO reply inside TLS.
    pub async fn starttls(addr: SocketAddr, pki: &TestPki) -> (Client, Reply) {
        let mut c = Client::connect(addr).await;
        assert_eq!(c.reply().await.code, 220);
        assert_eq!(c.cmd("EHLO client.test").await.code, 250);
        assert_eq!(c.cmd("STARTTLS").await.code, 220);
        c.upgrade(pki).await;
        let ehlo = c.cmd("EHLO client.test").await;
        (c, ehlo)
    }

    /// Upgrades the connection to TLS after a 220 to STARTTLS.
    pub async fn upgrade(&mut self, pki: &TestPki) {
        let stream = std::mem::replace(&mut self.stream, Box::new(empty_duplex()));
        self.buf.clear();
        let tls = tls_connect(stream, pki).await;
        self.stream = Box::new(tls);
    }

    pub async fn auth_plain(&mut self, user: &str, token: &str) -> Reply {
        let b = base64::engine::general_purpose::STANDARD.encode(format!("\0{user}\0{token}"));
        self.cmd(&format!("AUTH PLAIN {b}")).await
    }

    /// TLS + AUTH: ready for MAIL FROM.
    pub async fn logged_in(addr: SocketAddr, pki: &TestPki, user: &str, token: &str) -> Client {
        let (mut c, _) = Client::starttls(addr, pki).await;
        let r = c.auth_plain(user, token).await;
        assert_eq!(r.code, 235, "AUTH failed: {r:?}");
        c
    }

    /// Sends a short plain-text message from `from` to `to`, asserts the `250`, and returns
    /// the queue id from it.
    pub async fn submit(&mut self, from: &str, to: &str) -> String {
        let r = self.send_plain(from, to, "hi", "Hello\r\n").await;
        assert_eq!(r.code, 250, "{r:?}");
        r.queued_id()
    }

    /// MAIL, RCPT, DATA of [`plain_message`]`(from, to, subject, body)`: envelope and header agree.
    pub async fn send_plain(&mut self, from: &str, to: &str, subject: &str, body: &str) -> Reply {
        self.send(from, &[to], &plain_message(from, to, subject, body))
            .await
    }

    /// MAIL, RCPT…, DATA with `body` (already dot-stuffed, without the terminator).
    pub async fn send(&mut self, from: &str, to: &[&str], body: &str) -> Reply {
        let r = self.cmd(&format!("MAIL FROM:<{from}>")).await;
        if r.code != 250 {
            return r;
        }
        for t in to {
            let r = self.cmd(&format!("RCPT TO:<{t}>")).await;
            if r.code != 250 {
                return r;
            }
        }
        let r = self.cmd("DATA").await;
        if r.code != 354 {
            return r;
        }
        self.write(body.as_bytes()).await;
        self.write(b".\r\n").await;
        self.reply().await
    }
}

/// A placeholder stream while the real one is moved into the TLS layer.
fn empty_duplex() -> tokio::io::DuplexStream {
    tokio::io::duplex(1).0
}

pub async fn tls_connect<S: AsyncRead + AsyncWrite + Unpin + Send + 'static>(
    stream: S,
    pki: &TestPki,
) -> tokio_rustls::client::TlsStream<S> {
    let connector = tokio_rustls::TlsConnector::from(pki.client_config());
    let name = rustls_pki_types::ServerName::try_from("localhost").unwrap();
    tokio::time::timeout(Duration::from_secs(10), connector.connect(name, stream))
        .await
        .expect("TLS handshake timed out")
        .expect("TLS handshake")
}

pub fn plain_message(from: &str, to: &str, subject: &str, body: &str) -> String {
    format!(
        "From: App <{from}>\r\nTo: <{to}>\r\nSubject: {subject}\r\nMIME-Version: 1.0\r\nContent-Type: text/plain; charset=utf-8\r\n\r\n{body}"
    )
}
