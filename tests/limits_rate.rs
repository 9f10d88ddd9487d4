//! Per-project rate limits over real sockets: burst then `451` with a retry time that is right,
//! projects not affecting each other, the tightest of several windows winning, refused
//! messages consuming nothing, recipient quotas, size/recipient overrides, session limits and
//! what `project show` reports.

mod support;

use std::time::{Duration, Instant};

use support::client::{Client, Reply, plain_message};
use support::relay::{Relay, RelayOptions};

fn message(n: usize) -> String {
    plain_message(
        "noreply@app.test",
        "user@example.net",
        &format!("msg {n}"),
        "Your code is 4711\r\n",
    )
}

/// `N` from `451 4.7.1 Rate limit exceeded for project <id>, retry in <N> s`, checking the
/// whole reply.
fn retry_in(r: &Reply, project: &str) -> u64 {
    let prefix = format!("4.7.1 Rate limit exceeded for project {project}, retry in ");
    assert!(r.text.starts_with(&prefix), "unexpected reply: {r:?}");
    r.retry_in_secs()
        .unwrap_or_else(|| panic!("no retry time in {r:?}"))
}

async fn send(c: &mut Client, n: usize) -> Reply {
    c.send("noreply@app.test", &["user@example.net"], &message(n))
        .await
}

fn limits(relay: &Relay, id: &str, flags: &[&str]) -> serde_json::Value {
    let mut args = vec!["project", "limits", id];
    args.extend_from_slice(flags);
    relay.cli_json(&args)
}

fn window<'a>(show: &'a serde_json::Value, name: &str) -> &'a serde_json::Value {
    show["limits"]["windows"]
        .as_array()
        .unwrap()
        .iter()
        .find(|w| w["window"] == name)
        .unwrap_or_else(|| panic!("no window {name} in {show:#}"))
}

