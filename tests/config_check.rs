//! `smtp-relay config check`: every broken config is named by file, line and key with what
//! is wrong (non-zero exit); a valid one is printed with its defaults filled in.

mod support;

use std::process::Command;

use support::relay::BIN;

const BASE: &str = r#"[server]
hostname = "relay.example.com"
state_dir = "/var/lib/smtp-relay"

[tls]
cert_file = "/etc/smtp-relay/tls/cert.pem"
key_file = "/etc/smtp-relay/tls/key.pem"

[[listener]]
address = "0.0.0.0:587"
mode = "starttls"

[queue]
workers = 4

[delivery]
default_route = "sendgrid"

[upstream.sendgrid]
type = "smtp"
host = "smtp.sendgrid.net"
port = 587
auth = "plain"
username = "apikey"
password_file = "/nonexistent/sendgrid.key"
"#;

/// Runs `config check <file>` on `text`; returns (success, stdout, stderr).
fn check(text: &str, extra: &[&str]) -> (bool, String, String) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("relay.toml");
    std::fs::write(&path, text).unwrap();
    let out = Command::new(BIN)
        .args(["config", "check"])
        .arg(&path)
        .args(extra)
        .env_remove("SMTP_RELAY_LOG")
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).to_string(),
        String::from_utf8_lossy(&out.stderr).to_string(),
    )
}

fn line_of(text: &str, needle: &str) -> usize {
    text.lines().position(|l| l.contains(needle)).unwrap() + 1
}

#[test]
fn each_broken_config_names_file_line_key_and_problem() {
    // (replace this, with this, the key named, words of the message, line of the mistake)
    let cases: &[(&str, &str, &str, &str)] = &[
        (
            "workers = 4",
            "wrokers = 4",
            "queue.wrokers",
            "unknown field",
        ),
        (
            "port = 587",
            "port = \"587\"",
            "upstream.sendgrid.port",
            "invalid type",
        ),
        (
            "port = 587",
            "port = 70000",
            "upstream.sendgrid.port",
            "u16",
        ),
        (
            "mode = \"starttls\"",
            "mode = \"tls\"",
            "listener.mode",
            "unknown variant",
        ),
        (
            "address = \"0.0.0.0:587\"",
            "address = \"0.0.0.0\"",
            "listener.address",
            "address",
        ),
        ("workers = 4", "workers = = 4", "queue.workers", "expected"),
        ("workers = 4", "workers = 0", "queue.workers", "at least 1"),
        (
            "mode = \"starttls\"",
            "mode = \"plain\"",
            "listener.mode",
            "loopback",
        ),
        (
            "default_route = \"sendgrid\"",
            "default_route = \"ses\"",
            "delivery.default_route",
            "no [upstream.ses]",
        ),
        (
            "host = \"smtp.sendgrid.net\"",
            "host = \"\"",
            "upstream.sendgrid.host",
            "needs `host`",
        ),
        (
            "username = \"apikey\"",
            "",
            "upstream.sendgrid.username",
            "needed when auth is set",
        ),
        (
            "[queue]",
            "[log]\nlevel = \"info,=x=\"\n\n[queue]",
            "log.level",
            "invalid log level",
        ),
        (
            "[queue]",
            "[metrics]\naddress = \"0.0.0.0:9187\"\n\n[queue]",
            "metrics.address",
            "loopback",
        ),
    ];
    for (from, to, key, words) in cases {
        let text = BASE.replacen(from, to, 1);
        assert_ne!(text, BASE);
        let (ok, out, err) = check(&text, &[]);
        assert!(!ok, "{key}: accepted:\n{out}");
        let lines: Vec<&str> = err.lines().collect();
        assert_eq!(lines.len(), 1, "one line for {key}:\n{err}");
        let line = lines[0];
        assert!(line.starts_with("smtp-relay: error: "), "{line}");
        assert!(line.contains(&format!("key `{key}`")), "{key}: {line}");
        assert!(line.contains(words), "{words:?} not in: {line}");
        // The line of the mistake, when the mistake is on a line of its own.
        let changed = to.lines().find(|l| !l.is_empty() && !l.starts_with('['));
        if let Some(changed) = changed {
            let n = line_of(&text, changed);
            assert!(
                line.contains(&format!("relay.toml:{n}:")),
                "line {n} not named: {line}"
            );
        }
    }
    // A missing required key points at its table.
    let text = BASE.replacen("hostname = \"relay.example.com\"\n", "", 1);
    let (ok, _, err) = check(&text, &[]);
    assert!(!ok);
    assert!(
        err.contains("relay.toml:1:") && err.contains("key `server.hostname`: missing field"),
        "{err}"
    );
}

