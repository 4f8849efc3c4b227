//! `whatsapp.operators.dev/v1alpha1` `WhatsAppNumber`: one phone number served by
//! one multiconnect deployment of the WhatsApp Business API on-premises client.
//!
//! Every rule the OpenAPI schema can express lives here (patterns, enums, ranges,
//! CEL), so the API server rejects bad input before the operator ever sees it.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{
    Affinity, EnvVar, LocalObjectReference, PodSecurityContext, ResourceRequirements, SecurityContext, Toleration,
    TopologySpreadConstraint,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::{CustomResource, KubeSchema};

use super::sparse::{Empty, Sparse};
pub use crate::interned::Word;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// Shard counts the client accepts (domain: "1, 2, 4, 8, 16 or 32").
pub const VALID_SHARDS: [i32; 6] = [1, 2, 4, 8, 16, 32];

/// Desired state of a WhatsApp Business API deployment for one phone number.
#[derive(CustomResource, KubeSchema, Deserialize, Serialize, Clone, Debug, PartialEq)]
#[kube(
    group = "whatsapp.operators.dev",
    version = "v1alpha1",
    kind = "WhatsAppNumber",
    plural = "whatsappnumbers",
    shortname = "wan",
    category = "whatsapp",
    namespaced,
    status = "WhatsAppNumberStatus",
    doc = "A WhatsAppNumber runs the WhatsApp Business API on-premises client for one phone number in high-availability multiconnect mode: masters, coreapp shards with standbys, webapps, a shared media volume.",
    validation = Rule::new("self.metadata.name.size() <= 40").message("metadata.name must be at most 40 characters: child objects and pods are named after it"),
    printcolumn(name = "Number", type_ = "string", json_path = ".spec.phoneNumber"),
    printcolumn(name = "Version", type_ = "string", json_path = ".spec.version"),
    printcolumn(name = "Running", type_ = "string", json_path = ".status.currentVersion"),
    printcolumn(name = "Shards", type_ = "integer", json_path = ".spec.multiconnect.shards"),
    printcolumn(name = "Gateway", type_ = "string", json_path = ".status.health.gateway"),
    printcolumn(name = "Ready", type_ = "string", json_path = ".status.conditions[?(@.type==\"Ready\")].status"),
    printcolumn(name = "Reason", type_ = "string", json_path = ".status.conditions[?(@.type==\"Ready\")].reason"),
    printcolumn(name = "Pods", type_ = "string", json_path = ".status.readyPods", priority = 1),
    printcolumn(name = "Expires", type_ = "string", json_path = ".status.build.expiresAt", priority = 1),
    printcolumn(name = "Message", type_ = "string", json_path = ".status.conditions[?(@.type==\"Ready\")].message", priority = 1),
    printcolumn(name = "Age", type_ = "date", json_path = ".metadata.creationTimestamp")
)]
#[serde(rename_all = "camelCase")]
pub struct WhatsAppNumberSpec {
    /// The phone number this deployment serves, in E.164 form: `+`, then 7 to 15
    /// digits, no leading zero (for example `+15550001111`). Immutable: a second
    /// number needs a second WhatsAppNumber. The operator lets only one
    /// WhatsAppNumber in the whole cluster run a given number.
    #[schemars(regex(pattern = r"^\+[1-9][0-9]{6,14}$"), length(max = 16))]
    #[x_kube(validation = Rule::new("self.matches('^\\\\+[1-9][0-9]{6,14}$')").message("phoneNumber must be in E.164 form: a plus sign, then 7 to 15 digits, the first not 0 (for example +15550001111)"))]
    #[x_kube(validation = Rule::new("self == oldSelf").message("phoneNumber is immutable; create a new WhatsAppNumber for another number"))]
    pub phone_number: String,

    /// Client version to run, for example `2.53.2`. The image tag is `v<version>`.
    /// Every build expires 6 months after its release; changing this field upgrades
    /// the deployment (schema upgrade included).
    #[schemars(regex(pattern = r"^[0-9]+\.[0-9]+(\.[0-9]+)?$"))]
    pub version: String,

    /// Image repositories and pull settings for the coreapp and webapp images.
    #[serde(default)]
    pub images: ImagesSpec,

    /// Multiconnect topology: shards, standby coreapps and masters.
    #[serde(default)]
    pub multiconnect: MulticonnectSpec,

    /// Pod settings for the master StatefulSet.
    #[serde(default)]
    pub master: Sparse<PodOverrides>,

    /// Pod settings for the coreapp StatefulSet.
    #[serde(default)]
    pub coreapp: Sparse<PodOverrides>,

    /// The webapp (REST API) Deployment and its Service.
    #[serde(default)]
    pub webapp: WebappSpec,

    /// The external database (MySQL 5.7/8.0 or PostgreSQL 11-13) that holds the
    /// client's state.
    pub database: DatabaseSpec,

    /// The shared ReadWriteMany media volume, mounted at `/usr/local/wamedia`.
    #[serde(default)]
    pub media: MediaSpec,

    /// How the operator polls the webapp's `/v1/health` and judges the gateway.
    #[serde(default)]
    pub health: HealthSpec,

    /// The number's registration material, needed by account calls such as a
    /// shard change (`POST /v1/account/shards`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub registration: Option<Box<RegistrationSpec>>,

    /// Build expiry warnings and how upgrades happen.
    #[serde(default)]
    pub upgrade: UpgradeSpec,

    /// Scraping of the client's own metrics.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub monitoring: Option<Box<MonitoringSpec>>,

    /// Stop the number without deleting anything: masters and coreapps stop
    /// first, then the webapps; media, databases and the number claim stay.
    /// `false` starts them again. An upgrade in progress runs to its end
    /// first; none begins while suspended. This is the supported way to stop
    /// a number: scaling the workloads by hand is undone.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub suspend: bool,

    /// Seconds a rollout of the workloads may go without moving (a pod
    /// updated or ready) before the operator reports it failed:
    /// `Progressing=False`, `Degraded=True` and `Stalled=True` with reason
    /// `ProgressDeadlineExceeded`, as a Deployment does. The rollout itself
    /// goes on, and the number is reported progressing again as soon as it
    /// moves. Coreapps added for a shard change count; the schema Job and
    /// upgrades have their own limits.
    #[serde(default = "default_progress_deadline")]
    #[schemars(range(min = 60, max = 86400))]
    pub progress_deadline_seconds: i32,

    /// Application settings, applied once the number is registered.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub settings: Option<Box<SettingsSpec>>,

    /// Scheduled backups, kept as Secrets in the namespace (a backup holds the
    /// registration and keys) or in object storage.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backup: Option<Box<BackupSpec>>,

    /// A backup to restore into this deployment once, before registration.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub restore_from: Option<Box<RestoreSpec>>,
}

/// The client's own metrics, scraped by a Prometheus Operator.
#[derive(KubeSchema, Deserialize, Serialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct MonitoringSpec {
    /// Keep a `monitoring.coreos.com/v1` ServiceMonitor `NAME-client` that
    /// scrapes every webapp's `/v1/stats/app?format=prometheus` and `/metrics`
    /// with the API key (which Meta documents for exactly this), verifying TLS
    /// like the health probe. Needs the Prometheus Operator's CRDs.
    #[serde(default)]
    pub service_monitor: bool,

    /// Scrape interval, for example `30s` or `1m`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^[0-9]+(s|m)$"))]
    pub interval: Option<String>,

    /// Labels on the ServiceMonitor, so that a Prometheus selects it.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
}

