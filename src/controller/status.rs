//! Status: conditions and tier readiness, computed purely from what the
//! reconcile found and did. Kubernetes conventions: every condition carries the
//! generation it describes, and its transition time changes only when its
//! status does.

use k8s_openapi::api::apps::v1::{Deployment, StatefulSet};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

use super::fencing::Waiting;
use super::outline::Outline;
use super::validate::Problem;
use kube::ResourceExt;

use crate::api::{
    BuildStatus, Condition, ShardPhase, ShardingStatus, TierStatus, UpgradeStatus, WhatsAppNumber, WhatsAppNumberStatus,
};
use crate::health::Observation;
use crate::upgrade::policy::BuildState;

pub const READY: &str = "Ready";
pub const PROGRESSING: &str = "Progressing";
pub const DEGRADED: &str = "Degraded";
pub const GATEWAY_CONNECTED: &str = "GatewayConnected";
pub const CONFLICT: &str = "Conflict";
pub const BUILD_EXPIRING: &str = "BuildExpiring";
pub const BUILD_EXPIRED: &str = "BuildExpired";
pub const STALLED: &str = "Stalled";
/// kstatus reads `Reconciling=True` as "in progress"; it mirrors `Progressing`.
pub const RECONCILING: &str = "Reconciling";
pub const RELEASE_CATALOG: &str = "ReleaseCatalogValid";

/// Reason of `Conflict` and `Ready` while another WhatsAppNumber holds the number.
pub const PHONE_NUMBER_IN_USE: &str = "PhoneNumberInUse";
/// Masters or coreapps of another instance of the number still exist.
pub const PREVIOUS_INSTANCE_RUNNING: &str = "PreviousInstanceRunning";
/// The WhatsAppNumber is being deleted and its nodes are stopping.
pub const DELETING: &str = "Deleting";
/// Reason when a shard change cannot be made (registration Secret, refusal).
pub const SHARD_CHANGE_BLOCKED: &str = "ShardChangeBlocked";
/// Reason of `Ready` while the client's shard count is not known and the
/// count it last reported is not the spec's.
pub const SHARD_COUNT_UNKNOWN: &str = "ShardCountUnknown";
/// Reason when a shard change waits for `spec.multiconnect.confirmShardChange`.
pub const SHARD_CHANGE_UNCONFIRMED: &str = "ShardChangeNeedsConfirmation";
/// Reason of `Conflict` when the client reports a second instance elsewhere.
pub const EXTERNAL_INSTANCE: &str = "ExternalInstance";
/// Reason of `Ready` while the first schema is created.
pub const INITIALIZING_DATABASE: &str = "InitializingDatabase";
/// Reason of `Ready` on a new number before its first children exist.
pub const DEPLOYING: &str = "Deploying";
/// Reason of `Ready` while a tier's workload rolls out its newest template.
pub const ROLLING_OUT: &str = "RollingOut";
/// Reason of `Ready` while rolled-out pods are not all ready yet, and of
/// `Degraded` when pods are lost once the spec was fully rolled out.
pub const PODS_NOT_READY: &str = "PodsNotReady";
/// Reason of `Progressing` while rolled-out pods become ready.
pub const WAITING_FOR_PODS: &str = "WaitingForPods";
/// Reason of `Progressing` once the spec is fully rolled out.
pub const RECONCILED: &str = "Reconciled";
/// Reason of `Progressing`, `Degraded` and `Stalled` when a rollout has not
/// moved for `spec.progressDeadlineSeconds`.
pub const PROGRESS_DEADLINE_EXCEEDED: &str = "ProgressDeadlineExceeded";
/// The admin session and the uploaded certificate.
pub const ADMIN_ACCESS: &str = "AdminAccess";
pub const REGISTERED: &str = "Registered";
/// Reason while `spec.suspend` holds the number stopped.
pub const SUSPENDED: &str = "Suspended";
pub const SETTINGS_APPLIED: &str = "SettingsApplied";
pub const BACKED_UP: &str = "BackedUp";
pub const RESTORED: &str = "Restored";
/// The ServiceMonitor of the client's own metrics, when asked for.
pub const MONITORING: &str = "ClientMetricsScraped";

/// What a reconcile ended with, as far as status is concerned. One lives for
/// one reconcile, so the size of `Applied` does not matter.
#[derive(Clone, Debug)]
#[allow(clippy::large_enum_variant)]
pub enum Outcome {
    /// Validation stopped the reconcile before anything was applied.
    Blocked(Problem),
    /// Another WhatsAppNumber holds the phone number (its holder identity),
    /// with what is left of its masters and coreapps.
    Conflict { holder: String, waiting: Waiting },
    /// Masters or coreapps of another instance of the number still exist, and
    /// none of this one's: nothing starts until they are gone.
    Fenced(Waiting),
    /// The WhatsAppNumber is being deleted and its masters and coreapps are
    /// stopping; the number is released once they are gone.
    Stopping(Waiting),
    /// A new number, claimed and valid: its first status is written before
    /// any child, so that it shows without waiting for its own children's
    /// writes (the children come with the next reconcile).
    Deploying,
    /// The children were applied; this is what was observed.
    Applied(Applied),
}

#[derive(Clone, Debug)]
pub struct Applied {
    pub tiers: Tiers,
    pub health: GatewayHealth,
    pub sharding: Option<ShardingStatus>,
    pub versions: Versions,
    pub client: ClientState,
}

/// The gateway's health as this reconcile knows it.
#[derive(Clone, Debug, Default)]
pub enum GatewayHealth {
    /// Health polling is off, or nothing runs that could be probed.
    #[default]
    NotProbed,
    /// The first probe of the current probe settings is awaited (after a
    /// start, or a change the probe must see): what status shows stands.
    Awaiting,
    Probed(Box<Observation>),
}

impl GatewayHealth {
    pub fn observation(&self) -> Option<&Observation> {
        match self {
            GatewayHealth::Probed(o) => Some(o),
            _ => None,
        }
    }
}

/// Reason of `GatewayConnected` before the first probe.
pub const AWAITING_PROBE: &str = "AwaitingProbe";

/// The gateway's part in the conditions.
struct Gate {
    healthy: bool,
    status: &'static str,
    reason: String,
    message: String,
}

impl Gate {
    fn condition(&self) -> Cond {
        (GATEWAY_CONNECTED, self.status, self.reason.clone(), self.message.clone())
    }
}

/// From the probe; while the next one is awaited, what status said last.
fn gate(wan: &WhatsAppNumber, health: &GatewayHealth) -> Option<Gate> {
    match health {
        GatewayHealth::NotProbed => None,
        GatewayHealth::Probed(o) => Some(Gate {
            healthy: o.verdict.healthy,
            status: if o.verdict.healthy { "True" } else { "False" },
            reason: o.verdict.reason.to_string(),
            message: o.verdict.message.clone(),
        }),
        GatewayHealth::Awaiting => Some(match find(wan.status.as_ref(), GATEWAY_CONNECTED) {
            Some(c) if c.status == "True" || c.status == "False" => Gate {
                healthy: c.status == "True",
                status: if c.status == "True" { "True" } else { "False" },
                reason: c.reason.to_string(),
                message: c.message.to_string(),
            },
            _ => Gate {
                healthy: false,
                status: "Unknown",
                reason: AWAITING_PROBE.into(),
                message: "waiting for the first health probe of the webapp".into(),
            },
        }),
    }
}

/// Reasons of a first deployment's schema Job that waits for a person.
pub const SCHEMA_JOB_FAILED: &str = "SchemaJobFailed";
pub const SCHEMA_JOB_CANNOT_START: &str = "SchemaJobCannotStart";

/// How a first deployment's schema stands while no version runs yet.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum FirstSchema {
    /// Its Job is at work, or its pod waits to start.
    #[default]
    AtWork,
    /// Its Job has not started, or the Job of an earlier `spec.version`
    /// goes first: why.
    Waiting(String),
    /// Its attempts failed and it tries again: what the last one said.
    Retrying(String),
    /// Nothing goes on until a person acts: reason and message.
    Stuck(&'static str, String),
}

/// What the reconcile knows of the client beyond its health.
#[derive(Clone, Debug)]
pub struct ClientState {
    /// `spec.suspend`: the workloads are stopped or stopping.
    pub suspended: bool,
    /// The first schema is being created: nothing runs yet.
    pub initializing: bool,
    /// How that first schema stands.
    pub first_schema: FirstSchema,
    /// The admin session.
    pub admin: AdminState,
    pub certificate: Option<crate::api::WebappCertificateStatus>,
    pub registered_at: Option<Time>,
    /// An unresolved second instance outside the cluster: nodes are stopped.
    pub external_conflict: Option<crate::api::ExternalConflictStatus>,
    pub database_name_prefix: Option<String>,
    /// The client's ServiceMonitor kept, or why it cannot be.
    pub service_monitor: Result<Option<String>, String>,
    /// Registration, settings, backups and restore.
    pub lifecycle: crate::controller::lifecycle::LifecycleReport,
}

impl Default for ClientState {
    fn default() -> Self {
        Self {
            suspended: false,
            initializing: false,
            first_schema: FirstSchema::AtWork,
            admin: AdminState::NotContacted,
            certificate: None,
            registered_at: None,
            external_conflict: None,
            database_name_prefix: None,
            service_monitor: Ok(None),
            lifecycle: Default::default(),
        }
    }
}

/// The admin session as this reconcile knows it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum AdminState {
    /// Nothing runs that could be called (initializing, suspended, stopped).
    #[default]
    NotContacted,
    /// The first result of the current settings is awaited: what status shows stands.
    Awaiting,
    Seen(crate::controller::gateway::AdminAccess),
}

/// Versions, expiry and the upgrade, as the reconcile left them.
#[derive(Clone, Debug, Default)]
pub struct Versions {
    pub current: Option<String>,
    pub target: Option<String>,
    pub build: Option<BuildStatus>,
    pub build_state: Option<BuildState>,
    pub before: String,
    /// The upgrade after this reconcile's step (kept once complete).
    pub upgrade: Option<UpgradeStatus>,
    /// Why the target is not being moved to: (reason, message).
    pub blocker: Option<(&'static str, String)>,
    /// Release catalog entries that were skipped.
    pub catalog_problems: Vec<String>,
}

/// The three workload tiers as their controllers report them.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Tiers {
    pub masters: TierStatus,
    pub coreapps: TierStatus,
    pub webapps: TierStatus,
    /// Client versions of the pod templates: masters, coreapps, webapps.
    pub versions: [Option<String>; 3],
    /// Master, coreapp and webapp pods that cannot run by themselves, and why
    /// ([`super::troubles::listed`]).
    pub troubles: Option<String>,
}

impl Tiers {
    fn named(&self) -> [(&'static str, &TierStatus); 3] {
        [("masters", &self.masters), ("coreapps", &self.coreapps), ("webapps", &self.webapps)]
    }

    pub fn all_ready(&self) -> bool {
        self.named().iter().all(|(_, t)| t.is_ready())
    }

    /// A tier is rolling out while its controller has not caught up with the
    /// newest spec or pods still run an older template.
    pub fn rolling_out(&self) -> Vec<&'static str> {
        self.named().iter().filter(|(_, t)| !t.observed || t.updated < t.desired).map(|(n, _)| *n).collect()
    }

    pub fn summary(&self) -> String {
        let counts = self
            .named()
            .iter()
            .map(|(n, t)| format!("{n} {}/{} ready, {} updated", t.ready, t.desired, t.updated))
            .collect::<Vec<_>>()
            .join("; ");
        match &self.troubles {
            Some(troubles) => format!("{counts}; not running: {troubles}"),
            None => counts,
        }
    }

    pub fn ready_pods(&self) -> String {
        let (ready, desired) =
            self.named().iter().fold((0, 0), |(r, d), (_, t)| (r + t.ready.min(t.desired), d + t.desired));
        format!("{ready}/{desired}")
    }
}

/// Tier readiness from a StatefulSet's own status and the revisions of its
/// pods there are (`pod_revisions`). Its updated count leaves out pods
/// missing or terminating; with no rolling update under way (the current
/// revision is the update revision, and no pod of another revision runs)
/// every pod there is, or comes back, at the newest template, so a pod lost
/// is not taken for a rollout. A template reverted in the middle of a
/// rollout, or a StatefulSet created anew over pods left running, makes the
/// revisions equal while older pods still run: those count as not updated.
/// Its ready count takes terminating pods in: a pod on its way out is not
/// counted ready then.
pub fn stateful_set_tier<'a>(
    sts: &Outline<StatefulSet>,
    mut pod_revisions: impl Iterator<Item = &'a str>,
) -> TierStatus {
    let status = sts.state.status.clone().unwrap_or_default();
    let desired = sts.state.replicas.unwrap_or(1);
    let observed = status.observed_generation.is_some() && status.observed_generation == sts.identity.generation;
    let (ready, updated) = (status.ready_replicas.unwrap_or(0), status.updated_replicas.unwrap_or(0));
    let one_revision = pod_revisions.all(|r| status.update_revision.as_deref() == Some(r));
    if observed && status.update_complete && one_revision {
        TierStatus { desired, ready: ready.min(updated), updated: desired, observed }
    } else {
        TierStatus { desired, ready, updated, observed }
    }
}

/// Tier readiness from a Deployment's own status.
pub fn deployment_tier(deploy: &Outline<Deployment>) -> TierStatus {
    let status = deploy.state.status.clone().unwrap_or_default();
    let desired = deploy.state.replicas.unwrap_or(1);
    // During a surge the total exceeds the desired count; old pods are not "updated".
    TierStatus {
        desired,
        ready: status.ready_replicas.unwrap_or(0).min(status.updated_replicas.unwrap_or(0).max(0)).min(desired),
        updated: status.updated_replicas.unwrap_or(0).min(desired),
        observed: status.observed_generation.is_some()
            && status.observed_generation == deploy.identity.generation
            && status.replicas == desired,
    }
}

/// One condition before timestamps: (type, status, reason, message).
type Cond = (&'static str, &'static str, String, String);

fn cond(type_: &'static str, ok: bool, reason: impl Into<String>, message: impl Into<String>) -> Cond {
    (type_, if ok { "True" } else { "False" }, reason.into(), message.into())
}

fn not_probed(why: &str) -> Cond {
    (GATEWAY_CONNECTED, "Unknown", "NotProbed".into(), format!("the gateway is not probed while {why}"))
}

/// `Reconciling` beside `Progressing` (kstatus reads the one, Kubernetes
/// conventions name the other).
fn with_reconciling(mut conditions: Vec<Cond>) -> Vec<Cond> {
    if let Some(p) = conditions.iter().find(|c| c.0 == PROGRESSING).cloned() {
        conditions.push((RECONCILING, p.1, p.2, p.3));
    }
    conditions
}

