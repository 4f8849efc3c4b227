//! The gateway steps of a reconcile: probe the webapp's health, and carry a
//! shard change through the account API.

use std::collections::BTreeMap;
use std::time::Duration;

use k8s_openapi::api::core::v1::{Pod, Secret};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::api::ListParams;
use kube::{Api, ResourceExt};

use super::Context;
use super::fetch::Observed;
use crate::api::{ShardingStatus, WhatsAppNumber};
use crate::health::{self, Observation, report};
use crate::resources::names::LABEL_INSTANCE;
use crate::sharding::{self, Step};
use crate::webapp::{ShardRequest, Trust, Webapp, phone};

/// The webapp's base URL: an operator flag can map an object to a URL (for
/// running outside the cluster); otherwise the in-cluster Service.
pub fn webapp_url(ctx: &Context, wan: &WhatsAppNumber) -> String {
    let key = format!("{}/{}", wan.namespace().unwrap_or_default(), wan.name_any());
    ctx.settings.webapp_urls.get(&key).cloned().unwrap_or_else(|| {
        format!("https://{}:{}", crate::resources::webapp::service_host(wan), crate::resources::WEBAPP_PORT)
    })
}

fn secret_bytes(secret: Option<&Secret>, key: &str) -> Option<Vec<u8>> {
    secret?.data.as_ref()?.get(key).map(|v| v.0.clone()).filter(|v| !v.is_empty())
}

/// Which certificates to trust for the webapp, or why none can be chosen.
fn trust(wan: &WhatsAppNumber, observed: &Observed) -> Result<Trust, String> {
    let spec = &wan.spec.health;
    if spec.insecure_skip_tls_verify {
        return Ok(Trust::InsecureSkipVerify);
    }
    if let Some(r) = &spec.ca_secret_ref {
        return secret_bytes(observed.health_ca.as_ref(), &r.key).map(Trust::Ca).ok_or_else(|| {
            format!("spec.health.caSecretRef: Secret {} has no key {} (or does not exist)", r.name, r.key)
        });
    }
    Ok(secret_bytes(observed.webapp_tls.as_ref(), "ca.crt").map(Trust::Ca).unwrap_or(Trust::SystemRoots))
}

/// The API key the operator generated for itself.
pub fn api_key(keys: Option<&Secret>) -> Option<String> {
    secret_bytes(keys, crate::resources::config::API_KEY).and_then(|k| String::from_utf8(k).ok())
}

/// What a call to the webapp needs: a client trusting the right CA, the base
/// URL and the API key; or why one cannot be made.
struct Connection {
    client: reqwest::Client,
    url: String,
    key: String,
}

impl Connection {
    fn open(ctx: &Context, wan: &WhatsAppNumber, observed: &Observed, keys: Option<&Secret>) -> Result<Self, String> {
        let key = api_key(keys).ok_or("the generated API key Secret is missing its WA_API_KEY")?;
        let timeout = Duration::from_secs(wan.spec.health.timeout_seconds as u64);
        let client = ctx.http_client(&trust(wan, observed)?, timeout).map_err(|e| e.to_string())?;
        Ok(Self { client, url: webapp_url(ctx, wan), key })
    }

    fn webapp(&self) -> Webapp<'_> {
        Webapp { client: &self.client, base_url: &self.url, api_key: &self.key }
    }
}

/// Polls `/v1/health` (and the shard count) and judges the result by role.
pub async fn probe(ctx: &Context, wan: &WhatsAppNumber, observed: &Observed, keys: Option<&Secret>) -> Observation {
    let previous = wan.status.as_ref().and_then(|s| s.health.as_ref());
    let now = Time(k8s_openapi::jiff::Timestamp::now());
    let labels = ctx.metrics.number(wan);
    let connection = match Connection::open(ctx, wan, observed, keys) {
        Ok(c) => c,
        Err(why) => return health::unreachable(why, previous, &now),
    };
    let webapp = connection.webapp();
    let observation = match webapp.health().await {
        Ok((health, latency)) => {
            ctx.metrics.probe_latency.get_or_create(&labels).set(latency.as_secs_f64());
            // The shard count is read on the primary master; during a failover it
            // may be briefly unavailable (1017/1011), which leaves it unknown.
            let shards = webapp.shards().await.ok();
            let verdict = report::judge(&health, shards.unwrap_or(wan.spec.multiconnect.shards));
            let pods = pods_by_host(ctx, wan).await;
            health::observed(verdict, &health, shards, &pods, previous, &now)
        }
        Err(e) => health::unreachable(e.to_string(), previous, &now),
    };
    ctx.metrics.probe_timestamp.get_or_create(&labels).set(now.0.as_second() as f64);
    ctx.metrics.gateway_up.get_or_create(&labels).set(i64::from(observation.verdict.healthy));
    ctx.metrics.connected_coreapps.get_or_create(&labels).set(i64::from(observation.verdict.connected_coreapps));
    observation
}

