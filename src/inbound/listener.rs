//! Listeners: bind the configured addresses, accept connections, enforce the global
//! connection limit and the per-IP throttles (policy::throttle), and start one task per
//! connection. On a `proxy_protocol` listener the client address comes from the PROXY header
//! (`proxy.rs`), read in the connection's own task before the per-IP throttle sees it.
//!
//! The accept loop never does per-connection work (no TLS handshake, no reads): a slow or
//! hostile client can only hold its own task.
//!
//! A refused connection on the implicit-TLS port gets its `421` inside TLS (a client reading
//! clear text there sees only "wrong version number"): the handshake is completed under its
//! deadline in a task of its own, at most [`REFUSAL_HANDSHAKES`] at a time, so a flood of
//! refused connections cannot buy unbounded handshakes; beyond that, or if the handshake
//! fails, the connection is just closed.

use std::net::SocketAddr;
use std::sync::Arc;

use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio_rustls::TlsAcceptor;

use super::Shared;
use super::reply::{self, Reply};
use super::session::Session;
use crate::config::{ListenerConfig, ListenerMode};
use crate::policy::throttle::Refusal;

#[derive(Debug, thiserror::Error)]
#[error("cannot listen on {address} ({mode}): {source}")]
pub struct BindError {
    pub address: SocketAddr,
    pub mode: &'static str,
    pub source: std::io::Error,
}

pub struct BoundListener {
    pub config: ListenerConfig,
    pub listener: TcpListener,
}

impl BoundListener {
    pub fn local_addr(&self) -> SocketAddr {
        self.listener.local_addr().unwrap_or(self.config.address)
    }
}

/// Binds every listener before any is served, so a port conflict stops startup cleanly.
pub async fn bind_all(configs: &[ListenerConfig]) -> Result<Vec<BoundListener>, BindError> {
    let mut out = Vec::new();
    for c in configs {
        let listener = TcpListener::bind(c.address)
            .await
            .map_err(|source| BindError {
                address: c.address,
                mode: c.mode.as_str(),
                source,
            })?;
        out.push(BoundListener {
            config: c.clone(),
            listener,
        });
    }
    Ok(out)
}

/// Accepts until shutdown. `permits` is the global connection limit, shared by all listeners.
/// Each connection gets the [`Shared`] current at accept time, so a reload reaches new
/// sessions only.
pub async fn serve(
    bound: BoundListener,
    shared: tokio::sync::watch::Receiver<Arc<Shared>>,
    permits: Arc<Semaphore>,
) {
    let mut shutdown = shared.borrow().shutdown.clone();
    let refusals = Arc::new(Semaphore::new(REFUSAL_HANDSHAKES));
    let config = Arc::new(bound.config.clone());
    let proxy = super::proxy::ProxyPolicy::for_listener(&config).map(Arc::new);
    loop {
        let accepted = tokio::select! {
            a = bound.listener.accept() => a,
            _ = crate::shutdown::stopped(&mut shutdown) => return,
        };
        let (tcp, peer) = match accepted {
            Ok(a) => a,
            Err(e) => {
                // EMFILE and friends: back off instead of spinning.
                tracing::warn!(error = %e, "accept failed");
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                continue;
            }
        };
        let mut tcp = Some(tcp);
        // What new sessions get now; a reload swaps it for later connections.
        let current = shared.borrow().clone();
        let Some(proxy) = &proxy else {
            let Some(ip_guard) = admit_ip(&current, &config, peer, &refusals, &mut tcp) else {
                continue;
            };
            let Some(permit) =
                global_permit(&current, &config, peer, &refusals, &permits, &mut tcp)
            else {
                continue;
            };
            run_session(current, tcp, peer, &config, permit, ip_guard);
            continue;
        };
        if !proxy.trusts(peer.ip()) {
            tracing::warn!(peer = %peer, "connection closed: not a trusted proxy of this PROXY-protocol listener");
            drop(tcp);
            continue;
        }
        // The connection place is taken before the header is read, so a flood of idle
        // connections cannot hold more than the global limit.
        let Some(permit) = global_permit(&current, &config, peer, &refusals, &permits, &mut tcp)
        else {
            continue;
        };
        let (config, refusals) = (config.clone(), refusals.clone());
        let deadline = current.config.handshake_timeout();
        tokio::spawn(async move {
            let Some(stream) = tcp.as_mut() else { return };
            let client = match super::proxy::read_header(stream, peer, deadline).await {
                Ok(c) => c,
                Err(e) => {
                    tracing::warn!(proxy = %peer, error = %e, "connection closed: PROXY header missing or invalid");
                    return;
                }
            };
            let Some(ip_guard) = admit_ip(&current, &config, client, &refusals, &mut tcp) else {
                return;
            };
            run_session(current, tcp, client, &config, permit, ip_guard);
        });
    }
}

