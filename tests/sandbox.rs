//! Sandbox projects and simulated recipients against the real binary. A sandbox project's
//! mail — over SMTP and the send API — goes through the whole pipeline (branded, DKIM-signed)
//! and is captured, never reaching the upstream; the CLI and the admin API list it, show it,
//! download it as .eml, and release it one message at a time to its real recipients (the
//! upstream then gets exactly the captured bytes); the cap keeps the newest N. Simulated
//! recipients (`delivered@`, `bounced@`, `deferred@` under `smtp-relay.test`) get their
//! outcome in the message log and the delivery events without any upstream being contacted,
//! in live and sandbox mode alike.

mod support;

use std::time::Duration;

use reqwest::StatusCode;
use serde_json::{Value, json};
use support::certs::TestPki;
use support::client::{Client, plain_message};
use support::dkim::{Dns, keygen, verify};
use support::relay::{Relay, RelayOptions, smtp_upstream};
use support::upstream::{TestUpstream, UpstreamOptions};

struct Setup {
    relay: Relay,
    up: TestUpstream,
    _tmp: tempfile::TempDir,
}

async fn setup(extra: &str) -> Setup {
    let pki = TestPki::generate();
    let up = TestUpstream::start(UpstreamOptions::implicit(&pki)).await;
    let tmp = tempfile::tempdir().unwrap();
    let files = pki.write_to(tmp.path());
    let relay = Relay::start(RelayOptions {
        upstreams: Some(smtp_upstream(up.port(), "implicit", &files.ca, None)),
        extra_config: format!(
            "[send_api]\naddress = \"127.0.0.1:0\"\n\n[admin_http]\naddress = \"127.0.0.1:0\"\n\n{extra}"
        ),
        ..Default::default()
    });
    Setup {
        relay,
        up,
        _tmp: tmp,
    }
}

async fn send(relay: &Relay, project: &str, token: &str, to: &[&str], subject: &str) -> String {
    let mut c = Client::logged_in(relay.starttls, &relay.pki, project, token).await;
    let r = c
        .send(
            "noreply@app.test",
            to,
            &plain_message("noreply@app.test", to[0], subject, "Your code is 4711\r\n"),
        )
        .await;
    assert_eq!(r.code, 250, "{r:?}");
    r.queued_id()
}

/// An admin API call with a bearer admin token; the body as JSON, or as text when it is not.
async fn admin_api(
    relay: &Relay,
    token: &str,
    method: reqwest::Method,
    path: &str,
    body: Option<Value>,
) -> (StatusCode, Option<String>, Vec<u8>) {
    let mut req = relay
        .http_client()
        .request(
            method,
            format!("http://{}{path}", relay.listener_addr("admin_http")),
        )
        .bearer_auth(token);
    if let Some(b) = body {
        req = req.json(&b);
    }
    let resp = req.send().await.unwrap();
    let status = resp.status();
    let ct = resp
        .headers()
        .get("content-type")
        .map(|v| v.to_str().unwrap().to_string());
    (status, ct, resp.bytes().await.unwrap().to_vec())
}

