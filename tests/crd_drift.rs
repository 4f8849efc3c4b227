//! The checked-in CRD manifests must be exactly what `crdgen` writes from the
//! Rust types, one file per CRD and no other. Regenerate with
//! `hack/generate.sh` (`cargo run --bin crdgen -- crds`, copied to the chart's
//! files/crds/, which templates/crds.yaml renders).

fn check(dir: &str) {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(dir);
    let files = whatsapp_operator::api::crd_files();
    for (name, generated) in &files {
        let path = dir.join(name);
        let checked_in = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        assert!(
            &checked_in == generated,
            "{} drifted from the Rust types; run hack/generate.sh and commit the result",
            path.display()
        );
    }
    let mut present: Vec<String> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .filter(|n| n.ends_with(".yaml"))
        .collect();
    present.sort();
    let mut expected: Vec<String> = files.into_iter().map(|(n, _)| n).collect();
    expected.sort();
    assert_eq!(present, expected, "{} holds a CRD the types no longer generate", dir.display());
}

#[test]
fn crds_directory_matches_the_types() {
    check("crds");
}

#[test]
fn chart_crds_match_the_types() {
    check("charts/whatsapp-operator/files/crds");
}
