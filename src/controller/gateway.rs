//! The gateway steps of a reconcile: probe the webapp's health with the API
//! key, open the admin session, upload the webapp certificate, and carry a
//! shard change through the account API.

use std::collections::BTreeMap;
use std::time::Duration;

use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::api::{Patch, PatchParams};
use kube::{Api, ResourceExt};
use serde_json::json;
use tracing::{info, warn};

use super::Context;
use super::fetch::Observed;
use crate::api::{
    ExternalConflictStatus, ShardRequestOutcome, ShardRequestStatus, ShardingStatus, WebappCertificateStatus,
    WhatsAppNumber,
};
use crate::health::{self, Observation, report};
use crate::probes;
use crate::resources::config::{ADMIN_PASSWORD, WEBAPP_CA};
use crate::resources::names::Names;
use crate::sharding::{self, RETRY_SHARD_CHANGE_ANNOTATION, Registered, Step};
use crate::webapp::session::SessionError;
use crate::webapp::{CallError, ShardRequest, Trust, Webapp, phone};

/// The annotation a person sets to `status.externalConflict.detectedAt` once
/// the other instance of the number is stopped.
pub const RESOLVE_CONFLICT_ANNOTATION: &str = "whatsapp.operators.dev/resolve-conflict";

/// The webapp's base URL: an operator flag can map an object to a URL (for
/// running outside the cluster); otherwise the in-cluster Service.
pub fn webapp_url(ctx: &Context, wan: &WhatsAppNumber) -> String {
    let key = format!("{}/{}", wan.namespace().unwrap_or_default(), wan.name_any());
    ctx.settings.webapp_urls.get(&key).cloned().unwrap_or_else(|| {
        format!("https://{}:{}", crate::resources::webapp::service_host(wan), crate::resources::WEBAPP_PORT)
    })
}

/// A non-empty key of a Secret.
pub(crate) fn secret_bytes(secret: Option<&Secret>, key: &str) -> Option<Vec<u8>> {
    secret?.data.as_ref()?.get(key).map(|v| v.0.clone()).filter(|v| !v.is_empty())
}

/// How the webapp's certificate is checked in this reconcile.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TrustPlan {
    Use(Trust),
    /// Nothing to trust yet: the client's own CA is read once over an
    /// unverified connection and pinned in the key Secret.
    PinFirst,
}

/// Which certificates to trust for the webapp, or why none can be chosen. Pure.
pub fn trust(wan: &WhatsAppNumber, observed: &Observed, keys: Option<&Secret>) -> Result<TrustPlan, String> {
    let spec = &wan.spec.health;
    if spec.insecure_skip_tls_verify {
        return Ok(TrustPlan::Use(Trust::InsecureSkipVerify));
    }
    if let Some(r) = &spec.ca_secret_ref {
        return secret_bytes(observed.health_ca.as_ref(), &r.key).map(|ca| TrustPlan::Use(Trust::Ca(ca))).ok_or_else(
            || format!("spec.health.caSecretRef: Secret {} has no key {} (or does not exist)", r.name, r.key),
        );
    }
    let pinned = secret_bytes(keys, WEBAPP_CA);
    let uploaded = wan.status.as_ref().is_some_and(|s| s.webapp_certificate.is_some());
    match (&wan.spec.webapp.tls, pinned) {
        // The uploaded certificate's CA, and the client's own until the
        // webapps have restarted with the new one.
        (Some(_), pinned) if pinned.is_some() || uploaded => {
            let mut pem = secret_bytes(observed.webapp_tls.as_ref(), "ca.crt").unwrap_or_default();
            let private_ca = !pem.is_empty();
            if let Some(p) = pinned {
                pem.push(b'\n');
                pem.extend(p);
            }
            Ok(TrustPlan::Use(if private_ca { Trust::Ca(pem) } else { Trust::CaAndSystemRoots(pem) }))
        }
        (None, Some(pinned)) => Ok(TrustPlan::Use(Trust::Ca(pinned))),
        _ => Ok(TrustPlan::PinFirst),
    }
}

/// The API key the operator generated for itself.
pub fn api_key(keys: Option<&Secret>) -> Option<String> {
    secret_bytes(keys, crate::resources::config::API_KEY).and_then(|k| String::from_utf8(k).ok())
}

/// The admin password: the user's Secret, else the generated one.
pub fn admin_password(wan: &WhatsAppNumber, observed: &Observed, keys: Option<&Secret>) -> Option<String> {
    let bytes = match &wan.spec.webapp.admin_password_secret_ref {
        Some(r) => secret_bytes(observed.admin_password.as_ref(), &r.key),
        None => secret_bytes(keys, ADMIN_PASSWORD),
    };
    bytes.and_then(|b| String::from_utf8(b).ok()).map(|p| p.trim().to_string())
}

/// The admin side of a probe, for the `AdminAccess` condition.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum AdminAccess {
    /// An admin session is open; `certificate` says what became of the upload.
    Open { certificate: Option<Result<(), String>> },
    /// The session could not be opened: (reason, message).
    Failed(&'static str, String),
}

pub const ADMIN_LOGIN_REFUSED: &str = "AdminLoginRefused";
pub const ADMIN_UNAVAILABLE: &str = "AdminUnavailable";
pub const CERTIFICATE_REFUSED: &str = "CertificateRefused";

