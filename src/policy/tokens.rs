//! Token creation and verification.
//!
//! A token is `smtpr_` followed by 43 base64url characters (256 random bits); the prefix lets
//! secret scanners find leaked ones. Only HMAC-SHA256(server secret, token) is ever stored,
//! and digests are compared in constant time.

use base64::Engine;
use hmac::{KeyInit, Mac};
use rand::RngCore;
use subtle::ConstantTimeEq;

use crate::secret::{Secret, ServerSecret};

pub const TOKEN_PREFIX: &str = "smtpr_";

pub type Digest = [u8; 32];

/// Prefix of admin tokens (HTTP API and panel), distinct so scanners and people tell them apart.
pub const ADMIN_TOKEN_PREFIX: &str = "smtpa_";

/// A new random project token, shown to the admin once.
pub fn generate() -> Secret {
    generate_with_prefix(TOKEN_PREFIX)
}

/// A new random token with `prefix` and 256 random bits.
pub fn generate_with_prefix(prefix: &str) -> Secret {
    let mut raw = [0u8; 32];
    rand::rng().fill_bytes(&mut raw);
    Secret::new(format!(
        "{prefix}{}",
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(raw)
    ))
}

pub fn digest(secret: &ServerSecret, token: &str) -> Digest {
    let mut mac = <hmac::Hmac<sha2::Sha256> as KeyInit>::new_from_slice(secret.bytes())
        .unwrap_or_else(|_| unreachable!("HMAC accepts keys of any length"));
    mac.update(token.as_bytes());
    mac.finalize().into_bytes().into()
}

pub fn equal(a: &[u8], b: &[u8]) -> bool {
    a.ct_eq(b).into()
}

/// Short, random, lowercase identifier with a prefix (`prj_…`, `tok_…`).
pub fn short_id(prefix: &str) -> String {
    const ALPHABET: &[u8] = b"abcdefghijkmnopqrstuvwxyz23456789";
    let mut raw = [0u8; 10];
    rand::rng().fill_bytes(&mut raw);
    let body: String = raw
        .iter()
        .map(|b| ALPHABET[*b as usize % ALPHABET.len()] as char)
        .collect();
    format!("{prefix}{body}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_long_and_prefixed() {
        let t = generate();
        assert!(t.expose().starts_with(TOKEN_PREFIX));
        assert_eq!(t.expose().len(), TOKEN_PREFIX.len() + 43);
        assert_ne!(generate().expose(), t.expose());
    }
}
