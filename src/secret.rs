//! Secret values (tokens, the server secret, upstream passwords) and where they come from.
//!
//! A secret lives in [`Secret`], whose `Debug` and `Display` print `[redacted]`, so a stray
//! `{:?}` in a log line can never leak one. The server secret is the HMAC key for tokens.

use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use rand::RngCore;

#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(s: impl Into<String>) -> Secret {
        Secret(s.into())
    }
    /// The only way to see the value: call sites are easy to audit.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("[redacted]")
    }
}

impl std::fmt::Display for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("[redacted]")
    }
}

/// A secret written inline in a config is read like a string but always serialised as
/// `[redacted]`, so printing a config (`config check`) cannot reveal it.
impl serde::Serialize for Secret {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(REDACTED)
    }
}

impl<'de> serde::Deserialize<'de> for Secret {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Secret, D::Error> {
        String::deserialize(d).map(Secret)
    }
}

pub const REDACTED: &str = "[redacted]";

/// Whether a config key names a secret value (`password`, `client_secret`, `api_key`,
/// `refresh_token`…) rather than where one is kept (`password_file`, `password_env`,
/// `token_url`): the last `_`-separated word decides.
pub fn is_secret_key(key: &str) -> bool {
    let last = key
        .rsplit(['_', '-'])
        .next()
        .unwrap_or(key)
        .to_ascii_lowercase();
    matches!(
        last.as_str(),
        "password"
            | "passwd"
            | "pass"
            | "passphrase"
            | "secret"
            | "token"
            | "key"
            | "apikey"
            | "credential"
            | "credentials"
    )
}

/// Replaces every secret-named string (or list of strings) in a config tree with
/// `[redacted]`, however deep; the safety net under [`Secret`] for fields typed as plain text.
pub fn redact(value: &mut toml::Value) {
    match value {
        toml::Value::Table(t) => {
            for (k, v) in t.iter_mut() {
                if is_secret_key(k) && matches!(v, toml::Value::String(_) | toml::Value::Array(_)) {
                    *v = toml::Value::String(REDACTED.into());
                } else {
                    redact(v);
                }
            }
        }
        toml::Value::Array(a) => a.iter_mut().for_each(redact),
        _ => {}
    }
}

#[derive(Debug, thiserror::Error)]
pub enum SecretError {
    #[error("cannot read secret file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot create secret file {path}: {source}")]
    Create {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("secret file {0} is empty or shorter than 32 characters")]
    TooShort(PathBuf),
    #[error("environment variable {0} is not set")]
    MissingEnv(String),
}

/// The HMAC key that turns tokens into their stored digests.
#[derive(Clone)]
pub struct ServerSecret(Vec<u8>);

impl std::fmt::Debug for ServerSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ServerSecret([redacted])")
    }
}

impl ServerSecret {
    pub fn bytes(&self) -> &[u8] {
        &self.0
    }

    /// Loads the secret from `configured`, else systemd's credential, else
    /// `<state_dir>/secret`, generating the last one on first use.
    pub fn load(configured: Option<&Path>, state_dir: &Path) -> Result<ServerSecret, SecretError> {
        if let Some(path) = configured {
            return read_secret_file(path);
        }
        if let Some(dir) = std::env::var_os("CREDENTIALS_DIRECTORY") {
            let path = Path::new(&dir).join("server-secret");
            if path.exists() {
                return read_secret_file(&path);
            }
        }
        let path = state_dir.join("secret");
        if path.exists() {
            return read_secret_file(&path);
        }
        let mut raw = [0u8; 32];
        rand::rng().fill_bytes(&mut raw);
        let encoded = hex::encode(raw);
        let create = |path: &Path| -> std::io::Result<()> {
            let mut f = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(path)?;
            f.write_all(encoded.as_bytes())?;
            f.write_all(b"\n")?;
            f.sync_all()?;
            std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
        };
        create(&path).map_err(|source| SecretError::Create {
            path: path.clone(),
            source,
        })?;
        read_secret_file(&path)
    }
}

fn read_secret_file(path: &Path) -> Result<ServerSecret, SecretError> {
    let text = std::fs::read(path).map_err(|source| SecretError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    let trimmed = text.trim_ascii();
    if trimmed.len() < 32 {
        return Err(SecretError::TooShort(path.to_path_buf()));
    }
    Ok(ServerSecret(trimmed.to_vec()))
}

/// Reads a credential such as an upstream password from a file or an environment variable.
pub fn read_credential(file: Option<&Path>, env: Option<&str>) -> Result<Secret, SecretError> {
    if let Some(path) = file {
        let text = std::fs::read_to_string(path).map_err(|source| SecretError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        return Ok(Secret::new(text.trim_end_matches(['\r', '\n'])));
    }
    if let Some(var) = env {
        return std::env::var(var)
            .map(Secret::new)
            .map_err(|_| SecretError::MissingEnv(var.to_string()));
    }
    Ok(Secret::new(""))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_never_print() {
        let s = Secret::new("smtpr_supersecret");
        assert_eq!(format!("{s:?} {s}"), "[redacted] [redacted]");
        assert_eq!(serde_json::to_string(&s).unwrap(), "\"[redacted]\"");
    }

    #[test]
    fn secret_keys_are_redacted_at_any_depth() {
        let mut v: toml::Value = toml::from_str(
            "[upstream.a]\npassword = \"p\"\npassword_file = \"/f\"\n[upstream.a.oauth2]\nclient_secret = \"s\"\nrefresh_token = \"t\"\ntoken_url = \"https://x\"\nclient_id = \"id\"\n",
        )
        .unwrap();
        redact(&mut v);
        let a = &v["upstream"]["a"];
        assert_eq!(a["password"].as_str(), Some(REDACTED));
        assert_eq!(a["password_file"].as_str(), Some("/f"));
        assert_eq!(a["oauth2"]["client_secret"].as_str(), Some(REDACTED));
        assert_eq!(a["oauth2"]["refresh_token"].as_str(), Some(REDACTED));
        assert_eq!(a["oauth2"]["token_url"].as_str(), Some("https://x"));
        assert_eq!(a["oauth2"]["client_id"].as_str(), Some("id"));
    }
}
