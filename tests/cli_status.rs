//! `smtp-relay status`: the running server's one-screen report, checked against what the
//! test itself did — real mail through a real upstream (one recipient refused), the
//! listeners it bound, the certificate it serves — and the 14-day certificate warning in the
//! log, the metric and the report.

mod support;

use std::time::Duration;

use serde_json::Value;
use support::certs::TestPki;
use support::client::Client;
use support::ops::{http_get, sample};
use support::relay::{Relay, RelayOptions};
use support::upstream::{Script, TestUpstream, UpstreamOptions};

const WAIT: Duration = Duration::from_secs(20);
const WARNING: &str = "TLS certificate expires within 14 days";

fn status_json(relay: &Relay) -> Value {
    relay.cli_json(&["status"])
}

fn status_text(relay: &Relay) -> String {
    let out = relay.cli(&["status"]);
    assert!(
        out.status.success(),
        "status failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("UTF-8")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_reports_the_running_server() {
    let pki = TestPki::generate();
    let script = Script::default().with_rcpt("gone@example.net", "550 5.1.1 No such user");
    let up = TestUpstream::start(UpstreamOptions::implicit(&pki).with_script(script)).await;
    let mut relay = Relay::start_with_upstream(
        up.port(),
        "implicit",
        &pki,
        RelayOptions {
            extra_config: "[admin_http]\naddress = \"127.0.0.1:0\"\n".into(),
            ..Default::default()
        },
    );
    let (id, token) = relay.add_project("shop", &["shop.test"]);

    let mut c = Client::logged_in(relay.starttls, &relay.pki, &id, &token).await;
    let ok = c.submit("noreply@shop.test", "ok@example.net").await;
    let gone = c.submit("noreply@shop.test", "gone@example.net").await;
    relay.wait_state(&ok, &["delivered"], WAIT);
    relay.wait_state(&gone, &["failed"], WAIT);
    assert_eq!(up.messages().len(), 1);

    let s = status_json(&relay);
    assert_eq!(s["version"], env!("CARGO_PKG_VERSION"), "{s:#}");
    assert!(s["uptime_secs"].as_u64().is_some(), "{s:#}");
    assert!(s["started"].as_u64().unwrap() > 1_700_000_000, "{s:#}");
    // The listeners it really bound (port 0 in the config).
    let listeners = s["listeners"].as_array().unwrap();
    for (mode, addr) in [("starttls", relay.starttls), ("implicit", relay.implicit)] {
        assert!(
            listeners
                .iter()
                .any(|l| l["mode"] == mode && l["address"] == addr.to_string()),
            "{mode} {addr} missing: {s:#}"
        );
    }
    // The test PKI's leaf: CN=localhost, valid for years.
    let tls = &s["tls"];
    assert_eq!(tls["subject"], "CN=localhost", "{s:#}");
    assert!(tls["days_left"].as_i64().unwrap() > 14, "{s:#}");
    assert_eq!(tls["expiring_soon"], false, "{s:#}");
    assert_eq!(tls["file"], relay.files.cert.display().to_string());
    // Both messages are done: nothing queued.
    assert_eq!(s["queue"]["depth"], 0, "{s:#}");
    assert_eq!(s["queue"]["oldest_received"], Value::Null, "{s:#}");
    assert_eq!(s["store"]["healthy"], true, "{s:#}");
    assert!(s["store"]["free_bytes"].as_u64().unwrap() > 0, "{s:#}");
    // The upstream: one success, one refusal (the message to gone@ delivered nothing).
    let upstream = s["upstreams"]
        .as_array()
        .unwrap()
        .iter()
        .find(|u| u["name"] == "test")
        .unwrap_or_else(|| panic!("no upstream test: {s:#}"));
    assert!(upstream["last_success"].as_u64().is_some(), "{s:#}");
    assert!(upstream["last_error"].as_u64().is_some(), "{s:#}");
    assert!(
        upstream["last_error_reply"]
            .as_str()
            .unwrap()
            .contains("550 5.1.1"),
        "{s:#}"
    );
    // The project's hour: two accepted, one relayed, one failed.
    let projects = s["last_hour"]["projects"].as_array().unwrap();
    let p = projects
        .iter()
        .find(|p| p["id"] == id.as_str())
        .unwrap_or_else(|| panic!("project {id} missing: {s:#}"));
    assert_eq!(p["name"], "shop");
    assert_eq!(
        (&p["accepted"], &p["relayed"], &p["failed"]),
        (&Value::from(2), &Value::from(1), &Value::from(1)),
        "{s:#}"
    );

    // The same as one screen of text.
    let text = status_text(&relay);
    for needle in [
        format!("smtp-relay {}", env!("CARGO_PKG_VERSION")),
        format!("starttls {}", relay.starttls),
        "CN=localhost".to_string(),
        "Queue:      0 message(s)".to_string(),
        "Store:      ok".to_string(),
        "550 5.1.1 No such user".to_string(),
        format!("{id} (shop)"),
    ] {
        assert!(text.contains(&needle), "{needle:?} missing in\n{text}");
    }
    assert!(!text.contains("WARNING"), "{text}");

    // The same report on the HTTP admin API (a viewer may read it).
    let viewer = relay.cli_json(&[
        "admin", "token", "add", "--label", "ops", "--role", "viewer",
    ]);
    let r = relay
        .http_client()
        .get(format!(
            "http://{}/api/v1/status",
            relay.listener_addr("admin_http")
        ))
        .bearer_auth(viewer["token"].as_str().unwrap())
        .send()
        .await
        .expect("GET /api/v1/status");
    assert_eq!(r.status(), 200);
    let api: Value = r.json().await.expect("JSON");
    assert_eq!(api["upstreams"], s["upstreams"], "{api:#}");
    assert_eq!(api["listeners"], s["listeners"], "{api:#}");

    // Stopped: the command says so and fails, rather than report a database.
    relay.terminate();
    let out = relay.cli(&["status"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("smtp-relay is not running"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_certificate_expiring_within_14_days_warns_in_log_metric_and_status() {
    let mut relay = Relay::start(RelayOptions {
        metrics: true,
        ..Default::default()
    });
    let log = relay.server_log();
    assert!(!log.contains(WARNING), "{log}");

    // Renew with a certificate that expires in 5 days, and reload.
    let expiring = TestPki::generate_expiring_in_days(5);
    std::fs::write(&relay.files.cert, &expiring.cert_pem).unwrap();
    std::fs::write(&relay.files.key, &expiring.key_pem).unwrap();
    relay.signal(libc::SIGHUP);
    relay.wait_log("configuration reloaded", 1, WAIT);
    let log = relay.wait_log(WARNING, 1, WAIT);
    let line = log.lines().find(|l| l.contains(WARNING)).unwrap();
    let line: Value = serde_json::from_str(line).expect("JSON log line");
    assert_eq!(line["level"], "WARN", "{line}");
    let days = line["days_left"].as_i64().unwrap_or(-1);
    assert!((4..=5).contains(&days), "{line}");

    // The metric: seconds left, between 4 and 5 days (the certificate ends at midnight UTC).
    let (status, _, body) = http_get(relay.metrics.expect("metrics"), "/metrics").await;
    assert_eq!(status, 200);
    let left = sample(&body, "smtp_relay_tls_cert_expiry_seconds")
        .unwrap_or_else(|| panic!("no expiry metric in\n{body}"));
    assert!(
        (4.0 * 86_400.0..=5.0 * 86_400.0).contains(&left),
        "{left}\n{body}"
    );

    let s = status_json(&relay);
    assert_eq!(s["tls"]["expiring_soon"], true, "{s:#}");
    assert!((4..=5).contains(&s["tls"]["days_left"].as_i64().unwrap()));
    let text = status_text(&relay);
    assert!(text.contains("WARNING: expires within 14 days"), "{text}");

    // A restart with it warns at startup too.
    relay.terminate();
    relay.spawn();
    relay.wait_log(WARNING, 2, WAIT);
}
