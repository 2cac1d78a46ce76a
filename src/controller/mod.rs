//! The `ImageCopy` controller, built on kube-runtime.
//!
//! A reconcile runs these steps, one object at a time and a bounded number in parallel:
//! 1. `resolve`: parse the spec and read the named pull Secrets;
//! 2. `sync`: run the copy engine, which ends after two HEAD requests when nothing changed;
//! 3. `status`: write the outcome as conditions, digests and platforms, and publish an Event.
//!
//! Failures back off per object; permanent ones (a bad spec) wait for an edit. Pull Secrets
//! are watched by metadata only, so fixing a password triggers a new copy at once.

pub mod error;
pub mod interval;
pub mod resolve;
pub mod server;
pub mod settings;
pub mod status;
mod sync;

use futures::StreamExt;
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::api::{Api, ListParams};
use kube::core::PartialObjectMeta;
use kube::runtime::controller::{Action, Config as ControllerConfig, Controller};
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::runtime::reflector::{ObjectRef, Store};
use kube::runtime::watcher;
use kube::{Client, Resource, ResourceExt};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tracing::{debug, error, info, warn};

use crate::api::ImageCopy;
use crate::api::conditions::reasons;
use crate::metrics::Metrics;
pub use error::Error;
pub use settings::Settings;
use status::Outcome;

/// Field manager of the status patches, and the controller name in Events.
pub const FIELD_MANAGER: &str = "pma2docker";

/// First retry delay after a failure. It doubles per failure up to [`MAX_BACKOFF`].
const MIN_BACKOFF: Duration = Duration::from_secs(5);
const MAX_BACKOFF: Duration = Duration::from_secs(300);

/// State shared by every reconcile.
pub struct Context {
    pub client: Client,
    pub recorder: Recorder,
    pub metrics: Metrics,
    pub settings: Settings,
    /// Every ImageCopy the controller watches, to find two that write one target.
    pub store: Store<ImageCopy>,
    /// Consecutive failures per object, for the backoff.
    failures: Mutex<HashMap<ObjectRef<ImageCopy>, u32>>,
}

/// Settings of the controller process.
pub struct RunOptions {
    pub settings: Settings,
    /// Namespace to watch; `None` watches every namespace.
    pub namespace: Option<String>,
    pub metrics_address: SocketAddr,
    /// Name of this instance in Events, usually the pod name.
    pub instance: String,
}

/// Runs the controller until SIGTERM or Ctrl-C.
pub async fn run(client: Client, options: RunOptions) -> anyhow::Result<()> {
    let metrics = Metrics::new();
    let ready = Arc::new(AtomicBool::new(false));
    let server = tokio::spawn(server::serve(
        options.metrics_address,
        metrics.clone(),
        ready.clone(),
    ));

    let (copies, secrets): (Api<ImageCopy>, Api<PartialObjectMeta<Secret>>) =
        match &options.namespace {
            Some(namespace) => (
                Api::namespaced(client.clone(), namespace),
                Api::namespaced(client.clone(), namespace),
            ),
            None => (Api::all(client.clone()), Api::all(client.clone())),
        };
    copies.list(&ListParams::default().limit(1)).await.map_err(|error| {
        anyhow::anyhow!(
            "cannot list ImageCopy objects ({error}); is the CRD installed (pma2docker crd | kubectl apply -f -) \
             and does the ServiceAccount have list rights?"
        )
    })?;

    let controller = Controller::new(copies, watcher::Config::default().any_semantic());
    let store = controller.store();
    let reporter = Reporter {
        controller: FIELD_MANAGER.to_string(),
        instance: Some(options.instance),
    };
    let concurrency = options.settings.concurrency;
    let context = Arc::new(Context {
        recorder: Recorder::new(client.clone(), reporter),
        client,
        metrics,
        settings: options.settings,
        store: store.clone(),
        failures: Mutex::default(),
    });
    let secret_filter = watcher::Config::default().fields("type=kubernetes.io/dockerconfigjson");
    ready.store(true, Ordering::Relaxed);
    info!(concurrency, "Controller started");

    controller
        .with_config(ControllerConfig::default().concurrency(concurrency))
        .watches(secrets, secret_filter, move |secret| {
            copies_using_secret(&store, &secret)
        })
        .shutdown_on_signal()
        .run(reconcile, error_policy, context)
        .for_each(|result| async move {
            if let Err(error) = result {
                warn!(%error, "Reconcile not run");
            }
        })
        .await;
    server.abort();
    info!("Controller stopped");
    Ok(())
}

