//! Cluster mode end to end: three relay nodes on 127.0.0.2/.3/.4 sharing one real Redis,
//! behind a real HAProxy (`mode tcp`, round robin, `send-proxy-v2`) on 127.0.0.1; clients
//! connect from 127.0.0.9 so the address the nodes see through the PROXY header is told apart
//! from HAProxy's own.

mod support;

use std::collections::HashSet;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use support::certs::TestPki;
use support::client::{Client, plain_message};
use support::cluster::{Haproxy, Partition, RedisServer};
use support::relay::{Relay, RelayOptions};
use support::upstream::{TestUpstream, UpstreamOptions};
use tokio::sync::Mutex;

const CLIENT_IP: &str = "127.0.0.9";
const NODE_IPS: [&str; 3] = ["127.0.0.2", "127.0.0.3", "127.0.0.4"];
const HOSTS: [&str; 3] = ["node1.test", "node2.test", "node3.test"];

struct Cluster {
    _secret: tempfile::TempDir,
    redis: RedisServer,
    upstream: TestUpstream,
    nodes: Vec<Relay>,
    haproxy: Haproxy,
    pki: TestPki,
}

impl Cluster {
    async fn start() -> Cluster {
        let redis = RedisServer::start();
        let upstream = TestUpstream::start(UpstreamOptions::plain()).await;
        let pki = TestPki::generate();
        // Token digests are HMACs with the server secret: every node has the same one.
        let secret_dir = tempfile::tempdir().expect("tempdir");
        let secret = secret_dir.path().join("server.secret");
        std::fs::write(&secret, "0123456789abcdef0123456789abcdef0123456789abcdef").unwrap();
        let mut nodes = Vec::new();
        for i in 0..3 {
            let opts = RelayOptions {
                bind_ip: NODE_IPS[i],
                hostname: HOSTS[i],
                plain_listener: true,
                metrics: true,
                server_extra: format!("secret_file = \"{}\"", secret.display()),
                pki: Some(pki.clone()),
                listener_extra: "proxy_protocol = true\ntrusted_proxies = [\"127.0.0.1\"]\n".into(),
                extra_config: format!(
                    "[cluster]\nredis_url = \"{}\"\nnode_id = \"node{}\"\nnodes = 3\nheartbeat_secs = 1\nreconcile_secs = 5\n\n[send_api]\naddress = \"127.0.0.1:0\"\n{}",
                    redis.url(),
                    i + 1,
                    // Node 2 serves the HTTP admin API (admin tokens are shared too).
                    if i == 1 {
                        "\n[admin_http]\naddress = \"127.0.0.1:0\"\n"
                    } else {
                        ""
                    }
                ),
                ..Default::default()
            };
            nodes.push(Relay::start_with_upstream(
                upstream.port(),
                "none",
                &pki,
                opts,
            ));
        }
        let haproxy = Haproxy::start(&[
            nodes.iter().map(|n| n.starttls).collect(),
            nodes
                .iter()
                .map(|n| n.plain.expect("plain listener"))
                .collect(),
        ]);
        let c = Cluster {
            _secret: secret_dir,
            redis,
            upstream,
            nodes,
            haproxy,
            pki,
        };
        c.wait_nodes_up(3, Duration::from_secs(20));
        c
    }

    fn starttls_front(&self) -> SocketAddr {
        self.haproxy.frontends[0]
    }
    fn plain_front(&self) -> SocketAddr {
        self.haproxy.frontends[1]
    }

    fn status(&self, node: usize) -> serde_json::Value {
        self.nodes[node].cli_json(&["cluster", "status"])
    }

