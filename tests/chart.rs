//! Tests of the Helm chart in `charts/pma2docker` and the plain manifests in `config/`,
//! against the local kube-apiserver of `tests/env`.
//!
//! No nodes run in that environment, so no pod ever starts: the tests check the objects the
//! chart creates, server-side validation, and RBAC through `kubectl auth can-i`. Releases
//! are uninstalled at the end of each test, also when it fails. The ImageCopy CRD stays in
//! the cluster, because the chart marks it with `helm.sh/resource-policy: keep` and the
//! other integration tests use it.

mod support;

use serde_json::Value;
use std::path::PathBuf;
use std::process::{Command, Output};
use std::sync::atomic::{AtomicU32, Ordering};

use support::cluster::{TestNamespace, kubectl};
use support::{env, repo_root};

const CRD_NAME: &str = "imagecopies.pma2docker.io";
const CRD_FILE: &str = "imagecopies.pma2docker.io.json";

fn chart_dir() -> PathBuf {
    repo_root().join("charts/pma2docker")
}

fn chart_path() -> String {
    chart_dir().to_string_lossy().into_owned()
}

/// Runs the environment's helm (v4) with its kubeconfig.
fn helm(args: &[&str]) -> Output {
    let env = env();
    Command::new(env.bin.join("helm"))
        .arg("--kubeconfig")
        .arg(&env.kubeconfig)
        .args(args)
        .output()
        .expect("failed to run helm from the test environment's bin folder")
}

/// Runs helm and returns its standard output. Panics with helm's error output on failure.
fn helm_ok(args: &[&str]) -> String {
    let output = helm(args);
    assert!(
        output.status.success(),
        "helm {} failed:\n{}",
        args.join(" "),
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).unwrap()
}

/// Runs kubectl and returns its output. Panics with kubectl's error output on failure.
fn kubectl_ok(args: &[&str], stdin: Option<&str>) -> Output {
    let output = kubectl(args, stdin);
    assert!(
        output.status.success(),
        "kubectl {} failed:\n{}",
        args.join(" "),
        String::from_utf8_lossy(&output.stderr)
    );
    output
}

/// Renders the chart with `helm template` and `--set` for each of `sets`.
fn render(release: &str, namespace: &str, sets: &[&str]) -> String {
    let chart = chart_path();
    let mut args = vec!["template", release, &chart, "--namespace", namespace];
    for set in sets {
        args.extend(["--set", set]);
    }
    helm_ok(&args)
}

/// Converts YAML manifests into JSON objects with kubectl's client-side dry run, which
/// parses them without sending anything to the apiserver.
fn to_objects(yaml: &str) -> Vec<Value> {
    let output = kubectl_ok(
        &["create", "--dry-run=client", "--output=json", "-f", "-"],
        Some(yaml),
    );
    // kubectl prints one JSON document per object, one after another.
    serde_json::Deserializer::from_slice(&output.stdout)
        .into_iter::<Value>()
        .map(|object| object.expect("kubectl printed invalid JSON"))
        .collect()
}

fn find<'a>(objects: &'a [Value], kind: &str) -> &'a Value {
    objects
        .iter()
        .find(|object| object["kind"] == kind)
        .unwrap_or_else(|| panic!("no {kind} among the rendered objects"))
}

fn kinds(objects: &[Value]) -> Vec<String> {
    objects
        .iter()
        .map(|object| object["kind"].as_str().unwrap().to_string())
        .collect()
}

/// Returns a release name unique to this test run and short enough for every object
/// name the chart derives from it.
fn release_name(prefix: &str) -> String {
    static COUNTER: AtomicU32 = AtomicU32::new(0);
    let count = COUNTER.fetch_add(1, Ordering::Relaxed);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos();
    let mixed = nanos ^ (std::process::id() << 12) ^ (count << 24);
    format!("{prefix}-{:06x}", mixed & 0xff_ffff)
}

/// A Helm release that is uninstalled when the value is dropped, also during a panic.
struct Release {
    name: String,
    namespace: String,
}

impl Release {
    fn install(prefix: &str, namespace: &str, extra: &[&str]) -> Release {
        let release = Release {
            name: release_name(prefix),
            namespace: namespace.to_string(),
        };
        let chart = chart_path();
        let mut args = vec!["install", &release.name, &chart, "--namespace", namespace];
        args.extend(extra);
        helm_ok(&args);
        release
    }

