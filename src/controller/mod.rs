//! The WhatsAppNumber controller. One reconcile is a pipeline: claim
//! (`claim`, `fencing`) -> fetch -> validate -> `deploy`: plan (`plan`,
//! `upgrade`) -> build (pure, `resources`) and apply (server-side apply) ->
//! observe the gateway (`gateway`) -> advance (pure, `upgrade`, `sharding`)
//! -> status (pure, `status`) -> publish (`publish`, `events`). `run` holds
//! the watches and the mappers that wake it.

pub mod apply;
pub mod cache;
pub mod claim;
pub mod compact;
mod deploy;
pub mod drift;
pub mod error;
pub mod events;
pub mod fencing;
pub mod fetch;
pub mod gateway;
pub mod lifecycle;
pub mod outline;
mod plan;
mod publish;
#[cfg(test)]
mod reconcile_tests;
mod run;
pub mod status;
pub mod store;
pub mod troubles;
pub mod validate;

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::api::{DeleteParams, Patch, PatchParams};
use kube::runtime::controller::Action;
use kube::runtime::events::Reporter;
use kube::runtime::finalizer::{Event as FinalizerEvent, finalizer};
use kube::{Api, Client, Resource, ResourceExt};
use serde_json::json;
use tracing::{info, instrument, warn};

use crate::api::WhatsAppNumber;
use crate::probes::Probes;
use crate::telemetry::metrics::Metrics;
use crate::upgrade::procedure;
use claim::{Claim, Intent};
use error::{Error, Result};
use publish::{Published, publish_status};
pub use run::{backoff, error_policy, run};
use status::Outcome;

/// Operator-wide settings the reconcile needs.
#[derive(Clone, Debug, Default)]
pub struct Settings {
    /// The operator's namespace: this installation, named in the number claims it grants.
    pub operator_namespace: String,
    /// `namespace/name` -> webapp base URL, overriding the in-cluster Service
    /// (for running the operator outside the cluster, and for tests).
    pub webapp_urls: BTreeMap<String, String>,
    /// Name of the release catalog ConfigMap in the operator's namespace.
    pub release_catalog: String,
    /// Health probes running at once, across all numbers.
    pub probe_concurrency: usize,
    /// WhatsAppNumbers reconciled at once.
    pub reconcile_concurrency: u16,
}

/// Shared state of all reconciles.
pub struct Context {
    pub client: Client,
    pub metrics: Arc<Metrics>,
    pub events: publish::Events,
    pub settings: Settings,
    /// Everything reconciles read, kept current by watches.
    pub caches: cache::Caches,
    /// The webapps' health, probed off the reconcile path, with the admin
    /// sessions and HTTP clients the reconciles share with the probes.
    pub probes: Probes,
    failures: Mutex<HashMap<(String, String), u32>>,
    /// Retries in a row that changed no status, per number.
    quiet: Mutex<HashMap<(String, String), u32>>,
    /// When this operator last wrote each number's status.
    status_writes: Mutex<HashMap<(String, String), LastStatusWrite>>,
    /// The webapp certificate each number's client refused last (its digest)
    /// and why: the same certificate is not uploaded again.
    refused_certificates: Mutex<HashMap<(String, String), (String, String)>>,
    /// Reconciles running at once, handed out first come, first served. The
    /// controller's own limit would pick the next number from those waiting
    /// in hash order, so that some numbers were picked again and again while
    /// others, new ones among them, waited for minutes. Closed on shutdown.
    turns: tokio::sync::Semaphore,
    /// Turns kept for numbers never reconciled (see [`is_new`]), which also
    /// take their place for `turns`: a new number's first turn (finalizer,
    /// claim, first status) never waits behind the rollouts of others. A
    /// quarter of `turns`, at least one.
    first_turns: tokio::sync::Semaphore,
}

/// A status write this operator made.
#[derive(Clone, Copy, Debug)]
struct LastStatusWrite {
    at: Instant,
    /// The trouble it showed ([`status::trouble`]).
    trouble: Option<u64>,
}

impl Context {
    /// How long until a number is retried: `base` after a status change,
    /// longer and longer while nothing changes (see [`backed_off`]).
    fn patience(&self, wan: &WhatsAppNumber, base: Duration, changed: bool) -> Duration {
        let mut quiet = self.quiet.lock().expect("quiet lock");
        if changed {
            quiet.remove(&key(wan));
            return base;
        }
        let n = quiet.entry(key(wan)).or_default();
        let wait = backed_off(base, *n);
        *n = n.saturating_add(1);
        wait
    }

    /// Records a status write, with the trouble it showed ([`status::trouble`]).
    fn status_written(&self, wan: &WhatsAppNumber, trouble: Option<u64>) {
        let write = LastStatusWrite { at: Instant::now(), trouble };
        self.status_writes.lock().expect("status writes lock").insert(key(wan), write);
    }

