//! DKIM keys: generation, import, rotation states, the DNS records to publish, and the
//! in-memory cache the signer reads.
//!
//! A key belongs to a domain, not to a project; a project may use it only while it owns the
//! domain (checked when signing, in `dkim.rs`). Lookups are by exact domain: a project that owns
//! `mail.example.com` never gets a key of `example.com`, which relaxed DMARC alignment would
//! otherwise let it pass as.
//!
//! Private keys are PKCS#8 PEM files in `<state_dir>/dkim/<domain>/<selector>.pem` (directories
//! 0700, files 0600): readable with standard tools, replaceable by an admin, and not copied into
//! every database backup. Their metadata (domain, selector, algorithm, state, times, public key)
//! is in the sled tree `dkim`, keyed `domain \0 selector`. The per-project failure policy is in
//! `dkim_projects`, keyed by project id.
//!
//! Lifecycle: `pending` (generated or imported, its record can be published, not used) →
//! `active` (signs) → `retiring` (not used, but still published so mail signed earlier and still
//! in flight verifies) → removed. At most one key per domain and algorithm is active:
//! activating a key moves the previously active key of that algorithm to `retiring`.
//!
//! In cluster mode a sealed copy of each private key (`crate::sealing`) is kept in the tree
//! `dkim_sealed`, which the cluster layer mirrors with the metadata; a node writes the files of
//! keys made elsewhere (`refresh_from_cluster`) and signs from the sealed copy until then.
//!
//! Signing must not read files per message, so parsed keys are cached per domain. Every change
//! drops the cache; admin operations run inside the server process (through the admin socket)
//! and share it, so a rotation applies to the next message without a restart.

use std::collections::HashMap;
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use mail_auth::common::crypto::{Algorithm as SigAlgorithm, Ed25519Key, Sha256, SigningKey};
use mail_auth::common::headers::Writable;
use mail_auth::dkim::{Canonicalization, DkimSigner, Done};
use rsa::RsaPrivateKey;
use rsa::pkcs1::DecodeRsaPrivateKey;
use rsa::pkcs8::{DecodePrivateKey, EncodePrivateKey, EncodePublicKey};
use rsa::traits::PublicKeyParts;
use rustls_pki_types::PrivateKeyDer;
use rustls_pki_types::pem::PemObject;
use serde::{Deserialize, Serialize};

use super::dkim::SIGNED_HEADERS;
use crate::config::{Config, UpstreamKind};
use crate::policy::projects::{is_dns_label, normalize_domain};
use crate::sealing::SealKey;
use crate::store::{Store, StoreError};

/// RSA keys of 2048 to 4096 bits; below 2048 receivers treat DKIM as weak.
pub const MIN_RSA_BITS: usize = 2048;
pub const MAX_RSA_BITS: usize = 4096;
pub const DEFAULT_RSA_BITS: usize = 2048;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Algorithm {
    Rsa,
    Ed25519,
}

impl Algorithm {
    /// The `k=` tag of the DNS record.
    pub fn dns_k(self) -> &'static str {
        match self {
            Algorithm::Rsa => "rsa",
            Algorithm::Ed25519 => "ed25519",
        }
    }

    /// The `a=` tag of the signature.
    pub fn signature_a(self) -> &'static str {
        match self {
            Algorithm::Rsa => "rsa-sha256",
            Algorithm::Ed25519 => "ed25519-sha256",
        }
    }
}

impl std::fmt::Display for Algorithm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.dns_k())
    }
}

impl std::str::FromStr for Algorithm {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.to_ascii_lowercase().as_str() {
            "rsa" => Ok(Algorithm::Rsa),
            "ed25519" => Ok(Algorithm::Ed25519),
            _ => Err(format!("unknown algorithm {s:?}: use rsa or ed25519")),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum KeyState {
    Pending,
    Active,
    Retiring,
}

impl KeyState {
    pub fn as_str(self) -> &'static str {
        match self {
            KeyState::Pending => "pending",
            KeyState::Active => "active",
            KeyState::Retiring => "retiring",
        }
    }
}

/// What happens to a message when its domain has an active key that cannot be used.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum OnFailure {
    /// Refuse with `451 4.3.0`: the client keeps the message and retries.
    #[default]
    Tempfail,
    /// Queue it with whatever signatures could be made (maybe none) and log a warning.
    SendUnsigned,
}

impl OnFailure {
    pub fn as_str(self) -> &'static str {
        match self {
            OnFailure::Tempfail => "tempfail",
            OnFailure::SendUnsigned => "send-unsigned",
        }
    }
}

impl std::str::FromStr for OnFailure {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "tempfail" => Ok(OnFailure::Tempfail),
            "send-unsigned" => Ok(OnFailure::SendUnsigned),
            _ => Err(format!(
                "unknown policy {s:?}: use tempfail or send-unsigned"
            )),
        }
    }
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
struct ProjectDkim {
    #[serde(default)]
    on_failure: OnFailure,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyInfo {
    pub domain: String,
    pub selector: String,
    pub algorithm: Algorithm,
    /// RSA modulus size; 256 for Ed25519.
    pub bits: usize,
    pub state: KeyState,
    pub created: u64,
    #[serde(default)]
    pub activated: Option<u64>,
    #[serde(default)]
    pub retired: Option<u64>,
    /// Base64 of the `p=` value: SubjectPublicKeyInfo for RSA, the raw 32 bytes for Ed25519.
    pub public_key: String,
}

impl KeyInfo {
    pub fn dns_name(&self) -> String {
        format!("{}._domainkey.{}.", self.selector, self.domain)
    }

    pub fn txt_value(&self) -> String {
        format!(
            "v=DKIM1; k={}; p={}",
            self.algorithm.dns_k(),
            self.public_key
        )
    }

