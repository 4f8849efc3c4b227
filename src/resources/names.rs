//! Names and labels of the objects built for a WhatsAppNumber.

use std::collections::BTreeMap;

use crate::api::WhatsAppNumber;
use kube::ResourceExt;

/// The single field manager of every server-side apply the operator makes.
pub const FIELD_MANAGER: &str = "whatsapp-operator";
/// Value of `app.kubernetes.io/managed-by` on everything the operator creates.
pub const MANAGED_BY: &str = "whatsapp-operator";
/// Value of `app.kubernetes.io/name`.
pub const APP_NAME: &str = "whatsapp-business-api";

pub const LABEL_NAME: &str = "app.kubernetes.io/name";
pub const LABEL_INSTANCE: &str = "app.kubernetes.io/instance";
pub const LABEL_COMPONENT: &str = "app.kubernetes.io/component";
pub const LABEL_MANAGED_BY: &str = "app.kubernetes.io/managed-by";
/// Selects every object the operator manages, to keep its watches small.
pub const LABEL_MANAGED_BY_SELECTOR: &str = "app.kubernetes.io/managed-by=whatsapp-operator";
pub const LABEL_VERSION: &str = "app.kubernetes.io/version";
pub const LABEL_PART_OF: &str = "app.kubernetes.io/part-of";
/// The phone number's digits (a `+` is not allowed in label values).
pub const LABEL_NUMBER: &str = "whatsapp.operators.dev/number";

/// Hash of the desired object, to skip writes that would change nothing.
pub const ANNOTATION_APPLIED_HASH: &str = "whatsapp.operators.dev/applied-hash";
/// On the media claim the operator manages: the newest client version whose
/// schema the number's databases hold. The claim outlives the WhatsAppNumber
/// (`reclaimPolicy: Retain`), so a number re-created over the same databases
/// knows it even without status or workloads, and never starts an older build.
pub const ANNOTATION_SCHEMA_VERSION: &str = "whatsapp.operators.dev/schema-version";
/// Beside it: the version an upgrade's schema Job was made for, written
/// before the Job is made (the schema may change from then on) and dropped
/// once the schema version reaches it, or when the upgrade is called off
/// (only while the Job has not started). A WhatsAppNumber re-created over
/// the same databases (deleted during the schema step, its status lost)
/// starts no version older than it, since the schema may be part-way there.
pub const ANNOTATION_SCHEMA_UPGRADE: &str = "whatsapp.operators.dev/schema-upgrade";
/// Beside it: when the upgrade that first wrote it began (its
/// `status.upgrade.startedAt`). Only that upgrade may call itself off and
/// take the record away; another one (a re-created object's) may not, since
/// the earlier Job may have run.
pub const ANNOTATION_SCHEMA_UPGRADE_BEGAN: &str = "whatsapp.operators.dev/schema-upgrade-began";
/// Beside it: the databases (`host:port/prefix`) that version is about. A
/// record of other databases (a new number under an old name, another
/// database host or prefix) says nothing and is replaced.
pub const ANNOTATION_SCHEMA_DATABASES: &str = "whatsapp.operators.dev/schema-databases";
/// On the media claim the operator manages, beside the schema record: the
/// last shard change the client accepted, or that got no answer (a
/// [`crate::api::ShardRequestStatus`] as JSON). Such a change spent
/// `spec.multiconnect.confirmShardChange`; with the status lost (restored
/// without it, or the object re-created over the same databases) the record
/// here still says so, and a confirmation left in the spec does not send
/// set-shards again on its own when the client reports another count.
pub const ANNOTATION_SHARD_CHANGE: &str = "whatsapp.operators.dev/shard-change";
/// On the media claim the operator manages, beside the schema record: where
/// the number's registration stood when status last said (a
/// [`crate::api::RegistrationStatus`] as JSON, without its message). With the
/// status lost, a number registered once and logged off since still waits for
/// a person's `request-code` annotation, a code already requested is not
/// requested again, and a refused request or code is not sent again.
pub const ANNOTATION_REGISTRATION: &str = "whatsapp.operators.dev/registration";
/// On the ConfigMap: the database credentials Secret's resource version when
/// it was last read, and the digest of its values then (see
/// [`super::config::CredentialsRecord`]). While the Secret stays at that
/// version, a restarted operator takes the digest from here instead of
/// reading the Secret again.
pub const ANNOTATION_CREDENTIALS_READ: &str = "whatsapp.operators.dev/credentials-read";
/// Hash of the configuration a pod template consumes (ConfigMap, credentials,
/// certificates), so a change rolls the pods that read it at start-up.
pub const ANNOTATION_CONFIG_HASH: &str = "whatsapp.operators.dev/config-hash";

