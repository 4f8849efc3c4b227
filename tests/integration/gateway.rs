//! Gateway scenarios: the operator's health judgement and shard changes
//! against emulator processes on real MariaDB standing in for the pods.

use std::collections::BTreeMap;
use std::time::Duration;

use anyhow::{Context as _, Result, anyhow, ensure};
use k8s_openapi::ByteString;
use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::{Namespace, Secret};
use kube::api::{ObjectMeta, Patch, PatchParams, PostParams};
use kube::{Api, Client, ResourceExt};
use serde_json::json;
use whatsapp_operator::api::{RestoreOutcome, WhatsAppNumber};

use crate::Env;
use crate::emulated::{self, Deployment};
use crate::scenarios::{
    READY_TIMEOUT, apply_example, condition, merge_patch, ready_now, typed, unique_number, wait_condition, wait_ready,
    wans,
};
use crate::support::{self, wait_until, work_dir};

const NAME: &str = "acme";

/// The namespace of a slot, the database Secret and a WhatsAppNumber with
/// health polling on. No CA is given: the operator pins the client's own.
pub async fn prepare(c: &Client, ns: &str, number: &str, spec: serde_json::Value) -> Result<()> {
    let namespace: Namespace = serde_json::from_value(json!({"metadata": {"name": ns}}))?;
    Api::<Namespace>::all(c.clone()).create(&PostParams::default(), &namespace).await?;
    prepare_in(c, ns, number, spec).await
}

/// The API key the operator generated, once it exists.
pub async fn api_key(c: &Client, ns: &str) -> Result<String> {
    key_value(c, ns, "WA_API_KEY", Duration::from_secs(30)).await
}

/// A key of the operator's `NAME-keys` Secret, once it is there.
pub async fn key_value(c: &Client, ns: &str, key: &str, timeout: Duration) -> Result<String> {
    let secrets = typed::<Secret>(c, ns);
    wait_until(timeout, &format!("{key} in the generated key Secret"), || async {
        let data = secrets.get_opt(&format!("{NAME}-keys")).await?.and_then(|s| s.data).unwrap_or_default();
        Ok(data.contains_key(key))
    })
    .await?;
    let data = secrets.get(&format!("{NAME}-keys")).await?.data.unwrap_or_default();
    let value = data.get(key).ok_or_else(|| anyhow!("no {key}"))?;
    Ok(String::from_utf8(value.0.clone())?)
}

/// An admin session with the webapp as the operator left it: the admin
/// password it set and the client's CA it pinned.
async fn admin_client(c: &Client, ns: &str, url: &str) -> Result<(reqwest::Client, String)> {
    let ca = key_value(c, ns, "webapp-ca.crt", READY_TIMEOUT).await?;
    let password = key_value(c, ns, "admin-password", READY_TIMEOUT).await?;
    let client = reqwest::Client::builder()
        .tls_built_in_root_certs(false)
        .add_root_certificate(reqwest::Certificate::from_pem(ca.as_bytes())?)
        .build()?;
    let login = client
        .post(format!("{url}/v1/users/login"))
        .basic_auth("admin", Some(&password))
        .json(&json!({}))
        .send()
        .await?;
    ensure!(login.status().is_success(), "the operator's admin password logs in: {}", login.status());
    let body: serde_json::Value = login.json().await?;
    let token = body.pointer("/users/0/token").and_then(|t| t.as_str()).ok_or_else(|| anyhow!("no token in {body}"))?;
    // The default password no longer works: the operator moved the client off it.
    let default = client
        .post(format!("{url}/v1/users/login"))
        .basic_auth("admin", Some("secret"))
        .json(&json!({}))
        .send()
        .await?;
    ensure!(default.status() == reqwest::StatusCode::UNAUTHORIZED, "the default password still logs in");
    Ok((client, token.to_string()))
}

fn health_of(w: &WhatsAppNumber) -> whatsapp_operator::api::HealthStatus {
    w.status.as_ref().and_then(|s| s.health.as_deref().cloned()).unwrap_or_default()
}

