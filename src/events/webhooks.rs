//! Webhook endpoints (per project, or global), their `whsec_` secrets, Standard Webhooks
//! signatures, and the checks that keep a webhook URL from reaching inside the network (SSRF).
//!
//! Endpoints live in the `webhooks` tree. A secret is shown once, at `add` and
//! `rotate-secret`; after a rotation the previous secret keeps signing too (both signatures
//! in `webhook-signature`) for [`ROTATION_OVERLAP_MS`], so receivers can switch without
//! dropping a delivery. Signatures follow <https://www.standardwebhooks.com>:
//! `v1,<base64 HMAC-SHA256(key, "<webhook-id>.<webhook-timestamp>.<body>")>`, the key being
//! the base64 part of the secret.

use std::net::{IpAddr, SocketAddr};

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use hmac::{KeyInit, Mac};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use super::{Event, EventError, EventKind};
use crate::queue::now_ms;
use crate::store::Store;

/// How long a rotated-out secret still signs.
pub const ROTATION_OVERLAP_MS: u64 = 24 * 3600 * 1000;

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Endpoint {
    pub id: String,
    /// `None`: every project's events.
    pub project: Option<String>,
    pub url: String,
    pub events: Vec<EventKind>,
    pub secret: String,
    #[serde(default)]
    pub previous_secret: Option<String>,
    #[serde(default)]
    pub previous_until_ms: u64,
    pub enabled: bool,
    #[serde(default)]
    pub disabled_reason: Option<String>,
    pub created_ms: u64,
    /// Since when every delivery has failed (cleared by a success).
    #[serde(default)]
    pub failing_since_ms: Option<u64>,
}

impl Endpoint {
    pub fn wants(&self, e: &Event) -> bool {
        self.enabled
            && self.events.contains(&e.kind)
            && self.project.as_deref().is_none_or(|p| p == e.project)
    }

    /// The secrets that sign now: the current one, and the previous one during a rotation.
    pub fn signing_secrets(&self, now: u64) -> Vec<&str> {
        let mut s = vec![self.secret.as_str()];
        if let Some(prev) = &self.previous_secret
            && now < self.previous_until_ms
        {
            s.push(prev);
        }
        s
    }

    /// As shown to admins: never the secret.
    pub fn to_json(&self) -> Value {
        json!({
            "id": self.id,
            "project": self.project,
            "url": self.url,
            "events": self.events.iter().map(|k| k.as_str()).collect::<Vec<_>>(),
            "enabled": self.enabled,
            "disabled_reason": self.disabled_reason,
            "created_ms": self.created_ms,
            "failing_since_ms": self.failing_since_ms,
            "rotating": self.previous_secret.is_some() && now_ms() < self.previous_until_ms,
        })
    }
}

/// A new `whsec_` secret: 32 random bytes.
pub fn new_secret() -> String {
    format!("whsec_{}", B64.encode(rand::random::<[u8; 32]>()))
}

/// `v1,<base64 HMAC-SHA256>` of `id.timestamp.body` with `secret` (`whsec_…`).
pub fn sign(secret: &str, id: &str, timestamp: u64, body: &[u8]) -> String {
    let key = B64
        .decode(secret.trim_start_matches("whsec_"))
        .unwrap_or_else(|_| secret.as_bytes().to_vec());
    let mut mac = match hmac::Hmac::<sha2::Sha256>::new_from_slice(&key) {
        Ok(m) => m,
        Err(_) => return String::new(), // HMAC takes keys of any length
    };
    mac.update(id.as_bytes());
    mac.update(b".");
    mac.update(timestamp.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    format!("v1,{}", B64.encode(mac.finalize().into_bytes()))
}

/// The JSON body sent for an event: `{"type": "message.<kind>", "timestamp", "data"}`.
pub fn payload(e: &Event) -> String {
    json!({
        "type": format!("message.{}", e.kind.as_str()),
        "timestamp": rfc3339(e.time_ms),
        "data": e,
    })
    .to_string()
}

fn rfc3339(ms: u64) -> String {
    let dt = mail_parser::DateTime::from_timestamp((ms / 1000) as i64);
    format!(
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.{:03}Z",
        dt.year,
        dt.month,
        dt.day,
        dt.hour,
        dt.minute,
        dt.second,
        ms % 1000
    )
}

/// Whether a webhook may connect to `ip`. Private, link-local, unspecified, multicast and
/// shared (CGNAT) addresses never; loopback only when `[webhooks] allow_loopback`.
pub fn address_allowed(ip: IpAddr, allow_loopback: bool) -> Result<(), String> {
    let ip = match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map(IpAddr::V4).unwrap_or(ip),
        v4 => v4,
    };
    if ip.is_loopback() {
        return if allow_loopback {
            Ok(())
        } else {
            Err(format!(
                "{ip} is a loopback address (allowed only with webhooks.allow_loopback = true)"
            ))
        };
    }
    let refused = match ip {
        IpAddr::V4(v4) => {
            let o = v4.octets();
            v4.is_private()
                || v4.is_link_local()
                || v4.is_unspecified()
                || v4.is_multicast()
                || v4.is_broadcast()
                || (o[0] == 100 && (o[1] & 0xc0) == 64)
                || o[0] == 0
        }
        IpAddr::V6(v6) => {
            let s = v6.segments();
            v6.is_unspecified()
                || v6.is_multicast()
                || (s[0] & 0xfe00) == 0xfc00
                || (s[0] & 0xffc0) == 0xfe80
        }
    };
    if refused {
        Err(format!(
            "{ip} is a private, link-local or otherwise internal address"
        ))
    } else {
        Ok(())
    }
}

