//! A number's life after deployment, as the spec declares it: registration,
//! application settings and backups. Pure decisions; the calls are made by
//! `controller::lifecycle`.
//!
//! Nothing here repeats a request on its own that a person must judge: a code
//! request or a code is sent once per set of inputs, and a refused request
//! waits for new inputs (a changed Secret, spec or annotation).

use jiff::Timestamp;
use serde_json::{Map, Value, json};

use crate::api::{RegistrationPhase, RegistrationStatus, RestoreOutcome, SettingsSpec, SettingsStatus};

/// What to do about the registration now.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RegistrationStep {
    /// Nothing to do (not asked for, registered, or waiting for a person).
    Wait(String),
    /// `POST /v1/account` with these inputs (digest recorded with the result).
    RequestCode,
    /// `POST /v1/account/verify` with the code in the Secret.
    Verify(String),
}

/// Why a number registered once and unregistered now waits.
pub const LOGGED_OFF: &str = "the number was registered and is unregistered now; annotate the object with whatsapp.operators.dev/request-code to request a new code";

/// A number registered once that the client reports unregistered now: logged
/// off once a probe had found it registered since (`confirmed`; the client
/// goes on reporting the number unregistered for a moment after it took the
/// code).
pub fn logged_off(previous: RegistrationPhase, confirmed: bool) -> bool {
    match previous {
        RegistrationPhase::LoggedOff => true,
        RegistrationPhase::Registered => confirmed,
        _ => false,
    }
}

/// `unregistered`: whether the client reports the number unregistered now.
/// `inputs` is the digest of method, certificate, PIN and the request-code
/// annotation; `code` the code in the Secret, if any.
pub fn registration_step(
    previous: Option<&RegistrationStatus>,
    unregistered: bool,
    inputs: &str,
    annotation: &str,
    code: Option<&str>,
    code_digest: impl Fn(&str) -> String,
) -> RegistrationStep {
    if !unregistered {
        return RegistrationStep::Wait("the number is registered".into());
    }
    let same_inputs = previous.is_some_and(|p| p.request_digest.as_deref() == Some(inputs));
    match previous.map(|p| p.phase) {
        Some(phase @ (RegistrationPhase::CodeRequested | RegistrationPhase::CodeRefused)) if same_inputs => {
            match code {
                Some(code) if previous.and_then(|p| p.code_digest.as_deref()) != Some(code_digest(code).as_str()) => {
                    RegistrationStep::Verify(code.to_string())
                }
                // The code the Secret held when this code was requested belongs
                // to an earlier request: sending it would only spend a guess.
                Some(_) if phase == RegistrationPhase::CodeRequested => RegistrationStep::Wait(
                    "a new code was requested and the Secret still holds the code from before; put the new code in"
                        .into(),
                ),
                Some(_) => RegistrationStep::Wait(
                    "the client refused the code in the Secret; put the new code in, or request another code".into(),
                ),
                None => RegistrationStep::Wait("waiting for the registration code in the Secret".into()),
            }
        }
        Some(RegistrationPhase::RequestRefused) if same_inputs => RegistrationStep::Wait(
            "the client refused the code request; fix the certificate or PIN, or annotate the object to ask again"
                .into(),
        ),
        // Registered once but unregistered now (logged off), or new inputs.
        // Registered once: only a person asks for a new code (a certificate or
        // PIN rotated since is no such request: the number may be in use
        // elsewhere, and a new registration here would take it back).
        // A record that does not say (written before it was kept) takes the
        // annotation as it is now as the one it was made under.
        Some(RegistrationPhase::Registered | RegistrationPhase::LoggedOff)
            if previous.and_then(|p| p.request_annotation.as_deref()).unwrap_or(annotation) == annotation =>
        {
            RegistrationStep::Wait(LOGGED_OFF.into())
        }
        _ => RegistrationStep::RequestCode,
    }
}

/// The status after a code request's answer. `stale_code` is the digest of
/// the code the Secret held when the request was sent: an answer to an
/// earlier request, never sent for this one.
pub fn after_request(
    inputs: &str,
    outcome: Result<bool, String>,
    stale_code: Option<String>,
    now: Timestamp,
) -> RegistrationStatus {
    let at = Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(now));
    match outcome {
        Ok(true) => RegistrationStatus {
            phase: RegistrationPhase::Registered,
            message: "the client reports the number registered to this deployment".into(),
            request_digest: Some(inputs.into()),
            code_requested_at: None,
            code_digest: None,
            request_annotation: None,
            confirmed_at: None,
        },
        Ok(false) => RegistrationStatus {
            phase: RegistrationPhase::CodeRequested,
            message: "a code was requested; put it into the registration Secret's code key".into(),
            request_digest: Some(inputs.into()),
            code_requested_at: at,
            code_digest: stale_code,
            request_annotation: None,
            confirmed_at: None,
        },
        Err(why) => RegistrationStatus {
            phase: RegistrationPhase::RequestRefused,
            message: format!("the client refused the code request: {why}"),
            request_digest: Some(inputs.into()),
            code_requested_at: None,
            code_digest: None,
            request_annotation: None,
            confirmed_at: None,
        },
    }
}

