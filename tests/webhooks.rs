//! Delivery events and signed webhooks, end to end: the real relay, a scripted upstream, and
//! a real hyper receiver that verifies every signature with its own implementation of the
//! Standard Webhooks recipe. Covers each outcome (250; 451 then 250; 550 at RCPT; expiry),
//! retries while the receiver is down, kill -9 with deliveries owed, `410 Gone`, secret
//! rotation, and SSRF refusals.

mod support;

use std::time::{Duration, Instant};

use serde_json::Value;
use support::certs::TestPki;
use support::client::Client;
use support::relay::{Relay, RelayOptions};
use support::upstream::{Script, TestUpstream, UpstreamOptions};
use support::webhook_receiver::{Hook, Receiver, verify};

const WEBHOOKS: &str = "[webhooks]\nallow_loopback = true\nretry_schedule_secs = [1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1]\ntimeout_secs = 5\n";

struct Setup {
    relay: Relay,
    up: TestUpstream,
    project: String,
    token: String,
}

async fn setup(script: Script, metrics: bool) -> Setup {
    let pki = TestPki::generate();
    let up = TestUpstream::start(UpstreamOptions::implicit(&pki).with_script(script)).await;
    let relay = Relay::start_with_upstream(
        up.port(),
        "implicit",
        &pki,
        RelayOptions {
            retry_schedule_secs: vec![1],
            extra_config: WEBHOOKS.into(),
            metrics,
            ..Default::default()
        },
    );
    let (project, token) = relay.add_project("app", &["app.test"]);
    Setup {
        relay,
        up,
        project,
        token,
    }
}

/// Adds an endpoint for every event type; returns (endpoint id, secret).
fn add_webhook(s: &Setup, url: &str) -> (String, String) {
    let v = s.relay.cli_json(&[
        "webhook",
        "add",
        &s.project,
        "--url",
        url,
        "--events",
        "accepted,relayed,deferred,failed,rate_limited",
    ]);
    let secret = v["secret"].as_str().unwrap().to_string();
    assert!(secret.starts_with("whsec_"), "{v:#}");
    (v["id"].as_str().unwrap().to_string(), secret)
}

/// Submits a message with the app's own Message-ID; returns the queue id.
async fn submit(s: &Setup, rcpts: &[&str]) -> String {
    let mut c = Client::logged_in(s.relay.starttls, &s.relay.pki, &s.project, &s.token).await;
    let body = format!(
        "From: <noreply@app.test>\r\nTo: <{}>\r\nSubject: hi\r\nMessage-ID: <order-42@app.test>\r\n\r\nhello\r\n",
        rcpts[0]
    );
    let r = c.send("noreply@app.test", rcpts, &body).await;
    assert_eq!(r.code, 250, "{r:?}");
    r.queued_id()
}

fn data(h: &Hook) -> &Value {
    &h.body["data"]
}

fn rcpts(h: &Hook) -> Vec<String> {
    data(h)["recipients"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r.as_str().unwrap().to_string())
        .collect()
}

