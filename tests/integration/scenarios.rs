//! The scenarios. Each works in a namespace of its own.

use std::collections::BTreeMap;
use std::time::Duration;

use anyhow::{Context as _, Result, anyhow, bail, ensure};
use futures::StreamExt;
use k8s_openapi::api::apps::v1::{Deployment, StatefulSet};
use k8s_openapi::api::core::v1::{ConfigMap, PersistentVolumeClaim, Pod, Secret, Service};
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use kube::api::{DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Client, ResourceExt};
use serde_json::{Value, json};
use whatsapp_operator::api::WhatsAppNumber;

use crate::Env;
use crate::support::{self, OPERATOR_NAMESPACE, Operator, namespace, wait_until};

pub const READY_TIMEOUT: Duration = Duration::from_secs(90);

pub fn wans(client: &Client, ns: &str) -> Api<WhatsAppNumber> {
    Api::namespaced(client.clone(), ns)
}

pub fn typed<K>(client: &Client, ns: &str) -> Api<K>
where
    K: kube::Resource<DynamicType = (), Scope = k8s_openapi::NamespaceResourceScope>,
{
    Api::namespaced(client.clone(), ns)
}

/// Creates every object of an example file in `ns`; returns the WhatsAppNumber's name.
pub async fn apply_example(client: &Client, ns: &str, file: &str, only_kind: Option<&str>) -> Result<String> {
    apply_example_for(client, ns, file, only_kind, &unique_number()).await
}

/// [`apply_example`] with the phone number given.
pub async fn apply_example_for(
    client: &Client,
    ns: &str,
    file: &str,
    only_kind: Option<&str>,
    phone_number: &str,
) -> Result<String> {
    apply_example_with(client, ns, file, only_kind, phone_number, &json!({})).await
}

/// [`apply_example_for`] with `spec` merged into the WhatsAppNumber's spec
/// (objects merged key by key, anything else replaced).
pub async fn apply_example_with(
    client: &Client,
    ns: &str,
    file: &str,
    only_kind: Option<&str>,
    phone_number: &str,
    spec: &Value,
) -> Result<String> {
    fn merge(into: &mut Value, from: &Value) {
        match (into, from) {
            (Value::Object(into), Value::Object(from)) => {
                for (k, v) in from {
                    merge(into.entry(k.clone()).or_insert(Value::Null), v);
                }
            }
            (into, from) => *into = from.clone(),
        }
    }
    let text = std::fs::read_to_string(support::repo().join("examples").join(file))?;
    let docs: Vec<Value> = serde_saphyr::from_multiple(&text)?;
    let mut wan_name = None;
    for mut value in docs {
        if value.is_null() {
            continue;
        }
        value["metadata"]["namespace"] = json!(ns);
        let kind = value["kind"].as_str().unwrap_or_default().to_string();
        if kind == "WhatsAppNumber" {
            // Tests run in parallel and the operator lets one object hold a number.
            value["spec"]["phoneNumber"] = json!(phone_number);
            // A fixed database prefix would be shared by every copy; the
            // default one follows the number.
            if let Some(db) = value["spec"]["database"].as_object_mut() {
                db.remove("namePrefix");
            }
            // These scenarios are about workloads: pods run on fake nodes and no
            // client answers health probes (the gateway scenarios run emulators).
            value["spec"]["health"] = json!({"enabled": false});
            merge(&mut value["spec"], spec);
        }
        if only_kind.is_some_and(|k| k != kind) {
            if kind == "WhatsAppNumber" {
                wan_name = value["metadata"]["name"].as_str().map(String::from);
            }
            continue;
        }
        match kind.as_str() {
            "Secret" => {
                let s: Secret = serde_json::from_value(value)?;
                typed::<Secret>(client, ns).create(&PostParams::default(), &s).await?;
            }
            "WhatsAppNumber" => {
                let w: WhatsAppNumber = serde_json::from_value(value)?;
                wan_name = Some(w.name_any());
                wans(client, ns).create(&PostParams::default(), &w).await?;
            }
            other => bail!("unexpected kind {other} in {file}"),
        }
    }
    wan_name.ok_or_else(|| anyhow!("{file} has no WhatsAppNumber"))
}

/// A phone number no other test uses.
pub fn unique_number() -> String {
    static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let n = N.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    format!("+1556{:03}{:04}", std::process::id() % 1000, n)
}

pub fn condition<'a>(w: &'a WhatsAppNumber, type_: &str) -> Option<&'a whatsapp_operator::api::Condition> {
    w.status.as_ref()?.conditions.iter().find(|c| c.type_ == type_)
}

/// Ready=True, computed for the object's current generation.
pub fn ready_now(w: &WhatsAppNumber) -> bool {
    let generation = w.metadata.generation;
    w.status.as_ref().is_some_and(|s| s.observed_generation == generation)
        && condition(w, "Ready").is_some_and(|c| c.status == "True" && c.observed_generation == generation)
}

pub async fn wait_ready(api: &Api<WhatsAppNumber>, name: &str) -> Result<WhatsAppNumber> {
    wait_until(READY_TIMEOUT, &format!("{name} to be Ready for its current generation"), || async {
        Ok(ready_now(&api.get(name).await?))
    })
    .await
    .with_context(|| {
        format!(
            "last status: {:?}",
            futures::executor::block_on(api.get_opt(name)).ok().flatten().and_then(|w| w.status)
        )
    })?;
    Ok(api.get(name).await?)
}

/// The first version of a WhatsAppNumber with a condition, watched from the
/// resource version `since` (before its creation), so no version is missed.
pub async fn first_status(api: &Api<WhatsAppNumber>, since: &str) -> Result<WhatsAppNumber> {
    let params = kube::api::WatchParams::default().timeout(READY_TIMEOUT.as_secs() as u32);
    let mut events = api.watch(&params, since).await?.boxed();
    while let Some(event) = events.next().await {
        match event? {
            kube::api::WatchEvent::Added(w) | kube::api::WatchEvent::Modified(w)
                if w.status.as_ref().is_some_and(|s| !s.conditions.is_empty()) =>
            {
                return Ok(w);
            }
            kube::api::WatchEvent::Error(e) => bail!("watching from {since}: {e:?}"),
            _ => {}
        }
    }
    bail!("no status within {READY_TIMEOUT:?}")
}

pub async fn wait_condition(
    api: &Api<WhatsAppNumber>,
    name: &str,
    type_: &str,
    status: &str,
    reason: &str,
) -> Result<WhatsAppNumber> {
    wait_until(READY_TIMEOUT, &format!("{name} {type_}={status} ({reason})"), || async {
        let w = api.get(name).await?;
        Ok(condition(&w, type_).is_some_and(|c| {
            c.status == status && c.reason == reason && c.observed_generation == w.metadata.generation
        }))
    })
    .await?;
    Ok(api.get(name).await?)
}

pub async fn merge_patch(api: &Api<WhatsAppNumber>, name: &str, patch: Value) -> Result<WhatsAppNumber> {
    Ok(api.patch(name, &PatchParams::default(), &Patch::Merge(&patch)).await?)
}

/// Copies the WhatsAppNumber `name` (same phone number) and its database
/// Secret from `from_ns` into `to_ns` as `new_name`.
pub async fn duplicate(c: &Client, from_ns: &str, name: &str, to_ns: &str, new_name: &str) -> Result<()> {
    let original = wans(c, from_ns).get(name).await?;
    let secret_name = original.spec.database.credentials_secret_ref.name.clone();
    let mut secret = typed::<Secret>(c, from_ns).get(&secret_name).await?;
    secret.metadata = kube::api::ObjectMeta { name: Some(secret_name), ..Default::default() };
    typed::<Secret>(c, to_ns).create(&PostParams::default(), &secret).await?;
    let mut dup = original;
    dup.metadata =
        kube::api::ObjectMeta { name: Some(new_name.into()), namespace: Some(to_ns.into()), ..Default::default() };
    dup.status = None;
    wans(c, to_ns).create(&PostParams::default(), &dup).await?;
    Ok(())
}

pub fn instance(name: &str) -> ListParams {
    ListParams::default().labels(&format!("app.kubernetes.io/instance={name}"))
}

// ---------------------------------------------------------------------------