fn outcome_conditions(wan: &WhatsAppNumber, outcome: &Outcome) -> Vec<Cond> {
    let number = &wan.spec.phone_number;
    let holds = || cond(CONFLICT, false, "NumberClaimed", format!("this WhatsAppNumber holds the claim on {number}"));
    match outcome {
        Outcome::Blocked(problem) => vec![
            cond(READY, false, problem.reason, problem.message.clone()),
            cond(PROGRESSING, false, problem.reason, "the reconcile is held until the problem is fixed"),
            cond(DEGRADED, true, problem.reason, problem.message.clone()),
            // Only a person can fix what validation found.
            cond(STALLED, true, problem.reason, problem.message.clone()),
            (
                GATEWAY_CONNECTED,
                "Unknown",
                "NotProbed".into(),
                "not judged while the reconcile is held; status.health keeps what the last judged probe found".into(),
            ),
            holds(),
        ],
        Outcome::Conflict { holder, waiting } => {
            let mut message = format!(
                "{number} is held by WhatsAppNumber {holder}; only one instance may run a number, so nothing is deployed until that one is deleted"
            );
            if !waiting.pods.is_empty() {
                message.push_str(&format!(" and its masters and coreapps are gone: {}", waiting.message));
            }
            vec![
                cond(READY, false, PHONE_NUMBER_IN_USE, message.clone()),
                cond(PROGRESSING, false, PHONE_NUMBER_IN_USE, "waiting for the number to be released"),
                cond(DEGRADED, true, PHONE_NUMBER_IN_USE, message.clone()),
                cond(STALLED, true, PHONE_NUMBER_IN_USE, message.clone()),
                not_probed("another WhatsAppNumber holds the number"),
                cond(CONFLICT, true, PHONE_NUMBER_IN_USE, message),
            ]
        }
        Outcome::Fenced(waiting) => {
            let message = format!(
                "masters and coreapps of {number} start once no pod of another instance of the number is left: {}",
                waiting.message
            );
            vec![
                cond(READY, false, PREVIOUS_INSTANCE_RUNNING, message.clone()),
                cond(
                    PROGRESSING,
                    !waiting.stuck,
                    PREVIOUS_INSTANCE_RUNNING,
                    "waiting for another instance's masters and coreapps to stop",
                ),
                cond(DEGRADED, waiting.stuck, PREVIOUS_INSTANCE_RUNNING, message.clone()),
                cond(STALLED, waiting.stuck, PREVIOUS_INSTANCE_RUNNING, message.clone()),
                not_probed("another instance of the number still has pods"),
                cond(CONFLICT, true, PREVIOUS_INSTANCE_RUNNING, message),
            ]
        }
        Outcome::Deploying => {
            let message = "creating the number's Secrets, configuration, media claim, Services and schema Job";
            vec![
                cond(READY, false, DEPLOYING, message),
                cond(PROGRESSING, true, DEPLOYING, message),
                cond(DEGRADED, false, "AsExpected", "no problem found"),
                cond(STALLED, false, "NotStalled", "nothing needs a person"),
                holds(),
            ]
        }
        Outcome::Stopping(waiting) => {
            let message = format!(
                "being deleted: {number} is released once its masters, coreapps and schema upgrades are gone: {}",
                waiting.message
            );
            vec![
                cond(READY, false, DELETING, message.clone()),
                cond(PROGRESSING, !waiting.stuck, DELETING, "stopping masters and coreapps"),
                cond(DEGRADED, false, DELETING, "stopping on purpose"),
                cond(STALLED, waiting.stuck, DELETING, message),
                not_probed("the WhatsAppNumber is being deleted"),
                holds(),
            ]
        }
        Outcome::Applied(applied) => {
            let mut conditions = match &applied.client.external_conflict {
                Some(c) => external_conflict_conditions(wan, c),
                None if applied.client.suspended => suspended_conditions(applied, holds()),
                None => applied_conditions(wan, applied, holds()),
            };
            conditions.extend(version_conditions(&applied.versions));
            conditions.extend(admin_condition(wan, applied));
            conditions.extend(lifecycle_conditions(wan, &applied.client.lifecycle));
            if let Err(why) = &applied.client.service_monitor {
                conditions.push(cond(MONITORING, false, "ServiceMonitorUnavailable", why.clone()));
            } else if spec_asks_for(wan, MONITORING) {
                conditions.push(cond(MONITORING, true, "ServiceMonitorApplied", "the client's metrics are scraped"));
            }
            // Something only a person can unblock, beyond the version's own stalls.
            let stall = match (&applied.client.external_conflict, applied.sharding.as_ref().map(|s| s.phase)) {
                _ if first_schema_stuck(&applied.client).is_some() => first_schema_stuck(&applied.client),
                (Some(c), _) => Some((EXTERNAL_INSTANCE, c.message.clone())),
                (None, Some(ShardPhase::ConfirmationRequired)) => Some((
                    SHARD_CHANGE_UNCONFIRMED,
                    applied.sharding.as_ref().map(|s| s.message.clone()).unwrap_or_default(),
                )),
                (None, Some(ShardPhase::Blocked)) => Some((
                    SHARD_CHANGE_BLOCKED,
                    applied.sharding.as_ref().map(|s| s.message.clone()).unwrap_or_default(),
                )),
                _ => None,
            };
            if let Some((reason, message)) = stall
                && let Some(c) = conditions.iter_mut().find(|c| c.0 == STALLED && c.1 == "False")
            {
                *c = cond(STALLED, true, reason, message);
            }
            needs_a_person(&mut conditions);
            expired_build_degrades(&mut conditions, upgrading(&applied.versions).is_some());
            conditions
        }
    }
}

/// Refusals that only a person can answer, shown by the conditions of the
/// calls refused: the admin password, the webapp certificate, the code
/// request or the code, the backup to restore. Each makes `Degraded` true (a
/// person should look, even while the number serves). Those the number
/// cannot come up without (the registration, the restore) also make
/// `Stalled` true while it is not `Ready`, so that kstatus, Flux and Argo CD
/// stop waiting; a refused password or certificate stops no rollout.
fn needs_a_person(conditions: &mut [Cond]) {
    use crate::controller::gateway::{ADMIN_LOGIN_REFUSED, CERTIFICATE_REFUSED};
    // (condition, reason, whether the number cannot come up without a person)
    use crate::controller::validate::{SECRET_KEY_MISSING, SECRET_NOT_FOUND};
    const REFUSALS: [(&str, &str, bool); 8] = [
        (ADMIN_ACCESS, ADMIN_LOGIN_REFUSED, false),
        (ADMIN_ACCESS, CERTIFICATE_REFUSED, false),
        (REGISTERED, "CodeRequestRefused", true),
        (REGISTERED, "LoggedOff", true),
        (REGISTERED, "CodeRefused", true),
        (REGISTERED, SECRET_NOT_FOUND, true),
        (REGISTERED, SECRET_KEY_MISSING, true),
        (RESTORED, "RestoreRefused", true),
    ];
    let refused = |stalls: bool| {
        conditions
            .iter()
            .find(|c| c.1 == "False" && REFUSALS.iter().any(|r| (r.0, r.1) == (c.0, c.2.as_str()) && (r.2 || !stalls)))
            .map(|c| (c.2.clone(), c.3.clone()))
    };
    let ready = conditions.iter().any(|c| c.0 == READY && c.1 == "True");
    let (degrading, stalling) = (refused(false), refused(true).filter(|_| !ready));
    for c in conditions.iter_mut() {
        let by = match c.0 {
            DEGRADED => degrading.as_ref(),
            STALLED => stalling.as_ref(),
            _ => None,
        };
        if let Some((reason, message)) = by.filter(|_| c.1 == "False") {
            *c = (c.0, "True", reason.clone(), message.clone());
        }
    }
}

/// An expired build no longer connects: `Degraded` says so when nothing else
/// does, also under the `Manual` policy and with health polling off (where
/// no probe would). An upgrade under way is the cure, not a symptom.
fn expired_build_degrades(conditions: &mut [Cond], upgrading: bool) {
    let Some(expired) = conditions.iter().find(|c| c.0 == BUILD_EXPIRED && c.1 == "True").cloned() else { return };
    if upgrading {
        return;
    }
    if let Some(c) = conditions.iter_mut().find(|c| c.0 == DEGRADED && c.1 == "False" && c.2 == "AsExpected") {
        *c = cond(DEGRADED, true, BUILD_EXPIRED, expired.3);
    }
}

/// Another instance of the number runs outside this cluster: masters and
/// coreapps are stopped until a person resolves it.
fn external_conflict_conditions(wan: &WhatsAppNumber, c: &crate::api::ExternalConflictStatus) -> Vec<Cond> {
    let message = format!(
        "another instance of the WhatsApp Business API client, outside this cluster's control, is connected with {}; this object's masters and coreapps are stopped so that the number is not banned. Stop the other instance, then run: kubectl annotate whatsappnumber {} -n {} {}={} --overwrite ({})",
        wan.spec.phone_number,
        wan.name_any(),
        wan.namespace().unwrap_or_default(),
        crate::controller::gateway::RESOLVE_CONFLICT_ANNOTATION,
        c.detected_at,
        c.message
    );
    vec![
        cond(READY, false, EXTERNAL_INSTANCE, message.clone()),
        cond(PROGRESSING, false, EXTERNAL_INSTANCE, "waiting for a person to resolve the conflict"),
        cond(DEGRADED, true, EXTERNAL_INSTANCE, message.clone()),
        not_probed_unless_polling(),
        cond(CONFLICT, true, EXTERNAL_INSTANCE, message),
    ]
}

/// `spec.suspend`: stopped on purpose, which is neither progress nor trouble.
fn suspended_conditions(applied: &Applied, holds: Cond) -> Vec<Cond> {
    let t = &applied.tiers;
    let stopped = [&t.masters, &t.coreapps, &t.webapps].iter().all(|t| t.desired == 0 && t.ready == 0);
    let message = if stopped {
        "suspended by spec.suspend: every master, coreapp and webapp is stopped; media, databases and the number claim are kept".to_string()
    } else {
        format!("suspending: masters and coreapps stop first, then webapps ({})", t.summary())
    };
    vec![
        cond(READY, false, SUSPENDED, message.clone()),
        cond(PROGRESSING, false, SUSPENDED, message),
        cond(DEGRADED, false, SUSPENDED, "stopped on purpose"),
        not_probed("the number is suspended"),
        holds,
    ]
}

fn not_probed_unless_polling() -> Cond {
    (GATEWAY_CONNECTED, "False", EXTERNAL_INSTANCE.into(), "masters and coreapps are stopped".into())
}

/// `Registered` from what the registration record says.
fn registration_condition(recorded: Option<&crate::api::RegistrationStatus>) -> Cond {
    use crate::api::RegistrationPhase;
    match recorded {
        // Registered once: no code is requested again without a person.
        Some(r) if r.phase == RegistrationPhase::LoggedOff => cond(REGISTERED, false, "LoggedOff", r.message.clone()),
        Some(r) if r.phase == RegistrationPhase::Registered => cond(REGISTERED, true, "Registered", r.message.clone()),
        Some(r) if r.phase == RegistrationPhase::CodeRequested => {
            cond(REGISTERED, false, "WaitingForCode", r.message.clone())
        }
        Some(r) if r.phase == RegistrationPhase::CodeRefused => {
            cond(REGISTERED, false, "CodeRefused", r.message.clone())
        }
        Some(r) => cond(REGISTERED, false, "CodeRequestRefused", r.message.clone()),
        None => {
            cond(REGISTERED, false, "NotStarted", "registration starts once the webapp answers with an admin session")
        }
    }
}

/// `Registered`, `SettingsApplied`, `BackedUp` and `Restored`, each only when
/// the spec asks for what it reports.
fn lifecycle_conditions(wan: &WhatsAppNumber, l: &crate::controller::lifecycle::LifecycleReport) -> Vec<Cond> {
    use crate::api::RestoreOutcome;
    let mut out = vec![];
    if spec_asks_for(wan, REGISTERED) {
        // Nothing could be sent: what a person must put in place.
        out.push(if let Some((reason, message)) = &l.registration_material {
            cond(REGISTERED, false, *reason, message.clone())
        } else {
            registration_condition(l.registration.as_ref())
        });
    }
    if spec_asks_for(wan, SETTINGS_APPLIED) {
        out.push(match &l.settings {
            Some(s) if s.last_error.is_some() => {
                cond(SETTINGS_APPLIED, false, "SettingsRefused", s.last_error.clone().unwrap_or_default())
            }
            Some(s) if !s.drift.is_empty() => cond(
                SETTINGS_APPLIED,
                false,
                "SettingsDrifted",
                format!(
                    "changed through the API, not in the spec: {}; set spec.settings.driftPolicy: Correct to write the spec's values back, or change the spec",
                    s.drift.join(", ")
                ),
            ),
            Some(s) if s.applied_generation.is_some() => {
                cond(SETTINGS_APPLIED, true, "InSync", "the client's application settings are the spec's")
            }
            _ => cond(SETTINGS_APPLIED, false, "NotApplied", "settings are applied once the number is registered"),
        });
    }
    if spec_asks_for(wan, BACKED_UP) {
        out.push(match &l.backup {
            Some(b) if b.last_error.is_some() => cond(BACKED_UP, false, "BackupFailed", backup_failed_message(wan, b)),
            Some(b) if b.latest.is_some() => {
                let latest = b.latest.clone().unwrap_or_default();
                let what = if latest.starts_with("s3://") { latest } else { format!("Secret {latest}") };
                let left = match &b.prune_error {
                    Some(e) => format!("; older backups beyond spec.backup.keep are left until a later backup: {e}"),
                    None => String::new(),
                };
                cond(BACKED_UP, true, "BackedUp", format!("the newest backup is {what}{left}"))
            }
            _ => cond(BACKED_UP, false, "NoBackupYet", "the first backup runs at the next scheduled time"),
        });
    }
    if let Some(from) = &wan.spec.restore_from {
        out.push(match &l.restore {
            Some(r) if r.outcome == RestoreOutcome::Restored && r.from == from.source() => {
                let what = if from.object_store.is_some() { r.from.clone() } else { format!("Secret {}", r.from) };
                cond(RESTORED, true, "Restored", format!("restored from {what}"))
            }
            Some(r) if r.outcome == RestoreOutcome::Refused && r.from == from.source() => {
                cond(RESTORED, false, "RestoreRefused", r.message.clone())
            }
            Some(r) if r.outcome == RestoreOutcome::Retrying && r.from == from.source() => {
                cond(RESTORED, false, "RestoreRetrying", r.message.clone())
            }
            Some(r) if r.outcome == RestoreOutcome::AlreadyRegistered && r.from == from.source() => cond(
                RESTORED,
                false,
                "AlreadyRegistered",
                "the client reports the number registered, with no restore it confirmed; none is made over a registered number",
            ),
            _ => cond(RESTORED, false, "WaitingForNodes", "the backup is restored once every master and coreapp answers and each says the number is unregistered"),
        });
    }
    out
}