    /// The zone-file line to publish.
    pub fn txt_record(&self) -> String {
        format!(
            "{} IN TXT {}",
            self.dns_name(),
            quote_txt(&self.txt_value())
        )
    }
}

/// Splits a TXT value into the ≤ 255-byte character-strings DNS requires (RFC 1035 §3.3).
pub fn txt_strings(value: &str) -> Vec<String> {
    // The values here are ASCII, so byte chunks are character chunks.
    value
        .as_bytes()
        .chunks(255)
        .map(|c| String::from_utf8_lossy(c).into_owned())
        .collect()
}

pub fn quote_txt(value: &str) -> String {
    txt_strings(value)
        .iter()
        .map(|s| format!("\"{s}\""))
        .collect::<Vec<_>>()
        .join(" ")
}

#[derive(Debug, thiserror::Error)]
pub enum DkimKeyError {
    #[error("invalid domain {0:?}: use a DNS name such as example.com")]
    InvalidDomain(String),
    #[error("invalid selector {0:?}: use DNS labels (letters, digits, hyphens) such as s202611")]
    InvalidSelector(String),
    #[error("RSA keys must have {MIN_RSA_BITS} to {MAX_RSA_BITS} bits, not {0}")]
    RsaBits(usize),
    #[error("{domain} already has a key with selector {selector}")]
    Exists { domain: String, selector: String },
    #[error("{domain} has no key with selector {selector}")]
    Unknown { domain: String, selector: String },
    #[error("key {selector} of {domain} is active: retire it first")]
    RemoveActive { domain: String, selector: String },
    #[error("key {selector} of {domain} was never active: remove it instead")]
    RetirePending { domain: String, selector: String },
    #[error("not a usable private key: {0}")]
    BadKey(String),
    #[error("cannot generate the key: {0}")]
    Generate(String),
    #[error("key file {path}: {message}")]
    File { path: PathBuf, message: String },
    #[error("key file {path} holds a different key than the published {domain} record {selector}")]
    Mismatch {
        path: PathBuf,
        domain: String,
        selector: String,
    },
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("key {selector} of {domain}: {source}")]
    Seal {
        domain: String,
        selector: String,
        source: crate::sealing::SealError,
    },
}

impl From<sled::Error> for DkimKeyError {
    fn from(e: sled::Error) -> Self {
        DkimKeyError::Store(StoreError::Sled(e))
    }
}

/// A private key in the one form the relay keeps: PKCS#8 DER, plus what the DNS record needs.
#[derive(Clone)]
pub struct KeyMaterial {
    pub algorithm: Algorithm,
    pub bits: usize,
    pkcs8: Vec<u8>,
    /// Base64 `p=` value.
    pub public_key: String,
}

impl std::fmt::Debug for KeyMaterial {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeyMaterial")
            .field("algorithm", &self.algorithm)
            .field("bits", &self.bits)
            .field("private", &"[redacted]")
            .finish()
    }
}

impl KeyMaterial {
    pub fn to_pem(&self) -> String {
        let body = B64.encode(&self.pkcs8);
        let mut out = String::from("-----BEGIN PRIVATE KEY-----\n");
        for line in body.as_bytes().chunks(64) {
            out.push_str(&String::from_utf8_lossy(line));
            out.push('\n');
        }
        out.push_str("-----END PRIVATE KEY-----\n");
        out
    }

    /// The key in the form mail-auth signs with.
    pub fn signing_key(&self) -> Result<SignKey, DkimKeyError> {
        Ok(match self.algorithm {
            Algorithm::Rsa => SignKey::Rsa(RsaSigner {
                inner: aws_lc_rs::signature::RsaKeyPair::from_pkcs8(&self.pkcs8)
                    .map_err(|e| DkimKeyError::BadKey(e.to_string()))?,
                rng: aws_lc_rs::rand::SystemRandom::new(),
            }),
            Algorithm::Ed25519 => SignKey::Ed25519(
                Ed25519Key::from_pkcs8_maybe_unchecked_der(&self.pkcs8)
                    .map_err(|e| DkimKeyError::BadKey(e.to_string()))?,
            ),
        })
    }
}

/// A parsed signing key. RSA signs with aws-lc, whose RSA-2048 private operation (AVX-512
/// IFMA / ADX Montgomery code) takes about half the time of ring's on the machines we measured
/// (BENCHMARKS.md); one RSA signature per message is the largest CPU cost of a signed message.
/// Ed25519 stays on ring through mail-auth.
pub enum SignKey {
    Rsa(RsaSigner),
    Ed25519(Ed25519Key),
}

pub struct RsaSigner {
    inner: aws_lc_rs::signature::RsaKeyPair,
    rng: aws_lc_rs::rand::SystemRandom,
}

impl SigningKey for SignKey {
    type Hasher = Sha256;

    fn sign(&self, input: impl Writable) -> mail_auth::Result<Vec<u8>> {
        match self {
            SignKey::Rsa(key) => {
                let mut data = Vec::with_capacity(512);
                input.write(&mut data);
                let mut signature = vec![0; key.inner.public_modulus_len()];
                key.inner
                    .sign(
                        &aws_lc_rs::signature::RSA_PKCS1_SHA256,
                        &key.rng,
                        &data,
                        &mut signature,
                    )
                    .map_err(|e| {
                        mail_auth::Error::Crypto(mail_auth::common::crypto::CryptoError::Library(
                            e.to_string(),
                        ))
                    })?;
                Ok(signature)
            }
            SignKey::Ed25519(key) => key.sign(input),
        }
    }

    fn algorithm(&self) -> SigAlgorithm {
        match self {
            SignKey::Rsa(_) => SigAlgorithm::RsaSha256,
            SignKey::Ed25519(key) => key.algorithm(),
        }
    }
}

