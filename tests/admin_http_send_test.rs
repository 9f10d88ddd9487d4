//! Send test over HTTP: `POST /api/v1/send-test` and the panel's Send test page send one
//! message through the project's route to a real (test) upstream and answer in plain words —
//! delivered with the upstream's reply, or refused and why (an answer, not a request error);
//! bad input is a typed 422.

mod support;

use std::time::Duration;

use reqwest::{Method, StatusCode};
use serde_json::json;
use support::api::Api;
use support::certs::TestPki;
use support::panel::{Panel, admin_token, csrf_of};
use support::relay::{Relay, RelayOptions};
use support::upstream::{Script, TestUpstream, UpstreamOptions};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn send_test_over_api_and_panel_answers_in_plain_words() {
    let pki = TestPki::generate();
    let script = Script::default().with_rcpt(
        "nobody@example.net",
        "550 5.1.1 <nobody@example.net>: mailbox unknown",
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
    let (id, _) = relay.add_project("shop", &["shop.test"]);
    let api = Api::new(&relay);
    let admin = admin_token(&relay, "admin");

    let (st, v) = api
        .call(
            &admin,
            Method::POST,
            "/api/v1/send-test",
            Some(json!({"project": id, "to": "ops@example.net"})),
        )
        .await;
    assert_eq!(st, StatusCode::OK, "{v}");
    assert_eq!(v["delivered"], true, "{v}");
    assert!(
        v["result"]
            .as_str()
            .unwrap()
            .starts_with("delivered through upstream test: 250"),
        "{v}"
    );
    let got = up.wait_for(1, Duration::from_secs(10)).await;
    assert!(got[0].text().contains("smtp-relay test message"));

    let (st, v) = api
        .call(
            &admin,
            Method::POST,
            "/api/v1/send-test",
            Some(json!({"project": id, "to": "nobody@example.net"})),
        )
        .await;
    assert_eq!(st, StatusCode::OK, "{v}");
    assert_eq!(v["delivered"], false, "{v}");
    assert_eq!(
        v["result"],
        "refused by upstream test: 550 5.1.1 <nobody@example.net>: mailbox unknown"
    );

    for (body, why) in [
        (
            json!({"project": id, "to": "not an address"}),
            "not a plain",
        ),
        (
            json!({"project": "nope", "to": "a@example.net"}),
            "no project",
        ),
        (
            json!({"project": id, "to": "a@example.net", "upstream": "ghost"}),
            "ghost",
        ),
    ] {
        let (st, v) = api
            .call(
                &admin,
                Method::POST,
                "/api/v1/send-test",
                Some(body.clone()),
            )
            .await;
        assert_eq!(st, StatusCode::UNPROCESSABLE_ENTITY, "{body}: {v}");
        assert!(
            v["error"]["message"].as_str().unwrap().contains(why),
            "{body}: {v}"
        );
    }

    // The panel: the same operation, its outcome shown on the page it goes back to.
    let mut panel = Panel::new(&relay);
    panel.login(&admin).await;
    let (st, html) = panel.page("/send-test").await;
    assert_eq!(st, StatusCode::OK);
    assert!(
        html.contains("Send test message") && html.contains("<option value=\"test\">"),
        "{html}"
    );
    let csrf = csrf_of(&html);
    let r = panel
        .post(
            "/send-test",
            &[
                ("csrf", &csrf),
                ("project", &id),
                ("to", "ops@example.net"),
                ("upstream", ""),
            ],
        )
        .await;
    assert_eq!(r.status(), StatusCode::SEE_OTHER);
    let (_, html) = panel.page("/send-test").await;
    assert!(
        html.contains("Delivered.") && html.contains("delivered through upstream test: 250"),
        "{html}"
    );
    let (_, html) = panel.page("/send-test").await;
    assert!(!html.contains("Delivered."), "the outcome is shown once");
    let r = panel
        .post(
            "/send-test",
            &[
                ("csrf", &csrf),
                ("project", &id),
                ("to", "nobody@example.net"),
                ("upstream", "test"),
            ],
        )
        .await;
    assert_eq!(r.status(), StatusCode::SEE_OTHER);
    let (_, html) = panel.page("/send-test").await;
    assert!(
        html.contains("Not delivered.") && html.contains("mailbox unknown"),
        "{html}"
    );
    assert!(
        html.contains("&lt;nobody@example.net&gt;"),
        "escaped: {html}"
    );
}