const WAIT: Duration = Duration::from_secs(30);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn relayed_message_sends_signed_accepted_and_relayed_events() {
    let s = setup(Script::default(), true).await;
    let rx = Receiver::start(0).await;
    let (_, secret) = add_webhook(&s, &rx.url());
    let id = submit(&s, &["user@example.net"]).await;

    let accepted = rx.wait_event("message.accepted", &id, WAIT).await;
    let relayed = rx.wait_event("message.relayed", &id, WAIT).await;
    for h in [&accepted, &relayed] {
        assert!(verify(&secret, h), "bad signature: {h:#?}");
        assert_eq!(
            h.id,
            data(h)["id"].as_str().unwrap(),
            "webhook-id is the event id"
        );
        assert_eq!(data(h)["project"], s.project.as_str());
        assert_eq!(data(h)["header_message_id"], "order-42@app.test");
        assert_eq!(rcpts(h), vec!["user@example.net"]);
    }
    assert_ne!(accepted.id, relayed.id);
    assert_eq!(data(&accepted)["attempt"], 0);
    assert_eq!(data(&relayed)["attempt"], 1);
    assert_eq!(data(&relayed)["code"], 250);
    assert_eq!(data(&relayed)["upstream"], "test");
    // A tampered body does not verify.
    let mut forged = relayed.clone();
    forged.raw.push(b' ');
    assert!(!verify(&secret, &forged));

    // The events are kept with the message log.
    let v = s.relay.cli_json(&["queue", "show", &id]);
    let types: Vec<&str> = v["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["type"].as_str().unwrap())
        .collect();
    assert_eq!(types, vec!["accepted", "relayed"], "{v:#}");
    let text = String::from_utf8_lossy(&s.relay.cli(&["queue", "show", &id]).stdout).to_string();
    assert!(
        text.contains("events") && text.contains("relayed"),
        "{text}"
    );

    let (_, _, metrics) = support::ops::http_get(s.relay.metrics.unwrap(), "/metrics").await;
    let delivered = support::ops::sample(
        &metrics,
        "smtp_relay_webhook_deliveries_total{result=\"delivered\"}",
    );
    assert!(delivered.unwrap_or(0.0) >= 2.0, "{metrics}");
    assert!(
        support::ops::sample(&metrics, "smtp_relay_events_total{kind=\"relayed\"}").is_some(),
        "{metrics}"
    );
    drop(s.up);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deferred_then_relayed_and_refused_recipient_failed() {
    let script = Script::default()
        .with_rcpt("busy@example.net", "451 4.2.1 Mailbox busy, try later")
        .with_rcpt("gone@example.net", "550 5.1.1 No such user");
    let s = setup(script, false).await;
    let rx = Receiver::start(0).await;
    let (_, secret) = add_webhook(&s, &rx.url());
    let id = submit(
        &s,
        &["ok@example.net", "busy@example.net", "gone@example.net"],
    )
    .await;

    let failed = rx.wait_event("message.failed", &id, WAIT).await;
    assert!(verify(&secret, &failed));
    assert_eq!(rcpts(&failed), vec!["gone@example.net"]);
    assert_eq!(data(&failed)["code"], 550);
    assert_eq!(data(&failed)["reason"], "refused");
    assert!(data(&failed)["reply"].as_str().unwrap().contains("5.1.1"));

    let deferred = rx.wait_event("message.deferred", &id, WAIT).await;
    assert_eq!(rcpts(&deferred), vec!["busy@example.net"]);
    assert_eq!(data(&deferred)["code"], 451);
    assert!(
        data(&deferred)["next_attempt_ms"].as_u64().unwrap()
            > data(&deferred)["time_ms"].as_u64().unwrap()
    );

    // The first relayed event is for the one accepted at once.
    let first = rx.wait_event("message.relayed", &id, WAIT).await;
    assert_eq!(rcpts(&first), vec!["ok@example.net"]);
    assert_eq!(data(&first)["attempt"], 1);

    // The mailbox frees up: the retry relays the deferred one.
    s.up.set_script(Script::default().with_rcpt("gone@example.net", "550 5.1.1 No such user"));
    let second = rx
        .wait_for("second relayed", WAIT, |h| {
            h.body["type"] == "message.relayed"
                && h.body["data"]["recipients"][0] == "busy@example.net"
        })
        .await;
    assert!(verify(&secret, &second));
    assert!(data(&second)["attempt"].as_u64().unwrap() >= 2);
    s.relay.wait_state(&id, &["delivered"], WAIT);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expired_message_sends_failed_with_reason_expired() {
    let s = setup(
        Script {
            data_end: Some("451 4.3.0 Try again later".into()),
            ..Default::default()
        },
        false,
    )
    .await;
    s.relay.cli_json(&["project", "max-age", &s.project, "10"]);
    let rx = Receiver::start(0).await;
    let (_, secret) = add_webhook(&s, &rx.url());
    let id = submit(&s, &["user@example.net"]).await;
    rx.wait_event("message.deferred", &id, WAIT).await;
    let failed = rx
        .wait_event("message.failed", &id, Duration::from_secs(45))
        .await;
    assert!(verify(&secret, &failed));
    assert_eq!(data(&failed)["reason"], "expired");
    assert_eq!(
        data(&failed)["code"],
        451,
        "the upstream's last reply: {:#}",
        failed.body
    );
    assert_eq!(rcpts(&failed), vec!["user@example.net"]);
}

/// A free loopback port with nothing listening on it (yet).
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn attempts(relay: &Relay, endpoint: &str) -> Value {
    relay.cli_json(&["webhook", "show", endpoint])
}

fn wait_attempts(relay: &Relay, endpoint: &str, n: usize) -> Value {
    let deadline = Instant::now() + WAIT;
    loop {
        let v = attempts(relay, endpoint);
        if v["attempts"].as_array().unwrap().len() >= n {
            return v;
        }
        assert!(Instant::now() < deadline, "fewer than {n} attempts: {v:#}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn receiver_down_is_retried_until_delivered() {
    let s = setup(Script::default(), false).await;
    let port = free_port();
    let (endpoint, secret) = add_webhook(&s, &format!("http://127.0.0.1:{port}/hooks"));
    let id = submit(&s, &["user@example.net"]).await;
    let v = wait_attempts(&s.relay, &endpoint, 3);
    let first = &v["attempts"].as_array().unwrap()[0];
    assert!(first["status"].is_null(), "{v:#}");
    assert!(
        first["error"].as_str().unwrap().contains("connect"),
        "{v:#}"
    );
    assert!(v["pending"].as_u64().unwrap() >= 1, "{v:#}");

    let rx = Receiver::start(port).await;
    let relayed = rx.wait_event("message.relayed", &id, WAIT).await;
    assert!(verify(&secret, &relayed));
    rx.wait_event("message.accepted", &id, WAIT).await;
    let deadline = Instant::now() + WAIT;
    loop {
        let v = attempts(&s.relay, &endpoint);
        if v["pending"] == 0 {
            let ok = v["attempts"]
                .as_array()
                .unwrap()
                .iter()
                .any(|a| a["status"] == 204);
            assert!(ok, "{v:#}");
            break;
        }
        assert!(Instant::now() < deadline, "still pending: {v:#}");
        std::thread::sleep(Duration::from_millis(200));
    }
    // The text view shows the history too.
    let text =
        String::from_utf8_lossy(&s.relay.cli(&["webhook", "show", &endpoint]).stdout).to_string();
    assert!(
        text.contains("204") && text.contains("connection failed"),
        "{text}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn webhooks_owed_survive_kill9() {
    let mut s = setup(Script::default(), false).await;
    let port = free_port();
    let (endpoint, secret) = add_webhook(&s, &format!("http://127.0.0.1:{port}/hooks"));
    let id = submit(&s, &["user@example.net"]).await;
    s.relay.wait_state(&id, &["delivered"], WAIT);
    wait_attempts(&s.relay, &endpoint, 1);
    s.relay.kill9();

    let rx = Receiver::start(port).await;
    s.relay.spawn();
    let relayed = rx.wait_event("message.relayed", &id, WAIT).await;
    assert!(verify(&secret, &relayed));
    rx.wait_event("message.accepted", &id, WAIT).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gone_disables_the_endpoint() {
    let s = setup(Script::default(), false).await;
    let rx = Receiver::start(0).await;
    rx.set_status(410);
    let (endpoint, _) = add_webhook(&s, &rx.url());
    let id = submit(&s, &["user@example.net"]).await;
    rx.wait_for("any", WAIT, |_| true).await;
    s.relay.wait_state(&id, &["delivered"], WAIT);
    let deadline = Instant::now() + WAIT;
    let v = loop {
        let v = attempts(&s.relay, &endpoint);
        if v["enabled"] == false {
            break v;
        }
        assert!(Instant::now() < deadline, "still enabled: {v:#}");
        std::thread::sleep(Duration::from_millis(100));
    };
    assert!(
        v["disabled_reason"].as_str().unwrap().contains("410"),
        "{v:#}"
    );
    s.relay.wait_log("webhook endpoint disabled", 1, WAIT);
    // Nothing more is sent to it.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let before = rx.hooks().len();
    let id2 = submit(&s, &["user@example.net"]).await;
    s.relay.wait_state(&id2, &["delivered"], WAIT);
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(rx.hooks().len(), before);
    // `test` refuses a disabled endpoint; `enable` turns it back on.
    assert!(
        !s.relay
            .cli(&["webhook", "test", &endpoint])
            .status
            .success()
    );
    rx.set_status(200);
    s.relay.cli_json(&["webhook", "enable", &endpoint]);
    s.relay.cli_json(&["webhook", "test", &endpoint]);
    rx.wait_for("webhook.test", WAIT, |h| h.body["type"] == "webhook.test")
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rotated_secret_signs_with_both_during_the_overlap() {
    let s = setup(Script::default(), false).await;
    let rx = Receiver::start(0).await;
    let (endpoint, old) = add_webhook(&s, &rx.url());
    let v = s.relay.cli_json(&["webhook", "rotate-secret", &endpoint]);
    let new = v["secret"].as_str().unwrap().to_string();
    assert_ne!(new, old);
    // Secrets are shown at add and rotate only.
    let listed = s.relay.cli(&["webhook", "list", "--json"]);
    let listed = String::from_utf8_lossy(&listed.stdout).to_string();
    assert!(!listed.contains(&new) && !listed.contains(&old), "{listed}");

    s.relay.cli_json(&["webhook", "test", &endpoint]);
    let h = rx
        .wait_for("webhook.test", WAIT, |h| h.body["type"] == "webhook.test")
        .await;
    assert_eq!(h.signature.split(' ').count(), 2, "{}", h.signature);
    assert!(verify(&new, &h) && verify(&old, &h));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn internal_targets_and_plain_http_are_refused() {
    // Loopback not allowed here (the default).
    let relay = Relay::start(RelayOptions::default());
    let (project, _) = relay.add_project("app", &["app.test"]);
    for (url, why) in [
        ("http://127.0.0.1:9/x", "allow_loopback"),
        ("https://127.0.0.1:9/x", "loopback"),
        ("https://[::1]/x", "loopback"),
        ("https://10.1.2.3/x", "private"),
        ("https://192.168.0.10/x", "private"),
        ("https://169.254.169.254/latest/meta-data", "link-local"),
        ("https://[fd00::1]/x", "private"),
        ("https://localhost/x", "loopback"),
        ("http://example.com/x", "HTTPS only"),
        ("https://user:pw@example.com/x", "credentials"),
    ] {
        let out = relay.cli(&[
            "webhook", "add", &project, "--url", url, "--events", "relayed",
        ]);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{url} was accepted");
        assert!(err.contains(why), "{url}: {err}");
    }
    let out = relay.cli(&[
        "webhook",
        "add",
        &project,
        "--url",
        "https://93.184.216.34/x",
        "--events",
        "relayed,opened",
    ]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("unknown event type `opened`"));
    assert!(
        relay
            .cli_json(&["webhook", "list"])
            .as_array()
            .unwrap()
            .is_empty()
    );

    // A config mistake names its key.
    let base = std::fs::read_to_string(&relay.config_path).unwrap();
    for (bad, key) in [
        ("timeout_secs = 0", "webhooks.timeout_secs"),
        ("retry_schedule_secs = []", "webhooks.retry_schedule_secs"),
        ("disable_after_secs = 5", "webhooks.disable_after_secs"),
        ("allow_loopbak = true", "allow_loopbak"),
    ] {
        let path = relay.dir.path().join("bad.toml");
        std::fs::write(&path, format!("{base}\n[webhooks]\n{bad}\n")).unwrap();
        let out = relay.cli(&["config", "check", path.to_str().unwrap()]);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success() && err.contains(key), "{bad}: {err}");
    }
}

/// The same operations over the HTTP admin API: add (secret once), list, test, show, remove;
/// a viewer token can read but not add.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn webhooks_over_the_http_api() {
    let relay = Relay::start(RelayOptions {
        extra_config: format!("{WEBHOOKS}\n[admin_http]\naddress = \"127.0.0.1:0\"\n"),
        ..Default::default()
    });
    let (project, _) = relay.add_project("app", &["app.test"]);
    let addr = relay.listener_addr("admin_http");
    let token = |role: &str| {
        relay.cli_json(&["admin", "token", "add", "--label", role, "--role", role])["token"]
            .as_str()
            .unwrap()
            .to_string()
    };
    let (admin, viewer) = (token("admin"), token("viewer"));
    let http = relay.http_client();
    let base = format!("http://{addr}/api/v1");
    let rx = Receiver::start(0).await;
    let new =
        serde_json::json!({ "project": project, "url": rx.url(), "events": ["relayed", "failed"] });

    let r = http
        .post(format!("{base}/webhooks"))
        .bearer_auth(&viewer)
        .json(&new)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);
    let r = http
        .post(format!("{base}/webhooks"))
        .bearer_auth(&admin)
        .json(&new)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    let v: Value = r.json().await.unwrap();
    let (id, secret) = (
        v["id"].as_str().unwrap().to_string(),
        v["secret"].as_str().unwrap().to_string(),
    );

    let v: Value = http
        .get(format!("{base}/webhooks"))
        .bearer_auth(&viewer)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(v[0]["id"], id.as_str());
    assert!(v[0].get("secret").is_none(), "{v:#}");

    let r = http
        .post(format!("{base}/webhooks/{id}/test"))
        .bearer_auth(&admin)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let h = rx
        .wait_for("webhook.test", WAIT, |h| h.body["type"] == "webhook.test")
        .await;
    assert!(verify(&secret, &h));

    let r = http
        .get(format!("{base}/webhooks/wh_nope"))
        .bearer_auth(&viewer)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
    let r = http
        .delete(format!("{base}/webhooks/{id}"))
        .bearer_auth(&admin)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert!(
        relay
            .cli_json(&["webhook", "list"])
            .as_array()
            .unwrap()
            .is_empty()
    );
}

/// accept-and-delay: a message over the project's limit is accepted and held back; the app
/// hears `accepted`, then `rate_limited` with the release time, then `relayed`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn held_back_message_sends_rate_limited() {
    let s = setup(Script::default(), false).await;
    s.relay.cli_json(&[
        "project",
        "limits",
        &s.project,
        "--per-second",
        "1",
        "--burst",
        "1",
        "--mode",
        "accept-and-delay",
    ]);
    let rx = Receiver::start(0).await;
    let (_, secret) = add_webhook(&s, &rx.url());
    let first = submit(&s, &["user@example.net"]).await;
    let second = submit(&s, &["user@example.net"]).await;
    let held = rx.wait_event("message.rate_limited", &second, WAIT).await;
    assert!(verify(&secret, &held));
    assert!(
        data(&held)["next_attempt_ms"].as_u64().unwrap() > data(&held)["time_ms"].as_u64().unwrap(),
        "{:#}",
        held.body
    );
    rx.wait_event("message.relayed", &second, WAIT).await;
    assert!(
        !rx.hooks()
            .iter()
            .any(|h| h.body["type"] == "message.rate_limited"
                && h.body["data"]["message_id"] == first.as_str()),
        "the first message was within the limit"
    );
}
