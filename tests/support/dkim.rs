//! DKIM verification as a receiver does it: mail-auth's verifier, with the TXT records the
//! relay printed as the only DNS answers. The resolver behind it points at a closed loopback
//! port, so a lookup the records do not answer fails at once instead of reaching the network.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use mail_auth::common::parse::TxtRecordParser;
use mail_auth::common::verify::DomainKey;
use mail_auth::hickory_resolver::config::{NameServerConfig, ResolverConfig, ResolverOpts};
use mail_auth::{
    AuthenticatedMessage, DkimResult, MessageAuthenticator, Parameters, ResolverCache, Txt,
};

use super::relay::Relay;

/// TXT answers by fully qualified name (mail-auth asks with a trailing dot).
#[derive(Default)]
pub struct Dns(Mutex<HashMap<Box<str>, Txt>>);

impl ResolverCache<Box<str>, Txt> for Dns {
    fn get<Q>(&self, name: &Q) -> Option<Txt>
    where
        Box<str>: std::borrow::Borrow<Q>,
        Q: std::hash::Hash + Eq + ?Sized,
    {
        self.0.lock().unwrap().get(name).cloned()
    }

    fn remove<Q>(&self, name: &Q) -> Option<Txt>
    where
        Box<str>: std::borrow::Borrow<Q>,
        Q: std::hash::Hash + Eq + ?Sized,
    {
        self.0.lock().unwrap().remove(name)
    }

    fn insert(&self, _: Box<str>, _: Txt, _: std::time::Instant) {}
}

/// Splits a zone-file line `name IN TXT "a" "b"` into the name and the joined strings.
pub fn parse_txt_line(line: &str) -> (String, String) {
    let (name, rest) = line.split_once(" IN TXT ").expect("a TXT record line");
    let mut value = String::new();
    let mut parts = rest.split('"');
    parts.next();
    while let Some(inside) = parts.next() {
        assert!(inside.len() <= 255, "TXT string over 255 bytes: {inside}");
        value.push_str(inside);
        parts.next();
    }
    (name.trim().to_string(), value)
}

impl Dns {
    /// Publishes a DKIM record given as the zone-file line the relay printed.
    pub fn publish(&self, line: &str) {
        let (name, value) = parse_txt_line(line);
        assert!(name.ends_with('.'), "{name}");
        let key = DomainKey::parse(value.as_bytes()).expect("a valid DKIM record");
        self.0
            .lock()
            .unwrap()
            .insert(name.into_boxed_str(), Txt::from(key));
    }
}

/// One signature as the verifier saw it.
#[derive(Debug, Clone)]
pub struct Verified {
    pub result: DkimResult,
    pub domain: String,
    pub selector: String,
    /// `rsa-sha256` or `ed25519-sha256`.
    pub algorithm: String,
    pub headers: Vec<String>,
    pub t: u64,
    pub l: u64,
}

impl Verified {
    pub fn pass(&self) -> bool {
        self.result == DkimResult::Pass
    }
}

fn authenticator() -> MessageAuthenticator {
    let config = ResolverConfig::from_name_servers(vec![NameServerConfig::udp(
        "127.0.0.1".parse().unwrap(),
    )]);
    let mut opts = ResolverOpts::default();
    opts.timeout = Duration::from_millis(300);
    opts.attempts = 1;
    MessageAuthenticator::new(config, opts).expect("resolver")
}

/// Verifies every DKIM signature of `message`.
pub async fn verify(dns: &Dns, message: &[u8]) -> Vec<Verified> {
    let msg = AuthenticatedMessage::parse(message).expect("parsable message");
    let auth = authenticator();
    let out = auth
        .verify_dkim(Parameters::new(&msg).with_txt_cache(dns))
        .await;
    out.iter()
        .map(|o| {
            let sig = o.signature();
            Verified {
                result: o.result().clone(),
                domain: sig.map(|s| s.d.clone()).unwrap_or_default(),
                selector: sig.map(|s| s.s.clone()).unwrap_or_default(),
                algorithm: sig
                    .map(|s| match s.a {
                        mail_auth::common::crypto::Algorithm::RsaSha256 => "rsa-sha256",
                        mail_auth::common::crypto::Algorithm::Ed25519Sha256 => "ed25519-sha256",
                        mail_auth::common::crypto::Algorithm::RsaSha1 => "rsa-sha1",
                    })
                    .unwrap_or_default()
                    .to_string(),
                headers: sig.map(|s| s.h.clone()).unwrap_or_default(),
                t: sig.map(|s| s.t).unwrap_or_default(),
                l: sig.map(|s| s.l).unwrap_or_default(),
            }
        })
        .collect()
}

