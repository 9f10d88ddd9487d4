//! `smtp-relay send-test`: a test message through the pipeline, synchronously — through the
//! running server and in-process when none runs — and each failure class in plain words with
//! a non-zero exit.

mod support;

use std::time::Duration;

use support::certs::TestPki;
use support::relay::{Relay, RelayOptions, delivery_table, upstream_table};
use support::upstream::{Script, TestUpstream, UpstreamOptions};

fn run(relay: &Relay, args: &[&str]) -> (bool, String, String) {
    let out = relay.cli(args);
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sends_through_the_running_server_and_in_process() {
    let pki = TestPki::generate();
    let up = TestUpstream::start(UpstreamOptions::starttls(&pki)).await;
    let tmp = tempfile::tempdir().unwrap();
    let files = pki.write_to(tmp.path());
    let mut relay = Relay::start(RelayOptions {
        upstreams: Some(format!(
            "{}{}",
            delivery_table("t", &[]),
            upstream_table("t", up.port(), "starttls", &files.ca, "")
        )),
        ..Default::default()
    });
    let (id, _) = relay.add_project("app", &["app.test"]);
    let dns = support::dkim::Dns::default();
    dns.publish(&support::dkim::keygen(
        &relay, "app.test", "s1", "ed25519", true,
    ));

    let (ok, out, err) = run(
        &relay,
        &["send-test", "--project", &id, "--to", "you@example.net"],
    );
    assert!(ok, "{out}{err}");
    assert!(out.contains("through upstream t"), "{out}");
    assert!(
        out.contains("upstream replied: 250 2.0.0 OK queued as m1"),
        "{out}"
    );
    let got = up.wait_for(1, Duration::from_secs(5)).await;
    assert_eq!(got[0].mail_from, "smtp-relay-test@app.test");
    assert_eq!(got[0].rcpt_to, vec!["you@example.net"]);
    let text = got[0].text();
    assert!(text.contains("Received: from send-test"), "{text}");
    assert!(text.contains("Subject: smtp-relay test message"), "{text}");
    assert!(text.contains("\r\nMessage-ID: <"), "{text}");
    assert!(got[0].tls);
    let verified = support::dkim::verify(&dns, &got[0].data).await;
    assert!(
        verified.len() == 1 && verified[0].pass() && verified[0].domain == "app.test",
        "the test message is DKIM-signed like real mail: {verified:?}"
    );
    assert!(up.violations().is_empty(), "{:?}", up.violations());
    // Not queued: send-test is synchronous.
    assert!(
        relay
            .cli_json(&["queue", "list"])
            .as_array()
            .unwrap()
            .is_empty()
    );

    // No server running: the CLI runs the same pipeline itself.
    assert!(relay.terminate().success());
    let v = relay.cli_json(&["send-test", "--project", &id, "--to", "me@example.net"]);
    assert_eq!(v["upstream"], "t");
    assert!(v["reply"].as_str().unwrap().starts_with("250"), "{v:#}");
    let got = up.wait_for(2, Duration::from_secs(5)).await;
    assert_eq!(got[1].rcpt_to, vec!["me@example.net"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_failure_is_told_in_plain_words() {
    let pki = TestPki::generate();
    let other_ca = TestPki::generate();
    let expired = TestPki::generate_expired();
    let tmp = tempfile::tempdir().unwrap();
    let files = pki.write_to(&tmp.path().join("pki"));
    let other_files = other_ca.write_to(&tmp.path().join("other"));
    let expired_files = expired.write_to(&tmp.path().join("expired"));
    let wrong_pw = tmp.path().join("wrong-password");
    std::fs::write(&wrong_pw, "not-the-password\n").unwrap();

    let refused = TestUpstream::start(UpstreamOptions::implicit(&pki)).await;
    refused.stop();
    let auth =
        TestUpstream::start(UpstreamOptions::implicit(&pki).with_auth("relay", "right")).await;
    let old_cert = TestUpstream::start(UpstreamOptions::implicit(&expired)).await;
    let untrusted = TestUpstream::start(UpstreamOptions::implicit(&pki)).await;
    let rcpt = TestUpstream::start(
        UpstreamOptions::implicit(&pki)
            .with_script(Script::default().with_rcpt("you@example.net", "550 5.1.1 No such user")),
    )
    .await;
    let no_tls = TestUpstream::start(UpstreamOptions::plain()).await;
    let config = [
        delivery_table("refused", &[]),
        upstream_table("refused", refused.port(), "implicit", &files.ca, ""),
        upstream_table(
            "auth",
            auth.port(),
            "implicit",
            &files.ca,
            &format!(
                "auth = \"plain\"\nusername = \"relay\"\npassword_file = \"{}\"",
                wrong_pw.display()
            ),
        ),
        upstream_table(
            "expired",
            old_cert.port(),
            "implicit",
            &expired_files.ca,
            "",
        ),
        upstream_table(
            "untrusted",
            untrusted.port(),
            "implicit",
            &other_files.ca,
            "",
        ),
        upstream_table("rcpt", rcpt.port(), "implicit", &files.ca, ""),
        upstream_table("notls", no_tls.port(), "starttls", &files.ca, ""),
    ]
    .concat();
    let relay = Relay::start(RelayOptions {
        upstreams: Some(config),
        ..Default::default()
    });
    let (id, _) = relay.add_project("app", &["app.test"]);

    let cases: [(&str, &str); 6] = [
        ("refused", "connection refused by 127.0.0.1:"),
        (
            "auth",
            "authentication failed: 535 5.7.8 Authentication credentials invalid",
        ),
        (
            "expired",
            "TLS certificate for 127.0.0.1 expired on 2021-01-02 00:00:00 UTC",
        ),
        (
            "untrusted",
            "TLS certificate for 127.0.0.1 is not signed by a trusted authority",
        ),
        ("rcpt", "refused by upstream rcpt: 550 5.1.1 No such user"),
        ("notls", "does not offer STARTTLS"),
    ];
    for (upstream, words) in cases {
        let (ok, out, err) = run(
            &relay,
            &[
                "send-test",
                "--project",
                &id,
                "--to",
                "you@example.net",
                "--upstream",
                upstream,
            ],
        );
        assert!(!ok, "{upstream}: must fail\n{out}");
        assert!(err.contains(words), "{upstream}: {words:?} not in {err}");
        assert_eq!(err.lines().count(), 1, "{upstream}: one line:\n{err}");
    }
    // The project's own route is the default: refused, in the same words.
    let (ok, _, err) = run(
        &relay,
        &["send-test", "--project", &id, "--to", "you@example.net"],
    );
    assert!(!ok && err.contains("connection refused"), "{err}");
    let (ok, _, err) = run(
        &relay,
        &[
            "send-test",
            "--project",
            &id,
            "--to",
            "x@example.net",
            "--upstream",
            "nope",
        ],
    );
    assert!(!ok && err.contains("no upstream named \"nope\""), "{err}");
    assert_eq!(auth.messages().len() + rcpt.messages().len(), 0);
}
