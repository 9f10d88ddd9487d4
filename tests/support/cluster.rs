//! Real Redis and HAProxy for the cluster tests: each started on a free loopback port with a
//! private directory, stopped (killed) on drop. Missing binaries fail the test naming the
//! Debian package (scripts/test-packages.txt).

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

fn require(cmd: &str, package: &str) {
    let found = Command::new("sh")
        .arg("-c")
        .arg(format!("command -v {cmd}"))
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false);
    assert!(
        found,
        "`{cmd}` not found: install the Debian package `{package}` (scripts/test-packages.txt)"
    );
}

/// A free TCP port on 127.0.0.1 (bound then released: the caller binds it right away).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

fn wait_port(addr: SocketAddr, what: &str, log: &std::path::Path) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_err() {
        assert!(
            Instant::now() < deadline,
            "{what} did not listen on {addr}:\n{}",
            std::fs::read_to_string(log).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

pub struct RedisServer {
    pub port: u16,
    dir: tempfile::TempDir,
    child: Option<Child>,
}

impl RedisServer {
    pub fn start() -> RedisServer {
        require("redis-server", "redis-server");
        let mut r = RedisServer {
            port: free_port(),
            dir: tempfile::tempdir().expect("tempdir"),
            child: None,
        };
        r.spawn();
        r
    }

    /// Redis on TLS only (no plain port), with the ACL user `relay` (password `password`)
    /// and the default user off — as a managed or hardened Redis is.
    pub fn start_tls(files: &super::certs::PkiFiles, password: &str) -> RedisServer {
        require("redis-server", "redis-server");
        let port = free_port();
        let dir = tempfile::tempdir().expect("tempdir");
        let log = dir.path().join("redis.log");
        let child = Command::new("redis-server")
            .args(["--bind", "127.0.0.1", "--port", "0", "--tls-port"])
            .arg(port.to_string())
            .arg("--tls-cert-file")
            .arg(&files.cert)
            .arg("--tls-key-file")
            .arg(&files.key)
            .arg("--tls-ca-cert-file")
            .arg(&files.ca)
            .args([
                "--tls-auth-clients",
                "no",
                "--save",
                "",
                "--appendonly",
                "no",
            ])
            .args(["--user", "default", "off", "--user", "relay", "on"])
            .arg(format!(">{password}"))
            .args(["~*", "&*", "+@all", "--dir"])
            .arg(dir.path())
            .arg("--logfile")
            .arg(&log)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn redis-server");
        wait_port(
            SocketAddr::from(([127, 0, 0, 1], port)),
            "redis-server (TLS)",
            &log,
        );
        RedisServer {
            port,
            dir,
            child: Some(child),
        }
    }

    pub fn tls_url(&self) -> String {
        format!("rediss://127.0.0.1:{}", self.port)
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    fn log(&self) -> PathBuf {
        self.dir.path().join("redis.log")
    }

    /// (Re)starts on the same port, with no persistence: a restarted Redis is empty, as one
    /// that lost its data would be.
    pub fn spawn(&mut self) {
        let child = Command::new("redis-server")
            .args(["--bind", "127.0.0.1", "--port"])
            .arg(self.port.to_string())
            .args(["--save", "", "--appendonly", "no", "--dir"])
            .arg(self.dir.path())
            .arg("--logfile")
            .arg(self.log())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn redis-server");
        self.child = Some(child);
        wait_port(
            SocketAddr::from(([127, 0, 0, 1], self.port)),
            "redis-server",
            &self.log(),
        );
    }

    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// `redis-cli`-free command: one RESP request over a plain socket, the raw reply.
    pub fn command(&self, args: &[&str]) -> String {
        use std::io::{Read, Write};
        let mut s = TcpStream::connect(("127.0.0.1", self.port)).expect("connect redis");
        s.set_read_timeout(Some(Duration::from_secs(5))).ok();
        let mut req = format!("*{}\r\n", args.len());
        for a in args {
            req.push_str(&format!("${}\r\n{a}\r\n", a.len()));
        }
        s.write_all(req.as_bytes()).expect("write redis");
        let mut buf = [0u8; 65536];
        let n = s.read(&mut buf).unwrap_or(0);
        String::from_utf8_lossy(&buf[..n]).to_string()
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.stop();
    }
}

/// HAProxy in TCP mode, round robin, `send-proxy-v2` toward each backend.
pub struct Haproxy {
    pub frontends: Vec<SocketAddr>,
    dir: tempfile::TempDir,
    child: Child,
}

impl Haproxy {
    /// One frontend on 127.0.0.1 per entry of `backends` (each a list of node addresses).
    pub fn start(backends: &[Vec<SocketAddr>]) -> Haproxy {
        require("haproxy", "haproxy");
        let dir = tempfile::tempdir().expect("tempdir");
        let mut cfg = String::from(
            "global\n  maxconn 2000\n\ndefaults\n  mode tcp\n  timeout connect 2s\n  timeout client 60s\n  timeout server 60s\n  retries 3\n  option redispatch\n\n",
        );
        let mut frontends = Vec::new();
        for (i, nodes) in backends.iter().enumerate() {
            let port = free_port();
            let addr = SocketAddr::from(([127, 0, 0, 1], port));
            frontends.push(addr);
            cfg.push_str(&format!(
                "frontend f{i}\n  bind {addr}\n  default_backend b{i}\n\nbackend b{i}\n  balance roundrobin\n"
            ));
            for (j, n) in nodes.iter().enumerate() {
                // Health checks send the header too, so a dead node is taken out quickly and
                // the nodes do not log header-less probes.
                cfg.push_str(&format!(
                    "  server n{j} {n} send-proxy-v2 check check-send-proxy inter 300 fall 1 rise 1\n"
                ));
            }
            cfg.push('\n');
        }
        let path = dir.path().join("haproxy.cfg");
        std::fs::write(&path, cfg).expect("write haproxy.cfg");
        let log = dir.path().join("haproxy.log");
        let child = Command::new("haproxy")
            .arg("-db")
            .arg("-f")
            .arg(&path)
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).expect("log"))
            .spawn()
            .expect("spawn haproxy");
        for f in &frontends {
            wait_port(*f, "haproxy", &log);
        }
        Haproxy {
            frontends,
            dir,
            child,
        }
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("haproxy.log")).unwrap_or_default()
    }
}

