//! The `[cluster]` table (several relays sharing their registry and limits through Redis) and
//! the PROXY-protocol keys of a `[[listener]]`. Kept apart from `config.rs` so cluster mode is
//! one file to read; the checks here run from `Config::validate` and name the key they refuse.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// `[cluster]`: absent means one embedded node, exactly as without this table.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClusterConfig {
    /// `redis://host:port[/db]` or `rediss://…` (TLS). No password in the URL: use
    /// `password_file` / `password_env`.
    pub redis_url: String,
    /// Redis ACL user (AUTH user password); none: the default user.
    #[serde(default)]
    pub username: Option<String>,
    #[serde(default)]
    pub password_file: Option<PathBuf>,
    #[serde(default)]
    pub password_env: Option<String>,
    /// `rediss://` only: the CA (PEM) that signed Redis's certificate, when it is a private
    /// one; without it the public web roots are trusted.
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
    /// This node's name in `cluster status` (default: `server.hostname`). Unique per node.
    #[serde(default)]
    pub node_id: Option<String>,
    /// How many nodes share the limits: with Redis unreachable each node enforces 1/nodes of
    /// every project limit on its own.
    pub nodes: u32,
    /// Seconds between heartbeats; a node silent for three of them is shown as gone.
    #[serde(default = "d_heartbeat")]
    pub heartbeat_secs: u64,
    /// Seconds between full reconciliations of the registry (besides pub/sub invalidation).
    #[serde(default = "d_reconcile")]
    pub reconcile_secs: u64,
    /// Prefix of every Redis key and channel, so several clusters can share one Redis.
    #[serde(default = "d_prefix")]
    pub key_prefix: String,
    /// Deadline of each Redis command, in milliseconds (a slow Redis must not hold a session).
    #[serde(default = "d_command_ms")]
    pub command_timeout_ms: u64,
}

fn d_heartbeat() -> u64 {
    5
}
fn d_reconcile() -> u64 {
    30
}
fn d_prefix() -> String {
    "smtp-relay".into()
}
fn d_command_ms() -> u64 {
    500
}

impl ClusterConfig {
    /// The first invalid key and why, or `None`.
    pub fn problem(&self) -> Option<(&'static str, String)> {
        let url = self.redis_url.as_str();
        if !(url.starts_with("redis://") || url.starts_with("rediss://")) {
            return Some((
                "redis_url",
                format!("{url:?} is not a redis:// or rediss:// URL"),
            ));
        }
        let rest = url.split_once("://").map(|(_, r)| r).unwrap_or("");
        let authority = rest.split('/').next().unwrap_or("");
        if authority.contains('@') {
            return Some((
                "redis_url",
                "must not carry credentials; use username and password_file or password_env".into(),
            ));
        }
        if authority.is_empty() {
            return Some(("redis_url", "names no host".into()));
        }
        if redis::parse_redis_url(url).is_none() {
            return Some(("redis_url", format!("{url:?} is not a valid URL")));
        }
        if self.password_file.is_some() && self.password_env.is_some() {
            return Some((
                "password_file",
                "give password_file or password_env, not both".into(),
            ));
        }
        if let Some(ca) = &self.ca_file {
            if !url.starts_with("rediss://") {
                return Some(("ca_file", "only for a rediss:// (TLS) redis_url".into()));
            }
            if let Err(e) = std::fs::metadata(ca) {
                return Some(("ca_file", format!("{}: {e}", ca.display())));
            }
        }
        if self.nodes == 0 {
            return Some((
                "nodes",
                "must be at least 1 (how many nodes share the limits)".into(),
            ));
        }
        if self.heartbeat_secs == 0 {
            return Some(("heartbeat_secs", "must be at least 1".into()));
        }
        if self.reconcile_secs == 0 {
            return Some(("reconcile_secs", "must be at least 1".into()));
        }
        if self.command_timeout_ms == 0 {
            return Some(("command_timeout_ms", "must be at least 1".into()));
        }
        if self.key_prefix.is_empty()
            || !self
                .key_prefix
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
        {
            return Some((
                "key_prefix",
                "must be letters, digits, '-', '_' or '.'".into(),
            ));
        }
        if let Some(id) = &self.node_id
            && (id.is_empty() || id.contains(|c: char| c.is_whitespace() || c.is_control()))
        {
            return Some(("node_id", "must be a name without spaces".into()));
        }
        None
    }
}

/// A CIDR such as `10.0.0.0/8` or a single address, parsed once.
pub fn parse_cidr(s: &str) -> Option<ipnet::IpNet> {
    s.parse::<ipnet::IpNet>()
        .ok()
        .or_else(|| s.parse::<std::net::IpAddr>().ok().map(ipnet::IpNet::from))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(url: &str) -> ClusterConfig {
        ClusterConfig {
            redis_url: url.into(),
            username: None,
            password_file: None,
            password_env: None,
            ca_file: None,
            node_id: None,
            nodes: 3,
            heartbeat_secs: 5,
            reconcile_secs: 30,
            key_prefix: d_prefix(),
            command_timeout_ms: 500,
        }
    }

    #[test]
    fn urls() {
        assert!(cfg("redis://127.0.0.1:6379").problem().is_none());
        assert!(cfg("rediss://redis.example:6380/2").problem().is_none());
        assert_eq!(cfg("http://x").problem().unwrap().0, "redis_url");
        assert_eq!(cfg("redis://u:p@x").problem().unwrap().0, "redis_url");
        let mut c = cfg("redis://x");
        c.nodes = 0;
        assert_eq!(c.problem().unwrap().0, "nodes");
    }

    #[test]
    fn cidrs() {
        assert!(parse_cidr("10.0.0.0/8").is_some());
        assert!(parse_cidr("127.0.0.1").is_some());
        assert!(parse_cidr("::1").is_some());
        assert!(parse_cidr("10.0.0.0/33").is_none());
        assert!(parse_cidr("nope").is_none());
    }
}