#[test]
fn valid_config_prints_defaults_and_warns_about_missing_files() {
    // Secret files are read unless told not to (outside the service they may not exist).
    let (ok, _, err) = check(BASE, &[]);
    assert!(!ok);
    assert!(
        err.contains("key `upstream.sendgrid.password_file`")
            && err.contains("/nonexistent/sendgrid.key"),
        "{err}"
    );
    let (ok, out, err) = check(BASE, &["--skip-secrets"]);
    assert!(ok, "{err}");
    assert!(out.starts_with("# configuration is valid"), "{out}");
    // Defaults filled in, in the file's order.
    for expected in [
        "max_connections = 1000",
        "tls_handshake_secs = 10",
        "retry_schedule_secs = [60, 120, 300, 600, 1800, 3600]",
        "connect_timeout_secs = 30",
    ] {
        assert!(out.contains(expected), "{expected} missing:\n{out}");
    }
    assert!(out.find("[server]") < out.find("[tls]"), "{out}");
    // The certificate is checked but only warned about (under systemd they may exist only inside
    // the service).
    assert!(
        err.contains("warning: [tls]") && err.contains("cert.pem"),
        "{err}"
    );

    let (ok, out, _) = check(BASE, &["--skip-secrets", "--quiet"]);
    assert!(ok && out.is_empty(), "{out}");
    let (ok, out, _) = check(BASE, &["--skip-secrets", "--json"]);
    assert!(ok);
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["upstream"]["sendgrid"]["port"], 587);
    assert_eq!(v["server"]["max_recipients"], 100);
}

/// A config without `[limits]` and `[throttle]` still protects: the built-in defaults (those
/// of the example config) apply and are printed; 0 turns one off explicitly.
#[test]
fn missing_sections_get_the_protective_defaults_and_are_printed() {
    assert!(!BASE.contains("[limits]") && !BASE.contains("[throttle]"));
    let (ok, out, err) = check(BASE, &["--skip-secrets", "--json"]);
    assert!(ok, "{err}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    let limits = &v["limits"];
    assert_eq!(limits["per_second"], 100, "{limits:#}");
    assert_eq!(limits["burst"], 200);
    assert_eq!(limits["max_connections"], 50);
    assert_eq!(limits["per_day"], 0, "unset windows are shown as off");
    assert_eq!(limits["mode"], "reject");
    let throttle = &v["throttle"];
    assert_eq!(throttle["max_connections_per_ip"], 100, "{throttle:#}");
    assert_eq!(throttle["connections_per_ip_per_minute"], 600);
    assert_eq!(throttle["auth_failures_per_user"], 10);
    assert_eq!(throttle["auth_failures_per_ip"], 100);
    // Every section, with its effective values.
    assert_eq!(v["log"]["level"], "info");
    let up = &v["upstream"]["sendgrid"];
    assert_eq!(up["max_connections"], 10, "{up:#}");
    assert_eq!(up["idle_timeout_secs"], 30);
    assert_eq!(up["throttle_backoff_secs"], 60);

    let text = format!(
        "{BASE}\n[limits]\nper_second = 0\nmax_connections = 0\n\n[throttle]\nmax_connections_per_ip = 0\n"
    );
    let (ok, out, err) = check(&text, &["--skip-secrets", "--json"]);
    assert!(ok, "{err}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["limits"]["per_second"], 0);
    assert_eq!(v["limits"]["max_connections"], 0);
    assert_eq!(v["throttle"]["max_connections_per_ip"], 0);
    assert_eq!(v["throttle"]["connections_per_ip_per_minute"], 600);
}
