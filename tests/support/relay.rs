//! Runs the real `smtp-relay` binary for black-box tests: a private state directory and
//! config in a temp dir, listeners on port 0 (found through `listeners.json`), a test PKI the
//! clients trust, and the CLI run against the same config.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

use super::certs::{PkiFiles, TestPki};

pub const BIN: &str = env!("CARGO_BIN_EXE_smtp-relay");

pub struct RelayOptions {
    /// `[upstream.*]` tables plus the route; default: the outbox in the state dir.
    pub upstreams: Option<String>,
    pub retry_schedule_secs: Vec<u64>,
    pub max_age_secs: u64,
    /// `queue.poll_interval_ms` (default 100).
    pub poll_interval_ms: u64,
    pub max_recipients: usize,
    pub max_message_size: usize,
    pub plain_listener: bool,
    pub command_secs: u64,
    pub data_secs: u64,
    /// Serve the metrics endpoint on a loopback port (found through `listeners.json`).
    pub metrics: bool,
    /// Extra environment for the server process (overrides `SMTP_RELAY_LOG=debug`).
    pub env: Vec<(String, String)>,
    /// TOML appended to the generated config (e.g. a `[log]` table).
    pub extra_config: String,
    /// `SMTP_RELAY_LOG` for the server process.
    pub log_level: &'static str,
    /// Where the state lives (default: `<tempdir>/state`), e.g. a small tmpfs.
    pub state_dir: Option<PathBuf>,
    pub min_free_space_mb: u64,
    /// Extra lines for the `[server]` table (e.g. `message_memory_mb = 1`).
    pub server_extra: String,
    /// `server.hostname` (default `relay.test`).
    pub hostname: &'static str,
    /// The loopback address the SMTP listeners bind (default 127.0.0.1; cluster tests run
    /// nodes on 127.0.0.2, .3, .4).
    pub bind_ip: &'static str,
    /// Extra lines for every `[[listener]]` (e.g. `proxy_protocol = true`).
    pub listener_extra: String,
    /// The server certificate's PKI (default: a new one); nodes behind one balancer share one.
    pub pki: Option<TestPki>,
}

impl Default for RelayOptions {
    fn default() -> Self {
        RelayOptions {
            upstreams: None,
            retry_schedule_secs: vec![1],
            max_age_secs: 3600,
            poll_interval_ms: 100,
            max_recipients: 10,
            max_message_size: 1024 * 1024,
            plain_listener: false,
            command_secs: 30,
            data_secs: 30,
            metrics: false,
            env: Vec::new(),
            extra_config: String::new(),
            log_level: "debug",
            state_dir: None,
            min_free_space_mb: 64,
            server_extra: String::new(),
            hostname: "relay.test",
            bind_ip: "127.0.0.1",
            listener_extra: String::new(),
            pki: None,
        }
    }
}

/// An `[upstream.test]` pointing at a test upstream on 127.0.0.1, as the default route.
pub fn smtp_upstream(port: u16, tls: &str, ca: &Path, auth: Option<(&str, &Path)>) -> String {
    let auth = match auth {
        Some((user, pw_file)) => format!(
            "auth = \"plain\"\nusername = \"{user}\"\npassword_file = \"{}\"\n",
            pw_file.display()
        ),
        None => String::new(),
    };
    format!(
        "[delivery]\ndefault_route = \"test\"\n\n{}",
        upstream_table("test", port, tls, ca, &auth)
    )
}

/// An `[upstream.<name>]` table toward a test upstream on 127.0.0.1 (implicit/starttls/none
/// TLS, no AUTH unless `extra` says so), with `extra` lines appended (limits, auth, …).
pub fn upstream_table(name: &str, port: u16, tls: &str, ca: &Path, extra: &str) -> String {
    let mut s = format!(
        "[upstream.{name}]\ntype = \"smtp\"\nhost = \"127.0.0.1\"\nport = {port}\ntls = \"{tls}\"\nca_file = \"{}\"\nconnect_timeout_secs = 5\ncommand_timeout_secs = 10\ndata_timeout_secs = 10\n",
        ca.display()
    );
    if !extra.contains("auth =") {
        s.push_str("auth = \"none\"\n");
    }
    s.push_str(extra);
    if !extra.ends_with('\n') {
        s.push('\n');
    }
    s.push('\n');
    s
}

