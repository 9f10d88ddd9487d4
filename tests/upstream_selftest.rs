//! Proves the test fixtures (tests/support) work, using independent clients: lettre, a raw
//! TcpStream, and a raw tokio-rustls client.

mod support;

use std::net::SocketAddr;
use std::time::Duration;

use lettre::address::Envelope;
use lettre::transport::smtp::authentication::{Credentials, Mechanism};
use lettre::transport::smtp::client::{Certificate, CertificateStore, Tls, TlsParameters};
use lettre::{AsyncSmtpTransport, AsyncTransport, Tokio1Executor};
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

use support::certs::TestPki;
use support::upstream::{Script, TestUpstream, UpstreamOptions};

const WAIT: Duration = Duration::from_secs(5);

// ---------------------------------------------------------------- lettre helpers

#[derive(Clone, Copy)]
enum ClientTls {
    None,
    StartTls,
    Implicit,
}

fn lettre_transport(
    up: &TestUpstream,
    tls: ClientTls,
    ca_pem: Option<&str>,
    creds: Option<(&str, &str)>,
    mechanism: Mechanism,
) -> AsyncSmtpTransport<Tokio1Executor> {
    let params = || {
        let ca = Certificate::from_pem(ca_pem.expect("CA for TLS").as_bytes()).expect("CA PEM");
        TlsParameters::builder("localhost".into())
            .certificate_store(CertificateStore::None)
            .add_root_certificate(ca)
            .build()
            .expect("TLS parameters")
    };
    let tls = match tls {
        ClientTls::None => Tls::None,
        ClientTls::StartTls => Tls::Required(params()),
        ClientTls::Implicit => Tls::Wrapper(params()),
    };
    let mut builder = AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous("127.0.0.1")
        .port(up.port())
        .tls(tls)
        .timeout(Some(WAIT))
        .authentication(vec![mechanism]);
    if let Some((u, p)) = creds {
        builder = builder.credentials(Credentials::new(u.to_string(), p.to_string()));
    }
    builder.build()
}

fn envelope(from: &str, to: &[&str]) -> Envelope {
    Envelope::new(
        Some(from.parse().unwrap()),
        to.iter().map(|t| t.parse().unwrap()).collect(),
    )
    .unwrap()
}

/// A body with dot-stuffing cases (first line starts with a dot, a lone "." line, "..") and
/// an 8-bit character. No trailing CRLF: lettre appends "\r\n.\r\n" itself.
const BODY: &str = ".first line starts with a dot\r\nSubject: caf\u{e9}\r\n\r\n..two dots\r\n.\r\nmiddle . dot\r\nlast";

fn stuffed(body: &str) -> String {
    let mut out = String::new();
    for (i, line) in body.split("\r\n").enumerate() {
        if i > 0 {
            out.push_str("\r\n");
        }
        if line.starts_with('.') {
            out.push('.');
        }
        out.push_str(line);
    }
    out
}

// ---------------------------------------------------------------- raw client helpers

struct Raw<S> {
    r: BufReader<S>,
}

impl<S: AsyncRead + AsyncWrite + Unpin> Raw<S> {
    fn new(s: S) -> Self {
        Raw {
            r: BufReader::new(s),
        }
    }

    /// Reads one (possibly multi-line) reply; returns all lines joined with '\n'.
    async fn reply(&mut self) -> String {
        let mut lines = Vec::new();
        loop {
            let mut line = String::new();
            let n = tokio::time::timeout(WAIT, self.r.read_line(&mut line))
                .await
                .expect("reply timeout")
                .expect("read reply");
            assert!(
                n > 0,
                "EOF while waiting for a reply; got so far: {lines:?}"
            );
            assert!(line.ends_with("\r\n"), "reply line without CRLF: {line:?}");
            let line = line.trim_end().to_string();
            let last = line.as_bytes().get(3) != Some(&b'-');
            lines.push(line);
            if last {
                return lines.join("\n");
            }
        }
    }

    async fn send(&mut self, bytes: &str) {
        self.r.get_mut().write_all(bytes.as_bytes()).await.unwrap();
        self.r.get_mut().flush().await.unwrap();
    }

    async fn cmd(&mut self, line: &str) -> String {
        self.send(&format!("{line}\r\n")).await;
        self.reply().await
    }