/// A webhook URL taken apart and checked: scheme, host, port.
#[derive(Debug, Clone)]
pub struct Target {
    pub url: reqwest::Url,
    pub host: String,
    pub port: u16,
}

/// Checks the form of a URL: `https://`, or `http://` to a loopback host when allowed; no
/// credentials in it.
pub fn parse_url(url: &str, allow_loopback: bool) -> Result<Target, String> {
    let parsed = reqwest::Url::parse(url.trim()).map_err(|e| format!("invalid URL: {e}"))?;
    let host = parsed
        .host_str()
        .ok_or("the URL has no host")?
        .trim_matches(['[', ']'])
        .to_string();
    if !parsed.username().is_empty() || parsed.password().is_some() {
        return Err("credentials in the URL are not allowed (the signature authenticates)".into());
    }
    let loopback_host =
        host == "localhost" || host.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback());
    match parsed.scheme() {
        "https" => {}
        "http" if allow_loopback && loopback_host => {}
        "http" => {
            return Err(
                "webhooks are sent over HTTPS only (http:// only to loopback with \
                 webhooks.allow_loopback = true)"
                    .into(),
            );
        }
        other => return Err(format!("unsupported scheme {other}: use https://")),
    }
    let port = parsed
        .port_or_known_default()
        .ok_or("the URL has no port")?;
    Ok(Target {
        url: parsed,
        host,
        port,
    })
}

/// Resolves the target once and returns the first address it may connect to, or why none.
/// The caller connects to exactly this address (no second lookup an attacker could change).
pub async fn resolve_checked(t: &Target, allow_loopback: bool) -> Result<SocketAddr, String> {
    let lookup = tokio::net::lookup_host((t.host.as_str(), t.port));
    let addrs: Vec<SocketAddr> = tokio::time::timeout(std::time::Duration::from_secs(5), lookup)
        .await
        .map_err(|_| format!("resolving {} timed out", t.host))?
        .map_err(|e| format!("cannot resolve {}: {e}", t.host))?
        .collect();
    let mut why = format!("{} has no address", t.host);
    for a in addrs {
        match address_allowed(a.ip(), allow_loopback) {
            Ok(()) => return Ok(a),
            Err(e) => why = format!("refused target {}: {e}", t.host),
        }
    }
    Err(why)
}

/// The `webhooks` tree.
pub struct Endpoints;

impl Endpoints {
    pub fn load_enabled(store: &Store) -> Result<Vec<Endpoint>, sled::Error> {
        Ok(Self::all(store)?
            .into_iter()
            .filter(|e| e.enabled)
            .collect())
    }

    pub fn all(store: &Store) -> Result<Vec<Endpoint>, sled::Error> {
        let mut out = Vec::new();
        for item in store.webhooks.iter() {
            let (_, v) = item?;
            if let Ok(e) = serde_json::from_slice::<Endpoint>(&v) {
                out.push(e);
            }
        }
        Ok(out)
    }

    pub fn get(store: &Store, id: &str) -> Result<Endpoint, EventError> {
        match store.webhooks.get(id.as_bytes())? {
            Some(v) => serde_json::from_slice(&v)
                .map_err(|e| EventError::Store(crate::store::StoreError::Corrupt(e.to_string()))),
            None => Err(EventError::NotFound(id.to_string())),
        }
    }

    pub fn put(store: &Store, e: &Endpoint) -> Result<(), sled::Error> {
        store
            .webhooks
            .insert(e.id.as_bytes(), serde_json::to_vec(e).unwrap_or_default())?;
        Ok(())
    }

