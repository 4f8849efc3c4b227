//! `whatsapp-operator render FILE`: every object the operator would create for
//! the WhatsAppNumbers in a YAML file, as YAML, without a cluster, so that the
//! environment, commands and mounts can be reviewed in a pull request.
//!
//! Defaults are applied as the API server applies them. Objects come in the
//! order of a first deployment: the key Secret and configuration, the schema
//! Job that creates the databases, then the workloads at their running size
//! (on a cluster they start once the Job succeeded). Generated secret values
//! read `<generated>`, and the configuration hash on pod templates differs
//! from a cluster's, which also hashes the credentials. The ServiceMonitor
//! `spec.monitoring` asks for comes last; a cluster without the Prometheus
//! Operator's CRDs gets none, and the status says so.

use serde_json::Value;

use crate::api::WhatsAppNumber;
use crate::resources::{self, BuildInputs, config, monitoring, schema_job};

/// Renders every WhatsAppNumber document of `yaml`; other kinds are skipped.
pub fn render(yaml: &str) -> Result<String, String> {
    let mut out = Vec::new();
    let mut found = 0;
    // The user's own file, read by a command of theirs: as many documents as it has.
    let options = serde_saphyr::options! { budget: None };
    let documents: Vec<Value> =
        serde_saphyr::from_multiple_with_options(yaml, options).map_err(|e| format!("not valid YAML: {e}"))?;
    for (i, value) in documents.into_iter().enumerate() {
        if value.is_null() || value.get("kind").and_then(Value::as_str) != Some("WhatsAppNumber") {
            continue;
        }
        let mut wan: WhatsAppNumber = serde_json::from_value(value)
            .map_err(|e| format!("document {}: not a valid WhatsAppNumber: {e}", i + 1))?;
        if wan.metadata.namespace.is_none() {
            wan.metadata.namespace = Some("default".into());
        }
        found += 1;
        for object in objects(&wan)? {
            out.push(serde_saphyr::to_string(&object).map_err(|e| e.to_string())?);
        }
    }
    if found == 0 {
        return Err("no WhatsAppNumber in the input".into());
    }
    Ok(out.iter().map(|doc| format!("---\n{doc}")).collect())
}

/// The objects of one WhatsAppNumber, in the order a first deployment creates them.
fn objects(wan: &WhatsAppNumber) -> Result<Vec<Value>, String> {
    let inputs = BuildInputs { credentials_digest: "<from the credentials Secret>".into(), ..Default::default() };
    let c = resources::build(wan, &inputs);
    let mut keys = config::keys_secret(wan, None).ok_or("the key Secret is always built for a new object")?;
    keys.string_data = keys.data.take().map(|d| d.into_keys().map(|k| (k, "<generated>".to_string())).collect());
    let mut objects =
        vec![to_value(&keys)?, to_value(&c.config)?, to_value(&schema_job::schema_job(wan, &wan.spec.version))?];
    if let Some(media) = &c.media {
        objects.push(to_value(media)?);
    }
    for value in [
        to_value(&c.master_service)?,
        to_value(&c.coreapp_service)?,
        to_value(&c.webapp_service)?,
        to_value(&c.masters)?,
        to_value(&c.coreapps)?,
        to_value(&c.webapps)?,
    ] {
        objects.push(value);
    }
    for budget in &c.disruption_budgets {
        objects.push(to_value(budget)?);
    }
    if let Some(monitor) = monitoring::service_monitor(wan) {
        objects.push(ordered(serde_json::to_value(&monitor).map_err(|e| e.to_string())?)?);
    }
    Ok(objects)
}

/// JSON of an object with its `apiVersion` and `kind`.
fn to_value<K>(obj: &K) -> Result<Value, String>
where
    K: kube::Resource<DynamicType = ()> + serde::Serialize,
{
    let mut v = serde_json::to_value(obj).map_err(|e| e.to_string())?;
    let map = v.as_object_mut().ok_or("objects serialize to maps")?;
    map.insert("apiVersion".into(), K::api_version(&()).into());
    map.insert("kind".into(), K::kind(&()).into());
    ordered(v)
}