    /// Full name prefix of the release's objects, as `_helpers.tpl` builds it.
    fn fullname(&self) -> String {
        format!("{}-pma2docker", self.name)
    }

    fn subject(&self) -> String {
        format!(
            "system:serviceaccount:{}:{}",
            self.namespace,
            self.fullname()
        )
    }
}

impl Drop for Release {
    fn drop(&mut self) {
        let output = helm(&["uninstall", &self.name, "--namespace", &self.namespace]);
        if !output.status.success() && !std::thread::panicking() {
            panic!(
                "helm uninstall {} failed:\n{}",
                self.name,
                String::from_utf8_lossy(&output.stderr)
            );
        }
    }
}

/// Asks the apiserver whether `subject` may `verb` `resource`, through a
/// SubjectAccessReview (`kubectl auth can-i --as`). `namespace` None means all namespaces.
fn can_i(subject: &str, namespace: Option<&str>, verb: &str, resource: &str) -> bool {
    let (resource, subresource) = match resource.split_once('/') {
        Some((resource, subresource)) => (resource, Some(subresource)),
        None => (resource, None),
    };
    let mut args = vec!["auth", "can-i", verb, resource];
    let subresource_flag;
    if let Some(subresource) = subresource {
        subresource_flag = format!("--subresource={subresource}");
        args.push(&subresource_flag);
    }
    let as_flag = format!("--as={subject}");
    args.push(&as_flag);
    match namespace {
        Some(namespace) => args.extend(["--namespace", namespace]),
        None => args.push("--all-namespaces"),
    }
    let output = kubectl(&args, None);
    let result = String::from_utf8_lossy(&output.stdout).trim().to_string();
    match result.as_str() {
        "yes" => true,
        "no" => false,
        _ => panic!(
            "kubectl {} returned neither yes nor no: {result}\n{}",
            args.join(" "),
            String::from_utf8_lossy(&output.stderr)
        ),
    }
}

/// One `can_i` expectation: allowed or not, namespace (None for all), verb, resource.
type Access<'a> = (bool, Option<&'a str>, &'a str, &'a str);

/// Checks every expectation and fails once with the list of all that differ.
fn assert_access(subject: &str, expectations: &[Access<'_>]) {
    let mismatches: Vec<String> = expectations
        .iter()
        .filter(|(allowed, namespace, verb, resource)| {
            can_i(subject, *namespace, verb, resource) != *allowed
        })
        .map(|(allowed, namespace, verb, resource)| {
            let scope = namespace.unwrap_or("all namespaces");
            let expected = if *allowed { "allowed" } else { "denied" };
            format!("{verb} {resource} in {scope}: expected {expected}")
        })
        .collect();
    assert!(
        mismatches.is_empty(),
        "RBAC of {subject} differs:\n{}",
        mismatches.join("\n")
    );
}

/// Rewrites every number as a float, so `0` and `0.0` compare equal after a YAML round trip.
fn normalize_numbers(value: &Value) -> Value {
    match value {
        Value::Number(number) => serde_json::json!(number.as_f64().unwrap()),
        Value::Array(items) => Value::Array(items.iter().map(normalize_numbers).collect()),
        Value::Object(map) => Value::Object(
            map.iter()
                .map(|(key, item)| (key.clone(), normalize_numbers(item)))
                .collect(),
        ),
        other => other.clone(),
    }
}

fn env_value<'a>(container: &'a Value, name: &str) -> Option<&'a Value> {
    container["env"]
        .as_array()?
        .iter()
        .find(|variable| variable["name"] == name)
}

fn text_line<'a>(text: &'a str, key: &str) -> Option<&'a str> {
    text.lines()
        .find_map(|line| line.strip_prefix(key))
        .map(|rest| rest.trim().trim_matches('"'))
}

#[test]
fn chart_lint_strict() {
    let chart = chart_path();
    helm_ok(&["lint", "--strict", &chart]);
    helm_ok(&[
        "lint",
        "--strict",
        &chart,
        "--set",
        "watchNamespace=mirrors",
        "--set",
        "metrics.serviceMonitor.enabled=true",
        "--set",
        "registries.caCertificates.configMapName=registry-ca",
    ]);
}

