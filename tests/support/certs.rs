//! Throw-away PKI for tests: a self-signed CA and a server certificate it signed, valid for
//! `localhost` and `127.0.0.1`.
//!
//! Everything TLS here is built with an explicit ring provider
//! (`builder_with_provider(..)`), never `builder()`: the test process must not depend on a
//! process-wide default crypto provider being installed.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};
use rustls::crypto::CryptoProvider;
use rustls::{ClientConfig, RootCertStore, ServerConfig};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

/// A CA certificate plus a server leaf certificate and its private key, all PEM-encoded.
#[derive(Clone, Debug)]
pub struct TestPki {
    /// The self-signed CA certificate (trust anchor for clients).
    pub ca_pem: String,
    /// The server leaf certificate (leaf only, no chain), signed by the CA.
    pub cert_pem: String,
    /// The leaf's private key (PKCS#8, ECDSA P-256).
    pub key_pem: String,
}

/// Paths written by [`TestPki::write_to`].
#[derive(Clone, Debug)]
pub struct PkiFiles {
    pub ca: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// The one crypto provider tests use: ring, matching the relay's build.
pub fn ring_provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

impl TestPki {
    /// Generates a fresh CA and a leaf for DNS `localhost` and IP `127.0.0.1`.
    /// Each call gives an unrelated PKI (handy for "untrusted certificate" tests).
    pub fn generate() -> TestPki {
        Self::generate_with(false, None)
    }

    /// Like [`generate`](Self::generate), but the leaf expires at midnight UTC `days` days
    /// from today (for expiry warnings).
    pub fn generate_expiring_in_days(days: u64) -> TestPki {
        Self::generate_with(false, Some(days))
    }

    /// Like [`generate`](Self::generate), but the leaf expired on 2021-01-02 (for "certificate
    /// expired" errors); the CA is still valid.
    pub fn generate_expired() -> TestPki {
        Self::generate_with(true, None)
    }

    fn generate_with(expired: bool, expires_in_days: Option<u64>) -> TestPki {
        // CA
        let mut ca_params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
        ca_params
            .distinguished_name
            .push(DnType::CommonName, "smtp-relay test CA");
        ca_params
            .distinguished_name
            .push(DnType::OrganizationName, "smtp-relay tests");
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca_params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let ca_key = KeyPair::generate().expect("generate CA key");
        let ca_cert = ca_params.self_signed(&ca_key).expect("self-sign CA");
        let issuer = Issuer::new(ca_params, ca_key);

        // Leaf
        let mut leaf_params =
            CertificateParams::new(vec!["localhost".to_string(), "127.0.0.1".to_string()])
                .expect("leaf params");
        leaf_params
            .distinguished_name
            .push(DnType::CommonName, "localhost");
        leaf_params.is_ca = IsCa::ExplicitNoCa;
        leaf_params.use_authority_key_identifier_extension = true;
        leaf_params.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ];
        leaf_params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        if expired {
            leaf_params.not_before = rcgen::date_time_ymd(2020, 1, 1);
            leaf_params.not_after = rcgen::date_time_ymd(2021, 1, 2);
        }
        if let Some(days) = expires_in_days {
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .expect("clock after 1970")
                .as_secs();
            let (y, m, d) = civil_from_days((now / 86_400 + days) as i64);
            leaf_params.not_after = rcgen::date_time_ymd(y, m, d);
        }
        let leaf_key = KeyPair::generate().expect("generate leaf key");
        let leaf_cert = leaf_params
            .signed_by(&leaf_key, &issuer)
            .expect("sign leaf");

        TestPki {
            ca_pem: ca_cert.pem(),
            cert_pem: leaf_cert.pem(),
            key_pem: leaf_key.serialize_pem(),
        }
    }

    /// Writes `ca.pem`, `cert.pem` and `key.pem` into `dir` (the key with mode 0600 on Unix).
    pub fn write_to(&self, dir: &Path) -> PkiFiles {
        std::fs::create_dir_all(dir).expect("create PKI directory");
        let files = PkiFiles {
            ca: dir.join("ca.pem"),
            cert: dir.join("cert.pem"),
            key: dir.join("key.pem"),
        };
        std::fs::write(&files.ca, &self.ca_pem).expect("write ca.pem");
        std::fs::write(&files.cert, &self.cert_pem).expect("write cert.pem");
        write_private(&files.key, self.key_pem.as_bytes());
        files
    }

    /// The CA certificate, DER.
    pub fn ca_der(&self) -> CertificateDer<'static> {
        CertificateDer::from_pem_slice(self.ca_pem.as_bytes()).expect("parse CA PEM")
    }

    /// The server's certificate chain (just the leaf), DER.
    pub fn cert_chain(&self) -> Vec<CertificateDer<'static>> {
        CertificateDer::pem_slice_iter(self.cert_pem.as_bytes())
            .collect::<Result<Vec<_>, _>>()
            .expect("parse certificate PEM")
    }

    /// The server's private key, DER.
    pub fn private_key(&self) -> PrivateKeyDer<'static> {
        PrivateKeyDer::from_pem_slice(self.key_pem.as_bytes()).expect("parse key PEM")
    }

    /// A root store holding only this PKI's CA.
    pub fn root_store(&self) -> RootCertStore {
        let mut roots = RootCertStore::empty();
        roots.add(self.ca_der()).expect("add CA to root store");
        roots
    }

    /// A rustls server config presenting the leaf certificate (ring provider, TLS 1.2 + 1.3).
    pub fn server_config(&self) -> Arc<ServerConfig> {
        let config = ServerConfig::builder_with_provider(ring_provider())
            .with_safe_default_protocol_versions()
            .expect("protocol versions")
            .with_no_client_auth()
            .with_single_cert(self.cert_chain(), self.private_key())
            .expect("server certificate and key");
        Arc::new(config)
    }

    /// A rustls client config trusting only this PKI's CA (ring provider).
    pub fn client_config(&self) -> Arc<ClientConfig> {
        let config = ClientConfig::builder_with_provider(ring_provider())
            .with_safe_default_protocol_versions()
            .expect("protocol versions")
            .with_root_certificates(self.root_store())
            .with_no_client_auth();
        Arc::new(config)
    }
}

#[cfg(unix)]
fn write_private(path: &Path, bytes: &[u8]) {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let _ = std::fs::remove_file(path);
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .expect("create key.pem");
    f.write_all(bytes).expect("write key.pem");
}

#[cfg(not(unix))]
fn write_private(path: &Path, bytes: &[u8]) {
    std::fs::write(path, bytes).expect("write key.pem");
}

/// (year, month, day) of a day count since 1970-01-01 (Howard Hinnant's civil_from_days).
fn civil_from_days(z: i64) -> (i32, u8, u8) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y as i32, m as u8, d as u8)
}
