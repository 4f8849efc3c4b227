//! Gateway states, node roles and the two shapes of `GET /v1/health`.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};

use crate::api::{ErrorItem, SERVICE_NOT_READY, title_of};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum GatewayStatus {
    Connected,
    Connecting,
    Disconnected,
    Uninitialized,
    Unregistered,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum HealthRole {
    PrimaryMaster,
    SecondaryMaster,
    Coreapp,
}

/// What a coreapp or master reports on its control port.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct NodeStatus {
    pub gateway_status: GatewayStatus,
    pub role: HealthRole,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub errors: Vec<ErrorItem>,
    #[serde(default)]
    pub shard: Option<i64>,
    #[serde(default)]
    pub version: String,
}

fn entry(status: &NodeStatus, with_role: bool) -> Value {
    let mut m = Map::new();
    m.insert("gateway_status".into(), json!(status.gateway_status));
    if with_role {
        m.insert("role".into(), json!(status.role));
    }
    if !status.errors.is_empty() {
        m.insert("errors".into(), json!(status.errors));
    }
    Value::Object(m)
}

fn unreachable(id: &str, why: &str) -> Value {
    json!({"errors": [ErrorItem::new(SERVICE_NOT_READY, title_of(SERVICE_NOT_READY), format!("Node {id} is unreachable: {why}"))]})
}

/// Multiconnect shape: one entry per node keyed `<hostname>:<container_id>`;
/// an unreachable node gets an error object instead.
pub fn multiconnect(nodes: &[(String, Result<NodeStatus, String>)]) -> Value {
    let mut m = Map::new();
    for (id, status) in nodes {
        let v = match status {
            Ok(s) => entry(s, true),
            Err(why) => unreachable(id, why),
        };
        m.insert(id.clone(), v);
    }
    json!({"health": m})
}

/// Single-instance shape: `{"health":{"gateway_status":...}}` of the coreapp;
/// with no reachable coreapp the health object carries the error instead.
pub fn single(nodes: &[(String, Result<NodeStatus, String>)]) -> Value {
    let reachable: Vec<&NodeStatus> = nodes.iter().filter_map(|(_, s)| s.as_ref().ok()).collect();
    let best = reachable.iter().find(|s| s.gateway_status == GatewayStatus::Connected).or_else(|| reachable.first());
    match (best, nodes.first()) {
        (Some(s), _) => json!({"health": entry(s, false)}),
        (None, Some((id, Err(why)))) => json!({"health": unreachable(id, why)}),
        _ => {
            json!({"health": {"errors": [ErrorItem::new(SERVICE_NOT_READY, title_of(SERVICE_NOT_READY), "No coreapp has registered with the database")]}})
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn st(g: GatewayStatus, r: HealthRole) -> NodeStatus {
        NodeStatus { gateway_status: g, role: r, errors: vec![], shard: None, version: "2.53.2".into() }
    }

    #[test]
    fn multiconnect_shape() {
        let nodes = vec![
            ("m1:aaa".to_string(), Ok(st(GatewayStatus::Connected, HealthRole::PrimaryMaster))),
            ("c1:bbb".to_string(), Ok(st(GatewayStatus::Disconnected, HealthRole::Coreapp))),
            ("c2:ccc".to_string(), Err("connection refused".to_string())),
        ];
        let v = multiconnect(&nodes);
        assert_eq!(v["health"]["m1:aaa"], json!({"gateway_status":"connected","role":"primary_master"}));
        assert_eq!(v["health"]["c1:bbb"], json!({"gateway_status":"disconnected","role":"coreapp"}));
        assert_eq!(v["health"]["c2:ccc"]["errors"][0]["code"], json!(1011));
        assert_eq!(v["health"]["c2:ccc"]["errors"][0]["title"], json!("Service not ready"));
    }

    #[test]
    fn single_shape() {
        let nodes = vec![("c1:bbb".to_string(), Ok(st(GatewayStatus::Connected, HealthRole::Coreapp)))];
        assert_eq!(single(&nodes), json!({"health":{"gateway_status":"connected"}}));
        let down = vec![("c1:bbb".to_string(), Err("timeout".to_string()))];
        assert_eq!(single(&down)["health"]["errors"][0]["code"], json!(1011));
        assert_eq!(single(&[])["health"]["errors"][0]["code"], json!(1011));
    }

    #[test]
    fn node_errors_are_shown() {
        let mut s = st(GatewayStatus::Disconnected, HealthRole::Coreapp);
        s.errors.push(ErrorItem::new(1005, "Access denied", "App Expired: a version upgrade is required"));
        let v = multiconnect(&[("c:1".into(), Ok(s))]);
        assert_eq!(v["health"]["c:1"]["errors"][0]["details"], json!("App Expired: a version upgrade is required"));
    }
}
