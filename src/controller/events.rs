//! The events a status change is worth: decided here from the status before
//! and after, without I/O, so that what people see in `kubectl describe` is
//! unit-tested; publishing them is the reconcile's last step.

use kube::runtime::events::EventType;

use super::status;
use crate::api::WhatsAppNumberStatus;
use crate::upgrade::procedure;

/// Kubernetes refuses longer event notes.
const NOTE_LIMIT: usize = 1000;

/// One event to publish.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Notice {
    pub type_: EventType,
    pub reason: String,
    pub note: String,
}

impl Notice {
    fn new(type_: EventType, reason: &str, note: &str) -> Self {
        Self { type_, reason: reason.into(), note: crate::text::prefix(note, NOTE_LIMIT).to_string() }
    }
}

/// One event per change of a condition that matters to a person (never per
/// reconcile), and one per upgrade start, rollback and completion.
pub fn transitions(before: Option<&WhatsAppNumberStatus>, after: &WhatsAppNumberStatus) -> Vec<Notice> {
    let mut out = Vec::new();
    // Ready=False is a warning only while something needs a person; during a
    // rollout, a shard change or an upgrade it is progress.
    let trouble = [status::DEGRADED, status::STALLED, status::CONFLICT]
        .iter()
        .any(|t| status::find(Some(after), t).is_some_and(|c| c.status == "True"));
    for type_ in [
        status::READY,
        status::DEGRADED,
        status::CONFLICT,
        status::BUILD_EXPIRING,
        status::BUILD_EXPIRED,
        status::STALLED,
    ] {
        let (Some(new), old) = (status::find(Some(after), type_), status::find(before, type_)) else { continue };
        if old.is_some_and(|o| o.status == new.status && o.reason == new.reason) {
            continue;
        }
        // A problem condition that starts out, or stays, False is not news.
        if type_ != status::READY && new.status == "False" && old.is_none_or(|o| o.status == "False") {
            continue;
        }
        // A stall for the very reason Ready gives is the same news once.
        if type_ == status::STALLED && status::find(Some(after), status::READY).is_some_and(|r| r.reason == new.reason)
        {
            continue;
        }
        let warning = if type_ == status::READY { new.status == "False" && trouble } else { new.status == "True" };
        let reason = if type_ == status::READY && new.status == "True" { "Ready" } else { new.reason.as_str() };
        let notice = Notice::new(if warning { EventType::Warning } else { EventType::Normal }, reason, &new.message);
        // Two conditions with one cause (an unknown release leaves both build
        // conditions Unknown) are one piece of news.
        if !out.contains(&notice) {
            out.push(notice);
        }
    }

    match (before.and_then(|s| s.upgrade.as_ref()), after.upgrade.as_ref()) {
        (prev, Some(u)) if !procedure::is_done(u) && prev.is_none_or(|p| p.to != u.to || procedure::is_done(p)) => {
            out.push(Notice::new(
                EventType::Normal,
                "UpgradeStarted",
                &format!("upgrading from {} to {}", u.from, u.to),
            ));
        }
        (Some(prev), Some(u)) if u.step == procedure::Step::RolledBack && !procedure::is_done(prev) => {
            out.push(Notice::new(EventType::Warning, "UpgradeRolledBack", &u.message));
        }
        (Some(prev), Some(u)) if procedure::is_done(u) && !procedure::is_done(prev) => {
            let took = u.step_started_at.0.duration_since(u.started_at.0).as_secs();
            let note = format!("upgraded from {} to {} in {took}s", u.from, u.to);
            out.push(Notice::new(EventType::Normal, "UpgradeCompleted", &note));
        }
        _ => {}
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::Condition;
    use crate::api::UpgradeStatus;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

    fn at(secs: i64) -> Time {
        Time(k8s_openapi::jiff::Timestamp::from_second(1_800_000_000 + secs).unwrap())
    }

    fn cond(type_: &str, status: &str, reason: &str, message: &str) -> Condition {
        Condition {
            type_: type_.into(),
            status: status.into(),
            reason: reason.into(),
            message: message.into(),
            observed_generation: Some(1),
            last_transition_time: at(0),
        }
    }

    fn with(conditions: Vec<Condition>) -> WhatsAppNumberStatus {
        WhatsAppNumberStatus { conditions, ..Default::default() }
    }

    fn upgrade(step: procedure::Step, started: i64, step_started: i64) -> UpgradeStatus {
        UpgradeStatus {
            from: "2.53.2".into(),
            to: "2.55.1".into(),
            step,
            started_at: at(started),
            step_started_at: at(step_started),
            message: "schema Job failed".into(),
            stalled_reason: None,
            schema_started_at: None,
        }
    }

    fn reasons(notices: &[Notice]) -> Vec<(EventType, &str)> {
        notices.iter().map(|n| (n.type_, n.reason.as_str())).collect()
    }

    #[test]
    fn becoming_ready_is_one_normal_event_and_staying_ready_is_none() {
        let progressing = with(vec![cond(status::READY, "False", "Progressing", "rolling out webapps")]);
        let ready = with(vec![cond(status::READY, "True", "AllTiersReady", "every tier is ready")]);
        let first = transitions(Some(&progressing), &ready);
        assert_eq!(reasons(&first), vec![(EventType::Normal, "Ready")]);
        assert_eq!(first[0].note, "every tier is ready");
        assert!(transitions(Some(&ready), &ready).is_empty());
    }

    #[test]
    fn not_ready_is_a_warning_only_while_something_needs_a_person() {
        let ready = with(vec![cond(status::READY, "True", "AllTiersReady", "")]);
        let rolling = with(vec![cond(status::READY, "False", "Progressing", "rolling")]);
        assert_eq!(reasons(&transitions(Some(&ready), &rolling)), vec![(EventType::Normal, "Progressing")]);

        let degraded = with(vec![
            cond(status::READY, "False", "GatewayUnhealthy", "2 of 3 coreapps connected"),
            cond(status::DEGRADED, "True", "GatewayUnhealthy", "2 of 3 coreapps connected"),
        ]);
        // Ready and Degraded say the same: one warning.
        assert_eq!(reasons(&transitions(Some(&ready), &degraded)), vec![(EventType::Warning, "GatewayUnhealthy")]);
    }

    #[test]
    fn a_problem_that_starts_or_stays_false_is_not_news_but_its_end_is() {
        let quiet = with(vec![cond(status::DEGRADED, "False", "AsExpected", "")]);
        assert!(transitions(None, &quiet).is_empty());
        assert!(transitions(Some(&quiet), &quiet).is_empty());

        let conflict = with(vec![cond(status::CONFLICT, "True", "NumberHeldElsewhere", "held by a/b")]);
        let resolved = with(vec![cond(status::CONFLICT, "False", "NumberClaimed", "")]);
        assert_eq!(reasons(&transitions(None, &conflict)), vec![(EventType::Warning, "NumberHeldElsewhere")]);
        assert_eq!(reasons(&transitions(Some(&conflict), &resolved)), vec![(EventType::Normal, "NumberClaimed")]);
    }

    #[test]
    fn a_stall_for_the_reason_ready_gives_is_told_once() {
        let stalled = with(vec![
            cond(status::READY, "False", "MissingSecret", "Secret db is missing"),
            cond(status::STALLED, "True", "MissingSecret", "Secret db is missing"),
        ]);
        assert_eq!(reasons(&transitions(None, &stalled)), vec![(EventType::Warning, "MissingSecret")]);

        let other = with(vec![
            cond(status::READY, "False", "UpgradeInProgress", ""),
            cond(status::STALLED, "True", "SchemaUpgradeFailed", "the schema Job failed"),
        ]);
        assert_eq!(
            reasons(&transitions(None, &other)),
            vec![(EventType::Warning, "UpgradeInProgress"), (EventType::Warning, "SchemaUpgradeFailed")]
        );
    }

    #[test]
    fn one_cause_behind_two_conditions_is_told_once() {
        let message = "2.53.2 is not in the release catalog, so its expiry is unknown";
        let unknown = with(vec![
            cond(status::BUILD_EXPIRING, "Unknown", "UnknownRelease", message),
            cond(status::BUILD_EXPIRED, "Unknown", "UnknownRelease", message),
        ]);
        assert_eq!(reasons(&transitions(None, &unknown)), vec![(EventType::Normal, "UnknownRelease")]);
    }

    #[test]
    fn a_new_reason_with_the_same_status_is_news() {
        let expiring = |reason: &str| with(vec![cond(status::BUILD_EXPIRING, "True", reason, "")]);
        assert_eq!(
            reasons(&transitions(Some(&expiring("ExpiresIn30Days")), &expiring("ExpiresIn7Days"))),
            vec![(EventType::Warning, "ExpiresIn7Days")]
        );
    }

    #[test]
    fn an_upgrade_is_told_when_it_starts_rolls_back_and_completes() {
        let none = with(vec![]);
        let running = WhatsAppNumberStatus {
            upgrade: Some(Box::new(upgrade(procedure::Step::StoppingNodes, 0, 0))),
            ..none.clone()
        };
        let started = transitions(Some(&none), &running);
        assert_eq!(reasons(&started), vec![(EventType::Normal, "UpgradeStarted")]);
        assert_eq!(started[0].note, "upgrading from 2.53.2 to 2.55.1");
        // Each step of the same upgrade is no news.
        let schema = WhatsAppNumberStatus {
            upgrade: Some(Box::new(upgrade(procedure::Step::UpgradingSchema, 0, 5))),
            ..none.clone()
        };
        assert!(transitions(Some(&running), &schema).is_empty());

        let rolled_back = WhatsAppNumberStatus {
            upgrade: Some(Box::new(upgrade(procedure::Step::RolledBack, 0, 9))),
            ..none.clone()
        };
        let back = transitions(Some(&schema), &rolled_back);
        assert_eq!(reasons(&back), vec![(EventType::Warning, "UpgradeRolledBack")]);
        assert_eq!(back[0].note, "schema Job failed");

        let done =
            WhatsAppNumberStatus { upgrade: Some(Box::new(upgrade(procedure::Step::Complete, 0, 95))), ..none.clone() };
        let completed = transitions(Some(&schema), &done);
        assert_eq!(reasons(&completed), vec![(EventType::Normal, "UpgradeCompleted")]);
        assert_eq!(completed[0].note, "upgraded from 2.53.2 to 2.55.1 in 95s");
        assert!(transitions(Some(&done), &done).is_empty());
    }

    #[test]
    fn notes_are_cut_to_what_kubernetes_accepts_at_a_character_boundary() {
        let long = "é".repeat(600);
        let failing = with(vec![cond(status::DEGRADED, "True", "GatewayUnhealthy", &long)]);
        let notice = &transitions(None, &failing)[0];
        assert!(notice.note.len() <= NOTE_LIMIT);
        assert_eq!(notice.note.chars().count(), 500);
    }
}
