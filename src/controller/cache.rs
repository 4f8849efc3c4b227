//! Shared caches: every object a reconcile reads comes from a watch-fed store,
//! so a reconcile of a number whose objects did not change makes no read of
//! the API server at all.
//!
//! The stores keep what the operator reads and drop the rest (managed fields,
//! the last-applied annotation, pod specs). Of the children the operator
//! applies they keep an outline ([`super::outline`]): identity, the digests
//! that decide a write, and of workloads and Jobs the counts and status read.
//! Secrets are watched by metadata only: their data is read by name when a
//! reconcile needs it and kept until their resource version changes.

use std::collections::HashMap;
use std::fmt::Debug;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::{FutureExt as _, Stream, StreamExt, TryStreamExt as _};
use k8s_openapi::NamespaceResourceScope;
use k8s_openapi::api::apps::v1::{Deployment, StatefulSet};
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{ConfigMap, PersistentVolumeClaim, Pod, Secret, Service};
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use kube::api::{ApiResource, DynamicObject, ObjectMeta};
use kube::core::PartialObjectMeta;
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Client, Resource, ResourceExt};
use serde::de::DeserializeOwned;

use super::error::Result;
use super::outline::{Outline, keep_read_labels};
use crate::api::{WhatsAppNumber, WhatsAppNumberClaim};

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

/// One watch-fed store of objects of kind `K`.
#[derive(Clone)]
/// A cache that has not finished its first listing, where "absent" would
/// mean nothing.
#[derive(Debug, thiserror::Error)]
#[error("the operator's cache of {0} has not finished its first listing")]
pub struct NotReady(pub &'static str);

pub struct Cache<K: Resource<DynamicType = ()> + Clone + 'static> {
    store: Store<K>,
    what: &'static str,
}

impl<K> Cache<K>
where
    K: Resource<DynamicType = ()> + Clone + 'static,
{
    /// Waits for the first complete listing: before it, "absent" means nothing.
    pub async fn ready(&self) -> Result<(), NotReady> {
        tokio::time::timeout(WAIT, self.store.wait_until_ready())
            .await
            .map_err(|_| NotReady(self.what))?
            .map_err(|_| NotReady(self.what))
    }

    pub async fn get(&self, namespace: &str, name: &str) -> Result<Option<Arc<K>>, NotReady> {
        self.ready().await?;
        Ok(self.store.get(&ObjectRef::new(name).within(namespace)))
    }

    /// A cluster-scoped object by name.
    pub async fn get_cluster(&self, name: &str) -> Result<Option<Arc<K>>, NotReady> {
        self.ready().await?;
        Ok(self.store.get(&ObjectRef::new(name)))
    }

    /// Every cached object that `keep` accepts.
    pub async fn filter(&self, keep: impl Fn(&K) -> bool) -> Result<Vec<Arc<K>>, NotReady> {
        self.ready().await?;
        Ok(self.store.state_filter(|o| keep(o)))
    }
}

/// Every WhatsAppNumber the controller sees: its store of the untyped
/// objects, and each one decoded once, as the watch delivers it. The store
/// keeps a decoded object's metadata alone (its data is the decoded copy's),
/// and an unreadable object whole, for the status that reports it.
#[derive(Clone)]
pub struct Numbers {
    pub store: Store<DynamicObject>,
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
    pub fn new(store: Store<DynamicObject>) -> Self {
        Self { store, decoded: Arc::default() }
    }

    /// Decodes what a watch event delivers, before the store takes it.
    pub fn absorb(&self, event: watcher::Event<DynamicObject>) -> watcher::Event<DynamicObject> {
        let mut decoded = self.decoded.lock().expect("decoded numbers lock");
        match event {
            watcher::Event::Apply(obj) => watcher::Event::Apply(decoded.decode(obj)),
            watcher::Event::InitApply(obj) => {
                let uid = obj.uid().unwrap_or_default();
                decoded.listing.get_or_insert_with(Default::default).insert(uid);
                watcher::Event::InitApply(decoded.decode(obj))
            }
            watcher::Event::Delete(obj) => {
                decoded.by_uid.remove(&obj.uid().unwrap_or_default());
                watcher::Event::Delete(obj)
            }
            watcher::Event::Init => {
                decoded.listing = Some(Default::default());
                watcher::Event::Init
            }
            watcher::Event::InitDone => {
                if let Some(listed) = decoded.listing.take() {
                    decoded.by_uid.retain(|uid, _| listed.contains(uid));
                }
                watcher::Event::InitDone
            }
        }
    }

