//! sled soak: sustained acceptance with concurrent delivery and deletes. No stall (every
//! window of two seconds makes progress), nothing lost, bounded disk growth. CI runs it for
//! 12 s; `SOAK_SECS=300 cargo test --release --test faults_soak -- --nocapture` runs it longer.

mod support;

use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use support::certs::TestPki;
use support::client::Client;
use support::relay::{Relay, RelayOptions};
use support::upstream::{Script, TestUpstream, UpstreamOptions};

fn dir_size(p: &std::path::Path) -> u64 {
    let mut total = 0;
    if let Ok(rd) = std::fs::read_dir(p) {
        for e in rd.flatten() {
            let m = e.metadata().unwrap();
            total += if m.is_dir() {
                dir_size(&e.path())
            } else {
                m.len()
            };
        }
    }
    total
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sustained_load_with_deletes_never_stalls() {
    let secs: u64 = std::env::var("SOAK_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(12);
    let pki = TestPki::generate();
    // Every fifth recipient is deferred, so the queue always holds something to delete.
    let up = TestUpstream::start(
        UpstreamOptions::starttls(&pki)
            .with_script(Script::default().with_rcpt("later@example.net", "451 4.3.0 later")),
    )
    .await;
    let relay = Arc::new(Relay::start_with_upstream(
        up.port(),
        "starttls",
        &pki,
        RelayOptions {
            retry_schedule_secs: vec![2],
            ..Default::default()
        },
    ));
    let (id, token) = relay.add_project("soak", &["soak.test"]);
    let accepted = Arc::new(AtomicUsize::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let deadline = Instant::now() + Duration::from_secs(secs);

    let mut clients = Vec::new();
    for n in 0..4 {
        let (relay, id, token, accepted, stop) = (
            relay.clone(),
            id.clone(),
            token.clone(),
            accepted.clone(),
            stop.clone(),
        );
        clients.push(tokio::spawn(async move {
            let mut i = 0usize;
            while !stop.load(Ordering::Relaxed) {
                let mut c = Client::logged_in(relay.starttls, &relay.pki, &id, &token).await;
                for _ in 0..10 {
                    let to = if i.is_multiple_of(5) {
                        "later@example.net"
                    } else {
                        "now@example.net"
                    };
                    let body = format!("client {n} message {i}\r\n").repeat(40);
                    let r = c
                        .send_plain("app@soak.test", to, &format!("{n}-{i}"), &body)
                        .await;
                    assert_eq!(r.code, 250, "{r:?}");
                    accepted.fetch_add(1, Ordering::Relaxed);
                    i += 1;
                }
                c.cmd("QUIT").await;
            }
        }));
    }

    // Deletes of deferred messages, concurrently, through the admin socket.
    let deleter = {
        let (relay, stop) = (relay.clone(), stop.clone());
        tokio::task::spawn_blocking(move || {
            let mut deleted = HashSet::new();
            while !stop.load(Ordering::Relaxed) {
                let list = relay.cli_json(&["queue", "list"]);
                for m in list.as_array().unwrap().iter().take(3) {
                    let qid = m["id"].as_str().unwrap().to_string();
                    if relay.cli(&["queue", "delete", &qid]).status.success() {
                        deleted.insert(qid);
                    }
                }
                std::thread::sleep(Duration::from_millis(300));
            }
            deleted
        })
    };

    // Progress every 2 s: acceptance and delivery both move.
    let mut last = (0usize, 0usize);
    while Instant::now() < deadline {
        tokio::time::sleep(Duration::from_secs(2)).await;
        let now = (accepted.load(Ordering::Relaxed), up.messages().len());
        assert!(now.0 > last.0, "acceptance stalled at {}", now.0);
        assert!(now.1 > last.1, "delivery stalled at {}", now.1);
        last = now;
    }
    stop.store(true, Ordering::Relaxed);
    for c in clients {
        c.await.unwrap();
    }
    let deleted = deleter.await.unwrap();
    let total = accepted.load(Ordering::Relaxed);

    // Every accepted message is delivered, deleted, or still queued (deferred) — none lost.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let log = relay.cli_json(&["log", "--limit", "1000000"]);
    let entries = log.as_array().unwrap();
    assert_eq!(entries.len(), total, "every accepted message is in the log");
    for e in entries {
        let state = e["state"].as_str().unwrap();
        assert!(
            ["delivered", "deferred", "queued", "deleted"].contains(&state),
            "unexpected state {state}: {e}"
        );
        if state == "deleted" {
            assert!(deleted.contains(e["id"].as_str().unwrap()));
        }
    }
    let size = dir_size(&relay.state_dir());
    println!(
        "soak: {secs} s, {total} accepted, {} delivered, {} deleted, state dir {} MiB",
        up.messages().len(),
        deleted.len(),
        size / (1024 * 1024)
    );
    // Bounded growth: well under 64 KiB per accepted message (bodies are ~1.5 KiB).
    assert!(
        size < 64 * 1024 * total as u64 + 64 * 1024 * 1024,
        "state dir grew to {size} bytes"
    );
}
