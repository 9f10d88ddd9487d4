//! Branding over the fixture corpus (tests/fixtures/branding, see its README): every fixture is
//! branded with two configurations, and the output is checked with mail-parser here and with
//! Python's `email` package (an independent MIME implementation) in
//! `tests/support/check_branding.py`.

use std::path::{Path, PathBuf};
use std::process::Command;

use mail_parser::{MessageParser, MimeHeaders, PartType};
use memchr::memmem;
use serde_json::json;
use smtp_relay::transform::TransformContext;
use smtp_relay::transform::branding::settings::check_logo;
use smtp_relay::transform::branding::{self, Branding, BrandingSettings, MARKER_HEADER};

const HEADER: &str = "smtp-relay-branding:header";
const FOOTER: &str = "smtp-relay-branding:footer";

fn dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/branding")
}

/// HTML parts with the header, HTML parts with the footer, text parts with the footer.
type Counts = (usize, usize, usize);

/// Per fixture; `None` = must pass through byte-for-byte.
const EXPECT: &[(&str, Option<Counts>)] = &[
    ("hand-plain-no-mime.eml", Some((0, 0, 1))),
    ("hand-plain-utf8-qp.eml", Some((0, 0, 1))),
    ("hand-plain-latin1-8bit.eml", Some((0, 0, 1))),
    ("hand-html-base64.eml", Some((1, 1, 0))),
    ("hand-html-fragment-qp.eml", Some((1, 1, 0))),
    ("hand-html-long-lines-8bit.eml", Some((1, 1, 0))),
    ("hand-alternative-7bit.eml", Some((1, 1, 1))),
    ("hand-mixed-attachments.eml", Some((1, 1, 1))),
    ("hand-related-existing.eml", Some((1, 1, 1))),
    ("hand-related-root-alternative.eml", Some((1, 1, 1))),
    ("hand-nested.eml", Some((1, 1, 1))),
    ("hand-signed.eml", None),
    ("hand-pkcs7-encrypted.eml", None),
    ("hand-pgp-encrypted.eml", None),
    ("hand-already-branded.eml", None),
    ("hand-forwarded-rfc822.eml", Some((0, 0, 1))),
    ("hand-attachment-only.eml", None),
    ("hand-apple-inline-image.eml", Some((1, 1, 1))),
    ("hand-outlook-conditional.eml", Some((1, 1, 0))),
    ("hand-iso2022jp.eml", Some((0, 0, 1))),
    ("hand-empty-body.eml", Some((0, 0, 1))),
    ("nodemailer-alternative-attachment.eml", Some((1, 1, 1))),
    ("nodemailer-embedded-image.eml", Some((1, 1, 1))),
    ("nodemailer-text-long-lines.eml", Some((0, 0, 1))),
    ("nodemailer-html-only.eml", Some((1, 1, 0))),
    ("python-alternative-attachment.eml", Some((1, 1, 1))),
    ("python-latin1-qp.eml", Some((0, 0, 1))),
    ("python-html-8bit.eml", Some((1, 1, 0))),
    ("python-legacy-related.eml", Some((1, 1, 0))),
    ("jakarta-alternative.eml", Some((1, 1, 1))),
    ("jakarta-mixed-attachment.eml", Some((0, 0, 1))),
    ("jakarta-plain.eml", Some((0, 0, 1))),
];

struct Config {
    name: &'static str,
    settings: BrandingSettings,
    /// A line the text footer shows (after decoding).
    text_mark: &'static str,
}

