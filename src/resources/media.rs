//! The shared ReadWriteMany media claim.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{PersistentVolumeClaim, PersistentVolumeClaimSpec, VolumeResourceRequirements};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;

use super::names::{
    ANNOTATION_REGISTRATION, ANNOTATION_SCHEMA_DATABASES, ANNOTATION_SCHEMA_UPGRADE, ANNOTATION_SCHEMA_UPGRADE_BEGAN,
    ANNOTATION_SCHEMA_VERSION, ANNOTATION_SHARD_CHANGE, Names, component_labels,
};
use super::{owned_meta, with_applied_hash};
use crate::api::{ReclaimPolicy, RegistrationStatus, ShardRequestOutcome, ShardRequestStatus, WhatsAppNumber};

/// What the media claim the operator manages records beside the media, for
/// the databases the spec names: each outlives the status that said it.
#[derive(Clone, Copy, Debug, Default)]
pub struct Records<'a> {
    /// The newest version whose schema the databases hold (see
    /// [`ANNOTATION_SCHEMA_VERSION`]).
    pub schema_version: Option<&'a str>,
    /// The last shard request, as status has it (see [`ANNOTATION_SHARD_CHANGE`]).
    pub shard_change: Option<&'a ShardRequestStatus>,
    /// The registration, as status has it (see [`ANNOTATION_REGISTRATION`]).
    pub registration: Option<&'a RegistrationStatus>,
    /// What the upgrade in progress does to its record (see
    /// [`ANNOTATION_SCHEMA_UPGRADE`]); `None` keeps it.
    pub schema_upgrade: Option<&'a SchemaUpgrade>,
}

/// What a reconcile does to the record of an upgrade's schema Job. `began`
/// names the upgrade (see [`crate::upgrade::attempt`]).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum SchemaUpgrade {
    /// Kept as it is (until the schema version reaches it).
    #[default]
    Keep,
    /// The schema Job of the upgrade to `to` is made, or kept.
    Begun { to: String, began: String },
    /// The upgrade that began at `began` was called off before its Job
    /// started: its record goes, and one another upgrade wrote stays.
    CalledOff { began: String },
}

pub use crate::upgrade::SchemaUpgradeRecord;

