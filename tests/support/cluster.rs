//! Kubernetes helpers for tests: a client for the local kube-apiserver, a namespace per
//! test, the CRD, and the controller binary running as a local process.

use k8s_openapi::api::core::v1::{Namespace, Secret};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
use kube::runtime::wait::{await_condition, conditions};
use kube::{Client, Config};
use pma2docker::api::ImageCopy;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::time::Duration;

use super::{RegistryInfo, env, repo_root, unique_repository};

/// Returns a client for the environment's kube-apiserver, as the admin user.
pub async fn client() -> Client {
    let kubeconfig = kube::config::Kubeconfig::read_from(&env().kubeconfig).unwrap();
    let config = Config::from_custom_kubeconfig(kubeconfig, &Default::default())
        .await
        .unwrap();
    Client::try_from(config).unwrap()
}

/// Applies the committed CRD once and waits until the API serves it.
pub async fn install_crd(client: &Client) {
    let path = repo_root().join("crds/imagecopies.pma2docker.io.json");
    let crd: CustomResourceDefinition =
        serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap();
    let api: Api<CustomResourceDefinition> = Api::all(client.clone());
    let name = crd.metadata.name.clone().unwrap();
    api.patch(
        &name,
        &PatchParams::apply("pma2docker-tests").force(),
        &Patch::Apply(&crd),
    )
    .await
    .unwrap();
    let established = await_condition(api, &name, conditions::is_crd_established());
    tokio::time::timeout(Duration::from_secs(30), established)
        .await
        .unwrap()
        .unwrap();
}

/// A namespace created for one test. Namespaces are not deleted by this environment (it
/// runs no namespace controller), so each test gets a unique one.
pub struct TestNamespace {
    pub name: String,
    pub client: Client,
}

impl TestNamespace {
    pub async fn new(prefix: &str) -> TestNamespace {
        let client = client().await;
        install_crd(&client).await;
        let name = unique_repository(prefix).replace('/', "-");
        let namespace: Namespace = serde_json::from_value(serde_json::json!({
            "metadata": { "name": name, "labels": { "pma2docker.io/test": "true" } }
        }))
        .unwrap();
        Api::<Namespace>::all(client.clone())
            .create(&PostParams::default(), &namespace)
            .await
            .unwrap();
        TestNamespace { name, client }
    }

    pub fn copies(&self) -> Api<ImageCopy> {
        Api::namespaced(self.client.clone(), &self.name)
    }

    pub fn secrets(&self) -> Api<Secret> {
        Api::namespaced(self.client.clone(), &self.name)
    }

    /// Creates or replaces a dockerconfigjson Secret for `registry` with `password`.
    pub async fn put_pull_secret(&self, name: &str, registry: &RegistryInfo, password: &str) {
        use base64::Engine;
        let pair = format!("{}:{password}", registry.username.as_deref().unwrap());
        let auth = base64::engine::general_purpose::STANDARD.encode(pair);
        let config = serde_json::json!({ "auths": { registry.host.clone(): { "auth": auth } } });
        let secret: Secret = serde_json::from_value(serde_json::json!({
            "apiVersion": "v1",
            "kind": "Secret",
            "metadata": { "name": name },
            "type": "kubernetes.io/dockerconfigjson",
            "stringData": { ".dockerconfigjson": config.to_string() }
        }))
        .unwrap();
        self.secrets()
            .patch(
                name,
                &PatchParams::apply("pma2docker-tests").force(),
                &Patch::Apply(&secret),
            )
            .await
            .unwrap();
    }

    /// Creates an ImageCopy from its spec as JSON.
    pub async fn create_copy(&self, name: &str, spec: serde_json::Value) -> ImageCopy {
        let object: ImageCopy = serde_json::from_value(serde_json::json!({
            "apiVersion": "pma2docker.io/v1alpha1",
            "kind": "ImageCopy",
            "metadata": { "name": name },
            "spec": spec
        }))
        .unwrap();
        self.copies()
            .create(&PostParams::default(), &object)
            .await
            .unwrap()
    }

