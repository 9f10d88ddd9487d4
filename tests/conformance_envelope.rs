//! MAIL/RCPT conformance over real sockets: SMTPUTF8 and 8BITMIME end to end (RFC 6531,
//! 6152), DSN parameters checked and passed on (RFC 3461), parameters given twice or unknown,
//! SIZE too large to hold, the same recipient given twice, and recipient addresses that would
//! route somewhere the relay never checked (`%`, `!`, `localhost`, `.invalid`, dotless names).

mod support;

use std::time::Duration;

use support::client::{Client, Reply};
use support::relay::{Relay, RelayOptions};
use support::upstream::{ReceivedMessage, TestUpstream, UpstreamOptions};

const WAIT: Duration = Duration::from_secs(20);

/// A relay whose route is a plain test upstream started with `opts`.
async fn relay_with(opts: UpstreamOptions, relay: RelayOptions) -> (Relay, TestUpstream) {
    let up = TestUpstream::start(opts).await;
    let pki = support::certs::TestPki::generate();
    let relay = Relay::start_with_upstream(up.port(), "none", &pki, relay);
    (relay, up)
}

/// MAIL with `mail_params`, one RCPT per `(address, params)`, DATA `body`; every step must
/// succeed. Returns the final reply.
async fn transaction(
    c: &mut Client,
    from: &str,
    mail_params: &str,
    rcpts: &[(&str, &str)],
    body: &str,
) -> Reply {
    let r = c.cmd(&format!("MAIL FROM:<{from}>{mail_params}")).await;
    assert_eq!(r.code, 250, "MAIL: {r:?}");
    for (to, params) in rcpts {
        let r = c.cmd(&format!("RCPT TO:<{to}>{params}")).await;
        assert_eq!(r.code, 250, "RCPT {to}: {r:?}");
    }
    let r = c.cmd("DATA").await;
    assert_eq!(r.code, 354, "{r:?}");
    c.write(body.as_bytes()).await;
    c.write(b".\r\n").await;
    c.reply().await
}

fn assert_reply(r: &Reply, code: u16, enhanced: &str, what: &str) {
    assert_eq!(r.code, code, "{what}: {r:?}");
    assert!(r.text.starts_with(enhanced), "{what}: {r:?}");
}

fn clean(up: &TestUpstream) {
    assert!(up.violations().is_empty(), "{:?}", up.violations());
}

fn only(msgs: &[ReceivedMessage]) -> &ReceivedMessage {
    assert_eq!(msgs.len(), 1, "{msgs:?}");
    &msgs[0]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ehlo_offers_smtputf8_and_dsn() {
    let relay = Relay::start(RelayOptions::default());
    let (_c, ehlo) = Client::starttls(relay.starttls, &relay.pki).await;
    for ext in ["SMTPUTF8", "DSN", "8BITMIME", "SIZE"] {
        assert!(
            ehlo.text
                .lines()
                .any(|l| l.split_whitespace().next() == Some(ext)),
            "{ext} missing: {ehlo:?}"
        );
    }
}

/// 14.2: an 8-bit body goes upstream with BODY=8BITMIME, declared or not (RFC 6152).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn eight_bit_body_goes_upstream_with_body_8bitmime() {
    let (relay, up) = relay_with(UpstreamOptions::plain(), RelayOptions::default()).await;
    let (id, token) = relay.add_project("a", &["app.test"]);
    let mut c = Client::logged_in(relay.starttls, &relay.pki, &id, &token).await;
    let body = "From: <noreply@app.test>\r\nTo: <u@ext.test>\r\nSubject: hi\r\nMIME-Version: 1.0\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: 8bit\r\n\r\nGrüße, 你好\r\n";
    let r = transaction(
        &mut c,
        "noreply@app.test",
        " BODY=8BITMIME",
        &[("u@ext.test", "")],
        body,
    )
    .await;
    assert_eq!(r.code, 250, "{r:?}");
    // Not declared, but 8-bit all the same.
    let r = transaction(&mut c, "noreply@app.test", "", &[("v@ext.test", "")], body).await;
    assert_eq!(r.code, 250, "{r:?}");
    let msgs = up.wait_for(2, WAIT).await;
    for m in &msgs {
        assert_eq!(m.mail_params, "BODY=8BITMIME", "{m:?}");
        assert!(m.text().contains("Grüße, 你好"));
    }
    clean(&up);
}

