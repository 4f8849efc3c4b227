//! Shared caches: every object a reconcile reads comes from a watch-fed store,
//! so a reconcile of a number whose objects did not change makes no read of
//! the API server at all.
//!
//! The stores keep what the operator reads and drop the rest (managed fields,
//! the last-applied annotation, pod specs). Of the children the operator
//! applies they keep an outline ([`super::outline`]): identity, the digests
//! that decide a write, and of workloads and Jobs the counts and status read.
//! Of node pods (and of webapp pods, apart) they keep identity, read labels,
//! IP and trouble ([`PodOutline`]), of
//! every Secret its name and version ([`SecretVersion`]): Secrets are watched
//! by metadata only, their data read by name when a reconcile needs it and
//! kept until their resource version changes. The stores are the caches' own
//! ([`super::store`]), keyed by namespace and name alone; the children's
//! watches wake their numbers through the controller's `reconcile_on`.

use std::collections::HashMap;
use std::fmt::Debug;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::{FutureExt as _, Stream, StreamExt, TryStreamExt as _};
use k8s_openapi::NamespaceResourceScope;
use k8s_openapi::api::apps::v1::{Deployment, StatefulSet};
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{ConfigMap, PersistentVolumeClaim, Pod, PodStatus, Secret, Service};
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use kube::api::{ApiResource, DynamicObject, ObjectMeta};
use kube::core::PartialObjectMeta;
use kube::runtime::reflector::{self, ObjectRef};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Client, Resource, ResourceExt};
use serde::de::DeserializeOwned;

use super::compact::Compact;
use super::error::Result;
use super::outline::{Identity, Outline, ReadLabels};
use super::store::{Keyed, Store};
use crate::api::{WhatsAppNumber, WhatsAppNumberClaim};
use crate::interned::intern;

/// How long a reconcile waits for a cache's first listing.
const WAIT: Duration = Duration::from_secs(30);

/// Annotation `kubectl apply` leaves on objects: a full copy nobody here reads.
const LAST_APPLIED: &str = "kubectl.kubernetes.io/last-applied-configuration";

/// Objects a list request asks for at once, when a watch (re)starts.
/// kube-runtime asks for 500, and a page is read and decoded whole, managed
/// fields and all, before the first object is trimmed: at a start with
/// hundreds of numbers the pages of all kinds, listed together, made a heap
/// peak of 76 MB, and the allocator kept what that peak touched (102 MiB
/// resident at 300 numbers after a restart, 37 with pages of 50; see
/// docs/performance.md). Streaming lists would do as well, but need the
/// WatchList feature, which older API servers lack or refuse.
const LIST_PAGE_SIZE: u32 = 50;

/// How every cache's watch lists: in pages of [`LIST_PAGE_SIZE`].
fn listing() -> watcher::Config {
    watcher::Config::default().page_size(LIST_PAGE_SIZE)
}

/// A cache that has not finished its first listing, where "absent" would
/// mean nothing.
#[derive(Debug, thiserror::Error)]
#[error("the operator's cache of {0} has not finished its first listing")]
pub struct NotReady(pub &'static str);

/// One watch-fed store of what is kept of objects of one kind.
pub struct Cache<T> {
    store: Store<T>,
    what: &'static str,
}

impl<T: Keyed> Cache<T> {
    /// Waits for the first complete listing: before it, "absent" means nothing.
    pub async fn ready(&self) -> Result<(), NotReady> {
        tokio::time::timeout(WAIT, self.store.wait_until_ready()).await.map_err(|_| NotReady(self.what))
    }

    pub async fn get(&self, namespace: &str, name: &str) -> Result<Option<Arc<T>>, NotReady> {
        self.ready().await?;
        Ok(self.store.get(namespace, name))
    }

    /// A cluster-scoped object by name.
    pub async fn get_cluster(&self, name: &str) -> Result<Option<Arc<T>>, NotReady> {
        self.get("", name).await
    }

    /// Every cached object that `keep` accepts.
    pub async fn filter(&self, keep: impl Fn(&T) -> bool) -> Result<Vec<Arc<T>>, NotReady> {
        self.ready().await?;
        Ok(self.store.filter(keep))
    }
}

/// The typed objects kept whole (trimmed of what is never read).
macro_rules! keyed_by_metadata {
    ($($kind:ty),* $(,)?) => {
        $(impl Keyed for $kind {
            fn key_namespace(&self) -> &str {
                self.metadata.namespace.as_deref().unwrap_or_default()
            }
            fn key_name(&self) -> &str {
                self.metadata.name.as_deref().unwrap_or_default()
            }
        })*
    };
}

keyed_by_metadata!(WhatsAppNumberClaim, Lease, ConfigMap, Secret, WhatsAppNumber);

/// A WhatsAppNumber as the controller's watch delivers it, readable or not:
/// its metadata, and the rest of it untyped (see [`super::typed`]). A type
/// of its own rather than kube's `DynamicObject`, so that the references the
/// controller keeps of every number (its store's keys, its queue) carry no
/// copy of the API resource's five names.
#[derive(Clone, Debug, Default, serde::Deserialize, serde::Serialize)]
pub struct NumberObject {
    pub metadata: ObjectMeta,
    #[serde(flatten)]
    pub data: serde_json::Value,
}

impl Resource for NumberObject {
    type DynamicType = ();
    type Scope = NamespaceResourceScope;

    fn kind(_: &()) -> std::borrow::Cow<'_, str> {
        WhatsAppNumber::kind(&())
    }
    fn group(_: &()) -> std::borrow::Cow<'_, str> {
        WhatsAppNumber::group(&())
    }
    fn version(_: &()) -> std::borrow::Cow<'_, str> {
        WhatsAppNumber::version(&())
    }
    fn plural(_: &()) -> std::borrow::Cow<'_, str> {
        WhatsAppNumber::plural(&())
    }
    fn meta(&self) -> &ObjectMeta {
        &self.metadata
    }
    fn meta_mut(&mut self) -> &mut ObjectMeta {
        &mut self.metadata
    }
}

/// Every WhatsAppNumber the controller sees: its store of the untyped
/// objects, and each one decoded once, as the watch delivers it. The store
/// keeps a decoded object's metadata alone (its data is the decoded copy's),
/// and an unreadable object whole, for the status that reports it.
#[derive(Clone)]
pub struct Numbers {
    pub store: reflector::Store<NumberObject>,
    decoded: Arc<Mutex<Decoded>>,
}

#[derive(Default)]
struct Decoded {
    /// The readable objects by uid, as last delivered.
    by_uid: HashMap<String, Arc<WhatsAppNumber>>,
    /// The uids seen while a listing (a watch's start or restart) is under
    /// way: what it did not list is gone once it is done.
    listing: Option<std::collections::HashSet<String>>,
}

impl Numbers {
    pub fn new(store: reflector::Store<NumberObject>) -> Self {
        Self { store, decoded: Arc::default() }
    }

    /// Decodes what a watch event delivers, before the store takes it.
    pub fn absorb(&self, event: watcher::Event<NumberObject>) -> watcher::Event<NumberObject> {
        self.absorb_noting_gone(event, |_| {})
    }

    /// [`Numbers::absorb`], handing `gone` every readable object the event
    /// removes: one deleted, or one a new listing no longer holds (deleted
    /// while the watch was down).
    pub fn absorb_noting_gone(
        &self,
        event: watcher::Event<NumberObject>,
        mut gone: impl FnMut(Arc<WhatsAppNumber>),
    ) -> watcher::Event<NumberObject> {
        let mut decoded = self.decoded.lock().expect("decoded numbers lock");
        match event {
            watcher::Event::Apply(obj) => watcher::Event::Apply(decoded.decode(obj)),
            watcher::Event::InitApply(obj) => {
                let uid = obj.uid().unwrap_or_default();
                decoded.listing.get_or_insert_with(Default::default).insert(uid);
                watcher::Event::InitApply(decoded.decode(obj))
            }
            watcher::Event::Delete(obj) => {
                if let Some(wan) = decoded.by_uid.remove(&obj.uid().unwrap_or_default()) {
                    gone(wan);
                }
                watcher::Event::Delete(obj)
            }
            watcher::Event::Init => {
                decoded.listing = Some(Default::default());
                watcher::Event::Init
            }
            watcher::Event::InitDone => {
                if let Some(listed) = decoded.listing.take() {
                    decoded.by_uid.retain(|uid, wan| {
                        let kept = listed.contains(uid);
                        if !kept {
                            gone(wan.clone());
                        }
                        kept
                    });
                }
                watcher::Event::InitDone
            }
        }
    }

