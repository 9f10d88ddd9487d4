//! The web panel (`/`): server-rendered pages and plain HTML forms (POST, then redirect), so
//! it works without JavaScript. Like the JSON API, every page and every change is one
//! [`AdminRequest`] run through `admin::execute_async`; this file never touches a store.
//!
//! [`guard`] runs before every panel route: it finds the session, refuses cross-site writes
//! (`Origin` and `Sec-Fetch-Site`), checks the per-session CSRF token on every POST, refuses
//! viewers anything that changes state, and sets the panel's security headers. The markup is
//! in `pages.rs`.

use std::collections::HashMap;
use std::sync::Arc;

use axum::Router;
use axum::body::Body;
use axum::extract::{Extension, Form, Path, Query, Request, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use serde::Deserialize;
use serde_json::Value;
use subtle::ConstantTimeEq;

use super::HttpState;
use super::auth::{Refusal, check_token, client_ip};
use super::pages;
use super::session::{Reveal, Session, Sessions};
use crate::admin::{AdminError, AdminRequest, ErrorKind, execute_async};
use crate::secret::Secret;

/// Largest form body the panel reads (its forms are a few short fields).
const MAX_FORM: usize = 64 * 1024;
/// Largest `multipart/form-data` body (the branding form with its logo: 200 KiB at most,
/// refused with a clear message by the settings check, so some room above it).
const MAX_UPLOAD: usize = 1024 * 1024;

/// The stylesheet, served as a file so the CSP needs no inline style.
const STYLESHEET: &str = include_str!("panel.css");

/// Scripts: none. Styles and images: this origin only. Forms post only here.
/// Frames: only the panel's own (the sandboxed branding preview).
const CSP: &str = "default-src 'none'; style-src 'self'; img-src 'self' data:; \
                   frame-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'";

/// The branding preview, shown in a sandboxed iframe of the panel: a mail's HTML, so inline
/// styles and images (data: or https:), never a script, a form or a plugin; `sandbox` again
/// in the CSP in case it is opened on its own.
const PREVIEW_CSP: &str = "sandbox; default-src 'none'; style-src 'unsafe-inline'; \
                           img-src data: https:; form-action 'none'; \
                           frame-ancestors 'self'; base-uri 'none'";

/// Marks a response that is the branding preview (framed by the panel itself).
#[derive(Clone, Copy)]
pub(super) struct PreviewFrame;

#[derive(Clone)]
pub struct PanelState {
    pub http: HttpState,
    pub sessions: Arc<Sessions>,
    /// `https` or `http`: what a same-origin `Origin` header starts with.
    pub scheme: &'static str,
}

pub fn router(state: PanelState) -> Router {
    Router::new()
        .route("/", get(overview))
        .route("/login", get(login_page).post(login))
        .route("/logout", post(logout))
        .route("/static/panel.css", get(stylesheet))
        .route("/favicon.ico", get(favicon))
        .route("/static/favicon.svg", get(favicon))
        .route("/projects", get(projects).post(create_project))
        .route("/projects/{id}", get(project))
        .route("/projects/{id}/domains", post(add_domain))
        .route("/projects/{id}/domains/remove", post(remove_domain))
        .route("/projects/{id}/tokens", post(add_token))
        .route("/projects/{id}/mode", post(set_mode))
        .route("/projects/{id}/bounces", post(set_bounces))
        .route(
            "/projects/{id}/sandbox/{message}/release",
            post(release_captured),
        )
        .route("/projects/{id}/sandbox/clear", post(clear_captured))
        .route("/projects/{id}/suppressions", post(add_suppression))
        .route(
            "/projects/{id}/suppressions/remove",
            post(remove_suppression),
        )
        .route(
            "/projects/{id}/tokens/{token_id}/revoke",
            post(revoke_token),
        )
        .route("/projects/{id}/enabled", post(set_enabled))
        .route("/projects/{id}/max-age", post(set_max_age))
        .route(
            "/projects/{id}/delete",
            get(confirm_delete).post(delete_project),
        )
        .route(
            "/projects/{id}/branding",
            get(super::branding_page::page).post(super::branding_page::save),
        )
        .route(
            "/projects/{id}/branding/preview",
            get(super::branding_page::preview).post(super::branding_page::preview_changes),
        )
        .route("/branding", get(super::branding_page::index))
        .route(
            "/send-test",
            get(super::send_test_page::page).post(super::send_test_page::send),
        )
        .route(
            "/admin-tokens",
            get(super::tokens_page::page).post(super::tokens_page::add),
        )
        .route(
            "/admin-tokens/{id}/revoke",
            post(super::tokens_page::revoke),
        )
        .route("/dkim", get(super::dkim_page::page))
        .route("/dkim/keys", post(super::dkim_page::keygen))
        .route(
            "/dkim/{domain}/{selector}/activate",
            post(super::dkim_page::activate),
        )
        .route(
            "/dkim/{domain}/{selector}/retire",
            post(super::dkim_page::retire),
        )
        .route(
            "/dkim/{domain}/{selector}/remove",
            post(super::dkim_page::remove),
        )
        .route("/messages", get(messages))
        .route("/messages/{id}", get(message))
        .route("/messages/{id}/retry", post(retry_message))
        .route("/messages/{id}/delete", post(delete_message))
        .layer(axum::middleware::from_fn_with_state(state.clone(), guard))
        .with_state(state)
}

/// Paths served without a session.
fn is_public(path: &str) -> bool {
    matches!(
        path,
        "/login" | "/static/panel.css" | "/static/favicon.svg" | "/favicon.ico"
    )
}

/// Whether a state-changing request comes from a page of this panel. Browsers send
/// `Sec-Fetch-Site` and `Origin` on every cross-site POST; a client that sends neither (curl)
/// is held by the CSRF token alone. Under `Referrer-Policy: no-referrer` a browser sends
/// `Origin: null` even from our own pages, so `null` counts only with
/// `Sec-Fetch-Site: same-origin`.
fn same_origin(headers: &HeaderMap, scheme: &str) -> bool {
    let fetch_site = headers.get("sec-fetch-site").map(|v| v.as_bytes());
    if fetch_site.is_some_and(|site| site != b"same-origin") {
        return false;
    }
    match headers.get(header::ORIGIN) {
        None => true,
        Some(origin) if origin.as_bytes() == b"null" => fetch_site.is_some(),
        Some(origin) => {
            let host = headers
                .get(header::HOST)
                .and_then(|h| h.to_str().ok())
                .unwrap_or("");
            !host.is_empty() && origin.to_str().ok() == Some(&format!("{scheme}://{host}"))
        }
    }
}

/// Headers every admin HTTP response carries, pages and API alike: nothing is sniffed,
/// framed, cached or referred; `csp` says what a page may load.
pub(super) fn with_security_headers(mut r: Response, csp: &'static str) -> Response {
    let h = r.headers_mut();
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(csp),
    );
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    h.insert("x-frame-options", HeaderValue::from_static("DENY"));
    if !h.contains_key(header::CACHE_CONTROL) {
        h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    }
    r
}

