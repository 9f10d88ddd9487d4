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

fn with_upstream(table: &str) -> String {
    base()
        .replace("default_route = \"outbox\"", "default_route = \"p\"")
        .replace(
            "[upstream.outbox]",
            &format!("{table}\n\n[upstream.outbox]"),
        )
}

#[test]
fn a_missing_secret_file_names_its_key() {
    let cfg = with_upstream(
        "[upstream.p]\ntype = \"smtp\"\nprovider = \"sendgrid\"\npassword_file = \"/nonexistent/sendgrid.key\"",
    );
    for args in [&["config", "check"][..], &["serve"][..]] {
        let (ok, err) = run(&cfg, args);
        assert!(!ok, "{args:?}");
        assert_one_line(&err, "key `upstream.p.password_file`");
        assert!(err.contains("/nonexistent/sendgrid.key"), "{err}");
    }
    // Outside the service (systemd credentials are not there), the rest can still be checked.
    let (ok, err) = run(&cfg, &["config", "check", "--skip-secrets"]);
    assert!(ok, "{err}");

    let cfg = with_upstream(
        "[upstream.p]\ntype = \"smtp\"\nprovider = \"office365\"\nusername = \"box@corp.example\"\n[upstream.p.oauth2]\ntenant = \"contoso\"\nclient_id = \"id\"\nclient_secret_env = \"SMTP_RELAY_TEST_UNSET_VAR\"",
    );
    let (ok, err) = run(&cfg, &["config", "check"]);
    assert!(!ok);
    assert_one_line(&err, "key `upstream.p.oauth2.client_secret_env`");
}

#[test]
fn config_check_never_prints_secrets() {
    let dir = tempfile::tempdir().unwrap();
    let secret_file = dir.path().join("key");
    std::fs::write(&secret_file, "file-secret-0123456789\n").unwrap();
    let cfg = with_upstream(&format!(
        "[upstream.p]\ntype = \"smtp\"\nprovider = \"sendgrid\"\npassword_env = \"SMTP_RELAY_TEST_SECRET\"\n\n[upstream.q]\ntype = \"smtp\"\nprovider = \"mailgun\"\nusername = \"postmaster@mg.example\"\npassword_file = \"{}\"",
        secret_file.display()
    ));
    let path = dir.path().join("c.toml");
    std::fs::write(
        &path,
        cfg.replace("@DIR@", &dir.path().display().to_string()),
    )
    .unwrap();
    for json in [false, true] {
        let mut cmd = Command::new(BIN);
        cmd.arg("--config")
            .arg(&path)
            .args(["config", "check"])
            .env("SMTP_RELAY_TEST_SECRET", "env-secret-9876543210");
        if json {
            cmd.arg("--json");
        }
        let out = cmd.output().unwrap();
        let all = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(out.status.success(), "{all}");
        assert!(!all.contains("env-secret-9876543210"), "{all}");
        assert!(!all.contains("file-secret-0123456789"), "{all}");
        assert!(
            all.contains("smtp.sendgrid.net"),
            "presets are shown: {all}"
        );
    }
}

#[test]
fn presets_resolve_and_explicit_fields_override() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = with_upstream(
        "[upstream.p]\ntype = \"smtp\"\nprovider = \"office365\"\nport = 2587\nauth = \"login\"\nusername = \"box@corp.example\"\npassword_env = \"HOME\"\nrewrite_from = true",
    );
    let path = dir.path().join("c.toml");
    std::fs::write(
        &path,
        cfg.replace("@DIR@", &dir.path().display().to_string()),
    )
    .unwrap();
    let out = Command::new(BIN)
        .arg("--config")
        .arg(&path)
        .args(["config", "check", "--json"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let p = &v["upstream"]["p"];
    assert_eq!(p["host"], "smtp.office365.com");
    assert_eq!(p["port"], 2587, "explicit port wins");
    assert_eq!(p["tls"], "starttls");
    assert_eq!(
        p["auth"], "login",
        "explicit auth wins over the preset's xoauth2"
    );
    assert_eq!(p["max_rate"], "30/min");
    assert_eq!(p["max_connections"], 3);

    let (ok, err) = run(
        &with_upstream(
            "[upstream.p]\ntype = \"smtp\"\nprovider = \"gmail\"\nusername = \"a@b.example\"\nrewrite_from = true\nmax_rate = \"lots\"",
        ),
        &["config", "check"],
    );
    assert!(!ok);
    assert_one_line(&err, "max_rate");
}

#[test]
fn an_os_error_is_printed_once_and_a_missing_table_is_named() {
    let out = Command::new(BIN)
        .args([
            "--config",
            "/nonexistent/smtp-relay.toml",
            "project",
            "list",
        ])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr).to_string();
    assert!(!out.status.success());
    assert_one_line(&err, "cannot read config file /nonexistent/smtp-relay.toml");
    assert_eq!(err.matches("os error 2").count(), 1, "{err}");

    let start = base().find("[server]").unwrap();
    let end = base().find("[timeouts]").unwrap();
    let cfg = format!("{}{}", &base()[..start], &base()[end..]);
    let (ok, err) = run(&cfg, &["config", "check"]);
    assert!(!ok);
    assert_one_line(&err, "key `server`: the [server] table is missing");
    assert!(
        !err.contains("listener.server") && !err.contains("timeouts.server"),
        "{err}"
    );
}

/// Every command and subcommand has a one-line help (`smtp-relay help <command>`).
#[test]
fn every_subcommand_has_an_about_line() {
    use clap::CommandFactory;
    fn walk(cmd: &clap::Command, path: &str, missing: &mut Vec<String>) {
        for sub in cmd.get_subcommands() {
            let name = format!("{path} {}", sub.get_name());
            if sub
                .get_about()
                .is_none_or(|a| a.to_string().trim().is_empty())
            {
                missing.push(name.clone());
            }
            walk(sub, &name, missing);
        }
    }
    let mut missing = Vec::new();
    walk(&smtp_relay::cli::Cli::command(), "smtp-relay", &mut missing);
    assert!(missing.is_empty(), "no about line: {missing:?}");
    // And `help` shows it for a nested one.
    let out = Command::new(BIN)
        .args(["help", "project", "domain", "remove"])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && text.lines().next().is_some_and(|l| !l.starts_with("Usage")),
        "{text}"
    );
}
