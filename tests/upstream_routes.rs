//! Routes toward several upstreams: ordered failover (and when not to fail over), throttle
//! backoff shared by the workers, connection reuse within the upstream's limits, per-project
//! routes from the CLI, and From rewriting for mailbox-bound providers.

mod support;

use std::time::{Duration, Instant};

use support::certs::TestPki;
use support::relay::{Relay, RelayOptions, delivery_table, upstream_table};
use support::upstream::{Script, TestUpstream, UpstreamOptions};

const FROM: &str = "noreply@app.test";

struct Two {
    relay: Relay,
    a: TestUpstream,
    b: TestUpstream,
    id: String,
    token: String,
    _tmp: tempfile::TempDir,
}

/// Upstreams `a` and `b` (implicit TLS), default route a → b, and a project.
async fn two(script_a: Script, extra_a: &str) -> Two {
    let pki = TestPki::generate();
    let a = TestUpstream::start(UpstreamOptions::implicit(&pki).with_script(script_a)).await;
    let b = TestUpstream::start(UpstreamOptions::implicit(&pki)).await;
    let tmp = tempfile::tempdir().unwrap();
    let files = pki.write_to(tmp.path());
    let config = format!(
        "{}{}{}",
        delivery_table("a", &["b"]),
        upstream_table("a", a.port(), "implicit", &files.ca, extra_a),
        upstream_table("b", b.port(), "implicit", &files.ca, ""),
    );
    let relay = Relay::start(RelayOptions {
        upstreams: Some(config),
        retry_schedule_secs: vec![1],
        ..Default::default()
    });
    let (id, token) = relay.add_project("app", &["app.test"]);
    Two {
        relay,
        a,
        b,
        id,
        token,
        _tmp: tmp,
    }
}

