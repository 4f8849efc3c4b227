//! Pod-template pieces shared by the three tiers.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{
    Affinity, Capabilities, ConfigMapEnvSource, EmptyDirVolumeSource, EnvFromSource, EnvVar, EnvVarSource,
    LocalObjectReference, PersistentVolumeClaimVolumeSource, PodAffinityTerm, PodAntiAffinity, PodSecurityContext,
    PodSpec, ResourceRequirements, SeccompProfile, SecretKeySelector, SecretVolumeSource, SecurityContext, Volume,
    VolumeMount,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta};

use super::names::{ANNOTATION_CONFIG_HASH, LABEL_VERSION, Names, Tier, component_labels, selector_labels};
use super::{
    CLIENT_BIN_DIR, DATA_MOUNT, DATA_SUBPATH, DB_CA_DIR, LOG_MOUNT, MEDIA_MOUNT, MEDIA_SUBPATH, media_claim_name,
};
use crate::api::{PodOverrides, WhatsAppNumber};

pub const MEDIA_VOLUME: &str = "media";
pub const LOG_VOLUME: &str = "log";
pub const DB_CA_VOLUME: &str = "db-ca";

/// The tier's pod settings from the spec.
pub fn overrides(wan: &WhatsAppNumber, tier: Tier) -> &PodOverrides {
    match tier {
        Tier::Master => &wan.spec.master,
        Tier::Coreapp => &wan.spec.coreapp,
        Tier::Webapp => &wan.spec.webapp.pod,
    }
}

/// Pod template metadata: the operator's labels win over user-supplied ones, so
/// selectors keep matching whatever the spec says.
pub fn template_meta(wan: &WhatsAppNumber, tier: Tier, version: &str, config_hash: &str) -> ObjectMeta {
    let o = overrides(wan, tier);
    let mut labels = o.pod_labels.clone();
    labels.extend(component_labels(wan, tier.as_str()));
    labels.insert(LABEL_VERSION.into(), version.to_string());
    let mut annotations = o.pod_annotations.clone();
    annotations.insert(ANNOTATION_CONFIG_HASH.into(), config_hash.into());
    ObjectMeta { labels: Some(labels), annotations: Some(annotations), ..Default::default() }
}

/// The explicit command every container gets, as in all of Meta's templates
/// (an image once shipped a default command that did not start): wait for the
/// database, then launch the client.
pub fn command(wan: &WhatsAppNumber) -> Vec<String> {
    vec![
        format!("{CLIENT_BIN_DIR}/{}", wan.spec.database.engine.wait_script()),
        format!("{CLIENT_BIN_DIR}/launch_within_docker.sh"),
    ]
}

/// The tier's container security context: the spec's, else what Meta's
/// Kubernetes manifests set (`MKNOD` dropped; nothing in the client needs it).
pub fn security_context(wan: &WhatsAppNumber, tier: Tier) -> SecurityContext {
    overrides(wan, tier).security_context.as_deref().cloned().unwrap_or_else(|| SecurityContext {
        capabilities: Some(Capabilities { drop: Some(vec!["MKNOD".into()]), add: None }),
        ..Default::default()
    })
}

/// The tier's pod-level settings from the spec, on top of a built pod spec:
/// security context (default: the runtime's seccomp profile), priority class,
/// topology spread and service account.
pub fn with_pod_settings(wan: &WhatsAppNumber, tier: Tier, mut pod: PodSpec) -> PodSpec {
    let o = overrides(wan, tier);
    pod.security_context = Some(o.pod_security_context.as_deref().cloned().unwrap_or_else(|| PodSecurityContext {
        seccomp_profile: Some(SeccompProfile { type_: "RuntimeDefault".into(), localhost_profile: None }),
        ..Default::default()
    }));
    pod.priority_class_name = o.priority_class_name.clone();
    pod.topology_spread_constraints =
        (!o.topology_spread_constraints.is_empty()).then(|| o.topology_spread_constraints.clone());
    pod.service_account_name = o.service_account_name.clone();
    pod
}

/// Variables the shared ConfigMap and the workloads set: the spec's extra
/// environment cannot shadow them.
const OPERATOR_ENV_PREFIXES: [&str; 5] =
    ["WA_DB_", "WA_APP_MULTICONNECT", "COREAPP_", "WA_CONFIG_ON_DB", "WA_MASTER_NODE"];

/// The operator's environment followed by the spec's extra variables, minus
/// any the operator sets itself (those keep the operator's value).
pub fn with_extra_env(wan: &WhatsAppNumber, tier: Tier, mut env: Vec<EnvVar>) -> Vec<EnvVar> {
    let extra: Vec<EnvVar> = overrides(wan, tier)
        .env
        .iter()
        .filter(|e| !env.iter().any(|mine| mine.name == e.name))
        .filter(|e| !OPERATOR_ENV_PREFIXES.iter().any(|p| e.name.starts_with(p)))
        .cloned()
        .collect();
    env.extend(extra);
    env
}

/// `image:v<version>`.
pub fn image(repository: &str, version: &str) -> String {
    format!("{repository}:v{version}")
}

/// Meta's production guidance for multiconnect: at least 2 CPU and 4 GB per container.
pub fn resources(wan: &WhatsAppNumber, tier: Tier) -> ResourceRequirements {
    overrides(wan, tier).resources.as_deref().cloned().unwrap_or_else(|| ResourceRequirements {
        requests: Some(BTreeMap::from([
            ("cpu".to_string(), Quantity("2".into())),
            ("memory".to_string(), Quantity("4Gi".into())),
        ])),
        ..Default::default()
    })
}

