//! The header section as the relay leaves it: its own `Received` trace header on top, `Date` /
//! `Message-ID` when the client left them out (several app mailers do; receivers and DKIM expect
//! them), and no field that only a later hop may write: `Return-Path` (RFC 5321 §4.4, added at
//! final delivery) and `Authentication-Results` claiming this relay's authserv-id (RFC 8601 §5,
//! a forged "dkim=pass" from us), nor an idempotency key header (`policy/idempotency.rs` read it;
//! it is never sent or signed). Removal is by byte ranges of the header section; every other
//! byte of the message stays as it came.
//!
//! Fields are found with a small line scanner ([`HeaderFields`]) rather than a full header
//! parse: it is all this step and the hop count need, and it runs on every message.

use std::net::{Ipv4Addr, Ipv6Addr};
use std::ops::Range;

use mail_parser::{Address, DateTime, HeaderName, HeaderValue, MessageParser};

use super::TransformContext;
use crate::policy::projects::is_dns_label;
use crate::policy::sender::address_domain;

/// One field of the header section.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Field<'a> {
    /// Its bytes in the message, continuation lines and final line end included.
    pub range: Range<usize>,
    /// The name before the colon, trailing blanks removed (empty when the line has no colon).
    pub name: &'a [u8],
    /// Everything after the colon, continuation lines included.
    pub value: &'a [u8],
}

impl Field<'_> {
    pub fn is(&self, name: &str) -> bool {
        self.name.eq_ignore_ascii_case(name.as_bytes())
    }
}

/// The fields of a message's header section, top to bottom; it ends at the first empty line
/// (or the end of the message), so nothing in the body is ever seen.
pub struct HeaderFields<'a> {
    message: &'a [u8],
    pos: usize,
}

impl<'a> HeaderFields<'a> {
    pub fn new(message: &'a [u8]) -> Self {
        HeaderFields { message, pos: 0 }
    }

    /// Where the line starting at `from` ends (after its LF), or the end of the message.
    fn line_end(&self, from: usize) -> usize {
        match memchr::memchr(b'\n', &self.message[from..]) {
            Some(i) => from + i + 1,
            None => self.message.len(),
        }
    }
}

impl<'a> Iterator for HeaderFields<'a> {
    type Item = Field<'a>;

    fn next(&mut self) -> Option<Field<'a>> {
        let m = self.message;
        let start = self.pos;
        let rest = m.get(start..).filter(|r| !r.is_empty())?;
        if rest.starts_with(b"\r\n") || rest.starts_with(b"\n") {
            return None;
        }
        let first_end = self.line_end(start);
        let mut end = first_end;
        while matches!(m.get(end), Some(b' ' | b'\t')) {
            end = self.line_end(end);
        }
        self.pos = end;
        let first = &m[start..first_end];
        let (name, value) = match memchr::memchr(b':', first) {
            Some(c) => {
                let name = &m[start..start + c];
                let trimmed = name.len()
                    - name
                        .iter()
                        .rev()
                        .take_while(|b| matches!(b, b' ' | b'\t'))
                        .count();
                (&name[..trimmed], &m[start + c + 1..end])
            }
            None => (&m[start..start], &m[start..end]),
        };
        Some(Field {
            range: start..end,
            name,
            value,
        })
    }
}

/// The fields named `names` (any case), in message order, as a header section of their own:
/// what mail-parser's `parse_headers` needs to read just them. Parsing the whole section
/// tokenized every `Received` and `DKIM-Signature` field each time a step wanted one field,
/// four times per message (BENCHMARKS.md, issue 21).
pub fn only_fields(message: &[u8], names: &[&str]) -> Vec<u8> {
    let mut out = Vec::new();
    for f in HeaderFields::new(message).filter(|f| names.iter().any(|n| f.is(n))) {
        out.extend_from_slice(&message[f.range]);
        if !out.ends_with(b"\n") {
            // The message ends inside this field: so does the copy, as the parser saw it.
            return out;
        }
    }
    out.extend_from_slice(b"\r\n");
    out
}

