//! AUTH and sender policy over real sockets: TLS before AUTH, right/wrong/revoked tokens,
//! disabled and unknown projects, sender and header From ownership, and CLI changes taking
//! effect on the running server without a restart.

mod support;

use std::time::Duration;

use support::client::{Client, plain_message};
use support::relay::{Relay, RelayOptions};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auth_only_inside_tls() {
    let relay = Relay::start(RelayOptions::default());
    let (id, token) = relay.add_project("app", &["app.test"]);

    let mut c = Client::connect(relay.starttls).await;
    assert_eq!(c.reply().await.code, 220);
    let ehlo = c.cmd("EHLO vm").await;
    assert_eq!(ehlo.code, 250);
    assert!(ehlo.text.contains("STARTTLS"), "{ehlo:?}");
    assert!(
        !ehlo.text.contains("AUTH"),
        "AUTH advertised before TLS: {ehlo:?}"
    );
    let plain = base64_plain(&id, &token);
    let r = c.cmd(&format!("AUTH PLAIN {plain}")).await;
    assert_eq!(r.code, 530, "{r:?}");
    assert!(
        r.text
            .starts_with("5.7.0 Must issue a STARTTLS command first")
    );
    let r = c.cmd("MAIL FROM:<noreply@app.test>").await;
    assert_eq!(r.code, 530, "{r:?}");

    // Address literal and unqualified EHLO names are accepted; AUTH appears inside TLS.
    let (mut c, ehlo) = Client::starttls(relay.starttls, &relay.pki).await;
    assert!(ehlo.text.contains("AUTH PLAIN LOGIN"), "{ehlo:?}");
    assert!(ehlo.text.contains("SIZE 1048576"));
    assert!(ehlo.text.contains("PIPELINING"));
    assert!(ehlo.text.contains("8BITMIME"));
    assert!(ehlo.text.contains("ENHANCEDSTATUSCODES"));
    assert!(!ehlo.text.contains("STARTTLS"));
    assert_eq!(c.cmd("EHLO [127.0.0.1]").await.code, 250);
    let r = c.cmd("MAIL FROM:<noreply@app.test>").await;
    assert_eq!(r.code, 530);
    assert!(r.text.contains("Authentication required"), "{r:?}");
    assert_eq!(c.auth_plain(&id, &token).await.code, 235);

    // Implicit TLS offers AUTH straight away.
    let mut c = Client::connect_tls(relay.implicit, &relay.pki).await;
    assert_eq!(c.reply().await.code, 220);
    let ehlo = c.cmd("EHLO app").await;
    assert!(ehlo.text.contains("AUTH PLAIN LOGIN"), "{ehlo:?}");
    assert!(!ehlo.text.contains("STARTTLS"));
    // AUTH LOGIN, step by step.
    assert_eq!(c.cmd("AUTH LOGIN").await.code, 334);
    assert_eq!(c.cmd(&b64(&id)).await.code, 334);
    assert_eq!(c.cmd(&b64(&token)).await.code, 235);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_credentials_are_refused_alike() {
    let relay = Relay::start(RelayOptions::default());
    let (a, token_a) = relay.add_project("a", &["a.test"]);
    let (b, _token_b) = relay.add_project("b", &["b.test"]);

    let cases = [
        (a.clone(), "smtpr_wrong".to_string(), "wrong token"),
        (b.clone(), token_a.clone(), "another project's token"),
        (
            "prj_nonexistent".to_string(),
            token_a.clone(),
            "unknown project",
        ),
    ];
    for (user, token, what) in cases {
        let (mut c, _) = Client::starttls(relay.starttls, &relay.pki).await;
        let r = c.auth_plain(&user, &token).await;
        assert_eq!(r.code, 535, "{what}: {r:?}");
        assert_eq!(r.text, "5.7.8 Authentication credentials invalid", "{what}");
    }

    // Three failures in one session close it.
    let (mut c, _) = Client::starttls(relay.starttls, &relay.pki).await;
    for _ in 0..2 {
        assert_eq!(c.auth_plain(&a, "nope").await.code, 535);
    }
    assert_eq!(c.auth_plain(&a, "nope").await.code, 535);
    assert_eq!(c.reply().await.code, 421);
    assert!(c.closed(Duration::from_secs(5)).await);

    // The token never reaches the log.
    let log = relay.server_log();
    assert!(!log.contains(&token_a), "token leaked into the log");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cli_changes_apply_to_the_next_session() {
    let relay = Relay::start(RelayOptions::default());
    let (id, token) = relay.add_project("app", &["app.test"]);
    let second = relay.cli_json(&["project", "token", "add", &id, "--label", "staging"]);
    let token2 = second["token"].as_str().unwrap().to_string();
    let token2_id = second["token_id"].as_str().unwrap().to_string();
    assert!(token2.starts_with("smtpr_") && token2.len() >= 6 + 43);
    assert_ne!(token, token2);

    // Both tokens work (rotation without downtime).
    for t in [&token, &token2] {
        let (mut c, _) = Client::starttls(relay.starttls, &relay.pki).await;
        assert_eq!(c.auth_plain(&id, t).await.code, 235);
    }

    // A session that is already logged in, and a revocation in the meantime.
    let mut open = Client::logged_in(relay.starttls, &relay.pki, &id, &token2).await;
    let out = relay.cli(&["project", "token", "revoke", &id, &token2_id]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let (mut c, _) = Client::starttls(relay.starttls, &relay.pki).await;
    assert_eq!(
        c.auth_plain(&id, &token2).await.code,
        535,
        "revoked token still works"
    );
    let (mut c, _) = Client::starttls(relay.starttls, &relay.pki).await;
    assert_eq!(
        c.auth_plain(&id, &token).await.code,
        235,
        "other token must survive"
    );
    assert_eq!(open.cmd("NOOP").await.code, 250);

    // Disable and enable.
    relay.cli_json(&["project", "disable", &id]);
    let (mut c, _) = Client::starttls(relay.starttls, &relay.pki).await;
    assert_eq!(
        c.auth_plain(&id, &token).await.code,
        535,
        "disabled project"
    );
    relay.cli_json(&["project", "enable", &id]);
    let (mut c, _) = Client::starttls(relay.starttls, &relay.pki).await;
    assert_eq!(c.auth_plain(&id, &token).await.code, 235);

    // Domains: add one, it becomes usable; remove it, it is refused.
    relay.cli_json(&["project", "domain", "add", &id, "news.app.test"]);
    let mut c = Client::logged_in(relay.starttls, &relay.pki, &id, &token).await;
    assert_eq!(c.cmd("MAIL FROM:<x@news.app.test>").await.code, 250);
    relay.cli_json(&["project", "domain", "remove", &id, "news.app.test"]);
    let mut c = Client::logged_in(relay.starttls, &relay.pki, &id, &token).await;
    assert_eq!(c.cmd("MAIL FROM:<x@news.app.test>").await.code, 553);

    let shown = relay.cli_json(&["project", "show", &id]);
    assert_eq!(shown["tokens"].as_array().unwrap().len(), 1);
    assert!(
        !shown.to_string().contains(&token),
        "show must not print tokens"
    );

    // Delete: the project's tokens stop working.
    relay.cli_json(&["project", "delete", &id]);
    let (mut c, _) = Client::starttls(relay.starttls, &relay.pki).await;
    assert_eq!(c.auth_plain(&id, &token).await.code, 535);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn senders_must_belong_to_the_project() {
    let relay = Relay::start(RelayOptions::default());
    let (a, token_a) = relay.add_project("a", &["a.test"]);
    relay.add_project("b", &["b.test"]);
    let mut c = Client::logged_in(relay.starttls, &relay.pki, &a, &token_a).await;

    for bad in [
        "x@b.test",
        "x@A.TEST.",
        "x@sub.a.test",
        "x@evila.test",
        "x@a.test.evil.test",
    ] {
        let r = c.cmd(&format!("MAIL FROM:<{bad}>")).await;
        assert_eq!(r.code, 553, "{bad}: {r:?}");
        assert!(
            r.text
                .contains("Sender address rejected: not owned by project")
        );
    }
    let r = c.cmd("MAIL FROM:<>").await;
    assert_eq!(r.code, 553, "null sender: {r:?}");

    // Envelope fine, header From another project's: 550 after DATA, nothing queued.
    let r = c
        .send(
            "noreply@a.test",
            &["u@example.net"],
            &plain_message("noreply@b.test", "u@example.net", "x", "hi\r\n"),
        )
        .await;
    assert_eq!(r.code, 550, "{r:?}");
    assert!(r.text.starts_with("5.7.1"), "{r:?}");

    // Case differences in the domain are the same domain.
    let r = c
        .send(
            "NoReply@A.Test",
            &["u@example.net"],
            &plain_message("noreply@a.TEST", "u@example.net", "x", "hi\r\n"),
        )
        .await;
    assert_eq!(r.code, 250, "{r:?}");

    // A pipelined second transaction is checked on its own.
    let msg = plain_message("noreply@a.test", "u@example.net", "ok", "fine\r\n");
    let evil = plain_message("noreply@b.test", "u@example.net", "evil", "no\r\n");
    let batch = format!(
        "MAIL FROM:<noreply@a.test>\r\nRCPT TO:<u@example.net>\r\nDATA\r\n{msg}.\r\nMAIL FROM:<noreply@b.test>\r\nRCPT TO:<u@example.net>\r\nDATA\r\n{evil}.\r\n"
    );
    c.write(batch.as_bytes()).await;
    let codes: Vec<u16> = {
        let mut v = Vec::new();
        for _ in 0..6 {
            v.push(c.reply().await.code);
        }
        v
    };
    assert_eq!(
        codes,
        vec![250, 250, 354, 250, 553, 503],
        "pipelined replies"
    );

    let log = relay.cli_json(&["log"]);
    assert_eq!(
        log.as_array().unwrap().len(),
        2,
        "only the two legitimate messages: {log:#}"
    );
}

fn b64(s: &str) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(s)
}

fn base64_plain(user: &str, token: &str) -> String {
    b64(&format!("\0{user}\0{token}"))
}
