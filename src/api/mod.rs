//! The operator's custom resource types.

pub mod claim;
pub mod sparse;
pub mod v1alpha1;

pub use claim::*;
pub use sparse::Sparse;
pub use v1alpha1::*;

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::{CustomResourceDefinition, JSON};
use kube::CustomResourceExt;

/// The CRD as the types describe it, plus what the derive cannot say: a new
/// object is served with `status.observedGeneration: 0`, so that kstatus (Flux,
/// `kubectl wait`) sees it as in progress until the operator has reconciled it,
/// never as current.
pub fn crd() -> CustomResourceDefinition {
    let mut crd = WhatsAppNumber::crd();
    for version in &mut crd.spec.versions {
        let status = version
            .schema
            .as_mut()
            .and_then(|s| s.open_api_v3_schema.as_mut())
            .and_then(|s| s.properties.as_mut())
            .and_then(|p| p.get_mut("status"));
        if let Some(status) = status {
            status.default = Some(JSON(serde_json::json!({"observedGeneration": 0})));
        }
    }
    crd
}

/// The CRD of the cluster-wide phone-number claims.
pub fn claim_crd() -> CustomResourceDefinition {
    WhatsAppNumberClaim::crd()
}

fn yaml(crd: &CustomResourceDefinition) -> String {
    // Long descriptions on one line, multi-line ones as literal blocks, as
    // `controller-gen` writes them.
    let options = serde_saphyr::ser_options! { folded_wrap_chars: 1 << 20 };
    let text = serde_saphyr::to_string_with_options(crd, options).expect("a CRD serializes to YAML");
    // Blank lines inside literal blocks come indented; they read the same empty.
    let lines: Vec<&str> = text.lines().map(|l| if l.trim().is_empty() { "" } else { l }).collect();
    format!("---\n{}\n", lines.join("\n"))
}

/// The CRD manifests as checked in under `crds/` and the Helm chart's
/// `files/crds/`: `(file name, YAML)`.
pub fn crd_files() -> Vec<(String, String)> {
    [crd(), claim_crd()]
        .iter()
        .map(|c| (format!("{}.yaml", c.metadata.name.clone().unwrap_or_default()), yaml(c)))
        .collect()
}
