//! `POST /emails` and `POST /emails/batch`: Resend's request and response shapes, turned into
//! an envelope and a MIME message (mail-builder) and handed to `inbound::submit`.
//!
//! Order of checks, cheapest first: token (401/403), the project's session place and body size
//! (429/413), the JSON (422), every address (422), the sender domain (403), suppressed
//! recipients (422, `Recipient suppressed: …`, the `suppressed` event), the rate windows
//! *before* the message is built (429 + `retry-after`), the built size (413), then the shared
//! acceptance path, whose refusals map to the statuses below. Errors have Resend's shape:
//! `{"statusCode": 422, "name": "validation_error", "message": "…"}`.

use std::collections::HashSet;
use std::sync::Arc;

use axum::Router;
use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use base64::Engine;
use mail_builder::MessageBuilder;
use mail_builder::headers::address::Address;
use serde::Deserialize;
use serde_json::json;

use super::{ApiState, ClientAddr};
use crate::inbound::Shared;
use crate::inbound::quota::{RateCheck, RateRefusal};
use crate::inbound::submit::{self, KeyCompletion, KeyRefusal, Refusal, Submission, Submitter};
use crate::policy::idempotency::{Check, Fingerprint, IdempotencyError, Outcome, Reservation};
use crate::policy::limits::{LimitsError, ProjectSession};
use crate::policy::projects::Authenticated;
use crate::policy::sender::{self, RecipientKey};
use crate::queue::spool::{MailParams, RcptParams};
use crate::transform::TransformError;

/// Resend's limits.
const MAX_TO: usize = 50;
const MAX_BATCH: usize = 100;
/// The throttle key of failed send API tokens from one address.
const THROTTLE_USER: &str = "send-api";
/// Headers the API builds itself; a request may not set them in `headers`.
const RESERVED_HEADERS: &[&str] = &[
    "from",
    "to",
    "cc",
    "bcc",
    "reply-to",
    "subject",
    "sender",
    "date",
    "message-id",
    "mime-version",
    "content-type",
    "content-transfer-encoding",
    "content-disposition",
    "received",
    "return-path",
    "dkim-signature",
    "resent-from",
    "resent-sender",
];

pub fn router(state: ApiState) -> Router {
    Router::new()
        .route("/emails", post(send_one))
        .route("/emails/batch", post(send_batch))
        .fallback(|| async {
            ApiError::new(
                StatusCode::NOT_FOUND,
                "not_found",
                "The requested endpoint does not exist.",
            )
        })
        .with_state(state)
}

/// An error in Resend's shape, with `retry-after` for 429 and 503.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    name: &'static str,
    message: String,
    retry_after: Option<u64>,
}

impl ApiError {
    fn new(status: StatusCode, name: &'static str, message: impl Into<String>) -> ApiError {
        ApiError {
            status,
            name,
            message: message.into(),
            retry_after: None,
        }
    }

    fn invalid(message: impl Into<String>) -> ApiError {
        ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "validation_error",
            message,
        )
    }

    fn retry(mut self, secs: u64) -> ApiError {
        self.retry_after = Some(secs.max(1));
        self
    }

    fn internal() -> ApiError {
        ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal_server_error",
            "An unexpected error occurred.",
        )
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = json!({
            "statusCode": self.status.as_u16(),
            "name": self.name,
            "message": self.message,
        });
        let mut r = (self.status, axum::Json(body)).into_response();
        if let Some(secs) = self.retry_after
            && let Ok(v) = HeaderValue::from_str(&secs.to_string())
        {
            r.headers_mut().insert(header::RETRY_AFTER, v);
        }
        r
    }
}

impl From<&Refusal> for ApiError {
    fn from(r: &Refusal) -> ApiError {
        let text = crate::inbound::reply::printable(&r.to_string());
        match r {
            Refusal::TooManyHops(_) => ApiError::invalid(text),
            Refusal::Sender(_) => ApiError::new(StatusCode::FORBIDDEN, "validation_error", text),
            Refusal::Transform(TransformError::Branding(_)) => ApiError::invalid(
                "Message structure too complex (MIME nesting or part count limit)",
            ),
            Refusal::Transform(TransformError::Dkim(e)) => ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "application_error",
                format!(
                    "Cannot DKIM-sign for {}, try again later",
                    crate::inbound::reply::printable(e.domain())
                ),
            )
            .retry(60),
            Refusal::Withdrawn(why) => ApiError::new(
                StatusCode::FORBIDDEN,
                "invalid_api_key",
                format!("API key is invalid: {why}"),
            ),
            Refusal::Rate(e) => ApiError::from(e),
            Refusal::Storage(e) if e.is_disk_full() => ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "application_error",
                "Insufficient system storage, try again later",
            )
            .retry(60),
            Refusal::Branding(_) | Refusal::Registry(_) | Refusal::Storage(_) => {
                ApiError::internal()
            }
            Refusal::Idempotency(k) => ApiError::from(*k),
        }
    }
}

