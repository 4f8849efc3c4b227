//! Fetch: read what the reconcile depends on besides the WhatsAppNumber itself.
//! Only reads happen here; validate and build then work on plain values.

use k8s_openapi::api::core::v1::{PersistentVolumeClaim, Secret};
use kube::ResourceExt;

use super::Settings;
use super::cache::Caches;
use super::error::{Error, Result};
use crate::api::WhatsAppNumber;
use crate::resources::config::CredentialsRecord;
use crate::resources::names::Names;
use crate::upgrade::catalog::{CONFIGMAP_KEY, Catalog};

/// Everything read from the cluster for one reconcile.
#[derive(Clone, Debug, Default)]
pub struct Observed {
    /// The database credentials Secret, if it exists and its data was read.
    pub credentials: Option<Secret>,
    /// What the ConfigMap records of the credentials, when the Secret is
    /// still at the version recorded: then its data is not read.
    pub credentials_recorded: Option<CredentialsRecord>,
    /// The database CA Secret, when the spec asks for one and it exists.
    pub database_ca: Option<Secret>,
    /// The webapp TLS Secret, when the spec asks for one and it exists.
    pub webapp_tls: Option<Secret>,
    /// The operator-generated key Secret, if created earlier.
    pub keys: Option<Secret>,
    /// The media claim the pods will mount (the user's or the operator's), if it exists.
    pub media_claim: Option<PersistentVolumeClaim>,
    /// The CA Secret named by `spec.health.caSecretRef`, if set and present.
    pub health_ca: Option<Secret>,
    /// The registration Secret named by `spec.registration`, if set and present.
    pub registration: Option<Secret>,
    /// The Secret named by `spec.webapp.adminPasswordSecretRef`, if set and present.
    pub admin_password: Option<Secret>,
    /// Secrets the number's lifecycle names (webhook CA, backup password,
    /// the backup to restore and its password, object store credentials and
    /// CAs), by name, those that exist.
    pub lifecycle: std::collections::BTreeMap<String, Secret>,
    /// The built-in release catalog with the operator's ConfigMap applied.
    pub catalog: Catalog,
    /// Another WhatsAppNumber, older than this one, on the same database host,
    /// port and name prefix (`namespace/name`).
    pub database_sharer: Option<String>,
}

/// Secrets named by the settings, backup and restore parts of the spec.
pub fn lifecycle_secret_names(wan: &WhatsAppNumber) -> Vec<String> {
    let mut names: Vec<String> = lifecycle_secret_refs(wan).map(str::to_string).collect();
    names.sort();
    names.dedup();
    names
}

/// The same names as they stand in the spec, repeats included: what the
/// Secret watch's mapper asks of every number on every Secret event, so
/// nothing is allocated.
pub fn lifecycle_secret_refs(wan: &WhatsAppNumber) -> impl Iterator<Item = &str> {
    let spec = &wan.spec;
    let stores = [
        spec.backup.as_ref().and_then(|b| b.object_store.as_ref()).map(|o| &o.store),
        spec.restore_from.as_ref().and_then(|r| r.object_store.as_ref()).map(|o| &o.store),
    ];
    [
        spec.settings.as_ref().and_then(|s| s.webhook_ca_secret_ref.as_ref()).map(|r| r.name.as_str()),
        spec.backup.as_ref().map(|b| b.password_secret_ref.name.as_str()),
        spec.restore_from.as_ref().and_then(|r| r.secret_ref.as_ref()).map(|r| r.name.as_str()),
        spec.restore_from.as_ref().map(|r| r.password_secret_ref.name.as_str()),
    ]
    .into_iter()
    .flatten()
    .chain(stores.into_iter().flatten().flat_map(|store| {
        [Some(store.credentials_secret_ref.name.as_str()), store.ca_secret_ref.as_ref().map(|r| r.name.as_str())]
            .into_iter()
            .flatten()
    }))
}

/// The Secrets besides the credentials whose data a reconcile of `wan` reads.
pub(super) fn other_secrets_read(wan: &WhatsAppNumber) -> Vec<String> {
    let spec = &wan.spec;
    let mut names: Vec<String> = [
        spec.database.tls.as_ref().map(|t| t.ca_secret_ref.name.clone()),
        spec.webapp.tls.as_ref().map(|t| t.secret_name.clone()),
        Some(Names::new(wan).keys()),
        // Also with polling off: the admin session and the scrape verify with it.
        spec.health.ca_secret_ref.as_ref().map(|r| r.name.clone()),
        spec.registration.as_ref().map(|r| r.secret_ref.name.clone()),
        spec.webapp.admin_password_secret_ref.as_ref().map(|r| r.name.clone()),
    ]
    .into_iter()
    .flatten()
    .collect();
    names.extend(lifecycle_secret_names(wan));
    names
}

