//! contrib/: the Grafana dashboard and the Prometheus alert rules only name metrics a running
//! relay really exposes. Real mail goes through a real upstream (one recipient refused, one
//! deferred) so that the labelled series exist, then every `smtp_relay_*` name used in the
//! dashboard's queries and the rules' expressions is looked up in the relay's `/metrics`.
//! The rules file is parsed as YAML by PyYAML (Debian's python3-yaml) and checked for the
//! alerts the issue asks for.

mod support;

use std::collections::{BTreeSet, HashMap};
use std::path::Path;
use std::time::Duration;

use serde_json::Value;
use support::certs::TestPki;
use support::client::Client;
use support::ops::http_get;
use support::relay::{Relay, RelayOptions};
use support::upstream::{Script, TestUpstream, UpstreamOptions};
use support::webhook_receiver::Receiver;

const WAIT: Duration = Duration::from_secs(20);

fn contrib(name: &str) -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("contrib")
        .join(name)
}

/// Every `smtp_relay_*` identifier in a PromQL expression.
fn metric_names(expr: &str, into: &mut BTreeSet<String>) {
    let bytes = expr.as_bytes();
    let mut i = 0;
    while let Some(pos) = expr[i..].find("smtp_relay_") {
        let start = i + pos;
        let boundary = start == 0 || {
            let c = bytes[start - 1];
            !(c.is_ascii_alphanumeric() || c == b'_')
        };
        let mut end = start;
        while end < bytes.len() && (bytes[end].is_ascii_alphanumeric() || bytes[end] == b'_') {
            end += 1;
        }
        if boundary {
            into.insert(expr[start..end].to_string());
        }
        i = end;
    }
}

/// The rules file as JSON, parsed by PyYAML.
fn rules_as_json(path: &Path) -> Value {
    let out = std::process::Command::new("python3")
        .args([
            "-c",
            "import json, sys\n\
             try:\n    import yaml\n\
             except ImportError:\n    sys.exit('PyYAML missing: apt-get install python3-yaml')\n\
             print(json.dumps(yaml.safe_load(open(sys.argv[1]))))",
        ])
        .arg(path)
        .output()
        .expect("python3 (Debian package python3) runs");
    assert!(
        out.status.success(),
        "{} is not valid YAML (or python3-yaml is missing): {}",
        path.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("PyYAML printed JSON")
}

/// Sample names in the exposition, and each declared family's type.
fn exposition(body: &str) -> (BTreeSet<String>, HashMap<String, String>) {
    let mut samples = BTreeSet::new();
    let mut types = HashMap::new();
    for line in body.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let mut parts = rest.split_whitespace();
            if let (Some(name), Some(kind)) = (parts.next(), parts.next()) {
                types.insert(name.to_string(), kind.to_string());
            }
        } else if !line.starts_with('#') && !line.is_empty() {
            let end = line.find(['{', ' ']).unwrap_or(line.len());
            samples.insert(line[..end].to_string());
        }
    }
    (samples, types)
}

