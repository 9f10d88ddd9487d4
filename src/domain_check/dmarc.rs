//! DMARC records (RFC 7489 §6.3) as `domain verify` reads them: the policy and the alignment
//! modes. A record receivers would discard (no `v=DMARC1` first, no valid `p=`, a tag that is
//! not `tag=value`) is an error with the reason, since to receivers it is as if none existed.

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Dmarc {
    /// none | quarantine | reject
    pub policy: String,
    pub subdomain_policy: Option<String>,
    pub dkim_strict: bool,
    pub spf_strict: bool,
    pub pct: u8,
}

pub fn is_dmarc(txt: &str) -> bool {
    txt.trim_start()
        .get(..8)
        .is_some_and(|p| p.eq_ignore_ascii_case("v=DMARC1"))
}

pub fn parse(record: &str) -> Result<Dmarc, String> {
    let mut tags = Vec::new();
    for part in record.split(';').map(str::trim).filter(|p| !p.is_empty()) {
        let Some((k, v)) = part.split_once('=') else {
            return Err(format!("`{part}` is not tag=value"));
        };
        tags.push((k.trim().to_ascii_lowercase(), v.trim().to_string()));
    }
    match tags.first() {
        Some((k, v)) if k == "v" && v == "DMARC1" => {}
        _ => return Err("the record must start with v=DMARC1".into()),
    }
    let get = |name: &str| {
        tags.iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.to_ascii_lowercase())
    };
    let policy = match get("p") {
        None => return Err("no p= tag (the policy: none, quarantine or reject)".into()),
        Some(p) if matches!(p.as_str(), "none" | "quarantine" | "reject") => p,
        Some(p) => {
            return Err(format!(
                "p={p} is not a policy (none, quarantine or reject)"
            ));
        }
    };
    let subdomain_policy = match get("sp") {
        Some(p) if !matches!(p.as_str(), "none" | "quarantine" | "reject") => {
            return Err(format!(
                "sp={p} is not a policy (none, quarantine or reject)"
            ));
        }
        other => other,
    };
    let mode = |name: &str| match get(name).as_deref() {
        None | Some("r") => Ok(false),
        Some("s") => Ok(true),
        Some(o) => Err(format!("{name}={o} is not an alignment mode (r or s)")),
    };
    let pct = match get("pct") {
        None => 100,
        Some(p) => match p.parse::<u8>() {
            Ok(n) if n <= 100 => n,
            _ => return Err(format!("pct={p} is not 0 to 100")),
        },
    };
    Ok(Dmarc {
        policy,
        subdomain_policy,
        dkim_strict: mode("adkim")?,
        spf_strict: mode("aspf")?,
        pct,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn valid_and_malformed() {
        let d = parse("v=DMARC1; p=reject; adkim=s; rua=mailto:x@example.com").unwrap();
        assert_eq!(d.policy, "reject");
        assert!(d.dkim_strict && !d.spf_strict);
        assert!(
            parse("v=DMARC1; rua=mailto:x@example.com")
                .unwrap_err()
                .contains("p=")
        );
        assert!(parse("v=DMARC1; p=block").unwrap_err().contains("p=block"));
        assert!(parse("p=none; v=DMARC1").unwrap_err().contains("start"));
        assert!(parse("v=DMARC1; p none").unwrap_err().contains("tag=value"));
        assert!(is_dmarc("v=dmarc1; p=none") && !is_dmarc("v=spf1"));
    }
}
