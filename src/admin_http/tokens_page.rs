//! The panel's Admin tokens page: the tokens of the HTTP API and panel (label, role, when
//! made — never a secret), a form to add one that shows the new token once, and revoking.
//! Revoking the token of one's own session ends that session at the next request, like any
//! revoked token. Viewers see the list only.

use axum::extract::{Extension, Form, Path, State};
use axum::response::{IntoResponse, Redirect, Response};
use maud::{Markup, html};
use serde::Deserialize;
use serde_json::Value;

use super::pages::{Ctx, csrf, day, layout, path_part, s};
use super::panel::{PanelState, admin, array, ctx, done, page_or_error};
use super::session::Session;
use crate::admin::AdminRequest;
use crate::policy::admin_tokens::Role;

const PAGE: &str = "/admin-tokens";

pub async fn page(State(p): State<PanelState>, Extension(sess): Extension<Session>) -> Response {
    let r = async {
        let tokens = array(admin(&p, AdminRequest::AdminTokenList).await?);
        let reveal = p.sessions.take_result(&sess, PAGE);
        Ok(render(ctx(&p, &sess, PAGE), &tokens, reveal.as_ref()))
    }
    .await;
    page_or_error(r)
}

fn render(ctx: Ctx<'_>, tokens: &[Value], reveal: Option<&Value>) -> Markup {
    let session = ctx.session;
    let own = session.token_id.clone();
    layout(
        ctx,
        "Admin tokens",
        html! {
            p class="sub" { "Tokens for this panel and the /api/v1 API. " strong { "admin" } " may change everything; "
                strong { "viewer" } " may look, never change, and never sees a secret." }
            @if let Some(r) = reveal {
                div class="reveal" {
                    h2 { "New admin token — copy it now" }
                    p { "This is the only time it is shown. Use it as " span class="mono" { "Authorization: Bearer …" } " or paste it on the login page." }
                    dl {
                        dt { "Label" } dd { (s(&r["admin_token"]["label"])) }
                        dt { "Role" } dd { (s(&r["admin_token"]["role"])) }
                        dt { "Token" } dd class="mono token" { (s(&r["token"])) }
                    }
                }
            }
            div class="card" {
                table {
                    thead { tr { th { "Label" } th { "Role" } th { "Id" } th { "Created" } th {} } }
                    tbody {
                        @for t in tokens {
                            tr {
                                td { (s(&t["label"])) @if s(&t["id"]) == own { " " span class="badge" { "this session" } } }
                                td { span class={ "badge " (s(&t["role"])) } { (s(&t["role"])) } }
                                td class="mono small" { (s(&t["id"])) }
                                td { (t["created"].as_u64().map(day).unwrap_or_default()) }
                                td {
                                    @if session.is_admin() {
                                        form method="post" action={ "/admin-tokens/" (path_part(s(&t["id"]))) "/revoke" } class="inline" {
                                            (csrf(session))
                                            button class="link danger" type="submit" { "Revoke" }
                                        }
                                    }
                                }
                            }
                        }
                    }
                }
            }
            @if session.is_admin() {
                div class="card narrow" {
                    h2 { "Add a token" }
                    form method="post" action="/admin-tokens" class="stack" {
                        (csrf(session))
                        label { "Label" input type="text" name="label" required placeholder="deploy script"; }
                        label { "Role" select name="role" {
                            option value="viewer" { "viewer — read only" }
                            option value="admin" { "admin — may change everything" }
                        } }
                        div { button class="primary" type="submit" { "Create token" } }
                    }
                }
            }
        },
    )
}

#[derive(Deserialize)]
pub struct NewToken {
    label: String,
    role: Role,
}

pub async fn add(
    State(p): State<PanelState>,
    Extension(sess): Extension<Session>,
    Form(f): Form<NewToken>,
) -> Response {
    let req = AdminRequest::AdminTokenAdd {
        label: f.label,
        role: f.role,
    };
    match admin(&p, req).await {
        Ok(v) => {
            p.sessions.keep_result(&sess, PAGE, v);
            p.sessions.notify(&sess, false, "Admin token created.");
        }
        Err(e) => p.sessions.notify(&sess, true, e.message),
    }
    Redirect::to(PAGE).into_response()
}

pub async fn revoke(
    State(p): State<PanelState>,
    Extension(sess): Extension<Session>,
    Path(id): Path<String>,
) -> Response {
    let r = admin(&p, AdminRequest::AdminTokenRevoke { id }).await;
    done(
        &p,
        &sess,
        r,
        "Admin token revoked; its sessions have ended.",
        PAGE,
    )
}
