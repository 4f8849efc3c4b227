//! The ServiceMonitor that scrapes the client's own metrics: `/v1/stats/app`
//! in Prometheus format (cheap, in memory; multiconnect samples carry a `node`
//! label) and the webapp's `/metrics`, both with the API key, the credential
//! Meta documents for monitoring.

use kube::api::{ApiResource, DynamicObject, GroupVersionKind};
use serde_json::{Value, json};

use super::config::{API_KEY, WEBAPP_CA};
use super::names::{Names, Tier, component_labels, selector_labels};
use super::owned_meta;
use crate::api::WhatsAppNumber;

/// `monitoring.coreos.com/v1` `ServiceMonitor`.
pub fn resource() -> ApiResource {
    ApiResource::from_gvk_with_plural(
        &GroupVersionKind::gvk("monitoring.coreos.com", "v1", "ServiceMonitor"),
        "servicemonitors",
    )
}

pub fn name(wan: &WhatsAppNumber) -> String {
    format!("{}-client", Names::new(wan).base())
}

/// The CA the scrape trusts: the one the health probe would use.
fn tls_config(wan: &WhatsAppNumber) -> Value {
    let server_name = super::webapp::server_name(wan);
    let health = &wan.spec.health;
    if health.insecure_skip_tls_verify {
        return json!({"insecureSkipVerify": true});
    }
    let (secret, key) = match (&health.ca_secret_ref, &wan.spec.webapp.tls) {
        (Some(r), _) => (r.name.clone(), r.key.clone()),
        (None, Some(tls)) => (tls.secret_name.clone(), "ca.crt".to_string()),
        (None, None) => (Names::new(wan).keys(), WEBAPP_CA.to_string()),
    };
    json!({"ca": {"secret": {"name": secret, "key": key}}, "serverName": server_name})
}

/// The ServiceMonitor for a WhatsAppNumber, `None` when the spec asks for none.
pub fn service_monitor(wan: &WhatsAppNumber) -> Option<DynamicObject> {
    let spec = wan.spec.monitoring.as_ref().filter(|m| m.service_monitor)?;
    let mut labels = spec.labels.clone();
    labels.extend(component_labels(wan, "client-metrics"));
    let endpoint = |path: &str, params: Value| {
        let mut e = json!({
            "port": "https",
            "scheme": "https",
            "path": path,
            "authorization": {"type": "Apikey", "credentials": {"name": Names::new(wan).keys(), "key": API_KEY}},
            "tlsConfig": tls_config(wan),
        });
        if !params.is_null() {
            e["params"] = params;
        }
        if let Some(interval) = &spec.interval {
            e["interval"] = json!(interval);
        }
        e
    };
    let mut obj =
        DynamicObject::new(&name(wan), &resource()).within(&wan.metadata.namespace.clone().unwrap_or_default());
    obj.metadata = owned_meta(wan, name(wan), labels);
    obj.data = json!({
        "spec": {
            "selector": {"matchLabels": selector_labels(wan, Tier::Webapp)},
            "endpoints": [
                endpoint("/v1/stats/app", json!({"format": ["prometheus"]})),
                endpoint("/metrics", Value::Null),
            ],
        }
    });
    Some(obj)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fixtures::sample;

    #[test]
    fn none_unless_asked_for() {
        assert!(service_monitor(&sample()).is_none());
    }

    #[test]
    fn scrapes_the_clients_metrics_with_the_api_key_and_the_probes_trust() {
        let mut wan = sample();
        wan.spec.monitoring = Some(Box::new(crate::api::MonitoringSpec {
            service_monitor: true,
            interval: Some("1m".into()),
            labels: [("release".to_string(), "prometheus".to_string())].into(),
        }));
        let sm = service_monitor(&wan).unwrap();
        assert_eq!(sm.metadata.name.as_deref(), Some("acme-client"));
        assert_eq!(sm.metadata.labels.as_ref().unwrap()["release"], "prometheus");
        assert!(sm.metadata.owner_references.is_some(), "garbage-collected with the number");
        let endpoints = sm.data["spec"]["endpoints"].as_array().unwrap();
        assert_eq!(endpoints[0]["path"], "/v1/stats/app");
        assert_eq!(endpoints[0]["params"]["format"][0], "prometheus");
        assert_eq!(endpoints[1]["path"], "/metrics");
        for e in endpoints {
            assert_eq!(e["authorization"]["type"], "Apikey");
            assert_eq!(e["authorization"]["credentials"]["key"], "WA_API_KEY");
            assert_eq!(e["tlsConfig"]["ca"]["secret"]["key"], "webapp-ca.crt", "the pinned client CA");
            assert_eq!(e["tlsConfig"]["serverName"], "acme-webapp.team.svc");
            assert_eq!(e["interval"], "1m");
        }
        assert_eq!(sm.data["spec"]["selector"]["matchLabels"]["app.kubernetes.io/component"], "webapp");
    }
}