fn configs() -> Vec<Config> {
    let logo = std::fs::read(dir().join("logo.png")).unwrap();
    vec![
        Config {
            name: "embedded-logo-non-ascii",
            settings: BrandingSettings {
                enabled: true,
                display_name: "Acme Café & Söhne".into(),
                contact_email: Some("help@acme.test".into()),
                contact_phone: Some("+1 555 0100".into()),
                logo: Some(check_logo(logo).unwrap()),
                ..Default::default()
            },
            text_mark: "Acme Café & Söhne",
        },
        Config {
            name: "hosted-logo-custom-templates",
            settings: BrandingSettings {
                enabled: true,
                display_name: "Acme <Corp>".into(),
                contact_email: Some("help@acme.test".into()),
                logo_url: Some("https://cdn.acme.test/logo.png?v=1&s=2".into()),
                header_template: Some(
                    "<div style=\"text-align:center\"><img src=\"{{logo_src}}\" alt=\"{{display_name}}\"></div>\n".into(),
                ),
                footer_template: Some("<p style=\"color:#888\">{{display_name}} - {{contact_email}}</p>".into()),
                text_footer: Some("\n-- \nSent by {{display_name}} ({{contact_email}})\n".into()),
                ..Default::default()
            },
            text_mark: "Sent by Acme <Corp> (help@acme.test)",
        },
    ]
}

fn brand(b: &Branding, msg: &[u8]) -> Vec<u8> {
    let ctx = TransformContext {
        message_id: "0196f0c2a1b2c3d4e5f6",
        hostname: "relay.test",
        helo: "app.test",
        mail_from: "noreply@app.test",
        client_ip: "127.0.0.1".parse().unwrap(),
        tls: true,
        received_ms: 1_795_255_200_000,
        branding: Some(b),
        from_rewrite: None,
        dkim: None,
    };
    branding::apply(&ctx, b, msg.to_vec()).expect("fixture within limits")
}

fn assert_wire_clean(name: &str, out: &[u8]) {
    for (i, line) in out.split(|&b| b == b'\n').enumerate() {
        assert!(
            line.len() <= 999,
            "{name}: line {i} is {} octets",
            line.len()
        );
    }
    let mut prev = 0u8;
    for (i, &b) in out.iter().enumerate() {
        assert!(b != 0, "{name}: NUL at {i}");
        assert!(b != b'\n' || prev == b'\r', "{name}: bare LF at {i}");
        assert!(prev != b'\r' || b == b'\n', "{name}: bare CR at {i}");
        prev = b;
    }
    assert!(out.ends_with(b"\r\n"), "{name}: no final CRLF");
}

fn is_attachment(p: &mail_parser::MessagePart<'_>) -> bool {
    p.content_disposition()
        .is_some_and(|d| d.ctype().eq_ignore_ascii_case("attachment"))
}

/// Counts (HTML parts with header, with footer, text parts with the footer) and checks that
/// each `cid:logo.` reference resolves to a part holding the logo.
fn inspect(name: &str, out: &[u8], text_mark: &str, logo: &[u8]) -> (usize, usize, usize) {
    let parsed = MessageParser::new()
        .parse(out)
        .unwrap_or_else(|| panic!("{name}: branded output does not parse"));
    let (mut headers, mut footers, mut texts) = (0, 0, 0);
    for part in &parsed.parts {
        if is_attachment(part) {
            continue;
        }
        match &part.body {
            PartType::Html(html) => {
                headers += html.matches(HEADER).count();
                footers += html.matches(FOOTER).count();
                for reference in html.split("cid:logo.").skip(1) {
                    let cid = format!("logo.{}", reference.split('"').next().unwrap());
                    let image = parsed
                        .parts
                        .iter()
                        .find(|p| p.content_id() == Some(cid.as_str()))
                        .unwrap_or_else(|| panic!("{name}: cid:{cid} does not resolve"));
                    assert_eq!(image.contents(), logo, "{name}: logo bytes differ");
                }
            }
            PartType::Text(text)
                if part.content_type().is_none_or(|c| {
                    c.subtype().is_none_or(|s| s.eq_ignore_ascii_case("plain"))
                }) =>
            {
                texts += text.matches(text_mark).count();
            }
            _ => {}
        }
    }
    (headers, footers, texts)
}