    /// Waits until the Ready condition of the current generation has `status`, and returns
    /// the object. Panics with the last status seen on timeout.
    pub async fn wait_ready(&self, name: &str, status: &str, reason: Option<&str>) -> ImageCopy {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(90);
        loop {
            let object = self.copies().get(name).await.unwrap();
            if let Some(ready) = ready_condition(&object)
                && ready.status == status
                && reason.is_none_or(|r| ready.reason == r)
                && ready.observed_generation == object.metadata.generation
            {
                return object;
            }
            if tokio::time::Instant::now() > deadline {
                panic!(
                    "ImageCopy {name} did not reach Ready={status} ({reason:?}); status: {}",
                    serde_json::to_string_pretty(&object.status).unwrap()
                );
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// Deletes the test's ImageCopy objects, then the namespace. The objects go first
    /// because namespaces stay Terminating here, and their objects would stay too.
    pub async fn delete(self) {
        let _ = self
            .copies()
            .delete_collection(&DeleteParams::default(), &Default::default())
            .await;
        let api = Api::<Namespace>::all(self.client.clone());
        let _ = api.delete(&self.name, &DeleteParams::default()).await;
    }
}

pub fn ready_condition(
    object: &ImageCopy,
) -> Option<&k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition> {
    object
        .status
        .as_ref()?
        .conditions
        .iter()
        .find(|c| c.type_ == "Ready")
}

/// The controller process shared by the tests of one test binary.
pub struct ControllerProcess {
    pub metrics_address: String,
    pub log_file: PathBuf,
    _child: Mutex<Child>,
}

/// Starts `pma2docker controller` once per test binary, watching every namespace, with
/// trace logs in a file. A shell loop stops it within a second of the test process ending.
/// The CRD is installed first, since the controller exits when it cannot list ImageCopy.
pub async fn controller() -> &'static ControllerProcess {
    static CONTROLLER: tokio::sync::OnceCell<ControllerProcess> =
        tokio::sync::OnceCell::const_new();
    CONTROLLER
        .get_or_init(|| async {
            install_crd(&client().await).await;
            let env = env();
            let port = free_port();
            let metrics_address = format!("127.0.0.1:{port}");
            let log_dir = env.state_dir.join("logs");
            std::fs::create_dir_all(&log_dir).unwrap();
            let log_file = log_dir.join(format!("controller-{}.log", std::process::id()));
            let log = std::fs::File::create(&log_file).unwrap();
            let script = r#"
            "$@" & controller=$!
            while kill -0 "$PARENT_PID" 2>/dev/null && kill -0 "$controller" 2>/dev/null; do
                sleep 1
            done
            kill "$controller" 2>/dev/null
            wait "$controller"
        "#;
            let child = Command::new("bash")
                .arg("-c")
                .arg(script)
                .arg("controller-watchdog")
                .arg(env!("CARGO_BIN_EXE_pma2docker"))
                .args([
                    "controller",
                    "--metrics-address",
                    &metrics_address,
                    "--concurrency",
                    "8",
                ])
                .args(["--plain-http", &env.registries.plain.host])
                .args(["--plain-http", &env.registries.auth.host])
                .arg("--ca-file")
                .arg(env.registries.tls.ca_file.as_ref().unwrap())
                .env("KUBECONFIG", &env.kubeconfig)
                // Every target at trace level, so tests can prove that no secret is logged.
                .env("RUST_LOG", "trace")
                .env("PARENT_PID", std::process::id().to_string())
                .stdin(Stdio::null())
                .stdout(log.try_clone().unwrap())
                .stderr(log)
                .spawn()
                .expect("failed to start the controller");
            let ready_address = metrics_address.clone();
            tokio::task::spawn_blocking(move || wait_for_readiness(&ready_address))
                .await
                .unwrap();
            ControllerProcess {
                metrics_address,
                log_file,
                _child: Mutex::new(child),
            }
        })
        .await
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn wait_for_readiness(address: &str) {
    for _ in 0..300 {
        if let Ok(mut stream) = std::net::TcpStream::connect(address) {
            use std::io::{Read, Write};
            let _ = stream.write_all(b"GET /readyz HTTP/1.0\r\n\r\n");
            let mut response = String::new();
            let _ = stream.read_to_string(&mut response);
            if response.starts_with("HTTP/1.0 200") || response.starts_with("HTTP/1.1 200") {
                return;
            }
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    panic!("the controller did not become ready on {address}");
}

/// Fetches the controller's metrics text.
pub async fn metrics_text() -> String {
    let url = format!("http://{}/metrics", controller().await.metrics_address);
    reqwest::get(url).await.unwrap().text().await.unwrap()
}

/// Reads a counter or gauge value without labels, or with the exact label set given.
pub fn metric_value(text: &str, series: &str) -> f64 {
    text.lines()
        .find(|line| line.starts_with(series) && line[series.len()..].starts_with(' '))
        .and_then(|line| line.rsplit(' ').next())
        .and_then(|value| value.parse().ok())
        .unwrap_or(0.0)
}

/// Runs the environment's kubectl with its kubeconfig.
pub fn kubectl(args: &[&str], stdin: Option<&str>) -> std::process::Output {
    let env = env();
    let binary = env.bin.join("kubectl");
    let program = if binary.exists() {
        binary
    } else {
        PathBuf::from("kubectl")
    };
    let mut child = Command::new(program)
        .arg("--kubeconfig")
        .arg(&env.kubeconfig)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    if let Some(input) = stdin {
        use std::io::Write;
        child
            .stdin
            .take()
            .unwrap()
            .write_all(input.as_bytes())
            .unwrap();
    }
    drop(child.stdin.take());
    child.wait_with_output().unwrap()
}
