//! `whatsapp.operators.dev/v1alpha1` `WhatsAppNumberClaim`: which
//! WhatsAppNumber may run a phone number, one object per number for the whole
//! cluster. Cluster-scoped and named from the number's digits, so that its
//! creation is atomic whatever namespace an operator runs in: of several
//! installations and objects racing for one number, exactly one creates it.
//! The operator creates and deletes claims; people only read them, or delete
//! one by hand as the documented way to hand a number over.

use kube::{CustomResource, KubeSchema};
use serde::{Deserialize, Serialize};

/// The name of the claim of a phone number: `whatsapp-number-<digits>`.
pub fn claim_name(phone_number: &str) -> String {
    let digits: String = phone_number.chars().filter(char::is_ascii_digit).collect();
    format!("whatsapp-number-{digits}")
}

/// Who holds a phone number.
#[derive(CustomResource, KubeSchema, Deserialize, Serialize, Clone, Debug, PartialEq)]
#[kube(
    group = "whatsapp.operators.dev",
    version = "v1alpha1",
    kind = "WhatsAppNumberClaim",
    plural = "whatsappnumberclaims",
    shortname = "wanclaim",
    category = "whatsapp",
    doc = "A WhatsAppNumberClaim says which WhatsAppNumber may run a phone number, for the whole cluster: the operator creates one per number before it starts anything, and a second WhatsAppNumber of that number waits until it is released.",
    validation = Rule::new("self.metadata.name == 'whatsapp-number-' + self.spec.phoneNumber.substring(1)").message("metadata.name must be whatsapp-number- followed by the digits of spec.phoneNumber"),
    printcolumn(name = "Number", type_ = "string", json_path = ".spec.phoneNumber"),
    printcolumn(name = "Holder", type_ = "string", json_path = ".spec.holder"),
    printcolumn(name = "Installation", type_ = "string", json_path = ".spec.installation"),
    printcolumn(name = "Age", type_ = "date", json_path = ".metadata.creationTimestamp")
)]
#[serde(rename_all = "camelCase")]
pub struct WhatsAppNumberClaimSpec {
    /// The phone number, E.164.
    #[schemars(regex(pattern = r"^\+[1-9][0-9]{6,14}$"))]
    #[x_kube(validation = Rule::new("self == oldSelf").message("phoneNumber is immutable"))]
    pub phone_number: String,

    /// The WhatsAppNumber that holds the number: `namespace/name/uid` (the
    /// uid tells a re-created object from the old one).
    #[schemars(length(min = 5, max = 400), regex(pattern = r"^[^/]+/[^/]+/[^/]+$"))]
    pub holder: String,

    /// The operator installation that granted the claim: its namespace. An
    /// installation leaves numbers claimed through another one alone.
    #[schemars(length(min = 1, max = 63))]
    pub installation: String,
}
