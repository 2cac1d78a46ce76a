//! The local control plane itself: CRDs, the status subresource and RBAC behave as on a
//! real cluster, because they are a real kube-apiserver and etcd.

mod support;

use kube::api::{Patch, PatchParams};
use serde_json::json;
use support::cluster::TestNamespace;
use support::{env, repo_root};

#[tokio::test]
async fn status_subresource_round_trip() {
    let namespace = TestNamespace::new("api-status").await;
    let created = namespace
        .create_copy(
            "roundtrip",
            json!({ "source": "a.example/x:1", "target": "b.example/y:1" }),
        )
        .await;
    assert!(created.status.is_none());

    let status = json!({
        "apiVersion": "pma2docker.io/v1alpha1",
        "kind": "ImageCopy",
        "status": { "observedGeneration": 1, "targetDigest": "sha256:abc", "indexRewritten": false }
    });
    let params = PatchParams::apply("api-test").force();
    namespace
        .copies()
        .patch_status("roundtrip", &params, &Patch::Apply(&status))
        .await
        .unwrap();

    let read = namespace.copies().get("roundtrip").await.unwrap();
    let read_status = read.status.expect("status written");
    assert_eq!(read_status.target_digest.as_deref(), Some("sha256:abc"));
    assert_eq!(read_status.observed_generation, Some(1));
    // A status write never changes the spec or the generation.
    assert_eq!(read.spec, created.spec);
    assert_eq!(read.metadata.generation, created.metadata.generation);
    namespace.delete().await;
}

#[test]
fn rbac_denies_what_was_not_granted() {
    let env = env();
    let output = std::process::Command::new("bash")
        .arg(repo_root().join("tests/env/check-rbac.sh"))
        .arg(&env.state_dir)
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "check-rbac.sh failed:\n{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}
