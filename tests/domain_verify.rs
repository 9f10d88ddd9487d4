//! `smtp-relay domain verify` / `domain status` against a real DNS server (nsd on loopback,
//! zone files written here): correct records are verified, each kind of mistake is reported
//! precisely with the record to publish, and a DNS failure is "could not check", never verified.

mod support;

use std::net::UdpSocket;
use std::time::Duration;

use serde_json::Value;
use support::dns::{Nsd, zone};
use support::relay::{Relay, RelayOptions};

const MAIN: &[&str] = &[
    "good.test",
    "nodkim.test",
    "wrongp.test",
    "twospf.test",
    "noinclude.test",
    "plusall.test",
    "lookups.test",
    "nodmarc.test",
    "baddmarc.test",
];

fn upstreams() -> String {
    "[delivery]\ndefault_route = \"sg\"\n\n\
     [upstream.sg]\ntype = \"smtp\"\nprovider = \"sendgrid\"\npassword_env = \"SG_KEY\"\n\n\
     [upstream.smart]\ntype = \"smtp\"\nhost = \"127.0.0.1\"\nport = 2525\ntls = \"none\"\nauth = \"none\"\n\n"
        .to_string()
}

fn start_relay(dns_config: &str) -> Relay {
    Relay::start(RelayOptions {
        upstreams: Some(upstreams()),
        env: vec![("SG_KEY".into(), "test-key".into())],
        extra_config: dns_config.to_string(),
        ..Default::default()
    })
}

/// `domain verify <d> --json`: the report, and whether the command exited 0.
fn verify(relay: &Relay, domain: &str) -> (Value, bool) {
    let out = relay.cli(&["domain", "verify", domain, "--json"]);
    let v: Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "domain verify {domain}: {e}: {}",
            String::from_utf8_lossy(&out.stderr)
        )
    });
    (v, out.status.success())
}

fn findings<'a>(v: &'a Value, check: &str, status: &str) -> Vec<&'a Value> {
    v["findings"]
        .as_array()
        .expect("findings")
        .iter()
        .filter(|f| f["check"] == check && f["status"] == status)
        .collect()
}

/// One finding of `check` with `status` whose message contains `needle`.
fn has(v: &Value, check: &str, status: &str, needle: &str) -> Value {
    findings(v, check, status)
        .into_iter()
        .find(|f| f["message"].as_str().unwrap_or("").contains(needle))
        .cloned()
        .unwrap_or_else(|| panic!("no {check} {status} finding with {needle:?} in {v:#}"))
}

fn keygen(relay: &Relay, domain: &str, algorithm: &str) -> Value {
    relay.cli_json(&[
        "dkim",
        "keygen",
        "--domain",
        domain,
        "--algorithm",
        algorithm,
        "--activate",
    ])
}

fn rec(name: &str, value: &str) -> String {
    format!("{name} IN TXT \"{value}\"")
}

const GOOD_SPF: &str = "v=spf1 include:sendgrid.net ~all";

