//! The Prometheus endpoint: `GET /metrics` over HTTP/1.1 (hyper), on a loopback address.
//!
//! Every connection has a header-read deadline and an overall deadline, like every other
//! read in the relay. The queue gauges are refreshed from the queue on each scrape.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::time::Duration;

use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::queue::Queue;

const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";
/// Deadline for the request headers.
const HEADER_TIMEOUT: Duration = Duration::from_secs(10);
/// Deadline for a whole connection (keep-alive included).
const CONNECTION_TIMEOUT: Duration = Duration::from_secs(60);

#[derive(Debug, thiserror::Error)]
#[error("cannot listen for metrics on {address}: {source}")]
pub struct MetricsBindError {
    pub address: SocketAddr,
    pub source: std::io::Error,
}

pub async fn bind(address: SocketAddr) -> Result<TcpListener, MetricsBindError> {
    TcpListener::bind(address)
        .await
        .map_err(|source| MetricsBindError { address, source })
}

/// Serves scrapes until `shutdown` turns true.
pub async fn serve(listener: TcpListener, queue: Queue, mut shutdown: watch::Receiver<bool>) {
    loop {
        let accepted = tokio::select! {
            a = listener.accept() => a,
            _ = crate::shutdown::stopped(&mut shutdown) => return,
        };
        let tcp = match accepted {
            Ok((tcp, _)) => tcp,
            Err(e) => {
                tracing::warn!(error = %e, "metrics accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let queue = queue.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |req| {
                let queue = queue.clone();
                async move { Ok::<_, Infallible>(respond(req, &queue).await) }
            });
            let conn = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(HEADER_TIMEOUT)
                .serve_connection(TokioIo::new(tcp), service);
            let _ = tokio::time::timeout(CONNECTION_TIMEOUT, conn).await;
        });
    }
}

async fn respond(req: Request<Incoming>, queue: &Queue) -> Response<Full<Bytes>> {
    let reply = |status: StatusCode, content_type: &str, body: String| {
        let mut r = Response::new(Full::new(Bytes::from(body)));
        *r.status_mut() = status;
        if let Ok(v) = hyper::header::HeaderValue::from_str(content_type) {
            r.headers_mut().insert(hyper::header::CONTENT_TYPE, v);
        }
        r
    };
    if req.uri().path() != "/metrics" {
        return reply(
            StatusCode::NOT_FOUND,
            "text/plain",
            "not found; try /metrics\n".into(),
        );
    }
    if req.method() != Method::GET && req.method() != Method::HEAD {
        return reply(
            StatusCode::METHOD_NOT_ALLOWED,
            "text/plain",
            "GET only\n".into(),
        );
    }
    let q = queue.clone();
    let store = queue.store().clone();
    super::set_store(
        store.failure.get().is_some(),
        crate::store::free_bytes(store.state_dir()),
    );
    // sled calls are synchronous; keep them off the async workers.
    match tokio::task::spawn_blocking(move || q.stats()).await {
        Ok(Ok(stats)) => super::set_queue(stats.scheduled, stats.oldest_received_ms),
        Ok(Err(e)) => tracing::warn!(error = %e, "cannot read queue statistics"),
        Err(e) => tracing::warn!(error = %e, "queue statistics task failed"),
    }
    reply(StatusCode::OK, CONTENT_TYPE, super::encode())
}