/// Upgrades: every build expires 6 months after its release.
#[derive(KubeSchema, Deserialize, Serialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct UpgradeSpec {
    /// `Manual`: warn before expiry; changing `spec.version` upgrades. `Auto`:
    /// inside the warning window, upgrade to the newest catalog release that is
    /// not itself expiring. The spec is never rewritten: the chosen version shows
    /// in `status.targetVersion`.
    #[serde(default)]
    pub policy: UpgradePolicy,

    /// How long before expiry the warning window opens: `30d`, `72h`, `90m`.
    #[serde(default = "default_before")]
    #[schemars(regex(pattern = r"^[0-9]{1,4}[dhm]$"))]
    pub before: String,

    /// Start no upgrade while true. An upgrade in progress whose schema Job
    /// has not started is called off (the running version starts again); one
    /// whose schema Job has started runs to its end.
    #[serde(default)]
    pub paused: bool,

    /// When upgrades may start. Without it, any time. An expired build is
    /// upgraded at once: it no longer works anyway.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub maintenance_window: Option<Box<MaintenanceWindow>>,

    /// Deadline of the schema upgrade Job, in seconds. Large databases upgrade slowly.
    #[serde(default = "default_schema_deadline")]
    #[schemars(range(min = 60, max = 86400))]
    pub schema_upgrade_deadline_seconds: i32,

    /// Retries of the schema upgrade Job's pod before the upgrade stalls.
    #[serde(default = "default_schema_retries")]
    #[schemars(range(min = 0, max = 10))]
    pub schema_upgrade_retries: i32,

    /// Deadline of every other upgrade step (stopping nodes, starting them,
    /// rolling webapps, the gateway reconnecting), in seconds.
    #[serde(default = "default_step_deadline")]
    #[schemars(range(min = 30, max = 86400))]
    pub step_deadline_seconds: i32,
}

impl Default for UpgradeSpec {
    fn default() -> Self {
        Self {
            policy: UpgradePolicy::default(),
            before: default_before(),
            paused: false,
            maintenance_window: None,
            schema_upgrade_deadline_seconds: default_schema_deadline(),
            schema_upgrade_retries: default_schema_retries(),
            step_deadline_seconds: default_step_deadline(),
        }
    }
}

fn default_before() -> String {
    "30d".into()
}
fn default_schema_deadline() -> i32 {
    3600
}
fn default_schema_retries() -> i32 {
    3
}
fn default_step_deadline() -> i32 {
    900
}

/// Upgrade policy.
#[derive(JsonSchema, Deserialize, Serialize, Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum UpgradePolicy {
    #[default]
    Manual,
    Auto,
}

/// A weekly window in UTC.
#[derive(KubeSchema, Deserialize, Serialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct MaintenanceWindow {
    /// Days the window opens on: `Mon` ... `Sun`. Empty means every day.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(extend("items" = {"type": "string", "enum": ["Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun"]}))]
    pub days: Vec<String>,

    /// Opening time, `HH:MM` in UTC.
    #[schemars(regex(pattern = r"^([01][0-9]|2[0-3]):[0-5][0-9]$"))]
    pub start_time: String,

    /// How long the window stays open, in minutes. An upgrade started inside it
    /// runs to its end.
    #[schemars(range(min = 1, max = 1440))]
    pub duration_minutes: i32,
}

/// Gateway health polling.
#[derive(KubeSchema, Deserialize, Serialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct HealthSpec {
    /// Poll `/v1/health` and require a healthy gateway for `Ready`. When false,
    /// `Ready` reflects the workloads only and no health is reported; the
    /// operator still opens an admin session once a webapp runs (moving the
    /// admin user off its default password) and uploads `webapp.tls`, while
    /// registration, settings, backups and shard changes wait for polling.
    #[serde(default = "default_true")]
    pub enabled: bool,

    /// Seconds between probes (jittered by up to 10%). Probes run beside the
    /// reconcile; only one that finds something new triggers a reconcile.
    #[serde(default = "default_poll_interval")]
    #[schemars(range(min = 5, max = 3600))]
    pub poll_interval_seconds: i32,

    /// Timeout of one call to the webapp, in seconds.
    #[serde(default = "default_probe_timeout")]
    #[schemars(range(min = 1, max = 60))]
    pub timeout_seconds: i32,

    /// CA that signed the webapp's certificate. Without it the operator uses the
    /// `ca.crt` key of `webapp.tls.secretName` when present, else the system roots.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_secret_ref: Option<Box<SecretKeyRef>>,

    /// Skip verification of the webapp's certificate. Only for test setups: the
    /// API key travels in every request.
    #[serde(default, rename = "insecureSkipTLSVerify")]
    pub insecure_skip_tls_verify: bool,
}

impl Default for HealthSpec {
    fn default() -> Self {
        Self {
            enabled: true,
            poll_interval_seconds: default_poll_interval(),
            timeout_seconds: default_probe_timeout(),
            ca_secret_ref: None,
            insecure_skip_tls_verify: false,
        }
    }
}

fn default_progress_deadline() -> i32 {
    600
}

fn default_true() -> bool {
    true
}
fn default_poll_interval() -> i32 {
    30
}
fn default_probe_timeout() -> i32 {
    5
}

/// Where the number's registration material lives.
#[derive(KubeSchema, Deserialize, Serialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct RegistrationSpec {
    /// Secret with the base64 certificate from WhatsApp Manager and, when
    /// two-step verification is on, the PIN; later the code a person puts in.
    pub secret_ref: RegistrationSecretRef,

    /// Register the number: how WhatsApp sends the code, `sms` or `voice`.
    /// The operator requests the code once (`POST /v1/account`), waits for a
    /// person to put it into the Secret's `codeKey`, then verifies it. Without
    /// it the operator registers nothing (the material serves shard changes).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub method: Option<RegistrationMethod>,
}

/// How the registration code is delivered.
#[derive(JsonSchema, Deserialize, Serialize, Clone, Copy, Debug, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum RegistrationMethod {
    Sms,
    Voice,
}

impl RegistrationMethod {
    pub fn as_str(self) -> &'static str {
        match self {
            RegistrationMethod::Sms => "sms",
            RegistrationMethod::Voice => "voice",
        }
    }
}

