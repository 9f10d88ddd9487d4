//! End to end: an independent client (lettre) submits over STARTTLS and implicit TLS, the
//! relay queues and forwards to a test upstream over STARTTLS with AUTH, and the upstream
//! receives exactly the message and envelope.

mod support;

use std::time::Duration;

use lettre::address::Envelope;
use lettre::transport::smtp::authentication::{Credentials, Mechanism};
use lettre::transport::smtp::client::{Certificate, Tls, TlsParameters};
use lettre::{AsyncSmtpTransport, AsyncTransport, Tokio1Executor};
use support::certs::TestPki;
use support::relay::{Relay, RelayOptions, smtp_upstream};
use support::upstream::{TestUpstream, UpstreamOptions, data_problems};

fn transport(
    port: u16,
    pki: &TestPki,
    implicit: bool,
    user: &str,
    token: &str,
    mechanism: Mechanism,
) -> AsyncSmtpTransport<Tokio1Executor> {
    let params = TlsParameters::builder("localhost".into())
        .add_root_certificate(Certificate::from_pem(pki.ca_pem.as_bytes()).unwrap())
        .build_rustls()
        .unwrap();
    AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous("localhost")
        .port(port)
        .tls(if implicit {
            Tls::Wrapper(params)
        } else {
            Tls::Required(params)
        })
        .credentials(Credentials::new(user.into(), token.into()))
        .authentication(vec![mechanism])
        .timeout(Some(Duration::from_secs(20)))
        .build()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lettre_submission_reaches_upstream_byte_for_byte() {
    let upstream_pki = TestPki::generate();
    let up = TestUpstream::start(
        UpstreamOptions::starttls(&upstream_pki).with_auth("relay-user", "relay-pass"),
    )
    .await;
    let tmp = tempfile::tempdir().unwrap();
    let files = upstream_pki.write_to(tmp.path());
    let pw = tmp.path().join("upstream-password");
    std::fs::write(&pw, "relay-pass\n").unwrap();
    let relay = Relay::start(RelayOptions {
        upstreams: Some(smtp_upstream(
            up.port(),
            "starttls",
            &files.ca,
            Some(("relay-user", &pw)),
        )),
        ..Default::default()
    });
    let (id, token) = relay.add_project("shop", &["shop.test"]);

    // The exact bytes an app sends, including a line that starts with a dot.
    let original = concat!(
        "From: Shop <noreply@shop.test>\r\n",
        "To: <alice@example.net>\r\n",
        "Subject: Reset your password\r\n",
        "Date: Sat, 21 Nov 2026 10:00:00 +0000\r\n",
        "Message-ID: <reset-1@shop.test>\r\n",
        "MIME-Version: 1.0\r\n",
        "Content-Type: text/plain; charset=utf-8\r\n",
        "\r\n",
        ".hidden line starting with a dot\r\n",
        "Your code is 123456.\r\n",
        "..\r\n",
    );
    for (implicit, mech, port) in [
        (false, Mechanism::Plain, relay.starttls.port()),
        (true, Mechanism::Login, relay.implicit.port()),
    ] {
        let t = transport(port, &relay.pki, implicit, &id, &token, mech);
        let envelope = Envelope::new(
            Some("noreply@shop.test".parse().unwrap()),
            vec![
                "alice@example.net".parse().unwrap(),
                "bob@example.org".parse().unwrap(),
            ],
        )
        .unwrap();
        // lettre appends "\r\n.\r\n" itself, so it gets the message without its last CRLF.
        let without_last_crlf = &original[..original.len() - 2];
        t.send_raw(&envelope, without_last_crlf.as_bytes())
            .await
            .unwrap_or_else(|e| panic!("send failed (implicit={implicit}): {e}"));
    }

    let got = up.wait_for(2, Duration::from_secs(30)).await;
    assert_eq!(got.len(), 2);
    for m in &got {
        assert_eq!(m.mail_from, "noreply@shop.test");
        assert_eq!(m.rcpt_to, vec!["alice@example.net", "bob@example.org"]);
        assert!(m.tls, "relay must use TLS toward the upstream");
        assert_eq!(m.auth_user.as_deref(), Some("relay-user"));
        let text = String::from_utf8(m.data.clone()).unwrap();
        // The relay prepends its Received header and changes nothing else.
        assert!(text.starts_with("Received: from "), "{text}");
        assert!(
            m.data.ends_with(original.as_bytes()),
            "message body changed:\n{text}"
        );
        let added = &text[..text.len() - original.len()];
        assert_eq!(
            added.matches("\r\n").count(),
            3,
            "only Received is added: {added}"
        );
        assert!(
            data_problems(&m.raw).is_empty(),
            "{:?}",
            data_problems(&m.raw)
        );
        assert!(
            m.raw.windows(4).any(|w| w == b"\n..h"),
            "dot-stuffed on the wire"
        );
    }

    // The log shows both as delivered.
    let log = relay.cli_json(&["log", "--project", &id]);
    let states: Vec<&str> = log
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["state"].as_str().unwrap())
        .collect();
    assert_eq!(states, vec!["delivered", "delivered"], "{log:#}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missing_date_and_message_id_are_added_and_outbox_is_default() {
    let relay = Relay::start(RelayOptions::default());
    let (id, token) = relay.add_project("app", &["app.test"]);
    let mut c = support::client::Client::logged_in(relay.starttls, &relay.pki, &id, &token).await;
    let body = "From: <noreply@app.test>\r\nTo: <u@example.net>\r\nSubject: hi\r\n\r\nhello\r\n";
    let r = c.send("noreply@app.test", &["u@example.net"], body).await;
    assert_eq!(r.code, 250, "{r:?}");
    let queued_id = r.queued_id();
    relay.wait_state(&queued_id, &["delivered"], Duration::from_secs(20));
    let eml = std::fs::read_to_string(
        relay
            .state_dir()
            .join("outbox")
            .join(format!("{queued_id}.eml")),
    )
    .unwrap();
    assert!(eml.contains("\r\nDate: "), "{eml}");
    assert!(
        eml.contains(&format!("\r\nMessage-ID: <{queued_id}@relay.test>\r\n")),
        "{eml}"
    );
    assert!(eml.ends_with(body));
}