fn forbidden(why: &str) -> Response {
    (StatusCode::FORBIDDEN, pages::error_page("Not allowed", why)).into_response()
}

async fn guard(State(p): State<PanelState>, req: Request, next: Next) -> Response {
    let r = guarded(p, req, next).await;
    if r.extensions().get::<PreviewFrame>().is_some() {
        let mut r = with_security_headers(r, PREVIEW_CSP);
        r.headers_mut()
            .insert("x-frame-options", HeaderValue::from_static("SAMEORIGIN"));
        return r;
    }
    with_security_headers(r, CSP)
}

/// Whether the request carries `multipart/form-data` (the branding form with its logo).
fn is_multipart(headers: &HeaderMap) -> bool {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("multipart/form-data"))
}

/// One field of a multipart form: its name, file name (for a file) and bytes.
pub(super) struct Part {
    pub name: String,
    pub file_name: Option<String>,
    pub data: axum::body::Bytes,
}

/// The fields of a `multipart/form-data` body (`None`: not a readable one).
pub(super) async fn multipart_parts(
    headers: &HeaderMap,
    body: axum::body::Bytes,
) -> Option<Vec<Part>> {
    use axum::extract::FromRequest;
    let mut req = Request::new(Body::from(body));
    *req.headers_mut() = headers.clone();
    let mut mp = axum::extract::Multipart::from_request(req, &())
        .await
        .ok()?;
    let mut out = Vec::new();
    while let Some(field) = mp.next_field().await.ok()? {
        let name = field.name().unwrap_or_default().to_string();
        let file_name = field.file_name().map(str::to_string);
        let data = field.bytes().await.ok()?;
        out.push(Part {
            name,
            file_name,
            data,
        });
    }
    Some(out)
}

