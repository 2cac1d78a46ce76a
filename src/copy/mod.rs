//! The copy engine: copies an image index or manifest, every child manifest and every blob
//! from one registry to another, byte for byte.
//!
//! The flow is `fetch` (read the source tree) → `plan` (pure: platform filter, push order) →
//! `transfer` (blobs, child manifests, then the root by tag). The engine knows nothing of
//! Kubernetes; the CLI and the controller both drive it through [`copy_image`].
//!
//! Every registry request goes through `registry` and its HTTP `client`, which deal with the
//! ways registries differ from the distribution spec: bearer tokens and their renewal, rate
//! limits with `Retry-After` (one gate per host for the whole process), redirects to storage
//! hosts without credentials, odd upload locations, and single-PUT size limits (`upload`).

pub mod auth;
mod client;
pub mod digest;
pub mod error;
mod fetch;
mod gate;
pub mod manifest;
pub mod plan;
pub mod reference;
pub mod registry;
mod stream;
mod token;
mod transfer;
mod upload;

use serde::Serialize;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use tracing::{debug, info, instrument};

pub use auth::{Credential, DockerConfig};
pub use error::{Error, ErrorKind, Failure};
pub use plan::ForeignLayers;
pub use reference::{ImageRef, PlatformFilter};
pub use registry::ConnectOptions;
pub use upload::{DEFAULT_CHUNK_SIZE, UploadMode};

use fetch::Fetch;
use plan::{Content, Node};
use registry::{Access, Registry};
use transfer::Ends;

/// Default number of blob and manifest transfers in flight at once.
pub const DEFAULT_JOBS: usize = 4;

/// One copy to do.
#[derive(Clone, Debug)]
pub struct CopyRequest {
    pub source: ImageRef,
    pub target: ImageRef,
    /// Platforms to keep; empty keeps every entry and the source digest.
    pub platforms: Vec<PlatformFilter>,
    pub source_credential: Option<Credential>,
    pub target_credential: Option<Credential>,
    pub connect: ConnectOptions,
    /// Transfers in flight at once.
    pub jobs: usize,
    /// Walk every manifest and blob even when the target tag already has the expected digest.
    pub force: bool,
    /// Digests of an earlier successful copy with the same source, target and platforms.
    /// When the source and the target tag still resolve to them, the copy ends after two
    /// HEAD requests and reports `unchanged` with no platforms listed.
    pub previous: Option<PreviousCopy>,
    /// Upload mode for blobs: one streaming PUT (the default, falling back to chunks after a
    /// 413) or always in chunks.
    pub upload_mode: UploadMode,
    /// Bytes per PATCH of a chunked upload; it bounds the memory that one upload uses.
    pub chunk_size: usize,
    /// Whether non-distributable (foreign) layers are left out (the default) or copied.
    pub foreign_layers: ForeignLayers,
}

/// The digests an earlier copy left: the source digest and the digest of the target tag.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PreviousCopy {
    pub source_digest: String,
    pub target_digest: String,
}

impl CopyRequest {
    /// Creates a request with default options and no credentials.
    pub fn new(source: ImageRef, target: ImageRef) -> CopyRequest {
        CopyRequest {
            source,
            target,
            platforms: Vec::new(),
            source_credential: None,
            target_credential: None,
            connect: ConnectOptions::default(),
            jobs: DEFAULT_JOBS,
            force: false,
            previous: None,
            upload_mode: UploadMode::default(),
            chunk_size: DEFAULT_CHUNK_SIZE,
            foreign_layers: ForeignLayers::default(),
        }
    }
}

/// The outcome of a copy: digests, platforms and transfer counts.
#[derive(Clone, Debug, Default, Serialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct CopyReport {
    pub source: String,
    pub target: String,
    pub source_digest: String,
    pub target_digest: String,
    pub media_type: String,
    /// True when a platform filter made a new index, so the target digest differs.
    pub index_rewritten: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rewrite_reason: Option<String>,
    /// True when the target tag already had the expected digest and nothing was sent.
    pub unchanged: bool,
    pub platforms: Vec<PlatformDigest>,
    pub blobs: BlobCounts,
    pub manifests: ManifestCounts,
    /// Blob bytes sent to the target.
    pub bytes: u64,
}

