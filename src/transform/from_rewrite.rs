//! From rewriting for upstreams that only send as the authenticated mailbox (Office 365,
//! Gmail, Aliyun): header From becomes that mailbox, keeping the original display name, and
//! the original From goes to Reply-To so answers still reach the app's address.
//!
//! The rewrite is decided when the message is accepted, from the first upstream of the
//! project's route, because DKIM signs the header From and nothing may change the message
//! after signing. A message that later fails over to an upstream with different needs keeps
//! the From it was accepted with (DESIGN.md, "From rewriting").
//!
//! Only the address is replaced: the display name keeps its original bytes (quoted, encoded
//! words and all), so nothing is re-encoded. An existing Reply-To is left as it is.

use mail_parser::{Address, HeaderName, HeaderValue, MessageParser};

/// Quotes a display name for a header, RFC 2047-encoding it when it is not plain ASCII.
fn display_name(name: &str) -> String {
    if name.chars().all(|c| c.is_ascii() && !c.is_ascii_control()) {
        format!("\"{}\"", name.replace(['\\', '"'], ""))
    } else {
        use base64::Engine as _;
        format!(
            "=?utf-8?b?{}?=",
            base64::engine::general_purpose::STANDARD.encode(name.as_bytes())
        )
    }
}

/// Rewrites header From to `mailbox`. Messages without exactly one From with one address
/// are returned unchanged (policy has already refused those from apps).
pub fn rewrite(message: Vec<u8>, mailbox: &str) -> Vec<u8> {
    let (start, end, has_reply_to, name) = {
        let Some(parsed) = MessageParser::new().parse_headers(&message) else {
            return message;
        };
        let froms: Vec<_> = parsed
            .headers()
            .iter()
            .filter(|h| h.name == HeaderName::From)
            .collect();
        let [from] = froms.as_slice() else {
            return message;
        };
        let name = match &from.value {
            HeaderValue::Address(Address::List(list)) if list.len() == 1 => {
                list[0].name.as_ref().map(|n| n.to_string())
            }
            _ => return message,
        };
        let has_reply_to = parsed
            .headers()
            .iter()
            .any(|h| h.name == HeaderName::ReplyTo);
        (
            from.offset_start as usize,
            from.offset_end as usize,
            has_reply_to,
            name,
        )
    };
    let Some(raw) = message.get(start..end) else {
        return message;
    };
    // The value as written, without its line end, e.g. ` "Shop" <noreply@shop.example>`.
    let value = raw.strip_suffix(b"\r\n").unwrap_or(raw);
    let display: Vec<u8> = match value.iter().rposition(|&b| b == b'<') {
        Some(lt) => value[..lt].trim_ascii().to_vec(),
        // `addr (Comment)` has no display part to keep: build one from the comment.
        None => name
            .as_deref()
            .map(display_name)
            .unwrap_or_default()
            .into_bytes(),
    };
    let mut new_from = Vec::with_capacity(display.len() + mailbox.len() + 8);
    new_from.push(b' ');
    if !display.is_empty() {
        new_from.extend_from_slice(&display);
        new_from.push(b' ');
    }
    new_from.extend_from_slice(format!("<{mailbox}>\r\n").as_bytes());
    let mut out = Vec::with_capacity(message.len() + value.len() + 64);
    out.extend_from_slice(&message[..start]);
    out.extend_from_slice(&new_from);
    if !has_reply_to {
        out.extend_from_slice(b"Reply-To:");
        out.extend_from_slice(value);
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(&message[end..]);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(msg: &str) -> String {
        String::from_utf8(rewrite(msg.as_bytes().to_vec(), "mailbox@corp.example")).unwrap()
    }

    #[test]
    fn keeps_display_name_and_moves_original_to_reply_to() {
        let out = run(
            "Subject: x\r\nFrom: \"My Shop\" <noreply@shop.example>\r\nTo: a@b.example\r\n\r\nbody\r\n",
        );
        assert_eq!(
            out,
            "Subject: x\r\nFrom: \"My Shop\" <mailbox@corp.example>\r\nReply-To: \"My Shop\" <noreply@shop.example>\r\nTo: a@b.example\r\n\r\nbody\r\n"
        );
    }

    #[test]
    fn encoded_names_are_kept_and_folds_survive_in_reply_to() {
        let out = run("From: =?utf-8?q?Caf=C3=A9?=\r\n <noreply@shop.example>\r\n\r\nb\r\n");
        assert!(
            out.starts_with(
                "From: =?utf-8?q?Caf=C3=A9?= <mailbox@corp.example>\r\nReply-To: =?utf-8?q?Caf=C3=A9?=\r\n <noreply@shop.example>\r\n"
            ),
            "{out}"
        );
    }

    #[test]
    fn bare_address_and_existing_reply_to() {
        let out = run("From: noreply@shop.example\r\nReply-To: help@shop.example\r\n\r\nb\r\n");
        assert_eq!(
            out,
            "From: <mailbox@corp.example>\r\nReply-To: help@shop.example\r\n\r\nb\r\n"
        );
        let out = run("From: noreply@shop.example (Shop)\r\n\r\nb\r\n");
        assert!(
            out.starts_with("From: \"Shop\" <mailbox@corp.example>\r\n"),
            "{out}"
        );
    }

    #[test]
    fn unusual_messages_are_untouched() {
        let two = "From: a@x.example\r\nFrom: b@x.example\r\n\r\nb\r\n";
        assert_eq!(run(two), two);
        let none = "Subject: x\r\n\r\nb\r\n";
        assert_eq!(run(none), none);
    }
}
