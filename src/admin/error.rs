//! Why an admin operation was refused, as a kind the callers can act on.
//!
//! The CLI prints the message as it is; the HTTP API picks its status from the [`ErrorKind`]
//! (404, 409, 413, 422, …) and names the [`AdminError::field`] when one value was wrong. The
//! kind is decided where the error is made — each store's error type says which of its
//! variants is which ([`Classify`]) — so nothing downstream ever reads the wording.

use serde::{Deserialize, Serialize};

/// What kind of refusal; each maps to one HTTP status in `admin_http/api.rs`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorKind {
    /// The id (project, token, message, key, endpoint, …) does not exist.
    NotFound,
    /// The change collides with what exists (a duplicate, an active key, a last domain).
    Conflict,
    /// A value is not acceptable (named by `field` when known).
    Invalid,
    /// A value is over its size limit (a logo).
    TooLarge,
    /// The operation cannot run here or now (no delivery side, storage failing).
    Unavailable,
    /// It ran, and an upstream refused or could not be reached (send-test).
    Upstream,
    /// Anything else: a bug or a corrupt record.
    Internal,
}

impl ErrorKind {
    /// The short code the JSON API reports.
    pub fn code(self) -> &'static str {
        match self {
            ErrorKind::NotFound => "not_found",
            ErrorKind::Conflict => "conflict",
            ErrorKind::Invalid => "invalid",
            ErrorKind::TooLarge => "too_large",
            ErrorKind::Unavailable => "unavailable",
            ErrorKind::Upstream => "upstream",
            ErrorKind::Internal => "internal",
        }
    }
}

#[derive(Debug, Clone, thiserror::Error, Serialize, Deserialize)]
#[error("{message}")]
pub struct AdminError {
    pub kind: ErrorKind,
    /// The input field whose value was refused, when one was.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub field: Option<String>,
    pub message: String,
}

impl AdminError {
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> AdminError {
        AdminError {
            kind,
            field: None,
            message: message.into(),
        }
    }

    pub fn not_found(message: impl Into<String>) -> AdminError {
        AdminError::new(ErrorKind::NotFound, message)
    }

    pub fn conflict(message: impl Into<String>) -> AdminError {
        AdminError::new(ErrorKind::Conflict, message)
    }

    /// `field`'s value is refused.
    pub fn invalid(field: &str, message: impl Into<String>) -> AdminError {
        AdminError {
            kind: ErrorKind::Invalid,
            field: Some(field.to_string()),
            message: message.into(),
        }
    }

    pub fn unavailable(message: impl Into<String>) -> AdminError {
        AdminError::new(ErrorKind::Unavailable, message)
    }

    pub fn internal(message: impl Into<String>) -> AdminError {
        AdminError::new(ErrorKind::Internal, message)
    }
}

