//! The environment ConfigMap shared by every tier, and the generated key Secret.

use std::collections::BTreeMap;

use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::{ConfigMap, Secret};
use kube::api::ObjectMeta;
use rand::Rng;
use rand::distr::Alphanumeric;

use super::names::{ANNOTATION_CREDENTIALS_READ, Names, component_labels};
use super::{DB_CA_DIR, owned_meta};
use crate::api::WhatsAppNumber;

/// The coreapp ports of Meta's templates: 6250, 6251, 6252 (control), 6253 (heartbeat).
pub const COREAPP_PORTS: [i32; 4] = [6250, 6251, 6252, 6253];

/// Key of the webapp JWT signing key in the generated Secret.
pub const JWT_KEY: &str = "WA_WEB_JWT_CRYPTO_KEY";
/// Key of the API key in the generated Secret; the operator uses it for health probes.
pub const API_KEY: &str = "WA_API_KEY";
/// Key of the generated admin password, when the spec names no Secret of its own.
pub const ADMIN_PASSWORD: &str = "admin-password";
/// Key of the client's own CA, pinned at the first contact with the webapp.
pub const WEBAPP_CA: &str = "webapp-ca.crt";

/// What was read of the database credentials Secret: its resource version,
/// which keys, and the digest of their values that rolls the pods. Recorded
/// on the ConfigMap as `<version> <keys> <digest>`; a Secret still at that
/// version holds the same data, so its digest needs no read.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CredentialsRecord {
    pub version: String,
    /// Digest of the key names the spec reads, so a spec naming other keys
    /// does not take the digest of the old ones.
    pub keys: String,
    pub digest: String,
}

impl CredentialsRecord {
    pub fn new(wan: &WhatsAppNumber, version: &str, digest: &str) -> Self {
        Self { version: version.into(), keys: credentials_keys(wan), digest: digest.into() }
    }

    pub fn parse(value: &str) -> Option<Self> {
        let mut parts = value.split(' ');
        let (version, keys, digest) = (parts.next()?, parts.next()?, parts.next()?);
        if parts.next().is_some() || [version, keys, digest].iter().any(|p| p.is_empty()) {
            return None;
        }
        Some(Self { version: version.into(), keys: keys.into(), digest: digest.into() })
    }

    /// The record, if it is about the keys `wan` reads and the Secret is still
    /// at the version it records.
    pub fn current(self, wan: &WhatsAppNumber, secret_version: Option<&str>) -> Option<Self> {
        (secret_version == Some(self.version.as_str()) && self.keys == credentials_keys(wan)).then_some(self)
    }
}

impl std::fmt::Display for CredentialsRecord {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {} {}", self.version, self.keys, self.digest)
    }
}

fn credentials_keys(wan: &WhatsAppNumber) -> String {
    let r = &wan.spec.database.credentials_secret_ref;
    super::digest(&(&r.username_key, &r.password_key))
}

/// The environment of Meta's Kubernetes templates (domain.md), one ConfigMap
/// consumed by masters, coreapps and webapps through `envFrom`.
/// `credentials`, when the Secret's version is known, is recorded on it.
pub fn config_map(wan: &WhatsAppNumber, credentials: Option<&CredentialsRecord>) -> ConfigMap {
    let db = &wan.spec.database;
    let mut data = BTreeMap::from([
        ("WA_APP_MULTICONNECT".to_string(), "1".to_string()),
        ("COREAPP_EXTERNAL_PORTS".to_string(), COREAPP_PORTS.iter().map(i32::to_string).collect::<Vec<_>>().join(",")),
        ("WA_DB_ENGINE".to_string(), db.engine.env_value().to_string()),
        ("WA_DB_HOSTNAME".to_string(), db.host.clone()),
        ("WA_DB_PORT".to_string(), db.effective_port().to_string()),
        ("WA_DB_PERSISTENT".to_string(), "1".to_string()),
        ("WA_CONFIG_ON_DB".to_string(), "1".to_string()),
        ("WA_DB_NAME_PREFIX".to_string(), crate::api::database_name_prefix(&wan.spec)),
    ]);
    // The client reads the idle timeout for MySQL only.
    if db.engine == crate::api::DatabaseEngine::MySQL {
        data.insert("WA_DB_CONNECTION_IDLE_TIMEOUT".into(), db.connection_idle_timeout_ms.to_string());
    }
    if let Some(tls) = &db.tls {
        data.insert("WA_DB_SSL_CA".into(), format!("{DB_CA_DIR}/{}", tls.ca_secret_ref.key));
    }
    let mut metadata = owned_meta(wan, Names::new(wan).config(), component_labels(wan, "config"));
    if let Some(record) = credentials {
        metadata.annotations = Some(BTreeMap::from([(ANNOTATION_CREDENTIALS_READ.to_string(), record.to_string())]));
    }
    ConfigMap { metadata, data: Some(data), ..Default::default() }
}

/// The Secret holding `WA_WEB_JWT_CRYPTO_KEY` (the same on every webapp, so a
/// token from one webapp is valid on all), `WA_API_KEY`, the admin password
/// unless the spec names its own, and later the client's pinned CA.
///
/// Keys are generated once and never rotated: existing values are carried over
/// and only missing keys are filled in. Returns `None` when the existing Secret
/// already has every key, so nothing needs writing.
pub fn keys_secret(wan: &WhatsAppNumber, existing: Option<&Secret>) -> Option<Secret> {
    let current = existing.and_then(|s| s.data.clone()).unwrap_or_default();
    let mut wanted = vec![JWT_KEY, API_KEY];
    if wan.spec.webapp.admin_password_secret_ref.is_none() {
        wanted.push(ADMIN_PASSWORD);
    }
    let missing: Vec<&str> = wanted.into_iter().filter(|k| current.get(*k).is_none_or(|v| v.0.is_empty())).collect();
    if existing.is_some() && missing.is_empty() {
        return None;
    }
    let mut data = current;
    for key in missing {
        let value = if key == ADMIN_PASSWORD { crate::webapp::session::generate_password() } else { random_token(64) };
        data.insert(key.to_string(), ByteString(value.into_bytes()));
    }
    let metadata = ObjectMeta {
        resource_version: existing.and_then(|s| s.metadata.resource_version.clone()),
        ..owned_meta(wan, Names::new(wan).keys(), component_labels(wan, "keys"))
    };
    Some(Secret { metadata, type_: Some("Opaque".into()), data: Some(data), ..Default::default() })
}

/// An alphanumeric token; 64 characters fit the API key's 12-128 rule.
fn random_token(len: usize) -> String {
    rand::rng().sample_iter(&Alphanumeric).take(len).map(char::from).collect()
}