/// Maps a changed pull Secret to the ImageCopy objects of its namespace that name it.
fn copies_using_secret(
    store: &Store<ImageCopy>,
    secret: &PartialObjectMeta<Secret>,
) -> Vec<ObjectRef<ImageCopy>> {
    let namespace = secret.namespace();
    let name = secret.name_any();
    store
        .state()
        .iter()
        .filter(|copy| copy.namespace() == namespace)
        .filter(|copy| copy.spec.image_pull_secrets.iter().any(|s| s.name == name))
        .map(|copy| ObjectRef::from_obj(copy.as_ref()))
        .collect()
}

async fn reconcile(object: Arc<ImageCopy>, context: Arc<Context>) -> Result<Action, Error> {
    match reconcile_object(object, context).await {
        Err(Error::Deleted) => {
            debug!("ImageCopy deleted during its reconcile; the copy it started has finished");
            Ok(Action::await_change())
        }
        other => other,
    }
}

async fn reconcile_object(object: Arc<ImageCopy>, context: Arc<Context>) -> Result<Action, Error> {
    let mut timer = context.metrics.time_reconcile();
    let namespace = object.namespace().unwrap_or_default();
    let api: Api<ImageCopy> = Api::namespaced(context.client.clone(), &namespace);
    let interval = object.spec.interval.as_deref().and_then(interval::parse);

    if object.metadata.deletion_timestamp.is_some() {
        // Deleting an ImageCopy leaves the copied image in place; there is nothing to do.
        timer.succeeded();
        return Ok(Action::await_change());
    }

    if let Some(wait) = time_until_recheck(&object, interval) {
        // A copy for this generation succeeded recently. Reconciles also run after our own
        // status writes and after Secret changes; they must not re-check the registries.
        timer.succeeded();
        return Ok(wait
            .map(Action::requeue)
            .unwrap_or_else(Action::await_change));
    }

    if object.spec.suspend {
        let status = status::next_status(&object, &Outcome::Suspended, now());
        status::write(&api, &object, status).await?;
        context
            .metrics
            .reconciles
            .with_label_values(&["success", reasons::SUSPENDED])
            .inc();
        timer.succeeded();
        return Ok(Action::await_change());
    }

    let is_new_generation =
        object.status.as_ref().and_then(|s| s.observed_generation) != object.metadata.generation;
    if is_new_generation {
        let status = status::next_status(&object, &Outcome::Copying, now());
        status::write(&api, &object, status).await?;
    }

    let result = match conflicting_copy(&context.store, &object) {
        Some((conflict, other)) => {
            report_conflict_on(&context, &other, &object).await;
            Err(conflict)
        }
        None => sync::sync(&object, &context, is_new_generation).await,
    };
    match result {
        Ok(report) => {
            let status = status::next_status(&object, &Outcome::Synced(&report), now());
            status::write(&api, &object, status).await?;
            if !report.unchanged {
                let note = format!(
                    "Copied {} to {} ({})",
                    report.source, report.target, report.target_digest
                );
                publish(&context, &object, EventType::Normal, reasons::COPIED, note).await;
            }
            context
                .failures
                .lock()
                .expect("lock poisoned")
                .remove(&ObjectRef::from_obj(object.as_ref()));
            context
                .metrics
                .reconciles
                .with_label_values(&["success", reasons::COPIED])
                .inc();
            timer.succeeded();
            Ok(interval
                .map(Action::requeue)
                .unwrap_or_else(Action::await_change))
        }
        Err(failure) => {
            let status = status::next_status(&object, &Outcome::Failed(&failure), now());
            match status::write(&api, &object, status).await {
                Err(Error::Deleted) => return Err(Error::Deleted),
                Err(write_error) => {
                    warn!(error = %write_error.message(), "Failed to write failure status");
                }
                Ok(()) => {}
            }
            publish(
                &context,
                &object,
                EventType::Warning,
                failure.reason(),
                failure.message(),
            )
            .await;
            context
                .metrics
                .reconciles
                .with_label_values(&["error", failure.reason()])
                .inc();
            Err(failure)
        }
    }
}