/// How many `Received` fields the header section has (the hop count, RFC 5321 §6.3).
pub fn received_count(message: &[u8]) -> usize {
    HeaderFields::new(message)
        .filter(|f| f.is("Received"))
        .count()
}

/// The authserv-id an `Authentication-Results` value starts with (RFC 8601 §2.2), comments
/// and folding skipped, quotes removed.
fn authserv_id(value: &[u8]) -> &[u8] {
    let mut i = 0;
    let mut depth = 0usize;
    while let Some(&b) = value.get(i) {
        match b {
            b'\\' if depth > 0 => i += 1,
            b'(' => depth += 1,
            b')' if depth > 0 => depth -= 1,
            b' ' | b'\t' | b'\r' | b'\n' => {}
            _ if depth > 0 => {}
            _ => break,
        }
        i += 1;
    }
    let rest = value.get(i..).unwrap_or_default();
    if let Some(quoted) = rest.strip_prefix(b"\"") {
        let end = memchr::memchr(b'"', quoted).unwrap_or(quoted.len());
        return &quoted[..end];
    }
    let end = rest
        .iter()
        .position(|b| matches!(b, b';' | b'(' | b' ' | b'\t' | b'\r' | b'\n'))
        .unwrap_or(rest.len());
    &rest[..end]
}

/// Whether a client-supplied field must go before the message leaves.
fn must_strip(field: &Field<'_>, hostname: &str) -> bool {
    field.is("Return-Path")
        || crate::policy::idempotency::HEADER_NAMES
            .iter()
            .any(|n| field.is(n))
        || (field.is("Authentication-Results")
            && authserv_id(field.value).eq_ignore_ascii_case(hostname.as_bytes()))
}

/// An RFC 5321 `Domain`: dot-separated LDH labels, 255 octets at most.
fn is_domain(s: &str) -> bool {
    !s.is_empty() && s.len() <= 255 && s.split('.').all(is_dns_label)
}

/// An RFC 5321 address literal: `[1.2.3.4]` or `[IPv6:…]`.
fn is_address_literal(s: &str) -> bool {
    let Some(inner) = s.strip_prefix('[').and_then(|s| s.strip_suffix(']')) else {
        return false;
    };
    match inner.get(..5) {
        Some(tag) if tag.eq_ignore_ascii_case("IPv6:") => inner[5..].parse::<Ipv6Addr>().is_ok(),
        _ => inner.parse::<Ipv4Addr>().is_ok(),
    }
}

/// Longest EHLO text quoted in a comment (escaped it is at most twice as long, which keeps the
/// Received line far under 998 octets).
const MAX_QUOTED_HELO: usize = 100;

/// The `from` part of our Received header for a client-chosen EHLO name: a valid domain or
/// address literal as it is; anything else as `unknown` with the text in a comment, where
/// `(`, `)` and `\` are escaped and anything but printable ASCII becomes `?` — so no EHLO can
/// end the comment, fold the line or start another header.
pub fn received_from(helo: &str, ip: std::net::IpAddr) -> String {
    if is_domain(helo) || is_address_literal(helo) {
        return format!("{helo} ([{ip}])");
    }
    let mut quoted = String::with_capacity(helo.len().min(MAX_QUOTED_HELO) + 8);
    for c in helo.chars().take(MAX_QUOTED_HELO) {
        match c {
            '(' | ')' | '\\' => {
                quoted.push('\\');
                quoted.push(c);
            }
            c if c.is_ascii_graphic() => quoted.push(c),
            _ => quoted.push('?'),
        }
    }
    format!("unknown ([{ip}]) (helo={quoted})")
}

/// The relay's Received header, CRLF-terminated.
pub fn received_header(ctx: &TransformContext<'_>) -> String {
    format!(
        "Received: from {from}\r\n\tby {host} (smtp-relay) with {proto} id {id};\r\n\t{date}\r\n",
        from = received_from(ctx.helo, ctx.client_ip),
        host = ctx.hostname,
        proto = if ctx.tls { "ESMTPSA" } else { "ESMTPA" },
        id = ctx.message_id,
        date = rfc5322_date(ctx.received_ms),
    )
}