pub async fn crd_rejects_invalid_input(env: &'static Env) -> Result<()> {
    let ns = namespace(&env.admin, "invalid").await?;
    let api = wans(&env.admin, &ns);
    let valid = json!({
        "apiVersion": "whatsapp.operators.dev/v1alpha1",
        "kind": "WhatsAppNumber",
        "metadata": {"name": "valid"},
        "spec": {
            "phoneNumber": "+15550001111",
            "version": "2.53.2",
            "database": {"engine": "MySQL", "host": "db", "credentialsSecretRef": {"name": "db"}}
        }
    });
    // (what, JSON merge into the valid object, text the error must contain)
    let cases: Vec<(&str, Value, &str)> = vec![
        // The CEL rule's message says what the pattern means.
        ("phone number without +", json!({"spec": {"phoneNumber": "15550001111"}}), "must be in E.164 form"),
        ("phone number with a leading zero", json!({"spec": {"phoneNumber": "+05550001111"}}), "spec.phoneNumber"),
        ("phone number too short", json!({"spec": {"phoneNumber": "+12345"}}), "spec.phoneNumber"),
        ("phone number too long", json!({"spec": {"phoneNumber": "+1234567890123456"}}), "spec.phoneNumber"),
        (
            "progress deadline too short",
            json!({"spec": {"progressDeadlineSeconds": 5}}),
            "spec.progressDeadlineSeconds",
        ),
        ("3 shards", json!({"spec": {"multiconnect": {"shards": 3}}}), "spec.multiconnect.shards"),
        ("negative webapp replicas", json!({"spec": {"webapp": {"replicas": -1}}}), "spec.webapp.replicas"),
        (
            "negative standby coreapps",
            json!({"spec": {"multiconnect": {"standbyCoreapps": -1}}}),
            "spec.multiconnect.standbyCoreapps",
        ),
        ("no masters", json!({"spec": {"multiconnect": {"masters": 0}}}), "spec.multiconnect.masters"),
        ("missing database engine", json!({"spec": {"database": {"engine": null}}}), "spec.database.engine"),
        ("unknown database engine", json!({"spec": {"database": {"engine": "Oracle"}}}), "spec.database.engine"),
        ("database port out of range", json!({"spec": {"database": {"port": 70000}}}), "spec.database.port"),
        ("version that is not a version", json!({"spec": {"version": "latest"}}), "spec.version"),
        ("media size that is not a quantity", json!({"spec": {"media": {"size": "lots"}}}), "spec.media.size"),
        ("media size of zero", json!({"spec": {"media": {"size": "0Gi"}}}), "spec.media.size"),
        (
            "database prefix with a dash",
            json!({"spec": {"database": {"namePrefix": "wa-1"}}}),
            "spec.database.namePrefix",
        ),
        (
            "shard change confirmed for 3 shards",
            json!({"spec": {"multiconnect": {"confirmShardChange": 3}}}),
            "spec.multiconnect.confirmShardChange",
        ),
        (
            "webapp server name with a port",
            json!({"spec": {"webapp": {"serverName": "wa.example.com:8443"}}}),
            "spec.webapp.serverName",
        ),
        (
            "webhook URL that is not http(s)",
            json!({"spec": {"settings": {"webhookUrl": "ftp://x"}}}),
            "spec.settings.webhookUrl",
        ),
        (
            "registration by fax",
            json!({"spec": {"registration": {"secretRef": {"name": "r"}, "method": "fax"}}}),
            "spec.registration.method",
        ),
        (
            "existing claim and storage class together",
            json!({"spec": {"media": {"existingClaim": "a", "storageClassName": "b"}}}),
            "spec.media",
        ),
        (
            "unknown reclaim policy",
            json!({"spec": {"media": {"reclaimPolicy": "Recycle"}}}),
            "spec.media.reclaimPolicy",
        ),
        (
            "missing credentials secret",
            json!({"spec": {"database": {"credentialsSecretRef": null}}}),
            "spec.database.credentialsSecretRef",
        ),
        (
            "backup bucket with capitals",
            json!({"spec": {"backup": {"schedule": "0 3 * * *", "passwordSecretRef": {"name": "p"},
                "objectStore": {"bucket": "Backups", "credentialsSecretRef": {"name": "s3"}}}}}),
            "spec.backup.objectStore.bucket",
        ),
        (
            "backup endpoint that is not http(s)",
            json!({"spec": {"backup": {"schedule": "0 3 * * *", "passwordSecretRef": {"name": "p"},
                "objectStore": {"bucket": "backups", "endpoint": "s3.example.com", "credentialsSecretRef": {"name": "s3"}}}}}),
            "spec.backup.objectStore.endpoint",
        ),
        (
            "restore from both a Secret and an object store",
            json!({"spec": {"restoreFrom": {"secretRef": {"name": "b"}, "passwordSecretRef": {"name": "p"},
                "objectStore": {"bucket": "backups", "key": "k", "credentialsSecretRef": {"name": "s3"}}}}}),
            "exactly one of secretRef and objectStore",
        ),
        (
            "restore from nothing",
            json!({"spec": {"restoreFrom": {"passwordSecretRef": {"name": "p"}}}}),
            "exactly one of secretRef and objectStore",
        ),
        (
            "restore from an object store without a key",
            json!({"spec": {"restoreFrom": {"passwordSecretRef": {"name": "p"},
                "objectStore": {"bucket": "backups", "credentialsSecretRef": {"name": "s3"}}}}}),
            "spec.restoreFrom.objectStore.key",
        ),
        (
            "name too long for child objects",
            json!({"metadata": {"name": "a-name-that-is-far-too-long-for-its-children-x"}}),
            "metadata.name",
        ),
    ];
    let mut failures = Vec::new();
    for (i, (what, patch, field)) in cases.iter().enumerate() {
        let mut obj = valid.clone();
        json_patch::merge(&mut obj, patch);
        if obj["metadata"]["name"] == "valid" {
            obj["metadata"]["name"] = json!(format!("invalid-{i}"));
        }
        let wan: WhatsAppNumber = match serde_json::from_value(obj.clone()) {
            Ok(w) => w,
            // Some cases cannot even be expressed in the Rust type; send them raw.
            Err(_) => {
                let raw: Api<kube::api::DynamicObject> =
                    Api::namespaced_with(env.admin.clone(), &ns, &kube::api::ApiResource::erase::<WhatsAppNumber>(&()));
                let dynamic: kube::api::DynamicObject = serde_json::from_value(obj)?;
                match raw.create(&PostParams::default(), &dynamic).await {
                    Ok(_) => failures.push(format!("{what}: accepted")),
                    Err(kube::Error::Api(s)) if s.code == 422 && s.message.contains(field) => {}
                    Err(e) => failures.push(format!("{what}: unexpected error {e}")),
                }
                continue;
            }
        };
        match api.create(&PostParams::default(), &wan).await {
            Ok(_) => failures.push(format!("{what}: accepted")),
            Err(kube::Error::Api(s)) if s.code == 422 && s.message.contains(field) => {}
            Err(e) => failures.push(format!("{what}: expected a 422 naming {field}, got {e}")),
        }
    }

    // Changing the phone number of an existing object.
    let w: WhatsAppNumber = serde_json::from_value(valid.clone())?;
    api.create(&PostParams::default(), &w).await?;
    match merge_patch(&api, "valid", json!({"spec": {"phoneNumber": "+15550009999"}})).await {
        Ok(_) => failures.push("changing phoneNumber: accepted".into()),
        Err(e) => {
            let text = format!("{e:#}");
            if !(text.contains("spec.phoneNumber") && text.contains("immutable")) {
                failures.push(format!("changing phoneNumber: unexpected error {text}"));
            }
        }
    }
    // Moving the number to another database server in place.
    for (what, database) in
        [("host", json!({"host": "db2"})), ("port", json!({"port": 3307})), ("engine", json!({"engine": "PostgreSQL"}))]
    {
        match merge_patch(&api, "valid", json!({"spec": {"database": database}})).await {
            Ok(_) => failures.push(format!("changing database.{what}: accepted")),
            Err(e) => {
                let text = format!("{e:#}");
                if !(text.contains("spec.database") && text.contains("immutable")) {
                    failures.push(format!("changing database.{what}: unexpected error {text}"));
                }
            }
        }
    }
    // The port the server had by default, now written out, is the same server.
    merge_patch(&api, "valid", json!({"spec": {"database": {"port": 3306}}})).await?;
    // Defaults are applied by the API server, so `kubectl get -o yaml` shows
    // them; and a restore that names only the backup Secret reads the key the
    // operator's backups use. Sent untyped (the Rust type would fill both in
    // itself), so the API server's defaults are what the object gets.
    let raw: Api<kube::api::DynamicObject> =
        Api::namespaced_with(env.admin.clone(), &ns, &kube::api::ApiResource::erase::<WhatsAppNumber>(&()));
    let mut restoring = valid.clone();
    restoring["metadata"]["name"] = json!("restoring");
    restoring["spec"]["phoneNumber"] = json!("+15550008888");
    restoring["spec"]["restoreFrom"] =
        json!({"secretRef": {"name": "old-backup"}, "passwordSecretRef": {"name": "backup-password"}});
    let created = raw.create(&PostParams::default(), &serde_json::from_value(restoring)?).await?;
    ensure!(
        created.data.pointer("/spec/restoreFrom/secretRef/key") == Some(&json!("backup")),
        "restoreFrom.secretRef.key defaults to backup: {:?}",
        created.data.pointer("/spec/restoreFrom")
    );
    for (pointer, default) in [("/spec/multiconnect/shards", json!(1)), ("/spec/webapp/replicas", json!(2))] {
        ensure!(created.data.pointer(pointer) == Some(&default), "{pointer} defaults to {default}: {:?}", created.data);
    }

    support::delete_namespace(&env.admin, &ns).await;
    ensure!(failures.is_empty(), "invalid objects not rejected as expected:\n{}", failures.join("\n"));
    Ok(())
}

