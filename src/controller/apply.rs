//! Apply: server-side apply of the built children with one field manager,
//! writing only what differs, and removal of children the spec no longer wants.
//!
//! Whether a child needs a write is decided from the live object alone, so
//! the first reconcile after a restart or a change of leader writes nothing
//! when nothing changed: the applied-hash annotation says whether the desired
//! form changed since the last write, and a comparison of every field the
//! operator sets says whether someone else changed one of them since.

use std::fmt::Debug;

use k8s_openapi::NamespaceResourceScope;
use k8s_openapi::api::core::v1::Secret;
use kube::api::{DeleteParams, Patch, PatchParams, PostParams};
use kube::{Api, Client, Resource, ResourceExt};
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::Value;

use super::cache::{Cached, Caches};
use super::error::{Error, Result};
use super::status::{Tiers, deployment_tier, stateful_set_tier};
use crate::api::{TierStatus, WhatsAppNumber};
use crate::resources::names::{ANNOTATION_APPLIED_HASH, FIELD_MANAGER, LABEL_INSTANCE, LABEL_VERSION};
use crate::resources::{Children, config};
use crate::telemetry::metrics::Metrics;

pub struct Applier<'a> {
    client: &'a Client,
    namespace: String,
    metrics: &'a Metrics,
    caches: &'a Caches,
}

impl<'a> Applier<'a> {
    pub fn new(client: &'a Client, wan: &WhatsAppNumber, metrics: &'a Metrics, caches: &'a Caches) -> Result<Self> {
        let namespace = wan.namespace().ok_or(Error::MissingMetadata("namespace"))?;
        Ok(Self { client, namespace, metrics, caches })
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
        let version = |template: Option<&k8s_openapi::api::core::v1::PodTemplateSpec>| {
            template.and_then(|t| t.metadata.as_ref()?.labels.as_ref()?.get(LABEL_VERSION).cloned())
        };
        let absent = TierStatus { desired: 0, ready: 0, updated: 0, observed: true };
        Ok(Tiers {
            masters: masters.as_ref().map_or(absent.clone(), stateful_set_tier),
            coreapps: coreapps.as_ref().map_or(absent.clone(), stateful_set_tier),
            webapps: webapps.as_ref().map_or(absent, deployment_tier),
            versions: [
                version(masters.as_ref().and_then(|m| m.spec.as_ref()).map(|s| &s.template)),
                version(coreapps.as_ref().and_then(|c| c.spec.as_ref()).map(|s| &s.template)),
                version(webapps.as_ref().and_then(|w| w.spec.as_ref()).map(|s| &s.template)),
            ],
        })
    }

    /// Applies a workload that exists, or creates it when `create` says so.
    async fn apply_workload<K>(&self, desired: &K, create: bool) -> Result<Option<K>>
    where
        K: Cached + Debug + Serialize + DeserializeOwned,
    {
        if !create && K::cache(self.caches).get(&self.namespace, &desired.name_any()).await?.is_none() {
            return Ok(None);
        }
        self.apply(desired).await.map(Some)
    }

