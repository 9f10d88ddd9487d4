//! The panel's Send test page: pick a project (and, if wanted, one upstream instead of its
//! route) and a recipient; the relay sends one short message through the real pipeline now,
//! bypassing the queue, and the page says in plain words what happened — the same operation
//! as `smtp-relay send-test` and `POST /api/v1/send-test` (`api::send_test_outcome`).

use axum::extract::{Extension, Form, State};
use axum::response::{IntoResponse, Redirect, Response};
use maud::{Markup, html};
use serde::Deserialize;
use serde_json::Value;

use super::pages::{Ctx, csrf, layout, s};
use super::panel::{PanelState, admin, array, ctx, page_or_error};
use super::session::Session;
use crate::admin::AdminRequest;
use crate::outbound::send_test::SendTest;

pub async fn page(State(p): State<PanelState>, Extension(sess): Extension<Session>) -> Response {
    let r = async {
        let projects = array(admin(&p, AdminRequest::ProjectList).await?);
        let upstreams: Vec<String> = p
            .http
            .admin
            .routes
            .config()
            .upstreams
            .keys()
            .cloned()
            .collect();
        let last = p.sessions.take_result(&sess, "/send-test");
        Ok(render(
            ctx(&p, &sess, "/send-test"),
            &projects,
            &upstreams,
            last.as_ref(),
        ))
    }
    .await;
    page_or_error(r)
}

fn render(ctx: Ctx<'_>, projects: &[Value], upstreams: &[String], last: Option<&Value>) -> Markup {
    let session = ctx.session;
    layout(
        ctx,
        "Send test",
        html! {
            p class="sub" { "Sends one short message now through the project's route — branding, DKIM and From rewriting included — and shows the upstream's answer. It does not go through the queue." }
            @if let Some(r) = last {
                @let ok = r["delivered"].as_bool() == Some(true);
                div class={ "result " (if ok { "ok" } else { "bad" }) } role="status" id="send-test-result" {
                    strong { (if ok { "Delivered. " } else { "Not delivered. " }) }
                    span class="wrap" { (s(&r["result"])) }
                    @if ok {
                        div class="small" { "Test id " span class="mono" { (s(&r["id"])) } " · from " span class="mono" { (s(&r["from"])) } " to " span class="mono" { (s(&r["to"])) } }
                    }
                }
            }
            div class="card narrow" {
                @if projects.is_empty() {
                    p class="empty" { "No projects yet." }
                } @else if !session.is_admin() {
                    p class="empty" { "Viewers cannot send mail; log in with an admin token." }
                } @else {
                    form method="post" action="/send-test" class="stack" {
                        (csrf(session))
                        label { "Project" select name="project" {
                            @for pr in projects { option value=(s(&pr["id"])) { (s(&pr["name"])) " (" (s(&pr["id"])) ")" } }
                        } }
                        label { "Recipient" input type="email" name="to" required placeholder="you@example.com"; }
                        label { "Upstream" select name="upstream" {
                            option value="" { "The project's route" }
                            @for u in upstreams { option value=(u) { (u) } }
                        } }
                        div { button class="primary" type="submit" { "Send test message" } }
                    }
                }
            }
        },
    )
}

#[derive(Deserialize)]
pub struct SendTestForm {
    project: String,
    to: String,
    #[serde(default)]
    upstream: String,
}

/// Runs the test, keeps its outcome for the next page view, and goes back to the page.
pub async fn send(
    State(p): State<PanelState>,
    Extension(sess): Extension<Session>,
    Form(f): Form<SendTestForm>,
) -> Response {
    let t = SendTest {
        project: f.project,
        to: f.to.trim().to_string(),
        upstream: Some(f.upstream.trim().to_string()).filter(|u| !u.is_empty()),
        from: None,
    };
    match super::api::send_test_outcome(&p.http.admin, t).await {
        Ok(v) => p.sessions.keep_result(&sess, "/send-test", v),
        Err(e) => p.sessions.notify(&sess, true, e.message),
    }
    Redirect::to("/send-test").into_response()
}
