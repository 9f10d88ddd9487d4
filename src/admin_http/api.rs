//! The JSON API (`/api/v1/…`): each route turns its path, query and body into one
//! [`AdminRequest`] and runs it through `admin::execute_async`, exactly as the CLI and the
//! Unix socket do. Errors are `{"error": {"code", "message"}}` with an HTTP status; bodies are
//! checked before anything runs, so bad input changes nothing.

use axum::extract::rejection::JsonRejection;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post, put};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::{Value, json};

use super::HttpState;
use super::auth::Caller;
use super::sandbox_api;
use crate::admin::{AdminError, AdminRequest, ErrorKind, execute_async};
use crate::outbound::send_test::SendTest;
use crate::policy::limits::LimitOverride;
use crate::transform::branding::BrandingUpdate;

/// Every route of the API, for the router and for tests that check nothing is left out.
pub const ROUTES: &[(&str, &str)] = &[
    ("GET", "/api/v1/projects"),
    ("POST", "/api/v1/projects"),
    ("GET", "/api/v1/projects/{id}"),
    ("PATCH", "/api/v1/projects/{id}"),
    ("DELETE", "/api/v1/projects/{id}"),
    ("GET", "/api/v1/projects/{id}/tokens"),
    ("POST", "/api/v1/projects/{id}/tokens"),
    ("DELETE", "/api/v1/projects/{id}/tokens/{token_id}"),
    ("POST", "/api/v1/projects/{id}/domains"),
    ("DELETE", "/api/v1/projects/{id}/domains/{domain}"),
    ("GET", "/api/v1/projects/{id}/limits"),
    ("PUT", "/api/v1/projects/{id}/limits"),
    ("DELETE", "/api/v1/projects/{id}/limits"),
    ("GET", "/api/v1/projects/{id}/branding"),
    ("PUT", "/api/v1/projects/{id}/branding"),
    ("POST", "/api/v1/projects/{id}/branding/preview"),
    ("GET", "/api/v1/projects/{id}/route"),
    ("PUT", "/api/v1/projects/{id}/route"),
    ("DELETE", "/api/v1/projects/{id}/route"),
    ("GET", "/api/v1/projects/{id}/suppressions"),
    ("POST", "/api/v1/projects/{id}/suppressions"),
    ("DELETE", "/api/v1/projects/{id}/suppressions/{address}"),
    ("GET", "/api/v1/queue"),
    ("GET", "/api/v1/queue/{id}"),
    ("DELETE", "/api/v1/queue/{id}"),
    ("POST", "/api/v1/queue/{id}/retry"),
    ("GET", "/api/v1/messages"),
    ("GET", "/api/v1/messages/{id}"),
    ("POST", "/api/v1/send-test"),
    ("GET", "/api/v1/stats"),
    ("GET", "/api/v1/admin-tokens"),
    ("POST", "/api/v1/admin-tokens"),
    ("DELETE", "/api/v1/admin-tokens/{id}"),
    ("GET", "/api/v1/webhooks"),
    ("POST", "/api/v1/webhooks"),
    ("GET", "/api/v1/webhooks/{id}"),
    ("DELETE", "/api/v1/webhooks/{id}"),
    ("POST", "/api/v1/webhooks/{id}/test"),
    ("POST", "/api/v1/webhooks/{id}/rotate-secret"),
    ("POST", "/api/v1/webhooks/{id}/enable"),
    ("GET", "/api/v1/status"),
    ("GET", "/api/v1/dkim"),
    ("POST", "/api/v1/dkim/keys"),
    ("POST", "/api/v1/dkim/import"),
    ("GET", "/api/v1/dkim/{domain}/dns"),
    ("DELETE", "/api/v1/dkim/{domain}/{selector}"),
    ("POST", "/api/v1/dkim/{domain}/{selector}/activate"),
    ("POST", "/api/v1/dkim/{domain}/{selector}/retire"),
    ("PUT", "/api/v1/projects/{id}/mode"),
    ("GET", "/api/v1/projects/{id}/sandbox"),
    ("DELETE", "/api/v1/projects/{id}/sandbox"),
    ("GET", "/api/v1/sandbox/{id}"),
    ("GET", "/api/v1/sandbox/{id}/eml"),
    ("POST", "/api/v1/sandbox/{id}/release"),
    ("GET", "/api/v1/cluster"),
    ("GET", "/api/v1/openapi.json"),
];