/// Runs `smtp-relay dkim keygen` as an admin would (human output) and returns the DNS record
/// line it told them to publish.
pub fn keygen(
    relay: &Relay,
    domain: &str,
    selector: &str,
    algorithm: &str,
    activate: bool,
) -> String {
    let mut args = vec![
        "dkim",
        "keygen",
        "--domain",
        domain,
        "--selector",
        selector,
        "--algorithm",
        algorithm,
    ];
    if activate {
        args.push("--activate");
    }
    let out = relay.cli(&args);
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "dkim keygen failed: {}{}",
        stdout,
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        !stdout.contains("PRIVATE KEY"),
        "private key printed:\n{stdout}"
    );
    stdout
        .lines()
        .find(|l| l.contains("._domainkey.") && l.contains(" IN TXT "))
        .unwrap_or_else(|| panic!("no DNS record in keygen output:\n{stdout}"))
        .to_string()
}

/// The DKIM-Signature header fields of a message, top to bottom, unfolded.
pub fn signature_headers(message: &[u8]) -> Vec<String> {
    let text = String::from_utf8_lossy(message);
    let head = text.split("\r\n\r\n").next().unwrap_or("");
    let unfolded = head.replace("\r\n\t", " ").replace("\r\n ", " ");
    unfolded
        .split("\r\n")
        .filter(|l| l.to_ascii_lowercase().starts_with("dkim-signature:"))
        .map(str::to_string)
        .collect()
}

/// A relay forwarding to a test upstream over implicit TLS, with one project.
pub struct Setup {
    pub relay: Relay,
    pub up: super::upstream::TestUpstream,
    pub id: String,
    pub token: String,
    _tmp: tempfile::TempDir,
}

impl Setup {
    pub async fn start(domains: &[&str]) -> Setup {
        use super::relay::{RelayOptions, smtp_upstream};
        use super::upstream::{TestUpstream, UpstreamOptions};
        let pki = super::certs::TestPki::generate();
        let up = TestUpstream::start(UpstreamOptions::implicit(&pki)).await;
        let tmp = tempfile::tempdir().unwrap();
        let files = pki.write_to(tmp.path());
        let relay = Relay::start(RelayOptions {
            upstreams: Some(smtp_upstream(up.port(), "implicit", &files.ca, None)),
            ..Default::default()
        });
        let (id, token) = relay.add_project("app", domains);
        Setup {
            relay,
            up,
            id,
            token,
            _tmp: tmp,
        }
    }

    /// Submits one message as `(id, token)`; `body` is given already dot-stuffed.
    pub async fn submit_as(
        &self,
        id: &str,
        token: &str,
        from: &str,
        subject: &str,
        body: &str,
    ) -> super::client::Reply {
        let mut c =
            super::client::Client::logged_in(self.relay.starttls, &self.relay.pki, id, token).await;
        let msg = super::client::plain_message(from, "user@example.net", subject, body);
        c.send(from, &["user@example.net"], &msg).await
    }

    /// Submits as this setup's project and waits until the upstream has `n` messages;
    /// returns the last one.
    pub async fn deliver(
        &self,
        from: &str,
        subject: &str,
        body: &str,
        n: usize,
    ) -> super::upstream::ReceivedMessage {
        let r = self
            .submit_as(&self.id, &self.token, from, subject, body)
            .await;
        assert_eq!(r.code, 250, "{r:?}\n{}", self.relay.server_log());
        let got = self.up.wait_for(n, Duration::from_secs(30)).await;
        got[n - 1].clone()
    }
}
