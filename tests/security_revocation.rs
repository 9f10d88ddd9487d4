//! Revocation reaches sessions that are already logged in (issue 22.1): a token revoked, a
//! project disabled or deleted while an app keeps its SMTP connection open stops that session
//! at its next MAIL FROM, or before the final 250 of a transaction already under way, and
//! nothing of that transaction is queued.

mod support;

use support::client::{Client, Reply, plain_message};
use support::relay::{Relay, RelayOptions};

/// Ids in the message log (every message ever queued).
fn logged_ids(relay: &Relay) -> Vec<String> {
    relay
        .cli_json(&["log", "--limit", "1000"])
        .as_array()
        .expect("log is an array")
        .iter()
        .filter_map(|m| m["id"].as_str().map(str::to_string))
        .collect()
}

fn cli_ok(relay: &Relay, args: &[&str]) {
    let out = relay.cli(args);
    assert!(
        out.status.success(),
        "smtp-relay {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Revokes the project's token, disables or deletes the project, with the CLI.
fn withdraw(relay: &Relay, how: &str, id: &str) {
    match how {
        "revoke" => {
            let tokens = relay.cli_json(&["project", "show", id]);
            let tok = tokens["tokens"][0]["id"].as_str().unwrap().to_string();
            cli_ok(relay, &["project", "token", "revoke", id, &tok]);
        }
        "disable" => cli_ok(relay, &["project", "disable", id]),
        _ => cli_ok(relay, &["project", "delete", id]),
    }
}

/// The ways to withdraw credentials, and the reason the session is told.
const WITHDRAWALS: [(&str, &str); 3] = [
    ("revoke", "token revoked"),
    ("disable", "project disabled"),
    ("delete", "project deleted"),
];

/// The session was refused with 535 5.7.8 naming `why`, then told 421 and closed.
async fn assert_withdrawn(c: &mut Client, first: Reply, why: &str) {
    assert_eq!(first.code, 535, "{first:?}");
    assert!(first.text.starts_with("5.7.8"), "{first:?}");
    assert!(first.text.contains(why), "{first:?} should say {why}");
    let next = c.reply().await;
    assert_eq!(next.code, 421, "{next:?}");
    assert!(
        c.closed(std::time::Duration::from_secs(5)).await,
        "session left open"
    );
}

/// Each way of withdrawing credentials, applied between two messages of one session.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn withdrawn_between_two_messages() {
    let relay = Relay::start(RelayOptions::default());
    for (how, why) in WITHDRAWALS {
        let (id, token) = relay.add_project(how, &["app.test"]);
        let mut c = Client::logged_in(relay.starttls, &relay.pki, &id, &token).await;
        let first = c.submit("noreply@app.test", "user@example.net").await;
        withdraw(&relay, how, &id);
        let r = c.cmd("MAIL FROM:<noreply@app.test>").await;
        assert_withdrawn(&mut c, r, why).await;
        let ids = logged_ids(&relay);
        assert!(ids.contains(&first), "{how}: the first message is lost");
    }
}

/// Withdrawn while a transaction is between RCPT and the end of DATA: the final reply is the
/// refusal, and the message is not queued.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn withdrawn_during_a_transaction() {
    let relay = Relay::start(RelayOptions::default());
    for (how, why) in WITHDRAWALS {
        let (id, token) = relay.add_project(how, &["app.test"]);
        let mut c = Client::logged_in(relay.starttls, &relay.pki, &id, &token).await;
        assert_eq!(c.cmd("MAIL FROM:<noreply@app.test>").await.code, 250);
        assert_eq!(c.cmd("RCPT TO:<user@example.net>").await.code, 250);
        assert_eq!(c.cmd("DATA").await.code, 354);
        c.write(b"From: <noreply@app.test>\r\nTo: <user@example.net>\r\nSubject: reset\r\n\r\n")
            .await;
        withdraw(&relay, how, &id);
        c.write(b"Your link: https://app.test/reset/1\r\n.\r\n")
            .await;
        let r = c.reply().await;
        assert_withdrawn(&mut c, r, why).await;
        assert!(
            logged_ids(&relay).is_empty(),
            "{how}: a message of a withdrawn session was queued"
        );
    }
}

/// Changes that leave the session valid do not disturb it, and it sees them at once (a domain
/// added while the connection is open can be used without logging in again).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unrelated_and_additive_changes_keep_the_session() {
    let relay = Relay::start(RelayOptions::default());
    let (id, token) = relay.add_project("app", &["app.test"]);
    let (other, _) = relay.add_project("other", &["other.test"]);
    let mut c = Client::logged_in(relay.starttls, &relay.pki, &id, &token).await;
    c.submit("noreply@app.test", "user@example.net").await;

    cli_ok(&relay, &["project", "disable", &other]);
    cli_ok(
        &relay,
        &["project", "token", "add", &id, "--label", "second"],
    );
    cli_ok(&relay, &["project", "domain", "add", &id, "new.test"]);
    c.submit("noreply@app.test", "user@example.net").await;
    let r = c
        .send(
            "noreply@new.test",
            &["user@example.net"],
            &plain_message(
                "noreply@new.test",
                "user@example.net",
                "hi",
                "new domain\r\n",
            ),
        )
        .await;
    assert_eq!(r.code, 250, "{r:?}");
    assert_eq!(logged_ids(&relay).len(), 3);
}