/// Resend's idempotency errors.
impl From<KeyRefusal> for ApiError {
    fn from(k: KeyRefusal) -> ApiError {
        match k {
            KeyRefusal::Invalid => ApiError::new(
                StatusCode::BAD_REQUEST,
                "invalid_idempotency_key",
                "The idempotency key has to be between 1 and 256 characters. Retry with a valid key or without one.",
            ),
            KeyRefusal::Mismatch => ApiError::new(
                StatusCode::CONFLICT,
                "invalid_idempotent_request",
                "This idempotency key has already been used on a request that had a different payload. Change the key or the payload.",
            ),
            KeyRefusal::InFlight => ApiError::new(
                StatusCode::CONFLICT,
                "concurrent_idempotent_requests",
                "Another request with this idempotency key is still in progress. Retry this request later.",
            ),
            KeyRefusal::Unavailable => ApiError::internal(),
        }
    }
}

impl From<&RateRefusal> for ApiError {
    fn from(r: &RateRefusal) -> ApiError {
        match r {
            RateRefusal::Exceeded {
                project,
                retry_secs,
            } => ApiError::new(
                StatusCode::TOO_MANY_REQUESTS,
                "rate_limit_exceeded",
                format!("Rate limit exceeded for project {project}, retry in {retry_secs} s"),
            )
            .retry(*retry_secs),
            RateRefusal::TooManyRecipients => ApiError::invalid("Too many recipients"),
            RateRefusal::Unavailable => ApiError::internal(),
        }
    }
}

/// A string or a list of strings (`to`, `cc`, `bcc`, `reply_to`).
#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum OneOrMany {
    One(String),
    Many(Vec<String>),
}

impl OneOrMany {
    fn into_vec(self) -> Vec<String> {
        match self {
            OneOrMany::One(s) => vec![s],
            OneOrMany::Many(v) => v,
        }
    }
}

/// Attachment content: base64 text, or bytes as a JSON array (a serialised Node Buffer
/// arrives as `{"type": "Buffer", "data": […]}`).
#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum Content {
    Base64(String),
    Bytes(Vec<u8>),
    Buffer { data: Vec<u8> },
}

#[derive(Debug, Deserialize)]
struct AttachmentIn {
    content: Option<Content>,
    filename: Option<String>,
    path: Option<String>,
    content_type: Option<String>,
    content_id: Option<String>,
}

#[derive(Debug, Deserialize)]
struct TagIn {
    name: String,
    value: String,
}

/// One email of Resend's `POST /emails` body. Unknown fields are refused so that nothing is
/// silently dropped.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct EmailIn {
    from: Option<String>,
    to: Option<OneOrMany>,
    subject: Option<String>,
    cc: Option<OneOrMany>,
    bcc: Option<OneOrMany>,
    reply_to: Option<OneOrMany>,
    html: Option<String>,
    text: Option<String>,
    headers: Option<serde_json::Map<String, serde_json::Value>>,
    attachments: Option<Vec<AttachmentIn>>,
    tags: Option<Vec<TagIn>>,
    scheduled_at: Option<serde_json::Value>,
    react: Option<serde_json::Value>,
}

/// A mailbox from `Name <addr>` or `addr`.
#[derive(Debug, Clone)]
struct Mailbox {
    name: Option<String>,
    address: String,
}

impl Mailbox {
    fn parse(field: &str, s: &str) -> Result<Mailbox, ApiError> {
        let s = s.trim();
        let bad = || ApiError::invalid(format!("Invalid `{field}` field: {}", shown(s)));
        if s.chars().any(char::is_control) {
            return Err(bad());
        }
        let (name, address) = match (s.rfind('<'), s.ends_with('>')) {
            (Some(open), true) => {
                let name = s[..open].trim().trim_matches('"').trim();
                let address = s[open + 1..s.len() - 1].trim();
                ((!name.is_empty()).then(|| name.to_string()), address)
            }
            _ => (None, s),
        };
        if address.is_empty()
            || address.len() > 254
            || address
                .chars()
                .any(|c| c.is_whitespace() || "<>\"".contains(c))
            || sender::address_domain(address).is_none()
        {
            return Err(bad());
        }
        Ok(Mailbox {
            name,
            address: address.to_string(),
        })
    }