/// Why a backup must not be restored into the number `phone_number`: the
/// number its maker recorded on it (the label or object metadata the
/// operator writes with each backup) is another. A backup that records no
/// number is not judged. Restoring another number's backup would run a
/// second instance of that number, unseen by its claim.
pub fn backup_of_another_number(phone_number: &str, recorded: Option<&str>) -> Option<String> {
    let digits = |n: &str| n.chars().filter(char::is_ascii_digit).collect::<String>();
    let recorded = recorded.filter(|r| !digits(r).is_empty())?;
    (digits(recorded) != digits(phone_number)).then(|| {
        format!(
            "the backup was made for +{} and this WhatsAppNumber is {phone_number}: restoring it would run a second instance of +{}",
            digits(recorded),
            digits(recorded)
        )
    })
}

/// How long a restore that did not go through waits before it is tried again.
pub const RESTORE_RETRY: std::time::Duration = std::time::Duration::from_secs(60);

/// What to do about `spec.restoreFrom` now.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RestoreStep {
    /// Restore the backup: the deployment is new (every master and coreapp
    /// answers, each saying `unregistered`).
    Restore,
    /// Nothing is restored, ever, for this backup: the client reports the
    /// number registered, and a restore would overwrite that registration.
    AlreadyRegistered,
    /// A retry is due, but the probe at hand ended before it: probe again,
    /// so that a try that arrived late shows before the next one is sent.
    Probe,
    /// Not yet: nodes are missing, the client's state does not say, or a
    /// try that did not go through waits for its retry time.
    Wait,
    /// This backup was restored, refused or passed over already.
    Done,
}

/// What the latest probe saw of the client, as the restore needs it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Client<'a> {
    /// The overall gateway state the probe judged.
    pub gateway: &'a str,
    /// Nodes that answered, and how many of them said `unregistered`.
    pub nodes: usize,
    pub unregistered_nodes: usize,
    /// When the probe ended.
    pub probed_at: Timestamp,
}

/// `recorded`: what status records for this backup, and when; `expected`
/// the masters and coreapps the spec runs.
pub fn restore_step(
    recorded: Option<(RestoreOutcome, Timestamp)>,
    client: Client<'_>,
    expected: usize,
    now: Timestamp,
) -> RestoreStep {
    let Client { gateway, nodes, unregistered_nodes, probed_at } = client;
    if recorded.is_some_and(|(outcome, _)| outcome != RestoreOutcome::Retrying) {
        return RestoreStep::Done;
    }
    // A try that got no answer may have arrived: the client says.
    if gateway != "unregistered" && registration_known(gateway, nodes, expected) {
        return RestoreStep::AlreadyRegistered;
    }
    // Every node says so: one lagging behind a registration says nothing.
    if nodes < expected || unregistered_nodes < nodes {
        return RestoreStep::Wait;
    }
    match restore_retry_at(recorded) {
        Some(retry_at) if now < retry_at => RestoreStep::Wait,
        Some(retry_at) if probed_at <= retry_at => RestoreStep::Probe,
        _ => RestoreStep::Restore,
    }
}

/// When a restore that did not go through is tried again.
pub fn restore_retry_at(recorded: Option<(RestoreOutcome, Timestamp)>) -> Option<Timestamp> {
    match recorded {
        Some((RestoreOutcome::Retrying, at)) => at.checked_add(RESTORE_RETRY).ok(),
        _ => None,
    }
}

/// How long until `at`, for a requeue: at least a second, and nothing once
/// it passed more than [`DUE_GRACE`] ago. The reconcile at the due time
/// did what was due, or something holds it (an unregistered number, a
/// restore not in yet, polling off) until a probe or a change of the spec
/// says otherwise, which wakes the reconcile on its own; the grace covers a
/// reconcile that began just before the due time.
pub fn due_in(at: Timestamp, now: Timestamp) -> Option<std::time::Duration> {
    let wait = at.duration_since(now);
    if wait < -DUE_GRACE {
        return None;
    }
    Some(std::time::Duration::from_secs(wait.as_secs().max(1) as u64))
}

/// See [`due_in`].
pub const DUE_GRACE: jiff::SignedDuration = jiff::SignedDuration::from_secs(5);

