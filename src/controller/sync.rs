//! Runs the copy engine for one ImageCopy. No Kubernetes writes happen here.

use k8s_openapi::api::core::v1::Secret;
use kube::{Api, ResourceExt};
use std::sync::Arc;
use std::time::Instant;
use tracing::instrument;

use super::Context;
use super::error::Error;
use super::resolve;
use crate::api::ImageCopy;
use crate::copy::{self, CopyReport, PreviousCopy, Progress};

/// Copies the image of `object`. Unless the spec changed, the digests of the last success
/// let the engine stop after a HEAD request on each side when nothing moved.
#[instrument(skip_all, fields(source = %object.spec.source, target = %object.spec.target))]
pub async fn sync(
    object: &ImageCopy,
    context: &Context,
    is_new_generation: bool,
) -> Result<CopyReport, Error> {
    let namespace = object.namespace().unwrap_or_default();
    let mut request = resolve::parse_spec(object, &context.settings)?;
    let secrets: Api<Secret> = Api::namespaced(context.client.clone(), &namespace);
    let config = resolve::pull_secrets(&secrets, &namespace, object).await?;
    request.source_credential = config.credential_for(&request.source).cloned();
    request.target_credential = config.credential_for(&request.target).cloned();

    if !is_new_generation
        && let Some(status) = &object.status
        && let (Some(source_digest), Some(target_digest)) =
            (&status.source_digest, &status.target_digest)
    {
        request.previous = Some(PreviousCopy {
            source_digest: source_digest.clone(),
            target_digest: target_digest.clone(),
        });
    }

    let metrics = &context.metrics;
    metrics.copies_in_flight.inc();
    let started = Instant::now();
    let result = copy::copy_image(&request, &Arc::new(Progress::default())).await;
    metrics.copies_in_flight.dec();

    let label = if result.is_ok() { "success" } else { "error" };
    let report = result.map_err(Error::Copy)?;
    if !report.unchanged {
        metrics
            .copy_duration
            .with_label_values(&[label])
            .observe(started.elapsed().as_secs_f64());
        metrics.bytes_copied.inc_by(report.bytes);
        metrics
            .blobs
            .with_label_values(&["copied"])
            .inc_by(report.blobs.copied);
        metrics
            .blobs
            .with_label_values(&["skipped"])
            .inc_by(report.blobs.skipped);
        metrics
            .blobs
            .with_label_values(&["mounted"])
            .inc_by(report.blobs.mounted);
    }
    Ok(report)
}