/// Generates a key: RSA with the `rsa` crate (ring cannot generate RSA), Ed25519 with ring.
pub fn generate_key(
    algorithm: Algorithm,
    bits: Option<usize>,
) -> Result<KeyMaterial, DkimKeyError> {
    match algorithm {
        Algorithm::Rsa => {
            let bits = bits.unwrap_or(DEFAULT_RSA_BITS);
            if !(MIN_RSA_BITS..=MAX_RSA_BITS).contains(&bits) {
                return Err(DkimKeyError::RsaBits(bits));
            }
            let key = RsaPrivateKey::new(&mut rsa::rand_core::OsRng, bits)
                .map_err(|e| DkimKeyError::Generate(e.to_string()))?;
            from_rsa(key)
        }
        Algorithm::Ed25519 => {
            let der =
                Ed25519Key::generate_pkcs8().map_err(|e| DkimKeyError::Generate(e.to_string()))?;
            from_ed25519(der)
        }
    }
}

/// Reads an existing private key: PKCS#8 (RSA or Ed25519) or PKCS#1 (RSA) PEM.
pub fn parse_private_key(pem: &str) -> Result<KeyMaterial, DkimKeyError> {
    let der = PrivateKeyDer::from_pem_slice(pem.as_bytes())
        .map_err(|e| DkimKeyError::BadKey(format!("expected a PEM private key ({e:?})")))?;
    match der {
        PrivateKeyDer::Pkcs1(k) => {
            let key = RsaPrivateKey::from_pkcs1_der(k.secret_pkcs1_der())
                .map_err(|e| DkimKeyError::BadKey(e.to_string()))?;
            from_rsa(key)
        }
        PrivateKeyDer::Pkcs8(k) => {
            let der = k.secret_pkcs8_der();
            if Ed25519Key::from_pkcs8_maybe_unchecked_der(der).is_ok() {
                return from_ed25519(der.to_vec());
            }
            let key = RsaPrivateKey::from_pkcs8_der(der).map_err(|e| {
                DkimKeyError::BadKey(format!("neither an Ed25519 nor an RSA key ({e})"))
            })?;
            from_rsa(key)
        }
        _ => Err(DkimKeyError::BadKey(
            "only RSA and Ed25519 keys can sign DKIM".into(),
        )),
    }
}

fn from_rsa(key: RsaPrivateKey) -> Result<KeyMaterial, DkimKeyError> {
    let bits = key.n().bits();
    if !(MIN_RSA_BITS..=MAX_RSA_BITS).contains(&bits) {
        return Err(DkimKeyError::RsaBits(bits));
    }
    let bad = |e: &dyn std::fmt::Display| DkimKeyError::BadKey(e.to_string());
    let pkcs8 = key.to_pkcs8_der().map_err(|e| bad(&e))?.as_bytes().to_vec();
    let spki = key
        .to_public_key()
        .to_public_key_der()
        .map_err(|e| bad(&e))?;
    let material = KeyMaterial {
        algorithm: Algorithm::Rsa,
        bits,
        pkcs8,
        public_key: B64.encode(spki.as_bytes()),
    };
    // Fail now, not at the first message, if the signer will not take it.
    material.signing_key()?;
    Ok(material)
}

fn from_ed25519(pkcs8: Vec<u8>) -> Result<KeyMaterial, DkimKeyError> {
    let key = Ed25519Key::from_pkcs8_maybe_unchecked_der(&pkcs8)
        .map_err(|e| DkimKeyError::BadKey(e.to_string()))?;
    Ok(KeyMaterial {
        algorithm: Algorithm::Ed25519,
        bits: 256,
        public_key: B64.encode(key.public_key()),
        pkcs8,
    })
}

/// A ready signer: relaxed/relaxed, the headers of [`SIGNED_HEADERS`], `t=` and no `l=`
/// (mail-auth sets `t=` itself and leaves `l=` out unless asked).
pub fn signer(key: SignKey, domain: &str, selector: &str) -> DkimSigner<SignKey, Done> {
    DkimSigner::from_key(key)
        .domain(domain)
        .selector(selector)
        .headers(SIGNED_HEADERS.iter().copied())
        .header_canonicalization(Canonicalization::Relaxed)
        .body_canonicalization(Canonicalization::Relaxed)
}

/// Lowercases and checks a selector (one or more DNS labels).
pub fn normalize_selector(s: &str) -> Result<String, DkimKeyError> {
    let s = s.trim().to_ascii_lowercase();
    let ok = s.len() <= 63 && s.split('.').all(is_dns_label);
    if ok {
        Ok(s)
    } else {
        Err(DkimKeyError::InvalidSelector(s))
    }
}

fn domain(d: &str) -> Result<String, DkimKeyError> {
    normalize_domain(d).map_err(|_| DkimKeyError::InvalidDomain(d.trim().to_string()))
}

/// A usable active key.
pub struct ActiveKey {
    pub info: KeyInfo,
    pub signer: DkimSigner<SignKey, Done>,
}

/// The active keys of one domain, at most one per algorithm (RSA first).
pub struct ActiveKeys {
    pub keys: Vec<ActiveKey>,
}

#[derive(Default)]
struct Cache {
    /// Bumped on every change, so a load that raced with a change is not cached.
    generation: AtomicU64,
    domains: RwLock<HashMap<String, Arc<ActiveKeys>>>,
}

#[derive(Clone)]
pub struct DkimKeys {
    store: Store,
    dir: PathBuf,
    /// Host of the default upstream, for the suggested SPF record.
    upstream_host: Option<String>,
    cache: Arc<Cache>,
    /// Serialises admin changes: activation rewrites two keys.
    admin: Arc<Mutex<()>>,
    /// Cluster mode: private keys are also kept sealed in `dkim_sealed` for the other nodes.
    seal: Option<SealKey>,
}

impl std::fmt::Debug for DkimKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DkimKeys")
            .field("dir", &self.dir)
            .finish_non_exhaustive()
    }
}