#[test]
fn chart_crd_copy_matches_committed() {
    let committed = std::fs::read(repo_root().join("crds").join(CRD_FILE)).unwrap();
    let copy = std::fs::read(chart_dir().join("files").join(CRD_FILE)).unwrap();
    assert!(
        committed == copy,
        "charts/pma2docker/files/{CRD_FILE} differs from crds/{CRD_FILE}; update it with: \
         cp crds/{CRD_FILE} charts/pma2docker/files/"
    );
}

#[test]
fn versions_match_cargo() {
    let version = env!("CARGO_PKG_VERSION");
    let chart = std::fs::read_to_string(chart_dir().join("Chart.yaml")).unwrap();
    assert_eq!(
        text_line(&chart, "appVersion:"),
        Some(version),
        "Chart.yaml appVersion must equal the version in Cargo.toml"
    );

    let values = std::fs::read_to_string(chart_dir().join("values.yaml")).unwrap();
    let repository = text_line(&values, "  repository:").expect("values.yaml image.repository");
    let containerfile = std::fs::read_to_string(repo_root().join("Containerfile")).unwrap();
    assert!(
        containerfile.contains(repository),
        "the Containerfile's build instructions should name the chart's image {repository}"
    );

    let deployment =
        std::fs::read_to_string(repo_root().join("config/manager/deployment.yaml")).unwrap();
    let image = text_line(&deployment, "          image:").expect("image in deployment.yaml");
    assert_eq!(
        image,
        format!("{repository}:{version}"),
        "config/manager/deployment.yaml should run the image of this version"
    );
}

#[test]
fn rendered_crd_matches_committed() {
    let committed: Value =
        serde_json::from_slice(&std::fs::read(repo_root().join("crds").join(CRD_FILE)).unwrap())
            .unwrap();

    let objects = to_objects(&render("crd-check", "default", &[]));
    let crd = find(&objects, "CustomResourceDefinition");
    assert_eq!(crd["metadata"]["name"], CRD_NAME);
    assert_eq!(
        normalize_numbers(&crd["spec"]),
        normalize_numbers(&committed["spec"]),
        "the rendered CRD spec differs from crds/{CRD_FILE}"
    );
    assert_eq!(
        crd["metadata"]["annotations"]["helm.sh/resource-policy"], "keep",
        "crds.keep defaults to true"
    );

    let objects = to_objects(&render("crd-check", "default", &["crds.keep=false"]));
    let crd = find(&objects, "CustomResourceDefinition");
    assert!(
        crd["metadata"]["annotations"]["helm.sh/resource-policy"].is_null(),
        "crds.keep=false must drop the keep annotation"
    );

    let objects = to_objects(&render("crd-check", "default", &["crds.install=false"]));
    assert!(
        !kinds(&objects).contains(&"CustomResourceDefinition".to_string()),
        "crds.install=false must not render the CRD"
    );
}

#[test]
fn deployment_has_secure_defaults() {
    let objects = to_objects(&render("secure", "pma2docker-system", &[]));
    let deployment = find(&objects, "Deployment");
    let spec = &deployment["spec"];
    assert_eq!(spec["replicas"], 1, "one replica: no leader election");
    assert_eq!(spec["strategy"]["type"], "Recreate");

    let pod = &spec["template"]["spec"];
    assert_eq!(pod["serviceAccountName"], "secure-pma2docker");
    assert_eq!(pod["securityContext"]["runAsNonRoot"], true);
    assert_eq!(pod["securityContext"]["runAsUser"], 65532);
    assert_eq!(
        pod["securityContext"]["seccompProfile"]["type"],
        "RuntimeDefault"
    );

    let container = &pod["containers"][0];
    let security = &container["securityContext"];
    assert_eq!(security["allowPrivilegeEscalation"], false);
    assert_eq!(security["readOnlyRootFilesystem"], true);
    assert_eq!(security["capabilities"]["drop"], serde_json::json!(["ALL"]));
    for field in ["requests", "limits"] {
        for resource in ["cpu", "memory"] {
            assert!(
                container["resources"][field][resource].is_string(),
                "resources.{field}.{resource} is missing"
            );
        }
    }
    assert_eq!(container["livenessProbe"]["httpGet"]["path"], "/healthz");
    assert_eq!(container["readinessProbe"]["httpGet"]["path"], "/readyz");
    assert_eq!(container["args"][0], "controller");
    assert_eq!(
        container["image"],
        format!(
            "ghcr.io/pma2docker/pma2docker:{}",
            env!("CARGO_PKG_VERSION")
        )
    );
    let pod_name = env_value(container, "POD_NAME").expect("POD_NAME is set");
    assert_eq!(
        pod_name["valueFrom"]["fieldRef"]["fieldPath"],
        "metadata.name"
    );

    assert!(
        !kinds(&objects).contains(&"PodDisruptionBudget".to_string()),
        "a PodDisruptionBudget over one replica would block node drains"
    );
}