/// The client's application settings (`/v1/settings/application`). Only the
/// fields given are managed; the client keeps its own value for the others.
#[derive(KubeSchema, Deserialize, Serialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct SettingsSpec {
    /// Where the client delivers messages and statuses (`webhooks.url`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^https?://.+"), length(max = 2048))]
    pub webhook_url: Option<String>,

    /// Concurrent webhook requests (`webhooks.max_concurrent_requests`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(extend("enum" = [6, 12, 18, 24]))]
    pub webhook_max_concurrent_requests: Option<i32>,

    /// CA of the webhook endpoint's certificate, uploaded with
    /// `POST /v1/certificates/webhooks/ca`.
    #[serde(default, rename = "webhookCASecretRef", skip_serializing_if = "Option::is_none")]
    pub webhook_ca_secret_ref: Option<SecretKeyRef>,

    /// Keep callbacks in the database until delivered (`callback_persist`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub callback_persist: Option<bool>,

    /// First retry delay of a failed callback (`callback_backoff_delay_ms`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 86400000))]
    pub callback_backoff_delay_ms: Option<i64>,

    /// Longest retry delay of a failed callback (`max_callback_backoff_delay_ms`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 86400000))]
    pub max_callback_backoff_delay_ms: Option<i64>,

    /// Send a callback when a message is sent (`sent_status`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sent_status: Option<bool>,

    /// `pass_through`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pass_through: Option<bool>,

    /// Media types downloaded automatically (`media.auto_download`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(extend("items" = {"type": "string", "enum": ["audio", "document", "voice", "video", "image", "sticker"]}))]
    pub media_auto_download: Option<Vec<String>>,

    /// What happens when the settings were changed through the API by hand:
    /// `Report` (default) shows the drift in `SettingsApplied`; `Correct`
    /// writes the spec's values back.
    #[serde(default)]
    pub drift_policy: DriftPolicy,
}

#[derive(JsonSchema, Deserialize, Serialize, Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum DriftPolicy {
    #[default]
    Report,
    Correct,
}

/// Scheduled backups (`POST /v1/settings/backup`): the registration and keys
/// of the number, encrypted with a password.
#[derive(KubeSchema, Deserialize, Serialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct BackupSpec {
    /// When to back up, a cron expression in UTC (`0 3 * * *`: every day at 03:00).
    /// A backup that ended less than 30 s before a scheduled time, or after
    /// it (a retry after a failure, a long one), stands for that time.
    #[schemars(length(min = 9, max = 100))]
    pub schedule: String,

    /// The password backups are encrypted with; restoring needs it.
    pub password_secret_ref: PasswordSecretRef,

    /// Backups kept, newest first; older ones are deleted.
    #[serde(default = "default_backups_kept")]
    #[schemars(range(min = 1, max = 100))]
    pub keep: i32,

    /// Keep backups in an S3-compatible object store instead of Secrets in
    /// the namespace. Each backup is one object `PREFIX<name>-backup-<unix
    /// time>`; the operator deletes its own objects beyond `keep` and no other.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub object_store: Option<BackupObjectStore>,
}

/// An S3-compatible object store and the credentials to use it.
#[derive(KubeSchema, Deserialize, Serialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ObjectStore {
    /// The bucket, which must exist.
    #[schemars(length(min = 3, max = 63), regex(pattern = r"^[a-z0-9][a-z0-9.-]*[a-z0-9]$"))]
    pub bucket: String,

    /// The store's URL, for example `https://minio.storage.svc:9000`; path-style
    /// requests are sent to it. Without it, Amazon S3 in `region`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 2048), regex(pattern = r"^https?://[^\s/?#]+(/[^\s?#]*)?$"))]
    pub endpoint: Option<String>,

    /// The region requests are signed for.
    #[serde(default = "default_region")]
    #[schemars(length(min = 1, max = 64))]
    pub region: String,

    /// Secret with the access key ID and secret access key.
    pub credentials_secret_ref: ObjectStoreCredentials,

    /// Secret with the CA certificate (PEM) that signed the store's
    /// certificate, when it is not publicly trusted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_secret_ref: Option<SecretKeyRef>,
}

fn default_region() -> String {
    "us-east-1".into()
}

/// Keys of the object store credentials Secret (in the WhatsAppNumber's namespace).
#[derive(KubeSchema, Deserialize, Serialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ObjectStoreCredentials {
    /// Name of the Secret.
    #[schemars(length(min = 1, max = 253))]
    pub name: String,

    /// Key holding the access key ID.
    #[serde(default = "default_access_key_id_key")]
    #[schemars(length(min = 1))]
    pub access_key_id_key: String,

    /// Key holding the secret access key.
    #[serde(default = "default_secret_access_key_key")]
    #[schemars(length(min = 1))]
    pub secret_access_key_key: String,
}

fn default_access_key_id_key() -> String {
    "accessKeyId".into()
}

fn default_secret_access_key_key() -> String {
    "secretAccessKey".into()
}

/// Where in an object store backups go.
#[derive(KubeSchema, Deserialize, Serialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct BackupObjectStore {
    #[serde(flatten)]
    pub store: ObjectStore,

    /// Prefix of the backups' object keys. Default `NAMESPACE/NAME/`; it
    /// should end with `/` and be used by this WhatsAppNumber alone.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 512), regex(pattern = r"^[^/].*$"))]
    pub prefix: Option<String>,
}

/// A backup in an object store.
#[derive(KubeSchema, Deserialize, Serialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct RestoreObject {
    #[serde(flatten)]
    pub store: ObjectStore,

    /// The backup's object key, as `status.backup.latest` of the old
    /// WhatsAppNumber shows it after the bucket (`s3://BUCKET/KEY`).
    #[schemars(length(min = 1, max = 1024), regex(pattern = r"^[^/].*$"))]
    pub key: String,
}

fn default_backups_kept() -> i32 {
    7
}

/// A backup to restore into this (new) deployment, once, before anything else
/// registers the number (`POST /v1/settings/restore`): the documented way to
/// move a number to a new setup. The new setup needs the same numbers of
/// shards, masters and coreapps as the old one.
#[derive(KubeSchema, Deserialize, Serialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("has(self.secretRef) != has(self.objectStore)").message("restoreFrom needs exactly one of secretRef and objectStore"))]
pub struct RestoreSpec {
    /// Secret holding the backup data, for example one the operator wrote.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret_ref: Option<BackupSecretRef>,

    /// A backup in an object store, for example one the operator wrote.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub object_store: Option<RestoreObject>,

    /// The password the backup was made with.
    pub password_secret_ref: PasswordSecretRef,
}

impl RestoreSpec {
    /// The backup as status names it: the Secret's name, or `s3://BUCKET/KEY`.
    pub fn source(&self) -> String {
        match (&self.secret_ref, &self.object_store) {
            (_, Some(o)) => o.url(),
            (Some(r), None) => r.name.clone(),
            (None, None) => String::new(),
        }
    }
}

impl RestoreObject {
    pub fn url(&self) -> String {
        format!("s3://{}/{}", self.store.bucket, self.key)
    }
}

/// Keys of the registration Secret.
#[derive(KubeSchema, Deserialize, Serialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct RegistrationSecretRef {
    /// Name of the Secret, in the WhatsAppNumber's namespace.
    #[schemars(length(min = 1, max = 253))]
    pub name: String,

    /// Key holding the certificate.
    #[serde(default = "default_cert_key")]
    #[schemars(length(min = 1))]
    pub cert_key: String,

    /// Key holding the two-step verification PIN, if any.
    #[serde(default = "default_pin_key")]
    #[schemars(length(min = 1))]
    pub pin_key: String,

    /// Key a person puts the registration code into, once it has arrived.
    #[serde(default = "default_code_key")]
    #[schemars(length(min = 1))]
    pub code_key: String,
}

fn default_code_key() -> String {
    "code".into()
}

