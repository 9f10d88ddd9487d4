//! DKIM signing, the last transformation: once a message is signed, nothing may change its
//! bytes, or receivers will see a broken signature.
//!
//! A message is signed when its header `From` domain has an active key (`dkim_keys.rs`) and the
//! sending project owns that domain; with both an RSA and an Ed25519 key active it gets both
//! signatures (RFC 8463 dual signing, for receivers that know only RSA). relaxed/relaxed, `t=`,
//! no `l=` (a length lets anyone append content under the signature). `From`, `To`, `Cc`,
//! `Subject`, `Date`, `Message-ID`, `Reply-To`, `Content-Type` and `MIME-Version` are
//! oversigned ([`SIGNED_HEADERS`]): listed once more than they occur, so none can be added in
//! transit, and listed headers the message lacks are signed as absent.
//!
//! The bytes signed are the bytes the upstream receives: the input is CRLF-only with lines of
//! at most 998 octets (inbound checks both), the signature header is folded, and dot-stuffing
//! on the wire is undone by the receiver. The only change a sender could still make is the
//! final CRLF, so it is settled here, before signing.
//!
//! When an active key cannot be used (key file missing or unreadable), mail is never lost;
//! each project chooses (`smtp-relay dkim on-failure`): `tempfail` (the default) refuses the
//! message with `451 4.3.0`, so the app retries and the admin sees the failure at once, instead
//! of unsigned mail being rejected or spam-foldered under a DMARC policy; `send-unsigned` queues
//! it with whatever signatures could be made and logs a warning.

use mail_auth::common::headers::HeaderWriter;
use mail_parser::{Address, HeaderName, HeaderValue, MessageParser};

use super::TransformContext;
use super::dkim_keys::{DkimKeyError, DkimKeys, OnFailure};
use crate::policy::projects::Project;
use crate::policy::sender::address_domain;

/// Headers every signature covers. The ones an attacker could add after signing to change
/// what a reader sees (M3AAWG's oversigning list) are named twice: mail-auth's signer puts
/// every occurrence of a listed name into `h=` and then each list position it did not use, so
/// a present header is listed once more than it occurs (a second `Subject` added in transit
/// breaks the signature), an absent one twice (it cannot be added either). `Received` is the
/// relay's own trace header (added before signing), as are `Date` and `Message-ID` when the
/// app left them out; later hops add more `Received`, so it is signed but not oversigned.
pub const SIGNED_HEADERS: &[&str] = &[
    "From",
    "From",
    "To",
    "To",
    "Cc",
    "Cc",
    "Subject",
    "Subject",
    "Date",
    "Date",
    "Message-ID",
    "Message-ID",
    "Reply-To",
    "Reply-To",
    "MIME-Version",
    "MIME-Version",
    "Content-Type",
    "Content-Type",
    "Content-Transfer-Encoding",
    "List-Unsubscribe",
    "List-Unsubscribe-Post",
    "Received",
];

/// What signing needs besides the message: the keys and the project that sends.
#[derive(Clone, Copy)]
pub struct Signing<'a> {
    pub keys: &'a DkimKeys,
    pub project: &'a Project,
}

impl std::fmt::Debug for Signing<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Signing")
            .field("project", &self.project.id)
            .finish_non_exhaustive()
    }
}

#[derive(Debug, thiserror::Error)]
pub enum DkimError {
    #[error("cannot DKIM-sign for {domain}: {source}")]
    Key {
        domain: String,
        #[source]
        source: DkimKeyError,
    },
    #[error("cannot DKIM-sign for {domain} with selector {selector}: {message}")]
    Sign {
        domain: String,
        selector: String,
        message: String,
    },
}

impl DkimError {
    pub fn domain(&self) -> &str {
        match self {
            DkimError::Key { domain, .. } | DkimError::Sign { domain, .. } => domain,
        }
    }
}

/// The distinct domains of the header `From` addresses, in order.
fn from_domains(message: &[u8]) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    let from = super::headers::only_fields(message, &["From"]);
    let Some(parsed) = MessageParser::new().parse_headers(&from) else {
        return out;
    };
    for h in parsed
        .headers()
        .iter()
        .filter(|h| h.name == HeaderName::From)
    {
        if let HeaderValue::Address(Address::List(list)) = &h.value {
            for a in list {
                if let Some(d) = a.address.as_deref().and_then(address_domain)
                    && !out.contains(&d)
                {
                    out.push(d);
                }
            }
        }
    }
    out
}

/// Signs `message` with every usable active key of its From domain(s) and returns the bytes to
/// spool, or the error when the project's policy is `tempfail`.
pub fn sign(
    ctx: &TransformContext<'_>,
    signing: &Signing<'_>,
    mut message: Vec<u8>,
) -> Result<Vec<u8>, DkimError> {
    if !message.is_empty() && !message.ends_with(b"\r\n") {
        message.extend_from_slice(b"\r\n");
    }
    let mut headers = String::new();
    let mut failures: Vec<DkimError> = Vec::new();
    for domain in from_domains(&message) {
        // Policy already refused a From outside the project; a key is still only ever used
        // for a domain the sending project owns.
        if !signing.project.domains.contains(&domain) {
            tracing::warn!(id = ctx.message_id, project = %signing.project.id, domain = %domain,
                "From domain not owned by the project: not signing");
            continue;
        }
        let active = match signing.keys.active(&domain) {
            Ok(a) => a,
            Err(source) => {
                failures.push(DkimError::Key { domain, source });
                continue;
            }
        };
        for key in &active.keys {
            // An RSA-2048 signature is a third of a millisecond of CPU or more: off the
            // session's async worker (`block_in_place`), so the other sessions it serves are
            // not held up behind it (they were: p99 jumped while p50 stayed put).
            match crate::run_blocking(|| key.signer.sign(&message)) {
                Ok(sig) => {
                    tracing::debug!(id = ctx.message_id, domain = %domain,
                        selector = %key.info.selector, algorithm = key.info.algorithm.signature_a(),
                        "DKIM signed");
                    headers.push_str(&sig.to_header());
                }
                Err(e) => failures.push(DkimError::Sign {
                    domain: domain.clone(),
                    selector: key.info.selector.clone(),
                    message: e.to_string(),
                }),
            }
        }
    }
    if !failures.is_empty() {
        // The policy is read only when something failed: the common path touches no storage.
        let policy = signing
            .keys
            .on_failure(&signing.project.id)
            .unwrap_or_default();
        for f in &failures {
            tracing::warn!(id = ctx.message_id, project = %signing.project.id,
                policy = policy.as_str(), error = %f, "DKIM signing failed");
        }
        if policy == OnFailure::Tempfail {
            let mut failures = failures;
            return Err(failures.swap_remove(0));
        }
    }
    if headers.is_empty() {
        return Ok(message);
    }
    let mut out = Vec::with_capacity(headers.len() + message.len());
    out.extend_from_slice(headers.as_bytes());
    out.extend_from_slice(&message);
    Ok(out)
}
