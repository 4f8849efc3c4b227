//! The run loop: the watches that feed the caches, the mappers that turn a
//! change of a child, a Secret, a claim or a pod into the WhatsAppNumbers it
//! concerns, and what happens after a failed reconcile.

use std::sync::Arc;
use std::time::Duration;

use std::borrow::Cow;
use std::marker::PhantomData;

use futures::{Stream, StreamExt, TryStreamExt as _};
use k8s_openapi::api::apps::v1::{Deployment, StatefulSet};
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{ConfigMap, PersistentVolumeClaim, Pod, Secret, Service};
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use kube::api::ObjectMeta;
use kube::runtime::controller::{Action, Config as ControllerConfig, Controller};
use kube::runtime::events::Reporter;
use kube::runtime::reflector::ObjectRef;
use kube::runtime::watcher;
use kube::{Api, Client, Resource, ResourceExt};
use tracing::{info, warn};

use super::cache::NumberObject;
use super::error::Error;
use super::outline::{Outline, Outlined};
use super::store::Keyed;
use super::{Context, DEBOUNCE, STALE_RETRY, Settings, cache, claim, fencing, fetch, key, reconcile_object};
use crate::api::WhatsAppNumberClaim;
use crate::probes::Probes;
use crate::resources::names::Names;
use crate::telemetry::metrics::Metrics;

/// Exponential backoff per object: 5 s, 10 s, 20 s ... up to 5 minutes.
pub fn error_policy(wan: Arc<NumberObject>, error: &Error, ctx: Arc<Context>) -> Action {
    if error.is_stale() {
        // The newer object is on its way through the watch: look again soon.
        tracing::debug!(name = %wan.name_any(), namespace = ?wan.namespace(), "status not written: the object changed meanwhile");
        return Action::requeue(STALE_RETRY);
    }
    ctx.metrics.record_error(error.reason());
    let attempts = {
        let mut failures = ctx.failures.lock().expect("failures lock");
        let n = failures.entry(key(wan.as_ref())).or_insert(0);
        *n += 1;
        *n
    };
    let delay = backoff(attempts);
    warn!(name = %wan.name_any(), namespace = ?wan.namespace(), reason = error.reason(), %error, retry_in = ?delay, "reconcile failed");
    Action::requeue(delay)
}

pub fn backoff(attempts: u32) -> Duration {
    Duration::from_secs(5u64.saturating_mul(1u64 << attempts.saturating_sub(1).min(6))).min(Duration::from_secs(300))
}

/// The WhatsAppNumbers whose reconcile reads the named Secret or claim.
fn referencing(numbers: &cache::Numbers, namespace: &str, name: &str, kind: Reference) -> Vec<ObjectRef<NumberObject>> {
    numbers.references(|wan| {
        if wan.metadata.namespace.as_deref() != Some(namespace) {
            return false;
        }
        match kind {
            Reference::Secret => reads_secret(wan, name),
            Reference::Claim => crate::resources::media_claim_name(wan) == name,
        }
    })
}

/// Whether a reconcile of `wan` reads the Secret `name` (of its namespace).
/// Asked of every number on every Secret event: nothing is allocated.
fn reads_secret(wan: &crate::api::WhatsAppNumber, name: &str) -> bool {
    let spec = &wan.spec;
    spec.database.credentials_secret_ref.name == name
        || spec.database.tls.as_ref().is_some_and(|t| t.ca_secret_ref.name == name)
        || spec.webapp.tls.as_ref().is_some_and(|t| t.secret_name == name)
        || spec.webapp.admin_password_secret_ref.as_ref().is_some_and(|r| r.name == name)
        || spec.health.ca_secret_ref.as_ref().is_some_and(|r| r.name == name)
        || spec.registration.as_ref().is_some_and(|r| r.secret_ref.name == name)
        || fetch::lifecycle_secret_refs(wan).any(|n| n == name)
        || Names::is_keys_of(name, wan.metadata.name.as_deref().unwrap_or_default())
}

/// The WhatsAppNumbers with the phone number a claim (or legacy claim Lease) is about.
fn waiting_for(numbers: &cache::Numbers, claim: &impl ResourceExt) -> Vec<ObjectRef<NumberObject>> {
    let Some(number) = claim.annotations().get(claim::NUMBER_ANNOTATION) else { return vec![] };
    with_number(numbers, &crate::resources::names::number_digits(number))
}

/// The WhatsAppNumbers of the phone number with these digits.
fn with_number(numbers: &cache::Numbers, digits: &str) -> Vec<ObjectRef<NumberObject>> {
    if digits.is_empty() {
        return vec![];
    }
    numbers.references(|wan| crate::resources::names::has_number_digits(&wan.spec.phone_number, digits))
}

