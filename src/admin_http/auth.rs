//! Who is calling the admin API: `Authorization: Bearer <admin token>`, checked against the
//! admin tokens (HMAC digests), with the role deciding what the caller may do.
//!
//! A failed token is answered after the same fixed delay as a failed SMTP AUTH, whatever was
//! wrong, and one client address that keeps failing is cooled down (`429`) by the same
//! throttle policy — keyed by address, so it never locks out other clients.

use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use axum::http::{Method, StatusCode};
use axum::response::{IntoResponse, Response};

use super::HttpState;
use super::api::error_response;
use crate::policy::admin_tokens::{AdminTokenInfo, Role};

pub use crate::http_listener::ClientAddr;

/// An authenticated caller.
#[derive(Debug, Clone)]
pub struct Caller {
    pub token: AdminTokenInfo,
}

impl Caller {
    /// Viewers may only read.
    pub fn may(&self, method: &Method) -> bool {
        self.token.role == Role::Admin
            || matches!(*method, Method::GET | Method::HEAD | Method::OPTIONS)
    }
}

/// The throttle key of every admin API failure from one address.
const THROTTLE_USER: &str = "admin-api";

/// Why a presented admin token was not accepted.
pub enum Refusal {
    /// This address failed too often; try again after this long.
    CoolingDown(std::time::Duration),
    /// Missing, unknown or revoked (answered after the fixed failure delay).
    Invalid,
    /// The admin tokens could not be read.
    Unavailable,
}

/// Checks `token` for a client at `ip` with the failure delay and per-address cool-down the
/// bearer API and the panel login share. The token is never logged.
pub async fn check_token(
    state: &HttpState,
    ip: std::net::IpAddr,
    token: &str,
) -> Result<AdminTokenInfo, Refusal> {
    if let Some(left) = state.throttle.login_cooling_down(ip, THROTTLE_USER) {
        return Err(Refusal::CoolingDown(left));
    }
    let answer_at = tokio::time::Instant::now() + state.throttle.auth_failure_delay();
    let found = if token.is_empty() {
        Ok(None)
    } else {
        let tokens = state.admin.admin_tokens.clone();
        let token = token.to_string();
        tokio::task::spawn_blocking(move || tokens.authenticate(&token))
            .await
            .unwrap_or(Ok(None))
    };
    match found {
        Ok(Some(info)) => Ok(info),
        Ok(None) => {
            state.throttle.auth_failed(ip, THROTTLE_USER);
            tracing::warn!(client = %ip, "admin API: missing or invalid admin token");
            tokio::time::sleep_until(answer_at).await;
            Err(Refusal::Invalid)
        }
        Err(e) => {
            tracing::error!(error = %e, "admin tokens unavailable");
            Err(Refusal::Unavailable)
        }
    }
}

/// The client address of a request (loopback when the accept loop did not say).
pub fn client_ip(parts: &Parts) -> std::net::IpAddr {
    parts
        .extensions
        .get::<ClientAddr>()
        .map(|c| c.0.ip())
        .unwrap_or(std::net::IpAddr::from([127, 0, 0, 1]))
}

impl FromRequestParts<HttpState> for Caller {
    type Rejection = Response;

    async fn from_request_parts(parts: &mut Parts, state: &HttpState) -> Result<Caller, Response> {
        let ip = client_ip(parts);
        let token = crate::http_listener::bearer_token(&parts.headers).unwrap_or("");
        match check_token(state, ip, token).await {
            Ok(token) => {
                let caller = Caller { token };
                if !caller.may(&parts.method) {
                    return Err(error_response(
                        StatusCode::FORBIDDEN,
                        "forbidden",
                        "this admin token has the viewer role: it can read, not change",
                    ));
                }
                Ok(caller)
            }
            Err(Refusal::CoolingDown(left)) => {
                let mut r = error_response(
                    StatusCode::TOO_MANY_REQUESTS,
                    "rate_limited",
                    "too many failed admin tokens from your address, try later",
                );
                if let Ok(v) = left.as_secs().max(1).to_string().parse() {
                    r.headers_mut().insert(axum::http::header::RETRY_AFTER, v);
                }
                Err(r)
            }
            Err(Refusal::Invalid) => {
                let mut r = error_response(
                    StatusCode::UNAUTHORIZED,
                    "unauthorized",
                    "missing or invalid admin token (Authorization: Bearer smtpa_…)",
                );
                r.headers_mut().insert(
                    axum::http::header::WWW_AUTHENTICATE,
                    axum::http::HeaderValue::from_static("Bearer"),
                );
                Err(r)
            }
            Err(Refusal::Unavailable) => Err(error_response(
                StatusCode::SERVICE_UNAVAILABLE,
                "unavailable",
                "admin tokens cannot be read right now",
            )
            .into_response()),
        }
    }
}
