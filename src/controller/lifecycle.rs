//! The lifecycle step of a reconcile, once an admin session is open: restore
//! a backup into a new deployment, register the number, keep the application
//! settings, and make scheduled backups. The decisions are in
//! `crate::lifecycle`; this step makes the calls and writes backup Secrets.

use std::collections::BTreeMap;

use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::api::{ListParams, PostParams};
use kube::{Api, ResourceExt};
use serde_json::json;
use tracing::{info, warn};

use super::Context;
use super::fetch::Observed;
use crate::api::{
    BackupObjectStore, BackupStatus, ObjectStore, RegistrationPhase, RegistrationStatus, RestoreOutcome, RestoreStatus,
    SettingsStatus, WhatsAppNumber,
};
use crate::backups::{
    self,
    object_store::{Access, Store},
};
use crate::lifecycle::{self, RegistrationStep, RestoreStep};
use crate::resources::names::{
    FIELD_MANAGER, LABEL_COMPONENT, LABEL_NUMBER, Names, component_labels, instance_selector,
};
use crate::resources::{digest, owned_meta};
use crate::webapp::{CallError, Webapp, phone};

/// The annotation a person changes to have a new registration code requested.
pub const REQUEST_CODE_ANNOTATION: &str = "whatsapp.operators.dev/request-code";
/// Component label of backup Secrets.
pub const BACKUP_COMPONENT: &str = "backup";

/// What the lifecycle step found and did, for status.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct LifecycleReport {
    pub registration: Option<RegistrationStatus>,
    /// A code request that cannot be sent for want of the registration
    /// Secret or its certificate: reason and message
    /// ([`registration_material`]). Nothing is sent, so nothing is recorded.
    pub registration_material: Option<(&'static str, String)>,
    pub settings: Option<SettingsStatus>,
    pub backup: Option<BackupStatus>,
    pub restore: Option<RestoreStatus>,
}

impl LifecycleReport {
    /// What status recorded last: the starting point of a step, and what
    /// stands when the webapp is not asked.
    pub fn from_status(status: Option<&crate::api::WhatsAppNumberStatus>) -> Self {
        Self {
            registration: status.and_then(|s| s.registration.as_deref().cloned()),
            registration_material: None,
            settings: status.and_then(|s| s.settings.as_deref().cloned()),
            backup: status.and_then(|s| s.backup.as_deref().cloned()),
            restore: status.and_then(|s| s.restore.as_deref().cloned()),
        }
    }
}

/// When to look again for a restore that did not go through.
pub fn next_restore_retry_in(wan: &WhatsAppNumber, now: jiff::Timestamp) -> Option<std::time::Duration> {
    let from = wan.spec.restore_from.as_ref()?;
    let recorded = wan.status.as_ref()?.restore.as_deref().filter(|r| r.from == from.source());
    lifecycle::due_in(lifecycle::restore_retry_at(recorded.map(|r| (r.outcome, r.at.0)))?, now)
}

/// How long until the next backup attempt is due, when the spec asks for
/// backups (see [`lifecycle::due_in`]: nothing once it is overdue): the
/// schedule's, or a failed attempt's retry; after a failed attempt, also
/// until a change of what it read may try again (a change seen before then
/// is looked at again then).
pub fn next_backup_in(wan: &WhatsAppNumber, now: jiff::Timestamp) -> Option<std::time::Duration> {
    let spec = wan.spec.backup.as_ref()?;
    let status = wan.status.as_ref().and_then(|s| s.backup.as_deref());
    let since = backups_since(wan, status, now);
    let failed = status.and_then(lifecycle::FailedBackups::of);
    let next = lifecycle::next_backup_attempt(&spec.schedule, since, failed).ok()?;
    // Once the gap has passed, a change wakes the reconcile by itself.
    let retry = failed.map(|_| lifecycle::backup_retry_at(since.at())).filter(|at| *at > now);
    [Some(next), retry].into_iter().flatten().filter_map(|at| lifecycle::due_in(at, now)).min()
}

fn secret_text(secret: Option<&Secret>, key: &str) -> Option<String> {
    let bytes = super::gateway::secret_bytes(secret, key)?;
    String::from_utf8(bytes).ok().map(|s| s.trim().to_string()).filter(|s| !s.is_empty())
}

/// Why the code request that is the next step cannot be sent: the
/// registration Secret, or its certificate, is missing. Reason and message
/// of `Registered`. The next step is a code request for a number the
/// operator registers (`spec.registration.method`) with health polled,
/// which the client last reported `unregistered` (`gateway`), no restore
/// pending, and nothing recorded but a refused request. Judged from what
/// every pass reads, so it stands whether the webapp is asked or not.
pub fn registration_material(
    wan: &WhatsAppNumber,
    observed: &Observed,
    recorded: Option<&RegistrationStatus>,
    gateway: Option<&str>,
) -> Option<(&'static str, String)> {
    let spec = wan.spec.registration.as_deref().filter(|r| r.method.is_some())?;
    let restore_pending = wan.spec.restore_from.as_ref().is_some_and(|from| {
        let restore = wan.status.as_ref().and_then(|s| s.restore.as_deref());
        !restore.is_some_and(|r| r.passed(&from.source()))
    });
    let requested_before = recorded.is_some_and(|r| r.phase != RegistrationPhase::RequestRefused);
    if !wan.spec.health.enabled || gateway != Some("unregistered") || restore_pending || requested_before {
        return None;
    }
    let r = &spec.secret_ref;
    let secret = observed.registration.as_ref();
    secret_text(secret, &r.cert_key).is_none().then(|| missing_material(wan, r, secret.is_some()))
}