/// 14.2: UTF-8 local parts and U-label domains, a U-label sender in its A-label project
/// domain, a UTF-8 header From; SMTPUTF8 is repeated to an upstream that offers it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn internationalised_addresses_end_to_end() {
    let (relay, up) = relay_with(
        UpstreamOptions::plain().with_smtputf8(),
        RelayOptions::default(),
    )
    .await;
    let (id, token) = relay.add_project("a", &["xn--bcher-kva.test"]);
    let mut c = Client::logged_in(relay.starttls, &relay.pki, &id, &token).await;

    // Not declared: refused as RFC 6531 says.
    let r = c.cmd("MAIL FROM:<jörg@bücher.test>").await;
    assert_reply(&r, 553, "5.6.7", "undeclared UTF-8 sender");
    assert_eq!(c.cmd("MAIL FROM:<app@bücher.test>").await.code, 553);
    assert_eq!(c.cmd("MAIL FROM:<app@xn--bcher-kva.test>").await.code, 250);
    let r = c.cmd("RCPT TO:<用户@例子.test>").await;
    assert_reply(&r, 553, "5.6.7", "undeclared UTF-8 recipient");
    assert_eq!(c.cmd("RSET").await.code, 250);
    // A U-label domain outside the project is still someone else's.
    let r = c.cmd("MAIL FROM:<jörg@bucher.test> SMTPUTF8").await;
    assert_eq!(r.code, 553, "{r:?}");

    let body =
        "From: Jörg <jörg@bücher.test>\r\nTo: <用户@例子.test>\r\nSubject: Grüße\r\n\r\nHallo\r\n";
    let r = transaction(
        &mut c,
        "jörg@bücher.test",
        " SMTPUTF8 BODY=8BITMIME",
        &[("用户@例子.test", ""), ("ascii@ext.test", "")],
        body,
    )
    .await;
    assert_eq!(r.code, 250, "{r:?}");
    let msgs = up.wait_for(1, WAIT).await;
    let m = only(&msgs);
    assert_eq!(m.mail_from, "jörg@bücher.test");
    assert_eq!(m.rcpt_to, ["用户@例子.test", "ascii@ext.test"]);
    let params: Vec<&str> = m.mail_params.split_whitespace().collect();
    assert!(params.contains(&"SMTPUTF8"), "{params:?}");
    assert!(params.contains(&"BODY=8BITMIME"), "{params:?}");
    assert!(m.text().contains("From: Jörg <jörg@bücher.test>"));

    // ASCII envelope, raw UTF-8 header (RFC 6532): SMTPUTF8 all the same.
    let body = "From: <app@xn--bcher-kva.test>\r\nSubject: Grüße\r\n\r\nhi\r\n";
    let r = transaction(
        &mut c,
        "app@xn--bcher-kva.test",
        "",
        &[("u@ext.test", "")],
        body,
    )
    .await;
    assert_eq!(r.code, 250, "{r:?}");
    let msgs = up.wait_for(2, WAIT).await;
    assert_eq!(msgs[1].mail_params, "BODY=8BITMIME SMTPUTF8");
    clean(&up);
}

