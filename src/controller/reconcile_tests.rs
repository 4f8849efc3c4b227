//! Whole reconciles against an API server held in memory: every request the
//! operator makes is recorded, so a test states the exact sequence (and that
//! a reconcile of a number that did not change makes none).

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use http::{Request, Response, StatusCode};
use kube::Client;
use kube::client::Body;
use kube::runtime::events::Reporter;
use serde_json::{Value, json};

use super::cache::Seeds;
use super::{Context, Settings, reconcile_object};
use crate::probes::Probes;
use crate::resources::names::LABEL_MANAGED_BY_SELECTOR;
use crate::telemetry::metrics::Metrics;

/// Objects by path, and every request in order as `METHOD path`. Enough of
/// the API server for one field manager: server-side apply stores what was
/// applied (keeping uid, finalizers and status, refusing a stale
/// `resourceVersion`), JSON and merge patches apply as the server applies
/// them, creates and deletes are by name.
#[derive(Default)]
struct FakeApi {
    objects: Mutex<BTreeMap<String, Value>>,
    requests: Mutex<Vec<String>>,
    version: AtomicU64,
}

fn status(code: u16, reason: &str) -> (u16, Value) {
    let body = json!({"kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": reason, "code": code,
        "message": format!("{reason} (from the test's API server)")});
    (code, body)
}

impl FakeApi {
    fn client(self: &Arc<Self>) -> Client {
        let api = self.clone();
        let service = tower::service_fn(move |req: Request<Body>| {
            let api = api.clone();
            async move {
                let (code, body) = api.handle(req).await;
                let response = Response::builder()
                    .status(StatusCode::from_u16(code).expect("a status code"))
                    .header("content-type", "application/json")
                    .body(Body::from(serde_json::to_vec(&body).expect("JSON")))
                    .expect("a response");
                Ok::<_, Infallible>(response)
            }
        });
        Client::new(service, "default")
    }

    fn stamp(&self, obj: &mut Value) {
        let version = self.version.fetch_add(1, Ordering::SeqCst) + 1;
        obj["metadata"]["resourceVersion"] = json!(version.to_string());
    }

    async fn handle(&self, req: Request<Body>) -> (u16, Value) {
        let method = req.method().clone();
        let path = req.uri().path().to_string();
        let req_query = req.uri().query().map(String::from);
        let kind = req.headers().get("content-type").and_then(|v| v.to_str().ok()).unwrap_or_default().to_string();
        let body = req.into_body().collect_bytes().await.expect("a request body");
        let body: Value = if body.is_empty() { Value::Null } else { serde_json::from_slice(&body).expect("JSON") };
        self.requests.lock().unwrap().push(format!("{method} {path}"));
        let (key, subresource) = match path.strip_suffix("/status") {
            Some(key) => (key.to_string(), true),
            None => (path.clone(), false),
        };
        let mut objects = self.objects.lock().unwrap();
        match method.as_str() {
            "GET" => match objects.get(&key) {
                Some(obj) => (200, obj.clone()),
                // A collection: its objects, those matching a label selector
                // of `key=value` pairs and a `metadata.name` field selector.
                None if objects.keys().any(|k| k.starts_with(&format!("{key}/"))) || req_query.is_some() => {
                    let selector =
                        query(req_query.as_deref(), "labelSelector").map(|s| decoded(&s)).unwrap_or_default();
                    let wanted: Vec<(&str, &str)> = selector.split(',').filter_map(|p| p.split_once('=')).collect();
                    let fields = query(req_query.as_deref(), "fieldSelector").map(|s| decoded(&s)).unwrap_or_default();
                    let name = fields.strip_prefix("metadata.name=");
                    let items: Vec<Value> = objects
                        .iter()
                        .filter(|(k, _)| k.strip_prefix(&format!("{key}/")).is_some_and(|rest| !rest.contains('/')))
                        .map(|(_, o)| o.clone())
                        .filter(|o| wanted.iter().all(|(k, v)| o["metadata"]["labels"][*k].as_str() == Some(*v)))
                        .filter(|o| name.is_none_or(|n| o["metadata"]["name"].as_str() == Some(n)))
                        .collect();
                    (
                        200,
                        json!({"apiVersion": "v1", "kind": "List", "metadata": {"resourceVersion": "1"}, "items": items}),
                    )
                }
                None => status(404, "NotFound"),
            },
            "POST" => {
                let mut obj = body;
                let name = match obj["metadata"]["name"].as_str() {
                    Some(name) => name.to_string(),
                    None => {
                        let name =
                            format!("{}{}", obj["metadata"]["generateName"].as_str().unwrap_or("x-"), objects.len());
                        obj["metadata"]["name"] = json!(name);
                        name
                    }
                };
                let key = format!("{key}/{name}");
                if objects.contains_key(&key) {
                    return status(409, "AlreadyExists");
                }
                obj["metadata"]["uid"] = json!(format!("uid-{name}"));
                obj["metadata"]["generation"] = json!(1);
                self.stamp(&mut obj);
                objects.insert(key, obj.clone());
                (201, obj)
            }
            "PATCH" => {
                let current = objects.get(&key).cloned();
                let stored = if kind.starts_with("application/apply-patch") {
                    let wanted = body["metadata"]["resourceVersion"].as_str();
                    if wanted.is_some()
                        && wanted != current.as_ref().and_then(|c| c["metadata"]["resourceVersion"].as_str())
                    {
                        return status(409, "Conflict");
                    }
                    match (current, subresource) {
                        (Some(mut obj), true) => {
                            obj["status"] = body["status"].clone();
                            obj
                        }
                        (None, true) => return status(404, "NotFound"),
                        (current, false) => {
                            let mut obj = body.clone();
                            let name = path.rsplit('/').next().unwrap_or_default();
                            let old = current.unwrap_or_else(
                                || json!({"metadata": {"uid": format!("uid-{name}"), "generation": 0}}),
                            );
                            for field in ["uid", "finalizers", "creationTimestamp"] {
                                if !old["metadata"][field].is_null() {
                                    obj["metadata"][field] = old["metadata"][field].clone();
                                }
                            }
                            let generation = old["metadata"]["generation"].as_i64().unwrap_or(0);
                            let changed = old.get("spec") != obj.get("spec") || generation == 0;
                            obj["metadata"]["generation"] = json!(generation + i64::from(changed));
                            if !old["status"].is_null() {
                                obj["status"] = old["status"].clone();
                            }
                            let manager = query(req_query.as_deref(), "fieldManager").unwrap_or_default();
                            obj["metadata"]["managedFields"] = json!([{"manager": manager, "operation": "Apply",
                                "fieldsType": "FieldsV1", "fieldsV1": applied_fields(&body)}]);
                            obj
                        }
                    }
                } else {
                    let Some(mut obj) = current else { return status(404, "NotFound") };
                    if kind.starts_with("application/json-patch") {
                        let mut patch: json_patch::Patch = serde_json::from_value(body).expect("a JSON patch");
                        // As the API server, a missing field tests equal to null.
                        patch.0.retain(|op| match op {
                            json_patch::PatchOperation::Test(t) => {
                                !(t.value.is_null() && obj.pointer(t.path.as_str()).is_none())
                            }
                            _ => true,
                        });
                        if json_patch::patch(&mut obj, &patch).is_err() {
                            return status(422, "Invalid");
                        }
                    } else {
                        json_patch::merge(&mut obj, &body);
                    }
                    obj
                };
                let mut stored = stored;
                self.stamp(&mut stored);
                objects.insert(key, stored.clone());
                (200, stored)
            }
            "DELETE" => match objects.remove(&key) {
                Some(obj) => (200, obj),
                None => status(404, "NotFound"),
            },
            other => panic!("unexpected {other} {path}"),
        }
    }

