//! Web panel sessions: who is logged in, until when, and the per-session CSRF token.
//!
//! A session is made by pasting an admin token once; from then on the browser holds only a
//! random session id in an `HttpOnly`, `SameSite=Strict` cookie. Sessions live in server
//! memory (a restart logs everyone out) keyed by the SHA-256 of the id, and store the admin
//! token's id, label and role — never the token. The admin token is looked up again on every
//! request, so revoking it ends its sessions at once.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use axum::http::HeaderMap;
use base64::Engine;
use rand::RngCore;
use sha2::{Digest, Sha256};

use crate::policy::admin_tokens::{AdminTokenInfo, Role};
use crate::secret::Secret;

/// More live sessions than this and the oldest are dropped (logins need an admin token, so
/// this only bounds memory, it is never reached in normal use).
const MAX_SESSIONS: usize = 10_000;

/// A project token just created, shown once on the next page and then forgotten.
#[derive(Clone)]
pub struct Reveal {
    pub project: String,
    pub token_id: String,
    pub token: Secret,
}

/// A logged-in browser.
#[derive(Clone)]
pub struct Session {
    pub token_id: String,
    pub label: String,
    pub role: Role,
    /// Echoed in every form; a POST without it is refused.
    pub csrf: String,
    expires: Instant,
    /// Where the id is kept (the SHA-256 of the cookie value).
    key: String,
}

impl Session {
    pub fn is_admin(&self) -> bool {
        self.role == Role::Admin
    }
}

struct Entry {
    session: Session,
    reveal: Option<Reveal>,
    /// One message for the next page ("project created", or why something was refused).
    notice: Option<Notice>,
    /// An outcome for one page, once: (page, value) — a send-test's result, or a new admin
    /// token to reveal.
    result: Option<(&'static str, serde_json::Value)>,
}

#[derive(Clone)]
pub struct Notice {
    pub error: bool,
    pub text: String,
}

pub struct Sessions {
    map: Mutex<HashMap<String, Entry>>,
    ttl: Duration,
    /// Served over TLS: the cookie is `Secure` and `__Host-` prefixed.
    secure: bool,
}

fn random_token() -> String {
    let mut b = [0u8; 32];
    rand::rng().fill_bytes(&mut b);
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b)
}

fn key_of(id: &str) -> String {
    hex::encode(Sha256::digest(id.as_bytes()))
}

impl Sessions {
    pub fn new(ttl: Duration, secure: bool) -> Sessions {
        Sessions {
            map: Mutex::new(HashMap::new()),
            ttl,
            secure,
        }
    }

