//! Hostile clients at the session level: STARTTLS injection and state reset, open-relay
//! attempts on every listener, malformed AUTH, over-long lines, size and recipient limits,
//! slowloris, header and EHLO injection. None of it may authenticate, relay, panic or hang.

mod support;

use std::time::Duration;

use base64::Engine;
use support::client::{Client, plain_message};
use support::relay::{Relay, RelayOptions};

fn b64(b: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(b)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn starttls_injection_is_discarded_and_state_reset() {
    let relay = Relay::start(RelayOptions::default());
    let (id, token) = relay.add_project("a", &["a.test"]);

    // CVE-2011-0411: commands pipelined after STARTTLS must not run inside TLS.
    let mut c = Client::connect(relay.starttls).await;
    assert_eq!(c.reply().await.code, 220);
    assert_eq!(c.cmd("EHLO app").await.code, 250);
    c.write(b"STARTTLS\r\nMAIL FROM:<app@a.test>\r\nRSET\r\n")
        .await;
    assert_eq!(c.reply().await.code, 220);
    c.upgrade(&relay.pki).await;
    // The session was reset: MAIL needs EHLO again, and no injected reply is waiting.
    let r = c.cmd("MAIL FROM:<app@a.test>").await;
    assert_eq!(r.code, 503, "state must be reset after TLS: {r:?}");
    let ehlo = c.cmd("EHLO app").await;
    assert!(ehlo.text.contains("AUTH"), "{ehlo:?}");
    assert_eq!(c.cmd("STARTTLS").await.code, 503, "STARTTLS twice");
    assert_eq!(c.auth_plain(&id, &token).await.code, 235);
    assert_eq!(c.cmd("NOOP").await.code, 250);
    assert!(
        c.try_reply(Duration::from_millis(300)).await.is_none(),
        "no stray replies"
    );

    // STARTTLS on the implicit-TLS listener is refused.
    let mut c = Client::connect_tls(relay.implicit, &relay.pki).await;
    assert_eq!(c.reply().await.code, 220);
    assert_eq!(c.cmd("EHLO app").await.code, 250);
    assert_eq!(c.cmd("STARTTLS").await.code, 503);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stalled_handshakes_do_not_block_others() {
    let relay = Relay::start(RelayOptions::default());
    let (id, token) = relay.add_project("a", &["a.test"]);
    // Ten connections that never start TLS on the implicit port, ten that stop after STARTTLS.
    let mut stalled = Vec::new();
    let mut stalled_starttls = Vec::new();
    for _ in 0..10 {
        stalled.push(
            tokio::net::TcpStream::connect(relay.implicit)
                .await
                .unwrap(),
        );
        let mut c = Client::connect(relay.starttls).await;
        c.reply().await;
        c.cmd("EHLO x").await;
        c.cmd("STARTTLS").await;
        stalled_starttls.push(c);
    }
    let started = std::time::Instant::now();
    let mut c = Client::logged_in(relay.starttls, &relay.pki, &id, &token).await;
    let r = c
        .send_plain("app@a.test", "u@example.net", "s", "x\r\n")
        .await;
    assert_eq!(r.code, 250);
    assert!(
        started.elapsed() < Duration::from_secs(4),
        "blocked by stalled handshakes"
    );
    // The harness sets tls_handshake_secs = 5: the stalled ones are closed after that.
    let mut first = stalled.remove(0);
    let mut buf = [0u8; 16];
    let n = tokio::time::timeout(
        Duration::from_secs(10),
        tokio::io::AsyncReadExt::read(&mut first, &mut buf),
    )
    .await
    .expect("stalled handshake must be closed by the server");
    assert!(matches!(n, Ok(0) | Err(_)));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_open_relay_on_any_listener() {
    let relay = Relay::start(RelayOptions {
        plain_listener: true,
        ..Default::default()
    });
    let (id, _token) = relay.add_project("a", &["a.test"]);
    let msg = plain_message("app@a.test", "u@example.net", "s", "x\r\n");

    let mut attempts: Vec<(&str, Client)> = Vec::new();
    let mut c = Client::connect(relay.starttls).await;
    c.reply().await;
    c.cmd("EHLO x").await;
    attempts.push(("starttls, before TLS", c));
    let (c, _) = Client::starttls(relay.starttls, &relay.pki).await;
    attempts.push(("starttls, inside TLS", c));
    let mut c = Client::connect_tls(relay.implicit, &relay.pki).await;
    c.reply().await;
    c.cmd("EHLO x").await;
    attempts.push(("implicit TLS", c));
    let mut c = Client::connect(relay.plain.unwrap()).await;
    c.reply().await;
    c.cmd("EHLO x").await;
    attempts.push(("plain loopback", c));

    for (what, mut c) in attempts {
        let r = c.send("app@a.test", &["u@example.net"], &msg).await;
        assert_eq!(r.code, 530, "{what}: {r:?}");
        assert_eq!(c.cmd("RCPT TO:<u@example.net>").await.code, 503, "{what}");
        assert_eq!(c.cmd("DATA").await.code, 530, "{what}");
        // A username alone is not a login.
        let r = c
            .cmd(&format!(
                "AUTH PLAIN {}",
                b64(format!("\0{id}\0").as_bytes())
            ))
            .await;
        assert!(r.code == 535 || r.code == 530, "{what}: {r:?}");
    }
    assert!(relay.cli_json(&["log"]).as_array().unwrap().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_auth_never_authenticates() {
    let relay = Relay::start(RelayOptions::default());
    let (id, token) = relay.add_project("a", &["a.test"]);
    let (other, _) = relay.add_project("b", &["b.test"]);
    let bad_plain: Vec<Vec<u8>> = vec![
        format!("{other}\0{id}\0{token}").into_bytes(), // authzid of another project
        format!("\0\0{token}").into_bytes(),
        format!("\0{id}\0").into_bytes(),
        format!("{id}\0{token}").into_bytes(),
        format!("\0{id}\0{token}\0").into_bytes(),
        format!("\0{id}{token}").into_bytes(),
    ];
    for raw in &bad_plain {
        let (mut c, _) = Client::starttls(relay.starttls, &relay.pki).await;
        let r = c.cmd(&format!("AUTH PLAIN {}", b64(raw))).await;
        assert_ne!(r.code, 235, "{raw:?}");
        assert_eq!(c.cmd("MAIL FROM:<x@a.test>").await.code, 530);
    }
    let (mut c, _) = Client::starttls(relay.starttls, &relay.pki).await;
    assert_eq!(
        c.cmd("AUTH PLAIN =").await.code,
        535,
        "empty initial response"
    );
    assert_eq!(c.cmd("AUTH PLAIN !!!notbase64").await.code, 501, "RFC 4954");
    assert_eq!(c.cmd("AUTH PLAIN").await.code, 334);
    assert_eq!(c.cmd("*").await.code, 501, "cancel");
    assert_eq!(c.cmd("AUTH LOGIN").await.code, 334);
    assert_eq!(c.cmd("*").await.code, 501, "cancel");
    assert_eq!(c.cmd("AUTH CRAM-MD5").await.code, 504);
    // 12 KB and 1 MiB lines: refused, the connection stays sane or closes — never panics.
    for size in [12 * 1024, 1024 * 1024] {
        let (mut c, _) = Client::starttls(relay.starttls, &relay.pki).await;
        let mut line = b"AUTH PLAIN ".to_vec();
        line.extend(std::iter::repeat_n(b'A', size));
        line.extend_from_slice(b"\r\n");
        c.write_lossy(&line).await;
        // Either a 500 and a sane session, or closed (over the discard limit).
        if let Some(r) = c.try_reply(Duration::from_secs(10)).await {
            assert_eq!(r.code, 500, "{r:?}");
            assert_eq!(c.cmd("MAIL FROM:<x@a.test>").await.code, 530);
        }
    }
    // The server is still fine.
    let (mut c, _) = Client::starttls(relay.starttls, &relay.pki).await;
    assert_eq!(c.auth_plain(&id, &token).await.code, 235);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn line_and_message_limits() {
    let relay = Relay::start(RelayOptions {
        max_recipients: 3,
        max_message_size: 64 * 1024,
        ..Default::default()
    });
    let (id, token) = relay.add_project("a", &["a.test"]);
    let mut c = Client::logged_in(relay.starttls, &relay.pki, &id, &token).await;

    // Over 512 octets: 500, and the tail of the line is never run.
    let mut long = b"NOOP ".to_vec();
    long.extend(std::iter::repeat_n(b'x', 600));
    long.extend_from_slice(b" QUIT\r\n");
    c.write(&long).await;
    let r = c.reply().await;
    assert_eq!((r.code, r.text.as_str()), (500, "5.5.2 Line too long"));
    assert_eq!(
        c.cmd("NOOP").await.code,
        250,
        "the tail QUIT must not have run"
    );

    // SIZE declared too large.
    assert_eq!(
        c.cmd("MAIL FROM:<app@a.test> SIZE=99999999").await.code,
        552
    );
    // Too many recipients.
    assert_eq!(c.cmd("MAIL FROM:<app@a.test>").await.code, 250);
    for i in 0..3 {
        assert_eq!(
            c.cmd(&format!("RCPT TO:<u{i}@example.net>")).await.code,
            250
        );
    }
    let r = c.cmd("RCPT TO:<u9@example.net>").await;
    assert_eq!(
        (r.code, r.text.as_str()),
        (452, "4.5.3 Too many recipients")
    );
    assert_eq!(c.cmd("RSET").await.code, 250);

    // Body over the limit: 552 after the terminator, session continues.
    let big = format!(
        "{}{}",
        plain_message("app@a.test", "u@example.net", "big", ""),
        "y".repeat(900)
            .repeat(100)
            .chars()
            .collect::<Vec<_>>()
            .chunks(900)
            .map(|l| l.iter().collect::<String>() + "\r\n")
            .collect::<String>()
    );
    let r = c.send("app@a.test", &["u@example.net"], &big).await;
    assert_eq!(
        (r.code, r.text.as_str()),
        (552, "5.3.4 Message size exceeds fixed limit")
    );
    // A text line over 998 octets: refused after DATA.
    let long_line = format!(
        "{}{}\r\n",
        plain_message("app@a.test", "u@example.net", "long", ""),
        "z".repeat(1200)
    );
    let r = c.send("app@a.test", &["u@example.net"], &long_line).await;
    assert_eq!((r.code, r.text.as_str()), (500, "5.5.2 Line too long"));
    // Still usable, and nothing was queued by the refusals.
    let r = c
        .send_plain("app@a.test", "u@example.net", "ok", "fine\r\n")
        .await;
    assert_eq!(r.code, 250);
    assert_eq!(relay.cli_json(&["log"]).as_array().unwrap().len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slowloris_is_cut_off() {
    let relay = Relay::start(RelayOptions {
        command_secs: 2,
        data_secs: 2,
        ..Default::default()
    });
    let (id, token) = relay.add_project("a", &["a.test"]);
    // Idle between commands.
    let (mut c, _) = Client::starttls(relay.starttls, &relay.pki).await;
    c.write(b"NO").await;
    let r = c
        .try_reply(Duration::from_secs(6))
        .await
        .expect("timeout reply");
    assert_eq!(
        (r.code, r.text.as_str()),
        (421, "4.4.2 Timeout, closing connection")
    );
    assert!(c.closed(Duration::from_secs(3)).await);
    // One byte a second inside DATA: the total DATA deadline (4 × data_secs) ends it.
    let mut c = Client::logged_in(relay.starttls, &relay.pki, &id, &token).await;
    c.cmd("MAIL FROM:<app@a.test>").await;
    c.cmd("RCPT TO:<u@example.net>").await;
    assert_eq!(c.cmd("DATA").await.code, 354);
    let started = std::time::Instant::now();
    let mut got = None;
    for _ in 0..30 {
        if !c.write_lossy(b"x").await {
            break;
        }
        if let Some(r) = c.try_reply(Duration::from_secs(1)).await {
            got = Some(r);
            break;
        }
    }
    let r = got.expect("slow DATA must be cut off");
    assert_eq!(r.code, 421, "{r:?}");
    assert!(started.elapsed() < Duration::from_secs(15));
    assert!(relay.cli_json(&["log"]).as_array().unwrap().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_content_is_handled() {
    let relay = Relay::start(RelayOptions {
        max_message_size: 2 * 1024 * 1024,
        ..Default::default()
    });
    let (id, token) = relay.add_project("a", &["a.test"]);
    let mut c = Client::logged_in(relay.starttls, &relay.pki, &id, &token).await;

    // CR/LF in EHLO or parameters cannot get through the line framing: a bare CR is refused,
    // a bare LF ends the line (bare_newline = "normalize"), so what follows is a command of
    // its own, answered as one.
    c.write(b"EHLO evil\rX-Injected: yes\r\n").await;
    let r = c.reply().await;
    assert_eq!(r.code, 550, "{r:?}");
    let mut c = Client::logged_in(relay.starttls, &relay.pki, &id, &token).await;
    c.write(b"MAIL FROM:<app@a.test>\nRCPT TO:<u@example.net>\r\n")
        .await;
    assert_eq!(c.reply().await.code, 250);
    assert_eq!(c.reply().await.code, 250);
    assert_eq!(c.cmd("RSET").await.code, 250);

    // EHLO name with odd characters: quoted in an escaped comment in the Received header.
    let (mut c, _) = Client::starttls(relay.starttls, &relay.pki).await;
    assert_eq!(c.cmd("EHLO weird(name);\u{7f}").await.code, 250);
    assert_eq!(c.auth_plain(&id, &token).await.code, 235);
    let r = c
        .send_plain("app@a.test", "u@example.net", "s", "x\r\n")
        .await;
    assert_eq!(r.code, 250, "{r:?}");
    let qid = r.queued_id();
    relay.wait_state(&qid, &["delivered"], Duration::from_secs(20));
    let eml = std::fs::read(relay.state_dir().join("outbox").join(format!("{qid}.eml"))).unwrap();
    let received = String::from_utf8_lossy(&eml)
        .lines()
        .next()
        .unwrap()
        .to_string();
    assert_eq!(
        received,
        "Received: from unknown ([127.0.0.1]) (helo=weird\\(name\\);?)"
    );

    // Invalid UTF-8 in an address: refused, no panic.
    let mut c = Client::logged_in(relay.starttls, &relay.pki, &id, &token).await;
    c.write(b"MAIL FROM:<\xff\xfe@a.test>\r\n").await;
    let r = c.reply().await;
    assert!(r.code >= 500, "{r:?}");

    // 20,000 headers and 10,000-deep MIME nesting: handled without crashing the relay.
    let mut many = String::from("From: <app@a.test>\r\nTo: <u@example.net>\r\n");
    for i in 0..20_000 {
        many.push_str(&format!("X-H{i}: v\r\n"));
    }
    many.push_str("\r\nbody\r\n");
    let r = c.send("app@a.test", &["u@example.net"], &many).await;
    assert!(r.code == 250 || r.code >= 500, "{r:?}");
    let mut deep =
        String::from("From: <app@a.test>\r\nTo: <u@example.net>\r\nMIME-Version: 1.0\r\n");
    for i in 0..10_000 {
        deep.push_str(&format!(
            "Content-Type: multipart/mixed; boundary=\"b{i}\"\r\n\r\n--b{i}\r\n"
        ));
    }
    deep.push_str("Content-Type: text/plain\r\n\r\nleaf\r\n");
    let r = c.send("app@a.test", &["u@example.net"], &deep).await;
    assert!(r.code == 250 || r.code >= 500, "{r:?}");
    // Still alive and serving.
    let (mut c, _) = Client::starttls(relay.starttls, &relay.pki).await;
    assert_eq!(c.auth_plain(&id, &token).await.code, 235);
}
