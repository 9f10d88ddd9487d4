//! The DKIM routes of the JSON API (`/api/v1/dkim…`): keys per domain (generate, import,
//! activate, retire, remove) and the DNS records to publish, each one `DkimRequest` through
//! `admin::execute_async` like the CLI's `smtp-relay dkim …`. A private key never comes back
//! out over HTTP (generation never asks for `show_private`).

use axum::extract::rejection::JsonRejection;
use axum::extract::{Path, Query, State};
use axum::response::Response;
use axum::routing::{delete, get, post};
use axum::{Json, Router};
use serde::Deserialize;

use super::HttpState;
use super::api::{body, run};
use super::auth::Caller;
use crate::admin::AdminRequest;
use crate::admin::dkim::{DkimRequest, PrivatePem};
use crate::transform::dkim_keys::Algorithm;

pub fn routes() -> Router<HttpState> {
    Router::new()
        .route("/api/v1/dkim", get(list))
        .route("/api/v1/dkim/keys", post(keygen))
        .route("/api/v1/dkim/import", post(import))
        .route("/api/v1/dkim/{domain}/dns", get(dns))
        .route("/api/v1/dkim/{domain}/{selector}", delete(remove))
        .route("/api/v1/dkim/{domain}/{selector}/activate", post(activate))
        .route("/api/v1/dkim/{domain}/{selector}/retire", post(retire))
}

fn dkim(req: DkimRequest) -> AdminRequest {
    AdminRequest::Dkim(req)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ListQuery {
    #[serde(default)]
    domain: Option<String>,
}

async fn list(
    _c: Caller,
    State(s): State<HttpState>,
    q: Result<Query<ListQuery>, axum::extract::rejection::QueryRejection>,
) -> Response {
    let q = match q {
        Ok(Query(q)) => q,
        Err(e) => {
            return super::api::error_response(
                axum::http::StatusCode::BAD_REQUEST,
                "bad_request",
                &e.body_text(),
            );
        }
    };
    run(&s, dkim(DkimRequest::List { domain: q.domain }), false).await
}

fn default_algorithm() -> Algorithm {
    Algorithm::Rsa
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Keygen {
    domain: String,
    #[serde(default)]
    selector: Option<String>,
    #[serde(default = "default_algorithm")]
    algorithm: Algorithm,
    #[serde(default)]
    bits: Option<usize>,
    #[serde(default)]
    activate: bool,
}

async fn keygen(
    _c: Caller,
    State(s): State<HttpState>,
    b: Result<Json<Keygen>, JsonRejection>,
) -> Response {
    let k = match body(b) {
        Ok(v) => v,
        Err(r) => return r,
    };
    let req = DkimRequest::Keygen {
        domain: k.domain,
        selector: k.selector,
        algorithm: k.algorithm,
        bits: k.bits,
        activate: k.activate,
        show_private: false,
    };
    run(&s, dkim(req), true).await
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Import {
    domain: String,
    selector: String,
    /// PKCS#8 or PKCS#1 PEM.
    private_key: PrivatePem,
    #[serde(default)]
    activate: bool,
}

async fn import(
    _c: Caller,
    State(s): State<HttpState>,
    b: Result<Json<Import>, JsonRejection>,
) -> Response {
    let k = match body(b) {
        Ok(v) => v,
        Err(r) => return r,
    };
    let req = DkimRequest::Import {
        domain: k.domain,
        selector: k.selector,
        private_key: k.private_key,
        activate: k.activate,
    };
    run(&s, dkim(req), true).await
}

async fn dns(_c: Caller, State(s): State<HttpState>, Path(domain): Path<String>) -> Response {
    run(&s, dkim(DkimRequest::Dns { domain }), false).await
}

async fn activate(
    _c: Caller,
    State(s): State<HttpState>,
    Path((domain, selector)): Path<(String, String)>,
) -> Response {
    run(&s, dkim(DkimRequest::Activate { domain, selector }), false).await
}

async fn retire(
    _c: Caller,
    State(s): State<HttpState>,
    Path((domain, selector)): Path<(String, String)>,
) -> Response {
    run(&s, dkim(DkimRequest::Retire { domain, selector }), false).await
}

async fn remove(
    _c: Caller,
    State(s): State<HttpState>,
    Path((domain, selector)): Path<(String, String)>,
) -> Response {
    run(&s, dkim(DkimRequest::Remove { domain, selector }), false).await
}