/// The first WhatsAppNumber among `others` that was there before `wan` and
/// uses the same set of databases. One being deleted counts until it is
/// gone: its nodes may still run on those databases, which hold its
/// registration.
/// The databases a WhatsAppNumber's client uses: server and name prefix.
fn database_key(w: &WhatsAppNumber) -> (String, i32, String) {
    (
        w.spec.database.host.to_ascii_lowercase(),
        w.spec.database.effective_port(),
        crate::api::database_name_prefix(&w.spec),
    )
}

/// Whether `other`, another object than `wan` with another number, uses the
/// same databases: the younger of the two is held (`DatabaseInUse`).
pub fn shares_database(wan: &WhatsAppNumber, other: &WhatsAppNumber) -> bool {
    other.uid() != wan.uid()
        && other.spec.phone_number != wan.spec.phone_number
        && database_key(other) == database_key(wan)
}

pub fn database_sharer<'a>(
    wan: &WhatsAppNumber,
    others: impl IntoIterator<Item = &'a WhatsAppNumber>,
) -> Option<String> {
    let age = |w: &WhatsAppNumber| (w.metadata.creation_timestamp.clone().map(|t| t.0), w.namespace(), w.name_any());
    others
        .into_iter()
        // The same number twice is the claim's business: only one of them runs.
        .filter(|o| shares_database(wan, o) && age(o) < age(wan))
        .min_by_key(|o| age(o))
        .map(|o| format!("{}/{}", o.namespace().unwrap_or_default(), o.name_any()))
}

/// Reads from the caches alone, except the data of a Secret whose version
/// was not read before.
pub async fn observe(caches: &Caches, settings: &Settings, wan: &WhatsAppNumber) -> Result<Observed> {
    let namespace = wan.namespace().ok_or(Error::MissingMetadata("namespace"))?;
    let secret = |name: String| {
        let namespace = namespace.clone();
        async move { caches.secret(&namespace, &name).await }
    };
    let spec = &wan.spec;

    let credentials_name = &spec.database.credentials_secret_ref.name;
    let credentials_recorded = match caches.secrets.get(&namespace, credentials_name).await? {
        Some(meta) => caches
            .configmaps
            .get(&namespace, &Names::new(wan).config())
            .await?
            .and_then(|map| map.credentials_record().and_then(CredentialsRecord::parse))
            .and_then(|record| record.current(wan, meta.resource_version())),
        None => None,
    };
    let credentials = match credentials_recorded {
        Some(_) => None,
        None => secret(credentials_name.clone()).await?,
    };
    let database_ca = match &spec.database.tls {
        Some(tls) => secret(tls.ca_secret_ref.name.clone()).await?,
        None => None,
    };
    let webapp_tls = match &spec.webapp.tls {
        Some(tls) => secret(tls.secret_name.clone()).await?,
        None => None,
    };
    let keys = secret(Names::new(wan).keys()).await?;
    let media_claim =
        caches.volume_claims.get(&namespace, &crate::resources::media_claim_name(wan)).await?.map(|c| c.claim());
    let health_ca = match &spec.health.ca_secret_ref {
        Some(r) => secret(r.name.clone()).await?,
        None => None,
    };
    let registration = match &spec.registration {
        Some(r) => secret(r.secret_ref.name.clone()).await?,
        None => None,
    };
    let admin_password = match &spec.webapp.admin_password_secret_ref {
        Some(r) => secret(r.name.clone()).await?,
        None => None,
    };
    let mut lifecycle = std::collections::BTreeMap::new();
    for name in lifecycle_secret_names(wan) {
        if let Some(found) = secret(name.clone()).await? {
            lifecycle.insert(name, found);
        }
    }

    // The record stands for the credentials' data from now on: keeping the
    // data too would only cost memory. A Secret the spec also reads for
    // something else keeps it.
    if credentials_recorded.is_some() && !other_secrets_read(wan).contains(credentials_name) {
        caches.forget_secret(&namespace, credentials_name);
    }

    let catalog_yaml = caches
        .catalog
        .get(&settings.operator_namespace, &settings.release_catalog)
        .await?
        .and_then(|c| c.data.as_ref()?.get(CONFIGMAP_KEY).cloned());
    let catalog = Catalog::with_overrides(catalog_yaml.as_deref());

    Ok(Observed {
        credentials,
        credentials_recorded,
        database_ca,
        webapp_tls,
        keys,
        media_claim,
        health_ca,
        registration,
        admin_password,
        lifecycle,
        catalog,
        database_sharer: None,
    })
}

