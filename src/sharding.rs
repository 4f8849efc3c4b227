//! Shard changes go through the client's account API, not the StatefulSet:
//! scaling coreapps alone adds no capacity. The order keeps every shard served:
//! when growing, more coreapps first and the API call once enough are ready;
//! when shrinking, the API call first and fewer coreapps after. Pure.

use crate::api::ShardingStatus;

pub const IN_SYNC: &str = "InSync";
pub const SCALING_COREAPPS: &str = "ScalingCoreapps";
pub const SETTING_SHARDS: &str = "SettingShards";
pub const BLOCKED: &str = "Blocked";
pub const UNKNOWN: &str = "Unknown";

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
    /// Call `POST /v1/account/shards` with this count now.
    SetShards(i32),
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Plan {
    /// Replicas of the coreapp StatefulSet: enough for whichever of the desired
    /// and the current shard count is larger, plus the standbys.
    pub coreapp_replicas: i32,
    pub step: Step,
}

/// `current` is what the client last reported, `coreapps_ready` the coreapp
/// StatefulSet's ready pods.
pub fn plan(desired: i32, standby: i32, current: Option<i32>, coreapps_ready: i32) -> Plan {
    let coreapp_replicas = desired.max(current.unwrap_or(desired)) + standby;
    let step = match current {
        None => Step::Unknown,
        Some(c) if c == desired => Step::InSync,
        Some(c) if desired > c && coreapps_ready < desired => {
            Step::WaitForCoreapps { ready: coreapps_ready, needed: desired }
        }
        Some(_) => Step::SetShards(desired),
    };
    Plan { coreapp_replicas, step }
}

/// The status block for a plan; `blocked` names what stops the API call.
pub fn status(desired: i32, current: Option<i32>, step: &Step, blocked: Option<&str>) -> ShardingStatus {
    let (phase, message) = match (step, blocked) {
        (Step::Unknown, _) => (UNKNOWN, "the client's shard count is not known yet".to_string()),
        (Step::InSync, _) => (IN_SYNC, format!("the client runs {desired} shards")),
        (Step::SetShards(_), Some(why)) => (BLOCKED, why.to_string()),
        (Step::WaitForCoreapps { ready, needed }, _) => (
            SCALING_COREAPPS,
            format!("growing to {desired} shards: {ready} of {needed} coreapps ready before the shard change"),
        ),
        (Step::SetShards(n), None) => (
            SETTING_SHARDS,
            format!("setting {n} shards through POST /v1/account/shards (was {})", current.unwrap_or(0)),
        ),
    };
    ShardingStatus { desired, current, phase: phase.into(), message }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_count_follows_the_spec() {
        assert_eq!(plan(2, 1, None, 0), Plan { coreapp_replicas: 3, step: Step::Unknown });
    }

    #[test]
    fn in_sync() {
        assert_eq!(plan(4, 1, Some(4), 5), Plan { coreapp_replicas: 5, step: Step::InSync });
    }

    #[test]
    fn growing_scales_coreapps_first_then_calls_the_api() {
        let p = plan(2, 1, Some(1), 1);
        assert_eq!(p.coreapp_replicas, 3, "room for 2 shards + 1 standby at once");
        assert_eq!(p.step, Step::WaitForCoreapps { ready: 1, needed: 2 });
        assert_eq!(plan(2, 1, Some(1), 2).step, Step::SetShards(2));
    }

    #[test]
    fn shrinking_calls_the_api_first_and_keeps_coreapps_until_done() {
        let p = plan(1, 1, Some(2), 3);
        assert_eq!(p.coreapp_replicas, 3, "coreapps stay until the client runs fewer shards");
        assert_eq!(p.step, Step::SetShards(1));
        assert_eq!(plan(1, 1, Some(1), 3).coreapp_replicas, 2, "then they go");
    }

    #[test]
    fn status_says_what_happens_or_what_blocks() {
        let s = status(2, Some(1), &Step::SetShards(2), Some("set spec.registration"));
        assert_eq!((s.phase.as_str(), s.message.as_str()), (BLOCKED, "set spec.registration"));
        let s = status(2, Some(1), &Step::WaitForCoreapps { ready: 1, needed: 2 }, None);
        assert_eq!(s.phase, SCALING_COREAPPS);
        assert!(s.message.contains("1 of 2"));
        assert_eq!(status(1, Some(1), &Step::InSync, None).phase, IN_SYNC);
    }
}
