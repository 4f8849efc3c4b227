//! Apply: server-side apply of the built children with one field manager,
//! writing only what differs, and removal of children the spec no longer wants.

use std::collections::HashMap;
use std::fmt::Debug;
use std::sync::Mutex;

use k8s_openapi::NamespaceResourceScope;
use k8s_openapi::api::core::v1::Secret;
use kube::api::{DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::{Api, Client, Resource, ResourceExt};
use serde::Serialize;
use serde::de::DeserializeOwned;

use super::error::{Error, Result};
use super::status::{Tiers, deployment_tier, stateful_set_tier};
use crate::api::WhatsAppNumber;
use crate::resources::names::{ANNOTATION_APPLIED_HASH, FIELD_MANAGER, LABEL_VERSION, instance_selector};
use crate::resources::{Children, config};
use crate::telemetry::metrics::Metrics;

/// What the operator last wrote for each child: the object's generation (or
/// resource version, for kinds without one) right after the write.
///
/// A child is re-applied when its desired form changed (the applied-hash
/// annotation differs) or when someone else changed it since (the marker moved);
/// otherwise the reconcile writes nothing. After a restart the memory is empty,
/// so the first reconcile re-applies every child once and corrects any drift.
#[derive(Default)]
pub struct AppliedMemory(Mutex<HashMap<(String, String, String), String>>);

impl AppliedMemory {
    fn key<K: Resource<DynamicType = ()>>(obj: &K) -> (String, String, String) {
        (K::kind(&()).into_owned(), obj.namespace().unwrap_or_default(), obj.name_any())
    }

    fn remember<K: Resource<DynamicType = ()>>(&self, obj: &K) {
        if let Some(m) = marker(obj) {
            self.0.lock().expect("memory lock").insert(Self::key(obj), m);
        }
    }

    fn matches<K: Resource<DynamicType = ()>>(&self, obj: &K) -> bool {
        let remembered = self.0.lock().expect("memory lock").get(&Self::key(obj)).cloned();
        remembered.is_some() && remembered == marker(obj)
    }
}

/// Generation for kinds whose spec changes bump it, else the resource version.
fn marker<K: Resource>(obj: &K) -> Option<String> {
    let meta = obj.meta();
    meta.generation.map(|g| format!("g{g}")).or_else(|| meta.resource_version.as_ref().map(|rv| format!("rv{rv}")))
}

pub struct Applier<'a> {
    client: &'a Client,
    namespace: String,
    metrics: &'a Metrics,
    memory: &'a AppliedMemory,
}

impl<'a> Applier<'a> {
    pub fn new(
        client: &'a Client,
        wan: &WhatsAppNumber,
        metrics: &'a Metrics,
        memory: &'a AppliedMemory,
    ) -> Result<Self> {
        let namespace = wan.namespace().ok_or(Error::MissingMetadata("namespace"))?;
        Ok(Self { client, namespace, metrics, memory })
    }

    fn api<K>(&self) -> Api<K>
    where
        K: Resource<DynamicType = (), Scope = NamespaceResourceScope>,
    {
        Api::namespaced(self.client.clone(), &self.namespace)
    }

    /// Applies every child and returns the tiers' observed states.
    pub async fn apply_children(&self, children: Children) -> Result<Tiers> {
        self.apply(&children.config).await?;
        if let Some(claim) = &children.media {
            self.apply(claim).await?;
        }
        self.apply(&children.master_service).await?;
        self.apply(&children.coreapp_service).await?;
        self.apply(&children.webapp_service).await?;
        let masters = self.apply(&children.masters).await?;
        let coreapps = self.apply(&children.coreapps).await?;
        let webapps = self.apply(&children.webapps).await?;
        for budget in &children.disruption_budgets {
            self.apply(budget).await?;
        }
        let version = |template: Option<&k8s_openapi::api::core::v1::PodTemplateSpec>| {
            template.and_then(|t| t.metadata.as_ref()?.labels.as_ref()?.get(LABEL_VERSION).cloned())
        };
        Ok(Tiers {
            masters: stateful_set_tier(&masters),
            coreapps: stateful_set_tier(&coreapps),
            webapps: deployment_tier(&webapps),
            versions: [
                version(masters.spec.as_ref().map(|s| &s.template)),
                version(coreapps.spec.as_ref().map(|s| &s.template)),
                version(webapps.spec.as_ref().map(|s| &s.template)),
            ],
        })
    }

    /// Server-side apply of one object, unless the live object already is what
    /// this reconcile would write. Returns the live object either way.
    pub async fn apply<K>(&self, desired: &K) -> Result<K>
    where
        K: Resource<DynamicType = (), Scope = NamespaceResourceScope> + Clone + Debug + Serialize + DeserializeOwned,
    {
        let api: Api<K> = self.api();
        let name = desired.name_any();
        let want = desired.annotations().get(ANNOTATION_APPLIED_HASH);
        if let Some(live) = api.get_opt(&name).await?
            && want.is_some()
            && live.annotations().get(ANNOTATION_APPLIED_HASH) == want
            && self.memory.matches(&live)
        {
            return Ok(live);
        }
        let live = api.patch(&name, &PatchParams::apply(FIELD_MANAGER).force(), &Patch::Apply(desired)).await?;
        self.metrics.record_write(&K::kind(&()), "apply");
        self.memory.remember(&live);
        Ok(live)
    }