    /// The decoded form of a stored object, `None` if it could not be read.
    pub fn decoded(&self, obj: &NumberObject) -> Option<Arc<WhatsAppNumber>> {
        let uid = obj.uid()?;
        self.decoded.lock().expect("decoded numbers lock").by_uid.get(&uid).cloned()
    }

    /// The objects the operator can read.
    pub fn readable(&self) -> Vec<Arc<WhatsAppNumber>> {
        self.decoded.lock().expect("decoded numbers lock").by_uid.values().cloned().collect()
    }

    /// The references of the readable objects `wanted` picks. A watch
    /// mapper calls it for every event of its kind: only the objects picked
    /// get a reference made.
    pub fn references(&self, wanted: impl Fn(&WhatsAppNumber) -> bool) -> Vec<ObjectRef<NumberObject>> {
        let decoded = self.decoded.lock().expect("decoded numbers lock");
        let picked: Vec<&Arc<WhatsAppNumber>> = decoded.by_uid.values().filter(|wan| wanted(wan)).collect();
        if picked.is_empty() {
            return Vec::new();
        }
        picked
            .into_iter()
            .map(|wan| {
                let mut reference = ObjectRef::new(&wan.name_any());
                reference.namespace = wan.namespace();
                reference
            })
            .collect()
    }
}

/// Of `meta`, what tells the object and its version: name, namespace, uid,
/// resource version, generation and deletion time.
fn identity(meta: ObjectMeta) -> ObjectMeta {
    ObjectMeta {
        name: meta.name,
        namespace: meta.namespace,
        uid: meta.uid,
        resource_version: meta.resource_version,
        generation: meta.generation,
        deletion_timestamp: meta.deletion_timestamp,
        ..Default::default()
    }
}

impl Decoded {
    /// `obj` as the store keeps it: once decoded, its identity alone (the
    /// store finds the decoded copy by uid; the controller and the claim
    /// checks read nothing else of it).
    fn decode(&mut self, mut obj: NumberObject) -> NumberObject {
        let uid = obj.uid().unwrap_or_default();
        match super::typed(&obj) {
            Ok(wan) => {
                self.by_uid.insert(uid, Arc::new(wan));
                let metadata = identity(std::mem::take(&mut obj.metadata));
                return NumberObject { metadata, data: serde_json::Value::Null };
            }
            Err(_) => {
                self.by_uid.remove(&uid);
            }
        }
        obj
    }
}

/// The children a reconcile applies, each with its cache and what the cache
/// keeps of one.
pub trait Cached:
    Resource<DynamicType = (), Scope = NamespaceResourceScope> + Clone + Debug + DeserializeOwned + Send + Sync + 'static
{
    /// Fields (JSON pointers) that never count as drift: immutable ones the
    /// builder copies from the live object, which may or may not be the
    /// operator's (see [`super::drift`]).
    const UNCOMPARED: &'static [&'static str] = &[];
    /// What the cache keeps of an object.
    type Kept: Keyed + Clone + Debug;

    fn cache(caches: &Caches) -> &Cache<Self::Kept>;
    /// What the cache keeps of a live object as a watch or a write returns
    /// it, its managed fields still there.
    fn keep(live: Self) -> Self::Kept;
    /// The applied hash and the owned-field digest of a kept object.
    fn digests(kept: &Self::Kept) -> (Option<Compact>, Option<Compact>);
    /// Whether the WhatsAppNumber with this uid controls a kept object.
    fn controlled_by(kept: &Self::Kept, uid: &str) -> bool;
    /// Whether its deletion was asked for.
    fn deleting(kept: &Self::Kept) -> bool;
}

macro_rules! outlined {
    ($($kind:ty => $field:ident),* $(,)?) => {
        $(impl Cached for $kind {
            type Kept = Outline<$kind>;

            fn cache(caches: &Caches) -> &Cache<Outline<$kind>> {
                &caches.$field
            }
            fn keep(live: Self) -> Outline<$kind> {
                Outline::of(live, Self::UNCOMPARED)
            }
            fn digests(kept: &Outline<$kind>) -> (Option<Compact>, Option<Compact>) {
                (kept.applied_hash.clone(), kept.owned_digest.clone())
            }
            fn controlled_by(kept: &Outline<$kind>, uid: &str) -> bool {
                kept.controlled_by(uid)
            }
            fn deleting(kept: &Outline<$kind>) -> bool {
                kept.identity.deleting()
            }
        })*
    };
}

outlined! {
    StatefulSet => statefulsets,
    Deployment => deployments,
    Service => services,
    ConfigMap => configmaps,
    PodDisruptionBudget => budgets,
    Job => jobs,
}

/// Claims are kept as [`ClaimOutline`]s (users' claims too).
impl Cached for PersistentVolumeClaim {
    /// A cluster's default class is filled in on creation, owned by no one,
    /// and copied back by the builder: the claim's first apply must not be
    /// followed by another one only to own it. A class cannot change anyway.
    const UNCOMPARED: &'static [&'static str] = &["/spec/storageClassName"];
    type Kept = ClaimOutline;

    fn cache(caches: &Caches) -> &Cache<ClaimOutline> {
        &caches.volume_claims
    }
    fn keep(live: Self) -> ClaimOutline {
        ClaimOutline::of(live)
    }
    fn digests(kept: &ClaimOutline) -> (Option<Compact>, Option<Compact>) {
        (kept.annotation(crate::resources::names::ANNOTATION_APPLIED_HASH).map(Compact::new), kept.owned_digest.clone())
    }
    fn controlled_by(kept: &ClaimOutline, uid: &str) -> bool {
        kept.controller.as_ref().is_some_and(|c| &*c.uid == uid)
    }
    fn deleting(kept: &ClaimOutline) -> bool {
        kept.identity.deleting()
    }
}

/// A claim as the reconcile reads it: identity, controller, the digest of
/// the fields the operator owns (taken from the whole claim), the
/// operator's own annotations (the applied hash and the schema record) and
/// the spec the builder copies from the live claim (access modes, class,
/// volume mode, requested size). The binder's annotations, finalizers,
/// labels, status and the bound volume are not kept.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ClaimOutline {
    pub identity: Identity,
    pub controller: Option<super::outline::Controller>,
    pub owned_digest: Option<Compact>,
    /// The annotations under the operator's prefix, by key.
    pub annotations: Box<[(Box<str>, Box<str>)]>,
    pub access_modes: Option<Box<[String]>>,
    pub storage_class_name: Option<Box<str>>,
    pub volume_mode: Option<Box<str>>,
    /// `spec.resources.requests.storage`.
    pub storage: Option<Quantity>,
}

impl ClaimOutline {
    pub fn of(live: PersistentVolumeClaim) -> Self {
        let owned_digest = serde_json::to_value(&live)
            .ok()
            .and_then(|value| {
                super::drift::owned_digest(
                    &value,
                    crate::resources::names::FIELD_MANAGER,
                    PersistentVolumeClaim::UNCOMPARED,
                )
            })
            .map(|d| Compact::new(&d));
        let meta = &live.metadata;
        let annotations = meta
            .annotations
            .iter()
            .flatten()
            .filter(|(k, _)| k.starts_with(OPERATOR_ANNOTATIONS))
            .map(|(k, v)| (k.as_str().into(), v.as_str().into()))
            .collect();
        let spec = live.spec.as_ref();
        Self {
            identity: Identity::of(meta),
            controller: super::outline::Controller::of(meta),
            owned_digest,
            annotations,
            access_modes: spec.and_then(|s| s.access_modes.clone()).map(Into::into),
            storage_class_name: spec.and_then(|s| s.storage_class_name.as_deref()).map(Into::into),
            volume_mode: spec.and_then(|s| s.volume_mode.as_deref()).map(Into::into),
            storage: spec
                .and_then(|s| s.resources.as_ref())
                .and_then(|r| r.requests.as_ref())
                .and_then(|r| r.get("storage"))
                .cloned(),
        }
    }

    /// One of the operator's annotations.
    pub fn annotation(&self, key: &str) -> Option<&str> {
        self.annotations.iter().find(|(k, _)| &**k == key).map(|(_, v)| &**v)
    }