async fn guarded(p: PanelState, req: Request, next: Next) -> Response {
    let writes = !matches!(*req.method(), Method::GET | Method::HEAD);
    if writes && !same_origin(req.headers(), p.scheme) {
        return forbidden("This form was sent from another site; nothing was changed.");
    }
    if is_public(req.uri().path()) {
        return next.run(req).await;
    }
    let Some(session) = p.sessions.find(req.headers()) else {
        if writes {
            return forbidden("Your session has ended; log in again. Nothing was changed.");
        }
        return Redirect::to("/login").into_response();
    };
    if !token_still_valid(&p, &session).await {
        p.sessions.end(&session);
        if writes {
            return forbidden("Your admin token was revoked; nothing was changed.");
        }
        return Redirect::to("/login").into_response();
    }
    let mut req = req;
    if writes {
        let (parts, body) = req.into_parts();
        let multipart = is_multipart(&parts.headers);
        let limit = if multipart { MAX_UPLOAD } else { MAX_FORM };
        let Ok(bytes) = axum::body::to_bytes(body, limit).await else {
            return (
                StatusCode::PAYLOAD_TOO_LARGE,
                pages::error_page("Too large", "That form is too large."),
            )
                .into_response();
        };
        let csrf = if multipart {
            multipart_parts(&parts.headers, bytes.clone())
                .await
                .and_then(|ps| ps.into_iter().find(|p| p.name == "csrf"))
                .map(|p| String::from_utf8_lossy(&p.data).into_owned())
                .unwrap_or_default()
        } else {
            form_urlencoded_field(&bytes, "csrf").unwrap_or_default()
        };
        if !bool::from(csrf.as_bytes().ct_eq(session.csrf.as_bytes())) {
            return forbidden(
                "This form is out of date or did not come from the panel; reload the page \
                 and try again. Nothing was changed.",
            );
        }
        if !session.is_admin() && parts.uri.path() != "/logout" {
            return forbidden("You are logged in as a viewer: you can look, not change.");
        }
        req = Request::from_parts(parts, Body::from(bytes));
    }
    req.extensions_mut().insert(session);
    next.run(req).await
}

/// Whether the session's admin token still exists (revoking it ends its sessions).
async fn token_still_valid(p: &PanelState, session: &Session) -> bool {
    let tokens = p.http.admin.admin_tokens.clone();
    let id = session.token_id.clone();
    tokio::task::spawn_blocking(move || tokens.list().map(|l| l.iter().any(|t| t.id == id)))
        .await
        .ok()
        .and_then(Result::ok)
        .unwrap_or(false)
}

fn form_urlencoded_field(body: &[u8], name: &str) -> Option<String> {
    form_urlencoded::parse(body)
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.into_owned())
}

/// Runs one admin operation; its error in plain words.
pub(super) async fn admin(p: &PanelState, req: AdminRequest) -> Result<Value, AdminError> {
    execute_async(&p.http.admin, req).await
}