/// What the gateway steps found and changed.
#[derive(Clone, Debug)]
pub struct GatewayReport {
    pub observation: Observation,
    /// When the probe judged here ended (it began after the last refresh);
    /// when no probe could be made, the time that was found.
    pub probed_at: jiff::Timestamp,
    pub admin: AdminAccess,
    /// `None` while the client's shard count is unknown to this probe.
    pub shards: Option<i32>,
    pub certificate: Option<WebappCertificateStatus>,
    pub registered_at: Option<Time>,
    pub external_conflict: Option<ExternalConflictStatus>,
    /// Registration, settings, backups and restore.
    pub lifecycle: super::lifecycle::LifecycleReport,
}

/// What a call to the webapp needs.
struct Connection {
    client: reqwest::Client,
    url: String,
    key: String,
}

impl Connection {
    fn open(ctx: &Context, wan: &WhatsAppNumber, trust: &Trust, keys: Option<&Secret>) -> Result<Self, String> {
        let key = api_key(keys).ok_or("the generated API key Secret is missing its WA_API_KEY")?;
        let timeout = Duration::from_secs(wan.spec.health.timeout_seconds as u64);
        let name = certificate_name(wan);
        let client = ctx.probes.clients().get(trust, name.as_deref(), timeout).map_err(|e| e.to_string())?;
        Ok(Self { client, url: webapp_url(ctx, wan), key })
    }

    fn webapp(&self) -> Webapp<'_> {
        Webapp { client: &self.client, base_url: &self.url, api_key: &self.key }
    }
}

/// The name the webapp's certificate is made for when it is not the host the
/// operator dials: the client makes its own for `WA_WEB_SERVERNAME`, and an
/// uploaded one is for the name clients use.
fn certificate_name(wan: &WhatsAppNumber) -> Option<String> {
    wan.spec.webapp.server_name.clone()
}

/// The number's key for sessions and probes.
pub fn number_key(wan: &WhatsAppNumber) -> probes::Key {
    (wan.namespace().unwrap_or_default(), wan.name_any())
}

/// A cached admin session, or a new one.
async fn admin_session(
    ctx: &Context,
    wan: &WhatsAppNumber,
    webapp: &Webapp<'_>,
    password: &str,
) -> Result<String, SessionError> {
    let (token, changed) = ctx.probes.sessions().token(&number_key(wan), webapp, password).await?;
    if changed {
        info!("moved the client's admin user off its default password");
    }
    Ok(token)
}

/// Drops the cached session, after the client refused its token.
fn forget_session(ctx: &Context, wan: &WhatsAppNumber) {
    ctx.probes.sessions().forget(&number_key(wan));
}

/// Keeps the client's own CA, read once over an unverified connection, in the
/// key Secret; every later call verifies the webapp against it.
async fn pin_client_ca(ctx: &Context, wan: &WhatsAppNumber, ca: &[u8]) -> Result<(), kube::Error> {
    let secrets: Api<Secret> = Api::namespaced(ctx.client.clone(), &wan.namespace().unwrap_or_default());
    let patch = json!({"data": {WEBAPP_CA: ByteString(ca.to_vec())}});
    secrets.patch(&Names::new(wan).keys(), &PatchParams::default(), &Patch::Merge(&patch)).await?;
    ctx.metrics.record_write("Secret", "patch");
    warn!(
        "pinned the webapp's own CA, read once without verification; set spec.health.caSecretRef to choose the CA instead"
    );
    Ok(())
}

/// Stops probing a number: deleted, suspended, or not yet initialised. The
/// probes keep its gateway gauge while they run; from now on it reads down.
pub fn stop_probing(ctx: &Context, wan: &WhatsAppNumber) {
    ctx.probes.forget(&number_key(wan));
    ctx.metrics.gateway_up.get_or_create(&ctx.metrics.number(wan)).set(0);
}

/// What the probe scheduler has for a number, once it is told what to probe.
enum Watched {
    /// Known without asking the webapp: why it cannot be called.
    CannotProbe(String),
    /// The first result for the current settings is still awaited.
    Awaiting,
    /// Boxed: the other answers are small.
    Latest(Box<Found>),
}

struct Found {
    latest: probes::Latest,
    connection: Connection,
    password: String,
}