/// The claim the operator manages, or `None` when the spec names an existing one.
///
/// With `reclaimPolicy: Retain` the claim carries no owner reference, so the
/// garbage collector leaves it (and the media on it) when the WhatsAppNumber is
/// deleted. Fields that are immutable once the claim exists (access modes,
/// storage class, volume mode) are copied from the live claim so an apply never
/// tries to change them; the size only ever grows.
/// `records` are kept on it for the databases it serves: a version recorded
/// earlier stays until a newer one replaces it, the last shard change carried
/// out until a later one does, the registration until status says another.
pub fn media_claim(
    wan: &WhatsAppNumber,
    live: Option<&PersistentVolumeClaim>,
    records: Records<'_>,
) -> Option<PersistentVolumeClaim> {
    let media = &wan.spec.media;
    if media.existing_claim.is_some() {
        return None;
    }
    let mut metadata = owned_meta(wan, Names::new(wan).media(), component_labels(wan, "media"));
    let databases = crate::api::database_identity(&wan.spec);
    let recorded = live.and_then(|c| schema_version_of(c, &databases));
    let version = crate::upgrade::running_version(recorded.as_deref(), records.schema_version);
    let recorded_change = live.and_then(|c| shard_change_of(c, &databases));
    let change = match (recorded_change, records.shard_change.and_then(shard_change_record)) {
        (Some(recorded), Some(new)) => Some(if new.at.0 > recorded.at.0 { new } else { recorded }),
        (recorded, new) => recorded.or(new),
    };
    let registration = records
        .registration
        .map(|r| RegistrationStatus { message: String::new(), ..r.clone() })
        .or_else(|| live.and_then(|c| registration_of(c, &databases)));
    // A record the schema version reached says nothing more: it neither
    // stays nor names the writer of a later one.
    let ahead = |u: &SchemaUpgradeRecord| version.as_deref().is_none_or(|v| crate::upgrade::newer(&u.version, v));
    let recorded_upgrade = live.and_then(|c| schema_upgrade_of(c, &databases)).filter(ahead);
    let upgrade = match (records.schema_upgrade.unwrap_or(&SchemaUpgrade::Keep), recorded_upgrade) {
        (SchemaUpgrade::Keep, recorded) => recorded,
        (SchemaUpgrade::Begun { to, began }, None) => {
            Some(SchemaUpgradeRecord { version: to.clone(), began: Some(began.clone()) })
        }
        // The newer version, and the upgrade that wrote the record first.
        (SchemaUpgrade::Begun { to, .. }, Some(r)) => Some(SchemaUpgradeRecord {
            version: crate::upgrade::running_version(Some(&r.version), Some(to)).unwrap_or_default(),
            began: r.began,
        }),
        (SchemaUpgrade::CalledOff { began }, recorded) => recorded.filter(|r| r.began.as_ref() != Some(began)),
    };
    let upgrade = upgrade.filter(ahead);
    if version.is_some() || change.is_some() || registration.is_some() || upgrade.is_some() {
        let annotations = metadata.annotations.get_or_insert_with(Default::default);
        if let Some(version) = version {
            annotations.insert(ANNOTATION_SCHEMA_VERSION.into(), version);
        }
        if let Some(json) = change.and_then(|c| serde_json::to_string(&c).ok()) {
            annotations.insert(ANNOTATION_SHARD_CHANGE.into(), json);
        }
        if let Some(json) = registration.and_then(|r| serde_json::to_string(&r).ok()) {
            annotations.insert(ANNOTATION_REGISTRATION.into(), json);
        }
        if let Some(upgrade) = upgrade {
            annotations.insert(ANNOTATION_SCHEMA_UPGRADE.into(), upgrade.version);
            if let Some(began) = upgrade.began {
                annotations.insert(ANNOTATION_SCHEMA_UPGRADE_BEGAN.into(), began);
            }
        }
        annotations.insert(ANNOTATION_SCHEMA_DATABASES.into(), databases);
    }
    if media.reclaim_policy == ReclaimPolicy::Retain {
        metadata.owner_references = None;
    }
    let live_spec = live.and_then(|c| c.spec.as_ref());
    let live_size = live_spec
        .and_then(|s| s.resources.as_ref())
        .and_then(|r| r.requests.as_ref())
        .and_then(|r| r.get("storage"))
        .cloned();
    let size = match live_size {
        Some(current) if quantity_bytes(&current) >= quantity_bytes(&media.size) => current,
        _ => media.size.clone(),
    };
    let spec = PersistentVolumeClaimSpec {
        access_modes: live_spec.and_then(|s| s.access_modes.clone()).or_else(|| Some(vec!["ReadWriteMany".into()])),
        storage_class_name: match live_spec {
            Some(s) => s.storage_class_name.clone(),
            None => media.storage_class_name.clone(),
        },
        volume_mode: live_spec.and_then(|s| s.volume_mode.clone()).or_else(|| Some("Filesystem".into())),
        resources: Some(VolumeResourceRequirements {
            requests: Some(BTreeMap::from([("storage".to_string(), size)])),
            ..Default::default()
        }),
        ..Default::default()
    };
    // The hash leaves out the class a cluster default filled in: copying it
    // back from the live claim is no new desired form, and costs no write.
    let mut hashed = PersistentVolumeClaim { metadata, spec: Some(spec), ..Default::default() };
    let filled_in = hashed
        .spec
        .as_mut()
        .and_then(|s| if media.storage_class_name.is_none() { s.storage_class_name.take() } else { None });
    let mut claim = with_applied_hash(hashed);
    if let Some(spec) = claim.spec.as_mut() {
        spec.storage_class_name = spec.storage_class_name.take().or(filled_in);
    }
    Some(claim)
}