/// A page, or the error page when the operation behind it failed.
pub(super) fn page_or_error(r: Result<maud::Markup, AdminError>) -> Response {
    match r {
        Ok(m) => m.into_response(),
        Err(e) => {
            let (status, title) = match e.kind {
                ErrorKind::NotFound => (StatusCode::NOT_FOUND, "Not found"),
                ErrorKind::Unavailable => (StatusCode::SERVICE_UNAVAILABLE, "Unavailable"),
                ErrorKind::Internal => (StatusCode::INTERNAL_SERVER_ERROR, "Internal error"),
                _ => (StatusCode::UNPROCESSABLE_ENTITY, "Cannot show this"),
            };
            (status, pages::error_page(title, &e.message)).into_response()
        }
    }
}

/// After a change: a notice for the next page, then back to `to`.
pub(super) fn done(
    p: &PanelState,
    s: &Session,
    r: Result<Value, AdminError>,
    ok: &str,
    to: &str,
) -> Response {
    match r {
        Ok(_) => p.sessions.notify(s, false, ok),
        Err(e) => p.sessions.notify(s, true, e.message),
    }
    Redirect::to(to).into_response()
}

pub(super) fn ctx<'a>(p: &'a PanelState, s: &'a Session, path: &'a str) -> pages::Ctx<'a> {
    pages::Ctx {
        session: s,
        notice: p.sessions.take_notice(s),
        path,
    }
}

async fn stylesheet() -> Response {
    (
        [
            (header::CONTENT_TYPE, "text/css; charset=utf-8"),
            (header::CACHE_CONTROL, "max-age=3600"),
        ],
        STYLESHEET,
    )
        .into_response()
}

/// The envelope mark of the header, as the tab icon (browsers ask for `/favicon.ico`).
async fn favicon() -> Response {
    (
        [
            (header::CONTENT_TYPE, "image/svg+xml"),
            (header::CACHE_CONTROL, "max-age=86400"),
        ],
        FAVICON,
    )
        .into_response()
}

const FAVICON: &str = r##"<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 32 32"><rect width="32" height="32" rx="7" fill="#3056d3"/><path d="M7 10h18v12H7z" fill="none" stroke="#fff" stroke-width="2"/><path d="M7 10l9 7 9-7" fill="none" stroke="#fff" stroke-width="2"/></svg>"##;

async fn login_page(State(p): State<PanelState>, headers: HeaderMap) -> Response {
    if p.sessions.find(&headers).is_some() {
        return Redirect::to("/").into_response();
    }
    pages::login(None).into_response()
}

#[derive(Deserialize)]
struct LoginForm {
    #[serde(default)]
    token: String,
}

async fn login(
    State(p): State<PanelState>,
    parts: axum::http::request::Parts,
    Form(f): Form<LoginForm>,
) -> Response {
    let ip = client_ip(&parts);
    match check_token(&p.http, ip, f.token.trim()).await {
        Ok(info) => {
            let cookie = p.sessions.create(&info);
            tracing::info!(client = %ip, admin_token = %info.id, role = info.role.as_str(), "panel login");
            let mut r = Redirect::to("/").into_response();
            if let Ok(v) = HeaderValue::from_str(&cookie) {
                r.headers_mut().insert(header::SET_COOKIE, v);
            }
            r
        }
        Err(Refusal::CoolingDown(_)) => (
            StatusCode::TOO_MANY_REQUESTS,
            pages::login(Some(
                "Too many failed tokens from your address; wait a little and try again.",
            )),
        )
            .into_response(),
        Err(Refusal::Invalid) => (
            StatusCode::UNAUTHORIZED,
            pages::login(Some("That is not a valid admin token.")),
        )
            .into_response(),
        Err(Refusal::Unavailable) => (
            StatusCode::SERVICE_UNAVAILABLE,
            pages::login(Some("Admin tokens cannot be read right now.")),
        )
            .into_response(),
    }
}

async fn logout(State(p): State<PanelState>, Extension(s): Extension<Session>) -> Response {
    p.sessions.end(&s);
    let mut r = Redirect::to("/login").into_response();
    if let Ok(v) = HeaderValue::from_str(&p.sessions.clear_cookie()) {
        r.headers_mut().insert(header::SET_COOKIE, v);
    }
    r
}

