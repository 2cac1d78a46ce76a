//! Errors of the copy engine, named after what failed, with a coarse [`ErrorKind`] that the
//! CLI and the controller turn into exit messages and condition reasons.

use oci_client::errors::{OciDistributionError, OciErrorCode};

/// What went wrong, in the categories a user acts on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ErrorKind {
    /// The request itself is wrong: a malformed reference, platform or credentials file.
    InvalidInput,
    /// A registry rejected the credentials, or gave none the needed access.
    Authentication,
    /// The source image, or something it refers to, does not exist.
    NotFound,
    /// Content did not match its digest.
    DigestMismatch,
    /// The manifest format is not supported (Docker schema 1, unknown media types).
    Unsupported,
    /// Any other registry or network failure.
    Registry,
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("invalid image reference {reference:?}: {reason}")]
    InvalidReference { reference: String, reason: String },

    #[error("invalid platform {platform:?}: {reason}")]
    InvalidPlatform { platform: String, reason: String },

    #[error("invalid credentials in {origin}: {reason}")]
    InvalidCredentials { origin: String, reason: String },

    #[error("target {reference} must name a tag, such as {reference}:latest")]
    TargetWithoutTag { reference: String },

    #[error(
        "source {reference} has no platform {platform}; it has {}",
        if available.is_empty() { "none".to_string() } else { available.join(", ") }
    )]
    PlatformNotFound {
        reference: String,
        platform: String,
        available: Vec<String>,
    },

    #[error("a platform filter needs an index, but source {reference} is a single-platform image")]
    FilterOnSingleImage { reference: String },

    #[error("manifest {reference} is {size} bytes, more than the 4 MiB limit")]
    ManifestTooLarge { reference: String, size: usize },

    #[error("manifest {reference} is invalid: {reason}")]
    InvalidManifest { reference: String, reason: String },

    #[error("manifest {reference} has unsupported type {media_type}")]
    UnsupportedManifest {
        reference: String,
        media_type: String,
    },

    #[error("index {reference} nests indexes deeper than {limit} levels")]
    NestingTooDeep { reference: String, limit: usize },

    #[error("{reference} not found")]
    NotFound { reference: String },

    #[error("authentication to {registry} failed while trying to {action}")]
    Authentication {
        registry: String,
        action: &'static str,
        #[source]
        source: Option<OciDistributionError>,
    },

    #[error("digest mismatch for {reference}: expected {expected}, got {actual}")]
    DigestMismatch {
        reference: String,
        expected: String,
        actual: String,
    },

    #[error("failed to {action} {reference}")]
    Registry {
        action: &'static str,
        reference: String,
        #[source]
        source: OciDistributionError,
    },

    #[error("target registry rejected {what} {reference}: {reason}")]
    Rejected {
        what: &'static str,
        reference: String,
        reason: String,
    },

    #[error("failed to {action} {reference}")]
    Http {
        action: &'static str,
        reference: String,
        #[source]
        source: reqwest::Error,
    },
}

impl Error {
    pub fn kind(&self) -> ErrorKind {
        match self {
            Error::InvalidReference { .. }
            | Error::InvalidPlatform { .. }
            | Error::InvalidCredentials { .. }
            | Error::TargetWithoutTag { .. }
            | Error::PlatformNotFound { .. }
            | Error::FilterOnSingleImage { .. } => ErrorKind::InvalidInput,
            Error::ManifestTooLarge { .. }
            | Error::InvalidManifest { .. }
            | Error::UnsupportedManifest { .. }
            | Error::NestingTooDeep { .. } => ErrorKind::Unsupported,
            Error::NotFound { .. } => ErrorKind::NotFound,
            Error::Authentication { .. } => ErrorKind::Authentication,
            Error::DigestMismatch { .. } => ErrorKind::DigestMismatch,
            Error::Registry { .. } | Error::Rejected { .. } | Error::Http { .. } => {
                ErrorKind::Registry
            }
        }
    }

    /// True when trying the same request again may succeed: network failures, timeouts, 5xx
    /// and 429 answers.
    pub fn is_retryable(&self) -> bool {
        match self {
            Error::Registry { source, .. } => is_transient(source),
            Error::Http { source, .. } => {
                source.is_timeout() || source.is_connect() || source.is_request()
            }
            _ => false,
        }
    }

    /// Classifies an oci-client error from `action` on `reference` at `registry`.
    pub fn from_oci(
        action: &'static str,
        registry: &str,
        reference: &str,
        source: OciDistributionError,
    ) -> Error {
        if is_authentication(&source) {
            return Error::Authentication {
                registry: registry.to_string(),
                action,
                source: Some(source),
            };
        }
        if is_not_found(&source) {
            return Error::NotFound {
                reference: reference.to_string(),
            };
        }
        if let OciDistributionError::DigestError(digest_error) = &source {
            return Error::DigestMismatch {
                reference: reference.to_string(),
                expected: String::new(),
                actual: digest_error.to_string(),
            };
        }
        Error::Registry {
            action,
            reference: reference.to_string(),
            source,
        }
    }
}

fn is_authentication(error: &OciDistributionError) -> bool {
    match error {
        OciDistributionError::AuthenticationFailure(_)
        | OciDistributionError::UnauthorizedError { .. } => true,
        OciDistributionError::ServerError { code, .. } => *code == 401 || *code == 403,
        OciDistributionError::RegistryError { envelope, .. } => envelope
            .errors
            .iter()
            .any(|e| matches!(e.code, OciErrorCode::Unauthorized | OciErrorCode::Denied)),
        OciDistributionError::RequestError(request) => request
            .status()
            .is_some_and(|s| s.as_u16() == 401 || s.as_u16() == 403),
        _ => false,
    }
}

fn is_not_found(error: &OciDistributionError) -> bool {
    match error {
        OciDistributionError::ImageManifestNotFoundError(_) => true,
        OciDistributionError::ServerError { code, .. } => *code == 404,
        OciDistributionError::RegistryError { envelope, .. } => envelope.errors.iter().any(|e| {
            matches!(
                e.code,
                OciErrorCode::ManifestUnknown
                    | OciErrorCode::NameUnknown
                    | OciErrorCode::BlobUnknown
            )
        }),
        OciDistributionError::RequestError(request) => {
            request.status().is_some_and(|s| s.as_u16() == 404)
        }
        _ => false,
    }
}

fn is_transient(error: &OciDistributionError) -> bool {
    match error {
        OciDistributionError::RequestError(request) => {
            request.is_timeout()
                || request.is_connect()
                || request.is_body()
                || request.is_request()
                || request
                    .status()
                    .is_some_and(|s| s.is_server_error() || s.as_u16() == 429)
        }
        OciDistributionError::ServerError { code, .. } => *code >= 500 || *code == 429,
        OciDistributionError::RegistryError { envelope, .. } => envelope
            .errors
            .iter()
            .any(|e| matches!(e.code, OciErrorCode::Toomanyrequests)),
        OciDistributionError::IoError(_) => true,
        _ => false,
    }
}