    fn to_address(&self) -> Address<'static> {
        Address::new_address(self.name.clone(), self.address.clone())
    }
}

/// At most 200 characters of a client's value, printable, for an error message.
fn shown(s: &str) -> String {
    let mut t = crate::inbound::reply::printable(s);
    t.truncate(t.char_indices().nth(200).map_or(t.len(), |(i, _)| i));
    format!("{t:?}")
}

/// A checked email, ready to be built.
struct Prepared {
    from: Mailbox,
    to: Vec<Mailbox>,
    cc: Vec<Mailbox>,
    reply_to: Vec<Mailbox>,
    /// Envelope recipients: to, cc and bcc, each mailbox once.
    recipients: Vec<String>,
    subject: String,
    html: Option<String>,
    text: Option<String>,
    headers: Vec<(String, String)>,
    attachments: Vec<Attachment>,
}

struct Attachment {
    filename: String,
    content_type: String,
    content_id: Option<String>,
    bytes: Vec<u8>,
}

fn mailboxes(field: &str, v: Option<OneOrMany>) -> Result<Vec<Mailbox>, ApiError> {
    v.map(OneOrMany::into_vec)
        .unwrap_or_default()
        .iter()
        .map(|s| Mailbox::parse(field, s))
        .collect()
}

fn missing(field: &str) -> ApiError {
    ApiError::new(
        StatusCode::UNPROCESSABLE_ENTITY,
        "missing_required_field",
        format!("Missing `{field}` field."),
    )
}

