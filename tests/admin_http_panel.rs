//! The web panel over real HTTP against the real binary, without a browser: login and the
//! session cookie's attributes, the security headers, CSRF (token and Origin /
//! Sec-Fetch-Site), viewers refused any change, session expiry and logout, a project token
//! shown exactly once, and the project pages' changes reaching the registry.

mod support;

use std::time::Duration;

use reqwest::StatusCode;
use support::client::{Client, Reply};
use support::panel::{Panel, admin_token, csrf_of};
use support::relay::{Relay, RelayOptions};

fn relay_with_panel(extra: &str) -> Relay {
    Relay::start(RelayOptions {
        extra_config: format!("[admin_http]\naddress = \"127.0.0.1:0\"\n{extra}"),
        ..Default::default()
    })
}

/// A relay with the panel, the project `shop` (shop.test), and a panel session of `role`:
/// the relay, the session, the project's id and SMTP token, and its page's path.
async fn on_project_page(role: &str) -> (Relay, Panel, String, String, String) {
    let relay = relay_with_panel("");
    let (id, project_token) = relay.add_project("shop", &["shop.test"]);
    let token = admin_token(&relay, role);
    let mut panel = Panel::new(&relay);
    panel.login(&token).await;
    let page = format!("/projects/{id}");
    (relay, panel, id, project_token, page)
}

/// MAIL and RCPT to `to` (the RCPT reply), then RSET: the session stays usable.
async fn rcpt(smtp: &mut Client, to: &str) -> Reply {
    assert_eq!(smtp.cmd("MAIL FROM:<noreply@shop.test>").await.code, 250);
    let r = smtp.cmd(&format!("RCPT TO:<{to}>")).await;
    assert_eq!(smtp.cmd("RSET").await.code, 250);
    r
}

/// A message to user@example.net with `subject`, accepted; its id.
async fn send(smtp: &mut Client, subject: &str) -> String {
    let r = smtp
        .send_plain("noreply@shop.test", "user@example.net", subject, "Hi\r\n")
        .await;
    assert_eq!(r.code, 250, "{r:?}");
    r.queued_id()
}

