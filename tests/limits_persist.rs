//! Quotas of an hour or more survive a restart, even `kill -9` right after the `250`: their
//! counters are flushed with the message itself. Short windows start afresh.

mod support;

use std::time::Duration;

use support::client::{Client, plain_message};
use support::relay::{Relay, RelayOptions};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_daily_quota_survives_kill_9() {
    let mut relay = Relay::start(RelayOptions::default());
    let (id, token) = relay.add_project("app", &["app.test"]);
    relay.cli_json(&[
        "project",
        "limits",
        &id,
        "--per-day",
        "2",
        "--per-minute",
        "100",
    ]);

    let mut c = Client::logged_in(relay.starttls, &relay.pki, &id, &token).await;
    let msg = plain_message("noreply@app.test", "user@example.net", "code", "4711\r\n");
    for _ in 0..2 {
        let r = c
            .send("noreply@app.test", &["user@example.net"], &msg)
            .await;
        assert_eq!(r.code, 250, "{r:?}");
    }
    let r = c.cmd("MAIL FROM:<noreply@app.test>").await;
    assert_eq!(r.code, 451, "{r:?}");
    drop(c);

    relay.kill9();
    relay.spawn();

    let mut c = Client::logged_in(relay.starttls, &relay.pki, &id, &token).await;
    let r = c.cmd("MAIL FROM:<noreply@app.test>").await;
    assert_eq!(
        r.code, 451,
        "the daily quota was reset by the restart: {r:?}"
    );
    let n = r.retry_in_secs().unwrap_or_else(|| panic!("{r:?}"));
    // One message every 12 h; the first of the two was spent moments ago.
    assert!((43_000..=43_200).contains(&n), "retry in {n} s");

    let show = relay.cli_json(&["project", "show", &id]);
    let windows = show["limits"]["windows"].as_array().unwrap();
    let day = windows.iter().find(|w| w["window"] == "per_day").unwrap();
    assert_eq!(day["used"], 2, "{show:#}");
    assert_eq!(day["remaining"], 0);
    assert!(
        day["refills_in_secs"].as_f64().unwrap() > 86_000.0,
        "{day:#}"
    );
    // The minute window is not kept across restarts (and was never the limit here).
    let minute = windows
        .iter()
        .find(|w| w["window"] == "per_minute")
        .unwrap();
    assert_eq!(minute["used"], 0, "{minute:#}");

    // The override itself survived too, and a graceful restart keeps the counters as well.
    assert!(relay.terminate().success());
    relay.spawn();
    let show = relay.cli_json(&["project", "show", &id]);
    assert_eq!(show["limits"]["override"]["per_day"], 2);
    let mut c = Client::logged_in(relay.starttls, &relay.pki, &id, &token).await;
    let r = c.cmd("MAIL FROM:<noreply@app.test>").await;
    assert_eq!(r.code, 451, "{r:?}");
    assert!(c.cmd("QUIT").await.code == 221);
    assert!(c.closed(Duration::from_secs(5)).await);
}
