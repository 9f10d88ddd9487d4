//! What the message log remembers of a message's content: its subject, its header From as the
//! app wrote it, and the header section as it left (trace, branding and DKIM fields included).
//!
//! The body of a delivered message is gone from the spool, yet the panel and the API still
//! show, filter and search messages by these; so they are taken once, at acceptance, and kept
//! with the envelope. Only the header section is read (the shared field scanner plus
//! mail-parser's `parse_headers`: never a full parse, see DESIGN.md Known traps), and
//! everything kept is capped, so a hostile message cannot make its log entry large.

use serde::{Deserialize, Serialize};

use crate::transform::headers::HeaderFields;

/// Longest subject or From kept (characters).
const MAX_TEXT: usize = 300;
/// Most header fields kept, and most characters of each value.
const MAX_FIELDS: usize = 60;
const MAX_VALUE: usize = 1000;

/// One header field, unfolded.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HeaderLine {
    pub name: String,
    pub value: String,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct MessageSummary {
    /// The decoded `Subject` (RFC 2047 words decoded).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subject: Option<String>,
    /// The header From as the app wrote it, before any From rewriting: `Name <addr>`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from: Option<String>,
    /// The header fields of the message as it was queued, top to bottom.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub headers: Vec<HeaderLine>,
    /// Fields left out past the caps.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub headers_omitted: usize,
}

fn is_zero(n: &usize) -> bool {
    *n == 0
}

/// Text on one line: runs of whitespace and control characters (folding included) become one
/// space, nothing at either end, at most `max` characters. One allocation: every accepted
/// message's fields pass through here.
fn one_line(s: &str, max: usize) -> String {
    let mut out = String::with_capacity(s.len().min(max));
    let mut count = 0;
    let words = s
        .split(|c: char| c.is_whitespace() || c.is_control())
        .filter(|w| !w.is_empty());
    for word in words {
        if count > 0 {
            // A space only if a character can follow it.
            if count + 1 >= max {
                break;
            }
            out.push(' ');
            count += 1;
        }
        for c in word.chars() {
            if count >= max {
                return out;
            }
            out.push(c);
            count += 1;
        }
    }
    out
}

/// Subject and From from the message as the app submitted it.
pub fn original(message: &[u8]) -> MessageSummary {
    let fields = crate::transform::headers::only_fields(message, &["Subject", "From"]);
    let Some(parsed) = mail_parser::MessageParser::new().parse_headers(&fields) else {
        return MessageSummary::default();
    };
    let subject = parsed.subject().map(|s| one_line(s, MAX_TEXT));
    let from = parsed.from().and_then(|a| a.first()).map(|a| {
        let addr = a.address().unwrap_or_default();
        match a.name() {
            Some(n) if !n.trim().is_empty() => one_line(&format!("{n} <{addr}>"), MAX_TEXT),
            _ => one_line(addr, MAX_TEXT),
        }
    });
    MessageSummary {
        subject,
        from,
        ..MessageSummary::default()
    }
}

/// `self` plus the header fields of `queued`, the bytes that will leave.
pub fn with_headers(mut summary: MessageSummary, queued: &[u8]) -> MessageSummary {
    for (i, f) in HeaderFields::new(queued).enumerate() {
        if i >= MAX_FIELDS {
            summary.headers_omitted += 1;
            continue;
        }
        summary.headers.push(HeaderLine {
            name: one_line(&String::from_utf8_lossy(f.name), 100),
            value: one_line(&String::from_utf8_lossy(f.value), MAX_VALUE),
        });
    }
    summary
}

impl MessageSummary {
    /// Whether `needle` (already lowercase) is in the subject or From.
    pub fn mentions(&self, needle: &str) -> bool {
        [&self.subject, &self.from]
            .into_iter()
            .flatten()
            .any(|t| t.to_lowercase().contains(needle))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subject_from_and_headers() {
        let m = b"From: =?utf-8?q?J=C3=B6rg?= <j@app.test>\r\nSubject: Hello\r\n  again\r\n\
                  X-Odd: a\x01b\r\n\r\nbody Subject: no\r\n";
        let s = with_headers(original(m), m);
        assert_eq!(s.subject.as_deref(), Some("Hello again"));
        assert_eq!(s.from.as_deref(), Some("Jörg <j@app.test>"));
        assert_eq!(s.headers.len(), 3);
        assert_eq!(s.headers[1].value, "Hello again");
        assert_eq!(s.headers[2].value, "a b");
        assert!(s.mentions("jörg"));
        assert!(!s.mentions("body"));
    }

    proptest::proptest! {
        #[test]
        fn one_line_is_one_clean_line(s in "\\PC{0,40}[ \t\r\n\x01-\x1f]{0,4}\\PC{0,40}", max in 1usize..50) {
            let out = one_line(&s, max);
            proptest::prop_assert!(out.chars().count() <= max);
            proptest::prop_assert!(!out.chars().any(char::is_control));
            proptest::prop_assert!(!out.starts_with(' ') && !out.ends_with(' ') && !out.contains("  "));
            // The same words, in order, as far as they fit.
            let words: Vec<&str> = s
                .split(|c: char| c.is_whitespace() || c.is_control())
                .filter(|w| !w.is_empty())
                .collect();
            proptest::prop_assert!(words.join(" ").starts_with(&out));
        }
    }

    #[test]
    fn no_headers_no_summary() {
        let s = original(b"\r\nbody");
        assert_eq!(s.subject, None);
        assert_eq!(s.from, None);
    }
}
