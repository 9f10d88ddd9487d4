//! Operations: SIGHUP reload and the systemd notify protocol, against the real binary.
//!
//! A reload swaps the certificate and settings for new connections only; a session opened
//! before keeps working with what it started with; a broken config is refused and logged
//! while the running one stays. systemd's side is a real datagram socket in `$NOTIFY_SOCKET`.

mod support;

use std::time::Duration;

use support::certs::TestPki;
use support::client::Client;
use support::ops::{NotifySocket, implicit_peer_cert, starttls_peer_cert};
use support::relay::{Relay, RelayOptions};

const WAIT: Duration = Duration::from_secs(20);

fn notified_relay(dir: &tempfile::TempDir, extra_env: &[(&str, &str)]) -> (Relay, NotifySocket) {
    let mut notify = NotifySocket::bind(dir.path());
    let mut env = vec![(
        "NOTIFY_SOCKET".to_string(),
        notify.path.display().to_string(),
    )];
    env.extend(
        extra_env
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string())),
    );
    let relay = Relay::start(RelayOptions {
        env,
        ..Default::default()
    });
    notify.wait_for("READY=1", WAIT);
    (relay, notify)
}

/// SIGHUP and wait until the server says it is done reloading (RELOADING=1, then READY=1).
fn reload(relay: &Relay, notify: &mut NotifySocket) {
    relay.signal(libc::SIGHUP);
    notify.wait_for("RELOADING=1", WAIT);
    notify.wait_for("READY=1", WAIT);
}

fn edit_config(relay: &Relay, f: impl Fn(String) -> String) {
    let text = std::fs::read_to_string(&relay.config_path).unwrap();
    std::fs::write(&relay.config_path, f(text)).unwrap();
}