#[cfg(test)]
mod tests {
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
    use kube::Resource;

    use super::*;
    use crate::fixtures::sample;

    fn number(namespace: &str, name: &str, created: i64, uid: &str) -> WhatsAppNumber {
        let mut wan = sample();
        wan.meta_mut().namespace = Some(namespace.into());
        wan.meta_mut().name = Some(name.into());
        wan.meta_mut().uid = Some(uid.into());
        wan.meta_mut().creation_timestamp = Some(Time(jiff::Timestamp::from_second(created).unwrap()));
        wan
    }

    #[test]
    fn lifecycle_secrets_include_the_object_stores() {
        let mut wan = sample();
        let store = |credentials: &str, ca: Option<&str>| {
            serde_json::json!({"bucket": "backups", "credentialsSecretRef": {"name": credentials},
                "caSecretRef": ca.map(|n| serde_json::json!({"name": n}))})
        };
        let mut backup = store("s3", Some("s3-ca"));
        backup["prefix"] = "prod/".into();
        wan.spec.backup = Some(
            serde_json::from_value(serde_json::json!({"schedule": "0 3 * * *",
                "passwordSecretRef": {"name": "backup-password"}, "objectStore": backup}))
            .unwrap(),
        );
        let mut from = store("old-s3", None);
        from["key"] = "old/acme-backup-000000000001".into();
        wan.spec.restore_from = Some(
            serde_json::from_value(serde_json::json!({"objectStore": from,
                "passwordSecretRef": {"name": "backup-password"}}))
            .unwrap(),
        );
        assert_eq!(lifecycle_secret_names(&wan), ["backup-password", "old-s3", "s3", "s3-ca"]);
        let mut refs: Vec<&str> = lifecycle_secret_refs(&wan).collect();
        refs.sort();
        refs.dedup();
        assert_eq!(refs, lifecycle_secret_names(&wan), "what the Secret watch's mapper matches");
        let restore = wan.spec.restore_from.as_ref().unwrap();
        assert_eq!(restore.source(), "s3://backups/old/acme-backup-000000000001");
    }

    #[test]
    fn the_other_secrets_read_name_every_secret_whose_data_a_reconcile_reads() {
        let mut wan = sample();
        assert_eq!(other_secrets_read(&wan), [Names::new(&wan).keys()], "only the key Secret by default");
        wan.spec.webapp.admin_password_secret_ref =
            Some(serde_json::from_value(serde_json::json!({"name": "acme-db", "key": "admin"})).unwrap());
        wan.spec.database.tls = Some(
            serde_json::from_value(serde_json::json!({"caSecretRef": {"name": "db-ca", "key": "ca.crt"}})).unwrap(),
        );
        let names = other_secrets_read(&wan);
        assert!(names.contains(&"acme-db".to_string()), "the credentials Secret read as the admin password: {names:?}");
        assert!(names.contains(&"db-ca".to_string()), "{names:?}");
    }

    #[test]
    fn the_older_number_keeps_a_shared_set_of_databases() {
        let first = number("a", "first", 10, "1");
        let mut second = number("b", "second", 20, "2");
        second.spec.phone_number = "+15550002222".into();
        second.spec.database.name_prefix = Some("wa15550001111".into());
        let all = [first.clone(), second.clone()];
        assert_eq!(database_sharer(&second, &all), Some("a/first".into()));
        assert_eq!(database_sharer(&first, &all), None, "the first one keeps running");
        // Being deleted, its nodes may still run: it keeps them until it is gone.
        let mut leaving = first.clone();
        leaving.metadata.deletion_timestamp = Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
            k8s_openapi::jiff::Timestamp::from_second(100).unwrap(),
        ));
        assert_eq!(database_sharer(&second, &[leaving, second.clone()]), Some("a/first".into()));
        // Another host or another prefix shares nothing.
        second.spec.database.host = "other.db".into();
        assert_eq!(database_sharer(&second, &[first.clone(), second.clone()]), None);
        second.spec.database.host = first.spec.database.host.clone();
        second.spec.database.name_prefix = None;
        assert_eq!(
            database_sharer(&second, &[first.clone(), second.clone()]),
            None,
            "default prefixes differ by number"
        );
        // A second object of the same number waits for the number claim, not for this.
        let twin = number("c", "twin", 30, "3");
        assert_eq!(database_sharer(&twin, &[first, twin.clone()]), None);
    }
}