fn missing_material(
    wan: &WhatsAppNumber,
    r: &crate::api::RegistrationSecretRef,
    exists: bool,
) -> (&'static str, String) {
    let secret = format!("{}/{}", wan.namespace().unwrap_or_default(), r.name);
    if exists {
        (
            super::validate::SECRET_KEY_MISSING,
            format!(
                "Secret {secret} (spec.registration.secretRef) has no key {}: put the certificate from WhatsApp Manager there; no code was requested",
                r.cert_key
            ),
        )
    } else {
        (
            super::validate::SECRET_NOT_FOUND,
            format!(
                "Secret {secret} (spec.registration.secretRef) does not exist: create it with the certificate from WhatsApp Manager under key {}; no code was requested",
                r.cert_key
            ),
        )
    }
}

/// What the latest probe says of the client, as the lifecycle step needs it.
pub struct Seen<'a> {
    /// The gateway and the nodes that answered.
    pub client: lifecycle::Client<'a>,
    /// The application settings the probe read.
    pub settings: Option<&'a Result<serde_json::Value, String>>,
}

/// Runs the lifecycle for one probe result.
pub async fn step(
    ctx: &Context,
    wan: &WhatsAppNumber,
    observed: &Observed,
    webapp: &Webapp<'_>,
    token: &str,
    seen: Seen<'_>,
) -> LifecycleReport {
    let (gateway, nodes) = (seen.client.gateway, seen.client.nodes);
    let mut report = LifecycleReport::from_status(wan.status.as_ref());
    let unregistered = gateway == "unregistered";
    let mc = &wan.spec.multiconnect;
    let expected = (mc.masters + mc.shards + mc.standby_coreapps) as usize;
    let registration_known = lifecycle::registration_known(gateway, nodes, expected);

    // A restore comes first: it brings the registration of the old setup.
    if let Some(from) = &wan.spec.restore_from {
        let source = from.source();
        let recorded = report.restore.as_ref().filter(|r| r.from == source).map(|r| (r.outcome, r.at.0));
        match lifecycle::restore_step(recorded, seen.client, expected, jiff::Timestamp::now()) {
            RestoreStep::Restore => {
                report.restore = Some(restore(ctx, wan, webapp, token, observed, from).await);
                // What the client holds now is for the next probe to say: a
                // restored registration may still be taking effect, and nothing
                // may register the number on what was seen before the restore.
                return report;
            }
            RestoreStep::AlreadyRegistered => {
                warn!(from = %source, "the client reports the number registered: the backup is not restored over it");
                report.restore = Some(RestoreStatus {
                    outcome: RestoreOutcome::AlreadyRegistered,
                    from: source.clone(),
                    at: Time(jiff::Timestamp::now()),
                    message: String::new(),
                });
            }
            // The probe's next result wakes the reconcile.
            RestoreStep::Probe => ctx.probes.refresh(&super::gateway::number_key(wan)),
            RestoreStep::Wait | RestoreStep::Done => {}
        }
        // Nothing registers the number, nor writes its settings, until the
        // backup is in or passed over: a refused restore waits for a person
        // (another backup, or no restoreFrom to register the number anew).
        if !report.restore.as_ref().is_some_and(|r| r.passed(&source)) {
            return report;
        }
    }

    // A schema being created or upgraded (`uninitialized`) says nothing of
    // the registration, nor do nodes that do not answer yet: it waits for a
    // state that does.
    if let Some(method) = wan.spec.registration.as_deref().and_then(|r| r.method.map(|m| (r, m)))
        && registration_known
    {
        // Nothing recorded when a call was not answered: the next pass tries again.
        // Status lost: where the registration stood is on the media claim. Only
        // an unregistered number needs it, to send nothing a person must judge.
        let recorded = || recorded_registration(wan, observed).filter(|_| unregistered);
        let previous = report.registration.clone().or_else(recorded);
        if let Some(registration) = register(webapp, token, wan, observed, method, previous, unregistered).await {
            report.registration = Some(registration);
        }
    }

    if !unregistered && registration_known {
        if let Some(spec) = &wan.spec.settings {
            report.settings =
                Some(settings(webapp, token, wan, observed, spec, seen.settings, report.settings.clone()).await);
        }
        if let Some(spec) = &wan.spec.backup {
            report.backup = Some(backup(ctx, webapp, token, wan, observed, spec, report.backup.clone()).await);
        }
    }
    report
}