    fn wait_nodes_up(&self, n: usize, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        loop {
            let s = self.status(0);
            let up = s["nodes"]
                .as_array()
                .map(|a| a.iter().filter(|n| n["state"] == "up").count())
                .unwrap_or(0);
            if up >= n {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "only {up} of {n} nodes up: {s:#}\n{}",
                self.nodes[0].server_log()
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// `smtp_relay_cluster_degraded` of one node.
    async fn degraded(&self, node: usize) -> Option<i64> {
        let addr = self.nodes[node].metrics?;
        let body = self.nodes[node]
            .http_client()
            .get(format!("http://{addr}/metrics"))
            .send()
            .await
            .ok()?
            .text()
            .await
            .ok()?;
        body.lines()
            .find(|l| l.starts_with("smtp_relay_cluster_degraded "))
            .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
    }

    async fn wait_degraded(&self, value: i64, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        for node in 0..self.nodes.len() {
            loop {
                if self.degraded(node).await == Some(value) {
                    break;
                }
                assert!(
                    Instant::now() < deadline,
                    "node {} never reported smtp_relay_cluster_degraded {value}:\n{}",
                    node + 1,
                    self.nodes[node].server_log()
                );
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

/// A direct connection to a node, with the PROXY v1 header HAProxy would send for a client
/// on 127.0.0.9.
async fn direct(node: SocketAddr) -> Client {
    let mut c = Client::connect(node).await;
    c.write(
        format!(
            "PROXY TCP4 {CLIENT_IP} {} 40000 {}\r\n",
            node.ip(),
            node.port()
        )
        .as_bytes(),
    )
    .await;
    c
}

/// AUTH over a plain node listener (direct, with header): the reply code.
async fn auth_code(node: SocketAddr, user: &str, token: &str) -> u16 {
    let mut c = direct(node).await;
    assert_eq!(c.reply().await.code, 220);
    assert_eq!(c.cmd("EHLO client.test").await.code, 250);
    c.auth_plain(user, token).await.code
}

/// Through the balancer's plain frontend from 127.0.0.9: one message, without panicking on
/// a dying node. `Some(code)` of the final reply, `None` when the connection broke.
async fn try_send(
    front: SocketAddr,
    user: &str,
    token: &str,
    subject: &str,
) -> Option<(u16, String)> {
    let socket = tokio::net::TcpSocket::new_v4().ok()?;
    socket
        .bind(SocketAddr::new(CLIENT_IP.parse().unwrap(), 0))
        .ok()?;
    let tcp = tokio::time::timeout(Duration::from_secs(5), socket.connect(front))
        .await
        .ok()?
        .ok()?;
    let mut c = Client::from_stream(tcp);
    let w = Duration::from_secs(15);
    if c.try_reply(w).await?.code != 220 {
        return None;
    }
    let mut step = async |line: String| -> Option<support::client::Reply> {
        if !c.write_lossy(format!("{line}\r\n").as_bytes()).await {
            return None;
        }
        c.try_reply(w).await
    };
    step("EHLO client.test".into()).await?;
    use base64::Engine;
    let b = base64::engine::general_purpose::STANDARD.encode(format!("\0{user}\0{token}"));
    if step(format!("AUTH PLAIN {b}")).await?.code != 235 {
        return None;
    }
    let r = step("MAIL FROM:<app@example.com>".into()).await?;
    if r.code != 250 {
        return Some((r.code, r.text));
    }
    let r = step("RCPT TO:<user@example.net>".into()).await?;
    if r.code != 250 {
        return Some((r.code, r.text));
    }
    let r = step("DATA".into()).await?;
    if r.code != 354 {
        return Some((r.code, r.text));
    }
    let body = plain_message("app@example.com", "user@example.net", subject, "load\r\n");
    let r = step(format!("{body}\r\n.")).await?;
    Some((r.code, r.text))
}

fn add_project(node: &Relay) -> (String, String, String) {
    let v = node.cli_json(&["project", "add", "app", "--domain", "example.com"]);
    (
        v["project"]["id"].as_str().unwrap().to_string(),
        v["token"].as_str().unwrap().to_string(),
        v["token_id"].as_str().unwrap().to_string(),
    )
}

/// Until every node's own copy of the registry has `project` (it came through Redis), then
/// one AUTH on each. (Polling with AUTH would trip the failed-login cool-down.)
async fn wait_known_everywhere(c: &Cluster, id: &str, token: &str) {
    let deadline = Instant::now() + Duration::from_secs(10);
    for n in &c.nodes {
        while !n.cli(&["project", "show", id]).status.success() {
            if Instant::now() > deadline {
                let log = n.server_log();
                panic!(
                    "project {id} never reached a node:\n{}",
                    &log[log.len().saturating_sub(6000)..]
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert_eq!(auth_code(n.plain.unwrap(), id, token).await, 235);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn project_from_one_node_sends_through_the_balancer_on_all_and_revocation_spreads() {
    let c = Cluster::start().await;
    let (id, token, token_id) = add_project(&c.nodes[0]);
    wait_known_everywhere(&c, &id, &token).await;

    // Nine connections through HAProxy (round robin, STARTTLS, from 127.0.0.9).
    for i in 0..9 {
        let local: IpAddr = CLIENT_IP.parse().unwrap();
        let mut cl = Client::connect_from(local, c.starttls_front()).await;
        assert_eq!(cl.reply().await.code, 220);
        assert_eq!(cl.cmd("EHLO client.test").await.code, 250);
        assert_eq!(cl.cmd("STARTTLS").await.code, 220);
        cl.upgrade(&c.pki).await;
        assert_eq!(cl.cmd("EHLO client.test").await.code, 250);
        assert_eq!(cl.auth_plain(&id, &token).await.code, 235);
        let r = cl
            .send_plain(
                "app@example.com",
                "user@example.net",
                &format!("m{i}"),
                "hi\r\n",
            )
            .await;
        assert_eq!(r.code, 250, "{r:?}");
    }
    let got = c.upstream.wait_for(9, Duration::from_secs(30)).await;
    let mut by = HashSet::new();
    for m in &got {
        let text = m.text();
        let received = text
            .split("\r\n")
            .take_while(|l| !l.is_empty())
            .find(|l| l.starts_with("Received:"))
            .unwrap_or_default()
            .to_string();
        assert!(
            text.contains(&format!("[{CLIENT_IP}]")),
            "Received does not show the real client: {received}\n{text}"
        );
        assert!(!received.contains("[127.0.0.1]"), "{received}");
        for h in HOSTS {
            if text.contains(&format!("by {h} ")) {
                by.insert(h);
            }
        }
    }
    assert_eq!(by.len(), 3, "mail arrived from {by:?} only");

    // A direct connection without a header is closed without a greeting, from the trusted
    // balancer address (after the header deadline) and from anywhere else (at once).
    let node1 = c.nodes[0].starttls;
    let mut bare = Client::connect(node1).await;
    assert!(bare.try_reply(Duration::from_secs(8)).await.is_none());
    let mut other = Client::connect_from(CLIENT_IP.parse().unwrap(), node1).await;
    assert!(other.closed(Duration::from_secs(2)).await);
    assert!(
        c.nodes[0]
            .server_log()
            .contains("PROXY header missing or invalid")
    );
    assert!(c.nodes[0].server_log().contains("not a trusted proxy"));

    // Revoked on node 2: refused on nodes 1 and 3 within a second. (Measured from the
    // revocation's answer to the AUTH that was refused; a refused AUTH is answered after the
    // failed-login delay, which is not propagation time.)
    c.nodes[1].cli_json(&["project", "token", "revoke", &id, &token_id]);
    let revoked_at = Instant::now();
    for n in [0, 2] {
        loop {
            let tried = revoked_at.elapsed();
            let code = auth_code(c.nodes[n].plain.unwrap(), &id, &token).await;
            if code == 535 {
                assert!(
                    tried < Duration::from_secs(1),
                    "node {} refused the revoked token only {tried:?} after revocation",
                    n + 1
                );
                eprintln!(
                    "node {}: revoked token refused {tried:?} after revocation",
                    n + 1
                );
                break;
            }
            assert!(
                tried < Duration::from_secs(1),
                "node {} still accepts the revoked token after {tried:?}",
                n + 1
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    // An admin token made on node 1 works on node 2's HTTP API: GET /api/v1/cluster.
    let admin = c.nodes[0].cli_json(&[
        "admin", "token", "add", "--label", "ops", "--role", "viewer",
    ]);
    let admin = admin["token"].as_str().unwrap().to_string();
    let api = c.nodes[1].listener_addr("admin_http");
    let deadline = Instant::now() + Duration::from_secs(5);
    let v: serde_json::Value = loop {
        let resp = c.nodes[1]
            .http_client()
            .get(format!("http://{api}/api/v1/cluster"))
            .bearer_auth(&admin)
            .send()
            .await
            .unwrap();
        if resp.status() == 200 {
            break resp.json().await.unwrap();
        }
        assert!(Instant::now() < deadline, "{}", resp.status());
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(v["node_id"], "node2", "{v:#}");
    assert_eq!(v["nodes"].as_array().map(|a| a.len()), Some(3), "{v:#}");

    let s = c.status(2);
    assert_eq!(s["redis"], "up", "{s:#}");
    assert_eq!(s["degraded"], false, "{s:#}");
    assert_eq!(s["nodes"].as_array().map(|a| a.len()), Some(3), "{s:#}");
    drop(c.redis);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn per_minute_limit_holds_across_the_cluster() {
    let c = Cluster::start().await;
    let (id, token, _) = add_project(&c.nodes[0]);
    c.nodes[0].cli_json(&["project", "limits", &id, "--per-minute", "300"]);
    wait_known_everywhere(&c, &id, &token).await;
    // The override reached every node's copy too (AUTH reads the limits at login).
    tokio::time::sleep(Duration::from_millis(500)).await;

    let accepted = Arc::new(AtomicUsize::new(0));
    let limited = Arc::new(Mutex::new(Vec::new()));
    let started = Instant::now();
    let mut tasks = Vec::new();
    for w in 0..12 {
        let (front, id, token) = (c.plain_front(), id.clone(), token.clone());
        let (accepted, limited) = (accepted.clone(), limited.clone());
        tasks.push(tokio::spawn(async move {
            for i in 0..35 {
                match try_send(front, &id, &token, &format!("w{w}-{i}")).await {
                    Some((250, _)) => {
                        accepted.fetch_add(1, Ordering::Relaxed);
                    }
                    Some((451, text)) => limited.lock().await.push(text),
                    other => panic!("unexpected: {other:?}"),
                }
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let elapsed = started.elapsed().as_secs_f64();
    let accepted = accepted.load(Ordering::Relaxed);
    let limited = limited.lock().await;
    // GCRA refills 5 per second while the burst of 300 is being sent.
    let refill = (elapsed * 5.0).ceil() as usize;
    eprintln!(
        "accepted {accepted}, 451 {}, in {elapsed:.1} s",
        limited.len()
    );
    assert!(
        (285..=315 + refill).contains(&accepted),
        "accepted {accepted} in {elapsed:.1} s (limit 300/min across 3 nodes)"
    );
    assert!(!limited.is_empty(), "no 451 after the limit");
    assert!(
        limited[0].contains("Rate limit exceeded") && limited[0].contains("retry in"),
        "{}",
        limited[0]
    );

    // The shared windows answer at MAIL FROM too, on nodes that took none of the messages
    // themselves: the refusal comes before the client sends its message.
    let v = c.nodes[0].cli_json(&["project", "add", "daily", "--domain", "example.org"]);
    let daily = v["project"]["id"].as_str().unwrap().to_string();
    let daily_token = v["token"].as_str().unwrap().to_string();
    c.nodes[0].cli_json(&["project", "limits", &daily, "--per-day", "2"]);
    wait_known_everywhere(&c, &daily, &daily_token).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let login = async |n: usize| {
        let mut cl = direct(c.nodes[n].plain.unwrap()).await;
        assert_eq!(cl.reply().await.code, 220);
        assert_eq!(cl.cmd("EHLO client.test").await.code, 250);
        assert_eq!(cl.auth_plain(&daily, &daily_token).await.code, 235);
        cl
    };
    let mut cl = login(0).await;
    for i in 0..2 {
        let r = cl
            .send_plain(
                "a@example.org",
                "user@example.net",
                &format!("d{i}"),
                "x\r\n",
            )
            .await;
        assert_eq!(r.code, 250, "{r:?}");
    }
    for n in [1, 2] {
        let r = login(n).await.cmd("MAIL FROM:<a@example.org>").await;
        assert_eq!(r.code, 451, "node {}: {r:?}", n + 1);
        assert!(r.text.contains("retry in"), "{r:?}");
    }
}

/// Sends until `stop`, through the plain frontend; every acknowledged subject is recorded.
fn load(
    c: &Cluster,
    id: &str,
    token: &str,
    workers: usize,
    stop: Arc<AtomicBool>,
) -> (Arc<Mutex<Vec<String>>>, Vec<tokio::task::JoinHandle<()>>) {
    let acked = Arc::new(Mutex::new(Vec::new()));
    let mut tasks = Vec::new();
    for w in 0..workers {
        let (front, id, token) = (c.plain_front(), id.to_string(), token.to_string());
        let (acked, stop) = (acked.clone(), stop.clone());
        tasks.push(tokio::spawn(async move {
            let mut i = 0;
            while !stop.load(Ordering::Relaxed) {
                let subject = format!("load-{w}-{i}");
                i += 1;
                if let Some((250, _)) = try_send(front, &id, &token, &subject).await {
                    acked.lock().await.push(subject);
                }
            }
        }));
    }
    (acked, tasks)
}

async fn assert_all_delivered(c: &Cluster, acked: &[String]) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let subjects: HashSet<String> = c
            .upstream
            .messages()
            .iter()
            .filter_map(|m| {
                let t = m.text();
                t.split("\r\n")
                    .find_map(|l| l.strip_prefix("Subject: ").map(str::to_string))
            })
            .collect();
        let missing: Vec<&String> = acked.iter().filter(|s| !subjects.contains(*s)).collect();
        if missing.is_empty() {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{} acknowledged messages never delivered, e.g. {:?}",
            missing.len(),
            &missing[..missing.len().min(5)]
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn redis_outage_falls_back_to_local_limits_and_loses_nothing() {
    let mut c = Cluster::start().await;
    let (id, token, _) = add_project(&c.nodes[0]);
    wait_known_everywhere(&c, &id, &token).await;
    c.wait_degraded(0, Duration::from_secs(5)).await;

    let stop = Arc::new(AtomicBool::new(false));
    let (acked, tasks) = load(&c, &id, &token, 4, stop.clone());
    tokio::time::sleep(Duration::from_secs(1)).await;
    c.redis.stop();
    let before = acked.lock().await.len();
    c.wait_degraded(1, Duration::from_secs(10)).await;
    // Still accepting (known project, cached registry, fallback limits).
    tokio::time::sleep(Duration::from_secs(2)).await;
    let during = acked.lock().await.len();
    assert!(during > before, "no mail accepted while Redis was down");
    for n in &c.nodes {
        assert!(n.server_log().contains("cluster degraded"));
    }
    // A registry change is refused rather than made on one node only.
    let out = c.nodes[1].cli(&["project", "add", "other", "--domain", "example.org"]);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("Redis is unreachable"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // A node restarted while Redis is down starts and serves with its last registry.
    // (It comes back on new ports, so the balancer leaves it aside; it is reached directly.)
    c.nodes[2].terminate();
    c.nodes[2].spawn();
    assert_eq!(auth_code(c.nodes[2].plain.unwrap(), &id, &token).await, 235);
    c.wait_degraded(1, Duration::from_secs(10)).await;

    c.redis.spawn();
    c.wait_degraded(0, Duration::from_secs(15)).await;
    stop.store(true, Ordering::Relaxed);
    for t in tasks {
        t.await.unwrap();
    }
    let acked = acked.lock().await.clone();
    assert_all_delivered(&c, &acked).await;
    // Redis came back empty: a node copied its registry there again, so the project still
    // authenticates everywhere.
    wait_known_everywhere(&c, &id, &token).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_killed_node_delivers_what_it_acknowledged_after_restart() {
    let mut c = Cluster::start().await;
    let (id, token, _) = add_project(&c.nodes[0]);
    wait_known_everywhere(&c, &id, &token).await;
    // The upstream defers everything meanwhile, so node 2 holds queued mail when it dies.
    c.upstream.set_script(support::upstream::Script {
        data_end: Some("451 4.3.0 try again later".into()),
        ..Default::default()
    });
    let stop = Arc::new(AtomicBool::new(false));
    let (acked, tasks) = load(&c, &id, &token, 6, stop.clone());
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let queued = c.nodes[1].cli_json(&["queue", "list"]);
    let queued = queued.as_array().map(|a| a.len()).unwrap_or(0);
    assert!(queued > 0, "node 2 has nothing queued to lose");
    c.nodes[1].kill9();
    let at_kill = acked.lock().await.len();
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(
        acked.lock().await.len() > at_kill,
        "the other nodes stopped serving"
    );
    stop.store(true, Ordering::Relaxed);
    for t in tasks {
        t.await.unwrap();
    }
    c.upstream.set_script(support::upstream::Script::default());
    c.nodes[1].spawn();
    let acked = acked.lock().await.clone();
    assert_all_delivered(&c, &acked).await;
    eprintln!(
        "{} acknowledged ({queued} queued on node 2 when it was killed), all delivered",
        acked.len()
    );
    let _ = c.haproxy.log();
}

/// `config check` names the key of each cluster or PROXY-protocol mistake.
#[test]
fn cluster_and_proxy_config_mistakes_name_the_key() {
    const BASE: &str = "[server]\nhostname = \"relay.example.com\"\nstate_dir = \"/var/lib/smtp-relay\"\n\n[tls]\ncert_file = \"/etc/c.pem\"\nkey_file = \"/etc/k.pem\"\n\n[[listener]]\naddress = \"0.0.0.0:587\"\nmode = \"starttls\"\nproxy_protocol = true\ntrusted_proxies = [\"10.0.0.0/8\"]\n\n[delivery]\ndefault_route = \"o\"\n\n[upstream.o]\ntype = \"outbox\"\ndir = \"/tmp/o\"\n\n[cluster]\nredis_url = \"redis://10.0.0.5:6379\"\nnodes = 3\n";
    let cases: &[(&str, &str, &str, &str)] = &[
        (
            "redis://10.0.0.5:6379",
            "http://10.0.0.5",
            "cluster.redis_url",
            "redis://",
        ),
        (
            "redis://10.0.0.5:6379",
            "redis://u:pw@10.0.0.5",
            "cluster.redis_url",
            "password_file",
        ),
        ("nodes = 3", "nodes = 0", "cluster.nodes", "at least 1"),
        (
            "nodes = 3",
            "nodes = 3\nca_file = \"/etc/ssl/certs/ca-certificates.crt\"",
            "cluster.ca_file",
            "only for a rediss://",
        ),
        (
            "redis://10.0.0.5:6379\"",
            "rediss://10.0.0.5:6379\"\nca_file = \"/nonexistent/ca.pem\"",
            "cluster.ca_file",
            "/nonexistent/ca.pem",
        ),
        ("nodes = 3\n", "", "cluster.nodes", "missing field"),
        (
            "[\"10.0.0.0/8\"]",
            "[\"10.0.0.0/33\"]",
            "listener.trusted_proxies",
            "not a CIDR",
        ),
        (
            "trusted_proxies = [\"10.0.0.0/8\"]\n",
            "",
            "listener.trusted_proxies",
            "proxy_protocol = true needs",
        ),
    ];
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("relay.toml");
    std::fs::write(&path, BASE).unwrap();
    let ok = std::process::Command::new(support::relay::BIN)
        .args(["config", "check"])
        .arg(&path)
        .output()
        .unwrap();
    assert!(
        ok.status.success(),
        "the base config is refused: {}",
        String::from_utf8_lossy(&ok.stderr)
    );
    let shown = String::from_utf8_lossy(&ok.stdout);
    assert!(
        shown.contains("[cluster]") && shown.contains("heartbeat_secs = 5"),
        "{shown}"
    );
    for (from, to, key, words) in cases {
        let text = BASE.replacen(from, to, 1);
        assert_ne!(text, BASE);
        std::fs::write(&path, &text).unwrap();
        let out = std::process::Command::new(support::relay::BIN)
            .args(["config", "check"])
            .arg(&path)
            .env_remove("SMTP_RELAY_LOG")
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{key}: accepted");
        assert!(err.contains(&format!("key `{key}`")), "{key}: {err}");
        assert!(err.contains(words), "{words:?} not in: {err}");
    }
}

/// A project's `max_connections` counts its sessions on all nodes (leases in Redis).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn project_session_limit_counts_sessions_on_every_node() {
    let c = Cluster::start().await;
    let (id, token, _) = add_project(&c.nodes[0]);
    c.nodes[0].cli_json(&["project", "limits", &id, "--max-connections", "2"]);
    wait_known_everywhere(&c, &id, &token).await;
    // Wait for the override itself on node 3 (it came with the same invalidation or a later one).
    let deadline = Instant::now() + Duration::from_secs(5);
    while c.nodes[2].cli_json(&["project", "show", &id])["limits"]["max_connections"] != 2 {
        assert!(
            Instant::now() < deadline,
            "limit override never reached node 3"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    async fn login(node: SocketAddr, id: &str, token: &str) -> (Client, u16) {
        let mut c = direct(node).await;
        assert_eq!(c.reply().await.code, 220);
        assert_eq!(c.cmd("EHLO client.test").await.code, 250);
        let code = c.auth_plain(id, token).await.code;
        (c, code)
    }
    let (first, code) = login(c.nodes[0].plain.unwrap(), &id, &token).await;
    assert_eq!(code, 235);
    let (_second, code) = login(c.nodes[1].plain.unwrap(), &id, &token).await;
    assert_eq!(code, 235);
    // Node 3 has no session of this project itself, yet the project has its two.
    let (_third, code) = login(c.nodes[2].plain.unwrap(), &id, &token).await;
    assert_eq!(code, 421, "a third session across the cluster was admitted");
    // One ends (QUIT): its place is free again, on any node.
    let mut first = first;
    assert_eq!(first.cmd("QUIT").await.code, 221);
    drop(first);
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let (_c, code) = login(c.nodes[2].plain.unwrap(), &id, &token).await;
        if code == 235 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the freed place never came back ({code})"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// POSTs one email to a node's send API with an Idempotency-Key: status and JSON answer.
async fn post_email(
    node: &Relay,
    token: &str,
    key: &str,
    subject: &str,
) -> (u16, serde_json::Value) {
    let resp = node
        .http_client()
        .post(format!("http://{}/emails", node.listener_addr("send_api")))
        .bearer_auth(token)
        .header("Idempotency-Key", key)
        .json(&serde_json::json!({
            "from": "App <app@example.com>",
            "to": "user@example.net",
            "subject": subject,
            "text": "Your reset code is 4711.",
        }))
        .send()
        .await
        .expect("send API answers");
    let status = resp.status().as_u16();
    let text = resp.text().await.unwrap_or_default();
    (
        status,
        serde_json::from_str(&text).unwrap_or_else(|_| panic!("not JSON: {text:?}")),
    )
}

/// A retried HTTP request that reaches another node is answered with the first node's id,
/// and the upstream gets one message; a different request under the same key is refused there.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn idempotency_key_is_shared_between_nodes() {
    let mut c = Cluster::start().await;
    let (id, token, _) = add_project(&c.nodes[0]);
    wait_known_everywhere(&c, &id, &token).await;

    let (status, first) = post_email(&c.nodes[0], &token, "reset/42", "Reset").await;
    assert_eq!(status, 200, "{first}");
    let first_id = first["id"].as_str().expect("an id").to_string();
    // The retry goes to node 2 (as HAProxy may send it), then node 3.
    for node in [1, 2] {
        let (status, again) = post_email(&c.nodes[node], &token, "reset/42", "Reset").await;
        assert_eq!(status, 200, "node {}: {again}", node + 1);
        assert_eq!(
            again["id"],
            first_id.as_str(),
            "node {} queued anew",
            node + 1
        );
    }
    // Another request under the same key: Resend's 409, on another node too.
    let (status, other) = post_email(&c.nodes[1], &token, "reset/42", "Different").await;
    assert_eq!(status, 409, "{other}");
    // A new key is a new message.
    let (status, second) = post_email(&c.nodes[2], &token, "reset/43", "Reset").await;
    assert_eq!(status, 200, "{second}");
    assert_ne!(second["id"], first_id.as_str());

    let got = c.upstream.wait_for(2, Duration::from_secs(30)).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(
        c.upstream.messages().len(),
        2,
        "a retry sent to another node was delivered twice ({} seen)",
        got.len()
    );
    // The key lives in Redis under the documented name.
    let v = c
        .redis
        .command(&["GET", &format!("smtp-relay:idem:{id}:reset/42")]);
    assert!(v.contains(&first_id), "record in Redis: {v:?}");

    // Redis down: keys still work on each node alone (nothing refused), and a node's own
    // record still answers its retries.
    c.redis.stop();
    c.wait_degraded(1, Duration::from_secs(15)).await;
    let (status, alone) = post_email(&c.nodes[0], &token, "reset/44", "Reset").await;
    assert_eq!(status, 200, "{alone}");
    let (status, again) = post_email(&c.nodes[0], &token, "reset/44", "Reset").await;
    assert_eq!(status, 200, "{again}");
    assert_eq!(again["id"], alone["id"]);
    c.upstream.wait_for(3, Duration::from_secs(30)).await;
}

/// RCPT of `rcpt` on `node` after AUTH (direct, with a PROXY header): the reply.
async fn rcpt_reply(node: SocketAddr, id: &str, token: &str, rcpt: &str) -> support::client::Reply {
    let mut cl = direct(node).await;
    assert_eq!(cl.reply().await.code, 220);
    assert_eq!(cl.cmd("EHLO client.test").await.code, 250);
    assert_eq!(cl.auth_plain(id, token).await.code, 235);
    assert_eq!(cl.cmd("MAIL FROM:<app@example.com>").await.code, 250);
    cl.cmd(&format!("RCPT TO:<{rcpt}>")).await
}

/// A recipient the upstream refused for good via node 1 is refused at RCPT by node 2; an
/// admin entry added on node 3 holds on node 1 and its removal there frees it everywhere.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn suppression_list_is_shared_between_nodes() {
    let mut c = Cluster::start().await;
    c.upstream.set_script(
        support::upstream::Script::default()
            .with_rcpt("gone@example.net", "550 5.1.1 No such user"),
    );
    let (id, token, _) = add_project(&c.nodes[0]);
    wait_known_everywhere(&c, &id, &token).await;

    let mut cl = direct(c.nodes[0].plain.unwrap()).await;
    assert_eq!(cl.reply().await.code, 220);
    assert_eq!(cl.cmd("EHLO client.test").await.code, 250);
    assert_eq!(cl.auth_plain(&id, &token).await.code, 235);
    let r = cl
        .send_plain("app@example.com", "gone@example.net", "Reset", "hi\r\n")
        .await;
    assert_eq!(r.code, 250, "{r:?}");
    drop(cl);

    // Node 1 delivers, is refused, records the entry and shares it.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let r = rcpt_reply(c.nodes[1].plain.unwrap(), &id, &token, "Gone@example.net").await;
        if r.code == 550 {
            assert!(r.text.contains("5.1.1 Recipient suppressed"), "{r:?}");
            break;
        }
        assert_eq!(r.code, 250, "{r:?}");
        assert!(
            Instant::now() < deadline,
            "node 2 never refused the suppressed recipient"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // Node 2 never had it in its own tree (the answer came from Redis); its list shows the
    // shared entry.
    let listed = c.nodes[1].cli_json(&["suppression", "list", &id]);
    assert_eq!(listed.as_array().map(|a| a.len()), Some(1), "{listed}");
    assert_eq!(listed[0]["address"], "gone@example.net", "{listed}");
    assert_eq!(listed[0]["source"], "upstream", "{listed}");
    let v = c.redis.command(&[
        "HGET",
        &format!("smtp-relay:suppression:{id}"),
        "gone@example.net",
    ]);
    assert!(v.contains("550 5.1.1 No such user"), "{v:?}");
    // Other recipients pass.
    assert_eq!(
        rcpt_reply(c.nodes[1].plain.unwrap(), &id, &token, "ok@example.net")
            .await
            .code,
        250
    );

    // Removed on node 3: node 1, which recorded it in its own tree, accepts it again.
    c.nodes[2].cli_json(&["suppression", "remove", &id, "gone@example.net"]);
    let r = rcpt_reply(c.nodes[0].plain.unwrap(), &id, &token, "gone@example.net").await;
    assert_eq!(r.code, 250, "{r:?}");
    let r = rcpt_reply(c.nodes[1].plain.unwrap(), &id, &token, "gone@example.net").await;
    assert_eq!(r.code, 250, "{r:?}");
    // Node 1 still has it in its own tree; the removal elsewhere outranks it in the list too.
    let listed = c.nodes[0].cli_json(&["suppression", "list", &id]);
    assert_eq!(listed.as_array().map(|a| a.len()), Some(0), "{listed}");

    // An admin entry on node 3 is refused on node 1; removed on node 3, accepted again.
    c.nodes[2].cli_json(&["suppression", "add", &id, "blocked@example.net"]);
    let r = rcpt_reply(
        c.nodes[0].plain.unwrap(),
        &id,
        &token,
        "blocked@example.net",
    )
    .await;
    assert_eq!(r.code, 550, "{r:?}");
    c.nodes[2].cli_json(&["suppression", "remove", &id, "blocked@example.net"]);
    let r = rcpt_reply(
        c.nodes[0].plain.unwrap(),
        &id,
        &token,
        "blocked@example.net",
    )
    .await;
    assert_eq!(r.code, 250, "{r:?}");

    // Redis down: an entry only Redis knew does not stop mail (node 1 answers from its own
    // tree), and an entry in a node's own tree still does.
    c.nodes[2].cli_json(&["suppression", "add", &id, "shared@example.net"]);
    c.nodes[0].cli_json(&["suppression", "add", &id, "own@example.net"]);
    c.redis.stop();
    c.wait_degraded(1, Duration::from_secs(15)).await;
    let node1 = c.nodes[0].plain.unwrap();
    assert_eq!(
        rcpt_reply(node1, &id, &token, "shared@example.net")
            .await
            .code,
        250
    );
    assert_eq!(
        rcpt_reply(node1, &id, &token, "own@example.net").await.code,
        550
    );
    // Added on node 1 while Redis is away: kept there (a warning), refused by node 1 only.
    c.nodes[0].cli_json(&["suppression", "add", &id, "offline@example.net"]);
    assert!(
        c.nodes[0]
            .server_log()
            .contains("suppression entries kept on this node only")
    );
    // The list: this node's own entries while Redis is away.
    let listed = c.nodes[0].cli_json(&["suppression", "list", &id]);
    let addresses: Vec<&str> = listed
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|e| e["address"].as_str())
        .collect();
    assert_eq!(
        addresses,
        ["offline@example.net", "own@example.net"],
        "{listed}"
    );

    // Redis back (empty, as one that lost its data): node 1 shares what it kept, and node 2
    // refuses it within seconds.
    c.redis.spawn();
    c.wait_degraded(0, Duration::from_secs(15)).await;
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let r = rcpt_reply(
            c.nodes[1].plain.unwrap(),
            &id,
            &token,
            "offline@example.net",
        )
        .await;
        if r.code == 550 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "node 2 never learnt of the entry node 1 kept: {r:?}\n{}",
            c.nodes[0].server_log()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Sends one message straight to a node (PROXY header, AUTH) and returns the queue id.
async fn send_direct(node: SocketAddr, id: &str, token: &str, subject: &str) -> String {
    let mut cl = direct(node).await;
    assert_eq!(cl.reply().await.code, 220);
    assert_eq!(cl.cmd("EHLO client.test").await.code, 250);
    assert_eq!(cl.auth_plain(id, token).await.code, 235);
    let r = cl
        .send_plain("app@example.com", "user@example.net", subject, "hi\r\n")
        .await;
    assert_eq!(r.code, 250, "{r:?}");
    r.queued_id()
}

/// The message with `subject` at the upstream, once it arrives.
async fn arrived(c: &Cluster, subject: &str) -> Vec<u8> {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let needle = format!("Subject: {subject}\r\n");
        if let Some(m) = c
            .upstream
            .messages()
            .into_iter()
            .find(|m| String::from_utf8_lossy(&m.data).contains(&needle))
        {
            return m.data;
        }
        assert!(Instant::now() < deadline, "{subject} never arrived");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn wait_file(path: &std::path::Path, present: bool, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while path.exists() != present {
        assert!(Instant::now() < deadline, "{what}: {}", path.display());
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A DKIM key generated on node 1 signs mail sent through node 2; Redis holds its private key
/// only sealed; a rotation on node 3 reaches node 1's signer; a removed key's file goes away
/// on every node.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn dkim_keys_are_shared_sealed_between_nodes() {
    use std::os::unix::fs::PermissionsExt;
    let c = Cluster::start().await;
    let (id, token, _) = add_project(&c.nodes[0]);
    wait_known_everywhere(&c, &id, &token).await;
    let dns = support::dkim::Dns::default();
    dns.publish(&support::dkim::keygen(
        &c.nodes[0],
        "example.com",
        "s1",
        "rsa",
        true,
    ));

    // Node 2 writes its own 0600 file from the sealed copy.
    let file = |n: usize, sel: &str| {
        c.nodes[n]
            .state_dir()
            .join("dkim")
            .join("example.com")
            .join(format!("{sel}.pem"))
    };
    wait_file(&file(1, "s1"), true, "key never reached node 2");
    let mode = std::fs::metadata(file(1, "s1"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600, "{mode:o}");
    assert_eq!(
        std::fs::read(file(0, "s1")).unwrap(),
        std::fs::read(file(1, "s1")).unwrap()
    );
    send_direct(c.nodes[1].plain.unwrap(), &id, &token, "Via node 2").await;
    let signed = support::dkim::verify(&dns, &arrived(&c, "Via node 2").await).await;
    assert!(
        signed.iter().any(|v| v.pass() && v.selector == "s1"),
        "{signed:?}"
    );

    // Redis has the key record and a sealed private key, never the key itself.
    let sealed = c.redis.command(&["HGETALL", "smtp-relay:tree:dkim_sealed"]);
    assert!(sealed.contains("example.com"), "{sealed:?}");
    let pem = std::fs::read_to_string(file(0, "s1")).unwrap();
    let body_line = pem.lines().nth(1).unwrap();
    assert!(!sealed.contains("PRIVATE KEY"), "{sealed:?}");
    assert!(!sealed.contains(body_line), "{sealed:?}");
    // Every registry record is sealed there too: the key metadata, and a webhook endpoint
    // with its signing secret — which still reaches node 3 and opens there.
    let meta = c.redis.command(&["HGETALL", "smtp-relay:tree:dkim"]);
    assert!(meta.contains("example.com\0s1"), "{meta:?}");
    assert!(!meta.contains("selector"), "{meta:?}");
    let hook = c.nodes[0].cli_json(&[
        "webhook",
        "add",
        &id,
        "--url",
        "https://93.184.216.34/hook",
        "--events",
        "relayed",
    ]);
    let whsec = hook["secret"].as_str().unwrap().to_string();
    assert!(whsec.starts_with("whsec_"), "{hook:#}");
    let hooks = c.redis.command(&["HGETALL", "smtp-relay:tree:webhooks"]);
    assert!(
        !hooks.contains("whsec_") && !hooks.contains("93.184.216.34"),
        "{hooks:?}"
    );
    let projects = c.redis.command(&["HGETALL", "smtp-relay:tree:projects"]);
    assert!(!projects.contains("example.com"), "{projects:?}");
    let deadline = Instant::now() + Duration::from_secs(10);
    while c.nodes[2]
        .cli_json(&["webhook", "list"])
        .as_array()
        .map(|a| a.len())
        != Some(1)
    {
        assert!(
            Instant::now() < deadline,
            "the endpoint never reached node 3"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // Rotated on node 3: node 1 signs with the new key.
    dns.publish(&support::dkim::keygen(
        &c.nodes[2],
        "example.com",
        "s2",
        "rsa",
        true,
    ));
    wait_file(&file(0, "s2"), true, "new key never reached node 1");
    send_direct(c.nodes[0].plain.unwrap(), &id, &token, "After rotation").await;
    let signed = support::dkim::verify(&dns, &arrived(&c, "After rotation").await).await;
    assert!(
        signed.iter().any(|v| v.pass() && v.selector == "s2"),
        "{signed:?}"
    );
    assert!(!signed.iter().any(|v| v.selector == "s1"), "{signed:?}");

    // The old key removed on node 3: its file goes from nodes 1 and 2.
    c.nodes[2].cli_json(&["dkim", "remove", "example.com", "s1"]);
    wait_file(&file(0, "s1"), false, "removed key still on node 1");
    wait_file(&file(1, "s1"), false, "removed key still on node 2");
    let list = c.nodes[0].cli_json(&["dkim", "list", "--domain", "example.com"]);
    assert_eq!(list.as_array().map(|a| a.len()), Some(1), "{list:#}");
}

/// Upgrading a cluster seeded before DKIM keys were shared: the node holding the keys keeps
/// them (Redis's empty DKIM hashes do not wipe its records) and shares them, sealed, with a
/// node that joins afterwards.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn dkim_keys_of_a_node_upgraded_into_a_seeded_cluster_are_kept_and_shared() {
    let redis = RedisServer::start();
    let dir = tempfile::tempdir().unwrap();
    let secret = dir.path().join("server.secret");
    std::fs::write(&secret, "0123456789abcdef0123456789abcdef0123456789abcdef").unwrap();
    let state = dir.path().join("state-a");
    let node = |state: std::path::PathBuf, cluster: bool, id: &str| RelayOptions {
        state_dir: Some(state),
        server_extra: format!("secret_file = \"{}\"", secret.display()),
        extra_config: if cluster {
            format!(
                "[cluster]\nredis_url = \"{}\"\nnode_id = \"{id}\"\nnodes = 2\nheartbeat_secs = 1\nreconcile_secs = 5\n",
                redis.url()
            )
        } else {
            String::new()
        },
        ..Default::default()
    };

    // A single node with a key, then an older version's cluster: seeded, no DKIM trees.
    let mut single = Relay::start(node(state.clone(), false, "a"));
    support::dkim::keygen(&single, "example.com", "old1", "ed25519", true);
    single.terminate();
    drop(single);
    redis.command(&["SET", "smtp-relay:registry:seeded", "older-node"]);

    let a = Relay::start(node(state, true, "a"));
    let deadline = Instant::now() + Duration::from_secs(15);
    while !redis
        .command(&["HKEYS", "smtp-relay:tree:dkim_sealed"])
        .contains("old1")
    {
        assert!(
            Instant::now() < deadline,
            "key never shared:\n{}",
            a.server_log()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let members = redis.command(&["SMEMBERS", "smtp-relay:registry:seeded-trees"]);
    assert!(members.contains("dkim_sealed"), "{members:?}");
    let list = a.cli_json(&["dkim", "list"]);
    assert_eq!(list[0]["selector"], "old1", "{list:#}");
    assert_eq!(list[0]["state"], "active", "{list:#}");

    // A node that joins now gets the key and its file.
    let b = Relay::start(node(dir.path().join("state-b"), true, "b"));
    wait_file(
        &b.state_dir().join("dkim/example.com/old1.pem"),
        true,
        "key never reached the new node",
    );
    assert_eq!(
        std::fs::read(a.state_dir().join("dkim/example.com/old1.pem")).unwrap(),
        std::fs::read(b.state_dir().join("dkim/example.com/old1.pem")).unwrap()
    );
    let list = b.cli_json(&["dkim", "list"]);
    assert_eq!(list[0]["state"], "active", "{list:#}");
}

/// `rediss://` to a Redis that speaks TLS only, signed by a private CA (`ca_file`), with an ACL
/// user and its password from a file: the registry and mail flow as over plain Redis; a node
/// with the wrong password stays degraded and never logs the password.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn rediss_with_a_private_ca_and_an_acl_user() {
    let dir = tempfile::tempdir().unwrap();
    let files = TestPki::generate().write_to(&dir.path().join("redis-pki"));
    let redis = RedisServer::start_tls(&files, "redis-pw-4711");
    let secret = dir.path().join("server.secret");
    std::fs::write(&secret, "0123456789abcdef0123456789abcdef0123456789abcdef").unwrap();
    let node = |i: usize, password: &str| {
        let pw = dir.path().join(format!("redis-{i}.pw"));
        std::fs::write(&pw, format!("{password}\n")).unwrap();
        Relay::start(RelayOptions {
            server_extra: format!("secret_file = \"{}\"", secret.display()),
            extra_config: format!(
                "[cluster]\nredis_url = \"{}\"\nca_file = \"{}\"\nusername = \"relay\"\npassword_file = \"{}\"\nnode_id = \"n{i}\"\nnodes = 2\nheartbeat_secs = 1\nreconcile_secs = 5\n",
                redis.tls_url(),
                files.ca.display(),
                pw.display()
            ),
            ..Default::default()
        })
    };
    let a = node(1, "redis-pw-4711");
    let b = node(2, "redis-pw-4711");
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let s = a.cli_json(&["cluster", "status"]);
        let up = s["nodes"]
            .as_array()
            .map(|n| n.iter().filter(|n| n["state"] == "up").count())
            .unwrap_or(0);
        if up == 2 && s["redis"] == "up" && s["degraded"] == false {
            break;
        }
        assert!(Instant::now() < deadline, "{s:#}\n{}", a.server_log());
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let (id, token) = a.add_project("app", &["app.test"]);
    let deadline = Instant::now() + Duration::from_secs(10);
    while !b.cli(&["project", "show", &id]).status.success() {
        assert!(Instant::now() < deadline, "project never reached node 2");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let queued = b
        .submit(&id, &token, "noreply@app.test", &["user@example.net"])
        .await;
    b.wait_state(&queued, &["delivered"], Duration::from_secs(20));

    // The wrong password: degraded, said in the log, the password nowhere.
    let c = node(3, "not-the-password");
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let s = c.cli_json(&["cluster", "status"]);
        if s["degraded"] == true {
            break;
        }
        assert!(Instant::now() < deadline, "{s:#}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let log = c.server_log();
    assert!(log.contains("cluster degraded"), "{log}");
    assert!(!log.contains("not-the-password"), "{log}");
    assert!(!a.server_log().contains("redis-pw-4711"));
}

/// One node cut off from Redis while another keeps working: the cut-off node is degraded and
/// serves with its cached registry; the changes made meanwhile (a token revoked, a project
/// added) reach it within seconds of the network coming back.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn changes_made_while_a_node_was_cut_off_reach_it_after_reconnecting() {
    let redis = RedisServer::start();
    let partition = Partition::start(redis.port);
    let dir = tempfile::tempdir().unwrap();
    let secret = dir.path().join("server.secret");
    std::fs::write(&secret, "0123456789abcdef0123456789abcdef0123456789abcdef").unwrap();
    let node = |url: String, id: &str| {
        Relay::start(RelayOptions {
            server_extra: format!("secret_file = \"{}\"", secret.display()),
            extra_config: format!(
                "[cluster]\nredis_url = \"{url}\"\nnode_id = \"{id}\"\nnodes = 2\nheartbeat_secs = 1\nreconcile_secs = 30\n"
            ),
            ..Default::default()
        })
    };
    let a = node(redis.url(), "a");
    let b = node(partition.url(), "b");
    let degraded = |r: &Relay| r.cli_json(&["cluster", "status"])["degraded"] == true;
    let knows = |r: &Relay, id: &str| r.cli(&["project", "show", id]).status.success();
    let v = a.cli_json(&["project", "add", "app", "--domain", "app.test"]);
    let id = v["project"]["id"].as_str().unwrap().to_string();
    let token = v["token"].as_str().unwrap().to_string();
    let token_id = v["token_id"].as_str().unwrap().to_string();
    let deadline = Instant::now() + Duration::from_secs(10);
    while !knows(&b, &id) {
        assert!(Instant::now() < deadline, "{}", b.server_log());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    partition.cut();
    let deadline = Instant::now() + Duration::from_secs(10);
    while !degraded(&b) {
        assert!(Instant::now() < deadline, "node b never degraded");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(!degraded(&a));
    // Made on a while b cannot hear: a revocation and a new project.
    a.cli_json(&["project", "token", "revoke", &id, &token_id]);
    let later = a.cli_json(&["project", "add", "later", "--domain", "later.test"]);
    let later_id = later["project"]["id"].as_str().unwrap().to_string();
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(!knows(&b, &later_id), "b heard of it through the cut");
    // b keeps serving known projects meanwhile (its cached registry).
    let v = b.cli_json(&["project", "show", &id]);
    assert_eq!(v["tokens"].as_array().map(|t| t.len()), Some(1), "{v:#}");

    partition.restore();
    let restored = Instant::now();
    loop {
        let v = b.cli_json(&["project", "show", &id]);
        let revoked = v["tokens"].as_array().is_some_and(|t| t.is_empty());
        if revoked && knows(&b, &later_id) && !degraded(&b) {
            break;
        }
        assert!(
            restored.elapsed() < Duration::from_secs(10),
            "b still stale {:?} after reconnecting: {v:#}\n{}",
            restored.elapsed(),
            b.server_log()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    eprintln!(
        "node b caught up {:?} after the network came back",
        restored.elapsed()
    );
    let (mut c, _) = support::client::Client::starttls(b.starttls, &b.pki).await;
    assert_eq!(c.auth_plain(&id, &token).await.code, 535);
}

/// accept-and-delay in cluster mode: the release slots come from the shared windows, so three
/// nodes taking turns (round robin) release no faster together than the project's limit —
/// the k-th message to reach the upstream no earlier than k periods after the first.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn accept_and_delay_slots_are_shared_by_the_nodes() {
    const N: usize = 6;
    const PERIOD: Duration = Duration::from_millis(500);
    let c = Cluster::start().await;
    let (id, token, _) = add_project(&c.nodes[0]);
    c.nodes[0].cli_json(&[
        "project",
        "limits",
        &id,
        "--per-second",
        "2",
        "--burst",
        "1",
        "--mode",
        "accept-and-delay",
    ]);
    wait_known_everywhere(&c, &id, &token).await;
    for n in &c.nodes {
        let deadline = Instant::now() + Duration::from_secs(10);
        while n.cli_json(&["project", "limits", &id])["limits"]["mode"] != "accept-and-delay" {
            assert!(Instant::now() < deadline, "limits never reached a node");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    let start = Instant::now();
    for i in 0..N {
        let r = try_send(c.plain_front(), &id, &token, &format!("slot {i}")).await;
        assert_eq!(r.as_ref().map(|r| r.0), Some(250), "{r:?}");
    }
    let got = c.upstream.wait_for(N, Duration::from_secs(60)).await;
    assert_eq!(got.len(), N);
    let mut arrivals: Vec<Duration> = got
        .iter()
        .map(|m| m.received_at.duration_since(start))
        .collect();
    arrivals.sort();
    eprintln!("arrivals: {arrivals:?}");
    for (k, at) in arrivals.iter().enumerate() {
        assert!(
            *at >= PERIOD * k as u32,
            "message {k} reached the upstream {at:?} after the first submission, before {:?}: {arrivals:?}",
            PERIOD * k as u32
        );
    }
}

/// The panel's overview on a cluster node, in headless Chromium: every node up with its
/// listeners and heartbeat; with Redis stopped, the node says it is degraded and what that
/// means. Screenshots: target/panel-screenshots/cluster-*.png.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_panel_shows_the_cluster_and_its_degraded_state() {
    use fantoccini::Locator;
    let mut c = Cluster::start().await;
    // Node 2 serves the panel; an admin token made on node 1 logs in there (shared).
    let token = support::panel::admin_token(&c.nodes[0], "viewer");
    let base = format!("http://{}", support::panel::admin_http_addr(&c.nodes[1]));
    let (_driver, b) = support::browser::browser().await;
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        b.goto(&format!("{base}/login")).await.unwrap();
        if support::browser::submit_token(&b, &token).await.is_ok() {
            break;
        }
        // The token may not have reached node 2 yet.
        assert!(Instant::now() < deadline, "cannot log in on node 2");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let card = b.find(Locator::Css("#cluster")).await.unwrap();
    let text = card.text().await.unwrap();
    support::browser::shot(&b, "cluster-overview").await;
    for id in ["node1", "node2 (this)", "node3"] {
        assert!(text.contains(id), "{id} not in: {text}");
    }
    assert!(text.contains("shared"), "{text}");
    let up = b
        .find_all(Locator::Css("#cluster tbody .badge.ok"))
        .await
        .unwrap();
    assert_eq!(up.len(), 3, "{text}");
    assert!(!text.contains("degraded"), "{text}");

    c.redis.stop();
    c.wait_degraded(1, Duration::from_secs(15)).await;
    b.refresh().await.unwrap();
    let text = b
        .find(Locator::Css("#cluster"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    support::browser::shot(&b, "cluster-degraded").await;
    assert!(text.contains("degraded"), "{text}");
    assert!(text.contains("1/3"), "{text}");
    assert!(text.contains("unreachable"), "{text}");
}
