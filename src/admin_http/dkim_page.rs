//! The panel's DKIM page: per domain of the projects, its keys and their states, the actions
//! that move a key along (generate → activate → retire → remove), and the DNS records to
//! publish. The panel has no script, so there is no copy button: each record is in a
//! read-only text field that selects with one click-and-drag or Ctrl+A.

use std::collections::BTreeSet;

use axum::extract::{Extension, Form, Path, State};
use axum::response::Response;
use maud::{Markup, html};
use serde::Deserialize;
use serde_json::Value;

use super::pages::{Ctx, csrf, day, layout, path_part, s};
use super::panel::{PanelState, admin, array, ctx, done, page_or_error};
use super::session::Session;
use crate::admin::AdminRequest;
use crate::admin::dkim::DkimRequest;
use crate::transform::dkim_keys::Algorithm;

pub async fn page(State(p): State<PanelState>, Extension(sess): Extension<Session>) -> Response {
    let r = async {
        let projects = array(admin(&p, AdminRequest::ProjectList).await?);
        let keys = array(admin(&p, AdminRequest::Dkim(DkimRequest::List { domain: None })).await?);
        let mut domains: BTreeSet<String> = projects
            .iter()
            .flat_map(|pr| pr["domains"].as_array().cloned().unwrap_or_default())
            .filter_map(|d| d.as_str().map(str::to_string))
            .collect();
        domains.extend(keys.iter().map(|k| s(&k["domain"]).to_string()));
        let mut rows = Vec::new();
        for d in domains {
            let dns = admin(
                &p,
                AdminRequest::Dkim(DkimRequest::Dns { domain: d.clone() }),
            )
            .await?;
            let mine: Vec<Value> = keys
                .iter()
                .filter(|k| s(&k["domain"]) == d)
                .cloned()
                .collect();
            rows.push((d, mine, dns));
        }
        Ok(render(ctx(&p, &sess, "/dkim"), &rows))
    }
    .await;
    page_or_error(r)
}

fn key_badge(state: &str) -> Markup {
    let class = match state {
        "active" => "badge ok",
        "pending" => "badge wait",
        _ => "badge",
    };
    html! { span class=(class) { (state) } }
}

