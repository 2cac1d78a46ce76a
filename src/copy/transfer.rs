//! Writes the target: blobs, then child manifests, then the root by tag.
//!
//! Each blob is checked in the target first, mounted when source and target share a
//! registry, and otherwise streamed from source to target: oci-client hashes the bytes as
//! they pass and ends the stream with an error on a mismatch, so the upload is never
//! committed, and the registry checks the digest again before it accepts the blob.

use backon::{ExponentialBuilder, Retryable};
use bytes::Bytes;
use futures::{Stream, StreamExt, TryStreamExt};
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::task::{Context, Poll};
use std::time::Duration;
use tracing::{debug, info, warn};

use super::error::Error;
use super::manifest::Descriptor;
use super::plan::{Node, PushPlan};
use super::reference::ImageRef;
use super::registry::Registry;
use super::{BlobCounts, Progress};

/// The two ends of a copy.
pub struct Ends<'a> {
    pub source: &'a Registry,
    pub source_image: &'a ImageRef,
    pub target: &'a Registry,
    pub target_image: &'a ImageRef,
    /// True when blobs can be mounted from the source repository.
    pub can_mount: bool,
}

/// What happened to one blob.
enum BlobOutcome {
    Skipped,
    Mounted,
    Copied(u64),
}

/// Retry policy for one unit of work: a manifest request or a whole blob copy.
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
            warn!(digest = %blob.digest, %error, ?delay, "Retrying blob copy");
        })
        .await?;
    progress.blobs_done.fetch_add(1, Ordering::Relaxed);
    Ok(outcome)
}

async fn copy_blob(
    ends: &Ends<'_>,
    blob: &Descriptor,
    progress: &Arc<Progress>,
) -> Result<BlobOutcome, Error> {
    let digest = blob.digest.as_str();
    let target_ref = ends.target_image.with_digest(digest);
    if ends.target.blob_exists(&target_ref, digest).await? {
        debug!(%digest, "Blob already in target");
        return Ok(BlobOutcome::Skipped);
    }

    let source_ref = ends.source_image.with_digest(digest);
    if ends.can_mount
        && ends
            .target
            .mount_blob(&target_ref, &source_ref, digest)
            .await
    {
        debug!(%digest, "Blob mounted");
        return Ok(BlobOutcome::Mounted);
    }

    let stream = ends.source.pull_blob(&source_ref, digest).await?;
    let counted = SizeCheck::new(stream, blob.size, digest.to_string(), progress.clone());
    ends.target
        .push_blob(&target_ref, counted, digest, blob.size)
        .await?;
    debug!(%digest, size = blob.size, "Blob copied");
    Ok(BlobOutcome::Copied(blob.size))
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
    let present = (|| ends.target.head_manifest(&reference))
        .retry(retry_policy())
        .when(Error::is_retryable)
        .await?;
    if present.as_deref() == Some(node.digest.as_str()) {
        return Ok(false);
    }
    (|| {
        ends.target
            .put_manifest(&reference, node.bytes.clone(), &node.media_type)
    })
    .retry(retry_policy())
    .when(Error::is_retryable)
    .await?;
    Ok(true)
}

/// Pushes the root by tag, last, and checks that the tag now resolves to its digest.
pub async fn push_root(ends: &Ends<'_>, root: &Node) -> Result<(), Error> {
    let tag_reference = ends
        .target_image
        .tag_only()
        .ok_or_else(|| Error::TargetWithoutTag {
            reference: ends.target_image.to_string(),
        })?;
    (|| {
        ends.target
            .put_manifest(&tag_reference, root.bytes.clone(), &root.media_type)
    })
    .retry(retry_policy())
    .when(Error::is_retryable)
    .await?;

    let resolved = ends.target.head_manifest(&tag_reference).await?;
    if resolved.as_deref() != Some(root.digest.as_str()) {
        return Err(Error::DigestMismatch {
            reference: tag_reference.whole(),
            expected: root.digest.clone(),
            actual: resolved.unwrap_or_else(|| "nothing".to_string()),
        });
    }
    info!(digest = %root.digest, target = %tag_reference.whole(), "Tagged target");
    Ok(())
}

/// Passes a blob stream through, counting bytes for progress and ending it with an error if
/// the source sends more or fewer bytes than the descriptor's size.
struct SizeCheck<S> {
    inner: S,
    expected: u64,
    seen: u64,
    digest: String,
    progress: Arc<Progress>,
    failed: bool,
}

impl<S> SizeCheck<S> {
    fn new(inner: S, expected: u64, digest: String, progress: Arc<Progress>) -> Self {
        SizeCheck {
            inner,
            expected,
            seen: 0,
            digest,
            progress,
            failed: false,
        }
    }

    fn size_error(&self) -> io::Error {
        io::Error::new(
            io::ErrorKind::InvalidData,
            format!(
                "blob {} is {} bytes in its descriptor, but the source sent {} or more",
                self.digest, self.expected, self.seen
            ),
        )
    }
}

impl<S> Stream for SizeCheck<S>
where
    S: Stream<Item = io::Result<Bytes>> + Unpin,
{
    type Item = io::Result<Bytes>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        if self.failed {
            return Poll::Ready(None);
        }
        match Pin::new(&mut self.inner).poll_next(cx) {
            Poll::Ready(Some(Ok(chunk))) => {
                self.seen += chunk.len() as u64;
                self.progress
                    .bytes
                    .fetch_add(chunk.len() as u64, Ordering::Relaxed);
                if self.seen > self.expected {
                    self.failed = true;
                    return Poll::Ready(Some(Err(self.size_error())));
                }
                Poll::Ready(Some(Ok(chunk)))
            }
            Poll::Ready(None) if self.seen != self.expected => {
                self.failed = true;
                Poll::Ready(Some(Err(self.size_error())))
            }
            other => other,
        }
    }
}