pub(super) fn array(v: Value) -> Vec<Value> {
    match v {
        Value::Array(a) => a,
        _ => Vec::new(),
    }
}

async fn overview(State(p): State<PanelState>, Extension(s): Extension<Session>) -> Response {
    let r = async {
        let projects = array(admin(&p, AdminRequest::ProjectList).await?);
        let stats = admin(
            &p,
            AdminRequest::Stats(crate::admin::stats::StatsRequest { hours: 24 }),
        )
        .await?;
        let cluster = admin(&p, AdminRequest::ClusterStatus).await?;
        Ok(pages::overview(
            ctx(&p, &s, "/"),
            &projects,
            &stats,
            &cluster,
        ))
    }
    .await;
    page_or_error(r)
}

async fn projects(State(p): State<PanelState>, Extension(s): Extension<Session>) -> Response {
    let r = async {
        let projects = array(admin(&p, AdminRequest::ProjectList).await?);
        Ok(pages::projects(ctx(&p, &s, "/projects"), &projects))
    }
    .await;
    page_or_error(r)
}

#[derive(Deserialize)]
struct NewProject {
    name: String,
    #[serde(default)]
    domains: String,
    #[serde(default)]
    label: String,
}

/// Keeps the token of a `ProjectAdd`/`TokenAdd` answer for a one-time reveal.
fn keep_reveal(p: &PanelState, s: &Session, v: &Value, project: &str) {
    if let (Some(token), Some(token_id)) = (v["token"].as_str(), v["token_id"].as_str()) {
        p.sessions.set_reveal(
            s,
            Reveal {
                project: project.to_string(),
                token_id: token_id.to_string(),
                token: Secret::new(token),
            },
        );
    }
}

async fn create_project(
    State(p): State<PanelState>,
    Extension(s): Extension<Session>,
    Form(f): Form<NewProject>,
) -> Response {
    let domains: Vec<String> = f
        .domains
        .split([',', ' ', '\n', '\r', '\t'])
        .filter(|d| !d.is_empty())
        .map(str::to_string)
        .collect();
    let label = if f.label.trim().is_empty() {
        "default".to_string()
    } else {
        f.label.trim().to_string()
    };
    let req = AdminRequest::ProjectAdd {
        name: f.name.trim().to_string(),
        domains,
        label,
        max_age_secs: None,
    };
    match admin(&p, req).await {
        Ok(v) => {
            let id = v["project"]["id"].as_str().unwrap_or_default().to_string();
            keep_reveal(&p, &s, &v, &id);
            p.sessions.notify(&s, false, "Project created.");
            Redirect::to(&format!("/projects/{}", pages::path_part(&id))).into_response()
        }
        Err(e) => {
            p.sessions.notify(&s, true, e.message);
            Redirect::to("/projects").into_response()
        }
    }
}

async fn project(
    State(p): State<PanelState>,
    Extension(s): Extension<Session>,
    Path(id): Path<String>,
) -> Response {
    let r = async {
        let project = admin(&p, AdminRequest::ProjectShow { id: id.clone() }).await?;
        // The Messages page's search, so the rows carry subject and From as there (the
        // envelope listing of `Log` has them nested in its summary: "(no subject)" each).
        let recent =
            crate::admin::messages::message_search(crate::admin::messages::MessageQueryParts {
                project: Some(id.clone()),
                state: None,
                recipient: None,
                sender: None,
                since: None,
                until: None,
                q: None,
                cursor: None,
                limit: Some(10),
            })?;
        let log = admin(&p, AdminRequest::Messages(recent))
            .await
            .map(|page| array(page["messages"].clone()))
            .unwrap_or_default();
        let suppressed = array(
            admin(
                &p,
                AdminRequest::SuppressionList {
                    project: id.clone(),
                },
            )
            .await
            .unwrap_or(Value::Null),
        );
        let sandbox = admin(
            &p,
            AdminRequest::SandboxList {
                project: id.clone(),
                limit: 20,
            },
        )
        .await
        .unwrap_or(Value::Null);
        let reveal = p.sessions.take_reveal(&s, &id);
        Ok(pages::project(
            ctx(&p, &s, "/projects"),
            &project,
            reveal.as_ref(),
            &log,
            &suppressed,
            &sandbox,
        ))
    }
    .await;
    page_or_error(r)
}