impl Two {
    /// Submits a message to `rcpt` and waits until it is in `state`; returns id and status.
    async fn send(&self, rcpt: &str, state: &str) -> (String, serde_json::Value) {
        let id = self
            .relay
            .submit(&self.id, &self.token, FROM, &[rcpt])
            .await;
        let v = self
            .relay
            .wait_state(&id, &[state], Duration::from_secs(20));
        (id, v)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failover_when_the_first_upstream_is_down() {
    let s = two(Script::default(), "").await;
    s.a.stop();
    let (_, v) = s.send("user@example.net", "delivered").await;
    assert_eq!(v["upstream"], "b", "{v:#}");
    assert_eq!(
        v["attempts"], 1,
        "failover happens within one attempt: {v:#}"
    );
    let got = s.b.wait_for(1, Duration::from_secs(5)).await;
    assert_eq!(got[0].rcpt_to, vec!["user@example.net"]);
    assert!(
        s.relay
            .server_log()
            .contains("trying the next upstream of the route"),
        "{}",
        s.relay.server_log()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_duplicate_when_the_first_upstream_accepted_or_may_have() {
    // Accepted by a: b never hears of it.
    let s = two(Script::default(), "").await;
    let (_, v) = s.send("user@example.net", "delivered").await;
    assert_eq!(v["upstream"], "a");
    assert_eq!(s.a.messages().len(), 1);
    assert_eq!(s.b.connections(), 0, "nothing may go to the fallback");

    // a reads the whole body and drops the connection without answering: the message may
    // have been accepted, so it must not be sent to b — it is retried on a later.
    s.a.set_script(Script {
        drop_after_data: true,
        ..Default::default()
    });
    let (id, v) = s.send("other@example.net", "deferred").await;
    assert_eq!(v["upstream"], "a", "{v:#}");
    assert_eq!(s.b.connections(), 0, "no fan-out after DATA was sent");
    s.a.set_script(Script::default());
    let v = s
        .relay
        .wait_state(&id, &["delivered"], Duration::from_secs(20));
    assert_eq!(v["upstream"], "a", "{v:#}");
    assert_eq!(s.b.connections(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failover_on_421_and_454_but_not_on_a_recipient_5xx() {
    // 421 greeting.
    let s = two(
        Script {
            greeting: Some("421 4.3.2 Service not available, closing".into()),
            ..Default::default()
        },
        "",
    )
    .await;
    let (_, v) = s.send("one@example.net", "delivered").await;
    assert_eq!(
        (v["upstream"].as_str(), v["attempts"].as_u64()),
        (Some("b"), Some(1))
    );

    // 454 to MAIL FROM.
    s.a.set_script(Script {
        mail: Some("454 4.7.0 Temporary service failure".into()),
        ..Default::default()
    });
    let (_, v) = s.send("two@example.net", "delivered").await;
    assert_eq!(v["upstream"], "b", "{v:#}");
    assert_eq!(s.b.wait_for(2, Duration::from_secs(5)).await.len(), 2);

    // A 5xx for a recipient is final, whichever upstream said it: b never sees it.
    s.a.set_script(Script::default().with_rcpt("gone@example.net", "550 5.1.1 No such user"));
    let (id, v) = s.send("gone@example.net", "failed").await;
    assert_eq!(v["upstream"], "a");
    assert!(
        v["last_reply"].as_str().unwrap().starts_with("550 5.1.1"),
        "{v:#}"
    );
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(
        s.b.messages().len(),
        2,
        "the refused message must not reach b"
    );
    assert_eq!(s.relay.cli_json(&["queue", "show", &id])["attempts"], 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn throttle_reply_backs_off_the_whole_route() {
    let pki = TestPki::generate();
    let up = TestUpstream::start(UpstreamOptions::implicit(&pki).with_script(Script {
        mail: Some("454 4.7.0 Throttling failure: Maximum sending rate exceeded.".into()),
        ..Default::default()
    }))
    .await;
    let tmp = tempfile::tempdir().unwrap();
    let files = pki.write_to(tmp.path());
    let backoff = 4;
    let relay = Relay::start(RelayOptions {
        upstreams: Some(format!(
            "{}{}",
            delivery_table("t", &[]),
            upstream_table(
                "t",
                up.port(),
                "implicit",
                &files.ca,
                &format!("throttle_backoff_secs = {backoff}")
            )
        )),
        retry_schedule_secs: vec![1],
        ..Default::default()
    });
    let (pid, token) = relay.add_project("app", &["app.test"]);
    let started = Instant::now();
    let mut ids = Vec::new();
    for i in 0..5 {
        ids.push(
            relay
                .submit(&pid, &token, FROM, &[&format!("u{i}@example.net")])
                .await,
        );
    }
    // Inside the backoff window: with a 1 s retry schedule and no backoff, 5 messages would
    // make ~15 attempts in 3 s. With it, only the attempts already under way when the first
    // throttle reply came in (at most one per worker) reach the upstream.
    let window = Duration::from_secs(backoff - 1);
    tokio::time::sleep(window.saturating_sub(started.elapsed())).await;
    let mails = |up: &TestUpstream| {
        up.commands()
            .iter()
            .filter(|c| c.contains("MAIL FROM"))
            .count()
    };
    let in_window = mails(&up);
    eprintln!(
        "measured: {in_window} MAIL attempt(s) for 5 messages within {} ms of a {backoff} s backoff",
        started.elapsed().as_millis()
    );
    assert!(
        (1..=4).contains(&in_window),
        "attempts inside the backoff window: {in_window}"
    );
    let v = relay.cli_json(&["queue", "show", &ids[4]]);
    assert_eq!(v["state"], "deferred", "{v:#}");
    assert!(v["last_reply"].as_str().unwrap().contains("4.7.0"), "{v:#}");

    // The provider recovers: everything goes out after the window, without burnt retries.
    up.set_script(Script::default());
    for id in &ids {
        let v = relay.wait_state(id, &["delivered"], Duration::from_secs(30));
        assert!(v["attempts"].as_u64().unwrap() <= 2, "{v:#}");
    }
    assert!(relay.server_log().contains("upstream is throttling"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_are_reused_within_the_upstream_limits() {
    let pki = TestPki::generate();
    let up = TestUpstream::start(UpstreamOptions::implicit(&pki)).await;
    let tmp = tempfile::tempdir().unwrap();
    let files = pki.write_to(tmp.path());
    let relay = Relay::start(RelayOptions {
        upstreams: Some(format!(
            "{}{}{}",
            delivery_table("one", &[]),
            upstream_table(
                "one",
                up.port(),
                "implicit",
                &files.ca,
                "max_connections = 1"
            ),
            upstream_table(
                "three",
                up.port(),
                "implicit",
                &files.ca,
                "max_connections = 1\nmax_messages_per_connection = 3\nidle_timeout_secs = 1"
            ),
        )),
        ..Default::default()
    });
    let (pid, token) = relay.add_project("app", &["app.test"]);
    let n = 10;
    for i in 0..n {
        relay
            .submit(&pid, &token, FROM, &[&format!("u{i}@example.net")])
            .await;
    }
    let got = up.wait_for(n, Duration::from_secs(30)).await;
    let first = up.connections();
    eprintln!("measured: {n} messages over {first} connection(s) (max_connections = 1)");
    assert_eq!(first, 1, "one pooled connection carries them all");
    assert!(got.iter().all(|m| m.connection == 1));
    assert!(
        up.commands().iter().any(|c| c.ends_with("RSET")),
        "RSET between messages"
    );
    // The upstream offers PIPELINING: RSET, MAIL and RCPT arrive with the rest of the group.
    assert!(
        up.pipelined() >= 2 * (n - 1),
        "pipelined {}",
        up.pipelined()
    );
    assert!(up.violations().is_empty(), "{:?}", up.violations());

    // Per-project route to an upstream that closes a connection after 3 messages, and after
    // 1 s idle.
    relay.cli_json(&["project", "route", &pid, "--upstream", "three"]);
    for i in 0..n {
        relay
            .submit(&pid, &token, FROM, &[&format!("v{i}@example.net")])
            .await;
    }
    let got = up.wait_for(2 * n, Duration::from_secs(30)).await;
    let used: std::collections::BTreeSet<usize> = got[n..].iter().map(|m| m.connection).collect();
    eprintln!(
        "measured: {n} messages over {} connection(s) (max 3 per connection)",
        used.len()
    );
    assert_eq!(used.len(), n.div_ceil(3), "{used:?}");
    for c in &used {
        assert!(got[n..].iter().filter(|m| m.connection == *c).count() <= 3);
    }
    // The last connection is closed after its idle timeout, with QUIT.
    let last = *used.iter().max().unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while !up.transcript().contains(&format!("[{last}] -- closed")) {
        assert!(
            Instant::now() < deadline,
            "idle connection never closed:\n{:#?}",
            up.transcript()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(up.commands().contains(&format!("[{last}] QUIT")));
}

/// One relay with the single upstream `up` (implicit TLS, one connection at a time, up to 100
/// messages per connection) and a project.
async fn pooled_to(opts: UpstreamOptions, pki: &TestPki) -> (Relay, TestUpstream, String, String) {
    let up = TestUpstream::start(opts).await;
    let relay = Relay::start_with_upstream(
        up.port(),
        "implicit",
        pki,
        RelayOptions {
            retry_schedule_secs: vec![1],
            ..Default::default()
        },
    );
    let (id, token) = relay.add_project("app", &["app.test"]);
    (relay, up, id, token)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upstream_without_pipelining_gets_one_command_at_a_time() {
    let pki = TestPki::generate();
    let (relay, up, id, token) =
        pooled_to(UpstreamOptions::implicit(&pki).without_pipelining(), &pki).await;
    let n = 6;
    for i in 0..n {
        relay
            .submit(
                &id,
                &token,
                FROM,
                &[&format!("u{i}@example.net"), "v@example.net"],
            )
            .await;
    }
    let got = up.wait_for(n, Duration::from_secs(30)).await;
    assert!(got.iter().all(|m| m.rcpt_to.len() == 2));
    assert!(up.commands().iter().any(|c| c.ends_with("RSET")));
    assert_eq!(up.pipelined(), 0, "{:#?}", up.transcript());
    assert!(up.violations().is_empty(), "{:?}", up.violations());
}

/// An upstream that closes every connection right after its reply to the body: the pooled
/// connection is found dead when the next message's group (RSET first) gets no answer, and the
/// message goes over a new connection at once — not deferred, not delivered twice. The same
/// without PIPELINING, where the RSET probe alone finds it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pooled_connection_closed_while_idle_is_replaced_quietly() {
    let pki = TestPki::generate();
    for opts in [
        UpstreamOptions::implicit(&pki),
        UpstreamOptions::implicit(&pki).without_pipelining(),
    ] {
        let opts = opts.with_script(Script {
            close_after_data_end: true,
            ..Default::default()
        });
        let (relay, up, id, token) = pooled_to(opts, &pki).await;
        let mut ids = Vec::new();
        for i in 0..3 {
            let q = relay
                .submit(&id, &token, FROM, &[&format!("u{i}@example.net")])
                .await;
            up.wait_for(i + 1, Duration::from_secs(30)).await;
            // Let the relay see the close before the next message comes.
            tokio::time::sleep(Duration::from_millis(200)).await;
            ids.push(q);
        }
        for q in &ids {
            let v = relay.wait_state(q, &["delivered"], Duration::from_secs(10));
            assert_eq!(v["attempts"].as_u64(), Some(1), "{v:#}");
        }
        let got = up.messages();
        assert_eq!(got.len(), 3, "each message exactly once");
        assert_eq!(up.connections(), 3);
        assert!(up.violations().is_empty(), "{:?}", up.violations());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn project_routes_from_the_cli() {
    let s = two(Script::default(), "").await;
    let v = s.relay.cli_json(&["project", "route", &s.id]);
    assert_eq!(
        (v["upstream"].as_str(), v["default"].as_bool()),
        (Some("a"), Some(true))
    );
    assert_eq!(v["fallbacks"], serde_json::json!(["b"]));

    let v = s.relay.cli_json(&[
        "project",
        "route",
        &s.id,
        "--upstream",
        "b",
        "--fallback",
        "a",
    ]);
    assert_eq!(
        (v["upstream"].as_str(), v["default"].as_bool()),
        (Some("b"), Some(false))
    );
    let (_, v) = s.send("user@example.net", "delivered").await;
    assert_eq!(v["upstream"], "b");
    assert_eq!(s.a.connections(), 0);

    let out = s
        .relay
        .cli(&["project", "route", &s.id, "--upstream", "nope"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("no upstream named \"nope\""), "{err}");
    let text =
        String::from_utf8_lossy(&s.relay.cli(&["project", "route", &s.id]).stdout).to_string();
    assert!(text.contains("→ b → a"), "{text}");

    let v = s.relay.cli_json(&["project", "route", &s.id, "--default"]);
    assert_eq!(v["default"], true);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn from_is_rewritten_for_mailbox_bound_upstreams() {
    let s = two(
        Script::default(),
        "rewrite_from = true\nfrom_address = \"relay-box@corp.example\"",
    )
    .await;
    let mut c =
        support::client::Client::logged_in(s.relay.starttls, &s.relay.pki, &s.id, &s.token).await;
    let body = "From: \"My App\" <noreply@app.test>\r\nTo: user@example.net\r\nSubject: hi\r\n\r\nhello\r\n";
    let r = c.send(FROM, &["user@example.net"], body).await;
    assert_eq!(r.code, 250, "{r:?}");
    let got = s.a.wait_for(1, Duration::from_secs(20)).await;
    let text = got[0].text();
    assert!(
        text.contains("\r\nFrom: \"My App\" <relay-box@corp.example>\r\n"),
        "{text}"
    );
    assert!(
        text.contains("\r\nReply-To: \"My App\" <noreply@app.test>\r\n"),
        "{text}"
    );
    assert_eq!(got[0].mail_from, "relay-box@corp.example");
}