fn render(ctx: Ctx<'_>, rows: &[(String, Vec<Value>, Value)]) -> Markup {
    let session = ctx.session;
    let is_admin = session.is_admin();
    layout(
        ctx,
        "DKIM",
        html! {
            p class="sub" { "Keys that sign each domain's mail, and the DNS records receivers check them against. \
                             Select a record's text (Ctrl+A inside the field) to copy it." }
            @if is_admin && !rows.is_empty() {
                div class="card" {
                    h2 { "Generate a key" }
                    form method="post" action="/dkim/keys" class="grid" {
                        (csrf(session))
                        label { "Domain" select name="domain" { @for (d, _, _) in rows { option value=(d) { (d) } } } }
                        label { "Algorithm" select name="algorithm" {
                            option value="rsa" { "RSA 2048 (accepted everywhere)" }
                            option value="ed25519" { "Ed25519 (short; publish with an RSA key)" }
                        } }
                        label { "Selector (optional)" input type="text" name="selector" placeholder="s202612"; }
                        div { button class="primary" type="submit" { "Generate (pending until you activate it)" } }
                    }
                }
            }
            @if rows.is_empty() {
                div class="card" { p class="empty" { "No domains yet: create a project first." } }
            }
            @for (domain, keys, dns) in rows {
                div class="card" {
                    h2 { (domain) }
                    @if keys.is_empty() {
                        p class="empty" { "No key: mail from " (domain) " leaves unsigned (or is refused, per the project's DKIM policy)." }
                    } @else {
                        table {
                            thead { tr { th { "Selector" } th { "Algorithm" } th { "State" } th { "Created" } th { "Activated" } th {} } }
                            tbody {
                                @for k in keys {
                                    @let base = format!("/dkim/{}/{}", path_part(domain), path_part(s(&k["selector"])));
                                    tr {
                                        td class="mono" { (s(&k["selector"])) }
                                        td { (s(&k["algorithm"])) @if let Some(b) = k["bits"].as_u64() { @if b > 0 { " " (b) } } }
                                        td { (key_badge(s(&k["state"]))) }
                                        td { (k["created"].as_u64().map(day).unwrap_or_default()) }
                                        td { (k["activated"].as_u64().map(day).unwrap_or_else(|| "—".into())) }
                                        td {
                                            @if is_admin {
                                                div class="row tight" {
                                                    @match s(&k["state"]) {
                                                        "pending" => {
                                                            form method="post" action={ (base) "/activate" } class="inline" { (csrf(session)) button type="submit" { "Activate" } }
                                                            form method="post" action={ (base) "/remove" } class="inline" { (csrf(session)) button class="danger" type="submit" { "Remove" } }
                                                        }
                                                        "active" => {
                                                            form method="post" action={ (base) "/retire" } class="inline" { (csrf(session)) button type="submit" { "Retire" } }
                                                        }
                                                        _ => {
                                                            form method="post" action={ (base) "/remove" } class="inline" { (csrf(session)) button class="danger" type="submit" { "Remove" } }
                                                        }
                                                    }
                                                }
                                            }
                                        }
                                    }
                                }
                            }
                        }
                    }
                    h3 class="spaced" { "DNS records to publish" }
                    @for rec in dns["records"].as_array().into_iter().flatten() {
                        div class="record" {
                            div class="small" { span class="badge" { (s(&rec["kind"]).to_uppercase()) } " " span class="mono" { (s(&rec["name"])) } " TXT" }
                            textarea class="record" readonly rows="2" aria-label={ (s(&rec["kind"])) " record for " (domain) } { (s(&rec["value"])) }
                            div class="muted small" { (s(&rec["comment"])) }
                        }
                    }
                }
            }
        },
    )
}

#[derive(Deserialize)]
pub struct KeygenForm {
    domain: String,
    algorithm: Algorithm,
    #[serde(default)]
    selector: String,
}

pub async fn keygen(
    State(p): State<PanelState>,
    Extension(sess): Extension<Session>,
    Form(f): Form<KeygenForm>,
) -> Response {
    let selector = Some(f.selector.trim().to_string()).filter(|s| !s.is_empty());
    let req = DkimRequest::Keygen {
        domain: f.domain,
        selector,
        algorithm: f.algorithm,
        bits: None,
        activate: false,
        show_private: false,
    };
    let r = admin(&p, AdminRequest::Dkim(req)).await;
    done(
        &p,
        &sess,
        r,
        "Key generated. Publish its DNS record, wait for it to propagate, then activate it.",
        "/dkim",
    )
}

async fn key_action(p: PanelState, sess: Session, req: DkimRequest, ok: &str) -> Response {
    let r = admin(&p, AdminRequest::Dkim(req)).await;
    done(&p, &sess, r, ok, "/dkim")
}

pub async fn activate(
    State(p): State<PanelState>,
    Extension(sess): Extension<Session>,
    Path((domain, selector)): Path<(String, String)>,
) -> Response {
    key_action(
        p,
        sess,
        DkimRequest::Activate { domain, selector },
        "Key activated: it signs from now on.",
    )
    .await
}

pub async fn retire(
    State(p): State<PanelState>,
    Extension(sess): Extension<Session>,
    Path((domain, selector)): Path<(String, String)>,
) -> Response {
    key_action(
        p,
        sess,
        DkimRequest::Retire { domain, selector },
        "Key retiring: keep its record published a few days.",
    )
    .await
}

pub async fn remove(
    State(p): State<PanelState>,
    Extension(sess): Extension<Session>,
    Path((domain, selector)): Path<(String, String)>,
) -> Response {
    key_action(
        p,
        sess,
        DkimRequest::Remove { domain, selector },
        "Key removed; delete its DNS record.",
    )
    .await
}