pub async fn ha_example_reconciles(env: &'static Env) -> Result<()> {
    let c = &env.admin;
    let ns = namespace(c, "ha").await?;
    // Every version of the object from its creation on, in order.
    let since = wans(c, &ns).list_metadata(&ListParams::default()).await?.metadata.resource_version;
    let name = apply_example(c, &ns, "ha-mysql.yaml", None).await?;
    let first = first_status(&wans(c, &ns), &since.unwrap_or_default()).await?;
    // The first status a watcher sees says the number is being deployed,
    // before anything of its children is observed (kstatus: in progress).
    let generation = first.metadata.generation;
    for (type_, status) in [("Ready", "False"), ("Progressing", "True"), ("Reconciling", "True")] {
        let found = condition(&first, type_).ok_or_else(|| anyhow!("no {type_} in the first status"))?;
        ensure!(
            found.status == status && found.reason == "Deploying" && found.observed_generation == generation,
            "first {type_}: {found:?}"
        );
    }
    let shown = first.status.clone().unwrap_or_default();
    ensure!(shown.observed_generation == generation, "first status observed {:?}", shown.observed_generation);
    ensure!(shown.database_name_prefix.is_some(), "the database prefix is recorded from the start");
    ensure!(shown.ready_pods.is_none() && shown.media_claim.is_none(), "nothing observed yet: {shown:?}");
    let wan = wait_ready(&wans(c, &ns), &name).await?;
    let status = wan.status.clone().unwrap();
    ensure!(status.ready_pods.as_deref() == Some("6/6"), "ready pods: {:?}", status.ready_pods);
    ensure!(status.current_version.as_deref() == Some("2.53.2"));

    let sts = typed::<StatefulSet>(c, &ns);
    let masters = sts.get(&format!("{name}-master")).await?;
    let coreapps = sts.get(&format!("{name}-coreapp")).await?;
    ensure!(masters.spec.as_ref().unwrap().replicas == Some(2), "2 masters");
    ensure!(coreapps.spec.as_ref().unwrap().replicas == Some(2), "1 shard + 1 standby");
    let master_env = masters.spec.unwrap().template.spec.unwrap().containers[0].env.clone().unwrap();
    ensure!(master_env.iter().any(|e| e.name == "WA_MASTER_NODE" && e.value.as_deref() == Some("1")));
    let web = typed::<Deployment>(c, &ns).get(&format!("{name}-webapp")).await?;
    ensure!(web.spec.as_ref().unwrap().replicas == Some(2));

    let svcs = typed::<Service>(c, &ns);
    for tier in ["master", "coreapp"] {
        let s = svcs.get(&format!("{name}-{tier}")).await?.spec.unwrap();
        ensure!(s.cluster_ip.as_deref() == Some("None"), "{tier} service is headless");
        ensure!(s.ports.unwrap().iter().map(|p| p.port).collect::<Vec<_>>() == vec![6250, 6251, 6252, 6253]);
    }
    ensure!(svcs.get(&format!("{name}-webapp")).await?.spec.unwrap().ports.unwrap()[0].port == 443);

    let cm = typed::<ConfigMap>(c, &ns).get(&format!("{name}-config")).await?.data.unwrap();
    ensure!(cm["WA_DB_ENGINE"] == "MYSQL" && cm["WA_DB_PORT"] == "3306" && cm["WA_APP_MULTICONNECT"] == "1");
    let keys = typed::<Secret>(c, &ns).get(&format!("{name}-keys")).await?.data.unwrap();
    ensure!(keys.contains_key("WA_API_KEY") && keys.contains_key("WA_WEB_JWT_CRYPTO_KEY"));

    let pvc = typed::<PersistentVolumeClaim>(c, &ns).get(&format!("{name}-media")).await?;
    ensure!(pvc.metadata.owner_references.is_none(), "a retained claim has no owner");
    wait_until(Duration::from_secs(30), "the media claim to be Bound", || async {
        Ok(typed::<PersistentVolumeClaim>(c, &ns)
            .get(&format!("{name}-media"))
            .await?
            .status
            .and_then(|s| s.phase)
            .as_deref()
            == Some("Bound"))
    })
    .await?;

    // The first deployment created the databases with the schema Job first.
    let job = typed::<k8s_openapi::api::batch::v1::Job>(c, &ns).get(&format!("{name}-schema-2-53-2")).await?;
    ensure!(job.status.and_then(|s| s.succeeded) == Some(1), "the schema Job ran to its end");
    // Each workload was written once, after the schema Job: created running,
    // never created stopped and started.
    for tier in ["master", "coreapp"] {
        let generation = typed::<StatefulSet>(c, &ns).get(&format!("{name}-{tier}")).await?.metadata.generation;
        ensure!(generation == Some(1), "{tier}s written once, generation {generation:?}");
    }
    let generation = typed::<Deployment>(c, &ns).get(&format!("{name}-webapp")).await?.metadata.generation;
    ensure!(generation == Some(1), "webapps written once, generation {generation:?}");
    let tiers = ListParams::default()
        .labels(&format!("app.kubernetes.io/instance={name},app.kubernetes.io/component in (master,coreapp,webapp)"));
    let pods = typed::<Pod>(c, &ns).list(&tiers).await?.items;
    let ready = pods
        .iter()
        .filter(|p| {
            p.status
                .as_ref()
                .and_then(|s| s.conditions.as_ref())
                .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
        })
        .count();
    ensure!(ready == 6, "6 ready pods, found {ready} of {}", pods.len());
    let nodes: std::collections::BTreeSet<_> = pods
        .iter()
        .filter(|p| p.labels().get("app.kubernetes.io/component").map(String::as_str) == Some("coreapp"))
        .filter_map(|p| p.spec.as_ref()?.node_name.clone())
        .collect();
    ensure!(nodes.len() == 2, "coreapps spread over nodes by anti-affinity: {nodes:?}");
    let budgets = typed::<PodDisruptionBudget>(c, &ns).list(&instance(&name)).await?.items;
    ensure!(budgets.len() == 3, "a budget per tier, found {}", budgets.len());

    support::delete_namespace(c, &ns).await;
    Ok(())
}

pub async fn multiconnect_example_reconciles(env: &'static Env) -> Result<()> {
    let c = &env.admin;
    let ns = namespace(c, "mc").await?;
    let name = apply_example(c, &ns, "multiconnect-postgresql.yaml", None).await?;
    let wan = wait_ready(&wans(c, &ns), &name).await?;
    ensure!(wan.status.unwrap().ready_pods.as_deref() == Some("10/10"), "2 masters + 5 coreapps + 3 webapps");
    let coreapps = typed::<StatefulSet>(c, &ns).get(&format!("{name}-coreapp")).await?;
    ensure!(coreapps.spec.as_ref().unwrap().replicas == Some(5), "4 shards + 1 standby");
    let container = &coreapps.spec.unwrap().template.spec.unwrap().containers[0];
    let pw = container.env.as_ref().unwrap().iter().find(|e| e.name == "WA_DB_PASSWORD").unwrap();
    ensure!(pw.value_from.as_ref().unwrap().secret_key_ref.as_ref().unwrap().key == "pass", "custom password key");
    ensure!(container.resources.as_ref().unwrap().limits.as_ref().unwrap()["memory"].0 == "8Gi");
    let cm = typed::<ConfigMap>(c, &ns).get(&format!("{name}-config")).await?.data.unwrap();
    ensure!(cm["WA_DB_ENGINE"] == "PGSQL" && cm["WA_DB_PORT"] == "5432");
    ensure!(!cm.contains_key("WA_DB_CONNECTION_IDLE_TIMEOUT"), "the client reads it for MySQL only");
    ensure!(cm["WA_DB_NAME_PREFIX"].starts_with("wa1556"), "a prefix of its own: {}", cm["WA_DB_NAME_PREFIX"]);
    let command = container.command.clone().unwrap_or_default();
    ensure!(command.first().is_some_and(|c| c.ends_with("/wait_on_postgres.sh")), "{command:?}");
    support::delete_namespace(c, &ns).await;
    Ok(())
}

pub async fn spec_change_shows_progressing_then_ready(env: &'static Env) -> Result<()> {
    let c = &env.admin;
    let ns = namespace(c, "change").await?;
    let name = apply_example(c, &ns, "ha-mysql.yaml", None).await?;
    let api = wans(c, &ns);
    wait_ready(&api, &name).await?;

    // Record every status the operator writes from here on.
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let watch = watcher(api.clone(), watcher::Config::default().fields(&format!("metadata.name={name}")))
        .applied_objects()
        .for_each(move |w| {
            if let Ok(w) = w {
                let _ = tx.send(w);
            }
            futures::future::ready(())
        });
    let watch = tokio::spawn(watch);
    tokio::time::sleep(Duration::from_millis(500)).await;

    for (patch, webapps, coreapps) in
        [(json!({"spec": {"webapp": {"replicas": 3}}}), 3, 2), (json!({"spec": {"multiconnect": {"shards": 2}}}), 3, 3)]
    {
        let generation = merge_patch(&api, &name, patch).await?.metadata.generation;
        let done = wait_ready(&api, &name).await?;
        ensure!(done.metadata.generation == generation);
        let mut saw_progressing = false;
        while let Ok(w) = rx.try_recv() {
            if w.metadata.generation == generation
                && condition(&w, "Progressing")
                    .is_some_and(|c| c.status == "True" && c.observed_generation == generation)
            {
                saw_progressing = true;
            }
            // Ready=True for this generation only in a status that has
            // reconciled it.
            let ready_claimed = condition(&w, "Ready")
                .is_some_and(|c| c.status == "True" && c.observed_generation == w.metadata.generation);
            ensure!(
                !ready_claimed || w.status.as_ref().and_then(|s| s.observed_generation) == w.metadata.generation,
                "Ready=True claimed for generation {:?} in a status of generation {:?}",
                w.metadata.generation,
                w.status.as_ref().and_then(|s| s.observed_generation)
            );
        }
        ensure!(saw_progressing, "Progressing=True was never written for generation {generation:?}");
        let status = done.status.unwrap();
        ensure!(status.webapps.unwrap().desired == webapps && status.coreapps.unwrap().desired == coreapps);
    }
    watch.abort();
    support::delete_namespace(c, &ns).await;
    Ok(())
}

pub async fn obsolete_children_are_removed(env: &'static Env) -> Result<()> {
    let c = &env.admin;
    let ns = namespace(c, "prune").await?;
    let name = apply_example(c, &ns, "ha-mysql.yaml", None).await?;
    let api = wans(c, &ns);
    wait_ready(&api, &name).await?;
    let budgets = typed::<PodDisruptionBudget>(c, &ns);
    ensure!(budgets.get_opt(&format!("{name}-webapp")).await?.is_some());
    merge_patch(&api, &name, json!({"spec": {"webapp": {"replicas": 1}, "multiconnect": {"masters": 1}}})).await?;
    wait_ready(&api, &name).await?;
    wait_until(Duration::from_secs(30), "single-pod tiers to lose their budgets", || async {
        let left: Vec<String> = budgets.list(&instance(&name)).await?.items.iter().map(|b| b.name_any()).collect();
        Ok(left == vec![format!("{name}-coreapp")])
    })
    .await?;
    support::delete_namespace(c, &ns).await;
    Ok(())
}

pub async fn deleting_keeps_retained_media_only(env: &'static Env) -> Result<()> {
    let c = &env.admin;
    let ns = namespace(c, "delete").await?;
    let retained = apply_example(c, &ns, "ha-mysql.yaml", None).await?;
    let api = wans(c, &ns);
    wait_ready(&api, &retained).await?;

    // A second number in the same namespace whose claim goes with it.
    let mut deleted: WhatsAppNumber = api.get(&retained).await?;
    deleted.metadata = kube::api::ObjectMeta { name: Some("media-delete".into()), ..Default::default() };
    deleted.spec.phone_number = unique_number();
    deleted.spec.media.reclaim_policy = whatsapp_operator::api::ReclaimPolicy::Delete;
    deleted.status = None;
    api.create(&PostParams::default(), &deleted).await?;
    wait_ready(&api, "media-delete").await?;

    for name in [retained.as_str(), "media-delete"] {
        api.delete(name, &DeleteParams::default()).await?;
    }
    let claims = typed::<PersistentVolumeClaim>(c, &ns);
    for name in [retained.as_str(), "media-delete"] {
        wait_until(Duration::from_secs(60), &format!("the children of {name} to be garbage-collected"), || async {
            let sts = typed::<StatefulSet>(c, &ns).list(&instance(name)).await?.items.len();
            let deploy = typed::<Deployment>(c, &ns).list(&instance(name)).await?.items.len();
            let svc = typed::<Service>(c, &ns).list(&instance(name)).await?.items.len();
            let cm = typed::<ConfigMap>(c, &ns).list(&instance(name)).await?.items.len();
            let secrets = typed::<Secret>(c, &ns).list(&instance(name)).await?.items.len();
            let pdb = typed::<PodDisruptionBudget>(c, &ns).list(&instance(name)).await?.items.len();
            Ok(sts + deploy + svc + cm + secrets + pdb == 0)
        })
        .await?;
    }
    wait_until(Duration::from_secs(60), "the Delete-policy claim to go", || async {
        Ok(claims.get_opt("media-delete-media").await?.is_none())
    })
    .await?;
    let kept = claims.get_opt(&format!("{retained}-media")).await?;
    ensure!(
        kept.is_some_and(|k| k.metadata.deletion_timestamp.is_none()),
        "the Retain claim survives its WhatsAppNumber"
    );
    support::delete_namespace(c, &ns).await;
    Ok(())
}