    /// The requests since the last call.
    fn take_requests(&self) -> Vec<String> {
        std::mem::take(&mut *self.requests.lock().unwrap())
    }

    fn edit(&self, path: &str, change: impl FnOnce(&mut Value)) {
        let mut objects = self.objects.lock().unwrap();
        let obj = objects.get_mut(path).unwrap_or_else(|| panic!("{path} exists"));
        change(obj);
        self.stamp(obj);
    }

    fn get(&self, path: &str) -> Value {
        self.objects.lock().unwrap().get(path).cloned().unwrap_or_else(|| panic!("{path} exists"))
    }

    /// What the cluster's controllers would do meanwhile: every workload's
    /// pods run and are ready, every claim is bound.
    fn settle(&self) {
        let mut objects = self.objects.lock().unwrap();
        // The StatefulSets' pods (their controller and the kubelet), and none
        // of a StatefulSet that went.
        let mut pods = BTreeMap::new();
        for sts in objects.values().filter(|o| o["kind"] == "StatefulSet") {
            let (namespace, name) = (
                sts["metadata"]["namespace"].as_str().unwrap_or_default(),
                sts["metadata"]["name"].as_str().unwrap_or_default(),
            );
            for i in 0..sts["spec"]["replicas"].as_i64().unwrap_or(0) {
                let pod = format!("{name}-{i}");
                let mut obj = json!({"apiVersion": "v1", "kind": "Pod",
                    "metadata": {"name": pod, "namespace": namespace, "uid": format!("uid-{pod}"),
                        "labels": sts["spec"]["template"]["metadata"]["labels"]},
                    "status": {"phase": "Running", "podIP": format!("10.244.0.{}", 10 + i)}});
                self.stamp(&mut obj);
                pods.insert(format!("/api/v1/namespaces/{namespace}/pods/{pod}"), obj);
            }
        }
        objects.retain(|_, o| o["kind"] != "Pod");
        objects.extend(pods);
        for obj in objects.values_mut() {
            let generation = obj["metadata"]["generation"].clone();
            let replicas = obj["spec"]["replicas"].clone();
            match obj["kind"].as_str().unwrap_or_default() {
                "StatefulSet" => {
                    obj["status"] = json!({"observedGeneration": generation, "replicas": replicas,
                        "readyReplicas": replicas, "currentReplicas": replicas, "updatedReplicas": replicas,
                        "availableReplicas": replicas, "currentRevision": "r1", "updateRevision": "r1"});
                }
                "Deployment" => {
                    obj["status"] = json!({"observedGeneration": generation, "replicas": replicas,
                        "readyReplicas": replicas, "updatedReplicas": replicas, "availableReplicas": replicas});
                }
                "PersistentVolumeClaim" => obj["status"] = json!({"phase": "Bound"}),
                "Job" => {
                    obj["status"] = json!({"succeeded": 1, "startTime": "2026-01-01T00:00:00Z",
                        "completionTime": "2026-01-01T00:01:00Z",
                        "conditions": [{"type": "Complete", "status": "True"}]});
                }
                _ => {}
            }
        }
    }

    /// Every stored object but events, for the caches.
    fn objects(&self) -> Vec<Value> {
        self.objects.lock().unwrap().values().filter(|o| o["kind"] != "Event").cloned().collect()
    }
}