    /// The claim as the builder and the upgrade plan read it: identity,
    /// the operator's annotations and the spec kept.
    pub fn claim(&self) -> PersistentVolumeClaim {
        let annotations: std::collections::BTreeMap<String, String> =
            self.annotations.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        let requests =
            self.storage.clone().map(|size| std::collections::BTreeMap::from([("storage".to_string(), size)]));
        PersistentVolumeClaim {
            metadata: ObjectMeta {
                name: Some(self.identity.name.to_string()),
                namespace: Some(self.identity.namespace.to_string()),
                uid: Some(self.identity.uid.to_string()).filter(|u| !u.is_empty()),
                annotations: Some(annotations).filter(|a| !a.is_empty()),
                ..Default::default()
            },
            spec: Some(k8s_openapi::api::core::v1::PersistentVolumeClaimSpec {
                access_modes: self.access_modes.as_deref().map(<[String]>::to_vec),
                storage_class_name: self.storage_class_name.as_deref().map(str::to_string),
                volume_mode: self.volume_mode.as_deref().map(str::to_string),
                resources: requests.map(|requests| k8s_openapi::api::core::v1::VolumeResourceRequirements {
                    requests: Some(requests),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            status: None,
        }
    }
}

impl Keyed for ClaimOutline {
    fn key_namespace(&self) -> &str {
        &self.identity.namespace
    }
    fn key_name(&self) -> &str {
        &self.identity.name
    }
}

/// Every store the reconcile reads from.
pub struct Caches {
    client: Client,
    /// Every WhatsAppNumber, untyped (the controller's own store).
    pub numbers: Numbers,
    /// Masters and coreapps of every number, as fencing and the matching of
    /// gateway nodes to pods read them ([`PodOutline`]).
    pub node_pods: Cache<PodOutline>,
    /// Webapp pods of every number, from the same watch: read for their
    /// troubles only.
    pub webapp_pods: Cache<PodOutline>,
    pub statefulsets: Cache<Outline<StatefulSet>>,
    pub deployments: Cache<Outline<Deployment>>,
    pub services: Cache<Outline<Service>>,
    /// The ConfigMaps the operator made (the release catalog has its own).
    pub configmaps: Cache<Outline<ConfigMap>>,
    pub budgets: Cache<Outline<PodDisruptionBudget>>,
    pub jobs: Cache<Outline<Job>>,
    /// Every claim, the users' own media claims included.
    pub volume_claims: Cache<ClaimOutline>,
    /// Every Secret's name and version ([`SecretVersion`]).
    pub secrets: Cache<SecretVersion>,
    /// The phone-number claims, cluster-wide.
    pub claims: Cache<WhatsAppNumberClaim>,
    /// The claim Leases of builds from before the claim kind, in the
    /// operator's namespace.
    pub legacy_claims: Cache<Lease>,
    /// The release catalog ConfigMap, alone.
    pub catalog: Cache<ConfigMap>,
    /// Data of the Secrets reconciles asked for, by namespace and name.
    secret_data: Mutex<HashMap<(String, String), Secret>>,
    /// The key Secrets the operator made, with their data: every reconcile
    /// needs them, also the first ones after a start.
    key_secrets: Store<Secret>,
    _key_secrets_watch: AbortOnDrop,
    /// The pods of schema Jobs, status only: whether a schema upgrade's pod
    /// can start at all. They exist only while a schema is made.
    pub schema_pods: Cache<SchemaPod>,
    _schema_pods_watch: AbortOnDrop,
    /// The clients' ServiceMonitors, once the cluster is known to serve them.
    pub service_monitors: ServiceMonitors,
}

impl Caches {
    /// A Secret with its data. The metadata cache says whether it exists and
    /// at which version; the data is read from the API only when that version
    /// was not read before.
    pub async fn secret(&self, namespace: &str, name: &str) -> Result<Option<Secret>> {
        let key = (namespace.to_string(), name.to_string());
        let Some(meta) = self.secrets.get(namespace, name).await? else {
            self.secret_data.lock().expect("secret cache lock").remove(&key);
            return Ok(None);
        };
        let current = |secret: &Secret| secret.metadata.resource_version.as_deref() == meta.resource_version();
        if let Some(watched) = self.key_secrets.get(namespace, name)
            && current(&watched)
        {
            // The watch's copy stands for what a write of the operator kept.
            self.secret_data.lock().expect("secret cache lock").remove(&key);
            return Ok(Some((*watched).clone()));
        }
        if let Some(known) = self.secret_data.lock().expect("secret cache lock").get(&key)
            && current(known)
        {
            return Ok(Some(known.clone()));
        }
        let read = Api::<Secret>::namespaced(self.client.clone(), namespace)
            .get_opt(name)
            .await
            .map_err(super::error::Error::request(format!("reading Secret {namespace}/{name}")))?;
        self.remember_secret(read.as_ref());
        Ok(read)
    }

    /// Drops the data kept of a Secret: nothing needs it any more.
    pub fn forget_secret(&self, namespace: &str, name: &str) {
        self.secret_data.lock().expect("secret cache lock").remove(&(namespace.to_string(), name.to_string()));
    }

    /// Whether the data of a Secret is kept.
    #[cfg(test)]
    pub fn keeps_secret(&self, namespace: &str, name: &str) -> bool {
        self.secret_data.lock().expect("secret cache lock").contains_key(&(namespace.to_string(), name.to_string()))
    }

    /// Keeps a Secret the operator just wrote, so the next read needs no request
    /// once the metadata cache has caught up with it.
    pub fn remember_secret(&self, secret: Option<&Secret>) {
        if let Some(s) = secret {
            let s = secret_data(s.clone());
            let key = (s.namespace().unwrap_or_default(), s.name_any());
            self.secret_data.lock().expect("secret cache lock").insert(key, s);
        }
    }
}

/// Of a Secret, what reconciles read: its data and type, what tells it and
/// its version, and its controller (whether a key Secret is the number's).
/// Labels, other owners and the rest are dropped: a key Secret's came to
/// about half of what was kept of it.
fn secret_data(secret: Secret) -> Secret {
    let Secret { metadata, data, type_, .. } = secret;
    let controller = metadata.owner_references.into_iter().flatten().find(|r| r.controller == Some(true));
    let metadata = ObjectMeta {
        name: metadata.name,
        namespace: metadata.namespace,
        resource_version: metadata.resource_version,
        owner_references: controller.map(|r| vec![r]),
        ..Default::default()
    };
    Secret { metadata, data, type_, ..Default::default() }
}

/// The metadata of the ServiceMonitors the operator made. The Prometheus
/// Operator's CRD is optional, so nothing is watched until a reconcile has
/// read one ServiceMonitor from the API (which shows the CRD is served); from
/// then on the watch answers. A ServiceMonitor changed by hand is set right at
/// the number's next reconcile.
pub struct ServiceMonitors {
    api: Api<PartialObjectMeta<DynamicObject>>,
    selector: String,
    resource: ApiResource,
    watch: Mutex<Option<(reflector::Store<PartialObjectMeta<DynamicObject>>, AbortOnDrop)>>,
}

struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

impl ServiceMonitors {
    fn new(client: &Client, namespace: &Option<String>, selector: &str) -> Self {
        let resource = crate::resources::monitoring::resource();
        let api = match namespace {
            Some(ns) => Api::namespaced_with(client.clone(), ns, &resource),
            None => Api::all_with(client.clone(), &resource),
        };
        Self { api, selector: selector.to_string(), resource, watch: Mutex::default() }
    }

    /// The applied-hash annotation of a ServiceMonitor as the watch last saw
    /// it: `Some(None)` when it does not exist, `None` when the watch has not
    /// started or not listed yet, and the caller must ask the API.
    pub fn applied_hash(&self, namespace: &str, name: &str, annotation: &str) -> Option<Option<String>> {
        let watch = self.watch.lock().expect("service monitor watch lock");
        let (store, _) = watch.as_ref()?;
        store.wait_until_ready().now_or_never()?.ok()?;
        let key = ObjectRef::new_with(name, self.resource.clone()).within(namespace);
        Some(store.get(&key).map(|m| m.annotations().get(annotation).cloned().unwrap_or_default()))
    }

    /// Starts the watch, once: the caller has just seen the CRD served.
    pub fn watch(&self) {
        let mut watch = self.watch.lock().expect("service monitor watch lock");
        if watch.is_some() {
            return;
        }
        let writer = reflector::store::Writer::new(self.resource.clone());
        let store = writer.as_reader();
        let config = listing().labels(&self.selector);
        let stream = reflector::reflector(writer, watcher(self.api.clone(), config).default_backoff());
        let task = tokio::spawn(stream.for_each(|event| {
            if let Err(e) = event {
                tracing::warn!(error = %e, "cannot watch the clients' ServiceMonitors; retrying with backoff");
            }
            futures::future::ready(())
        }));
        *watch = Some((store, AbortOnDrop(task)));
    }
}

/// The objects a watch applied or deleted, as its cache keeps them, once
/// the cache has taken them in.
pub type Touched<T> = std::pin::Pin<Box<dyn Stream<Item = std::result::Result<Arc<T>, watcher::Error>> + Send>>;

/// The watch streams that feed [`Caches`]; the controller polls them, which
/// keeps the stores current and turns their changes into reconciles.
pub struct Feeds {
    pub node_pods: Touched<PodOutline>,
    pub statefulsets: Touched<Outline<StatefulSet>>,
    pub deployments: Touched<Outline<Deployment>>,
    pub services: Touched<Outline<Service>>,
    pub configmaps: Touched<Outline<ConfigMap>>,
    pub budgets: Touched<Outline<PodDisruptionBudget>>,
    pub jobs: Touched<Outline<Job>>,
    pub volume_claims: Touched<ClaimOutline>,
    pub secrets: Touched<SecretVersion>,
    pub claims: Touched<WhatsAppNumberClaim>,
    pub legacy_claims: Touched<Lease>,
    pub catalog: Touched<ConfigMap>,
}

fn strip<K: Resource>(obj: &mut K) {
    obj.meta_mut().managed_fields = None;
    if let Some(a) = obj.meta_mut().annotations.as_mut() {
        a.remove(LAST_APPLIED);
    }
}

/// A cache of what `keep` makes of the objects of a watch, and the stream
/// of those it took in, which feeds it.
fn feed<K, T>(
    events: impl Stream<Item = watcher::Result<watcher::Event<K>>> + Send + 'static,
    what: &'static str,
    keep: impl Fn(K) -> T + Send + 'static,
) -> (Cache<T>, Touched<T>)
where
    K: Send + 'static,
    T: Keyed,
{
    let store = Store::default();
    let writer = store.clone();
    let stream = events
        .map_ok(move |event| futures::stream::iter(writer.apply(kept(event, &keep)).map(Ok)))
        .try_flatten()
        .boxed();
    (Cache { store, what }, stream)
}

fn keep_all<K>(_: &mut K) {}

/// A typed object kept as it is, but for what nobody reads (managed fields,
/// a copy of the last applied object) and what `trim` drops.
fn trimmed<K: Resource>(trim: fn(&mut K)) -> impl Fn(K) -> K {
    move |mut obj| {
        strip(&mut obj);
        trim(&mut obj);
        obj
    }
}

/// Keeps a watch's store current, for a cache that wakes no reconcile.
fn keep_current<T: Keyed>(touched: Touched<T>, what: &'static str) -> AbortOnDrop {
    AbortOnDrop(tokio::spawn(touched.for_each(move |event| {
        if let Err(e) = event {
            tracing::warn!(error = %e, "cannot watch {what}; retrying with backoff");
        }
        futures::future::ready(())
    })))
}

/// The WhatsAppNumbers that changed, as the controller's own store keeps them.
pub type NumberChanges =
    std::pin::Pin<Box<dyn Stream<Item = std::result::Result<NumberObject, watcher::Error>> + Send>>;

/// The WhatsAppNumbers' store, the stream of those that changed, which
/// drives the controller, and the stream of those deleted (as last read),
/// which may free what they held for others. What nobody reads (managed
/// fields, a copy of the last applied object) is not kept.
pub fn numbers_feed(api: Api<NumberObject>) -> (Numbers, NumberChanges, Touched<WhatsAppNumber>) {
    let writer = reflector::store::Writer::default();
    let numbers = Numbers::new(writer.as_reader());
    let decode = numbers.clone();
    let (gone, deleted) = futures::channel::mpsc::unbounded();
    let config = listing().any_semantic();
    let events = watcher(api, config).default_backoff().modify(strip).map_ok(move |event| {
        // The controller's stream is polled as long as this one.
        decode.absorb_noting_gone(event, |wan| {
            let _ = gone.unbounded_send(wan);
        })
    });
    let stream = reflector::reflector(writer, events).applied_objects().boxed();
    (numbers, stream, deleted.map(Ok).boxed())
}

/// A watch event with `keep` applied to its object.
fn kept<K, T>(event: watcher::Event<K>, keep: impl Fn(K) -> T) -> watcher::Event<T> {
    match event {
        watcher::Event::Apply(obj) => watcher::Event::Apply(keep(obj)),
        watcher::Event::InitApply(obj) => watcher::Event::InitApply(keep(obj)),
        watcher::Event::Delete(obj) => watcher::Event::Delete(keep(obj)),
        watcher::Event::Init => watcher::Event::Init,
        watcher::Event::InitDone => watcher::Event::InitDone,
    }
}

/// The pods' caches from one watch: node pods, and webapp pods apart (so
/// that nothing that fences or counts nodes meets a webapp). The stream
/// holds only the node pods that appeared, began to terminate or went away,
/// and the pods whose trouble changed (or that began to terminate with
/// one): readiness changes of a rolling pod wake no one, nor does a webapp
/// coming or going (its Deployment reports that).
fn pods_feed(api: Api<ListedPod>, selector: &str) -> (Cache<PodOutline>, Cache<PodOutline>, Touched<PodOutline>) {
    let mut nodes = super::fencing::StartStopFilter::default();
    let mut webapps = super::fencing::StartStopFilter::troubles_only();
    let events = watcher(api, listing().labels(selector)).default_backoff().map_ok(move |event| {
        let event = kept(event, PodOutline::of);
        let webapp = match &event {
            watcher::Event::Apply(pod) | watcher::Event::InitApply(pod) | watcher::Event::Delete(pod) => {
                Some(super::fencing::is_webapp(&pod.labels))
            }
            watcher::Event::Init | watcher::Event::InitDone => None,
        };
        let relevant = match webapp {
            Some(true) => webapps.relevant(&event),
            Some(false) => nodes.relevant(&event),
            None => nodes.relevant(&event) | webapps.relevant(&event),
        };
        (event, webapp, relevant)
    });
    let (node_store, webapp_store) = (Store::default(), Store::default());
    let (node_writer, webapp_writer) = (node_store.clone(), webapp_store.clone());
    let stream = events
        .map_ok(move |(event, webapp, relevant)| {
            let applied = match webapp {
                Some(true) => webapp_writer.apply(event),
                Some(false) => node_writer.apply(event),
                // A listing begins or ends for both.
                None => {
                    webapp_writer.apply(event.clone());
                    node_writer.apply(event)
                }
            };
            futures::stream::iter(applied.filter(|_| relevant).map(Ok))
        })
        .try_flatten()
        .boxed();
    (Cache { store: node_store, what: "pods" }, Cache { store: webapp_store, what: "webapp pods" }, stream)
}

/// A cache of what is kept of the children of kind `K`, and the stream of
/// those that changed, which feeds it.
fn children_feed<K: Cached>(
    api: Api<K>,
    config: watcher::Config,
    what: &'static str,
) -> (Cache<K::Kept>, Touched<K::Kept>) {
    feed(watcher(api, config).default_backoff(), what, K::keep)
}

/// A Secret as the reconcile's cache of every Secret keeps it: whether it
/// exists, and at which resource version (to know when its data changed).
/// Every Secret of the watched namespaces is kept, most of them nobody's
/// here, so nothing else of it is.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SecretVersion {
    pub namespace: Arc<str>,
    pub name: Box<str>,
    pub resource_version: Option<Box<str>>,
}

impl SecretVersion {
    pub fn of(secret: PartialObjectMeta<Secret>) -> Self {
        let meta = secret.metadata;
        Self {
            namespace: intern(meta.namespace.as_deref().unwrap_or_default()),
            name: meta.name.as_deref().unwrap_or_default().into(),
            resource_version: meta.resource_version.as_deref().map(Into::into),
        }
    }

    pub fn resource_version(&self) -> Option<&str> {
        self.resource_version.as_deref()
    }
}

impl Keyed for SecretVersion {
    fn key_namespace(&self) -> &str {
        &self.namespace
    }
    fn key_name(&self) -> &str {
        &self.name
    }
}

/// The operator's own annotations: the digests that decide a write and
/// the schema record.
const OPERATOR_ANNOTATIONS: &str = "whatsapp.operators.dev/";

/// A schema Job's pod as its cache keeps it: whether it started, or why it
/// cannot. Its status is read, its spec never, and of its metadata the
/// Job's name. A finished Job's pod stays for as long as the Job (a day
/// once it succeeded, until a person deletes it once it failed):
/// once a container ran, its phase alone is kept (a failed pod keeps its
/// containers' states, which say whether one ever started and, once one
/// ended, its exit code and termination message).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct SchemaPod {
    pub namespace: Arc<str>,
    pub name: Box<str>,
    /// The name of its Job.
    pub job: Option<Box<str>>,
    pub status: Option<Box<PodStatus>>,
    /// When its deletion was asked for, if it was.
    pub terminating_since: Option<k8s_openapi::jiff::Timestamp>,
    /// The digits of its phone number and the WhatsAppNumber it is of (its
    /// labels): a schema upgrade at work fences the number like its nodes.
    pub number: Option<Arc<str>>,
    pub instance: Option<Arc<str>>,
    /// When it was made: one made before the object of its name was is an
    /// earlier object's (see [`super::fencing::Fence::split`]).
    pub created: Option<k8s_openapi::jiff::Timestamp>,
}

impl SchemaPod {
    pub fn of(pod: Pod) -> Self {
        use crate::upgrade::job::{JOB_NAME_LABEL, STARTED_PHASES};
        let meta = pod.metadata;
        let status = pod.status.map(|mut status| {
            if status.phase.as_deref().is_some_and(|phase| STARTED_PHASES.contains(&phase)) {
                status = PodStatus { phase: status.phase.take(), ..Default::default() };
            }
            Box::new(status)
        });
        Self {
            namespace: intern(meta.namespace.as_deref().unwrap_or_default()),
            name: meta.name.as_deref().unwrap_or_default().into(),
            job: meta.labels.as_ref().and_then(|l| l.get(JOB_NAME_LABEL)).map(|j| j.as_str().into()),
            status,
            terminating_since: meta.deletion_timestamp.map(|t| t.0),
            created: meta.creation_timestamp.map(|t| t.0),
            number: meta.labels.as_ref().and_then(|l| l.get(crate::resources::names::LABEL_NUMBER)).map(|n| intern(n)),
            instance: meta
                .labels
                .as_ref()
                .and_then(|l| l.get(crate::resources::names::LABEL_INSTANCE))
                .map(|i| intern(i)),
        }
    }

    /// Whether its containers are done for good (the pod succeeded or failed).
    pub fn finished(&self) -> bool {
        let phase = self.status.as_ref().and_then(|s| s.phase.as_deref());
        matches!(phase, Some("Succeeded" | "Failed"))
    }

    /// The pod as [`crate::upgrade::job::state`] reads it: its status.
    pub fn pod(&self) -> Pod {
        Pod { status: self.status.as_deref().cloned(), ..Default::default() }
    }
}

impl Keyed for SchemaPod {
    fn key_namespace(&self) -> &str {
        &self.namespace
    }
    fn key_name(&self) -> &str {
        &self.name
    }
}

/// A master or coreapp pod as fencing, the matching of gateway nodes to
/// pods and the tier counts read it: its identity (with when it began to
/// terminate), the labels that tell its number, instance and role, its IP,
/// its StatefulSet revision and its trouble, if any. Webapp pods are kept
/// the same way, apart, for their troubles.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PodOutline {
    pub identity: Identity,
    pub labels: ReadLabels,
    pub ip: Option<Box<str>>,
    /// Its creation: a pod older than the WhatsAppNumber of its name is an
    /// earlier object's (see [`super::fencing::Fence::split`]).
    pub created: Option<k8s_openapi::jiff::Timestamp>,
    /// Its StatefulSet's revision it was created at (`controller-revision-hash`).
    pub revision: Option<Box<str>>,
    /// Why it does not run, if it cannot by itself (see [`super::troubles`]).
    pub trouble: Option<Box<str>>,
}

/// The label a StatefulSet puts on each pod: the revision it was created at.
const REVISION_LABEL: &str = "controller-revision-hash";

impl PodOutline {
    pub fn of(pod: ListedPod) -> Self {
        Self {
            identity: Identity::of(&pod.metadata),
            labels: ReadLabels::of(pod.metadata.labels.as_ref()),
            trouble: pod.status.as_ref().and_then(|s| super::troubles::trouble(&s.container_statuses)),
            ip: pod.status.and_then(|s| s.pod_ip).map(Into::into),
            created: pod.metadata.creation_timestamp.map(|t| t.0),
            revision: pod.metadata.labels.as_ref().and_then(|l| l.get(REVISION_LABEL)).map(|r| r.as_str().into()),
        }
    }