    /// Browsers only keep a `__Host-` cookie when it is `Secure`, which needs HTTPS; the
    /// plain-HTTP panel (loopback only) uses an unprefixed name.
    pub fn cookie_name(&self) -> &'static str {
        if self.secure {
            "__Host-smtp-relay-session"
        } else {
            "smtp-relay-session"
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Entry>> {
        self.map.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Starts a session for `token`; answers the `Set-Cookie` value.
    pub fn create(&self, token: &AdminTokenInfo) -> String {
        let id = random_token();
        let key = key_of(&id);
        let now = Instant::now();
        let session = Session {
            token_id: token.id.clone(),
            label: token.label.clone(),
            role: token.role,
            csrf: random_token(),
            expires: now + self.ttl,
            key: key.clone(),
        };
        let mut map = self.lock();
        map.retain(|_, e| e.session.expires > now);
        if map.len() >= MAX_SESSIONS
            && let Some(oldest) = map
                .iter()
                .min_by_key(|(_, e)| e.session.expires)
                .map(|(k, _)| k.clone())
        {
            map.remove(&oldest);
        }
        map.insert(
            key,
            Entry {
                session,
                reveal: None,
                notice: None,
                result: None,
            },
        );
        let mut cookie = format!(
            "{}={id}; Path=/; HttpOnly; SameSite=Strict; Max-Age={}",
            self.cookie_name(),
            self.ttl.as_secs()
        );
        if self.secure {
            cookie.push_str("; Secure");
        }
        cookie
    }

    /// The `Set-Cookie` value that makes the browser forget its session.
    pub fn clear_cookie(&self) -> String {
        let mut cookie = format!(
            "{}=; Path=/; HttpOnly; SameSite=Strict; Max-Age=0",
            self.cookie_name()
        );
        if self.secure {
            cookie.push_str("; Secure");
        }
        cookie
    }

    /// The live session named by the request's cookie.
    pub fn find(&self, headers: &HeaderMap) -> Option<Session> {
        let id = cookie_value(headers, self.cookie_name())?;
        let key = key_of(id);
        let mut map = self.lock();
        let entry = map.get(&key)?;
        if entry.session.expires <= Instant::now() {
            map.remove(&key);
            return None;
        }
        Some(entry.session.clone())
    }

    pub fn end(&self, session: &Session) {
        self.lock().remove(&session.key);
    }

    pub fn set_reveal(&self, session: &Session, reveal: Reveal) {
        if let Some(e) = self.lock().get_mut(&session.key) {
            e.reveal = Some(reveal);
        }
    }

    /// The token to show on `project`'s page, once.
    pub fn take_reveal(&self, session: &Session, project: &str) -> Option<Reveal> {
        let mut map = self.lock();
        let e = map.get_mut(&session.key)?;
        if e.reveal.as_ref().is_some_and(|r| r.project == project) {
            e.reveal.take()
        } else {
            None
        }
    }

    pub fn notify(&self, session: &Session, error: bool, text: impl Into<String>) {
        if let Some(e) = self.lock().get_mut(&session.key) {
            e.notice = Some(Notice {
                error,
                text: text.into(),
            });
        }
    }

    pub fn take_notice(&self, session: &Session) -> Option<Notice> {
        self.lock().get_mut(&session.key)?.notice.take()
    }

    /// Keeps an operation's outcome for the next view of `page`, once.
    pub fn keep_result(&self, session: &Session, page: &'static str, result: serde_json::Value) {
        if let Some(e) = self.lock().get_mut(&session.key) {
            e.result = Some((page, result));
        }
    }

    /// The outcome kept for `page` (taken: a reload no longer shows it).
    pub fn take_result(&self, session: &Session, page: &str) -> Option<serde_json::Value> {
        let mut map = self.lock();
        let e = map.get_mut(&session.key)?;
        if e.result.as_ref().is_some_and(|(p, _)| *p == page) {
            e.result.take().map(|(_, v)| v)
        } else {
            None
        }
    }
}

/// The value of cookie `name` in the request's `Cookie` headers.
fn cookie_value<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get_all(axum::http::header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v)
        .filter(|v| !v.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn token(role: Role) -> AdminTokenInfo {
        AdminTokenInfo {
            id: "at1".into(),
            label: "ops".into(),
            role,
            created: 0,
        }
    }

    fn headers(cookie: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(axum::http::header::COOKIE, cookie.parse().unwrap());
        h
    }

    #[test]
    fn cookie_finds_session_and_expiry_ends_it() {
        let s = Sessions::new(Duration::from_millis(50), true);
        let set = s.create(&token(Role::Viewer));
        assert!(set.starts_with("__Host-smtp-relay-session="), "{set}");
        assert!(
            set.contains("HttpOnly") && set.contains("SameSite=Strict") && set.contains("Secure")
        );
        let id = set.split(';').next().unwrap();
        let found = s.find(&headers(&format!("other=1; {id}"))).unwrap();
        assert_eq!(found.role, Role::Viewer);
        assert!(s.find(&headers("smtp-relay-session=nope")).is_none());
        std::thread::sleep(Duration::from_millis(60));
        assert!(s.find(&headers(id)).is_none());
    }

    #[test]
    fn reveal_is_shown_once_and_only_for_its_project() {
        let s = Sessions::new(Duration::from_secs(60), false);
        let set = s.create(&token(Role::Admin));
        assert!(!set.contains("Secure") && !set.contains("__Host-"));
        let session = s.find(&headers(set.split(';').next().unwrap())).unwrap();
        s.set_reveal(
            &session,
            Reveal {
                project: "p1".into(),
                token_id: "t1".into(),
                token: Secret::new("smtp_x"),
            },
        );
        assert!(s.take_reveal(&session, "p2").is_none());
        assert!(s.take_reveal(&session, "p1").is_some());
        assert!(s.take_reveal(&session, "p1").is_none());
    }
}