/// 14.2: no silent downgrade — an upstream without SMTPUTF8 gets nothing, the message fails
/// for good and the log says why.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn smtputf8_message_fails_when_the_upstream_lacks_smtputf8() {
    let (relay, up) = relay_with(UpstreamOptions::plain(), RelayOptions::default()).await;
    let (id, token) = relay.add_project("a", &["app.test"]);
    let mut c = Client::logged_in(relay.starttls, &relay.pki, &id, &token).await;
    let body = "From: <noreply@app.test>\r\nTo: <jörg@bücher.test>\r\nSubject: x\r\n\r\nhi\r\n";
    let r = transaction(
        &mut c,
        "noreply@app.test",
        " SMTPUTF8",
        &[("jörg@bücher.test", "")],
        body,
    )
    .await;
    assert_eq!(r.code, 250, "{r:?}");
    let qid = r.queued_id();
    let v = relay.wait_state(&qid, &["failed"], WAIT);
    assert!(v.to_string().contains("SMTPUTF8"), "{v:#}");
    relay.wait_log("does not offer SMTPUTF8", 1, WAIT);
    assert!(
        !up.commands().iter().any(|l| l.contains("MAIL FROM")),
        "{:?}",
        up.commands()
    );
    // A plain ASCII message that merely declared SMTPUTF8 still goes (nothing to downgrade).
    let r = transaction(
        &mut c,
        "noreply@app.test",
        " SMTPUTF8",
        &[("u@ext.test", "")],
        "From: <noreply@app.test>\r\nSubject: x\r\n\r\nhi\r\n",
    )
    .await;
    assert_eq!(r.code, 250, "{r:?}");
    let m = up.wait_for(1, WAIT).await;
    assert_eq!(only(&m).mail_params, "");
    clean(&up);
}

/// 14.3: RET/ENVID and NOTIFY/ORCPT are kept with the message and repeated verbatim to an
/// upstream that offers DSN.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dsn_parameters_pass_through() {
    let (relay, up) =
        relay_with(UpstreamOptions::plain().with_dsn(), RelayOptions::default()).await;
    let (id, token) = relay.add_project("a", &["app.test"]);
    let mut c = Client::logged_in(relay.starttls, &relay.pki, &id, &token).await;
    let body = "From: <noreply@app.test>\r\nSubject: x\r\n\r\nhi\r\n";
    let r = transaction(
        &mut c,
        "noreply@app.test",
        " RET=HDRS ENVID=QQ314159+2Bx",
        &[
            (
                "u@ext.test",
                " NOTIFY=SUCCESS,FAILURE ORCPT=rfc822;u+40ext.test",
            ),
            ("v@ext.test", ""),
            ("w@ext.test", " notify=never"),
        ],
        body,
    )
    .await;
    assert_eq!(r.code, 250, "{r:?}");
    let msgs = up.wait_for(1, WAIT).await;
    let m = only(&msgs);
    assert_eq!(m.mail_params, "RET=HDRS ENVID=QQ314159+2Bx");
    assert_eq!(m.rcpt_to, ["u@ext.test", "v@ext.test", "w@ext.test"]);
    assert_eq!(
        m.rcpt_params,
        [
            "NOTIFY=SUCCESS,FAILURE ORCPT=rfc822;u+40ext.test",
            "",
            "NOTIFY=NEVER"
        ]
    );
    clean(&up);
}

/// 14.3: an upstream without DSN gets no DSN parameters (and no violation).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dsn_parameters_are_dropped_for_an_upstream_without_dsn() {
    let (relay, up) = relay_with(UpstreamOptions::plain(), RelayOptions::default()).await;
    let (id, token) = relay.add_project("a", &["app.test"]);
    let mut c = Client::logged_in(relay.starttls, &relay.pki, &id, &token).await;
    let r = transaction(
        &mut c,
        "noreply@app.test",
        " RET=FULL ENVID=x",
        &[("u@ext.test", " NOTIFY=DELAY ORCPT=rfc822;u+40ext.test")],
        "From: <noreply@app.test>\r\nSubject: x\r\n\r\nhi\r\n",
    )
    .await;
    assert_eq!(r.code, 250, "{r:?}");
    let msgs = up.wait_for(1, WAIT).await;
    let m = only(&msgs);
    assert_eq!(m.mail_params, "");
    assert_eq!(m.rcpt_params, [""]);
    clean(&up);
}

