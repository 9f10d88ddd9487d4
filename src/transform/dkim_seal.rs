//! Sealing DKIM private keys so they can travel through Redis in cluster mode.
//!
//! A node that generates or imports a key stores, besides its own 0600 PEM file, a sealed copy
//! in the sled tree `dkim_sealed`, which the cluster layer mirrors like the rest of the
//! registry; other nodes open it and write their own file. The sealing key is derived from
//! the server secret (HKDF-SHA256, a fixed label), which every node of a cluster shares and
//! Redis never sees, so a Redis dump or a replica holds no usable private key. AES-256-GCM with
//! a random nonce per seal; the key's `domain \0 selector` is the associated data, so a sealed
//! key moved to another record does not open. Single-node mode never seals: its keys stay files.

use aws_lc_rs::aead::{AES_256_GCM, Aad, LessSafeKey, NONCE_LEN, Nonce, UnboundKey};
use aws_lc_rs::hkdf::{HKDF_SHA256, Salt};
use aws_lc_rs::rand::{SecureRandom, SystemRandom};

use crate::secret::ServerSecret;

/// First byte of every sealed value: the format, so a later one can be told apart.
const VERSION: u8 = 1;
const LABEL: &[u8] = b"smtp-relay dkim private key sealing v1";

#[derive(Debug, thiserror::Error)]
pub enum SealError {
    #[error("cannot seal the private key: {0}")]
    Seal(&'static str),
    #[error(
        "the sealed private key does not open with this node's server secret (every node of a \
         cluster needs the same server.secret_file) or was altered"
    )]
    Open,
}

/// The key that seals and opens DKIM private keys (cheap to clone).
#[derive(Clone)]
pub struct SealKey {
    key: std::sync::Arc<LessSafeKey>,
}

impl std::fmt::Debug for SealKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SealKey([redacted])")
    }
}

impl SealKey {
    pub fn derive(secret: &ServerSecret) -> Result<SealKey, SealError> {
        let prk = Salt::new(HKDF_SHA256, b"smtp-relay").extract(secret.bytes());
        let okm = prk
            .expand(&[LABEL], &AES_256_GCM)
            .map_err(|_| SealError::Seal("key derivation"))?;
        let key = UnboundKey::from(okm);
        Ok(SealKey {
            key: std::sync::Arc::new(LessSafeKey::new(key)),
        })
    }

    /// `VERSION ‖ nonce ‖ ciphertext ‖ tag`, bound to `context`.
    pub fn seal(&self, context: &[u8], plaintext: &[u8]) -> Result<Vec<u8>, SealError> {
        let mut nonce = [0u8; NONCE_LEN];
        SystemRandom::new()
            .fill(&mut nonce)
            .map_err(|_| SealError::Seal("no randomness"))?;
        let mut body = plaintext.to_vec();
        self.key
            .seal_in_place_append_tag(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(context),
                &mut body,
            )
            .map_err(|_| SealError::Seal("encryption"))?;
        let mut out = Vec::with_capacity(1 + NONCE_LEN + body.len());
        out.push(VERSION);
        out.extend_from_slice(&nonce);
        out.extend_from_slice(&body);
        Ok(out)
    }

    pub fn open(&self, context: &[u8], sealed: &[u8]) -> Result<Vec<u8>, SealError> {
        let Some((&VERSION, rest)) = sealed.split_first() else {
            return Err(SealError::Open);
        };
        if rest.len() < NONCE_LEN {
            return Err(SealError::Open);
        }
        let (nonce, body) = rest.split_at(NONCE_LEN);
        let nonce = Nonce::try_assume_unique_for_key(nonce).map_err(|_| SealError::Open)?;
        let mut body = body.to_vec();
        let plain = self
            .key
            .open_in_place(nonce, Aad::from(context), &mut body)
            .map_err(|_| SealError::Open)?;
        Ok(plain.to_vec())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(secret: &[u8]) -> SealKey {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("secret");
        std::fs::write(&path, secret).unwrap();
        SealKey::derive(&ServerSecret::load(Some(&path), dir.path()).unwrap()).unwrap()
    }

    #[test]
    fn round_trip_and_every_alteration_refused() {
        let k = key(b"0123456789abcdef0123456789abcdef");
        let pem = b"-----BEGIN PRIVATE KEY-----\nMC4CAQAwBQYDK2VwBCIEI...\n";
        let sealed = k.seal(b"example.com\0s1", pem).unwrap();
        assert_eq!(k.open(b"example.com\0s1", &sealed).unwrap(), pem);
        assert!(
            !sealed.windows(10).any(|w| w == b"BEGIN PRIV"),
            "plaintext visible"
        );
        // Two seals of one key differ (random nonce).
        assert_ne!(sealed, k.seal(b"example.com\0s1", pem).unwrap());
        // Another record, another secret, a flipped bit, a truncation, another version.
        assert!(k.open(b"example.com\0s2", &sealed).is_err());
        assert!(
            key(b"another secret of the same size!!")
                .open(b"example.com\0s1", &sealed)
                .is_err()
        );
        let mut flipped = sealed.clone();
        let last = flipped.len() - 1;
        flipped[last] ^= 1;
        assert!(k.open(b"example.com\0s1", &flipped).is_err());
        assert!(k.open(b"example.com\0s1", &sealed[..20]).is_err());
        assert!(k.open(b"example.com\0s1", &[]).is_err());
        let mut v2 = sealed;
        v2[0] = 2;
        assert!(k.open(b"example.com\0s1", &v2).is_err());
    }
}