#[test]
fn values_become_controller_flags() {
    let objects = to_objects(&render(
        "flags",
        "pma2docker-system",
        &[
            "watchNamespace=mirrors",
            "controller.concurrency=8",
            "controller.jobs=2",
            "registries.plainHTTP={registry.internal:5000,cache.internal}",
            "registries.insecureTLS={self-signed.internal}",
            "registries.allow={*.example.com,docker.io}",
            "registries.deny={evil.example.com}",
            "registries.caCertificates.configMapName=registry-ca",
            "logging.format=json",
            "logging.level=info\\,pma2docker=debug",
            "metrics.listenAddress=::",
            "metrics.port=9090",
        ],
    ));
    let deployment = find(&objects, "Deployment");
    let pod = &deployment["spec"]["template"]["spec"];
    let container = &pod["containers"][0];

    let args: Vec<&str> = container["args"]
        .as_array()
        .unwrap()
        .iter()
        .map(|arg| arg.as_str().unwrap())
        .collect();
    assert_eq!(
        args,
        [
            "controller",
            "--concurrency=8",
            "--jobs=2",
            "--ca-file=/etc/pma2docker/ca/ca.crt"
        ]
    );

    let expected_env = [
        ("PMA2DOCKER_NAMESPACE", "mirrors"),
        ("PMA2DOCKER_METRICS_ADDRESS", "[::]:9090"),
        ("PMA2DOCKER_LOG_FORMAT", "json"),
        ("RUST_LOG", "info,pma2docker=debug"),
        (
            "PMA2DOCKER_PLAIN_HTTP",
            "registry.internal:5000,cache.internal",
        ),
        ("PMA2DOCKER_INSECURE_TLS", "self-signed.internal"),
        ("PMA2DOCKER_ALLOW_REGISTRIES", "*.example.com,docker.io"),
        ("PMA2DOCKER_DENY_REGISTRIES", "evil.example.com"),
    ];
    for (name, value) in expected_env {
        let variable = env_value(container, name).unwrap_or_else(|| panic!("{name} is not set"));
        assert_eq!(variable["value"], value, "value of {name}");
    }
    assert_eq!(container["ports"][0]["containerPort"], 9090);
    assert_eq!(pod["volumes"][0]["configMap"]["name"], "registry-ca");
    assert_eq!(
        container["volumeMounts"][0]["mountPath"],
        "/etc/pma2docker/ca"
    );

    // The binary must accept every flag and environment variable the chart sets.
    let help = Command::new(env!("CARGO_BIN_EXE_pma2docker"))
        .args(["controller", "--help"])
        .output()
        .unwrap();
    let help = String::from_utf8(help.stdout).unwrap();
    for arg in &args[1..] {
        let flag = arg.split('=').next().unwrap();
        assert!(
            help.contains(&format!("{flag} <")),
            "pma2docker controller has no flag {flag}"
        );
    }
    for variable in container["env"].as_array().unwrap() {
        let name = variable["name"].as_str().unwrap();
        // RUST_LOG is read by the log filter, which the help names in its text only.
        let marker = if name == "RUST_LOG" {
            name.to_string()
        } else {
            format!("[env: {name}=")
        };
        assert!(
            help.contains(&marker),
            "pma2docker controller --help does not list {name}"
        );
    }
}