fn record_key(domain: &str, selector: &str) -> Vec<u8> {
    let mut k = Vec::with_capacity(domain.len() + selector.len() + 1);
    k.extend_from_slice(domain.as_bytes());
    k.push(0);
    k.extend_from_slice(selector.as_bytes());
    k
}

fn decode<T: for<'a> Deserialize<'a>>(v: &[u8]) -> Result<T, DkimKeyError> {
    serde_json::from_slice(v).map_err(|e| DkimKeyError::Store(StoreError::Corrupt(e.to_string())))
}

fn encode<T: Serialize>(v: &T) -> Vec<u8> {
    serde_json::to_vec(v).unwrap_or_default()
}

impl DkimKeys {
    pub fn new(store: Store, config: &Config) -> DkimKeys {
        let upstream_host = config
            .upstreams
            .get(&config.delivery.default_route)
            .filter(|u| u.kind == UpstreamKind::Smtp)
            .and_then(|u| u.host.clone());
        DkimKeys {
            store,
            dir: config.server.state_dir.join("dkim"),
            upstream_host,
            cache: Arc::new(Cache::default()),
            admin: Arc::new(Mutex::new(())),
            seal: None,
        }
    }

    /// Cluster mode: keep a sealed copy of every private key for the other nodes, and write
    /// the files of keys that came from them.
    pub fn with_sealing(mut self, key: SealKey) -> DkimKeys {
        self.seal = Some(key);
        self
    }

    pub fn key_path(&self, domain: &str, selector: &str) -> PathBuf {
        self.dir.join(domain).join(format!("{selector}.pem"))
    }

