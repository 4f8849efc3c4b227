//! The WhatsAppNumber controller. One reconcile is a pipeline:
//! fetch -> validate -> build (pure) -> apply (server-side apply) -> status.

pub mod apply;
pub mod error;
pub mod fetch;
pub mod status;
pub mod validate;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::StreamExt;
use k8s_openapi::api::apps::v1::{Deployment, StatefulSet};
use k8s_openapi::api::core::v1::{ConfigMap, PersistentVolumeClaim, Secret, Service};
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::api::{Patch, PatchParams};
use kube::runtime::controller::{Action, Config as ControllerConfig, Controller};
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::runtime::reflector::{ObjectRef, Store};
use kube::runtime::watcher;
use kube::{Api, Client, Resource, ResourceExt};
use serde_json::json;
use tracing::{info, instrument, warn};

use crate::api::{WhatsAppNumber, WhatsAppNumberStatus};
use crate::resources::names::{FIELD_MANAGER, Names};
use crate::telemetry::metrics::Metrics;
use apply::{AppliedMemory, Applier};
use error::{Error, Result};
use status::Outcome;

/// Shared state of all reconciles.
pub struct Context {
    pub client: Client,
    pub metrics: Arc<Metrics>,
    pub recorder: Recorder,
    pub applied: AppliedMemory,
    failures: Mutex<HashMap<ObjectRef<WhatsAppNumber>, u32>>,
}

impl Context {
    pub fn new(client: Client, metrics: Arc<Metrics>, reporter: Reporter) -> Self {
        Self {
            recorder: Recorder::new(client.clone(), reporter),
            client,
            metrics,
            applied: AppliedMemory::default(),
            failures: Mutex::default(),
        }
    }
}

/// How often a healthy object is looked at again without any change. Changes
/// of the object, its children and its Secrets trigger a reconcile at once.
const RESYNC: Duration = Duration::from_secs(300);
/// Retry interval while a problem blocks the reconcile (the watches on Secrets
/// and claims usually trigger sooner).
const BLOCKED_RETRY: Duration = Duration::from_secs(60);

#[instrument(skip_all, fields(namespace = wan.namespace().unwrap_or_default(), name = wan.name_any(), generation = wan.metadata.generation))]
pub async fn reconcile(wan: Arc<WhatsAppNumber>, ctx: Arc<Context>) -> Result<Action> {
    let started = Instant::now();
    ctx.metrics.reconciles.inc();
    let result = reconcile_inner(&wan, &ctx).await;
    ctx.metrics.observe_duration(started.elapsed());
    if result.is_ok() {
        ctx.failures.lock().expect("failures lock").remove(&ObjectRef::from_obj(wan.as_ref()));
    }
    result
}

async fn reconcile_inner(wan: &WhatsAppNumber, ctx: &Context) -> Result<Action> {
    if wan.meta().deletion_timestamp.is_some() {
        // Owner references hand every child but a retained media claim to the
        // garbage collector.
        return Ok(Action::await_change());
    }

    let observed = fetch::observe(&ctx.client, wan).await?;
    let outcome = match validate::validate(wan, &observed) {
        Err(problem) => Outcome::Blocked(problem),
        Ok(inputs) => {
            let children = crate::resources::build(wan, &inputs);
            let budgets: Vec<String> = children.disruption_budgets.iter().map(|b| b.name_any()).collect();
            let applier = Applier::new(&ctx.client, wan, &ctx.metrics, &ctx.applied)?;
            applier.ensure_keys(wan, observed.keys.as_ref()).await?;
            let tiers = applier.apply_children(children).await?;
            applier.prune::<PodDisruptionBudget>(wan, &budgets).await?;
            Outcome::Applied(tiers)
        }
    };

    let now = Time(k8s_openapi::jiff::Timestamp::now());
    let new_status = status::compute(wan, &outcome, wan.status.as_ref(), &now);
    publish_transitions(ctx, wan, wan.status.as_ref(), &new_status).await;
    if wan.status.as_ref() != Some(&new_status) {
        patch_status(ctx, wan, &new_status).await?;
    }

    Ok(match outcome {
        Outcome::Blocked(problem) => {
            info!(reason = problem.reason, message = %problem.message, "reconcile held");
            Action::requeue(BLOCKED_RETRY)
        }
        Outcome::Applied(_) => Action::requeue(RESYNC),
    })
}

async fn patch_status(ctx: &Context, wan: &WhatsAppNumber, status: &WhatsAppNumberStatus) -> Result<()> {
    let api: Api<WhatsAppNumber> =
        Api::namespaced(ctx.client.clone(), &wan.namespace().ok_or(Error::MissingMetadata("namespace"))?);
    let patch = json!({
        "apiVersion": WhatsAppNumber::api_version(&()),
        "kind": WhatsAppNumber::kind(&()),
        "status": status,
    });
    ctx.metrics.record_write("WhatsAppNumber", "apply-status");
    api.patch_status(&wan.name_any(), &PatchParams::apply(FIELD_MANAGER).force(), &Patch::Apply(patch)).await?;
    Ok(())
}