#[tokio::test]
async fn rendered_objects_pass_server_dry_run() {
    let namespace = TestNamespace::new("chart-dry-run").await;
    let ns = namespace.name.as_str();
    // The Pod Security admission warns, but does not reject, when a Deployment's pod
    // template breaks the restricted profile; the test reads the warning.
    kubectl_ok(
        &[
            "label",
            "namespace",
            ns,
            "pod-security.kubernetes.io/warn=restricted",
        ],
        None,
    );

    let watch_namespace = format!("watchNamespace={ns}");
    let value_sets: [&[&str]; 4] = [
        &[],
        &[&watch_namespace],
        &[
            "crds.install=false",
            "serviceAccount.create=false",
            "serviceAccount.name=existing",
            "rbac.create=false",
            "metrics.service.enabled=false",
        ],
        &[
            "registries.plainHTTP={registry.internal:5000}",
            "registries.insecureTLS={self-signed.internal}",
            "registries.allow={*.example.com}",
            "registries.deny={evil.example.com}",
            "registries.caCertificates.configMapName=registry-ca",
            "extraEnv[0].name=HTTPS_PROXY",
            "extraEnv[0].value=http://proxy.internal:3128",
            "logging.format=json",
            "metrics.listenAddress=::",
            "podAnnotations.example\\.com/team=platform",
            "podLabels.team=platform",
            "nodeSelector.kubernetes\\.io/os=linux",
            "tolerations[0].key=dedicated",
            "tolerations[0].operator=Exists",
            "imagePullSecrets[0].name=ghcr",
            "image.digest=sha256:0000000000000000000000000000000000000000000000000000000000000000",
        ],
    ];
    for sets in value_sets {
        let manifests = render("dry-run", ns, sets);
        let output = kubectl(&["apply", "--dry-run=server", "-f", "-"], Some(&manifests));
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(
            output.status.success(),
            "server dry run rejected the chart rendered with {sets:?}:\n{stderr}"
        );
        assert!(
            !stderr.contains("would violate PodSecurity"),
            "the chart rendered with {sets:?} breaks the restricted Pod Security profile:\n{stderr}"
        );
    }

    namespace.delete().await;
}

#[test]
fn service_monitor_selects_metrics_service() {
    let chart = chart_path();
    let rendered = helm_ok(&[
        "template",
        "monitor",
        &chart,
        "--namespace",
        "observed",
        "--show-only",
        "templates/servicemonitor.yaml",
        "--set",
        "metrics.serviceMonitor.enabled=true",
        "--set",
        "metrics.serviceMonitor.labels.release=prometheus",
    ]);
    // No ServiceMonitor CRD exists in the test cluster, so this checks the text.
    for line in [
        "apiVersion: monitoring.coreos.com/v1",
        "kind: ServiceMonitor",
        "release: prometheus",
        "app.kubernetes.io/name: pma2docker",
        "app.kubernetes.io/instance: monitor",
        "- port: metrics",
        "path: /metrics",
        "- observed",
    ] {
        assert!(
            rendered.lines().any(|l| l.trim() == line),
            "the ServiceMonitor lacks the line {line:?}:\n{rendered}"
        );
    }

    let default = helm(&[
        "template",
        "monitor",
        &chart,
        "--show-only",
        "templates/servicemonitor.yaml",
    ]);
    assert!(
        !default.status.success(),
        "a ServiceMonitor is rendered although metrics.serviceMonitor.enabled defaults to false"
    );

    let without_service = helm(&[
        "template",
        "monitor",
        &chart,
        "--set",
        "metrics.serviceMonitor.enabled=true",
        "--set",
        "metrics.service.enabled=false",
    ]);
    let stderr = String::from_utf8_lossy(&without_service.stderr);
    assert!(!without_service.status.success());
    assert!(
        stderr.contains("metrics.serviceMonitor.enabled needs metrics.service.enabled"),
        "expected the error about metrics.service.enabled, got:\n{stderr}"
    );
}