/// `AdminAccess`, once the webapp was called.
fn admin_condition(wan: &WhatsAppNumber, applied: &Applied) -> Option<Cond> {
    use crate::controller::gateway::{AdminAccess, CERTIFICATE_REFUSED};
    let admin = match &applied.client.admin {
        AdminState::NotContacted => return None,
        AdminState::Seen(admin) => admin,
        AdminState::Awaiting => {
            // What the last probe found stands until the next one.
            let previous = find(wan.status.as_ref(), ADMIN_ACCESS)?;
            let status = match previous.status.as_str() {
                "True" => "True",
                "False" => "False",
                _ => "Unknown",
            };
            return Some((ADMIN_ACCESS, status, previous.reason.to_string(), previous.message.to_string()));
        }
    };
    Some(match admin {
        AdminAccess::Open { certificate: Some(Err(why)) } => {
            cond(ADMIN_ACCESS, false, CERTIFICATE_REFUSED, format!("the client refused the webapp certificate: {why}"))
        }
        AdminAccess::Open { .. } => {
            let cert = if applied.client.certificate.is_some() { "; the webapp certificate is uploaded" } else { "" };
            // The opt-out stays visible for as long as it is on.
            let insecure = if wan.spec.health.insecure_skip_tls_verify {
                "; WARNING: the webapp's certificate is not verified (spec.health.insecureSkipTLSVerify), so the admin token and API key can be intercepted"
            } else {
                ""
            };
            cond(ADMIN_ACCESS, true, "SessionOpen", format!("the operator holds an admin session{cert}{insecure}"))
        }
        AdminAccess::Failed(reason, message) => cond(ADMIN_ACCESS, false, *reason, message.clone()),
    })
}

/// BuildExpiring, BuildExpired, Stalled and ReleaseCatalogValid.
fn version_conditions(v: &Versions) -> Vec<Cond> {
    let version = v.build.as_ref().map(|b| b.version.clone()).unwrap_or_default();
    let unknown = |type_| {
        (
            type_,
            "Unknown",
            "UnknownRelease".to_string(),
            format!(
                "{version} is not in the release catalog, so its expiry is unknown; add it to the catalog ConfigMap"
            ),
        )
    };
    let no_newer = v
        .blocker
        .as_ref()
        .filter(|(reason, _)| *reason == crate::upgrade::NO_NEWER_RELEASE)
        .map(|(_, why)| why.as_str());
    let (expiring, expired) = match &v.build_state {
        Some(BuildState::Valid(r)) => (
            cond(BUILD_EXPIRING, false, "BuildValid", format!("{version} expires on {}", r.expires_at)),
            cond(BUILD_EXPIRED, false, "BuildValid", format!("{version} expires on {}", r.expires_at)),
        ),
        // The Auto policy finds nothing to move to: said where the expiry is.
        Some(BuildState::Expiring(r)) => (
            match no_newer {
                Some(why) => cond(
                    BUILD_EXPIRING,
                    true,
                    crate::upgrade::NO_NEWER_RELEASE,
                    format!("{version} expires on {} (within {}); {why}", r.expires_at, v.before),
                ),
                None => cond(
                    BUILD_EXPIRING,
                    true,
                    BUILD_EXPIRING,
                    format!("{version} expires on {} (within {}): upgrade before then", r.expires_at, v.before),
                ),
            },
            cond(BUILD_EXPIRED, false, BUILD_EXPIRING, format!("{version} expires on {}", r.expires_at)),
        ),
        Some(BuildState::Expired(r)) => (
            cond(BUILD_EXPIRING, true, BUILD_EXPIRED, format!("{version} expired on {}", r.expires_at)),
            cond(
                BUILD_EXPIRED,
                true,
                BUILD_EXPIRED,
                match no_newer {
                    Some(why) => format!("{version} expired on {}: the client no longer connects; {why}", r.expires_at),
                    None => {
                        format!("{version} expired on {}: the client no longer connects; upgrade now", r.expires_at)
                    }
                },
            ),
        ),
        Some(BuildState::Unknown) | None => (unknown(BUILD_EXPIRING), unknown(BUILD_EXPIRED)),
    };
    let stalled = match (&v.upgrade, &v.blocker) {
        (Some(u), _) if u.stalled_reason.is_some() => {
            cond(STALLED, true, "UpgradeStalled", u.stalled_reason.clone().unwrap_or_default())
        }
        (_, Some((reason, message)))
            if [crate::upgrade::DOWNGRADE_REFUSED, crate::upgrade::SCHEMA_UPGRADE_UNFINISHED].contains(reason) =>
        {
            cond(STALLED, true, *reason, message.clone())
        }
        _ => cond(STALLED, false, "NotStalled", "nothing needs a person"),
    };
    let catalog = if v.catalog_problems.is_empty() {
        cond(RELEASE_CATALOG, true, "Valid", "every release catalog entry is valid")
    } else {
        cond(RELEASE_CATALOG, false, "InvalidCatalogEntry", format!("skipped: {}", v.catalog_problems.join("; ")))
    };
    vec![expiring, expired, stalled, catalog]
}

fn upgrading(v: &Versions) -> Option<&UpgradeStatus> {
    v.upgrade.as_ref().filter(|u| !crate::upgrade::procedure::is_done(u))
}

fn applied_conditions(wan: &WhatsAppNumber, applied: &Applied, holds: Cond) -> Vec<Cond> {
    let gate = gate(wan, &applied.health);
    if let Some(u) = upgrading(&applied.versions) {
        // A pause that comes too late to call the upgrade off: said here, as
        // the upgrade goes on by itself (a refused downgrade is `Stalled`).
        let paused = applied.versions.blocker.as_ref().filter(|(reason, _)| *reason == crate::upgrade::UPGRADES_PAUSED);
        let paused = paused.map(|(_, message)| format!(" ({message})")).unwrap_or_default();
        let progress = format!("upgrading {} -> {}: {}: {}{paused}", u.from, u.to, u.step, u.message);
        let mut conditions = match &u.stalled_reason {
            Some(why) => vec![
                cond(READY, false, "UpgradeStalled", why.clone()),
                cond(PROGRESSING, false, "UpgradeStalled", why.clone()),
                cond(DEGRADED, true, "UpgradeStalled", why.clone()),
            ],
            None => vec![
                cond(READY, false, "Upgrading", progress.clone()),
                cond(PROGRESSING, true, "Upgrading", progress),
                // Nodes are down on purpose during an upgrade.
                cond(DEGRADED, false, "AsExpected", "no problem found"),
            ],
        };
        conditions.extend(gate.map(|g| g.condition()));
        conditions.push(holds);
        return conditions;
    }
    // Nothing runs until a person says which schema the databases hold.
    if let Some((reason, message)) =
        applied.versions.blocker.as_ref().filter(|(r, _)| *r == crate::upgrade::SCHEMA_UPGRADE_UNFINISHED)
    {
        let mut conditions = vec![
            cond(READY, false, *reason, message.clone()),
            cond(PROGRESSING, false, *reason, "waiting for a person".to_string()),
            cond(DEGRADED, true, *reason, message.clone()),
        ];
        conditions.extend(gate.map(|g| g.condition()));
        conditions.push(holds);
        return conditions;
    }
    let mut conditions = steady_conditions(applied, gate, holds, rolled_out(wan));
    // A version the operator may not move to yet keeps the object from Ready.
    if let Some((reason, message)) = &applied.versions.blocker
        && *reason != crate::upgrade::NO_NEWER_RELEASE
        && conditions[0].1 == "True"
    {
        conditions[0] = cond(READY, false, *reason, message.clone());
    }
    conditions
}

/// A first deployment's schema Job that waits for a person: reason and message.
fn first_schema_stuck(client: &ClientState) -> Option<(&'static str, String)> {
    match &client.first_schema {
        FirstSchema::Stuck(reason, message) if client.initializing => Some((*reason, message.clone())),
        _ => None,
    }
}

/// Whether status last said that this generation's spec was fully rolled
/// out: pods lost since, with nothing rolling out, are an outage, not progress.
fn rolled_out(wan: &WhatsAppNumber) -> bool {
    find(wan.status.as_ref(), PROGRESSING).is_some_and(|c| {
        c.status == "False" && c.reason == RECONCILED && c.observed_generation == wan.metadata.generation
    })
}

fn steady_conditions(applied: &Applied, gate: Option<Gate>, holds: Cond, rolled_out: bool) -> Vec<Cond> {
    let tiers = &applied.tiers;
    let rolling = tiers.rolling_out();
    let summary = tiers.summary();
    let unhealthy = gate.as_ref().filter(|g| !g.healthy);
    let shard_phase = applied.sharding.as_ref().map(|s| s.phase);
    let shard_message = applied.sharding.as_ref().map(|s| s.message.clone()).unwrap_or_default();
    let shards_changing = matches!(shard_phase, Some(ShardPhase::ScalingCoreapps) | Some(ShardPhase::SettingShards));
    let shards_blocked = shard_phase == Some(ShardPhase::Blocked);
    let shards_unconfirmed = shard_phase == Some(ShardPhase::ConfirmationRequired);
    // Not known now, and last seen at another count than the spec's (just
    // edited, or not readable since): nothing says the spec is carried out.
    let shards_unknown = applied
        .sharding
        .as_ref()
        .filter(|s| s.phase == ShardPhase::Unknown)
        .and_then(|s| s.current.filter(|c| *c != s.desired).map(|c| (c, s.desired)));
    let initializing = applied.client.initializing;
    let init_message = match &applied.client.first_schema {
        FirstSchema::Waiting(why) | FirstSchema::Retrying(why) => why.clone(),
        _ => "creating the client's databases with the schema Job before any node or webapp starts".into(),
    };
    let stuck = first_schema_stuck(&applied.client);
    // Pods lost with nothing rolling out, once this spec was fully rolled
    // out (a node gone, a database lost): not progress, and the number does
    // not serve at full strength.
    let outage =
        rolled_out && rolling.is_empty() && !tiers.all_ready() && !initializing && !shards_changing && stuck.is_none();

    // Ready: the first thing that stands in the way names the reason.
    let ready = if let Some((reason, message)) = &stuck {
        cond(READY, false, *reason, message.clone())
    } else if initializing {
        cond(READY, false, INITIALIZING_DATABASE, init_message.clone())
    } else if !rolling.is_empty() {
        cond(READY, false, ROLLING_OUT, format!("rolling out {}: {summary}", rolling.join(", ")))
    } else if outage {
        cond(READY, false, PODS_NOT_READY, format!("pods not ready, nothing rolling out: {summary}"))
    } else if !tiers.all_ready() {
        cond(READY, false, PODS_NOT_READY, format!("waiting for pods: {summary}"))
    } else if let Some(g) = unhealthy {
        cond(READY, false, g.reason.clone(), g.message.clone())
    } else if shards_blocked {
        cond(READY, false, SHARD_CHANGE_BLOCKED, shard_message.clone())
    } else if shards_unconfirmed {
        cond(READY, false, SHARD_CHANGE_UNCONFIRMED, shard_message.clone())
    } else if shards_changing {
        cond(READY, false, format!("{:?}", shard_phase.unwrap_or_default()), shard_message.clone())
    } else if let Some((last, desired)) = shards_unknown {
        cond(
            READY,
            false,
            SHARD_COUNT_UNKNOWN,
            format!(
                "the spec asks for {desired} shards; the client ran {last} when last read, and its count is not known now"
            ),
        )
    } else {
        let gateway = gate.as_ref().map(|g| format!("; {}", g.message)).unwrap_or_default();
        cond(READY, true, "Ready", format!("all tiers ready: {summary}{gateway}"))
    };

    let progressing = if let Some((reason, message)) = &stuck {
        cond(PROGRESSING, false, *reason, message.clone())
    } else if initializing {
        cond(PROGRESSING, true, INITIALIZING_DATABASE, init_message)
    } else if !rolling.is_empty() {
        cond(PROGRESSING, true, ROLLING_OUT, format!("rolling out {}: {summary}", rolling.join(", ")))
    } else if !tiers.all_ready() && !outage {
        cond(PROGRESSING, true, WAITING_FOR_PODS, format!("waiting for pods: {summary}"))
    } else if shards_changing {
        cond(PROGRESSING, true, format!("{:?}", shard_phase.unwrap_or_default()), shard_message.clone())
    } else if let Some((last, desired)) = shards_unknown {
        cond(
            PROGRESSING,
            true,
            SHARD_COUNT_UNKNOWN,
            format!("reading the client's shard count (last {last}) before changing it to {desired}"),
        )
    } else {
        cond(PROGRESSING, false, RECONCILED, "the spec is fully rolled out")
    };

    // Degraded: the workloads are in place, yet the client is not serving.
    let degraded = match (unhealthy, stuck) {
        (_, Some((reason, message))) => cond(DEGRADED, true, reason, message),
        (Some(g), _) if tiers.all_ready() || outage => cond(DEGRADED, true, g.reason.clone(), g.message.clone()),
        _ if outage => cond(
            DEGRADED,
            true,
            PODS_NOT_READY,
            format!("pods not ready though the spec is fully rolled out: {summary}; the pods' events and logs say why"),
        ),
        (_, None) if shards_blocked => cond(DEGRADED, true, SHARD_CHANGE_BLOCKED, shard_message),
        _ => cond(DEGRADED, false, "AsExpected", "no problem found"),
    };

    let mut conditions = vec![ready, progressing, degraded];
    conditions.extend(gate.map(|g| g.condition()));
    conditions.push(holds);
    conditions
}

/// How long a status change may wait after the last status write, so that
/// one write carries several steps; `None`: it is news, written at once.
///
/// - Pod counts and the messages of conditions whose status and reason stand
///   (pods counted, pods still running): [`DETAIL_SETTLE`].
/// - While the number is coming up or rolling out (`Ready` False for a
///   progress reason, neither `Degraded` nor `Stalled`), and stays so: the
///   next step of the rollout too (the progress reason moving on, the first
///   version record, the other conditions' observations, the gateway's
///   health): [`ROLLOUT_SETTLE`].
///
/// Anything a person or a program waits for is news: `Ready`, `Degraded`,
/// `Stalled` or `Reconciling` turning, a new generation observed, and every
/// record the operator keeps in status (a recorded version changing, the
/// upgrade, shards, registration, certificate, backups). When the trouble
/// shown changes (`trouble_changed`, see [`trouble`]: one begins, changes or
/// ends), a rollout's step waits only [`DETAIL_SETTLE`]: the sooner a person
/// reads why, or that it is over, the sooner it is acted on.
pub fn hold(
    old: &WhatsAppNumberStatus,
    new: &WhatsAppNumberStatus,
    trouble_changed: bool,
) -> Option<std::time::Duration> {
    if old == new {
        return None;
    }
    let counts_blank = |s: &WhatsAppNumberStatus| WhatsAppNumberStatus {
        masters: None,
        coreapps: None,
        webapps: None,
        ready_pods: None,
        last_progress_time: None,
        ..s.clone()
    };
    // The first version record may wait: the media claim or the workloads
    // already show it (`plan::live_evidence`).
    let first_record = old.current_version.is_none();
    let first_shards = old.sharding.is_none() && new.sharding.as_ref().is_some_and(|s| s.last_request.is_none());
    let rollout = |s: &WhatsAppNumberStatus| WhatsAppNumberStatus {
        conditions: s
            .conditions
            .iter()
            .filter(|c| SUMMARY.contains(&&*c.type_))
            .map(|c| Condition {
                reason: "".into(),
                message: "".into(),
                last_transition_time: Time(k8s_openapi::jiff::Timestamp::UNIX_EPOCH),
                ..c.clone()
            })
            .collect(),
        // Observations, not records: what the build, the media claim and
        // the endpoint are, and the gateway's health.
        health: None,
        build: None,
        target_version: None,
        media_claim: None,
        webapp_endpoint: None,
        current_version: if first_record { None } else { s.current_version.clone() },
        // Shards as first seen, before any request to change them.
        sharding: s.sharding.clone().filter(|_| !first_shards),
        ..counts_blank(s)
    };
    if coming_up(old) && coming_up(new) && rollout(old) == rollout(new) {
        return Some(if trouble_changed { DETAIL_SETTLE } else { ROLLOUT_SETTLE });
    }
    let detail = |s: &WhatsAppNumberStatus| WhatsAppNumberStatus {
        conditions: s.conditions.iter().map(|c| Condition { message: "".into(), ..c.clone() }).collect(),
        ..counts_blank(s)
    };
    (detail(old) == detail(new)).then_some(DETAIL_SETTLE)
}

