//! The PROXY protocol (HAProxy's v1 text and v2 binary headers) on SMTP listeners behind a
//! TCP load balancer: the balancer opens each connection with a header naming the real
//! client, and that address — not the balancer's — is the one throttles, `Received`, logs and
//! metrics see.
//!
//! A listener with `proxy_protocol = true` accepts connections only from its
//! `trusted_proxies`: anyone else could otherwise claim any client address (or skip the
//! balancer's protections), so they are closed at once. A trusted peer must send a valid
//! header within the TLS-handshake deadline, or is closed with a log line. The header is read
//! byte-exactly (nothing of the SMTP stream after it is consumed) and parsed by the `ppp`
//! crate. A v2 `LOCAL` header (the balancer's own health check) or v1 `UNKNOWN` keeps the
//! balancer's address, as the specification says.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;

use crate::config::ListenerConfig;
use crate::config::cluster::parse_cidr;

/// The v2 signature: 12 bytes no SMTP or TLS client starts with.
const V2_SIGNATURE: &[u8; 12] = b"\r\n\r\n\0\r\nQUIT\n";
/// A v1 header is at most 107 bytes, CRLF included (specification, section 2.1).
const V1_MAX: usize = 107;
/// A v2 header's address block and TLVs; HAProxy sends well under this.
const V2_MAX_PAYLOAD: usize = 1024;

#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    #[error("no PROXY header within {0:?}")]
    Timeout(Duration),
    #[error("connection closed before a complete PROXY header: {0}")]
    Io(#[from] std::io::Error),
    #[error("not a PROXY protocol header")]
    Missing,
    #[error("invalid PROXY header: {0}")]
    Invalid(String),
}

/// Which peers of a listener may (and must) send a header.
#[derive(Debug, Clone)]
pub struct ProxyPolicy {
    trusted: Vec<ipnet::IpNet>,
}

impl ProxyPolicy {
    /// `None` when the listener does not speak the PROXY protocol.
    pub fn for_listener(config: &ListenerConfig) -> Option<ProxyPolicy> {
        config.proxy_protocol.then(|| ProxyPolicy {
            // Validated when the config was loaded; an unparsable entry trusts nobody.
            trusted: config
                .trusted_proxies
                .iter()
                .filter_map(|c| parse_cidr(c))
                .collect(),
        })
    }

    pub fn trusts(&self, ip: IpAddr) -> bool {
        let ip = canonical(ip);
        self.trusted.iter().any(|n| n.contains(&ip))
    }
}

/// An IPv4 peer on a dual-stack socket shows up as `::ffff:a.b.c.d`.
fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

/// Reads the header from a trusted `peer` under `deadline`; returns the client's address.
pub async fn read_header(
    tcp: &mut TcpStream,
    peer: SocketAddr,
    deadline: Duration,
) -> Result<SocketAddr, ProxyError> {
    let bytes = tokio::time::timeout(deadline, read_raw(tcp))
        .await
        .map_err(|_| ProxyError::Timeout(deadline))??;
    client_address(&bytes, peer)
}

/// Exactly the header's bytes: v2 by its length field, v1 up to its CRLF.
async fn read_raw(tcp: &mut TcpStream) -> Result<Vec<u8>, ProxyError> {
    // 12 bytes: the v2 signature, or the start of a v1 line (the shortest, "PROXY UNKNOWN\r\n",
    // has 15).
    let mut buf = vec![0u8; 12];
    tcp.read_exact(&mut buf).await?;
    if buf.as_slice() == V2_SIGNATURE {
        let mut rest = [0u8; 4];
        tcp.read_exact(&mut rest).await?;
        buf.extend_from_slice(&rest);
        let len = usize::from(u16::from_be_bytes([rest[2], rest[3]]));
        if len > V2_MAX_PAYLOAD {
            return Err(ProxyError::Invalid(format!("v2 payload of {len} bytes")));
        }
        let start = buf.len();
        buf.resize(start + len, 0);
        tcp.read_exact(&mut buf[start..]).await?;
        return Ok(buf);
    }
    if !buf.starts_with(b"PROXY ") {
        return Err(ProxyError::Missing);
    }
    // One byte at a time: reading further would swallow what the client sends next.
    while !buf.ends_with(b"\r\n") {
        if buf.len() >= V1_MAX {
            return Err(ProxyError::Invalid("v1 line longer than 107 bytes".into()));
        }
        let mut b = [0u8; 1];
        tcp.read_exact(&mut b).await?;
        buf.push(b[0]);
    }
    Ok(buf)
}

