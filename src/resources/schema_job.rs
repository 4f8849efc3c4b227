//! The schema upgrade: the new coreapp image with `WA_DB_UPGRADE=1` migrates
//! the database and exits, as Meta's `dbupgrade-compose.yml` runs it.

use k8s_openapi::api::batch::v1::{Job, JobSpec};
use k8s_openapi::api::core::v1::{Container, PodSpec, PodTemplateSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

use super::names::{LABEL_VERSION, Names, component_labels};
use super::{owned_meta, pods};
use crate::api::WhatsAppNumber;

pub const COMPONENT: &str = "schema-upgrade";
/// A Job that succeeded stays a day for its logs, then goes; the operator
/// keeps a failed one until a person deletes it.
const KEEP_FINISHED_SECONDS: i32 = 86_400;

/// `NAME-schema-2-55-1`: one Job per target version.
pub fn name(wan: &WhatsAppNumber, version: &str) -> String {
    format!("{}-schema-{}", Names::new(wan).base(), version.replace('.', "-"))
}

/// The version whose schema Job of `wan` is called `job`, if it is one.
pub fn version_of(wan: &WhatsAppNumber, job: &str) -> Option<String> {
    version_in(Names::new(wan).base(), job)
}

/// The version whose schema Job of the WhatsAppNumber named `number` is
/// called `job`, if it is one (for an object known by its name alone).
pub fn version_in(number: &str, job: &str) -> Option<String> {
    let version = job.strip_prefix(number)?.strip_prefix("-schema-")?.replace('-', ".");
    crate::upgrade::catalog::Version::parse(&version).map(|_| version)
}

pub fn schema_job(wan: &WhatsAppNumber, version: &str) -> Job {
    let up = &wan.spec.upgrade;
    let mut env = pods::database_credentials_env(wan);
    env.push(pods::plain_env("WA_DB_UPGRADE", "1"));
    let mut labels = component_labels(wan, COMPONENT);
    labels.insert(LABEL_VERSION.into(), version.into());
    let container = Container {
        name: COMPONENT.into(),
        image: Some(pods::image(&wan.spec.images.coreapp, version)),
        image_pull_policy: pods::pull_policy(wan),
        command: Some(pods::command(wan)),
        security_context: Some(pods::security_context(wan, super::names::Tier::Coreapp)),
        env_from: Some(pods::env_from(wan)),
        env: Some(pods::with_extra_env(wan, super::names::Tier::Coreapp, env)),
        resources: Some(pods::resources(wan, super::names::Tier::Coreapp)),
        volume_mounts: Some(pods::volume_mounts(wan, true)),
        // A failed attempt's last log lines become its termination message,
        // which the status shows (a refused password, a host not reachable).
        termination_message_policy: Some("FallbackToLogsOnError".into()),
        ..Default::default()
    };
    // The hash tells a Job made from an earlier spec (see `plan::replace_outdated`).
    super::with_applied_hash(Job {
        metadata: owned_meta(wan, name(wan, version), labels.clone()),
        spec: Some(JobSpec {
            backoff_limit: Some(up.schema_upgrade_retries),
            active_deadline_seconds: Some(i64::from(up.schema_upgrade_deadline_seconds)),
            ttl_seconds_after_finished: Some(KEEP_FINISHED_SECONDS),
            template: PodTemplateSpec {
                metadata: Some(ObjectMeta { labels: Some(labels), ..Default::default() }),
                spec: Some(pods::with_pod_settings(
                    wan,
                    super::names::Tier::Coreapp,
                    PodSpec {
                        containers: vec![container],
                        restart_policy: Some("Never".into()),
                        volumes: Some(pods::volumes(wan, true)),
                        node_selector: pods::non_empty(&wan.spec.coreapp.node_selector),
                        tolerations: (!wan.spec.coreapp.tolerations.is_empty())
                            .then(|| wan.spec.coreapp.tolerations.clone()),
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