    pub fn name(&self) -> &str {
        &self.identity.name
    }
}

impl Keyed for PodOutline {
    fn key_namespace(&self) -> &str {
        &self.identity.namespace
    }
    fn key_name(&self) -> &str {
        &self.identity.name
    }
}

/// A pod as the pod watch decodes it: metadata, pod IP and a
/// brief of its containers' states; its spec and the rest of its status are
/// never decoded.
#[derive(Clone, Debug, Default, serde::Deserialize)]
pub struct ListedPod {
    pub metadata: ObjectMeta,
    #[serde(default)]
    pub status: Option<PodAddress>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Deserialize)]
pub struct PodAddress {
    #[serde(rename = "podIP", default)]
    pub pod_ip: Option<String>,
    #[serde(rename = "containerStatuses", default)]
    pub container_statuses: Vec<super::troubles::ContainerBrief>,
}

impl Resource for ListedPod {
    type DynamicType = ();
    type Scope = NamespaceResourceScope;

    fn kind(_: &()) -> std::borrow::Cow<'_, str> {
        Pod::kind(&())
    }
    fn group(_: &()) -> std::borrow::Cow<'_, str> {
        Pod::group(&())
    }
    fn version(_: &()) -> std::borrow::Cow<'_, str> {
        Pod::version(&())
    }
    fn plural(_: &()) -> std::borrow::Cow<'_, str> {
        Pod::plural(&())
    }
    fn meta(&self) -> &ObjectMeta {
        &self.metadata
    }
    fn meta_mut(&mut self) -> &mut ObjectMeta {
        &mut self.metadata
    }
}