async fn restore(
    ctx: &Context,
    wan: &WhatsAppNumber,
    webapp: &Webapp<'_>,
    token: &str,
    observed: &Observed,
    from: &crate::api::RestoreSpec,
) -> RestoreStatus {
    let source = from.source();
    let at = Time(jiff::Timestamp::now());
    let p = &from.password_secret_ref;
    let password = secret_text(observed.lifecycle.get(&p.name), &p.key);
    // Without its inputs nothing is sent: the Secrets may still come, and
    // the store may answer next time. Tried again after a while.
    let waiting = |message: String| RestoreStatus {
        outcome: RestoreOutcome::Retrying,
        from: source.clone(),
        at: at.clone(),
        message,
    };
    let Some(password) = password else {
        return waiting(format!("spec.restoreFrom.passwordSecretRef: Secret {} has no key {}", p.name, p.key));
    };
    let (data, number) = match (&from.secret_ref, &from.object_store) {
        (_, Some(object)) => {
            let fetched = match store_access(observed, &object.store, "spec.restoreFrom.objectStore") {
                Ok(access) => match Store::connect(&object.store, &access) {
                    Ok(store) => store.get_with_metadata(&object.key, BACKUP_NUMBER_METADATA).await,
                    Err(e) => Err(e),
                },
                Err(e) => Err(e),
            };
            match fetched.map(|(data, number)| (String::from_utf8(data), number)) {
                Ok((Ok(data), number)) => (data, number),
                // The object is there and is no backup: trying again changes nothing.
                Ok((Err(_), _)) => {
                    return RestoreStatus {
                        outcome: RestoreOutcome::Refused,
                        message: format!("{source} is not a backup of this client (not text)"),
                        ..waiting(String::new())
                    };
                }
                Err(e) => return waiting(format!("cannot read {source}: {e}")),
            }
        }
        (Some(r), None) => match secret_text(observed.lifecycle.get(&r.name), &r.key) {
            // The number label is read once, here: the caches keep a
            // Secret's data, not its labels.
            Some(data) => match secret_number(ctx, wan, &r.name).await {
                Ok(number) => (data, number),
                Err(e) => return waiting(format!("cannot read Secret {}: {e}", r.name)),
            },
            None => return waiting(format!("spec.restoreFrom.secretRef: Secret {} has no key {}", r.name, r.key)),
        },
        (None, None) => return waiting("spec.restoreFrom names no backup".into()),
    };
    if let Some(why) = lifecycle::backup_of_another_number(&wan.spec.phone_number, number.as_deref()) {
        warn!(from = %source, "{why}; it is not restored");
        return RestoreStatus { outcome: RestoreOutcome::Refused, message: why, ..waiting(String::new()) };
    }
    match webapp.restore(token, &password, data.trim()).await {
        Ok(()) => {
            info!(from = %source, "restored the backup into this deployment");
            RestoreStatus { outcome: RestoreOutcome::Restored, from: source, at, message: String::new() }
        }
        // Only the client's refusal of this backup is final (a wrong
        // password, damaged data, another setup's shape: see
        // `CallError::is_refusal`). Failover errors, no answer, a lost session
        // or a server error are tried again: the client is still unregistered
        // then, or the restore arrived after all.
        Err(e) if !e.is_refusal() => {
            warn!(error = %e, "the restore did not go through; it is tried again");
            waiting(format!("the restore of {source} did not go through and is tried again: {e}"))
        }
        Err(e) => {
            warn!(error = %e, "the client refused the restore; it is not tried again for this backup");
            RestoreStatus { outcome: RestoreOutcome::Refused, from: source, at, message: e.to_string() }
        }
    }
}

/// The object store metadata that names a backup's number (see [`keep_in_store`]).
const BACKUP_NUMBER_METADATA: &str = "phone-number";

/// The number the backup Secret `name` was made for, from the label the
/// operator puts on the backups it keeps; `None` for a Secret without it.
async fn secret_number(ctx: &Context, wan: &WhatsAppNumber, name: &str) -> Result<Option<String>, kube::Error> {
    let api: Api<Secret> = Api::namespaced(ctx.client.clone(), &wan.namespace().unwrap_or_default());
    let meta = api.get_metadata(name).await?;
    Ok(meta.labels().get(LABEL_NUMBER).cloned())
}

/// The client judged a registration call (see [`CallError::is_refusal`]), or
/// rate-limited it: both wait for a person, since asking again and again may
/// only lengthen a rate limit. Anything else (a fail-over, no answer, a lost
/// session) is sent again at the next pass.
fn judged(e: &CallError) -> bool {
    e.is_refusal() || matches!(e, CallError::Status { status: 429, .. })
}

/// The credentials (and CA) of an object store, from the Secrets the spec names.
fn store_access(observed: &Observed, spec: &ObjectStore, field: &str) -> Result<Access, String> {
    let c = &spec.credentials_secret_ref;
    let credentials = observed.lifecycle.get(&c.name);
    let missing = |key: &str| format!("{field}.credentialsSecretRef: Secret {} has no key {key}", c.name);
    let access_key_id = secret_text(credentials, &c.access_key_id_key).ok_or_else(|| missing(&c.access_key_id_key))?;
    let secret_access_key =
        secret_text(credentials, &c.secret_access_key_key).ok_or_else(|| missing(&c.secret_access_key_key))?;
    let ca = match &spec.ca_secret_ref {
        Some(r) => Some(
            super::gateway::secret_bytes(observed.lifecycle.get(&r.name), &r.key)
                .ok_or_else(|| format!("{field}.caSecretRef: Secret {} has no key {}", r.name, r.key))?,
        ),
        None => None,
    };
    Ok(Access { access_key_id, secret_access_key, ca })
}

/// Where the registration stood as the media claim the operator manages
/// records it: what keeps a request a person must judge from being sent
/// again once the status that said so is lost.
fn recorded_registration(wan: &WhatsAppNumber, observed: &Observed) -> Option<RegistrationStatus> {
    let claim = observed.media_claim.as_ref().filter(|_| wan.spec.media.existing_claim.is_none())?;
    crate::resources::media::registration_of(claim, &crate::api::database_identity(&wan.spec))
}

