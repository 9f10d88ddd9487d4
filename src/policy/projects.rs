//! The project registry: projects, their domains and their tokens, stored in sled.
//!
//! Sessions read it at AUTH time, straight from the database, so a change made by the CLI
//! (through the admin socket of the running server) applies to the next session without a
//! restart. Tokens are indexed by their HMAC digest; the project keeps only token metadata.
//!
//! Every change bumps an in-memory generation number. Sessions that are already logged in
//! compare it at each `MAIL FROM` and before the final `250` of DATA, and re-read their
//! project only when it moved ([`Registry::standing`]): a revoked token, disabled or deleted
//! project stops an open session at its next transaction without a database read per command.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use serde::{Deserialize, Serialize};

use crate::policy::tokens::{self, Digest};
use crate::secret::{Secret, ServerSecret};
use crate::store::{Store, StoreError};

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct TokenInfo {
    pub id: String,
    /// Free text such as "production" or "staging".
    pub label: String,
    pub created: u64,
    /// Hex of the HMAC digest (not the token), so revoke can find the index entry.
    pub digest: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Project {
    pub id: String,
    pub name: String,
    pub domains: Vec<String>,
    pub disabled: bool,
    pub created: u64,
    /// Per-project maximum queue age in seconds (short-lived mail such as one-time codes).
    #[serde(default)]
    pub max_age_secs: Option<u64>,
    /// Send a delivery status notification (RFC 3464) to the envelope sender when a message
    /// finally fails (`project bounces`). Off: the app learns only from events and the log.
    #[serde(default)]
    pub bounces: bool,
    pub tokens: Vec<TokenInfo>,
    /// Let `Sender:` / `Resent-Sender:` name an address outside the project's domains (an app
    /// that sends on behalf of its users' mailboxes). Off: refused like a foreign `From`.
    #[serde(default)]
    pub allow_foreign_sender: bool,
    /// `sandbox`: mail is captured (queue::sandbox) instead of sent.
    #[serde(default)]
    pub mode: ProjectMode,
}

/// Whether a project's mail is sent (`live`) or captured (`sandbox`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ProjectMode {
    #[default]
    Live,
    Sandbox,
}

impl ProjectMode {
    pub fn as_str(self) -> &'static str {
        match self {
            ProjectMode::Live => "live",
            ProjectMode::Sandbox => "sandbox",
        }
    }
}

impl std::str::FromStr for ProjectMode {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s.trim() {
            "live" => Ok(ProjectMode::Live),
            "sandbox" => Ok(ProjectMode::Sandbox),
            other => Err(format!("unknown mode {other:?} (live or sandbox)")),
        }
    }
}

/// Token index value: which project and which of its tokens a digest belongs to.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct TokenRecord {
    project: String,
    token_id: String,
}

#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    #[error("no project {0}")]
    UnknownProject(String),
    #[error("project {0} has no token {1}")]
    UnknownToken(String, String),
    #[error("invalid domain {0:?}: use a DNS name such as example.com")]
    InvalidDomain(String),
    #[error("project {0} already has domain {1}")]
    DuplicateDomain(String, String),
    #[error("project name must not be empty")]
    EmptyName,
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl From<sled::Error> for RegistryError {
    fn from(e: sled::Error) -> Self {
        RegistryError::Store(StoreError::Sled(e))
    }
}

/// Who a successful AUTH is.
#[derive(Debug, Clone)]
pub struct Authenticated {
    pub project: Project,
    pub token_id: String,
}

/// Whether a logged-in session's credentials still hold.
#[derive(Debug, Clone)]
pub enum Standing {
    /// Still valid; the project as it is now (domains or limits may have changed).
    Valid(Project),
    TokenRevoked,
    ProjectDisabled,
    ProjectDeleted,
}

#[derive(Clone, Debug)]
pub struct Registry {
    store: Store,
    secret: ServerSecret,
    /// Bumped after every change; shared by all clones in the process.
    generation: Arc<AtomicU64>,
}

/// One DNS label of letters, digits and inner hyphens (also used for DKIM selectors).
pub fn is_dns_label(label: &str) -> bool {
    !label.is_empty()
        && label.len() <= 63
        && !label.starts_with('-')
        && !label.ends_with('-')
        && label
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-')
}

/// Lowercases and checks a domain given by an admin.
pub fn normalize_domain(d: &str) -> Result<String, RegistryError> {
    let d = d.trim().to_ascii_lowercase();
    let ok = !d.is_empty()
        && d.len() <= 253
        && !d.starts_with('.')
        && !d.ends_with('.')
        && d.split('.').count() >= 2
        && d.split('.').all(is_dns_label);
    if ok {
        Ok(d)
    } else {
        Err(RegistryError::InvalidDomain(d))
    }
}

impl Registry {
    pub fn new(store: Store, secret: ServerSecret) -> Registry {
        Registry {
            store,
            secret,
            generation: Arc::new(AtomicU64::new(0)),
        }
    }