/// The built-in `[limits]` and `[throttle]` defaults protect a production relay, but tests send
/// bursts from one IP and reuse projects: turn them off explicitly (0) unless the test sets a
/// table of its own in `extra_config` (then the defaults apply to the keys it leaves out).
fn harness_protections(extra: &str) -> String {
    let mut s = String::new();
    if !extra.contains("[limits]") {
        s.push_str("[limits]\nper_second = 0\nmax_connections = 0\n\n");
    }
    if !extra.contains("[throttle]") {
        s.push_str("[throttle]\nmax_connections_per_ip = 0\nconnections_per_ip_per_minute = 0\n\n");
    }
    // The periodic domain re-check would ask the system's resolver: tests never leave loopback.
    if !extra.contains("[dns]") {
        s.push_str("[dns]\nrecheck_secs = 0\n\n");
    }
    s
}

/// A `[delivery]` table: the default route and its fallbacks.
pub fn delivery_table(default: &str, fallbacks: &[&str]) -> String {
    format!("[delivery]\ndefault_route = \"{default}\"\ndefault_fallbacks = {fallbacks:?}\n\n")
}

pub struct Relay {
    pub dir: tempfile::TempDir,
    pub config_path: PathBuf,
    pub pki: TestPki,
    pub files: PkiFiles,
    child: Option<Child>,
    state: PathBuf,
    log_level: &'static str,
    pub starttls: SocketAddr,
    pub implicit: SocketAddr,
    pub plain: Option<SocketAddr>,
    pub metrics: Option<SocketAddr>,
    env: Vec<(String, String)>,
    /// Holds the CA file of the test upstream (`start_with_upstream`).
    upstream_ca: Option<tempfile::TempDir>,
}

impl Relay {
    /// A relay whose only upstream is a test upstream on `port` (`tls`: "starttls", "implicit"
    /// or "none"), trusting `pki`'s CA; `opts` for the rest.
    pub fn start_with_upstream(port: u16, tls: &str, pki: &TestPki, opts: RelayOptions) -> Relay {
        let ca_dir = tempfile::tempdir().expect("tempdir");
        let files = pki.write_to(ca_dir.path());
        let mut relay = Relay::start(RelayOptions {
            upstreams: Some(smtp_upstream(port, tls, &files.ca, None)),
            ..opts
        });
        relay.upstream_ca = Some(ca_dir);
        relay
    }

