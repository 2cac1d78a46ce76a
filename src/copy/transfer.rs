//! Writes the target: blobs, then child manifests, then the root by tag.
//!
//! Each blob is checked in the target first, mounted when source and target share a
//! registry, and otherwise streamed from source to target. The engine hashes the bytes as they
//! pass and ends the stream with an error on a size or digest mismatch, so the upload is never
//! committed, and the registry checks the digest again before it accepts the blob. A blob
//! whose copy fails on the way (a broken connection, a 5xx) is copied again on its own.

use backon::{ExponentialBuilder, Retryable};
use futures::{StreamExt, TryStreamExt};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;
use tracing::{debug, info, warn};

use super::digest;
use super::error::{Error, Failure};
use super::manifest::{Descriptor, is_foreign};
use super::plan::{Node, PushPlan};
use super::reference::ImageRef;
use super::registry::{Mount, Registry};
use super::stream::{FailureSlot, SourceFailure, Verified};
use super::upload::UploadMode;
use super::{BlobCounts, Progress};

/// The two ends of a copy and how to write the target.
pub struct Ends<'a> {
    pub source: &'a Registry,
    pub source_image: &'a ImageRef,
    pub target: &'a Registry,
    pub target_image: &'a ImageRef,
    /// True when blobs can be mounted from the source repository.
    pub can_mount: bool,
    pub upload_mode: UploadMode,
    /// Bytes per PATCH of a chunked upload.
    pub chunk_size: usize,
}

/// The outcome for one blob.
enum BlobOutcome {
    Skipped,
    Mounted,
    Copied(u64),
}

/// Retry policy for one blob copy, on top of the retries of single requests.
pub fn retry_policy() -> ExponentialBuilder {
    ExponentialBuilder::default()
        .with_min_delay(Duration::from_millis(200))
        .with_max_delay(Duration::from_secs(10))
        .with_max_times(4)
        .with_jitter()
}

/// Copies every blob of the plan, at most `jobs` at a time, and returns the counts.
pub async fn copy_blobs(
    ends: &Ends<'_>,
    plan: &PushPlan,
    jobs: usize,
    progress: &Arc<Progress>,
) -> Result<BlobCounts, Error> {
    progress
        .blobs_total
        .store(plan.blobs.len() as u64, Ordering::Relaxed);
    // The futures are built before they enter the stream: a stream closure that borrows
    // its argument makes rustc fail to prove the whole copy future `Send`.
    let copies: Vec<_> = plan
        .blobs
        .iter()
        .map(|blob| copy_blob_with_retry(ends, blob, progress))
        .collect();
    let outcomes: Vec<BlobOutcome> = futures::stream::iter(copies)
        .buffer_unordered(jobs.max(1))
        .try_collect()
        .await?;

    let mut counts = BlobCounts {
        foreign: plan.foreign_layers as u64,
        ..BlobCounts::default()
    };
    for outcome in outcomes {
        match outcome {
            BlobOutcome::Skipped => counts.skipped += 1,
            BlobOutcome::Mounted => counts.mounted += 1,
            BlobOutcome::Copied(bytes) => {
                counts.copied += 1;
                counts.bytes += bytes;
            }
        }
    }
    Ok(counts)
}

async fn copy_blob_with_retry(
    ends: &Ends<'_>,
    blob: &Descriptor,
    progress: &Arc<Progress>,
) -> Result<BlobOutcome, Error> {
    let outcome = (|| copy_blob(ends, blob, progress))
        .retry(retry_policy())
        .when(Error::is_retryable)
        .notify(|error, delay| {
            warn!(digest = %blob.digest, error = %error_chain(error), ?delay, "Retrying blob copy");
        })
        .await?;
    progress.blobs_done.fetch_add(1, Ordering::Relaxed);
    Ok(outcome)
}