/// The three workload tiers of a multiconnect deployment.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Tier {
    Master,
    Coreapp,
    Webapp,
}

impl Tier {
    pub const ALL: [Tier; 3] = [Tier::Master, Tier::Coreapp, Tier::Webapp];

    pub fn as_str(self) -> &'static str {
        match self {
            Tier::Master => "master",
            Tier::Coreapp => "coreapp",
            Tier::Webapp => "webapp",
        }
    }
}

const KEYS_SUFFIX: &str = "-keys";

/// Object names, all derived from the WhatsAppNumber's name.
#[derive(Clone, Debug)]
pub struct Names {
    base: String,
}

impl Names {
    pub fn new(wan: &WhatsAppNumber) -> Self {
        Self { base: wan.name_any() }
    }

    pub fn base(&self) -> &str {
        &self.base
    }

    pub fn config(&self) -> String {
        format!("{}-config", self.base)
    }
    /// The operator-generated Secret with the webapp JWT key and the API key.
    pub fn keys(&self) -> String {
        format!("{}{KEYS_SUFFIX}", self.base)
    }
    /// Whether `secret` is the key Secret of the WhatsAppNumber named `number`.
    pub fn is_keys_of(secret: &str, number: &str) -> bool {
        secret.strip_suffix(KEYS_SUFFIX) == Some(number)
    }
    pub fn media(&self) -> String {
        format!("{}-media", self.base)
    }
    /// StatefulSet / Deployment, its Service and its PodDisruptionBudget share this name.
    pub fn tier(&self, tier: Tier) -> String {
        format!("{}-{}", self.base, tier.as_str())
    }
}

/// Labels that identify one WhatsAppNumber's objects.
pub fn instance_labels(wan: &WhatsAppNumber) -> BTreeMap<String, String> {
    BTreeMap::from([
        (LABEL_NAME.to_string(), APP_NAME.to_string()),
        (LABEL_INSTANCE.to_string(), wan.name_any()),
        (LABEL_MANAGED_BY.to_string(), MANAGED_BY.to_string()),
    ])
}

/// Labels for an object of one component (a tier, or `config`, `media`).
pub fn component_labels(wan: &WhatsAppNumber, component: &str) -> BTreeMap<String, String> {
    let mut labels = instance_labels(wan);
    labels.insert(LABEL_COMPONENT.into(), component.into());
    labels.insert(LABEL_PART_OF.into(), "whatsapp-operator".into());
    labels.insert(LABEL_NUMBER.into(), number_digits(&wan.spec.phone_number));
    labels
}

/// The immutable subset used in workload selectors.
pub fn selector_labels(wan: &WhatsAppNumber, tier: Tier) -> BTreeMap<String, String> {
    BTreeMap::from([
        (LABEL_NAME.to_string(), APP_NAME.to_string()),
        (LABEL_INSTANCE.to_string(), wan.name_any()),
        (LABEL_COMPONENT.to_string(), tier.as_str().to_string()),
    ])
}

/// Label selector string matching everything the operator made for this object.
pub fn instance_selector(wan: &WhatsAppNumber) -> String {
    instance_labels(wan).iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>().join(",")
}

/// `+15550001111` -> `15550001111`.
pub fn number_digits(phone_number: &str) -> String {
    digits_of(phone_number).collect()
}

/// Whether [`number_digits`] of `phone_number` are `digits`, compared one by
/// one: no string is made (watch mappers check every number against an event).
pub fn has_number_digits(phone_number: &str, digits: &str) -> bool {
    digits_of(phone_number).eq(digits.chars())
}

fn digits_of(phone_number: &str) -> impl Iterator<Item = char> + '_ {
    phone_number.chars().filter(char::is_ascii_digit)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_key_secret_is_told_by_its_name() {
        let wan = crate::fixtures::sample();
        let name = wan.metadata.name.clone().unwrap_or_default();
        assert!(Names::is_keys_of(&Names::new(&wan).keys(), &name));
        assert!(!Names::is_keys_of(&name, &name));
        assert!(!Names::is_keys_of(&format!("{name}-keys-old"), &name));
        assert!(!Names::is_keys_of(&format!("x{name}-keys"), &name));
        assert!(!Names::is_keys_of("-keys", &name));
    }

    #[test]
    fn phone_numbers_match_by_their_digits_alone() {
        assert_eq!(number_digits("+1 (555) 000-1111"), "15550001111");
        assert!(has_number_digits("+1 555-000-1111", "15550001111"));
        assert!(has_number_digits("+15550001111", &number_digits("+1 (555) 000 1111")));
        assert!(!has_number_digits("+15550001111", "1555000111"), "a prefix is another number");
        assert!(!has_number_digits("+1555000111", "15550001111"));
        assert!(!has_number_digits("+15550001112", "15550001111"));
    }
}
