//! Master and coreapp StatefulSets and their headless Services.
//!
//! Both tiers run the coreapp image; masters add `WA_MASTER_NODE=1`. Each pod
//! advertises its pod IP as `COREAPP_HOSTNAME`, like Meta's templates.

use k8s_openapi::api::apps::v1::{StatefulSet, StatefulSetSpec, StatefulSetUpdateStrategy};
use k8s_openapi::api::core::v1::{
    Container, ContainerPort, EnvVar, EnvVarSource, ObjectFieldSelector, PodSpec, PodTemplateSpec, Probe, Service,
    ServicePort, ServiceSpec, TCPSocketAction,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use super::config::COREAPP_PORTS;
use super::names::{Names, Tier, component_labels, selector_labels};
use super::{owned_meta, pods, with_applied_hash};
use crate::api::WhatsAppNumber;

/// Port names, at most 15 characters: 6252 is the control port, 6253 the heartbeat.
const PORT_NAMES: [&str; 4] = ["wa-6250", "wa-6251", "wa-control", "wa-heartbeat"];

/// Pods of a coreapp-image tier: `masters`, or `shards + standbyCoreapps`.
pub fn replicas(wan: &WhatsAppNumber, tier: Tier) -> i32 {
    let mc = &wan.spec.multiconnect;
    match tier {
        Tier::Master => mc.masters,
        Tier::Coreapp => mc.shards + mc.standby_coreapps,
        Tier::Webapp => wan.spec.webapp.replicas,
    }
}

/// The grace period of a master or coreapp pod: time to leave the cluster
/// and close its connection before it is killed.
pub const NODE_GRACE_SECONDS: i64 = 60;

/// The pods of the number's coreapps, then masters, as (pod, container),
/// from the spec: StatefulSet pods keep their names, so the list changes
/// with the spec only, not with every pod that restarts.
pub fn node_pods(wan: &WhatsAppNumber) -> Vec<(String, String)> {
    let names = Names::new(wan);
    [Tier::Coreapp, Tier::Master]
        .into_iter()
        .flat_map(|tier| (0..replicas(wan, tier)).map(move |i| (tier, i)))
        .map(|(tier, i)| (format!("{}-{i}", names.tier(tier)), tier.as_str().to_string()))
        .collect()
}

/// Headless Service on 6250-6253 so peers and the webapps reach every pod;
/// not-ready pods are published because nodes find each other before they are ready.
pub fn headless_service(wan: &WhatsAppNumber, tier: Tier) -> Service {
    let names = Names::new(wan);
    with_applied_hash(Service {
        metadata: owned_meta(wan, names.tier(tier), component_labels(wan, tier.as_str())),
        spec: Some(ServiceSpec {
            cluster_ip: Some("None".into()),
            publish_not_ready_addresses: Some(true),
            selector: Some(selector_labels(wan, tier)),
            ports: Some(
                COREAPP_PORTS
                    .iter()
                    .zip(PORT_NAMES)
                    .map(|(port, name)| ServicePort {
                        name: Some(name.into()),
                        port: *port,
                        target_port: Some(IntOrString::Int(*port)),
                        protocol: Some("TCP".into()),
                        ..Default::default()
                    })
                    .collect(),
            ),
            ..Default::default()
        }),
        ..Default::default()
    })
}

/// The StatefulSet of masters or coreapps at `version`. `config_hash` rolls the
/// pods when the configuration they read at start-up changes; `replicas_override`
/// replaces the count the spec implies (a shard change, an upgrade).
pub fn stateful_set(
    wan: &WhatsAppNumber,
    tier: Tier,
    version: &str,
    config_hash: &str,
    replicas_override: Option<i32>,
) -> StatefulSet {
    assert!(tier != Tier::Webapp, "webapps are a Deployment");
    let names = Names::new(wan);
    let o = pods::overrides(wan, tier);

    let mut env = pods::database_credentials_env(wan);
    env.push(EnvVar {
        name: "COREAPP_HOSTNAME".into(),
        value_from: Some(EnvVarSource {
            // The API server's default, spelled out: the selector is stored
            // as one value, so it must equal the live one to show no drift.
            field_ref: Some(ObjectFieldSelector { field_path: "status.podIP".into(), api_version: Some("v1".into()) }),
            ..Default::default()
        }),
        ..Default::default()
    });
    // Meta's Kubernetes manifests: listen on every address, not only the
    // advertised one, so probes and Services reach the ports.
    env.push(pods::plain_env("WA_TCP_LISTEN_ADDRESS", "any"));
    if tier == Tier::Master {
        env.push(pods::plain_env("WA_MASTER_NODE", "1"));
    }

    let container = Container {
        name: tier.as_str().into(),
        image: Some(pods::image(&wan.spec.images.coreapp, version)),
        image_pull_policy: pods::pull_policy(wan),
        command: Some(pods::command(wan)),
        security_context: Some(pods::security_context(wan, tier)),
        env_from: Some(pods::env_from(wan)),
        env: Some(pods::with_extra_env(wan, tier, env)),
        ports: Some(
            COREAPP_PORTS
                .iter()
                .zip(PORT_NAMES)
                .map(|(port, name)| ContainerPort {
                    name: Some(name.into()),
                    container_port: *port,
                    protocol: Some("TCP".into()),
                    ..Default::default()
                })
                .collect(),
        ),
        resources: Some(pods::resources(wan, tier)),
        volume_mounts: Some(pods::volume_mounts(wan, true)),
        // A node waits for the database and, during an upgrade, for the schema;
        // the start-up probe gives it ten minutes before liveness applies.
        startup_probe: Some(tcp_probe(6250, 10, 60)),
        readiness_probe: Some(tcp_probe(6250, 10, 3)),
        liveness_probe: Some(tcp_probe(6250, 20, 6)),
        ..Default::default()
    };

    with_applied_hash(StatefulSet {
        metadata: owned_meta(wan, names.tier(tier), component_labels(wan, tier.as_str())),
        spec: Some(StatefulSetSpec {
            replicas: Some(replicas_override.unwrap_or_else(|| replicas(wan, tier))),
            service_name: Some(names.tier(tier)),
            // Nodes are peers coordinated through the database: no ordering needed.
            pod_management_policy: Some("Parallel".into()),
            selector: LabelSelector { match_labels: Some(selector_labels(wan, tier)), ..Default::default() },
            update_strategy: Some(StatefulSetUpdateStrategy {
                type_: Some("RollingUpdate".into()),
                ..Default::default()
            }),
            template: PodTemplateSpec {
                metadata: Some(pods::template_meta(wan, tier, version, config_hash)),
                spec: Some(pods::with_pod_settings(
                    wan,
                    tier,
                    PodSpec {
                        containers: vec![container],
                        volumes: Some(pods::volumes(wan, true)),
                        affinity: Some(pods::affinity(wan, tier)),
                        node_selector: pods::non_empty(&o.node_selector),
                        tolerations: (!o.tolerations.is_empty()).then(|| o.tolerations.clone()),
                        image_pull_secrets: pods::pull_secrets(wan),
                        termination_grace_period_seconds: Some(NODE_GRACE_SECONDS),
                        ..Default::default()
                    },
                )),
            },
            ..Default::default()
        }),
        ..Default::default()
    })
}

pub fn tcp_probe(port: i32, period_seconds: i32, failure_threshold: i32) -> Probe {
    Probe {
        tcp_socket: Some(TCPSocketAction { port: IntOrString::Int(port), host: None }),
        period_seconds: Some(period_seconds),
        failure_threshold: Some(failure_threshold),
        timeout_seconds: Some(5),
        ..Default::default()
    }
}