/// Checks one email against Resend's rules and the relay's recipient policy.
fn prepare(e: EmailIn, shared: &Shared, max_recipients: usize) -> Result<Prepared, ApiError> {
    if e.scheduled_at.is_some() {
        return Err(ApiError::invalid(
            "`scheduled_at` is not supported by this relay",
        ));
    }
    if e.react.is_some() {
        return Err(ApiError::invalid(
            "`react` is not supported by this relay: render to `html` first",
        ));
    }
    let from = Mailbox::parse("from", e.from.as_deref().ok_or_else(|| missing("from"))?)
        .map_err(|_| {
            ApiError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "invalid_from_address",
                "Invalid `from` field. The email address needs to follow the `email@example.com` or `Name <email@example.com>` format.",
            )
        })?;
    let to = mailboxes("to", Some(e.to.ok_or_else(|| missing("to"))?))?;
    if to.is_empty() {
        return Err(missing("to"));
    }
    if to.len() > MAX_TO {
        return Err(ApiError::invalid(format!(
            "Invalid `to` field: at most {MAX_TO} recipients"
        )));
    }
    let subject = e.subject.ok_or_else(|| missing("subject"))?;
    if subject.chars().any(|c| c == '\r' || c == '\n') {
        return Err(ApiError::invalid("Invalid `subject` field: line break"));
    }
    let cc = mailboxes("cc", e.cc)?;
    let bcc = mailboxes("bcc", e.bcc)?;
    let reply_to = mailboxes("reply_to", e.reply_to)?;
    if e.html.is_none() && e.text.is_none() {
        return Err(missing("html` or `text"));
    }

    let refused = &shared.config.server.refused_recipient_domains;
    let mut seen: HashSet<RecipientKey> = HashSet::new();
    let mut recipients = Vec::new();
    for m in to.iter().chain(&cc).chain(&bcc) {
        let key = sender::check_recipient(&m.address, refused)
            .map_err(|err| ApiError::invalid(crate::inbound::reply::printable(&err.to_string())))?;
        if seen.insert(key) {
            recipients.push(m.address.clone());
        }
    }
    if recipients.len() > max_recipients {
        return Err(ApiError::invalid(format!(
            "Too many recipients: at most {max_recipients} (to, cc and bcc together)"
        )));
    }

    let mut headers = Vec::new();
    for (name, value) in e.headers.unwrap_or_default() {
        let value = match value {
            serde_json::Value::String(s) => s,
            _ => {
                return Err(ApiError::invalid(format!(
                    "Invalid `headers` field: the value of {} must be a string",
                    shown(&name)
                )));
            }
        };
        let name_ok = !name.is_empty()
            && name.len() <= 76
            && name.bytes().all(|b| b.is_ascii_graphic() && b != b':');
        if !name_ok || value.chars().any(|c| c == '\r' || c == '\n' || c == '\0') {
            return Err(ApiError::invalid(format!(
                "Invalid `headers` field: {}",
                shown(&name)
            )));
        }
        if RESERVED_HEADERS.contains(&name.to_ascii_lowercase().as_str()) {
            return Err(ApiError::invalid(format!(
                "Invalid `headers` field: {name} is set by the API, not by `headers`"
            )));
        }
        headers.push((name, value));
    }

    let mut attachments = Vec::new();
    for (i, a) in e.attachments.unwrap_or_default().into_iter().enumerate() {
        let bad = |why: &str| {
            ApiError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "invalid_attachment",
                format!("Invalid attachment {i}: {why}"),
            )
        };
        if a.path.is_some() {
            return Err(bad(
                "`path` (a remote URL) is not supported by this relay: send `content`",
            ));
        }
        let bytes = match a.content {
            Some(Content::Base64(s)) => {
                let compact: String = s.chars().filter(|c| !c.is_ascii_whitespace()).collect();
                base64::engine::general_purpose::STANDARD
                    .decode(compact.as_bytes())
                    .map_err(|_| bad("`content` is not base64"))?
            }
            Some(Content::Bytes(b)) | Some(Content::Buffer { data: b }) => b,
            None => return Err(bad("`content` is required")),
        };
        let filename = a.filename.ok_or_else(|| bad("`filename` is required"))?;
        if filename.is_empty() || filename.chars().any(char::is_control) {
            return Err(bad("invalid `filename`"));
        }
        let content_type = a
            .content_type
            .unwrap_or_else(|| content_type_for(&filename).to_string());
        let ct_ok = content_type.split_once('/').is_some_and(|(t, s)| {
            !t.is_empty()
                && !s.is_empty()
                && content_type
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"/.+-_".contains(&b))
        });
        if !ct_ok {
            return Err(bad("invalid `content_type`"));
        }
        if let Some(cid) = &a.content_id
            && (cid.is_empty()
                || !cid
                    .bytes()
                    .all(|b| b.is_ascii_graphic() && b != b'<' && b != b'>'))
        {
            return Err(bad("invalid `content_id`"));
        }
        attachments.push(Attachment {
            filename,
            content_type,
            content_id: a.content_id,
            bytes,
        });
    }
    for t in e.tags.unwrap_or_default() {
        let ok = |s: &str| {
            !s.is_empty()
                && s.len() <= 256
                && s.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
        };
        if !ok(&t.name) || !ok(&t.value) {
            return Err(ApiError::invalid(
                "Invalid `tags` field: names and values are ASCII letters, numbers, underscores or dashes",
            ));
        }
    }
    Ok(Prepared {
        from,
        to,
        cc,
        reply_to,
        recipients,
        subject,
        html: e.html,
        text: e.text,
        headers,
        attachments,
    })
}

/// A content type from the file name, for attachments that give none.
fn content_type_for(filename: &str) -> &'static str {
    let ext = filename
        .rsplit_once('.')
        .map(|(_, e)| e.to_ascii_lowercase())
        .unwrap_or_default();
    match ext.as_str() {
        "pdf" => "application/pdf",
        "txt" => "text/plain",
        "csv" => "text/csv",
        "html" | "htm" => "text/html",
        "png" => "image/png",
        "jpg" | "jpeg" => "image/jpeg",
        "gif" => "image/gif",
        "svg" => "image/svg+xml",
        "ics" => "text/calendar",
        "json" => "application/json",
        "zip" => "application/zip",
        _ => "application/octet-stream",
    }
}

