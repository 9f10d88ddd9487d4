//! Operations: what an operator watches — the Prometheus endpoint and the JSON log lines —
//! checked against what the test itself sent and what the upstream received.

mod support;

use std::time::{Duration, Instant};

use base64::Engine;
use serde_json::Value;
use support::certs::TestPki;
use support::client::Client;
use support::ops::{http_get, sample};
use support::relay::{Relay, RelayOptions, smtp_upstream};
use support::upstream::{Script, TestUpstream, UpstreamOptions};
use tokio::io::AsyncWriteExt;

const WAIT: Duration = Duration::from_secs(20);

fn b64(s: &str) -> String {
    base64::engine::general_purpose::STANDARD.encode(s)
}

async fn scrape(relay: &Relay) -> String {
    let addr = relay.metrics.expect("metrics endpoint");
    let (status, content_type, body) = http_get(addr, "/metrics").await;
    assert_eq!(status, 200, "{body}");
    assert!(content_type.contains("openmetrics-text"), "{content_type}");
    assert!(body.ends_with("# EOF\n"), "{body}");
    body
}

fn value(body: &str, series: &str) -> f64 {
    sample(body, series).unwrap_or_else(|| panic!("{series} missing in\n{body}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_match_what_was_sent_and_what_the_upstream_received() {
    let pki = TestPki::generate();
    let script = Script::default()
        .with_rcpt("gone@example.net", "550 5.1.1 No such user")
        .with_rcpt("busy@example.net", "450 4.2.1 Mailbox busy");
    let up = TestUpstream::start(UpstreamOptions::implicit(&pki).with_script(script)).await;
    let relay = Relay::start_with_upstream(
        up.port(),
        "implicit",
        &pki,
        RelayOptions {
            // The deferred message stays put for the whole test.
            retry_schedule_secs: vec![600],
            metrics: true,
            // Five messages a minute: the sixth attempt is a rate-limit hit.
            extra_config: "[limits]\nper_minute = 5\n".into(),
            ..Default::default()
        },
    );
    let (id, token) = relay.add_project("app", &["app.test"]);

    // Session 1 (TLS): five messages accepted, then a wrong sender, an oversized one, one
    // over the rate limit, and a NUL byte that closes the connection.
    let mut c = Client::logged_in(relay.starttls, &relay.pki, &id, &token).await;
    let mut delivered = Vec::new();
    for i in 0..3 {
        delivered.push(
            c.submit("noreply@app.test", &format!("ok{i}@example.net"))
                .await,
        );
    }
    let failed = c.submit("noreply@app.test", "gone@example.net").await;
    let deferred = c.submit("noreply@app.test", "busy@example.net").await;
    assert_eq!(c.cmd("MAIL FROM:<someone@other.test>").await.code, 553);
    assert_eq!(
        c.cmd("MAIL FROM:<noreply@app.test> SIZE=99999999")
            .await
            .code,
        552
    );
    let r = c.cmd("MAIL FROM:<noreply@app.test>").await;
    assert_eq!(r.code, 451, "{r:?}");
    assert!(r.text.starts_with("4.7.1 Rate limit exceeded"), "{r:?}");
    c.write(b"NO\0OP\r\n").await;
    assert_eq!(c.reply().await.code, 550);
    assert!(c.closed(Duration::from_secs(5)).await);

    // Session 2 (TLS): a wrong token.
    let (mut c, _) = Client::starttls(relay.starttls, &relay.pki).await;
    assert_eq!(c.auth_plain(&id, "smtpr_wrong").await.code, 535);
    assert_eq!(c.cmd("QUIT").await.code, 221);
    // Session 3 (no TLS): MAIL before STARTTLS.
    let mut c = Client::connect(relay.starttls).await;
    assert_eq!(c.reply().await.code, 220);
    assert_eq!(c.cmd("EHLO client.test").await.code, 250);
    assert_eq!(c.cmd("MAIL FROM:<noreply@app.test>").await.code, 530);
    assert_eq!(c.cmd("QUIT").await.code, 221);
    // Session 4: not TLS at all on the implicit-TLS port.
    let mut tcp = tokio::net::TcpStream::connect(relay.implicit)
        .await
        .unwrap();
    tcp.write_all(b"EHLO plaintext.test\r\n\r\n").await.unwrap();
    let mut junk = Client::connect(relay.implicit).await;
    drop(tcp);
    junk.write(b"\x16\x03\x01\x00\x05hello").await;
    assert!(junk.closed(Duration::from_secs(10)).await);

    for m in &delivered {
        relay.wait_state(m, &["delivered"], WAIT);
    }
    relay.wait_state(&failed, &["failed"], WAIT);
    relay.wait_state(&deferred, &["deferred"], WAIT);
    let received = up.messages();
    assert_eq!(received.len(), 3, "the upstream took the three good ones");

    // Connections close asynchronously; wait for the gauge to settle.
    let deadline = Instant::now() + WAIT;
    let body = loop {
        let body = scrape(&relay).await;
        if sample(&body, "smtp_relay_active_connections") == Some(0.0)
            && sample(&body, "smtp_relay_tls_handshake_failures_total") >= Some(2.0)
        {
            break body;
        }
        assert!(Instant::now() < deadline, "never settled:\n{body}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let p = format!("project=\"{id}\"");
    let route = format!("{{{p},upstream=\"test\"}}");
    assert_eq!(
        value(&body, &format!("smtp_relay_messages_accepted_total{{{p}}}")),
        5.0
    );
    assert_eq!(
        value(
            &body,
            &format!("smtp_relay_messages_delivered_total{route}")
        ),
        received.len() as f64
    );
    assert_eq!(
        value(&body, &format!("smtp_relay_messages_failed_total{route}")),
        1.0
    );
    assert_eq!(
        value(&body, &format!("smtp_relay_messages_deferred_total{route}")),
        1.0
    );
    assert_eq!(
        sample(&body, &format!("smtp_relay_messages_expired_total{route}")),
        None
    );
    assert_eq!(
        value(
            &body,
            "smtp_relay_delivery_latency_seconds_count{upstream=\"test\"}"
        ),
        3.0
    );
    for (reason, project, n) in [
        ("sender", id.as_str(), 1.0),
        ("size", id.as_str(), 1.0),
        ("syntax", id.as_str(), 1.0),
        ("limit", id.as_str(), 1.0),
        ("auth", "", 2.0),
    ] {
        let series =
            format!("smtp_relay_rejections_total{{project=\"{project}\",reason=\"{reason}\"}}");
        assert_eq!(value(&body, &series), n, "{series}");
    }
    assert_eq!(value(&body, "smtp_relay_auth_failures_total"), 1.0);
    // Sessions 1 and 2 completed a handshake; session 4's two attempts failed.
    assert_eq!(value(&body, "smtp_relay_tls_handshakes_total"), 2.0);
    assert_eq!(value(&body, "smtp_relay_tls_handshake_failures_total"), 2.0);
    assert_eq!(value(&body, "smtp_relay_queue_depth"), 1.0);
    assert!(value(&body, "smtp_relay_queue_oldest_message_age_seconds") > 0.0);
    assert_eq!(value(&body, "smtp_relay_deliveries_in_flight"), 0.0);
    assert_eq!(
        value(&body, &format!("smtp_relay_rate_limit_hits_total{{{p}}}")),
        1.0
    );

    let (status, _, _) = http_get(relay.metrics.unwrap(), "/other").await;
    assert_eq!(status, 404);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_logs_parse_and_never_contain_a_secret_even_at_trace() {
    let pki = TestPki::generate();
    let up_password = "upstream-pass-S3cret-x9";
    let up =
        TestUpstream::start(UpstreamOptions::implicit(&pki).with_auth("relayuser", up_password))
            .await;
    let tmp = tempfile::tempdir().unwrap();
    let files = pki.write_to(tmp.path());
    let pw_file = tmp.path().join("upstream.pw");
    std::fs::write(&pw_file, up_password).unwrap();
    let mut relay = Relay::start(RelayOptions {
        upstreams: Some(smtp_upstream(
            up.port(),
            "implicit",
            &files.ca,
            Some(("relayuser", &pw_file)),
        )),
        env: vec![("SMTP_RELAY_LOG".into(), "trace".into())],
        ..Default::default()
    });
    let (id, token) = relay.add_project("app", &["app.test"]);

    // AUTH PLAIN.
    let mut c = Client::logged_in(relay.starttls, &relay.pki, &id, &token).await;
    let plain_id = c.submit("noreply@app.test", "user@example.net").await;
    assert_eq!(c.cmd("QUIT").await.code, 221);
    // AUTH LOGIN, after a failed attempt with a secret-looking wrong token.
    let wrong = "smtpr_WrongButSecretLooking0123456789abcdefghi";
    let (mut c, _) = Client::starttls(relay.starttls, &relay.pki).await;
    assert_eq!(c.auth_plain(&id, wrong).await.code, 535);
    assert_eq!(c.cmd("AUTH LOGIN").await.code, 334);
    assert_eq!(c.cmd(&b64(&id)).await.code, 334);
    assert_eq!(c.cmd(&b64(&token)).await.code, 235);
    let login_id = c.submit("noreply@app.test", "user@example.net").await;
    assert_eq!(c.cmd("QUIT").await.code, 221);
    for m in [&plain_id, &login_id] {
        relay.wait_state(m, &["delivered"], WAIT);
    }
    up.wait_for(2, WAIT).await;
    assert!(relay.terminate().success());

    let log = relay.server_log();
    let forbidden = [
        token.clone(),
        b64(&token),
        b64(&format!("\0{id}\0{token}")),
        wrong.to_string(),
        b64(&format!("\0{id}\0{wrong}")),
        up_password.to_string(),
        b64(up_password),
        b64(&format!("\0relayuser\0{up_password}")),
    ];
    let mut events = Vec::new();
    for (n, line) in log.lines().enumerate() {
        let v: Value = serde_json::from_str(line)
            .unwrap_or_else(|e| panic!("line {} is not JSON ({e}): {line}", n + 1));
        assert!(
            v["level"].is_string() && v["timestamp"].is_string(),
            "{line}"
        );
        for f in &forbidden {
            assert!(
                !line.contains(f.as_str()),
                "a secret leaked on line {}: {line}",
                n + 1
            );
        }
        events.push(v);
    }
    assert!(
        events.iter().any(|e| e["level"] == "TRACE"),
        "trace level was not in force"
    );

    let sessions: Vec<&Value> = events
        .iter()
        .filter(|e| e["message"] == "session closed" && e["project"] == id.as_str())
        .collect();
    assert_eq!(sessions.len(), 2, "{sessions:#?}");
    for (s, mid) in sessions.iter().zip([&plain_id, &login_id]) {
        assert_eq!(s["message_ids"], mid.as_str(), "{s}");
        assert!(
            s["client"].as_str().unwrap().starts_with("127.0.0.1:"),
            "{s}"
        );
        assert_eq!(s["last_reply"], 221, "{s}");
        assert!(s["duration_ms"].is_u64(), "{s}");
    }
    for mid in [&plain_id, &login_id] {
        let a = events
            .iter()
            .find(|e| e["message"] == "delivery attempt" && e["id"] == mid.as_str())
            .unwrap_or_else(|| panic!("no delivery attempt line for {mid}"));
        assert_eq!(a["project"], id.as_str(), "{a}");
        assert_eq!(a["client"], "127.0.0.1", "{a}");
        assert_eq!(a["upstream"], "test", "{a}");
        assert_eq!(a["code"], 250, "{a}");
        assert!(a["duration_ms"].is_u64(), "{a}");
    }
}