pub fn router(state: HttpState) -> Router {
    Router::new()
        .route("/api/v1/projects", get(list_projects).post(create_project))
        .route(
            "/api/v1/projects/{id}",
            get(show_project)
                .patch(update_project)
                .delete(delete_project),
        )
        .route(
            "/api/v1/projects/{id}/tokens",
            get(list_tokens).post(add_token),
        )
        .route(
            "/api/v1/projects/{id}/tokens/{token_id}",
            delete(revoke_token),
        )
        .route("/api/v1/projects/{id}/domains", post(add_domain))
        .route(
            "/api/v1/projects/{id}/domains/{domain}",
            delete(remove_domain),
        )
        .route(
            "/api/v1/projects/{id}/limits",
            get(show_limits).put(set_limits).delete(clear_limits),
        )
        .route(
            "/api/v1/projects/{id}/branding",
            get(show_branding).put(set_branding),
        )
        .route(
            "/api/v1/projects/{id}/branding/preview",
            post(preview_branding),
        )
        .route(
            "/api/v1/projects/{id}/route",
            get(show_route).put(set_route).delete(clear_route),
        )
        .route(
            "/api/v1/projects/{id}/suppressions",
            get(list_suppressions).post(add_suppression),
        )
        .route(
            "/api/v1/projects/{id}/suppressions/{address}",
            delete(remove_suppression),
        )
        .route("/api/v1/queue", get(queue_list))
        .route("/api/v1/queue/{id}", get(queue_show).delete(queue_delete))
        .route("/api/v1/queue/{id}/retry", post(queue_retry))
        .route("/api/v1/messages", get(messages))
        .route("/api/v1/messages/{id}", get(message))
        .route("/api/v1/send-test", post(send_test))
        .route("/api/v1/stats", get(stats))
        .route(
            "/api/v1/admin-tokens",
            get(list_admin_tokens).post(add_admin_token),
        )
        .route("/api/v1/admin-tokens/{id}", delete(revoke_admin_token))
        .route("/api/v1/webhooks", get(list_webhooks).post(add_webhook))
        .route(
            "/api/v1/webhooks/{id}",
            get(show_webhook).delete(remove_webhook),
        )
        .route("/api/v1/webhooks/{id}/test", post(test_webhook))
        .route("/api/v1/webhooks/{id}/rotate-secret", post(rotate_webhook))
        .route("/api/v1/webhooks/{id}/enable", post(enable_webhook))
        .route("/api/v1/status", get(status))
        .route("/api/v1/projects/{id}/mode", put(sandbox_api::set_mode))
        .route(
            "/api/v1/projects/{id}/sandbox",
            get(sandbox_api::list).delete(sandbox_api::clear),
        )
        .route("/api/v1/sandbox/{id}", get(sandbox_api::show))
        .route("/api/v1/sandbox/{id}/eml", get(sandbox_api::eml))
        .route("/api/v1/sandbox/{id}/release", post(sandbox_api::release))
        .route("/api/v1/cluster", get(cluster_status))
        .route("/api/v1/openapi.json", get(openapi))
        .merge(super::dkim_api::routes())
        .fallback(not_found)
        .layer(axum::middleware::map_response(security_headers))
        .with_state(state)
}

/// Headers every API response carries (the panel's, with a CSP that allows nothing).
async fn security_headers(r: Response) -> Response {
    super::panel::with_security_headers(r, "default-src 'none'; frame-ancestors 'none'")
}

/// `{"error": {"code", "message"}}` with `status`.
pub fn error_response(status: StatusCode, code: &str, message: &str) -> Response {
    (
        status,
        Json(json!({ "error": { "code": code, "message": message } })),
    )
        .into_response()
}