    /// Server-side apply of one object, unless the cached live object already
    /// is what this reconcile would write. Returns the live object either way.
    pub async fn apply<K>(&self, desired: &K) -> Result<K>
    where
        K: Cached + Debug + Serialize + DeserializeOwned,
    {
        let name = desired.name_any();
        if let Some(live) = K::cache(self.caches).get(&self.namespace, &name).await? {
            match needs_apply(&serde_json::to_value(desired)?, &serde_json::to_value(live.as_ref())?) {
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
        Ok(live)
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
        K: Cached + Debug + DeserializeOwned,
    {
        let uid = wan.uid().ok_or(Error::MissingMetadata("uid"))?;
        let instance = wan.name_any();
        let unwanted = |obj: &K| {
            obj.namespace().as_deref() == Some(self.namespace.as_str())
                && obj.labels().get(LABEL_INSTANCE) == Some(&instance)
                && obj.owner_references().iter().any(|r| r.controller == Some(true) && r.uid == uid)
                && !keep.contains(&obj.name_any())
                && obj.meta().deletion_timestamp.is_none()
        };
        let api: Api<K> = self.api();
        for obj in K::cache(self.caches).filter(unwanted).await? {
            let name = obj.name_any();
            tracing::info!(kind = %K::kind(&()), %name, "removing a child the spec no longer asks for");
            match api.delete(&name, &DeleteParams::background()).await {
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

/// Why `live` lacks what `desired` would write, if it does: another desired
/// form (the applied hash differs) or a field someone else changed.
pub fn needs_apply(desired: &Value, live: &Value) -> Option<String> {
    let hash = |v: &Value| v.pointer("/metadata/annotations").and_then(|a| a.get(ANNOTATION_APPLIED_HASH)).cloned();
    if hash(desired).is_none() || hash(desired) != hash(live) {
        return Some("the desired form changed".into());
    }
    difference(desired, live).map(|path| format!("{path} differs from what the operator sets"))
}

/// Whether every field set in `desired` has the same value in `live`.
pub fn covers(desired: &Value, live: &Value) -> bool {
    difference(desired, live).is_none()
}

/// The first field set in `desired` whose value `live` does not have, as a
/// path. The server adds defaults and other writers' fields, so only what
/// `desired` says is compared; lists match element by element in order,
/// skipping live elements that others added; quantities compare by value
/// ("1Gi" is "1073741824"); an empty object or list matches an absent one.
fn difference(desired: &Value, live: &Value) -> Option<String> {
    match (desired, live) {
        (Value::Object(want), Value::Object(have)) => want.iter().find_map(|(k, v)| match have.get(k) {
            Some(h) => difference(v, h).map(|p| format!(".{k}{p}")),
            None if is_empty(v) => None,
            None => Some(format!(".{k}")),
        }),
        (Value::Object(_) | Value::Array(_), Value::Null) if is_empty(desired) => None,
        (Value::Array(want), Value::Array(have)) => {
            let mut rest = have.iter();
            let i = want.iter().position(|w| !rest.any(|h| covers(w, h)))?;
            // Say where the element at the same place differs, when there is one.
            let inner = have.get(i).and_then(|h| difference(&want[i], h)).unwrap_or_default();
            Some(format!("[{i}]{inner}"))
        }
        (Value::String(a), Value::String(b)) if a == b || same_quantity(a, b) => None,
        (Value::Number(a), Value::Number(b)) if a.as_f64() == b.as_f64() => None,
        (Value::Number(a), Value::String(b)) | (Value::String(b), Value::Number(a))
            if quantity(b).is_some_and(|q| Some(q) == a.as_f64()) =>
        {
            None
        }
        (a, b) if a == b => None,
        _ => Some(String::new()),
    }
}

fn is_empty(v: &Value) -> bool {
    match v {
        Value::Null => true,
        Value::Object(o) => o.values().all(is_empty),
        Value::Array(a) => a.is_empty(),
        _ => false,
    }
}

/// Two spellings of one quantity. Only where one has a unit suffix: "10"
/// and "10.0" stay different strings.
fn same_quantity(a: &str, b: &str) -> bool {
    let suffixed = |s: &str| s.ends_with(|c: char| c.is_ascii_alphabetic());
    (suffixed(a) || suffixed(b))
        && matches!((quantity(a), quantity(b)), (Some(x), Some(y)) if (x - y).abs() <= f64::EPSILON * x.abs().max(1.0))
}

/// The value of a Kubernetes quantity ("500m", "1Gi", "2e3"), or `None` for
/// any other string.
fn quantity(s: &str) -> Option<f64> {
    const SUFFIXES: [(&str, f64); 13] = [
        ("Ki", 1024.0),
        ("Mi", 1048576.0),
        ("Gi", 1073741824.0),
        ("Ti", 1099511627776.0),
        ("Pi", 1125899906842624.0),
        ("Ei", 1152921504606846976.0),
        ("n", 1e-9),
        ("u", 1e-6),
        ("m", 1e-3),
        ("k", 1e3),
        ("M", 1e6),
        ("G", 1e9),
        ("T", 1e12),
    ];
    let s = s.trim();
    let starts_numeric = s.starts_with(|c: char| c.is_ascii_digit() || c == '.' || c == '+' || c == '-');
    if !starts_numeric {
        return None;
    }
    let (number, scale) = SUFFIXES
        .iter()
        .find_map(|(suffix, scale)| s.strip_suffix(suffix).map(|n| (n, *scale)))
        .or_else(|| s.strip_suffix('P').map(|n| (n, 1e15)))
        .or_else(|| s.strip_suffix('E').filter(|n| !n.is_empty()).map(|n| (n, 1e18)))
        .unwrap_or((s, 1.0));
    if number.chars().any(|c| !(c.is_ascii_digit() || matches!(c, '.' | '+' | '-' | 'e' | 'E'))) {
        return None;
    }
    number.parse::<f64>().ok().map(|n| n * scale)
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn with_hash(hash: &str, spec: Value) -> Value {
        json!({"metadata": {"name": "x", "annotations": {ANNOTATION_APPLIED_HASH: hash}}, "spec": spec})
    }

    #[test]
    fn an_unchanged_child_with_server_defaults_needs_no_write() {
        let desired = with_hash(
            "h1",
            json!({"replicas": 2, "template": {"spec": {"containers": [
            {"name": "coreapp", "ports": [{"containerPort": 6250}], "resources": {"requests": {"memory": "1Gi", "cpu": "0.5"}}}
        ], "volumes": [{"name": "media", "emptyDir": {}}]}}}),
        );
        let mut live = with_hash(
            "h1",
            json!({"replicas": 2, "revisionHistoryLimit": 10, "template": {"spec": {"containers": [
            {"name": "coreapp", "ports": [{"containerPort": 6250, "protocol": "TCP"}],
             "resources": {"requests": {"memory": "1073741824", "cpu": "500m"}}, "terminationMessagePath": "/dev/termination-log"}
        ], "volumes": [{"name": "media", "emptyDir": {}}], "dnsPolicy": "ClusterFirst"}}}),
        );
        live["metadata"]["resourceVersion"] = json!("42");
        live["metadata"]["annotations"]["deployment.kubernetes.io/revision"] = json!("3");
        assert_eq!(needs_apply(&desired, &live), None);
    }

    #[test]
    fn a_changed_desired_form_or_a_field_changed_by_someone_else_is_written() {
        let desired = with_hash("h2", json!({"replicas": 2}));
        assert!(needs_apply(&desired, &with_hash("h1", json!({"replicas": 2}))).is_some(), "new desired form");
        assert_eq!(
            needs_apply(&desired, &with_hash("h2", json!({"replicas": 0}))).as_deref(),
            Some(".spec.replicas differs from what the operator sets"),
            "scaled by hand"
        );
        assert!(needs_apply(&desired, &json!({"metadata": {"name": "x"}, "spec": {"replicas": 2}})).is_some());
        let env = |v: &str| with_hash("h", json!({"containers": [{"name": "c", "env": [{"name": "A", "value": v}]}]}));
        assert_eq!(
            needs_apply(&env("1"), &env("2")).as_deref(),
            Some(".spec.containers[0].env[0].value differs from what the operator sets"),
            "an edited variable"
        );
        assert_eq!(needs_apply(&env("1"), &env("1")), None);
    }

    #[test]
    fn lists_match_in_order_and_tolerate_elements_others_added() {
        let want = json!([{"name": "a"}, {"name": "b"}]);
        assert!(covers(&want, &json!([{"name": "a"}, {"name": "sidecar"}, {"name": "b"}])));
        assert!(!covers(&want, &json!([{"name": "b"}, {"name": "a"}])), "order matters");
        assert!(!covers(&want, &json!([{"name": "a"}])), "one missing");
        assert!(covers(&json!({"items": []}), &json!({})), "an empty list matches an absent one");
        assert!(covers(&json!({"labels": {}}), &json!({})), "so does an empty map");
        assert!(!covers(&json!({"labels": {"a": "b"}}), &json!({})));
    }

    #[test]
    fn quantities_compare_by_value() {
        assert_eq!(quantity("500m"), Some(0.5));
        assert_eq!(quantity("1Gi"), Some(1073741824.0));
        assert_eq!(quantity("2k"), Some(2000.0));
        assert_eq!(quantity("1e3"), Some(1000.0));
        assert_eq!(quantity("1E"), Some(1e18));
        assert_eq!(quantity("master"), None);
        assert_eq!(quantity("2.53.2"), None);
        assert_eq!(quantity("10.0.0.1"), None);
        assert!(covers(&json!("0.5"), &json!("500m")));
        assert!(covers(&json!("1024Mi"), &json!("1Gi")));
        assert!(!covers(&json!("1Gi"), &json!("1G")));
        assert!(covers(&json!(2), &json!(2.0)));
        assert!(!covers(&json!("10"), &json!("10.0")), "plain strings are compared as strings");
        assert!(!covers(&json!("a"), &json!("b")));
    }
}
