//! Branding over arbitrary bytes: it never panics or overflows the stack, and for a message the
//! relay would accept (CRLF-only, no NUL, no line over 998 octets) the output is one too and
//! branding it again changes nothing.
#![no_main]

use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use smtp_relay::transform::TransformContext;
use smtp_relay::transform::branding::settings::check_logo;
use smtp_relay::transform::branding::{self, Branding, BrandingSettings};

fn branding() -> &'static Branding {
    static B: OnceLock<Branding> = OnceLock::new();
    B.get_or_init(|| {
        let logo = include_bytes!("../../tests/fixtures/branding/logo.png").to_vec();
        let settings = BrandingSettings {
            enabled: true,
            display_name: "Fuzz Café".into(),
            contact_email: Some("help@fuzz.test".into()),
            contact_phone: Some("+1 555 0100".into()),
            logo: Some(check_logo(logo).unwrap()),
            ..Default::default()
        };
        Branding::prepare("prj_fuzz", &settings).unwrap()
    })
}

fn acceptable(m: &[u8]) -> bool {
    let mut line = 0;
    for (i, &b) in m.iter().enumerate() {
        match b {
            0 => return false,
            b'\r' if m.get(i + 1) != Some(&b'\n') => return false,
            b'\n' if i == 0 || m[i - 1] != b'\r' => return false,
            b'\n' => line = 0,
            b'\r' => {}
            _ => {
                line += 1;
                if line > 998 {
                    return false;
                }
            }
        }
    }
    true
}

fuzz_target!(|data: &[u8]| {
    if !acceptable(data) {
        return;
    }
    let b = branding();
    let ctx = TransformContext {
        message_id: "fuzz",
        hostname: "relay.test",
        helo: "fuzz",
        client_ip: std::net::IpAddr::from([127, 0, 0, 1]),
        tls: true,
        received_ms: 0,
        branding: Some(b),
        from_rewrite: None,
        dkim: None,
    };
    if let Ok(out) = branding::apply(&ctx, b, data.to_vec()) {
        assert!(acceptable(&out), "branding produced bytes the relay would refuse");
        let again = branding::apply(&ctx, b, out.clone()).expect("branded output within limits");
        assert_eq!(again, out, "branding is not idempotent");
    }
});
