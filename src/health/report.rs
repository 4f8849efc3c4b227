//! Reading `GET /v1/health` and judging it by role. Pure: bytes in, verdict out.
//!
//! Two shapes exist. A single instance answers
//! `{"health":{"gateway_status":"connected"}}`; multiconnect answers one entry
//! per node keyed `<hostname>:<container_id>`, each with `gateway_status` and
//! `role`, or an error object for a node the webapp cannot reach (HTTP stays
//! 200). Standby coreapps and secondary masters are `disconnected` by design,
//! so health is never judged from one node.

use serde_json::Value;

/// A node's connection to WhatsApp's servers, as the client reports it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum GatewayStatus {
    Connected,
    Connecting,
    Disconnected,
    /// Upgrading or initialising the schema.
    Uninitialized,
    /// The number must be registered.
    Unregistered,
    Other(String),
}

impl GatewayStatus {
    fn parse(s: &str) -> Self {
        match s {
            "connected" => Self::Connected,
            "connecting" => Self::Connecting,
            "disconnected" => Self::Disconnected,
            "uninitialized" => Self::Uninitialized,
            "unregistered" => Self::Unregistered,
            other => Self::Other(other.to_string()),
        }
    }

    pub fn as_str(&self) -> &str {
        match self {
            Self::Connected => "connected",
            Self::Connecting => "connecting",
            Self::Disconnected => "disconnected",
            Self::Uninitialized => "uninitialized",
            Self::Unregistered => "unregistered",
            Self::Other(s) => s,
        }
    }

    /// `connecting` counts as healthy: the client is (re)establishing its link.
    pub fn is_up(&self) -> bool {
        matches!(self, Self::Connected | Self::Connecting)
    }
}

/// A node's role in a multiconnect cluster.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Role {
    PrimaryMaster,
    SecondaryMaster,
    Coreapp,
    Other(String),
}

impl Role {
    fn parse(s: &str) -> Self {
        match s {
            "primary_master" => Self::PrimaryMaster,
            "secondary_master" => Self::SecondaryMaster,
            "coreapp" => Self::Coreapp,
            other => Self::Other(other.to_string()),
        }
    }

    pub fn as_str(&self) -> &str {
        match self {
            Self::PrimaryMaster => "primary_master",
            Self::SecondaryMaster => "secondary_master",
            Self::Coreapp => "coreapp",
            Self::Other(s) => s,
        }
    }
}

/// One entry of the multiconnect shape.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Node {
    /// `<hostname>:<container_id>`.
    pub id: String,
    pub role: Option<Role>,
    pub gateway_status: Option<GatewayStatus>,
    /// Error details the entry carries: a node the webapp cannot reach.
    pub errors: Vec<String>,
}

