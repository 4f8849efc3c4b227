//! Shard changes go through the client's account API, not the StatefulSet:
//! scaling coreapps alone adds no capacity. The order keeps every shard served:
//! when growing, more coreapps first and the API call once enough are ready;
//! when shrinking, the API call first and fewer coreapps only once the client
//! reports the new count.
//!
//! The call is dangerous (Meta's reference): more than 7 days after the number
//! was registered it disconnects the number, a wrong certificate logs the
//! client off, an expired one gets the account banned. So the operator never
//! makes it on its own initiative for a number that old (or of unknown age)
//! without `spec.multiconnect.confirmShardChange`, and never repeats a refused
//! request for the same generation of the spec. Pure.

use crate::api::{ShardPhase, ShardRequestOutcome, ShardRequestStatus, ShardingStatus};

/// How long after registration a shard change is still safe (Meta's reference).
pub const SAFE_AFTER_REGISTRATION: jiff::SignedDuration = jiff::SignedDuration::from_hours(7 * 24);

/// The annotation a person changes to have a refused or unanswered shard
/// change sent again with the same inputs.
pub const RETRY_SHARD_CHANGE_ANNOTATION: &str = "whatsapp.operators.dev/retry-shard-change";

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Step {
    /// The client's shard count is not known (health polling off or failing).
    Unknown,
    InSync,
    /// Growing: wait until `needed` coreapps are ready before the API call.
    WaitForCoreapps {
        ready: i32,
        needed: i32,
    },
    /// The number is older than 7 days (or of unknown age) and the spec does
    /// not confirm this change, or its confirmation was spent (`spent_at`) by
    /// a change to this count the client accepted then.
    NeedsConfirmation {
        registered: Registered,
        spent_at: Option<jiff::Timestamp>,
    },
    /// The client refused this very request, or did not answer it once it
    /// may have arrived (`unanswered`): it is not sent again while its inputs
    /// stay the same (see [`RETRY_SHARD_CHANGE_ANNOTATION`]).
    Refused {
        message: String,
        unanswered: bool,
    },
    /// Call `POST /v1/account/shards` with this count now.
    SetShards(i32),
}

/// What the operator knows of the number's registration.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Registered {
    /// The operator saw it registered this long ago.
    Since(jiff::SignedDuration),
    /// Registered without the operator seeing the client take its code:
    /// before it watched, by hand, or brought back by a restore.
    Unknown,
}

impl Registered {
    fn is_recent(self) -> bool {
        matches!(self, Registered::Since(age) if age < SAFE_AFTER_REGISTRATION)
    }
}

/// Everything a shard decision depends on.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Facts<'a> {
    pub desired: i32,
    pub standby: i32,
    /// What the client reports now (`None`: not probed or not answering).
    pub current: Option<i32>,
    /// What the client reported last, from status: holds coreapps while the
    /// count is not observable.
    pub last_known: Option<i32>,
    pub coreapps_ready: i32,
    pub registered: Registered,
    /// `spec.multiconnect.confirmShardChange`.
    pub confirmed: Option<i32>,
    pub last_request: Option<&'a ShardRequestStatus>,
    pub generation: i64,
    /// Digest of the request that would be sent now (see
    /// [`ShardRequestStatus::request_digest`]); `None` when it cannot be made.
    pub request_digest: Option<&'a str>,
    /// The [`RETRY_SHARD_CHANGE_ANNOTATION`] now (`None`: not set).
    pub retry_annotation: Option<&'a str>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Plan {
    /// Replicas of the coreapp StatefulSet: enough for whichever of the desired
    /// and the client's count is larger, plus the standbys. Coreapps go only
    /// once the client reports fewer shards.
    pub coreapp_replicas: i32,
    pub step: Step,
}

/// Whether `r` was the request that would be sent now: the same inputs (a
/// refusal for a wrong or expired certificate stands until the certificate
/// changes, whatever else in the spec does), or, for a record without a
/// digest, the same generation.
fn same_request(r: &ShardRequestStatus, f: &Facts) -> bool {
    match (r.request_digest.as_deref(), f.request_digest) {
        (Some(sent), Some(now)) => sent == now,
        _ => r.generation == f.generation,
    }
}

