//! Sending-domain verification: looks up a domain's DKIM, SPF and DMARC records with a real
//! resolver and compares them with what the relay will do (its DKIM keys, the upstreams of the
//! routes that carry the domain's mail). Each finding says in plain words what is wrong and the
//! exact record to publish; the verdict sums them up. It knows nothing of projects or the
//! admin socket: `admin/domain.rs` gathers the keys and upstreams and calls [`verify`].

pub mod dmarc;
pub mod resolver;
pub mod spf;

use serde::Serialize;

use crate::config::{UpstreamConfig, UpstreamKind};
use crate::transform::dkim_keys::{KeyInfo, KeyState, known_spf_include, quote_txt};
use resolver::{Answer, Dns};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    Ok,
    /// Mail goes out, with a named risk.
    Warning,
    /// Receivers will fail this check for the relay's mail.
    Error,
    /// The lookup failed (timeout, SERVFAIL): nothing is concluded.
    CouldNotCheck,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Verdict {
    Verified,
    Partial,
    Failing,
    /// Some lookup failed and nothing else failed: never reported as verified.
    CouldNotCheck,
}

impl Verdict {
    pub fn as_str(self) -> &'static str {
        match self {
            Verdict::Verified => "verified",
            Verdict::Partial => "partial",
            Verdict::Failing => "failing",
            Verdict::CouldNotCheck => "could_not_check",
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct Finding {
    /// dkim | spf | dmarc
    pub check: &'static str,
    pub status: Status,
    pub message: String,
    /// The zone-file line to publish (or to publish instead) when something is missing or wrong.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub publish: Option<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub domain: String,
    pub verdict: Verdict,
    pub checked_at: u64,
    pub findings: Vec<Finding>,
}

impl Report {
    /// The worst status among the findings of `check` (dkim, spf, dmarc).
    pub fn check_status(&self, check: &str) -> Status {
        let mut worst = Status::Ok;
        for f in self.findings.iter().filter(|f| f.check == check) {
            let rank = |s: Status| match s {
                Status::Ok => 0,
                Status::Warning => 1,
                Status::CouldNotCheck => 2,
                Status::Error => 3,
            };
            if rank(f.status) > rank(worst) {
                worst = f.status;
            }
        }
        worst
    }
}

/// The last report of each domain, from the server's periodic re-check.
#[derive(Debug, Clone, Default)]
pub struct LastReports(
    std::sync::Arc<std::sync::RwLock<std::collections::BTreeMap<String, Report>>>,
);

impl LastReports {
    pub fn get(&self, domain: &str) -> Option<Report> {
        self.0
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(domain)
            .cloned()
    }

    /// Stores `report`; returns the verdict it replaces.
    pub fn put(&self, report: Report) -> Option<Verdict> {
        self.0
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .insert(report.domain.clone(), report)
            .map(|r| r.verdict)
    }
}

/// An upstream that may carry the domain's mail (any upstream of an owner's route).
#[derive(Debug, Clone)]
pub struct Carrier {
    pub name: String,
    pub upstream: UpstreamConfig,
}

struct Findings(Vec<Finding>);

impl Findings {
    fn add(
        &mut self,
        check: &'static str,
        status: Status,
        message: String,
        publish: Option<String>,
    ) {
        self.0.push(Finding {
            check,
            status,
            message,
            publish,
        });
    }
}

/// Checks `domain` against the relay's `keys` for it and the upstreams that carry its mail.
pub async fn verify(dns: &Dns, domain: &str, keys: &[KeyInfo], carriers: &[Carrier]) -> Report {
    let domain = domain.trim().trim_end_matches('.').to_ascii_lowercase();
    let mut f = Findings(Vec::new());
    let dkim_aligned = check_dkim(dns, &domain, keys, &mut f).await;
    let spf = check_spf(dns, &domain, carriers, &mut f).await;
    check_dmarc(dns, &domain, dkim_aligned, &spf, &mut f).await;
    let worst = |s: Status| f.0.iter().any(|x| x.status == s);
    let verdict = if worst(Status::Error) {
        Verdict::Failing
    } else if worst(Status::CouldNotCheck) {
        Verdict::CouldNotCheck
    } else if worst(Status::Warning) {
        Verdict::Partial
    } else {
        Verdict::Verified
    };
    Report {
        domain,
        verdict,
        checked_at: std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0),
        findings: f.0,
    }
}

/// Splits a DKIM record into its tags (whitespace inside values removed, RFC 6376 §3.2).
fn dkim_tags(record: &str) -> Vec<(String, String)> {
    record
        .split(';')
        .filter_map(|p| p.split_once('='))
        .map(|(k, v)| {
            (
                k.trim().to_ascii_lowercase(),
                v.chars().filter(|c| !c.is_whitespace()).collect(),
            )
        })
        .collect()
}

/// Returns whether DKIM can align: an active key whose record is published as it should be.
async fn check_dkim(dns: &Dns, domain: &str, keys: &[KeyInfo], f: &mut Findings) -> bool {
    let mut aligned = false;
    if !keys.iter().any(|k| k.state == KeyState::Active) {
        let next = if keys.is_empty() {
            format!(
                "`smtp-relay dkim keygen --domain {domain}`, publish its record, then activate it"
            )
        } else {
            format!(
                "publish a pending key's record, then `smtp-relay dkim activate {domain} <selector>`"
            )
        };
        f.add(
            "dkim",
            Status::Warning,
            format!("no active DKIM key for {domain}: its mail leaves unsigned, so DMARC can pass only through SPF alignment; {next}"),
            None,
        );
    }
    for k in keys {
        let name = k.dns_name();
        let role = k.state.as_str();
        // A wrong or missing record of the signing key fails every message; of another key, not yet.
        let bad = if k.state == KeyState::Active {
            Status::Error
        } else {
            Status::Warning
        };
        let consequence = match k.state {
            KeyState::Active => "receivers cannot verify the relay's signatures (DKIM fails)",
            KeyState::Pending => "do not activate this key until it is published",
            KeyState::Retiring => {
                "mail it signed recently no longer verifies; keep it published until the retirement is done"
            }
        };
        let txts = match dns.txt(&name).await {
            Answer::Failed(e) => {
                f.add(
                    "dkim",
                    Status::CouldNotCheck,
                    format!("could not check selector {} ({role}): {e}", k.selector),
                    None,
                );
                continue;
            }
            Answer::Absent => Vec::new(),
            Answer::Found(t) => t,
        };
        let records: Vec<Vec<(String, String)>> = txts
            .iter()
            .map(|t| dkim_tags(t))
            .filter(|tags| tags.iter().any(|(n, _)| n == "p"))
            .collect();
        let Some(tags) = records.first() else {
            f.add(
                "dkim",
                bad,
                format!(
                    "selector {} ({role}): no DKIM record at {name}: {consequence}",
                    k.selector
                ),
                Some(k.txt_record()),
            );
            continue;
        };
        if records.len() > 1 {
            f.add(
                "dkim",
                bad,
                format!("selector {} ({role}): {} DKIM records at {name}; receivers treat that as an error: keep only this one", k.selector, records.len()),
                Some(k.txt_record()),
            );
            continue;
        }
        let tag = |n: &str| tags.iter().find(|(k, _)| k == n).map(|(_, v)| v.as_str());
        let p = tag("p").unwrap_or("");
        let kk = tag("k").unwrap_or("rsa").to_ascii_lowercase();
        if p.is_empty() {
            f.add("dkim", bad, format!("selector {} ({role}): the record at {name} has an empty p= (key revoked): {consequence}", k.selector), Some(k.txt_record()));
        } else if p != k.public_key {
            f.add("dkim", bad, format!("selector {} ({role}): the p= at {name} is not the relay's public key for this selector: {consequence}", k.selector), Some(k.txt_record()));
        } else if kk != k.algorithm.dns_k() {
            f.add("dkim", bad, format!("selector {} ({role}): the record at {name} says k={kk}, the key is {}: {consequence}", k.selector, k.algorithm.dns_k()), Some(k.txt_record()));
        } else {
            if k.state == KeyState::Active {
                aligned = true;
            }
            let what = match k.state {
                KeyState::Active => "signs outgoing mail",
                KeyState::Pending => "ready to activate",
                KeyState::Retiring => {
                    "still published; remove it with the key when the retirement is done"
                }
            };
            f.add(
                "dkim",
                Status::Ok,
                format!(
                    "selector {} ({role}, {}): record published and matches ({what})",
                    k.selector,
                    k.algorithm.dns_k()
                ),
                None,
            );
        }
    }
    aligned
}

/// What the SPF record must contain for one carrier, and whether the carrier keeps the
/// domain's envelope sender (so SPF can align).
enum Expect {
    Include {
        include: String,
        name: String,
        own_envelope: bool,
    },
    Host(String),
}

fn expectation(c: &Carrier) -> Option<Expect> {
    let u = &c.upstream;
    if u.kind != UpstreamKind::Smtp {
        return None;
    }
    if let Some(p) = u.provider {
        let s = p.spf();
        return Some(Expect::Include {
            include: s.include.into(),
            name: format!("{} (upstream {})", p.as_str(), c.name),
            own_envelope: s.own_envelope_sender,
        });
    }
    let host = u.host.clone()?;
    Some(match known_spf_include(&host) {
        Some((include, name)) => Expect::Include {
            own_envelope: !(include.contains("google") || include.contains("outlook")),
            include,
            name: format!("{name} (upstream {})", c.name),
        },
        None => Expect::Host(host),
    })
}

/// Whether SPF can align for some carrier (it keeps the domain's envelope sender and the
/// record authorises it), and why not.
struct SpfAlignment {
    aligned: bool,
    why_not: String,
}

async fn check_spf(
    dns: &Dns,
    domain: &str,
    carriers: &[Carrier],
    f: &mut Findings,
) -> SpfAlignment {
    let mut why_not =
        String::from("no SPF record authorises an upstream that keeps your envelope sender");
    if let Some((_, Expect::Include { name, .. })) = expects_own_envelope(carriers) {
        why_not = format!(
            "{name} sends with its own envelope sender (return path) unless you set up a custom return-path domain there"
        );
    }
    let aligned = check_spf_records(dns, domain, carriers, f).await;
    SpfAlignment { aligned, why_not }
}

/// The first carrier whose provider uses its own envelope sender.
fn expects_own_envelope(carriers: &[Carrier]) -> Option<(String, Expect)> {
    carriers.iter().find_map(|c| match expectation(c) {
        Some(
            e @ Expect::Include {
                own_envelope: true, ..
            },
        ) => Some((c.name.clone(), e)),
        _ => None,
    })
}

async fn check_spf_records(
    dns: &Dns,
    domain: &str,
    carriers: &[Carrier],
    f: &mut Findings,
) -> bool {
    let expects: Vec<(String, Expect)> = carriers
        .iter()
        .filter_map(|c| expectation(c).map(|e| (c.name.clone(), e)))
        .collect();
    let mechanism = |e: &Expect| match e {
        Expect::Include { include, .. } => include.clone(),
        Expect::Host(h) if h.parse::<std::net::Ipv4Addr>().is_ok() => format!("ip4:{h}"),
        Expect::Host(h)
            if h.trim_matches(['[', ']'])
                .parse::<std::net::Ipv6Addr>()
                .is_ok() =>
        {
            format!("ip6:{}", h.trim_matches(['[', ']']))
        }
        Expect::Host(h) => format!("a:{h}"),
    };
    let publish = |value: &str| Some(format!("{domain}. IN TXT {}", quote_txt(value)));
    let suggested = {
        let mut v = "v=spf1".to_string();
        for (_, e) in &expects {
            v = spf::with_mechanism(&v, &mechanism(e));
        }
        format!("{v} ~all")
    };
    let txts = match dns.txt(domain).await {
        Answer::Failed(e) => {
            f.add(
                "spf",
                Status::CouldNotCheck,
                format!("could not check SPF: {e}"),
                None,
            );
            return false;
        }
        Answer::Absent => Vec::new(),
        Answer::Found(t) => t,
    };
    let records = spf::spf_records(&txts);
    let record = match records.len() {
        0 => {
            f.add("spf", Status::Warning, format!("no SPF record (v=spf1) at {domain}: receivers cannot tell whether your upstream may send for it"), publish(&suggested));
            return false;
        }
        1 => records[0].clone(),
        n => {
            f.add("spf", Status::Error, format!("{n} SPF records at {domain}: a domain may have only one (RFC 7208 §3.2), receivers answer permerror and SPF fails; merge them into one"), publish(&spf::merged(&records)));
            return false;
        }
    };
    if let Some(all) = spf::all_term(&record)
        && all.passes()
    {
        f.add("spf", Status::Error, format!("the SPF record of {domain} ends in {}all: it authorises every server on the internet to send as {domain}; end it in ~all or -all", if record.contains("+all") { "+" } else { "" }), publish(&record.replace("+all", "~all").replace(" all", " ~all")));
    }
    let walk = spf::walk(dns, domain, &record).await;
    for e in &walk.failed {
        f.add(
            "spf",
            Status::CouldNotCheck,
            format!("could not check an included SPF record: {e}"),
            None,
        );
    }
    for b in &walk.broken {
        f.add(
            "spf",
            Status::Error,
            format!(
                "the SPF record of {domain} includes {b}: receivers answer permerror and SPF fails"
            ),
            None,
        );
    }
    if walk.lookups > spf::LOOKUP_LIMIT {
        f.add("spf", Status::Error, format!("the SPF record of {domain} needs {}{} DNS lookups (include, a, mx, ptr, exists, redirect, counted through every include); the limit is {} (RFC 7208 §4.6.4): receivers answer permerror and SPF fails. Remove mechanisms you do not use or replace includes by ip4:/ip6: ranges", walk.lookups, if walk.lookups > 25 { " or more" } else { "" }, spf::LOOKUP_LIMIT), None);
    }
    let mut aligned = false;
    for (name, e) in &expects {
        let mech = mechanism(e);
        let named = walk.terms.iter().any(|(_, t)| t.passes() && t.body == mech);
        let (ok, who, own_envelope) = match e {
            Expect::Include {
                name: who,
                own_envelope,
                ..
            } => (named, who.clone(), *own_envelope),
            Expect::Host(h) => {
                let covered = if named {
                    true
                } else {
                    match dns.ips(h).await {
                        Answer::Found(ips) => ips.iter().all(|ip| {
                            walk.terms
                                .iter()
                                .any(|(_, t)| t.passes() && spf::ip_matches(t, *ip))
                        }),
                        Answer::Absent => false,
                        Answer::Failed(err) => {
                            f.add(
                                "spf",
                                Status::CouldNotCheck,
                                format!(
                                    "could not resolve upstream {name}'s host to check SPF: {err}"
                                ),
                                None,
                            );
                            continue;
                        }
                    }
                };
                (
                    covered,
                    format!("the smarthost {h} (upstream {name})"),
                    false,
                )
            }
        };
        if ok {
            f.add(
                "spf",
                Status::Ok,
                format!("SPF authorises {who} ({mech})"),
                None,
            );
            aligned |= !own_envelope && walk.lookups <= spf::LOOKUP_LIMIT && walk.broken.is_empty();
        } else {
            f.add(
                "spf",
                Status::Warning,
                format!("the SPF record of {domain} does not authorise {who}: add {mech}"),
                publish(&spf::with_mechanism(&record, &mech)),
            );
        }
    }
    if expects.is_empty() {
        f.add("spf", Status::Ok, format!("SPF record present; no SMTP upstream carries {domain}'s mail, so no upstream is checked against it"), None);
    }
    aligned
}

async fn check_dmarc(
    dns: &Dns,
    domain: &str,
    dkim_aligned: bool,
    spf: &SpfAlignment,
    f: &mut Findings,
) {
    let spf_aligned = spf.aligned;
    let name = format!("_dmarc.{domain}.");
    let suggested = format!(
        "{name} IN TXT {}",
        quote_txt(&format!(
            "v=DMARC1; p=none; rua=mailto:dmarc-reports@{domain}"
        ))
    );
    let alignment = format!(
        "DKIM alignment {}, SPF alignment {}",
        if dkim_aligned {
            format!("can pass (the relay signs with d={domain})")
        } else {
            "cannot pass (no published active key)".to_string()
        },
        if spf_aligned {
            "can pass (the upstream keeps your envelope sender)".to_string()
        } else {
            format!("cannot pass ({})", spf.why_not)
        }
    );
    let txts = match dns.txt(&name).await {
        Answer::Failed(e) => {
            f.add(
                "dmarc",
                Status::CouldNotCheck,
                format!("could not check DMARC: {e}"),
                None,
            );
            return;
        }
        Answer::Absent => Vec::new(),
        Answer::Found(t) => t,
    };
    let records: Vec<&String> = txts.iter().filter(|t| dmarc::is_dmarc(t)).collect();
    let record = match records.len() {
        0 => {
            f.add("dmarc", Status::Warning, format!("no DMARC record at {name}: receivers apply no policy and send no reports; {alignment}"), Some(suggested));
            return;
        }
        1 => records[0],
        n => {
            f.add("dmarc", Status::Error, format!("{n} DMARC records at {name}: receivers ignore them all (RFC 7489 §6.6.3); keep one"), Some(suggested));
            return;
        }
    };
    let d = match dmarc::parse(record) {
        Ok(d) => d,
        Err(e) => {
            f.add(
                "dmarc",
                Status::Error,
                format!("the DMARC record at {name} is malformed: {e}; receivers ignore it"),
                Some(suggested),
            );
            return;
        }
    };
    let policy = format!(
        "policy p={}{}{}",
        d.policy,
        d.subdomain_policy
            .as_ref()
            .map(|s| format!(", sp={s}"))
            .unwrap_or_default(),
        if d.pct < 100 {
            format!(", pct={}", d.pct)
        } else {
            String::new()
        }
    );
    if !dkim_aligned && !spf_aligned {
        let status = if d.policy == "none" {
            Status::Warning
        } else {
            Status::Error
        };
        f.add(
            "dmarc",
            status,
            format!(
                "DMARC record valid ({policy}) but the relay's mail cannot pass it: {alignment}"
            ),
            None,
        );
    } else {
        f.add(
            "dmarc",
            Status::Ok,
            format!("DMARC record valid ({policy}); {alignment}"),
            None,
        );
    }
}