/// The source address of a complete header (`peer` for LOCAL / UNKNOWN).
pub fn client_address(bytes: &[u8], peer: SocketAddr) -> Result<SocketAddr, ProxyError> {
    use ppp::{HeaderResult, v1, v2};
    match HeaderResult::parse(bytes) {
        HeaderResult::V2(Ok(h)) => match (h.command, h.addresses) {
            (v2::Command::Local, _) => Ok(peer),
            (_, v2::Addresses::IPv4(a)) => {
                Ok(SocketAddr::new(IpAddr::V4(a.source_address), a.source_port))
            }
            (_, v2::Addresses::IPv6(a)) => {
                Ok(SocketAddr::new(IpAddr::V6(a.source_address), a.source_port))
            }
            (_, v2::Addresses::Unspecified) => Ok(peer),
            (_, v2::Addresses::Unix(_)) => Err(ProxyError::Invalid(
                "a unix-socket source is not a client address".into(),
            )),
        },
        HeaderResult::V1(Ok(h)) => match h.addresses {
            v1::Addresses::Tcp4(a) => {
                Ok(SocketAddr::new(IpAddr::V4(a.source_address), a.source_port))
            }
            v1::Addresses::Tcp6(a) => {
                Ok(SocketAddr::new(IpAddr::V6(a.source_address), a.source_port))
            }
            v1::Addresses::Unknown => Ok(peer),
        },
        HeaderResult::V2(Err(e)) => Err(ProxyError::Invalid(format!("v2: {e}"))),
        HeaderResult::V1(Err(e)) => Err(ProxyError::Invalid(format!("v1: {e}"))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn peer() -> SocketAddr {
        "10.0.0.1:5000".parse().unwrap()
    }

    #[test]
    fn v1_headers() {
        let a = client_address(b"PROXY TCP4 192.0.2.7 10.0.0.2 41000 25\r\n", peer()).unwrap();
        assert_eq!(a, "192.0.2.7:41000".parse().unwrap());
        let a = client_address(b"PROXY TCP6 2001:db8::7 ::1 41000 25\r\n", peer()).unwrap();
        assert_eq!(a, "[2001:db8::7]:41000".parse().unwrap());
        assert_eq!(
            client_address(b"PROXY UNKNOWN\r\n", peer()).unwrap(),
            peer()
        );
        assert!(client_address(b"PROXY TCP4 nope 10.0.0.2 1 2\r\n", peer()).is_err());
    }

    #[test]
    fn v2_headers() {
        use ppp::v2::{Builder, Command, Protocol, Version};
        let src: SocketAddr = "198.51.100.9:1234".parse().unwrap();
        let dst: SocketAddr = "10.0.0.2:25".parse().unwrap();
        let h =
            Builder::with_addresses(Version::Two | Command::Proxy, Protocol::Stream, (src, dst))
                .build()
                .unwrap();
        assert_eq!(client_address(&h, peer()).unwrap(), src);
        let local =
            Builder::with_addresses(Version::Two | Command::Local, Protocol::Stream, (src, dst))
                .build()
                .unwrap();
        assert_eq!(client_address(&local, peer()).unwrap(), peer());
    }

    #[test]
    fn trust() {
        let cfg = ListenerConfig {
            address: "127.0.0.1:0".parse().unwrap(),
            mode: crate::config::ListenerMode::Starttls,
            allow_plaintext_auth: false,
            proxy_protocol: true,
            trusted_proxies: vec!["10.0.0.0/8".into(), "127.0.0.1".into()],
        };
        let p = ProxyPolicy::for_listener(&cfg).unwrap();
        assert!(p.trusts("10.1.2.3".parse().unwrap()));
        assert!(p.trusts("::ffff:127.0.0.1".parse().unwrap()));
        assert!(!p.trusts("127.0.0.2".parse().unwrap()));
    }
}
