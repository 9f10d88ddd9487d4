//! SPF as `domain verify` needs it (RFC 7208): which TXT records are SPF, the terms of a record
//! and every record it pulls in through `include:` / `redirect=`, and how many DNS-querying
//! terms evaluation costs (the 10-lookup limit, §4.6.4). Not an SPF evaluator: it answers
//! "does this policy name our upstream, and will receivers be able to evaluate it".

use std::collections::HashSet;
use std::net::IpAddr;

use super::resolver::{Answer, Dns};

/// RFC 7208 §4.6.4.
pub const LOOKUP_LIMIT: usize = 10;
/// Past this many lookups the walk stops: the verdict is already "over the limit".
const WALK_CAP: usize = 25;

pub fn is_spf(txt: &str) -> bool {
    let t = txt.trim().to_ascii_lowercase();
    t == "v=spf1" || t.starts_with("v=spf1 ")
}

/// The records of a domain's TXT set that are SPF.
pub fn spf_records(txts: &[String]) -> Vec<String> {
    txts.iter().filter(|t| is_spf(t)).cloned().collect()
}

/// One term, lowercased, with its qualifier split off (`+` when none is written).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Term {
    pub qualifier: char,
    /// e.g. `include:sendgrid.net`, `ip4:192.0.2.0/24`, `all`, `redirect=_spf.example.com`.
    pub body: String,
}

impl Term {
    fn name(&self) -> &str {
        self.body.split([':', '/', '=']).next().unwrap_or("")
    }
    fn target(&self) -> Option<&str> {
        self.body.split_once([':', '=']).map(|(_, t)| t)
    }
    /// Whether this term costs a DNS lookup (§4.6.4: include, a, mx, ptr, exists, redirect).
    pub fn is_lookup(&self) -> bool {
        matches!(
            self.name(),
            "include" | "a" | "mx" | "ptr" | "exists" | "redirect"
        )
    }
    pub fn passes(&self) -> bool {
        self.qualifier == '+'
    }
}

pub fn terms(record: &str) -> Vec<Term> {
    record
        .split_whitespace()
        .skip(1)
        .map(|t| {
            let t = t.to_ascii_lowercase();
            match t.chars().next() {
                Some(q @ ('+' | '-' | '~' | '?')) => Term {
                    qualifier: q,
                    body: t[1..].to_string(),
                },
                _ => Term {
                    qualifier: '+',
                    body: t,
                },
            }
        })
        .collect()
}

/// The `all` term of a record, if any.
pub fn all_term(record: &str) -> Option<Term> {
    terms(record).into_iter().find(|t| t.body == "all")
}

/// A record and everything it includes.
#[derive(Debug, Default)]
pub struct Walk {
    /// DNS-querying terms over the whole tree.
    pub lookups: usize,
    /// Every term of every record reached, with the domain whose record holds it.
    pub terms: Vec<(String, Term)>,
    /// Includes whose target has no usable SPF record (permerror for receivers).
    pub broken: Vec<String>,
    /// Lookups that could not be done (timeout, SERVFAIL).
    pub failed: Vec<String>,
}

/// Walks `record` (the SPF of `domain`) and the records it includes or redirects to.
pub async fn walk(dns: &Dns, domain: &str, record: &str) -> Walk {
    let mut w = Walk::default();
    let mut seen = HashSet::new();
    seen.insert(domain.to_ascii_lowercase());
    let mut stack = vec![(domain.to_ascii_lowercase(), record.to_string())];
    while let Some((owner, rec)) = stack.pop() {
        for t in terms(&rec) {
            if t.is_lookup() {
                w.lookups += 1;
            }
            let follow = matches!(t.name(), "include" | "redirect");
            let target = t.target().map(str::to_string);
            w.terms.push((owner.clone(), t));
            let Some(target) = target.filter(|_| follow) else {
                continue;
            };
            // Macros expand per message; nothing to fetch now.
            if target.contains('%') || !seen.insert(target.clone()) || w.lookups > WALK_CAP {
                continue;
            }
            match dns.txt(&target).await {
                Answer::Found(txts) => {
                    let spf = spf_records(&txts);
                    match spf.len() {
                        1 => stack.push((target, spf[0].clone())),
                        0 => w.broken.push(format!("{target} has no SPF record")),
                        n => w.broken.push(format!("{target} has {n} SPF records")),
                    }
                }
                Answer::Absent => w.broken.push(format!("{target} has no SPF record")),
                Answer::Failed(e) => w.failed.push(e),
            }
        }
    }
    w
}

