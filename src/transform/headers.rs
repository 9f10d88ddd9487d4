//! Adds the relay's Received header, and `Date` / `Message-ID` when the client left them out
//! (several app mailers do; receivers and DKIM expect them).

use mail_parser::{DateTime, HeaderName, MessageParser};

use super::TransformContext;

/// A header-safe rendering of a client-chosen string (the EHLO name).
fn sanitize(s: &str) -> String {
    let clean: String = s
        .chars()
        .filter(|c| c.is_ascii_graphic() && !matches!(c, '(' | ')' | ';' | '\\'))
        .take(255)
        .collect();
    if clean.is_empty() {
        "unknown".into()
    } else {
        clean
    }
}

pub fn rfc5322_date(ms: u64) -> String {
    DateTime::from_timestamp((ms / 1000) as i64).to_rfc822()
}

pub fn complete(ctx: &TransformContext<'_>, message: Vec<u8>) -> Vec<u8> {
    let (has_date, has_msgid) = match MessageParser::new().parse_headers(&message) {
        Some(parsed) => (
            parsed.headers().iter().any(|h| h.name == HeaderName::Date),
            parsed
                .headers()
                .iter()
                .any(|h| h.name == HeaderName::MessageId),
        ),
        None => (false, false),
    };
    let date = rfc5322_date(ctx.received_ms);
    let mut head = format!(
        "Received: from {helo} ([{ip}])\r\n\tby {host} (smtp-relay) with {proto} id {id};\r\n\t{date}\r\n",
        helo = sanitize(ctx.helo),
        ip = ctx.client_ip,
        host = ctx.hostname,
        proto = if ctx.tls { "ESMTPSA" } else { "ESMTPA" },
        id = ctx.message_id,
    );
    if !has_date {
        head.push_str(&format!("Date: {date}\r\n"));
    }
    if !has_msgid {
        head.push_str(&format!(
            "Message-ID: <{}@{}>\r\n",
            ctx.message_id, ctx.hostname
        ));
    }
    let mut out = Vec::with_capacity(head.len() + message.len());
    out.extend_from_slice(head.as_bytes());
    out.extend_from_slice(&message);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ctx() -> TransformContext<'static> {
        TransformContext {
            message_id: "abc",
            hostname: "relay.test",
            helo: "app (evil)\u{7f}",
            client_ip: "127.0.0.1".parse().unwrap(),
            tls: true,
            received_ms: 1_700_000_000_000,
            branding: None,
            from_rewrite: None,
            dkim: None,
        }
    }

    #[test]
    fn adds_missing_headers_only() {
        let out = complete(&ctx(), b"From: a@a.test\r\n\r\nbody\r\n".to_vec());
        let text = String::from_utf8(out).unwrap();
        assert!(
            text.starts_with("Received: from appevil ([127.0.0.1])"),
            "{text}"
        );
        assert!(text.contains("\r\nDate: "));
        assert!(text.contains("\r\nMessage-ID: <abc@relay.test>\r\n"));
        assert!(text.ends_with("From: a@a.test\r\n\r\nbody\r\n"));

        let full = b"From: a@a.test\r\nDate: Mon, 1 Jan 2024 00:00:00 +0000\r\nMessage-ID: <x@y>\r\n\r\nb\r\n";
        let out = String::from_utf8(complete(&ctx(), full.to_vec())).unwrap();
        assert_eq!(out.matches("Date:").count(), 1);
        assert_eq!(out.matches("Message-ID:").count(), 1);
    }
}