fn default_cert_key() -> String {
    "cert".into()
}
fn default_pin_key() -> String {
    "pin".into()
}

/// Image repositories and pull settings.
#[derive(KubeSchema, Deserialize, Serialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ImagesSpec {
    /// Repository of the coreapp image (masters, coreapps and the schema upgrade);
    /// the tag is `v<spec.version>`.
    #[serde(default = "default_coreapp_image")]
    #[schemars(length(min = 1))]
    pub coreapp: String,

    /// Repository of the webapp image; the tag is `v<spec.version>`.
    #[serde(default = "default_webapp_image")]
    #[schemars(length(min = 1))]
    pub webapp: String,

    /// Image pull policy for every container. Defaults to the Kubernetes default
    /// (`IfNotPresent` for versioned tags).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pull_policy: Option<PullPolicy>,

    /// Secrets used to pull the images (Meta's registry needs credentials).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub pull_secrets: Vec<LocalObjectReference>,
}

impl Default for ImagesSpec {
    fn default() -> Self {
        Self {
            coreapp: default_coreapp_image(),
            webapp: default_webapp_image(),
            pull_policy: None,
            pull_secrets: vec![],
        }
    }
}

fn default_coreapp_image() -> String {
    "docker.whatsapp.biz/coreapp".into()
}

fn default_webapp_image() -> String {
    "docker.whatsapp.biz/web".into()
}

/// Kubernetes image pull policy.
#[derive(JsonSchema, Deserialize, Serialize, Clone, Copy, Debug, PartialEq, Eq)]
pub enum PullPolicy {
    Always,
    IfNotPresent,
    Never,
}

impl PullPolicy {
    pub fn as_str(self) -> &'static str {
        match self {
            PullPolicy::Always => "Always",
            PullPolicy::IfNotPresent => "IfNotPresent",
            PullPolicy::Never => "Never",
        }
    }
}

/// Multiconnect topology.
#[derive(KubeSchema, Deserialize, Serialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct MulticonnectSpec {
    /// Number of shards: 1, 2, 4, 8, 16 or 32. One shard is the high-availability
    /// setup. Messages are routed by `crc32(recipient) % shards`; Meta's sizing:
    /// 10-20 msg/s -> 2, 40 -> 4, 80 -> 8, 120-160 -> 16, 200-350 -> 32.
    #[serde(default = "default_shards")]
    #[schemars(extend("enum" = [1, 2, 4, 8, 16, 32]))]
    pub shards: i32,

    /// Standby coreapps beyond one per shard; each tolerates one failed coreapp.
    /// The coreapp StatefulSet runs `shards + standbyCoreapps` pods.
    #[serde(default = "default_standby")]
    #[schemars(range(min = 0, max = 32))]
    pub standby_coreapps: i32,

    /// Confirms a shard change on a number registered more than 7 days ago (or
    /// whose registration time the operator did not see): Meta warns that the
    /// set-shards call then disconnects the number. Set it to the value of
    /// `shards` to accept that risk for this change; any other value confirms
    /// nothing, and without it such a change is not made. It covers one
    /// change: once the client accepted it (or did not answer, so that it may
    /// have been carried out), a later difference to the same count (a
    /// restored database that brings another) waits for a new value of the
    /// `whatsapp.operators.dev/retry-shard-change` annotation. The media claim
    /// the operator manages records that change too, so a lost status does
    /// not make the confirmation new.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(extend("enum" = [1, 2, 4, 8, 16, 32]))]
    pub confirm_shard_change: Option<i32>,

    /// Master nodes. They compete for the master lease in the database; the
    /// primary master manages the cluster, the others stand by.
    #[serde(default = "default_masters")]
    #[schemars(range(min = 1, max = 5))]
    pub masters: i32,
}

impl Default for MulticonnectSpec {
    fn default() -> Self {
        Self {
            shards: default_shards(),
            standby_coreapps: default_standby(),
            confirm_shard_change: None,
            masters: default_masters(),
        }
    }
}

fn default_shards() -> i32 {
    1
}
fn default_standby() -> i32 {
    1
}
fn default_masters() -> i32 {
    2
}

/// Scheduling and metadata settings for the pods of one tier. The large
/// optional settings are boxed, and the spec holds each tier's as a
/// [`Sparse`]: every decoded WhatsAppNumber holds three of these, mostly
/// empty, and an unset box costs a pointer instead of the type's full size.
#[derive(KubeSchema, Deserialize, Serialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct PodOverrides {
    /// Compute resources of the tier's main container. Defaults to Meta's production
    /// guidance for multiconnect: 2 CPU and 4Gi memory requested.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<Box<ResourceRequirements>>,

    /// Node selector for the tier's pods.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub node_selector: BTreeMap<String, String>,

    /// Tolerations for the tier's pods.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tolerations: Vec<Toleration>,

    /// Affinity for the tier's pods. When set it replaces the default, which is a
    /// required pod anti-affinity on `kubernetes.io/hostname` within the tier
    /// (for webapps, within their ReplicaSet: a rollout's new pod may share a
    /// node with an old one, so the rollout finishes without a spare node).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub affinity: Option<Box<Affinity>>,

    /// Extra labels on the tier's pods. Keys the operator uses for selection
    /// (`app.kubernetes.io/*`) cannot be overridden.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub pod_labels: BTreeMap<String, String>,

    /// Extra annotations on the tier's pods.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub pod_annotations: BTreeMap<String, String>,

    /// Security context of the tier's pods. Defaults to the `RuntimeDefault`
    /// seccomp profile; the client runs as root in Meta's images.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod_security_context: Option<Box<PodSecurityContext>>,

    /// Security context of the tier's main container. When set it replaces the
    /// default, which drops the `MKNOD` capability as Meta's manifests do.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub security_context: Option<Box<SecurityContext>>,

    /// PriorityClass of the tier's pods.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 253))]
    pub priority_class_name: Option<String>,

    /// Topology spread constraints of the tier's pods (for example across zones).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub topology_spread_constraints: Vec<TopologySpreadConstraint>,

    /// ServiceAccount of the tier's pods. The client calls no Kubernetes API;
    /// without it the namespace's default account is used.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 253))]
    pub service_account_name: Option<String>,

    /// Extra environment of the tier's main container. Variables the operator
    /// sets itself (database, ports, keys, roles) cannot be overridden here.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub env: Vec<EnvVar>,
}

impl Empty for PodOverrides {
    fn empty() -> &'static Self {
        static EMPTY: PodOverrides = PodOverrides {
            resources: None,
            node_selector: BTreeMap::new(),
            tolerations: Vec::new(),
            affinity: None,
            pod_labels: BTreeMap::new(),
            pod_annotations: BTreeMap::new(),
            pod_security_context: None,
            security_context: None,
            priority_class_name: None,
            topology_spread_constraints: Vec::new(),
            service_account_name: None,
            env: Vec::new(),
        };
        &EMPTY
    }
}

