//! TLS-level refusals: on the implicit-TLS port a refused connection hears its `421` inside
//! TLS (issue 14.7), and a client offering only a non-SMTP ALPN protocol gets the
//! `no_application_protocol` alert (ALPACA, issue 22.5), while clients without ALPN — every
//! SMTP library — are unaffected.

mod support;

use std::sync::Arc;
use std::time::Duration;

use support::client::Client;
use support::relay::{Relay, RelayOptions};
use tokio::net::TcpStream;

/// A TLS client to `addr` offering `alpn` (none when empty).
async fn tls_with_alpn(
    relay: &Relay,
    addr: std::net::SocketAddr,
    alpn: &[&[u8]],
) -> std::io::Result<tokio_rustls::client::TlsStream<TcpStream>> {
    let mut config = (*relay.pki.client_config()).clone();
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let name = rustls_pki_types::ServerName::try_from("localhost").unwrap();
    let tcp = TcpStream::connect(addr).await?;
    tokio::time::timeout(Duration::from_secs(10), connector.connect(name, tcp))
        .await
        .expect("handshake timed out")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refusals_on_the_implicit_port_are_spoken_inside_tls() {
    let relay = Relay::start(RelayOptions {
        extra_config: "[throttle]\nmax_connections_per_ip = 1\n".into(),
        ..Default::default()
    });
    let mut first = Client::connect_tls(relay.implicit, &relay.pki).await;
    assert_eq!(first.reply().await.code, 220);

    // The second connection from the same address completes its handshake and reads a 421.
    let mut second = Client::connect_tls(relay.implicit, &relay.pki).await;
    let r = second.reply().await;
    assert_eq!(r.code, 421, "{r:?}");
    assert!(r.text.starts_with("4.7.0 Too many connections"), "{r:?}");
    assert!(second.closed(Duration::from_secs(5)).await);

    // On the STARTTLS port the same refusal stays in clear text, before any TLS.
    let mut plain = Client::connect(relay.starttls).await;
    let r = plain.reply().await;
    assert_eq!(r.code, 421, "{r:?}");
    drop(first);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn alpn_other_than_smtp_is_refused_with_an_alert() {
    let relay = Relay::start(RelayOptions::default());

    // Implicit TLS: only http/1.1 offered → no_application_protocol.
    let err = tls_with_alpn(&relay, relay.implicit, &[b"http/1.1"])
        .await
        .expect_err("an http/1.1-only client got a TLS session");
    assert!(
        format!("{err:?}").contains("NoApplicationProtocol"),
        "expected the no_application_protocol alert, got {err:?}"
    );

    // smtp offered (among others), and no ALPN at all: a normal session.
    for alpn in [&[&b"http/1.1"[..], b"smtp"][..], &[]] {
        let tls = tls_with_alpn(&relay, relay.implicit, alpn)
            .await
            .expect("handshake");
        let mut c = Client::from_stream(tls);
        assert_eq!(c.reply().await.code, 220, "ALPN {alpn:?}");
        assert_eq!(c.cmd("EHLO app.test").await.code, 250);
    }

    // STARTTLS: the same check after the upgrade.
    let tcp = TcpStream::connect(relay.starttls).await.unwrap();
    let mut c = Client::from_stream(tcp);
    assert_eq!(c.reply().await.code, 220);
    assert_eq!(c.cmd("EHLO app.test").await.code, 250);
    assert_eq!(c.cmd("STARTTLS").await.code, 220);
    let stream = c.into_stream();
    let mut config = (*relay.pki.client_config()).clone();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let name = rustls_pki_types::ServerName::try_from("localhost").unwrap();
    let Err(err) = connector.connect(name, stream).await else {
        panic!("an http/1.1-only client got a TLS session after STARTTLS");
    };
    assert!(
        format!("{err:?}").contains("NoApplicationProtocol"),
        "{err:?}"
    );
}

/// A TLS client to `addr` offering exactly `suites` (in that order) and `versions`.
async fn tls_with_suites(
    relay: &Relay,
    addr: std::net::SocketAddr,
    suites: &[rustls::SupportedCipherSuite],
    versions: &[&'static rustls::SupportedProtocolVersion],
) -> tokio_rustls::client::TlsStream<TcpStream> {
    let mut provider = rustls::crypto::ring::default_provider();
    provider.cipher_suites = suites.to_vec();
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(provider))
        .with_protocol_versions(versions)
        .unwrap()
        .with_root_certificates(relay.pki.root_store())
        .with_no_client_auth();
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let name = rustls_pki_types::ServerName::try_from("localhost").unwrap();
    let tcp = TcpStream::connect(addr).await.unwrap();
    tokio::time::timeout(Duration::from_secs(10), connector.connect(name, tcp))
        .await
        .expect("handshake timed out")
        .expect("handshake")
}

/// The listeners pick the suite in their own order, AES-128-GCM first (BENCHMARKS.md: its
/// SHA-256 key schedule costs less than AES-256-GCM-SHA384's), even when the client — like
/// rustls and OpenSSL clients — lists AES-256 first; a client offering only other suites still
/// gets one of them, and mail flows either way.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn listeners_prefer_aes_128_gcm_in_their_own_order() {
    use rustls::crypto::ring::cipher_suite as cs;
    let relay = Relay::start(RelayOptions::default());
    let v13: &[&'static rustls::SupportedProtocolVersion] = &[&rustls::version::TLS13];
    let v12: &[&'static rustls::SupportedProtocolVersion] = &[&rustls::version::TLS12];
    let cases = [
        (
            vec![cs::TLS13_AES_256_GCM_SHA384, cs::TLS13_AES_128_GCM_SHA256],
            v13,
            cs::TLS13_AES_128_GCM_SHA256,
        ),
        (
            vec![cs::TLS13_AES_256_GCM_SHA384],
            v13,
            cs::TLS13_AES_256_GCM_SHA384,
        ),
        (
            vec![
                cs::TLS13_CHACHA20_POLY1305_SHA256,
                cs::TLS13_AES_256_GCM_SHA384,
            ],
            v13,
            cs::TLS13_AES_256_GCM_SHA384,
        ),
        (
            vec![
                cs::TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384,
                cs::TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384,
                cs::TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256,
                cs::TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256,
            ],
            v12,
            // The test PKI's leaf is ECDSA.
            cs::TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256,
        ),
    ];
    for (offered, versions, expected) in cases {
        let tls = tls_with_suites(&relay, relay.implicit, &offered, versions).await;
        let got = tls.get_ref().1.negotiated_cipher_suite().map(|s| s.suite());
        assert_eq!(got, Some(expected.suite()), "client offered {offered:?}");
        let mut c = Client::from_stream(tls);
        assert_eq!(c.reply().await.code, 220);
        assert_eq!(c.cmd("EHLO app.test").await.code, 250);
    }
}