/// Points the probe scheduler at the number's webapp (its health too, or only
/// its admin session) and returns what it found last. A CA read by the probe
/// is pinned here.
async fn watch(
    ctx: &Context,
    wan: &WhatsAppNumber,
    observed: &Observed,
    keys: Option<&Secret>,
    poll_health: bool,
) -> super::Result<Watched> {
    let Some(password) = admin_password(wan, observed, keys) else {
        return Ok(Watched::CannotProbe("the admin password is not available yet".into()));
    };
    let (trust, pin_ca) = match trust(wan, observed, keys) {
        Ok(TrustPlan::Use(t)) => (t, false),
        Ok(TrustPlan::PinFirst) => (Trust::InsecureSkipVerify, true),
        Err(why) => return Ok(Watched::CannotProbe(why)),
    };
    let connection = match Connection::open(ctx, wan, &trust, keys) {
        Ok(c) => c,
        Err(why) => return Ok(Watched::CannotProbe(why)),
    };
    let key = number_key(wan);
    let nodes = probes::NodeLogs {
        namespace: wan.namespace().unwrap_or_default(),
        pods: crate::resources::workloads::node_pods(wan),
    };
    let target = |trust: Trust, pin_ca: bool| probes::Target {
        health: poll_health,
        url: connection.url.clone(),
        trust,
        certificate_name: certificate_name(wan),
        api_key: connection.key.clone(),
        admin_password: Some(password.clone()),
        read_settings: poll_health && wan.spec.settings.is_some(),
        pin_ca,
        timeout: Duration::from_secs(wan.spec.health.timeout_seconds as u64),
        interval: Duration::from_secs(wan.spec.health.poll_interval_seconds as u64),
        shards: wan.spec.multiconnect.shards,
        nodes: nodes.clone(),
        labels: ctx.metrics.number(wan),
    };
    let new_target = ctx.probes.watch(&key, target(trust.clone(), pin_ca));
    if new_target && trust == Trust::InsecureSkipVerify && !pin_ca {
        // Once per setting, not per reconcile; AdminAccess says so all along.
        warn!("the webapp's certificate is not verified: spec.health.insecureSkipTLSVerify is true");
    }
    let Some(latest) = ctx.probes.latest(&key) else { return Ok(Watched::Awaiting) };
    if let Some(ca) = &latest.probe.ca {
        pin_client_ca(ctx, wan, ca).await?;
        // Verified from now on; the Secret's change brings the next reconcile.
        ctx.probes.watch(&key, target(Trust::Ca(ca.clone()), false));
        return Ok(Watched::Awaiting);
    }
    Ok(Watched::Latest(Box::new(Found { latest, connection, password })))
}

/// The admin side of the client while its health is not polled.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum AdminOnly {
    /// The first login is awaited: what status shows stands.
    Awaiting,
    Seen {
        admin: AdminAccess,
        certificate: Option<WebappCertificateStatus>,
    },
}

/// With health polling off the operator still holds an admin session, so
/// that the client's admin user never keeps its default password, and
/// uploads `spec.webapp.tls`; registration, settings, backups and shard
/// changes go by what health reports, so they wait for polling.
pub async fn admin_only(
    ctx: &Context,
    wan: &WhatsAppNumber,
    observed: &Observed,
    keys: Option<&Secret>,
) -> super::Result<AdminOnly> {
    let certificate = wan.status.as_ref().and_then(|s| s.webapp_certificate.as_deref().cloned());
    let failed =
        |reason, why| AdminOnly::Seen { admin: AdminAccess::Failed(reason, why), certificate: certificate.clone() };
    let watched = watch(ctx, wan, observed, keys, false).await?;
    // Health is not judged: the gateway reads down, as with polling off (set
    // once the health probe, if one ran, is no longer the target).
    ctx.metrics.gateway_up.get_or_create(&ctx.metrics.number(wan)).set(0);
    let (latest, connection, password) = match watched {
        Watched::Latest(found) => {
            let Found { latest, connection, password } = *found;
            (latest, connection, password)
        }
        Watched::Awaiting => return Ok(AdminOnly::Awaiting),
        Watched::CannotProbe(why) => {
            ctx.probes.forget(&number_key(wan));
            return Ok(failed(ADMIN_UNAVAILABLE, why));
        }
    };
    let token = match latest.probe.admin {
        probes::Admin::Open => match admin_session(ctx, wan, &connection.webapp(), &password).await {
            Ok(token) => token,
            Err(e) => {
                // The probe looks hourly once a session is open: look again now.
                ctx.probes.refresh(&number_key(wan));
                return Ok(failed(ADMIN_UNAVAILABLE, e.summary()));
            }
        },
        probes::Admin::Refused(why) => return Ok(failed(ADMIN_LOGIN_REFUSED, why)),
        probes::Admin::Unavailable(why) => return Ok(failed(ADMIN_UNAVAILABLE, why)),
        // The probe gave up before the login (a deadline): its reason says why.
        probes::Admin::NotTried => {
            let why = match &latest.probe.health {
                Some(Err(why)) => why.clone(),
                _ => "the probe did not log in as the admin user".into(),
            };
            return Ok(failed(ADMIN_UNAVAILABLE, why));
        }
    };
    let mut certificate = certificate;
    let upload = upload_certificate(ctx, wan, observed, &connection.webapp(), &token, &mut certificate).await;
    // The webapps restart to serve the upload; a refused one waits for the
    // Secret's next change (or the next resync).
    if matches!(upload, Some(Ok(()))) {
        ctx.probes.refresh(&number_key(wan));
    }
    Ok(AdminOnly::Seen { admin: AdminAccess::Open { certificate: upload }, certificate })
}

