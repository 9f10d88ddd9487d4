//! Branding over HTTP: settings and logo through the JSON API (a too-large logo is a 413, a
//! bad one a 422 naming the field, neither changes anything), the preview — a sample
//! password-reset mail branded by the real transform, for stored settings and for unsaved
//! ones — and the panel's Branding page: its multipart form with a logo upload, and the
//! preview document with its own sandboxing CSP inside a sandboxed iframe.

mod support;

use std::path::Path;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use reqwest::{Method, StatusCode};
use serde_json::json;
use support::api::Api;
use support::panel::{Panel, admin_token, csrf_of};
use support::relay::{Relay, RelayOptions};

fn logo() -> Vec<u8> {
    std::fs::read(Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/branding/logo.png"))
        .expect("logo fixture")
}

fn relay() -> Relay {
    Relay::start(RelayOptions {
        extra_config: "[admin_http]\naddress = \"127.0.0.1:0\"\n".into(),
        ..Default::default()
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn branding_settings_and_preview_over_the_api() {
    let relay = relay();
    let (id, _) = relay.add_project("shop", &["shop.test"]);
    let api = Api::new(&relay);
    let admin = admin_token(&relay, "admin");
    let path = format!("/api/v1/projects/{id}/branding");

    // Nothing yet: null, and no preview to show.
    let (st, v) = api.get(&admin, &path).await;
    assert_eq!((st, v.is_null()), (StatusCode::OK, true), "{v}");
    let (st, v) = api
        .call(&admin, Method::POST, &format!("{path}/preview"), None)
        .await;
    assert_eq!(st, StatusCode::NOT_FOUND, "{v}");

    // Unsaved changes preview without storing anything.
    let (st, v) = api
        .call(
            &admin,
            Method::POST,
            &format!("{path}/preview"),
            Some(json!({"display_name": "Acme <Shop>", "contact_email": "help@shop.test"})),
        )
        .await;
    assert_eq!(st, StatusCode::OK, "{v}");
    let html = v["html"].as_str().unwrap();
    assert!(html.contains("Reset your password"), "{html}");
    assert!(
        html.contains("Acme &lt;Shop&gt;"),
        "escaped by the template: {html}"
    );
    assert!(html.contains("help@shop.test"), "{html}");
    assert!(
        v["message"].as_str().unwrap().starts_with("Received:")
            || v["message"].as_str().unwrap().contains("MIME-Version"),
        "{v}"
    );
    let (_, v) = api.get(&admin, &path).await;
    assert!(v.is_null(), "a preview stored something: {v}");

    // Too large: 413 naming the logo; not a picture: 422 naming the logo. Nothing stored.
    let big = STANDARD.encode([logo(), vec![0u8; 210 * 1024]].concat());
    let (st, v) = api
        .call(
            &admin,
            Method::PUT,
            &path,
            Some(json!({"display_name": "Acme", "logo": big})),
        )
        .await;
    assert_eq!(st, StatusCode::PAYLOAD_TOO_LARGE, "{v}");
    assert_eq!(
        (v["error"]["code"].as_str(), v["error"]["field"].as_str()),
        (Some("too_large"), Some("logo"))
    );
    let (st, v) = api
        .call(
            &admin,
            Method::PUT,
            &path,
            Some(json!({"display_name": "Acme", "logo": STANDARD.encode("not a picture")})),
        )
        .await;
    assert_eq!(st, StatusCode::UNPROCESSABLE_ENTITY, "{v}");
    assert_eq!(v["error"]["field"], "logo");
    let (_, v) = api.get(&admin, &path).await;
    assert!(v.is_null(), "{v}");

    // Saved with a logo: the preview shows it inline as a data: URL.
    let (st, v) = api
        .call(
            &admin,
            Method::PUT,
            &path,
            Some(json!({"display_name": "Acme", "logo": STANDARD.encode(logo())})),
        )
        .await;
    assert_eq!(st, StatusCode::OK, "{v}");
    assert_eq!(v["logo"]["content_type"], "image/png");
    let (st, v) = api
        .call(&admin, Method::POST, &format!("{path}/preview"), None)
        .await;
    assert_eq!(st, StatusCode::OK, "{v}");
    let html = v["html"].as_str().unwrap();
    assert!(html.contains("src=\"data:image/png;base64,"), "{html}");
    assert!(!html.contains("cid:"), "{html}");
    // The CLI previews the same way, saving nothing.
    let out = relay.cli(&[
        "project",
        "branding",
        &id,
        "--preview",
        "--display-name",
        "Other Co",
    ]);
    let mime = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        mime.contains("Subject: Reset your password") && mime.contains("Other Co"),
        "{mime}"
    );
    let v = relay.cli_json(&["project", "show", &id]);
    assert_eq!(v["branding"]["display_name"], "Acme", "{v}");

    let (st, _) = api
        .call(
            &admin,
            Method::POST,
            "/api/v1/projects/nope/branding/preview",
            None,
        )
        .await;
    assert_eq!(st, StatusCode::NOT_FOUND);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn branding_page_uploads_a_logo_and_previews_in_a_sandbox() {
    let relay = relay();
    let (id, _) = relay.add_project("shop", &["shop.test"]);
    let admin = admin_token(&relay, "admin");
    let mut panel = Panel::new(&relay);
    panel.login(&admin).await;
    let page = format!("/projects/{id}/branding");
    let (st, html) = panel.page(&page).await;
    assert_eq!(st, StatusCode::OK);
    assert!(html.contains("enctype=\"multipart/form-data\""), "{html}");
    assert!(
        html.contains("<iframe class=\"preview\" name=\"preview\""),
        "{html}"
    );
    assert!(html.contains("sandbox=\"\""), "{html}");
    let csrf = csrf_of(&html);

    let png = logo();
    let mut fields: Vec<(&str, Option<&str>, &[u8])> = vec![
        ("display_name", None, b"Acme Shop"),
        ("contact_email", None, b"help@shop.test"),
        ("logo", Some("acme.png"), &png),
    ];
    let without_csrf = fields.clone();
    fields.push(("csrf", None, csrf.as_bytes()));
    // Without the CSRF token the upload is refused.
    let r = panel.post_multipart(&page, &without_csrf).await;
    assert_eq!(r.status(), StatusCode::FORBIDDEN);

    // Preview changes: the branded sample with the uploaded logo, nothing stored yet.
    let r = panel
        .post_multipart(&format!("{page}/preview"), &fields)
        .await;
    assert_eq!(r.status(), StatusCode::OK);
    let csp = r.headers()["content-security-policy"]
        .to_str()
        .unwrap()
        .to_string();
    assert!(
        csp.starts_with("sandbox;") && csp.contains("default-src 'none'"),
        "{csp}"
    );
    assert!(csp.contains("frame-ancestors 'self'"), "{csp}");
    let body = r.text().await.unwrap();
    assert!(
        body.contains("Acme Shop") && body.contains("data:image/png;base64,"),
        "{body}"
    );
    let v = relay.cli_json(&["project", "show", &id]);
    assert!(v["branding"].is_null(), "{v}");

    // Save: stored, with the logo; the preview URL now shows it.
    let r = panel.post_multipart(&page, &fields).await;
    assert_eq!(r.status(), StatusCode::SEE_OTHER);
    let v = relay.cli_json(&["project", "show", &id]);
    assert_eq!(v["branding"]["logo"]["content_type"], "image/png", "{v}");
    let (_, html) = panel.page(&page).await;
    assert!(html.contains("Branding saved."), "{html}");
    assert!(html.contains("Current logo: image/png"), "{html}");
    let (st, body) = panel.page(&format!("{page}/preview")).await;
    assert_eq!(st, StatusCode::OK);
    assert!(body.contains("data:image/png;base64,"));
    let (_, html) = panel.page("/branding").await;
    assert!(
        html.contains("Acme Shop") && html.contains(">on<"),
        "{html}"
    );
}
