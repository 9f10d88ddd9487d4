//! End to end: branding set with the CLI on the running server, a message through the relay,
//! and the upstream receives it branded (checked with mail-parser and Python's email package);
//! logo validation, `--off`, `project show`, and the 554 for hostile nesting.

mod support;

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use mail_parser::{MessageParser, MimeHeaders, PartType};
use serde_json::json;
use support::certs::TestPki;
use support::client::Client;
use support::relay::{Relay, RelayOptions, smtp_upstream};
use support::upstream::{TestUpstream, UpstreamOptions, data_problems};

fn logo() -> Vec<u8> {
    std::fs::read(Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/branding/logo.png"))
        .unwrap()
}

const MESSAGE: &str = concat!(
    "From: Shop <noreply@shop.test>\r\n",
    "To: <alice@example.net>\r\n",
    "Subject: Welcome\r\n",
    "MIME-Version: 1.0\r\n",
    "Content-Type: multipart/alternative; boundary=\"alt\"\r\n",
    "\r\n",
    "--alt\r\n",
    "Content-Type: text/plain; charset=utf-8\r\n",
    "\r\n",
    "Welcome to Shop.\r\n",
    "--alt\r\n",
    "Content-Type: text/html; charset=utf-8\r\n",
    "\r\n",
    "<html><body><p>Welcome to <b>Shop</b>.</p></body></html>\r\n",
    "--alt--\r\n",
);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn branded_message_reaches_upstream() {
    let upstream_pki = TestPki::generate();
    let up = TestUpstream::start(UpstreamOptions::starttls(&upstream_pki)).await;
    let tmp = tempfile::tempdir().unwrap();
    let files = upstream_pki.write_to(tmp.path());
    let relay = Relay::start(RelayOptions {
        upstreams: Some(smtp_upstream(up.port(), "starttls", &files.ca, None)),
        ..Default::default()
    });
    let (id, token) = relay.add_project("shop", &["shop.test"]);

    // Bad logos are refused by the server, whatever the file is called.
    let bad = [
        ("logo.svg", b"<?xml version=\"1.0\"?><svg xmlns=\"http://www.w3.org/2000/svg\" onload=\"alert(1)\"/>".to_vec(), "SVG"),
        ("logo.png", b"this is not a picture".to_vec(), "not a PNG, JPEG or GIF"),
        ("big.png", [logo(), vec![0u8; 210 * 1024]].concat(), "200 KiB"),
    ];
    for (name, bytes, expected) in bad {
        let path = tmp.path().join(name);
        std::fs::write(&path, bytes).unwrap();
        let out = relay.cli(&[
            "project",
            "branding",
            &id,
            "--display-name",
            "Acme",
            "--logo",
            path.to_str().unwrap(),
        ]);
        assert!(!out.status.success(), "{name} accepted");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(expected), "{name}: {err}");
    }
    let show = relay.cli_json(&["project", "show", &id]);
    assert!(show["branding"].is_null(), "{show:#}");

    let logo_path = tmp.path().join("acme-logo.png");
    std::fs::write(&logo_path, logo()).unwrap();
    let set = relay.cli_json(&[
        "project",
        "branding",
        &id,
        "--logo",
        logo_path.to_str().unwrap(),
        "--display-name",
        "Acme & Co",
        "--contact-email",
        "help@acme.test",
        "--contact-phone",
        "+1 555 0100",
    ]);
    assert_eq!(set["enabled"], true, "{set:#}");
    assert_eq!(set["logo"]["content_type"], "image/png");
    assert_eq!(set["logo"]["width"], 64);
    let show = relay.cli_json(&["project", "show", &id]);
    assert_eq!(show["branding"]["display_name"], "Acme & Co");
    let text = relay.cli(&["project", "show", &id]);
    let text = String::from_utf8_lossy(&text.stdout);
    assert!(
        text.contains("branding  on — Acme & Co; logo image/png"),
        "{text}"
    );

    let mut c = Client::logged_in(relay.starttls, &relay.pki, &id, &token).await;
    let r = c
        .send("noreply@shop.test", &["alice@example.net"], MESSAGE)
        .await;
    assert_eq!(r.code, 250, "{r:?}");

    // 10,000 nested multiparts: refused with 554 5.6.0; the session and server go on.
    let mut deep = String::from("From: Shop <noreply@shop.test>\r\nMIME-Version: 1.0\r\n");
    for i in 0..10_000 {
        deep.push_str(&format!(
            "Content-Type: multipart/mixed; boundary=\"d{i}\"\r\n\r\n--d{i}\r\n"
        ));
    }
    deep.push_str("Content-Type: text/plain\r\n\r\ndeep\r\n");
    let r = c
        .send("noreply@shop.test", &["alice@example.net"], &deep)
        .await;
    assert_eq!(r.code, 554, "{r:?}");
    assert!(r.text.starts_with("5.6.0"), "{r:?}");

    // Off: the next message leaves as it came (apart from the Received header).
    let off = relay.cli_json(&["project", "branding", &id, "--off"]);
    assert_eq!(off["enabled"], false);
    let r = c
        .send("noreply@shop.test", &["alice@example.net"], MESSAGE)
        .await;
    assert_eq!(r.code, 250, "{r:?}");

    let got = up.wait_for(2, Duration::from_secs(30)).await;
    assert_eq!(got.len(), 2);
    let (branded, plain) = (&got[0], &got[1]);
    assert!(plain.data.ends_with(MESSAGE.as_bytes()), "{}", plain.text());
    assert!(!plain.text().contains("X-Smtp-Relay-Branding"));

    for m in &got {
        assert!(
            data_problems(&m.raw).is_empty(),
            "{:?}",
            data_problems(&m.raw)
        );
    }
    let text = branded.text();
    assert!(
        text.contains(&format!("\r\nX-Smtp-Relay-Branding: {id}\r\n")),
        "{text}"
    );
    let parsed = MessageParser::new().parse(&branded.data).expect("parses");
    let html = parsed.body_html(0).expect("html body").into_owned();
    assert!(
        html.contains("smtp-relay-branding:header") && html.contains("smtp-relay-branding:footer"),
        "{html}"
    );
    assert!(
        html.contains("alt=\"Acme &amp; Co\"") && html.contains("mailto:help@acme.test"),
        "{html}"
    );
    let cid = html
        .split("src=\"cid:")
        .nth(1)
        .unwrap()
        .split('"')
        .next()
        .unwrap();
    let image = parsed
        .parts
        .iter()
        .find(|p| p.content_id() == Some(cid))
        .expect("cid resolves");
    assert!(matches!(
        image.body,
        PartType::InlineBinary(_) | PartType::Binary(_)
    ));
    assert_eq!(image.contents(), logo().as_slice());
    let plain_text = parsed.body_text(0).unwrap();
    assert!(
        plain_text.contains("Welcome to Shop.")
            && plain_text.contains("-- \r\nAcme & Co\r\nhelp@acme.test | +1 555 0100"),
        "{plain_text}"
    );

    // And Python's email package agrees on what the upstream received.
    let dir = tmp.path().join("python");
    std::fs::create_dir(&dir).unwrap();
    std::fs::write(dir.join("logo.png"), logo()).unwrap();
    std::fs::write(dir.join("sent.in"), MESSAGE).unwrap();
    std::fs::write(dir.join("received.out"), &branded.data).unwrap();
    std::fs::write(
        dir.join("manifest.json"),
        json!([{ "input": "sent.in", "output": "received.out", "untouched": false,
                 "counts": [1, 1, 1], "text_mark": "Acme & Co", "logo": true }])
        .to_string(),
    )
    .unwrap();
    let run = Command::new("python3")
        .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/support/check_branding.py"))
        .arg(&dir)
        .output()
        .expect("python3");
    assert!(
        run.status.success(),
        "{}",
        String::from_utf8_lossy(&run.stdout)
    );
}
