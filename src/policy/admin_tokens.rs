//! Admin tokens: who may use the HTTP admin API and web panel, and with which role.
//!
//! They are kept apart from project tokens (their own `smtpa_` prefix and sled tree) because
//! they open a different door: a project token sends mail as one project, an admin token
//! manages every project. Like project tokens, only HMAC-SHA256(server secret, token) is
//! stored, the token is shown once, and a lookup is one digest and one index read.

use serde::{Deserialize, Serialize};

use crate::policy::tokens::{self, ADMIN_TOKEN_PREFIX};
use crate::secret::{Secret, ServerSecret};
use crate::store::{Store, StoreError};

/// What an admin token may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// Everything the CLI can do.
    Admin,
    /// Read everything except secrets; change nothing.
    Viewer,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Admin => "admin",
            Role::Viewer => "viewer",
        }
    }
}

impl std::str::FromStr for Role {
    type Err = AdminTokenError;
    fn from_str(s: &str) -> Result<Role, AdminTokenError> {
        match s {
            "admin" => Ok(Role::Admin),
            "viewer" => Ok(Role::Viewer),
            other => Err(AdminTokenError::BadRole(other.to_string())),
        }
    }
}

/// An admin token as stored and listed (never the token itself).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct AdminTokenInfo {
    pub id: String,
    pub label: String,
    pub role: Role,
    pub created: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum AdminTokenError {
    #[error("no admin token {0}")]
    Unknown(String),
    #[error("invalid role {0:?}: use admin or viewer")]
    BadRole(String),
    #[error("label must not be empty")]
    EmptyLabel,
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl From<sled::Error> for AdminTokenError {
    fn from(e: sled::Error) -> Self {
        AdminTokenError::Store(StoreError::Sled(e))
    }
}

#[derive(Clone, Debug)]
pub struct AdminTokens {
    store: Store,
    secret: ServerSecret,
}

impl AdminTokens {
    pub fn new(store: Store, secret: ServerSecret) -> AdminTokens {
        AdminTokens { store, secret }
    }

    /// Creates a token; returns its record and the token (shown once).
    pub fn create(
        &self,
        label: &str,
        role: Role,
    ) -> Result<(AdminTokenInfo, Secret), AdminTokenError> {
        let label = label.trim();
        if label.is_empty() {
            return Err(AdminTokenError::EmptyLabel);
        }
        let token = tokens::generate_with_prefix(ADMIN_TOKEN_PREFIX);
        let digest = tokens::digest(&self.secret, token.expose());
        let info = AdminTokenInfo {
            id: tokens::short_id("adm_"),
            label: label.to_string(),
            role,
            created: crate::now_secs(),
        };
        self.store
            .admin_tokens
            .insert(digest, serde_json::to_vec(&info).unwrap_or_default())?;
        self.store.flush_now()?;
        Ok((info, token))
    }

    pub fn list(&self) -> Result<Vec<AdminTokenInfo>, AdminTokenError> {
        let mut out = Vec::new();
        for item in self.store.admin_tokens.iter() {
            let (_, v) = item?;
            out.push(decode(&v)?);
        }
        out.sort_by(|a, b| a.created.cmp(&b.created).then(a.id.cmp(&b.id)));
        Ok(out)
    }

    pub fn revoke(&self, id: &str) -> Result<AdminTokenInfo, AdminTokenError> {
        for item in self.store.admin_tokens.iter() {
            let (k, v) = item?;
            let info: AdminTokenInfo = decode(&v)?;
            if info.id == id {
                self.store.admin_tokens.remove(k)?;
                self.store.flush_now()?;
                return Ok(info);
            }
        }
        Err(AdminTokenError::Unknown(id.to_string()))
    }

    /// The token's record, or `None` for anything that is not a live admin token.
    pub fn authenticate(&self, token: &str) -> Result<Option<AdminTokenInfo>, AdminTokenError> {
        if !token.starts_with(ADMIN_TOKEN_PREFIX) {
            return Ok(None);
        }
        let digest = tokens::digest(&self.secret, token);
        match self.store.admin_tokens.get(digest)? {
            Some(v) => Ok(Some(decode(&v)?)),
            None => Ok(None),
        }
    }
}

fn decode(v: &[u8]) -> Result<AdminTokenInfo, AdminTokenError> {
    serde_json::from_slice(v)
        .map_err(|e| AdminTokenError::Store(StoreError::Corrupt(e.to_string())))
}
