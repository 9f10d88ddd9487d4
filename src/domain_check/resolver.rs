//! The DNS lookups of a domain check: a hickory resolver built from `[dns]` (the system's
//! resolver by default, `nameservers` to override) and answers sorted into found / absent /
//! could-not-check. A timeout or SERVFAIL must never read as "no record", or a dead resolver
//! would turn into a list of wrong instructions; so only NXDOMAIN and NODATA count as absent.

use std::net::IpAddr;
use std::time::Duration;

use hickory_resolver::TokioResolver;
use hickory_resolver::config::{NameServerConfig, ResolverConfig};
use hickory_resolver::net::runtime::TokioRuntimeProvider;
use hickory_resolver::proto::rr::RData;

use crate::config::DnsConfig;

/// The outcome of one lookup.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Answer<T> {
    Found(T),
    /// NXDOMAIN, or the name exists without records of that type.
    Absent,
    /// Timeout, SERVFAIL, refused, unreachable: nothing can be concluded.
    Failed(String),
}

#[derive(Debug, thiserror::Error)]
pub enum DnsSetupError {
    #[error("cannot read the system's resolver configuration (set [dns] nameservers): {0}")]
    System(String),
    #[error("dns.nameservers: {0}")]
    Nameservers(String),
    #[error("cannot build the DNS resolver: {0}")]
    Build(String),
}

#[derive(Clone)]
pub struct Dns {
    resolver: TokioResolver,
    /// Bound on one lookup, retries included; hickory has its own, this is the backstop.
    deadline: Duration,
}

impl std::fmt::Debug for Dns {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Dns")
            .field("deadline", &self.deadline)
            .finish()
    }
}

impl Dns {
    pub fn new(config: &DnsConfig) -> Result<Dns, DnsSetupError> {
        let addrs = config
            .nameserver_addrs()
            .map_err(DnsSetupError::Nameservers)?;
        let mut builder = if addrs.is_empty() {
            TokioResolver::builder_tokio().map_err(|e| DnsSetupError::System(e.to_string()))?
        } else {
            let mut rc = ResolverConfig::default();
            for a in addrs {
                let mut ns = NameServerConfig::udp_and_tcp(a.ip());
                for c in &mut ns.connections {
                    c.port = a.port();
                }
                rc.add_name_server(ns);
            }
            TokioResolver::builder_with_config(rc, TokioRuntimeProvider::default())
        };
        let timeout = Duration::from_secs(config.timeout_secs);
        let opts = builder.options_mut();
        opts.timeout = timeout;
        opts.attempts = config.attempts;
        // Names are looked up fully qualified: no search list.
        opts.ndots = 0;
        let resolver = builder
            .build()
            .map_err(|e| DnsSetupError::Build(e.to_string()))?;
        Ok(Dns {
            resolver,
            deadline: timeout * (config.attempts as u32 + 1) + Duration::from_secs(1),
        })
    }

    /// The TXT records at `name`, each one's character-strings joined (RFC 7208 §3.3).
    pub async fn txt(&self, name: &str) -> Answer<Vec<String>> {
        let fqdn = fqdn(name);
        match tokio::time::timeout(self.deadline, self.resolver.txt_lookup(fqdn.as_str())).await {
            Err(_) => Answer::Failed(format!("{fqdn}: no answer within {:?}", self.deadline)),
            Ok(Err(e)) if e.is_no_records_found() => Answer::Absent,
            Ok(Err(e)) => Answer::Failed(format!("{fqdn}: {e}")),
            Ok(Ok(lookup)) => {
                let mut out = Vec::new();
                for r in lookup.answers() {
                    if let RData::TXT(txt) = &r.data {
                        let mut joined = Vec::new();
                        for part in txt.txt_data.iter() {
                            joined.extend_from_slice(part);
                        }
                        out.push(String::from_utf8_lossy(&joined).into_owned());
                    }
                }
                if out.is_empty() {
                    Answer::Absent
                } else {
                    Answer::Found(out)
                }
            }
        }
    }

    /// The addresses of `host` (itself when it is an address literal).
    pub async fn ips(&self, host: &str) -> Answer<Vec<IpAddr>> {
        if let Ok(ip) = host.trim_matches(['[', ']']).parse::<IpAddr>() {
            return Answer::Found(vec![ip]);
        }
        let fqdn = fqdn(host);
        match tokio::time::timeout(self.deadline, self.resolver.lookup_ip(fqdn.as_str())).await {
            Err(_) => Answer::Failed(format!("{fqdn}: no answer within {:?}", self.deadline)),
            Ok(Err(e)) if e.is_no_records_found() => Answer::Absent,
            Ok(Err(e)) => Answer::Failed(format!("{fqdn}: {e}")),
            Ok(Ok(l)) => {
                let ips: Vec<IpAddr> = l.iter().collect();
                if ips.is_empty() {
                    Answer::Absent
                } else {
                    Answer::Found(ips)
                }
            }
        }
    }
}

fn fqdn(name: &str) -> String {
    let n = name.trim().to_ascii_lowercase();
    if n.ends_with('.') { n } else { format!("{n}.") }
}
