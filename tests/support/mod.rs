//! Shared support for the integration tests: the local environment (registries, and the
//! kube-apiserver for controller tests), the fixture images and direct registry checks.
//!
//! The environment is the one `tests/env/up.sh` starts. Tests reuse a running one found in
//! `PMA2DOCKER_ENV_DIR` (default `target/testenv`), and start it when there is none.
#![allow(dead_code)]

pub mod cluster;
pub mod fault_proxy;

use serde::Deserialize;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU32, Ordering};

/// Connection details written by `tests/env/up.sh`.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Env {
    pub state_dir: PathBuf,
    /// `https://127.0.0.1:PORT` of the kube-apiserver.
    pub apiserver: String,
    pub kubeconfig: PathBuf,
    pub registries: Registries,
    pub bin: PathBuf,
}

#[derive(Debug, Deserialize)]
pub struct Registries {
    pub plain: RegistryInfo,
    pub auth: RegistryInfo,
    pub tls: RegistryInfo,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RegistryInfo {
    pub host: String,
    #[serde(default)]
    pub username: Option<String>,
    #[serde(default)]
    pub password: Option<String>,
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
}

pub fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn env_dir() -> PathBuf {
    std::env::var_os("PMA2DOCKER_ENV_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo_root().join("target/testenv"))
}

/// Returns the running environment, starting it first when needed.
pub fn env() -> &'static Env {
    static ENV: OnceLock<Env> = OnceLock::new();
    ENV.get_or_init(|| {
        let dir = env_dir();
        let status = Command::new("bash")
            .arg(repo_root().join("tests/env/up.sh"))
            .arg(&dir)
            .stdout(std::process::Stdio::null())
            .status()
            .expect("failed to run tests/env/up.sh");
        assert!(status.success(), "tests/env/up.sh {} failed", dir.display());
        let json = std::fs::read(dir.join("env.json")).expect("env.json missing after up.sh");
        serde_json::from_slice(&json).expect("env.json does not match the expected shape")
    })
}

impl Env {
    /// Requests a registry logged for `repository`, as `METHOD PATH` strings in log order.
    pub fn registry_requests(&self, registry: &str, repository: &str) -> Vec<String> {
        let log = self
            .state_dir
            .join("logs")
            .join(format!("registry-{registry}.log"));
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        let prefix = format!("/v2/{repository}/");
        text.lines()
            .filter_map(|line| {
                // Access log lines carry `"METHOD PATH HTTP/1.1"`.
                let request = line.split('"').nth(1)?;
                let mut parts = request.split(' ');
                let method = parts.next()?;
                let path = parts.next()?;
                path.starts_with(&prefix)
                    .then(|| format!("{method} {path}"))
            })
            .collect()
    }

    /// Counts, per blob digest, the uploads to `repository` that the registry completed
    /// (`PUT …?digest=` with status 201).
    pub fn completed_uploads(&self, registry: &str, repository: &str) -> BTreeMap<String, u32> {
        let log = self
            .state_dir
            .join("logs")
            .join(format!("registry-{registry}.log"));
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        let prefix = format!("PUT /v2/{repository}/blobs/uploads/");
        let mut counts = BTreeMap::new();
        for line in text.lines() {
            let mut fields = line.split('"');
            let (Some(_), Some(request), Some(after)) =
                (fields.next(), fields.next(), fields.next())
            else {
                continue;
            };
            let completed = after.trim_start().starts_with("201");
            if !completed || !request.starts_with(&prefix) {
                continue;
            }
            let Some(digest) = request.split("digest=").nth(1) else {
                continue;
            };
            let digest = digest
                .split(['&', ' '])
                .next()
                .unwrap_or_default()
                .replace("%3A", ":");
            *counts.entry(digest).or_insert(0) += 1;
        }
        counts
    }