/// Builds the caches and their feeds. `namespace` limits the watches of
/// children and Secrets to one namespace, as the operator's RBAC does.
pub fn build(
    client: &Client,
    namespace: &Option<String>,
    operator_namespace: &str,
    release_catalog: &str,
    numbers: Numbers,
    pod_selector: &str,
    owned_selector: &str,
) -> (Caches, Feeds) {
    let owned = || listing().labels(owned_selector);
    let (node_pods, webapp_pods, pods_feed) = pods_feed(scoped(client, namespace), pod_selector);
    let (statefulsets, sts_feed) = children_feed::<StatefulSet>(scoped(client, namespace), owned(), "statefulsets");
    let (deployments, deploy_feed) = children_feed::<Deployment>(scoped(client, namespace), owned(), "deployments");
    let (services, svc_feed) = children_feed::<Service>(scoped(client, namespace), owned(), "services");
    let (configmaps, cm_feed) = children_feed::<ConfigMap>(scoped(client, namespace), owned(), "configmaps");
    let (budgets, pdb_feed) =
        children_feed::<PodDisruptionBudget>(scoped(client, namespace), owned(), "poddisruptionbudgets");
    let (jobs, job_feed) = children_feed::<Job>(scoped(client, namespace), owned(), "jobs");
    // The media claim's spec is read (access modes, class, size): claims are
    // kept as outlines (`ClaimOutline`), users' claims too.
    let (volume_claims, pvc_feed) =
        children_feed::<PersistentVolumeClaim>(scoped(client, namespace), listing(), "persistentvolumeclaims");
    let (claims, claim_feed) = feed(
        watcher(Api::all(client.clone()), listing()).default_backoff(),
        "number claims (is the WhatsAppNumberClaim CRD installed?)",
        trimmed(keep_all),
    );
    let (legacy_claims, lease_feed) = feed(
        watcher(
            Api::namespaced(client.clone(), operator_namespace),
            listing().labels(&format!("{}=true", super::claim::LEGACY_CLAIM_LABEL)),
        )
        .default_backoff(),
        "legacy number claim Leases",
        trimmed(keep_all),
    );
    let (catalog, catalog_feed) = feed(
        watcher(
            Api::namespaced(client.clone(), operator_namespace),
            listing().fields(&format!("metadata.name={release_catalog}")),
        )
        .default_backoff(),
        "the release catalog",
        trimmed(keep_all),
    );

    // The operator's own key Secrets with their data, kept current by a task
    // of their own (the metadata watch below wakes the reconciles).
    let (key_secrets, key_secrets_watch) = {
        let selector = format!("{owned_selector},{}=keys", crate::resources::names::LABEL_COMPONENT);
        let what = "the operator's key Secrets";
        let events = watcher(scoped::<Secret>(client, namespace), listing().labels(&selector)).default_backoff();
        let (cache, touched) = feed(events, what, secret_data);
        (cache.store, keep_current(touched, what))
    };
    let (schema_pods, schema_pods_watch) = {
        let selector = format!(
            "{},{}={}",
            crate::resources::names::LABEL_MANAGED_BY_SELECTOR,
            crate::resources::names::LABEL_COMPONENT,
            crate::resources::schema_job::COMPONENT
        );
        let what = "schema Job pods";
        let events = watcher(scoped::<Pod>(client, namespace), listing().labels(&selector)).default_backoff();
        let (cache, touched) = feed(events, what, SchemaPod::of);
        let watch = keep_current(touched, what);
        (cache, watch)
    };
    // Metadata only: Secrets are many and large; data is read when needed.
    let (secrets, secrets_feed) = feed(
        watcher(scoped::<PartialObjectMeta<Secret>>(client, namespace), listing()).default_backoff(),
        "secrets",
        SecretVersion::of,
    );

    let caches = Caches {
        client: client.clone(),
        numbers,
        node_pods,
        webapp_pods,
        statefulsets,
        deployments,
        services,
        configmaps,
        budgets,
        jobs,
        volume_claims,
        secrets,
        claims,
        legacy_claims,
        catalog,
        secret_data: Mutex::default(),
        key_secrets,
        _key_secrets_watch: key_secrets_watch,
        schema_pods,
        _schema_pods_watch: schema_pods_watch,
        service_monitors: ServiceMonitors::new(client, namespace, owned_selector),
    };
    let feeds = Feeds {
        node_pods: pods_feed,
        statefulsets: sts_feed,
        deployments: deploy_feed,
        services: svc_feed,
        configmaps: cm_feed,
        budgets: pdb_feed,
        jobs: job_feed,
        volume_claims: pvc_feed,
        secrets: secrets_feed,
        claims: claim_feed,
        legacy_claims: lease_feed,
        catalog: catalog_feed,
    };
    (caches, feeds)
}

