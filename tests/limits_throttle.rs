//! Abuse throttles per client IP, with clients bound to 127.0.0.2 and 127.0.0.3 so the relay
//! sees different addresses: the AUTH-failure cool-down per (IP, username) (which spares the
//! other projects behind the same address, and the project from other IPs), the spraying
//! threshold per IP, the per-failure delay, and the connection limits per IP.

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
async fn auth_failures_cool_down_one_login_and_spare_its_neighbours() {
    let relay = Relay::start(RelayOptions {
        extra_config: "[throttle]\nauth_failure_delay_ms = 300\nauth_failures_per_user = 2\nauth_failures_per_ip = 50\nauth_failure_window_secs = 600\nauth_cooldown_secs = 600\n".into(),
        ..Default::default()
    });
    // `app` has a stale token deployed; `neighbour` runs behind the same NAT address A.
    let (id, token) = relay.add_project("app", &["app.test"]);
    let (nid, ntoken) = relay.add_project("neighbour", &["neighbour.test"]);
    let delay = Duration::from_millis(300);

    // A session from A that is ready to log in before A starts failing.
    let mut waiting = starttls_from(A, relay.starttls, &relay.pki).await;

    // Three failures in one session: each answered after the delay, whatever failed, then the
    // session is closed. The third (over the limit of two) also starts the cool-down of `app` from A.
    let mut c = starttls_from(A, relay.starttls, &relay.pki).await;
    for tok in ["smtpr_wrong", "smtpr_stale", "smtpr_wrong_again"] {
        let (r, took) = timed_auth(&mut c, &id, tok).await;
        assert_eq!(r.code, 535, "{r:?}");
        assert!(
            took >= delay,
            "a failure was answered after {took:?}, before {delay:?}"
        );
    }
    let r = c.reply().await;
    assert_eq!(r.code, 421, "{r:?}");
    assert!(r.text.contains("for this user"), "{r:?}");
    assert!(c.closed(Duration::from_secs(5)).await);

    // `app` from A is refused now, even with the right token (no guessing during the
    // cool-down)…
    let r = waiting.auth_plain(&id, &token).await;
    assert_eq!(
        r.code, 421,
        "a correct token of a cooling-down login: {r:?}"
    );
    assert!(r.text.starts_with("4.7.0 "), "{r:?}");
    assert!(waiting.closed(Duration::from_secs(5)).await);

    // …while the neighbour behind the same address, `app` from B, and the loopback address
    // the other tests use, log in and send as usual. A is greeted as always.
    for (local, user, tok, from) in [
        (A, &nid, &ntoken, "noreply@neighbour.test"),
        (B, &id, &token, "noreply@app.test"),
        ("127.0.0.1", &id, &token, "noreply@app.test"),
    ] {
        let mut c = starttls_from(local, relay.starttls, &relay.pki).await;
        let (r, _) = timed_auth(&mut c, user, tok).await;
        assert_eq!(r.code, 235, "{local} {user}: {r:?}");
        let msg = plain_message(from, "user@example.net", "hi", "hi\r\n");
        let r = c.send(from, &["user@example.net"], &msg).await;
        assert_eq!(r.code, 250, "{local}: {r:?}");
    }
    // Nothing in the log gives the tokens away.
    let log = relay.server_log();
    assert!(!log.contains(&token) && !log.contains(&ntoken));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spraying_usernames_from_one_ip_closes_every_failing_session() {
    let relay = Relay::start(RelayOptions {
        extra_config: "[throttle]\nauth_failure_delay_ms = 0\nauth_failures_per_user = 3\nauth_failures_per_ip = 3\nauth_failure_window_secs = 600\nauth_cooldown_secs = 600\n".into(),
        ..Default::default()
    });
    let (id, token) = relay.add_project("app", &["app.test"]);
    // Four usernames fail once each: under every per-user limit, the fourth over the per-IP one.
    let mut c = starttls_from(A, relay.starttls, &relay.pki).await;
    for user in ["prj_a", "prj_b"] {
        assert_eq!(c.auth_plain(user, "smtpr_x").await.code, 535);
    }
    let mut c = starttls_from(A, relay.starttls, &relay.pki).await;
    for user in ["prj_c", "prj_d"] {
        assert_eq!(c.auth_plain(user, "smtpr_x").await.code, 535);
    }
    // From now on a failure from A ends its session at once (one guess per connection)…
    let mut c = starttls_from(A, relay.starttls, &relay.pki).await;
    assert_eq!(c.auth_plain("prj_e", "smtpr_x").await.code, 535);
    let r = c.reply().await;
    assert_eq!(r.code, 421, "{r:?}");
    assert!(r.text.contains("from your address"), "{r:?}");
    assert!(c.closed(Duration::from_secs(5)).await);
    // …but a correct token from A is never refused, and other addresses fail normally.
    let mut c = starttls_from(A, relay.starttls, &relay.pki).await;
    assert_eq!(c.auth_plain(&id, &token).await.code, 235);
    let mut c = starttls_from(B, relay.starttls, &relay.pki).await;
    assert_eq!(c.auth_plain("prj_e", "smtpr_x").await.code, 535);
    assert_eq!(c.cmd("NOOP").await.code, 250);
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