    /// Stops one process of the environment (`kube-apiserver`, `registry-plain`, …) with
    /// SIGTERM, keeps it down for `down_for`, and starts it again with the same command line,
    /// environment and log file. Returns once its port accepts connections again.
    pub fn restart_process(&self, name: &str, down_for: std::time::Duration, port: u16) {
        let pid_file = self.state_dir.join("run").join(format!("{name}.pid"));
        let pid = std::fs::read_to_string(&pid_file)
            .unwrap()
            .trim()
            .to_string();
        let proc_dir = PathBuf::from(format!("/proc/{pid}"));
        let split = |bytes: Vec<u8>| -> Vec<String> {
            bytes
                .split(|b| *b == 0)
                .filter(|part| !part.is_empty())
                .map(|part| String::from_utf8_lossy(part).into_owned())
                .collect()
        };
        let command_line = split(std::fs::read(proc_dir.join("cmdline")).unwrap());
        let environment = split(std::fs::read(proc_dir.join("environ")).unwrap());
        let directory = std::fs::read_link(proc_dir.join("cwd")).unwrap();

        let status = Command::new("kill").args(["-TERM", &pid]).status().unwrap();
        assert!(status.success(), "failed to stop {name}");
        let address = format!("127.0.0.1:{port}");
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        while std::net::TcpStream::connect(&address).is_ok() {
            assert!(std::time::Instant::now() < deadline, "{name} did not stop");
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        std::thread::sleep(down_for);

        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
        let log_path = self.state_dir.join("logs").join(format!("{name}.log"));
        let log = std::fs::OpenOptions::new()
            .append(true)
            .open(&log_path)
            .unwrap();
        // The new process belongs to the environment and outlives this test; down.sh stops it
        // through the PID file, so it is not waited for here.
        #[allow(clippy::zombie_processes)]
        let child = Command::new(&command_line[0])
            .args(&command_line[1..])
            .env_clear()
            .envs(environment.iter().filter_map(|pair| pair.split_once('=')))
            .current_dir(directory)
            .stdin(std::process::Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap_or_else(|error| panic!("failed to restart {name}: {error}"));
        std::fs::write(&pid_file, format!("{}\n", child.id())).unwrap();
        while std::net::TcpStream::connect(&address).is_err() {
            assert!(
                std::time::Instant::now() < deadline,
                "{name} did not start again"
            );
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
    }

    /// Directory where a registry keeps its blobs and manifests.
    pub fn storage(&self, registry: &str) -> PathBuf {
        self.state_dir
            .join("registries")
            .join(registry)
            .join("storage")
    }
}

/// One image of `fixtures.json`.
#[derive(Clone, Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Fixture {
    pub tag: String,
    pub digest: String,
    pub media_type: String,
    pub platforms: Vec<FixturePlatform>,
    #[serde(default)]
    pub attestations: Vec<Attestation>,
    pub manifests: Vec<FixtureManifest>,
    pub blobs: Vec<FixtureBlob>,
    pub total_bytes: u64,
}

#[derive(Clone, Debug, Deserialize)]
pub struct FixturePlatform {
    pub platform: String,
    pub digest: String,
}

#[derive(Clone, Debug, Deserialize)]
pub struct Attestation {
    pub digest: String,
    pub subject: String,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct FixtureManifest {
    pub digest: String,
    pub media_type: String,
}

#[derive(Clone, Debug, Deserialize)]
pub struct FixtureBlob {
    pub digest: String,
    pub size: u64,
}

/// The fixture images, built once into `target/fixtures` (the build is deterministic, and
/// the script caches downloaded packages).
pub struct Fixtures {
    pub dir: PathBuf,
    pub images: BTreeMap<String, Fixture>,
}

pub fn fixtures() -> &'static Fixtures {
    static FIXTURES: OnceLock<Fixtures> = OnceLock::new();
    FIXTURES.get_or_init(|| {
        let dir = repo_root().join("target/fixtures");
        if !dir.join("fixtures.json").is_file() {
            // Build beside the final place and rename, so concurrent test binaries never
            // see a half-written directory.
            let staging = repo_root().join(format!("target/fixtures.{}", std::process::id()));
            let status = Command::new("python3")
                .arg(repo_root().join("tests/fixtures/build_images.py"))
                .arg(&staging)
                .stdout(std::process::Stdio::null())
                .status()
                .expect("failed to run build_images.py");
            assert!(status.success(), "build_images.py failed");
            if std::fs::rename(&staging, &dir).is_err() {
                let _ = std::fs::remove_dir_all(&staging);
            }
        }
        let json = std::fs::read(dir.join("fixtures.json")).expect("fixtures.json missing");
        let images = serde_json::from_slice(&json).expect("fixtures.json has an unexpected shape");
        Fixtures { dir, images }
    })
}

impl Fixture {
    /// Config and layer blobs, without the manifests that `blobs` also lists.
    pub fn content_blobs(&self) -> Vec<&FixtureBlob> {
        let is_manifest = |digest: &str| self.manifests.iter().any(|m| m.digest == digest);
        self.blobs
            .iter()
            .filter(|b| !is_manifest(&b.digest))
            .collect()
    }
}

impl Fixtures {
    pub fn image(&self, name: &str) -> &Fixture {
        self.images
            .get(name)
            .unwrap_or_else(|| panic!("no fixture named {name}"))
    }
}

/// Returns a repository name unique to this test run, such as `copy/attested-1234-3`.
pub fn unique_repository(prefix: &str) -> String {
    static COUNTER: AtomicU32 = AtomicU32::new(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos();
    format!("{prefix}-{}-{nanos}-{n}", std::process::id())
}

/// Pushes a fixture into `registry` as `repository:tag` and returns the full reference.
pub fn seed(fixture_name: &str, registry: &RegistryInfo, repository: &str, tag: &str) -> String {
    seed_layout(
        &fixtures().dir.join(fixture_name),
        registry,
        repository,
        tag,
    )
}

/// Builds, once per test binary, an image of 4 platforms with two 16 MiB incompressible
/// layers each (about 128 MiB), for tests that must interrupt a copy in progress.
pub fn large_layout() -> &'static Path {
    static LAYOUT: OnceLock<PathBuf> = OnceLock::new();
    LAYOUT.get_or_init(|| {
        let dir = repo_root().join(format!("target/fixtures-large.{}", std::process::id()));
        let status = Command::new("python3")
            .arg(repo_root().join("tests/fixtures/build_large_image.py"))
            .arg(&dir)
            .args(["--platforms", "4", "--layers", "2", "--layer-mib", "16"])
            .stdout(std::process::Stdio::null())
            .status()
            .expect("failed to run build_large_image.py");
        assert!(status.success(), "build_large_image.py failed");
        dir
    })
}

/// Pushes an OCI image layout into `registry` as `repository:tag`.
pub fn seed_layout(layout: &Path, registry: &RegistryInfo, repository: &str, tag: &str) -> String {
    let reference = format!("{}/{repository}:{tag}", registry.host);
    let mut command = Command::new("python3");
    command
        .arg(repo_root().join("tests/fixtures/push_layout.py"))
        .arg(layout)
        .arg(&reference);
    match &registry.ca_file {
        Some(ca) => {
            command.arg("--cacert").arg(ca);
        }
        None => {
            command.arg("--plain-http");
        }
    }
    let mut stdin_password = None;
    if let (Some(username), Some(password)) = (&registry.username, &registry.password) {
        command.args(["--username", username, "--password-stdin"]);
        stdin_password = Some(password.clone());
    }
    command
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null());
    let mut child = command.spawn().expect("failed to run push_layout.py");
    if let Some(password) = stdin_password {
        use std::io::Write;
        child
            .stdin
            .take()
            .unwrap()
            .write_all(password.as_bytes())
            .unwrap();
    }
    drop(child.stdin.take());
    let status = child.wait().unwrap();
    assert!(
        status.success(),
        "push_layout.py {} {reference} failed",
        layout.display()
    );
    reference
}

/// A small registry client for checks, independent of the product's own code.
pub struct Probe {
    http: reqwest::Client,
    base: String,
    registry: RegistryInfo,
}

pub const ACCEPT_ALL: &str = "application/vnd.oci.image.index.v1+json, \
    application/vnd.docker.distribution.manifest.list.v2+json, \
    application/vnd.oci.image.manifest.v1+json, \
    application/vnd.docker.distribution.manifest.v2+json";

impl Probe {
    pub fn new(registry: &RegistryInfo) -> Probe {
        let mut builder = reqwest::Client::builder();
        let scheme = match &registry.ca_file {
            Some(ca) => {
                let pem = std::fs::read(ca).unwrap();
                builder = builder.tls_certs_merge([reqwest::Certificate::from_pem(&pem).unwrap()]);
                "https"
            }
            None => "http",
        };
        Probe {
            http: builder.build().unwrap(),
            base: format!("{scheme}://{}", registry.host),
            registry: registry.clone(),
        }
    }