pub fn rfc5322_date(ms: u64) -> String {
    DateTime::from_timestamp((ms / 1000) as i64).to_rfc822()
}

/// Whether `server.hostname` names this host to the world: has a dot, is a valid domain, is
/// not `localhost` or under `.localhost` / `.localdomain` (RFC 6761), not an IP address.
pub fn is_fully_qualified(hostname: &str) -> bool {
    let h = hostname.to_ascii_lowercase();
    h.contains('.')
        && is_domain(&h)
        && h.parse::<std::net::IpAddr>().is_err()
        && h != "localhost"
        && !h.ends_with(".localhost")
        && !h.ends_with(".localdomain")
}

/// The domain of the first address of a `From` field (its raw bytes, name included).
fn from_field_domain(field: &[u8]) -> Option<String> {
    let mut buf = Vec::with_capacity(field.len() + 2);
    buf.extend_from_slice(field);
    buf.extend_from_slice(b"\r\n");
    let parsed = MessageParser::new().parse_headers(&buf)?;
    let h = parsed
        .headers()
        .iter()
        .find(|h| h.name == HeaderName::From)?;
    let HeaderValue::Address(Address::List(list)) = &h.value else {
        return None;
    };
    list.iter()
        .find_map(|a| a.address.as_deref().and_then(address_domain))
}

/// The right-hand side of a generated Message-ID: `server.hostname` when it is fully
/// qualified, else the From domain, else the envelope sender's, else the hostname anyway.
fn message_id_domain(ctx: &TransformContext<'_>, from_field: Option<&[u8]>) -> String {
    if is_fully_qualified(ctx.hostname) {
        return ctx.hostname.to_string();
    }
    from_field
        .and_then(from_field_domain)
        .or_else(|| address_domain(ctx.mail_from))
        .unwrap_or_else(|| ctx.hostname.to_string())
}

