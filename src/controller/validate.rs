//! Validate: checks the schema cannot express, on what fetch read. Pure.
//!
//! A problem found here blocks the apply step: nothing is created or changed
//! until it is fixed, and the status says what to fix.

use k8s_openapi::api::core::v1::Secret;
use kube::ResourceExt;

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
pub const INVALID_SECRET_VALUE: &str = "InvalidSecretValue";
pub const DATABASE_IN_USE: &str = "DatabaseInUse";
pub const SECRET_NOT_OWNED: &str = "SecretNotOwned";

/// The PEM bundle `POST /v1/certificates/external` takes: the private key,
/// the certificate, then its CA chain (the client wants at least one CA
/// certificate after the server's). cert-manager's `tls.crt` usually holds
/// the chain already; a lone certificate is followed by `ca.crt`.
pub fn certificate_bundle(secret: &Secret) -> Option<Vec<u8>> {
    let key = secret_value(secret, "tls.key")?;
    let cert = secret_value(secret, "tls.crt")?;
    let mut bundle = Vec::new();
    let mut push = |pem: &[u8]| {
        bundle.extend_from_slice(pem);
        if !bundle.ends_with(b"\n") {
            bundle.push(b'\n');
        }
    };
    push(key);
    push(cert);
    let certificates = String::from_utf8_lossy(cert).matches("-----BEGIN CERTIFICATE-----").count();
    if certificates < 2
        && let Some(ca) = secret_value(secret, "ca.crt")
    {
        push(ca);
    }
    Some(bundle)
}

/// Digest of a certificate bundle, as recorded in `status.webappCertificate`.
pub fn bundle_digest(bundle: &[u8]) -> String {
    digest(&bundle)
}

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
    // A Secret still at the version recorded was checked when it was read.
    let (credentials_digest, credentials_version) = match &observed.credentials_recorded {
        Some(record) => (record.digest.clone(), Some(record.version.clone())),
        None => {
            let credentials = require_secret(
                observed.credentials.as_ref(),
                &creds.name,
                namespace,
                "spec.database.credentialsSecretRef",
                &[&creds.username_key, &creds.password_key],
            )?;
            (secret_digest(credentials, &[&creds.username_key, &creds.password_key]), credentials.resource_version())
        }
    };

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

    // The certificate is uploaded through the API later; it must be complete now.
    if let Some(tls) = &spec.webapp.tls {
        require_secret(
            observed.webapp_tls.as_ref(),
            &tls.secret_name,
            namespace,
            "spec.webapp.tls.secretName",
            &["tls.crt", "tls.key"],
        )?;
    }

    // The CA the probe verifies the webapp with (unused when told to skip it).
    if let Some(r) = spec.health.ca_secret_ref.as_deref().filter(|_| !spec.health.insecure_skip_tls_verify) {
        require_secret(observed.health_ca.as_ref(), &r.name, namespace, "spec.health.caSecretRef", &[&r.key])?;
    }

    if let Some(r) = &spec.webapp.admin_password_secret_ref {
        let secret = require_secret(
            observed.admin_password.as_ref(),
            &r.name,
            namespace,
            "spec.webapp.adminPasswordSecretRef",
            &[&r.key],
        )?;
        let password = secret_value(secret, &r.key).map(String::from_utf8_lossy).unwrap_or_default();
        if !crate::webapp::session::acceptable_password(password.trim()) {
            return Err(Problem::new(
                INVALID_SECRET_VALUE,
                format!(
                    "the admin password in Secret {namespace}/{} key {} does not meet the client's rule: 8-64 characters with a digit, an upper and a lower case letter and a special character",
                    r.name, r.key
                ),
            ));
        }
    }

    // The key Secret is the operator's: a Secret of that name made by someone
    // else is never taken over (nor later garbage-collected with the object).
    if let Some(keys) = &observed.keys {
        let uid = wan.metadata.uid.as_deref();
        let ours = keys
            .metadata
            .owner_references
            .iter()
            .flatten()
            .any(|r| r.controller == Some(true) && Some(r.uid.as_str()) == uid);
        if !ours {
            return Err(Problem::new(
                SECRET_NOT_OWNED,
                format!(
                    "Secret {namespace}/{} exists and is not this WhatsAppNumber's: the operator keeps its generated keys there and never takes over a Secret it did not create; rename that Secret or this WhatsAppNumber",
                    keys.metadata.name.as_deref().unwrap_or_default()
                ),
            ));
        }
    }

    if let Some(other) = &observed.database_sharer {
        return Err(Problem::new(
            DATABASE_IN_USE,
            format!(
                "WhatsAppNumber {other} already uses database prefix {} on {}:{}: two numbers sharing one set of databases would mix their registration and keys; give this one another prefix (set spec.database.namePrefix if it has none; once set it cannot change, so re-create the WhatsAppNumber with another)",
                crate::api::database_name_prefix(spec),
                spec.database.host,
                spec.database.effective_port()
            ),
        ));
    }
    if let Some(recorded) = wan.status.as_ref().and_then(|s| s.database_name_prefix.as_ref())
        && *recorded != crate::api::database_name_prefix(spec)
    {
        return Err(Problem::new(
            INVALID_SPEC,
            format!(
                "the client's databases were created with prefix {recorded}, and spec.database.namePrefix now gives {}: set it back to {recorded} (a new prefix would start an empty deployment)",
                crate::api::database_name_prefix(spec)
            ),
        ));
    }

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
        credentials_digest,
        credentials_version,
        database_ca_digest,
        webapp_keys_digest: observed.keys.as_ref().map(keys_digest),
        webapp_certificate_digest: wan
            .status
            .as_ref()
            .and_then(|s| s.webapp_certificate.as_ref())
            .map(|c| c.uploaded_digest.clone()),
        // Set by the plan step.
        coreapp_replicas: None,
        shape: None,
        schema_version: None,
        schema_upgrade: Default::default(),
        shard_request: wan.status.as_ref().and_then(|s| s.sharding.as_ref()).and_then(|s| s.last_request.clone()),
        registration: wan.status.as_ref().and_then(|s| s.registration.as_deref().cloned()),
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
            format!(
                "Secret {namespace}/{name} named by {field} has no non-empty key {}; add it to the Secret",
                missing.join(", ")
            ),
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