/// `apiVersion`, `kind` and `metadata` first, as kubectl prints them.
fn ordered(mut v: Value) -> Result<Value, String> {
    let map = v.as_object_mut().ok_or("objects serialize to maps")?;
    let mut ordered = serde_json::Map::new();
    for key in ["apiVersion", "kind", "metadata"] {
        if let Some(value) = map.remove(key) {
            ordered.insert(key.into(), value);
        }
    }
    ordered.extend(std::mem::take(map));
    Ok(Value::Object(ordered))
}

#[cfg(test)]
mod tests {
    use super::*;

    const EXAMPLE: &str = r#"
apiVersion: whatsapp.operators.dev/v1alpha1
kind: WhatsAppNumber
metadata: {name: acme, namespace: team}
spec:
  phoneNumber: "+15550001111"
  version: "2.53.2"
  database:
    engine: PostgreSQL
    host: pg.db.svc
    credentialsSecretRef: {name: acme-db}
---
apiVersion: v1
kind: Secret
metadata: {name: acme-db}
"#;

    fn docs(out: &str) -> Vec<Value> {
        serde_saphyr::from_multiple_with_options(out, serde_saphyr::options! { budget: None }).unwrap()
    }

    #[test]
    fn renders_files_of_thousands_of_documents() {
        let many = vec![EXAMPLE; 520].join("---\n");
        let out = render(&many).expect("renders");
        assert_eq!(docs(&out).len(), 520 * docs(&render(EXAMPLE).unwrap()).len());
    }

    #[test]
    fn renders_every_child_with_the_clients_environment_and_commands() {
        let out = render(EXAMPLE).expect("renders");
        let docs = docs(&out);
        let kinds: Vec<&str> = docs.iter().map(|d| d["kind"].as_str().unwrap()).collect();
        assert_eq!(
            kinds,
            [
                "Secret",
                "ConfigMap",
                "Job",
                "PersistentVolumeClaim",
                "Service",
                "Service",
                "Service",
                "StatefulSet",
                "StatefulSet",
                "Deployment",
                "PodDisruptionBudget",
                "PodDisruptionBudget",
                "PodDisruptionBudget"
            ]
        );
        let config = &docs[1]["data"];
        assert_eq!(config["WA_DB_ENGINE"], "PGSQL");
        assert_eq!(config["WA_DB_NAME_PREFIX"], "wa15550001111");
        let masters =
            docs.iter().find(|d| d["kind"] == "StatefulSet" && d["metadata"]["name"] == "acme-master").unwrap();
        let container = &masters["spec"]["template"]["spec"]["containers"][0];
        assert_eq!(
            container["command"],
            serde_json::json!(["/opt/whatsapp/bin/wait_on_postgres.sh", "/opt/whatsapp/bin/launch_within_docker.sh"])
        );
        assert!(!out.contains("WA_WEB_TLS"), "no invented variables");
        // Generated values are never printed.
        let keys = docs[0]["stringData"].as_object().unwrap();
        assert_eq!(keys.len(), 3, "JWT key, API key, admin password");
        assert!(keys.values().all(|v| v == "<generated>"), "{keys:?}");
    }

    #[test]
    fn a_service_monitor_the_spec_asks_for_is_rendered_last() {
        let monitored = EXAMPLE.replacen("spec:\n", "spec:\n  monitoring: {serviceMonitor: true}\n", 1);
        let monitored = docs(&render(&monitored).expect("renders"));
        let last = monitored.last().unwrap();
        assert_eq!(
            (last["apiVersion"].as_str(), last["kind"].as_str()),
            (Some("monitoring.coreos.com/v1"), Some("ServiceMonitor"))
        );
        assert_eq!(last["metadata"]["name"], "acme-client");
        assert_eq!(last["spec"]["endpoints"][0]["path"], "/v1/stats/app");
        let plain = docs(&render(EXAMPLE).unwrap());
        assert!(plain.iter().all(|d| d["kind"] != "ServiceMonitor"), "none unless asked for");
        assert_eq!(monitored.len(), plain.len() + 1);
    }

    #[test]
    fn input_without_a_whatsappnumber_or_with_a_bad_one_is_an_error() {
        assert!(render("apiVersion: v1\nkind: Secret\n").unwrap_err().contains("no WhatsAppNumber"));
        let bad = "apiVersion: whatsapp.operators.dev/v1alpha1\nkind: WhatsAppNumber\nmetadata: {name: x}\nspec: {}\n";
        assert!(render(bad).unwrap_err().contains("not a valid WhatsAppNumber"));
    }
}