/// One platform of the copied image and the digest of its manifest.
#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct PlatformDigest {
    pub platform: String,
    pub digest: String,
}

#[derive(Clone, Debug, Default, Serialize, PartialEq, Eq)]
pub struct BlobCounts {
    pub copied: u64,
    pub skipped: u64,
    pub mounted: u64,
    /// Non-distributable layers left out.
    pub foreign: u64,
    #[serde(skip)]
    pub bytes: u64,
}

#[derive(Clone, Debug, Default, Serialize, PartialEq, Eq)]
pub struct ManifestCounts {
    pub pushed: u64,
    pub skipped: u64,
}

/// Counters that a progress display can read while a copy runs.
#[derive(Debug, Default)]
pub struct Progress {
    pub bytes: AtomicU64,
    pub blobs_done: AtomicU64,
    pub blobs_total: AtomicU64,
    pub manifests_done: AtomicU64,
    pub manifests_total: AtomicU64,
    pub platforms: AtomicU64,
}

/// Copies one image. The target tag is written last, only after every manifest and blob it
/// refers to is in the target, so a failed copy never leaves the tag on an incomplete image.
#[instrument(skip_all, fields(source = %request.source, target = %request.target))]
pub async fn copy_image(
    request: &CopyRequest,
    progress: &Arc<Progress>,
) -> Result<CopyReport, Error> {
    if !request.target.has_explicit_tag() {
        let target = &request.target;
        return Err(Error::TargetWithoutTag {
            reference: format!("{}/{}", target.registry(), target.repository()),
        });
    }
    let source = Registry::connect(
        &request.source,
        request.source_credential.as_ref(),
        &request.connect,
        Access::Pull,
    )?;
    let target = Registry::connect(
        &request.target,
        request.target_credential.as_ref(),
        &request.connect,
        Access::Push,
    )?;

    if let Some(previous) = request.previous.as_ref().filter(|_| !request.force)
        && let Some(report) = check_previous(request, previous, &source, &target).await?
    {
        return Ok(report);
    }

    // Read the root and any nested indexes: enough to apply the filter and know the digest
    // the target tag should end up with.
    let mut root = fetch::fetch_root(&source, &request.source).await?;
    let source_digest = root.digest.clone();
    fetch::fetch_children(&source, &request.source, &mut root, Fetch::IndexesOnly).await?;
    let selection = plan::select(root, &request.platforms, &request.source.to_string())?;
    let mut root = selection.root;

    let mut report = CopyReport {
        source: request.source.to_string(),
        target: request.target.to_string(),
        source_digest,
        target_digest: root.digest.clone(),
        media_type: root.media_type.clone(),
        index_rewritten: selection.rewrite_reason.is_some(),
        rewrite_reason: selection.rewrite_reason,
        ..CopyReport::default()
    };
    if let Some(expected) = request.target.digest()
        && expected != root.digest
    {
        return Err(Error::DigestMismatch {
            reference: request.target.to_string(),
            expected: expected.to_string(),
            actual: root.digest.clone(),
        });
    }

    let tag_reference = request.target.tag_only().expect("target tag checked above");
    if !request.force
        && target
            .head_manifest(&tag_reference)
            .await?
            .is_some_and(|found| digest::matches(&root.bytes, &found))
    {
        debug!(digest = %root.digest, "Target tag already has the digest");
        report.unchanged = true;
        report.platforms = list_platforms(&source, &request.source, &root).await?;
        return Ok(report);
    }

    fetch::fetch_children(&source, &request.source, &mut root, Fetch::Everything).await?;
    let push_plan = plan::plan_pushes(&root, request.foreign_layers)?;
    report.platforms = list_platforms(&source, &request.source, &root).await?;
    progress
        .platforms
        .store(report.platforms.len() as u64, Ordering::Relaxed);
    let child_count: usize = push_plan.manifest_levels.iter().map(Vec::len).sum();
    progress
        .manifests_total
        .store(child_count as u64 + 1, Ordering::Relaxed);

    let ends = Ends {
        source: &source,
        source_image: &request.source,
        target: &target,
        target_image: &request.target,
        can_mount: request.source.same_registry(&request.target)
            && request.source.repository() != request.target.repository()
            && request.source_credential == request.target_credential,
        upload_mode: request.upload_mode,
        chunk_size: request.chunk_size,
    };
    let blobs = transfer::copy_blobs(&ends, &push_plan, request.jobs, progress).await?;
    let (pushed, skipped) =
        transfer::push_manifests(&ends, &push_plan, request.jobs, progress).await?;
    transfer::push_root(&ends, &root).await?;
    progress.manifests_done.fetch_add(1, Ordering::Relaxed);

    report.bytes = blobs.bytes;
    report.blobs = blobs;
    report.manifests = ManifestCounts {
        pushed: pushed + 1,
        skipped,
    };
    info!(
        digest = %report.target_digest,
        platforms = report.platforms.len(),
        copied = report.blobs.copied,
        skipped = report.blobs.skipped,
        mounted = report.blobs.mounted,
        bytes = report.bytes,
        "Copied image"
    );
    Ok(report)
}