    pub fn upstream_host(&self) -> Option<&str> {
        self.upstream_host.as_deref()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, ()> {
        self.admin.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// sled hangs on every call after an I/O error, so once the store has failed nothing here
    /// touches it (store.rs); signing then fails like any other key error.
    fn healthy(&self) -> Result<(), DkimKeyError> {
        Ok(self.store.check_healthy()?)
    }

    fn changed(&self) {
        self.cache.generation.fetch_add(1, Ordering::SeqCst);
        self.cache
            .domains
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .clear();
    }

    pub fn get(&self, domain_name: &str, selector: &str) -> Result<KeyInfo, DkimKeyError> {
        let d = domain(domain_name)?;
        let s = normalize_selector(selector)?;
        self.healthy()?;
        match self.store.dkim.get(record_key(&d, &s))? {
            Some(v) => decode(&v),
            None => Err(DkimKeyError::Unknown {
                domain: d,
                selector: s,
            }),
        }
    }

    /// Keys of one domain, or of all, sorted by domain then creation time.
    pub fn list(&self, domain_name: Option<&str>) -> Result<Vec<KeyInfo>, DkimKeyError> {
        let prefix = match domain_name {
            Some(d) => {
                let mut p = domain(d)?.into_bytes();
                p.push(0);
                p
            }
            None => Vec::new(),
        };
        self.healthy()?;
        let mut out: Vec<KeyInfo> = Vec::new();
        for item in self.store.dkim.scan_prefix(prefix) {
            let (_, v) = item?;
            out.push(decode(&v)?);
        }
        out.sort_by(|a, b| {
            (&a.domain, a.created, &a.selector).cmp(&(&b.domain, b.created, &b.selector))
        });
        Ok(out)
    }

    fn put(&self, info: &KeyInfo) -> Result<(), DkimKeyError> {
        self.healthy()?;
        self.store
            .dkim
            .insert(record_key(&info.domain, &info.selector), encode(info))
            .inspect_err(|e| self.store.note_error(e))?;
        Ok(())
    }

    /// `s202611` for RSA, `e202611` for Ed25519 (year and month), with `-2`, `-3`… if taken.
    fn default_selector(&self, d: &str, algorithm: Algorithm) -> Result<String, DkimKeyError> {
        let now = mail_parser::DateTime::from_timestamp(crate::now_secs() as i64);
        let prefix = match algorithm {
            Algorithm::Rsa => 's',
            Algorithm::Ed25519 => 'e',
        };
        let base = format!("{prefix}{:04}{:02}", now.year, now.month);
        self.healthy()?;
        let mut candidate = base.clone();
        let mut n = 2;
        while self.store.dkim.contains_key(record_key(d, &candidate))? {
            candidate = format!("{base}-{n}");
            n += 1;
        }
        Ok(candidate)
    }

    /// Generates and stores a key in state `pending` (or `active` when asked).
    pub fn generate(
        &self,
        domain_name: &str,
        selector: Option<&str>,
        algorithm: Algorithm,
        bits: Option<usize>,
    ) -> Result<(KeyInfo, KeyMaterial), DkimKeyError> {
        let d = domain(domain_name)?;
        if let Some(s) = selector {
            normalize_selector(s)?;
        }
        // Generation takes a while for RSA; do it before taking the admin lock.
        let material = generate_key(algorithm, bits)?;
        let _guard = self.lock();
        let s = match selector {
            Some(s) => normalize_selector(s)?,
            None => self.default_selector(&d, algorithm)?,
        };
        let info = self.add(&d, &s, &material)?;
        Ok((info, material))
    }

    /// Stores an existing key (PEM) in state `pending`.
    pub fn import(
        &self,
        domain_name: &str,
        selector: &str,
        pem: &str,
    ) -> Result<KeyInfo, DkimKeyError> {
        let d = domain(domain_name)?;
        let s = normalize_selector(selector)?;
        let material = parse_private_key(pem)?;
        let _guard = self.lock();
        self.add(&d, &s, &material)
    }

    fn add(&self, d: &str, s: &str, material: &KeyMaterial) -> Result<KeyInfo, DkimKeyError> {
        self.healthy()?;
        if self.store.dkim.contains_key(record_key(d, s))? {
            return Err(DkimKeyError::Exists {
                domain: d.into(),
                selector: s.into(),
            });
        }
        let path = self.key_path(d, s);
        let pem = material.to_pem();
        write_private(&path, pem.as_bytes())?;
        let info = KeyInfo {
            domain: d.into(),
            selector: s.into(),
            algorithm: material.algorithm,
            bits: material.bits,
            state: KeyState::Pending,
            created: crate::now_secs(),
            activated: None,
            retired: None,
            public_key: material.public_key.clone(),
        };
        let stored = self
            .put_sealed(d, s, &pem)
            .and_then(|_| self.put(&info))
            .and_then(|_| Ok(self.store.flush_now()?));
        if let Err(e) = stored {
            let _ = std::fs::remove_file(&path);
            return Err(e);
        }
        Ok(info)
    }

    /// Activates a key; the previously active key of the same algorithm becomes `retiring`.
    /// Returns the key and the keys it replaced.
    pub fn activate(
        &self,
        domain_name: &str,
        selector: &str,
    ) -> Result<(KeyInfo, Vec<KeyInfo>), DkimKeyError> {
        let _guard = self.lock();
        let mut info = self.get(domain_name, selector)?;
        // Refuse to activate a key the signer could not load.
        self.load(&info)?;
        let now = crate::now_secs();
        let mut replaced = Vec::new();
        for mut other in self.list(Some(&info.domain))? {
            if other.selector != info.selector
                && other.algorithm == info.algorithm
                && other.state == KeyState::Active
            {
                other.state = KeyState::Retiring;
                other.retired = Some(now);
                self.put(&other)?;
                replaced.push(other);
            }
        }
        if info.state != KeyState::Active {
            info.state = KeyState::Active;
            info.activated = Some(now);
            info.retired = None;
            self.put(&info)?;
        }
        self.store.flush_now()?;
        self.changed();
        Ok((info, replaced))
    }

    /// Stops signing with a key; it stays published until removed.
    pub fn retire(&self, domain_name: &str, selector: &str) -> Result<KeyInfo, DkimKeyError> {
        let _guard = self.lock();
        let mut info = self.get(domain_name, selector)?;
        match info.state {
            KeyState::Pending => {
                return Err(DkimKeyError::RetirePending {
                    domain: info.domain,
                    selector: info.selector,
                });
            }
            KeyState::Retiring => return Ok(info),
            KeyState::Active => {}
        }
        info.state = KeyState::Retiring;
        info.retired = Some(crate::now_secs());
        self.put(&info)?;
        self.store.flush_now()?;
        self.changed();
        Ok(info)
    }

    /// Deletes a pending or retiring key and its private key file.
    pub fn remove(&self, domain_name: &str, selector: &str) -> Result<KeyInfo, DkimKeyError> {
        let _guard = self.lock();
        let info = self.get(domain_name, selector)?;
        if info.state == KeyState::Active {
            return Err(DkimKeyError::RemoveActive {
                domain: info.domain,
                selector: info.selector,
            });
        }
        let key = record_key(&info.domain, &info.selector);
        self.store
            .dkim
            .remove(key.as_slice())
            .and_then(|_| self.store.dkim_sealed.remove(key))
            .inspect_err(|e| self.store.note_error(e))?;
        self.store.flush_now()?;
        self.changed();
        let path = self.key_path(&info.domain, &info.selector);
        match std::fs::remove_file(&path) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => {
                return Err(DkimKeyError::File {
                    path,
                    message: e.to_string(),
                });
            }
        }
        Ok(info)
    }

    /// Reads, parses and checks one key's private key file.
    fn load(&self, info: &KeyInfo) -> Result<KeyMaterial, DkimKeyError> {
        // The path is built from stored names: check them again before touching the disk.
        let d = domain(&info.domain)?;
        let s = normalize_selector(&info.selector)?;
        let path = self.key_path(&d, &s);
        let pem = match std::fs::read_to_string(&path) {
            Ok(pem) => pem,
            // Created on another node and its file not written yet (refresh_from_cluster
            // writes it): the sealed copy serves meanwhile.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && self.seal.is_some() => {
                match self.unseal(&d, &s)? {
                    Some(pem) => pem,
                    None => return Err(file_error(&path, e)),
                }
            }
            Err(e) => return Err(file_error(&path, e)),
        };
        let material = parse_private_key(&pem).map_err(|e| DkimKeyError::File {
            path: path.clone(),
            message: e.to_string(),
        })?;
        // A replaced file would produce signatures no published record verifies.
        if material.algorithm != info.algorithm || material.public_key != info.public_key {
            return Err(DkimKeyError::Mismatch {
                path,
                domain: d,
                selector: s,
            });
        }
        Ok(material)
    }

    /// The active keys of `domain`, parsed, from the cache when possible. An error (missing or
    /// unreadable key file) is not cached, so fixing the file takes effect at the next message.
    pub fn active(&self, domain_name: &str) -> Result<Arc<ActiveKeys>, DkimKeyError> {
        let d = domain_name.to_ascii_lowercase();
        if let Some(hit) = self
            .cache
            .domains
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(&d)
        {
            return Ok(hit.clone());
        }
        let generation = self.cache.generation.load(Ordering::SeqCst);
        let mut newest: HashMap<Algorithm, KeyInfo> = HashMap::new();
        for info in self.list(Some(&d))? {
            if info.state != KeyState::Active {
                continue;
            }
            match newest.get(&info.algorithm) {
                Some(cur) if cur.activated >= info.activated => {}
                _ => {
                    newest.insert(info.algorithm, info);
                }
            }
        }
        let mut chosen: Vec<KeyInfo> = newest.into_values().collect();
        chosen.sort_by_key(|i| i.algorithm);
        let mut keys = Vec::with_capacity(chosen.len());
        for info in chosen {
            let material = self.load(&info)?;
            let signer = signer(material.signing_key()?, &info.domain, &info.selector);
            keys.push(ActiveKey { info, signer });
        }
        let loaded = Arc::new(ActiveKeys { keys });
        let mut map = self
            .cache
            .domains
            .write()
            .unwrap_or_else(|e| e.into_inner());
        if self.cache.generation.load(Ordering::SeqCst) == generation {
            map.insert(d, loaded.clone());
        }
        Ok(loaded)
    }

