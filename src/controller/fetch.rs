//! Fetch: read what the reconcile depends on besides the WhatsAppNumber itself.
//! Only reads happen here; validate and build then work on plain values.

use k8s_openapi::api::core::v1::{PersistentVolumeClaim, Secret};
use kube::{Api, Client, ResourceExt};

use super::error::{Error, Result};
use crate::api::WhatsAppNumber;
use crate::resources::names::Names;

/// Everything read from the cluster for one reconcile.
#[derive(Clone, Debug, Default)]
pub struct Observed {
    /// The database credentials Secret, if it exists.
    pub credentials: Option<Secret>,
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
}

pub async fn observe(client: &Client, wan: &WhatsAppNumber) -> Result<Observed> {
    let namespace = wan.namespace().ok_or(Error::MissingMetadata("namespace"))?;
    let secrets: Api<Secret> = Api::namespaced(client.clone(), &namespace);
    let claims: Api<PersistentVolumeClaim> = Api::namespaced(client.clone(), &namespace);
    let spec = &wan.spec;

    let credentials = secrets.get_opt(&spec.database.credentials_secret_ref.name).await?;
    let database_ca = match &spec.database.tls {
        Some(tls) => secrets.get_opt(&tls.ca_secret_ref.name).await?,
        None => None,
    };
    let webapp_tls = match &spec.webapp.tls {
        Some(tls) => secrets.get_opt(&tls.secret_name).await?,
        None => None,
    };
    let keys = secrets.get_opt(&Names::new(wan).keys()).await?;
    let media_claim = claims.get_opt(&crate::resources::media_claim_name(wan)).await?;
    let health_ca = match &spec.health.ca_secret_ref {
        Some(r) if spec.health.enabled => secrets.get_opt(&r.name).await?,
        _ => None,
    };
    let registration = match &spec.registration {
        Some(r) => secrets.get_opt(&r.secret_ref.name).await?,
        None => None,
    };

    Ok(Observed { credentials, database_ca, webapp_tls, keys, media_claim, health_ca, registration })
}
