//! The copy engine against real registries (the CNCF distribution registry started by
//! `tests/env/up.sh`) with real multi-arch fixture images.

mod support;

use pma2docker::copy::{
    self, ConnectOptions, CopyReport, CopyRequest, Credential, ErrorKind, Progress,
};
use std::sync::Arc;
use support::{Probe, assert_complete, env, fixtures, seed, unique_repository};

/// Builds a request with the environment's connection settings and the auth registry's
/// credentials for whichever side points at it.
fn request(source: &str, target: &str) -> CopyRequest {
    let env = env();
    let mut request = CopyRequest::new(source.parse().unwrap(), target.parse().unwrap());
    let ca = std::fs::read(env.registries.tls.ca_file.as_ref().unwrap()).unwrap();
    request.connect = ConnectOptions {
        plain_http: vec![
            env.registries.plain.host.clone(),
            env.registries.auth.host.clone(),
        ],
        insecure_tls: Vec::new(),
        ca_certificates: vec![ca],
    };
    let auth = &env.registries.auth;
    let credential = Credential::Basic {
        username: auth.username.clone().unwrap(),
        password: auth.password.clone().unwrap(),
    };
    if source.starts_with(&auth.host) {
        request.source_credential = Some(credential.clone());
    }
    if target.starts_with(&auth.host) {
        request.target_credential = Some(credential);
    }
    request
}

async fn run(request: &CopyRequest) -> Result<CopyReport, copy::Error> {
    copy::copy_image(request, &Arc::new(Progress::default())).await
}

#[tokio::test]
async fn oci_index_keeps_digest() {
    let env = env();
    let fixture = fixtures().image("multiarch-oci");
    let source = seed(
        "multiarch-oci",
        &env.registries.plain,
        &unique_repository("src/app"),
        "1.4",
    );
    let repository = unique_repository("mirror/app");
    let target = format!("{}/{repository}:1.4", env.registries.auth.host);

    let report = run(&request(&source, &target)).await.unwrap();

    assert_eq!(report.source_digest, fixture.digest);
    assert_eq!(report.target_digest, fixture.digest);
    assert!(!report.index_rewritten);
    let platforms: Vec<&str> = report
        .platforms
        .iter()
        .map(|p| p.platform.as_str())
        .collect();
    assert_eq!(
        platforms,
        [
            "linux/amd64",
            "linux/arm64",
            "linux/arm/v7",
            "linux/ppc64le",
            "linux/s390x"
        ]
    );
    assert_eq!(report.blobs.copied as usize, fixture.content_blobs().len());
    let probe = Probe::new(&env.registries.auth);
    let tagged = probe.manifest_digest(&repository, "1.4").await;
    assert_eq!(tagged.as_deref(), Some(fixture.digest.as_str()));
    assert_complete(&env.registries.auth, &repository, "multiarch-oci").await;
}

#[tokio::test]
async fn docker_manifest_list_keeps_digest() {
    let env = env();
    let fixture = fixtures().image("multiarch-docker");
    let source = seed(
        "multiarch-docker",
        &env.registries.auth,
        &unique_repository("src/d"),
        "v1",
    );
    let repository = unique_repository("mirror/d");
    let target = format!("{}/{repository}:v1", env.registries.tls.host);

    let report = run(&request(&source, &target)).await.unwrap();

    assert_eq!(report.target_digest, fixture.digest);
    assert_eq!(report.media_type, fixture.media_type);
    assert_eq!(report.platforms.len(), fixture.platforms.len());
    assert_complete(&env.registries.tls, &repository, "multiarch-docker").await;
}

#[tokio::test]
async fn attestations_nested_and_mixed_copied() {
    let env = env();
    for name in ["attested", "nested", "mixed"] {
        let fixture = fixtures().image(name);
        let source = seed(
            name,
            &env.registries.plain,
            &unique_repository("src/x"),
            "v1",
        );
        let repository = unique_repository("mirror/x");
        let target = format!("{}/{repository}:v1", env.registries.auth.host);

        let report = run(&request(&source, &target)).await.unwrap();

        assert_eq!(report.target_digest, fixture.digest, "{name}");
        assert_eq!(report.platforms.len(), fixture.platforms.len(), "{name}");
        assert_complete(&env.registries.auth, &repository, name).await;
    }
}

