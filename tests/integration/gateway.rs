//! Gateway scenarios: the operator's health judgement and shard changes
//! against emulator processes on real MariaDB standing in for the pods.

use std::collections::BTreeMap;
use std::time::Duration;

use anyhow::{Context as _, Result, anyhow, ensure};
use k8s_openapi::ByteString;
use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::{Namespace, Secret};
use kube::api::{ObjectMeta, PostParams};
use kube::{Api, Client};
use serde_json::json;
use whatsapp_operator::api::WhatsAppNumber;

use crate::Env;
use crate::emulated::{self, Deployment, Pki};
use crate::scenarios::{
    READY_TIMEOUT, apply_example, condition, merge_patch, ready_now, typed, unique_number, wait_condition, wait_ready,
    wans,
};
use crate::support::{self, wait_until, work_dir};

const NAME: &str = "acme";

/// The namespace of a slot, a CA Secret for the webapp certificate, the
/// database Secret and a WhatsAppNumber with health polling on.
pub async fn prepare(c: &Client, ns: &str, pki: &Pki, number: &str, spec: serde_json::Value) -> Result<()> {
    let namespace: Namespace = serde_json::from_value(json!({"metadata": {"name": ns}}))?;
    Api::<Namespace>::all(c.clone()).create(&PostParams::default(), &namespace).await?;
    let ca = Secret {
        metadata: ObjectMeta { name: Some("webapp-ca".into()), ..Default::default() },
        data: Some(BTreeMap::from([("ca.crt".to_string(), ByteString(std::fs::read(&pki.ca)?))])),
        ..Default::default()
    };
    typed::<Secret>(c, ns).create(&PostParams::default(), &ca).await?;
    apply_example(c, ns, "ha-mysql.yaml", Some("Secret")).await?;
    let mut wan: serde_json::Value = json!({
        "apiVersion": "whatsapp.operators.dev/v1alpha1",
        "kind": "WhatsAppNumber",
        "metadata": {"name": NAME, "namespace": ns},
        "spec": {
            "phoneNumber": number,
            "version": "2.53.2",
            "database": {"engine": "MySQL", "host": "db", "credentialsSecretRef": {"name": "ha-mysql-db"}},
            "health": {"pollIntervalSeconds": 5, "caSecretRef": {"name": "webapp-ca", "key": "ca.crt"}}
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

/// The API key the operator generated, once it exists.
pub async fn api_key(c: &Client, ns: &str) -> Result<String> {
    let secrets = typed::<Secret>(c, ns);
    wait_until(Duration::from_secs(30), "the generated key Secret", || async {
        Ok(secrets.get_opt(&format!("{NAME}-keys")).await?.is_some())
    })
    .await?;
    let data = secrets.get(&format!("{NAME}-keys")).await?.data.unwrap_or_default();
    let key = data.get("WA_API_KEY").ok_or_else(|| anyhow!("no WA_API_KEY"))?;
    Ok(String::from_utf8(key.0.clone())?)
}

fn health_of(w: &WhatsAppNumber) -> whatsapp_operator::api::HealthStatus {
    w.status.as_ref().and_then(|s| s.health.clone()).unwrap_or_default()
}

pub async fn health_reaches_ready_and_fails_over(env: &'static Env) -> Result<()> {
    let c = &env.admin;
    let (ns, port) = env.slot("health");
    let pki = emulated::pki(&work_dir().join("pki-health"))?;
    let number = unique_number();
    prepare(c, &ns, &pki, &number, json!({})).await?;
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
    deployment.webapp(&key, &pki, port)?;

    let w = wait_ready(&api, NAME).await.with_context(|| deployment.logs())?;
    let health = health_of(&w);
    ensure!(health.gateway == "connected", "{health:?}");
    ensure!((health.connected_coreapps, health.standby_coreapps) == (1, 1), "{health:?}");
    ensure!(health.primary_master.is_some() && health.shards == Some(1), "{health:?}");
    ensure!(health.nodes.len() == 4, "every node listed: {:?}", health.nodes);
    ensure!(condition(&w, "GatewayConnected").is_some_and(|g| g.status == "True"));
    let metrics = env.operator_metrics().await?;
    let up = metrics.lines().find(|l| l.starts_with("whatsapp_operator_number_gateway_up{") && l.contains(&ns));
    ensure!(up.is_some_and(|l| l.ends_with(" 1")), "gateway_up metric: {up:?}");

    // The connected coreapp dies: one shard is down until the standby takes over.
    let connected = health
        .nodes
        .iter()
        .find(|n| n.role.as_deref() == Some("coreapp") && n.gateway_status.as_deref() == Some("connected"))
        .map(|n| n.id.clone())
        .ok_or_else(|| anyhow!("no connected coreapp in {:?}", health.nodes))?;
    deployment.kill_node(&connected)?;
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
    support::delete_namespace(c, &ns).await;
    Ok(())
}

pub async fn shards_change_through_the_api(env: &'static Env) -> Result<()> {
    let c = &env.admin;
    let (ns, port) = env.slot("shards");
    let pki = emulated::pki(&work_dir().join("pki-shards"))?;
    let number = unique_number();
    prepare(c, &ns, &pki, &number, json!({"multiconnect": {"shards": 1, "standbyCoreapps": 1}})).await?;
    let api = wans(c, &ns);
    let mut deployment = Deployment::start("shards", &number, "2.53.2", (1, 6))?;
    for master in [true, true, false, false, false] {
        deployment.node(master)?;
    }
    let key = api_key(c, &ns).await?;
    let url = deployment.webapp(&key, &pki, port)?;
    wait_ready(&api, NAME).await.with_context(|| deployment.logs())?;

    // Sample the coreapp StatefulSet and the client's shard count all along:
    // there must always be a coreapp per shard plus the standby.
    let sts = typed::<StatefulSet>(c, &ns);
    let client = reqwest::Client::builder()
        .add_root_certificate(reqwest::Certificate::from_pem(&std::fs::read(&pki.ca)?)?)
        .build()?;
    let (stop_tx, mut stop_rx) = tokio::sync::oneshot::channel::<()>();
    let sampler = {
        let (sts, client, url, key) = (sts.clone(), client.clone(), url.clone(), key.clone());
        tokio::spawn(async move {
            let mut violations = Vec::new();
            let mut samples = 0;
            loop {
                let replicas = sts.get(&format!("{NAME}-coreapp")).await.ok().and_then(|s| s.spec?.replicas);
                let shards = client
                    .get(format!("{url}/v1/account/shards"))
                    .header("Authorization", format!("Apikey {key}"))
                    .send()
                    .await
                    .ok();
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

    // Growing needs the number's certificate: without it the condition says so.
    merge_patch(&api, NAME, json!({"spec": {"multiconnect": {"shards": 2}}})).await?;
    let w = wait_condition(&api, NAME, "Degraded", "True", "RegistrationRequired").await?;
    ensure!(condition(&w, "Degraded").is_some_and(|d| d.message.contains("spec.registration")));
    ensure!(
        w.status
            .as_ref()
            .and_then(|s| s.sharding.as_ref())
            .is_some_and(|s| s.phase == whatsapp_operator::api::ShardPhase::Blocked)
    );

    let registration = Secret {
        metadata: ObjectMeta { name: Some("registration".into()), ..Default::default() },
        string_data: Some(BTreeMap::from([("cert".to_string(), "Q2VydGlmaWNhdGUgb2YgdGhlIG51bWJlcg==".to_string())])),
        ..Default::default()
    };
    typed::<Secret>(c, &ns).create(&PostParams::default(), &registration).await?;
    merge_patch(&api, NAME, json!({"spec": {"registration": {"secretRef": {"name": "registration"}}}})).await?;
    let w = wait_until_shards(&api, 2).await.with_context(|| deployment.logs())?;
    ensure!(health_of(&w).connected_coreapps == 2, "{:?}", health_of(&w));
    ensure!(sts.get(&format!("{NAME}-coreapp")).await?.spec.and_then(|s| s.replicas) == Some(3));

    merge_patch(&api, NAME, json!({"spec": {"multiconnect": {"shards": 1}}})).await?;
    wait_until_shards(&api, 1).await.with_context(|| deployment.logs())?;
    wait_until(Duration::from_secs(30), "the coreapps to shrink after the shard change", || async {
        Ok(sts.get(&format!("{NAME}-coreapp")).await?.spec.and_then(|s| s.replicas) == Some(2))
    })
    .await?;

    let _ = stop_tx.send(());
    let (samples, violations) = sampler.await?;
    ensure!(samples > 10, "too few samples ({samples})");
    ensure!(violations.is_empty(), "a shard was without a coreapp: {violations:?}");
    support::delete_namespace(c, &ns).await;
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