    async fn expect_eof(&mut self) {
        let mut buf = Vec::new();
        let n = tokio::time::timeout(WAIT, self.r.read_to_end(&mut buf))
            .await
            .expect("expected EOF, timed out")
            .unwrap_or(0);
        assert_eq!(
            n,
            0,
            "expected EOF, got {:?}",
            String::from_utf8_lossy(&buf)
        );
    }
}

async fn raw_connect(addr: SocketAddr) -> Raw<TcpStream> {
    Raw::new(TcpStream::connect(addr).await.expect("connect"))
}

// ---------------------------------------------------------------- lettre tests

#[tokio::test]
async fn lettre_plain_without_auth_records_envelope_raw_and_data() {
    let up = TestUpstream::start(UpstreamOptions::plain()).await;
    let t = lettre_transport(&up, ClientTls::None, None, None, Mechanism::Plain);
    t.send_raw(
        &envelope("sender@example.com", &["a@example.org", "b@example.org"]),
        BODY.as_bytes(),
    )
    .await
    .expect("send");

    let msgs = up.wait_for(1, WAIT).await;
    assert_eq!(msgs.len(), 1);
    let m = &msgs[0];
    assert_eq!(m.mail_from, "sender@example.com");
    assert_eq!(m.rcpt_to, vec!["a@example.org", "b@example.org"]);
    assert_eq!(m.mail_params, "BODY=8BITMIME");
    assert!(!m.tls);
    assert_eq!(m.auth_user, None);
    assert_eq!(m.connection, 1);
    assert_eq!(
        String::from_utf8(m.raw.clone()).unwrap(),
        format!("{}\r\n.\r\n", stuffed(BODY))
    );
    assert!(m.raw.starts_with(b"..first line"));
    assert_eq!(m.text(), format!("{BODY}\r\n"));
    assert_eq!(up.connections(), 1);
    assert!(up.rejected().is_empty());
    assert!(up.violations().is_empty(), "{:?}", up.violations());
}

#[tokio::test]
async fn lettre_plain_with_auth_plain_login_and_bad_password() {
    let up = TestUpstream::start(UpstreamOptions::plain().with_auth("proj1", "s3cret")).await;
    let env = envelope("s@example.com", &["r@example.org"]);

    let plain = lettre_transport(
        &up,
        ClientTls::None,
        None,
        Some(("proj1", "s3cret")),
        Mechanism::Plain,
    );
    plain
        .send_raw(&env, b"Subject: 1\r\n\r\nplain")
        .await
        .unwrap();
    let login = lettre_transport(
        &up,
        ClientTls::None,
        None,
        Some(("proj1", "s3cret")),
        Mechanism::Login,
    );
    login
        .send_raw(&env, b"Subject: 2\r\n\r\nlogin")
        .await
        .unwrap();

    let bad = lettre_transport(
        &up,
        ClientTls::None,
        None,
        Some(("proj1", "wrong")),
        Mechanism::Plain,
    );
    let err = bad
        .send_raw(&env, b"Subject: 3\r\n\r\nbad")
        .await
        .unwrap_err();
    assert!(err.is_permanent(), "{err}");
    assert!(err.to_string().contains("535"), "{err}");

    // No credentials at all: MAIL is refused with 530.
    let anon = lettre_transport(&up, ClientTls::None, None, None, Mechanism::Plain);
    let err = anon.send_raw(&env, b"x").await.unwrap_err();
    assert!(err.to_string().contains("530"), "{err}");

    let msgs = up.wait_for(2, WAIT).await;
    assert_eq!(msgs.len(), 2);
    assert!(msgs.iter().all(|m| m.auth_user.as_deref() == Some("proj1")));
    assert!(msgs[0].text().ends_with("plain\r\n"));
    assert!(msgs[1].text().ends_with("login\r\n"));
    let cmds = up.commands();
    assert!(cmds.iter().any(|c| c.contains("AUTH PLAIN ")), "{cmds:?}");
    assert!(cmds.iter().any(|c| c.ends_with("AUTH LOGIN")), "{cmds:?}");
    assert_eq!(up.connections(), 4);
}