pub async fn missing_secret_then_ready(env: &'static Env) -> Result<()> {
    let c = &env.admin;
    let ns = namespace(c, "secret").await?;
    let name = apply_example(c, &ns, "ha-mysql.yaml", Some("WhatsAppNumber")).await?;
    let api = wans(c, &ns);
    let w = wait_condition(&api, &name, "Ready", "False", "SecretNotFound").await?;
    let message = &condition(&w, "Degraded").unwrap().message;
    ensure!(message.contains("ha-mysql-db") && condition(&w, "Degraded").unwrap().status == "True", "{message}");
    ensure!(
        typed::<StatefulSet>(c, &ns).list(&instance(&name)).await?.items.is_empty(),
        "nothing is deployed while blocked"
    );

    // The Secret appears: its own watch event wakes the reconcile, rather than
    // the retry of a blocked object.
    apply_example(c, &ns, "ha-mysql.yaml", Some("Secret")).await?;
    wait_ready(&api, &name).await?;
    let woken = format!("related object updated: Secret.v1./ha-mysql-db.{ns}");
    ensure!(env.operator_log().contains(&woken), "no reconcile was woken by the Secret (no \"{woken}\" in the log)");

    // Deleted under the running number: the reconcile is held, nothing it
    // runs is touched, and what it cannot look at again stands.
    let running = api.get(&name).await?;
    let secrets: Api<Secret> = typed(c, &ns);
    secrets.delete("ha-mysql-db", &DeleteParams::default()).await?;
    let held = wait_condition(&api, &name, "Stalled", "True", "SecretNotFound").await?;
    ensure!(condition(&held, "Ready").is_some_and(|c| c.reason == "SecretNotFound"), "{:?}", condition(&held, "Ready"));
    for type_ in ["BuildExpiring", "BuildExpired", "ReleaseCatalogValid"] {
        ensure!(
            condition(&held, type_) == condition(&running, type_) && condition(&held, type_).is_some(),
            "{type_} changed while held: {:?} -> {:?}",
            condition(&running, type_),
            condition(&held, type_)
        );
    }
    let sets = typed::<StatefulSet>(c, &ns).list(&instance(&name)).await?.items;
    ensure!(sets.len() == 2, "the masters and coreapps keep running: {} StatefulSets", sets.len());
    apply_example(c, &ns, "ha-mysql.yaml", Some("Secret")).await?;
    wait_ready(&api, &name).await?;

    // The health probe's CA named but missing, then without its key: held
    // the same way, each with what to put where.
    let ca = json!({"spec": {"health": {"caSecretRef": {"name": "probe-ca", "key": "ca.crt"}}}});
    api.patch(&name, &PatchParams::default(), &Patch::Merge(&ca)).await?;
    let held = wait_condition(&api, &name, "Stalled", "True", "SecretNotFound").await?;
    let message = &condition(&held, "Stalled").unwrap().message;
    ensure!(message.contains("spec.health.caSecretRef") && message.contains("probe-ca"), "{message}");
    let keyless = json!({"metadata": {"name": "probe-ca"}, "stringData": {"ca.pem": "not the key asked for"}});
    secrets.create(&PostParams::default(), &serde_json::from_value(keyless)?).await?;
    let held = wait_condition(&api, &name, "Stalled", "True", "SecretKeyMissing").await?;
    let message = &condition(&held, "Stalled").unwrap().message;
    ensure!(message.contains("ca.crt"), "the missing key is named: {message}");
    let sets = typed::<StatefulSet>(c, &ns).list(&instance(&name)).await?.items;
    ensure!(sets.len() == 2, "held, the nodes keep running: {} StatefulSets", sets.len());
    let unset = json!({"spec": {"health": {"caSecretRef": null}}});
    api.patch(&name, &PatchParams::default(), &Patch::Merge(&unset)).await?;
    wait_ready(&api, &name).await?;
    support::delete_namespace(c, &ns).await;
    Ok(())
}

/// Sets a pod's `Ready` condition, as its kubelet does when a readiness
/// probe starts or stops failing (the fake nodes leave it as set).
async fn set_pod_ready(c: &Client, ns: &str, pod: &str, ready: bool) -> Result<()> {
    let pods: Api<Pod> = typed(c, ns);
    let current = pods.get_status(pod).await?;
    let mut conditions = current.status.and_then(|s| s.conditions).unwrap_or_default();
    for condition in conditions.iter_mut().filter(|c| c.type_ == "Ready" || c.type_ == "ContainersReady") {
        condition.status = if ready { "True" } else { "False" }.into();
    }
    let patch = json!({"status": {"conditions": conditions}});
    pods.patch_status(pod, &PatchParams::default(), &Patch::Strategic(&patch)).await?;
    Ok(())
}

/// Puts a pod's container into a crash loop, as its kubelet reports one
/// (waiting `CrashLoopBackOff`, the last run ended with exit code 1), or back
/// to running.
async fn set_pod_crashing(c: &Client, ns: &str, pod: &str, crashing: bool) -> Result<()> {
    let pods: Api<Pod> = typed(c, ns);
    let current = pods.get_status(pod).await?;
    let mut statuses = current.status.and_then(|s| s.container_statuses).unwrap_or_default();
    ensure!(!statuses.is_empty(), "{pod} has no container status to change");
    for status in &mut statuses {
        let state = if crashing {
            json!({"waiting": {"reason": "CrashLoopBackOff", "message": "back-off 20s restarting failed container"}})
        } else {
            json!({"running": {"startedAt": jiff::Timestamp::now().to_string()}})
        };
        status.state = Some(serde_json::from_value(state)?);
        status.last_state = crashing.then(|| {
            serde_json::from_value(json!({"terminated": {"exitCode": 1, "reason": "Error"}})).expect("a state")
        });
        status.ready = !crashing;
    }
    let patch = json!({"status": {"containerStatuses": statuses}});
    pods.patch_status(pod, &PatchParams::default(), &Patch::Strategic(&patch)).await?;
    set_pod_ready(c, ns, pod, !crashing).await
}

/// A coreapp of a fully rolled-out number stops being ready (a lost
/// database, a crashing process): that is an outage, `Degraded`, not a
/// rollout in progress; once the pod is ready again the number is `Ready`.
pub async fn a_running_numbers_lost_pod_is_an_outage_not_progress(env: &'static Env) -> Result<()> {
    let c = &env.admin;
    let ns = namespace(c, "outage").await?;
    let name = apply_example(c, &ns, "ha-mysql.yaml", None).await?;
    let api = wans(c, &ns);
    let ready = wait_ready(&api, &name).await?;
    let generation = ready.metadata.generation;

    let pod = format!("{name}-coreapp-0");
    set_pod_ready(c, &ns, &pod, false).await?;
    let w = wait_condition(&api, &name, "Degraded", "True", "PodsNotReady").await?;
    let state = |w: &WhatsAppNumber, type_: &str| {
        condition(w, type_).map(|c| (c.status.to_string(), c.reason.to_string())).unwrap_or_default()
    };
    ensure!(state(&w, "Ready") == ("False".into(), "PodsNotReady".into()), "{:?}", condition(&w, "Ready"));
    ensure!(
        state(&w, "Progressing") == ("False".into(), "Reconciled".into()),
        "an outage is not progress: {:?}",
        condition(&w, "Progressing")
    );
    ensure!(state(&w, "Stalled").0 == "False", "pods may come back by themselves: {:?}", condition(&w, "Stalled"));
    ensure!(w.metadata.generation == generation, "nothing in the spec changed");
    let message = &condition(&w, "Degraded").unwrap().message;
    ensure!(message.contains("coreapps 1/2 ready"), "{message}");

    // Its container crashing: the message names the pod and why.
    support::fault("a coreapp in a crash loop");
    set_pod_crashing(c, &ns, &pod, true).await?;
    let told = format!("not running: {pod} (restarting, last exit code 1)");
    wait_until(Duration::from_secs(60), "Degraded naming the crash loop", || async {
        let w = api.get(&name).await?;
        Ok(condition(&w, "Degraded").is_some_and(|c| c.status == "True" && c.message.contains(&told)))
    })
    .await?;

    set_pod_crashing(c, &ns, &pod, false).await?;
    let w = wait_ready(&api, &name).await?;
    ensure!(state(&w, "Degraded").0 == "False", "{:?}", condition(&w, "Degraded"));
    let message = &condition(&w, "Ready").unwrap().message;
    ensure!(!message.contains("not running"), "{message}");

    // A webapp crashing: named the same way.
    let pods: Api<Pod> = typed(c, &ns);
    let selector = format!("app.kubernetes.io/instance={name},app.kubernetes.io/component=webapp");
    let webapps = pods.list(&ListParams::default().labels(&selector)).await?;
    let webapp = webapps.items.first().map(|p| p.name_any()).context("a webapp pod")?;
    set_pod_crashing(c, &ns, &webapp, true).await?;
    let told = format!("not running: {webapp} (restarting, last exit code 1)");
    wait_until(Duration::from_secs(60), "Degraded naming the webapp's crash loop", || async {
        let w = api.get(&name).await?;
        Ok(condition(&w, "Degraded").is_some_and(|c| c.status == "True" && c.message.contains(&told)))
    })
    .await?;
    set_pod_crashing(c, &ns, &webapp, false).await?;
    let w = wait_ready(&api, &name).await?;
    let message = &condition(&w, "Ready").unwrap().message;
    ensure!(!message.contains("not running"), "{message}");
    support::delete_namespace(c, &ns).await;
    Ok(())
}

