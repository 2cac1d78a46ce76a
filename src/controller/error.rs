//! Errors of one reconcile, each mapped to a condition reason and a retry policy.

use crate::api::conditions::reasons;
use crate::copy::{self, ErrorKind};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("invalid spec: {message}")]
    InvalidSpec { message: String },

    #[error("Secret {name:?} not found in namespace {namespace:?}")]
    SecretNotFound { namespace: String, name: String },

    #[error("Secret {name:?} is not usable: {reason}")]
    InvalidSecret { name: String, reason: String },

    #[error("registry {host} is not allowed by the operator's registry policy")]
    RegistryNotAllowed { host: String },

    #[error(
        "target {target} is also written by ImageCopy {other}; only one ImageCopy may write a tag"
    )]
    TargetConflict { target: String, other: String },

    #[error("{0}")]
    Copy(#[source] copy::Error),

    #[error("the ImageCopy was deleted while it was reconciled")]
    Deleted,

    #[error("failed to {action}")]
    Kube {
        action: &'static str,
        #[source]
        source: kube::Error,
    },
}

impl Error {
    /// Returns the condition reason for this failure.
    pub fn reason(&self) -> &'static str {
        match self {
            Error::InvalidSpec { .. } => reasons::INVALID_SPEC,
            Error::SecretNotFound { .. } => reasons::SECRET_NOT_FOUND,
            Error::InvalidSecret { .. } => reasons::INVALID_SECRET,
            Error::RegistryNotAllowed { .. } => reasons::REGISTRY_NOT_ALLOWED,
            Error::TargetConflict { .. } => reasons::TARGET_CONFLICT,
            Error::Copy(error) => match error.kind() {
                ErrorKind::InvalidInput => match error {
                    copy::Error::PlatformNotFound { .. }
                    | copy::Error::FilterOnSingleImage { .. } => reasons::PLATFORM_NOT_FOUND,
                    _ => reasons::INVALID_SPEC,
                },
                ErrorKind::Authentication => reasons::AUTHENTICATION_FAILED,
                ErrorKind::NotFound => reasons::SOURCE_NOT_FOUND,
                ErrorKind::DigestMismatch => reasons::DIGEST_MISMATCH,
                ErrorKind::Unsupported => reasons::UNSUPPORTED_MANIFEST,
                ErrorKind::Registry => reasons::REGISTRY_ERROR,
            },
            Error::Kube { .. } | Error::Deleted => reasons::KUBERNETES_ERROR,
        }
    }

    /// True when retrying without a change to the object cannot help. Such failures wait for
    /// an edit of the ImageCopy, a change of a referenced Secret, or the next interval.
    pub fn is_permanent(&self) -> bool {
        match self {
            Error::InvalidSpec { .. } | Error::RegistryNotAllowed { .. } => true,
            Error::Copy(error) => {
                matches!(
                    error.kind(),
                    ErrorKind::InvalidInput | ErrorKind::Unsupported
                )
            }
            _ => false,
        }
    }

    /// Returns the message for status and Events: the error and its causes on one line.
    pub fn message(&self) -> String {
        let mut message = self.to_string();
        let mut source = std::error::Error::source(self);
        // `Copy` displays its inner error already, so start from the inner one's cause.
        if let Error::Copy(inner) = self {
            source = std::error::Error::source(inner);
        }
        while let Some(cause) = source {
            message.push_str(": ");
            message.push_str(&cause.to_string());
            source = cause.source();
        }
        message
    }
}
