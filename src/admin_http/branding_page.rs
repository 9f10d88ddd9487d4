//! The panel's Branding pages: which projects brand their mail, and per project the settings
//! form (display name, contacts, logo upload, on/off) beside a live preview.
//!
//! The preview is a sample password-reset mail run through the real branding transform
//! (`AdminRequest::BrandingPreview`), served from its own URL with its own strict CSP
//! (`sandbox`, no script, inline styles and data:/https: images only) and shown in an
//! `<iframe sandbox>`: nothing in a mail's HTML can run or reach the panel. Without any
//! script, "Preview" posts the form — logo file included — into that iframe, so unsaved
//! changes are shown and nothing is stored until "Save".

use axum::extract::{Extension, Path, Request, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use maud::{Markup, html};
use serde_json::Value;

use super::pages::{Ctx, csrf, layout, path_part, s};
use super::panel::{
    PanelState, PreviewFrame, admin, array, ctx, done, multipart_parts, page_or_error,
};
use super::session::Session;
use crate::admin::{AdminError, AdminRequest};
use crate::transform::branding::BrandingUpdate;

fn branding_url(id: &str) -> String {
    format!("/projects/{}/branding", path_part(id))
}

/// `/branding`: every project and whether its mail is branded.
pub async fn index(State(p): State<PanelState>, Extension(sess): Extension<Session>) -> Response {
    let r = async {
        let projects = array(admin(&p, AdminRequest::ProjectList).await?);
        let mut rows = Vec::new();
        for pr in projects {
            let id = s(&pr["id"]).to_string();
            let b = admin(&p, AdminRequest::ProjectBranding { id, update: None }).await?;
            rows.push((pr, b));
        }
        Ok(index_page(ctx(&p, &sess, "/branding"), &rows))
    }
    .await;
    page_or_error(r)
}

fn index_page(ctx: Ctx<'_>, rows: &[(Value, Value)]) -> Markup {
    layout(
        ctx,
        "Branding",
        html! {
            p class="sub" { "Your logo, name and contact details in the header and footer of every mail a project sends." }
            div class="card" {
                @if rows.is_empty() {
                    p class="empty" { "No projects yet." }
                } @else {
                    table {
                        thead { tr { th { "Project" } th { "Branding" } th { "Display name" } th { "Logo" } th {} } }
                        tbody {
                            @for (pr, b) in rows {
                                tr {
                                    td { (s(&pr["name"])) div class="muted small mono" { (s(&pr["id"])) } }
                                    td {
                                        @if b.is_null() { span class="badge" { "not set up" } }
                                        @else if b["enabled"].as_bool() == Some(true) { span class="badge ok" { "on" } }
                                        @else { span class="badge wait" { "off" } }
                                    }
                                    td { (s(&b["display_name"])) }
                                    td class="muted" {
                                        @if let Some(ct) = b["logo"]["content_type"].as_str() { (ct) ", " (b["logo"]["bytes"]) " bytes" }
                                        @else if let Some(u) = b["logo_url"].as_str() { span class="clip" { (u) } }
                                        @else { "—" }
                                    }
                                    td { a class="button" href=(branding_url(s(&pr["id"]))) { "Edit & preview" } }
                                }
                            }
                        }
                    }
                }
            }
        },
    )
}

/// `/projects/{id}/branding`: the form and the preview.
pub async fn page(
    State(p): State<PanelState>,
    Extension(sess): Extension<Session>,
    Path(id): Path<String>,
) -> Response {
    let r = async {
        let project = admin(&p, AdminRequest::ProjectShow { id: id.clone() }).await?;
        Ok(form_page(
            ctx(&p, &sess, "/branding"),
            &project,
            &project["branding"],
        ))
    }
    .await;
    page_or_error(r)
}

fn form_page(ctx: Ctx<'_>, project: &Value, b: &Value) -> Markup {
    let session = ctx.session;
    let id = s(&project["id"]);
    let url = branding_url(id);
    let admin = session.is_admin();
    let title = format!("Branding · {}", s(&project["name"]));
    layout(
        ctx,
        &title,
        html! {
            p class="sub" { a href=(super::panel::project_url(id)) { "← " (s(&project["name"])) } }
            div class="cols" {
                div class="card" {
                    h2 { "Settings" }
                    form method="post" action=(url) enctype="multipart/form-data" class="stack" {
                        (csrf(session))
                        label { "Display name" input type="text" name="display_name" value=(s(&b["display_name"])) placeholder="Acme Shop" maxlength="100" disabled[!admin]; }
                        label { "Contact email" input type="email" name="contact_email" value=(s(&b["contact_email"])) placeholder="support@example.com" disabled[!admin]; }
                        label { "Contact phone" input type="text" name="contact_phone" value=(s(&b["contact_phone"])) placeholder="+49 40 1234567" disabled[!admin]; }
                        label { "Logo (PNG, JPEG or GIF, at most 200 KiB)"
                            input type="file" name="logo" accept="image/png,image/jpeg,image/gif" disabled[!admin];
                        }
                        p class="muted small" {
                            @if let Some(ct) = b["logo"]["content_type"].as_str() {
                                "Current logo: " (ct) ", " (b["logo"]["bytes"]) " bytes"
                                @if let Some(w) = b["logo"]["width"].as_u64() { ", " (w) "×" (b["logo"]["height"]) " px" }
                                "."
                            } @else if let Some(u) = b["logo_url"].as_str() {
                                "Current logo URL: " (u)
                            } @else { "No logo yet." }
                        }
                        label class="check" { input type="checkbox" name="no_logo" value="1" disabled[!admin]; " Remove the logo" }
                        label class="check" { input type="checkbox" name="off" value="1" checked[b["enabled"].as_bool() == Some(false)] disabled[!admin]; " Branding off (settings kept)" }
                        @if admin {
                            div class="row" {
                                button class="primary" type="submit" { "Save" }
                                button type="submit" formaction={ (url) "/preview" } formtarget="preview" { "Preview changes" }
                            }
                        }
                    }
                }
                div class="card" {
                    h2 { "Preview" span class="muted small" { " — a password-reset mail as recipients will see it" } }
                    iframe class="preview" name="preview" title="Branded mail preview" sandbox="" src={ (url) "/preview" } {}
                }
            }
        },
    )
}

/// The settings a multipart branding form asks for.
async fn update_from_form(req: Request) -> Result<BrandingUpdate, AdminError> {
    let (parts, body) = req.into_parts();
    let bytes = axum::body::to_bytes(body, usize::MAX)
        .await
        .map_err(|_| AdminError::invalid("form", "the form could not be read"))?;
    let fields = multipart_parts(&parts.headers, bytes)
        .await
        .ok_or_else(|| AdminError::invalid("form", "send the form as multipart/form-data"))?;
    let mut u = BrandingUpdate::default();
    for f in fields {
        let text = || String::from_utf8_lossy(&f.data).trim().to_string();
        match f.name.as_str() {
            "display_name" if !text().is_empty() => u.display_name = Some(text()),
            "contact_email" => u.contact_email = Some(text()),
            "contact_phone" => u.contact_phone = Some(text()),
            // A file input left empty still sends a part, with no name and no bytes.
            "logo"
                if !f.data.is_empty() && f.file_name.as_deref().is_some_and(|n| !n.is_empty()) =>
            {
                u.logo = Some(f.data.to_vec())
            }
            "no_logo" => u.no_logo = true,
            "off" => u.off = true,
            _ => {}
        }
    }
    Ok(u)
}

pub async fn save(
    State(p): State<PanelState>,
    Extension(sess): Extension<Session>,
    Path(id): Path<String>,
    req: Request,
) -> Response {
    let to = branding_url(&id);
    let r = match update_from_form(req).await {
        Ok(u) => {
            admin(
                &p,
                AdminRequest::ProjectBranding {
                    id,
                    update: Some(u),
                },
            )
            .await
        }
        Err(e) => Err(e),
    };
    done(&p, &sess, r, "Branding saved.", &to)
}

/// The preview document: the branded HTML part, or a short page saying why there is none.
fn preview_response(r: Result<Value, AdminError>) -> Response {
    let mut resp = match r {
        Ok(v) => (
            [(axum::http::header::CONTENT_TYPE, "text/html; charset=utf-8")],
            s(&v["html"]).to_string(),
        )
            .into_response(),
        Err(e) => {
            let status = match e.kind {
                crate::admin::ErrorKind::NotFound => StatusCode::NOT_FOUND,
                _ => StatusCode::UNPROCESSABLE_ENTITY,
            };
            let page = html! {
                (maud::DOCTYPE)
                html { body style="font-family:sans-serif;color:#667085;padding:2rem" { p { (e.message) } } }
            };
            (status, page).into_response()
        }
    };
    resp.extensions_mut().insert(PreviewFrame);
    resp
}

/// `GET …/branding/preview`: the stored settings.
pub async fn preview(State(p): State<PanelState>, Path(id): Path<String>) -> Response {
    preview_response(admin(&p, AdminRequest::BrandingPreview { id, changes: None }).await)
}

/// `POST …/branding/preview`: the form's unsaved settings (into the iframe).
pub async fn preview_changes(
    State(p): State<PanelState>,
    Path(id): Path<String>,
    req: Request,
) -> Response {
    let r = match update_from_form(req).await {
        Ok(u) => {
            admin(
                &p,
                AdminRequest::BrandingPreview {
                    id,
                    changes: Some(u),
                },
            )
            .await
        }
        Err(e) => Err(e),
    };
    preview_response(r)
}
