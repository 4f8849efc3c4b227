//! Status: conditions and tier readiness, computed purely from what the
//! reconcile found and did. Kubernetes conventions: every condition carries the
//! generation it describes, and its transition time changes only when its
//! status does.

use k8s_openapi::api::apps::v1::{Deployment, StatefulSet};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};

use super::validate::Problem;
use crate::api::{TierStatus, WhatsAppNumber, WhatsAppNumberStatus};

pub const READY: &str = "Ready";
pub const PROGRESSING: &str = "Progressing";
pub const DEGRADED: &str = "Degraded";

/// What a reconcile ended with, as far as status is concerned.
#[derive(Clone, Debug)]
pub enum Outcome {
    /// Validation stopped the reconcile before anything was applied.
    Blocked(Problem),
    /// The children were applied; these are their observed states.
    Applied(Tiers),
}

/// The three workload tiers as their controllers report them.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Tiers {
    pub masters: TierStatus,
    pub coreapps: TierStatus,
    pub webapps: TierStatus,
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
        self.named()
            .iter()
            .map(|(n, t)| format!("{n} {}/{} ready, {} updated", t.ready, t.desired, t.updated))
            .collect::<Vec<_>>()
            .join("; ")
    }

    pub fn ready_pods(&self) -> String {
        let (ready, desired) =
            self.named().iter().fold((0, 0), |(r, d), (_, t)| (r + t.ready.min(t.desired), d + t.desired));
        format!("{ready}/{desired}")
    }
}

/// Tier readiness from a StatefulSet's own status.
pub fn stateful_set_tier(sts: &StatefulSet) -> TierStatus {
    let status = sts.status.clone().unwrap_or_default();
    TierStatus {
        desired: sts.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1),
        ready: status.ready_replicas.unwrap_or(0),
        updated: status.updated_replicas.unwrap_or(0),
        observed: status.observed_generation.is_some() && status.observed_generation == sts.metadata.generation,
    }
}

/// Tier readiness from a Deployment's own status.
pub fn deployment_tier(deploy: &Deployment) -> TierStatus {
    let status = deploy.status.clone().unwrap_or_default();
    let desired = deploy.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1);
    // During a surge the total exceeds the desired count; old pods are not "updated".
    TierStatus {
        desired,
        ready: status.ready_replicas.unwrap_or(0).min(status.updated_replicas.unwrap_or(0).max(0)).min(desired),
        updated: status.updated_replicas.unwrap_or(0).min(desired),
        observed: status.observed_generation.is_some()
            && status.observed_generation == deploy.metadata.generation
            && status.replicas.unwrap_or(0) == desired,
    }
}