/// Returns a conflict when another ImageCopy that is not suspended or being deleted writes
/// the same target tag. Both objects report it, and neither copies until one changes.
fn conflicting_copy(
    store: &Store<ImageCopy>,
    object: &ImageCopy,
) -> Option<(Error, Arc<ImageCopy>)> {
    let target = target_key(object)?;
    let tail = target_tail(&object.spec.target);
    let other = store.state().into_iter().find(|other| {
        other.metadata.uid != object.metadata.uid
            && other.metadata.deletion_timestamp.is_none()
            && !other.spec.suspend
            // Parsing every target in the store costs time per reconcile that grows with the
            // number of objects, so only targets with the same last path part are parsed.
            && target_tail(&other.spec.target) == tail
            && target_key(other).as_ref() == Some(&target)
    })?;
    let error = Error::TargetConflict {
        target,
        other: qualified_name(&other),
    };
    Some((error, other))
}

/// Marks the other side of a conflict too. An object that copied successfully before would
/// otherwise keep `Ready=True` until its next interval, while the two fight over the tag.
async fn report_conflict_on(context: &Context, other: &ImageCopy, object: &ImageCopy) {
    let Some(target) = target_key(other) else {
        return;
    };
    let conflict = Error::TargetConflict {
        target,
        other: qualified_name(object),
    };
    let api: Api<ImageCopy> = Api::namespaced(
        context.client.clone(),
        &other.namespace().unwrap_or_default(),
    );
    let status = status::next_status(other, &Outcome::Failed(&conflict), now());
    if let Err(error) = status::write(&api, other, status).await {
        warn!(error = %error.message(), other = %qualified_name(other), "Failed to report conflict");
    }
}

fn qualified_name(object: &ImageCopy) -> String {
    format!(
        "{}/{}",
        object.namespace().unwrap_or_default(),
        object.name_any()
    )
}

/// Returns the last path part of a target with its tag, such as `app:1.4`, without a digest.
fn target_tail(target: &str) -> &str {
    let name = target.split('@').next().unwrap_or(target);
    name.rsplit('/').next().unwrap_or(name)
}

/// Returns the target tag in canonical form, so `nginx:1` and `docker.io/library/nginx:1`
/// compare equal.
fn target_key(object: &ImageCopy) -> Option<String> {
    let target: crate::copy::ImageRef = object.spec.target.parse().ok()?;
    Some(target.tag_only()?.whole())
}

/// Returns `Some` when the last successful copy of the current generation is recent enough
/// that registries need no check now: `Some(Some(wait))` until the interval is due, or
/// `Some(None)` without an interval. Returns `None` when a check is due.
fn time_until_recheck(object: &ImageCopy, interval: Option<Duration>) -> Option<Option<Duration>> {
    let status = object.status.as_ref()?;
    if status.observed_generation != object.metadata.generation || object.spec.suspend {
        return None;
    }
    let ready = status
        .conditions
        .iter()
        .find(|c| c.type_ == crate::api::conditions::READY)?;
    if ready.status != "True" || ready.observed_generation != object.metadata.generation {
        return None;
    }
    let Some(interval) = interval else {
        return Some(None);
    };
    let last_sync = status.last_sync_time.as_ref()?;
    let elapsed = k8s_openapi::jiff::Timestamp::now().duration_since(last_sync.0);
    let elapsed = Duration::try_from(elapsed).unwrap_or_default();
    // Whole seconds: the status keeps times with one-second resolution.
    let remaining = interval.checked_sub(elapsed).filter(|r| r.as_secs() >= 1)?;
    Some(Some(remaining))
}