#[test]
fn values_schema_rejects_mistakes() {
    let chart = chart_path();
    // (value, part of the path in the message, part of the reason in the message)
    let cases = [
        (
            "controller.concurency=8",
            "at '/controller'",
            "additional properties 'concurency' not allowed",
        ),
        (
            "watchNamespaces=mirrors",
            "at ''",
            "additional properties 'watchNamespaces' not allowed",
        ),
        (
            "resources.limit.memory=1Gi",
            "at '/resources'",
            "additional properties 'limit' not allowed",
        ),
        (
            "controller.concurrency=many",
            "at '/controller/concurrency'",
            "got string, want integer",
        ),
        ("controller.jobs=0", "at '/controller/jobs'", "minimum"),
        (
            "registries.plainHTTP=registry.internal",
            "at '/registries/plainHTTP'",
            "got string, want array",
        ),
        (
            "logging.format=yaml",
            "at '/logging/format'",
            "value must be one of 'text', 'json'",
        ),
        (
            "image.pullPolicy=Sometimes",
            "at '/image/pullPolicy'",
            "value must be one of",
        ),
    ];
    for (set, path, reason) in cases {
        let output = helm(&["template", "schema", &chart, "--set", set]);
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(
            !output.status.success(),
            "--set {set} was accepted; the schema should reject it"
        );
        assert!(
            stderr.contains(path) && stderr.contains(reason),
            "--set {set}: the error should name {path:?} and {reason:?}, got:\n{stderr}"
        );
    }

    let output = helm(&[
        "template",
        "schema",
        &chart,
        "--set-string",
        "crds.install=true",
    ]);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        !output.status.success(),
        "a string crds.install was accepted"
    );
    assert!(
        stderr.contains("at '/crds/install'") && stderr.contains("got string, want boolean"),
        "unexpected error for a string crds.install:\n{stderr}"
    );
}

#[tokio::test]
async fn install_upgrade_uninstall_keep_crd() {
    let namespace = TestNamespace::new("chart-release").await;
    let ns = namespace.name.as_str();

    // The CRD already exists, because other tests apply it. --take-ownership lets this
    // release adopt it, as on a cluster where the CRD was applied with kubectl.
    let release = Release::install("keep", ns, &["--take-ownership"]);
    let fullname = release.fullname();
    for (kind, name, namespaced) in [
        ("deployment", fullname.clone(), true),
        ("serviceaccount", fullname.clone(), true),
        ("service", format!("{fullname}-metrics"), true),
        ("clusterrole", fullname.clone(), false),
        ("clusterrolebinding", fullname.clone(), false),
    ] {
        let mut args = vec!["get", kind, &name, "--output=name"];
        if namespaced {
            args.extend(["--namespace", ns]);
        }
        kubectl_ok(&args, None);
    }
    let crd = crd_json();
    assert_eq!(
        crd["metadata"]["annotations"]["meta.helm.sh/release-name"],
        release.name.as_str(),
        "the release should own the CRD"
    );
    assert_eq!(
        crd["metadata"]["annotations"]["helm.sh/resource-policy"],
        "keep"
    );

    let copy = namespace
        .create_copy(
            "kept",
            serde_json::json!({
                "source": "registry.example.com/team/app:1.0",
                "target": "mirror.example.com/team/app:1.0",
                "suspend": true
            }),
        )
        .await;
    let uid = copy.metadata.uid.clone().unwrap();

    let chart = chart_path();
    helm_ok(&[
        "upgrade",
        &release.name,
        &chart,
        "--namespace",
        ns,
        "--set",
        "logging.format=json",
    ]);
    assert_eq!(copy_uid(&namespace, "kept").await, Some(uid.clone()));
    let deployment = kubectl_ok(
        &[
            "get",
            "deployment",
            &fullname,
            "--namespace",
            ns,
            "--output=json",
        ],
        None,
    );
    let deployment: Value = serde_json::from_slice(&deployment.stdout).unwrap();
    let container = &deployment["spec"]["template"]["spec"]["containers"][0];
    assert_eq!(
        env_value(container, "PMA2DOCKER_LOG_FORMAT").unwrap()["value"],
        "json",
        "the upgrade should apply the new value"
    );

    // Dropping the CRD from the release must not delete it, thanks to the keep policy.
    helm_ok(&[
        "upgrade",
        &release.name,
        &chart,
        "--namespace",
        ns,
        "--set",
        "crds.install=false",
    ]);
    assert!(
        crd_exists(),
        "helm upgrade with crds.install=false deleted the CRD"
    );
    assert_eq!(copy_uid(&namespace, "kept").await, Some(uid.clone()));

    let name = release.name.clone();
    drop(release);
    assert!(crd_exists(), "helm uninstall deleted the CRD");
    assert_eq!(copy_uid(&namespace, "kept").await, Some(uid));
    let clusterrole = kubectl(&["get", "clusterrole", &fullname], None);
    assert!(
        !clusterrole.status.success(),
        "helm uninstall {name} left the ClusterRole {fullname}"
    );

    namespace.delete().await;
}