/// Judges the latest probe of the webapp by role and mode, and makes the calls
/// that change the client when they are due: the certificate upload and the
/// lifecycle step. The probe itself runs on the scheduler; `None` means its
/// first result for the current settings is still awaited, and what status
/// shows stands until it comes.
pub async fn observe(
    ctx: &Context,
    wan: &WhatsAppNumber,
    observed: &Observed,
    keys: Option<&Secret>,
    nodes_running: bool,
) -> super::Result<Option<GatewayReport>> {
    let status = wan.status.as_ref();
    let previous = status.and_then(|s| s.health.as_deref());
    let report = |observation: Observation, admin: AdminAccess, probed_at: jiff::Timestamp| GatewayReport {
        observation,
        probed_at,
        admin,
        shards: None,
        certificate: status.and_then(|s| s.webapp_certificate.as_deref().cloned()),
        registered_at: status.and_then(|s| s.registered_at.clone()),
        external_conflict: status.and_then(|s| s.external_conflict.as_deref().cloned()),
        lifecycle: super::lifecycle::LifecycleReport::from_status(status),
    };
    let unreachable = |why: String, at: &Time| {
        report(health::unreachable(why.clone(), previous, at), AdminAccess::Failed(ADMIN_UNAVAILABLE, why), at.0)
    };
    // A person declared the conflict over: a result from before says nothing
    // of now (the kicked nodes may still have shown the conflict), and would
    // record it again once the nodes start. The next probe decides.
    if status.and_then(|s| s.external_conflict.as_deref()).is_some_and(|c| super::plan::resolved(wan, c)) {
        ctx.probes.refresh(&number_key(wan));
    }
    let (latest, connection, password) = match watch(ctx, wan, observed, keys, true).await? {
        Watched::Latest(found) => {
            let Found { latest, connection, password } = *found;
            (latest, connection, password)
        }
        Watched::Awaiting => return Ok(None),
        Watched::CannotProbe(why) => {
            stop_probing(ctx, wan);
            return Ok(Some(unreachable(why, &Time(jiff::Timestamp::now()))));
        }
    };
    let now = Time(latest.at);
    let probe = latest.probe;
    let health = match &probe.health {
        Some(Ok(health)) => health,
        Some(Err(why)) => return Ok(Some(unreachable(why.clone(), &now))),
        None => return Ok(None),
    };
    let verdict = probe.verdict(wan.spec.multiconnect.shards).expect("the probe gave health");
    let pods = pods_by_host(ctx, wan).await;
    let observation = health::observed(verdict, health, probe.shards, &pods, previous, &now);
    let webapp = connection.webapp();
    // The probe opened the session; its token is cached unless it just ran out.
    let (admin, token) = match &probe.admin {
        probes::Admin::Open => match admin_session(ctx, wan, &webapp, &password).await {
            Ok(token) => (AdminAccess::Open { certificate: None }, Some(token)),
            Err(e) => (AdminAccess::Failed(ADMIN_UNAVAILABLE, e.summary()), None),
        },
        probes::Admin::Refused(why) => (AdminAccess::Failed(ADMIN_LOGIN_REFUSED, why.clone()), None),
        probes::Admin::Unavailable(why) => (AdminAccess::Failed(ADMIN_UNAVAILABLE, why.clone()), None),
        probes::Admin::NotTried => {
            (AdminAccess::Failed(ADMIN_UNAVAILABLE, "the probe did not log in as the admin user".into()), None)
        }
    };
    let mut report = report(observation, admin, now.0);
    report.shards =
        probe.shards.filter(|_| shard_count_usable(wan, status, &report.observation.verdict.gateway, now.0));
    let mut changed_client = false;
    if let Some(token) = &token
        && let Some(outcome) = upload_certificate(ctx, wan, observed, &webapp, token, &mut report.certificate).await
    {
        // A refused certificate is not uploaded again until the Secret holds
        // another (the refusal is remembered; a restart tries it once more).
        changed_client = outcome.is_ok();
        report.admin = AdminAccess::Open { certificate: Some(outcome) };
    }

    if let Some(token) = &token {
        let reachable = report.observation.block.nodes.iter().filter(|n| n.gateway_status.is_some()).count();
        let gateway = report.observation.verdict.gateway.clone();
        let before = report.lifecycle.clone();
        let unregistered_nodes = report
            .observation
            .block
            .nodes
            .iter()
            .filter(|n| n.gateway_status.as_deref() == Some("unregistered"))
            .count();
        let client =
            crate::lifecycle::Client { gateway: &gateway, nodes: reachable, unregistered_nodes, probed_at: now.0 };
        let seen = super::lifecycle::Seen { client, settings: probe.settings.as_ref() };
        report.lifecycle = super::lifecycle::step(ctx, wan, observed, &webapp, token, seen).await;
        changed_client |= report.lifecycle != before;
    }
    // What the client holds now is for the next probe to say.
    if changed_client {
        ctx.probes.refresh(&number_key(wan));
    }

    report.registered_at =
        registration_time(status, report.lifecycle.registration.as_ref(), &report.observation.verdict.gateway, &now);
    // A second instance of the number, connected from elsewhere. Only nodes
    // this object runs count, so that rows left by stopped nodes are no news.
    if nodes_running
        && report.external_conflict.is_none()
        && report.observation.verdict.reason == report::NUMBER_CONFLICT
    {
        warn!("another instance of the client is connected with this number; stopping masters and coreapps");
        report.external_conflict = Some(ExternalConflictStatus {
            detected_at: now.0.to_string(),
            message: report.observation.verdict.message.clone(),
        });
    }
    Ok(Some(report))
}

/// Whether the shard count of the probe that ended at `probed_at` may ground
/// a shard change (see [`sharding::count_usable`]). The reconcile that
/// restored a backup refreshed the probe, which drops the results of probes
/// begun before: a probe that ended after the restore began after it.
fn shard_count_usable(
    wan: &WhatsAppNumber,
    status: Option<&crate::api::WhatsAppNumberStatus>,
    gateway: &str,
    probed_at: jiff::Timestamp,
) -> bool {
    use crate::api::RestoreOutcome;
    let recorded = status.and_then(|s| s.restore.as_deref());
    let (pending, restored_at) = match &wan.spec.restore_from {
        None => (false, None),
        Some(from) => match recorded.filter(|r| r.passed(&from.source())) {
            Some(r) => (false, (r.outcome == RestoreOutcome::Restored).then_some(r.at.0)),
            None => (true, None),
        },
    };
    crate::sharding::count_usable(gateway, pending, restored_at, probed_at)
}

