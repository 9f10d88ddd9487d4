//! `250` means safe: messages acknowledged before a `kill -9` are all delivered after the
//! restart, none twice; a graceful stop loses nothing either.

mod support;

use std::collections::HashSet;
use std::time::Duration;

use support::certs::TestPki;
use support::client::Client;
use support::relay::{Relay, RelayOptions};
use support::upstream::{Script, TestUpstream, UpstreamOptions};

const N: usize = 30;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_loses_nothing_and_duplicates_nothing() {
    let pki = TestPki::generate();
    // The upstream defers everything at first, so all N are in the queue when we kill.
    let up = TestUpstream::start(UpstreamOptions::starttls(&pki).with_script(Script {
        data_end: Some("451 4.3.0 Try again later".into()),
        ..Default::default()
    }))
    .await;
    let mut relay = Relay::start_with_upstream(
        up.port(),
        "starttls",
        &pki,
        RelayOptions {
            retry_schedule_secs: vec![1],
            ..Default::default()
        },
    );
    let (id, token) = relay.add_project("app", &["app.test"]);

    // Several concurrent sessions, several messages each (exercises group commit).
    let mut tasks = Vec::new();
    for session in 0..5 {
        let (addr, pki, id, token) = (relay.starttls, relay.pki.clone(), id.clone(), token.clone());
        tasks.push(tokio::spawn(async move {
            let mut c = Client::logged_in(addr, &pki, &id, &token).await;
            let mut ids = Vec::new();
            for i in 0..N / 5 {
                let subject = format!("msg-{session}-{i}");
                let r = c
                    .send_plain("noreply@app.test", "user@example.net", &subject, "x\r\n")
                    .await;
                assert_eq!(r.code, 250, "{r:?}");
                ids.push(subject);
            }
            ids
        }));
    }
    let mut subjects = HashSet::new();
    for t in tasks {
        subjects.extend(t.await.unwrap());
    }
    assert_eq!(subjects.len(), N);

    relay.kill9();
    up.set_script(Script::default());
    relay.spawn();

    let got = up.wait_for(N, Duration::from_secs(60)).await;
    // Give a duplicate the chance to show up.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let got_after = up.messages();
    assert_eq!(got_after.len(), got.len(), "a message was delivered twice");
    let delivered: HashSet<String> = got_after
        .iter()
        .map(|m| {
            let text = m.text();
            text.lines()
                .find_map(|l| l.strip_prefix("Subject: "))
                .unwrap()
                .to_string()
        })
        .collect();
    assert_eq!(
        delivered, subjects,
        "every acknowledged message arrives exactly once"
    );
    assert!(
        relay
            .cli_json(&["queue", "list"])
            .as_array()
            .unwrap()
            .is_empty()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn graceful_stop_keeps_the_queue() {
    let mut relay = Relay::start(RelayOptions {
        upstreams: Some(
            "[delivery]\ndefault_route = \"nowhere\"\n\n[upstream.nowhere]\ntype = \"smtp\"\nhost = \"127.0.0.1\"\nport = 9\ntls = \"none\"\nconnect_timeout_secs = 1\n"
                .into(),
        ),
        retry_schedule_secs: vec![3600],
        max_age_secs: 7 * 24 * 3600,
        ..Default::default()
    });
    let (id, token) = relay.add_project("app", &["app.test"]);
    let mut c = Client::logged_in(relay.starttls, &relay.pki, &id, &token).await;
    let r = c
        .send_plain("noreply@app.test", "user@example.net", "s", "x\r\n")
        .await;
    assert_eq!(r.code, 250);
    let msg_id = r.queued_id();
    relay.wait_state(&msg_id, &["deferred"], Duration::from_secs(20));
    drop(c);
    let status = relay.terminate();
    assert!(status.success(), "clean exit on SIGTERM: {status}");
    assert!(relay.server_log().contains("stopped"));
    // With the server stopped, the CLI reads the database directly.
    let list = relay.cli_json(&["queue", "list"]);
    assert_eq!(list[0]["id"], msg_id.as_str());
    assert_eq!(list[0]["state"], "deferred");
}