/// The HTTP status of a refused admin operation, from its kind (never from its wording).
pub fn status_of(kind: ErrorKind) -> StatusCode {
    match kind {
        ErrorKind::NotFound => StatusCode::NOT_FOUND,
        ErrorKind::Conflict => StatusCode::CONFLICT,
        ErrorKind::Invalid => StatusCode::UNPROCESSABLE_ENTITY,
        ErrorKind::TooLarge => StatusCode::PAYLOAD_TOO_LARGE,
        ErrorKind::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
        ErrorKind::Upstream => StatusCode::BAD_GATEWAY,
        ErrorKind::Internal => StatusCode::INTERNAL_SERVER_ERROR,
    }
}

/// A refused admin operation as a JSON error (with the refused field when there is one).
pub fn admin_error_response(e: &AdminError) -> Response {
    let mut v = json!({ "error": { "code": e.kind.code(), "message": e.message } });
    if let Some(f) = &e.field {
        v["error"]["field"] = json!(f);
    }
    (status_of(e.kind), Json(v)).into_response()
}

pub(super) async fn run(state: &HttpState, req: AdminRequest, created: bool) -> Response {
    match execute_async(&state.admin, req).await {
        Ok(v) => {
            let status = if created {
                StatusCode::CREATED
            } else {
                StatusCode::OK
            };
            (status, Json(v)).into_response()
        }
        Err(e) => admin_error_response(&e),
    }
}

/// A JSON body, or the error response naming what is wrong with it.
#[allow(clippy::result_large_err)] // the error is the response itself, returned at once
pub(super) fn body<T>(b: Result<Json<T>, JsonRejection>) -> Result<T, Response> {
    match b {
        Ok(Json(v)) => Ok(v),
        // Right JSON, wrong shape (a field missing, unknown or of the wrong type): serde's
        // message names the field.
        Err(JsonRejection::JsonDataError(e)) => Err(error_response(
            StatusCode::BAD_REQUEST,
            "bad_request",
            &e.body_text(),
        )),
        Err(JsonRejection::MissingJsonContentType(_)) => Err(error_response(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
            "send the body as JSON (Content-Type: application/json)",
        )),
        Err(e) => Err(error_response(
            StatusCode::BAD_REQUEST,
            "bad_request",
            &e.body_text(),
        )),
    }
}

/// The API description; no token needed (it holds nothing secret).
async fn openapi() -> Response {
    Json(super::openapi::document()).into_response()
}

/// Unknown API paths need a token like any route (no probing without one); anything outside
/// `/api/` is a plain 404, so a browser asking for an icon never counts as a failed token.
async fn not_found(State(s): State<HttpState>, req: axum::extract::Request) -> Response {
    let (mut parts, _) = req.into_parts();
    if !parts.uri.path().starts_with("/api/") {
        return (StatusCode::NOT_FOUND, "not found\n").into_response();
    }
    if let Err(r) =
        <Caller as axum::extract::FromRequestParts<HttpState>>::from_request_parts(&mut parts, &s)
            .await
    {
        return r;
    }
    error_response(StatusCode::NOT_FOUND, "not_found", "no such API route")
}