    /// Validates and stores a new endpoint. The URL's host is resolved now too, so a target
    /// inside the network is refused at once (and again before every delivery).
    pub fn add(
        store: &Store,
        project: Option<String>,
        url: &str,
        events: &[String],
        allow_loopback: bool,
    ) -> Result<Endpoint, EventError> {
        let target = parse_url(url, allow_loopback).map_err(EventError::Invalid)?;
        check_resolves_outside(&target, allow_loopback).map_err(EventError::Invalid)?;
        let mut kinds = Vec::new();
        for e in events.iter().flat_map(|e| e.split(',')) {
            if e.trim().is_empty() {
                continue;
            }
            let k: EventKind = e.parse()?;
            if !kinds.contains(&k) {
                kinds.push(k);
            }
        }
        if kinds.is_empty() {
            return Err(EventError::Invalid(
                "name at least one event type (--events relayed,failed,…)".into(),
            ));
        }
        let ep = Endpoint {
            id: format!("wh_{:012x}", rand::random::<u64>() & 0xffff_ffff_ffff),
            project,
            url: target.url.to_string(),
            events: kinds,
            secret: new_secret(),
            previous_secret: None,
            previous_until_ms: 0,
            enabled: true,
            disabled_reason: None,
            created_ms: now_ms(),
            failing_since_ms: None,
        };
        Self::put(store, &ep)?;
        Ok(ep)
    }

    /// Changes a stored endpoint atomically (compare-and-swap), so the delivery worker and an
    /// admin operation never undo each other's change, and a removed endpoint stays removed.
    /// `None` when there is no such endpoint.
    pub fn modify(
        store: &Store,
        id: &str,
        f: impl Fn(&mut Endpoint),
    ) -> Result<Option<Endpoint>, sled::Error> {
        let new = store.webhooks.update_and_fetch(id.as_bytes(), |old| {
            let mut ep: Endpoint = serde_json::from_slice(old?).ok()?;
            f(&mut ep);
            Some(serde_json::to_vec(&ep).unwrap_or_default())
        })?;
        Ok(new.and_then(|v| serde_json::from_slice(&v).ok()))
    }

    fn modify_existing(
        store: &Store,
        id: &str,
        f: impl Fn(&mut Endpoint),
    ) -> Result<Endpoint, EventError> {
        Self::modify(store, id, f)?.ok_or_else(|| EventError::NotFound(id.to_string()))
    }

    pub fn remove(store: &Store, id: &str) -> Result<Endpoint, EventError> {
        let ep = Self::get(store, id)?;
        store.webhooks.remove(id.as_bytes())?;
        Ok(ep)
    }

    /// A new secret; the old one keeps signing for [`ROTATION_OVERLAP_MS`].
    pub fn rotate_secret(store: &Store, id: &str) -> Result<Endpoint, EventError> {
        let (secret, until) = (new_secret(), now_ms() + ROTATION_OVERLAP_MS);
        Self::modify_existing(store, id, |ep| {
            ep.previous_secret = Some(std::mem::replace(&mut ep.secret, secret.clone()));
            ep.previous_until_ms = until;
        })
    }

    /// Turns an endpoint on again (after `410 Gone` or days of failures).
    pub fn enable(store: &Store, id: &str) -> Result<Endpoint, EventError> {
        Self::modify_existing(store, id, |ep| {
            ep.enabled = true;
            ep.disabled_reason = None;
            ep.failing_since_ms = None;
        })
    }
}

/// The admin operations on events and endpoints (`admin::execute`): JSON out, secrets only
/// in the answers to `add` and `rotate-secret`.
#[derive(Clone, Debug)]
pub struct WebhookAdmin {
    store: Store,
    allow_loopback: bool,
}

impl WebhookAdmin {
    pub fn new(store: Store, config: &crate::config::WebhooksConfig) -> WebhookAdmin {
        WebhookAdmin {
            store,
            allow_loopback: config.allow_loopback,
        }
    }

    pub fn for_message(&self, id: &str) -> Result<Vec<Event>, EventError> {
        super::for_message(&self.store, id)
    }

    /// See [`super::of_messages_since`] (the stats of `admin/stats.rs`).
    pub fn of_messages_since(
        &self,
        first_ms: u64,
        each: impl FnMut(Event),
    ) -> Result<(), EventError> {
        super::of_messages_since(&self.store, first_ms, each)
    }

    pub fn add(
        &self,
        project: Option<String>,
        url: &str,
        events: &[String],
    ) -> Result<Value, EventError> {
        let ep = Endpoints::add(&self.store, project, url, events, self.allow_loopback)?;
        let mut v = ep.to_json();
        v["secret"] = Value::String(ep.secret.clone());
        Ok(v)
    }

    pub fn list(&self, project: Option<&str>) -> Result<Value, EventError> {
        Ok(Value::Array(
            Endpoints::all(&self.store)?
                .iter()
                .filter(|e| project.is_none_or(|p| e.project.as_deref() == Some(p)))
                .map(Endpoint::to_json)
                .collect(),
        ))
    }