    /// Changes when anything in the registry changed in this process (read it before the
    /// lookup it guards, so a change racing the lookup is seen next time).
    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    /// Marks the registry changed (also for changes learnt from elsewhere, e.g. another node).
    pub fn bump_generation(&self) {
        self.generation.fetch_add(1, Ordering::AcqRel);
    }

    /// Re-checks a logged-in session: token still listed, project present and enabled.
    pub fn standing(&self, project_id: &str, token_id: &str) -> Result<Standing, RegistryError> {
        let project = match self.get(project_id) {
            Ok(p) => p,
            Err(RegistryError::UnknownProject(_)) => return Ok(Standing::ProjectDeleted),
            Err(e) => return Err(e),
        };
        Ok(if project.disabled {
            Standing::ProjectDisabled
        } else if !project.tokens.iter().any(|t| t.id == token_id) {
            Standing::TokenRevoked
        } else {
            Standing::Valid(project)
        })
    }

    pub fn is_empty(&self) -> bool {
        self.store.projects.is_empty()
    }

    pub fn get(&self, id: &str) -> Result<Project, RegistryError> {
        match self.store.projects.get(id.as_bytes())? {
            Some(v) => decode(&v),
            None => Err(RegistryError::UnknownProject(id.to_string())),
        }
    }

    pub fn list(&self) -> Result<Vec<Project>, RegistryError> {
        let mut out: Vec<Project> = Vec::new();
        for item in self.store.projects.iter() {
            let (_, v) = item?;
            out.push(decode(&v)?);
        }
        out.sort_by(|a, b| a.created.cmp(&b.created).then(a.id.cmp(&b.id)));
        Ok(out)
    }

    fn put(&self, p: &Project) -> Result<(), RegistryError> {
        self.store.projects.insert(p.id.as_bytes(), encode(p))?;
        self.bump_generation();
        Ok(())
    }

    /// Creates a project with a first token; returns the project and the token (shown once).
    pub fn create(
        &self,
        name: &str,
        domains: &[String],
        label: &str,
        max_age_secs: Option<u64>,
    ) -> Result<(Project, Secret), RegistryError> {
        if name.trim().is_empty() {
            return Err(RegistryError::EmptyName);
        }
        let mut normalized: Vec<String> = Vec::new();
        for d in domains {
            let d = normalize_domain(d)?;
            if !normalized.contains(&d) {
                normalized.push(d);
            }
        }
        let mut id = tokens::short_id("prj_");
        while self.store.projects.contains_key(id.as_bytes())? {
            id = tokens::short_id("prj_");
        }
        let project = Project {
            id,
            name: name.trim().to_string(),
            domains: normalized,
            disabled: false,
            created: crate::now_secs(),
            max_age_secs,
            tokens: Vec::new(),
            bounces: false,
            allow_foreign_sender: false,
            mode: ProjectMode::Live,
        };
        self.put(&project)?;
        let (project, token) = self.add_token(&project.id, label)?;
        Ok((project, token))
    }

    pub fn add_token(&self, id: &str, label: &str) -> Result<(Project, Secret), RegistryError> {
        let mut project = self.get(id)?;
        let token = tokens::generate();
        let digest = tokens::digest(&self.secret, token.expose());
        let info = TokenInfo {
            id: tokens::short_id("tok_"),
            label: label.to_string(),
            created: crate::now_secs(),
            digest: hex::encode(digest),
        };
        let record = TokenRecord {
            project: project.id.clone(),
            token_id: info.id.clone(),
        };
        self.store.tokens.insert(digest, encode(&record))?;
        project.tokens.push(info);
        self.put(&project)?;
        self.store.flush_now()?;
        Ok((project, token))
    }

    pub fn revoke_token(&self, id: &str, token_id: &str) -> Result<Project, RegistryError> {
        let mut project = self.get(id)?;
        let Some(pos) = project.tokens.iter().position(|t| t.id == token_id) else {
            return Err(RegistryError::UnknownToken(id.into(), token_id.into()));
        };
        let info = project.tokens.remove(pos);
        if let Ok(digest) = hex::decode(&info.digest) {
            self.store.tokens.remove(digest)?;
        }
        self.put(&project)?;
        self.store.flush_now()?;
        Ok(project)
    }

    pub fn set_disabled(&self, id: &str, disabled: bool) -> Result<Project, RegistryError> {
        let mut project = self.get(id)?;
        project.disabled = disabled;
        self.put(&project)?;
        self.store.flush_now()?;
        Ok(project)
    }

    pub fn set_max_age(&self, id: &str, secs: Option<u64>) -> Result<Project, RegistryError> {
        let mut project = self.get(id)?;
        project.max_age_secs = secs;
        self.put(&project)?;
        self.store.flush_now()?;
        Ok(project)
    }

    pub fn set_bounces(&self, id: &str, on: bool) -> Result<Project, RegistryError> {
        let mut project = self.get(id)?;
        project.bounces = on;
        self.put(&project)?;
        self.store.flush_now()?;
        Ok(project)
    }