fn json_of(b: &[u8]) -> Value {
    serde_json::from_slice(b).unwrap_or_else(|_| panic!("not JSON: {}", String::from_utf8_lossy(b)))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sandbox_captures_signed_branded_mail_and_releases_it_one_by_one() {
    let s = setup("").await;
    let relay = &s.relay;
    let (project, token) = relay.add_project("staging", &["app.test"]);
    let record = keygen(relay, "app.test", "s1", "rsa", true);
    let dns = Dns::default();
    dns.publish(&record);
    relay.cli_json(&[
        "project",
        "branding",
        &project,
        "--display-name",
        "Acme Brand",
    ]);
    let v = relay.cli_json(&["project", "mode", &project, "sandbox"]);
    assert_eq!(v["mode"], "sandbox");
    assert_eq!(
        relay.cli_json(&["project", "show", &project])["mode"],
        "sandbox"
    );

    // SMTP and the send API: both captured.
    let smtp_id = send(relay, &project, &token, &["alice@example.net"], "Welcome").await;
    let resp = relay
        .http_client()
        .post(format!("http://{}/emails", relay.listener_addr("send_api")))
        .bearer_auth(&token)
        .json(&json!({
            "from": "App <noreply@app.test>",
            "to": ["bob@example.net"],
            "subject": "Invoice",
            "html": "<p>Your invoice</p>",
        }))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let http_id = resp.json::<Value>().await.unwrap()["id"]
        .as_str()
        .unwrap()
        .to_string();

    let list = relay.cli_json(&["sandbox", "list", &project]);
    assert_eq!(list["count"], 2, "{list:#}");
    let ids: Vec<&str> = list["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["id"].as_str().unwrap())
        .collect();
    assert_eq!(
        ids,
        vec![http_id.as_str(), smtp_id.as_str()],
        "newest first"
    );
    assert_eq!(list["messages"][1]["subject"], "Welcome");
    assert_eq!(
        list["messages"][1]["recipients"],
        json!(["alice@example.net"])
    );
    // Not in the queue, and nothing reached the upstream.
    assert!(relay.cli(&["queue", "show", &smtp_id]).status.code() != Some(0));
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(
        s.up.connections(),
        0,
        "a sandbox project's mail never leaves"
    );

    // The CLI writes the .eml: signed (verifies) and branded, as it would have left.
    let eml_path = relay.dir.path().join("captured.eml");
    let out = relay.cli(&[
        "sandbox",
        "show",
        &smtp_id,
        "--eml",
        eml_path.to_str().unwrap(),
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let eml = std::fs::read(&eml_path).unwrap();
    let results = verify(&dns, &eml).await;
    assert_eq!(results.len(), 1, "{results:?}");
    assert!(results[0].pass(), "{:?}", results[0]);
    let text = String::from_utf8_lossy(&eml).to_string();
    assert!(text.contains("Acme Brand"), "branded: {text}");
    assert!(text.contains(&format!("id {smtp_id}")), "{text}");

    // The API: list, show, download the same bytes.
    let admin =
        relay.cli_json(&["admin", "token", "add", "--label", "ops", "--role", "admin"])["token"]
            .as_str()
            .unwrap()
            .to_string();
    let (st, _, b) = admin_api(
        relay,
        &admin,
        reqwest::Method::GET,
        &format!("/api/v1/projects/{project}/sandbox"),
        None,
    )
    .await;
    assert_eq!(st, StatusCode::OK);
    assert_eq!(json_of(&b)["count"], 2);
    let (st, ct, b) = admin_api(
        relay,
        &admin,
        reqwest::Method::GET,
        &format!("/api/v1/sandbox/{smtp_id}/eml"),
        None,
    )
    .await;
    assert_eq!(st, StatusCode::OK);
    assert_eq!(ct.as_deref(), Some("message/rfc822"));
    assert_eq!(b, eml, "the download is the captured message");
    let (st, _, b) = admin_api(
        relay,
        &admin,
        reqwest::Method::GET,
        "/api/v1/sandbox/000000000000000000000000",
        None,
    )
    .await;
    assert_eq!(st, StatusCode::NOT_FOUND, "{}", String::from_utf8_lossy(&b));

    // Release one (API): it reaches its real recipient, byte for byte; the other stays.
    let (st, _, b) = admin_api(
        relay,
        &admin,
        reqwest::Method::POST,
        &format!("/api/v1/sandbox/{smtp_id}/release"),
        None,
    )
    .await;
    assert_eq!(st, StatusCode::OK, "{}", String::from_utf8_lossy(&b));
    let got = s.up.wait_for(1, Duration::from_secs(30)).await;
    assert_eq!(got[0].rcpt_to, vec!["alice@example.net".to_string()]);
    assert_eq!(got[0].data, eml);
    relay.wait_state(&smtp_id, &["delivered"], Duration::from_secs(20));
    let list = relay.cli_json(&["sandbox", "list", &project]);
    assert_eq!(list["count"], 1);
    assert_eq!(list["messages"][0]["id"], http_id.as_str());
    // Release the other with the CLI.
    let out = relay.cli(&["sandbox", "release", &http_id]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let got = s.up.wait_for(2, Duration::from_secs(30)).await;
    assert_eq!(got[1].rcpt_to, vec!["bob@example.net".to_string()]);
    assert_eq!(relay.cli_json(&["sandbox", "list", &project])["count"], 0);
    // Released twice: it is gone from the sandbox.
    assert!(
        !relay
            .cli(&["sandbox", "release", &http_id])
            .status
            .success()
    );

    // Back to live: mail is sent again.
    let (st, _, b) = admin_api(
        relay,
        &admin,
        reqwest::Method::PUT,
        &format!("/api/v1/projects/{project}/mode"),
        Some(json!({"mode": "live"})),
    )
    .await;
    assert_eq!(st, StatusCode::OK);
    assert_eq!(json_of(&b)["mode"], "live");
    send(relay, &project, &token, &["carol@example.net"], "Live").await;
    let got = s.up.wait_for(3, Duration::from_secs(30)).await;
    assert_eq!(got[2].rcpt_to, vec!["carol@example.net".to_string()]);
    assert_eq!(relay.cli_json(&["sandbox", "list", &project])["count"], 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sandbox_keeps_the_newest_n_and_clears() {
    let s = setup("[sandbox]\nmax_messages = 3\n").await;
    let relay = &s.relay;
    let (project, token) = relay.add_project("staging", &["app.test"]);
    relay.cli_json(&["project", "mode", &project, "sandbox"]);
    let mut ids = Vec::new();
    for i in 0..5 {
        ids.push(
            send(
                relay,
                &project,
                &token,
                &["alice@example.net"],
                &format!("n{i}"),
            )
            .await,
        );
    }
    let list = relay.cli_json(&["sandbox", "list", &project]);
    assert_eq!(list["count"], 3, "{list:#}");
    let kept: Vec<&str> = list["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["id"].as_str().unwrap())
        .collect();
    assert_eq!(
        kept,
        vec![ids[4].as_str(), ids[3].as_str(), ids[2].as_str()]
    );
    // The oldest are gone.
    assert!(!relay.cli(&["sandbox", "show", &ids[0]]).status.success());
    // Survives a restart (captured mail is durable before the 250).
    let mut relay = s.relay;
    relay.kill9();
    relay.spawn();
    assert_eq!(relay.cli_json(&["sandbox", "list", &project])["count"], 3);
    let v = relay.cli_json(&["sandbox", "clear", &project]);
    assert_eq!(v["removed"], 3);
    assert_eq!(relay.cli_json(&["sandbox", "list", &project])["count"], 0);
    assert_eq!(s.up.connections(), 0);
    // Bad values name their key.
    let text = std::fs::read_to_string(&relay.config_path).unwrap();
    for (bad, key) in [
        (
            text.replace("max_messages = 3", "max_messages = 0"),
            "max_messages",
        ),
        (
            format!("{text}\n[idempotency]\nwindow_secs = 0\n"),
            "window_secs",
        ),
    ] {
        let path = relay.dir.path().join("bad.toml");
        std::fs::write(&path, bad).unwrap();
        let out = std::process::Command::new(support::relay::BIN)
            .args(["--config", path.to_str().unwrap(), "config", "check"])
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success() && err.contains(key), "{key}: {err}");
    }
}

fn event_types(v: &Value) -> Vec<String> {
    v["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["type"].as_str().unwrap().to_string())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn simulated_recipients_get_their_outcome_without_an_upstream() {
    let s = setup("").await;
    let relay = &s.relay;
    let (project, token) = relay.add_project("app", &["app.test"]);

    let delivered = send(
        relay,
        &project,
        &token,
        &["delivered@app.smtp-relay.test"],
        "d",
    )
    .await;
    let v = relay.wait_state(&delivered, &["delivered"], Duration::from_secs(20));
    assert_eq!(v["upstream"], "simulated", "{v:#}");
    assert_eq!(event_types(&v), vec!["accepted", "relayed"], "{v:#}");
    assert_eq!(v["events"][1]["upstream"], "simulated");
    assert_eq!(v["events"][1]["code"], 250);

    let bounced = send(relay, &project, &token, &["bounced@x.smtp-relay.test"], "b").await;
    let v = relay.wait_state(&bounced, &["failed"], Duration::from_secs(20));
    assert_eq!(event_types(&v), vec!["accepted", "failed"], "{v:#}");
    assert_eq!(v["events"][1]["reason"], "refused");
    assert_eq!(v["events"][1]["code"], 550);
    assert!(
        v["recipients"][0]["reply"]
            .as_str()
            .unwrap()
            .starts_with("550 5.1.1")
    );

    let deferred = send(relay, &project, &token, &["deferred@smtp-relay.test"], "t").await;
    let v = relay.wait_state(&deferred, &["deferred"], Duration::from_secs(20));
    let types = event_types(&v);
    assert_eq!(types[..2], ["accepted", "deferred"], "{v:#}");
    assert_eq!(v["events"][1]["code"], 451);
    assert!(v["events"][1]["next_attempt_ms"].as_u64().is_some());

    assert_eq!(
        s.up.connections(),
        0,
        "no upstream contacted for simulated recipients"
    );

    // Mixed: the real recipient goes to the upstream, alone.
    let mixed = send(
        relay,
        &project,
        &token,
        &["delivered@app.smtp-relay.test", "alice@example.net"],
        "m",
    )
    .await;
    let got = s.up.wait_for(1, Duration::from_secs(30)).await;
    assert_eq!(got[0].rcpt_to, vec!["alice@example.net".to_string()]);
    let v = relay.wait_state(&mixed, &["delivered"], Duration::from_secs(20));
    assert!(
        v["recipients"]
            .as_array()
            .unwrap()
            .iter()
            .all(|r| r["state"] == "delivered"),
        "{v:#}"
    );

    // Sandbox mode: simulated-only mail is not captured, it gets its outcome.
    relay.cli_json(&["project", "mode", &project, "sandbox"]);
    let sim = send(
        relay,
        &project,
        &token,
        &["bounced@app.smtp-relay.test"],
        "s",
    )
    .await;
    let v = relay.wait_state(&sim, &["failed"], Duration::from_secs(20));
    assert_eq!(v["upstream"], "simulated");
    assert_eq!(relay.cli_json(&["sandbox", "list", &project])["count"], 0);
    assert_eq!(
        s.up.messages().len(),
        1,
        "still only the mixed message's real recipient"
    );
}

/// A capture over 256 KiB is kept in a file of its own, not in the database; show, release and
/// clear work on it the same, and its file goes with it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_captures_are_files_and_release_byte_for_byte() {
    let s = setup("").await;
    let relay = &s.relay;
    let (project, token) = relay.add_project("staging", &["app.test"]);
    relay.cli_json(&["project", "mode", &project, "sandbox"]);
    let line = "0123456789abcdefghijklmnopqrstuvwxyz0123456789abcdefghijklmnopqrstuvwxyz\r\n";
    let body = line.repeat(400 * 1024 / line.len());
    let mut ids = Vec::new();
    for to in ["alice@example.net", "bob@example.net"] {
        let mut c = Client::logged_in(relay.starttls, &relay.pki, &project, &token).await;
        let r = c
            .send(
                "noreply@app.test",
                &[to],
                &plain_message("noreply@app.test", to, "Big", &body),
            )
            .await;
        assert_eq!(r.code, 250, "{r:?}");
        ids.push(r.queued_id());
    }
    let files = relay.state_dir().join("sandbox");
    for id in &ids {
        assert!(files.join(id).is_file(), "{id} is a file");
    }
    let eml_path = relay.dir.path().join("big.eml");
    let out = relay.cli(&[
        "sandbox",
        "show",
        &ids[0],
        "--eml",
        eml_path.to_str().unwrap(),
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let eml = std::fs::read(&eml_path).unwrap();
    assert!(eml.len() > 400 * 1000 && eml.ends_with(body.as_bytes()));

    let out = relay.cli(&["sandbox", "release", &ids[0]]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let got = s.up.wait_for(1, Duration::from_secs(30)).await;
    assert_eq!(got[0].data, eml, "released byte for byte");
    assert!(
        !files.join(&ids[0]).exists(),
        "a released capture's file goes"
    );
    assert_eq!(
        relay.cli_json(&["sandbox", "clear", &project])["removed"],
        1
    );
    assert!(
        !files.join(&ids[1]).exists(),
        "a cleared capture's file goes"
    );
}
