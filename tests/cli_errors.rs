//! Config mistakes, a missing certificate and an unwritable state directory each give one
//! line naming the problem and a non-zero exit — never a panic or a backtrace.

mod support;

use std::process::Command;

use support::relay::BIN;

fn run(config: &str, args: &[&str]) -> (bool, String) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("c.toml");
    std::fs::write(
        &path,
        config.replace("@DIR@", &dir.path().display().to_string()),
    )
    .unwrap();
    let out = Command::new(BIN)
        .arg("--config")
        .arg(&path)
        .args(args)
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stderr).to_string(),
    )
}

fn base() -> String {
    smtp_relay::config::DEFAULT_CONFIG
        .replace("./var", "@DIR@/state")
        .replace("certs/dev-", "@DIR@/certs/dev-")
        .replace("127.0.0.1:2587", "127.0.0.1:0")
        .replace("127.0.0.1:2465", "127.0.0.1:0")
}

fn assert_one_line(stderr: &str, needle: &str) {
    let lines: Vec<&str> = stderr.lines().filter(|l| l.contains("error")).collect();
    assert_eq!(lines.len(), 1, "exactly one error line expected:\n{stderr}");
    assert!(lines[0].contains(needle), "{needle:?} not in {stderr}");
    assert!(
        !stderr.contains("panicked") && !stderr.contains("backtrace"),
        "{stderr}"
    );
}

#[test]
fn config_errors_name_the_key_and_line() {
    let cfg = base().replace("max_recipients = 100", "max_recipients = 0");
    let (ok, err) = run(&cfg, &["config", "check"]);
    assert!(!ok);
    assert_one_line(&err, "server.max_recipients");
    assert!(err.contains("c.toml:"), "{err}");

    let cfg = base().replace("default_route = \"outbox\"", "default_route = \"nope\"");
    let (ok, err) = run(&cfg, &["serve"]);
    assert!(!ok);
    assert_one_line(&err, "delivery.default_route");

    let cfg = base().replace("workers = 4", "wrokers = 4");
    let (ok, err) = run(&cfg, &["config", "check"]);
    assert!(!ok);
    assert_one_line(&err, "wrokers");

    let (ok, out) = run(&base(), &["config", "check"]);
    assert!(ok, "{out}");
}

#[test]
fn missing_certificate_is_named() {
    let cfg = base().replace("generate_dev_cert = true", "generate_dev_cert = false");
    let (ok, err) = run(&cfg, &["serve"]);
    assert!(!ok);
    assert_one_line(&err, "dev-cert.pem does not exist");
}

#[test]
fn unwritable_state_directory_is_named() {
    let cfg = base().replace("@DIR@/state", "/proc/smtp-relay-state");
    let (ok, err) = run(&cfg, &["serve"]);
    assert!(!ok);
    assert_one_line(
        &err,
        "state directory /proc/smtp-relay-state is not writable",
    );
}