/// 14.3: malformed, duplicated and unknown parameters get the right replies.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_duplicate_and_unknown_parameters() {
    let relay = Relay::start(RelayOptions::default());
    let (id, token) = relay.add_project("a", &["app.test"]);
    let mail_cases: &[(&str, u16, &str)] = &[
        (" ENVID=a+0D+0Ab", 501, "5.5.4"),
        (" ENVID=a+ZZ", 501, "5.5.4"),
        (" ENVID=a+4", 501, "5.5.4"),
        (" RET=ALL", 501, "5.5.4"),
        (" RET=HDRS RET=FULL", 501, "5.5.4"),
        (" SIZE=10 SIZE=20", 501, "5.5.4"),
        (" BODY=8BITMIME body=7bit", 501, "5.5.4"),
        (" SMTPUTF8 SMTPUTF8", 501, "5.5.4"),
        (" FOO=bar", 555, "5.5.4"),
        (" HOLDFOR=10", 555, "5.5.4"),
        (" REQUIRETLS", 555, "5.5.4"),
        (" BODY=BINARYMIME", 555, "5.5.4"),
    ];
    for chunk in mail_cases.chunks(5) {
        let mut c = Client::logged_in(relay.starttls, &relay.pki, &id, &token).await;
        for (params, code, enhanced) in chunk {
            let r = c
                .cmd(&format!("MAIL FROM:<noreply@app.test>{params}"))
                .await;
            assert_reply(&r, *code, enhanced, params);
        }
    }
    let rcpt_cases: &[(&str, u16, &str)] = &[
        (" NOTIFY=SOMETIMES", 501, "5.5.4"),
        (" NOTIFY=NEVER,SUCCESS", 501, "5.5.4"),
        (" NOTIFY=SUCCESS NOTIFY=FAILURE", 501, "5.5.4"),
        (" ORCPT=rfc822;u+0A+0Dx", 501, "5.5.4"),
        (" ORCPT=u@ext.test", 501, "5.5.4"),
        (" ORCPT=rfc822;a ORCPT=rfc822;b", 501, "5.5.4"),
        (" CONNEG", 555, "5.5.4"),
        (" X-ANY", 555, "5.5.4"),
    ];
    for chunk in rcpt_cases.chunks(4) {
        let mut c = Client::logged_in(relay.starttls, &relay.pki, &id, &token).await;
        assert_eq!(c.cmd("MAIL FROM:<noreply@app.test>").await.code, 250);
        for (params, code, enhanced) in chunk {
            let r = c.cmd(&format!("RCPT TO:<u@ext.test>{params}")).await;
            assert_reply(&r, *code, enhanced, params);
        }
        // The transaction is still open and usable.
        assert_eq!(c.cmd("RCPT TO:<u@ext.test> NOTIFY=FAILURE").await.code, 250);
    }
}

/// 14.6: SIZE larger than the limit, however many digits, is 552; not a number is 501.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn size_overflow_is_refused() {
    let relay = Relay::start(RelayOptions::default());
    let (id, token) = relay.add_project("a", &["app.test"]);
    let mut c = Client::logged_in(relay.starttls, &relay.pki, &id, &token).await;
    for size in [
        "99999999999999999999999",
        "18446744073709551616",
        "18446744073709551615",
        "99999999999999999999",
        "1048577",
    ] {
        let r = c
            .cmd(&format!("MAIL FROM:<noreply@app.test> SIZE={size}"))
            .await;
        assert_reply(&r, 552, "5.3.4", size);
    }
    for size in ["abc", "12x", "-5"] {
        let r = c
            .cmd(&format!("MAIL FROM:<noreply@app.test> SIZE={size}"))
            .await;
        assert_reply(&r, 501, "5.5.4", size);
    }
    assert_eq!(
        c.cmd("MAIL FROM:<noreply@app.test> SIZE=1048576")
            .await
            .code,
        250
    );
}