/// A rollout whose new webapp pod can never be scheduled: after
/// `spec.progressDeadlineSeconds` without a pod moving the number is
/// reported failed (`Stalled`, which kstatus and Argo CD read as failed);
/// once the cause is fixed the rollout ends and the number is `Ready`.
pub async fn a_rollout_that_stops_moving_fails_at_its_deadline(env: &'static Env) -> Result<()> {
    let c = &env.admin;
    let ns = namespace(c, "deadline").await?;
    let name =
        apply_example_with(c, &ns, "ha-mysql.yaml", None, &unique_number(), &json!({"progressDeadlineSeconds": 60}))
            .await?;
    let api = wans(c, &ns);
    wait_ready(&api, &name).await?;

    let nowhere = json!({"whatsapp.operators.dev/test-nowhere": "true"});
    let changed = merge_patch(&api, &name, json!({"spec": {"webapp": {"nodeSelector": nowhere}}})).await?;
    let generation = changed.metadata.generation;
    let rolling = wait_condition(&api, &name, "Progressing", "True", "RollingOut").await?;
    let began = rolling.status.as_ref().and_then(|s| s.last_progress_time.clone()).context("lastProgressTime")?;

    let w = wait_condition(&api, &name, "Stalled", "True", "ProgressDeadlineExceeded").await?;
    let status = w.status.clone().unwrap_or_default();
    ensure!(status.observed_generation == generation);
    let last = status.last_progress_time.clone().context("lastProgressTime kept")?;
    let progressing = condition(&w, "Progressing").unwrap();
    ensure!(progressing.status == "False" && progressing.reason == "ProgressDeadlineExceeded", "{progressing:?}");
    ensure!(condition(&w, "Degraded").is_some_and(|c| c.status == "True"), "{:?}", condition(&w, "Degraded"));
    ensure!(condition(&w, "Ready").is_some_and(|c| c.reason == "RollingOut"), "{:?}", condition(&w, "Ready"));
    let stalled_at = condition(&w, "Stalled").unwrap().last_transition_time.0;
    ensure!(
        stalled_at.duration_since(last.0).as_secs() >= 60 && last.0 >= began.0,
        "failed at {stalled_at}, {}s after the rollout last moved at {}",
        stalled_at.duration_since(last.0).as_secs(),
        last.0
    );

    merge_patch(&api, &name, json!({"spec": {"webapp": {"nodeSelector": null}}})).await?;
    let w = wait_ready(&api, &name).await?;
    for type_ in ["Stalled", "Degraded"] {
        ensure!(condition(&w, type_).is_some_and(|c| c.status == "False"), "{:?}", condition(&w, type_));
    }
    ensure!(w.status.unwrap_or_default().last_progress_time.is_none(), "no rollout, no deadline");
    support::delete_namespace(c, &ns).await;
    Ok(())
}

/// Two numbers on the same databases: the younger is held by
/// `DatabaseInUse` and starts once the older is deleted, woken by that
/// deletion rather than by its own retry.
pub async fn a_number_held_by_its_database_starts_once_the_holder_goes(env: &'static Env) -> Result<()> {
    let c = &env.admin;
    let shared = json!({"database": {"namePrefix": format!("s{}", std::process::id() % 100_000)}});
    let first_ns = namespace(c, "dbfirst").await?;
    let first = apply_example_with(c, &first_ns, "ha-mysql.yaml", None, &unique_number(), &shared).await?;
    wait_ready(&wans(c, &first_ns), &first).await?;
    let second_ns = namespace(c, "dbsecond").await?;
    let second = apply_example_with(c, &second_ns, "ha-mysql.yaml", None, &unique_number(), &shared).await?;
    let api = wans(c, &second_ns);
    let held = wait_condition(&api, &second, "Stalled", "True", "DatabaseInUse").await?;
    let message = &condition(&held, "Ready").unwrap().message;
    ensure!(message.contains(&format!("{first_ns}/{first}")), "names the holder: {message}");
    ensure!(
        typed::<StatefulSet>(c, &second_ns).list(&instance(&second)).await?.items.is_empty(),
        "nothing of the second starts on the first's databases"
    );

    wans(c, &first_ns).delete(&first, &DeleteParams::default()).await?;
    wait_ready(&api, &second).await?;
    let woken = format!("related object updated: WhatsAppNumber.v1alpha1.whatsapp.operators.dev/{first}.{first_ns}");
    ensure!(env.operator_log().contains(&woken), "the deletion woke no reconcile (no \"{woken}\" in the log)");
    support::delete_namespace(c, &first_ns).await;
    support::delete_namespace(c, &second_ns).await;
    Ok(())
}

pub async fn generated_keys_survive_reconciles(env: &'static Env) -> Result<()> {
    let c = &env.admin;
    let ns = namespace(c, "keys").await?;
    let name = apply_example(c, &ns, "ha-mysql.yaml", None).await?;
    let api = wans(c, &ns);
    wait_ready(&api, &name).await?;
    let secrets = typed::<Secret>(c, &ns);
    let keys_name = format!("{name}-keys");
    let before = secrets.get(&keys_name).await?.data.unwrap();
    merge_patch(&api, &name, json!({"spec": {"webapp": {"replicas": 3}}})).await?;
    wait_ready(&api, &name).await?;
    ensure!(secrets.get(&keys_name).await?.data.unwrap() == before, "keys unchanged by a reconcile");

    // Someone removes one key: it is filled in, the other stays.
    secrets
        .patch(
            &keys_name,
            &PatchParams::default(),
            &Patch::Json::<()>(serde_json::from_value(
                json!([{"op": "remove", "path": "/data/WA_WEB_JWT_CRYPTO_KEY"}]),
            )?),
        )
        .await?;
    wait_until(Duration::from_secs(30), "the missing key to be filled in", || async {
        Ok(secrets.get(&keys_name).await?.data.unwrap_or_default().contains_key("WA_WEB_JWT_CRYPTO_KEY"))
    })
    .await?;
    let after: BTreeMap<_, _> = secrets.get(&keys_name).await?.data.unwrap();
    ensure!(after["WA_API_KEY"] == before["WA_API_KEY"], "the API key is never rotated silently");
    support::delete_namespace(c, &ns).await;
    Ok(())
}

pub async fn operator_killed_mid_reconcile_converges(env: &'static Env) -> Result<()> {
    let c = &env.admin;
    let ns = namespace(c, "restart").await?;
    let api = wans(c, &ns);
    apply_example(c, &ns, "ha-mysql.yaml", Some("Secret")).await?;
    let template: WhatsAppNumber = {
        let text = std::fs::read_to_string(support::repo().join("examples/ha-mysql.yaml"))?;
        let doc = text.split("\n---\n").nth(1).ok_or_else(|| anyhow!("example layout"))?;
        serde_saphyr::from_str(doc)?
    };
    for (i, delay_ms) in [0u64, 150, 400, 900].into_iter().enumerate() {
        let name = format!("restart-{i}");
        let mut w = template.clone();
        w.metadata.name = Some(name.clone());
        w.metadata.namespace = Some(ns.clone());
        w.spec.phone_number = unique_number();
        w.spec.health.enabled = false;
        api.create(&PostParams::default(), &w).await?;
        tokio::time::sleep(Duration::from_millis(delay_ms)).await;
        {
            let mut op = env.operator.lock().unwrap();
            op.kill();
            support::fault("the operator killed in the middle of a reconcile");
            op.restart()?;
        }
        wait_ready(&api, &name).await?;
        let sts = typed::<StatefulSet>(c, &ns).list(&instance(&name)).await?.items.len();
        let deploy = typed::<Deployment>(c, &ns).list(&instance(&name)).await?.items.len();
        let keys = typed::<Secret>(c, &ns).list(&instance(&name)).await?.items.len();
        let claims = typed::<PersistentVolumeClaim>(c, &ns).list(&instance(&name)).await?.items.len();
        ensure!(
            (sts, deploy, keys, claims) == (2, 1, 1, 1),
            "after a kill at {delay_ms} ms: {sts} sts, {deploy} deploy, {keys} key secrets, {claims} claims"
        );
    }
    support::delete_namespace(c, &ns).await;
    Ok(())
}

pub async fn only_the_leader_writes(env: &'static Env) -> Result<()> {
    let c = &env.admin;
    let ns = namespace(c, "leader").await?;
    // The first replica leads before the second starts (run alone, the suite
    // may only just have started it).
    wait_until(Duration::from_secs(30), "the first replica to lead", || async {
        Ok(support::metric_sum(&env.operator_metrics().await?, "whatsapp_operator_leader") == 1.0)
    })
    .await?;
    let mut standby = Operator::start("standby", &env.operator_kubeconfig, &[])?;
    wait_until(Duration::from_secs(20), "the standby's metrics endpoint", || async {
        Ok(standby.metrics().await.is_ok())
    })
    .await?;
    let leader_gauge = |text: &str| support::metric_sum(text, "whatsapp_operator_leader");

    let name = apply_example(c, &ns, "ha-mysql.yaml", None).await?;
    let api = wans(c, &ns);
    wait_ready(&api, &name).await?;
    let standby_metrics = standby.metrics().await?;
    ensure!(leader_gauge(&standby_metrics) == 0.0, "the standby does not lead");
    ensure!(
        support::metric_sum(&standby_metrics, "whatsapp_operator_kube_writes_total") == 0.0,
        "the standby wrote:\n{standby_metrics}"
    );
    ensure!(
        support::metric_sum(&standby_metrics, "whatsapp_operator_reconciles_total") == 0.0,
        "the standby reconciled"
    );
    let main_metrics = env.operator_metrics().await?;
    ensure!(leader_gauge(&main_metrics) == 1.0, "the first replica leads");

    // The leader dies without releasing its lease: the standby takes over once it expires.
    env.operator.lock().unwrap().kill();
    support::fault("the leading operator killed");
    wait_until(Duration::from_secs(45), "the standby to take the lease", || async {
        Ok(leader_gauge(&standby.metrics().await?) == 1.0)
    })
    .await?;
    merge_patch(&api, &name, json!({"spec": {"webapp": {"replicas": 3}}})).await?;
    wait_ready(&api, &name).await?;
    ensure!(support::metric_sum(&standby.metrics().await?, "whatsapp_operator_reconciles_total") > 0.0);

    // A graceful stop releases the lease, so the restarted replica leads at once.
    standby.stop();
    env.operator.lock().unwrap().restart()?;
    wait_until(Duration::from_secs(20), "the restarted replica to lead", || async {
        let m = env.operator.lock().unwrap().metrics_port;
        let text = reqwest::get(format!("http://127.0.0.1:{m}/metrics")).await?.text().await?;
        Ok(leader_gauge(&text) == 1.0)
    })
    .await?;
    support::delete_namespace(c, &ns).await;
    Ok(())
}

