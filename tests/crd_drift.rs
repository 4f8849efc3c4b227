//! The checked-in CRD manifests must be exactly what `crdgen` prints from the
//! Rust types. Regenerate with `cargo run --bin crdgen > crds/whatsappnumbers.whatsapp.operators.dev.yaml`
//! (and copy it to the chart's files/crds/, which templates/crds.yaml renders),
//! or run `hack/generate.sh`.

const FILE: &str = "whatsappnumbers.whatsapp.operators.dev.yaml";

fn check(dir: &str) {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(dir).join(FILE);
    let checked_in = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let generated = whatsapp_operator::api::crd_yaml();
    assert!(
        checked_in == generated,
        "{} drifted from the Rust types; run hack/generate.sh and commit the result",
        path.display()
    );
}

#[test]
fn crds_directory_matches_the_types() {
    check("crds");
}

#[test]
fn chart_crds_match_the_types() {
    check("charts/whatsapp-operator/files/crds");
}