/// The MIME message, built by mail-builder (Date added by it; Message-ID ours).
fn build(p: &Prepared, hostname: &str) -> Result<Vec<u8>, ApiError> {
    let domain = if hostname.contains('.') {
        hostname.to_string()
    } else {
        sender::address_domain(&p.from.address).unwrap_or_else(|| "localhost".into())
    };
    let message_id = format!(
        "{}.{}@{domain}",
        crate::queue::now_ms(),
        crate::policy::tokens::short_id("")
    );
    let mut b = MessageBuilder::new()
        .from(p.from.to_address())
        .to(Address::new_list(
            p.to.iter().map(Mailbox::to_address).collect(),
        ))
        .subject(p.subject.clone())
        .message_id(message_id);
    if !p.cc.is_empty() {
        b = b.cc(Address::new_list(
            p.cc.iter().map(Mailbox::to_address).collect(),
        ));
    }
    if !p.reply_to.is_empty() {
        b = b.reply_to(Address::new_list(
            p.reply_to.iter().map(Mailbox::to_address).collect(),
        ));
    }
    for (name, value) in &p.headers {
        b = b.header(
            name.clone(),
            mail_builder::headers::text::Text::new(value.clone()),
        );
    }
    if let Some(text) = &p.text {
        b = b.text_body(text.clone());
    }
    if let Some(html) = &p.html {
        b = b.html_body(html.clone());
    }
    for a in &p.attachments {
        b = match &a.content_id {
            Some(cid) => b.inline(a.content_type.clone(), cid.clone(), a.bytes.clone()),
            None => b.attachment(a.content_type.clone(), a.filename.clone(), a.bytes.clone()),
        };
    }
    b.write_to_vec().map_err(|e| {
        tracing::error!(error = %e, "cannot build a message");
        ApiError::internal()
    })
}

/// An authenticated request: the project, its limits, the registry generation it was read at.
struct Caller {
    auth: Authenticated,
    generation: u64,
    quota: ProjectSession,
}

async fn authenticate(
    shared: &Arc<Shared>,
    peer: std::net::SocketAddr,
    headers: &HeaderMap,
) -> Result<Caller, ApiError> {
    let ip = peer.ip();
    if let Some(left) = shared.throttle.login_cooling_down(ip, THROTTLE_USER) {
        return Err(ApiError::new(
            StatusCode::TOO_MANY_REQUESTS,
            "rate_limit_exceeded",
            "Too many failed API keys from your address, try later",
        )
        .retry(left.as_secs()));
    }
    let token = match crate::http_listener::bearer_token(headers) {
        Some(t) if !t.is_empty() => t.to_string(),
        _ => {
            return Err(ApiError::new(
                StatusCode::UNAUTHORIZED,
                "missing_api_key",
                "Missing API key in the authorization header.",
            ));
        }
    };
    let answer_at = tokio::time::Instant::now() + shared.throttle.auth_failure_delay();
    let generation = shared.registry.generation();
    let registry = shared.registry.clone();
    let found = tokio::task::spawn_blocking(move || registry.authenticate_token(&token)).await;
    let auth = match found {
        Ok(Ok(Some(auth))) => auth,
        Ok(Ok(None)) => {
            shared.throttle.auth_failed(ip, THROTTLE_USER);
            tracing::warn!(client = %peer, "send API: invalid token");
            tokio::time::sleep_until(answer_at).await;
            return Err(ApiError::new(
                StatusCode::FORBIDDEN,
                "invalid_api_key",
                "API key is invalid",
            ));
        }
        Ok(Err(e)) => {
            tracing::error!(client = %peer, error = %e, "send API: registry unavailable");
            return Err(ApiError::internal());
        }
        Err(e) => {
            tracing::error!(client = %peer, error = %e, "send API: token check failed");
            return Err(ApiError::internal());
        }
    };
    let quota = match shared.limiter.open_session_shared(&auth.project.id).await {
        Ok(q) => q,
        Err(LimitsError::TooManySessions { project, max }) => {
            tracing::warn!(client = %peer, project = %project, max, "too many sessions for project");
            crate::metrics::rate_limit_hit(&project);
            return Err(ApiError::new(
                StatusCode::TOO_MANY_REQUESTS,
                "rate_limit_exceeded",
                format!("Too many concurrent connections for project {project}, try later"),
            )
            .retry(1));
        }
        Err(e) => {
            tracing::error!(client = %peer, error = %e, "rate limits unavailable");
            return Err(ApiError::internal());
        }
    };
    tracing::debug!(client = %peer, project = %auth.project.id, token = %auth.token_id, "send API authenticated");
    Ok(Caller {
        auth,
        generation,
        quota,
    })
}

/// Reads the body: the project's size limit, allowing for base64 and JSON around it.
async fn read_body(body: Body, max_size: usize) -> Result<axum::body::Bytes, ApiError> {
    let limit = max_size.saturating_mul(2).saturating_add(64 * 1024);
    axum::body::to_bytes(body, limit).await.map_err(|_| {
        ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "content_too_large",
            format!("Request body too large: the limit is {limit} bytes"),
        )
    })
}