    /// How long ago this operator last wrote the number's status, if it did,
    /// and the trouble that write showed.
    fn last_status_write(&self, wan: &WhatsAppNumber) -> Option<(Duration, Option<u64>)> {
        let writes = self.status_writes.lock().expect("status writes lock");
        writes.get(&key(wan)).map(|w| (w.at.elapsed(), w.trouble))
    }

    fn forget(&self, wan: &WhatsAppNumber) {
        self.quiet.lock().expect("quiet lock").remove(&key(wan));
        self.status_writes.lock().expect("status writes lock").remove(&key(wan));
        self.failures.lock().expect("failures lock").remove(&key(wan));
        self.refused_certificates.lock().expect("certificates lock").remove(&key(wan));
    }

    /// Why the client refused the certificate of this digest, if it did.
    pub fn certificate_refusal(&self, wan: &WhatsAppNumber, digest: &str) -> Option<String> {
        let refused = self.refused_certificates.lock().expect("certificates lock");
        refused.get(&key(wan)).filter(|(d, _)| d == digest).map(|(_, why)| why.clone())
    }

    /// Records the client's answer to an upload of the certificate `digest`.
    pub fn certificate_answered(&self, wan: &WhatsAppNumber, digest: &str, refused: Option<&str>) {
        let mut map = self.refused_certificates.lock().expect("certificates lock");
        match refused {
            Some(why) => map.insert(key(wan), (digest.to_string(), why.to_string())),
            None => map.remove(&key(wan)),
        };
    }

    pub fn new(
        client: Client,
        metrics: Arc<Metrics>,
        reporter: Reporter,
        settings: Settings,
        caches: cache::Caches,
        probes: Probes,
    ) -> Self {
        let settings_concurrency = settings.reconcile_concurrency;
        Self {
            events: publish::Events::new(client.clone(), reporter),
            client,
            metrics,
            settings,
            caches,
            probes,
            failures: Mutex::default(),
            quiet: Mutex::default(),
            status_writes: Mutex::default(),
            refused_certificates: Mutex::default(),
            turns: tokio::sync::Semaphore::new(match settings_concurrency {
                0 => tokio::sync::Semaphore::MAX_PERMITS,
                n => usize::from(n),
            }),
            first_turns: tokio::sync::Semaphore::new(match settings_concurrency {
                0 => tokio::sync::Semaphore::MAX_PERMITS,
                n => usize::from(n / 4).max(1),
            }),
        }
    }

    /// Reconciles waiting for a turn return at once from now on: a new
    /// leader picks their numbers up.
    pub fn stop_turns(&self) {
        self.turns.close();
        self.first_turns.close();
    }
}

/// How often a healthy object is looked at again without any change. Changes
/// of the object, its children and its Secrets trigger a reconcile at once.
const RESYNC: Duration = Duration::from_secs(300);
/// Retry interval while a problem blocks the reconcile (the watches on Secrets
/// and claims usually trigger sooner).
const BLOCKED_RETRY: Duration = Duration::from_secs(60);

/// After a status write refused because the object changed meanwhile.
const STALE_RETRY: Duration = Duration::from_millis(500);

/// While pods of a number are awaited (their deletion also wakes the reconcile).
const FENCE_RETRY: Duration = Duration::from_secs(30);
/// How often a WhatsAppNumber being deleted looks whether its schema Job's
/// pods are gone.
const SCHEMA_STOP_RETRY: Duration = Duration::from_secs(5);

/// Short retry while an upgrade is under way: each step is checked promptly.
const UPGRADE_STEP_RETRY: Duration = Duration::from_secs(3);
/// Child events of one number within this time make one reconcile.
const DEBOUNCE: Duration = Duration::from_secs(1);

/// Short retry while a shard change is under way.
const SHARD_CHANGE_RETRY: Duration = Duration::from_secs(5);

fn key<K: Resource>(obj: &K) -> (String, String) {
    (obj.namespace().unwrap_or_default(), obj.name_any())
}

/// The controller watches WhatsAppNumbers untyped, so that one object the
/// operator cannot read (stored under an older or newer schema) is reported on
/// its own status and never stops the watch, and with it every other object.
pub fn typed(obj: &cache::NumberObject) -> std::result::Result<WhatsAppNumber, serde_json::Error> {
    serde_json::to_value(obj).and_then(serde_json::from_value)
}

/// Never reconciled: no condition yet (the CRD serves a new object with
/// `observedGeneration: 0` and nothing else), and not being deleted.
fn is_new(wan: &WhatsAppNumber) -> bool {
    wan.metadata.deletion_timestamp.is_none() && wan.status.as_ref().is_none_or(|s| s.conditions.is_empty())
}

