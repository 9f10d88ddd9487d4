//! Helpers for the operations tests: a stand-in for systemd's notify socket (a real Unix
//! datagram socket the server writes to), a metrics scrape over plain HTTP, and a TLS
//! connection that reports the certificate the server presented.

use std::net::SocketAddr;
use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use rustls_pki_types::{CertificateDer, ServerName};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::certs::TestPki;

/// What systemd would receive on `$NOTIFY_SOCKET`.
pub struct NotifySocket {
    pub path: PathBuf,
    sock: UnixDatagram,
    /// Every datagram so far, in order.
    pub seen: Vec<String>,
}

impl NotifySocket {
    pub fn bind(dir: &Path) -> NotifySocket {
        let path = dir.join("notify.sock");
        let sock = UnixDatagram::bind(&path).expect("bind notify socket");
        sock.set_read_timeout(Some(Duration::from_millis(100)))
            .expect("read timeout");
        NotifySocket {
            path,
            sock,
            seen: Vec::new(),
        }
    }

    /// Waits for a datagram containing the line `state` (e.g. `READY=1`) that arrives after
    /// the ones already consumed; returns that datagram.
    pub fn wait_for(&mut self, state: &str, timeout: Duration) -> String {
        let deadline = Instant::now() + timeout;
        let mut buf = [0u8; 4096];
        loop {
            if let Ok(n) = self.sock.recv(&mut buf) {
                let msg = String::from_utf8_lossy(&buf[..n]).to_string();
                self.seen.push(msg.clone());
                if msg.lines().any(|l| l == state) {
                    return msg;
                }
            }
            assert!(
                Instant::now() < deadline,
                "no {state} from the server; got {:?}",
                self.seen
            );
        }
    }
}

/// `GET path` over HTTP/1.1; returns (status, content type, body).
pub async fn http_get(addr: SocketAddr, path: &str) -> (u16, String, String) {
    let mut tcp = TcpStream::connect(addr).await.expect("connect to metrics");
    let req = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    tcp.write_all(req.as_bytes()).await.expect("write request");
    let mut raw = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), tcp.read_to_end(&mut raw))
        .await
        .expect("metrics response in time")
        .expect("read response");
    let text = String::from_utf8(raw).expect("utf-8 response");
    let (head, body) = text.split_once("\r\n\r\n").expect("HTTP response");
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .expect("status code");
    let content_type = head
        .lines()
        .find_map(|l| {
            l.to_ascii_lowercase()
                .strip_prefix("content-type:")
                .map(|v| v.trim().to_string())
        })
        .unwrap_or_default();
    (status, content_type, body.to_string())
}

/// The value of one sample (`name{labels}` exactly as exposed), or `None` when absent.
pub fn sample(exposition: &str, series: &str) -> Option<f64> {
    exposition.lines().find_map(|l| {
        let (name, value) = l.rsplit_once(' ')?;
        (name == series).then(|| value.parse().ok()).flatten()
    })
}

/// Connects with STARTTLS trusting only `pki`'s CA, with a fresh client config (so no session
/// resumption); returns the leaf certificate the server presented, or the handshake error.
pub async fn starttls_peer_cert(
    addr: SocketAddr,
    pki: &TestPki,
) -> Result<CertificateDer<'static>, String> {
    let mut tcp = TcpStream::connect(addr).await.expect("connect");
    expect(&mut tcp, None, "220").await;
    expect(&mut tcp, Some("EHLO client.test\r\n"), "250").await;
    expect(&mut tcp, Some("STARTTLS\r\n"), "220").await;
    tls_peer_cert(tcp, pki).await
}

/// Sends `send` (if any) and reads until the final line of a reply with `code`.
async fn expect(tcp: &mut TcpStream, send: Option<&str>, code: &str) {
    if let Some(line) = send {
        tcp.write_all(line.as_bytes()).await.expect("write");
    }
    let mut buf = [0u8; 4096];
    let mut got = String::new();
    while !got.lines().any(|l| l.starts_with(&format!("{code} "))) {
        let n = tokio::time::timeout(Duration::from_secs(10), tcp.read(&mut buf))
            .await
            .expect("reply in time")
            .expect("read");
        assert!(n > 0, "server closed; so far: {got}");
        got.push_str(&String::from_utf8_lossy(&buf[..n]));
    }
}

/// Implicit TLS: the certificate the server presents, or the handshake error.
pub async fn implicit_peer_cert(
    addr: SocketAddr,
    pki: &TestPki,
) -> Result<CertificateDer<'static>, String> {
    let tcp = TcpStream::connect(addr).await.expect("connect");
    tls_peer_cert(tcp, pki).await
}

async fn tls_peer_cert(tcp: TcpStream, pki: &TestPki) -> Result<CertificateDer<'static>, String> {
    let connector = tokio_rustls::TlsConnector::from(pki.client_config());
    let name = ServerName::try_from("localhost").expect("server name");
    let tls = tokio::time::timeout(Duration::from_secs(10), connector.connect(name, tcp))
        .await
        .expect("TLS handshake in time")
        .map_err(|e| e.to_string())?;
    let (_, conn) = tls.get_ref();
    conn.peer_certificates()
        .and_then(|c| c.first())
        .map(|c| c.clone().into_owned())
        .ok_or_else(|| "no peer certificate".to_string())
}