    pub fn start(opts: RelayOptions) -> Relay {
        let dir = tempfile::tempdir().expect("tempdir");
        let pki = opts.pki.clone().unwrap_or_else(TestPki::generate);
        let files = pki.write_to(&dir.path().join("pki"));
        let state = opts
            .state_dir
            .clone()
            .unwrap_or_else(|| dir.path().join("state"));
        let upstreams = opts.upstreams.clone().unwrap_or_else(|| {
            format!(
                "[delivery]\ndefault_route = \"outbox\"\n\n[upstream.outbox]\ntype = \"outbox\"\ndir = \"{}\"\n",
                state.join("outbox").display()
            )
        });
        let (ip, lx) = (opts.bind_ip, &opts.listener_extra);
        let plain = if opts.plain_listener {
            format!(
                "[[listener]]\naddress = \"{ip}:0\"\nmode = \"plain\"\nallow_plaintext_auth = true\n{lx}\n"
            )
        } else {
            String::new()
        };
        let config = format!(
            r#"[server]
hostname = "{hostname}"
state_dir = "{state}"
max_connections = 200
max_message_size = {size}
max_recipients = {rcpts}
shutdown_grace_secs = 5
min_free_space_mb = {min_free}
{server_extra}

[timeouts]
tls_handshake_secs = 5
command_secs = {cmd}
data_secs = {data}

[tls]
cert_file = "{cert}"
key_file = "{key}"

[[listener]]
address = "{ip}:0"
mode = "starttls"
{lx}

[[listener]]
address = "{ip}:0"
mode = "implicit"
{lx}

{plain}
[queue]
workers = 4
retry_schedule_secs = {sched:?}
max_age_secs = {age}
poll_interval_ms = {poll}

{upstreams}
{metrics}
{protections}
{extra}
"#,
            state = state.display(),
            size = opts.max_message_size,
            rcpts = opts.max_recipients,
            cmd = opts.command_secs,
            data = opts.data_secs,
            cert = files.cert.display(),
            key = files.key.display(),
            sched = opts.retry_schedule_secs,
            age = opts.max_age_secs,
            poll = opts.poll_interval_ms,
            metrics = if opts.metrics {
                "[metrics]\naddress = \"127.0.0.1:0\"\n"
            } else {
                ""
            },
            extra = opts.extra_config,
            protections = harness_protections(&opts.extra_config),
            min_free = opts.min_free_space_mb,
            server_extra = opts.server_extra,
            hostname = opts.hostname,
        );
        let config_path = dir.path().join("smtp-relay.toml");
        std::fs::write(&config_path, config).expect("write config");
        let mut relay = Relay {
            dir,
            config_path,
            pki,
            files,
            child: None,
            state,
            log_level: opts.log_level,
            starttls: "0.0.0.0:0".parse().unwrap(),
            implicit: "0.0.0.0:0".parse().unwrap(),
            plain: None,
            metrics: None,
            env: opts.env,
            upstream_ca: None,
        };
        relay.spawn();
        relay
    }

    pub fn state_dir(&self) -> PathBuf {
        self.state.clone()
    }

    /// The bound address of the listener of `mode` in `listeners.json` ("admin_http",
    /// "send_api", "metrics", …).
    pub fn listener_addr(&self, mode: &str) -> SocketAddr {
        let text = std::fs::read_to_string(self.state_dir().join("listeners.json"))
            .expect("listeners.json");
        let listeners: Value = serde_json::from_str(&text).expect("listeners.json is JSON");
        listeners
            .as_array()
            .and_then(|l| l.iter().find(|l| l["mode"] == mode))
            .and_then(|l| l["address"].as_str())
            .unwrap_or_else(|| panic!("no {mode} listener in listeners.json: {text}"))
            .parse()
            .expect("a socket address")
    }

    /// An HTTP client that trusts the test PKI (for the relay's HTTPS listeners); no redirects.
    pub fn http_client(&self) -> reqwest::Client {
        reqwest::Client::builder()
            .tls_backend_preconfigured(self.pki.client_config().as_ref().clone())
            .redirect(reqwest::redirect::Policy::none())
            .timeout(Duration::from_secs(30))
            .build()
            .expect("HTTP client")
    }

    /// Starts the server process and waits until its listeners are bound.
    pub fn spawn(&mut self) {
        let ports = self.state_dir().join("listeners.json");
        let _ = std::fs::remove_file(&ports);
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join("server.log"))
            .expect("log file");
        let child = Command::new(BIN)
            .arg("--config")
            .arg(&self.config_path)
            .arg("serve")
            .env("SMTP_RELAY_LOG", self.log_level)
            .envs(self.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("spawn smtp-relay");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok(text) = std::fs::read_to_string(&ports)
                && let Ok(Value::Array(list)) = serde_json::from_str::<Value>(&text)
            {
                for l in list {
                    let addr: SocketAddr = l["address"].as_str().unwrap().parse().unwrap();
                    match l["mode"].as_str().unwrap() {
                        "starttls" => self.starttls = addr,
                        "implicit" => self.implicit = addr,
                        "metrics" => self.metrics = Some(addr),
                        "plain" => self.plain = Some(addr),
                        // admin_http, send_api: found with `listener_addr`.
                        _ => {}
                    }
                }
                return;
            }
            if let Some(status) = self.child.as_mut().unwrap().try_wait().unwrap() {
                panic!("smtp-relay exited early ({status}):\n{}", self.server_log());
            }
            assert!(
                Instant::now() < deadline,
                "relay did not start:\n{}",
                self.server_log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn server_log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("server.log")).unwrap_or_default()
    }