/// When the confirmation in the spec was spent: a change to the desired
/// count that the client accepted, or that got no answer and may have been
/// carried out, sent under the same retry annotation. A confirmation is a
/// person's informed request for one change; left in the spec, it must not
/// let the operator change the count again on its own when the client later
/// reports another (a restored database, say). A record from before the
/// annotation was recorded goes by its request's digest, which holds it.
fn confirmation_spent(f: &Facts) -> Option<jiff::Timestamp> {
    let r = f.last_request?;
    let carried_out = matches!(r.outcome, ShardRequestOutcome::Accepted | ShardRequestOutcome::Unanswered);
    let same_request = match r.retry_annotation.as_deref() {
        Some(sent) => sent == f.retry_annotation.unwrap_or_default(),
        None => same_request(r, f),
    };
    (carried_out && r.shards == f.desired && f.confirmed == Some(f.desired) && same_request).then_some(r.at.0)
}

pub fn plan(f: &Facts) -> Plan {
    let running = f.current.or(f.last_known).unwrap_or(f.desired);
    let coreapp_replicas = f.desired.max(running) + f.standby;
    let spent_at = confirmation_spent(f);
    let step = match f.current {
        None => Step::Unknown,
        Some(c) if c == f.desired => Step::InSync,
        Some(_) if !f.registered.is_recent() && (f.confirmed != Some(f.desired) || spent_at.is_some()) => {
            Step::NeedsConfirmation { registered: f.registered, spent_at }
        }
        Some(_)
            if f.last_request.is_some_and(|r| {
                matches!(r.outcome, ShardRequestOutcome::Refused | ShardRequestOutcome::Unanswered)
                    && r.shards == f.desired
                    && same_request(r, f)
            }) =>
        {
            Step::Refused {
                message: f.last_request.map(|r| r.message.clone()).unwrap_or_default(),
                unanswered: f.last_request.is_some_and(|r| r.outcome == ShardRequestOutcome::Unanswered),
            }
        }
        Some(c) if f.desired > c && f.coreapps_ready < f.desired => {
            Step::WaitForCoreapps { ready: f.coreapps_ready, needed: f.desired }
        }
        Some(_) => Step::SetShards(f.desired),
    };
    Plan { coreapp_replicas, step }
}

/// The status block for a plan; `blocked` names what stops the API call.
pub fn status(
    desired: i32,
    current: Option<i32>,
    step: &Step,
    blocked: Option<&str>,
    last_request: Option<ShardRequestStatus>,
) -> ShardingStatus {
    let (phase, message) = match (step, blocked) {
        (Step::Unknown, _) => (ShardPhase::Unknown, "the client's shard count is not known".to_string()),
        (Step::InSync, _) => (ShardPhase::InSync, format!("the client runs {desired} shards")),
        (Step::SetShards(_), Some(why)) => (ShardPhase::Blocked, why.to_string()),
        (Step::WaitForCoreapps { ready, needed }, _) => (
            ShardPhase::ScalingCoreapps,
            format!("growing to {desired} shards: {ready} of {needed} coreapps ready before the shard change"),
        ),
        (Step::NeedsConfirmation { registered, spent_at }, _) => {
            let age = match registered {
                Registered::Since(age) => format!("was registered {} days ago", age.as_hours() / 24),
                Registered::Unknown => {
                    "has a registration of unknown age (made before the operator watched it, by hand, or brought back by a restore)".to_string()
                }
            };
            let current = current.unwrap_or_default();
            let accept = match spent_at {
                None => format!("To accept that, set spec.multiconnect.confirmShardChange to {desired}"),
                Some(at) => format!(
                    "spec.multiconnect.confirmShardChange was spent on the change to {desired} sent at {at} (the client accepted it, or did not answer and may have applied it), and a confirmation covers one change. To accept another, annotate the object with {RETRY_SHARD_CHANGE_ANNOTATION}=<a new value>"
                ),
            };
            (
                ShardPhase::ConfirmationRequired,
                format!(
                    "changing from {current} to {desired} shards is not done on the operator's own initiative: the number {age}, and more than 7 days after registration the set-shards call disconnects the number (Meta's reference). {accept}; or set spec.multiconnect.shards to {current}"
                ),
            )
        }
        (Step::Refused { message, unanswered: false }, _) => (
            ShardPhase::Blocked,
            format!(
                "the client refused the change to {desired} shards ({message}); it is not sent again until the count, the certificate or the PIN changes (check the certificate in the registration Secret), or the object is annotated with {RETRY_SHARD_CHANGE_ANNOTATION}"
            ),
        ),
        (Step::Refused { message, unanswered: true }, _) => (
            ShardPhase::Blocked,
            format!(
                "the change to {desired} shards got no answer ({message}); the client may have applied it, so it is not sent again: the next probe shows the client's count; to send it again, annotate the object with {RETRY_SHARD_CHANGE_ANNOTATION}"
            ),
        ),
        (Step::SetShards(n), None) => (
            ShardPhase::SettingShards,
            format!("setting {n} shards through POST /v1/account/shards (was {})", current.unwrap_or(0)),
        ),
    };
    ShardingStatus { desired, current, phase, message, last_request }
}

