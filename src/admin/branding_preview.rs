//! `branding preview`: a sample password-reset mail run through the real branding transform,
//! with the project's stored settings or with changes not saved yet (the panel's live
//! preview), so an admin sees exactly what recipients will get.
//!
//! The answer carries the branded MIME message and its HTML part with the logo's `cid:`
//! reference turned into a `data:` URL, ready for a sandboxed iframe. The sample is our own
//! small message, so parsing it back fully is safe (the Known trap is hostile nesting).

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use mail_parser::MimeHeaders;
use serde_json::{Value, json};

use super::error::err;
use super::{AdminContext, AdminError};
use crate::transform::branding::{self, Branding, BrandingSettings, BrandingUpdate};
use crate::transform::{TransformContext, headers};

/// The sample: a typical transactional mail with a text and an HTML part.
fn sample(from: &str, display_name: &str) -> Vec<u8> {
    let html = format!(
        "<!DOCTYPE html><html><body style=\"font-family:Arial,sans-serif;color:#1c2430\">\
         <h2>Reset your password</h2>\
         <p>Hello Ada,</p>\
         <p>Someone asked to reset the password of your {display_name} account. \
         If it was you, choose a new one within the next hour:</p>\
         <p><a href=\"https://example.com/reset/7f3a9c\" style=\"background:#3056d3;color:#fff;\
         padding:10px 18px;border-radius:6px;text-decoration:none\">Choose a new password</a></p>\
         <p>If it was not you, ignore this mail: your password stays as it is.</p>\
         </body></html>"
    );
    let text = format!(
        "Reset your password\r\n\r\nHello Ada,\r\n\r\nSomeone asked to reset the password of \
         your {display_name} account. If it was you, choose a new one within the next hour:\r\n\
         https://example.com/reset/7f3a9c\r\n\r\nIf it was not you, ignore this mail.\r\n"
    );
    format!(
        "From: {display_name} <{from}>\r\nTo: Ada Lovelace <ada@example.com>\r\n\
         Subject: Reset your password\r\nMIME-Version: 1.0\r\n\
         Content-Type: multipart/alternative; boundary=\"sample-boundary\"\r\n\r\n\
         --sample-boundary\r\nContent-Type: text/plain; charset=utf-8\r\n\
         Content-Transfer-Encoding: 8bit\r\n\r\n{text}\r\n\
         --sample-boundary\r\nContent-Type: text/html; charset=utf-8\r\n\
         Content-Transfer-Encoding: 8bit\r\n\r\n{html}\r\n--sample-boundary--\r\n"
    )
    .into_bytes()
}

/// The branded sample for project `id`, with `changes` applied on top of what is stored
/// (nothing is stored).
pub fn preview(
    ctx: &AdminContext,
    id: &str,
    changes: Option<BrandingUpdate>,
) -> Result<Value, AdminError> {
    let project = ctx.registry.get(id).map_err(err)?;
    let stored = ctx.branding.get(id).map_err(err)?;
    let settings: BrandingSettings = match changes {
        Some(u) => BrandingSettings::updated(stored, u, crate::now_secs()).map_err(err)?,
        None => stored.ok_or_else(|| {
            AdminError::not_found(format!(
                "project {id} has no branding yet: fill in a display name and press Preview changes, or Save"
            ))
        })?,
    };
    let prepared = Branding::prepare(id, &settings).map_err(err)?;
    let domain = project
        .domains
        .first()
        .cloned()
        .unwrap_or_else(|| "example.com".into());
    let from = format!("noreply@{domain}");
    let tctx = TransformContext {
        message_id: "preview",
        hostname: "preview.invalid",
        helo: "preview.invalid",
        mail_from: &from,
        client_ip: std::net::IpAddr::from([127, 0, 0, 1]),
        tls: true,
        received_ms: crate::queue::now_ms(),
        branding: Some(&prepared),
        from_rewrite: None,
        dkim: None,
    };
    let message = headers::complete(&tctx, sample(&from, &settings.display_name));
    let branded = branding::apply(&tctx, &prepared, message)
        .map_err(|e| AdminError::internal(e.to_string()))?;
    let parsed = mail_parser::MessageParser::new()
        .parse(&branded)
        .ok_or_else(|| AdminError::internal("the branded sample does not parse"))?;
    let mut html = parsed
        .body_html(0)
        .map(|h| h.into_owned())
        .unwrap_or_default();
    // The logo travels as a related part; the preview has no message around it, so its
    // `cid:` reference becomes a data: URL.
    for part in parsed.parts.iter() {
        if let (Some(cid), Some(ct)) = (part.content_id(), part.content_type()) {
            if ct.ctype() != "image" {
                continue;
            }
            let mime = format!("{}/{}", ct.ctype(), ct.subtype().unwrap_or("png"));
            let url = format!("data:{mime};base64,{}", STANDARD.encode(part.contents()));
            html = html.replace(&format!("cid:{cid}"), &url);
        }
    }
    let text = parsed
        .body_text(0)
        .map(|t| t.into_owned())
        .unwrap_or_default();
    Ok(json!({
        "project": id,
        "subject": "Reset your password",
        "html": html,
        "text": text,
        "message": String::from_utf8_lossy(&branded),
        "enabled": settings.enabled,
    }))
}