async fn register(
    webapp: &Webapp<'_>,
    token: &str,
    wan: &WhatsAppNumber,
    observed: &Observed,
    (spec, method): (&crate::api::RegistrationSpec, crate::api::RegistrationMethod),
    previous: Option<RegistrationStatus>,
    unregistered: bool,
) -> Option<RegistrationStatus> {
    let r = &spec.secret_ref;
    let secret = observed.registration.as_ref();
    let cert = secret_text(secret, &r.cert_key);
    let pin = secret_text(secret, &r.pin_key);
    let code = secret_text(secret, &r.code_key);
    let retry = wan.annotations().get(REQUEST_CODE_ANNOTATION).cloned().unwrap_or_default();
    let inputs = digest(&(method.as_str(), &cert, &pin, &retry));
    // Registered, as the client says: the phase follows, nothing is sent.
    if !unregistered {
        let seen = || Some(Time(jiff::Timestamp::now()));
        return Some(match previous {
            Some(p) if p.phase == RegistrationPhase::Registered && p.confirmed_at.is_some() => p,
            Some(p) if p.phase == RegistrationPhase::Registered => RegistrationStatus { confirmed_at: seen(), ..p },
            // Registered again (a restore, or by hand): what was sent stays.
            Some(p) if p.phase == RegistrationPhase::LoggedOff => RegistrationStatus {
                phase: RegistrationPhase::Registered,
                message: "the client reports the number registered".into(),
                confirmed_at: seen(),
                ..p
            },
            _ => RegistrationStatus {
                phase: RegistrationPhase::Registered,
                message: "the client reports the number registered".into(),
                request_digest: previous.as_ref().and_then(|p| p.request_digest.clone()).or(Some(inputs)),
                code_requested_at: None,
                code_digest: None,
                request_annotation: previous.and_then(|p| p.request_annotation).or(Some(retry)),
                confirmed_at: seen(),
            },
        });
    }
    // A request sent now records the annotation it was sent under.
    let requested = |mut s: RegistrationStatus| {
        s.request_annotation = Some(retry.clone());
        s
    };
    Some(
        match lifecycle::registration_step(previous.as_ref(), unregistered, &inputs, &retry, code.as_deref(), |c| {
            digest(&c)
        }) {
            RegistrationStep::Wait(message) => {
                let mut s = previous
                    .unwrap_or_else(|| lifecycle::after_request(&inputs, Ok(false), None, jiff::Timestamp::now()));
                // A record written before these were kept: the annotation as it
                // is now is the one it was made under, and the number was seen
                // registered (it was judged so then).
                let old_record = s.request_annotation.is_none();
                s.request_annotation.get_or_insert_with(|| retry.clone());
                if lifecycle::logged_off(s.phase, s.confirmed_at.is_some() || old_record) {
                    if s.phase != RegistrationPhase::LoggedOff {
                        warn!("the number was registered and the client reports it unregistered now");
                    }
                    s.phase = RegistrationPhase::LoggedOff;
                }
                // A record from the media claim has no message of its own.
                if matches!(s.phase, RegistrationPhase::CodeRequested | RegistrationPhase::LoggedOff)
                    || s.message.is_empty()
                {
                    s.message = message;
                }
                s
            }
            RegistrationStep::RequestCode => {
                // Nothing to send: `registration_material` says why.
                let cert = cert?;
                let Some((cc, number)) = phone::split(&wan.spec.phone_number) else {
                    return Some(requested(lifecycle::after_request(
                        &inputs,
                        Err("not an E.164 number".into()),
                        None,
                        jiff::Timestamp::now(),
                    )));
                };
                let mut body = json!({"cc": cc, "phone_number": number, "method": method.as_str(), "cert": cert});
                if let Some(pin) = &pin {
                    body["pin"] = json!(pin);
                }
                let outcome = match webapp.request_code(token, &body).await {
                    Ok(status) => Ok(status.as_u16() == 201),
                    Err(e) if judged(&e) => Err(e.to_string()),
                    // Not the client's judgement (a fail-over, no answer, a lost
                    // session): nothing is recorded, and the next pass asks again.
                    Err(e) => {
                        warn!(error = %e, "the code request did not go through; it is sent again");
                        return None;
                    }
                };
                info!(outcome = ?outcome, "requested the registration code");
                requested(lifecycle::after_request(
                    &inputs,
                    outcome,
                    code.as_deref().map(|c| digest(&c)),
                    jiff::Timestamp::now(),
                ))
            }
            RegistrationStep::Verify(code) => {
                let mut s = previous
                    .unwrap_or_else(|| lifecycle::after_request(&inputs, Ok(false), None, jiff::Timestamp::now()));
                s.code_digest = Some(digest(&code));
                match webapp.verify_code(token, &code).await {
                    Ok(()) => {
                        info!("the client accepted the registration code");
                        s.phase = RegistrationPhase::Registered;
                        s.confirmed_at = None;
                        s.message = "registered with the code from the Secret".into();
                    }
                    // The code was not judged: it is sent again next time.
                    Err(e) if !judged(&e) => {
                        warn!(error = %e, "the registration code did not go through; it is sent again");
                        return None;
                    }
                    Err(e) => {
                        s.phase = RegistrationPhase::CodeRefused;
                        s.message = format!(
                            "the client refused the code from the Secret ({e}); put the right code in, or annotate the object with {REQUEST_CODE_ANNOTATION} to request a new one"
                        );
                    }
                }
                s
            }
        },
    )
}

async fn settings(
    webapp: &Webapp<'_>,
    token: &str,
    wan: &WhatsAppNumber,
    observed: &Observed,
    spec: &crate::api::SettingsSpec,
    probed: Option<&Result<serde_json::Value, String>>,
    previous: Option<SettingsStatus>,
) -> SettingsStatus {
    let mut s = previous.unwrap_or_default();
    let generation = wan.metadata.generation;
    let desired = lifecycle::desired_settings(spec);
    let desired_digest = digest(&desired.to_string());
    // What the client holds comes from the latest probe; none yet, nothing to compare.
    match probed {
        None => {}
        Some(Ok(actual)) => {
            let drift = lifecycle::drift(&desired, actual);
            let new_spec = lifecycle::settings_changed(&s, &desired_digest, generation);
            if !drift.is_empty() && (new_spec || spec.drift_policy == crate::api::DriftPolicy::Correct) {
                match webapp.patch_settings(token, &desired).await {
                    Ok(()) => {
                        if !new_spec {
                            warn!(?drift, "corrected application settings changed through the API");
                        }
                        s.applied_generation = generation;
                        s.applied_digest = Some(desired_digest);
                        s.drift.clear();
                        s.last_error = None;
                    }
                    Err(e) => s.last_error = Some(e.to_string()),
                }
            } else {
                if drift.is_empty() {
                    s.applied_generation = generation;
                    s.applied_digest = Some(desired_digest);
                }
                s.drift = drift;
                s.last_error = None;
            }
        }
        Some(Err(e)) => s.last_error = Some(e.clone()),
    }
    if let Some(r) = &spec.webhook_ca_secret_ref
        && let Some(pem) =
            observed.lifecycle.get(&r.name).and_then(|x| x.data.as_ref()?.get(&r.key)).map(|b| b.0.clone())
    {
        let d = digest(&pem);
        if s.webhook_ca_digest.as_deref() != Some(d.as_str()) {
            match webapp.upload_webhook_ca(token, &pem).await {
                Ok(()) => s.webhook_ca_digest = Some(d),
                Err(e) => s.last_error = Some(format!("webhook CA: {e}")),
            }
        }
    }
    s
}

