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
            condition(previous.map(|p| p.conditions.as_slice()).unwrap_or_default(), type_, ok, reason, message, generation, now)
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
