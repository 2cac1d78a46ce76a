//! Condition types, reasons and the helper that keeps `lastTransitionTime` stable.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use schemars::{Schema, SchemaGenerator, json_schema};

/// The summary condition type.
pub const READY: &str = "Ready";

/// Condition reasons, PascalCase as Kubernetes conventions ask.
pub mod reasons {
    pub const COPIED: &str = "Copied";
    pub const COPYING: &str = "Copying";
    pub const SUSPENDED: &str = "Suspended";
    pub const INVALID_SPEC: &str = "InvalidSpec";
    pub const SECRET_NOT_FOUND: &str = "SecretNotFound";
    pub const AUTHENTICATION_FAILED: &str = "AuthenticationFailed";
    pub const SOURCE_NOT_FOUND: &str = "SourceNotFound";
    pub const PLATFORM_NOT_FOUND: &str = "PlatformNotFound";
    pub const DIGEST_MISMATCH: &str = "DigestMismatch";
    pub const UNSUPPORTED_MANIFEST: &str = "UnsupportedManifest";
    pub const REGISTRY_ERROR: &str = "RegistryError";
    pub const REGISTRY_NOT_ALLOWED: &str = "RegistryNotAllowed";
    pub const INVALID_SECRET: &str = "InvalidSecret";
    pub const TARGET_CONFLICT: &str = "TargetConflict";
    pub const KUBERNETES_ERROR: &str = "KubernetesError";
}

/// Builds a condition, keeping the previous `lastTransitionTime` when the status did not
/// change, so the time marks the last flip rather than the last reconcile.
pub fn condition(
    previous: &[Condition],
    type_: &str,
    status: &str,
    reason: &str,
    message: String,
    generation: Option<i64>,
    now: Time,
) -> Condition {
    let last_transition_time = previous
        .iter()
        .find(|c| c.type_ == type_ && c.status == status)
        .map(|c| c.last_transition_time.clone())
        .unwrap_or(now);
    Condition {
        type_: type_.to_string(),
        status: status.to_string(),
        reason: reason.to_string(),
        message,
        observed_generation: generation,
        last_transition_time,
    }
}

/// Schema for `status.conditions`: the standard `metav1.Condition`, as a list keyed by type.
pub fn schema(_: &mut SchemaGenerator) -> Schema {
    json_schema!({
        "type": "array",
        "x-kubernetes-list-type": "map",
        "x-kubernetes-list-map-keys": ["type"],
        "items": {
            "type": "object",
            "required": ["type", "status", "lastTransitionTime", "reason", "message"],
            "properties": {
                "type": { "type": "string", "description": "Type of condition, such as Ready." },
                "status": {
                    "type": "string",
                    "enum": ["True", "False", "Unknown"],
                    "description": "Status of the condition: True, False or Unknown."
                },
                "reason": {
                    "type": "string",
                    "description": "PascalCase reason for the condition's last transition."
                },
                "message": { "type": "string", "description": "Human-readable details." },
                "observedGeneration": {
                    "type": "integer",
                    "format": "int64",
                    "description": "The metadata.generation the condition was set for."
                },
                "lastTransitionTime": {
                    "type": "string",
                    "format": "date-time",
                    "description": "When the status last changed."
                }
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::jiff::Timestamp;

    fn time(seconds: i64) -> Time {
        Time(Timestamp::from_second(seconds).unwrap())
    }

    #[test]
    fn transition_time_kept_when_status_same() {
        let first = condition(
            &[],
            READY,
            "True",
            reasons::COPIED,
            "a".into(),
            Some(1),
            time(10),
        );
        let again = condition(
            &[first],
            READY,
            "True",
            reasons::COPIED,
            "b".into(),
            Some(2),
            time(20),
        );
        assert_eq!(again.last_transition_time, time(10));
        assert_eq!(again.observed_generation, Some(2));
    }

    #[test]
    fn transition_time_moves_on_flip() {
        let first = condition(
            &[],
            READY,
            "True",
            reasons::COPIED,
            "a".into(),
            Some(1),
            time(10),
        );
        let flipped = condition(
            &[first],
            READY,
            "False",
            reasons::REGISTRY_ERROR,
            "b".into(),
            Some(1),
            time(20),
        );
        assert_eq!(flipped.last_transition_time, time(20));
    }
}
