//! Builders: pure functions from a WhatsAppNumber (and what was read for it) to
//! the Kubernetes objects that run it. Nothing here talks to the API server.

pub mod config;
pub mod disruption;
pub mod media;
pub mod monitoring;
pub mod names;
pub mod pods;
pub mod schema_job;
pub mod webapp;
pub mod workloads;

#[cfg(test)]
mod tests;

use std::collections::BTreeMap;

use k8s_openapi::api::apps::v1::{Deployment, StatefulSet};
use k8s_openapi::api::core::v1::{ConfigMap, PersistentVolumeClaim, Service};
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use kube::api::ObjectMeta;
use kube::{Resource, ResourceExt};
use serde::Serialize;
use sha2::{Digest, Sha256};

use crate::api::WhatsAppNumber;
use names::{ANNOTATION_APPLIED_HASH, Tier};

/// Media as Meta's templates mount it: one RWX claim, two subPaths.
pub const MEDIA_MOUNT: &str = "/usr/local/wamedia";
pub const MEDIA_SUBPATH: &str = "waent/media";
pub const DATA_MOUNT: &str = "/usr/local/waent/data";
pub const DATA_SUBPATH: &str = "waent/data";
pub const LOG_MOUNT: &str = "/usr/local/waent/log";
/// Where the database CA Secret is mounted; `WA_DB_SSL_CA` points into it.
pub const DB_CA_DIR: &str = "/etc/whatsapp/db-ca";
/// Where Meta's images keep their start scripts.
pub const CLIENT_BIN_DIR: &str = "/opt/whatsapp/bin";
/// The webapp's HTTPS port.
pub const WEBAPP_PORT: i32 = 443;

/// What the builders need besides the WhatsAppNumber itself: facts read from the
/// cluster by the fetch step. Keeping them explicit keeps the builders pure.
#[derive(Clone, Debug, Default)]
pub struct BuildInputs {
    /// The media claim as it exists now, if the operator created it earlier:
    /// its immutable fields are kept as they are.
    pub live_media_claim: Option<PersistentVolumeClaim>,
    /// Digest of the database credentials; a change rolls every pod.
    pub credentials_digest: String,
    /// The credentials Secret's resource version the digest is of, recorded
    /// with it on the ConfigMap.
    pub credentials_version: Option<String>,
    /// Digest of the database CA, when one is configured.
    pub database_ca_digest: Option<String>,
    /// Digest of the webapp keys (JWT signing key and API key): a refilled
    /// key restarts every webapp, so no two replicas hold different keys.
    pub webapp_keys_digest: Option<String>,
    /// Digest of the webapp certificate the client accepted last (see
    /// `status.webappCertificate`); a new one restarts the webapps, which read
    /// it at start-up.
    pub webapp_certificate_digest: Option<String>,
    /// Coreapp replicas when a shard change is under way (see `sharding`);
    /// `None` means `shards + standbyCoreapps`.
    pub coreapp_replicas: Option<i32>,
    /// What an upgrade in progress needs; `None` runs everything at `spec.version`.
    pub shape: Option<crate::upgrade::procedure::Shape>,
    /// The newest version whose schema the databases hold, recorded on the
    /// media claim; `None` until the first schema exists.
    pub schema_version: Option<String>,
    /// What the upgrade in progress does to the media claim's record of its
    /// schema Job (see [`names::ANNOTATION_SCHEMA_UPGRADE`]).
    pub schema_upgrade: media::SchemaUpgrade,
    /// The last shard request, from status, for the media claim's record of
    /// the last shard change carried out.
    pub shard_request: Option<crate::api::ShardRequestStatus>,
    /// The registration, from status, for the media claim's record of it.
    pub registration: Option<crate::api::RegistrationStatus>,
}

