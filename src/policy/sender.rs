//! May this project send as this address?
//!
//! The envelope sender and every header `From` address must be in one of the project's
//! domains: exact, case-insensitive domain match (a subdomain only if it is listed itself).
//! Anything unusual — a trailing dot, an IP literal, a source route, a quoted local part
//! hiding an `@`, several From headers, a group — is refused rather than interpreted.
//! `Sender`, `Resent-From` and `Resent-Sender` follow the same rule (clients show them as
//! "B on behalf of A"); a project may allow a foreign `Sender` (`allow_foreign_sender`).
//!
//! Internationalised domains (U-labels, RFC 6531) are compared after IDNA (UTS 46)
//! normalisation to their lowercase A-label form, the form project domains are stored in.
//!
//! Recipients get their own check ([`check_recipient`]): a local part that could route the
//! message further at the next hop (`%` hack, `!` bang path, a quoted `@`) is refused, and
//! so are domains a relay for apps has no business sending to (dotless names, `localhost`,
//! `.invalid`, …), since the next hop would be trusted to do something the relay never checked.

use mail_parser::{Address, HeaderName, HeaderValue, MessageParser};

use crate::policy::projects::Project;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SenderError {
    #[error("{0}: Sender address rejected: not owned by project")]
    EnvelopeNotOwned(String),
    #[error("Header From address {0} not owned by project")]
    HeaderNotOwned(String),
    #[error("Message must have exactly one From header")]
    FromCount,
    #[error("From header must list plain addresses, not a group")]
    FromGroup,
    #[error("Message has no From address")]
    FromMissing,
    /// `Sender`, `Resent-From` or `Resent-Sender` naming an address outside the project.
    #[error("Header {field} address {addr} not owned by project")]
    OriginatorNotOwned { field: &'static str, addr: String },
}

/// Why a recipient address is refused (mapped to a reply in `inbound/reply.rs`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RecipientError {
    #[error("Bad recipient address syntax")]
    Syntax,
    #[error("<{0}>: Recipient address rejected: % or ! routing in the local part is not relayed")]
    Routed(String),
    #[error("<{0}>: Recipient address rejected: domain {1} is not deliverable from this relay")]
    DomainRefused(String, String),
}

/// A domain in the form project domains are stored in: IDNA (UTS 46) to lowercase A-labels,
/// STD3 letters/digits/hyphens only, DNS lengths checked. `None` for anything else (a
/// trailing dot, an address literal, an empty label, an underscore…).
pub fn normalize_domain(domain: &str) -> Option<String> {
    use idna::uts46::{AsciiDenyList, DnsLength, Hyphens, Uts46};
    if domain.is_empty() || domain.ends_with('.') || domain.starts_with('[') {
        return None;
    }
    let ascii = Uts46::new()
        .to_ascii(
            domain.as_bytes(),
            AsciiDenyList::STD3,
            Hyphens::Allow,
            DnsLength::Verify,
        )
        .ok()?;
    // UTS 46 maps some code points to dots or nothing; what is left must be plain LDH.
    let ok = !ascii.is_empty()
        && ascii
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.');
    ok.then(|| ascii.into_owned())
}

/// The local part and the normalised domain of a plain `local@domain` address.
fn split_address(addr: &str) -> Option<(&str, String)> {
    let (local, domain) = addr.rsplit_once('@')?;
    if local.is_empty()
        || local.contains('@')
        || local.contains('"')
        || local.starts_with('@')
        || local.contains(':')
    {
        return None;
    }
    Some((local, normalize_domain(domain)?))
}

/// The domain of a plain `local@domain` address, normalised, if it is one we accept.
pub fn address_domain(addr: &str) -> Option<String> {
    split_address(addr).map(|(_, d)| d)
}

/// What makes two recipients the same mailbox: the local part exactly (it is the remote
/// host's to interpret) and the domain after normalisation (case-insensitive, IDNA).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct RecipientKey {
    pub local: String,
    pub domain: String,
}