async fn backup(
    ctx: &Context,
    webapp: &Webapp<'_>,
    token: &str,
    wan: &WhatsAppNumber,
    observed: &Observed,
    spec: &crate::api::BackupSpec,
    previous: Option<BackupStatus>,
) -> BackupStatus {
    let mut s = previous.unwrap_or_default();
    let now = jiff::Timestamp::now();
    let since = backups_since(wan, Some(&s), now);
    let inputs = backup_inputs(spec, &observed.lifecycle);
    let failed = lifecycle::FailedBackups::of(&s);
    let due = match lifecycle::next_backup_attempt(&spec.schedule, since, failed) {
        Ok(next) => lifecycle::backup_due(next, since.at(), now, failed, &inputs),
        Err(why) => {
            s.last_error = Some(why);
            return s;
        }
    };
    if !due {
        return s;
    }
    let result = back_up(ctx, webapp, token, wan, observed, spec, now).await;
    match &result {
        Ok(kept) => {
            info!(backup = %kept.location, "backed up the number");
            if let Err(e) = &kept.pruned {
                warn!(error = %e, backup = %kept.location, "the backup was kept, but older ones were not all removed");
            }
            let labels = ctx.metrics.number(wan);
            ctx.metrics.backup_success.get_or_create(&labels).set(now.as_second() as f64);
        }
        Err(e) => warn!(error = %e, in_a_row = s.consecutive_failures.saturating_add(1), "the backup failed"),
    }
    // The backoff counts from a failure, not from the attempt's start (a
    // store that does not answer takes a while to say so).
    recorded(s, result, now, jiff::Timestamp::now(), inputs)
}

/// A backup attempt begun at `started` and, if it failed, ended at `ended`
/// (made with `inputs`), added to the record of backups `s`. A backup that
/// was kept is a success, whether or not the older ones beyond the count to
/// keep could be removed: those are removed after a later backup.
fn recorded(
    mut s: BackupStatus,
    result: Result<Kept, String>,
    started: jiff::Timestamp,
    ended: jiff::Timestamp,
    inputs: String,
) -> BackupStatus {
    match result {
        Ok(kept) => {
            s.latest = Some(kept.location);
            s.last_success_time = Some(Time(started));
            // The schedule counts from its end: a backup that ran past a
            // scheduled time stands for it.
            s.last_attempt_time = Some(Time(ended));
            s.last_error = None;
            s.failed_with = None;
            s.consecutive_failures = 0;
            s.prune_error = kept.pruned.err();
        }
        Err(e) => {
            s.last_attempt_time = Some(Time(ended));
            // A status from before the count was kept records one failure.
            let before = s.consecutive_failures.max(u32::from(s.failed_with.is_some()));
            s.consecutive_failures = before.saturating_add(1);
            s.last_error = Some(e);
            s.failed_with = Some(inputs);
        }
    }
    s
}

/// A backup that was kept: where it is, and whether the older backups
/// beyond the count to keep were removed after it.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Kept {
    location: String,
    pruned: Result<(), String>,
}

/// What the schedule counts from: the last attempt, else the object's creation.
fn backups_since(wan: &WhatsAppNumber, status: Option<&BackupStatus>, now: jiff::Timestamp) -> lifecycle::BackupsSince {
    match status.and_then(|s| s.last_attempt_time.as_ref()) {
        Some(t) => lifecycle::BackupsSince::Attempt(t.0),
        None => lifecycle::BackupsSince::Created(wan.metadata.creation_timestamp.as_ref().map_or(now, |t| t.0)),
    }
}

/// One backup: the client's, kept where the spec says.
async fn back_up(
    ctx: &Context,
    webapp: &Webapp<'_>,
    token: &str,
    wan: &WhatsAppNumber,
    observed: &Observed,
    spec: &crate::api::BackupSpec,
    now: jiff::Timestamp,
) -> Result<Kept, String> {
    let r = &spec.password_secret_ref;
    let Some(password) = secret_text(observed.lifecycle.get(&r.name), &r.key) else {
        return Err(format!("spec.backup.passwordSecretRef: Secret {} has no key {}", r.name, r.key));
    };
    // Where the backup goes is checked before the client makes one: a backup
    // with nowhere to go would be made again at every retry, for nothing.
    let store = match &spec.object_store {
        Some(o) => {
            let access = store_access(observed, &o.store, "spec.backup.objectStore")?;
            Some((o, Store::connect(&o.store, &access)?))
        }
        None => None,
    };
    let data = webapp.backup(token, &password).await.map_err(|e| e.to_string())?;
    let kept = match store {
        Some((o, store)) => keep_in_store(&store, wan, o, &data, now, spec.keep as usize).await,
        None => keep_backup(ctx, wan, &data, now, spec.keep as usize).await,
    };
    kept.map_err(|e| format!("cannot keep the backup: {e}"))
}

/// What a backup attempt is made with, as a digest: `spec.backup` and the
/// resource versions of the Secrets it reads (an absent one counts too),
/// never their data, which status must not hint at.
fn backup_inputs(spec: &crate::api::BackupSpec, secrets: &BTreeMap<String, Secret>) -> String {
    let store = spec.object_store.as_ref().map(|o| &o.store);
    let names = [
        Some(spec.password_secret_ref.name.as_str()),
        store.map(|s| s.credentials_secret_ref.name.as_str()),
        store.and_then(|s| s.ca_secret_ref.as_ref()).map(|r| r.name.as_str()),
    ];
    let versions: Vec<(&str, Option<&str>)> = names
        .into_iter()
        .flatten()
        .map(|name| (name, secrets.get(name).and_then(|s| s.metadata.resource_version.as_deref())))
        .collect();
    digest(&(spec, versions))
}

