//! Computes an ImageCopy's status from a reconcile's outcome (pure) and writes it with one
//! server-side apply patch of the status subresource.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::api::{Api, Patch, PatchParams};
use kube::{Resource, ResourceExt};

use super::FIELD_MANAGER;
use super::error::Error;
use crate::api::conditions::{READY, condition, reasons};
use crate::api::v1alpha1::{CopyStatistics, PlatformStatus};
use crate::api::{ImageCopy, ImageCopyStatus};
use crate::copy::CopyReport;

/// Maximum length of a condition message, because registry error bodies can be long.
const MAX_MESSAGE_CHARS: usize = 1024;

/// The result of a reconcile, as the status reports it.
pub enum Outcome<'a> {
    /// A copy is about to start for a generation not seen before.
    Copying,
    Suspended,
    Synced(&'a CopyReport),
    Failed(&'a Error),
}

/// Builds the next status from the current one. Digests and platforms of the last success
/// stay in place when a later attempt fails.
pub fn next_status(object: &ImageCopy, outcome: &Outcome<'_>, now: Time) -> ImageCopyStatus {
    let mut status = object.status.clone().unwrap_or_default();
    let generation = object.metadata.generation;
    status.observed_generation = generation;

    let (state, reason, message) = match outcome {
        Outcome::Copying => (
            "Unknown",
            reasons::COPYING,
            format!("Copying {} to {}", object.spec.source, object.spec.target),
        ),
        Outcome::Suspended => (
            "False",
            reasons::SUSPENDED,
            "Copying is suspended because spec.suspend is true".to_string(),
        ),
        Outcome::Synced(report) => {
            apply_report(&mut status, report, now.clone());
            (
                "True",
                reasons::COPIED,
                synced_message(report, status.platforms.len()),
            )
        }
        Outcome::Failed(error) => ("False", error.reason(), truncate(error.message())),
    };

    let ready = condition(
        &status.conditions,
        READY,
        state,
        reason,
        message,
        generation,
        now,
    );
    status.conditions.retain(|c| c.type_ != READY);
    status.conditions.insert(0, ready);
    status
}

fn apply_report(status: &mut ImageCopyStatus, report: &CopyReport, now: Time) {
    let target_changed = status.target_digest.as_deref() != Some(report.target_digest.as_str());
    status.source_digest = Some(report.source_digest.clone());
    status.target_digest = Some(report.target_digest.clone());
    status.index_rewritten = report.index_rewritten;
    // An unchanged check lists no platforms; the earlier list is still true then.
    if !report.platforms.is_empty() || target_changed {
        status.platforms = report
            .platforms
            .iter()
            .map(|p| PlatformStatus {
                platform: p.platform.clone(),
                digest: p.digest.clone(),
            })
            .collect();
    }
    status.last_sync_time = Some(now);
    if !report.unchanged {
        status.last_copy = Some(CopyStatistics {
            blobs_copied: report.blobs.copied,
            blobs_skipped: report.blobs.skipped,
            blobs_mounted: report.blobs.mounted,
            bytes: report.bytes,
        });
    }
}

fn synced_message(report: &CopyReport, platforms: usize) -> String {
    let platforms = match platforms {
        0 => String::new(),
        1 => "1 platform, ".to_string(),
        n => format!("{n} platforms, "),
    };
    if report.unchanged {
        return format!(
            "{} is up to date ({platforms}digest {})",
            report.target, report.target_digest
        );
    }
    let blobs = &report.blobs;
    format!(
        "Copied to {} ({platforms}digest {}, {} copied, {} skipped, {} mounted)",
        report.target,
        report.target_digest,
        count(blobs.copied, "blob"),
        blobs.skipped,
        blobs.mounted
    )
}

/// Returns `1 blob` or `3 blobs`.
fn count(n: u64, noun: &str) -> String {
    if n == 1 {
        format!("1 {noun}")
    } else {
        format!("{n} {noun}s")
    }
}

fn truncate(message: String) -> String {
    if message.chars().count() <= MAX_MESSAGE_CHARS {
        return message;
    }
    let mut cut: String = message.chars().take(MAX_MESSAGE_CHARS - 1).collect();
    cut.push('…');
    cut
}

/// Writes the status subresource with server-side apply. The body carries only `status`, so
/// the spec, labels and annotations are never touched.
pub async fn write(
    api: &Api<ImageCopy>,
    object: &ImageCopy,
    status: ImageCopyStatus,
) -> Result<(), Error> {
    let body = serde_json::json!({
        "apiVersion": ImageCopy::api_version(&()),
        "kind": ImageCopy::kind(&()),
        "status": status,
    });
    api.patch_status(
        &object.name_any(),
        &PatchParams::apply(FIELD_MANAGER).force(),
        &Patch::Apply(body),
    )
    .await
    .map_err(|source| match source {
        // The object was deleted while its copy ran; there is no status left to write.
        kube::Error::Api(status) if status.code == 404 => Error::Deleted,
        source => Error::Kube {
            action: "write ImageCopy status",
            source,
        },
    })?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::ImageCopySpec;
    use crate::copy::{BlobCounts, PlatformDigest};
    use k8s_openapi::jiff::Timestamp;

    fn object(generation: i64) -> ImageCopy {
        let mut object = ImageCopy::new(
            "app",
            ImageCopySpec {
                source: "a.example/app:1".into(),
                target: "b.example/app:1".into(),
                platforms: vec![],
                image_pull_secrets: vec![],
                interval: None,
                suspend: false,
            },
        );
        object.metadata.generation = Some(generation);
        object
    }

    fn time(seconds: i64) -> Time {
        Time(Timestamp::from_second(seconds).unwrap())
    }

    fn report(unchanged: bool, platforms: usize) -> CopyReport {
        CopyReport {
            target: "b.example/app:1".into(),
            source_digest: "sha256:s".into(),
            target_digest: "sha256:s".into(),
            unchanged,
            platforms: (0..platforms)
                .map(|i| PlatformDigest {
                    platform: format!("linux/p{i}"),
                    digest: format!("sha256:{i}"),
                })
                .collect(),
            blobs: BlobCounts {
                copied: 3,
                ..BlobCounts::default()
            },
            bytes: 10,
            ..CopyReport::default()
        }
    }

    #[test]
    fn copied_sets_ready_and_digests() {
        let status = next_status(&object(3), &Outcome::Synced(&report(false, 2)), time(5));
        let ready = &status.conditions[0];
        assert_eq!(ready.status, "True");
        assert_eq!(ready.reason, "Copied");
        assert_eq!(ready.observed_generation, Some(3));
        assert_eq!(status.observed_generation, Some(3));
        assert_eq!(status.target_digest.as_deref(), Some("sha256:s"));
        assert_eq!(status.platforms.len(), 2);
        assert_eq!(status.last_copy.as_ref().unwrap().blobs_copied, 3);
        assert!(ready.message.contains("2 platforms"), "{}", ready.message);
    }

    #[test]
    fn unchanged_keeps_platforms() {
        let mut copied = object(1);
        copied.status = Some(next_status(
            &copied,
            &Outcome::Synced(&report(false, 5)),
            time(5),
        ));
        let status = next_status(&copied, &Outcome::Synced(&report(true, 0)), time(9));
        assert_eq!(status.platforms.len(), 5);
        assert_eq!(status.last_sync_time, Some(time(9)));
        assert_eq!(status.conditions[0].last_transition_time, time(5));
    }

    #[test]
    fn failure_keeps_last_digest() {
        let mut copied = object(1);
        copied.status = Some(next_status(
            &copied,
            &Outcome::Synced(&report(false, 1)),
            time(5),
        ));
        let error = Error::SecretNotFound {
            namespace: "ns".into(),
            name: "creds".into(),
        };
        let status = next_status(&copied, &Outcome::Failed(&error), time(7));
        let ready = &status.conditions[0];
        assert_eq!(ready.status, "False");
        assert_eq!(ready.reason, "SecretNotFound");
        assert_eq!(ready.last_transition_time, time(7));
        assert_eq!(status.target_digest.as_deref(), Some("sha256:s"));
    }

    #[test]
    fn long_message_truncated() {
        let error = Error::InvalidSpec {
            message: "x".repeat(5000),
        };
        let status = next_status(&object(1), &Outcome::Failed(&error), time(1));
        assert_eq!(
            status.conditions[0].message.chars().count(),
            MAX_MESSAGE_CHARS
        );
    }
}
