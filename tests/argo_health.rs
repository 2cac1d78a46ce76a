//! Runs the Go tests in `tests/argo/`: the Argo CD health check for ImageCopy objects
//! against status samples, in both of Argo CD's Lua modes, and the sample Argo CD
//! Application and ApplicationSet. Needs Go 1.24 or later on PATH; modules come from the
//! Go proxy and the build cache stays in Go's default location, outside the repository.

use std::path::PathBuf;
use std::process::Command;

#[test]
fn argo_health_go_tests_pass() {
    let module = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/argo");
    let output = match Command::new("go")
        .args(["test", "-count=1", "-v", "./..."])
        .current_dir(&module)
        // A go.work file in a parent folder would pull other modules into this build.
        .env("GOWORK", "off")
        .output()
    {
        Ok(output) => output,
        Err(error) => panic!(
            "cannot run `go` ({error}); install Go 1.24 or later and put it on PATH to run \
             the Argo CD health check tests in tests/argo"
        ),
    };
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "go test in {} failed ({}):\n{stdout}{stderr}",
        module.display(),
        output.status
    );
    // Both Lua modes must have run, so a renamed mode cannot silently drop half the cases.
    for mode in ["open-libs", "configmap-default"] {
        assert!(
            stdout.contains(&format!("--- PASS: TestHealthCases/{mode}/")),
            "no passing health case in mode {mode}:\n{stdout}"
        );
    }
}