#[tokio::test]
async fn single_manifest_not_wrapped() {
    let env = env();
    let fixture = fixtures().image("single");
    let source = seed(
        "single",
        &env.registries.plain,
        &unique_repository("src/s"),
        "v1",
    );
    let repository = unique_repository("mirror/s");
    let target = format!("{}/{repository}:v1", env.registries.plain.host);

    let report = run(&request(&source, &target)).await.unwrap();

    assert_eq!(report.target_digest, fixture.digest);
    assert_eq!(
        report.media_type,
        "application/vnd.oci.image.manifest.v1+json"
    );
    assert_eq!(report.platforms.len(), 1);
    assert_eq!(report.platforms[0].platform, "linux/arm64");
    assert_complete(&env.registries.plain, &repository, "single").await;
}

#[tokio::test]
async fn platform_subset_keeps_attestations() {
    let env = env();
    let fixture = fixtures().image("attested");
    let source = seed(
        "attested",
        &env.registries.plain,
        &unique_repository("src/a"),
        "v1",
    );
    let repository = unique_repository("mirror/a");
    let target = format!("{}/{repository}:arm", env.registries.plain.host);
    let mut request = request(&source, &target);
    request.platforms = vec![
        "linux/arm64".parse().unwrap(),
        "linux/arm/v7".parse().unwrap(),
    ];

    let report = run(&request).await.unwrap();

    assert!(report.index_rewritten);
    assert!(report.rewrite_reason.is_some());
    assert_ne!(report.target_digest, fixture.digest);
    let platforms: Vec<&str> = report
        .platforms
        .iter()
        .map(|p| p.platform.as_str())
        .collect();
    assert_eq!(platforms, ["linux/arm64", "linux/arm/v7"]);

    // The index in the target contains the two platforms and their two attestations only.
    let probe = Probe::new(&env.registries.plain);
    let bytes = probe.manifest(&repository, "arm").await.unwrap();
    assert_eq!(support::sha256(&bytes), report.target_digest);
    let index: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
    let entries = index["manifests"].as_array().unwrap();
    assert_eq!(entries.len(), 4);
    let kept: Vec<String> = report.platforms.iter().map(|p| p.digest.clone()).collect();
    for entry in entries {
        let digest = entry["digest"].as_str().unwrap();
        let annotations = &entry["annotations"];
        let refers_to = annotations["vnd.docker.reference.digest"].as_str();
        assert!(
            kept.iter().any(|k| k == digest)
                || refers_to.is_some_and(|r| kept.iter().any(|k| k == r)),
            "entry {digest} is neither a kept platform nor its attestation"
        );
        assert!(
            probe.manifest(&repository, digest).await.is_some(),
            "child {digest} missing"
        );
    }
}

#[tokio::test]
async fn missing_platform_is_error() {
    let env = env();
    let source = seed(
        "attested",
        &env.registries.plain,
        &unique_repository("src/m"),
        "v1",
    );
    let repository = unique_repository("mirror/m");
    let target = format!("{}/{repository}:v1", env.registries.plain.host);
    let mut request = request(&source, &target);
    request.platforms = vec!["linux/riscv64".parse().unwrap()];

    let error = run(&request).await.unwrap_err();

    assert_eq!(error.kind(), ErrorKind::InvalidInput);
    assert!(error.to_string().contains("linux/riscv64"), "{error}");
    let probe = Probe::new(&env.registries.plain);
    assert_eq!(probe.manifest_digest(&repository, "v1").await, None);
}