pub async fn health_reaches_ready_and_fails_over(env: &'static Env) -> Result<()> {
    let c = &env.admin;
    let (ns, port) = env.slot("health");
    let number = unique_number();
    prepare(c, &ns, &number, json!({})).await?;
    let api = wans(c, &ns);

    // Pods are Ready on their fake nodes, but no webapp answers yet.
    wait_condition(&api, NAME, "GatewayConnected", "False", "WebappUnreachable").await?;
    let w = wait_condition(&api, NAME, "Degraded", "True", "WebappUnreachable").await?;
    ensure!(!ready_now(&w), "never Ready without a healthy gateway");

    // A heartbeat every second; a coreapp silent for 8 s is replaced.
    let mut deployment = Deployment::start("health", &number, "2.53.2", (1, 8))?;
    for master in [true, true, false, false] {
        deployment.node(master)?;
    }
    let key = api_key(c, &ns).await?;
    let url = deployment.webapp(&key, port)?;

    let w = wait_ready(&api, NAME).await.with_context(|| deployment.logs())?;
    // High availability as the client reports it: the primary master is
    // disconnected like every node but the coreapp that holds the shard.
    let primary = health_of(&w).nodes.into_iter().find(|n| n.role.as_deref() == Some("primary_master"));
    ensure!(primary.as_ref().is_some_and(|p| p.gateway_status.as_deref() == Some("disconnected")), "{primary:?}");
    ensure!(condition(&w, "AdminAccess").is_some_and(|a| a.status == "True"), "{:?}", condition(&w, "AdminAccess"));
    admin_client(c, &ns, &url).await?;
    let health = health_of(&w);
    ensure!(health.gateway == "connected", "{health:?}");
    ensure!((health.connected_coreapps, health.standby_coreapps) == (1, 1), "{health:?}");
    ensure!(health.primary_master.is_some() && health.shards == Some(1), "{health:?}");
    ensure!(health.nodes.len() == 4, "every node listed: {:?}", health.nodes);
    ensure!(condition(&w, "GatewayConnected").is_some_and(|g| g.status == "True"));
    let metrics = env.operator_metrics().await?;
    let up = metrics.lines().find(|l| l.starts_with("whatsapp_operator_number_gateway_up{") && l.contains(&ns));
    ensure!(up.is_some_and(|l| l.ends_with(" 1")), "gateway_up metric: {up:?}");
    quiet_while_probed(env, &api, &ns).await?;

    // The connected coreapp dies: one shard is down until the standby takes over.
    let connected = health
        .nodes
        .iter()
        .find(|n| n.role.as_deref() == Some("coreapp") && n.gateway_status.as_deref() == Some("connected"))
        .map(|n| n.id.clone())
        .ok_or_else(|| anyhow!("no connected coreapp in {:?}", health.nodes))?;
    deployment.kill_node(&connected)?;
    support::fault("the connected coreapp killed");
    let w = wait_condition(&api, NAME, "Degraded", "True", "ShardsNotConnected")
        .await
        .with_context(|| deployment.logs())?;
    ensure!(condition(&w, "Ready").is_some_and(|r| r.status == "False" && r.reason == "ShardsNotConnected"));
    let events = typed::<k8s_openapi::api::events::v1::Event>(c, &ns).list(&Default::default()).await?;
    ensure!(
        events.items.iter().any(|e| e.reason.as_deref() == Some("ShardsNotConnected")),
        "an event for the transition"
    );

    let w = wait_ready(&api, NAME).await.with_context(|| deployment.logs())?;
    let health = health_of(&w);
    let now_connected = health
        .nodes
        .iter()
        .find(|n| n.role.as_deref() == Some("coreapp") && n.gateway_status.as_deref() == Some("connected"))
        .map(|n| n.id.clone());
    ensure!(
        now_connected.is_some() && now_connected.as_deref() != Some(connected.as_str()),
        "the standby took over: {health:?}"
    );

    // A certificate from a kubernetes.io/tls Secret goes through the API; the
    // webapps restart to serve it and the operator verifies it.
    let pki = emulated::pki(&work_dir().join("pki-health"))?;
    let tls = Secret {
        metadata: ObjectMeta { name: Some("webapp-tls".into()), ..Default::default() },
        type_: Some("kubernetes.io/tls".into()),
        data: Some(BTreeMap::from([
            ("tls.crt".to_string(), ByteString(std::fs::read(&pki.cert)?)),
            ("tls.key".to_string(), ByteString(std::fs::read(&pki.key)?)),
            ("ca.crt".to_string(), ByteString(std::fs::read(&pki.ca)?)),
        ])),
        ..Default::default()
    };
    typed::<Secret>(c, &ns).create(&PostParams::default(), &tls).await?;
    let deployments = typed::<k8s_openapi::api::apps::v1::Deployment>(c, &ns);
    let template_hash = || async {
        let d = deployments.get(&format!("{NAME}-webapp")).await?;
        let meta = d.spec.and_then(|s| s.template.metadata).unwrap_or_default();
        anyhow::Ok(meta.annotations.unwrap_or_default().get("whatsapp.operators.dev/config-hash").cloned())
    };
    let before = template_hash().await?;
    merge_patch(&api, NAME, json!({"spec": {"webapp": {"tls": {"secretName": "webapp-tls"}}}})).await?;
    wait_until(READY_TIMEOUT, "the certificate uploaded and the webapps told to restart", || async {
        let w = api.get(NAME).await?;
        let uploaded = w.status.as_ref().is_some_and(|s| s.webapp_certificate.is_some());
        Ok(uploaded && template_hash().await? != before)
    })
    .await
    .with_context(|| deployment.logs())?;
    // The pod restart, played by the harness.
    deployment.stop_webapp();
    let restarted = jiff::Timestamp::now();
    deployment.webapp(&key, port)?;
    let served = reqwest::Client::builder()
        .tls_built_in_root_certs(false)
        .add_root_certificate(reqwest::Certificate::from_pem(&std::fs::read(&pki.ca)?)?)
        .build()?;
    wait_until(READY_TIMEOUT, "the webapp serving the uploaded certificate", || async {
        Ok(served.get(format!("{url}/v1/health")).header("Authorization", format!("Apikey {key}")).send().await.is_ok())
    })
    .await
    .with_context(|| deployment.logs())?;
    // A probe of the restarted webapp, over the certificate it serves now,
    // finds the gateway connected (the results before the restart count not;
    // a result that changes nothing is not written to status, so the
    // operator's metrics say it).
    let metric = |metrics: &str, name: &str| {
        metrics
            .lines()
            .find(|l| {
                l.starts_with(&format!("whatsapp_operator_{name}{{")) && l.contains(&format!("namespace=\"{ns}\""))
            })
            .and_then(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
    };
    wait_until(READY_TIMEOUT, "a probe of the restarted webapp to find the gateway connected", || async {
        let metrics = env.operator_metrics().await?;
        let probed_after =
            metric(&metrics, "health_probe_timestamp_seconds").is_some_and(|at| at > restarted.as_second() as f64);
        Ok(probed_after && metric(&metrics, "number_gateway_up") == Some(1.0))
    })
    .await
    .with_context(|| deployment.logs())?;
    wait_ready(&api, NAME).await.with_context(|| deployment.logs())?;
    support::delete_namespace(c, &ns).await;
    Ok(())
}

pub async fn shards_change_through_the_api(env: &'static Env) -> Result<()> {
    let c = &env.admin;
    let (ns, port) = env.slot("shards");
    let number = unique_number();
    prepare(c, &ns, &number, json!({"multiconnect": {"shards": 1, "standbyCoreapps": 1}})).await?;
    let api = wans(c, &ns);
    let mut deployment = Deployment::start("shards", &number, "2.53.2", (1, 6))?;
    for master in [true, true, false, false, false] {
        deployment.node(master)?;
    }
    let key = api_key(c, &ns).await?;
    let url = deployment.webapp(&key, port)?;
    wait_ready(&api, NAME).await.with_context(|| deployment.logs())?;

    // Sample the coreapp StatefulSet and the client's shard count all along:
    // there must always be a coreapp per shard plus the standby.
    let sts = typed::<StatefulSet>(c, &ns);
    let (client, token) = admin_client(c, &ns, &url).await?;
    let (stop_tx, mut stop_rx) = tokio::sync::oneshot::channel::<()>();
    let sampler = {
        let (sts, client, url, token) = (sts.clone(), client.clone(), url.clone(), token.clone());
        tokio::spawn(async move {
            let mut violations = Vec::new();
            let mut samples = 0;
            loop {
                let replicas = sts.get(&format!("{NAME}-coreapp")).await.ok().and_then(|s| s.spec?.replicas);
                let shards = client.get(format!("{url}/v1/account/shards")).bearer_auth(&token).send().await.ok();
                let shards = match shards {
                    Some(r) => {
                        r.json::<serde_json::Value>().await.ok().and_then(|v| v.pointer("/account/shards")?.as_i64())
                    }
                    None => None,
                };
                if let (Some(r), Some(s)) = (replicas, shards) {
                    samples += 1;
                    if i64::from(r) < s + 1 {
                        violations.push(format!("{r} coreapps for {s} shards"));
                    }
                }
                if stop_rx.try_recv().is_ok() {
                    return (samples, violations);
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        })
    };

    // The number was registered before the operator watched it, so its age is
    // unknown: the operator asks for a confirmation instead of risking it.
    merge_patch(&api, NAME, json!({"spec": {"multiconnect": {"shards": 2}}})).await?;
    let w = wait_condition(&api, NAME, "Stalled", "True", "ShardChangeNeedsConfirmation").await?;
    ensure!(condition(&w, "Stalled").is_some_and(|d| d.message.contains("confirmShardChange to 2")));
    ensure!(health_of(&w).shards == Some(1), "nothing was sent");

    // Confirmed, it needs the number's certificate: without it the condition says so.
    merge_patch(&api, NAME, json!({"spec": {"multiconnect": {"confirmShardChange": 2}}})).await?;
    let w = wait_condition(&api, NAME, "Degraded", "True", "ShardChangeBlocked").await?;
    ensure!(condition(&w, "Degraded").is_some_and(|d| d.message.contains("spec.registration")));
    ensure!(
        w.status
            .as_ref()
            .and_then(|s| s.sharding.as_ref())
            .is_some_and(|s| s.phase == whatsapp_operator::api::ShardPhase::Blocked)
    );

    let registration = Secret {
        metadata: ObjectMeta { name: Some("registration".into()), ..Default::default() },
        string_data: Some(BTreeMap::from([("cert".to_string(), deployment.certificate(&number)?)])),
        ..Default::default()
    };
    typed::<Secret>(c, &ns).create(&PostParams::default(), &registration).await?;
    merge_patch(&api, NAME, json!({"spec": {"registration": {"secretRef": {"name": "registration"}}}})).await?;
    let w = wait_until_shards(&api, 2).await.with_context(|| deployment.logs())?;
    ensure!(health_of(&w).connected_coreapps == 2, "{:?}", health_of(&w));
    ensure!(sts.get(&format!("{NAME}-coreapp")).await?.spec.and_then(|s| s.replicas) == Some(3));

    merge_patch(&api, NAME, json!({"spec": {"multiconnect": {"shards": 1, "confirmShardChange": 1}}})).await?;
    wait_until_shards(&api, 1).await.with_context(|| deployment.logs())?;
    wait_until(Duration::from_secs(30), "the coreapps to shrink after the shard change", || async {
        Ok(sts.get(&format!("{NAME}-coreapp")).await?.spec.and_then(|s| s.replicas) == Some(2))
    })
    .await?;

    let _ = stop_tx.send(());
    let (samples, violations) = sampler.await?;
    ensure!(samples > 10, "too few samples ({samples})");
    ensure!(violations.is_empty(), "a shard was without a coreapp: {violations:?}");

    // Later the client reports another count (a restored database, played by
    // a change made by hand). The spec still says confirmShardChange: 1, but
    // that was for the change made then: nothing is sent on the operator's
    // own initiative.
    let by_hand = json!({
        "cc": "1",
        "phone_number": number.trim_start_matches("+1"),
        "shards": 2,
        "cert": deployment.certificate(&number)?,
    });
    let response = client.post(format!("{url}/v1/account/shards")).bearer_auth(&token).json(&by_hand).send().await?;
    ensure!(response.status().is_success(), "the change by hand: {}", response.text().await?);
    let w = wait_condition(&api, NAME, "Stalled", "True", "ShardChangeNeedsConfirmation").await?;
    let message = condition(&w, "Stalled").map(|s| s.message.to_string()).unwrap_or_default();
    ensure!(message.contains("was spent on the change to 1"), "{message}");
    tokio::time::sleep(Duration::from_secs(12)).await;
    let w = api.get(NAME).await?;
    ensure!(health_of(&w).shards == Some(2), "nothing was sent: {:?}", health_of(&w));
    ensure!(condition(&w, "Stalled").is_some_and(|s| s.status == "True"), "still waiting for a person");

    // A person asks for the change again.
    let retry = json!({"metadata": {"annotations": {"whatsapp.operators.dev/retry-shard-change": "after-restore"}}});
    merge_patch(&api, NAME, retry).await?;
    let w = wait_until_shards(&api, 1).await.with_context(|| deployment.logs())?;
    let sent = w.status.as_ref().and_then(|s| s.sharding.as_ref()).and_then(|s| s.last_request.clone());
    ensure!(sent.is_some_and(|r| r.retry_annotation.as_deref() == Some("after-restore")), "the request records it");

    // The media claim records the change too, and says it once the status
    // is lost (an object restored without it): the confirmation and the
    // annotation left in the spec send nothing on their own.
    wait_for_media_record(c, &ns, "whatsapp.operators.dev/shard-change", "after-restore").await?;
    let mut w = api.get(NAME).await?;
    w.status = Some(Default::default());
    api.replace_status(NAME, &Default::default(), &w).await?;
    support::fault("the WhatsAppNumber's status wiped");
    wait_until(Duration::from_secs(60), "the shard record back in status from the claim", || async {
        let w = api.get(NAME).await?;
        let sharding = w.status.as_ref().and_then(|s| s.sharding.as_ref());
        Ok(sharding.and_then(|s| s.last_request.as_ref()).and_then(|r| r.retry_annotation.as_deref())
            == Some("after-restore"))
    })
    .await
    .with_context(|| deployment.logs())?;
    let response = client.post(format!("{url}/v1/account/shards")).bearer_auth(&token).json(&by_hand).send().await?;
    ensure!(response.status().is_success(), "the change by hand: {}", response.text().await?);
    let w = wait_condition(&api, NAME, "Stalled", "True", "ShardChangeNeedsConfirmation").await?;
    let message = condition(&w, "Stalled").map(|s| s.message.to_string()).unwrap_or_default();
    ensure!(message.contains("was spent on the change to 1"), "{message}");
    tokio::time::sleep(Duration::from_secs(12)).await;
    ensure!(health_of(&api.get(NAME).await?).shards == Some(2), "nothing was sent after the status was lost");
    support::delete_namespace(c, &ns).await;
    Ok(())
}

/// Another instance of the number, outside the cluster's control, connects:
/// the operator stops its own masters and coreapps and says what to do; the
/// nodes come back only once a person confirms the other one is gone.
pub async fn another_instance_outside_the_cluster_stops_the_nodes(env: &'static Env) -> Result<()> {
    let c = &env.admin;
    let (ns, port) = env.slot("conflict");
    let number = unique_number();
    // Health polling off at first: the admin user still leaves its default password.
    prepare(c, &ns, &number, json!({"health": {"enabled": false, "pollIntervalSeconds": 5}})).await?;
    let api = wans(c, &ns);
    let mut ours = Deployment::start("conflict", &number, "2.53.2", (1, 6))?;
    for master in [true, true, false, false] {
        ours.node(master)?;
    }
    // The fake nodes serve the emulated nodes' logs as the pods' logs.
    let pods = ["master-0", "master-1", "coreapp-0", "coreapp-1"].map(|p| format!("{NAME}-{p}"));
    serve_pod_logs(c, &ns, pods.iter().zip(ours.container_logs())).await?;
    let key = api_key(c, &ns).await?;
    let url = ours.webapp(&key, port)?;
    let w = wait_condition(&api, NAME, "AdminAccess", "True", "SessionOpen").await.with_context(|| ours.logs())?;
    ensure!(w.status.as_ref().is_some_and(|s| s.health.is_none()), "no health is reported while polling is off");
    admin_client(c, &ns, &url).await?;
    let health_on = json!({"spec": {"health": {"enabled": true}}});
    api.patch(NAME, &PatchParams::default(), &Patch::Merge(&health_on)).await?;
    wait_ready(&api, NAME).await.with_context(|| ours.logs())?;
    let sts = typed::<StatefulSet>(c, &ns);
    let replicas = |tier: &'static str| {
        let sts = sts.clone();
        async move { anyhow::Ok(sts.get(&format!("{NAME}-{tier}")).await?.spec.and_then(|s| s.replicas)) }
    };

    // The same number from a second deployment (its own database) on the same
    // WhatsApp servers.
    let mut other = ours.another_instance("conflict-other")?;
    support::fault("a second instance of the number outside the cluster");
    for master in [true, false] {
        other.node(master)?;
    }
    let w = wait_condition(&api, NAME, "Conflict", "True", "ExternalInstance")
        .await
        .with_context(|| format!("{}\n{}", ours.logs(), other.logs()))?;
    let conflict = w.status.as_ref().and_then(|s| s.external_conflict.clone()).ok_or_else(|| anyhow!("no record"))?;
    // Health said only that the nodes were down: the coreapp's log named the conflict.
    ensure!(conflict.message.contains("Detected multiple instances that share the same number"), "{conflict:?}");
    ensure!(conflict.message.contains(&format!("{NAME}-")), "the pod that logged it is named: {conflict:?}");
    ensure!(condition(&w, "Stalled").is_some_and(|s| s.status == "True" && s.reason == "ExternalInstance"));
    let message = condition(&w, "Ready").map(|r| r.message.to_string()).unwrap_or_default();
    ensure!(
        message.contains(&format!("whatsapp.operators.dev/resolve-conflict={}", conflict.detected_at)),
        "{message}"
    );
    wait_until(Duration::from_secs(30), "masters and coreapps scaled to zero", || async {
        Ok(replicas("master").await? == Some(0) && replicas("coreapp").await? == Some(0))
    })
    .await?;
    // They stay down: the health of stopped nodes is no reason to start them.
    tokio::time::sleep(Duration::from_secs(12)).await;
    ensure!(replicas("coreapp").await? == Some(0), "the nodes stayed stopped");

    // A person stops the other instance and says so; the nodes come back.
    other.stop_all();
    ours.stop_all();
    let patch = json!({"metadata": {"annotations": {"whatsapp.operators.dev/resolve-conflict": conflict.detected_at}}});
    merge_patch(&api, NAME, patch).await?;
    wait_until(READY_TIMEOUT, "masters and coreapps back after the resolution", || async {
        let w = api.get(NAME).await?;
        Ok(replicas("master").await? == Some(2)
            && replicas("coreapp").await? == Some(2)
            && w.status.as_ref().is_some_and(|s| s.external_conflict.is_none())
            && condition(&w, "Conflict").is_some_and(|c| c.status == "False"))
    })
    .await?;
    support::delete_namespace(c, &ns).await;
    Ok(())
}

/// Points the logs of the fake nodes' pods (pods/log) at these container
/// log files, as a kubelet serves its containers' logs.
async fn serve_pod_logs<'a>(
    c: &Client,
    ns: &str,
    pods: impl Iterator<Item = (&'a String, std::path::PathBuf)>,
) -> Result<()> {
    use kube::core::{ApiResource, DynamicObject, GroupVersionKind};
    let kind = ApiResource::from_gvk_with_plural(&GroupVersionKind::gvk("kwok.x-k8s.io", "v1alpha1", "Logs"), "logs");
    let logs: Api<DynamicObject> = Api::namespaced_with(c.clone(), ns, &kind);
    for (pod, file) in pods {
        let object: DynamicObject = serde_json::from_value(json!({
            "apiVersion": "kwok.x-k8s.io/v1alpha1",
            "kind": "Logs",
            "metadata": {"name": pod},
            "spec": {"logs": [{"logsFile": file.display().to_string()}]},
        }))?;
        logs.create(&PostParams::default(), &object).await?;
    }
    Ok(())
}

/// A number's whole life from the spec: registration with the code a person
/// puts into the Secret, application settings kept and their drift reported
/// then corrected, a scheduled backup, and a restore into a new deployment.
pub async fn a_numbers_life_as_code(env: &'static Env) -> Result<()> {
    let c = &env.admin;
    let (ns, port) = env.slot("life");
    let number = unique_number();
    let mut deployment = Deployment::start_unregistered("life", &number, "2.53.2", (1, 6))?;
    let secrets = typed::<Secret>(c, &ns);
    let namespace: Namespace = serde_json::from_value(json!({"metadata": {"name": ns}}))?;
    Api::<Namespace>::all(c.clone()).create(&PostParams::default(), &namespace).await?;
    let webhook_ca = std::fs::read_to_string(emulated::pki(&work_dir().join("pki-life"))?.ca)?;
    let secret = |name: &str, key: &str, value: String| Secret {
        metadata: ObjectMeta { name: Some(name.into()), ..Default::default() },
        string_data: Some(BTreeMap::from([(key.to_string(), value)])),
        ..Default::default()
    };
    // The registration Secret comes later, once its absence is reported.
    for (name, key, value) in
        [("backup-password", "password", "Backup-passw0rd".to_string()), ("webhook-ca", "ca.crt", webhook_ca.clone())]
    {
        secrets.create(&PostParams::default(), &secret(name, key, value)).await?;
    }
    let life = json!({
        "registration": {"secretRef": {"name": "registration"}, "method": "sms"},
        "settings": {"webhookUrl": "https://hooks.example.com/wa", "callbackBackoffDelayMs": 3000,
            "webhookCASecretRef": {"name": "webhook-ca"}},
        "backup": {"schedule": "* * * * *", "passwordSecretRef": {"name": "backup-password"}, "keep": 1}
    });
    let mut spec = json!({});
    if let (Some(target), Some(extra)) = (spec.as_object_mut(), life.as_object()) {
        target.extend(extra.clone());
    }
    prepare_in(c, &ns, &number, spec).await?;
    let api = wans(c, &ns);
    // The webapp first: with no node answering, the client's health says
    // nothing of the registration, so nothing is taken for registered.
    let key = api_key(c, &ns).await?;
    let url = deployment.webapp(&key, port)?;
    wait_condition(&api, NAME, "GatewayConnected", "False", "NoPrimaryMaster")
        .await
        .with_context(|| deployment.logs())?;
    for master in [true, true, false, false] {
        deployment.node(master)?;
    }

    // No registration Secret: said as such, with Stalled, and nothing sent.
    let w =
        wait_condition(&api, NAME, "Registered", "False", "SecretNotFound").await.with_context(|| deployment.logs())?;
    let message = &condition(&w, "Registered").unwrap().message;
    ensure!(message.contains(&format!("Secret {ns}/registration")), "{message}");
    ensure!(condition(&w, "Stalled").is_some_and(|s| s.status == "True" && s.reason == "SecretNotFound"));
    ensure!(deployment.sent_code(&number).await?.is_none(), "a code was requested without the certificate");
    ensure!(w.status.as_ref().is_some_and(|s| s.registration.is_none()), "nothing sent, nothing recorded");
    secrets.create(&PostParams::default(), &secret("registration", "cert", deployment.certificate(&number)?)).await?;

    // The operator requests the code once; a person puts it into the Secret.
    let w =
        wait_condition(&api, NAME, "Registered", "False", "WaitingForCode").await.with_context(|| deployment.logs())?;
    ensure!(condition(&w, "Ready").is_some_and(|r| r.status == "False"), "never Ready while unregistered");
    let code = deployment.sent_code(&number).await?.ok_or_else(|| anyhow!("no code was sent"))?;
    let requested_at = |w: &WhatsAppNumber| w.status.as_ref()?.registration.as_ref()?.code_requested_at.clone();
    let first_request = requested_at(&w);
    ensure!(first_request.is_some(), "the request time is recorded");
    // The status is lost while the code is awaited (the object restored from
    // a copy without it, say): the media claim says a code was requested, so
    // none is requested again and the code sent stays the one to put in.
    wait_for_media_record(c, &ns, "whatsapp.operators.dev/registration", "CodeRequested").await?;
    let lost = json!({"status": {"registration": null}});
    api.patch_status(NAME, &PatchParams::default(), &Patch::Merge(&lost)).await?;
    support::fault("the WhatsAppNumber's registration status wiped");
    wait_until(Duration::from_secs(60), "the registration back in status from the claim", || async {
        Ok(api.get(NAME).await?.status.is_some_and(|s| s.registration.is_some()))
    })
    .await
    .with_context(|| deployment.logs())?;
    let w = api.get(NAME).await?;
    ensure!(requested_at(&w) == first_request, "no second request: {:?}", w.status.as_ref().map(|s| &s.registration));
    ensure!(deployment.sent_code(&number).await?.as_deref() == Some(code.as_str()), "the code sent is the same");
    ensure!(
        condition(&w, "Registered").is_some_and(|r| r.reason == "WaitingForCode"),
        "{:?}",
        condition(&w, "Registered")
    );
    // A wrong code first: refused, and not tried again by itself.
    merge_secret(&secrets, "registration", "code", "000000").await?;
    let w =
        wait_condition(&api, NAME, "Registered", "False", "CodeRefused").await.with_context(|| deployment.logs())?;
    ensure!(
        condition(&w, "Stalled").is_some_and(|s| s.status == "True" && s.reason == "CodeRefused"),
        "a person must answer: {:?}",
        condition(&w, "Stalled")
    );
    merge_secret(&secrets, "registration", "code", &code).await?;
    let w = wait_condition(&api, NAME, "Registered", "True", "Registered").await.with_context(|| deployment.logs())?;
    ensure!(w.status.as_ref().is_some_and(|s| s.registration.as_ref().is_some_and(|r| r.code_requested_at.is_some())));
    let w = wait_ready(&api, NAME).await.with_context(|| deployment.logs())?;
    ensure!(w.status.as_ref().is_some_and(|s| s.registered_at.is_some()), "the registration time is recorded");

    // Logged off (by hand: set-shards with a certificate not issued for the
    // number): no code is requested on the operator's own initiative, since
    // the number may be in use elsewhere; a person asks for one.
    let (client, token) = admin_client(c, &ns, &url).await?;
    let wrong_certificate = json!({
        "cc": "1",
        "phone_number": number.trim_start_matches("+1"),
        "shards": 1,
        "cert": "bm90IGEgY2VydGlmaWNhdGU=",
    });
    let response =
        client.post(format!("{url}/v1/account/shards")).bearer_auth(&token).json(&wrong_certificate).send().await?;
    ensure!(response.status().as_u16() == 400, "logged off by hand: {}", response.text().await?);
    let w = wait_condition(&api, NAME, "Registered", "False", "LoggedOff").await.with_context(|| deployment.logs())?;
    ensure!(
        condition(&w, "Stalled").is_some_and(|s| s.status == "True" && s.reason == "LoggedOff"),
        "a person must answer: {:?}",
        condition(&w, "Stalled")
    );
    tokio::time::sleep(Duration::from_secs(13)).await;
    ensure!(deployment.sent_code(&number).await?.is_none(), "no code was requested");
    let again = json!({"metadata": {"annotations": {"whatsapp.operators.dev/request-code": "after-log-off"}}});
    merge_patch(&api, NAME, again).await?;
    wait_condition(&api, NAME, "Registered", "False", "WaitingForCode").await.with_context(|| deployment.logs())?;
    let code = deployment.sent_code(&number).await?.ok_or_else(|| anyhow!("no code was sent"))?;
    merge_secret(&secrets, "registration", "code", &code).await?;
    wait_condition(&api, NAME, "Registered", "True", "Registered").await.with_context(|| deployment.logs())?;
    wait_ready(&api, NAME).await.with_context(|| deployment.logs())?;

    // Settings: applied, then changed by hand through the API.
    wait_condition(&api, NAME, "SettingsApplied", "True", "InSync").await.with_context(|| deployment.logs())?;
    let (client, token) = admin_client(c, &ns, &url).await?;
    let settings = |client: reqwest::Client, token: String, url: String| async move {
        let v: serde_json::Value =
            client.get(format!("{url}/v1/settings/application")).bearer_auth(&token).send().await?.json().await?;
        anyhow::Ok(v.pointer("/settings/application/webhooks/url").and_then(|u| u.as_str()).map(String::from))
    };
    ensure!(
        settings(client.clone(), token.clone(), url.clone()).await?.as_deref() == Some("https://hooks.example.com/wa")
    );
    let ca = client.get(format!("{url}/v1/certificates/webhooks/ca")).bearer_auth(&token).send().await?;
    ensure!(ca.status().is_success(), "the webhook CA was uploaded: {}", ca.status());
    ensure!(ca.text().await?.trim() == webhook_ca.trim(), "the client holds the webhook CA from the Secret");
    let by_hand = json!({"webhooks": {"url": "https://elsewhere.example.com/"}});
    let r = client.patch(format!("{url}/v1/settings/application")).bearer_auth(&token).json(&by_hand).send().await?;
    ensure!(r.status().is_success(), "PATCH by hand: {}", r.status());
    let w = wait_condition(&api, NAME, "SettingsApplied", "False", "SettingsDrifted").await?;
    ensure!(condition(&w, "SettingsApplied").is_some_and(|s| s.message.contains("webhooks.url")));
    ensure!(
        settings(client.clone(), token.clone(), url.clone()).await?.as_deref()
            == Some("https://elsewhere.example.com/"),
        "only reported"
    );
    // Another spec change is no new settings: the change by hand stays.
    let w = merge_patch(&api, NAME, json!({"spec": {"health": {"pollIntervalSeconds": 6}}})).await?;
    let generation = w.metadata.generation;
    wait_until(READY_TIMEOUT, "the other spec change reconciled, the drift still reported", || async {
        let w = api.get(NAME).await?;
        Ok(w.status.as_ref().and_then(|s| s.observed_generation) == generation
            && condition(&w, "SettingsApplied")
                .is_some_and(|c| c.reason == "SettingsDrifted" && c.observed_generation == generation))
    })
    .await?;
    // Two probes later, still as the person left it.
    tokio::time::sleep(Duration::from_secs(13)).await;
    ensure!(
        settings(client.clone(), token.clone(), url.clone()).await?.as_deref()
            == Some("https://elsewhere.example.com/"),
        "an unrelated spec change wrote the settings over the change by hand"
    );
    merge_patch(&api, NAME, json!({"spec": {"settings": {"driftPolicy": "Correct"}}})).await?;
    wait_condition(&api, NAME, "SettingsApplied", "True", "InSync").await?;
    ensure!(settings(client, token, url).await?.as_deref() == Some("https://hooks.example.com/wa"), "corrected");

    // A scheduled backup, kept as a Secret that outlives the object.
    let w = wait_until(Duration::from_secs(150), "a scheduled backup", || async {
        let w = api.get(NAME).await?;
        Ok(condition(&w, "BackedUp").is_some_and(|b| b.status == "True"))
    })
    .await
    .with_context(|| deployment.logs());
    w?;
    let latest = || async {
        let w = api.get(NAME).await?;
        w.status.as_ref().and_then(|s| s.backup.as_ref()?.latest.clone()).ok_or_else(|| anyhow!("no backup"))
    };
    let first_backup = latest().await?;
    ensure!(secrets.get(&first_backup).await?.data.unwrap_or_default().contains_key("backup"));
    // The next one replaces it (keep: 1).
    wait_until(Duration::from_secs(150), "the next backup, the first one deleted", || async {
        Ok(latest().await? != first_backup && secrets.get_opt(&first_backup).await?.is_none())
    })
    .await?;
    let backup = latest().await?;
    ensure!(secrets.get(&backup).await?.data.unwrap_or_default().contains_key("backup"));
    let metrics = env.operator_metrics().await?;
    ensure!(metrics.contains("whatsapp_operator_number_backup_last_success_timestamp_seconds{"), "backup metric");

    // The number moves to a new setup: the old one goes, a new one restores.
    api.delete(NAME, &Default::default()).await?;
    wait_until(READY_TIMEOUT, "the old WhatsAppNumber gone", || async { Ok(api.get_opt(NAME).await?.is_none()) })
        .await?;
    deployment.stop_all();
    ensure!(secrets.get_opt(&backup).await?.is_some(), "backups outlive the WhatsAppNumber");
    // Its keys go with it (garbage collection), before the new object makes its own.
    let keys = format!("{NAME}-keys");
    wait_until(READY_TIMEOUT, "the old key Secret collected", || async { Ok(secrets.get_opt(&keys).await?.is_none()) })
        .await?;
    let mut moved = deployment.another_instance("life-moved")?;
    // First a backup labelled as made for another number: restoring it would
    // run a second instance of that number, so it is refused.
    let mut foreign = secrets.get(&backup).await?;
    foreign.metadata = ObjectMeta {
        name: Some("foreign-backup".into()),
        labels: Some(BTreeMap::from([("whatsapp.operators.dev/number".to_string(), "15559990000".to_string())])),
        ..Default::default()
    };
    secrets.create(&PostParams::default(), &foreign).await?;
    prepare_in(
        c,
        &ns,
        &number,
        json!({"restoreFrom": {"secretRef": {"name": "foreign-backup"}, "passwordSecretRef": {"name": "backup-password"}}}),
    )
    .await?;
    for master in [true, true, false, false] {
        moved.node(master)?;
    }
    let key = api_key(c, &ns).await?;
    moved.webapp(&key, port)?;
    let w = wait_condition(&api, NAME, "Restored", "False", "RestoreRefused").await.with_context(|| moved.logs())?;
    ensure!(
        condition(&w, "Restored").is_some_and(|r| r.message.contains("+15559990000")),
        "names the backup's number: {:?}",
        condition(&w, "Restored")
    );
    ensure!(
        condition(&w, "Stalled").is_some_and(|s| s.status == "True" && s.reason == "RestoreRefused"),
        "a person must answer: {:?}",
        condition(&w, "Stalled")
    );
    // The harness appends to its log files: only this number's lines count.
    let digits = number.trim_start_matches('+').to_string();
    ensure!(
        !moved.logs().lines().any(|l| l.contains("settings restored from a backup") && l.contains(&digits)),
        "nothing was restored: {}",
        moved.logs()
    );
    // The number's own backup, whose password is not there yet: the restore
    // waits and is tried again once it is.
    let password = secrets.get("backup-password").await?;
    secrets.delete("backup-password", &Default::default()).await?;
    merge_patch(
        &api,
        NAME,
        // The key is left to its default, the one the operator writes its backups under.
        json!({"spec": {"restoreFrom": {"secretRef": {"name": backup}}}}),
    )
    .await?;
    let w = wait_condition(&api, NAME, "Restored", "False", "RestoreRetrying").await.with_context(|| moved.logs())?;
    ensure!(
        condition(&w, "Restored").is_some_and(|r| r.message.contains("backup-password")),
        "names what is missing: {:?}",
        condition(&w, "Restored")
    );
    let again =
        Secret { metadata: ObjectMeta { name: Some("backup-password".into()), ..Default::default() }, ..password };
    secrets.create(&PostParams::default(), &again).await?;
    wait_condition(&api, NAME, "Restored", "True", "Restored").await.with_context(|| moved.logs())?;
    let w = wait_ready(&api, NAME).await.with_context(|| moved.logs())?;
    ensure!(w.status.as_ref().and_then(|s| s.health.as_ref()).is_some_and(|h| h.gateway == "connected"));
    // The registration came back with the backup: its age is not known, so a
    // shard change would wait for a person's confirmation.
    ensure!(
        w.status.as_ref().is_some_and(|s| s.registered_at.is_none()),
        "a restored registration has no registration time: {:?}",
        w.status.as_ref().map(|s| &s.registered_at)
    );
    // The status is lost (the object restored from a copy without it, say):
    // the client is found registered and connected, so the backup is not
    // restored over it, and that is recorded.
    let restores = |logs: &str| {
        logs.lines().filter(|l| l.contains("settings restored from a backup") && l.contains(&digits)).count()
    };
    ensure!(restores(&moved.logs()) == 1, "one restore: {}", moved.logs());
    let lost = json!({"status": {"restore": null}});
    api.patch_status(NAME, &PatchParams::default(), &Patch::Merge(&lost)).await?;
    let w = wait_condition(&api, NAME, "Restored", "False", "AlreadyRegistered").await.with_context(|| moved.logs())?;
    ensure!(
        w.status
            .as_ref()
            .and_then(|s| s.restore.as_ref())
            .is_some_and(|r| r.outcome == RestoreOutcome::AlreadyRegistered && r.from == backup),
        "recorded: {:?}",
        w.status.as_ref().map(|s| &s.restore)
    );
    ensure!(restores(&moved.logs()) == 1, "not restored again: {}", moved.logs());
    support::delete_namespace(c, &ns).await;
    Ok(())
}

/// Backups in an S3-compatible store over HTTPS with a private CA: refused
/// credentials are reported and tried again once put right, a store that
/// went away is tried again after a backoff, then each scheduled backup is
/// one object, only this number's oldest objects beyond `keep` are deleted,
/// and a new setup restores from the store.
pub async fn backups_in_object_storage(env: &'static Env) -> Result<()> {
    let c = &env.admin;
    let (ns, port) = env.slot("objects");
    let number = unique_number();
    let mut store = emulated::ObjectStore::start("objects", "backups")?;
    let objects = store.client()?;
    let mut deployment = Deployment::start("objects", &number, "2.53.2", (1, 6))?;
    let namespace: Namespace = serde_json::from_value(json!({"metadata": {"name": ns}}))?;
    Api::<Namespace>::all(c.clone()).create(&PostParams::default(), &namespace).await?;
    let secrets = typed::<Secret>(c, &ns);
    let credentials = BTreeMap::from([
        ("accessKeyId".to_string(), store.access_key_id.clone()),
        ("secretAccessKey".to_string(), "not-the-secret".to_string()),
    ]);
    for (name, data) in [
        ("backup-password", BTreeMap::from([("password".to_string(), "Backup-passw0rd".to_string())])),
        ("store-credentials", credentials),
        ("store-ca", BTreeMap::from([("ca.crt".to_string(), std::fs::read_to_string(&store.ca)?)])),
    ] {
        let secret = Secret {
            metadata: ObjectMeta { name: Some(name.into()), ..Default::default() },
            string_data: Some(data),
            ..Default::default()
        };
        secrets.create(&PostParams::default(), &secret).await?;
    }
    let prefix = format!("{ns}/{NAME}/");
    let location = json!({"bucket": "backups", "endpoint": store.endpoint,
        "credentialsSecretRef": {"name": "store-credentials"}, "caSecretRef": {"name": "store-ca"}});
    let backup = json!({"backup": {"schedule": "* * * * *", "keep": 1,
        "passwordSecretRef": {"name": "backup-password"}, "objectStore": location}});
    prepare_in(c, &ns, &number, backup).await?;
    let api = wans(c, &ns);
    for master in [true, true, false, false] {
        deployment.node(master)?;
    }
    let key = api_key(c, &ns).await?;
    deployment.webapp(&key, port)?;
    wait_ready(&api, NAME).await.with_context(|| deployment.logs())?;

    // A wrong secret access key: the store refuses the signature, status says so.
    let backed_up = |status: &'static str, reason: &'static str| {
        let api = api.clone();
        async move {
            let found = |w: WhatsAppNumber| {
                condition(&w, "BackedUp")
                    .filter(|b| b.status == status && b.reason == reason)
                    .map(|b| b.message.clone())
            };
            wait_until(Duration::from_secs(150), &format!("BackedUp={status} {reason}"), || async {
                Ok(found(api.get(NAME).await?).is_some())
            })
            .await?;
            found(api.get(NAME).await?).ok_or_else(|| anyhow!("BackedUp={status} {reason}"))
        }
    };
    let message = backed_up("False", "BackupFailed").await.with_context(|| store.log())?;
    ensure!(message.contains("SignatureDoesNotMatch"), "the store's refusal is shown: {message}");
    let backup_status = || async {
        let w = api.get(NAME).await?;
        w.status.and_then(|s| s.backup).map(|b| *b).ok_or_else(|| anyhow!("no backup status"))
    };
    let attempted = |b: &whatsapp_operator::api::BackupStatus| {
        b.last_attempt_time.as_ref().map(|t| t.0).ok_or_else(|| anyhow!("the failed attempt's time"))
    };
    let mut failed = backup_status().await?;
    let next = |at| whatsapp_operator::lifecycle::next_backup("* * * * *", at).map_err(anyhow::Error::msg);
    // The retry for the change must be told from the next scheduled attempt
    // (the minute after the failed one): when the failed attempt came late
    // in its minute, the next one (failing too) is waited for.
    while next(attempted(&failed)?)?.duration_since(jiff::Timestamp::now()) < jiff::SignedDuration::from_secs(35) {
        let before = attempted(&failed)?;
        wait_until(Duration::from_secs(90), "the next failed attempt", || async {
            Ok(attempted(&backup_status().await?)? > before)
        })
        .await?;
        failed = backup_status().await?;
    }
    let failed_at = attempted(&failed)?;
    ensure!(failed.failed_with.is_some(), "what the failed attempt was made with is recorded: {failed:?}");
    merge_secret(&secrets, "store-credentials", "secretAccessKey", &store.secret_access_key).await?;
    backed_up("True", "BackedUp").await.with_context(|| store.log())?;
    // Tried again once the credentials changed, not at the next scheduled time.
    let scheduled = next(failed_at)?;
    let succeeded = backup_status().await?;
    let success_at = succeeded.last_success_time.ok_or_else(|| anyhow!("the backup's time"))?.0;
    ensure!(success_at < scheduled, "retried when the Secret changed: {success_at} (failed {failed_at})");
    ensure!(succeeded.failed_with.is_none(), "a success forgets the failed attempt");

    // The store goes away: the next scheduled attempt (at the top of the
    // next minute, counted from the last attempt) fails, and once the store
    // is back the backoff's retry, 30 s after, comes before the next
    // scheduled time, with nothing changed.
    store.stop();
    let message = backed_up("False", "BackupFailed").await.with_context(|| store.log())?;
    let away = backup_status().await?;
    let away_at = attempted(&away)?;
    ensure!(away.consecutive_failures == 1, "one failure counted: {away:?}");
    ensure!(message.contains("; 1 attempt failed; tried again by itself not before "), "says when: {message}");
    let late = away_at.to_zoned(jiff::tz::TimeZone::UTC).second();
    ensure!(late < 20, "the scheduled attempt failed {late} s into its minute: {away:?}");
    store.resume()?;
    let message = backed_up("True", "BackedUp").await.with_context(|| store.log())?;
    let back = backup_status().await?;
    let back_at = back.last_success_time.as_ref().ok_or_else(|| anyhow!("the backup's time"))?.0;
    ensure!(back_at < next(away_at)?, "retried after the backoff: {back_at} (failed {away_at})");
    ensure!(back.consecutive_failures == 0 && back.failed_with.is_none(), "a success resets the count: {back:?}");

    // Something else under the number's prefix: never taken for a backup.
    let notes = format!("{prefix}notes.txt");
    objects.put(&notes, b"not a backup".to_vec(), &[]).await.map_err(anyhow::Error::msg)?;
    let latest = || async {
        let w = api.get(NAME).await?;
        w.status.as_ref().and_then(|s| s.backup.as_ref()?.latest.clone()).ok_or_else(|| anyhow!("no backup"))
    };
    let first = latest().await?;
    ensure!(message.contains(&first), "the condition names the object: {message}");
    let first_key = first
        .strip_prefix("s3://backups/")
        .filter(|k| k.starts_with(&format!("{prefix}{NAME}-backup-")))
        .ok_or_else(|| anyhow!("an object under {prefix}: {first}"))?
        .to_string();
    ensure!(!objects.get(&first_key).await.map_err(anyhow::Error::msg)?.is_empty(), "the backup holds data");

    // The next one replaces it (keep: 1); the other object stays.
    let list = || async { objects.list(&prefix).await.map_err(anyhow::Error::msg) };
    wait_until(Duration::from_secs(150), "the next backup, the first one deleted", || async {
        Ok(latest().await? != first && !list().await?.contains(&first_key))
    })
    .await?;
    let second = latest().await?;
    let second_key = second.trim_start_matches("s3://backups/").to_string();
    let mut listed = list().await?;
    listed.sort();
    ensure!(listed == [second_key.clone(), notes.clone()], "only the newest backup and the other object: {listed:?}");

    // The number moves to a new setup that restores from the store.
    api.delete(NAME, &Default::default()).await?;
    wait_until(READY_TIMEOUT, "the old WhatsAppNumber gone", || async { Ok(api.get_opt(NAME).await?.is_none()) })
        .await?;
    deployment.stop_all();
    let keys = format!("{NAME}-keys");
    wait_until(READY_TIMEOUT, "the old key Secret collected", || async { Ok(secrets.get_opt(&keys).await?.is_none()) })
        .await?;
    let mut moved = deployment.new_setup("objects-moved")?;
    let mut from = location.clone();
    from["key"] = json!(second_key);
    prepare_in(
        c,
        &ns,
        &number,
        json!({"restoreFrom": {"objectStore": from, "passwordSecretRef": {"name": "backup-password"}}}),
    )
    .await?;
    for master in [true, true, false, false] {
        moved.node(master)?;
    }
    let key = api_key(c, &ns).await?;
    moved.webapp(&key, port)?;
    let w = wait_condition(&api, NAME, "Restored", "True", "Restored").await.with_context(|| moved.logs())?;
    ensure!(condition(&w, "Restored").is_some_and(|r| r.message.contains(&second)), "names the object restored");
    let w = wait_ready(&api, NAME).await.with_context(|| moved.logs())?;
    ensure!(w.status.as_ref().and_then(|s| s.health.as_ref()).is_some_and(|h| h.gateway == "connected"));
    ensure!(objects.get(&second_key).await.is_ok(), "a restore deletes nothing");
    support::delete_namespace(c, &ns).await;
    Ok(())
}

/// At rest the probes go on, every 5 s here, and find nothing new: the
/// number is neither reconciled nor written. A spell of two probe intervals
/// must pass with probes and without either (other causes, such as the
/// periodic resync, may fall into one spell, so a few are tried).
async fn quiet_while_probed(env: &'static Env, api: &Api<WhatsAppNumber>, ns: &str) -> Result<()> {
    let reconciled = |log: &str| log.matches(&format!("reconciled name={NAME} namespace=Some(\"{ns}\")")).count();
    let probed_at = |metrics: &str| {
        metrics
            .lines()
            .find(|l| l.starts_with("whatsapp_operator_health_probe_timestamp_seconds{") && l.contains(ns))
            .and_then(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
    };
    let mut spells = Vec::new();
    for _ in 0..5 {
        let before = (api.get(NAME).await?.resource_version(), reconciled(&env.operator_log()));
        let probed_before = probed_at(&env.operator_metrics().await?);
        tokio::time::sleep(Duration::from_secs(12)).await;
        let after = (api.get(NAME).await?.resource_version(), reconciled(&env.operator_log()));
        let probed_after = probed_at(&env.operator_metrics().await?);
        let probes_ran = probed_before.zip(probed_after).is_some_and(|(b, a)| a > b);
        if before == after && probes_ran {
            return Ok(());
        }
        spells.push(format!("{before:?} -> {after:?}, probed {probed_before:?} -> {probed_after:?}"));
    }
    anyhow::bail!("no quiet spell at rest (resource version, reconciles): {spells:#?}")
}

async fn merge_secret(secrets: &Api<Secret>, name: &str, key: &str, value: &str) -> Result<()> {
    let patch = json!({"stringData": {key: value}});
    secrets.patch(name, &kube::api::PatchParams::default(), &kube::api::Patch::Merge(&patch)).await?;
    Ok(())
}

/// The database Secret and a WhatsAppNumber, in an existing namespace.
async fn prepare_in(c: &Client, ns: &str, number: &str, spec: serde_json::Value) -> Result<()> {
    if typed::<Secret>(c, ns).get_opt("ha-mysql-db").await?.is_none() {
        apply_example(c, ns, "ha-mysql.yaml", Some("Secret")).await?;
    }
    let mut wan: serde_json::Value = json!({
        "apiVersion": "whatsapp.operators.dev/v1alpha1",
        "kind": "WhatsAppNumber",
        "metadata": {"name": NAME, "namespace": ns},
        "spec": {
            "phoneNumber": number,
            "version": "2.53.2",
            "database": {"engine": "MySQL", "host": "db", "credentialsSecretRef": {"name": "ha-mysql-db"}},
            "health": {"pollIntervalSeconds": 5}
        }
    });
    if let (Some(target), Some(extra)) = (wan["spec"].as_object_mut(), spec.as_object()) {
        for (k, v) in extra {
            target.insert(k.clone(), v.clone());
        }
    }
    let wan: WhatsAppNumber = serde_json::from_value(wan)?;
    wans(c, ns).create(&PostParams::default(), &wan).await?;
    Ok(())
}

/// Ready at the current generation with the client reporting `shards`.
async fn wait_until_shards(api: &Api<WhatsAppNumber>, shards: i32) -> Result<WhatsAppNumber> {
    wait_until(READY_TIMEOUT, &format!("{shards} shards through the API and Ready"), || async {
        let w = api.get(NAME).await?;
        Ok(ready_now(&w) && health_of(&w).shards == Some(shards))
    })
    .await?;
    Ok(api.get(NAME).await?)
}

/// A webapp that accepts connections and never answers holds its probe for
/// the whole timeout, and nothing else: while a probe's connection is still
/// open, a spec change of the same number is reconciled and its deletion
/// completes. The result, once the timeout passes, says the webapp timed out.
pub async fn a_hanging_webapp_delays_nothing(env: &'static Env) -> Result<()> {
    let c = &env.admin;
    let (ns, port) = env.slot("hanging");
    let listener = SilentListener::bind(port).await?;
    support::fault("a webapp that accepts connections and never answers");
    // The longest timeout the schema allows: each probe call hangs for 60 s.
    prepare(c, &ns, &unique_number(), json!({"health": {"pollIntervalSeconds": 5, "timeoutSeconds": 60}})).await?;
    let api = wans(c, &ns);

    let first = listener.next_held(READY_TIMEOUT).await?;
    let w = merge_patch(&api, NAME, json!({"spec": {"webapp": {"replicas": 3}}})).await?;
    let generation = w.metadata.generation;
    wait_until(READY_TIMEOUT, "the spec change observed", || async {
        let w = api.get(NAME).await?;
        Ok(w.status.as_ref().and_then(|s| s.observed_generation) == generation)
    })
    .await?;
    ensure!(listener.is_open(first), "the spec change waited for the hanging probe to give up");
    let w = api.get(NAME).await?;
    ensure!(!ready_now(&w), "never Ready without an answer from the webapp");

    wait_until(READY_TIMEOUT, "the probe's timeout reported", || async {
        let w = api.get(NAME).await?;
        Ok(condition(&w, "GatewayConnected")
            .is_some_and(|g| g.reason == "WebappUnreachable" && g.message.contains("timed out")))
    })
    .await?;
    let w = api.get(NAME).await?;
    let ready = condition(&w, "Ready").ok_or_else(|| anyhow!("no Ready condition"))?;
    ensure!(ready.status == "False" && ready.reason == "WebappUnreachable", "{ready:?}");

    let held = listener.next_held(READY_TIMEOUT).await?;
    api.delete(NAME, &Default::default()).await?;
    wait_until(READY_TIMEOUT, "the number deleted", || async { Ok(api.get_opt(NAME).await?.is_none()) }).await?;
    ensure!(listener.is_open(held), "the deletion waited for the hanging probe to give up");
    support::delete_namespace(c, &ns).await;
    Ok(())
}

/// Accepts TCP connections and never writes a byte; remembers which ones the
/// other side has closed.
struct SilentListener {
    connections: std::sync::Arc<std::sync::Mutex<Vec<bool>>>,
    task: tokio::task::JoinHandle<()>,
}

impl SilentListener {
    async fn bind(port: u16) -> Result<Self> {
        use tokio::io::AsyncReadExt as _;
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", port)).await?;
        let connections = std::sync::Arc::new(std::sync::Mutex::new(Vec::<bool>::new()));
        let shared = connections.clone();
        let task = tokio::spawn(async move {
            while let Ok((mut socket, _)) = listener.accept().await {
                let id = {
                    let mut all = shared.lock().unwrap_or_else(|e| e.into_inner());
                    all.push(true);
                    all.len() - 1
                };
                let shared = shared.clone();
                tokio::spawn(async move {
                    let mut buf = [0u8; 4096];
                    while matches!(socket.read(&mut buf).await, Ok(n) if n > 0) {}
                    shared.lock().unwrap_or_else(|e| e.into_inner())[id] = false;
                });
            }
        });
        Ok(Self { connections, task })
    }

    fn is_open(&self, id: usize) -> bool {
        self.connections.lock().unwrap_or_else(|e| e.into_inner()).get(id).copied().unwrap_or(false)
    }

    /// A connection opened from now on that is still held open.
    async fn next_held(&self, timeout: Duration) -> Result<usize> {
        let from = self.connections.lock().unwrap_or_else(|e| e.into_inner()).len();
        wait_until(timeout, "a probe connecting to the silent webapp", || async {
            let all = self.connections.lock().unwrap_or_else(|e| e.into_inner());
            Ok(all.iter().skip(from).any(|open| *open))
        })
        .await?;
        let all = self.connections.lock().unwrap_or_else(|e| e.into_inner());
        Ok(all.iter().enumerate().skip(from).find(|(_, open)| **open).map(|(id, _)| id).expect("found above"))
    }
}

impl Drop for SilentListener {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Waits until the media claim's record `annotation` holds `text`.
async fn wait_for_media_record(c: &Client, ns: &str, annotation: &str, text: &str) -> Result<()> {
    let claims = typed::<k8s_openapi::api::core::v1::PersistentVolumeClaim>(c, ns);
    wait_until(Duration::from_secs(30), &format!("the media claim's {annotation} to hold {text}"), || async {
        let claim = claims.get(&format!("{NAME}-media")).await?;
        Ok(claim.annotations().get(annotation).is_some_and(|record| record.contains(text)))
    })
    .await
}