/// Formats an error with its causes on one line, for logs.
fn error_chain(error: &Error) -> String {
    let mut text = error.to_string();
    let mut source = std::error::Error::source(error);
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

async fn copy_blob(
    ends: &Ends<'_>,
    blob: &Descriptor,
    progress: &Arc<Progress>,
) -> Result<BlobOutcome, Error> {
    let digest = blob.digest.as_str();
    let repository = ends.target_image.repository();
    let target_ref = ends.target_image.with_digest(digest);
    if ends.target.blob_exists(&target_ref, digest).await? {
        debug!(%digest, "Blob already in target");
        return Ok(BlobOutcome::Skipped);
    }

    let mut session = None;
    if ends.can_mount {
        let source_ref = ends.source_image.with_digest(digest);
        match ends
            .target
            .mount_blob(&target_ref, &source_ref, digest)
            .await
        {
            Mount::Mounted => {
                debug!(%digest, "Blob mounted");
                return Ok(BlobOutcome::Mounted);
            }
            Mount::Upload(upload) => session = Some(upload),
            Mount::NotMounted => {}
        }
    }

    let mut chunked = ends.upload_mode == UploadMode::Chunked
        || blob.size >= ends.target.chunked_from.load(Ordering::Relaxed);
    loop {
        let upload = match session.take() {
            Some(upload) => upload,
            None => ends.target.start_upload(repository).await?,
        };
        let slot = FailureSlot::default();
        let stream = open_source(ends, blob).await?;
        let verified = Verified::new(stream, digest, blob.size, progress.clone(), slot.clone())
            .map_err(|reason| Error::InvalidManifest {
                reference: ends.source_image.to_string(),
                reason: format!("blob digest {digest:?} is invalid: {reason}"),
            })?;
        let result = if chunked {
            ends.target
                .put_blob_chunks(repository, upload, digest, ends.chunk_size, verified)
                .await
        } else {
            ends.target
                .put_blob_stream(repository, upload, digest, blob.size, verified)
                .await
        };
        let error = match result {
            Ok(()) => {
                debug!(%digest, size = blob.size, chunked, "Blob copied");
                return Ok(BlobOutcome::Copied(blob.size));
            }
            Err(error) => error,
        };
        // The upload saw only an I/O error when the source side failed; report the cause.
        if let Some(failure) = slot.lock().expect("failure slot poisoned").take() {
            return Err(source_error(ends, blob, failure));
        }
        if !chunked && error.status() == Some(413) {
            ends.target
                .chunked_from
                .fetch_min(blob.size, Ordering::Relaxed);
            warn!(
                %digest,
                size = blob.size,
                chunk_size = ends.chunk_size,
                "Target rejected the blob as too large for one request, uploading it in chunks"
            );
            chunked = true;
            continue;
        }
        return Err(error);
    }
}

/// Opens a blob of the source. A foreign layer that the source registry does not have is
/// fetched from its URLs.
async fn open_source(
    ends: &Ends<'_>,
    blob: &Descriptor,
) -> Result<futures::stream::BoxStream<'static, std::io::Result<bytes::Bytes>>, Error> {
    let digest = blob.digest.as_str();
    let source_ref = ends.source_image.with_digest(digest);
    let from_registry = ends.source.pull_blob(&source_ref, digest).await;
    if !is_foreign(&blob.media_type) || blob.urls.is_empty() {
        return from_registry;
    }
    let mut last = match from_registry {
        Err(error @ Error::NotFound { .. }) => error,
        other => return other,
    };
    for url in &blob.urls {
        match ends.source.pull_url(url, digest).await {
            Ok(stream) => {
                debug!(%digest, "Fetching foreign layer from its URL");
                return Ok(stream);
            }
            Err(error) => {
                warn!(%digest, error = %error_chain(&error), "Foreign layer URL failed");
                last = error;
            }
        }
    }
    Err(last)
}

fn source_error(ends: &Ends<'_>, blob: &Descriptor, failure: SourceFailure) -> Error {
    let reference = ends.source_image.with_digest(&blob.digest).whole();
    match failure {
        SourceFailure::Digest { expected, actual } => Error::DigestMismatch {
            reference,
            expected,
            actual,
        },
        SourceFailure::Size { expected, actual } => Error::DigestMismatch {
            reference,
            expected: format!("{expected} bytes"),
            actual: format!("{actual} bytes"),
        },
        SourceFailure::Interrupted(reason) => Error::Registry {
            action: "fetch blob from",
            reference,
            source: Failure::SourceStream(reason),
        },
    }
}

/// Pushes child manifests level by level, deepest first, skipping those already present.
/// Returns how many were pushed and how many skipped.
pub async fn push_manifests(
    ends: &Ends<'_>,
    plan: &PushPlan,
    jobs: usize,
    progress: &Arc<Progress>,
) -> Result<(u64, u64), Error> {
    let mut pushed = 0;
    let mut skipped = 0;
    for level in &plan.manifest_levels {
        let pushes: Vec<_> = level
            .iter()
            .map(|node| push_child_manifest(ends, node))
            .collect();
        let results: Vec<bool> = futures::stream::iter(pushes)
            .buffer_unordered(jobs.max(1))
            .try_collect()
            .await?;
        for was_pushed in results {
            progress.manifests_done.fetch_add(1, Ordering::Relaxed);
            if was_pushed {
                pushed += 1
            } else {
                skipped += 1
            }
        }
    }
    Ok((pushed, skipped))
}

async fn push_child_manifest(ends: &Ends<'_>, node: &Node) -> Result<bool, Error> {
    let reference = ends.target_image.with_digest(&node.digest);
    let present = ends.target.head_manifest(&reference).await?;
    if present.is_some_and(|found| digest::matches(&node.bytes, &found)) {
        return Ok(false);
    }
    ends.target
        .put_manifest(
            &reference,
            node.bytes.clone(),
            &node.media_type,
            &node.digest,
        )
        .await?;
    Ok(true)
}

/// Pushes the root by tag, last, and checks that the tag now returns the same bytes.
pub async fn push_root(ends: &Ends<'_>, root: &Node) -> Result<(), Error> {
    let tag_reference = ends
        .target_image
        .tag_only()
        .ok_or_else(|| Error::TargetWithoutTag {
            reference: ends.target_image.to_string(),
        })?;
    let pushed = ends
        .target
        .put_manifest(
            &tag_reference,
            root.bytes.clone(),
            &root.media_type,
            &root.digest,
        )
        .await;
    if let Err(Error::Rejected { reason, .. }) = &pushed {
        // A registry with immutable tags rejects a tag that points elsewhere, so report where
        // it points.
        let existing = ends.target.head_manifest(&tag_reference).await?;
        if let Some(existing) = existing.filter(|d| !digest::matches(&root.bytes, d)) {
            return Err(Error::TagNotMoved {
                reference: tag_reference.whole(),
                existing,
                reason: reason.clone(),
            });
        }
    }
    pushed?;

    // Read back by GET and compare bytes, because a HEAD response's digest header may be wrong.
    let stored = ends.target.get_manifest(&tag_reference).await?;
    if stored.bytes != root.bytes {
        return Err(Error::DigestMismatch {
            reference: tag_reference.whole(),
            expected: root.digest.clone(),
            actual: stored.digest,
        });
    }
    info!(digest = %root.digest, target = %tag_reference.whole(), "Tagged target");
    Ok(())
}