/// The webapp tier: the REST API on HTTPS port 443.
#[derive(KubeSchema, Deserialize, Serialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct WebappSpec {
    /// Number of webapp replicas. The webapp is stateless; every replica serves
    /// the whole API.
    #[serde(default = "default_webapp_replicas")]
    #[schemars(range(min = 1, max = 50))]
    pub replicas: i32,

    /// The Service in front of the webapps.
    #[serde(default)]
    pub service: WebappServiceSpec,

    /// Host name clients use for the webapp (`WA_WEB_SERVERNAME`). Defaults to
    /// the in-cluster Service name, `NAME-webapp.NAMESPACE.svc`. The operator
    /// still reaches the webapp through that Service, and checks its
    /// certificate against this name. A host name or an IPv4 address, without
    /// a scheme or a port.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(
        length(min = 1, max = 253),
        regex(pattern = r"^[A-Za-z0-9]([A-Za-z0-9-]*[A-Za-z0-9])?(\.[A-Za-z0-9]([A-Za-z0-9-]*[A-Za-z0-9])?)*\.?$")
    )]
    pub server_name: Option<String>,

    /// Secret key with the password of the client's `admin` user, which the
    /// operator needs for admin calls (shards, certificates). Without it the
    /// operator generates one into `NAME-keys` (key `admin-password`). At the
    /// first login the operator moves the client off its default password to
    /// this one; the password is never logged.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub admin_password_secret_ref: Option<Box<PasswordSecretRef>>,

    /// TLS certificate served by the webapps on 443. Without it the webapp serves
    /// its own self-signed certificate.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<WebappTls>,

    /// Pod settings of the webapp tier.
    #[serde(flatten)]
    pub pod: Sparse<PodOverrides>,
}

impl Default for WebappSpec {
    fn default() -> Self {
        Self {
            replicas: default_webapp_replicas(),
            service: Default::default(),
            server_name: None,
            admin_password_secret_ref: None,
            tls: None,
            pod: Default::default(),
        }
    }
}

fn default_webapp_replicas() -> i32 {
    2
}

/// Service settings for the webapp.
#[derive(KubeSchema, Deserialize, Serialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct WebappServiceSpec {
    /// Service type.
    #[serde(default, rename = "type")]
    pub type_: ServiceType,

    /// Annotations on the Service (for example for a cloud load balancer).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
}

/// Kubernetes Service type for the webapp.
#[derive(JsonSchema, Deserialize, Serialize, Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum ServiceType {
    #[default]
    ClusterIP,
    NodePort,
    LoadBalancer,
}

impl ServiceType {
    pub fn as_str(self) -> &'static str {
        match self {
            ServiceType::ClusterIP => "ClusterIP",
            ServiceType::NodePort => "NodePort",
            ServiceType::LoadBalancer => "LoadBalancer",
        }
    }
}

/// A key holding a password in a Secret of the WhatsAppNumber's namespace.
#[derive(KubeSchema, Deserialize, Serialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct PasswordSecretRef {
    /// Name of the Secret.
    #[schemars(length(min = 1, max = 253))]
    pub name: String,

    /// Key in the Secret.
    #[serde(default = "default_password_key")]
    #[schemars(length(min = 1))]
    pub key: String,
}

/// A `kubernetes.io/tls` Secret with `tls.crt` and `tls.key` (and `ca.crt`
/// when a private CA signed it), for example from cert-manager. The operator
/// uploads it with `POST /v1/certificates/external`, the client's documented
/// route, then restarts the webapps; a changed Secret is uploaded again.
#[derive(KubeSchema, Deserialize, Serialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct WebappTls {
    /// Name of the Secret, in the WhatsAppNumber's namespace.
    #[schemars(length(min = 1, max = 253))]
    pub secret_name: String,
}

/// Database engine.
#[derive(JsonSchema, Deserialize, Serialize, Clone, Copy, Debug, PartialEq, Eq)]
pub enum DatabaseEngine {
    /// MySQL 5.7 or 8.0 (MariaDB works too).
    MySQL,
    /// PostgreSQL 11 to 13.
    PostgreSQL,
}

impl DatabaseEngine {
    /// The value of `WA_DB_ENGINE`.
    pub fn env_value(self) -> &'static str {
        match self {
            DatabaseEngine::MySQL => "MYSQL",
            // The client's name for PostgreSQL (Meta's `db.env`), not `POSTGRESQL`.
            DatabaseEngine::PostgreSQL => "PGSQL",
        }
    }

    /// The wait script of Meta's images and compose files for this engine.
    pub fn wait_script(self) -> &'static str {
        match self {
            DatabaseEngine::MySQL => "wait_on_mysql.sh",
            DatabaseEngine::PostgreSQL => "wait_on_postgres.sh",
        }
    }

    pub fn default_port(self) -> i32 {
        match self {
            DatabaseEngine::MySQL => 3306,
            DatabaseEngine::PostgreSQL => 5432,
        }
    }
}

/// Connection to the external database. The server (engine, host, port)
/// cannot change: the StatefulSets would roll their nodes one at a time, so
/// nodes on the old and the new server would run one number at once. To move
/// a number to another server, delete the WhatsAppNumber (its nodes stop and
/// its claim is released once they are gone) and create it again.
#[derive(KubeSchema, Deserialize, Serialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("self.engine == oldSelf.engine && self.host == oldSelf.host && (has(self.port) ? self.port : (self.engine == 'MySQL' ? 3306 : 5432)) == (has(oldSelf.port) ? oldSelf.port : (oldSelf.engine == 'MySQL' ? 3306 : 5432))").message("database.engine, host and port are immutable: nodes on two database servers would run the number twice; to move it, delete the WhatsAppNumber and create it again"))]
pub struct DatabaseSpec {
    /// `MySQL` or `PostgreSQL`.
    pub engine: DatabaseEngine,

    /// Host name or address of the database server.
    #[schemars(length(min = 1, max = 253))]
    pub host: String,

    /// Port of the database server. Defaults to 3306 for MySQL and 5432 for
    /// PostgreSQL.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 65535))]
    pub port: Option<i32>,

    /// Secret with the database user name and password.
    pub credentials_secret_ref: CredentialsSecretRef,

    /// TLS to the database: the CA that signed the server's certificate.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<Box<DatabaseTls>>,

    /// Prefix of every database the client creates (`WA_DB_NAME_PREFIX`), so
    /// several numbers can share one database server. Defaults to `wa` followed
    /// by the phone number's digits. Two WhatsAppNumbers on the same host, port
    /// and prefix are refused. Immutable: the databases keep their names.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^[a-z][a-z0-9_]{0,31}$"))]
    #[x_kube(validation = Rule::new("self == oldSelf").message("database.namePrefix is immutable: the client's databases keep their names"))]
    pub name_prefix: Option<String>,

    /// `WA_DB_CONNECTION_IDLE_TIMEOUT` in milliseconds (MySQL only).
    #[serde(default = "default_idle_timeout")]
    #[schemars(range(min = 1000, max = 86400000))]
    pub connection_idle_timeout_ms: i64,
}

fn default_idle_timeout() -> i64 {
    180_000
}

impl DatabaseSpec {
    pub fn effective_port(&self) -> i32 {
        self.port.unwrap_or_else(|| self.engine.default_port())
    }
}

/// The database name prefix a number uses: the spec's, else `wa` and the
/// number's digits (stable, and distinct for distinct numbers).
pub fn database_name_prefix(spec: &WhatsAppNumberSpec) -> String {
    spec.database
        .name_prefix
        .clone()
        .unwrap_or_else(|| format!("wa{}", spec.phone_number.chars().filter(char::is_ascii_digit).collect::<String>()))
}

