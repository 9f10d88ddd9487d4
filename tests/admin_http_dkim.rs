//! DKIM over HTTP: keys generated, listed, activated, retired and removed through the JSON
//! API with typed errors (422 naming the field, 409 for a duplicate or an active key, 404
//! unknown), the DNS records to publish, and the panel's DKIM page doing the same with forms
//! and showing each record in a read-only field.

mod support;

use reqwest::{Method, StatusCode};
use serde_json::json;
use support::api::Api;
use support::panel::{Panel, admin_token, csrf_of};
use support::relay::{Relay, RelayOptions};

fn relay() -> Relay {
    Relay::start(RelayOptions {
        extra_config: "[admin_http]\naddress = \"127.0.0.1:0\"\n".into(),
        ..Default::default()
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dkim_keys_over_the_api() {
    let relay = relay();
    relay.add_project("shop", &["shop.test"]);
    let api = Api::new(&relay);
    let admin = admin_token(&relay, "admin");
    let viewer = admin_token(&relay, "viewer");

    let gen_body = json!({"domain": "shop.test", "selector": "s1", "algorithm": "ed25519"});
    let (st, v) = api
        .call(
            &admin,
            Method::POST,
            "/api/v1/dkim/keys",
            Some(gen_body.clone()),
        )
        .await;
    assert_eq!(st, StatusCode::CREATED, "{v}");
    assert_eq!(v["state"], "pending");
    assert!(
        v["dns"]["value"]
            .as_str()
            .unwrap()
            .starts_with("v=DKIM1; k=ed25519; p="),
        "{v}"
    );
    assert!(!v.to_string().contains("PRIVATE KEY"), "{v}");

    let (st, v) = api
        .call(&admin, Method::POST, "/api/v1/dkim/keys", Some(gen_body))
        .await;
    assert_eq!(
        (st, v["error"]["code"].as_str()),
        (StatusCode::CONFLICT, Some("conflict")),
        "{v}"
    );
    let (st, v) = api
        .call(
            &admin,
            Method::POST,
            "/api/v1/dkim/keys",
            Some(json!({"domain": "not a domain", "algorithm": "ed25519"})),
        )
        .await;
    assert_eq!(st, StatusCode::UNPROCESSABLE_ENTITY, "{v}");
    assert_eq!(v["error"]["field"], "domain", "{v}");
    let (st, _) = api
        .call(
            &viewer,
            Method::POST,
            "/api/v1/dkim/keys",
            Some(json!({"domain": "shop.test"})),
        )
        .await;
    assert_eq!(st, StatusCode::FORBIDDEN);

    let (st, v) = api.get(&viewer, "/api/v1/dkim?domain=shop.test").await;
    assert_eq!(st, StatusCode::OK, "{v}");
    assert_eq!(v.as_array().unwrap().len(), 1);
    let (st, v) = api.get(&viewer, "/api/v1/dkim/shop.test/dns").await;
    assert_eq!(st, StatusCode::OK, "{v}");
    let kinds: Vec<&str> = v["records"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["kind"].as_str().unwrap())
        .collect();
    assert!(kinds.contains(&"dkim") && kinds.contains(&"spf"), "{v}");

    let (st, v) = api
        .call(
            &admin,
            Method::POST,
            "/api/v1/dkim/shop.test/s1/activate",
            None,
        )
        .await;
    assert_eq!(
        (st, v["state"].as_str()),
        (StatusCode::OK, Some("active")),
        "{v}"
    );
    let (st, v) = api
        .call(&admin, Method::DELETE, "/api/v1/dkim/shop.test/s1", None)
        .await;
    assert_eq!(st, StatusCode::CONFLICT, "an active key is removed: {v}");
    let (st, v) = api
        .call(
            &admin,
            Method::POST,
            "/api/v1/dkim/shop.test/s1/retire",
            None,
        )
        .await;
    assert_eq!(
        (st, v["state"].as_str()),
        (StatusCode::OK, Some("retiring")),
        "{v}"
    );
    let (st, _) = api
        .call(&admin, Method::DELETE, "/api/v1/dkim/shop.test/s1", None)
        .await;
    assert_eq!(st, StatusCode::OK);
    let (st, v) = api
        .call(
            &admin,
            Method::POST,
            "/api/v1/dkim/shop.test/s1/activate",
            None,
        )
        .await;
    assert_eq!(st, StatusCode::NOT_FOUND, "{v}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dkim_page_generates_activates_and_shows_records() {
    let relay = relay();
    relay.add_project("shop", &["shop.test"]);
    let admin = admin_token(&relay, "admin");
    let mut panel = Panel::new(&relay);
    panel.login(&admin).await;
    let (st, html) = panel.page("/dkim").await;
    assert_eq!(st, StatusCode::OK);
    assert!(
        html.contains("<h2>shop.test</h2>") && html.contains("No key"),
        "{html}"
    );
    let csrf = csrf_of(&html);

    let r = panel
        .post(
            "/dkim/keys",
            &[
                ("csrf", &csrf),
                ("domain", "shop.test"),
                ("algorithm", "ed25519"),
                ("selector", "s2"),
            ],
        )
        .await;
    assert_eq!(r.status(), StatusCode::SEE_OTHER);
    let (_, html) = panel.page("/dkim").await;
    assert!(html.contains("Key generated."), "{html}");
    assert!(html.contains("s2._domainkey.shop.test"), "{html}");
    assert!(
        html.contains("readonly") && html.contains("v=DKIM1; k=ed25519; p="),
        "{html}"
    );
    assert!(
        html.contains(">pending<") && html.contains("/dkim/shop.test/s2/activate"),
        "{html}"
    );

    let r = panel
        .post("/dkim/shop.test/s2/activate", &[("csrf", &csrf)])
        .await;
    assert_eq!(r.status(), StatusCode::SEE_OTHER);
    let (_, html) = panel.page("/dkim").await;
    assert!(
        html.contains(">active<") && html.contains("/dkim/shop.test/s2/retire"),
        "{html}"
    );
    let v = relay.cli_json(&["dkim", "list"]);
    assert_eq!(v[0]["state"], "active", "{v}");
}
