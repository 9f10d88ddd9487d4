//! accept-and-delay: over the limit, messages are still accepted at once, then released to a
//! real upstream in submission order and never faster than the project's windows; a message
//! that could only be released after its maximum age is refused instead.

mod support;

use std::time::{Duration, Instant};

use support::client::{Client, plain_message};
use support::dkim::Setup;
use support::relay::{Relay, RelayOptions};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delayed_messages_are_released_in_order_never_faster_than_the_limit() {
    // A relay forwarding to a test upstream over implicit TLS, with one project.
    let setup = Setup::start(&["app.test"]).await;
    let (relay, up) = (&setup.relay, &setup.up);
    let (id, token) = (setup.id.clone(), setup.token.clone());
    // One message every 500 ms, no burst.
    let show = relay.cli_json(&[
        "project",
        "limits",
        &id,
        "--per-second",
        "2",
        "--burst",
        "1",
        "--mode",
        "accept-and-delay",
    ]);
    assert_eq!(show["limits"]["mode"], "accept-and-delay");

    const N: usize = 6;
    const PERIOD: Duration = Duration::from_millis(500);
    let mut c = Client::logged_in(relay.starttls, &relay.pki, &id, &token).await;
    let start = Instant::now();
    for i in 0..N {
        let body = plain_message(
            "noreply@app.test",
            "user@example.net",
            &format!("msg {i}"),
            "hi\r\n",
        );
        let r = c
            .send("noreply@app.test", &["user@example.net"], &body)
            .await;
        assert_eq!(
            r.code, 250,
            "message {i} must be accepted, not refused: {r:?}"
        );
    }

    let got = up.wait_for(N, Duration::from_secs(60)).await;
    assert_eq!(got.len(), N, "{}", relay.server_log());
    for (i, m) in got.iter().enumerate() {
        assert!(
            m.text().contains(&format!("Subject: msg {i}\r\n")),
            "message {i} out of submission order: {:?}",
            got.iter()
                .map(|m| m
                    .text()
                    .lines()
                    .find(|l| l.starts_with("Subject"))
                    .unwrap_or("")
                    .to_string())
                .collect::<Vec<_>>()
        );
        // Message i may leave no earlier than i periods after the first could.
        let earliest = PERIOD * i as u32;
        let at = m.received_at.duration_since(start);
        assert!(
            at >= earliest,
            "message {i} reached the upstream after {at:?}, before {earliest:?}"
        );
    }
    assert!(up.violations().is_empty(), "{:?}", up.violations());
    for v in relay
        .cli_json(&["log", "--project", &id])
        .as_array()
        .unwrap()
    {
        assert_eq!(v["state"], "delivered", "{v:#}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_that_could_only_expire_is_refused() {
    let relay = Relay::start(RelayOptions::default());
    let (id, token) = relay.add_project("otp", &["app.test"]);
    relay.cli_json(&["project", "max-age", &id, "30"]);
    relay.cli_json(&[
        "project",
        "limits",
        &id,
        "--per-minute",
        "1",
        "--mode",
        "accept-and-delay",
    ]);
    let mut c = Client::logged_in(relay.starttls, &relay.pki, &id, &token).await;
    let body = plain_message("noreply@app.test", "user@example.net", "code", "4711\r\n");
    let r = c
        .send("noreply@app.test", &["user@example.net"], &body)
        .await;
    assert_eq!(r.code, 250, "{r:?}");
    // The next slot is a minute away, past the 30 s maximum age: 451 at MAIL FROM, telling
    // when a message would make it in time.
    let r = c.cmd("MAIL FROM:<noreply@app.test>").await;
    assert_eq!(r.code, 451, "{r:?}");
    assert!(
        r.text.starts_with(&format!(
            "4.7.1 Rate limit exceeded for project {id}, retry in "
        )),
        "{r:?}"
    );
    let n = r.retry_in_secs().unwrap_or_else(|| panic!("{r:?}"));
    assert!((28..=30).contains(&n), "retry in {n}");
    assert_eq!(
        relay
            .cli_json(&["log", "--project", &id])
            .as_array()
            .unwrap()
            .len(),
        1
    );
}
