//! A real authoritative DNS server for tests: Debian's `nsd`, serving zone files the test
//! writes, on a free loopback port, from its own temp dir; stopped on drop.

use std::net::{TcpListener, UdpSocket};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub struct Nsd {
    pub port: u16,
    child: Option<Child>,
    dir: tempfile::TempDir,
}

/// A zone for `origin` with its SOA/NS and `records` (zone-file lines, owner names absolute).
pub fn zone(origin: &str, records: &[String]) -> String {
    let mut z = format!(
        "$ORIGIN {origin}.\n$TTL 60\n@ IN SOA ns.{origin}. admin.{origin}. 1 60 60 60 60\n@ IN NS ns.{origin}.\nns IN A 127.0.0.1\n"
    );
    for r in records {
        z.push_str(r);
        z.push('\n');
    }
    z
}

/// A port free for both UDP and TCP on 127.0.0.1.
fn free_port() -> u16 {
    for _ in 0..50 {
        let udp = UdpSocket::bind("127.0.0.1:0").expect("bind udp");
        let port = udp.local_addr().expect("addr").port();
        if TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    panic!("no free loopback port for UDP and TCP");
}

impl Nsd {
    /// Picks the port (so the relay's `[dns]` can name it) without starting the server yet.
    pub fn prepare() -> Nsd {
        Nsd {
            port: free_port(),
            child: None,
            dir: tempfile::tempdir().expect("tempdir"),
        }
    }

    /// Serves `zones` (origin, zone text). Fails the test, naming the package, when nsd is missing.
    pub fn start(&mut self, zones: &[(String, String)]) {
        let bin = ["/usr/sbin/nsd", "/usr/bin/nsd"]
            .into_iter()
            .map(PathBuf::from)
            .find(|p| p.exists())
            .unwrap_or_else(|| {
                panic!("nsd not found: install the Debian package `nsd` (scripts/test.sh does)")
            });
        let d = self.dir.path();
        let port = self.port;
        let mut conf = format!(
            "server:\n  ip-address: 127.0.0.1\n  port: {port}\n  username: \"\"\n  chroot: \"\"\n  zonesdir: \"{0}\"\n  database: \"\"\n  pidfile: \"{0}/nsd.pid\"\n  xfrdfile: \"{0}/xfrd.state\"\n  zonelistfile: \"{0}/zone.list\"\n  logfile: \"{0}/nsd.log\"\n  server-count: 1\n  verbosity: 1\nremote-control:\n  control-enable: no\n",
            d.display()
        );
        for (origin, text) in zones {
            std::fs::write(d.join(format!("{origin}.zone")), text).expect("write zone");
            conf.push_str(&format!(
                "zone:\n  name: \"{origin}\"\n  zonefile: \"{origin}.zone\"\n"
            ));
        }
        std::fs::write(d.join("nsd.conf"), conf).expect("write nsd.conf");
        let child = Command::new(bin)
            .arg("-d")
            .arg("-c")
            .arg(d.join("nsd.conf"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start nsd");
        self.child = Some(child);
        self.wait_ready();
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("nsd.log")).unwrap_or_default()
    }

    /// Ready once it accepts TCP and has loaded its zones.
    fn wait_ready(&self) {
        let start = Instant::now();
        while start.elapsed() < Duration::from_secs(20) {
            let log = self.log();
            if log.contains("nsd started") {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("nsd did not start: {}", self.log());
    }

    /// `[dns]` pointing the relay's resolver at this server, with short timeouts.
    pub fn config(&self) -> String {
        format!(
            "[dns]\nnameservers = [\"127.0.0.1:{}\"]\ntimeout_secs = 1\nattempts = 1\n",
            self.port
        )
    }
}

impl Drop for Nsd {
    fn drop(&mut self) {
        if let Some(c) = self.child.as_mut() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}