async fn greeting(relay: &Relay) -> String {
    let mut c = Client::connect(relay.starttls).await;
    let r = c.reply().await;
    assert_eq!(r.code, 220);
    r.text
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_swaps_the_certificate_for_new_connections_only() {
    let tmp = tempfile::tempdir().unwrap();
    let (mut relay, mut notify) = notified_relay(&tmp, &[("WATCHDOG_USEC", "200000")]);
    // The watchdog is pinged while the database answers.
    notify.wait_for("WATCHDOG=1", WAIT);
    let (id, token) = relay.add_project("app", &["app.test"]);
    let old_pki = relay.pki.clone();
    let old_leaf = old_pki.cert_chain()[0].clone();
    assert_eq!(
        starttls_peer_cert(relay.starttls, &old_pki).await.unwrap(),
        old_leaf
    );

    // A session opened before the reload, already inside TLS and logged in.
    let mut before = Client::logged_in(relay.starttls, &old_pki, &id, &token).await;

    // New certificate (from an unrelated CA) in place of the old files, then SIGHUP.
    let new_pki = TestPki::generate();
    new_pki.write_to(&relay.dir.path().join("pki"));
    reload(&relay, &mut notify);
    relay.wait_log("configuration reloaded", 1, WAIT);

    // New connections, on both TLS listeners, see the new certificate…
    let new_leaf = new_pki.cert_chain()[0].clone();
    assert_ne!(new_leaf, old_leaf);
    assert_eq!(
        starttls_peer_cert(relay.starttls, &new_pki).await.unwrap(),
        new_leaf
    );
    assert_eq!(
        implicit_peer_cert(relay.implicit, &new_pki).await.unwrap(),
        new_leaf
    );
    // …so a client that trusts only the old CA no longer gets in.
    let err = starttls_peer_cert(relay.starttls, &old_pki)
        .await
        .unwrap_err();
    assert!(err.to_lowercase().contains("certificate"), "{err}");
    let mut after = Client::logged_in(relay.starttls, &new_pki, &id, &token).await;
    let id_after = after.submit("noreply@app.test", "new@example.net").await;

    // The connection from before the reload keeps working.
    let id_before = before.submit("noreply@app.test", "old@example.net").await;
    assert_eq!(before.cmd("QUIT").await.code, 221);
    assert_eq!(after.cmd("QUIT").await.code, 221);
    for m in [&id_before, &id_after] {
        relay.wait_state(m, &["delivered"], WAIT);
    }

    let status = relay.terminate();
    assert!(status.success(), "{status}");
    notify.wait_for("STOPPING=1", WAIT);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broken_config_on_reload_keeps_the_old_one_running() {
    let tmp = tempfile::tempdir().unwrap();
    let (relay, mut notify) = notified_relay(&tmp, &[]);
    let (id, token) = relay.add_project("app", &["app.test"]);
    let good = std::fs::read_to_string(&relay.config_path).unwrap();

    // An invalid value: refused, named in the log, nothing changes.
    edit_config(&relay, |t| {
        t.replace("hostname = \"relay.test\"", "hostname = \"new.test\"")
            .replace("max_recipients = 10", "max_recipients = 0")
    });
    reload(&relay, &mut notify);
    let log = relay.wait_log("configuration reload refused", 1, WAIT);
    let line = log
        .lines()
        .find(|l| l.contains("configuration reload refused"))
        .unwrap();
    assert!(line.contains("server.max_recipients"), "{line}");
    assert!(greeting(&relay).await.starts_with("relay.test "));

    // Broken TOML: refused with the line of the mistake.
    edit_config(&relay, |t| t.replace("[queue]", "[queue"));
    reload(&relay, &mut notify);
    let log = relay.wait_log("configuration reload refused", 2, WAIT);
    let line = log
        .lines()
        .filter(|l| l.contains("configuration reload refused"))
        .nth(1)
        .unwrap();
    let n = good.lines().position(|l| l == "[queue]").unwrap() + 1;
    assert!(line.contains(&format!("smtp-relay.toml:{n}:")), "{line}");

    // A certificate that does not exist: refused too.
    edit_config(&relay, |_| {
        good.replace("hostname = \"relay.test\"", "hostname = \"new.test\"")
            .replace("cert.pem", "missing-cert.pem")
    });
    reload(&relay, &mut notify);
    let log = relay.wait_log("configuration reload refused", 3, WAIT);
    assert!(log.contains("missing-cert.pem does not exist"), "{log}");
    assert!(greeting(&relay).await.starts_with("relay.test "));

    // The relay still takes mail with the old config.
    let mut c = Client::logged_in(relay.starttls, &relay.pki, &id, &token).await;
    let mid = c.submit("noreply@app.test", "user@example.net").await;
    relay.wait_state(&mid, &["delivered"], WAIT);
    assert_eq!(c.cmd("QUIT").await.code, 221);
    assert!(
        relay
            .server_log()
            .contains("\"message\":\"session closed\"")
    );

    // A session opened now keeps its settings across the next, valid, reload.
    let mut before = Client::logged_in(relay.starttls, &relay.pki, &id, &token).await;
    edit_config(&relay, |_| {
        format!(
            "{}\n[log]\nlevel = \"warn\"\n",
            good.replace("hostname = \"relay.test\"", "hostname = \"new.test\"")
                .replace("command_secs = 30", "command_secs = 1")
        )
    });
    let closed_before = relay
        .server_log()
        .matches("\"message\":\"session closed\"")
        .count();
    reload(&relay, &mut notify);
    assert!(greeting(&relay).await.starts_with("new.test "));

    // New session: the new command timeout of one second.
    let mut after = Client::logged_in(relay.starttls, &relay.pki, &id, &token).await;
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let r = after.try_reply(Duration::from_secs(5)).await;
    assert_eq!(r.map(|r| r.code), Some(421), "the new session times out");
    // Old session: idle as long, still on its 30 s timeout, still sending.
    before.submit("noreply@app.test", "later@example.net").await;

    // The new level (warn) is in force: a failed AUTH is logged, session lines are not.
    let (mut bad, _) = Client::starttls(relay.starttls, &relay.pki).await;
    assert_eq!(bad.auth_plain(&id, "wrong").await.code, 535);
    for c in [&mut before, &mut bad] {
        assert_eq!(c.cmd("QUIT").await.code, 221);
        assert!(c.closed(Duration::from_secs(5)).await);
    }
    relay.wait_log("authentication failed", 1, WAIT);
    tokio::time::sleep(Duration::from_millis(500)).await;
    let closed_after = relay
        .server_log()
        .matches("\"message\":\"session closed\"")
        .count();
    assert_eq!(closed_before, closed_after, "info lines after level = warn");
}