#[tokio::test]
async fn second_copy_moves_no_bytes() {
    let env = env();
    let source = seed(
        "multiarch-oci",
        &env.registries.plain,
        &unique_repository("src/r"),
        "v1",
    );
    let target = format!(
        "{}/{}:v1",
        env.registries.auth.host,
        unique_repository("mirror/r")
    );
    let first = run(&request(&source, &target)).await.unwrap();
    assert!(first.bytes > 0);

    let second = run(&request(&source, &target)).await.unwrap();
    assert!(second.unchanged);
    assert_eq!(second.bytes, 0);
    assert_eq!(second.blobs.copied, 0);
    assert_eq!(second.platforms, first.platforms);

    // Forced, every blob and manifest is checked and found in place.
    let mut forced = request(&source, &target);
    forced.force = true;
    let third = run(&forced).await.unwrap();
    assert!(!third.unchanged);
    assert_eq!(third.bytes, 0);
    assert_eq!(third.blobs.copied, 0);
    assert_eq!(third.blobs.skipped, first.blobs.copied);
    assert_eq!(third.manifests.skipped, first.manifests.pushed - 1);
}

#[tokio::test]
async fn same_registry_blobs_mounted() {
    let env = env();
    let source = seed(
        "multiarch-oci",
        &env.registries.plain,
        &unique_repository("src/mt"),
        "v1",
    );
    let target = format!(
        "{}/{}:v1",
        env.registries.plain.host,
        unique_repository("mirror/mt")
    );

    let report = run(&request(&source, &target)).await.unwrap();

    assert_eq!(report.blobs.copied, 0);
    assert_eq!(report.bytes, 0);
    assert_eq!(
        report.blobs.mounted as usize,
        fixtures().image("multiarch-oci").content_blobs().len()
    );
}

#[tokio::test]
async fn tampered_blob_refused_nothing_tagged() {
    let env = env();
    let fixture = fixtures().image("single");
    let source_repository = unique_repository("src/t");
    let source = seed("single", &env.registries.plain, &source_repository, "v1");
    // Corrupt the largest layer in the source registry's storage, keeping its size.
    let layer = fixture.blobs.iter().max_by_key(|b| b.size).unwrap();
    let path = support::blob_data_path(&env.storage("plain"), &layer.digest);
    let mut data = std::fs::read(&path).unwrap();
    let middle = data.len() / 2;
    data[middle] ^= 0xff;
    std::fs::write(&path, &data).unwrap();

    let repository = unique_repository("mirror/t");
    let target = format!("{}/{repository}:v1", env.registries.auth.host);
    let result = run(&request(&source, &target)).await;

    // Restore the shared blob before asserting, so other tests see intact content.
    data[middle] ^= 0xff;
    std::fs::write(&path, &data).unwrap();
    let error = result.unwrap_err();
    let message = format!(
        "{error}: {}",
        std::error::Error::source(&error)
            .map(|s| s.to_string())
            .unwrap_or_default()
    );
    assert!(message.to_lowercase().contains("digest"), "{message}");
    let probe = Probe::new(&env.registries.auth);
    assert_eq!(
        probe.manifest_digest(&repository, "v1").await,
        None,
        "target must not be tagged"
    );
    assert_eq!(probe.blob_digest(&repository, &layer.digest).await, None);
}

#[tokio::test]
async fn wrong_password_is_auth_error() {
    let env = env();
    let source = seed(
        "single",
        &env.registries.plain,
        &unique_repository("src/w"),
        "v1",
    );
    let target = format!(
        "{}/{}:v1",
        env.registries.auth.host,
        unique_repository("mirror/w")
    );
    let mut request = request(&source, &target);
    request.target_credential = Some(Credential::Basic {
        username: "pma2docker".into(),
        password: "wrong-canary-9".into(),
    });

    let error = run(&request).await.unwrap_err();

    assert_eq!(error.kind(), ErrorKind::Authentication, "{error}");
    let chain = format!("{error:?}");
    assert!(
        !chain.contains("wrong-canary-9"),
        "password leaked: {chain}"
    );
}

#[tokio::test]
async fn private_source_without_credentials_is_auth_error() {
    let env = env();
    let source = seed(
        "single",
        &env.registries.auth,
        &unique_repository("src/p"),
        "v1",
    );
    let target = format!(
        "{}/{}:v1",
        env.registries.plain.host,
        unique_repository("mirror/p")
    );
    let mut request = request(&source, &target);
    request.source_credential = None;

    let error = run(&request).await.unwrap_err();

    assert_eq!(error.kind(), ErrorKind::Authentication, "{error}");
}

