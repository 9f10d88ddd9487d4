//! The admin socket: a Unix socket in the state directory (mode 0600), one JSON request line
//! in, one JSON response line out. Only the service user (and root) can reach it.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixListener;

use super::{AdminContext, AdminRequest, execute_async};

/// Large enough for a branding update: a 200 KiB logo in base64 plus two 64 KiB templates.
const MAX_REQUEST: u64 = 1024 * 1024;

pub fn bind(path: &Path) -> std::io::Result<UnixListener> {
    if path.exists() {
        // A socket left by a crashed server; a live server would hold the database lock,
        // and we only get here after opening the database ourselves.
        std::fs::remove_file(path)?;
    }
    let listener = UnixListener::bind(path)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
    Ok(listener)
}

pub async fn serve(
    listener: UnixListener,
    ctx: AdminContext,
    mut shutdown: tokio::sync::watch::Receiver<bool>,
) {
    loop {
        let stream = tokio::select! {
            s = listener.accept() => match s { Ok((s, _)) => s, Err(_) => continue },
            _ = crate::shutdown::stopped(&mut shutdown) => return,
        };
        let ctx = ctx.clone();
        tokio::spawn(async move {
            let (read, mut write) = stream.into_split();
            let mut reader = tokio::io::BufReader::new(read.take(MAX_REQUEST));
            let mut line = String::new();
            let response =
                match tokio::time::timeout(Duration::from_secs(10), reader.read_line(&mut line))
                    .await
                {
                    Ok(Ok(_)) => match serde_json::from_str::<AdminRequest>(&line) {
                        Ok(req) => {
                            let op = format!("{req:?}");
                            let op = op.split([' ', '{', '(']).next().unwrap_or("").to_string();
                            tracing::info!(op = %op, "admin request");
                            match execute_async(&ctx, req).await {
                                Ok(v) => json!({ "ok": v }),
                                Err(e) => {
                                    json!({ "error": e.message, "kind": e.kind, "field": e.field })
                                }
                            }
                        }
                        Err(e) => json!({ "error": format!("bad request: {e}") }),
                    },
                    _ => return,
                };
            let mut out = response.to_string();
            out.push('\n');
            let _ = write.write_all(out.as_bytes()).await;
        });
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// No server listening: the caller may open the database directly.
    #[error("no running server at {0}")]
    NotRunning(PathBuf),
    /// The socket exists but cannot be connected to (permissions, …).
    #[error("cannot reach the running server at {path}: {message}")]
    Unreachable { path: PathBuf, message: String },
    /// Connected, but the exchange failed (no answer in time, connection dropped).
    #[error("admin socket {path}: {message}")]
    Io { path: PathBuf, message: String },
    /// The server answered with a refusal (unknown project, invalid value…).
    #[error("{0}")]
    Remote(String),
}

/// Sends one request to a running server.
pub fn request(path: &Path, req: &AdminRequest) -> Result<Value, ClientError> {
    request_with_timeout(path, req, Duration::from_secs(30))
}

/// [`request`] with a longer wait for the answer (send-test waits on upstreams).
pub fn request_with_timeout(
    path: &Path,
    req: &AdminRequest,
    timeout: Duration,
) -> Result<Value, ClientError> {
    let io = |e: std::io::Error| ClientError::Io {
        path: path.to_path_buf(),
        message: e.to_string(),
    };
    let mut stream = match std::os::unix::net::UnixStream::connect(path) {
        Ok(s) => s,
        Err(e)
            if matches!(
                e.kind(),
                std::io::ErrorKind::NotFound | std::io::ErrorKind::ConnectionRefused
            ) =>
        {
            return Err(ClientError::NotRunning(path.to_path_buf()));
        }
        Err(e) => {
            return Err(ClientError::Unreachable {
                path: path.to_path_buf(),
                message: e.to_string(),
            });
        }
    };
    stream.set_read_timeout(Some(timeout)).map_err(io)?;
    let mut line = serde_json::to_string(req).map_err(|e| ClientError::Remote(e.to_string()))?;
    line.push('\n');
    stream.write_all(line.as_bytes()).map_err(io)?;
    let mut reply = String::new();
    BufReader::new(stream).read_line(&mut reply).map_err(io)?;
    let v: Value =
        serde_json::from_str(&reply).map_err(|e| ClientError::Remote(format!("bad reply: {e}")))?;
    if let Some(e) = v.get("error").and_then(Value::as_str) {
        return Err(ClientError::Remote(e.to_string()));
    }
    Ok(v.get("ok").cloned().unwrap_or(Value::Null))
}
