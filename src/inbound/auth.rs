//! Decoding SASL PLAIN and LOGIN responses (RFC 4616, draft-murchison-sasl-login).
//!
//! The decoding is pure; the session drives the exchange and asks policy to check the result.
//! The password is wrapped in [`Secret`] the moment it is decoded.
//!
//! Failures are slow on purpose: each is answered `throttle.auth_failure_delay_ms` after the
//! credentials arrived — a fixed deadline, so how long the check took (unknown project or
//! wrong token) never shows — three close the session, and a username with too many failures
//! from one IP across sessions is refused there for a cool-down (policy::throttle), even with
//! a correct token; other projects behind the same address are not.

use base64::Engine;

use crate::policy::limits::LimitsError;
use crate::policy::projects::{Authenticated, Standing};
use crate::secret::Secret;

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum AuthDecodeError {
    #[error("client cancelled")]
    Cancelled,
    #[error("invalid base64")]
    Base64,
    #[error("malformed credentials")]
    Malformed,
}

#[derive(Debug)]
pub struct Credentials {
    pub username: String,
    pub password: Secret,
}

fn b64(line: &[u8]) -> Result<Vec<u8>, AuthDecodeError> {
    if line == b"*" {
        return Err(AuthDecodeError::Cancelled);
    }
    base64::engine::general_purpose::STANDARD
        .decode(line.trim_ascii())
        .map_err(|_| AuthDecodeError::Base64)
}

/// `authzid NUL authcid NUL passwd`; an authzid other than empty or the user is refused.
pub fn decode_plain(response: &[u8]) -> Result<Credentials, AuthDecodeError> {
    let raw = b64(response)?;
    let mut parts = raw.split(|&b| b == 0);
    let (Some(authz), Some(user), Some(pass), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(AuthDecodeError::Malformed);
    };
    if user.is_empty() || pass.is_empty() || (!authz.is_empty() && authz != user) {
        return Err(AuthDecodeError::Malformed);
    }
    let username = std::str::from_utf8(user).map_err(|_| AuthDecodeError::Malformed)?;
    let password = std::str::from_utf8(pass).map_err(|_| AuthDecodeError::Malformed)?;
    Ok(Credentials {
        username: username.to_string(),
        password: Secret::new(password),
    })
}

/// One LOGIN step (username or password).
pub fn decode_login_field(response: &[u8]) -> Result<String, AuthDecodeError> {
    let raw = b64(response)?;
    if raw.is_empty() || raw.contains(&0) {
        return Err(AuthDecodeError::Malformed);
    }
    String::from_utf8(raw).map_err(|_| AuthDecodeError::Malformed)
}

pub const LOGIN_USERNAME_PROMPT: &str = "334 VXNlcm5hbWU6\r\n";
pub const LOGIN_PASSWORD_PROMPT: &str = "334 UGFzc3dvcmQ6\r\n";
pub const PLAIN_PROMPT: &str = "334 \r\n";

use tokio::io::{AsyncRead, AsyncWrite};

use super::connection::{Connection, FrameError, MAX_COMMAND_LINE};
use super::reply;
use super::session::{Flow, Session};

/// After this many failed AUTH attempts in one session, the connection is closed.
const MAX_AUTH_FAILURES: u32 = 3;

