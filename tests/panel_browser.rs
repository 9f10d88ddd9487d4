//! The web panel in a real browser: Debian's headless Chromium driven over WebDriver
//! (chromedriver, fantoccini) against the real binary. Logs in with an admin token, creates a
//! project and sees its token exactly once, sends a mail over SMTP with it and finds it on
//! the Messages page with its delivery attempts, uploads a logo and sees it in the sandboxed
//! branding preview, runs send-test and reads its result, generates a DKIM key, makes an
//! admin token; and checks that script-carrying names, labels, subjects, From display names
//! and upstream replies show as text and run nothing on every page. Saves a screenshot of
//! each page under `target/panel-screenshots/`.
//!
//! Needs the Debian packages `chromium` and `chromium-driver` (scripts/test-packages.txt);
//! without them the test fails saying so.

mod support;

use std::path::PathBuf;
use std::time::{Duration, Instant};

use fantoccini::{Client, Locator};
use support::browser::{browser, shot};
use support::panel::{admin_http_addr, admin_token};
use support::relay::{Relay, RelayOptions};
use support::upstream::{Script, TestUpstream, UpstreamOptions};

/// No alert is open: a payload that ran would have opened one.
async fn no_alert(c: &Client, page: &str) {
    if let Ok(text) = c.get_alert_text().await {
        panic!("a script ran on {page}: alert({text})");
    }
}

