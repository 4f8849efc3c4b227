//! PodDisruptionBudgets: voluntary disruptions (node drains) take at most what
//! a tier can lose without losing service.

use k8s_openapi::api::policy::v1::{PodDisruptionBudget, PodDisruptionBudgetSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use super::names::{Names, Tier, component_labels, selector_labels};
use super::workloads::replicas;
use super::{owned_meta, with_applied_hash};
use crate::api::WhatsAppNumber;

/// How many pods of a tier a drain may take at once.
///
/// Masters and webapps: one. Coreapps: as many as there are standbys, since each
/// standby covers one lost coreapp (at least one, so drains are never blocked
/// outright; with no standby that costs a shard for the failover interval).
pub fn max_unavailable(wan: &WhatsAppNumber, tier: Tier) -> i32 {
    match tier {
        Tier::Coreapp => wan.spec.multiconnect.standby_coreapps.max(1),
        Tier::Master | Tier::Webapp => 1,
    }
}

/// A budget for each tier with more than one pod; a single pod has nothing to keep.
pub fn budgets(wan: &WhatsAppNumber) -> Vec<PodDisruptionBudget> {
    Tier::ALL.into_iter().filter(|tier| replicas(wan, *tier) > 1).map(|tier| budget(wan, tier)).collect()
}

fn budget(wan: &WhatsAppNumber, tier: Tier) -> PodDisruptionBudget {
    with_applied_hash(PodDisruptionBudget {
        metadata: owned_meta(wan, Names::new(wan).tier(tier), component_labels(wan, tier.as_str())),
        spec: Some(PodDisruptionBudgetSpec {
            max_unavailable: Some(IntOrString::Int(max_unavailable(wan, tier))),
            selector: Some(LabelSelector { match_labels: Some(selector_labels(wan, tier)), ..Default::default() }),
            ..Default::default()
        }),
        ..Default::default()
    })
}