pub async fn unchanged_reconcile_writes_nothing(env: &'static Env) -> Result<()> {
    let c = &env.admin;
    let ns = namespace(c, "noop").await?;
    let name = apply_example(c, &ns, "ha-mysql.yaml", None).await?;
    let api = wans(c, &ns);
    wait_ready(&api, &name).await?;
    let port = env.operator.lock().unwrap().metrics_port;
    let scrape = || async move {
        let text = reqwest::get(format!("http://127.0.0.1:{port}/metrics")).await?.text().await?;
        anyhow::Ok((
            support::metric_sum(&text, "whatsapp_operator_kube_writes_total"),
            support::metric_sum(&text, "whatsapp_operator_reconciles_total"),
        ))
    };
    // The metrics count the whole operator's writes: wait until the namespaces
    // of earlier scenarios are gone (their objects write while they wind down),
    // then until nothing has been written for longer than a health poll.
    wait_until(Duration::from_secs(120), "earlier scenarios' namespaces to be deleted", || async {
        let all = Api::<k8s_openapi::api::core::v1::Namespace>::all(c.clone()).list(&ListParams::default()).await?;
        Ok(all.items.iter().all(|n| n.status.as_ref().and_then(|s| s.phase.as_deref()) != Some("Terminating")))
    })
    .await?;
    let mut last = scrape().await?;
    let settle_deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        tokio::time::sleep(Duration::from_secs(7)).await;
        let now = scrape().await?;
        if now.0 == last.0 {
            break;
        }
        ensure!(std::time::Instant::now() < settle_deadline, "the operator kept writing: {now:?}");
        last = now;
    }
    let (writes, reconciles) = scrape().await?;
    let by_kind = |text: &str| -> Vec<String> {
        text.lines().filter(|l| l.starts_with("whatsapp_operator_kube_writes_total")).map(String::from).collect()
    };
    let before = by_kind(&reqwest::get(format!("http://127.0.0.1:{port}/metrics")).await?.text().await?);
    // A metadata-only change triggers a reconcile that finds nothing to do.
    for i in 0..3 {
        api.patch(
            &name,
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"annotations": {"touch": i.to_string()}}})),
        )
        .await?;
        let target = reconciles + (i + 1) as f64;
        wait_until(Duration::from_secs(20), "the reconcile to run", || async { Ok(scrape().await?.1 >= target) })
            .await?;
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    let (writes_after, _) = scrape().await?;
    if writes_after != writes {
        let text = reqwest::get(format!("http://127.0.0.1:{port}/metrics")).await?.text().await?;
        let after = by_kind(&text);
        let changed: Vec<&String> = after.iter().filter(|l| !before.contains(l)).collect();
        bail!("an unchanged reconcile wrote {} times; counters that moved: {changed:?}", writes_after - writes);
    }

    // A restart (or a new leader) starts with empty memory: whether a child
    // needs a write is decided from the live objects, so it writes nothing.
    env.operator.lock().unwrap().restart()?;
    let port = env.operator.lock().unwrap().metrics_port;
    let metrics =
        || async move { anyhow::Ok(reqwest::get(format!("http://127.0.0.1:{port}/metrics")).await?.text().await?) };
    wait_until(Duration::from_secs(60), "the restarted operator to reconcile", || async {
        Ok(metrics().await.is_ok_and(|t| support::metric_sum(&t, "whatsapp_operator_reconciles_total") >= 1.0))
    })
    .await?;
    // Past the debounce and the status of this first reconcile.
    tokio::time::sleep(Duration::from_secs(5)).await;
    let text = metrics().await?;
    ensure!(
        support::metric_sum(&text, "whatsapp_operator_kube_writes_total") == 0.0,
        "the restarted operator wrote: {:?}",
        by_kind(&text)
    );

    // Still, a field changed by hand while the operator is down is put back
    // by the first reconcile after the start.
    env.operator.lock().unwrap().stop();
    let deployments: Api<k8s_openapi::api::apps::v1::Deployment> = Api::namespaced(c.clone(), &ns);
    let webapp = format!("{name}-webapp");
    let wanted = deployments.get(&webapp).await?.spec.and_then(|s| s.replicas);
    deployments.patch(&webapp, &PatchParams::default(), &Patch::Merge(json!({"spec": {"replicas": 5}}))).await?;
    env.operator.lock().unwrap().restart()?;
    wait_until(Duration::from_secs(60), "the hand-made scale of the webapps undone", || async {
        Ok(deployments.get(&webapp).await?.spec.and_then(|s| s.replicas) == wanted)
    })
    .await?;
    support::delete_namespace(c, &ns).await;
    Ok(())
}

pub async fn kubectl_wait_never_passes_on_an_old_generation(env: &'static Env) -> Result<()> {
    let c = &env.admin;
    let ns = namespace(c, "wait").await?;
    let name = apply_example(c, &ns, "ha-mysql.yaml", None).await?;
    let api = wans(c, &ns);
    wait_ready(&api, &name).await?;
    let kubectl_wait = |timeout: &str| {
        env.cluster
            .kubectl()
            .args([
                "wait",
                "--for=condition=Ready",
                &format!("whatsappnumber/{name}"),
                "-n",
                &ns,
                &format!("--timeout={timeout}"),
            ])
            .output()
    };
    ensure!(kubectl_wait("10s")?.status.success(), "kubectl wait passes on a Ready object");

    env.operator.lock().unwrap().stop();
    merge_patch(&api, &name, json!({"spec": {"webapp": {"replicas": 3}}})).await?;
    let out = kubectl_wait("5s")?;
    ensure!(!out.status.success(), "kubectl wait passed on a status computed for the previous generation");

    env.operator.lock().unwrap().restart()?;
    let out = kubectl_wait("90s")?;
    ensure!(out.status.success(), "kubectl wait after the reconcile: {}", String::from_utf8_lossy(&out.stderr));
    ensure!(ready_now(&api.get(&name).await?));
    support::delete_namespace(c, &ns).await;
    Ok(())
}

pub async fn namespace_scoped_rbac_is_enough(env: &'static Env) -> Result<()> {
    let c = &env.admin;
    let ns = namespace(c, "scoped").await?;
    let sa = support::apply_chart_rbac(
        &env.cluster,
        "wao-ns",
        OPERATOR_NAMESPACE,
        &["rbac.scope=namespace", &format!("watchNamespace={ns}")],
    )?;
    let kubeconfig = support::service_account_kubeconfig(&env.cluster, c, OPERATOR_NAMESPACE, &sa).await?;
    // The namespaced account really is limited to its namespace.
    let can = |args: &[&str]| -> Result<bool> {
        let out = std::process::Command::new(env.cluster.tools.join("kubectl"))
            .arg("--kubeconfig")
            .arg(&kubeconfig)
            .args(["auth", "can-i"])
            .args(args)
            .output()?;
        Ok(String::from_utf8_lossy(&out.stdout).trim() == "yes")
    };
    ensure!(can(&["list", "whatsappnumbers.whatsapp.operators.dev", "-n", &ns])?, "may list in its namespace");
    ensure!(
        !can(&["list", "whatsappnumbers.whatsapp.operators.dev", "--all-namespaces"])?,
        "may not list cluster-wide"
    );
    ensure!(!can(&["list", "secrets", "-n", "default"])?, "may not read Secrets elsewhere");

    env.operator.lock().unwrap().stop();
    let mut scoped =
        Operator::start("scoped", &kubeconfig, &["--namespace", &ns, "--lease-name", "whatsapp-operator-scoped"])?;
    let name = apply_example(c, &ns, "ha-mysql.yaml", None).await?;
    let result = wait_ready(&wans(c, &ns), &name).await;
    let tail = scoped.log_tail();
    scoped.stop();
    env.operator.lock().unwrap().restart()?;
    result.with_context(|| format!("namespace-scoped operator log:\n{tail}"))?;
    support::delete_namespace(c, &ns).await;
    Ok(())
}

pub async fn duplicate_number_waits_for_the_holder(env: &'static Env) -> Result<()> {
    let c = &env.admin;
    let first_ns = namespace(c, "holder").await?;
    let second_ns = namespace(c, "waiter").await?;
    let first = apply_example(c, &first_ns, "ha-mysql.yaml", None).await?;
    let number = wans(c, &first_ns).get(&first).await?.spec.phone_number;
    wait_ready(&wans(c, &first_ns), &first).await?;

    duplicate(c, &first_ns, &first, &second_ns, "duplicate").await?;

    let waiting = wait_condition(&wans(c, &second_ns), "duplicate", "Conflict", "True", "PhoneNumberInUse").await?;
    let message = &condition(&waiting, "Conflict").unwrap().message;
    ensure!(message.contains(&format!("{first_ns}/{first}")), "the holder is named: {message}");
    ensure!(condition(&waiting, "Ready").is_some_and(|r| r.status == "False" && r.reason == "PhoneNumberInUse"));
    ensure!(
        typed::<StatefulSet>(c, &second_ns).list(&ListParams::default()).await?.items.is_empty(),
        "no workloads for the duplicate"
    );
    let events = typed::<k8s_openapi::api::events::v1::Event>(c, &second_ns).list(&ListParams::default()).await?;
    ensure!(
        events.items.iter().any(|e| e.reason.as_deref() == Some("PhoneNumberInUse")),
        "a PhoneNumberInUse event is recorded"
    );

    // The holder goes; the duplicate takes over by itself.
    wans(c, &first_ns).delete(&first, &DeleteParams::default()).await?;
    wait_ready(&wans(c, &second_ns), "duplicate").await?;
    let holder = support::claim_holder(c, &number).await?.unwrap_or_default();
    ensure!(holder.starts_with(&format!("{second_ns}/duplicate/")), "claim moved to the duplicate: {holder}");
    support::delete_namespace(c, &first_ns).await;
    support::delete_namespace(c, &second_ns).await;
    Ok(())
}

