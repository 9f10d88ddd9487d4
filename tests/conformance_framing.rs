//! SMTP conformance of the session's framing and command loop, black-box over sockets: bare-LF
//! line ends (a real Python smtplib client), `[server] bare_newline`, recipient and rate-limit
//! refusals that must not end the session, STARTTLS with an argument, AUTH responses that are
//! not base64, HTTP on the SMTP port, and the junk command limit.

mod support;

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use base64::Engine;
use support::certs::TestPki;
use support::client::{Client, plain_message};
use support::relay::{Relay, RelayOptions};
use support::upstream::{TestUpstream, UpstreamOptions, data_problems};

const WAIT: Duration = Duration::from_secs(30);

fn b64(b: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(b)
}

/// The bytes a message becomes when its bare LFs are read as CRLF.
fn crlf(lf: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(lf.len() * 2);
    for &b in lf {
        if b == b'\n' {
            out.push(b'\r');
        }
        out.push(b);
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_smtplib_bytes_with_lf_arrive_with_crlf_and_intact() {
    let pki = TestPki::generate();
    let up = TestUpstream::start(UpstreamOptions::starttls(&pki)).await;
    let relay = Relay::start_with_upstream(up.port(), "starttls", &pki, RelayOptions::default());
    let (id, token) = relay.add_project("a", &["a.test"]);

    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/support/smtplib_send.py");
    let port = relay.starttls.port().to_string();
    let ca = relay.files.ca.clone();
    let run = tokio::task::spawn_blocking(move || {
        Command::new("python3")
            .arg(&script)
            .args([port.as_str(), ca.to_str().unwrap(), &id, &token])
            .args(["app@a.test", "u@example.net"])
            .output()
            .expect("python3 must be installed (.ci/run installs it)")
    })
    .await
    .unwrap();
    let stdout = String::from_utf8_lossy(&run.stdout);
    assert!(
        run.status.success(),
        "smtplib failed:\n{stdout}\n{}\n{}",
        String::from_utf8_lossy(&run.stderr),
        relay.server_log()
    );
    let sent: Vec<Vec<u8>> = stdout
        .lines()
        .map(|l| {
            base64::engine::general_purpose::STANDARD
                .decode(l.trim())
                .unwrap()
        })
        .collect();
    assert_eq!(sent.len(), 2, "{stdout}");
    assert!(sent[1].len() > 256 * 1024, "the second one is spilled");

    let got = up.wait_for(2, WAIT).await;
    for lf in &sent {
        // smtplib adds a CRLF before ".\r\n" when the data does not end in one.
        let mut expect = crlf(lf);
        expect.extend_from_slice(b"\r\n");
        let m = got
            .iter()
            .find(|m| {
                let id = &lf[lf.windows(12).position(|w| w == b"Message-ID: ").unwrap()..];
                let id = &id[..id.iter().position(|&b| b == b'\n').unwrap()];
                m.data.windows(id.len()).any(|w| w == id)
            })
            .expect("message arrived");
        assert!(
            m.data.ends_with(&expect),
            "arrived:\n{}",
            String::from_utf8_lossy(&m.data[..m.data.len().min(2000)])
        );
        let problems = data_problems(&m.raw);
        assert!(problems.is_empty(), "{problems:?}");
    }
    // The lone dot smtplib stuffed is stuffed again on the way out.
    let small = got.iter().find(|m| m.text().contains("lf-small")).unwrap();
    assert!(small.raw.windows(6).any(|w| w == b"\r\n..\r\n"));
    assert!(up.violations().is_empty(), "{:?}", up.violations());
}

/// A message body with LF line ends, as the raw client writes it (no dot in column one).
fn lf_message(subject: &str, body: &str) -> String {
    plain_message("app@a.test", "u@example.net", subject, body).replace("\r\n", "\n")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bare_newline_normalize_and_reject() {
    let pki = TestPki::generate();
    let up = TestUpstream::start(UpstreamOptions::starttls(&pki)).await;
    let relay = Relay::start_with_upstream(up.port(), "starttls", &pki, RelayOptions::default());
    let (id, token) = relay.add_project("a", &["a.test"]);

    // normalize (default): commands and DATA lines ending in LF are taken as CRLF.
    let (mut c, _) = Client::starttls(relay.starttls, &relay.pki).await;
    c.write(b"NOOP\n").await;
    assert_eq!(c.reply().await.code, 250);
    let auth = b64(format!("\0{id}\0{token}").as_bytes());
    c.write(
        format!("AUTH PLAIN {auth}\nMAIL FROM:<app@a.test>\nRCPT TO:<u@example.net>\n").as_bytes(),
    )
    .await;
    assert_eq!(c.reply().await.code, 235);
    assert_eq!(c.reply().await.code, 250);
    assert_eq!(c.reply().await.code, 250);
    c.write(b"DATA\n").await;
    assert_eq!(c.reply().await.code, 354);
    let body = lf_message("lf", &format!("{}\nshort\n", "y".repeat(998)));
    c.write(body.as_bytes()).await;
    c.write(b"\r\n.\r\n").await;
    let r = c.reply().await;
    assert_eq!(r.code, 250, "{r:?}");
    // A normalised line of 999 octets is too long, like a CRLF one.
    let long = lf_message("long", &format!("{}\n", "z".repeat(999)));
    let r = c
        .send("app@a.test", &["u@example.net"], &format!("{long}\r\n"))
        .await;
    assert_eq!((r.code, r.text.as_str()), (500, "5.5.2 Line too long"));
    assert_eq!(c.cmd("QUIT").await.code, 221);
    let got = up.wait_for(1, WAIT).await;
    let mut expect = crlf(body.as_bytes());
    expect.extend_from_slice(b"\r\n");
    assert!(got[0].data.ends_with(&expect), "{}", got[0].text());
    assert!(data_problems(&got[0].raw).is_empty());

    // reject: the same bytes get 550 5.5.2 and a close, in a command or in DATA.
    let relay = Relay::start_with_upstream(
        up.port(),
        "starttls",
        &pki,
        RelayOptions {
            server_extra: "bare_newline = \"reject\"".into(),
            ..Default::default()
        },
    );
    let (id, token) = relay.add_project("a", &["a.test"]);
    let (mut c, _) = Client::starttls(relay.starttls, &relay.pki).await;
    c.write(b"NOOP\n").await;
    let r = c.reply().await;
    assert_eq!(
        (r.code, r.text.as_str()),
        (550, "5.5.2 Error: bare <LF> received")
    );
    assert!(c.closed(Duration::from_secs(5)).await);
    let mut c = Client::logged_in(relay.starttls, &relay.pki, &id, &token).await;
    c.cmd("MAIL FROM:<app@a.test>").await;
    c.cmd("RCPT TO:<u@example.net>").await;
    assert_eq!(c.cmd("DATA").await.code, 354);
    c.write_lossy(body.as_bytes()).await;
    c.write_lossy(b"\r\n.\r\n").await;
    let r = c.reply().await;
    assert_eq!((r.code, &r.text[..5]), (550, "5.5.2"), "{r:?}");
    assert!(c.closed(Duration::from_secs(5)).await);
    assert!(relay.cli_json(&["log"]).as_array().unwrap().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recipients_over_the_limit_do_not_end_the_session() {
    let pki = TestPki::generate();
    let up = TestUpstream::start(UpstreamOptions::starttls(&pki)).await;
    let relay = Relay::start_with_upstream(
        up.port(),
        "starttls",
        &pki,
        RelayOptions {
            max_recipients: 100,
            ..Default::default()
        },
    );
    let (id, token) = relay.add_project("a", &["a.test"]);
    let mut c = Client::logged_in(relay.starttls, &relay.pki, &id, &token).await;
    assert_eq!(c.cmd("MAIL FROM:<app@a.test>").await.code, 250);
    let mut codes = Vec::new();
    for i in 0..150 {
        codes.push(c.cmd(&format!("RCPT TO:<u{i}@example.net>")).await.code);
    }
    assert!(codes[..100].iter().all(|&c| c == 250), "{codes:?}");
    assert!(codes[100..].iter().all(|&c| c == 452), "{codes:?}");
    assert_eq!(c.cmd("DATA").await.code, 354);
    c.write(plain_message("app@a.test", "u0@example.net", "many", "hi\r\n").as_bytes())
        .await;
    c.write(b".\r\n").await;
    assert_eq!(c.reply().await.code, 250);
    let got = up.wait_for(1, WAIT).await;
    let mut rcpts = got[0].rcpt_to.clone();
    rcpts.sort_by_key(|r| r[1..r.find('@').unwrap()].parse::<u32>().unwrap());
    let expect: Vec<String> = (0..100).map(|i| format!("u{i}@example.net")).collect();
    assert_eq!(rcpts, expect);

    // Still bounded: 1000 refusals between accepted messages are free, the ones after count,
    // and RSET does not start them again.
    let relay = Relay::start(RelayOptions {
        max_recipients: 3,
        ..Default::default()
    });
    let (id, token) = relay.add_project("a", &["a.test"]);
    let mut c = Client::logged_in(relay.starttls, &relay.pki, &id, &token).await;
    assert_eq!(c.cmd("MAIL FROM:<app@a.test>").await.code, 250);
    let mut burst = String::new();
    for i in 0..1100 {
        if i == 500 {
            burst.push_str("RSET\r\nMAIL FROM:<app@a.test>\r\n");
        }
        burst.push_str(&format!("RCPT TO:<u{i}@example.net>\r\n"));
    }
    c.write_lossy(burst.as_bytes()).await;
    let mut codes = Vec::new();
    while let Some(r) = c.try_reply(Duration::from_secs(10)).await {
        codes.push(r.code);
        if r.code == 421 {
            break;
        }
    }
    let count = |code| codes.iter().filter(|&&c| c == code).count();
    // 3 + 3 recipients, RSET, MAIL; 1000 free 452s and 10 counted; then 421.
    assert_eq!((count(250), count(452)), (8, 1010), "{codes:?}");
    assert_eq!(codes.len(), 8 + 1010 + 1);
    assert_eq!(codes.last(), Some(&421));
    assert!(c.closed(Duration::from_secs(5)).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rate_limit_refusals_do_not_end_the_session() {
    let relay = Relay::start(RelayOptions {
        extra_config: "[limits]\nper_minute = 1\n".into(),
        ..Default::default()
    });
    let (id, token) = relay.add_project("a", &["a.test"]);
    let mut c = Client::logged_in(relay.starttls, &relay.pki, &id, &token).await;
    c.submit("app@a.test", "u@example.net").await;
    for _ in 0..15 {
        let r = c.cmd("MAIL FROM:<app@a.test>").await;
        assert_eq!(r.code, 451, "{r:?}");
    }
    assert_eq!(c.cmd("NOOP").await.code, 250, "the session is still open");
    // Protocol errors still count: the 11th closes.
    for _ in 0..10 {
        assert_eq!(c.cmd("RCPT TO:<u@example.net>").await.code, 503);
    }
    assert_eq!(c.cmd("RCPT TO:<u@example.net>").await.code, 421);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn starttls_with_an_argument_is_a_syntax_error() {
    let relay = Relay::start(RelayOptions::default());
    let mut c = Client::connect(relay.starttls).await;
    assert_eq!(c.reply().await.code, 220);
    assert_eq!(c.cmd("EHLO client.test").await.code, 250);
    let r = c.cmd("STARTTLS now").await;
    assert_eq!((r.code, r.text.as_str()), (501, "5.5.4 Syntax: STARTTLS"));
    // Nothing was started: the session goes on in plain text, and STARTTLS works.
    assert_eq!(c.cmd("NOOP").await.code, 250);
    assert_eq!(c.cmd("STARTTLS").await.code, 220);
    c.upgrade(&relay.pki).await;
    assert_eq!(c.cmd("EHLO client.test").await.code, 250);
    assert_eq!(c.cmd("STARTTLS x").await.code, 501);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auth_responses_that_are_not_base64_get_501_and_count_as_failures() {
    let relay = Relay::start(RelayOptions {
        extra_config: "[throttle]\nauth_failure_delay_ms = 50\nauth_failures_per_ip = 4\nauth_failure_window_secs = 600\nauth_cooldown_secs = 600\n".into(),
        ..Default::default()
    });
    let (id, token) = relay.add_project("a", &["a.test"]);
    let (mut c, _) = Client::starttls(relay.starttls, &relay.pki).await;
    let r = c.cmd("AUTH PLAIN !!!notbase64").await;
    assert_eq!((r.code, &r.text[..5]), (501, "5.5.2"), "{r:?}");
    assert_eq!(c.cmd("AUTH PLAIN").await.code, 334);
    assert_eq!(c.cmd("%%%").await.code, 501);
    // The third failure of the session closes it, as three 535s do.
    assert_eq!(c.cmd("AUTH LOGIN").await.code, 334);
    let r = c.cmd("not base64!").await;
    assert_eq!(r.code, 501, "{r:?}");
    assert_eq!(c.reply().await.code, 421);
    assert!(c.closed(Duration::from_secs(5)).await);
    // A wrong token is still 535 (the IP's fourth failure); the fifth, not base64 either,
    // puts the IP over its spraying threshold, so the 501 is followed by 421 and a close.
    let (mut c, _) = Client::starttls(relay.starttls, &relay.pki).await;
    assert_eq!(c.auth_plain(&id, "smtpr_wrong").await.code, 535);
    let r = c.cmd("AUTH PLAIN @@").await;
    assert_eq!(r.code, 501, "{r:?}");
    let r = c.reply().await;
    assert_eq!(r.code, 421, "IP cooling down: {r:?}");
    assert!(c.closed(Duration::from_secs(5)).await);
    // The address is still greeted, and a correct token is never refused (shared NAT).
    let mut c = Client::connect(relay.starttls).await;
    assert_eq!(c.reply().await.code, 220);
    let (mut c, _) = Client::starttls(relay.starttls, &relay.pki).await;
    assert_eq!(c.auth_plain(&id, &token).await.code, 235);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_on_the_smtp_port_is_closed_at_once() {
    let relay = Relay::start(RelayOptions {
        plain_listener: true,
        ..Default::default()
    });
    let requests: [&[u8]; 7] = [
        b"GET / HTTP/1.1\r\nHost: relay.test\r\nUser-Agent: curl/8\r\nAccept: */*\r\n\r\n",
        b"POST /submit HTTP/1.1\r\nHost: x\r\nContent-Length: 40\r\n\r\nMAIL FROM:<a@b>\r\nRCPT TO:<c@d>\r\n",
        b"CONNECT relay.test:587 HTTP/1.1\r\nHost: relay.test:587\r\n\r\n",
        b"Host: relay.test\r\nNOOP\r\n",
        b"Authorization: Basic c2VjcmV0LXRva2Vu\r\n\r\n",
        b"OPTIONS * HTTP/1.1\r\n\r\n",
        b"put /x HTTP/1.0\r\n\r\n",
    ];
    for req in requests {
        let mut c = Client::connect(relay.plain.unwrap()).await;
        assert_eq!(c.reply().await.code, 220);
        c.write_lossy(req).await;
        let r = c.reply().await;
        assert_eq!(r.code, 221, "{req:?}: {r:?}");
        assert!(
            c.try_reply(Duration::from_secs(5)).await.is_none(),
            "{req:?}: one reply only"
        );
    }
    // Mid-session too (a header line where a command should be), inside TLS as well.
    let (mut c, _) = Client::starttls(relay.starttls, &relay.pki).await;
    c.write(b"User-Agent: x\r\nNOOP\r\n").await;
    assert_eq!(c.reply().await.code, 221);
    assert!(c.closed(Duration::from_secs(5)).await);
    let log = relay.wait_log("non-SMTP command (HTTP request or header line)", 8, WAIT);
    assert!(
        !log.contains("c2VjcmV0LXRva2Vu"),
        "only the first word is logged"
    );
    assert!(
        log.lines().any(
            |l| l.contains("non-SMTP command (HTTP request or header line)")
                && l.contains("127.0.0.1")
        ),
        "the client is logged"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn junk_commands_are_limited_per_session() {
    let relay = Relay::start(RelayOptions::default());
    let (id, token) = relay.add_project("a", &["a.test"]);
    // 1000 pipelined NOOP/RSET: the first 100 are answered, then 421 and close.
    let mut c = Client::logged_in(relay.starttls, &relay.pki, &id, &token).await;
    c.write_lossy("NOOP\r\nRSET\r\n".repeat(500).as_bytes())
        .await;
    let mut codes = Vec::new();
    while let Some(r) = c.try_reply(Duration::from_secs(5)).await {
        codes.push(r.code);
        if r.code == 421 {
            assert_eq!(
                r.text,
                "4.7.0 Too many commands without mail, closing connection"
            );
            break;
        }
    }
    assert_eq!(codes.len(), 101, "{codes:?}");
    assert!(codes[..100].iter().all(|&c| c == 250));
    assert!(c.closed(Duration::from_secs(5)).await);

    // An accepted message starts the count again (as Postfix does).
    let mut c = Client::logged_in(relay.starttls, &relay.pki, &id, &token).await;
    for _ in 0..99 {
        assert_eq!(c.cmd("NOOP").await.code, 250);
    }
    c.submit("app@a.test", "u@example.net").await;
    for _ in 0..100 {
        assert_eq!(c.cmd("NOOP").await.code, 250);
    }
    assert_eq!(c.cmd("NOOP").await.code, 421);

    // junk_command_limit = 0: no limit; a small one cuts off early. Unknown commands are junk
    // too (here the error limit does not get there first).
    for (limit, n, closed_at) in [(0, 1000, None), (3, 10, Some(3))] {
        let relay = Relay::start(RelayOptions {
            server_extra: format!("junk_command_limit = {limit}"),
            ..Default::default()
        });
        let (mut c, _) = Client::starttls(relay.starttls, &relay.pki).await;
        c.write_lossy("NOOP\r\n".repeat(n).as_bytes()).await;
        let mut answered = 0;
        while let Some(r) = c.try_reply(Duration::from_secs(5)).await {
            if r.code == 421 {
                break;
            }
            answered += 1;
            if answered == n {
                break;
            }
        }
        assert_eq!(answered, closed_at.unwrap_or(n), "limit {limit}");
        if limit == 3 {
            let (mut c, _) = Client::starttls(relay.starttls, &relay.pki).await;
            assert_eq!(c.cmd("NOOP").await.code, 250);
            assert_eq!(c.cmd("XYZZY").await.code, 500);
            assert_eq!(c.cmd("RSET").await.code, 250);
            assert_eq!(c.cmd("HELP").await.code, 421);
        }
    }
}
