//! Validate: checks the schema cannot express, on what fetch read. Pure.
//!
//! A problem found here blocks the apply step: nothing is created or changed
//! until it is fixed, and the status says what to fix.

use k8s_openapi::api::core::v1::Secret;

use super::fetch::Observed;
use crate::api::{VALID_SHARDS, WhatsAppNumber};
use crate::resources::{BuildInputs, digest};

/// A reason to hold the reconcile, in words a person can act on.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Problem {
    /// CamelCase reason for conditions and events.
    pub reason: &'static str,
    pub message: String,
}

impl Problem {
    fn new(reason: &'static str, message: impl Into<String>) -> Self {
        Self { reason, message: message.into() }
    }
}

pub const SECRET_NOT_FOUND: &str = "SecretNotFound";
pub const SECRET_KEY_MISSING: &str = "SecretKeyMissing";
pub const CLAIM_NOT_FOUND: &str = "MediaClaimNotFound";
pub const INVALID_SPEC: &str = "InvalidSpec";

/// Returns what the builders need, or the first problem that blocks the reconcile.
pub fn validate(wan: &WhatsAppNumber, observed: &Observed) -> Result<BuildInputs, Problem> {
    let spec = &wan.spec;
    let namespace = wan.metadata.namespace.as_deref().unwrap_or_default();

    // The schema enforces these; the check keeps a CR stored before a schema
    // change from producing a deployment the client cannot run.
    if !VALID_SHARDS.contains(&spec.multiconnect.shards) {
        return Err(Problem::new(
            INVALID_SPEC,
            format!("spec.multiconnect.shards is {}; it must be one of 1, 2, 4, 8, 16 or 32", spec.multiconnect.shards),
        ));
    }

    let creds = &spec.database.credentials_secret_ref;
    let credentials = require_secret(
        observed.credentials.as_ref(),
        &creds.name,
        namespace,
        "spec.database.credentialsSecretRef",
        &[&creds.username_key, &creds.password_key],
    )?;

    let database_ca_digest = match &spec.database.tls {
        Some(tls) => {
            let ca = require_secret(
                observed.database_ca.as_ref(),
                &tls.ca_secret_ref.name,
                namespace,
                "spec.database.tls.caSecretRef",
                &[&tls.ca_secret_ref.key],
            )?;
            Some(secret_digest(ca, &[&tls.ca_secret_ref.key]))
        }
        None => None,
    };

    let webapp_tls_digest = match &spec.webapp.tls {
        Some(tls) => {
            let secret = require_secret(
                observed.webapp_tls.as_ref(),
                &tls.secret_name,
                namespace,
                "spec.webapp.tls.secretName",
                &["tls.crt", "tls.key"],
            )?;
            Some(secret_digest(secret, &["tls.crt", "tls.key"]))
        }
        None => None,
    };

    if let Some(claim) = &spec.media.existing_claim
        && observed.media_claim.is_none()
    {
        return Err(Problem::new(
            CLAIM_NOT_FOUND,
            format!("PersistentVolumeClaim {namespace}/{claim} named by spec.media.existingClaim does not exist"),
        ));
    }

    Ok(BuildInputs {
        // Only a claim the operator manages is handed to the builder; a user's
        // claim is mounted as it is.
        live_media_claim: if spec.media.existing_claim.is_none() { observed.media_claim.clone() } else { None },
        credentials_digest: secret_digest(credentials, &[&creds.username_key, &creds.password_key]),
        database_ca_digest,
        webapp_tls_digest,
    })
}

fn require_secret<'a>(
    secret: Option<&'a Secret>,
    name: &str,
    namespace: &str,
    field: &str,
    keys: &[&str],
) -> Result<&'a Secret, Problem> {
    let Some(secret) = secret else {
        return Err(Problem::new(
            SECRET_NOT_FOUND,
            format!("Secret {namespace}/{name} named by {field} does not exist; create it to continue"),
        ));
    };
    let missing: Vec<&str> = keys.iter().copied().filter(|k| secret_value(secret, k).is_none()).collect();
    if !missing.is_empty() {
        return Err(Problem::new(
            SECRET_KEY_MISSING,
            format!("Secret {namespace}/{name} named by {field} has no non-empty key {}", missing.join(", ")),
        ));
    }
    Ok(secret)
}

/// A key's value from `data` or `stringData` (the latter only seen before the
/// API server folds it into `data`, but harmless to honour).
fn secret_value<'a>(secret: &'a Secret, key: &str) -> Option<&'a [u8]> {
    secret
        .data
        .as_ref()
        .and_then(|d| d.get(key))
        .map(|v| v.0.as_slice())
        .or_else(|| secret.string_data.as_ref().and_then(|d| d.get(key)).map(|v| v.as_bytes()))
        .filter(|v| !v.is_empty())
}

fn secret_digest(secret: &Secret, keys: &[&str]) -> String {
    let values: Vec<Option<&[u8]>> = keys.iter().map(|k| secret_value(secret, k)).collect();
    digest(&values)
}