/// A claim whose holder no longer exists is taken over by the running
/// WhatsAppNumber; one whose claim passes to another while it runs deletes its
/// StatefulSets, so the number never runs twice.
pub async fn claims_taken_over_and_lost(env: &'static Env) -> Result<()> {
    use whatsapp_operator::controller::claim::holder_identity;
    let c = &env.admin;
    let first_ns = namespace(c, "lost").await?;
    let second_ns = namespace(c, "taker").await?;
    let first = apply_example(c, &first_ns, "ha-mysql.yaml", None).await?;
    let a = wait_ready(&wans(c, &first_ns), &first).await?;
    let claims = support::number_claims(c);
    let claim = whatsapp_operator::api::claim_name(&a.spec.phone_number);
    let set_holder = |holder: String| {
        let claims = claims.clone();
        let claim = claim.clone();
        async move {
            let patch = json!({"spec": {"holder": holder}});
            claims.patch(&claim, &PatchParams::default(), &Patch::Merge(&patch)).await
        }
    };
    let number = a.spec.phone_number.clone();
    let holder = || async { support::claim_holder(c, &number).await };

    // Abandoned: its holder does not exist; the running WhatsAppNumber takes it back.
    set_holder(format!("{first_ns}/ghost/00000000-0000-0000-0000-000000000000")).await?;
    let me = holder_identity(&a);
    wait_until(READY_TIMEOUT, "the abandoned claim taken over", || async {
        Ok(holder().await?.as_deref() == Some(me.as_str()))
    })
    .await?;

    // Lost: the claim passes to another existing WhatsAppNumber.
    typed::<Secret>(c, &second_ns)
        .create(&PostParams::default(), &{
            let mut s = typed::<Secret>(c, &first_ns).get("ha-mysql-db").await?;
            s.metadata = kube::api::ObjectMeta { name: Some("ha-mysql-db".into()), ..Default::default() };
            s
        })
        .await?;
    let mut dup = a.clone();
    dup.metadata =
        kube::api::ObjectMeta { name: Some("taker".into()), namespace: Some(second_ns.clone()), ..Default::default() };
    dup.status = None;
    let b = wans(c, &second_ns).create(&PostParams::default(), &dup).await?;
    wait_condition(&wans(c, &second_ns), "taker", "Conflict", "True", "PhoneNumberInUse").await?;
    set_holder(holder_identity(&b)).await?;
    wait_condition(&wans(c, &first_ns), &first, "Conflict", "True", "PhoneNumberInUse").await?;
    wait_until(READY_TIMEOUT, "the first object's StatefulSets deleted", || async {
        Ok(typed::<StatefulSet>(c, &first_ns).list(&ListParams::default()).await?.items.is_empty())
    })
    .await?;
    wait_ready(&wans(c, &second_ns), "taker").await?;
    support::delete_namespace(c, &first_ns).await;
    support::delete_namespace(c, &second_ns).await;
    Ok(())
}

pub async fn racing_claims_end_with_one_holder(env: &'static Env) -> Result<()> {
    let c = &env.admin;
    let template: WhatsAppNumber = {
        let text = std::fs::read_to_string(support::repo().join("examples/ha-mysql.yaml"))?;
        serde_saphyr::from_str(text.split("\n---\n").nth(1).ok_or_else(|| anyhow!("example layout"))?)?
    };
    for round in 0..3 {
        let number = unique_number();
        let mut namespaces = Vec::new();
        for i in 0..5 {
            namespaces.push(namespace(c, &format!("race{round}-{i}")).await?);
        }
        for ns in &namespaces {
            apply_example(c, ns, "ha-mysql.yaml", Some("Secret")).await?;
        }
        let creates = namespaces.iter().map(|ns| {
            let mut w = template.clone();
            w.metadata.namespace = Some(ns.clone());
            w.spec.phone_number = number.clone();
            w.spec.health.enabled = false;
            let api = wans(c, ns);
            async move { api.create(&PostParams::default(), &w).await }
        });
        for r in futures::future::join_all(creates).await {
            r?;
        }
        // Every object settles as either the holder (Ready) or a waiter (Conflict).
        let mut holders = Vec::new();
        for ns in &namespaces {
            let api = wans(c, ns);
            wait_until(READY_TIMEOUT, "each racer to settle", || async {
                let w = api.get("ha-mysql").await?;
                Ok(ready_now(&w) || condition(&w, "Conflict").is_some_and(|c| c.status == "True"))
            })
            .await?;
            if ready_now(&api.get("ha-mysql").await?) {
                holders.push(ns.clone());
            }
        }
        ensure!(holders.len() == 1, "round {round}: {} holders ({holders:?})", holders.len());
        let holder = support::claim_holder(c, &number).await?.unwrap_or_default();
        ensure!(holder.starts_with(&format!("{}/ha-mysql/", holders[0])), "round {round}: claim {holder}");
        for ns in &namespaces {
            let sts = typed::<StatefulSet>(c, ns).list(&ListParams::default()).await?.items.len();
            ensure!((sts > 0) == (ns == &holders[0]), "round {round}: only the holder has workloads ({ns}: {sts})");
        }
        for ns in &namespaces {
            support::delete_namespace(c, ns).await;
        }
    }
    Ok(())
}

pub async fn an_unreadable_object_does_not_stop_the_others(env: &'static Env) -> Result<()> {
    use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
    let c = &env.admin;
    let ns = namespace(c, "unreadable").await?;
    apply_example(c, &ns, "ha-mysql.yaml", Some("Secret")).await?;

    // An older schema let `version` be anything; an object stored then cannot
    // be read by this operator.
    support::fault("a WhatsAppNumber stored under a schema the operator cannot read");
    let crds: Api<CustomResourceDefinition> = Api::all(c.clone());
    let loosen: json_patch::Patch = serde_json::from_value(json!([{
        "op": "replace",
        "path": "/spec/versions/0/schema/openAPIV3Schema/properties/spec/properties/version",
        "value": {"x-kubernetes-preserve-unknown-fields": true}
    }]))?;
    crds.patch("whatsappnumbers.whatsapp.operators.dev", &PatchParams::default(), &Patch::Json::<()>(loosen.clone()))
        .await?;
    let raw: Api<kube::api::DynamicObject> =
        Api::namespaced_with(c.clone(), &ns, &kube::api::ApiResource::erase::<WhatsAppNumber>(&()));
    let bad: kube::api::DynamicObject = serde_json::from_value(json!({
        "apiVersion": "whatsapp.operators.dev/v1alpha1", "kind": "WhatsAppNumber",
        "metadata": {"name": "unreadable"},
        "spec": {"phoneNumber": unique_number(), "version": {"major": 2, "minor": 53},
                 "database": {"engine": "MySQL", "host": "db", "credentialsSecretRef": {"name": "ha-mysql-db"}}}
    }))?;
    let created = wait_until(Duration::from_secs(20), "the loosened schema to be served", || async {
        Ok(raw.create(&PostParams::default(), &bad).await.is_ok())
    })
    .await;
    support::install_crd(c).await?;
    created?;

    let mut good: WhatsAppNumber = {
        let text = std::fs::read_to_string(support::repo().join("examples/ha-mysql.yaml"))?;
        serde_saphyr::from_str(text.split("\n---\n").nth(1).ok_or_else(|| anyhow!("example layout"))?)?
    };
    good.metadata.namespace = Some(ns.clone());
    good.spec.health.enabled = false;
    let api = wans(c, &ns);
    for (i, restart) in [(0, false), (1, true)] {
        if restart {
            // A fresh start lists the unreadable object along with the rest.
            env.operator.lock().unwrap().restart()?;
        }
        let mut w = good.clone();
        w.metadata.name = Some(format!("readable-{i}"));
        w.spec.phone_number = unique_number();
        api.create(&PostParams::default(), &w).await?;
        wait_ready(&api, &format!("readable-{i}")).await?;
    }
    wait_until(Duration::from_secs(30), "the unreadable object to say so", || async {
        let obj = raw.get("unreadable").await?;
        let conditions = obj.data.pointer("/status/conditions").cloned().unwrap_or_default();
        Ok(conditions.as_array().is_some_and(|cs| {
            cs.iter().any(|c| c["type"] == "Ready" && c["status"] == "False" && c["reason"] == "InvalidObject")
        }))
    })
    .await?;
    ensure!(
        typed::<StatefulSet>(c, &ns).list(&instance("unreadable")).await?.items.is_empty(),
        "nothing is deployed for an object the operator cannot read"
    );
    raw.delete("unreadable", &DeleteParams::default()).await?;

    // A running holder that becomes unreadable (edited under a looser schema)
    // still holds its number, and can still be deleted.
    let holder = "readable-0";
    let number = api.get(holder).await?.spec.phone_number;
    ensure!(!typed::<StatefulSet>(c, &ns).list(&instance(holder)).await?.items.is_empty(), "the holder runs");
    crds.patch("whatsappnumbers.whatsapp.operators.dev", &PatchParams::default(), &Patch::Json::<()>(loosen)).await?;
    let broken = wait_until(Duration::from_secs(20), "the loosened schema to be served", || async {
        let patch = json!({"spec": {"version": {"major": 2, "minor": 53}}});
        Ok(raw.patch(holder, &PatchParams::default(), &Patch::Merge(&patch)).await.is_ok())
    })
    .await;
    support::install_crd(c).await?;
    broken?;
    let waiter_ns = namespace(c, "unreadable-waiter").await?;
    apply_example(c, &waiter_ns, "ha-mysql.yaml", Some("Secret")).await?;
    let mut waiter = good.clone();
    waiter.metadata.namespace = Some(waiter_ns.clone());
    waiter.metadata.name = Some("waiter".into());
    waiter.spec.phone_number = number.clone();
    wans(c, &waiter_ns).create(&PostParams::default(), &waiter).await?;
    let waiting = wait_condition(&wans(c, &waiter_ns), "waiter", "Conflict", "True", "PhoneNumberInUse").await?;
    let message = &condition(&waiting, "Conflict").unwrap().message;
    ensure!(message.contains(&format!("{ns}/{holder}")), "the unreadable holder is named: {message}");

    raw.delete(holder, &DeleteParams::default()).await?;
    wait_until(Duration::from_secs(60), "the unreadable holder to be deleted", || async {
        Ok(raw.get_opt(holder).await?.is_none())
    })
    .await?;
    ensure!(typed::<StatefulSet>(c, &ns).list(&instance(holder)).await?.items.is_empty(), "its nodes went first");
    wait_ready(&wans(c, &waiter_ns), "waiter").await?;
    support::delete_namespace(c, &waiter_ns).await;
    support::delete_namespace(c, &ns).await;
    Ok(())
}

