//! The run loop: the watches that feed the caches, the mappers that turn a
//! change of a child, a Secret, a claim or a pod into the WhatsAppNumbers it
//! concerns, and what happens after a failed reconcile.

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use kube::api::{ApiResource, DynamicObject};
use kube::runtime::controller::{Action, Config as ControllerConfig, Controller};
use kube::runtime::events::Reporter;
use kube::runtime::reflector::ObjectRef;
use kube::{Api, Client, ResourceExt};
use tracing::{info, warn};

use super::error::Error;
use super::outline::{Outline, Outlined};
use super::{Context, DEBOUNCE, STALE_RETRY, Settings, cache, claim, fencing, fetch, key, reconcile_object};
use crate::api::WhatsAppNumber;
use crate::probes::Probes;
use crate::resources::names::Names;
use crate::telemetry::metrics::Metrics;

/// Exponential backoff per object: 5 s, 10 s, 20 s ... up to 5 minutes.
pub fn error_policy(wan: Arc<DynamicObject>, error: &Error, ctx: Arc<Context>) -> Action {
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
fn referencing(
    numbers: &cache::Numbers,
    namespace: Option<String>,
    name: &str,
    kind: Reference,
) -> Vec<ObjectRef<DynamicObject>> {
    numbers.references(|wan| {
        if wan.metadata.namespace != namespace {
            return false;
        }
        let spec = &wan.spec;
        match kind {
            Reference::Secret => {
                spec.database.credentials_secret_ref.name == name
                    || spec.database.tls.as_ref().is_some_and(|t| t.ca_secret_ref.name == name)
                    || spec.webapp.tls.as_ref().is_some_and(|t| t.secret_name == name)
                    || spec.health.ca_secret_ref.as_ref().is_some_and(|r| r.name == name)
                    || spec.registration.as_ref().is_some_and(|r| r.secret_ref.name == name)
                    || fetch::lifecycle_secret_names(wan).iter().any(|n| n == name)
                    || Names::new(wan).keys() == name
            }
            Reference::Claim => crate::resources::media_claim_name(wan) == name,
        }
    })
}

/// The WhatsAppNumbers with the phone number a claim (or legacy claim Lease) is about.
fn waiting_for(numbers: &cache::Numbers, claim: &impl ResourceExt) -> Vec<ObjectRef<DynamicObject>> {
    let Some(number) = claim.annotations().get(claim::NUMBER_ANNOTATION) else { return vec![] };
    with_number(numbers, &crate::resources::names::number_digits(number))
}

/// The WhatsAppNumbers of the phone number with these digits.
fn with_number(numbers: &cache::Numbers, digits: &str) -> Vec<ObjectRef<DynamicObject>> {
    if digits.is_empty() {
        return vec![];
    }
    numbers.references(|wan| crate::resources::names::has_number_digits(&wan.spec.phone_number, digits))
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
    let resource = ApiResource::erase::<WhatsAppNumber>(&());
    let wans: Api<DynamicObject> = match &namespace {
        Some(ns) => Api::namespaced_with(client.clone(), ns, &resource),
        None => Api::all_with(client.clone(), &resource),
    };
    let (numbers, changed) = cache::numbers_feed(wans, resource.clone());
    let controller = Controller::for_stream_with(changed, numbers.store.clone(), resource).with_config(
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
        &fencing::node_pod_selector(),
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
    let (probes, probed) = Probes::new(settings.probe_concurrency, Arc::default(), Arc::default(), metrics.clone());
    let prober = tokio::spawn(probes.clone().run());
    // A probe whose result differs from the one before wakes its number.
    let probe_changes = probed.map(|(namespace, name)| {
        ObjectRef::new_with(&name, ApiResource::erase::<WhatsAppNumber>(&())).within(&namespace)
    });
    let ctx = Arc::new(Context::new(client.clone(), metrics, reporter, settings, caches, probes));
    let renewer = tokio::spawn(renew_events(ctx.clone()));
    let (secret_store, claim_store, pod_store) = (store.clone(), store.clone(), store.clone());
    let (number_claim_store, lease_store) = (store.clone(), store);
    controller
        .reconcile_all_on(catalog_changes)
        .reconcile_on(probe_changes)
        // A child wakes the WhatsAppNumber that controls it (as `owns` would,
        // from the outline's controller: its owner references are not kept).
        .watches_stream(feeds.statefulsets, controller_of)
        .watches_stream(feeds.deployments, controller_of)
        .watches_stream(feeds.services, controller_of)
        .watches_stream(feeds.configmaps, controller_of)
        .watches_stream(feeds.budgets, controller_of)
        .watches_stream(feeds.jobs, controller_of)
        .watches_stream(feeds.secrets, move |secret| {
            referencing(&secret_store, secret.namespace(), &secret.name_any(), Reference::Secret)
        })
        .watches_stream(feeds.volume_claims, move |claim| {
            referencing(&claim_store, claim.namespace(), &claim.name_any(), Reference::Claim)
        })
        // A released number claim wakes the WhatsAppNumbers waiting for it.
        .watches_stream(feeds.claims, move |claim| waiting_for(&number_claim_store, &claim))
        .watches_stream(feeds.legacy_claims, move |lease| waiting_for(&lease_store, &lease))
        // Master and coreapp pods starting, terminating or going wake the
        // objects of their number (fencing).
        .watches_stream(feeds.node_pods, move |pod| {
            let labels = pod.labels();
            match labels.get(crate::resources::names::LABEL_NUMBER) {
                Some(digits) => with_number(&pod_store, digits),
                // Its own WhatsAppNumber still waits for it.
                None => labels
                    .get(crate::resources::names::LABEL_INSTANCE)
                    .zip(pod.namespace())
                    .map(|(instance, ns)| {
                        ObjectRef::new_with(instance, ApiResource::erase::<WhatsAppNumber>(&())).within(&ns)
                    })
                    .into_iter()
                    .collect(),
            }
        })
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
fn controller_of<K: Outlined>(child: Outline<K>) -> Option<ObjectRef<DynamicObject>> {
    let controller = child.controller.as_ref()?;
    let reference = ObjectRef::new_with(&controller.name, ApiResource::erase::<WhatsAppNumber>(&()));
    Some(reference.within(&child.namespace()?))
}

/// Gives back the event recorder's memory once its series expired (see
/// [`super::publish::Events`]).
async fn renew_events(ctx: Arc<Context>) {
    let mut every = tokio::time::interval(Duration::from_secs(60));
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        every.tick().await;
        if ctx.events.renew(std::time::Instant::now()) {
            tracing::debug!("renewed the event recorder: no event series left to extend");
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
    fn a_child_wakes_the_whatsappnumber_that_controls_it() {
        use k8s_openapi::api::core::v1::Service;
        let service = |owners: serde_json::Value| {
            let service: Service = serde_json::from_value(serde_json::json!({
                "metadata": {"name": "acme-webapp", "namespace": "team", "ownerReferences": owners}
            }))
            .unwrap();
            controller_of(Outline::of(service, &[]))
        };
        let woken = service(serde_json::json!([{"apiVersion": "whatsapp.operators.dev/v1alpha1",
            "kind": "WhatsAppNumber", "name": "acme", "uid": "w1", "controller": true}]))
        .expect("its controller");
        assert_eq!((woken.name.as_str(), woken.namespace.as_deref()), ("acme", Some("team")));
        assert_eq!(woken.dyntype.kind, "WhatsAppNumber");
        assert!(service(serde_json::json!([])).is_none(), "nobody's child wakes no one");
    }
}
