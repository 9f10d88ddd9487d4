//! Upstream faults: replies at every stage, dropped connections, untrusted or wrong-host
//! certificates, missing STARTTLS, a silent server. Mail is never sent in plaintext or to an
//! unverified server, never lost; it is deferred or failed as the reply says.

mod support;

use std::time::Duration;

use support::certs::TestPki;
use support::relay::{Relay, RelayOptions, smtp_upstream};
use support::upstream::{Script, TestUpstream, UpstreamOptions};

async fn submit(relay: &Relay, id: &str, token: &str) -> String {
    relay
        .submit(id, token, "app@a.test", &["u@example.net"])
        .await
}

fn start_relay(upstream_toml: String) -> (Relay, String, String) {
    let relay = Relay::start(RelayOptions {
        upstreams: Some(upstream_toml),
        retry_schedule_secs: vec![3600],
        max_age_secs: 7 * 24 * 3600,
        ..Default::default()
    });
    let (id, token) = relay.add_project("a", &["a.test"]);
    (relay, id, token)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replies_at_every_stage() {
    let cases: Vec<(&str, Script, &str, &str)> = vec![
        (
            "greeting 421",
            Script {
                greeting: Some("421 4.3.2 busy".into()),
                ..Default::default()
            },
            "deferred",
            "",
        ),
        (
            "greeting 554",
            Script {
                greeting: Some("554 5.3.2 go away".into()),
                ..Default::default()
            },
            "deferred",
            "",
        ),
        (
            "ehlo 451",
            Script {
                ehlo: Some("451 4.3.0 later".into()),
                ..Default::default()
            },
            "deferred",
            "",
        ),
        (
            "mail 451",
            Script {
                mail: Some("451 4.3.0 later".into()),
                ..Default::default()
            },
            "deferred",
            "451 4.3.0",
        ),
        (
            "mail 550",
            Script {
                mail: Some("550 5.7.1 sender refused".into()),
                ..Default::default()
            },
            "failed",
            "550 5.7.1",
        ),
        (
            "rcpt 450",
            Script::default().with_rcpt("u@example.net", "450 4.2.1 busy"),
            "deferred",
            "450 4.2.1",
        ),
        (
            "rcpt 550",
            Script::default().with_rcpt("u@example.net", "550 5.1.1 unknown"),
            "failed",
            "550 5.1.1",
        ),
        (
            "data 451",
            Script {
                data: Some("451 4.3.0 later".into()),
                ..Default::default()
            },
            "deferred",
            "451 4.3.0",
        ),
        (
            "data 554",
            Script {
                data: Some("554 5.3.0 no".into()),
                ..Default::default()
            },
            "failed",
            "554 5.3.0",
        ),
        (
            "end 452",
            Script {
                data_end: Some("452 4.3.1 full".into()),
                ..Default::default()
            },
            "deferred",
            "452 4.3.1",
        ),
        (
            "end 554",
            Script {
                data_end: Some("554 5.7.1 spam".into()),
                ..Default::default()
            },
            "failed",
            "554 5.7.1",
        ),
        (
            "dropped after dot",
            Script {
                drop_after_data: true,
                ..Default::default()
            },
            "deferred",
            "",
        ),
    ];
    let pki = TestPki::generate();
    let tmp = tempfile::tempdir().unwrap();
    let files = pki.write_to(tmp.path());
    for (what, script, state, reply) in cases {
        let up = TestUpstream::start(UpstreamOptions::starttls(&pki).with_script(script)).await;
        let (relay, id, token) = start_relay(smtp_upstream(up.port(), "starttls", &files.ca, None));
        let qid = submit(&relay, &id, &token).await;
        let v = relay.wait_state(&qid, &[state], Duration::from_secs(30));
        assert!(
            v["last_reply"].as_str().unwrap_or("").starts_with(reply),
            "{what}: {v:#}"
        );
        assert!(
            up.messages().is_empty(),
            "{what}: nothing may count as delivered"
        );
        if state == "deferred" {
            assert_eq!(
                relay.cli_json(&["queue", "list"]).as_array().unwrap().len(),
                1,
                "{what}: kept"
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn never_to_an_unverified_server_or_in_plaintext() {
    let trusted = TestPki::generate();
    let other = TestPki::generate();
    let tmp = tempfile::tempdir().unwrap();
    let trusted_files = trusted.write_to(&tmp.path().join("t"));

    // Certificate from a CA the relay does not trust.
    let up = TestUpstream::start(UpstreamOptions::starttls(&other)).await;
    let (relay, id, token) = start_relay(smtp_upstream(
        up.port(),
        "starttls",
        &trusted_files.ca,
        None,
    ));
    let qid = submit(&relay, &id, &token).await;
    let v = relay.wait_state(&qid, &["deferred"], Duration::from_secs(30));
    assert!(v["last_reply"].as_str().unwrap().contains("TLS"), "{v:#}");
    assert!(up.messages().is_empty());
    assert!(
        up.commands().iter().all(|c| !c.contains("MAIL")),
        "{:?}",
        up.commands()
    );

    // Wrong host name: the certificate is for localhost/127.0.0.1, we connect to 127.0.0.2.
    let up =
        TestUpstream::start(UpstreamOptions::implicit(&trusted).at("127.0.0.2:0".parse().unwrap()))
            .await;
    let toml = smtp_upstream(up.port(), "implicit", &trusted_files.ca, None)
        .replace("host = \"127.0.0.1\"", "host = \"127.0.0.2\"");
    let (relay, id, token) = start_relay(toml);
    let qid = submit(&relay, &id, &token).await;
    let v = relay.wait_state(&qid, &["deferred"], Duration::from_secs(30));
    assert!(v["last_reply"].as_str().unwrap().contains("TLS"), "{v:#}");
    assert!(up.messages().is_empty());

    // STARTTLS required but not offered: nothing goes out in plaintext.
    let up = TestUpstream::start(UpstreamOptions::plain()).await;
    let (relay, id, token) = start_relay(smtp_upstream(
        up.port(),
        "starttls",
        &trusted_files.ca,
        None,
    ));
    let qid = submit(&relay, &id, &token).await;
    let v = relay.wait_state(&qid, &["deferred"], Duration::from_secs(30));
    assert!(
        v["last_reply"].as_str().unwrap().contains("STARTTLS"),
        "{v:#}"
    );
    assert!(
        up.commands().iter().all(|c| !c.contains("MAIL")),
        "{:?}",
        up.commands()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_upstream_times_out_and_is_retried() {
    let pki = TestPki::generate();
    let tmp = tempfile::tempdir().unwrap();
    let files = pki.write_to(tmp.path());
    let up = TestUpstream::start(UpstreamOptions::starttls(&pki).with_script(Script {
        hang_greeting: true,
        ..Default::default()
    }))
    .await;
    let toml = smtp_upstream(up.port(), "starttls", &files.ca, None)
        .replace("connect_timeout_secs = 5", "connect_timeout_secs = 1")
        .replace("command_timeout_secs = 10", "command_timeout_secs = 1");
    let relay = Relay::start(RelayOptions {
        upstreams: Some(toml),
        retry_schedule_secs: vec![1],
        ..Default::default()
    });
    let (id, token) = relay.add_project("a", &["a.test"]);
    let qid = submit(&relay, &id, &token).await;
    let v = relay.wait_state(&qid, &["deferred"], Duration::from_secs(20));
    assert!(
        v["last_reply"].as_str().unwrap().contains("timeout"),
        "{v:#}"
    );
    // The upstream wakes up: delivered on a later attempt.
    up.set_script(Script::default());
    relay.wait_state(&qid, &["delivered"], Duration::from_secs(30));
}