/// The WhatsAppNumbers that use the databases of `wan`.
fn sharing_database(numbers: &cache::Numbers, wan: &crate::api::WhatsAppNumber) -> Vec<ObjectRef<NumberObject>> {
    numbers.references(|other| fetch::shares_database(wan, other))
}

#[derive(Clone, Copy)]
enum Reference {
    Secret,
    Claim,
}

/// Runs the controller until `shutdown` resolves. `namespace` limits it to one
/// namespace; `None` watches all.
pub async fn run(
    client: Client,
    namespace: Option<String>,
    settings: Settings,
    metrics: Arc<Metrics>,
    reporter: Reporter,
    shutdown: impl std::future::Future<Output = ()> + Send + Sync + 'static,
) {
    let wans: Api<NumberObject> = match &namespace {
        Some(ns) => Api::namespaced(client.clone(), ns),
        None => Api::all(client.clone()),
    };
    let (numbers, changed, deleted) = cache::numbers_feed(wans);
    let controller = Controller::for_stream(changed, numbers.store.clone()).with_config(
        ControllerConfig::default()
            // Unbounded here: the reconciles take turns, first come first
            // served, for `settings.reconcile_concurrency` at once (see
            // `Context::turns`).
            .concurrency(0)
            // The events of one number's children arrive together: one
            // reconcile for them, and the caches have caught up by then.
            .debounce(DEBOUNCE),
    );
    let store = numbers;
    let (caches, feeds) = cache::build(
        &client,
        &namespace,
        &settings.operator_namespace,
        &settings.release_catalog,
        store.clone(),
        &fencing::watched_pod_selector(),
        crate::resources::names::LABEL_MANAGED_BY_SELECTOR,
    );

    // A change of the release catalog can change every number's expiry and target.
    let catalog_changes = feeds.catalog.filter_map(|r| {
        futures::future::ready(match r {
            Ok(_) => Some(()),
            // An outage or a 403 backs off (in the watch) instead of spinning, and says so.
            Err(e) => {
                warn!(error = %e, "cannot watch the release catalog ConfigMap; retrying with backoff");
                None
            }
        })
    });
    let (probes, probed) =
        Probes::new(settings.probe_concurrency, Arc::default(), Arc::default(), Some(client.clone()), metrics.clone());
    let prober = tokio::spawn(probes.clone().run());
    // A probe whose result differs from the one before wakes its number.
    let probe_changes = probed.map(|(namespace, name)| ObjectRef::new(&name).within(&namespace));
    let ctx = Arc::new(Context::new(client.clone(), metrics, reporter, settings, caches, probes));
    let renewer = tokio::spawn(renew_events(ctx.clone()));
    let (secret_store, claim_store, pod_store) = (store.clone(), store.clone(), store.clone());
    let (number_claim_store, lease_store, sharers_store) = (store.clone(), store.clone(), store);
    controller
        .reconcile_all_on(catalog_changes)
        .reconcile_on(probe_changes)
        // A child wakes the WhatsAppNumber that controls it (as `owns` would,
        // from the outline's controller: its owner references are not kept).
        .watches_stream(changes::<StatefulSet, _>(feeds.statefulsets), on(controller_of))
        .watches_stream(changes::<Deployment, _>(feeds.deployments), on(controller_of))
        .watches_stream(changes::<Service, _>(feeds.services), on(controller_of))
        .watches_stream(changes::<ConfigMap, _>(feeds.configmaps), on(controller_of))
        .watches_stream(changes::<PodDisruptionBudget, _>(feeds.budgets), on(controller_of))
        .watches_stream(changes::<Job, _>(feeds.jobs), on(controller_of))
        .watches_stream(
            changes::<Secret, _>(feeds.secrets),
            on(move |secret: &cache::SecretVersion| {
                referencing(&secret_store, &secret.namespace, &secret.name, Reference::Secret)
            }),
        )
        .watches_stream(
            changes::<PersistentVolumeClaim, _>(feeds.volume_claims),
            on(move |claim: &cache::ClaimOutline| {
                referencing(&claim_store, &claim.identity.namespace, &claim.identity.name, Reference::Claim)
            }),
        )
        // A released number claim wakes the WhatsAppNumbers waiting for it.
        .watches_stream(
            changes::<WhatsAppNumberClaim, _>(feeds.claims),
            on(move |claim: &WhatsAppNumberClaim| waiting_for(&number_claim_store, claim)),
        )
        .watches_stream(
            changes::<Lease, _>(feeds.legacy_claims),
            on(move |lease: &Lease| waiting_for(&lease_store, lease)),
        )
        // A deleted WhatsAppNumber frees its databases for the one held by
        // `DatabaseInUse`.
        .watches_stream(
            changes::<crate::api::WhatsAppNumber, _>(deleted),
            on(move |gone: &crate::api::WhatsAppNumber| sharing_database(&sharers_store, gone)),
        )
        // Master and coreapp pods starting, terminating or going wake the
        // objects of their number (fencing); so does any of its pods'
        // trouble (a webapp's too) beginning, changing or ending.
        .watches_stream(
            changes::<Pod, _>(feeds.node_pods),
            on(move |pod: &cache::PodOutline| match pod.labels.get(crate::resources::names::LABEL_NUMBER) {
                Some(digits) => with_number(&pod_store, digits),
                // Its own WhatsAppNumber still waits for it.
                None => pod
                    .labels
                    .get(crate::resources::names::LABEL_INSTANCE)
                    .map(|instance| ObjectRef::new(instance).within(&pod.identity.namespace))
                    .into_iter()
                    .collect(),
            }),
        )
        .graceful_shutdown_on({
            let ctx = ctx.clone();
            async move {
                shutdown.await;
                // What still waits for a turn ends now; what runs finishes.
                ctx.stop_turns();
            }
        })
        .run(reconcile_object, error_policy, ctx)
        .for_each(|result| async move {
            match result {
                Ok((obj, _)) => tracing::debug!(name = %obj.name, namespace = ?obj.namespace, "reconciled"),
                Err(kube::runtime::controller::Error::QueueError(e)) => {
                    warn!(error = %e, "a watch failed; retrying with backoff")
                }
                Err(e) => tracing::debug!(error = %e, "reconcile trigger failed"),
            }
        })
        .await;
    prober.abort();
    renewer.abort();
    info!("controller stopped");
}

