//! Abuse throttles per client IP, with clients bound to 127.0.0.2 and 127.0.0.3 so the relay
//! sees different addresses: the AUTH-failure cool-down (which spares other IPs and the
//! project), the per-failure delay, and the connection limits per IP.

mod support;

use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use support::certs::TestPki;
use support::client::{Client, Reply, plain_message};
use support::relay::{Relay, RelayOptions};

const A: &str = "127.0.0.2";
const B: &str = "127.0.0.3";

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

/// Greeting, EHLO, STARTTLS, EHLO from `local`.
async fn starttls_from(local: &str, addr: SocketAddr, pki: &TestPki) -> Client {
    let mut c = Client::connect_from(ip(local), addr).await;
    let greeting = c.reply().await;
    assert_eq!(greeting.code, 220, "{greeting:?}");
    assert_eq!(c.cmd("EHLO client.test").await.code, 250);
    assert_eq!(c.cmd("STARTTLS").await.code, 220);
    c.upgrade(pki).await;
    assert_eq!(c.cmd("EHLO client.test").await.code, 250);
    c
}

/// AUTH, and how long the answer took.
async fn timed_auth(c: &mut Client, user: &str, token: &str) -> (Reply, Duration) {
    let t = Instant::now();
    let r = c.auth_plain(user, token).await;
    (r, t.elapsed())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auth_failures_cool_down_the_ip_and_spare_everyone_else() {
    let relay = Relay::start(RelayOptions {
        extra_config: "[throttle]\nauth_failure_delay_ms = 300\nauth_failures_per_ip = 3\nauth_failure_window_secs = 600\nauth_cooldown_secs = 600\n".into(),
        ..Default::default()
    });
    let (id, token) = relay.add_project("app", &["app.test"]);
    let delay = Duration::from_millis(300);

    // A session from A that is ready to log in before A starts guessing.
    let mut waiting = starttls_from(A, relay.starttls, &relay.pki).await;

    // Three failures in one session: each answered after the delay, whatever failed (wrong
    // token, unknown project), then the session is closed.
    let mut c = starttls_from(A, relay.starttls, &relay.pki).await;
    for (user, tok) in [
        (id.as_str(), "smtpr_wrong"),
        ("prj_unknown", token.as_str()),
        (id.as_str(), "smtpr_wrong_again"),
    ] {
        let (r, took) = timed_auth(&mut c, user, tok).await;
        assert_eq!(r.code, 535, "{r:?}");
        assert!(
            took >= delay,
            "a failure was answered after {took:?}, before {delay:?}"
        );
    }
    let r = c.reply().await;
    assert_eq!(r.code, 421, "{r:?}");
    assert!(c.closed(Duration::from_secs(5)).await);

    // The next failure, in a new session, starts the cool-down.
    let mut c = starttls_from(A, relay.starttls, &relay.pki).await;
    let (r, _) = timed_auth(&mut c, &id, "smtpr_wrong").await;
    assert_eq!(r.code, 535, "{r:?}");
    let r = c.reply().await;
    assert_eq!(r.code, 421, "{r:?}");
    assert!(r.text.starts_with("4.7.0 "), "{r:?}");
    assert!(c.closed(Duration::from_secs(5)).await);

    // A is refused at once now, even with the right token…
    let mut c = Client::connect_from(ip(A), relay.starttls).await;
    let r = c.reply().await;
    assert_eq!(r.code, 421, "a cooling-down IP was greeted: {r:?}");
    assert!(r.text.starts_with("4.7.0 "), "{r:?}");
    assert!(c.closed(Duration::from_secs(5)).await);
    let r = waiting.auth_plain(&id, &token).await;
    assert_eq!(r.code, 421, "a correct token from a cooling-down IP: {r:?}");
    assert!(waiting.closed(Duration::from_secs(5)).await);

    // …while B, and the loopback address the other tests use, log in and send as usual.
    for local in [B, "127.0.0.1"] {
        let mut c = starttls_from(local, relay.starttls, &relay.pki).await;
        let (r, _) = timed_auth(&mut c, &id, &token).await;
        assert_eq!(r.code, 235, "{local}: {r:?}");
        let msg = plain_message("noreply@app.test", "user@example.net", "hi", "hi\r\n");
        let r = c
            .send("noreply@app.test", &["user@example.net"], &msg)
            .await;
        assert_eq!(r.code, 250, "{local}: {r:?}");
    }
    // Nothing in the log gives the token away.
    assert!(!relay.server_log().contains(&token));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_per_ip_are_limited_in_number_and_rate() {
    let relay = Relay::start(RelayOptions {
        extra_config: "[throttle]\nmax_connections_per_ip = 2\nconnections_per_ip_per_minute = 4\n"
            .into(),
        ..Default::default()
    });

    let greet = |local: &'static str| {
        let addr = relay.starttls;
        async move {
            let mut c = Client::connect_from(ip(local), addr).await;
            let r = c.reply().await;
            (c, r)
        }
    };

    let (a1, r) = greet(A).await;
    assert_eq!(r.code, 220);
    let (_a2, r) = greet(A).await;
    assert_eq!(r.code, 220);
    // A third at the same time is one too many.
    let (mut a3, r) = greet(A).await;
    assert_eq!(r.code, 421, "{r:?}");
    assert!(r.text.starts_with("4.7.0 Too many connections"), "{r:?}");
    assert!(a3.closed(Duration::from_secs(5)).await);
    // B is another client.
    let (_b, r) = greet(B).await;
    assert_eq!(r.code, 220);

    // A place becomes free when a connection ends (the server lingers up to 500 ms for the
    // client's close first); refusals for the number do not count toward the rate.
    quit(a1).await;
    for n in [3, 4] {
        let (c, _) = retry_until(
            || greet(A),
            |r| r.code == 220,
            &format!("connection {n} from A"),
        )
        .await;
        quit(c).await;
    }

    // Four connections from A this minute: once a place is free again, A is refused for its
    // rate. (Refusals while A still has no place free are for the number, as the log says.)
    let (_a6, r) = retry_until(
        || greet(A),
        |_| relay.server_log().contains("ConnectionRate"),
        "a refusal for the rate",
    )
    .await;
    assert_eq!(r.code, 421, "{r:?}");
    assert!(r.text.starts_with("4.7.0 Too many connections"), "{r:?}");
    let (_b2, r) = greet(B).await;
    assert_eq!(r.code, 220, "{r:?}");
}

async fn quit(mut c: Client) {
    assert_eq!(c.cmd("QUIT").await.code, 221);
    assert!(c.closed(Duration::from_secs(5)).await);
}

/// Connects again and again (every 100 ms, for up to 10 s) until `done` holds for the reply.
async fn retry_until<F, Fut>(
    mut connect: F,
    done: impl Fn(&Reply) -> bool,
    what: &str,
) -> (Client, Reply)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = (Client, Reply)>,
{
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (c, r) = connect().await;
        if done(&r) {
            return (c, r);
        }
        assert!(Instant::now() < deadline, "never got {what}; last: {r:?}");
        drop(c);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