/// Writes the backup as a Secret `NAME-backup-<unix time>` and deletes the
/// oldest beyond `keep`.
async fn keep_backup(
    ctx: &Context,
    wan: &WhatsAppNumber,
    data: &str,
    now: jiff::Timestamp,
    keep: usize,
) -> Result<Kept, String> {
    let ns = wan.namespace().unwrap_or_default();
    let api: Api<Secret> = Api::namespaced(ctx.client.clone(), &ns);
    let name = backups::backup_name(Names::new(wan).base(), now);
    // Not owned: backups outlive the WhatsAppNumber, like the media.
    let mut metadata = owned_meta(wan, name.clone(), component_labels(wan, BACKUP_COMPONENT));
    metadata.owner_references = None;
    metadata.annotations = Some(BTreeMap::from([
        ("whatsapp.operators.dev/backup-time".to_string(), now.to_string()),
        ("whatsapp.operators.dev/client-version".to_string(), client_version(wan)),
    ]));
    let secret = Secret {
        metadata,
        type_: Some("Opaque".into()),
        data: Some(BTreeMap::from([(crate::api::BACKUP_SECRET_KEY.to_string(), ByteString(data.as_bytes().to_vec()))])),
        ..Default::default()
    };
    api.create(&PostParams { field_manager: Some(FIELD_MANAGER.into()), ..Default::default() }, &secret)
        .await
        .map_err(|e| e.to_string())?;
    ctx.metrics.record_write("Secret", "create");
    let selector = format!("{},{LABEL_COMPONENT}={BACKUP_COMPONENT}", instance_selector(wan));
    let pruned = async {
        let listed = api
            .list_metadata(&ListParams::default().labels(&selector))
            .await
            .map_err(|e| format!("cannot list the backup Secrets: {e}"))?;
        let names = listed.items.iter().map(|m| m.name_any()).collect();
        for old in lifecycle::expired_backups(names, keep) {
            api.delete(&old, &Default::default()).await.map_err(|e| format!("cannot delete Secret {old}: {e}"))?;
            ctx.metrics.record_write("Secret", "delete");
        }
        Ok(())
    };
    Ok(Kept { location: name, pruned: pruned.await })
}

/// The version the backup was taken from.
fn client_version(wan: &WhatsAppNumber) -> String {
    wan.status.as_ref().and_then(|s| s.current_version.clone()).unwrap_or_else(|| wan.spec.version.clone())
}

