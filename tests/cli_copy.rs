//! `pma2docker copy` as users run it: a Docker config file, flags, JSON output, exit status.

mod support;

use base64::Engine;
use std::process::{Command, Output};
use support::{env, fixtures, seed, unique_repository};

fn pma2docker(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_pma2docker"))
        .args(args)
        .env("RUST_LOG", "trace")
        .output()
        .expect("failed to run pma2docker")
}

/// Writes a Docker config.json with the auth registry's credentials and returns its path.
fn authfile(password: &str) -> tempfile::NamedTempFile {
    let auth = &env().registries.auth;
    let pair = format!("{}:{password}", auth.username.as_deref().unwrap());
    let encoded = base64::engine::general_purpose::STANDARD.encode(pair);
    let json = format!(
        r#"{{"auths":{{"http://{}":{{"auth":"{encoded}"}}}}}}"#,
        auth.host
    );
    let file = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(file.path(), json).unwrap();
    file
}

#[test]
fn copy_prints_json_summary() {
    let env = env();
    let fixture = fixtures().image("multiarch-oci");
    let source = seed(
        "multiarch-oci",
        &env.registries.plain,
        &unique_repository("cli/src"),
        "1.4",
    );
    let target = format!(
        "{}/{}:1.4",
        env.registries.auth.host,
        unique_repository("cli/dst")
    );
    let auth = authfile(env.registries.auth.password.as_deref().unwrap());

    let output = pma2docker(&[
        "copy",
        &source,
        &target,
        "--authfile",
        auth.path().to_str().unwrap(),
        "--plain-http",
        &env.registries.plain.host,
        "--plain-http",
        &env.registries.auth.host,
        "--output",
        "json",
    ]);

    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{stderr}");
    let summary: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(summary["sourceDigest"], fixture.digest.as_str());
    assert_eq!(summary["targetDigest"], fixture.digest.as_str());
    assert_eq!(summary["indexRewritten"], false);
    let platforms = summary["platforms"].as_array().unwrap();
    assert_eq!(platforms.len(), 5);
    for (reported, expected) in platforms.iter().zip(&fixture.platforms) {
        assert_eq!(reported["platform"], expected.platform.as_str());
        assert_eq!(reported["digest"], expected.digest.as_str());
    }
    let blobs = fixture.content_blobs();
    assert_eq!(summary["blobs"]["copied"], blobs.len() as u64);
    let blob_bytes: u64 = blobs.iter().map(|b| b.size).sum();
    assert_eq!(summary["bytes"], blob_bytes);
    let password = env.registries.auth.password.as_deref().unwrap();
    assert!(!stderr.contains(password), "password in trace logs");
}

#[test]
fn wrong_password_exits_with_reason() {
    let env = env();
    let source = seed(
        "single",
        &env.registries.plain,
        &unique_repository("cli/src"),
        "v1",
    );
    let target = format!(
        "{}/{}:v1",
        env.registries.auth.host,
        unique_repository("cli/dst")
    );
    let auth = authfile("canary-password-31337");

    let output = pma2docker(&[
        "copy",
        &source,
        &target,
        "--authfile",
        auth.path().to_str().unwrap(),
        "--plain-http",
        &env.registries.plain.host,
        "--plain-http",
        &env.registries.auth.host,
    ]);

    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    let reason: Vec<&str> = stderr
        .lines()
        .filter(|l| l.starts_with("error: "))
        .collect();
    assert_eq!(reason.len(), 1, "{stderr}");
    assert!(
        reason[0].starts_with("error: authentication to"),
        "{}",
        reason[0]
    );
    assert!(
        !stderr.contains("canary-password-31337"),
        "password in output"
    );
}

#[test]
fn malformed_reference_exits_with_reason() {
    let output = pma2docker(&["copy", "Not/Valid::ref", "127.0.0.1:1/x:y"]);
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("invalid image reference \"Not/Valid::ref\""),
        "{stderr}"
    );
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
}

#[test]
fn plain_http_only_when_named() {
    let env = env();
    let source = seed(
        "single",
        &env.registries.plain,
        &unique_repository("cli/src"),
        "v1",
    );
    let target = format!(
        "{}/{}:v1",
        env.registries.plain.host,
        unique_repository("cli/dst")
    );

    // Without --plain-http the client speaks TLS to a plain registry and fails.
    let output = pma2docker(&["copy", &source, &target]);

    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("error: failed to fetch manifest"),
        "{stderr}"
    );
}

#[test]
fn chunked_upload_mode_sends_patches() {
    let env = env();
    let fixture = fixtures().image("single");
    let source = seed(
        "single",
        &env.registries.plain,
        &unique_repository("cli/src"),
        "v1",
    );
    let repository = unique_repository("cli/chunked");
    let target = format!("{}/{repository}:v1", env.registries.tls.host);
    let ca_file = env
        .registries
        .tls
        .ca_file
        .as_ref()
        .unwrap()
        .to_str()
        .unwrap();

    let output = pma2docker(&[
        "copy",
        &source,
        &target,
        "--plain-http",
        &env.registries.plain.host,
        "--ca-file",
        ca_file,
        "--upload-mode",
        "chunked",
        "--chunk-size-mib",
        "1",
        "--output",
        "json",
    ]);

    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{stderr}");
    let summary: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(summary["targetDigest"], fixture.digest.as_str());
    // Every blob goes up in at least one PATCH instead of a single PUT with a body.
    let patches = env
        .registry_requests("tls", &repository)
        .iter()
        .filter(|request| request.starts_with("PATCH "))
        .count();
    assert!(
        patches >= fixture.content_blobs().len(),
        "{patches} PATCH requests"
    );
}

#[test]
fn target_without_tag_rejected() {
    let env = env();
    let source = seed(
        "single",
        &env.registries.plain,
        &unique_repository("cli/src"),
        "v1",
    );
    let repository = unique_repository("cli/notag");
    let target = format!("{}/{repository}", env.registries.plain.host);

    let output = pma2docker(&[
        "copy",
        &source,
        &target,
        "--plain-http",
        &env.registries.plain.host,
    ]);

    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("must name a tag"), "{stderr}");
    assert!(
        env.registry_requests("plain", &repository).is_empty(),
        "the target was written"
    );
}

#[test]
fn ca_file_without_certificate_rejected() {
    let env = env();
    let not_pem = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(not_pem.path(), "not a certificate\n").unwrap();
    let source = format!("{}/x:1", env.registries.tls.host);
    let target = format!("{}/y:1", env.registries.plain.host);

    let output = pma2docker(&[
        "copy",
        &source,
        &target,
        "--ca-file",
        not_pem.path().to_str().unwrap(),
    ]);

    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("contains no PEM certificate"), "{stderr}");
}
