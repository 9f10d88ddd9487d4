//! `SMTP_RELAY_LOG=trace` shows the relay's own SMTP transcript — commands and reply codes —
//! and not the internals of sled or rustls; credentials and message bodies never appear.

mod support;

use std::time::Duration;

use base64::Engine;
use support::client::{Client, plain_message};
use support::relay::{Relay, RelayOptions};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trace_shows_the_transcript_and_no_secrets() {
    let relay = Relay::start(RelayOptions {
        log_level: "trace",
        ..Default::default()
    });
    let (id, token) = relay.add_project("app", &["app.test"]);
    let b64 = |s: &str| base64::engine::general_purpose::STANDARD.encode(s);

    // AUTH PLAIN with an initial response, and a whole message.
    let mut c = Client::logged_in(relay.starttls, &relay.pki, &id, &token).await;
    let body = plain_message(
        "noreply@app.test",
        "user@example.net",
        "Subject-line-7f3a",
        "Body-text-that-must-not-be-logged-91c2\r\n",
    );
    let r = c
        .send("noreply@app.test", &["user@example.net"], &body)
        .await;
    assert_eq!(r.code, 250, "{r:?}");
    assert_eq!(c.cmd("QUIT").await.code, 221);

    // AUTH LOGIN: the lines answering the 334s are credentials.
    let (mut c, _) = Client::starttls(relay.starttls, &relay.pki).await;
    assert_eq!(c.cmd("AUTH LOGIN").await.code, 334);
    assert_eq!(c.cmd(&b64(&id)).await.code, 334);
    assert_eq!(c.cmd(&b64(&token)).await.code, 235);
    assert_eq!(c.cmd("QUIT").await.code, 221);

    let log = relay.wait_log("C: QUIT", 2, Duration::from_secs(10));
    for needle in [
        "C: EHLO",
        "C: STARTTLS",
        "S: 220 2.0.0",
        "C: AUTH PLAIN [redacted]",
        "S: 235",
        "C: MAIL FROM:<noreply@app.test>",
        "C: RCPT TO:<user@example.net>",
        "C: DATA",
        "S: 354",
        "S: 250 2.0.0",
        "C: AUTH LOGIN",
        "S: 334",
        "S: 221",
    ] {
        assert!(
            log.contains(needle),
            "{needle:?} not in the trace log:\n{log}"
        );
    }
    for secret in [
        token.clone(),
        b64(&token),
        b64(&format!("\0{id}\0{token}")),
        b64(&id),
        "Body-text-that-must-not-be-logged-91c2".into(),
        "Subject-line-7f3a".into(),
    ] {
        assert!(!log.contains(&secret), "{secret:?} is in the log:\n{log}");
    }
    // Dependencies stay at info: no sled or rustls internals.
    for line in log.lines() {
        let v: serde_json::Value = match serde_json::from_str(line) {
            Ok(v) => v,
            Err(_) => continue,
        };
        let target = v["target"].as_str().unwrap_or("");
        let level = v["level"].as_str().unwrap_or("");
        assert!(
            target.starts_with("smtp_relay") || matches!(level, "INFO" | "WARN" | "ERROR"),
            "a dependency's {level} line at the default trace filter: {line}"
        );
    }
}