fn parse_json<T: for<'a> Deserialize<'a>>(bytes: &[u8]) -> Result<T, ApiError> {
    serde_json::from_slice(bytes).map_err(|e| {
        ApiError::invalid(format!(
            "Invalid request body: {}",
            crate::inbound::reply::printable(&e.to_string())
        ))
    })
}

/// Checks, builds and submits one prepared email; the queue id on success.
async fn send_prepared(
    shared: &Shared,
    tls: bool,
    caller: &mut Caller,
    peer: std::net::SocketAddr,
    p: &Prepared,
    idempotency: Option<KeyCompletion<'_>>,
) -> Result<String, ApiError> {
    let max_size = caller.quota.effective.message.max_size;
    let max_age_secs = caller
        .auth
        .project
        .max_age_secs
        .unwrap_or(shared.config.queue.max_age_secs);
    let rate = RateCheck {
        limiter: &shared.limiter,
        quota: Some(&caller.quota),
        peer,
        max_age_secs,
    };
    // Before building anything: an app over its limit learns it cheaply.
    rate.check_message(p.recipients.len())
        .and_then(|()| rate.check_recipients(p.recipients.len()))
        .map_err(|e| ApiError::from(&e))?;
    let message = build(p, &shared.config.server.hostname)?;
    if message.len() > max_size {
        return Err(ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "content_too_large",
            format!(
                "Message size {} exceeds the limit of {max_size} bytes",
                message.len()
            ),
        ));
    }
    let memory = shared
        .memory
        .reserve(message.len(), shared.config.data_timeout())
        .await
        .map_err(|e| {
            tracing::warn!(client = %peer, project = %caller.auth.project.id, error = %e, "large message refused");
            ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "application_error",
                "Too many large messages in progress, try again later",
            )
            .retry(10)
        })?;
    let helo = match peer.ip() {
        std::net::IpAddr::V4(ip) => format!("[{ip}]"),
        std::net::IpAddr::V6(ip) => format!("[IPv6:{ip}]"),
    };
    let mail_params = MailParams {
        smtputf8: !p.from.address.is_ascii() || p.recipients.iter().any(|r| !r.is_ascii()),
        ..MailParams::default()
    };
    let result = submit::submit(
        Submitter {
            shared,
            auth: &mut caller.auth,
            registry_generation: &mut caller.generation,
            quota: Some(&caller.quota),
            peer,
            helo: &helo,
            tls,
        },
        Submission {
            mail_from: p.from.address.clone(),
            mail_params,
            rcpt_params: vec![RcptParams::default(); p.recipients.len()],
            recipients: p.recipients.clone(),
            message,
            memory,
            idempotency,
        },
    )
    .await;
    match result {
        Ok(accepted) => Ok(accepted.id),
        Err(e) => {
            let r = crate::inbound::reply::Reply::from(&e);
            crate::metrics::rejected(&caller.auth.project.id, &r);
            Err(ApiError::from(&e))
        }
    }
}

/// A suppressed recipient refuses the whole email (SMTP refuses only its RCPT, but an HTTP
/// request is one message: sending it to the others while dropping one silently would hide
/// the refusal). 422 like Resend's other per-address validation errors; 403 is for what the
/// key may not do, which this is not.
async fn check_suppressed(shared: &Shared, caller: &Caller, p: &Prepared) -> Result<(), ApiError> {
    for r in &p.recipients {
        if let Some(text) = shared.suppression.refuse(&caller.auth.project.id, r).await {
            return Err(ApiError::invalid(
                text.trim_start_matches("5.1.1 ").to_string(),
            ));
        }
    }
    Ok(())
}

/// The envelope sender must be one of the project's domains (Resend: 403 for an
/// unverified domain).
fn check_sender(caller: &Caller, p: &Prepared) -> Result<(), ApiError> {
    sender::check_envelope_sender(&caller.auth.project, &p.from.address).map_err(|_| {
        ApiError::new(
            StatusCode::FORBIDDEN,
            "validation_error",
            format!(
                "The {} domain is not verified for this project.",
                sender::address_domain(&p.from.address).unwrap_or_default()
            ),
        )
    })
}