    pub fn show(&self, id: &str) -> Result<Value, EventError> {
        let ep = Endpoints::get(&self.store, id)?;
        let mut v = ep.to_json();
        v["pending"] = json!(super::outbox::pending_count(&self.store, id));
        v["attempts"] =
            serde_json::to_value(super::outbox::attempts(&self.store, id)?).unwrap_or(Value::Null);
        Ok(v)
    }

    pub fn remove(&self, id: &str) -> Result<Value, EventError> {
        Ok(Endpoints::remove(&self.store, id)?.to_json())
    }

    pub fn rotate_secret(&self, id: &str) -> Result<Value, EventError> {
        let ep = Endpoints::rotate_secret(&self.store, id)?;
        let mut v = ep.to_json();
        v["secret"] = Value::String(ep.secret.clone());
        v["previous_secret_valid_until_ms"] = json!(ep.previous_until_ms);
        Ok(v)
    }

    pub fn enable(&self, id: &str) -> Result<Value, EventError> {
        Ok(Endpoints::enable(&self.store, id)?.to_json())
    }

    /// Queues a `webhook.test` delivery through the outbox, like any event.
    pub fn test(&self, id: &str) -> Result<Value, EventError> {
        let ep = Endpoints::get(&self.store, id)?;
        if !ep.enabled {
            return Err(EventError::Invalid(format!(
                "webhook {id} is disabled ({}); enable it first",
                ep.disabled_reason
                    .as_deref()
                    .unwrap_or("no reason recorded")
            )));
        }
        let now = now_ms();
        let event_id = format!("evt_test{:016x}", rand::random::<u64>());
        let body = json!({
            "type": "webhook.test",
            "timestamp": rfc3339(now),
            "data": { "id": event_id, "endpoint": id, "project": ep.project },
        })
        .to_string();
        super::outbox::push(&self.store, id, &event_id, &body, now)?;
        super::outbox::wake();
        Ok(json!({ "endpoint": id, "event_id": event_id, "queued": true }))
    }
}

/// Blocking resolution at `add` (admin operations run on a blocking thread).
fn check_resolves_outside(t: &Target, allow_loopback: bool) -> Result<(), String> {
    use std::net::ToSocketAddrs;
    if let Ok(ip) = t.host.parse::<IpAddr>() {
        return address_allowed(ip, allow_loopback).map_err(|e| format!("refused target: {e}"));
    }
    let addrs: Vec<SocketAddr> = (t.host.as_str(), t.port)
        .to_socket_addrs()
        .map_err(|e| format!("cannot resolve {}: {e}", t.host))?
        .collect();
    if addrs
        .iter()
        .any(|a| address_allowed(a.ip(), allow_loopback).is_ok())
    {
        Ok(())
    } else {
        Err(match addrs.first() {
            Some(a) => format!(
                "refused target {}: {}",
                t.host,
                address_allowed(a.ip(), allow_loopback)
                    .err()
                    .unwrap_or_default()
            ),
            None => format!("{} has no address", t.host),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The example of the Standard Webhooks reference libraries (svix test vector).
    #[test]
    fn signature_matches_the_reference_vector() {
        let sig = sign(
            "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw",
            "msg_p5jXN8AQM9LWM0D4loKWxJek",
            1614265330,
            br#"{"test": 2432232314}"#,
        );
        assert_eq!(sig, "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=");
    }

    #[test]
    fn internal_addresses_are_refused() {
        for ip in [
            "10.1.2.3",
            "172.16.0.1",
            "192.168.1.1",
            "169.254.169.254",
            "100.64.0.1",
            "0.0.0.0",
            "::",
            "fe80::1",
            "fd00::1",
            "::ffff:10.0.0.1",
            "224.0.0.1",
        ] {
            assert!(address_allowed(ip.parse().unwrap(), true).is_err(), "{ip}");
        }
        assert!(address_allowed("127.0.0.1".parse().unwrap(), false).is_err());
        assert!(address_allowed("::1".parse().unwrap(), true).is_ok());
        assert!(address_allowed("93.184.216.34".parse().unwrap(), false).is_ok());
    }

    #[test]
    fn urls_are_https_unless_loopback_allowed() {
        assert!(parse_url("http://example.com/x", true).is_err());
        assert!(parse_url("http://127.0.0.1:8080/x", false).is_err());
        assert!(parse_url("http://127.0.0.1:8080/x", true).is_ok());
        assert!(parse_url("https://u:p@example.com/", false).is_err());
        assert!(parse_url("ftp://example.com/", false).is_err());
        assert_eq!(parse_url("https://example.com/h", false).unwrap().port, 443);
    }
}
