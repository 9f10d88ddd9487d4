//! Branding throughput on a 4 KiB and a 1 MiB message (messages/s and MB/s of input).
//!
//!     cargo bench --bench branding
//!
//! Each case runs for about two seconds after a warm-up; the message is built here so the
//! numbers are reproducible (see the closing note of issue 4 for figures).

use std::hint::black_box;
use std::time::{Duration, Instant};

use base64::Engine as _;
use smtp_relay::transform::TransformContext;
use smtp_relay::transform::branding::encoding::quoted_printable;
use smtp_relay::transform::branding::settings::check_logo;
use smtp_relay::transform::branding::{self, Branding, BrandingSettings};

/// multipart/mixed [alternative [text (QP), html (QP)], PDF attachment (base64)] of at most
/// `size` bytes on the wire: roughly a quarter text, half HTML, a quarter attachment.
fn message(size: usize) -> Vec<u8> {
    let mut scale = size;
    loop {
        let m = build(scale);
        if m.len() <= size {
            return m;
        }
        scale = scale * size / m.len() - 16;
    }
}

fn build(size: usize) -> Vec<u8> {
    let sentence = "Your order 4711 has shipped and will arrive on Tuesday – thank you! ";
    let text: String = sentence.repeat(size / 4 / sentence.len() + 1);
    let mut html =
        String::from("<!DOCTYPE html><html><head><style>p{margin:0}</style></head><body>\n");
    while html.len() < size / 2 {
        html.push_str("<p style=\"font-family:Arial\">Your order <a href=\"https://shop.test/o/4711?ref=mail&amp;utm=1\">4711</a> has shipped – thank you!</p>\n");
    }
    html.push_str("</body></html>\n");
    let attachment: Vec<u8> = (0..size / 4).map(|i| (i * 31 % 251) as u8).collect();
    let b64 = base64::engine::general_purpose::STANDARD.encode(&attachment);
    let b64: Vec<&str> = b64
        .as_bytes()
        .chunks(76)
        .map(|c| std::str::from_utf8(c).unwrap_or(""))
        .collect();
    let mut m = String::from(concat!(
        "Received: from app ([10.0.0.1]) by relay.test (smtp-relay) with ESMTPSA id x;\r\n\tSat, 21 Nov 2026 10:00:00 +0000\r\n",
        "From: Shop <noreply@shop.test>\r\nTo: <alice@example.net>\r\nSubject: Shipped\r\n",
        "Date: Sat, 21 Nov 2026 10:00:00 +0000\r\nMessage-ID: <bench@shop.test>\r\nMIME-Version: 1.0\r\n",
        "Content-Type: multipart/mixed; boundary=\"mix\"\r\n\r\n--mix\r\n",
        "Content-Type: multipart/alternative; boundary=\"alt\"\r\n\r\n--alt\r\n",
        "Content-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: quoted-printable\r\n\r\n",
    ));
    m.push_str(&String::from_utf8_lossy(&quoted_printable(text.as_bytes())));
    m.push_str("\r\n--alt\r\nContent-Type: text/html; charset=utf-8\r\nContent-Transfer-Encoding: quoted-printable\r\n\r\n");
    m.push_str(&String::from_utf8_lossy(&quoted_printable(html.as_bytes())));
    m.push_str("\r\n--alt--\r\n\r\n--mix\r\nContent-Type: application/pdf; name=\"invoice.pdf\"\r\nContent-Disposition: attachment; filename=\"invoice.pdf\"\r\nContent-Transfer-Encoding: base64\r\n\r\n");
    m.push_str(&b64.join("\r\n"));
    m.push_str("\r\n--mix--\r\n");
    m.into_bytes()
}

fn main() {
    let logo = std::fs::read(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/branding/logo.png"
    ))
    .expect("logo fixture");
    let b = Branding::prepare(
        "prj_bench",
        &BrandingSettings {
            enabled: true,
            display_name: "Acme Café".into(),
            contact_email: Some("help@acme.test".into()),
            contact_phone: Some("+1 555 0100".into()),
            logo: Some(check_logo(logo).expect("valid logo")),
            ..Default::default()
        },
    )
    .expect("branding");
    let ctx = TransformContext {
        message_id: "0196f0c2a1b2c3d4e5f6",
        hostname: "relay.test",
        helo: "app",
        mail_from: "noreply@app.test",
        client_ip: "127.0.0.1".parse().expect("ip"),
        tls: true,
        received_ms: 0,
        branding: Some(&b),
        from_rewrite: None,
        dkim: None,
    };
    println!(
        "{:<10} {:>10} {:>12} {:>10} {:>10}",
        "message", "bytes", "messages/s", "MB/s", "out bytes"
    );
    for (label, size) in [("4 KiB", 4 * 1024), ("1 MiB", 1024 * 1024)] {
        let msg = message(size);
        let out_len = branding::apply(&ctx, &b, msg.clone())
            .expect("brands")
            .len();
        let run = |limit: Duration| {
            let start = Instant::now();
            let mut n = 0u64;
            while start.elapsed() < limit {
                let out = branding::apply(&ctx, &b, black_box(msg.clone())).expect("brands");
                black_box(out);
                n += 1;
            }
            (n, start.elapsed())
        };
        run(Duration::from_millis(300));
        let (n, took) = run(Duration::from_secs(2));
        let per_sec = n as f64 / took.as_secs_f64();
        println!(
            "{label:<10} {:>10} {per_sec:>12.0} {:>10.1} {out_len:>10}",
            msg.len(),
            per_sec * msg.len() as f64 / 1e6
        );
    }
}