pub(super) fn project_url(id: &str) -> String {
    format!("/projects/{}", pages::path_part(id))
}

#[derive(Deserialize)]
struct DomainForm {
    domain: String,
}

async fn add_domain(
    State(p): State<PanelState>,
    Extension(s): Extension<Session>,
    Path(id): Path<String>,
    Form(f): Form<DomainForm>,
) -> Response {
    let r = admin(
        &p,
        AdminRequest::DomainAdd {
            id: id.clone(),
            domain: f.domain.trim().to_string(),
        },
    )
    .await;
    done(&p, &s, r, "Domain added.", &project_url(&id))
}

async fn remove_domain(
    State(p): State<PanelState>,
    Extension(s): Extension<Session>,
    Path(id): Path<String>,
    Form(f): Form<DomainForm>,
) -> Response {
    let r = admin(
        &p,
        AdminRequest::DomainRemove {
            id: id.clone(),
            domain: f.domain,
        },
    )
    .await;
    done(&p, &s, r, "Domain removed.", &project_url(&id))
}

#[derive(Deserialize)]
struct SuppressionForm {
    address: String,
    #[serde(default)]
    reason: String,
}

async fn add_suppression(
    State(p): State<PanelState>,
    Extension(s): Extension<Session>,
    Path(id): Path<String>,
    Form(f): Form<SuppressionForm>,
) -> Response {
    let reason = match f.reason.trim() {
        "" => "added in the panel".to_string(),
        r => r.to_string(),
    };
    let r = admin(
        &p,
        AdminRequest::SuppressionAdd {
            project: id.clone(),
            address: f.address.trim().to_string(),
            reason,
        },
    )
    .await;
    done(&p, &s, r, "Recipient suppressed.", &project_url(&id))
}

async fn remove_suppression(
    State(p): State<PanelState>,
    Extension(s): Extension<Session>,
    Path(id): Path<String>,
    Form(f): Form<SuppressionForm>,
) -> Response {
    let r = admin(
        &p,
        AdminRequest::SuppressionRemove {
            project: id.clone(),
            address: f.address,
        },
    )
    .await;
    done(
        &p,
        &s,
        r,
        "Recipient removed from the suppression list.",
        &project_url(&id),
    )
}

#[derive(Deserialize)]
struct TokenForm {
    #[serde(default)]
    label: String,
}

async fn add_token(
    State(p): State<PanelState>,
    Extension(s): Extension<Session>,
    Path(id): Path<String>,
    Form(f): Form<TokenForm>,
) -> Response {
    let label = match f.label.trim() {
        "" => "default".to_string(),
        l => l.to_string(),
    };
    let r = admin(
        &p,
        AdminRequest::TokenAdd {
            id: id.clone(),
            label,
        },
    )
    .await;
    if let Ok(v) = &r {
        keep_reveal(&p, &s, v, &id);
    }
    done(&p, &s, r, "Token created.", &project_url(&id))
}

async fn revoke_token(
    State(p): State<PanelState>,
    Extension(s): Extension<Session>,
    Path((id, token_id)): Path<(String, String)>,
) -> Response {
    let r = admin(
        &p,
        AdminRequest::TokenRevoke {
            id: id.clone(),
            token_id,
        },
    )
    .await;
    done(&p, &s, r, "Token revoked.", &project_url(&id))
}

#[derive(Deserialize)]
struct EnabledForm {
    enabled: String,
}

async fn set_enabled(
    State(p): State<PanelState>,
    Extension(s): Extension<Session>,
    Path(id): Path<String>,
    Form(f): Form<EnabledForm>,
) -> Response {
    let enabled = f.enabled == "true";
    let r = admin(
        &p,
        AdminRequest::ProjectEnable {
            id: id.clone(),
            enabled,
        },
    )
    .await;
    let ok = if enabled {
        "Project enabled."
    } else {
        "Project disabled: its tokens are refused until it is enabled again."
    };
    done(&p, &s, r, ok, &project_url(&id))
}