fn crd_json() -> Value {
    let output = kubectl_ok(&["get", "crd", CRD_NAME, "--output=json"], None);
    serde_json::from_slice(&output.stdout).unwrap()
}

fn crd_exists() -> bool {
    kubectl(&["get", "crd", CRD_NAME, "--output=name"], None)
        .status
        .success()
}

async fn copy_uid(namespace: &TestNamespace, name: &str) -> Option<String> {
    let copy = namespace.copies().get_opt(name).await.unwrap()?;
    copy.metadata.uid
}

#[tokio::test]
async fn cluster_rbac_is_least_privilege() {
    let namespace = TestNamespace::new("chart-rbac").await;
    let other = TestNamespace::new("chart-rbac-other").await;
    let ns = Some(namespace.name.as_str());
    let elsewhere = Some(other.name.as_str());

    let release = Release::install("rbac", &namespace.name, &["--set", "crds.install=false"]);
    let subject = release.subject();
    let copies = "imagecopies.pma2docker.io";
    let status = "imagecopies.pma2docker.io/status";
    let events = "events.events.k8s.io";

    let mut expectations: Vec<Access<'_>> = Vec::new();
    for scope in [ns, elsewhere, None] {
        expectations.extend([
            (true, scope, "list", copies),
            (true, scope, "watch", copies),
            (true, scope, "list", "secrets"),
            (true, scope, "watch", "secrets"),
        ]);
    }
    for scope in [ns, elsewhere] {
        expectations.extend([
            (true, scope, "get", copies),
            (true, scope, "patch", status),
            (true, scope, "get", "secrets"),
            (true, scope, "create", events),
            (true, scope, "patch", events),
            // The controller writes only the status, never spec, labels or finalizers.
            (false, scope, "update", copies),
            (false, scope, "patch", copies),
            (false, scope, "create", copies),
            (false, scope, "delete", copies),
            (false, scope, "deletecollection", copies),
            (false, scope, "update", status),
            (
                false,
                scope,
                "update",
                "imagecopies.pma2docker.io/finalizers",
            ),
            (false, scope, "create", "secrets"),
            (false, scope, "update", "secrets"),
            (false, scope, "patch", "secrets"),
            (false, scope, "delete", "secrets"),
            (false, scope, "create", "events"),
            (false, scope, "delete", events),
            (false, scope, "get", "pods"),
            (false, scope, "list", "configmaps"),
            (false, scope, "create", "serviceaccounts/token"),
        ]);
    }
    expectations.extend([
        (false, None, "list", "namespaces"),
        (
            false,
            None,
            "list",
            "customresourcedefinitions.apiextensions.k8s.io",
        ),
        (
            false,
            None,
            "create",
            "clusterrolebindings.rbac.authorization.k8s.io",
        ),
    ]);
    assert_access(&subject, &expectations);

    drop(release);
    namespace.delete().await;
    other.delete().await;
}

#[tokio::test]
async fn watch_namespace_confines_rbac() {
    let home = TestNamespace::new("chart-home").await;
    let watched = TestNamespace::new("chart-watched").await;
    let other = TestNamespace::new("chart-unwatched").await;
    let watch_namespace = format!("watchNamespace={}", watched.name);

    let release = Release::install(
        "scoped",
        &home.name,
        &["--set", "crds.install=false", "--set", &watch_namespace],
    );
    let subject = release.subject();
    let copies = "imagecopies.pma2docker.io";
    let inside = Some(watched.name.as_str());

    let mut expectations: Vec<Access<'_>> = vec![
        (true, inside, "list", copies),
        (true, inside, "watch", copies),
        (true, inside, "get", copies),
        (true, inside, "patch", "imagecopies.pma2docker.io/status"),
        (true, inside, "get", "secrets"),
        (true, inside, "list", "secrets"),
        (true, inside, "watch", "secrets"),
        (true, inside, "create", "events.events.k8s.io"),
        (false, inside, "update", copies),
        (false, inside, "create", "secrets"),
    ];
    for outside in [Some(home.name.as_str()), Some(other.name.as_str()), None] {
        expectations.extend([
            (false, outside, "list", copies),
            (false, outside, "get", "secrets"),
            (false, outside, "list", "secrets"),
            (false, outside, "create", "events.events.k8s.io"),
        ]);
    }
    assert_access(&subject, &expectations);

    let fullname = release.fullname();
    let clusterrole = kubectl(&["get", "clusterrole", &fullname], None);
    assert!(
        !clusterrole.status.success(),
        "watchNamespace is set, but the ClusterRole {fullname} exists"
    );
    for kind in ["role", "rolebinding"] {
        let found = kubectl(
            &["get", kind, &fullname, "--namespace", &watched.name],
            None,
        );
        assert!(
            found.status.success(),
            "no {kind} {fullname} in the watched namespace {}",
            watched.name
        );
    }

    drop(release);
    home.delete().await;
    watched.delete().await;
    other.delete().await;
}

