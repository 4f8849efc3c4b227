//! What the caches keep of the children the operator applies: an outline of
//! each, not the object.
//!
//! A child's outline holds its identity, its controller's reference, the two
//! digests the apply step compares (the applied hash and the digest of the
//! fields the operator owns, see [`super::drift`]) and, by kind, the little
//! the reconcile reads: a workload's replica count, pod template version and
//! status, a Job's status. The typed objects cost 2.5 to 5 KB each in a store
//! even with their specs emptied (their fixed size and a map node per label
//! or annotation set); an outline holds no `ObjectMeta` and no map, only the
//! fields read, and costs a few hundred bytes with its strings.

use std::collections::BTreeMap;
use std::fmt::Debug;
use std::sync::Arc;

use k8s_openapi::NamespaceResourceScope;
use k8s_openapi::api::apps::v1::{Deployment, StatefulSet};
use k8s_openapi::api::batch::v1::{Job, JobStatus};
use k8s_openapi::api::core::v1::{ConfigMap, PodTemplateSpec, Service};
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::jiff::Timestamp;
use kube::Resource;
use kube::api::ObjectMeta;
use serde::Serialize;

use super::compact::Compact;
use super::store::Keyed;
use crate::api::WhatsAppNumber;
use crate::interned::intern;
use crate::resources::names::{
    ANNOTATION_APPLIED_HASH, ANNOTATION_CREDENTIALS_READ, FIELD_MANAGER, LABEL_COMPONENT, LABEL_INSTANCE,
    LABEL_MANAGED_BY, LABEL_NUMBER, LABEL_VERSION,
};

/// What tells a kept object and its state of life: namespace (shared, see
/// [`intern`]), name, uid (as its bytes, see [`Compact`]), generation and
/// when its deletion was asked for.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Identity {
    /// Empty for a cluster-scoped object.
    pub namespace: Arc<str>,
    pub name: Box<str>,
    pub uid: Compact,
    pub generation: Option<i64>,
    pub deletion: Option<Timestamp>,
}

impl Identity {
    pub fn of(meta: &ObjectMeta) -> Self {
        Self {
            namespace: intern(meta.namespace.as_deref().unwrap_or_default()),
            name: meta.name.as_deref().unwrap_or_default().into(),
            uid: Compact::new(meta.uid.as_deref().unwrap_or_default()),
            generation: meta.generation,
            deletion: meta.deletion_timestamp.as_ref().map(|t| t.0),
        }
    }

    /// Whether its deletion was asked for.
    pub fn deleting(&self) -> bool {
        self.deletion.is_some()
    }
}

/// The labels the operator reads on StatefulSets and node pods (fencing tells
/// a number, instance and role by them), as fields: a map with any entry
/// costs a node of eleven slots. The values many objects share are kept once.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ReadLabels {
    pub instance: Option<Box<str>>,
    pub component: Option<Arc<str>>,
    pub managed_by: Option<Arc<str>>,
    /// The phone number's digits.
    pub number: Option<Box<str>>,
}

impl ReadLabels {
    pub fn of(labels: Option<&BTreeMap<String, String>>) -> Self {
        let Some(labels) = labels else { return Self::default() };
        let own = |key: &str| labels.get(key).map(|v| Box::<str>::from(v.as_str()));
        let shared = |key: &str| labels.get(key).map(|v| intern(v));
        Self {
            instance: own(LABEL_INSTANCE),
            component: shared(LABEL_COMPONENT),
            managed_by: shared(LABEL_MANAGED_BY),
            number: own(LABEL_NUMBER),
        }
    }

    /// The value of a read label; `None` for any other key.
    pub fn get(&self, key: &str) -> Option<&str> {
        match key {
            LABEL_INSTANCE => self.instance.as_deref(),
            LABEL_COMPONENT => self.component.as_deref(),
            LABEL_MANAGED_BY => self.managed_by.as_deref(),
            LABEL_NUMBER => self.number.as_deref(),
            _ => None,
        }
    }
}

/// A kind whose objects the caches keep as [`Outline`]s.
pub trait Outlined: Resource<DynamicType = (), Scope = NamespaceResourceScope> + Serialize + Clone + Debug {
    /// What is read of an object of this kind besides its identity.
    type State: Clone + Debug + Default + PartialEq + Send + Sync + 'static;
    /// Whether its labels are read (those of [`ReadLabels`]).
    const LABELS: bool = false;

    /// Takes what is read of `live` besides its identity.
    fn state(live: &mut Self) -> Self::State;
}