    /// Waits for the server process to exit on its own; returns its status.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<std::process::ExitStatus> {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if let Some(status) = self.child.as_mut()?.try_wait().ok().flatten() {
                self.child = None;
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        None
    }

    /// SIGKILL: no chance to flush or clean up.
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// SIGTERM and wait for a clean exit; returns the exit status.
    pub fn terminate(&mut self) -> std::process::ExitStatus {
        let mut c = self.child.take().expect("running");
        unsafe {
            libc::kill(c.id() as i32, libc::SIGTERM);
        }
        c.wait().expect("wait")
    }

    /// Sends a signal to the running server (e.g. `libc::SIGHUP` to reload).
    pub fn signal(&self, sig: i32) {
        let c = self.child.as_ref().expect("running");
        unsafe {
            libc::kill(c.id() as i32, sig);
        }
    }

    /// Waits until the server log has `n` lines containing `needle`; returns the log.
    pub fn wait_log(&self, needle: &str, n: usize, timeout: Duration) -> String {
        let deadline = Instant::now() + timeout;
        loop {
            let log = self.server_log();
            if log.lines().filter(|l| l.contains(needle)).count() >= n {
                return log;
            }
            assert!(
                Instant::now() < deadline,
                "{needle:?} did not appear {n} time(s) in the server log:\n{log}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn cli(&self, args: &[&str]) -> Output {
        Command::new(BIN)
            .arg("--config")
            .arg(&self.config_path)
            .args(args)
            .output()
            .expect("run cli")
    }

    /// Runs a CLI command with --json and returns its parsed output (panics on failure).
    pub fn cli_json(&self, args: &[&str]) -> Value {
        let mut all = args.to_vec();
        all.push("--json");
        let out = self.cli(&all);
        assert!(
            out.status.success(),
            "smtp-relay {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).expect("json output")
    }

    /// Creates a project; returns (project id, token).
    pub fn add_project(&self, name: &str, domains: &[&str]) -> (String, String) {
        let mut args = vec!["project", "add", name];
        for d in domains {
            args.push("--domain");
            args.push(d);
        }
        let v = self.cli_json(&args);
        (
            v["project"]["id"].as_str().unwrap().to_string(),
            v["token"].as_str().unwrap().to_string(),
        )
    }

    /// Submits one message over STARTTLS as `from` (header From too); returns the queue id.
    pub async fn submit(&self, id: &str, token: &str, from: &str, rcpts: &[&str]) -> String {
        let mut c = super::client::Client::logged_in(self.starttls, &self.pki, id, token).await;
        let r = c
            .send(
                from,
                rcpts,
                &super::client::plain_message(from, rcpts[0], "hello", "Your code is 4711\r\n"),
            )
            .await;
        assert_eq!(r.code, 250, "{r:?}");
        r.queued_id()
    }

    /// Polls `smtp-relay queue show <id>` until its state is one of `states`.
    pub fn wait_state(&self, id: &str, states: &[&str], timeout: Duration) -> Value {
        let deadline = Instant::now() + timeout;
        loop {
            let v = self.cli_json(&["queue", "show", id]);
            if states.contains(&v["state"].as_str().unwrap_or("")) {
                return v;
            }
            assert!(
                Instant::now() < deadline,
                "message {id} never reached {states:?}; last: {v:#}\n{}",
                self.server_log()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.kill9();
    }
}