    /// Creates the key Secret, or fills in keys missing from it; never changes
    /// a key that exists (`keys_secret` carries existing values over). Returns
    /// the Secret it wrote, if it wrote one.
    pub async fn ensure_keys(&self, wan: &WhatsAppNumber, existing: Option<&Secret>) -> Result<Option<Secret>> {
        let Some(secret) = config::keys_secret(wan, existing) else { return Ok(None) };
        let api: Api<Secret> = self.api();
        if existing.is_none() {
            let created = api
                .create(&PostParams { field_manager: Some(FIELD_MANAGER.into()), ..Default::default() }, &secret)
                .await?;
            self.metrics.record_write("Secret", "create");
            Ok(Some(created))
        } else {
            // The resource version in `secret` makes this fail rather than
            // overwrite a concurrent change; the next reconcile reads again.
            let updated = api
                .replace(
                    &secret.name_any(),
                    &PostParams { field_manager: Some(FIELD_MANAGER.into()), ..Default::default() },
                    &secret,
                )
                .await?;
            self.metrics.record_write("Secret", "update");
            Ok(Some(updated))
        }
    }

    /// Keeps the client's ServiceMonitor as the spec says. `had` is the name
    /// status recorded, so a spec without one costs no request. Returns the
    /// name kept, or why none could be (the Prometheus Operator's CRD missing).
    pub async fn service_monitor(
        &self,
        wan: &WhatsAppNumber,
        had: Option<&str>,
    ) -> Result<std::result::Result<Option<String>, String>> {
        use crate::resources::monitoring;
        let api: Api<kube::api::DynamicObject> =
            Api::namespaced_with(self.client.clone(), &self.namespace, &monitoring::resource());
        let missing_crd = |e: &kube::Error| matches!(e, kube::Error::Api(s) if s.code == 404);
        let Some(mut desired) = monitoring::service_monitor(wan) else {
            if let Some(name) = had {
                match api.delete(name, &DeleteParams::background()).await {
                    Ok(_) => self.metrics.record_write("ServiceMonitor", "delete"),
                    Err(e) if missing_crd(&e) => {}
                    Err(e) => return Err(e.into()),
                }
            }
            return Ok(Ok(None));
        };
        let name = desired.name_any();
        let hash = crate::resources::digest(&(&desired.metadata.labels, &desired.data));
        desired
            .metadata
            .annotations
            .get_or_insert_with(Default::default)
            .insert(ANNOTATION_APPLIED_HASH.into(), hash.clone());
        match api.get_opt(&name).await {
            Ok(Some(live)) if live.annotations().get(ANNOTATION_APPLIED_HASH) == Some(&hash) => {
                return Ok(Ok(Some(name)));
            }
            Ok(_) => {}
            Err(e) if missing_crd(&e) => {
                return Ok(Err("spec.monitoring.serviceMonitor needs the Prometheus Operator's ServiceMonitor CRD (monitoring.coreos.com/v1), which this cluster does not serve".into()));
            }
            Err(e) => return Err(e.into()),
        }
        let mut patch = serde_json::to_value(&desired)?;
        patch["apiVersion"] = "monitoring.coreos.com/v1".into();
        patch["kind"] = "ServiceMonitor".into();
        api.patch(&name, &PatchParams::apply(FIELD_MANAGER).force(), &Patch::Apply(patch)).await?;
        self.metrics.record_write("ServiceMonitor", "apply");
        Ok(Ok(Some(name)))
    }

    /// Creates a Job unless one of that name exists: a Job's template cannot
    /// change, and a finished Job is the record of what ran.
    pub async fn ensure_job(&self, job: &k8s_openapi::api::batch::v1::Job) -> Result<()> {
        let api: Api<k8s_openapi::api::batch::v1::Job> = self.api();
        if api.get_opt(&job.name_any()).await?.is_some() {
            return Ok(());
        }
        match api.create(&PostParams { field_manager: Some(FIELD_MANAGER.into()), ..Default::default() }, job).await {
            Ok(_) => {
                self.metrics.record_write("Job", "create");
                Ok(())
            }
            Err(kube::Error::Api(s)) if s.code == 409 => Ok(()),
            Err(e) => Err(e.into()),
        }
    }

    /// Deletes children of kind `K` that this WhatsAppNumber controls but the
    /// spec no longer asks for. Only kinds whose set can shrink are pruned, and
    /// never a PersistentVolumeClaim: media is user data.
    pub async fn prune<K>(&self, wan: &WhatsAppNumber, keep: &[String]) -> Result<()>
    where
        K: Resource<DynamicType = (), Scope = NamespaceResourceScope> + Clone + Debug + DeserializeOwned,
    {
        let api: Api<K> = self.api();
        let uid = wan.uid().ok_or(Error::MissingMetadata("uid"))?;
        let listed = api.list(&ListParams::default().labels(&instance_selector(wan))).await?;
        for obj in listed.items {
            let controlled = obj.owner_references().iter().any(|r| r.controller == Some(true) && r.uid == uid);
            let name = obj.name_any();
            if controlled && !keep.contains(&name) && obj.meta().deletion_timestamp.is_none() {
                tracing::info!(kind = %K::kind(&()), %name, "removing a child the spec no longer asks for");
                api.delete(&name, &DeleteParams::background()).await?;
                self.metrics.record_write(&K::kind(&()), "delete");
            }
        }
        Ok(())
    }
}