#[tokio::test]
async fn lettre_starttls_with_auth() {
    let pki = TestPki::generate();
    let up = TestUpstream::start(UpstreamOptions::starttls(&pki).with_auth("u", "p")).await;
    let t = lettre_transport(
        &up,
        ClientTls::StartTls,
        Some(&pki.ca_pem),
        Some(("u", "p")),
        Mechanism::Plain,
    );
    t.send_raw(
        &envelope("s@example.com", &["r@example.org"]),
        BODY.as_bytes(),
    )
    .await
    .unwrap();
    let m = &up.wait_for(1, WAIT).await[0];
    assert!(m.tls);
    assert_eq!(m.auth_user.as_deref(), Some("u"));
    assert_eq!(m.text(), format!("{BODY}\r\n"));

    // AUTH only advertised after STARTTLS.
    let transcript = up.transcript().join("\n");
    let (before, after) = transcript.split_once("STARTTLS established").unwrap();
    let offers = |text: &str, ext: &str| {
        text.lines()
            .any(|l| l.ends_with(&format!("S: 250-{ext}")) || l.ends_with(&format!("S: 250 {ext}")))
    };
    assert!(offers(before, "STARTTLS"), "{transcript}");
    assert!(!offers(before, "AUTH PLAIN LOGIN"), "{transcript}");
    assert!(offers(after, "AUTH PLAIN LOGIN"), "{transcript}");
    assert!(!offers(after, "STARTTLS"), "{transcript}");
}

#[tokio::test]
async fn lettre_implicit_tls_with_and_without_auth() {
    let pki = TestPki::generate();
    let env = envelope("s@example.com", &["r@example.org"]);

    let up = TestUpstream::start(UpstreamOptions::implicit(&pki).with_auth("u", "p")).await;
    let t = lettre_transport(
        &up,
        ClientTls::Implicit,
        Some(&pki.ca_pem),
        Some(("u", "p")),
        Mechanism::Login,
    );
    t.send_raw(&env, b"Subject: tls\r\n\r\nbody").await.unwrap();
    let m = &up.wait_for(1, WAIT).await[0];
    assert!(m.tls);
    assert_eq!(m.auth_user.as_deref(), Some("u"));
    assert_eq!(m.raw, b"Subject: tls\r\n\r\nbody\r\n.\r\n");

    let up = TestUpstream::start(UpstreamOptions::implicit(&pki)).await;
    let t = lettre_transport(
        &up,
        ClientTls::Implicit,
        Some(&pki.ca_pem),
        None,
        Mechanism::Plain,
    );
    t.send_raw(&env, b"Subject: tls\r\n\r\nbody").await.unwrap();
    let m = &up.wait_for(1, WAIT).await[0];
    assert!(m.tls);
    assert_eq!(m.auth_user, None);
}

#[tokio::test]
async fn lettre_rejects_certificate_from_another_ca() {
    let pki = TestPki::generate();
    let other = TestPki::generate();
    let up = TestUpstream::start(UpstreamOptions::implicit(&pki)).await;
    let t = lettre_transport(
        &up,
        ClientTls::Implicit,
        Some(&other.ca_pem),
        None,
        Mechanism::Plain,
    );
    let err = t
        .send_raw(&envelope("s@example.com", &["r@example.org"]), b"x")
        .await
        .unwrap_err();
    assert!(
        format!("{err:?}").to_lowercase().contains("certificate"),
        "{err:?}"
    );
    assert!(up.messages().is_empty());
}

#[tokio::test]
async fn lettre_scripted_rcpt_550_and_data_end_451() {
    let up = TestUpstream::start(UpstreamOptions::plain().with_script(Script {
        data_end: Some("451 4.3.0 try later".into()),
        ..Script::default()
    }))
    .await;
    let t = lettre_transport(&up, ClientTls::None, None, None, Mechanism::Plain);
    let env = envelope("s@example.com", &["r@example.org"]);

    let err = t.send_raw(&env, b"Subject: 1\r\n\r\nx").await.unwrap_err();
    assert!(err.is_transient(), "{err}");
    assert!(err.to_string().contains("try later"), "{err}");
    assert!(up.messages().is_empty());
    assert_eq!(up.rejected().len(), 1);
    assert_eq!(up.rejected()[0].reply, "451 4.3.0 try later");

    // lettre gives up at the first refused recipient.
    up.set_script(Script::default().with_rcpt("No.Such@example.org", "550 5.1.1 no such user"));
    let err = t
        .send_raw(
            &envelope("s@example.com", &["r@example.org", "no.such@example.org"]),
            b"x",
        )
        .await
        .unwrap_err();
    assert!(err.is_permanent(), "{err}");
    assert!(err.to_string().contains("no such user"), "{err}");

    up.set_script(Script::default());
    t.send_raw(&env, b"Subject: 2\r\n\r\ny").await.unwrap();
    let msgs = up.wait_for(1, WAIT).await;
    assert_eq!(msgs.len(), 1);
    assert!(msgs[0].text().ends_with("y\r\n"));
    assert_eq!(msgs[0].connection, 3);
    assert_eq!(up.connections(), 3);
}