/// A child as its cache keeps it.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Outline<K: Outlined> {
    pub identity: Identity,
    /// The read labels of a StatefulSet; `None` for other kinds.
    pub labels: Option<Box<ReadLabels>>,
    /// The applied-hash annotation: which desired form was last written.
    pub applied_hash: Option<Compact>,
    /// The digest of the fields the operator's field manager owns, with
    /// their live values; `None` when it owns none.
    pub owned_digest: Option<Compact>,
    pub state: K::State,
    /// The WhatsAppNumber that controls it, if one does: its owner
    /// reference's other fields are the same for every child, and not kept.
    pub controller: Option<Controller>,
}

/// The WhatsAppNumber that controls a child: the same for all its children,
/// so its name and uid are shared (see [`intern`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Controller {
    pub name: Arc<str>,
    pub uid: Arc<str>,
}

impl Controller {
    /// The controller reference of `meta`, if a WhatsAppNumber is its controller.
    pub fn of(meta: &ObjectMeta) -> Option<Self> {
        let group = WhatsAppNumber::group(&());
        meta.owner_references
            .iter()
            .flatten()
            .find(|r| r.controller == Some(true))
            .filter(|r| r.kind == WhatsAppNumber::kind(&()))
            .filter(|r| r.api_version.split_once('/').is_some_and(|(g, _)| g == group))
            .map(|r| Self { name: intern(&r.name), uid: intern(&r.uid) })
    }
}

impl<K: Outlined> Outline<K> {
    /// The outline of a live object as a watch or a write returns it, its
    /// managed fields still there; `uncompared` as in
    /// [`super::drift::owned_digest`].
    pub fn of(live: K, uncompared: &[&str]) -> Self {
        let owned_digest = serde_json::to_value(&live)
            .ok()
            .and_then(|value| super::drift::owned_digest(&value, FIELD_MANAGER, uncompared))
            .map(|d| Compact::new(&d));
        let mut live = live;
        let state = K::state(&mut live);
        let meta = live.meta();
        let applied_hash =
            meta.annotations.as_ref().and_then(|a| a.get(ANNOTATION_APPLIED_HASH)).map(|h| Compact::new(h));
        let labels = K::LABELS.then(|| Box::new(ReadLabels::of(meta.labels.as_ref())));
        Self {
            identity: Identity::of(meta),
            labels,
            applied_hash,
            owned_digest,
            state,
            controller: Controller::of(meta),
        }
    }

    /// Whether the WhatsAppNumber with this uid controls it.
    pub fn controlled_by(&self, uid: &str) -> bool {
        self.controller.as_ref().is_some_and(|c| &*c.uid == uid)
    }

    pub fn name(&self) -> &str {
        &self.identity.name
    }

    pub fn namespace(&self) -> &str {
        &self.identity.namespace
    }

    /// The value of a read label (see [`ReadLabels`]).
    pub fn label(&self, key: &str) -> Option<&str> {
        self.labels.as_ref()?.get(key)
    }
}

impl<K: Outlined + Send + Sync + 'static> Keyed for Outline<K> {
    fn key_namespace(&self) -> &str {
        &self.identity.namespace
    }
    fn key_name(&self) -> &str {
        &self.identity.name
    }
}

/// What is read of a StatefulSet or Deployment: its replica count, the
/// version its pod template runs, and its status counts.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Workload {
    /// `spec.replicas`.
    pub replicas: Option<i32>,
    /// The version label of its pod template.
    pub version: Option<String>,
    /// `None` before its controller wrote any status.
    pub status: Option<WorkloadStatus>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct WorkloadStatus {
    pub replicas: i32,
    pub ready_replicas: Option<i32>,
    pub updated_replicas: Option<i32>,
    pub observed_generation: Option<i64>,
    /// A StatefulSet whose update revision is its current one: no rolling
    /// update is under way (a pod missing or terminating is not one). Its
    /// pods may still say otherwise (see `status::stateful_set_tier`).
    pub update_complete: bool,
    /// A StatefulSet's update revision: the `controller-revision-hash` of
    /// its pods at the newest template.
    pub update_revision: Option<Box<str>>,
}

fn template_version(template: &PodTemplateSpec) -> Option<String> {
    template.metadata.as_ref()?.labels.as_ref()?.get(LABEL_VERSION).cloned()
}

impl Workload {
    fn of(replicas: Option<i32>, template: Option<&PodTemplateSpec>, status: Option<WorkloadStatus>) -> Self {
        Self { replicas, version: template.and_then(template_version), status }
    }
}

impl Outlined for StatefulSet {
    type State = Workload;
    const LABELS: bool = true;

    fn state(live: &mut Self) -> Workload {
        let spec = live.spec.as_ref();
        let status = live.status.take().map(|s| WorkloadStatus {
            replicas: s.replicas,
            ready_replicas: s.ready_replicas,
            updated_replicas: s.updated_replicas,
            observed_generation: s.observed_generation,
            update_complete: s.update_revision.is_some() && s.current_revision == s.update_revision,
            update_revision: s.update_revision.map(Into::into),
        });
        Workload::of(spec.and_then(|s| s.replicas), spec.map(|s| &s.template), status)
    }
}

