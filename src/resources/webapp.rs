//! The webapp Deployment (the REST API on 443) and its Service.

use k8s_openapi::api::apps::v1::{Deployment, DeploymentSpec, DeploymentStrategy, RollingUpdateDeployment};
use k8s_openapi::api::core::v1::{
    Container, ContainerPort, PodSpec, PodTemplateSpec, SecretVolumeSource, Service, ServicePort, ServiceSpec, Volume,
    VolumeMount,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::ResourceExt;

use super::config::{API_KEY, JWT_KEY};
use super::names::{Names, Tier, component_labels, selector_labels};
use super::workloads::tcp_probe;
use super::{WEB_TLS_DIR, WEBAPP_PORT, owned_meta, pods, with_applied_hash};
use crate::api::WhatsAppNumber;

const TLS_VOLUME: &str = "tls";

/// The in-cluster DNS name of the webapp Service.
pub fn service_host(wan: &WhatsAppNumber) -> String {
    format!("{}.{}.svc", Names::new(wan).tier(Tier::Webapp), wan.namespace().unwrap_or_default())
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

/// Webapps roll one extra pod at a time and never drop below the desired count.
pub fn deployment(wan: &WhatsAppNumber, version: &str, config_hash: &str) -> Deployment {
    let names = Names::new(wan);
    let o = pods::overrides(wan, Tier::Webapp);

    let mut env = pods::database_credentials_env(wan);
    env.push(pods::secret_env(JWT_KEY, &names.keys(), JWT_KEY));
    env.push(pods::secret_env(API_KEY, &names.keys(), API_KEY));
    env.push(pods::plain_env("WA_WEB_SERVERNAME", &service_host(wan)));

    let mut volumes = pods::volumes(wan, false);
    let mut mounts = pods::volume_mounts(wan, false);
    if let Some(tls) = &wan.spec.webapp.tls {
        volumes.push(Volume {
            name: TLS_VOLUME.into(),
            secret: Some(SecretVolumeSource {
                secret_name: Some(tls.secret_name.clone()),
                optional: Some(false),
                ..Default::default()
            }),
            ..Default::default()
        });
        mounts.push(VolumeMount {
            name: TLS_VOLUME.into(),
            mount_path: WEB_TLS_DIR.into(),
            read_only: Some(true),
            ..Default::default()
        });
        env.push(pods::plain_env("WA_WEB_TLS_CERT_FILE", &format!("{WEB_TLS_DIR}/tls.crt")));
        env.push(pods::plain_env("WA_WEB_TLS_KEY_FILE", &format!("{WEB_TLS_DIR}/tls.key")));
    }

    let container = Container {
        name: "webapp".into(),
        image: Some(pods::image(&wan.spec.images.webapp, version)),
        image_pull_policy: pods::pull_policy(wan),
        env_from: Some(pods::env_from(wan)),
        env: Some(env),
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
            replicas: Some(wan.spec.webapp.replicas),
            selector: LabelSelector { match_labels: Some(selector_labels(wan, Tier::Webapp)), ..Default::default() },
            strategy: Some(DeploymentStrategy {
                type_: Some("RollingUpdate".into()),
                rolling_update: Some(RollingUpdateDeployment {
                    max_unavailable: Some(IntOrString::Int(0)),
                    max_surge: Some(IntOrString::Int(1)),
                }),
            }),
            template: PodTemplateSpec {
                metadata: Some(pods::template_meta(wan, Tier::Webapp, version, config_hash)),
                spec: Some(PodSpec {
                    containers: vec![container],
                    volumes: Some(volumes),
                    affinity: Some(pods::affinity(wan, Tier::Webapp)),
                    node_selector: pods::non_empty(&o.node_selector),
                    tolerations: (!o.tolerations.is_empty()).then(|| o.tolerations.clone()),
                    image_pull_secrets: pods::pull_secrets(wan),
                    ..Default::default()
                }),
            },
            ..Default::default()
        }),
        ..Default::default()
    })
}