impl Session {
    pub(super) async fn auth<S: AsyncRead + AsyncWrite + Unpin>(
        &mut self,
        conn: &mut Connection<S>,
        mechanism: u64,
        initial: String,
    ) -> Flow {
        if !self.auth_allowed() {
            return self.error(conn, &reply::NEEDS_TLS).await;
        }
        if self.helo.is_none() {
            return self.error(conn, &reply::BAD_SEQUENCE_HELO).await;
        }
        if self.auth.is_some() {
            return self.error(conn, &reply::AUTH_AGAIN).await;
        }
        if self.mail_from.is_some() {
            return self
                .error(
                    conn,
                    &reply::Reply::new(503, "5.5.1 Error: MAIL transaction in progress"),
                )
                .await;
        }
        // `=` is an empty initial response (RFC 4954 §4).
        let initial = (!initial.is_empty()).then(|| {
            if initial == "=" {
                Vec::new()
            } else {
                initial.into_bytes()
            }
        });
        let decoded = if mechanism == smtp_proto::AUTH_PLAIN {
            let response = match initial {
                Some(r) => r,
                None => match self.prompt(conn, PLAIN_PROMPT).await {
                    Ok(r) => r,
                    Err(flow) => return flow,
                },
            };
            decode_plain(&response)
        } else if mechanism == smtp_proto::AUTH_LOGIN {
            let user = match initial {
                Some(r) => r,
                None => match self.prompt(conn, LOGIN_USERNAME_PROMPT).await {
                    Ok(r) => r,
                    Err(flow) => return flow,
                },
            };
            match decode_login_field(&user) {
                Ok(username) => match self.prompt(conn, LOGIN_PASSWORD_PROMPT).await {
                    Ok(pass) => decode_login_field(&pass).map(|p| Credentials {
                        username,
                        password: Secret::new(p),
                    }),
                    Err(flow) => return flow,
                },
                Err(e) => Err(e),
            }
        } else {
            return self.error(conn, &reply::AUTH_MECH).await;
        };
        // The failure reply's deadline starts once the client has said everything.
        let answer_at = tokio::time::Instant::now() + self.shared.throttle.auth_failure_delay();
        // Read before the lookup: a change racing it is seen at the next revalidation.
        let generation = self.shared.registry.generation();
        let creds = match decoded {
            Ok(c) => c,
            Err(AuthDecodeError::Cancelled) => {
                return self.error(conn, &reply::AUTH_CANCELLED).await;
            }
            // RFC 4954 §4: 501, but still a failed attempt for every limit.
            Err(AuthDecodeError::Base64) => {
                return self
                    .auth_failed(conn, answer_at, &reply::AUTH_BASE64, None)
                    .await;
            }
            Err(_) => {
                return self
                    .auth_failed(conn, answer_at, &reply::BAD_CREDENTIALS, None)
                    .await;
            }
        };
        if self
            .shared
            .throttle
            .login_cooling_down(self.peer.ip(), &creds.username)
            .is_some()
        {
            // Not even checked: a cooling-down login cannot be used to guess.
            tokio::time::sleep_until(answer_at).await;
            tracing::warn!(client = %self.peer, user = %reply::printable(&creds.username), "login refused: cooling down after failed AUTHs");
            crate::metrics::rejected(self.project_id(), &reply::LOGIN_COOLING_DOWN);
            let _ = conn.write_reply(&reply::LOGIN_COOLING_DOWN).await;
            return Flow::Close;
        }
        match self
            .shared
            .registry
            .authenticate(&creds.username, creds.password.expose())
        {
            Ok(Some(who)) => match self
                .shared
                .limiter
                .open_session_shared(&who.project.id)
                .await
            {
                Ok(quota) => {
                    tracing::info!(client = %self.peer, project = %who.project.id, token = %who.token_id, "authenticated");
                    self.auth = Some(who);
                    self.registry_generation = generation;
                    self.quota = Some(quota);
                    self.send(conn, &reply::AUTH_OK).await
                }
                Err(LimitsError::TooManySessions { project, max }) => {
                    tracing::warn!(client = %self.peer, project = %project, max, "too many sessions for project");
                    let r = reply::project_connections(&project);
                    crate::metrics::rejected(&project, &r);
                    crate::metrics::rate_limit_hit(&project);
                    let _ = conn.write_reply(&r).await;
                    Flow::Close
                }
                Err(e) => {
                    tracing::error!(error = %e, "limits unavailable during AUTH");
                    self.error(conn, &reply::AUTH_TEMP).await
                }
            },
            Ok(None) => {
                self.auth_failed(
                    conn,
                    answer_at,
                    &reply::BAD_CREDENTIALS,
                    Some(&creds.username),
                )
                .await
            }
            Err(e) => {
                tracing::error!(error = %e, "registry unavailable during AUTH");
                self.error(conn, &reply::AUTH_TEMP).await
            }
        }
    }

    /// `failure` is the reply: 535, or 501 for a response that was not base64.
    async fn auth_failed<S: AsyncRead + AsyncWrite + Unpin>(
        &mut self,
        conn: &mut Connection<S>,
        answer_at: tokio::time::Instant,
        failure: &reply::Reply,
        username: Option<&str>,
    ) -> Flow {
        self.auth_failures += 1;
        crate::metrics::auth_failure();
        tracing::warn!(client = %self.peer, failures = self.auth_failures, "authentication failed");
        // Counted before the delay, so parallel sessions from the same IP see it at once.
        // Undecodable credentials count under the empty username.
        let cooldown = self
            .shared
            .throttle
            .auth_failed(self.peer.ip(), username.unwrap_or(""));
        tokio::time::sleep_until(answer_at).await;
        if cooldown.closes_session() {
            let _ = conn.write_reply(failure).await;
            let r = if cooldown.login_cooling_down {
                reply::LOGIN_COOLING_DOWN
            } else {
                reply::IP_COOLING_DOWN
            };
            let _ = conn.write_reply(&r).await;
            return Flow::Close;
        }
        if self.auth_failures >= MAX_AUTH_FAILURES {
            crate::metrics::rejected(self.project_id(), failure);
            let _ = conn.write_reply(failure).await;
            let _ = conn.write_reply(&reply::TOO_MANY_ERRORS).await;
            return Flow::Close;
        }
        self.error(conn, failure).await
    }