impl Outlined for Deployment {
    type State = Workload;

    fn state(live: &mut Self) -> Workload {
        let spec = live.spec.as_ref();
        let status = live.status.take().map(|s| WorkloadStatus {
            replicas: s.replicas.unwrap_or(0),
            ready_replicas: s.ready_replicas,
            updated_replicas: s.updated_replicas,
            observed_generation: s.observed_generation,
            update_complete: false,
            update_revision: None,
        });
        Workload::of(spec.and_then(|s| s.replicas), spec.map(|s| &s.template), status)
    }
}

/// What is read of a schema Job: its status, and whether it is removed once
/// finished (the operator keeps a failed one for a person).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct JobOutline {
    pub status: Option<JobStatus>,
    pub expires: bool,
}

/// A schema Job is created once; of its spec only the time to live changes.
impl Outlined for Job {
    type State = JobOutline;

    fn state(live: &mut Self) -> JobOutline {
        let expires = live.spec.as_ref().is_some_and(|s| s.ttl_seconds_after_finished.is_some());
        JobOutline { status: live.status.take(), expires }
    }
}

impl Outline<Job> {
    /// The Job as [`crate::upgrade::job::state`] reads it: its status.
    pub fn job(&self) -> Job {
        Job {
            metadata: ObjectMeta { name: Some(self.name().to_string()), ..Default::default() },
            spec: None,
            status: self.state.status.clone(),
        }
    }

    /// Whether the Job is removed some time after it finished.
    pub fn expires(&self) -> bool {
        self.state.expires
    }

    /// Whether the Job ended for good (completed, or failed past its retries
    /// or deadline): it makes no more pods.
    pub fn finished(&self) -> bool {
        let conditions = self.state.status.as_ref().and_then(|s| s.conditions.as_deref()).unwrap_or_default();
        conditions.iter().any(|c| matches!(c.type_.as_str(), "Complete" | "Failed") && c.status == "True")
    }
}

/// The operator's ConfigMap: the record of the credentials it was made from
/// (see [`crate::resources::config::CredentialsRecord`]); nothing of its data.
impl Outlined for ConfigMap {
    type State = Option<String>;

    fn state(live: &mut Self) -> Option<String> {
        live.metadata.annotations.as_mut()?.remove(ANNOTATION_CREDENTIALS_READ)
    }
}

impl Outline<ConfigMap> {
    /// The credentials record annotation, as the live ConfigMap has it.
    pub fn credentials_record(&self) -> Option<&str> {
        self.state.as_deref()
    }
}

macro_rules! identity_only {
    ($($kind:ty),*) => {
        $(impl Outlined for $kind {
            type State = ();

            fn state(_: &mut Self) {}
        })*
    };
}

// Nothing of their specs is read.
identity_only!(Service, PodDisruptionBudget);

#[cfg(test)]
mod tests {
    use kube::ResourceExt;
    use serde_json::json;

    use super::super::store::Keyed;

    use super::*;
    use crate::controller::drift;

    #[test]
    fn a_workload_is_kept_as_its_identity_digests_replicas_version_and_status() {
        let applied = json!({"metadata": {"labels": {"a": "b"}}, "spec": {"replicas": 2}});
        let sts: StatefulSet = serde_json::from_value(json!({
            "metadata": {
                "name": "acme-master", "namespace": "team", "uid": "s1", "generation": 3,
                "labels": {"a": "b", LABEL_INSTANCE: "acme", LABEL_NUMBER: "15550001111"},
                "annotations": {ANNOTATION_APPLIED_HASH: "h1", "other": "x"},
                "ownerReferences": [
                    {"apiVersion": "whatsapp.operators.dev/v1alpha1", "kind": "WhatsAppNumber", "name": "acme",
                     "uid": "w1", "controller": true},
                    {"apiVersion": "v1", "kind": "ConfigMap", "name": "other", "uid": "c1"}
                ],
                "managedFields": [{"manager": FIELD_MANAGER, "operation": "Apply",
                    "fieldsV1": {"f:metadata": {"f:labels": {"f:a": {}}}, "f:spec": {"f:replicas": {}}}}]
            },
            "spec": {
                "replicas": 2, "serviceName": "acme-master", "selector": {"matchLabels": {"a": "b"}},
                "template": {"metadata": {
                        "labels": {LABEL_VERSION: "2.53.2", "team": "payments"},
                        "annotations": {"whatsapp.operators.dev/config-hash": "abc"}},
                    "spec": {"containers": [{"name": "master", "image": "x"}]}}
            },
            "status": {"replicas": 2, "readyReplicas": 1, "observedGeneration": 3}
        }))
        .unwrap();
        let kept = Outline::of(sts, &[]);
        assert_eq!(kept.applied_hash, Some(Compact::new("h1")));
        let owned = kept.owned_digest.clone().expect("an owned digest");
        assert!(matches!(owned, Compact::Bytes(..)), "kept as its bytes");
        assert_eq!(owned.to_string(), drift::desired_digest(&applied, &[]));
        assert_eq!(
            kept.state,
            Workload {
                replicas: Some(2),
                version: Some("2.53.2".into()),
                status: Some(WorkloadStatus {
                    replicas: 2,
                    ready_replicas: Some(1),
                    updated_replicas: None,
                    observed_generation: Some(3),
                    update_complete: false,
                    update_revision: None,
                }),
            }
        );
        assert_eq!(
            kept.labels.as_deref(),
            Some(&ReadLabels {
                instance: Some("acme".into()),
                number: Some("15550001111".into()),
                ..Default::default()
            }),
            "only the labels the operator reads"
        );
        assert_eq!((kept.label(LABEL_INSTANCE), kept.label("a")), (Some("acme"), None));
        assert_eq!(kept.controller, Some(Controller { name: "acme".into(), uid: "w1".into() }));
        assert!(kept.controlled_by("w1") && !kept.controlled_by("c1"));
        assert_eq!(
            kept.identity,
            Identity {
                namespace: "team".into(),
                name: "acme-master".into(),
                uid: "s1".into(),
                generation: Some(3),
                deletion: None
            }
        );
        assert_eq!((kept.key_namespace(), kept.key_name()), ("team", "acme-master"));
    }