/// Whether a shard count the client reported can ground a change: the
/// number is registered (the client refuses a shard change before), and a
/// backup asked for (`restore_pending`) is in, restored before the probe
/// that read the count (`restored_at` against `probed_at`): the backup
/// brings its own count, and the one read before it is the new setup's
/// default.
pub fn count_usable(
    gateway: &str,
    restore_pending: bool,
    restored_at: Option<jiff::Timestamp>,
    probed_at: jiff::Timestamp,
) -> bool {
    gateway != "unregistered" && !restore_pending && restored_at.is_none_or(|at| at < probed_at)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_count_read_before_registration_or_restore_grounds_nothing() {
        let t = |s: i64| jiff::Timestamp::from_second(s).unwrap();
        assert!(count_usable("connected", false, None, t(100)));
        assert!(!count_usable("unregistered", false, None, t(100)), "the client refuses it before registration");
        assert!(!count_usable("connected", true, None, t(100)), "the backup is not in yet");
        assert!(!count_usable("connected", false, Some(t(100)), t(90)), "read before the restore");
        assert!(count_usable("connected", false, Some(t(80)), t(90)));
    }
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

    const DAY: jiff::SignedDuration = jiff::SignedDuration::from_hours(24);

    fn facts(desired: i32, current: Option<i32>, ready: i32) -> Facts<'static> {
        Facts {
            desired,
            standby: 1,
            current,
            last_known: None,
            coreapps_ready: ready,
            registered: Registered::Since(DAY),
            confirmed: None,
            last_request: None,
            generation: 4,
            request_digest: None,
            retry_annotation: None,
        }
    }

    fn refused(shards: i32, generation: i64) -> ShardRequestStatus {
        ShardRequestStatus {
            shards,
            generation,
            at: Time(jiff::Timestamp::UNIX_EPOCH),
            outcome: ShardRequestOutcome::Refused,
            message: "1009 wrong certificate".into(),
            request_digest: None,
            retry_annotation: None,
        }
    }

    #[test]
    fn unknown_count_follows_the_spec() {
        assert_eq!(plan(&facts(2, None, 0)), Plan { coreapp_replicas: 3, step: Step::Unknown });
    }

    #[test]
    fn in_sync() {
        assert_eq!(plan(&facts(4, Some(4), 5)), Plan { coreapp_replicas: 5, step: Step::InSync });
    }

    #[test]
    fn growing_scales_coreapps_first_then_calls_the_api() {
        let p = plan(&facts(2, Some(1), 1));
        assert_eq!(p.coreapp_replicas, 3, "room for 2 shards + 1 standby at once");
        assert_eq!(p.step, Step::WaitForCoreapps { ready: 1, needed: 2 });
        assert_eq!(plan(&facts(2, Some(1), 2)).step, Step::SetShards(2));
    }

    #[test]
    fn shrinking_calls_the_api_first_and_keeps_coreapps_until_done() {
        let p = plan(&facts(1, Some(2), 3));
        assert_eq!(p.coreapp_replicas, 3, "coreapps stay until the client runs fewer shards");
        assert_eq!(p.step, Step::SetShards(1));
        assert_eq!(plan(&facts(1, Some(1), 3)).coreapp_replicas, 2, "then they go");
    }

    #[test]
    fn without_a_probe_coreapps_never_shrink_below_the_last_known_count() {
        let f = Facts { last_known: Some(4), ..facts(2, None, 5) };
        let p = plan(&f);
        assert_eq!(p.coreapp_replicas, 5, "4 shards + 1 standby until the client says otherwise");
        assert_eq!(p.step, Step::Unknown);
    }

    #[test]
    fn an_old_or_unknown_registration_needs_a_confirmation_of_this_very_change() {
        for registered in [Registered::Since(DAY * 8), Registered::Unknown] {
            let f = Facts { registered, ..facts(2, Some(1), 2) };
            assert_eq!(plan(&f).step, Step::NeedsConfirmation { registered, spent_at: None });
            let wrong = Facts { confirmed: Some(4), ..f.clone() };
            assert_eq!(
                plan(&wrong).step,
                Step::NeedsConfirmation { registered, spent_at: None },
                "confirms another count"
            );
            let confirmed = Facts { confirmed: Some(2), ..f };
            assert_eq!(plan(&confirmed).step, Step::SetShards(2));
        }
        let s = status(
            2,
            Some(1),
            &Step::NeedsConfirmation { registered: Registered::Unknown, spent_at: None },
            None,
            None,
        );
        assert_eq!(s.phase, ShardPhase::ConfirmationRequired);
        assert!(s.message.contains("confirmShardChange to 2"), "{}", s.message);
        assert!(s.message.contains("disconnects"), "{}", s.message);
    }

    #[test]
    fn a_confirmation_covers_one_accepted_change() {
        let accepted = ShardRequestStatus {
            outcome: ShardRequestOutcome::Accepted,
            message: String::new(),
            at: Time(jiff::Timestamp::from_second(1_700_000_000).unwrap()),
            retry_annotation: Some(String::new()),
            ..refused(2, 4)
        };
        let old = Facts { registered: Registered::Since(DAY * 30), confirmed: Some(2), ..facts(2, Some(1), 2) };
        assert_eq!(plan(&old).step, Step::SetShards(2), "the confirmation before its change");
        let after = Facts { last_request: Some(&accepted), ..old.clone() };
        assert_eq!(plan(&Facts { current: Some(2), ..after.clone() }).step, Step::InSync);
        // Months later a restored database brings 1 shard: the spec still
        // confirms 2, but that confirmation was for the change made then.
        let spent_at = Some(accepted.at.0);
        assert_eq!(
            plan(&after).step,
            Step::NeedsConfirmation { registered: Registered::Since(DAY * 30), spent_at },
            "not changed again on the operator's own initiative"
        );
        let s = status(2, Some(1), &plan(&after).step, None, Some(accepted.clone()));
        assert_eq!(s.phase, ShardPhase::ConfirmationRequired);
        assert!(s.message.contains("was spent on the change to 2"), "{}", s.message);
        assert!(s.message.contains(RETRY_SHARD_CHANGE_ANNOTATION), "{}", s.message);
        // A new value of the annotation is a person's new request.
        let again = Facts { retry_annotation: Some("after-restore"), ..after.clone() };
        assert_eq!(plan(&again).step, Step::SetShards(2));
        let sent_with_it = ShardRequestStatus { retry_annotation: Some("after-restore".into()), ..accepted.clone() };
        let spent_again = Facts { last_request: Some(&sent_with_it), ..again.clone() };
        assert!(matches!(plan(&spent_again).step, Step::NeedsConfirmation { spent_at: Some(_), .. }));
        // A change to another count is another confirmation anyway.
        let other = Facts { desired: 4, confirmed: Some(4), ..after.clone() };
        assert_eq!(plan(&Facts { coreapps_ready: 4, ..other }).step, Step::SetShards(4));
        // A recent registration needs no confirmation: nothing to spend.
        let recent = Facts { registered: Registered::Since(DAY), ..after.clone() };
        assert_eq!(plan(&recent).step, Step::SetShards(2));
        // Without a confirmation in the spec, the message asks for one.
        let removed = Facts { confirmed: None, ..after.clone() };
        assert!(matches!(plan(&removed).step, Step::NeedsConfirmation { spent_at: None, .. }));
        // A change that got no answer may have been carried out: it spends it too.
        let unanswered = ShardRequestStatus { outcome: ShardRequestOutcome::Unanswered, ..accepted.clone() };
        let f = Facts { last_request: Some(&unanswered), request_digest: Some("renewed-certificate"), ..after.clone() };
        assert!(matches!(plan(&f).step, Step::NeedsConfirmation { spent_at: Some(_), .. }));
        let retrying = ShardRequestStatus { outcome: ShardRequestOutcome::Retrying, ..accepted.clone() };
        assert_eq!(plan(&Facts { last_request: Some(&retrying), ..after.clone() }).step, Step::SetShards(2));
        // An annotation recorded as absent ("") stands for no annotation.
        let recorded = ShardRequestStatus { retry_annotation: Some(String::new()), ..accepted.clone() };
        assert!(matches!(
            plan(&Facts { last_request: Some(&recorded), ..after.clone() }).step,
            Step::NeedsConfirmation { spent_at: Some(_), .. }
        ));
        // A record from an older operator: its digest holds the annotation.
        let legacy =
            ShardRequestStatus { request_digest: Some("d1".into()), retry_annotation: None, ..accepted.clone() };
        let same =
            Facts { last_request: Some(&legacy), request_digest: Some("d1"), retry_annotation: Some("x"), ..after };
        assert!(matches!(plan(&same).step, Step::NeedsConfirmation { spent_at: Some(_), .. }));
        assert_eq!(plan(&Facts { request_digest: Some("d2"), ..same }).step, Step::SetShards(2), "re-armed");
    }

    #[test]
    fn a_refused_request_is_not_repeated_for_the_same_generation() {
        let last = refused(2, 4);
        let f = Facts { last_request: Some(&last), ..facts(2, Some(1), 2) };
        assert!(matches!(plan(&f).step, Step::Refused { .. }));
        let next_generation = Facts { generation: 5, ..f.clone() };
        assert_eq!(plan(&next_generation).step, Step::SetShards(2), "a new spec may try again");
        let s = status(2, Some(1), &plan(&f).step, None, Some(last));
        assert_eq!(s.phase, ShardPhase::Blocked);
        assert!(s.message.contains("wrong certificate"), "{}", s.message);
    }

    #[test]
    fn a_refusal_stands_while_the_request_is_the_same_whatever_else_changes() {
        let last = ShardRequestStatus { request_digest: Some("cert-a".into()), ..refused(2, 4) };
        let f = Facts { last_request: Some(&last), request_digest: Some("cert-a"), ..facts(2, Some(1), 2) };
        assert!(matches!(plan(&f).step, Step::Refused { .. }));
        let other_change = Facts { generation: 9, ..f.clone() };
        assert!(matches!(plan(&other_change).step, Step::Refused { .. }), "another spec change re-arms nothing");
        let new_certificate = Facts { request_digest: Some("cert-b"), ..other_change.clone() };
        assert_eq!(plan(&new_certificate).step, Step::SetShards(2), "a new certificate, PIN or retry annotation");
        let cannot_be_made = Facts { request_digest: None, ..f.clone() };
        assert!(matches!(plan(&cannot_be_made).step, Step::Refused { .. }), "by generation then");
    }

    #[test]
    fn an_unanswered_request_is_not_repeated_for_the_same_generation_but_a_retry_is() {
        let unanswered = ShardRequestStatus { outcome: ShardRequestOutcome::Unanswered, ..refused(2, 4) };
        let f = Facts { last_request: Some(&unanswered), ..facts(2, Some(1), 2) };
        assert!(matches!(plan(&f).step, Step::Refused { unanswered: true, .. }), "it may have been carried out");
        let s = status(2, Some(1), &plan(&f).step, None, Some(unanswered.clone()));
        assert_eq!(s.phase, ShardPhase::Blocked);
        assert!(s.message.contains("no answer") && s.message.contains(RETRY_SHARD_CHANGE_ANNOTATION), "{}", s.message);
        // The next probe shows whether it was.
        assert_eq!(plan(&Facts { current: Some(2), ..f.clone() }).step, Step::InSync);
        let retrying = ShardRequestStatus { outcome: ShardRequestOutcome::Retrying, ..refused(2, 4) };
        let f = Facts { last_request: Some(&retrying), ..facts(2, Some(1), 2) };
        assert_eq!(plan(&f).step, Step::SetShards(2), "the client said to retry, or it never got the request");
    }

    #[test]
    fn status_says_what_happens_or_what_blocks() {
        let s = status(2, Some(1), &Step::SetShards(2), Some("set spec.registration"), None);
        assert_eq!((s.phase, s.message.as_str()), (ShardPhase::Blocked, "set spec.registration"));
        let s = status(2, Some(1), &Step::WaitForCoreapps { ready: 1, needed: 2 }, None, None);
        assert_eq!(s.phase, ShardPhase::ScalingCoreapps);
        assert!(s.message.contains("1 of 2"));
        assert_eq!(status(1, Some(1), &Step::InSync, None, None).phase, ShardPhase::InSync);
    }
}
