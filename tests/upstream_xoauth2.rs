//! XOAUTH2 toward an upstream that checks bearer tokens against a local OAuth2 token endpoint:
//! client-credentials and refresh-token grants, the cached token refreshed before it expires,
//! and a failed refresh deferring (not failing) the mail with a clear log line.

mod support;

use std::time::Duration;

use support::certs::TestPki;
use support::oauth::TokenServer;
use support::relay::{Relay, RelayOptions, delivery_table, upstream_table};
use support::upstream::{TestUpstream, UpstreamOptions};

const FROM: &str = "noreply@app.test";
const MAILBOX: &str = "box@corp.example";
const CLIENT_SECRET: &str = "client-secret-value-1234";
const REFRESH_TOKEN: &str = "refresh-token-value-5678";

struct Setup {
    relay: Relay,
    up: TestUpstream,
    tokens: TokenServer,
    id: String,
    token: String,
    _tmp: tempfile::TempDir,
}

async fn setup(lifetime: u64, refresh_flow: bool, failing: bool) -> Setup {
    let tokens = TokenServer::start(lifetime).await;
    tokens.set_failing(failing);
    let pki = TestPki::generate();
    let up =
        TestUpstream::start(UpstreamOptions::implicit(&pki).with_xoauth2(MAILBOX, tokens.check()))
            .await;
    let tmp = tempfile::tempdir().unwrap();
    let files = pki.write_to(tmp.path());
    let secret = tmp.path().join("client-secret");
    std::fs::write(&secret, format!("{CLIENT_SECRET}\n")).unwrap();
    let refresh = tmp.path().join("refresh-token");
    std::fs::write(&refresh, REFRESH_TOKEN).unwrap();
    let grant = if refresh_flow {
        format!("refresh_token_file = \"{}\"\n", refresh.display())
    } else {
        "scope = \"https://outlook.office365.com/.default\"\n".to_string()
    };
    let extra = format!(
        "auth = \"xoauth2\"\nusername = \"{MAILBOX}\"\nmax_messages_per_connection = 1\n\n[upstream.m.oauth2]\ntoken_url = \"{}\"\nclient_id = \"relay-app\"\nclient_secret_file = \"{}\"\n{grant}",
        tokens.url(),
        secret.display()
    );
    let relay = Relay::start(RelayOptions {
        upstreams: Some(format!(
            "{}{}",
            delivery_table("m", &[]),
            upstream_table("m", up.port(), "implicit", &files.ca, &extra)
        )),
        retry_schedule_secs: vec![1],
        ..Default::default()
    });
    let (id, token) = relay.add_project("app", &["app.test"]);
    Setup {
        relay,
        up,
        tokens,
        id,
        token,
        _tmp: tmp,
    }
}

fn assert_no_secrets_in_log(s: &Setup) {
    let log = s.relay.server_log();
    for secret in [CLIENT_SECRET, REFRESH_TOKEN, "tok-1", "tok-2"] {
        assert!(
            !log.contains(secret),
            "{secret} leaked into the log:\n{log}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_credentials_token_is_used_and_refreshed_before_expiry() {
    // Tokens live 4 s; the relay refreshes after half of a short lifetime.
    let s = setup(4, false, false).await;
    let first = s
        .relay
        .submit(&s.id, &s.token, FROM, &["a@example.net"])
        .await;
    let v = s
        .relay
        .wait_state(&first, &["delivered"], Duration::from_secs(20));
    assert_eq!(v["attempts"], 1, "{v:#}");
    tokio::time::sleep(Duration::from_millis(2500)).await;
    // tok-1 is still valid for ~1.5 s, but inside the refresh margin: a new one is fetched.
    let second = s
        .relay
        .submit(&s.id, &s.token, FROM, &["b@example.net"])
        .await;
    let v = s
        .relay
        .wait_state(&second, &["delivered"], Duration::from_secs(20));
    assert_eq!(v["attempts"], 1, "{v:#}");

    assert_eq!(s.up.bearer_tokens(), vec!["tok-1", "tok-2"]);
    let got = s.up.wait_for(2, Duration::from_secs(5)).await;
    assert!(got.iter().all(|m| m.auth_user.as_deref() == Some(MAILBOX)));
    let reqs = s.tokens.requests();
    assert_eq!(reqs.len(), 2, "{reqs:?}");
    assert_eq!(reqs[0]["grant_type"], "client_credentials");
    assert_eq!(reqs[0]["client_id"], "relay-app");
    assert_eq!(reqs[0]["client_secret"], CLIENT_SECRET);
    assert_eq!(reqs[0]["scope"], "https://outlook.office365.com/.default");
    assert_no_secrets_in_log(&s);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cached_token_serves_many_messages() {
    let s = setup(3600, false, false).await;
    for i in 0..3 {
        let id = s
            .relay
            .submit(&s.id, &s.token, FROM, &[&format!("u{i}@example.net")])
            .await;
        s.relay
            .wait_state(&id, &["delivered"], Duration::from_secs(20));
    }
    assert_eq!(
        s.tokens.requests().len(),
        1,
        "one token for all three sessions"
    );
    assert_eq!(s.up.bearer_tokens(), vec!["tok-1"; 3]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refresh_failure_defers_with_a_clear_log_line() {
    let s = setup(3600, true, true).await;
    let id = s
        .relay
        .submit(&s.id, &s.token, FROM, &["a@example.net"])
        .await;
    let v = s
        .relay
        .wait_state(&id, &["deferred"], Duration::from_secs(20));
    let reply = v["last_reply"].as_str().unwrap();
    assert!(
        reply.contains("OAuth2 token request failed") && reply.contains("invalid_grant"),
        "{v:#}"
    );
    assert_eq!(s.up.connections(), 0, "no SMTP session without a token");
    let log = s.relay.server_log();
    assert!(
        log.lines()
            .any(|l| l.contains("OAuth2 token refresh failed") && l.contains("invalid_grant")),
        "{log}"
    );
    let reqs = s.tokens.requests();
    assert_eq!(reqs[0]["grant_type"], "refresh_token");
    assert_eq!(reqs[0]["refresh_token"], REFRESH_TOKEN);

    // The endpoint recovers: the next retry gets a token and delivers.
    s.tokens.set_failing(false);
    let v = s
        .relay
        .wait_state(&id, &["delivered"], Duration::from_secs(20));
    assert!(v["attempts"].as_u64().unwrap() >= 2, "{v:#}");
    assert_eq!(
        s.up.bearer_tokens().last().map(String::as_str),
        Some("tok-1")
    );
    assert_no_secrets_in_log(&s);
}
