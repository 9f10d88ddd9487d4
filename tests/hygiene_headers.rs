//! Header hygiene end to end: what the relay refuses (foreign Sender/Resent-* fields, mail
//! loops), strips (Return-Path, Authentication-Results in its own name), writes (a Received
//! header no EHLO can break, a Message-ID with a real domain) and how it signs (oversigned
//! headers), judged on the bytes the test upstream received.

mod support;

use std::time::Duration;

use mail_auth::DkimResult;
use mail_parser::{HeaderName, HeaderValue, MessageParser};
use support::certs::TestPki;
use support::client::{Client, Reply, plain_message};
use support::dkim::{Dns, Setup, keygen, verify};
use support::relay::{Relay, RelayOptions};
use support::upstream::{ReceivedMessage, TestUpstream, UpstreamOptions};

const WAIT: Duration = Duration::from_secs(30);

/// Logs in as the setup's project, optionally says `EHLO <ehlo>` again inside TLS, and sends
/// `message` from `noreply@app.test` to one recipient.
async fn send(s: &Setup, ehlo: Option<&str>, message: &str) -> Reply {
    let mut c = Client::logged_in(s.relay.starttls, &s.relay.pki, &s.id, &s.token).await;
    if let Some(name) = ehlo {
        let r = c.cmd(&format!("EHLO {name}")).await;
        assert_eq!(r.code, 250, "EHLO {name}: {r:?}");
    }
    c.send("noreply@app.test", &["user@example.net"], message)
        .await
}