pub async fn reconcile_object(obj: Arc<cache::NumberObject>, ctx: Arc<Context>) -> Result<Action> {
    let reference = kube::runtime::reflector::ObjectRef::from_obj(obj.as_ref());
    // As the cache holds it now (an unreadable object takes the common lane).
    let new = ctx
        .caches
        .numbers
        .store
        .get(&reference)
        .and_then(|o| ctx.caches.numbers.decoded(&o))
        .is_some_and(|wan| is_new(&wan));
    let turns = ctx.clone();
    // A new number takes whichever turn comes first: its own lane, or its
    // place among the others (when many are created at once, both).
    let turn = if new {
        tokio::select! {
            biased;
            turn = turns.first_turns.acquire() => turn,
            turn = turns.turns.acquire() => turn,
        }
    } else {
        turns.turns.acquire().await
    };
    let Ok(_turn) = turn else {
        return Ok(Action::await_change());
    };
    // The newest copy: the object may have changed while it waited its turn.
    // Gone since: its finalizer was removed, nothing is left to do.
    let Some(obj) = ctx.caches.numbers.store.get(&reference) else {
        return Ok(Action::await_change());
    };
    let decoded = match ctx.caches.numbers.decoded(&obj) {
        Some(wan) => Ok(wan),
        // Decoded once and forgotten since: it is leaving the store too.
        None if obj.data.is_null() => return Ok(Action::await_change()),
        None => typed(&obj).map(Arc::new),
    };
    match decoded {
        Ok(wan) => reconcile(wan, ctx).await,
        Err(_)
            if obj.metadata.deletion_timestamp.is_some() && obj.finalizers().iter().any(|f| f == claim::FINALIZER) =>
        {
            ctx.metrics.reconciles.inc();
            delete_unreadable(&obj, &ctx).await
        }
        Err(e) => {
            ctx.metrics.reconciles.inc();
            report_unreadable(&obj, &e, &ctx).await?;
            Ok(Action::await_change())
        }
    }
}

/// An object the operator cannot decode is being deleted: what deletion needs
/// comes from its metadata alone. Its masters, coreapps and schema Jobs stop,
/// the claim it holds is released once their pods are gone, and its
/// finalizer goes.
async fn delete_unreadable(obj: &cache::NumberObject, ctx: &Context) -> Result<Action> {
    let namespace = obj.namespace().ok_or(Error::MissingMetadata("namespace"))?;
    let (name, uid) = (obj.name_any(), obj.uid().ok_or(Error::MissingMetadata("uid"))?);
    let identity = format!("{namespace}/{name}/{uid}");
    stop_statefulsets(ctx, &namespace, &name, &uid, "the WhatsAppNumber is being deleted").await?;
    let schema = stop_schema_jobs(ctx, &namespace, &name, &uid, "the WhatsAppNumber is being deleted").await?;

    // Its own masters and coreapps, found by name: the number may be unreadable too.
    let pods = fencing::own_pods(&ctx.caches.node_pods, &namespace, &name).await?;
    let confirmed = if pods.is_empty() && schema.is_empty() {
        left_on_the_api_server(ctx, &namespace, &name, &uid).await?
    } else {
        vec![]
    };
    if !pods.is_empty() || !schema.is_empty() || !confirmed.is_empty() {
        let (pods, schema) = (pods.len(), schema.len());
        info!(%identity, pods, schema, "waiting for masters, coreapps and schema Jobs to stop before releasing the number");
        return Ok(Action::requeue(if schema > 0 { SCHEMA_STOP_RETRY } else { FENCE_RETRY }));
    }
    let operator_namespace = &ctx.settings.operator_namespace;
    let (claim, lease) = claim::held_by(&ctx.caches.claims, &ctx.caches.legacy_claims, &identity).await?;
    if let Some(claim) = claim {
        claim::release_claim(&ctx.client, &ctx.metrics, &claim, &identity).await?;
        info!(%identity, "released the number claim of an unreadable WhatsAppNumber");
    }
    if let Some(lease) = lease {
        claim::release_lease(&ctx.client, &ctx.metrics, operator_namespace, &lease, &identity).await?;
    }
    let index = obj.finalizers().iter().position(|f| f == claim::FINALIZER).expect("checked by the caller");
    let path = format!("/metadata/finalizers/{index}");
    let patch: json_patch::Patch = serde_json::from_value(json!([
        {"op": "test", "path": path, "value": claim::FINALIZER},
        {"op": "remove", "path": path},
    ]))?;
    let api: Api<cache::NumberObject> = Api::namespaced(ctx.client.clone(), &namespace);
    match api.patch(&name, &PatchParams::default(), &Patch::Json::<()>(patch)).await {
        Ok(_) => ctx.metrics.record_write("WhatsAppNumber", "patch"),
        Err(kube::Error::Api(s)) if s.code == 404 => {}
        Err(e) => return Err(Error::request(format!("removing the finalizer of {namespace}/{name}"))(e)),
    }
    Ok(Action::await_change())
}

