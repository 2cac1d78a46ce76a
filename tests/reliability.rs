//! Faults the controller must survive: being killed in the middle of a copy, again and again.

mod support;

use serde_json::json;
use std::process::{Child, Command, Stdio};
use std::time::Duration;
use support::cluster::TestNamespace;
use support::fault_proxy::{FaultProxy, Rule};
use support::{Probe, RegistryInfo, env, large_layout, seed, seed_layout, unique_repository};

/// The tests here stop shared processes of the environment, so they run one at a time.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Returns the port of a `HOST:PORT` or `https://HOST:PORT` address.
fn port_of(address: &str) -> u16 {
    address
        .rsplit(':')
        .next()
        .unwrap()
        .trim_end_matches('/')
        .parse()
        .unwrap()
}

/// A controller process that is killed when dropped, so a failed assertion does not leave it
/// running.
struct ControllerProcess(Child);

impl ControllerProcess {
    /// Kills the process with SIGKILL and waits for it.
    fn kill(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }

    fn is_running(&mut self) -> bool {
        self.0.try_wait().unwrap().is_none()
    }
}

impl Drop for ControllerProcess {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Starts a controller that watches only `namespace`, with one transfer at a time so that a
/// copy lasts long enough to be interrupted.
fn start_controller(namespace: &str, log_name: &str) -> ControllerProcess {
    start_controller_with(namespace, log_name, &[])
}

/// Starts a controller as [`start_controller`] does, with more plain-HTTP hosts.
fn start_controller_with(
    namespace: &str,
    log_name: &str,
    plain_http: &[String],
) -> ControllerProcess {
    let env = env();
    let mut hosts = vec![
        env.registries.plain.host.clone(),
        env.registries.auth.host.clone(),
    ];
    hosts.extend_from_slice(plain_http);
    let log = std::fs::File::create(env.state_dir.join("logs").join(log_name)).unwrap();
    let child = Command::new(env!("CARGO_BIN_EXE_pma2docker"))
        .args([
            "controller",
            "--namespace",
            namespace,
            "--metrics-address",
            "127.0.0.1:0",
        ])
        .args(["--jobs", "1"])
        .args(["--plain-http", &hosts.join(",")])
        .env("KUBECONFIG", &env.kubeconfig)
        .env("RUST_LOG", "info")
        .stdin(Stdio::null())
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .spawn()
        .expect("failed to start the controller");
    ControllerProcess(child)
}

/// Returns whether the target tag exists, and panics if it resolves to an index whose
/// manifests or blobs are not all in the repository.
async fn assert_tag_complete(registry: &RegistryInfo, repository: &str, tag: &str) -> bool {
    let probe = Probe::new(registry);
    let Some(index_bytes) = probe.manifest(repository, tag).await else {
        return false;
    };
    let index: serde_json::Value = serde_json::from_slice(&index_bytes).unwrap();
    for entry in index["manifests"].as_array().unwrap() {
        let digest = entry["digest"].as_str().unwrap();
        let manifest = probe.manifest(repository, digest).await;
        let manifest = manifest.unwrap_or_else(|| panic!("tag points at missing child {digest}"));
        let manifest: serde_json::Value = serde_json::from_slice(&manifest).unwrap();
        let layers = manifest["layers"].as_array().unwrap().iter();
        for blob in std::iter::once(&manifest["config"]).chain(layers) {
            let blob_digest = blob["digest"].as_str().unwrap();
            let found = probe.blob_digest(repository, blob_digest).await;
            assert!(
                found.is_some(),
                "tag points at child {digest} with missing blob {blob_digest}"
            );
        }
    }
    true
}

#[tokio::test]
async fn controller_killed_twenty_times() {
    let _serial = SERIAL.lock().await;
    let env = env();
    let auth = &env.registries.auth;
    let namespace = TestNamespace::new("rel-kill").await;
    let source = seed_layout(
        large_layout(),
        &env.registries.plain,
        &unique_repository("rel/src"),
        "v1",
    );
    let repository = unique_repository("rel/dst");
    let target = format!("{}/{repository}:v1", auth.host);
    namespace
        .put_pull_secret("creds", auth, auth.password.as_deref().unwrap())
        .await;
    namespace
        .create_copy(
            "large",
            json!({ "source": source, "target": target, "imagePullSecrets": [{ "name": "creds" }] }),
        )
        .await;

    // Kill points spread over the first 2.5 s of each run, from a fixed sequence so a failure
    // can be replayed.
    let mut state: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut kills_before_tag = 0;
    for round in 0..20 {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        let delay = Duration::from_millis(150 + state % 2350);
        let mut controller = start_controller(&namespace.name, &format!("kill-{round}.log"));
        tokio::time::sleep(delay).await;
        controller.kill();

        if !assert_tag_complete(auth, &repository, "v1").await {
            kills_before_tag += 1;
        }
    }

    let mut controller = start_controller(&namespace.name, "kill-final.log");
    let object = namespace.wait_ready("large", "True", Some("Copied")).await;
    controller.kill();

    let status = object.status.unwrap();
    assert_eq!(status.target_digest, status.source_digest);
    assert!(assert_tag_complete(auth, &repository, "v1").await);

    // A blob that reached the target is never uploaded again after a restart.
    let uploads = env.completed_uploads("auth", &repository);
    let repeated: Vec<_> = uploads.iter().filter(|(_, count)| **count > 1).collect();
    assert!(
        repeated.is_empty(),
        "blobs uploaded more than once: {repeated:?}"
    );
    println!(
        "kills: 20, of which {kills_before_tag} before the tag existed; blobs uploaded: {}",
        uploads.len()
    );
    assert!(
        kills_before_tag >= 1,
        "no kill landed before the copy finished"
    );
    namespace.delete().await;
}

#[tokio::test]
async fn target_registry_restarted_mid_copy() {
    let _serial = SERIAL.lock().await;
    let env = env();
    let auth = &env.registries.auth;
    let namespace = TestNamespace::new("rel-registry").await;
    let source = seed_layout(
        large_layout(),
        &env.registries.plain,
        &unique_repository("rel/src"),
        "v1",
    );
    let repository = unique_repository("rel/dst");
    let target = format!("{}/{repository}:v1", auth.host);
    namespace
        .put_pull_secret("creds", auth, auth.password.as_deref().unwrap())
        .await;
    let mut controller = start_controller(&namespace.name, "registry-restart.log");
    namespace
        .create_copy(
            "large",
            json!({ "source": source, "target": target, "imagePullSecrets": [{ "name": "creds" }] }),
        )
        .await;

    // Take the target registry away for three seconds while blobs are in flight.
    tokio::time::sleep(Duration::from_millis(700)).await;
    let port = port_of(&auth.host);
    tokio::task::spawn_blocking(move || {
        env.restart_process("registry-auth", Duration::from_secs(3), port)
    })
    .await
    .unwrap();

    let object = namespace.wait_ready("large", "True", Some("Copied")).await;
    controller.kill();
    let status = object.status.unwrap();
    assert_eq!(status.target_digest, status.source_digest);
    assert!(assert_tag_complete(auth, &repository, "v1").await);
    namespace.delete().await;
}

#[tokio::test]
async fn apiserver_restarted_under_controller() {
    let _serial = SERIAL.lock().await;
    let env = env();
    let namespace = TestNamespace::new("rel-apiserver").await;
    let source = seed(
        "single",
        &env.registries.plain,
        &unique_repository("rel/src"),
        "v1",
    );
    let before = format!(
        "{}/{}:v1",
        env.registries.plain.host,
        unique_repository("rel/dst")
    );
    let after = format!(
        "{}/{}:v1",
        env.registries.plain.host,
        unique_repository("rel/dst")
    );
    let mut controller = start_controller(&namespace.name, "apiserver-restart.log");
    namespace
        .create_copy("before", json!({ "source": source, "target": before }))
        .await;
    namespace.wait_ready("before", "True", Some("Copied")).await;

    let port = port_of(&env.apiserver);
    tokio::task::spawn_blocking(move || {
        env.restart_process("kube-apiserver", Duration::from_secs(2), port)
    })
    .await
    .unwrap();

    // The watch reconnects: an object created after the restart is copied too.
    let namespace = reconnect(namespace).await;
    namespace
        .create_copy("after", json!({ "source": source, "target": after }))
        .await;
    namespace.wait_ready("after", "True", Some("Copied")).await;
    assert!(controller.is_running(), "the controller exited");
    controller.kill();
    namespace.delete().await;
}

/// Waits until the apiserver serves requests again after a restart.
async fn reconnect(namespace: TestNamespace) -> TestNamespace {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while namespace.copies().list(&Default::default()).await.is_err() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "apiserver did not come back"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    namespace
}

#[tokio::test]
async fn registry_failing_for_a_while() {
    let _serial = SERIAL.lock().await;
    let env = env();
    let namespace = TestNamespace::new("rel-faults").await;
    let source = seed(
        "multiarch-oci",
        &env.registries.plain,
        &unique_repository("rel/src"),
        "v1",
    );
    let proxy = FaultProxy::start(&format!("http://{}", env.registries.plain.host)).await;
    // Uploads to the target fail in three ways, 40 times in all, then the registry recovers.
    let errors = proxy.add(
        Rule::new("*", "/v2/*/blobs/uploads/*")
            .times(15)
            .status(500),
    );
    let throttled = proxy.add(
        Rule::new("*", "/v2/*/blobs/uploads/*")
            .times(15)
            .status(429)
            .response_header("Retry-After", "1")
            .body("slow down"),
    );
    let resets = proxy.add(
        Rule::new("PUT", "/v2/*/blobs/uploads/*")
            .times(10)
            .drop_after(0),
    );
    let repository = unique_repository("rel/dst");
    let target = format!("{}/{repository}:v1", proxy.host());
    let mut controller = start_controller_with(&namespace.name, "faults.log", &[proxy.host()]);

    namespace
        .create_copy("flaky", json!({ "source": source, "target": target }))
        .await;
    let object = namespace.wait_ready("flaky", "True", Some("Copied")).await;
    controller.kill();

    let status = object.status.unwrap();
    assert_eq!(status.target_digest, status.source_digest);
    let injected = errors.applied() + throttled.applied() + resets.applied();
    assert_eq!(injected, 40, "not every fault was hit");
    let uploads = proxy.count("*", "/v2/*/blobs/uploads/*");
    println!(
        "faults injected: {} errors, {} throttled, {} resets; upload requests: {uploads}",
        errors.applied(),
        throttled.applied(),
        resets.applied()
    );
    // Retries are bounded: the 11 blobs needed about 3 requests each without faults.
    assert!(uploads < 40 + 11 * 3 * 3, "{uploads} upload requests");

    // The outage was longer than the engine's own retries, so it showed as a failed
    // reconcile with a Warning Event before the copy succeeded.
    let events = support::cluster::kubectl(
        &["get", "events", "-n", &namespace.name, "-o", "json"],
        None,
    );
    let events = String::from_utf8_lossy(&events.stdout);
    assert!(
        events.contains("\"reason\": \"RegistryError\""),
        "no RegistryError Event: {events}"
    );
    assert!(events.contains("\"type\": \"Warning\""), "{events}");
    assert!(
        events.contains("\"reason\": \"Copied\""),
        "no Copied Event: {events}"
    );
    namespace.delete().await;
}