/// Prepends Received (and Date / Message-ID when missing) and drops the fields only a later
/// hop may write; one copy of the message.
pub fn complete(ctx: &TransformContext<'_>, message: Vec<u8>) -> Vec<u8> {
    let mut has_date = false;
    let mut has_msgid = false;
    let mut from_field: Option<Range<usize>> = None;
    let mut strip: Vec<Range<usize>> = Vec::new();
    for f in HeaderFields::new(&message) {
        if f.is("Date") {
            has_date = true;
        } else if f.is("Message-ID") {
            has_msgid = true;
        } else if f.is("From") {
            from_field.get_or_insert(f.range.clone());
        } else if must_strip(&f, ctx.hostname) {
            strip.push(f.range.clone());
        }
    }
    let mut head = received_header(ctx);
    if !has_date {
        head.push_str(&format!("Date: {}\r\n", rfc5322_date(ctx.received_ms)));
    }
    if !has_msgid {
        let from = from_field.map(|r| &message[r]);
        head.push_str(&format!(
            "Message-ID: <{}@{}>\r\n",
            ctx.message_id,
            message_id_domain(ctx, from)
        ));
    }
    let mut out = Vec::with_capacity(head.len() + message.len());
    out.extend_from_slice(head.as_bytes());
    let mut pos = 0;
    for r in strip {
        out.extend_from_slice(&message[pos..r.start]);
        pos = r.end;
    }
    out.extend_from_slice(&message[pos..]);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn ctx_with<'a>(helo: &'a str, hostname: &'a str) -> TransformContext<'a> {
        TransformContext {
            message_id: "abc",
            hostname,
            helo,
            mail_from: "bounce@env.test",
            client_ip: "127.0.0.1".parse().unwrap(),
            tls: true,
            received_ms: 1_700_000_000_000,
            branding: None,
            from_rewrite: None,
            dkim: None,
        }
    }

    fn ctx() -> TransformContext<'static> {
        ctx_with("app (evil)\u{7f}", "relay.test")
    }

    fn complete_str(ctx: &TransformContext<'_>, m: &str) -> String {
        String::from_utf8(complete(ctx, m.as_bytes().to_vec())).unwrap()
    }

    #[test]
    fn adds_missing_headers_only() {
        let text = complete_str(&ctx(), "From: a@a.test\r\n\r\nbody\r\n");
        assert!(
            text.starts_with("Received: from unknown ([127.0.0.1]) (helo=app?\\(evil\\)?)\r\n"),
            "{text}"
        );
        assert!(text.contains("\r\nDate: "));
        assert!(text.contains("\r\nMessage-ID: <abc@relay.test>\r\n"));
        assert!(text.ends_with("From: a@a.test\r\n\r\nbody\r\n"));

        let full = "From: a@a.test\r\nDate: Mon, 1 Jan 2024 00:00:00 +0000\r\nMessage-ID: <x@y>\r\n\r\nb\r\n";
        let out = complete_str(&ctx(), full);
        assert_eq!(out.matches("Date:").count(), 1);
        assert_eq!(out.matches("Message-ID:").count(), 1);
    }

    #[test]
    fn message_id_domain_needs_a_real_hostname() {
        for (host, from, want) in [
            ("localhost", "From: App <a@App.Test>\r\n", "@app.test>"),
            ("mx.localhost", "From: a@a.test\r\n", "@a.test>"),
            ("relay", "From: a@a.test\r\n", "@a.test>"),
            ("127.0.0.1", "From: a@a.test\r\n", "@a.test>"),
            (
                "relay.example.com",
                "From: a@a.test\r\n",
                "@relay.example.com>",
            ),
            ("localhost", "Subject: no from\r\n", "@env.test>"),
        ] {
            let out = complete_str(&ctx_with("app.test", host), &format!("{from}\r\nb\r\n"));
            assert!(
                out.contains(&format!("\r\nMessage-ID: <abc{want}\r\n")),
                "{host}: {out}"
            );
        }
    }

    #[test]
    fn strips_idempotency_key_headers() {
        let m = "From: a@b.test\r\nX-Idempotency-Key: reset/\r\n 42\r\nSubject: s\r\nResend-Idempotency-Key: k\r\nidempotency-key: k\r\n\r\nIdempotency-Key: body\r\n";
        let out = complete_str(&ctx(), m);
        assert!(
            out.ends_with("From: a@b.test\r\nSubject: s\r\n\r\nIdempotency-Key: body\r\n"),
            "{out}"
        );
    }

    #[test]
    fn strips_return_path_and_our_authentication_results() {
        let m = concat!(
            "Return-Path: <x@evil.test>\r\n",
            "From: a@a.test\r\n",
            "Authentication-Results: relay.test;\r\n\tdkim=pass header.d=bank.test\r\n",
            "Authentication-Results: (forged) \"RELAY.TEST\" 1; spf=pass\r\n",
            "Authentication-Results: mx.other.test; spf=fail\r\n",
            "Authentication-Results: relay.test.evil.test; spf=pass\r\n",
            "return-path:<y@evil.test>\r\n",
            "Subject: s\r\n",
            "\r\n",
            "Return-Path: <in-body@x.test>\r\n",
            "Authentication-Results: relay.test; dkim=pass\r\n",
        );
        let out = complete_str(&ctx(), m);
        let (head, body) = out.split_once("\r\n\r\n").unwrap();
        assert!(!head.to_ascii_lowercase().contains("return-path"), "{head}");
        assert!(!head.contains("relay.test;"), "{head}");
        assert!(!head.contains("RELAY.TEST"), "{head}");
        assert!(!head.contains("dkim=pass"), "{head}");
        assert!(head.contains("\r\nAuthentication-Results: mx.other.test; spf=fail\r\n"));
        assert!(head.contains("\r\nAuthentication-Results: relay.test.evil.test; spf=pass\r\n"));
        assert!(head.ends_with("\r\nFrom: a@a.test\r\nAuthentication-Results: mx.other.test; spf=fail\r\nAuthentication-Results: relay.test.evil.test; spf=pass\r\nSubject: s"), "{head}");
        assert_eq!(
            body,
            "Return-Path: <in-body@x.test>\r\nAuthentication-Results: relay.test; dkim=pass\r\n"
        );
    }

    #[test]
    fn counts_received_in_the_header_section_only() {
        let m = b"Received: a\r\nreceived : b\r\n c\r\nX-Received: d\r\nSubject: x\r\n\r\nReceived: e\r\n";
        assert_eq!(received_count(m), 2);
        assert_eq!(received_count(b"\r\nReceived: x\r\n"), 0);
        assert_eq!(received_count(b"Received: x"), 1);
        assert_eq!(received_count(b""), 0);
    }

    #[test]
    fn authserv_ids() {
        for (value, id) in [
            (" relay.test; spf=pass", "relay.test"),
            ("relay.test", "relay.test"),
            (" (c (nested \\) x)) relay.test 1; none", "relay.test"),
            (" \"relay.test\"; none", "relay.test"),
            ("\r\n\trelay.test;", "relay.test"),
            ("", ""),
            (" (unclosed", ""),
        ] {
            assert_eq!(authserv_id(value.as_bytes()), id.as_bytes(), "{value:?}");
        }
    }

    #[test]
    fn ehlo_forms() {
        let ip = "192.0.2.1".parse().unwrap();
        for (helo, want) in [
            ("mail.example.com", "mail.example.com ([192.0.2.1])"),
            ("localhost", "localhost ([192.0.2.1])"),
            ("[192.0.2.1]", "[192.0.2.1] ([192.0.2.1])"),
            ("[IPv6:::1]", "[IPv6:::1] ([192.0.2.1])"),
            ("x\"", "unknown ([192.0.2.1]) (helo=x\")"),
            ("ab|c$id`id", "unknown ([192.0.2.1]) (helo=ab|c$id`id)"),
            ("a)\r\nBcc: x", "unknown ([192.0.2.1]) (helo=a\\)??Bcc:?x)"),
            ("a\\", "unknown ([192.0.2.1]) (helo=a\\\\)"),
            ("", "unknown ([192.0.2.1]) (helo=)"),
            ("[1.2.3.999]", "unknown ([192.0.2.1]) (helo=[1.2.3.999])"),
            ("host.", "unknown ([192.0.2.1]) (helo=host.)"),
            ("ünï.test", "unknown ([192.0.2.1]) (helo=?n?.test)"),
        ] {
            assert_eq!(received_from(helo, ip), want, "{helo:?}");
        }
        assert!(received_from(&"(".repeat(600), ip).len() < 300);
    }

    #[test]
    fn fully_qualified_hostnames() {
        for ok in ["relay.example.com", "mx1.example.org"] {
            assert!(is_fully_qualified(ok), "{ok}");
        }
        for bad in [
            "localhost",
            "LOCALHOST",
            "relay.localhost",
            "localhost.localdomain",
            "relay",
            "10.0.0.1",
            "relay.example.com.",
            "",
        ] {
            assert!(!is_fully_qualified(bad), "{bad}");
        }
    }

    /// What a receiver sees of our Received header: one field named Received, parsed as one.
    fn assert_one_received_field(header: &str) {
        let message = format!("{header}Subject: after\r\n\r\nbody\r\n");
        let parsed = MessageParser::new()
            .parse_headers(message.as_bytes())
            .expect("headers parse");
        let names: Vec<String> = parsed
            .headers()
            .iter()
            .map(|h| h.name.as_str().to_string())
            .collect();
        assert_eq!(names, ["Received", "Subject"], "{header:?}");
        assert!(
            matches!(parsed.headers()[0].value, HeaderValue::Received(_)),
            "{:?}",
            parsed.headers()[0].value
        );
        let starts = header
            .split("\r\n")
            .filter(|l| !l.is_empty() && !l.starts_with('\t') && !l.starts_with(' '))
            .count();
        assert_eq!(starts, 1, "{header:?}");
        assert_eq!(HeaderFields::new(message.as_bytes()).count(), 2);
        assert!(header.split("\r\n").all(|l| l.len() <= 998));
        assert_eq!(header.matches('\n').count(), 3, "{header:?}");
        assert_eq!(header.matches('\r').count(), 3, "{header:?}");
    }

    #[test]
    fn received_header_parses_for_tricky_ehlo() {
        for helo in ["x\"", "ab|c$id`id", "a)\r\nBcc: x", "(", "\\", "é", "a b"] {
            let c = ctx_with(helo, "relay.test");
            assert_one_received_field(&received_header(&c));
        }
    }

    proptest! {
        #[test]
        fn received_header_parses_whatever_the_ehlo(helo in any::<String>(), ascii in "[ -~\\t\\r\\n]{0,300}") {
            for h in [helo, ascii] {
                let c = ctx_with(&h, "relay.test");
                assert_one_received_field(&received_header(&c));
            }
        }

        #[test]
        fn stripping_changes_nothing_else(
            names in proptest::collection::vec(prop_oneof![
                Just("Subject"), Just("Return-Path"), Just("Authentication-Results"), Just("X-A")
            ], 0..8),
            body in "[a-zA-Z: \\r\\n]{0,80}",
        ) {
            let mut m = String::new();
            for (i, n) in names.iter().enumerate() {
                m.push_str(&format!("{n}: relay.test; v{i}\r\n\tcont{i}\r\n"));
            }
            m.push_str("\r\n");
            m.push_str(&body);
            let out = complete_str(&ctx_with("app.test", "relay.test"), &m);
            let kept: String = names
                .iter()
                .enumerate()
                .filter(|(_, n)| matches!(**n, "Subject" | "X-A"))
                .map(|(i, n)| format!("{n}: relay.test; v{i}\r\n\tcont{i}\r\n"))
                .collect();
            let want_tail = format!("{kept}\r\n{body}");
            prop_assert!(out.ends_with(&want_tail), "{out:?}");
            let prefix = &out[..out.len() - want_tail.len()];
            prop_assert!(!prefix.contains("relay.test; v"), "{prefix:?}");
        }

        /// Reading some fields from `only_fields` gives what reading them from the whole
        /// header section gives: same fields, same order, same parsed values.
        #[test]
        fn only_fields_parse_as_in_the_whole_section(
            fields in proptest::collection::vec((prop_oneof![
                Just("From"), Just("from"), Just("Subject"), Just("Message-ID"), Just("Received"),
                Just("DKIM-Signature"), Just("Sender"), Just("X-A")
            ], "[ -~]{0,40}", proptest::option::of("[ -~]{0,20}")), 0..10),
            last_without_newline in any::<bool>(),
            body in "[a-zA-Z: \\r\\n]{0,40}",
        ) {
            let mut m = String::new();
            for (name, value, cont) in &fields {
                m.push_str(&format!("{name}: {value}\r\n"));
                if let Some(c) = cont {
                    m.push_str(&format!("\t{c}\r\n"));
                }
            }
            if last_without_newline && m.ends_with("\r\n") {
                m.truncate(m.len() - 2);
            } else {
                m.push_str("\r\n");
                m.push_str(&body);
            }
            let wanted = ["From", "Subject", "Message-ID", "Sender"];
            let whole = MessageParser::new().parse_headers(m.as_bytes());
            let subset_bytes = only_fields(m.as_bytes(), &wanted);
            let subset = MessageParser::new().parse_headers(&subset_bytes);
            let pick = |p: Option<mail_parser::Message<'_>>| -> Vec<String> {
                p.map(|p| {
                    p.headers()
                        .iter()
                        .filter(|h| wanted.iter().any(|w| h.name.as_str().eq_ignore_ascii_case(w)))
                        .map(|h| format!("{}={:?}", h.name.as_str(), h.value))
                        .collect()
                })
                .unwrap_or_default()
            };
            prop_assert_eq!(pick(whole), pick(subset));
        }
    }
}