/// Writes the backup as the object `PREFIX NAME-backup-<unix time>` and
/// deletes this WhatsAppNumber's oldest objects beyond `keep`. Returns the
/// object's `s3://` URL.
async fn keep_in_store(
    store: &Store,
    wan: &WhatsAppNumber,
    spec: &BackupObjectStore,
    data: &str,
    now: jiff::Timestamp,
    keep: usize,
) -> Result<Kept, String> {
    let base = Names::new(wan).base().to_string();
    let prefix = spec
        .prefix
        .clone()
        .unwrap_or_else(|| backups::default_prefix(&wan.namespace().unwrap_or_default(), &wan.name_any()));
    let key = backups::object_key(&prefix, &backups::backup_name(&base, now));
    let metadata = [
        ("backup-time", now.to_string()),
        ("client-version", client_version(wan)),
        (BACKUP_NUMBER_METADATA, wan.spec.phone_number.clone()),
    ];
    store.put(&key, data.as_bytes().to_vec(), &metadata).await.map_err(|e| format!("cannot write {key}: {e}"))?;
    let url = backups::object_url(&spec.store.bucket, &key);
    let pruned = async {
        let listed = store.list(&prefix).await.map_err(|e| format!("cannot list {prefix}: {e}"))?;
        let own = listed.into_iter().filter(|k| backups::is_own_backup(&prefix, &base, k)).collect();
        for old in lifecycle::expired_backups(own, keep) {
            store.delete(&old).await.map_err(|e| format!("cannot delete {old}: {e}"))?;
        }
        Ok(())
    };
    Ok(Kept { location: url, pruned: pruned.await })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fixtures::sample;

    #[test]
    fn a_kept_backup_is_a_success_even_when_older_ones_could_not_be_removed() {
        let at = |s: i64| jiff::Timestamp::from_second(s).unwrap();
        let failed =
            |s: BackupStatus, at_s: i64| recorded(s, Err("store down".into()), at(at_s), at(at_s + 30), "in".into());
        // Two failures in a row, the backoff counting from each one's end.
        let s = failed(failed(BackupStatus::default(), 100), 200);
        assert_eq!((s.consecutive_failures, s.last_attempt_time.clone()), (2, Some(Time(at(230)))));
        assert_eq!((s.last_error.as_deref(), s.failed_with.as_deref()), (Some("store down"), Some("in")));
        // A status from before the count was kept counts one failure.
        let old = BackupStatus { failed_with: Some("in".into()), ..Default::default() };
        assert_eq!(failed(old, 300).consecutive_failures, 2);
        // Written, but the oldest could not be deleted: a success all the same.
        let kept = Kept { location: "s3://b/k".into(), pruned: Err("cannot delete k0: AccessDenied".into()) };
        let s = recorded(s, Ok(kept), at(400), at(410), "in".into());
        assert_eq!((s.latest.as_deref(), s.last_success_time.clone()), (Some("s3://b/k"), Some(Time(at(400)))));
        assert_eq!((s.last_error.as_deref(), s.failed_with.as_deref(), s.consecutive_failures), (None, None, 0));
        assert_eq!(s.prune_error.as_deref(), Some("cannot delete k0: AccessDenied"));
        // The next backup that removes them clears it; the schedule counts
        // from its end, its success from its start.
        let s = recorded(s, Ok(Kept { location: "s3://b/k2".into(), pruned: Ok(()) }), at(500), at(505), "in".into());
        assert_eq!((s.prune_error, s.last_attempt_time), (None, Some(Time(at(505)))));
        assert_eq!(s.last_success_time, Some(Time(at(500))));
    }

    #[test]
    fn missing_registration_material_is_judged_on_every_pass_until_registered() {
        use crate::api::{RegistrationPhase, RegistrationStatus};
        let mut wan = sample();
        let observed = Observed::default();
        let unregistered = Some("unregistered");
        assert_eq!(registration_material(&wan, &observed, None, unregistered), None, "no registration asked for");
        wan.spec.registration =
            Some(serde_json::from_value(serde_json::json!({"secretRef": {"name": "reg"}, "method": "sms"})).unwrap());
        let missing = registration_material(&wan, &observed, None, unregistered).expect("said");
        assert_eq!(missing.0, "SecretNotFound");
        // Only when a code request is the next step.
        assert_eq!(registration_material(&wan, &observed, None, Some("connected")), None, "registered otherwise");
        assert_eq!(registration_material(&wan, &observed, None, None), None, "the client not seen yet");
        let mut unpolled = wan.clone();
        unpolled.spec.health.enabled = false;
        assert_eq!(registration_material(&unpolled, &observed, None, unregistered), None, "waits for polling");
        let mut restoring = wan.clone();
        restoring.spec.restore_from = crate::fixtures::restoring().spec.restore_from;
        assert_eq!(registration_material(&restoring, &observed, None, unregistered), None, "a restore goes first");
        let refused = RegistrationStatus {
            phase: RegistrationPhase::RequestRefused,
            message: String::new(),
            request_digest: None,
            code_requested_at: None,
            code_digest: None,
            request_annotation: None,
            confirmed_at: None,
        };
        assert_eq!(registration_material(&wan, &observed, Some(&refused), unregistered), Some(missing));
        for phase in [RegistrationPhase::Registered, RegistrationPhase::CodeRequested, RegistrationPhase::LoggedOff] {
            let recorded = RegistrationStatus { phase, ..refused.clone() };
            assert_eq!(
                registration_material(&wan, &observed, Some(&recorded), unregistered),
                None,
                "{phase:?} says more"
            );
        }
        let secret = |key: &str| k8s_openapi::api::core::v1::Secret {
            data: Some([(key.to_string(), k8s_openapi::ByteString(b"X".to_vec()))].into()),
            ..Default::default()
        };
        let without_cert = Observed { registration: Some(secret("pin")), ..Default::default() };
        assert_eq!(
            registration_material(&wan, &without_cert, None, unregistered).map(|m| m.0),
            Some("SecretKeyMissing")
        );
        let complete = Observed { registration: Some(secret("cert")), ..Default::default() };
        assert_eq!(registration_material(&wan, &complete, None, unregistered), None);
    }

    #[test]
    fn a_missing_registration_secret_or_certificate_is_named_with_its_namespace() {
        let wan = sample();
        let r: crate::api::RegistrationSecretRef = serde_json::from_value(serde_json::json!({"name": "reg"})).unwrap();
        let (reason, message) = missing_material(&wan, &r, false);
        assert_eq!(reason, "SecretNotFound");
        assert!(message.starts_with("Secret team/reg (spec.registration.secretRef) does not exist"), "{message}");
        let (reason, message) = missing_material(&wan, &r, true);
        assert_eq!(reason, "SecretKeyMissing");
        assert!(message.contains("has no key cert") && message.contains("no code was requested"), "{message}");
    }

    fn t(s: i64) -> jiff::Timestamp {
        jiff::Timestamp::from_second(s).unwrap()
    }

    #[test]
    fn a_backup_due_but_held_requeues_nothing_by_itself() {
        let mut wan = sample();
        wan.spec.backup = Some(
            serde_json::from_value(serde_json::json!({
                "schedule": "0 * * * *", "passwordSecretRef": {"name": "pw"}
            }))
            .unwrap(),
        );
        wan.metadata.creation_timestamp = Some(Time(t(3_600 * 100 + 60)));
        // Next due at the top of the hour.
        assert_eq!(next_backup_in(&wan, t(3_600 * 100 + 600)), Some(std::time::Duration::from_secs(3_000)));
        // Overdue: taken by this reconcile, or held (an unregistered number,
        // a restore not in yet) until something wakes the reconcile; never a
        // requeue every second.
        assert_eq!(next_backup_in(&wan, t(3_600 * 101 + 2)), Some(std::time::Duration::from_secs(1)), "just due");
        assert_eq!(next_backup_in(&wan, t(3_600 * 101 + 10)), None);

        // A failed attempt: a change seen within the gap after it is looked
        // at once the gap has passed, then the backoff's end counts.
        let failed = BackupStatus {
            last_attempt_time: Some(Time(t(3_600 * 101))),
            last_error: Some("refused".into()),
            failed_with: Some("d".into()),
            consecutive_failures: 3,
            ..Default::default()
        };
        let with = |backup: &BackupStatus| {
            Some(crate::api::WhatsAppNumberStatus { backup: Some(Box::new(backup.clone())), ..Default::default() })
        };
        wan.status = with(&failed);
        assert_eq!(next_backup_in(&wan, t(3_600 * 101 + 5)), Some(std::time::Duration::from_secs(10)));
        // The gap just passed with nothing changed: the backoff's end, not a
        // reconcile every second until the gap is overdue.
        assert_eq!(next_backup_in(&wan, t(3_600 * 101 + 16)), Some(std::time::Duration::from_secs(104)), "the backoff");
        assert_eq!(next_backup_in(&wan, t(3_600 * 101 + 60)), Some(std::time::Duration::from_secs(60)), "2 min after");
        // Recorded before the count was kept: one failure.
        wan.status = with(&BackupStatus { consecutive_failures: 0, ..failed.clone() });
        assert_eq!(next_backup_in(&wan, t(3_600 * 101 + 22)), Some(std::time::Duration::from_secs(8)));
        // Failed long enough for the hour to come first: the schedule's next
        // time (the top of the hour), before the capped backoff's end.
        let mid_hour = BackupStatus {
            last_attempt_time: Some(Time(t(3_600 * 101 + 1_800))),
            consecutive_failures: 20,
            ..failed.clone()
        };
        wan.status = with(&mid_hour);
        assert_eq!(next_backup_in(&wan, t(3_600 * 101 + 1_860)), Some(std::time::Duration::from_secs(1_740)));
        let succeeded = BackupStatus { failed_with: None, last_error: None, consecutive_failures: 0, ..failed };
        wan.status = Some(crate::api::WhatsAppNumberStatus { backup: Some(Box::new(succeeded)), ..Default::default() });
        assert_eq!(next_backup_in(&wan, t(3_600 * 101 + 5)), Some(std::time::Duration::from_secs(3_595)));
    }

    #[test]
    fn a_restore_retry_is_looked_at_when_due() {
        let mut wan = crate::fixtures::restoring();
        let record = |outcome, from: &str| {
            Some(Box::new(RestoreStatus { outcome, from: from.into(), at: Time(t(1_000)), message: String::new() }))
        };
        let mut status = crate::api::WhatsAppNumberStatus {
            restore: record(RestoreOutcome::Retrying, "old-backup"),
            ..Default::default()
        };
        wan.status = Some(status.clone());
        assert_eq!(next_restore_retry_in(&wan, t(1_020)), Some(std::time::Duration::from_secs(40)));
        assert_eq!(next_restore_retry_in(&wan, t(1_062)), Some(std::time::Duration::from_secs(1)), "due now");
        assert_eq!(next_restore_retry_in(&wan, t(1_100)), None, "overdue: held, or done by the reconcile at its time");
        status.restore = record(RestoreOutcome::Retrying, "another-backup");
        wan.status = Some(status.clone());
        assert_eq!(next_restore_retry_in(&wan, t(1_020)), None, "another backup's record");
        status.restore = record(RestoreOutcome::Refused, "old-backup");
        wan.status = Some(status);
        assert_eq!(next_restore_retry_in(&wan, t(1_020)), None, "final");
    }

    #[test]
    fn only_the_clients_refusal_of_the_backup_is_final() {
        let status = |status: u16, code: Option<i64>| CallError::Status {
            what: "POST /v1/settings/restore",
            status,
            code,
            details: String::new(),
        };
        assert!(status(400, Some(1009)).is_refusal(), "wrong password, damaged data, another shape");
        for retried in [
            status(401, None),
            status(403, None),
            status(429, None),
            status(500, None),
            status(503, Some(1011)),
            status(400, Some(1017)),
            CallError::Unreachable { url: "u".into(), reason: "timed out".into(), may_have_arrived: true },
        ] {
            assert!(!retried.is_refusal(), "{retried}");
        }
    }

    #[test]
    fn what_a_backup_is_made_with_changes_with_its_secrets_versions_not_their_data() {
        let spec: crate::api::BackupSpec = serde_json::from_value(json!({
            "schedule": "0 3 * * *", "passwordSecretRef": {"name": "pw"},
            "objectStore": {"bucket": "b", "endpoint": "https://s3.example",
                "credentialsSecretRef": {"name": "s3"}, "caSecretRef": {"name": "s3-ca"}}
        }))
        .unwrap();
        let secret = |name: &str, version: &str, data: &str| {
            let secret = Secret {
                metadata: kube::api::ObjectMeta {
                    name: Some(name.into()),
                    resource_version: Some(version.into()),
                    ..Default::default()
                },
                data: Some(BTreeMap::from([("k".to_string(), ByteString(data.as_bytes().to_vec()))])),
                ..Default::default()
            };
            (name.to_string(), secret)
        };
        let secrets = BTreeMap::from([secret("pw", "1", "x"), secret("s3", "7", "wrong"), secret("s3-ca", "3", "pem")]);
        let failed = backup_inputs(&spec, &secrets);
        assert_eq!(backup_inputs(&spec, &secrets), failed, "stable");
        let unrelated = BTreeMap::from_iter(secrets.clone().into_iter().chain([secret("other", "9", "y")]));
        assert_eq!(backup_inputs(&spec, &unrelated), failed, "a Secret the backup does not read");
        let same_version = BTreeMap::from_iter(secrets.clone().into_iter().chain([secret("s3", "7", "right")]));
        assert_eq!(backup_inputs(&spec, &same_version), failed, "only versions count, never data");
        let fixed = BTreeMap::from_iter(secrets.clone().into_iter().chain([secret("s3", "8", "right")]));
        assert_ne!(backup_inputs(&spec, &fixed), failed, "the credentials put right");
        let mut missing = secrets.clone();
        missing.remove("pw");
        assert_ne!(backup_inputs(&spec, &missing), failed, "a Secret gone or created");
        let mut other_bucket = spec.clone();
        other_bucket.object_store.as_mut().unwrap().store.bucket = "c".into();
        assert_ne!(backup_inputs(&other_bucket, &secrets), failed, "the spec changed");
    }

    #[test]
    fn a_registration_call_the_client_did_not_judge_is_sent_again() {
        let status = |status: u16, code: Option<i64>| CallError::Status {
            what: "POST /v1/account",
            status,
            code,
            details: String::new(),
        };
        for waits in [status(400, Some(1009)), status(403, Some(1005)), status(429, Some(1015))] {
            assert!(judged(&waits), "a wrong certificate, PIN or code, a ban, a rate limit: {waits}");
        }
        for again in [
            status(401, None),
            status(403, None),
            status(503, Some(1011)),
            status(400, Some(1017)),
            CallError::Unreachable { url: "u".into(), reason: "timed out".into(), may_have_arrived: true },
        ] {
            assert!(!judged(&again), "a fail-over, a lost session, no answer: {again}");
        }
    }
}
