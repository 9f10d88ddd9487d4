//! The HTTP send API (Resend-compatible) over real HTTP against the real binary: a full
//! Resend-shaped email arrives at the test upstream built cleanly (Python's email package and
//! mail-parser), branded and DKIM-signed, with bcc in the envelope only; a batch; and every
//! error in Resend's shape and status — 401/403 for keys, 422 for validation, 403 for a
//! foreign sender domain, 413 for size, 429 with `retry-after` for rate limits — with nothing
//! queued for any of them.

mod support;

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use base64::Engine;
use mail_parser::{MessageParser, MimeHeaders};
use reqwest::StatusCode;
use serde_json::{Value, json};
use support::certs::TestPki;
use support::dkim::{Dns, keygen, verify};
use support::relay::{Relay, RelayOptions, smtp_upstream};
use support::upstream::{TestUpstream, UpstreamOptions, data_problems};

const SEND_API: &str = "[send_api]\naddress = \"127.0.0.1:0\"\n";

struct Api {
    base: String,
    http: reqwest::Client,
}

impl Api {
    fn new(relay: &Relay) -> Api {
        Api::with_scheme(relay, "http")
    }

    fn with_scheme(relay: &Relay, scheme: &str) -> Api {
        Api {
            base: format!("{scheme}://{}", relay.listener_addr("send_api")),
            http: relay.http_client(),
        }
    }

    /// POSTs `body` (raw bytes) to `path` with `auth` as the Authorization header.
    async fn post_raw(
        &self,
        auth: Option<&str>,
        path: &str,
        body: Vec<u8>,
    ) -> (StatusCode, Option<String>, Value) {
        let mut req = self
            .http
            .post(format!("{}{path}", self.base))
            .header("content-type", "application/json")
            .body(body);
        if let Some(a) = auth {
            req = req.header("authorization", a);
        }
        let resp = req.send().await.unwrap();
        let status = resp.status();
        let retry = resp
            .headers()
            .get("retry-after")
            .map(|v| v.to_str().unwrap().to_string());
        let text = resp.text().await.unwrap();
        let v = serde_json::from_str(&text).unwrap_or_else(|_| panic!("not JSON: {text:?}"));
        (status, retry, v)
    }

    async fn post(&self, token: &str, path: &str, body: &Value) -> (StatusCode, Value) {
        let (s, _, v) = self
            .post_raw(
                Some(&format!("Bearer {token}")),
                path,
                body.to_string().into_bytes(),
            )
            .await;
        (s, v)
    }
}

/// Resend's error shape with this status and name.
fn assert_error(got: &(StatusCode, Value), status: u16, name: &str) {
    let (s, v) = got;
    assert_eq!(s.as_u16(), status, "{v:#}");
    assert_eq!(v["statusCode"], status, "{v:#}");
    assert_eq!(v["name"], name, "{v:#}");
    assert!(
        v["message"].as_str().is_some_and(|m| !m.is_empty()),
        "{v:#}"
    );
}

fn queued(relay: &Relay) -> usize {
    relay
        .cli_json(&["log", "--limit", "1000"])
        .as_array()
        .unwrap()
        .len()
}

