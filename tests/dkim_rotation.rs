//! Key rotation against the running server: a new key is published while pending, takes
//! over on `activate`, the old one stays in `dkim dns` while retiring and leaves on `remove`;
//! and the same commands work on the database when no server runs.

mod support;

use serde_json::Value;
use support::dkim::{Dns, Setup, keygen, signature_headers, verify};

/// (selector, state) pairs, sorted by selector (keys made in the same second list in any order).
fn states(v: &Value) -> Vec<(String, String)> {
    let mut out: Vec<(String, String)> = v
        .as_array()
        .unwrap()
        .iter()
        .map(|k| {
            (
                k["selector"].as_str().unwrap().to_string(),
                k["state"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    out.sort();
    out
}

fn dns_output(s: &Setup) -> String {
    let out = s.relay.cli(&["dkim", "dns", "app.test"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

fn pair(s: &str) -> (String, String) {
    let (a, b) = s.split_once(' ').unwrap();
    (a.to_string(), b.to_string())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rotation_switches_selector_and_dns_lists_both_until_removal() {
    let mut s = Setup::start(&["app.test"]).await;
    let dns = Dns::default();
    let old = keygen(&s.relay, "app.test", "old", "rsa", true);
    dns.publish(&old);
    let m = s.deliver("noreply@app.test", "one", "first\r\n", 1).await;
    let r = verify(&dns, &m.data).await;
    assert!(
        r.len() == 1 && r[0].pass() && r[0].selector == "old",
        "{r:?}"
    );

    // The new key is generated pending: published, not yet used.
    let new = keygen(&s.relay, "app.test", "new", "rsa", false);
    dns.publish(&new);
    let m = s.deliver("noreply@app.test", "two", "second\r\n", 2).await;
    let r = verify(&dns, &m.data).await;
    assert!(r.len() == 1 && r[0].selector == "old", "{r:?}");

    let v = s.relay.cli_json(&["dkim", "activate", "app.test", "new"]);
    assert_eq!(v["state"], "active");
    assert_eq!(v["replaced"][0]["selector"], "old");
    let v = s.relay.cli_json(&["dkim", "retire", "app.test", "old"]);
    assert_eq!(v["state"], "retiring");
    let list = s.relay.cli_json(&["dkim", "list", "--domain", "app.test"]);
    assert_eq!(
        states(&list),
        [pair("new active"), pair("old retiring")],
        "{list:#}"
    );

    // The server's key cache saw the change: the next message uses the new selector only.
    let m = s.deliver("noreply@app.test", "three", "third\r\n", 3).await;
    assert_eq!(signature_headers(&m.data).len(), 1);
    let r = verify(&dns, &m.data).await;
    assert!(
        r.len() == 1 && r[0].pass() && r[0].selector == "new",
        "{r:?}"
    );

    // Both records are listed while the old key retires, with SPF and DMARC suggestions.
    let text = dns_output(&s);
    assert!(text.contains(&old) && text.contains(&new), "{text}");
    assert!(text.contains("retiring"), "{text}");
    assert!(text.contains("app.test. IN TXT \"v=spf1 "), "{text}");
    assert!(
        text.contains("_dmarc.app.test. IN TXT \"v=DMARC1; p=none"),
        "{text}"
    );
    // Every record carries a comment line above it.
    let lines: Vec<&str> = text.lines().collect();
    for (i, l) in lines.iter().enumerate() {
        if l.contains(" IN TXT ") {
            assert!(i > 0 && lines[i - 1].starts_with("; "), "{text}");
        }
    }

    let out = s.relay.cli(&["dkim", "remove", "app.test", "new"]);
    assert!(!out.status.success(), "an active key cannot be removed");
    s.relay.cli_json(&["dkim", "remove", "app.test", "old"]);
    assert!(!s.relay.state_dir().join("dkim/app.test/old.pem").exists());
    let text = dns_output(&s);
    assert!(!text.contains(&old) && text.contains(&new), "{text}");

    // With the server stopped the CLI works on the database directly.
    assert!(s.relay.terminate().success());
    let list = s.relay.cli_json(&["dkim", "list"]);
    assert_eq!(states(&list), [pair("new active")]);
    let v = s.relay.cli_json(&[
        "dkim",
        "keygen",
        "--domain",
        "app.test",
        "--algorithm",
        "ed25519",
    ]);
    assert_eq!(v["state"], "pending");
    assert!(v.get("private_key").is_none());
    assert!(v["selector"].as_str().unwrap().starts_with('e'));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn import_keeps_the_key_private_and_refuses_weak_rsa() {
    use std::os::unix::fs::PermissionsExt;
    let s = Setup::start(&["app.test"]).await;
    // A key made elsewhere (here: generated and shown once, as an admin moving hosts would).
    let v = s.relay.cli_json(&[
        "dkim",
        "keygen",
        "--domain",
        "other.test",
        "--selector",
        "x",
        "--algorithm",
        "ed25519",
        "--show-private",
    ]);
    let pem = v["private_key"].as_str().unwrap();
    let file = s.relay.state_dir().join("../import.pem");
    std::fs::write(&file, pem).unwrap();
    let v = s.relay.cli_json(&[
        "dkim",
        "import",
        "--domain",
        "app.test",
        "--selector",
        "imported",
        "--activate",
        file.to_str().unwrap(),
    ]);
    assert_eq!(v["state"], "active");
    assert_eq!(v["algorithm"], "ed25519");
    assert_eq!(v["owners"][0], s.id.as_str());
    let stored = s.relay.state_dir().join("dkim/app.test/imported.pem");
    let mode = std::fs::metadata(&stored).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600);
    let dir_mode = std::fs::metadata(stored.parent().unwrap())
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(dir_mode & 0o077, 0, "key directory open to others");

    let dns = Dns::default();
    dns.publish(v["dns"]["record"].as_str().unwrap());
    let m = s.deliver("noreply@app.test", "imported", "hi\r\n", 1).await;
    let r = verify(&dns, &m.data).await;
    assert!(r.len() == 1 && r[0].pass(), "{r:?}");

    // Weak keys and bad input are refused with a one-line reason.
    let out = s
        .relay
        .cli(&["dkim", "keygen", "--domain", "app.test", "--bits", "1024"]);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("2048"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    std::fs::write(
        &file,
        "-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n",
    )
    .unwrap();
    let out = s.relay.cli(&[
        "dkim",
        "import",
        "--domain",
        "app.test",
        "--selector",
        "bad",
        file.to_str().unwrap(),
    ]);
    assert!(!out.status.success());
    // The private key never reaches the server log.
    let log = s.relay.server_log();
    let body_line = pem.lines().nth(1).unwrap();
    assert!(!log.contains(body_line), "private key material in the log");
}