/// Whether the client's state says if the number is registered: a node
/// reports `unregistered`, or the gateway a state of a registered number
/// (`connected`, `connecting`; `disconnected` only once all `expected`
/// masters and coreapps answer, since nodes that cannot be reached yet also
/// add up to it, the one that would say `unregistered` among them). Never
/// `uninitialized` (a schema being created or upgraded) nor `unknown`.
pub fn registration_known(gateway: &str, nodes: usize, expected: usize) -> bool {
    match gateway {
        "unregistered" | "connected" | "connecting" => true,
        "disconnected" => nodes >= expected,
        _ => false,
    }
}

/// Whether the spec's settings are new to the client: they differ from the
/// ones last written or found (`digest`); a status from before digests were
/// kept goes by the generation.
pub fn settings_changed(status: &SettingsStatus, digest: &str, generation: Option<i64>) -> bool {
    match &status.applied_digest {
        Some(applied) => applied != digest,
        None => status.applied_generation != generation,
    }
}

/// The client's field names for what the spec sets, as a PATCH body.
pub fn desired_settings(spec: &SettingsSpec) -> Value {
    let mut out = Map::new();
    let mut webhooks = Map::new();
    if let Some(url) = &spec.webhook_url {
        webhooks.insert("url".into(), json!(url));
    }
    if let Some(n) = spec.webhook_max_concurrent_requests {
        webhooks.insert("max_concurrent_requests".into(), json!(n));
    }
    if !webhooks.is_empty() {
        out.insert("webhooks".into(), Value::Object(webhooks));
    }
    let mut put = |k: &str, v: Option<Value>| {
        if let Some(v) = v {
            out.insert(k.into(), v);
        }
    };
    put("callback_persist", spec.callback_persist.map(Value::from));
    put("callback_backoff_delay_ms", spec.callback_backoff_delay_ms.map(Value::from));
    put("max_callback_backoff_delay_ms", spec.max_callback_backoff_delay_ms.map(Value::from));
    put("sent_status", spec.sent_status.map(Value::from));
    put("pass_through", spec.pass_through.map(Value::from));
    put("media", spec.media_auto_download.as_ref().map(|m| json!({"auto_download": m})));
    Value::Object(out)
}

/// Dotted names of the desired fields whose value in `actual` differs.
/// Numbers compare by value (the client may write `3000` as `"3000"`), lists
/// as sets.
pub fn drift(desired: &Value, actual: &Value) -> Vec<String> {
    fn walk(prefix: &str, desired: &Value, actual: &Value, out: &mut Vec<String>) {
        match desired {
            Value::Object(map) => {
                for (k, v) in map {
                    let name = if prefix.is_empty() { k.clone() } else { format!("{prefix}.{k}") };
                    walk(&name, v, actual.get(k).unwrap_or(&Value::Null), out);
                }
            }
            _ if !same(desired, actual) => out.push(prefix.to_string()),
            _ => {}
        }
    }
    fn same(a: &Value, b: &Value) -> bool {
        let number = |v: &Value| v.as_f64().or_else(|| v.as_str()?.parse().ok());
        match (a, b) {
            (Value::Number(_), _) => number(a) == number(b),
            (Value::Array(x), Value::Array(y)) => {
                let mut x: Vec<String> = x.iter().map(Value::to_string).collect();
                let mut y: Vec<String> = y.iter().map(Value::to_string).collect();
                x.sort();
                y.sort();
                x == y
            }
            _ => a == b,
        }
    }
    let mut out = Vec::new();
    walk("", desired, actual, &mut out);
    out
}

/// The next backup time after `since`, by a cron expression in UTC.
pub fn next_backup(schedule: &str, since: Timestamp) -> Result<Timestamp, String> {
    use croner::parser::{CronParser, Seconds, Year};
    // Five fields, no seconds or year. Steps from a number (`5/15`) and `?`
    // for `*` in any field are taken too: objects may already carry them.
    let parser = CronParser::builder().seconds(Seconds::Disallowed).year(Year::Disallowed).sloppy_ranges(true).build();
    let cron = parser.parse(&schedule.replace('?', "*")).map_err(|e| format!("spec.backup.schedule: {e}"))?;
    // The search runs on whole seconds, so a fraction of `since` is dropped.
    let since = since.to_zoned(jiff::tz::TimeZone::UTC);
    let next = cron.find_next_occurrence(&since, false).map_err(|e| format!("spec.backup.schedule: {e}"))?;
    Ok(next.timestamp())
}

/// How long after a failed backup a change of what it was made with may
/// try again: a Secret rewritten over and over (labels, annotations, a
/// tool's refresh) makes at most one attempt this often.
pub const BACKUP_RETRY_GAP: std::time::Duration = std::time::Duration::from_secs(15);