/// `spec.monitoring.serviceMonitor`: without the Prometheus Operator's CRD the
/// condition says what is missing; with it the operator keeps a ServiceMonitor
/// of the client's own metrics, and removes it when the spec stops asking.
pub async fn client_metrics_service_monitor_follows_the_spec(env: &'static Env) -> Result<()> {
    use kube::api::{ApiResource, DynamicObject, GroupVersionKind};
    let c = &env.admin;
    let ns = namespace(c, "monitor").await?;
    let name = apply_example(c, &ns, "ha-mysql.yaml", None).await?;
    let api = wans(c, &ns);
    wait_ready(&api, &name).await?;
    let resource = ApiResource::from_gvk_with_plural(
        &GroupVersionKind::gvk("monitoring.coreos.com", "v1", "ServiceMonitor"),
        "servicemonitors",
    );
    let crds: Api<k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition> =
        Api::all(c.clone());
    let installed = crds.get_opt("servicemonitors.monitoring.coreos.com").await?.is_some();
    merge_patch(&api, &name, json!({"spec": {"monitoring": {"serviceMonitor": true, "labels": {"release": "prom"}}}}))
        .await?;
    if !installed {
        let w = wait_condition(&api, &name, "ClientMetricsScraped", "False", "ServiceMonitorUnavailable").await?;
        ensure!(condition(&w, "ClientMetricsScraped").is_some_and(|m| m.message.contains("monitoring.coreos.com")));
        // The Prometheus Operator's CRD, reduced to what the API server needs.
        let crd = serde_json::from_value(json!({
            "apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition",
            "metadata": {"name": "servicemonitors.monitoring.coreos.com"},
            "spec": {"group": "monitoring.coreos.com", "scope": "Namespaced",
                "names": {"kind": "ServiceMonitor", "plural": "servicemonitors", "singular": "servicemonitor"},
                "versions": [{"name": "v1", "served": true, "storage": true,
                    "schema": {"openAPIV3Schema": {"type": "object", "x-kubernetes-preserve-unknown-fields": true}}}]}
        }))?;
        match crds.create(&PostParams::default(), &crd).await {
            Ok(_) => {}
            Err(kube::Error::Api(s)) if s.code == 409 => {}
            Err(e) => return Err(e.into()),
        }
        // A spec change brings the next attempt at once.
        tokio::time::sleep(Duration::from_secs(3)).await;
        merge_patch(&api, &name, json!({"spec": {"monitoring": {"interval": "1m"}}})).await?;
    } else {
        // A cluster kept from an earlier run (WAO_IT_KEEP_CLUSTER, WAO_IT_KUBECONFIG) has the CRD.
        eprintln!(
            "client_metrics_service_monitor_follows_the_spec: the ServiceMonitor CRD exists already; \
             ServiceMonitorUnavailable is not checked in this run"
        );
    }
    let monitors: Api<DynamicObject> = Api::namespaced_with(c.clone(), &ns, &resource);
    let sm_name = format!("{name}-client");
    wait_until(READY_TIMEOUT, "the client's ServiceMonitor", || async {
        Ok(monitors.get_opt(&sm_name).await?.is_some())
    })
    .await?;
    let sm = monitors.get(&sm_name).await?;
    ensure!(sm.labels().get("release").map(String::as_str) == Some("prom"));
    let endpoints = sm.data["spec"]["endpoints"].as_array().cloned().unwrap_or_default();
    ensure!(endpoints.len() == 2, "{endpoints:?}");
    ensure!(endpoints[0]["authorization"]["credentials"]["name"] == json!(format!("{name}-keys")));
    let w = wait_condition(&api, &name, "ClientMetricsScraped", "True", "ServiceMonitorApplied").await?;
    ensure!(w.status.as_ref().and_then(|s| s.client_service_monitor.clone()) == Some(sm_name.clone()));

    // Deleted by hand: the number's next reconcile (here for a spec change
    // that leaves the ServiceMonitor as it was) puts it back.
    monitors.delete(&sm_name, &Default::default()).await?;
    wait_until(READY_TIMEOUT, "the ServiceMonitor deleted", || async {
        Ok(monitors.get_opt(&sm_name).await?.is_none())
    })
    .await?;
    merge_patch(&api, &name, json!({"spec": {"webapp": {"replicas": 3}}})).await?;
    wait_until(READY_TIMEOUT, "the ServiceMonitor put back", || async {
        Ok(monitors.get_opt(&sm_name).await?.is_some())
    })
    .await?;

    merge_patch(&api, &name, json!({"spec": {"monitoring": null}})).await?;
    wait_until(READY_TIMEOUT, "the ServiceMonitor removed", || async {
        Ok(monitors.get_opt(&sm_name).await?.is_none())
    })
    .await?;
    support::delete_namespace(c, &ns).await;
    Ok(())
}

/// `spec.suspend`: masters and coreapps stop before the webapps, scaling by
/// hand is undone, media and the number claim stay, and `false` brings every
/// tier back.
pub async fn suspend_stops_in_the_safe_order_and_resumes(env: &'static Env) -> Result<()> {
    let c = &env.admin;
    let ns = namespace(c, "suspend").await?;
    let name = apply_example(c, &ns, "ha-mysql.yaml", None).await?;
    let api = wans(c, &ns);
    wait_ready(&api, &name).await?;
    let sts = typed::<StatefulSet>(c, &ns);
    let deployments = typed::<Deployment>(c, &ns);

    // Record every replica count each workload goes through, in order.
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<(String, i32)>();
    let watch = {
        let (sts, deployments, tx) = (sts.clone(), deployments.clone(), tx.clone());
        tokio::spawn(async move {
            let cfg = || watcher::Config::default().labels("app.kubernetes.io/managed-by=whatsapp-operator");
            let a = watcher(sts, cfg())
                .applied_objects()
                .map(|o| o.map(|s| (s.name_any(), s.spec.and_then(|s| s.replicas))));
            let b = watcher(deployments, cfg())
                .applied_objects()
                .map(|o| o.map(|d| (d.name_any(), d.spec.and_then(|s| s.replicas))));
            let mut both = futures::stream::select(a.boxed(), b.boxed());
            while let Some(event) = both.next().await {
                if let Ok((n, Some(r))) = event {
                    let _ = tx.send((n, r));
                }
            }
        })
    };
    merge_patch(&api, &name, json!({"spec": {"suspend": true}})).await?;
    let w = wait_condition(&api, &name, "Ready", "False", "Suspended").await?;
    ensure!(condition(&w, "Degraded").is_some_and(|d| d.status == "False"));
    wait_until(READY_TIMEOUT, "every tier stopped", || async {
        let w = api.get(&name).await?;
        Ok(condition(&w, "Ready").is_some_and(|r| r.message.contains("every master, coreapp and webapp is stopped")))
    })
    .await?;
    watch.abort();
    let mut seen = vec![];
    while let Ok(event) = rx.try_recv() {
        seen.push(event);
    }
    let first_zero = |n: &str| seen.iter().position(|(name, r)| name == n && *r == 0);
    let (masters, coreapps, webapps) = (
        first_zero(&format!("{name}-master")),
        first_zero(&format!("{name}-coreapp")),
        first_zero(&format!("{name}-webapp")),
    );
    ensure!(
        matches!((masters, coreapps, webapps), (Some(m), Some(c), Some(w)) if m < w && c < w),
        "nodes stop before webapps: {seen:?}"
    );

    // Scaling by hand is undone; media and the number claim are kept.
    let scale = json!({"spec": {"replicas": 2}});
    sts.patch(&format!("{name}-coreapp"), &PatchParams::default(), &Patch::Merge(&scale)).await?;
    wait_until(Duration::from_secs(30), "the hand-made scale undone", || async {
        Ok(sts.get(&format!("{name}-coreapp")).await?.spec.and_then(|s| s.replicas) == Some(0))
    })
    .await?;
    ensure!(typed::<PersistentVolumeClaim>(c, &ns).get_opt(&format!("{name}-media")).await?.is_some());
    let w = api.get(&name).await?;
    ensure!(condition(&w, "Conflict").is_some_and(|c| c.reason == "NumberClaimed"), "the claim is kept");

    merge_patch(&api, &name, json!({"spec": {"suspend": false}})).await?;
    let w = wait_ready(&api, &name).await?;
    ensure!(w.status.and_then(|s| s.ready_pods) == Some("6/6".into()));
    support::delete_namespace(c, &ns).await;
    Ok(())
}

pub async fn a_leader_cut_off_from_the_api_stops_before_its_lease_can_pass(env: &'static Env) -> Result<()> {
    use k8s_openapi::api::coordination::v1::Lease;
    let c = &env.admin;
    // The shared operator steps aside for one that reaches the API server
    // through a proxy the test can cut.
    env.operator.lock().unwrap().stop();
    let proxy = support::Proxy::start(support::api_server(&env.operator_kubeconfig)?).await?;
    let kubeconfig = support::kubeconfig_through(&env.operator_kubeconfig, proxy.port, "cut-off")?;
    let mut cut_off = Operator::start("cut-off", &kubeconfig, &[])?;
    let leases: Api<Lease> = Api::namespaced(c.clone(), OPERATOR_NAMESPACE);
    let holder = || async {
        let lease = leases.get("whatsapp-operator").await?;
        anyhow::Ok(lease.spec.and_then(|s| s.holder_identity).unwrap_or_default())
    };
    wait_until(Duration::from_secs(45), "the proxied operator to lead", || async { Ok(holder().await? == "cut-off") })
        .await?;
    let ns = namespace(c, "cutoff").await?;
    let name = apply_example(c, &ns, "ha-mysql.yaml", None).await?;
    let api = wans(c, &ns);
    wait_ready(&api, &name).await?;

    // The network between the leader and the API server goes: it can renew
    // nothing, and must stop before its lease can pass to another replica.
    proxy.cut();
    support::fault("the leader cut off from the API server");
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    let (status, stopped_at) = loop {
        if let Some(status) = cut_off.exited_by_itself() {
            break (status, std::time::SystemTime::now());
        }
        ensure!(std::time::Instant::now() < deadline, "the cut-off leader still runs:\n{}", cut_off.log_tail());
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let lease = leases.get("whatsapp-operator").await?;
    let valid_until = whatsapp_operator::leader::valid_until(&lease, "cut-off")
        .ok_or_else(|| anyhow!("the lease passed on while the cut-off leader ran: {:?}", lease.spec))?;
    ensure!(
        stopped_at <= valid_until,
        "the cut-off leader stopped {:?} after its lease ran out",
        stopped_at.duration_since(valid_until).unwrap_or_default()
    );
    ensure!(!status.success(), "a leader that cannot renew its lease exits with an error ({status})");
    let log = std::fs::read_to_string(&cut_off.log)?;
    ensure!(log.contains("cannot see the leader lease renewed"), "{}", cut_off.log_tail());

    // Healed, the shared operator takes the lease once it expires and serves
    // the number: a change of its spec is carried out.
    proxy.heal();
    env.operator.lock().unwrap().restart()?;
    merge_patch(&api, &name, json!({"spec": {"webapp": {"replicas": 3}}})).await?;
    let w = wait_ready(&api, &name).await?;
    ensure!(w.status.as_ref().and_then(|s| s.webapps.as_ref()).is_some_and(|t| t.ready == 3), "{:?}", w.status);
    ensure!(holder().await? != "cut-off", "the lease went to a running replica");
    support::delete_namespace(c, &ns).await;
    Ok(())
}