/// May the relay forward to this recipient? `refused_domains` (config
/// `server.refused_recipient_domains`) match the domain itself and everything under it;
/// a name without a dot is always refused.
pub fn check_recipient(
    addr: &str,
    refused_domains: &[String],
) -> Result<RecipientKey, RecipientError> {
    let (local, domain) = split_address(addr).ok_or(RecipientError::Syntax)?;
    if local.contains(['%', '!']) {
        return Err(RecipientError::Routed(addr.to_string()));
    }
    // Dot-atom only (quotes were stripped by the parser: `"a b"@x` arrives as `a b@x`).
    let atext =
        |c: char| !c.is_ascii() || c.is_ascii_alphanumeric() || "#$&'*+-/=?^_`{|}~.".contains(c);
    if !local.chars().all(atext)
        || local.starts_with('.')
        || local.ends_with('.')
        || local.contains("..")
    {
        return Err(RecipientError::Syntax);
    }
    let refused = !domain.contains('.')
        || refused_domains.iter().any(|r| {
            let r = r.trim_start_matches('.');
            domain.eq_ignore_ascii_case(r)
                || domain.len().checked_sub(r.len() + 1).is_some_and(|cut| {
                    domain.as_bytes()[cut] == b'.' && domain[cut + 1..].eq_ignore_ascii_case(r)
                })
        });
    if refused {
        return Err(RecipientError::DomainRefused(addr.to_string(), domain));
    }
    Ok(RecipientKey {
        local: local.to_string(),
        domain,
    })
}

pub fn owns(project: &Project, addr: &str) -> bool {
    address_domain(addr).is_some_and(|d| project.domains.contains(&d))
}

pub fn check_envelope_sender(project: &Project, addr: &str) -> Result<(), SenderError> {
    if owns(project, addr) {
        Ok(())
    } else {
        Err(SenderError::EnvelopeNotOwned(addr.to_string()))
    }
}

/// Checks the header From of a received message (headers only are parsed).
pub fn check_header_from(project: &Project, message: &[u8]) -> Result<(), SenderError> {
    let from = crate::transform::headers::only_fields(message, &["From"]);
    let parsed = MessageParser::new()
        .parse_headers(&from)
        .ok_or(SenderError::FromMissing)?;
    let froms: Vec<_> = parsed
        .headers()
        .iter()
        .filter(|h| h.name == HeaderName::From)
        .collect();
    if froms.len() != 1 {
        return Err(if froms.is_empty() {
            SenderError::FromMissing
        } else {
            SenderError::FromCount
        });
    }
    let addrs: Vec<&str> = match &froms[0].value {
        HeaderValue::Address(Address::List(list)) => list
            .iter()
            .map(|a| a.address.as_deref().unwrap_or(""))
            .collect(),
        HeaderValue::Address(Address::Group(_)) => return Err(SenderError::FromGroup),
        _ => return Err(SenderError::FromMissing),
    };
    if addrs.is_empty() {
        return Err(SenderError::FromMissing);
    }
    for a in addrs {
        if !owns(project, a) {
            return Err(SenderError::HeaderNotOwned(a.to_string()));
        }
    }
    Ok(())
}

