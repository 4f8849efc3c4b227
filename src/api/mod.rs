//! The operator's custom resource types.

pub mod v1alpha1;

pub use v1alpha1::*;

use kube::CustomResourceExt;

/// The CRD manifest as checked in under `crds/` and the Helm chart's `crds/`.
pub fn crd_yaml() -> String {
    let crd = WhatsAppNumber::crd();
    format!("---\n{}", serde_yaml::to_string(&crd).expect("a CRD serializes to YAML"))
}
