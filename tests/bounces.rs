//! Bounce messages (RFC 3464 DSNs), end to end: with `project bounces <id> on`, a message the
//! upstream refuses for good (or that expires) sends a `multipart/report;
//! report-type=delivery-status` to its envelope sender through the same route, checked with
//! Python's `email` package; off by default; never for an automatic message; and a bounce that
//! fails is not bounced again (its envelope sender is null).

mod support;

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use serde_json::Value;
use support::certs::TestPki;
use support::client::Client;
use support::dkim::{Dns, keygen, verify};
use support::relay::{Relay, RelayOptions};
use support::upstream::{ReceivedMessage, Script, TestUpstream, UpstreamOptions};

const WAIT: Duration = Duration::from_secs(30);

struct Setup {
    relay: Relay,
    up: TestUpstream,
    project: String,
    token: String,
}

async fn setup(script: Script) -> Setup {
    let pki = TestPki::generate();
    let up = TestUpstream::start(UpstreamOptions::implicit(&pki).with_script(script)).await;
    let relay = Relay::start_with_upstream(
        up.port(),
        "implicit",
        &pki,
        RelayOptions {
            retry_schedule_secs: vec![1],
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

fn refusing() -> Script {
    Script::default().with_rcpt("gone@example.net", "550 5.1.1 No such user")
}

/// Submits a message to `rcpt` with the app's Message-ID and `extra` headers; the queue id.
async fn submit(s: &Setup, rcpt: &str, extra: &str) -> String {
    let mut c = Client::logged_in(s.relay.starttls, &s.relay.pki, &s.project, &s.token).await;
    let body = format!(
        "From: <noreply@app.test>\r\nTo: <{rcpt}>\r\nSubject: Your code\r\nMessage-ID: <order-42@app.test>\r\n{extra}\r\nYour code is 4711\r\n"
    );
    let r = c.send("noreply@app.test", &[rcpt], &body).await;
    assert_eq!(r.code, 250, "{r:?}");
    r.queued_id()
}

/// Runs tests/support/check_dsn.py on `dsn`; its JSON summary.
fn python_check(dsn: &ReceivedMessage, rcpt: &str, diagnostic: &str) -> Value {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/support/check_dsn.py");
    let mut child = Command::new("python3")
        .arg(&script)
        .args([rcpt, diagnostic, "order-42@app.test"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("python3 must be installed (scripts/test-packages.txt: python3)");
    use std::io::Write;
    child.stdin.take().unwrap().write_all(&dsn.data).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "Python's email package disagrees: {}\n{}",
        String::from_utf8_lossy(&out.stderr),
        dsn.text()
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

fn bounces_on(s: &Setup) {
    let v = s.relay.cli_json(&["project", "bounces", &s.project, "on"]);
    assert_eq!(v["bounces"], true, "{v:#}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_message_bounces_a_dsn_python_parses() {
    let s = setup(refusing()).await;
    // Off by default.
    let v = s.relay.cli_json(&["project", "bounces", &s.project]);
    assert_eq!(v["bounces"], false, "{v:#}");
    bounces_on(&s);
    // The project signs its mail: the bounce (From mailer-daemon@app.test) is signed too.
    let dns = Dns::default();
    dns.publish(&keygen(&s.relay, "app.test", "s1", "ed25519", true));
    let id = submit(&s, "gone@example.net", "").await;
    s.relay.wait_state(&id, &["failed"], WAIT);

    let got = s.up.wait_for(1, WAIT).await;
    let dsn = &got[0];
    assert_eq!(dsn.mail_from, "", "a bounce has the null sender");
    assert_eq!(dsn.rcpt_to, vec!["noreply@app.test"]);
    let summary = python_check(dsn, "gone@example.net", "550 5.1.1 No such user");
    assert_eq!(summary["status"], "5.1.1", "{summary:#}");
    assert_eq!(summary["recipients"], 1);
    let signatures = verify(&dns, &dsn.data).await;
    assert_eq!(signatures.len(), 1, "{signatures:?}");
    assert!(signatures[0].pass(), "{signatures:?}\n{}", dsn.text());
    assert_eq!(signatures[0].domain, "app.test");
    assert!(dsn.text().starts_with("DKIM-Signature: "), "{}", dsn.text());
    assert!(
        dsn.text().contains("Received: from relay.test"),
        "{}",
        dsn.text()
    );
    assert!(
        summary["from"]
            .as_str()
            .unwrap()
            .contains("mailer-daemon@app.test"),
        "{summary:#}"
    );
    // It was queued like any message: in the log, with its own id, delivered.
    let log = s.relay.cli_json(&["log", "--project", &s.project]);
    let dsn_env = log
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["mail_from"] == "")
        .unwrap_or_else(|| panic!("no bounce in the log: {log:#}"));
    assert_eq!(dsn_env["state"], "delivered", "{dsn_env:#}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expired_message_bounces_with_the_last_reply() {
    let s = setup(Script {
        data_end: Some("451 4.3.0 Try again later".into()),
        ..Default::default()
    })
    .await;
    bounces_on(&s);
    s.relay.cli_json(&["project", "max-age", &s.project, "10"]);
    let id = submit(&s, "slow@example.net", "").await;
    s.relay
        .wait_state(&id, &["expired"], Duration::from_secs(45));
    // The bounce is deferred by the same upstream (451 after DATA) — it lands in `rejected`.
    s.relay.wait_log("bounce queued", 1, WAIT);
    let deadline = std::time::Instant::now() + WAIT;
    let dsn = loop {
        if let Some(m) = s.up.rejected().into_iter().find(|m| m.mail_from.is_empty()) {
            break m;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no bounce reached the upstream"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let summary = python_check(&dsn, "slow@example.net", "451 4.3.0 Try again later");
    assert_eq!(
        summary["status"], "4.4.7",
        "delivery time expired: {summary:#}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_bounce_when_off_or_for_an_automatic_message() {
    // Two refused mailboxes: the first is suppressed after its refusal.
    let s = setup(refusing().with_rcpt("gone2@example.net", "550 5.1.1 No such user")).await;
    let id = submit(&s, "gone@example.net", "").await;
    s.relay.wait_state(&id, &["failed"], WAIT);

    bounces_on(&s);
    let auto = submit(&s, "gone2@example.net", "Auto-Submitted: auto-replied\r\n").await;
    s.relay.wait_state(&auto, &["failed"], WAIT);

    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(s.up.messages().is_empty(), "{:?}", s.up.messages());
    assert!(!s.relay.server_log().contains("bounce queued"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_bounce_is_not_bounced() {
    // The sender's own mailbox refuses too: the bounce fails, and nothing bounces it.
    let s = setup(refusing().with_rcpt("noreply@app.test", "550 5.1.1 No such sender")).await;
    bounces_on(&s);
    let id = submit(&s, "gone@example.net", "").await;
    s.relay.wait_state(&id, &["failed"], WAIT);
    s.relay.wait_log("bounce queued", 1, WAIT);
    let log = s.relay.cli_json(&["log", "--project", &s.project]);
    let dsn_id = log
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["mail_from"] == "")
        .and_then(|e| e["id"].as_str())
        .unwrap_or_else(|| panic!("no bounce in the log: {log:#}"))
        .to_string();
    s.relay.wait_state(&dsn_id, &["failed"], WAIT);
    assert!(
        s.up.commands().iter().any(|c| c.contains(" MAIL FROM:<>")),
        "{:?}",
        s.up.commands()
    );
    tokio::time::sleep(Duration::from_secs(3)).await;
    let n = s
        .relay
        .server_log()
        .lines()
        .filter(|l| l.contains("bounce queued"))
        .count();
    assert_eq!(n, 1, "a bounce of a bounce was queued");
}