async fn pods_by_host(ctx: &Context, wan: &WhatsAppNumber) -> BTreeMap<String, String> {
    let api: Api<Pod> = Api::namespaced(ctx.client.clone(), &wan.namespace().unwrap_or_default());
    let Ok(pods) = api.list(&ListParams::default().labels(&format!("{LABEL_INSTANCE}={}", wan.name_any()))).await
    else {
        return BTreeMap::new();
    };
    // A node's hostname is its pod's name (the container hostname) or its pod
    // IP (`COREAPP_HOSTNAME`); index both.
    let mut index = BTreeMap::new();
    for pod in pods.items {
        let name = pod.name_any();
        if let Some(ip) = pod.status.as_ref().and_then(|s| s.pod_ip.clone()) {
            index.insert(ip, name.clone());
        }
        index.insert(name.clone(), name);
    }
    index
}

/// Moves a shard change one step: calls the API when the plan says so and the
/// registration material is there. Returns the status block to show.
pub async fn reconcile_shards(
    ctx: &Context,
    wan: &WhatsAppNumber,
    observed: &Observed,
    health: &Observation,
    keys: Option<&Secret>,
    coreapps_ready: i32,
) -> ShardingStatus {
    let mc = &wan.spec.multiconnect;
    let current = health.block.shards;
    let plan = sharding::plan(mc.shards, mc.standby_coreapps, current, coreapps_ready);
    let Step::SetShards(n) = plan.step else {
        return sharding::status(mc.shards, current, &plan.step, None);
    };
    let request = match shard_request(wan, observed, n) {
        Ok(r) => r,
        Err(why) => return sharding::status(mc.shards, current, &plan.step, Some(&why)),
    };
    let connection = match Connection::open(ctx, wan, observed, keys) {
        Ok(c) => c,
        Err(why) => return sharding::status(mc.shards, current, &plan.step, Some(&why)),
    };
    let mut status = sharding::status(mc.shards, current, &plan.step, None);
    match connection.webapp().set_shards(&request).await {
        Ok(()) => {
            tracing::info!(shards = n, "the client accepted the shard change");
            status.message = format!("requested {n} shards; waiting for the client to report them");
        }
        Err(e) if e.is_retryable() => status.message = format!("shard change to {n} will be retried: {e}"),
        Err(e) => {
            status.phase = sharding::BLOCKED.into();
            status.message = format!("the client refused the shard change to {n}: {e}");
        }
    }
    status
}

fn shard_request(wan: &WhatsAppNumber, observed: &Observed, shards: i32) -> Result<ShardRequest, String> {
    let Some(registration) = &wan.spec.registration else {
        return Err("changing the shard count needs the number's certificate: set spec.registration.secretRef to a Secret with key `cert` (and `pin` with two-step verification)".into());
    };
    let r = &registration.secret_ref;
    let cert = secret_bytes(observed.registration.as_ref(), &r.cert_key)
        .and_then(|c| String::from_utf8(c).ok())
        .ok_or_else(|| {
            format!(
                "Secret {} named by spec.registration.secretRef has no key {} (or does not exist)",
                r.name, r.cert_key
            )
        })?;
    let pin = secret_bytes(observed.registration.as_ref(), &r.pin_key).and_then(|p| String::from_utf8(p).ok());
    let (cc, phone_number) = phone::split(&wan.spec.phone_number)
        .ok_or_else(|| format!("{} is not an E.164 number", wan.spec.phone_number))?;
    Ok(ShardRequest { cc, phone_number, shards, cert: cert.trim().to_string(), pin: pin.map(|p| p.trim().to_string()) })
}