/// The per-IP throttle for `client`; refuses (and answers `421`) when it says no.
fn admit_ip(
    current: &Arc<Shared>,
    config: &ListenerConfig,
    client: SocketAddr,
    refusals: &Arc<Semaphore>,
    tcp: &mut Option<TcpStream>,
) -> Option<crate::policy::throttle::IpGuard> {
    match current.throttle.admit(client.ip()) {
        Ok(g) => Some(g),
        Err(refusal) => {
            let r = match refusal {
                Refusal::TooManyConnections | Refusal::ConnectionRate => {
                    reply::IP_TOO_MANY_CONNECTIONS
                }
            };
            tracing::warn!(client = %client, reason = ?refusal, "connection refused by the per-IP throttle");
            crate::metrics::rejected("", &r);
            if let Some(tcp) = tcp.take() {
                refuse(tcp, r, tls_for_refusal(config, current, refusals));
            }
            None
        }
    }
}

/// One place of the global connection limit; refuses (and answers `421`) when none is left.
fn global_permit(
    current: &Arc<Shared>,
    config: &ListenerConfig,
    client: SocketAddr,
    refusals: &Arc<Semaphore>,
    permits: &Arc<Semaphore>,
    tcp: &mut Option<TcpStream>,
) -> Option<tokio::sync::OwnedSemaphorePermit> {
    match permits.clone().try_acquire_owned() {
        Ok(p) => Some(p),
        Err(_) => {
            if let Some(tcp) = tcp.take() {
                refuse(
                    tcp,
                    reply::TOO_MANY_CONNECTIONS,
                    tls_for_refusal(config, current, refusals),
                );
            }
            tracing::warn!(client = %client, "connection limit reached");
            crate::metrics::rejected("", &reply::TOO_MANY_CONNECTIONS);
            None
        }
    }
}

fn run_session(
    current: Arc<Shared>,
    tcp: Option<TcpStream>,
    client: SocketAddr,
    config: &ListenerConfig,
    permit: tokio::sync::OwnedSemaphorePermit,
    ip_guard: crate::policy::throttle::IpGuard,
) {
    let Some(tcp) = tcp else { return };
    let session = Session::new(current, client, config);
    tokio::spawn(async move {
        session.run(tcp).await;
        drop(permit);
        drop(ip_guard);
    });
}

/// Refusal handshakes in progress at once on one implicit-TLS listener.
pub const REFUSAL_HANDSHAKES: usize = 32;

/// How a refused connection is answered.
enum Refusal421 {
    /// STARTTLS and plain listeners: the reply in clear text, as the greeting would be.
    Clear,
    /// Implicit TLS: handshake (under its deadline, holding a refusal place), then the reply.
    Tls(
        TlsAcceptor,
        std::time::Duration,
        tokio::sync::OwnedSemaphorePermit,
    ),
    /// Implicit TLS with every refusal place taken: closed without a word.
    Close,
}

fn tls_for_refusal(
    config: &ListenerConfig,
    shared: &Shared,
    places: &Arc<Semaphore>,
) -> Refusal421 {
    if config.mode != ListenerMode::Implicit {
        return Refusal421::Clear;
    }
    match places.clone().try_acquire_owned() {
        Ok(permit) => Refusal421::Tls(
            TlsAcceptor::from(shared.tls.clone()),
            shared.config.handshake_timeout(),
            permit,
        ),
        Err(_) => Refusal421::Close,
    }
}

/// Answers `421` and closes, in a task of its own so the accept loop never waits on a client.
fn refuse(mut tcp: TcpStream, r: Reply, how: Refusal421) {
    tokio::spawn(async move {
        let line = r.to_line();
        let limit = std::time::Duration::from_secs(5);
        match how {
            Refusal421::Tls(acceptor, deadline, _permit) => {
                let Ok(Ok(mut stream)) = tokio::time::timeout(deadline, acceptor.accept(tcp)).await
                else {
                    return;
                };
                let _ = tokio::time::timeout(limit, async {
                    let _ = stream.write_all(line.as_bytes()).await;
                    let _ = stream.shutdown().await;
                })
                .await;
            }
            Refusal421::Clear => {
                let _ = tokio::time::timeout(limit, async {
                    let _ = tcp.write_all(line.as_bytes()).await;
                    let _ = tcp.shutdown().await;
                })
                .await;
            }
            Refusal421::Close => {}
        }
    });
}
