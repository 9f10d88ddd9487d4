//! SMTP smuggling (CVE-2023-51764/51765/51766 and relatives): no non-standard end-of-data
//! sequence ends DATA, on either listener, in one write or split, whether bare LFs are
//! normalised (the default) or rejected. The relay refuses the bare CR/NUL, and a lone `.`
//! line next to a bare LF (`reject`: any bare LF), with 550 5.5.2 and closes, so nothing after
//! a fake terminator runs as a command. What reaches the upstream is CRLF-only and
//! dot-stuffed on the wire.

mod support;

use std::time::Duration;

use support::certs::TestPki;
use support::client::Client;
use support::relay::{Relay, RelayOptions};
use support::upstream::{TestUpstream, UpstreamOptions, data_problems};

const FAKE_ENDS: &[&[u8]] = &[
    b"\n.\n",
    b"\n.\r\n",
    b"\r.\r\n",
    b"\r.\r",
    b"\r\n.\r",
    b"\r\n.\n",
    b"\r\n\0.\r\n",
    b"\r\n.\0\r\n",
    b"\r\n.\r\r\n",
];

async fn relay_with_upstream() -> (Relay, TestUpstream, String, String) {
    relay_in_mode("normalize").await
}

/// A relay with `[server] bare_newline = mode` and its test upstream.
async fn relay_in_mode(mode: &str) -> (Relay, TestUpstream, String, String) {
    let pki = TestPki::generate();
    let up = TestUpstream::start(UpstreamOptions::starttls(&pki)).await;
    let relay = Relay::start_with_upstream(
        up.port(),
        "starttls",
        &pki,
        RelayOptions {
            server_extra: format!("bare_newline = \"{mode}\""),
            ..Default::default()
        },
    );
    let (id, token) = relay.add_project("a", &["a.test"]);
    relay.add_project("b", &["b.test"]);
    (relay, up, id, token)
}

async fn logged_in(relay: &Relay, implicit: bool, id: &str, token: &str) -> Client {
    if implicit {
        let mut c = Client::connect_tls(relay.implicit, &relay.pki).await;
        assert_eq!(c.reply().await.code, 220);
        assert_eq!(c.cmd("EHLO app").await.code, 250);
        assert_eq!(c.auth_plain(id, token).await.code, 235);
        c
    } else {
        Client::logged_in(relay.starttls, &relay.pki, id, token).await
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fake_terminators_never_end_data() {
    for mode in ["normalize", "reject"] {
        fake_terminators_in_mode(mode).await;
    }
}

async fn fake_terminators_in_mode(mode: &str) {
    let (relay, up, id, token) = relay_in_mode(mode).await;
    for implicit in [false, true] {
        for fake in FAKE_ENDS {
            for split in [false, true] {
                let mut c = logged_in(&relay, implicit, &id, &token).await;
                assert_eq!(c.cmd("MAIL FROM:<app@a.test>").await.code, 250);
                assert_eq!(c.cmd("RCPT TO:<victim@example.net>").await.code, 250);
                assert_eq!(c.cmd("DATA").await.code, 354);
                let mut payload =
                    b"From: <app@a.test>\r\nTo: <victim@example.net>\r\n\r\nhello".to_vec();
                payload.extend_from_slice(fake);
                payload.extend_from_slice(
                    b"MAIL FROM:<ceo@b.test>\r\nRCPT TO:<victim@example.net>\r\nDATA\r\nFrom: <ceo@b.test>\r\n\r\nsmuggled\r\n.\r\n",
                );
                if split {
                    for chunk in payload.chunks(3) {
                        if !c.write_lossy(chunk).await {
                            break;
                        }
                        tokio::time::sleep(Duration::from_millis(1)).await;
                    }
                } else {
                    c.write_lossy(&payload).await;
                }
                let r = c.reply().await;
                assert_eq!(
                    r.code, 550,
                    "{mode}: {fake:?} split={split} implicit={implicit}: {r:?}"
                );
                assert!(r.text.starts_with("5.5.2"), "{r:?}");
                if mode == "normalize" && [&b"\n.\n"[..], b"\n.\r\n", b"\r\n.\n"].contains(fake) {
                    assert!(r.text.contains("only <CR><LF>.<CR><LF> ends data"), "{r:?}");
                }
                assert!(
                    c.closed(Duration::from_secs(5)).await,
                    "connection must close"
                );
            }
        }
    }
    // Nothing was queued, let alone delivered.
    let log = relay.cli_json(&["log"]);
    assert!(log.as_array().unwrap().is_empty(), "{log:#}");
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(up.messages().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dotted_bodies_arrive_intact_and_stuffed_on_the_wire() {
    let (relay, up, id, token) = relay_with_upstream().await;
    let body_lines = [
        ".",
        "..",
        "...",
        ".leading",
        "..two",
        "middle . dot",
        ".\t",
        ". ",
    ];
    let mut body =
        String::from("From: <app@a.test>\r\nTo: <u@example.net>\r\nSubject: dots\r\n\r\n");
    for l in body_lines {
        body.push_str(l);
        body.push_str("\r\n");
    }
    // Dot-stuff for the client side of the wire.
    let stuffed: String = body
        .split_inclusive("\r\n")
        .map(|l| {
            if l.starts_with('.') {
                format!(".{l}")
            } else {
                l.to_string()
            }
        })
        .collect();
    for implicit in [false, true] {
        let mut c = logged_in(&relay, implicit, &id, &token).await;
        let r = c.send("app@a.test", &["u@example.net"], &stuffed).await;
        assert_eq!(r.code, 250, "{r:?}");
    }
    let got = up.wait_for(2, Duration::from_secs(20)).await;
    for m in got {
        assert!(m.data.ends_with(body.as_bytes()), "{}", m.text());
        assert!(
            data_problems(&m.raw).is_empty(),
            "{:?}",
            data_problems(&m.raw)
        );
        assert!(
            m.raw.windows(5).any(|w| w == b"\r\n..\r"),
            "the lone dot line is stuffed"
        );
    }
    assert!(up.violations().is_empty(), "{:?}", up.violations());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bare_lf_bodies_are_normalised_unstuffed_and_stuffed_again() {
    let (relay, up, id, token) = relay_with_upstream().await;
    // Stuffed dot lines after bare LFs, as smtplib sends them, and a CRLF.CRLF end.
    let wire =
        "From: <app@a.test>\nTo: <u@example.net>\nSubject: lf dots\n\n..\n..x\n.y\nmid . dot\n\r\n";
    let stored = "From: <app@a.test>\r\nTo: <u@example.net>\r\nSubject: lf dots\r\n\r\n.\r\n.x\r\ny\r\nmid . dot\r\n\r\n";
    for implicit in [false, true] {
        let mut c = logged_in(&relay, implicit, &id, &token).await;
        let r = c.send("app@a.test", &["u@example.net"], wire).await;
        assert_eq!(r.code, 250, "{r:?}");
    }
    let got = up.wait_for(2, Duration::from_secs(20)).await;
    for m in got {
        assert!(m.data.ends_with(stored.as_bytes()), "{}", m.text());
        assert!(
            data_problems(&m.raw).is_empty(),
            "{:?}",
            data_problems(&m.raw)
        );
        assert!(m.raw.windows(6).any(|w| w == b"\r\n..\r\n"));
    }
    assert!(up.violations().is_empty(), "{:?}", up.violations());
}
