//! OAuth2 access tokens for SMTP XOAUTH2 (Gmail, Microsoft 365).
//!
//! One [`TokenSource`] per upstream holds the client secret or refresh token read at startup,
//! asks the token endpoint for an access token (client-credentials or refresh-token grant),
//! and caches it until shortly before it expires — a minute early, or half its lifetime for
//! short-lived tokens — so no session starts with a token about to lapse. Concurrent
//! deliveries wait for one request instead of each asking (single flight). A failed refresh
//! while the old token is still valid keeps using the old one; once there is no valid token
//! the delivery is a temporary failure and the log line says why.
//!
//! HTTP goes through reqwest with the binary's one rustls crypto provider (ring), never a
//! second one. Tokens and secrets never reach a log line or an error message.

use std::time::{Duration, Instant};

use serde::Deserialize;

use super::client_tls::{UpstreamError, client_config, root_store};
use crate::config::{OAuth2Config, UpstreamSecrets};
use crate::secret::Secret;

/// Refresh this long before expiry (less for tokens that live shorter than twice this).
const REFRESH_MARGIN: Duration = Duration::from_secs(60);
/// Endpoint error bodies are cut to this length in messages.
const MAX_ERROR_TEXT: usize = 200;

#[derive(Debug, Clone, thiserror::Error)]
pub enum TokenError {
    #[error("cannot reach {url}: {message}")]
    Http { url: String, message: String },
    #[error("{url} answered HTTP {status}: {detail}")]
    Refused {
        url: String,
        status: u16,
        detail: String,
    },
    #[error("{url} sent an unusable answer: {message}")]
    BadResponse { url: String, message: String },
}

#[derive(Deserialize)]
struct TokenResponse {
    access_token: String,
    #[serde(default)]
    expires_in: Option<u64>,
    #[serde(default)]
    refresh_token: Option<String>,
}

#[derive(Deserialize, Default)]
struct ErrorResponse {
    #[serde(default)]
    error: Option<String>,
    #[serde(default)]
    error_description: Option<String>,
}

struct Cached {
    token: Secret,
    refresh_at: Instant,
    expires_at: Instant,
}

pub struct TokenSource {
    upstream: String,
    url: String,
    client_id: String,
    client_secret: Option<Secret>,
    scope: Option<String>,
    /// Some providers rotate refresh tokens; the newest one is kept in memory.
    refresh_token: std::sync::Mutex<Option<Secret>>,
    http: reqwest::Client,
    cache: tokio::sync::Mutex<Option<Cached>>,
}

impl std::fmt::Debug for TokenSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenSource")
            .field("upstream", &self.upstream)
            .field("url", &self.url)
            .finish_non_exhaustive()
    }
}

/// When to refresh a token that lives `lifetime`.
pub fn refresh_after(lifetime: Duration) -> Duration {
    let margin = REFRESH_MARGIN.min(lifetime / 2);
    lifetime - margin
}