/// Digest of the keys every webapp must share.
pub fn keys_digest(keys: &Secret) -> String {
    secret_digest(keys, &[crate::resources::config::JWT_KEY, crate::resources::config::API_KEY])
}

fn secret_digest(secret: &Secret, keys: &[&str]) -> String {
    let values: Vec<Option<&[u8]>> = keys.iter().map(|k| secret_value(secret, k)).collect();
    digest(&values)
}

#[cfg(test)]
mod tests {
    use k8s_openapi::ByteString;
    use k8s_openapi::api::core::v1::PersistentVolumeClaim;

    use super::*;
    use crate::api::{DatabaseTls, SecretKeyRef, WebappTls};
    use crate::fixtures::{sample, secret};

    fn observed() -> Observed {
        Observed { credentials: Some(secret(&[("username", "wa"), ("password", "pw")])), ..Default::default() }
    }

    #[test]
    fn complete_inputs_pass() {
        let inputs = validate(&sample(), &observed()).expect("valid");
        assert!(!inputs.credentials_digest.is_empty());
        assert!(inputs.database_ca_digest.is_none() && inputs.webapp_certificate_digest.is_none());
    }

    #[test]
    fn missing_credentials_secret_names_the_secret_and_field() {
        let problem = validate(&sample(), &Observed::default()).unwrap_err();
        assert_eq!(problem.reason, SECRET_NOT_FOUND);
        assert!(problem.message.contains("team/acme-db"), "{}", problem.message);
        assert!(problem.message.contains("spec.database.credentialsSecretRef"), "{}", problem.message);
    }