/// Every part of the input that branding must not touch (attachments, images, encapsulated
/// messages) is found byte-for-byte in the output.
fn assert_untouched_parts_kept(name: &str, input: &[u8], out: &[u8]) {
    let parsed = MessageParser::new().parse(input).unwrap();
    for (i, part) in parsed.parts.iter().enumerate().skip(1) {
        let keep = is_attachment(part)
            || matches!(
                part.body,
                PartType::Binary(_) | PartType::InlineBinary(_) | PartType::Message(_)
            );
        if keep {
            let raw = &input[part.offset_header as usize..part.offset_end as usize];
            assert!(
                memmem::find(out, raw).is_some(),
                "{name}: part {i} changed:\n{}",
                String::from_utf8_lossy(raw)
            );
        }
    }
}

#[test]
fn every_fixture_is_branded_correctly() {
    let logo = std::fs::read(dir().join("logo.png")).unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let mut manifest = Vec::new();
    let listed: Vec<&str> = EXPECT.iter().map(|e| e.0).collect();
    for entry in std::fs::read_dir(dir()).unwrap() {
        let file = entry.unwrap().file_name().into_string().unwrap();
        if file.ends_with(".eml") {
            assert!(
                listed.contains(&file.as_str()),
                "fixture {file} has no expectation"
            );
        }
    }
    for config in configs() {
        let b = Branding::prepare("prj_fixture", &config.settings).unwrap();
        for (file, expect) in EXPECT {
            let name = format!("{}/{file}", config.name);
            let input = std::fs::read(dir().join(file)).unwrap();
            assert_wire_clean(&format!("{name} (input)"), &input);
            let out = brand(&b, &input);
            assert_wire_clean(&name, &out);
            assert_eq!(
                brand(&b, &out),
                out,
                "{name}: branding twice changed it again"
            );
            match expect {
                None => assert!(out == input, "{name}: must pass through untouched"),
                Some(counts) => {
                    assert!(out != input, "{name}: not branded");
                    let marker = format!("\r\n{MARKER_HEADER}: prj_fixture\r\n");
                    let head_end = memmem::find(&out, b"\r\n\r\n").unwrap();
                    assert_eq!(
                        memmem::find_iter(&out[..head_end + 2], marker.as_bytes()).count(),
                        1,
                        "{name}: marker header"
                    );
                    let logo_bytes: &[u8] = if config.settings.logo.is_some() {
                        &logo
                    } else {
                        &[]
                    };
                    assert_eq!(
                        inspect(&name, &out, config.text_mark, logo_bytes),
                        *counts,
                        "{name}: (headers, footers, texts)\n{}",
                        String::from_utf8_lossy(&out)
                    );
                    assert_untouched_parts_kept(&name, &input, &out);
                    if config.settings.logo_url.is_some() {
                        assert!(
                            !out.windows(8).any(|w| w == b"cid:logo"),
                            "{name}: hosted logo embedded"
                        );
                    }
                }
            }
            let stem = format!("{}--{file}", config.name);
            std::fs::write(tmp.path().join(format!("{stem}.in")), &input).unwrap();
            std::fs::write(tmp.path().join(format!("{stem}.out")), &out).unwrap();
            manifest.push(json!({
                "input": format!("{stem}.in"),
                "output": format!("{stem}.out"),
                "untouched": expect.is_none(),
                "counts": expect.map(|c| vec![c.0, c.1, c.2]),
                "text_mark": config.text_mark,
                "logo": config.settings.logo.is_some(),
            }));
        }
    }
    std::fs::write(tmp.path().join("logo.png"), &logo).unwrap();
    std::fs::write(
        tmp.path().join("manifest.json"),
        serde_json::to_vec_pretty(&manifest).unwrap(),
    )
    .unwrap();

    // The independent parser: Python's email package (stdlib).
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/support/check_branding.py");
    let run = Command::new("python3")
        .arg(&script)
        .arg(tmp.path())
        .output()
        .expect("python3 must be installed (.ci/run installs it)");
    let stdout = String::from_utf8_lossy(&run.stdout);
    assert!(
        run.status.success(),
        "Python's email package disagrees:\n{stdout}\n{}",
        String::from_utf8_lossy(&run.stderr)
    );
    assert!(
        stdout.contains(&format!("checked {} messages", manifest.len())),
        "{stdout}"
    );
}
