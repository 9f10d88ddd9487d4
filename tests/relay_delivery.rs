//! Delivery faults against a scriptable test upstream: down then up, permanent refusal,
//! partial recipient acceptance — each visible in `smtp-relay log` / `queue show`; and
//! delivery that starts on enqueue rather than on the queue's poll.

mod support;

use std::time::Duration;

use support::certs::TestPki;
use support::relay::{Relay, RelayOptions};
use support::upstream::{Script, TestUpstream, UpstreamOptions};

struct Setup {
    relay: Relay,
    up: TestUpstream,
    id: String,
    token: String,
    pki: TestPki,
}

async fn setup(script: Script) -> Setup {
    let pki = TestPki::generate();
    let up = TestUpstream::start(UpstreamOptions::implicit(&pki).with_script(script)).await;
    let relay = Relay::start_with_upstream(
        up.port(),
        "implicit",
        &pki,
        RelayOptions {
            retry_schedule_secs: vec![1],
            ..Default::default()
        },
    );
    let (id, token) = relay.add_project("app", &["app.test"]);
    Setup {
        relay,
        up,
        id,
        token,
        pki,
    }
}

async fn submit(s: &Setup, rcpts: &[&str]) -> String {
    s.relay
        .submit(&s.id, &s.token, "noreply@app.test", rcpts)
        .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_down_then_up_is_delivered_after_retry() {
    let s = setup(Script::default()).await;
    let addr = s.up.addr();
    s.up.stop();
    let id = submit(&s, &["user@example.net"]).await;
    let v = s
        .relay
        .wait_state(&id, &["deferred"], Duration::from_secs(20));
    assert!(v["attempts"].as_u64().unwrap() >= 1);
    assert!(
        v["last_reply"].as_str().unwrap().contains("connection"),
        "{v:#}"
    );

    // Up again, on the same port.
    let up2 = TestUpstream::start(UpstreamOptions::implicit(&s.pki).at(addr)).await;
    let v = s
        .relay
        .wait_state(&id, &["delivered"], Duration::from_secs(30));
    assert!(v["attempts"].as_u64().unwrap() >= 2, "{v:#}");
    let got = up2.wait_for(1, Duration::from_secs(5)).await;
    assert_eq!(got[0].rcpt_to, vec!["user@example.net"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn permanent_refusal_is_failed_and_not_retried() {
    let s = setup(Script {
        data_end: Some("554 5.7.1 Message rejected by policy".into()),
        ..Default::default()
    })
    .await;
    let id = submit(&s, &["user@example.net"]).await;
    let v = s
        .relay
        .wait_state(&id, &["failed"], Duration::from_secs(20));
    assert_eq!(v["attempts"], 1);
    assert!(
        v["last_reply"].as_str().unwrap().starts_with("554 5.7.1"),
        "{v:#}"
    );
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let v = s.relay.cli_json(&["queue", "show", &id]);
    assert_eq!(v["attempts"], 1, "a 5xx must not be retried");
    let log = s.relay.cli(&["log"]);
    let text = String::from_utf8_lossy(&log.stdout);
    assert!(
        text.contains("failed") && text.contains("554 5.7.1"),
        "{text}"
    );
    assert!(
        s.relay
            .cli_json(&["queue", "list"])
            .as_array()
            .unwrap()
            .is_empty()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn partial_recipients_are_recorded_and_only_deferred_ones_retried() {
    let script = Script::default()
        .with_rcpt("gone@example.net", "550 5.1.1 No such user")
        .with_rcpt("busy@example.net", "450 4.2.1 Mailbox busy");
    let s = setup(script).await;
    let id = submit(
        &s,
        &["ok@example.net", "gone@example.net", "busy@example.net"],
    )
    .await;
    let v = s
        .relay
        .wait_state(&id, &["deferred"], Duration::from_secs(20));
    let states: Vec<(String, String)> = v["recipients"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            (
                r["address"].as_str().unwrap().to_string(),
                r["state"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    assert_eq!(
        states,
        vec![
            ("ok@example.net".into(), "delivered".into()),
            ("gone@example.net".into(), "failed".into()),
            ("busy@example.net".into(), "pending".into()),
        ]
    );
    // The mailbox frees up: only that recipient is sent again.
    s.up.set_script(Script::default().with_rcpt("gone@example.net", "550 5.1.1 No such user"));
    let v = s
        .relay
        .wait_state(&id, &["delivered"], Duration::from_secs(20));
    assert_eq!(v["recipients"][2]["state"], "delivered");
    let got = s.up.wait_for(2, Duration::from_secs(5)).await;
    assert_eq!(got[0].rcpt_to, vec!["ok@example.net"]);
    assert_eq!(got[1].rcpt_to, vec!["busy@example.net"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queue_commands_retry_and_delete() {
    let s = setup(Script {
        data_end: Some("451 4.3.0 Try again later".into()),
        ..Default::default()
    })
    .await;
    let id = submit(&s, &["user@example.net"]).await;
    s.relay
        .wait_state(&id, &["deferred"], Duration::from_secs(20));
    let list = s.relay.cli_json(&["queue", "list"]);
    assert_eq!(list[0]["id"], id.as_str());
    let out = s.relay.cli(&["queue", "show", &id]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("deferred") && text.contains("451 4.3.0"),
        "{text}"
    );
    s.relay.cli_json(&["queue", "delete", &id]);
    assert!(
        s.relay
            .cli_json(&["queue", "list"])
            .as_array()
            .unwrap()
            .is_empty()
    );
    assert_eq!(
        s.relay.cli_json(&["queue", "show", &id])["state"],
        "deleted"
    );
    let out = s.relay.cli(&["queue", "retry", &id]);
    assert!(
        !out.status.success(),
        "retrying a deleted message must fail"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn short_lived_mail_expires_at_the_project_max_age() {
    let s = setup(Script::default()).await;
    s.up.stop();
    s.relay.cli_json(&["project", "max-age", &s.id, "10"]);
    let id = submit(&s, &["user@example.net"]).await;
    let v = s
        .relay
        .wait_state(&id, &["expired"], Duration::from_secs(40));
    assert!(v["attempts"].as_u64().unwrap() >= 1, "{v:#}");
    let reason = v["last_reply"].as_str().unwrap_or("");
    assert!(
        reason.starts_with("expired after ") && reason.contains("(max age 10 s); last reply: "),
        "{v:#}"
    );
    assert!(
        s.relay
            .cli_json(&["queue", "list"])
            .as_array()
            .unwrap()
            .is_empty()
    );
}

/// Delivery is woken by the enqueue itself: with the poll interval set to an hour, messages
/// (more of them than there are workers, so the dispatcher hands out several at once) still
/// reach the upstream well within a generous deadline. Behaviour, not a timing measurement.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delivery_starts_on_enqueue_without_waiting_for_the_poll() {
    let pki = TestPki::generate();
    let up = TestUpstream::start(UpstreamOptions::implicit(&pki)).await;
    let relay = Relay::start_with_upstream(
        up.port(),
        "implicit",
        &pki,
        RelayOptions {
            poll_interval_ms: 3_600_000,
            ..Default::default()
        },
    );
    let (id, token) = relay.add_project("app", &["app.test"]);
    // The harness runs 4 workers: 10 messages need several batches.
    let mut ids = Vec::new();
    for i in 0..10 {
        let rcpt = format!("user{i}@example.net");
        ids.push(
            relay
                .submit(&id, &token, "noreply@app.test", &[&rcpt])
                .await,
        );
    }
    let got = up.wait_for(10, Duration::from_secs(60)).await;
    assert_eq!(got.len(), 10);
    let mut rcpts: Vec<String> = got.iter().flat_map(|m| m.rcpt_to.clone()).collect();
    rcpts.sort();
    let mut want: Vec<String> = (0..10).map(|i| format!("user{i}@example.net")).collect();
    want.sort();
    assert_eq!(rcpts, want);
    for qid in &ids {
        relay.wait_state(qid, &["delivered"], Duration::from_secs(30));
    }
}