    #[test]
    fn missing_or_empty_key_is_reported() {
        let obs = Observed { credentials: Some(secret(&[("username", "wa"), ("password", "")])), ..Default::default() };
        let problem = validate(&sample(), &obs).unwrap_err();
        assert_eq!(problem.reason, SECRET_KEY_MISSING);
        assert!(problem.message.contains("password"), "{}", problem.message);
    }

    #[test]
    fn tls_secrets_are_required_when_configured() {
        let mut wan = sample();
        wan.spec.webapp.tls = Some(WebappTls { secret_name: "web-tls".into() });
        let problem = validate(&wan, &observed()).unwrap_err();
        assert_eq!(problem.reason, SECRET_NOT_FOUND);
        assert!(problem.message.contains("spec.webapp.tls.secretName"));

        let obs = Observed { webapp_tls: Some(secret(&[("tls.crt", "c")])), ..observed() };
        let problem = validate(&wan, &obs).unwrap_err();
        assert_eq!(problem.reason, SECRET_KEY_MISSING);
        assert!(problem.message.contains("tls.key"));

        wan.spec.webapp.tls = None;
        wan.spec.database.tls =
            Some(Box::new(DatabaseTls { ca_secret_ref: SecretKeyRef { name: "ca".into(), key: "ca.crt".into() } }));
        assert_eq!(validate(&wan, &observed()).unwrap_err().reason, SECRET_NOT_FOUND);
        let obs = Observed { database_ca: Some(secret(&[("ca.crt", "pem")])), ..observed() };
        assert!(validate(&wan, &obs).unwrap().database_ca_digest.is_some());

        wan.spec.database.tls = None;
        wan.spec.health.ca_secret_ref = Some(Box::new(SecretKeyRef { name: "probe-ca".into(), key: "ca.crt".into() }));
        let problem = validate(&wan, &observed()).unwrap_err();
        assert_eq!(problem.reason, SECRET_NOT_FOUND);
        assert!(problem.message.contains("spec.health.caSecretRef"), "{}", problem.message);
        let obs = Observed { health_ca: Some(secret(&[("other", "pem")])), ..observed() };
        assert_eq!(validate(&wan, &obs).unwrap_err().reason, SECRET_KEY_MISSING);
        let obs = Observed { health_ca: Some(secret(&[("ca.crt", "pem")])), ..observed() };
        assert!(validate(&wan, &obs).is_ok());
        wan.spec.health.insecure_skip_tls_verify = true;
        assert!(validate(&wan, &observed()).is_ok(), "a CA the probe does not use is not required");
    }

    #[test]
    fn existing_claim_must_exist() {
        let mut wan = sample();
        wan.spec.media.existing_claim = Some("nfs".into());
        assert_eq!(validate(&wan, &observed()).unwrap_err().reason, CLAIM_NOT_FOUND);
        let obs = Observed { media_claim: Some(PersistentVolumeClaim::default()), ..observed() };
        let inputs = validate(&wan, &obs).unwrap();
        assert!(inputs.live_media_claim.is_none(), "a user's claim is never handed to the builder");
    }

    #[test]
    fn unsupported_shards_are_refused_even_if_stored() {
        let mut wan = sample();
        wan.spec.multiconnect.shards = 3;
        let problem = validate(&wan, &observed()).unwrap_err();
        assert_eq!(problem.reason, INVALID_SPEC);
        assert!(problem.message.contains("spec.multiconnect.shards"));
    }

    #[test]
    fn an_admin_password_the_client_would_refuse_is_reported_before_any_login() {
        let mut wan = sample();
        wan.spec.webapp.admin_password_secret_ref =
            Some(Box::new(crate::api::PasswordSecretRef { name: "admin".into(), key: "password".into() }));
        assert_eq!(validate(&wan, &observed()).unwrap_err().reason, SECRET_NOT_FOUND);
        let weak = Observed { admin_password: Some(secret(&[("password", "secret")])), ..observed() };
        let problem = validate(&wan, &weak).unwrap_err();
        assert_eq!(problem.reason, INVALID_SECRET_VALUE);
        assert!(problem.message.contains("8-64 characters"), "{}", problem.message);
        assert!(!problem.message.contains("secret\""), "the value is never shown");
        let good = Observed { admin_password: Some(secret(&[("password", "Str0ng-enough")])), ..observed() };
        assert!(validate(&wan, &good).is_ok());
    }

