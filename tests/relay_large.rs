//! Large messages: bodies over 256 KiB are spilled to disk while they arrive, kept in their own
//! fsync'd files in the queue (not in sled), loaded under the memory budget, and delivered
//! byte for byte — across a kill -9, with several clients at once, and with the disk short.

mod support;

use std::time::Duration;

use support::certs::TestPki;
use support::client::Client;
use support::relay::{Relay, RelayOptions};
use support::upstream::{TestUpstream, UpstreamOptions};

/// A CRLF message of about `size` bytes whose lines often start with a dot (so stuffing and
/// unstuffing cross every chunk boundary), as the client writes it: (unstuffed, stuffed).
fn large_message(from: &str, size: usize, seed: usize) -> (Vec<u8>, Vec<u8>) {
    let mut msg = format!(
        "From: App <{from}>\r\nTo: <user@example.net>\r\nSubject: large {seed}\r\n\
         MIME-Version: 1.0\r\nContent-Type: text/plain; charset=utf-8\r\n\r\n"
    )
    .into_bytes();
    let mut i = 0usize;
    while msg.len() < size {
        let line = match (i + seed) % 5 {
            0 => format!(".line {i} starts with a dot\r\n"),
            1 => "..\r\n".to_string(),
            2 => format!("{}\r\n", "x".repeat(900)),
            _ => format!("line {i} of message {seed}\r\n"),
        };
        msg.extend_from_slice(line.as_bytes());
        i += 1;
    }
    let mut stuffed = Vec::with_capacity(msg.len() + msg.len() / 10);
    for line in msg.split_inclusive(|&b| b == b'\n') {
        if line.first() == Some(&b'.') {
            stuffed.push(b'.');
        }
        stuffed.extend_from_slice(line);
    }
    (msg, stuffed)
}

async fn send_large(c: &mut Client, from: &str, stuffed: &[u8]) -> support::client::Reply {
    assert_eq!(c.cmd(&format!("MAIL FROM:<{from}>")).await.code, 250);
    assert_eq!(c.cmd("RCPT TO:<user@example.net>").await.code, 250);
    assert_eq!(c.cmd("DATA").await.code, 354);
    for chunk in stuffed.chunks(50_000) {
        c.write(chunk).await;
    }
    c.write(b".\r\n").await;
    c.reply().await
}

