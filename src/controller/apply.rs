//! Apply: server-side apply of the built children with one field manager,
//! writing only what differs, and removal of children the spec no longer wants.
//!
//! Whether a child needs a write is decided from the live object alone, so
//! the first reconcile after a restart or a change of leader writes nothing
//! when nothing changed: the applied-hash annotation says whether the desired
//! form changed since the last write, and the digest of the fields the
//! operator owns ([`super::drift`]) says whether someone else changed one of
//! them since.

use k8s_openapi::NamespaceResourceScope;
use k8s_openapi::api::core::v1::Secret;
use kube::api::{DeleteParams, Patch, PatchParams, PostParams};
use kube::{Api, Client, Resource, ResourceExt};
use serde::Serialize;
use serde_json::Value;

use super::cache::{Cached, Caches};
use super::compact::Compact;
use super::drift;
use super::error::{Error, Result};
use super::status::{Tiers, deployment_tier, stateful_set_tier};
use super::store::Keyed;
use crate::api::{TierStatus, WhatsAppNumber};
use crate::resources::names::{ANNOTATION_APPLIED_HASH, FIELD_MANAGER, LABEL_COMPONENT, Tier};
use crate::resources::{Children, config};
use crate::telemetry::metrics::Metrics;

pub struct Applier<'a> {
    client: &'a Client,
    namespace: String,
    /// The WhatsAppNumber's name: its children's instance label.
    instance: String,
    metrics: &'a Metrics,
    caches: &'a Caches,
}

impl<'a> Applier<'a> {
    pub fn new(client: &'a Client, wan: &WhatsAppNumber, metrics: &'a Metrics, caches: &'a Caches) -> Result<Self> {
        let namespace = wan.namespace().ok_or(Error::MissingMetadata("namespace"))?;
        Ok(Self { client, namespace, instance: wan.name_any(), metrics, caches })
    }

    fn api<K>(&self) -> Api<K>
    where
        K: Resource<DynamicType = (), Scope = NamespaceResourceScope>,
    {
        Api::namespaced(self.client.clone(), &self.namespace)
    }

    /// Applies every child and returns the tiers' observed states.
    /// Applies every child. With `create_workloads` false (a first deployment
    /// whose schema Job has not finished), StatefulSets and the Deployment
    /// that do not exist yet are left for later: created once, running, they
    /// cost one write each instead of a stopped create and a start.
    pub async fn apply_children(&self, children: Children, create_workloads: bool) -> Result<Tiers> {
        self.apply(&children.config).await?;
        if let Some(claim) = &children.media {
            self.apply(claim).await?;
        }
        self.apply(&children.master_service).await?;
        self.apply(&children.coreapp_service).await?;
        self.apply(&children.webapp_service).await?;
        let masters = self.apply_workload(&children.masters, create_workloads).await?;
        let coreapps = self.apply_workload(&children.coreapps, create_workloads).await?;
        let webapps = self.apply_workload(&children.webapps, create_workloads).await?;
        for budget in &children.disruption_budgets {
            self.apply(budget).await?;
        }
        let absent = TierStatus { desired: 0, ready: 0, updated: 0, observed: true };
        // The pods' revisions tell a rollout from a pod lost (see `stateful_set_tier`).
        let pods = super::fencing::own_pods(&self.caches.node_pods, &self.namespace, &self.instance).await?;
        let tier = |sts: &_, tier: Tier| {
            let own = pods.iter().filter(|p| p.labels.get(LABEL_COMPONENT) == Some(tier.as_str()));
            stateful_set_tier(sts, own.filter_map(|p| p.revision.as_deref()))
        };
        let webapp_pods = super::fencing::own_pods(&self.caches.webapp_pods, &self.namespace, &self.instance).await?;
        // A pod on its way out ends with SIGTERM's exit code: no trouble.
        let troubles = super::troubles::listed(
            pods.iter()
                .chain(&webapp_pods)
                .filter(|p| !p.identity.deleting())
                .filter_map(|p| Some((p.name(), p.trouble.as_deref()?))),
        );
        Ok(Tiers {
            troubles,
            masters: masters.as_ref().map_or(absent.clone(), |m| tier(m, Tier::Master)),
            coreapps: coreapps.as_ref().map_or(absent.clone(), |c| tier(c, Tier::Coreapp)),
            webapps: webapps.as_ref().map_or(absent, deployment_tier),
            versions: [
                masters.and_then(|m| m.state.version),
                coreapps.and_then(|c| c.state.version),
                webapps.and_then(|w| w.state.version),
            ],
        })
    }

    /// Applies a workload that exists, or creates it when `create` says so.
    async fn apply_workload<K>(&self, desired: &K, create: bool) -> Result<Option<K::Kept>>
    where
        K: Cached + Serialize,
    {
        if !create && K::cache(self.caches).get(&self.namespace, &desired.name_any()).await?.is_none() {
            return Ok(None);
        }
        self.apply(desired).await.map(Some)
    }