#[derive(Deserialize)]
struct ModeForm {
    mode: String,
}

async fn set_mode(
    State(p): State<PanelState>,
    Extension(s): Extension<Session>,
    Path(id): Path<String>,
    Form(f): Form<ModeForm>,
) -> Response {
    let mode: crate::policy::projects::ProjectMode = match f.mode.parse() {
        Ok(m) => m,
        Err(e) => {
            let r = Err(AdminError::invalid("mode", e));
            return done(&p, &s, r, "", &project_url(&id));
        }
    };
    let r = admin(
        &p,
        AdminRequest::ProjectMode {
            id: id.clone(),
            mode,
        },
    )
    .await;
    let ok = match mode {
        crate::policy::projects::ProjectMode::Sandbox => {
            "Sandbox mode: this project's mail is captured here, not sent."
        }
        crate::policy::projects::ProjectMode::Live => "Live mode: this project's mail is sent.",
    };
    done(&p, &s, r, ok, &project_url(&id))
}

async fn set_bounces(
    State(p): State<PanelState>,
    Extension(s): Extension<Session>,
    Path(id): Path<String>,
    Form(f): Form<EnabledForm>,
) -> Response {
    let on = f.enabled == "true";
    let r = admin(
        &p,
        AdminRequest::ProjectBounces {
            id: id.clone(),
            enabled: Some(on),
        },
    )
    .await;
    let ok = if on {
        "Bounce messages on: senders hear of mail that could not be delivered."
    } else {
        "Bounce messages off."
    };
    done(&p, &s, r, ok, &project_url(&id))
}

async fn release_captured(
    State(p): State<PanelState>,
    Extension(s): Extension<Session>,
    Path((id, message)): Path<(String, String)>,
) -> Response {
    let r = admin(&p, AdminRequest::SandboxRelease { id: message }).await;
    done(
        &p,
        &s,
        r,
        "Released: the message is queued for delivery.",
        &project_url(&id),
    )
}

async fn clear_captured(
    State(p): State<PanelState>,
    Extension(s): Extension<Session>,
    Path(id): Path<String>,
) -> Response {
    let r = admin(
        &p,
        AdminRequest::SandboxClear {
            project: id.clone(),
        },
    )
    .await;
    done(&p, &s, r, "Captured messages deleted.", &project_url(&id))
}

#[derive(Deserialize)]
struct MaxAgeForm {
    #[serde(default)]
    max_age_secs: String,
}

async fn set_max_age(
    State(p): State<PanelState>,
    Extension(s): Extension<Session>,
    Path(id): Path<String>,
    Form(f): Form<MaxAgeForm>,
) -> Response {
    let to = project_url(&id);
    let max_age_secs = match f.max_age_secs.trim() {
        "" => None,
        v => match v.parse::<u64>() {
            Ok(n) => Some(n),
            Err(_) => {
                p.sessions.notify(
                    &s,
                    true,
                    "Max age: a whole number of seconds, or empty for the default.",
                );
                return Redirect::to(&to).into_response();
            }
        },
    };
    let r = admin(&p, AdminRequest::ProjectMaxAge { id, max_age_secs }).await;
    done(&p, &s, r, "Max age saved.", &to)
}

async fn confirm_delete(
    State(p): State<PanelState>,
    Extension(s): Extension<Session>,
    Path(id): Path<String>,
) -> Response {
    let r = async {
        let project = admin(&p, AdminRequest::ProjectShow { id }).await?;
        Ok(pages::confirm_delete(ctx(&p, &s, "/projects"), &project))
    }
    .await;
    page_or_error(r)
}

#[derive(Deserialize)]
struct DeleteForm {
    #[serde(default)]
    confirm: String,
}