const PDF: &[u8] = b"%PDF-1.4\n%\xe2\xe3\xcf\xd3\nnot really a pdf\n\x00\x01\x02\xff";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resend_shaped_email_arrives_built_cleanly_branded_and_signed() {
    let pki = TestPki::generate();
    let up = TestUpstream::start(UpstreamOptions::implicit(&pki)).await;
    let tmp = tempfile::tempdir().unwrap();
    let files = pki.write_to(tmp.path());
    let relay = Relay::start(RelayOptions {
        upstreams: Some(smtp_upstream(up.port(), "implicit", &files.ca, None)),
        extra_config: SEND_API.into(),
        ..Default::default()
    });
    let (id, token) = relay.add_project("app", &["app.test"]);
    let record = keygen(&relay, "app.test", "s1", "rsa", true);
    let dns = Dns::default();
    dns.publish(&record);
    relay.cli_json(&["project", "branding", &id, "--display-name", "Acme Brand"]);
    let api = Api::new(&relay);

    let pdf64 = base64::engine::general_purpose::STANDARD.encode(PDF);
    let subject = "Your code — 4711 ✓";
    let (status, v) = api
        .post(
            &token,
            "/emails",
            &json!({
                "from": "Acme Team <noreply@app.test>",
                "to": ["alice@example.net", "Bob <bob@example.net>"],
                "cc": "carol@example.net",
                "bcc": ["dave@example.net"],
                "reply_to": "support@app.test",
                "subject": subject,
                "text": "Your code is 4711.\n.leading dot stays\n",
                "html": "<html><body><p>Your code is <b>4711</b>.</p></body></html>",
                "headers": { "X-Entity-Ref-ID": "ref-123" },
                "attachments": [{ "filename": "invoice.pdf", "content": pdf64 }],
                "tags": [{ "name": "category", "value": "confirm_email" }],
            }),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{v:#}\n{}", relay.server_log());
    let qid = v["id"].as_str().expect("id").to_string();
    assert_eq!(v.as_object().unwrap().len(), 1, "{v:#}");

    let m = &up.wait_for(1, Duration::from_secs(30)).await[0];
    assert_eq!(m.mail_from, "noreply@app.test");
    let mut rcpts = m.rcpt_to.clone();
    rcpts.sort();
    assert_eq!(
        rcpts,
        [
            "alice@example.net",
            "bob@example.net",
            "carol@example.net",
            "dave@example.net"
        ]
    );
    assert!(
        data_problems(&m.raw).is_empty(),
        "{:?}",
        data_problems(&m.raw)
    );
    let text = m.text();
    assert!(
        text.contains(&format!("id {qid}")),
        "Received names the id:\n{text}"
    );

    // Signed, and the signature verifies against the published record.
    let results = verify(&dns, &m.data).await;
    assert_eq!(results.len(), 1, "{results:?}");
    assert!(results[0].pass(), "{:?}\n{text}", results[0]);

    // mail-parser: structure, branding in the HTML, no Bcc.
    let parsed = MessageParser::default().parse(&m.data).expect("parses");
    assert!(parsed.header("Bcc").is_none(), "{text}");
    assert_eq!(parsed.subject(), Some(subject));
    let html = parsed.body_html(0).expect("html").into_owned();
    assert!(
        html.contains("smtp-relay-branding:header"),
        "not branded: {html}"
    );
    assert!(html.contains("Acme Brand"), "{html}");
    let att = parsed.attachment(0).expect("attachment");
    assert_eq!(att.attachment_name(), Some("invoice.pdf"));
    assert_eq!(att.contents(), PDF);

    // Python's email package agrees.
    let eml = tmp.path().join("received.eml");
    std::fs::write(&eml, &m.data).unwrap();
    let expect = tmp.path().join("expect.json");
    std::fs::write(
        &expect,
        json!({
            "from": ["Acme Team", "noreply@app.test"],
            "to": ["alice@example.net", "bob@example.net"],
            "cc": ["carol@example.net"],
            "reply_to": ["support@app.test"],
            "subject": subject,
            "text": "Your code is 4711.",
            "html": "<b>4711</b>",
            "headers": { "X-Entity-Ref-ID": "ref-123" },
            "attachments": [["invoice.pdf", "application/pdf", pdf64]],
            "absent": ["Bcc"],
        })
        .to_string(),
    )
    .unwrap();
    let run = Command::new("python3")
        .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/support/check_send_api.py"))
        .arg(&eml)
        .arg(&expect)
        .output()
        .expect("python3 must be installed (Debian package python3)");
    assert!(
        run.status.success(),
        "{}{}\n{text}",
        String::from_utf8_lossy(&run.stdout),
        String::from_utf8_lossy(&run.stderr)
    );

    // A batch: every email queued, ids in order.
    let email = |n: u32| {
        json!({
            "from": "noreply@app.test",
            "to": format!("user{n}@example.net"),
            "subject": format!("batch {n}"),
            "text": "hello",
        })
    };
    let (status, v) = api
        .post(&token, "/emails/batch", &json!([email(1), email(2)]))
        .await;
    assert_eq!(status, StatusCode::OK, "{v:#}");
    let ids = v["data"].as_array().expect("data");
    assert_eq!(ids.len(), 2, "{v:#}");
    assert!(ids.iter().all(|i| i["id"].is_string()), "{v:#}");
    let got = up.wait_for(3, Duration::from_secs(30)).await;
    let mut subjects: Vec<String> = got[1..]
        .iter()
        .map(|m| {
            MessageParser::default()
                .parse(&m.data)
                .unwrap()
                .subject()
                .unwrap()
                .to_string()
        })
        .collect();
    subjects.sort();
    assert_eq!(subjects, ["batch 1", "batch 2"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_error_has_resends_shape_and_status_and_queues_nothing() {
    let relay = Relay::start(RelayOptions {
        extra_config: SEND_API.into(),
        max_message_size: 64 * 1024,
        ..Default::default()
    });
    let (id, token) = relay.add_project("app", &["app.test"]);
    let api = Api::new(&relay);
    let ok = json!({
        "from": "Acme <noreply@app.test>",
        "to": "user@example.net",
        "subject": "hi",
        "text": "hello",
    });
    let with = |k: &str, v: Value| {
        let mut e = ok.clone();
        e[k] = v;
        e
    };
    let without = |k: &str| {
        let mut e = ok.clone();
        e.as_object_mut().unwrap().remove(k);
        e
    };

    // Keys: none (401), malformed scheme (401), unknown (403).
    let (s, _, v) = api.post_raw(None, "/emails", ok.to_string().into()).await;
    assert_error(&(s, v), 401, "missing_api_key");
    let (s, _, v) = api
        .post_raw(
            Some(&format!("Basic {token}")),
            "/emails",
            ok.to_string().into(),
        )
        .await;
    assert_error(&(s, v), 401, "missing_api_key");
    let wrong = format!("{}x", token);
    assert_error(
        &api.post(&wrong, "/emails", &ok).await,
        403,
        "invalid_api_key",
    );

    // Validation (422).
    for field in ["from", "to", "subject"] {
        assert_error(
            &api.post(&token, "/emails", &without(field)).await,
            422,
            "missing_required_field",
        );
    }
    let no_body = {
        let mut e = without("text");
        e.as_object_mut().unwrap().remove("html");
        e
    };
    assert_error(
        &api.post(&token, "/emails", &no_body).await,
        422,
        "missing_required_field",
    );
    assert_error(
        &api.post(&token, "/emails", &with("from", json!("not an address")))
            .await,
        422,
        "invalid_from_address",
    );
    let fifty_one: Vec<String> = (0..51).map(|i| format!("u{i}@example.net")).collect();
    let cases = [
        with("to", json!(fifty_one)),
        with("to", json!([])),
        with("to", json!("a@example.net\r\nBcc: evil@example.net")),
        with("to", json!("x%y@example.net")),
        with("cc", json!("someone@localhost")),
        with("subject", json!("two\r\nBcc: evil@example.net")),
        with("headers", json!({ "X-Evil": "a\r\nBcc: evil@example.net" })),
        with("headers", json!({ "From": "other@evil.test" })),
        with("headers", json!({ "Bad Name": "x" })),
        with("headers", json!({ "X-Num": 5 })),
        with("tags", json!([{ "name": "bad tag!", "value": "x" }])),
        with("scheduled_at", json!("in 1 min")),
        with("unknown_field", json!(1)),
    ];
    for (i, body) in cases.iter().enumerate() {
        let got = api.post(&token, "/emails", body).await;
        assert_eq!(got.0.as_u16(), 422, "case {i}: {:#}", got.1);
        assert_eq!(got.1["statusCode"], 422, "case {i}");
        assert!(
            got.1["name"] == "validation_error" || got.1["name"] == "missing_required_field",
            "case {i}: {:#}",
            got.1
        );
    }
    let (s, _, v) = api
        .post_raw(
            Some(&format!("Bearer {token}")),
            "/emails",
            b"{not json".to_vec(),
        )
        .await;
    assert_error(&(s, v), 422, "validation_error");
    for att in [
        json!([{ "filename": "a.pdf", "content": "***not base64***" }]),
        json!([{ "content": "aGk=" }]),
        json!([{ "filename": "a.pdf", "path": "https://example.net/a.pdf" }]),
        json!([{ "filename": "a.pdf", "content": "aGk=", "content_type": "text/plain\r\nX: y" }]),
    ] {
        assert_error(
            &api.post(&token, "/emails", &with("attachments", att)).await,
            422,
            "invalid_attachment",
        );
    }

    // A domain the project does not own (403), in the envelope or as a display-name trick.
    assert_error(
        &api.post(&token, "/emails", &with("from", json!("a@other.test")))
            .await,
        403,
        "validation_error",
    );
    assert_error(
        &api.post(
            &token,
            "/emails",
            &with("from", json!("noreply@app.test <a@other.test>")),
        )
        .await,
        403,
        "validation_error",
    );

    // Too large (413): the built message, and the request body itself.
    let big = "x".repeat(70 * 1024);
    assert_error(
        &api.post(&token, "/emails", &with("text", json!(big))).await,
        413,
        "content_too_large",
    );
    let huge = "x".repeat(300 * 1024);
    assert_error(
        &api.post(&token, "/emails", &with("text", json!(huge)))
            .await,
        413,
        "content_too_large",
    );

    // Batch: empty, over 100, one bad email refuses all.
    assert_error(
        &api.post(&token, "/emails/batch", &json!([])).await,
        422,
        "validation_error",
    );
    let many: Vec<Value> = (0..101).map(|_| ok.clone()).collect();
    assert_error(
        &api.post(&token, "/emails/batch", &json!(many)).await,
        422,
        "validation_error",
    );
    let got = api
        .post(&token, "/emails/batch", &json!([ok.clone(), without("to")]))
        .await;
    assert_error(&got, 422, "missing_required_field");
    assert!(
        got.1["message"].as_str().unwrap().contains("emails[1]"),
        "{:#}",
        got.1
    );

    // Unknown route: 404 in the same shape.
    assert_error(&api.post(&token, "/nope", &ok).await, 404, "not_found");

    assert_eq!(queued(&relay), 0, "a refused request queued something");

    // Rate limit: 429 with retry-after, checked before anything is built or queued.
    relay.cli_json(&["project", "limits", &id, "--per-minute", "1"]);
    let (s, v) = api.post(&token, "/emails", &ok).await;
    assert_eq!(s, StatusCode::OK, "{v:#}");
    let (s, retry, v) = api
        .post_raw(
            Some(&format!("Bearer {token}")),
            "/emails",
            ok.to_string().into(),
        )
        .await;
    assert_error(&(s, v.clone()), 429, "rate_limit_exceeded");
    let secs: u64 = retry.expect("retry-after").parse().unwrap();
    assert!((1..=60).contains(&secs), "retry-after {secs}");
    assert_eq!(queued(&relay), 1);

    // A disabled project's token is refused like an unknown one.
    relay.cli_json(&["project", "disable", &id]);
    assert_error(
        &api.post(&token, "/emails", &ok).await,
        403,
        "invalid_api_key",
    );
    assert_eq!(queued(&relay), 1);
    let log = relay.server_log();
    assert!(!log.contains(&token), "token in the server log");
}

#[test]
fn off_loopback_without_tls_is_a_config_error_naming_the_key() {
    let relay = Relay::start(RelayOptions::default());
    let base = std::fs::read_to_string(&relay.config_path).unwrap();
    let path = relay.dir.path().join("api.toml");
    for (extra, key) in [
        ("[send_api]\naddress = \"0.0.0.0:0\"\n", "send_api.tls"),
        (
            "[send_api]\naddress = \"127.0.0.1:0\"\ncert_file = \"/x.pem\"\n",
            "send_api.cert_file",
        ),
    ] {
        std::fs::write(&path, format!("{base}\n{extra}")).unwrap();
        let out = Command::new(support::relay::BIN)
            .args(["config", "check"])
            .arg(&path)
            .env_remove("SMTP_RELAY_LOG")
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr).into_owned()
            + &String::from_utf8_lossy(&out.stdout);
        assert!(!out.status.success(), "{err}");
        assert!(err.contains(key), "{key}: {err}");
    }
}

/// Resend's official Python SDK, pointed at the relay with `RESEND_API_URL` and a project
/// token as the key: the mail arrives at the upstream signed, from the SDK's own requests.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resend_python_sdk_sends_through_the_relay() {
    let pki = TestPki::generate();
    let up = TestUpstream::start(UpstreamOptions::implicit(&pki)).await;
    let tmp = tempfile::tempdir().unwrap();
    let files = pki.write_to(tmp.path());
    let relay = Relay::start(RelayOptions {
        upstreams: Some(smtp_upstream(up.port(), "implicit", &files.ca, None)),
        extra_config: SEND_API.into(),
        ..Default::default()
    });
    let (_id, token) = relay.add_project("app", &["app.test"]);
    let record = keygen(&relay, "app.test", "s1", "ed25519", true);
    let dns = Dns::default();
    dns.publish(&record);
    let api = Api::new(&relay);

    let out = Command::new("python3")
        .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/support/resend_sdk.py"))
        .args(["noreply@app.test", "user@example.net"])
        .env("RESEND_API_URL", &api.base)
        .env("RESEND_API_KEY", &token)
        .output()
        .expect("python3 must be installed (Debian package python3)");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{stdout}{}\n{}",
        String::from_utf8_lossy(&out.stderr),
        relay.server_log()
    );
    let v: Value = serde_json::from_str(stdout.trim()).unwrap();
    assert!(v["id"].is_string(), "{v:#}");
    assert_eq!(v["batch"].as_array().unwrap().len(), 2, "{v:#}");
    assert_eq!(v["bad_key"]["code"], 403, "{v:#}");
    assert_eq!(v["bad_key"]["type"], "invalid_api_key", "{v:#}");
    assert!(
        v["idem"][0].is_string() && v["idem"][0] == v["idem"][1],
        "{v:#}"
    );
    assert_eq!(v["idem_conflict"]["code"], 409, "{v:#}");
    assert_eq!(
        v["idem_conflict"]["type"], "invalid_idempotent_request",
        "{v:#}"
    );
    assert_eq!(
        queued(&relay),
        4,
        "the SDK's retry with its key queued nothing"
    );

    let got = up.wait_for(3, Duration::from_secs(30)).await;
    let sdk = got
        .iter()
        .find(|m| m.text().contains("resend Python SDK"))
        .expect("the SDK's message");
    let results = verify(&dns, &sdk.data).await;
    assert!(results.len() == 1 && results[0].pass(), "{results:?}");
    let parsed = MessageParser::default().parse(&sdk.data).unwrap();
    assert_eq!(
        parsed.from().and_then(|f| f.first()).and_then(|a| a.name()),
        Some("Python SDK")
    );
    let att = parsed.attachment(0).expect("attachment");
    assert_eq!(att.attachment_name(), Some("note.txt"));
    assert_eq!(att.contents(), b"attached bytes\n");
}

/// Resend's official Node SDK (npm `resend`, pinned in tests/support/resend_node), pointed at
/// the relay with `RESEND_BASE_URL`: the mail arrives at the upstream signed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resend_node_sdk_sends_through_the_relay() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/support/resend_node");
    assert!(
        dir.join("node_modules/resend").is_dir(),
        "Resend's Node SDK is not installed: run scripts/test.sh (npm ci in {}; Debian packages nodejs and npm)",
        dir.display()
    );
    let pki = TestPki::generate();
    let up = TestUpstream::start(UpstreamOptions::implicit(&pki)).await;
    let tmp = tempfile::tempdir().unwrap();
    let files = pki.write_to(tmp.path());
    let relay = Relay::start(RelayOptions {
        upstreams: Some(smtp_upstream(up.port(), "implicit", &files.ca, None)),
        extra_config: SEND_API.into(),
        ..Default::default()
    });
    let (_id, token) = relay.add_project("app", &["app.test"]);
    let record = keygen(&relay, "app.test", "s1", "rsa", true);
    let dns = Dns::default();
    dns.publish(&record);
    let api = Api::new(&relay);

    let out = Command::new("node")
        .arg(dir.join("send.mjs"))
        .args(["noreply@app.test", "user@example.net"])
        .current_dir(&dir)
        .env("RESEND_BASE_URL", &api.base)
        .env("RESEND_API_KEY", &token)
        .output()
        .expect("node must be installed (Debian package nodejs)");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{stdout}{}\n{}",
        String::from_utf8_lossy(&out.stderr),
        relay.server_log()
    );
    let v: Value = serde_json::from_str(stdout.trim()).unwrap();
    assert!(v["id"].is_string(), "{v:#}");
    assert_eq!(v["batch"].as_array().unwrap().len(), 2, "{v:#}");
    assert_eq!(v["bad_key"]["statusCode"], 403, "{v:#}");
    assert_eq!(v["bad_key"]["name"], "invalid_api_key", "{v:#}");
    assert!(
        v["idem"][0].is_string() && v["idem"][0] == v["idem"][1],
        "{v:#}"
    );
    assert_eq!(v["idem_conflict"]["statusCode"], 409, "{v:#}");
    assert_eq!(
        v["idem_conflict"]["name"], "invalid_idempotent_request",
        "{v:#}"
    );
    assert_eq!(
        queued(&relay),
        4,
        "the SDK's retry with its key queued nothing"
    );

    let got = up.wait_for(3, Duration::from_secs(30)).await;
    let sdk = got
        .iter()
        .find(|m| m.text().contains("resend Node SDK"))
        .expect("the SDK's message");
    let results = verify(&dns, &sdk.data).await;
    assert!(results.len() == 1 && results[0].pass(), "{results:?}");
    let parsed = MessageParser::default().parse(&sdk.data).unwrap();
    assert_eq!(
        parsed.from().and_then(|f| f.first()).and_then(|a| a.name()),
        Some("Node SDK")
    );
    let att = parsed.attachment(0).expect("attachment");
    assert_eq!(att.attachment_name(), Some("note.txt"));
    assert_eq!(att.contents(), b"attached bytes\n");
}

/// `tls = true`: HTTPS with the relay's certificate; plain HTTP to it gets no answer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn https_send_api_with_the_relays_certificate() {
    let relay = Relay::start(RelayOptions {
        extra_config: format!("{SEND_API}tls = true\n"),
        ..Default::default()
    });
    let (_id, token) = relay.add_project("app", &["app.test"]);
    let api = Api::with_scheme(&relay, "https");
    let (s, v) = api
        .post(
            &token,
            "/emails",
            &json!({ "from": "noreply@app.test", "to": "user@example.net",
                     "subject": "over https", "text": "hello" }),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{v:#}");
    let plain = Api::new(&relay);
    let r = plain
        .http
        .post(format!("{}/emails", plain.base))
        .bearer_auth(&token)
        .body("{}")
        .send()
        .await;
    assert!(r.is_err(), "plain HTTP answered on the HTTPS port: {r:?}");
    assert_eq!(queued(&relay), 1);
}