fn body_files(relay: &Relay) -> Vec<String> {
    match std::fs::read_dir(relay.state_dir().join("bodies")) {
        Ok(d) => d
            .flatten()
            .map(|e| e.file_name().to_string_lossy().to_string())
            .collect(),
        Err(_) => Vec::new(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_large_message_survives_kill9_in_its_own_file_and_is_delivered_intact() {
    let pki = TestPki::generate();
    let up = TestUpstream::start(UpstreamOptions::implicit(&pki)).await;
    let addr = up.addr();
    up.stop(); // keep the message queued
    let mut relay = Relay::start_with_upstream(
        up.port(),
        "implicit",
        &pki,
        RelayOptions {
            retry_schedule_secs: vec![1],
            max_message_size: 8 * 1024 * 1024,
            ..Default::default()
        },
    );
    let (id, token) = relay.add_project("app", &["app.test"]);
    let (plain, stuffed) = large_message("noreply@app.test", 3 * 1024 * 1024, 0);

    let mut c = Client::logged_in(relay.starttls, &relay.pki, &id, &token).await;
    let r = send_large(&mut c, "noreply@app.test", &stuffed).await;
    assert_eq!(r.code, 250, "{r:?}");
    let qid = r.queued_id();
    assert_eq!(
        body_files(&relay),
        vec![qid.clone()],
        "body kept in its own file"
    );
    let stored = std::fs::metadata(relay.state_dir().join("bodies").join(&qid))
        .unwrap()
        .len();
    assert!(
        stored as usize > plain.len(),
        "stored with the relay's headers"
    );
    // Nothing of the upload is left in the spill directory (unnamed files).
    let incoming = std::fs::read_dir(relay.state_dir().join("incoming"))
        .map(|d| d.count())
        .unwrap_or(0);
    assert_eq!(incoming, 0);

    // Crash, plus an orphan body file (a transaction lost in a crash): the queued message
    // comes back, the orphan goes.
    relay.kill9();
    let orphan = relay
        .state_dir()
        .join("bodies")
        .join("0000000000000000deadbeef");
    std::fs::write(&orphan, b"From: x\r\n\r\nlost\r\n").unwrap();
    relay.spawn();
    assert!(!orphan.exists(), "orphan body file removed at start");

    let up2 = TestUpstream::start(UpstreamOptions::implicit(&pki).at(addr)).await;
    relay.wait_state(&qid, &["delivered"], Duration::from_secs(40));
    let got = up2.wait_for(1, Duration::from_secs(10)).await;
    assert!(
        got[0].data.ends_with(&plain[plain.len() - 200_000..]),
        "body delivered byte for byte"
    );
    let received = &got[0].data;
    let at = received
        .windows(plain.len())
        .position(|w| w == &plain[..])
        .expect("the whole message, unchanged, follows the relay's headers");
    assert!(at > 0);
    assert!(up2.violations().is_empty(), "{:?}", up2.violations());
    // Done: the file is gone too.
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while !body_files(&relay).is_empty() && std::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(body_files(&relay).is_empty(), "{:?}", body_files(&relay));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_large_messages_larger_than_the_budget_all_get_through() {
    let pki = TestPki::generate();
    let up = TestUpstream::start(UpstreamOptions::implicit(&pki)).await;
    let relay = Relay::start_with_upstream(
        up.port(),
        "implicit",
        &pki,
        RelayOptions {
            max_message_size: 8 * 1024 * 1024,
            // 1 MiB of large messages at once; each is 2 MiB, so they go one at a time.
            server_extra: "message_memory_mb = 1".into(),
            ..Default::default()
        },
    );
    let (id, token) = relay.add_project("app", &["app.test"]);
    let mut tasks = Vec::new();
    for n in 0..4 {
        let (addr, pki2, id, token) =
            (relay.starttls, relay.pki.clone(), id.clone(), token.clone());
        tasks.push(tokio::spawn(async move {
            let (plain, stuffed) = large_message("noreply@app.test", 2 * 1024 * 1024, n);
            let mut c = Client::logged_in(addr, &pki2, &id, &token).await;
            let r = send_large(&mut c, "noreply@app.test", &stuffed).await;
            assert_eq!(r.code, 250, "{r:?}");
            // Same session goes on with a small message.
            let small = c.submit("noreply@app.test", "user@example.net").await;
            (r.queued_id(), small, plain)
        }));
    }
    let mut sent = Vec::new();
    for t in tasks {
        sent.push(t.await.unwrap());
    }
    for (qid, small, _) in &sent {
        relay.wait_state(qid, &["delivered"], Duration::from_secs(40));
        relay.wait_state(small, &["delivered"], Duration::from_secs(40));
    }
    let got = up.wait_for(8, Duration::from_secs(10)).await;
    for (_, _, plain) in &sent {
        assert!(
            got.iter().any(|m| m.data.ends_with(plain)),
            "every large message arrives intact"
        );
    }
    assert!(up.violations().is_empty(), "{:?}", up.violations());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_large_message_is_refused_with_452_when_the_disk_is_short_and_nothing_is_kept() {
    let relay = Relay::start(RelayOptions {
        max_message_size: 8 * 1024 * 1024,
        // More free space than any test machine has: every write is refused.
        min_free_space_mb: 1 << 40,
        ..Default::default()
    });
    let (id, token) = relay.add_project("app", &["app.test"]);
    let (_, stuffed) = large_message("noreply@app.test", 1024 * 1024, 1);
    let mut c = Client::logged_in(relay.starttls, &relay.pki, &id, &token).await;
    let r = send_large(&mut c, "noreply@app.test", &stuffed).await;
    assert_eq!(r.code, 452, "{r:?}");
    assert!(r.text.contains("4.3.1"), "{r:?}");
    // The session is still usable and in a clean state.
    assert_eq!(c.cmd("RSET").await.code, 250);
    assert_eq!(c.cmd("NOOP").await.code, 250);
    let list = relay.cli_json(&["queue", "list"]);
    assert_eq!(list.as_array().map(|a| a.len()), Some(0), "{list:#}");
    assert!(body_files(&relay).is_empty());
}