    /// Server-side apply of one object, unless the cached live object already
    /// is what this reconcile would write. Returns what the cache keeps of
    /// the live object either way.
    pub async fn apply<K>(&self, desired: &K) -> Result<K::Kept>
    where
        K: Cached + Serialize,
    {
        let name = desired.name_any();
        let wanted = serde_json::to_value(desired)?;
        if let Some(live) = K::cache(self.caches).get(&self.namespace, &name).await? {
            match needs_apply(&wanted, K::digests(&live), K::UNCOMPARED) {
                None => return Ok((*live).clone()),
                Some(why) => tracing::debug!(kind = %K::kind(&()), %name, %why, "applying"),
            }
        }
        let api: Api<K> = self.api();
        let live = api
            .patch(&name, &PatchParams::apply(FIELD_MANAGER).force(), &Patch::Apply(desired))
            .await
            .map_err(Error::request(format!("applying {} {}/{name}", K::kind(&()), self.namespace)))?;
        self.metrics.record_write(&K::kind(&()), "apply");
        // What the cache will keep of it, whose owned-field digest is what
        // the next reconcile compares.
        let kept = K::keep(live);
        if K::digests(&kept).1.is_some_and(|d| !d.is(&drift::desired_digest(&wanted, K::UNCOMPARED))) {
            tracing::warn!(kind = %K::kind(&()), namespace = %self.namespace, %name, "{}", drift::READ_BACK_DIFFERS);
        }
        Ok(kept)
    }