fn location(r: &reqwest::Response) -> &str {
    r.headers()
        .get("location")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn login_cookie_headers_and_logout() {
    let relay = relay_with_panel("");
    let token = admin_token(&relay, "admin");
    let mut panel = Panel::new(&relay);

    // Not logged in: pages send to the login page; the API stays JSON.
    let r = panel.get("/").await;
    assert_eq!(r.status(), StatusCode::SEE_OTHER);
    assert_eq!(location(&r), "/login");
    let (st, html) = panel.page("/login").await;
    assert_eq!(st, StatusCode::OK);
    assert!(html.contains("Admin token"), "{html}");

    // A wrong token: the login page again, no cookie.
    let r = panel.post("/login", &[("token", "smtpa_wrong")]).await;
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    assert!(r.headers().get("set-cookie").is_none());

    let set = panel.login(&token).await;
    // Plain HTTP (loopback only): no Secure, so no __Host- prefix (browsers would drop it).
    assert!(set.starts_with("smtp-relay-session="), "{set}");
    for attr in ["HttpOnly", "SameSite=Strict", "Path=/", "Max-Age=43200"] {
        assert!(set.contains(attr), "{attr} missing in {set}");
    }
    assert!(!set.contains("Secure"), "{set}");
    let session_id = panel.cookie.clone().unwrap();
    let session_id = session_id.split('=').nth(1).unwrap().to_string();
    assert!(session_id.len() >= 43, "{session_id}");

    let r = panel.get("/").await;
    assert_eq!(r.status(), StatusCode::OK);
    let h = r.headers().clone();
    let csp = h["content-security-policy"].to_str().unwrap().to_string();
    assert!(csp.contains("frame-ancestors 'none'"), "{csp}");
    assert!(csp.contains("default-src 'none'"), "{csp}");
    assert!(
        !csp.contains("script-src") && !csp.contains("unsafe-inline"),
        "{csp}"
    );
    assert_eq!(h["x-content-type-options"], "nosniff");
    assert_eq!(h["referrer-policy"], "no-referrer");
    let html = r.text().await.unwrap();
    assert!(
        html.contains("Overview") && !html.contains("<script"),
        "{html}"
    );
    assert!(!html.contains(&token) && !html.contains(&session_id));
    // Paths outside the panel and the API are plain 404s, never counted as failed tokens.
    let failures = || relay.server_log().matches("invalid admin token").count();
    let before = failures();
    for _ in 0..15 {
        assert_eq!(
            panel.get("/robots.txt").await.status(),
            StatusCode::NOT_FOUND
        );
    }
    assert_eq!(failures(), before);
    let css = panel.get("/static/panel.css").await;
    assert_eq!(css.status(), StatusCode::OK);
    assert!(
        css.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/css")
    );

    // Logout needs the CSRF token too, then the old cookie is worth nothing.
    let csrf = panel.csrf().await;
    let r = panel.post("/logout", &[]).await;
    assert_eq!(r.status(), StatusCode::FORBIDDEN);
    let r = panel.post("/logout", &[("csrf", &csrf)]).await;
    assert_eq!(r.status(), StatusCode::SEE_OTHER);
    assert!(
        r.headers()["set-cookie"]
            .to_str()
            .unwrap()
            .contains("Max-Age=0")
    );
    let r = panel.get("/").await;
    assert_eq!(r.status(), StatusCode::SEE_OTHER);
    assert_eq!(location(&r), "/login");

    // Neither the admin token nor the session id is ever logged.
    let log = relay.server_log();
    assert!(log.contains("panel login"), "{log}");
    assert!(!log.contains(&token) && !log.contains(&session_id), "{log}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn over_https_the_cookie_is_secure_and_host_prefixed() {
    let relay = relay_with_panel("tls = true\n");
    let token = admin_token(&relay, "admin");
    let mut panel = Panel::new_tls(&relay);
    let set = panel.login(&token).await;
    assert!(set.starts_with("__Host-smtp-relay-session="), "{set}");
    for attr in ["Secure", "HttpOnly", "SameSite=Strict", "Path=/"] {
        assert!(set.contains(attr), "{attr} missing in {set}");
    }
    assert!(!set.contains("Domain="), "{set}");
    let (st, html) = panel.page("/").await;
    assert_eq!(st, StatusCode::OK);
    assert!(html.contains("Overview"));
    // A form from the plain-HTTP origin of the same host is another origin.
    let csrf = csrf_of(&html);
    let plain = panel.base.replace("https://", "http://");
    let r = panel
        .post_with("/logout", &[("csrf", &csrf)], &[("origin", &plain)])
        .await;
    assert_eq!(r.status(), StatusCode::FORBIDDEN);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn csrf_token_and_origin_are_checked() {
    let relay = relay_with_panel("");
    let token = admin_token(&relay, "admin");
    let mut panel = Panel::new(&relay);
    panel.login(&token).await;
    let csrf = panel.csrf().await;
    let new = [
        ("name", "Shop"),
        ("domains", "shop.test"),
        ("label", "production"),
    ];

    // No token, a wrong token, a foreign Origin, a cross-site fetch: 403, nothing made.
    let own = panel.base.clone();
    let with = |t: &'static str| -> Vec<(&'static str, String)> {
        let mut f: Vec<(&'static str, String)> =
            new.iter().map(|(k, v)| (*k, v.to_string())).collect();
        f.push(("csrf", t.to_string()));
        f
    };
    let mut good = with("");
    good.last_mut().unwrap().1 = csrf.clone();
    type Fields = Vec<(&'static str, String)>;
    let cases: Vec<(Fields, Fields)> = vec![
        (
            new.iter().map(|(k, v)| (*k, v.to_string())).collect(),
            vec![("origin", own.clone())],
        ),
        (with("not-the-token"), vec![("origin", own.clone())]),
        (good.clone(), vec![("origin", "http://evil.example".into())]),
        (good.clone(), vec![("origin", "null".into())]),
        (good.clone(), vec![("sec-fetch-site", "cross-site".into())]),
        (good.clone(), vec![("sec-fetch-site", "same-site".into())]),
    ];
    for (form, headers) in &cases {
        let f: Vec<(&str, &str)> = form.iter().map(|(k, v)| (*k, v.as_str())).collect();
        let h: Vec<(&'static str, &str)> = headers.iter().map(|(k, v)| (*k, v.as_str())).collect();
        let r = panel.post_with("/projects", &f, &h).await;
        assert_eq!(r.status(), StatusCode::FORBIDDEN, "{headers:?}");
    }
    // A login form posted from another site is refused as well (login CSRF).
    let r = panel
        .post_with(
            "/login",
            &[("token", &token)],
            &[("origin", "http://evil.example")],
        )
        .await;
    assert_eq!(r.status(), StatusCode::FORBIDDEN);
    assert_eq!(relay.cli_json(&["project", "list"]), serde_json::json!([]));

    // The panel's own form: made.
    let f: Vec<(&str, &str)> = good.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let r = panel.post("/projects", &f).await;
    assert_eq!(r.status(), StatusCode::SEE_OTHER);
    let list = relay.cli_json(&["project", "list"]);
    assert_eq!(list[0]["name"], "Shop", "{list}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn project_pages_reveal_token_once_and_change_things() {
    let relay = relay_with_panel("");
    let token = admin_token(&relay, "admin");
    let mut panel = Panel::new(&relay);
    panel.login(&token).await;
    let csrf = panel.csrf().await;

    let r = panel
        .post(
            "/projects",
            &[
                ("csrf", &csrf),
                ("name", "Shop"),
                ("domains", "shop.test, mail.shop.test"),
                ("label", "production"),
            ],
        )
        .await;
    assert_eq!(r.status(), StatusCode::SEE_OTHER);
    let page = location(&r).to_string();
    let id = page.trim_start_matches("/projects/").to_string();
    let (st, html) = panel.page(&page).await;
    assert_eq!(st, StatusCode::OK);
    let at = html.find("smtpr_").expect("the new token is shown");
    let project_token: String = html[at..]
        .chars()
        .take_while(|c| c.is_ascii_alphanumeric() || *c == '_' || *c == '-')
        .collect();
    assert!(html.contains("Project created."), "{html}");
    // The token works over SMTP.
    let mut c = Client::logged_in(relay.starttls, &relay.pki, &id, &project_token).await;
    c.submit("noreply@shop.test", "user@example.net").await;

    // A reload no longer shows it, nor does any other page.
    for p in [page.as_str(), "/", "/projects", "/messages"] {
        let (st, html) = panel.page(p).await;
        assert_eq!(st, StatusCode::OK, "{p}");
        assert!(!html.contains(&project_token), "{p} shows the token again");
    }

    // Domains, tokens, max age, disable.
    for (action, field, value) in [
        ("domains", "domain", "news.shop.test"),
        ("domains/remove", "domain", "mail.shop.test"),
        ("tokens", "label", "staging"),
        ("max-age", "max_age_secs", "7200"),
        ("enabled", "enabled", "false"),
    ] {
        panel
            .post_ok(&format!("{page}/{action}"), &csrf, &[(field, value)])
            .await;
    }
    let v = relay.cli_json(&["project", "show", &id]);
    assert_eq!(
        v["domains"],
        serde_json::json!(["shop.test", "news.shop.test"]),
        "{v}"
    );
    assert_eq!(v["tokens"].as_array().unwrap().len(), 2, "{v}");
    assert_eq!(v["max_age_secs"], 7200, "{v}");
    assert_eq!(v["enabled"], false, "{v}");
    let (_, html) = panel.page(&page).await;
    assert!(
        html.contains("staging") && html.contains("disabled"),
        "{html}"
    );
    let staging = v["tokens"][1]["id"].as_str().unwrap().to_string();
    panel
        .post_ok(&format!("{page}/tokens/{staging}/revoke"), &csrf, &[])
        .await;
    assert_eq!(
        relay.cli_json(&["project", "show", &id])["tokens"]
            .as_array()
            .unwrap()
            .len(),
        1
    );

    // A refused change says why on the next page and changes nothing.
    panel
        .post_ok(&format!("{page}/max-age"), &csrf, &[("max_age_secs", "5")])
        .await;
    let (_, html) = panel.page(&page).await;
    assert!(html.contains("too short"), "{html}");

    // Deleting asks for the id typed out first.
    let (st, html) = panel.page(&format!("{page}/delete")).await;
    assert_eq!(st, StatusCode::OK);
    assert!(html.contains("Type the project id"), "{html}");
    panel
        .post_ok(&format!("{page}/delete"), &csrf, &[("confirm", "wrong")])
        .await;
    assert_eq!(
        relay
            .cli_json(&["project", "list"])
            .as_array()
            .unwrap()
            .len(),
        1
    );
    panel
        .post_ok(&format!("{page}/delete"), &csrf, &[("confirm", &id)])
        .await;
    assert_eq!(relay.cli_json(&["project", "list"]), serde_json::json!([]));
    let (st, _) = panel.page(&page).await;
    assert_eq!(st, StatusCode::NOT_FOUND);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn viewer_sees_no_buttons_and_cannot_change() {
    let (relay, panel, id, _, page) = on_project_page("viewer").await;
    let (st, html) = panel.page(&page).await;
    assert_eq!(st, StatusCode::OK);
    // The only form that posts is the logout button.
    assert_eq!(html.matches("method=\"post\"").count(), 1, "{html}");
    assert!(html.contains("action=\"/logout\""));
    let (_, html) = panel.page("/projects").await;
    assert!(!html.contains("New project"), "{html}");
    let csrf = csrf_of(&html);

    for (path, form) in [
        (
            "/projects".to_string(),
            vec![("name", "x"), ("domains", "x.test")],
        ),
        (format!("{page}/enabled"), vec![("enabled", "false")]),
        (format!("{page}/delete"), vec![("confirm", id.as_str())]),
    ] {
        let mut f = form.clone();
        f.push(("csrf", &csrf));
        let r = panel.post(&path, &f).await;
        assert_eq!(r.status(), StatusCode::FORBIDDEN, "{path}");
    }
    let v = relay.cli_json(&["project", "list"]);
    assert_eq!(v.as_array().unwrap().len(), 1);
    assert_eq!(v[0]["enabled"], true);
    // A viewer may still log out.
    let r = panel.post("/logout", &[("csrf", &csrf)]).await;
    assert_eq!(r.status(), StatusCode::SEE_OTHER);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sessions_expire_and_end_with_their_admin_token() {
    // 0.0005 h = 1.8 s.
    let relay = relay_with_panel("session_hours = 0.0005\n");
    let token = admin_token(&relay, "admin");
    let mut panel = Panel::new(&relay);
    let set = panel.login(&token).await;
    assert!(set.contains("Max-Age=1"), "{set}");
    assert_eq!(panel.get("/").await.status(), StatusCode::OK);
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let r = panel.get("/").await;
    assert_eq!(
        r.status(),
        StatusCode::SEE_OTHER,
        "an expired session still works"
    );

    // A session ends when its admin token is revoked, before it expires.
    let relay = relay_with_panel("");
    let v = relay.cli_json(&["admin", "token", "add", "--label", "ops", "--role", "admin"]);
    let mut panel = Panel::new(&relay);
    panel.login(v["token"].as_str().unwrap()).await;
    assert_eq!(panel.get("/").await.status(), StatusCode::OK);
    let token_id = v["admin_token"]["id"].as_str().unwrap();
    relay.cli_json(&["admin", "token", "revoke", token_id]);
    let r = panel.get("/").await;
    assert_eq!(
        r.status(),
        StatusCode::SEE_OTHER,
        "a revoked token's session still works"
    );
}

#[test]
fn session_hours_out_of_range_is_refused_naming_the_key() {
    let relay = relay_with_panel("session_hours = 2\n");
    let config = std::fs::read_to_string(&relay.config_path).unwrap();
    for bad in ["0", "-1", "1000", "\"12\""] {
        let path = relay.dir.path().join("bad.toml");
        std::fs::write(
            &path,
            config.replace("session_hours = 2\n", &format!("session_hours = {bad}\n")),
        )
        .unwrap();
        let out = relay.cli(&["config", "check", path.to_str().unwrap()]);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "session_hours = {bad} accepted");
        assert!(err.contains("session_hours"), "{bad}: {err}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn waiting_messages_can_be_retried_and_deleted_from_their_page() {
    use support::upstream::{Script, TestUpstream, UpstreamOptions};
    let up = TestUpstream::start(UpstreamOptions::default().with_script(
        Script::default().with_rcpt("later@example.net", "451 4.3.0 <b>try</b> later"),
    ))
    .await;
    let pki = support::certs::TestPki::generate();
    let relay = Relay::start_with_upstream(
        up.port(),
        "none",
        &pki,
        RelayOptions {
            extra_config: "[admin_http]\naddress = \"127.0.0.1:0\"\n".into(),
            // Well inside the harness's max age, so a deferred message stays deferred.
            retry_schedule_secs: vec![600],
            ..Default::default()
        },
    );
    let (id, token) = relay.add_project("shop", &["shop.test"]);
    let queued = relay
        .submit(&id, &token, "noreply@shop.test", &["later@example.net"])
        .await;
    relay.wait_state(&queued, &["deferred"], Duration::from_secs(30));

    let admin = admin_token(&relay, "admin");
    let mut panel = Panel::new(&relay);
    panel.login(&admin).await;
    let page = format!("/messages/{queued}");
    let (st, html) = panel.page(&page).await;
    assert_eq!(st, StatusCode::OK);
    assert!(html.contains("&lt;b&gt;try&lt;/b&gt; later"), "{html}");
    assert!(html.contains("Retry now") && html.contains("Delete from queue"));
    // Subject, the attempt with its reply, and the header fields as queued.
    assert!(html.contains("Delivery attempts") && html.contains("Header fields"));
    assert!(html.contains("<td class=\"mono\">test</td>"), "{html}");
    assert!(
        html.contains(">Received</th>") && html.contains(">hello<"),
        "{html}"
    );
    let csrf = csrf_of(&html);

    let r = panel
        .post(&format!("{page}/retry"), &[("csrf", &csrf)])
        .await;
    assert_eq!(r.status(), StatusCode::SEE_OTHER);
    let (_, html) = panel.page(&page).await;
    assert!(html.contains("Retrying now."), "{html}");
    relay.wait_log("\"attempt\":2", 1, Duration::from_secs(30));
    relay.wait_state(&queued, &["deferred"], Duration::from_secs(30));

    let r = panel
        .post(&format!("{page}/delete"), &[("csrf", &csrf)])
        .await;
    assert_eq!(r.status(), StatusCode::SEE_OTHER);
    let v = relay.wait_state(&queued, &["deleted"], Duration::from_secs(10));
    assert_eq!(v["state"], "deleted");
    let (_, html) = panel.page(&page).await;
    assert!(
        !html.contains("Retry now"),
        "a deleted message offers a retry"
    );
    let (_, html) = panel.page("/messages").await;
    assert!(
        html.contains(&format!("href=\"/messages/{queued}\"")),
        "{html}"
    );

    // The filter form: the state, a search, a date range; pages of 50 with an "Older" link.
    for q in [
        "state=deleted",
        "q=hello&state=",
        "recipient=later%40&since=2020-01-01&until=2999-12-31",
    ] {
        let (st, html) = panel.page(&format!("/messages?{q}")).await;
        assert_eq!(st, StatusCode::OK, "{q}");
        assert!(
            html.contains(&format!("href=\"/messages/{queued}\"")),
            "{q}: {html}"
        );
    }
    for q in ["state=delivered", "q=nothing-like-it", "until=2020-01-01"] {
        let (_, html) = panel.page(&format!("/messages?{q}")).await;
        assert!(html.contains("No messages."), "{q}: {html}");
    }
    let (st, html) = panel.page("/messages?since=yesterday").await;
    assert_eq!(st, StatusCode::UNPROCESSABLE_ENTITY);
    assert!(html.contains("not a date"), "{html}");
    let mut c = Client::logged_in(relay.starttls, &relay.pki, &id, &token).await;
    for i in 0..50 {
        let r = c
            .send_plain(
                "noreply@shop.test",
                "later@example.net",
                &format!("n{i}"),
                "x\r\n",
            )
            .await;
        assert_eq!(r.code, 250);
    }
    let (_, html) = panel.page("/messages?recipient=later").await;
    assert!(!html.contains(&format!("href=\"/messages/{queued}\"")));
    let at = html.find("rel=\"next\" href=\"").expect("an Older link") + 17;
    let next = html[at..].split('"').next().unwrap().replace("&amp;", "&");
    assert!(
        next.starts_with("/messages?recipient=later&cursor="),
        "{next}"
    );
    let (_, html) = panel.page(&next).await;
    assert!(
        html.contains(&format!("href=\"/messages/{queued}\"")),
        "{html}"
    );
    assert!(html.contains("Newest") && !html.contains("rel=\"next\""));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_tokens_are_listed_added_once_and_revoked() {
    let relay = relay_with_panel("");
    let admin = admin_token(&relay, "admin");
    let mut panel = Panel::new(&relay);
    panel.login(&admin).await;
    let (st, html) = panel.page("/admin-tokens").await;
    assert_eq!(st, StatusCode::OK);
    assert!(
        html.contains("this session") && html.contains("Create token"),
        "{html}"
    );
    let csrf = csrf_of(&html);

    let r = panel
        .post(
            "/admin-tokens",
            &[
                ("csrf", &csrf),
                ("label", "deploy <script>"),
                ("role", "viewer"),
            ],
        )
        .await;
    assert_eq!(r.status(), StatusCode::SEE_OTHER);
    let (_, html) = panel.page("/admin-tokens").await;
    assert!(html.contains("New admin token"), "{html}");
    assert!(html.contains("deploy &lt;script&gt;"), "{html}");
    let at = html.find("smtpa_").expect("the new token, shown once");
    let token: String = html[at..]
        .chars()
        .take_while(|c| c.is_ascii_alphanumeric() || *c == '_' || *c == '-')
        .collect();
    assert_eq!(token.len(), 6 + 43, "{token}");
    // Shown once: a reload no longer has it; it works as a viewer token.
    let (_, html) = panel.page("/admin-tokens").await;
    assert!(!html.contains(&token) && !html.contains("New admin token"));
    let mut other = Panel::new(&relay);
    other.login(&token).await;
    let (_, html) = other.page("/admin-tokens").await;
    assert!(
        !html.contains("Create token") && !html.contains("Revoke"),
        "a viewer sees no buttons"
    );

    // Revoked from the panel: its session ends.
    let list = relay.cli_json(&["admin", "token", "list"]);
    let id = list
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["label"] == "deploy <script>")
        .unwrap()["id"]
        .as_str()
        .unwrap()
        .to_string();
    let r = panel
        .post(&format!("/admin-tokens/{id}/revoke"), &[("csrf", &csrf)])
        .await;
    assert_eq!(r.status(), StatusCode::SEE_OTHER);
    let (_, html) = panel.page("/admin-tokens").await;
    assert!(html.contains("Admin token revoked"), "{html}");
    let r = other.get("/admin-tokens").await;
    assert_eq!(
        r.status(),
        StatusCode::SEE_OTHER,
        "the revoked token's session ended"
    );
}

/// The project page lists the suppressed recipients (reason shown as text), an admin removes
/// one (mail to it is accepted again) and suppresses another by hand (refused at RCPT with
/// 550 5.1.1 at once); a malformed address is a notice, not a change.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn suppressed_recipients_are_listed_removed_and_added_on_the_project_page() {
    let (relay, panel, id, project_token, page) = on_project_page("admin").await;
    relay.cli(&[
        "suppression",
        "add",
        &id,
        "gone@example.net",
        "--reason",
        "550 5.1.1 <script>alert(1)</script> no such user",
    ]);
    let (st, html) = panel.page(&page).await;
    assert_eq!(st, StatusCode::OK);
    assert!(html.contains("Suppressed recipients"), "{html}");
    assert!(html.contains("gone@example.net"), "{html}");
    assert!(
        html.contains("&lt;script&gt;alert(1)&lt;/script&gt;"),
        "{html}"
    );
    assert!(!html.contains("<script>alert(1)"), "{html}");
    let csrf = csrf_of(&html);

    let mut smtp = Client::logged_in(relay.starttls, &relay.pki, &id, &project_token).await;
    assert_eq!(rcpt(&mut smtp, "gone@example.net").await.code, 550);

    let r = panel
        .post(
            &format!("{page}/suppressions/remove"),
            &[("csrf", &csrf), ("address", "gone@example.net")],
        )
        .await;
    assert_eq!(r.status(), StatusCode::SEE_OTHER);
    assert_eq!(location(&r), page);
    let (_, html) = panel.page(&page).await;
    assert!(
        html.contains("Recipient removed from the suppression list."),
        "{html}"
    );
    assert!(!html.contains("gone@example.net"), "{html}");
    assert_eq!(rcpt(&mut smtp, "gone@example.net").await.code, 250);

    let r = panel
        .post(
            &format!("{page}/suppressions"),
            &[
                ("csrf", &csrf),
                ("address", "asked@example.net"),
                ("reason", ""),
            ],
        )
        .await;
    assert_eq!(r.status(), StatusCode::SEE_OTHER);
    let list = relay.cli_json(&["suppression", "list", &id]);
    let list = list.as_array().unwrap();
    assert_eq!(list.len(), 1, "{list:?}");
    assert_eq!(list[0]["address"], "asked@example.net");
    assert_eq!(list[0]["reason"], "added in the panel");
    let r = rcpt(&mut smtp, "asked@example.net").await;
    assert_eq!(r.code, 550, "{r:?}");
    assert!(r.text.starts_with("5.1.1"), "{r:?}");

    let r = panel
        .post(
            &format!("{page}/suppressions"),
            &[("csrf", &csrf), ("address", "not-an-address")],
        )
        .await;
    assert_eq!(r.status(), StatusCode::SEE_OTHER);
    let (_, html) = panel.page(&page).await;
    assert!(html.contains("notice error"), "{html}");
    assert_eq!(
        relay
            .cli_json(&["suppression", "list", &id])
            .as_array()
            .unwrap()
            .len(),
        1
    );
}

/// Mode, bounce messages and the sandbox from the project page: switch to sandbox, mail is
/// captured and listed (subject as text), Release queues it with its id, Delete all empties
/// the sandbox; bounces on; a bad mode is a notice, not a change.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mode_bounces_and_captured_mail_from_the_project_page() {
    let (relay, panel, id, project_token, page) = on_project_page("admin").await;
    let (_, html) = panel.page(&page).await;
    assert!(html.contains("Switch to sandbox"), "{html}");
    assert!(
        !html.contains("id=\"sandbox\""),
        "a live project without captures has no card"
    );
    let csrf = csrf_of(&html);

    panel
        .post_ok(&format!("{page}/mode"), &csrf, &[("mode", "sandbox")])
        .await;
    assert_eq!(relay.cli_json(&["project", "show", &id])["mode"], "sandbox");
    let (_, html) = panel.page(&page).await;
    assert!(html.contains("Sandbox mode"), "{html}");
    assert!(html.contains("Nothing captured yet."), "{html}");

    let mut smtp = Client::logged_in(relay.starttls, &relay.pki, &id, &project_token).await;
    let captured = send(&mut smtp, "Reset <b>your</b> password").await;
    let (_, html) = panel.page(&page).await;
    assert!(html.contains("1 captured"), "{html}");
    assert!(
        html.contains("Reset &lt;b&gt;your&lt;/b&gt; password"),
        "{html}"
    );
    assert!(html.contains("user@example.net"), "{html}");

    panel
        .post_ok(&format!("{page}/sandbox/{captured}/release"), &csrf, &[])
        .await;
    let (_, html) = panel.page(&page).await;
    assert!(html.contains("Released"), "{html}");
    let list = relay.cli_json(&["sandbox", "list", &id]);
    assert_eq!(list["count"], 0, "{list}");
    relay.wait_state(
        &captured,
        &["queued", "deferred", "delivered", "failed"],
        Duration::from_secs(10),
    );

    send(&mut smtp, "Second").await;
    send(&mut smtp, "Third").await;
    assert_eq!(relay.cli_json(&["sandbox", "list", &id])["count"], 2);
    panel
        .post_ok(&format!("{page}/sandbox/clear"), &csrf, &[])
        .await;
    assert_eq!(relay.cli_json(&["sandbox", "list", &id])["count"], 0);

    panel
        .post_ok(&format!("{page}/bounces"), &csrf, &[("enabled", "true")])
        .await;
    assert_eq!(relay.cli_json(&["project", "show", &id])["bounces"], true);
    let (_, html) = panel.page(&page).await;
    assert!(html.contains("Turn off"), "{html}");

    panel
        .post_ok(&format!("{page}/mode"), &csrf, &[("mode", "staging")])
        .await;
    let (_, html) = panel.page(&page).await;
    assert!(html.contains("notice error"), "{html}");
    assert_eq!(relay.cli_json(&["project", "show", &id])["mode"], "sandbox");
    panel
        .post_ok(&format!("{page}/mode"), &csrf, &[("mode", "live")])
        .await;
    assert_eq!(relay.cli_json(&["project", "show", &id])["mode"], "live");
}
