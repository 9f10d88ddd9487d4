//! DKIM signing end to end: keys made with `smtp-relay dkim keygen`, mail submitted over
//! STARTTLS, and the bytes the test upstream received verified with mail-auth's verifier, the
//! printed TXT record being the only DNS answer. RSA, Ed25519, both; tampering; projects
//! that try to use another project's key; the failure policy.

mod support;

use mail_auth::DkimResult;
use support::client::{Client, plain_message};
use support::dkim::{Dns, Setup, keygen, signature_headers, verify};
use support::upstream::data_problems;

/// A body that exercises the wire: lines starting with dots (stuffed by the client here, by
/// the relay toward the upstream) and a long line.
fn body() -> String {
    format!(
        "Your code is 4711.\r\n..leading dot\r\n...\r\n{}\r\n\r\nbye\r\n",
        "x".repeat(900)
    )
}

fn assert_wire_is_clean(m: &support::upstream::ReceivedMessage) {
    assert!(
        data_problems(&m.raw).is_empty(),
        "{:?}",
        data_problems(&m.raw)
    );
    // The relay stuffed the dots again: what was signed is what the receiver unstuffs.
    let raw = String::from_utf8_lossy(&m.raw);
    assert!(raw.contains("\r\n..leading dot\r\n"), "{raw}");
    assert!(m.text().contains("\r\n.leading dot\r\n"));
    assert!(
        m.text().starts_with("DKIM-Signature: "),
        "signature must be the first header:\n{}",
        m.text()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rsa_signature_verifies_at_the_upstream() {
    let s = Setup::start(&["app.test"]).await;
    let record = keygen(&s.relay, "app.test", "s1", "rsa", true);
    assert!(
        record.starts_with("s1._domainkey.app.test. IN TXT \"v=DKIM1; k=rsa; p="),
        "{record}"
    );
    // An RSA-2048 record does not fit one 255-byte string.
    assert!(record.matches('"').count() >= 4, "{record}");
    let dns = Dns::default();
    dns.publish(&record);

    let m = s.deliver("noreply@app.test", "Your code", &body(), 1).await;
    assert_wire_is_clean(&m);
    let results = verify(&dns, &m.data).await;
    assert_eq!(results.len(), 1, "{results:?}");
    let v = &results[0];
    assert!(v.pass(), "{v:?}\n{}", m.text());
    assert_eq!(
        (v.algorithm.as_str(), v.domain.as_str(), v.selector.as_str()),
        ("rsa-sha256", "app.test", "s1")
    );
    let lower: Vec<String> = v.headers.iter().map(|h| h.to_ascii_lowercase()).collect();
    assert_eq!(
        lower.iter().filter(|h| *h == "from").count(),
        2,
        "{lower:?}"
    );
    for h in [
        "to",
        "subject",
        "date",
        "message-id",
        "mime-version",
        "content-type",
        "received",
        "cc",
        "reply-to",
        "list-unsubscribe",
    ] {
        assert!(lower.iter().any(|x| x == h), "{h} not signed: {lower:?}");
    }
    assert_eq!(v.l, 0, "no l= tag");
    assert!(v.t > 1_700_000_000, "t= set");
    let sig = &signature_headers(&m.data)[0];
    assert!(sig.contains("c=relaxed/relaxed"), "{sig}");
    assert!(!sig.contains(" l="), "{sig}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ed25519_signature_verifies_at_the_upstream() {
    let s = Setup::start(&["app.test"]).await;
    let record = keygen(&s.relay, "app.test", "e1", "ed25519", true);
    assert!(
        record.starts_with("e1._domainkey.app.test. IN TXT \"v=DKIM1; k=ed25519; p="),
        "{record}"
    );
    let dns = Dns::default();
    dns.publish(&record);

    let m = s.deliver("noreply@app.test", "Welcome", &body(), 1).await;
    assert_wire_is_clean(&m);
    let results = verify(&dns, &m.data).await;
    assert_eq!(results.len(), 1, "{results:?}");
    assert!(results[0].pass(), "{results:?}");
    assert_eq!(results[0].algorithm, "ed25519-sha256");
}

/// RFC 8463 dual signing, and what tampering does to both signatures.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dual_signing_and_tampering() {
    let s = Setup::start(&["app.test"]).await;
    let dns = Dns::default();
    dns.publish(&keygen(&s.relay, "app.test", "r1", "rsa", true));
    dns.publish(&keygen(&s.relay, "app.test", "e1", "ed25519", true));

    let m = s
        .deliver("noreply@app.test", "Invitation", &body(), 1)
        .await;
    assert_wire_is_clean(&m);
    let results = verify(&dns, &m.data).await;
    assert_eq!(results.len(), 2, "{results:?}");
    assert!(results.iter().all(|v| v.pass()), "{results:?}");
    let mut algs: Vec<&str> = results.iter().map(|v| v.algorithm.as_str()).collect();
    algs.sort();
    assert_eq!(algs, ["ed25519-sha256", "rsa-sha256"]);

    let text = m.text();
    // A changed body: the body hash no longer matches (mail-auth reports that as Neutral).
    let body_changed = text.replace("Your code is 4711.", "Your code is 0000.");
    assert_ne!(body_changed, text);
    for v in verify(&dns, body_changed.as_bytes()).await {
        assert!(matches!(v.result, DkimResult::Neutral(_)), "{v:?}");
    }
    // A changed Subject: the header signature fails.
    let subject_changed = text.replace("Subject: Invitation", "Subject: Invoice overdue");
    assert_ne!(subject_changed, text);
    for v in verify(&dns, subject_changed.as_bytes()).await {
        assert!(matches!(v.result, DkimResult::Fail(_)), "{v:?}");
    }
    // A second From added on top: From is oversigned, so this fails too.
    let (sigs, rest) = text.split_at(text.find("\r\nReceived: ").unwrap() + 2);
    let extra_from = format!("{sigs}From: Attacker <ceo@evil.test>\r\n{rest}");
    for v in verify(&dns, extra_from.as_bytes()).await {
        assert!(matches!(v.result, DkimResult::Fail(_)), "{v:?}");
    }
    // A Reply-To added where there was none: absent headers are signed as absent.
    let extra_reply_to = format!("{sigs}Reply-To: <phish@evil.test>\r\n{rest}");
    for v in verify(&dns, extra_reply_to.as_bytes()).await {
        assert!(matches!(v.result, DkimResult::Fail(_)), "{v:?}");
    }
}

/// A key is used only for its exact domain, and only by a project that owns that domain.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_project_cannot_sign_for_another_projects_domain() {
    let s = Setup::start(&["a.test"]).await;
    let dns = Dns::default();
    dns.publish(&keygen(&s.relay, "a.test", "s1", "ed25519", true));
    // Project B owns its own domain and a subdomain of A's; relaxed DMARC alignment would
    // accept a d=a.test signature on mail from mail.a.test, so it must never get one.
    let (b_id, b_token) = s.relay.add_project("b", &["b.test", "mail.a.test"]);
    dns.publish(&keygen(&s.relay, "b.test", "s1", "ed25519", true));

    let r = s
        .submit_as(&b_id, &b_token, "noreply@a.test", "hi", "spoof\r\n")
        .await;
    assert_eq!(r.code, 553, "{r:?}");
    // Envelope from B's domain, header From A's: refused too.
    let mut c = Client::logged_in(s.relay.starttls, &s.relay.pki, &b_id, &b_token).await;
    let spoof = plain_message("noreply@a.test", "user@example.net", "hi", "spoof\r\n");
    let r = c
        .send("noreply@b.test", &["user@example.net"], &spoof)
        .await;
    assert_eq!(r.code, 550, "{r:?}");

    let r = s
        .submit_as(
            &b_id,
            &b_token,
            "noreply@mail.a.test",
            "sub",
            "from sub\r\n",
        )
        .await;
    assert_eq!(r.code, 250, "{r:?}");
    let got = s.up.wait_for(1, std::time::Duration::from_secs(30)).await;
    assert!(
        signature_headers(&got[0].data).is_empty(),
        "mail.a.test has no key; a.test's must not be used:\n{}",
        got[0].text()
    );

    let r = s
        .submit_as(&b_id, &b_token, "noreply@b.test", "own", "own domain\r\n")
        .await;
    assert_eq!(r.code, 250, "{r:?}");
    let got = s.up.wait_for(2, std::time::Duration::from_secs(30)).await;
    let results = verify(&dns, &got[1].data).await;
    assert_eq!(results.len(), 1, "{results:?}");
    assert!(
        results[0].pass() && results[0].domain == "b.test",
        "{results:?}"
    );
    // The spoof attempt never reached the upstream.
    assert_eq!(s.up.messages().len(), 2);
}

/// A missing key file never loses mail: by default the client is told to retry (451);
/// with `send-unsigned` the message goes out unsigned and the log says why.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn signing_failure_follows_the_project_policy() {
    let s = Setup::start(&["app.test"]).await;
    keygen(&s.relay, "app.test", "s1", "ed25519", true);
    let v = s.relay.cli_json(&["dkim", "on-failure", &s.id]);
    assert_eq!(v["on_failure"], "tempfail");
    std::fs::remove_file(s.relay.state_dir().join("dkim/app.test/s1.pem")).unwrap();

    let r = s
        .submit_as(&s.id, &s.token, "noreply@app.test", "code", "1234\r\n")
        .await;
    assert_eq!(r.code, 451, "{r:?}");
    assert!(
        r.text.contains("4.3.0") && r.text.contains("app.test"),
        "{r:?}"
    );
    assert!(s.up.messages().is_empty());

    let v = s
        .relay
        .cli_json(&["dkim", "on-failure", &s.id, "send-unsigned"]);
    assert_eq!(v["on_failure"], "send-unsigned");
    let m = s.deliver("noreply@app.test", "code", "1234\r\n", 1).await;
    assert!(signature_headers(&m.data).is_empty());
    let log = s.relay.server_log();
    assert!(
        log.contains("DKIM signing failed") && log.contains("send-unsigned"),
        "{log}"
    );
}