/// What the outcome names that is wrong and a person may fix while the
/// number comes up, as a digest: failed attempts of the first schema Job
/// (their count and the last one's words), master, coreapp and webapp
/// pods that cannot run. A crash loop reads alike through its restarts, so the digest
/// changes when a trouble begins, changes or ends, not at every restart.
pub fn trouble(outcome: &Outcome) -> Option<u64> {
    use std::hash::{Hash, Hasher};
    let Outcome::Applied(applied) = outcome else { return None };
    let retrying = match &applied.client.first_schema {
        FirstSchema::Retrying(why) => Some(why),
        _ => None,
    };
    if applied.tiers.troubles.is_none() && retrying.is_none() {
        return None;
    }
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    (&applied.tiers.troubles, retrying).hash(&mut hasher);
    Some(hasher.finish())
}

/// The conditions kstatus, `kubectl wait` and alerts read: a change of their
/// status is never held.
const SUMMARY: [&str; 5] = [READY, PROGRESSING, RECONCILING, DEGRADED, STALLED];

/// Reasons of `Ready` while the number is on its way there, nothing wrong.
const PROGRESS_REASONS: [&str; 4] = [DEPLOYING, INITIALIZING_DATABASE, ROLLING_OUT, PODS_NOT_READY];

/// How long pod counts and messages alone wait after a status write.
pub const DETAIL_SETTLE: std::time::Duration = std::time::Duration::from_secs(5);
/// How long the steps of a rollout wait after a status write.
pub const ROLLOUT_SETTLE: std::time::Duration = std::time::Duration::from_secs(30);

/// Whether this status shows the number on its way to Ready with nothing wrong.
fn coming_up(s: &WhatsAppNumberStatus) -> bool {
    let is = |type_: &str, status: &str| s.conditions.iter().any(|c| c.type_ == type_ && c.status == status);
    let ready = s.conditions.iter().find(|c| c.type_ == READY);
    ready.is_some_and(|c| c.status == "False" && PROGRESS_REASONS.contains(&&*c.reason))
        && !is(DEGRADED, "True")
        && !is(STALLED, "True")
}

/// `Progressing` reasons of the workloads' own rollout, which the progress
/// deadline bounds (coreapps added by a shard change included; the schema
/// Job and upgrades have their own limits).
const ROLLOUT_STEPS: [&str; 2] = [ROLLING_OUT, WAITING_FOR_PODS];

/// When the rollout last moved, while the workloads roll out: it began (a
/// new generation, or a step of it), or a tier gained an updated or a ready
/// pod since the status before. A pod lost is no move; one that becomes
/// ready again is (as for a Deployment), so a pod that keeps coming back
/// holds the deadline off.
fn last_progress(
    wan: &WhatsAppNumber,
    previous: Option<&WhatsAppNumberStatus>,
    conditions: &[Cond],
    tiers: &Tiers,
    now: &Time,
) -> Option<Time> {
    let step = conditions.iter().find(|c| c.0 == PROGRESSING && c.1 == "True" && ROLLOUT_STEPS.contains(&&*c.2))?;
    let ready_reason = conditions.iter().find(|c| c.0 == READY).map(|c| c.2.as_str());
    let Some(before) = previous.filter(|p| p.observed_generation == wan.metadata.generation) else {
        return Some(now.clone());
    };
    let Some(since) = &before.last_progress_time else { return Some(now.clone()) };
    let moved = |was: &Option<TierStatus>, is: &TierStatus| {
        was.as_ref().is_none_or(|w| is.ready > w.ready || is.updated > w.updated || is.desired != w.desired)
    };
    let same_step = find(Some(before), READY).map(|c| c.reason.as_str()) == ready_reason
        && find(Some(before), PROGRESSING)
            .is_some_and(|c| c.reason == step.2.as_str() || c.reason == PROGRESS_DEADLINE_EXCEEDED);
    let still = same_step
        && !moved(&before.masters, &tiers.masters)
        && !moved(&before.coreapps, &tiers.coreapps)
        && !moved(&before.webapps, &tiers.webapps);
    Some(if still { since.clone() } else { now.clone() })
}

/// A rollout that has not moved for `spec.progressDeadlineSeconds` is
/// reported failed, as a Deployment's is: a person should look at its pods.
/// It goes on, and reads as progress again once it moves.
fn past_deadline(wan: &WhatsAppNumber, conditions: &mut [Cond], since: &Time, now: &Time) {
    if deadline_from(wan, since).is_none_or(|at| now.0 < at.0) {
        return;
    }
    let deadline = wan.spec.progress_deadline_seconds;
    let Some(progress) = conditions.iter().find(|c| c.0 == PROGRESSING).map(|c| c.3.clone()) else { return };
    let message = format!(
        "no pod became updated or ready for {deadline} s (spec.progressDeadlineSeconds): {progress}; the pods' events and logs say why"
    );
    for c in conditions.iter_mut() {
        match c.0 {
            PROGRESSING => *c = cond(PROGRESSING, false, PROGRESS_DEADLINE_EXCEEDED, message.clone()),
            DEGRADED | STALLED if c.1 == "False" => *c = cond(c.0, true, PROGRESS_DEADLINE_EXCEEDED, message.clone()),
            _ => {}
        }
    }
}

/// When a rollout's progress deadline passes, if one runs.
pub fn progress_deadline(wan: &WhatsAppNumber, status: &WhatsAppNumberStatus) -> Option<Time> {
    deadline_from(wan, status.last_progress_time.as_ref()?)
}

/// `spec.progressDeadlineSeconds` after the last progress `since`.
fn deadline_from(wan: &WhatsAppNumber, since: &Time) -> Option<Time> {
    let deadline = k8s_openapi::jiff::SignedDuration::from_secs(wan.spec.progress_deadline_seconds.into());
    since.0.checked_add(deadline).ok().map(Time)
}

/// The full status for this outcome. `previous` supplies the transition times
/// of conditions whose status did not change, and fields this outcome says
/// nothing about (tier counts while blocked).
pub fn compute(
    wan: &WhatsAppNumber,
    outcome: &Outcome,
    previous: Option<&WhatsAppNumberStatus>,
    now: &Time,
) -> WhatsAppNumberStatus {
    let generation = wan.metadata.generation;
    let mut status = previous.cloned().unwrap_or_default();
    status.observed_generation = generation;
    let before = previous.map(|p| p.conditions.as_slice()).unwrap_or_default();
    let mut conditions = outcome_conditions(wan, outcome);
    status.last_progress_time = match outcome {
        Outcome::Applied(applied) => last_progress(wan, previous, &conditions, &applied.tiers, now),
        _ => None,
    };
    if let Some(since) = &status.last_progress_time {
        past_deadline(wan, &mut conditions, since, now);
    }
    status.conditions = with_reconciling(conditions)
        .into_iter()
        .map(|(type_, state, reason, message)| condition(before, type_, state, reason, message, generation, now))
        .collect();
    if let Outcome::Blocked(_) = outcome {
        // What a held reconcile cannot look at stands as last seen, with the
        // generation it was seen for: an expired build, a refused password
        // or registration of a number that still runs must not vanish.
        let said: Vec<Condition> = before
            .iter()
            .filter(|c| spec_asks_for(wan, c.type_.as_str()) && !status.conditions.iter().any(|n| n.type_ == c.type_))
            .cloned()
            .collect();
        status.conditions.extend(said);
    }
    if let Outcome::Deploying = outcome {
        // A record from the start: validation refuses a later change of it.
        status.database_name_prefix = Some(crate::api::database_name_prefix(&wan.spec));
    }
    if let Outcome::Applied(applied) = outcome {
        let tiers = &applied.tiers;
        status.masters = Some(tiers.masters.clone());
        status.coreapps = Some(tiers.coreapps.clone());
        status.webapps = Some(tiers.webapps.clone());
        status.ready_pods = Some(tiers.ready_pods());
        status.media_claim = Some(crate::resources::media_claim_name(wan));
        status.webapp_endpoint =
            Some(format!("https://{}:{}", crate::resources::webapp::service_host(wan), crate::resources::WEBAPP_PORT));
        match &applied.health {
            GatewayHealth::NotProbed => status.health = None,
            // What the last probe found stands.
            GatewayHealth::Awaiting => {}
            GatewayHealth::Probed(o) => status.health = Some(Box::new(o.block.clone())),
        }
        status.sharding = applied.sharding.clone();
        let v = &applied.versions;
        status.current_version = v.current.clone();
        status.target_version = v.target.clone();
        status.build = v.build.clone();
        status.upgrade = v.upgrade.clone().map(Box::new);
        let c = &applied.client;
        status.webapp_certificate = c.certificate.clone().map(Box::new);
        status.registered_at = c.registered_at.clone();
        status.external_conflict = c.external_conflict.clone().map(Box::new);
        status.database_name_prefix = c.database_name_prefix.clone();
        status.client_service_monitor = c.service_monitor.clone().ok().flatten();
        status.registration = c.lifecycle.registration.clone().map(Box::new);
        status.settings = c.lifecycle.settings.clone().map(Box::new);
        status.backup = c.lifecycle.backup.clone().map(Box::new);
        status.restore = c.lifecycle.restore.clone().filter(|r| !r.from.is_empty()).map(Box::new);
    }
    status
}

/// The failed backup's error, how many attempts in a row failed and when
/// the next is made (a change of what it reads may try sooner).
fn backup_failed_message(wan: &WhatsAppNumber, b: &crate::api::BackupStatus) -> String {
    let error = b.last_error.clone().unwrap_or_default();
    let (Some(spec), Some(last), Some(failed)) =
        (wan.spec.backup.as_ref(), b.last_attempt_time.as_ref(), crate::lifecycle::FailedBackups::of(b))
    else {
        return error;
    };
    let since = crate::lifecycle::BackupsSince::Attempt(last.0);
    let Ok(next) = crate::lifecycle::next_backup_attempt(&spec.schedule, since, Some(failed)) else {
        return error;
    };
    let attempts = match failed.in_a_row {
        1 => "1 attempt".to_string(),
        n => format!("{n} attempts in a row"),
    };
    // "Not before": a backup held (the number not registered, the client not
    // answering) is tried once it can be, which may be later.
    let next = next.strftime("%Y-%m-%dT%H:%M:%SZ");
    format!(
        "{error}; {attempts} failed; tried again by itself not before {next}, or once spec.backup or a Secret it reads changes"
    )
}

/// Whether the spec asks for what a condition reports on. A condition a
/// held reconcile cannot look at stands only while this holds: those of
/// parts since removed from the spec go.
fn spec_asks_for(wan: &WhatsAppNumber, type_: &str) -> bool {
    let spec = &wan.spec;
    match type_ {
        BUILD_EXPIRING | BUILD_EXPIRED | RELEASE_CATALOG | ADMIN_ACCESS => true,
        REGISTERED => spec.registration.as_ref().is_some_and(|r| r.method.is_some()),
        SETTINGS_APPLIED => spec.settings.is_some(),
        BACKED_UP => spec.backup.is_some(),
        RESTORED => spec.restore_from.is_some(),
        MONITORING => spec.monitoring.as_ref().is_some_and(|m| m.service_monitor),
        _ => false,
    }
}

/// A condition that keeps its previous transition time unless its status flips.
pub fn condition(
    previous: &[Condition],
    type_: &str,
    status: &str,
    reason: String,
    message: String,
    generation: Option<i64>,
    now: &Time,
) -> Condition {
    let last_transition_time = previous
        .iter()
        .find(|c| c.type_ == type_ && c.status == status)
        .map(|c| c.last_transition_time.clone())
        .unwrap_or_else(|| now.clone());
    Condition {
        type_: type_.into(),
        status: status.into(),
        reason: reason.into(),
        message: message.into(),
        observed_generation: generation,
        last_transition_time,
    }
}