#[tokio::test]
async fn missing_source_is_not_found() {
    let env = env();
    let source = format!(
        "{}/{}:v1",
        env.registries.plain.host,
        unique_repository("src/none")
    );
    let target = format!(
        "{}/{}:v1",
        env.registries.plain.host,
        unique_repository("mirror/none")
    );

    let error = run(&request(&source, &target)).await.unwrap_err();

    assert_eq!(error.kind(), ErrorKind::NotFound, "{error}");
}

#[tokio::test]
async fn tls_verified_by_default() {
    let env = env();
    let source = seed(
        "single",
        &env.registries.tls,
        &unique_repository("src/v"),
        "v1",
    );
    let target = format!(
        "{}/{}:v1",
        env.registries.plain.host,
        unique_repository("mirror/v")
    );
    let mut request = request(&source, &target);
    request.connect.ca_certificates.clear();

    let error = run(&request).await.unwrap_err();
    assert_eq!(error.kind(), ErrorKind::Registry, "{error}");

    // Skipping verification must be asked for, by host.
    request.connect.insecure_tls = vec![env.registries.tls.host.clone()];
    let report = run(&request).await.unwrap();
    assert_eq!(report.target_digest, fixtures().image("single").digest);
}

#[tokio::test]
async fn digest_pinned_source_checked() {
    let env = env();
    let fixture = fixtures().image("multiarch-oci");
    let repository = unique_repository("src/pin");
    seed("multiarch-oci", &env.registries.plain, &repository, "v1");
    let target = format!(
        "{}/{}:v1",
        env.registries.plain.host,
        unique_repository("mirror/pin")
    );

    let pinned = format!(
        "{}/{repository}:v1@{}",
        env.registries.plain.host, fixture.digest
    );
    let report = run(&request(&pinned, &target)).await.unwrap();
    assert_eq!(report.target_digest, fixture.digest);

    let wrong = format!(
        "{}/{repository}@sha256:{}",
        env.registries.plain.host,
        "0".repeat(64)
    );
    let error = run(&request(&wrong, &target)).await.unwrap_err();
    assert!(
        matches!(
            error.kind(),
            ErrorKind::NotFound | ErrorKind::DigestMismatch
        ),
        "{error}"
    );
}

#[tokio::test]
async fn deep_index_nesting_rejected() {
    let env = env();
    let fixture = fixtures().image("single");
    let repository = unique_repository("src/deep");
    seed("single", &env.registries.plain, &repository, "v1");
    let probe = Probe::new(&env.registries.plain);

    // Wrap the single-platform manifest in six levels of indexes.
    let index_type = "application/vnd.oci.image.index.v1+json";
    let mut child = (fixture.media_type.clone(), fixture.digest.clone(), 0u64);
    child.2 = probe
        .manifest(&repository, &fixture.digest)
        .await
        .unwrap()
        .len() as u64;
    for _ in 0..6 {
        let index = serde_json::json!({
            "schemaVersion": 2,
            "mediaType": index_type,
            "manifests": [{ "mediaType": child.0, "digest": child.1, "size": child.2,
                            "platform": { "os": "linux", "architecture": "arm64" } }]
        });
        let bytes = serde_json::to_vec(&index).unwrap();
        let size = bytes.len() as u64;
        let digest = probe.put_manifest(&repository, index_type, bytes).await;
        child = (index_type.to_string(), digest, size);
    }
    let source = format!("{}/{repository}@{}", env.registries.plain.host, child.1);
    let target_repository = unique_repository("mirror/deep");
    let target = format!("{}/{target_repository}:v1", env.registries.auth.host);

    let error = run(&request(&source, &target)).await.unwrap_err();

    assert_eq!(error.kind(), ErrorKind::Unsupported, "{error}");
    assert!(
        error.to_string().contains("nests indexes deeper"),
        "{error}"
    );
    let target_probe = Probe::new(&env.registries.auth);
    assert_eq!(
        target_probe.manifest_digest(&target_repository, "v1").await,
        None
    );
}