    #[test]
    fn only_a_whatsappnumber_counts_as_a_childs_controller() {
        let with_owner = |api_version: &str, kind: &str, controller: bool| {
            let service: Service = serde_json::from_value(json!({"metadata": {"name": "s", "ownerReferences": [
                {"apiVersion": api_version, "kind": kind, "name": "acme", "uid": "w1", "controller": controller}]}}))
            .unwrap();
            Outline::of(service, &[]).controller
        };
        let acme = Some(Controller { name: "acme".into(), uid: "w1".into() });
        assert_eq!(with_owner("whatsapp.operators.dev/v1alpha1", "WhatsAppNumber", true), acme);
        assert_eq!(with_owner("whatsapp.operators.dev/v1", "WhatsAppNumber", true), acme, "another version");
        assert_eq!(with_owner("whatsapp.operators.dev/v1alpha1", "WhatsAppNumber", false), None, "an owner alone");
        assert_eq!(with_owner("apps/v1", "WhatsAppNumber", true), None, "another group's kind");
        assert_eq!(with_owner("whatsapp.operators.dev/v1alpha1", "WhatsAppNumberClaim", true), None);
    }

    #[test]
    fn a_child_not_applied_by_the_operator_has_no_owned_digest() {
        let service: Service = serde_json::from_value(json!({
            "metadata": {"name": "s", "labels": {LABEL_INSTANCE: "acme"},
                "annotations": {ANNOTATION_APPLIED_HASH: "h"}},
            "spec": {"ports": [{"port": 80}]}
        }))
        .unwrap();
        let kept = Outline::of(service, &[]);
        assert_eq!(kept.owned_digest, None, "written by someone else: the apply step writes it");
        assert_eq!(kept.applied_hash, Some(Compact::new("h")));
        assert_eq!(kept.labels, None, "nothing reads a Service's labels");
    }

    #[test]
    fn the_configmap_is_kept_as_its_credentials_record() {
        let map: ConfigMap = serde_json::from_value(json!({
            "metadata": {"name": "acme-config", "annotations": {ANNOTATION_CREDENTIALS_READ: "12 a,b digest", "x": "y"}},
            "data": {"config": "a long rendered file"}
        }))
        .unwrap();
        let kept = Outline::of(map, &[]);
        assert_eq!(kept.credentials_record(), Some("12 a,b digest"));
    }

    #[test]
    fn a_job_is_kept_as_its_status() {
        let job: Job = serde_json::from_value(json!({
            "metadata": {"name": "acme-schema-2-53-2", "namespace": "team", "labels": {"a": "b"}},
            "spec": {"ttlSecondsAfterFinished": 86400, "template": {"spec": {"containers": [{"name": "schema", "image": "x"}]}}},
            "status": {"succeeded": 1}
        }))
        .unwrap();
        let kept = Outline::of(job.clone(), &[]);
        assert_eq!(kept.job().status.and_then(|s| s.succeeded), Some(1));
        assert_eq!(kept.job().name_any(), "acme-schema-2-53-2");
        assert!(kept.job().spec.is_none());
        assert!(kept.expires());
        let mut kept_for_ever = job;
        kept_for_ever.spec.as_mut().unwrap().ttl_seconds_after_finished = None;
        assert!(!Outline::of(kept_for_ever, &[]).expires());
    }
}
