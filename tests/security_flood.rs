//! 1,000 connections from one IP: that IP is capped (421 4.7.0) while other IPs are still
//! served, and the relay stays within its global connection limit.

mod support;

use std::time::Duration;

use support::client::Client;
use support::relay::{Relay, RelayOptions};
use tokio::io::AsyncReadExt;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_ip_cannot_starve_the_others() {
    let relay = Relay::start(RelayOptions {
        extra_config:
            "[throttle]\nmax_connections_per_ip = 50\nconnections_per_ip_per_minute = 5000\n".into(),
        ..Default::default()
    });
    let (id, token) = relay.add_project("a", &["a.test"]);
    let flooder: std::net::IpAddr = "127.0.0.2".parse().unwrap();

    // 1,000 connections from 127.0.0.2, held open.
    let mut held = Vec::new();
    let mut refused = 0usize;
    for _ in 0..1000 {
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        socket.bind((flooder, 0).into()).unwrap();
        let mut s = socket.connect(relay.starttls).await.unwrap();
        let mut buf = [0u8; 128];
        let n = tokio::time::timeout(Duration::from_secs(10), s.read(&mut buf))
            .await
            .expect("a greeting or a refusal")
            .unwrap_or(0);
        let text = String::from_utf8_lossy(&buf[..n]).to_string();
        if text.starts_with("421 4.7.0") {
            refused += 1;
        } else {
            assert!(text.starts_with("220"), "{text}");
            held.push(s);
        }
    }
    assert_eq!(held.len(), 50, "per-IP cap");
    assert_eq!(refused, 950);

    // Another IP is served normally while the flood is held open.
    let mut c = Client::connect_from("127.0.0.3".parse().unwrap(), relay.starttls).await;
    assert_eq!(c.reply().await.code, 220);
    drop(c);
    let mut c = Client::logged_in(relay.starttls, &relay.pki, &id, &token).await;
    let r = c
        .send_plain("app@a.test", "u@example.net", "s", "x\r\n")
        .await;
    assert_eq!(r.code, 250, "{r:?}");
    drop(held);
}