/// The set of databases a number's client uses: `host:port/prefix`.
pub fn database_identity(spec: &WhatsAppNumberSpec) -> String {
    format!(
        "{}:{}/{}",
        spec.database.host.to_ascii_lowercase(),
        spec.database.effective_port(),
        database_name_prefix(spec)
    )
}

/// Reference to a Secret holding database credentials.
#[derive(KubeSchema, Deserialize, Serialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct CredentialsSecretRef {
    /// Name of the Secret, in the WhatsAppNumber's namespace.
    #[schemars(length(min = 1, max = 253))]
    pub name: String,

    /// Key of the user name in the Secret.
    #[serde(default = "default_username_key")]
    #[schemars(length(min = 1))]
    pub username_key: String,

    /// Key of the password in the Secret.
    #[serde(default = "default_password_key")]
    #[schemars(length(min = 1))]
    pub password_key: String,
}

fn default_username_key() -> String {
    "username".into()
}
fn default_password_key() -> String {
    "password".into()
}

/// TLS settings for the database connection.
#[derive(KubeSchema, Deserialize, Serialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct DatabaseTls {
    /// Secret key holding the PEM CA certificate; mounted into every pod and
    /// passed as `WA_DB_SSL_CA`.
    pub ca_secret_ref: SecretKeyRef,
}

/// A key in a Secret of the WhatsAppNumber's namespace.
#[derive(KubeSchema, Deserialize, Serialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct SecretKeyRef {
    /// Name of the Secret.
    #[schemars(length(min = 1, max = 253))]
    pub name: String,

    /// Key in the Secret.
    #[serde(default = "default_ca_key")]
    #[schemars(length(min = 1))]
    pub key: String,
}

fn default_ca_key() -> String {
    "ca.crt".into()
}

/// Key of the backup data in the backup Secrets the operator writes, and the
/// default key a restore reads.
pub const BACKUP_SECRET_KEY: &str = "backup";

/// A backup kept in a Secret of the WhatsAppNumber's namespace.
#[derive(KubeSchema, Deserialize, Serialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct BackupSecretRef {
    /// Name of the Secret, for example `status.backup.latest` of the old
    /// WhatsAppNumber.
    #[schemars(length(min = 1, max = 253))]
    pub name: String,

    /// Key holding the backup data; the operator writes its backups under
    /// `backup`.
    #[serde(default = "default_backup_key")]
    #[schemars(length(min = 1))]
    pub key: String,
}

fn default_backup_key() -> String {
    crate::api::BACKUP_SECRET_KEY.into()
}

/// The shared media volume.
#[derive(KubeSchema, Deserialize, Serialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("!has(self.existingClaim) || !has(self.storageClassName)").message("media.existingClaim and media.storageClassName are mutually exclusive"))]
pub struct MediaSpec {
    /// Use this existing ReadWriteMany PersistentVolumeClaim instead of creating
    /// one. The operator never deletes an existing claim.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 253))]
    pub existing_claim: Option<String>,

    /// Storage class of the claim the operator creates; it must provide
    /// ReadWriteMany (NFS, EFS, CephFS, Azure Files...). Empty uses the cluster's
    /// default class. Fixed once the claim exists.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub storage_class_name: Option<String>,

    /// Size of the claim the operator creates. It can grow (when the class allows
    /// expansion), never shrink.
    #[serde(default = "default_media_size")]
    #[x_kube(validation = Rule::new("type(self) == string ? isQuantity(self) && quantity(self).isGreaterThan(quantity('0')) : int(self) > 0").message("media.size must be a positive quantity such as 50Gi"))]
    pub size: Quantity,

    /// What happens to the claim the operator created when the WhatsAppNumber is
    /// deleted: `Retain` (default) keeps it and the media on it, `Delete` removes it.
    #[serde(default)]
    pub reclaim_policy: ReclaimPolicy,
}

impl Default for MediaSpec {
    fn default() -> Self {
        Self {
            existing_claim: None,
            storage_class_name: None,
            size: default_media_size(),
            reclaim_policy: ReclaimPolicy::default(),
        }
    }
}

fn default_media_size() -> Quantity {
    Quantity("50Gi".into())
}

/// Fate of the operator-created media claim when the WhatsAppNumber goes.
#[derive(JsonSchema, Deserialize, Serialize, Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum ReclaimPolicy {
    #[default]
    Retain,
    Delete,
}

/// Observed state, written by the operator only.
#[derive(KubeSchema, Deserialize, Serialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct WhatsAppNumberStatus {
    /// The `metadata.generation` this status describes. Conditions are only
    /// meaningful when it equals `metadata.generation`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,

    /// `Ready`, `Progressing` and `Degraded`, each with a reason, a message, the
    /// generation it was computed for and the time it last changed.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(with = "Vec<k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition>")]
    pub conditions: Vec<Condition>,

    /// Master StatefulSet.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub masters: Option<TierStatus>,

    /// Coreapp StatefulSet.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub coreapps: Option<TierStatus>,

    /// Webapp Deployment.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub webapps: Option<TierStatus>,

    /// Ready pods out of desired pods over all tiers, for example `7/7`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ready_pods: Option<String>,

    /// While the workloads roll out: when the rollout last moved (began, or
    /// a pod became updated or ready). `spec.progressDeadlineSeconds` counts
    /// from here.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_progress_time: Option<k8s_openapi::apimachinery::pkg::apis::meta::v1::Time>,

    /// The version the running workloads were built from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub current_version: Option<String>,

    /// Name of the media PersistentVolumeClaim in use.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub media_claim: Option<String>,

    /// In-cluster address of the webapp API.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub webapp_endpoint: Option<String>,

    /// The gateway as the webapp's `/v1/health` reports it, judged by role.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub health: Option<Box<HealthStatus>>,

    /// Progress of a shard change made through the account API.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sharding: Option<ShardingStatus>,

    /// The running build and its expiry, from the release catalog.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub build: Option<BuildStatus>,

    /// The version the operator is moving to: `spec.version`, or what the
    /// `Auto` policy chose.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target_version: Option<String>,

    /// The upgrade in progress, or the last one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub upgrade: Option<Box<UpgradeStatus>>,

    /// The `WA_DB_NAME_PREFIX` the client's databases were created with.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub database_name_prefix: Option<String>,

    /// When the client accepted the registration code the operator sent
    /// (`spec.registration`). Absent for a number registered any other way
    /// (before the operator watched it, by hand, or brought back by a
    /// restore) or seen unregistered since: its age is then unknown, and a
    /// shard change needs `spec.multiconnect.confirmShardChange`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub registered_at: Option<k8s_openapi::apimachinery::pkg::apis::meta::v1::Time>,

    /// The certificate of `spec.webapp.tls` the client last accepted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub webapp_certificate: Option<Box<WebappCertificateStatus>>,

    /// The registration the operator carries out (`spec.registration.method`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub registration: Option<Box<RegistrationStatus>>,

    /// The application settings as last compared with the client's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub settings: Option<Box<SettingsStatus>>,

    /// Backups made and kept.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backup: Option<Box<BackupStatus>>,

    /// The restore of `spec.restoreFrom`, once done.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub restore: Option<Box<RestoreStatus>>,

    /// The ServiceMonitor the operator keeps for the client's own metrics.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_service_monitor: Option<String>,

    /// Another instance of the client, outside this cluster's control, was
    /// connected with this number: masters and coreapps are stopped until a
    /// person resolves it (see the `Conflict` condition).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub external_conflict: Option<Box<ExternalConflictStatus>>,
}