/// Writes `Ready=False/InvalidObject` with the decoding error, leaving every
/// child as it is.
async fn report_unreadable(obj: &cache::NumberObject, error: &serde_json::Error, ctx: &Context) -> Result<()> {
    let namespace = obj.namespace().ok_or(Error::MissingMetadata("namespace"))?;
    warn!(namespace = %namespace, name = %obj.name_any(), %error, "cannot read a WhatsAppNumber; it is left as it is");
    let previous: Vec<crate::api::Condition> =
        obj.data.pointer("/status/conditions").and_then(|c| serde_json::from_value(c.clone()).ok()).unwrap_or_default();
    let now = Time(k8s_openapi::jiff::Timestamp::now());
    let generation = obj.metadata.generation;
    let message =
        format!("the operator cannot read this object ({error}); fix the spec, nothing else is changed meanwhile");
    let ready =
        status::condition(&previous, status::READY, "False", "InvalidObject".into(), message.clone(), generation, &now);
    let stalled =
        status::condition(&previous, status::STALLED, "True", "InvalidObject".into(), message, generation, &now);
    if previous.contains(&ready) && previous.contains(&stalled) {
        return Ok(());
    }
    let api: Api<cache::NumberObject> = Api::namespaced(ctx.client.clone(), &namespace);
    let patch = json!({"status": {"observedGeneration": generation, "conditions": [ready, stalled]}});
    api.patch_status(&obj.name_any(), &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .map_err(Error::request(format!("writing the status of {namespace}/{}", obj.name_any())))?;
    ctx.metrics.record_write("WhatsAppNumber", "patch-status");
    Ok(())
}

#[instrument(skip_all, fields(namespace = wan.namespace().unwrap_or_default(), name = wan.name_any(), generation = wan.metadata.generation))]
pub async fn reconcile(wan: Arc<WhatsAppNumber>, ctx: Arc<Context>) -> Result<Action> {
    let started = Instant::now();
    ctx.metrics.reconciles.inc();
    // Within the controller's span, which says what woke this reconcile.
    tracing::debug!(resource_version = wan.metadata.resource_version.as_deref(), "reconciling");
    let namespace = wan.namespace().ok_or(Error::MissingMetadata("namespace"))?;
    let api: Api<WhatsAppNumber> = Api::namespaced(ctx.client.clone(), &namespace);
    if wan.metadata.deletion_timestamp.is_some() && wan.finalizers().iter().any(|f| f == claim::FINALIZER) {
        match stop_before_release(&wan, &ctx).await {
            Ok(None) => {}
            Ok(Some(action)) => {
                ctx.metrics.observe_duration(started.elapsed());
                return Ok(action);
            }
            Err(e) if e.is_moot() => return Ok(Action::await_change()),
            Err(e) => return Err(e),
        }
    }
    let wan = match wan.metadata.deletion_timestamp {
        None if !wan.finalizers().iter().any(|f| f == claim::FINALIZER) => match add_finalizer(&ctx, &api, &wan).await?
        {
            Some(wan) => wan,
            None => return Ok(Action::await_change()),
        },
        _ => wan,
    };
    let result = finalizer(&api, claim::FINALIZER, wan.clone(), |event| async {
        match event {
            FinalizerEvent::Apply(wan) => apply(&wan, &ctx).await,
            FinalizerEvent::Cleanup(wan) => cleanup(&wan, &ctx).await,
        }
    })
    .await
    .map_err(|e| Error::Finalizer(Box::new(e)))
    .or_else(|e| if e.is_moot() { Ok(Action::await_change()) } else { Err(e) });
    ctx.metrics.observe_duration(started.elapsed());
    if result.is_ok() {
        ctx.failures.lock().expect("failures lock").remove(&key(wan.as_ref()));
    }
    result
}

/// A new number's finalizer, added in its own first turn: the reconcile goes
/// on with the object the API server returned, so that the claim and the
/// first status follow at once rather than after every reconcile that
/// queued up meanwhile (as they would from the watch event of the patch).
/// The test operation refuses the patch (422) if another writer changed the
/// finalizers since the object was read; the retry reads them again.
/// `None`: the object is gone.
async fn add_finalizer(
    ctx: &Context,
    api: &Api<WhatsAppNumber>,
    wan: &WhatsAppNumber,
) -> Result<Option<Arc<WhatsAppNumber>>> {
    let patch = if wan.finalizers().is_empty() {
        json!([
            {"op": "test", "path": "/metadata/finalizers", "value": null},
            {"op": "add", "path": "/metadata/finalizers", "value": [claim::FINALIZER]},
        ])
    } else {
        json!([
            {"op": "test", "path": "/metadata/finalizers", "value": wan.finalizers()},
            {"op": "add", "path": "/metadata/finalizers/-", "value": claim::FINALIZER},
        ])
    };
    let patch: json_patch::Patch = serde_json::from_value(patch)?;
    let name = wan.name_any();
    match api.patch(&name, &PatchParams::default(), &Patch::Json::<()>(patch)).await {
        Ok(patched) => {
            ctx.metrics.record_write("WhatsAppNumber", "patch");
            Ok(Some(Arc::new(patched)))
        }
        Err(kube::Error::Api(s)) if s.code == 404 => Ok(None),
        Err(e) => {
            Err(Error::request(format!("adding the finalizer to {}/{name}", wan.namespace().unwrap_or_default()))(e))
        }
    }
}

/// The WhatsAppNumber is being deleted: its masters and coreapps are stopped,
/// and the number stays claimed until none of their pods exists (`Some` says
/// when to look again). A pod stuck Terminating on a node that no longer
/// answers keeps the claim, and the status says what a person can do.
async fn stop_before_release(wan: &WhatsAppNumber, ctx: &Context) -> Result<Option<Action>> {
    stop_workloads(ctx, wan, "the WhatsAppNumber is being deleted").await?;
    let uid = wan.uid().ok_or(Error::MissingMetadata("uid"))?;
    let namespace = wan.namespace().unwrap_or_default();
    let schema_pods =
        stop_schema_jobs(ctx, &namespace, &wan.name_any(), &uid, "the WhatsAppNumber is being deleted").await?;
    // Schema pods are not watched for the reconcile: looked at sooner.
    let retry = if schema_pods.is_empty() { FENCE_RETRY } else { SCHEMA_STOP_RETRY };
    let digits = crate::resources::names::number_digits(&wan.spec.phone_number);
    let pods = fencing::pods_of_number(&ctx.caches.node_pods, &digits).await?;
    let mut own = fencing::Fence::split(wan, pods).own;
    own.extend(schema_pods);
    if own.is_empty() {
        own = left_on_the_api_server(ctx, &namespace, &wan.name_any(), &uid).await?;
    }
    if own.is_empty() {
        return Ok(None);
    }
    let now = Time(k8s_openapi::jiff::Timestamp::now());
    let waiting = fencing::Waiting::new(own, now.0, false);
    info!(pods = %waiting.message, "waiting for masters, coreapps and schema upgrades to stop before releasing the number");
    let wait = match publish_status(ctx, wan, &Outcome::Stopping(waiting), &now).await? {
        Published::Held(wait) => wait.min(retry),
        Published::Written | Published::Unchanged => retry,
    };
    Ok(Some(Action::requeue(wait)))
}

/// What of the WhatsAppNumber `name` (with `uid`) may still run, as the API
/// server has it rather than the caches, which may not have seen yet a
/// StatefulSet, Job or pod made a moment ago: read once the caches say
/// nothing is left, just before the number is released. Its StatefulSets
/// (any: one being deleted may still make pods until it is gone), its
/// unfinished schema Jobs (deleted in the foreground here, as
/// [`stop_schema_jobs`] does) and its unfinished masters', coreapps' and
/// schema Jobs' pods.
async fn left_on_the_api_server(
    ctx: &Context,
    namespace: &str,
    name: &str,
    uid: &str,
) -> Result<Vec<fencing::NodePod>> {
    use crate::resources::names::{LABEL_COMPONENT, LABEL_INSTANCE, LABEL_MANAGED_BY_SELECTOR};
    use k8s_openapi::api::{batch::v1::Job, core::v1::Pod};
    use kube::api::ListParams;
    let left = |what: String| fencing::NodePod::waited_for(namespace, what, name, None);
    // Only the operator's: a Helm release of the same name labels its own
    // objects with the same instance.
    let instance = format!("{LABEL_MANAGED_BY_SELECTOR},{LABEL_INSTANCE}={name}");
    let read = |what: &'static str| Error::request(format!("listing the {what} of {namespace}/{name}"));
    let mut found = Vec::new();

    let statefulsets: Api<StatefulSet> = Api::namespaced(ctx.client.clone(), namespace);
    let listed =
        statefulsets.list_metadata(&ListParams::default().labels(&instance)).await.map_err(read("StatefulSets"))?;
    // This object's own (those it deletes): one left without its owner
    // (`--cascade=orphan`) makes no pod the pods below would not show.
    let controlled = |s: &&kube::core::PartialObjectMeta<StatefulSet>| {
        s.metadata.owner_references.iter().flatten().any(|o| o.controller == Some(true) && o.uid == uid)
    };
    found.extend(listed.items.iter().filter(controlled).map(|s| left(format!("{} (a StatefulSet)", s.name_any()))));

    let schema = format!("{instance},{LABEL_COMPONENT}={}", crate::resources::schema_job::COMPONENT);
    let jobs: Api<Job> = Api::namespaced(ctx.client.clone(), namespace);
    for job in jobs.list(&ListParams::default().labels(&schema)).await.map_err(read("schema Jobs"))?.items {
        let job = outline::Outline::of(job, &[]);
        if job.finished() && !job.identity.deleting() {
            continue;
        }
        if job.controlled_by(uid)
            && !job.finished()
            && !job.identity.deleting()
            && !stop_schema_job(ctx, &jobs, namespace, job.name(), "the WhatsAppNumber is being deleted").await?
        {
            continue;
        }
        found.push(left(format!("{} (a schema Job being deleted)", job.name())));
    }

    let nodes = format!("{instance},{LABEL_COMPONENT} in (master,coreapp,{})", crate::resources::schema_job::COMPONENT);
    let pods: Api<Pod> = Api::namespaced(ctx.client.clone(), namespace);
    for pod in pods.list(&ListParams::default().labels(&nodes)).await.map_err(read("pods"))?.items {
        let phase = pod.status.as_ref().and_then(|s| s.phase.as_deref());
        if matches!(phase, Some("Succeeded" | "Failed")) {
            continue;
        }
        let since = pod.metadata.deletion_timestamp.as_ref().map(|t| t.0);
        found.push(fencing::NodePod::waited_for(namespace, pod.name_any(), name, since));
    }
    if !found.is_empty() {
        info!(
            left = found.len(),
            "the API server still has masters, coreapps or schema upgrades the caches had not seen"
        );
    }
    Ok(found)
}

/// Deletes the schema Job `name` in the foreground (it stays until its pods
/// are gone). `false`: it was gone already.
async fn stop_schema_job(
    ctx: &Context,
    api: &Api<k8s_openapi::api::batch::v1::Job>,
    namespace: &str,
    name: &str,
    why: &str,
) -> Result<bool> {
    warn!(job = %name, "stopping the schema Job: {why}");
    match api.delete(name, &DeleteParams::foreground()).await {
        Ok(_) => {
            ctx.metrics.record_write("Job", "delete");
            Ok(true)
        }
        Err(kube::Error::Api(s)) if s.code == 404 => Ok(false),
        Err(e) => Err(Error::request(format!("deleting Job {namespace}/{name}"))(e)),
    }
}

/// What of the schema Jobs of the WhatsAppNumber `name` (with `uid`) may
/// still run, as fencing lists pods: the unfinished Jobs it controls are
/// deleted in the foreground, each staying until its pods are gone (a Job
/// between attempts, or whose new pod the cache has not seen yet, is waited
/// for too); then the pods of its schema Jobs that have not finished (one
/// left by a Job deleted without its pods is waited for until it ends or a
/// person deletes it). The number stays claimed until nothing is left, so
/// that an object re-created for it never runs its schema Job beside one of
/// these on the same databases.
async fn stop_schema_jobs(
    ctx: &Context,
    namespace: &str,
    name: &str,
    uid: &str,
    why: &str,
) -> Result<Vec<fencing::NodePod>> {
    // Only this object's Jobs (or an earlier one's of its name) carry its
    // schema Job names: no other object of the name exists while it does.
    let of_this_object = |job: &str| crate::resources::schema_job::version_in(name, job).is_some();
    let jobs = ctx.caches.jobs.filter(|j| j.namespace() == namespace && of_this_object(j.name())).await?;
    let api: Api<k8s_openapi::api::batch::v1::Job> = Api::namespaced(ctx.client.clone(), namespace);
    // A Job that ended makes no more pods: the garbage collector takes it.
    let unfinished = |j: &&Arc<outline::Outline<k8s_openapi::api::batch::v1::Job>>| {
        j.controlled_by(uid) && !j.finished() && !j.identity.deleting()
    };
    for job in jobs.iter().filter(unfinished) {
        stop_schema_job(ctx, &api, namespace, job.name(), why).await?;
    }
    let pods = ctx
        .caches
        .schema_pods
        .filter(|p| *p.namespace == *namespace && !p.finished() && p.job.as_deref().is_some_and(of_this_object))
        .await?;
    let waited = |what: String, since| fencing::NodePod::waited_for(namespace, what, name, since);
    let mut left: Vec<fencing::NodePod> =
        pods.iter().map(|p| waited(p.name.to_string(), p.terminating_since)).collect();
    // The Jobs on their way out whose pods are not listed above (an earlier
    // object's Job that is not being deleted is the garbage collector's).
    let going = |j: &&Arc<outline::Outline<k8s_openapi::api::batch::v1::Job>>| {
        let ours = (j.controlled_by(uid) && !j.finished()) || j.identity.deleting();
        ours && !pods.iter().any(|p| p.job.as_deref() == Some(j.name()))
    };
    for job in jobs.iter().filter(going) {
        left.push(waited(format!("{} (a schema Job being deleted)", job.name()), None));
    }
    Ok(left)
}

/// Then owner references hand every child but a retained media claim to the
/// garbage collector, and the claim on the number is released so a waiting
/// WhatsAppNumber can take it.
async fn cleanup(wan: &WhatsAppNumber, ctx: &Context) -> Result<Action> {
    claim::release(&ctx.client, &ctx.metrics, &ctx.settings.operator_namespace, wan).await?;
    gateway::stop_probing(ctx, wan);
    ctx.probes.sessions().forget_number(&key(wan));
    ctx.metrics.forget(wan);
    ctx.forget(wan);
    info!("released the number claim");
    Ok(Action::await_change())
}

async fn apply(wan: &WhatsAppNumber, ctx: &Context) -> Result<Action> {
    // Claim and fence first: stopping a loser depends on nothing else.
    let now = Time(k8s_openapi::jiff::Timestamp::now());
    let digits = crate::resources::names::number_digits(&wan.spec.phone_number);
    let caches = &ctx.caches;
    let nodes = fencing::nodes_of_number(&caches.node_pods, &caches.statefulsets, &caches.schema_pods, &digits).await?;
    let fence = fencing::Fence::split(wan, nodes);
    // While another instance's nodes exist and none of this one's, a free
    // claim is left to the object that runs them.
    let intent = if fence.blocks_start() { Intent::Inspect } else { Intent::Take };
    let claims = claim::Claims {
        client: &ctx.client,
        cache: &ctx.caches.claims,
        legacy: &ctx.caches.legacy_claims,
        numbers: &ctx.caches.numbers.store,
        installation: &ctx.settings.operator_namespace,
        metrics: &ctx.metrics,
    };
    let claim = claims.claim(wan, intent).await?;
    if !matches!(claim, Claim::ManagedElsewhere(_)) {
        ctx.metrics.managed_elsewhere.remove(&ctx.metrics.number(wan));
    }
    let outcome = match claim {
        Claim::ManagedElsewhere(installation) => {
            // Two installations watch this object: the one that claimed the
            // number manages it, and this one writes nothing, status included.
            warn!(
                %installation,
                "another installation of the operator (namespace {installation}) claimed this number for this object; this one leaves it alone: run one installation per namespace"
            );
            ctx.metrics.managed_elsewhere.get_or_create(&ctx.metrics.number(wan)).set(1);
            return Ok(Action::requeue(RESYNC));
        }
        Claim::HeldBy(holder) => {
            stop_workloads(ctx, wan, "another WhatsAppNumber holds the number").await?;
            // A schema upgrade of its own must not go on beside the holder's nodes.
            let uid = wan.uid().ok_or(Error::MissingMetadata("uid"))?;
            let namespace = wan.namespace().ok_or(Error::MissingMetadata("namespace"))?;
            stop_schema_jobs(ctx, &namespace, &wan.name_any(), &uid, "another WhatsAppNumber holds the number").await?;
            let waiting = fencing::Waiting::new(fence.of_holder(&holder), now.0, false);
            Outcome::Conflict { holder, waiting }
        }
        Claim::Held if intent == Intent::Take => {
            let mut observed = fetch::observe(&ctx.caches, &ctx.settings, wan).await?;
            let others = ctx.caches.numbers.readable();
            observed.database_sharer = fetch::database_sharer(wan, others.iter().map(AsRef::as_ref));
            match validate::validate(wan, &observed) {
                Err(problem) => Outcome::Blocked(problem),
                Ok(_) if is_new(wan) => Outcome::Deploying,
                // On the heap: its many steps make a large future.
                Ok(inputs) => Outcome::Applied(Box::pin(deploy::deploy(wan, ctx, &observed, inputs)).await?),
            }
        }
        Claim::Held | Claim::Free => Outcome::Fenced(fencing::Waiting::new(fence.others, now.0, true)),
    };

    let written = match publish_status(ctx, wan, &outcome, &now).await? {
        Published::Held(wait) => return Ok(Action::requeue(wait)),
        published => published == Published::Written,
    };

    let retry = |base: Duration| Action::requeue(ctx.patience(wan, base, written));
    Ok(match outcome {
        Outcome::Blocked(problem) => {
            info!(reason = problem.reason, message = %problem.message, "reconcile held");
            retry(BLOCKED_RETRY)
        }
        Outcome::Conflict { holder, .. } => {
            info!(%holder, "the phone number is held by another WhatsAppNumber");
            retry(BLOCKED_RETRY)
        }
        // Its status shows: the children next, after the numbers ahead of it.
        Outcome::Deploying => Action::requeue(Duration::ZERO),
        Outcome::Fenced(waiting) | Outcome::Stopping(waiting) => {
            info!(pods = %waiting.message, "masters and coreapps of another instance of the number still exist");
            retry(FENCE_RETRY)
        }
        // A stalled step waits for a person (or its blocker to clear, which
        // the watches report): no probe every few seconds for days.
        Outcome::Applied(applied)
            if applied
                .versions
                .upgrade
                .as_ref()
                .is_some_and(|u| !procedure::is_done(u) && u.stalled_reason.is_some()) =>
        {
            retry(BLOCKED_RETRY)
        }
        Outcome::Applied(applied) if applied.versions.upgrade.as_ref().is_some_and(|u| !procedure::is_done(u)) => {
            retry(UPGRADE_STEP_RETRY)
        }
        Outcome::Applied(applied) if applied.client.initializing => retry(UPGRADE_STEP_RETRY),
        // Stopping takes a few steps; stopped, the watches report any change.
        Outcome::Applied(applied) if applied.client.suspended => {
            if applied.tiers.webapps.desired == 0 && applied.tiers.webapps.ready == 0 {
                Action::requeue(RESYNC)
            } else {
                retry(UPGRADE_STEP_RETRY)
            }
        }
        Outcome::Applied(applied) => {
            let changing = applied.sharding.as_ref().is_some_and(|s| {
                matches!(s.phase, crate::api::ShardPhase::ScalingCoreapps | crate::api::ShardPhase::SettingShards)
            });
            if changing {
                retry(SHARD_CHANGE_RETRY)
            } else {
                ctx.patience(wan, RESYNC, true);
                // Probe results that change something wake the reconcile on
                // their own; a scheduled backup or a restore's retry needs its time.
                let now = k8s_openapi::jiff::Timestamp::now();
                // An upgrade waiting for its window: looked at again as it opens.
                let window = applied
                    .versions
                    .blocker
                    .as_ref()
                    // Also when held over an unfinished schema upgrade: it
                    // may be the window that holds the upgrade to run again.
                    .filter(|(reason, _)| {
                        [crate::upgrade::OUTSIDE_WINDOW, crate::upgrade::SCHEMA_UPGRADE_UNFINISHED].contains(reason)
                    })
                    .and_then(|_| {
                        let opens =
                            crate::upgrade::policy::next_opening(wan.spec.upgrade.maintenance_window.as_deref(), now)?;
                        Some(Duration::from_secs(opens.duration_since(now).as_secs().max(0) as u64 + 1))
                    });
                // A rollout's progress deadline: looked at again as it passes
                // (counted from now when it was reset, or has passed, here).
                let deadline = (!applied.tiers.all_ready()).then(|| {
                    let full = i64::from(wan.spec.progress_deadline_seconds);
                    let left = wan.status.as_ref().and_then(|s| status::progress_deadline(wan, s));
                    let left = left.map(|at| at.0.duration_since(now).as_secs()).filter(|s| *s > 0).unwrap_or(full);
                    Duration::from_secs(left.max(1) as u64 + 1)
                });
                let due =
                    [lifecycle::next_backup_in(wan, now), lifecycle::next_restore_retry_in(wan, now), window, deadline];
                Action::requeue(jittered(due.into_iter().flatten().fold(RESYNC, Duration::min)))
            }
        }
    })
}

/// A retry `quiet` times in a row without a status change waits this long:
/// twice as long each time, up to twenty times `base` and never beyond the
/// resync. Whatever the watches see still wakes the number at once; this
/// bounds how often a number stuck on something they do not see is looked at.
pub fn backed_off(base: Duration, quiet: u32) -> Duration {
    let cap = base.saturating_mul(20).min(RESYNC).max(base);
    base.saturating_mul(2u32.saturating_pow(quiet.min(16))).min(cap)
}

/// Makes sure none of this object's masters or coreapps run (they would
/// connect as a second instance): their StatefulSets go, and with them the pods.
async fn stop_workloads(ctx: &Context, wan: &WhatsAppNumber, why: &str) -> Result<()> {
    let uid = wan.uid().ok_or(Error::MissingMetadata("uid"))?;
    stop_statefulsets(ctx, &wan.namespace().unwrap_or_default(), &wan.name_any(), &uid, why).await
}

/// Deletes the StatefulSets that the WhatsAppNumber `name` with `uid` controls.
async fn stop_statefulsets(ctx: &Context, namespace: &str, name: &str, uid: &str, why: &str) -> Result<()> {
    let api: Api<StatefulSet> = Api::namespaced(ctx.client.clone(), namespace);
    let controlled = |sts: &outline::Outline<StatefulSet>| {
        sts.namespace() == namespace
            && sts.label(crate::resources::names::LABEL_INSTANCE) == Some(name)
            && sts.controlled_by(uid)
            && !sts.identity.deleting()
    };
    let mut found = ctx.caches.statefulsets.filter(controlled).await?;
    // In a stable order, whatever order the cache lists them in.
    found.sort_by(|a, b| a.name().cmp(b.name()));
    for sts in found {
        warn!(statefulset = %sts.name(), %why, "stopping masters and coreapps");
        match api.delete(sts.name(), &DeleteParams::background()).await {
            Ok(_) => ctx.metrics.record_write("StatefulSet", "delete"),
            // The cache had not seen an earlier deletion yet.
            Err(kube::Error::Api(s)) if s.code == 404 => {}
            Err(e) => return Err(Error::request(format!("deleting StatefulSet {namespace}/{}", sts.name()))(e)),
        }
    }
    Ok(())
}

/// Up to 10% later, so many numbers polled at once spread out.
fn jittered(base: Duration) -> Duration {
    use rand::Rng;
    base + base.mul_f64(rand::rng().random_range(0.0..0.1))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retries_without_news_back_off_to_a_bound() {
        let three = Duration::from_secs(3);
        let waits: Vec<u64> = (0..8).map(|n| backed_off(three, n).as_secs()).collect();
        assert_eq!(waits, [3, 6, 12, 24, 48, 60, 60, 60], "twenty times the base at most");
        assert_eq!(backed_off(BLOCKED_RETRY, 0), BLOCKED_RETRY);
        assert_eq!(backed_off(BLOCKED_RETRY, 3), RESYNC, "never beyond the resync");
        assert_eq!(backed_off(BLOCKED_RETRY, u32::MAX), RESYNC, "no overflow");
        assert_eq!(backed_off(RESYNC, 5), RESYNC);
    }
}