async fn list_projects(_c: Caller, State(s): State<HttpState>) -> Response {
    run(&s, AdminRequest::ProjectList, false).await
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NewProject {
    name: String,
    #[serde(default)]
    domains: Vec<String>,
    #[serde(default = "default_label")]
    label: String,
    #[serde(default)]
    max_age_secs: Option<u64>,
}

fn default_label() -> String {
    "default".into()
}

async fn create_project(
    _c: Caller,
    State(s): State<HttpState>,
    b: Result<Json<NewProject>, JsonRejection>,
) -> Response {
    let p = match body(b) {
        Ok(p) => p,
        Err(r) => return r,
    };
    let req = AdminRequest::ProjectAdd {
        name: p.name,
        domains: p.domains,
        label: p.label,
        max_age_secs: p.max_age_secs,
    };
    run(&s, req, true).await
}

async fn show_project(_c: Caller, State(s): State<HttpState>, Path(id): Path<String>) -> Response {
    run(&s, AdminRequest::ProjectShow { id }, false).await
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ProjectUpdate {
    #[serde(default)]
    enabled: Option<bool>,
    /// Bounce messages (RFC 3464 DSNs) for finally failed messages.
    #[serde(default)]
    bounces: Option<bool>,
    /// `null` goes back to the config's default.
    #[serde(default, with = "double_option")]
    max_age_secs: Option<Option<u64>>,
}

/// Tells a missing field (`None`) from an explicit `null` (`Some(None)`).
mod double_option {
    use serde::{Deserialize, Deserializer};
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Option<u64>>, D::Error> {
        Option::<u64>::deserialize(d).map(Some)
    }
}

async fn update_project(
    _c: Caller,
    State(s): State<HttpState>,
    Path(id): Path<String>,
    b: Result<Json<ProjectUpdate>, JsonRejection>,
) -> Response {
    let u = match body(b) {
        Ok(u) => u,
        Err(r) => return r,
    };
    // The change that can be refused (max age) goes first, so a refusal changes nothing.
    if let Some(max_age_secs) = u.max_age_secs {
        let r = run(
            &s,
            AdminRequest::ProjectMaxAge {
                id: id.clone(),
                max_age_secs,
            },
            false,
        )
        .await;
        if !r.status().is_success() {
            return r;
        }
    }
    if let Some(on) = u.bounces {
        let r = run(
            &s,
            AdminRequest::ProjectBounces {
                id: id.clone(),
                enabled: Some(on),
            },
            false,
        )
        .await;
        if !r.status().is_success() {
            return r;
        }
    }
    if let Some(enabled) = u.enabled {
        let r = run(
            &s,
            AdminRequest::ProjectEnable {
                id: id.clone(),
                enabled,
            },
            false,
        )
        .await;
        if !r.status().is_success() {
            return r;
        }
    }
    run(&s, AdminRequest::ProjectShow { id }, false).await
}

async fn delete_project(
    _c: Caller,
    State(s): State<HttpState>,
    Path(id): Path<String>,
) -> Response {
    run(&s, AdminRequest::ProjectDelete { id }, false).await
}

async fn list_tokens(_c: Caller, State(s): State<HttpState>, Path(id): Path<String>) -> Response {
    let r = run(&s, AdminRequest::ProjectShow { id }, false).await;
    if !r.status().is_success() {
        return r;
    }
    match axum::body::to_bytes(r.into_body(), 1 << 20).await {
        Ok(bytes) => {
            let v: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
            Json(v["tokens"].clone()).into_response()
        }
        Err(_) => error_response(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            "internal error",
        ),
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NewToken {
    #[serde(default = "default_label")]
    label: String,
}

async fn add_token(
    _c: Caller,
    State(s): State<HttpState>,
    Path(id): Path<String>,
    b: Result<Json<NewToken>, JsonRejection>,
) -> Response {
    let t = match body(b) {
        Ok(t) => t,
        Err(r) => return r,
    };
    run(&s, AdminRequest::TokenAdd { id, label: t.label }, true).await
}

async fn revoke_token(
    _c: Caller,
    State(s): State<HttpState>,
    Path((id, token_id)): Path<(String, String)>,
) -> Response {
    run(&s, AdminRequest::TokenRevoke { id, token_id }, false).await
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NewDomain {
    domain: String,
}

async fn add_domain(
    _c: Caller,
    State(s): State<HttpState>,
    Path(id): Path<String>,
    b: Result<Json<NewDomain>, JsonRejection>,
) -> Response {
    let d = match body(b) {
        Ok(d) => d,
        Err(r) => return r,
    };
    run(
        &s,
        AdminRequest::DomainAdd {
            id,
            domain: d.domain,
        },
        true,
    )
    .await
}

async fn remove_domain(
    _c: Caller,
    State(s): State<HttpState>,
    Path((id, domain)): Path<(String, String)>,
) -> Response {
    run(&s, AdminRequest::DomainRemove { id, domain }, false).await
}

async fn show_limits(_c: Caller, State(s): State<HttpState>, Path(id): Path<String>) -> Response {
    let req = AdminRequest::ProjectLimits {
        id,
        set: LimitOverride::default(),
        clear: false,
    };
    run(&s, req, false).await
}

async fn set_limits(
    _c: Caller,
    State(s): State<HttpState>,
    Path(id): Path<String>,
    b: Result<Json<LimitOverride>, JsonRejection>,
) -> Response {
    let set = match body(b) {
        Ok(v) => v,
        Err(r) => return r,
    };
    run(
        &s,
        AdminRequest::ProjectLimits {
            id,
            set,
            clear: false,
        },
        false,
    )
    .await
}

async fn clear_limits(_c: Caller, State(s): State<HttpState>, Path(id): Path<String>) -> Response {
    let req = AdminRequest::ProjectLimits {
        id,
        set: LimitOverride::default(),
        clear: true,
    };
    run(&s, req, false).await
}

async fn show_branding(_c: Caller, State(s): State<HttpState>, Path(id): Path<String>) -> Response {
    run(
        &s,
        AdminRequest::ProjectBranding { id, update: None },
        false,
    )
    .await
}

/// The branding settings to change (`logo`: the image file, base64).
async fn set_branding(
    _c: Caller,
    State(s): State<HttpState>,
    Path(id): Path<String>,
    b: Result<Json<BrandingUpdate>, JsonRejection>,
) -> Response {
    let update = match body(b) {
        Ok(v) => v,
        Err(r) => return r,
    };
    let req = AdminRequest::ProjectBranding {
        id,
        update: Some(update),
    };
    run(&s, req, false).await
}

/// The branded sample; a body (optional) previews changes without saving them.
async fn preview_branding(
    _c: Caller,
    State(s): State<HttpState>,
    Path(id): Path<String>,
    body_bytes: axum::body::Bytes,
) -> Response {
    let changes = if body_bytes.iter().all(u8::is_ascii_whitespace) {
        None
    } else {
        match serde_json::from_slice::<BrandingUpdate>(&body_bytes) {
            Ok(u) => Some(u),
            Err(e) => {
                return error_response(StatusCode::BAD_REQUEST, "bad_request", &e.to_string());
            }
        }
    };
    run(&s, AdminRequest::BrandingPreview { id, changes }, false).await
}

async fn show_route(_c: Caller, State(s): State<HttpState>, Path(id): Path<String>) -> Response {
    let req = AdminRequest::ProjectRoute {
        id,
        upstream: None,
        fallbacks: Vec::new(),
        clear: false,
    };
    run(&s, req, false).await
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NewRoute {
    upstream: String,
    #[serde(default)]
    fallbacks: Vec<String>,
}

async fn set_route(
    _c: Caller,
    State(s): State<HttpState>,
    Path(id): Path<String>,
    b: Result<Json<NewRoute>, JsonRejection>,
) -> Response {
    let r = match body(b) {
        Ok(v) => v,
        Err(r) => return r,
    };
    let req = AdminRequest::ProjectRoute {
        id,
        upstream: Some(r.upstream),
        fallbacks: r.fallbacks,
        clear: false,
    };
    run(&s, req, false).await
}

async fn clear_route(_c: Caller, State(s): State<HttpState>, Path(id): Path<String>) -> Response {
    let req = AdminRequest::ProjectRoute {
        id,
        upstream: None,
        fallbacks: Vec::new(),
        clear: true,
    };
    run(&s, req, false).await
}

async fn queue_list(_c: Caller, State(s): State<HttpState>) -> Response {
    run(&s, AdminRequest::QueueList, false).await
}

async fn queue_show(_c: Caller, State(s): State<HttpState>, Path(id): Path<String>) -> Response {
    run(&s, AdminRequest::QueueShow { id }, false).await
}

async fn queue_delete(_c: Caller, State(s): State<HttpState>, Path(id): Path<String>) -> Response {
    run(&s, AdminRequest::QueueDelete { id }, false).await
}

async fn queue_retry(_c: Caller, State(s): State<HttpState>, Path(id): Path<String>) -> Response {
    run(&s, AdminRequest::QueueRetry { id }, false).await
}

/// `GET /api/v1/messages` query: every filter optional; times in Unix seconds.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct MessageQuery {
    #[serde(default)]
    project: Option<String>,
    #[serde(default)]
    state: Option<String>,
    #[serde(default)]
    recipient: Option<String>,
    #[serde(default)]
    sender: Option<String>,
    #[serde(default)]
    since: Option<u64>,
    #[serde(default)]
    until: Option<u64>,
    /// Free text in the subject, From, sender, recipients or id.
    #[serde(default)]
    q: Option<String>,
    #[serde(default)]
    cursor: Option<String>,
    #[serde(default)]
    limit: Option<usize>,
}

async fn messages(
    _c: Caller,
    State(s): State<HttpState>,
    q: Result<Query<MessageQuery>, axum::extract::rejection::QueryRejection>,
) -> Response {
    let q = match q {
        Ok(Query(q)) => q,
        Err(e) => return error_response(StatusCode::BAD_REQUEST, "bad_request", &e.body_text()),
    };
    let parts = crate::admin::messages::MessageQueryParts {
        project: q.project,
        state: q.state,
        recipient: q.recipient,
        sender: q.sender,
        since: q.since,
        until: q.until,
        q: q.q,
        cursor: q.cursor,
        limit: q.limit,
    };
    match crate::admin::messages::message_search(parts) {
        Ok(req) => run(&s, AdminRequest::Messages(req), false).await,
        Err(e) => admin_error_response(&e),
    }
}

async fn message(_c: Caller, State(s): State<HttpState>, Path(id): Path<String>) -> Response {
    let req = crate::admin::messages::MessagesRequest::Show { id };
    run(&s, AdminRequest::Messages(req), false).await
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct StatsQuery {
    #[serde(default)]
    hours: Option<u32>,
}

async fn stats(
    _c: Caller,
    State(s): State<HttpState>,
    q: Result<Query<StatsQuery>, axum::extract::rejection::QueryRejection>,
) -> Response {
    let q = match q {
        Ok(Query(q)) => q,
        Err(e) => return error_response(StatusCode::BAD_REQUEST, "bad_request", &e.body_text()),
    };
    let req = crate::admin::stats::StatsRequest {
        hours: q.hours.unwrap_or(24),
    };
    run(&s, AdminRequest::Stats(req), false).await
}

/// The outcome of a send-test in plain words: delivered or not, and why. An upstream's
/// refusal is the answer to the test, not an error of the request (200, `delivered: false`);
/// bad input is a 422.
pub async fn send_test_outcome(
    admin: &crate::admin::AdminContext,
    t: SendTest,
) -> Result<Value, AdminError> {
    match execute_async(admin, AdminRequest::SendTest(t)).await {
        Ok(mut v) => {
            let words = format!(
                "delivered through upstream {}: {}",
                v["upstream"].as_str().unwrap_or("?"),
                v["reply"].as_str().unwrap_or("")
            );
            v["delivered"] = json!(true);
            v["result"] = json!(words);
            Ok(v)
        }
        Err(e) if e.kind == ErrorKind::Upstream => Ok(json!({
            "delivered": false,
            "result": e.message,
        })),
        Err(e) => Err(e),
    }
}

async fn send_test(
    _c: Caller,
    State(s): State<HttpState>,
    b: Result<Json<SendTest>, JsonRejection>,
) -> Response {
    let t = match body(b) {
        Ok(v) => v,
        Err(r) => return r,
    };
    match send_test_outcome(&s.admin, t).await {
        Ok(v) => Json(v).into_response(),
        Err(e) => admin_error_response(&e),
    }
}

/// The running server's status report (`smtp-relay status`).
async fn status(_c: Caller, State(s): State<HttpState>) -> Response {
    run(&s, AdminRequest::Status, false).await
}

async fn list_admin_tokens(_c: Caller, State(s): State<HttpState>) -> Response {
    run(&s, AdminRequest::AdminTokenList, false).await
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NewAdminToken {
    label: String,
    role: crate::policy::admin_tokens::Role,
}

async fn add_admin_token(
    _c: Caller,
    State(s): State<HttpState>,
    b: Result<Json<NewAdminToken>, JsonRejection>,
) -> Response {
    let t = match body(b) {
        Ok(v) => v,
        Err(r) => return r,
    };
    let req = AdminRequest::AdminTokenAdd {
        label: t.label,
        role: t.role,
    };
    run(&s, req, true).await
}

async fn revoke_admin_token(
    _c: Caller,
    State(s): State<HttpState>,
    Path(id): Path<String>,
) -> Response {
    run(&s, AdminRequest::AdminTokenRevoke { id }, false).await
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct WebhookQuery {
    project: Option<String>,
}

async fn list_webhooks(
    _c: Caller,
    State(s): State<HttpState>,
    q: Result<Query<WebhookQuery>, axum::extract::rejection::QueryRejection>,
) -> Response {
    let q = match q {
        Ok(Query(q)) => q,
        Err(e) => return error_response(StatusCode::BAD_REQUEST, "bad_request", &e.body_text()),
    };
    run(&s, AdminRequest::WebhookList { project: q.project }, false).await
}

/// `project` absent: every project's events.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NewWebhook {
    #[serde(default)]
    project: Option<String>,
    url: String,
    events: Vec<String>,
}

async fn add_webhook(
    _c: Caller,
    State(s): State<HttpState>,
    b: Result<Json<NewWebhook>, JsonRejection>,
) -> Response {
    let w = match body(b) {
        Ok(v) => v,
        Err(r) => return r,
    };
    let req = AdminRequest::WebhookAdd {
        project: w.project,
        url: w.url,
        events: w.events,
    };
    run(&s, req, true).await
}

async fn show_webhook(_c: Caller, State(s): State<HttpState>, Path(id): Path<String>) -> Response {
    run(&s, AdminRequest::WebhookShow { id }, false).await
}

async fn remove_webhook(
    _c: Caller,
    State(s): State<HttpState>,
    Path(id): Path<String>,
) -> Response {
    run(&s, AdminRequest::WebhookRemove { id }, false).await
}

async fn test_webhook(_c: Caller, State(s): State<HttpState>, Path(id): Path<String>) -> Response {
    run(&s, AdminRequest::WebhookTest { id }, false).await
}

async fn rotate_webhook(
    _c: Caller,
    State(s): State<HttpState>,
    Path(id): Path<String>,
) -> Response {
    run(&s, AdminRequest::WebhookRotateSecret { id }, false).await
}

/// Cluster mode: nodes, Redis, degraded (`{"clustered": false}` on a single node).
async fn cluster_status(_c: Caller, State(s): State<HttpState>) -> Response {
    run(&s, AdminRequest::ClusterStatus, false).await
}

async fn enable_webhook(
    _c: Caller,
    State(s): State<HttpState>,
    Path(id): Path<String>,
) -> Response {
    run(&s, AdminRequest::WebhookEnable { id }, false).await
}

async fn list_suppressions(
    _c: Caller,
    State(s): State<HttpState>,
    Path(project): Path<String>,
) -> Response {
    run(&s, AdminRequest::SuppressionList { project }, false).await
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NewSuppression {
    address: String,
    #[serde(default)]
    reason: String,
}

async fn add_suppression(
    _c: Caller,
    State(s): State<HttpState>,
    Path(project): Path<String>,
    b: Result<Json<NewSuppression>, JsonRejection>,
) -> Response {
    let n = match body(b) {
        Ok(v) => v,
        Err(r) => return r,
    };
    let req = AdminRequest::SuppressionAdd {
        project,
        address: n.address,
        reason: n.reason,
    };
    run(&s, req, true).await
}

async fn remove_suppression(
    _c: Caller,
    State(s): State<HttpState>,
    Path((project, address)): Path<(String, String)>,
) -> Response {
    run(
        &s,
        AdminRequest::SuppressionRemove { project, address },
        false,
    )
    .await
}