    /// Cluster mode: stores `pem` sealed for the other nodes (nothing in single-node mode).
    fn put_sealed(&self, d: &str, s: &str, pem: &str) -> Result<(), DkimKeyError> {
        let Some(seal) = &self.seal else {
            return Ok(());
        };
        let key = record_key(d, s);
        let sealed = seal
            .seal(&key, pem.as_bytes())
            .map_err(|source| DkimKeyError::Seal {
                domain: d.into(),
                selector: s.into(),
                source,
            })?;
        self.healthy()?;
        self.store
            .dkim_sealed
            .insert(key, sealed)
            .inspect_err(|e| self.store.note_error(e))?;
        Ok(())
    }

    /// The PEM another node sealed, if there is one.
    fn unseal(&self, d: &str, s: &str) -> Result<Option<String>, DkimKeyError> {
        let Some(seal) = &self.seal else {
            return Ok(None);
        };
        let key = record_key(d, s);
        self.healthy()?;
        let Some(sealed) = self.store.dkim_sealed.get(&key)? else {
            return Ok(None);
        };
        let fail = |source| DkimKeyError::Seal {
            domain: d.into(),
            selector: s.into(),
            source,
        };
        let plain = seal.open(&key, &sealed).map_err(fail)?;
        String::from_utf8(plain)
            .map(Some)
            .map_err(|_| fail(crate::sealing::SealError::Open))
    }

    /// Cluster mode, at start: seals the keys this node has only as files (made before it
    /// joined a cluster, or before keys were shared), so the other nodes get them too.
    pub fn seal_existing(&self) -> Result<usize, DkimKeyError> {
        if self.seal.is_none() {
            return Ok(0);
        }
        let _guard = self.lock();
        let mut sealed = 0;
        for info in self.list(None)? {
            let key = record_key(&info.domain, &info.selector);
            if self.store.dkim_sealed.contains_key(&key)? {
                continue;
            }
            // One unreadable key file must not keep the others from being shared.
            match self.load(&info) {
                Ok(material) => {
                    self.put_sealed(&info.domain, &info.selector, &material.to_pem())?;
                    sealed += 1;
                }
                Err(e) => tracing::warn!(
                    domain = info.domain,
                    selector = info.selector,
                    error = %e,
                    "cluster: DKIM key not shared with the other nodes"
                ),
            }
        }
        if sealed > 0 {
            self.store.flush_now()?;
        }
        Ok(sealed)
    }

    /// Cluster mode: each time the cluster layer brings key records from Redis, this node's
    /// key files and signing cache follow ([`DkimKeys::refresh_from_cluster`]).
    pub fn follow(&self, cluster: &crate::cluster::Cluster) {
        use crate::store::trees;
        let keys = self.clone();
        cluster.on_change(move |changes| {
            let ours = [trees::DKIM, trees::DKIM_PROJECTS, trees::DKIM_SEALED];
            if !changes.iter().any(|c| ours.contains(&c.tree)) {
                return;
            }
            let removed: Vec<Vec<u8>> = changes
                .iter()
                .filter(|c| c.tree == trees::DKIM && c.value.is_none())
                .map(|c| c.key.clone())
                .collect();
            if let Err(e) = keys.refresh_from_cluster(&removed) {
                tracing::warn!(error = %e, "cluster: DKIM keys from Redis not applied");
            }
        });
    }

    /// After the cluster layer changed the key trees from Redis: writes the files of keys
    /// that arrived, deletes the files of the keys removed elsewhere (`removed`: their
    /// `domain \0 selector` record keys), and drops the signing cache so the next message uses
    /// what is active now. Blocking (file I/O).
    pub fn refresh_from_cluster(&self, removed: &[Vec<u8>]) -> Result<(), DkimKeyError> {
        let _guard = self.lock();
        self.changed();
        for info in self.list(None)? {
            let path = self.key_path(&info.domain, &info.selector);
            if !path.exists()
                && let Some(pem) = self.unseal(&info.domain, &info.selector)?
            {
                write_private(&path, pem.as_bytes())?;
            }
        }
        for key in removed {
            let text = String::from_utf8_lossy(key);
            let Some((d, s)) = text.split_once('\0') else {
                continue;
            };
            // The names came from Redis: checked again before they become a path.
            let (Ok(d), Ok(s)) = (domain(d), normalize_selector(s)) else {
                continue;
            };
            if self.store.dkim.contains_key(record_key(&d, &s))? {
                continue;
            }
            match std::fs::remove_file(self.key_path(&d, &s)) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                    return Err(file_error(&self.key_path(&d, &s), e));
                }
                _ => {}
            }
        }
        Ok(())
    }

    pub fn on_failure(&self, project_id: &str) -> Result<OnFailure, DkimKeyError> {
        self.healthy()?;
        Ok(match self.store.dkim_projects.get(project_id.as_bytes())? {
            Some(v) => decode::<ProjectDkim>(&v)?.on_failure,
            None => OnFailure::default(),
        })
    }

    pub fn set_on_failure(&self, project_id: &str, policy: OnFailure) -> Result<(), DkimKeyError> {
        let record = ProjectDkim { on_failure: policy };
        self.healthy()?;
        self.store
            .dkim_projects
            .insert(project_id.as_bytes(), encode(&record))
            .inspect_err(|e| self.store.note_error(e))?;
        self.store.flush_now()?;
        Ok(())
    }
}