/// Uploads `spec.webapp.tls` when it differs from what the client accepted
/// last. Returns the outcome when an upload was tried.
async fn upload_certificate(
    ctx: &Context,
    wan: &WhatsAppNumber,
    observed: &Observed,
    webapp: &Webapp<'_>,
    token: &str,
    uploaded: &mut Option<WebappCertificateStatus>,
) -> Option<Result<(), String>> {
    let (bundle, digest) = certificate_to_upload(wan, observed, uploaded.as_ref())?;
    // The client refused this very certificate: it waits for a new one in
    // the Secret, and the refusal stays shown.
    if let Some(why) = ctx.certificate_refusal(wan, &digest) {
        return Some(Err(why));
    }
    match webapp.upload_certificate(token, &bundle).await {
        Ok(()) => {
            info!("uploaded the webapp certificate; the webapps restart to serve it");
            ctx.certificate_answered(wan, &digest, None);
            *uploaded =
                Some(WebappCertificateStatus { uploaded_digest: digest, uploaded_at: Time(jiff::Timestamp::now()) });
            Some(Ok(()))
        }
        Err(e) => {
            if matches!(e, CallError::Status { status: 401, .. }) {
                forget_session(ctx, wan);
            }
            // Only the client's judgement of the certificate stands; a lost
            // session, a timeout or a server error is tried again.
            if e.is_refusal() {
                warn!(error = %e, "the client refused the webapp certificate; it is not uploaded again until the Secret changes");
                ctx.certificate_answered(wan, &digest, Some(&e.to_string()));
            }
            Some(Err(e.to_string()))
        }
    }
}

/// The certificate bundle of `spec.webapp.tls` and its digest, when the
/// client does not hold it yet: never uploaded, or the Secret changed since
/// (a renewal by cert-manager, say). Pure.
pub fn certificate_to_upload(
    wan: &WhatsAppNumber,
    observed: &Observed,
    uploaded: Option<&WebappCertificateStatus>,
) -> Option<(Vec<u8>, String)> {
    wan.spec.webapp.tls.as_ref()?;
    let bundle = observed.webapp_tls.as_ref().and_then(super::validate::certificate_bundle)?;
    let digest = super::validate::bundle_digest(&bundle);
    if uploaded.is_some_and(|c| c.uploaded_digest == digest) {
        return None;
    }
    Some((bundle, digest))
}

async fn pods_by_host(ctx: &Context, wan: &WhatsAppNumber) -> BTreeMap<String, String> {
    let Ok(pods) =
        super::fencing::own_pods(&ctx.caches.node_pods, &wan.namespace().unwrap_or_default(), &wan.name_any()).await
    else {
        return BTreeMap::new();
    };
    // A node's hostname is its pod's name (the container hostname) or its pod
    // IP (`COREAPP_HOSTNAME`); index both.
    let mut index = BTreeMap::new();
    for pod in pods {
        let name = pod.name().to_string();
        if let Some(ip) = pod.ip.as_deref() {
            index.insert(ip.to_string(), name.clone());
        }
        index.insert(name.clone(), name);
    }
    index
}

/// When the number was registered, as far as the operator can know it: the
/// moment the client accepted the code the operator sent (`registration`,
/// after this probe's lifecycle step). A number found unregistered loses its
/// registration time, so one registered again without the operator's code
/// has none: a restore brings back an old registration, and a person may
/// register or restore by hand. Its age is then unknown, so a shard change
/// waits for `confirmShardChange`. (The client may still report the number
/// unregistered for a moment after it took the code: that keeps the time.)
pub fn registration_time(
    status: Option<&crate::api::WhatsAppNumberStatus>,
    registration: Option<&crate::api::RegistrationStatus>,
    gateway: &str,
    now: &Time,
) -> Option<Time> {
    use crate::api::RegistrationPhase;
    let before = status.and_then(|s| s.registration.as_deref());
    let code_accepted = registration.is_some_and(|r| {
        r.phase == RegistrationPhase::Registered
            && r.code_digest.is_some()
            && before.is_none_or(|b| {
                !matches!(b.phase, RegistrationPhase::Registered | RegistrationPhase::LoggedOff)
                    || b.code_digest != r.code_digest
            })
    });
    let was = status.and_then(|s| s.health.as_deref()).map(|h| h.gateway.as_str());
    match gateway {
        _ if code_accepted => Some(now.clone()),
        "unregistered" if was != Some("unregistered") => None,
        _ => status.and_then(|s| s.registered_at.clone()),
    }
}

/// The registration's age as far as the operator knows it.
pub fn registered(registered_at: Option<&Time>, now: jiff::Timestamp) -> Registered {
    match registered_at {
        Some(t) => Registered::Since(now.duration_since(t.0)),
        None => Registered::Unknown,
    }
}

/// The last shard change carried out as the media claim the operator
/// manages records it: what says a confirmation was spent once the status
/// that said so is lost.
fn recorded_shard_change(wan: &WhatsAppNumber, observed: &Observed) -> Option<ShardRequestStatus> {
    let claim = observed.media_claim.as_ref().filter(|_| wan.spec.media.existing_claim.is_none())?;
    crate::resources::media::shard_change_of(claim, &crate::api::database_identity(&wan.spec))
}

