//! `GET /api/v1/stats` and the Overview page it feeds: mail sent over SMTP to a scripted
//! upstream (one relayed, one refused, one deferred) is counted per project, overall and per
//! hour; the queue's depth and oldest message and the upstream's health are reported; the
//! Overview draws the hours as a server-side SVG chart.

mod support;

use std::time::Duration;

use reqwest::StatusCode;
use support::api::Api;
use support::certs::TestPki;
use support::panel::{Panel, admin_token};
use support::relay::{Relay, RelayOptions};
use support::upstream::{Script, TestUpstream, UpstreamOptions};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stats_count_outcomes_and_feed_the_overview_chart() {
    let pki = TestPki::generate();
    let script = Script::default()
        .with_rcpt("refused@example.net", "550 5.1.1 no such user")
        .with_rcpt("later@example.net", "451 4.3.0 try later");
    let up = TestUpstream::start(UpstreamOptions::implicit(&pki).with_script(script)).await;
    let relay = Relay::start_with_upstream(
        up.port(),
        "implicit",
        &pki,
        RelayOptions {
            extra_config: "[admin_http]\naddress = \"127.0.0.1:0\"\n".into(),
            retry_schedule_secs: vec![600],
            ..Default::default()
        },
    );
    let (id, token) = relay.add_project("shop", &["shop.test"]);
    let (quiet, _) = relay.add_project("quiet", &["quiet.test"]);
    let ok = relay
        .submit(&id, &token, "noreply@shop.test", &["ok@example.net"])
        .await;
    let refused = relay
        .submit(&id, &token, "noreply@shop.test", &["refused@example.net"])
        .await;
    let later = relay
        .submit(&id, &token, "noreply@shop.test", &["later@example.net"])
        .await;
    relay.wait_state(&ok, &["delivered"], Duration::from_secs(20));
    relay.wait_state(&refused, &["failed"], Duration::from_secs(20));
    relay.wait_state(&later, &["deferred"], Duration::from_secs(20));

    let api = Api::new(&relay);
    let viewer = admin_token(&relay, "viewer");
    let (st, v) = api.get(&viewer, "/api/v1/stats").await;
    assert_eq!(st, StatusCode::OK, "{v}");
    assert_eq!(v["window"]["hours"], 24);
    let o = &v["overall"];
    assert_eq!(
        (
            o["accepted"].as_u64(),
            o["relayed"].as_u64(),
            o["failed"].as_u64(),
            o["deferred"].as_u64()
        ),
        (Some(3), Some(1), Some(1), Some(1)),
        "{v:#}"
    );
    let projects = v["projects"].as_array().unwrap();
    let shop = projects
        .iter()
        .find(|p| p["project"] == id.as_str())
        .unwrap();
    assert_eq!(shop["accepted"], 3);
    assert_eq!(shop["name"], "shop");
    let q = projects
        .iter()
        .find(|p| p["project"] == quiet.as_str())
        .unwrap();
    assert_eq!(
        q["accepted"], 0,
        "a project with no mail is listed with zeros"
    );
    let hourly = v["hourly"].as_array().unwrap();
    assert_eq!(hourly.len(), 24);
    let summed: u64 = hourly.iter().map(|h| h["accepted"].as_u64().unwrap()).sum();
    assert_eq!(summed, 3);
    assert_eq!(v["queue"]["depth"], 1, "{v:#}");
    assert!(v["queue"]["oldest_age_secs"].as_u64().is_some(), "{v:#}");
    let up_v = &v["upstreams"][0];
    assert_eq!(up_v["name"], "test");
    assert!(up_v["last_success_ms"].as_u64().is_some(), "{up_v}");
    let err = up_v["last_error"].as_str().unwrap();
    assert!(err.contains("550") || err.contains("451"), "{up_v}");

    // The CLI runs the same operation.
    let cli = relay.cli_json(&["stats", "--hours", "24"]);
    assert_eq!(cli["overall"], v["overall"], "{cli:#}");
    let out = relay.cli(&["stats"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("accepted=3 relayed=1 deferred=1 failed=1"),
        "{text}"
    );

    let (st, v) = api.get(&viewer, "/api/v1/stats?hours=1").await;
    assert_eq!(
        (st, v["overall"]["accepted"].as_u64()),
        (StatusCode::OK, Some(3))
    );
    let (st, v) = api.get(&viewer, "/api/v1/stats?hours=0").await;
    assert_eq!(
        (st, v["error"]["field"].as_str()),
        (StatusCode::UNPROCESSABLE_ENTITY, Some("hours")),
        "{v}"
    );
    let (st, _) = api.get(&viewer, "/api/v1/stats?hours=lots").await;
    assert_eq!(st, StatusCode::BAD_REQUEST);

    let mut panel = Panel::new(&relay);
    panel.login(&viewer).await;
    let (st, html) = panel.page("/").await;
    assert_eq!(st, StatusCode::OK);
    assert!(html.contains("<svg class=\"chart\""), "{html}");
    assert!(
        html.contains("3 accepted, 1 relayed, 1 deferred, 1 failed"),
        "{html}"
    );
    assert!(html.contains(">accepted, 24 h<"), "{html}");
    assert!(html.contains("<td class=\"mono\">test</td>"), "{html}");
}