fn file_error(path: &Path, e: std::io::Error) -> DkimKeyError {
    DkimKeyError::File {
        path: path.to_path_buf(),
        message: e.to_string(),
    }
}

/// Writes a private key file readable by the service user only (directories 0700, file 0600,
/// created with that mode so it is never briefly readable by others).
fn write_private(path: &Path, contents: &[u8]) -> Result<(), DkimKeyError> {
    let fail = |e: std::io::Error| DkimKeyError::File {
        path: path.to_path_buf(),
        message: e.to_string(),
    };
    if let Some(parent) = path.parent() {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(parent)
            .map_err(fail)?;
    }
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(|e| {
            if e.kind() == std::io::ErrorKind::AlreadyExists {
                DkimKeyError::File {
                    path: path.to_path_buf(),
                    message: "exists already (left from an earlier key?); move it away first"
                        .into(),
                }
            } else {
                fail(e)
            }
        })?;
    let written = f.write_all(contents).and_then(|_| f.sync_all());
    if let Err(e) = written {
        let _ = std::fs::remove_file(path);
        return Err(fail(e));
    }
    Ok(())
}

/// One record to publish, with the reason to publish it.
#[derive(Debug, Clone, Serialize)]
pub struct DnsRecord {
    /// `dkim`, `spf` or `dmarc`.
    pub kind: &'static str,
    pub name: String,
    pub value: String,
    /// The zone-file line (values over 255 bytes split into several strings).
    pub record: String,
    pub comment: String,
}

/// The SPF `include:` of well-known upstreams, by the suffix of their SMTP host.
const SPF_INCLUDES: &[(&str, &str, &str)] = &[
    ("sendgrid.net", "include:sendgrid.net", "SendGrid"),
    ("amazonaws.com", "include:amazonses.com", "Amazon SES"),
    (
        "resend.com",
        "include:amazonses.com",
        "Resend (sends through Amazon SES)",
    ),
    ("gmail.com", "include:_spf.google.com", "Google Workspace"),
    ("google.com", "include:_spf.google.com", "Google Workspace"),
    (
        "office365.com",
        "include:spf.protection.outlook.com",
        "Microsoft 365",
    ),
    (
        "outlook.com",
        "include:spf.protection.outlook.com",
        "Microsoft 365",
    ),
    ("mailgun.org", "include:mailgun.org", "Mailgun"),
    ("postmarkapp.com", "include:spf.mtasv.net", "Postmark"),
    (
        "aliyun.com",
        "include:spf1.dm.aliyun.com",
        "Aliyun DirectMail",
    ),
];

/// The SPF `include:` and provider name of a well-known upstream host, by its suffix.
pub fn known_spf_include(host: &str) -> Option<(String, String)> {
    let h = host.to_ascii_lowercase();
    SPF_INCLUDES
        .iter()
        .find(|(suffix, _, _)| h == *suffix || h.ends_with(&format!(".{suffix}")))
        .map(|(_, inc, name)| (inc.to_string(), name.to_string()))
}

