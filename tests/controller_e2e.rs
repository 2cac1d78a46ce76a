//! The controller end to end: a real kube-apiserver with RBAC, real registries, and the
//! `pma2docker controller` binary running as a local process with a kubeconfig.

mod support;

use serde_json::json;
use support::cluster::{TestNamespace, controller, kubectl, metric_value, metrics_text};
use support::{Probe, env, fixtures, seed, unique_repository};

#[tokio::test]
async fn copies_every_platform() {
    controller().await;
    let env = env();
    let fixture = fixtures().image("multiarch-oci");
    let namespace = TestNamespace::new("e2e-all").await;
    let source = seed(
        "multiarch-oci",
        &env.registries.plain,
        &unique_repository("e2e/src"),
        "1.4",
    );
    let repository = unique_repository("e2e/dst");
    let target = format!("{}/{repository}:1.4", env.registries.plain.host);

    namespace
        .create_copy("app", json!({ "source": source, "target": target }))
        .await;

    // `kubectl wait` is how users and scripts wait for a copy.
    let output = kubectl(
        &[
            "wait",
            "-n",
            &namespace.name,
            "--for=condition=Ready",
            "imagecopy/app",
            "--timeout=90s",
        ],
        None,
    );
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );

    let object = namespace.wait_ready("app", "True", Some("Copied")).await;
    let status = object.status.unwrap();
    assert_eq!(
        status.source_digest.as_deref(),
        Some(fixture.digest.as_str())
    );
    assert_eq!(
        status.target_digest.as_deref(),
        Some(fixture.digest.as_str())
    );
    assert!(!status.index_rewritten);
    assert_eq!(status.platforms.len(), 5);
    assert!(status.last_sync_time.is_some());
    let last_copy = status.last_copy.expect("a copy sent or mounted blobs");
    assert_eq!(
        last_copy.blobs_mounted as usize,
        fixture.content_blobs().len()
    );
    let probe = Probe::new(&env.registries.plain);
    let tagged = probe.manifest_digest(&repository, "1.4").await;
    assert_eq!(tagged.as_deref(), Some(fixture.digest.as_str()));

    // The Event is published right after the status, so it may trail `kubectl wait`.
    let mut events = String::new();
    for _ in 0..50 {
        let output = kubectl(
            &["get", "events", "-n", &namespace.name, "-o", "json"],
            None,
        );
        events = String::from_utf8_lossy(&output.stdout).into_owned();
        if events.contains("\"reason\": \"Copied\"") {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
    assert!(
        events.contains("\"reason\": \"Copied\""),
        "no Copied event: {events}"
    );

    let metrics = metrics_text().await;
    let copied = r#"pma2docker_reconciles_total{reason="Copied",result="success"}"#;
    assert!(metric_value(&metrics, copied) >= 1.0, "{metrics}");
    // Source and target share the plain registry, so every blob is mounted.
    let mounted = r#"pma2docker_blobs_total{outcome="mounted"}"#;
    assert!(metric_value(&metrics, mounted) >= 11.0, "{metrics}");
    assert!(
        !metrics.contains("e2e/"),
        "image names must not be metric labels"
    );
    namespace.delete().await;
}

#[tokio::test]
async fn copies_platform_subset() {
    controller().await;
    let env = env();
    let namespace = TestNamespace::new("e2e-subset").await;
    let source = seed(
        "attested",
        &env.registries.plain,
        &unique_repository("e2e/src"),
        "v1",
    );
    let target = format!(
        "{}/{}:arm",
        env.registries.plain.host,
        unique_repository("e2e/dst")
    );

    namespace
        .create_copy(
            "arm",
            json!({ "source": source, "target": target, "platforms": ["linux/arm64", "linux/arm/v7"] }),
        )
        .await;

    let object = namespace.wait_ready("arm", "True", Some("Copied")).await;
    let status = object.status.unwrap();
    assert!(status.index_rewritten);
    assert_ne!(status.target_digest, status.source_digest);
    let platforms: Vec<&str> = status
        .platforms
        .iter()
        .map(|p| p.platform.as_str())
        .collect();
    assert_eq!(platforms, ["linux/arm64", "linux/arm/v7"]);
    namespace.delete().await;
}

#[tokio::test]
async fn private_registries_wrong_then_fixed_password() {
    controller().await;
    let env = env();
    let auth = &env.registries.auth;
    let password = auth.password.as_deref().unwrap();
    let namespace = TestNamespace::new("e2e-auth").await;
    let source = seed("multiarch-oci", auth, &unique_repository("e2e/src"), "v1");
    let repository = unique_repository("e2e/dst");
    let target = format!("{}/{repository}:v1", auth.host);
    let canary = "canary-Pa55word-e2e";
    namespace
        .put_pull_secret("registry-creds", auth, canary)
        .await;

    namespace
        .create_copy(
            "private",
            json!({ "source": source, "target": target,
                    "imagePullSecrets": [{ "name": "registry-creds" }] }),
        )
        .await;
    let failed = namespace
        .wait_ready("private", "False", Some("AuthenticationFailed"))
        .await;
    let message = &support::cluster::ready_condition(&failed).unwrap().message;
    assert!(!message.contains(canary), "password in status: {message}");

    // Fixing the Secret triggers a new copy without touching the ImageCopy.
    namespace
        .put_pull_secret("registry-creds", auth, password)
        .await;
    let object = namespace
        .wait_ready("private", "True", Some("Copied"))
        .await;
    let digest = object.status.unwrap().target_digest.unwrap();
    assert_eq!(digest, fixtures().image("multiarch-oci").digest);

    // The canary never shows in Events or in the controller's trace logs.
    let events = kubectl(
        &["get", "events", "-n", &namespace.name, "-o", "json"],
        None,
    );
    let events = String::from_utf8_lossy(&events.stdout);
    assert!(events.contains("AuthenticationFailed"), "{events}");
    assert!(!events.contains(canary), "password in Events");
    // Trace logs must not hold the passwords, plain or in the base64 forms that Secrets and
    // Basic authorization headers use.
    let logs = std::fs::read_to_string(&controller().await.log_file).unwrap();
    let username = auth.username.as_deref().unwrap();
    for secret in [canary, password] {
        use base64::Engine;
        let basic =
            base64::engine::general_purpose::STANDARD.encode(format!("{username}:{secret}"));
        assert!(!logs.contains(secret), "password in controller logs");
        assert!(
            !logs.contains(&basic),
            "Basic credentials in controller logs"
        );
    }
    namespace.delete().await;
}

#[tokio::test]
async fn missing_source_and_secret_reported() {
    controller().await;
    let env = env();
    let namespace = TestNamespace::new("e2e-missing").await;
    let source = format!(
        "{}/{}:v1",
        env.registries.plain.host,
        unique_repository("e2e/none")
    );
    let target = |name: &str| {
        format!(
            "{}/{}:v1",
            env.registries.plain.host,
            unique_repository(name)
        )
    };

    namespace
        .create_copy(
            "nosource",
            json!({ "source": source, "target": target("e2e/dst") }),
        )
        .await;
    namespace
        .create_copy(
            "nosecret",
            json!({ "source": source, "target": target("e2e/dst"),
                    "imagePullSecrets": [{ "name": "absent" }] }),
        )
        .await;

    namespace
        .wait_ready("nosource", "False", Some("SourceNotFound"))
        .await;
    let object = namespace
        .wait_ready("nosecret", "False", Some("SecretNotFound"))
        .await;
    let message = &support::cluster::ready_condition(&object).unwrap().message;
    assert!(message.contains("absent"), "{message}");
    namespace.delete().await;
}

#[tokio::test]
async fn interval_follows_moved_tag() {
    controller().await;
    let env = env();
    let namespace = TestNamespace::new("e2e-interval").await;
    let source_repository = unique_repository("e2e/src");
    let source = seed(
        "single",
        &env.registries.plain,
        &source_repository,
        "stable",
    );
    let repository = unique_repository("e2e/dst");
    let target = format!("{}/{repository}:stable", env.registries.plain.host);

    namespace
        .create_copy(
            "follow",
            json!({ "source": source, "target": target, "interval": "30s" }),
        )
        .await;
    namespace.wait_ready("follow", "True", Some("Copied")).await;

    // Move the source tag to another image; the next interval check copies it.
    seed(
        "multiarch-oci",
        &env.registries.plain,
        &source_repository,
        "stable",
    );
    let expected = fixtures().image("multiarch-oci").digest.clone();
    let probe = Probe::new(&env.registries.plain);
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(75);
    loop {
        if probe
            .manifest_digest(&repository, "stable")
            .await
            .as_deref()
            == Some(expected.as_str())
        {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "target did not follow the moved tag"
        );
        tokio::time::sleep(std::time::Duration::from_secs(1)).await;
    }
    namespace.delete().await;
}

#[tokio::test]
async fn unchanged_resync_sends_nothing() {
    controller().await;
    let env = env();
    let namespace = TestNamespace::new("e2e-resync").await;
    let source_repository = unique_repository("e2e/src");
    let source = seed(
        "multiarch-oci",
        &env.registries.plain,
        &source_repository,
        "v1",
    );
    let target_repository = unique_repository("e2e/dst");
    let target = format!("{}/{target_repository}:v1", env.registries.auth.host);
    namespace
        .put_pull_secret(
            "creds",
            &env.registries.auth,
            env.registries.auth.password.as_deref().unwrap(),
        )
        .await;
    namespace
        .create_copy(
            "resync",
            json!({ "source": source, "target": target, "interval": "30s",
                    "imagePullSecrets": [{ "name": "creds" }] }),
        )
        .await;
    let first = namespace.wait_ready("resync", "True", Some("Copied")).await;
    let first_status = first.status.unwrap();
    let source_before = env.registry_requests("plain", &source_repository).len();
    let target_before = env.registry_requests("auth", &target_repository).len();

    // The 30s interval re-checks both sides.
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(60);
    let second_status = loop {
        let object = namespace.copies().get("resync").await.unwrap();
        let status = object.status.unwrap();
        if status.last_sync_time != first_status.last_sync_time {
            break status;
        }
        assert!(tokio::time::Instant::now() < deadline, "no resync happened");
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    };
    assert_eq!(second_status.target_digest, first_status.target_digest);
    assert_eq!(second_status.platforms, first_status.platforms);
    assert_eq!(second_status.last_copy, first_status.last_copy);

    // One HEAD on each side, and not a single blob request.
    let source_requests = env.registry_requests("plain", &source_repository);
    let target_requests = env.registry_requests("auth", &target_repository);
    let source_new = &source_requests[source_before..];
    let target_new = &target_requests[target_before..];
    assert_eq!(
        source_new,
        [format!("HEAD /v2/{source_repository}/manifests/v1")]
    );
    assert_eq!(
        target_new,
        [format!("HEAD /v2/{target_repository}/manifests/v1")]
    );
    namespace.delete().await;
}

#[tokio::test]
async fn invalid_spec_rejected_by_apiserver() {
    let namespace = TestNamespace::new("e2e-invalid").await;
    let cases = [
        (
            "notag",
            json!({ "source": "a.example/x:1", "target": "b.example/y" }),
            "spec.target",
        ),
        (
            "upper",
            json!({ "source": "a.example/X:1", "target": "b.example/y:1" }),
            "spec.source",
        ),
        (
            "same",
            json!({ "source": "a.example/x:1", "target": "a.example/x:1" }),
            "must differ",
        ),
        (
            "platform",
            json!({ "source": "a.example/x:1", "target": "b.example/y:1", "platforms": ["linux"] }),
            "spec.platforms",
        ),
        (
            "interval",
            json!({ "source": "a.example/x:1", "target": "b.example/y:1", "interval": "5s" }),
            "at least 30s",
        ),
        (
            "duration",
            json!({ "source": "a.example/x:1", "target": "b.example/y:1", "interval": "1 day" }),
            "spec.interval",
        ),
    ];
    for (name, spec, expected) in cases {
        let manifest = json!({
            "apiVersion": "pma2docker.io/v1alpha1", "kind": "ImageCopy",
            "metadata": { "name": name, "namespace": namespace.name }, "spec": spec
        });
        let output = kubectl(&["apply", "-f", "-"], Some(&manifest.to_string()));
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(!output.status.success(), "{name} was accepted");
        assert!(stderr.contains(expected), "{name}: {stderr}");
    }
    namespace.delete().await;
}

#[tokio::test]
async fn shared_target_conflict_reported() {
    controller().await;
    let env = env();
    let first = TestNamespace::new("e2e-conflict-a").await;
    let second = TestNamespace::new("e2e-conflict-b").await;
    let source = seed(
        "single",
        &env.registries.plain,
        &unique_repository("e2e/src"),
        "v1",
    );
    let target = format!(
        "{}/{}:v1",
        env.registries.plain.host,
        unique_repository("e2e/dst")
    );

    first
        .create_copy("one", json!({ "source": source, "target": target }))
        .await;
    first.wait_ready("one", "True", Some("Copied")).await;
    second
        .create_copy("two", json!({ "source": source, "target": target }))
        .await;

    let two = second
        .wait_ready("two", "False", Some("TargetConflict"))
        .await;
    let one = first
        .wait_ready("one", "False", Some("TargetConflict"))
        .await;
    let message_two = &support::cluster::ready_condition(&two).unwrap().message;
    let message_one = &support::cluster::ready_condition(&one).unwrap().message;
    assert!(
        message_two.contains(&format!("{}/one", first.name)),
        "{message_two}"
    );
    assert!(
        message_one.contains(&format!("{}/two", second.name)),
        "{message_one}"
    );

    // Once one of them goes, the other copies again.
    second.delete().await;
    first.wait_ready("one", "True", Some("Copied")).await;
    first.delete().await;
}