fn peer_of(req: &Request) -> std::net::SocketAddr {
    req.extensions()
        .get::<ClientAddr>()
        .map(|c| c.0)
        .unwrap_or_else(|| std::net::SocketAddr::from(([127, 0, 0, 1], 0)))
}

/// The request's `Idempotency-Key` header, if any (checked by `check_or_reserve`).
fn idempotency_key(headers: &HeaderMap) -> Result<Option<String>, ApiError> {
    match headers.get("idempotency-key") {
        None => Ok(None),
        Some(v) => v
            .to_str()
            .map(|s| Some(s.to_string()))
            .map_err(|_| ApiError::from(KeyRefusal::Invalid)),
    }
}

/// What a request with an idempotency key may do: go ahead holding the key, or answer at once.
enum KeyHold {
    None,
    Held(Reservation),
    Answer(Outcome),
}

/// Looks the key up for the caller's project, with the request's path and body as what must
/// match for a retry to be "the same request".
async fn hold_key(
    shared: &Shared,
    caller: &Caller,
    key: Option<String>,
    path: &str,
    body: &[u8],
) -> Result<KeyHold, ApiError> {
    let Some(key) = key else {
        return Ok(KeyHold::None);
    };
    let checked = shared
        .idempotency
        .check_or_reserve_shared(
            &caller.auth.project.id,
            &key,
            Fingerprint::of(&[path.as_bytes(), body]),
            shared.config.idempotency.window_secs,
            crate::queue::now_ms(),
        )
        .await;
    match checked {
        Ok(Check::Fresh(r)) => Ok(KeyHold::Held(r)),
        Ok(Check::Replay(o)) => {
            tracing::info!(project = %caller.auth.project.id, ids = ?o.ids, "send API: idempotency key repeated, first response replayed");
            Ok(KeyHold::Answer(o))
        }
        Ok(Check::Mismatch) => Err(ApiError::from(KeyRefusal::Mismatch)),
        Ok(Check::InFlight) => Err(ApiError::from(KeyRefusal::InFlight)),
        Err(IdempotencyError::InvalidKey) => Err(ApiError::from(KeyRefusal::Invalid)),
        Err(IdempotencyError::Store(e)) => {
            tracing::error!(error = %e, "idempotency keys unavailable");
            Err(ApiError::internal())
        }
    }
}

/// The response an outcome stands for (first answer and replays alike).
fn outcome_json(o: &Outcome) -> serde_json::Value {
    if !o.batch {
        return json!({ "id": o.ids.first() });
    }
    let data: Vec<_> = o.ids.iter().map(|id| json!({ "id": id })).collect();
    match &o.errors {
        Some(errors) => json!({ "data": data, "errors": errors }),
        None => json!({ "data": data }),
    }
}

async fn send_one(State(state): State<ApiState>, req: Request) -> Response {
    let shared = state.shared.borrow().clone();
    let peer = peer_of(&req);
    let result = async {
        let mut caller = authenticate(&shared, peer, req.headers()).await?;
        let key = idempotency_key(req.headers())?;
        let max_size = caller.quota.effective.message.max_size;
        let body = read_body(req.into_body(), max_size).await?;
        let held = match hold_key(&shared, &caller, key, "/emails", &body).await? {
            KeyHold::Answer(o) => return Ok(outcome_json(&o)),
            KeyHold::Held(r) => Some(r),
            KeyHold::None => None,
        };
        let email: EmailIn = parse_json(&body)?;
        let p = prepare(email, &shared, caller.quota.effective.max_recipients())?;
        check_sender(&caller, &p)?;
        check_suppressed(&shared, &caller, &p).await?;
        let completion = held.as_ref().map(|r| KeyCompletion {
            reservation: r,
            earlier: &[],
            batch: false,
        });
        let id = send_prepared(&shared, state.tls, &mut caller, peer, &p, completion).await?;
        Ok::<_, ApiError>(json!({ "id": id }))
    }
    .await;
    match result {
        Ok(body) => axum::Json(body).into_response(),
        Err(e) => e.into_response(),
    }
}