/// Whether `ip` is inside an `ip4:`/`ip6:` term's network.
pub fn ip_matches(term: &Term, ip: IpAddr) -> bool {
    let (kind, rest) = match term.body.split_once(':') {
        Some((k @ ("ip4" | "ip6"), rest)) => (k, rest),
        _ => return false,
    };
    let (addr, len) = match rest.rsplit_once('/') {
        Some((a, l)) => (a, l.parse::<u32>().ok()),
        None => (rest, None),
    };
    let Ok(net) = addr.parse::<IpAddr>() else {
        return false;
    };
    match (net, ip, kind) {
        (IpAddr::V4(n), IpAddr::V4(i), "ip4") => {
            let len = len.unwrap_or(32).min(32);
            let mask = if len == 0 { 0 } else { u32::MAX << (32 - len) };
            u32::from(n) & mask == u32::from(i) & mask
        }
        (IpAddr::V6(n), IpAddr::V6(i), "ip6") => {
            let len = len.unwrap_or(128).min(128);
            let mask = if len == 0 {
                0
            } else {
                u128::MAX << (128 - len)
            };
            u128::from(n) & mask == u128::from(i) & mask
        }
        _ => false,
    }
}

/// `record` with `mechanism` added before its `all` (or `redirect=`), or at the end.
pub fn with_mechanism(record: &str, mechanism: &str) -> String {
    let mut parts: Vec<&str> = record.split_whitespace().collect();
    let at = parts
        .iter()
        .position(|p| {
            let l = p.to_ascii_lowercase();
            l.trim_start_matches(['+', '-', '~', '?']) == "all" || l.starts_with("redirect=")
        })
        .unwrap_or(parts.len());
    parts.insert(at, mechanism);
    parts.join(" ")
}

/// One record holding the mechanisms of several (for a domain that published more than one).
pub fn merged(records: &[String]) -> String {
    let mut out = vec!["v=spf1".to_string()];
    for r in records {
        for p in r.split_whitespace().skip(1) {
            let l = p.to_ascii_lowercase();
            if l.trim_start_matches(['+', '-', '~', '?']) == "all" || l.starts_with("redirect=") {
                continue;
            }
            if !out.iter().any(|o| o.eq_ignore_ascii_case(p)) {
                out.push(p.to_string());
            }
        }
    }
    out.push("~all".into());
    out.join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn terms_and_lookups() {
        let t = terms("v=spf1 include:sendgrid.net -ip4:192.0.2.1 ~all");
        assert_eq!(t.len(), 3);
        assert!(t[0].is_lookup() && t[0].passes());
        assert_eq!(t[1].qualifier, '-');
        assert!(!t[1].is_lookup());
        assert_eq!(all_term("v=spf1 +all").map(|t| t.qualifier), Some('+'));
        assert!(is_spf("V=SPF1 mx -all") && !is_spf("v=spf10"));
    }

    #[test]
    fn networks() {
        let t = |s: &str| terms(&format!("v=spf1 {s}")).remove(0);
        assert!(ip_matches(
            &t("ip4:127.0.0.0/8"),
            "127.0.0.1".parse().unwrap()
        ));
        assert!(!ip_matches(
            &t("ip4:10.0.0.1"),
            "127.0.0.1".parse().unwrap()
        ));
        assert!(ip_matches(
            &t("ip6:2001:db8::/32"),
            "2001:db8::5".parse().unwrap()
        ));
        assert!(!ip_matches(
            &t("ip6:2001:db8::/32"),
            "127.0.0.1".parse().unwrap()
        ));
    }

    #[test]
    fn suggestions() {
        assert_eq!(
            with_mechanism("v=spf1 mx ~all", "include:sendgrid.net"),
            "v=spf1 mx include:sendgrid.net ~all"
        );
        assert_eq!(
            merged(&[
                "v=spf1 mx -all".into(),
                "v=spf1 include:x.example ~all".into()
            ]),
            "v=spf1 mx include:x.example ~all"
        );
    }
}