    fn request(&self, method: reqwest::Method, path: &str) -> reqwest::RequestBuilder {
        let request = self.http.request(method, format!("{}{path}", self.base));
        match (&self.registry.username, &self.registry.password) {
            (Some(username), Some(password)) => request.basic_auth(username, Some(password)),
            _ => request,
        }
    }

    /// Returns the digest a manifest tag or digest resolves to, or `None` on 404.
    pub async fn manifest_digest(&self, repository: &str, reference: &str) -> Option<String> {
        let response = self
            .request(
                reqwest::Method::HEAD,
                &format!("/v2/{repository}/manifests/{reference}"),
            )
            .header("Accept", ACCEPT_ALL)
            .send()
            .await
            .unwrap();
        if response.status() == 404 {
            return None;
        }
        assert!(
            response.status().is_success(),
            "HEAD manifest: {}",
            response.status()
        );
        let digest = response.headers().get("Docker-Content-Digest").unwrap();
        Some(digest.to_str().unwrap().to_string())
    }

    /// Fetches a manifest's bytes.
    pub async fn manifest(&self, repository: &str, reference: &str) -> Option<bytes::Bytes> {
        let response = self
            .request(
                reqwest::Method::GET,
                &format!("/v2/{repository}/manifests/{reference}"),
            )
            .header("Accept", ACCEPT_ALL)
            .send()
            .await
            .unwrap();
        if response.status() == 404 {
            return None;
        }
        assert!(
            response.status().is_success(),
            "GET manifest: {}",
            response.status()
        );
        Some(response.bytes().await.unwrap())
    }