/// The first retry of a failed backup comes this long after it; each
/// further failure in a row doubles the wait, up to [`BACKUP_BACKOFF_MAX`]:
/// a store or client down for a while is tried again soon, then less often.
pub const BACKUP_BACKOFF_FIRST: std::time::Duration = std::time::Duration::from_secs(30);
pub const BACKUP_BACKOFF_MAX: std::time::Duration = std::time::Duration::from_secs(3_600);

/// The failed backup attempts since the last success, as status records them.
#[derive(Clone, Copy, Debug)]
pub struct FailedBackups<'a> {
    /// What the last one was made with (see [`backup_due`]).
    pub made_with: &'a str,
    /// How many in a row: at least one.
    pub in_a_row: u32,
}

impl<'a> FailedBackups<'a> {
    /// The failed attempts status records, if the last attempt failed (a
    /// status written before the count was kept counts one).
    pub fn of(status: &'a crate::api::BackupStatus) -> Option<Self> {
        let made_with = status.failed_with.as_deref()?;
        Some(Self { made_with, in_a_row: status.consecutive_failures.max(1) })
    }
}

/// Where the schedule is read from: the last attempt, or, before the
/// first, the object's creation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BackupsSince {
    Attempt(Timestamp),
    Created(Timestamp),
}

impl BackupsSince {
    pub fn at(self) -> Timestamp {
        match self {
            Self::Attempt(t) | Self::Created(t) => t,
        }
    }
}

/// A backup that ended less than this before a scheduled time stands for
/// that time: a retry that succeeded just before it is not followed by
/// another backup seconds later.
pub const BACKUP_SCHEDULE_SLACK: std::time::Duration = BACKUP_BACKOFF_FIRST;

/// When the next backup is to be tried after `since` (the end of the last
/// attempt): the schedule's next time (the one after, when a backup made
/// ended just before it), or, after failed attempts, the end of their
/// backoff if that comes first.
pub fn next_backup_attempt(
    schedule: &str,
    since: BackupsSince,
    failed: Option<FailedBackups<'_>>,
) -> Result<Timestamp, String> {
    let last = since.at();
    let mut scheduled = next_backup(schedule, last)?;
    let slack = jiff::SignedDuration::try_from(BACKUP_SCHEDULE_SLACK).unwrap_or_default();
    let made = matches!(since, BackupsSince::Attempt(_)) && failed.is_none();
    if made && scheduled < last + slack {
        scheduled = next_backup(schedule, scheduled)?;
    }
    Ok(failed.map_or(scheduled, |f| scheduled.min(last + backup_backoff(f.in_a_row))))
}

/// The wait after `in_a_row` failed attempts: [`BACKUP_BACKOFF_FIRST`]
/// doubled for each after the first, at most [`BACKUP_BACKOFF_MAX`].
pub fn backup_backoff(in_a_row: u32) -> jiff::SignedDuration {
    let doublings = in_a_row.saturating_sub(1).min(16);
    let wait = BACKUP_BACKOFF_FIRST.saturating_mul(1 << doublings).min(BACKUP_BACKOFF_MAX);
    jiff::SignedDuration::try_from(wait).unwrap_or_default()
}

/// Whether a backup is due now: at `next` (see [`next_backup_attempt`]), or,
/// after failed attempts (`failed`), once what the next would be made with
/// (`inputs`) differs from what the last was made with and
/// [`BACKUP_RETRY_GAP`] has passed since it (`last`): a person put right what
/// failed. One try per change, so a fix that was not one does not make a loop.
pub fn backup_due(
    next: Timestamp,
    last: Timestamp,
    now: Timestamp,
    failed: Option<FailedBackups<'_>>,
    inputs: &str,
) -> bool {
    next <= now || (failed.is_some_and(|f| f.made_with != inputs) && now >= backup_retry_at(last))
}

/// When a failed backup attempt at `last` may be tried again for a change.
pub fn backup_retry_at(last: Timestamp) -> Timestamp {
    last + jiff::SignedDuration::try_from(BACKUP_RETRY_GAP).unwrap_or_default()
}