async fn delete_project(
    State(p): State<PanelState>,
    Extension(s): Extension<Session>,
    Path(id): Path<String>,
    Form(f): Form<DeleteForm>,
) -> Response {
    // The confirmation page asks for the project's id typed out.
    if f.confirm.trim() != id {
        p.sessions.notify(
            &s,
            true,
            "Type the project's id to confirm; nothing was deleted.",
        );
        return Redirect::to(&format!("{}/delete", project_url(&id))).into_response();
    }
    let r = admin(&p, AdminRequest::ProjectDelete { id }).await;
    done(&p, &s, r, "Project deleted.", "/projects")
}

/// `YYYY-MM-DD` (UTC) as Unix seconds at 00:00 that day.
fn date_secs(d: &str) -> Option<u64> {
    let mut it = d.splitn(3, '-');
    let y: i64 = it.next()?.parse().ok()?;
    let m: i64 = it.next()?.parse().ok()?;
    let day: i64 = it.next()?.parse().ok()?;
    if !(1..=12).contains(&m) || !(1..=31).contains(&day) || !(1970..=9999).contains(&y) {
        return None;
    }
    // Days from the civil date (H. Hinnant's algorithm).
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    u64::try_from((era * 146_097 + doe - 719_468) * 86_400).ok()
}

async fn messages(
    State(p): State<PanelState>,
    Extension(s): Extension<Session>,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    let field = |k: &str| q.get(k).map(|v| v.trim().to_string()).unwrap_or_default();
    let f = pages::MessageFilters {
        project: field("project"),
        state: field("state"),
        recipient: field("recipient"),
        sender: field("sender"),
        q: field("q"),
        since: field("since"),
        until: field("until"),
    };
    let cursor = q.get("cursor").cloned();
    let r = async {
        let date = |name: &str, v: &str, plus_day: bool| -> Result<Option<u64>, AdminError> {
            if v.is_empty() {
                return Ok(None);
            }
            date_secs(v)
                .map(|d| Some(if plus_day { d + 86_400 } else { d }))
                .ok_or_else(|| AdminError::invalid(name, format!("{v:?} is not a date")))
        };
        let parts = crate::admin::messages::MessageQueryParts {
            project: Some(f.project.clone()),
            state: Some(f.state.clone()),
            recipient: Some(f.recipient.clone()),
            sender: Some(f.sender.clone()),
            since: date("since", &f.since, false)?,
            // The whole "to" day is included.
            until: date("until", &f.until, true)?,
            q: Some(f.q.clone()),
            cursor: cursor.clone(),
            limit: Some(50),
        };
        let req = crate::admin::messages::message_search(parts)?;
        let projects = array(admin(&p, AdminRequest::ProjectList).await?);
        let page = admin(&p, AdminRequest::Messages(req)).await?;
        Ok(pages::messages(
            ctx(&p, &s, "/messages"),
            &projects,
            &f,
            &page,
            cursor.is_some(),
        ))
    }
    .await;
    page_or_error(r)
}

async fn message(
    State(p): State<PanelState>,
    Extension(s): Extension<Session>,
    Path(id): Path<String>,
) -> Response {
    let r = async {
        let req = crate::admin::messages::MessagesRequest::Show { id };
        let m = admin(&p, AdminRequest::Messages(req)).await?;
        Ok(pages::message(ctx(&p, &s, "/messages"), &m))
    }
    .await;
    page_or_error(r)
}

fn message_url(id: &str) -> String {
    format!("/messages/{}", pages::path_part(id))
}

async fn retry_message(
    State(p): State<PanelState>,
    Extension(s): Extension<Session>,
    Path(id): Path<String>,
) -> Response {
    let to = message_url(&id);
    let r = admin(&p, AdminRequest::QueueRetry { id }).await;
    done(&p, &s, r, "Retrying now.", &to)
}

async fn delete_message(
    State(p): State<PanelState>,
    Extension(s): Extension<Session>,
    Path(id): Path<String>,
) -> Response {
    let to = message_url(&id);
    let r = admin(&p, AdminRequest::QueueDelete { id }).await;
    done(&p, &s, r, "Message deleted from the queue.", &to)
}
