//! A tiny OAuth2 token endpoint for tests: plain HTTP/1.1 on 127.0.0.1, one request per
//! connection (`Connection: close`), `POST` of a form, JSON answer.
//!
//! It issues `tok-1`, `tok-2`, … each valid for [`TokenServer::set_lifetime`] seconds, remembers
//! every request's form fields, and can be switched to refuse (`400 invalid_grant`).
//! [`TokenServer::check`] gives a function a [`TestUpstream`](super::upstream::TestUpstream)
//! uses to accept only tokens this server issued and that have not expired.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

use super::upstream::TokenCheck;

const READ_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Default)]
struct State {
    issued: Mutex<HashMap<String, Instant>>,
    requests: Mutex<Vec<HashMap<String, String>>>,
    counter: AtomicU64,
    lifetime_secs: AtomicU64,
    failing: AtomicBool,
}

pub struct TokenServer {
    addr: SocketAddr,
    state: Arc<State>,
    task: tokio::task::AbortHandle,
}

impl TokenServer {
    pub async fn start(lifetime_secs: u64) -> TokenServer {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let state = Arc::new(State::default());
        state.lifetime_secs.store(lifetime_secs, Ordering::SeqCst);
        let s = state.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((mut stream, _)) = listener.accept().await else {
                    continue;
                };
                let s = s.clone();
                tokio::spawn(async move {
                    let Ok(Some(body)) =
                        tokio::time::timeout(READ_TIMEOUT, read_request(&mut stream))
                            .await
                            .unwrap_or(Ok(None))
                    else {
                        return;
                    };
                    let (status, json) = s.answer(&body);
                    let resp = format!(
                        "HTTP/1.1 {status}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{json}",
                        json.len()
                    );
                    let _ = stream.write_all(resp.as_bytes()).await;
                    let _ = stream.shutdown().await;
                });
            }
        })
        .abort_handle();
        TokenServer { addr, state, task }
    }

    pub fn url(&self) -> String {
        format!("http://{}/token", self.addr)
    }

    pub fn set_failing(&self, failing: bool) {
        self.state.failing.store(failing, Ordering::SeqCst);
    }

    pub fn set_lifetime(&self, secs: u64) {
        self.state.lifetime_secs.store(secs, Ordering::SeqCst);
    }

    /// Form fields of every request so far.
    pub fn requests(&self) -> Vec<HashMap<String, String>> {
        self.state.requests.lock().unwrap().clone()
    }

    /// Accepts tokens this server issued that have not expired.
    pub fn check(&self) -> TokenCheck {
        let state = self.state.clone();
        Arc::new(move |token: &str| {
            state
                .issued
                .lock()
                .unwrap()
                .get(token)
                .is_some_and(|exp| Instant::now() < *exp)
        })
    }
}

impl Drop for TokenServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl State {
    fn answer(&self, body: &str) -> (&'static str, String) {
        let form: HashMap<String, String> = body
            .split('&')
            .filter_map(|kv| kv.split_once('='))
            .map(|(k, v)| (decode(k), decode(v)))
            .collect();
        self.requests.lock().unwrap().push(form);
        if self.failing.load(Ordering::SeqCst) {
            return (
                "400 Bad Request",
                r#"{"error":"invalid_grant","error_description":"Token has been expired or revoked."}"#
                    .into(),
            );
        }
        let n = self.counter.fetch_add(1, Ordering::SeqCst) + 1;
        let token = format!("tok-{n}");
        let life = self.lifetime_secs.load(Ordering::SeqCst);
        self.issued
            .lock()
            .unwrap()
            .insert(token.clone(), Instant::now() + Duration::from_secs(life));
        (
            "200 OK",
            format!(r#"{{"access_token":"{token}","token_type":"Bearer","expires_in":{life}}}"#),
        )
    }
}

/// Percent-decoding of a form field (`+` is a space).
fn decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < bytes.len() => {
                let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).unwrap_or("");
                out.push(u8::from_str_radix(hex, 16).unwrap_or(b'?'));
                i += 2;
            }
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Reads one request and returns its body (by Content-Length).
async fn read_request(stream: &mut tokio::net::TcpStream) -> std::io::Result<Option<String>> {
    let mut buf = Vec::new();
    let mut tmp = [0u8; 4096];
    let head_end = loop {
        if let Some(p) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break p + 4;
        }
        let n = stream.read(&mut tmp).await?;
        if n == 0 {
            return Ok(None);
        }
        buf.extend_from_slice(&tmp[..n]);
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).to_ascii_lowercase();
    let len: usize = head
        .lines()
        .find_map(|l| l.strip_prefix("content-length:"))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0);
    while buf.len() < head_end + len {
        let n = stream.read(&mut tmp).await?;
        if n == 0 {
            break;
        }
        buf.extend_from_slice(&tmp[..n]);
    }
    let end = (head_end + len).min(buf.len());
    Ok(Some(
        String::from_utf8_lossy(&buf[head_end..end]).into_owned(),
    ))
}