const XSS_SCRIPT: &str = "<script>alert(1)</script>";
const XSS_IMG: &str = "\"><img src=x onerror=alert(1)>";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn panel_in_chromium_login_project_token_once_message_and_no_xss() {
    // The upstream refuses one recipient with a reply carrying the payloads: the panel
    // shows upstream replies, so they must come out as text.
    let up = TestUpstream::start(UpstreamOptions::default().with_script(
        Script::default().with_rcpt(
            "bounce@example.net",
            &format!("550 5.1.1 {XSS_SCRIPT} {XSS_IMG} no such user"),
        ),
    ))
    .await;
    let pki = support::certs::TestPki::generate();
    let relay = Relay::start_with_upstream(
        up.port(),
        "none",
        &pki,
        RelayOptions {
            extra_config: "[admin_http]\naddress = \"127.0.0.1:0\"\n\n\
                           [limits]\nper_minute = 100\nper_day = 1000\nmax_connections = 0\n"
                .into(),
            ..Default::default()
        },
    );
    let token = admin_token(&relay, "admin");
    let base = format!("http://{}", admin_http_addr(&relay));
    let (_driver, c) = browser().await;

    // Log in.
    c.goto(&format!("{base}/")).await.unwrap();
    assert!(c.current_url().await.unwrap().as_str().ends_with("/login"));
    shot(&c, "login").await;
    if let Err(e) = support::browser::submit_token(&c, &token).await {
        shot(&c, "failed").await;
        panic!(
            "login did not reach the overview ({e}) at {:?}: {}\n{}",
            c.current_url().await,
            c.source().await.unwrap_or_default(),
            relay.server_log()
        );
    }
    assert!(!c.source().await.unwrap().contains(&token));

    // Create a project whose name and token label are script payloads.
    c.goto(&format!("{base}/projects")).await.unwrap();
    let form = c
        .form(Locator::Css("form[action='/projects']"))
        .await
        .unwrap();
    form.set_by_name("name", &format!("Shop {XSS_SCRIPT}"))
        .await
        .unwrap();
    form.set_by_name("domains", "shop.test").await.unwrap();
    form.set_by_name("label", XSS_IMG).await.unwrap();
    form.submit().await.unwrap();
    let reveal = match c.wait().for_element(Locator::Css(".reveal .token")).await {
        Ok(e) => e,
        Err(e) => {
            shot(&c, "failed").await;
            panic!(
                "no token shown ({e}): {}",
                c.source().await.unwrap_or_default()
            );
        }
    };
    let project_token = reveal.text().await.unwrap();
    assert!(project_token.starts_with("smtpr_"), "{project_token}");
    let url = c.current_url().await.unwrap();
    let id = url.path().trim_start_matches("/projects/").to_string();
    no_alert(&c, "project").await;
    shot(&c, "project-new-token").await;
    let h1 = c
        .find(Locator::Css("h1"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert_eq!(h1, format!("Shop {XSS_SCRIPT}"), "the name shows as text");

    // A reload no longer shows the token.
    c.refresh().await.unwrap();
    c.wait().for_element(Locator::Css("h1")).await.unwrap();
    assert!(c.find(Locator::Css(".reveal")).await.is_err());
    assert!(!c.source().await.unwrap().contains(&project_token));
    assert!(c.find_all(Locator::Css("img")).await.unwrap().is_empty());
    no_alert(&c, "project").await;
    shot(&c, "project-reload").await;

    // Mail over SMTP with that token, with payloads in the subject and the From display
    // name; the upstream refuses it with a reply carrying them too.
    let mut smtp =
        support::client::Client::logged_in(relay.starttls, &relay.pki, &id, &project_token).await;
    let display = XSS_IMG.replace('"', "\\\"");
    let body = format!(
        "From: \"{display}\" <noreply@shop.test>\r\nTo: <bounce@example.net>\r\n\
         Subject: {XSS_SCRIPT}\r\nMIME-Version: 1.0\r\n\
         Content-Type: text/plain; charset=utf-8\r\n\r\nHello\r\n"
    );
    let r = smtp
        .send("noreply@shop.test", &["bounce@example.net"], &body)
        .await;
    assert_eq!(r.code, 250, "{r:?}");
    let queued = r.queued_id();
    relay.wait_state(&queued, &["failed"], Duration::from_secs(30));
    let r = smtp
        .send("noreply@shop.test", &["user@example.net"], &body)
        .await;
    assert_eq!(r.code, 250, "{r:?}");

    // The Messages page lists it; its page shows the envelope as text.
    c.goto(&format!("{base}/messages?project={id}"))
        .await
        .unwrap();
    let link = c
        .find(Locator::Css(&format!("a[href='/messages/{queued}']")))
        .await
        .expect("the message on the Messages page");
    let page = c.source().await.unwrap();
    assert!(
        page.contains("&lt;script&gt;alert(1)&lt;/script&gt;"),
        "{page}"
    );
    assert!(
        !page.contains(XSS_SCRIPT) && !page.contains(XSS_IMG),
        "{page}"
    );
    assert!(c.find_all(Locator::Css("img")).await.unwrap().is_empty());
    no_alert(&c, "messages").await;
    shot(&c, "messages").await;
    link.click().await.unwrap();
    c.wait()
        .for_element(Locator::Css("dl.facts"))
        .await
        .unwrap();
    let text = c
        .find(Locator::Css("main"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        text.contains(&queued) && text.contains(XSS_SCRIPT),
        "{text}"
    );
    // Subject, From display name and the upstream's reply, each as text; the attempt is there.
    assert!(
        text.contains("Delivery attempts") && text.contains("Header fields"),
        "{text}"
    );
    assert!(
        text.contains(&format!("{XSS_IMG} <noreply@shop.test>")),
        "{text}"
    );
    assert!(
        text.contains(&format!("550 5.1.1 {XSS_SCRIPT} {XSS_IMG} no such user")),
        "{text}"
    );
    let attempts = c
        .find_all(Locator::Css("table.attempts tbody tr"))
        .await
        .unwrap();
    assert_eq!(attempts.len(), 1, "one attempt, refused");
    assert!(c.find_all(Locator::Css("img")).await.unwrap().is_empty());
    no_alert(&c, "message").await;
    shot(&c, "message").await;

    // The Messages filters: a search for the subject finds it, a state filter narrows.
    c.goto(&format!("{base}/messages?q=alert&state=failed"))
        .await
        .unwrap();
    c.find(Locator::Css(&format!("a[href='/messages/{queued}']")))
        .await
        .expect("found by subject search");
    no_alert(&c, "messages search").await;
    shot(&c, "messages-filtered").await;

    // The overview counts it.
    c.goto(&format!("{base}/")).await.unwrap();
    c.wait().for_element(Locator::Css(".stats")).await.unwrap();
    no_alert(&c, "overview").await;
    shot(&c, "overview").await;
    let text = c
        .find(Locator::Css("main"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(text.contains(&format!("Shop {XSS_SCRIPT}")), "{text}");

    // The project page: limits with what is used, the recent messages.
    c.goto(&format!("{base}/projects/{id}")).await.unwrap();
    let text = c
        .find(Locator::Css("main"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(text.contains("100 messages per minute"), "{text}");
    assert!(text.contains("bounce@example.net"), "{text}");
    no_alert(&c, "project").await;
    shot(&c, "project").await;
    // Recent messages show subject and From as the Messages page does, as text.
    let recent = c
        .find(Locator::XPath("//div[h2[text()='Recent messages']]"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(recent.contains(XSS_SCRIPT), "{recent}");
    assert!(!recent.contains("(no subject)"), "{recent}");
    // The refused recipient is on the suppression list, the upstream's reply as its reason,
    // shown as text.
    let card = c.find(Locator::Css("#suppressions")).await.unwrap();
    let text = card.text().await.unwrap();
    assert!(text.contains("bounce@example.net"), "{text}");
    assert!(text.contains(XSS_SCRIPT), "{text}");
    assert!(c.find_all(Locator::Css("img")).await.unwrap().is_empty());
    c.execute(
        "document.getElementById('suppressions').scrollIntoView()",
        vec![],
    )
    .await
    .unwrap();
    shot(&c, "project-suppressions").await;

    // Sandbox mode from the page: a mail is captured and listed (its subject as text), and
    // released for real with the button; then back to live.
    // A button of the page, then the notice the redirect back shows. Waiting for that
    // notice's own words: after an earlier action the old page has a notice too.
    let click = |label: &'static str, notice: &'static str| {
        let c = &c;
        async move {
            c.find(Locator::XPath(&format!("//button[text()='{label}']")))
                .await
                .unwrap()
                .click()
                .await
                .unwrap();
            let deadline = Instant::now() + Duration::from_secs(15);
            loop {
                if let Ok(n) = c.find(Locator::Css(".notice.ok")).await
                    && n.text().await.is_ok_and(|t| t.contains(notice))
                {
                    break;
                }
                assert!(Instant::now() < deadline, "{label}: no notice {notice:?}");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    };
    click("Switch to sandbox", "Sandbox mode").await;
    let r = smtp
        .send("noreply@shop.test", &["user@example.net"], &body)
        .await;
    assert_eq!(r.code, 250, "{r:?}");
    c.refresh().await.unwrap();
    let text = c
        .find(Locator::Css("#sandbox"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(text.contains("1 captured"), "{text}");
    assert!(text.contains(XSS_SCRIPT), "{text}");
    assert!(c.find_all(Locator::Css("img")).await.unwrap().is_empty());
    no_alert(&c, "project sandbox").await;
    c.execute(
        "document.getElementById('sandbox').scrollIntoView()",
        vec![],
    )
    .await
    .unwrap();
    shot(&c, "project-sandbox").await;
    click("Release", "Released").await;
    relay.wait_state(&r.queued_id(), &["delivered"], Duration::from_secs(30));
    click("Switch to live", "Live mode").await;
    assert!(c.find(Locator::Css("#sandbox")).await.is_err());

    c.goto(&format!("{base}/projects")).await.unwrap();
    no_alert(&c, "projects").await;
    shot(&c, "projects").await;

    // Branding: upload a logo, preview it (unsaved) in the sandboxed frame, then save.
    c.goto(&format!("{base}/projects/{id}/branding"))
        .await
        .unwrap();
    let logo = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/branding/logo.png");
    c.find(Locator::Css("input[name=display_name]"))
        .await
        .unwrap()
        .send_keys("Acme Shop")
        .await
        .unwrap();
    c.find(Locator::Css("input[name=contact_email]"))
        .await
        .unwrap()
        .send_keys("help@shop.test")
        .await
        .unwrap();
    c.find(Locator::Css("input[name=logo]"))
        .await
        .unwrap()
        .send_keys(logo.to_str().unwrap())
        .await
        .unwrap();
    c.find(Locator::Css("button[formtarget=preview]"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    let frame = c.find(Locator::Css("iframe.preview")).await.unwrap();
    assert_eq!(frame.attr("sandbox").await.unwrap().as_deref(), Some(""));
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        c.enter_frame(0).await.unwrap();
        let imgs = c.find_all(Locator::Css("img")).await.unwrap_or_default();
        let mut logo_shown = false;
        for i in &imgs {
            if i.attr("src")
                .await
                .ok()
                .flatten()
                .is_some_and(|s| s.starts_with("data:image/png;base64,"))
            {
                logo_shown = true;
            }
        }
        let text = c
            .find(Locator::Css("body"))
            .await
            .unwrap()
            .text()
            .await
            .unwrap_or_default();
        c.enter_parent_frame().await.unwrap();
        if logo_shown && text.contains("Reset your password") && text.contains("Acme Shop") {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the preview never showed the uploaded logo: {text}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    no_alert(&c, "branding").await;
    shot(&c, "branding-preview").await;
    let v = relay.cli_json(&["project", "show", &id]);
    assert!(v["branding"].is_null(), "the preview saved something: {v}");
    c.find(Locator::Css("input[name=logo]"))
        .await
        .unwrap()
        .send_keys(logo.to_str().unwrap())
        .await
        .unwrap();
    c.find(Locator::Css("button.primary[type=submit]"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    c.wait()
        .for_element(Locator::Css(".notice.ok"))
        .await
        .unwrap();
    let v = relay.cli_json(&["project", "show", &id]);
    assert_eq!(v["branding"]["logo"]["content_type"], "image/png", "{v}");
    shot(&c, "branding-saved").await;
    c.goto(&format!("{base}/branding")).await.unwrap();
    no_alert(&c, "branding list").await;
    shot(&c, "branding-list").await;

    // Send test: through the project's route, the outcome in plain words.
    c.goto(&format!("{base}/send-test")).await.unwrap();
    c.find(Locator::Css("input[name=to]"))
        .await
        .unwrap()
        .send_keys("ops@example.net")
        .await
        .unwrap();
    c.find(Locator::Css("form[action='/send-test'] button.primary"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    let result = c
        .wait()
        .for_element(Locator::Css("#send-test-result"))
        .await
        .expect("a send-test result")
        .text()
        .await
        .unwrap();
    assert!(
        result.starts_with("Delivered.") && result.contains("delivered through upstream test: 250"),
        "{result}"
    );
    no_alert(&c, "send-test").await;
    shot(&c, "send-test").await;

    // DKIM: generate a key; its DNS record is shown in a read-only field.
    c.goto(&format!("{base}/dkim")).await.unwrap();
    let form = c
        .form(Locator::Css("form[action='/dkim/keys']"))
        .await
        .unwrap();
    form.set_by_name("algorithm", "ed25519").await.unwrap();
    form.set_by_name("selector", "s2026").await.unwrap();
    form.submit().await.unwrap();
    c.wait()
        .for_element(Locator::Css(".notice.ok"))
        .await
        .unwrap();
    let mut values = Vec::new();
    for rec in c
        .find_all(Locator::Css("textarea.record[readonly]"))
        .await
        .unwrap()
    {
        values.push(rec.prop("value").await.unwrap().unwrap_or_default());
    }
    assert!(
        values.iter().any(|v| v.starts_with("v=DKIM1; k=ed25519")),
        "{values:?}"
    );
    no_alert(&c, "dkim").await;
    shot(&c, "dkim").await;

    // Admin tokens: a new one is revealed once.
    c.goto(&format!("{base}/admin-tokens")).await.unwrap();
    let form = c
        .form(Locator::Css("form[action='/admin-tokens']"))
        .await
        .unwrap();
    form.set_by_name("label", "deploy script").await.unwrap();
    form.submit().await.unwrap();
    let t = c
        .wait()
        .for_element(Locator::Css(".reveal .token"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(t.starts_with("smtpa_"), "{t}");
    shot(&c, "admin-tokens").await;
    c.refresh().await.unwrap();
    assert!(!c.source().await.unwrap().contains(&t), "shown once");

    // The overview after all that: the chart and the upstream's state.
    c.goto(&format!("{base}/")).await.unwrap();
    c.wait()
        .for_element(Locator::Css("svg.chart"))
        .await
        .unwrap();
    no_alert(&c, "overview").await;
    shot(&c, "overview-chart").await;
    c.goto(&format!("{base}/projects/{id}/delete"))
        .await
        .unwrap();
    shot(&c, "project-delete").await;

    c.close().await.unwrap();
}