    #[test]
    fn two_numbers_on_one_set_of_databases_are_refused() {
        let obs = Observed { database_sharer: Some("other/first".into()), ..observed() };
        let problem = validate(&sample(), &obs).unwrap_err();
        assert_eq!(problem.reason, DATABASE_IN_USE);
        assert!(problem.message.contains("other/first") && problem.message.contains("wa15550001111"));
    }

    #[test]
    fn the_database_prefix_cannot_move_once_the_databases_exist() {
        let mut wan = sample();
        wan.status = Some(crate::api::WhatsAppNumberStatus {
            database_name_prefix: Some("wa15550001111".into()),
            ..Default::default()
        });
        assert!(validate(&wan, &observed()).is_ok(), "the default stays the default");
        wan.spec.database.name_prefix = Some("other".into());
        let problem = validate(&wan, &observed()).unwrap_err();
        assert_eq!(problem.reason, INVALID_SPEC);
        assert!(problem.message.contains("wa15550001111"), "{}", problem.message);
    }

    #[test]
    fn the_certificate_bundle_is_the_key_then_the_chain() {
        const C: &str = "-----BEGIN CERTIFICATE-----\nX\n-----END CERTIFICATE-----\n";
        let chain = format!("{C}{C}");
        let tls = secret(&[("tls.key", "KEY"), ("tls.crt", &chain), ("ca.crt", "ROOT")]);
        assert_eq!(certificate_bundle(&tls).unwrap(), format!("KEY\n{chain}").into_bytes(), "the chain is there");
        let leaf = secret(&[("tls.key", "KEY"), ("tls.crt", C), ("ca.crt", "ROOT")]);
        assert_eq!(certificate_bundle(&leaf).unwrap(), format!("KEY\n{C}ROOT\n").into_bytes(), "ca.crt completes it");
        assert_eq!(certificate_bundle(&secret(&[("tls.crt", "C")])), None);
    }

    #[test]
    fn a_key_secret_the_operator_did_not_create_is_never_taken_over() {
        let wan = sample();
        let foreign = Observed { keys: Some(secret(&[("WA_API_KEY", "k")])), ..observed() };
        let problem = validate(&wan, &foreign).unwrap_err();
        assert_eq!(problem.reason, SECRET_NOT_OWNED);
        assert!(problem.message.contains("never takes over"), "{}", problem.message);
        let mut ours = secret(&[("WA_API_KEY", "k")]);
        ours.metadata.owner_references = Some(vec![k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference {
            controller: Some(true),
            uid: "1234-5678".into(),
            ..Default::default()
        }]);
        let inputs = validate(&wan, &Observed { keys: Some(ours.clone()), ..observed() }).unwrap();
        assert!(inputs.webapp_keys_digest.is_some());
        // A refilled key changes the digest, which restarts the webapps.
        ours.data.as_mut().unwrap().insert("WA_API_KEY".into(), ByteString(b"other".to_vec()));
        let again = validate(&wan, &Observed { keys: Some(ours), ..observed() }).unwrap();
        assert_ne!(inputs.webapp_keys_digest, again.webapp_keys_digest);
    }

    #[test]
    fn password_change_changes_the_digest() {
        let a = validate(&sample(), &observed()).unwrap().credentials_digest;
        let obs =
            Observed { credentials: Some(secret(&[("username", "wa"), ("password", "new")])), ..Default::default() };
        assert_ne!(a, validate(&sample(), &obs).unwrap().credentials_digest);
    }
}