/// The condition set for an outcome: (type, status, reason, message).
fn conditions_for(outcome: &Outcome) -> [(&'static str, bool, String, String); 3] {
    match outcome {
        Outcome::Blocked(problem) => [
            (READY, false, problem.reason.into(), problem.message.clone()),
            (PROGRESSING, false, problem.reason.into(), "the reconcile is held until the problem is fixed".into()),
            (DEGRADED, true, problem.reason.into(), problem.message.clone()),
        ],
        Outcome::Applied(tiers) => {
            let rolling = tiers.rolling_out();
            let summary = tiers.summary();
            if tiers.all_ready() {
                [
                    (READY, true, "Ready".into(), format!("all tiers ready: {summary}")),
                    (PROGRESSING, false, "Reconciled".into(), "the spec is fully rolled out".into()),
                    (DEGRADED, false, "AsExpected".into(), "no problem found".into()),
                ]
            } else if !rolling.is_empty() {
                let message = format!("rolling out {}: {summary}", rolling.join(", "));
                [
                    (READY, false, "RollingOut".into(), message.clone()),
                    (PROGRESSING, true, "RollingOut".into(), message),
                    (DEGRADED, false, "AsExpected".into(), "no problem found".into()),
                ]
            } else {
                let message = format!("waiting for pods: {summary}");
                [
                    (READY, false, "PodsNotReady".into(), message.clone()),
                    (PROGRESSING, true, "WaitingForPods".into(), message),
                    (DEGRADED, false, "AsExpected".into(), "no problem found".into()),
                ]
            }
        }
    }
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
    status.conditions = conditions_for(outcome)
        .into_iter()
        .map(|(type_, ok, reason, message)| {
            condition(
                previous.map(|p| p.conditions.as_slice()).unwrap_or_default(),
                type_,
                ok,
                reason,
                message,
                generation,
                now,
            )
        })
        .collect();
    if let Outcome::Applied(tiers) = outcome {
        status.masters = Some(tiers.masters.clone());
        status.coreapps = Some(tiers.coreapps.clone());
        status.webapps = Some(tiers.webapps.clone());
        status.ready_pods = Some(tiers.ready_pods());
        status.media_claim = Some(crate::resources::media_claim_name(wan));
        status.webapp_endpoint =
            Some(format!("https://{}:{}", crate::resources::webapp::service_host(wan), crate::resources::WEBAPP_PORT));
        if tiers.all_ready() {
            status.current_version = Some(wan.spec.version.clone());
        }
    }
    status
}

/// A condition that keeps its previous transition time unless its status flips.
pub fn condition(
    previous: &[Condition],
    type_: &str,
    ok: bool,
    reason: String,
    message: String,
    generation: Option<i64>,
    now: &Time,
) -> Condition {
    let status = if ok { "True" } else { "False" };
    let last_transition_time = previous
        .iter()
        .find(|c| c.type_ == type_ && c.status == status)
        .map(|c| c.last_transition_time.clone())
        .unwrap_or_else(|| now.clone());
    Condition {
        type_: type_.into(),
        status: status.into(),
        reason,
        message,
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
    use crate::resources::tests::sample;

    fn ready_tier(n: i32) -> TierStatus {
        TierStatus { desired: n, ready: n, updated: n, observed: true }
    }

    fn t(secs: i64) -> Time {
        Time(k8s_openapi::jiff::Timestamp::from_second(secs).unwrap())
    }

    fn all_ready() -> Outcome {
        Outcome::Applied(Tiers { masters: ready_tier(2), coreapps: ready_tier(2), webapps: ready_tier(2) })
    }

    fn cond<'a>(s: &'a WhatsAppNumberStatus, type_: &str) -> &'a Condition {
        find(Some(s), type_).unwrap()
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
        assert_eq!(s.current_version.as_deref(), Some("2.53.2"));
    }

    #[test]
    fn rolling_tier_is_progressing_not_ready() {
        let wan = sample();
        let mut tiers = Tiers { masters: ready_tier(2), coreapps: ready_tier(2), webapps: ready_tier(2) };
        tiers.webapps = TierStatus { desired: 3, ready: 2, updated: 2, observed: true };
        let s = compute(&wan, &Outcome::Applied(tiers.clone()), None, &t(100));
        assert_eq!((cond(&s, READY).status.as_str(), cond(&s, READY).reason.as_str()), ("False", "RollingOut"));
        assert_eq!(cond(&s, PROGRESSING).status, "True");
        assert!(cond(&s, PROGRESSING).message.contains("webapps"));
        assert!(s.current_version.is_none());

        // A workload controller that has not seen the newest spec yet is rolling out too,
        // even if its old counts look complete: never Ready for an unobserved generation.
        tiers.webapps = TierStatus { observed: false, ..ready_tier(2) };
        let s = compute(&wan, &Outcome::Applied(tiers), None, &t(100));
        assert_eq!(cond(&s, READY).status, "False");
    }

    #[test]
    fn pods_not_ready_after_rollout_waits() {
        let wan = sample();
        let tiers = Tiers {
            masters: ready_tier(2),
            coreapps: TierStatus { desired: 2, ready: 1, updated: 2, observed: true },
            webapps: ready_tier(2),
        };
        let s = compute(&wan, &Outcome::Applied(tiers), None, &t(1));
        assert_eq!(cond(&s, READY).reason, "PodsNotReady");
        assert_eq!(cond(&s, PROGRESSING).reason, "WaitingForPods");
        assert_eq!(s.ready_pods.as_deref(), Some("5/6"));
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
        let rolling = Outcome::Applied(Tiers {
            masters: ready_tier(2),
            coreapps: TierStatus { observed: false, ..ready_tier(2) },
            webapps: ready_tier(2),
        });
        let next = compute(&wan, &rolling, Some(&first), &t(300));
        assert_eq!(cond(&next, READY).last_transition_time, t(300));
        assert_eq!(cond(&next, DEGRADED).last_transition_time, t(100), "Degraded stayed False");
        assert_eq!(next.observed_generation, Some(4));
        assert!(next.conditions.iter().all(|c| c.observed_generation == Some(4)));
    }

    #[test]
    fn deployment_surge_does_not_count_old_pods() {
        use k8s_openapi::api::apps::v1::{DeploymentSpec, DeploymentStatus};
        let mut d = Deployment::default();
        d.metadata.generation = Some(2);
        d.spec = Some(DeploymentSpec { replicas: Some(2), ..Default::default() });
        d.status = Some(DeploymentStatus {
            observed_generation: Some(2),
            replicas: Some(3),
            ready_replicas: Some(3),
            updated_replicas: Some(1),
            ..Default::default()
        });
        let tier = deployment_tier(&d);
        assert!(!tier.is_ready());
        assert_eq!(tier.updated, 1);
        assert!(tier.ready <= 1);
    }
}