    /// The decoded form of a stored object, `None` if it could not be read.
    pub fn decoded(&self, obj: &DynamicObject) -> Option<Arc<WhatsAppNumber>> {
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
    pub fn references(&self, wanted: impl Fn(&WhatsAppNumber) -> bool) -> Vec<ObjectRef<DynamicObject>> {
        let decoded = self.decoded.lock().expect("decoded numbers lock");
        let picked: Vec<&Arc<WhatsAppNumber>> = decoded.by_uid.values().filter(|wan| wanted(wan)).collect();
        if picked.is_empty() {
            return Vec::new();
        }
        let resource = ApiResource::erase::<WhatsAppNumber>(&());
        picked
            .into_iter()
            .map(|wan| {
                let mut reference = ObjectRef::new_with(&wan.name_any(), resource.clone());
                reference.namespace = wan.namespace();
                reference
            })
            .collect()
    }
}

impl Decoded {
    /// `obj` as the store keeps it: once decoded, its identity alone (the
    /// store finds the decoded copy by uid; the controller and the claim
    /// checks read nothing else of it).
    fn decode(&mut self, mut obj: DynamicObject) -> DynamicObject {
        let uid = obj.uid().unwrap_or_default();
        match super::typed(&obj) {
            Ok(wan) => {
                self.by_uid.insert(uid, Arc::new(wan));
                let metadata = super::outline::identity(std::mem::take(&mut obj.metadata));
                return DynamicObject { types: None, metadata, data: serde_json::Value::Null };
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
    type Kept: Resource<DynamicType = (), Scope = NamespaceResourceScope>
        + Clone
        + Debug
        + DeserializeOwned
        + Send
        + Sync
        + 'static;

    fn cache(caches: &Caches) -> &Cache<Self::Kept>;
    /// What the cache keeps of a live object as a watch or a write returns
    /// it, its managed fields still there.
    fn keep(live: Self) -> Self::Kept;
    /// The applied hash and the owned-field digest of a kept object.
    fn digests(kept: &Self::Kept) -> (Option<&str>, Option<&str>);
    /// Whether the WhatsAppNumber with this uid controls a kept object.
    fn controlled_by(kept: &Self::Kept, uid: &str) -> bool;
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
            fn digests(kept: &Outline<$kind>) -> (Option<&str>, Option<&str>) {
                (kept.applied_hash.as_deref(), kept.owned_digest.as_deref())
            }
            fn controlled_by(kept: &Outline<$kind>, uid: &str) -> bool {
                kept.controlled_by(uid)
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

/// Claims are kept as typed objects (users' media claims too), trimmed to
/// what is read: the spec the builder copies back and the operator's own
/// annotations (see [`trim_claim`]).
impl Cached for PersistentVolumeClaim {
    /// A cluster's default class is filled in on creation, owned by no one,
    /// and copied back by the builder: the claim's first apply must not be
    /// followed by another one only to own it. A class cannot change anyway.
    const UNCOMPARED: &'static [&'static str] = &["/spec/storageClassName"];
    type Kept = PersistentVolumeClaim;

    fn cache(caches: &Caches) -> &Cache<Self> {
        &caches.volume_claims
    }
    fn keep(mut live: Self) -> Self {
        record_owned(&mut live);
        strip(&mut live);
        trim_claim(&mut live);
        live
    }
    fn digests(kept: &Self) -> (Option<&str>, Option<&str>) {
        let annotation = |key: &str| kept.metadata.annotations.as_ref()?.get(key).map(String::as_str);
        (annotation(crate::resources::names::ANNOTATION_APPLIED_HASH), annotation(super::drift::OWNED_DIGEST))
    }
    fn controlled_by(kept: &Self, uid: &str) -> bool {
        kept.owner_references().iter().any(|r| r.controller == Some(true) && r.uid == uid)
    }
}

/// Every store the reconcile reads from.
pub struct Caches {
    client: Client,
    /// Every WhatsAppNumber, untyped (the controller's own store).
    pub numbers: Numbers,
    /// Masters and coreapps of every number, metadata and pod IP only: fencing
    /// and the matching of gateway nodes to pods read them.
    pub node_pods: Cache<PodOutline>,
    pub statefulsets: Cache<Outline<StatefulSet>>,
    pub deployments: Cache<Outline<Deployment>>,
    pub services: Cache<Outline<Service>>,
    /// The ConfigMaps the operator made (the release catalog has its own).
    pub configmaps: Cache<Outline<ConfigMap>>,
    pub budgets: Cache<Outline<PodDisruptionBudget>>,
    pub jobs: Cache<Outline<Job>>,
    /// Every claim, the users' own media claims included.
    pub volume_claims: Cache<PersistentVolumeClaim>,
    /// Every Secret's metadata.
    pub secrets: Cache<PartialObjectMeta<Secret>>,
    /// The phone-number claims, cluster-wide.
    pub claims: Cache<WhatsAppNumberClaim>,
    /// The claim Leases of earlier releases, in the operator's namespace.
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
    pub schema_pods: Cache<Pod>,
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
        if let Some(known) = self.secret_data.lock().expect("secret cache lock").get(&key)
            && known.resource_version() == meta.resource_version()
        {
            return Ok(Some(known.clone()));
        }
        if let Some(watched) = self.key_secrets.get(&ObjectRef::new(name).within(namespace))
            && watched.resource_version() == meta.resource_version()
        {
            return Ok(Some((*watched).clone()));
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
            let mut s = s.clone();
            s.managed_fields_mut().clear();
            let key = (s.namespace().unwrap_or_default(), s.name_any());
            self.secret_data.lock().expect("secret cache lock").insert(key, s);
        }
    }
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
    watch: Mutex<Option<(Store<PartialObjectMeta<DynamicObject>>, AbortOnDrop)>>,
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

pub type Touched<K> = std::pin::Pin<Box<dyn Stream<Item = std::result::Result<K, watcher::Error>> + Send>>;

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
    pub volume_claims: Touched<PersistentVolumeClaim>,
    pub secrets: Touched<PartialObjectMeta<Secret>>,
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

/// A store of `K` and the stream of objects that changed, which feeds it.
fn feed<K>(api: Api<K>, config: watcher::Config, what: &'static str, trim: fn(&mut K)) -> (Cache<K>, Touched<K>)
where
    K: Resource<DynamicType = ()> + Clone + DeserializeOwned + Debug + Send + Sync + 'static,
{
    let (store, writer) = reflector::store();
    let stream = reflector::reflector(
        writer,
        watcher(api, config).default_backoff().modify(move |o| {
            trim(o);
            strip(o);
        }),
    )
    .touched_objects()
    .boxed();
    (Cache { store, what }, stream)
}

/// The WhatsAppNumbers' store and the stream of those that changed, which
/// drives the controller. What nobody reads (managed fields, a copy of the
/// last applied object) is not kept.
pub fn numbers_feed(api: Api<DynamicObject>, resource: ApiResource) -> (Numbers, Touched<DynamicObject>) {
    let writer = reflector::store::Writer::new(resource);
    let numbers = Numbers::new(writer.as_reader());
    let decode = numbers.clone();
    let config = listing().any_semantic();
    let events = watcher(api, config).default_backoff().modify(strip).map_ok(move |event| decode.absorb(event));
    let stream = reflector::reflector(writer, events).applied_objects().boxed();
    (numbers, stream)
}

/// The node pods' store, and a stream of only the pods that appeared, began
/// to terminate or went away: readiness changes of a rolling pod wake no one.
fn node_pods_feed(api: Api<PodOutline>, selector: &str) -> (Cache<PodOutline>, Touched<PodOutline>) {
    let (store, writer) = reflector::store();
    let mut start_stop = super::fencing::StartStopFilter::default();
    let stream = reflector::reflector(
        writer,
        watcher(api, listing().labels(selector)).default_backoff().modify(|pod| {
            strip(pod);
            node_pod_outline(pod);
        }),
    )
    .filter_map(move |event| {
        futures::future::ready(match event {
            Ok(event) => start_stop.relevant(&event).map(Ok),
            Err(e) => Some(Err(e)),
        })
    })
    .boxed();
    (Cache { store, what: "pods" }, stream)
}

fn keep_all<K>(_: &mut K) {}

/// A store of what is kept of the children of kind `K`, and the stream of
/// those that changed, which feeds it.
fn children_feed<K: Cached>(
    api: Api<K>,
    config: watcher::Config,
    what: &'static str,
) -> (Cache<K::Kept>, Touched<K::Kept>) {
    let (store, writer) = reflector::store();
    let events = watcher(api, config).default_backoff().map_ok(|event| kept(event, K::keep));
    let stream = reflector::reflector(writer, events).touched_objects().boxed();
    (Cache { store, what }, stream)
}

/// A watch event with `keep` applied to its object.
fn kept<K, T>(event: watcher::Event<K>, keep: fn(K) -> T) -> watcher::Event<T> {
    match event {
        watcher::Event::Apply(obj) => watcher::Event::Apply(keep(obj)),
        watcher::Event::InitApply(obj) => watcher::Event::InitApply(keep(obj)),
        watcher::Event::Delete(obj) => watcher::Event::Delete(keep(obj)),
        watcher::Event::Init => watcher::Event::Init,
        watcher::Event::InitDone => watcher::Event::InitDone,
    }
}

/// Records the digest of the fields the operator owns (see [`super::drift`])
/// while the managed fields are still there.
fn record_owned<K: Cached + serde::Serialize>(obj: &mut K) {
    let digest = serde_json::to_value(&*obj)
        .ok()
        .and_then(|live| super::drift::owned_digest(&live, crate::resources::names::FIELD_MANAGER, K::UNCOMPARED));
    let annotations = obj.meta_mut().annotations.get_or_insert_with(Default::default);
    match digest {
        Some(d) => annotations.insert(super::drift::OWNED_DIGEST.into(), d),
        None => annotations.remove(super::drift::OWNED_DIGEST),
    };
}

/// A Secret's metadata as the reconcile reads it: whether it exists, and at
/// which resource version (to know when its data changed). Every Secret of
/// the watched namespaces is kept, most of them nobody's here, so its
/// labels, annotations, owners and finalizers are not.
fn secret_identity(secret: &mut PartialObjectMeta<Secret>) {
    secret.types = None;
    secret.metadata.labels = None;
    drop_unread(&mut secret.metadata);
}

/// Drops what no reconcile reads of a cached object's metadata: its
/// annotations, owners, finalizers and generated-name prefix.
fn drop_unread(meta: &mut ObjectMeta) {
    meta.annotations = None;
    meta.owner_references = None;
    meta.finalizers = None;
    meta.generate_name = None;
}

/// The operator's own annotations: the digests that decide a write and
/// the schema record.
const OPERATOR_ANNOTATIONS: &str = "whatsapp.operators.dev/";

/// A claim as the reconcile reads it: identity, owner, the operator's
/// annotations and the spec the builder copies from the live claim (access
/// modes, class, volume mode, size). The binder's annotations, the
/// protection finalizer, labels, status and the bound volume's name are not
/// kept (the owned-field digest was taken before, from the whole claim).
fn trim_claim(claim: &mut PersistentVolumeClaim) {
    let meta = &mut claim.metadata;
    if let Some(annotations) = meta.annotations.as_mut() {
        annotations.retain(|k, _| k.starts_with(OPERATOR_ANNOTATIONS));
    }
    if meta.annotations.as_ref().is_some_and(std::collections::BTreeMap::is_empty) {
        meta.annotations = None;
    }
    meta.labels = None;
    meta.finalizers = None;
    claim.status = None;
    if let Some(spec) = claim.spec.as_mut() {
        spec.volume_name = None;
        spec.selector = None;
        spec.data_source = None;
        spec.data_source_ref = None;
    }
}

/// A node pod as fencing and gateway matching read it: name, namespace, uid,
/// deletion time, the labels that tell its number, instance and role, and
/// its IP. Its annotations, owner, finalizers and other labels are not kept.
fn node_pod_outline(pod: &mut PodOutline) {
    drop_unread(&mut pod.metadata);
    keep_read_labels(&mut pod.metadata.labels);
}

/// Whether a schema Job's pod started, or why it cannot: its status is
/// read, its spec never, and of its metadata the Job's name. A finished
/// Job's pod stays for as long as the Job (a day): once a container ran, its
/// phase alone is kept.
fn pod_progress(pod: &mut Pod) {
    use crate::upgrade::job::{JOB_NAME_LABEL, STARTED_PHASES};
    pod.spec = None;
    let meta = &mut pod.metadata;
    drop_unread(meta);
    if let Some(labels) = meta.labels.as_mut() {
        labels.retain(|k, _| k == JOB_NAME_LABEL);
    }
    if let Some(status) = pod.status.as_mut()
        && status.phase.as_deref().is_some_and(|phase| STARTED_PHASES.contains(&phase))
    {
        *status = k8s_openapi::api::core::v1::PodStatus { phase: status.phase.take(), ..Default::default() };
    }
}

/// A master or coreapp pod as the operator reads it: fencing needs its
/// metadata, gateway matching its IP. The watch decodes nothing else, and a
/// cached pod is a fifth of the size of a [`Pod`] even without its spec.
#[derive(Clone, Debug, Default, serde::Deserialize, serde::Serialize)]
pub struct PodOutline {
    pub metadata: ObjectMeta,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<PodAddress>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Deserialize, serde::Serialize)]
pub struct PodAddress {
    #[serde(rename = "podIP", default, skip_serializing_if = "Option::is_none")]
    pub pod_ip: Option<String>,
}

impl Resource for PodOutline {
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
    node_pod_selector: &str,
    owned_selector: &str,
) -> (Caches, Feeds) {
    let owned = || listing().labels(owned_selector);
    let (node_pods, pods_feed) = node_pods_feed(scoped(client, namespace), node_pod_selector);
    let (statefulsets, sts_feed) = children_feed::<StatefulSet>(scoped(client, namespace), owned(), "statefulsets");
    let (deployments, deploy_feed) = children_feed::<Deployment>(scoped(client, namespace), owned(), "deployments");
    let (services, svc_feed) = children_feed::<Service>(scoped(client, namespace), owned(), "services");
    let (configmaps, cm_feed) = children_feed::<ConfigMap>(scoped(client, namespace), owned(), "configmaps");
    let (budgets, pdb_feed) =
        children_feed::<PodDisruptionBudget>(scoped(client, namespace), owned(), "poddisruptionbudgets");
    let (jobs, job_feed) = children_feed::<Job>(scoped(client, namespace), owned(), "jobs");
    // The media claim's spec is read (access modes, class, size): claims are
    // kept trimmed (`trim_claim`), users' claims too.
    let (volume_claims, pvc_feed) =
        children_feed::<PersistentVolumeClaim>(scoped(client, namespace), listing(), "persistentvolumeclaims");
    let (claims, claim_feed) = feed(
        Api::all(client.clone()),
        listing(),
        "number claims (is the WhatsAppNumberClaim CRD installed?)",
        keep_all,
    );
    let (legacy_claims, lease_feed) = feed(
        Api::namespaced(client.clone(), operator_namespace),
        listing().labels(&format!("{}=true", super::claim::LEGACY_CLAIM_LABEL)),
        "legacy number claim Leases",
        keep_all,
    );
    let (catalog, catalog_feed) = feed(
        Api::namespaced(client.clone(), operator_namespace),
        listing().fields(&format!("metadata.name={release_catalog}")),
        "the release catalog",
        keep_all,
    );

    // The operator's own key Secrets with their data, kept current by a task
    // of their own (the metadata watch below wakes the reconciles).
    let (key_secrets, key_secrets_watch) = {
        let (store, writer) = reflector::store();
        let selector = format!("{owned_selector},{}=keys", crate::resources::names::LABEL_COMPONENT);
        let watch =
            watcher(scoped::<Secret>(client, namespace), listing().labels(&selector)).default_backoff().modify(strip);
        let task = tokio::spawn(reflector::reflector(writer, watch).for_each(|event| {
            if let Err(e) = event {
                tracing::warn!(error = %e, "cannot watch the operator's key Secrets; retrying with backoff");
            }
            futures::future::ready(())
        }));
        (store, AbortOnDrop(task))
    };
    let (schema_pods, schema_pods_watch) = {
        let (store, writer) = reflector::store();
        let selector = format!(
            "{},{}={}",
            crate::resources::names::LABEL_MANAGED_BY_SELECTOR,
            crate::resources::names::LABEL_COMPONENT,
            crate::resources::schema_job::COMPONENT
        );
        let watch =
            watcher(scoped::<Pod>(client, namespace), listing().labels(&selector)).default_backoff().modify(|pod| {
                strip(pod);
                pod_progress(pod);
            });
        let task = tokio::spawn(reflector::reflector(writer, watch).for_each(|event| {
            if let Err(e) = event {
                tracing::warn!(error = %e, "cannot watch the schema Jobs' pods; retrying with backoff");
            }
            futures::future::ready(())
        }));
        (Cache { store, what: "schema Job pods" }, AbortOnDrop(task))
    };
    // Metadata only: Secrets are many and large; data is read when needed.
    let (secrets, secrets_feed) =
        feed(scoped::<PartialObjectMeta<Secret>>(client, namespace), listing(), "secrets", secret_identity);

    let caches = Caches {
        client: client.clone(),
        numbers,
        node_pods,
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
/// would deliver is put in with [`Seeds::put`].
#[cfg(test)]
pub struct Seeds {
    numbers: reflector::store::Writer<DynamicObject>,
    decode: Numbers,
    node_pods: reflector::store::Writer<PodOutline>,
    statefulsets: reflector::store::Writer<Outline<StatefulSet>>,
    deployments: reflector::store::Writer<Outline<Deployment>>,
    services: reflector::store::Writer<Outline<Service>>,
    configmaps: reflector::store::Writer<Outline<ConfigMap>>,
    budgets: reflector::store::Writer<Outline<PodDisruptionBudget>>,
    jobs: reflector::store::Writer<Outline<Job>>,
    volume_claims: reflector::store::Writer<PersistentVolumeClaim>,
    secrets: reflector::store::Writer<PartialObjectMeta<Secret>>,
    key_secrets: reflector::store::Writer<Secret>,
    claims: reflector::store::Writer<WhatsAppNumberClaim>,
    schema_pods: reflector::store::Writer<Pod>,
}

#[cfg(test)]
impl Seeds {
    /// Empty caches, every one listed (ready), and the handle that fills them.
    pub fn caches(client: &Client, owned_selector: &str) -> (Caches, Self) {
        fn ready<K: Resource + Clone>(
            mut writer: reflector::store::Writer<K>,
        ) -> (reflector::store::Writer<K>, Store<K>)
        where
            K::DynamicType: Clone + Eq + std::hash::Hash,
        {
            writer.apply_watcher_event(&watcher::Event::Init);
            writer.apply_watcher_event(&watcher::Event::InitDone);
            let store = writer.as_reader();
            (writer, store)
        }
        fn typed<K: Resource<DynamicType = ()> + Clone>() -> (reflector::store::Writer<K>, Store<K>) {
            ready(reflector::store::Writer::default())
        }
        let (numbers, numbers_store) = ready(reflector::store::Writer::new(ApiResource::erase::<WhatsAppNumber>(&())));
        let (node_pods, node_pods_store) = typed();
        let (statefulsets, sts) = typed();
        let (deployments, deploy) = typed();
        let (services, svc) = typed();
        let (configmaps, cm) = typed();
        let (budgets, pdb) = typed();
        let (jobs, job) = typed();
        let (volume_claims, pvc) = typed();
        let (secrets, secret_meta) = typed();
        let (key_secrets, key_store) = typed();
        let (claims, claim_store) = typed();
        let (schema_pods, schema_pods_store) = typed();
        let (_, lease_store) = typed::<Lease>();
        let (_, catalog_store) = typed::<ConfigMap>();
        let decode = Numbers::new(numbers_store);
        let caches = Caches {
            client: client.clone(),
            numbers: decode.clone(),
            node_pods: Cache { store: node_pods_store, what: "pods" },
            statefulsets: Cache { store: sts, what: "statefulsets" },
            deployments: Cache { store: deploy, what: "deployments" },
            services: Cache { store: svc, what: "services" },
            configmaps: Cache { store: cm, what: "configmaps" },
            budgets: Cache { store: pdb, what: "poddisruptionbudgets" },
            jobs: Cache { store: job, what: "jobs" },
            volume_claims: Cache { store: pvc, what: "persistentvolumeclaims" },
            secrets: Cache { store: secret_meta, what: "secrets" },
            claims: Cache { store: claim_store, what: "number claims" },
            legacy_claims: Cache { store: lease_store, what: "legacy number claim Leases" },
            catalog: Cache { store: catalog_store, what: "the release catalog" },
            secret_data: Mutex::default(),
            key_secrets: key_store,
            _key_secrets_watch: AbortOnDrop(tokio::spawn(async {})),
            schema_pods: Cache { store: schema_pods_store, what: "schema Job pods" },
            _schema_pods_watch: AbortOnDrop(tokio::spawn(async {})),
            service_monitors: ServiceMonitors::new(client, &None, owned_selector),
        };
        let seeds = Self {
            numbers,
            decode,
            node_pods,
            statefulsets,
            deployments,
            services,
            configmaps,
            budgets,
            jobs,
            volume_claims,
            secrets,
            key_secrets,
            claims,
            schema_pods,
        };
        (caches, seeds)
    }

    /// Replaces what every cache holds with `objects`, as a fresh listing
    /// of each watch would (so objects that went are gone from the caches).
    pub fn relist(&mut self, objects: &[serde_json::Value]) {
        fn list<K: Resource + Clone + DeserializeOwned>(
            writer: &mut reflector::store::Writer<K>,
            objects: &[serde_json::Value],
            kind: &str,
        ) where
            K::DynamicType: Clone + Eq + std::hash::Hash,
        {
            list_kept(writer, objects, kind, |mut k: K| {
                strip(&mut k);
                k
            });
        }
        /// As the watch delivers them to the store.
        fn list_kept<K: DeserializeOwned, T: Resource + Clone>(
            writer: &mut reflector::store::Writer<T>,
            objects: &[serde_json::Value],
            kind: &str,
            keep: fn(K) -> T,
        ) where
            T::DynamicType: Clone + Eq + std::hash::Hash,
        {
            writer.apply_watcher_event(&watcher::Event::Init);
            for obj in objects.iter().filter(|o| o["kind"] == kind) {
                let k: K = serde_json::from_value(obj.clone()).expect("an object of its kind");
                writer.apply_watcher_event(&watcher::Event::InitApply(keep(k)));
            }
            writer.apply_watcher_event(&watcher::Event::InitDone);
        }
        let mut events = vec![watcher::Event::Init];
        for obj in objects.iter().filter(|o| o["kind"] == "WhatsAppNumber") {
            let mut number: DynamicObject = serde_json::from_value(obj.clone()).expect("a WhatsAppNumber");
            strip(&mut number);
            events.push(watcher::Event::InitApply(number));
        }
        events.push(watcher::Event::InitDone);
        for event in events {
            self.numbers.apply_watcher_event(&self.decode.absorb(event));
        }
        list_kept(&mut self.node_pods, objects, "Pod", |mut pod: PodOutline| {
            strip(&mut pod);
            node_pod_outline(&mut pod);
            pod
        });
        list_kept(&mut self.statefulsets, objects, "StatefulSet", StatefulSet::keep);
        list_kept(&mut self.deployments, objects, "Deployment", Deployment::keep);
        list_kept(&mut self.services, objects, "Service", Service::keep);
        list_kept(&mut self.configmaps, objects, "ConfigMap", ConfigMap::keep);
        list_kept(&mut self.budgets, objects, "PodDisruptionBudget", PodDisruptionBudget::keep);
        list_kept(&mut self.jobs, objects, "Job", Job::keep);
        list_kept(&mut self.volume_claims, objects, "PersistentVolumeClaim", PersistentVolumeClaim::keep);
        list(&mut self.claims, objects, "WhatsAppNumberClaim");
        let component = crate::resources::names::LABEL_COMPONENT;
        let schema = crate::resources::schema_job::COMPONENT;
        let schema_pods: Vec<serde_json::Value> =
            objects.iter().filter(|o| o["metadata"]["labels"][component] == schema).cloned().collect();
        list(&mut self.schema_pods, &schema_pods, "Pod");
        let secrets: Vec<serde_json::Value> = objects.iter().filter(|o| o["kind"] == "Secret").cloned().collect();
        let metadata: Vec<serde_json::Value> = secrets
            .iter()
            .map(|o| serde_json::json!({"apiVersion": "v1", "kind": "Secret", "metadata": o["metadata"]}))
            .collect();
        list(&mut self.secrets, &metadata, "Secret");
        let keys: Vec<serde_json::Value> =
            secrets.into_iter().filter(|o| o["metadata"]["labels"][component] == "keys").collect();
        list(&mut self.key_secrets, &keys, "Secret");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::resources::names::{LABEL_COMPONENT, LABEL_INSTANCE, LABEL_MANAGED_BY, LABEL_NUMBER};

    fn number(uid: &str, version: &str, phone: serde_json::Value) -> DynamicObject {
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
        let mut writer = reflector::store::Writer::<DynamicObject>::new(ApiResource::erase::<WhatsAppNumber>(&()));
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
        let stored = |uid: &str| {
            numbers.store.get(&ObjectRef::new_with(uid, ApiResource::erase::<WhatsAppNumber>(&())).within("team"))
        };
        let a = stored("a").expect("stored");
        assert!(a.data.is_null(), "no second copy of a decoded object");
        assert_eq!((a.uid().as_deref(), a.resource_version().as_deref()), (Some("a"), Some("1")));
        assert!(a.labels().is_empty() && a.finalizers().is_empty() && a.types.is_none(), "its identity alone");
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
    fn a_cached_pod_keeps_its_identity_and_address_only() {
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
        let mut pod: PodOutline = serde_json::from_value(pod).unwrap();
        strip(&mut pod);
        node_pod_outline(&mut pod);
        assert_eq!(pod.status.as_ref().and_then(|s| s.pod_ip.as_deref()), Some("10.0.0.7"));
        assert_eq!(pod.metadata.managed_fields, None);
        assert_eq!(pod.metadata.annotations, None);
        assert_eq!(pod.metadata.owner_references, None);
        assert_eq!(pod.metadata.generate_name, None);
        assert_eq!((pod.metadata.uid.as_deref(), pod.metadata.name.as_deref()), (Some("u1"), Some("acme-coreapp-0")));
        assert!(pod.metadata.deletion_timestamp.is_some(), "fencing reads when it began to terminate");
        let labels: Vec<&str> = pod.metadata.labels.as_ref().unwrap().keys().map(String::as_str).collect();
        assert_eq!(labels, [LABEL_COMPONENT, LABEL_INSTANCE, LABEL_MANAGED_BY, LABEL_NUMBER]);
        let fenced =
            super::super::fencing::NodePod::of_number(&pod.metadata, "15550001111").expect("still its number's");
        assert_eq!(fenced.instance, "acme");
        assert_eq!(serde_json::to_value(&pod).unwrap()["status"], serde_json::json!({"podIP": "10.0.0.7"}));
        assert_eq!(PodOutline::url_path(&(), Some("team")), "/api/v1/namespaces/team/pods");
        let pending: PodOutline = serde_json::from_value(serde_json::json!({"metadata": {"name": "p"}})).unwrap();
        assert!(pending.status.is_none(), "a pod without an address yet");
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
            ("Succeeded", None, JobState::Running),
            ("Running", None, JobState::Running),
            ("Pending", Some("ImagePullBackOff"), JobState::Unstartable("image wa:v2: ImagePullBackOff".into())),
        ] {
            let mut kept = pod(phase, waiting);
            pod_progress(&mut kept);
            assert_eq!(state(Some(&job), &[kept.clone()]), expected, "{phase}");
            assert_eq!(state(Some(&job), &[pod(phase, waiting)]), expected, "{phase}: as the whole pod says");
            assert!(kept.spec.is_none() && kept.metadata.annotations.is_none() && kept.metadata.finalizers.is_none());
            let labels: Vec<&str> = kept.labels().keys().map(String::as_str).collect();
            assert_eq!(labels, [JOB_NAME_LABEL]);
            let status = kept.status.unwrap();
            assert_eq!(status.container_statuses.is_none(), waiting.is_none(), "{phase}: the phase alone once started");
        }
    }

    #[test]
    fn a_cached_secret_is_its_identity_and_version() {
        let mut secret: PartialObjectMeta<Secret> = serde_json::from_value(serde_json::json!({
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
        secret_identity(&mut secret);
        let kept = serde_json::to_value(&secret.metadata).unwrap();
        assert_eq!(
            kept,
            serde_json::json!({"name": "sh.helm.release.v1.x.v1", "namespace": "team", "uid": "s1", "resourceVersion": "42"})
        );
        assert!(secret.types.is_none());
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
        let annotations: Vec<&str> = kept.annotations().keys().map(String::as_str).collect();
        assert_eq!(
            annotations,
            [ANNOTATION_APPLIED_HASH, super::super::drift::OWNED_DIGEST, ANNOTATION_SCHEMA_VERSION]
        );
        assert_eq!(PersistentVolumeClaim::digests(&kept).0, Some("h1"));
        assert!(PersistentVolumeClaim::digests(&kept).1.is_some(), "taken before the trim");
        assert_eq!((kept.metadata.labels.as_ref(), kept.metadata.finalizers.as_ref()), (None, None));
        assert_eq!(kept.owner_references().len(), 1);
        assert!(kept.status.is_none());
        let spec = kept.spec.as_ref().unwrap();
        assert_eq!(spec.volume_name, None);
        assert_eq!(spec.storage_class_name.as_deref(), Some("nfs"));
        assert_eq!(spec.access_modes.as_deref(), Some(&["ReadWriteMany".to_string()][..]));
        assert_eq!(spec.resources.as_ref().unwrap().requests.as_ref().unwrap()["storage"].0, "50Gi");
    }
}