impl TokenSource {
    pub fn new(
        upstream: &str,
        cfg: &OAuth2Config,
        secrets: &UpstreamSecrets,
    ) -> Result<TokenSource, UpstreamError> {
        let fail = |message: String| UpstreamError::Credential {
            name: upstream.to_string(),
            message,
        };
        let url = cfg
            .token_url
            .clone()
            .ok_or_else(|| fail("oauth2.token_url is not set".into()))?;
        let mut tls = client_config(upstream, root_store(upstream, None)?)?;
        tls.alpn_protocols = vec![b"http/1.1".to_vec()];
        let http = reqwest::Client::builder()
            .tls_backend_preconfigured(tls)
            .timeout(Duration::from_secs(cfg.timeout_secs))
            .connect_timeout(Duration::from_secs(cfg.timeout_secs))
            .redirect(reqwest::redirect::Policy::none())
            .user_agent(concat!("smtp-relay/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| fail(format!("cannot build the OAuth2 HTTP client: {e}")))?;
        Ok(TokenSource {
            upstream: upstream.to_string(),
            url,
            client_id: cfg.client_id.clone(),
            client_secret: secrets.client_secret.clone(),
            scope: cfg.scope.clone(),
            refresh_token: std::sync::Mutex::new(secrets.refresh_token.clone()),
            http,
            cache: tokio::sync::Mutex::new(None),
        })
    }

    /// A valid access token, from the cache or freshly requested.
    pub async fn token(&self) -> Result<Secret, TokenError> {
        let mut cache = self.cache.lock().await;
        let now = Instant::now();
        if let Some(c) = cache.as_ref()
            && now < c.refresh_at
        {
            return Ok(c.token.clone());
        }
        match self.request().await {
            Ok((token, lifetime)) => {
                tracing::debug!(upstream = %self.upstream, expires_in_secs = lifetime.as_secs(), "OAuth2 access token obtained");
                let now = Instant::now();
                *cache = Some(Cached {
                    token: token.clone(),
                    refresh_at: now + refresh_after(lifetime),
                    expires_at: now + lifetime,
                });
                Ok(token)
            }
            Err(e) => match cache.as_ref() {
                Some(c) if Instant::now() < c.expires_at => {
                    tracing::warn!(upstream = %self.upstream, error = %e, "OAuth2 token refresh failed; the current token is still valid and stays in use");
                    Ok(c.token.clone())
                }
                _ => {
                    tracing::warn!(upstream = %self.upstream, error = %e, "OAuth2 token refresh failed; deliveries through this upstream are deferred until it succeeds");
                    Err(e)
                }
            },
        }
    }

    async fn request(&self) -> Result<(Secret, Duration), TokenError> {
        let refresh = self
            .refresh_token
            .lock()
            .ok()
            .and_then(|g| g.as_ref().cloned());
        let mut form: Vec<(&str, &str)> = vec![("client_id", &self.client_id)];
        if let Some(s) = &self.client_secret {
            form.push(("client_secret", s.expose()));
        }
        match &refresh {
            Some(rt) => {
                form.push(("grant_type", "refresh_token"));
                form.push(("refresh_token", rt.expose()));
            }
            None => form.push(("grant_type", "client_credentials")),
        }
        if let Some(scope) = &self.scope {
            form.push(("scope", scope));
        }
        let http_err = |e: reqwest::Error| TokenError::Http {
            url: self.url.clone(),
            // Without the URL (already named) and never with the form, which holds secrets.
            message: e.without_url().to_string(),
        };
        let resp = self
            .http
            .post(&self.url)
            .form(&form)
            .send()
            .await
            .map_err(http_err)?;
        let status = resp.status();
        let body = resp.bytes().await.map_err(http_err)?;
        if !status.is_success() {
            let e: ErrorResponse = serde_json::from_slice(&body).unwrap_or_default();
            let mut detail = match (e.error, e.error_description) {
                (Some(e), Some(d)) => format!("{e}: {d}"),
                (Some(e), None) => e,
                _ => String::from_utf8_lossy(&body).into_owned(),
            };
            detail = detail.replace(['\r', '\n'], " ");
            if detail.len() > MAX_ERROR_TEXT {
                let cut = (0..=MAX_ERROR_TEXT)
                    .rev()
                    .find(|&i| detail.is_char_boundary(i))
                    .unwrap_or(0);
                detail.truncate(cut);
                detail.push('…');
            }
            return Err(TokenError::Refused {
                url: self.url.clone(),
                status: status.as_u16(),
                detail,
            });
        }
        let parsed: TokenResponse =
            serde_json::from_slice(&body).map_err(|_| TokenError::BadResponse {
                url: self.url.clone(),
                message: "no access_token in a JSON answer".into(),
            })?;
        if parsed.access_token.is_empty() {
            return Err(TokenError::BadResponse {
                url: self.url.clone(),
                message: "empty access_token".into(),
            });
        }
        if let Some(new) = parsed.refresh_token
            && let Ok(mut g) = self.refresh_token.lock()
            && g.is_some()
        {
            *g = Some(Secret::new(new));
        }
        // Providers state the lifetime; assume an hour (both Google's and Microsoft's usual
        // value) when one does not.
        let lifetime = Duration::from_secs(parsed.expires_in.unwrap_or(3600).max(1));
        Ok((Secret::new(parsed.access_token), lifetime))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refreshes_before_expiry() {
        assert_eq!(
            refresh_after(Duration::from_secs(3600)),
            Duration::from_secs(3540)
        );
        assert_eq!(
            refresh_after(Duration::from_secs(4)),
            Duration::from_secs(2)
        );
    }
}