impl Node {
    /// The hostname part of the id: the container's hostname (the pod name in
    /// Kubernetes) or the advertised `COREAPP_HOSTNAME` (the pod IP).
    pub fn hostname(&self) -> &str {
        self.id.rsplit_once(':').map_or(self.id.as_str(), |(host, _)| host)
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Health {
    Single { gateway_status: Option<GatewayStatus>, errors: Vec<String> },
    Multi(Vec<Node>),
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ParseError {
    #[error("the health response is not JSON: {0}")]
    NotJson(String),
    #[error("the webapp answered with an error: {0}")]
    ApiError(String),
    #[error("the health response has no `health` object")]
    NoHealth,
}

fn error_texts(v: &Value) -> Vec<String> {
    v.get("errors")
        .and_then(Value::as_array)
        .map(|errs| {
            errs.iter()
                .map(|e| {
                    let code = e.get("code").map(|c| c.to_string()).unwrap_or_default();
                    let title = e.get("title").and_then(Value::as_str).unwrap_or_default();
                    let details = e.get("details").and_then(Value::as_str).unwrap_or_default();
                    format!("{code} {title}: {details}").trim().to_string()
                })
                .collect()
        })
        .unwrap_or_default()
}

/// Parses either shape; the node list comes back sorted by id for stable status.
pub fn parse(body: &[u8]) -> Result<Health, ParseError> {
    let doc: Value = serde_json::from_slice(body).map_err(|e| ParseError::NotJson(e.to_string()))?;
    let Some(health) = doc.get("health").and_then(Value::as_object) else {
        let errors = error_texts(&doc);
        return Err(if errors.is_empty() { ParseError::NoHealth } else { ParseError::ApiError(errors.join("; ")) });
    };
    let is_single = health.contains_key("gateway_status")
        || (health.contains_key("errors") && !health.values().all(Value::is_object));
    if is_single {
        let value = Value::Object(health.clone());
        return Ok(Health::Single {
            gateway_status: health.get("gateway_status").and_then(Value::as_str).map(GatewayStatus::parse),
            errors: error_texts(&value),
        });
    }
    let mut nodes: Vec<Node> = health
        .iter()
        .map(|(id, entry)| Node {
            id: id.clone(),
            role: entry.get("role").and_then(Value::as_str).map(Role::parse),
            gateway_status: entry.get("gateway_status").and_then(Value::as_str).map(GatewayStatus::parse),
            errors: error_texts(entry),
        })
        .collect();
    nodes.sort_by(|a, b| a.id.cmp(&b.id));
    Ok(Health::Multi(nodes))
}

/// The verdict on one health response, for a deployment with `shards` shards.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Verdict {
    pub healthy: bool,
    /// CamelCase reason for conditions: `GatewayConnected` when healthy.
    pub reason: &'static str,
    pub message: String,
    /// `connected`, `connecting`, `disconnected`, `uninitialized`, `unregistered`.
    pub gateway: String,
    pub primary_master: Option<String>,
    pub connected_coreapps: i32,
    pub standby_coreapps: i32,
}

pub const GATEWAY_CONNECTED: &str = "GatewayConnected";
pub const UNREGISTERED: &str = "Unregistered";
pub const UNINITIALIZED: &str = "Uninitialized";
pub const NO_PRIMARY_MASTER: &str = "NoPrimaryMaster";
pub const PRIMARY_MASTER_DISCONNECTED: &str = "PrimaryMasterDisconnected";
pub const SHARDS_NOT_CONNECTED: &str = "ShardsNotConnected";
pub const NODE_UNREACHABLE: &str = "NodeUnreachable";
/// Not from health: a node logged the conflict (see [`super::logs`]).
pub const NUMBER_CONFLICT: &str = "NumberConflict";
pub const WEBAPP_UNREACHABLE: &str = "WebappUnreachable";
pub const GATEWAY_DISCONNECTED: &str = "GatewayDisconnected";

/// Judges health by role and mode. One coreapp per shard must be up, and a
/// node must hold the primary master role. In multiconnect (2 shards or more)
/// the primary master is connected too; in high availability (1 shard) it
/// reports `disconnected` like every node but the connected coreapp (Meta's
/// health reference). Standbys and secondary masters are `disconnected` in
/// both modes. The most actionable problem names the verdict.
pub fn judge(health: &Health, shards: i32) -> Verdict {
    match health {
        Health::Single { gateway_status, errors } => judge_single(gateway_status.as_ref(), errors),
        Health::Multi(nodes) => judge_multi(nodes, shards),
    }
}

fn judge_single(status: Option<&GatewayStatus>, errors: &[String]) -> Verdict {
    let gateway = status.map(|s| s.as_str().to_string()).unwrap_or_else(|| "unknown".into());
    let (healthy, reason, message) = match status {
        Some(GatewayStatus::Unregistered) => (false, UNREGISTERED, unregistered_message()),
        Some(GatewayStatus::Uninitialized) => (false, UNINITIALIZED, uninitialized_message()),
        Some(s) if s.is_up() => (true, GATEWAY_CONNECTED, format!("the client is {}", s.as_str())),
        Some(s) => (false, GATEWAY_DISCONNECTED, format!("the client is {}", s.as_str())),
        None => (false, NODE_UNREACHABLE, format!("the client reports no gateway status: {}", errors.join("; "))),
    };
    let connected = i32::from(healthy);
    Verdict {
        healthy,
        reason,
        message,
        gateway,
        primary_master: None,
        connected_coreapps: connected,
        standby_coreapps: 0,
    }
}

fn judge_multi(nodes: &[Node], shards: i32) -> Verdict {
    let primaries: Vec<&Node> = nodes.iter().filter(|n| n.role == Some(Role::PrimaryMaster)).collect();
    let coreapps: Vec<&Node> = nodes.iter().filter(|n| n.role == Some(Role::Coreapp)).collect();
    let connected =
        coreapps.iter().filter(|n| n.gateway_status.as_ref().is_some_and(GatewayStatus::is_up)).count() as i32;
    let standby = coreapps.len() as i32 - connected;
    let unreachable: Vec<&Node> = nodes.iter().filter(|n| n.gateway_status.is_none()).collect();
    let any = |s: GatewayStatus| nodes.iter().any(|n| n.gateway_status.as_ref() == Some(&s));
    let primary = primaries.first().copied();
    let primary_up = primary.is_some_and(|p| p.gateway_status.as_ref().is_some_and(GatewayStatus::is_up));

    let (reason, message) = if any(GatewayStatus::Unregistered) {
        (UNREGISTERED, unregistered_message())
    } else if any(GatewayStatus::Uninitialized) {
        (UNINITIALIZED, uninitialized_message())
    } else if let Some(p) = primary.filter(|_| shards >= 2 && !primary_up) {
        (
            PRIMARY_MASTER_DISCONNECTED,
            format!("primary master {} is {}", p.id, p.gateway_status.as_ref().map_or("unknown", |s| s.as_str())),
        )
    } else if primary.is_none() {
        (NO_PRIMARY_MASTER, format!("no node reports the primary_master role ({} nodes listed)", nodes.len()))
    } else if connected < shards {
        (SHARDS_NOT_CONNECTED, format!("{connected} of {shards} shards connected; {standby} coreapps standing by"))
    } else if !unreachable.is_empty() {
        let ids: Vec<&str> = unreachable.iter().map(|n| n.id.as_str()).collect();
        (NODE_UNREACHABLE, format!("the webapp cannot reach {}", ids.join(", ")))
    } else if shards >= 2 {
        (GATEWAY_CONNECTED, format!("primary master and {connected} of {shards} shards connected, {standby} standby"))
    } else {
        (GATEWAY_CONNECTED, format!("high availability: {connected} coreapp connected, {standby} standby"))
    };
    let healthy = reason == GATEWAY_CONNECTED;
    let gateway = if any(GatewayStatus::Unregistered) {
        "unregistered"
    } else if any(GatewayStatus::Uninitialized) {
        "uninitialized"
    } else if healthy {
        "connected"
    } else {
        "disconnected"
    }
    .to_string();
    Verdict {
        healthy,
        reason,
        message,
        gateway,
        primary_master: primary.map(|p| p.id.clone()),
        connected_coreapps: connected,
        standby_coreapps: standby,
    }
}

fn unregistered_message() -> String {
    "the number is not registered: register it through the webapp (POST /v1/account, then /v1/account/verify with the code)".into()
}

fn uninitialized_message() -> String {
    "a node is initialising or upgrading the database schema".into()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn multi(json: &str, shards: i32) -> Verdict {
        judge(&parse(json.as_bytes()).expect("parses"), shards)
    }

    /// High availability as the client reports it: only the coreapp holding
    /// the shard is connected, the primary master included every other node
    /// is disconnected.
    const HA_OK: &str = r#"{"meta":{"api_status":"stable","version":"2.53.2"},"health":{
        "10.0.0.5:a1b2c3d4e5f6":{"gateway_status":"disconnected","role":"primary_master"},
        "10.0.0.6:b1b2c3d4e5f6":{"gateway_status":"disconnected","role":"secondary_master"},
        "10.0.0.7:c1b2c3d4e5f6":{"gateway_status":"connected","role":"coreapp"},
        "10.0.0.8:d1b2c3d4e5f6":{"gateway_status":"disconnected","role":"coreapp"}}}"#;