impl Drop for Haproxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A TCP forwarder in front of Redis that a test can cut — every open connection shut down,
/// new ones closed at once — and restore: one node's network partition while the others
/// keep talking to Redis.
pub struct Partition {
    pub port: u16,
    cut: std::sync::Arc<std::sync::atomic::AtomicBool>,
    open: std::sync::Arc<std::sync::Mutex<Vec<TcpStream>>>,
}

impl Partition {
    pub fn start(redis_port: u16) -> Partition {
        use std::sync::atomic::Ordering;
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind forwarder");
        let port = listener.local_addr().expect("addr").port();
        let p = Partition {
            port,
            cut: Default::default(),
            open: Default::default(),
        };
        let (cut, open) = (p.cut.clone(), p.open.clone());
        std::thread::spawn(move || {
            for client in listener.incoming() {
                let Ok(client) = client else { continue };
                if cut.load(Ordering::SeqCst) {
                    continue; // dropped: closed at once
                }
                let Ok(server) = TcpStream::connect(("127.0.0.1", redis_port)) else {
                    continue;
                };
                let pairs = [
                    (client.try_clone(), server.try_clone()),
                    (server.try_clone(), client.try_clone()),
                ];
                for (from, to) in pairs {
                    if let (Ok(mut from), Ok(mut to)) = (from, to) {
                        std::thread::spawn(move || {
                            let _ = std::io::copy(&mut from, &mut to);
                            let _ = to.shutdown(std::net::Shutdown::Both);
                        });
                    }
                }
                let mut open = open.lock().unwrap();
                open.push(client);
                open.push(server);
            }
        });
        p
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    pub fn cut(&self) {
        self.cut.store(true, std::sync::atomic::Ordering::SeqCst);
        for s in self.open.lock().unwrap().drain(..) {
            let _ = s.shutdown(std::net::Shutdown::Both);
        }
    }

    pub fn restore(&self) {
        self.cut.store(false, std::sync::atomic::Ordering::SeqCst);
    }
}
