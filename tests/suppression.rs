//! The suppression list, end to end: a scripted upstream refuses a recipient with `550 5.1.1`;
//! the next message to it is refused at RCPT (`550 5.1.1 Recipient suppressed…`) with a signed
//! `message.suppressed` webhook, while the other recipients — including one refused for a
//! policy reason (`5.7.1`), which names the message, not the mailbox — still go through.
//! Entries expire, are removed and added with the CLI and the HTTP API, and the send API
//! refuses suppressed recipients with Resend's 422 shape.

mod support;

use std::time::Duration;

use reqwest::StatusCode;
use serde_json::{Value, json};
use support::certs::TestPki;
use support::client::Client;
use support::ops::{http_get, sample};
use support::relay::{Relay, RelayOptions};
use support::upstream::{Script, TestUpstream, UpstreamOptions};
use support::webhook_receiver::{Receiver, verify};

const WAIT: Duration = Duration::from_secs(30);

struct Setup {
    relay: Relay,
    _up: TestUpstream,
    project: String,
    token: String,
}

async fn setup(script: Script, extra: &str) -> Setup {
    let pki = TestPki::generate();
    let up = TestUpstream::start(UpstreamOptions::implicit(&pki).with_script(script)).await;
    let relay = Relay::start_with_upstream(
        up.port(),
        "implicit",
        &pki,
        RelayOptions {
            retry_schedule_secs: vec![1],
            extra_config: format!(
                "[webhooks]\nallow_loopback = true\nretry_schedule_secs = [1]\n{extra}"
            ),
            metrics: true,
            ..Default::default()
        },
    );
    let (project, token) = relay.add_project("app", &["app.test"]);
    Setup {
        relay,
        _up: up,
        project,
        token,
    }
}

/// MAIL FROM then one RCPT; the RCPT reply.
async fn rcpt(s: &Setup, to: &str) -> support::client::Reply {
    let mut c = Client::logged_in(s.relay.starttls, &s.relay.pki, &s.project, &s.token).await;
    let r = c.cmd("MAIL FROM:<noreply@app.test>").await;
    assert_eq!(r.code, 250, "{r:?}");
    c.cmd(&format!("RCPT TO:<{to}>")).await
}

fn list(s: &Setup) -> Vec<Value> {
    s.relay
        .cli_json(&["suppression", "list", &s.project])
        .as_array()
        .cloned()
        .unwrap()
}