/// Looks a condition up by type.
pub fn find<'a>(status: Option<&'a WhatsAppNumberStatus>, type_: &str) -> Option<&'a Condition> {
    status?.conditions.iter().find(|c| c.type_ == type_)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fixtures::sample;

    fn ready_tier(n: i32) -> TierStatus {
        TierStatus { desired: n, ready: n, updated: n, observed: true }
    }

    fn t(secs: i64) -> Time {
        Time(k8s_openapi::jiff::Timestamp::from_second(secs).unwrap())
    }

    /// [`hold`] for an outcome that names no trouble.
    fn hold_calm(old: &WhatsAppNumberStatus, new: &WhatsAppNumberStatus) -> Option<std::time::Duration> {
        hold(old, new, false)
    }

    fn applied(tiers: Tiers) -> Outcome {
        Outcome::Applied(Applied {
            tiers,
            health: GatewayHealth::NotProbed,
            sharding: None,
            versions: Default::default(),
            client: Default::default(),
        })
    }

    fn ready_tiers() -> Tiers {
        Tiers { masters: ready_tier(2), coreapps: ready_tier(2), webapps: ready_tier(2), ..Default::default() }
    }

    fn all_ready() -> Outcome {
        applied(ready_tiers())
    }

    fn cond<'a>(s: &'a WhatsAppNumberStatus, type_: &str) -> &'a Condition {
        find(Some(s), type_).unwrap()
    }

    #[test]
    fn restored_says_what_became_of_the_backup() {
        use crate::api::{RestoreOutcome, RestoreStatus};
        let wan = crate::fixtures::restoring();
        let with = |outcome: Option<RestoreOutcome>| {
            let mut applied = match all_ready() {
                Outcome::Applied(a) => a,
                _ => unreachable!(),
            };
            applied.client.lifecycle.restore = outcome.map(|outcome| RestoreStatus {
                outcome,
                from: "old-backup".into(),
                at: t(5),
                message: "no".into(),
            });
            let s = compute(&wan, &Outcome::Applied(applied), None, &t(10));
            let c = cond(&s, RESTORED);
            (c.status.clone(), c.reason.clone(), s.restore.map(|r| r.outcome))
        };
        assert_eq!(with(None), ("False".into(), "WaitingForNodes".into(), None));
        assert_eq!(
            with(Some(RestoreOutcome::Restored)),
            ("True".into(), "Restored".into(), Some(RestoreOutcome::Restored))
        );
        assert_eq!(
            with(Some(RestoreOutcome::Refused)),
            ("False".into(), "RestoreRefused".into(), Some(RestoreOutcome::Refused))
        );
        assert_eq!(
            with(Some(RestoreOutcome::Retrying)),
            ("False".into(), "RestoreRetrying".into(), Some(RestoreOutcome::Retrying))
        );
        // Recorded, so that no later pass restores over the registration.
        assert_eq!(
            with(Some(RestoreOutcome::AlreadyRegistered)),
            ("False".into(), "AlreadyRegistered".into(), Some(RestoreOutcome::AlreadyRegistered))
        );
    }

    #[test]
    fn backed_up_says_when_a_failed_backup_is_tried_again() {
        use crate::api::BackupStatus;
        let mut wan = sample();
        wan.spec.backup = Some(
            serde_json::from_value(serde_json::json!({"schedule": "0 3 * * *", "passwordSecretRef": {"name": "pw"}}))
                .unwrap(),
        );
        let with = |backup: BackupStatus| {
            let mut applied = match all_ready() {
                Outcome::Applied(a) => a,
                _ => unreachable!(),
            };
            applied.client.lifecycle.backup = Some(backup);
            let s = compute(&wan, &Outcome::Applied(applied), None, &t(100_000));
            let c = cond(&s, BACKED_UP);
            (c.status.clone(), c.reason.clone(), c.message.clone())
        };
        let failed = BackupStatus {
            last_attempt_time: Some(t(86_400 + 3 * 3_600)),
            last_error: Some("the store did not answer".into()),
            failed_with: Some("d".into()),
            consecutive_failures: 1,
            ..Default::default()
        };
        assert_eq!(
            with(failed.clone()),
            (
                "False".into(),
                "BackupFailed".into(),
                "the store did not answer; 1 attempt failed; tried again by itself not before 1970-01-02T03:00:30Z, or once spec.backup or a Secret it reads changes".into()
            )
        );
        let (_, _, message) = with(BackupStatus { consecutive_failures: 4, ..failed.clone() });
        assert!(
            message.contains("; 4 attempts in a row failed; tried again by itself not before 1970-01-02T03:04:00Z, "),
            "{message}"
        );
        let (_, reason, message) = with(BackupStatus { latest: Some("acme-backup-1".into()), ..Default::default() });
        assert_eq!((reason.as_str(), message.as_str()), ("BackedUp", "the newest backup is Secret acme-backup-1"));
    }

    #[test]
    fn ready_when_every_tier_is_ready() {
        let wan = sample();
        let s = compute(&wan, &all_ready(), None, &t(100));
        assert_eq!(s.observed_generation, Some(3));
        assert_eq!(cond(&s, READY).status, "True");
        assert_eq!(cond(&s, PROGRESSING).status, "False");
        assert_eq!(cond(&s, DEGRADED).status, "False");
        assert!(s.conditions.iter().all(|c| c.observed_generation == Some(3)));
        assert_eq!(s.ready_pods.as_deref(), Some("6/6"));
        assert_eq!(s.current_version, None, "the reconcile, not readiness, records versions");
    }

    #[test]
    fn rolling_tier_is_progressing_not_ready() {
        let wan = sample();
        let mut tiers =
            Tiers { masters: ready_tier(2), coreapps: ready_tier(2), webapps: ready_tier(2), ..Default::default() };
        tiers.webapps = TierStatus { desired: 3, ready: 2, updated: 2, observed: true };
        let s = compute(&wan, &applied(tiers.clone()), None, &t(100));
        assert_eq!((cond(&s, READY).status.as_str(), cond(&s, READY).reason.as_str()), ("False", "RollingOut"));
        assert_eq!(cond(&s, PROGRESSING).status, "True");
        assert!(cond(&s, PROGRESSING).message.contains("webapps"));
        assert!(s.current_version.is_none());

        // A workload controller that has not seen the newest spec yet is rolling out too,
        // even if its old counts look complete: never Ready for an unobserved generation.
        tiers.webapps = TierStatus { observed: false, ..ready_tier(2) };
        let s = compute(&wan, &applied(tiers), None, &t(100));
        assert_eq!(cond(&s, READY).status, "False");
    }

    #[test]
    fn only_moving_pod_counts_are_progress() {
        let wan = sample();
        let tiers = |coreapps_ready: i32, webapps_ready: i32| Tiers {
            masters: ready_tier(2),
            coreapps: TierStatus { desired: 2, ready: coreapps_ready, updated: 2, observed: true },
            webapps: TierStatus { desired: 2, ready: webapps_ready, updated: 2, observed: true },
            ..Default::default()
        };
        let one = compute(&wan, &applied(tiers(0, 0)), None, &t(1));
        let two = compute(&wan, &applied(tiers(1, 0)), Some(&one), &t(2));
        assert_ne!(cond(&one, READY).message, cond(&two, READY).message, "the message counts pods");
        assert_eq!(hold_calm(&one, &two), Some(ROLLOUT_SETTLE), "one more pod ready while the number comes up");
        assert_eq!(hold_calm(&one, &one), None, "no change is no progress");

        let ready = compute(&wan, &applied(tiers(2, 2)), Some(&two), &t(3));
        assert_eq!(hold_calm(&two, &ready), None, "Ready turning True is news at once");
        let mut recounted = ready.clone();
        recounted.masters = Some(TierStatus { desired: 2, ready: 2, updated: 1, observed: true });
        assert_eq!(hold_calm(&ready, &recounted), Some(DETAIL_SETTLE), "counts alone on a Ready number wait a moment");
        let mut recorded = two.clone();
        recorded.current_version = Some("2.53.2".into());
        assert_eq!(hold_calm(&two, &recorded), Some(ROLLOUT_SETTLE), "the first record, shown by the live objects too");
        let mut upgraded = recorded.clone();
        upgraded.current_version = Some("2.55.1".into());
        assert_eq!(hold_calm(&recorded, &upgraded), None, "a recorded version changing is news");
        let mut next_generation = two.clone();
        next_generation.observed_generation = Some(4);
        assert_eq!(hold_calm(&two, &next_generation), None);
    }

    #[test]
    fn the_steps_of_a_rollout_wait_and_problems_do_not() {
        let wan = sample();
        // As `deploy` reports them: the database prefix recorded from the start.
        let deployed = |tiers: Tiers, initializing: bool| {
            let Outcome::Applied(a) = applied(tiers) else { unreachable!() };
            let prefix = Some(crate::api::database_name_prefix(&wan.spec));
            Outcome::Applied(Applied {
                client: ClientState { initializing, database_name_prefix: prefix, ..Default::default() },
                ..a
            })
        };
        let initializing = deployed(Tiers::default(), true);
        let rolling = Tiers {
            masters: TierStatus { desired: 2, ready: 0, updated: 0, observed: true },
            coreapps: TierStatus { desired: 2, ready: 0, updated: 0, observed: true },
            webapps: ready_tier(2),
            ..Default::default()
        };
        let deploying = compute(&wan, &Outcome::Deploying, None, &t(0));
        assert_eq!(cond(&deploying, READY).reason, DEPLOYING);
        assert_eq!(cond(&deploying, RECONCILING).status, "True", "kstatus: in progress");
        let first = compute(&wan, &initializing, Some(&deploying), &t(1));
        assert_eq!(cond(&first, READY).reason, INITIALIZING_DATABASE);
        assert_eq!(hold_calm(&deploying, &first), Some(ROLLOUT_SETTLE), "the first children and what they show");
        let second = compute(&wan, &deployed(rolling.clone(), false), Some(&first), &t(2));
        assert_eq!(cond(&second, READY).reason, ROLLING_OUT);
        assert_eq!(hold_calm(&first, &second), Some(ROLLOUT_SETTLE), "the schema exists, the nodes start");

        let mut observed = second.clone();
        observed.conditions.push(Condition {
            type_: ADMIN_ACCESS.into(),
            status: "False".into(),
            reason: "AdminUnavailable".into(),
            message: "the webapp does not answer yet".into(),
            last_transition_time: t(3),
            observed_generation: Some(1),
        });
        assert_eq!(hold_calm(&second, &observed), Some(ROLLOUT_SETTLE), "an observation while the rollout goes on");

        let blocked = compute(
            &wan,
            &Outcome::Blocked(Problem { reason: "SecretNotFound", message: "no Secret".into() }),
            Some(&second),
            &t(3),
        );
        assert_eq!(hold_calm(&second, &blocked), None, "a problem is news");
        let ready = compute(&wan, &deployed(ready_tiers(), false), Some(&second), &t(3));
        assert_eq!(hold_calm(&second, &ready), None);
        let mut seen = second.clone();
        seen.sharding = Some(ShardingStatus { desired: 2, ..Default::default() });
        assert_eq!(hold_calm(&second, &seen), Some(ROLLOUT_SETTLE), "shards as first seen");
        let mut requested = seen.clone();
        requested.sharding.as_mut().unwrap().last_request = Some(crate::api::ShardRequestStatus {
            shards: 2,
            generation: 1,
            at: t(3),
            outcome: crate::api::ShardRequestOutcome::Accepted,
            message: String::new(),
            request_digest: None,
            retry_annotation: None,
        });
        assert_eq!(hold_calm(&seen, &requested), None, "a record the operator keeps is written at once");
        let mut recorded = second.clone();
        recorded.database_name_prefix = Some("wa1".into());
        assert_eq!(hold_calm(&second, &recorded), None, "the database prefix is a record");
        let stopping = compute(&wan, &deployed(rolling, false), Some(&ready), &t(4));
        assert_eq!(hold_calm(&ready, &stopping), None, "Ready turning False is news");
    }

    #[test]
    fn a_trouble_is_shown_sooner_than_a_step() {
        let wan = sample();
        let with = |initializing: bool, first_schema: FirstSchema, troubles: Option<&str>| {
            let Outcome::Applied(a) = applied(Tiers {
                masters: TierStatus { desired: 2, ready: 0, updated: 2, observed: true },
                coreapps: TierStatus { desired: 2, ready: 1, updated: 2, observed: true },
                webapps: ready_tier(2),
                troubles: troubles.map(Into::into),
                ..Default::default()
            }) else {
                unreachable!()
            };
            let prefix = Some(crate::api::database_name_prefix(&wan.spec));
            Outcome::Applied(Applied {
                client: ClientState { initializing, first_schema, database_name_prefix: prefix, ..Default::default() },
                ..a
            })
        };
        let at_work = with(true, FirstSchema::AtWork, None);
        assert_eq!(trouble(&at_work), None);
        assert_eq!(trouble(&Outcome::Deploying), None);
        let first = compute(&wan, &at_work, None, &t(1));
        // A failed attempt of the schema Job, while it tries again: shown
        // within DETAIL_SETTLE, as is the next attempt's failure.
        let attempt =
            |n: u32| with(true, FirstSchema::Retrying(format!("{n} attempts failed, the last with exit code 1")), None);
        assert!(trouble(&attempt(1)).is_some());
        assert_ne!(trouble(&attempt(1)), trouble(&attempt(2)), "another failed attempt is news");
        let retrying = compute(&wan, &attempt(1), Some(&first), &t(2));
        assert_eq!(cond(&retrying, READY).reason, INITIALIZING_DATABASE);
        assert!(cond(&retrying, READY).message.contains("1 attempts failed"), "{:?}", cond(&retrying, READY));
        let changed = |old: &Outcome, new: &Outcome| trouble(old) != trouble(new);
        assert_eq!(hold(&first, &retrying, changed(&at_work, &attempt(1))), Some(DETAIL_SETTLE));
        assert_eq!(hold(&first, &retrying, false), Some(ROLLOUT_SETTLE), "the same step, no trouble new");

        // A pod that cannot run while the nodes roll out.
        let calm = with(false, FirstSchema::AtWork, None);
        let rolling = compute(&wan, &calm, Some(&first), &t(3));
        let crash = "acme-master-0 (restarting, last exit code 1)";
        let crashing = with(false, FirstSchema::AtWork, Some(crash));
        let named = compute(&wan, &crashing, Some(&rolling), &t(4));
        assert!(cond(&named, READY).message.contains("not running: acme-master-0"), "{:?}", cond(&named, READY));
        assert_eq!(hold(&rolling, &named, changed(&calm, &crashing)), Some(DETAIL_SETTLE), "a trouble begins");
        // Other pods' counts move while the same trouble stays: a step like any.
        let Outcome::Applied(mut more) = with(false, FirstSchema::AtWork, Some(crash)) else { unreachable!() };
        more.tiers.coreapps.ready = 2;
        let more = Outcome::Applied(more);
        let counted = compute(&wan, &more, Some(&named), &t(5));
        assert_ne!(named, counted);
        assert_eq!(hold(&named, &counted, changed(&crashing, &more)), Some(ROLLOUT_SETTLE), "the same trouble");
        // The trouble ends: that it is over is shown as soon.
        let over = compute(&wan, &calm, Some(&named), &t(6));
        assert!(!cond(&over, READY).message.contains("not running"));
        assert_eq!(hold(&named, &over, changed(&crashing, &calm)), Some(DETAIL_SETTLE), "a trouble ends");
    }

    #[test]
    fn pods_not_ready_after_rollout_waits() {
        let wan = sample();
        let tiers = Tiers {
            masters: ready_tier(2),
            coreapps: TierStatus { desired: 2, ready: 1, updated: 2, observed: true },
            webapps: ready_tier(2),
            ..Default::default()
        };
        let s = compute(&wan, &applied(tiers), None, &t(1));
        assert_eq!(cond(&s, READY).reason, "PodsNotReady");
        assert_eq!(cond(&s, PROGRESSING).reason, "WaitingForPods");
        assert_eq!(s.ready_pods.as_deref(), Some("5/6"));
    }

    /// The status after `outcome`, with the object's status as it was before
    /// (as the reconcile sees it).
    fn next(wan: &mut WhatsAppNumber, outcome: &Outcome, at: i64) -> WhatsAppNumberStatus {
        let s = compute(wan, outcome, wan.status.as_ref(), &t(at));
        wan.status = Some(s.clone());
        s
    }

    fn states(s: &WhatsAppNumberStatus) -> [(String, String); 4] {
        [READY, PROGRESSING, DEGRADED, STALLED].map(|type_| {
            let c = cond(s, type_);
            (c.status.to_string(), c.reason.to_string())
        })
    }

    fn pair(status: &str, reason: &str) -> (String, String) {
        (status.into(), reason.into())
    }

    #[test]
    fn pods_lost_once_rolled_out_are_an_outage_not_progress() {
        let mut wan = sample();
        let one_coreapp_down =
            Tiers { coreapps: TierStatus { desired: 2, ready: 1, updated: 2, observed: true }, ..ready_tiers() };
        next(&mut wan, &all_ready(), 1);
        let s = next(&mut wan, &applied(one_coreapp_down.clone()), 2);
        assert_eq!(
            states(&s),
            [
                pair("False", PODS_NOT_READY),
                pair("False", RECONCILED),
                pair("True", PODS_NOT_READY),
                pair("False", "NotStalled")
            ]
        );
        assert!(cond(&s, DEGRADED).message.contains("coreapps 1/2 ready"), "{}", cond(&s, DEGRADED).message);
        assert_eq!(s.last_progress_time, None, "no rollout, no deadline");
        let again = next(&mut wan, &applied(one_coreapp_down.clone()), 3);
        assert_eq!(again, s, "the outage stands without a write");
        // A pod that cannot run by itself: the message says which and why.
        let looping = Tiers {
            troubles: Some("acme-coreapp-1 (restarting, last exit code 1)".into()),
            ..one_coreapp_down.clone()
        };
        let told = next(&mut wan.clone(), &applied(looping), 3);
        assert_eq!(states(&told), states(&s), "the same conditions");
        assert!(
            cond(&told, DEGRADED).message.contains("; not running: acme-coreapp-1 (restarting, last exit code 1)"),
            "{}",
            cond(&told, DEGRADED).message
        );

        // The gateway's own reason, when a probe says why.
        let mut unhealthy = match applied(one_coreapp_down.clone()) {
            Outcome::Applied(a) => a,
            _ => unreachable!(),
        };
        let down = HEALTHY.replace(r#""connected","role":"coreapp""#, r#""disconnected","role":"coreapp""#);
        unhealthy.health = GatewayHealth::Probed(Box::new(health(&down, 1)));
        let s = next(&mut wan, &Outcome::Applied(unhealthy), 4);
        assert_eq!(states(&s)[2], pair("True", "ShardsNotConnected"));

        let s = next(&mut wan, &all_ready(), 5);
        assert_eq!(states(&s)[..3], [pair("True", "Ready"), pair("False", RECONCILED), pair("False", "AsExpected")]);

        // A new generation's pods becoming ready are progress.
        wan.metadata.generation = Some(4);
        let s = next(&mut wan, &applied(one_coreapp_down), 6);
        assert_eq!(
            states(&s)[..3],
            [pair("False", PODS_NOT_READY), pair("True", WAITING_FOR_PODS), pair("False", "AsExpected")]
        );
    }

    #[test]
    fn a_rollout_that_does_not_move_past_its_deadline_fails_until_it_moves() {
        let mut wan = sample();
        wan.spec.progress_deadline_seconds = 600;
        let webapps = |ready: i32, updated: i32| Tiers {
            webapps: TierStatus { desired: 2, ready, updated, observed: true },
            ..ready_tiers()
        };
        let s = next(&mut wan, &applied(webapps(1, 1)), 1000);
        assert_eq!(cond(&s, PROGRESSING).reason, ROLLING_OUT);
        assert_eq!(s.last_progress_time, Some(t(1000)));
        assert_eq!(progress_deadline(&wan, &s), Some(t(1600)));
        let s = next(&mut wan, &applied(webapps(1, 1)), 1599);
        assert_eq!((cond(&s, PROGRESSING).status.as_str(), s.last_progress_time.clone()), ("True", Some(t(1000))));

        let s = next(&mut wan, &applied(webapps(1, 1)), 1600);
        assert_eq!(
            states(&s),
            [
                pair("False", ROLLING_OUT),
                pair("False", PROGRESS_DEADLINE_EXCEEDED),
                pair("True", PROGRESS_DEADLINE_EXCEEDED),
                pair("True", PROGRESS_DEADLINE_EXCEEDED)
            ]
        );
        assert_eq!(cond(&s, RECONCILING).status, "False", "kstatus sees it stop");
        assert!(cond(&s, PROGRESSING).message.contains("600 s"), "{}", cond(&s, PROGRESSING).message);
        assert_eq!(next(&mut wan, &applied(webapps(1, 1)), 1700), s, "nothing new: nothing to write");
        // A pod lost meanwhile is not progress.
        let s = next(&mut wan, &applied(webapps(0, 1)), 1800);
        assert_eq!(
            (cond(&s, PROGRESSING).reason.as_str(), s.last_progress_time.clone()),
            (PROGRESS_DEADLINE_EXCEEDED, Some(t(1000)))
        );

        // A pod updated: progress again, counted from now.
        let s = next(&mut wan, &applied(webapps(0, 2)), 1900);
        assert_eq!(
            states(&s)[..3],
            [pair("False", PODS_NOT_READY), pair("True", WAITING_FOR_PODS), pair("False", "AsExpected")]
        );
        assert_eq!(s.last_progress_time, Some(t(1900)));
        let s = next(&mut wan, &applied(webapps(2, 2)), 2000);
        assert_eq!(cond(&s, READY).status, "True");
        assert_eq!(s.last_progress_time, None);
        assert_eq!(progress_deadline(&wan, &s), None);
    }

    #[test]
    fn the_first_schema_and_upgrades_keep_their_own_limits() {
        let mut wan = sample();
        let mut initializing = match applied(Tiers::default()) {
            Outcome::Applied(a) => a,
            _ => unreachable!(),
        };
        initializing.client.initializing = true;
        next(&mut wan, &Outcome::Applied(initializing.clone()), 0);
        let s = next(&mut wan, &Outcome::Applied(initializing), 100_000);
        assert_eq!(
            (cond(&s, PROGRESSING).reason.as_str(), s.last_progress_time.clone()),
            (INITIALIZING_DATABASE, None)
        );
    }

    #[test]
    fn blocked_is_degraded_with_the_problem() {
        let wan = sample();
        let problem = Problem { reason: "SecretNotFound", message: "Secret team/acme-db ... does not exist".into() };
        let s = compute(&wan, &Outcome::Blocked(problem), None, &t(5));
        assert_eq!((cond(&s, READY).status.as_str(), cond(&s, READY).reason.as_str()), ("False", "SecretNotFound"));
        assert_eq!(cond(&s, DEGRADED).status, "True");
        assert!(cond(&s, DEGRADED).message.contains("acme-db"));
        assert_eq!(cond(&s, PROGRESSING).status, "False");
        assert!(s.masters.is_none(), "no counts invented while blocked");
    }

    #[test]
    fn transition_time_moves_only_when_status_flips() {
        let mut wan = sample();
        let first = compute(&wan, &all_ready(), None, &t(100));
        let same = compute(&wan, &all_ready(), Some(&first), &t(200));
        assert_eq!(first, same, "an unchanged outcome gives an identical status: nothing to write");

        wan.metadata.generation = Some(4);
        let rolling = applied(Tiers {
            masters: ready_tier(2),
            coreapps: TierStatus { observed: false, ..ready_tier(2) },
            webapps: ready_tier(2),
            ..Default::default()
        });
        let next = compute(&wan, &rolling, Some(&first), &t(300));
        assert_eq!(cond(&next, READY).last_transition_time, t(300));
        assert_eq!(cond(&next, DEGRADED).last_transition_time, t(100), "Degraded stayed False");
        assert_eq!(next.observed_generation, Some(4));
        assert!(next.conditions.iter().all(|c| c.observed_generation == Some(4)));
    }

    #[test]
    fn a_stateful_set_pod_lost_is_not_a_rolling_update() {
        use crate::controller::outline::{Workload, WorkloadStatus};
        let mut sts = Outline::<StatefulSet>::default();
        sts.identity.generation = Some(2);
        let with = |update_complete: bool, observed_generation: i64| Workload {
            replicas: Some(2),
            version: None,
            status: Some(WorkloadStatus {
                observed_generation: Some(observed_generation),
                replicas: 1,
                ready_replicas: Some(1),
                updated_replicas: Some(1),
                update_complete,
                update_revision: Some("acme-coreapp-2".into()),
            }),
        };
        let current = || ["acme-coreapp-2"].into_iter();
        // A pod evicted, not yet back: its revision is the current one.
        sts.state = with(true, 2);
        let lost = stateful_set_tier(&sts, current());
        assert_eq!((lost.updated, lost.ready, lost.is_ready()), (2, 1, false));
        // Terminating and still ready: counted ready, not updated.
        if let Some(s) = sts.state.status.as_mut() {
            s.ready_replicas = Some(2);
        }
        let leaving = stateful_set_tier(&sts, ["acme-coreapp-2", "acme-coreapp-2"].into_iter());
        assert_eq!((leaving.ready, leaving.is_ready()), (1, false), "a pod on its way out");
        let tiers = Tiers { coreapps: lost, ..ready_tiers() };
        assert!(tiers.rolling_out().is_empty());
        // A rolling update under way, or a spec not seen yet, counts as it is.
        sts.state = with(false, 2);
        assert_eq!(stateful_set_tier(&sts, current()).updated, 1);
        sts.state = with(true, 1);
        let unseen = stateful_set_tier(&sts, current());
        assert_eq!((unseen.updated, unseen.observed), (1, false));
        // A template reverted mid-rollout: the revisions are equal again while
        // a pod of the reverted template still runs. It is no pod lost.
        sts.state = with(true, 2);
        let reverted = stateful_set_tier(&sts, ["acme-coreapp-2", "acme-coreapp-3"].into_iter());
        assert_eq!((reverted.updated, reverted.is_ready()), (1, false));
        assert!(!Tiers { coreapps: reverted, ..ready_tiers() }.rolling_out().is_empty());
    }

    #[test]
    fn deployment_surge_does_not_count_old_pods() {
        use crate::controller::outline::{Workload, WorkloadStatus};
        let mut d = Outline::<Deployment>::default();
        d.identity.generation = Some(2);
        d.state = Workload {
            replicas: Some(2),
            version: None,
            status: Some(WorkloadStatus {
                observed_generation: Some(2),
                replicas: 3,
                ready_replicas: Some(3),
                updated_replicas: Some(1),
                update_complete: false,
                update_revision: None,
            }),
        };
        let tier = deployment_tier(&d);
        assert!(!tier.is_ready());
        assert_eq!(tier.updated, 1);
        assert!(tier.ready <= 1);
    }

    fn health(body: &str, shards: i32) -> crate::health::Observation {
        let h = crate::health::report::parse(body.as_bytes()).unwrap();
        let v = crate::health::report::judge(&h, shards);
        crate::health::observed(v, &h, Some(shards), &Default::default(), None, &t(1))
    }

    const HEALTHY: &str = r#"{"health":{"a:1":{"gateway_status":"connected","role":"primary_master"},
        "b:2":{"gateway_status":"connected","role":"coreapp"},"c:3":{"gateway_status":"disconnected","role":"coreapp"}}}"#;

    fn in_sync() -> Option<ShardingStatus> {
        Some(crate::sharding::status(1, Some(1), &crate::sharding::Step::InSync, None, None))
    }

    #[test]
    fn ready_needs_a_healthy_gateway_when_polling() {
        let wan = sample();
        let ok = Outcome::Applied(Applied {
            tiers: ready_tiers(),
            health: GatewayHealth::Probed(Box::new(health(HEALTHY, 1))),
            sharding: in_sync(),
            versions: Default::default(),
            client: Default::default(),
        });
        let s = compute(&wan, &ok, None, &t(1));
        assert_eq!(cond(&s, READY).status, "True");
        assert_eq!(
            (cond(&s, GATEWAY_CONNECTED).status.as_str(), cond(&s, GATEWAY_CONNECTED).reason.as_str()),
            ("True", "GatewayConnected")
        );
        assert_eq!(s.health.as_ref().unwrap().connected_coreapps, 1);

        let down = HEALTHY.replace(r#""connected","role":"coreapp""#, r#""disconnected","role":"coreapp""#);
        let bad = Outcome::Applied(Applied {
            tiers: ready_tiers(),
            health: GatewayHealth::Probed(Box::new(health(&down, 1))),
            sharding: in_sync(),
            versions: Default::default(),
            client: Default::default(),
        });
        let s = compute(&wan, &bad, Some(&s), &t(2));
        assert_eq!((cond(&s, READY).status.as_str(), cond(&s, READY).reason.as_str()), ("False", "ShardsNotConnected"));
        assert_eq!(
            (cond(&s, DEGRADED).status.as_str(), cond(&s, DEGRADED).reason.as_str()),
            ("True", "ShardsNotConnected")
        );
        assert_eq!(cond(&s, GATEWAY_CONNECTED).status, "False");
        assert_eq!(cond(&s, PROGRESSING).status, "False");
    }

    #[test]
    fn awaiting_the_first_probe_is_not_ready_and_then_keeps_what_status_shows() {
        use crate::controller::gateway::AdminAccess;
        let mut wan = sample();
        let awaiting = || {
            Outcome::Applied(Applied {
                tiers: ready_tiers(),
                health: GatewayHealth::Awaiting,
                sharding: in_sync(),
                versions: Default::default(),
                client: ClientState { admin: AdminState::Awaiting, ..Default::default() },
            })
        };
        // Never probed: not Ready, and the condition says why.
        let first = compute(&wan, &awaiting(), None, &t(1));
        assert_eq!(
            (cond(&first, READY).status.as_str(), cond(&first, READY).reason.as_str()),
            ("False", AWAITING_PROBE)
        );
        assert_eq!(cond(&first, GATEWAY_CONNECTED).status, "Unknown");
        assert!(first.health.is_none());

        // Probed healthy, then (a restart, a refreshed probe) awaited again:
        // the same status, so nothing is written.
        let probed = Outcome::Applied(Applied {
            tiers: ready_tiers(),
            health: GatewayHealth::Probed(Box::new(health(HEALTHY, 1))),
            sharding: in_sync(),
            versions: Default::default(),
            client: ClientState {
                admin: AdminState::Seen(AdminAccess::Open { certificate: None }),
                ..Default::default()
            },
        });
        let healthy = compute(&wan, &probed, Some(&first), &t(2));
        assert_eq!(cond(&healthy, READY).status, "True");
        wan.status = Some(healthy.clone());
        let again = compute(&wan, &awaiting(), Some(&healthy), &t(3));
        assert_eq!(again, healthy, "what the last probe found stands, AdminAccess included");

        // An unhealthy gateway stays unhealthy while the next probe is awaited.
        let down = HEALTHY.replace(r#""connected","role":"coreapp""#, r#""disconnected","role":"coreapp""#);
        let bad = Outcome::Applied(Applied {
            tiers: ready_tiers(),
            health: GatewayHealth::Probed(Box::new(health(&down, 1))),
            sharding: in_sync(),
            versions: Default::default(),
            client: Default::default(),
        });
        let unhealthy = compute(&wan, &bad, Some(&healthy), &t(4));
        wan.status = Some(unhealthy.clone());
        let still = compute(&wan, &awaiting(), Some(&unhealthy), &t(5));
        assert_eq!(cond(&still, READY).reason, "ShardsNotConnected");
        assert_eq!(cond(&still, DEGRADED).status, "True");
        assert_eq!(still.health, unhealthy.health);
    }

    #[test]
    fn unreachable_webapp_during_a_rollout_is_progress_not_degradation() {
        let wan = sample();
        let tiers = Tiers { webapps: TierStatus { desired: 2, ready: 0, updated: 2, observed: true }, ..ready_tiers() };
        let obs = crate::health::unreachable("connection refused".into(), None, &t(1));
        let s = compute(
            &wan,
            &Outcome::Applied(Applied {
                tiers,
                health: GatewayHealth::Probed(Box::new(obs.clone())),
                sharding: None,
                versions: Default::default(),
                client: Default::default(),
            }),
            None,
            &t(1),
        );
        assert_eq!(cond(&s, READY).reason, "PodsNotReady");
        assert_eq!(cond(&s, DEGRADED).status, "False");
        assert_eq!(cond(&s, GATEWAY_CONNECTED).reason, "WebappUnreachable");
        let s = compute(
            &wan,
            &Outcome::Applied(Applied {
                tiers: ready_tiers(),
                health: GatewayHealth::Probed(Box::new(obs)),
                sharding: None,
                versions: Default::default(),
                client: Default::default(),
            }),
            None,
            &t(1),
        );
        assert_eq!(
            (cond(&s, DEGRADED).status.as_str(), cond(&s, DEGRADED).reason.as_str()),
            ("True", "WebappUnreachable")
        );
    }

    #[test]
    fn shard_change_progresses_and_a_missing_registration_degrades() {
        use crate::sharding::{Step, status as shard_status};
        let wan = sample();
        let changing = shard_status(2, Some(1), &Step::WaitForCoreapps { ready: 1, needed: 2 }, None, None);
        let out = Outcome::Applied(Applied {
            tiers: ready_tiers(),
            health: GatewayHealth::Probed(Box::new(health(HEALTHY, 1))),
            sharding: Some(changing),
            versions: Default::default(),
            client: Default::default(),
        });
        let s = compute(&wan, &out, None, &t(1));
        assert_eq!((cond(&s, READY).status.as_str(), cond(&s, READY).reason.as_str()), ("False", "ScalingCoreapps"));
        assert_eq!(cond(&s, PROGRESSING).status, "True");

        let blocked = shard_status(2, Some(1), &Step::SetShards(2), Some("set spec.registration.secretRef"), None);
        let out = Outcome::Applied(Applied {
            tiers: ready_tiers(),
            health: GatewayHealth::Probed(Box::new(health(HEALTHY, 1))),
            sharding: Some(blocked),
            versions: Default::default(),
            client: Default::default(),
        });
        let s = compute(&wan, &out, None, &t(1));
        assert_eq!(cond(&s, READY).reason, SHARD_CHANGE_BLOCKED);
        assert_eq!(
            (cond(&s, DEGRADED).status.as_str(), cond(&s, DEGRADED).reason.as_str()),
            ("True", SHARD_CHANGE_BLOCKED)
        );
        assert!(cond(&s, DEGRADED).message.contains("spec.registration"));
    }

    #[test]
    fn reconciling_mirrors_progressing_and_blocked_outcomes_stall() {
        let wan = sample();
        let rolling =
            Tiers { masters: TierStatus { desired: 2, ready: 1, updated: 1, observed: true }, ..ready_tiers() };
        let s = compute(&wan, &applied(rolling), None, &t(1));
        assert_eq!(
            (cond(&s, RECONCILING).status.as_str(), cond(&s, RECONCILING).reason.as_str()),
            ("True", "RollingOut")
        );
        let s = compute(&wan, &all_ready(), None, &t(1));
        assert_eq!(cond(&s, RECONCILING).status, "False");
        let blocked = Problem { reason: "SecretNotFound", message: "create it".into() };
        let s = compute(&wan, &Outcome::Blocked(blocked), None, &t(1));
        assert_eq!((cond(&s, STALLED).status.as_str(), cond(&s, STALLED).reason.as_str()), ("True", "SecretNotFound"));
        assert_eq!(cond(&s, RECONCILING).status, "False");
        let s = compute(&wan, &Outcome::Conflict { holder: "a/b/c".into(), waiting: Waiting::default() }, None, &t(1));
        assert_eq!(
            (cond(&s, STALLED).status.as_str(), cond(&s, STALLED).reason.as_str()),
            ("True", PHONE_NUMBER_IN_USE)
        );
    }

    #[test]
    fn conflict_names_the_holder() {
        let wan = sample();
        let s = compute(
            &wan,
            &Outcome::Conflict { holder: "other/first/uid-1".into(), waiting: Waiting::default() },
            None,
            &t(1),
        );
        for type_ in [READY, DEGRADED, CONFLICT] {
            assert_eq!(cond(&s, type_).reason, PHONE_NUMBER_IN_USE, "{type_}");
            assert!(cond(&s, type_).message.contains("other/first/uid-1"));
        }
        assert_eq!(cond(&s, CONFLICT).status, "True");
        assert_eq!(cond(&s, READY).status, "False");
        assert_eq!(cond(&s, GATEWAY_CONNECTED).status, "Unknown");
        assert_eq!(cond(&compute(&wan, &all_ready(), None, &t(1)), CONFLICT).status, "False");
    }

    fn with_client(client: ClientState, sharding: Option<ShardingStatus>) -> Outcome {
        Outcome::Applied(Applied {
            tiers: ready_tiers(),
            health: GatewayHealth::Probed(Box::new(health(HEALTHY, 1))),
            sharding,
            versions: Default::default(),
            client,
        })
    }

    #[test]
    fn a_second_instance_outside_the_cluster_stalls_with_what_to_run() {
        let wan = sample();
        let conflict = crate::api::ExternalConflictStatus {
            detected_at: "2026-01-01T00:00:00Z".into(),
            message: "1000 Conflict: Detected multiple instances that share the same number".into(),
        };
        let out =
            with_client(ClientState { external_conflict: Some(conflict.clone()), ..Default::default() }, in_sync());
        let s = compute(&wan, &out, None, &t(1));
        for type_ in [READY, DEGRADED, CONFLICT, STALLED] {
            assert_eq!(cond(&s, type_).reason, EXTERNAL_INSTANCE, "{type_}");
        }
        assert_eq!((cond(&s, CONFLICT).status.as_str(), cond(&s, STALLED).status.as_str()), ("True", "True"));
        let ready = &cond(&s, READY).message;
        assert!(ready.contains("outside this cluster"), "{ready}");
        assert!(ready.contains("whatsapp.operators.dev/resolve-conflict=2026-01-01T00:00:00Z"), "{ready}");
        assert_eq!(s.external_conflict, Some(Box::new(conflict)), "kept until a person resolves it");
    }

    #[test]
    fn a_suspended_number_is_neither_ready_nor_in_trouble() {
        let wan = sample();
        let stopped = TierStatus { desired: 0, ready: 0, updated: 0, observed: true };
        let tiers =
            Tiers { masters: stopped.clone(), coreapps: stopped.clone(), webapps: stopped, ..Default::default() };
        let out = Outcome::Applied(Applied {
            tiers,
            health: GatewayHealth::NotProbed,
            sharding: None,
            versions: Default::default(),
            client: ClientState { suspended: true, ..Default::default() },
        });
        let s = compute(&wan, &out, None, &t(1));
        for (type_, status) in [(READY, "False"), (PROGRESSING, "False"), (RECONCILING, "False"), (DEGRADED, "False")] {
            assert_eq!(
                (cond(&s, type_).status.as_str(), cond(&s, type_).reason.as_str()),
                (status, SUSPENDED),
                "{type_}"
            );
        }
        assert_eq!(cond(&s, STALLED).status, "False");
        assert!(cond(&s, READY).message.contains("every master, coreapp and webapp is stopped"));
    }

    #[test]
    fn a_first_deployment_waits_for_its_databases() {
        let wan = sample();
        let out = with_client(ClientState { initializing: true, ..Default::default() }, None);
        let s = compute(&wan, &out, None, &t(1));
        assert_eq!(
            (cond(&s, READY).status.as_str(), cond(&s, READY).reason.as_str()),
            ("False", INITIALIZING_DATABASE)
        );
        assert_eq!(cond(&s, PROGRESSING).status, "True");
        assert_eq!(cond(&s, STALLED).status, "False");

        // Waiting for an earlier version's Job: on its way, saying why.
        let waiting = FirstSchema::Waiting("the schema Job acme-schema-2-53-2 is at work".into());
        let out = with_client(ClientState { initializing: true, first_schema: waiting, ..Default::default() }, None);
        let s = compute(&wan, &out, None, &t(1));
        assert_eq!(cond(&s, READY).reason, INITIALIZING_DATABASE);
        assert!(cond(&s, READY).message.contains("acme-schema-2-53-2"));
        assert_eq!((cond(&s, PROGRESSING).status.as_str(), cond(&s, STALLED).status.as_str()), ("True", "False"));

        // Its Job failed: only a person goes on from there.
        let failed = FirstSchema::Stuck(SCHEMA_JOB_FAILED, "the schema Job acme-schema-2-53-2 failed".into());
        let out = with_client(ClientState { initializing: true, first_schema: failed, ..Default::default() }, None);
        let s = compute(&wan, &out, None, &t(1));
        for (type_, status) in [(READY, "False"), (PROGRESSING, "False"), (DEGRADED, "True"), (STALLED, "True")] {
            let c = cond(&s, type_);
            assert_eq!((c.status.as_str(), c.reason.as_str()), (status, SCHEMA_JOB_FAILED), "{type_}");
        }
    }

    #[test]
    fn an_unconfirmed_shard_change_on_an_old_number_needs_a_person() {
        use crate::sharding::{Registered, Step, status as shard_status};
        let wan = sample();
        let waiting = shard_status(
            2,
            Some(1),
            &Step::NeedsConfirmation { registered: Registered::Unknown, spent_at: None },
            None,
            None,
        );
        let s = compute(&wan, &with_client(ClientState::default(), Some(waiting)), None, &t(1));
        assert_eq!(cond(&s, READY).reason, SHARD_CHANGE_UNCONFIRMED);
        assert_eq!(
            (cond(&s, STALLED).status.as_str(), cond(&s, STALLED).reason.as_str()),
            ("True", SHARD_CHANGE_UNCONFIRMED)
        );
        assert!(cond(&s, STALLED).message.contains("confirmShardChange"));
        assert_eq!(cond(&s, DEGRADED).status, "False", "the number still serves at its current count");
    }

    #[test]
    fn a_shard_count_not_known_holds_ready_only_when_last_seen_at_another_count() {
        use crate::sharding::{Step, status as shard_status};
        let wan = sample();
        // The spec was just edited to 2 (or the count is unreadable since):
        // the client ran 1 when last read.
        let edited = shard_status(2, Some(1), &Step::Unknown, None, None);
        let s = compute(&wan, &with_client(ClientState::default(), Some(edited)), None, &t(1));
        assert_eq!((cond(&s, READY).status.as_str(), cond(&s, READY).reason.as_str()), ("False", SHARD_COUNT_UNKNOWN));
        assert_eq!(cond(&s, RECONCILING).status, "True");
        assert_eq!(cond(&s, STALLED).status, "False");
        // Last seen at the spec's count, or never read: nothing says otherwise.
        for known in
            [shard_status(2, Some(2), &Step::Unknown, None, None), shard_status(2, None, &Step::Unknown, None, None)]
        {
            let s = compute(&wan, &with_client(ClientState::default(), Some(known)), None, &t(1));
            assert_eq!(cond(&s, READY).status, "True");
        }
    }

    #[test]
    fn admin_access_reports_the_session_and_the_certificate() {
        use crate::controller::gateway::{ADMIN_LOGIN_REFUSED, AdminAccess, CERTIFICATE_REFUSED};
        let wan = sample();
        let open =
            ClientState { admin: AdminState::Seen(AdminAccess::Open { certificate: None }), ..Default::default() };
        let s = compute(&wan, &with_client(open.clone(), in_sync()), None, &t(1));
        assert_eq!((cond(&s, ADMIN_ACCESS).status.as_str(), cond(&s, READY).status.as_str()), ("True", "True"));
        assert!(!cond(&s, ADMIN_ACCESS).message.contains("WARNING"));
        let mut insecure = wan.clone();
        insecure.spec.health.insecure_skip_tls_verify = true;
        let s = compute(&insecure, &with_client(open, in_sync()), None, &t(1));
        assert!(cond(&s, ADMIN_ACCESS).message.contains("not verified"), "the opt-out is visible");
        let refused = ClientState {
            admin: AdminState::Seen(AdminAccess::Failed(ADMIN_LOGIN_REFUSED, "put the password".into())),
            ..Default::default()
        };
        let s = compute(&wan, &with_client(refused, in_sync()), None, &t(1));
        assert_eq!(cond(&s, ADMIN_ACCESS).reason, ADMIN_LOGIN_REFUSED);
        let cert = ClientState {
            admin: AdminState::Seen(AdminAccess::Open { certificate: Some(Err("1009 bad key".into())) }),
            ..Default::default()
        };
        let s = compute(&wan, &with_client(cert, in_sync()), None, &t(1));
        assert_eq!(
            (cond(&s, ADMIN_ACCESS).status.as_str(), cond(&s, ADMIN_ACCESS).reason.as_str()),
            ("False", CERTIFICATE_REFUSED)
        );
    }

    #[test]
    fn a_refusal_only_a_person_can_answer_degrades_and_stalls_what_is_not_ready() {
        use crate::api::{RegistrationPhase, RegistrationStatus};
        use crate::controller::gateway::{ADMIN_LOGIN_REFUSED, AdminAccess};
        let wan = sample();
        // A wrong admin password: the number serves (health takes the API
        // key), yet no admin call can be made.
        let refused = ClientState {
            admin: AdminState::Seen(AdminAccess::Failed(ADMIN_LOGIN_REFUSED, "put the password".into())),
            ..Default::default()
        };
        let s = compute(&wan, &with_client(refused, in_sync()), None, &t(1));
        assert_eq!(cond(&s, READY).status, "True");
        assert_eq!(
            (cond(&s, DEGRADED).status.as_str(), cond(&s, DEGRADED).reason.as_str()),
            ("True", ADMIN_LOGIN_REFUSED)
        );
        assert_eq!(cond(&s, STALLED).status, "False", "nothing it serves waits");
        // Nor does a rollout: a refused password stops none.
        let rolling = Outcome::Applied(Applied {
            tiers: Tiers { webapps: TierStatus { desired: 2, ready: 1, updated: 1, observed: true }, ..ready_tiers() },
            health: GatewayHealth::Probed(Box::new(health(HEALTHY, 1))),
            sharding: in_sync(),
            versions: Default::default(),
            client: ClientState {
                admin: AdminState::Seen(AdminAccess::Failed(ADMIN_LOGIN_REFUSED, "put the password".into())),
                ..Default::default()
            },
        });
        let s = compute(&wan, &rolling, None, &t(1));
        assert_eq!((cond(&s, READY).status.as_str(), cond(&s, STALLED).status.as_str()), ("False", "False"));
        assert_eq!(cond(&s, DEGRADED).reason, ADMIN_LOGIN_REFUSED);

        // A code request refused: the number cannot come up without a person.
        let mut unregistered = wan.clone();
        unregistered.spec.registration =
            Some(serde_json::from_value(serde_json::json!({"secretRef": {"name": "reg"}, "method": "sms"})).unwrap());
        let mut client = ClientState::default();
        client.lifecycle.registration = Some(RegistrationStatus {
            phase: RegistrationPhase::RequestRefused,
            message: "the client refused the code request: 1009 Certificate expired".into(),
            request_digest: Some("i".into()),
            code_requested_at: None,
            code_digest: None,
            request_annotation: None,
            confirmed_at: None,
        });
        let down = Outcome::Applied(Applied {
            tiers: ready_tiers(),
            health: GatewayHealth::Probed(Box::new(health(
                r#"{"health":{"a:1":{"gateway_status":"unregistered","role":"primary_master"},
                "b:2":{"gateway_status":"unregistered","role":"coreapp"}}}"#,
                1,
            ))),
            sharding: in_sync(),
            versions: Default::default(),
            client,
        });
        let s = compute(&unregistered, &down, None, &t(1));
        assert_eq!(cond(&s, READY).status, "False");
        assert_eq!(
            (cond(&s, STALLED).status.as_str(), cond(&s, STALLED).reason.as_str()),
            ("True", "CodeRequestRefused")
        );
        assert!(cond(&s, STALLED).message.contains("Certificate expired"));
        assert_eq!(cond(&s, DEGRADED).status, "True", "already, for the unregistered gateway");

        // No registration Secret: nothing was sent, and that is what it says.
        let Outcome::Applied(mut missing) = down.clone() else { unreachable!() };
        missing.client.lifecycle.registration = None;
        missing.client.lifecycle.registration_material =
            Some((crate::controller::validate::SECRET_NOT_FOUND, "Secret team/reg does not exist".into()));
        let s = compute(&unregistered, &Outcome::Applied(missing), None, &t(1));
        assert_eq!(states(&s)[3], pair("True", "SecretNotFound"));
        assert_eq!(
            (cond(&s, REGISTERED).reason.as_str(), cond(&s, REGISTERED).message.as_str()),
            ("SecretNotFound", "Secret team/reg does not exist")
        );
        assert!(s.registration.is_none(), "nothing sent, nothing recorded");

        // Registered once, unregistered now: a new code waits for a person.
        let Outcome::Applied(mut logged_off) = down else { unreachable!() };
        logged_off.client.lifecycle.registration = Some(RegistrationStatus {
            phase: RegistrationPhase::LoggedOff,
            message: crate::lifecycle::LOGGED_OFF.into(),
            request_digest: Some("i".into()),
            code_requested_at: None,
            code_digest: None,
            request_annotation: None,
            confirmed_at: None,
        });
        let s = compute(&unregistered, &Outcome::Applied(logged_off.clone()), None, &t(1));
        assert_eq!(
            (cond(&s, REGISTERED).status.as_str(), cond(&s, REGISTERED).reason.as_str()),
            ("False", "LoggedOff")
        );
        assert_eq!((cond(&s, STALLED).status.as_str(), cond(&s, STALLED).reason.as_str()), ("True", "LoggedOff"));
        assert!(cond(&s, STALLED).message.contains("request-code"));
        // Registered, while the client still reports it unregistered: not judged here.
        logged_off.client.lifecycle.registration.as_mut().unwrap().phase = RegistrationPhase::Registered;
        let s = compute(&unregistered, &Outcome::Applied(logged_off), None, &t(1));
        assert_eq!(cond(&s, REGISTERED).status, "True");
        assert_eq!(cond(&s, STALLED).status, "False");
    }

    #[test]
    fn a_pause_too_late_to_call_an_upgrade_off_is_said_in_its_progress() {
        let wan = sample();
        let mut upgrade = crate::upgrade::procedure::begin("2.53.2", "2.55.1", "2024-05-01T00:00:00Z".parse().unwrap());
        upgrade.step = crate::upgrade::procedure::Step::StartingMasters;
        let refused = "spec.upgrade.paused is true, but the schema upgrade to 2.55.1 has run or is running, so pausing is not possible";
        let versions = Versions {
            upgrade: Some(upgrade),
            blocker: Some((crate::upgrade::UPGRADES_PAUSED, refused.into())),
            ..Default::default()
        };
        let s = compute(&wan, &with_versions(versions), None, &t(1));
        assert_eq!(cond(&s, PROGRESSING).reason, "Upgrading");
        assert!(cond(&s, PROGRESSING).message.contains("pausing is not possible"), "{}", cond(&s, PROGRESSING).message);
        assert_eq!(cond(&s, STALLED).status, "False", "the upgrade goes on by itself");
    }

    fn with_versions(versions: Versions) -> Outcome {
        Outcome::Applied(Applied {
            tiers: ready_tiers(),
            health: GatewayHealth::NotProbed,
            sharding: None,
            versions,
            client: Default::default(),
        })
    }

    fn release(expires: &str) -> crate::upgrade::catalog::Release {
        crate::upgrade::catalog::Catalog::with_overrides(Some(&format!(
            "- {{version: \"2.53.2\", releasedAt: \"2024-01-10\", expiresAt: \"{expires}\"}}"
        )))
        .lookup("2.53.2")
        .unwrap()
        .clone()
    }

    #[test]
    fn an_upgrade_in_progress_is_progress_and_a_stalled_one_says_why() {
        let wan = sample();
        let u =
            crate::upgrade::procedure::begin("2.53.2", "2.55.1", k8s_openapi::jiff::Timestamp::from_second(1).unwrap());
        let s = compute(&wan, &with_versions(Versions { upgrade: Some(u.clone()), ..Default::default() }), None, &t(1));
        assert_eq!((cond(&s, READY).status.as_str(), cond(&s, READY).reason.as_str()), ("False", "Upgrading"));
        assert!(cond(&s, READY).message.contains("StoppingNodes"));
        assert_eq!(cond(&s, PROGRESSING).status, "True");
        assert_eq!(cond(&s, DEGRADED).status, "False");
        assert_eq!(cond(&s, STALLED).status, "False");
        assert_eq!(s.upgrade.as_ref().unwrap().to, "2.55.1");

        let stalled = UpgradeStatus { stalled_reason: Some("the schema upgrade Job failed".into()), ..u };
        let s = compute(&wan, &with_versions(Versions { upgrade: Some(stalled), ..Default::default() }), None, &t(1));
        for type_ in [READY, PROGRESSING] {
            assert_eq!((cond(&s, type_).status.as_str(), cond(&s, type_).reason.as_str()), ("False", "UpgradeStalled"));
        }
        assert_eq!((cond(&s, STALLED).status.as_str(), cond(&s, DEGRADED).status.as_str()), ("True", "True"));
        assert!(cond(&s, STALLED).message.contains("Job failed"));
    }

    #[test]
    fn build_expiry_conditions() {
        let wan = sample();
        let valid = Versions {
            build_state: Some(BuildState::Valid(release("2024-07-08"))),
            before: "30d".into(),
            ..Default::default()
        };
        let s = compute(&wan, &with_versions(valid), None, &t(1));
        assert_eq!(
            (cond(&s, BUILD_EXPIRING).status.as_str(), cond(&s, BUILD_EXPIRED).status.as_str()),
            ("False", "False")
        );
        assert_eq!(cond(&s, READY).status, "True");

        let expiring = Versions {
            build_state: Some(BuildState::Expiring(release("2024-07-08"))),
            before: "30d".into(),
            ..Default::default()
        };
        let s = compute(&wan, &with_versions(expiring.clone()), None, &t(1));
        assert_eq!(cond(&s, BUILD_EXPIRING).status, "True");
        assert_eq!(cond(&s, BUILD_EXPIRING).reason, BUILD_EXPIRING);
        assert!(cond(&s, BUILD_EXPIRING).message.contains("2024-07-08"));
        assert_eq!(cond(&s, READY).status, "True", "a warning, not an outage");
        // Under the Auto policy with nothing newer in the catalog: why no
        // upgrade comes, where the expiry is said; still not an outage.
        let why = "the release catalog has no newer release that is not expiring itself, so none is upgraded to";
        let stuck = Versions { blocker: Some((crate::upgrade::NO_NEWER_RELEASE, why.into())), ..expiring };
        let s = compute(&wan, &with_versions(stuck.clone()), None, &t(1));
        assert_eq!(cond(&s, BUILD_EXPIRING).reason, crate::upgrade::NO_NEWER_RELEASE);
        assert!(cond(&s, BUILD_EXPIRING).message.contains("2024-07-08"), "{:?}", cond(&s, BUILD_EXPIRING));
        assert!(cond(&s, BUILD_EXPIRING).message.ends_with(why));
        assert_eq!(cond(&s, READY).status, "True");
        let gone = Versions { build_state: Some(BuildState::Expired(release("2024-07-08"))), ..stuck };
        let s = compute(&wan, &with_versions(gone), None, &t(1));
        assert_eq!(cond(&s, BUILD_EXPIRED).reason, BUILD_EXPIRED);
        assert!(cond(&s, BUILD_EXPIRED).message.ends_with(why), "{:?}", cond(&s, BUILD_EXPIRED));

        let expired = Versions { build_state: Some(BuildState::Expired(release("2024-07-08"))), ..Default::default() };
        let s = compute(&wan, &with_versions(expired.clone()), None, &t(1));
        assert_eq!(
            (cond(&s, BUILD_EXPIRING).status.as_str(), cond(&s, BUILD_EXPIRED).status.as_str()),
            ("True", "True")
        );
        assert_eq!(states(&s)[2], pair("True", BUILD_EXPIRED), "a person should look, polled or not");
        assert!(cond(&s, DEGRADED).message.contains("upgrade now"));
        let u =
            crate::upgrade::procedure::begin("2.53.2", "2.55.1", k8s_openapi::jiff::Timestamp::from_second(1).unwrap());
        let s = compute(&wan, &with_versions(Versions { upgrade: Some(u), ..expired }), None, &t(1));
        assert_eq!(states(&s)[2], pair("False", "AsExpected"), "the upgrade away from it is under way");

        let unknown = Versions { build_state: Some(BuildState::Unknown), ..Default::default() };
        let s = compute(&wan, &with_versions(unknown), None, &t(1));
        assert_eq!(
            (cond(&s, BUILD_EXPIRED).status.as_str(), cond(&s, BUILD_EXPIRED).reason.as_str()),
            ("Unknown", "UnknownRelease")
        );
    }

    #[test]
    fn a_held_reconcile_of_a_running_number_keeps_what_it_cannot_look_at() {
        let mut wan = sample();
        let expired = Versions { build_state: Some(BuildState::Expired(release("2024-07-08"))), ..Default::default() };
        let running = next(&mut wan, &with_versions(expired.clone()), 1);
        wan.metadata.generation = Some(4);
        let problem = Problem { reason: "SecretNotFound", message: "Secret team/acme-tls does not exist".into() };
        let held = next(&mut wan, &Outcome::Blocked(problem.clone()), 2);
        assert_eq!(states(&held)[..2], [pair("False", "SecretNotFound"), pair("False", "SecretNotFound")]);
        let (was, is) = (cond(&running, BUILD_EXPIRED), cond(&held, BUILD_EXPIRED));
        assert_eq!((is.status.as_str(), is.observed_generation), ("True", Some(3)), "as seen, for what it was seen");
        assert_eq!(is.last_transition_time, was.last_transition_time);
        for type_ in [BUILD_EXPIRING, RELEASE_CATALOG] {
            assert_eq!(cond(&held, type_), cond(&running, type_), "{type_} stands");
        }
        assert_eq!(cond(&held, GATEWAY_CONNECTED).status, "Unknown");
        let types: Vec<&str> = held.conditions.iter().map(|c| c.type_.as_str()).collect();
        let mut unique = types.clone();
        unique.sort();
        unique.dedup();
        assert_eq!(unique.len(), types.len(), "each type once: {types:?}");
        assert_eq!(next(&mut wan, &Outcome::Blocked(problem.clone()), 3), held, "nothing new: nothing to write");
        // What the spec no longer asks for goes, and so does what no held
        // reconcile keeps.
        let mut without = held.clone();
        without.conditions.push(condition(&[], BACKED_UP, "True", "Done".into(), "".into(), Some(3), &t(1)));
        without.conditions.push(condition(&[], "OldKind", "True", "Old".into(), "".into(), Some(3), &t(1)));
        wan.status = Some(without);
        let s = next(&mut wan, &Outcome::Blocked(problem), 3);
        assert!(find(Some(&s), BACKED_UP).is_none() && find(Some(&s), "OldKind").is_none(), "{:?}", s.conditions);
        assert_eq!(s, held);

        // Fixed: every condition computed again for the new generation.
        let back = next(&mut wan, &with_versions(expired), 4);
        assert!(back.conditions.iter().all(|c| c.observed_generation == Some(4)), "{:?}", back.conditions);
        assert_eq!(cond(&back, BUILD_EXPIRED).last_transition_time, cond(&running, BUILD_EXPIRED).last_transition_time);
    }

    #[test]
    fn refused_downgrade_stalls_and_pending_upgrades_hold_ready() {
        let wan = sample();
        let refused = Versions {
            blocker: Some((crate::upgrade::DOWNGRADE_REFUSED, "the schema cannot go back".into())),
            ..Default::default()
        };
        let s = compute(&wan, &with_versions(refused), None, &t(1));
        assert_eq!(
            (cond(&s, STALLED).status.as_str(), cond(&s, STALLED).reason.as_str()),
            ("True", "DowngradeRefused")
        );
        assert_eq!(cond(&s, READY).reason, "DowngradeRefused");

        let window = Versions { blocker: Some((crate::upgrade::OUTSIDE_WINDOW, "waits".into())), ..Default::default() };
        let s = compute(&wan, &with_versions(window), None, &t(1));
        assert_eq!(
            (cond(&s, READY).status.as_str(), cond(&s, READY).reason.as_str()),
            ("False", "OutsideMaintenanceWindow")
        );
        assert_eq!(cond(&s, STALLED).status, "False");
    }

    #[test]
    fn an_unfinished_schema_upgrade_stalls_and_degrades_whatever_the_pods_say() {
        let wan = sample();
        let why = "the schema may be part-way to 2.55.1";
        let held =
            Versions { blocker: Some((crate::upgrade::SCHEMA_UPGRADE_UNFINISHED, why.into())), ..Default::default() };
        let s = compute(&wan, &with_versions(held), None, &t(1));
        for (type_, status) in [(READY, "False"), (PROGRESSING, "False"), (DEGRADED, "True"), (STALLED, "True")] {
            let c = cond(&s, type_);
            assert_eq!((c.status.as_str(), c.reason.as_str()), (status, "SchemaUpgradeUnfinished"), "{type_}");
        }
        assert_eq!(cond(&s, READY).message, why);
        assert_eq!(cond(&s, STALLED).message, why);
    }

    #[test]
    fn bad_catalog_entries_are_reported() {
        let wan = sample();
        let v = Versions {
            catalog_problems: vec!["entry 2 (x): version \"x\" is not like 2.53.2".into()],
            ..Default::default()
        };
        let s = compute(&wan, &with_versions(v), None, &t(1));
        assert_eq!(
            (cond(&s, RELEASE_CATALOG).status.as_str(), cond(&s, RELEASE_CATALOG).reason.as_str()),
            ("False", "InvalidCatalogEntry")
        );
        assert!(cond(&s, RELEASE_CATALOG).message.contains("entry 2"));
        assert_eq!(cond(&s, READY).status, "True", "a bad entry is skipped, nothing else changes");
    }
}