/// A name exists when a sample has it, or when its family is declared with the type the
/// suffix implies (a labelled family with no series yet, e.g. expiries on a fresh relay).
fn exists(name: &str, samples: &BTreeSet<String>, types: &HashMap<String, String>) -> bool {
    if samples.contains(name) {
        return true;
    }
    let declared = |base: &str, kind: &str| types.get(base).is_some_and(|t| t == kind);
    if let Some(base) = name.strip_suffix("_total") {
        return declared(base, "counter");
    }
    for suffix in ["_bucket", "_sum", "_count"] {
        if let Some(base) = name.strip_suffix(suffix) {
            return declared(base, "histogram");
        }
    }
    declared(name, "gauge")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dashboard_and_alert_rules_use_only_metrics_the_relay_exposes() {
    // What the files use.
    let dashboard: Value = serde_json::from_str(
        &std::fs::read_to_string(contrib("grafana-dashboard.json")).expect("dashboard"),
    )
    .expect("the dashboard is JSON");
    let rules = rules_as_json(&contrib("prometheus-alerts.yml"));

    let mut dash_names = BTreeSet::new();
    let mut ids = BTreeSet::new();
    let panels = dashboard["panels"].as_array().expect("panels");
    for p in panels {
        assert!(
            ids.insert(p["id"].as_u64().expect("panel id")),
            "duplicate id {p}"
        );
        if p["type"] == "row" {
            continue;
        }
        let targets = p["targets"].as_array().expect("targets");
        assert!(!targets.is_empty(), "panel without a query: {p}");
        for t in targets {
            let expr = t["expr"].as_str().expect("expr");
            assert!(expr.contains("smtp_relay_"), "{expr}");
            assert_eq!(t["datasource"]["uid"], "${DS_PROMETHEUS}", "{t}");
            metric_names(expr, &mut dash_names);
        }
    }
    for v in dashboard["templating"]["list"]
        .as_array()
        .expect("templating")
    {
        metric_names(v["definition"].as_str().unwrap_or(""), &mut dash_names);
    }
    assert_eq!(dashboard["__inputs"][0]["name"], "DS_PROMETHEUS");

    let mut rule_names = BTreeSet::new();
    let mut alerts = BTreeSet::new();
    for group in rules["groups"].as_array().expect("groups") {
        for r in group["rules"].as_array().expect("rules") {
            let alert = r["alert"].as_str().expect("alert name");
            assert!(alerts.insert(alert.to_string()), "duplicate alert {alert}");
            assert!(r["labels"]["severity"].is_string(), "{alert}: no severity");
            assert!(
                r["annotations"]["summary"].is_string(),
                "{alert}: no summary"
            );
            let expr = r["expr"].as_str().expect("expr");
            metric_names(expr, &mut rule_names);
        }
    }
    // The list: queue growing, oldest message too old, upstream failing, delivery
    // failures rising, certificate expiring, store failed.
    for a in [
        "SmtpRelayQueueGrowing",
        "SmtpRelayOldestMessageTooOld",
        "SmtpRelayUpstreamFailing",
        "SmtpRelayDeliveryFailuresRising",
        "SmtpRelayCertificateExpiring",
        "SmtpRelayStoreFailed",
    ] {
        assert!(alerts.contains(a), "alert {a} missing: {alerts:?}");
    }

    // A relay that has done some work: relayed (with a webhook for it), refused, deferred
    // until expired (10 s, the shortest maximum age), a refused sender, a rate-limit hit.
    let pki = TestPki::generate();
    let script = Script::default()
        .with_rcpt("gone@example.net", "550 5.1.1 No such user")
        .with_rcpt("busy@example.net", "450 4.2.1 Mailbox busy");
    let up = TestUpstream::start(UpstreamOptions::implicit(&pki).with_script(script)).await;
    let receiver = Receiver::start(0).await;
    let relay = Relay::start_with_upstream(
        up.port(),
        "implicit",
        &pki,
        RelayOptions {
            retry_schedule_secs: vec![1],
            max_age_secs: 10,
            metrics: true,
            extra_config: "[limits]\nper_minute = 3\n\n[webhooks]\nallow_loopback = true\n".into(),
            ..Default::default()
        },
    );
    let (id, token) = relay.add_project("app", &["app.test"]);
    let url = receiver.url();
    relay.cli_json(&["webhook", "add", &id, "--url", &url, "--events", "relayed"]);
    let mut c = Client::logged_in(relay.starttls, &relay.pki, &id, &token).await;
    let ok = c.submit("noreply@app.test", "ok@example.net").await;
    let gone = c.submit("noreply@app.test", "gone@example.net").await;
    let busy = c.submit("noreply@app.test", "busy@example.net").await;
    assert_eq!(c.cmd("MAIL FROM:<someone@other.test>").await.code, 553);
    assert_eq!(c.cmd("MAIL FROM:<noreply@app.test>").await.code, 451);
    relay.wait_state(&ok, &["delivered"], WAIT);
    relay.wait_state(&gone, &["failed"], WAIT);
    relay.wait_state(&busy, &["expired"], WAIT);
    receiver.wait_event("message.relayed", &ok, WAIT).await;

    let (status, _, body) = http_get(relay.metrics.expect("metrics"), "/metrics").await;
    assert_eq!(status, 200, "{body}");
    let (samples, types) = exposition(&body);

    let missing: Vec<String> = dash_names
        .iter()
        .map(|n| ("dashboard", n))
        .chain(rule_names.iter().map(|n| ("alert rules", n)))
        .filter(|(_, n)| !exists(n, &samples, &types))
        .map(|(file, n)| format!("{n} ({file})"))
        .collect();
    assert!(
        missing.is_empty(),
        "names not in /metrics: {missing:?}\n{body}"
    );
    // The ones the health panels and the main alerts stand on have real samples now.
    for n in [
        "smtp_relay_tls_cert_expiry_seconds",
        "smtp_relay_store_failed",
        "smtp_relay_store_free_space_bytes",
        "smtp_relay_queue_depth",
        "smtp_relay_queue_oldest_message_age_seconds",
        "smtp_relay_upstream_last_success_timestamp_seconds",
        "smtp_relay_upstream_last_error_timestamp_seconds",
        "smtp_relay_messages_accepted_total",
        "smtp_relay_messages_delivered_total",
        "smtp_relay_messages_failed_total",
        "smtp_relay_messages_expired_total",
        "smtp_relay_rate_limit_hits_total",
        "smtp_relay_webhook_deliveries_total",
        "smtp_relay_delivery_latency_seconds_bucket",
    ] {
        assert!(samples.contains(n), "{n} has no sample in\n{body}");
        assert!(
            dash_names.contains(n) || rule_names.contains(n),
            "{n} is used by neither file"
        );
    }
}