fn scoped<K>(client: &Client, namespace: &Option<String>) -> Api<K>
where
    K: Resource<DynamicType = (), Scope = NamespaceResourceScope>,
{
    match namespace {
        Some(ns) => Api::namespaced(client.clone(), ns),
        None => Api::all(client.clone()),
    }
}

/// Caches filled by hand, for tests of whole reconciles: what the watches
/// would deliver is put in with [`Seeds::relist`].
#[cfg(test)]
pub struct Seeds {
    numbers: reflector::store::Writer<NumberObject>,
    decode: Numbers,
    node_pods: Store<PodOutline>,
    webapp_pods: Store<PodOutline>,
    statefulsets: Store<Outline<StatefulSet>>,
    deployments: Store<Outline<Deployment>>,
    services: Store<Outline<Service>>,
    configmaps: Store<Outline<ConfigMap>>,
    budgets: Store<Outline<PodDisruptionBudget>>,
    jobs: Store<Outline<Job>>,
    volume_claims: Store<ClaimOutline>,
    secrets: Store<SecretVersion>,
    key_secrets: Store<Secret>,
    claims: Store<WhatsAppNumberClaim>,
    schema_pods: Store<SchemaPod>,
}

#[cfg(test)]
impl Seeds {
    /// Empty caches, every one listed (ready), and the handle that fills them.
    pub fn caches(client: &Client, owned_selector: &str) -> (Caches, Self) {
        fn listed<T: Keyed>() -> Store<T> {
            let store = Store::default();
            store.apply(watcher::Event::Init);
            store.apply(watcher::Event::InitDone);
            store
        }
        fn cache<T: Keyed>(store: &Store<T>, what: &'static str) -> Cache<T> {
            Cache { store: store.clone(), what }
        }
        let mut numbers = reflector::store::Writer::default();
        numbers.apply_watcher_event(&watcher::Event::Init);
        numbers.apply_watcher_event(&watcher::Event::InitDone);
        let decode = Numbers::new(numbers.as_reader());
        let seeds = Self {
            numbers,
            decode: decode.clone(),
            node_pods: listed(),
            webapp_pods: listed(),
            statefulsets: listed(),
            deployments: listed(),
            services: listed(),
            configmaps: listed(),
            budgets: listed(),
            jobs: listed(),
            volume_claims: listed(),
            secrets: listed(),
            key_secrets: listed(),
            claims: listed(),
            schema_pods: listed(),
        };
        let caches = Caches {
            client: client.clone(),
            numbers: decode,
            node_pods: cache(&seeds.node_pods, "pods"),
            webapp_pods: cache(&seeds.webapp_pods, "webapp pods"),
            statefulsets: cache(&seeds.statefulsets, "statefulsets"),
            deployments: cache(&seeds.deployments, "deployments"),
            services: cache(&seeds.services, "services"),
            configmaps: cache(&seeds.configmaps, "configmaps"),
            budgets: cache(&seeds.budgets, "poddisruptionbudgets"),
            jobs: cache(&seeds.jobs, "jobs"),
            volume_claims: cache(&seeds.volume_claims, "persistentvolumeclaims"),
            secrets: cache(&seeds.secrets, "secrets"),
            claims: cache(&seeds.claims, "number claims"),
            legacy_claims: cache(&listed(), "legacy number claim Leases"),
            catalog: cache(&listed(), "the release catalog"),
            secret_data: Mutex::default(),
            key_secrets: seeds.key_secrets.clone(),
            _key_secrets_watch: AbortOnDrop(tokio::spawn(async {})),
            schema_pods: cache(&seeds.schema_pods, "schema Job pods"),
            _schema_pods_watch: AbortOnDrop(tokio::spawn(async {})),
            service_monitors: ServiceMonitors::new(client, &None, owned_selector),
        };
        (caches, seeds)
    }