fn queued(relay: &Relay, project: &str) -> usize {
    relay
        .cli_json(&["log", "--project", project])
        .as_array()
        .unwrap()
        .len()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn burst_then_451_and_the_announced_retry_time_is_right() {
    let relay = Relay::start(RelayOptions::default());
    let (id, token) = relay.add_project("app", &["app.test"]);
    // 12 a minute: a burst of 12, then one every 5 s.
    limits(&relay, &id, &["--per-minute", "12"]);

    let mut c = Client::logged_in(relay.starttls, &relay.pki, &id, &token).await;
    let first = Instant::now();
    for n in 0..12 {
        let r = send(&mut c, n).await;
        assert_eq!(r.code, 250, "message {n}: {r:?}");
    }
    // Refused at MAIL FROM, before the body is uploaded.
    let r = c.cmd("MAIL FROM:<noreply@app.test>").await;
    let elapsed = first.elapsed().as_secs_f64();
    let n = retry_in(&r, &id);
    // The true wait is 5 s minus the time the burst took; N is it rounded up.
    assert!(
        n <= 5 && n as f64 >= 5.0 - elapsed,
        "retry in {n} s after a burst of {elapsed:.2} s"
    );
    // The transaction did not start: RCPT needs MAIL.
    assert_eq!(c.cmd("RCPT TO:<user@example.net>").await.code, 503);
    assert_eq!(queued(&relay, &id), 12, "nothing more was queued");

    // Waiting exactly the announced time is enough.
    tokio::time::sleep(Duration::from_secs(n)).await;
    let r = send(&mut c, 12).await;
    assert_eq!(r.code, 250, "after waiting {n} s: {r:?}");
    assert_eq!(queued(&relay, &id), 13);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_exhausted_project_does_not_affect_another() {
    let relay = Relay::start(RelayOptions::default());
    let (a, token_a) = relay.add_project("a", &["app.test"]);
    let (b, token_b) = relay.add_project("b", &["app.test"]);
    limits(&relay, &a, &["--per-minute", "2"]);
    limits(&relay, &b, &["--per-minute", "2"]);

    let mut ca = Client::logged_in(relay.starttls, &relay.pki, &a, &token_a).await;
    let mut cb = Client::logged_in(relay.starttls, &relay.pki, &b, &token_b).await;
    assert_eq!(send(&mut ca, 0).await.code, 250);
    assert_eq!(send(&mut ca, 1).await.code, 250);
    let n = retry_in(&send(&mut ca, 2).await, &a);
    assert!((29..=30).contains(&n), "{n}");

    for i in 0..2 {
        let r = send(&mut cb, i).await;
        assert_eq!(r.code, 250, "project b, message {i}: {r:?}");
    }
    retry_in(&send(&mut cb, 2).await, &b);
    retry_in(&send(&mut ca, 3).await, &a);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_several_windows_the_tightest_one_wins() {
    let relay = Relay::start(RelayOptions::default());
    // (limits, messages that fit, the range N must be in)
    let cases: [(&[&str], usize, std::ops::RangeInclusive<u64>); 4] = [
        // The minute window (one every 20 s) is tighter than 10/s.
        (
            &["--per-second", "10", "--burst", "10", "--per-minute", "3"],
            3,
            17..=20,
        ),
        // The second window is tighter than 100/h.
        (
            &["--per-second", "1", "--burst", "2", "--per-hour", "100"],
            2,
            1..=1,
        ),
        // 2 a day (one every 12 h) beats 4 an hour…
        (&["--per-hour", "4", "--per-day", "2"], 2, 43_190..=43_200),
        // …and 2 an hour (one every 30 min) beats 10 a day.
        (&["--per-hour", "2", "--per-day", "10"], 2, 1_790..=1_800),
    ];
    for (i, (flags, fit, range)) in cases.into_iter().enumerate() {
        let (id, token) = relay.add_project(&format!("p{i}"), &["app.test"]);
        limits(&relay, &id, flags);
        let mut c = Client::logged_in(relay.starttls, &relay.pki, &id, &token).await;
        for n in 0..fit {
            let r = send(&mut c, n).await;
            assert_eq!(r.code, 250, "{flags:?} message {n}: {r:?}");
        }
        let n = retry_in(&send(&mut c, fit).await, &id);
        assert!(
            range.contains(&n),
            "{flags:?}: retry in {n} s, want {range:?}"
        );
        if n == 1 {
            tokio::time::sleep(Duration::from_secs(1)).await;
            assert_eq!(send(&mut c, fit + 1).await.code, 250, "{flags:?}");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_messages_consume_nothing_and_recipients_are_counted() {
    let relay = Relay::start(RelayOptions::default());
    let (id, token) = relay.add_project("app", &["app.test"]);
    limits(
        &relay,
        &id,
        &[
            "--per-minute",
            "2",
            "--recipients-per-day",
            "5",
            "--max-recipients",
            "3",
            "--max-size",
            "4KiB",
        ],
    );
    let mut c = Client::logged_in(relay.starttls, &relay.pki, &id, &token).await;

    // Refused for other reasons: header From, size (declared and actual).
    let spoofed = plain_message("ceo@other.test", "user@example.net", "x", "hi\r\n");
    let r = c
        .send("noreply@app.test", &["user@example.net"], &spoofed)
        .await;
    assert_eq!(r.code, 550, "{r:?}");
    let big = plain_message(
        "noreply@app.test",
        "user@example.net",
        "big",
        &"0123456789abcdef\r\n".repeat(300),
    );
    let r = c
        .send("noreply@app.test", &["user@example.net"], &big)
        .await;
    assert_eq!(r.code, 552, "{r:?}");
    let r = c.cmd("MAIL FROM:<noreply@app.test> SIZE=5000").await;
    assert_eq!(r.code, 552, "{r:?}");

    // The project's own recipient limit.
    assert_eq!(c.cmd("MAIL FROM:<noreply@app.test>").await.code, 250);
    for i in 0..3 {
        assert_eq!(
            c.cmd(&format!("RCPT TO:<u{i}@example.net>")).await.code,
            250
        );
    }
    let r = c.cmd("RCPT TO:<u3@example.net>").await;
    assert_eq!(
        (r.code, r.text.as_str()),
        (452, "4.5.3 Too many recipients")
    );
    assert_eq!(c.cmd("RSET").await.code, 250);

    // Nothing so far was counted: both messages of the minute are still available.
    let r = c
        .send(
            "noreply@app.test",
            &["a@example.net", "b@example.net", "c@example.net"],
            &message(1),
        )
        .await;
    assert_eq!(r.code, 250, "{r:?}");
    // 3 of 5 recipients used: the third RCPT of the next message does not fit.
    assert_eq!(c.cmd("MAIL FROM:<noreply@app.test>").await.code, 250);
    assert_eq!(c.cmd("RCPT TO:<d@example.net>").await.code, 250);
    assert_eq!(c.cmd("RCPT TO:<e@example.net>").await.code, 250);
    let n = retry_in(&c.cmd("RCPT TO:<f@example.net>").await, &id);
    assert!(n > 3600, "a daily recipient quota: {n}");
    assert_eq!(c.cmd("DATA").await.code, 354);
    c.write(message(2).as_bytes()).await;
    c.write(b".\r\n").await;
    assert_eq!(c.reply().await.code, 250);

    // Both windows are spent; MAIL FROM says so.
    retry_in(&c.cmd("MAIL FROM:<noreply@app.test>").await, &id);
    assert_eq!(queued(&relay, &id), 2);

    let show = relay.cli_json(&["project", "show", &id]);
    let minute = window(&show, "per_minute");
    assert_eq!(
        (minute["used"].as_u64(), minute["remaining"].as_u64()),
        (Some(2), Some(0))
    );
    assert_eq!(minute["source"], "project");
    let rcpt = window(&show, "recipients_per_day");
    assert_eq!(
        (rcpt["used"].as_u64(), rcpt["remaining"].as_u64()),
        (Some(5), Some(0))
    );
    assert_eq!(rcpt["unit"], "recipients");
    assert_eq!(rcpt["persistent"], true);
    assert_eq!(show["limits"]["max_size"], 4096);
    assert_eq!(show["limits"]["max_recipients"], 3);
    assert_eq!(show["limits"]["mode"], "reject");

    // The text form shows the same.
    let out = relay.cli(&["project", "show", &id]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("per_minute"), "{text}");
    assert!(text.contains("recipients_per_day"), "{text}");

    // --clear goes back to the defaults (no [limits] here: unlimited).
    let cleared = limits(&relay, &id, &["--clear"]);
    assert!(
        cleared["limits"]["windows"].as_array().unwrap().is_empty(),
        "{cleared:#}"
    );
    assert_eq!(send(&mut c, 3).await.code, 250);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_project_has_at_most_its_sessions() {
    let relay = Relay::start(RelayOptions::default());
    let (id, token) = relay.add_project("app", &["app.test"]);
    limits(&relay, &id, &["--max-connections", "1"]);

    let mut first = Client::logged_in(relay.starttls, &relay.pki, &id, &token).await;
    let (mut second, _) = Client::starttls(relay.starttls, &relay.pki).await;
    let r = second.auth_plain(&id, &token).await;
    assert_eq!(r.code, 421, "{r:?}");
    assert!(
        r.text.starts_with("4.7.0 Too many connections for project"),
        "{r:?}"
    );
    assert!(second.closed(Duration::from_secs(5)).await);
    let show = relay.cli_json(&["project", "show", &id]);
    assert_eq!(show["limits"]["connections"], 1);

    // The place is given back when the first session ends.
    assert_eq!(first.cmd("QUIT").await.code, 221);
    assert!(first.closed(Duration::from_secs(5)).await);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (mut c, _) = Client::starttls(relay.starttls, &relay.pki).await;
        let r = c.auth_plain(&id, &token).await;
        if r.code == 235 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "session place never freed: {r:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
