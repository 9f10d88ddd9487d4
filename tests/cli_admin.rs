//! The CLI against a running relay and without one: a refusal by the server is printed as
//! the server's refusal (not "cannot reach the running server"), mistakes such as removing a
//! project's last domain or a too-short max age are errors, and the CLI never starts a second
//! database by itself (`--init`).

mod support;

use std::process::{Command, Output};

use support::relay::{BIN, Relay, RelayOptions};

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).to_string()
}

/// Fails, with one error line that contains `needle` and no transport complaint.
fn refused(out: &Output, needle: &str) {
    let err = stderr(out);
    assert!(!out.status.success(), "accepted: {err}");
    let lines: Vec<&str> = err.lines().collect();
    assert_eq!(lines.len(), 1, "{err}");
    assert!(lines[0].starts_with("smtp-relay: error: "), "{err}");
    assert!(lines[0].contains(needle), "{needle:?} not in {err}");
    assert!(!err.contains("cannot reach"), "{err}");
}

#[test]
fn refusals_of_a_running_server_are_named_as_such() {
    let relay = Relay::start(RelayOptions::default());
    let (id, _) = relay.add_project("app", &["app.test"]);

    refused(
        &relay.cli(&["project", "show", "prj_nope"]),
        "no project prj_nope",
    );
    refused(
        &relay.cli(&["log", "--project", "prj_nope"]),
        "no project prj_nope",
    );
    refused(
        &relay.cli(&["project", "domain", "remove", &id, "other.test"]),
        "has no domain other.test",
    );
    refused(
        &relay.cli(&["project", "domain", "remove", &id, "app.test"]),
        "last domain",
    );
    relay.cli_json(&["project", "domain", "add", &id, "new.test"]);
    let v = relay.cli_json(&["project", "domain", "remove", &id, "APP.test"]);
    assert_eq!(v["domains"], serde_json::json!(["new.test"]));

    // A max age that could expire a message before its first attempt.
    refused(
        &relay.cli(&["project", "max-age", &id, "0"]),
        "max age 0 s is too short: at least 10 s",
    );
    refused(
        &relay.cli(&["project", "max-age", &id, "9"]),
        "at least 10 s",
    );
    refused(
        &relay.cli(&[
            "project",
            "add",
            "otp",
            "--domain",
            "otp.test",
            "--max-age-secs",
            "0",
        ]),
        "at least 10 s",
    );
    assert_eq!(
        relay.cli_json(&["project", "max-age", &id, "10"])["max_age_secs"],
        10
    );
    assert_eq!(
        relay
            .cli_json(&["project", "list"])
            .as_array()
            .unwrap()
            .len(),
        1
    );

    // The ready line: ports are numbers (JSON log, as under systemd).
    let log = relay.wait_log("smtp-relay ready", 1, std::time::Duration::from_secs(5));
    let ready = log
        .lines()
        .find(|l| l.contains("smtp-relay ready"))
        .unwrap();
    let v: serde_json::Value = serde_json::from_str(ready).expect(ready);
    assert_eq!(v["starttls"], relay.starttls.port(), "{ready}");
    assert_eq!(v["implicit_tls"], relay.implicit.port(), "{ready}");
}

#[test]
fn the_cli_never_starts_a_second_database_by_itself() {
    let relay = Relay::start(RelayOptions::default());
    let (id, _) = relay.add_project("app", &["app.test"]);
    // Output of `project add` names the state directory it wrote to.
    let out = relay.cli(&["project", "add", "b", "--domain", "b.test"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    let shown = relay.state_dir().display().to_string();
    assert!(
        text.lines()
            .any(|l| l.starts_with("state dir") && l.contains(&shown)),
        "{text}"
    );

    // The same config with a relative state_dir, run from another directory: that is a
    // different, empty state directory.
    let elsewhere = tempfile::tempdir().unwrap();
    let config = std::fs::read_to_string(&relay.config_path)
        .unwrap()
        .replace(&format!("state_dir = \"{shown}\""), "state_dir = \"./var\"");
    let path = elsewhere.path().join("relative.toml");
    std::fs::write(&path, config).unwrap();
    let cli = |args: &[&str]| -> Output {
        Command::new(BIN)
            .current_dir(elsewhere.path())
            .arg("--config")
            .arg(&path)
            .args(args)
            .output()
            .unwrap()
    };
    let var = elsewhere.path().join("var");
    // Reading never creates anything.
    for args in [
        &["project", "list"][..],
        &["project", "show", &id],
        &["log"],
        &["queue", "list"],
        &["dkim", "list"],
        &["--init", "project", "list"],
    ] {
        let out = cli(args);
        let err = stderr(&out);
        assert!(!out.status.success(), "{args:?}: {err}");
        assert!(
            err.contains("no database in") && err.contains("/var"),
            "{err}"
        );
        assert!(err.contains("relative.toml"), "{err}");
        assert!(!var.exists(), "{args:?} created {}", var.display());
    }
    // Writing needs --init, and says where.
    let out = cli(&["project", "add", "x", "--domain", "x.test"]);
    let err = stderr(&out);
    assert!(!out.status.success(), "{err}");
    assert!(err.contains("pass --init"), "{err}");
    assert!(!var.exists());
    let out = cli(&[
        "--init", "project", "add", "x", "--domain", "x.test", "--json",
    ]);
    let err = stderr(&out);
    assert!(out.status.success(), "{err}");
    assert!(err.contains("creating a new state directory"), "{err}");
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        v["state_dir"].as_str().unwrap(),
        var.display().to_string(),
        "{v:#}"
    );
    assert!(var.join("db").exists());
    // Now it exists: no flag needed any more.
    let out = cli(&["project", "list", "--json"]);
    assert!(out.status.success(), "{}", stderr(&out));
    // The real server never saw that project.
    assert_eq!(
        relay
            .cli_json(&["project", "list"])
            .as_array()
            .unwrap()
            .len(),
        2
    );
}