/// The originator fields besides `From` that mail clients show ("B on behalf of A"), and
/// whether `allow_foreign_sender` lets them name another domain. `Resent-From` is the author
/// of a resent message, so it is always checked like `From`.
const ORIGINATOR_FIELDS: [(HeaderName<'static>, &str, bool); 3] = [
    (HeaderName::Sender, "Sender", true),
    (HeaderName::ResentSender, "Resent-Sender", true),
    (HeaderName::ResentFrom, "Resent-From", false),
];

/// Checks `Sender`, `Resent-From` and `Resent-Sender` (every occurrence, every address, group
/// members included) against the project's domains, as `From` is. A field the parser cannot
/// read as addresses is refused, not skipped: a receiver may still show it.
pub fn check_originator_headers(project: &Project, message: &[u8]) -> Result<(), SenderError> {
    let names = ORIGINATOR_FIELDS.each_ref().map(|(_, name, _)| *name);
    let fields = crate::transform::headers::only_fields(message, &names);
    if fields == b"\r\n" {
        // Most mail has none of these fields: nothing to parse.
        return Ok(());
    }
    let Some(parsed) = MessageParser::new().parse_headers(&fields) else {
        return Ok(());
    };
    for h in parsed.headers() {
        let Some(&(_, field, waivable)) = ORIGINATOR_FIELDS.iter().find(|(n, ..)| *n == h.name)
        else {
            continue;
        };
        if waivable && project.allow_foreign_sender {
            continue;
        }
        let refused = |addr: &str| SenderError::OriginatorNotOwned {
            field,
            addr: addr.to_string(),
        };
        let addrs: Vec<&mail_parser::Addr> = match &h.value {
            HeaderValue::Address(Address::List(list)) => list.iter().collect(),
            HeaderValue::Address(Address::Group(groups)) => {
                groups.iter().flat_map(|g| g.addresses.iter()).collect()
            }
            _ => return Err(refused("")),
        };
        if addrs.is_empty() {
            return Err(refused(""));
        }
        for a in addrs {
            let addr = a.address.as_deref().unwrap_or("");
            if !owns(project, addr) {
                return Err(refused(addr));
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn project() -> Project {
        Project {
            id: "prj_a".into(),
            name: "a".into(),
            domains: vec!["a.test".into(), "mail.b.test".into()],
            disabled: false,
            created: 0,
            max_age_secs: None,
            bounces: false,
            tokens: vec![],
            allow_foreign_sender: false,
            mode: Default::default(),
        }
    }

    #[test]
    fn envelope_domains() {
        let p = project();
        for ok in ["x@a.test", "X@A.TEST", "y@mail.b.test"] {
            assert!(owns(&p, ok), "{ok}");
        }
        for bad in [
            "x@b.test",
            "x@a.test.",
            "x@sub.a.test",
            "x@evila.test",
            "x@a.test.evil.test",
            "\"x@a.test\"@evil.test",
            "@a.test:x@evil.test",
            "x@[127.0.0.1]",
            "",
            "x",
            "a.test",
        ] {
            assert!(!owns(&p, bad), "{bad}");
        }
    }

    #[test]
    fn internationalised_domains() {
        let mut p = project();
        p.domains.push("xn--bcher-kva.test".into());
        for ok in [
            "jörg@bücher.test",
            "x@BÜCHER.test",
            "x@xn--bcher-kva.test",
            "用户@bücher.test",
        ] {
            assert!(owns(&p, ok), "{ok}");
        }
        for bad in [
            "x@bucher.test",
            "x@bücher.test.",
            "x@bü cher.test",
            "x@a_b.test",
        ] {
            assert!(!owns(&p, bad), "{bad}");
        }
        let utf8 = "From: Jörg <jörg@bücher.test>\r\nSubject: Grüße\r\n\r\nhi\r\n";
        assert_eq!(check_header_from(&p, utf8.as_bytes()), Ok(()));
        let other = "From: Jörg <jörg@bücher-x.test>\r\n\r\nhi\r\n";
        assert!(check_header_from(&p, other.as_bytes()).is_err());
    }

    #[test]
    fn recipients() {
        let refused = vec!["localhost".to_string(), "invalid".to_string()];
        let key = check_recipient("User@Example.COM", &refused).unwrap();
        assert_eq!(
            (key.local.as_str(), key.domain.as_str()),
            ("User", "example.com")
        );
        let idn = check_recipient("user@BÜCHER.example", &refused).unwrap();
        assert_eq!(idn.domain, "xn--bcher-kva.example");
        for ok in [
            "u@ext.test",
            "u@x.example",
            "a.b+c@mail.ext.test",
            "jörg@bücher.test",
        ] {
            assert!(check_recipient(ok, &refused).is_ok(), "{ok}");
        }
        for routed in [
            "user%internal.corp@ext.test",
            "internal.corp!user@ext.test",
            "a%b@x.test",
        ] {
            assert!(
                matches!(
                    check_recipient(routed, &refused),
                    Err(RecipientError::Routed(_))
                ),
                "{routed}"
            );
        }
        for refused_domain in [
            "u@localhost",
            "u@LOCALHOST",
            "u@foo.localhost",
            "u@printer",
            "u@x.invalid",
            "u@invalid",
        ] {
            assert!(
                matches!(
                    check_recipient(refused_domain, &refused),
                    Err(RecipientError::DomainRefused(..))
                ),
                "{refused_domain}"
            );
        }
        // Suffix match is by label, not by string.
        assert!(check_recipient("u@notlocalhost.test", &refused).is_ok());
        assert!(check_recipient("u@localhost.test", &refused).is_ok());
        for bad in [
            "a b@x.test",
            ".a@x.test",
            "a..b@x.test",
            "a@b@x.test",
            "u@[127.0.0.1]",
            "u@x.test.",
        ] {
            assert!(check_recipient(bad, &refused).is_err(), "{bad}");
        }
    }

    #[test]
    fn header_from() {
        let p = project();
        let ok = b"From: App <noreply@a.test>\r\nTo: u@x.test\r\n\r\nhi\r\n";
        assert_eq!(check_header_from(&p, ok), Ok(()));
        let other = b"From: App <noreply@b.test>\r\n\r\nhi\r\n";
        assert!(matches!(
            check_header_from(&p, other),
            Err(SenderError::HeaderNotOwned(_))
        ));
        let two = b"From: <a@a.test>\r\nFrom: <x@evil.test>\r\n\r\nhi\r\n";
        assert_eq!(check_header_from(&p, two), Err(SenderError::FromCount));
        let mixed = b"From: a@a.test, x@evil.test\r\n\r\nhi\r\n";
        assert!(check_header_from(&p, mixed).is_err());
        let group = b"From: team: a@a.test;\r\n\r\nhi\r\n";
        assert!(check_header_from(&p, group).is_err());
        let none = b"Subject: x\r\n\r\nhi\r\n";
        assert_eq!(check_header_from(&p, none), Err(SenderError::FromMissing));
    }

    #[test]
    fn originator_headers() {
        let mut p = project();
        let from = "From: <a@a.test>\r\n";
        let check = |p: &Project, extra: &str| {
            check_originator_headers(p, format!("{from}{extra}\r\nbody\r\n").as_bytes())
        };
        for ok in [
            "",
            "Sender: Ops <ops@a.test>\r\n",
            "Resent-From: x@mail.b.test, y@a.test\r\nResent-Sender: z@A.TEST\r\n",
            "Resent-From: team: x@a.test;\r\n",
            "Subject: Sender: evil@b.test\r\n",
        ] {
            assert_eq!(check(&p, ok), Ok(()), "{ok}");
        }
        for (bad, field, addr) in [
            ("Sender: <x@b.test>\r\n", "Sender", "x@b.test"),
            (
                "Resent-From: y@a.test, x@b.test\r\n",
                "Resent-From",
                "x@b.test",
            ),
            (
                "Resent-Sender: x@a.test.evil.test\r\n",
                "Resent-Sender",
                "x@a.test.evil.test",
            ),
            (
                "Resent-From: team: x@b.test;\r\n",
                "Resent-From",
                "x@b.test",
            ),
            (
                "Sender: ok@a.test\r\nSender: x@b.test\r\n",
                "Sender",
                "x@b.test",
            ),
            ("Sender: just a name\r\n", "Sender", ""),
            ("Sender:\r\n", "Sender", ""),
        ] {
            assert_eq!(
                check(&p, bad),
                Err(SenderError::OriginatorNotOwned {
                    field,
                    addr: addr.into()
                }),
                "{bad}"
            );
        }
        p.allow_foreign_sender = true;
        assert_eq!(check(&p, "Sender: <x@b.test>\r\n"), Ok(()));
        assert_eq!(check(&p, "Resent-Sender: <x@b.test>\r\n"), Ok(()));
        assert!(check(&p, "Resent-From: <x@b.test>\r\n").is_err());
    }
}