/// One event per change of the Ready or Degraded condition, never per reconcile.
async fn publish_transitions(
    ctx: &Context,
    wan: &WhatsAppNumber,
    before: Option<&WhatsAppNumberStatus>,
    after: &WhatsAppNumberStatus,
) {
    for type_ in [status::READY, status::DEGRADED] {
        let (Some(new), old) = (status::find(Some(after), type_), status::find(before, type_)) else { continue };
        if old.is_some_and(|o| o.status == new.status && o.reason == new.reason) {
            continue;
        }
        let warning = (type_ == status::DEGRADED && new.status == "True")
            || (type_ == status::READY
                && new.status == "False"
                && new.reason != "RollingOut"
                && new.reason != "PodsNotReady");
        // A Degraded=False after nothing (first reconcile) is not news.
        if type_ == status::DEGRADED && new.status == "False" && old.is_none() {
            continue;
        }
        let event = Event {
            type_: if warning { EventType::Warning } else { EventType::Normal },
            reason: if type_ == status::READY && new.status == "True" { "Ready".into() } else { new.reason.clone() },
            note: Some(truncate(&new.message, 1000)),
            action: "Reconcile".into(),
            secondary: None,
        };
        ctx.metrics.record_write("Event", "create");
        if let Err(e) = ctx.recorder.publish(&event, &wan.object_ref(&())).await {
            warn!(error = %e, "could not publish an event");
        }
    }
}

fn truncate(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_string();
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    s[..end].to_string()
}

/// Exponential backoff per object: 5 s, 10 s, 20 s ... up to 5 minutes.
pub fn error_policy(wan: Arc<WhatsAppNumber>, error: &Error, ctx: Arc<Context>) -> Action {
    ctx.metrics.record_error(error.reason());
    let attempts = {
        let mut failures = ctx.failures.lock().expect("failures lock");
        let n = failures.entry(ObjectRef::from_obj(wan.as_ref())).or_insert(0);
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
    store: &Store<WhatsAppNumber>,
    namespace: Option<String>,
    name: &str,
    kind: Reference,
) -> Vec<ObjectRef<WhatsAppNumber>> {
    store
        .state()
        .into_iter()
        .filter(|wan| wan.namespace() == namespace)
        .filter(|wan| {
            let spec = &wan.spec;
            match kind {
                Reference::Secret => {
                    spec.database.credentials_secret_ref.name == name
                        || spec.database.tls.as_ref().is_some_and(|t| t.ca_secret_ref.name == name)
                        || spec.webapp.tls.as_ref().is_some_and(|t| t.secret_name == name)
                        || Names::new(wan).keys() == name
                }
                Reference::Claim => crate::resources::media_claim_name(wan) == name,
            }
        })
        .map(|wan| ObjectRef::from_obj(wan.as_ref()))
        .collect()
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
    metrics: Arc<Metrics>,
    reporter: Reporter,
    shutdown: impl std::future::Future<Output = ()> + Send + Sync + 'static,
) {
    let wans: Api<WhatsAppNumber> = scoped(&client, &namespace);
    let ctx = Arc::new(Context::new(client.clone(), metrics, reporter));
    let owned = || watcher::Config::default().labels(crate::resources::names::LABEL_MANAGED_BY_SELECTOR);

    let controller = Controller::new(wans, watcher::Config::default().any_semantic())
        .with_config(ControllerConfig::default().concurrency(4));
    let store = controller.store();
    let claim_store = store.clone();
    controller
        .owns(scoped::<StatefulSet>(&client, &namespace), owned())
        .owns(scoped::<Deployment>(&client, &namespace), owned())
        .owns(scoped::<Service>(&client, &namespace), owned())
        .owns(scoped::<ConfigMap>(&client, &namespace), owned())
        .owns(scoped::<PodDisruptionBudget>(&client, &namespace), owned())
        .watches(scoped::<Secret>(&client, &namespace), watcher::Config::default(), move |secret| {
            referencing(&store, secret.namespace(), &secret.name_any(), Reference::Secret)
        })
        .watches(scoped::<PersistentVolumeClaim>(&client, &namespace), watcher::Config::default(), move |claim| {
            referencing(&claim_store, claim.namespace(), &claim.name_any(), Reference::Claim)
        })
        .graceful_shutdown_on(shutdown)
        .run(reconcile, error_policy, ctx)
        .for_each(|result| async move {
            match result {
                Ok((obj, _)) => tracing::debug!(name = %obj.name, namespace = ?obj.namespace, "reconciled"),
                Err(e) => tracing::debug!(error = %e, "reconcile trigger failed"),
            }
        })
        .await;
    info!("controller stopped");
}

fn scoped<K>(client: &Client, namespace: &Option<String>) -> Api<K>
where
    K: Resource<DynamicType = (), Scope = k8s_openapi::NamespaceResourceScope>,
{
    match namespace {
        Some(ns) => Api::namespaced(client.clone(), ns),
        None => Api::all(client.clone()),
    }
}
