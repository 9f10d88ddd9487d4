//! Retention: with `[retention] max_age_secs = 2`, a delivered message's log entry, its events
//! and its webhook attempts are pruned a few seconds later, with a log line and the
//! `smtp_relay_retention_pruned_records_total` metric; a message still queued keeps them.
//! Expired suppression entries go with them.

mod support;

use std::time::{Duration, Instant};

use support::certs::TestPki;
use support::ops::{http_get, sample};
use support::relay::{Relay, RelayOptions};
use support::upstream::{Script, TestUpstream, UpstreamOptions};
use support::webhook_receiver::Receiver;

const WAIT: Duration = Duration::from_secs(30);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn old_log_events_and_attempts_are_pruned_queued_messages_are_kept() {
    let pki = TestPki::generate();
    let up = TestUpstream::start(
        UpstreamOptions::implicit(&pki)
            .with_script(Script::default().with_rcpt("busy@example.net", "451 4.2.1 busy")),
    )
    .await;
    let relay = Relay::start_with_upstream(
        up.port(),
        "implicit",
        &pki,
        RelayOptions {
            retry_schedule_secs: vec![600],
            metrics: true,
            extra_config: "[webhooks]\nallow_loopback = true\n\
                           [retention]\nmax_age_secs = 2\nprune_interval_secs = 1\n\
                           [suppression]\nexpire_secs = 1\n"
                .into(),
            ..Default::default()
        },
    );
    let (project, token) = relay.add_project("app", &["app.test"]);
    // Expires after a second; the prune then removes it from the tree.
    relay.cli_json(&["suppression", "add", &project, "old@example.net"]);
    let rx = Receiver::start(0).await;
    let hook = relay.cli_json(&[
        "webhook",
        "add",
        &project,
        "--url",
        &rx.url(),
        "--events",
        "relayed",
    ]);
    let endpoint = hook["id"].as_str().unwrap().to_string();

    let done = relay
        .submit(&project, &token, "noreply@app.test", &["ok@example.net"])
        .await;
    // Deferred for ten minutes: stays in the queue, so its history must stay too.
    let waiting = relay
        .submit(&project, &token, "noreply@app.test", &["busy@example.net"])
        .await;
    relay.wait_state(&done, &["delivered"], WAIT);
    rx.wait_event("message.relayed", &done, WAIT).await;
    relay.wait_state(&waiting, &["deferred"], WAIT);

    // A few seconds later the finished message is gone from the log, with its events and
    // the endpoint's attempt history.
    let deadline = Instant::now() + WAIT;
    loop {
        let out = relay.cli(&["queue", "show", &done]);
        let attempts = relay.cli_json(&["webhook", "show", &endpoint])["attempts"]
            .as_array()
            .unwrap()
            .len();
        if !out.status.success() && attempts == 0 {
            assert!(
                String::from_utf8_lossy(&out.stderr).contains(&format!("no message {done}")),
                "{out:?}"
            );
            break;
        }
        assert!(
            Instant::now() < deadline,
            "not pruned: {out:?}\n{}",
            relay.server_log()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let log = relay.wait_log("retention: pruned old records", 1, WAIT);
    assert!(log.contains("webhook_attempts"), "{log}");

    // The queued one keeps its log entry and events.
    let v = relay.cli_json(&["queue", "show", &waiting]);
    assert_eq!(v["state"], "deferred");
    let kinds: Vec<&str> = v["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["type"].as_str().unwrap())
        .collect();
    assert!(
        kinds.contains(&"accepted") && kinds.contains(&"deferred"),
        "{v:#}"
    );

    let (_, _, m) = http_get(relay.listener_addr("metrics"), "/metrics").await;
    for tree in ["log", "events", "webhook_attempts", "suppression"] {
        let n = sample(
            &m,
            &format!("smtp_relay_retention_pruned_records_total{{tree=\"{tree}\"}}"),
        )
        .unwrap_or(0.0);
        assert!(n >= 1.0, "{tree}: {m}");
    }
}