    pub fn set_allow_foreign_sender(
        &self,
        id: &str,
        allow: bool,
    ) -> Result<Project, RegistryError> {
        let mut project = self.get(id)?;
        project.allow_foreign_sender = allow;
        self.put(&project)?;
        self.store.flush_now()?;
        Ok(project)
    }

    /// Live or sandbox; open sessions see it at their next message (`put` bumps the generation).
    pub fn set_mode(&self, id: &str, mode: ProjectMode) -> Result<Project, RegistryError> {
        let mut project = self.get(id)?;
        project.mode = mode;
        self.put(&project)?;
        self.store.flush_now()?;
        Ok(project)
    }

    pub fn delete(&self, id: &str) -> Result<Project, RegistryError> {
        let project = self.get(id)?;
        for t in &project.tokens {
            if let Ok(digest) = hex::decode(&t.digest) {
                self.store.tokens.remove(digest)?;
            }
        }
        self.store.projects.remove(id.as_bytes())?;
        self.store.branding.remove(id.as_bytes())?;
        self.store.routes.remove(id.as_bytes())?;
        self.store.dkim_projects.remove(id.as_bytes())?;
        self.bump_generation();
        self.store.flush_now()?;
        Ok(project)
    }

    pub fn add_domain(&self, id: &str, domain: &str) -> Result<Project, RegistryError> {
        let mut project = self.get(id)?;
        let d = normalize_domain(domain)?;
        if project.domains.contains(&d) {
            return Err(RegistryError::DuplicateDomain(id.into(), d));
        }
        project.domains.push(d);
        self.put(&project)?;
        self.store.flush_now()?;
        Ok(project)
    }

    pub fn remove_domain(&self, id: &str, domain: &str) -> Result<Project, RegistryError> {
        let mut project = self.get(id)?;
        let d = domain.trim().to_ascii_lowercase();
        project.domains.retain(|x| *x != d);
        self.put(&project)?;
        self.store.flush_now()?;
        Ok(project)
    }

    /// Checks a login. Unknown project, wrong token, revoked token and disabled project all
    /// return `None` after the same work (one HMAC, one index lookup, one constant-time
    /// compare), so the reply time does not say which it was.
    pub fn authenticate(
        &self,
        username: &str,
        token: &str,
    ) -> Result<Option<Authenticated>, RegistryError> {
        let digest: Digest = tokens::digest(&self.secret, token);
        let record: Option<TokenRecord> = match self.store.tokens.get(digest)? {
            Some(v) => Some(decode(&v)?),
            None => None,
        };
        let claimed = record.as_ref().map(|r| r.project.as_str()).unwrap_or("");
        let same_project = tokens::equal(claimed.as_bytes(), username.as_bytes());
        let project = match self.store.projects.get(username.as_bytes())? {
            Some(v) => Some(decode::<Project>(&v)?),
            None => None,
        };
        match (record, project) {
            (Some(record), Some(project)) if same_project && !project.disabled => {
                // The token must still be listed on the project (revocation is two writes).
                if project.tokens.iter().any(|t| t.id == record.token_id) {
                    Ok(Some(Authenticated {
                        token_id: record.token_id,
                        project,
                    }))
                } else {
                    Ok(None)
                }
            }
            _ => Ok(None),
        }
    }

    /// Checks a bearer token alone (the HTTP send API): the token names its project through
    /// the digest index, so no scan. Unknown, revoked and disabled all return `None` after
    /// the same work as [`Registry::authenticate`] (one HMAC, two lookups).
    pub fn authenticate_token(&self, token: &str) -> Result<Option<Authenticated>, RegistryError> {
        let digest: Digest = tokens::digest(&self.secret, token);
        let record: Option<TokenRecord> = match self.store.tokens.get(digest)? {
            Some(v) => Some(decode(&v)?),
            None => None,
        };
        let claimed = record.as_ref().map(|r| r.project.as_str()).unwrap_or("");
        let project = match self.store.projects.get(claimed.as_bytes())? {
            Some(v) => Some(decode::<Project>(&v)?),
            None => None,
        };
        match (record, project) {
            (Some(record), Some(project))
                if !project.disabled && project.tokens.iter().any(|t| t.id == record.token_id) =>
            {
                Ok(Some(Authenticated {
                    token_id: record.token_id,
                    project,
                }))
            }
            _ => Ok(None),
        }
    }
}

fn encode<T: Serialize>(v: &T) -> Vec<u8> {
    serde_json::to_vec(v).unwrap_or_default()
}

fn decode<T: for<'a> Deserialize<'a>>(v: &[u8]) -> Result<T, RegistryError> {
    serde_json::from_slice(v).map_err(|e| RegistryError::Store(StoreError::Corrupt(e.to_string())))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn domains_are_checked() {
        assert_eq!(normalize_domain("Example.COM").unwrap(), "example.com");
        for bad in ["", "com", "a..b", "-a.b", "a.b.", "a b.c", "a@b.c"] {
            assert!(normalize_domain(bad).is_err(), "{bad}");
        }
    }
}
