//! The webapp Deployment (the REST API on 443) and its Service.

use k8s_openapi::api::apps::v1::{Deployment, DeploymentSpec, DeploymentStrategy, RollingUpdateDeployment};
use k8s_openapi::api::core::v1::{
    Container, ContainerPort, PodSpec, PodTemplateSpec, Service, ServicePort, ServiceSpec,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::ResourceExt;

use super::config::{API_KEY, JWT_KEY};
use super::names::{Names, Tier, component_labels, selector_labels};
use super::workloads::tcp_probe;
use super::{WEBAPP_PORT, owned_meta, pods, with_applied_hash};
use crate::api::WhatsAppNumber;

/// The in-cluster DNS name of the webapp Service.
pub fn service_host(wan: &WhatsAppNumber) -> String {
    format!("{}.{}.svc", Names::new(wan).tier(Tier::Webapp), wan.namespace().unwrap_or_default())
}

/// The name clients use for the webapp: the spec's, else the Service's.
pub fn server_name(wan: &WhatsAppNumber) -> String {
    wan.spec.webapp.server_name.clone().unwrap_or_else(|| service_host(wan))
}

pub fn service(wan: &WhatsAppNumber) -> Service {
    let svc = &wan.spec.webapp.service;
    let mut metadata = owned_meta(wan, Names::new(wan).tier(Tier::Webapp), component_labels(wan, "webapp"));
    metadata.annotations = pods::non_empty(&svc.annotations);
    with_applied_hash(Service {
        metadata,
        spec: Some(ServiceSpec {
            type_: Some(svc.type_.as_str().into()),
            selector: Some(selector_labels(wan, Tier::Webapp)),
            ports: Some(vec![ServicePort {
                name: Some("https".into()),
                port: WEBAPP_PORT,
                target_port: Some(IntOrString::Int(WEBAPP_PORT)),
                protocol: Some("TCP".into()),
                ..Default::default()
            }]),
            ..Default::default()
        }),
        ..Default::default()
    })
}

/// How webapps roll. With the required anti-affinity per node, a surge pod
/// finds no node when webapps fill every schedulable node, and a rollout that
/// waits for it never ends (an upgrade with it). So with several webapps one
/// may go while one extra comes, which always finishes and keeps all but one
/// serving; a single webapp surges first so that it never stops (its surge
/// pod may share its node: see [`pods::affinity`]).
pub fn rollout(replicas: i32) -> DeploymentStrategy {
    let max_unavailable = if replicas > 1 { 1 } else { 0 };
    DeploymentStrategy {
        type_: Some("RollingUpdate".into()),
        rolling_update: Some(RollingUpdateDeployment {
            max_unavailable: Some(IntOrString::Int(max_unavailable)),
            max_surge: Some(IntOrString::Int(1)),
        }),
    }
}

/// The webapp Deployment.
/// `replicas_override` holds them at zero while the first schema is created.
pub fn deployment(
    wan: &WhatsAppNumber,
    version: &str,
    config_hash: &str,
    replicas_override: Option<i32>,
) -> Deployment {
    let names = Names::new(wan);
    let o = pods::overrides(wan, Tier::Webapp);

    let mut env = pods::database_credentials_env(wan);
    env.push(pods::secret_env(JWT_KEY, &names.keys(), JWT_KEY));
    env.push(pods::secret_env(API_KEY, &names.keys(), API_KEY));
    env.push(pods::plain_env("WA_WEB_SERVERNAME", &server_name(wan)));

    // The certificate goes through the client's API, never a file: no
    // environment variable of the client names one.
    let volumes = pods::volumes(wan, false);
    let mounts = pods::volume_mounts(wan, false);

    let container = Container {
        name: "webapp".into(),
        image: Some(pods::image(&wan.spec.images.webapp, version)),
        image_pull_policy: pods::pull_policy(wan),
        command: Some(pods::command(wan)),
        security_context: Some(pods::security_context(wan, Tier::Webapp)),
        env_from: Some(pods::env_from(wan)),
        env: Some(pods::with_extra_env(wan, Tier::Webapp, env)),
        ports: Some(vec![ContainerPort {
            name: Some("https".into()),
            container_port: WEBAPP_PORT,
            protocol: Some("TCP".into()),
            ..Default::default()
        }]),
        resources: Some(pods::resources(wan, Tier::Webapp)),
        volume_mounts: Some(mounts),
        startup_probe: Some(tcp_probe(WEBAPP_PORT, 10, 60)),
        readiness_probe: Some(tcp_probe(WEBAPP_PORT, 10, 3)),
        liveness_probe: Some(tcp_probe(WEBAPP_PORT, 20, 6)),
        ..Default::default()
    };

    with_applied_hash(Deployment {
        metadata: owned_meta(wan, names.tier(Tier::Webapp), component_labels(wan, "webapp")),
        spec: Some(DeploymentSpec {
            replicas: Some(replicas_override.unwrap_or(wan.spec.webapp.replicas)),
            selector: LabelSelector { match_labels: Some(selector_labels(wan, Tier::Webapp)), ..Default::default() },
            strategy: Some(rollout(wan.spec.webapp.replicas)),
            template: PodTemplateSpec {
                metadata: Some(pods::template_meta(wan, Tier::Webapp, version, config_hash)),
                spec: Some(pods::with_pod_settings(
                    wan,
                    Tier::Webapp,
                    PodSpec {
                        containers: vec![container],
                        volumes: Some(volumes),
                        affinity: Some(pods::affinity(wan, Tier::Webapp)),
                        node_selector: pods::non_empty(&o.node_selector),
                        tolerations: (!o.tolerations.is_empty()).then(|| o.tolerations.clone()),
                        image_pull_secrets: pods::pull_secrets(wan),
                        ..Default::default()
                    },
                )),
            },
            ..Default::default()
        }),
        ..Default::default()
    })
}
