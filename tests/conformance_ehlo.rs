//! The EHLO reply speaks for the relay (issue 14.12): its first line is
//! `<hostname> Hello <client name> [<client ip>]`, never smtp-proto's built-in text, and a
//! hostile client name cannot add lines to it.

mod support;

use support::client::Client;
use support::relay::{Relay, RelayOptions};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ehlo_first_line_greets_the_client() {
    let relay = Relay::start(RelayOptions::default());
    let mut c = Client::connect(relay.starttls).await;
    assert_eq!(c.reply().await.code, 220);
    let r = c.cmd("EHLO app.example").await;
    assert_eq!(r.code, 250);
    let first = r.text.lines().next().unwrap_or("");
    assert_eq!(first, "relay.test Hello app.example [127.0.0.1]", "{r:?}");
    assert!(!r.text.contains("had me at"), "{r:?}");
    assert!(r.text.contains("STARTTLS"), "{r:?}");

    // Inside TLS too, and with a name full of odd characters.
    let (mut c, _) = Client::starttls(relay.starttls, &relay.pki).await;
    let r = c.cmd("EHLO [127.0.0.1]").await;
    let first = r.text.lines().next().unwrap_or("");
    assert_eq!(first, "relay.test Hello [127.0.0.1] [127.0.0.1]", "{r:?}");
    assert!(r.text.contains("AUTH PLAIN LOGIN"), "{r:?}");
}