// ---------------------------------------------------------------- raw client tests

#[tokio::test]
async fn raw_pipelining_partial_recipients_split_terminator_and_empty_message() {
    let up = TestUpstream::start(
        UpstreamOptions::plain()
            .with_script(Script::default().with_rcpt("bad@example.org", "550 5.1.1 no such user")),
    )
    .await;
    let mut c = raw_connect(up.addr()).await;
    assert_eq!(c.reply().await, "220 test-upstream ESMTP");

    // Everything up to DATA in one packet.
    c.send(
        "EHLO client.test\r\nMAIL FROM:<s@example.com> SIZE=42 BODY=8BITMIME\r\n\
         RCPT TO:<ok1@example.org>\r\nRCPT TO:<BAD@example.org>\r\nRCPT TO:<ok2@example.org>\r\nDATA\r\n",
    )
    .await;
    let ehlo = c.reply().await;
    for ext in ["PIPELINING", "8BITMIME", "SIZE"] {
        assert!(ehlo.contains(ext), "{ehlo}");
    }
    assert!(
        !ehlo.contains("STARTTLS") && !ehlo.contains("AUTH"),
        "{ehlo}"
    );
    assert!(c.reply().await.starts_with("250"));
    assert!(c.reply().await.starts_with("250"));
    assert_eq!(c.reply().await, "550 5.1.1 no such user");
    assert!(c.reply().await.starts_with("250"));
    assert!(c.reply().await.starts_with("354"));

    // Body with the terminator split across writes.
    for part in ["line1\r\n..dot\r\n", "\r", "\n.", "\r", "\n"] {
        c.send(part).await;
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(c.reply().await.starts_with("250"));

    // Second transaction on the same connection: null sender, empty message right after 354,
    // and the commands after the body pipelined with it.
    assert!(c.cmd("MAIL FROM:<>").await.starts_with("250"));
    assert!(c.cmd("RCPT TO:<z@example.org>").await.starts_with("250"));
    assert!(c.cmd("DATA").await.starts_with("354"));
    c.send(".\r\nNOOP\r\nQUIT\r\n").await;
    assert!(c.reply().await.starts_with("250"));
    assert!(c.reply().await.starts_with("250"));
    assert!(c.reply().await.starts_with("221"));
    c.expect_eof().await;

    let msgs = up.wait_for(2, WAIT).await;
    let m = &msgs[0];
    assert_eq!(m.mail_from, "s@example.com");
    assert_eq!(m.mail_params, "SIZE=42 BODY=8BITMIME");
    assert_eq!(m.rcpt_to, vec!["ok1@example.org", "ok2@example.org"]);
    assert_eq!(m.raw, b"line1\r\n..dot\r\n\r\n.\r\n");
    assert_eq!(m.data, b"line1\r\n.dot\r\n\r\n");
    let m = &msgs[1];
    assert_eq!(m.mail_from, "");
    assert_eq!(m.rcpt_to, vec!["z@example.org"]);
    assert_eq!(m.raw, b".\r\n");
    assert!(m.data.is_empty());
    assert_eq!(m.connection, 1);
    assert_eq!(up.connections(), 1);
}

#[tokio::test]
async fn raw_violations_are_recorded() {
    let up = TestUpstream::start(UpstreamOptions::plain()).await;
    let mut c = raw_connect(up.addr()).await;
    c.reply().await;
    assert!(c.cmd("EHLO x").await.starts_with("250"));
    assert!(up.violations().is_empty(), "{:?}", up.violations());
    c.send("MAIL FROM:<a@b>\n").await; // bare LF: accepted, but recorded
    assert!(c.reply().await.starts_with("250"));
    assert!(c.cmd("RCPT TO:<c@d>").await.starts_with("250"));
    assert!(c.cmd("DATA").await.starts_with("354"));
    let long = "x".repeat(999);
    c.send(&format!("a\nb\rc\0\r\n{long}\r\n.\r\n")).await;
    assert!(c.reply().await.starts_with("250"));
    let v = up.violations().join("\n");
    for what in [
        "bare LF ending command",
        "bare LF in DATA",
        "bare CR in DATA",
        "NUL in DATA",
        "999 octets",
    ] {
        assert!(v.contains(what), "missing {what:?} in:\n{v}");
    }
    assert_eq!(
        up.messages()[0].data,
        format!("a\nb\rc\0\r\n{long}\r\n").as_bytes()
    );
}

#[tokio::test]
async fn implicit_tls_certificate_valid_for_ip_address() {
    let pki = TestPki::generate();
    let up = TestUpstream::start(UpstreamOptions::implicit(&pki)).await;
    let tcp = TcpStream::connect(up.addr()).await.unwrap();
    let name =
        rustls_pki_types::ServerName::IpAddress(std::net::IpAddr::from([127, 0, 0, 1]).into());
    let tls = tokio_rustls::TlsConnector::from(pki.client_config())
        .connect(name, tcp)
        .await
        .expect("handshake for 127.0.0.1");
    let mut c = Raw::new(tls);
    assert_eq!(c.reply().await, "220 test-upstream ESMTP");
    assert!(c.cmd("QUIT").await.starts_with("221"));
}

#[tokio::test]
async fn raw_sequence_errors_and_rset() {
    let up = TestUpstream::start(UpstreamOptions::plain()).await;
    let mut c = raw_connect(up.addr()).await;
    c.reply().await;
    assert!(c.cmd("MAIL FROM:<a@b>").await.starts_with("503"));
    assert!(c.cmd("HELO x").await.starts_with("250"));
    assert!(c.cmd("RCPT TO:<a@b>").await.starts_with("503"));
    assert!(c.cmd("MAIL FROM:<a@b>").await.starts_with("250"));
    assert!(c.cmd("MAIL FROM:<a@b>").await.starts_with("503"));
    assert!(c.cmd("DATA").await.starts_with("554"));
    assert!(c.cmd("RSET").await.starts_with("250"));
    assert!(c.cmd("RCPT TO:<a@b>").await.starts_with("503"));
    assert!(
        c.cmd("MAIL FROM:<a@b> SIZE=999999999999")
            .await
            .starts_with("552")
    );
    assert!(c.cmd("AUTH PLAIN AGEAYg==").await.starts_with("502"));
    assert!(c.cmd("STARTTLS").await.starts_with("502"));
    assert!(c.cmd("BOGUS").await.starts_with("500"));
    assert!(c.cmd("QUIT").await.starts_with("221"));
    c.expect_eof().await;
}

#[tokio::test]
async fn raw_starttls_client_with_auth_continuation() {
    let pki = TestPki::generate();
    let up = TestUpstream::start(UpstreamOptions::starttls(&pki).with_auth("proj", "tok")).await;
    let mut c = raw_connect(up.addr()).await;
    c.reply().await;
    let ehlo = c.cmd("EHLO x").await;
    assert!(
        ehlo.contains("250-STARTTLS") || ehlo.contains("250 STARTTLS"),
        "{ehlo}"
    );
    assert!(!ehlo.contains("AUTH"), "{ehlo}");
    assert!(c.cmd("AUTH PLAIN AHByb2oAdG9r").await.starts_with("530"));
    assert!(c.cmd("MAIL FROM:<a@b>").await.starts_with("530"));
    assert!(c.cmd("STARTTLS").await.starts_with("220"));

    let tcp = c.r.into_inner();
    let connector = tokio_rustls::TlsConnector::from(pki.client_config());
    let tls = connector
        .connect("localhost".try_into().unwrap(), tcp)
        .await
        .expect("TLS handshake with client_config()");
    let mut c = Raw::new(tls);
    // State was reset: EHLO needed again.
    assert!(c.cmd("MAIL FROM:<a@b>").await.starts_with("503"));
    let ehlo = c.cmd("EHLO x").await;
    assert!(
        ehlo.contains("AUTH PLAIN LOGIN") && !ehlo.contains("STARTTLS"),
        "{ehlo}"
    );
    assert!(c.cmd("MAIL FROM:<a@b>").await.starts_with("530"));
    // AUTH PLAIN with a 334 continuation; "\0proj\0tok".
    assert_eq!(c.cmd("AUTH PLAIN").await, "334"); // "334 " (reply() trims the space)
    assert!(c.cmd("AHByb2oAdG9r").await.starts_with("235"));
    assert!(c.cmd("MAIL FROM:<a@b>").await.starts_with("250"));
    assert!(c.cmd("RCPT TO:<c@d>").await.starts_with("250"));
    assert!(c.cmd("DATA").await.starts_with("354"));
    assert!(c.cmd("hello\r\n.").await.starts_with("250"));
    assert!(c.cmd("QUIT").await.starts_with("221"));

    let m = &up.wait_for(1, WAIT).await[0];
    assert!(m.tls);
    assert_eq!(m.auth_user.as_deref(), Some("proj"));
    assert_eq!(m.data, b"hello\r\n");
}

#[tokio::test]
async fn raw_greeting_421_hang_and_drop_after_data() {
    let up = TestUpstream::start(UpstreamOptions::plain().with_script(Script {
        greeting: Some("421 4.3.2 busy".into()),
        ..Script::default()
    }))
    .await;
    let mut c = raw_connect(up.addr()).await;
    assert_eq!(c.reply().await, "421 4.3.2 busy");
    c.expect_eof().await;

    up.set_script(Script {
        hang_greeting: true,
        ..Script::default()
    });
    let mut c = raw_connect(up.addr()).await;
    let mut byte = [0u8; 1];
    let r = tokio::time::timeout(Duration::from_millis(300), c.r.read(&mut byte)).await;
    assert!(r.is_err(), "expected no greeting, got {r:?}");

    up.set_script(Script {
        drop_after_data: true,
        ..Script::default()
    });
    let mut c = raw_connect(up.addr()).await;
    c.reply().await;
    c.cmd("EHLO x").await;
    c.cmd("MAIL FROM:<a@b>").await;
    c.cmd("RCPT TO:<c@d>").await;
    assert!(c.cmd("DATA").await.starts_with("354"));
    c.send("body\r\n.\r\n").await;
    c.expect_eof().await;
    assert!(up.messages().is_empty());
    assert_eq!(up.rejected().len(), 1);
    assert_eq!(up.rejected()[0].data, b"body\r\n");
    assert_eq!(up.connections(), 3);
}

#[tokio::test]
async fn stop_refuses_connections_and_restart_on_same_port() {
    let first = TestUpstream::start(UpstreamOptions::plain()).await;
    let addr = first.addr();
    raw_connect(addr).await.reply().await;
    first.stop();
    let err = TcpStream::connect(addr)
        .await
        .expect_err("port still open after stop()");
    assert_eq!(err.kind(), std::io::ErrorKind::ConnectionRefused, "{err}");

    // Up again on the same port while `first` still exists.
    let second = TestUpstream::start(UpstreamOptions::plain().at(addr)).await;
    assert_eq!(second.addr(), addr);
    assert_eq!(
        raw_connect(addr).await.reply().await,
        "220 test-upstream ESMTP"
    );
    drop(second);
    assert!(TcpStream::connect(addr).await.is_err());
    drop(first);

    let third = TestUpstream::start(UpstreamOptions::plain().at(addr)).await;
    assert_eq!(
        raw_connect(addr).await.reply().await,
        "220 test-upstream ESMTP"
    );
    assert_eq!(third.connections(), 1);
}

#[tokio::test]
async fn stop_drops_open_connections() {
    let up = TestUpstream::start(UpstreamOptions::plain()).await;
    let mut c = raw_connect(up.addr()).await;
    c.reply().await;
    up.stop();
    c.expect_eof().await;
}

#[tokio::test]
#[should_panic(expected = "waited")]
async fn wait_for_panics_on_timeout() {
    let up = TestUpstream::start(UpstreamOptions::plain()).await;
    up.wait_for(1, Duration::from_millis(100)).await;
}

#[test]
fn pki_files_and_configs() {
    let pki = TestPki::generate();
    let dir = tempfile::tempdir().unwrap();
    let files = pki.write_to(dir.path());
    assert_eq!(std::fs::read_to_string(&files.ca).unwrap(), pki.ca_pem);
    assert_eq!(std::fs::read_to_string(&files.cert).unwrap(), pki.cert_pem);
    assert_eq!(std::fs::read_to_string(&files.key).unwrap(), pki.key_pem);
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&files.key).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
    }
    assert!(pki.cert_pem.starts_with("-----BEGIN CERTIFICATE-----"));
    assert!(pki.key_pem.contains("PRIVATE KEY"));
    assert_ne!(pki.ca_pem, pki.cert_pem);
    let _ = pki.server_config();
    let _ = pki.client_config();
    assert!(rustls::crypto::CryptoProvider::get_default().is_none());
}
