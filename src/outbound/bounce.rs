//! Bounce messages: the RFC 3464 delivery status notification a project may ask for
//! (`smtp-relay project bounces <id> on`) when one of its messages finally fails.
//!
//! Apps that only speak SMTP learn about a failure the way mail has always told senders: a
//! `multipart/report; report-type=delivery-status` message to the envelope sender, with a
//! human-readable part, the machine-readable `message/delivery-status` part (one block per
//! failed recipient: status, the upstream's reply) and the original header section as
//! `text/rfc822-headers`. It is built here (mail-builder) when delivery records the final
//! outcome, goes through the transform stage like the project's other mail (our `Received`,
//! From rewriting for the route, DKIM: it comes from `mailer-daemon@` the sender's domain,
//! which the project owns, so signed it passes DMARC; no branding), and is queued (durably,
//! before that outcome is recorded) like any message of the project, delivered through its
//! route — never sent inline. Its envelope sender is null (`<>`, RFC 5321 §4.5.5), so a bounce that fails is
//! never bounced again; nor is a message that was itself automatic (RFC 3834
//! `Auto-Submitted`, or a report).

use mail_builder::MessageBuilder;
use mail_builder::headers::address::Address;
use mail_builder::headers::content_type::ContentType;
use mail_builder::headers::raw::Raw;
use mail_builder::mime::MimePart;

use crate::queue::spool::{MailParams, NewMessage, RcptParams, new_id};
use crate::queue::{Envelope, MessageState, RcptState, now_ms};

/// Whether `env`, in the state delivery just gave it, owes its sender a bounce: it is
/// finished, some recipient failed, the sender is not null and the message was not automatic.
pub fn owed(env: &Envelope, original: &[u8]) -> bool {
    env.state.is_final()
        && env.state != MessageState::Deleted
        && !env.mail_from.is_empty()
        && env.recipients.iter().any(|r| failed(env, r))
        && !is_automatic(original)
}

/// Refused, or still waiting when the message expired (expiry at the start of an attempt
/// leaves recipients pending).
fn failed(env: &Envelope, r: &crate::queue::Recipient) -> bool {
    r.state == RcptState::Failed
        || (r.state == RcptState::Pending && env.state == MessageState::Expired)
}

/// RFC 3834: `Auto-Submitted` other than `no`, or a report (a DSN or MDN) — never answered.
fn is_automatic(original: &[u8]) -> bool {
    let Some(msg) = mail_parser::MessageParser::new().parse_headers(original) else {
        return false;
    };
    let auto = msg
        .header_raw("Auto-Submitted")
        .is_some_and(|v| !v.trim().eq_ignore_ascii_case("no"));
    let report = msg.header_raw("Content-Type").is_some_and(|v| {
        v.trim_start()
            .to_ascii_lowercase()
            .starts_with("multipart/report")
    });
    auto || report
}

/// The header section of the original (up to the empty line), as it was queued.
fn header_section(original: &[u8]) -> &[u8] {
    match memchr::memmem::find(original, b"\r\n\r\n") {
        Some(end) => &original[..end + 2],
        None => original,
    }
}

/// Printable ASCII only: replies and addresses go into header-like fields.
fn clean(s: &str) -> String {
    s.chars()
        .map(|c| {
            if c.is_ascii_graphic() || c == ' ' {
                c
            } else {
                '?'
            }
        })
        .take(900)
        .collect()
}

/// The RFC 3463 status of a failed recipient: the reply's enhanced code, `4.4.7` when the
/// message expired (delivery time expired), else `5.0.0`.
fn status_of(reply: &str, expired: bool) -> String {
    if expired {
        return "4.4.7".into();
    }
    reply
        .split_whitespace()
        .nth(1)
        .filter(|w| {
            w.starts_with("5.")
                && w.split('.').count() == 3
                && w.split('.')
                    .all(|p| !p.is_empty() && p.chars().all(|c| c.is_ascii_digit()))
        })
        .unwrap_or("5.0.0")
        .to_string()
}

fn rfc822_date(ms: u64) -> String {
    let dt = mail_parser::DateTime::from_timestamp((ms / 1000) as i64);
    dt.to_rfc822()
}

