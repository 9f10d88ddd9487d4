//! May this project send as this address?
//!
//! The envelope sender and every header `From` address must be in one of the project's
//! domains: exact, case-insensitive domain match (a subdomain only if it is listed itself).
//! Anything unusual — a trailing dot, an IP literal, a source route, a quoted local part
//! hiding an `@`, several From headers, a group — is refused rather than interpreted.

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
}