/// The header section of what arrived, without the blank line.
fn head(m: &ReceivedMessage) -> String {
    let text = m.text();
    text.split_once("\r\n\r\n")
        .map(|(h, _)| h.to_string())
        .unwrap_or(text)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn foreign_sender_fields_are_refused_unless_the_project_allows_them() {
    let mut s = Setup::start(&["app.test"]).await;
    let base = plain_message("noreply@app.test", "user@example.net", "hi", "body\r\n");
    for (extra, field) in [
        ("Sender: Other <ceo@other.test>\r\n", "Sender"),
        (
            "Resent-From: noreply@app.test, x@other.test\r\n",
            "Resent-From",
        ),
        (
            "Resent-Sender: <x@app.test.other.test>\r\n",
            "Resent-Sender",
        ),
        (
            "Sender: noreply@app.test\r\nSender: x@other.test\r\n",
            "Sender",
        ),
    ] {
        let r = send(&s, None, &format!("{extra}{base}")).await;
        assert_eq!(r.code, 550, "{extra}: {r:?}");
        assert!(
            r.text.starts_with("5.7.1 ") && r.text.contains(&format!("Header {field} address")),
            "{extra}: {r:?}"
        );
    }
    let own = format!("Sender: Ops <ops@app.test>\r\nResent-From: a@app.test\r\n{base}");
    assert_eq!(send(&s, None, &own).await.code, 250);
    let got = s.up.wait_for(1, WAIT).await;
    assert!(head(&got[0]).contains("\r\nSender: Ops <ops@app.test>\r\n"));

    // The per-project waiver, set through the running server's admin socket.
    let show = s.relay.cli_json(&["project", "show", &s.id]);
    assert_eq!(show["allow_foreign_sender"], false, "{show:#}");
    let v = s.relay.cli_json(&[
        "project",
        "sender-policy",
        &s.id,
        "--allow-foreign-sender",
        "on",
    ]);
    assert_eq!(v["allow_foreign_sender"], true, "{v:#}");
    let out = s.relay.cli(&["project", "show", &s.id]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("allow-foreign-sender on"), "{text}");

    let foreign = format!("Sender: Other <ceo@other.test>\r\n{base}");
    assert_eq!(send(&s, None, &foreign).await.code, 250);
    let got = s.up.wait_for(2, WAIT).await;
    assert!(head(&got[1]).contains("\r\nSender: Other <ceo@other.test>\r\n"));
    // Resent-From is an author field: never waived.
    let resent = format!("Resent-From: x@other.test\r\n{base}");
    assert_eq!(send(&s, None, &resent).await.code, 550);

    s.relay.cli_json(&[
        "project",
        "sender-policy",
        &s.id,
        "--allow-foreign-sender",
        "off",
    ]);
    assert_eq!(send(&s, None, &foreign).await.code, 550);
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        s.up.messages().len(),
        2,
        "refused mail reached the upstream"
    );

    // With no server running the CLI opens the database itself: same operation.
    s.relay.terminate();
    let args = [
        "project",
        "sender-policy",
        &s.id,
        "--allow-foreign-sender",
        "on",
    ];
    assert_eq!(s.relay.cli_json(&args)["allow_foreign_sender"], true);
    let show = s.relay.cli_json(&["project", "sender-policy", &s.id]);
    assert_eq!(show["allow_foreign_sender"], true, "{show:#}");
    let bad = s.relay.cli(&[
        "project",
        "sender-policy",
        &s.id,
        "--allow-foreign-sender",
        "maybe",
    ]);
    assert!(!bad.status.success());
    assert!(
        String::from_utf8_lossy(&bad.stderr).contains("expected on or off"),
        "{}",
        String::from_utf8_lossy(&bad.stderr)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn return_path_and_our_authentication_results_are_stripped() {
    let s = Setup::start(&["app.test"]).await;
    let rest = concat!(
        "From: App <noreply@app.test>\r\n",
        "Authentication-Results: mx.other.test; spf=pass smtp.mailfrom=app.test\r\n",
        "To: <user@example.net>\r\n",
        "Subject: hi\r\n",
        "Date: Sat, 21 Nov 2026 10:00:00 +0000\r\n",
        "Message-ID: <m1@app.test>\r\n",
        "\r\n",
        "Return-Path: <kept@in.the.body>\r\n",
        "Authentication-Results: relay.test; dkim=pass\r\n",
    );
    let message = format!(
        "Return-Path: <bounce@other.test>\r\n\
         Authentication-Results: relay.test;\r\n\tdkim=pass header.d=bank.test\r\n\
         {rest}"
    );
    let message = message.replacen(
        "Subject: hi\r\n",
        "Subject: hi\r\nAuthentication-Results: (forged) RELAY.TEST; spf=pass\r\n",
        1,
    );
    assert_eq!(send(&s, None, &message).await.code, 250);
    let m = &s.up.wait_for(1, WAIT).await[0];
    let h = head(m);
    assert!(!h.to_ascii_lowercase().contains("return-path"), "{h}");
    assert!(!h.contains("dkim=pass"), "{h}");
    assert!(!h.to_ascii_lowercase().contains("relay.test;"), "{h}");
    // Everything else, the body and the other receiver's results included, is byte for byte.
    let text = m.text();
    assert!(text.ends_with(rest), "{text}");
    assert_eq!(
        text.matches("\r\nAuthentication-Results: ").count(),
        2,
        "{text}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn received_header_is_well_formed_whatever_the_ehlo() {
    let s = Setup::start(&["app.test"]).await;
    let cases = [
        ("x\"", "unknown ([127.0.0.1]) (helo=x\")"),
        ("ab|c$id`id", "unknown ([127.0.0.1]) (helo=ab|c$id`id)"),
        ("a)(b\\", "unknown ([127.0.0.1]) (helo=a\\)\\(b\\\\)"),
        ("mail.app.test", "mail.app.test ([127.0.0.1])"),
        ("[127.0.0.1]", "[127.0.0.1] ([127.0.0.1])"),
    ];
    for (i, (ehlo, _)) in cases.iter().enumerate() {
        let msg = plain_message("noreply@app.test", "user@example.net", "hi", "b\r\n");
        let r = send(&s, Some(ehlo), &msg).await;
        assert_eq!(r.code, 250, "{ehlo}: {r:?}");
        s.up.wait_for(i + 1, WAIT).await;
    }
    for (m, (ehlo, want)) in s.up.messages().iter().zip(cases) {
        let h = head(m);
        let first = h.lines().next().unwrap_or("");
        assert_eq!(first, format!("Received: from {want}"), "{ehlo}:\n{h}");
        let parsed = MessageParser::new()
            .parse_headers(&m.data)
            .expect("parsable headers");
        let names: Vec<&str> = parsed.headers().iter().map(|h| h.name.as_str()).collect();
        assert_eq!(
            names,
            [
                "Received",
                "Date",
                "Message-ID",
                "From",
                "To",
                "Subject",
                "MIME-Version",
                "Content-Type"
            ],
            "{ehlo}:\n{h}"
        );
        assert!(
            matches!(parsed.headers()[0].value, HeaderValue::Received(_)),
            "{ehlo}: {:?}",
            parsed.headers()[0].value
        );
        assert_eq!(parsed.headers()[0].name, HeaderName::Received);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn too_many_received_fields_is_a_mail_loop() {
    let s = Setup::start(&["app.test"]).await;
    let base = plain_message("noreply@app.test", "user@example.net", "loop", "b\r\n");
    let hops = |n: usize| {
        (0..n)
            .map(|i| {
                format!(
                    "Received: from hop{i}.test by hop{}.test; Sat, 21 Nov 2026 10:00:00 +0000\r\n",
                    i + 1
                )
            })
            .collect::<String>()
    };
    let r = send(&s, None, &format!("{}{base}", hops(51))).await;
    assert_eq!((r.code, r.text.as_str()), (554, "5.4.6 Too many hops"));
    // The limit itself (server.max_received_headers = 50) passes, and lines in the body
    // that look like Received fields do not count.
    let r = send(&s, None, &format!("{}{base}{}", hops(50), hops(60))).await;
    assert_eq!(r.code, 250, "{r:?}");
    let got = s.up.wait_for(1, WAIT).await;
    assert_eq!(head(&got[0]).matches("Received: ").count(), 51);
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(s.up.messages().len(), 1, "the loop was delivered");
    assert!(s.relay.server_log().contains("too many Received"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn generated_message_id_uses_the_from_domain_when_hostname_is_local() {
    let pki = TestPki::generate();
    let up = TestUpstream::start(UpstreamOptions::implicit(&pki)).await;
    let relay = Relay::start_with_upstream(
        up.port(),
        "implicit",
        &pki,
        RelayOptions {
            hostname: "localhost",
            ..Default::default()
        },
    );
    let (id, token) = relay.add_project("app", &["app.test"]);
    let mut c = Client::logged_in(relay.starttls, &relay.pki, &id, &token).await;
    let msg = plain_message("noreply@App.Test", "user@example.net", "hi", "b\r\n");
    let r = c.send("bounce@app.test", &["user@example.net"], &msg).await;
    assert_eq!(r.code, 250, "{r:?}");
    let queued = r.queued_id();
    let m = &up.wait_for(1, WAIT).await[0];
    let h = head(m);
    assert!(
        h.contains(&format!("\r\nMessage-ID: <{queued}@app.test>\r\n")),
        "{h}"
    );
    assert!(!h.contains("@localhost>"), "{h}");
}

/// Oversigning: each of these headers is listed once more in `h=` than it occurs, so one
/// added in transit — on top of the header block or at its end — breaks the signature.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversigned_headers_cannot_be_added_after_signing() {
    let s = Setup::start(&["app.test"]).await;
    let dns = Dns::default();
    dns.publish(&keygen(&s.relay, "app.test", "e1", "ed25519", true));
    let m = s
        .deliver("noreply@app.test", "Invoice", "Pay now\r\n", 1)
        .await;
    let results = verify(&dns, &m.data).await;
    assert_eq!(results.len(), 1, "{results:?}");
    assert!(results[0].pass(), "{results:?}");
    let h: Vec<String> = results[0]
        .headers
        .iter()
        .map(|x| x.to_ascii_lowercase())
        .collect();
    let text = m.text();
    let (head, _) = text.split_once("\r\n\r\n").unwrap();
    for name in [
        "from",
        "to",
        "cc",
        "subject",
        "date",
        "message-id",
        "reply-to",
        "content-type",
        "mime-version",
    ] {
        let present = head
            .split("\r\n")
            .filter(|l| l.to_ascii_lowercase().starts_with(&format!("{name}:")))
            .count();
        let listed = h.iter().filter(|x| *x == name).count();
        assert!(
            listed > present,
            "{name}: {present} present, {listed} in h= {h:?}"
        );
        if present > 0 {
            assert_eq!(listed, present + 1, "{name}: {h:?}");
        }
    }

    let (sig_end, _) = text
        .match_indices("\r\nReceived: ")
        .next()
        .expect("Received after the signature");
    let (sigs, rest) = text.split_at(sig_end + 2);
    let body_at = text.find("\r\n\r\n").unwrap() + 2;
    for extra in [
        "Subject: Invoice (updated bank details)\r\n",
        "To: <victim@example.net>\r\n",
        "Cc: <more@example.net>\r\n",
        "Reply-To: <phish@evil.test>\r\n",
        "Date: Sat, 21 Nov 2026 10:00:00 +0000\r\n",
        "Message-ID: <dup@evil.test>\r\n",
        "Content-Type: text/html\r\n",
        "MIME-Version: 1.0\r\n",
    ] {
        let prepended = format!("{extra}{text}");
        let after_signature = format!("{sigs}{extra}{rest}");
        let appended = format!("{}{extra}{}", &text[..body_at], &text[body_at..]);
        for (where_, tampered) in [
            ("prepended", prepended),
            ("after the signature", after_signature),
            ("appended", appended),
        ] {
            for v in verify(&dns, tampered.as_bytes()).await {
                assert!(
                    matches!(v.result, DkimResult::Fail(_)),
                    "{extra} {where_}: {v:?}"
                );
            }
        }
    }
}
