//! Gateway health: what the webapp's `/v1/health` says, judged by role, what
//! the nodes' logs add, and the status block that shows it.

pub mod logs;
pub mod report;

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

use crate::api::{HealthStatus, NodeHealth};
use report::{Health, Verdict};

/// One probe's result: the verdict for conditions, the block for status.
#[derive(Clone, Debug, PartialEq)]
pub struct Observation {
    pub verdict: Verdict,
    pub block: HealthStatus,
}

/// The status block for a successful probe. `pods_by_host` maps the nodes'
/// hostnames (pod IPs or pod names) to pod names.
pub fn observed(
    verdict: Verdict,
    health: &Health,
    shards: Option<i32>,
    pods_by_host: &BTreeMap<String, String>,
    previous: Option<&HealthStatus>,
    now: &Time,
) -> Observation {
    let nodes = match health {
        Health::Single { .. } => vec![],
        Health::Multi(nodes) => nodes
            .iter()
            .map(|n| NodeHealth {
                id: n.id.clone(),
                role: n.role.as_ref().map(|r| r.as_str().to_string()),
                gateway_status: n.gateway_status.as_ref().map(|g| g.as_str().to_string()),
                pod: pods_by_host.get(n.hostname()).cloned(),
                error: (!n.errors.is_empty()).then(|| n.errors.join("; ")),
            })
            .collect(),
    };
    let block = HealthStatus {
        gateway: verdict.gateway.clone(),
        primary_master: verdict.primary_master.clone(),
        connected_coreapps: verdict.connected_coreapps,
        standby_coreapps: verdict.standby_coreapps,
        shards,
        nodes,
        last_probe_time: None,
        last_error: (!verdict.healthy).then(|| verdict.message.clone()),
    };
    Observation { block: stamped(block, previous, now), verdict }
}

/// The status block when the webapp could not be asked at all.
pub fn unreachable(message: String, previous: Option<&HealthStatus>, now: &Time) -> Observation {
    let verdict = Verdict {
        healthy: false,
        reason: report::WEBAPP_UNREACHABLE,
        message: message.clone(),
        gateway: "unknown".into(),
        primary_master: None,
        connected_coreapps: 0,
        standby_coreapps: 0,
    };
    // What the client said last stays visible; only the error and the gateway change.
    let block = HealthStatus {
        gateway: "unknown".into(),
        last_error: Some(message),
        last_probe_time: None,
        ..previous.cloned().unwrap_or_default()
    };
    Observation { block: stamped(block, previous, now), verdict }
}

/// A probe that finds nothing new keeps the previous probe time, so the
/// status is unchanged and nothing is written.
fn stamped(mut block: HealthStatus, previous: Option<&HealthStatus>, now: &Time) -> HealthStatus {
    let unchanged = previous.is_some_and(|p| HealthStatus { last_probe_time: None, ..p.clone() } == block);
    block.last_probe_time =
        if unchanged { previous.and_then(|p| p.last_probe_time.clone()) } else { Some(now.clone()) };
    block
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(s: i64) -> Time {
        Time(k8s_openapi::jiff::Timestamp::from_second(s).unwrap())
    }

    const BODY: &str = r#"{"health":{
        "10.0.0.5:a":{"gateway_status":"connected","role":"primary_master"},
        "10.0.0.7:c":{"gateway_status":"connected","role":"coreapp"},
        "10.0.0.8:d":{"gateway_status":"disconnected","role":"coreapp"}}}"#;

    fn observe(body: &str, previous: Option<&HealthStatus>, at: i64) -> Observation {
        let health = report::parse(body.as_bytes()).unwrap();
        let verdict = report::judge(&health, 1);
        let pods = BTreeMap::from([("10.0.0.7".to_string(), "acme-coreapp-0".to_string())]);
        observed(verdict, &health, Some(1), &pods, previous, &t(at))
    }

    #[test]
    fn nodes_are_matched_to_pods_by_host() {
        let o = observe(BODY, None, 10);
        assert!(o.verdict.healthy);
        let nodes = &o.block.nodes;
        assert_eq!(nodes.len(), 3);
        assert_eq!(nodes[1].pod.as_deref(), Some("acme-coreapp-0"));
        assert_eq!(nodes[2].pod, None);
        assert_eq!(o.block.last_probe_time, Some(t(10)));
        assert_eq!(o.block.last_error, None);
    }

    #[test]
    fn a_probe_with_nothing_new_keeps_the_block_identical() {
        let first = observe(BODY, None, 10);
        let second = observe(BODY, Some(&first.block), 40);
        assert_eq!(first.block, second.block, "nothing to write");
        let changed = observe(
            &BODY.replace("\"connected\",\"role\":\"coreapp\"", "\"disconnected\",\"role\":\"coreapp\""),
            Some(&first.block),
            70,
        );
        assert_eq!(changed.block.last_probe_time, Some(t(70)));
        assert!(changed.block.last_error.as_deref().unwrap().contains("0 of 1"));
    }

    #[test]
    fn unreachable_keeps_the_last_known_nodes() {
        let first = observe(BODY, None, 10);
        let u = unreachable("connection refused".into(), Some(&first.block), &t(20));
        assert_eq!(u.verdict.reason, report::WEBAPP_UNREACHABLE);
        assert_eq!(u.block.gateway, "unknown");
        assert_eq!(u.block.nodes.len(), 3);
        assert_eq!(u.block.last_error.as_deref(), Some("connection refused"));
        let again = unreachable("connection refused".into(), Some(&u.block), &t(50));
        assert_eq!(again.block, u.block);
    }
}
