//! May this project send as this address?
//!
//! The envelope sender and every header `From` address must be in one of the project's
//! domains: exact, case-insensitive domain match (a subdomain only if it is listed itself).
//! Anything unusual — a trailing dot, an IP literal, a source route, a quoted local part
//! hiding an `@`, several From headers, a group — is refused rather than interpreted.
//! `Sender`, `Resent-From` and `Resent-Sender` follow the same rule (clients show them as
//! "B on behalf of A"); a project may allow a foreign `Sender` (`allow_foreign_sender`).

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

/// The domain of a plain `local@domain` address, lowercased, if it is one we accept.
pub fn address_domain(addr: &str) -> Option<String> {
    let (local, domain) = addr.rsplit_once('@')?;
    if local.is_empty()
        || local.contains('@')
        || local.contains('"')
        || local.starts_with('@')
        || local.contains(':')
        || domain.is_empty()
        || domain.ends_with('.')
        || domain.starts_with('[')
    {
        return None;
    }
    let domain = domain.to_ascii_lowercase();
    if !domain
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.')
    {
        return None;
    }
    Some(domain)
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
    let parsed = MessageParser::new()
        .parse_headers(message)
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
const ORIGINATOR_FIELDS: &[(HeaderName<'static>, &str, bool)] = &[
    (HeaderName::Sender, "Sender", true),
    (HeaderName::ResentSender, "Resent-Sender", true),
    (HeaderName::ResentFrom, "Resent-From", false),
];

/// Checks `Sender`, `Resent-From` and `Resent-Sender` (every occurrence, every address, group
/// members included) against the project's domains, as `From` is. A field the parser cannot
/// read as addresses is refused, not skipped: a receiver may still show it.
pub fn check_originator_headers(project: &Project, message: &[u8]) -> Result<(), SenderError> {
    // Most mail has none of these fields: a line scan spares it a second header parse.
    let present = crate::transform::headers::HeaderFields::new(message)
        .any(|f| ORIGINATOR_FIELDS.iter().any(|(_, name, _)| f.is(name)));
    if !present {
        return Ok(());
    }
    let Some(parsed) = MessageParser::new().parse_headers(message) else {
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
            tokens: vec![],
            allow_foreign_sender: false,
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
