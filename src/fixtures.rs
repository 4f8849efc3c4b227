//! Sample objects and release catalogs shared by the unit tests.

use std::collections::BTreeMap;

use jiff::Timestamp;
use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::Secret;
use kube::Resource;

use crate::api::WhatsAppNumber;
use crate::upgrade::catalog::Catalog;

/// A high-availability number on MySQL with every default: `team/acme`,
/// +1 555 000 1111, client 2.53.2, credentials in `acme-db`.
pub fn sample() -> WhatsAppNumber {
    let mut wan: WhatsAppNumber = serde_json::from_value(serde_json::json!({
        "apiVersion": "whatsapp.operators.dev/v1alpha1",
        "kind": "WhatsAppNumber",
        "metadata": {"name": "acme", "namespace": "team", "uid": "1234-5678", "generation": 3},
        "spec": {
            "phoneNumber": "+15550001111",
            "version": "2.53.2",
            "database": {
                "engine": "MySQL",
                "host": "mysql.db.svc",
                "credentialsSecretRef": {"name": "acme-db"}
            }
        }
    }))
    .expect("sample parses");
    wan.meta_mut().uid = Some("1234-5678".into());
    wan
}

/// [`sample`] restoring the backup in the Secret `old-backup`, its password
/// in the Secret `pw`.
pub fn restoring() -> WhatsAppNumber {
    let mut wan = sample();
    wan.spec.restore_from = Some(Box::new(
        serde_json::from_value(serde_json::json!({
            "secretRef": {"name": "old-backup"}, "passwordSecretRef": {"name": "pw"}
        }))
        .expect("restoreFrom parses"),
    ));
    wan
}

/// The built-in catalog with 2.53.2 (released 2024-01-10, so expiring
/// 2024-07-08) and 2.55.1 (2024-04-10), and `extra` entries in the catalog
/// ConfigMap's form.
pub fn catalog_with(extra: &str) -> Catalog {
    Catalog::with_overrides(Some(&format!(
        "- {{version: \"2.53.2\", releasedAt: \"2024-01-10\"}}\n- {{version: \"2.55.1\", releasedAt: \"2024-04-10\"}}\n{extra}"
    )))
}

/// [`catalog_with`] nothing more.
pub fn catalog() -> Catalog {
    catalog_with("")
}

/// An instant written as RFC 3339.
pub fn at(s: &str) -> Timestamp {
    s.parse().expect("an RFC 3339 instant")
}

/// A Secret holding these keys and values.
pub fn secret(pairs: &[(&str, &str)]) -> Secret {
    let data: BTreeMap<_, _> = pairs.iter().map(|(k, v)| (k.to_string(), ByteString(v.as_bytes().to_vec()))).collect();
    Secret { data: Some(data), ..Default::default() }
}