/// The bounce for `env` (see [`owed`]), as a new message for the queue and its bytes.
pub fn build(
    env: &Envelope,
    original: &[u8],
    hostname: &str,
    max_age_secs: u64,
) -> Option<(NewMessage, Vec<u8>)> {
    let sender = env.mail_from.clone();
    let sender_domain = sender.rsplit_once('@').map(|(_, d)| d.to_string())?;
    let expired = env.state == MessageState::Expired;
    let failed: Vec<(&str, String)> = env
        .recipients
        .iter()
        .filter(|r| failed(env, r))
        .map(|r| {
            let reply = r
                .reply
                .clone()
                .or_else(|| env.last_reply.clone())
                .unwrap_or_default();
            (r.address.as_str(), clean(&reply))
        })
        .collect();

    let mut human = format!(
        "This is the mail relay at {host}.\r\n\r\nYour message could not be delivered to the \
         following recipient(s){why}:\r\n\r\n",
        host = clean(hostname),
        why = if expired { " before it expired" } else { "" },
    );
    for (addr, reply) in &failed {
        human.push_str(&format!("  <{}>: {}\r\n", clean(addr), reply));
    }
    human.push_str(&format!(
        "\r\nThe relay's message id was {}. The original headers are attached.\r\n",
        env.id
    ));

    let mut status = format!(
        "Reporting-MTA: dns; {}\r\nX-Smtp-Relay-Queue-ID: {}\r\nArrival-Date: {}\r\n",
        clean(hostname),
        env.id,
        rfc822_date(env.received_ms)
    );
    for (addr, reply) in &failed {
        status.push_str(&format!(
            "\r\nFinal-Recipient: rfc822; {}\r\nAction: failed\r\nStatus: {}\r\n",
            clean(addr),
            status_of(reply, expired)
        ));
        // The upstream is a config name, not a DNS name: an extension field, not Remote-MTA.
        if let Some(up) = &env.upstream {
            status.push_str(&format!("X-Smtp-Relay-Upstream: {}\r\n", clean(up)));
        }
        if !reply.is_empty() {
            status.push_str(&format!("Diagnostic-Code: smtp; {reply}\r\n"));
        }
        status.push_str(&format!("Last-Attempt-Date: {}\r\n", rfc822_date(now_ms())));
    }

    let headers = header_section(original).to_vec();
    let headers_cte = if headers.is_ascii() { "7bit" } else { "8bit" };
    let id = new_id(now_ms());
    let message_id = format!("{id}.dsn@{}", clean(&sender_domain));
    let report = MimePart::new(
        ContentType::new("multipart/report").attribute("report-type", "delivery-status"),
        vec![
            MimePart::new(ContentType::new("text/plain"), human),
            MimePart::new(
                ContentType::new("message/delivery-status"),
                status.into_bytes(),
            )
            .transfer_encoding("7bit"),
            MimePart::new(ContentType::new("text/rfc822-headers"), headers)
                .transfer_encoding(headers_cte),
        ],
    );
    let bytes = MessageBuilder::new()
        .from(Address::new_address(
            Some("Mail Delivery System"),
            format!("mailer-daemon@{sender_domain}"),
        ))
        .to(Address::new_address(None::<&str>, sender.clone()))
        .subject(if expired {
            "Undelivered Mail Returned to Sender (expired)"
        } else {
            "Undelivered Mail Returned to Sender"
        })
        .message_id(message_id)
        .header("Auto-Submitted", Raw::new("auto-generated"))
        .body(report)
        .write_to_vec()
        .ok()?;
    let msg = NewMessage {
        id,
        project: env.project.clone(),
        mail_from: String::new(),
        mail_params: MailParams {
            smtputf8: !sender.is_ascii(),
            ..MailParams::default()
        },
        recipients: vec![sender],
        // Never ask for a DSN about a DSN.
        rcpt_params: vec![RcptParams {
            notify: Some("NEVER".into()),
            orcpt: None,
        }],
        client_ip: "127.0.0.1".into(),
        max_age_secs,
        not_before_ms: None,
        summary: crate::queue::summary::original(&bytes),
    };
    Some((msg, bytes))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses() {
        assert_eq!(status_of("550 5.1.1 No such user", false), "5.1.1");
        assert_eq!(status_of("550 No such user", false), "5.0.0");
        assert_eq!(status_of("451 4.2.1 busy", true), "4.4.7");
    }

    #[test]
    fn automatic_messages_are_not_answered() {
        assert!(is_automatic(
            b"Auto-Submitted: auto-replied\r\nSubject: x\r\n\r\nbody"
        ));
        assert!(!is_automatic(
            b"Auto-Submitted: no\r\nSubject: x\r\n\r\nbody"
        ));
        assert!(is_automatic(
            b"Content-Type: multipart/report; report-type=delivery-status; boundary=x\r\n\r\n"
        ));
        assert!(!is_automatic(b"Subject: hello\r\n\r\nbody"));
    }
}

#[cfg(test)]
mod build_tests {
    use super::*;
    use crate::queue::Recipient;

    #[test]
    fn lists_only_the_failed_recipients() {
        let env = Envelope {
            id: "0190000000000000abcdef00".into(),
            project: "p".into(),
            mail_from: "app@app.test".into(),
            mail_params: Default::default(),
            recipients: vec![
                Recipient {
                    address: "ok@x.test".into(),
                    state: RcptState::Delivered,
                    reply: Some("250 ok".into()),
                    params: Default::default(),
                },
                Recipient {
                    address: "gone@x.test".into(),
                    state: RcptState::Failed,
                    reply: Some("550 5.1.1 No such user".into()),
                    params: Default::default(),
                },
            ],
            size: 10,
            client_ip: "127.0.0.1".into(),
            received_ms: 1_700_000_000_000,
            expires_ms: 1_700_000_100_000,
            next_attempt_ms: 0,
            attempts: 1,
            state: MessageState::Delivered,
            upstream: Some("sendgrid".into()),
            last_reply: None,
            header_message_id: None,
            summary: Default::default(),
        };
        let original = b"From: app@app.test\r\nSubject: hi\r\n\r\nbody\r\n";
        assert!(owed(&env, original));
        let (msg, bytes) = build(&env, original, "relay.test", 3600).unwrap();
        assert_eq!(msg.mail_from, "");
        assert_eq!(msg.recipients, vec!["app@app.test"]);
        let text = String::from_utf8(bytes).unwrap();
        println!("{text}");
        assert!(text.contains(
            "Final-Recipient: rfc822; gone@x.test\r\nAction: failed\r\nStatus: 5.1.1\r\n"
        ));
        assert!(!text.contains("Final-Recipient: rfc822; ok@x.test"));
        assert!(text.contains("Auto-Submitted: auto-generated"));
        assert!(text.contains("Subject: hi\r\n"));
    }
}