    #[test]
    fn single_shape() {
        let h = parse(br#"{"health":{"gateway_status":"connected"}}"#).unwrap();
        assert_eq!(h, Health::Single { gateway_status: Some(GatewayStatus::Connected), errors: vec![] });
        let v = judge(&h, 1);
        assert!(v.healthy);
        assert_eq!(v.gateway, "connected");
        for (status, reason) in
            [("unregistered", UNREGISTERED), ("uninitialized", UNINITIALIZED), ("disconnected", GATEWAY_DISCONNECTED)]
        {
            let body = format!(r#"{{"health":{{"gateway_status":"{status}"}}}}"#);
            let v = judge(&parse(body.as_bytes()).unwrap(), 1);
            assert!(!v.healthy);
            assert_eq!((v.reason, v.gateway.as_str()), (reason, status));
        }
        assert!(judge(&parse(br#"{"health":{"gateway_status":"connecting"}}"#).unwrap(), 1).healthy);
    }

    #[test]
    fn ha_with_standbys_disconnected_is_healthy() {
        let v = multi(HA_OK, 1);
        assert!(v.healthy, "{v:?}");
        assert_eq!(v.reason, GATEWAY_CONNECTED);
        assert!(v.message.contains("high availability"), "{}", v.message);
        assert_eq!(v.primary_master.as_deref(), Some("10.0.0.5:a1b2c3d4e5f6"));
        assert_eq!((v.connected_coreapps, v.standby_coreapps), (1, 1));
        assert_eq!(v.gateway, "connected");
    }

    #[test]
    fn nodes_are_sorted_and_hostnames_split() {
        let Health::Multi(nodes) = parse(HA_OK.as_bytes()).unwrap() else { panic!("multi") };
        assert_eq!(nodes[0].hostname(), "10.0.0.5");
        assert!(nodes.windows(2).all(|w| w[0].id < w[1].id));
    }

    #[test]
    fn too_few_connected_coreapps() {
        let body = HA_OK.replace(r#""connected","role":"coreapp""#, r#""disconnected","role":"coreapp""#);
        let v = multi(&body, 1);
        assert_eq!(v.reason, SHARDS_NOT_CONNECTED);
        assert!(v.message.contains("0 of 1 shards"), "{}", v.message);
        // A 2-shard cluster when the client runs 4.
        let v = multi(MULTI_OK, 4);
        assert_eq!(v.reason, SHARDS_NOT_CONNECTED);
        assert!(v.message.contains("2 of 4"), "{}", v.message);
    }

    /// Multiconnect with 2 shards as the client reports it: both shard
    /// holders and the primary master connected.
    const MULTI_OK: &str = r#"{"meta":{"api_status":"stable","version":"2.53.2"},"health":{
        "10.0.0.5:a1b2c3d4e5f6":{"gateway_status":"connected","role":"primary_master"},
        "10.0.0.6:b1b2c3d4e5f6":{"gateway_status":"disconnected","role":"secondary_master"},
        "10.0.0.7:c1b2c3d4e5f6":{"gateway_status":"connected","role":"coreapp"},
        "10.0.0.8:d1b2c3d4e5f6":{"gateway_status":"connected","role":"coreapp"},
        "10.0.0.9:e1b2c3d4e5f6":{"gateway_status":"disconnected","role":"coreapp"}}}"#;

    #[test]
    fn multiconnect_needs_the_primary_master_connected() {
        let v = multi(MULTI_OK, 2);
        assert!(v.healthy, "{v:?}");
        assert_eq!((v.connected_coreapps, v.standby_coreapps), (2, 1));
        let body =
            MULTI_OK.replace(r#""connected","role":"primary_master""#, r#""disconnected","role":"primary_master""#);
        assert_eq!(multi(&body, 2).reason, PRIMARY_MASTER_DISCONNECTED);
    }

    #[test]
    fn ha_needs_a_primary_master_but_not_a_connected_one() {
        let body = HA_OK.replace("primary_master", "secondary_master");
        assert_eq!(multi(&body, 1).reason, NO_PRIMARY_MASTER);
        // A connected primary master in HA is not what the client reports, but
        // it is no reason to call the number unhealthy either.
        let body = HA_OK.replace(r#""disconnected","role":"primary_master""#, r#""connected","role":"primary_master""#);
        assert!(multi(&body, 1).healthy);
    }

    #[test]
    fn unregistered_and_uninitialized_win_over_the_rest() {
        let body =
            HA_OK.replace("disconnected\",\"role\":\"primary_master", "unregistered\",\"role\":\"primary_master");
        let v = multi(&body, 1);
        assert_eq!((v.reason, v.gateway.as_str()), (UNREGISTERED, "unregistered"));
        let body = HA_OK.replace("\"disconnected\",\"role\":\"coreapp\"", "\"uninitialized\",\"role\":\"coreapp\"");
        assert_eq!(multi(&body, 1).reason, UNINITIALIZED);
    }

    #[test]
    fn unreachable_node_error_object() {
        let body = r#"{"health":{
            "10.0.0.5:a":{"gateway_status":"connected","role":"primary_master"},
            "10.0.0.7:c":{"gateway_status":"connected","role":"coreapp"},
            "10.0.0.8:d":{"errors":[{"code":1011,"title":"Service not ready","details":"Node 10.0.0.8:d is unreachable"}]}}}"#;
        let v = multi(body, 1);
        assert!(!v.healthy);
        assert_eq!(v.reason, NODE_UNREACHABLE);
        assert!(v.message.contains("10.0.0.8:d"));
        let Health::Multi(nodes) = parse(body.as_bytes()).unwrap() else { panic!() };
        assert_eq!(nodes[2].errors, vec!["1011 Service not ready: Node 10.0.0.8:d is unreachable".to_string()]);
    }

    #[test]
    fn multiconnect_four_shards() {
        let mut entries = vec![r#""m1:1":{"gateway_status":"connected","role":"primary_master"}"#.to_string()];
        for i in 0..5 {
            let status = if i < 4 { "connected" } else { "disconnected" };
            entries.push(format!(r#""c{i}:{i}":{{"gateway_status":"{status}","role":"coreapp"}}"#));
        }
        let body = format!(r#"{{"health":{{{}}}}}"#, entries.join(","));
        let v = multi(&body, 4);
        assert!(v.healthy);
        assert_eq!((v.connected_coreapps, v.standby_coreapps), (4, 1));
    }

    #[test]
    fn error_envelopes_and_garbage() {
        assert!(matches!(
            parse(br#"{"errors":[{"code":1005,"title":"Access denied","details":"Invalid credentials"}]}"#),
            Err(ParseError::ApiError(e)) if e.contains("Access denied")
        ));
        assert!(matches!(parse(b"<html>"), Err(ParseError::NotJson(_))));
        assert_eq!(parse(b"{}"), Err(ParseError::NoHealth));
        // Single shape with no reachable coreapp carries an error object.
        let h = parse(br#"{"health":{"errors":[{"code":1011,"title":"Service not ready","details":"No coreapp"}]}}"#)
            .unwrap();
        assert!(matches!(h, Health::Single { gateway_status: None, .. }));
        assert_eq!(judge(&h, 1).reason, NODE_UNREACHABLE);
    }
}