    /// Replaces what every cache holds with `objects`, as a fresh listing
    /// of each watch would (so objects that went are gone from the caches).
    pub fn relist(&mut self, objects: &[serde_json::Value]) {
        /// As the watch delivers them to the store.
        fn list<K: DeserializeOwned, T: Keyed>(
            store: &Store<T>,
            objects: &[serde_json::Value],
            kind: &str,
            keep: impl Fn(K) -> T,
        ) {
            store.apply(watcher::Event::Init);
            for obj in objects.iter().filter(|o| o["kind"] == kind) {
                let k: K = serde_json::from_value(obj.clone()).expect("an object of its kind");
                store.apply(watcher::Event::InitApply(keep(k)));
            }
            store.apply(watcher::Event::InitDone);
        }
        let mut events = vec![watcher::Event::Init];
        for obj in objects.iter().filter(|o| o["kind"] == "WhatsAppNumber") {
            let mut number: NumberObject = serde_json::from_value(obj.clone()).expect("a WhatsAppNumber");
            strip(&mut number);
            events.push(watcher::Event::InitApply(number));
        }
        events.push(watcher::Event::InitDone);
        for event in events {
            self.numbers.apply_watcher_event(&self.decode.absorb(event));
        }
        let component = crate::resources::names::LABEL_COMPONENT;
        let (webapp_pods, node_pods): (Vec<serde_json::Value>, Vec<serde_json::Value>) =
            objects.iter().cloned().partition(|o| o["metadata"]["labels"][component] == "webapp");
        list(&self.node_pods, &node_pods, "Pod", PodOutline::of);
        list(&self.webapp_pods, &webapp_pods, "Pod", PodOutline::of);
        list(&self.statefulsets, objects, "StatefulSet", StatefulSet::keep);
        list(&self.deployments, objects, "Deployment", Deployment::keep);
        list(&self.services, objects, "Service", Service::keep);
        list(&self.configmaps, objects, "ConfigMap", ConfigMap::keep);
        list(&self.budgets, objects, "PodDisruptionBudget", PodDisruptionBudget::keep);
        list(&self.jobs, objects, "Job", Job::keep);
        list(&self.volume_claims, objects, "PersistentVolumeClaim", PersistentVolumeClaim::keep);
        list(&self.claims, objects, "WhatsAppNumberClaim", trimmed(keep_all));
        let schema = crate::resources::schema_job::COMPONENT;
        let schema_pods: Vec<serde_json::Value> =
            objects.iter().filter(|o| o["metadata"]["labels"][component] == schema).cloned().collect();
        list(&self.schema_pods, &schema_pods, "Pod", SchemaPod::of);
        let secrets: Vec<serde_json::Value> = objects.iter().filter(|o| o["kind"] == "Secret").cloned().collect();
        let metadata: Vec<serde_json::Value> = secrets
            .iter()
            .map(|o| serde_json::json!({"apiVersion": "v1", "kind": "Secret", "metadata": o["metadata"]}))
            .collect();
        list(&self.secrets, &metadata, "Secret", SecretVersion::of);
        let keys: Vec<serde_json::Value> =
            secrets.into_iter().filter(|o| o["metadata"]["labels"][component] == "keys").collect();
        list(&self.key_secrets, &keys, "Secret", secret_data);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::resources::names::{LABEL_COMPONENT, LABEL_INSTANCE, LABEL_MANAGED_BY, LABEL_NUMBER};

    fn number(uid: &str, version: &str, phone: serde_json::Value) -> NumberObject {
        let mut v = serde_json::to_value(crate::fixtures::sample()).unwrap();
        v["apiVersion"] = "whatsapp.operators.dev/v1alpha1".into();
        v["kind"] = "WhatsAppNumber".into();
        v["metadata"] = serde_json::json!({"name": uid, "namespace": "team", "uid": uid, "resourceVersion": version,
            "labels": {"team": "payments"}, "finalizers": [super::super::claim::FINALIZER]});
        v["spec"]["phoneNumber"] = phone;
        serde_json::from_value(v).unwrap()
    }

    #[test]
    fn numbers_are_decoded_once_as_they_arrive_and_kept_decoded_alone() {
        let mut writer = reflector::store::Writer::<NumberObject>::default();
        let numbers = Numbers::new(writer.as_reader());
        let mut deliver = |event| writer.apply_watcher_event(&numbers.absorb(event));
        deliver(watcher::Event::Apply(number("a", "1", "+15550001111".into())));
        deliver(watcher::Event::Apply(number("b", "1", 42.into())));
        let first = numbers.readable();
        assert_eq!(first.len(), 1, "the unreadable object is left out");
        assert_eq!(first[0].spec.phone_number, "+15550001111");
        let references = numbers.references(|_| true);
        assert_eq!(references.len(), 1);
        assert_eq!((references[0].name.as_str(), references[0].namespace.as_deref()), ("a", Some("team")));
        assert!(numbers.references(|wan| wan.spec.phone_number.ends_with("2222")).is_empty(), "only those picked");
        let again = numbers.readable();
        assert!(Arc::ptr_eq(&first[0], &again[0]), "an unchanged object is not decoded again");

        // The store keeps the metadata of a decoded object, and all of an unreadable one.
        let stored = |uid: &str| numbers.store.get(&ObjectRef::new(uid).within("team"));
        let a = stored("a").expect("stored");
        assert!(a.data.is_null(), "no second copy of a decoded object");
        assert_eq!((a.uid().as_deref(), a.resource_version().as_deref()), (Some("a"), Some("1")));
        assert!(a.labels().is_empty() && a.finalizers().is_empty(), "its identity alone");
        assert_eq!(numbers.decoded(&a).expect("decoded").spec.phone_number, "+15550001111");
        let b = stored("b").expect("stored");
        assert_eq!(b.data["spec"]["phoneNumber"], 42, "an unreadable object is kept whole");
        assert_eq!(b.finalizers(), [super::super::claim::FINALIZER], "its deletion reads its finalizer");
        assert!(numbers.decoded(&b).is_none());

        deliver(watcher::Event::Apply(number("a", "2", "+15550002222".into())));
        deliver(watcher::Event::Apply(number("b", "2", "+15550003333".into())));
        let mut phones: Vec<String> = numbers.readable().iter().map(|w| w.spec.phone_number.clone()).collect();
        phones.sort();
        assert_eq!(phones, ["+15550002222", "+15550003333"], "new versions are decoded again");
        deliver(watcher::Event::Delete(number("a", "2", "+15550002222".into())));
        assert_eq!(numbers.readable().len(), 1, "a deleted object is forgotten");

        // A new listing: what it does not list is gone.
        deliver(watcher::Event::Init);
        deliver(watcher::Event::InitApply(number("c", "3", "+15550004444".into())));
        assert_eq!(numbers.readable().len(), 2, "the old listing stands until the new one is done");
        deliver(watcher::Event::InitDone);
        let listed: Vec<String> = numbers.readable().iter().map(|w| w.name_any()).collect();
        assert_eq!(listed, ["c"]);
        assert!(stored("b").is_none() && stored("c").is_some());
    }

    #[test]
    fn numbers_deleted_or_no_longer_listed_are_handed_on_as_gone() {
        let numbers = Numbers::new(reflector::store::Writer::<NumberObject>::default().as_reader());
        let mut gone = Vec::new();
        let mut deliver = |event| {
            numbers.absorb_noting_gone(event, |wan| gone.push(wan.name_any()));
        };
        deliver(watcher::Event::Apply(number("a", "1", "+15550001111".into())));
        deliver(watcher::Event::Apply(number("b", "1", "+15550002222".into())));
        deliver(watcher::Event::Apply(number("u", "1", 42.into())));
        deliver(watcher::Event::Delete(number("a", "1", "+15550001111".into())));
        deliver(watcher::Event::Delete(number("u", "1", 42.into())));
        // Deleted while the watch was down: the new listing leaves it out.
        deliver(watcher::Event::Init);
        deliver(watcher::Event::InitApply(number("c", "2", "+15550003333".into())));
        deliver(watcher::Event::InitDone);
        assert_eq!(gone, ["a", "b"], "readable objects only, each once");
    }

    #[test]
    fn a_cached_pod_keeps_its_identity_address_and_revision_only() {
        let pod = serde_json::json!({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {
                "name": "acme-coreapp-0", "generateName": "acme-coreapp-", "namespace": "team", "uid": "u1",
                "deletionTimestamp": "2026-01-01T00:00:00Z",
                "labels": {
                    LABEL_INSTANCE: "acme", LABEL_COMPONENT: "coreapp", LABEL_MANAGED_BY: "whatsapp-operator",
                    LABEL_NUMBER: "15550001111", "controller-revision-hash": "acme-coreapp-5d8f", "a": "b"
                },
                "annotations": {LAST_APPLIED: "{}", "other": "yes"},
                "ownerReferences": [{"apiVersion": "apps/v1", "kind": "StatefulSet", "name": "acme-coreapp", "uid": "s1"}],
                "managedFields": [{"manager": "kubelet"}]
            },
            "spec": {"containers": [{"name": "coreapp", "image": "x"}]},
            "status": {"podIP": "10.0.0.7", "phase": "Running"}
        });
        let listed: ListedPod = serde_json::from_value(pod).unwrap();
        assert_eq!(ListedPod::url_path(&(), Some("team")), "/api/v1/namespaces/team/pods");
        let pod = PodOutline::of(listed);
        assert_eq!(pod.ip.as_deref(), Some("10.0.0.7"));
        assert_eq!(pod.revision.as_deref(), Some("acme-coreapp-5d8f"), "its tier reads which template it runs");
        assert_eq!(
            pod.identity,
            Identity {
                namespace: "team".into(),
                name: "acme-coreapp-0".into(),
                uid: "u1".into(),
                generation: None,
                deletion: Some("2026-01-01T00:00:00Z".parse().unwrap()),
            },
            "fencing reads when it began to terminate"
        );
        assert_eq!(
            pod.labels,
            ReadLabels {
                instance: Some("acme".into()),
                component: Some("coreapp".into()),
                managed_by: Some("whatsapp-operator".into()),
                number: Some("15550001111".into()),
            }
        );
        assert_eq!((pod.key_namespace(), pod.key_name()), ("team", "acme-coreapp-0"));
        let fenced = super::super::fencing::NodePod::of_number(&pod.identity, &pod.labels, "15550001111")
            .expect("still its number's");
        assert_eq!(fenced.instance, "acme");
        let pending: ListedPod = serde_json::from_value(serde_json::json!({"metadata": {"name": "p"}})).unwrap();
        assert!(PodOutline::of(pending).ip.is_none(), "a pod without an address yet");
    }

    #[test]
    fn a_cached_schema_pod_keeps_what_tells_whether_it_started() {
        use crate::upgrade::job::{JOB_NAME_LABEL, state};
        use crate::upgrade::procedure::JobState;
        let pod = |phase: &str, waiting: Option<&str>| -> Pod {
            serde_json::from_value(serde_json::json!({
                "metadata": {"name": "acme-schema-x", "namespace": "team",
                    "labels": {JOB_NAME_LABEL: "acme-schema", "controller-uid": "j1"},
                    "annotations": {"a": "b"}, "finalizers": ["batch.kubernetes.io/job-tracking"],
                    "ownerReferences": [{"apiVersion": "batch/v1", "kind": "Job", "name": "acme-schema", "uid": "j1"}]},
                "spec": {"containers": [{"name": "schema", "image": "x"}]},
                "status": {"phase": phase, "conditions": [{"type": "PodScheduled", "status": "True"}],
                    "containerStatuses": [{"name": "schema", "image": "wa:v2", "imageID": "", "ready": false,
                        "restartCount": 0,
                        "state": waiting.map_or(serde_json::json!({"terminated": {"exitCode": 0}}),
                            |reason| serde_json::json!({"waiting": {"reason": reason}}))}]}
            }))
            .unwrap()
        };
        let job: Job =
            serde_json::from_value(serde_json::json!({"metadata": {"name": "acme-schema"}, "status": {}})).unwrap();
        for (phase, waiting, expected) in [
            ("Succeeded", None, JobState::running()),
            ("Running", None, JobState::running()),
            ("Pending", Some("ImagePullBackOff"), JobState::Unstartable("image wa:v2: ImagePullBackOff".into())),
        ] {
            let kept = SchemaPod::of(pod(phase, waiting));
            assert_eq!(state(Some(&job), &[kept.pod()]), expected, "{phase}");
            assert_eq!(state(Some(&job), &[pod(phase, waiting)]), expected, "{phase}: as the whole pod says");
            assert_eq!(
                (kept.key_namespace(), kept.key_name(), kept.job.as_deref()),
                ("team", "acme-schema-x", Some("acme-schema"))
            );
            let status = kept.status.expect("its status");
            assert_eq!(status.container_statuses.is_none(), waiting.is_none(), "{phase}: the phase alone once started");
        }
        // A failed attempt keeps its container's end: exit code, start and
        // the termination message the status quotes.
        let mut failed = pod("Failed", None);
        let statuses = failed.status.as_mut().and_then(|s| s.container_statuses.as_mut()).unwrap();
        statuses[0].state = Some(
            serde_json::from_value(serde_json::json!({"terminated": {
            "exitCode": 1, "reason": "Error", "startedAt": "2026-01-01T00:00:00Z",
            "finishedAt": "2026-01-01T00:00:01Z", "message": "Access denied for user 'wa'"}}))
            .unwrap(),
        );
        let kept = SchemaPod::of(failed.clone());
        let expected = JobState::Running {
            last_failure: Some("1 attempt failed with exit code 1: Access denied for user 'wa'".into()),
        };
        assert_eq!(state(Some(&job), &[kept.pod()]), expected);
        assert_eq!(state(Some(&job), &[failed]), expected, "as the whole pod says");
    }

    #[test]
    fn a_secret_read_for_its_data_keeps_data_type_and_version_alone() {
        let secret: Secret = serde_json::from_value(serde_json::json!({
            "apiVersion": "v1", "kind": "Secret", "type": "Opaque",
            "metadata": {
                "name": "acme-keys", "namespace": "team", "uid": "s1", "resourceVersion": "42",
                "labels": {"app.kubernetes.io/managed-by": "whatsapp-operator"},
                "ownerReferences": [
                    {"apiVersion": "v1", "kind": "ConfigMap", "name": "c", "uid": "c1"},
                    {"apiVersion": "whatsapp.operators.dev/v1alpha1", "kind": "WhatsAppNumber", "name": "acme",
                     "uid": "n1", "controller": true}
                ],
                "managedFields": [{"manager": "whatsapp-operator", "operation": "Update"}]
            },
            "data": {"api-key": "a2V5"}
        }))
        .unwrap();
        let kept = secret_data(secret.clone());
        assert_eq!(kept.data, secret.data);
        assert_eq!(kept.type_.as_deref(), Some("Opaque"));
        assert_eq!(
            (kept.key_namespace(), kept.key_name(), kept.metadata.resource_version.as_deref()),
            ("team", "acme-keys", Some("42"))
        );
        assert_eq!(
            kept.metadata,
            ObjectMeta {
                name: Some("acme-keys".into()),
                namespace: Some("team".into()),
                resource_version: Some("42".into()),
                owner_references: Some(vec![secret.metadata.owner_references.unwrap()[1].clone()]),
                ..Default::default()
            }
        );
    }

    #[test]
    fn a_cached_secret_is_its_identity_and_version() {
        let secret: PartialObjectMeta<Secret> = serde_json::from_value(serde_json::json!({
            "apiVersion": "meta.k8s.io/v1", "kind": "PartialObjectMetadata",
            "metadata": {
                "name": "sh.helm.release.v1.x.v1", "namespace": "team", "uid": "s1", "resourceVersion": "42",
                "labels": {"owner": "helm", "status": "deployed"},
                "annotations": {"meta.helm.sh/release-name": "x"},
                "ownerReferences": [{"apiVersion": "v1", "kind": "ConfigMap", "name": "c", "uid": "c1"}],
                "finalizers": ["example.com/keep"]
            }
        }))
        .unwrap();
        let kept = SecretVersion::of(secret);
        assert_eq!(
            kept,
            SecretVersion {
                namespace: "team".into(),
                name: "sh.helm.release.v1.x.v1".into(),
                resource_version: Some("42".into())
            }
        );
        assert_eq!(
            (kept.key_namespace(), kept.key_name(), kept.resource_version()),
            ("team", "sh.helm.release.v1.x.v1", Some("42"))
        );
    }

    #[test]
    fn a_cached_claim_keeps_what_the_builder_copies_and_the_operators_annotations() {
        use crate::resources::names::{ANNOTATION_APPLIED_HASH, ANNOTATION_SCHEMA_VERSION, FIELD_MANAGER};
        let claim: PersistentVolumeClaim = serde_json::from_value(serde_json::json!({
            "metadata": {
                "name": "acme-media", "namespace": "team", "uid": "c1",
                "labels": {LABEL_INSTANCE: "acme"},
                "annotations": {ANNOTATION_APPLIED_HASH: "h1", ANNOTATION_SCHEMA_VERSION: "2.53.2",
                    "pv.kubernetes.io/bind-completed": "yes", "volume.kubernetes.io/selected-node": "n1"},
                "finalizers": ["kubernetes.io/pvc-protection"],
                "ownerReferences": [{"apiVersion": "whatsapp.operators.dev/v1alpha1", "kind": "WhatsAppNumber",
                    "name": "acme", "uid": "w1", "controller": true}],
                "managedFields": [{"manager": FIELD_MANAGER, "operation": "Apply",
                    "fieldsV1": {"f:spec": {"f:resources": {"f:requests": {"f:storage": {}}}}}}]
            },
            "spec": {"accessModes": ["ReadWriteMany"], "storageClassName": "nfs", "volumeMode": "Filesystem",
                "volumeName": "pvc-123", "resources": {"requests": {"storage": "50Gi"}}},
            "status": {"phase": "Bound", "capacity": {"storage": "50Gi"}, "accessModes": ["ReadWriteMany"]}
        }))
        .unwrap();
        let kept = PersistentVolumeClaim::keep(claim);
        let annotations: Vec<&str> = kept.annotations.iter().map(|(k, _)| &**k).collect();
        assert_eq!(annotations, [ANNOTATION_APPLIED_HASH, ANNOTATION_SCHEMA_VERSION], "the operator's alone");
        assert_eq!(PersistentVolumeClaim::digests(&kept).0, Some(Compact::new("h1")));
        assert!(PersistentVolumeClaim::digests(&kept).1.is_some(), "taken from the whole claim");
        assert!(PersistentVolumeClaim::controlled_by(&kept, "w1") && !PersistentVolumeClaim::controlled_by(&kept, "x"));
        assert!(!PersistentVolumeClaim::deleting(&kept));
        assert_eq!((kept.key_namespace(), kept.key_name()), ("team", "acme-media"));
        let read = kept.claim();
        assert_eq!(read.metadata.name.as_deref(), Some("acme-media"));
        assert_eq!(read.metadata.uid.as_deref(), Some("c1"));
        let annotations = read.metadata.annotations.as_ref().expect("the operator's annotations");
        assert_eq!(annotations[ANNOTATION_SCHEMA_VERSION], "2.53.2");
        assert_eq!(annotations.len(), 2);
        assert_eq!((read.metadata.labels.as_ref(), read.metadata.finalizers.as_ref()), (None, None));
        assert!(read.status.is_none());
        let spec = read.spec.as_ref().unwrap();
        assert_eq!(spec.volume_name, None);
        assert_eq!(spec.storage_class_name.as_deref(), Some("nfs"));
        assert_eq!(spec.volume_mode.as_deref(), Some("Filesystem"));
        assert_eq!(spec.access_modes.as_deref(), Some(&["ReadWriteMany".to_string()][..]));
        assert_eq!(spec.resources.as_ref().unwrap().requests.as_ref().unwrap()["storage"].0, "50Gi");
        let version = crate::resources::media::schema_version_of;
        let databases = "db:3306/wa";
        let recorded: PersistentVolumeClaim = serde_json::from_value(serde_json::json!({"metadata": {"name": "c",
            "annotations": {ANNOTATION_SCHEMA_VERSION: "2.53.2",
                crate::resources::names::ANNOTATION_SCHEMA_DATABASES: databases}}}))
        .unwrap();
        assert_eq!(
            version(&ClaimOutline::of(recorded).claim(), databases).as_deref(),
            Some("2.53.2"),
            "the schema record reads back"
        );
    }
}