/// A query parameter's value (the few this API server reads need no decoding).
/// A query parameter's value with its `%XX` escapes decoded.
fn decoded(value: &str) -> String {
    let bytes = value.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match (
            bytes[i],
            bytes.get(i + 1..i + 3).and_then(|h| u8::from_str_radix(std::str::from_utf8(h).ok()?, 16).ok()),
        ) {
            (b'%', Some(byte)) => {
                out.push(byte);
                i += 3;
            }
            (b'+', _) => {
                out.push(b' ');
                i += 1;
            }
            (byte, _) => {
                out.push(byte);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn query(query: Option<&str>, name: &str) -> Option<String> {
    query?.split('&').find_map(|pair| pair.strip_prefix(name)?.strip_prefix('=')).map(String::from)
}

/// The field set a server-side apply of `body` leaves to its manager, with
/// every list atomic: enough for a server with one field manager.
fn applied_fields(body: &Value) -> Value {
    fn fields(v: &Value) -> Value {
        match v {
            Value::Object(o) if !o.is_empty() => {
                Value::Object(o.iter().map(|(k, v)| (format!("f:{k}"), fields(v))).collect())
            }
            _ => json!({}),
        }
    }
    let mut applied = body.clone();
    if let Some(obj) = applied.as_object_mut() {
        for field in ["apiVersion", "kind", "status"] {
            obj.remove(field);
        }
    }
    if let Some(meta) = applied["metadata"].as_object_mut() {
        meta.remove("name");
        meta.remove("namespace");
    }
    fields(&applied)
}

const WAN: &str = "/apis/whatsapp.operators.dev/v1alpha1/namespaces/team/whatsappnumbers/acme";

/// One operator (its context and caches) against `api`.
struct Operator {
    ctx: Arc<Context>,
    seeds: Seeds,
}

impl Operator {
    fn start(api: &Arc<FakeApi>) -> Self {
        Self::with_turns(api, 0)
    }

    /// With `reconcile_concurrency` turns (0: unbounded).
    fn with_turns(api: &Arc<FakeApi>, reconcile_concurrency: u16) -> Self {
        let client = api.client();
        let metrics = Arc::new(Metrics::default());
        let (caches, seeds) = Seeds::caches(&client, LABEL_MANAGED_BY_SELECTOR);
        let (probes, _) = Probes::new(1, Arc::default(), Arc::default(), None, metrics.clone());
        let settings =
            Settings { operator_namespace: "whatsapp-operator".into(), reconcile_concurrency, ..Default::default() };
        let reporter = Reporter { controller: "whatsapp-operator".into(), instance: None };
        let ctx = Context::new(client, metrics, reporter, settings, caches, probes);
        let mut operator = Self { ctx: Arc::new(ctx), seeds };
        operator.sync(api);
        operator
    }

    /// The watches catch up with everything stored.
    fn sync(&mut self, api: &FakeApi) {
        self.seeds.relist(&api.objects());
    }

    /// One reconcile of the stored WhatsAppNumber, after the watches caught up;
    /// the requests it made.
    async fn reconcile(&mut self, api: &FakeApi) -> Vec<String> {
        self.sync(api);
        api.take_requests();
        let obj: super::cache::NumberObject = serde_json::from_value(api.get(WAN)).expect("a WhatsAppNumber");
        // On the heap, as the controller runs it: the future is large.
        Box::pin(reconcile_object(Arc::new(obj), self.ctx.clone())).await.expect("the reconcile succeeds");
        api.take_requests()
    }
}

/// A new number (health polling off) with its database credentials.
fn seeded() -> Arc<FakeApi> {
    let api = Arc::new(FakeApi::default());
    let mut wan = serde_json::to_value(crate::fixtures::sample()).expect("JSON");
    wan["spec"]["health"] = json!({"enabled": false});
    wan["metadata"]["generation"] = json!(1);
    // As the API server serves a new object: the CRD's default status.
    wan["status"] = json!({"observedGeneration": 0});
    api.stamp(&mut wan);
    let mut secret = json!({"apiVersion": "v1", "kind": "Secret",
        "metadata": {"name": "acme-db", "namespace": "team", "uid": "uid-acme-db"},
        "data": {"username": "d2hhdHNhcHA=", "password": "Y2hhbmdlLW1lLVNlY3JldDEh"}});
    api.stamp(&mut secret);
    let mut objects = api.objects.lock().unwrap();
    objects.insert(WAN.into(), wan);
    objects.insert("/api/v1/namespaces/team/secrets/acme-db".into(), secret);
    drop(objects);
    api
}

const EVENT: &str = "POST /apis/events.k8s.io/v1/namespaces/team/events";

fn status_write() -> String {
    format!("PATCH {WAN}/status")
}

fn condition(api: &FakeApi, type_: &str) -> (String, String) {
    let wan = api.get(WAN);
    let found = wan["status"]["conditions"].as_array().and_then(|c| c.iter().find(|c| c["type"] == type_).cloned());
    let found = found.unwrap_or_else(|| panic!("a {type_} condition in {}", wan["status"]));
    (found["status"].as_str().unwrap_or_default().into(), found["reason"].as_str().unwrap_or_default().into())
}

/// A new number, reconciled as its watches would wake it, with the cluster's
/// controllers making every workload ready in between.
async fn bring_up(api: &Arc<FakeApi>, operator: &mut Operator) {
    // The finalizer first: nothing is claimed or built before it is stored.
    // Then, in the same turn, the claim, and once the credentials are found
    // valid the first status: it shows at once, however many numbers wait
    // for their children.
    let claimed = [
        &format!("PATCH {WAN}"),
        "POST /apis/whatsapp.operators.dev/v1alpha1/whatsappnumberclaims",
        "GET /api/v1/namespaces/team/secrets/acme-db",
        &status_write(),
        EVENT,
    ];
    assert_eq!(operator.reconcile(api).await, claimed);
    assert_eq!(condition(api, "Ready"), ("False".into(), "Deploying".into()));
    assert_eq!(condition(api, "Reconciling").0, "True");

    // Keys and every child the database needs first; the schema Job creates
    // the client's databases before any node starts, once the API server
    // (not only the cache) says no other schema Job of the object is there,
    // and that the number is still this object's.
    let children = [
        "GET /apis/batch/v1/namespaces/team/jobs",
        "GET /apis/whatsapp.operators.dev/v1alpha1/whatsappnumberclaims/whatsapp-number-15550001111",
        "POST /api/v1/namespaces/team/secrets",
        "PATCH /api/v1/namespaces/team/configmaps/acme-config",
        "PATCH /api/v1/namespaces/team/persistentvolumeclaims/acme-media",
        "PATCH /api/v1/namespaces/team/services/acme-master",
        "PATCH /api/v1/namespaces/team/services/acme-coreapp",
        "PATCH /api/v1/namespaces/team/services/acme-webapp",
        "PATCH /apis/policy/v1/namespaces/team/poddisruptionbudgets/acme-master",
        "PATCH /apis/policy/v1/namespaces/team/poddisruptionbudgets/acme-coreapp",
        "PATCH /apis/policy/v1/namespaces/team/poddisruptionbudgets/acme-webapp",
        "POST /apis/batch/v1/namespaces/team/jobs",
    ];
    // What they show (InitializingDatabase) is a step of the rollout right
    // after a status write: it waits for the next.
    assert_eq!(operator.reconcile(api).await, children);
    assert_eq!(condition(api, "Ready"), ("False".into(), "Deploying".into()));
    // The claim is made carrying the record of the schema Job, before the Job.
    assert_eq!(media_records(api), (None, Some("2.53.2".into())));

    // The Job succeeded: the media claim records the schema (it outlives the
    // object), and masters, coreapps and webapps start, once the API server
    // (not only the cache) says the number is still this object's. A step of
    // the rollout right after a status write waits for the next one.
    api.settle();
    let workloads = [
        "GET /apis/whatsapp.operators.dev/v1alpha1/whatsappnumberclaims/whatsapp-number-15550001111",
        "PATCH /api/v1/namespaces/team/persistentvolumeclaims/acme-media",
        "PATCH /apis/apps/v1/namespaces/team/statefulsets/acme-master",
        "PATCH /apis/apps/v1/namespaces/team/statefulsets/acme-coreapp",
        "PATCH /apis/apps/v1/namespaces/team/deployments/acme-webapp",
    ];
    assert_eq!(operator.reconcile(api).await, workloads);
    assert_eq!(condition(api, "Ready"), ("False".into(), "Deploying".into()));
    // The record of the Job goes in the write of the schema version.
    assert_eq!(media_records(api), (Some("2.53.2".into()), None));

    // Their pods are ready: the number is.
    api.settle();
    // Ready, and the unknown release (one event for both build conditions).
    assert_eq!(operator.reconcile(api).await, vec![status_write(), EVENT.into(), EVENT.into()]);
    assert_eq!(condition(api, "Ready"), ("True".into(), "Ready".into()));
}

const MEDIA: &str = "/api/v1/namespaces/team/persistentvolumeclaims/acme-media";

/// The schema version and the schema Job's version the media claim records.
fn media_records(api: &FakeApi) -> (Option<String>, Option<String>) {
    use crate::resources::names::{ANNOTATION_SCHEMA_UPGRADE, ANNOTATION_SCHEMA_VERSION};
    let annotations = api.get(MEDIA)["metadata"]["annotations"].clone();
    let read = |key: &str| annotations[key].as_str().map(String::from);
    (read(ANNOTATION_SCHEMA_VERSION), read(ANNOTATION_SCHEMA_UPGRADE))
}

#[tokio::test]
async fn a_first_deployment_takes_back_its_record_with_a_schema_job_that_never_started() {
    let api = seeded();
    let mut operator = Operator::start(&api);
    operator.reconcile(&api).await;
    operator.reconcile(&api).await;
    assert_eq!(media_records(&api), (None, Some("2.53.2".into())));
    let job = "/apis/batch/v1/namespaces/team/jobs/acme-schema-2-53-2";
    api.get(job);

    // An older version before the Job started (a mistyped version put
    // right): the Job never started, so its record and it go (the record
    // first: should the Job's deletion fail, the Job is still there to be
    // deleted at the next turn), and the older version's Job is made,
    // recorded first. Never held meanwhile.
    let stale = api.objects();
    api.edit(WAN, |w| {
        w["spec"]["version"] = json!("2.51.3");
        w["metadata"]["generation"] = json!(2);
    });
    let taken_back = operator.reconcile(&api).await;
    let patch = taken_back.iter().position(|r| *r == format!("PATCH {MEDIA}"));
    let delete = taken_back.iter().position(|r| *r == format!("DELETE {job}"));
    assert!(patch.is_some() && patch < delete, "the record, then the Job: {taken_back:?}");
    assert_eq!(media_records(&api), (None, None));

    // The Job's deletion seen, the claim's write not yet: the cache's
    // record is not taken for the API server's, nor applied back.
    let mut seen: Vec<Value> = stale.into_iter().filter(|o| o["kind"] == "PersistentVolumeClaim").collect();
    seen.extend(api.objects().into_iter().filter(|o| o["kind"] != "PersistentVolumeClaim"));
    operator.seeds.relist(&seen);
    api.take_requests();
    let obj: super::cache::NumberObject = serde_json::from_value(api.get(WAN)).expect("a WhatsAppNumber");
    Box::pin(reconcile_object(Arc::new(obj), operator.ctx.clone())).await.expect("the reconcile succeeds");
    let requests = api.take_requests();
    let listed = "GET /api/v1/namespaces/team/persistentvolumeclaims";
    assert!(requests.iter().any(|r| r == listed), "the claim listed from the API server: {requests:?}");
    assert_eq!(media_records(&api), (None, Some("2.51.3".into())), "{requests:?}");
    let wan = api.get(WAN);
    assert!(!wan["status"].to_string().contains("SchemaUpgradeUnfinished"), "held: {}", wan["status"]);

    let mut made = false;
    for _ in 0..4 {
        let wan = api.get(WAN);
        assert!(!wan["status"].to_string().contains("SchemaUpgradeUnfinished"), "held: {}", wan["status"]);
        if api.objects().iter().any(|o| o["metadata"]["name"] == "acme-schema-2-51-3") {
            made = true;
            break;
        }
        operator.reconcile(&api).await;
    }
    assert!(made, "the Job of the spec's version is made");
    assert_eq!(media_records(&api), (None, Some("2.51.3".into())));
}

#[tokio::test]
async fn no_node_starts_once_the_api_server_shows_the_claim_taken() {
    let api = seeded();
    let mut operator = Operator::start(&api);
    operator.reconcile(&api).await;
    operator.reconcile(&api).await;
    api.settle();
    operator.sync(&api);
    let (error, requests) = reconcile_with_the_claim_taken(&api, &operator).await;
    assert_eq!(error.reason(), "ClaimChanged", "{error}");
    assert_eq!(requests, [format!("GET {CLAIM}")], "nothing written, no node started");
    // Counted, and looked at again after the error backoff, or sooner when
    // the claim watch delivers the change.
    let obj: super::cache::NumberObject = serde_json::from_value(api.get(WAN)).expect("a WhatsAppNumber");
    let action = super::error_policy(Arc::new(obj), &error, operator.ctx.clone());
    assert_eq!(action, kube::runtime::controller::Action::requeue(super::backoff(1)));
    let metrics = operator.ctx.metrics.encode();
    assert!(metrics.contains("reason=\"ClaimChanged\"} 1"), "{metrics}");
}

const CLAIM: &str = "/apis/whatsapp.operators.dev/v1alpha1/whatsappnumberclaims/whatsapp-number-15550001111";

/// The claim deleted by hand and taken by another object, which the claim
/// watch has not delivered yet; then one reconcile, which fails: its error
/// and the requests it made.
async fn reconcile_with_the_claim_taken(api: &FakeApi, operator: &Operator) -> (super::error::Error, Vec<String>) {
    api.edit(CLAIM, |c| c["spec"]["holder"] = json!("other/acme/uid-other"));
    api.take_requests();
    let obj: super::cache::NumberObject = serde_json::from_value(api.get(WAN)).expect("a WhatsAppNumber");
    let result = Box::pin(reconcile_object(Arc::new(obj), operator.ctx.clone())).await;
    (result.expect_err("the reconcile stops"), api.take_requests())
}

#[tokio::test]
async fn no_schema_job_is_made_once_the_api_server_shows_the_claim_taken() {
    let api = seeded();
    let mut operator = Operator::start(&api);
    operator.reconcile(&api).await;
    operator.sync(&api);
    let (error, requests) = reconcile_with_the_claim_taken(&api, &operator).await;
    assert_eq!(error.reason(), "ClaimChanged", "{error}");
    assert!(!requests.iter().any(|r| !r.starts_with("GET")), "nothing written: {requests:?}");
    assert!(requests.contains(&format!("GET {CLAIM}")), "{requests:?}");
}

#[tokio::test]
async fn an_upgrades_schema_job_is_recorded_on_the_media_claim_before_it_is_made() {
    use crate::resources::names::{ANNOTATION_SCHEMA_UPGRADE, ANNOTATION_SCHEMA_VERSION};
    let api = seeded();
    let mut operator = Operator::start(&api);
    bring_up(&api, &mut operator).await;
    api.edit(WAN, |w| {
        w["spec"]["version"] = json!("2.55.1");
        w["metadata"]["generation"] = json!(2);
    });
    let media = "/api/v1/namespaces/team/persistentvolumeclaims/acme-media";
    let annotation =
        |api: &FakeApi, key: &str| api.get(media)["metadata"]["annotations"][key].as_str().map(String::from);
    let mut made = None;
    for _ in 0..6 {
        let requests = operator.reconcile(&api).await;
        if let Some(at) = requests.iter().position(|r| r == "POST /apis/batch/v1/namespaces/team/jobs") {
            made = Some(requests[..at].to_vec());
            break;
        }
        assert_eq!(annotation(&api, ANNOTATION_SCHEMA_UPGRADE), None, "not before the Job is made: {requests:?}");
        api.settle();
    }
    let before = made.expect("the upgrade's schema Job is made");
    assert!(before.contains(&format!("PATCH {media}")), "the record is written first: {before:?}");
    assert_eq!(annotation(&api, ANNOTATION_SCHEMA_UPGRADE).as_deref(), Some("2.55.1"));
    assert_eq!(annotation(&api, ANNOTATION_SCHEMA_VERSION).as_deref(), Some("2.53.2"));

    // The Job succeeded: the new schema version is recorded, and the record
    // of the Job goes in that same write.
    api.settle();
    for _ in 0..4 {
        operator.reconcile(&api).await;
        if annotation(&api, ANNOTATION_SCHEMA_VERSION).as_deref() == Some("2.55.1") {
            break;
        }
        assert_eq!(annotation(&api, ANNOTATION_SCHEMA_UPGRADE).as_deref(), Some("2.55.1"));
        api.settle();
    }
    assert_eq!(annotation(&api, ANNOTATION_SCHEMA_VERSION).as_deref(), Some("2.55.1"));
    assert_eq!(annotation(&api, ANNOTATION_SCHEMA_UPGRADE), None);
}

#[tokio::test]
async fn a_number_from_nothing_to_ready_then_no_request_at_all() {
    let api = seeded();
    let mut operator = Operator::start(&api);
    bring_up(&api, &mut operator).await;

    // Nothing changed: no request at all, neither read nor write.
    assert_eq!(operator.reconcile(&api).await, Vec::<String>::new());
    assert_eq!(operator.reconcile(&api).await, Vec::<String>::new());

    // The ConfigMap's record stands for the credentials: their data is not kept.
    assert!(!operator.ctx.caches.keeps_secret("team", "acme-db"));
    // The key Secret the operator made is kept once, by its watch, not also
    // as the operator wrote it.
    assert!(!operator.ctx.caches.keeps_secret("team", "acme-keys"));

    // A restarted operator knows only what its caches show: the credentials'
    // digest is recorded on the ConfigMap for the Secret's version, so it
    // reads nothing and writes nothing.
    let mut restarted = Operator::start(&api);
    assert_eq!(restarted.reconcile(&api).await, Vec::<String>::new());
    assert_eq!(restarted.reconcile(&api).await, Vec::<String>::new());

    // New credentials: read once, and every pod rolls.
    api.edit("/api/v1/namespaces/team/secrets/acme-db", |secret| {
        secret["data"]["password"] = json!("bmV3LXBhc3N3b3JkLTEh");
    });
    let rolled = restarted.reconcile(&api).await;
    assert_eq!(rolled.first().map(String::as_str), Some("GET /api/v1/namespaces/team/secrets/acme-db"), "{rolled:?}");
    for child in
        ["configmaps/acme-config", "statefulsets/acme-master", "statefulsets/acme-coreapp", "deployments/acme-webapp"]
    {
        assert!(rolled.iter().any(|r| r.starts_with("PATCH") && r.ends_with(child)), "{child} in {rolled:?}");
    }
}

#[tokio::test]
async fn a_spec_change_writes_what_it_changes_and_deletion_releases_the_number() {
    let api = seeded();
    let mut operator = Operator::start(&api);
    bring_up(&api, &mut operator).await;
    let series = |r: &str| r.starts_with("PATCH /apis/events.k8s.io/v1/namespaces/team/events/");

    // One more webapp: its Deployment and the status (Progressing, then Ready).
    api.edit(WAN, |wan| {
        wan["spec"]["webapp"]["replicas"] = json!(3);
        wan["metadata"]["generation"] = json!(2);
    });
    let scaled = operator.reconcile(&api).await;
    assert_eq!(scaled[..2], ["PATCH /apis/apps/v1/namespaces/team/deployments/acme-webapp", &status_write()]);
    // The first rollout's steps went into its Ready write: this is the first RollingOut event.
    assert_eq!(scaled[2..], [EVENT], "one event: {scaled:?}");
    assert_eq!(condition(&api, "Ready").0, "False");
    api.settle();
    let ready = operator.reconcile(&api).await;
    assert!(ready.len() == 2 && ready[0] == status_write() && series(&ready[1]), "{ready:?}");
    assert_eq!(condition(&api, "Ready").0, "True");
    assert_eq!(operator.reconcile(&api).await, Vec::<String>::new());

    // Deleted: masters and coreapps stop, and the number stays claimed while
    // any of their pods exists.
    api.edit(WAN, |wan| wan["metadata"]["deletionTimestamp"] = json!("2026-12-03T00:00:00Z"));
    let stopping = operator.reconcile(&api).await;
    assert_eq!(
        stopping,
        [
            "DELETE /apis/apps/v1/namespaces/team/statefulsets/acme-coreapp",
            "DELETE /apis/apps/v1/namespaces/team/statefulsets/acme-master",
            &status_write(),
            EVENT,
        ]
    );
    assert_eq!(condition(&api, "Ready"), ("False".into(), "Deleting".into()));
    let message = &api.get(WAN)["status"]["conditions"][0]["message"];
    assert_eq!(
        message,
        "being deleted: +15550001111 is released once its masters, coreapps and schema upgrades are gone: \
         team/acme-coreapp-0, team/acme-coreapp-1, team/acme-master-0, team/acme-master-1"
    );
    // Still there: nothing new to write.
    assert_eq!(operator.reconcile(&api).await, Vec::<String>::new());

    // The pods are gone: the claim is released, then the finalizer.
    api.settle();
    let claim = "/apis/whatsapp.operators.dev/v1alpha1/whatsappnumberclaims/whatsapp-number-15550001111";
    assert_eq!(
        operator.reconcile(&api).await,
        [
            // What the caches say is confirmed on the API server first.
            "GET /apis/apps/v1/namespaces/team/statefulsets".into(),
            "GET /apis/batch/v1/namespaces/team/jobs".into(),
            "GET /api/v1/namespaces/team/pods".into(),
            format!("GET {claim}"),
            format!("DELETE {claim}"),
            "GET /apis/coordination.k8s.io/v1/namespaces/whatsapp-operator/leases/whatsapp-number-15550001111".into(),
            format!("PATCH {WAN}"),
        ]
    );
    assert!(api.get(WAN)["metadata"]["finalizers"].as_array().is_none_or(|f| f.is_empty()));
}

#[tokio::test]
async fn deletion_releases_the_number_only_once_the_api_server_has_nothing_left_that_runs() {
    let api = seeded();
    let mut operator = Operator::start(&api);
    bring_up(&api, &mut operator).await;
    api.edit(WAN, |wan| wan["metadata"]["deletionTimestamp"] = json!("2026-12-03T00:00:00Z"));
    operator.reconcile(&api).await;
    api.settle();
    operator.sync(&api);
    // A coreapp pod the StatefulSet controller made just before its
    // StatefulSet went, which the operator's pod watch has not delivered.
    let path = "/api/v1/namespaces/team/pods/acme-coreapp-1";
    let mut late = json!({"apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": "acme-coreapp-1", "namespace": "team", "uid": "uid-late",
            "labels": {"app.kubernetes.io/instance": "acme", "app.kubernetes.io/component": "coreapp",
                "app.kubernetes.io/managed-by": "whatsapp-operator"}},
        "status": {"phase": "Pending"}});
    api.stamp(&mut late);
    api.objects.lock().unwrap().insert(path.into(), late);
    api.take_requests();
    let obj: super::cache::NumberObject = serde_json::from_value(api.get(WAN)).expect("a WhatsAppNumber");
    Box::pin(reconcile_object(Arc::new(obj), operator.ctx.clone())).await.expect("the reconcile succeeds");
    let held = api.take_requests();
    assert!(!held.iter().any(|r| r.contains("whatsappnumberclaims")), "the number stays claimed: {held:?}");
    assert!(!held.iter().any(|r| r == &format!("PATCH {WAN}")), "the finalizer stays: {held:?}");
    assert!(held.iter().any(|r| r == "GET /api/v1/namespaces/team/pods"), "read from the API server: {held:?}");

    // Gone: released. A StatefulSet of the same labels that the object does
    // not own (left by `--cascade=orphan`), at 0 replicas, holds nothing.
    api.objects.lock().unwrap().remove(path);
    let orphan = "/apis/apps/v1/namespaces/team/statefulsets/acme-master";
    let mut sts = json!({"apiVersion": "apps/v1", "kind": "StatefulSet",
        "metadata": {"name": "acme-master", "namespace": "team", "uid": "uid-orphan",
            "labels": {"app.kubernetes.io/instance": "acme", "app.kubernetes.io/managed-by": "whatsapp-operator",
                "app.kubernetes.io/component": "master"}},
        "spec": {"replicas": 0, "serviceName": "acme-master", "selector": {"matchLabels": {"app": "acme"}},
            "template": {"metadata": {"labels": {"app": "acme"}}, "spec": {"containers": []}}}});
    api.stamp(&mut sts);
    api.objects.lock().unwrap().insert(orphan.into(), sts);
    let released = operator.reconcile(&api).await;
    assert!(released.iter().any(|r| r.starts_with("DELETE") && r.contains("whatsappnumberclaims")), "{released:?}");
    assert!(api.get(WAN)["metadata"]["finalizers"].as_array().is_none_or(|f| f.is_empty()));
}

#[tokio::test]
async fn deletion_while_the_schema_job_runs_stops_it_before_the_number_is_released() {
    let api = seeded();
    let mut operator = Operator::start(&api);
    operator.reconcile(&api).await;
    let made = operator.reconcile(&api).await;
    assert_eq!(made.last().map(String::as_str), Some("POST /apis/batch/v1/namespaces/team/jobs"));
    // Its pod runs: the database is being initialized.
    let (job, pod) = ("acme-schema-2-53-2", "acme-schema-2-53-2-x7k2p");
    let mut running = json!({"apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": pod, "namespace": "team", "uid": "uid-schema-pod", "labels": {
            "app.kubernetes.io/managed-by": "whatsapp-operator",
            "app.kubernetes.io/component": "schema-upgrade",
            "batch.kubernetes.io/job-name": job}},
        "status": {"phase": "Running"}});
    api.stamp(&mut running);
    let pod_path = format!("/api/v1/namespaces/team/pods/{pod}");
    api.objects.lock().unwrap().insert(pod_path.clone(), running);

    api.edit(WAN, |wan| wan["metadata"]["deletionTimestamp"] = json!("2026-12-03T00:00:00Z"));
    let stopping = operator.reconcile(&api).await;
    assert_eq!(
        stopping,
        [format!("DELETE /apis/batch/v1/namespaces/team/jobs/{job}"), status_write(), EVENT.into()],
        "the Job goes, nothing is released"
    );
    assert_eq!(condition(&api, "Ready"), ("False".into(), "Deleting".into()));
    let message = api.get(WAN)["status"]["conditions"][0]["message"].clone();
    assert!(message.as_str().is_some_and(|m| m.ends_with(&format!("team/{pod}"))), "{message}");
    // The pod is still there: nothing is written, the claim stays.
    assert_eq!(operator.reconcile(&api).await, Vec::<String>::new());

    // The pod is gone: the claim is released, then the finalizer.
    api.objects.lock().unwrap().remove(&pod_path);
    let released = operator.reconcile(&api).await;
    assert!(released.iter().any(|r| r.starts_with("DELETE /apis/whatsapp.operators.dev/")), "{released:?}");
    assert_eq!(released.last(), Some(&format!("PATCH {WAN}")));
}

#[tokio::test]
async fn deletion_waits_for_a_schema_job_between_attempts() {
    let api = seeded();
    let mut operator = Operator::start(&api);
    operator.reconcile(&api).await;
    operator.reconcile(&api).await;
    // Its first pod failed and went; the Job waits to make the next one.
    let job = "/apis/batch/v1/namespaces/team/jobs/acme-schema-2-53-2";
    api.edit(job, |j| j["status"] = json!({"failed": 1, "startTime": "2026-01-01T00:00:00Z"}));
    api.edit(WAN, |wan| wan["metadata"]["deletionTimestamp"] = json!("2026-12-03T00:00:00Z"));
    let stopping = operator.reconcile(&api).await;
    assert_eq!(stopping, [format!("DELETE {job}"), status_write(), EVENT.into()], "deleted, nothing released");
    let message = api.get(WAN)["status"]["conditions"][0]["message"].clone();
    assert!(
        message.as_str().is_some_and(|m| m.ends_with("team/acme-schema-2-53-2 (a schema Job being deleted)")),
        "{message}"
    );
    // Gone (the fake API server deletes at once): the number is released.
    let released = operator.reconcile(&api).await;
    assert_eq!(released.last(), Some(&format!("PATCH {WAN}")), "{released:?}");
}

#[tokio::test]
async fn the_finalizer_goes_after_the_others_and_never_over_a_change_it_did_not_see() {
    let api = seeded();
    api.edit(WAN, |wan| wan["metadata"]["finalizers"] = json!(["example.com/backup"]));
    let mut operator = Operator::start(&api);
    operator.sync(&api);
    api.take_requests();
    let read: super::cache::NumberObject = serde_json::from_value(api.get(WAN)).expect("a WhatsAppNumber");

    // Another writer changes the finalizers after the read: the patch is
    // refused, and nothing is claimed or written on the strength of it.
    api.edit(WAN, |wan| wan["metadata"]["finalizers"] = json!(["example.com/backup", "example.com/audit"]));
    let refused = Box::pin(super::reconcile(
        Arc::new(super::typed(&read).expect("a typed WhatsAppNumber")),
        operator.ctx.clone(),
    ))
    .await;
    assert!(refused.is_err(), "{refused:?}");
    assert_eq!(api.take_requests(), vec![format!("PATCH {WAN}")]);
    assert_eq!(api.get(WAN)["metadata"]["finalizers"], json!(["example.com/backup", "example.com/audit"]));

    // Read again: the finalizer goes last, and the turn goes on to the claim
    // and the first status.
    let first = operator.reconcile(&api).await;
    assert_eq!(
        first[..2],
        [format!("PATCH {WAN}"), "POST /apis/whatsapp.operators.dev/v1alpha1/whatsappnumberclaims".into()]
    );
    assert!(first.contains(&status_write()), "{first:?}");
    assert_eq!(
        api.get(WAN)["metadata"]["finalizers"],
        json!(["example.com/backup", "example.com/audit", super::claim::FINALIZER])
    );
    assert_eq!(condition(&api, "Ready"), ("False".into(), "Deploying".into()));
}

#[tokio::test]
async fn no_claim_is_taken_while_another_instance_has_statefulsets_about_to_start_pods() {
    let api = seeded();
    // Another WhatsAppNumber of the number (its claim lost) has a coreapp
    // StatefulSet that asks for pods and has made none yet.
    let mut other = json!({"apiVersion": "apps/v1", "kind": "StatefulSet",
        "metadata": {"name": "held-coreapp", "namespace": "elsewhere", "uid": "uid-held-coreapp", "generation": 1,
            "labels": {"app.kubernetes.io/managed-by": "whatsapp-operator", "app.kubernetes.io/component": "coreapp",
                "app.kubernetes.io/instance": "held", "whatsapp.operators.dev/number": "15550001111"}},
        "spec": {"replicas": 2, "serviceName": "held-coreapp", "selector": {"matchLabels": {"app": "held"}},
            "template": {"metadata": {"labels": {"app": "held"}}, "spec": {"containers": []}}}});
    api.stamp(&mut other);
    let other_path = "/apis/apps/v1/namespaces/elsewhere/statefulsets/held-coreapp";
    api.objects.lock().unwrap().insert(other_path.into(), other);
    let mut operator = Operator::start(&api);

    // The finalizer, then nothing is claimed or built: the number waits,
    // and says for what.
    assert_eq!(operator.reconcile(&api).await, vec![format!("PATCH {WAN}"), status_write(), EVENT.into()]);
    assert_eq!(condition(&api, "Ready"), ("False".into(), "PreviousInstanceRunning".into()));
    let message = api.get(WAN)["status"]["conditions"][0]["message"].as_str().unwrap_or_default().to_string();
    assert!(message.contains("elsewhere/held-coreapp (a StatefulSet whose pods are about to start)"), "{message}");
    assert_eq!(operator.reconcile(&api).await, Vec::<String>::new(), "waiting writes nothing new");

    // The other instance is stopped: the number is claimed and built.
    api.objects.lock().unwrap().remove(other_path);
    let claimed = operator.reconcile(&api).await;
    assert_eq!(claimed[0], "POST /apis/whatsapp.operators.dev/v1alpha1/whatsappnumberclaims", "{claimed:?}");
    assert!(claimed.iter().any(|r| r.ends_with("/jobs")), "{claimed:?}");
}

thread_local! {
    /// The log lines of this thread, while a test captures them.
    static CAPTURED: std::cell::RefCell<Option<Arc<Mutex<Vec<u8>>>>> = const { std::cell::RefCell::new(None) };
}

/// Writes a log line to the capturing thread's buffer.
struct Captured;

impl std::io::Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        CAPTURED.with_borrow(|c| c.as_ref().map(|c| c.lock().unwrap().extend_from_slice(buf)));
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Every log line, down to trace, of the calling thread until the guard
/// drops. One process-wide subscriber decides per event whether its thread
/// captures: a callsite's interest is cached for the whole process, so
/// neither a subscriber set for one thread nor a filter asked once per
/// callsite may decide it from the thread that first used the callsite.
fn capture_logs() -> (Arc<Mutex<Vec<u8>>>, impl Drop) {
    use tracing_subscriber::Layer as _;
    use tracing_subscriber::layer::SubscriberExt as _;
    static INSTALLED: std::sync::Once = std::sync::Once::new();
    INSTALLED.call_once(|| {
        // Decided per event, on the thread that logs it: a `filter_fn` would
        // be asked once per callsite, on whichever thread used it first.
        let capturing = tracing_subscriber::filter::dynamic_filter_fn(|_, _| CAPTURED.with_borrow(Option::is_some));
        let layer = tracing_subscriber::fmt::layer().with_writer(|| Captured).with_filter(capturing);
        tracing::subscriber::set_global_default(tracing_subscriber::registry().with(layer))
            .expect("no other global subscriber in the unit tests");
    });
    let logs = Arc::new(Mutex::new(Vec::new()));
    CAPTURED.set(Some(logs.clone()));
    struct Stop;
    impl Drop for Stop {
        fn drop(&mut self) {
            CAPTURED.set(None);
        }
    }
    (logs, Stop)
}

/// The logs of a number brought up, then reconciled by a restarted operator.
async fn logs_of_a_bring_up(api: &Arc<FakeApi>) -> String {
    let (logs, capturing) = capture_logs();
    {
        let mut operator = Operator::start(api);
        bring_up(api, &mut operator).await;
        let mut restarted = Operator::start(api);
        restarted.reconcile(api).await;
    }
    drop(capturing);
    String::from_utf8(logs.lock().unwrap().clone()).expect("UTF-8 logs")
}

#[tokio::test]
async fn the_generated_credentials_are_never_logged() {
    let api = seeded();
    let logs = logs_of_a_bring_up(&api).await;
    assert!(logs.contains("reconciling"), "the operator's debug and trace output was captured");
    let keys = api.get("/api/v1/namespaces/team/secrets/acme-keys");
    let secrets = [crate::resources::config::ADMIN_PASSWORD, crate::resources::config::API_KEY].map(|key| {
        let encoded = keys["data"][key].as_str().unwrap_or_else(|| panic!("{key} in {keys}")).to_string();
        use base64::Engine as _;
        let plain = base64::engine::general_purpose::STANDARD.decode(&encoded).expect("base64");
        (key, encoded, String::from_utf8(plain).expect("UTF-8"))
    });
    for (key, encoded, plain) in secrets {
        assert!(plain.len() >= 8, "{key} was generated");
        assert!(!logs.contains(&plain) && !logs.contains(&encoded), "{key} appears in the logs");
    }
}

#[tokio::test]
async fn a_new_number_takes_its_first_turn_while_every_rollout_turn_is_busy() {
    let api = seeded();
    let mut operator = Operator::with_turns(&api, 4);
    // Four rollouts hold every turn.
    let ctx = operator.ctx.clone();
    let busy = ctx.turns.acquire_many(4).await.expect("four turns");
    let first = tokio::time::timeout(std::time::Duration::from_secs(30), operator.reconcile(&api))
        .await
        .expect("a new number's first turn does not wait for the rollouts");
    assert!(first.contains(&status_write()), "{first:?}");
    assert_eq!(condition(&api, "Ready"), ("False".into(), "Deploying".into()));

    // Its children are a rollout's work: they wait for a turn of their own.
    let waiting = tokio::time::timeout(std::time::Duration::from_millis(300), operator.reconcile(&api)).await;
    assert!(waiting.is_err(), "the second turn waited: {waiting:?}");
    drop(busy);
    let children = operator.reconcile(&api).await;
    assert!(children.iter().any(|r| r.ends_with("/jobs")), "{children:?}");
}

#[tokio::test]
async fn new_numbers_created_together_take_every_free_turn() {
    let api = seeded();
    let mut operator = Operator::with_turns(&api, 4);
    // Other new numbers hold the turn kept for new ones: this one takes a
    // common turn, free meanwhile.
    let ctx = operator.ctx.clone();
    let kept = ctx.first_turns.acquire().await.expect("the kept turn");
    assert_eq!(ctx.first_turns.available_permits(), 0);
    let first = tokio::time::timeout(std::time::Duration::from_secs(30), operator.reconcile(&api))
        .await
        .expect("a common turn was free");
    assert!(first.contains(&status_write()), "{first:?}");
    drop(kept);
}

#[tokio::test]
async fn after_shutdown_a_reconcile_waiting_for_its_turn_does_nothing() {
    let api = seeded();
    let mut operator = Operator::start(&api);
    operator.ctx.stop_turns();
    assert_eq!(operator.reconcile(&api).await, Vec::<String>::new(), "no request: the next leader reconciles it");
    assert!(api.get(WAN)["metadata"]["finalizers"].is_null(), "nothing was written");
}

#[tokio::test]
async fn a_repeated_event_extends_its_series_and_the_series_are_forgotten_once_they_cannot_grow() {
    use kube::runtime::events::{Event, EventType};
    let api = seeded();
    let reporter = Reporter { controller: "whatsapp-operator".into(), instance: Some("whatsapp-operator-0".into()) };
    let events = super::publish::Events::new(api.client(), reporter);
    let regarding = kube::Resource::object_ref(&crate::fixtures::sample(), &());
    let ready = |note: &str| Event {
        type_: EventType::Normal,
        reason: "Ready".into(),
        note: Some(note.into()),
        action: "Reconcile".into(),
        secondary: None,
    };
    api.take_requests();
    events.publish(&ready("all tiers ready"), &regarding).await.expect("published");
    assert_eq!(api.take_requests(), [EVENT]);
    let series = events.series();
    assert!(series.len() == 1 && series[0].1 == 1, "one series, seen once: {series:?}");
    let name = series[0].0.clone();
    let (namespace, event) = name.split_once('/').expect("namespace/name");
    let path = format!("/apis/events.k8s.io/v1/namespaces/{namespace}/events/{event}");
    let stored = api.get(&path);
    assert_eq!((stored["reason"].as_str(), stored["note"].as_str()), (Some("Ready"), Some("all tiers ready")));
    assert_eq!(stored["reportingController"], "whatsapp-operator");
    assert_eq!(stored["reportingInstance"], "whatsapp-operator-0");
    assert_eq!(stored["regarding"]["name"], "acme");
    assert_eq!(stored["type"], "Normal");

    events.publish(&ready("all tiers ready again"), &regarding).await.expect("published");
    assert_eq!(api.take_requests(), [format!("PATCH {path}")]);
    assert_eq!(api.get(&path)["series"]["count"], 2);
    assert!(api.get(&path)["series"]["lastObservedTime"].is_string());
    assert_eq!(events.series(), [(name.clone(), 2)]);

    // Another reason is another series.
    let rolling = Event { reason: "RollingOut".into(), ..ready("rolling out") };
    events.publish(&rolling, &regarding).await.expect("published");
    assert_eq!(api.take_requests(), [EVENT]);
    assert_eq!(events.series().len(), 2);

    // The API server dropped the event (it keeps them an hour): a new series.
    api.objects.lock().unwrap().remove(&path);
    events.publish(&ready("all tiers ready"), &regarding).await.expect("published");
    assert_eq!(api.take_requests(), [format!("PATCH {path}"), EVENT.to_string()]);
    assert!(events.series().iter().all(|(n, count)| n != &name && *count == 1), "{:?}", events.series());

    // Once no series can grow, none is kept.
    let later = std::time::Instant::now() + std::time::Duration::from_secs(6 * 60);
    assert!(events.renew(later), "the table's room is given back");
    assert!(events.series().is_empty());
    assert!(!events.renew(later), "nothing left to give back");
}

#[tokio::test]
async fn a_refused_certificate_is_remembered_until_another_one_comes() {
    let api = Arc::new(FakeApi::default());
    let operator = Operator::start(&api);
    let (ctx, wan) = (&operator.ctx, crate::fixtures::sample());
    assert_eq!(ctx.certificate_refusal(&wan, "c1"), None, "never uploaded");
    ctx.certificate_answered(&wan, "c1", Some("400 1009 bad key"));
    assert_eq!(ctx.certificate_refusal(&wan, "c1").as_deref(), Some("400 1009 bad key"), "not sent again");
    assert_eq!(ctx.certificate_refusal(&wan, "c2"), None, "a renewed certificate is uploaded");
    ctx.certificate_answered(&wan, "c2", None);
    assert_eq!(ctx.certificate_refusal(&wan, "c1"), None, "a later acceptance clears the record");
    ctx.certificate_answered(&wan, "c1", Some("refused"));
    ctx.forget(&wan);
    assert_eq!(ctx.certificate_refusal(&wan, "c1"), None, "a deleted number leaves nothing");
}
