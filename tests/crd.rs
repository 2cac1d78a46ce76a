//! The committed CRD must match the one generated from the Rust types.

#[test]
fn committed_crd_is_current() {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/crds/imagecopies.pma2docker.io.json"
    );
    let committed =
        std::fs::read_to_string(path).expect("crds/imagecopies.pma2docker.io.json is missing");
    let generated = format!("{}\n", pma2docker::cli::crd_json());
    assert!(
        committed == generated,
        "crds/imagecopies.pma2docker.io.json is stale; regenerate it with: \
         cargo run -- crd > crds/imagecopies.pma2docker.io.json"
    );
}