async fn send_batch(State(state): State<ApiState>, req: Request) -> Response {
    let shared = state.shared.borrow().clone();
    let peer = peer_of(&req);
    let result = async {
        let mut caller = authenticate(&shared, peer, req.headers()).await?;
        let key = idempotency_key(req.headers())?;
        let max_size = caller.quota.effective.message.max_size;
        let body = read_body(req.into_body(), max_size).await?;
        let held = match hold_key(&shared, &caller, key, "/emails/batch", &body).await? {
            KeyHold::Answer(o) => return Ok(outcome_json(&o)),
            KeyHold::Held(r) => Some(r),
            KeyHold::None => None,
        };
        let emails: Vec<EmailIn> = parse_json(&body)?;
        if emails.is_empty() || emails.len() > MAX_BATCH {
            return Err(ApiError::invalid(format!(
                "A batch holds 1 to {MAX_BATCH} emails, not {}",
                emails.len()
            )));
        }
        // Every email is checked before the first is queued.
        let mut prepared = Vec::with_capacity(emails.len());
        for (i, e) in emails.into_iter().enumerate() {
            let p = prepare(e, &shared, caller.quota.effective.max_recipients())
                .and_then(|p| check_sender(&caller, &p).map(|()| p))
                .map_err(|mut err| {
                    err.message = format!("emails[{i}]: {}", err.message);
                    err
                })?;
            check_suppressed(&shared, &caller, &p)
                .await
                .map_err(|mut err| {
                    err.message = format!("emails[{i}]: {}", err.message);
                    err
                })?;
            prepared.push(p);
        }
        let mut ids: Vec<String> = Vec::new();
        let last = prepared.len() - 1;
        for (i, p) in prepared.iter().enumerate() {
            // The key is recorded in the commit of the batch's last message.
            let completion = held.as_ref().filter(|_| i == last).map(|r| KeyCompletion {
                reservation: r,
                earlier: &ids,
                batch: true,
            });
            match send_prepared(&shared, state.tls, &mut caller, peer, p, completion).await {
                Ok(id) => ids.push(id),
                Err(mut err) if ids.is_empty() => {
                    err.message = format!("emails[{i}]: {}", err.message);
                    return Err(err);
                }
                // Some are queued already: say which were not (Resend's permissive shape).
                Err(err) => {
                    let errors: Vec<_> = (i..prepared.len())
                        .map(|j| {
                            let message = if j == i {
                                err.message.clone()
                            } else {
                                "not attempted after an earlier refusal".to_string()
                            };
                            json!({ "index": j, "message": message })
                        })
                        .collect();
                    let outcome = Outcome {
                        ids,
                        batch: true,
                        errors: Some(serde_json::Value::Array(errors)),
                    };
                    // A retry must not queue the first ones again: the partial answer is
                    // the request's answer.
                    if let Some(r) = &held
                        && let Err(e) = shared
                            .idempotency
                            .complete_durably(r, &outcome, crate::queue::now_ms())
                            .await
                    {
                        tracing::error!(error = %e, "cannot record an idempotency key");
                    }
                    return Ok(outcome_json(&outcome));
                }
            }
        }
        Ok::<_, ApiError>(outcome_json(&Outcome {
            ids,
            batch: true,
            errors: None,
        }))
    }
    .await;
    match result {
        Ok(body) => axum::Json(body).into_response(),
        Err(e) => e.into_response(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mailboxes_parse() {
        let m = Mailbox::parse("from", "Acme <no-reply@acme.test>").unwrap();
        assert_eq!(m.name.as_deref(), Some("Acme"));
        assert_eq!(m.address, "no-reply@acme.test");
        let m = Mailbox::parse("from", "\"Acme, Inc\" <a@acme.test>").unwrap();
        assert_eq!(m.name.as_deref(), Some("Acme, Inc"));
        assert!(Mailbox::parse("to", "a@acme.test").unwrap().name.is_none());
        for bad in [
            "",
            "acme",
            "<>",
            "a b@acme.test",
            "a@acme.test\r\nBcc: x@y.test",
            "x <a@>",
        ] {
            assert!(Mailbox::parse("to", bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn key_in_flight_is_resends_conflict() {
        let e = ApiError::from(KeyRefusal::InFlight);
        assert_eq!(e.status, StatusCode::CONFLICT);
        assert_eq!(e.name, "concurrent_idempotent_requests");
        let e = ApiError::from(KeyRefusal::Mismatch);
        assert_eq!(e.status, StatusCode::CONFLICT);
        assert_eq!(e.name, "invalid_idempotent_request");
    }

    #[test]
    fn content_types_from_names() {
        assert_eq!(content_type_for("invoice.PDF"), "application/pdf");
        assert_eq!(content_type_for("noext"), "application/octet-stream");
    }
}
