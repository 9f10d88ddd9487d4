//! The DKIM admin operations: keys (keygen, import, list, activate, retire, remove), the DNS
//! records to publish, and the per-project signing failure policy.
//!
//! They run where every admin operation runs ([`super::execute`]): in the server process when
//! it is up, so a rotation reaches the signer's key cache at once, or on the database when not.
//! A private key crosses the admin socket only on import, and comes back out only when
//! `--show-private` asks for it at generation.

use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use super::{AdminContext, AdminError, err};
use crate::transform::dkim_keys::{Algorithm, KeyInfo, OnFailure, dns_records};

/// A PEM private key in a request; `Debug` never shows it.
#[derive(Clone, Serialize, Deserialize)]
#[serde(transparent)]
pub struct PrivatePem(pub String);

impl std::fmt::Debug for PrivatePem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("[redacted]")
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "dkim", rename_all = "snake_case")]
pub enum DkimRequest {
    Keygen {
        domain: String,
        selector: Option<String>,
        algorithm: Algorithm,
        bits: Option<usize>,
        activate: bool,
        show_private: bool,
    },
    Import {
        domain: String,
        selector: String,
        private_key: PrivatePem,
        activate: bool,
    },
    List {
        domain: Option<String>,
    },
    Activate {
        domain: String,
        selector: String,
    },
    Retire {
        domain: String,
        selector: String,
    },
    Remove {
        domain: String,
        selector: String,
    },
    Dns {
        domain: String,
    },
    OnFailure {
        project: String,
        on_failure: Option<OnFailure>,
    },
}

/// Ids of the projects that may sign with keys of `domain`.
fn owners(ctx: &AdminContext, domain: &str) -> Result<Vec<String>, AdminError> {
    Ok(ctx
        .registry
        .list()
        .map_err(err)?
        .into_iter()
        .filter(|p| p.domains.iter().any(|d| d == domain))
        .map(|p| p.id)
        .collect())
}

pub fn key_json(ctx: &AdminContext, k: &KeyInfo) -> Result<Value, AdminError> {
    Ok(json!({
        "domain": k.domain,
        "selector": k.selector,
        "algorithm": k.algorithm,
        "bits": k.bits,
        "state": k.state,
        "created": k.created,
        "activated": k.activated,
        "retired": k.retired,
        "owners": owners(ctx, &k.domain)?,
        "dns": {
            "name": k.dns_name(),
            "value": k.txt_value(),
            "record": k.txt_record(),
        },
        "key_file": ctx.dkim.key_path(&k.domain, &k.selector),
    }))
}

pub fn execute(ctx: &AdminContext, req: DkimRequest) -> Result<Value, AdminError> {
    let keys = &ctx.dkim;
    Ok(match req {
        DkimRequest::Keygen {
            domain,
            selector,
            algorithm,
            bits,
            activate,
            show_private,
        } => {
            let (mut info, material) = keys
                .generate(&domain, selector.as_deref(), algorithm, bits)
                .map_err(err)?;
            if activate {
                info = keys.activate(&info.domain, &info.selector).map_err(err)?.0;
            }
            let mut v = key_json(ctx, &info)?;
            if show_private {
                v["private_key"] = Value::String(material.to_pem());
            }
            v
        }
        DkimRequest::Import {
            domain,
            selector,
            private_key,
            activate,
        } => {
            let mut info = keys
                .import(&domain, &selector, &private_key.0)
                .map_err(err)?;
            if activate {
                info = keys.activate(&info.domain, &info.selector).map_err(err)?.0;
            }
            key_json(ctx, &info)?
        }
        DkimRequest::List { domain } => {
            let mut out = Vec::new();
            for k in keys.list(domain.as_deref()).map_err(err)? {
                out.push(key_json(ctx, &k)?);
            }
            Value::Array(out)
        }
        DkimRequest::Activate { domain, selector } => {
            let (info, replaced) = keys.activate(&domain, &selector).map_err(err)?;
            let mut v = key_json(ctx, &info)?;
            v["replaced"] = Value::Array(
                replaced
                    .iter()
                    .map(|k| json!({ "selector": k.selector, "state": k.state }))
                    .collect(),
            );
            v
        }
        DkimRequest::Retire { domain, selector } => {
            key_json(ctx, &keys.retire(&domain, &selector).map_err(err)?)?
        }
        DkimRequest::Remove { domain, selector } => {
            key_json(ctx, &keys.remove(&domain, &selector).map_err(err)?)?
        }
        DkimRequest::Dns { domain } => {
            let list = keys.list(Some(&domain)).map_err(err)?;
            let domain = domain.trim().to_ascii_lowercase();
            json!({
                "domain": domain,
                "owners": owners(ctx, &domain)?,
                "records": dns_records(&domain, &list, keys.upstream_host()),
            })
        }
        DkimRequest::OnFailure {
            project,
            on_failure,
        } => {
            let p = ctx.registry.get(&project).map_err(err)?;
            if let Some(policy) = on_failure {
                keys.set_on_failure(&p.id, policy).map_err(err)?;
            }
            json!({ "project": p.id, "on_failure": keys.on_failure(&p.id).map_err(err)? })
        }
    })
}