#[test]
fn records_in_dns_are_checked_precisely() {
    // Keys first (their records go into the zones), then the DNS server on the port named in
    // the relay's [dns].
    let mut nsd = Nsd::prepare();
    let relay = start_relay(&nsd.config());
    let (_main, _) = relay.add_project("main", MAIN);
    let (smart, _) = relay.add_project("smart", &["smart.test"]);
    relay.cli_json(&["project", "route", &smart, "--upstream", "smart"]);

    let mut dkim = std::collections::HashMap::new();
    for d in MAIN.iter().chain(&["smart.test"]) {
        dkim.insert(*d, keygen(&relay, d, "ed25519"));
    }
    let good_rsa = keygen(&relay, "good.test", "rsa");
    let pending = relay.cli_json(&[
        "dkim",
        "keygen",
        "--domain",
        "good.test",
        "--selector",
        "next",
        "--algorithm",
        "ed25519",
    ]);
    let published = |d: &str| dkim[d]["dns"]["record"].as_str().unwrap().to_string();
    let dmarc = |d: &str, v: &str| rec(&format!("_dmarc.{d}."), v);
    let std_dmarc = |d: &str| dmarc(d, &format!("v=DMARC1; p=quarantine; rua=mailto:dmarc@{d}"));

    let mut zones = vec![(
        "sendgrid.net".to_string(),
        zone("sendgrid.net", &[rec("@", "v=spf1 ip4:167.89.0.0/17 ~all")]),
    )];
    let mut add = |d: &str, records: Vec<String>| zones.push((d.to_string(), zone(d, &records)));
    add(
        "good.test",
        vec![
            published("good.test"),
            good_rsa["dns"]["record"].as_str().unwrap().to_string(),
            pending["dns"]["record"].as_str().unwrap().to_string(),
            rec("@", GOOD_SPF),
            rec("@", "google-site-verification=abc"),
            std_dmarc("good.test"),
        ],
    );
    add(
        "nodkim.test",
        vec![rec("@", GOOD_SPF), std_dmarc("nodkim.test")],
    );
    // The record of another key under wrongp.test's selector.
    let other_p = dkim["good.test"]["dns"]["value"]
        .as_str()
        .unwrap()
        .to_string();
    add(
        "wrongp.test",
        vec![
            rec(
                dkim["wrongp.test"]["dns"]["name"].as_str().unwrap(),
                &other_p,
            ),
            rec("@", GOOD_SPF),
            std_dmarc("wrongp.test"),
        ],
    );
    add(
        "twospf.test",
        vec![
            published("twospf.test"),
            rec("@", GOOD_SPF),
            rec("@", "v=spf1 mx -all"),
            std_dmarc("twospf.test"),
        ],
    );
    add(
        "noinclude.test",
        vec![
            published("noinclude.test"),
            rec("@", "v=spf1 mx ~all"),
            std_dmarc("noinclude.test"),
        ],
    );
    add(
        "plusall.test",
        vec![
            published("plusall.test"),
            rec("@", "v=spf1 include:sendgrid.net +all"),
            std_dmarc("plusall.test"),
        ],
    );
    // 2 at the top, 5 in _spf, 5 in _spf2: 12 lookups, counted through the includes.
    add(
        "lookups.test",
        vec![
            published("lookups.test"),
            rec(
                "@",
                "v=spf1 include:sendgrid.net include:_spf.lookups.test ~all",
            ),
            rec(
                "_spf",
                "v=spf1 a mx a:x.lookups.test mx:x.lookups.test include:_spf2.lookups.test -all",
            ),
            rec(
                "_spf2",
                "v=spf1 a mx a:y.lookups.test mx:y.lookups.test exists:z.lookups.test -all",
            ),
            std_dmarc("lookups.test"),
        ],
    );
    add(
        "nodmarc.test",
        vec![published("nodmarc.test"), rec("@", GOOD_SPF)],
    );
    add(
        "baddmarc.test",
        vec![
            published("baddmarc.test"),
            rec("@", GOOD_SPF),
            dmarc("baddmarc.test", "v=DMARC1; p=block"),
        ],
    );
    add(
        "smart.test",
        vec![
            published("smart.test"),
            rec("@", "v=spf1 ip4:127.0.0.0/8 -all"),
            dmarc("smart.test", "v=DMARC1; p=reject"),
        ],
    );
    nsd.start(&zones);

    let (v, ok) = verify(&relay, "good.test");
    assert_eq!(v["verdict"], "verified", "{v:#}");
    assert!(ok, "verified exits 0");
    assert_eq!(findings(&v, "dkim", "ok").len(), 3, "{v:#}");
    has(&v, "dkim", "ok", "selector next (pending");
    has(&v, "spf", "ok", "include:sendgrid.net");
    has(&v, "dmarc", "ok", "p=quarantine");
    has(&v, "dmarc", "ok", "DKIM alignment can pass");

    let (v, ok) = verify(&relay, "nodkim.test");
    assert_eq!(v["verdict"], "failing", "{v:#}");
    assert!(!ok, "failing exits non-zero");
    let f = has(&v, "dkim", "error", "no DKIM record at");
    assert_eq!(f["publish"], dkim["nodkim.test"]["dns"]["record"]);

    let (v, _) = verify(&relay, "wrongp.test");
    assert_eq!(v["verdict"], "failing", "{v:#}");
    let f = has(&v, "dkim", "error", "is not the relay's public key");
    assert_eq!(f["publish"], dkim["wrongp.test"]["dns"]["record"]);

    let (v, _) = verify(&relay, "twospf.test");
    assert_eq!(v["verdict"], "failing", "{v:#}");
    let f = has(&v, "spf", "error", "2 SPF records");
    assert_eq!(
        f["publish"],
        "twospf.test. IN TXT \"v=spf1 include:sendgrid.net mx ~all\""
    );

    let (v, ok) = verify(&relay, "noinclude.test");
    assert_eq!(v["verdict"], "partial", "{v:#}");
    assert!(ok, "partial exits 0");
    let f = has(&v, "spf", "warning", "does not authorise sendgrid");
    assert_eq!(
        f["publish"],
        "noinclude.test. IN TXT \"v=spf1 mx include:sendgrid.net ~all\""
    );

    let (v, _) = verify(&relay, "plusall.test");
    assert_eq!(v["verdict"], "failing", "{v:#}");
    has(&v, "spf", "error", "ends in +all");

    let (v, _) = verify(&relay, "lookups.test");
    assert_eq!(v["verdict"], "failing", "{v:#}");
    has(&v, "spf", "error", "needs 12 DNS lookups");

    let (v, _) = verify(&relay, "nodmarc.test");
    assert_eq!(v["verdict"], "partial", "{v:#}");
    let f = has(
        &v,
        "dmarc",
        "warning",
        "no DMARC record at _dmarc.nodmarc.test.",
    );
    assert_eq!(
        f["publish"],
        "_dmarc.nodmarc.test. IN TXT \"v=DMARC1; p=none; rua=mailto:dmarc-reports@nodmarc.test\""
    );

    let (v, _) = verify(&relay, "baddmarc.test");
    assert_eq!(v["verdict"], "failing", "{v:#}");
    has(&v, "dmarc", "error", "malformed: p=block is not a policy");

    // A smarthost keeps the envelope sender: SPF (by its IP) can align too.
    let (v, _) = verify(&relay, "smart.test");
    assert_eq!(v["verdict"], "verified", "{v:#}");
    has(&v, "spf", "ok", "smarthost 127.0.0.1");
    has(&v, "dmarc", "ok", "SPF alignment can pass");

    // A zone the server is not authoritative for: REFUSED, so nothing is concluded.
    let (v, ok) = verify(&relay, "elsewhere.example");
    assert_eq!(v["verdict"], "could_not_check", "{v:#}");
    assert!(!ok);
    assert!(findings(&v, "spf", "could_not_check").len() == 1, "{v:#}");
    assert!(findings(&v, "dmarc", "could_not_check").len() == 1, "{v:#}");

    // domain status: every domain of a project, one report each.
    let out = relay.cli(&["domain", "status", "--project", &smart, "--json"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(v.as_array().map(Vec::len), Some(1));
    assert_eq!(v[0]["domain"], "smart.test");

    // The text form: verdict first, each finding, the record to publish under it.
    for d in ["good.test", "noinclude.test"] {
        let out = relay.cli(&["domain", "verify", d]);
        let text = String::from_utf8_lossy(&out.stdout);
        println!("$ smtp-relay domain verify {d}\n{text}");
        assert!(text.starts_with(&format!("{d}: ")), "{text}");
    }
    let text = String::from_utf8_lossy(&relay.cli(&["domain", "verify", "noinclude.test"]).stdout)
        .to_string();
    assert!(
        text.contains("publish: noinclude.test. IN TXT \"v=spf1 mx include:sendgrid.net ~all\""),
        "{text}"
    );
}

/// A resolver that gets no answer: every check "could not check", quickly, never verified.
#[test]
fn dns_timeout_is_could_not_check() {
    // Bound and silent: queries go nowhere; TCP on the port is refused.
    let silent = UdpSocket::bind("127.0.0.1:0").expect("bind");
    let port = silent.local_addr().expect("addr").port();
    let relay = start_relay(&format!(
        "[dns]\nnameservers = [\"127.0.0.1:{port}\"]\ntimeout_secs = 1\nattempts = 1\n"
    ));
    relay.add_project("p", &["quiet.test"]);
    keygen(&relay, "quiet.test", "ed25519");
    let started = std::time::Instant::now();
    let (v, ok) = verify(&relay, "quiet.test");
    assert!(!ok);
    assert_eq!(v["verdict"], "could_not_check", "{v:#}");
    for check in ["dkim", "spf", "dmarc"] {
        assert_eq!(
            findings(&v, check, "could_not_check").len(),
            1,
            "{check}: {v:#}"
        );
        assert!(findings(&v, check, "ok").is_empty(), "{check}: {v:#}");
    }
    assert!(
        started.elapsed() < Duration::from_secs(20),
        "took {:?}",
        started.elapsed()
    );
}

/// The server re-checks every domain on its own: the last verdict in `project show`, the
/// metric, and a log line when the verdict changes (here: DNS down, then up).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_rechecks_every_domain() {
    let mut nsd = Nsd::prepare();
    let relay = Relay::start(RelayOptions {
        upstreams: Some(upstreams()),
        env: vec![("SG_KEY".into(), "test-key".into())],
        extra_config: format!("{}recheck_secs = 1\n", nsd.config()),
        metrics: true,
        ..Default::default()
    });
    let (id, _) = relay.add_project("r", &["r.test"]);
    let key = keygen(&relay, "r.test", "ed25519");
    // No DNS server yet: the first checks conclude nothing.
    relay.wait_log("domain checked", 1, Duration::from_secs(30));
    let v = relay.cli_json(&["project", "show", &id]);
    assert_eq!(
        v["domain_verification"]["r.test"]["verdict"], "could_not_check",
        "{v:#}"
    );

    nsd.start(&[
        (
            "sendgrid.net".into(),
            zone("sendgrid.net", &[rec("@", "v=spf1 ip4:167.89.0.0/17 ~all")]),
        ),
        (
            "r.test".into(),
            zone(
                "r.test",
                &[
                    key["dns"]["record"].as_str().unwrap().to_string(),
                    rec("@", GOOD_SPF),
                    rec("_dmarc", "v=DMARC1; p=reject"),
                ],
            ),
        ),
    ]);
    let log = relay.wait_log("domain verdict changed", 1, Duration::from_secs(30));
    let line = log
        .lines()
        .find(|l| l.contains("domain verdict changed"))
        .unwrap_or_default();
    assert!(
        line.contains("could_not_check") && line.contains("\"to\":\"verified\""),
        "{line}"
    );
    let v = relay.cli_json(&["project", "show", &id]);
    assert_eq!(
        v["domain_verification"]["r.test"]["verdict"], "verified",
        "{v:#}"
    );

    let (_, _, body) = support::ops::http_get(relay.metrics.expect("metrics"), "/metrics").await;
    for (check, want) in [("all", 1.0), ("dkim", 1.0), ("spf", 1.0), ("dmarc", 1.0)] {
        let series = format!("smtp_relay_domain_verified{{domain=\"r.test\",check=\"{check}\"}}");
        assert_eq!(
            support::ops::sample(&body, &series),
            Some(want),
            "{series}\n{body}"
        );
    }
}

/// `dns.require_verified_domain`: MAIL FROM a domain the last re-check found failing is
/// refused with 550 5.7.26; a verified domain of the same project still sends.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failing_domain_is_refused_at_mail_from() {
    let mut nsd = Nsd::prepare();
    let relay = Relay::start(RelayOptions {
        upstreams: Some(upstreams()),
        env: vec![("SG_KEY".into(), "test-key".into())],
        extra_config: format!(
            "{}recheck_secs = 1\nrequire_verified_domain = true\n",
            nsd.config()
        ),
        ..Default::default()
    });
    let (id, token) = relay.add_project("g", &["ok.test", "bad.test"]);
    let key = keygen(&relay, "ok.test", "ed25519");
    keygen(&relay, "bad.test", "ed25519");
    let dmarc = rec("_dmarc", "v=DMARC1; p=reject");
    nsd.start(&[
        (
            "sendgrid.net".into(),
            zone("sendgrid.net", &[rec("@", "v=spf1 ip4:167.89.0.0/17 ~all")]),
        ),
        (
            "ok.test".into(),
            zone(
                "ok.test",
                &[
                    key["dns"]["record"].as_str().unwrap().to_string(),
                    rec("@", GOOD_SPF),
                    dmarc.clone(),
                ],
            ),
        ),
        // No DKIM record for its active key.
        (
            "bad.test".into(),
            zone("bad.test", &[rec("@", GOOD_SPF), dmarc]),
        ),
    ]);
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let v = relay.cli_json(&["project", "show", &id]);
        let d = &v["domain_verification"];
        if d["ok.test"]["verdict"] == "verified" && d["bad.test"]["verdict"] == "failing" {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "not re-checked: {d:#}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let mut c = support::client::Client::logged_in(relay.starttls, &relay.pki, &id, &token).await;
    let r = c.cmd("MAIL FROM:<app@bad.test>").await;
    assert_eq!(r.code, 550, "{}", r.text);
    assert!(
        r.text.contains("5.7.26") && r.text.contains("smtp-relay domain verify bad.test"),
        "{}",
        r.text
    );
    assert_eq!(c.cmd("RSET").await.code, 250);
    let r = c.cmd("MAIL FROM:<app@ok.test>").await;
    assert_eq!(r.code, 250, "{}", r.text);
}