/// Required anti-affinity on `kubernetes.io/hostname` within the tier, as Meta's
/// templates do, unless the spec brings its own affinity. Webapps keep apart
/// from the webapps of their own ReplicaSet only (`pod-template-hash`): a
/// rollout's surge pod may then share a node with a pod it replaces, so the
/// rollout finishes also when webapps fill every node they may run on.
pub fn affinity(wan: &WhatsAppNumber, tier: Tier) -> Affinity {
    overrides(wan, tier).affinity.as_deref().cloned().unwrap_or_else(|| Affinity {
        pod_anti_affinity: Some(PodAntiAffinity {
            required_during_scheduling_ignored_during_execution: Some(vec![PodAffinityTerm {
                label_selector: Some(LabelSelector {
                    match_labels: Some(selector_labels(wan, tier)),
                    ..Default::default()
                }),
                match_label_keys: (tier == Tier::Webapp).then(|| vec!["pod-template-hash".to_string()]),
                topology_key: "kubernetes.io/hostname".into(),
                ..Default::default()
            }]),
            ..Default::default()
        }),
        ..Default::default()
    })
}

/// The shared environment ConfigMap.
pub fn env_from(wan: &WhatsAppNumber) -> Vec<EnvFromSource> {
    vec![EnvFromSource {
        config_map_ref: Some(ConfigMapEnvSource { name: Names::new(wan).config(), optional: Some(false) }),
        ..Default::default()
    }]
}

/// `WA_DB_USERNAME` and `WA_DB_PASSWORD` from the user's Secret.
pub fn database_credentials_env(wan: &WhatsAppNumber) -> Vec<EnvVar> {
    let creds = &wan.spec.database.credentials_secret_ref;
    vec![
        secret_env("WA_DB_USERNAME", &creds.name, &creds.username_key),
        secret_env("WA_DB_PASSWORD", &creds.name, &creds.password_key),
    ]
}

pub fn secret_env(name: &str, secret: &str, key: &str) -> EnvVar {
    EnvVar {
        name: name.into(),
        value_from: Some(EnvVarSource {
            secret_key_ref: Some(SecretKeySelector { name: secret.into(), key: key.into(), optional: Some(false) }),
            ..Default::default()
        }),
        ..Default::default()
    }
}

pub fn plain_env(name: &str, value: &str) -> EnvVar {
    EnvVar { name: name.into(), value: Some(value.into()), ..Default::default() }
}

/// The shared media claim, the coreapps' log scratch space and the optional database CA.
pub fn volumes(wan: &WhatsAppNumber, with_log: bool) -> Vec<Volume> {
    let mut volumes = vec![Volume {
        name: MEDIA_VOLUME.into(),
        persistent_volume_claim: Some(PersistentVolumeClaimVolumeSource {
            claim_name: media_claim_name(wan),
            read_only: None,
        }),
        ..Default::default()
    }];
    if with_log {
        volumes.push(Volume {
            name: LOG_VOLUME.into(),
            empty_dir: Some(EmptyDirVolumeSource::default()),
            ..Default::default()
        });
    }
    if let Some(tls) = &wan.spec.database.tls {
        volumes.push(Volume {
            name: DB_CA_VOLUME.into(),
            secret: Some(SecretVolumeSource {
                secret_name: Some(tls.ca_secret_ref.name.clone()),
                optional: Some(false),
                ..Default::default()
            }),
            ..Default::default()
        });
    }
    volumes
}

/// Mounts with the subPaths of Meta's templates: `waent/media` at
/// `/usr/local/wamedia` and `waent/data` at `/usr/local/waent/data` on every
/// tier (the GCP and AWS templates mount both on webapps too); the log scratch
/// space on the coreapp image's tiers only (`with_log`).
pub fn volume_mounts(wan: &WhatsAppNumber, with_log: bool) -> Vec<VolumeMount> {
    let mut mounts = vec![
        VolumeMount {
            name: MEDIA_VOLUME.into(),
            mount_path: MEDIA_MOUNT.into(),
            sub_path: Some(MEDIA_SUBPATH.into()),
            ..Default::default()
        },
        VolumeMount {
            name: MEDIA_VOLUME.into(),
            mount_path: DATA_MOUNT.into(),
            sub_path: Some(DATA_SUBPATH.into()),
            ..Default::default()
        },
    ];
    if with_log {
        mounts.push(VolumeMount { name: LOG_VOLUME.into(), mount_path: LOG_MOUNT.into(), ..Default::default() });
    }
    if wan.spec.database.tls.is_some() {
        mounts.push(VolumeMount {
            name: DB_CA_VOLUME.into(),
            mount_path: DB_CA_DIR.into(),
            read_only: Some(true),
            ..Default::default()
        });
    }
    mounts
}

pub fn pull_secrets(wan: &WhatsAppNumber) -> Option<Vec<LocalObjectReference>> {
    let secrets = &wan.spec.images.pull_secrets;
    (!secrets.is_empty()).then(|| secrets.clone())
}

pub fn pull_policy(wan: &WhatsAppNumber) -> Option<String> {
    wan.spec.images.pull_policy.map(|p| p.as_str().to_string())
}

/// Optional maps become `None` when empty, so applied objects stay minimal.
pub fn non_empty<K, V>(map: &BTreeMap<K, V>) -> Option<BTreeMap<K, V>>
where
    K: Clone + Ord,
    V: Clone,
{
    (!map.is_empty()).then(|| map.clone())
}
