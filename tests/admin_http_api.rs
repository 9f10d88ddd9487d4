//! The HTTP admin API over real HTTP (reqwest) against the real binary: admin tokens and
//! roles, the project lifecycle, a token created over HTTP sending over SMTP and refused
//! once revoked, JSON errors with the right status for bad input (changing nothing), failed
//! bearer tokens slowed and cooled down per address, and every route of the router answering.

mod support;

use std::time::{Duration, Instant};

use reqwest::{Method, StatusCode};
use serde_json::json;
use support::api::Api;
use support::client::Client;
use support::relay::{Relay, RelayOptions};

fn relay_with_api(extra_throttle: &str) -> Relay {
    Relay::start(RelayOptions {
        extra_config: format!("[admin_http]\naddress = \"127.0.0.1:0\"\n{extra_throttle}"),
        ..Default::default()
    })
}

/// An admin token made with the CLI (the only way to get the first one).
fn admin_token(relay: &Relay, role: &str) -> String {
    let v = relay.cli_json(&["admin", "token", "add", "--label", "ops", "--role", role]);
    let t = v["token"].as_str().unwrap().to_string();
    assert!(t.starts_with("smtpa_") && t.len() == 6 + 43, "{t}");
    t
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn project_lifecycle_over_http_reaches_smtp() {
    let relay = relay_with_api("");
    let api = Api::new(&relay);
    let admin = admin_token(&relay, "admin");

    let (st, v) = api
        .call(
            &admin,
            Method::POST,
            "/api/v1/projects",
            Some(json!({"name": "shop", "domains": ["shop.test"], "label": "production"})),
        )
        .await;
    assert_eq!(st, StatusCode::CREATED, "{v}");
    let id = v["project"]["id"].as_str().unwrap().to_string();
    let token = v["token"].as_str().unwrap().to_string();
    let token_id = v["token_id"].as_str().unwrap().to_string();

    // The token made over HTTP sends over SMTP.
    let mut c = Client::logged_in(relay.starttls, &relay.pki, &id, &token).await;
    c.submit("noreply@shop.test", "user@example.net").await;

    // Listing never shows a token; show has limits; domains, max age, disable.
    let (st, v) = api
        .call(&admin, Method::GET, "/api/v1/projects", None)
        .await;
    assert_eq!(st, StatusCode::OK);
    assert!(!v.to_string().contains(&token));
    let (_, v) = api
        .call(&admin, Method::GET, &format!("/api/v1/projects/{id}"), None)
        .await;
    assert!(v["limits"].is_object() || v["limits"].is_array(), "{v}");
    let (st, v) = api
        .call(
            &admin,
            Method::POST,
            &format!("/api/v1/projects/{id}/domains"),
            Some(json!({"domain": "mail.shop.test"})),
        )
        .await;
    assert_eq!(st, StatusCode::CREATED, "{v}");
    assert_eq!(v["domains"], json!(["shop.test", "mail.shop.test"]));
    let (st, v) = api
        .call(
            &admin,
            Method::PATCH,
            &format!("/api/v1/projects/{id}"),
            Some(json!({"max_age_secs": 900})),
        )
        .await;
    assert_eq!(st, StatusCode::OK, "{v}");
    assert_eq!(v["max_age_secs"], 900);

    // Messages: the one sent above is in the log, and can be fetched by id.
    let (st, v) = api
        .call(
            &admin,
            Method::GET,
            &format!("/api/v1/messages?project={id}"),
            None,
        )
        .await;
    assert_eq!(st, StatusCode::OK, "{v}");
    let msg_id = v["messages"][0]["id"]
        .as_str()
        .expect("a logged message")
        .to_string();
    let (st, _) = api
        .call(
            &admin,
            Method::GET,
            &format!("/api/v1/messages/{msg_id}"),
            None,
        )
        .await;
    assert_eq!(st, StatusCode::OK);

    // Revoked over HTTP: the next SMTP session is refused.
    let (st, v) = api
        .call(
            &admin,
            Method::DELETE,
            &format!("/api/v1/projects/{id}/tokens/{token_id}"),
            None,
        )
        .await;
    assert_eq!(st, StatusCode::OK, "{v}");
    let (mut c, _) = Client::starttls(relay.starttls, &relay.pki).await;
    assert_eq!(c.auth_plain(&id, &token).await.code, 535);

    // Unknown ids are 404, duplicates 409, deletion works once.
    let (st, v) = api
        .call(&admin, Method::GET, "/api/v1/projects/prj_nope", None)
        .await;
    assert_eq!(st, StatusCode::NOT_FOUND, "{v}");
    assert_eq!(v["error"]["code"], "not_found");
    let (st, v) = api
        .call(
            &admin,
            Method::POST,
            &format!("/api/v1/projects/{id}/domains"),
            Some(json!({"domain": "shop.test"})),
        )
        .await;
    assert_eq!(st, StatusCode::CONFLICT, "{v}");
    let (st, _) = api
        .call(
            &admin,
            Method::DELETE,
            &format!("/api/v1/projects/{id}"),
            None,
        )
        .await;
    assert_eq!(st, StatusCode::OK);
    let (st, _) = api
        .call(
            &admin,
            Method::DELETE,
            &format!("/api/v1/projects/{id}"),
            None,
        )
        .await;
    assert_eq!(st, StatusCode::NOT_FOUND);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_is_a_json_error_naming_the_field_and_changes_nothing() {
    let relay = relay_with_api("");
    let api = Api::new(&relay);
    let admin = admin_token(&relay, "admin");
    let before = api
        .call(&admin, Method::GET, "/api/v1/projects", None)
        .await
        .1;

    for (body, field) in [
        (json!({"domains": ["a.test"]}), "name"),
        (json!({"name": "x", "domains": "a.test"}), "domains"),
        (json!({"name": "x", "colour": "red"}), "colour"),
    ] {
        let (st, v) = api
            .call(&admin, Method::POST, "/api/v1/projects", Some(body.clone()))
            .await;
        // The wrong shape (missing, mistyped, unknown field) is a 400 naming the field.
        assert_eq!(st, StatusCode::BAD_REQUEST, "{body} → {v}");
        assert_eq!(v["error"]["code"], "bad_request", "{v}");
        assert!(
            v["error"]["message"].as_str().unwrap().contains(field),
            "{body} → {v}"
        );
    }
    // A domain that is not a domain: refused by the registry, nothing created.
    let (st, v) = api
        .call(
            &admin,
            Method::POST,
            "/api/v1/projects",
            Some(json!({"name": "x", "domains": ["not a domain"]})),
        )
        .await;
    // The right shape with a value refused: 422, the kind and field from the registry.
    assert_eq!(st, StatusCode::UNPROCESSABLE_ENTITY, "{v}");
    assert_eq!(v["error"]["code"], "invalid", "{v}");
    assert_eq!(v["error"]["field"], "domain", "{v}");
    // Not JSON at all.
    let resp = api
        .http
        .post(format!("{}/api/v1/projects", api.base))
        .bearer_auth(&admin)
        .header("content-type", "application/json")
        .body("{not json")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::BAD_REQUEST);
    let after = api
        .call(&admin, Method::GET, "/api/v1/projects", None)
        .await
        .1;
    assert_eq!(before, after, "a refused request changed something");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn viewers_read_and_cannot_change_and_strangers_get_401() {
    let relay = relay_with_api("");
    let api = Api::new(&relay);
    let viewer = admin_token(&relay, "viewer");
    let (_, token) = relay.add_project("app", &["app.test"]);

    let (st, v) = api
        .call(&viewer, Method::GET, "/api/v1/projects", None)
        .await;
    assert_eq!(st, StatusCode::OK, "{v}");
    assert!(
        !v.to_string().contains(&token),
        "a secret shown to a viewer"
    );
    let (st, v) = api
        .call(
            &viewer,
            Method::POST,
            "/api/v1/projects",
            Some(json!({"name": "x", "domains": ["x.test"]})),
        )
        .await;
    assert_eq!(st, StatusCode::FORBIDDEN, "{v}");
    let (st, _) = api
        .call(
            &viewer,
            Method::POST,
            "/api/v1/admin-tokens",
            Some(json!({"label": "me", "role": "admin"})),
        )
        .await;
    assert_eq!(st, StatusCode::FORBIDDEN);

    // No token, a project token, a made-up admin token: 401 with a JSON error.
    for bad in [
        "",
        token.as_str(),
        "smtpa_AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA",
    ] {
        let (st, v) = api.call(bad, Method::GET, "/api/v1/projects", None).await;
        assert_eq!(st, StatusCode::UNAUTHORIZED, "{bad:?}: {v}");
        assert_eq!(v["error"]["code"], "unauthorized");
    }
    // A revoked admin token stops working.
    let admin = admin_token(&relay, "admin");
    let list = relay.cli_json(&["admin", "token", "list"]);
    let admin_id = list
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["role"] == "admin")
        .unwrap()["id"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(
        !list.to_string().contains(&admin),
        "a listing shows the admin token"
    );
    let (st, _) = api
        .call(
            &admin,
            Method::DELETE,
            &format!("/api/v1/admin-tokens/{admin_id}"),
            None,
        )
        .await;
    assert_eq!(st, StatusCode::OK);
    let (st, _) = api
        .call(&admin, Method::GET, "/api/v1/projects", None)
        .await;
    assert_eq!(st, StatusCode::UNAUTHORIZED);
    // No admin token in the server's log.
    assert!(!relay.server_log().contains(&admin));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_tokens_are_slow_and_cool_down_the_address() {
    let relay = relay_with_api(
        "[throttle]\nauth_failure_delay_ms = 200\nauth_failures_per_user = 2\nauth_failure_window_secs = 600\nauth_cooldown_secs = 600\n",
    );
    let api = Api::new(&relay);
    let admin = admin_token(&relay, "admin");
    for _ in 0..3 {
        let t = Instant::now();
        let (st, _) = api
            .call("smtpa_wrong", Method::GET, "/api/v1/projects", None)
            .await;
        assert_eq!(st, StatusCode::UNAUTHORIZED);
        assert!(
            t.elapsed() >= Duration::from_millis(200),
            "answered too fast"
        );
    }
    let resp = api
        .http
        .get(format!("{}/api/v1/projects", api.base))
        .bearer_auth(&admin)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::TOO_MANY_REQUESTS);
    assert!(resp.headers().get("retry-after").is_some());
    // SMTP clients from the same address are not affected.
    let (id, token) = relay.add_project("app", &["app.test"]);
    let mut c = Client::logged_in(relay.starttls, &relay.pki, &id, &token).await;
    c.submit("noreply@app.test", "user@example.net").await;
}

/// Every route the router has answers (with a JSON error at worst), never the fallback's
/// "no such API route" — the route table and the router agree.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_listed_route_is_served() {
    let relay = relay_with_api("");
    let api = Api::new(&relay);
    let admin = admin_token(&relay, "viewer");
    for (method, path) in smtp_relay::admin_http::api::ROUTES {
        let path = path
            .replace("{id}", "x_nope")
            .replace("{token_id}", "tok_nope")
            .replace("{domain}", "nope.test");
        let method = Method::from_bytes(method.as_bytes()).unwrap();
        let (st, v) = api.call(&admin, method.clone(), &path, None).await;
        assert_ne!(
            v["error"]["message"], "no such API route",
            "{method} {path} is listed but not routed ({st})"
        );
    }
    let (st, v) = api
        .call(&admin, Method::GET, "/api/v1/nothing-here", None)
        .await;
    assert_eq!(st, StatusCode::NOT_FOUND);
    assert_eq!(v["error"]["message"], "no such API route");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openapi_document_describes_exactly_the_routes() {
    let relay = relay_with_api("");
    let api = Api::new(&relay);
    // No token needed: it describes the API and holds nothing secret.
    let (st, doc) = api
        .call("", Method::GET, "/api/v1/openapi.json", None)
        .await;
    assert_eq!(st, StatusCode::OK, "{doc}");
    assert_eq!(doc["openapi"], "3.1.0");
    let mut described: Vec<(String, String)> = doc["paths"]
        .as_object()
        .unwrap()
        .iter()
        .flat_map(|(path, ops)| {
            ops.as_object()
                .unwrap()
                .keys()
                .map(|m| (m.to_ascii_uppercase(), path.clone()))
                .collect::<Vec<_>>()
        })
        .collect();
    let mut routed: Vec<(String, String)> = smtp_relay::admin_http::api::ROUTES
        .iter()
        .map(|(m, p)| (m.to_string(), p.to_string()))
        .collect();
    described.sort();
    routed.sort();
    assert_eq!(described, routed);
}