/// An error type that knows which of its variants is which kind (and which input field).
/// Implementations match every variant, with no `_` arm: a new variant must be classified.
pub trait Classify: std::fmt::Display {
    fn kind(&self) -> (ErrorKind, Option<&'static str>);
}

/// Any classified error as an [`AdminError`] (for `map_err`).
pub fn err<E: Classify>(e: E) -> AdminError {
    let (kind, field) = e.kind();
    AdminError {
        kind,
        field: field.map(str::to_string),
        message: e.to_string(),
    }
}

use ErrorKind::*;

impl Classify for crate::store::StoreError {
    fn kind(&self) -> (ErrorKind, Option<&'static str>) {
        use crate::store::StoreError as E;
        match self {
            E::Corrupt(_) => (Internal, None),
            _ => (Unavailable, None),
        }
    }
}

impl Classify for crate::policy::projects::RegistryError {
    fn kind(&self) -> (ErrorKind, Option<&'static str>) {
        use crate::policy::projects::RegistryError as E;
        match self {
            E::UnknownProject(_) | E::UnknownToken(..) => (NotFound, None),
            E::InvalidDomain(_) => (Invalid, Some("domain")),
            E::DuplicateDomain(..) => (Conflict, Some("domain")),
            E::EmptyName => (Invalid, Some("name")),
            E::Store(s) => s.kind(),
        }
    }
}

impl Classify for crate::policy::suppression::SuppressionError {
    fn kind(&self) -> (ErrorKind, Option<&'static str>) {
        use crate::policy::suppression::SuppressionError as E;
        match self {
            E::Store(s) => s.kind(),
            E::InvalidAddress(_) => (Invalid, Some("address")),
            E::NotFound(..) => (NotFound, None),
        }
    }
}

impl Classify for crate::queue::sandbox::SandboxError {
    fn kind(&self) -> (ErrorKind, Option<&'static str>) {
        use crate::queue::sandbox::SandboxError as E;
        match self {
            E::NotFound(_) => (NotFound, None),
            E::Queue(q) => q.kind(),
        }
    }
}

impl Classify for crate::cluster::ClusterError {
    fn kind(&self) -> (ErrorKind, Option<&'static str>) {
        use crate::cluster::ClusterError as E;
        match self {
            E::Config(_) => (Invalid, None),
            E::Unavailable(_) | E::WriteRefused(_) | E::Store(_) => (Unavailable, None),
            E::Sealed(_) => (Internal, None),
        }
    }
}

impl Classify for crate::queue::QueueError {
    fn kind(&self) -> (ErrorKind, Option<&'static str>) {
        use crate::queue::QueueError as E;
        match self {
            E::NotFound(_) => (NotFound, None),
            E::Store(s) => s.kind(),
            E::Spill(_) => (Unavailable, None),
        }
    }
}

impl Classify for crate::policy::limits::LimitsError {
    fn kind(&self) -> (ErrorKind, Option<&'static str>) {
        use crate::policy::limits::LimitsError as E;
        match self {
            E::Store(s) => s.kind(),
            E::Invalid(_) => (Invalid, Some("limits")),
            E::TooManySessions { .. } => (Conflict, None),
        }
    }
}

impl Classify for crate::policy::routes::RouteError {
    fn kind(&self) -> (ErrorKind, Option<&'static str>) {
        use crate::policy::routes::RouteError as E;
        match self {
            E::UnknownUpstream(..) => (Invalid, Some("upstream")),
            E::Store(s) => s.kind(),
        }
    }
}

impl Classify for crate::policy::admin_tokens::AdminTokenError {
    fn kind(&self) -> (ErrorKind, Option<&'static str>) {
        use crate::policy::admin_tokens::AdminTokenError as E;
        match self {
            E::Unknown(_) => (NotFound, None),
            E::BadRole(_) => (Invalid, Some("role")),
            E::EmptyLabel => (Invalid, Some("label")),
            E::Store(s) => s.kind(),
        }
    }
}

impl Classify for crate::transform::branding::SettingsError {
    fn kind(&self) -> (ErrorKind, Option<&'static str>) {
        use crate::transform::branding::SettingsError as E;
        match self {
            E::LogoTooLarge(_) => (TooLarge, Some("logo")),
            E::LogoSvg | E::LogoNotImage => (Invalid, Some("logo")),
            E::LogoConflict => (Conflict, Some("logo")),
            E::DisplayNameRequired => (Invalid, Some("display_name")),
            E::Invalid { field, .. } | E::Template { field, .. } => (Invalid, Some(field)),
            E::Corrupt(..) => (Internal, None),
            E::Store(s) => s.kind(),
        }
    }
}

impl Classify for crate::events::EventError {
    fn kind(&self) -> (ErrorKind, Option<&'static str>) {
        use crate::events::EventError as E;
        match self {
            E::Store(s) => s.kind(),
            E::UnknownKind(_) => (Invalid, Some("events")),
            E::Invalid(_) => (Invalid, None),
            E::NotFound(_) => (NotFound, None),
        }
    }
}

impl Classify for crate::transform::dkim_keys::DkimKeyError {
    fn kind(&self) -> (ErrorKind, Option<&'static str>) {
        use crate::transform::dkim_keys::DkimKeyError as E;
        match self {
            E::InvalidDomain(_) => (Invalid, Some("domain")),
            E::InvalidSelector(_) => (Invalid, Some("selector")),
            E::RsaBits(_) => (Invalid, Some("bits")),
            E::Exists { .. } => (Conflict, Some("selector")),
            E::Unknown { .. } => (NotFound, None),
            E::RemoveActive { .. } | E::RetirePending { .. } => (Conflict, None),
            E::BadKey(_) => (Invalid, Some("key")),
            E::Mismatch { .. } => (Conflict, None),
            E::Store(s) => s.kind(),
            E::Generate(_) | E::File { .. } | E::Seal { .. } => (Internal, None),
        }
    }
}

impl Classify for crate::outbound::send_test::SendTestError {
    fn kind(&self) -> (ErrorKind, Option<&'static str>) {
        use crate::outbound::send_test::SendTestError as E;
        match self {
            E::Invalid(_) => (Invalid, None),
            // The upstream refused or could not be reached: the operation ran; its answer is
            // the result, not a malformed request.
            E::Refused(_) => (Upstream, None),
        }
    }
}

impl Classify for crate::domain_check::resolver::DnsSetupError {
    fn kind(&self) -> (ErrorKind, Option<&'static str>) {
        (Unavailable, None)
    }
}

impl Classify for serde_json::Error {
    fn kind(&self) -> (ErrorKind, Option<&'static str>) {
        (Internal, None)
    }
}
