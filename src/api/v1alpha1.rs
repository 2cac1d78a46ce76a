//! `ImageCopy` in version `v1alpha1` of the group `pma2docker.io`.
//!
//! Field docs here become the CRD descriptions that `kubectl explain` shows, so they are
//! written for users. The schema rejects at admission what can be checked without a registry.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// Image reference accepted at admission: `[HOST[:PORT]/]PATH[:TAG][@sha256:HEX]`, lowercase
/// path. The controller parses it again with the full grammar.
const REFERENCE_PATTERN: &str = r"^([A-Za-z0-9][A-Za-z0-9.-]*(:[0-9]+)?/)?[a-z0-9]+([._-]+[a-z0-9]+)*(/[a-z0-9]+([._-]+[a-z0-9]+)*)*(:[A-Za-z0-9_][A-Za-z0-9_.-]{0,127})?(@sha256:[a-f0-9]{64})?$";

/// Target reference: as above, but the tag is required.
const TARGET_PATTERN: &str = r"^([A-Za-z0-9][A-Za-z0-9.-]*(:[0-9]+)?/)?[a-z0-9]+([._-]+[a-z0-9]+)*(/[a-z0-9]+([._-]+[a-z0-9]+)*)*:[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}(@sha256:[a-f0-9]{64})?$";

/// Platform string: `OS/ARCHITECTURE` or `OS/ARCHITECTURE/VARIANT`, where the OS may carry a
/// version in parentheses, as in `windows(10.0.20348.2227)/amd64`.
const PLATFORM_PATTERN: &str = r"^[a-z0-9_.]+(\([A-Za-z0-9_.-]+\))?/[a-z0-9_.]+(/[a-z0-9_.]+)?$";

/// Go-style duration such as `30m`, `1h` or `1h30m`.
const INTERVAL_PATTERN: &str = r"^([0-9]+(\.[0-9]+)?(ms|s|m|h))+$";

/// Copies a container image, with every platform of a multi-architecture index, from a
/// source to a target registry, keeping its digest unless a platform filter is set.
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "pma2docker.io",
    version = "v1alpha1",
    kind = "ImageCopy",
    namespaced,
    shortname = "imgcp",
    category = "pma2docker",
    status = "ImageCopyStatus",
    doc = "ImageCopy copies a multi-architecture container image from one registry to another, digest for digest.",
    printcolumn(name = "Source", type_ = "string", json_path = ".spec.source"),
    printcolumn(name = "Target", type_ = "string", json_path = ".spec.target"),
    printcolumn(name = "Ready", type_ = "string", json_path = ".status.conditions[?(@.type==\"Ready\")].status"),
    printcolumn(name = "Reason", type_ = "string", json_path = ".status.conditions[?(@.type==\"Ready\")].reason", priority = "1"),
    printcolumn(name = "Digest", type_ = "string", json_path = ".status.targetDigest"),
    printcolumn(name = "Last Sync", type_ = "date", json_path = ".status.lastSyncTime", priority = "1"),
    printcolumn(name = "Age", type_ = "date", json_path = ".metadata.creationTimestamp"),
    validation = Rule::new("self.spec.source != self.spec.target").message("spec.target must differ from spec.source"),
)]
#[serde(rename_all = "camelCase")]
pub struct ImageCopySpec {
    /// Image to copy: REGISTRY/REPOSITORY with a tag, a digest or both, for example
    /// `registry.example/team/app:1.4` or `registry.example/team/app@sha256:…`. A name
    /// without a registry means Docker Hub (`nginx` is `docker.io/library/nginx:latest`).
    #[schemars(length(min = 1, max = 512), regex(pattern = REFERENCE_PATTERN))]
    pub source: String,

    /// Target image: REGISTRY/REPOSITORY:TAG. The tag is required; it is written
    /// last, after every platform, manifest and layer is in place.
    #[schemars(length(min = 1, max = 512), regex(pattern = TARGET_PATTERN))]
    pub target: String,

    /// Platforms to copy, such as `linux/amd64`, `linux/arm/v7` or
    /// `windows(10.0.20348.2227)/amd64` (one Windows OS version). Empty copies every
    /// platform and keeps the source digest. A subset builds a new index whose digest
    /// differs; attestations of the kept platforms are copied with them. A platform the
    /// source lacks is an error.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(
        length(max = 64),
        inner(length(max = 64), regex(pattern = PLATFORM_PATTERN)),
        extend("x-kubernetes-list-type" = "set")
    )]
    pub platforms: Vec<String>,

    /// Secrets of type `kubernetes.io/dockerconfigjson` in this namespace, holding
    /// credentials for the source and target registries, matched by registry host. Without
    /// a match, the registry is accessed anonymously.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 16))]
    pub image_pull_secrets: Vec<SecretReference>,

    /// How often to check the source for a new digest and the target for drift, as a
    /// duration such as `30m` or `1h` (at least 30s). Without it, the image is copied when
    /// the spec or a referenced Secret changes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = INTERVAL_PATTERN))]
    #[x_kube(validation = Rule::new("duration(self) >= duration('30s')").message("interval must be at least 30s"))]
    pub interval: Option<String>,

    /// Stops copying while true. The status keeps the last result.
    #[serde(default)]
    pub suspend: bool,
}

/// A Secret in the same namespace as the ImageCopy.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
pub struct SecretReference {
    /// Name of the Secret.
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
}

/// The observed state of an ImageCopy.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ImageCopyStatus {
    /// The `metadata.generation` this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,

    /// Digest of the source image at the last successful copy.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source_digest: Option<String>,

    /// Digest the target tag points to after the last successful copy. It equals
    /// `sourceDigest` unless `indexRewritten` is true.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target_digest: Option<String>,

    /// True when a platform filter produced a new index, so the target digest differs.
    #[serde(default)]
    pub index_rewritten: bool,

    /// Each platform found at the target and its manifest digest.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub platforms: Vec<PlatformStatus>,

    /// When the target was last confirmed to match the source.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(with = "Option<String>")]
    pub last_sync_time: Option<Time>,

    /// Blobs and bytes of the last copy that sent anything.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_copy: Option<CopyStatistics>,

    /// `Ready` is True when the target tag points at the source image. Reasons: `Copied`,
    /// `Copying`, `Suspended`, `InvalidSpec`, `SecretNotFound`, `AuthenticationFailed`,
    /// `SourceNotFound`, `PlatformNotFound`, `DigestMismatch`, `UnsupportedManifest`,
    /// `RegistryError`, `RegistryNotAllowed`, `TargetConflict`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(schema_with = "crate::api::conditions::schema")]
    pub conditions: Vec<Condition>,
}

/// A platform of the copied image.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
pub struct PlatformStatus {
    /// OS/ARCHITECTURE[/VARIANT].
    pub platform: String,
    /// Digest of the platform's manifest.
    pub digest: String,
}

/// Counts from one copy.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct CopyStatistics {
    /// Blobs streamed from the source.
    #[schemars(with = "i64")]
    pub blobs_copied: u64,
    /// Blobs already in the target.
    #[schemars(with = "i64")]
    pub blobs_skipped: u64,
    /// Blobs linked from another repository of the target registry.
    #[schemars(with = "i64")]
    pub blobs_mounted: u64,
    /// Bytes sent to the target.
    #[schemars(with = "i64")]
    pub bytes: u64,
}