/// Every record to publish for `domain`: the DKIM record of each stored key, and a suggested
/// SPF and DMARC record.
pub fn dns_records(domain: &str, keys: &[KeyInfo], upstream_host: Option<&str>) -> Vec<DnsRecord> {
    let mut out = Vec::new();
    for k in keys.iter().filter(|k| k.domain == domain) {
        let comment = match k.state {
            KeyState::Pending => format!(
                "{} {}-bit, pending: publish, wait for DNS to propagate, then `smtp-relay dkim activate {} {}`",
                k.algorithm, k.bits, k.domain, k.selector
            ),
            KeyState::Active => format!(
                "{} {}-bit, active: signs outgoing mail",
                k.algorithm, k.bits
            ),
            KeyState::Retiring => format!(
                "{} {}-bit, retiring: keep published a few days so mail already sent still verifies, then `smtp-relay dkim remove {} {}` and delete this record",
                k.algorithm, k.bits, k.domain, k.selector
            ),
        };
        out.push(DnsRecord {
            kind: "dkim",
            name: k.dns_name(),
            value: k.txt_value(),
            record: k.txt_record(),
            comment,
        });
    }
    let known = upstream_host.and_then(known_spf_include);
    let (mechanism, spf_comment) = match (known, upstream_host) {
        (Some((inc, name)), _) => (
            inc,
            format!("SPF (suggested): lets {name}, your upstream, send for {domain}. Merge it into an existing SPF record: a domain has only one"),
        ),
        (None, Some(host)) => (
            format!("a:{host}"),
            format!("SPF (suggested): authorises the upstream host {host}; prefer the include: your provider documents. A domain has only one SPF record"),
        ),
        (None, None) => (
            "mx".to_string(),
            "SPF (suggested): no SMTP upstream is configured; replace mx with your provider's include:. A domain has only one SPF record".to_string(),
        ),
    };
    let spf = format!("v=spf1 {mechanism} ~all");
    out.push(DnsRecord {
        kind: "spf",
        name: format!("{domain}."),
        record: format!("{domain}. IN TXT {}", quote_txt(&spf)),
        value: spf,
        comment: spf_comment,
    });
    let dmarc = format!("v=DMARC1; p=none; rua=mailto:dmarc-reports@{domain}");
    out.push(DnsRecord {
        kind: "dmarc",
        name: format!("_dmarc.{domain}."),
        record: format!("_dmarc.{domain}. IN TXT {}", quote_txt(&dmarc)),
        value: dmarc,
        comment: "DMARC (suggested): p=none only reports; once the reports show all mail passing DKIM, move to p=quarantine, then p=reject".into(),
    });
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys() -> (tempfile::TempDir, DkimKeys) {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let mut config = Config::builtin().unwrap();
        config.server.state_dir = dir.path().to_path_buf();
        let keys = DkimKeys::new(store, &config);
        (dir, keys)
    }

    #[test]
    fn rsa_below_2048_is_refused() {
        assert!(matches!(
            generate_key(Algorithm::Rsa, Some(1024)),
            Err(DkimKeyError::RsaBits(1024))
        ));
        let small = RsaPrivateKey::new(&mut rsa::rand_core::OsRng, 1024).unwrap();
        let pem = small.to_pkcs8_pem(Default::default()).unwrap();
        assert!(matches!(
            parse_private_key(&pem),
            Err(DkimKeyError::RsaBits(1024))
        ));
    }

    #[test]
    fn pem_round_trip_and_record_shape() {
        let ed = generate_key(Algorithm::Ed25519, None).unwrap();
        let back = parse_private_key(&ed.to_pem()).unwrap();
        assert_eq!(back.public_key, ed.public_key);
        assert_eq!(B64.decode(&ed.public_key).unwrap().len(), 32);

        let rsa = generate_key(Algorithm::Rsa, None).unwrap();
        assert_eq!(rsa.bits, 2048);
        let back = parse_private_key(&rsa.to_pem()).unwrap();
        assert_eq!(back.public_key, rsa.public_key);
        let info = KeyInfo {
            domain: "example.com".into(),
            selector: "s1".into(),
            algorithm: Algorithm::Rsa,
            bits: 2048,
            state: KeyState::Pending,
            created: 0,
            activated: None,
            retired: None,
            public_key: rsa.public_key.clone(),
        };
        let strings = txt_strings(&info.txt_value());
        assert!(strings.len() >= 2 && strings.iter().all(|s| s.len() <= 255));
        assert_eq!(strings.concat(), info.txt_value());
        assert!(
            info.txt_record()
                .starts_with("s1._domainkey.example.com. IN TXT \"v=DKIM1; k=rsa; p=MII")
        );
    }

    #[test]
    fn pkcs1_import_is_converted() {
        use rsa::pkcs1::EncodeRsaPrivateKey;
        let key = RsaPrivateKey::new(&mut rsa::rand_core::OsRng, 2048).unwrap();
        let pem = key.to_pkcs1_pem(Default::default()).unwrap();
        let m = parse_private_key(&pem).unwrap();
        assert_eq!(m.algorithm, Algorithm::Rsa);
        assert!(m.to_pem().starts_with("-----BEGIN PRIVATE KEY-----\n"));
        assert!(parse_private_key("not a key").is_err());
    }

    #[test]
    fn lifecycle_and_file_mode() {
        use std::os::unix::fs::PermissionsExt;
        let (_dir, keys) = keys();
        let (a, _) = keys
            .generate("Example.com", Some("one"), Algorithm::Ed25519, None)
            .unwrap();
        assert_eq!(a.state, KeyState::Pending);
        let mode = std::fs::metadata(keys.key_path("example.com", "one"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        assert!(keys.active("example.com").unwrap().keys.is_empty());

        keys.activate("example.com", "one").unwrap();
        let active = keys.active("example.com").unwrap();
        assert_eq!(active.keys.len(), 1);
        assert_eq!(active.keys[0].info.selector, "one");

        keys.generate("example.com", Some("two"), Algorithm::Ed25519, None)
            .unwrap();
        assert!(matches!(
            keys.generate("example.com", Some("two"), Algorithm::Ed25519, None),
            Err(DkimKeyError::Exists { .. })
        ));
        let (_, replaced) = keys.activate("example.com", "two").unwrap();
        assert_eq!(replaced.len(), 1);
        assert_eq!(replaced[0].state, KeyState::Retiring);
        // The cache was dropped: the new key signs at once.
        assert_eq!(
            keys.active("example.com").unwrap().keys[0].info.selector,
            "two"
        );
        assert!(matches!(
            keys.remove("example.com", "two"),
            Err(DkimKeyError::RemoveActive { .. })
        ));
        keys.remove("example.com", "one").unwrap();
        assert!(!keys.key_path("example.com", "one").exists());
        assert_eq!(keys.list(Some("example.com")).unwrap().len(), 1);
    }

    #[test]
    fn missing_key_file_is_an_error_not_a_cached_absence() {
        let (_dir, keys) = keys();
        keys.generate("example.com", Some("k"), Algorithm::Ed25519, None)
            .unwrap();
        keys.activate("example.com", "k").unwrap();
        let path = keys.key_path("example.com", "k");
        let pem = std::fs::read(&path).unwrap();
        keys.changed();
        std::fs::remove_file(&path).unwrap();
        assert!(matches!(
            keys.active("example.com"),
            Err(DkimKeyError::File { .. })
        ));
        std::fs::write(&path, pem).unwrap();
        assert_eq!(keys.active("example.com").unwrap().keys.len(), 1);
    }

    #[test]
    fn default_selectors_do_not_collide() {
        let (_dir, keys) = keys();
        let (a, _) = keys
            .generate("example.com", None, Algorithm::Ed25519, None)
            .unwrap();
        let (b, _) = keys
            .generate("example.com", None, Algorithm::Ed25519, None)
            .unwrap();
        assert!(
            a.selector.starts_with('e') && a.selector.len() == 7,
            "{}",
            a.selector
        );
        assert_eq!(b.selector, format!("{}-2", a.selector));
        for bad in ["", "a/b", "..", "-a", "a b"] {
            assert!(normalize_selector(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn dns_suggestions() {
        let recs = dns_records("example.com", &[], Some("smtp.sendgrid.net"));
        assert_eq!(recs.len(), 2);
        assert_eq!(recs[0].value, "v=spf1 include:sendgrid.net ~all");
        assert!(
            recs[1]
                .record
                .starts_with("_dmarc.example.com. IN TXT \"v=DMARC1; p=none")
        );
        let recs = dns_records("example.com", &[], None);
        assert_eq!(recs[0].value, "v=spf1 mx ~all");
    }
}