/// Compares the source and the target tag with an earlier copy's digests, with one HEAD
/// request each. Returns an `unchanged` report when both still match.
async fn check_previous(
    request: &CopyRequest,
    previous: &PreviousCopy,
    source: &Registry,
    target: &Registry,
) -> Result<Option<CopyReport>, Error> {
    let source_reference = match request.source.digest() {
        Some(digest) => request.source.with_digest(digest),
        None => request.source.as_oci().clone(),
    };
    let source_digest = source.head_manifest(&source_reference).await?;
    if source_digest.as_deref() != Some(previous.source_digest.as_str()) {
        return Ok(None);
    }
    let tag_reference = request
        .target
        .tag_only()
        .expect("target tag checked by the caller");
    let target_digest = target.head_manifest(&tag_reference).await?;
    if target_digest.as_deref() != Some(previous.target_digest.as_str()) {
        return Ok(None);
    }
    debug!(digest = %previous.target_digest, "Source and target unchanged since the last copy");
    Ok(Some(CopyReport {
        source: request.source.to_string(),
        target: request.target.to_string(),
        source_digest: previous.source_digest.clone(),
        target_digest: previous.target_digest.clone(),
        index_rewritten: previous.source_digest != previous.target_digest,
        unchanged: true,
        ..CopyReport::default()
    }))
}

/// Lists the platforms of the copied image. A single-platform manifest's platform is read
/// from its config blob, since the manifest itself does not state it.
async fn list_platforms(
    source: &Registry,
    image: &ImageRef,
    root: &Node,
) -> Result<Vec<PlatformDigest>, Error> {
    let to_report = |(platform, digest)| PlatformDigest { platform, digest };
    match &root.content {
        Content::Index { .. } => Ok(plan::platforms(root).into_iter().map(to_report).collect()),
        Content::Image { blobs } => {
            let config = &blobs[0];
            let bytes = source
                .read_small_blob(&image.with_digest(&config.digest), &config.digest)
                .await?;
            let platform = config_platform(&bytes).unwrap_or_else(|| "unknown".to_string());
            Ok(vec![PlatformDigest {
                platform,
                digest: root.digest.clone(),
            }])
        }
    }
}

/// Reads `os/architecture[/variant]` from an image config.
fn config_platform(bytes: &[u8]) -> Option<String> {
    #[derive(serde::Deserialize)]
    struct Config {
        os: String,
        architecture: String,
        #[serde(default)]
        variant: Option<String>,
    }
    let config: Config = serde_json::from_slice(bytes).ok()?;
    let mut platform = format!("{}/{}", config.os, config.architecture);
    if let Some(variant) = config.variant.filter(|v| !v.is_empty()) {
        platform.push('/');
        platform.push_str(&variant);
    }
    Some(platform)
}
