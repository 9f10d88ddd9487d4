//! The API routes of sandbox projects: a project's mode, and its captured mail (list, show,
//! the `.eml` download, release, clear). Each is one [`AdminRequest`], like every route.

use axum::Json;
use axum::extract::rejection::JsonRejection;
use axum::extract::{Path, Query, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use base64::Engine;
use serde::Deserialize;

use super::HttpState;
use super::api::{admin_error_response, body, error_response, run};
use super::auth::Caller;
use crate::admin::{AdminRequest, execute_async};
use crate::policy::projects::ProjectMode;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct NewMode {
    mode: ProjectMode,
}

pub(super) async fn set_mode(
    _c: Caller,
    State(s): State<HttpState>,
    Path(id): Path<String>,
    b: Result<Json<NewMode>, JsonRejection>,
) -> Response {
    match body(b) {
        Ok(m) => run(&s, AdminRequest::ProjectMode { id, mode: m.mode }, false).await,
        Err(r) => r,
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct ListQuery {
    #[serde(default)]
    limit: Option<usize>,
}

pub(super) async fn list(
    _c: Caller,
    State(s): State<HttpState>,
    Path(project): Path<String>,
    q: Result<Query<ListQuery>, axum::extract::rejection::QueryRejection>,
) -> Response {
    let q = match q {
        Ok(Query(q)) => q,
        Err(e) => return error_response(StatusCode::BAD_REQUEST, "bad_request", &e.body_text()),
    };
    let req = AdminRequest::SandboxList {
        project,
        limit: q.limit.unwrap_or(100).min(1000),
    };
    run(&s, req, false).await
}

pub(super) async fn clear(
    _c: Caller,
    State(s): State<HttpState>,
    Path(project): Path<String>,
) -> Response {
    run(&s, AdminRequest::SandboxClear { project }, false).await
}

pub(super) async fn show(
    _c: Caller,
    State(s): State<HttpState>,
    Path(id): Path<String>,
) -> Response {
    run(&s, AdminRequest::SandboxShow { id }, false).await
}

/// The captured message as it would have left, as a `message/rfc822` download.
pub(super) async fn eml(
    _c: Caller,
    State(s): State<HttpState>,
    Path(id): Path<String>,
) -> Response {
    let v = match execute_async(&s.admin, AdminRequest::SandboxShow { id: id.clone() }).await {
        Ok(v) => v,
        Err(e) => return admin_error_response(&e),
    };
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(v["eml_base64"].as_str().unwrap_or_default())
        .unwrap_or_default();
    // Ids are hex: safe in a header and a file name.
    let name: String = id.chars().filter(char::is_ascii_alphanumeric).collect();
    (
        [
            (header::CONTENT_TYPE, "message/rfc822".to_string()),
            (
                header::CONTENT_DISPOSITION,
                format!("attachment; filename=\"{name}.eml\""),
            ),
        ],
        bytes,
    )
        .into_response()
}

pub(super) async fn release(
    _c: Caller,
    State(s): State<HttpState>,
    Path(id): Path<String>,
) -> Response {
    run(&s, AdminRequest::SandboxRelease { id }, false).await
}
