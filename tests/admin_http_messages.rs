//! The message log over the JSON API: mail sent over SMTP to a scripted upstream shows up
//! with its subject and header From (as the app wrote them), can be found by project, state,
//! recipient, sender, time and free text, is paged newest first with an opaque cursor, and
//! shows each delivery attempt with the upstream's reply. Bad parameters are typed errors.

mod support;

use std::time::Duration;

use reqwest::StatusCode;
use serde_json::Value;
use support::api::Api;
use support::certs::TestPki;
use support::client::Client;
use support::panel::admin_token;
use support::relay::{Relay, RelayOptions};
use support::upstream::{Script, TestUpstream, UpstreamOptions};

fn owned(v: &[&String]) -> Vec<String> {
    v.iter().map(|s| s.to_string()).collect()
}

fn ids(v: &Value) -> Vec<String> {
    v["messages"]
        .as_array()
        .unwrap_or_else(|| panic!("a page: {v}"))
        .iter()
        .map(|m| m["id"].as_str().unwrap().to_string())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn message_log_filters_search_pages_and_shows_attempts() {
    let pki = TestPki::generate();
    let script = Script::default().with_rcpt(
        "refused@example.net",
        "550 5.1.1 <refused@example.net>: no such user",
    );
    let up = TestUpstream::start(UpstreamOptions::implicit(&pki).with_script(script)).await;
    let relay = Relay::start_with_upstream(
        up.port(),
        "implicit",
        &pki,
        RelayOptions {
            extra_config: "[admin_http]\naddress = \"127.0.0.1:0\"\n".into(),
            ..Default::default()
        },
    );
    let (project, token) = relay.add_project("shop", &["shop.test"]);
    let (other, other_token) = relay.add_project("blog", &["blog.test"]);
    let api = Api::new(&relay);
    let admin = admin_token(&relay, "viewer");
    let started = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();

    let mut c = Client::logged_in(relay.starttls, &relay.pki, &project, &token).await;
    let welcome = c
        .send_plain(
            "noreply@shop.test",
            "alice@example.net",
            "Welcome aboard",
            "Hi\r\n",
        )
        .await
        .queued_id();
    let invoice = c
        .send(
            "billing@shop.test",
            &["bob@example.net"],
            "From: =?utf-8?q?Billing_D=C3=A9pt?= <billing@shop.test>\r\nTo: bob@example.net\r\n\
             Subject: Invoice 42\r\n\r\nPay up\r\n",
        )
        .await
        .queued_id();
    let refused = c
        .send_plain(
            "noreply@shop.test",
            "refused@example.net",
            "Reset your password",
            "x\r\n",
        )
        .await
        .queued_id();
    let mut c2 = Client::logged_in(relay.starttls, &relay.pki, &other, &other_token).await;
    let post = c2
        .send_plain("news@blog.test", "carol@example.net", "New post", "x\r\n")
        .await
        .queued_id();
    for id in [&welcome, &invoice, &post] {
        relay.wait_state(id, &["delivered"], Duration::from_secs(20));
    }
    relay.wait_state(&refused, &["failed"], Duration::from_secs(20));

    // Everything, newest first.
    let (st, v) = api.get(&admin, "/api/v1/messages").await;
    assert_eq!(st, StatusCode::OK, "{v}");
    assert_eq!(ids(&v), owned(&[&post, &refused, &invoice, &welcome]));
    assert_eq!(v["next_cursor"], Value::Null);
    let inv = &v["messages"][2];
    assert_eq!(inv["subject"], "Invoice 42");
    assert_eq!(inv["from"], "Billing Dépt <billing@shop.test>");

    // Each filter alone, then together.
    for (query, want) in [
        (
            format!("project={project}"),
            vec![&refused, &invoice, &welcome],
        ),
        (format!("project={other}"), vec![&post]),
        ("state=failed".to_string(), vec![&refused]),
        (
            "state=delivered&project=".to_string(),
            vec![&post, &invoice, &welcome],
        ),
        ("recipient=ALICE@".to_string(), vec![&welcome]),
        ("sender=billing".to_string(), vec![&invoice]),
        ("sender=D%C3%A9pt".to_string(), vec![&invoice]),
        ("q=invoice".to_string(), vec![&invoice]),
        ("q=password".to_string(), vec![&refused]),
        (
            "q=example.net&state=delivered&project=".to_string() + &other,
            vec![&post],
        ),
        (
            format!("since={}", started.saturating_sub(60)),
            vec![&post, &refused, &invoice, &welcome],
        ),
        (format!("since={}", started + 3600), vec![]),
        (format!("until={}", started.saturating_sub(60)), vec![]),
    ] {
        let (st, v) = api.get(&admin, &format!("/api/v1/messages?{query}")).await;
        assert_eq!(st, StatusCode::OK, "{query}: {v}");
        assert_eq!(ids(&v), owned(&want), "{query}");
    }

    // The CLI's `log` searches the same way.
    let cli = relay.cli_json(&["log", "--search", "invoice", "--state", "delivered"]);
    assert_eq!(ids(&cli), owned(&[&invoice]), "{cli}");
    let out = relay.cli(&["log", "--recipient", "example.net", "--limit", "1"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains(&post) && text.contains("more: --cursor "),
        "{text}"
    );
    let out = relay.cli(&["log", "--state", "lost"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("unknown state"));

    // Pages of one: the cursor walks the log newest first, then ends.
    let mut seen = Vec::new();
    let mut path = "/api/v1/messages?limit=1".to_string();
    loop {
        let (st, v) = api.get(&admin, &path).await;
        assert_eq!(st, StatusCode::OK, "{v}");
        seen.extend(ids(&v));
        match v["next_cursor"].as_str() {
            Some(c) => {
                assert!(!c.contains(&seen[seen.len() - 1]), "opaque: {c}");
                path = format!("/api/v1/messages?limit=1&cursor={c}");
            }
            None => break,
        }
        assert!(seen.len() <= 4, "{seen:?}");
    }
    assert_eq!(seen, owned(&[&post, &refused, &invoice, &welcome]));

    // One message: envelope, header fields, size, the attempt and the upstream's reply.
    let (st, m) = api
        .get(&admin, &format!("/api/v1/messages/{refused}"))
        .await;
    assert_eq!(st, StatusCode::OK, "{m}");
    assert_eq!(m["state"], "failed");
    assert_eq!(m["subject"], "Reset your password");
    assert_eq!(m["mail_from"], "noreply@shop.test");
    assert!(m["size"].as_u64().unwrap() > 0);
    let headers = m["summary"]["headers"].as_array().unwrap();
    let names: Vec<&str> = headers
        .iter()
        .map(|h| h["name"].as_str().unwrap())
        .collect();
    assert!(
        names.contains(&"Received") && names.contains(&"Subject"),
        "{names:?}"
    );
    let attempts = m["attempt_log"].as_array().unwrap();
    assert_eq!(attempts.len(), 1, "{m:#}");
    let a = &attempts[0];
    assert_eq!(a["outcome"], "failed");
    assert_eq!(a["upstream"], "test");
    assert_eq!(a["code"], 550);
    assert!(a["reply"].as_str().unwrap().contains("no such user"), "{a}");
    assert!(a["time_ms"].as_u64().unwrap() >= started * 1000);
    assert!(a["after_ms"].is_u64());
    let (_, m) = api
        .get(&admin, &format!("/api/v1/messages/{welcome}"))
        .await;
    assert_eq!(m["attempt_log"][0]["outcome"], "relayed", "{m:#}");
    assert_eq!(m["attempt_log"][0]["code"], 250, "{m:#}");

    // Typed errors: unknown id 404; bad parameters 422 naming the field; malformed 400.
    let (st, v) = api.get(&admin, "/api/v1/messages/0000000000000000").await;
    assert_eq!(
        (st, v["error"]["code"].as_str()),
        (StatusCode::NOT_FOUND, Some("not_found"))
    );
    for (query, field) in [
        ("cursor=%21%21", "cursor"),
        ("state=lost", "state"),
        ("limit=0", "limit"),
        ("limit=5000", "limit"),
        ("since=20&until=10", "since"),
    ] {
        let (st, v) = api.get(&admin, &format!("/api/v1/messages?{query}")).await;
        assert_eq!(st, StatusCode::UNPROCESSABLE_ENTITY, "{query}: {v}");
        assert_eq!(v["error"]["field"], field, "{query}: {v}");
    }
    let (st, v) = api.get(&admin, "/api/v1/messages?since=yesterday").await;
    assert_eq!(st, StatusCode::BAD_REQUEST, "{v}");
    let (st, v) = api.get(&admin, "/api/v1/messages?colour=red").await;
    assert_eq!(st, StatusCode::BAD_REQUEST, "{v}");
}