async fn metrics(relay: &Relay) -> String {
    http_get(relay.listener_addr("metrics"), "/metrics").await.2
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_recipient_is_refused_at_rcpt_next_time_and_only_it() {
    let script = Script::default()
        .with_rcpt("gone@example.net", "550 5.1.1 No such user")
        .with_rcpt("policy@example.net", "550 5.7.1 Rejected by policy");
    let mut s = setup(script, "").await;
    let rx = Receiver::start(0).await;
    let v = s.relay.cli_json(&[
        "webhook",
        "add",
        &s.project,
        "--url",
        &rx.url(),
        "--events",
        "failed,suppressed",
    ]);
    let secret = v["secret"].as_str().unwrap().to_string();

    let id = s
        .relay
        .submit(
            &s.project,
            &s.token,
            "noreply@app.test",
            &["ok@example.net", "Gone@Example.net", "policy@example.net"],
        )
        .await;
    s.relay.wait_state(&id, &["delivered"], WAIT);

    // Only the recipient whose refusal named the mailbox is on the list.
    let entries = list(&s);
    assert_eq!(entries.len(), 1, "{entries:#?}");
    let e = &entries[0];
    assert_eq!(e["address"], "gone@example.net");
    assert_eq!(e["source"], "upstream");
    assert_eq!(e["message_id"], id.as_str());
    assert!(
        e["reason"]
            .as_str()
            .unwrap()
            .contains("550 5.1.1 No such user"),
        "{e:#}"
    );
    let day30 = 30 * 86_400_000u64;
    assert_eq!(
        e["expires_ms"].as_u64().unwrap() - e["added_ms"].as_u64().unwrap(),
        day30,
        "default lifetime is 30 days"
    );

    // The next message: refused at RCPT for that recipient only, with the documented reply.
    let r = rcpt(&s, "gone@example.net").await;
    assert_eq!(r.code, 550, "{r:?}");
    let expected = format!(
        "5.1.1 Recipient suppressed: 550 5.1.1 No such user; remove with smtp-relay suppression remove {} gone@example.net",
        s.project
    );
    assert!(r.text.contains(&expected), "{r:?}");
    assert_eq!(rcpt(&s, "ok@example.net").await.code, 250);
    assert_eq!(rcpt(&s, "policy@example.net").await.code, 250);

    // …and a signed `suppressed` event says so.
    let hook = rx
        .wait_for("message.suppressed", WAIT, |h| {
            h.body["type"] == "message.suppressed"
        })
        .await;
    assert!(verify(&secret, &hook));
    assert_eq!(hook.body["data"]["recipients"], json!(["gone@example.net"]));
    assert_eq!(hook.body["data"]["project"], s.project.as_str());
    assert_eq!(hook.body["data"]["code"], 550);
    assert_eq!(hook.body["data"]["message_id"], "");

    let m = metrics(&s.relay).await;
    assert_eq!(
        sample(
            &m,
            "smtp_relay_suppressions_added_total{source=\"upstream\"}"
        ),
        Some(1.0),
        "{m}"
    );
    let series = format!(
        "smtp_relay_suppressed_recipients_total{{project=\"{}\"}}",
        s.project
    );
    assert_eq!(sample(&m, &series), Some(1.0), "{m}");
    let series = format!(
        "smtp_relay_rejections_total{{project=\"{}\",reason=\"suppressed\"}}",
        s.project
    );
    assert_eq!(sample(&m, &series), Some(1.0), "{m}");

    // Written with the outcome's commit: a kill -9 does not lose it.
    s.relay.kill9();
    s.relay.spawn();
    assert_eq!(list(&s).len(), 1);
    assert_eq!(rcpt(&s, "gone@example.net").await.code, 550);

    // Removal lets mail through again.
    let out = s
        .relay
        .cli(&["suppression", "remove", &s.project, "gone@example.net"]);
    assert!(out.status.success(), "{out:?}");
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("gone@example.net removed"),
        "{out:?}"
    );
    assert_eq!(rcpt(&s, "gone@example.net").await.code, 250);
    assert!(list(&s).is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cli_add_list_remove_and_errors() {
    let s = setup(Script::default(), "").await;
    let out = s.relay.cli(&[
        "suppression",
        "add",
        &s.project,
        "complainer@example.net",
        "--reason",
        "asked to stop",
    ]);
    assert!(out.status.success(), "{out:?}");
    let out = s.relay.cli(&["suppression", "list", &s.project]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("complainer@example.net")
            && text.contains("admin")
            && text.contains("asked to stop"),
        "{text}"
    );
    let r = rcpt(&s, "COMPLAINER@example.net").await;
    assert_eq!(r.code, 550, "{r:?}");
    assert!(
        r.text.contains("Recipient suppressed: asked to stop"),
        "{r:?}"
    );

    // Mistakes are named.
    let out = s
        .relay
        .cli(&["suppression", "remove", &s.project, "nobody@example.net"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("nobody@example.net is not on the suppression list"),
        "{err}"
    );
    let out = s
        .relay
        .cli(&["suppression", "add", &s.project, "not-an-address"]);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("invalid address"),
        "{out:?}"
    );
    let out = s.relay.cli(&["suppression", "list", "prj_nope"]);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("no project prj_nope"),
        "{out:?}"
    );

    s.relay.cli_json(&[
        "suppression",
        "remove",
        &s.project,
        "complainer@example.net",
    ]);
    assert_eq!(rcpt(&s, "complainer@example.net").await.code, 250);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn entries_expire() {
    let s = setup(Script::default(), "[suppression]\nexpire_secs = 2\n").await;
    s.relay
        .cli_json(&["suppression", "add", &s.project, "later@example.net"]);
    assert_eq!(rcpt(&s, "later@example.net").await.code, 550);
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert_eq!(rcpt(&s, "later@example.net").await.code, 250);
    assert!(list(&s).is_empty());
}

#[test]
fn lifetime_is_validated() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.toml");
    // The documented example config (the built-in default) with one bad table appended.
    let base = std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("config/smtp-relay.toml"),
    )
    .unwrap();
    for (extra, key) in [
        (
            "[suppression]\nexpire_secs = 0\n",
            "suppression.expire_secs",
        ),
        ("[retention]\nmax_age_secs = 0\n", "retention.max_age_secs"),
        (
            "[retention]\nprune_interval_secs = 0\n",
            "retention.prune_interval_secs",
        ),
    ] {
        std::fs::write(&path, format!("{base}\n{extra}")).unwrap();
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_smtp-relay"))
            .args(["config", "check", path.to_str().unwrap()])
            .output()
            .unwrap();
        assert!(!out.status.success(), "{extra} accepted");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(key), "{extra}: {err}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn send_api_and_admin_api() {
    let s = setup(
        Script::default(),
        "[send_api]\naddress = \"127.0.0.1:0\"\n[admin_http]\naddress = \"127.0.0.1:0\"\n",
    )
    .await;
    let http = s.relay.http_client();
    let admin = s
        .relay
        .cli_json(&["admin", "token", "add", "--label", "t", "--role", "admin"]);
    let admin_token = admin["token"].as_str().unwrap().to_string();
    let api = format!("http://{}/api/v1", s.relay.listener_addr("admin_http"));

    // Add through the admin API.
    let r = http
        .post(format!("{api}/projects/{}/suppressions", s.project))
        .bearer_auth(&admin_token)
        .json(&json!({"address": "api@example.net", "reason": "hard bounce elsewhere"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::CREATED);
    let r = http
        .get(format!("{api}/projects/{}/suppressions", s.project))
        .bearer_auth(&admin_token)
        .send()
        .await
        .unwrap();
    let v: Value = r.json().await.unwrap();
    assert_eq!(v[0]["address"], "api@example.net", "{v:#}");

    // The send API refuses the whole request, in Resend's error shape.
    let send = format!("http://{}/emails", s.relay.listener_addr("send_api"));
    let r = http
        .post(&send)
        .bearer_auth(&s.token)
        .json(&json!({
            "from": "noreply@app.test",
            "to": ["ok@example.net", "api@example.net"],
            "subject": "hi",
            "text": "hello",
        }))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::UNPROCESSABLE_ENTITY);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["statusCode"], 422);
    assert_eq!(v["name"], "validation_error");
    assert!(
        v["message"]
            .as_str()
            .unwrap()
            .starts_with("Recipient suppressed: hard bounce elsewhere; remove with"),
        "{v:#}"
    );

    // A batch is checked whole before anything is queued.
    let r = http
        .post(format!("{send}/batch"))
        .bearer_auth(&s.token)
        .json(&json!([
            {"from": "noreply@app.test", "to": ["ok@example.net"], "subject": "a", "text": "a"},
            {"from": "noreply@app.test", "to": ["API@example.net"], "subject": "b", "text": "b"},
        ]))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::UNPROCESSABLE_ENTITY);
    let v: Value = r.json().await.unwrap();
    assert!(
        v["message"]
            .as_str()
            .unwrap()
            .starts_with("emails[1]: Recipient suppressed"),
        "{v:#}"
    );
    let log = s.relay.cli_json(&["log", "--project", &s.project]);
    assert_eq!(log.as_array().unwrap().len(), 0, "nothing queued: {log:#}");

    // Removed through the API: the same request is sent.
    let r = http
        .delete(format!(
            "{api}/projects/{}/suppressions/api@example.net",
            s.project
        ))
        .bearer_auth(&admin_token)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let r = http
        .post(&send)
        .bearer_auth(&s.token)
        .json(&json!({
            "from": "noreply@app.test",
            "to": ["ok@example.net", "api@example.net"],
            "subject": "hi",
            "text": "hello",
        }))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK, "{:?}", r.text().await);
}
