//! DKIM signatures per second on a 4 KiB message, for RSA-2048 and Ed25519.
//!
//! Two figures per algorithm: the signer alone (canonicalise, hash, sign), and the whole
//! transform step the relay runs per message (`transform::dkim::sign`: find the From domain,
//! take the cached key, sign, prepend the header). Single thread; each run is bounded in time
//! and count.
//!
//! The RSA signer is also measured through ring (mail-auth's own signer, the relay's backend
//! before aws-lc) in the same run, as the baseline for the ratio.
//!
//! Run: `cargo bench --bench dkim_sign`

use std::time::{Duration, Instant};

use smtp_relay::config::Config;
use smtp_relay::policy::projects::Project;
use smtp_relay::store::Store;
use smtp_relay::transform::TransformContext;
use smtp_relay::transform::dkim::{Signing, sign};
use smtp_relay::transform::dkim_keys::{Algorithm, DkimKeys, generate_key, signer};

const RUN: Duration = Duration::from_secs(3);
const MAX_ITERATIONS: u64 = 1_000_000;

fn message() -> Vec<u8> {
    let mut m = String::from(
        "Received: from app ([127.0.0.1])\r\n\tby relay.test (smtp-relay) with ESMTPSA id bench;\r\n\tMon, 1 Jan 2024 00:00:00 +0000\r\n\
         From: Shop <noreply@bench.test>\r\nTo: <user@example.net>\r\nSubject: Your order\r\n\
         Date: Mon, 1 Jan 2024 00:00:00 +0000\r\nMessage-ID: <bench@relay.test>\r\n\
         MIME-Version: 1.0\r\nContent-Type: text/plain; charset=utf-8\r\n\r\n",
    );
    let line = "Thank you for your order. It will ship within two working days.\r\n";
    while m.len() + line.len() <= 4096 {
        m.push_str(line);
    }
    while m.len() < 4094 {
        m.push('.');
    }
    m.push_str("\r\n");
    assert_eq!(m.len(), 4096);
    m.into_bytes()
}

fn measure(label: &str, unit: &str, mut f: impl FnMut()) {
    // Warm up caches and the CPU clock.
    for _ in 0..20 {
        f();
    }
    let start = Instant::now();
    let mut n = 0u64;
    while start.elapsed() < RUN && n < MAX_ITERATIONS {
        f();
        n += 1;
    }
    let secs = start.elapsed().as_secs_f64();
    println!(
        "{label:<36} {:>8.0} {unit}/s  ({n} in {secs:.2} s, {:.1} µs each)",
        n as f64 / secs,
        secs * 1e6 / n as f64
    );
}

fn main() {
    let msg = message();
    println!(
        "message: {} bytes, single thread, {} s per run",
        msg.len(),
        RUN.as_secs()
    );

    for (alg, name) in [
        (Algorithm::Rsa, "RSA-2048"),
        (Algorithm::Ed25519, "Ed25519"),
    ] {
        let material = match generate_key(alg, None) {
            Ok(m) => m,
            Err(e) => {
                eprintln!("cannot generate {name} key: {e}");
                std::process::exit(1);
            }
        };
        let key = match material.signing_key() {
            Ok(k) => k,
            Err(e) => {
                eprintln!("cannot load {name} key: {e}");
                std::process::exit(1);
            }
        };
        let s = signer(key, "bench.test", "s1");
        measure(&format!("{name} signer"), "signatures", || {
            std::hint::black_box(s.sign(std::hint::black_box(&msg)).is_ok());
        });
        if alg == Algorithm::Rsa {
            // Baseline in the same run: the same key through mail-auth's ring signer, which the
            // relay used before RSA signing moved to aws-lc.
            use mail_auth::common::crypto::{RsaKey, Sha256};
            use rustls_pki_types::PrivateKeyDer;
            use rustls_pki_types::pem::PemObject;
            let ring_key = PrivateKeyDer::from_pem_slice(material.to_pem().as_bytes())
                .map_err(|e| e.to_string())
                .and_then(|der| RsaKey::<Sha256>::from_key_der(der).map_err(|e| e.to_string()));
            match ring_key {
                Ok(k) => {
                    let s = mail_auth::dkim::DkimSigner::from_key(k)
                        .domain("bench.test")
                        .selector("s1")
                        .headers(["From", "To", "Subject"]);
                    measure("RSA-2048 signer, ring (baseline)", "signatures", || {
                        std::hint::black_box(s.sign(std::hint::black_box(&msg)).is_ok());
                    });
                }
                Err(e) => eprintln!("cannot load the key into ring: {e}"),
            }
        }
    }

    // The relay's own step, through the key store and its cache.
    let dir = match tempfile::tempdir() {
        Ok(d) => d,
        Err(e) => {
            eprintln!("cannot create a temp dir: {e}");
            std::process::exit(1);
        }
    };
    let setup = || -> Result<DkimKeys, Box<dyn std::error::Error>> {
        let store = Store::open(dir.path())?;
        let mut config = Config::builtin()?;
        config.server.state_dir = dir.path().to_path_buf();
        Ok(DkimKeys::new(store, &config))
    };
    let keys = match setup() {
        Ok(k) => k,
        Err(e) => {
            eprintln!("cannot open the key store: {e}");
            std::process::exit(1);
        }
    };
    let project = Project {
        id: "prj_bench".into(),
        name: "bench".into(),
        domains: vec!["bench.test".into()],
        disabled: false,
        created: 0,
        max_age_secs: None,
        bounces: false,
        tokens: vec![],
        allow_foreign_sender: false,
        mode: Default::default(),
    };
    let ctx = TransformContext {
        message_id: "bench",
        hostname: "relay.test",
        helo: "app",
        mail_from: "noreply@app.test",
        client_ip: std::net::IpAddr::from([127, 0, 0, 1]),
        tls: true,
        received_ms: 0,
        branding: None,
        from_rewrite: None,
        dkim: Some(Signing {
            keys: &keys,
            project: &project,
        }),
    };
    let signing = Signing {
        keys: &keys,
        project: &project,
    };
    let mut active: Vec<String> = Vec::new();
    for (alg, sel, name) in [
        (Algorithm::Rsa, "r1", "RSA-2048"),
        (Algorithm::Ed25519, "e1", "Ed25519"),
    ] {
        let step = keys
            .generate("bench.test", Some(sel), alg, None)
            .and_then(|_| keys.activate("bench.test", sel));
        if let Err(e) = step {
            eprintln!("cannot set up the {name} key: {e}");
            std::process::exit(1);
        }
        // Only this algorithm active: retire the previous one.
        for prev in active.drain(..) {
            let _ = keys.retire("bench.test", &prev);
        }
        active.push(sel.to_string());
        measure(&format!("{name} transform step"), "messages", || {
            std::hint::black_box(sign(&ctx, &signing, msg.clone()).is_ok());
        });
    }
    // Both active: one RSA and one Ed25519 signature per message (RFC 8463 dual signing).
    if let Err(e) = keys.activate("bench.test", "r1") {
        eprintln!("cannot reactivate the RSA key: {e}");
        std::process::exit(1);
    }
    measure("dual (RSA + Ed25519) transform step", "messages", || {
        std::hint::black_box(sign(&ctx, &signing, msg.clone()).is_ok());
    });
}