/// The WhatsAppNumber that controls a child, if one does.
fn controller_of<K: Outlined>(child: &Outline<K>) -> Option<ObjectRef<NumberObject>> {
    let controller = child.controller.as_ref()?;
    let reference = ObjectRef::new(&controller.name);
    Some(reference.within(child.namespace()))
}

/// An object a watch took in, as the controller's trigger takes it: the
/// kind, namespace and name of `K`, which the reconcile it wakes names as its
/// reason ("related object updated: Secret.v1./name.namespace"), and what the
/// cache keeps of it, which the mappers read. Made for each change and
/// dropped once mapped; never decoded.
#[derive(Debug, serde::Deserialize)]
#[serde(bound = "")]
struct Changed<K, T> {
    metadata: ObjectMeta,
    #[serde(skip)]
    kept: Option<Arc<T>>,
    #[serde(skip)]
    kind: PhantomData<fn() -> K>,
}

impl<K, T> Clone for Changed<K, T> {
    fn clone(&self) -> Self {
        Self { metadata: self.metadata.clone(), kept: self.kept.clone(), kind: PhantomData }
    }
}

impl<K: Resource<DynamicType = ()>, T> Resource for Changed<K, T> {
    type DynamicType = ();
    type Scope = K::Scope;

    fn kind(_: &()) -> Cow<'_, str> {
        K::kind(&())
    }
    fn group(_: &()) -> Cow<'_, str> {
        K::group(&())
    }
    fn version(_: &()) -> Cow<'_, str> {
        K::version(&())
    }
    fn plural(_: &()) -> Cow<'_, str> {
        K::plural(&())
    }
    fn meta(&self) -> &ObjectMeta {
        &self.metadata
    }
    fn meta_mut(&mut self) -> &mut ObjectMeta {
        &mut self.metadata
    }
}

/// The changes a cache's watch took in, as objects of kind `K`.
fn changes<K, T: Keyed>(
    touched: cache::Touched<T>,
) -> impl Stream<Item = Result<Changed<K, T>, watcher::Error>> + Send + 'static
where
    K: 'static,
{
    touched.map_ok(|kept| {
        let namespace = Some(kept.key_namespace()).filter(|ns| !ns.is_empty()).map(str::to_string);
        let metadata = ObjectMeta { name: Some(kept.key_name().to_string()), namespace, ..Default::default() };
        Changed { metadata, kept: Some(kept), kind: PhantomData }
    })
}