/// Chooses when to try again after a failure: exponential backoff per object for transient
/// failures, and for permanent ones the next interval or an edit.
fn error_policy(object: Arc<ImageCopy>, failure: &Error, context: Arc<Context>) -> Action {
    error!(reason = failure.reason(), error = %failure.message(), "Reconcile failed");
    let interval = object.spec.interval.as_deref().and_then(interval::parse);
    if failure.is_permanent() {
        return interval
            .map(Action::requeue)
            .unwrap_or_else(Action::await_change);
    }
    let mut failures = context.failures.lock().expect("lock poisoned");
    let count = failures
        .entry(ObjectRef::from_obj(object.as_ref()))
        .or_insert(0);
    *count = count.saturating_add(1);
    let delay = backoff(*count);
    Action::requeue(interval.map_or(delay, |interval| delay.min(interval)))
}

/// Delay before retry number `failures` (1-based): 5s, 10s, 20s, … up to 5 minutes.
fn backoff(failures: u32) -> Duration {
    let factor = 2u32.saturating_pow(failures.saturating_sub(1).min(16));
    MIN_BACKOFF.saturating_mul(factor).min(MAX_BACKOFF)
}

async fn publish(
    context: &Context,
    object: &ImageCopy,
    type_: EventType,
    reason: &str,
    note: String,
) {
    let event = Event {
        type_,
        reason: reason.to_string(),
        note: Some(note),
        action: "Copy".to_string(),
        secondary: None,
    };
    if let Err(error) = context
        .recorder
        .publish(&event, &object.object_ref(&()))
        .await
    {
        warn!(%error, "Failed to publish Event");
    }
}

fn now() -> Time {
    Time(k8s_openapi::jiff::Timestamp::now())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn synced_object(generation: i64, seconds_ago: i64, interval: Option<&str>) -> ImageCopy {
        use crate::api::ImageCopySpec;
        let mut object = ImageCopy::new(
            "app",
            ImageCopySpec {
                source: "a.example/app:1".into(),
                target: "b.example/app:1".into(),
                platforms: vec![],
                image_pull_secrets: vec![],
                interval: interval.map(str::to_string),
                suspend: false,
            },
        );
        object.metadata.generation = Some(generation);
        let then = k8s_openapi::jiff::Timestamp::now()
            - k8s_openapi::jiff::SignedDuration::from_secs(seconds_ago);
        let report = crate::copy::CopyReport::default();
        let status = status::next_status(&object, &Outcome::Synced(&report), Time(then));
        object.status = Some(status);
        object
    }

    #[test]
    fn recheck_waits_for_interval() {
        let object = synced_object(1, 10, Some("60s"));
        let wait = time_until_recheck(&object, Some(Duration::from_secs(60)));
        let wait = wait.expect("not due yet").expect("an interval is set");
        assert!(
            wait <= Duration::from_secs(50) && wait >= Duration::from_secs(48),
            "{wait:?}"
        );
    }

    #[test]
    fn recheck_due_after_interval() {
        let object = synced_object(1, 61, Some("60s"));
        assert_eq!(
            time_until_recheck(&object, Some(Duration::from_secs(60))),
            None
        );
    }

    #[test]
    fn recheck_without_interval_waits_for_change() {
        let object = synced_object(1, 5000, None);
        assert_eq!(time_until_recheck(&object, None), Some(None));
    }

    #[test]
    fn recheck_due_on_new_generation() {
        let mut object = synced_object(1, 1, None);
        object.metadata.generation = Some(2);
        assert_eq!(time_until_recheck(&object, None), None);
    }

    #[test]
    fn target_tail_ignores_registry_and_digest() {
        assert_eq!(target_tail("nginx:1"), "nginx:1");
        assert_eq!(target_tail("docker.io/library/nginx:1"), "nginx:1");
        let digest = format!("sha256:{}", "a".repeat(64));
        assert_eq!(
            target_tail(&format!("127.0.0.1:5000/a/app:v1@{digest}")),
            "app:v1"
        );
    }

    #[test]
    fn backoff_doubles_to_cap() {
        assert_eq!(backoff(1), Duration::from_secs(5));
        assert_eq!(backoff(2), Duration::from_secs(10));
        assert_eq!(backoff(4), Duration::from_secs(40));
        assert_eq!(backoff(10), MAX_BACKOFF);
        assert_eq!(backoff(u32::MAX), MAX_BACKOFF);
    }
}
