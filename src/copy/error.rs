//! Errors of the copy engine, named after what failed, with a coarse [`ErrorKind`] that the
//! CLI and the controller turn into exit messages and condition reasons.

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

    #[error("target {reference} must name a tag, as in REGISTRY/REPOSITORY:TAG")]
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

    #[error("manifest {reference} is {size} bytes or more, above the 4 MiB limit")]
    ManifestTooLarge { reference: String, size: u64 },

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
        source: Option<Failure>,
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
        source: Failure,
    },

    #[error("target registry rejected {what} {reference}: {reason}")]
    Rejected {
        what: String,
        reference: String,
        reason: String,
    },

    #[error(
        "target registry rejected tag {reference}, which points to {existing}: {reason}; the \
         tag may be immutable, and it was left unchanged"
    )]
    TagNotMoved {
        reference: String,
        existing: String,
        reason: String,
    },
}

/// The cause of a failed registry request, below the level of the copy step that sent it. Its text
/// never contains URLs, which may carry upload state or signed parameters.
#[derive(Debug, thiserror::Error)]
pub enum Failure {
    /// The registry returned an error status.
    #[error("HTTP {status}: {summary}")]
    Status {
        status: reqwest::StatusCode,
        /// The first error code of a JSON error body, such as `MANIFEST_INVALID`.
        code: Option<String>,
        /// The error code and message, or the start of a body that is not JSON.
        summary: String,
    },

    /// The request got no response: connection, TLS or timeout failure.
    #[error("{}", network_summary(.0))]
    Network(#[source] reqwest::Error),

    /// The connection broke while the response body was being read.
    #[error("the connection broke while reading the response")]
    Interrupted(#[source] reqwest::Error),

    /// The token server did not issue a token.
    #[error("token request failed")]
    Token(#[source] Box<Failure>),

    /// The source's side of a blob stream failed while the blob was being sent.
    #[error("{0}")]
    SourceStream(String),

    /// The registry returned 401 to a token that it had accepted before. The token is
    /// dropped, so the next attempt requests a new one.
    #[error("the registry no longer accepts the access token")]
    TokenExpired,

    /// The registry requested a wait longer than the engine accepts.
    #[error("the registry requested a wait of {} s before the next request, more than the {} s limit", .0.as_secs(), super::gate::MAX_WAIT.as_secs())]
    RateLimited(std::time::Duration),

    /// The response broke the distribution protocol, for example a missing `Location`.
    #[error("{0}")]
    Protocol(String),
}

/// Returns the advice for a TLS failure that retrying the same request cannot fix.
fn tls_problem(error: &reqwest::Error) -> Option<&'static str> {
    let mut chain = String::new();
    let mut source: Option<&dyn std::error::Error> = Some(error);
    while let Some(cause) = source {
        chain.push_str(&cause.to_string());
        source = cause.source();
    }
    if chain.contains("InvalidContentType") || chain.contains("corrupt message") {
        return Some(
            "TLS handshake failed, as if the registry speaks plain HTTP; \
             if it does, allow its host with --plain-http",
        );
    }
    if chain.contains("invalid peer certificate") || chain.contains("UnknownIssuer") {
        return Some(
            "the registry's TLS certificate is not trusted; \
             add its CA with --ca-file, or skip verification for its host with --insecure-tls",
        );
    }
    None
}

/// Says what kind of network failure happened. The reqwest error follows as the cause.
fn network_summary(error: &reqwest::Error) -> &'static str {
    if let Some(problem) = tls_problem(error) {
        problem
    } else if error.is_timeout() {
        "the request timed out"
    } else if error.is_connect() {
        "connecting to the registry failed"
    } else {
        "the request failed"
    }
}

impl Failure {
    /// Wraps a reqwest error, dropping its URL.
    pub fn network(error: reqwest::Error) -> Failure {
        Failure::Network(error.without_url())
    }

    /// Returns the HTTP status of an error response.
    pub fn status(&self) -> Option<u16> {
        match self {
            Failure::Status { status, .. } => Some(status.as_u16()),
            _ => None,
        }
    }

    /// Returns the error code of an error response, such as `MANIFEST_UNKNOWN`.
    pub fn code(&self) -> Option<&str> {
        match self {
            Failure::Status { code, .. } => code.as_deref(),
            _ => None,
        }
    }

    /// True when the same request may succeed later: network failures, 408, 429 and 5xx.
    pub fn is_transient(&self) -> bool {
        match self {
            Failure::Status { status, .. } => {
                status.is_server_error() || matches!(status.as_u16(), 408 | 429)
            }
            Failure::Network(error) => {
                !error.is_builder() && !error.is_redirect() && tls_problem(error).is_none()
            }
            Failure::Interrupted(_) | Failure::SourceStream(_) | Failure::TokenExpired => true,
            Failure::Token(inner) => inner.is_transient(),
            Failure::RateLimited(_) | Failure::Protocol(_) => false,
        }
    }
}

/// Error codes that registries use for denied access, whatever the HTTP status.
const ACCESS_CODES: [&str; 2] = ["UNAUTHORIZED", "DENIED"];

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
            Error::Registry { .. } | Error::Rejected { .. } | Error::TagNotMoved { .. } => {
                ErrorKind::Registry
            }
        }
    }

    /// Returns the HTTP status of the registry response behind this error, if there was one.
    pub fn status(&self) -> Option<u16> {
        match self {
            Error::Registry { source, .. } => source.status(),
            Error::Authentication {
                source: Some(source),
                ..
            } => source.status(),
            _ => None,
        }
    }

    /// True when trying the same request again may succeed: network failures, timeouts, 5xx
    /// and 429 responses.
    pub fn is_retryable(&self) -> bool {
        match self {
            Error::Registry { source, .. } => source.is_transient(),
            _ => false,
        }
    }

    /// Classifies a failed request of `action` on `reference` at `registry`. Access
    /// failures are never reported as "not found": a 404 whose body has the code `DENIED` or
    /// `UNAUTHORIZED` is an authentication error.
    pub fn from_failure(
        action: &'static str,
        registry: &str,
        reference: &str,
        failure: Failure,
    ) -> Error {
        if let Failure::Token(inner) = &failure
            && !inner.is_transient()
        {
            return Error::Authentication {
                registry: registry.to_string(),
                action,
                source: Some(failure),
            };
        }
        let code = failure.code().map(str::to_string);
        let access_code = code.as_deref().is_some_and(|c| ACCESS_CODES.contains(&c));
        match failure.status() {
            Some(401) => Error::Authentication {
                registry: registry.to_string(),
                action,
                source: Some(failure),
            },
            Some(403) | Some(404) if access_code => Error::Authentication {
                registry: registry.to_string(),
                action,
                source: Some(failure),
            },
            Some(403) if code.is_none() => Error::Authentication {
                registry: registry.to_string(),
                action,
                source: Some(failure),
            },
            Some(404) => Error::NotFound {
                reference: reference.to_string(),
            },
            _ => Error::Registry {
                action,
                reference: reference.to_string(),
                source: failure,
            },
        }
    }
}