/// 14.4: the same recipient (domain case-insensitive, local part exact) is accepted again
/// with 250, delivered once, and counted once against max_recipients and the quota.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn duplicate_recipients_are_delivered_and_counted_once() {
    let (relay, up) = relay_with(
        UpstreamOptions::plain(),
        RelayOptions {
            max_recipients: 2,
            ..Default::default()
        },
    )
    .await;
    let (id, token) = relay.add_project("a", &["app.test"]);
    relay.cli_json(&["project", "limits", &id, "--recipients-per-day", "3"]);
    let mut c = Client::logged_in(relay.starttls, &relay.pki, &id, &token).await;
    assert_eq!(c.cmd("MAIL FROM:<noreply@app.test>").await.code, 250);
    for to in ["u@ext.test", "u@EXT.TEST", "u@ext.test", "U@ext.test"] {
        let r = c.cmd(&format!("RCPT TO:<{to}>")).await;
        assert_eq!(r.code, 250, "{to}: {r:?}");
    }
    // Two distinct recipients (u and U) fill max_recipients = 2.
    let r = c.cmd("RCPT TO:<w@ext.test>").await;
    assert_reply(&r, 452, "4.5.3", "third distinct recipient");
    assert_eq!(c.cmd("DATA").await.code, 354);
    c.write(b"From: <noreply@app.test>\r\nSubject: x\r\n\r\nhi\r\n.\r\n")
        .await;
    assert_eq!(c.reply().await.code, 250);
    let msgs = up.wait_for(1, WAIT).await;
    assert_eq!(only(&msgs).rcpt_to, ["u@ext.test", "U@ext.test"]);

    // 2 of 3 recipients of the day used: one more fits (twice given), a second does not.
    assert_eq!(c.cmd("MAIL FROM:<noreply@app.test>").await.code, 250);
    assert_eq!(c.cmd("RCPT TO:<x@ext.test>").await.code, 250);
    assert_eq!(c.cmd("RCPT TO:<x@Ext.Test>").await.code, 250);
    let r = c.cmd("RCPT TO:<y@ext.test>").await;
    assert_eq!(r.code, 451, "{r:?}");
    clean(&up);
}

/// 22.2: recipients that would route onward (percent hack, bang path, quoted `%`) and
/// special-use or dotless domains are refused; .test and .example are not.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recipients_that_route_elsewhere_are_refused() {
    let relay = Relay::start(RelayOptions {
        server_extra: "refused_recipient_domains = [\"localhost\", \"invalid\", \"corp.example\"]"
            .into(),
        ..Default::default()
    });
    let (id, token) = relay.add_project("a", &["app.test"]);
    let cases: &[(&str, u16, &str)] = &[
        ("user%internal.corp@ext.test", 501, "5.1.3"),
        ("internal.corp!user@ext.test", 501, "5.1.3"),
        ("\"a%b\"@ext.test", 501, "5.1.3"),
        ("u@localhost", 550, "5.1.2"),
        ("u@LocalHost", 550, "5.1.2"),
        ("u@printer", 550, "5.1.2"),
        ("u@app.localhost", 550, "5.1.2"),
        ("u@x.invalid", 550, "5.1.2"),
        ("u@mail.corp.example", 550, "5.1.2"),
        ("u@[127.0.0.1]", 501, "5.1.3"),
        ("u@ext.test", 250, "2.1.5"),
        ("u@other.example", 250, "2.1.5"),
        ("u@localhost.test", 250, "2.1.5"),
    ];
    for chunk in cases.chunks(5) {
        let mut c = Client::logged_in(relay.starttls, &relay.pki, &id, &token).await;
        assert_eq!(c.cmd("MAIL FROM:<noreply@app.test>").await.code, 250);
        for (to, code, enhanced) in chunk {
            let r = c.cmd(&format!("RCPT TO:<{to}>")).await;
            assert_reply(&r, *code, enhanced, to);
        }
    }
}