/// Every object the operator keeps for one WhatsAppNumber (the generated key
/// Secret aside, which is created once and never re-applied).
#[derive(Clone, Debug)]
pub struct Children {
    pub config: ConfigMap,
    /// `None` when `spec.media.existingClaim` names a claim the user manages.
    pub media: Option<PersistentVolumeClaim>,
    pub master_service: Service,
    pub coreapp_service: Service,
    pub webapp_service: Service,
    pub masters: StatefulSet,
    pub coreapps: StatefulSet,
    pub webapps: Deployment,
    /// Only tiers with more than one pod get a budget.
    pub disruption_budgets: Vec<PodDisruptionBudget>,
}

/// Builds every child object of a WhatsAppNumber.
pub fn build(wan: &WhatsAppNumber, inputs: &BuildInputs) -> Children {
    let credentials = inputs
        .credentials_version
        .as_deref()
        .map(|version| config::CredentialsRecord::new(wan, version, &inputs.credentials_digest));
    let config = with_applied_hash(config::config_map(wan, credentials.as_ref()));
    let config_digest = digest(&config.data);
    let pod_config_hash = |extra: Option<&String>| {
        digest(&(&config_digest, &inputs.credentials_digest, &inputs.database_ca_digest, extra))
    };
    let core_hash = pod_config_hash(None);
    let web_hash = pod_config_hash(Some(&digest(&(&inputs.webapp_certificate_digest, &inputs.webapp_keys_digest))));

    let spec_version = &wan.spec.version;
    let (node_version, webapp_version, masters_up, coreapps_up, webapps_up) = match &inputs.shape {
        Some(s) => (&s.node_version, &s.webapp_version, s.masters_running, s.coreapps_running, s.webapps_running),
        None => (spec_version, spec_version, true, true, true),
    };
    let masters = (!masters_up).then_some(0);
    let coreapps = if coreapps_up { inputs.coreapp_replicas } else { Some(0) };

    Children {
        media: media::media_claim(
            wan,
            inputs.live_media_claim.as_ref(),
            media::Records {
                schema_version: inputs.schema_version.as_deref(),
                shard_change: inputs.shard_request.as_ref(),
                registration: inputs.registration.as_ref(),
                schema_upgrade: Some(&inputs.schema_upgrade),
            },
        ),
        master_service: workloads::headless_service(wan, Tier::Master),
        coreapp_service: workloads::headless_service(wan, Tier::Coreapp),
        webapp_service: webapp::service(wan),
        masters: workloads::stateful_set(wan, Tier::Master, node_version, &core_hash, masters),
        coreapps: workloads::stateful_set(wan, Tier::Coreapp, node_version, &core_hash, coreapps),
        webapps: webapp::deployment(wan, webapp_version, &web_hash, (!webapps_up).then_some(0)),
        disruption_budgets: disruption::budgets(wan),
        config,
    }
}

/// Name of the claim the pods mount: the user's, or the operator's.
pub fn media_claim_name(wan: &WhatsAppNumber) -> String {
    wan.spec.media.existing_claim.clone().unwrap_or_else(|| names::Names::new(wan).media())
}

/// Metadata of a child owned (and garbage-collected) with the WhatsAppNumber.
pub fn owned_meta(wan: &WhatsAppNumber, name: String, labels: BTreeMap<String, String>) -> ObjectMeta {
    ObjectMeta {
        name: Some(name),
        namespace: wan.namespace(),
        labels: Some(labels),
        owner_references: wan.controller_owner_ref(&()).map(|r| vec![r]),
        ..Default::default()
    }
}

/// Hex SHA-256 of a value's JSON form, shortened; stable across runs.
pub fn digest<T: Serialize>(value: &T) -> String {
    let bytes = serde_json::to_vec(value).expect("builder output serializes");
    let sum = Sha256::digest(bytes);
    sum.iter().take(16).map(|b| format!("{b:02x}")).collect()
}

/// Stamps the object with the digest of its own desired form, so the apply step
/// can tell that the live object already is what this reconcile would write.
pub fn with_applied_hash<K: Resource + Serialize>(mut obj: K) -> K {
    let hash = digest(&obj);
    obj.meta_mut().annotations.get_or_insert_with(Default::default).insert(ANNOTATION_APPLIED_HASH.into(), hash);
    obj
}