/// Where a registration stands.
#[derive(KubeSchema, Deserialize, Serialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct RegistrationStatus {
    pub phase: RegistrationPhase,
    pub message: String,
    /// Digest of the request inputs (method, certificate, PIN, the
    /// `request-code` annotation) of the last code request: a request is never
    /// repeated with the same inputs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_digest: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub code_requested_at: Option<k8s_openapi::apimachinery::pkg::apis::meta::v1::Time>,
    /// Digest of the last code sent for verification: a code is tried once.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub code_digest: Option<String>,
    /// The `request-code` annotation when the last code was requested (empty:
    /// not set). A number registered once gets a new code request only once
    /// it changes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_annotation: Option<String>,
    /// When a probe first found the number registered since it was last
    /// registered: from then on, the client reporting it unregistered means
    /// it was logged off (right after it took the code, it may still report
    /// it unregistered for a moment).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub confirmed_at: Option<k8s_openapi::apimachinery::pkg::apis::meta::v1::Time>,
}

#[derive(JsonSchema, Deserialize, Serialize, Clone, Copy, Debug, PartialEq, Eq)]
pub enum RegistrationPhase {
    /// The code was requested; a person puts it into the Secret.
    CodeRequested,
    /// The client refused the code request (certificate, PIN, rate limit).
    RequestRefused,
    /// The client refused the code.
    CodeRefused,
    /// The number is registered to this deployment.
    Registered,
    /// The number was registered with these inputs and the client reports
    /// it unregistered since (logged off, or taken by another instance): a
    /// new code is requested only when a person asks.
    LoggedOff,
}

/// The settings as last compared.
#[derive(KubeSchema, Deserialize, Serialize, Clone, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct SettingsStatus {
    /// The generation whose settings were last written to the client.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub applied_generation: Option<i64>,
    /// Digest of the settings last written to the client (or found there):
    /// with `driftPolicy: Report`, a change by hand is written over only
    /// when the spec's settings change, not at any other spec change.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub applied_digest: Option<String>,
    /// Settings whose value in the client differs from the spec.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub drift: Vec<String>,
    /// Digest of the webhook CA the client accepted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub webhook_ca_digest: Option<String>,
    /// Why the last write failed, if it did.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
}

/// Backups.
#[derive(KubeSchema, Deserialize, Serialize, Clone, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct BackupStatus {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_success_time: Option<k8s_openapi::apimachinery::pkg::apis::meta::v1::Time>,
    /// When the last attempt ended: the schedule, and after a failure the
    /// backoff, count from then.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_attempt_time: Option<k8s_openapi::apimachinery::pkg::apis::meta::v1::Time>,
    /// The newest backup: a Secret's name, or `s3://BUCKET/KEY`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub latest: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
    /// What the last failed attempt was made with: a digest of `spec.backup`
    /// and of the versions of the Secrets it reads (no Secret data). Once
    /// either changes, the backup is tried again at once instead of at the
    /// next scheduled time.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failed_with: Option<String>,
    /// Failed attempts since the last success. Each is tried again after a
    /// wait that doubles with the count (30 s, 1 min, 2 min, ... up to an
    /// hour), or at the next scheduled time if that comes first.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub consecutive_failures: u32,
    /// Why backups beyond `spec.backup.keep` were left after the last backup,
    /// which was kept all the same; a later backup removes them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prune_error: Option<String>,
}

fn is_zero(n: &u32) -> bool {
    *n == 0
}

/// A restore.
#[derive(KubeSchema, Deserialize, Serialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct RestoreStatus {
    /// Not tried again once refused, until `spec.restoreFrom` changes.
    pub outcome: RestoreOutcome,
    /// The backup restored from: a Secret's name, or `s3://BUCKET/KEY`.
    pub from: String,
    pub at: k8s_openapi::apimachinery::pkg::apis::meta::v1::Time,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub message: String,
}

#[derive(JsonSchema, Deserialize, Serialize, Clone, Copy, Debug, PartialEq, Eq)]
pub enum RestoreOutcome {
    Restored,
    Refused,
    /// Not done yet, and tried again a minute after `at` while the number
    /// stays unregistered: the client did not answer or asked to retry, or
    /// an input was missing (a Secret, the object store).
    Retrying,
    /// The client was found registered with no restore it confirmed (an
    /// object re-created over databases that hold the number, a status lost
    /// after the restore, or a restore whose answer never came): a restore
    /// would overwrite a live registration, so none is made for this backup.
    AlreadyRegistered,
}

impl RestoreOutcome {
    /// The backup is in, or was passed over for a registration the client
    /// holds: the rest of the number's life may go on.
    pub fn passed(self) -> bool {
        matches!(self, RestoreOutcome::Restored | RestoreOutcome::AlreadyRegistered)
    }
}

impl RestoreStatus {
    /// This record is of the backup `from` (`RestoreFrom::source`), and that
    /// backup is in or was passed over.
    pub fn passed(&self, from: &str) -> bool {
        self.from == from && self.outcome.passed()
    }
}

/// The uploaded webapp certificate.
#[derive(KubeSchema, Deserialize, Serialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct WebappCertificateStatus {
    /// Digest of the Secret's certificate, key and chain that were uploaded;
    /// the webapps' pod template carries it, so they restart to serve it.
    pub uploaded_digest: String,
    pub uploaded_at: k8s_openapi::apimachinery::pkg::apis::meta::v1::Time,
}

/// A second instance of the number, found through the client's health.
#[derive(KubeSchema, Deserialize, Serialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct ExternalConflictStatus {
    /// When it was found. To start the nodes again once the other instance is
    /// stopped, annotate the WhatsAppNumber with
    /// `whatsapp.operators.dev/resolve-conflict` set to this value.
    pub detected_at: String,
    /// What was found: the pod that logged the conflict, and its line.
    pub message: String,
}

/// A condition of the status: Kubernetes' `metav1.Condition`, whose schema
/// it has, with its type, status, reason and message shared by every
/// number's conditions ([`Word`]): a few dozen words and phrases, read again
/// on every change of every number (most messages are the same for many
/// numbers: "no problem found").
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Condition {
    #[serde(rename = "type")]
    pub type_: Word,
    pub status: Word,
    pub reason: Word,
    pub message: Word,
    pub last_transition_time: Time,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
}

/// Readiness of one tier, computed from its workload's own status.
#[derive(KubeSchema, Deserialize, Serialize, Clone, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct TierStatus {
    /// Replicas the spec asks for.
    pub desired: i32,
    /// Pods that are ready.
    pub ready: i32,
    /// Pods that run the newest pod template.
    pub updated: i32,
    /// Whether the workload controller has seen the newest workload spec
    /// (its `observedGeneration` equals its `generation`).
    pub observed: bool,
}