    /// Re-checks a logged-in session's token and project when the registry changed since the
    /// last check (a number compare otherwise). Called at every `MAIL FROM` and before the
    /// final `250` of DATA. `Some(flow)`: the caller stops; the session was refused or closed.
    pub(super) async fn revalidate<S: AsyncRead + AsyncWrite + Unpin>(
        &mut self,
        conn: &mut Connection<S>,
    ) -> Option<Flow> {
        let auth = self.auth.as_mut()?;
        let why = match recheck(&self.shared.registry, auth, &mut self.registry_generation) {
            Ok(()) => return None,
            Err(Recheck::Withdrawn(why)) => why,
            Err(Recheck::Unavailable(e)) => {
                tracing::error!(error = %e, "registry unavailable while re-checking a session");
                self.reset_transaction();
                return Some(self.send(conn, &reply::LOCAL_ERROR).await);
            }
        };
        Some(self.withdrawn(conn, why).await)
    }

    /// The session's credentials were withdrawn (`why`): refuse, then close.
    pub(super) async fn withdrawn<S: AsyncRead + AsyncWrite + Unpin>(
        &mut self,
        conn: &mut Connection<S>,
        why: &'static str,
    ) -> Flow {
        let (project, token) = match &self.auth {
            Some(a) => (a.project.id.clone(), a.token_id.clone()),
            None => Default::default(),
        };
        tracing::warn!(client = %self.peer, project = %project, token = %token, reason = why, "credentials withdrawn; closing session");
        let r = reply::credentials_withdrawn(why);
        crate::metrics::rejected(&project, &r);
        self.reset_transaction();
        let _ = conn.write_reply(&r).await;
        let _ = conn.write_reply(&reply::CREDENTIALS_WITHDRAWN_CLOSE).await;
        Flow::Close
    }

    /// Sends a 334 challenge and reads the client's answer line.
    async fn prompt<S: AsyncRead + AsyncWrite + Unpin>(
        &mut self,
        conn: &mut Connection<S>,
        challenge: &str,
    ) -> Result<Vec<u8>, Flow> {
        if conn.write_raw(challenge.as_bytes()).await.is_err() {
            return Err(Flow::Close);
        }
        match conn
            .read_line(MAX_COMMAND_LINE, self.shared.config.command_timeout())
            .await
        {
            Ok(line) => Ok(line),
            Err(FrameError::TooLong) => Err(self.error(conn, &reply::AUTH_SYNTAX).await),
            Err(e) => {
                if let Some(r) = e.reply() {
                    let _ = conn.write_reply(&r).await;
                }
                Err(Flow::Close)
            }
        }
    }
}

/// Why [`recheck`] refused credentials that held before.
#[derive(Debug)]
pub enum Recheck {
    /// `token revoked`, `project disabled`, `project deleted`.
    Withdrawn(&'static str),
    Unavailable(crate::policy::projects::RegistryError),
}

/// Re-checks `auth` when the registry changed since `generation` (a number compare
/// otherwise); on success `auth.project` is the project as it is now.
pub fn recheck(
    registry: &crate::policy::projects::Registry,
    auth: &mut Authenticated,
    generation: &mut u64,
) -> Result<(), Recheck> {
    let now = registry.generation();
    if now == *generation {
        return Ok(());
    }
    match registry.standing(&auth.project.id, &auth.token_id) {
        Ok(Standing::Valid(project)) => {
            *generation = now;
            auth.project = project;
            Ok(())
        }
        Ok(Standing::TokenRevoked) => Err(Recheck::Withdrawn("token revoked")),
        Ok(Standing::ProjectDisabled) => Err(Recheck::Withdrawn("project disabled")),
        Ok(Standing::ProjectDeleted) => Err(Recheck::Withdrawn("project deleted")),
        Err(e) => Err(Recheck::Unavailable(e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn enc(b: &[u8]) -> Vec<u8> {
        base64::engine::general_purpose::STANDARD
            .encode(b)
            .into_bytes()
    }

    #[test]
    fn plain_forms() {
        let c = decode_plain(&enc(b"\0prj_a\0tok")).unwrap();
        assert_eq!(c.username, "prj_a");
        assert_eq!(c.password.expose(), "tok");
        assert!(decode_plain(&enc(b"prj_a\0prj_a\0tok")).is_ok());
        for bad in [
            &b"other\0prj_a\0tok"[..],
            b"\0\0tok",
            b"\0prj_a\0",
            b"prj_a\0tok",
            b"\0prj_a\0tok\0",
            b"",
        ] {
            assert!(decode_plain(&enc(bad)).is_err(), "{bad:?}");
        }
        assert_eq!(decode_plain(b"*").unwrap_err(), AuthDecodeError::Cancelled);
        assert_eq!(decode_plain(b"!!!").unwrap_err(), AuthDecodeError::Base64);
    }

    proptest! {
        #[test]
        fn never_panics(input in proptest::collection::vec(any::<u8>(), 0..300)) {
            let _ = decode_plain(&input);
            let _ = decode_login_field(&input);
            let _ = decode_plain(&enc(&input));
        }
    }
}
