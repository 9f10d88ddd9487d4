//! A webhook receiver for tests: a real hyper HTTP/1.1 server on 127.0.0.1 that records every
//! request (headers and body) and answers with a status the test chooses.
//!
//! [`verify`] checks a Standard Webhooks signature independently of the relay's code: the
//! spec's recipe (base64 key after `whsec_`, HMAC-SHA256 of `id.timestamp.body`, any of the
//! space-separated `v1,` signatures, timestamp within five minutes).

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU16, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use hmac::{KeyInit, Mac};
use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use serde_json::Value;
use tokio::net::TcpListener;

#[derive(Clone, Debug)]
pub struct Hook {
    pub id: String,
    pub timestamp: String,
    pub signature: String,
    pub raw: Vec<u8>,
    pub body: Value,
}

#[derive(Default)]
struct State {
    hooks: Mutex<Vec<Hook>>,
    status: AtomicU16,
}

pub struct Receiver {
    pub addr: SocketAddr,
    state: Arc<State>,
    task: tokio::task::AbortHandle,
}

impl Receiver {
    /// Listens on `127.0.0.1:port` (0: any free port), answering 204.
    pub async fn start(port: u16) -> Receiver {
        let listener = TcpListener::bind(("127.0.0.1", port)).await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let state = Arc::new(State::default());
        state.status.store(204, Ordering::SeqCst);
        let s = state.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let s = s.clone();
                tokio::spawn(async move {
                    let svc = service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
                        let s = s.clone();
                        async move {
                            let h = |n: &str| {
                                req.headers()
                                    .get(n)
                                    .and_then(|v| v.to_str().ok())
                                    .unwrap_or("")
                                    .to_string()
                            };
                            let (id, timestamp, signature) = (
                                h("webhook-id"),
                                h("webhook-timestamp"),
                                h("webhook-signature"),
                            );
                            let raw = req
                                .into_body()
                                .collect()
                                .await
                                .map(|b| b.to_bytes().to_vec())
                                .unwrap_or_default();
                            let body = serde_json::from_slice(&raw).unwrap_or(Value::Null);
                            s.hooks.lock().unwrap().push(Hook {
                                id,
                                timestamp,
                                signature,
                                raw,
                                body,
                            });
                            let status = s.status.load(Ordering::SeqCst);
                            Ok::<_, std::convert::Infallible>(
                                hyper::Response::builder()
                                    .status(status)
                                    .body(Full::new(Bytes::from_static(b"ok")))
                                    .unwrap(),
                            )
                        }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), svc)
                        .await;
                });
            }
        })
        .abort_handle();
        Receiver { addr, state, task }
    }

    pub fn url(&self) -> String {
        format!("http://{}/hooks", self.addr)
    }

    pub fn set_status(&self, status: u16) {
        self.state.status.store(status, Ordering::SeqCst);
    }

    pub fn hooks(&self) -> Vec<Hook> {
        self.state.hooks.lock().unwrap().clone()
    }

    /// Waits until a received hook matches `pred`; returns it.
    pub async fn wait_for(
        &self,
        what: &str,
        timeout: Duration,
        pred: impl Fn(&Hook) -> bool,
    ) -> Hook {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(h) = self.hooks().into_iter().find(|h| pred(h)) {
                return h;
            }
            assert!(
                Instant::now() < deadline,
                "no webhook {what} within {timeout:?}; received: {:#?}",
                self.hooks().iter().map(|h| &h.body).collect::<Vec<_>>()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Waits for the event of `kind` (`message.relayed`, …) about message `id`.
    pub async fn wait_event(&self, kind: &str, id: &str, timeout: Duration) -> Hook {
        self.wait_for(&format!("{kind} for {id}"), timeout, |h| {
            h.body["type"] == kind && h.body["data"]["message_id"] == id
        })
        .await
    }

    pub fn stop(&self) {
        self.task.abort();
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Standard Webhooks verification, written from the spec for the tests.
pub fn verify(secret: &str, hook: &Hook) -> bool {
    let key = B64
        .decode(secret.strip_prefix("whsec_").expect("whsec_ prefix"))
        .expect("base64 secret");
    let ts: u64 = match hook.timestamp.parse() {
        Ok(t) => t,
        Err(_) => return false,
    };
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    if now.abs_diff(ts) > 300 {
        return false;
    }
    let mut signed = format!("{}.{}.", hook.id, hook.timestamp).into_bytes();
    signed.extend_from_slice(&hook.raw);
    let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(&key).unwrap();
    mac.update(&signed);
    let expected = format!("v1,{}", B64.encode(mac.finalize().into_bytes()));
    hook.signature.split(' ').any(|s| s == expected)
}
