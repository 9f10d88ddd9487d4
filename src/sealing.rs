//! Sealing values with a key derived from the server secret, for what leaves a node in cluster
//! mode: Redis never holds them readable.
//!
//! Two uses, each with its own derived key (HKDF-SHA256 of the server secret, a fixed label per
//! purpose): DKIM private keys (`transform::dkim_keys` keeps a sealed copy in the sled tree
//! `dkim_sealed`; other nodes open it and write their own key file), and every registry record
//! `cluster::registry_sync` writes to Redis (projects, token digests, webhook endpoints with
//! their signing secrets, branding, …). Every node of a cluster shares the server secret; Redis
//! never sees it, so a Redis dump or replica holds no usable key, secret or record, and a value
//! written there by anyone without the secret does not open. AES-256-GCM with a random nonce per
//! seal; the caller's context (e.g. `domain \0 selector`, or `tree \0 key`) is the associated
//! data, so a sealed value moved to another record does not open. Single-node mode seals nothing.

use aws_lc_rs::aead::{AES_256_GCM, Aad, LessSafeKey, NONCE_LEN, Nonce, UnboundKey};
use aws_lc_rs::hkdf::{HKDF_SHA256, Salt};
use aws_lc_rs::rand::{SecureRandom, SystemRandom};

use crate::secret::ServerSecret;

/// First byte of every sealed value: the format, so a later one can be told apart.
const VERSION: u8 = 1;

/// What a key seals; each purpose derives its own key.
#[derive(Debug, Clone, Copy)]
pub enum Purpose {
    DkimPrivateKeys,
    RegistryRecords,
}

impl Purpose {
    fn label(self) -> &'static [u8] {
        match self {
            Purpose::DkimPrivateKeys => b"smtp-relay dkim private key sealing v1",
            Purpose::RegistryRecords => b"smtp-relay registry record sealing v1",
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum SealError {
    #[error("cannot seal the private key: {0}")]
    Seal(&'static str),
    #[error(
        "a sealed value does not open with this node's server secret (every node of a cluster \
         needs the same server.secret_file) or was altered"
    )]
    Open,
}

/// The key that seals and opens the values of one [`Purpose`] (cheap to clone).
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
    pub fn derive(secret: &ServerSecret, purpose: Purpose) -> Result<SealKey, SealError> {
        let prk = Salt::new(HKDF_SHA256, b"smtp-relay").extract(secret.bytes());
        let info = [purpose.label()];
        let okm = prk
            .expand(&info, &AES_256_GCM)
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

    fn key_for(secret: &[u8], purpose: Purpose) -> SealKey {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("secret");
        std::fs::write(&path, secret).unwrap();
        SealKey::derive(
            &ServerSecret::load(Some(&path), dir.path()).unwrap(),
            purpose,
        )
        .unwrap()
    }

    fn key(secret: &[u8]) -> SealKey {
        key_for(secret, Purpose::DkimPrivateKeys)
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
        let mut v2 = sealed.clone();
        v2[0] = 2;
        assert!(k.open(b"example.com\0s1", &v2).is_err());
        // Another purpose, another key.
        let other = key_for(
            b"0123456789abcdef0123456789abcdef",
            Purpose::RegistryRecords,
        );
        assert!(other.open(b"example.com\0s1", &sealed).is_err());
    }
}