/// The annotations of a media claim when its records are about `databases`
/// (`host:port/prefix`): records of other databases say nothing.
fn records_for<'c>(claim: &'c PersistentVolumeClaim, databases: &str) -> Option<&'c BTreeMap<String, String>> {
    let annotations = claim.metadata.annotations.as_ref()?;
    (annotations.get(ANNOTATION_SCHEMA_DATABASES).map(String::as_str) == Some(databases)).then_some(annotations)
}

/// The schema version a media claim records for `databases`
/// (`host:port/prefix`); nothing for other databases or a version that does
/// not read as one.
pub fn schema_version_of(claim: &PersistentVolumeClaim, databases: &str) -> Option<String> {
    let annotations = records_for(claim, databases)?;
    let version = annotations.get(ANNOTATION_SCHEMA_VERSION)?;
    crate::upgrade::catalog::Version::parse(version).map(|_| version.clone())
}

/// The version of an upgrade's schema Job that a media claim records for
/// `databases` (see [`ANNOTATION_SCHEMA_UPGRADE`]); nothing for other
/// databases or a version that does not read as one. It may be no newer
/// than the schema version recorded beside it, and then says nothing.
pub fn schema_upgrade_of(claim: &PersistentVolumeClaim, databases: &str) -> Option<SchemaUpgradeRecord> {
    let annotations = records_for(claim, databases)?;
    let version = annotations.get(ANNOTATION_SCHEMA_UPGRADE)?;
    crate::upgrade::catalog::Version::parse(version)?;
    Some(SchemaUpgradeRecord {
        version: version.clone(),
        began: annotations.get(ANNOTATION_SCHEMA_UPGRADE_BEGAN).cloned(),
    })
}

/// The last shard change carried out that a media claim records for
/// `databases`; nothing for other databases or a record that does not read.
pub fn shard_change_of(claim: &PersistentVolumeClaim, databases: &str) -> Option<ShardRequestStatus> {
    let annotations = records_for(claim, databases)?;
    serde_json::from_str(annotations.get(ANNOTATION_SHARD_CHANGE)?).ok()
}

/// Where the registration stood, as a media claim records it for
/// `databases`; nothing for other databases or a record that does not read.
pub fn registration_of(claim: &PersistentVolumeClaim, databases: &str) -> Option<RegistrationStatus> {
    let annotations = records_for(claim, databases)?;
    serde_json::from_str(annotations.get(ANNOTATION_REGISTRATION)?).ok()
}

/// What the claim keeps of a shard request: one the client accepted or did
/// not answer (one that may have changed the count), without its message.
/// A request from before the retry annotation was recorded is left out: its
/// status record alone says whether it spent a confirmation.
fn shard_change_record(request: &ShardRequestStatus) -> Option<ShardRequestStatus> {
    let carried_out = matches!(request.outcome, ShardRequestOutcome::Accepted | ShardRequestOutcome::Unanswered);
    (carried_out && request.retry_annotation.is_some())
        .then(|| ShardRequestStatus { message: String::new(), ..request.clone() })
}

/// Bytes in a storage quantity (`50Gi`, `100G`, `1Ti`, plain bytes). Quantities
/// the schema let through but this cannot read compare as 0, so the live size wins.
pub fn quantity_bytes(q: &Quantity) -> u128 {
    let s = q.0.trim();
    let split = s.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(s.len());
    let (number, suffix) = s.split_at(split);
    let Ok(value) = number.parse::<f64>() else { return 0 };
    let factor: f64 = match suffix {
        "" => 1.0,
        "k" => 1e3,
        "M" => 1e6,
        "G" => 1e9,
        "T" => 1e12,
        "P" => 1e15,
        "Ki" => 1024.0,
        "Mi" => 1024f64.powi(2),
        "Gi" => 1024f64.powi(3),
        "Ti" => 1024f64.powi(4),
        "Pi" => 1024f64.powi(5),
        _ => return 0,
    };
    (value * factor) as u128
}
