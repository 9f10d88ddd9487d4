//! Per-check cost of the rate limiter: the local governor limiter (single node) against the
//! shared one of cluster mode (one Lua script per check on a real Redis over loopback TCP).
//!
//! Run: `cargo bench --bench cluster_limiter` (optionally `-- <ops>`). Starts its own
//! `redis-server` (Debian package `redis-server`) on a free loopback port and stops it.
//! Every project has five windows, checked and taken together, as at the end of DATA.

use std::hint::black_box;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use smtp_relay::cluster::{Cluster, RateMode};
use smtp_relay::config::cluster::ClusterConfig;
use smtp_relay::config::{Config, LimitMode, LimitsConfig};
use smtp_relay::policy::limits::{
    Cost, Defaults, Effective, LimitOverride, Limiter, MessageLimits,
};
use smtp_relay::policy::projects::Registry;
use smtp_relay::secret::ServerSecret;
use smtp_relay::store::Store;

const PROJECTS: usize = 1_000;

fn report(what: &str, ops: usize, secs: f64) {
    println!(
        "{what:<52} {:>10.0} checks/s  {:>8.2} µs/check  ({ops} checks)",
        ops as f64 / secs,
        secs * 1e6 / ops as f64
    );
}

struct RedisProcess(std::process::Child);
impl Drop for RedisProcess {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn main() {
    let ops: usize = std::env::args()
        .skip(1)
        .find_map(|a| a.parse().ok())
        .unwrap_or(20_000);
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port");
    let redis = Command::new("redis-server")
        .args(["--bind", "127.0.0.1", "--save", "", "--port"])
        .arg(port.to_string())
        .stdout(Stdio::null())
        .spawn()
        .map(RedisProcess)
        .unwrap_or_else(|e| panic!("redis-server (Debian package redis-server): {e}"));
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "redis-server did not start");
        std::thread::sleep(Duration::from_millis(50));
    }

    let dir = tempfile::tempdir().expect("tempdir");
    let store = Store::open(dir.path()).expect("store");
    let limits = LimitsConfig {
        per_second: Some(1_000),
        burst: Some(2_000),
        per_minute: Some(10_000),
        per_hour: Some(100_000),
        per_day: Some(1_000_000),
        recipients_per_day: Some(2_000_000),
        max_connections: Some(50),
        mode: LimitMode::Reject,
    };
    let defaults = Defaults {
        limits: limits.clone(),
        message: MessageLimits {
            max_size: 25 << 20,
            max_recipients: 100,
        },
    };
    let effective = Effective::resolve(&defaults, &LimitOverride::default());
    let limiter = Limiter::new(store.clone(), defaults);
    let projects: Vec<String> = (0..PROJECTS).map(|i| format!("prj_{i:010}")).collect();

    // Local: governor, five windows, the long ones written to sled (as at DATA).
    for p in &projects {
        black_box(limiter.check(p, Cost::message(1)).expect("check"));
    }
    let t = Instant::now();
    for i in 0..ops {
        black_box(
            limiter
                .acquire(&projects[i % PROJECTS], Cost::message(1))
                .expect("acquire"),
        );
    }
    report(
        "local governor acquire (single node)",
        ops,
        t.elapsed().as_secs_f64(),
    );

    let mut config = Config::builtin().expect("built-in config");
    config.cluster = Some(ClusterConfig {
        redis_url: format!("redis://127.0.0.1:{port}"),
        username: None,
        password_file: None,
        password_env: None,
        ca_file: None,
        node_id: Some("bench".into()),
        nodes: 3,
        heartbeat_secs: 5,
        reconcile_secs: 30,
        key_prefix: "bench".into(),
        command_timeout_ms: 2_000,
    });
    let secret = ServerSecret::load(None, dir.path()).expect("secret");
    let registry = Registry::new(store.clone(), secret.clone());
    let cluster = Cluster::new(&config, store, registry, &secret)
        .expect("cluster")
        .expect("configured");
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async {
        // Warm-up: connects and loads the script (EVALSHA from then on).
        for p in projects.iter().take(100) {
            cluster
                .rate(p, &effective, Cost::message(1), RateMode::Take)
                .await;
        }
        let t = Instant::now();
        for i in 0..ops {
            black_box(
                cluster
                    .rate(
                        &projects[i % PROJECTS],
                        &effective,
                        Cost::message(1),
                        RateMode::Take,
                    )
                    .await,
            );
        }
        report(
            "Redis Lua take, 1 in flight (latency)",
            ops,
            t.elapsed().as_secs_f64(),
        );
        for inflight in [8usize, 64] {
            let t = Instant::now();
            let mut tasks = Vec::new();
            for k in 0..inflight {
                let (cluster, projects, effective) =
                    (cluster.clone(), projects.clone(), effective.clone());
                tasks.push(tokio::spawn(async move {
                    for i in 0..ops / inflight {
                        let p = &projects[(i * inflight + k) % PROJECTS];
                        black_box(
                            cluster
                                .rate(p, &effective, Cost::message(1), RateMode::Take)
                                .await,
                        );
                    }
                }));
            }
            for task in tasks {
                task.await.expect("task");
            }
            report(
                &format!("Redis Lua take, {inflight} in flight (throughput)"),
                ops / inflight * inflight,
                t.elapsed().as_secs_f64(),
            );
        }
        assert!(!cluster.is_degraded(), "Redis failed during the benchmark");
    });
    drop(redis);
}