#[tokio::test]
async fn config_manifests_pass_server_dry_run() {
    let system = TestNamespace::new("config-system").await;
    let mirrors = TestNamespace::new("config-mirrors").await;
    kubectl_ok(
        &[
            "label",
            "namespace",
            &system.name,
            "pod-security.kubernetes.io/warn=restricted",
        ],
        None,
    );

    // The files name the namespaces pma2docker-system and mirrors; the test points them at
    // its own namespaces, so it creates nothing shared.
    let mut manifests = String::new();
    for file in [
        "config/manager/namespace.yaml",
        "config/rbac/service_account.yaml",
        "config/rbac/cluster_role.yaml",
        "config/rbac/cluster_role_binding.yaml",
        "config/rbac/namespaced/role.yaml",
        "config/rbac/namespaced/role_binding.yaml",
        "config/manager/deployment.yaml",
    ] {
        let text = std::fs::read_to_string(repo_root().join(file)).unwrap();
        let text = text
            .replace(
                "namespace: pma2docker-system",
                &format!("namespace: {}", system.name),
            )
            .replace(
                "namespace: mirrors",
                &format!("namespace: {}", mirrors.name),
            );
        manifests.push_str("---\n");
        manifests.push_str(&text);
    }
    let output = kubectl(&["apply", "--dry-run=server", "-f", "-"], Some(&manifests));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "server dry run rejected config/:\n{stderr}"
    );
    assert!(
        !stderr.contains("would violate PodSecurity"),
        "config/manager/deployment.yaml breaks the restricted Pod Security profile:\n{stderr}"
    );

    for folder in ["config/samples", "config/mirrors"] {
        let path = repo_root().join(folder);
        let output = kubectl(
            &[
                "apply",
                "--dry-run=server",
                "--recursive",
                "--namespace",
                &mirrors.name,
                "-f",
                &path.to_string_lossy(),
            ],
            None,
        );
        assert!(
            output.status.success(),
            "server dry run rejected {folder}:\n{}",
            String::from_utf8_lossy(&output.stderr)
        );
    }

    system.delete().await;
    mirrors.delete().await;
}

#[test]
fn config_rbac_matches_chart() {
    let rules_of = |object: &Value| object["rules"].clone();
    let read = |file: &str| {
        let text = std::fs::read_to_string(repo_root().join(file)).unwrap();
        to_objects(&text).remove(0)
    };
    let cluster_role = read("config/rbac/cluster_role.yaml");
    let role = read("config/rbac/namespaced/role.yaml");

    let chart_objects = to_objects(&render("rules", "default", &[]));
    let chart_cluster_role = find(&chart_objects, "ClusterRole");
    assert_eq!(
        rules_of(&cluster_role),
        rules_of(chart_cluster_role),
        "config/rbac/cluster_role.yaml and the chart's ClusterRole grant different rules"
    );
    assert_eq!(
        rules_of(&role),
        rules_of(chart_cluster_role),
        "config/rbac/namespaced/role.yaml and the chart's ClusterRole grant different rules"
    );

    let scoped = to_objects(&render("rules", "default", &["watchNamespace=mirrors"]));
    assert_eq!(
        rules_of(find(&scoped, "Role")),
        rules_of(chart_cluster_role),
        "the chart's Role and ClusterRole grant different rules"
    );
}