/// A mapper of what a cache keeps, as a mapper of its changes.
fn on<K, T, I>(
    mapper: impl Fn(&T) -> I + Send + Sync + 'static,
) -> impl Fn(Changed<K, T>) -> Vec<ObjectRef<NumberObject>> + Send + Sync + 'static
where
    I: IntoIterator<Item = ObjectRef<NumberObject>>,
{
    move |changed| changed.kept.as_deref().map(|kept| mapper(kept).into_iter().collect()).unwrap_or_default()
}

/// Drops the event series that can no longer grow, every minute, and gives
/// back their table's room once none is left (see [`super::publish::Events`]).
async fn renew_events(ctx: Arc<Context>) {
    let mut every = tokio::time::interval(Duration::from_secs(60));
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        every.tick().await;
        if ctx.events.renew(std::time::Instant::now()) {
            tracing::debug!("no event series left to extend: their table is given back");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failed_reconciles_back_off_from_five_seconds_to_five_minutes() {
        let waits: Vec<u64> = (1..=9).map(|n| backoff(n).as_secs()).collect();
        assert_eq!(waits, [5, 10, 20, 40, 80, 160, 300, 300, 300]);
        assert_eq!(backoff(0), Duration::from_secs(5), "a first failure counted from zero");
        assert_eq!(backoff(u32::MAX), Duration::from_secs(300), "no overflow");
    }

    #[test]
    fn a_change_names_its_object_as_the_reason_and_maps_what_the_cache_keeps() {
        let secret: kube::core::PartialObjectMeta<Secret> = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "acme-db", "namespace": "team", "resourceVersion": "7"}
        }))
        .unwrap();
        let kept = Arc::new(cache::SecretVersion::of(secret));
        let changed = futures::executor::block_on(
            changes::<Secret, _>(futures::stream::iter([Ok(kept)]).boxed()).try_collect::<Vec<_>>(),
        )
        .unwrap()
        .remove(0);
        let reason = ObjectRef::from_obj(&changed).erase();
        assert_eq!(reason.to_string(), "Secret.v1./acme-db.team", "as the reconcile's log names its reason");
        let mapper = on(|secret: &cache::SecretVersion| {
            let reference = ObjectRef::new(&secret.name);
            [reference.within(&secret.namespace)]
        });
        let woken = mapper(changed);
        assert_eq!(woken.len(), 1);
        assert_eq!((woken[0].name.as_str(), woken[0].namespace.as_deref()), ("acme-db", Some("team")));
    }

    #[test]
    fn every_secret_a_reconcile_reads_wakes_it_when_it_changes() {
        let mut wan = crate::fixtures::sample();
        let named = |name: &str, key: &str| serde_json::json!({"name": name, "key": key});
        fn from<T: serde::de::DeserializeOwned>(v: serde_json::Value) -> T {
            serde_json::from_value(v).unwrap()
        }
        wan.spec.webapp.admin_password_secret_ref = Some(from(named("admin", "password")));
        wan.spec.database.tls = Some(from(serde_json::json!({"caSecretRef": named("db-ca", "ca.crt")})));
        wan.spec.webapp.tls = Some(from(serde_json::json!({"secretName": "webapp-tls"})));
        wan.spec.health.ca_secret_ref = Some(from(named("health-ca", "ca.crt")));
        wan.spec.registration = Some(from(serde_json::json!({"secretRef": {"name": "registration"}})));
        let mut read = fetch::other_secrets_read(&wan);
        read.push(wan.spec.database.credentials_secret_ref.name.clone());
        assert!(read.len() >= 7, "{read:?}");
        for name in &read {
            assert!(reads_secret(&wan, name), "a change of Secret {name} wakes no reconcile");
        }
        assert!(!reads_secret(&wan, "unrelated"));
    }

    #[test]
    fn a_child_wakes_the_whatsappnumber_that_controls_it() {
        use k8s_openapi::api::core::v1::Service;
        let service = |owners: serde_json::Value| {
            let service: Service = serde_json::from_value(serde_json::json!({
                "metadata": {"name": "acme-webapp", "namespace": "team", "ownerReferences": owners}
            }))
            .unwrap();
            controller_of(&Outline::of(service, &[]))
        };
        let woken = service(serde_json::json!([{"apiVersion": "whatsapp.operators.dev/v1alpha1",
            "kind": "WhatsAppNumber", "name": "acme", "uid": "w1", "controller": true}]))
        .expect("its controller");
        assert_eq!((woken.name.as_str(), woken.namespace.as_deref()), ("acme", Some("team")));
        assert_eq!(woken.to_string(), "WhatsAppNumber.v1alpha1.whatsapp.operators.dev/acme.team");
        assert!(service(serde_json::json!([])).is_none(), "nobody's child wakes no one");
    }
}