    /// Creates the key Secret, or fills in keys missing from it; never changes
    /// a key that exists (`keys_secret` carries existing values over). Returns
    /// the Secret it wrote, if it wrote one.
    pub async fn ensure_keys(&self, wan: &WhatsAppNumber, existing: Option<&Secret>) -> Result<Option<Secret>> {
        let Some(secret) = config::keys_secret(wan, existing) else { return Ok(None) };
        let api: Api<Secret> = self.api();
        if existing.is_none() {
            let created = match api
                .create(&PostParams { field_manager: Some(FIELD_MANAGER.into()), ..Default::default() }, &secret)
                .await
            {
                Ok(created) => created,
                // Made by an earlier reconcile that the cache has not seen yet: read again.
                Err(kube::Error::Api(s)) if s.code == 409 => return Err(Error::StaleObject),
                Err(e) => {
                    let name = secret.name_any();
                    return Err(Error::request(format!("creating Secret {}/{name}", self.namespace))(e));
                }
            };
            self.metrics.record_write("Secret", "create");
            self.caches.remember_secret(Some(&created));
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
                .await
                .map_err(Error::request(format!("updating Secret {}/{}", self.namespace, secret.name_any())))?;
            self.metrics.record_write("Secret", "update");
            self.caches.remember_secret(Some(&updated));
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
                    Err(e) => {
                        return Err(Error::request(format!("deleting ServiceMonitor {}/{name}", self.namespace))(e));
                    }
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
        let monitors = &self.caches.service_monitors;
        let live_hash = match monitors.applied_hash(&self.namespace, &name, ANNOTATION_APPLIED_HASH) {
            Some(cached) => cached,
            None => match api.get_opt(&name).await {
                Ok(live) => {
                    monitors.watch();
                    live.map(|l| l.annotations().get(ANNOTATION_APPLIED_HASH).cloned().unwrap_or_default())
                }
                Err(e) if missing_crd(&e) => {
                    return Ok(Err("spec.monitoring.serviceMonitor needs the Prometheus Operator's ServiceMonitor CRD (monitoring.coreos.com/v1), which this cluster does not serve".into()));
                }
                Err(e) => {
                    return Err(Error::request(format!("reading ServiceMonitor {}/{name}", self.namespace))(e));
                }
            },
        };
        if live_hash.as_ref() == Some(&hash) {
            return Ok(Ok(Some(name)));
        }
        let mut patch = serde_json::to_value(&desired)?;
        patch["apiVersion"] = "monitoring.coreos.com/v1".into();
        patch["kind"] = "ServiceMonitor".into();
        api.patch(&name, &PatchParams::apply(FIELD_MANAGER).force(), &Patch::Apply(patch))
            .await
            .map_err(Error::request(format!("applying ServiceMonitor {}/{name}", self.namespace)))?;
        self.metrics.record_write("ServiceMonitor", "apply");
        Ok(Ok(Some(name)))
    }

    /// Creates a Job unless one of that name exists: a Job's template cannot
    /// change, and a finished Job is the record of what ran.
    pub async fn ensure_job(&self, job: &k8s_openapi::api::batch::v1::Job) -> Result<()> {
        if self.caches.jobs.get(&self.namespace, &job.name_any()).await?.is_some() {
            return Ok(());
        }
        let api: Api<k8s_openapi::api::batch::v1::Job> = self.api();
        match api.create(&PostParams { field_manager: Some(FIELD_MANAGER.into()), ..Default::default() }, job).await {
            Ok(_) => {
                self.metrics.record_write("Job", "create");
                Ok(())
            }
            Err(kube::Error::Api(s)) if s.code == 409 => Ok(()),
            Err(e) => Err(Error::request(format!("creating Job {}/{}", self.namespace, job.name_any()))(e)),
        }
    }

    /// Deletes children of kind `K` that this WhatsAppNumber controls but the
    /// spec no longer asks for. Only kinds whose set can shrink are pruned, and
    /// never a PersistentVolumeClaim: media is user data.
    pub async fn prune<K>(&self, wan: &WhatsAppNumber, keep: &[String]) -> Result<()>
    where
        K: Cached,
    {
        let uid = wan.uid().ok_or(Error::MissingMetadata("uid"))?;
        let unwanted = |obj: &K::Kept| {
            obj.key_namespace() == self.namespace
                && K::controlled_by(obj, &uid)
                && !keep.iter().any(|k| k == obj.key_name())
                && !K::deleting(obj)
        };
        let api: Api<K> = self.api();
        for obj in K::cache(self.caches).filter(unwanted).await? {
            let name = obj.key_name();
            tracing::info!(kind = %K::kind(&()), %name, "removing a child the spec no longer asks for");
            match api.delete(name, &DeleteParams::background()).await {
                Ok(_) => self.metrics.record_write(&K::kind(&()), "delete"),
                Err(kube::Error::Api(s)) if s.code == 404 => {}
                Err(e) => {
                    let what = format!("deleting {} {}/{name}", K::kind(&()), self.namespace);
                    return Err(Error::request(what)(e));
                }
            }
        }
        Ok(())
    }
}

/// Why the live object lacks what `desired` would write, if it does: another
/// desired form (the applied hash differs), or a field the operator sets that
/// someone else changed (the owned-field digest the cache keeps differs).
/// `live` holds the live object's applied hash and owned-field digest.
pub fn needs_apply(desired: &Value, live: (Option<Compact>, Option<Compact>), uncompared: &[&str]) -> Option<String> {
    let (applied_hash, owned_digest) = live;
    let desired_hash = desired.pointer("/metadata/annotations").and_then(|a| a.get(ANNOTATION_APPLIED_HASH));
    let desired_hash = desired_hash.and_then(Value::as_str);
    if !desired_hash.is_some_and(|wanted| applied_hash.is_some_and(|live| live.is(wanted))) {
        return Some("the desired form changed".into());
    }
    match owned_digest {
        None => Some("no field of it is recorded as applied by the operator".into()),
        Some(live) if !live.is(&drift::desired_digest(desired, uncompared)) => {
            Some("a field the operator sets was changed by someone else".into())
        }
        Some(_) => None,
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn desired(hash: &str, replicas: u32) -> Value {
        json!({"metadata": {"name": "x", "annotations": {ANNOTATION_APPLIED_HASH: hash}}, "spec": {"replicas": replicas}})
    }

    /// A cached child: its applied hash and the digest of what it owns.
    fn live(hash: &str, owned: Option<&Value>) -> (String, Option<String>) {
        (hash.to_string(), owned.map(|o| drift::desired_digest(o, &[])))
    }

    fn digests(live: &(String, Option<String>)) -> (Option<Compact>, Option<Compact>) {
        (Some(Compact::new(&live.0)), live.1.as_deref().map(Compact::new))
    }

    #[test]
    fn an_unchanged_child_needs_no_write() {
        assert_eq!(needs_apply(&desired("h1", 2), digests(&live("h1", Some(&desired("h1", 2)))), &[]), None);
    }

    #[test]
    fn a_changed_desired_form_or_a_field_changed_by_someone_else_is_written() {
        assert_eq!(
            needs_apply(&desired("h2", 2), digests(&live("h1", Some(&desired("h1", 2)))), &[]).as_deref(),
            Some("the desired form changed")
        );
        assert_eq!(
            needs_apply(&desired("h1", 2), digests(&live("h1", Some(&desired("h1", 5)))), &[]).as_deref(),
            Some("a field the operator sets was changed by someone else"),
            "scaled by hand"
        );
        assert!(
            needs_apply(&desired("h1", 2), digests(&live("h1", None)), &[]).is_some(),
            "never applied by the operator"
        );
        assert!(
            needs_apply(&json!({"metadata": {"name": "x"}}), digests(&live("h1", None)), &[]).is_some(),
            "no hash at all"
        );
    }
}