/// Moves a shard change one step: calls the API when the plan says so and the
/// registration material is there. Returns the status block to show.
pub async fn reconcile_shards(
    ctx: &Context,
    wan: &WhatsAppNumber,
    observed: &Observed,
    report: &GatewayReport,
    keys: Option<&Secret>,
    coreapps_ready: i32,
) -> ShardingStatus {
    let mc = &wan.spec.multiconnect;
    let now = jiff::Timestamp::now();
    let status = wan.status.as_ref();
    let previous = status.and_then(|s| s.sharding.as_ref());
    let last_request = previous.and_then(|s| s.last_request.clone()).or_else(|| recorded_shard_change(wan, observed));
    let current = report.shards;
    // The request as it would go now, and its inputs' digest: a refusal
    // stands while they stay the same.
    let request = shard_request(wan, observed, mc.shards);
    let request_digest = request.as_ref().ok().map(|r| shard_request_digest(wan, r));
    let retry_annotation = wan.annotations().get(RETRY_SHARD_CHANGE_ANNOTATION).cloned();
    let facts = sharding::Facts {
        desired: mc.shards,
        standby: mc.standby_coreapps,
        current,
        last_known: previous.and_then(|s| s.current),
        coreapps_ready,
        registered: registered(report.registered_at.as_ref(), now),
        confirmed: mc.confirm_shard_change,
        last_request: last_request.as_ref(),
        generation: wan.metadata.generation.unwrap_or_default(),
        request_digest: request_digest.as_deref(),
        retry_annotation: retry_annotation.as_deref(),
    };
    let plan = sharding::plan(&facts);
    let Step::SetShards(n) = plan.step else {
        return sharding::status(mc.shards, current, &plan.step, None, last_request);
    };
    let blocked = |why: String| sharding::status(mc.shards, current, &plan.step, Some(&why), last_request.clone());
    debug_assert_eq!(n, mc.shards, "the plan only ever sets the spec's count");
    let request = match request {
        Ok(r) => r,
        Err(why) => return blocked(why),
    };
    let Some(password) = admin_password(wan, observed, keys) else {
        return blocked("the admin password is not available yet".into());
    };
    let trust = match trust(wan, observed, keys) {
        Ok(TrustPlan::Use(t)) => t,
        Ok(TrustPlan::PinFirst) => return blocked("the webapp's CA is not pinned yet".into()),
        Err(why) => return blocked(why),
    };
    let connection = match Connection::open(ctx, wan, &trust, keys) {
        Ok(c) => c,
        Err(why) => return blocked(why),
    };
    let webapp = connection.webapp();
    let token = match admin_session(ctx, wan, &webapp, &password).await {
        Ok(t) => t,
        Err(e) => return blocked(e.to_string()),
    };
    let (outcome, message) = match webapp.set_shards(&token, &request).await {
        Ok(()) => {
            info!(shards = n, "the client accepted the shard change");
            ctx.probes.refresh(&number_key(wan));
            (ShardRequestOutcome::Accepted, String::new())
        }
        // No answer to a request that may have arrived: the client may have
        // changed its shards (and with an old registration, disconnected the
        // number). Never sent again on a guess; the next probe says the count.
        Err(e) if e.outcome_unknown() => {
            warn!(shards = n, error = %e, "no answer to the shard change; it is not sent again for this spec");
            ctx.probes.refresh(&number_key(wan));
            (ShardRequestOutcome::Unanswered, e.to_string())
        }
        Err(e) if e.is_retryable() => (ShardRequestOutcome::Retrying, e.to_string()),
        Err(e) => {
            warn!(shards = n, error = %e, "the client refused the shard change; it is not sent again for this spec");
            (ShardRequestOutcome::Refused, e.to_string())
        }
    };
    let sent = ShardRequestStatus {
        shards: n,
        generation: facts.generation,
        at: Time(now),
        outcome,
        message: message.clone(),
        request_digest,
        // Recorded also when absent (""), so that it tells from a record
        // written before it was.
        retry_annotation: Some(retry_annotation.unwrap_or_default()),
    };
    let mut shown = match outcome {
        // As every later reconcile shows it, so that it does not change.
        ShardRequestOutcome::Refused | ShardRequestOutcome::Unanswered => {
            let unanswered = outcome == ShardRequestOutcome::Unanswered;
            let step = Step::Refused { message: message.clone(), unanswered };
            sharding::status(mc.shards, current, &step, None, Some(sent))
        }
        _ => sharding::status(mc.shards, current, &plan.step, None, Some(sent)),
    };
    match outcome {
        ShardRequestOutcome::Accepted => {
            shown.message = format!("requested {n} shards; waiting for the client to report them");
        }
        ShardRequestOutcome::Retrying => shown.message = format!("shard change to {n} will be retried: {message}"),
        ShardRequestOutcome::Refused | ShardRequestOutcome::Unanswered => {}
    }
    shown
}