impl TierStatus {
    /// A tier is ready when its controller has caught up with the newest spec and
    /// every desired pod runs the newest template and is ready.
    pub fn is_ready(&self) -> bool {
        self.observed && self.updated == self.desired && self.ready == self.desired
    }
}

/// The last health probe that changed something.
#[derive(KubeSchema, Deserialize, Serialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct HealthStatus {
    /// Overall gateway state: `connected`, `disconnected`, `uninitialized`,
    /// `unregistered`, or `unknown` when the webapp cannot be reached.
    pub gateway: String,

    /// `<hostname>:<container_id>` of the primary master.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub primary_master: Option<String>,

    /// Coreapps connected to WhatsApp's servers (one per shard when healthy).
    pub connected_coreapps: i32,

    /// Coreapps standing by.
    pub standby_coreapps: i32,

    /// Shard count the client reports (`GET /v1/account/shards`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shards: Option<i32>,

    /// Every node the webapp lists.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub nodes: Vec<NodeHealth>,

    /// When the probe that produced this block ran. Probes that find nothing
    /// new do not rewrite status; the metric
    /// `whatsapp_operator_health_probe_timestamp_seconds` has the latest one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_probe_time: Option<k8s_openapi::apimachinery::pkg::apis::meta::v1::Time>,

    /// What went wrong in that probe, if anything.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
}

/// One node of the multiconnect cluster.
#[derive(KubeSchema, Deserialize, Serialize, Clone, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct NodeHealth {
    /// `<hostname>:<container_id>`; the hostname is the pod IP.
    pub id: String,
    /// `primary_master`, `secondary_master` or `coreapp`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub role: Option<String>,
    /// The node's gateway status; absent when the webapp cannot reach it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gateway_status: Option<String>,
    /// The pod whose IP matches the node's hostname.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod: Option<String>,
    /// The node's error, if it reported one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// A shard change in progress, or the last one.
#[derive(KubeSchema, Deserialize, Serialize, Clone, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct ShardingStatus {
    /// `spec.multiconnect.shards`.
    pub desired: i32,
    /// What the client reports.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub current: Option<i32>,
    pub phase: ShardPhase,
    /// What the operator is doing or waiting for.
    pub message: String,
    /// The last `POST /v1/account/shards` the operator made. A refused request
    /// is not repeated until the spec's generation changes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_request: Option<ShardRequestStatus>,
}

/// Where a shard change stands.
#[derive(JsonSchema, Deserialize, Serialize, Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum ShardPhase {
    /// The client runs the shard count of the spec.
    InSync,
    /// Growing: more coreapps start before the client is asked.
    ScalingCoreapps,
    /// The client is being asked to change, or is changing.
    SettingShards,
    /// The change needs `spec.multiconnect.confirmShardChange`.
    ConfirmationRequired,
    /// Something a person must provide or fix blocks the change.
    Blocked,
    /// The client's shard count is not known.
    #[default]
    Unknown,
}

/// One set-shards request and what came of it.
#[derive(KubeSchema, Deserialize, Serialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct ShardRequestStatus {
    pub shards: i32,
    /// `metadata.generation` the request was made for.
    pub generation: i64,
    pub at: k8s_openapi::apimachinery::pkg::apis::meta::v1::Time,
    /// `Accepted`, `Retrying` (the client said to retry, or the request did
    /// not reach it), `Refused`, or `Unanswered` (it may have been carried
    /// out). A refused or unanswered request is not sent again while its
    /// inputs stay the same.
    pub outcome: ShardRequestOutcome,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub message: String,
    /// Digest of the request's inputs: the shard count, the certificate and
    /// PIN, and the `whatsapp.operators.dev/retry-shard-change` annotation.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_digest: Option<String>,
    /// The `whatsapp.operators.dev/retry-shard-change` annotation when the
    /// request was sent (empty: not set). A change the client accepted, or
    /// that got no answer, spends `spec.multiconnect.confirmShardChange`:
    /// another change to the same count on a number registered long ago
    /// waits for a new value of the annotation.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry_annotation: Option<String>,
}

#[derive(JsonSchema, Deserialize, Serialize, Clone, Copy, Debug, PartialEq, Eq)]
pub enum ShardRequestOutcome {
    Accepted,
    Retrying,
    Refused,
    Unanswered,
}

/// A build and its expiry.
#[derive(KubeSchema, Deserialize, Serialize, Clone, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct BuildStatus {
    pub version: String,
    /// Release date (`YYYY-MM-DD`), absent when the catalog does not know the version.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub released_at: Option<String>,
    /// Expiry date (`YYYY-MM-DD`, UTC), absent when unknown.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<String>,
}

/// Where an upgrade stands. The procedure goes through them in this order; it
/// ends `Complete`, or `RolledBack` when it was called off before the schema
/// upgrade succeeded.
#[derive(JsonSchema, Deserialize, Serialize, Clone, Copy, Debug, PartialEq, Eq)]
pub enum UpgradeStep {
    /// Masters and coreapps of the old version stop.
    StoppingNodes,
    /// A Job runs the new image with `WA_DB_UPGRADE=1`.
    UpgradingSchema,
    /// Masters start at the new version.
    StartingMasters,
    /// Coreapps start at the new version.
    StartingCoreapps,
    /// New webapps replace the old ones.
    RollingWebapps,
    /// The gateway must show every shard connected and a primary master.
    Verifying,
    /// The new version runs and is recorded as current.
    Complete,
    /// Called off before the schema upgrade succeeded (`spec.version` set back
    /// to the running version, or `spec.upgrade.paused`): the old version runs.
    RolledBack,
}

impl UpgradeStep {
    pub fn as_str(self) -> &'static str {
        match self {
            UpgradeStep::StoppingNodes => "StoppingNodes",
            UpgradeStep::UpgradingSchema => "UpgradingSchema",
            UpgradeStep::StartingMasters => "StartingMasters",
            UpgradeStep::StartingCoreapps => "StartingCoreapps",
            UpgradeStep::RollingWebapps => "RollingWebapps",
            UpgradeStep::Verifying => "Verifying",
            UpgradeStep::Complete => "Complete",
            UpgradeStep::RolledBack => "RolledBack",
        }
    }
}

impl std::fmt::Display for UpgradeStep {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One upgrade, step by step.
#[derive(KubeSchema, Deserialize, Serialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct UpgradeStatus {
    pub from: String,
    pub to: String,
    pub step: UpgradeStep,
    pub started_at: k8s_openapi::apimachinery::pkg::apis::meta::v1::Time,
    pub step_started_at: k8s_openapi::apimachinery::pkg::apis::meta::v1::Time,
    /// What the step waits for, or what stops it.
    pub message: String,
    /// Why the step is stuck (deadline passed, Job failed), if it is.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stalled_reason: Option<String>,
    /// When a container of the schema Job was first seen started (or the Job
    /// failed, or succeeded): from then on the schema may have changed, and
    /// the upgrade is never called off, also once the Job is deleted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub schema_started_at: Option<k8s_openapi::apimachinery::pkg::apis::meta::v1::Time>,
}