    /// Pushes manifest bytes by digest and returns the digest.
    pub async fn put_manifest(&self, repository: &str, media_type: &str, bytes: Vec<u8>) -> String {
        let digest = sha256(&bytes);
        let response = self
            .request(
                reqwest::Method::PUT,
                &format!("/v2/{repository}/manifests/{digest}"),
            )
            .header("Content-Type", media_type)
            .body(bytes)
            .send()
            .await
            .unwrap();
        assert!(
            response.status().is_success(),
            "PUT manifest: {}",
            response.status()
        );
        digest
    }

    /// Fetches a blob and returns its sha256 digest and size, or `None` on 404.
    pub async fn blob_digest(&self, repository: &str, digest: &str) -> Option<(String, u64)> {
        let response = self
            .request(
                reqwest::Method::GET,
                &format!("/v2/{repository}/blobs/{digest}"),
            )
            .send()
            .await
            .unwrap();
        if response.status() == 404 {
            return None;
        }
        assert!(
            response.status().is_success(),
            "GET blob: {}",
            response.status()
        );
        let body = response.bytes().await.unwrap();
        Some((sha256(&body), body.len() as u64))
    }
}

/// Asserts that every manifest and blob of a fixture is in the target repository, by digest.
pub async fn assert_complete(registry: &RegistryInfo, repository: &str, fixture_name: &str) {
    let fixture = fixtures().image(fixture_name);
    let probe = Probe::new(registry);
    for manifest in &fixture.manifests {
        let bytes = probe.manifest(repository, &manifest.digest).await;
        let bytes = bytes.unwrap_or_else(|| panic!("manifest {} missing", manifest.digest));
        assert_eq!(sha256(&bytes), manifest.digest, "manifest bytes changed");
    }
    for blob in &fixture.blobs {
        let found = probe.blob_digest(repository, &blob.digest).await;
        assert_eq!(
            found,
            Some((blob.digest.clone(), blob.size)),
            "blob {}",
            blob.digest
        );
    }
}

pub fn sha256(bytes: &[u8]) -> String {
    use sha2::Digest;
    format!("sha256:{}", hex::encode(sha2::Sha256::digest(bytes)))
}

/// Path of a blob's data file in a registry's filesystem storage.
pub fn blob_data_path(storage: &Path, digest: &str) -> PathBuf {
    let hex = digest.strip_prefix("sha256:").unwrap();
    storage.join(format!(
        "docker/registry/v2/blobs/sha256/{}/{hex}/data",
        &hex[..2]
    ))
}