/// Digest of a shard request's inputs and the retry annotation. Pure.
pub fn shard_request_digest(wan: &WhatsAppNumber, request: &ShardRequest) -> String {
    let retry = wan.annotations().get(RETRY_SHARD_CHANGE_ANNOTATION).map(String::as_str).unwrap_or_default();
    crate::resources::digest(&(request.shards, &request.cert, &request.pin, retry))
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::{SecretKeyRef, WebappTls};
    use crate::fixtures::{sample, secret};

    #[test]
    fn the_certificate_is_uploaded_once_and_again_when_its_secret_changes() {
        let mut wan = sample();
        let first = secret(&[("tls.crt", "CERT-1"), ("tls.key", "KEY-1")]);
        let mut observed = Observed { webapp_tls: Some(first), ..Default::default() };
        assert_eq!(certificate_to_upload(&wan, &observed, None), None, "no spec.webapp.tls, nothing to upload");
        wan.spec.webapp.tls = Some(WebappTls { secret_name: "acme-tls".into() });
        let (bundle, digest) = certificate_to_upload(&wan, &observed, None).expect("a first upload");
        assert_eq!(bundle, b"KEY-1\nCERT-1\n");
        let uploaded =
            WebappCertificateStatus { uploaded_digest: digest.clone(), uploaded_at: Time(jiff::Timestamp::UNIX_EPOCH) };
        assert_eq!(certificate_to_upload(&wan, &observed, Some(&uploaded)), None, "the client holds it");
        // Renewed: the Secret holds another certificate.
        observed.webapp_tls = Some(secret(&[("tls.crt", "CERT-2"), ("tls.key", "KEY-2")]));
        let (bundle, renewed) = certificate_to_upload(&wan, &observed, Some(&uploaded)).expect("uploaded again");
        assert_eq!(bundle, b"KEY-2\nCERT-2\n");
        assert_ne!(renewed, digest);
        // Half-written (no key yet): nothing is uploaded until it is whole.
        observed.webapp_tls = Some(secret(&[("tls.crt", "CERT-3")]));
        assert_eq!(certificate_to_upload(&wan, &observed, Some(&uploaded)), None);
    }

    #[test]
    fn trust_pins_the_clients_ca_once_then_verifies_with_it() {
        let wan = sample();
        let observed = Observed::default();
        assert_eq!(trust(&wan, &observed, None), Ok(TrustPlan::PinFirst));
        let keys = secret(&[(WEBAPP_CA, "PINNED")]);
        assert_eq!(trust(&wan, &observed, Some(&keys)), Ok(TrustPlan::Use(Trust::Ca(b"PINNED".to_vec()))));
    }

    #[test]
    fn a_chosen_ca_or_the_opt_out_wins() {
        let mut wan = sample();
        wan.spec.health.ca_secret_ref = Some(Box::new(SecretKeyRef { name: "ca".into(), key: "ca.crt".into() }));
        let keys = secret(&[(WEBAPP_CA, "PINNED")]);
        assert!(trust(&wan, &Observed::default(), Some(&keys)).unwrap_err().contains("spec.health.caSecretRef"));
        let observed = Observed { health_ca: Some(secret(&[("ca.crt", "MINE")])), ..Default::default() };
        assert_eq!(trust(&wan, &observed, Some(&keys)), Ok(TrustPlan::Use(Trust::Ca(b"MINE".to_vec()))));
        wan.spec.health.insecure_skip_tls_verify = true;
        assert_eq!(trust(&wan, &observed, Some(&keys)), Ok(TrustPlan::Use(Trust::InsecureSkipVerify)));
    }

    #[test]
    fn an_uploaded_certificate_is_trusted_with_the_clients_own_ca_during_the_restart() {
        let mut wan = sample();
        wan.spec.webapp.tls = Some(WebappTls { secret_name: "web-tls".into() });
        let keys = secret(&[(WEBAPP_CA, "PINNED")]);
        let private = Observed { webapp_tls: Some(secret(&[("ca.crt", "PRIVATE")])), ..Default::default() };
        assert_eq!(trust(&wan, &private, Some(&keys)), Ok(TrustPlan::Use(Trust::Ca(b"PRIVATE\nPINNED".to_vec()))));
        let public = Observed { webapp_tls: Some(secret(&[("tls.crt", "C")])), ..Default::default() };
        assert_eq!(
            trust(&wan, &public, Some(&keys)),
            Ok(TrustPlan::Use(Trust::CaAndSystemRoots(b"\nPINNED".to_vec())))
        );
        // Before anything is pinned or uploaded, the client's CA comes first.
        assert_eq!(trust(&wan, &public, None), Ok(TrustPlan::PinFirst));
    }

    #[test]
    fn the_admin_password_comes_from_the_users_secret_or_the_generated_one() {
        let mut wan = sample();
        let keys = secret(&[(ADMIN_PASSWORD, "Generated-1\n")]);
        assert_eq!(admin_password(&wan, &Observed::default(), Some(&keys)).as_deref(), Some("Generated-1"));
        wan.spec.webapp.admin_password_secret_ref =
            Some(Box::new(crate::api::PasswordSecretRef { name: "admin".into(), key: "password".into() }));
        assert_eq!(admin_password(&wan, &Observed::default(), Some(&keys)), None);
        let observed = Observed { admin_password: Some(secret(&[("password", "Mine-123")])), ..Default::default() };
        assert_eq!(admin_password(&wan, &observed, Some(&keys)).as_deref(), Some("Mine-123"));
    }

    #[test]
    fn a_registration_has_a_time_only_when_the_client_took_the_operators_code() {
        use crate::api::{
            HealthStatus, RegistrationPhase, RegistrationStatus, RestoreOutcome, RestoreStatus, WhatsAppNumberStatus,
        };
        let now = Time("2026-01-10T00:00:00Z".parse().unwrap());
        let long_ago = Time("2025-01-01T00:00:00Z".parse().unwrap());
        let reg = |phase, code: Option<&str>| RegistrationStatus {
            phase,
            message: String::new(),
            request_digest: Some("inputs".into()),
            code_requested_at: None,
            code_digest: code.map(String::from),
            request_annotation: None,
            confirmed_at: None,
        };
        let status =
            |gateway: &str, registration: Option<RegistrationStatus>, at: Option<&Time>| WhatsAppNumberStatus {
                health: Some(Box::new(HealthStatus { gateway: gateway.into(), ..Default::default() })),
                registration: registration.map(Box::new),
                registered_at: at.cloned(),
                ..Default::default()
            };
        let waiting = status("unregistered", Some(reg(RegistrationPhase::CodeRequested, None)), None);
        let accepted = reg(RegistrationPhase::Registered, Some("c1"));

        // The client accepted the code the operator sent: registered now.
        assert_eq!(registration_time(Some(&waiting), Some(&accepted), "unregistered", &now), Some(now.clone()));
        // The next probes keep that time, also one that still finds the
        // number unregistered.
        let taken = status("unregistered", Some(accepted.clone()), Some(&now));
        let later = Time("2026-01-11T00:00:00Z".parse().unwrap());
        assert_eq!(registration_time(Some(&taken), Some(&accepted), "unregistered", &later), Some(now.clone()));
        assert_eq!(registration_time(Some(&taken), Some(&accepted), "connected", &later), Some(now.clone()));
        let registered = status("connected", Some(accepted.clone()), Some(&now));
        assert_eq!(registration_time(Some(&registered), Some(&accepted), "connected", &later), Some(now.clone()));

        // A restore (or a person by hand) registers the number again: the
        // registration is the backup's, of unknown age, even where the
        // operator once registered the number itself.
        let restored = WhatsAppNumberStatus {
            restore: Some(Box::new(RestoreStatus {
                outcome: RestoreOutcome::Restored,
                from: "backup".into(),
                at: now.clone(),
                message: String::new(),
            })),
            ..status("unregistered", None, None)
        };
        assert_eq!(registration_time(Some(&restored), None, "connected", &now), None);
        for before in ["connected", "unknown"] {
            let wiped = status(before, Some(accepted.clone()), Some(&long_ago));
            let seen_unregistered = registration_time(Some(&wiped), Some(&accepted), "unregistered", &now);
            assert_eq!(seen_unregistered, None, "a number found unregistered (after {before}) loses its time");
            let after_wipe = status("unregistered", Some(accepted.clone()), seen_unregistered.as_ref());
            assert_eq!(registration_time(Some(&after_wipe), Some(&accepted), "connected", &later), None);
        }
        // Logged off, then registered again (a restore, or by hand): the code
        // the operator sent once is no new registration.
        let logged_off = status("unregistered", Some(reg(RegistrationPhase::LoggedOff, Some("c1"))), None);
        assert_eq!(registration_time(Some(&logged_off), Some(&accepted), "connected", &later), None);
        // A new object's first probe finds the number unregistered.
        assert_eq!(registration_time(None, None, "unregistered", &now), None);

        // Registered before the operator watched it, or the probe knows nothing.
        assert_eq!(registration_time(None, None, "connected", &now), None);
        assert_eq!(registration_time(Some(&registered), Some(&accepted), "unknown", &later), Some(now.clone()));
        // A code request the client answered with "already registered" sent no code.
        let already = reg(RegistrationPhase::Registered, None);
        assert_eq!(registration_time(Some(&waiting), Some(&already), "connected", &now), None);
        // A refused code is no registration.
        let refused = reg(RegistrationPhase::CodeRefused, Some("c0"));
        assert_eq!(registration_time(Some(&waiting), Some(&refused), "unregistered", &now), None);
    }

    #[test]
    fn a_shard_request_is_new_when_its_count_certificate_pin_or_retry_annotation_is() {
        let mut wan = sample();
        let request = ShardRequest {
            cc: "1".into(),
            phone_number: "5550001111".into(),
            shards: 2,
            cert: "CERT".into(),
            pin: None,
        };
        let sent = shard_request_digest(&wan, &request);
        assert_eq!(shard_request_digest(&wan, &request), sent);
        wan.spec.webapp.replicas = 5;
        assert_eq!(shard_request_digest(&wan, &request), sent, "other spec fields are not inputs");
        for changed in [
            ShardRequest { shards: 4, ..request.clone() },
            ShardRequest { cert: "NEW".into(), ..request.clone() },
            ShardRequest { pin: Some("123456".into()), ..request.clone() },
        ] {
            assert_ne!(shard_request_digest(&wan, &changed), sent, "{changed:?}");
        }
        wan.metadata.annotations = Some([(RETRY_SHARD_CHANGE_ANNOTATION.to_string(), "1".to_string())].into());
        assert_ne!(shard_request_digest(&wan, &request), sent, "a person asks to send it again");
    }

    #[test]
    fn registration_age_is_unknown_unless_the_operator_saw_it() {
        let now: jiff::Timestamp = "2026-01-10T00:00:00Z".parse().unwrap();
        assert_eq!(registered(None, now), Registered::Unknown);
        let t = Time("2026-01-01T00:00:00Z".parse().unwrap());
        assert_eq!(registered(Some(&t), now), Registered::Since(jiff::SignedDuration::from_hours(9 * 24)));
    }
}