/// Backup Secrets to delete so that `keep` remain: names sort by time.
pub fn expired_backups(mut names: Vec<String>, keep: usize) -> Vec<String> {
    names.sort();
    let excess = names.len().saturating_sub(keep);
    names.into_iter().take(excess).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn digest(s: &str) -> String {
        format!("d({s})")
    }

    fn client(gateway: &str, nodes: usize, unregistered_nodes: usize, probed_at: i64) -> Client<'_> {
        Client { gateway, nodes, unregistered_nodes, probed_at: Timestamp::from_second(probed_at).unwrap() }
    }

    #[test]
    fn a_restore_goes_only_into_a_new_deployment_once() {
        let t = |s: i64| Timestamp::from_second(s).unwrap();
        let now = t(1_000);
        let fresh = client("unregistered", 4, 4, 999);
        assert_eq!(restore_step(None, fresh, 4, now), RestoreStep::Restore);
        assert_eq!(restore_step(None, client("unregistered", 3, 3, 999), 4, now), RestoreStep::Wait, "every node");
        // One node lagging behind a registration says nothing of the rest.
        assert_eq!(restore_step(None, client("unregistered", 4, 1, 999), 4, now), RestoreStep::Wait);
        for done in [RestoreOutcome::Restored, RestoreOutcome::Refused, RestoreOutcome::AlreadyRegistered] {
            assert_eq!(restore_step(Some((done, t(0))), fresh, 4, now), RestoreStep::Done, "{done:?}");
        }
        // A registration found before any restore (a lost status, an object
        // re-created over its databases) is never overwritten.
        assert_eq!(restore_step(None, client("connected", 4, 0, 999), 4, now), RestoreStep::AlreadyRegistered);
        assert_eq!(restore_step(None, client("disconnected", 4, 0, 999), 4, now), RestoreStep::AlreadyRegistered);
        // States that do not prove a registration wait: nodes that do not
        // answer yet also add up to `disconnected`.
        for (gateway, nodes) in
            [("disconnected", 3), ("disconnected", 0), ("uninitialized", 4), ("unknown", 4), ("", 4)]
        {
            assert_eq!(restore_step(None, client(gateway, nodes, 0, 999), 4, now), RestoreStep::Wait, "{gateway}");
        }
    }

    #[test]
    fn a_restore_that_did_not_go_through_is_tried_again_after_a_while() {
        let t = |s: i64| Timestamp::from_second(s).unwrap();
        let retrying = |at: i64| Some((RestoreOutcome::Retrying, t(at)));
        let fresh = |probed_at| client("unregistered", 4, 4, probed_at);
        assert_eq!(restore_step(retrying(990), fresh(999), 4, t(1_000)), RestoreStep::Wait, "not at once");
        // Due, on a probe from before the retry time: a try that arrived late
        // may not show in it yet, so the client is probed first.
        assert_eq!(restore_step(retrying(900), fresh(955), 4, t(1_000)), RestoreStep::Probe);
        assert_eq!(restore_step(retrying(900), fresh(999), 4, t(1_000)), RestoreStep::Restore);
        assert_eq!(restore_step(retrying(900), client("unregistered", 3, 3, 999), 4, t(1_000)), RestoreStep::Wait);
        // The try without an answer arrived after all: nothing more is sent.
        assert_eq!(
            restore_step(retrying(990), client("connected", 4, 0, 999), 4, t(1_000)),
            RestoreStep::AlreadyRegistered
        );
        assert_eq!(restore_retry_at(retrying(900)), Some(t(960)));
        assert_eq!(restore_retry_at(Some((RestoreOutcome::Refused, t(900)))), None);
    }

    #[test]
    fn a_due_time_is_looked_at_once_then_left_to_what_holds_it() {
        let t = |s: i64| Timestamp::from_second(s).unwrap();
        assert_eq!(due_in(t(1_000), t(940)), Some(std::time::Duration::from_secs(60)));
        assert_eq!(due_in(t(1_000), t(1_000)), Some(std::time::Duration::from_secs(1)));
        assert_eq!(due_in(t(1_000), t(1_003)), Some(std::time::Duration::from_secs(1)), "just passed");
        assert_eq!(due_in(t(1_000), t(1_006)), None, "never a requeue every second");
    }

    #[test]
    fn only_some_gateway_states_say_whether_the_number_is_registered() {
        for known in ["unregistered", "connected", "connecting", "disconnected"] {
            assert!(registration_known(known, 4, 4), "{known}");
        }
        for unknown in ["uninitialized", "unknown", ""] {
            assert!(!registration_known(unknown, 4, 4), "{unknown}");
        }
        // Nodes not answering yet add up to `disconnected`: the primary
        // master that would say `unregistered` may be one of them.
        assert!(!registration_known("disconnected", 3, 4));
        assert!(!registration_known("disconnected", 0, 4));
        assert!(registration_known("unregistered", 1, 4), "one node saying so is enough");
    }

    #[test]
    fn settings_are_new_when_they_change_not_when_the_rest_of_the_spec_does() {
        let applied =
            SettingsStatus { applied_generation: Some(3), applied_digest: Some("d1".into()), ..Default::default() };
        assert!(!settings_changed(&applied, "d1", Some(4)), "another spec field changed");
        assert!(settings_changed(&applied, "d2", Some(4)), "the settings changed");
        let older = SettingsStatus { applied_generation: Some(3), ..Default::default() };
        assert!(!settings_changed(&older, "d1", Some(3)));
        assert!(settings_changed(&older, "d1", Some(4)), "without a digest, by generation");
        assert!(settings_changed(&SettingsStatus::default(), "d1", Some(1)), "never written");
    }

    fn status(phase: RegistrationPhase, inputs: &str, code: Option<&str>) -> RegistrationStatus {
        RegistrationStatus {
            phase,
            message: String::new(),
            request_digest: Some(inputs.into()),
            code_requested_at: None,
            code_digest: code.map(digest),
            request_annotation: None,
            confirmed_at: None,
        }
    }

    #[test]
    fn a_code_is_requested_once_per_set_of_inputs() {
        assert_eq!(registration_step(None, true, "i1", "", None, digest), RegistrationStep::RequestCode);
        let requested = status(RegistrationPhase::CodeRequested, "i1", None);
        assert!(matches!(registration_step(Some(&requested), true, "i1", "", None, digest), RegistrationStep::Wait(_)));
        let refused = status(RegistrationPhase::RequestRefused, "i1", None);
        let wait = registration_step(Some(&refused), true, "i1", "", None, digest);
        assert!(matches!(&wait, RegistrationStep::Wait(m) if m.contains("annotate")), "{wait:?}");
        assert_eq!(registration_step(Some(&refused), true, "i2", "", None, digest), RegistrationStep::RequestCode);
        assert!(matches!(registration_step(None, false, "i1", "", None, digest), RegistrationStep::Wait(_)));
    }

    #[test]
    fn a_number_registered_once_waits_for_a_person_once_logged_off() {
        use RegistrationPhase::*;
        // Right after the client took the code it may still report the
        // number unregistered: no probe has found it registered yet.
        assert!(!logged_off(Registered, false));
        assert!(logged_off(Registered, true), "seen registered, then not");
        assert!(logged_off(LoggedOff, false), "it stays logged off");
        for phase in [CodeRequested, CodeRefused, RequestRefused] {
            assert!(!logged_off(phase, true), "{phase:?}");
        }
        for phase in [Registered, LoggedOff] {
            let previous =
                RegistrationStatus { request_annotation: Some(String::new()), ..status(phase, "i1", Some("123456")) };
            let step = registration_step(Some(&previous), true, "i1", "", None, digest);
            assert_eq!(step, RegistrationStep::Wait(LOGGED_OFF.into()), "{phase:?}");
            assert_eq!(
                registration_step(Some(&previous), true, "i2", "", None, digest),
                RegistrationStep::Wait(LOGGED_OFF.into()),
                "a certificate or PIN rotated since is no request for a code: {phase:?}"
            );
            assert_eq!(
                registration_step(Some(&previous), true, "i3", "after-log-off", None, digest),
                RegistrationStep::RequestCode,
                "the annotation changed: {phase:?}"
            );
            // A record that does not say which annotation it was made under
            // takes the one there now: only a later change asks for a code.
            let unsaid = RegistrationStatus { request_annotation: None, ..previous.clone() };
            assert_eq!(
                registration_step(Some(&unsaid), true, "i1", "set-long-ago", None, digest),
                RegistrationStep::Wait(LOGGED_OFF.into()),
                "{phase:?}"
            );
        }
    }

    #[test]
    fn a_code_is_tried_once() {
        let requested = status(RegistrationPhase::CodeRequested, "i1", None);
        assert_eq!(
            registration_step(Some(&requested), true, "i1", "", Some("123456"), digest),
            RegistrationStep::Verify("123456".into())
        );
        let refused = status(RegistrationPhase::CodeRefused, "i1", Some("123456"));
        assert!(matches!(
            registration_step(Some(&refused), true, "i1", "", Some("123456"), digest),
            RegistrationStep::Wait(_)
        ));
        assert_eq!(
            registration_step(Some(&refused), true, "i1", "", Some("654321"), digest),
            RegistrationStep::Verify("654321".into())
        );
    }

    #[test]
    fn a_code_left_from_an_earlier_request_is_never_sent() {
        // A person asked for a new code (the annotation changed the inputs);
        // the Secret still holds the one sent for the earlier request.
        let s = after_request("i2", Ok(false), Some(digest("123456")), Timestamp::UNIX_EPOCH);
        let wait = registration_step(Some(&s), true, "i2", "", Some("123456"), digest);
        assert!(matches!(&wait, RegistrationStep::Wait(m) if m.contains("from before")), "{wait:?}");
        assert_eq!(
            registration_step(Some(&s), true, "i2", "", Some("777777"), digest),
            RegistrationStep::Verify("777777".into()),
            "the new code, once it is in the Secret"
        );
        let first = after_request("i1", Ok(false), None, Timestamp::UNIX_EPOCH);
        assert_eq!(
            registration_step(Some(&first), true, "i1", "", Some("123456"), digest),
            RegistrationStep::Verify("123456".into()),
            "no code in the Secret at the request: the first one put in is sent"
        );
    }

    #[test]
    fn a_backup_of_another_number_is_not_restored() {
        assert_eq!(backup_of_another_number("+15550001111", None), None, "no record: not judged");
        assert_eq!(backup_of_another_number("+15550001111", Some("15550001111")), None, "a label's digits");
        assert_eq!(backup_of_another_number("+15550001111", Some("+15550001111")), None, "object metadata");
        assert_eq!(backup_of_another_number("+15550001111", Some("")), None);
        let refused = backup_of_another_number("+15550002222", Some("+15550001111")).expect("another number");
        assert!(refused.contains("+15550001111") && refused.contains("second instance"), "{refused}");
    }

    #[test]
    fn request_outcomes() {
        let now = Timestamp::UNIX_EPOCH;
        assert_eq!(after_request("i", Ok(true), None, now).phase, RegistrationPhase::Registered);
        let s = after_request("i", Ok(false), None, now);
        assert_eq!((s.phase, s.code_requested_at.is_some()), (RegistrationPhase::CodeRequested, true));
        let s = after_request("i", Err("1009 Certificate expired".into()), None, now);
        assert_eq!(s.phase, RegistrationPhase::RequestRefused);
        assert!(s.message.contains("Certificate expired"));
    }

    #[test]
    fn settings_use_the_clients_names_and_drift_is_by_value() {
        let spec = SettingsSpec {
            webhook_url: Some("https://hooks.example.com/wa".into()),
            callback_backoff_delay_ms: Some(3000),
            media_auto_download: Some(vec!["image".into(), "audio".into()]),
            ..Default::default()
        };
        let desired = desired_settings(&spec);
        assert_eq!(desired["webhooks"]["url"], "https://hooks.example.com/wa");
        assert_eq!(desired["media"]["auto_download"], json!(["image", "audio"]));
        assert!(desired.get("sent_status").is_none(), "only what the spec sets");
        let actual = json!({"webhooks": {"url": "https://hooks.example.com/wa", "max_concurrent_requests": 6},
            "callback_backoff_delay_ms": "3000", "media": {"auto_download": ["audio", "image"]}, "sent_status": true});
        assert!(drift(&desired, &actual).is_empty(), "{:?}", drift(&desired, &actual));
        let by_hand = json!({"webhooks": {"url": "https://elsewhere"}, "callback_backoff_delay_ms": 5000});
        assert_eq!(drift(&desired, &by_hand), ["callback_backoff_delay_ms", "media.auto_download", "webhooks.url"]);
    }

    #[test]
    fn backups_follow_the_schedule_and_the_oldest_go() {
        let since: Timestamp = "2026-01-01T03:30:00Z".parse().unwrap();
        assert_eq!(next_backup("0 3 * * *", since).unwrap(), "2026-01-02T03:00:00Z".parse::<Timestamp>().unwrap());
        assert!(next_backup("not a schedule", since).unwrap_err().contains("spec.backup.schedule"));
        let names = vec!["b-0003".to_string(), "b-0001".into(), "b-0002".into()];
        assert_eq!(expired_backups(names.clone(), 2), ["b-0001"]);
        assert!(expired_backups(names, 5).is_empty());
    }

    #[test]
    fn schedules_have_five_fields_and_the_next_time_is_strictly_later() {
        let at = |s: &str| s.parse::<Timestamp>().unwrap();
        let since = at("2026-01-01T03:00:00.250Z");
        assert_eq!(next_backup("0 3 * * *", since).unwrap(), at("2026-01-02T03:00:00Z"));
        assert_eq!(next_backup("*/15 * * * *", since).unwrap(), at("2026-01-01T03:15:00Z"));
        assert_eq!(next_backup("5/15 * * * *", since).unwrap(), at("2026-01-01T03:05:00Z"));
        assert_eq!(next_backup("@hourly", since).unwrap(), at("2026-01-01T04:00:00Z"));
        assert_eq!(next_backup("0 0 * * MON", since).unwrap(), at("2026-01-05T00:00:00Z"));
        assert_eq!(next_backup("30 ? ? * ?", since).unwrap(), at("2026-01-01T03:30:00Z"));
        for no in ["0 0 3 * * *", "0 0 3 * * * 2026", "0 3 * *", ""] {
            let e = next_backup(no, since).unwrap_err();
            assert!(e.starts_with("spec.backup.schedule: "), "{no:?}: {e}");
        }
    }

    #[test]
    fn a_failed_backup_is_tried_again_once_what_it_was_made_with_changes() {
        let at = |s: &str| s.parse::<Timestamp>().unwrap();
        let last = at("2026-01-01T12:00:00Z");
        let (next, before, after) =
            (at("2026-01-02T03:00:00Z"), at("2026-01-01T12:00:20Z"), at("2026-01-02T03:00:01Z"));
        let failed = Some(FailedBackups { made_with: "a", in_a_row: 1 });
        assert!(!backup_due(next, last, before, None, "a"), "not yet scheduled");
        assert!(backup_due(next, last, after, None, "a"), "scheduled");
        assert!(!backup_due(next, last, before, failed, "a"), "failed, and nothing changed since");
        assert!(backup_due(next, last, before, failed, "b"), "failed, and the Secrets or the spec changed");
        assert!(backup_due(next, last, after, failed, "a"), "failed, and scheduled again");
        let soon = at("2026-01-01T12:00:14Z");
        assert!(!backup_due(next, last, soon, failed, "b"), "a change right after the attempt waits");
        assert_eq!(backup_retry_at(last), at("2026-01-01T12:00:15Z"));
    }

    #[test]
    fn failed_backups_are_tried_again_less_and_less_often() {
        let at = |s: &str| s.parse::<Timestamp>().unwrap();
        let last = at("2026-01-01T12:00:00Z");
        let failed = |in_a_row| Some(FailedBackups { made_with: "a", in_a_row });
        let daily = |f| next_backup_attempt("0 3 * * *", BackupsSince::Attempt(last), f).unwrap();
        assert_eq!(daily(None), at("2026-01-02T03:00:00Z"), "a success waits for the schedule");
        assert_eq!(daily(failed(1)), at("2026-01-01T12:00:30Z"));
        assert_eq!(daily(failed(2)), at("2026-01-01T12:01:00Z"));
        assert_eq!(daily(failed(3)), at("2026-01-01T12:02:00Z"));
        assert_eq!(daily(failed(8)), at("2026-01-01T13:00:00Z"), "an hour at most");
        assert_eq!(daily(failed(u32::MAX)), at("2026-01-01T13:00:00Z"));
        // The schedule's time comes first when it is sooner.
        let hourly = next_backup_attempt("5 * * * *", BackupsSince::Attempt(last), failed(5)).unwrap();
        assert_eq!(hourly, at("2026-01-01T12:05:00Z"));
        assert!(backup_due(daily(failed(2)), last, at("2026-01-01T12:01:00Z"), failed(2), "a"), "the backoff ended");
        assert!(!backup_due(daily(failed(2)), last, at("2026-01-01T12:00:59Z"), failed(2), "a"), "not yet");
        assert!(next_backup_attempt("no schedule", BackupsSince::Attempt(last), failed(1)).is_err());
    }

    #[test]
    fn a_backup_just_before_a_scheduled_time_stands_for_it() {
        let at = |s: &str| s.parse::<Timestamp>().unwrap();
        let hourly = |since| next_backup_attempt("0 * * * *", since, None).unwrap();
        // A retry that succeeded 10 s before 13:00: the next is at 14:00.
        assert_eq!(hourly(BackupsSince::Attempt(at("2026-01-01T12:59:50Z"))), at("2026-01-01T14:00:00Z"));
        // Made more than the slack before it, or on time: the schedule as it is.
        assert_eq!(hourly(BackupsSince::Attempt(at("2026-01-01T12:59:20Z"))), at("2026-01-01T13:00:00Z"));
        assert_eq!(hourly(BackupsSince::Attempt(at("2026-01-01T13:00:00Z"))), at("2026-01-01T14:00:00Z"));
        // No backup yet: the first scheduled time, however close.
        assert_eq!(hourly(BackupsSince::Created(at("2026-01-01T12:59:50Z"))), at("2026-01-01T13:00:00Z"));
        // A failed attempt just before stands for nothing: the scheduled
        // time, which comes before its backoff's end.
        let failed = Some(FailedBackups { made_with: "a", in_a_row: 1 });
        let retried = next_backup_attempt("0 * * * *", BackupsSince::Attempt(at("2026-01-01T12:59:50Z")), failed);
        assert_eq!(retried.unwrap(), at("2026-01-01T13:00:00Z"));
        // Every minute, the shortest schedule: never skipped when on time.
        let minutely = next_backup_attempt("* * * * *", BackupsSince::Attempt(at("2026-01-01T12:00:00Z")), None);
        assert_eq!(minutely.unwrap(), at("2026-01-01T12:01:00Z"));
    }
}
